//! One burst on a locked split vring: the indexes it moves, the used entries it writes, and
//! the publish and notification at its end (and the early publish enqueue may ask for). Shared
//! by enqueue and dequeue.

use std::os::fd::{AsFd, BorrowedFd};

use crate::features::VIRTIO_RING_F_EVENT_IDX;
use crate::lcore::ticks;
use crate::memory::{DirtyLog, GuestMemory, TranslationCache};
use crate::ratelimit::LogLimiter;
use crate::virtq::packed::BATCH;
use crate::virtq::split::{
    Chain, ChainError, SplitQueue, USED_SHADOW, VIRTQ_AVAIL_F_NO_INTERRUPT, VirtqDesc, used_word,
};
use crate::virtq::{QueueStats, Vring, active_log, used_ring_log};

use super::ring::Ring;

/// Longest descriptor chain accepted for one packet: a 64 KiB GSO packet and its header,
/// with room to spare.
pub const MAX_PKT_LEN: u64 = 256 * 1024;

/// How many chains ahead of the one being copied a burst reads, so that it can ask for their
/// buffers' cache lines early (see [`ReadAhead`]). Measured on h2g 64 B against the testpmd
/// virtio-user frontend: 1 ahead +10%, 2-4 ahead +17%, 6 ahead +12%. Enqueue only: on
/// dequeue, reading ahead and prefetching the transmit buffers measured slower (g2h 1518 B
/// 13.8 -> 9.8 Mpps, g2h 64 B and loopback 64 B no better).
pub const READ_AHEAD: u16 = 3;

