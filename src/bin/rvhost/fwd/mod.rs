//! `rvhost fwd`: a testpmd-like forwarding application over vhost-user ports.
//!
//! One port per `--iface` socket (rvhost listens, or connects with `--client`), `--queues`
//! queue pairs each; forwarding on pinned lcores in one of testpmd's modes; per-port
//! statistics every `--stats-period` seconds and at exit, with one machine-readable `FINAL`
//! line per port (and one `FINAL-QUEUE` line per queue pair when there are several; one
//! `FINAL-LCORE` line per lcore with `--record-core-cycles` or `--record-burst-stats`).
//! SIGINT or SIGTERM (or `--duration`) stops it cleanly: sockets unregistered (their files
//! removed), lcores joined, final statistics printed. A second signal during that shutdown
//! ends the process at once.
//!
//! Pieces: [`rvhost::dataplane`] (which device each port has, and the `destroy_device`
//! handshake with the lcores), [`engine`] (streams and the poll loop), [`stats`] (counters and lines),
//! [`record`] (the per-lcore cycles and burst sizes).

mod copy;
mod engine;
mod record;
mod rewrite;
mod stats;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rvhost::driver::{Driver, DriverError, Flags};
use rvhost::lcore::{LcoreError, Lcores, allowed_cores, parse_core_list};
use rvhost::mbuf::{DEFAULT_DATA_ROOM, PktPool, PktPoolError};
use rvhost_hugepages::region::{IovaMode, RegionConfig};
use thiserror::Error;

use crate::bench::CopyMode;
use engine::Shared;
use rvhost::dataplane::{DeviceTable, PortOps};
use stats::{PortCounters, Snapshot};

/// Forwarding modes, as testpmd's `--forward-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Port to port, unchanged (0↔1, 2↔3, ...; a single port back to itself).
    Io,
    /// As io, with source and destination MAC addresses swapped.
    Macswap,
    /// Receive and free.
    Rxonly,
    /// Send UDP frames of `--txpkts` bytes; free what the guest does not take.
    Txonly,
    /// Answer ARP requests and ICMP echo requests (to any IP) on the port they came from;
    /// drop everything else. Port p's MAC is 02:00:00:00:00:0p.
    Icmpecho,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let v = self.to_possible_value().expect("no variant is skipped");
        f.write_str(v.get_name())
    }
}

