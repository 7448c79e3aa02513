//! Register access: the one place that touches a device's BAR.
//!
//! Drivers read and write registers through [`Mmio`], at byte offsets into a BAR, so that the
//! same driver code runs over a real mapped BAR ([`MmioBar`]) or over a software model of the
//! device (e.g. [`IoatModel`](crate::model::IoatModel)).

use std::ptr;

/// Register access at byte offsets into one BAR. Every access is one volatile load or store of
/// exactly the given width, at a naturally aligned offset, in program order with the other
/// accesses through the same `Mmio`.
///
/// Methods take `&self`: registers are shared with the device, which changes them on its own.
pub trait Mmio {
    /// Reads the 8-bit register at `off`.
    fn read8(&self, off: usize) -> u8;
    /// Reads the 16-bit register at `off`.
    fn read16(&self, off: usize) -> u16;
    /// Reads the 32-bit register at `off`.
    fn read32(&self, off: usize) -> u32;
    /// Reads the 64-bit register at `off`.
    fn read64(&self, off: usize) -> u64;
    /// Writes the 8-bit register at `off`.
    fn write8(&self, off: usize, val: u8);
    /// Writes the 16-bit register at `off`.
    fn write16(&self, off: usize, val: u16);
    /// Writes the 32-bit register at `off`.
    fn write32(&self, off: usize, val: u32);
    /// Writes the 64-bit register at `off`.
    fn write64(&self, off: usize, val: u64);
}

/// A mapped BAR: `len` bytes of device registers at `base`, accessed with volatile loads and
/// stores. Accesses outside the BAR or misaligned are refused without touching memory: a read
/// returns all ones (what a PCI read of nothing returns) and a write is dropped; both are
/// logged, since they are a driver bug.
#[derive(Debug)]
pub struct MmioBar {
    base: *mut u8,
    len: usize,
}

// SAFETY: an `MmioBar` is a pointer to device registers, valid for the BAR's life (the contract
// of `MmioBar::new`); it holds no thread-bound state, and every access is a single volatile load
// or store, which any thread may issue.
unsafe impl Send for MmioBar {}
// SAFETY: as for `Send`; concurrent accesses are the device's business (registers are not Rust
// memory), not a data race on Rust objects.
unsafe impl Sync for MmioBar {}

impl MmioBar {
    /// A BAR of `len` bytes mapped at `base`.
    ///
    /// # Safety
    ///
    /// `base..base + len` is a mapping of device registers (e.g. a VFIO region mmapped
    /// `MAP_SHARED`), valid for volatile reads and writes of widths 1, 2, 4 and 8 at aligned
    /// offsets, for as long as this `MmioBar` lives; nothing makes Rust references into it.
    pub unsafe fn new(base: *mut u8, len: usize) -> MmioBar {
        MmioBar { base, len }
    }

    /// Size of the BAR in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the BAR has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of `size` bytes at `off`, if they lie in the BAR and `off` is aligned.
    #[inline]
    fn at(&self, off: usize, size: usize) -> Option<*mut u8> {
        let end = off.checked_add(size)?;
        if end > self.len || off % size != 0 {
            log::error!(
                "MMIO access of {size} bytes at {off:#x} outside the {:#x}-byte BAR or misaligned",
                self.len
            );
            return None;
        }
        Some(self.base.wrapping_add(off))
    }
}

macro_rules! bar_access {
    ($read:ident, $write:ident, $t:ty) => {
        #[inline]
        fn $read(&self, off: usize) -> $t {
            match self.at(off, size_of::<$t>()) {
                // SAFETY: `at` checked that the access lies in the BAR and is aligned; the BAR is
                // valid for volatile accesses of this width (the contract of `MmioBar::new`).
                Some(p) => unsafe { ptr::read_volatile(p.cast::<$t>()) },
                None => <$t>::MAX,
            }
        }

        #[inline]
        fn $write(&self, off: usize, val: $t) {
            if let Some(p) = self.at(off, size_of::<$t>()) {
                // SAFETY: as in the read above.
                unsafe { ptr::write_volatile(p.cast::<$t>(), val) }
            }
        }
    };
}

impl Mmio for MmioBar {
    bar_access!(read8, write8, u8);
    bar_access!(read16, write16, u16);
    bar_access!(read32, write32, u32);
    bar_access!(read64, write64, u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_accesses_are_bounded_and_aligned() {
        let mut regs = vec![0u64; 4];
        {
            // SAFETY: 32 bytes of plain memory stand in for a BAR; the vector outlives `bar` and is
            // only read through it meanwhile.
            let bar = unsafe { MmioBar::new(regs.as_mut_ptr().cast(), 32) };
            bar.write64(8, 0x1122_3344_5566_7788);
            assert_eq!(bar.read32(8), 0x5566_7788);
            assert_eq!(bar.read16(14), 0x1122);
            assert_eq!(bar.read8(8), 0x88);
            bar.write8(0, 0xab);
            assert_eq!(bar.read64(0), 0xab);
            // Outside, or misaligned: all ones, and nothing written.
            assert_eq!(bar.read64(32), u64::MAX);
            assert_eq!(bar.read32(30), u32::MAX);
            assert_eq!(bar.read32(2), u32::MAX);
            bar.write64(usize::MAX - 3, 1);
            bar.write16(31, 1);
            assert_eq!((bar.len(), bar.is_empty()), (32, false));
        }
        assert_eq!(regs, [0xab, 0x1122_3344_5566_7788, 0, 0]);
    }
}
