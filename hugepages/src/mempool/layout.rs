//! Where the objects of one region go: the object stride and the IOVA-contiguity unit.
//!
//! Object `j` of a region starts at byte `(j / per_unit) * unit + (j % per_unit) * stride`.
//! A *unit* is a span of the region whose IOVAs are contiguous: one page when IOVA = PA (or when
//! pages are huge, as DPDK does), or just one object when IOVA = VA on 4 KiB pages (then objects
//! are packed back to back: `per_unit = 1`, `unit = stride`). No object crosses a unit boundary,
//! so every object is IOVA-contiguous.

use crate::region::{IovaMode, PageSize};

/// The placement of objects in a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Bytes from one object to the next within a unit (element size rounded up to the
    /// alignment).
    pub(crate) stride: usize,
    /// Objects per unit (at least 1).
    pub(crate) per_unit: usize,
    /// Bytes per unit: a page, or `stride` when packed.
    pub(crate) unit: usize,
}

impl Layout {
    /// The layout for objects of `stride` bytes in a region of `page_size` pages with
    /// `iova_mode`, or `None` if an object does not fit in one contiguity unit (a page).
    pub(crate) fn new(stride: usize, page_size: PageSize, iova_mode: IovaMode) -> Option<Layout> {
        debug_assert!(stride > 0);
        if !page_size.is_huge() && iova_mode == IovaMode::Va {
            return Some(Layout {
                stride,
                per_unit: 1,
                unit: stride,
            });
        }
        let unit = page_size.bytes();
        let per_unit = unit / stride;
        (per_unit > 0).then_some(Layout {
            stride,
            per_unit,
            unit,
        })
    }

    /// How many objects fit in `len` bytes.
    pub(crate) fn capacity(&self, len: usize) -> usize {
        let full = len / self.unit;
        let rest = (len % self.unit) / self.stride;
        full.saturating_mul(self.per_unit)
            .saturating_add(rest.min(self.per_unit))
    }

    /// Bytes needed for `count` objects (not rounded to the page size), or `None` on overflow.
    pub(crate) fn bytes_for(&self, count: usize) -> Option<usize> {
        let full = count / self.per_unit;
        let rest = count % self.per_unit;
        full.checked_mul(self.unit)?
            .checked_add(rest.checked_mul(self.stride)?)
    }

    /// Byte offset of object `j`.
    #[inline]
    pub(crate) fn offset_of(&self, j: usize) -> usize {
        (j / self.per_unit) * self.unit + (j % self.per_unit) * self.stride
    }

    /// Index of the object starting at byte offset `off`, if an object starts there.
    #[inline]
    pub(crate) fn index_at(&self, off: usize) -> Option<usize> {
        let within = off % self.unit;
        let k = within / self.stride;
        (within % self.stride == 0 && k < self.per_unit)
            .then(|| (off / self.unit) * self.per_unit + k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_on_small_va() {
        let l = Layout::new(2304, PageSize::Small, IovaMode::Va).unwrap();
        assert_eq!((l.per_unit, l.unit), (1, 2304));
        assert_eq!(l.offset_of(3), 3 * 2304);
        assert_eq!(l.capacity(10_000), 4);
        assert_eq!(l.bytes_for(4), Some(4 * 2304));
        assert_eq!(l.index_at(2304 * 2), Some(2));
        assert_eq!(l.index_at(2304 * 2 + 64), None);
        // Larger than a page is fine: IOVA = VA is contiguous.
        assert!(Layout::new(3 * 4096, PageSize::Small, IovaMode::Va).is_some());
    }

    #[test]
    fn per_page_on_small_pa_and_huge() {
        let l = Layout::new(1536, PageSize::Small, IovaMode::Pa).unwrap();
        assert_eq!((l.per_unit, l.unit), (2, 4096));
        assert_eq!(l.offset_of(0), 0);
        assert_eq!(l.offset_of(1), 1536);
        assert_eq!(l.offset_of(2), 4096);
        assert_eq!(l.offset_of(5), 2 * 4096 + 1536);
        assert_eq!(l.capacity(3 * 4096), 6);
        assert_eq!(l.capacity(3 * 4096 + 1600), 7);
        assert_eq!(l.bytes_for(5), Some(2 * 4096 + 1536));
        for j in 0..10 {
            assert_eq!(l.index_at(l.offset_of(j)), Some(j));
            let end = l.offset_of(j) + l.stride - 1;
            assert_eq!(
                l.offset_of(j) / 4096,
                end / 4096,
                "object {j} crosses a page"
            );
        }
        assert_eq!(l.index_at(3072), None, "tail of a page holds no object");
        assert!(Layout::new(4097, PageSize::Small, IovaMode::Pa).is_none());

        let h = Layout::new(2304, PageSize::Huge2M, IovaMode::Va).unwrap();
        assert_eq!(h.per_unit, (2 << 20) / 2304);
        assert_eq!(h.offset_of(h.per_unit), 2 << 20);
        assert!(Layout::new(3 << 20, PageSize::Huge2M, IovaMode::Pa).is_none());
    }
}
