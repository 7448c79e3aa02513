//! The asynchronous copy path's state of one vring: the copy device ([`AsyncCopyOps`]) and
//! the packets in flight, retired strictly in submission order.
//!
//! A submitted packet has taken its descriptor chains (the available index moved past them)
//! and had its small copies done by the CPU; its large copies are jobs of the copy device. Its
//! used entries are written only when it *retires*: when every job of it and of every packet
//! submitted before it has completed. So a guest never sees a packet before an earlier one,
//! whatever mix of CPU and DMA copies and however out of order the device finishes jobs, and a
//! chain is never returned while a job may still write into it.
//!
//! Memory, rings and indexes only change with nothing in flight: before a front-end request
//! that changes a vring or the memory, the control thread drains the copies in flight of the
//! vrings it changes (`Vring::drain_async`), as the handler table's `data_plane` column says
//! (`driver/handlers.rs`; disconnect drains every vring). The [`Vring`] setters drain
//! whatever is still in flight themselves, logging it as a bug of that table.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rvhost_dma::{DmaEngine, Iova, OpFlags, Status};

use super::packed::{PackedQueue, PackedUsed, mark_used_slots};
use super::split::SplitQueue;
use super::{Vring, packed_used_log};
use crate::features::VIRTIO_RING_F_EVENT_IDX;
use crate::mbuf::Mbuf;
use crate::memory::GuestMemory;

/// Copies below this many bytes are done by the CPU when a channel does not say otherwise.
/// Below it a copy costs the CPU less than preparing a job and retiring it.
pub const DEFAULT_THRESHOLD: u32 = 256;

/// How long a drain waits for the copy device before it gives up on the jobs in flight (and
/// leaks what they use, see [`Vring::drain_async`]).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// One copy handed to a copy device: `len` bytes from `src` to `dst` (process virtual
/// addresses, which are the IOVAs of the engines of `rvhost-dma`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyJob {
    /// Start of the source.
    pub src: *const u8,
    /// Start of the destination.
    pub dst: *mut u8,
    /// Bytes to copy.
    pub len: u32,
}

// SAFETY: a job is two addresses and a length; whoever dereferences them does so under the
// contract of `AsyncCopyOps::transfer_data`, whatever thread it runs on.
unsafe impl Send for CopyJob {}

/// How a job ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CopyStatus {
    /// The bytes were copied.
    #[default]
    Done,
    /// The device failed the job; rvhost copies it again with the CPU.
    Failed,
}

/// A copy device serving one vring's asynchronous data path (DPDK's
/// `rte_vhost_async_channel_ops`). [`DmaCopy`] makes any [`DmaEngine`] one; an application can
/// implement it over its own device.
///
/// # Safety
///
/// rvhost frees or hands back a job's buffers, and returns its guest buffer to the guest, as
/// soon as the job is reported, so an implementation must:
/// - report a job only after its copy is complete and visible to the CPU (a release/acquire
///   pair or a fence between the device's writes and the report);
/// - never touch a job's memory after reporting it, nor after being dropped (drop waits for or
///   abandons what is in flight);
/// - report jobs exactly once each, in the order [`transfer_data`](Self::transfer_data) took
///   them.
pub unsafe trait AsyncCopyOps: Send {
    /// Starts as many of `jobs` as the device can take now, in order, and returns how many it
    /// took (rvhost copies the others with the CPU at once).
    ///
    /// # Safety
    ///
    /// The caller (rvhost) guarantees that from this call until a job is reported by
    /// [`check_completed_copies`](Self::check_completed_copies), its source stays valid for
    /// reads and unwritten, its destination valid for writes and otherwise unaccessed, and the
    /// two do not overlap.
    unsafe fn transfer_data(&mut self, jobs: &[CopyJob]) -> usize;

    /// Reports jobs that finished, oldest first, in the order they were taken: writes the
    /// status of each to `status[..n]` and returns `n` (at most `status.len()`; 0 if the oldest
    /// job has not finished).
    fn check_completed_copies(&mut self, status: &mut [CopyStatus]) -> usize;
}

/// The device of a channel being unregistered (its real one was handed back): takes nothing.
pub(crate) struct Idle;

