//! The error type of [`crate::region`].

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use super::PageSize;

/// Everything that can go wrong creating, mapping or accessing a [`Region`](super::Region).
///
/// System-call failures keep their cause (`source()`), so `{:#}`-style reporters print the
/// errno too.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A region (or a mapping of a received fd) of zero bytes was asked for.
    #[error("a region must have a non-zero length")]
    ZeroSize,

    /// The size, rounded up to the page size, does not fit in `usize`/`off_t`.
    #[error("region size {size} bytes overflows when rounded up to {page_size} pages")]
    SizeOverflow {
        /// Requested size in bytes.
        size: usize,
        /// Page size it was rounded to.
        page_size: PageSize,
    },

    /// A hugepage size was required and the pool cannot supply enough pages.
    ///
    /// `free` counts the pages a new mapping can still reserve (free minus already reserved,
    /// plus overcommit headroom); `total` is the size of the pool.
    #[error(
        "not enough free {page_size} hugepages: wanted {wanted}, free {free} (pool total {total}); \
         reserve more as root: echo {suggest} > /sys/kernel/mm/hugepages/{dir}/nr_hugepages",
        suggest = suggested_pool(*.total, *.wanted, *.free),
        dir = .page_size.sysfs_dir().unwrap_or("?")
    )]
    NotEnoughHugepages {
        /// Hugepages the region needs.
        wanted: usize,
        /// Hugepages that could be reserved when the request failed.
        free: usize,
        /// Hugepages in the pool (`nr_hugepages`).
        total: usize,
        /// Size of the hugepages asked for.
        page_size: PageSize,
    },

    /// The kernel has no pool for this hugepage size (no `/sys/kernel/mm/hugepages/hugepages-*kB`,
    /// e.g. 1 GiB pages on a CPU without `pdpe1gb`, or a kernel without `CONFIG_HUGETLBFS`).
    #[error(
        "this kernel has no {page_size} hugepage pool (/sys/kernel/mm/hugepages/{dir} is missing)",
        dir = .page_size.sysfs_dir().unwrap_or("?")
    )]
    HugepagesUnsupported {
        /// The hugepage size asked for.
        page_size: PageSize,
    },

    /// The `Hugetlbfs` backing directory is not a hugetlbfs mount (or cannot be examined).
    #[error(
        "{} is not a hugetlbfs mount ({reason}); mount one as root: \
         mkdir -p {0} && mount -t hugetlbfs nodev {0}",
        .dir.display()
    )]
    NotHugetlbfs {
        /// The directory given as backing.
        dir: PathBuf,
        /// What was found instead.
        reason: String,
        /// The `statfs` failure, if that is what went wrong.
        #[source]
        source: Option<io::Error>,
    },

    /// The hugetlbfs mount serves a different page size than the one required.
    #[error("hugetlbfs mount {} serves {mounted} pages but {wanted} pages were required", .dir.display())]
    HugetlbfsPageSizeMismatch {
        /// The hugetlbfs mount point.
        dir: PathBuf,
        /// Page size of the mount (`pagesize=` mount option).
        mounted: PageSize,
        /// Page size required by the configuration.
        wanted: PageSize,
    },

    /// A hugetlbfs file reports a page size this crate does not model.
    #[error("unsupported hugetlbfs page size of {bytes} bytes")]
    UnsupportedPageSize {
        /// The `f_bsize` reported by `fstatfs`.
        bytes: u64,
    },

    /// `memfd_create` failed.
    #[error("memfd_create({name:?}) for {page_size} pages failed")]
    MemfdCreate {
        /// Name given to the memfd.
        name: String,
        /// Page size asked for.
        page_size: PageSize,
        /// The errno.
        #[source]
        source: Errno,
    },

    /// Creating or unlinking the backing file in a hugetlbfs mount failed.
    #[error("creating backing file {} failed", .path.display())]
    HugetlbfsFile {
        /// The file that was being created / unlinked.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// `ftruncate` of the backing file failed.
    #[error("ftruncate of the backing file to {size} bytes failed")]
    Truncate {
        /// Target size.
        size: usize,
        /// The errno.
        #[source]
        source: Errno,
    },

    /// `mmap` failed.
    #[error("mmap of {len} bytes at file offset {offset} failed")]
    Mmap {
        /// Length of the mapping.
        len: usize,
        /// File offset of the mapping.
        offset: u64,
        /// The errno.
        #[source]
        source: Errno,
    },

    /// `mlock` failed (check `ulimit -l` / `CAP_IPC_LOCK`).
    #[error("mlock of {len} bytes failed (RLIMIT_MEMLOCK too low or no CAP_IPC_LOCK?)")]
    Lock {
        /// Bytes that were to be locked.
        len: usize,
        /// The errno.
        #[source]
        source: Errno,
    },

    /// `fstat`/`fstatfs` of a received fd failed.
    #[error("fstat/fstatfs of the region fd failed")]
    Stat {
        /// The errno.
        #[source]
        source: Errno,
    },

    /// `offset + len` of a mapping request overflows.
    #[error("mapping of {len} bytes at offset {offset} overflows")]
    Overflow {
        /// Requested file offset.
        offset: u64,
        /// Requested length.
        len: usize,
    },

    /// A mapping request reaches past the end of the file (touching it would `SIGBUS`).
    #[error(
        "mapping of {len} bytes at offset {offset} does not fit in the file of {file_size} bytes"
    )]
    OutOfFile {
        /// Requested file offset.
        offset: u64,
        /// Requested length.
        len: usize,
        /// Size of the file from `fstat`.
        file_size: u64,
    },

    /// [`IovaMode::Pa`](super::IovaMode::Pa) was required but physical addresses cannot be had.
    #[error("physical addresses are not available: {reason}")]
    PhysAddrUnavailable {
        /// Why (not prefaulted, pagemap unreadable, PFNs hidden without `CAP_SYS_ADMIN`, ...).
        reason: String,
        /// The I/O error reading `/proc/self/pagemap`, if any.
        #[source]
        source: Option<io::Error>,
    },

    /// A `read_at` / `write_at` reaches outside the region.
    #[error("access of {len} bytes at offset {offset} is outside the region of {region_len} bytes")]
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Length of the region.
        region_len: usize,
    },
}

impl RegionError {
    /// Whether this error means "the hugepage allocation did not work out" — the cases after
    /// which a `page_size: None` region falls back to 4 KiB pages.
    pub(crate) fn is_allocation_failure(&self) -> bool {
        matches!(
            self,
            RegionError::MemfdCreate { .. }
                | RegionError::HugetlbfsFile { .. }
                | RegionError::Truncate { .. }
                | RegionError::Mmap { .. }
                | RegionError::NotEnoughHugepages { .. }
        )
    }

    /// Whether this is a kernel "out of hugepages" failure of `mmap` (hugetlb reserves the
    /// pages of a `MAP_SHARED` mapping at `mmap` time and fails it with `ENOMEM`; a size-limited
    /// hugetlbfs mount may answer `ENOSPC`).
    pub(crate) fn is_hugepage_shortage(&self) -> bool {
        matches!(
            self,
            RegionError::Mmap {
                source: Errno::ENOMEM | Errno::ENOSPC,
                ..
            }
        )
    }
}

/// The pool size to suggest: enough for `wanted` on top of what is in use now.
fn suggested_pool(total: usize, wanted: usize, free: usize) -> usize {
    total.saturating_add(wanted.saturating_sub(free))
}
