//! The `destroy_device` handshake, done once: a table of running devices that long-lived
//! pinned data-plane cores poll, and whose `destroy_device` returns only when every core has
//! let go of the device.
//!
//! vhost's contract (DPDK's and rvhost's, see [`DeviceOps::destroy_device`]) is that when
//! `destroy_device` returns, no data-plane thread touches the device any more: its memory is
//! unmapped next. DPDK leaves each application to build that handshake; this module is one,
//! used by `rvhost fwd`. Ports are numbered `0..ports` (one per socket an application
//! registers, or any other key it maps to a small index) and cores `0..lcores`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rvhost::dataplane::{DeviceTable, PortOps};
//! use rvhost::driver::{Driver, Flags};
//! use rvhost::lcore::Lcores;
//! use rvhost::mbuf::PktPool;
//! use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = PktPool::with_defaults("rx", 8192)?;
//! let table = DeviceTable::new(1, 1); // one port, one data-plane core
//! let driver = Driver::new()?;
//! driver.register("/tmp/vhost.sock", Flags::empty())?;
//! let ops = PortOps { table: Arc::clone(&table), port: 0 };
//! driver.set_callbacks("/tmp/vhost.sock", Arc::new(ops))?;
//! driver.start("/tmp/vhost.sock")?;
//! let workers = Lcores::launch(&[1], move |lcore| {
//!     let mut reader = table.reader(lcore.id().index()); // on the core, before its loop
//!     let mut cache = pool.cache();
//!     let mut pkts = Vec::new();
//!     while !lcore.should_stop() {
//!         reader.refresh(|_port, _dev| {}); // top of every turn, no burst in progress
//!         let Some(dev) = reader.dev(0) else { continue };
//!         dequeue_burst(dev, QueuePair(0).tx(), &mut cache, &mut pkts, 32);
//!         enqueue_burst(dev, QueuePair(0).rx(), &pkts);
//!         cache.free_bulk(pkts.drain(..)); // sent or not: enqueue copied what it took
//!     }
//! })?;
//! // To stop: the workers first (a dropped reader is not waited for), then the driver.
//! workers.stop();
//! workers.join()?;
//! driver.unregister("/tmp/vhost.sock")?;
//! # Ok(()) }
//! ```
//!
//! The callbacks ([`PortOps`]) write the table on the control thread; each core reads it
//! once per loop turn through its [`Reader`], never blocking.
//!
//! [`DeviceOps::destroy_device`]: crate::driver::DeviceOps::destroy_device
//!
//! # Protocol
//!
//! The table is a `Mutex<Vec<Slot>>` plus an `epoch` counter bumped (under the lock) after
//! every change. Each lcore keeps a [`Reader`]: its own copy of the port → device map and the
//! epoch that copy reflects. Once per loop turn the lcore loads the epoch (one atomic load);
//! only when it moved does it `try_lock` the table and copy it (a failed `try_lock` keeps the
//! old copy for one more turn, which is allowed, see below). After copying it publishes the
//! epoch it saw in its `ack` slot.
//!
//! `destroy_device` ([`DeviceTable::detach`]) clears the slot, bumps the epoch to `e`, and
//! waits until every lcore's ack is at least `e`. An lcore acks `e` only at the top of a loop
//! turn (no burst in progress) and after dropping every device the table no longer has, so when
//! `detach` returns no lcore uses the device and none will again: what the `DeviceOps`
//! contract asks. Until then the old copy is still valid, because the callback has not
//! returned.
//!
//! An lcore that is not polling (not started yet, or exited, or unwound from a panic) has the
//! ack [`RETIRED`] and is not waited for. A starting lcore announces itself by storing ack 0
//! *before* its first load of the epoch; `detach` bumps the epoch *before* it reads the acks.
//! Both are `SeqCst`, so either `detach` sees the ack 0 and waits for the newcomer, or the
//! newcomer's first load sees the bumped epoch and copies the table without the device
//! (Dekker's pattern; with weaker orderings both could miss each other).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::driver::{Device, DeviceId, DeviceOps, Refused};
use crossbeam_utils::CachePadded;

/// The ack of an lcore that is not polling.
pub const RETIRED: u64 = u64::MAX;

