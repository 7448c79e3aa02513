//! Hugepage pool status from sysfs, and the hugepage-or-fallback decision.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{PageSize, RegionError};

/// Where the kernel publishes the per-size hugepage pools.
pub(crate) const SYSFS_HUGEPAGES: &str = "/sys/kernel/mm/hugepages";

/// What the kernel's pool of one hugepage size looks like right now.
///
/// Read from `/sys/kernel/mm/hugepages/hugepages-<size>kB/`. The numbers are system-wide (not
/// per NUMA node, not per cgroup) and can change at any moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugepageStatus {
    /// The hugepage size this pool serves.
    pub page_size: PageSize,
    /// Pages in the pool (`nr_hugepages`).
    pub total: usize,
    /// Pages not faulted in by anyone (`free_hugepages`). This includes pages that existing
    /// mappings have reserved but not touched yet; see [`available`](Self::available).
    pub free: usize,
    /// Pages reserved by existing mappings and not yet faulted in (`resv_hugepages`).
    pub reserved: usize,
    /// Pages allocated beyond `total` through overcommit (`surplus_hugepages`).
    pub surplus: usize,
    /// How many surplus pages may be allocated (`nr_overcommit_hugepages`).
    pub overcommit: usize,
}

impl HugepageStatus {
    /// Pages a new mapping can reserve now: free pages not reserved by someone else, plus the
    /// unused overcommit headroom. This mirrors the check hugetlb does at `mmap` time.
    pub fn available(&self) -> usize {
        self.free
            .saturating_sub(self.reserved)
            .saturating_add(self.overcommit.saturating_sub(self.surplus))
    }
}

/// The kernel's pool of `page_size` hugepages, or `None` if there is none (no such directory
/// in sysfs: no hugetlbfs support, or a size the CPU does not have) or for
/// [`PageSize::Small`].
///
/// Reads `/sys/kernel/mm/hugepages/hugepages-2048kB/{nr_hugepages,free_hugepages,...}` (or
/// `hugepages-1048576kB`).
pub fn hugepage_status(page_size: PageSize) -> Option<HugepageStatus> {
    hugepage_status_in(Path::new(SYSFS_HUGEPAGES), page_size)
}

/// [`hugepage_status`] with the sysfs directory as a parameter (for tests).
pub(crate) fn hugepage_status_in(root: &Path, page_size: PageSize) -> Option<HugepageStatus> {
    let dir = root.join(page_size.sysfs_dir()?);
    let read = |file: &str| -> Option<usize> {
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(HugepageStatus {
        page_size,
        total: read("nr_hugepages")?,
        free: read("free_hugepages")?,
        // Older kernels may lack these; treat a missing file as 0.
        reserved: read("resv_hugepages").unwrap_or(0),
        surplus: read("surplus_hugepages").unwrap_or(0),
        overcommit: read("nr_overcommit_hugepages").unwrap_or(0),
    })
}

/// Number of `page_size` pages needed to hold `size` bytes (rounded up).
pub(crate) fn pages_for(size: usize, page_size: PageSize) -> usize {
    size.div_ceil(page_size.bytes())
}

/// What [`Region::new`](super::Region::new) will try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Try hugepages of this size; on an allocation failure fall back to 4 KiB pages if
    /// `fallback` (page size was not required), else fail.
    Huge { page_size: PageSize, fallback: bool },
    /// Use 4 KiB pages; `warning` is the once-per-process warning to log if this is a fallback.
    Small { warning: Option<String> },
}

/// Decide between hugepages and 4 KiB pages for a region of `size` bytes.
///
/// - `required = Some(Small)`: 4 KiB pages, no warning.
/// - `required = Some(huge)`: hugepages of that size, or [`RegionError::NotEnoughHugepages`] /
///   [`RegionError::HugepagesUnsupported`] if `status` (the pool of that size) cannot supply them.
/// - `required = None`: `preferred` hugepages if `status` says enough can be reserved, else 4 KiB
///   pages with a warning telling how to reserve hugepages.
pub(crate) fn plan(
    required: Option<PageSize>,
    preferred: PageSize,
    size: usize,
    status: Option<HugepageStatus>,
) -> Result<Plan, RegionError> {
    match required {
        Some(PageSize::Small) => Ok(Plan::Small { warning: None }),
        Some(page_size) => {
            let Some(status) = status else {
                return Err(RegionError::HugepagesUnsupported { page_size });
            };
            let wanted = pages_for(size, page_size);
            if status.available() < wanted {
                return Err(RegionError::NotEnoughHugepages {
                    wanted,
                    free: status.available(),
                    total: status.total,
                    page_size,
                });
            }
            Ok(Plan::Huge {
                page_size,
                fallback: false,
            })
        }
        None => {
            if !preferred.is_huge() {
                return Ok(Plan::Small { warning: None });
            }
            let wanted = pages_for(size, preferred);
            match status {
                None => Ok(Plan::Small {
                    warning: Some(format!(
                        "rvhost: this kernel has no {preferred} hugepage pool ({SYSFS_HUGEPAGES}/{} \
                         is missing); using 4 KiB pages",
                        preferred.sysfs_dir().unwrap_or("?")
                    )),
                }),
                Some(status) if status.available() < wanted => Ok(Plan::Small {
                    warning: Some(fallback_warning(
                        preferred,
                        wanted,
                        status.available(),
                        status.total,
                        None,
                    )),
                }),
                Some(_) => Ok(Plan::Huge {
                    page_size: preferred,
                    fallback: true,
                }),
            }
        }
    }
}

/// The text of the fallback warning. `cause` is the allocation error when the pool looked big
/// enough but the kernel refused anyway.
pub(crate) fn fallback_warning(
    page_size: PageSize,
    wanted: usize,
    free: usize,
    total: usize,
    cause: Option<&str>,
) -> String {
    let suggest = total.saturating_add(wanted.saturating_sub(free)).max(1024);
    // The per-size sysfs file is right whatever the default hugepage size is (the classic
    // /proc/sys/vm/nr_hugepages only sets the pool of the default size).
    let target = format!(
        "{SYSFS_HUGEPAGES}/{}/nr_hugepages",
        page_size.sysfs_dir().unwrap_or("?")
    );
    let what = match cause {
        None => format!("no free {page_size} hugepages (wanted {wanted}, free {free})"),
        Some(cause) => {
            format!("could not get {page_size} hugepages (wanted {wanted}, free {free}: {cause})")
        }
    };
    format!("rvhost: {what}; using 4 KiB pages. Reserve some as root: echo {suggest} > {target}")
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Log `message` as a warning the first time a region falls back to 4 KiB pages in this
/// process; later fallbacks only log at debug level. Returns whether the warning was logged.
pub(crate) fn warn_fallback_once(message: &str) -> bool {
    if FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
        log::debug!("{message}");
        false
    } else {
        log::warn!("{message}");
        true
    }
}
