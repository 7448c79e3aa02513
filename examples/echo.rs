//! MAC-swap echo: the smallest complete rvhost backend.
//!
//! One vhost-user port, one worker thread pinned to a CPU. The worker takes every packet the
//! guest transmits, swaps its Ethernet source and destination addresses and sends it back to
//! the guest. It shows the pieces every rvhost application has:
//!
//! * a [`Driver`] serving a socket (server, or `--client` to connect to a frontend that
//!   listens), with [`PortOps`] as its callbacks;
//! * a [`DeviceTable`] that hands the running device to the worker and takes it back, so that
//!   `destroy_device` returns only once the worker has let go of it;
//! * a pinned worker ([`Lcores`]) polling with [`dequeue_burst`] / [`enqueue_burst`] on
//!   mbufs from a [`PktPool`] through its own [`PktCache`](rvhost::mbuf::PktCache);
//! * a clean stop on SIGINT/SIGTERM with final counters.
//!
//! ```text
//! echo [--socket PATH] [--client] [--core N] [--queues N]
//! ```
//!
//! It prints `ECHO ready` once the socket listens (or connects), and on SIGINT/SIGTERM one line
//! `ECHO rx=<packets dequeued> tx=<packets enqueued> drops=<packets not enqueued>`.
//!
//! # Try it with DPDK testpmd (virtio-user)
//!
//! ```sh
//! cargo run --release --example echo -- --socket /tmp/rvhost-echo.sock --core 0
//! # in another shell: testpmd is the guest. Both its lcores on CPU 1: the main one (which
//! # reads commands) and the forwarding one (`-l 1` alone leaves none to forward).
//! dpdk-testpmd --lcores 0@1,1@1 --no-pci --in-memory --single-file-segments -m 256 \
//!     --vdev=net_virtio_user0,path=/tmp/rvhost-echo.sock,queues=1 -- -i
//! testpmd> start tx_first
//! testpmd> show port stats all
//! testpmd> stop
//! testpmd> quit
//! ```
//!
//! testpmd's default `io` mode sends back what it receives, so the first burst circulates
//! between the two until testpmd stops. With `--queues 2` on the echo side, use `queues=2` in the
//! vdev and `--rxq=2 --txq=2` after `--`. For the frontend as the server (`--client` here):
//! add `server=1` to the vdev and start testpmd first.
//!
//! # Try it with QEMU
//!
//! ```sh
//! cargo run --release --example echo -- --socket /tmp/rvhost-echo.sock
//! qemu-system-x86_64 -machine accel=kvm -m 1G \
//!     -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
//!     -chardev socket,id=chr0,path=/tmp/rvhost-echo.sock \
//!     -netdev vhost-user,id=net0,chardev=chr0 -device virtio-net-pci,netdev=net0 ...
//! ```
//!
//! The guest's memory must be shared (`share=on`) for any vhost-user backend. A guest sees its
//! own frames come back with the addresses swapped (e.g. `arping` to any address gets its
//! request back).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use rvhost::dataplane::{DeviceTable, PortOps};
use rvhost::driver::{Driver, Flags};
use rvhost::lcore::{Lcore, Lcores};
use rvhost::mbuf::{Mbuf, PktPool};
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};

const USAGE: &str = "\
usage: echo [--socket PATH] [--client] [--core N] [--queues N]

MAC-swap echo over one vhost-user port.

  --socket PATH  vhost-user socket (default /tmp/rvhost-echo.sock)
  --client       connect to PATH (the frontend listens) instead of listening on it
  --core N       CPU to pin the worker to (default 0)
  --queues N     queue pairs to offer and poll (default 1)
  --help         this text

Stops on SIGINT/SIGTERM and prints
ECHO rx=<packets dequeued> tx=<packets enqueued> drops=<packets not enqueued>";

/// Packets per burst, as DPDK's default.
const BURST: usize = 32;
/// mbufs in the pool. The worker holds at most one burst at a time (enqueue copies the packets
/// into the guest's buffers, so every mbuf goes back to the pool in the same loop turn), plus
/// what its cache keeps; this leaves plenty of room.
const POOL_MBUFS: usize = 8192;
/// The only port of this application: its index in the [`DeviceTable`].
const PORT: usize = 0;

struct Args {
    socket: PathBuf,
    client: bool,
    core: usize,
    queues: u16,
}

/// `Ok(None)`: `--help` was asked for.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        socket: PathBuf::from("/tmp/rvhost-echo.sock"),
        client: false,
        core: 0,
        queues: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => args.socket = PathBuf::from(value("--socket")?),
            "--client" => args.client = true,
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

