//! Helpers shared by the integration tests: socket paths, callback recorders, fd counts, the
//! data-path test bed, and `skip` for a test whose peer is missing.

#![allow(dead_code)]

pub mod child;
pub mod dma;
pub mod pkt;
pub mod raw;
pub mod testpmd;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rvhost::driver::{Device, DeviceId, DeviceOps, Driver, Flags};
use rvhost::frontend::{Frontend, FrontendOptions};
use rvhost::mbuf::PktPool;
use rvhost_hugepages::region::{PageSize, RegionConfig};

/// A test that cannot run here (no testpmd, QEMU, hugepages, root or second CPU) calls
/// `return skip(why)`: it prints `skipping: <why>` and passes, or fails under
/// `RVHOST_TEST_REQUIRE=all` (see `src/test_support.rs`).
#[allow(unused_imports)] // unused by the tests that need no peer
pub use rvhost::test_support::skip;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh socket path under /tmp, unique to this process and call; removed if it exists.
pub fn sock_path(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let p = PathBuf::from(format!("/tmp/rvhost-{tag}-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A callback as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    NewConnection(DeviceId),
    NewDevice(DeviceId, u64),
    VringState(DeviceId, u16, bool),
    FeaturesChanged(DeviceId, u64),
    DestroyDevice(DeviceId),
    DestroyConnection(DeviceId),
}

/// Callbacks that record every event and let a test wait for one.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    cv: Condvar,
    /// new_device refuses the device while this is set.
    pub refuse: std::sync::atomic::AtomicBool,
    pub devices: Mutex<Vec<Device>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
        self.cv.notify_all();
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for some recorded event; returns it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock().unwrap();
        loop {
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            events = self.cv.wait_timeout(events, deadline - now).unwrap().0;
        }
    }

    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| pred(e))
            .count()
    }
}

impl DeviceOps for Recorder {
    fn new_device(&self, dev: &Device) -> Result<(), rvhost::driver::Refused> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err("refused by the test".into());
        }
        self.devices.lock().unwrap().push(dev.clone());
        self.push(Event::NewDevice(dev.id(), dev.features()));
        Ok(())
    }
    fn destroy_device(&self, dev: &Device) {
        self.push(Event::DestroyDevice(dev.id()));
    }
    fn vring_state_changed(&self, dev: &Device, queue: u16, enabled: bool) {
        self.push(Event::VringState(dev.id(), queue, enabled));
    }
    fn features_changed(&self, dev: &Device, features: u64) {
        self.push(Event::FeaturesChanged(dev.id(), features));
    }
    fn new_connection(&self, dev: &Device) {
        self.push(Event::NewConnection(dev.id()));
    }
    fn destroy_connection(&self, dev: &Device) {
        self.push(Event::DestroyConnection(dev.id()));
    }
}

