//! The two poll loops of a row: the backend worker on the device, the frontend worker on the
//! guest's queues. Each publishes its running totals (one writer per counter, relaxed stores
//! once per productive burst) for the main thread to sample, and returns exact totals.

use std::collections::VecDeque;
use std::sync::Arc;

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::Direction;
use super::clock::ticks;
use crate::frame::udp_frame;
use rvhost::dataplane::DeviceTable;
use rvhost::frontend::{RxQueue, TxQueue};
use rvhost::mbuf::{Mbuf, PktPool};
use rvhost::net::{
    QueuePair, async_try_dequeue_burst, dequeue_burst, enqueue_burst, poll_enqueue_completed,
    submit_enqueue_burst,
};
use rvhost_dma::SoftDevice;
use rvhost_dma::model::Served;

/// Traffic flows.
pub(crate) const RUN: u8 = 0;
/// Producers stop; consumers take what is in flight.
pub(crate) const DRAIN: u8 = 1;
/// Everybody leaves.
pub(crate) const STOP: u8 = 2;

/// MAC addresses of the frames (locally administered).
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Ethernet + IPv4 + UDP: the bytes testpmd `txonly` writes into each mbuf, and the bytes
/// every receiver checks.
const HDR_BYTES: usize = 42;

/// The frame of a row: testpmd's `txonly` UDP frame of `size` bytes.
pub(crate) fn frame(size: usize) -> Vec<u8> {
    udp_frame(size, GUEST_MAC, HOST_MAC)
}

/// Running totals of one worker (one writer).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Packets produced: sent (frontend) / enqueued (backend).
    pub out: AtomicU64,
    /// Packets consumed: received (frontend) / dequeued (backend).
    pub inp: AtomicU64,
    /// Bytes of the consumed packets.
    pub bytes: AtomicU64,
    /// Packets the backend built or dequeued but the guest had no room for.
    pub dropped: AtomicU64,
    /// Packets with a wrong length or header.
    pub bad: AtomicU64,
    /// Ticks spent in bursts that moved packets.
    pub busy: AtomicU64,
    /// Bursts that moved packets.
    pub bursts: AtomicU64,
}

/// A copy of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub out: u64,
    pub inp: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub bad: u64,
    pub busy: u64,
    pub bursts: u64,
}

impl Totals {
    fn publish(&self, c: &Counters) {
        // Relaxed: plain counters with one writer; the reader wants a recent value, not an
        // ordering with anything else.
        c.out.store(self.out, Ordering::Relaxed);
        c.inp.store(self.inp, Ordering::Relaxed);
        c.bytes.store(self.bytes, Ordering::Relaxed);
        c.dropped.store(self.dropped, Ordering::Relaxed);
        c.bad.store(self.bad, Ordering::Relaxed);
        c.busy.store(self.busy, Ordering::Relaxed);
        c.bursts.store(self.bursts, Ordering::Relaxed);
    }

    /// A (not atomic as a whole) sample of `c`.
    pub fn sample(c: &Counters) -> Totals {
        Totals {
            out: c.out.load(Ordering::Relaxed),
            inp: c.inp.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            bad: c.bad.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            bursts: c.bursts.load(Ordering::Relaxed),
        }
    }
}

/// What the main thread and both workers share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub phase: CachePadded<AtomicU8>,
    pub backend: CachePadded<Counters>,
    pub frontend: CachePadded<Counters>,
}

impl Shared {
    #[inline]
    pub fn phase(&self) -> u8 {
        // Relaxed: the phase carries no data; a worker seeing it one burst late is harmless
        // (the drain waits for the counters to settle, and totals are read after the join).
        self.phase.load(Ordering::Relaxed)
    }

    pub fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::Relaxed);
    }
}

/// What both loops need to know about the row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub dir: Direction,
    pub size: usize,
    pub burst: usize,
    pub queue_size: u16,
    /// Bytes of each receive buffer the frontend posts.
    pub rx_buf_len: usize,
    /// The backend enqueues through the async channel (submit, then poll completions).
    pub asynch: bool,
}

/// What the backend loop returns: its totals, and whether the device went away under it.
#[derive(Debug, Clone)]
pub(crate) struct BackendEnd {
    pub totals: Totals,
    pub destroyed: bool,
    /// Async enqueue: ticks from submit to the poll that handed each packet back.
    pub latency: Option<Histogram<u64>>,
}

