//! Guest → host: copying the guest's transmit chains into mbufs (`rte_vhost_dequeue_burst`).
//!
//! One burst: try-lock the vring, read `avail.idx` once, allocate the burst's mbufs in bulk
//! from the caller's cache, copy each chain (header parsed into offload flags, data into the
//! mbuf, chained into more segments, or into an external buffer, per the socket's flags),
//! return every chain with a used entry of length 0, publish `used.idx` once, interrupt only
//! if asked. A malformed chain is returned and counted, never delivered.

use super::burst::{Burst, MAX_PKT_LEN};
use super::hdr::{VirtioNetHdr, hdr_len};
use super::offload;
use super::packed_burst::PackedBurst;
use super::queue_id::TxQueueId;
use super::ring::Ring;
use super::runs::{CopyStep, Cpu, MAX_PIECES, Pieces, Runs};
use crate::driver::{Device, Flags};
use crate::mbuf::{ExtBuf, Mbuf, PktCache};
use crate::memory::{Gpa, GuestSlice, TranslationCache};
use crate::virtq::packed::BATCH;
use crate::virtq::split::{
    ChainError, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VirtqDesc,
};

/// Why one chain produced no packet.
pub(super) enum Drop {
    /// Malformed chain.
    Bad(ChainError),
    /// Longer than the mbuf it must fit (LINEARBUF), or than an external buffer may be.
    TooLarge,
    /// No mbuf for a further segment.
    NoMbuf,
}

impl From<ChainError> for Drop {
    fn from(e: ChainError) -> Drop {
        Drop::Bad(e)
    }
}

/// How a packet longer than one mbuf is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Large {
    Chain,
    Linear,
    External,
}

/// Copies up to `max` packets from the guest's transmit queue `q` (`QueuePair(n).tx()`,
/// vring `2n + 1`) into mbufs taken from `cache`, appending them to `out`. Returns how many
/// were appended. Why a call returned 0 is in [`Device::vring_stats`].
///
/// The mbufs are fresh (not shared, so [`Mbuf::data_mut`] works on their first segment),
/// and the first segment holds the start of the frame, its whole Ethernet header included; a
/// frame longer than a data room is chained, linear or in an external buffer as the socket's
/// flags say. The guest's virtio-net header is translated
/// into offload requests (`ol_flags`, `l2_len`...), which [`enqueue_burst`](super::enqueue_burst)
/// turns back into a header: an echo keeps them as they are.
pub fn dequeue_burst(
    dev: &Device,
    q: TxQueueId,
    cache: &mut PktCache,
    out: &mut Vec<Mbuf>,
    max: usize,
) -> usize {
    let tx_vring = q.vring();
    let Some(mut guard) = dev.try_lock_vring(tx_vring) else {
        return 0;
    };
    if guard.async_q.is_some() {
        // Its used entries would overtake the packets in flight.
        super::async_enqueue::refuse_sync(&mut guard, "dequeue_burst");
        return 0;
    }
    if guard.packed.is_some() {
        return match PackedBurst::begin(&mut guard) {
            Some(mut b) => dequeue_chains(&mut b, dev, tx_vring, cache, out, max),
            None => 0,
        };
    }
    let Some(mut b) = Burst::begin(&mut guard) else {
        return 0;
    };
    dequeue_chains(&mut b, dev, tx_vring, cache, out, max)
}

