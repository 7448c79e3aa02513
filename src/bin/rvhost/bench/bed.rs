//! The test bed of one row: a driver serving a socket, the frontend connected to it, and the
//! device the backend worker polls.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rvhost_hugepages::region::PageSize;

use super::BenchError;
use rvhost::driver::{Device, DeviceOps, Driver, Flags};
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX};
use rvhost::frontend::{Frontend, FrontendOptions};

/// How long the frontend retries the socket, and how long we wait for `new_device`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of each frontend descriptor buffer (DPDK's mbuf data room).
pub(crate) const BUF_SIZE: usize = 2048;
/// How long `destroy_device` waits for the backend worker to leave the device.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A directory for the sockets, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir, BenchError> {
        let path = std::env::temp_dir().join(format!("rvhost-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| BenchError::Io {
            what: "creating",
            path: path.clone(),
            source,
        })?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Device callbacks: hand the device to the bench, and keep the data plane off it once the
/// control thread destroys it.
#[derive(Default)]
pub(crate) struct Capture {
    dev: Mutex<Option<Device>>,
    cv: Condvar,
    /// `destroy_device` was called: the worker must leave the device.
    pub destroyed: AtomicBool,
    /// The backend worker is inside its loop (may touch the device).
    pub polling: AtomicBool,
}

impl Capture {
    fn wait_device(&self, timeout: Duration) -> Option<Device> {
        let deadline = Instant::now() + timeout;
        let mut dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(d) = dev.as_ref() {
                return Some(d.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            dev = self
                .cv
                .wait_timeout(dev, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl DeviceOps for Capture {
    fn new_device(&self, dev: &Device) -> Result<(), rvhost::driver::Refused> {
        *self.dev.lock().unwrap_or_else(|e| e.into_inner()) = Some(dev.clone());
        self.cv.notify_all();
        Ok(())
    }

    fn destroy_device(&self, _dev: &Device) {
        // SeqCst: store ours, then load the worker's flag, as the worker does the other way
        // round (Dekker), so either it sees `destroyed` before its next burst or we see it
        // polling and wait; it clears `polling` after its last access to the device, and our
        // load that sees the clear orders that access before we return.
        self.destroyed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        while self.polling.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One row's driver, frontend and device.
pub(crate) struct Bed {
    // Drop order: the frontend disconnects before the driver goes.
    pub fe: Frontend,
    pub dev: Device,
    pub capture: Arc<Capture>,
    driver: Driver,
    sock: PathBuf,
}

impl Bed {
    /// Starts a driver on `sock`, connects and starts a frontend with `queue_size`
    /// descriptors per ring (on 4 KiB pages if `small_pages`), and waits for the device.
    pub fn new(
        sock: &Path,
        queue_size: u16,
        mrg: bool,
        small_pages: bool,
    ) -> Result<Bed, BenchError> {
        let driver = Driver::new()?;
        driver.register(sock, Flags::empty())?;
        let capture = Arc::new(Capture::default());
        driver.set_callbacks(sock, Arc::clone(&capture) as Arc<dyn DeviceOps>)?;
        driver.start(sock)?;
        let mrg_bit = if mrg { VIRTIO_NET_F_MRG_RXBUF } else { 0 };
        let want = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | mrg_bit;
        let opts = FrontendOptions {
            queue_size,
            features: want,
            required_features: VIRTIO_F_VERSION_1 | mrg_bit,
            mem_size: mem_size(queue_size),
            buf_size: BUF_SIZE,
            force_small_pages: small_pages,
            connect_timeout: SETUP_TIMEOUT,
            ..FrontendOptions::default()
        };
        let mut fe = Frontend::connect(sock, opts)?;
        let neg = fe.start()?;
        let missing = (VIRTIO_F_VERSION_1 | mrg_bit) & !neg.features;
        if missing != 0 {
            return Err(BenchError::Features {
                got: neg.features,
                missing,
            });
        }
        let dev = capture
            .wait_device(SETUP_TIMEOUT)
            .ok_or(BenchError::NoDevice(SETUP_TIMEOUT))?;
        Ok(Bed {
            fe,
            dev,
            capture,
            driver,
            sock: sock.to_path_buf(),
        })
    }

    /// Page size of the frontend's (guest) memory.
    pub fn frontend_pages(&self) -> PageSize {
        self.fe.shm().region().page_size()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.fe.disconnect();
        // Closes what is left and removes the socket file.
        let _ = self.driver.unregister(&self.sock);
    }
}

/// Frontend memory: rings and one buffer per descriptor of both vrings, with room to spare.
fn mem_size(queue_size: u16) -> usize {
    let bufs = 2 * usize::from(queue_size) * BUF_SIZE;
    (bufs + (4 << 20)).next_multiple_of(2 << 20)
}
