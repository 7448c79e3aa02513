//! `rvhost bench`: a self-contained data-plane benchmark in one process.
//!
//! Each row starts an rvhost [`Driver`](rvhost::driver::Driver) on a socket in a temporary
//! directory and the Rust [frontend](rvhost::frontend) connected to it, acting as the guest
//! driver at full speed. Two pinned threads then poll:
//!
//! - the **backend** worker (an [`lcore`](rvhost::lcore), `--backend-core`) runs
//!   [`dequeue_burst`](rvhost::net::dequeue_burst) / [`enqueue_burst`](rvhost::net::enqueue_burst)
//!   on the device;
//! - the **frontend** worker (`--frontend-core`) owns the frontend's queues.
//!
//! Directions:
//!
//! | dir | frontend | backend | packets counted |
//! |---|---|---|---|
//! | `g2h` | sends | dequeues and frees (testpmd `rxonly`) | dequeued by the backend |
//! | `h2g` | posts receive buffers, reaps | allocates a burst, copies the prebuilt headers in, enqueues, frees (testpmd `txonly`) | received by the frontend |
//! | `loopback` | sends, reaps, receives | dequeues, enqueues back, frees what the guest had no room for (testpmd `io`) | received by the frontend |
//!
//! After `--warmup` seconds the counters are sampled, and again `--duration` seconds later:
//! Mpps and Gbit/s (Ethernet frame bytes, no virtio-net header, FCS, preamble or gap) come
//! from that window. `cyc/pkt` is the backend core's TSC cycles in the window divided by the
//! packets (the worker is a poll loop pinned to its core, so that is the core's whole cost,
//! idle polling included); `busy` is the share of those cycles spent in bursts that moved at
//! least one packet, `busy cyc/pkt` those cycles per packet, and `pkt/burst` the packets per
//! such burst: near `--burst` the backend is the bottleneck (the frontend keeps its rings
//! full or empty), lower it waits for the frontend. Off x86_64 the unit is nanoseconds.
//!
//! Then the producer stops, the consumer drains what is in flight, and the counts of both
//! sides must agree exactly: every packet the frontend sent was dequeued, every packet the
//! backend enqueued was received, every packet had the row's length (and, where the frontend
//! receives, the headers the backend sent), and neither vring counted a bad descriptor chain.
//! A row that fails this is reported as failed with the reason, as is one whose window counts
//! are further apart than the ring can hold; [`run`] then returns an error.
//!
//! Frames are testpmd's `txonly` UDP frames; the packet pool's data room grows with the
//! largest `--sizes` so that every packet is one mbuf. The frontend posts 2 KiB receive
//! buffers with mergeable buffers (as DPDK's virtio PMD does), else one chain per packet big
//! enough for it.

mod bed;
pub(crate) mod clock;
mod plot;
mod report;
mod row;
mod workers;

#[cfg(test)]
mod tests;

use crate::dma::device::DeviceMode;
use crate::dma::models::ModelKind;
use std::path::PathBuf;
use std::time::Duration;

use rvhost_hugepages::region::{PageSize, RegionConfig};
use thiserror::Error;

use rvhost::driver::DriverError;
use rvhost::frontend::FrontendError;
use rvhost::lcore::LcoreError;
use rvhost::mbuf::{DEFAULT_DATA_ROOM, PKTMBUF_HEADROOM, PktPool, PktPoolError};

/// Which way packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Direction {
    /// Guest to host: the frontend sends, the backend dequeues.
    G2h,
    /// Host to guest: the backend enqueues, the frontend receives.
    H2g,
    /// The frontend sends, the backend dequeues and enqueues back, the frontend receives.
    Loopback,
}

impl Direction {
    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Direction::G2h => "g2h",
            Direction::H2g => "h2g",
            Direction::Loopback => "loopback",
        }
    }

    /// Whether the frontend sends.
    fn guest_sends(self) -> bool {
        self != Direction::H2g
    }

    /// Whether the frontend receives.
    fn guest_receives(self) -> bool {
        self != Direction::G2h
    }
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Toggle {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl Toggle {
    fn is_on(self) -> bool {
        self == Toggle::On
    }
}

/// The virtqueue layout of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum RingLayout {
    /// Split virtqueues (descriptor table, available and used rings).
    Split,
    /// Packed virtqueues (`VIRTIO_F_RING_PACKED`, offered by the driver for the row).
    Packed,
}

impl RingLayout {
    /// `split` / `packed`.
    pub fn name(self) -> &'static str {
        match self {
            RingLayout::Split => "split",
            RingLayout::Packed => "packed",
        }
    }
}

