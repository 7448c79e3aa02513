//! Where the front-end puts its rings and buffers, and the guest-physical address space.
//!
//! The front-end is its own guest: the shared memory is cut into one or more page-aligned
//! chunks, each announced as one vhost-user memory region. Chunk `i` starts at guest-physical
//! address `gpa_base + i * (chunk + gpa_gap)` (a non-zero gap leaves holes in the guest
//! address space, as QEMU's PCI hole does) and at front-end virtual address
//! `host + offset`: the region's real address in this process, as QEMU sends its own
//! mapping addresses. No ring and no buffer straddles two chunks, since a ring must lie in one
//! region and a buffer is contiguous only within one.

use super::error::LayoutError;
use super::shm::split_ring_lengths;
use crate::memory::{FrontendVa, Gpa};
use crate::protocol::payload::MemoryRegion;

/// Alignment of rings and buffers: one cache line, so that the driver-written available ring
/// and the device-written used ring never share a line.
pub const CACHE_LINE: usize = 64;

/// One chunk of the shared memory, announced as one memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the shared memory.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// Guest-physical address of its first byte.
    pub gpa: Gpa,
}

impl Chunk {
    fn end(&self) -> usize {
        self.offset + self.len
    }
}

/// The guest-physical and front-end virtual address spaces over the shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemLayout {
    host: u64,
    mmap_offset: u64,
    len: usize,
    chunks: Vec<Chunk>,
}

impl MemLayout {
    /// Cuts `len` bytes (at host address `host`, offset `mmap_offset` in their fd) into
    /// `regions` chunks of whole `page`-byte pages; the last one takes the remainder.
    pub fn new(
        host: u64,
        mmap_offset: u64,
        len: usize,
        page: usize,
        regions: usize,
        gpa_base: u64,
        gpa_gap: u64,
    ) -> Result<Self, LayoutError> {
        let too_many = LayoutError::TooManyRegions { regions, len, page };
        if regions == 0 || page == 0 {
            return Err(too_many);
        }
        let chunk = (len / regions) / page * page;
        if chunk == 0 {
            return Err(too_many);
        }
        let overflow = LayoutError::GpaOverflow {
            base: gpa_base,
            gap: gpa_gap,
        };
        let stride = (chunk as u64)
            .checked_add(gpa_gap)
            .ok_or(overflow.clone())?;
        let mut chunks = Vec::with_capacity(regions);
        for i in 0..regions {
            let offset = i * chunk;
            let clen = if i + 1 == regions {
                len - offset
            } else {
                chunk
            };
            let gpa = stride
                .checked_mul(i as u64)
                .and_then(|g| g.checked_add(gpa_base))
                .filter(|g| g.checked_add(clen as u64).is_some())
                .ok_or(overflow.clone())?;
            chunks.push(Chunk {
                offset,
                len: clen,
                gpa: Gpa(gpa),
            });
        }
        Ok(Self {
            host,
            mmap_offset,
            len,
            chunks,
        })
    }

    /// The chunks, in offset (and guest-physical) order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Bytes of shared memory.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn chunk_of(&self, offset: usize) -> Option<&Chunk> {
        let i = self.chunks.partition_point(|c| c.end() <= offset);
        self.chunks.get(i).filter(|c| c.offset <= offset)
    }

    /// Guest-physical address of byte `offset`.
    pub fn gpa(&self, offset: usize) -> Option<Gpa> {
        let c = self.chunk_of(offset)?;
        c.gpa.checked_add((offset - c.offset) as u64)
    }

    /// Offset of guest-physical address `gpa`, if some chunk holds it.
    pub fn offset_of_gpa(&self, gpa: Gpa) -> Option<usize> {
        self.chunks.iter().find_map(|c| {
            let rel = gpa.raw().checked_sub(c.gpa.raw())?;
            (rel < c.len as u64).then(|| c.offset + rel as usize)
        })
    }

    /// Front-end virtual address of byte `offset`.
    pub fn fva(&self, offset: usize) -> FrontendVa {
        FrontendVa(self.host + offset as u64)
    }

    /// The memory regions as SET_MEM_TABLE / ADD_MEM_REG carry them (all with the one fd).
    pub fn regions(&self) -> Vec<MemoryRegion> {
        self.chunks
            .iter()
            .map(|c| MemoryRegion {
                guest_phys_addr: c.gpa.raw(),
                memory_size: c.len as u64,
                userspace_addr: self.fva(c.offset).raw(),
                mmap_offset: self.mmap_offset + c.offset as u64,
            })
            .collect()
    }

    /// An [`Area`] of `len` bytes at `offset` (inside one chunk).
    fn area(&self, offset: usize, len: usize) -> Area {
        Area {
            offset,
            len,
            gpa: self.gpa(offset).unwrap_or_default(),
            fva: self.fva(offset),
        }
    }
}

/// A range of the shared memory in all three address spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Area {
    /// Offset in the shared memory (for `Shm::slice`).
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// Guest-physical address (what descriptors carry).
    pub gpa: Gpa,
    /// Front-end virtual address (what SET_VRING_ADDR carries).
    pub fva: FrontendVa,
}

/// Where one vring lives: for tests that write raw descriptors or play the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingInfo {
    /// The vring index (2 * pair for receive, 2 * pair + 1 for transmit).
    pub vring: u16,
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: Area,
    /// Available ring (with `used_event`).
    pub avail: Area,
    /// Used ring (with `avail_event`).
    pub used: Area,
}

/// A vring's rings and the slots of its buffers.
#[derive(Debug, Clone)]
pub(crate) struct VringPlan {
    pub info: RingInfo,
    pub slots: Box<[usize]>,
    pub slot_gpas: Box<[u64]>,
}

