//! The per-worker cache of a mempool (`rte_mempool_cache`).

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

use super::{CacheLen, GetError, Mempool, ObjPtr, PutError, flush_threshold};

/// A per-thread stack of free objects in front of a [`Mempool`]'s ring.
///
/// Owned by one worker (`Send`, not `Sync`: operations take `&mut self`). The policy (refill,
/// flush threshold, bypass) is described in the [module docs](super#caches). Keeps the pool
/// alive; dropping the cache puts its objects back into the ring.
///
/// A cache cannot be shared between threads:
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<rvhost_hugepages::mempool::MempoolCache>();
/// ```
pub struct MempoolCache {
    /// Free objects; `objs[..len]` are valid, the top of the stack is `objs[len - 1]`.
    objs: Box<[ObjPtr]>,
    len: usize,
    size: usize,
    flush_thresh: usize,
    /// `len`, published for [`Mempool::available`].
    published: CacheLen,
    pool: Arc<Mempool>,
    _not_sync: PhantomData<Cell<()>>,
}

impl MempoolCache {
    pub(super) fn new(pool: Arc<Mempool>) -> MempoolCache {
        let size = pool.cache_size;
        let flush_thresh = flush_threshold(size);
        // Between operations `len <= flush_thresh`; a put adds at most `size` before flushing,
        // and a refill brings `len` to at most `2 * size`.
        let objs = vec![ObjPtr::DANGLING; flush_thresh + size].into_boxed_slice();
        let published = Arc::new(CachePadded::new(AtomicUsize::new(0)));
        pool.register_cache(&published);
        MempoolCache {
            objs,
            len: 0,
            size,
            flush_thresh,
            published,
            pool,
            _not_sync: PhantomData,
        }
    }

    /// Takes `out.len()` objects, from the cache when it can (see the policy); all or nothing.
    #[inline]
    pub fn get_bulk(&mut self, out: &mut [ObjPtr]) -> Result<(), GetError> {
        let n = out.len();
        if n > self.size {
            return self.pool.get_bulk(out);
        }
        if self.len < n {
            let req = self.size + n - self.len;
            let dst = &mut self.objs[self.len..self.len + req];
            if self.pool.ring().dequeue_bulk(dst) == 0 {
                return self.get_short(out);
            }
            self.len += req;
        }
        let start = self.len - n;
        out.copy_from_slice(&self.objs[start..self.len]);
        self.len = start;
        self.publish();
        Ok(())
    }

    /// The ring cannot refill the cache: serve the cache's objects plus exactly the shortfall
    /// from the ring, or nothing.
    #[cold]
    #[inline(never)]
    fn get_short(&mut self, out: &mut [ObjPtr]) -> Result<(), GetError> {
        let requested = out.len();
        let (from_ring, from_cache) = out.split_at_mut(requested - self.len);
        self.pool
            .get_bulk(from_ring)
            .map_err(|_| GetError { requested })?;
        from_cache.copy_from_slice(&self.objs[..self.len]);
        self.len = 0;
        self.publish();
        Ok(())
    }

    /// Puts `objs` back, after checking each is an object of this cache's pool (see
    /// [`Mempool::put_bulk`]); on [`PutError`] nothing is put.
    #[inline]
    pub fn put_bulk(&mut self, objs: &[ObjPtr]) -> Result<(), PutError> {
        self.pool.check(objs)?;
        // SAFETY: `check` verified every address is in the pool's object area.
        unsafe { self.put_bulk_unchecked(objs) };
        Ok(())
    }

    /// Puts `objs` back without checking them.
    ///
    /// # Safety
    ///
    /// As [`Mempool::put_bulk_unchecked`]: every object was got from this cache's pool, is not
    /// in the pool now, and appears once.
    #[inline]
    pub unsafe fn put_bulk_unchecked(&mut self, objs: &[ObjPtr]) {
        let n = objs.len();
        if n > self.size {
            // SAFETY: the caller's contract is the pool's.
            unsafe { self.pool.put_bulk_unchecked(objs) };
            return;
        }
        self.pool.debug_check_starts(objs);
        self.objs[self.len..self.len + n].copy_from_slice(objs);
        self.len += n;
        if self.len > self.flush_thresh {
            self.flush_to(self.size);
        }
        self.publish();
    }

    /// Moves `objs[keep..len]` to the ring.
    #[inline]
    fn flush_to(&mut self, keep: usize) {
        let extra = &self.objs[keep..self.len];
        if self.pool.ring().enqueue_bulk(extra) != extra.len() {
            self.pool.overflow(extra);
        }
        self.len = keep;
    }

    /// Puts every cached object back into the ring.
    pub fn flush(&mut self) {
        if self.len > 0 {
            self.flush_to(0);
            self.publish();
        }
    }

    #[inline(always)]
    fn publish(&self) {
        // Relaxed: a statistic read by `Mempool::available`; no object is handed over by it.
        self.published.store(self.len, Relaxed);
    }

    /// Objects in the cache now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache size (the level a refill or a flush brings it to).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The level above which a put flushes the cache down to [`size`](Self::size).
    pub fn flush_threshold(&self) -> usize {
        self.flush_thresh
    }

    /// The pool this cache serves.
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }
}

impl Drop for MempoolCache {
    fn drop(&mut self) {
        self.flush();
        self.pool.unregister_cache(&self.published);
    }
}

impl fmt::Debug for MempoolCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MempoolCache")
            .field("pool", &self.pool.name())
            .field("len", &self.len)
            .field("size", &self.size)
            .field("flush_threshold", &self.flush_thresh)
            .finish()
    }
}
