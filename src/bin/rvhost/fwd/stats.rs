//! Per-queue counters (written by the lcores, read by the main thread), summed per port, and
//! the stats lines.
//!
//! Each counter has one writer: the receive side of queue pair `q` of port `p` is written by
//! the lcore that polls stream (`p`, `q`), the transmit side by the lcore whose stream
//! transmits on (`p`, `q`) (streams are built so that exactly one does). A single writer adds
//! with a plain load and store (no locked instruction on the data path); the main thread
//! reads with `Relaxed` loads and may see one side a burst older than the other, which is
//! fine for statistics.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    // Relaxed: the value is a statistic; one writer, so load + store loses nothing.
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Receive side of a port (guest transmit vring, dequeue).
#[derive(Default)]
pub struct RxCounters {
    /// Packets dequeued.
    pub pkts: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Chains the guest made malformed or too large (dropped by the vring, its stats).
    pub bad: AtomicU64,
}

/// Transmit side of a port (guest receive vring, enqueue).
#[derive(Default)]
pub struct TxCounters {
    /// Packets enqueued.
    pub pkts: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Packets not accepted (no room in the guest's buffers, or no device) and freed.
    pub drops: AtomicU64,
    /// Malformed receive chains (the vring's stats).
    pub bad: AtomicU64,
}

/// The counters of one queue pair of a port, each side on its own cache line (they have
/// different writers).
#[derive(Default)]
pub struct QueueCounters {
    /// Receive side.
    pub rx: CachePadded<RxCounters>,
    /// Transmit side.
    pub tx: CachePadded<TxCounters>,
}

/// The counters of one port: one set per queue pair.
pub struct PortCounters {
    queues: Box<[QueueCounters]>,
}

/// A copy of a port's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rx_pkts: u64,
    pub rx_bytes: u64,
    pub rx_bad: u64,
    pub tx_pkts: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
    pub tx_bad: u64,
}

impl PortCounters {
    /// Zeroed counters for `queues` queue pairs (at least one).
    pub fn new(queues: usize) -> PortCounters {
        PortCounters {
            queues: (0..queues.max(1))
                .map(|_| QueueCounters::default())
                .collect(),
        }
    }

    /// The counters of queue pair `q` (panics if `q` is not below the count given to
    /// [`new`](Self::new): streams are built from the same count).
    #[inline]
    pub fn queue(&self, q: u16) -> &QueueCounters {
        &self.queues[usize::from(q)]
    }

    /// Reads every queue's counters.
    pub fn queue_snapshots(&self) -> Vec<Snapshot> {
        self.queues.iter().map(QueueCounters::snapshot).collect()
    }

    /// The sums over the queues.
    pub fn snapshot(&self) -> Snapshot {
        self.queues
            .iter()
            .map(QueueCounters::snapshot)
            .fold(Snapshot::default(), |a, b| a.plus(&b))
    }
}

impl QueueCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            rx_pkts: l(&self.rx.pkts),
            rx_bytes: l(&self.rx.bytes),
            rx_bad: l(&self.rx.bad),
            tx_pkts: l(&self.tx.pkts),
            tx_bytes: l(&self.tx.bytes),
            tx_drops: l(&self.tx.drops),
            tx_bad: l(&self.tx.bad),
        }
    }
}

impl Snapshot {
    /// The sum of two sets of counters.
    pub fn plus(&self, o: &Snapshot) -> Snapshot {
        Snapshot {
            rx_pkts: self.rx_pkts.wrapping_add(o.rx_pkts),
            rx_bytes: self.rx_bytes.wrapping_add(o.rx_bytes),
            rx_bad: self.rx_bad.wrapping_add(o.rx_bad),
            tx_pkts: self.tx_pkts.wrapping_add(o.tx_pkts),
            tx_bytes: self.tx_bytes.wrapping_add(o.tx_bytes),
            tx_drops: self.tx_drops.wrapping_add(o.tx_drops),
            tx_bad: self.tx_bad.wrapping_add(o.tx_bad),
        }
    }

    /// Counters gained since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            rx_pkts: self.rx_pkts.wrapping_sub(earlier.rx_pkts),
            rx_bytes: self.rx_bytes.wrapping_sub(earlier.rx_bytes),
            rx_bad: self.rx_bad.wrapping_sub(earlier.rx_bad),
            tx_pkts: self.tx_pkts.wrapping_sub(earlier.tx_pkts),
            tx_bytes: self.tx_bytes.wrapping_sub(earlier.tx_bytes),
            tx_drops: self.tx_drops.wrapping_sub(earlier.tx_drops),
            tx_bad: self.tx_bad.wrapping_sub(earlier.tx_bad),
        }
    }
}

