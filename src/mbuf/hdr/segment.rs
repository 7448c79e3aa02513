//! Views of the segments of an [`Mbuf`] and the chain builder of clones and copies.
//!
//! A `Segment` / `SegmentMut` pairs a header with a shared / exclusive borrow of its `seg`,
//! made only by the `Mbuf` that owns the chain (invariant 2 of the parent module), so their
//! methods are safe.

use std::marker::PhantomData;
use std::slice;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use super::super::error::MbufError;
use super::super::meta::PktMeta;
use super::{Hdr, Mbuf, Seg};

/// One segment of an mbuf, read-only ([`Mbuf::segments`]).
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    pub(super) hdr: Hdr,
    pub(super) seg: &'a Seg,
}

impl<'a> Segment<'a> {
    /// Bytes of data in this segment.
    #[inline]
    pub fn data_len(&self) -> usize {
        self.seg.data_len as usize
    }

    /// Head segment: the packet length (all segments). Other segments: their own count at the
    /// time they were chained.
    #[inline]
    pub fn pkt_len(&self) -> usize {
        self.seg.pkt_len as usize
    }

    /// Head segment: the number of segments in the chain.
    #[inline]
    pub fn nb_segs(&self) -> usize {
        self.seg.nb_segs as usize
    }

    /// Size of the buffer (room or external buffer).
    #[inline]
    pub fn buf_len(&self) -> usize {
        self.seg.buf_len as usize
    }

    /// Free bytes before the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.seg.data_off as usize
    }

    /// Free bytes after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        (self.seg.buf_len - self.seg.data_off - self.seg.data_len) as usize
    }

    /// The data.
    #[inline]
    pub fn data(&self) -> &'a [u8] {
        // SAFETY: invariant 3: the window is inside an initialized buffer this segment holds a
        // reference to, which lasts while the chain is borrowed for 'a; invariant 4: nobody
        // writes a buffer while another reference to it (ours) exists.
        unsafe {
            slice::from_raw_parts(
                self.seg.buf_addr.add(self.seg.data_off as usize),
                self.seg.data_len as usize,
            )
        }
    }

    /// IOVA of the first data byte (the buffer is IOVA-contiguous).
    #[inline]
    pub fn iova(&self) -> u64 {
        self.seg.buf_iova + u64::from(self.seg.data_off)
    }

    /// Whether this segment holds the only reference to its buffer, so its data may be written.
    #[inline]
    pub fn is_writable(&self) -> bool {
        match (self.seg.ext, self.seg.direct) {
            (Some(e), _) => e.is_exclusive(),
            // Acquire: pairs with the Release decrements of other references (see
            // `Hdr::release`), so their reads happen-before our writes.
            (None, Some(d)) => d.refcnt().load(Acquire) == 1,
            (None, None) => self.hdr.refcnt().load(Acquire) == 1,
        }
    }

    /// References to this segment's buffer (1 when it is not shared).
    pub fn buf_refcnt(&self) -> u32 {
        match (self.seg.ext, self.seg.direct) {
            (Some(e), _) => e.count(),
            (None, Some(d)) => d.refcnt().load(Relaxed),
            (None, None) => self.hdr.refcnt().load(Relaxed),
        }
    }

    /// Whether this segment is a clone attached to another mbuf's room (an indirect mbuf).
    #[inline]
    pub fn is_clone(&self) -> bool {
        self.seg.direct.is_some()
    }

    /// Whether this segment's data is an external buffer.
    #[inline]
    pub fn has_extbuf(&self) -> bool {
        self.seg.ext.is_some()
    }

    /// The packet metadata (meaningful on the head segment).
    #[inline]
    pub fn meta(&self) -> &'a PktMeta {
        &self.seg.meta
    }
}

/// One segment of an mbuf, for writing ([`Mbuf::segments_mut`]).
pub struct SegmentMut<'a> {
    pub(super) hdr: Hdr,
    pub(super) seg: &'a mut Seg,
}

