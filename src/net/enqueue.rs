//! Host → guest: copying mbufs into the guest's receive buffers (`rte_vhost_enqueue_burst`).
//!
//! One burst: try-lock the vring (return 0 if the control thread holds it), read `avail.idx`
//! once, place each packet in one chain (or, with MRG_RXBUF, as many chains as it needs),
//! write the used entries, publish `used.idx` with a release store (once at the end, and once
//! early when the guest waits for us: see `PUBLISH_FIRST`), and interrupt the guest only if
//! it asked. A chain the guest made malformed is returned with length 0 and
//! counted; the packet moves on to the next chain. A packet that does not fit in what the
//! guest offers stops the burst (as DPDK): it and the rest stay with the caller.

use std::mem::MaybeUninit;

use super::burst::{Burst, READ_AHEAD, Stop};
use super::hdr::{VirtioNetHdr, hdr_len};
use super::offload;
use super::packed_burst::PackedBurst;
use super::queue_id::RxQueueId;
use super::ring::Ring;
use super::runs::{CopyStep, Cpu, Dirty, NoLog, Pieces};
use crate::driver::Device;
use crate::features::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MRG_RXBUF,
};
use crate::mbuf::{Mbuf, OffloadFlags};
use crate::memory::{DirtyLog, Gpa, GuestSlice, TranslationCache};
use crate::virtq::packed::BATCH;
use crate::virtq::split::{
    ChainError, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VirtqDesc,
};

/// Packets up to this many bytes are not prefetched before the copy (one or two cache lines:
/// nothing to overlap).
pub(super) const PREFETCH_ABOVE: usize = 128;

/// When the guest has every buffer of its receive ring posted (it has taken all we gave it
/// and waits for more) and no transmit backlog, the used entries of the burst's first
/// `PUBLISH_FIRST` packets are published as soon as they are written, the rest at the burst's
/// end, so that it starts on them while we copy the rest. Measured against the testpmd
/// virtio-user frontend (A/B in one invocation): loopback 64 B 5.2 -> 7.5 Mpps, loopback
/// 1518 B 2.58 -> 3.18, h2g unchanged. Publishing every 16 entries whenever the guest kept up
/// cost h2g 64 B 6-8% (a receiver that is the bottleneck loses by smaller batches). With 1024
/// packets in flight (bench-vs-dpdk loop-tput) the early publish cost 64 B 6-19%: the guest,
/// woken mid-burst, reads used-ring lines we still write; a transmit backlog tells that case
/// apart (loop-tput 64 B +4-18%, loop-lat within noise).
const PUBLISH_FIRST: u16 = 8;

/// How much of a later packet's buffer is asked for ahead (the rest of a large packet is
/// prefetched just before its own copy, see [`PREFETCH_ABOVE`]).
const READ_AHEAD_BYTES: usize = 128;

/// Copies as many of `pkts` as the guest has room for into the guest's receive queue `q`
/// (`QueuePair(n).rx()`, vring `2n`). Returns how many were enqueued; the caller keeps
/// ownership of every mbuf (free them, or retry the rest). Why a call returned fewer than
/// asked is in [`Device::vring_stats`].
///
/// The packets are only read, so one mbuf may go to several queues (pass it in each burst).
/// Its offload requests (`ol_flags`, `l2_len`...) become the virtio-net header, limited to
/// what the guest negotiated (an IP checksum it cannot take is filled in here). Returns 0 on
/// a queue with an async channel (use
/// [`submit_enqueue_burst`](super::submit_enqueue_burst) there).
pub fn enqueue_burst(dev: &Device, q: RxQueueId, pkts: &[Mbuf]) -> usize {
    let Some(mut guard) = dev.try_lock_vring(q.vring()) else {
        return 0;
    };
    if guard.async_q.is_some() {
        // Its used entries would overtake the packets in flight.
        super::async_enqueue::refuse_sync(&mut guard, "enqueue_burst");
        return 0;
    }
    let sender_busy = sender_backlog(dev, q);
    if guard.packed.is_some() {
        return match PackedBurst::begin(&mut guard) {
            Some(mut burst) => enqueue_on(&mut burst, pkts, sender_busy),
            None => 0,
        };
    }
    let Some(mut burst) = Burst::begin(&mut guard) else {
        return 0;
    };
    enqueue_on(&mut burst, pkts, sender_busy)
}

