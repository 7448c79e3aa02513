//! Host → guest on the asynchronous copy path (DPDK's `rte_vhost_submit_enqueue_burst` /
//! `rte_vhost_poll_enqueue_completed`).
//!
//! A submit takes the guest's chains exactly as [`enqueue_burst`](super::enqueue_burst) does
//! (one walk per chain, collecting its writable pieces), writes the virtio-net header and any
//! patched offload prefix with the CPU, and copies the payload piece by piece: pieces of at
//! least the channel's threshold become jobs of the copy device, smaller ones the CPU copies
//! at once. The packet, its used entries and its job count go to the vring's in-flight queue
//! ([`AsyncQueue`]); a poll reads the device's completions and retires the leading packets
//! whose jobs are all done, writing their used entries in submission order. The mbufs are
//! the channel's from submit to poll.

use super::burst::{Burst, READ_AHEAD};
use super::enqueue::{
    Ctx, ONE_BUFFER, PREFETCH_ABOVE, Placement, oversized_gso, place, prefetch_ahead,
    prefetch_first,
};
use super::packed_burst::PackedBurst;
use super::queue_id::{RxQueueId, VringId};
use super::ring::Ring;
use super::runs::{CopyStep, Marks, NoLog};
use crate::driver::{Device, Flags};
use crate::mbuf::Mbuf;
use crate::memory::{DirtyLog, Gpa, GuestSlice, TranslationCache};
use crate::virtq::Vring;
use crate::virtq::async_queue::{
    AsyncConfig, AsyncCopyOps, AsyncQueue, AsyncStats, Idle, InFlight,
};
use crate::virtq::split::{
    ChainError, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

/// Why an async channel call was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AsyncError {
    /// The socket was registered without [`Flags::ASYNC_COPY`].
    #[error("the socket was not registered with Flags::ASYNC_COPY")]
    NotEnabled,
    /// The device has no such vring.
    #[error("vring {vring} does not exist")]
    NoSuchQueue {
        /// The vring asked for.
        vring: usize,
    },
    /// `inorder: false`: rvhost always retires packets in submission order.
    #[error("out-of-order completion (inorder: false) is not supported: packets retire in order")]
    OutOfOrder,
    /// The vring already has a channel.
    #[error("vring {vring} already has an async channel")]
    AlreadyRegistered {
        /// The vring.
        vring: usize,
    },
    /// The vring has no channel.
    #[error("vring {vring} has no async channel")]
    NotRegistered {
        /// The vring.
        vring: usize,
    },
    /// Packets are still the channel's: poll them back (or
    /// [`async_clear_queue`]) before unregistering.
    #[error("vring {vring}: {packets} packets are still in the async channel")]
    InFlight {
        /// The vring.
        vring: usize,
        /// Packets submitted and not handed back.
        packets: usize,
    },
}

/// Gives queue `q` an asynchronous copy channel (`rte_vhost_async_channel_register`): from
/// now on a receive queue's packets go to the guest through [`submit_enqueue_burst`] and come
/// back through [`poll_enqueue_completed`], a transmit queue's come from the guest through
/// [`async_try_dequeue_burst`](super::async_try_dequeue_burst); the sync burst of that
/// direction on `q` returns 0.
/// The socket must have been registered with [`Flags::ASYNC_COPY`] (its guest memory is then
/// populated and locked when mapped). Call it from `new_device` or while no burst runs on `q`
/// (it takes the vring's lock).
pub fn async_channel_register(
    dev: &Device,
    q: impl VringId,
    config: AsyncConfig,
    ops: Box<dyn AsyncCopyOps>,
) -> Result<(), AsyncError> {
    if !dev.flags().contains(Flags::ASYNC_COPY) {
        return Err(AsyncError::NotEnabled);
    }
    if !config.inorder {
        return Err(AsyncError::OutOfOrder);
    }
    let vring = q.vring();
    let mut vq = dev
        .lock_vring(vring)
        .ok_or(AsyncError::NoSuchQueue { vring })?;
    if vq.async_q.is_some() {
        return Err(AsyncError::AlreadyRegistered { vring });
    }
    // The channel's packets are published in their own order: none of ours may wait.
    vq.release_held();
    let size = vq.size;
    vq.async_q = Some(Box::new(AsyncQueue::new(ops, &config, size)));
    Ok(())
}