/// How the backend copies payloads in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyMode {
    /// The sync data path: the backend core copies (`enqueue_burst`).
    Cpu,
    /// The async path with the software DMA engine (`submit_enqueue_burst` /
    /// `poll_enqueue_completed`), the engine polled in the frontend core's loop.
    Soft {
        /// Copies below this many bytes stay on the backend core.
        threshold: u32,
        /// Lanes ("engines") of the software device.
        lanes: usize,
    },
    /// The async path with the IOAT or DSA driver over a software model of the device's
    /// registers (`ioat-model`, `dsa-model`): the throughput is a model's, not the hardware's.
    Model {
        /// Which device.
        kind: ModelKind,
        /// Copies below this many bytes stay on the backend core.
        threshold: u32,
    },
    /// The async path with the IOAT or DSA driver over PCI functions opened through VFIO
    /// (`ioat:BDF+BDF`, `dsa:BDF+BDF`: one function per channel). Not run on hardware.
    Device {
        /// Which device, and its functions.
        dev: DeviceMode,
        /// Copies below this many bytes stay on the backend core.
        threshold: u32,
    },
}

impl CopyMode {
    /// The name in the table and the JSON: `cpu`, `soft`, or `soft:t=N,e=K` off the defaults;
    /// `ioat-model`, `dsa-model`, or `ioat-model:t=N`.
    pub fn name(self) -> String {
        match self {
            CopyMode::Cpu => "cpu".into(),
            CopyMode::Soft { threshold, lanes } => {
                if threshold == rvhost::net::DEFAULT_THRESHOLD && lanes == 1 {
                    "soft".into()
                } else {
                    format!("soft:t={threshold},e={lanes}")
                }
            }
            CopyMode::Model { kind, threshold } => {
                if threshold == rvhost::net::DEFAULT_THRESHOLD {
                    kind.name().into()
                } else {
                    format!("{}:t={threshold}", kind.name())
                }
            }
            CopyMode::Device { dev, threshold } => {
                if threshold == rvhost::net::DEFAULT_THRESHOLD {
                    dev.name()
                } else {
                    format!("{},t={threshold}", dev.name())
                }
            }
        }
    }

    /// Whether the mode runs on a device model.
    pub fn is_model(self) -> bool {
        matches!(self, CopyMode::Model { .. })
    }

    /// Parses `--copy`: `cpu`, `soft`, `ioat-model` and `dsa-model` start a mode,
    /// `threshold=N` sets the last `soft` or model, `engines=K` the last `soft` (e.g.
    /// `cpu,soft,threshold=0,soft,engines=4,ioat-model`).
    pub fn parse_list(s: &str) -> Result<Vec<CopyMode>, String> {
        let mut modes: Vec<CopyMode> = Vec::new();
        for tok in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value) = match tok.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (tok, None),
            };
            match (key, value, modes.last_mut()) {
                ("cpu", None, _) => modes.push(CopyMode::Cpu),
                ("soft", None, _) => modes.push(CopyMode::Soft {
                    threshold: rvhost::net::DEFAULT_THRESHOLD,
                    lanes: 1,
                }),
                ("ioat-model", None, _) => modes.push(CopyMode::Model {
                    kind: ModelKind::Ioat,
                    threshold: rvhost::net::DEFAULT_THRESHOLD,
                }),
                ("dsa-model", None, _) => modes.push(CopyMode::Model {
                    kind: ModelKind::Dsa,
                    threshold: rvhost::net::DEFAULT_THRESHOLD,
                }),
                (
                    "threshold",
                    Some(v),
                    Some(
                        CopyMode::Soft { threshold, .. }
                        | CopyMode::Model { threshold, .. }
                        | CopyMode::Device { threshold, .. },
                    ),
                ) => {
                    *threshold = v
                        .parse()
                        .map_err(|_| format!("threshold={v}: not a byte count"))?;
                }
                ("engines", Some(v), Some(CopyMode::Soft { lanes, .. })) => {
                    *lanes = match v.parse() {
                        Ok(n) if (1..=rvhost_dma::soft::MAX_LANES).contains(&n) => n,
                        _ => {
                            return Err(format!(
                                "engines={v}: not in 1..={}",
                                rvhost_dma::soft::MAX_LANES
                            ));
                        }
                    };
                }
                ("threshold", Some(_), _) => {
                    return Err(format!(
                        "{tok}: applies to a `soft`, a model or a device before it"
                    ));
                }
                ("engines", Some(_), _) => {
                    return Err(format!("{tok}: applies to a `soft` before it"));
                }
                _ if tok.starts_with("ioat:") || tok.starts_with("dsa:") => {
                    modes.push(CopyMode::Device {
                        dev: crate::dma::device_mode(tok, &sysfs(), &dev_vfio())?,
                        threshold: rvhost::net::DEFAULT_THRESHOLD,
                    });
                }
                _ => {
                    return Err(format!(
                        "{tok}: expected cpu, soft, ioat-model, dsa-model, ioat:BDF, dsa:BDF, \
                         threshold=N or engines=K"
                    ));
                }
            }
        }
        if modes.is_empty() {
            return Err("no copy mode given".into());
        }
        Ok(modes)
    }
}