impl<'a> SegmentMut<'a> {
    /// The segment's read-only view.
    #[inline]
    pub fn as_segment(&self) -> Segment<'_> {
        Segment {
            hdr: self.hdr,
            seg: self.seg,
        }
    }

    /// The data, for writing; [`MbufError::Shared`] if other mbufs reference the buffer.
    #[inline]
    pub fn data_mut(&mut self) -> Result<&mut [u8], MbufError> {
        self.reborrow().into_data_mut()
    }

    /// [`data_mut`](Self::data_mut), for the whole borrow of the mbuf.
    #[inline]
    pub fn into_data_mut(self) -> Result<&'a mut [u8], MbufError> {
        if !self.as_segment().is_writable() {
            return Err(MbufError::Shared);
        }
        // SAFETY: invariant 3 as in `Segment::data`; we hold the buffer's only reference and
        // the chain exclusively for 'a, so nobody else reads or writes these bytes
        // (invariant 4).
        Ok(unsafe {
            slice::from_raw_parts_mut(
                self.seg.buf_addr.add(self.seg.data_off as usize),
                self.seg.data_len as usize,
            )
        })
    }

    /// Extends the data by `n` bytes of tailroom and returns them, for writing (left as they
    /// were); [`MbufError::NoTailroom`] or [`MbufError::Shared`] change nothing. Sets the
    /// head's `pkt_len` to `pkt_len` if given (this segment is the head).
    #[inline]
    pub(in crate::mbuf) fn grow(
        self,
        n: usize,
        pkt_len: Option<u32>,
    ) -> Result<&'a mut [u8], MbufError> {
        let s = self.as_segment();
        let room = s.tailroom();
        if n > room {
            return Err(MbufError::NoTailroom {
                requested: n,
                available: room,
            });
        }
        if !s.is_writable() {
            return Err(MbufError::Shared);
        }
        // SAFETY: `n` is at most the tailroom (checked above) and the buffer has no other
        // reference (`is_writable`).
        Ok(unsafe { self.extend(n, pkt_len) })
    }

    /// [`grow`](Self::grow) of a head segment whose buffer is known to have no other
    /// reference (no writability check): `n` bytes of tailroom (`None`, nothing changed, if
    /// there are fewer), the data and packet lengths grown by `n`.
    ///
    /// # Safety
    ///
    /// This is the head of a one-segment mbuf whose buffer has no other reference (invariant
    /// 4 with the refcount at 1: a fresh mbuf's, never cloned or attached since).
    #[inline(always)]
    pub(in crate::mbuf) unsafe fn grow_exclusive(self, n: usize) -> Option<&'a mut [u8]> {
        let s = self.as_segment();
        if n > s.tailroom() {
            return None;
        }
        // One segment: the packet is its data. At most `buf_len`, a u32 (the tailroom).
        let pkt_len = (s.data_len() + n) as u32;
        // SAFETY: `n` is at most the tailroom (checked above); the caller vouches the buffer
        // has no other reference.
        Some(unsafe { self.extend(n, Some(pkt_len)) })
    }

    /// The last step of [`grow`](Self::grow) and [`grow_exclusive`](Self::grow_exclusive):
    /// the data extended by `n` bytes (and the head's `pkt_len` set if given), those bytes
    /// returned for writing.
    ///
    /// # Safety
    ///
    /// `n` is at most the tailroom, and this segment holds its buffer's only reference.
    #[inline(always)]
    unsafe fn extend(self, n: usize, pkt_len: Option<u32>) -> &'a mut [u8] {
        let (off, len) = (self.seg.data_off as usize, self.seg.data_len as usize);
        // At most `buf_len` (a u32): the window stays in the buffer.
        self.seg.data_len = (len + n) as u32;
        if let Some(l) = pkt_len {
            self.seg.pkt_len = l;
        }
        // SAFETY: `off + len + n <= buf_len` (`n` is at most the tailroom: the caller's
        // contract), so the bytes are in the buffer this segment holds a reference to
        // (invariant 3); it is the only one (the caller's contract) and we hold the chain
        // exclusively for 'a (invariant 4), as in `into_data_mut`.
        unsafe { slice::from_raw_parts_mut(self.seg.buf_addr.add(off + len), n) }
    }

    #[inline]
    fn reborrow(&mut self) -> SegmentMut<'_> {
        SegmentMut {
            hdr: self.hdr,
            seg: self.seg,
        }
    }

    /// The packet metadata, for writing.
    #[inline]
    pub(in crate::mbuf) fn into_meta_mut(self) -> &'a mut PktMeta {
        &mut self.seg.meta
    }

    /// Moves the data window to `data_off..data_off + data_len` (must stay in the buffer).
    #[inline]
    pub(in crate::mbuf) fn set_window(&mut self, data_off: usize, data_len: usize) {
        assert!(
            data_off + data_len <= self.seg.buf_len as usize,
            "window within the buffer"
        );
        // Both fit: they are at most buf_len, a u32.
        self.seg.data_off = data_off as u32;
        self.seg.data_len = data_len as u32;
    }

    /// Sets the head's packet length (checked against u32).
    #[inline]
    pub(in crate::mbuf) fn set_pkt_len(&mut self, pkt_len: usize) -> Result<(), MbufError> {
        self.seg.pkt_len = u32::try_from(pkt_len).map_err(|_| MbufError::PktLenOverflow)?;
        Ok(())
    }
}

