//! Memory a device reads and writes on its own: descriptor rings, completion write-back areas.
//!
//! A [`DmaRegion`] is a zeroed, page-aligned allocation with a known [`Iova`]; for now the
//! IOVA is the virtual address (as for the crate's other engines). A driver makes it visible to
//! the device through a [`DmaMapper`]: [`IdentityMapper`] when there is no IOMMU to program, a
//! device model's IOMMU table, or a VFIO container's `VFIO_IOMMU_MAP_DMA` (`VfioPci`). The same
//! mapper serves the rest of what a device reaches: the application's buffers (mbuf pools) and,
//! in rvhost, each guest's memory (`Driver::set_dma_mapper`); [`MapperSet`] programs several
//! IOMMU tables as one.
//!
//! The region is shared with the device, so no Rust reference into it is ever made, except
//! [`AtomicU64`]s for words the device writes (completion write-backs, which hardware writes as
//! one aligned 8-byte store).

use std::alloc::{self, Layout};
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU64;

use crate::{DmaError, Iova};

/// Alignment of every region: a page, so a region never shares a page with other data.
const ALIGN: usize = 4096;

/// Makes memory visible to a device (an IOMMU mapping).
pub trait DmaMapper: Send + Sync {
    /// Maps `len` bytes at virtual address `va` to `iova` for the device.
    ///
    /// # Safety
    ///
    /// `va..va + len` stays allocated until [`unmap`](Self::unmap) (the device may read and
    /// write it whenever the driver tells it to), and nothing makes a Rust reference into the
    /// bytes the device may write.
    unsafe fn map(&self, iova: Iova, va: *const u8, len: usize) -> Result<(), DmaError>;
    /// Removes the mapping of `len` bytes at `iova` made by [`map`](Self::map).
    fn unmap(&self, iova: Iova, len: usize);
}

/// No IOMMU to program: the device uses virtual addresses as they are (IOVA = VA).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityMapper;

impl DmaMapper for IdentityMapper {
    unsafe fn map(&self, _iova: Iova, _va: *const u8, _len: usize) -> Result<(), DmaError> {
        Ok(())
    }

    fn unmap(&self, _iova: Iova, _len: usize) {}
}

/// Several IOMMUs programmed as one: each mapping is made in every member, in order, or in
/// none. For an application whose copy channels sit behind different IOMMU tables (one device
/// model per channel, or devices in different VFIO containers) but that hands one mapper to
/// whoever maps its memory (rvhost's `Driver::set_dma_mapper`).
///
/// Members must not share a table: a range mapped twice in one table is refused (overlap) by
/// the second mapping.
pub struct MapperSet(Vec<std::sync::Arc<dyn DmaMapper>>);

impl MapperSet {
    /// A set of `members` (none: every mapping succeeds and does nothing).
    pub fn new(members: Vec<std::sync::Arc<dyn DmaMapper>>) -> MapperSet {
        MapperSet(members)
    }

    /// How many mappers the set programs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if the set has no member.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for MapperSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapperSet")
            .field("members", &self.0.len())
            .finish()
    }
}

impl DmaMapper for MapperSet {
    /// Maps the range in every member; if one fails, the members that took it already are
    /// unmapped again and that member's error is returned.
    unsafe fn map(&self, iova: Iova, va: *const u8, len: usize) -> Result<(), DmaError> {
        for (i, m) in self.0.iter().enumerate() {
            // SAFETY: this method's contract is `map`'s, passed on to each member.
            if let Err(e) = unsafe { m.map(iova, va, len) } {
                for done in &self.0[..i] {
                    done.unmap(iova, len);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: usize) {
        for m in &self.0 {
            m.unmap(iova, len);
        }
    }
}

/// A zeroed allocation of whole pages that a device accesses by its [`Iova`] (= its virtual
/// address for now). Accessors are volatile and bounds-checked.
///
/// Whole pages: an IOMMU maps pages (VFIO's `VFIO_IOMMU_MAP_DMA` refuses an address or a
/// length that is not page-aligned), and a page mapped for the device must hold nothing
/// else (another allocation sharing it would be exposed to the device, and mapped twice).
pub struct DmaRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region owns its allocation (freed once, in `drop`); all access goes through raw
// volatile or atomic operations, which any thread may issue.
unsafe impl Send for DmaRegion {}

impl std::fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegion")
            .field("iova", &self.iova())
            .field("len", &self.len())
            .finish()
    }
}

impl DmaRegion {
    /// A zeroed region of at least `len` bytes (at least 1), page-aligned, its length
    /// rounded up to whole pages ([`len`](Self::len)).
    pub fn new(len: usize) -> Result<DmaRegion, DmaError> {
        let too_large = || DmaError::InvalidConfig("DMA region too large");
        let pages = len
            .max(1)
            .checked_next_multiple_of(ALIGN)
            .ok_or_else(too_large)?;
        let layout = Layout::from_size_align(pages, ALIGN).map_err(|_| too_large())?;
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(DmaError::OutOfMemory)?;
        Ok(DmaRegion { ptr, layout })
    }

    /// The device's address of byte 0.
    pub fn iova(&self) -> Iova {
        Iova::from_ptr(self.ptr.as_ptr())
    }

