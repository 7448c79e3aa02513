//! The forwarding lcores: streams (which port an lcore receives from and transmits to), the
//! poll loop, and one function per mode.
//!
//! Queue pair `q` of a port is received from by dequeuing from vring `2q + 1` (the guest's
//! transmit queue) and transmitted into by enqueuing into vring `2q` (the guest's receive
//! queue). What comes in on queue pair `q` goes out on queue pair `q` of the destination port
//! (testpmd's streams with as many rx as tx queues). A queue pair the guest has not enabled
//! is polled and yields nothing (the vring is not ready).
//! Enqueue copies, so after each burst every mbuf is freed: the accepted ones were copied into
//! the guest, the others are dropped (and counted), as testpmd does with what a PMD did not
//! take. A burst the guest's ring took nothing of because the control thread held the vring
//! (a message changing the memory, the log or the ring: the vring's `lock_busy` grew) is tried
//! again for up to [`LOCKED_WAIT`] first (see [`enqueue_past_lock`]), sync or async.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::rewrite::{Echo, icmpecho, macswap};
use crate::frame::udp_frame;
use rvhost::driver::{Device, DeviceId};
use rvhost::lcore::Lcore;
use rvhost::mbuf::{Mbuf, PktCache, PktPool};
use rvhost::net::{
    QueuePair, RxQueueId, TxQueueId, async_try_dequeue_burst, dequeue_burst, enqueue_burst,
    poll_enqueue_completed, submit_enqueue_burst,
};

use super::Mode;
use super::record::{Recorded, Recorder};
use super::stats::{PortCounters, add};
use rvhost::dataplane::{DeviceTable, Reader};

/// The queue a port receives from in queue pair `q`: the guest's transmit queue.
#[inline]
pub fn port_rx(q: u16) -> TxQueueId {
    QueuePair(q).tx()
}

/// The queue a port transmits into in queue pair `q`: the guest's receive queue.
#[inline]
pub fn port_tx(q: u16) -> RxQueueId {
    QueuePair(q).rx()
}

/// How long a burst the guest's receive ring took nothing of, because the control thread held
/// the vring, is tried again before it is dropped.
const LOCKED_WAIT: Duration = Duration::from_millis(5);

/// Loop turns between two reads of the vrings' drop counters.
const HARVEST_EVERY: u32 = 1024;

/// txonly frames longer than this are sent as clones of one template mbuf per port (the
/// frame is built once; each packet is a header attached to the template's buffer), shorter
/// ones are copied into each mbuf (cheaper than a clone's reference count updates).
const CLONE_ABOVE: usize = 256;

/// One forwarding stream: what an lcore receives from queue pair `queue` of `rx_port` goes
/// to queue pair `queue` of `tx_port` (txonly only transmits on `tx_port`, rxonly only
/// receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// Port received from.
    pub rx_port: usize,
    /// Port transmitted to.
    pub tx_port: usize,
    /// Queue pair on both ports.
    pub queue: u16,
}

/// The streams of `mode` over `ports` ports of `queues` queue pairs each, one per port and
/// queue pair, ordered queue-major (queue 0 of every port, then queue 1, ...) so that the
/// round-robin of [`plan`] gives each lcore whole queues across the ports. `io` and
/// `macswap` pair ports as testpmd's default topology does (0↔1, 2↔3, ...; a last unpaired
/// port, or a single one, loops back on itself); the other modes answer on the port they
/// receive from.
pub fn streams(mode: Mode, ports: usize, queues: u16) -> Vec<Stream> {
    (0..queues)
        .flat_map(|q| {
            (0..ports).map(move |p| Stream {
                rx_port: p,
                tx_port: match mode {
                    Mode::Io | Mode::Macswap => peer(p, ports),
                    Mode::Rxonly | Mode::Txonly | Mode::Icmpecho => p,
                },
                queue: q,
            })
        })
        .collect()
}

/// The paired port of `p`.
pub fn peer(p: usize, ports: usize) -> usize {
    if p % 2 == 1 {
        p - 1
    } else if p + 1 < ports {
        p + 1
    } else {
        p
    }
}

/// The MAC address of port `p`: locally administered `02:00:00:00:pp:pp`.
pub fn port_mac(p: usize) -> [u8; 6] {
    let [hi, lo] = (p as u16).to_be_bytes();
    [0x02, 0, 0, 0, hi, lo]
}

