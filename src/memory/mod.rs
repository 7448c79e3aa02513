//! Guest memory of a vhost-user frontend: mapping the regions it shares, and translating guest
//! addresses to host memory.
//!
//! This is the one module of the crate that owns raw guest memory; everything above it
//! (virtqueues, virtio-net) stays in safe Rust by going through it.
//!
//! # Address spaces
//!
//! - [`Gpa`]: guest-physical addresses. Descriptor addresses in the rings are GPAs.
//! - [`FrontendVa`]: virtual addresses in the frontend (QEMU) process, the `userspace_addr` of a
//!   region. Vring addresses in SET_VRING_ADDR are frontend VAs, unless
//!   `VIRTIO_F_IOMMU_PLATFORM` was negotiated (then they are IOVAs, resolved through the IOTLB,
//!   which is not this module's business).
//! - Host memory is only reachable as a [`GuestSlice`] (bounds-checked pointer and length, tied
//!   to the lifetime of the table or region it came from) or, for DMA engines, its raw
//!   [`as_ptr`](GuestSlice::as_ptr).
//!
//! # Pieces
//!
//! - [`GuestRegion::map`] validates one [`RegionDesc`] against its fd and maps it (see the
//!   [`region`] module docs for alignment, fd ownership and SIGBUS caveats).
//! - [`GuestMemory`] is an immutable, cheaply clonable (`Arc`) table of regions, built for
//!   SET_MEM_TABLE and re-derived for ADD_MEM_REG/REM_MEM_REG; it translates
//!   ([`gpa_to_host`](GuestMemory::gpa_to_host) and friends, with a caller-owned
//!   [`TranslationCache`]).
//! - [`DirtyLog`] is the dirty log of live migration (SET_LOG_BASE), one bit per 4 KiB page of
//!   guest-physical memory, marked by the data path while `VHOST_F_LOG_ALL` is negotiated.
//! - [`GuestSlice`] reads and writes guest memory without ever forming Rust references to it
//!   (the guest writes concurrently); [`Pod`] marks types that may be copied in and out.
//!
//! # Concurrency model
//!
//! Guest memory is shared with another process, so its contents can change at any time. Bulk
//! copies treat it as data; structures are read with one volatile fetch into a local copy
//! ([`GuestSlice::read_obj`]), which callers validate and use (never re-read); ring indexes use
//! atomics. Within this process, the data plane must not access the same ring index both
//! atomically and non-atomically at the same time.

mod access;
mod dirty_log;
mod error;
pub mod region;
mod table;
pub mod uffd;

use std::fmt;

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};

pub(crate) use access::copy_bytes;
pub use access::{GuestSlice, Pod, demote_range};
pub use dirty_log::{DirtyLog, LOG_PAGE, log_bytes_for};
pub use error::{AccessError, AddrField, MemoryError};
pub use region::{GuestRegion, MapOptions, RegionDesc};
pub use table::{
    AddCheck, GpaChunks, GuestArea, GuestMemory, LINEAR_SCAN_MAX, Released, TranslationCache,
};

/// Regions one SET_MEM_TABLE message can carry (`VHOST_MEMORY_BASELINE_NREGIONS`).
pub const SET_MEM_TABLE_MAX_REGIONS: usize = 8;

/// Memory slots this backend offers for GET_MAX_MEM_SLOTS (with CONFIGURE_MEM_SLOTS), the
/// default of [`MemoryLimits::max_regions`]. 509 is the KVM slot limit QEMU caps the answer at.
pub const VHOST_USER_MAX_MEM_SLOTS: usize = 509;

/// Default cap on one region and on the total: 1 TiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 1 << 40;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + n`, or `None` on u64 overflow.
            pub const fn checked_add(self, n: u64) -> Option<Self> {
                match self.0.checked_add(n) {
                    Some(v) => Some($name(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A guest-physical address (descriptor addresses, `guest_phys_addr` of a region).
    Gpa
);
address_type!(
    /// A virtual address in the frontend process (`userspace_addr` of a region; vring addresses
    /// of SET_VRING_ADDR without IOMMU).
    FrontendVa
);

/// Limits a [`GuestMemory`] table enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Most regions in one table.
    pub max_regions: usize,
    /// Most bytes summed over all regions.
    pub max_total_bytes: u64,
}

impl Default for MemoryLimits {
    /// [`VHOST_USER_MAX_MEM_SLOTS`] regions, and the smaller of 1 TiB and the soft `RLIMIT_AS`.
    fn default() -> Self {
        let as_limit = soft_rlimit(Resource::RLIMIT_AS).unwrap_or(u64::MAX);
        MemoryLimits {
            max_regions: VHOST_USER_MAX_MEM_SLOTS,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES.min(as_limit),
        }
    }
}

/// The soft limit of `resource`, `None` when unlimited or unknown.
pub(crate) fn soft_rlimit(resource: Resource) -> Option<u64> {
    match getrlimit(resource) {
        Ok((soft, _)) if soft != RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Real memfds and /proc-based leak checks for the tests of this module.

    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use memmap2::{MmapOptions, MmapRaw};
    use nix::sys::memfd::{MFdFlags, memfd_create};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A memfd name unique in this process (and across concurrently running test binaries).
    pub fn unique_name(tag: &str) -> String {
        format!(
            "rvhost-gmem-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A memfd of `size` bytes (zero filled), sealable.
    pub fn memfd(name: &str, size: u64) -> OwnedFd {
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, size as i64).unwrap();
        fd
    }

    pub use crate::test_support::{fds_named, mapped_bytes_named};

    /// The frontend's own mapping of a whole memfd, to prove sharing.
    pub struct FrontendMap {
        map: MmapRaw,
    }

    impl FrontendMap {
        pub fn new(fd: &OwnedFd, len: usize) -> Self {
            Self::try_new(fd, len).unwrap()
        }

        pub fn try_new(fd: &OwnedFd, len: usize) -> std::io::Result<Self> {
            let map = MmapOptions::new().len(len).map_raw(fd)?;
            Ok(FrontendMap { map })
        }

        pub fn addr(&self) -> u64 {
            self.map.as_ptr() as u64
        }

        pub fn write(&self, off: usize, data: &[u8]) {
            assert!(off + data.len() <= self.map.len());
            // SAFETY: bounds asserted above; the mapping lives as long as self.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.map.as_mut_ptr().add(off),
                    data.len(),
                )
            };
        }

        pub fn read(&self, off: usize, n: usize) -> Vec<u8> {
            assert!(off + n <= self.map.len());
            let mut v = vec![0u8; n];
            // SAFETY: bounds asserted above; the mapping lives as long as self.
            unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(off), v.as_mut_ptr(), n) };
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_types() {
        assert_eq!(format!("{:?}", Gpa(0x1000)), "Gpa(0x1000)");
        assert_eq!(format!("{:?}", FrontendVa(0xff)), "FrontendVa(0xff)");
        assert_eq!(format!("{:x}", Gpa(0xabc)), "abc");
        assert_eq!(Gpa(u64::MAX - 1).checked_add(1), Some(Gpa(u64::MAX)));
        assert_eq!(Gpa(u64::MAX).checked_add(1), None);
        assert_eq!(FrontendVa(7).raw(), 7);
    }
}