/// Completion latency of the async enqueue: bursts submitted (tick, packets left), in order,
/// matched against the packets polls hand back (also in order).
struct Latency {
    pending: VecDeque<(u64, u32)>,
    hist: Histogram<u64>,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            pending: VecDeque::with_capacity(4096),
            // Up to ~400 s at 2.6 GHz, 3 significant digits: allocated once, here.
            hist: Histogram::new_with_bounds(1, 1 << 40, 3).expect("valid histogram bounds"),
        }
    }

    #[inline]
    fn submitted(&mut self, at: u64, n: usize) {
        if n > 0 {
            self.pending.push_back((at, n as u32));
        }
    }

    #[inline]
    fn completed(&mut self, now: u64, mut k: usize) {
        while k > 0 {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            let take = k.min(front.1 as usize);
            let _ = self
                .hist
                .record_n(now.saturating_sub(front.0).max(1), take as u64);
            front.1 -= take as u32;
            k -= take;
            if front.1 == 0 {
                self.pending.pop_front();
            }
        }
    }
}

/// The backend worker: polls port 0 of the device table until [`STOP`] (or until the device
/// is destroyed), as an application's pinned core does ([`rvhost::dataplane`]).
pub(crate) fn backend_loop(
    p: &Params,
    table: &Arc<DeviceTable>,
    pool: &PktPool,
    sh: &Shared,
) -> BackendEnd {
    let mut reader = table.reader(0);
    let mut cache = pool.cache();
    let mut burst: Vec<Mbuf> = Vec::with_capacity(2 * p.burst);
    // Async: packets handed back by poll_enqueue_completed, and how long they took.
    let mut done: Vec<Mbuf> = Vec::with_capacity(4 * p.burst);
    let mut lat = p.asynch.then(Latency::new);
    let frame = frame(p.size);
    let hdr = &frame[..HDR_BYTES.min(p.size)];
    let size = p.size;
    let mut t = Totals::default();
    let destroyed = loop {
        let phase = sh.phase();
        if phase == STOP {
            break false;
        }
        reader.refresh(|_, _| {});
        let Some(dev) = reader.dev(0) else {
            break true; // destroyed (the row made sure it was running before we started)
        };
        let t0 = ticks();
        let moved = match p.dir {
            Direction::G2h => {
                let n = dequeue(p, dev, &mut cache, &mut burst);
                for m in &burst {
                    t.bytes += m.pkt_len() as u64;
                    t.bad += u64::from(m.pkt_len() != size);
                }
                cache.free_bulk(burst.drain(..));
                t.inp += n as u64;
                n
            }
            Direction::H2g if phase == RUN => {
                // testpmd txonly: a fresh burst, the prebuilt headers copied in, sent, freed.
                let mut n = if cache.alloc_bulk(&mut burst, p.burst).is_err() {
                    0
                } else {
                    for m in &mut burst {
                        if m.append(size).is_ok() {
                            if let Ok(d) = m.data_mut() {
                                d[..hdr.len()].copy_from_slice(hdr);
                            }
                        }
                    }
                    let n = if p.asynch {
                        let n = submit_enqueue_burst(dev, QueuePair(0).rx(), &mut burst);
                        if let Some(l) = lat.as_mut() {
                            l.submitted(t0, n);
                        }
                        n
                    } else {
                        enqueue_burst(dev, QueuePair(0).rx(), &burst)
                    };
                    t.out += n as u64;
                    t.bytes += (n * size) as u64;
                    let left = if p.asynch {
                        burst.len()
                    } else {
                        burst.len() - n
                    };
                    t.dropped += left as u64;
                    cache.free_bulk(burst.drain(..));
                    n
                };
                if p.asynch {
                    n += reap(dev, &mut done, &mut cache, p.burst, lat.as_mut());
                }
                n
            }
            Direction::H2g if p.asynch => reap(dev, &mut done, &mut cache, p.burst, lat.as_mut()),
            Direction::H2g => 0,
            Direction::Loopback => {
                let n = dequeue(p, dev, &mut cache, &mut burst);
                for m in &burst {
                    t.bytes += m.pkt_len() as u64;
                    t.bad += u64::from(m.pkt_len() != size);
                }
                let sent = if n == 0 {
                    0
                } else if p.asynch {
                    let sent = submit_enqueue_burst(dev, QueuePair(0).rx(), &mut burst);
                    if let Some(l) = lat.as_mut() {
                        l.submitted(t0, sent);
                    }
                    sent
                } else {
                    enqueue_burst(dev, QueuePair(0).rx(), &burst)
                };
                t.inp += n as u64;
                t.out += sent as u64;
                t.dropped += (n - sent) as u64;
                cache.free_bulk(burst.drain(..));
                if p.asynch {
                    n + reap(dev, &mut done, &mut cache, p.burst, lat.as_mut())
                } else {
                    n
                }
            }
        };
        if moved > 0 {
            t.busy += ticks().wrapping_sub(t0);
            t.bursts += 1;
            t.publish(&sh.backend);
        }
    };
    t.publish(&sh.backend);
    BackendEnd {
        totals: t,
        destroyed,
        latency: lat.map(|l| l.hist),
    }
}

