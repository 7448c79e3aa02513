//! A learning L2 switch between vhost-user ports (DPDK's `examples/vhost` in miniature).
//!
//! Every `--socket` is one port. One worker pinned to a CPU polls every port's first queue
//! pair: it learns which port each source MAC address lives behind, sends a frame to the port
//! that learnt its destination, and floods broadcast, multicast and unknown destinations to
//! every other running port. A frame whose destination lives behind the port it came from is
//! filtered (not sent back). Flooding hands each port its own shallow clone of the mbuf
//! ([`Mbuf::clone_shallow`]: a new header on the same data), since a burst is a slice of owned
//! mbufs.
//!
//! Beyond `examples/echo.rs` it shows several ports in one [`DeviceTable`], the `retire`
//! callback of [`Reader::refresh`](rvhost::dataplane::Reader::refresh) (the switch forgets the
//! addresses of a port whose device went away), and per-port batching of enqueues.
//!
//! ```text
//! switch --socket PATH --socket PATH [--socket PATH ...] [--client] [--core N]
//! ```
//!
//! It prints `SWITCH ready` once every socket listens (or connects), and on SIGINT/SIGTERM one
//! line per port: `SWITCH port=<i> rx=<frames received> tx=<frames sent> drops=<frames for
//! this port it did not take> filtered=<frames received here and sent nowhere>`.
//!
//! # Try it with DPDK testpmd (two virtio-user ports)
//!
//! ```sh
//! cargo run --release --example switch -- --socket /tmp/sw0.sock --socket /tmp/sw1.sock --core 0
//! # testpmd with two virtio-user ports (lcores on CPU 1, see examples/echo.rs). Its `mac`
//! # mode sends each port's frames from the port's own address to its peer's:
//! dpdk-testpmd --lcores 0@1,1@1 --no-pci --in-memory --single-file-segments -m 256 \
//!     --vdev=net_virtio_user0,path=/tmp/sw0.sock,mac=02:00:00:00:0e:00 \
//!     --vdev=net_virtio_user1,path=/tmp/sw1.sock,mac=02:00:00:00:0e:01 -- -i \
//!     --forward-mode=mac --eth-peer=0,02:00:00:00:0e:01 --eth-peer=1,02:00:00:00:0e:00
//! testpmd> start tx_first
//! testpmd> show port stats all
//! ```
//!
//! Each port's first burst is flooded (its destination is not learnt yet); every frame after
//! that goes straight to the port behind which its destination was learnt, and testpmd sends
//! what one port receives out of the other, so frames circulate 0 -> 1 -> 0 through the switch.
//!
//! # Try it with QEMU
//!
//! Start the switch with one socket per guest, then one QEMU per socket with
//! `-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
//! -chardev socket,id=chr0,path=/tmp/sw0.sock -netdev vhost-user,id=net0,chardev=chr0
//! -device virtio-net-pci,netdev=net0`; give the guests addresses in one subnet and they ping
//! each other through the switch.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use rvhost::dataplane::{DeviceTable, PortOps, Reader};
use rvhost::driver::{Driver, Flags};
use rvhost::lcore::{Lcore, Lcores};
use rvhost::mbuf::{Mbuf, PktCache, PktPool};
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};

const USAGE: &str = "\
usage: switch --socket PATH --socket PATH [--socket PATH ...] [--client] [--core N]

A learning L2 switch between vhost-user ports, one port per --socket.

  --socket PATH  a vhost-user socket: one port (at least two)
  --client       connect to every PATH (the frontends listen) instead of listening
  --core N       CPU to pin the worker to (default 0)
  --help         this text

Stops on SIGINT/SIGTERM and prints one line per port:
SWITCH port=<i> rx=<received> tx=<sent> drops=<not taken by the port> filtered=<sent nowhere>";

/// Frames per burst.
const BURST: usize = 32;
/// mbufs in the pool: a burst in flight, plus a clone per extra port for each flooded frame.
const POOL_MBUFS: usize = 8192;
/// Most addresses the switch remembers. A guest can send any source address it likes; past
/// this, new addresses are not learnt (their frames are still delivered, by flooding).
const MAX_ADDRESSES: usize = 4096;
/// The one queue pair of each port the switch polls.
const QP: QueuePair = QueuePair(0);

struct Args {
    sockets: Vec<PathBuf>,
    client: bool,
    core: usize,
}

