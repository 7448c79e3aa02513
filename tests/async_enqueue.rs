//! The asynchronous enqueue path over a real socket and real shared memory, with the engines of
//! rvhost-dma as copy devices: the CPU engine (completes at submit) and the software engine on
//! its own thread (several lanes that finish out of order, failure injection, throttling).
//! The guest (the Rust frontend) must see exactly what the sync path gives it, in submission
//! order, whatever the engine does; every mbuf comes back exactly once.

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::pkt::{mbuf_of, payload};
use common::{Bed, both_rings, ring};
use rvhost::driver::Flags;
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX};
use rvhost::frontend::{FrontendOptions, TxLayout};
use rvhost::mbuf::{Mbuf, OffloadFlags, PktCache};
use rvhost::net::{
    AsyncConfig, AsyncCopyOps, AsyncError, QueuePair, async_channel_register,
    async_channel_unregister, async_clear_queue, async_in_flight, async_stats, enqueue_burst,
    poll_enqueue_completed, submit_enqueue_burst,
};
use rvhost_dma::soft::SoftWorker;
use rvhost_dma::{FailPolicy, Status};

const Q0: QueuePair = QueuePair(0);
const MRG: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX;
const NO_MRG: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

/// A bed for `features`, on the ring layout of this test thread ([`both_rings`]).
fn bed(features: u64, flags: Flags) -> Bed {
    let opts = FrontendOptions {
        features: features | ring(),
        tx_layout: TxLayout::Inline,
        mem_size: 32 << 20,
        force_small_pages: true,
        packed: ring() != 0,
        ..FrontendOptions::default()
    };
    Bed::on_ring("async", flags, opts, "async-test", 4096, 64)
}

/// The copy devices the tests run with.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Cpu,
    /// A software engine with this many lanes; lane 0 throttled to `slow` bytes/s when set,
    /// so that the others overtake it (out-of-order completion).
    Soft {
        lanes: usize,
        slow: u64,
    },
}

/// A copy device, and the thread serving it (if any), which must outlive the channel.
fn device(e: Engine, fail: FailPolicy) -> (Box<dyn AsyncCopyOps>, Option<SoftWorker>) {
    match e {
        Engine::Cpu => common::dma::copy_device(0, 0, fail),
        Engine::Soft { lanes, slow } => common::dma::copy_device(lanes, slow, fail),
    }
}

/// Submits `mbufs` and polls until all came back (or 5 s pass); returns them in the order
/// poll handed them back. Posts receive buffers and reaps the guest's packets as it goes,
/// collecting them in `got`.
fn run_async(b: &mut Bed, mbufs: Vec<Mbuf>, buf_len: usize, got: &mut Vec<Vec<u8>>) -> Vec<Mbuf> {
    run_async_by(b, mbufs, buf_len, got, usize::MAX)
}

/// As [`run_async`], submitting at most `per_call` packets per call (so that later calls find
/// earlier packets' jobs still in flight).
fn run_async_by(
    b: &mut Bed,
    mut mbufs: Vec<Mbuf>,
    buf_len: usize,
    got: &mut Vec<Vec<u8>>,
    per_call: usize,
) -> Vec<Mbuf> {
    let total = mbufs.len();
    let mut back = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(5);
    while back.len() < total && Instant::now() < deadline {
        let rx = b.fe.rx(0).unwrap();
        rx.post_rx(256, buf_len);
        let k = per_call.min(mbufs.len());
        let mut part: Vec<Mbuf> = mbufs.drain(..k).collect();
        submit_enqueue_burst(&b.dev, Q0.rx(), &mut part);
        mbufs.splice(0..0, part); // what was not taken goes first next time
        poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
        got.extend(b.fe.rx(0).unwrap().recv(64));
    }
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        let more = b.fe.rx(0).unwrap().recv(64);
        if more.is_empty() && got.len() >= total {
            break;
        }
        got.extend(more);
    }
    back
}