/// A bump allocator that never lets an object straddle two chunks.
struct Placer<'a> {
    layout: &'a MemLayout,
    next: usize,
}

impl Placer<'_> {
    fn place(
        &mut self,
        what: &'static str,
        len: usize,
        align: usize,
    ) -> Result<usize, LayoutError> {
        let too_small = || LayoutError::TooSmall {
            what,
            have: self.layout.len,
        };
        let mut off = self.next.next_multiple_of(align);
        loop {
            let c = self.layout.chunk_of(off).ok_or_else(too_small)?;
            if off + len <= c.end() {
                self.next = off + len;
                return Ok(off);
            }
            if len > c.len {
                return Err(LayoutError::LargerThanRegion {
                    what,
                    len,
                    chunk: c.len,
                });
            }
            off = c.end().next_multiple_of(align);
        }
    }
}

/// Places `vrings` rings of `size` entries, then `size` buffers of `buf_size` bytes per vring.
pub(crate) fn plan(
    layout: &MemLayout,
    vrings: u16,
    size: u16,
    buf_size: usize,
) -> Result<Vec<VringPlan>, LayoutError> {
    let mut p = Placer { layout, next: 0 };
    let (dl, al, ul) = split_ring_lengths(size);
    let mut plans = Vec::with_capacity(usize::from(vrings));
    for vring in 0..vrings {
        let desc = p.place("descriptor table", dl, CACHE_LINE)?;
        let avail = p.place("available ring", al, CACHE_LINE)?;
        let used = p.place("used ring", ul, CACHE_LINE)?;
        plans.push(VringPlan {
            info: RingInfo {
                vring,
                size,
                desc: layout.area(desc, dl),
                avail: layout.area(avail, al),
                used: layout.area(used, ul),
            },
            slots: Box::default(),
            slot_gpas: Box::default(),
        });
    }
    for plan in &mut plans {
        let slots = (0..size)
            .map(|_| p.place("buffer", buf_size, CACHE_LINE))
            .collect::<Result<Box<[usize]>, _>>()?;
        plan.slot_gpas = slots
            .iter()
            .map(|&o| layout.gpa(o).map_or(0, Gpa::raw))
            .collect();
        plan.slots = slots;
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u64 = 0x7f00_0000_0000;

    #[test]
    fn one_region_maps_gpa_and_fva_linearly() {
        let l = MemLayout::new(HOST, 0, 0x10000, 0x1000, 1, 0, 0).unwrap();
        assert_eq!(l.gpa(0x1234), Some(Gpa(0x1234)));
        assert_eq!(l.gpa(0x10000), None);
        assert_eq!(l.fva(0x10), FrontendVa(HOST + 0x10));
        assert_eq!(l.offset_of_gpa(Gpa(0xffff)), Some(0xffff));
        assert_eq!(l.offset_of_gpa(Gpa(0x10000)), None);
        let r = l.regions();
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0],
            MemoryRegion {
                guest_phys_addr: 0,
                memory_size: 0x10000,
                userspace_addr: HOST,
                mmap_offset: 0
            }
        );
    }

    #[test]
    fn regions_with_holes_and_remainder() {
        // 0x11000 bytes in 4 regions of 4 KiB pages: 0x4000 each, the last 0x5000.
        let l = MemLayout::new(HOST, 0x200000, 0x11000, 0x1000, 4, 0x1_0000_0000, 0x1000).unwrap();
        let r = l.regions();
        assert_eq!(r.len(), 4);
        assert_eq!(r[1].guest_phys_addr, 0x1_0000_5000);
        assert_eq!(r[1].userspace_addr, HOST + 0x4000);
        assert_eq!(r[1].mmap_offset, 0x204000);
        assert_eq!(r[3].memory_size, 0x5000);
        assert_eq!(l.gpa(0x4010), Some(Gpa(0x1_0000_5010)));
        assert_eq!(l.offset_of_gpa(Gpa(0x1_0000_5010)), Some(0x4010));
        assert_eq!(l.offset_of_gpa(Gpa(0x1_0000_4800)), None, "in the hole");
        assert!(MemLayout::new(HOST, 0, 0x3000, 0x1000, 4, 0, 0).is_err());
        assert!(MemLayout::new(HOST, 0, 0x3000, 0x1000, 0, 0, 0).is_err());
        assert!(MemLayout::new(HOST, 0, 0x4000, 0x1000, 2, u64::MAX - 0x1000, 0).is_err());
    }

    #[test]
    fn plan_keeps_objects_inside_one_region() {
        // Regions of 0x20000 bytes: 0x600-byte buffers do not divide them.
        let l = MemLayout::new(HOST, 0, 0x200000, 0x1000, 16, 0, 0x10_0000).unwrap();
        let plans = plan(&l, 2, 256, 0x600).unwrap();
        let chunk = |off: usize| off / 0x20000;
        for p in &plans {
            for a in [p.info.desc, p.info.avail, p.info.used] {
                assert_eq!(chunk(a.offset), chunk(a.offset + a.len - 1), "{a:?}");
                assert_eq!(a.offset % CACHE_LINE, 0);
                assert_eq!(l.offset_of_gpa(a.gpa), Some(a.offset));
            }
            assert_eq!(p.slots.len(), 256);
            for (&o, &g) in p.slots.iter().zip(p.slot_gpas.iter()) {
                assert_eq!(chunk(o), chunk(o + 0x600 - 1));
                assert_eq!(l.offset_of_gpa(Gpa(g)), Some(o));
            }
        }
        assert_eq!(plans[1].info.vring, 1);
        assert!(matches!(
            plan(&l, 2, 256, 0x30000),
            Err(LayoutError::LargerThanRegion { .. })
        ));
        assert!(matches!(
            plan(&l, 2, 1024, 0x800),
            Err(LayoutError::TooSmall { .. })
        ));
    }
}
