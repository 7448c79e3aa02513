//! `--copy soft|ioat-model|dsa-model|ioat:BDF+...|dsa:BDF+...`: the ports' queues go through
//! the async copy path, both ways, with one DMA channel per port, queue pair and direction.
//!
//! The engine runs on a thread of its own: a [`SoftDevice`] with one channel per port, queue
//! pair and direction, or one device model per channel (the IOAT or DSA driver over it, see
//! [`crate::dma::models`]), all served by one [`ModelWorker`]. The models' IOMMUs are strict:
//! the pool is mapped in every model for the run ([`PoolMapping`]), and each port's socket
//! gets a mapper over its own channels' models, through which its driver maps the guest's
//! memory ([`Engines::mapper`]). The device modes do the same over PCI functions opened
//! through VFIO, one per channel, with no thread ([`Engines::devices`]; not run on hardware).
//! A channel is registered on the device's vring in `new_device` and taken back
//! in `destroy_device`, after the lcores let go of the device and the packets still in it
//! were handed back, so that the next device of the port gets it again.

use std::sync::{Arc, Mutex};

use rvhost::dataplane::PortOps;
use rvhost::driver::{Device, DeviceOps, Refused};
use rvhost::net::{
    AsyncConfig, AsyncCopyOps, DmaCopy, QueuePair, VringId, async_channel_register,
    async_channel_unregister, async_clear_queue, async_stats,
};
use rvhost_dma::model::{ModelWorker, Served};
use rvhost_dma::soft::{Idle, SoftConfig, SoftWorker, WorkerConfig};
use rvhost_dma::{ChannelConfig, DmaError, SoftDevice};

use rvhost::mbuf::PktPool;
use rvhost_dma::hw::DmaMapper;
use rvhost_dma::hw::vfio::VfioPci;

use crate::bench::{dev_vfio, sysfs};
use crate::dma::device::{DeviceMode, device_channels};
use crate::dma::models::{ModelKind, PoolMapping, mapper_of, model_channels, report_violations};

/// The thread serving the channels: it must outlive every device, so drop it after the ports
/// are closed (and, for the models, after the channels, so that their teardown is checked).
pub enum DmaThread {
    /// The software engine's device on its thread.
    Soft {
        /// Stops and joins the thread on drop.
        _worker: SoftWorker,
    },
    /// The device models on their thread.
    Models {
        /// Stops and joins the thread on drop.
        worker: Option<ModelWorker>,
        /// The pool mapped in the models' IOMMUs, unmapped on drop.
        pool_map: Option<PoolMapping>,
        /// The models, whose broken rules are logged on drop.
        models: Vec<Served>,
    },
    /// Functions opened through VFIO: nothing to serve (the devices run by themselves), the
    /// pool's mapping and the functions to close after the channels.
    Devices {
        /// The pool mapped in the functions' IOMMUs, unmapped on drop (first).
        pool_map: Option<PoolMapping>,
        /// The functions, closed on drop (last).
        functions: Vec<Arc<VfioPci>>,
    },
}

impl Drop for DmaThread {
    fn drop(&mut self) {
        if let DmaThread::Models {
            worker,
            pool_map,
            models,
        } = self
        {
            drop(worker.take());
            drop(pool_map.take());
            report_violations(models);
        }
        if let DmaThread::Devices {
            pool_map,
            functions,
        } = self
        {
            drop(pool_map.take());
            functions.clear();
        }
    }
}

/// The worker thread's settings: pinned to `core` and spinning, or unpinned and yielding.
fn worker_config(core: Option<usize>) -> WorkerConfig {
    WorkerConfig {
        core,
        idle: if core.is_some() {
            Idle::Spin
        } else {
            Idle::Yield
        },
        name: Some("rvhost-fwd-dma".into()),
    }
}

/// Jobs a channel holds at most (its ring).
const RING: u16 = 1024;

/// The channels not in use, per port, queue pair and direction (index
/// `2 * (port * queues + q) + dir`, dir 0 host → guest, 1 guest → host).
pub struct Engines {
    slots: Mutex<Vec<Option<Box<dyn AsyncCopyOps>>>>,
    queues: u16,
    config: AsyncConfig,
    /// Per port, the mapper of its channels' IOMMUs (none for the software engine, which
    /// has no IOMMU).
    mappers: Vec<Arc<dyn DmaMapper>>,
}

