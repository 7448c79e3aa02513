//! The regions of a [`Mempool`](super::Mempool): creating them and placing objects in them.

use std::ptr::NonNull;

use crate::region::{HugepageStatus, IovaMode, PageSize, Region, RegionConfig};

use super::layout::Layout;
use super::{MempoolConfig, MempoolError, ObjPtr};

/// One region of a pool and the objects in it.
pub(super) struct PoolRegion {
    pub(super) region: Region,
    pub(super) layout: Layout,
    /// Pool-wide index of the region's first object.
    pub(super) first: usize,
    /// Objects in this region.
    pub(super) count: usize,
    /// Address of the region's first byte.
    pub(super) lo: usize,
    /// Bytes from `lo` to the end of the last object.
    pub(super) span: usize,
}

impl PoolRegion {
    pub(super) fn new(region: Region, layout: Layout, first: usize, count: usize) -> PoolRegion {
        let lo = region.as_ptr() as usize;
        let span = layout.offset_of(count - 1) + layout.stride;
        PoolRegion {
            region,
            layout,
            first,
            count,
            lo,
            span,
        }
    }

    /// Whether `addr` lies in this region's object area.
    #[inline]
    pub(super) fn covers(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.lo) < self.span
    }

    pub(super) fn obj(&self, j: usize) -> ObjPtr {
        debug_assert!(j < self.count);
        let addr = self.region.as_ptr().wrapping_add(self.layout.offset_of(j));
        ObjPtr(NonNull::new(addr).expect("region addresses are non-null"))
    }
}

/// Creates regions until they hold `config.count` objects of `stride` bytes.
pub(super) fn create_regions(
    config: &MempoolConfig,
    stride: usize,
    status: &dyn Fn(PageSize) -> Option<HugepageStatus>,
) -> Result<Vec<PoolRegion>, MempoolError> {
    let overflow = || MempoolError::SizeOverflow {
        count: config.count,
        stride,
    };
    // Size the first region for the preferred page size; later ones for what the previous
    // region turned out to be.
    let page = config.region.page_size.unwrap_or(PageSize::Huge2M);
    let packed = Layout::new(stride, PageSize::Small, IovaMode::Va).expect("packing always fits");
    let mut guess = match config.region.iova_mode {
        Some(IovaMode::Va) if !page.is_huge() => packed,
        mode => Layout::new(stride, page, mode.unwrap_or(IovaMode::Pa)).unwrap_or(packed),
    };
    let mut regions = Vec::new();
    let mut placed = 0;
    while placed < config.count {
        let remaining = config.count - placed;
        let mut size = guess.bytes_for(remaining).ok_or_else(overflow)?;
        if let Some(max) = config.max_region_size {
            size = size.min(max);
        }
        let index = regions.len();
        let region_config = RegionConfig {
            size,
            name: if index == 0 {
                config.name.clone()
            } else {
                format!("{}.{index}", config.name)
            },
            ..config.region.clone()
        };
        let region = Region::new_with_status(&region_config, status).map_err(|source| {
            MempoolError::Region {
                name: config.name.clone(),
                index,
                source,
            }
        })?;
        let layout = Layout::new(stride, region.page_size(), region.iova_mode()).ok_or(
            MempoolError::ObjectTooLarge {
                stride,
                page_size: region.page_size(),
                iova_mode: region.iova_mode(),
            },
        )?;
        let n = layout.capacity(region.len()).min(remaining);
        if n == 0 {
            return Err(MempoolError::RegionTooSmall {
                region_len: region.len(),
                stride,
            });
        }
        regions.push(PoolRegion::new(region, layout, placed, n));
        placed += n;
        guess = layout;
    }
    Ok(regions)
}
