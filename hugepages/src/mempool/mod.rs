//! Fixed-size objects carved from hugepage regions, with per-lcore caches (the semantics of
//! DPDK's `rte_mempool`).
//!
//! A [`Mempool`] owns one or more [`Region`]s cut into `count` objects of `elt_size` bytes, and
//! an [`MpmcRing`] holding the address of every free object. Objects are handed out as
//! [`ObjPtr`]s: plain `Copy` addresses, valid while the pool lives; the pool owns the memory.
//!
//! ```
//! use rvhost_hugepages::mempool::{Mempool, MempoolConfig, ObjPtr};
//! use rvhost_hugepages::region::PageSize;
//!
//! let config = MempoolConfig::new("doc", 1024, 200)
//!     .with_cache_size(32)
//!     .with_page_size(PageSize::Small);
//! let pool = Mempool::new(config)?;
//! let mut cache = pool.cache(); // one per worker thread
//! let mut objs = [ObjPtr::DANGLING; 16];
//! cache.get_bulk(&mut objs)?;
//! assert_eq!(pool.in_use(), 16);
//! cache.put_bulk(&objs)?;
//! assert_eq!(pool.in_use(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout: every object is IOVA-contiguous
//!
//! An object never crosses a boundary across which IOVAs may jump, so a DMA engine can be given
//! `(iova_of(obj), elt_size)` as one contiguous span:
//!
//! * hugepages (any IOVA mode), and 4 KiB pages in [`IovaMode::Pa`](crate::region::IovaMode::Pa): objects are packed into
//!   each page and never straddle two (as DPDK does without `RTE_MEMPOOL_F_NO_IOVA_CONTIG`).
//!   The tail of each page that cannot hold a whole object is left unused. An object larger
//!   than a page is refused ([`MempoolError::ObjectTooLarge`]); with 4 KiB pages in PA mode
//!   that means objects of at most 4096 bytes, and 2 KiB+ objects waste up to half of each page:
//!   use hugepages, or ask for [`IovaMode::Va`](crate::region::IovaMode::Va) (`RegionConfig::with_iova_mode`).
//! * 4 KiB pages in [`IovaMode::Va`](crate::region::IovaMode::Va): IOVA = VA is contiguous across pages, so objects are
//!   packed back to back with no waste.
//!
//! Objects are `align`-aligned (a cache line by default; regions are page aligned). The pool
//! sizes its first region for the preferred page size; if the region falls back to 4 KiB pages
//! and holds fewer objects than asked, further regions are added until `count` objects exist
//! (and [`MempoolConfig::max_region_size`] splits a pool into several regions on purpose).
//!
//! # Caches
//!
//! A [`MempoolCache`] ([`Mempool::cache`]) is a per-worker stack of free objects in front of the
//! ring, owned by one thread (`Send`, not `Sync`). Its policy is DPDK's (22.11), with
//! `size` = [`MempoolConfig::cache_size`] and a flush threshold of `1.5 * size`:
//!
//! * **get n**: if the cache holds fewer than `n`, it first refills from the ring with one bulk
//!   dequeue of `size + n - len` objects (so `size` remain after serving `n`); if the ring
//!   cannot supply that many, the request is served from the cache plus exactly the shortfall
//!   from the ring, or fails. Then the `n` most recently cached objects are handed out (LIFO:
//!   cache-hot first).
//! * **put n**: the objects are pushed on the cache; if it then holds more than the flush
//!   threshold, everything above `size` goes back to the ring in one bulk enqueue.
//! * a request larger than `size` bypasses the cache and goes straight to the ring.
//! * dropping a cache puts all its objects back into the ring.
//!
//! Bulk gets are all-or-nothing: [`GetError`] means nothing was taken. Like DPDK, a get can fail
//! while other threads' caches still hold free objects.
//!
//! # Counters
//!
//! [`Mempool::available`] is the ring's count plus the length each live cache publishes (a
//! `Relaxed` store to its own cache line after every operation); [`Mempool::in_use`] is
//! `count - available`. Both are exact when the pool is quiescent and snapshots otherwise.
//!
//! # Checking puts
//!
//! [`Mempool::put_bulk`] and [`MempoolCache::put_bulk`] check every object, always, before
//! putting any: its address must lie in the object area of one of the pool's regions and be
//! `align`-aligned; otherwise nothing is put and [`PutError`] names the first bad address. This
//! costs a compare and a mask per object (vectorized for the single-region case). The exact
//! check that the address is the *start* of an object needs divisions, so only debug builds
//! make it (a put of an interior pointer returns [`PutError`] in debug builds and is accepted
//! in release builds). Putting the same object twice is not detected (the pool would hand it
//! out twice). `put_bulk_unchecked` skips the checks for callers that know where their objects
//! come from (debug builds assert the exact check there).