impl Engines {
    /// A software device with one channel per port and queue pair, running on its own thread
    /// (returned: it must outlive every device, so drop it after the ports are closed). With
    /// `core` the thread is pinned there and spins when idle; without, it yields.
    pub fn soft(
        ports: usize,
        queues: u16,
        threshold: u32,
        lanes: usize,
        core: Option<usize>,
    ) -> Result<(Arc<Engines>, DmaThread), DmaError> {
        let n = 2 * ports * usize::from(queues);
        let (dev, engines) = SoftDevice::new(
            &SoftConfig::with_lanes(lanes),
            &vec![ChannelConfig::new(RING); n],
        )?;
        let worker = dev.spawn(worker_config(core))?;
        let slots = engines
            .into_iter()
            .map(|e| Box::new(DmaCopy::new(e)) as Box<dyn AsyncCopyOps>)
            .collect();
        let engines = Engines::with(slots, queues, threshold, Vec::new());
        Ok((Arc::new(engines), DmaThread::Soft { _worker: worker }))
    }

    /// One IOAT or DSA model per port, queue pair and direction, each with its driver's
    /// channel, all served by one thread (returned: drop it after the ports are closed and
    /// the engines dropped). With `core` the thread is pinned there and spins when idle;
    /// without, it yields. `pool` is mapped in every model until the thread is dropped.
    pub fn models(
        ports: usize,
        queues: u16,
        threshold: u32,
        kind: ModelKind,
        core: Option<usize>,
        pool: &PktPool,
    ) -> Result<(Arc<Engines>, DmaThread), DmaError> {
        let per_port = 2 * usize::from(queues);
        let m = model_channels(kind, ports * per_port, RING)?;
        let pool_map = PoolMapping::new(pool, mapper_of(&m.models))?;
        // The channels of port p are slots p * per_port.. (see `index`).
        let mappers = (0..ports)
            .map(|p| m.mapper(p * per_port..(p + 1) * per_port))
            .collect();
        let worker = ModelWorker::serve(m.models.clone(), worker_config(core))?;
        let engines = Engines::with(m.channels, queues, threshold, mappers);
        let thread = DmaThread::Models {
            worker: Some(worker),
            pool_map: Some(pool_map),
            models: m.models,
        };
        Ok((Arc::new(engines), thread))
    }

    /// The IOAT or DSA driver over the functions of `dev` opened through VFIO, one channel
    /// each, in slot order (port 0 queue 0 host-to-guest, port 0 queue 0 guest-to-host, port
    /// 0 queue 1 ..., then port 1; the count is checked with the options); `pool` is mapped
    /// in every function's IOMMU until the returned value is dropped (after the ports are
    /// closed and the engines dropped), and each port's socket maps its guest memory in its
    /// own channels' functions. Not run on hardware. An error names the function and what to
    /// do, and leaves nothing open.
    pub fn devices(
        ports: usize,
        queues: u16,
        threshold: u32,
        dev: &DeviceMode,
        pool: &PktPool,
    ) -> Result<(Arc<Engines>, DmaThread), String> {
        let per_port = 2 * usize::from(queues);
        let d = device_channels(dev, RING, &sysfs(), &dev_vfio())?;
        let pool_map = d.map_pool(pool, dev)?;
        let mappers = (0..ports)
            .map(|p| d.mapper(p * per_port..(p + 1) * per_port))
            .collect();
        let engines = Engines::with(d.channels, queues, threshold, mappers);
        let thread = DmaThread::Devices {
            pool_map: Some(pool_map),
            functions: d.functions,
        };
        Ok((Arc::new(engines), thread))
    }

    fn with(
        channels: Vec<Box<dyn AsyncCopyOps>>,
        queues: u16,
        threshold: u32,
        mappers: Vec<Arc<dyn DmaMapper>>,
    ) -> Engines {
        Engines {
            slots: Mutex::new(channels.into_iter().map(Some).collect()),
            queues,
            config: AsyncConfig {
                threshold,
                ..AsyncConfig::default()
            },
            mappers,
        }
    }

