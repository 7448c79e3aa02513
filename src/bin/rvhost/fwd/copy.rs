//! `--copy soft`: the ports' receive queues (host → guest) go through the async copy path,
//! with one channel of a software DMA engine per port and queue pair.
//!
//! The engine (a [`SoftDevice`] with one channel per port and queue pair) runs on a thread
//! of its own. A channel is registered on the device's vring in `new_device` and taken back
//! in `destroy_device`, after the lcores let go of the device and the packets still in it
//! were handed back, so that the next device of the port gets it again.

use std::sync::{Arc, Mutex};

use rvhost::dataplane::PortOps;
use rvhost::driver::{Device, DeviceOps, Refused};
use rvhost::net::{
    AsyncConfig, AsyncCopyOps, DmaCopy, QueuePair, async_channel_register,
    async_channel_unregister, async_clear_queue, async_stats,
};
use rvhost_dma::soft::{Idle, SoftConfig, SoftWorker, WorkerConfig};
use rvhost_dma::{ChannelConfig, DmaError, SoftDevice};

/// Jobs a channel holds at most (its ring).
const RING: u16 = 1024;

/// The channels not in use, per port and queue pair (index `port * queues + q`).
pub struct Engines {
    slots: Mutex<Vec<Option<Box<dyn AsyncCopyOps>>>>,
    queues: u16,
    config: AsyncConfig,
}

impl Engines {
    /// A software device with one channel per port and queue pair, running on its own thread
    /// (returned: it must outlive every device, so drop it after the ports are closed).
    pub fn soft(
        ports: usize,
        queues: u16,
        threshold: u32,
        lanes: usize,
    ) -> Result<(Arc<Engines>, SoftWorker), DmaError> {
        let n = ports * usize::from(queues);
        let (dev, engines) = SoftDevice::new(
            &SoftConfig::with_lanes(lanes),
            &vec![ChannelConfig::new(RING); n],
        )?;
        let worker = dev.spawn(WorkerConfig {
            idle: Idle::Yield,
            name: Some("rvhost-fwd-dma".into()),
            ..WorkerConfig::default()
        })?;
        let slots = engines
            .into_iter()
            .map(|e| Some(Box::new(DmaCopy::new(e)) as Box<dyn AsyncCopyOps>))
            .collect();
        let engines = Engines {
            slots: Mutex::new(slots),
            queues,
            config: AsyncConfig {
                threshold,
                ..AsyncConfig::default()
            },
        };
        Ok((Arc::new(engines), worker))
    }

    fn take(&self, port: usize, q: u16) -> Option<Box<dyn AsyncCopyOps>> {
        let i = port * usize::from(self.queues) + usize::from(q);
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)?
            .take()
    }

    fn put(&self, port: usize, q: u16, ops: Box<dyn AsyncCopyOps>) {
        let i = port * usize::from(self.queues) + usize::from(q);
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

/// A port's callbacks: the device table's, plus the async channels of its receive queues.
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
            let Some(ops) = self.engines.take(p, q) else {
                continue; // still registered on a device that did not give it back
            };
            if let Err(e) = async_channel_register(dev, QueuePair(q).rx(), self.engines.config, ops)
            {
                // The channel is dropped with the error; its engine is gone for this port.
                log::error!("port {p} queue {q}: async channel: {e}");
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
            let rx = QueuePair(q).rx();
            // Copied into the guest (their used entries are written): only the mbufs are left
            // to free, which dropping them does.
            async_clear_queue(dev, rx, &mut left);
            left.clear();
            if let Some(s) = async_stats(dev, rx) {
                log::info!(
                    "port {p} queue {q}: async: submitted={} completed={} dma_copies={} \
                     cpu_copies={} dma_errors={} dropped={} drains={}",
                    s.submitted,
                    s.completed,
                    s.dma_copies,
                    s.cpu_copies,
                    s.dma_errors,
                    s.dropped,
                    s.drains
                );
            }
            match async_channel_unregister(dev, rx) {
                Ok(ops) => self.engines.put(p, q, ops),
                Err(rvhost::net::AsyncError::NotRegistered { .. }) => {}
                Err(e) => log::error!("port {p} queue {q}: async channel: {e}"),
            }
        }
    }
}
