//! The models' IOMMU: a set of mapped IOVA ranges (IOVA = VA inside them), and the only code
//! of the models that touches memory. A device model reaches memory only through
//! [`Iommu::check`]ed ranges; an unmapped address is a fault the model reports as its silicon
//! would (an error bit), never an access.
//!
//! In *passthrough* (an IOMMU off, or in pass-through mode: `iommu=pt`) every address that does
//! not wrap passes the checks; mappings are still recorded. The data path turns it on where it
//! cannot map what the device is given (see the models' `set_passthrough`).

use std::collections::BTreeMap;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering::Release};

/// Mapped ranges, `start -> end` (exclusive), non-overlapping.
#[derive(Debug, Default)]
pub(crate) struct Iommu {
    ranges: BTreeMap<u64, u64>,
    /// Every address passes the checks.
    pub(crate) passthrough: bool,
}

impl Iommu {
    /// Maps `len` bytes at `iova` (IOVA = VA). Returns false, changing nothing, if the range is
    /// empty, wraps, or overlaps a mapped one.
    pub(crate) fn map(&mut self, iova: u64, len: u64) -> bool {
        let Some(end) = iova.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        let before = self.ranges.range(..end).next_back();
        if before.is_some_and(|(_, &e)| e > iova) {
            return false;
        }
        self.ranges.insert(iova, end);
        true
    }

    /// Unmaps the range mapped at exactly `iova..iova + len`; false if there is none.
    pub(crate) fn unmap(&mut self, iova: u64, len: u64) -> bool {
        match self.ranges.get(&iova) {
            Some(&end) if Some(end) == iova.checked_add(len) => {
                self.ranges.remove(&iova);
                true
            }
            _ => false,
        }
    }

    /// Whether `addr..addr + len` lies inside one mapped range (`len` may be 0: then `addr`
    /// itself must be mapped).
    pub(crate) fn check(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len.max(1)) else {
            return false;
        };
        if self.passthrough {
            return true;
        }
        (self.ranges.range(..=addr).next_back()).is_some_and(|(_, &e)| end <= e)
    }

    /// How many of the `len` bytes at `addr` are mapped before the first unmapped one (`len`
    /// if all are), following ranges that touch.
    pub(crate) fn mapped_prefix(&self, addr: u64, len: u64) -> u64 {
        if self.passthrough {
            return len.min(u64::MAX - addr);
        }
        let mut at = addr;
        let end = addr.saturating_add(len);
        while at < end {
            match self.ranges.range(..=at).next_back() {
                Some((_, &e)) if e > at => at = e,
                _ => break,
            }
        }
        at.min(end) - addr
    }

    /// The mapped ranges, `(start, len)`.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e - s))
    }
}

/// Reads the `u32` at `addr`.
///
/// # Safety
///
/// `addr..addr + 4` passed [`Iommu::check`], is 4-byte aligned, and the mapping's contract
/// holds (whoever mapped it keeps it valid for device access while mapped).
pub(crate) unsafe fn read_u32(addr: u64) -> u32 {
    // SAFETY: this function's contract.
    unsafe { ptr::read_volatile(ptr::with_exposed_provenance::<u32>(addr as usize)) }
}

/// Reads the `u64` at `addr`.
///
/// # Safety
///
/// As [`read_u32`], for 8 aligned bytes.
pub(crate) unsafe fn read_u64(addr: u64) -> u64 {
    // SAFETY: this function's contract.
    unsafe { ptr::read_volatile(ptr::with_exposed_provenance::<u64>(addr as usize)) }
}

/// Stores `val` to the 8-byte word at `addr` as one atomic Release store (a completion
/// write-back: the driver reads it with an Acquire load).
///
/// # Safety
///
/// As [`read_u32`], for 8 aligned bytes that are only ever accessed atomically.
pub(crate) unsafe fn write_back(addr: u64, val: u64) {
    // SAFETY: this function's contract: aligned, valid, accessed only atomically.
    let word = unsafe { AtomicU64::from_ptr(ptr::with_exposed_provenance_mut(addr as usize)) };
    word.store(val, Release);
}

/// Appends the `len` bytes at `addr` to `out`.
///
/// # Safety
///
/// As [`read_u32`], for `addr..addr + len`, which nothing writes meanwhile.
pub(crate) unsafe fn read_bytes(addr: u64, len: usize, out: &mut Vec<u8>) {
    out.reserve(len);
    let start = out.len();
    // SAFETY: the source is valid for `len` bytes (this function's contract), the vector has
    // room for `len` more, and the two cannot overlap (the vector is the model's own).
    unsafe {
        ptr::copy_nonoverlapping(
            ptr::with_exposed_provenance::<u8>(addr as usize),
            out.as_mut_ptr().add(start),
            len,
        );
        out.set_len(start + len);
    }
}

/// Writes `data` at `addr`.
///
/// # Safety
///
/// As [`read_u32`], for `addr..addr + data.len()`, which nothing else accesses meanwhile.
pub(crate) unsafe fn write_bytes(addr: u64, data: &[u8]) {
    // SAFETY: this function's contract; `data` is the model's own buffer, so no overlap.
    unsafe {
        ptr::copy_nonoverlapping(
            data.as_ptr(),
            ptr::with_exposed_provenance_mut::<u8>(addr as usize),
            data.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_check_unmap() {
        let mut m = Iommu::default();
        assert!(m.map(0x1000, 0x1000));
        assert!(m.map(0x3000, 0x100));
        assert!(!m.map(0x1800, 0x10), "overlap");
        assert!(!m.map(0x0f00, 0x200), "overlap from below");
        assert!(!m.map(u64::MAX, 2), "wraps");
        assert!(!m.map(0x9000, 0), "empty");
        assert!(m.check(0x1000, 0x1000));
        assert!(m.check(0x1ff8, 8));
        assert!(!m.check(0x1ff8, 9), "runs past the end");
        assert!(!m.check(0x2000, 1));
        assert!(!m.check(0x2ff0, 0x20), "spans a hole");
        assert!(m.check(0x3000, 0));
        assert!(!m.unmap(0x1000, 0x800));
        assert!(m.unmap(0x1000, 0x1000));
        assert!(!m.check(0x1000, 1));
        assert_eq!(m.ranges().collect::<Vec<_>>(), [(0x3000, 0x100)]);
        assert!(m.map(0x3100, 0x100));
        assert_eq!(
            m.mapped_prefix(0x3080, 0x1000),
            0x180,
            "across touching ranges"
        );
        assert_eq!(m.mapped_prefix(0x3080, 0x10), 0x10);
        assert_eq!(m.mapped_prefix(0x2000, 0x10), 0);
        m.passthrough = true;
        assert!(m.check(0x2000, 0x10) && m.check(0, 0));
        assert!(!m.check(u64::MAX, 2), "wraps");
        assert_eq!(m.mapped_prefix(0x2000, 0x10), 0x10);
        assert!(m.map(0x5000, 0x10), "mappings are still recorded");
    }
}