mod cache;
mod config;
mod layout;
mod regions;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;

use crate::bulk_ring::MpmcRing;
use crate::region::{HugepageStatus, PageSize, Region, hugepage_status};

pub use cache::MempoolCache;
pub use config::{GetError, MempoolConfig, MempoolError, PutError};
use regions::{PoolRegion, create_regions};

/// Default object alignment: one cache line.
pub const CACHE_LINE_SIZE: usize = 64;
/// Default per-cache size, as commonly passed to `rte_mempool_create`.
pub const DEFAULT_CACHE_SIZE: usize = 256;
/// Largest cache size (`RTE_MEMPOOL_CACHE_MAX_SIZE`).
pub const MAX_CACHE_SIZE: usize = 512;
/// Largest object alignment: a 4 KiB page (regions are page aligned).
pub const MAX_ALIGN: usize = 4096;

/// The flush threshold of a cache of `size` objects (`CALC_CACHE_FLUSHTHRESH`: 1.5x).
pub const fn flush_threshold(size: usize) -> usize {
    size + size / 2
}

/// The address of one object of a [`Mempool`]: a `Copy` handle with raw pointer access.
///
/// Holding an `ObjPtr` does not keep the pool alive, and the pool does not track who holds
/// which object: dereferencing is `unsafe`, and sound while the pool lives and the object was
/// got from it and not yet put back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct ObjPtr(NonNull<u8>);

// SAFETY: an `ObjPtr` is an address; sending or sharing it does not access the object. Every
// access through it is `unsafe` and carries its own contract.
unsafe impl Send for ObjPtr {}
// SAFETY: see `Send`.
unsafe impl Sync for ObjPtr {}

impl ObjPtr {
    /// A placeholder to initialize arrays with; never an object of any pool (puts reject it).
    pub const DANGLING: ObjPtr = ObjPtr(NonNull::dangling());

    /// Wraps a pointer (e.g. one turned back from a header type built on top of an object).
    #[inline]
    pub const fn new(ptr: NonNull<u8>) -> ObjPtr {
        ObjPtr(ptr)
    }

    /// The first byte of the object.
    #[inline]
    pub const fn as_ptr(self) -> *mut u8 {
        self.0.as_ptr()
    }

    /// The first byte of the object, non-null.
    #[inline]
    pub const fn as_non_null(self) -> NonNull<u8> {
        self.0
    }

    /// The object as a pointer to `T` (the pool's alignment must suit `T`).
    #[inline]
    pub const fn cast<T>(self) -> NonNull<T> {
        self.0.cast()
    }

    /// The address as an integer.
    #[inline]
    pub fn addr(self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl fmt::Debug for ObjPtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjPtr({:p})", self.0)
    }
}

/// Per-cache published lengths.
type CacheLen = Arc<CachePadded<AtomicUsize>>;

/// A pool of fixed-size objects in hugepage memory (see the [module docs](self)).
pub struct Mempool {
    ring: MpmcRing<ObjPtr>,
    regions: Box<[PoolRegion]>,
    count: usize,
    elt_size: usize,
    align: usize,
    stride: usize,
    cache_size: usize,
    name: String,
    caches: Mutex<Vec<CacheLen>>,
}

impl Mempool {
    /// Creates the pool: its regions, and a ring holding every object.
    pub fn new(config: MempoolConfig) -> Result<Arc<Mempool>, MempoolError> {
        Self::with_obj_init(config, |_, _| {})
    }

    /// [`Mempool::new`], then `init(pool, obj)` for every object in index order before the pool
    /// is returned (like `rte_mempool_obj_iter` at creation). Nobody else can see the pool or
    /// its objects yet, so `init` may write each object's `elt_size` bytes; `pool` is the final
    /// address of the pool (usable as a back-pointer).
    pub fn with_obj_init(
        config: MempoolConfig,
        init: impl FnMut(&Mempool, ObjPtr),
    ) -> Result<Arc<Mempool>, MempoolError> {
        Self::build(config, init, &hugepage_status)
    }