// SAFETY: it takes no job, so it never touches memory nor reports anything.
unsafe impl AsyncCopyOps for Idle {
    unsafe fn transfer_data(&mut self, _jobs: &[CopyJob]) -> usize {
        0
    }

    fn check_completed_copies(&mut self, _status: &mut [CopyStatus]) -> usize {
        0
    }
}

/// A [`DmaEngine`] channel as the copy device of a vring: jobs become `copy`s, one doorbell
/// per [`transfer_data`](AsyncCopyOps::transfer_data), completions are read with `completed`
/// (and `completed_status` after an error).
pub struct DmaCopy<E> {
    engine: E,
    status: Vec<Status>,
    /// The engine refused a doorbell: it is gone, nothing more is given to it.
    stopped: bool,
}

impl<E: DmaEngine> DmaCopy<E> {
    /// Wraps `engine`.
    pub fn new(engine: E) -> DmaCopy<E> {
        let n = usize::from(engine.ring_size()).max(1);
        DmaCopy {
            engine,
            status: vec![Status::default(); n],
            stopped: false,
        }
    }

    /// The engine (for its counters).
    pub fn engine(&self) -> &E {
        &self.engine
    }
}

impl<E> fmt::Debug for DmaCopy<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaCopy")
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

// SAFETY: `DmaEngine::completed`/`completed_status` report a job only once the engine has
// finished it, in ring order, exactly once (the trait's contract, which the engines of
// rvhost-dma test); a job is reported in the order `copy` took it, and `transfer_data` hands
// jobs to `copy` in order. Dropping the engine abandons unreported jobs without touching their
// memory (each engine's documented drop behaviour).
unsafe impl<E: DmaEngine + Send> AsyncCopyOps for DmaCopy<E> {
    unsafe fn transfer_data(&mut self, jobs: &[CopyJob]) -> usize {
        if self.stopped {
            return 0;
        }
        let mut taken = 0;
        for j in jobs {
            let (src, dst) = (Iova::from_ptr(j.src), Iova::from_mut_ptr(j.dst));
            // SAFETY: the caller keeps both ranges valid and otherwise unaccessed until the job
            // is reported (this function's contract is `copy`'s).
            if unsafe { self.engine.copy(src, dst, j.len, OpFlags::NONE) }.is_err() {
                break; // ring full (or engine gone): the CPU copies the rest
            }
            taken += 1;
        }
        if taken > 0 && self.engine.submit().is_err() {
            // The engine behind the channel is gone: it will neither run nor report these,
            // and never touches their memory, so the CPU copies them.
            self.stopped = true;
            log::error!("copy engine stopped: copies fall back to the CPU");
            return 0;
        }
        taken
    }

    fn check_completed_copies(&mut self, status: &mut [CopyStatus]) -> usize {
        let max = u16::try_from(status.len().min(self.status.len())).unwrap_or(u16::MAX);
        let ok = self.engine.completed(max);
        let mut n = usize::from(ok.count);
        status[..n].fill(CopyStatus::Done);
        if ok.has_error && n < usize::from(max) {
            let more = max - ok.count;
            let c = self
                .engine
                .completed_status(more, &mut self.status[..usize::from(more)]);
            for (out, s) in status[n..]
                .iter_mut()
                .zip(&self.status[..usize::from(c.count)])
            {
                *out = if *s == Status::Successful {
                    CopyStatus::Done
                } else {
                    CopyStatus::Failed
                };
            }
            n += usize::from(c.count);
        }
        n
    }
}

/// How a vring's asynchronous channel works (DPDK's `rte_vhost_async_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncConfig {
    /// Copies below this many bytes are done by the CPU at submit; the others are jobs of the
    /// copy device. 0 sends every copy to the device.
    pub threshold: u32,
    /// Packets complete in submission order (DPDK's `async_inorder`). rvhost only retires in
    /// order, so `false` is refused.
    pub inorder: bool,
}

impl Default for AsyncConfig {
    fn default() -> AsyncConfig {
        AsyncConfig {
            threshold: DEFAULT_THRESHOLD,
            inorder: true,
        }
    }
}

