//! The IOAT driver against its model, beyond the shared conformance suite (`crate::tests`,
//! which runs every case on it too): fences after a submit, IOMMU faults, recovery inside a
//! scatter-gather job, garbage from the device, teardown; and the model's own rules, poked
//! register by register.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, Release};

use super::regs::*;
use super::*;
use crate::hw::dma_mem::DmaRegion;
use crate::hw::mmio::Mmio;
use crate::model::{IoatModel, IoatModelConfig, ModelFault};
use crate::tests::Buf;
use crate::{ChannelConfig, DmaEngine, DmaError, FailPolicy, Iova, OpFlags, Sge, Status};

fn channel(ring: u16, max_sges: u16, cfg: IoatModelConfig) -> (IoatModel, IoatChannel<IoatModel>) {
    let model = IoatModel::new(cfg);
    let ch = ChannelConfig {
        max_sges,
        ..ChannelConfig::new(ring)
    };
    let dma = IoatChannel::new(model.clone(), &ch, Arc::new(model.clone())).unwrap();
    model.set_max_pending((dma.descriptors() - 1) as u16);
    (model, dma)
}

fn map(model: &IoatModel, buf: &Buf) {
    // SAFETY: every buffer mapped here outlives the model's runs in its test (they are declared
    // before the model runs and dropped after its last run).
    assert!(unsafe { model.map(Iova::from_ptr(buf.0.as_ptr()), buf.0.len() as u64) });
}

/// Runs the model and collects the statuses of the next `n` jobs.
fn drain(model: &IoatModel, dma: &mut IoatChannel<IoatModel>, n: usize) -> Vec<Status> {
    let mut out = vec![Status::ErrorUnknown; n];
    let mut got = 0;
    for _ in 0..10_000 {
        if got == n {
            return out;
        }
        model.run(16);
        got += usize::from(dma.completed_status(64, &mut out[got..]).count);
    }
    panic!("stuck at {got} of {n} jobs: {dma:?}, {model:?}");
}

fn no_violations(model: &IoatModel) {
    let v = model.violations();
    assert!(v.is_empty(), "{v:#?}");
}

/// A: X -> Y submitted; then B: Y -> Z, fenced or not, submitted; then the model runs both.
fn fence_after_submit(fence: OpFlags) -> bool {
    let (model, mut dma) = channel(8, 1, IoatModelConfig::default());
    let len = 4096;
    let mut x = Buf::pattern(len, 1);
    let mut y = Buf::filled(len, 0);
    let mut z = Buf::filled(len, 0);
    for b in [&x, &y, &z] {
        map(&model, b);
    }
    // SAFETY: the buffers outlive the jobs, reported by `drain`. Without the fence B reads Y
    // while A writes it: wrong bytes (one thread), not undefined behaviour.
    unsafe {
        dma.copy(x.at(0), y.at(0), len as u32, OpFlags::SUBMIT)
            .unwrap();
        dma.copy(y.at(0), z.at(0), len as u32, fence | OpFlags::SUBMIT)
            .unwrap();
    }
    let st = drain(&model, &mut dma, 2);
    assert!(st.iter().all(|s| s.is_ok()));
    no_violations(&model);
    z.0 == x.0
}

#[test]
fn fence_after_the_previous_job_was_submitted_uses_a_null_descriptor() {
    assert!(fence_after_submit(OpFlags::FENCE));
    // Control: the model reads B's source ahead of A's write when nothing fences them.
    assert!(!fence_after_submit(OpFlags::NONE));
}