/// Enqueues with the sync path; returns what the guest received.
fn run_sync(b: &mut Bed, mbufs: &[Mbuf], buf_len: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while (sent < mbufs.len() || got.len() < mbufs.len()) && Instant::now() < deadline {
        b.fe.rx(0).unwrap().post_rx(256, buf_len);
        sent += enqueue_burst(&b.dev, Q0.rx(), &mbufs[sent..]);
        got.extend(b.fe.rx(0).unwrap().recv(64));
    }
    got
}

/// Frames of the given sizes, with an IPv4 EtherType and header start (for the checksum
/// offload of [`mbufs_of`]).
fn frames(sizes: &[usize], seed: usize) -> Vec<Vec<u8>> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut p = payload(n, seed + i);
            if n >= 34 {
                p[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4
                p[14] = 0x45;
            }
            p
        })
        .collect()
}

/// Mbufs holding `frames`; with `offload`, every third asks for its IPv4 header checksum.
fn mbufs_of(cache: &mut PktCache, frames: &[Vec<u8>], offload: bool) -> Vec<Mbuf> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut m = mbuf_of(cache, f);
            if offload && i % 3 == 2 && f.len() >= 34 {
                let meta = m.meta_mut();
                meta.ol_flags |= OffloadFlags::TX_IPV4 | OffloadFlags::TX_IP_CKSUM;
                meta.l2_len = 14;
                meta.l3_len = 20;
            }
            m
        })
        .collect()
}

fn register(b: &Bed, threshold: u32, ops: Box<dyn AsyncCopyOps>) {
    let cfg = AsyncConfig {
        threshold,
        ..AsyncConfig::default()
    };
    async_channel_register(&b.dev, Q0.rx(), cfg, ops).unwrap();
}

/// Frees what came `back`, checks that no mbuf of `b`'s pool is out, then drops the device
/// and the thread serving its engine (after the channel, which the device holds).
fn release(b: Bed, mut cache: PktCache, back: Vec<Mbuf>, worker: Option<SoftWorker>, ctx: &str) {
    cache.free_bulk(back);
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "{ctx}: no mbuf leaked");
    drop(b);
    drop(worker);
}

/// Packets whose copies are still running: taken by a channel on a one-lane software engine
/// throttled so that its jobs stay in flight.
struct Running {
    worker: Option<SoftWorker>,
    cache: PktCache,
    pkts: Vec<Vec<u8>>,
    /// What the channel did not take.
    left: Vec<Mbuf>,
    taken: usize,
}

/// Registers a channel on `b` (threshold 256; one lane at `bytes_per_sec`), has the guest
/// post `posted` receive buffers, and submits `n` frames of `size` bytes.
fn running(
    b: &mut Bed,
    n: usize,
    size: usize,
    seed: usize,
    bytes_per_sec: u64,
    posted: usize,
) -> Running {
    let (ops, worker) = device(
        Engine::Soft {
            lanes: 1,
            slow: bytes_per_sec,
        },
        FailPolicy::Never,
    );
    register(b, 256, ops);
    let mut cache = b.pool.cache();
    let pkts = frames(&vec![size; n], seed);
    let mut left = mbufs_of(&mut cache, &pkts, false);
    b.fe.rx(0).unwrap().post_rx(posted, 1536);
    let taken = submit_enqueue_burst(&b.dev, Q0.rx(), &mut left);
    Running {
        worker,
        cache,
        pkts,
        left,
        taken,
    }
}

impl Running {
    /// Frees what came `back` and what was not taken; then no mbuf of `b`'s pool is out.
    fn finish(mut self, b: &Bed, back: Vec<Mbuf>, what: &str) {
        self.cache.free_bulk(back);
        self.cache.free_bulk(self.left.drain(..));
        drop(self.cache);
        assert_eq!(b.pool.in_use(), 0, "{what}: no mbuf leaked");
        drop(self.worker);
    }
}

