//! Unit tests of the mempool: configuration, layout, cache policy, counters, checks.
//!
//! Hugepage cases use whatever pool the machine has; they never change system settings and skip
//! (`crate::test_support::skip`: `skipping: ...`, or a failure under `RVHOST_TEST_REQUIRE=all`)
//! when too few 2 MiB pages are free.

use std::collections::HashSet;

use super::*;
use crate::bulk_ring::MAX_CAPACITY;
use crate::region::{IovaMode, RegionConfig, RegionError, hugepage_status};
use crate::test_support::skip;

fn small(name: &str, count: usize, elt_size: usize, cache: usize) -> MempoolConfig {
    MempoolConfig::new(name, count, elt_size)
        .with_cache_size(cache)
        .with_page_size(PageSize::Small)
}

fn dangling(n: usize) -> Vec<ObjPtr> {
    vec![ObjPtr::DANGLING; n]
}

/// Checks the documented layout of every object: distinct, aligned, inside a region, never
/// across a contiguity unit, IOVA-contiguous and equal to the region's translation.
fn check_layout(pool: &Mempool) {
    let regions: Vec<&Region> = pool.regions().collect();
    let mut seen = HashSet::new();
    for i in 0..pool.count() {
        let obj = pool.obj(i).unwrap();
        assert!(seen.insert(obj.addr()), "object {i} duplicated");
        assert_eq!(pool.obj_index(obj), Some(i));
        assert_eq!(obj.addr() % pool.align(), 0, "object {i} misaligned");
        let first = obj.addr();
        let last = first + pool.elt_size() - 1;
        let r = regions
            .iter()
            .find(|r| r.contains(first))
            .expect("object inside a region");
        assert!(r.contains(last), "object {i} runs past its region");
        let page = r.page_size().bytes();
        if r.page_size().is_huge() || r.iova_mode() == IovaMode::Pa {
            assert_eq!(first / page, last / page, "object {i} crosses a page");
        }
        let iova = pool.iova_of(obj.as_ptr()).unwrap();
        assert_eq!(Some(iova), r.va_to_iova(first));
        assert_eq!(
            pool.iova_of(last as *const u8),
            Some(iova + pool.elt_size() as u64 - 1),
            "object {i} is not IOVA-contiguous"
        );
    }
    assert_eq!(pool.obj(pool.count()), None);
}

#[test]
fn thread_traits() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Arc<Mempool>>();
    sync::<Mempool>();
    send::<MempoolCache>();
    send::<ObjPtr>();
    sync::<ObjPtr>();
}

#[test]
fn config_errors() {
    let err = |c: MempoolConfig| Mempool::new(c).unwrap_err();
    assert!(matches!(err(small("e", 0, 64, 0)), MempoolError::ZeroCount));
    assert!(matches!(
        err(small("e", 8, 0, 0)),
        MempoolError::ZeroEltSize
    ));
    assert!(matches!(
        err(small("e", 8, 64, 0).with_align(48)),
        MempoolError::BadAlign { align: 48 }
    ));
    assert!(matches!(
        err(small("e", 8, 64, 0).with_align(8192)),
        MempoolError::BadAlign { .. }
    ));
    assert!(matches!(
        err(small("e", 100, 64, 68)),
        MempoolError::CacheTooLarge { .. }
    ));
    assert!(
        Mempool::new(small("e", 100, 64, 67)).is_ok(),
        "1.5 * 67 = 100 objects"
    );
    assert!(matches!(
        err(small("e", 10_000, 64, MAX_CACHE_SIZE + 1)),
        MempoolError::CacheTooLarge { .. }
    ));
    assert!(matches!(
        err(small("e", MAX_CAPACITY + 1, 64, 0)),
        MempoolError::CountTooLarge { .. }
    ));
    assert!(matches!(
        err(small("e", 8, usize::MAX - 10, 0)),
        MempoolError::SizeOverflow { .. }
    ));
    assert!(matches!(
        err(small("e", 8, 5000, 0)
            .with_region(
                RegionConfig::default()
                    .with_page_size(PageSize::Small)
                    .with_iova_mode(IovaMode::Va)
            )
            .with_max_region_size(4096)),
        MempoolError::RegionTooSmall { .. }
    ));
    let e = err(
        small("e", 8, 64, 0).with_region(RegionConfig::default().with_backing(
            crate::region::Backing::Hugetlbfs {
                dir: "/proc".into(),
            },
        )),
    );
    assert!(matches!(e, MempoolError::Region { index: 0, .. }), "{e}");
    assert!(std::error::Error::source(&e).is_some(), "cause kept");
}