/// How long `detach` sleeps between looks at the acks (the lcores poll continuously, so one
/// or two looks are the rule).
const ACK_POLL: Duration = Duration::from_micros(50);

#[derive(Default)]
struct Slot {
    dev: Option<Device>,
    /// When the device started running (for rates over the time a port had traffic).
    since: Option<Instant>,
    /// Time the port had a running device, closed intervals only.
    active: Duration,
}

/// Why [`DeviceTable::attach`] refused a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The port number is not below the table's number of ports.
    #[error("port {port} does not exist (the table has {ports} ports)")]
    NoSuchPort {
        /// The port asked for.
        port: usize,
        /// The table's number of ports.
        ports: usize,
    },
    /// Another device runs on the port (a second frontend on the same server socket).
    #[error("port {port} is in use by {by}")]
    InUse {
        /// The port asked for.
        port: usize,
        /// The device that has it.
        by: DeviceId,
    },
}

/// The port → device map shared by the callbacks and the lcores. See the module docs.
pub struct DeviceTable {
    slots: Mutex<Vec<Slot>>,
    epoch: AtomicU64,
    acks: Box<[CachePadded<AtomicU64>]>,
}

impl DeviceTable {
    /// A table of `ports` empty ports read by `lcores` lcores.
    pub fn new(ports: usize, lcores: usize) -> Arc<DeviceTable> {
        Arc::new(DeviceTable {
            slots: Mutex::new((0..ports).map(|_| Slot::default()).collect()),
            epoch: AtomicU64::new(0),
            acks: (0..lcores)
                .map(|_| CachePadded::new(AtomicU64::new(RETIRED)))
                .collect(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // The slots are plain data; a panic elsewhere cannot leave them half-written.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `new_device`: gives `port` the device. Refused if the port has another running device
    /// (a second frontend on the same server socket) or does not exist.
    pub fn attach(&self, port: usize, dev: &Device) -> Result<(), PortError> {
        let mut slots = self.lock();
        let ports = slots.len();
        let slot = slots
            .get_mut(port)
            .ok_or(PortError::NoSuchPort { port, ports })?;
        if let Some(other) = &slot.dev {
            if other.id() != dev.id() {
                return Err(PortError::InUse {
                    port,
                    by: other.id(),
                });
            }
        }
        slot.dev = Some(dev.clone());
        slot.since.get_or_insert_with(Instant::now);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// `destroy_device`: takes the device off `port` (if it is the one there) and returns once
    /// no lcore can use it any more.
    pub fn detach(&self, port: usize, id: DeviceId) {
        let epoch = {
            let mut slots = self.lock();
            let Some(slot) = slots.get_mut(port) else {
                return; // never attached: attach refuses ports out of range
            };
            if slot.dev.as_ref().map(Device::id) != Some(id) {
                return;
            }
            slot.dev = None;
            if let Some(since) = slot.since.take() {
                slot.active += since.elapsed();
            }
            // SeqCst: ordered before the loads of the acks below (see the module docs).
            self.epoch.fetch_add(1, Ordering::SeqCst) + 1
        };
        self.wait_acks(epoch);
    }

    fn wait_acks(&self, epoch: u64) {
        // RETIRED is u64::MAX, so it passes the test too.
        while !self.acks.iter().all(|a| a.load(Ordering::SeqCst) >= epoch) {
            std::thread::sleep(ACK_POLL);
        }
    }

    /// How long `port` has had a running device, the current run included (zero for a port
    /// out of range).
    pub fn active_time(&self, port: usize) -> Duration {
        let slots = self.lock();
        slots.get(port).map_or(Duration::ZERO, |s| {
            s.active + s.since.map_or(Duration::ZERO, |t| t.elapsed())
        })
    }

    /// The reader of lcore `lcore` (to be made on that lcore, before its loop): on an
    /// [`Lcores`](crate::lcore::Lcores) worker, `lcore.id().index()`. It counts as polling
    /// until it is dropped.
    ///
    /// # Panics
    ///
    /// If `lcore` is not below the `lcores` the table was made for.
    pub fn reader(self: &Arc<Self>, lcore: usize) -> Reader {
        // SeqCst: ordered before the first load of the epoch in `refresh`.
        self.acks[lcore].store(0, Ordering::SeqCst);
        let ports = self.lock().len();
        Reader {
            table: Arc::clone(self),
            lcore,
            seen: 0,
            devs: vec![None; ports],
        }
    }
}

/// An lcore's copy of the table. See the module docs.
pub struct Reader {
    table: Arc<DeviceTable>,
    lcore: usize,
    seen: u64,
    devs: Vec<Option<Device>>,
}

impl Reader {
    /// Picks up changes of the table; call at the top of every loop turn, with no burst in
    /// progress. `retire(port, dev)` is called for each device about to be dropped from the
    /// copy (it may still be used inside the call, e.g. to read its final counters).
    #[inline]
    pub fn refresh(&mut self, retire: impl FnMut(usize, &Device)) {
        let epoch = self.table.epoch.load(Ordering::SeqCst);
        if epoch != self.seen {
            self.copy_table(epoch, retire);
        }
    }

    #[cold]
    fn copy_table(&mut self, epoch: u64, mut retire: impl FnMut(usize, &Device)) {
        // Never block: the control thread holds the lock for a few instructions only; if it
        // does now, the old copy is still valid (detach waits for our ack) and we try again.
        let Ok(slots) = self.table.slots.try_lock() else {
            return;
        };
        for (port, (mine, slot)) in self.devs.iter_mut().zip(slots.iter()).enumerate() {
            let same = mine.as_ref().map(Device::id) == slot.dev.as_ref().map(Device::id);
            if !same {
                if let Some(old) = mine.take() {
                    retire(port, &old);
                }
                mine.clone_from(&slot.dev);
            }
        }
        drop(slots);
        self.seen = epoch;
        // Release (SeqCst is stronger): our copy no longer holds the retired devices.
        self.table.acks[self.lcore].store(epoch, Ordering::SeqCst);
    }

    /// The running device of `port`, if any.
    #[inline]
    pub fn dev(&self, port: usize) -> Option<&Device> {
        self.devs.get(port)?.as_ref()
    }

    /// The ports that have a running device, with it (for final bookkeeping).
    pub fn devices(&self) -> impl Iterator<Item = (usize, &Device)> {
        self.devs
            .iter()
            .enumerate()
            .filter_map(|(p, d)| Some((p, d.as_ref()?)))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.devs.clear();
        self.table.acks[self.lcore].store(RETIRED, Ordering::SeqCst);
    }
}

/// The callbacks of one port's socket: `new_device` attaches the device to `port`
/// ([`DeviceTable::attach`]: refused with [`PortError`] if another device runs there),
/// `destroy_device` detaches it and returns once no lcore uses it
/// ([`DeviceTable::detach`]); both log one line. The other callbacks do nothing. To add your
/// own, wrap it: implement [`DeviceOps`] on a type holding a `PortOps` and call its methods
/// from yours (the `reconnect` example does).
pub struct PortOps {
    /// The table to update.
    pub table: Arc<DeviceTable>,
    /// The port the socket is.
    pub port: usize,
}

impl DeviceOps for PortOps {
    fn new_device(&self, dev: &Device) -> Result<(), Refused> {
        self.table.attach(self.port, dev).map_err(Refused::new)?;
        log::info!(
            "port {}: {} is running (features {:#x})",
            self.port,
            dev.id(),
            dev.features()
        );
        Ok(())
    }

    fn destroy_device(&self, dev: &Device) {
        self.table.detach(self.port, dev.id());
        log::info!("port {}: {} stopped", self.port, dev.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_table_has_no_devices_and_a_reader_acks_changes() {
        let table = DeviceTable::new(2, 2);
        assert_eq!(table.active_time(1), Duration::ZERO);
        // No reader polls: detach of an unknown device returns at once.
        table.detach(0, DeviceId(7));
        let mut r = table.reader(0);
        assert_eq!(table.acks[0].load(Ordering::SeqCst), 0);
        table.epoch.fetch_add(1, Ordering::SeqCst);
        r.refresh(|_, _| panic!("nothing to retire"));
        assert_eq!(table.acks[0].load(Ordering::SeqCst), 1);
        assert!(r.dev(0).is_none() && r.dev(5).is_none());
        assert_eq!(r.devices().count(), 0);
        drop(r);
        assert_eq!(table.acks[0].load(Ordering::SeqCst), RETIRED);
    }
}