/// Counters of a vring's asynchronous channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AsyncStats {
    /// Packets taken by `submit_enqueue_burst`.
    pub submitted: u64,
    /// Packets retired (their used entries written, the mbuf handed back).
    pub completed: u64,
    /// Copies handed to the copy device.
    pub dma_copies: u64,
    /// Bytes of those.
    pub dma_bytes: u64,
    /// Copies the CPU did at submit (below the threshold, headers, or refused by the device).
    pub cpu_copies: u64,
    /// Bytes of those.
    pub cpu_bytes: u64,
    /// Jobs the device reported failed, copied again by the CPU.
    pub dma_errors: u64,
    /// Packets retired without a used entry, because the ring was gone or broken by then (the
    /// mbuf still comes back).
    pub dropped: u64,
    /// Drains by the control thread that found jobs in flight.
    pub drains: u64,
    /// Drains that gave up on a device that did not finish (their memory leaked on purpose).
    pub drain_timeouts: u64,
    /// Drains a vring setter had to do because the control thread had not quiesced the
    /// vring before the request (a bug of the handler table; 0 in a correct build).
    pub late_drains: u64,
}

/// A packet (or a malformed chain) taken by a submit and not retired yet.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// A packet (its mbuf is `mbuf` once the submit hands it over), or chains returned empty
    /// in their place in the order (a malformed chain, or chains a packet gave back).
    pub is_pkt: bool,
    /// The packet.
    pub mbuf: Option<Mbuf>,
    /// Its used entries (the next `used` of [`AsyncQueue::used`]).
    pub used: u16,
    /// Its jobs the device has not reported yet.
    pub jobs_left: u32,
    /// Guest ranges it writes that are marked in the dirty log when it retires (the next
    /// `dirty` of [`AsyncQueue::dirty`]; 0 unless the device logs).
    pub dirty: u16,
}

/// The asynchronous channel of one vring (see the module docs).
pub(crate) struct AsyncQueue {
    /// The copy device.
    pub ops: Box<dyn AsyncCopyOps>,
    /// Copies below this many bytes stay on the CPU.
    pub threshold: usize,
    /// Packets in submission order; `pkts[0]` has sequence number `head_seq`.
    pub pkts: VecDeque<InFlight>,
    /// Used entries of `pkts` ([`used_word`](super::split::used_word)s), in order.
    pub used: VecDeque<u64>,
    /// While the device logs dirty pages (`VHOST_F_LOG_ALL`): the guest ranges `(gpa, len)`
    /// that `pkts` write, in order, marked when their packet retires (after its jobs are
    /// done: a page marked before the device wrote it could be copied by the migration, its
    /// bit cleared, and the write lost).
    pub dirty: VecDeque<(u64, u64)>,
    /// Jobs the device took and has not reported, oldest first, with their packet's sequence
    /// number (and the job, to copy it again if the device fails it).
    pub jobs: VecDeque<(u64, CopyJob)>,
    /// Sequence number of `pkts[0]`.
    pub head_seq: u64,
    /// Packets retired by a drain of the control thread, handed back by the next poll.
    pub done: Vec<Mbuf>,
    /// The memory table the jobs in flight write into, kept mapped until they are reported.
    pub hold: Option<GuestMemory>,
    /// A drain gave up on the device: the channel takes nothing more.
    pub dead: bool,
    /// Counters.
    pub stats: AsyncStats,
    /// Scratch for the device's reports.
    status: Vec<CopyStatus>,
    /// Scratch of a submit: the jobs for the device, and their packets' sequence numbers.
    pub batch: Vec<CopyJob>,
    /// Sequence numbers of `batch`'s packets.
    pub batch_seq: Vec<u64>,
    /// Scratch of a poll: the used entries of the packets it retires.
    pub entries: Vec<u64>,
    /// Scratch of an async dequeue: the burst's fresh mbufs.
    pub fresh: Vec<Mbuf>,
}