    /// The mapper port `port`'s socket gives its driver, so that its devices' guest memory is
    /// mapped in its channels' IOMMUs; `None` for an engine without an IOMMU.
    pub fn mapper(&self, port: usize) -> Option<Arc<dyn DmaMapper>> {
        self.mappers.get(port).cloned()
    }

    fn index(&self, port: usize, q: u16, dir: Dir) -> usize {
        2 * (port * usize::from(self.queues) + usize::from(q)) + dir as usize
    }

    fn take(&self, port: usize, q: u16, dir: Dir) -> Option<Box<dyn AsyncCopyOps>> {
        let i = self.index(port, q, dir);
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)?
            .take()
    }

    fn put(&self, port: usize, q: u16, dir: Dir, ops: Box<dyn AsyncCopyOps>) {
        let i = self.index(port, q, dir);
        if let Some(slot) = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)
        {
            *slot = Some(ops);
        }
    }
}

/// Which way a channel copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Host to guest: the guest's receive queue.
    H2g = 0,
    /// Guest to host: the guest's transmit queue.
    G2h = 1,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::H2g => "h2g",
            Dir::G2h => "g2h",
        }
    }

    /// The queue of queue pair `q` this direction uses, as the channel calls take it.
    fn vring(self, q: u16) -> Queue {
        match self {
            Dir::H2g => Queue::Rx(QueuePair(q).rx()),
            Dir::G2h => Queue::Tx(QueuePair(q).tx()),
        }
    }
}

/// A queue id of either kind.
#[derive(Clone, Copy)]
enum Queue {
    Rx(rvhost::net::RxQueueId),
    Tx(rvhost::net::TxQueueId),
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queue::Rx(q) => q.fmt(f),
            Queue::Tx(q) => q.fmt(f),
        }
    }
}

impl VringId for Queue {
    fn vring(self) -> usize {
        match self {
            Queue::Rx(q) => q.vring(),
            Queue::Tx(q) => q.vring(),
        }
    }
}

/// A port's callbacks: the device table's, plus the async channels of its queues.
pub struct AsyncPortOps {
    /// The device table's callbacks.
    pub port: PortOps,
    /// The channels.
    pub engines: Arc<Engines>,
}

impl DeviceOps for AsyncPortOps {
    fn new_device(&self, dev: &Device) -> Result<(), Refused> {
        let p = self.port.port;
        for q in 0..self.engines.queues {
            for dir in [Dir::H2g, Dir::G2h] {
                let Some(ops) = self.engines.take(p, q, dir) else {
                    continue; // still registered on a device that did not give it back
                };
                if let Err(e) = async_channel_register(dev, dir.vring(q), self.engines.config, ops)
                {
                    // The channel is dropped with the error; its engine is gone for this port.
                    log::error!("port {p} queue {q} {}: async channel: {e}", dir.name());
                }
            }
        }
        self.port.new_device(dev)
    }

    fn destroy_device(&self, dev: &Device) {
        // First the lcores let go of the device; then what the channels hold comes back.
        self.port.destroy_device(dev);
        let p = self.port.port;
        let mut left = Vec::new();
        for q in 0..self.engines.queues {
            for dir in [Dir::H2g, Dir::G2h] {
                let vq = dir.vring(q);
                // h2g: copied into the guest (their used entries are written), only the mbufs
                // are left to free. g2h: taken from the guest but not forwarded; counted below.
                let cleared = async_clear_queue(dev, vq, &mut left);
                left.clear();
                if let Some(s) = async_stats(dev, vq) {
                    log::info!(
                        "port {p} queue {q} {}: async: submitted={} completed={} \
                         dma_copies={} cpu_copies={} dma_errors={} dropped={} drains={} \
                         cleared={cleared}",
                        dir.name(),
                        s.submitted,
                        s.completed,
                        s.dma_copies,
                        s.cpu_copies,
                        s.dma_errors,
                        s.dropped,
                        s.drains
                    );
                }
                match async_channel_unregister(dev, vq) {
                    Ok(ops) => self.engines.put(p, q, dir, ops),
                    Err(rvhost::net::AsyncError::NotRegistered { .. }) => {}
                    Err(e) => log::error!("port {p} queue {q} {}: async channel: {e}", dir.name()),
                }
            }
        }
    }
}
