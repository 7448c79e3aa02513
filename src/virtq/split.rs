//! The split virtqueue from the device side (virtio 1.2 §2.7): reading the available ring,
//! walking descriptor chains, writing the used ring, and notification suppression.
//!
//! Everything read from guest memory is hostile. A chain is walked with a budget of
//! descriptors (the queue size, or the indirect table's length), so loops and over-long chains
//! end; an indirect table inside an indirect table, a table whose length is not a multiple of
//! 16, a `next` beyond the table, and a buffer outside guest memory are errors. Byte counts are
//! summed in `u64` and bounded, so they cannot overflow.
//!
//! Memory ordering: the driver writes ring entries, then `avail.idx` with a release store (its
//! `virtio_wmb`); [`SplitQueue::avail_idx`] loads it with `Acquire`, so the entries below it
//! are visible. The device writes used entries, then publishes `used.idx` with `Release`
//! ([`SplitQueue::publish_used`]), which the driver reads after its read barrier.

use std::sync::atomic::{Ordering, fence};

use thiserror::Error;

use super::{DESC_SIZE, SplitRings};
use crate::memory::{DirtyLog, Gpa, GuestMemory, GuestSlice, Pod, TranslationCache};

/// The descriptor continues via `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// The buffer holds an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// used.flags: the device asks not to be kicked.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// avail.flags: the driver asks not to be interrupted.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Most descriptors an indirect table may hold (the largest queue size).
pub const MAX_INDIRECT: u32 = 32768;

/// Used entries a queue's bursts keep before writing them to the guest's used ring.
pub const USED_SHADOW: usize = 64;

/// The shadow used ring of a queue: used entries a burst has made but not yet written to the
/// guest's ring, each one [`used_word`]. Kept with the queue so that a burst neither zeroes
/// nor moves it.
#[derive(Clone)]
pub struct UsedShadow(pub Box<[u64; USED_SHADOW]>);

impl Default for UsedShadow {
    fn default() -> Self {
        UsedShadow(Box::new([0; USED_SHADOW]))
    }
}

/// A used entry `[id, len]` as one word (`id` in the low half). The shadow stores and the
/// flush reads it in this one width: stored as two halves and read as one word, the flush's
/// read of the burst's last entries could not be forwarded from the store buffer and waited
/// until every older store (guest lines, each a miss to the other core) had reached the cache
/// (perf: 80% of `flush_used` on that load, h2g 64 B).
#[inline(always)]
pub const fn used_word(id: u16, len: u32) -> u64 {
    id as u64 | (len as u64) << 32
}

impl std::fmt::Debug for UsedShadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsedShadow")
    }
}

/// A split-ring descriptor (`struct virtq_desc`, virtio 1.2 §2.7.5), 16 bytes.
///
/// The device side reads it from guest memory; the virtio-user front-end writes it (and
/// re-exports it as [`frontend::VirtqDesc`](crate::frontend::VirtqDesc)).
#[doc(alias = "virtq_desc")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VirtqDesc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` ([`F_NEXT`](Self::F_NEXT), [`F_WRITE`](Self::F_WRITE),
    /// [`F_INDIRECT`](Self::F_INDIRECT)).
    pub flags: u16,
    /// Next descriptor if `flags & NEXT`.
    pub next: u16,
}

impl VirtqDesc {
    /// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
    pub const F_NEXT: u16 = VIRTQ_DESC_F_NEXT;
    /// `VIRTQ_DESC_F_WRITE`: device-writable buffer.
    pub const F_WRITE: u16 = VIRTQ_DESC_F_WRITE;
    /// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
    pub const F_INDIRECT: u16 = VIRTQ_DESC_F_INDIRECT;
    /// Bytes in the descriptor table per descriptor (`DESC_SIZE`).
    pub const SIZE: usize = DESC_SIZE as usize;
}

// SAFETY: four integer fields, 8 + 4 + 2 + 2 = 16 bytes with no padding (repr(C), each field
// naturally aligned at its offset), and every bit pattern is a valid value.
unsafe impl Pod for VirtqDesc {}

