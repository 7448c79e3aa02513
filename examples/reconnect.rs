//! A client-mode backend that survives its frontend going away and coming back.
//!
//! With [`Flags::CLIENT`] the frontend (QEMU with `server=on`, testpmd's virtio-user with
//! `server=1`) owns the socket and rvhost connects to it. The driver retries every second until
//! the frontend listens, and again whenever the connection goes away (unless
//! [`Flags::NO_RECONNECT`] is set), so this program needs no reconnect logic of its own: it
//! wraps [`PortOps`] in callbacks that announce each device, and keeps a MAC-swap echo worker
//! (as `examples/echo.rs`) running across connections. The worker never sees a dangling device:
//! `destroy_device` (and so "device down") returns only after the worker let go of it.
//!
//! ```text
//! reconnect [--socket PATH] [--core N] [--queues N]
//! ```
//!
//! It prints `RECONNECT ready`, then `RECONNECT device up (...)` / `RECONNECT device down (...)`
//! as frontends come and go, and on SIGINT/SIGTERM
//! `RECONNECT rx=<dequeued> tx=<enqueued> drops=<not enqueued> ups=<devices seen>`.
//!
//! # Try it with DPDK testpmd (virtio-user as the server)
//!
//! ```sh
//! cargo run --release --example reconnect -- --socket /tmp/rvhost-reconnect.sock --core 0
//! # in another shell (order does not matter: rvhost retries every second)
//! dpdk-testpmd --lcores 0@1,1@1 --no-pci --in-memory --single-file-segments -m 256 \
//!     --vdev=net_virtio_user0,path=/tmp/rvhost-reconnect.sock,queues=1,server=1 -- -i
//! testpmd> start tx_first
//! testpmd> show port stats all
//! testpmd> quit          # "RECONNECT device down"
//! # start the same testpmd again: "RECONNECT device up" within a second or so
//! ```
//!
//! # Try it with QEMU (QEMU listens)
//!
//! ```sh
//! qemu-system-x86_64 ... -chardev socket,id=chr0,path=/tmp/rvhost-reconnect.sock,server=on,wait=off \
//!     -netdev vhost-user,id=net0,chardev=chr0 -device virtio-net-pci,netdev=net0
//! cargo run --release --example reconnect -- --socket /tmp/rvhost-reconnect.sock
//! ```
//!
//! Stop and restart this program while the guest runs: QEMU keeps the guest's NIC and the new
//! backend takes over its rings (`RECONNECT device up`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use rvhost::dataplane::{DeviceTable, PortOps};
use rvhost::driver::{Device, DeviceOps, Driver, Flags, Refused};
use rvhost::lcore::{Lcore, Lcores};
use rvhost::mbuf::{Mbuf, PktPool};
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};

const USAGE: &str = "\
usage: reconnect [--socket PATH] [--core N] [--queues N]

A vhost-user client (the frontend listens on PATH) that reconnects whenever the frontend
goes away, echoing packets back with their MAC addresses swapped.

  --socket PATH  the frontend's vhost-user socket (default /tmp/rvhost-reconnect.sock)
  --core N       CPU to pin the worker to (default 0)
  --queues N     queue pairs to offer and poll (default 1)
  --help         this text

Prints RECONNECT device up / RECONNECT device down as frontends come and go; stops on
SIGINT/SIGTERM and prints RECONNECT rx=.. tx=.. drops=.. ups=..";

/// Packets per burst.
const BURST: usize = 32;
/// mbufs in the pool (one burst in flight per turn, see `examples/echo.rs`).
const POOL_MBUFS: usize = 8192;
/// The only port of this application.
const PORT: usize = 0;

struct Args {
    socket: PathBuf,
    core: usize,
    queues: u16,
}

/// `Ok(None)`: `--help` was asked for.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        socket: PathBuf::from("/tmp/rvhost-reconnect.sock"),
        core: 0,
        queues: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => args.socket = PathBuf::from(value("--socket")?),
            "--core" => {
                let v = value("--core")?;
                args.core = v
                    .parse()
                    .map_err(|_| format!("--core: not a CPU number: {v}"))?;
            }
            "--queues" => {
                let v = value("--queues")?;
                args.queues = match v.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("--queues: not a queue pair count: {v}")),
                };
            }
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(args))
}