/// The `--copy` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyModes(pub Vec<CopyMode>);

impl CopyModes {
    fn parse(s: &str) -> Result<CopyModes, String> {
        CopyMode::parse_list(s).map(CopyModes)
    }
}

/// Arguments of `rvhost bench`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BenchArgs {
    /// Directions to run, comma-separated.
    #[arg(
        long = "dir",
        visible_alias = "direction",
        value_enum,
        value_delimiter = ',',
        default_value = "g2h,h2g,loopback"
    )]
    pub dirs: Vec<Direction>,
    /// Ethernet frame sizes in bytes (no FCS), comma-separated; 42 to 65535.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,128,256,512,1024,1518"
    )]
    pub sizes: Vec<usize>,
    /// Mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF); `on,off` runs both.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "on")]
    pub mrg: Vec<Toggle>,
    /// Virtqueue layouts, comma-separated: `split`, `packed` (each with every copy mode).
    #[arg(
        long = "ring",
        value_enum,
        value_delimiter = ',',
        default_value = "split"
    )]
    pub rings: Vec<RingLayout>,
    /// Seconds measured per row, after the warm-up.
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// Seconds of traffic before the measured window.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Packets per burst, on both sides.
    #[arg(long, default_value_t = 32)]
    pub burst: usize,
    /// Descriptors per virtqueue (a power of two).
    #[arg(long, default_value_t = 1024)]
    pub queue_size: u16,
    /// CPU the backend worker is pinned to.
    #[arg(long, default_value_t = 0)]
    pub backend_core: usize,
    /// CPU the frontend (guest driver) worker is pinned to.
    #[arg(long, default_value_t = 1)]
    pub frontend_core: usize,
    /// Put the packet pool and the frontend's memory on 4 KiB pages even when hugepages are
    /// free (without hugepages both fall back to 4 KiB pages by themselves, with a note).
    #[arg(long)]
    pub small_pages: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also draw Mpps and the backend's busy cycles per packet against the frame size, one
    /// line per direction, mrg and copy mode, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Copy modes, each run per row: `cpu` (the backend core copies), `soft[,threshold=N]
    /// [,engines=K]` (async path, software DMA engine polled on the frontend's core), and
    /// `ioat-model[,threshold=N]`, `dsa-model[,threshold=N]` (async path, the IOAT or DSA
    /// driver over a software model of the device, stepped on the frontend's core: a model's
    /// throughput, not the hardware's), e.g. `cpu,soft,ioat-model,dsa-model`; and
    /// `ioat:BDF+BDF[,threshold=N]`, `dsa:BDF+BDF[,threshold=N]` (async path, the driver over
    /// two functions bound to vfio-pci, host-to-guest then guest-to-host; not run on
    /// hardware yet).
    #[arg(long, default_value = "cpu", value_parser = CopyModes::parse)]
    pub copy: CopyModes,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            dirs: vec![Direction::G2h, Direction::H2g, Direction::Loopback],
            sizes: vec![64, 128, 256, 512, 1024, 1518],
            mrg: vec![Toggle::On],
            rings: vec![RingLayout::Split],
            duration: 2.0,
            warmup: 0.5,
            burst: 32,
            queue_size: 1024,
            backend_core: 0,
            frontend_core: 1,
            small_pages: false,
            json: None,
            plot: None,
            copy: CopyModes(vec![CopyMode::Cpu]),
        }
    }
}

