//! `--record-core-cycles` and `--record-burst-stats` (testpmd's options of those names), per
//! lcore: the cycles of the receive polls that brought packets (with the forwarding that
//! followed) against all the lcore's cycles, and how many packets each receive and transmit
//! burst carried. They tell a backend that is the bottleneck (busy most of the time) from one
//! waiting for its peer, and show how a peer's bursts arrive.
//!
//! The clock is the bench's ([`ticks`]): the time-stamp counter on x86_64 (its rate is worked
//! out from the run's length) and nanoseconds elsewhere. Off (the default), the poll loop only
//! tests a flag or a table's length a few times per stream turn (measured: loop-tput split
//! 64 B no different).

use std::time::Instant;

use crate::bench::clock::ticks;

/// What one lcore records while it polls.
pub struct Recorder {
    /// `--record-core-cycles`.
    cycles: bool,
    started: Instant,
    start: u64,
    busy: u64,
    pkts: u64,
    /// Receive bursts by size (index: packets, the last slot for bursts at least that long);
    /// empty without `--record-burst-stats`.
    rx: Vec<u64>,
    /// Transmit bursts by packets the guest took.
    tx: Vec<u64>,
}

impl Recorder {
    /// A recorder for bursts of up to `burst` packets; the lcore's time counts from now.
    pub fn new(cycles: bool, bursts: bool, burst: usize) -> Recorder {
        let slots = if bursts { burst + 1 } else { 0 };
        Recorder {
            cycles,
            started: Instant::now(),
            start: ticks(),
            busy: 0,
            pkts: 0,
            rx: vec![0; slots],
            tx: vec![0; slots],
        }
    }

    /// A clock reading to pass to [`busy`](Self::busy), or 0 when cycles are not recorded.
    #[inline]
    pub fn begin(&self) -> u64 {
        if self.cycles { ticks() } else { 0 }
    }

    /// A poll that began at `t0` handled `pkts` packets (nothing is counted for 0).
    #[inline]
    pub fn busy(&mut self, t0: u64, pkts: usize) {
        if self.cycles && pkts != 0 {
            self.busy += ticks().wrapping_sub(t0);
            self.pkts += pkts as u64;
        }
    }

    /// A receive burst of `n` packets (0 included).
    #[inline]
    pub fn rx_burst(&mut self, n: usize) {
        count(&mut self.rx, n);
    }

    /// A transmit burst of which the guest took `n` packets.
    #[inline]
    pub fn tx_burst(&mut self, n: usize) {
        count(&mut self.tx, n);
    }

    /// The lcore stops: what it recorded.
    pub fn finish(self, lcore: usize, cpu: usize) -> Recorded {
        Recorded {
            lcore,
            cpu,
            cycles: self.cycles,
            busy: self.busy,
            total: ticks().wrapping_sub(self.start),
            secs: self.started.elapsed().as_secs_f64(),
            pkts: self.pkts,
            rx: self.rx,
            tx: self.tx,
        }
    }
}

/// Counts a burst of `n` in `hist` (nothing when `hist` is empty: not recorded).
#[inline]
fn count(hist: &mut [u64], n: usize) {
    if let Some(last) = hist.len().checked_sub(1) {
        hist[n.min(last)] += 1;
    }
}

/// One lcore's record, for the final statistics.
#[derive(Debug, Clone)]
pub struct Recorded {
    lcore: usize,
    cpu: usize,
    cycles: bool,
    busy: u64,
    total: u64,
    secs: f64,
    pkts: u64,
    rx: Vec<u64>,
    tx: Vec<u64>,
}

impl Recorded {
    /// The lcore's index.
    pub fn lcore(&self) -> usize {
        self.lcore
    }

