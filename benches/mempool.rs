//! Mempool bulk-32 cost per object through a per-thread cache, versus crossbeam's `ArrayQueue`,
//! all in one thread.
//!
//! * `mempool_cache_bulk32`: `MempoolCache::get_bulk` of 32 objects then `put_bulk` of the same
//!   32 (checked put: range and alignment of each object). Steady state stays in the cache, as
//!   a worker's alloc/free of a burst does.
//! * `mempool_cache_bulk32_unchecked`: the same with `put_bulk_unchecked`.
//! * `mempool_ring_bulk32`: `Mempool::get_bulk` / `put_bulk` without a cache (the MP/MC ring).
//! * `arrayqueue_32`: `ArrayQueue::pop` of 32 values then 32 `push`es, on a queue holding the
//!   same number of values as the pool has objects.
//!
//! Every case reports `Throughput::Elements(32)`, so criterion's time per element is the cost
//! per object of one get plus one put. The goal is at most 0.3x `ArrayQueue`.
//!
//! Run: `cargo bench --bench mempool -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use rvhost_hugepages::mempool::{Mempool, MempoolConfig, ObjPtr};

const BURST: usize = 32;
const COUNT: usize = 8192;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("get_put_bulk32");
    group.throughput(Throughput::Elements(BURST as u64));

    // Default region config: 2 MiB hugepages if free, else 4 KiB pages.
    let pool = Mempool::new(MempoolConfig::new("bench", COUNT, 2304)).expect("mempool");
    let mut cache = pool.cache();
    group.bench_function("mempool_cache_bulk32", |b| {
        let mut objs = [ObjPtr::DANGLING; BURST];
        b.iter(|| {
            cache.get_bulk(black_box(&mut objs)).unwrap();
            cache.put_bulk(black_box(&objs)).unwrap();
        })
    });
    group.bench_function("mempool_cache_bulk32_unchecked", |b| {
        let mut objs = [ObjPtr::DANGLING; BURST];
        b.iter(|| {
            cache.get_bulk(black_box(&mut objs)).unwrap();
            // SAFETY: the objects were just got from this cache's pool, once each.
            unsafe { cache.put_bulk_unchecked(black_box(&objs)) };
        })
    });
    drop(cache);
    group.bench_function("mempool_ring_bulk32", |b| {
        let pool = black_box(&pool);
        let mut objs = [ObjPtr::DANGLING; BURST];
        b.iter(|| {
            pool.get_bulk(black_box(&mut objs)).unwrap();
            pool.put_bulk(black_box(&objs)).unwrap();
        })
    });

    let queue = ArrayQueue::<usize>::new(COUNT);
    for i in 0..COUNT {
        queue.push(0x1000 + i * 64).unwrap();
    }
    group.bench_function("arrayqueue_32", |b| {
        let queue = black_box(&queue);
        let mut objs = [0usize; BURST];
        b.iter(|| {
            for o in black_box(&mut objs).iter_mut() {
                *o = queue.pop().unwrap_or(0);
            }
            for &o in black_box(&objs) {
                let _ = queue.push(o);
            }
        })
    });

    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