/// Iterator over the segments of an mbuf.
pub struct Segments<'a> {
    pub(super) next: Option<Hdr>,
    pub(super) _chain: PhantomData<&'a Mbuf>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    #[inline]
    fn next(&mut self) -> Option<Segment<'a>> {
        let hdr = self.next?;
        // SAFETY: `hdr` is in the chain of the `Mbuf` borrowed shared for 'a (invariant 2).
        let seg = unsafe { hdr.seg() };
        self.next = seg.next;
        Some(Segment { hdr, seg })
    }
}

/// Iterator over the segments of an mbuf, for writing.
pub struct SegmentsMut<'a> {
    pub(super) next: Option<Hdr>,
    pub(super) _chain: PhantomData<&'a mut Mbuf>,
}

impl<'a> Iterator for SegmentsMut<'a> {
    type Item = SegmentMut<'a>;

    #[inline]
    fn next(&mut self) -> Option<SegmentMut<'a>> {
        let hdr = self.next?;
        // SAFETY: `hdr` is in the chain of the `Mbuf` borrowed exclusively for 'a, and each
        // header is yielded once (chains have no cycles, invariant 2), so the `&mut`s are
        // disjoint.
        let seg = unsafe { hdr.seg_mut() };
        self.next = seg.next;
        Some(SegmentMut { hdr, seg })
    }
}

/// Builds a chain from single-segment mbufs (for clones and copies). Dropping it frees what
/// was pushed.
pub(in crate::mbuf) struct ChainBuilder {
    head: Option<Mbuf>,
    tail: Option<Hdr>,
    pkt_len: u64,
    nb_segs: u32,
}

impl ChainBuilder {
    pub(in crate::mbuf) fn new() -> Self {
        ChainBuilder {
            head: None,
            tail: None,
            pkt_len: 0,
            nb_segs: 0,
        }
    }

    /// Appends `m`, a single segment.
    pub(in crate::mbuf) fn push(&mut self, m: Mbuf) {
        debug_assert!(m.head().seg.next.is_none());
        self.pkt_len += m.head().seg.data_len as u64;
        self.nb_segs += 1;
        let h = m.into_head();
        match self.tail {
            // SAFETY: `t` is the last header of the chain owned by `self.head`, which nothing
            // else can reach while the builder is borrowed exclusively.
            Some(t) => unsafe { t.seg_mut() }.next = Some(h),
            None => self.head = Some(Mbuf { head: h }),
        }
        self.tail = Some(h);
    }

    /// Segments pushed so far.
    pub(in crate::mbuf) fn nb_segs(&self) -> u32 {
        self.nb_segs
    }

    /// The chain, with the head's `pkt_len`, `nb_segs` and metadata set, or `None` if nothing
    /// was pushed. The caller keeps `nb_segs <= u16::MAX` and `pkt_len <= u32::MAX`.
    pub(in crate::mbuf) fn finish(mut self, meta: PktMeta) -> Option<Mbuf> {
        let mut m = self.head.take()?;
        let head = m.head_mut();
        head.seg.pkt_len = u32::try_from(self.pkt_len).expect("caller bounds pkt_len");
        head.seg.nb_segs = u16::try_from(self.nb_segs).expect("caller bounds nb_segs");
        head.seg.meta = meta;
        Some(m)
    }
}