/// The loop of [`dequeue_burst`], on either ring layout (the burst by reference: see
/// `enqueue_on`).
#[inline(always)]
fn dequeue_chains<'v, R: Ring<'v>>(
    b: &mut R,
    dev: &Device,
    tx_vring: usize,
    cache: &mut PktCache,
    out: &mut Vec<Mbuf>,
    max: usize,
) -> usize {
    // Split: transmit buffers go back as they are done: with the shadow used ring, g2h 1518 B
    // measured 3.5% slower (14.4 -> 13.9 Mpps), g2h 64 B and loopback no different. Packed
    // keeps them for one batch (see `PackedBurst`'s `sync_dequeue`).
    b.sync_dequeue();
    let start = out.len();
    let max = push_rarp(dev, cache, out, max);
    let n = usize::from(b.available(u16::try_from(max).unwrap_or(u16::MAX)));
    let first = out.len();
    if n == 0 || cache.alloc_bulk(out, n).is_err() {
        if n != 0 {
            b.stats().alloc_failures += 1;
        }
        note_backlog(dev, tx_vring, b.has_more());
        b.finish();
        return out.len() - start;
    }
    let hlen = hdr_len(b.features());
    let large = Large::of(dev.flags());
    let mut kept = first;
    let mut tc = b.memo();
    if R::PREFETCH_TX {
        let mut k = 0;
        while k < n.min(TX_AHEAD) {
            // A batch's 4 at once where they are one, else one by one.
            if R::BATCH && k + BATCH <= n && prefetch_tx_batch(b, &mut tc, k as u16) {
                k += BATCH;
            } else {
                prefetch_tx(b, &mut tc, k as u16);
                k += 1;
            }
        }
    }
    let end = first + n;
    let mut i = first;
    'chains: while i < end {
        if R::BATCH && i + BATCH <= end {
            if let Some(heads) = b.next_batch(false) {
                if i + TX_AHEAD + BATCH <= end {
                    // `next` is past the batch: chain i + TX_AHEAD is TX_AHEAD - BATCH on.
                    let _ = prefetch_tx_batch(b, &mut tc, (TX_AHEAD - BATCH) as u16);
                }
                // Where no chain was dropped, the batch's mbufs are where they stay.
                let done = if kept == i {
                    // SAFETY: `out[i..]` are the mbufs `alloc_bulk` gave above, untouched: the
                    // chains before them were copied into `out[..i]`, and every mbuf swapped
                    // out of place (`fill_one`) went to a position below `i`.
                    unsafe { fill_batch(b, &mut tc, &heads, hlen, &mut out[i..i + BATCH]) }
                } else {
                    0
                };
                kept += done;
                for (j, &head) in heads.iter().enumerate().skip(done) {
                    // SAFETY: `out[i + j]` is fresh: `fill_batch` left the batch's mbufs from
                    // `done` on untouched, and `fill_one` moves only mbufs below `i + j`.
                    let filled = unsafe {
                        fill_one(b, &mut tc, head, hlen, out, i + j, &mut kept, cache, large)
                    };
                    if !filled {
                        // This chain and those of the batch after it go back; those before it
                        // are returned.
                        b.unreserve_batch(&heads, j);
                        for &h in &heads[..j] {
                            b.used(h, 0);
                        }
                        break 'chains;
                    }
                }
                b.used_batch(&heads, [0; BATCH]);
                i += BATCH;
                continue;
            }
        }
        if R::PREFETCH_TX && i + TX_AHEAD < end {
            prefetch_tx(b, &mut tc, TX_AHEAD as u16);
        }
        let Ok(head) = b.next_head() else { break };
        // SAFETY: `out[i]` is fresh: `fill_one` moves only mbufs below the one it fills.
        if !unsafe { fill_one(b, &mut tc, head, hlen, out, i, &mut kept, cache, large) } {
            b.unreserve();
            break;
        }
        b.used(head, 0);
        i += 1;
    }
    // Mbufs allocated for chains that gave no packet (or were not reached) go back.
    cache.free_bulk(out.drain(kept..));
    note_backlog(dev, tx_vring, b.has_more());
    b.keep_memo(tc);
    b.finish();
    kept - start
}