/// [`enqueue_chains`] with or without the dirty log, on either ring layout. The burst goes
/// by reference: moved by value, its state (a few hundred bytes) was copied with a `memcpy`
/// call at each step.
#[inline(always)]
fn enqueue_on<'v, R: Ring<'v>>(burst: &mut R, pkts: &[Mbuf], sender_busy: bool) -> usize {
    match burst.dirty_log() {
        None => enqueue_chains(burst, pkts, sender_busy, NoLog),
        Some(log) => enqueue_logged(burst, pkts, sender_busy, log),
    }
}

/// [`enqueue_chains`] marking what it writes in the dirty log (out of line: the loop without
/// logging stays as it was).
#[inline(never)]
fn enqueue_logged<'v, R: Ring<'v>>(
    burst: &mut R,
    pkts: &[Mbuf],
    sender_busy: bool,
    log: &DirtyLog,
) -> usize {
    enqueue_chains(burst, pkts, sender_busy, log)
}

/// The loop of [`enqueue_burst`]; `log` marks the guest pages it writes ([`NoLog`]: none).
#[inline(always)]
fn enqueue_chains<'v, R: Ring<'v>>(
    burst: &mut R,
    pkts: &[Mbuf],
    sender_busy: bool,
    log: impl Dirty,
) -> usize {
    let ctx = Ctx::new(burst.features());
    let mut sent = 0;
    let mut tc = burst.memo();
    let mut ahead = R::Ahead::default();
    // Publish early only for a guest that waits: all its receive buffers posted, and nothing
    // left on its transmit queue by our last dequeue there (a guest with a transmit backlog
    // is busy, and an extra publish mid-burst hands it lines we are still writing).
    let mut early = burst.all_posted() && !sender_busy;
    // Small payloads are copied at the burst's end (see `Deferred`) unless the guest is busy
    // transmitting or waits for an early publish. A/B against copying each packet in the loop
    // (testpmd frontend, 64 B): h2g 2.1-3.8x in the slow host state (c2c ~165 ns: the loop
    // waited behind a store buffer full of writes to lines the guest's driver had read, one
    // transfer per packet, 5.5 Mpps against DPDK's 14) and 1.16-1.31 in the fast one. Deferring
    // with a transmit backlog cost loop-tput mrg1 16-55%; deferring before an early publish
    // cost loop-lat 64 B 10-20%: both copy at once.
    let mut deferred = Deferred::new(!sender_busy && !early, log);
    // Used entries go to the burst's shadow and are written in one run before the publish;
    // their lines are asked for now, so that those writes do not wait at the end (a guest
    // waiting for the burst would wait longer). Against the testpmd virtio-user frontend:
    // h2g 64 B +4.5% (24.0 -> 25.1 Mpps, mrg 0 and 1); without the prefetch loopback 64 B
    // lost 4%, with it 1518 B rows and loopback are unchanged.
    burst.prefetch_used(pkts.len());
    // The next batch, read (and its buffers asked for) while the one before it is copied:
    // each batch's descriptors are read and its buffers translated once. Two slots, filled in
    // place, their roles swapped after each batch: moved by value, a batch was a `memcpy`.
    let (mut r0, mut r1) = (None, None);
    prefetch_first(burst, &mut ahead, &mut tc, pkts, &ctx, &mut r0);
    let mut swapped = false;
    let mut i = 0;
    while i < pkts.len() {
        if R::BATCH && !early {
            if let Some(batch) = pkts.get(i..i + BATCH) {
                let later = pkts.get(i + BATCH..i + 2 * BATCH);
                let (d, t) = (&mut deferred, &mut tc);
                // Each role of the slots a call of its own, inlined with constant addresses:
                // with the slots chosen at run time, every field's address was chosen apart.
                let placed = if swapped {
                    batch_step(burst, t, d, batch, later, &ctx, &mut r1, &mut r0)
                } else {
                    batch_step(burst, t, d, batch, later, &ctx, &mut r0, &mut r1)
                };
                if placed {
                    swapped = !swapped;
                    i += BATCH;
                    sent += BATCH;
                    continue;
                }
            }
            // Read for after a batch that was not placed.
            (r0, r1) = (None, None);
        }
        let pkt = &pkts[i];
        i += 1;
        if let Some(later) = pkts.get(i - 1 + usize::from(READ_AHEAD)) {
            prefetch_ahead(burst, &mut ahead, &mut tc, READ_AHEAD, later, &ctx);
        }
        if !ctx.gso && oversized_gso(pkt) {
            // A GSO packet larger than one segment, for a guest that cannot take GSO: it is
            // consumed (counted), not sent, as no buffer of that guest can hold it.
            sent += 1;
            burst.stats().too_large += 1;
            continue;
        }
        if !place_simple(burst, &mut tc, &mut ahead, &mut deferred, pkt, &ctx)
            && place(burst, pkt, &ctx, &mut Cpu, log).is_err()
        {
            break;
        }
        sent += 1;
        let st = burst.stats();
        st.packets += 1;
        st.bytes += pkt.pkt_len() as u64;
        if early && burst.publish_early(PUBLISH_FIRST, || deferred.flush()) {
            early = false;
            burst.stats().early_publishes += 1;
        }
    }
    deferred.flush();
    burst.keep_memo(tc);
    burst.finish();
    sent
}

