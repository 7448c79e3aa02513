//! The test bed of one row: a driver serving a socket, the frontend connected to it, and the
//! device the backend worker polls.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rvhost_hugepages::region::PageSize;

use super::BenchError;
use rvhost::dataplane::{DeviceTable, PortOps};
use rvhost::driver::{Device, DeviceOps, DmaMapper, Driver, Flags, Refused};
use rvhost::features::{
    VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
};
use rvhost::frontend::{Frontend, FrontendOptions};

/// How long the frontend retries the socket, and how long we wait for `new_device`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of each frontend descriptor buffer (DPDK's mbuf data room).
pub(crate) const BUF_SIZE: usize = 2048;

/// A directory for the sockets, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir, BenchError> {
        // Unique per run in this process too (tests run benches side by side).
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rvhost-bench-{}-{run}", std::process::id()));
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

/// Device callbacks: the library's device table (the backend worker reads it, and
/// `destroy_device` returns once the worker has let go), plus the device handed to the bench's
/// main thread for setup and its final checks.
pub(crate) struct Capture {
    port: PortOps,
    dev: Mutex<Option<Device>>,
    cv: Condvar,
}

impl Capture {
    fn new(table: &Arc<DeviceTable>) -> Capture {
        Capture {
            port: PortOps {
                table: Arc::clone(table),
                port: 0,
            },
            dev: Mutex::new(None),
            cv: Condvar::new(),
        }
    }

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
    fn new_device(&self, dev: &Device) -> Result<(), Refused> {
        self.port.new_device(dev)?;
        *self.dev.lock().unwrap_or_else(|e| e.into_inner()) = Some(dev.clone());
        self.cv.notify_all();
        Ok(())
    }

    fn destroy_device(&self, dev: &Device) {
        self.port.destroy_device(dev);
    }
}

/// One row's driver, frontend and device.
pub(crate) struct Bed {
    // Drop order: the frontend disconnects before the driver goes.
    pub fe: Frontend,
    pub dev: Device,
    /// Port 0 is the device; one lcore (the backend worker) reads it.
    pub table: Arc<DeviceTable>,
    driver: Driver,
    sock: PathBuf,
}

impl Bed {
    /// Starts a driver on `sock` (with [`Flags::ASYNC_COPY`] if `asynch`, and `mapper` as its
    /// DMA mapper if given), connects and
    /// starts a frontend with `queue_size` descriptors per ring (on 4 KiB pages if
    /// `small_pages`), and waits for the device.
    pub fn new(
        sock: &Path,
        queue_size: u16,
        mrg: bool,
        packed: bool,
        small_pages: bool,
        asynch: bool,
        mapper: Option<Arc<dyn DmaMapper>>,
    ) -> Result<Bed, BenchError> {
        let driver = Driver::new()?;
        let flags = if asynch {
            Flags::ASYNC_COPY
        } else {
            Flags::empty()
        };
        driver.register(sock, flags)?;
        if let Some(m) = mapper {
            driver.set_dma_mapper(sock, m)?;
        }
        if packed {
            // Not offered by default yet: the row asks for it.
            driver.enable_features(sock, VIRTIO_F_RING_PACKED)?;
        }
        let table = DeviceTable::new(1, 1);
        let capture = Arc::new(Capture::new(&table));
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
            packed,
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
            table,
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
