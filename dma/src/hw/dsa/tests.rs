//! DSA setup against the model, and the model's command error codes.

use super::regs::*;
use super::*;
use crate::DmaError;
use crate::hw::mmio::Mmio;
use crate::model::{DsaModel, DsaModelConfig};

fn no_violations(model: &DsaModel) {
    let v = model.violations();
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn setup_enables_one_dedicated_wq_and_drop_disables_it() {
    let model = DsaModel::new(DsaModelConfig::default());
    let dev = DsaDevice::setup(model.clone()).unwrap();
    let caps = *dev.caps();
    assert_eq!(
        (caps.groups, caps.engines, caps.wqs, caps.total_wq_size),
        (4, 4, 8, 128)
    );
    assert_eq!((caps.max_xfer_shift, caps.max_batch_shift), (31, 10));
    assert!(caps.dedicated && caps.shared);
    assert_eq!(caps.wqcfg_bytes, 32);
    assert!(model.enabled() && model.wq_enabled(0) && dev.wq_enabled());
    assert!((1..8).all(|w| !model.wq_enabled(w)));
    assert_eq!(model.read64(caps.grpcfg_reg(0, GRPCFG_ENGINES)), 1);
    assert_eq!(model.read64(caps.grpcfg_reg(0, GRPCFG_WQS)), 1);
    assert_eq!(model.read32(caps.wqcfg_word(0, WQCFG_SIZE_WORD)), 128);
    drop(dev);
    assert!(!model.enabled() && !model.wq_enabled(0));
    no_violations(&model);
}

#[test]
fn setup_is_refused_without_dedicated_wqs() {
    let model = DsaModel::new(DsaModelConfig {
        dedicated_mode: false,
        ..Default::default()
    });
    assert!(matches!(
        DsaDevice::setup(model.clone()),
        Err(DmaError::Device(_))
    ));
    assert!(!model.enabled());
    no_violations(&model);
}

/// Runs `cmd` on the model and returns its error code.
fn code(model: &DsaModel, cmd: u32, operand: u32) -> u8 {
    match command(model, cmd, operand) {
        Ok(()) => 0,
        Err(DmaError::DeviceCommand { cmd: c, code }) => {
            assert_eq!(c, cmd);
            code
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn model_command_error_codes() {
    let model = DsaModel::new(DsaModelConfig {
        max_xfer_shift: 20,
        max_batch_shift: 5,
        shared_mode: false,
        ..Default::default()
    });
    let caps = DsaCaps::read(&model);
    let wq = |w: u8, word: usize| caps.wqcfg_word(w, word);
    let grp = |g: u8, reg: usize| caps.grpcfg_reg(g, reg);
    let good_mode = 1 << WQ_PRIORITY_SHIFT | WQ_MODE_DEDICATED;
    assert_eq!(code(&model, 0x1f, 0), err::INVAL_CMD);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::DEV_NOTEN);
    assert_eq!(code(&model, cmd::DISABLE_DEV, 0), err::DIS_DEV_EN);
    assert_eq!(code(&model, cmd::DISABLE_WQ, 1), err::DEV_NOT_EN);
    // Sizes beyond the total.
    model.write32(wq(0, WQCFG_SIZE_WORD), 100);
    model.write32(wq(1, WQCFG_SIZE_WORD), 29);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::WQ_SIZE_ERANGE);
    // A sized WQ in no group; then in a group without engine; then an engine in two groups.
    model.write32(wq(1, WQCFG_SIZE_WORD), 0);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::GRP_CONFIG);
    model.write64(grp(0, GRPCFG_WQS), 1);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::GRP_CONFIG);
    model.write64(grp(0, GRPCFG_ENGINES), 1);
    model.write64(grp(1, GRPCFG_ENGINES), 1);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::GRP_CONFIG);
    model.write64(grp(1, GRPCFG_ENGINES), 1 << 9);
    assert_eq!(
        code(&model, cmd::ENABLE_DEV, 0),
        err::GRP_CONFIG,
        "beyond ENGCAP"
    );
    model.write64(grp(1, GRPCFG_ENGINES), 0);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), 0);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::DEV_ENABLED);
    // ENABLE_WQ's checks, one at a time.
    assert_eq!(code(&model, cmd::ENABLE_WQ, 8), err::INVAL_WQIDX);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 1), err::WQ_SIZE);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::WQ_PRIOR);
    model.write32(wq(0, WQCFG_MODE_WORD), 1 << WQ_PRIORITY_SHIFT);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::WQ_MODE, "shared");
    model.write32(wq(0, WQCFG_MODE_WORD), good_mode);
    model.write32(wq(0, WQCFG_SIZES_WORD), 21);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::MAX_XFER_SIZE);
    model.write32(wq(0, WQCFG_SIZES_WORD), 20 | 6 << WQ_BATCH_SHIFT);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::MAX_BATCH_SIZE);
    model.write32(wq(0, WQCFG_SIZES_WORD), 20 | 5 << WQ_BATCH_SHIFT);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), 0);
    assert!(model.wq_enabled(0));
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::WQ_ENABLED);
    assert_eq!(
        model.read32(wq(0, WQCFG_STATE_WORD)) >> WQ_STATE_SHIFT,
        WQ_STATE_ENABLED
    );
    no_violations(&model);
    // Writes silicon ignores: configuration of an enabled device or WQ, the state word,
    // read-only registers, wrong widths, unmodelled offsets.
    model.write64(grp(0, GRPCFG_ENGINES), 3);
    model.write32(wq(0, WQCFG_SIZE_WORD), 1);
    model.write32(wq(1, WQCFG_STATE_WORD), 1);
    model.write64(GENCAP, 0);
    model.write64(CMD, 0);
    assert_eq!(model.read32(0x3000), u32::MAX);
    assert_eq!(model.violations().len(), 6, "{:#?}", model.violations());
    assert_eq!(model.read64(grp(0, GRPCFG_ENGINES)), 1, "ignored");
    assert_eq!(code(&model, cmd::DISABLE_WQ, 1 << 9), err::INVAL_WQIDX);
    assert_eq!(code(&model, cmd::DISABLE_WQ, 1), 0);
    assert!(!model.wq_enabled(0));
    assert_eq!(code(&model, cmd::DISABLE_DEV, 0), 0);
    assert_eq!(code(&model, cmd::RESET_DEVICE, 0), 0);
    assert_eq!(
        model.read64(grp(0, GRPCFG_WQS)),
        0,
        "a reset zeroes the tables"
    );
}