impl fmt::Debug for AsyncQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncQueue")
            .field("threshold", &self.threshold)
            .field("in_flight", &self.pkts.len())
            .field("jobs", &self.jobs.len())
            .field("done", &self.done.len())
            .field("dead", &self.dead)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AsyncQueue {
    /// A channel over `ops` for a vring of up to `size` descriptors.
    pub fn new(ops: Box<dyn AsyncCopyOps>, config: &AsyncConfig, size: u16) -> AsyncQueue {
        let mut q = AsyncQueue {
            ops,
            threshold: config.threshold as usize,
            pkts: VecDeque::new(),
            used: VecDeque::new(),
            dirty: VecDeque::new(),
            jobs: VecDeque::new(),
            head_seq: 0,
            done: Vec::new(),
            hold: None,
            dead: false,
            stats: AsyncStats::default(),
            status: vec![CopyStatus::Done; 256],
            batch: Vec::new(),
            batch_seq: Vec::new(),
            entries: Vec::new(),
            fresh: Vec::new(),
        };
        q.reserve(size);
        q
    }

    /// Makes room for a vring of `size` descriptors, so that submits do not allocate: each
    /// packet and each used entry in flight holds a chain of the ring.
    pub fn reserve(&mut self, size: u16) {
        let n = usize::from(size).max(256);
        if self.pkts.capacity() < n {
            self.pkts.reserve(n - self.pkts.len());
            self.used.reserve(n - self.used.len());
            self.jobs.reserve(self.max_jobs(n) - self.jobs.len());
            self.done.reserve(n - self.done.len());
            self.batch.reserve(self.max_jobs(n) - self.batch.len());
            self.batch_seq
                .reserve(self.max_jobs(n) - self.batch_seq.len());
            self.entries.reserve(n - self.entries.len());
            self.fresh.reserve(n - self.fresh.len());
        }
    }

    /// Most jobs in flight for a ring of `n` descriptors (beyond it copies stay on the CPU).
    fn max_jobs(&self, n: usize) -> usize {
        4 * n
    }

    /// Room for one more job in this submit's batch without allocating.
    fn job_room(&self) -> bool {
        self.jobs.len() + self.batch.len() < self.jobs.capacity()
            && self.batch.len() < self.batch.capacity()
    }

    /// The threshold rule for one copy of `len` bytes of packet `seq`: at least the threshold
    /// (and room in the batch), it joins the submit's batch for the device and this returns
    /// `true`; else it is counted as a CPU copy, which the caller does now (`false`).
    #[inline]
    pub fn batch_or_cpu(&mut self, seq: u64, src: *const u8, dst: *mut u8, len: usize) -> bool {
        if len >= self.threshold && len > 0 && self.job_room() {
            self.batch.push(CopyJob {
                src,
                dst,
                len: len as u32,
            });
            self.batch_seq.push(seq);
            true
        } else {
            self.stats.cpu_copies += 1;
            self.stats.cpu_bytes += len as u64;
            false
        }
    }

    /// Takes the jobs of packet `seq` (the last one batched) out of the submit's batch: the
    /// packet is dropped before it was handed over, its destination is about to be freed.
    pub fn unbatch(&mut self, seq: u64) {
        while self.batch_seq.last() == Some(&seq) {
            self.batch_seq.pop();
            if let Some(job) = self.batch.pop() {
                self.stats.cpu_copies += 1; // not a device copy after all
                self.stats.cpu_bytes += u64::from(job.len);
            }
        }
    }

    /// Hands up to `max` packets a drain retired (or that retired at submit) to `out`;
    /// returns how many.
    pub fn take_done(&mut self, max: usize, out: &mut Vec<Mbuf>) -> usize {
        let k = max.min(self.done.len());
        out.extend(self.done.drain(..k));
        k
    }

    /// Anything taken and not handed back: packets in flight or retired by a drain.
    pub fn busy(&self) -> bool {
        !self.pkts.is_empty() || !self.done.is_empty()
    }

    /// Packets taken and not retired yet (their chains are reserved, some copies may run).
    pub fn in_flight(&self) -> bool {
        !self.pkts.is_empty()
    }

    /// Sequence number the next submitted packet gets.
    pub fn next_seq(&self) -> u64 {
        self.head_seq + self.pkts.len() as u64
    }

    /// Reads the device's reports and counts them against their packets; failed jobs are
    /// copied again by the CPU. Returns how many jobs were reported.
    pub fn collect(&mut self) -> usize {
        if self.jobs.is_empty() {
            return 0;
        }
        let max = self.jobs.len().min(self.status.len());
        let mut n = self.ops.check_completed_copies(&mut self.status[..max]);
        if n > max {
            // A device reporting more than it was given is broken; trust only what it had.
            log::error!("copy device reported {n} jobs, {max} were in flight");
            n = max;
        }
        for i in 0..n {
            let Some((seq, job)) = self.jobs.pop_front() else {
                break;
            };
            if self.status[i] == CopyStatus::Failed {
                // SAFETY: the device reported the job, so it no longer touches either range;
                // the source is the data of an mbuf this queue owns, the destination a guest
                // buffer of a chain this queue has not returned, in the table held by `hold`.
                unsafe { std::ptr::copy_nonoverlapping(job.src, job.dst, job.len as usize) };
                self.stats.dma_errors += 1;
            }
            let k = seq.wrapping_sub(self.head_seq) as usize;
            if let Some(p) = self.pkts.get_mut(k) {
                p.jobs_left = p.jobs_left.saturating_sub(1);
            }
        }
        if self.jobs.is_empty() {
            self.hold = None;
        }
        n
    }

    /// Takes up to `max` leading packets whose jobs all completed: the guest ranges they
    /// wrote are given to `dirty` (`(gpa, len)`), their used entries to `used` (in order, one
    /// [`used_word`](super::split::used_word) each), their mbufs pushed to `out`; malformed
    /// chains in the order are retired on the way without counting. Returns how many mbufs.
    pub fn retire(
        &mut self,
        max: usize,
        out: &mut Vec<Mbuf>,
        mut used: impl FnMut(u64),
        mut dirty: impl FnMut(u64, u64),
    ) -> usize {
        let mut n = 0;
        while n < max {
            match self.pkts.front() {
                Some(p) if p.jobs_left == 0 => {}
                _ => break,
            }
            let Some(p) = self.pkts.pop_front() else {
                break;
            };
            self.head_seq += 1;
            for _ in 0..p.dirty {
                if let Some((gpa, len)) = self.dirty.pop_front() {
                    dirty(gpa, len);
                }
            }
            for _ in 0..p.used {
                if let Some(e) = self.used.pop_front() {
                    used(e);
                }
            }
            if let Some(m) = p.mbuf {
                out.push(m);
                self.stats.completed += 1;
                n += 1;
            }
        }
        n
    }
}