/// The same packets through the sync path and through the async path with every engine and
/// threshold put the same bytes into the guest, in the same order; every mbuf comes back.
#[test]
fn async_and_sync_give_the_guest_the_same_bytes() {
    both_rings(|| {
        for features in [MRG, NO_MRG] {
            let mergeable = features & VIRTIO_NET_F_MRG_RXBUF != 0;
            let (sizes, buf_len): (&[usize], usize) = if mergeable {
                (&[60, 64, 200, 255, 256, 257, 1000, 1514, 3000, 9000], 1536)
            } else {
                (&[60, 64, 200, 255, 256, 257, 1000, 1514], 1600)
            };
            let pkts = frames(sizes, 1);
            let mut sync = bed(features, Flags::empty());
            let mut cache = sync.pool.cache();
            let mbufs = mbufs_of(&mut cache, &pkts, true);
            let want = run_sync(&mut sync, &mbufs, buf_len);
            assert_eq!(want.len(), pkts.len(), "sync, features {features:#x}");
            cache.free_bulk(mbufs);
            drop(cache);
            for engine in [Engine::Cpu, Engine::Soft { lanes: 4, slow: 0 }] {
                for threshold in [0, 256, 1 << 20] {
                    let ctx = format!("features {features:#x} {engine:?} threshold {threshold}");
                    let mut b = bed(features, Flags::ASYNC_COPY);
                    let (ops, worker) = device(engine, FailPolicy::Never);
                    register(&b, threshold, ops);
                    let mut cache = b.pool.cache();
                    let mbufs = mbufs_of(&mut cache, &pkts, true);
                    let ptrs: Vec<usize> =
                        mbufs.iter().map(|m| m.data().as_ptr() as usize).collect();
                    let mut got = Vec::new();
                    let back = run_async(&mut b, mbufs, buf_len, &mut got);
                    assert_eq!(got.len(), want.len(), "{ctx}");
                    let bad = got.iter().zip(&want).position(|(g, w)| g != w);
                    assert_eq!(
                        bad, None,
                        "{ctx}: first packet that differs from the sync path's"
                    );
                    let back_ptrs: Vec<usize> =
                        back.iter().map(|m| m.data().as_ptr() as usize).collect();
                    assert_eq!(back_ptrs, ptrs, "{ctx}: every mbuf back once, in order");
                    let s = async_stats(&b.dev, Q0.rx()).unwrap();
                    assert_eq!(
                        (s.submitted, s.completed),
                        (pkts.len() as u64, pkts.len() as u64)
                    );
                    if threshold == 1 << 20 {
                        assert_eq!(s.dma_copies, 0, "{ctx}: nothing reaches the threshold");
                    } else {
                        assert!(s.dma_copies > 0, "{ctx}: {s:?}");
                    }
                    release(b, cache, back, worker, &ctx);
                }
            }
        }
    });
}

/// Small packets (CPU copies, done at submit) between large ones (DMA jobs) on an engine whose
/// first lane is slow, so jobs finish out of order: the guest still gets every packet in
/// submission order, and poll hands the mbufs back in that order.
#[test]
fn order_holds_with_an_out_of_order_engine_and_mixed_copies() {
    both_rings(|| {
        let mut b = bed(MRG, Flags::ASYNC_COPY);
        let (ops, worker) = device(
            Engine::Soft {
                lanes: 4,
                slow: 20 << 20,
            },
            FailPolicy::Never,
        );
        register(&b, 256, ops);
        let mut cache = b.pool.cache();
        let sizes: Vec<usize> = (0..600)
            .map(|i| [64, 1514, 60, 4000, 128, 9000][i % 6])
            .collect();
        let pkts = frames(&sizes, 7);
        let mut got = Vec::new();
        let mut back = Vec::new();
        for chunk in pkts.chunks(100) {
            let mbufs = mbufs_of(&mut cache, chunk, false);
            let ptrs: Vec<usize> = mbufs.iter().map(|m| m.data().as_ptr() as usize).collect();
            // Seven per call: a call's small packets find the previous calls' jobs in flight.
            let r = run_async_by(&mut b, mbufs, 1536, &mut got, 7);
            let rp: Vec<usize> = r.iter().map(|m| m.data().as_ptr() as usize).collect();
            assert_eq!(rp, ptrs, "mbufs back in submission order");
            back.extend(r);
        }
        assert_eq!(got.len(), pkts.len());
        let first_bad = got.iter().zip(&pkts).position(|(g, p)| g != p);
        assert_eq!(first_bad, None, "first packet out of order or corrupted");
        let s = async_stats(&b.dev, Q0.rx()).unwrap();
        assert!(s.dma_copies > 0 && s.cpu_copies > 0, "{s:?}");
        let lanes = worker.as_ref().unwrap().stats();
        assert!(
            lanes.lanes.iter().filter(|l| l.jobs > 0).count() > 1,
            "jobs spread over lanes: {lanes:?}"
        );
        cache.free_bulk(back);
        drop(cache);
        assert_eq!(b.pool.in_use(), 0);
    });
}