/// Options of `rvhost fwd`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Forwarding mode.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// vhost-user socket of a port (repeat for more ports, numbered in order from 0).
    #[arg(long = "iface", value_name = "PATH", required = true)]
    pub ifaces: Vec<PathBuf>,
    /// Connect to the sockets (the frontends listen), retrying every second, instead of
    /// listening on them.
    #[arg(long)]
    pub client: bool,
    /// CPUs of the forwarding lcores, e.g. `0` or `1,2` or `2-3` (default: the last CPU).
    /// Streams (one per port and queue pair) are spread over them round-robin.
    #[arg(long, value_name = "LIST")]
    pub lcores: Option<String>,
    /// Queue pairs offered per port (testpmd's `--rxq`/`--txq`, virtio-user's `queues=`);
    /// what arrives on queue pair q leaves on queue pair q. The guest may enable fewer.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=128))]
    pub queues: u16,
    /// Packets per burst.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub burst: u16,
    /// Frame length (bytes, without CRC) of txonly packets.
    #[arg(long, value_name = "SIZE", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(42..=16384))]
    pub txpkts: u16,
    /// Seconds between statistics lines (fractions allowed); 0 turns them off.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub stats_period: f64,
    /// Mbufs in the packet pool.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub nb_mbufs: usize,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// A/B inside one run (a developer's tool, see `rvhost::ab`): the experiments of this bit
    /// mask are turned on and off at every statistics period, each period's lines tagged
    /// `AB A` (off) or `AB B` (on). Needs a statistics period.
    #[arg(long, value_name = "MASK", value_parser = clap::value_parser!(u32).range(1..))]
    pub ab: Option<u32>,
    /// How packets are copied into the guests: `cpu` (the lcores copy),
    /// `soft[,threshold=N][,engines=K]` (the async path: copies of at least N bytes, default
    /// 256, go to a software DMA engine with K lanes running on a thread of its own), or
    /// `ioat-model[,threshold=N]`, `dsa-model[,threshold=N]` (the async path over the IOAT or
    /// DSA driver, each channel on a software model of the device, the models served by a
    /// thread of their own), or `ioat:BDF+BDF...[,threshold=N]`, `dsa:BDF+BDF...` (the same
    /// drivers over PCI functions bound to vfio-pci, one per port, queue pair and direction:
    /// port 0 queue 0 host-to-guest, then guest-to-host, then queue 1...; not run on
    /// hardware yet).
    #[arg(long, value_name = "MODE", default_value = "cpu", value_parser = parse_copy)]
    pub copy: CopyMode,
    /// CPU of the DMA engine's thread (`--copy soft`, or the models'): pinned there, it polls
    /// without yielding, as a hardware engine would work beside the lcores. Default: unpinned,
    /// and it yields the CPU whenever it finds no work (shared cores).
    #[arg(long, value_name = "CPU")]
    pub dma_lcore: Option<usize>,
    /// Support postcopy live migration: register the ports with POSTCOPY_SUPPORT (the
    /// PAGEFAULT protocol feature is offered; QEMU's destination may then run the guest
    /// before its memory has arrived). Only with `--copy cpu`: the async path populates and
    /// locks guest memory, which postcopy cannot have.
    #[arg(long)]
    pub postcopy: bool,
    /// Offer packed virtqueues (`VIRTIO_F_RING_PACKED`; not offered by default yet). Not with
    /// `--copy` other than `cpu`.
    #[arg(long)]
    pub packed: bool,
    /// Count each lcore's cycles: those of the receive polls that brought packets (with
    /// their forwarding) per packet, and as a share of all its cycles (testpmd's option),
    /// printed with the final statistics.
    #[arg(long)]
    pub record_core_cycles: bool,
    /// Count each lcore's receive and transmit bursts by their number of packets (testpmd's
    /// option), printed with the final statistics.
    #[arg(long)]
    pub record_burst_stats: bool,
}

/// `--copy`: one mode.
fn parse_copy(s: &str) -> Result<CopyMode, String> {
    match CopyMode::parse_list(s)?.as_slice() {
        [one] => Ok(*one),
        _ => Err("give one copy mode (cpu, soft[,threshold=N][,engines=K], \
                  ioat-model[,threshold=N], dsa-model[,threshold=N], \
                  ioat:BDF[+BDF...][,threshold=N] or dsa:BDF[+BDF...][,threshold=N])"
            .into()),
    }
}