/// Copies taken chain `head` into the fresh mbuf `out[i]`, moving it to `out[*kept]` if it
/// holds a packet. Returns whether the chain is to be returned used (a packet, or a chain that
/// gave none: malformed, counted, or too large); `false` when no mbuf was left for a further
/// segment (the chain is to be given back, to be taken again; the burst stops). The caller
/// returns it: one chain with [`Ring::used`], a batch together with [`Ring::used_batch`].
///
/// # Safety
///
/// `out[i]` is fresh, as for [`fill_simple`]. Only mbufs at `i` and below are moved.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn fill_one<'v, R: Ring<'v>>(
    b: &mut R,
    tc: &mut TranslationCache,
    head: R::Head,
    hlen: usize,
    out: &mut [Mbuf],
    i: usize,
    kept: &mut usize,
    cache: &mut PktCache,
    large: Large,
) -> bool {
    // The copy is done here, chain by chain: deferring small ones to the burst's end (as
    // DPDK's `batch_copy_elems`, and our enqueue) measured split loop-tput 64 B 0.65 and g2h
    // 0.96 (in-run A/B, mrg 1: the frontend slowed; no packet was lost).
    // SAFETY: `out[i]` is fresh (the caller's contract).
    let filled = match unsafe { fill_simple(b, tc, head, hlen, &mut out[i], &mut Cpu) } {
        Some(()) => Ok(()),
        None => fill(b, head, hlen, &mut out[i], cache, large, &mut Cpu),
    };
    match filled {
        Ok(()) => {
            let st = b.stats();
            st.packets += 1;
            st.bytes += out[i].pkt_len() as u64;
            out.swap(*kept, i);
            *kept += 1;
        }
        Err(Drop::Bad(e)) => b.bad_chain_later(head, e),
        Err(Drop::TooLarge) => b.stats().too_large += 1,
        Err(Drop::NoMbuf) => {
            b.stats().alloc_failures += 1;
            return false;
        }
    }
    true
}

/// [`fill_plain`] for a batch's chains into the fresh mbufs `out` (as many), in order, while
/// each is that common case; returns how many were filled, counted here once for them all.
/// The rest, from the first that is not, are left untouched for the caller to fill chain by
/// chain. Chain by chain (`fill_one`: the whole header read, each packet counted and moved
/// into place) cost 40 instructions a packet more (callgrind, packed g2h 64 B: 360 -> 320;
/// loop-tput 621 -> 582). In-run A/B, packed mrg 0: loop-tput 64 B +4.2% (quartiles
/// 1.02-1.07), loop-lat 64 B +3.4%, g2h 64 B even (frontend-bound), g2h 1518 B +7.3%.
///
/// # Safety
///
/// Every mbuf of `out` is fresh, as for [`fill_simple`].
#[inline(always)]
unsafe fn fill_batch<'v, R: Ring<'v>>(
    b: &mut R,
    tc: &mut TranslationCache,
    heads: &[R::Head; BATCH],
    hlen: usize,
    out: &mut [Mbuf],
) -> usize {
    let (mut done, mut bytes) = (0, 0);
    for (&head, m) in heads.iter().zip(out.iter_mut()) {
        // SAFETY: `m` is fresh (the caller's contract).
        let Some(len) = (unsafe { fill_plain(b, tc, head, hlen, m) }) else {
            break;
        };
        done += 1;
        bytes += len as u64;
    }
    let st = b.stats();
    st.packets += done as u64;
    st.bytes += bytes;
    done
}

/// Records on transmit vring `vring` whether its burst left chains behind (`more`; see
/// [`VringLock::backlog`](crate::virtq::lock::VringLock::backlog)).
#[inline]
pub(super) fn note_backlog(dev: &Device, vring: usize, more: bool) {
    if let Some(l) = dev.vring_lock(vring) {
        l.set_backlog(more);
    }
}

impl Large {
    /// What the socket's flags ask for. EXTBUF keeps large packets linear too, so it wins
    /// over LINEARBUF's drop.
    pub(super) fn of(flags: Flags) -> Large {
        if flags.contains(Flags::EXTBUF) {
            Large::External
        } else if flags.contains(Flags::LINEARBUF) {
            Large::Linear
        } else {
            Large::Chain
        }
    }
}