/// `Ok(None)`: `--help` was asked for.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        sockets: Vec::new(),
        client: false,
        core: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => args.sockets.push(PathBuf::from(value("--socket")?)),
            "--client" => args.client = true,
            "--core" => {
                let v = value("--core")?;
                args.core = v
                    .parse()
                    .map_err(|_| format!("--core: not a CPU number: {v}"))?;
            }
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.sockets.len() < 2 {
        return Err("a switch needs at least two --socket".into());
    }
    Ok(Some(args))
}

/// An error with its causes, `error: cause: cause`: the library's errors keep the OS error
/// (e.g. why a bind failed) in `source()`, not in their message.
fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A port's counters.
#[derive(Debug, Default, Clone, Copy)]
struct PortStats {
    /// Frames dequeued from the port's guest.
    rx: u64,
    /// Frames (or flooded copies) the port's guest took.
    tx: u64,
    /// Frames (or flooded copies) meant for this port that it did not take: its receive
    /// queue was full, its device went away, or there was no mbuf to clone into.
    drops: u64,
    /// Frames received on this port that went nowhere: addressed to a station behind this same
    /// port, too short for an Ethernet header, or flooded with no other port running.
    filtered: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("switch: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // SIGINT/SIGTERM are blocked before any thread starts (threads inherit the mask) and taken
    // by one thread that waits for them: see examples/echo.rs.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGTERM);
    stop_signals
        .thread_block()
        .map_err(|e| format!("blocking SIGINT/SIGTERM: {e}"))?;

    let pool = PktPool::with_defaults("switch", POOL_MBUFS)
        .map_err(|e| format!("creating the mbuf pool: {}", report(&e)))?;
    let ports = args.sockets.len();
    // Port i is the i-th socket; one worker reads them all.
    let table = DeviceTable::new(ports, 1);
    let workers = Lcores::launch(&[args.core], {
        let table = Arc::clone(&table);
        move |lcore| switch_worker(&lcore, &table, &pool, ports)
    })
    .map_err(|e| format!("starting the worker on CPU {}: {}", args.core, report(&e)))?;
    let stop = workers.stop_flag();
    std::thread::spawn(move || {
        let _ = stop_signals.wait();
        stop.store(true, Ordering::SeqCst);
    });

    let driver = start_driver(args, &table);
    if driver.is_ok() {
        println!("SWITCH ready ({ports} ports)");
        let _ = std::io::stdout().flush();
    } else {
        workers.stop();
    }

    let done = workers.join();
    let driver = driver?;
    for path in &args.sockets {
        if let Err(e) = driver.unregister(path) {
            eprintln!("switch: unregistering {}: {e}", path.display());
        }
    }
    drop(driver);

    // One worker: its result is the only one.
    let stats = done
        .map_err(|e| format!("worker: {}", report(&e)))?
        .pop()
        .unwrap_or_default();
    for (i, s) in stats.iter().enumerate() {
        println!(
            "SWITCH port={i} rx={} tx={} drops={} filtered={}",
            s.rx, s.tx, s.drops, s.filtered
        );
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Registers every socket with [`PortOps`] for its port number and starts them all.
fn start_driver(args: &Args, table: &Arc<DeviceTable>) -> Result<Driver, String> {
    let driver = Driver::new().map_err(|e| format!("starting the driver: {}", report(&e)))?;
    let flags = if args.client {
        Flags::CLIENT
    } else {
        Flags::empty()
    };
    for (port, path) in args.sockets.iter().enumerate() {
        let err = |what: &str, e: rvhost::driver::DriverError| {
            format!("{what} {}: {}", path.display(), report(&e))
        };
        driver
            .register(path, flags)
            .map_err(|e| err("registering", e))?;
        let ops = PortOps {
            table: Arc::clone(table),
            port,
        };
        driver
            .set_callbacks(path, Arc::new(ops))
            .map_err(|e| err("setting the callbacks of", e))?;
        driver.start(path).map_err(|e| err("starting", e))?;
    }
    Ok(driver)
}

/// Where each known MAC address lives. Only the worker touches it: no lock.
struct Fdb {
    port_of: HashMap<[u8; 6], usize>,
}

impl Fdb {
    fn learn(&mut self, mac: [u8; 6], port: usize) {
        if is_group(&mac) {
            return; // never a station's own address
        }
        if self.port_of.len() < MAX_ADDRESSES || self.port_of.contains_key(&mac) {
            // A station that moved to another port is found there from now on.
            self.port_of.insert(mac, port);
        }
    }

    fn lookup(&self, mac: &[u8; 6]) -> Option<usize> {
        self.port_of.get(mac).copied()
    }

    /// The port's device went away: whatever lived behind it may come back anywhere.
    fn forget_port(&mut self, port: usize) {
        self.port_of.retain(|_, p| *p != port);
    }
}

/// Broadcast or multicast: the I/G bit of the first octet.
fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// The worker's state besides the table reader.
struct Switch {
    fdb: Fdb,
    cache: PktCache,
    stats: Vec<PortStats>,
    /// Frames on their way to each port, sent at the end of each ingress burst.
    out: Vec<Vec<Mbuf>>,
}

fn switch_worker(
    lcore: &Lcore,
    table: &Arc<DeviceTable>,
    pool: &PktPool,
    ports: usize,
) -> Vec<PortStats> {
    let mut reader = table.reader(lcore.id().index());
    let mut sw = Switch {
        fdb: Fdb {
            port_of: HashMap::new(),
        },
        cache: pool.cache(),
        stats: vec![PortStats::default(); ports],
        out: (0..ports).map(|_| Vec::with_capacity(BURST)).collect(),
    };
    let mut burst: Vec<Mbuf> = Vec::with_capacity(BURST);
    while !lcore.should_stop() {
        // The callback runs for each port whose device is about to leave this worker's copy
        // of the table.
        reader.refresh(|port, _dev| sw.fdb.forget_port(port));
        let mut any = false;
        for ingress in 0..ports {
            let Some(dev) = reader.dev(ingress) else {
                continue;
            };
            any = true;
            let n = dequeue_burst(dev, QP.tx(), &mut sw.cache, &mut burst, BURST);
            if n == 0 {
                continue;
            }
            sw.stats[ingress].rx += n as u64;
            for frame in burst.drain(..) {
                sw.forward(frame, ingress, &reader);
            }
            sw.flush(&reader);
        }
        if !any {
            // No port has a frontend yet.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sw.stats
}

impl Switch {
    /// Decides where `frame` (received on `ingress`) goes and queues it there.
    fn forward(&mut self, frame: Mbuf, ingress: usize, reader: &Reader) {
        // Destination and source address. read_at copies across segments, so a chained mbuf
        // whose first segment is short still works.
        let mut eth = [0u8; 12];
        if frame.read_at(0, &mut eth).is_err() {
            self.stats[ingress].filtered += 1;
            self.cache.free(frame);
            return;
        }
        let dst: [u8; 6] = eth[..6].try_into().expect("6 bytes");
        let src: [u8; 6] = eth[6..].try_into().expect("6 bytes");
        self.fdb.learn(src, ingress);

        let known = (!is_group(&dst)).then(|| self.fdb.lookup(&dst)).flatten();
        match known {
            Some(port) if port == ingress => {
                // Both stations are behind the same port: the frontend already delivered it.
                self.stats[ingress].filtered += 1;
                self.cache.free(frame);
            }
            Some(port) => self.out[port].push(frame),
            None => self.flood(frame, ingress, reader),
        }
    }

    /// Sends `frame` to every running port but `ingress`: a clone to each but the last, which
    /// gets the frame itself.
    fn flood(&mut self, frame: Mbuf, ingress: usize, reader: &Reader) {
        let running = |port: usize| port != ingress && reader.dev(port).is_some();
        let Some(last) = (0..self.out.len()).rev().find(|&port| running(port)) else {
            self.stats[ingress].filtered += 1;
            self.cache.free(frame);
            return;
        };
        for port in (0..last).filter(|&port| running(port)) {
            // A shallow clone shares the data (read-only while shared; nobody writes it here)
            // and takes only a header from the cache. enqueue_burst reads the data of each
            // clone and copies it into that port's guest.
            match frame.clone_shallow(&mut self.cache) {
                Ok(clone) => self.out[port].push(clone),
                Err(_) => self.stats[port].drops += 1,
            }
        }
        self.out[last].push(frame);
    }

    /// Enqueues what is waiting for each port; frees everything (enqueue copied what it took).
    fn flush(&mut self, reader: &Reader) {
        for (port, pending) in self.out.iter_mut().enumerate() {
            if pending.is_empty() {
                continue;
            }
            let sent = match reader.dev(port) {
                Some(dev) => enqueue_burst(dev, QP.rx(), pending),
                None => 0, // learnt port without a device in this turn's copy
            };
            let stats = &mut self.stats[port];
            stats.tx += sent as u64;
            stats.drops += (pending.len() - sent) as u64;
            self.cache.free_bulk(pending.drain(..));
        }
    }
}