/// Why `rvhost fwd` failed.
#[derive(Debug, Error)]
pub enum FwdError {
    /// An option has a value that cannot work.
    #[error("{0}")]
    Usage(String),
    /// Blocking or waiting for signals failed.
    #[error("signal handling: {0}")]
    Signals(#[source] nix::Error),
    /// The packet pool could not be made.
    #[error("packet pool of {count} mbufs")]
    Pool {
        /// Mbufs asked for.
        count: usize,
        /// The cause.
        #[source]
        source: PktPoolError,
    },
    /// The lcores could not be started, or one failed.
    #[error("lcores")]
    Lcores(#[from] LcoreError),
    /// A vhost-user socket could not be set up.
    #[error("vhost-user")]
    Driver(#[from] DriverError),
    /// The software DMA engine could not be started.
    #[error("software DMA engine")]
    Dma(#[from] rvhost_dma::DmaError),
    /// A copy device opened through VFIO could not be set up (the message names the
    /// function, what failed and what to do).
    #[error("{0}")]
    Device(String),
    /// An lcore panicked while forwarding.
    #[error("an lcore stopped unexpectedly (see the log)")]
    LcoreFailed,
}

/// Checked options.
struct Config {
    mode: Mode,
    ifaces: Vec<PathBuf>,
    client: bool,
    cores: Vec<usize>,
    queues: u16,
    burst: usize,
    txpkts: usize,
    stats_period: Option<Duration>,
    nb_mbufs: usize,
    duration: Option<Duration>,
    ab: Option<u32>,
    copy: CopyMode,
    /// Register the ports with POSTCOPY_SUPPORT.
    postcopy: bool,
    dma_lcore: Option<usize>,
    packed: bool,
    record_core_cycles: bool,
    record_burst_stats: bool,
}

fn seconds(name: &str, v: f64) -> Result<Duration, FwdError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| FwdError::Usage(format!("--{name} {v}: not a number of seconds")))
}

impl Config {
    fn new(a: Args) -> Result<Config, FwdError> {
        for (i, p) in a.ifaces.iter().enumerate() {
            if a.ifaces[..i].contains(p) {
                return Err(FwdError::Usage(format!(
                    "--iface {} is given twice",
                    p.display()
                )));
            }
        }
        let mut cores = match &a.lcores {
            Some(list) => parse_core_list(list)?,
            None => vec![last_cpu()],
        };
        let streams = a.ifaces.len() * usize::from(a.queues);
        if cores.len() > streams {
            log::warn!(
                "{} lcores for {streams} streams (one per port and queue pair): using the \
                 first {streams}",
                cores.len()
            );
            cores.truncate(streams);
        }
        if a.postcopy && a.copy != CopyMode::Cpu {
            return Err(FwdError::Usage(format!(
                "--postcopy needs --copy cpu (got --copy {}): the async copy path populates and \
                 locks guest memory when it is mapped, which defeats postcopy's page faults",
                a.copy.name()
            )));
        }
        if let CopyMode::Device { dev, .. } = &a.copy {
            dev.check_count(
                2 * streams,
                "per port and queue pair, host-to-guest then guest-to-host, port by port",
            )
            .map_err(FwdError::Usage)?;
            if a.dma_lcore.is_some() {
                return Err(FwdError::Usage(format!(
                    "--dma-lcore: --copy {} needs no thread (the devices run by themselves)",
                    dev.name()
                )));
            }
        }
        if let Some(cpu) = a.dma_lcore {
            if a.copy == CopyMode::Cpu {
                return Err(FwdError::Usage(
                    "--dma-lcore needs a DMA engine (--copy soft, ioat-model or dsa-model)".into(),
                ));
            }
            if cores.contains(&cpu) {
                return Err(FwdError::Usage(format!(
                    "--dma-lcore {cpu} is also a forwarding lcore: a polling engine and an \
                     lcore on one CPU starve each other (leave --dma-lcore out to share CPUs)"
                )));
            }
            if !allowed_cores().contains(&cpu) {
                return Err(FwdError::Usage(format!(
                    "--dma-lcore {cpu}: not a CPU this process may run on"
                )));
            }
        }
        let stats_period = seconds("stats-period", a.stats_period)?;
        let duration = a.duration.map(|d| seconds("duration", d)).transpose()?;
        if a.ab.is_some() && stats_period.is_zero() {
            return Err(FwdError::Usage(
                "--ab alternates at each statistics period: it needs --stats-period above 0".into(),
            ));
        }
        // Each lcore's cache may hold up to 1.5x its size; keep most of the pool in the ring.
        let cache = (a.nb_mbufs / (4 * cores.len())).min(256);
        if a.nb_mbufs < 4 * usize::from(a.burst) * cores.len() || cache == 0 {
            return Err(FwdError::Usage(format!(
                "--nb-mbufs {} is too small for {} lcores with bursts of {}",
                a.nb_mbufs,
                cores.len(),
                a.burst
            )));
        }
        Ok(Config {
            mode: a.mode,
            ifaces: a.ifaces,
            client: a.client,
            cores,
            queues: a.queues,
            burst: usize::from(a.burst),
            txpkts: usize::from(a.txpkts),
            stats_period: (!stats_period.is_zero()).then_some(stats_period),
            nb_mbufs: a.nb_mbufs,
            duration,
            ab: a.ab,
            copy: a.copy,
            dma_lcore: a.dma_lcore,
            postcopy: a.postcopy,
            packed: a.packed,
            record_core_cycles: a.record_core_cycles,
            record_burst_stats: a.record_burst_stats,
        })
    }

    fn cache_size(&self) -> usize {
        (self.nb_mbufs / (4 * self.cores.len())).min(256)
    }
}

/// The last CPU this process may run on.
fn last_cpu() -> usize {
    allowed_cores().into_iter().max().unwrap_or(0)
}

/// SIGINT and SIGTERM, blocked in every thread and read from a signalfd by the main loop: no
/// handler runs, so nothing can happen at an unsafe moment.
struct Signals {
    set: SigSet,
    fd: SignalFd,
}

impl Signals {
    /// Blocks the signals in the calling thread; threads started afterwards inherit the mask,
    /// so call this before any thread exists.
    fn block() -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { set, fd })
    }