/// What every lcore shares.
pub struct Shared {
    /// Forwarding mode.
    pub mode: Mode,
    /// Packets per burst.
    pub burst: usize,
    /// Frame length of txonly.
    pub txpkts: usize,
    /// Queue pairs per port.
    pub queues: u16,
    /// Port → running device.
    pub table: Arc<DeviceTable>,
    /// Per-port counters.
    pub counters: Box<[PortCounters]>,
    /// The packet pool (each lcore takes a cache of it).
    pub pool: PktPool,
    /// The streams of each lcore.
    pub plan: Vec<Vec<Stream>>,
    /// Set when an lcore panicked (the main loop then stops).
    pub failed: AtomicBool,
    /// Packets go into the guests through the async channels (submit, then poll back).
    pub asynch: bool,
    /// `--record-core-cycles`.
    pub record_cycles: bool,
    /// `--record-burst-stats`.
    pub record_bursts: bool,
    /// What each lcore recorded, left here when it stops.
    pub records: std::sync::Mutex<Vec<Recorded>>,
}

/// Stream `i` goes to lcore `i % lcores`.
pub fn plan(streams: &[Stream], lcores: usize) -> Vec<Vec<Stream>> {
    let mut plan = vec![Vec::new(); lcores];
    for (i, s) in streams.iter().enumerate() {
        plan[i % lcores].push(*s);
    }
    plan
}

/// The body of an lcore: polls its streams until told to stop.
pub fn run(lcore: Lcore, sh: &Shared) {
    let _guard = PanicFlag(&sh.failed);
    let mut w = Worker::new(sh, lcore.id().index());
    w.poll(&lcore);
    let rec = w.rec.finish(lcore.id().index(), lcore.core());
    sh.records
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(rec);
}

/// Raises the flag if the lcore unwinds from a panic.
struct PanicFlag<'a>(&'a AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Drop counters already added for one vring of one device.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    dev: Option<DeviceId>,
    seen: u64,
}

struct Worker<'a> {
    sh: &'a Shared,
    streams: &'a [Stream],
    reader: Reader,
    cache: PktCache,
    burst: Vec<Mbuf>,
    /// Async: packets the channels handed back.
    done: Vec<Mbuf>,
    /// txonly frames, per port.
    templates: Vec<Vec<u8>>,
    /// txonly frames longer than [`CLONE_ABOVE`], per port, built once in an mbuf to clone.
    template_mbufs: Vec<Option<Mbuf>>,
    /// Per port and queue pair (index [`Shared::slot`]): `Some` if this lcore receives from
    /// (`rx`) / transmits to (`tx`) it.
    rx_tally: Vec<Option<Tally>>,
    tx_tally: Vec<Option<Tally>>,
    /// Per port and queue pair: the `lock_busy` count of the vring transmitted into, as last
    /// read by [`enqueue_past_lock`].
    lock_seen: Vec<u64>,
    /// `--record-core-cycles` and `--record-burst-stats`.
    rec: Recorder,
}

impl Shared {
    /// The index of queue pair `q` of `port` in per-queue tables.
    #[inline]
    fn slot(&self, port: usize, q: u16) -> usize {
        port * usize::from(self.queues) + usize::from(q)
    }
}

