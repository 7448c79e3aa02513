//! The mbuf header, its place in a pool object, and every raw access to it.
//!
//! The raw code of the mbuf module lives here and in [`segment`] (the segment views), plus the
//! type-erased shared info of `ext.rs`; `pool.rs` only calls into them (`Mbuf::from_fresh`,
//! unchecked puts of freed headers) under their stated contracts.
//!
//! # Object layout
//!
//! ```text
//! one mempool object (HDR_SIZE + data_room bytes, cache-line aligned, IOVA-contiguous)
//! +------------------+----------------------------------------------------------+
//! | MbufHdr (128 B)  | room: headroom (128 B by default) | data ... | tailroom   |
//! +------------------+----------------------------------------------------------+
//! ^ ObjPtr            ^ room = obj + HDR_SIZE, room_len = data_room, room_iova
//! ```
//!
//! A header has three parts:
//!
//! * fixed at pool creation and never written again: `pool`, `room_len`, `room_iova`. Anyone
//!   holding a reference to the header may read them;
//! * `refcnt`, atomic: the references to this object, i.e. 1 for the chain that owns the
//!   header plus 1 per clone attached to its room. An orphan (its owner freed it while clones
//!   live) is owned by nobody and goes back to the pool when the last clone lets go. Free
//!   objects in the pool have `refcnt == 1`;
//! * `seg`, the segment state (`rte_mbuf` fields: buffer, data window, chain, metadata), in an
//!   `UnsafeCell` and accessed only by the chain that owns the header.
//!
//! # Invariants
//!
//! 1. A [`Hdr`] is only held for a header that is out of its pool. A `PktPool` leaks its memory
//!    rather than unmap it while objects are out, so a `Hdr`'s fixed part, its `refcnt` and its
//!    pool are always readable.
//! 2. A header's `seg` is accessed only through the [`Mbuf`] whose chain holds it (`&Mbuf`:
//!    shared, `&mut Mbuf`: exclusive) or by [`release_chain`] after that `Mbuf` is consumed. Chains
//!    have no cycles and no header is in two chains (`chain` takes the tail by value).
//! 3. `data_off + data_len <= buf_len`, and `buf_addr .. buf_addr + buf_len` is initialized
//!    memory the segment holds a counted reference to: its own room (`refcnt`), the room of
//!    the direct header it is attached to (that header's `refcnt`), or an external buffer
//!    (its shared count).
//! 4. A buffer is written only through a segment holding its only reference (count 1): then no
//!    other segment, in any thread, can read it.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, fence};

use rvhost_hugepages::mempool::{Mempool, ObjPtr};

mod segment;

use super::error::{AttachError, ChainError, MbufError};
use super::ext::{ExtBuf, ExtRef};
use super::meta::PktMeta;

pub(super) use segment::ChainBuilder;
pub use segment::{Segment, SegmentMut, Segments, SegmentsMut};

/// Bytes of the header at the start of every pool object (two cache lines, like `rte_mbuf`).
pub const HDR_SIZE: usize = 128;
/// Headroom of a freshly allocated mbuf (`RTE_PKTMBUF_HEADROOM`).
pub const PKTMBUF_HEADROOM: usize = 128;

#[repr(C, align(64))]
pub(super) struct MbufHdr {
    refcnt: AtomicU32,
    room_len: u32,
    room_iova: u64,
    pool: *const Mempool,
    seg: UnsafeCell<Seg>,
}

const _: () = assert!(size_of::<MbufHdr>() == HDR_SIZE);

/// The per-segment state (the owner's part of the header).
pub(super) struct Seg {
    buf_addr: *mut u8,
    buf_iova: u64,
    next: Option<Hdr>,
    /// The header whose room `buf_addr` is in, for a clone (an indirect mbuf).
    direct: Option<Hdr>,
    /// The external buffer `buf_addr` is, if any.
    ext: Option<ExtRef>,
    buf_len: u32,
    data_off: u32,
    data_len: u32,
    /// Head segment only: the sum of `data_len` over the chain.
    pkt_len: u32,
    /// Head segment only: segments in the chain.
    nb_segs: u16,
    meta: PktMeta,
}

impl Seg {
    /// A direct segment on its own room, empty, with the default headroom.
    fn fresh(room: *mut u8, room_iova: u64, room_len: u32) -> Seg {
        Seg {
            buf_addr: room,
            buf_iova: room_iova,
            next: None,
            direct: None,
            ext: None,
            buf_len: room_len,
            data_off: room_len.min(PKTMBUF_HEADROOM as u32),
            data_len: 0,
            pkt_len: 0,
            nb_segs: 1,
            meta: PktMeta::default(),
        }
    }
}