    /// The region's virtual address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes: whole pages.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Never true (a region has at least one byte); for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address of the `T` at `off`, checked to lie in the region, aligned.
    #[inline]
    fn at<T>(&self, off: usize) -> *mut T {
        assert!(
            off % align_of::<T>() == 0
                && off
                    .checked_add(size_of::<T>())
                    .is_some_and(|end| end <= self.len()),
            "DMA region access at {off:#x} out of bounds or misaligned"
        );
        self.ptr.as_ptr().wrapping_add(off).cast()
    }

    /// Writes the `u32` at `off` (volatile).
    #[inline]
    pub fn write_u32(&self, off: usize, val: u32) {
        // SAFETY: `at` checked bounds and alignment; the region is live and nothing holds a
        // reference to its plain bytes.
        unsafe { ptr::write_volatile(self.at::<u32>(off), val) }
    }

    /// Reads the `u32` at `off` (volatile).
    #[inline]
    pub fn read_u32(&self, off: usize) -> u32 {
        // SAFETY: as in `write_u32`.
        unsafe { ptr::read_volatile(self.at::<u32>(off)) }
    }

    /// Writes the `u64` at `off` (volatile).
    #[inline]
    pub fn write_u64(&self, off: usize, val: u64) {
        // SAFETY: as in `write_u32`.
        unsafe { ptr::write_volatile(self.at::<u64>(off), val) }
    }

    /// Reads the `u64` at `off` (volatile).
    #[inline]
    pub fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: as in `write_u32`.
        unsafe { ptr::read_volatile(self.at::<u64>(off)) }
    }

    /// The 8 bytes at `off` as an atomic: for a word the device writes while the driver reads
    /// it (a completion write-back). Only ever access that word through this.
    #[inline]
    pub fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `at` checked bounds and 8-byte alignment; the word lives as long as `self`,
        // and (this method's rule) is only accessed atomically, by the driver and the device.
        unsafe { AtomicU64::from_ptr(self.at::<u64>(off)) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// Records its mappings; refuses every map when `fail`.
    #[derive(Default)]
    struct Rec {
        maps: std::sync::Mutex<Vec<(u64, usize)>>,
        fail: bool,
    }

    impl DmaMapper for Rec {
        unsafe fn map(&self, iova: Iova, _va: *const u8, len: usize) -> Result<(), DmaError> {
            if self.fail {
                return Err(DmaError::InvalidConfig("refused"));
            }
            self.maps.lock().unwrap().push((iova.0, len));
            Ok(())
        }
        fn unmap(&self, iova: Iova, len: usize) {
            let mut m = self.maps.lock().unwrap();
            let at = m.iter().position(|&x| x == (iova.0, len)).unwrap();
            m.remove(at);
        }
    }

    #[test]
    fn mapper_set_maps_in_all_or_none() {
        use std::sync::Arc;
        let (a, b) = (Arc::new(Rec::default()), Arc::new(Rec::default()));
        let bad = Arc::new(Rec {
            fail: true,
            ..Rec::default()
        });
        let set = MapperSet::new(vec![a.clone(), b.clone()]);
        let buf = [0u8; 64];
        // SAFETY: the recording mappers never touch the memory.
        unsafe { set.map(Iova::from_ptr(buf.as_ptr()), buf.as_ptr(), 64) }.unwrap();
        assert_eq!(
            (a.maps.lock().unwrap().len(), b.maps.lock().unwrap().len()),
            (1, 1)
        );
        set.unmap(Iova::from_ptr(buf.as_ptr()), 64);
        assert!(a.maps.lock().unwrap().is_empty() && b.maps.lock().unwrap().is_empty());
        let set = MapperSet::new(vec![a.clone(), bad, b.clone()]);
        // SAFETY: as above.
        let r = unsafe { set.map(Iova::from_ptr(buf.as_ptr()), buf.as_ptr(), 64) };
        assert!(r.is_err());
        assert!(
            a.maps.lock().unwrap().is_empty() && b.maps.lock().unwrap().is_empty(),
            "nothing left half-mapped"
        );
    }

    #[test]
    fn region_is_zeroed_aligned_and_checked() {
        let r = DmaRegion::new(100).unwrap();
        assert_eq!(r.iova().0 % ALIGN as u64, 0);
        assert_eq!(r.iova().0, r.as_ptr() as u64);
        // Whole pages: nothing else shares them.
        assert_eq!((r.len(), r.is_empty()), (ALIGN, false));
        assert_eq!(DmaRegion::new(ALIGN + 1).unwrap().len(), 2 * ALIGN);
        assert_eq!(r.read_u64(0), 0);
        r.write_u32(4, 7);
        r.write_u64(8, 9);
        assert_eq!((r.read_u32(4), r.read_u64(8)), (7, 9));
        r.atomic_u64(16).store(5, Relaxed);
        assert_eq!(r.read_u64(16), 5);
        assert!(std::panic::catch_unwind(|| r.read_u64(ALIGN - 4)).is_err());
        assert!(std::panic::catch_unwind(|| r.read_u64(4)).is_err());
        // SAFETY: the identity mapper does nothing.
        assert!(unsafe { IdentityMapper.map(r.iova(), r.as_ptr(), 100) }.is_ok());
    }
}