impl<'a> Worker<'a> {
    fn new(sh: &'a Shared, lcore: usize) -> Worker<'a> {
        let streams = &sh.plan[lcore][..];
        let ports = sh.counters.len();
        let receives = sh.mode != Mode::Txonly;
        let transmits = sh.mode != Mode::Rxonly;
        let slots = ports * usize::from(sh.queues);
        let mut rx_tally = vec![None; slots];
        let mut tx_tally = vec![None; slots];
        for s in streams {
            if receives {
                rx_tally[sh.slot(s.rx_port, s.queue)] = Some(Tally::default());
            }
            if transmits {
                tx_tally[sh.slot(s.tx_port, s.queue)] = Some(Tally::default());
            }
        }
        let templates = if sh.mode == Mode::Txonly {
            (0..ports)
                .map(|p| udp_frame(sh.txpkts, port_mac(p), port_mac(peer(p, ports))))
                .collect()
        } else {
            Vec::new()
        };
        let mut cache = sh.pool.cache();
        let template_mbufs = templates
            .iter()
            .map(|t| {
                if t.len() <= CLONE_ABOVE {
                    return None;
                }
                // Without an mbuf for it (a tiny pool), frames are copied one by one.
                let mut m = cache.alloc().ok()?;
                match fill(&mut cache, &mut m, t) {
                    Ok(()) => Some(m),
                    Err(()) => {
                        cache.free(m);
                        None
                    }
                }
            })
            .collect();
        Worker {
            sh,
            streams,
            reader: sh.table.reader(lcore),
            cache,
            burst: Vec::with_capacity(sh.burst),
            done: Vec::with_capacity(4 * sh.burst),
            templates,
            template_mbufs,
            rx_tally,
            tx_tally,
            lock_seen: vec![0; slots],
            rec: Recorder::new(sh.record_cycles, sh.record_bursts, sh.burst),
        }
    }

    fn poll(&mut self, lcore: &Lcore) {
        let mut turn = 0u32;
        while !lcore.should_stop() {
            let (sh, rx_tally, tx_tally) = (self.sh, &mut self.rx_tally, &mut self.tx_tally);
            self.reader.refresh(|port, dev| {
                // The device leaves this lcore: count its last drops while it is still ours.
                harvest_port(sh, port, dev, rx_tally, tx_tally);
            });
            let streams = self.streams;
            for &s in streams {
                match self.sh.mode {
                    Mode::Txonly => self.txonly(s),
                    _ => self.forward(s),
                }
                if self.sh.asynch {
                    self.reap(s.tx_port, s.queue);
                }
            }
            turn = turn.wrapping_add(1);
            if turn % HARVEST_EVERY == 0 {
                self.harvest_all();
            }
        }
        self.harvest_all();
    }

    fn harvest_all(&mut self) {
        for (port, dev) in self.reader.devices() {
            harvest_port(self.sh, port, dev, &mut self.rx_tally, &mut self.tx_tally);
        }
    }

    /// io, macswap, icmpecho, rxonly: one receive burst, rewritten, sent on.
    #[inline]
    fn forward(&mut self, s: Stream) {
        let Some(dev) = self.reader.dev(s.rx_port) else {
            return;
        };
        let t0 = self.rec.begin();
        let n = if self.sh.asynch {
            async_try_dequeue_burst(
                dev,
                port_rx(s.queue),
                &mut self.cache,
                &mut self.burst,
                self.sh.burst,
            )
        } else {
            dequeue_burst(
                dev,
                port_rx(s.queue),
                &mut self.cache,
                &mut self.burst,
                self.sh.burst,
            )
        };
        self.rec.rx_burst(n);
        if n == 0 {
            return;
        }
        let rx = &self.sh.counters[s.rx_port].queue(s.queue).rx;
        add(&rx.pkts, n as u64);
        add(&rx.bytes, bytes(&self.burst));
        match self.sh.mode {
            Mode::Io => {}
            Mode::Macswap => {
                for m in &mut self.burst {
                    // Freshly dequeued mbufs are never shared; the first segment holds the
                    // Ethernet header of anything longer than one.
                    if let Ok(d) = m.data_mut() {
                        macswap(d);
                    }
                }
            }
            Mode::Icmpecho => self.keep_echo_replies(s.rx_port),
            Mode::Rxonly | Mode::Txonly => {
                self.cache.free_bulk(self.burst.drain(..));
                self.rec.busy(t0, n);
                return;
            }
        }
        self.transmit(s.tx_port, s.queue);
        self.rec.busy(t0, n);
    }

    /// Turns ARP and ICMP echo requests into replies in place and frees everything else.
    fn keep_echo_replies(&mut self, port: usize) {
        let mac = port_mac(port);
        let mut keep = 0;
        for i in 0..self.burst.len() {
            let reply = match self.burst[i].data_mut() {
                Ok(d) => icmpecho(d, mac) != Echo::Ignored,
                Err(_) => false,
            };
            if reply {
                self.burst.swap(keep, i);
                keep += 1;
            }
        }
        self.cache.free_bulk(self.burst.drain(keep..));
    }

    /// txonly: a burst of template frames.
    #[inline]
    fn txonly(&mut self, s: Stream) {
        let port = s.tx_port;
        if self.reader.dev(port).is_none() {
            return;
        }
        let t0 = self.rec.begin();
        if let Some(tmpl) = &self.template_mbufs[port] {
            for _ in 0..self.sh.burst {
                match tmpl.clone_shallow(&mut self.cache) {
                    Ok(m) => self.burst.push(m),
                    Err(_) => break,
                }
            }
            let sent = self.transmit(port, s.queue);
            self.rec.busy(t0, sent);
            return;
        }
        if self
            .cache
            .alloc_bulk(&mut self.burst, self.sh.burst)
            .is_err()
        {
            return;
        }
        let tmpl = &self.templates[port];
        let mut filled = 0;
        for m in self.burst.iter_mut() {
            if fill(&mut self.cache, m, tmpl).is_err() {
                break;
            }
            filled += 1;
        }
        self.cache.free_bulk(self.burst.drain(filled..));
        let sent = self.transmit(port, s.queue);
        self.rec.busy(t0, sent);
    }

    /// Enqueues the burst on queue pair `q` of `port`, counts, and frees every mbuf. Returns
    /// how many the guest took.
    #[inline]
    fn transmit(&mut self, port: usize, q: u16) -> usize {
        let n = self.burst.len();
        if n == 0 {
            return 0;
        }
        let tx = &self.sh.counters[port].queue(q).tx;
        let sent = match self.reader.dev(port) {
            Some(dev) if self.sh.asynch => {
                // The channel takes the first `sent` (they come back from reap); the burst
                // keeps the rest.
                let all = bytes(&self.burst);
                let mut sent = submit_enqueue_burst(dev, port_tx(q), &mut self.burst);
                if sent == 0 {
                    let seen = &mut self.lock_seen[self.sh.slot(port, q)];
                    let burst = &mut self.burst;
                    sent = enqueue_past_lock(dev, q, seen, || {
                        submit_enqueue_burst(dev, port_tx(q), burst)
                    });
                }
                if sent > 0 {
                    add(&tx.pkts, sent as u64);
                    add(&tx.bytes, all - bytes(&self.burst));
                }
                add(&tx.drops, self.burst.len() as u64);
                self.cache.free_bulk(self.burst.drain(..));
                self.rec.tx_burst(sent);
                return sent;
            }
            Some(dev) => match enqueue_burst(dev, port_tx(q), &self.burst) {
                0 => {
                    let seen = &mut self.lock_seen[self.sh.slot(port, q)];
                    let burst = &self.burst;
                    enqueue_past_lock(dev, q, seen, || enqueue_burst(dev, port_tx(q), burst))
                }
                sent => sent,
            },
            None => 0,
        };
        if sent > 0 {
            add(&tx.pkts, sent as u64);
            add(&tx.bytes, bytes(&self.burst[..sent]));
        }
        if sent < n {
            add(&tx.drops, (n - sent) as u64);
        }
        self.cache.free_bulk(self.burst.drain(..));
        self.rec.tx_burst(sent);
        sent
    }
}

impl Worker<'_> {
    /// Async: frees the packets of queue pair `q` of `port` whose copies into the guest
    /// completed.
    #[inline]
    fn reap(&mut self, port: usize, q: u16) {
        let Some(dev) = self.reader.dev(port) else {
            return;
        };
        if poll_enqueue_completed(dev, port_tx(q), &mut self.done, 4 * self.sh.burst) > 0 {
            self.cache.free_bulk(self.done.drain(..));
        }
    }
}