/// The engine fails every third job: the CPU copies those again, the guest sees intact
/// packets, and the failures are counted.
#[test]
fn failed_jobs_are_copied_again_by_the_cpu() {
    both_rings(|| {
        for engine in [Engine::Cpu, Engine::Soft { lanes: 2, slow: 0 }] {
            let mut b = bed(MRG, Flags::ASYNC_COPY);
            let fail = FailPolicy::EveryNth {
                n: NonZeroU32::new(3).unwrap(),
                status: Status::InvalidDstAddr,
            };
            let (ops, _worker) = device(engine, fail);
            register(&b, 256, ops);
            let mut cache = b.pool.cache();
            let sizes: Vec<usize> = (0..90).map(|i| [1514, 3000, 600][i % 3]).collect();
            let pkts = frames(&sizes, 3);
            let mbufs = mbufs_of(&mut cache, &pkts, false);
            let mut got = Vec::new();
            let back = run_async(&mut b, mbufs, 1536, &mut got);
            assert_eq!(back.len(), pkts.len(), "{engine:?}");
            assert_eq!(got.len(), pkts.len(), "{engine:?}");
            let bad = got.iter().zip(&pkts).position(|(g, p)| g != p);
            assert_eq!(bad, None, "{engine:?}: first packet that differs");
            let s = async_stats(&b.dev, Q0.rx()).unwrap();
            assert!(s.dma_copies >= 90, "{engine:?} {s:?}");
            assert_eq!(s.dma_errors, s.dma_copies / 3, "{engine:?} {s:?}");
            cache.free_bulk(back);
        }
    });
}

/// Jobs in flight on a slow engine when the frontend stops the ring (GET_VRING_BASE): the
/// control thread waits for them, writes the used entries, and the mbufs come back exactly
/// once, by poll or by clear. The guest has every packet it was given.
#[test]
fn stopping_the_ring_with_jobs_in_flight_returns_every_packet_once() {
    both_rings(|| {
        let mut b = bed(MRG, Flags::ASYNC_COPY);
        let r = running(&mut b, 64, 4000, 11, 4 << 20, 256);
        let taken = r.taken;
        assert!(taken > 0);
        assert!(async_in_flight(&b.dev, Q0.rx()).is_some());
        // 64 x 4000 B at 4 MB/s: most jobs are still running when the ring stops.
        b.fe.stop().unwrap();
        let mut back = Vec::new();
        poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, usize::MAX);
        async_clear_queue(&b.dev, Q0.rx(), &mut back);
        assert_eq!(back.len(), taken, "every taken mbuf back once");
        let s = async_stats(&b.dev, Q0.rx()).unwrap();
        assert_eq!(s.completed, taken as u64);
        assert!(s.drains >= 1, "the stop found jobs in flight: {s:?}");
        assert_eq!(async_in_flight(&b.dev, Q0.rx()), Some(0));
        // What the guest was given (used entries written before the base was read).
        let got = b.fe.rx(0).unwrap().recv(256);
        assert_eq!(got.len() as u64 + s.dropped, taken as u64, "{s:?}");
        assert!(got.iter().zip(&r.pkts).all(|(g, p)| g == p));
        r.finish(&b, back, "stop");
    });
}

