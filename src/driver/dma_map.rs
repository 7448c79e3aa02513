//! The IOMMU map of a device's guest memory, for the copy devices of its async channels
//! (DPDK's `async_dma_map` in `lib/vhost/vhost_user.c`).
//!
//! A socket registered with [`Flags::ASYNC_COPY`](super::Flags::ASYNC_COPY) may be given a
//! [`DmaMapper`] ([`Driver::set_dma_mapper`](super::Driver::set_dma_mapper)). Each of its
//! devices then keeps every region of its memory table mapped through it, IOVA = the backend's
//! virtual address of the region's first byte, length = the region's size:
//!
//! - a region is mapped when a table naming it is installed (SET_MEM_TABLE, ADD_MEM_REG),
//!   before any vring sees the table, so before any job can name it;
//! - it is unmapped when it leaves the table (a new SET_MEM_TABLE, the last REM_MEM_REG of it,
//!   RESET_OWNER, the connection's end) only after every vring of the device holds the new
//!   table: the dispatcher drained every async channel first (the handler table's
//!   `AllQueues` rows, and `stop_device`), and installing a table on a vring drains again,
//!   under the vring's lock, what a burst submitted since (`Vring::set_memory`), so no job in
//!   flight names the region and no later one can;
//! - a region the new table shares with the old one (an identical SET_MEM_TABLE, a duplicate
//!   ADD_MEM_REG, a REM_MEM_REG that leaves references) is the same [`GuestRegion`] and is
//!   neither mapped again nor unmapped.
//!
//! The map holds each mapped region (its `Arc`) until it is unmapped, so the memory stays
//! mapped in this process for as long as the IOMMU maps it (the [`DmaMapper::map`] contract),
//! and a virtual address range is never reused by another mapping while the IOMMU still
//! holds it. Two regions mapped at once never overlap (each is its own `mmap`), whatever
//! device or socket they belong to: one mapper may serve many devices.

use std::sync::Arc;

use rvhost_dma::hw::DmaMapper;
use rvhost_dma::{DmaError, Iova};
use thiserror::Error;

use crate::memory::{GuestMemory, GuestRegion, RegionDesc};

/// A guest region the mapper refused: the memory change is refused with it.
#[derive(Debug, Error)]
#[error("DMA map of region {desc} (host VA {va:#x}, {len:#x} bytes) for the copy devices")]
pub struct DmaMapError {
    /// The region.
    pub desc: RegionDesc,
    /// Its host virtual address (= IOVA).
    pub va: usize,
    /// Its length.
    pub len: usize,
    /// What the mapper said.
    #[source]
    pub source: DmaError,
}

/// The regions of one device mapped through its socket's mapper.
pub(crate) struct DmaMap {
    mapper: Arc<dyn DmaMapper>,
    mapped: Vec<Arc<GuestRegion>>,
}

impl DmaMap {
    pub fn new(mapper: Arc<dyn DmaMapper>) -> DmaMap {
        DmaMap {
            mapper,
            mapped: Vec::new(),
        }
    }

    fn is_mapped(&self, r: &Arc<GuestRegion>) -> bool {
        self.mapped.iter().any(|m| Arc::ptr_eq(m, r))
    }

    /// Maps the regions of `mem` not mapped yet. On a failure, the ones this call mapped are
    /// unmapped again (nothing half-mapped) and the error names the region refused.
    pub fn map_new(&mut self, mem: &GuestMemory) -> Result<(), DmaMapError> {
        let before = self.mapped.len();
        for r in mem.regions() {
            if self.is_mapped(r) {
                continue;
            }
            let (va, len) = (r.host_ptr(), r.size() as usize);
            // SAFETY: `va..va + len` is the region's mapping (`GuestRegion::map` checked it
            // against its fd), which stays mapped while `self.mapped` holds its `Arc`: until
            // after `unmap` below. Guest memory is only ever accessed through raw volatile or
            // atomic operations (`GuestSlice`), never through Rust references.
            let res = unsafe { self.mapper.map(Iova::from_ptr(va), va, len) };
            if let Err(source) = res {
                for r in self.mapped.drain(before..) {
                    self.mapper
                        .unmap(Iova::from_ptr(r.host_ptr()), r.size() as usize);
                }
                return Err(DmaMapError {
                    desc: *r.desc(),
                    va: va as usize,
                    len,
                    source,
                });
            }
            log::debug!("DMA-mapped region {} at {va:p}+{len:#x}", r.desc());
            self.mapped.push(Arc::clone(r));
        }
        Ok(())
    }

    /// Unmaps the regions not in `mem`. Call only once no job in flight or to come can name
    /// them (see the [module documentation](self)).
    pub fn unmap_stale(&mut self, mem: &GuestMemory) {
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.mapped)
            .into_iter()
            .partition(|m| mem.regions().any(|r| Arc::ptr_eq(m, r)));
        self.mapped = keep;
        for r in gone {
            let (va, len) = (r.host_ptr(), r.size() as usize);
            self.mapper.unmap(Iova::from_ptr(va), len);
            log::debug!("DMA-unmapped region {} at {va:p}+{len:#x}", r.desc());
            // `r` (maybe the region's last reference: then it is unmapped here) goes now.
        }
    }

    /// How many regions are mapped.
    pub fn len(&self) -> usize {
        self.mapped.len()
    }
}

impl Drop for DmaMap {
    /// Unmaps what is left. The connection's end unmapped everything already (`stop_device`
    /// installs the empty table); this only matters for a state dropped without it.
    fn drop(&mut self) {
        for r in self.mapped.drain(..) {
            self.mapper
                .unmap(Iova::from_ptr(r.host_ptr()), r.size() as usize);
        }
    }
}