/// Number of open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until `f` is true or the timeout passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Fails a test that hangs. Armed with a bound, it waits on its own thread; dropped in time (the
/// test finished, or panicked and unwinds), it goes away. Otherwise it writes its name and
/// `progress()` to stderr, past the harness's capture, and exits the process with status 101:
/// a thread stuck in a call cannot be unwound, and a hang would stop CI without a word.
/// Declare it before what it guards, so that it is dropped after it (drops can hang too).
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn arm(
        name: impl Into<String>,
        bound: Duration,
        progress: impl Fn() -> String + Send + 'static,
    ) -> Watchdog {
        let name = name.into();
        let (disarm, armed) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("watchdog: {name}"))
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = armed.recv_timeout(bound) {
                    let msg = format!(
                        "\nwatchdog: {name}: still running after {bound:?} ({}); \
                         failing the test binary\n",
                        progress()
                    );
                    let _ = std::io::stderr().write_all(msg.as_bytes());
                    std::process::exit(101);
                }
            })
            .expect("spawn the watchdog");
        Watchdog {
            disarm: Some(disarm),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Disconnecting the channel wakes the watchdog.
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Logs to the test output (RUST_LOG=debug for more).
pub fn init_log() {
    let _ = env_logger::builder()
        .is_test(true)
        .filter_level(log::LevelFilter::Info)
        .parse_default_env()
        .try_init();
}

/// A data-path test bed: a [`Driver`] serving one socket, the Rust [`Frontend`] connected to it
/// and started, the [`Device`] the driver created for it, and a small-page mbuf pool.
pub struct Bed {
    _driver: Driver,
    pub fe: Frontend,
    pub dev: Device,
    pub pool: PktPool,
}

impl Bed {
    /// Registers and starts a driver on a fresh socket tagged `tag` with `flags`, connects and
    /// starts a frontend with `opts`, waits (5 s) for the device, and makes a pool `pool_name`
    /// of `mbufs` mbufs with the default data room and a per-core cache of `cache`.
    pub fn new(
        tag: &str,
        flags: Flags,
        opts: FrontendOptions,
        pool_name: &str,
        mbufs: usize,
        cache: usize,
    ) -> Bed {
        Bed::configured(tag, flags, opts, pool_name, mbufs, cache, |_, _| {})
    }

    /// As [`new`](Self::new); with `opts.packed`, the driver offers packed rings
    /// (`VIRTIO_F_RING_PACKED`, not offered by default) and the frontend drives them.
    pub fn on_ring(
        tag: &str,
        flags: Flags,
        opts: FrontendOptions,
        pool_name: &str,
        mbufs: usize,
        cache: usize,
    ) -> Bed {
        let packed = opts.packed;
        Bed::configured(tag, flags, opts, pool_name, mbufs, cache, |d, path| {
            if packed {
                d.enable_features(path, rvhost::features::VIRTIO_F_RING_PACKED)
                    .unwrap();
            }
        })
    }

    /// As [`new`](Self::new), with `configure` called on the driver and the socket's path
    /// after it is registered and before it starts (to change what it offers).
    pub fn configured(
        tag: &str,
        flags: Flags,
        opts: FrontendOptions,
        pool_name: &str,
        mbufs: usize,
        cache: usize,
        configure: impl FnOnce(&Driver, &std::path::Path),
    ) -> Bed {
        init_log();
        let path = sock_path(tag);
        let rec = Recorder::new();
        let driver = Driver::new().unwrap();
        driver.register(&path, flags).unwrap();
        configure(&driver, &path);
        driver.set_callbacks(&path, Arc::clone(&rec) as _).unwrap();
        driver.start(&path).unwrap();
        let mut fe = Frontend::connect(&path, opts).unwrap();
        fe.start().unwrap();
        assert!(eventually(Duration::from_secs(5), || !rec
            .devices
            .lock()
            .unwrap()
            .is_empty()));
        let dev = rec.devices.lock().unwrap()[0].clone();
        let pool = PktPool::new(
            pool_name,
            mbufs,
            rvhost::mbuf::DEFAULT_DATA_ROOM,
            cache,
            RegionConfig::default().with_page_size(PageSize::Small),
        )
        .unwrap();
        Bed {
            _driver: driver,
            fe,
            dev,
            pool,
        }
    }
}

/// Whether the effective uid is 0 (the second field of `Uid:` in /proc/self/status).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

std::thread_local! {
    /// The ring layout of this test thread's beds, under [`both_rings`]: 0 (split) or
    /// `VIRTIO_F_RING_PACKED`.
    static RING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs a test's body on split rings, then on packed rings ([`ring`] tells which).
pub fn both_rings(body: impl Fn()) {
    for r in [0, rvhost::features::VIRTIO_F_RING_PACKED] {
        RING.with(|c| c.set(r));
        body();
    }
}

/// The ring layout of this thread's run of [`both_rings`]: 0 (split) or
/// `VIRTIO_F_RING_PACKED`, to OR into a bed's features (and `packed: ring() != 0`).
pub fn ring() -> u64 {
    RING.with(|c| c.get())
}