/// The frontend goes away with jobs in flight: nothing leaks, every mbuf comes back.
#[test]
fn disconnect_with_jobs_in_flight_leaks_nothing() {
    both_rings(|| {
        let mut b = bed(MRG, Flags::ASYNC_COPY);
        let r = running(&mut b, 32, 4000, 5, 4 << 20, 256);
        let taken = r.taken;
        assert!(taken > 0);
        b.fe.disconnect();
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while back.len() < taken && Instant::now() < deadline {
            poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, usize::MAX);
            async_clear_queue(&b.dev, Q0.rx(), &mut back);
        }
        assert_eq!(back.len(), taken);
        r.finish(&b, back, "disconnect");
    });
}

/// Unregistering is refused while packets are the channel's, and works once they are back;
/// the sync path is refused on a vring with a channel, without touching the guest's buffers;
/// a channel needs the socket flag and in-order completion.
#[test]
fn channel_rules() {
    both_rings(|| {
        let plain = bed(MRG, Flags::empty());
        let (ops, _) = device(Engine::Cpu, FailPolicy::Never);
        assert!(matches!(
            async_channel_register(&plain.dev, Q0.rx(), AsyncConfig::default(), ops),
            Err(AsyncError::NotEnabled)
        ));
        drop(plain);

        let mut b = bed(MRG, Flags::ASYNC_COPY);
        let (ops, _) = device(Engine::Cpu, FailPolicy::Never);
        let ooo = AsyncConfig {
            inorder: false,
            ..AsyncConfig::default()
        };
        assert!(matches!(
            async_channel_register(&b.dev, Q0.rx(), ooo, ops),
            Err(AsyncError::OutOfOrder)
        ));
        let (ops, _) = device(Engine::Cpu, FailPolicy::Never);
        register(&b, 256, ops);
        let (ops, _) = device(Engine::Cpu, FailPolicy::Never);
        assert!(matches!(
            async_channel_register(&b.dev, Q0.rx(), AsyncConfig::default(), ops),
            Err(AsyncError::AlreadyRegistered { vring: 0 })
        ));
        let mut cache = b.pool.cache();
        let pkts = frames(&[1000; 4], 9);
        let mut mbufs = mbufs_of(&mut cache, &pkts, false);
        b.fe.rx(0).unwrap().post_rx(64, 1536);
        // Sync on an async vring: refused, the guest's buffers untouched.
        assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &mbufs), 0);
        assert!(b.fe.rx(0).unwrap().recv(8).is_empty());
        assert_eq!(submit_enqueue_burst(&b.dev, Q0.rx(), &mut mbufs), 4);
        assert!(matches!(
            async_channel_unregister(&b.dev, Q0.rx()),
            Err(AsyncError::InFlight {
                vring: 0,
                packets: 4
            })
        ));
        let mut back = Vec::new();
        poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
        assert_eq!(back.len(), 4);
        assert!(async_channel_unregister(&b.dev, Q0.rx()).is_ok());
        assert!(matches!(
            async_channel_unregister(&b.dev, Q0.rx()),
            Err(AsyncError::NotRegistered { vring: 0 })
        ));
        // Without the channel the sync path works again.
        let got = b.fe.rx(0).unwrap().recv(8);
        assert!(got == pkts, "the guest got the 4 packets");
        cache.free_bulk(back);
    });
}