// ---- the data path: DsaChannel against the model ----

mod data_path {
    use std::sync::Arc;

    use super::super::regs::{COMP_BYTES_SHIFT, DESC_SIZE, comp, flag, op};
    use super::super::{Descriptor, DsaChannel, DsaDevice, DsaFaultInfo, Portal, command};
    use super::cmd;
    use crate::hw::dma_mem::DmaRegion;
    use crate::model::{DsaFault, DsaModel, DsaModelConfig, DsaPortal};
    use crate::tests::Buf;
    use crate::{ChannelConfig, DmaEngine, DmaError, FailPolicy, Iova, OpFlags, Sge, Status};

    type Chan = DsaChannel<DsaModel, DsaPortal>;

    fn channel(ring: u16, max_sges: u16, cfg: DsaModelConfig) -> (DsaModel, Chan) {
        let model = DsaModel::new(cfg);
        let dev = DsaDevice::setup(model.clone()).unwrap();
        let ch = ChannelConfig {
            max_sges,
            ..ChannelConfig::new(ring)
        };
        let dma = DsaChannel::new(dev, model.portal(0), &ch, Arc::new(model.clone())).unwrap();
        (model, dma)
    }

    fn map(model: &DsaModel, buf: &Buf) {
        // SAFETY: every buffer mapped here outlives the model's runs in its test (declared
        // before the channel, dropped after its last run).
        assert!(unsafe { model.map(Iova::from_ptr(buf.0.as_ptr()), buf.0.len() as u64) });
    }