#[test]
fn small_ring_wraps_many_times_with_fences() {
    // One job slot, four descriptors: every job and every null fence goes round the ring.
    let (model, mut dma) = channel(1, 1, IoatModelConfig::default());
    assert_eq!(dma.descriptors(), 4);
    let mut src = Buf::pattern(64 * 1000, 2);
    let mut dst = Buf::filled(64 * 1000, 0);
    map(&model, &src);
    map(&model, &dst);
    for i in 0..1000usize {
        let flags = if i % 3 == 0 {
            OpFlags::FENCE | OpFlags::SUBMIT
        } else {
            OpFlags::SUBMIT
        };
        // SAFETY: the buffers outlive the job, reported by `drain` before the next.
        let idx = unsafe { dma.copy(src.at(i * 64), dst.at(i * 64), 64, flags) }.unwrap();
        assert_eq!(idx, i as u16);
        assert_eq!((dma.in_flight(), dma.burst_capacity()), (1, 0));
        // SAFETY: refused: nothing is enqueued.
        let full = unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::NONE) };
        assert!(matches!(full, Err(DmaError::RingFull)));
        assert_eq!(drain(&model, &mut dma, 1), [Status::Successful]);
        assert_eq!((dma.in_flight(), dma.burst_capacity()), (0, 1));
    }
    assert!(dst.0 == src.0);
    assert_eq!(dma.stats().completed, 1000);
    no_violations(&model);
}

#[test]
fn unmapped_source_or_destination_fails_only_its_job() {
    let (model, mut dma) = channel(16, 1, IoatModelConfig::default());
    let mut src = Buf::pattern(4 * 256, 3);
    let mut dst = Buf::filled(4 * 256, 0xee);
    let mut stray = Buf::filled(256, 0x55);
    map(&model, &src);
    map(&model, &dst);
    // SAFETY: the buffers outlive the jobs, reported by `drain`; `stray` is not mapped, so the
    // model never touches it.
    unsafe {
        dma.copy(src.at(0), dst.at(0), 256, OpFlags::NONE).unwrap();
        dma.copy(stray.at(0), dst.at(256), 256, OpFlags::NONE)
            .unwrap();
        dma.copy(src.at(512), stray.at(0), 256, OpFlags::NONE)
            .unwrap();
        dma.copy(src.at(768), dst.at(768), 256, OpFlags::SUBMIT)
            .unwrap();
    }
    let st = drain(&model, &mut dma, 4);
    assert_eq!(
        st,
        [
            Status::Successful,
            Status::InvalidSrcAddr,
            Status::InvalidDstAddr,
            Status::Successful
        ]
    );
    assert!(dst.0[..256] == src.0[..256] && dst.0[768..] == src.0[768..]);
    assert!(dst.0[256..768].iter().all(|&b| b == 0xee));
    assert!(stray.0.iter().all(|&b| b == 0x55));
    assert_eq!(dma.recoveries(), 2);
    assert_eq!(dma.stats().errors, 2);
    no_violations(&model);
}

#[test]
fn a_fault_inside_a_scatter_gather_job_skips_the_rest_of_it() {
    let (model, mut dma) = channel(4, 4, IoatModelConfig::default());
    let mut src = Buf::pattern(600, 4);
    let mut dst = Buf::filled(600, 0xee);
    map(&model, &src);
    map(&model, &dst);
    // Job 0: three pieces (descriptors 0, 1, 2); descriptor 1 faults. Job 1: descriptor 3.
    model.set_fault(ModelFault::AtDescriptor {
        n: 1,
        chanerr: CHANERR_WRITE_DATA,
    });
    let s = [Sge::new(src.at(0), 300)];
    let d = [
        Sge::new(dst.at(0), 100),
        Sge::new(dst.at(100), 100),
        Sge::new(dst.at(200), 100),
    ];
    // SAFETY: the buffers outlive the jobs, reported by `drain`.
    unsafe {
        dma.copy_sg(&s, &d, OpFlags::NONE).unwrap();
        dma.copy(src.at(300), dst.at(300), 300, OpFlags::SUBMIT)
            .unwrap();
    }
    // `completed` stops at the failed job.
    model.run(16);
    let c = dma.completed(8);
    assert_eq!((c.count, c.last_idx, c.has_error), (0, 0xffff, true));
    let st = drain(&model, &mut dma, 2);
    assert_eq!(st, [Status::BusWriteError, Status::Successful]);
    assert!(dst.0[..100] == src.0[..100], "piece 0 ran");
    assert!(
        dst.0[100..300].iter().all(|&b| b == 0xee),
        "pieces 1 and 2 did not"
    );
    assert!(dst.0[300..] == src.0[300..]);
    no_violations(&model);
}

