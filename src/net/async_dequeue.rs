//! Guest → host on the asynchronous copy path (DPDK's `rte_vhost_async_try_dequeue_burst`).
//!
//! One call does both halves. It takes the guest's transmit chains into fresh mbufs exactly as
//! [`dequeue_burst`](super::dequeue_burst) does (the same functions, walking each chain once),
//! with the async copy step: the CPU reads the virtio-net header, and each run of the payload
//! becomes a job of the copy device when it is at least the channel's threshold (a packet
//! whose header asks for offloads is copied by the CPU: they need its first bytes). Then it
//! reads the device's completions and
//! hands back, oldest first, the packets whose copies are done, returning their chains to the
//! guest (used entries written in submission order) only then: the guest never gets a buffer
//! back while a job may still read it.

use super::async_enqueue::{Submit, refuse_sync, start_jobs};
use super::burst::Burst;
use super::dequeue::{Drop, Large, fill, fill_simple, note_backlog, push_rarp};
use super::hdr::hdr_len;
use super::packed_burst::PackedBurst;
use super::queue_id::TxQueueId;
use super::ring::Ring;
use crate::driver::Device;
use crate::mbuf::{Mbuf, PktCache};
use crate::memory::TranslationCache;
use crate::virtq::Vring;
use crate::virtq::async_queue::{AsyncQueue, InFlight};

/// Takes up to `max` new packets from the guest's transmit queue `q` into the channel and
/// hands back up to `max` whose copies completed, oldest first, appended to `out` (DPDK's
/// `rte_vhost_async_try_dequeue_burst`). Returns how many were appended. Needs an async
/// channel on `q` ([`async_channel_register`](super::async_channel_register)); 0 without one,
/// or when the vring is busy, not ready or broken (see [`Device::vring_stats`]). Call it every
/// loop turn: a packet copied by the CPU alone also comes back through it.
///
/// The mbufs are as [`dequeue_burst`](super::dequeue_burst)'s (fresh, the header's offloads
/// in their metadata).
pub fn async_try_dequeue_burst(
    dev: &Device,
    q: TxQueueId,
    cache: &mut PktCache,
    out: &mut Vec<Mbuf>,
    max: usize,
) -> usize {
    let Some(mut guard) = dev.try_lock_vring(q.vring()) else {
        return 0;
    };
    let vq = &mut *guard;
    let Some(mut aq) = vq.async_q.take() else {
        refuse_sync(vq, "async_try_dequeue_burst without an async channel");
        return 0;
    };
    let start = out.len();
    let max = push_rarp(dev, cache, out, max);
    if !aq.dead {
        let left = submit(vq, &mut aq, cache, Large::of(dev.flags()), max);
        note_backlog(dev, q.vring(), left);
    }
    let k = aq.take_done(max, out);
    vq.retire_async(&mut aq, max - k, out);
    vq.async_q = Some(aq);
    out.len() - start
}

/// Takes up to `max` chains into the channel; returns whether the guest had made more
/// available beyond them.
fn submit(
    vq: &mut Vring,
    aq: &mut AsyncQueue,
    cache: &mut PktCache,
    large: Large,
    max: usize,
) -> bool {
    aq.reserve(vq.size);
    if vq.packed.is_some() {
        return match PackedBurst::begin(vq) {
            Some(b) => submit_on(b, aq, cache, large, max),
            None => false,
        };
    }
    match Burst::begin(vq) {
        Some(b) => submit_on(b, aq, cache, large, max),
        None => false,
    }
}

/// [`submit`] on either ring layout.
#[inline(always)]
fn submit_on<'v, R: Ring<'v>>(
    mut b: R,
    aq: &mut AsyncQueue,
    cache: &mut PktCache,
    large: Large,
    max: usize,
) -> bool {
    let hlen = hdr_len(b.features());
    let n = usize::from(b.available(u16::try_from(max).unwrap_or(u16::MAX)));
    if n == 0 {
        let left = b.has_more();
        b.finish();
        return left;
    }
    let mut fresh = std::mem::take(&mut aq.fresh);
    if cache.alloc_bulk(&mut fresh, n).is_err() {
        b.stats().alloc_failures += 1;
        let left = b.has_more();
        b.finish();
        aq.fresh = fresh;
        return left;
    }
    let mut tc = TranslationCache::new();
    let mut taken = 0;
    while taken < n {
        let Some(mut m) = fresh.pop() else { break };
        let Ok(head) = b.next_head() else {
            cache.free(m);
            break;
        };
        let mut step = Submit {
            seq: aq.next_seq(),
            aq,
        };
        // SAFETY: `m` is fresh: popped from `fresh`, which holds only the mbufs `alloc_bulk`
        // gave just above (every call ends with it emptied).
        let filled = match unsafe { fill_simple(&b, &mut tc, head, hlen, &mut m, &mut step) } {
            Some(()) => Ok(()),
            None => fill(&b, head, hlen, &mut m, cache, large, &mut step),
        };
        taken += 1;
        match filled {
            // An empty batch: no job for this packet nor any before it in this burst.
            Ok(()) if aq.pkts.is_empty() && aq.batch.is_empty() => {
                // Copied by the CPU with nothing in flight before it: it retires now, its
                // chain going back through the burst as in dequeue_burst.
                b.used(head, 0);
                let st = b.stats();
                st.packets += 1;
                st.bytes += m.pkt_len() as u64;
                aq.done.push(m);
                aq.stats.submitted += 1;
                aq.stats.completed += 1;
            }
            Ok(()) => {
                let st = b.stats();
                st.packets += 1;
                st.bytes += m.pkt_len() as u64;
                aq.used.push_back(b.used_entry(head, 0));
                aq.pkts.push_back(InFlight {
                    is_pkt: true,
                    mbuf: Some(m),
                    used: 1,
                    jobs_left: 0,
                    dirty: 0,
                });
                aq.stats.submitted += 1;
            }
            Err(drop) => {
                match drop {
                    Drop::Bad(e) => b.bad_chain_later(head, e),
                    Drop::TooLarge => b.stats().too_large += 1,
                    Drop::NoMbuf => {
                        // The chain stays available for a later call.
                        b.unreserve();
                        b.stats().alloc_failures += 1;
                        cache.free(m);
                        break;
                    }
                }
                cache.free(m);
                // Returned empty, in its place in the order.
                aq.used.push_back(b.used_entry(head, 0));
                aq.pkts.push_back(InFlight {
                    is_pkt: false,
                    mbuf: None,
                    used: 1,
                    jobs_left: 0,
                    dirty: 0,
                });
            }
        }
    }
    cache.free_bulk(fresh.drain(..));
    aq.fresh = fresh;
    if !aq.batch.is_empty() && aq.hold.is_none() {
        // Jobs will read this table: keep it mapped until they are reported.
        aq.hold = Some(b.memory().clone());
    }
    let left = b.has_more();
    b.finish();
    start_jobs(aq);
    left
}