    /// Runs the model and collects the statuses of the next `n` jobs.
    fn drain(model: &DsaModel, dma: &mut Chan, n: usize) -> Vec<Status> {
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

    fn no_violations(model: &DsaModel) {
        let v = model.violations();
        assert!(v.is_empty(), "{v:#?}");
    }

    fn small_batches() -> DsaModelConfig {
        DsaModelConfig {
            max_batch_shift: 3,
            ..Default::default()
        }
    }

    #[test]
    fn copies_byte_for_byte_in_one_batch_per_submit() {
        let (model, mut dma) = channel(16, 1, DsaModelConfig::default());
        let sizes = [1usize, 63, 64, 4097, 70_000];
        let mut src = Buf::pattern(sizes.iter().sum::<usize>() + 16, 1);
        let mut dst = Buf::filled(sizes.iter().sum::<usize>() + 16, 0xee);
        map(&model, &src);
        map(&model, &dst);
        let mut at = 0;
        for (k, &n) in sizes.iter().enumerate() {
            // SAFETY: the buffers outlive the jobs, reported by `drain`.
            let idx = unsafe { dma.copy(src.at(at), dst.at(at + 3), n as u32, OpFlags::NONE) };
            assert_eq!(idx.unwrap(), k as u16);
            at += n;
        }
        assert_eq!(model.stats().submitted, 0, "nothing before the submit");
        dma.submit().unwrap();
        assert_eq!(model.stats().submitted, 1, "one BATCH descriptor");
        assert_eq!(drain(&model, &mut dma, 5), [Status::Successful; 5]);
        assert!(dst.0[3..at + 3] == src.0[..at]);
        assert!(
            dst.0[..3]
                .iter()
                .chain(&dst.0[at + 3..])
                .all(|&b| b == 0xee)
        );
        let s = model.stats();
        assert_eq!((s.batches, s.descriptors), (1, 5));
        // Successful members write no record; the batch's own record is the only one.
        assert_eq!(s.records, 1);
        no_violations(&model);
    }

    /// Submits `n` one-descriptor jobs at once; returns the model's portal writes.
    fn submit_n(n: usize) -> u64 {
        let (model, mut dma) = channel(16, 1, small_batches());
        assert_eq!(dma.max_batch(), 8);
        let mut src = Buf::pattern(64 * n, n as u32);
        let mut dst = Buf::filled(64 * n, 0);
        map(&model, &src);
        map(&model, &dst);
        for k in 0..n {
            // SAFETY: the buffers outlive the jobs, reported by `drain`.
            unsafe { dma.copy(src.at(k * 64), dst.at(k * 64), 64, OpFlags::NONE) }.unwrap();
        }
        dma.submit().unwrap();
        assert_eq!(drain(&model, &mut dma, n), vec![Status::Successful; n]);
        assert!(dst.0 == src.0, "{n} jobs");
        no_violations(&model);
        let s = model.stats();
        assert_eq!(s.descriptors, n as u64);
        s.submitted * 100 + s.batches
    }

    #[test]
    fn batch_boundaries() {
        // Portal writes * 100 + batches: a lone job goes as itself; 2..=8 as one batch; the
        // ninth job starts a second (lone) one.
        assert_eq!(submit_n(1), 100);
        assert_eq!(submit_n(2), 101);
        assert_eq!(submit_n(8), 101);
        assert_eq!(submit_n(9), 201);
        assert_eq!(submit_n(16), 202);
    }

    #[test]
    fn ring_wraps_with_batches_across_its_end() {
        // Ring of 4 jobs of up to 3 descriptors: 16 descriptor slots, batches of up to 8.
        let (model, mut dma) = channel(4, 2, small_batches());
        assert_eq!(dma.descriptors(), 16);
        let jobs = 1000usize;
        let mut src = Buf::pattern(48 * jobs, 2);
        let mut dst = Buf::filled(48 * jobs, 0);
        map(&model, &src);
        map(&model, &dst);
        let mut next = 0usize;
        let mut reported = 0usize;
        let mut round = 0usize;
        while reported < jobs {
            // 1 to 4 jobs per submit, plain or split in three pieces.
            let burst = 1 + round % 4;
            for _ in 0..burst.min(usize::from(dma.burst_capacity())) {
                if next == jobs {
                    break;
                }
                let (s, d) = (src.at(next * 48), dst.at(next * 48));
                // SAFETY: the buffers outlive the jobs, all reported in this loop.
                unsafe {
                    if next % 3 == 0 {
                        dma.copy(s, d, 48, OpFlags::NONE).unwrap();
                    } else {
                        let sl = [Sge::new(s, 20), Sge::new(s.add(20), 28)];
                        let dl = [Sge::new(d, 30), Sge::new(d.add(30), 18)];
                        dma.copy_sg(&sl, &dl, OpFlags::NONE).unwrap();
                    }
                }
                next += 1;
            }
            dma.submit().unwrap();
            model.run(1 + round % 5);
            let mut st = [Status::ErrorUnknown; 4];
            let c = dma.completed_status(4, &mut st);
            assert!(st[..usize::from(c.count)].iter().all(|s| s.is_ok()));
            reported += usize::from(c.count);
            round += 1;
        }
        assert!(dst.0 == src.0);
        assert_eq!(dma.stats().completed, jobs as u64);
        no_violations(&model);
    }

    #[test]
    fn out_of_order_engines_are_retired_in_order() {
        let (model, mut dma) = channel(
            16,
            1,
            DsaModelConfig {
                parallel: 4,
                ..Default::default()
            },
        );
        let mut src = Buf::pattern(8 * 256, 3);
        let mut dst = Buf::filled(8 * 256, 0);
        map(&model, &src);
        map(&model, &dst);
        for k in 0..8 {
            // SAFETY: the buffers outlive the jobs, reported below.
            unsafe { dma.copy(src.at(k * 256), dst.at(k * 256), 256, OpFlags::SUBMIT) }.unwrap();
        }
        let done =
            |dst: &Buf, k: usize| dst.0[k * 256..(k + 1) * 256] == src.0[k * 256..(k + 1) * 256];
        // The newest of the four taken finishes first: job 3, then 2, then 1.
        for step in 0..3 {
            assert_eq!(model.run(1), 1);
            assert!(done(&dst, 3 - step) && !done(&dst, 0));
            let c = dma.completed(16);
            assert_eq!((c.count, c.last_idx), (0, 0xffff), "nothing before job 0");
        }
        assert!(model.stats().out_of_order >= 3);
        // Job 0 finishes: 0..=3 are reported, in order.
        assert_eq!(model.run(1), 1);
        let mut st = [Status::ErrorUnknown; 16];
        let c = dma.completed_status(16, &mut st);
        assert_eq!((c.count, c.last_idx, c.has_error), (4, 3, false));
        let st = drain(&model, &mut dma, 4);
        assert_eq!(st, [Status::Successful; 4]);
        assert!(dst.0 == src.0);
        no_violations(&model);
    }

    #[test]
    fn a_fault_at_job_n_fails_that_job_only_and_the_channel_goes_on() {
        for parallel in [1, 3] {
            let (model, mut dma) = channel(
                16,
                1,
                DsaModelConfig {
                    parallel,
                    ..Default::default()
                },
            );
            let mut src = Buf::pattern(20 * 100, 4);
            let mut dst = Buf::filled(20 * 100, 0xee);
            map(&model, &src);
            map(&model, &dst);
            model.set_fault(DsaFault::AtDescriptor {
                n: 4,
                status: comp::XFER_ERANGE,
            });
            // Jobs 0..6 in one batch, 6..10 one by one.
            for k in 0..10 {
                let flags = if k >= 5 {
                    OpFlags::SUBMIT
                } else {
                    OpFlags::NONE
                };
                // SAFETY: the buffers outlive the jobs, reported below.
                unsafe { dma.copy(src.at(k * 100), dst.at(k * 100), 100, flags) }.unwrap();
            }
            for _ in 0..20 {
                model.run(4);
            }
            let c = dma.completed(16);
            assert_eq!(
                (c.count, c.last_idx, c.has_error),
                (4, 3, true),
                "{parallel}"
            );
            let st = drain(&model, &mut dma, 6);
            assert_eq!(st[0], Status::InvalidLength);
            assert!(st[1..].iter().all(|s| s.is_ok()), "{st:?}");
            // Usable afterwards.
            for k in 10..20 {
                // SAFETY: as above.
                unsafe { dma.copy(src.at(k * 100), dst.at(k * 100), 100, OpFlags::NONE) }.unwrap();
            }
            dma.submit().unwrap();
            assert_eq!(drain(&model, &mut dma, 10), [Status::Successful; 10]);
            for k in 0..20 {
                let d = &dst.0[k * 100..(k + 1) * 100];
                assert_eq!(d == &src.0[k * 100..(k + 1) * 100], k != 4, "job {k}");
            }
            assert_eq!(dma.stats().errors, 1);
            no_violations(&model);
        }
    }

    #[test]
    fn unmapped_addresses_are_page_faults_with_their_address() {
        let (model, mut dma) = channel(16, 1, DsaModelConfig::default());
        let mut src = Buf::pattern(4 * 4096, 5);
        let mut dst = Buf::filled(4 * 4096, 0xee);
        let mut stray = Buf::filled(4096, 0x55);
        map(&model, &src);
        // Only the first half of the destination's last page is mapped.
        // SAFETY: `dst` outlives the model's runs.
        assert!(unsafe { model.map(dst.at(0), 3 * 4096 + 2048) });
        let (s1, d2) = (stray.at(0), stray.at(0));
        // SAFETY: the buffers outlive the jobs, reported by `drain`; `stray` is not mapped, so
        // the model never touches it, nor the unmapped half page of `dst`.
        unsafe {
            dma.copy(src.at(0), dst.at(0), 4096, OpFlags::NONE).unwrap();
            dma.copy(s1, dst.at(4096), 4096, OpFlags::NONE).unwrap();
            dma.copy(src.at(8192), d2, 4096, OpFlags::NONE).unwrap();
            dma.copy(src.at(3 * 4096), dst.at(3 * 4096), 4096, OpFlags::SUBMIT)
                .unwrap();
        }
        let st = drain(&model, &mut dma, 4);
        assert_eq!(
            st,
            [
                Status::Successful,
                Status::PageFault,
                Status::PageFault,
                Status::PageFault
            ]
        );
        // The last job moved the bytes before the fault, and reports where it stopped.
        let fault = dma.last_fault().unwrap();
        let stop = dst.at(3 * 4096 + 2048);
        assert_eq!(
            fault,
            DsaFaultInfo {
                job: 3,
                addr: stop,
                write: true
            }
        );
        assert!(dst.0[..4096] == src.0[..4096]);
        assert!(dst.0[4096..3 * 4096].iter().all(|&b| b == 0xee));
        assert!(dst.0[3 * 4096..3 * 4096 + 2048] == src.0[3 * 4096..3 * 4096 + 2048]);
        assert!(dst.0[3 * 4096 + 2048..].iter().all(|&b| b == 0xee));
        assert!(stray.0.iter().all(|&b| b == 0x55));
        no_violations(&model);

        // The read fault alone: its address is the unmapped source.
        // SAFETY: as above.
        unsafe { dma.copy(s1, dst.at(0), 64, OpFlags::SUBMIT) }.unwrap();
        assert_eq!(drain(&model, &mut dma, 1), [Status::PageFault]);
        let f = dma.last_fault().unwrap();
        assert_eq!((f.addr, f.write), (s1, false));
    }

    #[test]
    fn the_wq_is_never_over_filled() {
        let (model, mut dma) = channel(
            32,
            1,
            DsaModelConfig {
                total_wq_size: 4,
                ..Default::default()
            },
        );
        assert_eq!(dma.wq_size(), 4);
        let mut src = Buf::pattern(10 * 64, 6);
        let mut dst = Buf::filled(10 * 64, 0);
        map(&model, &src);
        map(&model, &dst);
        for k in 0..10 {
            // SAFETY: the buffers outlive the jobs, reported by `drain`.
            unsafe { dma.copy(src.at(k * 64), dst.at(k * 64), 64, OpFlags::SUBMIT) }.unwrap();
        }
        assert_eq!((dma.batches_in_wq(), dma.batches_held()), (4, 6));
        assert_eq!(model.queued(0), 4);
        assert_eq!(dma.burst_capacity(), 22, "held jobs hold ring slots");
        assert_eq!(drain(&model, &mut dma, 10), [Status::Successful; 10]);
        assert_eq!((dma.batches_in_wq(), dma.batches_held()), (0, 0));
        assert!(dst.0 == src.0);
        assert_eq!(model.stats().dropped, 0);
        no_violations(&model);
    }

    /// A: X -> Y submitted; then B: Y -> Z, fenced or not, submitted; four engines, newest
    /// first. Returns whether Z == X.
    fn fence_after_submit(fence: OpFlags) -> bool {
        let (model, mut dma) = channel(
            8,
            1,
            DsaModelConfig {
                parallel: 4,
                ..Default::default()
            },
        );
        let len = 4096;
        let mut x = Buf::pattern(len, 7);
        let mut y = Buf::filled(len, 0);
        let mut z = Buf::filled(len, 0);
        for b in [&x, &y, &z] {
            map(&model, b);
        }
        // SAFETY: the buffers outlive the jobs, reported by `drain`. Without the fence B reads
        // Y before A writes it: wrong bytes (one thread), not undefined behaviour.
        unsafe {
            dma.copy(x.at(0), y.at(0), len as u32, OpFlags::SUBMIT)
                .unwrap();
            dma.copy(y.at(0), z.at(0), len as u32, fence | OpFlags::SUBMIT)
                .unwrap();
        }
        let held = dma.batches_held();
        assert_eq!(held, u16::from(fence == OpFlags::FENCE));
        assert!(drain(&model, &mut dma, 2).iter().all(|s| s.is_ok()));
        no_violations(&model);
        z.0 == x.0
    }

    #[test]
    fn a_fence_holds_the_batch_until_earlier_ones_are_retired() {
        assert!(fence_after_submit(OpFlags::FENCE));
        // Control: out of order, B runs before A when nothing fences them.
        assert!(!fence_after_submit(OpFlags::NONE));
    }

    #[test]
    fn a_disabled_wq_is_a_clear_error() {
        let (model, mut dma) = channel(8, 1, DsaModelConfig::default());
        let mut src = Buf::pattern(64, 8);
        let mut dst = Buf::filled(64, 0);
        map(&model, &src);
        map(&model, &dst);
        command(&model, cmd::DISABLE_WQ, 1).unwrap();
        // SAFETY: the WQ drops the descriptor: the model never touches the buffers.
        unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::SUBMIT) }.unwrap();
        assert_eq!(model.stats().dropped, 1);
        let v = model.violations();
        assert!(v.len() == 1 && v[0].contains("disabled WQ 0"), "{v:#?}");
        let mut st = [Status::Successful; 1];
        let mut c = dma.completed_status(1, &mut st);
        for _ in 0..200 {
            if c.count > 0 {
                break;
            }
            model.run(4);
            c = dma.completed_status(1, &mut st);
        }
        assert_eq!((c.count, st[0]), (1, Status::ErrorUnknown));
        assert!(dma.broken().unwrap().contains("disabled"));
        // SAFETY: refused: nothing is enqueued.
        let again = unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::SUBMIT) };
        assert!(matches!(again, Err(DmaError::Device(_))));
        assert!(matches!(dma.submit(), Err(DmaError::Device(_))));
        assert!(dst.0.iter().all(|&b| b == 0));
    }

    #[test]
    fn drop_disables_the_device_and_unmaps_the_rings() {
        let (model, mut dma) = channel(8, 1, DsaModelConfig::default());
        let mut src = Buf::pattern(64, 9);
        let mut dst = Buf::filled(64, 0);
        map(&model, &src);
        map(&model, &dst);
        assert_eq!(model.mappings().len(), 3);
        // SAFETY: dropping the channel disables the WQ, which forgets the job, before it
        // returns; the model never runs it.
        unsafe { dma.copy(src.at(0), dst.at(0), 64, OpFlags::SUBMIT) }.unwrap();
        drop(dma);
        assert!(!model.enabled() && !model.wq_enabled(0));
        assert_eq!(model.mappings().len(), 2, "the driver's region is unmapped");
        assert_eq!(model.run(16), 0, "nothing left to run");
        assert!(dst.0.iter().all(|&b| b == 0));
        no_violations(&model);
    }

    #[test]
    fn bad_configurations_and_too_long_copies_are_refused() {
        let (model, mut dma) = channel(
            4,
            1,
            DsaModelConfig {
                max_xfer_shift: 12,
                ..Default::default()
            },
        );
        assert_eq!(dma.max_transfer(), 4096);
        let mut b = Buf::filled(8192, 0);
        map(&model, &b);
        // SAFETY: refused: nothing is enqueued.
        let long = unsafe { dma.copy(b.at(0), b.at(4096), 4097, OpFlags::SUBMIT) };
        assert!(matches!(
            long,
            Err(DmaError::TooLong {
                len: 4097,
                max: 4096
            })
        ));
        assert_eq!(dma.in_flight(), 0);
        drop(dma);

        let fresh = || DsaModel::new(small_batches());
        let inject = ChannelConfig {
            fail: FailPolicy::Index {
                idx: 0,
                status: Status::PageFault,
            },
            ..ChannelConfig::new(8)
        };
        let sg = ChannelConfig {
            max_sges: 8,
            ..ChannelConfig::new(8)
        };
        for (cfg, what) in [
            (inject, "failure injection"),
            (sg, "15 pieces, batches of 8"),
        ] {
            let m = fresh();
            let dev = DsaDevice::setup(m.clone()).unwrap();
            let r = DsaChannel::new(dev, m.portal(0), &cfg, Arc::new(m.clone()));
            assert!(matches!(r, Err(DmaError::InvalidConfig(_))), "{what}");
            assert!(m.mappings().is_empty() && !m.enabled(), "{what}");
        }
    }

    // ---- the model's descriptor rules, with hand-built descriptors ----

    fn desc(opcode: u8, flags: u32, comp: u64, src: u64, dst: u64, size: u32) -> Descriptor {
        let opflags = u64::from(u32::from(opcode) << 24 | flags);
        Descriptor([opflags << 32, comp, src, dst, u64::from(size), 0, 0, 0])
    }

    /// An enabled device (WQ 0, size 8, batches of up to 8) and a mapped region of `descs`
    /// descriptors then as many 32-byte records.
    fn rig(descs: usize) -> (DsaModel, DsaDevice<DsaModel>, DmaRegion) {
        let model = DsaModel::new(DsaModelConfig {
            total_wq_size: 8,
            ..small_batches()
        });
        let dev = DsaDevice::setup(model.clone()).unwrap();
        let r = DmaRegion::new(descs * DESC_SIZE + descs * 32).unwrap();
        // SAFETY: each test drops the region after the model's last run.
        assert!(unsafe { model.map(r.iova(), r.len() as u64) });
        (model, dev, r)
    }

    fn rec(r: &DmaRegion, descs: usize, i: usize) -> (u64, u64) {
        let off = descs * DESC_SIZE + i * 32;
        (r.read_u64(off), r.read_u64(off + 8))
    }

    fn put(r: &DmaRegion, i: usize, d: &Descriptor) {
        for (k, w) in d.0.iter().enumerate() {
            r.write_u64(i * DESC_SIZE + 8 * k, *w);
        }
    }

    #[test]
    fn model_batch_rules() {
        let (model, _dev, r) = rig(8);
        let base = r.iova().0;
        let crec = |i: usize| base + (8 * DESC_SIZE + i * 32) as u64;
        let mut src = Buf::pattern(256, 10);
        let mut dst = Buf::filled(256, 0);
        map(&model, &src);
        map(&model, &dst);
        let portal = model.portal(0);
        let crav = flag::CRAV;
        let all = flag::CRAV | flag::RCR;
        // Members: a copy, a nested batch (bad opcode), a fenced copy (abandoned).
        put(
            &r,
            0,
            &desc(op::MEMMOVE, crav, crec(0), src.at(0).0, dst.at(0).0, 64),
        );
        put(&r, 1, &desc(op::BATCH, crav, crec(1), base, 0, 2));
        put(
            &r,
            2,
            &desc(
                op::MEMMOVE,
                crav | flag::FENCE,
                crec(2),
                src.at(64).0,
                dst.at(64).0,
                64,
            ),
        );
        portal.submit(&desc(op::BATCH, all, crec(7), base, 0, 3));
        assert_eq!(model.run(16), 3);
        let (w0, _) = rec(&r, 8, 7);
        assert_eq!(
            (w0 as u8, w0 >> COMP_BYTES_SHIFT),
            (comp::BATCH_FAIL, 2),
            "two processed"
        );
        assert_eq!(rec(&r, 8, 0).0, 0, "success without RCR: no record");
        assert_eq!(rec(&r, 8, 1).0 as u8, comp::BAD_OPCODE);
        assert_eq!(rec(&r, 8, 2).0, 0, "abandoned: no record");
        assert!(dst.0[..64] == src.0[..64] && dst.0[64..].iter().all(|&b| b == 0));
        // A batch of one; a misaligned list; an unmapped list (fault address reported).
        for (list, count, code) in [
            (base, 1, comp::DESC_CNT_ERANGE),
            (base, 9, comp::DESC_CNT_ERANGE),
            (base + 32, 2, comp::DESCLIST_ALIGN),
            (0x1000, 2, comp::BATCH_PAGE_FAULT),
        ] {
            r.write_u64(8 * DESC_SIZE + 6 * 32, 0);
            portal.submit(&desc(op::BATCH, all, crec(6), list, 0, count));
            model.run(4);
            let (w0, fault) = rec(&r, 8, 6);
            assert_eq!(w0 as u8, code, "list {list:#x} count {count}");
            if code == comp::BATCH_PAGE_FAULT {
                assert_eq!(fault, 0x1000);
            }
        }
        // Unknown flags; a zero-length move; RCR alone (no CRAV) writes nothing.
        portal.submit(&desc(
            op::MEMMOVE,
            all | flag::RCI,
            crec(5),
            src.at(0).0,
            dst.at(0).0,
            8,
        ));
        portal.submit(&desc(
            op::MEMMOVE,
            crav,
            crec(4),
            src.at(0).0,
            dst.at(0).0,
            0,
        ));
        portal.submit(&desc(op::NOOP, flag::RCR, crec(3), 0, 0, 0));
        model.run(8);
        assert_eq!(rec(&r, 8, 5).0 as u8, comp::INVALID_FLAGS);
        assert_eq!(rec(&r, 8, 4).0 as u8, comp::XFER_ERANGE);
        assert_eq!(rec(&r, 8, 3).0, 0);
        no_violations(&model);
    }

    #[test]
    fn model_drops_what_silicon_drops() {
        let (model, mut dev, r) = rig(1);
        let portal = model.portal(0);
        let nop = desc(op::NOOP, flag::CRAV | flag::RCR, r.iova().0 + 64, 0, 0, 0);
        for _ in 0..9 {
            portal.submit(&nop);
        }
        assert_eq!(model.queued(0), 8, "the ninth is beyond the WQ's 8 entries");
        model.portal(1).submit(&nop);
        model.portal(9).submit(&nop);
        assert_eq!(model.run(16), 8);
        assert_eq!(rec(&r, 1, 0).0 as u8, comp::SUCCESS);
        // A record that cannot be written: logged, not written.
        portal.submit(&desc(op::NOOP, flag::CRAV | flag::RCR, 0x1000, 0, 0, 0));
        model.run(1);
        dev.disable().unwrap();
        portal.submit(&nop);
        let v = model.violations();
        assert_eq!(v.len(), 5, "{v:#?}");
        assert_eq!(model.stats().dropped, 4);
    }

    #[test]
    fn model_drain_waits_for_earlier_descriptors() {
        let (model, _dev, r) = rig(4);
        model.set_parallel(4);
        let crec = |i: usize| r.iova().0 + (4 * DESC_SIZE + i * 32) as u64;
        let portal = model.portal(0);
        let all = flag::CRAV | flag::RCR;
        portal.submit(&desc(op::NOOP, all, crec(0), 0, 0, 0));
        portal.submit(&desc(op::DRAIN, all, crec(1), 0, 0, 0));
        portal.submit(&desc(op::NOOP, all, crec(2), 0, 0, 0));
        // Newest first: the last NOOP, then (the drain waiting) the first, then the drain.
        model.run(1);
        assert_eq!(
            [0, 1, 2].map(|i| rec(&r, 4, i).0 as u8),
            [0, 0, comp::SUCCESS]
        );
        model.run(1);
        assert_eq!(rec(&r, 4, 1).0, 0, "the drain waits for the first NOOP");
        model.run(1);
        assert_eq!([0, 1, 2].map(|i| rec(&r, 4, i).0 as u8), [comp::SUCCESS; 3]);
        no_violations(&model);
    }
}
