//! The memory one soft channel shares between its driver (a [`SoftEngine`](super::SoftEngine),
//! on the caller's thread) and its device (a [`SoftDevice`](super::SoftDevice), on the polling
//! thread), laid out and used the way a hardware queue is.
//!
//! | memory | written by | read by |
//! |---|---|---|
//! | `descs[slot]`, the slot's SG entries | driver, while the slot is free | device, after the doorbell covers it |
//! | `doorbell` (index of the next unsubmitted job) | driver, at submit | device |
//! | `records[slot]` (completion record) | device, when the job has finished | driver, when reporting |
//! | `state` (`CLOSED`, `BUSY`) | driver once at drop; device around each copy step | both |
//! | `stopped` | device, once, when it is dropped | driver |
//! | `fail` (encoded [`FailPolicy`](crate::FailPolicy)) | driver | device, at each dispatch |
//!
//! Every field is an atomic, so sharing needs no `unsafe`; the orderings are:
//!
//! * **Doorbell**: driver `doorbell.store(Release)` ⟷ device `doorbell.load(Acquire)`. The
//!   descriptor and SG stores (all `Relaxed`) of the jobs before the doorbell value happen before
//!   the device reads them.
//! * **Completion record**: device `records[slot].store(Release)` after the job's last copy ⟷
//!   driver `records[slot].load(Acquire)` when reporting. The job's
//!   destination bytes are visible to the caller once it is reported. The same pair returns the
//!   slot: the device reads a descriptor only between the doorbell and the record, so its reads
//!   happen before the driver's writes of the slot's next job.
//! * A record carries the ring index of its job (`idx << 16 | VALID | status`), so it is never
//!   cleared: until job `idx` finishes, the slot holds the record of job `idx - ring_size` (or
//!   the zeroed, not `VALID`, initial one), whose index differs because `ring_size < 2^16`.
//! * **Close handshake**: see [`ChannelRing::close`] and [`ChannelRing::enter`].
//! * **Stop**: device `stopped.store(true, Release)` as it is dropped, after its last access to
//!   job memory ⟷ driver `stopped.load(Acquire)` in [`ChannelRing::is_stopped`].

use std::hint::spin_loop;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64};

use crossbeam_utils::CachePadded;

use crate::{ChannelConfig, Iova, Sge, Status};

/// `state`: the driver is gone; the device must not touch this channel's job memory again.
const CLOSED: u32 = 1 << 0;
/// `state`: the device is copying job memory of this channel.
const BUSY: u32 = 1 << 1;

/// `records[slot]`: the record describes a finished job.
const VALID: u32 = 1 << 15;

/// `Desc::ctl`: opcode (bits 0..8), flags (8..16), SG entry counts (16..32, 32..48).
const OP_COPY: u64 = 1;
const OP_COPY_SG: u64 = 2;
const CTL_FENCE: u64 = 1 << 8;

/// One descriptor: 32 bytes, like half a DSA descriptor.
#[repr(C, align(32))]
#[derive(Default)]
struct Desc {
    ctl: AtomicU64,
    len: AtomicU64,
    src: AtomicU64,
    dst: AtomicU64,
}

/// One scatter-gather table entry.
#[derive(Default)]
struct SgEntry {
    addr: AtomicU64,
    len: AtomicU64,
}

/// The shared memory of one channel. See the [module documentation](self).
pub(super) struct ChannelRing {
    doorbell: CachePadded<AtomicU16>,
    state: CachePadded<AtomicU32>,
    stopped: CachePadded<AtomicBool>,
    fail: CachePadded<AtomicU64>,
    records: Box<[AtomicU32]>,
    descs: Box<[Desc]>,
    /// `2 * max_sges` entries per slot: the sources, then the destinations.
    sg: Box<[SgEntry]>,
    ring_size: u16,
    max_sges: u16,
}

impl ChannelRing {
    /// `cfg` is validated.
    pub(super) fn new(cfg: &ChannelConfig) -> ChannelRing {
        let n = usize::from(cfg.ring_size);
        ChannelRing {
            doorbell: CachePadded::new(AtomicU16::new(0)),
            state: CachePadded::new(AtomicU32::new(0)),
            stopped: CachePadded::new(AtomicBool::new(false)),
            fail: CachePadded::new(AtomicU64::new(cfg.fail.encode())),
            records: (0..n).map(|_| AtomicU32::new(0)).collect(),
            descs: (0..n).map(|_| Desc::default()).collect(),
            sg: (0..n * 2 * usize::from(cfg.max_sges))
                .map(|_| SgEntry::default())
                .collect(),
            ring_size: cfg.ring_size,
            max_sges: cfg.max_sges,
        }
    }