    /// [`Mempool::with_obj_init`] with the hugepage pool status supplied (tests fake it).
    pub(crate) fn build(
        config: MempoolConfig,
        mut init: impl FnMut(&Mempool, ObjPtr),
        status: &dyn Fn(PageSize) -> Option<HugepageStatus>,
    ) -> Result<Arc<Mempool>, MempoolError> {
        let stride = config.validate()?;
        let regions = create_regions(&config, stride, status)?;
        let ring = MpmcRing::new(config.count)?;
        let pool = Arc::new(Mempool {
            ring,
            regions: regions.into_boxed_slice(),
            count: config.count,
            elt_size: config.elt_size,
            align: config.align,
            stride,
            cache_size: config.cache_size,
            name: config.name,
            caches: Mutex::new(Vec::new()),
        });
        let mut chunk = Vec::with_capacity(pool.count.min(4096));
        for r in pool.regions.iter() {
            for j in 0..r.count {
                let obj = r.obj(j);
                init(&pool, obj);
                chunk.push(obj);
                if chunk.len() == chunk.capacity() {
                    let n = pool.ring.enqueue_bulk(&chunk);
                    debug_assert_eq!(n, chunk.len(), "the ring holds count objects");
                    chunk.clear();
                }
            }
        }
        let n = pool.ring.enqueue_bulk(&chunk);
        debug_assert_eq!(n, chunk.len());
        log::debug!(
            "rvhost: mempool {:?}: {} objects of {} bytes (stride {}) in {} region(s) of {} pages",
            pool.name,
            pool.count,
            pool.elt_size,
            pool.stride,
            pool.regions.len(),
            pool.regions[0].region.page_size()
        );
        Ok(pool)
    }

    /// A new per-thread cache (see [`MempoolCache`]).
    pub fn cache(self: &Arc<Self>) -> MempoolCache {
        MempoolCache::new(Arc::clone(self))
    }

    /// Takes `out.len()` objects straight from the ring, or none ([`GetError`]).
    #[inline]
    pub fn get_bulk(&self, out: &mut [ObjPtr]) -> Result<(), GetError> {
        if out.is_empty() || self.ring.dequeue_bulk(out) == out.len() {
            Ok(())
        } else {
            Err(GetError {
                requested: out.len(),
            })
        }
    }

    /// Puts `objs` straight into the ring, after checking each is an object of this pool (see
    /// the [module docs](self#checking-puts)); on [`PutError`] nothing is put.
    #[inline]
    pub fn put_bulk(&self, objs: &[ObjPtr]) -> Result<(), PutError> {
        self.check(objs)?;
        // SAFETY: `check` verified every address is in this pool's object area.
        unsafe { self.put_bulk_unchecked(objs) };
        Ok(())
    }

    /// Puts `objs` straight into the ring without checking them.
    ///
    /// # Safety
    ///
    /// Every object was got from this pool and is not in the pool (ring or a cache) now; none
    /// appears twice in `objs`.
    #[inline]
    pub unsafe fn put_bulk_unchecked(&self, objs: &[ObjPtr]) {
        self.debug_check_starts(objs);
        if self.ring.enqueue_bulk(objs) != objs.len() {
            self.overflow(objs);
        }
    }

    /// The ring is full: more objects were put than the pool has (a double put). Puts what
    /// fits and loses the rest, loudly.
    #[cold]
    #[inline(never)]
    pub(crate) fn overflow(&self, objs: &[ObjPtr]) {
        let n = self.ring.enqueue_burst(objs);
        log::error!(
            "rvhost: mempool {:?}: ring full, {} of {} objects put back dropped (double put?)",
            self.name,
            objs.len() - n,
            objs.len()
        );
    }

    /// Checks that every object lies in the object area of a region and is aligned (debug
    /// builds: and is the start of an object).
    #[inline]
    pub(crate) fn check(&self, objs: &[ObjPtr]) -> Result<(), PutError> {
        let mask = self.align - 1;
        let ok = if let [r] = &*self.regions {
            // One compare per object: `lo` is page aligned, so `off = addr - lo` must be a
            // multiple of `align` below `span`, i.e. `off / align < slots`. Rotating right by
            // log2(align) moves any low bits of a misaligned `off` to the top, far above
            // `slots`. No early exit, so the loop has no branch.
            let (lo, shift) = (r.lo, self.align.trailing_zeros());
            let slots = r.span.div_ceil(self.align);
            objs.iter().fold(true, |ok, o| {
                ok & (o.addr().wrapping_sub(lo).rotate_right(shift) < slots)
            })
        } else {
            objs.iter()
                .all(|o| o.addr() & mask == 0 && self.region_of(o.addr()).is_some())
        };
        if !ok || (cfg!(debug_assertions) && !objs.iter().all(|o| self.contains(*o))) {
            return Err(self.first_bad(objs));
        }
        Ok(())
    }

