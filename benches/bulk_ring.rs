//! Ring bulk-32 cost per object versus crossbeam's `ArrayQueue`, all in one thread.
//!
//! * `ring_spsc_bulk32`: SP/SC ring through its `SingleProducer` / `SingleConsumer` handles,
//!   `enqueue_bulk` of 32 values then `dequeue_bulk` of 32.
//! * `ring_mpmc_bulk32`: the same on an MP/MC ring through `&self` (CAS on the heads, tail
//!   wait), uncontended.
//! * `arrayqueue_32`: `ArrayQueue::push` of the same 32 values then 32 `pop`s.
//!
//! Every case reports `Throughput::Elements(32)`, so criterion's time per element is the cost
//! per object of one enqueue plus one dequeue. The ring's goal is at most 0.3x `ArrayQueue`.
//!
//! Run: `cargo bench --bench ring -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use rvhost_hugepages::bulk_ring::{MpmcRing, SpscRing};

const BURST: usize = 32;
const CAPACITY: usize = 1024;

fn values() -> [usize; BURST] {
    std::array::from_fn(|i| 0x1000 + i * 64)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulk32_enq_deq");
    group.throughput(Throughput::Elements(BURST as u64));
    let src = values();

    let spsc = SpscRing::<usize>::new(CAPACITY).unwrap();
    // Leave some values in the ring so the operations do not always hit the same slots.
    let mut tx = spsc.producer().unwrap();
    let mut rx = spsc.consumer().unwrap();
    assert_eq!(tx.enqueue_bulk(&[0; 100]), 100);
    group.bench_function("ring_spsc_bulk32", |b| {
        let mut dst = [0usize; BURST];
        b.iter(|| {
            let n = tx.enqueue_bulk(black_box(&src));
            let m = rx.dequeue_bulk(black_box(&mut dst));
            black_box((n, m, &dst));
        })
    });

    let mpmc = MpmcRing::<usize>::new(CAPACITY).unwrap();
    assert_eq!(mpmc.enqueue_bulk(&[0; 100]), 100);
    group.bench_function("ring_mpmc_bulk32", |b| {
        let ring = black_box(&mpmc);
        let mut dst = [0usize; BURST];
        b.iter(|| {
            let n = ring.enqueue_bulk(black_box(&src));
            let m = ring.dequeue_bulk(black_box(&mut dst));
            black_box((n, m, &dst));
        })
    });

    let queue = ArrayQueue::<usize>::new(CAPACITY);
    for _ in 0..100 {
        queue.push(0).unwrap();
    }
    group.bench_function("arrayqueue_32", |b| {
        let queue = black_box(&queue);
        let mut dst = [0usize; BURST];
        b.iter(|| {
            for &v in black_box(&src) {
                let _ = queue.push(v);
            }
            for d in black_box(&mut dst).iter_mut() {
                *d = queue.pop().unwrap_or(0);
            }
            black_box(&dst);
        })
    });

    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