    /// Unblocks the signals in the calling thread (the only one that does): once shutdown has
    /// begun, a second SIGINT or SIGTERM ends the process at once (default action).
    fn release(&self) {
        if let Err(e) = self.set.thread_unblock() {
            log::warn!("cannot unblock SIGINT/SIGTERM: {e}");
        }
    }

    /// Waits up to `timeout` for a signal.
    fn wait(&self, timeout: Duration) -> nix::Result<Option<Signal>> {
        let ms = timeout.as_millis().min(60_000) as u16;
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::Error::EINTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        Ok(self
            .fd
            .read_signal()?
            .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok()))
    }
}

/// Runs `rvhost fwd` until a signal, `--duration`, or a failure.
pub fn run(args: Args) -> Result<(), FwdError> {
    let cfg = Config::new(args)?;
    let signals = Signals::block().map_err(FwdError::Signals)?;
    let pool = PktPool::new(
        "rvhost-fwd",
        cfg.nb_mbufs,
        DEFAULT_DATA_ROOM,
        cfg.cache_size(),
        RegionConfig::default().with_iova_mode(IovaMode::Va),
    )
    .map_err(|source| FwdError::Pool {
        count: cfg.nb_mbufs,
        source,
    })?;
    let ports = cfg.ifaces.len();
    let streams = engine::streams(cfg.mode, ports, cfg.queues);
    let shared = Arc::new(Shared {
        mode: cfg.mode,
        burst: cfg.burst,
        txpkts: cfg.txpkts,
        queues: cfg.queues,
        table: DeviceTable::new(ports, cfg.cores.len()),
        counters: (0..ports)
            .map(|_| PortCounters::new(usize::from(cfg.queues)))
            .collect(),
        pool,
        plan: engine::plan(&streams, cfg.cores.len()),
        failed: Default::default(),
        asynch: cfg.copy != CopyMode::Cpu,
        record_cycles: cfg.record_core_cycles,
        record_bursts: cfg.record_burst_stats,
        records: Default::default(),
    });
    // The DMA engine outlives the ports (dropped after serve closed them, and after the
    // channels).
    let (engines, dma) = match cfg.copy {
        CopyMode::Cpu => (None, None),
        CopyMode::Soft { threshold, lanes } => {
            let (e, w) = copy::Engines::soft(ports, cfg.queues, threshold, lanes, cfg.dma_lcore)?;
            (Some(e), Some(w))
        }
        CopyMode::Model { kind, threshold } => {
            let (e, w) = copy::Engines::models(
                ports,
                cfg.queues,
                threshold,
                kind,
                cfg.dma_lcore,
                &shared.pool,
            )?;
            (Some(e), Some(w))
        }
        CopyMode::Device { dev, threshold } => {
            let (e, d) = copy::Engines::devices(ports, cfg.queues, threshold, &dev, &shared.pool)
                .map_err(FwdError::Device)?;
            (Some(e), Some(d))
        }
    };
    let sh = Arc::clone(&shared);
    let workers = Lcores::launch(&cfg.cores, move |lcore| engine::run(lcore, &sh))?;
    let started = Instant::now();
    let served = serve(&cfg, &shared, engines.as_ref(), &signals);
    workers.stop();
    let joined = workers.join();
    drop(engines);
    drop(dma);
    print_final(&shared, started.elapsed());
    served?;
    joined?;
    if shared.failed.load(Ordering::Relaxed) {
        return Err(FwdError::LcoreFailed);
    }
    Ok(())
}