/// Small packets' payload copies of a burst, done together before its used entries are
/// published (as DPDK's `batch_copy_elems`): the loop then reads descriptors and asks for
/// buffers without waiting behind a store buffer full of writes to guest lines still on
/// their way. Never with the dirty log: a page is marked after its write, so with a log
/// every copy is done at once.
pub(super) struct Deferred<'g, 'p, L> {
    /// The first `n` of `copies` are set.
    n: usize,
    /// How many may wait (0: copy at once).
    max: usize,
    /// Not initialised: clearing 64 entries (`None`) cost every burst 512 bytes of stores.
    copies: [MaybeUninit<(GuestSlice<'g>, &'p [u8])>; DEFER_MAX],
    /// The dirty log the burst's writes are marked in.
    log: L,
}

/// Copies of at most this many bytes are deferred (DPDK: `MAX_BATCH_LEN`).
const DEFER_BELOW: usize = 256;
/// At most this many copies wait (a burst's worth; more are copied at once).
const DEFER_MAX: usize = 64;

impl<'g, 'p, L: Dirty> Deferred<'g, 'p, L> {
    /// Copies wait if `on` and there is no log to mark them in.
    pub(super) fn new(on: bool, log: L) -> Self {
        Deferred {
            n: 0,
            max: if on && !L::ON { DEFER_MAX } else { 0 },
            copies: [const { MaybeUninit::uninit() }; DEFER_MAX],
            log,
        }
    }

    /// Copies `src` to `dst` now or before the next [`flush`](Self::flush).
    #[inline]
    pub(super) fn copy(&mut self, dst: GuestSlice<'g>, src: &'p [u8]) {
        if src.len() <= DEFER_BELOW && self.n < self.max {
            if let Some(c) = self.copies.get_mut(self.n) {
                c.write((dst, src));
                self.n += 1;
                return;
            }
        }
        dst.copy_from(src);
    }

    /// Does the copies that wait.
    #[inline]
    pub(super) fn flush(&mut self) {
        for c in &self.copies[..self.n] {
            // SAFETY: the first `n` entries were written by `copy` (`n` counts them; it is
            // reset here only); the pair is `Copy`, so reading it leaves nothing to drop.
            let (dst, src) = unsafe { c.assume_init_read() };
            dst.copy_from(src);
        }
        self.n = 0;
    }
}

/// Whether the last dequeue on the transmit queue paired with `rxq` left chains behind
/// ([`VringLock::backlog`](crate::virtq::lock::VringLock::backlog)).
#[inline]
fn sender_backlog(dev: &Device, rxq: RxQueueId) -> bool {
    dev.vring_lock(rxq.pair().tx().vring())
        .is_some_and(crate::virtq::lock::VringLock::backlog)
}

/// A packet asking for segmentation that is longer than one segment.
pub(super) fn oversized_gso(pkt: &Mbuf) -> bool {
    let m = pkt.meta();
    if !m
        .ol_flags
        .intersects(OffloadFlags::TX_TCP_SEG | OffloadFlags::TX_UDP_SEG)
    {
        return false;
    }
    let headers = usize::from(m.l2_len) + usize::from(m.l3_len) + usize::from(m.l4_len);
    pkt.pkt_len() > headers + usize::from(m.tso_segsz).max(1)
}