    pub(super) fn ring_size(&self) -> u16 {
        self.ring_size
    }

    pub(super) fn max_sges(&self) -> u16 {
        self.max_sges
    }

    #[inline]
    fn slot(&self, idx: u16) -> usize {
        usize::from(idx & (self.ring_size - 1))
    }

    // ---- driver side ----

    /// Writes the descriptor of copy job `idx` (whose slot is free).
    #[inline]
    pub(super) fn write_copy(&self, idx: u16, src: Iova, dst: Iova, len: u32, fence: bool) {
        let d = &self.descs[self.slot(idx)];
        // Relaxed: published by the doorbell's Release store.
        d.ctl
            .store(OP_COPY | if fence { CTL_FENCE } else { 0 }, Relaxed);
        d.len.store(u64::from(len), Relaxed);
        d.src.store(src.0, Relaxed);
        d.dst.store(dst.0, Relaxed);
    }

    /// Writes the descriptor and SG entries of job `idx` (whose slot is free); the lists are
    /// validated (`1..=max_sges` entries each).
    #[inline]
    pub(super) fn write_sg(&self, idx: u16, src: &[Sge], dst: &[Sge], fence: bool) {
        let slot = self.slot(idx);
        let base = slot * 2 * usize::from(self.max_sges);
        for (e, s) in self.sg[base..].iter().zip(src.iter().chain(dst)) {
            // Relaxed: published by the doorbell's Release store.
            e.addr.store(s.addr.0, Relaxed);
            e.len.store(u64::from(s.len), Relaxed);
        }
        let counts = (src.len() as u64) << 16 | (dst.len() as u64) << 32;
        let d = &self.descs[slot];
        d.ctl.store(
            OP_COPY_SG | counts | if fence { CTL_FENCE } else { 0 },
            Relaxed,
        );
    }

    /// Makes the jobs before ring index `tail` visible to the device.
    #[inline]
    pub(super) fn ring_doorbell(&self, tail: u16) {
        // Release: pairs with the device's Acquire load in `doorbell`, publishing the
        // descriptors and SG entries written before.
        self.doorbell.store(tail, Release);
    }

    /// The status of submitted job `idx` if it has finished.
    #[inline]
    pub(super) fn record(&self, idx: u16) -> Option<Status> {
        // Acquire: pairs with the Release store in `complete`: once the job is seen finished,
        // its destination bytes are visible here, and the device is done with its slot. (An
        // Acquire load costs what a Relaxed one does on x86; on weaker machines a Relaxed scan
        // plus one `fence(Acquire)` per report would be cheaper, but thread sanitizers do not
        // model fences, and this way the pairs can be checked.)
        let rec = self.records[self.slot(idx)].load(Acquire);
        (rec >> 16 == u32::from(idx) && rec & VALID != 0)
            .then(|| Status::from_code(rec as u16 & 0x7fff))
    }

    pub(super) fn set_fail(&self, word: u64) {
        // Relaxed: a knob; the device picks it up at some later dispatch.
        self.fail.store(word, Relaxed);
    }

    /// Whether the device has stopped for good; after `true`, it never touches this channel's
    /// job memory again.
    #[inline]
    pub(super) fn is_stopped(&self) -> bool {
        // Acquire: pairs with the Release store in `stop`, after the device's last copy.
        self.stopped.load(Acquire)
    }

    /// Closes the channel (its driver is being dropped): once this returns, the device never
    /// touches this channel's job memory again.
    ///
    /// Both sides do read-modify-writes of `state`, so they are totally ordered: if the device's
    /// `fetch_or(BUSY)` in [`enter`](Self::enter) comes first, it is copying and we wait for its
    /// `fetch_and(!BUSY, Release)` (our `Acquire` load makes its copies happen before our
    /// return); if ours comes first, the device sees `CLOSED` and copies nothing. The wait is
    /// bounded by one copy step of the device (at most `chunk` bytes per lane).
    pub(super) fn close(&self) {
        // AcqRel: an RMW in the same total order as the device's; Acquire for the case where
        // `BUSY` is already clear and a step just ended.
        let mut state = self.state.fetch_or(CLOSED, AcqRel);
        let mut spins = 0u32;
        while state & BUSY != 0 {
            if spins < 1024 {
                spin_loop();
                spins += 1;
            } else {
                // The device's thread may be preempted (2 cores shared): let it run.
                std::thread::yield_now();
            }
            // Acquire: pairs with the Release `fetch_and` in `Busy::drop`.
            state = self.state.load(Acquire);
        }
    }

