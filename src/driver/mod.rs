//! The public API: register vhost-user sockets, choose features, get callbacks, start.
//!
//! This mirrors DPDK's `rte_vhost_driver_*` API:
//!
//! | DPDK | rvhost |
//! |---|---|
//! | `rte_vhost_driver_register(path, flags)` | [`Driver::register`] |
//! | `rte_vhost_driver_set_features` / `enable_features` / `disable_features` | [`Driver::set_features`] / [`Driver::enable_features`] / [`Driver::disable_features`] |
//! | `rte_vhost_driver_set_protocol_features` | [`Driver::set_protocol_features`] |
//! | `rte_vhost_driver_callback_register` | [`Driver::set_callbacks`] |
//! | `rte_vhost_driver_start` | [`Driver::start`] |
//! | `async_dma_map` (automatic with async copy, into the VFIO container) | [`Driver::set_dma_mapper`] |
//! | `rte_vhost_driver_unregister` | [`Driver::unregister`] |
//!
//! One control thread per [`Driver`] runs an epoll loop over every started socket: listeners,
//! their connections, and client sockets waiting to (re)connect. Callbacks ([`DeviceOps`]) run
//! on that thread, never with a lock held that the data plane or the callback may take.

mod control;
pub mod device;
mod dma_map;
mod handlers;
mod postcopy;
#[cfg(feature = "internals")]
pub mod session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

pub use crate::virtq::QueueStats;
pub use crate::virtq::stats::VringStats;
pub use device::{Device, DeviceId};
pub use dma_map::DmaMapError;
pub use rvhost_dma::hw::DmaMapper;

use crate::features;

/// Flags given to [`Driver::register`], named as DPDK's `RTE_VHOST_USER_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u64);

impl Flags {
    /// Connect to the path (the frontend listens) instead of listening on it.
    pub const CLIENT: Flags = Flags(1 << 0);
    /// In client mode: do not retry when the connection fails or goes away.
    pub const NO_RECONNECT: Flags = Flags(1 << 1);
    /// Support `VIRTIO_F_ACCESS_PLATFORM` with IOTLB messages.
    pub const IOMMU_SUPPORT: Flags = Flags(1 << 3);
    /// Support postcopy live migration: the protocol feature PAGEFAULT is offered, and
    /// POSTCOPY_ADVISE/LISTEN/END are served (a userfaultfd over the guest's memory). Refused
    /// together with [`ASYNC_COPY`](Self::ASYNC_COPY), as DPDK does: that path populates and
    /// locks guest memory when mapping it, which postcopy must not do.
    pub const POSTCOPY_SUPPORT: Flags = Flags(1 << 4);
    /// Dequeue only into single linear mbufs (drop what does not fit).
    pub const LINEARBUF: Flags = Flags(1 << 6);
    /// Dequeue may attach external buffers for large packets.
    pub const EXTBUF: Flags = Flags(1 << 5);
    /// The socket's devices may use the asynchronous (DMA) copy path on their receive queues
    /// ([`rvhost::net::async_channel_register`](crate::net::async_channel_register)); their
    /// guest memory is populated and locked when mapped.
    pub const ASYNC_COPY: Flags = Flags(1 << 7);