/// The common case, without walking a chain: one descriptor, one region, a packet that fits
/// the fresh mbuf `m`. The payload goes through `step` unless the header asks for offloads
/// (they need the frame's first bytes on the CPU: copied now). `None` sends the chain to the
/// general path ([`fill`]) with `m` untouched.
///
/// # Safety
///
/// `m` is fresh: allocated for this copy ([`PktCache::alloc_bulk`]) and untouched since, so
/// it is one empty segment holding its buffer's only reference ([`Mbuf::append_fresh`]).
#[inline(always)]
pub(super) unsafe fn fill_simple<'v, R: Ring<'v>>(
    b: &R,
    tc: &mut TranslationCache,
    head: R::Head,
    hlen: usize,
    m: &mut Mbuf,
    step: &mut impl CopyStep,
) -> Option<()> {
    let (buf, data_len) = simple_buffer(b, tc, head, hlen)?;
    let mut hb = [0u8; 12];
    buf.read_at(0, &mut hb[..hlen]).ok()?;
    let body = buf.subslice(hlen, data_len).ok()?;
    // A fresh mbuf: nothing is appended if it fails (no room for the packet: the general
    // path chains it), and `m` goes to the general path as is.
    // SAFETY: `m` is fresh (the caller's contract).
    let dst = unsafe { m.append_fresh(data_len) }?;
    // Most packets carry no offload: flags and gso_type are the first two bytes. Offloads
    // need the frame's first bytes, so such a packet is copied now whatever the step.
    if hb[0] | hb[1] == 0 {
        step.read_guest(body, dst);
    } else {
        body.copy_to(dst);
        offloads(&VirtioNetHdr::from_bytes(&hb, hlen), m);
    }
    Some(())
}

/// [`fill_simple`] of a packet whose header asks for no offload (its first two bytes, flags
/// and gso_type, are 0; the rest is not read), copied by the CPU: the bytes appended to `m`,
/// or `None` with `m` untouched (for `fill_simple` to take the packet). For [`fill_batch`]:
/// handling offloads there cost 15 instructions a packet (callgrind, packed g2h 64 B).
///
/// # Safety
///
/// `m` is fresh, as for [`fill_simple`].
#[inline(always)]
unsafe fn fill_plain<'v, R: Ring<'v>>(
    b: &R,
    tc: &mut TranslationCache,
    head: R::Head,
    hlen: usize,
    m: &mut Mbuf,
) -> Option<usize> {
    let (buf, data_len) = simple_buffer(b, tc, head, hlen)?;
    let mut offload = [0u8; 2];
    buf.read_at(0, &mut offload).ok()?;
    if offload != [0, 0] {
        return None;
    }
    let body = buf.subslice(hlen, data_len).ok()?;
    // SAFETY: `m` is fresh (the caller's contract).
    let dst = unsafe { m.append_fresh(data_len) }?;
    Cpu.read_guest(body, dst);
    Some(data_len)
}

/// The buffer of chain `head` if it is one readable descriptor in one region, with the
/// length of the packet after its `hlen`-byte header.
#[inline(always)]
fn simple_buffer<'v, R: Ring<'v>>(
    b: &R,
    tc: &mut TranslationCache,
    head: R::Head,
    hlen: usize,
) -> Option<(GuestSlice<'v>, usize)> {
    let d = b.desc(head);
    if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE) != 0 {
        return None;
    }
    let data_len = (d.len as usize).checked_sub(hlen)?;
    let buf = b
        .memory()
        .gpa_to_host_cached(tc, Gpa(d.addr), u64::from(d.len))?;
    Some((buf, data_len))
}

/// How many chains ahead of the one being copied a dequeue asks for the first lines of its
/// buffer ([`prefetch_tx`]): the guest's transmit buffers were last written by its core, and
/// without asking early each packet waited for its own lines, one transfer after the other.
const TX_AHEAD: usize = 8;

/// Bytes of a transmit buffer asked for ahead: the header and a small frame's first line.
const TX_AHEAD_BYTES: u32 = 128;

