//! One row: set up, run both workers, sample the window, drain, check, tear down.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rvhost_hugepages::region::PageSize;

use super::bed::{BUF_SIZE, Bed};
use super::clock::{Clock, ticks};
use super::workers::{
    BackendEnd, DRAIN, DmaServe, FrontendEnd, Params, RUN, STOP, Shared, Totals, backend_loop,
    frontend_loop,
};
use super::{BenchArgs, BenchError, CopyMode, Direction, RingLayout, dev_vfio, sysfs};
use crate::dma::device::device_channels;
use crate::dma::models::{PoolMapping, model_channels};
use rvhost::frontend::NetHdr;
use rvhost::lcore::Lcores;
use rvhost::mbuf::PktPool;
use rvhost::net::{
    AsyncConfig, AsyncCopyOps, DmaCopy, QueuePair, async_channel_register, async_clear_queue,
    async_stats,
};
use rvhost_dma::model::ModelWorker;
use rvhost_dma::soft::{Idle, SoftConfig, WorkerConfig};
use rvhost_dma::{ChannelConfig, SoftDevice};

/// How often the drain looks at the counters, and how many unchanged looks end it: 250 ms
/// without a change. With 60 ms, a worker (or the models' stepping, on the frontend's core)
/// that the scheduler left out that long on a loaded machine looked drained, and the row
/// failed its accounting ("64 transmit chains never returned", g2h over the DSA model, twice
/// on 2026-12-04 with a CI run beside it). Packets that truly never come back still fail it.
const DRAIN_POLL: Duration = Duration::from_millis(20);
const DRAIN_QUIET: u32 = 12;
/// Longest drain before the row fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a row runs.
pub(crate) struct RowConfig<'a> {
    pub dir: Direction,
    pub size: usize,
    pub mrg: bool,
    pub ring: RingLayout,
    pub copy: CopyMode,
    pub args: &'a BenchArgs,
    pub sock: PathBuf,
}

/// The measurements of one row.
#[derive(Debug, Clone)]
pub struct RowResult {
    /// Direction.
    pub dir: Direction,
    /// Frame size in bytes.
    pub size: usize,
    /// Mergeable receive buffers negotiated.
    pub mrg: bool,
    /// The virtqueue layout.
    pub ring: RingLayout,
    /// How the backend copied.
    pub copy: CopyMode,
    /// Length of the window in seconds (measured).
    pub secs: f64,
    /// Packets delivered in the window (see the module docs for which side counts).
    pub packets: u64,
    /// Frame bytes of those packets.
    pub bytes: u64,
    /// Backend core's clock ticks in the window (cycles on x86_64, else ns).
    pub ticks: u64,
    /// Ticks of the backend spent in bursts that moved packets.
    pub busy_ticks: u64,
    /// Ticks of the frontend's core spent in loop turns that did work (moved packets, or
    /// served the soft DMA engine).
    pub fe_busy_ticks: u64,
    /// Async enqueue: completion latency (submit to hand-back) percentiles p50, p99, p99.9 in
    /// nanoseconds, over the whole row (warm-up included).
    pub latency_ns: Option<[f64; 3]>,
    /// Packets the backend had but the guest had no room for, in the window.
    pub dropped: u64,
    /// Packets the backend moved (g2h, loopback: dequeued; h2g: enqueued) in the window.
    pub backend_packets: u64,
    /// Backend bursts that moved packets, in the window.
    pub backend_bursts: u64,
    /// Exact totals after the drain: packets the frontend sent / received, the backend
    /// dequeued / enqueued.
    pub fe_sent: u64,
    /// See `fe_sent`.
    pub fe_received: u64,
    /// See `fe_sent`.
    pub be_dequeued: u64,
    /// See `fe_sent`.
    pub be_enqueued: u64,
    /// Page size of the frontend's memory.
    pub frontend_pages: PageSize,
    /// Why the row failed its checks, if it did.
    pub error: Option<String>,
}

impl RowResult {
    /// Millions of packets per second.
    pub fn mpps(&self) -> f64 {
        self.packets as f64 / self.secs / 1e6
    }

    /// Gigabits per second of frame bytes.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }

    /// Backend ticks per packet (the whole core), `None` without packets.
    pub fn ticks_per_pkt(&self) -> Option<f64> {
        (self.packets > 0).then(|| self.ticks as f64 / self.packets as f64)
    }