fn bytes(pkts: &[Mbuf]) -> u64 {
    pkts.iter().map(|m| m.pkt_len() as u64).sum()
}

/// Copies `bytes` into the fresh mbuf `m`, chaining more mbufs from `cache` past its room.
fn fill(cache: &mut PktCache, m: &mut Mbuf, bytes: &[u8]) -> Result<(), ()> {
    let n = bytes.len().min(m.tailroom());
    m.append_bytes(&bytes[..n]).map_err(drop)?;
    let mut rest = &bytes[n..];
    while !rest.is_empty() {
        let mut seg = cache.alloc().map_err(drop)?;
        let k = rest.len().min(seg.tailroom());
        if k == 0 {
            return Err(());
        }
        seg.append(k).map_err(drop)?;
        seg.data_mut().map_err(drop)?.copy_from_slice(&rest[..k]);
        m.chain(seg).map_err(drop)?;
        rest = &rest[k..];
    }
    Ok(())
}

/// After an enqueue burst that took nothing: while the reason was the vring's lock, held by the
/// control thread (its `lock_busy` count grew since `seen`), tries `pkts` again, for up to
/// [`LOCKED_WAIT`]; returns how many went. A data-path burst never waits for the lock, but a
/// forwarded packet should not be lost to a control message (a live migration's SET_LOG_BASE,
/// SET_FEATURES with LOG_ALL and SET_VRING_ADDR lock the vrings while the device runs; DPDK's
/// enqueue waits for the lock). A full ring or a vring not ready returns 0 at once, as before.
/// `send` is the burst's try: [`enqueue_burst`], or the async path's submit.
#[cold]
fn enqueue_past_lock(
    dev: &Device,
    q: u16,
    seen: &mut u64,
    mut send: impl FnMut() -> usize,
) -> usize {
    let vring = port_tx(q).vring();
    let deadline = Instant::now() + LOCKED_WAIT;
    loop {
        let busy = dev.vring_stats(vring).map_or(*seen, |s| s.lock_busy);
        if busy == *seen || Instant::now() >= deadline {
            return 0;
        }
        *seen = busy;
        std::hint::spin_loop();
        match send() {
            0 => {}
            // It had the lock: what it did not take did not fit.
            sent => return sent,
        }
    }
}