#[test]
fn a_job_failing_alone_then_later_submits() {
    let (model, mut dma) = channel(8, 1, IoatModelConfig::default());
    let mut src = Buf::pattern(128, 5);
    let mut dst = Buf::filled(128, 0);
    map(&model, &src);
    map(&model, &dst);
    model.set_fault(ModelFault::AtDescriptor {
        n: 0,
        chanerr: CHANERR_READ_DATA,
    });
    // SAFETY: the buffers outlive the jobs, reported by `drain`.
    unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(drain(&model, &mut dma, 1), [Status::BusReadError]);
    // The channel was restarted with nothing to do; the next submit rings it again.
    // SAFETY: as above.
    unsafe { dma.copy(src.at(64), dst.at(64), 64, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(drain(&model, &mut dma, 1), [Status::Successful]);
    assert!(dst.0[64..] == src.0[64..] && dst.0[..64].iter().all(|&b| b == 0));
    no_violations(&model);
}

#[test]
fn every_nth_descriptor_failing_keeps_the_ring_consistent() {
    let (model, mut dma) = channel(8, 2, IoatModelConfig::default());
    let mut src = Buf::pattern(32 * 200, 6);
    let mut dst = Buf::filled(32 * 200, 0);
    map(&model, &src);
    map(&model, &dst);
    model.set_fault(ModelFault::EveryNth {
        n: NonZeroU64::new(7).unwrap(),
        chanerr: CHANERR_LENGTH,
    });
    let mut failed = 0;
    let mut next = 0usize;
    let mut reported = 0usize;
    while reported < 200 {
        while next < 200 && dma.burst_capacity() > 0 {
            // Even jobs: one descriptor; odd jobs: two (a split destination).
            let (s, d) = (src.at(next * 32), dst.at(next * 32));
            // SAFETY: the buffers outlive the jobs, all reported in this loop.
            unsafe {
                if next % 2 == 0 {
                    dma.copy(s, d, 32, OpFlags::NONE).unwrap();
                } else {
                    let dl = [Sge::new(d, 16), Sge::new(d.add(16), 16)];
                    dma.copy_sg(&[Sge::new(s, 32)], &dl, OpFlags::NONE).unwrap();
                }
            }
            next += 1;
        }
        dma.submit().unwrap();
        model.run(3);
        let mut st = [Status::Successful; 8];
        let c = dma.completed_status(8, &mut st);
        for (k, s) in st[..usize::from(c.count)].iter().enumerate() {
            let job = reported + k;
            let ok = dst.0[job * 32..job * 32 + 32] == src.0[job * 32..job * 32 + 32];
            if s.is_ok() {
                assert!(ok, "job {job}");
            } else {
                assert_eq!(*s, Status::InvalidLength);
                failed += 1;
            }
        }
        reported += usize::from(c.count);
    }
    assert!(failed > 20, "{failed}");
    assert_eq!(dma.stats().errors, failed);
    assert_eq!(dma.recoveries(), failed);
    no_violations(&model);
}

#[test]
fn garbage_completion_address_stops_the_channel_without_panicking() {
    let (model, mut dma) = channel(8, 1, IoatModelConfig::default());
    let mut src = Buf::pattern(64, 7);
    let mut dst = Buf::filled(64, 0);
    map(&model, &src);
    map(&model, &dst);
    for _ in 0..3 {
        // SAFETY: the buffers outlive the jobs; the model never runs them (no `run`), and the
        // channel is reset before they are reported.
        unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::SUBMIT) }.unwrap();
    }
    // The device writes an address outside the ring into the completion word.
    let word = dma.bar().read64(CHANCMP);
    // SAFETY: CHANCMP is the driver's completion word: live, aligned, only accessed atomically.
    let atomic =
        unsafe { AtomicU64::from_ptr(std::ptr::with_exposed_provenance_mut(word as usize)) };
    atomic.store(0x1000 | CHANSTS_ACTIVE, Release);
    let mut st = [Status::Successful; 4];
    let c = dma.completed_status(8, &mut st);
    assert_eq!((c.count, c.last_idx, c.has_error), (3, 2, true));
    assert_eq!(st[..3], [Status::ErrorUnknown; 3]);
    assert_eq!(model.run(16), 0, "the channel was reset");
    assert!(dma.broken().is_some());
    // SAFETY: refused: nothing is enqueued.
    let again = unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::SUBMIT) };
    assert!(matches!(again, Err(DmaError::Device(_))));
    assert!(matches!(dma.submit(), Err(DmaError::Device(_))));
    assert_eq!(dma.in_flight(), 0);
    no_violations(&model);
}