/// Removes `q`'s channel and returns its copy device (`rte_vhost_async_channel_unregister`).
/// Refused while packets are still the channel's ([`AsyncError::InFlight`]: poll them back,
/// or take them with [`async_clear_queue`]).
pub fn async_channel_unregister(
    dev: &Device,
    q: impl VringId,
) -> Result<Box<dyn AsyncCopyOps>, AsyncError> {
    let vring = q.vring();
    let mut vq = dev
        .lock_vring(vring)
        .ok_or(AsyncError::NoSuchQueue { vring })?;
    let aq = vq
        .async_q
        .as_ref()
        .ok_or(AsyncError::NotRegistered { vring })?;
    if aq.busy() || aq.dead {
        return Err(AsyncError::InFlight {
            vring,
            packets: aq.pkts.len() + aq.done.len(),
        });
    }
    let mut aq = vq
        .async_q
        .take()
        .ok_or(AsyncError::NotRegistered { vring })?;
    // An empty queue has nothing for the device; hand it back.
    let ops = std::mem::replace(&mut aq.ops, Box::new(Idle));
    Ok(ops)
}

/// Waits for `q`'s jobs in flight and hands back every packet the channel holds
/// (`rte_vhost_clear_queue_thread_unsafe`): for `destroy_device` or any control-thread moment
/// when no burst runs on `q`. Their used entries are written as for a poll. Returns how many
/// mbufs were pushed to `out`.
pub fn async_clear_queue(dev: &Device, q: impl VringId, out: &mut Vec<Mbuf>) -> usize {
    let Some(mut vq) = dev.lock_vring(q.vring()) else {
        return 0;
    };
    vq.drain_async();
    let Some(aq) = vq.async_q.as_mut() else {
        return 0;
    };
    let n = aq.done.len();
    out.append(&mut aq.done);
    n
}

/// The counters of `q`'s channel (taken under the vring's lock: not for the data path's
/// loop). `None` without a channel.
pub fn async_stats(dev: &Device, q: impl VringId) -> Option<AsyncStats> {
    let vq = dev.lock_vring(q.vring())?;
    vq.async_q.as_ref().map(|aq| aq.stats)
}

/// Packets `q`'s channel holds: submitted and not handed back by a poll. Takes the vring's
/// lock: not for the data path's loop.
pub fn async_in_flight(dev: &Device, q: impl VringId) -> Option<usize> {
    let vq = dev.lock_vring(q.vring())?;
    vq.async_q
        .as_ref()
        .map(|aq| aq.pkts.iter().filter(|p| p.is_pkt).count() + aq.done.len())
}

/// Takes as many packets from the front of `pkts` as the guest has room for, and starts
/// copying them into receive queue `q` (`rte_vhost_submit_enqueue_burst`). Returns how many
/// were taken (removed from `pkts`); they come back, in order, from
/// [`poll_enqueue_completed`] once the guest has them. 0 without a channel, or when the
/// vring is busy, not ready or broken (see [`Device::vring_stats`]).
pub fn submit_enqueue_burst(dev: &Device, q: RxQueueId, pkts: &mut Vec<Mbuf>) -> usize {
    let Some(mut guard) = dev.try_lock_vring(q.vring()) else {
        return 0;
    };
    let vq = &mut *guard;
    let Some(mut aq) = vq.async_q.take() else {
        refuse_sync(vq, "submit_enqueue_burst without an async channel");
        return 0;
    };
    let n = if aq.dead {
        0
    } else {
        submit(vq, &mut aq, pkts)
    };
    vq.async_q = Some(aq);
    n
}