/// What the negotiated features say about the packets of a burst.
pub(super) struct Ctx {
    /// Bytes of the virtio-net header.
    pub hlen: usize,
    /// MRG_RXBUF: a packet may take several chains.
    pub mergeable: bool,
    /// The guest takes partial checksums.
    pub csum: bool,
    /// The guest takes GSO packets.
    pub gso: bool,
}

impl Ctx {
    #[inline]
    pub(super) fn new(feats: u64) -> Ctx {
        Ctx {
            hlen: hdr_len(feats),
            mergeable: feats & VIRTIO_NET_F_MRG_RXBUF != 0,
            csum: feats & VIRTIO_NET_F_GUEST_CSUM != 0,
            gso: feats
                & (VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_UFO)
                != 0,
        }
    }
}

/// The header for `pkt`, limited to what the guest negotiated.
pub(super) fn header(pkt: &Mbuf, ctx: &Ctx, num_buffers: u16) -> VirtioNetHdr {
    let mut h = offload::to_virtio(pkt.meta());
    if !ctx.csum {
        h.flags = 0;
        h.csum_start = 0;
        h.csum_offset = 0;
    }
    if !ctx.gso {
        h.gso_type = 0;
        h.gso_size = 0;
        h.hdr_len = 0;
    }
    h.num_buffers = num_buffers;
    h
}

/// Asks for the buffers of the burst's first chains, which the loop's read-ahead
/// ([`prefetch_ahead`] for the packet [`READ_AHEAD`] places on) never reaches: without this
/// every burst waited for its first packets' guest lines one after the other. Where the first
/// chains make a batch, it is read into `ready` ([`ready_batch`]).
#[inline]
pub(super) fn prefetch_first<'v, R: Ring<'v>>(
    b: &R,
    ahead: &mut R::Ahead,
    tc: &mut TranslationCache,
    pkts: &[Mbuf],
    ctx: &Ctx,
    ready: &mut Option<ReadyBatch<'v, R::Head>>,
) {
    if R::BATCH {
        ready_batch(b, tc, 0, pkts, ctx, ready);
        if ready.is_some() {
            return;
        }
    }
    for (k, pkt) in (0..READ_AHEAD).zip(pkts) {
        prefetch_ahead(b, ahead, tc, k, pkt, ctx);
    }
}

/// Reads the chain `k` places after the next, which `pkt` will most likely be copied into (a
/// packet usually takes one chain; when not, this is a wasted hint), and when it has the fast
/// path's shape asks for the start of its buffer: the body's first lines for writing, and the
/// header's line, which [`place_simple`] compares before it writes, for writing if the last
/// header placed had to be written ([`Burst::hdr_written`]: in loopback the guest's transmit
/// path wrote that line) and for reading otherwise (a receive-only guest reads the header we
/// left there last time, and leaving the line shared saves it a transfer). Without the header
/// line, loopback 64 B measured 5% slower; asked for reading, 6% faster.
#[inline]
pub(super) fn prefetch_ahead<'v, R: Ring<'v>>(
    b: &R,
    ahead: &mut R::Ahead,
    tc: &mut TranslationCache,
    k: u16,
    pkt: &Mbuf,
    ctx: &Ctx,
) {
    let Some(d) = b.read_ahead(ahead, k) else {
        return;
    };
    if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT) == 0 {
        prefetch_rx_buffer(b, tc, &d, pkt, ctx);
    }
}

/// Asks for the start of one-descriptor chain `d`'s buffer, if it can hold `pkt`: its
/// header's line and the body's first lines (see [`prefetch_ahead`]).
#[inline(always)]
fn prefetch_rx_buffer<'v, R: Ring<'v>>(
    b: &R,
    tc: &mut TranslationCache,
    d: &VirtqDesc,
    pkt: &Mbuf,
    ctx: &Ctx,
) {
    let body = pkt.data().len().min(READ_AHEAD_BYTES);
    if (d.len as usize) < ctx.hlen + body {
        return;
    }
    if let Some(buf) = b
        .memory()
        .gpa_to_host_cached(tc, Gpa(d.addr), (ctx.hlen + body) as u64)
    {
        prefetch_rx_start(b, buf, ctx.hlen, body);
    }
}