    /// Busy backend ticks per packet, `None` without packets.
    pub fn busy_per_pkt(&self) -> Option<f64> {
        (self.packets > 0).then(|| self.busy_ticks as f64 / self.packets as f64)
    }

    /// Packets per productive backend burst: near `--burst` when the backend is the
    /// bottleneck, small when it waits for the frontend. `None` without bursts.
    pub fn burst_fill(&self) -> Option<f64> {
        (self.backend_bursts > 0).then(|| self.backend_packets as f64 / self.backend_bursts as f64)
    }

    /// Share of the frontend core's time spent in turns that did work: near 100% means the
    /// frontend's core (with the soft engine on it) was the limit.
    pub fn fe_busy_share(&self) -> f64 {
        if self.ticks == 0 {
            0.0
        } else {
            (self.fe_busy_ticks as f64 / self.ticks as f64).min(1.0)
        }
    }

    /// Share of the backend core's time spent in bursts that moved packets.
    pub fn busy_share(&self) -> f64 {
        if self.ticks == 0 {
            0.0
        } else {
            self.busy_ticks as f64 / self.ticks as f64
        }
    }
}

/// A sample of both workers' counters and the clock.
#[derive(Debug, Clone, Copy)]
struct Sample {
    be: Totals,
    fe: Totals,
    at: u64,
}

impl Sample {
    fn take(sh: &Shared) -> Sample {
        Sample {
            be: Totals::sample(&sh.backend),
            fe: Totals::sample(&sh.frontend),
            at: ticks(),
        }
    }
}

/// Receive buffer length: one 2 KiB buffer with mergeable buffers (as DPDK's virtio PMD
/// posts its mbufs); without, a chain that holds the header and the whole frame.
fn rx_buf_len(size: usize, mrg: bool) -> usize {
    if mrg {
        BUF_SIZE
    } else {
        (NetHdr::SIZE + size).max(BUF_SIZE)
    }
}

