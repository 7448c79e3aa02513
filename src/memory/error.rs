//! Errors of the guest-memory module.
//!
//! Two types: [`MemoryError`] for the control plane (mapping regions, building tables) and
//! [`AccessError`] for the data plane (bounds, alignment and ordering checks of a
//! [`GuestSlice`](super::GuestSlice) access). `AccessError` is small and `Copy` so hot-path
//! `Result`s stay in registers; it converts into `MemoryError::Access` with `?`.

use std::fmt;
use std::sync::atomic::Ordering;

use nix::errno::Errno;

use super::region::RegionDesc;

/// Which field of a [`RegionDesc`] an overflow check failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrField {
    /// `guest_phys_addr + memory_size`.
    GuestPhys,
    /// `userspace_addr + memory_size`.
    Userspace,
    /// `mmap_offset + memory_size`.
    MmapOffset,
}

impl fmt::Display for AddrField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrField::GuestPhys => "guest_phys_addr",
            AddrField::Userspace => "userspace_addr",
            AddrField::MmapOffset => "mmap_offset",
        })
    }
}

/// Everything that can go wrong mapping a region or building a [`GuestMemory`](super::GuestMemory).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The region has `memory_size == 0`.
    #[error("memory region has size 0")]
    ZeroSize,
    /// `field + memory_size` does not fit in a u64.
    #[error("region {field} {start:#x} + memory_size {size:#x} overflows u64")]
    AddressOverflow {
        /// The field whose end overflowed.
        field: AddrField,
        /// The field's value.
        start: u64,
        /// `memory_size`.
        size: u64,
    },
    /// `memory_size` is above [`MapOptions::max_region_bytes`](super::MapOptions::max_region_bytes).
    #[error("region size {size:#x} exceeds the per-region limit {limit:#x}")]
    RegionTooLarge {
        /// `memory_size`.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// `fstat` on the region's fd failed.
    #[error("fstat on the region fd failed")]
    Fstat(#[source] Errno),
    /// The fd is not a regular file (memfd, tmpfs, hugetlbfs files are), so its size cannot be
    /// checked and a mapping of it could fault.
    #[error("region fd is not a regular file (st_mode {mode:#o}); its size cannot be checked")]
    NotRegularFile {
        /// `st_mode` from fstat.
        mode: u32,
    },
    /// `[mmap_offset, mmap_offset + memory_size)` extends past the end of the fd: touching that
    /// part of a mapping would raise SIGBUS.
    #[error(
        "region [mmap_offset {offset:#x}, +{size:#x}) lies beyond the end of its fd ({fd_size:#x} bytes)"
    )]
    BeyondFdSize {
        /// `mmap_offset`.
        offset: u64,
        /// `memory_size`.
        size: u64,
        /// `st_size` of the fd.
        fd_size: u64,
    },
    /// [`MapOptions::require_shrink_seal`](super::MapOptions::require_shrink_seal) is set and the
    /// fd does not carry `F_SEAL_SHRINK`.
    #[error("region fd is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotShrinkSealed,
    /// The page-aligned mapping does not fit in `usize`/`off_t` on this platform.
    #[error("mapping of {len:#x} bytes at file offset {offset:#x} does not fit this platform")]
    MappingTooLarge {
        /// File offset of the mapping (page aligned).
        offset: u64,
        /// Length of the mapping before rounding.
        len: u64,
    },
    /// `mmap` failed.
    #[error("mmap of {len:#x} bytes at file offset {offset:#x} failed")]
    Mmap {
        /// File offset of the mapping.
        offset: u64,
        /// Length of the mapping.
        len: u64,
        /// errno of mmap.
        #[source]
        errno: Errno,
    },
    /// `mlock` failed (RLIMIT_MEMLOCK without CAP_IPC_LOCK, or out of memory).
    #[error("mlock of {len:#x} bytes failed; {}", memlock_hint(*limit))]
    Mlock {
        /// Bytes to lock.
        len: u64,
        /// The soft `RLIMIT_MEMLOCK` when it failed (`None`: unlimited or unknown).
        limit: Option<u64>,
        /// errno of mlock.
        #[source]
        errno: Errno,
    },
    /// More regions than [`MemoryLimits::max_regions`](super::MemoryLimits::max_regions).
    #[error("too many memory regions: {count} > {max}")]
    TooManyRegions {
        /// Regions the table would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two regions overlap in guest-physical space.
    #[error("guest-physical ranges overlap: {a} and {b}")]
    GpaOverlap {
        /// One region.
        a: RegionDesc,
        /// The other.
        b: RegionDesc,
    },
    /// Two regions overlap in the frontend's virtual address space.
    #[error("frontend-VA ranges overlap: {a} and {b}")]
    FvaOverlap {
        /// One region.
        a: RegionDesc,
        /// The other.
        b: RegionDesc,
    },
    /// The sum of `memory_size` is above
    /// [`MemoryLimits::max_total_bytes`](super::MemoryLimits::max_total_bytes) (saturating sum).
    #[error("total guest memory {total:#x} exceeds the limit {limit:#x}")]
    TotalTooLarge {
        /// Sum of region sizes (saturated at u64::MAX).
        total: u64,
        /// The limit.
        limit: u64,
    },
    /// REM_MEM_REG named a region (by gpa, uva and size) that is not in the table.
    #[error("no region matches {0} for removal")]
    NotFound(RegionDesc),
    /// ADD_MEM_REG repeated a region's addresses with a different backing file.
    #[error("{0} is already in the table, backed by another file (device and inode differ)")]
    OtherFile(RegionDesc),
    /// A region was added again more times than a `u32` counts.
    #[error("{0} added too many times")]
    TooManyReferences(RegionDesc),
    /// A bounds/alignment/ordering check of a guest access failed.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// A refused access through a [`GuestSlice`](super::GuestSlice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// `[offset, offset + len)` is not inside the slice.
    #[error("access of {len} bytes at offset {offset} is outside a guest slice of {size} bytes")]
    OutOfBounds {
        /// Requested offset.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Length of the slice.
        size: usize,
    },
    /// An atomic access at an address that is not naturally aligned.
    #[error("guest access at offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// Requested offset in the slice.
        offset: usize,
        /// Required alignment.
        align: usize,
    },
    /// An ordering the atomic operation does not accept (`Release`/`AcqRel` for a load,
    /// `Acquire`/`AcqRel` for a store).
    #[error("memory ordering {0:?} is not valid for this atomic operation")]
    InvalidOrdering(Ordering),
}

/// What to do about a failed `mlock`: guest memory of devices with `ASYNC_COPY` is locked so
/// that a copy engine never meets a page that moved.
fn memlock_hint(limit: Option<u64>) -> String {
    let limit = match limit {
        Some(b) => format!("RLIMIT_MEMLOCK is {b} bytes"),
        None => "RLIMIT_MEMLOCK is unlimited".to_owned(),
    };
    format!(
        "guest memory of async-copy devices is locked and {limit}: raise it to at least the \
         guest's memory (`ulimit -l`, systemd LimitMEMLOCK=, docker --ulimit memlock=) or \
         grant CAP_IPC_LOCK"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_mlock_says_the_limit_and_the_remedy() {
        let e = MemoryError::Mlock {
            len: 0x4000_0000,
            limit: Some(65536),
            errno: Errno::ENOMEM,
        };
        let text = e.to_string();
        assert!(
            text.starts_with("mlock of 0x40000000 bytes failed"),
            "{text}"
        );
        assert!(text.contains("RLIMIT_MEMLOCK is 65536 bytes"), "{text}");
        assert!(text.contains("CAP_IPC_LOCK"), "{text}");
        assert!(memlock_hint(None).contains("unlimited"));
    }
}
