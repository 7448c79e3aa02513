//! The front-end's shared memory, and the only `unsafe` code of the front-end.
//!
//! The back-end maps the same pages and writes them concurrently (used ring, receive buffers),
//! so nothing here forms a `&`/`&mut` reference into the memory. Three accessors:
//!
//! - [`Shm`]: the whole region, with bounds-checked copies, volatile objects and atomic `u16`s
//!   through a `GuestSlice` (what tests use to write raw descriptors);
//! - [`SharedRing`]: one split virtqueue (virtio 1.2 §2.7) whose three parts were checked once
//!   (alignment, bounds) at construction; every access masks its ring index with `size - 1`, so
//!   it cannot leave the checked area and needs no further check;
//! - [`SlotPool`]: the fixed-size buffers of one queue, checked once the same way; copies are
//!   clamped to a slot.
//!
//! Ring fields are little-endian (virtio 1.x); indexes written by one side and read by the
//! other are atomic `u16`s, ring entries and descriptors are volatile accesses ordered by those
//! atomics and by the fences of [`DriverRing`](super::driver_ring::DriverRing).

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use rvhost_hugepages::region::Region;

use super::error::LayoutError;
use crate::memory::{GuestSlice, Pod};
pub use crate::virtq::split::{VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY, VirtqDesc};

/// Converts a descriptor between native and little-endian fields (the same swap both ways).
fn desc_swap_le(d: VirtqDesc) -> VirtqDesc {
    VirtqDesc {
        addr: d.addr.to_le(),
        len: d.len.to_le(),
        flags: d.flags.to_le(),
        next: d.next.to_le(),
    }
}

/// A used-ring element (`struct virtq_used_elem`, virtio 1.2 §2.7.8), 8 bytes.
#[doc(alias = "virtq_used_elem")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VirtqUsedElem {
    /// Head descriptor of the used chain (`u32` for padding reasons, per the spec).
    pub id: u32,
    /// Bytes the device wrote into the chain's device-writable buffers.
    pub len: u32,
}

// SAFETY: repr(C) of two u32: 8 bytes, no padding, every bit pattern valid, no pointers.
unsafe impl Pod for VirtqUsedElem {}

/// Byte lengths of a split ring's (descriptor table, available ring, used ring) for `size`
/// entries, including the `used_event` / `avail_event` fields (always reserved, so that the
/// layout does not depend on EVENT_IDX).
pub const fn split_ring_lengths(size: u16) -> (usize, usize, usize) {
    let n = size as usize;
    (VirtqDesc::SIZE * n, 6 + 2 * n, 6 + 8 * n)
}

/// The front-end's shared memory: one [`Region`], owned.
#[derive(Debug)]
pub struct Shm {
    region: Region,
}

impl Shm {
    /// Takes ownership of `region`.
    pub fn new(region: Region) -> Self {
        Self { region }
    }

