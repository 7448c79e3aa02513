//! A connected vhost-user device: the handle the application and the data plane hold
//! ([`Device`]) and the state only the control thread touches (`DeviceState`).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::memory::{DirtyLog, GuestMemory, GuestRegion, MemoryLimits};
use crate::virtq::lock::{VringGuard, VringLock};

use super::SocketConfig;
use super::dma_map::{DmaMap, DmaMapError};

/// Most queue pairs a device may have (DPDK's `VHOST_MAX_QUEUE_PAIRS`).
pub const MAX_QUEUE_PAIRS: u16 = 128;

/// Process-wide id of a connection (DPDK's `vid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vid {}", self.0)
    }
}

/// What the control thread publishes and the data plane and application read.
#[derive(Debug)]
pub(crate) struct Shared {
    pub id: DeviceId,
    pub path: PathBuf,
    pub queues: Box<[VringLock]>,
    pub features: AtomicU64,
    pub protocol_features: AtomicU64,
    pub mtu: AtomicU16,
    pub status: AtomicU8,
    /// Highest vring index configured + 1.
    pub nr_vrings: AtomicU16,
    /// MAC from SEND_RARP, to be announced by the data path.
    pub rarp: Mutex<Option<[u8; 6]>>,
    /// A SEND_RARP is pending (checked once per dequeue burst without taking `rarp`).
    pub rarp_pending: std::sync::atomic::AtomicBool,
    /// Registration flags (LINEARBUF, EXTBUF, ...), for the data path.
    pub flags: super::Flags,
    /// Bursts asked for a vring beyond the device's (an application error).
    pub bad_queue_ids: AtomicU64,
}

/// A device (one frontend connection). Cheap to clone; valid for the data plane between the
/// `new_device` and `destroy_device` callbacks, and for queries until `destroy_connection`.
#[derive(Debug, Clone)]
pub struct Device {
    pub(crate) shared: Arc<Shared>,
}

impl Device {
    /// The device id.
    pub fn id(&self) -> DeviceId {
        self.shared.id
    }

    /// The socket path the frontend connected through.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Negotiated virtio features.
    pub fn features(&self) -> u64 {
        // Relaxed: a plain value published before the callbacks that announce it (the
        // callback is called after the store, on the same thread as the store).
        self.shared.features.load(Ordering::Relaxed)
    }

    /// Negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> u64 {
        self.shared.protocol_features.load(Ordering::Relaxed)
    }

    /// MTU set by NET_SET_MTU (0 if none).
    pub fn mtu(&self) -> u16 {
        self.shared.mtu.load(Ordering::Relaxed)
    }

    /// Device status byte (SET_STATUS).
    pub fn status(&self) -> u8 {
        self.shared.status.load(Ordering::Relaxed)
    }

    /// Number of vrings the frontend configured (highest index + 1).
    pub fn vring_count(&self) -> u16 {
        self.shared.nr_vrings.load(Ordering::Relaxed)
    }

    /// Number of vrings allocated (twice the queue pairs offered).
    pub fn max_vrings(&self) -> usize {
        self.shared.queues.len()
    }

    internal_pub! {
        /// Tries to lock vring `index` for one burst. `None` if the index is out of range
        /// (counted in [`bad_queue_ids`](Self::bad_queue_ids)) or the control thread holds it
        /// (counted in the vring's `lock_busy`); the caller skips the burst, it must never block.
        #[inline]
        fn try_lock_vring(&self, index: usize) -> Option<VringGuard<'_>> {
            match self.shared.queues.get(index) {
                Some(q) => q.try_lock(),
                None => {
                    self.shared.bad_queue_ids.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }
    }

    /// The vring's lock and hints, for the data path's reads that need no lock.
    #[inline]
    pub(crate) fn vring_lock(&self, index: usize) -> Option<&VringLock> {
        self.shared.queues.get(index)
    }

    /// Bursts asked for a vring the device does not have (a queue pair at or beyond
    /// [`max_vrings`](Self::max_vrings)` / 2`): they returned 0 and touched nothing.
    pub fn bad_queue_ids(&self) -> u64 {
        self.shared.bad_queue_ids.load(Ordering::Relaxed)
    }

    internal_pub! {
        /// Locks vring `index`, waiting while a burst or the control thread holds it: for
        /// looking at a vring's counters or state off the data path (a data-plane thread uses
        /// [`try_lock_vring`](Self::try_lock_vring)). `None` if the index is out of range.
        fn lock_vring(&self, index: usize) -> Option<VringGuard<'_>> {
            self.shared.queues.get(index).map(VringLock::lock)
        }
    }

    /// Vring `index`'s counters and state, read without the vring lock (DPDK's
    /// `rte_vhost_vring_stats_get`): a snapshot as of the last burst, which the data plane is
    /// not slowed by. `None` if the index is out of range. See
    /// [`VringStats`](super::VringStats) for what each counter says, including why a burst
    /// returned 0.
    pub fn vring_stats(&self, index: usize) -> Option<super::VringStats> {
        self.shared.queues.get(index).map(VringLock::stats)
    }

    /// Zeroes vring `index`'s counters (`rte_vhost_vring_stats_reset`); waits for a burst in
    /// progress. `false` if the index is out of range.
    pub fn vring_stats_reset(&self, index: usize) -> bool {
        self.shared
            .queues
            .get(index)
            .map(VringLock::reset_stats)
            .is_some()
    }

    /// How many times the data path has marked one of the device's vrings broken (a guest
    /// that corrupted its available ring): poll it, and when it grows look for the vrings
    /// whose [`vring_stats`](Self::vring_stats) say `broken`. A broken vring is skipped by
    /// every burst until the frontend sets its base again (a device reset or reconnect).
    /// [`vring_stats_reset`](Self::vring_stats_reset) zeroes a vring's share of the count.
    pub fn vring_breaks(&self) -> u64 {
        self.shared
            .queues
            .iter()
            .map(|q| q.stats().queue.breaks)
            .sum()
    }

    /// Takes (and clears) the MAC address of a pending SEND_RARP.
    #[inline]
    pub fn take_rarp(&self) -> Option<[u8; 6]> {
        // Relaxed: the flag only says whether to look; the MAC itself is read under the lock.
        if !self.shared.rarp_pending.load(Ordering::Relaxed) {
            return None;
        }
        self.shared.rarp_pending.store(false, Ordering::Relaxed);
        lock(&self.shared.rarp).take()
    }

    /// The flags the socket was registered with.
    pub fn flags(&self) -> super::Flags {
        self.shared.flags
    }
}