#[test]
fn get_put_without_cache() {
    let pool = Mempool::new(small("plain", 64, 100, 0)).unwrap();
    assert_eq!((pool.count(), pool.available(), pool.in_use()), (64, 64, 0));
    assert_eq!(pool.stride(), 128);
    let mut a = dangling(40);
    pool.get_bulk(&mut a).unwrap();
    assert_eq!((pool.available(), pool.in_use()), (24, 40));
    // All or nothing.
    let mut b = dangling(25);
    assert_eq!(pool.get_bulk(&mut b), Err(GetError { requested: 25 }));
    assert!(b.iter().all(|o| *o == ObjPtr::DANGLING));
    assert_eq!(pool.available(), 24);
    pool.get_bulk(&mut b[..24]).unwrap();
    assert_eq!(pool.available(), 0);
    assert_eq!(pool.get_bulk(&mut b[..1]), Err(GetError { requested: 1 }));
    pool.get_bulk(&mut []).unwrap();
    let all: HashSet<_> = a.iter().chain(&b[..24]).copied().collect();
    assert_eq!(all.len(), 64, "objects are distinct");
    pool.put_bulk(&a).unwrap();
    pool.put_bulk(&b[..24]).unwrap();
    assert_eq!((pool.available(), pool.in_use()), (64, 0));
}

#[test]
fn puts_are_checked() {
    let pool = Mempool::new(small("checked", 32, 200, 8)).unwrap();
    let other = Mempool::new(small("other", 32, 64, 8)).unwrap();
    let mut objs = dangling(4);
    pool.get_bulk(&mut objs).unwrap();
    let mut foreign = dangling(1);
    other.get_bulk(&mut foreign).unwrap();

    let misaligned = ObjPtr::new(NonNull::new(objs[1].as_ptr().wrapping_add(1)).unwrap());
    let cases = [
        (ObjPtr::DANGLING, "dangling"),
        (foreign[0], "another pool's object"),
        (misaligned, "misaligned"),
        (
            pool.obj(31)
                .map(|o| o.as_ptr().wrapping_add(4096 * 8))
                .map(|p| ObjPtr::new(NonNull::new(p).unwrap()))
                .unwrap(),
            "past the end",
        ),
    ];
    let mut cache = pool.cache();
    for (bad, what) in cases {
        let batch = [objs[0], objs[1], bad, objs[2]];
        let e = pool.put_bulk(&batch).unwrap_err();
        assert_eq!((e.addr, e.index), (bad.addr(), 2), "{what}");
        let e = cache.put_bulk(&batch).unwrap_err();
        assert_eq!((e.addr, e.index), (bad.addr(), 2), "{what}");
        assert_eq!(pool.in_use(), 4, "nothing was put ({what})");
    }
    // An aligned pointer inside an object: only the debug build's exact check sees it.
    let interior = ObjPtr::new(NonNull::new(objs[3].as_ptr().wrapping_add(64)).unwrap());
    assert_eq!(pool.put_bulk(&[interior]).is_err(), cfg!(debug_assertions));
    if !cfg!(debug_assertions) {
        // Release accepted it: take it back out so the pool is consistent again.
        let mut back = dangling(pool.available());
        pool.get_bulk(&mut back).unwrap();
        let keep: Vec<_> = back.into_iter().filter(|o| *o != interior).collect();
        pool.put_bulk(&keep).unwrap();
    }
    cache.put_bulk(&objs).unwrap();
    drop(cache);
    other.put_bulk(&foreign).unwrap();
    assert_eq!((pool.in_use(), other.in_use()), (0, 0));
}

