//! The dirty log of live migration (`VHOST_F_LOG_ALL` with the LOG_SHMFD protocol feature):
//! a bitmap in memory the frontend shares with SET_LOG_BASE, one bit per 4 KiB page of
//! guest-physical address space (bit `page % 8` of byte `page / 8`), which the data path sets
//! for every page it writes while logging is on, and which the frontend (QEMU) reads and
//! clears while it copies the guest's memory to the destination.
//!
//! The log is mapped like a memory region ([`GuestRegion::map`]: size 0, an offset or size
//! beyond the fd's size (`fstat`) and `offset + size` overflow are refused before anything is
//! mapped). It is trusted for nothing: a range that reaches beyond it is marked up to its end
//! and the rest counted ([`DirtyLog::beyond`]) and logged (rate-limited), never written. A log
//! smaller than the guest memory it should cover is accepted with a warning (QEMU grows the log
//! after a memory hotplug with a second SET_LOG_BASE, so a short log can be a transient state);
//! the pages it cannot hold are counted as above.
//!
//! Ordering: a bit must not be seen before the write it stands for (QEMU clears a bit, then
//! copies its page: a bit set before our write lands would let the copy miss it). Each marking
//! starts with a `Release` fence after the data path's writes, then sets bits with atomic ORs.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::error::MemoryError;
use super::region::{GuestRegion, MapOptions, RegionDesc};
use crate::ratelimit::LogLimiter;

/// Bytes of guest-physical memory one bit of the log stands for (`VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 4096;

/// Bytes of log a guest-physical range of `gpa_end` bytes needs (from address 0).
pub const fn log_bytes_for(gpa_end: u64) -> u64 {
    gpa_end.div_ceil(LOG_PAGE).div_ceil(8)
}

/// A mapped dirty log (see the module docs). Shared (`Arc`) by the vrings that write it; it is
/// unmapped when the last one lets go of it.
#[derive(Debug)]
pub struct DirtyLog {
    region: GuestRegion,
    /// Pages whose bit this backend set (it was clear): see [`DirtyLog::marked`].
    marked: AtomicU64,
    /// Markings that reached beyond the log.
    beyond: AtomicU64,
    limit: Mutex<LogLimiter>,
}

impl DirtyLog {
    /// Maps `mmap_size` bytes of `fd` from `mmap_offset` (SET_LOG_BASE's `VhostUserLog`). On
    /// error the fd is closed and nothing stays mapped.
    pub fn map(fd: OwnedFd, mmap_size: u64, mmap_offset: u64) -> Result<DirtyLog, MemoryError> {
        let desc = RegionDesc {
            guest_phys_addr: 0,
            memory_size: mmap_size,
            userspace_addr: 0,
            mmap_offset,
        };
        let region = GuestRegion::map(fd, desc, MapOptions::new())?;
        Ok(DirtyLog {
            region,
            marked: AtomicU64::new(0),
            beyond: AtomicU64::new(0),
            limit: Mutex::new(LogLimiter::new()),
        })
    }

    /// Bytes of the log.
    pub fn len(&self) -> u64 {
        self.region.size()
    }

    /// Always `false` (a log of 0 bytes is refused when mapped).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Guest-physical bytes the log covers, from address 0 (saturating).
    pub fn covers(&self) -> u64 {
        self.len().saturating_mul(8 * LOG_PAGE)
    }

    /// Markings that reached beyond the end of the log (their pages past it were not marked).
    pub fn beyond(&self) -> u64 {
        self.beyond.load(Ordering::Relaxed)
    }

    /// Pages this backend marked dirty whose bit was clear (the frontend had not seen them
    /// dirty since it last cleared them): how much of the frontend's memory copy the data
    /// path's writes sent again. A page written twice between two clears counts once. Shown
    /// when the log is released (`rvhost: dirty log ... released: N pages marked`), so that a
    /// migration test can tell a backend that logged from one that did not.
    pub fn marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed)
    }

    /// The region holding the log (its host address, for tests of the mapping).
    pub fn region(&self) -> &GuestRegion {
        &self.region
    }

    /// Marks every page of `[gpa, gpa + len)` dirty, after the writes before it (see the module
    /// docs). `len` 0 marks nothing; pages beyond the log are counted, not written.
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        // Our writes of these pages before the bits (pairs with the reader's clearing swap).
        fence(Ordering::Release);
        let first = gpa / LOG_PAGE;
        let last = match gpa.checked_add(len - 1) {
            Some(end) => end / LOG_PAGE,
            None => u64::MAX / LOG_PAGE,
        };
        let bytes = self.len();
        let log = self.region.as_slice();
        let mut set = 0;
        for page in first..=last {
            let byte = page / 8;
            if byte >= bytes {
                self.beyond_log(gpa, len);
                break;
            }
            let bit = 1 << (page % 8);
            // byte < len(), which is a usize (the region is mapped).
            if let Ok(old) = log.fetch_or_u8(byte as usize, bit, Ordering::Relaxed) {
                set += u64::from(old & bit == 0);
            }
        }
        if set != 0 {
            self.marked.fetch_add(set, Ordering::Relaxed);
        }
    }

    #[cold]
    fn beyond_log(&self, gpa: u64, len: u64) {
        self.beyond.fetch_add(1, Ordering::Relaxed);
        let Ok(mut limit) = self.limit.try_lock() else {
            return;
        };
        if let Some(more) = limit.check() {
            log::error!(
                "dirty log of {} bytes (guest memory below {:#x}) cannot mark [{gpa:#x}, +{len:#x}): pages beyond it are not logged ({more} more since the last line)",
                self.len(),
                self.covers()
            );
        }
    }
}

#[cfg(test)]
#[path = "dirty_log_tests.rs"]
mod tests;