/// What the worker did, returned when it stops.
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
            eprintln!("echo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // Block SIGINT and SIGTERM before any thread exists: threads inherit the mask, so the
    // driver's control thread and the worker never take them, and only the thread that waits
    // for them below sees them (no async-signal-safety concerns, no unsafe).
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGTERM);
    stop_signals
        .thread_block()
        .map_err(|e| format!("blocking SIGINT/SIGTERM: {e}"))?;

    // Hugepages when there are enough free, else 4 KiB pages (one warning in the log).
    let pool = PktPool::with_defaults("echo", POOL_MBUFS)
        .map_err(|e| format!("creating the mbuf pool: {}", report(&e)))?;

    // One port, read by one worker.
    let table = DeviceTable::new(1, 1);

    // The worker starts first, so a core we may not use fails before we listen. It polls an
    // empty table until a frontend connects.
    let queues = args.queues;
    let workers = Lcores::launch(&[args.core], {
        let table = Arc::clone(&table);
        move |lcore| echo_worker(&lcore, &table, &pool, queues)
    })
    .map_err(|e| format!("starting the worker on CPU {}: {}", args.core, report(&e)))?;

    // SIGINT/SIGTERM raise the workers' stop flag.
    let stop = workers.stop_flag();
    std::thread::spawn(move || {
        // `wait` only fails for an invalid set; stop in either case.
        let _ = stop_signals.wait();
        stop.store(true, Ordering::SeqCst);
    });

    let driver = start_driver(args, &table);
    if driver.is_ok() {
        println!(
            "ECHO ready ({} {})",
            if args.client {
                "connecting to"
            } else {
                "listening on"
            },
            args.socket.display()
        );
        let _ = std::io::stdout().flush();
    } else {
        // Nothing to serve: let the worker go.
        workers.stop();
    }

    // Returns once the worker stopped: on a signal, or at once if it could not be pinned.
    let done = workers.join();

    // With the worker gone (its reader dropped, so the table waits for nobody), unregister:
    // this closes the connection, runs destroy_device and removes the socket file.
    let driver = driver?;
    if let Err(e) = driver.unregister(&args.socket) {
        eprintln!("echo: unregistering {}: {e}", args.socket.display());
    }
    drop(driver);

    let counters = done.map_err(|e| format!("worker: {}", report(&e)))?;
    let total = counters.iter().fold(Counters::default(), |a, c| Counters {
        rx: a.rx + c.rx,
        tx: a.tx + c.tx,
        drops: a.drops + c.drops,
    });
    println!("ECHO rx={} tx={} drops={}", total.rx, total.tx, total.drops);
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Registers the socket with [`PortOps`] as its callbacks (they attach the device to port 0 of
/// `table` in `new_device` and detach it in `destroy_device`) and starts serving it.
fn start_driver(args: &Args, table: &Arc<DeviceTable>) -> Result<Driver, String> {
    let path = &args.socket;
    let flags = if args.client {
        Flags::CLIENT // reconnects every second when the frontend goes away
    } else {
        Flags::empty()
    };
    let err = |what: &str, e: rvhost::driver::DriverError| {
        format!("{what} {}: {}", path.display(), report(&e))
    };
    let driver = Driver::new().map_err(|e| format!("starting the driver: {}", report(&e)))?;
    driver
        .register(path, flags)
        .map_err(|e| err("registering", e))?;
    driver
        .set_max_queue_pairs(path, args.queues)
        .map_err(|e| err("setting the queue pairs of", e))?;
    let ops = PortOps {
        table: Arc::clone(table),
        port: PORT,
    };
    driver
        .set_callbacks(path, Arc::new(ops))
        .map_err(|e| err("setting the callbacks of", e))?;
    driver.start(path).map_err(|e| err("starting", e))?;
    Ok(driver)
}

/// The worker: one loop turn polls every queue pair of the port once.
fn echo_worker(lcore: &Lcore, table: &Arc<DeviceTable>, pool: &PktPool, queues: u16) -> Counters {
    // Made here, on the pinned thread, before the loop (the table waits for this reader to
    // let go of a device in destroy_device until it is dropped).
    let mut reader = table.reader(lcore.id().index());
    let mut cache = pool.cache();
    let mut pkts: Vec<Mbuf> = Vec::with_capacity(BURST);
    let mut c = Counters::default();
    while !lcore.should_stop() {
        // Top of the turn, no burst in progress: pick up a new device or let go of a gone one.
        reader.refresh(|_port, _dev| {});
        let Some(dev) = reader.dev(PORT) else {
            // No frontend: nothing to poll. Sleep a little rather than spin a core for nothing.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        // Queue pairs the frontend did not set up just return 0.
        for q in 0..queues {
            let qp = QueuePair(q);
            // Guest -> host: from the guest's transmit queue.
            let n = dequeue_burst(dev, qp.tx(), &mut cache, &mut pkts, BURST);
            if n == 0 {
                continue;
            }
            for m in &mut pkts {
                // Freshly dequeued mbufs are not shared, so their data is writable. A frame too
                // short for an Ethernet header is echoed unchanged.
                if let Ok(frame) = m.data_mut() {
                    macswap(frame);
                }
            }
            // Host -> guest: into the guest's receive queue. Enqueue copies the packets into
            // the guest's buffers; it takes the first `sent` and leaves the rest (the guest had
            // no room), which we drop.
            let sent = enqueue_burst(dev, qp.rx(), &pkts);
            c.rx += n as u64;
            c.tx += sent as u64;
            c.drops += (n - sent) as u64;
            // Every mbuf goes back, sent or not: the guest has its own copy of the sent ones.
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