/// Asks for `buf`'s header line and the first `body` bytes after it (see [`prefetch_ahead`]).
#[inline(always)]
fn prefetch_rx_start<'v, R: Ring<'v>>(b: &R, buf: GuestSlice<'v>, hlen: usize, body: usize) {
    if b.hdr_was_written() {
        buf.prefetch_range_for_write(0, hlen);
    } else {
        buf.prefetch_range_for_read(0, hlen);
    }
    buf.prefetch_range_for_write(hlen, body);
}

/// [`BATCH`] chains read ahead ([`Ring::peek_batch`]) with their buffers: each one
/// descriptor, writable, wholly in guest memory (translated) and large enough for the
/// packet it was read for.
pub(super) struct ReadyBatch<'v, H> {
    heads: [H; BATCH],
    bufs: [GuestSlice<'v>; BATCH],
}

/// Reads into `out` the [`BATCH`] chains from `k` places after the next one, which the
/// packets `pkts` will be copied into if they make a batch, and asks for the start of their
/// buffers ([`prefetch_ahead`]). `out` is left `None` if they are not a batch, a buffer is
/// not guest memory or too small for its packet, or a packet has several segments or
/// offloads (nothing is asked for then: they go one by one). In place: returned by value,
/// the batch was copied with a `memcpy` call.
#[inline(always)]
fn ready_batch<'v, R: Ring<'v>>(
    b: &R,
    tc: &mut TranslationCache,
    k: u16,
    pkts: &[Mbuf],
    ctx: &Ctx,
    out: &mut Option<ReadyBatch<'v, R::Head>>,
) {
    let Some(pkts) = pkts.first_chunk::<BATCH>() else {
        return;
    };
    let Some(heads) = b.peek_batch(k, true) else {
        return;
    };
    let d = [
        b.desc(heads[0]),
        b.desc(heads[1]),
        b.desc(heads[2]),
        b.desc(heads[3]),
    ];
    // The packets are checked here, where their lengths are read, for `place_batch` (one
    // segment, no offloads): a second pass over them there cost 3.4 instructions a packet
    // (callgrind, packed h2g 64 B).
    if d.iter().zip(pkts).any(|(d, p)| {
        (d.len as usize) < ctx.hlen + p.data().len()
            || p.nb_segs() != 1
            || !p.meta().ol_flags.is_empty()
    }) {
        return;
    }
    // The whole buffer must be guest memory (see `place_simple`).
    let at = |j: usize| (Gpa(d[j].addr), u64::from(d[j].len));
    let [Some(b0), Some(b1), Some(b2), Some(b3)] = b
        .memory()
        .gpa_to_host_cached_each(tc, [at(0), at(1), at(2), at(3)])
    else {
        return;
    };
    let bufs = [b0, b1, b2, b3];
    for (buf, pkt) in bufs.iter().zip(pkts) {
        prefetch_rx_start(b, *buf, ctx.hlen, pkt.data().len().min(READ_AHEAD_BYTES));
    }
    *out = Some(ReadyBatch { heads, bufs });
}

/// One step of the batch loop: places `pkts` into the batch in `cur` (read now if it was not
/// read ahead) and reads into `next` the one after it, for the packets `later`; whether it
/// placed them (`cur` is then empty).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn batch_step<'v, 'p, R: Ring<'v>, L: Dirty>(
    b: &mut R,
    tc: &mut TranslationCache,
    deferred: &mut Deferred<'v, 'p, L>,
    pkts: &'p [Mbuf],
    later: Option<&[Mbuf]>,
    ctx: &Ctx,
    cur: &mut Option<ReadyBatch<'v, R::Head>>,
    next: &mut Option<ReadyBatch<'v, R::Head>>,
) -> bool {
    if cur.is_none() {
        ready_batch(b, tc, 0, pkts, ctx, cur);
    }
    let Some(c) = cur.as_ref() else {
        return false;
    };
    *next = None;
    if let Some(later) = later {
        ready_batch(b, tc, BATCH as u16, later, ctx, next);
    }
    if !place_batch(b, deferred, pkts, c, ctx) {
        return false;
    }
    *cur = None;
    true
}