/// A pointer to a header out of its pool (invariant 1).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Hdr(NonNull<MbufHdr>);

impl Hdr {
    /// Writes the fixed part and a fresh segment into a new object of a packet pool.
    ///
    /// # Safety
    ///
    /// `obj` is an object of `pool` (at least `HDR_SIZE` bytes, 64-byte aligned, IOVA-contiguous)
    /// that nobody else can access yet (pool creation).
    pub(super) unsafe fn init(obj: ObjPtr, pool: &Mempool, room_len: u32) {
        let room = obj.as_ptr().wrapping_add(HDR_SIZE);
        let room_iova =
            pool.iova_of(obj.as_ptr()).expect("objects are in the pool") + HDR_SIZE as u64;
        let hdr = MbufHdr {
            refcnt: AtomicU32::new(1),
            room_len,
            room_iova,
            pool,
            seg: UnsafeCell::new(Seg::fresh(room, room_iova, room_len)),
        };
        // SAFETY: the object is ours, large and aligned enough for a header (caller).
        unsafe { obj.cast::<MbufHdr>().write(hdr) };
    }

    #[inline(always)]
    fn get(&self) -> &MbufHdr {
        // SAFETY: invariant 1: the header is mapped. The shared reference covers fields that
        // are immutable or atomic, and `seg`, which is inside an `UnsafeCell`.
        unsafe { self.0.as_ref() }
    }

    /// The reference count of this object.
    #[inline(always)]
    fn refcnt(&self) -> &AtomicU32 {
        &self.get().refcnt
    }

    /// The pool the header belongs to.
    #[inline]
    pub(super) fn pool_ptr(self) -> *const Mempool {
        self.get().pool
    }

    /// The object (for a put back into the pool).
    #[inline]
    pub(super) fn obj(self) -> ObjPtr {
        ObjPtr::new(self.0.cast())
    }

    #[inline(always)]
    fn room(self) -> *mut u8 {
        self.0.as_ptr().cast::<u8>().wrapping_add(HDR_SIZE)
    }

    #[inline(always)]
    fn fresh_seg(self) -> Seg {
        let h = self.get();
        Seg::fresh(self.room(), h.room_iova, h.room_len)
    }

    /// # Safety
    ///
    /// The caller may read this header's `seg` for `'a` (invariant 2) and nobody writes it
    /// meanwhile.
    #[inline(always)]
    unsafe fn seg<'a>(self) -> &'a Seg {
        // SAFETY: the header is mapped (invariant 1); shared access per the caller.
        unsafe { &*self.get().seg.get() }
    }

    /// # Safety
    ///
    /// The caller has exclusive access to this header's `seg` for `'a` (invariant 2).
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    unsafe fn seg_mut<'a>(self) -> &'a mut Seg {
        // SAFETY: the header is mapped (invariant 1); exclusive access per the caller.
        unsafe { &mut *self.get().seg.get() }
    }

    /// Takes one more reference to this object's room (a clone attaches to it).
    fn acquire(self) {
        // Relaxed: as `Arc::clone`: made from a live reference, so the count cannot reach zero
        // meanwhile; nothing is handed over.
        let old = self.refcnt().fetch_add(1, Relaxed);
        if old > u32::MAX / 2 {
            std::process::abort();
        }
    }

    /// Drops one reference; if it was the last, hands the header to `put`.
    #[inline]
    fn release(self, put: &mut impl FnMut(Freed)) {
        let rc = self.refcnt();
        // Acquire: pairs with the Release decrements of references dropped on other threads,
        // so their reads of the room happen-before the next owner's writes.
        let last = if rc.load(Acquire) == 1 {
            // The only reference is ours: nobody can take another one. Free objects keep 1.
            true
        } else if rc.fetch_sub(1, Release) == 1 {
            // Acquire: as above, for the decrements that came before ours.
            fence(Acquire);
            // Relaxed: nobody else references the header; the pool's ring publishes it.
            rc.store(1, Relaxed);
            true
        } else {
            false
        };
        if last {
            put(Freed(self));
        }
    }
}

/// A header whose last reference was just released: it must go back to its pool, once.
/// Only [`release_chain`] and [`Mbuf::detach`] make one, and it is neither `Copy` nor `Clone`.
pub(super) struct Freed(Hdr);

impl Freed {
    /// The pool it goes back to.
    #[inline]
    pub(super) fn pool_ptr(&self) -> *const Mempool {
        self.0.pool_ptr()
    }