/// A burst from the guest's transmit queue, on the row's path.
#[inline]
fn dequeue(
    p: &Params,
    dev: &rvhost::driver::Device,
    cache: &mut rvhost::mbuf::PktCache,
    burst: &mut Vec<Mbuf>,
) -> usize {
    if p.asynch {
        async_try_dequeue_burst(dev, QueuePair(0).tx(), cache, burst, p.burst)
    } else {
        dequeue_burst(dev, QueuePair(0).tx(), cache, burst, p.burst)
    }
}

/// Async: takes back the packets whose copies completed (the guest has them) and frees them;
/// returns how many.
#[inline]
fn reap(
    dev: &rvhost::driver::Device,
    done: &mut Vec<Mbuf>,
    cache: &mut rvhost::mbuf::PktCache,
    burst: usize,
    lat: Option<&mut Latency>,
) -> usize {
    let k = poll_enqueue_completed(dev, QueuePair(0).rx(), done, 2 * burst);
    if k > 0 {
        if let Some(l) = lat {
            l.completed(ticks(), k);
        }
        cache.free_bulk(done.drain(..));
    }
    k
}

/// What the frontend loop returns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrontendEnd {
    pub totals: Totals,
    /// Transmit chains the backend had not returned when the loop ended.
    pub tx_in_flight: u16,
}

/// What serves a row's DMA channels in the frontend's loop.
pub(crate) enum DmaServe {
    /// The software DMA engine's device.
    Soft(SoftDevice),
    /// Device models (stepped: a few descriptors each per turn).
    Models(Vec<Served>),
}

impl DmaServe {
    /// One poll of the device or step of each model; the work done.
    pub(crate) fn poll(&mut self) -> usize {
        match self {
            DmaServe::Soft(dev) => dev.poll(),
            DmaServe::Models(models) => models.iter().map(Served::step).sum(),
        }
    }
}

/// The frontend (guest driver) worker: sends and/or receives at full speed until [`STOP`].
/// In [`DRAIN`] it stops sending and keeps receiving and reaping.
pub(crate) fn frontend_loop(
    p: &Params,
    rx: &mut RxQueue,
    tx: &mut TxQueue,
    sh: &Shared,
    mut soft: Option<&mut DmaServe>,
) -> FrontendEnd {
    let frame = frame(p.size);
    let hdr = &frame[..HDR_BYTES.min(p.size)];
    let refs: Vec<&[u8]> = vec![&frame; p.burst];
    let (sends, receives) = (p.dir.guest_sends(), p.dir.guest_receives());
    let all = usize::from(p.queue_size);
    if receives {
        rx.post_rx(all, p.rx_buf_len);
    }
    let hlen = rx.hdr_len();
    let mut t = Totals::default();
    loop {
        let phase = sh.phase();
        if phase == STOP {
            break;
        }
        let t0 = ticks();
        let mut worked = 0;
        if let Some(dev) = soft.as_deref_mut() {
            // The DMA engine (software, or device models) shares this core: one loop serves
            // both.
            worked += dev.poll();
        }
        let mut moved = 0;
        if sends {
            if phase == RUN {
                let n = tx.send(&refs);
                t.out += n as u64;
                moved += n;
            } else {
                moved += tx.reap();
            }
        }
        if receives {
            let (mut bytes, mut bad) = (0u64, 0u64);
            // Only the headers are read: a receiver that copied every payload would spend its
            // core on what the backend (or its DMA engine) is measured on.
            let n = rx.poll_rx_sample(p.burst, hdr.len(), |pkt| {
                let len = pkt.written.saturating_sub(hlen);
                bytes += len as u64;
                bad += u64::from(len != p.size || !pkt.data.starts_with(hdr));
            });
            if n > 0 {
                rx.post_rx(all, p.rx_buf_len);
                t.inp += n as u64;
                t.bytes += bytes;
                t.bad += bad;
                moved += n;
            }
        }
        if moved > 0 || worked > 0 {
            t.busy += ticks().wrapping_sub(t0);
            t.publish(&sh.frontend);
        }
    }
    if sends {
        tx.reap();
    }
    t.publish(&sh.frontend);
    FrontendEnd {
        totals: t,
        tx_in_flight: if sends { tx.in_flight() } else { 0 },
    }
}