#[test]
fn cache_policy_thresholds() {
    let pool = Mempool::new(small("policy", 200, 64, 8)).unwrap();
    let mut cache = pool.cache();
    assert_eq!((cache.size(), cache.flush_threshold()), (8, 12));
    assert!(cache.is_empty());

    // Get from an empty cache: refill size + n - len = 11 in one dequeue, serve 3, keep 8.
    let mut three = dangling(3);
    cache.get_bulk(&mut three).unwrap();
    assert_eq!(
        (cache.len(), pool.ring_count(), pool.cached_count()),
        (8, 189, 8)
    );
    assert_eq!((pool.available(), pool.in_use()), (197, 3));
    // Served from the cache without touching the ring.
    let mut eight = dangling(8);
    cache.get_bulk(&mut eight).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (0, 189));
    // LIFO: what was just put comes back first.
    cache.put_bulk(&three).unwrap();
    let mut again = dangling(3);
    cache.get_bulk(&mut again).unwrap();
    assert_eq!(again, three);
    cache.put_bulk(&again).unwrap();

    // Put up to the threshold: stays in the cache.
    cache.put_bulk(&eight[..8]).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (11, 189));
    // One more: 12 is not above the threshold.
    let mut one = dangling(1);
    pool.get_bulk(&mut one).unwrap();
    cache.put_bulk(&one).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (12, 188));
    // Above it: flush down to size.
    pool.get_bulk(&mut one).unwrap();
    cache.put_bulk(&one).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (8, 192));
    assert_eq!(pool.available(), 200);

    // Larger than the cache size: straight to and from the ring.
    let mut nine = dangling(9);
    cache.get_bulk(&mut nine).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (8, 183));
    cache.put_bulk(&nine).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (8, 192));

    // Explicit flush, then drop returns everything.
    cache.flush();
    assert_eq!(
        (cache.len(), pool.ring_count(), pool.cached_count()),
        (0, 200, 0)
    );
    cache.get_bulk(&mut three).unwrap();
    assert_eq!(pool.cached_count(), 8);
    cache.put_bulk(&three).unwrap();
    drop(cache);
    assert_eq!(
        (pool.ring_count(), pool.cached_count(), pool.available()),
        (200, 0, 200)
    );
}

#[test]
fn cache_serves_the_last_objects() {
    // The ring cannot refill: the cache's objects plus the shortfall are served, or nothing.
    let pool = Mempool::new(small("short", 24, 64, 16)).unwrap();
    let mut cache = pool.cache();
    let mut two = dangling(2);
    cache.get_bulk(&mut two).unwrap(); // refill 18, cache keeps 16, ring keeps 6
    assert_eq!((cache.len(), pool.ring_count()), (16, 6));
    let mut others = dangling(16);
    cache.get_bulk(&mut others).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (0, 6));
    cache.put_bulk(&others[..4]).unwrap();
    // 12 > 4 cached: refill wants 16 + 12 - 4 = 24 > 6 in the ring; serve 4 + 6 = 10? No: 12
    // needs 8 from the ring, which has 6: fail, nothing taken.
    let mut twelve = dangling(12);
    assert_eq!(cache.get_bulk(&mut twelve), Err(GetError { requested: 12 }));
    assert_eq!((cache.len(), pool.ring_count()), (4, 6));
    // 10 = 4 cached + 6 from the ring.
    cache.get_bulk(&mut twelve[..10]).unwrap();
    assert_eq!(
        (cache.len(), pool.ring_count(), pool.available()),
        (0, 0, 0)
    );
    let mut all: Vec<_> = two.to_vec();
    all.extend_from_slice(&others[4..]);
    all.extend_from_slice(&twelve[..10]);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 24);
    cache.put_bulk(&all[..16]).unwrap();
    pool.put_bulk(&all[16..]).unwrap();
    drop(cache);
    assert_eq!(pool.available(), 24);
}

#[test]
fn cache_size_zero_is_pass_through() {
    let pool = Mempool::new(small("nocache", 16, 64, 0)).unwrap();
    let mut cache = pool.cache();
    let mut objs = dangling(5);
    cache.get_bulk(&mut objs).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (0, 11));
    cache.put_bulk(&objs).unwrap();
    assert_eq!((cache.len(), pool.ring_count()), (0, 16));
}

#[test]
fn counters_see_every_cache() {
    let pool = Mempool::new(small("count", 300, 64, 32)).unwrap();
    let mut c1 = pool.cache();
    let mut c2 = pool.cache();
    let mut a = dangling(10);
    let mut b = dangling(20);
    c1.get_bulk(&mut a).unwrap();
    c2.get_bulk(&mut b).unwrap();
    assert_eq!(pool.cached_count(), 64);
    assert_eq!((pool.available(), pool.in_use()), (270, 30));
    c2.put_bulk(&a).unwrap(); // objects may return through another cache
    assert_eq!((pool.available(), pool.in_use()), (280, 20));
    drop(c2); // flushes its objects into the ring
    assert_eq!((pool.available(), pool.in_use()), (280, 20));
    c1.put_bulk(&b).unwrap();
    assert_eq!((pool.available(), pool.in_use()), (300, 0));
    drop(c1);
    assert_eq!((pool.ring_count(), pool.cached_count()), (300, 0));
}