    /// The region (fd, mmap offset, page size).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Bytes of shared memory.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always `false` (regions are never empty).
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Host (front-end virtual) address of byte 0.
    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    internal_pub! {
        /// The whole memory as a `GuestSlice`: bounds-checked copies, volatile objects, atomic
        /// `u16`s. For tests that write raw rings; the data path uses [`SharedRing`] and
        /// [`SlotPool`].
        fn slice(&self) -> GuestSlice<'_> {
            let ptr = ptr::NonNull::new(self.region.as_ptr()).unwrap_or(ptr::NonNull::dangling());
            // SAFETY: the region's mapping is readable and writable for `len()` bytes and lives as
            // long as `self`, which the returned slice borrows; this module never forms a
            // reference to the mapped bytes (other processes write them concurrently).
            unsafe { GuestSlice::from_raw(ptr, self.len()) }
        }
    }

    /// Checks that `[offset, offset + len)` is inside the memory and `offset` is a multiple of
    /// `align` (the region starts page aligned, so the address is aligned too).
    fn check(
        &self,
        what: &'static str,
        offset: usize,
        len: usize,
        align: usize,
    ) -> Result<(), LayoutError> {
        if offset % align != 0 {
            return Err(LayoutError::Misaligned {
                what,
                offset,
                align,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(LayoutError::OutOfBounds {
                what,
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    /// Pointer to byte `offset`, for offsets checked by [`check`](Self::check).
    #[inline]
    fn at(&self, offset: usize) -> *mut u8 {
        self.region.as_ptr().wrapping_add(offset)
    }
}

/// One split virtqueue in the shared memory: descriptor table, available ring, used ring.
///
/// Construction checks the spec's alignment (16, 2, 4; virtio 1.2 §2.7) and that each part,
/// with its event field, lies inside the memory. Afterwards every accessor is infallible: ring
/// indexes are reduced modulo the size, which keeps each access inside a checked part.
///
/// Driver-side accessors are what [`DriverRing`](super::driver_ring::DriverRing) uses; device-side
/// ones (`load_avail_idx`, `write_used_elem`, ...) let tests and device doubles play the
/// back-end by hand.
#[derive(Debug, Clone)]
pub struct SharedRing {
    shm: Arc<Shm>,
    desc: usize,
    avail: usize,
    used: usize,
    mask: u16,
}

impl SharedRing {
    /// Checks the three parts of a ring of `size` entries at these offsets of `shm`.
    pub fn new(
        shm: Arc<Shm>,
        size: u16,
        desc: usize,
        avail: usize,
        used: usize,
    ) -> Result<Self, LayoutError> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(LayoutError::BadQueueSize(size.into()));
        }
        let (dl, al, ul) = split_ring_lengths(size);
        shm.check("descriptor table", desc, dl, 16)?;
        shm.check("available ring", avail, al, 2)?;
        shm.check("used ring", used, ul, 4)?;
        Ok(Self {
            shm,
            desc,
            avail,
            used,
            mask: size - 1,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.mask.wrapping_add(1)
    }

    /// The shared memory.
    pub fn shm(&self) -> &Arc<Shm> {
        &self.shm
    }

    /// Offsets of (descriptor table, available ring, used ring).
    pub fn offsets(&self) -> (usize, usize, usize) {
        (self.desc, self.avail, self.used)
    }

    #[inline]
    fn desc_ptr(&self, id: u16) -> *mut VirtqDesc {
        let i = usize::from(id & self.mask);
        self.shm.at(self.desc + i * VirtqDesc::SIZE).cast()
    }

    /// `u16` field at byte `off` of the available ring (`off` < its checked length).
    #[inline]
    fn avail_u16(&self, off: usize) -> *mut u16 {
        self.shm.at(self.avail + off).cast()
    }

    /// `u16` field at byte `off` of the used ring (`off` < its checked length).
    #[inline]
    fn used_u16(&self, off: usize) -> *mut u16 {
        self.shm.at(self.used + off).cast()
    }

    #[inline]
    fn avail_slot(&self, slot: u16) -> usize {
        4 + 2 * usize::from(slot & self.mask)
    }

    #[inline]
    fn used_elem_ptr(&self, slot: u16) -> *mut VirtqUsedElem {
        let off = 4 + 8 * usize::from(slot & self.mask);
        self.shm.at(self.used + off).cast()
    }

    /// Offset of `used_event` in the available ring, of `avail_event` in the used ring.
    #[inline]
    fn event_off(&self, elem: usize) -> usize {
        4 + elem * usize::from(self.size())
    }

    #[inline]
    fn load(&self, p: *mut u16, order: Ordering) -> u16 {
        // SAFETY: `p` is one of the ring's u16 fields: inside the part checked by `new`, 2-byte
        // aligned (part offsets are aligned to 2 or more and fields sit at even offsets), and
        // mapped while `self.shm` lives. The peer accesses these fields atomically too.
        u16::from_le(unsafe { AtomicU16::from_ptr(p) }.load(order))
    }

    #[inline]
    fn store(&self, p: *mut u16, v: u16, order: Ordering) {
        // SAFETY: as in `load`.
        unsafe { AtomicU16::from_ptr(p) }.store(v.to_le(), order);
    }

    // ---- driver side ----

    /// Writes descriptor `id` (modulo the size).
    #[inline]
    pub fn write_desc(&self, id: u16, d: VirtqDesc) {
        // SAFETY: desc_ptr masks the index into the checked, 16-byte aligned table; a volatile
        // write of a Pod never creates a reference to the shared bytes.
        unsafe { ptr::write_volatile(self.desc_ptr(id), desc_swap_le(d)) };
    }

    /// Reads descriptor `id` (modulo the size).
    #[inline]
    pub fn read_desc(&self, id: u16) -> VirtqDesc {
        // SAFETY: as in `write_desc`; one volatile fetch into a local copy.
        desc_swap_le(unsafe { ptr::read_volatile(self.desc_ptr(id)) })
    }

    /// Writes `avail.ring[slot % size] = id`.
    #[inline]
    pub fn set_avail_entry(&self, slot: u16, id: u16) {
        // SAFETY: avail_slot masks the index: the field is inside the checked, 2-byte aligned
        // available ring. Volatile: the device reads it after our release of `avail.idx`.
        unsafe { ptr::write_volatile(self.avail_u16(self.avail_slot(slot)), id.to_le()) };
    }

    /// Stores `avail.idx` with Release ordering: the descriptors and ring entries written
    /// before are visible to a device that reads the index with Acquire (virtio 1.2 §2.7.13:
    /// "the driver performs a suitable memory barrier" before updating idx).
    #[inline]
    pub fn store_avail_idx(&self, idx: u16) {
        self.store(self.avail_u16(2), idx, Ordering::Release);
    }

    /// Stores `avail.flags` (e.g. [`VIRTQ_AVAIL_F_NO_INTERRUPT`]).
    #[inline]
    pub fn set_avail_flags(&self, flags: u16) {
        self.store(self.avail_u16(0), flags, Ordering::Relaxed);
    }

    /// Stores `used_event` (EVENT_IDX: call me when the used index passes this).
    #[inline]
    pub fn set_used_event(&self, idx: u16) {
        self.store(self.avail_u16(self.event_off(2)), idx, Ordering::Relaxed);
    }

    /// Loads `used.idx` with Acquire ordering: pairs with the device's release (or write
    /// barrier) before it stores the index, so the used elements and the receive buffers read
    /// afterwards hold what the device wrote (virtio 1.2 §2.7.14).
    #[inline]
    pub fn load_used_idx(&self) -> u16 {
        self.load(self.used_u16(2), Ordering::Acquire)
    }

    /// Loads `used.flags` (the device's [`VIRTQ_USED_F_NO_NOTIFY`]).
    #[inline]
    pub fn used_flags(&self) -> u16 {
        self.load(self.used_u16(0), Ordering::Relaxed)
    }

    /// Loads `avail_event` (EVENT_IDX: the device wants a kick when `avail.idx` passes it).
    #[inline]
    pub fn avail_event(&self) -> u16 {
        self.load(self.used_u16(self.event_off(8)), Ordering::Relaxed)
    }

    /// Reads `used.ring[slot % size]`. Call after [`load_used_idx`](Self::load_used_idx) showed
    /// the slot is published.
    #[inline]
    pub fn read_used_elem(&self, slot: u16) -> VirtqUsedElem {
        // SAFETY: used_elem_ptr masks the index into the checked used ring; elements sit at
        // offset 4 + 8 * i of a 4-byte aligned ring, so they are 4-byte aligned as the u32
        // fields need. One volatile fetch into a local copy.
        let e = unsafe { ptr::read_volatile(self.used_elem_ptr(slot)) };
        VirtqUsedElem {
            id: u32::from_le(e.id),
            len: u32::from_le(e.len),
        }
    }

    // ---- device side (tests and device doubles) ----

    /// Loads `avail.idx` with Acquire ordering (pairs with [`store_avail_idx`](Self::store_avail_idx)).
    #[inline]
    pub fn load_avail_idx(&self) -> u16 {
        self.load(self.avail_u16(2), Ordering::Acquire)
    }

    /// Reads `avail.ring[slot % size]`.
    #[inline]
    pub fn avail_entry(&self, slot: u16) -> u16 {
        // SAFETY: as in `set_avail_entry`.
        u16::from_le(unsafe { ptr::read_volatile(self.avail_u16(self.avail_slot(slot))) })
    }

    /// Loads `avail.flags`.
    #[inline]
    pub fn avail_flags(&self) -> u16 {
        self.load(self.avail_u16(0), Ordering::Relaxed)
    }

    /// Loads `used_event`.
    #[inline]
    pub fn used_event(&self) -> u16 {
        self.load(self.avail_u16(self.event_off(2)), Ordering::Relaxed)
    }

    /// Writes `used.ring[slot % size]`.
    #[inline]
    pub fn write_used_elem(&self, slot: u16, e: VirtqUsedElem) {
        let le = VirtqUsedElem {
            id: e.id.to_le(),
            len: e.len.to_le(),
        };
        // SAFETY: as in `read_used_elem`.
        unsafe { ptr::write_volatile(self.used_elem_ptr(slot), le) };
    }

    /// Stores `used.idx` with Release ordering (publishes the used elements written before).
    #[inline]
    pub fn store_used_idx(&self, idx: u16) {
        self.store(self.used_u16(2), idx, Ordering::Release);
    }

    /// Stores `used.flags`.
    #[inline]
    pub fn set_used_flags(&self, flags: u16) {
        self.store(self.used_u16(0), flags, Ordering::Relaxed);
    }

    /// Stores `avail_event`.
    #[inline]
    pub fn set_avail_event(&self, idx: u16) {
        self.store(self.used_u16(self.event_off(8)), idx, Ordering::Relaxed);
    }

    /// Zeroes the three parts (a fresh ring, virtio 1.2 §2.7: the driver zeroes them).
    pub fn zero(&self) {
        let (dl, al, ul) = split_ring_lengths(self.size());
        let s = self.shm.slice();
        for (off, len) in [(self.desc, dl), (self.avail, al), (self.used, ul)] {
            // `new` checked each part lies inside `s`.
            if let Ok(part) = s.subslice(off, len) {
                part.fill(0);
            }
        }
    }
}

/// The buffers of one queue: `count` (a power of two) slots of `slot_len` bytes, each inside
/// the shared memory, with its guest-physical address. Slot `i` belongs to descriptor `i`.
#[derive(Clone)]
pub struct SlotPool {
    shm: Arc<Shm>,
    offsets: Box<[usize]>,
    gpas: Box<[u64]>,
    slot_len: usize,
    mask: u16,
}

impl std::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPool")
            .field("slots", &self.offsets.len())
            .field("slot_len", &self.slot_len)
            .field("first_offset", &self.offsets.first())
            .finish_non_exhaustive()
    }
}

impl SlotPool {
    /// Checks every slot `[offsets[i], offsets[i] + slot_len)` lies inside `shm`.
    pub fn new(
        shm: Arc<Shm>,
        offsets: Box<[usize]>,
        gpas: Box<[u64]>,
        slot_len: usize,
    ) -> Result<Self, LayoutError> {
        let count = offsets.len();
        let size = u16::try_from(count)
            .ok()
            .filter(|c| c.is_power_of_two() && gpas.len() == count)
            .ok_or(LayoutError::BadQueueSize(count as u32))?;
        for &off in offsets.iter() {
            shm.check("buffer", off, slot_len, 1)?;
        }
        Ok(Self {
            shm,
            offsets,
            gpas,
            slot_len,
            mask: size - 1,
        })
    }

    /// Bytes per slot.
    #[inline]
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Guest-physical address of slot `id` (modulo the count).
    #[inline]
    pub fn gpa(&self, id: u16) -> u64 {
        self.gpas[usize::from(id & self.mask)]
    }

    /// Offset of slot `id` (modulo the count) in the shared memory.
    #[inline]
    pub fn offset(&self, id: u16) -> usize {
        self.offsets[usize::from(id & self.mask)]
    }

    /// Copies `data` into slot `id` at byte `at`, clamped to the slot; returns bytes copied.
    #[inline]
    pub fn write(&self, id: u16, at: usize, data: &[u8]) -> usize {
        let n = data.len().min(self.slot_len.saturating_sub(at));
        if n == 0 {
            return 0;
        }
        let dst = self.shm.at(self.offset(id) + at);
        // SAFETY: the slot was checked to lie inside the mapping and `at + n <= slot_len`;
        // `data` is a Rust slice, never inside the mapping (no reference to it exists).
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), dst, n) };
        n
    }

    /// Copies bytes of slot `id` from byte `at` into `out`, clamped to the slot; returns bytes
    /// copied.
    #[inline]
    pub fn read(&self, id: u16, at: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(self.slot_len.saturating_sub(at));
        if n == 0 {
            return 0;
        }
        let src = self.shm.at(self.offset(id) + at);
        // SAFETY: as in `write`, the other way round.
        unsafe { ptr::copy_nonoverlapping(src, out.as_mut_ptr(), n) };
        n
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rvhost_hugepages::region::{PageSize, RegionConfig};

    pub(crate) fn shm(len: usize) -> Arc<Shm> {
        let cfg = RegionConfig::new(len)
            .with_page_size(PageSize::Small)
            .with_name("rvhost-frontend-test");
        Arc::new(Shm::new(Region::new(&cfg).unwrap()))
    }

    #[test]
    fn ring_checks_alignment_bounds_and_size() {
        let m = shm(0x4000);
        assert!(SharedRing::new(m.clone(), 256, 0, 0x1000, 0x2000).is_ok());
        assert_eq!(
            SharedRing::new(m.clone(), 255, 0, 0x1000, 0x2000).unwrap_err(),
            LayoutError::BadQueueSize(255)
        );
        assert!(SharedRing::new(m.clone(), 0, 0, 0x1000, 0x2000).is_err());
        assert!(matches!(
            SharedRing::new(m.clone(), 256, 8, 0x1000, 0x2000),
            Err(LayoutError::Misaligned { align: 16, .. })
        ));
        assert!(matches!(
            SharedRing::new(m.clone(), 256, 0, 0x1001, 0x2000),
            Err(LayoutError::Misaligned { align: 2, .. })
        ));
        assert!(matches!(
            SharedRing::new(m.clone(), 256, 0, 0x1000, 0x2002),
            Err(LayoutError::Misaligned { align: 4, .. })
        ));
        // 6 + 8 * 256 = 0x806 bytes of used ring do not fit at 0x3800.
        assert!(matches!(
            SharedRing::new(m, 256, 0, 0x1000, 0x3800),
            Err(LayoutError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn ring_fields_sit_where_the_spec_puts_them() {
        let m = shm(0x4000);
        let r = SharedRing::new(m.clone(), 8, 0x100, 0x200, 0x300).unwrap();
        let s = m.slice();
        r.write_desc(
            9, // modulo 8: descriptor 1
            VirtqDesc {
                addr: 0x1122_3344_5566_7788,
                len: 0x99aa_bbcc,
                flags: 3,
                next: 5,
            },
        );
        let mut raw = [0u8; 16];
        s.read_at(0x110, &mut raw).unwrap();
        assert_eq!(
            raw,
            [
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xcc, 0xbb, 0xaa, 0x99, 3, 0, 5, 0
            ]
        );
        r.set_avail_flags(1);
        r.store_avail_idx(0x1234);
        r.set_avail_entry(10, 7); // slot 2
        r.set_used_event(0xabcd);
        assert_eq!(s.read_obj::<[u8; 4]>(0x200).unwrap(), [1, 0, 0x34, 0x12]);
        assert_eq!(s.read_obj::<u16>(0x204 + 4).unwrap(), 7);
        assert_eq!(s.read_obj::<u16>(0x204 + 16).unwrap(), 0xabcd);
        r.write_used_elem(3, VirtqUsedElem { id: 6, len: 1500 });
        r.store_used_idx(4);
        r.set_used_flags(1);
        r.set_avail_event(0x55);
        assert_eq!(s.read_obj::<[u16; 2]>(0x300).unwrap(), [1, 4]);
        assert_eq!(s.read_obj::<[u32; 2]>(0x304 + 24).unwrap(), [6, 1500]);
        assert_eq!(s.read_obj::<u16>(0x304 + 64).unwrap(), 0x55);
        // And back through the accessors.
        assert_eq!(r.read_desc(1).next, 5);
        assert_eq!(
            (r.load_avail_idx(), r.avail_entry(2), r.avail_flags()),
            (0x1234, 7, 1)
        );
        assert_eq!(
            (
                r.used_event(),
                r.load_used_idx(),
                r.used_flags(),
                r.avail_event()
            ),
            (0xabcd, 4, 1, 0x55)
        );
        assert_eq!(r.read_used_elem(11), VirtqUsedElem { id: 6, len: 1500 });
        r.zero();
        assert_eq!(s.read_obj::<[u8; 16]>(0x110).unwrap(), [0; 16]);
        assert_eq!(r.load_used_idx(), 0);
    }

    #[test]
    fn slot_copies_are_clamped_to_the_slot() {
        let m = shm(0x2000);
        let p = SlotPool::new(
            m.clone(),
            vec![0x100, 0x200].into(),
            vec![10, 20].into(),
            16,
        )
        .unwrap();
        assert_eq!(p.write(1, 10, b"0123456789"), 6);
        assert_eq!(p.write(3, 16, b"x"), 0, "slot 3 = slot 1; at == slot_len");
        assert_eq!(p.gpa(1), 20);
        let mut out = [0u8; 32];
        assert_eq!(p.read(1, 10, &mut out), 6);
        assert_eq!(&out[..6], b"012345");
        assert_eq!(
            m.slice().read_obj::<u8>(0x210).unwrap(),
            0,
            "past the slot untouched"
        );
        assert!(SlotPool::new(m.clone(), vec![0x1ff8].into(), vec![0].into(), 16).is_err());
        assert!(SlotPool::new(m, vec![0, 16, 32].into(), vec![0; 3].into(), 16).is_err());
    }
}