/// Locks a mutex, taking over a poisoned one (its data is plain state, see above).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared-memory area of GET/SET_INFLIGHT_FD. Kept mapped for the connection's life so
/// the frontend can hand it back after a reconnect; the data path does not record inflight
/// descriptors in it yet (that is the data-path issue's).
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) struct Inflight {
    pub region: GuestRegion,
    pub num_queues: u16,
    pub queue_size: u16,
}

/// Control-thread state of one connection.
pub(crate) struct DeviceState {
    pub dev: Device,
    pub cfg: SocketConfig,
    pub owner: bool,
    pub features: u64,
    pub protocol_features: u64,
    pub mem: GuestMemory,
    pub limits: MemoryLimits,
    pub status: u8,
    /// new_device returned Ok and destroy_device was not called since.
    pub running: bool,
    /// Enabled state last reported per vring with vring_state_changed.
    pub notified: Vec<bool>,
    pub backend_req: Option<UnixStream>,
    pub inflight: Option<Inflight>,
    /// Map guest regions between inaccessible pages ([`MapOptions::guard_pages`]); set by
    /// the fuzz targets' sessions, never by a `Driver`.
    ///
    /// [`MapOptions::guard_pages`]: crate::memory::MapOptions::guard_pages
    pub guard_pages: bool,
    /// The guest regions mapped for the socket's copy devices, when the application gave a
    /// mapper ([`Driver::set_dma_mapper`](super::Driver::set_dma_mapper)).
    pub dma_map: Option<DmaMap>,
    /// Postcopy migration state (PAGEFAULT): the userfaultfd, listening, a table waiting for
    /// the front-end's acknowledgement.
    pub postcopy: super::postcopy::Postcopy,
}

impl DeviceState {
    pub fn new(id: DeviceId, cfg: SocketConfig) -> DeviceState {
        let nvrings = usize::from(cfg.max_queue_pairs) * 2;
        let queues: Box<[VringLock]> = (0..nvrings).map(|_| VringLock::default()).collect();
        let limits = MemoryLimits::default();
        let dma_map = cfg.dma_mapper.clone().map(DmaMap::new);
        DeviceState {
            dev: Device {
                shared: Arc::new(Shared {
                    id,
                    path: cfg.path.clone(),
                    queues,
                    features: AtomicU64::new(0),
                    protocol_features: AtomicU64::new(0),
                    mtu: AtomicU16::new(0),
                    status: AtomicU8::new(0),
                    nr_vrings: AtomicU16::new(0),
                    rarp: Mutex::new(None),
                    rarp_pending: std::sync::atomic::AtomicBool::new(false),
                    flags: cfg.flags,
                    bad_queue_ids: AtomicU64::new(0),
                }),
            },
            cfg,
            owner: false,
            features: 0,
            protocol_features: 0,
            mem: GuestMemory::empty(limits),
            limits,
            status: 0,
            running: false,
            notified: vec![false; nvrings],
            backend_req: None,
            inflight: None,
            guard_pages: false,
            dma_map,
            postcopy: super::postcopy::Postcopy::default(),
        }
    }

    /// True if protocol feature `mask` was negotiated.
    pub fn has_protocol(&self, mask: u64) -> bool {
        self.protocol_features & mask != 0
    }

