//! Packet pools (`rte_pktmbuf_pool_create`) and their per-worker caches.

use std::fmt;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use rvhost_hugepages::mempool::{
    DEFAULT_CACHE_SIZE, GetError, Mempool, MempoolCache, MempoolConfig, ObjPtr,
};
use rvhost_hugepages::region::{Backing, IovaMode, PageSize, RegionConfig};

use super::error::{AllocError, PktPoolError};
use super::hdr::{Freed, HDR_SIZE, Hdr, Mbuf};

/// Objects moved per ring/cache operation when allocating or freeing many mbufs.
const CHUNK: usize = 64;

/// Largest data room: the header's buffer length is a `u32`.
pub const MAX_DATA_ROOM: usize = u32::MAX as usize;

/// A pool of packet buffers: a [`Mempool`] whose objects are an mbuf header followed by
/// headroom and data room. Cheap to clone (shared).
///
/// Dropping the last handle (pools, caches) while mbufs are still out leaks the pool's memory,
/// with a warning, so that those mbufs stay valid and can still be freed.
#[derive(Clone)]
pub struct PktPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    mp: Arc<Mempool>,
    data_room: usize,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let out = self.mp.in_use();
        // Acquire: pairs with the Release publication (ring tail) of the last mbufs put back,
        // so their last accesses to the pool happen-before the pool is unmapped.
        fence(Ordering::Acquire);
        if out != 0 {
            log::warn!(
                "rvhost: packet pool {:?} dropped with {out} mbufs in use: leaking its memory so \
                 they stay valid",
                self.mp.name()
            );
            std::mem::forget(Arc::clone(&self.mp));
        }
    }
}

/// How to make a [`PktPool`]: [`PktPoolConfig::new`] has the defaults an application wants
/// (what [`PktPool::with_defaults`] uses), the `with_*` methods change one thing each.
///
/// | setting | default | change it when |
/// |---|---|---|
/// | data room | [`DEFAULT_DATA_ROOM`](super::DEFAULT_DATA_ROOM) (2048 + 128 headroom) | packets above ~2 KiB should not chain (jumbo frames), or a pool of bare headers for clones (0) |
/// | cache size | 256 per worker cache | small pools (1.5 x cache must not exceed `count`) |
/// | page size | 2 MiB hugepages if enough are free, else 4 KiB pages with one warning | you must have hugepages (`PageSize::Huge2M`: an error instead of the fallback) |
/// | backing | a memfd (no mount needed) | you want the pages in a hugetlbfs mount ([`Backing::Hugetlbfs`]) |
/// | IOVA mode | [`IovaMode::Va`] | a DMA device without an IOMMU reads the mbufs: [`IovaMode::Pa`] (needs root and hugepages) |
/// | lock | off | the pool must not be swapped (`mlock`) |
///
/// The IOVA mode only matters to DMA engines: the CPU copies of the data path use virtual
/// addresses. `Va` is right for the software engine, for engines behind an IOMMU (VFIO), and
/// without root; `Pa` for a device doing DMA with physical addresses (no IOMMU).
///
/// ```
/// use rvhost::mbuf::{PageSize, PktPoolConfig};
/// let pool = PktPoolConfig::new("rx", 1024)
///     .with_page_size(PageSize::Small) // this doc test must not need hugepages
///     .create()?;
/// assert_eq!(pool.count(), 1024);
/// # Ok::<(), rvhost::mbuf::PktPoolError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PktPoolConfig {
    /// The pool's name (in logs and `/proc/<pid>/maps`).
    pub name: String,
    /// How many mbufs.
    pub count: usize,
    /// Bytes of data room per mbuf, headroom included.
    pub data_room: usize,
    /// Mbufs per [`PktCache`] (0: caches pass through to the pool).
    pub cache_size: usize,
    /// `None`: hugepages when available, else 4 KiB pages. `Some`: exactly that size or an
    /// error.
    pub page_size: Option<PageSize>,
    /// Where the memory comes from.
    pub backing: Backing,
    /// The addresses [`Mbuf::iova`] gives DMA engines.
    pub iova_mode: IovaMode,
    /// `mlock` the pool's memory.
    pub lock: bool,
}