#[test]
fn halt_without_write_back_is_found_through_chansts() {
    let (model, mut dma) = channel(8, 1, IoatModelConfig::default());
    let mut src = Buf::pattern(256, 8);
    let mut dst = Buf::filled(256, 0);
    map(&model, &src);
    map(&model, &dst);
    // Take the driver's own memory (ring and completion word) away from the device.
    let cmp = dma.bar().read64(CHANCMP);
    let (ring, len) = (model.mappings().into_iter())
        .find(|&(iova, len)| iova.0 <= cmp && cmp < iova.0 + len)
        .unwrap();
    assert!(model.unmap(ring, len));
    // SAFETY: the buffers outlive the jobs, all reported by `drain`.
    unsafe { dma.copy(src.at(0), dst.at(0), 256, OpFlags::SUBMIT) }.unwrap();
    let st = drain(&model, &mut dma, 1);
    // Unreadable descriptors: the job fails; the driver noticed the halt by reading CHANSTS.
    assert_eq!(st, [Status::InvalidAddr]);
    assert_eq!((dma.recoveries(), model.stats().halts), (1, 1));
    // Give the memory back: the channel works again.
    // SAFETY: the driver's region, live until the driver is dropped (which unmaps it).
    assert!(unsafe { model.map(ring, len) });
    // SAFETY: as above.
    unsafe { dma.copy(src.at(0), dst.at(0), 256, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(drain(&model, &mut dma, 1), [Status::Successful]);
    assert!(dst.0 == src.0);
    no_violations(&model);
}

#[test]
fn too_long_copies_and_bad_configurations_are_refused() {
    let (model, mut dma) = channel(
        4,
        2,
        IoatModelConfig {
            xfercap_log: 12,
            ..Default::default()
        },
    );
    assert_eq!(dma.max_transfer(), 4096);
    let mut src = Buf::pattern(8192, 9);
    let mut dst = Buf::filled(8192, 0);
    map(&model, &src);
    map(&model, &dst);
    // SAFETY: refused ones enqueue nothing; the others outlive their jobs, reported below.
    unsafe {
        let long = dma.copy(src.at(0), dst.at(0), 4097, OpFlags::SUBMIT);
        assert!(matches!(
            long,
            Err(DmaError::TooLong {
                len: 4097,
                max: 4096
            })
        ));
        // Two pieces of 4096: fine.
        let s = [Sge::new(src.at(0), 8192)];
        let d = [Sge::new(dst.at(0), 4096), Sge::new(dst.at(4096), 4096)];
        assert!(matches!(
            dma.copy_sg(&s, &s, OpFlags::NONE),
            Err(DmaError::TooLong { len: 8192, .. })
        ));
        dma.copy_sg(&s, &d, OpFlags::SUBMIT).unwrap();
    }
    assert_eq!(dma.in_flight(), 1);
    assert_eq!(drain(&model, &mut dma, 1), [Status::Successful]);
    assert!(dst.0 == src.0);
    no_violations(&model);

    let fresh = IoatModel::new(IoatModelConfig::default());
    let arc = || -> Arc<dyn crate::hw::DmaMapper> { Arc::new(fresh.clone()) };
    let inject = ChannelConfig {
        fail: FailPolicy::Index {
            idx: 0,
            status: Status::PageFault,
        },
        ..ChannelConfig::new(8)
    };
    assert!(matches!(
        IoatChannel::new(fresh.clone(), &inject, arc()),
        Err(DmaError::InvalidConfig(_))
    ));
    let huge = ChannelConfig {
        max_sges: 8,
        ..ChannelConfig::new(2048)
    };
    assert!(matches!(
        IoatChannel::new(fresh.clone(), &huge, arc()),
        Err(DmaError::InvalidConfig(_))
    ));
    assert!(fresh.mappings().is_empty());
}

#[test]
fn drop_resets_the_channel_and_unmaps_its_rings() {
    let (model, mut dma) = channel(8, 1, IoatModelConfig::default());
    let mut src = Buf::pattern(64, 10);
    let mut dst = Buf::filled(64, 0);
    map(&model, &src);
    map(&model, &dst);
    assert_eq!(model.mappings().len(), 3);
    // SAFETY: dropping the channel resets it before it returns; the model never runs the job.
    unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::SUBMIT) }.unwrap();
    drop(dma);
    assert_eq!(model.mappings().len(), 2, "the driver's region is unmapped");
    assert_eq!(model.run(16), 0, "a reset channel runs nothing");
    assert_eq!(model.chansts(), CHANSTS_HALTED);
    assert!(dst.0.iter().all(|&b| b == 0));
    no_violations(&model);
}