/// Prints a line and flushes it: a test or a monitoring script waits for these lines.
fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The callbacks: [`PortOps`] does the work (attaching the device to the table the worker
/// reads, detaching it once the worker let go); this wrapper announces what happened.
struct Announce {
    port: PortOps,
    ups: AtomicU64,
}

impl DeviceOps for Announce {
    fn new_device(&self, dev: &Device) -> Result<(), Refused> {
        // A refusal (e.g. a second frontend on the port) leaves the device not running: no
        // announcement then.
        self.port.new_device(dev)?;
        self.ups.fetch_add(1, Ordering::Relaxed);
        say(format_args!(
            "RECONNECT device up ({} on {}, features {:#x})",
            dev.id(),
            dev.path().display(),
            dev.features()
        ));
        Ok(())
    }

    fn destroy_device(&self, dev: &Device) {
        // Returns once the worker no longer uses the device.
        self.port.destroy_device(dev);
        say(format_args!("RECONNECT device down ({})", dev.id()));
    }

    // The rest go to PortOps unchanged, whatever it does with them.
    fn vring_state_changed(&self, dev: &Device, queue: u16, enabled: bool) {
        self.port.vring_state_changed(dev, queue, enabled);
    }

    fn features_changed(&self, dev: &Device, features: u64) {
        self.port.features_changed(dev, features);
    }

    fn new_connection(&self, dev: &Device) {
        self.port.new_connection(dev);
    }

    fn destroy_connection(&self, dev: &Device) {
        self.port.destroy_connection(dev);
    }
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

/// What the worker did, over every connection, returned when it stops.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    rx: u64,
    tx: u64,
    drops: u64,
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
            eprintln!("reconnect: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reconnect: {e}");
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

    let pool = PktPool::with_defaults("reconnect", POOL_MBUFS)
        .map_err(|e| format!("creating the mbuf pool: {}", report(&e)))?;
    let table = DeviceTable::new(1, 1);
    let queues = args.queues;
    let workers = Lcores::launch(&[args.core], {
        let table = Arc::clone(&table);
        move |lcore| echo_worker(&lcore, &table, &pool, queues)
    })
    .map_err(|e| format!("starting the worker on CPU {}: {}", args.core, report(&e)))?;
    let stop = workers.stop_flag();
    std::thread::spawn(move || {
        let _ = stop_signals.wait();
        stop.store(true, Ordering::SeqCst);
    });

    let ops = Arc::new(Announce {
        port: PortOps {
            table: Arc::clone(&table),
            port: PORT,
        },
        ups: AtomicU64::new(0),
    });
    let driver = start_driver(args, &ops);
    if driver.is_ok() {
        say(format_args!(
            "RECONNECT ready (connecting to {}, retrying every second)",
            args.socket.display()
        ));
    } else {
        workers.stop();
    }

    let done = workers.join();
    // The worker is gone; unregistering closes a live connection ("device down") and stops
    // the retries.
    let driver = driver?;
    if let Err(e) = driver.unregister(&args.socket) {
        eprintln!("reconnect: unregistering {}: {e}", args.socket.display());
    }
    drop(driver);

    let counters = done.map_err(|e| format!("worker: {}", report(&e)))?;
    let total = counters.iter().fold(Counters::default(), |a, c| Counters {
        rx: a.rx + c.rx,
        tx: a.tx + c.tx,
        drops: a.drops + c.drops,
    });
    say(format_args!(
        "RECONNECT rx={} tx={} drops={} ups={}",
        total.rx,
        total.tx,
        total.drops,
        ops.ups.load(Ordering::Relaxed)
    ));
    Ok(())
}

fn start_driver(args: &Args, ops: &Arc<Announce>) -> Result<Driver, String> {
    let path = &args.socket;
    let err = |what: &str, e: rvhost::driver::DriverError| {
        format!("{what} {}: {}", path.display(), report(&e))
    };
    let driver = Driver::new().map_err(|e| format!("starting the driver: {}", report(&e)))?;
    // CLIENT without NO_RECONNECT: connect, and connect again whenever the connection fails
    // or goes away, every second.
    driver
        .register(path, Flags::CLIENT)
        .map_err(|e| err("registering", e))?;
    driver
        .set_max_queue_pairs(path, args.queues)
        .map_err(|e| err("setting the queue pairs of", e))?;
    driver
        .set_callbacks(path, Arc::clone(ops) as Arc<dyn DeviceOps>)
        .map_err(|e| err("setting the callbacks of", e))?;
    driver.start(path).map_err(|e| err("starting", e))?;
    Ok(driver)
}

/// The echo worker of `examples/echo.rs`. Its counters run on across connections: a device
/// that goes away is dropped from the reader's copy in `refresh`, a new one appears there.
fn echo_worker(lcore: &Lcore, table: &Arc<DeviceTable>, pool: &PktPool, queues: u16) -> Counters {
    let mut reader = table.reader(lcore.id().index());
    let mut cache = pool.cache();
    let mut pkts: Vec<Mbuf> = Vec::with_capacity(BURST);
    let mut c = Counters::default();
    while !lcore.should_stop() {
        reader.refresh(|_port, _dev| {});
        let Some(dev) = reader.dev(PORT) else {
            // Between connections: nothing to poll.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        for q in 0..queues {
            let qp = QueuePair(q);
            let n = dequeue_burst(dev, qp.tx(), &mut cache, &mut pkts, BURST);
            if n == 0 {
                continue;
            }
            for m in &mut pkts {
                if let Ok(frame) = m.data_mut() {
                    macswap(frame);
                }
            }
            let sent = enqueue_burst(dev, qp.rx(), &pkts);
            c.rx += n as u64;
            c.tx += sent as u64;
            c.drops += (n - sent) as u64;
            cache.free_bulk(pkts.drain(..));
        }
    }
    c
}

/// Swaps the frame's destination and source MAC addresses (nothing for a runt).
fn macswap(frame: &mut [u8]) {
    if frame.len() >= 14 {
        let (dst, src) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut src[..6]);
    }
}
