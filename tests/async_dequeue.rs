//! The asynchronous dequeue path (`async_try_dequeue_burst`) over a real socket and real
//! shared memory, with the CPU engine and the software engine (several lanes, failure
//! injection, throttling) as copy devices: the host gets exactly what the sync path gives it,
//! in the guest's order; the guest gets a transmit buffer back only once its copy is done.

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::pkt::{packet_bytes, payload};
use common::{Bed, both_rings, ring};
use rvhost::driver::Flags;
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use rvhost::frontend::{FrontendOptions, TxLayout};
use rvhost::mbuf::{Mbuf, PktCache};
use rvhost::net::{
    AsyncConfig, AsyncCopyOps, QueuePair, async_channel_register, async_clear_queue, async_stats,
    async_try_dequeue_burst, dequeue_burst,
};
use rvhost_dma::soft::SoftWorker;
use rvhost_dma::{FailPolicy, Status};

const Q0: QueuePair = QueuePair(0);

/// A bed on the ring layout of this test thread ([`both_rings`]).
fn bed(layout: TxLayout, flags: Flags) -> Bed {
    let opts = FrontendOptions {
        features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | ring(),
        tx_layout: layout,
        mem_size: 32 << 20,
        force_small_pages: true,
        packed: ring() != 0,
        ..FrontendOptions::default()
    };
    Bed::on_ring("adq", flags, opts, "adq-test", 4096, 64)
}

fn device(
    lanes: usize,
    slow: u64,
    fail: FailPolicy,
) -> (Box<dyn AsyncCopyOps>, Option<SoftWorker>) {
    common::dma::copy_device(lanes, slow, fail)
}

fn register(b: &Bed, threshold: u32, ops: Box<dyn AsyncCopyOps>) {
    let cfg = AsyncConfig {
        threshold,
        ..AsyncConfig::default()
    };
    async_channel_register(&b.dev, Q0.tx(), cfg, ops).unwrap();
}

/// Sends `pkts` from the guest (as many at a time as its ring takes) and dequeues until all
/// arrived or 5 s pass, with `async_try_dequeue_burst` or `dequeue_burst`. After every async
/// call, checks that the guest got back only buffers of packets handed to the host.
fn run(b: &mut Bed, cache: &mut PktCache, pkts: &[Vec<u8>], asynch: bool) -> Vec<Mbuf> {
    let refs: Vec<&[u8]> = pkts.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    let mut got: Vec<Mbuf> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < pkts.len() && Instant::now() < deadline {
        let tx = b.fe.tx(0).unwrap();
        tx.reap();
        sent += tx.send(&refs[sent..]);
        if asynch {
            async_try_dequeue_burst(&b.dev, Q0.tx(), cache, &mut got, 32);
            let (used_idx, _) = b.used(1, 0);
            let bad = b.stats(1).1;
            assert!(
                u64::from(used_idx) <= got.len() as u64 + bad,
                "the guest got {used_idx} buffers back, the host has {} packets",
                got.len()
            );
        } else {
            dequeue_burst(&b.dev, Q0.tx(), cache, &mut got, 32);
        }
    }
    got
}

fn sizes() -> Vec<usize> {
    [
        60usize, 64, 200, 255, 256, 257, 1000, 1514, 2000, 4000, 9000,
    ]
    .into_iter()
    .cycle()
    .take(44)
    .collect()
}

/// The same packets through `dequeue_burst` and `async_try_dequeue_burst` (CPU engine and a
/// four-lane soft engine; thresholds 0, 256 and above every size; header inline or in its own
/// descriptor): the host gets the same bytes in the same order.
#[test]
fn async_and_sync_give_the_host_the_same_bytes() {
    both_rings(|| {
        let pkts: Vec<Vec<u8>> = sizes()
            .iter()
            .enumerate()
            .map(|(i, &n)| payload(n, i))
            .collect();
        for layout in [TxLayout::Inline, TxLayout::Separate] {
            let mut sync = bed(layout, Flags::empty());
            let mut cache = sync.pool.cache();
            let want: Vec<Vec<u8>> = run(&mut sync, &mut cache, &pkts, false)
                .iter()
                .map(packet_bytes)
                .collect();
            assert_eq!(want, pkts, "{layout:?}: the sync path");
            drop(cache);
            for lanes in [0, 4] {
                for threshold in [0, 256, 1 << 20] {
                    let ctx = format!("{layout:?} lanes {lanes} threshold {threshold}");
                    let mut b = bed(layout, Flags::ASYNC_COPY);
                    let (ops, worker) = device(lanes, 0, FailPolicy::Never);
                    register(&b, threshold, ops);
                    let mut cache = b.pool.cache();
                    let got = run(&mut b, &mut cache, &pkts, true);
                    let bytes: Vec<Vec<u8>> = got.iter().map(packet_bytes).collect();
                    assert_eq!(bytes.len(), want.len(), "{ctx}");
                    let bad = bytes.iter().zip(&want).position(|(g, w)| g != w);
                    assert_eq!(bad, None, "{ctx}: first packet that differs");
                    let s = async_stats(&b.dev, Q0.tx()).unwrap();
                    assert_eq!(s.completed, pkts.len() as u64, "{ctx}: {s:?}");
                    if threshold == 1 << 20 {
                        assert_eq!(s.dma_copies, 0, "{ctx}");
                    } else if layout == TxLayout::Inline {
                        assert!(s.dma_copies > 0, "{ctx}: {s:?}");
                    }
                    cache.free_bulk(got);
                    drop(cache);
                    assert_eq!(b.pool.in_use(), 0, "{ctx}: no mbuf leaked");
                    drop(b);
                    drop(worker);
                }
            }
        }
    });
}