    /// The object to put back.
    #[inline]
    pub(super) fn obj(&self) -> ObjPtr {
        self.0.obj()
    }

    /// Puts the header straight into its pool's ring.
    pub(super) fn put_uncached(self) {
        let pool = self.0.pool_ptr();
        // SAFETY: the pool is alive (invariant 1); the object came from it (`pool` was set at
        // its creation), its last reference is gone and a `Freed` is put only once.
        unsafe { (*pool).put_bulk_unchecked(&[self.0.obj()]) };
    }
}

/// Releases every segment of the chain starting at `head`, handing freed headers to `put`.
///
/// The caller gives up the chain (invariant 2): it is never accessed again.
fn release_chain(head: Hdr, mut put: impl FnMut(Freed)) {
    let mut next = Some(head);
    while let Some(h) = next {
        // SAFETY: the chain was the caller's and is given up: we are its only user, and we
        // touch each header's `seg` before releasing it, never after.
        let seg = unsafe { h.seg_mut() };
        next = seg.next.take();
        if let Some(d) = seg.direct.take() {
            d.release(&mut put);
        }
        if let Some(e) = seg.ext.take() {
            e.release();
        }
        h.release(&mut put);
    }
}

/// An owned packet: the head segment of a chain, and through it every segment. Freed back to
/// its pool(s) on drop. See the [module docs](super).
pub struct Mbuf {
    head: Hdr,
}

// SAFETY: an `Mbuf` owns its chain's headers (invariant 2) and holds counted references to
// their buffers; other threads only ever touch those buffers' counts (atomics) and pools
// (thread-safe rings), and free callbacks of external buffers are `Send`.
unsafe impl Send for Mbuf {}
// SAFETY: `&Mbuf` methods only read the chain and take references atomically (clones); the
// data of a buffer with other references is never written (invariant 4).
unsafe impl Sync for Mbuf {}

impl Mbuf {
    /// An mbuf over an object just taken out of a packet pool, reset to an empty direct
    /// segment with the default headroom.
    ///
    /// # Safety
    ///
    /// `obj` came from the mempool of a `PktPool` (so its header was initialized by
    /// [`Hdr::init`]) and was just taken out of it: nobody else holds it.
    #[inline]
    pub(super) unsafe fn from_fresh(obj: ObjPtr) -> Mbuf {
        let h = Hdr(obj.cast());
        debug_assert_eq!(h.refcnt().load(Relaxed), 1, "free objects keep refcnt 1");
        let fresh = h.fresh_seg();
        // SAFETY: the header is ours alone (caller); `Seg` has no drop glue to skip.
        unsafe { ptr::write(h.get().seg.get(), fresh) };
        Mbuf { head: h }
    }

    /// Gives up ownership of the chain without freeing it.
    fn into_head(self) -> Hdr {
        let head = self.head;
        std::mem::forget(self);
        head
    }

    /// Frees the chain, handing every freed header to `put`.
    #[inline]
    pub(super) fn release(self, put: impl FnMut(Freed)) {
        release_chain(self.into_head(), put);
    }