    /// The lines of the final statistics: testpmd's, then one machine-readable `FINAL-LCORE`
    /// (none when nothing was recorded).
    pub fn lines(&self) -> Vec<String> {
        if !self.cycles && self.rx.is_empty() {
            return Vec::new();
        }
        let who = format!("lcore {} (CPU {})", self.lcore, self.cpu);
        let mut out = Vec::new();
        if self.cycles {
            let per_pkt = self.busy as f64 / self.pkts.max(1) as f64;
            let busy_pct = 100.0 * self.busy as f64 / self.total.max(1) as f64;
            let clock = if cfg!(target_arch = "x86_64") {
                format!(
                    "at {:.0} MHz",
                    self.total as f64 / self.secs.max(1e-9) / 1e6
                )
            } else {
                "(nanoseconds)".to_string()
            };
            out.push(format!(
                "{who}: CPU cycles/packet={per_pkt:.2} (busy cycles={} / packets={}) {clock}; \
                 busy {busy_pct:.1}% of {} cycles",
                self.busy, self.pkts, self.total
            ));
        }
        if !self.rx.is_empty() {
            out.push(format!("{who}: RX-bursts: {}", histogram(&self.rx)));
            out.push(format!("{who}: TX-bursts: {}", histogram(&self.tx)));
        }
        let mut fin = format!("FINAL-LCORE lcore={} cpu={}", self.lcore, self.cpu);
        if self.cycles {
            fin += &format!(
                " busy_cycles={} total_cycles={} pkts={}",
                self.busy, self.total, self.pkts
            );
        }
        if !self.rx.is_empty() {
            let bursts: u64 = self.rx.iter().sum();
            let empty = self.rx[0];
            let tx: u64 = self.tx.iter().sum();
            fin += &format!(" rx_bursts={bursts} empty_rx_bursts={empty} tx_bursts={tx}");
        }
        out.push(fin);
        out
    }
}

/// testpmd's form: the total, then the two most frequent sizes and the rest,
/// `N [74% of 0 pkts + 25% of 32 pkts + 1% of other]`.
fn histogram(hist: &[u64]) -> String {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return "0".to_string();
    }
    let mut sizes: Vec<(usize, u64)> = hist
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, c)| c != 0)
        .collect();
    // Most frequent first; the smaller size first among equals.
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let pct = |c: u64| c * 100 / total;
    let mut parts: Vec<String> = sizes
        .iter()
        .take(2)
        .map(|&(n, c)| {
            let plus = if n + 1 == hist.len() && n != 0 {
                "+"
            } else {
                ""
            };
            format!("{}% of {n}{plus} pkts", pct(c))
        })
        .collect();
    let rest: u64 = sizes.iter().skip(2).map(|&(_, c)| c).sum();
    if rest != 0 {
        parts.push(format!("{}% of other", pct(rest)));
    }
    format!("{total} [{}]", parts.join(" + "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_names_the_two_most_frequent_sizes_and_the_rest() {
        let mut h = vec![0u64; 33];
        h[0] = 74;
        h[32] = 25;
        h[7] = 1;
        assert_eq!(
            histogram(&h),
            "100 [74% of 0 pkts + 25% of 32+ pkts + 1% of other]"
        );
        assert_eq!(histogram(&[0, 0, 0]), "0");
        assert_eq!(histogram(&[0, 3, 0]), "3 [100% of 1 pkts]");
    }

    #[test]
    fn bursts_longer_than_the_table_count_in_its_last_slot() {
        let mut r = Recorder::new(false, true, 4);
        for n in [0, 0, 4, 9, 2] {
            r.rx_burst(n);
        }
        r.tx_burst(3);
        let rec = r.finish(0, 5);
        assert_eq!(rec.rx, vec![2, 0, 1, 0, 2]);
        assert_eq!(rec.tx, vec![0, 0, 0, 1, 0]);
        let lines = rec.lines();
        assert_eq!(
            lines[0],
            "lcore 0 (CPU 5): RX-bursts: 5 [40% of 0 pkts + 40% of 4+ pkts + 20% of other]"
        );
        assert_eq!(
            lines.last().unwrap(),
            "FINAL-LCORE lcore=0 cpu=5 rx_bursts=5 empty_rx_bursts=2 tx_bursts=1"
        );
    }

    #[test]
    fn busy_cycles_count_only_polls_with_packets() {
        let mut r = Recorder::new(true, false, 32);
        let t0 = r.begin();
        r.busy(t0, 0);
        assert_eq!((r.busy, r.pkts), (0, 0));
        let t0 = r.begin();
        std::thread::sleep(std::time::Duration::from_millis(2));
        r.busy(t0, 32);
        assert_eq!(r.pkts, 32);
        assert!(r.busy > 0);
        let rec = r.finish(1, 1);
        assert!(rec.busy <= rec.total, "{} > {}", rec.busy, rec.total);
        let fin = rec.lines().pop().unwrap();
        assert!(
            fin.starts_with("FINAL-LCORE lcore=1 cpu=1 busy_cycles="),
            "{fin}"
        );
        assert!(fin.ends_with(" pkts=32"), "{fin}");
    }

    #[test]
    fn nothing_is_recorded_when_off() {
        let mut r = Recorder::new(false, false, 32);
        assert_eq!(r.begin(), 0);
        r.busy(0, 5);
        r.rx_burst(5);
        r.tx_burst(5);
        let rec = r.finish(0, 0);
        assert!(rec.lines().is_empty());
    }
}