#[test]
fn exhaustion_through_caches_leaks_nothing() {
    let pool = Mempool::new(small("exhaust", 100, 64, 16)).unwrap();
    let mut caches = [pool.cache(), pool.cache()];
    let mut held = Vec::new();
    let mut k = 0;
    loop {
        let mut objs = dangling(7);
        let c = &mut caches[k % 2];
        k += 1;
        match c.get_bulk(&mut objs) {
            Ok(()) => held.extend_from_slice(&objs),
            Err(e) => {
                assert_eq!(e.requested, 7);
                assert!(objs.iter().all(|o| *o == ObjPtr::DANGLING), "nothing taken");
                break;
            }
        }
    }
    assert_eq!(held.len() + pool.available(), 100);
    assert_eq!(pool.in_use(), held.len());
    assert_eq!(held.iter().collect::<HashSet<_>>().len(), held.len());
    for chunk in held.chunks(5) {
        caches[0].put_bulk(chunk).unwrap();
    }
    drop(caches);
    assert_eq!(
        (pool.ring_count(), pool.available(), pool.in_use()),
        (100, 100, 0)
    );
    let mut all = dangling(100);
    pool.get_bulk(&mut all).unwrap();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 100);
}

#[test]
fn obj_init_runs_once_per_object_with_the_pool() {
    let mut seen = Vec::new();
    let pool = Mempool::with_obj_init(small("init", 50, 16, 0), |p, obj| {
        seen.push((p as *const Mempool, obj));
        // SAFETY: the pool is not shared yet and `obj` is one of its objects of 16 bytes.
        unsafe { obj.cast::<u64>().write(obj.addr() as u64) };
    })
    .unwrap();
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|(p, _)| *p == Arc::as_ptr(&pool)));
    let mut objs = dangling(50);
    pool.get_bulk(&mut objs).unwrap();
    for o in &objs {
        // SAFETY: `o` was got from the live pool and is ours; init wrote its first 8 bytes.
        assert_eq!(unsafe { o.cast::<u64>().read() }, o.addr() as u64);
    }
    pool.put_bulk(&objs).unwrap();
}

#[test]
fn layout_small_pages_default_mode() {
    // As root IOVA = PA (objects within a 4 KiB page), else VA (packed).
    let pool = Mempool::new(small("small-default", 500, 1500, 32)).unwrap();
    let r = pool.regions().next().unwrap();
    println!("4 KiB pool: iova mode {:?}", r.iova_mode());
    check_layout(&pool);
    let per_page_objs = if r.iova_mode() == IovaMode::Pa {
        2
    } else {
        4096 * 2 / 1536
    };
    assert!(pool.regions().map(Region::len).sum::<usize>() >= 500 / per_page_objs * 4096);
}

#[test]
fn layout_small_pages_va_packed() {
    let region = RegionConfig::default()
        .with_page_size(PageSize::Small)
        .with_iova_mode(IovaMode::Va);
    let pool = Mempool::new(
        MempoolConfig::new("packed", 100, 2304)
            .with_cache_size(16)
            .with_region(region),
    )
    .unwrap();
    assert_eq!(pool.regions().len(), 1);
    assert_eq!(
        pool.regions().next().unwrap().len(),
        (100 * 2304usize).next_multiple_of(4096)
    );
    check_layout(&pool);
    // Packed: consecutive objects are one stride apart, across pages.
    let (a, b) = (pool.obj(1).unwrap(), pool.obj(2).unwrap());
    assert_eq!(b.addr() - a.addr(), 2304);
    // Larger than a page is fine in VA mode.
    let big = Mempool::new(
        MempoolConfig::new("big", 4, 3 * 4096 + 100)
            .with_cache_size(0)
            .with_region(
                RegionConfig::default()
                    .with_page_size(PageSize::Small)
                    .with_iova_mode(IovaMode::Va),
            ),
    )
    .unwrap();
    check_layout(&big);
}