impl PktPoolConfig {
    /// `count` mbufs of [`DEFAULT_DATA_ROOM`](super::DEFAULT_DATA_ROOM) bytes, caches of 256,
    /// hugepages with the 4 KiB fallback, IOVA = VA, not locked.
    pub fn new(name: &str, count: usize) -> PktPoolConfig {
        PktPoolConfig {
            name: name.to_string(),
            count,
            data_room: super::DEFAULT_DATA_ROOM,
            cache_size: DEFAULT_CACHE_SIZE,
            page_size: None,
            backing: Backing::Memfd,
            iova_mode: IovaMode::Va,
            lock: false,
        }
    }

    /// Sets the data room (headroom included).
    pub fn with_data_room(mut self, data_room: usize) -> Self {
        self.data_room = data_room;
        self
    }

    /// Sets the per-worker cache size.
    pub fn with_cache_size(mut self, cache_size: usize) -> Self {
        self.cache_size = cache_size;
        self
    }

    /// Requires exactly this page size.
    pub fn with_page_size(mut self, page_size: PageSize) -> Self {
        self.page_size = Some(page_size);
        self
    }

    /// Sets where the memory comes from.
    pub fn with_backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }

    /// Sets the IOVA mode.
    pub fn with_iova_mode(mut self, iova_mode: IovaMode) -> Self {
        self.iova_mode = iova_mode;
        self
    }

    /// Locks the pool's memory in RAM.
    pub fn with_lock(mut self, lock: bool) -> Self {
        self.lock = lock;
        self
    }

    /// Makes the pool.
    pub fn create(&self) -> Result<PktPool, PktPoolError> {
        let region = RegionConfig {
            page_size: self.page_size,
            backing: self.backing.clone(),
            lock: self.lock,
            iova_mode: Some(self.iova_mode),
            ..RegionConfig::default()
        };
        PktPool::new(
            &self.name,
            self.count,
            self.data_room,
            self.cache_size,
            region,
        )
    }
}

impl PktPool {
    /// A pool of `count` mbufs with the defaults of [`PktPoolConfig::new`]: 2 KiB of data
    /// room after 128 bytes of headroom, caches of 256, hugepages when there are enough free
    /// (else 4 KiB pages and one warning saying how to reserve hugepages), IOVA = VA.
    pub fn with_defaults(name: &str, count: usize) -> Result<PktPool, PktPoolError> {
        PktPoolConfig::new(name, count).create()
    }

    /// A pool of `count` mbufs, each with a data room of `data_room` bytes (headroom
    /// included: [`DEFAULT_DATA_ROOM`](super::DEFAULT_DATA_ROOM) is 2048 + 128), caches of
    /// `cache_size` (see [`MempoolConfig::cache_size`]), in regions made as `region` says.
    /// The low-level form of [`PktPoolConfig`]: the pool sizes its regions itself, so
    /// `region.size` must be 0 (else [`PktPoolError::RegionSizeSet`]), and `region.name` is
    /// replaced by `name`.
    ///
    /// A `data_room` of 0 makes a pool of bare headers, for clones.
    pub fn new(
        name: &str,
        count: usize,
        data_room: usize,
        cache_size: usize,
        region: RegionConfig,
    ) -> Result<PktPool, PktPoolError> {
        let room_len = u32::try_from(data_room).map_err(|_| PktPoolError::DataRoomTooLarge {
            data_room,
            max: MAX_DATA_ROOM,
        })?;
        let elt_size = HDR_SIZE
            .checked_add(data_room)
            .ok_or(PktPoolError::DataRoomTooLarge {
                data_room,
                max: MAX_DATA_ROOM,
            })?;
        if region.size != 0 {
            return Err(PktPoolError::RegionSizeSet { size: region.size });
        }
        let config = MempoolConfig::new(name, count, elt_size)
            .with_cache_size(cache_size)
            .with_region(region);
        let mp = Mempool::with_obj_init(config, |pool, obj| {
            // SAFETY: `obj` is an object of `pool`, HDR_SIZE + data_room bytes, aligned to a
            // cache line (the default alignment, that of the header) and IOVA-contiguous; the
            // pool is not shared yet.
            unsafe { Hdr::init(obj, pool, room_len) }
        })?;
        Ok(PktPool {
            inner: Arc::new(PoolInner { mp, data_room }),
        })
    }

