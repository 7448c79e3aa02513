//! Page sizes, IOVA modes and the configuration of a [`Region`](super::Region).

use std::fmt;
use std::path::PathBuf;

use nix::sys::memfd::MFdFlags;

/// A page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// Ordinary 4 KiB pages (shmem).
    Small,
    /// 2 MiB hugepages.
    Huge2M,
    /// 1 GiB hugepages.
    Huge1G,
}

impl PageSize {
    /// Size of one page in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            PageSize::Small => 4 << 10,
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
        }
    }

    /// Whether this is a hugepage size.
    pub const fn is_huge(self) -> bool {
        !matches!(self, PageSize::Small)
    }

    /// The page size of `bytes` bytes, if it is one of the modelled sizes.
    pub const fn from_bytes(bytes: u64) -> Option<PageSize> {
        match bytes {
            0x1000 => Some(PageSize::Small),
            0x20_0000 => Some(PageSize::Huge2M),
            0x4000_0000 => Some(PageSize::Huge1G),
            _ => None,
        }
    }

    /// `size` rounded up to a multiple of this page size, or `None` on overflow.
    pub const fn round_up(self, size: usize) -> Option<usize> {
        let mask = self.bytes() - 1;
        match size.checked_add(mask) {
            Some(s) => Some(s & !mask),
            None => None,
        }
    }

    /// Name of the pool directory under `/sys/kernel/mm/hugepages/` (`None` for 4 KiB).
    pub const fn sysfs_dir(self) -> Option<&'static str> {
        match self {
            PageSize::Small => None,
            PageSize::Huge2M => Some("hugepages-2048kB"),
            PageSize::Huge1G => Some("hugepages-1048576kB"),
        }
    }

    pub(crate) fn memfd_flags(self) -> MFdFlags {
        match self {
            PageSize::Small => MFdFlags::empty(),
            PageSize::Huge2M => MFdFlags::MFD_HUGETLB | MFdFlags::MFD_HUGE_2MB,
            PageSize::Huge1G => MFdFlags::MFD_HUGETLB | MFdFlags::MFD_HUGE_1GB,
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSize::Small => "4 KiB",
            PageSize::Huge2M => "2 MiB",
            PageSize::Huge1G => "1 GiB",
        })
    }
}

/// How the addresses a device (DMA engine) must use relate to virtual addresses.
///
/// [`Region::iova_mode`](super::Region::iova_mode) tells which one a region uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IovaMode {
    /// IOVA = physical address, read from `/proc/self/pagemap` (needs `CAP_SYS_ADMIN`: root
    /// gets non-zero PFNs) once, when the region is created, and cached per page.
    ///
    /// The kernel does not move hugetlb pages in normal operation, but it may migrate 4 KiB
    /// shmem pages (compaction, NUMA balancing), even `mlock`ed ones, which makes cached
    /// physical addresses stale: give real devices physical addresses of hugepage regions only.
    Pa,
    /// IOVA = virtual address (an IOMMU maps VAs, or the "device" is the CPU).
    Va,
}

/// Where a region's memory comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Backing {
    /// `memfd_create` (with `MFD_HUGETLB` for hugepages). Needs no mount.
    #[default]
    Memfd,
    /// A file created and immediately unlinked in this hugetlbfs mount (e.g. `/dev/hugepages`).
    /// The mount's page size (`pagesize=` option) is the region's page size. With
    /// `page_size: None` and too few free pages the region falls back to a 4 KiB memfd; a
    /// directory that is not a hugetlbfs mount is always an error.
    Hugetlbfs {
        /// The hugetlbfs mount point.
        dir: PathBuf,
    },
}

/// How to create a [`Region`](super::Region). Plain fields plus `with_*` builder helpers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionConfig {
    /// Size in bytes; rounded up to the page size. Must be non-zero.
    pub size: usize,
    /// `Some(size)`: exactly that page size or an error. `None`: 2 MiB hugepages (or the page
    /// size of a [`Backing::Hugetlbfs`] mount) if the pool has enough free, else 4 KiB pages
    /// from a memfd, with one warning per process telling how to reserve hugepages.
    pub page_size: Option<PageSize>,
    /// Memfd (default) or a hugetlbfs mount.
    pub backing: Backing,
    /// Fault every page in at creation (`MAP_POPULATE` plus a read of each page). Needed for
    /// [`IovaMode::Pa`] (unless `lock` is set, which faults pages in too). Default `true`.
    pub prefault: bool,
    /// `mlock` the region. Default `false`.
    pub lock: bool,
    /// `None` (default): [`IovaMode::Pa`] if the region is prefaulted (or locked) and physical
    /// addresses are readable, else [`IovaMode::Va`]. `Some(mode)`: that mode or an error.
    pub iova_mode: Option<IovaMode>,
    /// Name of the memfd / hugetlbfs file (shows in `/proc/<pid>/maps`) and in logs.
    pub name: String,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            size: 0,
            page_size: None,
            backing: Backing::Memfd,
            prefault: true,
            lock: false,
            iova_mode: None,
            name: "rvhost".to_string(),
        }
    }
}

impl RegionConfig {
    /// The default configuration for `size` bytes.
    pub fn new(size: usize) -> Self {
        RegionConfig {
            size,
            ..Self::default()
        }
    }

    /// Require exactly `page_size` pages.
    pub fn with_page_size(mut self, page_size: PageSize) -> Self {
        self.page_size = Some(page_size);
        self
    }

    /// Set the backing.
    pub fn with_backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }

    /// Set whether pages are faulted in at creation.
    pub fn with_prefault(mut self, prefault: bool) -> Self {
        self.prefault = prefault;
        self
    }

    /// Set whether the region is `mlock`ed.
    pub fn with_lock(mut self, lock: bool) -> Self {
        self.lock = lock;
        self
    }

    /// Require an IOVA mode.
    pub fn with_iova_mode(mut self, mode: IovaMode) -> Self {
        self.iova_mode = Some(mode);
        self
    }

    /// Set the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// How [`Region::from_fd_with`](super::Region::from_fd_with) maps a received fd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapOptions {
    /// Fault every page in (`MAP_POPULATE` plus a read of each page; contents are not
    /// modified). Needed for [`IovaMode::Pa`] unless `lock` is set.
    pub prefault: bool,
    /// `mlock` the mapping.
    pub lock: bool,
    /// As [`RegionConfig::iova_mode`].
    pub iova_mode: Option<IovaMode>,
}