/// Asks for the first [`TX_AHEAD_BYTES`] of the buffer of the chain `k` places after the next
/// one, if it is one readable descriptor.
#[inline(always)]
fn prefetch_tx<'v, R: Ring<'v>>(b: &mut R, tc: &mut TranslationCache, k: u16) {
    let Some(d) = b.peek_desc(k) else { return };
    if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE) == 0 {
        prefetch_tx_buffer(b, tc, &d);
    }
}

/// Asks for the first [`TX_AHEAD_BYTES`] of one-descriptor chain `d`'s buffer, and tells the
/// ring they are read ([`Ring::note_read`]).
#[inline(always)]
fn prefetch_tx_buffer<'v, R: Ring<'v>>(b: &mut R, tc: &mut TranslationCache, d: &VirtqDesc) {
    let len = d.len.min(TX_AHEAD_BYTES);
    if let Some(buf) = b
        .memory()
        .gpa_to_host_cached(tc, Gpa(d.addr), u64::from(len))
    {
        buf.prefetch_for_read();
        b.note_read(buf.as_ptr() as usize, buf.len());
    }
}

/// [`prefetch_tx`] for the [`BATCH`] chains from `k` places after the next one, when they
/// make a batch ([`Ring::peek_batch`]); whether they did (otherwise nothing is asked for).
#[inline(always)]
fn prefetch_tx_batch<'v, R: Ring<'v>>(b: &mut R, tc: &mut TranslationCache, k: u16) -> bool {
    let Some(heads) = b.peek_batch(k, false) else {
        return false;
    };
    for &h in &heads {
        let d = b.desc(h);
        prefetch_tx_buffer(b, tc, &d);
    }
    true
}

/// Applies the header's offloads to `m`'s metadata (and completes an odd partial checksum).
pub(super) fn offloads(hdr: &VirtioNetHdr, m: &mut Mbuf) {
    let mut frame = [0u8; 128];
    let n = m.data().len().min(128);
    frame[..n].copy_from_slice(&m.data()[..n]);
    if offload::from_virtio(hdr, m.meta_mut(), &frame[..n]) && m.nb_segs() == 1 {
        if let Ok(d) = m.data_mut() {
            offload::software_checksum(d, hdr.csum_start, hdr.csum_offset);
        }
    }
}

/// The general case, for both copy modes: walks chain `head` once into `ps`, reads its header
/// with the CPU, and copies the packet into the fresh mbuf `m` (chained into more segments,
/// or into an external buffer, as `large` says) through `step`, or with the CPU when the
/// header asks for offloads. On `Err` the step has forgotten its copies of this packet, so
/// the caller may free `m`.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub(super) fn fill<'v, R: Ring<'v>>(
    b: &R,
    head: R::Head,
    hlen: usize,
    m: &mut Mbuf,
    cache: &mut PktCache,
    large: Large,
    step: &mut impl CopyStep,
) -> Result<(), Drop> {
    let mut ps = Pieces::new();
    match ps.add_chain(b, head, false, u64::MAX) {
        Ok(true) => {}
        // The first chain of a packet always has room to be tracked.
        Ok(false) => return Err(Drop::Bad(ChainError::TooManyBuffers(MAX_PIECES as u32))),
        Err(e) => return Err(Drop::Bad(e)),
    }
    let mut runs = ps.runs();
    let mut hb = [0u8; 12];
    if runs.read(&mut hb[..hlen], &mut Cpu) < hlen {
        return Err(Drop::Bad(ChainError::ShortHeader));
    }
    let hdr = VirtioNetHdr::from_bytes(&hb, hlen);
    let data_len = (ps.have() - hlen as u64) as usize;
    let r = if hdr.flags != 0 || hdr.gso_type != 0 {
        let r = copy_packet(&mut runs, data_len, m, cache, large, &mut Cpu);
        if r.is_ok() {
            offloads(&hdr, m);
        }
        r
    } else {
        copy_packet(&mut runs, data_len, m, cache, large, step)
    };
    if r.is_err() {
        step.forget();
    }
    r
}

