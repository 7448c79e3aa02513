//! The one module that touches the memory jobs copy: raw copies between IOVAs (IOVA = process
//! virtual address), entry by entry through scatter-gather lists.
//!
//! Nothing here makes a reference to job memory: a destination may be memory another party
//! (a guest, a device) also maps, so bytes are moved with `ptr::copy_nonoverlapping` only.

use std::ptr;

use crate::{DmaError, Sge};

/// Where a job's copy has got to: the current entry and the offset in it, on each side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    src: usize,
    src_off: u32,
    dst: usize,
    dst_off: u32,
}

/// Checks the two lists of a scatter-gather copy against `max_sges` and returns their common
/// total in bytes.
pub(crate) fn validate(src: &[Sge], dst: &[Sge], max_sges: u16) -> Result<u64, DmaError> {
    if src.is_empty() || dst.is_empty() {
        return Err(DmaError::EmptySgList);
    }
    let longest = src.len().max(dst.len());
    if longest > usize::from(max_sges) {
        return Err(DmaError::TooManySges {
            given: longest,
            max: max_sges,
        });
    }
    let total = |list: &[Sge]| list.iter().map(|e| u64::from(e.len)).sum::<u64>();
    let (s, d) = (total(src), total(dst));
    if s != d {
        return Err(DmaError::SgLengthMismatch { src: s, dst: d });
    }
    Ok(s)
}

/// The contiguous pieces of a scatter-gather copy: `(src, dst, len)`, zero-length entries
/// skipped. The lists have equal totals (validated), so there are at most
/// `src.len() + dst.len() - 1` pieces.
#[derive(Clone)]
pub(crate) struct Pieces<'a> {
    src: &'a [Sge],
    dst: &'a [Sge],
    si: usize,
    so: u32,
    di: usize,
    doff: u32,
}

impl<'a> Pieces<'a> {
    /// The pieces of `src -> dst`.
    pub(crate) fn new(src: &'a [Sge], dst: &'a [Sge]) -> Pieces<'a> {
        Pieces {
            src,
            dst,
            si: 0,
            so: 0,
            di: 0,
            doff: 0,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = (u64, u64, u32);

    fn next(&mut self) -> Option<(u64, u64, u32)> {
        while self.si < self.src.len() && self.so == self.src[self.si].len {
            (self.si, self.so) = (self.si + 1, 0);
        }
        while self.di < self.dst.len() && self.doff == self.dst[self.di].len {
            (self.di, self.doff) = (self.di + 1, 0);
        }
        let (s, d) = (self.src.get(self.si)?, self.dst.get(self.di)?);
        let n = (s.len - self.so).min(d.len - self.doff);
        let piece = (
            s.addr.0.wrapping_add(u64::from(self.so)),
            d.addr.0.wrapping_add(u64::from(self.doff)),
            n,
        );
        self.so += n;
        self.doff += n;
        Some(piece)
    }
}

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
///
/// `src..src + len` is valid for reads, `dst..dst + len` valid for writes, the two do not
/// overlap, and no other thread accesses the destination meanwhile; both addresses carry exposed
/// provenance (they came from [`Iova::from_ptr`](crate::Iova::from_ptr) or the like).
#[inline]
pub(crate) unsafe fn copy_raw(src: u64, dst: u64, len: usize) {
    if len == 0 {
        return;
    }
    let s = ptr::with_exposed_provenance::<u8>(src as usize);
    let d = ptr::with_exposed_provenance_mut::<u8>(dst as usize);
    // SAFETY: validity, non-overlap and exclusive access of both ranges are this function's
    // contract; `u8` has no alignment requirement.
    unsafe { ptr::copy_nonoverlapping(s, d, len) }
}

/// Copies at most `budget` more bytes of the job `src -> dst` from `cur`, advances `cur`, and
/// returns the number of bytes copied. Zero-length entries are skipped.
///
/// # Safety
///
/// The lists satisfy [`validate`] (equal totals), and every byte still to copy satisfies the
/// contract of [`copy_raw`] (which is the contract of
/// [`DmaEngine::copy_sg`](crate::DmaEngine::copy_sg) while the job is unreported).
pub(crate) unsafe fn copy_step(src: &[Sge], dst: &[Sge], cur: &mut Cursor, budget: u64) -> u64 {
    let mut done = 0u64;
    while done < budget && cur.src < src.len() && cur.dst < dst.len() {
        let (s, d) = (src[cur.src], dst[cur.dst]);
        let s_left = s.len - cur.src_off;
        if s_left == 0 {
            cur.src += 1;
            cur.src_off = 0;
            continue;
        }
        let d_left = d.len - cur.dst_off;
        if d_left == 0 {
            cur.dst += 1;
            cur.dst_off = 0;
            continue;
        }
        // Fits in u32: bounded by `s_left`.
        let n = u64::from(s_left.min(d_left)).min(budget - done) as u32;
        let from = s.addr.0.wrapping_add(u64::from(cur.src_off));
        let to = d.addr.0.wrapping_add(u64::from(cur.dst_off));
        // SAFETY: `from..from + n` lies in the unfinished part of source entry `cur.src` and
        // `to..to + n` in that of destination entry `cur.dst` (n <= what is left of each), which
        // the caller guarantees are valid, disjoint and exclusively ours.
        unsafe { copy_raw(from, to, n as usize) };
        cur.src_off += n;
        cur.dst_off += n;
        done += u64::from(n);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Iova;

    #[test]
    fn steps_across_entries_with_any_budget() {
        let src: Vec<u8> = (0..100u8).collect();
        for budget in [1u64, 3, 7, 40, 100, u64::MAX] {
            let mut dst = vec![0u8; 110];
            let s = Iova::from_ptr(src.as_ptr());
            let d = Iova::from_mut_ptr(dst.as_mut_ptr());
            let sl = [Sge::new(s, 0), Sge::new(s, 30), Sge::new(s.add(30), 70)];
            let dl = [Sge::new(d, 45), Sge::new(d, 0), Sge::new(d.add(55), 55)];
            assert_eq!(validate(&sl, &dl, 3).unwrap(), 100);
            let mut cur = Cursor::default();
            let mut total = 0;
            while total < 100 {
                // SAFETY: both vectors outlive the loop and are only read after it.
                let n = unsafe { copy_step(&sl, &dl, &mut cur, budget) };
                assert!(n > 0 && n <= budget);
                total += n;
            }
            assert_eq!(total, 100);
            assert_eq!(&dst[..45], &src[..45]);
            assert_eq!(&dst[45..55], &[0; 10]);
            assert_eq!(&dst[55..], &src[45..]);
        }
    }

    #[test]
    fn validate_rejects_bad_lists() {
        let e = Sge::new(Iova(0x1000), 8);
        assert!(matches!(validate(&[], &[e], 4), Err(DmaError::EmptySgList)));
        assert!(matches!(
            validate(&[e; 5], &[Sge::new(Iova(0), 40)], 4),
            Err(DmaError::TooManySges { given: 5, max: 4 })
        ));
        assert!(matches!(
            validate(&[e], &[Sge::new(Iova(0), 9)], 4),
            Err(DmaError::SgLengthMismatch { src: 8, dst: 9 })
        ));
    }
}
