//! Hugepage memory regions.
//!
//! A [`Region`] is a `MAP_SHARED` mapping of a file descriptor — a `memfd` (with
//! `MFD_HUGETLB` for hugepages) or an unlinked file in a hugetlbfs mount — so that the fd and an
//! offset can be passed to another process (`SCM_RIGHTS`, as a vhost-user frontend does with
//! guest memory) which maps the same pages with [`Region::from_fd`].
//!
//! ```no_run
//! use rvhost_hugepages::region::{PageSize, Region, RegionConfig};
//!
//! // 2 MiB hugepages if the pool has enough free, else 4 KiB pages (with one warning).
//! let region = Region::new(&RegionConfig::new(64 << 20).with_name("mbufs"))?;
//! region.write_at(0, b"hello")?;
//! let iova = region.va_to_iova(region.as_ptr() as usize);
//! # Ok::<(), rvhost_hugepages::region::RegionError>(())
//! ```
//!
//! # Hugepage exhaustion
//!
//! Hugetlb reserves the pages of a `MAP_SHARED` mapping when it is created, so a pool that
//! is too small makes `mmap` fail with `ENOMEM` (reported as
//! [`RegionError::NotEnoughHugepages`]) instead of a `SIGBUS` on first touch. (Not so with
//! `MAP_NORESERVE`, which this module never uses, nor with a hugetlb cgroup limit charged at
//! fault time.)
//!
//! # Concurrency
//!
//! The memory is shared with other processes that may write it at any time, so this module
//! never creates `&[u8]` / `&mut [u8]` over it: callers get raw pointers ([`Region::as_ptr`])
//! or copy with [`Region::read_at`] / [`Region::write_at`], and coordinate access among
//! themselves (rings, ownership hand-off, ...).

mod config;
mod error;
mod pagemap;
mod status;
mod sys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::stat::fstat;
use nix::sys::statfs::{HUGETLBFS_MAGIC, fstatfs};
use nix::unistd::ftruncate;

pub use config::{Backing, IovaMode, MapOptions, PageSize, RegionConfig};
pub use error::RegionError;
pub use status::{HugepageStatus, hugepage_status};

use status::{Plan, pages_for, plan, warn_fallback_once};
use sys::{Mapping, hugetlbfs_file, hugetlbfs_page_size, memfd};

/// Result alias of this module.
pub type Result<T, E = RegionError> = std::result::Result<T, E>;

/// A shared, fd-backed memory mapping (see the [module docs](self)).
pub struct Region {
    map: Mapping,
    /// Offset of the region's first byte within `map` (non-zero only for `from_fd` with an
    /// offset that is not page aligned).
    start: usize,
    len: usize,
    page_size: PageSize,
    fd: OwnedFd,
    mmap_offset: u64,
    iova_mode: IovaMode,
    /// In `Pa` mode, the physical address of each page of `map`.
    page_iovas: Box<[u64]>,
    locked: bool,
}

// `Region` is `Send` and `Sync` because `MmapRaw` is: it owns a plain mapping, tied to no
// thread, and hands out raw pointers only. All methods taking `&self` either read immutable
// fields or copy bytes with raw pointers (never references), so sharing `&Region` between
// threads is no less sound than sharing the memory with another process; callers coordinate
// who writes which bytes when.
// (`region_is_send_and_sync` in the tests checks that it stays so.)

impl Region {
    /// Create a region as `config` says (see [`RegionConfig`]).
    ///
    /// With `page_size: None` and no (or not enough) free 2 MiB hugepages this falls back to
    /// 4 KiB pages and logs one warning per process; with `page_size: Some(huge)` it returns
    /// [`RegionError::NotEnoughHugepages`].
    pub fn new(config: &RegionConfig) -> Result<Region> {
        Self::new_with_status(config, &hugepage_status)
    }