#[test]
fn chanerr_translates_to_statuses() {
    assert_eq!(status_of(CHANERR_SRC_ADDR), Status::InvalidSrcAddr);
    assert_eq!(status_of(CHANERR_DEST_ADDR), Status::InvalidDstAddr);
    assert_eq!(status_of(CHANERR_READ_DATA), Status::BusReadError);
    assert_eq!(status_of(CHANERR_WRITE_DATA), Status::BusWriteError);
    assert_eq!(status_of(CHANERR_LENGTH), Status::InvalidLength);
    assert_eq!(status_of(CHANERR_CONTROL), Status::InvalidOpcode);
    assert_eq!(status_of(CHANERR_NEXT_ADDR), Status::InvalidAddr);
    assert_eq!(status_of(CHANERR_COMPLETION_ADDR), Status::ErrorUnknown);
    assert_eq!(status_of(0), Status::ErrorUnknown);
}

// ---- the model's rules, register by register ----

/// A ring of `n` linked descriptors in a region mapped in `model`.
fn ring(model: &IoatModel, n: usize) -> DmaRegion {
    let r = DmaRegion::new(n * DESC_SIZE + 64).unwrap();
    for i in 0..n {
        let next = r.iova().0 + (((i + 1) % n) * DESC_SIZE) as u64;
        r.write_u64(i * DESC_SIZE + DESC_NEXT_OFF, next);
    }
    // SAFETY: each test drops the region after its model's last run.
    assert!(unsafe { model.map(r.iova(), r.len() as u64) });
    r
}

fn desc(r: &DmaRegion, i: usize, size: u32, ctl: u32, src: Iova, dst: Iova) {
    r.write_u32(i * DESC_SIZE + DESC_SIZE_OFF, size);
    r.write_u32(i * DESC_SIZE + DESC_CTL_OFF, ctl);
    r.write_u64(i * DESC_SIZE + DESC_SRC_OFF, src.0);
    r.write_u64(i * DESC_SIZE + DESC_DST_OFF, dst.0);
}