/// At most this many of a transmit queue's last used entries are held back from `used.idx`
/// (and at most a quarter of the ring), for a guest that polls: without `EVENT_IDX`, with
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` set (as DPDK's virtio PMD has it), and while no dirty log is
/// kept. DPDK's virtio PMD reclaims its transmit ring in one sweep of everything used (and
/// frees those mbufs one by one, past its mempool cache into the pool's ring, which hands
/// back cold ones) whenever fewer than `min(size / 4, 32)` descriptors are neither free nor
/// used, that is whenever the device has caught up with it; with that many held back it
/// reclaims only what each burst needs, from buffers still in its cache. Against testpmd's
/// virtio-user frontend on a split ring, 64 B, in-run A/B: loop-lat **1.66**, g2h 1.11,
/// loop-tput 1.01-1.03; against DPDK's backend (swap method, 2026-12-06), before / after, mrg
/// 1 and 0: loop-tput 0.92-1.00 / 1.05-1.40, loop-lat 1.39-1.74 / 2.0-2.4, g2h 1.33-1.51 /
/// 1.25-1.52 (the testpmd frontend there frees mbufs the same way, so it gains too: its
/// windows vary with the host).
const HOLD_MAX: u16 = 32;

/// Held entries are published once no chain has come for this many [`ticks`] (~10 µs at a
/// 3 GHz TSC, 33 µs where the clock counts nanoseconds): a guest that stopped sending gets
/// all its buffers back.
const HOLD_TICKS: u64 = 1 << 15;

/// Why a burst stopped taking chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The guest has made no more buffers available.
    Empty,
    /// The packet does not fit in what the guest offers.
    NoRoom,
    /// The available ring is corrupt; the queue is marked broken.
    Broken,
}

/// A 16-bit ring index kept in a 32-bit slot, read and written whole. The burst stores `next`
/// and `used` once per packet and reads them back soon after; as adjacent `u16` fields, the
/// compiler read `avail` and `next` with one 32-bit load, which the CPU cannot forward from the
/// 16-bit store of `next` still in its store buffer, so the load waited for every older store
/// (the packets' guest lines) to reach the cache: 25% of `prefetch_ahead` on h2g 64 B.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Idx(u32);

impl Idx {
    #[inline(always)]
    fn new(i: u16) -> Idx {
        Idx(u32::from(i))
    }

    #[inline(always)]
    fn get(self) -> u16 {
        self.0 as u16
    }

    #[inline(always)]
    fn add(self, n: u16) -> Idx {
        Idx::new(self.get().wrapping_add(n))
    }

    #[inline(always)]
    fn sub(self, n: u16) -> Idx {
        Idx::new(self.get().wrapping_sub(n))
    }
}

/// The state of one burst (see the module docs).
pub struct Burst<'v> {
    q: SplitQueue<'v>,
    last_avail: &'v mut u16,
    last_used: &'v mut u16,
    broken: &'v mut bool,
    stats_out: &'v mut QueueStats,
    call: Option<BorrowedFd<'v>>,
    /// Negotiated features of the queue.
    pub features: u64,
    /// Counters of this burst, added to the queue's at the end.
    pub stats: QueueStats,
    avail: Idx,
    next: Idx,
    used: Idx,
    first_used: Idx,
    /// `used.idx` when the burst began (`first_used` less the entries held back then).
    first_pub: Idx,
    published: Idx,
    /// The vring's held-back used entries ([`Vring::used_held`]) and when their last chain
    /// came, written back at the end.
    held: &'v mut u16,
    held_since: &'v mut u64,
    /// The burst's end may hold back its last used entries (see [`HOLD_MAX`]).
    hold: bool,
    log_limit: &'v mut LogLimiter,
    /// Used entries `used - shadow_len .. used`, not yet in the ring (the shadow used ring:
    /// written in one run when it is full and before each publish, so that the ring's lines,
    /// which the guest reads, are taken from it once and briefly rather than between packet
    /// copies).
    shadow: &'v mut [u64; USED_SHADOW],
    shadow_len: usize,
    /// Write used entries to the ring at once (see [`write_through`](Self::write_through)).
    through: bool,
    /// The vring's [`Vring::hdr_written`] hint, kept across bursts.
    pub hdr_written: &'v mut bool,
    /// The vring's translation memo, kept across bursts.
    memo: &'v mut TranslationCache,
    /// The dirty log, while `VHOST_F_LOG_ALL` is negotiated and a log is set.
    log: Option<&'v DirtyLog>,
    /// The log and the used ring's guest-physical address, when its writes are logged too
    /// (`VHOST_VRING_F_LOG` in SET_VRING_ADDR).
    used_log: Option<(&'v DirtyLog, u64)>,
}

impl<'v> Burst<'v> {
    /// Starts a burst on a locked vring: `None` if it is not ready or broken, or if the
    /// available index is corrupt (then it is marked broken, with a logged reason). Inlined,
    /// so that the state is built where the burst runs: returned from a call, it was copied
    /// out of the `Option` with a `memcpy` call.
    #[inline(always)]
    pub fn begin(vq: &'v mut Vring) -> Option<Burst<'v>> {
        if !vq.burst_may_start() {
            return None;
        }
        let Vring {
            rings,
            mem,
            size,
            last_avail_idx,
            last_used_idx,
            used_held,
            held_since,
            call,
            features,
            broken,
            stats,
            used_shadow,
            log_limit,
            hdr_written,
            memo,
            log: dirty,
            addrs,
            ..
        } = vq;
        let q = SplitQueue::new(rings.as_ref()?, mem, *size);
        let avail = q.avail_idx(*last_avail_idx);
        let pending = avail.wrapping_sub(*last_avail_idx);
        if pending > *size {
            if log_limit.check().is_some() {
                log::error!(
                    "avail.idx jumped from {} to {avail}, more than the queue size {}: queue marked broken",
                    *last_avail_idx,
                    *size
                );
            }
            *broken = true;
            stats.breaks += 1;
            return None;
        }
        let used = *last_used_idx;
        let published = Idx::new(used.wrapping_sub(*used_held));
        // The one test of the dirty log per burst: the loops take it as a type (see
        // `dirty_log`), so without logging they do nothing more per packet.
        let dirty: &'v Option<std::sync::Arc<DirtyLog>> = dirty;
        let log = active_log(dirty, *features);
        let used_log = used_ring_log(log, *addrs);
        Some(Burst {
            q,
            next: Idx::new(*last_avail_idx),
            last_avail: last_avail_idx,
            last_used: last_used_idx,
            broken,
            stats_out: stats,
            call: call.as_ref().map(AsFd::as_fd),
            features: *features,
            stats: QueueStats::default(),
            avail: Idx::new(avail),
            used: Idx::new(used),
            first_used: Idx::new(used),
            first_pub: published,
            published,
            held: used_held,
            held_since,
            hold: false,
            log_limit,
            shadow: &mut used_shadow.0,
            shadow_len: 0,
            through: false,
            hdr_written,
            memo,
            log,
            used_log,
        })
    }

    /// Chains the guest has made available and this burst has not taken.
    #[inline]
    pub fn pending(&self) -> u16 {
        self.avail.get().wrapping_sub(self.next.get())
    }

    /// The head of the chain `ahead` places after the next one, if the guest has made it
    /// available and it is within the table; for looking ahead only (a bad entry is reported
    /// when [`next_head`](Self::next_head) reaches it).
    #[inline]
    pub fn peek_head(&self, ahead: u16) -> Option<u16> {
        if ahead >= self.pending() {
            return None;
        }
        self.q.avail_head(self.next.get().wrapping_add(ahead)).ok()
    }

    /// Available-ring index of the next chain.
    #[inline]
    pub fn next_index(&self) -> u16 {
        self.next.get()
    }

    /// Takes the next chain, whose head the caller has read with
    /// [`peek_head`](Self::peek_head).
    #[inline]
    pub fn take_peeked(&mut self) {
        self.next = self.next.add(1);
    }

    /// Takes the next available chain's head.
    #[inline]
    pub fn next_head(&mut self) -> Result<u16, Stop> {
        if self.next == self.avail {
            return Err(Stop::Empty);
        }
        match self.q.avail_head(self.next.get()) {
            Ok(h) => {
                self.next = self.next.add(1);
                Ok(h)
            }
            Err(e) => {
                if self.log_limit.check().is_some() {
                    log::error!("available ring: {e}: queue marked broken");
                }
                *self.broken = true;
                self.stats.breaks += 1;
                Err(Stop::Broken)
            }
        }
    }

    /// Gives back the last `n` heads taken (their chains stay available).
    #[inline]
    pub fn unreserve_n(&mut self, n: usize) {
        self.next = self.next.sub(n as u16);
    }

    /// Publishes the used entries written so far if at least `min` are not yet (one release
    /// store of `used.idx`; the notification, if any, stays at [`finish`](Self::finish)),
    /// calling `before` first (to finish their buffers' writes). Returns whether it did.
    #[inline]
    pub fn publish_early(&mut self, min: u16, before: impl FnOnce()) -> bool {
        if self.used.get().wrapping_sub(self.published.get()) < min {
            return false;
        }
        before();
        self.flush_used();
        self.q.publish_used(self.used.get());
        if let Some((log, gpa)) = self.used_log {
            self.q
                .log_used(log, gpa, self.published.get(), self.used.get());
        }
        self.published = self.used;
        true
    }

    /// Asks for the used-ring lines of the next `n` entries (at most the chains pending) in a
    /// writable state.
    #[inline]
    pub fn prefetch_used(&self, n: usize) {
        let n = u16::try_from(n).unwrap_or(u16::MAX).min(self.pending());
        self.q.prefetch_used(self.used.get(), n);
    }

    /// Writes used entries straight to the ring from now on, instead of keeping them in the
    /// shadow (dequeue does: see there).
    #[inline]
    pub fn write_through(&mut self) {
        self.flush_used();
        self.through = true;
    }

    /// Lets the burst's end hold back its last used entries from a guest that polls (see
    /// [`HOLD_MAX`]; sync dequeue only).
    #[inline]
    pub fn hold_tail(&mut self) {
        self.hold = true;
    }

    /// How many of the entries not yet published (`pending`) the end of this burst keeps back
    /// (see [`HOLD_MAX`]): none if the guest does not poll or a log is kept, or once no chain
    /// has come for [`HOLD_TICKS`]; else up to the cap, the latest ones.
    #[inline]
    fn held_back(&mut self, pending: u16) -> u16 {
        if pending == 0
            || self.features & VIRTIO_RING_F_EVENT_IDX != 0
            || self.log.is_some()
            || self.q.avail_flags() & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        {
            return 0;
        }
        let now = ticks();
        if self.used != self.first_used {
            *self.held_since = now;
        } else if now.wrapping_sub(*self.held_since) > HOLD_TICKS {
            return 0;
        }
        pending.min(HOLD_MAX).min(self.q.size() / 4)
    }

    /// Returns chain `head` to the guest with `len` bytes written (in the shadow until the
    /// next flush, unless [`write_through`](Self::write_through)).
    #[inline(always)]
    pub fn used(&mut self, head: u16, len: u32) {
        if self.through {
            self.q.write_used(self.used.get(), head, len);
        } else {
            if self.shadow_len == USED_SHADOW {
                self.flush_used();
            }
            // shadow_len < USED_SHADOW here; the modulo (a mask) only spares the bounds check.
            self.shadow[self.shadow_len % USED_SHADOW] = used_word(head, len);
            self.shadow_len += 1;
        }
        self.used = self.used.add(1);
    }

    /// Writes the shadowed used entries to the ring (not yet published). Out of line: once
    /// per burst, and kept out of the per-packet code.
    #[inline(never)]
    fn flush_used(&mut self) {
        let n = self.shadow_len;
        if n == 0 {
            return;
        }
        let first = self.used.get().wrapping_sub(n as u16);
        self.q.write_used_words(first, &self.shadow[..n]);
        self.shadow_len = 0;
    }

    /// Returns a malformed chain with length 0 and counts it.
    #[cold]
    pub fn bad_chain(&mut self, head: u16, e: ChainError) {
        self.bad_chain_later(head, e);
        self.used(head, 0);
    }

    /// Counts (and logs, rate-limited) a malformed chain that the caller returns later, in
    /// its place in the order (the async path).
    #[cold]
    pub fn bad_chain_later(&mut self, head: u16, e: ChainError) {
        count_bad_chain(
            self.log_limit,
            &mut self.stats,
            format_args!("descriptor chain {head}"),
            e,
        );
    }

    /// Publishes the used entries (those [`publish_early`](Self::publish_early) did not, and
    /// those earlier bursts held back, less those this one holds back: see
    /// [`hold_tail`](Self::hold_tail)) with one release store, interrupts the guest if it
    /// asked, and stores the indexes and counters back into the vring.
    #[inline]
    pub fn finish(&mut self) {
        self.flush_used();
        let mut stats = self.stats;
        let held = if self.hold {
            self.held_back(self.used.get().wrapping_sub(self.first_pub.get()))
        } else {
            0
        };
        *self.held = held;
        let to = self.used.sub(held);
        if to != self.first_pub {
            let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
            if !event_idx {
                // We poll: ask the guest not to kick (virtio 1.2 §2.7.10).
                self.q.set_no_notify(true);
            }
            self.q.publish_used(to.get());
            if let Some((log, gpa)) = self.used_log {
                self.q.log_used(log, gpa, self.first_pub.get(), to.get());
            }
            if let Some(call) = self.call {
                if self
                    .q
                    .needs_interrupt(event_idx, self.first_pub.get(), to.get())
                {
                    // An eventfd write adds to its counter; EAGAIN (counter full) still
                    // leaves it readable, so the guest is interrupted either way.
                    let _ = nix::unistd::write(call, &1u64.to_ne_bytes());
                    stats.interrupts += 1;
                }
            }
        }
        *self.last_avail = self.next.get();
        *self.last_used = self.used.get();
        self.stats_out.add(&stats);
    }
}

/// Counts a malformed chain (`what` names it) in `stats` and logs it, rate-limited by
/// `limit`: the one report of both ring layouts.
#[cold]
pub(super) fn count_bad_chain(
    limit: &mut LogLimiter,
    stats: &mut QueueStats,
    what: std::fmt::Arguments<'_>,
    e: ChainError,
) {
    if let Some(more) = limit.check() {
        if more == 0 {
            log::warn!("{what} dropped: {e}");
        } else {
            log::warn!("{what} dropped: {e} (and {more} more since the last line)");
        }
    }
    stats.bad_chains += 1;
}

/// Chains read [`READ_AHEAD`] places ahead of the one being copied: the head and descriptor
/// of each, read once (the burst takes this copy when it gets there), so that the caller can
/// ask for the chain's buffer while earlier packets are copied. The guest's lines were last
/// touched by its core; otherwise each packet waits for its own, one after the other.
#[derive(Default)]
pub struct ReadAhead {
    /// By available-ring index modulo the slot count: (index, head, descriptor).
    slots: [Option<(u16, u16, VirtqDesc)>; READ_AHEAD as usize + 1],
}

impl ReadAhead {
    /// Reads the chain `ahead` (at most [`READ_AHEAD`]) places after `b`'s next one, if the
    /// guest has made it available: its descriptor, for the caller to prefetch the buffer of.
    #[inline]
    pub fn read(&mut self, b: &Burst<'_>, ahead: u16) -> Option<VirtqDesc> {
        debug_assert!(ahead <= READ_AHEAD);
        let head = b.peek_head(ahead)?;
        let idx = b.next_index().wrapping_add(ahead);
        let d = b.q.desc(head);
        self.slots[usize::from(idx) % self.slots.len()] = Some((idx, head, d));
        Some(d)
    }

    /// The head and descriptor of `b`'s next chain, without taking it: the copy read ahead if
    /// there is one, else read now. `None` if there is no next chain or its head is out of
    /// the table (then [`Burst::next_head`] reports it). Always inlined: returned through
    /// memory, its result was stored and read back in other widths, and that load waited for
    /// every older store (guest lines) to reach the cache.
    #[inline(always)]
    pub fn next(&mut self, b: &Burst<'_>) -> Option<(u16, VirtqDesc)> {
        let idx = b.next_index();
        let n = self.slots.len();
        let slot = &mut self.slots[usize::from(idx) % n];
        if let Some((i, head, d)) = *slot {
            *slot = None;
            if i == idx {
                return Some((head, d));
            }
        }
        let head = b.peek_head(0)?;
        Some((head, b.q.desc(head)))
    }
}

/// The split ring's burst as the data path sees it: each method the inherent one of the same
/// name (see [`Ring`]).
impl<'v> Ring<'v> for Burst<'v> {
    type Head = u16;
    type Walk = Chain<'v>;
    type Ahead = ReadAhead;
    const PREFETCH_TX: bool = false;

    #[inline(always)]
    fn features(&self) -> u64 {
        self.features
    }

    #[inline(always)]
    fn memory(&self) -> &'v GuestMemory {
        self.q.memory()
    }

    #[inline(always)]
    fn stats(&mut self) -> &mut QueueStats {
        &mut self.stats
    }

    #[inline(always)]
    fn hdr_written(&mut self) -> &mut bool {
        self.hdr_written
    }

    #[inline(always)]
    fn hdr_was_written(&self) -> bool {
        *self.hdr_written
    }

    #[inline(always)]
    fn memo(&self) -> TranslationCache {
        *self.memo
    }

    #[inline(always)]
    fn keep_memo(&mut self, tc: TranslationCache) {
        *self.memo = tc;
    }

    #[inline(always)]
    fn dirty_log(&self) -> Option<&'v DirtyLog> {
        self.log
    }

    #[inline(always)]
    fn available(&self, max: u16) -> u16 {
        self.pending().min(max)
    }

    #[inline(always)]
    fn all_posted(&self) -> bool {
        self.pending() == self.q.size()
    }

    #[inline(always)]
    fn has_more(&self) -> bool {
        self.pending() != 0
    }

    const BATCH: bool = false;

    #[inline(always)]
    fn peek_batch(&self, _k: u16, _writable: bool) -> Option<[u16; BATCH]> {
        None
    }

    #[inline(always)]
    fn take_batch(&mut self, _heads: &[u16; BATCH]) -> bool {
        false
    }

    #[inline(always)]
    fn next_head(&mut self) -> Result<u16, Stop> {
        Burst::next_head(self)
    }

    #[inline(always)]
    fn read_ahead(&self, a: &mut ReadAhead, k: u16) -> Option<VirtqDesc> {
        a.read(self, k)
    }

    #[inline(always)]
    fn peek_desc(&self, k: u16) -> Option<VirtqDesc> {
        self.peek_head(k).map(|h| self.q.desc(h))
    }

    #[inline(always)]
    fn peek_next(&mut self, a: &mut ReadAhead) -> Option<(u16, VirtqDesc)> {
        a.next(self)
    }

    #[inline(always)]
    fn take_peeked(&mut self, _: u16) {
        Burst::take_peeked(self);
    }

    #[inline(always)]
    fn desc(&self, h: u16) -> VirtqDesc {
        self.q.desc(h)
    }

    #[inline(always)]
    fn walk(&self, h: u16, writable: bool, max_len: u64) -> Chain<'v> {
        self.q.chain(h, writable, max_len)
    }

    #[inline(always)]
    fn unreserve_n(&mut self, n: usize) {
        Burst::unreserve_n(self, n);
    }

    #[inline(always)]
    fn used(&mut self, h: u16, len: u32) {
        Burst::used(self, h, len);
    }

    #[inline(always)]
    fn bad_chain(&mut self, h: u16, e: ChainError) {
        Burst::bad_chain(self, h, e);
    }

    #[inline(always)]
    fn bad_chain_later(&mut self, h: u16, e: ChainError) {
        Burst::bad_chain_later(self, h, e);
    }

    #[inline(always)]
    fn used_entry(&self, h: u16, len: u32) -> u64 {
        used_word(h, len)
    }

    #[inline(always)]
    fn publish_early(&mut self, min: u16, before: impl FnOnce()) -> bool {
        Burst::publish_early(self, min, before)
    }

    #[inline(always)]
    fn prefetch_used(&self, n: usize) {
        Burst::prefetch_used(self, n);
    }

    /// Writes through and may hold its tail back; no idle write-back (measured on the packed
    /// ring only).
    #[inline(always)]
    fn sync_dequeue(&mut self) {
        Burst::write_through(self);
        Burst::hold_tail(self);
    }

    #[inline(always)]
    fn note_read(&mut self, _addr: usize, _len: usize) {}

    #[inline(always)]
    fn finish(&mut self) {
        Burst::finish(self);
    }
}