    // ---- device side ----

    /// The driver's doorbell: ring index of the next job not submitted.
    #[inline]
    pub(super) fn doorbell(&self) -> u16 {
        // Acquire: pairs with the Release store in `ring_doorbell`.
        self.doorbell.load(Acquire)
    }

    /// Whether the driver has closed the channel (a hint; [`enter`](Self::enter) decides).
    #[inline]
    pub(super) fn is_closed(&self) -> bool {
        self.state.load(Relaxed) & CLOSED != 0
    }

    /// The failure policy word.
    #[inline]
    pub(super) fn fail_word(&self) -> u64 {
        self.fail.load(Relaxed)
    }

    /// Whether submitted job `idx` carries a fence.
    #[inline]
    pub(super) fn fenced(&self, idx: u16) -> bool {
        self.descs[self.slot(idx)].ctl.load(Relaxed) & CTL_FENCE != 0
    }

    /// Reads submitted job `idx` into `src` / `dst` (cleared first) and returns its total
    /// length in bytes.
    pub(super) fn read_job(&self, idx: u16, src: &mut Vec<Sge>, dst: &mut Vec<Sge>) -> u64 {
        src.clear();
        dst.clear();
        let slot = self.slot(idx);
        let d = &self.descs[slot];
        // Relaxed: the doorbell's Acquire load (which covered `idx`) ordered these reads.
        let ctl = d.ctl.load(Relaxed);
        if ctl & 0xff == OP_COPY {
            let len = d.len.load(Relaxed);
            src.push(Sge::new(Iova(d.src.load(Relaxed)), len as u32));
            dst.push(Sge::new(Iova(d.dst.load(Relaxed)), len as u32));
            return len;
        }
        debug_assert_eq!(ctl & 0xff, OP_COPY_SG);
        let max = usize::from(self.max_sges);
        // Clamped, so that a corrupt descriptor cannot reach another slot's entries.
        let nb_src = ((ctl >> 16) as u16 as usize).min(max);
        let nb_dst = ((ctl >> 32) as u16 as usize).min(max);
        let base = slot * 2 * max;
        let entry = |e: &SgEntry| Sge::new(Iova(e.addr.load(Relaxed)), e.len.load(Relaxed) as u32);
        src.extend(self.sg[base..base + nb_src].iter().map(entry));
        dst.extend(
            self.sg[base + nb_src..base + nb_src + nb_dst]
                .iter()
                .map(entry),
        );
        src.iter().map(|e| u64::from(e.len)).sum()
    }

    /// Writes the completion record of job `idx`. Call it after the job's last access to its
    /// memory: from then on the driver may report the job and reuse its slot.
    #[inline]
    pub(super) fn complete(&self, idx: u16, status: Status) {
        let rec = u32::from(idx) << 16 | VALID | u32::from(status.code());
        // Release: pairs with the driver's Acquire load in `record`.
        self.records[self.slot(idx)].store(rec, Release);
    }

    /// Enters a copy step for this channel: `None` if the channel is closed (then nothing of it
    /// may be touched), else a guard that keeps [`close`](Self::close) waiting until dropped.
    #[inline]
    pub(super) fn enter(&self) -> Option<Busy<'_>> {
        // Acquire: the step's copies stay after this check of `CLOSED`. Which of this RMW and
        // the driver's `fetch_or(CLOSED)` comes first decides who waits; see `close`.
        let prev = self.state.fetch_or(BUSY, Acquire);
        let guard = Busy(&self.state);
        if prev & CLOSED != 0 {
            return None; // `guard` clears BUSY
        }
        Some(guard)
    }

    /// Marks the channel's device as gone for good (see [`is_stopped`](Self::is_stopped)).
    pub(super) fn stop(&self) {
        // Release: pairs with the Acquire load in `is_stopped`.
        self.stopped.store(true, Release);
    }
}

impl std::fmt::Debug for ChannelRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRing")
            .field("ring_size", &self.ring_size)
            .field("max_sges", &self.max_sges)
            .field("doorbell", &self.doorbell.load(Relaxed))
            .field("state", &self.state.load(Relaxed))
            .field("stopped", &self.stopped.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// The device is inside a copy step of a channel (see [`ChannelRing::enter`]).
pub(super) struct Busy<'a>(&'a AtomicU32);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load in `close`, so the step's copies happen before
        // the driver's drop returns. In `Drop` so that a panic mid-step cannot hang `close`.
        self.0.fetch_and(!BUSY, Release);
    }
}
