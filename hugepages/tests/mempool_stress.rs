//! Multi-threaded stress test of the mempool: every thread owns a cache and gets and puts
//! random bulk sizes (some larger than the cache, which go straight to the ring) until a
//! deadline, holding a random number of objects in between.
//!
//! Each object a thread holds carries the thread's tag in its first bytes, written on get and
//! checked on put: an object handed to two threads at once shows up as a foreign tag. At the end
//! every cache is dropped and the pool must hold all `count` objects again, each exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rvhost_hugepages::mempool::{Mempool, MempoolConfig, ObjPtr};
use rvhost_hugepages::region::{PageSize, hugepage_status};

/// The skip-or-fail convention (`RVHOST_TEST_REQUIRE`), shared with the crate's unit tests.
use rvhost_hugepages::test_support::skip;

const THREADS: usize = 4;
const COUNT: usize = 512;
const CACHE: usize = 32;
const MAX_BULK: usize = 48;

/// xorshift64*: enough randomness for bulk sizes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as usize % n
    }
}

fn tag(thread: usize, obj: ObjPtr) -> u64 {
    ((thread as u64) << 48) ^ obj.addr() as u64
}

/// One worker: returns (gets, puts, failed gets).
fn worker(pool: Arc<Mempool>, id: usize, until: Instant) -> (u64, u64, u64) {
    let mut cache = pool.cache();
    let mut rng = Rng::new(id as u64 + 1);
    let mut held: Vec<ObjPtr> = Vec::with_capacity(4 * MAX_BULK);
    let mut buf = vec![ObjPtr::DANGLING; MAX_BULK];
    let (mut gets, mut puts, mut fails) = (0u64, 0u64, 0u64);
    while Instant::now() < until {
        for _ in 0..64 {
            let n = 1 + rng.below(MAX_BULK);
            if held.len() + n <= held.capacity() && rng.below(2) == 0 {
                let out = &mut buf[..n];
                if cache.get_bulk(out).is_err() {
                    fails += 1;
                    continue;
                }
                for &o in out.iter() {
                    // SAFETY: `o` was just got from the live pool; objects are 64 bytes and
                    // aligned, and nobody else holds it (that is what the tag checks).
                    unsafe { o.cast::<u64>().write_volatile(tag(id, o)) };
                }
                held.extend_from_slice(out);
                gets += n as u64;
            } else if !held.is_empty() {
                let n = n.min(held.len());
                let from = held.len() - n;
                for &o in &held[from..] {
                    // SAFETY: we hold `o` (got it and have not put it back); the pool lives.
                    let t = unsafe { o.cast::<u64>().read_volatile() };
                    assert_eq!(t, tag(id, o), "object {o:?} was handed to another thread");
                }
                cache.put_bulk(&held[from..]).expect("own objects");
                held.truncate(from);
                puts += n as u64;
            }
        }
    }
    cache.put_bulk(&held).expect("own objects");
    (gets, puts, fails)
}

fn stress(config: MempoolConfig, run_for: Duration) {
    let pool = Mempool::new(config).expect("mempool");
    let until = Instant::now() + run_for;
    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let pool = Arc::clone(&pool);
            thread::spawn(move || worker(pool, id, until))
        })
        .collect();
    let mut total = (0, 0, 0);
    for w in workers {
        let (g, p, f) = w.join().expect("worker panicked");
        total = (total.0 + g, total.1 + p, total.2 + f);
    }
    println!(
        "{}: {} objects got, {} put, {} gets failed (exhausted)",
        pool.name(),
        total.0,
        total.1,
        total.2
    );
    assert!(total.0 > 0);
    assert_eq!(
        (pool.cached_count(), pool.available(), pool.in_use()),
        (0, COUNT, 0)
    );
    let mut all = vec![ObjPtr::DANGLING; COUNT];
    pool.get_bulk(&mut all).expect("every object is back");
    let distinct: HashSet<usize> = all.iter().map(|o| pool.obj_index(*o).unwrap()).collect();
    assert_eq!(distinct.len(), COUNT, "every object exactly once");
    pool.put_bulk(&all).unwrap();
}

#[test]
fn threads_with_caches_small_pages() {
    let config = MempoolConfig::new("stress-4k", COUNT, 64)
        .with_cache_size(CACHE)
        .with_page_size(PageSize::Small);
    stress(config, Duration::from_millis(700));
}

#[test]
fn threads_with_caches_hugepages() {
    if hugepage_status(PageSize::Huge2M).map_or(0, |s| s.available()) < 2 {
        return skip("no free 2 MiB hugepages (echo 1024 > /proc/sys/vm/nr_hugepages)");
    }
    let config = MempoolConfig::new("stress-2m", COUNT, 64)
        .with_cache_size(CACHE)
        .with_page_size(PageSize::Huge2M);
    if Mempool::new(config.clone()).is_err() {
        return skip("the 2 MiB hugepages were taken meanwhile");
    }
    stress(config, Duration::from_millis(300));
}
