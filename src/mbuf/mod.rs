//! Packet buffers (`rte_mbuf` semantics) on a hugepage [`Mempool`](rvhost_hugepages::mempool).
//!
//! ```
//! use rvhost::mbuf::{OffloadFlags, PageSize, PktPool, PktPoolConfig};
//!
//! // PktPool::with_defaults("doc", 256) in an application: hugepages when there are free
//! // ones, else 4 KiB pages. This test asks for 4 KiB pages and small caches.
//! let pool = PktPoolConfig::new("doc", 256)
//!     .with_page_size(PageSize::Small)
//!     .with_cache_size(32)
//!     .create()?;
//! let mut cache = pool.cache(); // one per worker
//!
//! let mut burst = Vec::with_capacity(32);
//! cache.alloc_bulk(&mut burst, 4)?;
//! for m in &mut burst {
//!     m.append(60)?;
//!     m.data_mut()?.fill(0xab);
//!     m.prepend(14)?; // room for an Ethernet header
//!     m.meta_mut().ol_flags |= OffloadFlags::TX_IPV4 | OffloadFlags::TX_IP_CKSUM;
//!     m.meta_mut().l2_len = 14;
//! }
//! assert_eq!(burst[0].pkt_len(), 74);
//! assert_eq!(pool.in_use(), 4);
//! cache.free_bulk(burst.drain(..));
//! assert_eq!(pool.in_use(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Pieces
//!
//! * [`PktPool`]: `count` objects of `HDR_SIZE` (128) bytes of header plus `data_room` bytes
//!   (headroom included, [`DEFAULT_DATA_ROOM`] = 2048 + [`PKTMBUF_HEADROOM`]). Each object is
//!   IOVA-contiguous, so [`Mbuf::iova`] can be handed to a DMA engine.
//! * [`PktCache`]: a worker's cache of a pool; `alloc_bulk` / `free_bulk` stay off the shared
//!   ring most of the time, without any lock.
//! * [`Mbuf`]: an owned packet, the head of a chain of segments. Dropping it frees the chain
//!   (through the pool's ring: use [`PktCache::free_bulk`] on the data path).
//! * [`PktMeta`] and [`OffloadFlags`]: metadata without invariants, read and written freely.
//! * [`ExtBuf`]: an external buffer with a free callback, attached to an mbuf for packets
//!   larger than a data room without chaining.
//!
//! # Ownership and sharing
//!
//! An `Mbuf` owns its segments' headers. Each buffer (a segment's own data room, or an external
//! buffer) has a reference count:
//!
//! * [`Mbuf::clone_shallow`] (`rte_pktmbuf_clone`) makes new headers, from any pool, attached
//!   to the same buffers: each buffer's count goes up. Freeing the original while clones live
//!   keeps its header and data room out of the pool (an orphan) until the last clone goes;
//!   clones and original can be freed in any order, on any thread.
//! * [`Mbuf::data_mut`] / [`SegmentMut::data_mut`] give `&mut [u8]` only to a segment holding
//!   its buffer's only reference; shared data is read-only ([`MbufError::Shared`]). The data
//!   rooms are this process's memory (never guest memory), so byte slices over them are sound
//!   under that rule.
//! * [`Mbuf::copy`] (`rte_pktmbuf_copy`) copies the bytes into new, unshared mbufs.
//! * [`Mbuf::attach_extbuf`] makes an external buffer the first segment's data; clones share
//!   it; its callback runs once, when its last reference goes.
//!
//! Lengths are `u32` in the header (DPDK has `u16` `data_len`/`buf_len`), so a single segment
//! can hold a 64 KiB GSO packet in an external buffer.

mod error;
mod ext;
mod hdr;
mod meta;
mod pool;
#[cfg(test)]
mod tests;

use std::fmt;

pub use error::{AllocError, AttachError, ChainError, MbufError, PktPoolError};
pub use ext::ExtBuf;
pub use hdr::{HDR_SIZE, Mbuf, PKTMBUF_HEADROOM, Segment, SegmentMut, Segments, SegmentsMut};
pub use meta::{OffloadFlags, PORT_INVALID, PktMeta};
pub use pool::{MAX_DATA_ROOM, PktAlloc, PktCache, PktPool, PktPoolConfig};
/// The memory settings of [`PktPoolConfig`], re-exported so an application needs no second
/// crate to make a pool.
pub use rvhost_hugepages::region::{Backing, IovaMode, PageSize, RegionConfig};