/// Resets and arms `model` on `r`, completion word at its end.
fn arm(model: &IoatModel, r: &DmaRegion, n: usize) {
    let err = model.read32(CHANERR);
    model.write32(CHANERR, err);
    model.write8(CHANCMD, CHANCMD_RESET);
    model.write16(
        CHANCTRL,
        CHANCTRL_ANY_ERR_ABORT_EN | CHANCTRL_ERR_COMPLETION_EN,
    );
    model.write64(CHANCMP, r.iova().0 + (n * DESC_SIZE) as u64);
    model.write64(CHAINADDR, r.iova().0);
    assert_eq!(model.read64(CHANSTS), CHANSTS_ARMED);
}

const COPY: u32 = OP_COPY << CTL_OP_SHIFT | CTL_COMPL_WRITE;

#[test]
fn model_runs_a_hand_built_chain_and_writes_back() {
    let model = IoatModel::new(IoatModelConfig::default());
    let r = ring(&model, 4);
    let mut src = Buf::pattern(64, 11);
    let mut dst = Buf::filled(64, 0);
    map(&model, &src);
    map(&model, &dst);
    desc(&r, 0, 32, COPY, src.at(0), dst.at(0));
    desc(&r, 1, NULL_DESC_SIZE, COPY | CTL_NULL, Iova(0), Iova(0));
    desc(&r, 2, 32, COPY, src.at(32), dst.at(32));
    arm(&model, &r, 4);
    assert_eq!(model.run(8), 0, "armed, nothing counted");
    model.write16(DMACOUNT, 2);
    assert_eq!(model.read64(CHANSTS) & CHANSTS_STATUS, CHANSTS_ACTIVE);
    assert_eq!(model.run(8), 2);
    let word = r.atomic_u64(4 * DESC_SIZE).load(Relaxed);
    assert_eq!(word, (r.iova().0 + 64) | CHANSTS_IDLE);
    assert_eq!(model.read64(CHANSTS), word);
    // Suspended: a new count is kept but nothing runs until RESUME.
    model.write8(CHANCMD, CHANCMD_SUSPEND);
    model.write16(DMACOUNT, 3);
    assert_eq!(model.run(8), 0);
    model.write8(CHANCMD, CHANCMD_RESUME);
    assert_eq!(model.run(8), 1);
    assert!(dst.0 == src.0);
    assert_eq!(model.stats().descriptors, 3);
    no_violations(&model);
}

#[test]
fn model_rejects_bad_configuration() {
    let model = IoatModel::new(IoatModelConfig {
        max_pending: 3,
        ..Default::default()
    });
    let r = ring(&model, 4);
    // DMACOUNT before CHAINADDR.
    model.write16(DMACOUNT, 1);
    assert_ne!(model.chanerr() & CHANERR_DESCRIPTOR_COUNT, 0);
    // Misaligned CHAINADDR after a clean reset.
    model.write32(CHANERR, u32::MAX);
    model.write8(CHANCMD, CHANCMD_RESET);
    model.write64(CHAINADDR, r.iova().0 + 8);
    assert_ne!(model.chanerr() & CHANERR_CHAIN_ADDR_VALUE, 0);
    assert_eq!(model.read64(CHANSTS) & CHANSTS_STATUS, CHANSTS_HALTED);
    // CHAINADDR with CHANERR still set after a reset: stays halted.
    model.write8(CHANCMD, CHANCMD_RESET);
    model.write64(CHAINADDR, r.iova().0);
    assert_eq!(model.read64(CHANSTS), CHANSTS_HALTED);
    // DMACOUNT beyond what may be in flight.
    arm(&model, &r, 4);
    model.write16(DMACOUNT, 4);
    assert_ne!(model.chanerr() & CHANERR_DESCRIPTOR_COUNT, 0);
    // ... and a count that goes backwards is the same.
    arm(&model, &r, 4);
    model.write16(DMACOUNT, 0xffff);
    assert_ne!(model.chanerr() & CHANERR_DESCRIPTOR_COUNT, 0);
    // A halted channel stays halted: CHAINADDR and DMACOUNT change nothing, nothing runs.
    model.write64(CHAINADDR, r.iova().0);
    model.write16(DMACOUNT, 1);
    assert_eq!(model.run(4), 0);
    assert_eq!(model.read64(CHANSTS) & CHANSTS_STATUS, CHANSTS_HALTED);
    // CHANCMP misaligned; unknown command; wrong widths; read-only and unmodelled registers.
    arm(&model, &r, 4);
    model.write64(CHANCMP, r.iova().0 + 4);
    assert_ne!(model.chanerr() & CHANERR_COMPLETION_ADDR, 0);
    arm(&model, &r, 4);
    model.write8(CHANCMD, 0x08);
    assert_ne!(model.chanerr() & CHANERR_CHANCMD, 0);
    assert_eq!(model.read32(CHANCMD), u32::MAX);
    model.write32(DMACOUNT, 1);
    model.write64(CHANSTS, 0);
    model.write8(CBVER, 0);
    assert_eq!(model.read8(0x200), u8::MAX);
    let v = model.violations();
    assert_eq!(v.len(), 13, "{v:#?}");
}