/// A slow first lane (jobs finish out of order) and failure injection: the host still gets
/// every packet intact and in order, failures copied again by the CPU and counted.
#[test]
fn order_and_failures_on_the_dequeue_path() {
    both_rings(|| {
        let pkts: Vec<Vec<u8>> = (0..400)
            .map(|i| payload([1514, 64, 4000, 300][i % 4], i))
            .collect();
        for (slow, fail) in [
            (20 << 20, FailPolicy::Never),
            (
                0,
                FailPolicy::EveryNth {
                    n: NonZeroU32::new(5).unwrap(),
                    status: Status::InvalidSrcAddr,
                },
            ),
        ] {
            let mut b = bed(TxLayout::Inline, Flags::ASYNC_COPY);
            let (ops, _worker) = device(4, slow, fail);
            register(&b, 256, ops);
            let mut cache = b.pool.cache();
            let got = run(&mut b, &mut cache, &pkts, true);
            assert_eq!(got.len(), pkts.len(), "slow {slow} fail {fail:?}");
            let bad = got
                .iter()
                .zip(&pkts)
                .position(|(g, p)| packet_bytes(g) != *p);
            assert_eq!(
                bad, None,
                "slow {slow} fail {fail:?}: first packet that differs"
            );
            let s = async_stats(&b.dev, Q0.tx()).unwrap();
            if slow == 0 {
                assert!(
                    s.dma_errors > 0 && s.dma_errors == s.dma_copies / 5,
                    "{s:?}"
                );
            }
            cache.free_bulk(got);
        }
    });
}

/// Jobs in flight on a slow engine when the frontend stops the ring: every packet comes back
/// once (by the next call or by clear), none leaks; the sync dequeue is refused on the vring.
#[test]
fn stop_with_jobs_in_flight_and_the_sync_path_refused() {
    both_rings(|| {
        let mut b = bed(TxLayout::Inline, Flags::ASYNC_COPY);
        let (ops, worker) = device(1, 4 << 20, FailPolicy::Never);
        register(&b, 256, ops);
        let mut cache = b.pool.cache();
        // One mbuf each (the DMA path): 48 x 1500 B at 4 MB/s take ~18 ms.
        let pkts: Vec<Vec<u8>> = (0..48).map(|i| payload(1500, i)).collect();
        let refs: Vec<&[u8]> = pkts.iter().map(Vec::as_slice).collect();
        let sent = b.fe.tx(0).unwrap().send(&refs);
        assert!(sent > 0);
        let mut got = Vec::new();
        assert_eq!(dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32), 0);
        async_try_dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 64);
        b.fe.stop().unwrap();
        async_try_dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 64);
        async_clear_queue(&b.dev, Q0.tx(), &mut got);
        let s = async_stats(&b.dev, Q0.tx()).unwrap();
        assert_eq!(got.len() as u64, s.submitted, "{s:?}");
        assert!(s.drains >= 1, "the stop found jobs in flight: {s:?}");
        assert!(got.iter().zip(&pkts).all(|(g, p)| packet_bytes(g) == *p));
        cache.free_bulk(got);
        drop(cache);
        assert_eq!(b.pool.in_use(), 0);
        drop(worker);
    });
}

