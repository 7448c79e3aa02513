//! A thread of its own for a [`SoftDevice`]: [`SoftWorker`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{Counters, DeviceStats, SoftDevice};
use crate::DmaError;

/// What the worker does after a poll that found no work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Idle {
    /// Spin (`spin_loop` hint) and poll again: lowest latency, a whole core, like a PMD.
    Spin,
    /// Yield the core to other threads, then poll again: for shared cores and tests.
    #[default]
    Yield,
    /// Sleep this long, then poll again.
    Sleep(Duration),
}

/// How to run a [`SoftDevice`] on its own thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Pin the thread to this core (`core_affinity` id); a failure to pin is logged, not fatal.
    pub core: Option<usize>,
    /// Behaviour when a poll finds no work.
    pub idle: Idle,
    /// Thread name; default `rvhost-dma-soft`.
    pub name: Option<String>,
}

/// A [`SoftDevice`] running on a thread of its own. Dropping it stops the thread and joins it
/// (the device is then dropped: see the [module documentation](super) for what happens to the
/// jobs in flight); [`SoftWorker::stop`] does the same and hands the device back.
#[derive(Debug)]
pub struct SoftWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<SoftDevice>>,
    counters: Arc<Counters>,
}

impl SoftDevice {
    /// Moves the device onto a new thread that polls it until the returned worker is stopped
    /// or dropped.
    pub fn spawn(self, cfg: WorkerConfig) -> Result<SoftWorker, DmaError> {
        self.spawn_with(cfg, || 0)
    }

    /// Like [`spawn`](Self::spawn), and the thread's loop also calls `also` after each poll of
    /// the device: one polling thread serves the device and other work. `also` returns the
    /// work it did (0 if none); the thread idles only when both found nothing.
    pub fn spawn_with<F>(self, cfg: WorkerConfig, mut also: F) -> Result<SoftWorker, DmaError>
    where
        F: FnMut() -> usize + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::clone(&self.counters);
        let name = cfg.name.unwrap_or_else(|| "rvhost-dma-soft".to_owned());
        let (core, idle) = (cfg.core, cfg.idle);
        let flag = Arc::clone(&stop);
        let mut device = self;
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Some(id) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                        log::warn!("rvhost-dma: cannot pin the soft DMA worker to core {id}");
                    }
                }
                // Acquire: pairs with the Release store in `SoftWorker::halt` (nothing else is
                // handed over; it only keeps the loop from reading a stale flag for long).
                while !flag.load(Acquire) {
                    let work = device.poll() + also();
                    if work == 0 {
                        match idle {
                            Idle::Spin => std::hint::spin_loop(),
                            Idle::Yield => thread::yield_now(),
                            Idle::Sleep(d) => thread::sleep(d),
                        }
                    }
                }
                device
            })
            .map_err(DmaError::Spawn)?;
        Ok(SoftWorker {
            stop,
            thread: Some(thread),
            counters,
        })
    }
}

impl SoftWorker {
    /// A snapshot of the device's counters, while it runs.
    pub fn stats(&self) -> DeviceStats {
        self.counters.snapshot()
    }

    /// Stops the thread, joins it and returns the device (to poll it by hand, or spawn it
    /// again). Jobs in flight stay in flight. Errors: [`DmaError::WorkerPanicked`] (the device
    /// was dropped, hence stopped, while the thread unwound).
    pub fn stop(mut self) -> Result<SoftDevice, DmaError> {
        self.halt().ok_or(DmaError::WorkerPanicked)
    }

    fn halt(&mut self) -> Option<SoftDevice> {
        let thread = self.thread.take()?;
        self.stop.store(true, Release);
        thread.join().ok()
    }
}

impl Drop for SoftWorker {
    fn drop(&mut self) {
        // Dropping the returned device stops it.
        drop(self.halt());
    }
}