    /// [`Region::new`] with the hugepage pool status supplied (tests use fake pools).
    pub(crate) fn new_with_status(
        config: &RegionConfig,
        status: &dyn Fn(PageSize) -> Option<HugepageStatus>,
    ) -> Result<Region> {
        if config.size == 0 {
            return Err(RegionError::ZeroSize);
        }
        if config.iova_mode == Some(IovaMode::Pa) && !config.prefault && !config.lock {
            return Err(RegionError::PhysAddrUnavailable {
                reason: "IovaMode::Pa needs a populated region (prefault or lock)".into(),
                source: None,
            });
        }
        let mount = match &config.backing {
            Backing::Memfd => None,
            Backing::Hugetlbfs { dir } => {
                let mounted = hugetlbfs_page_size(dir)?;
                if let Some(wanted) = config.page_size
                    && wanted != mounted
                {
                    return Err(RegionError::HugetlbfsPageSizeMismatch {
                        dir: dir.clone(),
                        mounted,
                        wanted,
                    });
                }
                Some((dir.as_path(), mounted))
            }
        };
        let preferred = mount.map_or(PageSize::Huge2M, |(_, ps)| ps);
        let pool = config.page_size.unwrap_or(preferred);
        match plan(config.page_size, preferred, config.size, status(pool))? {
            Plan::Small { warning } => {
                if let Some(w) = warning {
                    warn_fallback_once(&w);
                }
                Self::create(config, PageSize::Small, None)
            }
            Plan::Huge {
                page_size,
                fallback,
            } => match Self::create(config, page_size, mount.map(|(dir, _)| dir)) {
                Ok(region) => Ok(region),
                Err(e) if e.is_allocation_failure() => {
                    let wanted = pages_for(config.size, page_size);
                    let now = status(page_size);
                    let (free, total) = now.map_or((0, 0), |s| (s.available(), s.total));
                    if fallback {
                        let cause = match std::error::Error::source(&e) {
                            Some(source) => format!("{e}: {source}"),
                            None => e.to_string(),
                        };
                        warn_fallback_once(&status::fallback_warning(
                            page_size,
                            wanted,
                            free,
                            total,
                            Some(&cause),
                        ));
                        Self::create(config, PageSize::Small, None)
                    } else if e.is_hugepage_shortage() {
                        Err(RegionError::NotEnoughHugepages {
                            wanted,
                            free,
                            total,
                            page_size,
                        })
                    } else {
                        Err(e)
                    }
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Create the fd, size it, map it, and set it up. `hugetlbfs` is the mount to create the
    /// file in (else a memfd is used).
    fn create(
        config: &RegionConfig,
        page_size: PageSize,
        hugetlbfs: Option<&Path>,
    ) -> Result<Region> {
        let len = page_size
            .round_up(config.size)
            .filter(|&l| libc::off_t::try_from(l).is_ok())
            .ok_or(RegionError::SizeOverflow {
                size: config.size,
                page_size,
            })?;
        let fd = match hugetlbfs {
            Some(dir) => hugetlbfs_file(dir, &config.name)?,
            None => memfd(&config.name, page_size)?,
        };
        ftruncate(&fd, len as libc::off_t)
            .map_err(|source| RegionError::Truncate { size: len, source })?;
        if hugetlbfs.is_none() {
            // Keep the peer (or us) from shrinking the file under a mapping, which would
            // SIGBUS whoever touches the lost pages. Best effort: hugetlb memfds support seals
            // since Linux 4.16.
            if let Err(e) = fcntl(
                &fd,
                FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
            ) {
                log::debug!("rvhost: sealing memfd {:?} failed: {e}", config.name);
            }
        }
        let map = Mapping::new(fd.as_fd(), len, 0, config.prefault)?;
        let options = MapOptions {
            prefault: config.prefault,
            lock: config.lock,
            iova_mode: config.iova_mode,
        };
        let region = Self::finish(map, fd, 0, len, 0, page_size, &options)?;
        log::debug!(
            "rvhost: region {:?}: {} bytes of {} pages at {:p}, iova {:?}",
            config.name,
            region.len,
            region.page_size,
            region.as_ptr(),
            region.iova_mode
        );
        Ok(region)
    }

    /// Map `len` bytes at `offset` of a file descriptor received from another process (e.g. a
    /// vhost-user memory region), without prefaulting, in [`IovaMode::Va`].
    ///
    /// Checks with `fstat` that `offset + len` lies inside the file (a mapping past the end of
    /// a memfd would `SIGBUS` on first touch) and that nothing overflows; `offset` need not be
    /// page aligned. The page size is that of the file (hugetlbfs or not).
    pub fn from_fd(fd: OwnedFd, offset: u64, len: usize) -> Result<Region> {
        Self::from_fd_with(fd, offset, len, &MapOptions::default())
    }

    /// [`Region::from_fd`] with options (prefault, mlock, IOVA mode).
    pub fn from_fd_with(
        fd: OwnedFd,
        offset: u64,
        len: usize,
        options: &MapOptions,
    ) -> Result<Region> {
        if len == 0 {
            return Err(RegionError::ZeroSize);
        }
        let end = u64::try_from(len)
            .ok()
            .and_then(|l| offset.checked_add(l))
            .filter(|&e| i64::try_from(e).is_ok())
            .ok_or(RegionError::Overflow { offset, len })?;
        let st = fstat(&fd).map_err(|source| RegionError::Stat { source })?;
        let file_size = u64::try_from(st.st_size).unwrap_or(0);
        if end > file_size {
            return Err(RegionError::OutOfFile {
                offset,
                len,
                file_size,
            });
        }
        let fs = fstatfs(&fd).map_err(|source| RegionError::Stat { source })?;
        let page_size = if fs.filesystem_type() == HUGETLBFS_MAGIC {
            let bytes = u64::try_from(fs.block_size()).unwrap_or(0);
            PageSize::from_bytes(bytes).ok_or(RegionError::UnsupportedPageSize { bytes })?
        } else {
            PageSize::Small
        };
        if options.iova_mode == Some(IovaMode::Pa) && !options.prefault && !options.lock {
            return Err(RegionError::PhysAddrUnavailable {
                reason: "IovaMode::Pa needs a populated mapping (prefault or lock)".into(),
                source: None,
            });
        }
        let ps = page_size.bytes() as u64;
        let map_offset = offset - offset % ps;
        // Both are < page size, and `len` + page size cannot overflow once `end` fit in i64.
        let start = (offset - map_offset) as usize;
        let map_len = page_size
            .round_up(start + len)
            .ok_or(RegionError::Overflow { offset, len })?;
        let map = Mapping::new(fd.as_fd(), map_len, map_offset, options.prefault)?;
        Self::finish(map, fd, start, len, offset, page_size, options)
    }

    /// Prefault, lock, and work out IOVAs of a fresh mapping.
    fn finish(
        map: Mapping,
        fd: OwnedFd,
        start: usize,
        len: usize,
        mmap_offset: u64,
        page_size: PageSize,
        options: &MapOptions,
    ) -> Result<Region> {
        if options.prefault {
            map.touch(page_size.bytes());
        }
        if options.lock {
            // mlock faults every page in as well.
            map.lock()?;
        }
        let populated = options.prefault || options.lock;
        let (iova_mode, page_iovas) = match options.iova_mode {
            Some(IovaMode::Va) => (IovaMode::Va, Box::default()),
            None if !populated => (IovaMode::Va, Box::default()),
            required => {
                let pages = map.len() / page_size.bytes();
                match pagemap::page_phys_addrs(map.ptr() as usize, pages, page_size.bytes()) {
                    Ok(pas) => (IovaMode::Pa, pas.into_boxed_slice()),
                    Err(e) if required == Some(IovaMode::Pa) => {
                        return Err(RegionError::PhysAddrUnavailable {
                            reason: e.describe(),
                            source: e.into_io(),
                        });
                    }
                    Err(e) => {
                        log::debug!("rvhost: using IOVA = VA: {}", e.describe());
                        (IovaMode::Va, Box::default())
                    }
                }
            }
        };
        Ok(Region {
            map,
            start,
            len,
            page_size,
            fd,
            mmap_offset,
            iova_mode,
            page_iovas,
            locked: options.lock,
        })
    }

    /// First byte of the region. Valid for [`len`](Self::len) bytes while `self` lives; other
    /// processes may access the same memory concurrently.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: `start` < page size <= mapping length, so the result stays inside the mapping.
        unsafe { self.map.ptr().add(self.start) }
    }

    /// Length in bytes (for [`Region::new`], the configured size rounded up to the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The page size backing the region.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// Whether the region is backed by hugepages.
    pub fn is_hugepage(&self) -> bool {
        self.page_size.is_huge()
    }

    /// The file descriptor to send to another process (with [`mmap_offset`](Self::mmap_offset)
    /// and [`len`](Self::len)).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Offset of the region's first byte within [`fd`](Self::fd): 0 for [`Region::new`], the
    /// given offset for [`Region::from_fd`].
    pub fn mmap_offset(&self) -> u64 {
        self.mmap_offset
    }

    /// How [`va_to_iova`](Self::va_to_iova) translates.
    pub fn iova_mode(&self) -> IovaMode {
        self.iova_mode
    }

    /// Whether the region was `mlock`ed.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Whether `va` is one of the region's bytes.
    pub fn contains(&self, va: usize) -> bool {
        va.wrapping_sub(self.as_ptr() as usize) < self.len
    }

    /// The IOVA of virtual address `va`, or `None` if `va` is outside the region.
    ///
    /// In [`IovaMode::Pa`] this is a table lookup (physical addresses were read once at
    /// creation); the result is contiguous only within one page. In [`IovaMode::Va`] it is `va`.
    #[inline]
    pub fn va_to_iova(&self, va: usize) -> Option<u64> {
        if !self.contains(va) {
            return None;
        }
        match self.iova_mode {
            IovaMode::Va => Some(va as u64),
            IovaMode::Pa => {
                let rel = va - self.map.ptr() as usize;
                let ps = self.page_size.bytes();
                let pa = self.page_iovas.get(rel / ps)?;
                Some(pa + (rel % ps) as u64)
            }
        }
    }

    /// Pointer to byte `offset` of the region, or `None` if `offset >= len`.
    pub fn ptr_at(&self, offset: usize) -> Option<*mut u8> {
        // SAFETY: `offset < len` keeps the pointer inside the mapping.
        (offset < self.len).then(|| unsafe { self.as_ptr().add(offset) })
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(RegionError::OutOfBounds {
                offset,
                len,
                region_len: self.len,
            }),
        }
    }

    /// Copy `data` into the region at `offset` (bounds checked).
    ///
    /// This is a plain memory copy: it is not atomic with respect to other processes or
    /// threads accessing the same bytes.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: the destination range was bounds checked against the live mapping, which is
        // writable; `data` is a Rust slice and cannot overlap the mapping since we never hand
        // out references into it. No reference to the shared memory is formed.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len());
        }
        Ok(())
    }

    /// Copy bytes at `offset` of the region into `buf` (bounds checked). Not atomic with respect
    /// to concurrent writers.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        // SAFETY: the source range was bounds checked against the live, readable mapping; `buf`
        // is an exclusive Rust slice outside it. No reference to the shared memory is formed.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("ptr", &self.as_ptr())
            .field("len", &self.len)
            .field("page_size", &self.page_size)
            .field("fd", &self.fd)
            .field("mmap_offset", &self.mmap_offset)
            .field("iova_mode", &self.iova_mode)
            .field("locked", &self.locked)
            .finish()
    }
}