/// [`place_simple`] for [`BATCH`] packets at once, into the batch `r` (read and checked
/// together: DPDK's `virtio_dev_rx_batch_packed`; [`ready_batch`] checked that every packet
/// is one segment without offloads), when `r`'s chains are still the next ones. Otherwise
/// nothing is placed (`false`) and the chains stay available.
#[inline(always)]
fn place_batch<'v, 'p, R: Ring<'v>, L: Dirty>(
    b: &mut R,
    deferred: &mut Deferred<'v, 'p, L>,
    pkts: &'p [Mbuf],
    r: &ReadyBatch<'v, R::Head>,
    ctx: &Ctx,
) -> bool {
    if !b.take_batch(&r.heads) {
        return false;
    }
    let mut lens = [0; BATCH];
    let mut bytes = 0;
    for (((&h, &buf), len), pkt) in r.heads.iter().zip(&r.bufs).zip(&mut lens).zip(pkts) {
        *len = fill_buffer(b, b.desc(h).addr, buf, deferred, pkt, ctx);
        bytes += pkt.pkt_len() as u64;
    }
    b.used_batch(&r.heads, lens);
    let st = b.stats();
    st.packets += BATCH as u64;
    st.bytes += bytes;
    true
}

/// The header of a packet without offloads in one chain, as a constant: built per packet, its
/// bytes went through the stack in other widths than they were read back, and each such load
/// waited for the stores before it (guest lines) to reach the cache.
pub(super) const ONE_BUFFER: [u8; VirtioNetHdr::SIZE] = VirtioNetHdr {
    num_buffers: 1,
    flags: 0,
    gso_type: 0,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 0,
    csum_offset: 0,
}
.to_bytes();

/// The common case, without walking a chain: the next available chain is one writable
/// descriptor in one region, large enough for the header and the packet (one segment, no IP
/// checksum to fill in). Anything else is left (chain not taken) for the general path.
#[inline]
fn place_simple<'v, 'p, R: Ring<'v>, L: Dirty>(
    b: &mut R,
    tc: &mut TranslationCache,
    ahead: &mut R::Ahead,
    deferred: &mut Deferred<'v, 'p, L>,
    pkt: &'p Mbuf,
    ctx: &Ctx,
) -> bool {
    // Offloads the guest cannot take, or checksums to fill in, go the general way.
    if pkt.nb_segs() != 1 || !pkt.meta().ol_flags.is_empty() {
        return false;
    }
    let Some((head, d)) = b.peek_next(ahead) else {
        return false;
    };
    let data = pkt.data();
    let need = ctx.hlen + data.len();
    let buf = if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT) == 0
        && d.flags & VIRTQ_DESC_F_WRITE != 0
        && d.len as usize >= need
    {
        // The whole buffer must be guest memory, not only the part this packet needs (as the
        // general path's walk and DPDK: a descriptor that runs past it is malformed).
        b.memory()
            .gpa_to_host_cached(tc, Gpa(d.addr), u64::from(d.len))
    } else {
        None
    };
    let Some(buf) = buf else {
        return false;
    };
    b.take_peeked(head);
    let len = fill_buffer(b, d.addr, buf, deferred, pkt, ctx);
    b.used(head, len);
    true
}

/// Writes the header and `pkt` (one segment, no offloads) into `buf`, the whole of a taken
/// chain (one writable descriptor at guest address `addr`, large enough); returns the bytes
/// written, for the caller to return the chain used with.
#[inline(always)]
fn fill_buffer<'v, 'p, R: Ring<'v>, L: Dirty>(
    b: &mut R,
    addr: u64,
    buf: GuestSlice<'v>,
    deferred: &mut Deferred<'v, 'p, L>,
    pkt: &'p Mbuf,
    ctx: &Ctx,
) -> u32 {
    let data = pkt.data();
    let need = ctx.hlen + data.len();
    if data.len() > PREFETCH_ABOVE {
        // The guest posted this buffer long ago (a 1024-entry ring goes round between two
        // uses) so its lines are cold: asking for all of them at once overlaps the misses that
        // the copy's stores would otherwise take one after the other.
        buf.prefetch_range_for_write(ctx.hlen, data.len());
    }
    // The header is often what this buffer held last time: then its line is left to the
    // guest, and the next header's line asked for reading.
    let written = buf.update_at(0, &ONE_BUFFER[..ctx.hlen]);
    *b.hdr_written() = written == Ok(true);
    let body = buf.subslice(ctx.hlen, data.len());
    debug_assert!(
        written.is_ok() && body.is_ok(),
        "bounds were checked by the translation"
    );
    if let Ok(body) = body {
        deferred.copy(body, data);
    }
    // With a log the copy was done at once: the page is marked after its write.
    deferred.log.mark(addr, need as u64);
    need as u32
}