/// Where sysfs is for the device modes' checks and opening: `/sys`, or `RVHOST_SYSFS` (for
/// tests, which point it at a fake tree; `rvhost dma list --sysfs` is the same for the list).
pub fn sysfs() -> PathBuf {
    std::env::var_os("RVHOST_SYSFS").map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// Where the VFIO nodes are for the device modes' checks: `/dev/vfio`, or `RVHOST_DEV_VFIO`
/// (tests). Only `/dev/vfio` can be opened ([`VfioPci::open_at`]).
///
/// [`VfioPci::open_at`]: rvhost_dma::hw::vfio::VfioPci::open_at
pub fn dev_vfio() -> PathBuf {
    std::env::var_os("RVHOST_DEV_VFIO").map_or_else(|| PathBuf::from("/dev/vfio"), PathBuf::from)
}

/// Smallest frame: Ethernet, IPv4 and UDP headers.
pub const MIN_SIZE: usize = 42;
/// Largest frame.
pub const MAX_SIZE: usize = 65535;
/// Longest window or warm-up accepted, in seconds (every run stops by itself).
const MAX_SECS: f64 = 3600.0;

/// Why a bench failed.
#[derive(Debug, Error)]
pub enum BenchError {
    /// An argument is out of range.
    #[error("bad argument --{arg}: {reason}")]
    Args {
        /// The option.
        arg: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A core cannot be used.
    #[error("lcore")]
    Lcore(#[from] LcoreError),
    /// The frontend thread could not be pinned.
    #[error("could not pin the frontend worker to core {0}")]
    PinFrontend(usize),
    /// The driver failed.
    #[error("vhost-user driver")]
    Driver(#[from] DriverError),
    /// The frontend failed to connect or negotiate.
    #[error("frontend")]
    Frontend(#[from] FrontendError),
    /// The packet pool could not be made.
    #[error("packet pool")]
    Pool(#[from] PktPoolError),
    /// The backend never saw the device become ready.
    #[error("the device was not ready {0:?} after the frontend started")]
    NoDevice(Duration),
    /// The frontend negotiated something else than asked.
    #[error("negotiated features {got:#x} lack {missing:#x}")]
    Features {
        /// What was negotiated.
        got: u64,
        /// What is missing.
        missing: u64,
    },
    /// A worker thread panicked.
    #[error("the {0} worker panicked")]
    WorkerPanicked(&'static str),
    /// A file or directory could not be written.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The DMA engine (software, or a device model) could not be set up.
    #[error("DMA engine")]
    Dma(#[source] rvhost_dma::DmaError),
    /// A copy device opened through VFIO could not be set up (the message names the
    /// function, what failed and what to do).
    #[error("{0}")]
    Device(String),
    /// The async channel could not be registered.
    #[error("async channel")]
    Async(#[source] rvhost::net::AsyncError),
    /// The plot could not be drawn.
    #[error("{0}")]
    Plot(String),
    /// Some rows failed their correctness checks (each was reported with its reason).
    #[error("{failed} of {total} rows failed their checks")]
    RowsFailed {
        /// Rows that failed.
        failed: usize,
        /// Rows run.
        total: usize,
    },
}

impl BenchArgs {
    /// Checks ranges before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |arg, reason: String| Err(BenchError::Args { arg, reason });
        if self.dirs.is_empty() {
            return bad("dir", "no direction given".into());
        }
        if self.sizes.is_empty() {
            return bad("sizes", "no size given".into());
        }
        if self.rings.is_empty() {
            return bad("ring", "give split, packed or split,packed".into());
        }
        if self.mrg.is_empty() {
            return bad("mrg", "give on, off or on,off".into());
        }
        for c in &self.copy.0 {
            if let CopyMode::Device { dev, .. } = c {
                dev.check_count(2, "the row's host-to-guest, then guest-to-host queue")
                    .or_else(|reason| bad("copy", reason))?;
            }
        }
        if self.copy.0.is_empty() {
            return bad("copy", "give cpu, soft, ioat-model or dsa-model".into());
        }
        if let Some(s) = self
            .sizes
            .iter()
            .find(|s| !(MIN_SIZE..=MAX_SIZE).contains(*s))
        {
            return bad("sizes", format!("{s} is not in {MIN_SIZE}..={MAX_SIZE}"));
        }
        if !(self.duration > 0.0 && self.duration <= MAX_SECS) {
            return bad(
                "duration",
                format!("{} is not in (0, {MAX_SECS}]", self.duration),
            );
        }
        if !(self.warmup >= 0.0 && self.warmup <= MAX_SECS) {
            return bad(
                "warmup",
                format!("{} is not in [0, {MAX_SECS}]", self.warmup),
            );
        }
        let q = self.queue_size;
        if !q.is_power_of_two() || !(64..=32768).contains(&q) {
            return bad(
                "queue-size",
                format!("{q} is not a power of two in 64..=32768"),
            );
        }
        if self.burst == 0 || self.burst > usize::from(q) / 2 {
            return bad(
                "burst",
                format!("{} is not in 1..={} (half the queue)", self.burst, q / 2),
            );
        }
        Ok(())
    }
}

/// Mbufs in the backend's pool: a few bursts in flight at most (every burst is freed before
/// the next), plus the worker's cache.
const POOL_MBUFS: usize = 4096;
/// The backend worker's mempool cache.
const POOL_CACHE: usize = 256;

/// Runs the bench: every ring × mrg × direction × size × copy row, printing a table (and writing JSON with
/// `--json`). Rows whose correctness checks fail are printed with their reason and make the
/// result [`BenchError::RowsFailed`].
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    args.validate()?;
    check_cores(args)?;
    let clock = clock::Clock::calibrate();
    let largest = args.sizes.iter().copied().max().unwrap_or(MIN_SIZE);
    // One segment per packet: the data room grows for jumbo frames.
    let data_room = DEFAULT_DATA_ROOM.max(PKTMBUF_HEADROOM + largest);
    let pages = if args.small_pages {
        RegionConfig::default().with_page_size(PageSize::Small)
    } else {
        RegionConfig::default()
    };
    let pool = PktPool::new("rvhost-bench", POOL_MBUFS, data_room, POOL_CACHE, pages)?;
    let dir = bed::TempDir::new()?;
    let mut out = report::Report::new(args, clock);
    let mut notes = PageNotes::new(args.small_pages, pool.memory_kind().0);
    let mut rows = Vec::new();
    for &ring in &args.rings {
        for &mrg in &args.mrg {
            for &d in &args.dirs {
                for &size in &args.sizes {
                    for &copy in &args.copy.0 {
                        let cfg = row::RowConfig {
                            dir: d,
                            size,
                            mrg: mrg.is_on(),
                            ring,
                            copy,
                            args,
                            sock: dir.path().join(format!("row{}.sock", rows.len())),
                        };
                        let r = row::run_row(&cfg, &pool, &clock)?;
                        if let Some(note) = notes.after_row(r.frontend_pages) {
                            out.note(&note);
                        }
                        out.row(&r);
                        rows.push(r);
                    }
                }
            }
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, out.json(&rows)).map_err(|source| BenchError::Io {
            what: "writing JSON to",
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &rows, clock.unit).map_err(BenchError::Plot)?;
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        return Err(BenchError::RowsFailed {
            failed,
            total: rows.len(),
        });
    }
    Ok(())
}

/// Both cores must be ones this process may run on (checked before anything starts).
fn check_cores(args: &BenchArgs) -> Result<(), BenchError> {
    let allowed = rvhost::lcore::allowed_cores();
    for (arg, core) in [
        ("backend-core", args.backend_core),
        ("frontend-core", args.frontend_core),
    ] {
        if !allowed.contains(&core) {
            return Err(BenchError::Args {
                arg,
                reason: format!("core {core} is not available (allowed: {allowed:?})"),
            });
        }
    }
    Ok(())
}

/// The one-line note about 4 KiB pages: printed before the first row that has any (the
/// packet pool is known before the first row, the frontend's memory with each row).
struct PageNotes {
    forced: bool,
    pool_small: bool,
    frontend_noted: bool,
    printed: bool,
}

impl PageNotes {
    fn new(forced: bool, pool_pages: PageSize) -> PageNotes {
        PageNotes {
            forced,
            pool_small: pool_pages == PageSize::Small,
            frontend_noted: false,
            printed: false,
        }
    }

    fn after_row(&mut self, frontend_pages: PageSize) -> Option<String> {
        let fe_small = frontend_pages == PageSize::Small && !self.frontend_noted;
        self.frontend_noted |= fe_small;
        let pool_small = self.pool_small && !self.printed;
        self.printed = true;
        let what = match (pool_small, fe_small) {
            (false, false) => return None,
            (true, true) => "the backend packet pool and the frontend (guest) memory are",
            (true, false) => "the backend packet pool is",
            (false, true) => "the frontend (guest) memory is",
        };
        Some(if self.forced {
            format!("note: {what} on 4 KiB pages (--small-pages)")
        } else {
            format!(
                "note: {what} on 4 KiB pages: not enough free 2 MiB hugepages \
                 (echo 1024 > /proc/sys/vm/nr_hugepages for numbers comparable to DPDK's)"
            )
        })
    }
}