/// Hands back up to `max` packets of receive queue `q` whose copies have completed, oldest
/// first, after writing their used entries (`rte_vhost_poll_enqueue_completed`). Returns how
/// many were pushed to `out`. Call it every loop turn: packets copied by the CPU alone also
/// wait for it.
pub fn poll_enqueue_completed(
    dev: &Device,
    q: RxQueueId,
    out: &mut Vec<Mbuf>,
    max: usize,
) -> usize {
    let Some(mut guard) = dev.try_lock_vring(q.vring()) else {
        return 0;
    };
    let vq = &mut *guard;
    let Some(mut aq) = vq.async_q.take() else {
        return 0;
    };
    let k = aq.take_done(max, out);
    let n = k + vq.retire_async(&mut aq, max - k, out);
    vq.async_q = Some(aq);
    n
}

/// A sync call on a vring with an async channel, or the reverse: refused (0), logged at a
/// limited rate.
#[cold]
pub(super) fn refuse_sync(vq: &mut Vring, what: &str) {
    if vq.log_limit.check().is_some() {
        log::error!(
            "{what}: refused on a vring whose async channel state does not allow it \
             (enqueue_burst needs no channel, submit/poll need one)"
        );
    }
}

/// The submit proper, on a locked vring whose channel was taken out of it.
fn submit(vq: &mut Vring, aq: &mut AsyncQueue, pkts: &mut Vec<Mbuf>) -> usize {
    aq.reserve(vq.size);
    if vq.packed.is_some() {
        return match PackedBurst::begin(vq) {
            Some(b) => submit_on(b, aq, pkts),
            None => 0,
        };
    }
    match Burst::begin(vq) {
        Some(b) => submit_on(b, aq, pkts),
        None => 0,
    }
}

/// [`submit`] on either ring layout.
#[inline(always)]
fn submit_on<'v, R: Ring<'v>>(mut burst: R, aq: &mut AsyncQueue, pkts: &mut Vec<Mbuf>) -> usize {
    let ctx = Ctx::new(burst.features());
    let first_new = aq.pkts.len();
    let mut taken = 0;
    // Leading packets that retired at once (only while nothing is in flight, so they all
    // come before any packet of this burst that went into the in-flight queue).
    let mut retired = 0;
    let mut tc = TranslationCache::new();
    let mut ahead = R::Ahead::default();
    // While logging, what each packet writes is marked when it retires, after its jobs.
    let log = burst.dirty_log();
    let marks = Marks::default();
    // The first batch's buffers are asked for; it is taken chain by chain here.
    prefetch_first(&burst, &mut ahead, &mut tc, pkts, &ctx, &mut None);
    for (i, pkt) in pkts.iter().enumerate() {
        // As enqueue_burst: ask for the guest buffer of a later packet now, so that the misses
        // on the guest's lines overlap instead of coming one after the other.
        if let Some(later) = pkts.get(i + usize::from(READ_AHEAD)) {
            prefetch_ahead(&burst, &mut ahead, &mut tc, READ_AHEAD, later, &ctx);
        }
        if !ctx.gso && oversized_gso(pkt) {
            // As enqueue_burst: consumed and counted, no buffer of this guest can hold it.
            aq.pkts.push_back(InFlight {
                is_pkt: true,
                ..InFlight::default()
            });
            taken += 1;
            burst.stats().too_large += 1;
            continue;
        }
        match place_simple(&mut burst, aq, &mut tc, &mut ahead, pkt, &ctx, log) {
            Placed::Retired => retired += 1,
            Placed::InFlight => {}
            Placed::No => {
                let mut step = Submit { aq, seq: 0 };
                let placed = match log {
                    None => place(&mut burst, pkt, &ctx, &mut step, NoLog),
                    Some(_) => place(&mut burst, pkt, &ctx, &mut step, &marks),
                };
                if placed.is_err() {
                    break;
                }
                if log.is_some() {
                    // `placed` pushed the packet's record last.
                    let n = marks.take_into(&mut aq.dirty);
                    if let Some(p) = aq.pkts.back_mut() {
                        p.dirty = n;
                    }
                }
            }
        }
        taken += 1;
        let st = burst.stats();
        st.packets += 1;
        st.bytes += pkt.pkt_len() as u64;
    }
    if !aq.batch.is_empty() && aq.hold.is_none() {
        // Jobs will write into this table: keep it mapped until they are reported.
        aq.hold = Some(burst.memory().clone());
    }
    burst.finish();
    start_jobs(aq);
    // The mbufs: the retired ones wait for the next poll, the others go to their records, in
    // order (records of returned chains have none).
    let mut taken_pkts = pkts.drain(..taken);
    aq.done.extend(taken_pkts.by_ref().take(retired));
    for rec in aq.pkts.iter_mut().skip(first_new).filter(|r| r.is_pkt) {
        rec.mbuf = taken_pkts.next();
    }
    debug_assert!(taken_pkts.next().is_none());
    aq.stats.submitted += taken as u64;
    aq.stats.completed += retired as u64;
    taken
}