/// Packets and bits per second over `t`, in Mpps and Gbit/s (Ethernet frame bytes, without
/// preamble, inter-frame gap or CRC).
pub fn rates(pkts: u64, bytes: u64, t: Duration) -> (f64, f64) {
    let s = t.as_secs_f64();
    if s <= 0.0 {
        return (0.0, 0.0);
    }
    (pkts as f64 / s / 1e6, bytes as f64 * 8.0 / s / 1e9)
}

/// One human-readable line: `d` gained over `t` (rates) and `total` (counts).
pub fn line(port: usize, d: &Snapshot, total: &Snapshot, t: Duration) -> String {
    let (rx_mpps, rx_gbps) = rates(d.rx_pkts, d.rx_bytes, t);
    let (tx_mpps, tx_gbps) = rates(d.tx_pkts, d.tx_bytes, t);
    format!(
        "port {port}: Rx {rx_mpps:8.3} Mpps {rx_gbps:7.3} Gbit/s {:>12} pkts | \
         Tx {tx_mpps:8.3} Mpps {tx_gbps:7.3} Gbit/s {:>12} pkts {:>10} drops | \
         bad chains rx {} tx {}",
        total.rx_pkts, total.tx_pkts, total.tx_drops, total.rx_bad, total.tx_bad
    )
}

/// The machine-readable final line of a port; rates over `active` (the time the port had a
/// running device).
pub fn final_line(port: usize, s: &Snapshot, active: Duration) -> String {
    let (rx_mpps, _) = rates(s.rx_pkts, s.rx_bytes, active);
    let (tx_mpps, _) = rates(s.tx_pkts, s.tx_bytes, active);
    format!(
        "FINAL port={port} rx_pkts={} tx_pkts={} tx_drops={} rx_bytes={} tx_bytes={} \
         rx_mpps={rx_mpps:.3} tx_mpps={tx_mpps:.3}",
        s.rx_pkts, s.tx_pkts, s.tx_drops, s.rx_bytes, s.tx_bytes
    )
}

/// The machine-readable final line of queue pair `q` of a port (printed when a port has more
/// than one): counts only.
pub fn final_queue_line(port: usize, q: usize, s: &Snapshot) -> String {
    format!(
        "FINAL-QUEUE port={port} queue={q} rx_pkts={} tx_pkts={} tx_drops={} rx_bytes={} \
         tx_bytes={}",
        s.rx_pkts, s.tx_pkts, s.tx_drops, s.rx_bytes, s.tx_bytes
    )
}

/// Writes lines to stdout and flushes (a closed stdout is ignored: the forwarding goes on).
pub fn emit<I: IntoIterator<Item = String>>(lines: I) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_line_has_the_documented_shape() {
        let s = Snapshot {
            rx_pkts: 3_000_000,
            rx_bytes: 192_000_000,
            tx_pkts: 1_500_000,
            tx_bytes: 96_000_000,
            tx_drops: 7,
            ..Snapshot::default()
        };
        assert_eq!(
            final_line(1, &s, Duration::from_secs(2)),
            "FINAL port=1 rx_pkts=3000000 tx_pkts=1500000 tx_drops=7 rx_bytes=192000000 \
             tx_bytes=96000000 rx_mpps=1.500 tx_mpps=0.750"
        );
        assert!(final_line(0, &s, Duration::ZERO).ends_with("rx_mpps=0.000 tx_mpps=0.000"));
    }

    #[test]
    fn single_writer_add_and_deltas() {
        let p = PortCounters::new(1);
        let c = p.queue(0);
        add(&c.rx.pkts, 5);
        add(&c.rx.pkts, 2);
        add(&c.tx.drops, 1);
        let a = c.snapshot();
        add(&c.rx.pkts, 10);
        let d = c.snapshot().since(&a);
        assert_eq!(
            (a.rx_pkts, a.tx_drops, d.rx_pkts, d.tx_drops),
            (7, 1, 10, 0)
        );
        let (mpps, gbps) = rates(1_000_000, 125_000_000, Duration::from_millis(500));
        assert!((mpps - 2.0).abs() < 1e-9 && (gbps - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_port_sums_its_queues() {
        let p = PortCounters::new(3);
        add(&p.queue(0).rx.pkts, 4);
        add(&p.queue(2).rx.pkts, 5);
        add(&p.queue(1).tx.bytes, 100);
        add(&p.queue(2).tx.drops, 2);
        let s = p.snapshot();
        assert_eq!((s.rx_pkts, s.tx_bytes, s.tx_drops), (9, 100, 2));
        let q = p.queue_snapshots();
        assert_eq!(q.len(), 3);
        assert_eq!((q[0].rx_pkts, q[1].rx_pkts, q[2].rx_pkts), (4, 0, 5));
        assert_eq!(
            final_queue_line(1, 2, &q[2]),
            "FINAL-QUEUE port=1 queue=2 rx_pkts=5 tx_pkts=0 tx_drops=2 rx_bytes=0 tx_bytes=0"
        );
        // Zero queues is taken as one.
        assert_eq!(PortCounters::new(0).queue_snapshots().len(), 1);
    }
}