/// Runs one row. Setup failures are errors; failed checks are in [`RowResult::error`].
pub(crate) fn run_row(
    cfg: &RowConfig<'_>,
    pool: &PktPool,
    clock: &Clock,
) -> Result<RowResult, BenchError> {
    let args = cfg.args;
    let asynch = cfg.copy != CopyMode::Cpu;
    // The DMA engine (the soft engine's device, or the models) is polled in the frontend's
    // loop: one thread on that core. One channel per direction: the guest's receive and
    // transmit queues. The models come first: the driver maps the guest's memory in their
    // IOMMUs when its table arrives (before the row's bed exists), and the pool is mapped
    // in them for the row (`_pool_map`, dropped after the bed).
    let ring = args.queue_size.max(64);
    // A device's functions are closed last: after the bed (and the channels with it) and
    // the pool's mapping.
    let mut _functions = None;
    let mut _pool_map = None;
    let mut mapper = None;
    let (mut soft, channels, threshold) = match cfg.copy {
        CopyMode::Cpu => (None, Vec::new(), 0),
        CopyMode::Soft { threshold, lanes } => {
            let ring = ChannelConfig::new(ring);
            let (dev, engines) = SoftDevice::new(&SoftConfig::with_lanes(lanes), &[ring, ring])
                .map_err(BenchError::Dma)?;
            let channels = engines
                .into_iter()
                .map(|e| Box::new(DmaCopy::new(e)) as Box<dyn AsyncCopyOps>)
                .collect();
            (Some(DmaServe::Soft(dev)), channels, threshold)
        }
        CopyMode::Model { kind, threshold } => {
            let m = model_channels(kind, 2, ring).map_err(BenchError::Dma)?;
            let all = m.mapper(0..m.models.len());
            _pool_map = Some(PoolMapping::new(pool, Arc::clone(&all)).map_err(BenchError::Dma)?);
            mapper = Some(all);
            (Some(DmaServe::Models(m.models)), m.channels, threshold)
        }
        CopyMode::Device { dev, threshold } => {
            // The same channels over functions opened through VFIO (checked by `validate`:
            // two, host-to-guest then guest-to-host); the hardware needs no polling here.
            let d =
                device_channels(&dev, ring, &sysfs(), &dev_vfio()).map_err(BenchError::Device)?;
            _pool_map = Some(d.map_pool(pool, &dev).map_err(BenchError::Device)?);
            mapper = Some(d.mapper(0..d.functions.len()));
            _functions = Some(d.functions);
            (None, d.channels, threshold)
        }
    };
    let mut bed = Bed::new(
        &cfg.sock,
        args.queue_size,
        cfg.mrg,
        cfg.ring == RingLayout::Packed,
        args.small_pages,
        asynch,
        mapper,
    )?;
    let config = AsyncConfig {
        threshold,
        ..AsyncConfig::default()
    };
    let mut channels = channels.into_iter();
    if let (Some(rx_ops), Some(tx_ops)) = (channels.next(), channels.next()) {
        async_channel_register(&bed.dev, QueuePair(0).rx(), config, rx_ops)
            .map_err(BenchError::Async)?;
        async_channel_register(&bed.dev, QueuePair(0).tx(), config, tx_ops)
            .map_err(BenchError::Async)?;
    }
    let frontend_pages = bed.frontend_pages();
    let params = Params {
        dir: cfg.dir,
        size: cfg.size,
        burst: args.burst,
        queue_size: args.queue_size,
        rx_buf_len: rx_buf_len(cfg.size, cfg.mrg),
        asynch,
    };
    let sh = Arc::new(Shared::default());
    let backend = {
        let (table, pool, sh) = (Arc::clone(&bed.table), pool.clone(), Arc::clone(&sh));
        Lcores::launch(&[args.backend_core], move |_| {
            backend_loop(&params, &table, &pool, &sh)
        })?
    };
    let fe_core = args.frontend_core;
    let (rx, tx) = bed.fe.queues();
    let soft_fe = soft.as_mut();
    let (measured, fe_end) = std::thread::scope(|s| {
        let (rx, tx) = (&mut rx[0], &mut tx[0]);
        let sh_fe = &*sh;
        let fe = s.spawn(move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: fe_core }) {
                sh_fe.set_phase(STOP);
                return Err(BenchError::PinFrontend(fe_core));
            }
            Ok(frontend_loop(&params, rx, tx, sh_fe, soft_fe))
        });
        let measured = measure(&sh, args);
        sh.set_phase(STOP);
        (measured, fe.join())
    });
    sh.set_phase(STOP);
    backend.stop();
    let be_end = backend.join()?.pop();
    let fe_end = fe_end.map_err(|_| BenchError::WorkerPanicked("frontend"))??;
    let be_end = be_end.ok_or(BenchError::WorkerPanicked("backend"))?;
    // Packets still in the async channel (none after a clean drain): its device is served
    // by a thread of its own (a real device runs by itself) while the channel is emptied
    // and the bed torn down.
    let idle = WorkerConfig {
        idle: Idle::Yield,
        ..WorkerConfig::default()
    };
    let mut models = Vec::new();
    let (mut _soft_worker, mut _model_worker) = (None, None);
    if let Some(serve) = soft {
        match serve {
            DmaServe::Soft(dev) => {
                _soft_worker = Some(dev.spawn(idle).map_err(BenchError::Dma)?);
            }
            DmaServe::Models(m) => {
                models = m.clone();
                _model_worker = Some(ModelWorker::serve(m, idle).map_err(BenchError::Dma)?);
            }
        }
    }
    if asynch {
        let mut left = Vec::new();
        async_clear_queue(&bed.dev, QueuePair(0).rx(), &mut left);
        async_clear_queue(&bed.dev, QueuePair(0).tx(), &mut left);
        pool.cache().free_bulk(left);
    }
    // The models' rules, the clearing included (the channels' teardown comes with the bed's).
    let violations: Vec<String> = models.iter().flat_map(|m| m.violations()).collect();
    let (w0, w1, drain_err) = measured;
    let mut r = summarize(cfg, &params, clock, w0, w1, &fe_end, &be_end);
    r.frontend_pages = frontend_pages;
    r.error = drain_err
        .or_else(|| check_window(&params, &w1))
        .or_else(|| check_totals(&params, &fe_end, &be_end))
        .or_else(|| check_vrings(&bed))
        .or_else(|| check_dma_errors(&bed))
        .or_else(|| {
            (!violations.is_empty())
                .then(|| format!("the device model saw broken rules: {violations:?}"))
        });
    Ok(r)
}