/// Opens the ports, forwards until told to stop, and closes the ports (the lcores still run,
/// so `destroy_device` completes its handshake with them).
fn serve(
    cfg: &Config,
    sh: &Arc<Shared>,
    engines: Option<&Arc<copy::Engines>>,
    signals: &Signals,
) -> Result<(), FwdError> {
    let driver = Driver::new()?;
    let mut flags = if cfg.client {
        Flags::CLIENT
    } else {
        Flags::empty()
    };
    if engines.is_some() {
        flags = flags | Flags::ASYNC_COPY;
    }
    if cfg.postcopy {
        flags = flags | Flags::POSTCOPY_SUPPORT;
    }
    let mut registered = Vec::new();
    let opened = (|| {
        for (port, path) in cfg.ifaces.iter().enumerate() {
            driver.register(path, flags)?;
            registered.push(path);
            if cfg.packed {
                driver.enable_features(path, rvhost::features::VIRTIO_F_RING_PACKED)?;
            }
            driver.set_max_queue_pairs(path, cfg.queues)?;
            let ops = PortOps {
                table: Arc::clone(&sh.table),
                port,
            };
            if let Some(mapper) = engines.and_then(|e| e.mapper(port)) {
                driver.set_dma_mapper(path, mapper)?;
            }
            match engines {
                Some(e) => driver.set_callbacks(
                    path,
                    Arc::new(copy::AsyncPortOps {
                        port: ops,
                        engines: Arc::clone(e),
                    }),
                )?,
                None => driver.set_callbacks(path, Arc::new(ops))?,
            }
            driver.start(path)?;
            log::info!(
                "port {port}: {} {} (MAC {})",
                if cfg.client {
                    "connecting to"
                } else {
                    "listening on"
                },
                path.display(),
                mac_string(engine::port_mac(port))
            );
        }
        Ok::<(), FwdError>(())
    })();
    let result = match opened {
        Ok(()) => {
            log::info!(
                "{} forwarding: {} port(s) of {} queue pair(s), lcores on CPUs {:?}, burst {}, \
                 copy {}",
                cfg.mode,
                cfg.ifaces.len(),
                cfg.queues,
                cfg.cores,
                cfg.burst,
                cfg.copy.name()
            );
            let stopped = forward_until_stopped(cfg, sh, signals);
            signals.release();
            stopped
        }
        Err(e) => Err(e),
    };
    for path in registered {
        if let Err(e) = driver.unregister(path) {
            log::warn!("{}: {e}", path.display());
        }
    }
    result
}

/// The main thread's loop: waits for a signal, the end of `--duration` or a failed lcore,
/// printing statistics every period.
fn forward_until_stopped(cfg: &Config, sh: &Shared, signals: &Signals) -> Result<(), FwdError> {
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let mut last = (start, snapshots(sh));
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            log::info!("--duration reached; stopping");
            return Ok(());
        }
        if sh.failed.load(Ordering::Relaxed) {
            return Err(FwdError::LcoreFailed);
        }
        let mut wait = Duration::from_millis(200);
        if let Some(d) = deadline {
            wait = wait.min(d - now);
        }
        if let Some(p) = cfg.stats_period {
            let due = last.0 + p;
            if now >= due {
                let snap = snapshots(sh);
                if let Some(bits) = cfg.ab {
                    // The period just measured ran with what is on now; the next runs with
                    // the other variant.
                    let on = rvhost::ab::active() != 0;
                    stats::emit([format!("AB {}", if on { "B" } else { "A" })]);
                    rvhost::ab::set(if on { 0 } else { bits });
                }
                print_period(&last.1, &snap, now - last.0);
                last = (now, snap);
                continue;
            }
            wait = wait.min(due - now);
        }
        if let Some(sig) = signals.wait(wait).map_err(FwdError::Signals)? {
            log::info!("{sig} received; stopping");
            return Ok(());
        }
    }
}

fn snapshots(sh: &Shared) -> Vec<Snapshot> {
    sh.counters.iter().map(PortCounters::snapshot).collect()
}

fn print_period(before: &[Snapshot], now: &[Snapshot], t: Duration) {
    stats::emit(
        now.iter()
            .zip(before)
            .enumerate()
            .map(|(p, (n, b))| stats::line(p, &n.since(b), n, t)),
    );
}