#[test]
fn layout_small_pages_pa_refuses_big_objects() {
    let region = RegionConfig::default().with_page_size(PageSize::Small);
    match Mempool::new(
        MempoolConfig::new("bigpa", 4, 5000)
            .with_cache_size(0)
            .with_region(region),
    ) {
        Err(MempoolError::ObjectTooLarge {
            stride,
            page_size,
            iova_mode,
        }) => {
            assert_eq!(
                (stride, page_size, iova_mode),
                (5056, PageSize::Small, IovaMode::Pa)
            );
        }
        Ok(pool) => {
            let mode = pool.regions().next().unwrap().iova_mode();
            assert_eq!(mode, IovaMode::Va, "only VA packs objects across pages");
            skip("physical addresses not readable, pool is in VA mode");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn several_regions() {
    let region = RegionConfig::default()
        .with_page_size(PageSize::Small)
        .with_iova_mode(IovaMode::Va);
    let pool = Mempool::new(
        MempoolConfig::new("multi", 1000, 256)
            .with_cache_size(64)
            .with_region(region)
            .with_max_region_size(64 << 10),
    )
    .unwrap();
    assert_eq!(pool.regions().len(), 4, "256 objects per 64 KiB region");
    check_layout(&pool);
    let mut cache = pool.cache();
    let mut objs = dangling(1000);
    pool.get_bulk(&mut objs).unwrap();
    for chunk in objs.chunks(50) {
        cache.put_bulk(chunk).unwrap();
    }
    drop(cache);
    assert_eq!(pool.available(), 1000);
    let mut back = dangling(1000);
    pool.get_bulk(&mut back).unwrap();
    let mut idx: Vec<_> = back.iter().map(|o| pool.obj_index(*o).unwrap()).collect();
    idx.sort_unstable();
    assert_eq!(idx, (0..1000).collect::<Vec<_>>());
}

#[test]
fn hugepage_pool() {
    const SKIP: &str = "fewer than 4 free 2 MiB hugepages \
                        (reserve with echo 1024 > /proc/sys/vm/nr_hugepages)";
    if hugepage_status(PageSize::Huge2M).map_or(0, |s| s.available()) < 4 {
        return skip(SKIP);
    }
    // 2304-byte objects: 910 per 2 MiB page, so 2000 objects need 3 pages.
    let config = MempoolConfig::new("huge", 2000, 2304)
        .with_cache_size(64)
        .with_page_size(PageSize::Huge2M);
    let pool = match Mempool::new(config) {
        Ok(pool) => pool,
        Err(MempoolError::Region {
            source: RegionError::NotEnoughHugepages { .. },
            ..
        }) => {
            return skip(format!("{SKIP} (taken meanwhile)"));
        }
        Err(e) => panic!("hugepage pool: {e}"),
    };
    let r = pool.regions().next().unwrap();
    assert_eq!(
        (pool.regions().len(), r.page_size(), r.len()),
        (1, PageSize::Huge2M, 3 << 21)
    );
    println!("2 MiB pool: iova mode {:?}", r.iova_mode());
    check_layout(&pool);
    let per_page = (2 << 20) / 2304;
    assert_eq!(
        pool.obj(per_page).unwrap().addr() - r.as_ptr() as usize,
        2 << 20
    );
    let mut cache = pool.cache();
    let mut objs = dangling(32);
    for _ in 0..100 {
        cache.get_bulk(&mut objs).unwrap();
        cache.put_bulk(&objs).unwrap();
    }
    drop(cache);
    assert_eq!(pool.available(), 2000);
}

#[test]
fn fallback_to_small_pages_adds_regions() {
    // No hugepages (a fake, empty pool): the first region is sized for 2 MiB pages (1365
    // objects of 1536 bytes per page, so 300 * 1536 bytes) but falls back to 4 KiB pages. In PA
    // mode those hold 2 objects per page (226 in 113 pages), so the pool adds a second region
    // for the other 74; in VA mode objects are packed and one region suffices.
    let empty = |ps: PageSize| {
        Some(crate::region::HugepageStatus {
            page_size: ps,
            total: 0,
            free: 0,
            reserved: 0,
            surplus: 0,
            overcommit: 0,
        })
    };
    let config = MempoolConfig::new("fallback", 300, 1500).with_cache_size(16);
    let pool = Mempool::build(config, |_, _| {}, &empty).unwrap();
    let regions: Vec<_> = pool.regions().collect();
    assert!(regions.iter().all(|r| r.page_size() == PageSize::Small));
    assert_eq!(regions[0].len(), (300 * 1536usize).next_multiple_of(4096));
    if regions[0].iova_mode() == IovaMode::Pa {
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[1].len(), 37 * 4096);
    } else {
        assert_eq!(regions.len(), 1);
    }
    check_layout(&pool);
}
