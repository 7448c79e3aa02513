//! What the data path needs of a burst on a locked vring, whatever the ring's layout: take the
//! next available chain, walk its buffers, return it used, publish and notify. The split ring's
//! [`Burst`](super::burst::Burst) and the packed ring's
//! [`PackedBurst`](super::packed_burst::PackedBurst) implement it; enqueue and dequeue are
//! written once, over [`Ring`], and compiled once per layout (every method is a direct,
//! inlined call: the split ring's loops are the code they were before this trait).

use crate::memory::{DirtyLog, GuestMemory, GuestSlice, TranslationCache};
use crate::virtq::QueueStats;
use crate::virtq::packed::BATCH;
use crate::virtq::split::{ChainError, VirtqDesc};

use super::burst::Stop;

/// One burst on a locked vring (see the module docs).
pub(super) trait Ring<'v> {
    /// What names a taken chain when it is returned: the head's index on a split ring; the
    /// buffer id, the slots it takes and its first descriptor on a packed ring.
    type Head: Copy;
    /// The walk over a chain's buffers.
    type Walk: Iterator<Item = Result<GuestSlice<'v>, ChainError>>;

    /// Negotiated features of the queue.
    fn features(&self) -> u64;
    /// The memory table buffers are translated with.
    fn memory(&self) -> &'v GuestMemory;
    /// Counters of this burst, added to the queue's at [`finish`](Self::finish).
    fn stats(&mut self) -> &mut QueueStats;
    /// The vring's hint that the last virtio-net header placed had to be written.
    fn hdr_written(&mut self) -> &mut bool;
    /// Reads that hint.
    fn hdr_was_written(&self) -> bool;
    /// The vring's translation memo, for the burst to translate with ([`Vring`]'s
    /// `memo`: kept across bursts).
    ///
    /// [`Vring`]: crate::virtq::Vring
    fn memo(&self) -> TranslationCache;
    /// Keeps `tc` as the vring's translation memo, for its next burst.
    fn keep_memo(&mut self, tc: TranslationCache);
    /// The dirty log to mark written guest buffers in (while `VHOST_F_LOG_ALL` is negotiated
    /// and a log is set; the ring's own writes the burst marks itself).
    fn dirty_log(&self) -> Option<&'v DirtyLog>;

    /// Up to `max` chains available, at least (exact on a split ring; on a packed ring the
    /// available slots from the next one, which chains of several slots overcount, ending at
    /// a cache line's end when there are more than 4: see `PackedBurst`'s).
    fn available(&self, max: u16) -> u16;
    /// Whether the guest has every buffer of the ring posted (it waits for us): a split ring
    /// knows from its indexes; a packed ring answers `false` (it would have to read the ring).
    fn all_posted(&self) -> bool;
    /// Whether a chain is available beyond those taken.
    fn has_more(&self) -> bool;

    /// Takes the next available chain.
    fn next_head(&mut self) -> Result<Self::Head, Stop>;

    /// Whether the layout takes chains [`BATCH`] at a time ([`next_batch`](Self::next_batch)).
    const BATCH: bool;
    /// Takes the next [`BATCH`] chains at once if each is one descriptor (no NEXT, no
    /// INDIRECT) of the queue's direction (`writable`), the layout allows it there, and their
    /// buffer ids may be taken; otherwise takes none (`None`: the caller goes on with
    /// [`next_head`](Self::next_head), which reports any fault). A packed ring reads the 4
    /// descriptors of one line at once (DPDK's batched dequeue); a split ring has no batches.
    #[inline(always)]
    fn next_batch(&mut self, writable: bool) -> Option<[Self::Head; BATCH]> {
        let heads = self.peek_batch(0, writable)?;
        self.take_batch(&heads).then_some(heads)
    }
    /// The [`BATCH`] chains from `k` places after the next one, if
    /// [`next_batch`](Self::next_batch) would find a batch there (ids not checked), read
    /// without taking them: for the caller to ask for their buffers early, and to take them
    /// with [`take_batch`](Self::take_batch) once they are the next ones.
    fn peek_batch(&self, k: u16, writable: bool) -> Option<[Self::Head; BATCH]>;
    /// Takes `heads`, which [`peek_batch`](Self::peek_batch) read and which are now the next
    /// chains (read at 0, or at [`BATCH`] before the batch before them was taken), if their
    /// buffer ids may be taken; otherwise takes none (`false`).
    fn take_batch(&mut self, heads: &[Self::Head; BATCH]) -> bool;

    /// The look-ahead state of a burst's loop ([`ReadAhead`](super::burst::ReadAhead) on a split ring).
    type Ahead: Default;
    /// Reads the chain `k` (at most [`READ_AHEAD`](super::burst::READ_AHEAD)) places after the next one, if available:
    /// its first descriptor, for the caller to ask for its buffer early. `None` also where the
    /// layout does not read ahead.
    fn read_ahead(&self, a: &mut Self::Ahead, k: u16) -> Option<VirtqDesc>;
    /// Whether dequeue asks for transmit buffers ahead ([`peek_desc`](Self::peek_desc)). A
    /// packed ring's descriptors are in the lines `available` just read; a split ring's
    /// look-ahead reads the available ring and the table again, and cost g2h 64 B 11-14%
    /// (A/B against the testpmd frontend, 3 pairs at 31 ns), where packed gained (loop-lat
    /// 64 B +10% at 33 ns, +70% at 170 ns; g2h 64 B +18% at 33 ns, even at 165 ns).
    /// Measured again in-run (2026-12-06, split mrg 1, 64 B, 75 ns): packed's look-ahead on
    /// a split ring gave loop-tput 0.72 and g2h 0.79; on packed, none at all g2h 1.01.
    const PREFETCH_TX: bool;
    /// The first descriptor of the chain `k` places after the next one, if it is available
    /// (on a packed ring: if every chain before it takes one slot), read without taking it,
    /// for the caller to ask for its buffer early.
    fn peek_desc(&self, k: u16) -> Option<VirtqDesc>;
    /// The next chain and its first descriptor, without taking it (`None`: no chain, or one
    /// [`next_head`](Self::next_head) will report as bad).
    fn peek_next(&mut self, a: &mut Self::Ahead) -> Option<(Self::Head, VirtqDesc)>;
    /// Takes the chain [`peek_next`](Self::peek_next) returned.
    fn take_peeked(&mut self, h: Self::Head);
    /// The first descriptor of a taken chain (its flags hold NEXT, WRITE and INDIRECT with the
    /// same values on both layouts; `next` is meaningless on a packed ring).
    fn desc(&self, h: Self::Head) -> VirtqDesc;
    /// Walks a taken chain's buffers (`writable` or readable ones: the queue's direction),
    /// refusing a chain longer than `max_len` bytes.
    fn walk(&self, h: Self::Head, writable: bool, max_len: u64) -> Self::Walk;
    /// Gives back the last `n` chains taken one by one (they stay available); not the chains
    /// of a batch ([`unreserve_batch`](Self::unreserve_batch)).
    fn unreserve_n(&mut self, n: usize);
    /// Gives back the chains of the batch [`take_batch`](Self::take_batch) took last, from
    /// `heads[from]` on (they stay available).
    #[inline(always)]
    fn unreserve_batch(&mut self, heads: &[Self::Head; BATCH], from: usize) {
        let _ = heads;
        self.unreserve_n(BATCH.saturating_sub(from));
    }
    /// Gives back the last chain taken.
    #[inline(always)]
    fn unreserve(&mut self) {
        self.unreserve_n(1);
    }

    /// Returns chain `h` with `len` bytes written into it.
    fn used(&mut self, h: Self::Head, len: u32);
    /// Returns the [`BATCH`] chains [`take_batch`](Self::take_batch) took, in order, with
    /// `lens[k]` bytes written into chain `k`.
    #[inline(always)]
    fn used_batch(&mut self, heads: &[Self::Head; BATCH], lens: [u32; BATCH]) {
        for (&h, len) in heads.iter().zip(lens) {
            self.used(h, len);
        }
    }
    /// Returns a malformed chain with length 0 and counts it.
    fn bad_chain(&mut self, h: Self::Head, e: ChainError);
    /// Counts (and logs, rate-limited) a malformed chain the caller returns later, in its
    /// place in the order (the async path).
    fn bad_chain_later(&mut self, h: Self::Head, e: ChainError);
    /// Chain `h`'s used entry with `len` bytes written, as one word the async path keeps until
    /// the packet retires ([`Vring::publish_retired`](crate::virtq::Vring) writes it):
    /// a [`used_word`](crate::virtq::split::used_word) on a split ring, a
    /// [`PackedUsed::to_word`](crate::virtq::packed::PackedUsed::to_word) on a packed one.
    fn used_entry(&self, h: Self::Head, len: u32) -> u64;
    /// Publishes the used entries so far if at least `min` are not yet, calling `before`
    /// first; whether it did.
    fn publish_early(&mut self, min: u16, before: impl FnOnce()) -> bool;
    /// Asks for the lines the next `n` used entries go to, for writing.
    fn prefetch_used(&self, n: usize);
    /// The burst is a sync dequeue's (a transmit queue's), called before it takes anything.
    /// The split ring writes used entries to the ring as they come rather than in one run
    /// (`Burst::write_through`) and lets the burst's end hold back its last ones from a guest
    /// that polls (`Burst::hold_tail`, see `burst::HOLD_MAX`); the packed ring keeps them for
    /// one batch, holds nothing, and has the used descriptors it writes written back from our
    /// cache by the first later burst that returns none (see `PackedBurst`'s).
    fn sync_dequeue(&mut self);
    /// The burst reads the first `len` bytes of a transmit buffer at host address `addr`
    /// ([`sync_dequeue`](Self::sync_dequeue) bursts: their lines are demoted from our caches
    /// at the same idle poll; the packed ring only).
    fn note_read(&mut self, addr: usize, len: usize);
    /// Publishes what is left, notifies the guest if it asked, stores the ring's state back:
    /// the burst's last call. By reference: by value, the call copied the whole burst state
    /// (some 280 bytes, a `memcpy` call) at every burst's end.
    fn finish(&mut self);
}