/// Adds the drops the vrings of `dev` counted since the last look to `port`'s counters, for
/// the queue pairs and sides this lcore owns.
fn harvest_port(
    sh: &Shared,
    port: usize,
    dev: &Device,
    rx_tally: &mut [Option<Tally>],
    tx_tally: &mut [Option<Tally>],
) {
    for q in 0..sh.queues {
        let (c, slot) = (sh.counters[port].queue(q), sh.slot(port, q));
        if let Some(t) = rx_tally[slot].as_mut() {
            harvest(dev, port_rx(q).vring(), t, &c.rx.bad, true);
        }
        if let Some(t) = tx_tally[slot].as_mut() {
            harvest(dev, port_tx(q).vring(), t, &c.tx.bad, false);
        }
    }
}

fn harvest(dev: &Device, vring: usize, t: &mut Tally, counter: &AtomicU64, rx: bool) {
    // Lock-free: the counters as of the vring's last burst.
    let Some(st) = dev.vring_stats(vring) else {
        return;
    };
    let total = if rx {
        st.queue.bad_chains + st.queue.too_large
    } else {
        st.queue.bad_chains
    };
    if t.dev != Some(dev.id()) || total < t.seen {
        // Another device, or its vring was reset: count from zero.
        *t = Tally {
            dev: Some(dev.id()),
            seen: 0,
        };
    }
    add(counter, total - t.seen);
    t.seen = total;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_pair_ports_like_testpmd() {
        let pairs = |mode, n| {
            streams(mode, n, 1)
                .iter()
                .map(|s| (s.rx_port, s.tx_port))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(Mode::Io, 1), vec![(0, 0)]);
        assert_eq!(pairs(Mode::Io, 2), vec![(0, 1), (1, 0)]);
        assert_eq!(pairs(Mode::Macswap, 3), vec![(0, 1), (1, 0), (2, 2)]);
        assert_eq!(pairs(Mode::Icmpecho, 2), vec![(0, 0), (1, 1)]);
        assert_eq!(pairs(Mode::Txonly, 2), vec![(0, 0), (1, 1)]);
        // Every port is transmitted to by exactly one stream (one writer per counter).
        for n in 1..6 {
            let mut tx: Vec<usize> = streams(Mode::Io, n, 1).iter().map(|s| s.tx_port).collect();
            tx.sort();
            assert_eq!(tx, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn every_queue_pair_of_every_port_has_one_stream() {
        for mode in [Mode::Io, Mode::Macswap, Mode::Txonly] {
            for (ports, queues) in [(1, 4), (2, 2), (3, 3)] {
                let s = streams(mode, ports, queues);
                assert_eq!(s.len(), ports * usize::from(queues));
                // One reader and one writer per (port, queue).
                let mut rx: Vec<_> = s.iter().map(|s| (s.rx_port, s.queue)).collect();
                let mut tx: Vec<_> = s.iter().map(|s| (s.tx_port, s.queue)).collect();
                rx.sort();
                tx.sort();
                rx.dedup();
                tx.dedup();
                assert_eq!(
                    (rx.len(), tx.len()),
                    (s.len(), s.len()),
                    "{mode} {ports}x{queues}"
                );
            }
        }
        // Queue-major: two lcores over one port's two queues take one queue each.
        let s = streams(Mode::Io, 1, 2);
        let p = plan(&s, 2);
        assert_eq!((p[0][0].queue, p[1][0].queue), (0, 1));
        assert_eq!(
            (
                port_rx(0).vring(),
                port_tx(0).vring(),
                port_rx(3).vring(),
                port_tx(3).vring()
            ),
            (1, 0, 7, 6)
        );
    }

    #[test]
    fn streams_are_spread_over_lcores() {
        let s = streams(Mode::Io, 3, 1);
        let p = plan(&s, 2);
        assert_eq!(p[0], vec![s[0], s[2]]);
        assert_eq!(p[1], vec![s[1]]);
        assert_eq!(plan(&s, 1)[0], s);
    }

    #[test]
    fn port_macs_are_locally_administered() {
        assert_eq!(port_mac(0), [2, 0, 0, 0, 0, 0]);
        assert_eq!(port_mac(1), [2, 0, 0, 0, 0, 1]);
        assert_eq!(port_mac(258), [2, 0, 0, 0, 1, 2]);
    }
}