/// Why a chain was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A head or `next` index beyond the table.
    #[error("descriptor index {index} is beyond the table of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// Table size.
        size: u32,
    },
    /// More descriptors than the table holds: a loop.
    #[error("chain longer than its table ({0} descriptors): a loop")]
    Loop(u32),
    /// An indirect descriptor inside an indirect table, or INDIRECT with NEXT.
    #[error("indirect descriptor inside an indirect table or chained with NEXT")]
    NestedIndirect,
    /// An indirect table whose length is zero, not a multiple of 16 or too large.
    #[error("indirect table length {0} is invalid")]
    IndirectLen(u32),
    /// A buffer (or indirect table) not inside guest memory.
    #[error("buffer at {addr:#x} (+{len:#x}) is outside guest memory")]
    Unmapped {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A device-readable buffer after a device-writable one, or the wrong kind for the queue.
    #[error("descriptor permissions do not fit the queue (readable vs writable)")]
    Permissions,
    /// The chain's total length exceeds what a packet may have.
    #[error("chain length exceeds {0} bytes")]
    TooLarge(u64),
    /// More buffers than one packet may use (the data path's limit).
    #[error("chain of more than {0} buffers")]
    TooManyBuffers(u32),
    /// A transmit chain shorter than the virtio-net header.
    #[error("chain shorter than the virtio-net header")]
    ShortHeader,
    /// The available index moved more than the queue size since the last one seen.
    #[error("avail.idx jumped by {0}, more than the queue size")]
    AvailJump(u16),
}

/// A split queue's rings, for the duration of one burst (borrowed from the locked vring).
#[derive(Debug, Clone, Copy)]
pub struct SplitQueue<'a> {
    desc: GuestSlice<'a>,
    avail: GuestSlice<'a>,
    used: GuestSlice<'a>,
    mem: &'a GuestMemory,
    size: u16,
}