#[test]
fn model_halts_on_bad_descriptors() {
    let model = IoatModel::new(IoatModelConfig {
        xfercap_log: 10,
        ..Default::default()
    });
    let r = ring(&model, 4);
    let mut src = Buf::pattern(4096, 12);
    let mut dst = Buf::filled(4096, 0);
    map(&model, &src);
    map(&model, &dst);
    let cases: [(u32, u32, Iova, u32); 5] = [
        (0, COPY, src.at(0), CHANERR_LENGTH),
        (1025, COPY, src.at(0), CHANERR_LENGTH),
        (64, 0x87 << CTL_OP_SHIFT, src.at(0), CHANERR_CONTROL),
        (64, COPY, Iova(0x1000), CHANERR_SRC_ADDR),
        (64, COPY, src.at(4090), CHANERR_SRC_ADDR),
    ];
    for (size, ctl, from, bit) in cases {
        desc(&r, 0, size, ctl, from, dst.at(0));
        arm(&model, &r, 4);
        model.write16(DMACOUNT, 1);
        assert_eq!(model.run(4), 0);
        assert_eq!(model.chanerr(), bit, "size {size} ctl {ctl:#x}");
        // The error write-back: HALTED, no descriptor completed since the reset.
        assert_eq!(r.atomic_u64(4 * DESC_SIZE).load(Relaxed), CHANSTS_HALTED);
    }
    // A misaligned next pointer: the first descriptor completes, the next fetch fails.
    desc(&r, 0, 64, COPY, src.at(0), dst.at(0));
    r.write_u64(DESC_NEXT_OFF, r.iova().0 + DESC_SIZE as u64 + 8);
    arm(&model, &r, 4);
    model.write16(DMACOUNT, 2);
    assert_eq!(model.run(4), 1);
    assert_eq!(model.chanerr(), CHANERR_NEXT_DESC_ALIGN);
    assert_eq!(
        r.atomic_u64(4 * DESC_SIZE).load(Relaxed),
        r.iova().0 | CHANSTS_HALTED
    );
    // A chain that starts in unmapped memory.
    model.write32(CHANERR, u32::MAX);
    model.write8(CHANCMD, CHANCMD_RESET);
    model.write64(CHAINADDR, 0x4000);
    model.write16(CHANCTRL, CHANCTRL_ANY_ERR_ABORT_EN);
    model.write16(DMACOUNT, 1);
    assert_eq!(model.run(4), 0);
    assert_eq!(model.chanerr(), CHANERR_CHAIN_ADDR_VALUE);
    no_violations(&model);
}