    fn mp(&self) -> &Arc<Mempool> {
        &self.inner.mp
    }

    /// A cache for one worker thread ([`PktCache`]).
    pub fn cache(&self) -> PktCache {
        PktCache {
            cache: self.mp().cache(),
            pool: self.clone(),
        }
    }

    /// Allocates one mbuf straight from the pool's ring (no cache).
    pub fn alloc(&self) -> Result<Mbuf, AllocError> {
        let mut obj = [ObjPtr::DANGLING];
        self.mp().get_bulk(&mut obj).map_err(alloc_error)?;
        // SAFETY: just taken out of this packet pool.
        Ok(unsafe { Mbuf::from_fresh(obj[0]) })
    }

    /// Appends `n` mbufs to `out`, straight from the pool's ring, or none ([`AllocError`]).
    /// Allocates no memory if `out` has room for them.
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> Result<(), AllocError> {
        alloc_bulk_with(out, n, |objs| self.mp().get_bulk(objs))
    }

    /// Mbufs in the pool.
    pub fn count(&self) -> usize {
        self.mp().count()
    }

    /// Free mbufs (in the ring and in live caches).
    pub fn available(&self) -> usize {
        self.mp().available()
    }

    /// Mbufs allocated and not yet freed (clones' headers and orphaned direct mbufs included).
    pub fn in_use(&self) -> usize {
        self.mp().in_use()
    }

    /// Bytes of data room per mbuf (headroom included).
    pub fn data_room(&self) -> usize {
        self.inner.data_room
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        self.mp().name()
    }

    /// The page size and IOVA mode of the pool's first region.
    pub fn memory_kind(&self) -> (PageSize, IovaMode) {
        let r = self.mp().regions().next().expect("a pool has a region");
        (r.page_size(), r.iova_mode())
    }

    /// Address and length of each memory region of the pool (e.g. to map it for a DMA engine
    /// in IOVA = VA mode). The regions themselves are not exposed: their headers are this
    /// module's to write.
    pub fn memory_ranges(&self) -> Vec<(*const u8, usize)> {
        self.mp()
            .regions()
            .map(|r| (r.as_ptr().cast_const(), r.len()))
            .collect()
    }

    /// Whether `other` is a handle to the same pool.
    pub fn ptr_eq(&self, other: &PktPool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for PktPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PktPool")
            .field("name", &self.name())
            .field("count", &self.count())
            .field("data_room", &self.data_room())
            .field("available", &self.available())
            .finish()
    }
}

fn alloc_error(e: GetError) -> AllocError {
    AllocError {
        requested: e.requested,
    }
}

/// Appends `n` fresh mbufs to `out`, getting objects `CHUNK` at a time with `get`; on failure
/// frees what this call appended (through the pool's ring) and appends nothing.
fn alloc_bulk_with(
    out: &mut Vec<Mbuf>,
    n: usize,
    mut get: impl FnMut(&mut [ObjPtr]) -> Result<(), GetError>,
) -> Result<(), AllocError> {
    let start = out.len();
    out.reserve(n);
    let mut objs = [ObjPtr::DANGLING; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK);
        if get(&mut objs[..k]).is_err() {
            out.truncate(start);
            return Err(AllocError { requested: n });
        }
        // SAFETY: each object was just taken out of the packet pool `get` serves.
        out.extend(objs[..k].iter().map(|&o| unsafe { Mbuf::from_fresh(o) }));
        left -= k;
    }
    Ok(())
}

/// A worker's cache of a [`PktPool`] (`rte_mempool_cache` for mbufs): allocate and free bursts
/// without touching the shared ring most of the time. `Send`, not `Sync`; one per thread.
///
/// Mbufs freed through a cache go into it if they belong to its pool, else straight back to
/// their own pool. (A lone `Mbuf` dropped anywhere goes straight back to its pool's ring: use
/// [`free_bulk`](Self::free_bulk) on the data path.) Dropping the cache flushes it.
pub struct PktCache {
    // Drop order: the cache flushes into the ring before the pool handle goes.
    cache: MempoolCache,
    pool: PktPool,
}