use hdr::ChainBuilder;

/// The default data room, headroom included (`RTE_MBUF_DEFAULT_BUF_SIZE`).
pub const DEFAULT_DATA_ROOM: usize = 2048 + PKTMBUF_HEADROOM;

impl Mbuf {
    /// Packet length: the data of every segment.
    #[inline]
    pub fn pkt_len(&self) -> usize {
        self.head().pkt_len()
    }

    /// Data length of the first segment.
    #[inline]
    pub fn data_len(&self) -> usize {
        self.head().data_len()
    }

    /// Number of segments.
    #[inline]
    pub fn nb_segs(&self) -> usize {
        self.head().nb_segs()
    }

    /// Free bytes before the data of the first segment.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head().headroom()
    }

    /// Free bytes after the data of the last segment (where [`append`](Self::append) writes).
    pub fn tailroom(&self) -> usize {
        self.segments().last().map_or(0, |s| s.tailroom())
    }

    /// Size of the first segment's buffer.
    #[inline]
    pub fn buf_len(&self) -> usize {
        self.head().buf_len()
    }

    /// Data of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        self.head().data()
    }

    /// Data of the first segment, for writing; [`MbufError::Shared`] if its buffer has other
    /// references (clones).
    #[inline]
    pub fn data_mut(&mut self) -> Result<&mut [u8], MbufError> {
        self.head_mut().into_data_mut()
    }

    /// IOVA of the first data byte.
    #[inline]
    pub fn iova(&self) -> u64 {
        self.head().iova()
    }

    /// The packet metadata (offload flags, header lengths, ...).
    #[inline]
    pub fn meta(&self) -> &PktMeta {
        self.head().meta()
    }

    /// The packet metadata, for writing.
    #[inline]
    pub fn meta_mut(&mut self) -> &mut PktMeta {
        self.head_mut().into_meta_mut()
    }

    /// Offload flags (shorthand for `meta().ol_flags`).
    #[inline]
    pub fn ol_flags(&self) -> OffloadFlags {
        self.meta().ol_flags
    }

    /// Whether the first segment's buffer has other references (read-only data).
    #[inline]
    pub fn is_shared(&self) -> bool {
        !self.head().is_writable()
    }

    /// Whether the first segment is a clone (`RTE_MBUF_CLONED` / indirect).
    #[inline]
    pub fn is_clone(&self) -> bool {
        self.head().is_clone()
    }

    /// Whether the first segment's data is an external buffer.
    #[inline]
    pub fn has_extbuf(&self) -> bool {
        self.head().has_extbuf()
    }

    /// Moves the start of the data `n` bytes back into the headroom (`rte_pktmbuf_prepend`);
    /// the new bytes are left as they were. Write them with [`data_mut`](Self::data_mut).
    pub fn prepend(&mut self, n: usize) -> Result<(), MbufError> {
        let pkt_len = self
            .pkt_len()
            .checked_add(n)
            .ok_or(MbufError::PktLenOverflow)?;
        let mut head = self.head_mut();
        let s = head.as_segment();
        let (off, len) = (s.headroom(), s.data_len());
        if n > off {
            return Err(MbufError::NoHeadroom {
                requested: n,
                available: off,
            });
        }
        head.set_pkt_len(pkt_len)?;
        head.set_window(off - n, len + n);
        Ok(())
    }

    /// Extends the data of the last segment by `n` bytes of tailroom (`rte_pktmbuf_append`);
    /// the new bytes are left as they were.
    pub fn append(&mut self, n: usize) -> Result<(), MbufError> {
        let pkt_len = self
            .pkt_len()
            .checked_add(n)
            .ok_or(MbufError::PktLenOverflow)?;
        if pkt_len > u32::MAX as usize {
            return Err(MbufError::PktLenOverflow);
        }
        let mut last = self.last_mut();
        let s = last.as_segment();
        let (off, len, room) = (s.headroom(), s.data_len(), s.tailroom());
        if n > room {
            return Err(MbufError::NoTailroom {
                requested: n,
                available: room,
            });
        }
        last.set_window(off, len + n);
        self.head_mut().set_pkt_len(pkt_len)
    }

    /// [`append`](Self::append) that returns the new bytes, for writing, as
    /// `rte_pktmbuf_append` returns their address; [`MbufError::Shared`] (nothing appended)
    /// if the last segment's buffer has other references.
    #[inline(always)]
    pub fn append_mut(&mut self, n: usize) -> Result<&mut [u8], MbufError> {
        // One segment inline (a fresh mbuf's copy in a data path: a call cost as much as
        // the checks), a chain out of line.
        if self.nb_segs() == 1 {
            let pkt_len = u32::try_from(self.pkt_len().saturating_add(n))
                .map_err(|_| MbufError::PktLenOverflow)?;
            return self.head_mut().grow(n, Some(pkt_len));
        }
        self.append_mut_chain(n)
    }

    /// [`append_mut`](Self::append_mut) for a fresh mbuf, without the checks it passes by
    /// being one (one segment, its buffer's only reference): `None`, nothing appended, if its
    /// data room lacks `n` bytes. For a dequeue's copy into the mbufs it just allocated: with
    /// the checks, `dequeue_burst` took 17.6 instructions a packet more (callgrind, loop-tput
    /// packed 64 B: 221.2 against 203.6).
    ///
    /// # Safety
    ///
    /// `self` came from [`PktPool::alloc`] or [`PktCache::alloc_bulk`] (or the like) and was
    /// not cloned, attached to, given an external buffer or chained since.
    #[inline(always)]
    pub(crate) unsafe fn append_fresh(&mut self, n: usize) -> Option<&mut [u8]> {
        debug_assert!(self.nb_segs() == 1 && self.head().is_writable());
        // SAFETY: a fresh mbuf's one segment is its head and holds its buffer's only
        // reference (the caller's contract).
        unsafe { self.head_mut().grow_exclusive(n) }
    }

    /// [`append_mut`](Self::append_mut) on a chain of several segments.
    #[inline(never)]
    fn append_mut_chain(&mut self, n: usize) -> Result<&mut [u8], MbufError> {
        // `append` checks the last segment's room and sets the head's length.
        if !self.last_mut().as_segment().is_writable() {
            return Err(MbufError::Shared);
        }
        self.append(n)?;
        let data = self.last_mut().into_data_mut()?;
        let len = data.len();
        Ok(&mut data[len - n..])
    }

    /// Appends `src` at the end of the last segment ([`append_mut`](Self::append_mut)) and
    /// copies it in, up to 64 bytes inline (a generator's small frames without a `memcpy`
    /// call); nothing is appended on an error.
    #[inline]
    pub fn append_bytes(&mut self, src: &[u8]) -> Result<(), MbufError> {
        let dst = self.append_mut(src.len())?;
        // SAFETY: `dst` is `src.len()` writable bytes of an exclusive borrow, which cannot
        // overlap `src`.
        unsafe { crate::memory::copy_bytes(src.as_ptr(), dst.as_mut_ptr(), src.len()) };
        Ok(())
    }

    /// Removes `n` bytes from the start of the first segment (`rte_pktmbuf_adj`).
    pub fn adj(&mut self, n: usize) -> Result<(), MbufError> {
        let pkt_len = self.pkt_len();
        let mut head = self.head_mut();
        let s = head.as_segment();
        let (off, len) = (s.headroom(), s.data_len());
        if n > len {
            return Err(MbufError::TooShort {
                requested: n,
                available: len,
            });
        }
        head.set_window(off + n, len - n);
        head.set_pkt_len(pkt_len - n)
    }

    /// Removes `n` bytes from the end of the last segment (`rte_pktmbuf_trim`).
    pub fn trim(&mut self, n: usize) -> Result<(), MbufError> {
        let pkt_len = self.pkt_len();
        let mut last = self.last_mut();
        let s = last.as_segment();
        let (off, len) = (s.headroom(), s.data_len());
        if n > len {
            return Err(MbufError::TooShort {
                requested: n,
                available: len,
            });
        }
        last.set_window(off, len - n);
        self.head_mut().set_pkt_len(pkt_len - n)
    }

    /// Sets the first segment's headroom back to the default (`rte_pktmbuf_reset_headroom`),
    /// or as close as its buffer allows with the data it holds. The data window moves; its
    /// length does not.
    pub fn reset_headroom(&mut self) {
        let mut head = self.head_mut();
        let s = head.as_segment();
        let (len, buf) = (s.data_len(), s.buf_len());
        head.set_window(PKTMBUF_HEADROOM.min(buf - len), len);
    }

    /// Copies `buf.len()` packet bytes starting at `offset` into `buf`, across segments
    /// (`rte_pktmbuf_read`).
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MbufError> {
        self.check_range(offset, buf.len())?;
        let mut skip = offset;
        let mut done = 0;
        for s in self.segments() {
            if done == buf.len() {
                break;
            }
            let data = s.data();
            if skip >= data.len() {
                skip -= data.len();
                continue;
            }
            let n = (data.len() - skip).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[skip..skip + n]);
            done += n;
            skip = 0;
        }
        Ok(())
    }

    /// Copies `src` into the packet at `offset`, across segments. Refused, with nothing
    /// written, if the range is outside the packet or crosses a shared segment.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), MbufError> {
        self.check_range(offset, src.len())?;
        let (mut skip, mut left) = (offset, src.len());
        for s in self.segments() {
            if left == 0 {
                break;
            }
            if skip >= s.data_len() {
                skip -= s.data_len();
                continue;
            }
            if !s.is_writable() {
                return Err(MbufError::Shared);
            }
            left -= (s.data_len() - skip).min(left);
            skip = 0;
        }
        let (mut skip, mut done) = (offset, 0);
        for mut s in self.segments_mut() {
            if done == src.len() {
                break;
            }
            let len = s.as_segment().data_len();
            if skip >= len {
                skip -= len;
                continue;
            }
            let data = s.data_mut()?;
            let n = (len - skip).min(src.len() - done);
            data[skip..skip + n].copy_from_slice(&src[done..done + n]);
            done += n;
            skip = 0;
        }
        Ok(())
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), MbufError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.pkt_len() => Ok(()),
            _ => Err(MbufError::OutOfRange {
                offset,
                len,
                pkt_len: self.pkt_len(),
            }),
        }
    }

    /// A clone (`rte_pktmbuf_clone`): one new header per segment, from `alloc`, attached to the
    /// same buffers (read-only while shared), with the same data windows and metadata. The data
    /// stays until the last of the original and its clones is freed.
    pub fn clone_shallow(&self, mut alloc: impl PktAlloc) -> Result<Mbuf, AllocError> {
        let mut chain = ChainBuilder::new();
        for s in self.segments() {
            // On failure `chain` frees the clones made so far.
            let mut c = alloc.alloc_mbuf()?;
            c.attach_clone_of(&s);
            chain.push(c);
        }
        Ok(chain.finish(*self.meta()).expect("an mbuf has a segment"))
    }

    /// A deep copy (`rte_pktmbuf_copy`) into new mbufs from `alloc`: the data fills each new
    /// segment's tailroom (after the default headroom) and more segments are chained as needed;
    /// the metadata is copied. The copy shares nothing with `self`.
    pub fn copy(&self, mut alloc: impl PktAlloc) -> Result<Mbuf, MbufError> {
        let mut chain = ChainBuilder::new();
        let mut cur = alloc.alloc_mbuf()?;
        for s in self.segments() {
            let mut data = s.data();
            while !data.is_empty() {
                if cur.tailroom() == 0 {
                    if cur.data_len() == 0 || chain.nb_segs() >= u32::from(u16::MAX) - 1 {
                        // A pool without data room, or more segments than a chain can hold.
                        return Err(MbufError::NoTailroom {
                            requested: data.len(),
                            available: 0,
                        });
                    }
                    chain.push(std::mem::replace(&mut cur, alloc.alloc_mbuf()?));
                }
                let n = cur.tailroom().min(data.len());
                cur.append(n)?;
                let dst = cur.data_mut()?;
                let at = dst.len() - n;
                dst[at..].copy_from_slice(&data[..n]);
                data = &data[n..];
            }
        }
        chain.push(cur);
        Ok(chain.finish(*self.meta()).expect("an mbuf was pushed"))
    }
}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("pkt_len", &self.pkt_len())
            .field("nb_segs", &self.nb_segs())
            .field("data_len", &self.data_len())
            .field("headroom", &self.headroom())
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("clone", &self.is_clone())
            .field("extbuf", &self.has_extbuf())
            .field("meta", self.meta())
            .finish()
    }
}