/// Hands the submit's batch to the copy device; what it does not take, the CPU copies now.
pub(super) fn start_jobs(aq: &mut AsyncQueue) {
    if aq.batch.is_empty() {
        return;
    }
    // SAFETY: each job copies between the data of an mbuf the channel owns from now until the
    // packet retires (enqueue reads it: a shared mbuf's data is read-only to every holder;
    // dequeue writes a fresh one nobody else has) and a piece of a guest chain the guest gave
    // us and gets back only when the packet retires; the guest memory stays mapped meanwhile
    // (`hold`, and the control thread drains before changing memory). Within a packet the
    // jobs' destinations do not overlap each other or what the CPU writes (consecutive pieces
    // of its chains, or one mbuf's data room); a guest whose descriptors alias each other's
    // buffers races only with itself, on its own memory.
    let taken = unsafe { aq.ops.transfer_data(&aq.batch) }.min(aq.batch.len());
    for (i, (job, seq)) in aq.batch.iter().zip(&aq.batch_seq).enumerate() {
        if i < taken {
            aq.jobs.push_back((*seq, *job));
            let k = seq.wrapping_sub(aq.head_seq) as usize;
            if let Some(p) = aq.pkts.get_mut(k) {
                p.jobs_left += 1;
            }
            aq.stats.dma_copies += 1;
            aq.stats.dma_bytes += u64::from(job.len);
        } else {
            // SAFETY: as above; the device did not take the job, so nothing else touches it.
            unsafe { std::ptr::copy_nonoverlapping(job.src, job.dst, job.len as usize) };
            aq.stats.cpu_copies += 1;
            aq.stats.cpu_bytes += u64::from(job.len);
        }
    }
    aq.batch.clear();
    aq.batch_seq.clear();
}

/// The async path's copy step and placement: runs of at least the channel's threshold
/// become jobs of packet `seq` (what the batch has no room for, and smaller runs, the CPU
/// copies now); used entries and the packet's record go to the in-flight queue.
pub(super) struct Submit<'q> {
    pub(super) aq: &'q mut AsyncQueue,
    pub(super) seq: u64,
}

impl CopyStep for Submit<'_> {
    #[inline]
    fn write_guest(&mut self, src: &[u8], dst: GuestSlice<'_>) {
        if !self
            .aq
            .batch_or_cpu(self.seq, src.as_ptr(), dst.as_ptr(), src.len())
        {
            dst.copy_from(src);
        }
    }

    #[inline]
    fn read_guest(&mut self, src: GuestSlice<'_>, dst: &mut [u8]) {
        if !self
            .aq
            .batch_or_cpu(self.seq, src.as_ptr(), dst.as_mut_ptr(), dst.len())
        {
            src.copy_to(dst);
        }
    }

    #[inline]
    fn count_cpu(&mut self, bytes: usize) {
        self.aq.stats.cpu_copies += 1;
        self.aq.stats.cpu_bytes += bytes as u64;
    }

    #[cold]
    fn forget(&mut self) {
        self.aq.unbatch(self.seq);
    }
}