/// Control requests that stop or change a vring, each arriving with jobs in flight on a slow
/// engine: the control thread drains the channel first (the request is answered only then),
/// the used entries of every taken packet are written into the rings they came from, and every
/// mbuf comes back once. The guest gets every packet intact.
#[test]
fn control_requests_with_jobs_in_flight_drain_first() {
    both_rings(|| {
        use rvhost::protocol::payload::{MemoryTable, Payload, VringAddr, VringFile, VringState};
        use rvhost::protocol::{FrontendReq as R, Header};
        use std::os::fd::AsFd;
        type Request = (&'static str, fn(&mut Bed));
        /// Sends `req` with NEED_REPLY and waits for its answer (a reply or an ack).
        fn ask(b: &mut Bed, req: R, payload: &[u8], with_fds: usize) {
            let shm = std::sync::Arc::clone(b.fe.shm());
            let fd = shm.region().fd();
            let fds = vec![fd.as_fd(); with_fds];
            let ep = b.fe.endpoint().unwrap();
            ep.send_request(req, Header::NEED_REPLY, payload, &fds)
                .unwrap();
            ep.recv_reply(req).unwrap();
        }
        let requests: [Request; 8] = [
            ("SET_VRING_ENABLE(0) of the vring", |b| {
                let p = VringState { index: 0, num: 0 }.to_bytes();
                ask(b, R::SetVringEnable, &p, 0);
            }),
            ("SET_FEATURES (the same)", |b| {
                let f = b.fe.features();
                ask(b, R::SetFeatures, &f.to_bytes(), 0);
            }),
            ("GET_VRING_BASE", |b| {
                let p = VringState { index: 0, num: 0 }.to_bytes();
                ask(b, R::GetVringBase, &p, 0);
            }),
            ("SET_VRING_NUM (the same size)", |b| {
                let num = u32::from(b.fe.ring_info(0).unwrap().size);
                ask(
                    b,
                    R::SetVringNum,
                    &VringState { index: 0, num }.to_bytes(),
                    0,
                );
            }),
            ("SET_VRING_ADDR (the same rings)", |b| {
                let i = *b.fe.ring_info(0).unwrap();
                let a = VringAddr {
                    index: 0,
                    flags: 0,
                    desc_user_addr: i.desc.fva.raw(),
                    used_user_addr: i.used.fva.raw(),
                    avail_user_addr: i.avail.fva.raw(),
                    log_guest_addr: i.used.gpa.raw(),
                };
                ask(b, R::SetVringAddr, &a.to_bytes(), 0);
            }),
            ("SET_VRING_CALL (no fd)", |b| {
                let f = VringFile {
                    index: 0,
                    no_fd: true,
                };
                ask(b, R::SetVringCall, &f.to_bytes(), 0);
            }),
            ("SET_MEM_TABLE (the same table)", |b| {
                let regions = b.fe.memory_regions();
                let n = regions.len();
                ask(b, R::SetMemTable, &MemoryTable { regions }.to_bytes(), n);
            }),
            ("RESET_OWNER", |b| ask(b, R::ResetOwner, &[], 0)),
        ];
        for (what, request) in requests {
            let mut b = bed(MRG, Flags::ASYNC_COPY);
            let r = running(&mut b, 32, 1500, 13, 2 << 20, 64);
            assert_eq!(r.taken, 32, "{what}");
            // 32 x 1500 B at 2 MB/s: ~24 ms of jobs, so the request finds them in flight.
            request(&mut b);
            let s = async_stats(&b.dev, Q0.rx()).unwrap();
            assert!(s.drains >= 1, "{what}: {s:?}");
            assert_eq!(
                s.late_drains, 0,
                "{what}: drained before the handler: {s:?}"
            );
            assert_eq!(s.completed, 32, "{what}: retired by the drain: {s:?}");
            let mut back = Vec::new();
            poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
            assert_eq!(back.len(), 32, "{what}: every mbuf back once");
            let got = b.fe.rx(0).unwrap().recv(64);
            assert_eq!(got.len(), 32, "{what}: the guest has every packet");
            assert!(got == r.pkts, "{what}: intact and in order");
            r.finish(&b, back, what);
        }
    });
}

/// A request about another vring leaves this one's copies alone: SET_VRING_ENABLE(0) of the
/// transmit vring while receive jobs are in flight drains nothing, and the packets still come
/// back through polls, intact and in order.
#[test]
fn a_request_about_another_vring_does_not_drain_this_one() {
    both_rings(|| {
        use rvhost::protocol::payload::{Payload, VringState};
        use rvhost::protocol::{FrontendReq as R, Header};
        let mut b = bed(MRG, Flags::ASYNC_COPY);
        // 32 x 1500 B at 1 MB/s: ~48 ms of jobs.
        let r = running(&mut b, 32, 1500, 14, 1 << 20, 64);
        assert_eq!(r.taken, 32);
        let ep = b.fe.endpoint().unwrap();
        let p = VringState { index: 1, num: 0 }.to_bytes();
        ep.send_request(R::SetVringEnable, Header::NEED_REPLY, &p, &[])
            .unwrap();
        ep.recv_reply(R::SetVringEnable).unwrap();
        let s = async_stats(&b.dev, Q0.rx()).unwrap();
        assert_eq!((s.drains, s.late_drains), (0, 0), "{s:?}");
        assert!(s.completed < 32, "the jobs were still running: {s:?}");
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while back.len() < 32 && Instant::now() < deadline {
            poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
        }
        assert_eq!(back.len(), 32, "every mbuf back once, through polls");
        let got = b.fe.rx(0).unwrap().recv(64);
        assert!(got == r.pkts, "intact and in order");
        r.finish(&b, back, "another vring");
    });
}

/// A memory region leaves (REM_MEM_REG, QEMU's memory hot-unplug) while jobs write into guest
/// buffers: the control thread drains the channel before it unmaps anything, so every job
/// finishes in mapped memory, every taken packet is retired once and every mbuf comes back.
#[test]
fn a_region_removed_with_jobs_in_flight_is_unmapped_after_the_drain() {
    both_rings(|| {
        use rvhost::frontend::MemTableMode;
        use rvhost::protocol::payload::{Payload, SingleMemRegion};
        use rvhost::protocol::{FrontendReq as R, Header};
        let opts = FrontendOptions {
            features: MRG | ring(),
            mem_table: MemTableMode::AddMemReg,
            regions: 2,
            mem_size: 32 << 20,
            force_small_pages: true,
            packed: ring() != 0,
            ..FrontendOptions::default()
        };
        let mut b = Bed::on_ring("async-rem", Flags::ASYNC_COPY, opts, "async-rem", 4096, 64);
        let r = running(&mut b, 48, 1500, 17, 2 << 20, 128);
        assert_eq!(r.taken, 48);
        // Every region goes: whichever holds the buffers, the drain must come first.
        for region in b.fe.memory_regions().into_iter().rev() {
            let ep = b.fe.endpoint().unwrap();
            let p = SingleMemRegion { region }.to_bytes();
            ep.send_request(R::RemMemReg, Header::NEED_REPLY, &p, &[])
                .unwrap();
            let (_, status) = ep.recv_reply(R::RemMemReg).unwrap();
            assert_eq!(u64::parse(&status).unwrap(), 0, "REM_MEM_REG accepted");
        }
        let s = async_stats(&b.dev, Q0.rx()).unwrap();
        assert!(s.drains >= 1, "{s:?}");
        assert_eq!(s.completed, 48, "every taken packet retired once: {s:?}");
        let mut back = Vec::new();
        poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
        async_clear_queue(&b.dev, Q0.rx(), &mut back);
        assert_eq!(back.len(), 48, "every mbuf back once");
        // The used entries went into the rings before their memory left the table.
        let got = b.fe.rx(0).unwrap().recv(64);
        assert_eq!(got.len() as u64 + s.dropped, 48, "{s:?}");
        assert!(got.iter().zip(&r.pkts).all(|(g, p)| g == p));
        r.finish(&b, back, "REM_MEM_REG");
    });
}

/// Receive chains a frontend's own bookkeeping does not make: indirect tables and direct
/// chains of uneven descriptors (a header-sized first one, pieces of 40 B to 5000 B), written
/// raw into the guest's rings. The sync path and the async path (every copy a job, or the
/// default threshold) write the same bytes and the same used entries, for sizes 60..9000 with
/// and without mergeable buffers.
#[test]
fn indirect_and_chained_receive_buffers_get_the_same_bytes_on_both_paths() {
    const SCRATCH: usize = (32 << 20) - (2 << 20);
    const TABLES: usize = SCRATCH;
    const BUFS: usize = SCRATCH + (64 << 10);
    // Even chains: an indirect table of these; odd chains: a direct chain of those.
    const IND: [u32; 7] = [12, 100, 700, 1500, 2000, 3000, 4000];
    const DIR: [u32; 5] = [40, 1000, 333, 5000, 5000];
    let sizes = [60usize, 200, 1000, 1514, 3000, 9000, 257, 4000];
    let pkts = frames(&sizes, 21);

    /// Writes chain `j` (head `j`) and returns its pieces as (shared-memory offset, length).
    fn post(b: &Bed, j: u16) -> Vec<(usize, u32)> {
        let base = BUFS + usize::from(j) * (16 << 10);
        let lens: &[u32] = if j % 2 == 0 { &IND } else { &DIR };
        let mut pieces = Vec::new();
        let mut at = base;
        for &len in lens {
            pieces.push((at, len));
            at += len as usize + 64;
        }
        // Even chains through an indirect table; odd ones direct, as head j then descriptors
        // 64 + 8j + 1.. of the ring's table.
        let table = (j % 2 == 0).then(|| TABLES + usize::from(j) * 256);
        b.chain(0, j, &pieces, true, table, 64 + 8 * j);
        pieces
    }

    /// Posts one chain per packet, runs `enqueue`, and returns the used entries with the
    /// bytes each made the guest see (gathered from the chain's pieces up to the used length).
    fn run(b: &mut Bed, n: usize, enqueue: impl FnOnce(&mut Bed)) -> Vec<(u32, Vec<u8>)> {
        let chains: Vec<_> = (0..n as u16).map(|j| post(b, j)).collect();
        b.avail(0, &(0..n as u16).collect::<Vec<_>>());
        enqueue(b);
        let (idx, used) = b.used(0, n);
        assert_eq!(usize::from(idx), n, "one used entry per chain");
        let mem = b.fe.shm().slice();
        used.into_iter()
            .map(|(id, len)| {
                let mut bytes = Vec::new();
                for &(off, plen) in &chains[id as usize] {
                    let take = (len as usize - bytes.len()).min(plen as usize);
                    let mut piece = vec![0u8; take];
                    mem.read_at(off, &mut piece).unwrap();
                    bytes.extend(piece);
                }
                (id, bytes)
            })
            .collect()
    }

    for features in [MRG, NO_MRG] {
        let mut sync = bed(features, Flags::empty());
        let mut cache = sync.pool.cache();
        let mbufs = mbufs_of(&mut cache, &pkts, true);
        let want = run(&mut sync, pkts.len(), |b| {
            assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &mbufs), mbufs.len());
        });
        // The guest sees header + frame for each, in order.
        for (i, (id, bytes)) in want.iter().enumerate() {
            assert_eq!(*id, i as u32, "features {features:#x}: in order");
            assert_eq!(
                bytes.len(),
                12 + pkts[i].len(),
                "features {features:#x} #{i}"
            );
        }
        cache.free_bulk(mbufs);
        drop(cache);
        for threshold in [0, 256] {
            let ctx = format!("features {features:#x} threshold {threshold}");
            let mut b = bed(features, Flags::ASYNC_COPY);
            let (ops, worker) = device(Engine::Soft { lanes: 4, slow: 0 }, FailPolicy::Never);
            register(&b, threshold, ops);
            let mut cache = b.pool.cache();
            let mut mbufs = mbufs_of(&mut cache, &pkts, true);
            let mut back = Vec::new();
            let got = run(&mut b, pkts.len(), |b| {
                assert_eq!(
                    submit_enqueue_burst(&b.dev, Q0.rx(), &mut mbufs),
                    pkts.len()
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                while back.len() < pkts.len() && Instant::now() < deadline {
                    poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
                }
            });
            assert_eq!(back.len(), pkts.len(), "{ctx}: every mbuf back");
            assert!(
                got == want,
                "{ctx}: the same used entries and bytes as the sync path"
            );
            let s = async_stats(&b.dev, Q0.rx()).unwrap();
            assert!(s.dma_copies > 0, "{ctx}: {s:?}");
            release(b, cache, back, worker, &ctx);
        }
    }
}