impl<'a> SplitQueue<'a> {
    /// Views `rings` (translated for a queue of `size`) and the table to translate buffers.
    pub fn new(rings: &'a SplitRings, mem: &'a GuestMemory, size: u16) -> SplitQueue<'a> {
        SplitQueue {
            desc: rings.desc.slice(),
            avail: rings.avail.slice(),
            used: rings.used.slice(),
            mem,
            size,
        }
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The memory table buffers are translated with.
    #[inline]
    pub fn memory(&self) -> &'a GuestMemory {
        self.mem
    }

    /// Descriptor `index` of the table (a copy, read once). An index beyond the table reads
    /// as an all-zero descriptor (heads are checked by [`avail_head`](Self::avail_head)).
    #[inline]
    pub fn desc(&self, index: u16) -> VirtqDesc {
        self.desc
            .read_obj(usize::from(index) * DESC_SIZE as usize)
            .unwrap_or_default()
    }

    /// `avail.idx`, with `Acquire` (pairs with the driver's release of the index after the
    /// ring entries). The slices were checked at translation, so the access cannot fail; a
    /// failure reads as "nothing new" (`last`).
    #[inline]
    pub fn avail_idx(&self, last: u16) -> u16 {
        self.avail.load_u16_acquire(2).unwrap_or(last)
    }

    /// `avail.flags`.
    #[inline]
    pub fn avail_flags(&self) -> u16 {
        self.avail.load_u16(0, Ordering::Relaxed).unwrap_or(0)
    }

    /// `avail.ring[idx % size]`: a head index, checked against the table.
    #[inline]
    pub fn avail_head(&self, idx: u16) -> Result<u16, ChainError> {
        let slot = usize::from(idx & (self.size - 1));
        let head: u16 = self.avail.read_obj(4 + 2 * slot).unwrap_or(u16::MAX);
        if head >= self.size {
            return Err(ChainError::IndexOutOfRange {
                index: u32::from(head),
                size: u32::from(self.size),
            });
        }
        Ok(head)
    }

    /// `used_event` (after the available ring; EVENT_IDX).
    #[inline]
    pub fn used_event(&self) -> u16 {
        let off = 4 + 2 * usize::from(self.size);
        self.avail.load_u16(off, Ordering::Relaxed).unwrap_or(0)
    }

    /// Writes `used.ring[idx % size] = { id, len }` (not yet published).
    #[inline]
    pub fn write_used(&self, idx: u16, id: u16, len: u32) {
        self.write_used_elem(idx, [u32::from(id), len]);
    }

    /// Writes `used.ring[idx % size] = elem` (`[id, len]`).
    #[inline]
    fn write_used_elem(&self, idx: u16, elem: [u32; 2]) {
        let slot = usize::from(idx & (self.size - 1));
        let _ = self.used.write_obj(4 + 8 * slot, elem);
    }

    /// Asks for the lines of used entries `[first, first + n)` in a writable state (see
    /// [`GuestSlice::prefetch_for_write`]), so that their later writes do not wait.
    #[inline]
    pub fn prefetch_used(&self, first: u16, n: u16) {
        let n = usize::from(n.min(self.size));
        let start = usize::from(first & (self.size - 1));
        let head = n.min(usize::from(self.size) - start);
        self.used.prefetch_range_for_write(4 + 8 * start, 8 * head);
        if n > head {
            self.used.prefetch_range_for_write(4, 8 * (n - head));
        }
    }

    /// Writes consecutive used entries given as [`used_word`]s from ring index `first` (not yet
    /// published).
    #[inline]
    pub fn write_used_words(&self, first: u16, words: &[u64]) {
        let mut idx = first;
        for &w in words {
            self.write_used_elem(idx, [w as u32, (w >> 32) as u32]);
            idx = idx.wrapping_add(1);
        }
    }

    /// Publishes `used.idx = idx` with `Release`: every used entry written before is visible
    /// to a driver that reads the index.
    #[inline]
    pub fn publish_used(&self, idx: u16) {
        let _ = self.used.store_u16_release(2, idx);
    }

    /// Marks the used ring's pages written for entries `[from, to)` and for its flags and
    /// index, in the dirty log at the ring's guest address `gpa` (`VHOST_VRING_F_LOG`). Called
    /// after the writes (the log's release fence orders them).
    #[inline(never)]
    pub fn log_used(&self, log: &DirtyLog, gpa: u64, from: u16, to: u16) {
        // used.flags and used.idx: the first 4 bytes.
        log.mark(gpa, 4);
        let size = self.size();
        let n = to.wrapping_sub(from).min(size);
        let start = from & (size - 1);
        let head = n.min(size - start);
        // An address near the end of u64 saturates and is counted beyond the log.
        let entry = |slot: u16| gpa.saturating_add(4 + 8 * u64::from(slot));
        log.mark(entry(start), 8 * u64::from(head));
        log.mark(entry(0), 8 * u64::from(n - head));
    }

    /// The `used.idx` currently published.
    pub fn used_idx(&self) -> u16 {
        self.used.load_u16(2, Ordering::Relaxed).unwrap_or(0)
    }

    /// Sets or clears `used.flags` NO_NOTIFY (without EVENT_IDX).
    pub fn set_no_notify(&self, on: bool) {
        let v = if on { VIRTQ_USED_F_NO_NOTIFY } else { 0 };
        let _ = self.used.store_u16(0, v, Ordering::Relaxed);
    }

    /// Writes `avail_event` (after the used ring; EVENT_IDX): kick me when avail.idx passes it.
    pub fn set_avail_event(&self, idx: u16) {
        let off = 4 + 8 * usize::from(self.size);
        let _ = self.used.store_u16(off, idx, Ordering::Relaxed);
    }

    /// Whether the driver wants an interrupt after used.idx moved from `old` to `new`
    /// (virtio 1.2 §2.7.10: `vring_need_event`, or the NO_INTERRUPT flag without EVENT_IDX).
    #[inline]
    pub fn needs_interrupt(&self, event_idx: bool, old: u16, new: u16) -> bool {
        // The used entries and index must be visible before we read the driver's
        // suppression state, or we could miss a request it made after reading them
        // (pairs with the driver's barrier between updating used_event and re-reading used).
        fence(Ordering::SeqCst);
        if event_idx {
            let event = self.used_event();
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.avail_flags() & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Walks the chain starting at `head`: an iterator over its buffers as host slices (a
    /// buffer that spans two regions comes as two pieces), ending with `None` after the last
    /// or with one `Err` for a bad chain.
    ///
    /// `writable` selects the queue kind: a receive (device-writes) queue needs every
    /// descriptor writable, a transmit queue every descriptor readable. `max_len` bounds the
    /// chain's total length.
    pub fn chain(&self, head: u16, writable: bool, max_len: u64) -> Chain<'a> {
        Chain {
            mem: self.mem,
            cache: TranslationCache::new(),
            table: self.desc,
            table_len: u32::from(self.size),
            budget: u32::from(self.size),
            index: u32::from(head),
            indirect: false,
            writable,
            more: true,
            cur_addr: 0,
            cur_len: 0,
            total: 0,
            max_len,
            failed: false,
        }
    }
}

/// Iterator over one descriptor chain's buffers (see [`SplitQueue::chain`]).
#[derive(Debug)]
pub struct Chain<'a> {
    mem: &'a GuestMemory,
    cache: TranslationCache,
    table: GuestSlice<'a>,
    table_len: u32,
    budget: u32,
    index: u32,
    indirect: bool,
    writable: bool,
    /// More descriptors follow the current one.
    more: bool,
    cur_addr: u64,
    cur_len: u64,
    total: u64,
    max_len: u64,
    failed: bool,
}