/// The first `n` entries of `staged`, which the caller wrote.
///
/// # Safety
///
/// `staged[..n]` are initialised.
#[inline(always)]
unsafe fn staged_init(staged: &[MaybeUninit<ObjPtr>; CHUNK], n: usize) -> &[ObjPtr] {
    let n = n.min(CHUNK);
    // SAFETY: the caller wrote the first `n` (at most CHUNK) entries; `MaybeUninit<T>` has
    // `T`'s layout.
    unsafe { std::slice::from_raw_parts(staged.as_ptr().cast::<ObjPtr>(), n) }
}

impl PktCache {
    /// Allocates one mbuf.
    #[inline]
    pub fn alloc(&mut self) -> Result<Mbuf, AllocError> {
        let mut obj = [ObjPtr::DANGLING];
        self.cache.get_bulk(&mut obj).map_err(alloc_error)?;
        // SAFETY: just taken out of this cache's packet pool.
        Ok(unsafe { Mbuf::from_fresh(obj[0]) })
    }

    /// Appends `n` mbufs to `out`, or none ([`AllocError`]). Allocates no memory if `out` has
    /// room for them.
    #[inline]
    pub fn alloc_bulk(&mut self, out: &mut Vec<Mbuf>, n: usize) -> Result<(), AllocError> {
        let cache = &mut self.cache;
        alloc_bulk_with(out, n, |objs| cache.get_bulk(objs))
    }

    /// Frees one mbuf (its whole chain).
    #[inline]
    pub fn free(&mut self, m: Mbuf) {
        self.free_bulk([m]);
    }

    /// Frees mbufs (whole chains): segments whose last reference goes return to this cache
    /// (or to their own pool if it is another one). Use `vec.drain(..)` to keep a burst
    /// vector's allocation.
    pub fn free_bulk(&mut self, mbufs: impl IntoIterator<Item = Mbuf>) {
        let own = Arc::as_ptr(self.cache.pool());
        // Not initialised: filling 64 entries cost each call 512 bytes of stores (some 5
        // instructions a packet in loop-tput, where half the calls free nothing).
        let mut staged = [const { MaybeUninit::<ObjPtr>::uninit() }; CHUNK];
        let mut n = 0;
        let cache = &mut self.cache;
        for m in mbufs {
            m.release(|freed: Freed| {
                if freed.pool_ptr() != own {
                    freed.put_uncached();
                    return;
                }
                staged[n].write(freed.obj());
                n += 1;
                if n == CHUNK {
                    // SAFETY: every staged object is a `Freed` header of this cache's pool
                    // (checked above): its last reference is gone and it is put once; all
                    // CHUNK entries were written.
                    unsafe { cache.put_bulk_unchecked(staged_init(&staged, CHUNK)) };
                    n = 0;
                }
            });
        }
        if n > 0 {
            // SAFETY: as above, for the first `n` entries, written since the last put.
            unsafe { cache.put_bulk_unchecked(staged_init(&staged, n)) };
        }
    }

    /// Free mbufs sitting in this cache.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache holds no free mbuf.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Puts every cached mbuf back into the pool's ring.
    pub fn flush(&mut self) {
        self.cache.flush();
    }

    /// The pool this cache serves.
    pub fn pool(&self) -> &PktPool {
        &self.pool
    }
}

impl fmt::Debug for PktCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PktCache")
            .field("pool", &self.pool.name())
            .field("len", &self.cache.len())
            .finish()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Where clones and copies get their mbufs: `&PktPool` (the ring) or `&mut PktCache`.
pub trait PktAlloc: sealed::Sealed {
    /// Allocates one fresh mbuf.
    fn alloc_mbuf(&mut self) -> Result<Mbuf, AllocError>;
}

impl sealed::Sealed for &PktPool {}
impl sealed::Sealed for &mut PktCache {}

impl PktAlloc for &PktPool {
    #[inline]
    fn alloc_mbuf(&mut self) -> Result<Mbuf, AllocError> {
        self.alloc()
    }
}

impl PktAlloc for &mut PktCache {
    #[inline]
    fn alloc_mbuf(&mut self) -> Result<Mbuf, AllocError> {
        (**self).alloc()
    }
}
