//! The configuration of a [`Mempool`](super::Mempool) and its errors.

use crate::bulk_ring::{MAX_CAPACITY, RingError};
use crate::region::{IovaMode, PageSize, RegionConfig, RegionError};

use super::{CACHE_LINE_SIZE, DEFAULT_CACHE_SIZE, MAX_ALIGN, MAX_CACHE_SIZE, flush_threshold};

/// Errors creating a [`Mempool`](super::Mempool).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MempoolError {
    /// A pool must hold at least one object.
    #[error("a mempool must hold at least one object")]
    ZeroCount,
    /// More objects than the ring can index.
    #[error("mempool of {count} objects exceeds the maximum of {max}")]
    CountTooLarge {
        /// Objects asked for.
        count: usize,
        /// [`MAX_CAPACITY`] of the ring.
        max: usize,
    },
    /// Objects must have a size.
    #[error("mempool objects must be at least one byte")]
    ZeroEltSize,
    /// The alignment is not a power of two in `1..=MAX_ALIGN`.
    #[error("object alignment {align} is not a power of two of at most {MAX_ALIGN}")]
    BadAlign {
        /// The alignment given.
        align: usize,
    },
    /// The cache is larger than [`MAX_CACHE_SIZE`] or its flush threshold exceeds the count.
    #[error(
        "cache size {cache_size} is too large for a pool of {count} objects \
         (at most {MAX_CACHE_SIZE}, and 1.5x the cache size must not exceed the count)"
    )]
    CacheTooLarge {
        /// The cache size given.
        cache_size: usize,
        /// The pool's object count.
        count: usize,
    },
    /// An object cannot be kept IOVA-contiguous in a region of this page size and IOVA mode.
    #[error(
        "objects of {stride} bytes do not fit in one {page_size} page, as {iova_mode:?} IOVAs \
         require; use hugepages or IovaMode::Va"
    )]
    ObjectTooLarge {
        /// Element size rounded up to the alignment.
        stride: usize,
        /// The page size of the region.
        page_size: PageSize,
        /// The IOVA mode of the region.
        iova_mode: IovaMode,
    },
    /// [`MempoolConfig::max_region_size`] is too small to hold one object.
    #[error("a region of {region_len} bytes holds no object of {stride} bytes")]
    RegionTooSmall {
        /// Length of the region that was created.
        region_len: usize,
        /// Element size rounded up to the alignment.
        stride: usize,
    },
    /// The pool's size overflows `usize`.
    #[error("mempool of {count} objects of {stride} bytes overflows the address space")]
    SizeOverflow {
        /// Objects asked for.
        count: usize,
        /// Element size rounded up to the alignment.
        stride: usize,
    },
    /// Creating one of the pool's regions failed.
    #[error("creating region {index} of mempool {name:?} failed")]
    Region {
        /// The pool's name.
        name: String,
        /// Which region (0 for the first).
        index: usize,
        /// The cause.
        #[source]
        source: RegionError,
    },
    /// Creating the ring failed.
    #[error("creating the mempool ring failed")]
    Ring(#[from] RingError),
}

/// A bulk get found fewer free objects than requested; nothing was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mempool exhausted: {requested} objects requested")]
pub struct GetError {
    /// Objects requested.
    pub requested: usize,
}

/// A put was given an address that is not an object of this pool; nothing was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address {addr:#x} (at index {index} of the put) is not an object of this mempool")]
pub struct PutError {
    /// The first offending address.
    pub addr: usize,
    /// Its position in the slice given to the put.
    pub index: usize,
}

/// How to create a [`Mempool`](super::Mempool). Plain fields plus `with_*` helpers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolConfig {
    /// Name, for logs and the backing memfd(s).
    pub name: String,
    /// Number of objects (at least 1).
    pub count: usize,
    /// Bytes per object (at least 1).
    pub elt_size: usize,
    /// Alignment of every object: a power of two up to [`MAX_ALIGN`]. Default
    /// [`CACHE_LINE_SIZE`]. The distance between objects is `elt_size` rounded up to it.
    pub align: usize,
    /// Per-cache size (`0` makes caches pass-through). At most [`MAX_CACHE_SIZE`], and
    /// `flush_threshold(cache_size)` must not exceed `count`. Default [`DEFAULT_CACHE_SIZE`].
    pub cache_size: usize,
    /// How to create the regions: page size preference, backing, locking, IOVA mode. `size`
    /// and `name` are set by the pool.
    pub region: RegionConfig,
    /// Largest region to create, in bytes; larger pools get several regions. Default `None`:
    /// one region (unless a fallback to 4 KiB pages needs more; see the module docs).
    pub max_region_size: Option<usize>,
}

impl MempoolConfig {
    /// `count` objects of `elt_size` bytes, cache-line aligned, with the default cache size and
    /// region configuration (2 MiB hugepages if free, else 4 KiB pages).
    pub fn new(name: impl Into<String>, count: usize, elt_size: usize) -> Self {
        MempoolConfig {
            name: name.into(),
            count,
            elt_size,
            align: CACHE_LINE_SIZE,
            cache_size: DEFAULT_CACHE_SIZE,
            region: RegionConfig::default(),
            max_region_size: None,
        }
    }

    /// Set the object alignment.
    pub fn with_align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// Set the per-cache size.
    pub fn with_cache_size(mut self, cache_size: usize) -> Self {
        self.cache_size = cache_size;
        self
    }

    /// Set the region configuration (its `size` and `name` are ignored).
    pub fn with_region(mut self, region: RegionConfig) -> Self {
        self.region = region;
        self
    }

    /// Require a page size (shorthand for the region's `page_size`).
    pub fn with_page_size(mut self, page_size: PageSize) -> Self {
        self.region.page_size = Some(page_size);
        self
    }

    /// Cap the size of each region.
    pub fn with_max_region_size(mut self, bytes: usize) -> Self {
        self.max_region_size = Some(bytes);
        self
    }

    /// Checks the configuration; returns the object stride.
    pub(super) fn validate(&self) -> Result<usize, MempoolError> {
        if self.count == 0 {
            return Err(MempoolError::ZeroCount);
        }
        if self.count > MAX_CAPACITY {
            return Err(MempoolError::CountTooLarge {
                count: self.count,
                max: MAX_CAPACITY,
            });
        }
        if self.elt_size == 0 {
            return Err(MempoolError::ZeroEltSize);
        }
        if !self.align.is_power_of_two() || self.align > MAX_ALIGN {
            return Err(MempoolError::BadAlign { align: self.align });
        }
        if self.cache_size > MAX_CACHE_SIZE || flush_threshold(self.cache_size) > self.count {
            return Err(MempoolError::CacheTooLarge {
                cache_size: self.cache_size,
                count: self.count,
            });
        }
        self.elt_size
            .checked_next_multiple_of(self.align)
            .ok_or(MempoolError::SizeOverflow {
                count: self.count,
                stride: self.elt_size,
            })
    }
}