impl<'a> Chain<'a> {
    /// Total bytes of the descriptors read so far (the whole chain once exhausted).
    pub fn total_len(&self) -> u64 {
        self.total
    }

    #[cold]
    fn fail(&mut self, e: ChainError) -> Option<Result<GuestSlice<'a>, ChainError>> {
        self.failed = true;
        Some(Err(e))
    }

    /// Reads the next descriptor into `cur_*`, following an indirect table.
    fn advance(&mut self) -> Result<(), ChainError> {
        loop {
            if self.index >= self.table_len {
                return Err(ChainError::IndexOutOfRange {
                    index: self.index,
                    size: self.table_len,
                });
            }
            if self.budget == 0 {
                return Err(ChainError::Loop(self.table_len));
            }
            self.budget -= 1;
            let d: VirtqDesc = self
                .table
                .read_obj(self.index as usize * DESC_SIZE as usize)
                .unwrap_or_default();
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if self.indirect || d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(ChainError::NestedIndirect);
                }
                let n = d.len / DESC_SIZE as u32;
                if d.len == 0 || d.len % DESC_SIZE as u32 != 0 || n > MAX_INDIRECT {
                    return Err(ChainError::IndirectLen(d.len));
                }
                self.table = self.mem.gpa_to_host(Gpa(d.addr), u64::from(d.len)).ok_or(
                    ChainError::Unmapped {
                        addr: d.addr,
                        len: u64::from(d.len),
                    },
                )?;
                self.table_len = n;
                self.budget = n;
                self.index = 0;
                self.indirect = true;
                continue;
            }
            if (d.flags & VIRTQ_DESC_F_WRITE != 0) != self.writable {
                return Err(ChainError::Permissions);
            }
            self.total += u64::from(d.len);
            if self.total > self.max_len {
                return Err(ChainError::TooLarge(self.max_len));
            }
            self.cur_addr = d.addr;
            self.cur_len = u64::from(d.len);
            self.more = d.flags & VIRTQ_DESC_F_NEXT != 0;
            self.index = u32::from(d.next);
            return Ok(());
        }
    }
}

impl<'a> Iterator for Chain<'a> {
    type Item = Result<GuestSlice<'a>, ChainError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while self.cur_len == 0 {
            if !self.more {
                return None;
            }
            if let Err(e) = self.advance() {
                return self.fail(e);
            }
        }
        let mem: &'a GuestMemory = self.mem;
        match mem.gpa_to_host_prefix_cached(&mut self.cache, Gpa(self.cur_addr), self.cur_len) {
            Some(s) => {
                let n = s.len() as u64;
                self.cur_len -= n;
                // n <= region end - cur_addr: no overflow.
                self.cur_addr += n;
                Some(Ok(s))
            }
            None => {
                let e = ChainError::Unmapped {
                    addr: self.cur_addr,
                    len: self.cur_len,
                };
                self.fail(e)
            }
        }
    }
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