impl Drop for AsyncQueue {
    fn drop(&mut self) {
        if !self.jobs.is_empty() {
            // Only a drain that timed out leaves jobs behind (and it leaked their memory
            // already); the device is dropped with them, which abandons them.
            log::error!(
                "async channel dropped with {} copy jobs in flight",
                self.jobs.len()
            );
        }
        let lost = self.pkts.iter().filter(|p| p.mbuf.is_some()).count() + self.done.len();
        if lost > 0 {
            log::warn!("async channel dropped with {lost} packets not handed back: freed");
        }
    }
}

impl Vring {
    /// The retire step of a poll, a dequeue and a drain: reads the device's completions
    /// (`aq` is the channel, taken out of this vring), takes up to `max` leading complete
    /// packets, writes and publishes their used entries, and pushes their mbufs to `out`.
    /// Returns how many mbufs.
    pub(crate) fn retire_async(
        &mut self,
        aq: &mut AsyncQueue,
        max: usize,
        out: &mut Vec<Mbuf>,
    ) -> usize {
        if aq.pkts.is_empty() {
            return 0;
        }
        aq.collect();
        let mut entries = std::mem::take(&mut aq.entries);
        let log = self.dirty_log();
        let n = aq.retire(
            max,
            out,
            |e| entries.push(e),
            |gpa, len| {
                if let Some(log) = log {
                    log.mark(gpa, len);
                }
            },
        );
        aq.stats.dropped += self.publish_retired(&entries);
        entries.clear();
        aq.entries = entries;
        n
    }