/// What the general placement does with the chains and bytes of a packet: the sync path
/// ([`Cpu`]) writes used entries into the burst and copies now; the async path records them
/// in the in-flight queue and makes large copies jobs.
pub(super) trait Placement<'v, R: Ring<'v>>: CopyStep {
    /// The chains `reserved` for the packet go back empty, then the malformed `bad` one, in
    /// avail order.
    fn bad_chain(&mut self, b: &mut R, reserved: &[(R::Head, u64)], bad: R::Head, e: ChainError);
    /// The chains are reserved; the packet's bytes come next.
    #[inline]
    fn begin(&mut self) {}
    /// The packet is written: its chains and the bytes each got.
    fn placed(&mut self, b: &mut R, chains: &[(R::Head, u64)]);
}

impl<'v, R: Ring<'v>> Placement<'v, R> for Cpu {
    #[cold]
    fn bad_chain(&mut self, b: &mut R, reserved: &[(R::Head, u64)], bad: R::Head, e: ChainError) {
        for &(h, _) in reserved {
            b.used(h, 0);
        }
        b.bad_chain(bad, e);
    }

    #[inline]
    fn placed(&mut self, b: &mut R, chains: &[(R::Head, u64)]) {
        for &(h, got) in chains {
            b.used(h, got as u32);
        }
    }
}

/// The general case, for both copy modes: reserves the chains `pkt` needs (one; or with
/// MRG_RXBUF as many as it takes), walking each once into `ps`; then writes the header (and
/// any patched offload prefix) with the CPU and the packet's bytes through `p`. A malformed
/// chain goes back empty (with those reserved before it) and the packet starts over on the
/// next. `Err` leaves the packet, and the chains it did not use, for later (as DPDK). The
/// buffers written are marked in `log` (the sync path's; the async path passes [`NoLog`]:
/// dirty logging is refused on a vring with a channel).
#[inline(never)]
pub(super) fn place<'v, R: Ring<'v>>(
    b: &mut R,
    pkt: &Mbuf,
    ctx: &Ctx,
    p: &mut impl Placement<'v, R>,
    log: impl Dirty,
) -> Result<(), Stop> {
    let mut ps = Pieces::new();
    let need = (ctx.hlen + pkt.pkt_len()) as u64;
    loop {
        let head = match b.next_head() {
            Ok(h) => h,
            Err(stop) => {
                b.unreserve_n(ps.chains().len());
                return Err(stop);
            }
        };
        match ps.add_chain(b, head, true, need) {
            Ok(true) => {}
            Ok(false) => {
                // Too fragmented to track: the packet waits, as when it does not fit.
                b.unreserve_n(ps.chains().len() + 1);
                return Err(Stop::NoRoom);
            }
            Err(e) => {
                p.bad_chain(b, ps.chains(), head, e);
                ps.clear();
                continue;
            }
        }
        if ps.have() >= need {
            break;
        }
        if !ctx.mergeable {
            // One chain must hold it all: the chain stays available and the packet waits.
            b.unreserve();
            return Err(Stop::NoRoom);
        }
    }
    p.begin();
    let mut runs = ps.runs();
    let hdr = header(pkt, ctx, ps.chains().len() as u16).to_bytes();
    // The header is usually what these buffers held last time: leave its lines alone then.
    let mut ok = runs.write_cpu(&hdr[..ctx.hlen], true) == ctx.hlen;
    p.count_cpu(ctx.hlen);
    let prefix = offload::patched_prefix(pkt.meta(), ctx.csum, || pkt.segments().map(|s| s.data()));
    let mut skip = 0;
    if let Some((buf, n)) = &prefix {
        ok &= runs.write_cpu(&buf[..*n], false) == *n;
        p.count_cpu(*n);
        skip = *n;
    }
    for seg in pkt.segments() {
        let data = seg.data();
        let from = skip.min(data.len());
        skip -= from;
        ok &= runs.write(&data[from..], p) == data.len() - from;
    }
    debug_assert!(ok, "the pieces hold exactly the header and the packet");
    ps.mark_dirty(b.memory(), log);
    p.placed(b, ps.chains());
    Ok(())
}