fn print_final(sh: &Shared, elapsed: Duration) {
    let snaps = snapshots(sh);
    let mut lines = vec![format!(
        "---- final statistics after {:.3} s ----",
        elapsed.as_secs_f64()
    )];
    for (p, s) in snaps.iter().enumerate() {
        let active = sh.table.active_time(p);
        lines.push(stats::line(p, s, s, active));
    }
    for (p, s) in snaps.iter().enumerate() {
        lines.push(stats::final_line(p, s, sh.table.active_time(p)));
    }
    if sh.queues > 1 {
        for (p, c) in sh.counters.iter().enumerate() {
            for (q, s) in c.queue_snapshots().iter().enumerate() {
                lines.push(stats::final_queue_line(p, q, s));
            }
        }
    }
    let mut records = sh
        .records
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    records.sort_by_key(record::Recorded::lcore);
    for r in &records {
        lines.extend(r.lines());
    }
    stats::emit(lines);
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("fwd").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn options_parse_with_testpmd_like_defaults() {
        let a = parse(&["--mode", "macswap", "--iface", "/tmp/a.sock"]).unwrap();
        assert_eq!(a.mode, Mode::Macswap);
        assert_eq!((a.burst, a.txpkts, a.nb_mbufs), (32, 64, 8192));
        assert!(!a.client && a.duration.is_none() && a.lcores.is_none());
        let c = Config::new(a).unwrap();
        assert_eq!(c.cores, vec![last_cpu()]);
        assert_eq!(c.stats_period, Some(Duration::from_secs(1)));
        let a = parse(&[
            "--mode",
            "txonly",
            "--iface",
            "a",
            "--iface",
            "b",
            "--client",
            "--lcores",
            "0",
            "--burst",
            "64",
            "--txpkts",
            "1518",
            "--stats-period",
            "0",
            "--duration",
            "2.5",
        ])
        .unwrap();
        let c = Config::new(a).unwrap();
        assert_eq!(c.ifaces.len(), 2);
        assert!(c.client && c.stats_period.is_none());
        assert_eq!(c.duration, Some(Duration::from_millis(2500)));
        assert_eq!((c.burst, c.txpkts), (64, 1518));
        assert_eq!(Mode::Icmpecho.to_string(), "icmpecho");
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(parse(&["--mode", "csum", "--iface", "a"]).is_err());
        assert!(parse(&["--mode", "io"]).is_err(), "an iface is required");
        assert!(parse(&["--mode", "io", "--iface", "a", "--burst", "0"]).is_err());
        assert!(parse(&["--mode", "io", "--iface", "a", "--txpkts", "20"]).is_err());
        let cfg = |argv: &[&str]| Config::new(parse(argv).unwrap());
        assert!(cfg(&["--mode", "io", "--iface", "a", "--iface", "a"]).is_err());
        assert!(cfg(&["--mode", "io", "--iface", "a", "--lcores", "x"]).is_err());
        assert!(cfg(&["--mode", "io", "--iface", "a", "--nb-mbufs", "10"]).is_err());
        assert!(cfg(&["--mode", "io", "--iface", "a", "--duration=-1"]).is_err());
        assert!(cfg(&["--mode", "io", "--iface", "a", "--stats-period", "nan"]).is_err());
        // Postcopy only with the CPU copying (the async path populates and locks memory).
        let c = cfg(&["--mode", "io", "--iface", "a", "--postcopy"]).unwrap();
        assert!(c.postcopy);
        let e = cfg(&[
            "--mode",
            "io",
            "--iface",
            "a",
            "--postcopy",
            "--copy",
            "soft",
        ]);
        assert!(e.is_err_and(|e| e.to_string().contains("--postcopy needs --copy cpu")));
        // More lcores than streams: the extra ones are not started.
        let c = cfg(&["--mode", "io", "--iface", "a", "--lcores", "0,1"]).unwrap();
        assert_eq!(c.cores, vec![0]);
        // --ab: a non-zero mask, and a period to alternate at.
        assert!(parse(&["--mode", "io", "--iface", "a", "--ab", "0"]).is_err());
        let e = cfg(&[
            "--mode",
            "io",
            "--iface",
            "a",
            "--ab",
            "1",
            "--stats-period",
            "0",
        ]);
        assert!(e.is_err_and(|e| e.to_string().contains("--ab alternates")));
        let c = cfg(&["--mode", "io", "--iface", "a", "--ab", "6"]).unwrap();
        assert_eq!(c.ab, Some(6));
    }
}