    /// Writes used entries for packets retired from the async channel, publishes them and
    /// interrupts the guest if it asked; without usable rings (reset, or broken by the guest)
    /// the entries are dropped: returns how many. `entries` are used words, in order.
    fn publish_retired(&mut self, entries: &[u64]) -> u64 {
        if entries.is_empty() {
            return 0;
        }
        if self.packed.is_some() {
            return self.publish_retired_packed(entries);
        }
        let Some(rings) = self.rings.as_ref().filter(|_| !self.broken) else {
            return entries.len() as u64;
        };
        let q = SplitQueue::new(rings, &self.mem, self.size);
        let first = self.last_used_idx;
        q.write_used_words(first, entries);
        let last = first.wrapping_add(entries.len() as u16);
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        if !event_idx {
            q.set_no_notify(true);
        }
        q.publish_used(last);
        if let Some((log, gpa)) = self.used_log() {
            q.log_used(log, gpa, first, last);
        }
        self.last_used_idx = last;
        if let Some(call) = self.call.as_ref() {
            if q.needs_interrupt(event_idx, first, last) {
                // As in a sync burst: EAGAIN still leaves the eventfd readable.
                let _ = nix::unistd::write(call.as_fd(), &1u64.to_ne_bytes());
                self.stats.interrupts += 1;
            }
        }
        0
    }

    /// [`publish_retired`](Self::publish_retired) on a packed ring: `entries` are
    /// [`PackedUsed::to_word`]s, written from the used position as one batch (the first one's
    /// flags last: the driver sees them together), their ids returned to the driver.
    fn publish_retired_packed(&mut self, entries: &[u64]) -> u64 {
        let Some(rings) = self.packed.as_ref().filter(|_| !self.broken) else {
            return entries.len() as u64;
        };
        let q = PackedQueue::new(rings, &self.mem, self.size);
        let mut batch = std::mem::take(&mut self.packed_shadow);
        batch.clear();
        let first = self.used_pos;
        let end = q.stage_used(
            first,
            entries.iter().map(|&w| PackedUsed::from_word(w)),
            &mut batch,
        );
        q.write_staged(&batch);
        // Returned now that the driver can see them: it may make these ids available again.
        self.packed_ids.remove_all(batch.iter().map(|u| u.id()));
        if let Some((log, gpa)) = packed_used_log(self.dirty_log(), self.addrs, &self.mem) {
            mark_used_slots(log, gpa, &batch);
        }
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        if q.signal_used(event_idx, self.call.as_ref().map(AsFd::as_fd), first, end) {
            self.stats.interrupts += 1;
        }
        batch.clear();
        self.packed_shadow = batch;
        self.used_pos = end;
        0
    }

    /// The control thread's rule for a vring with an async channel: before anything changes,
    /// wait for every job in flight, retire every packet (used entries written while the
    /// rings are still the ones the chains came from), and keep the mbufs for the
    /// application's next poll. If the device does not finish within [`DRAIN_TIMEOUT`], the
    /// packets in flight and the memory table they write into are leaked (never freed or
    /// unmapped, so a late copy lands in memory nobody else uses) and the channel is dead.
    pub(crate) fn drain_async(&mut self) {
        let Some(mut aq) = self.async_q.take() else {
            return;
        };
        if aq.busy() {
            aq.stats.drains += u64::from(!aq.pkts.is_empty());
            let start = Instant::now();
            while !aq.jobs.is_empty() {
                if aq.collect() == 0 {
                    if start.elapsed() > DRAIN_TIMEOUT {
                        log::error!(
                            "copy device did not finish {} jobs in {DRAIN_TIMEOUT:?}: their \
                             packets and guest memory are leaked, the channel is dead",
                            aq.jobs.len()
                        );
                        aq.stats.drain_timeouts += 1;
                        aq.dead = true;
                        for p in aq.pkts.drain(..) {
                            std::mem::forget(p.mbuf);
                        }
                        std::mem::forget(aq.hold.take());
                        aq.used.clear();
                        aq.dirty.clear();
                        // The device may still write: keep it (and its job list) alive with
                        // the dead channel, never dropped while this process runs.
                        let jobs = std::mem::take(&mut aq.jobs);
                        std::mem::forget(jobs);
                        break;
                    }
                    std::thread::yield_now();
                }
            }
            let mut done = std::mem::take(&mut aq.done);
            self.retire_async(&mut aq, usize::MAX, &mut done);
            aq.done = done;
        }
        self.async_q = Some(aq);
    }
}