    #[cold]
    fn first_bad(&self, objs: &[ObjPtr]) -> PutError {
        let mask = self.align - 1;
        let index = objs
            .iter()
            .position(|o| {
                o.addr() & mask != 0
                    || self.region_of(o.addr()).is_none()
                    || (cfg!(debug_assertions) && !self.contains(*o))
            })
            .unwrap_or(0);
        PutError {
            addr: objs.get(index).map_or(0, |o| o.addr()),
            index,
        }
    }

    /// Debug builds: asserts every object is the start of one of this pool's objects.
    #[inline]
    pub(crate) fn debug_check_starts(&self, objs: &[ObjPtr]) {
        if cfg!(debug_assertions) {
            for o in objs {
                assert!(
                    self.obj_index(*o).is_some(),
                    "{o:?} is not an object of mempool {:?}",
                    self.name
                );
            }
        }
    }

    #[inline]
    fn region_of(&self, addr: usize) -> Option<&PoolRegion> {
        self.regions.iter().find(|r| r.covers(addr))
    }

    /// The pool-wide index of `obj` (in `0..count`), or `None` if it is not the start of one of
    /// this pool's objects. Exact, but costs divisions: for diagnostics and tests.
    pub fn obj_index(&self, obj: ObjPtr) -> Option<usize> {
        let r = self.region_of(obj.addr())?;
        let j = r.layout.index_at(obj.addr() - r.lo)?;
        (j < r.count).then_some(r.first + j)
    }

    /// Object number `index` (`0..count`), free or not.
    pub fn obj(&self, index: usize) -> Option<ObjPtr> {
        let r = self
            .regions
            .iter()
            .find(|r| index.wrapping_sub(r.first) < r.count)?;
        Some(r.obj(index - r.first))
    }

    /// Whether `obj` is the start of one of this pool's objects (exact; see
    /// [`obj_index`](Self::obj_index)).
    pub fn contains(&self, obj: ObjPtr) -> bool {
        self.obj_index(obj).is_some()
    }

    /// The IOVA of `addr`, an address inside one of the pool's objects (e.g. an object or a
    /// byte of its payload), or `None` if it is outside every region. The `elt_size` bytes of
    /// an object are IOVA-contiguous.
    #[inline]
    pub fn iova_of(&self, addr: *const u8) -> Option<u64> {
        let addr = addr as usize;
        self.region_of(addr)?.region.va_to_iova(addr)
    }

    /// Number of objects, free or not.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Usable bytes per object.
    pub fn elt_size(&self) -> usize {
        self.elt_size
    }

    /// Object alignment.
    pub fn align(&self) -> usize {
        self.align
    }

    /// Distance between consecutive objects of one page (`elt_size` rounded up to `align`).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The per-cache size.
    pub fn cache_size(&self) -> usize {
        self.cache_size
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The regions holding the objects (to share their fds, or map them for a DMA engine).
    pub fn regions(&self) -> impl ExactSizeIterator<Item = &Region> {
        self.regions.iter().map(|r| &r.region)
    }

    /// Free objects in the ring (not counting caches).
    pub fn ring_count(&self) -> usize {
        self.ring.len()
    }

    /// Free objects sitting in live caches.
    pub fn cached_count(&self) -> usize {
        self.caches().iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Free objects: in the ring plus in every live cache (`rte_mempool_avail_count`).
    pub fn available(&self) -> usize {
        (self.ring_count() + self.cached_count()).min(self.count)
    }

    /// Objects handed out and not yet put back: `count - available` (`rte_mempool_in_use_count`).
    pub fn in_use(&self) -> usize {
        self.count - self.available()
    }

    fn caches(&self) -> MutexGuard<'_, Vec<CacheLen>> {
        // The list stays consistent whatever a panicking holder did: push/remove only.
        self.caches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register_cache(&self, len: &CacheLen) {
        self.caches().push(Arc::clone(len));
    }

    pub(crate) fn unregister_cache(&self, len: &CacheLen) {
        let mut caches = self.caches();
        if let Some(i) = caches.iter().position(|c| Arc::ptr_eq(c, len)) {
            caches.swap_remove(i);
        }
    }

    #[inline]
    pub(crate) fn ring(&self) -> &MpmcRing<ObjPtr> {
        &self.ring
    }
}

impl fmt::Debug for Mempool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mempool")
            .field("name", &self.name)
            .field("count", &self.count)
            .field("elt_size", &self.elt_size)
            .field("stride", &self.stride)
            .field("cache_size", &self.cache_size)
            .field("regions", &self.regions.len())
            .field("ring_count", &self.ring_count())
            .finish_non_exhaustive()
    }
}