/// Warm-up, window, drain. Returns the window's samples and a drain failure, if any.
fn measure(sh: &Shared, args: &BenchArgs) -> (Sample, Sample, Option<String>) {
    // Stops early (and fails the drain) if a worker quit.
    let sleep = |secs: f64| {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end && sh.phase() == RUN {
            std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
        }
    };
    sleep(args.warmup);
    let w0 = Sample::take(sh);
    sleep(args.duration);
    let w1 = Sample::take(sh);
    if sh.phase() != RUN {
        return (w0, w1, Some("a worker stopped during the window".into()));
    }
    sh.set_phase(DRAIN);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = Sample::take(sh);
    let mut quiet = 0;
    while quiet < DRAIN_QUIET {
        if Instant::now() > deadline {
            return (
                w0,
                w1,
                Some(format!(
                    "in-flight packets did not drain in {DRAIN_TIMEOUT:?}"
                )),
            );
        }
        std::thread::sleep(DRAIN_POLL);
        let now = Sample::take(sh);
        if now.be == last.be && now.fe == last.fe {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = now;
    }
    (w0, w1, None)
}

/// The row's numbers from the window's samples.
fn summarize(
    cfg: &RowConfig<'_>,
    p: &Params,
    clock: &Clock,
    w0: Sample,
    w1: Sample,
    fe: &FrontendEnd,
    be: &BackendEnd,
) -> RowResult {
    let ticks = w1.at.wrapping_sub(w0.at);
    // The meter: the consuming side.
    let (packets, bytes) = match p.dir {
        Direction::G2h => (w1.be.inp - w0.be.inp, w1.be.bytes - w0.be.bytes),
        Direction::H2g | Direction::Loopback => (w1.fe.inp - w0.fe.inp, w1.fe.bytes - w0.fe.bytes),
    };
    RowResult {
        dir: cfg.dir,
        size: cfg.size,
        mrg: cfg.mrg,
        ring: cfg.ring,
        copy: cfg.copy,
        secs: clock.secs(ticks),
        packets,
        bytes,
        ticks,
        busy_ticks: w1.be.busy - w0.be.busy,
        fe_busy_ticks: w1.fe.busy - w0.fe.busy,
        latency_ns: be
            .latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| [50.0, 99.0, 99.9].map(|q| clock.secs(h.value_at_quantile(q / 100.0)) * 1e9)),
        dropped: w1.be.dropped - w0.be.dropped,
        backend_packets: match p.dir {
            Direction::H2g => w1.be.out - w0.be.out,
            Direction::G2h | Direction::Loopback => w1.be.inp - w0.be.inp,
        },
        backend_bursts: w1.be.bursts - w0.be.bursts,
        fe_sent: fe.totals.out,
        fe_received: fe.totals.inp,
        be_dequeued: be.totals.inp,
        be_enqueued: be.totals.out,
        frontend_pages: PageSize::Small,
        error: None,
    }
}

/// In the window, the consumer may lag the producer by what the ring holds (plus a burst
/// of sampling skew each way), never more.
fn check_window(p: &Params, w1: &Sample) -> Option<String> {
    let slack = i128::from(p.queue_size) + 2 * p.burst as i128;
    let lag = |what: &str, produced: u64, consumed: u64| {
        let d = i128::from(produced) - i128::from(consumed);
        (d > slack || d < -(p.burst as i128)).then(|| {
            format!(
                "at the window's end {what}: produced {produced}, consumed {consumed}, \
                 more apart than the ring holds"
            )
        })
    };
    let g2h = || lag("guest->host", w1.fe.out, w1.be.inp);
    let h2g = || lag("host->guest", w1.be.out, w1.fe.inp);
    match p.dir {
        Direction::G2h => g2h(),
        Direction::H2g => h2g(),
        Direction::Loopback => g2h().or_else(h2g),
    }
}

/// After the drain every packet is accounted for, exactly.
fn check_totals(p: &Params, fe: &FrontendEnd, be: &BackendEnd) -> Option<String> {
    let (f, b) = (&fe.totals, &be.totals);
    if be.destroyed {
        return Some("the device was destroyed during the run".into());
    }
    if f.bad > 0 || b.bad > 0 {
        return Some(format!(
            "packets with a wrong length or header: {} at the frontend, {} at the backend",
            f.bad, b.bad
        ));
    }
    let mut errs = Vec::new();
    if p.dir.guest_sends() {
        if f.out != b.inp {
            errs.push(format!(
                "frontend sent {}, backend dequeued {}",
                f.out, b.inp
            ));
        }
        if fe.tx_in_flight != 0 {
            errs.push(format!(
                "{} transmit chains never returned",
                fe.tx_in_flight
            ));
        }
    }
    if p.dir.guest_receives() && b.out != f.inp {
        errs.push(format!(
            "backend enqueued {}, frontend received {}",
            b.out, f.inp
        ));
    }
    if p.dir == Direction::Loopback && b.out + b.dropped != b.inp {
        errs.push(format!(
            "backend dequeued {} but enqueued {} and dropped {}",
            b.inp, b.out, b.dropped
        ));
    }
    (!errs.is_empty()).then(|| errs.join("; "))
}