/// Transmit chains the frontend's own layouts do not make, written raw into the guest's rings:
/// indirect tables and direct chains whose pieces split the header and the payload at uneven
/// places. The sync and async paths hand the host the same bytes, and return the same used
/// entries to the guest.
#[test]
fn indirect_and_chained_transmit_buffers_give_the_same_bytes_on_both_paths() {
    const SCRATCH: usize = (32 << 20) - (2 << 20);
    const BUFS: usize = SCRATCH + (64 << 10);
    let sizes = [60usize, 200, 1000, 1514, 3000, 9000, 257, 4000];
    let pkts: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(n, 40 + i))
        .collect();

    /// Writes packet `pkt` (after a zero virtio-net header) as chain `j`: cut into pieces of
    /// 5, 7, 100, 1000, 3000 B and the rest; even chains through an indirect table.
    fn post(b: &Bed, j: u16, pkt: &[u8]) {
        let mut bytes = vec![0u8; 12];
        bytes.extend_from_slice(pkt);
        let mut pieces = Vec::new();
        let mut at = BUFS + usize::from(j) * (16 << 10);
        let mut rest = &bytes[..];
        for cut in [5usize, 7, 100, 1000, 3000, usize::MAX] {
            if rest.is_empty() {
                break;
            }
            let n = cut.min(rest.len());
            b.write(at, &rest[..n]);
            pieces.push((at, n as u32));
            rest = &rest[n..];
            at += n + 64;
        }
        let table = (j % 2 == 0).then(|| SCRATCH + usize::from(j) * 256);
        b.chain(1, j, &pieces, false, table, 64 + 8 * j);
    }

    fn run(b: &mut Bed, pkts: &[Vec<u8>], asynch: bool) -> (Vec<Vec<u8>>, Vec<(u32, u32)>) {
        for (j, p) in pkts.iter().enumerate() {
            post(b, j as u16, p);
        }
        b.avail(1, &(0..pkts.len() as u16).collect::<Vec<_>>());
        let mut cache = b.pool.cache();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < pkts.len() && Instant::now() < deadline {
            if asynch {
                async_try_dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32);
            } else {
                dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32);
            }
        }
        let bytes = got.iter().map(packet_bytes).collect();
        cache.free_bulk(got);
        let (idx, used) = b.used(1, pkts.len());
        assert_eq!(usize::from(idx), pkts.len(), "every chain returned");
        (bytes, used)
    }

    let mut sync = bed(TxLayout::Inline, Flags::empty());
    let (want, want_used) = run(&mut sync, &pkts, false);
    assert_eq!(want, pkts, "the sync path");
    for (lanes, threshold) in [(0, 0), (4, 0), (4, 256)] {
        let ctx = format!("lanes {lanes} threshold {threshold}");
        let mut b = bed(TxLayout::Inline, Flags::ASYNC_COPY);
        let (ops, worker) = device(lanes, 0, FailPolicy::Never);
        register(&b, threshold, ops);
        let (got, used) = run(&mut b, &pkts, true);
        assert_eq!(got, want, "{ctx}: the same bytes");
        assert_eq!(used, want_used, "{ctx}: the same used entries");
        let s = async_stats(&b.dev, Q0.tx()).unwrap();
        assert!(
            s.dma_copies > 0,
            "{ctx}: chained buffers go to the device too: {s:?}"
        );
        assert_eq!(b.pool.in_use(), 0, "{ctx}: no mbuf leaked");
        drop(b);
        drop(worker);
    }
}

/// A packet that runs out of mbufs for its segments after some of its runs became jobs: the
/// jobs are taken back before the mbufs are freed (none reaches the device, nothing writes into
/// a freed mbuf), the chain stays available, and no mbuf leaks.
#[test]
fn a_packet_dropped_after_its_copies_were_batched_takes_them_back() {
    both_rings(|| {
        let opts = FrontendOptions {
            features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
            mem_size: 32 << 20,
            force_small_pages: true,
            ..FrontendOptions::default()
        };
        // Four mbufs: a 12000-byte packet needs six.
        let b = Bed::new("adq-few", Flags::ASYNC_COPY, opts, "adq-few", 4, 0);
        let (ops, worker) = device(0, 0, FailPolicy::Never);
        register(&b, 0, ops);
        let at = (32 << 20) - (1 << 20);
        let mut bytes = vec![0u8; 12];
        bytes.extend(payload(12000, 7));
        b.write(at, &bytes);
        b.desc(1, 0, b.gpa(at), bytes.len() as u32, 0, 0);
        b.avail(1, &[0]);
        let mut cache = b.pool.cache();
        let mut got = Vec::new();
        assert_eq!(
            async_try_dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32),
            0
        );
        let s = async_stats(&b.dev, Q0.tx()).unwrap();
        assert_eq!((s.submitted, s.dma_copies), (0, 0), "{s:?}");
        assert!(
            s.cpu_copies > 0,
            "its runs were batched, then taken back: {s:?}"
        );
        assert_eq!(b.used(1, 1).0, 0, "the chain stays available");
        drop(cache);
        assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
        drop(b);
        drop(worker);
    });
}