    /// The first segment.
    #[inline]
    pub(super) fn head(&self) -> Segment<'_> {
        // SAFETY: the chain is ours and borrowed shared for the lifetime (invariant 2).
        let seg = unsafe { self.head.seg() };
        Segment {
            hdr: self.head,
            seg,
        }
    }

    /// The first segment, mutable.
    #[inline]
    pub(super) fn head_mut(&mut self) -> SegmentMut<'_> {
        // SAFETY: the chain is ours and borrowed exclusively for the lifetime (invariant 2).
        let seg = unsafe { self.head.seg_mut() };
        SegmentMut {
            hdr: self.head,
            seg,
        }
    }

    /// The last segment, mutable (walks the chain, like `rte_pktmbuf_lastseg`).
    pub(super) fn last_mut(&mut self) -> SegmentMut<'_> {
        let mut h = self.head;
        // SAFETY: headers of our chain, read while `self` is borrowed exclusively.
        while let Some(next) = unsafe { h.seg() }.next {
            h = next;
        }
        // SAFETY: `h` is in our chain, borrowed exclusively for the lifetime (invariant 2).
        let seg = unsafe { h.seg_mut() };
        SegmentMut { hdr: h, seg }
    }

    /// The segments, first to last.
    pub fn segments(&self) -> Segments<'_> {
        Segments {
            next: Some(self.head),
            _chain: PhantomData,
        }
    }

    /// The segments, first to last, for writing their data.
    pub fn segments_mut(&mut self) -> SegmentsMut<'_> {
        SegmentsMut {
            next: Some(self.head),
            _chain: PhantomData,
        }
    }

    /// Appends `tail`'s chain after the last segment (`rte_pktmbuf_chain`): `nb_segs` and
    /// `pkt_len` of the head grow by the tail's. Refused (and `tail` handed back) if the chain
    /// would have more than `u16::MAX` segments or more than `u32::MAX` bytes.
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), ChainError> {
        let (t_segs, t_len) = {
            let t = tail.head();
            (t.seg.nb_segs, t.seg.pkt_len)
        };
        let h = self.head();
        let (Some(nb_segs), Some(pkt_len)) = (
            h.seg.nb_segs.checked_add(t_segs),
            h.seg.pkt_len.checked_add(t_len),
        ) else {
            return Err(ChainError { tail });
        };
        let mut tail = tail;
        let t = tail.head_mut();
        // The tail's head becomes an inner segment.
        t.seg.pkt_len = t.seg.data_len;
        t.seg.nb_segs = 1;
        let t = tail.into_head();
        self.last_mut().seg.next = Some(t);
        let head = self.head_mut();
        head.seg.nb_segs = nb_segs;
        head.seg.pkt_len = pkt_len;
        Ok(())
    }

    /// Makes this fresh mbuf a clone of segment `src`: same data window and metadata, one
    /// more reference to `src`'s buffer (its direct header's room, or its external buffer).
    pub(super) fn attach_clone_of(&mut self, src: &Segment<'_>) {
        let s = src.seg;
        let direct = match s.ext {
            Some(e) => {
                e.acquire();
                None
            }
            None => {
                let d = s.direct.unwrap_or(src.hdr);
                d.acquire();
                Some(d)
            }
        };
        let me = self.head_mut();
        debug_assert!(me.seg.direct.is_none() && me.seg.ext.is_none() && me.seg.next.is_none());
        *me.seg = Seg {
            buf_addr: s.buf_addr,
            buf_iova: s.buf_iova,
            next: None,
            direct,
            ext: s.ext,
            buf_len: s.buf_len,
            data_off: s.data_off,
            data_len: s.data_len,
            pkt_len: s.data_len,
            nb_segs: 1,
            meta: s.meta,
        };
    }

    /// Attaches an external buffer to the first segment (`rte_pktmbuf_attach_extbuf`): the
    /// segment's data becomes the (empty) start of `ext`, with no headroom (see
    /// [`reset_headroom`](Self::reset_headroom)); its previous data is dropped from the packet.
    /// The mbuf must be direct (not a clone, no external buffer yet) and not cloned.
    pub fn attach_extbuf(&mut self, ext: ExtBuf) -> Result<(), AttachError> {
        let h = self.head();
        if h.seg.direct.is_some() || h.seg.ext.is_some() {
            return Err(AttachError {
                reason: MbufError::NotDirect,
                ext,
            });
        }
        if !h.is_writable() {
            return Err(AttachError {
                reason: MbufError::Shared,
                ext,
            });
        }
        let (addr, iova, len, shared) = ext.into_parts();
        let head = self.head_mut();
        let s = head.seg;
        s.pkt_len -= s.data_len;
        s.buf_addr = addr.as_ptr();
        s.buf_iova = iova;
        s.buf_len = len;
        s.data_off = 0;
        s.data_len = 0;
        s.ext = Some(shared);
        Ok(())
    }

    /// Detaches the first segment from the buffer it shares (`rte_pktmbuf_detach`): a clone
    /// lets go of the direct mbuf's room, an mbuf with an external buffer lets go of it (the
    /// last reference frees it). The segment is back on its own room, empty, with the default
    /// headroom; its data is dropped from the packet. A direct mbuf is left as it is.
    pub fn detach(&mut self) {
        let head = self.head_mut();
        let (hdr, s) = (head.hdr, head.seg);
        let (direct, ext) = (s.direct.take(), s.ext.take());
        if direct.is_none() && ext.is_none() {
            return;
        }
        let (pkt_len, next, nb_segs, meta) = (s.pkt_len - s.data_len, s.next, s.nb_segs, s.meta);
        *s = Seg {
            pkt_len,
            next,
            nb_segs,
            meta,
            ..hdr.fresh_seg()
        };
        if let Some(d) = direct {
            d.release(&mut Freed::put_uncached);
        }
        if let Some(e) = ext {
            e.release();
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        release_chain(self.head, Freed::put_uncached);
    }
}