/// No descriptor chain was malformed on either vring.
fn check_vrings(bed: &Bed) -> Option<String> {
    let mut bad = 0;
    for vring in 0..2 {
        if let Some(s) = bed.dev.vring_stats(vring) {
            bad += s.queue.bad_chains;
        }
    }
    (bad > 0).then(|| format!("{bad} descriptor chains reported bad"))
}

/// Copy jobs the device failed (an IOMMU fault of a model, an unmapped address): the async
/// path copied them again with the CPU, so the counts pass, but a row that measures a copy
/// device must not hide them.
fn check_dma_errors(bed: &Bed) -> Option<String> {
    let rx = async_stats(&bed.dev, QueuePair(0).rx());
    let tx = async_stats(&bed.dev, QueuePair(0).tx());
    let errors: u64 = [rx, tx].iter().flatten().map(|s| s.dma_errors).sum();
    (errors > 0).then(|| format!("{errors} DMA jobs failed (copied again by the CPU)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(dir: Direction) -> Params {
        Params {
            dir,
            size: 64,
            burst: 32,
            queue_size: 256,
            rx_buf_len: 2048,
            asynch: false,
        }
    }

    fn ends(fe: Totals, be: Totals) -> (FrontendEnd, BackendEnd) {
        (
            FrontendEnd {
                totals: fe,
                tx_in_flight: 0,
            },
            BackendEnd {
                totals: be,
                destroyed: false,
                latency: None,
            },
        )
    }

    fn t(out: u64, inp: u64, dropped: u64) -> Totals {
        Totals {
            out,
            inp,
            dropped,
            ..Totals::default()
        }
    }

    #[test]
    fn exact_totals_pass_and_any_mismatch_fails() {
        let lb = params(Direction::Loopback);
        let (f, b) = ends(t(100, 90, 0), t(90, 100, 10));
        assert_eq!(check_totals(&lb, &f, &b), None);
        let (f, b) = ends(t(100, 89, 0), t(90, 100, 10));
        assert!(check_totals(&lb, &f, &b).unwrap().contains("received 89"));
        let (f, b) = ends(t(101, 90, 0), t(90, 100, 10));
        assert!(check_totals(&lb, &f, &b).unwrap().contains("sent 101"));
        let (f, b) = ends(t(100, 90, 0), t(90, 100, 9));
        assert!(check_totals(&lb, &f, &b).unwrap().contains("dropped 9"));
        let (f, mut b) = ends(t(0, 5, 0), t(5, 0, 0));
        assert_eq!(check_totals(&params(Direction::H2g), &f, &b), None);
        b.destroyed = true;
        assert!(check_totals(&params(Direction::H2g), &f, &b).is_some());
        let (mut f, b) = ends(t(5, 0, 0), t(0, 5, 0));
        f.totals.bad = 1;
        assert!(
            check_totals(&params(Direction::G2h), &f, &b)
                .unwrap()
                .contains("wrong length")
        );
        f.totals.bad = 0;
        f.tx_in_flight = 3;
        assert!(
            check_totals(&params(Direction::G2h), &f, &b)
                .unwrap()
                .contains("never returned")
        );
    }

    #[test]
    fn window_lag_beyond_the_ring_fails() {
        let s = |fe: Totals, be: Totals| Sample { be, fe, at: 0 };
        let g2h = params(Direction::G2h);
        // 256 in the ring plus two bursts of skew are fine, one more is not.
        assert_eq!(
            check_window(&g2h, &s(t(1000 + 320, 0, 0), t(0, 1000, 0))),
            None
        );
        assert!(check_window(&g2h, &s(t(1000 + 321, 0, 0), t(0, 1000, 0))).is_some());
        // The consumer ahead of the producer by more than a burst is impossible.
        assert!(check_window(&g2h, &s(t(1000, 0, 0), t(0, 1033, 0))).is_some());
        let h2g = params(Direction::H2g);
        assert!(check_window(&h2g, &s(t(0, 0, 0), t(1000, 0, 0))).is_some());
        assert_eq!(check_window(&h2g, &s(t(0, 900, 0), t(1000, 0, 0))), None);
    }
}