    /// Publishes the negotiated feature sets to the [`Device`] handle.
    pub fn publish(&self) {
        let s = &self.dev.shared;
        s.features.store(self.features, Ordering::Relaxed);
        s.protocol_features
            .store(self.protocol_features, Ordering::Relaxed);
        s.status.store(self.status, Ordering::Relaxed);
    }

    /// Records that vring `index` was configured.
    pub fn touch_vring(&self, index: usize) {
        let n = u16::try_from(index + 1).unwrap_or(u16::MAX);
        self.dev.shared.nr_vrings.fetch_max(n, Ordering::Relaxed);
    }

    /// DPDK's `virtio_is_ready`: the first queue pair is ready, a memory table is set, and
    /// DRIVER_OK is set if STATUS was negotiated.
    pub fn is_ready(&self) -> bool {
        use crate::features::protocol::STATUS;
        const DRIVER_OK: u8 = 4;
        if self.mem.is_empty() {
            return false;
        }
        if self.has_protocol(STATUS) && self.status & DRIVER_OK == 0 {
            return false;
        }
        (0..2).all(|i| self.dev.lock_vring(i).is_some_and(|vq| vq.is_ready()))
    }

    /// Waits for the copies in flight on vring `which` (every vring if `None`; an index the
    /// device does not have is nothing to wait for) and retires their packets: what the
    /// dispatcher does, from the handler table's `data_plane` column, before a request that
    /// changes those rings or the memory they point into. Cheap without async channels.
    pub fn quiesce(&self, which: Option<usize>) {
        let queues = &self.dev.shared.queues;
        let range = match which {
            Some(i) if i < queues.len() => i..i + 1,
            Some(_) => return,
            None => 0..queues.len(),
        };
        for q in &queues[range] {
            q.lock().drain_async();
        }
    }

    /// Resets every vring (keeping the memory table) and the readiness bookkeeping.
    pub fn reset_vrings(&mut self) {
        for q in self.dev.shared.queues.iter() {
            q.lock().reset();
        }
        self.notified.iter_mut().for_each(|n| *n = false);
        self.dev.shared.nr_vrings.store(0, Ordering::Relaxed);
    }

    /// Installs a dirty log (`None`: drops it) on every vring of the device, each under the
    /// vring's lock: the old log is unmapped when the last vring lets go of it, after the burst
    /// that may be writing it. Copies in flight were drained first (the handler table's
    /// `data_plane` column).
    pub fn set_log(&mut self, log: Option<Arc<DirtyLog>>) {
        let mut old = None;
        for q in self.dev.shared.queues.iter() {
            let mut vq = q.lock();
            old = old.or_else(|| vq.log.clone());
            vq.set_log(log.clone());
        }
        if let Some(old) = old.filter(|old| log.as_ref().is_none_or(|l| !Arc::ptr_eq(l, old))) {
            // Once per log: what the data path did with it (a migration test reads this line).
            log::info!(
                "{}: dirty log of {} bytes released: {} pages marked, {} ranges beyond it",
                self.dev.id(),
                old.len(),
                old.marked(),
                old.beyond()
            );
        }
    }

    /// Installs a new memory table on the device and every vring. Rings that no longer
    /// translate are left unready (with a warning) until the frontend sets them again.
    ///
    /// With a DMA mapper, the table's new regions are mapped for the copy devices first; if
    /// the mapper refuses one, nothing is left mapped of them, the table is not installed and
    /// the error is returned (the handler refuses the request). Regions the table no longer
    /// has are unmapped once every vring holds it (see [`super::dma_map`]).
    pub fn set_memory(&mut self, mem: GuestMemory) -> Result<(), DmaMapError> {
        if let Some(map) = self.dma_map.as_mut() {
            map.map_new(&mem).inspect_err(|e| {
                log::error!(
                    "{}: {}: {}; the memory change is refused",
                    self.dev.id(),
                    e,
                    e.source
                );
            })?;
        }
        for (i, q) in self.dev.shared.queues.iter().enumerate() {
            let mut vq = q.lock();
            let had_rings = vq.addrs.is_some();
            // Drains, under the lock, whatever a burst submitted since the dispatcher's
            // quiesce: after this no job of this vring names the old table.
            if let Err(e) = vq.set_memory(mem.clone()) {
                if had_rings {
                    log::warn!("{}: vring {i} after memory change: {e}", self.dev.id());
                }
            }
        }
        // The old table lives until its regions are unmapped from the IOMMU.
        let old = std::mem::replace(&mut self.mem, mem);
        if let Some(map) = self.dma_map.as_mut() {
            map.unmap_stale(&self.mem);
            log::debug!("{}: {} guest regions DMA-mapped", self.dev.id(), map.len());
        }
        drop(old);
        Ok(())
    }

    /// Drops the memory table (RESET_OWNER, the connection's end): every region is unmapped
    /// from the copy devices after every vring let go of it.
    pub fn clear_memory(&mut self) {
        // The empty table has no region to map, so nothing can be refused.
        if let Err(e) = self.set_memory(GuestMemory::empty(self.limits)) {
            log::error!("{}: clearing the memory table: {e}", self.dev.id());
        }
    }
}