impl<'v, R: Ring<'v>> Placement<'v, R> for Submit<'_> {
    #[cold]
    fn bad_chain(&mut self, b: &mut R, reserved: &[(R::Head, u64)], bad: R::Head, e: ChainError) {
        // As enqueue_burst: the chains taken before the bad one go back empty, then the bad
        // one, in their place in the order.
        b.bad_chain_later(bad, e);
        for &(h, _) in reserved {
            self.aq.used.push_back(b.used_entry(h, 0));
        }
        self.aq.used.push_back(b.used_entry(bad, 0));
        self.aq.pkts.push_back(InFlight {
            is_pkt: false,
            mbuf: None,
            used: reserved.len() as u16 + 1,
            jobs_left: 0,
            dirty: 0,
        });
    }

    #[inline]
    fn begin(&mut self) {
        self.seq = self.aq.next_seq();
    }

    fn placed(&mut self, b: &mut R, chains: &[(R::Head, u64)]) {
        for &(h, got) in chains {
            self.aq.used.push_back(b.used_entry(h, got as u32));
        }
        self.aq.pkts.push_back(InFlight {
            is_pkt: true,
            mbuf: None,
            used: chains.len() as u16,
            jobs_left: 0,
            dirty: 0,
        });
    }
}

/// The common case without walking a chain (as enqueue's `place_simple`): the next chain is
/// one writable descriptor in one region that holds the header and the packet (one segment,
/// no offload). Anything else is left for [`place`]. With a dirty `log`, the buffer is
/// marked after it is written: now if the CPU copied it, else when the packet retires.
#[inline]
#[allow(clippy::too_many_arguments)]
fn place_simple<'v, R: Ring<'v>>(
    b: &mut R,
    aq: &mut AsyncQueue,
    tc: &mut TranslationCache,
    ahead: &mut R::Ahead,
    pkt: &Mbuf,
    ctx: &Ctx,
    log: Option<&DirtyLog>,
) -> Placed {
    if pkt.nb_segs() != 1 || !pkt.meta().ol_flags.is_empty() {
        return Placed::No;
    }
    let Some((head, d)) = b.peek_next(ahead) else {
        return Placed::No;
    };
    let data = pkt.data();
    let need = ctx.hlen + data.len();
    if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT) != 0
        || d.flags & VIRTQ_DESC_F_WRITE == 0
        || (d.len as usize) < need
    {
        return Placed::No;
    }
    // The whole buffer must be guest memory (as enqueue's `place_simple`).
    let Some(buf) = b
        .memory()
        .gpa_to_host_cached(tc, Gpa(d.addr), u64::from(d.len))
    else {
        return Placed::No;
    };
    let Ok(body) = buf.subslice(ctx.hlen, data.len()) else {
        return Placed::No;
    };
    b.take_peeked(head);
    // As enqueue: the header often holds these values already; leave its line alone then.
    *b.hdr_written() = buf.update_at(0, &ONE_BUFFER[..ctx.hlen]) == Ok(true);
    let seq = aq.next_seq();
    if !aq.batch_or_cpu(seq, data.as_ptr(), body.as_ptr(), data.len()) {
        if data.len() > PREFETCH_ABOVE {
            body.prefetch_for_write(); // as enqueue: the buffer's lines are cold
        }
        body.copy_from(data);
        if aq.pkts.is_empty() && aq.batch.is_empty() {
            // Complete, and nothing is in flight before it: it retires now, through the
            // burst's used entries as in enqueue_burst (the next poll hands the mbuf back).
            if let Some(log) = log {
                log.mark(d.addr, need as u64);
            }
            b.used(head, need as u32);
            return Placed::Retired;
        }
    }
    if log.is_some() {
        aq.dirty.push_back((d.addr, need as u64));
    }
    aq.used.push_back(b.used_entry(head, need as u32));
    aq.pkts.push_back(InFlight {
        is_pkt: true,
        mbuf: None,
        used: 1,
        jobs_left: 0,
        dirty: u16::from(log.is_some()),
    });
    Placed::InFlight
}

/// What [`place_simple`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Not the simple case: the general path takes it.
    No,
    /// Copied by the CPU with nothing in flight before it: its used entry is in the burst.
    Retired,
    /// In the in-flight queue (a job, or behind packets in flight).
    InFlight,
}