    /// No flag: server mode.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// True if every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Flags whose subsystem is not built yet, with a name for the error message.
    const NOT_BUILT: [(Flags, &'static str); 1] = [(Flags::IOMMU_SUPPORT, "IOMMU_SUPPORT (IOTLB)")];
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Why a driver call failed.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The path is registered already.
    #[error("{0}: socket path is registered already")]
    AlreadyRegistered(PathBuf),
    /// The path is not registered.
    #[error("{0}: socket path is not registered")]
    NotRegistered(PathBuf),
    /// The path was started already; its settings can no longer change.
    #[error("{0}: socket is started; stop (unregister) it before changing it")]
    AlreadyStarted(PathBuf),
    /// A flag names a subsystem that rvhost does not have yet.
    #[error("flag {0} is not supported by this build of rvhost")]
    UnsupportedFlag(&'static str),
    /// A DMA mapper for a socket registered without [`Flags::ASYNC_COPY`].
    #[error("{0}: a DMA mapper needs a socket registered with Flags::ASYNC_COPY")]
    NotAsyncCopy(PathBuf),
    /// Two flags that cannot be used together.
    #[error("flags {0} and {1} cannot be used together: {2}")]
    IncompatibleFlags(&'static str, &'static str, &'static str),
    /// A feature bit that cannot be offered.
    #[error("feature bits {0:#x} are not supported by this build of rvhost")]
    UnsupportedFeatures(u64),
    /// A Unix socket path longer than `sun_path` allows.
    #[error("{0}: socket path is too long for a Unix socket")]
    PathTooLong(PathBuf),
    /// Listening on / connecting to the socket failed.
    #[error("{path}: {op} failed")]
    Socket {
        /// The path.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The control thread could not be started or is gone.
    #[error("vhost-user control thread: {0}")]
    Control(String),
    /// Called from a callback, where it would deadlock.
    #[error("{0} cannot be called from a vhost callback")]
    FromCallback(&'static str),
}

/// Why [`DeviceOps::new_device`] refused a device: a reason, and the error behind it if
/// there is one. The driver logs it and leaves the device not running.
///
/// ```
/// use rvhost::driver::Refused;
/// let r = Refused::new("no free port");
/// assert_eq!(r.to_string(), "no free port");
/// let io = std::io::Error::other("pool exhausted");
/// let r = Refused::new(io);
/// assert_eq!(r.to_string(), "pool exhausted");
/// ```
#[derive(Debug)]
pub struct Refused(Box<dyn std::error::Error + Send + Sync>);

impl Refused {
    /// A refusal for `reason`: a message (`&str`, `String`) or any error.
    pub fn new(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Refused {
        Refused(reason.into())
    }

    /// The reason given.
    pub fn reason(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl From<&str> for Refused {
    fn from(reason: &str) -> Refused {
        Refused::new(reason)
    }
}

impl From<String> for Refused {
    fn from(reason: String) -> Refused {
        Refused::new(reason)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Callbacks of a registered socket (DPDK's `rte_vhost_device_ops`). All run on the control
/// thread; keep them short.
pub trait DeviceOps: Send + Sync {
    /// The device's first queue pair is ready: addresses, kick/call fds, enabled (and
    /// DRIVER_OK if STATUS was negotiated). The data plane may use `dev`'s queues from now
    /// until [`destroy_device`](Self::destroy_device). Returning `Err` leaves the device not
    /// running (the driver logs the reason); it is offered again after the next change.
    fn new_device(&self, dev: &Device) -> Result<(), Refused> {
        let _ = dev;
        Ok(())
    }
    /// The device stops running (GET_VRING_BASE on a running ring, reset, or disconnect).
    /// When this returns the data plane must no longer use the device's queues.
    fn destroy_device(&self, dev: &Device) {
        let _ = dev;
    }
    /// A queue was enabled or disabled while the device runs.
    fn vring_state_changed(&self, dev: &Device, queue: u16, enabled: bool) {
        let _ = (dev, queue, enabled);
    }
    /// The negotiated features changed while the device runs.
    fn features_changed(&self, dev: &Device, features: u64) {
        let _ = (dev, features);
    }
    /// A frontend connected (a new device id exists).
    fn new_connection(&self, dev: &Device) {
        let _ = dev;
    }
    /// The connection is gone; called last for a device id.
    fn destroy_connection(&self, dev: &Device) {
        let _ = dev;
    }
}

/// Callbacks that do nothing.
#[derive(Debug, Default)]
pub struct NoOps;
impl DeviceOps for NoOps {}

/// Everything registered for one socket path.
#[derive(Clone)]
pub(crate) struct SocketConfig {
    pub path: PathBuf,
    pub flags: Flags,
    pub features: u64,
    pub protocol_features: u64,
    pub max_queue_pairs: u16,
    pub ops: Arc<dyn DeviceOps>,
    pub started: bool,
    /// Maps each device's guest memory for the copy devices ([`Driver::set_dma_mapper`]).
    pub dma_mapper: Option<Arc<dyn DmaMapper>>,
}

/// The vhost-user driver: a set of registered socket paths served by one control thread.
///
/// Dropping it shuts the control thread down: every connection is closed (with
/// `destroy_device` for a running device, then `destroy_connection`), every listening socket
/// file is removed, and the thread is joined. So stop or detach the data plane's use of its
/// devices first, as `destroy_device` requires (a [`DeviceTable`](crate::dataplane::DeviceTable)
/// does it; a worker that has exited is not waited for).
pub struct Driver {
    sockets: Mutex<HashMap<PathBuf, SocketConfig>>,
    control: control::ControlHandle,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl Driver {
    /// Starts a driver and its control thread.
    pub fn new() -> Result<Driver, DriverError> {
        Ok(Driver {
            sockets: Mutex::new(HashMap::new()),
            control: control::ControlHandle::spawn()?,
        })
    }

    /// Registers a socket path (DPDK `rte_vhost_driver_register`). Nothing listens or
    /// connects until [`start`](Self::start).
    pub fn register(&self, path: impl AsRef<Path>, flags: Flags) -> Result<(), DriverError> {
        let path = path.as_ref().to_path_buf();
        for (flag, name) in Flags::NOT_BUILT {
            if flags.contains(flag) {
                return Err(DriverError::UnsupportedFlag(name));
            }
        }
        if flags.contains(Flags::POSTCOPY_SUPPORT) && flags.contains(Flags::ASYNC_COPY) {
            return Err(DriverError::IncompatibleFlags(
                "POSTCOPY_SUPPORT",
                "ASYNC_COPY",
                "the async copy path populates and locks guest memory when it is mapped, \
                 which defeats postcopy's page faults (DPDK refuses them together too)",
            ));
        }
        if path.as_os_str().len() >= 108 {
            return Err(DriverError::PathTooLong(path));
        }
        let mut sockets = self.lock();
        if sockets.contains_key(&path) {
            return Err(DriverError::AlreadyRegistered(path));
        }
        sockets.insert(
            path.clone(),
            SocketConfig {
                path,
                flags,
                features: features::DEFAULT_FEATURES,
                protocol_features: if flags.contains(Flags::POSTCOPY_SUPPORT) {
                    features::protocol::DEFAULT | features::protocol::PAGEFAULT
                } else {
                    features::protocol::DEFAULT
                },
                max_queue_pairs: device::MAX_QUEUE_PAIRS,
                ops: Arc::new(NoOps),
                started: false,
                dma_mapper: None,
            },
        );
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, SocketConfig>> {
        // A poisoned map only means a caller panicked mid-update of plain data; keep serving.
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(
        &self,
        path: &Path,
        f: impl FnOnce(&mut SocketConfig) -> Result<(), DriverError>,
    ) -> Result<(), DriverError> {
        let mut sockets = self.lock();
        let cfg = sockets
            .get_mut(path)
            .ok_or_else(|| DriverError::NotRegistered(path.to_path_buf()))?;
        if cfg.started {
            return Err(DriverError::AlreadyStarted(path.to_path_buf()));
        }
        f(cfg)
    }

    fn read<T>(&self, path: &Path, f: impl FnOnce(&SocketConfig) -> T) -> Result<T, DriverError> {
        self.lock()
            .get(path)
            .map(f)
            .ok_or_else(|| DriverError::NotRegistered(path.to_path_buf()))
    }

    /// Sets the virtio features offered on `path`.
    pub fn set_features(&self, path: impl AsRef<Path>, features: u64) -> Result<(), DriverError> {
        supported(features, features::UNSUPPORTED_FEATURES)?;
        self.update(path.as_ref(), |c| {
            c.features = features;
            Ok(())
        })
    }

    /// Adds features to those offered on `path`.
    pub fn enable_features(
        &self,
        path: impl AsRef<Path>,
        features: u64,
    ) -> Result<(), DriverError> {
        supported(features, features::UNSUPPORTED_FEATURES)?;
        self.update(path.as_ref(), |c| {
            c.features |= features;
            Ok(())
        })
    }

    /// Removes features from those offered on `path`.
    pub fn disable_features(
        &self,
        path: impl AsRef<Path>,
        features: u64,
    ) -> Result<(), DriverError> {
        self.update(path.as_ref(), |c| {
            c.features &= !features;
            Ok(())
        })
    }

    /// The features offered on `path`.
    pub fn features(&self, path: impl AsRef<Path>) -> Result<u64, DriverError> {
        self.read(path.as_ref(), |c| c.features)
    }

    /// Sets the vhost-user protocol features offered on `path`.
    pub fn set_protocol_features(
        &self,
        path: impl AsRef<Path>,
        protocol_features: u64,
    ) -> Result<(), DriverError> {
        supported(protocol_features, features::protocol::UNSUPPORTED)?;
        self.update(path.as_ref(), |c| {
            if protocol_features & features::protocol::PAGEFAULT != 0
                && !c.flags.contains(Flags::POSTCOPY_SUPPORT)
            {
                return Err(DriverError::UnsupportedFeatures(
                    features::protocol::PAGEFAULT,
                ));
            }
            c.protocol_features = protocol_features;
            Ok(())
        })
    }

    /// The protocol features offered on `path`.
    pub fn protocol_features(&self, path: impl AsRef<Path>) -> Result<u64, DriverError> {
        self.read(path.as_ref(), |c| c.protocol_features)
    }

    /// Sets how many queue pairs a device on `path` offers (GET_QUEUE_NUM), 1 to
    /// [`device::MAX_QUEUE_PAIRS`] (the default). A frontend sets up as many as it wants up
    /// to that; a burst on a queue pair it did not set up returns 0 (counted as `not_ready`)
    /// and touches nothing, so a worker may poll every pair it offers.
    pub fn set_max_queue_pairs(
        &self,
        path: impl AsRef<Path>,
        pairs: u16,
    ) -> Result<(), DriverError> {
        let pairs = pairs.clamp(1, device::MAX_QUEUE_PAIRS);
        self.update(path.as_ref(), |c| {
            c.max_queue_pairs = pairs;
            Ok(())
        })
    }

    /// Registers the callbacks for `path`.
    pub fn set_callbacks(
        &self,
        path: impl AsRef<Path>,
        ops: Arc<dyn DeviceOps>,
    ) -> Result<(), DriverError> {
        self.update(path.as_ref(), |c| {
            c.ops = ops;
            Ok(())
        })
    }

    /// Gives the socket's devices a DMA mapper (DPDK maps into its VFIO container on its own
    /// when async copy is on; here the application says where): every region of each
    /// device's guest memory is then mapped through it (IOVA = the backend's virtual address
    /// of the region, length = its size) before any vring sees the memory table that names
    /// it, and unmapped when the region leaves the table, after every copy in flight on the
    /// device's vrings is drained (SET_MEM_TABLE, ADD_MEM_REG / REM_MEM_REG, RESET_OWNER,
    /// the connection's end). A region the mapper refuses refuses the memory change: a
    /// failure status with REPLY_ACK, else the connection closes, as for a region that cannot
    /// be mapped in the process (see the `Driver`'s memory rules); nothing stays half-mapped.
    ///
    /// The copy devices' own rings and completion records are their drivers' to map, and
    /// the application's mbuf pools its own (`PktPool::memory_ranges`), as in DPDK. One
    /// mapper may serve many sockets: regions mapped at once never overlap (each is its own
    /// `mmap` in this process, and stays mapped while the IOMMU maps it). For channels behind
    /// several IOMMU tables, give a [`MapperSet`](rvhost_dma::hw::MapperSet).
    ///
    /// Needs [`Flags::ASYNC_COPY`] (the only path that hands guest memory to a device).
    pub fn set_dma_mapper(
        &self,
        path: impl AsRef<Path>,
        mapper: Arc<dyn DmaMapper>,
    ) -> Result<(), DriverError> {
        let path = path.as_ref();
        self.update(path, |c| {
            if !c.flags.contains(Flags::ASYNC_COPY) {
                return Err(DriverError::NotAsyncCopy(path.to_path_buf()));
            }
            c.dma_mapper = Some(mapper);
            Ok(())
        })
    }

    /// Starts serving `path`: listen (server) or connect, retrying every second (client; a
    /// frontend that goes away is reconnected to the same way unless [`Flags::NO_RECONNECT`]).
    ///
    /// A server replaces a socket file left by an earlier process (any other file at `path`
    /// is an error). Each connection is a new device with a new [`DeviceId`]: callbacks come
    /// as `new_connection`, `new_device` once its first queue pair is ready,
    /// `destroy_device` when it stops, `destroy_connection` last.
    pub fn start(&self, path: impl AsRef<Path>) -> Result<(), DriverError> {
        let path = path.as_ref();
        if control::on_control_thread() {
            return Err(DriverError::FromCallback("Driver::start"));
        }
        let cfg = {
            let mut sockets = self.lock();
            let cfg = sockets
                .get_mut(path)
                .ok_or_else(|| DriverError::NotRegistered(path.to_path_buf()))?;
            if cfg.started {
                return Err(DriverError::AlreadyStarted(path.to_path_buf()));
            }
            cfg.started = true;
            cfg.clone()
        };
        let result = self.control.start(cfg);
        if result.is_err() {
            if let Some(c) = self.lock().get_mut(path) {
                c.started = false;
            }
        }
        result
    }

    /// Stops serving `path` and forgets it: every connection on it is closed (with
    /// destroy_device / destroy_connection callbacks), a listening socket file is removed.
    pub fn unregister(&self, path: impl AsRef<Path>) -> Result<(), DriverError> {
        let path = path.as_ref();
        if control::on_control_thread() {
            return Err(DriverError::FromCallback("Driver::unregister"));
        }
        let cfg = self
            .lock()
            .remove(path)
            .ok_or_else(|| DriverError::NotRegistered(path.to_path_buf()))?;
        if cfg.started {
            self.control.stop(path.to_path_buf())?;
        }
        Ok(())
    }

    /// Devices currently connected on any path of this driver.
    pub fn devices(&self) -> Vec<Device> {
        self.control.devices()
    }
}

/// Refuses feature bits this build cannot offer.
fn supported(wanted: u64, unsupported: u64) -> Result<(), DriverError> {
    match wanted & unsupported {
        0 => Ok(()),
        bad => Err(DriverError::UnsupportedFeatures(bad)),
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.control.shutdown();
    }
}
