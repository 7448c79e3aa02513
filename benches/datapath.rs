//! The data path's cost per packet with both sides in one thread: the Rust frontend (the
//! guest's driver) and rvhost's bursts take turns on the same core, so every ring and buffer
//! line stays in its cache. What is left is the instruction cost of a burst, per ring layout:
//! what a change to the code of one layout moves, without the cache-to-cache transfers that
//! dominate a two-core run (and change with the host's placement of the vCPUs from day to
//! day). Compare the rows of one invocation; the two-core figures are `rvhost bench` and
//! `scripts/bench-vs-dpdk.sh`.
//!
//! * `h2g/{split,packed}`: the frontend posts 32 receive buffers, `enqueue_burst` places 32
//!   64-byte packets (the same mbufs each time), the frontend takes them.
//! * `g2h/{split,packed}`: the frontend sends 32 64-byte packets, `dequeue_burst` takes them
//!   into fresh mbufs, which go back to the pool.
//!
//! Only the backend's call is timed (the frontend's turns are not: its packed ring code is
//! not what this measures). Both report `Throughput::Elements(32)`: criterion's time per
//! element is the backend's per packet. For instruction counts without noise, run the bench
//! binary under `valgrind --tool=callgrind`.
//!
//! Run: `cargo bench --bench datapath -- --warm-up-time 1 --measurement-time 3`

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::Bed;
use common::pkt::{mbuf_of, payload};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rvhost::driver::Flags;
use rvhost::features::{VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use rvhost::frontend::{FrontendOptions, TxLayout};
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};

const BURST: usize = 32;
const Q0: QueuePair = QueuePair(0);

fn bed(packed: bool) -> Bed {
    let p = if packed { VIRTIO_F_RING_PACKED } else { 0 };
    let opts = FrontendOptions {
        features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | p,
        tx_layout: TxLayout::Inline,
        mem_size: 32 << 20,
        force_small_pages: true,
        packed,
        ..FrontendOptions::default()
    };
    Bed::on_ring("bench-dp", Flags::empty(), opts, "bench-dp", 4096, 64)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("datapath_64B");
    group.throughput(Throughput::Elements(BURST as u64));
    for (name, packed) in [("split", false), ("packed", true)] {
        let mut b = bed(packed);
        let mut cache = b.pool.cache();
        let pkt = payload(64, 1);
        let mbufs: Vec<_> = (0..BURST).map(|_| mbuf_of(&mut cache, &pkt)).collect();
        group.bench_function(format!("h2g/{name}"), |bn| {
            bn.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let rx = b.fe.rx(0).unwrap();
                    rx.post_rx(BURST, 1536);
                    let t = Instant::now();
                    let n = enqueue_burst(&b.dev, Q0.rx(), &mbufs);
                    spent += t.elapsed();
                    assert_eq!(n, BURST, "the frontend posted a burst's buffers");
                    let mut got = 0;
                    b.fe.rx(0).unwrap().poll_rx(2 * BURST, |_| got += 1);
                    assert_eq!(got, BURST);
                }
                spent
            });
        });
        let refs = [&pkt[..]; BURST];
        let mut out = Vec::with_capacity(2 * BURST);
        group.bench_function(format!("g2h/{name}"), |bn| {
            bn.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let tx = b.fe.tx(0).unwrap();
                    tx.reap();
                    let sent = tx.send(&refs);
                    let t = Instant::now();
                    let n = dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut out, BURST);
                    cache.free_bulk(out.drain(..));
                    spent += t.elapsed();
                    assert_eq!(n, sent);
                }
                spent
            });
        });
        cache.free_bulk(mbufs);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