/// Copies the `data_len` bytes left in `runs` into `m` (and the segments or external buffer
/// `large` asks for when they do not fit its data room).
fn copy_packet(
    runs: &mut Runs<'_, '_>,
    data_len: usize,
    m: &mut Mbuf,
    cache: &mut PktCache,
    large: Large,
    step: &mut impl CopyStep,
) -> Result<(), Drop> {
    if data_len > m.tailroom() {
        match large {
            Large::Linear => return Err(Drop::TooLarge),
            Large::External => return external(runs, data_len, m, step),
            Large::Chain => {}
        }
    }
    let mut left = data_len - read_into(runs, m, data_len, step);
    while left > 0 {
        let mut seg = cache.alloc().map_err(|_| Drop::NoMbuf)?;
        left -= read_into(runs, &mut seg, left, step);
        // Its copies may still be running: the segment is `m`'s from here on, freed with it.
        if m.chain(seg).is_err() {
            return Err(Drop::TooLarge);
        }
    }
    Ok(())
}

/// Fills up to `max` bytes of `m`'s tailroom from `runs`; returns the bytes read.
#[inline]
fn read_into(runs: &mut Runs<'_, '_>, m: &mut Mbuf, max: usize, step: &mut impl CopyStep) -> usize {
    let room = m.tailroom().min(max);
    // A fresh mbuf: append of its own tailroom and trim of what is left cannot fail.
    let _ = m.append(room);
    let len = m.data_len();
    let got = match m.data_mut() {
        Ok(d) => runs.read(&mut d[len - room..], step),
        Err(_) => 0,
    };
    let _ = m.trim(room - got);
    got
}

/// EXTBUF: the whole packet in one external buffer attached to `m`.
fn external(
    runs: &mut Runs<'_, '_>,
    data_len: usize,
    m: &mut Mbuf,
    step: &mut impl CopyStep,
) -> Result<(), Drop> {
    if data_len as u64 > MAX_PKT_LEN {
        return Err(Drop::TooLarge);
    }
    let buf = vec![0u8; data_len].into_boxed_slice();
    let ext = ExtBuf::from_boxed_slice(buf).map_err(|_| Drop::TooLarge)?;
    m.attach_extbuf(ext).map_err(|_| Drop::TooLarge)?;
    m.append(data_len).map_err(|_| Drop::TooLarge)?;
    let d = m.data_mut().map_err(|_| Drop::TooLarge)?;
    // The buffer is `m`'s (on the heap, it does not move with `m`) until `m` is freed.
    runs.read(d, step);
    Ok(())
}

/// Puts the pending RARP frame (after a migration), if any, first in `out`; returns how many
/// packets of `max` are left for the burst.
pub(super) fn push_rarp(
    dev: &Device,
    cache: &mut PktCache,
    out: &mut Vec<Mbuf>,
    max: usize,
) -> usize {
    if let Some(mac) = dev.take_rarp() {
        if let Ok(m) = rarp(cache, mac) {
            out.push(m);
            return max.saturating_sub(1);
        }
    }
    max
}

/// The RARP frame DPDK sends after a migration so switches learn the guest's MAC.
fn rarp(cache: &mut PktCache, mac: [u8; 6]) -> Result<Mbuf, ()> {
    let mut m = cache.alloc().map_err(|_| ())?;
    m.append(60).map_err(|_| ())?;
    let d = m.data_mut().map_err(|_| ())?;
    d.fill(0);
    d[0..6].fill(0xff);
    d[6..12].copy_from_slice(&mac);
    d[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    // htype 1, ptype IPv4, hlen 6, plen 4, op 3 (reverse request).
    d[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 3]);
    d[22..28].copy_from_slice(&mac);
    d[32..38].copy_from_slice(&mac);
    Ok(m)
}
