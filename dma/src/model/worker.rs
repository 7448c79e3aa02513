//! Thread mode: a device model served by a thread of its own ([`ModelWorker`]), which polls
//! it (its doorbell, DMACOUNT, or its WQs' portals) and processes descriptors as they come,
//! as the device would. A driver over a model served this way is an engine like any other,
//! for the data path; step mode ([`IoatModel::run`], [`DsaModel::run`] on the test's thread)
//! stays what deterministic tests use.
//!
//! The model is unchanged by the thread: every register access and every step takes the
//! model's lock, so the driver's accesses interleave with the thread's steps as they would
//! with silicon's work (a step processes a few descriptors, then lets go of the lock).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::thread::{self, JoinHandle};

use super::{DsaModel, IoatModel};
use crate::hw::DmaMapper;
use crate::soft::{Idle, WorkerConfig};
use crate::{DmaError, Iova};

/// Descriptors an IOAT model processes per lock taken.
const IOAT_STEP: usize = 32;
/// Work descriptors a DSA model advances per lock taken.
const DSA_STEP: usize = 16;

/// A model a [`ModelWorker`] serves.
#[derive(Clone, Debug)]
pub enum Served {
    /// An IOAT channel.
    Ioat(IoatModel),
    /// A DSA device.
    Dsa(DsaModel),
}

impl Served {
    /// Steps the model once: up to a few descriptors (see the models' `run`); returns how many
    /// it processed.
    pub fn step(&self) -> usize {
        match self {
            Served::Ioat(m) => m.run(IOAT_STEP),
            Served::Dsa(m) => m.run(DSA_STEP),
        }
    }

    /// The model's IOMMU mappings, `(iova, len)` in address order (its `mappings`).
    pub fn mappings(&self) -> Vec<(Iova, u64)> {
        match self {
            Served::Ioat(m) => m.mappings(),
            Served::Dsa(m) => m.mappings(),
        }
    }

    /// Every rule of the model's broken so far (its `violations`).
    pub fn violations(&self) -> Vec<String> {
        match self {
            Served::Ioat(m) => m.violations(),
            Served::Dsa(m) => m.violations(),
        }
    }
}

/// The model's IOMMU (its [`DmaMapper`] implementation).
impl DmaMapper for Served {
    unsafe fn map(&self, iova: Iova, va: *const u8, len: usize) -> Result<(), DmaError> {
        match self {
            // SAFETY: this method's contract is `map`'s, passed on to the model.
            Served::Ioat(m) => unsafe { DmaMapper::map(m, iova, va, len) },
            // SAFETY: as above.
            Served::Dsa(m) => unsafe { DmaMapper::map(m, iova, va, len) },
        }
    }

    fn unmap(&self, iova: Iova, len: usize) {
        match self {
            Served::Ioat(m) => DmaMapper::unmap(m, iova, len),
            Served::Dsa(m) => DmaMapper::unmap(m, iova, len),
        }
    }
}

/// Device models served by a thread of their own (see the [module documentation](self)).
/// Dropping it stops the thread and joins it; the model itself lives on (other handles keep
/// it), back in step mode. Descriptors not yet processed then stay where they are.
#[derive(Debug)]
pub struct ModelWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ModelWorker {
    /// Serves `models` from one thread of their own (thread `rvhost-dma-model` unless `cfg`
    /// names it): each turn steps every model once, until the worker is stopped or dropped.
    pub fn serve(models: Vec<Served>, cfg: WorkerConfig) -> Result<ModelWorker, DmaError> {
        ModelWorker::spawn(cfg, "rvhost-dma-model", move || {
            models.iter().map(Served::step).sum()
        })
    }

    /// Runs `step` (which returns the work it did, 0 if none) on a new thread until the worker
    /// is stopped or dropped, idling as `cfg` says after a step that found nothing.
    fn spawn<F>(cfg: WorkerConfig, name: &str, mut step: F) -> Result<ModelWorker, DmaError>
    where
        F: FnMut() -> usize + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (core, idle) = (cfg.core, cfg.idle);
        let thread = thread::Builder::new()
            .name(cfg.name.unwrap_or_else(|| name.to_owned()))
            .spawn(move || {
                if let Some(id) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                        log::warn!("rvhost-dma: cannot pin the model's thread to core {id}");
                    }
                }
                // Acquire: pairs with the Release store in `halt`; nothing else is handed over.
                while !flag.load(Acquire) {
                    if step() == 0 {
                        match idle {
                            Idle::Spin => std::hint::spin_loop(),
                            Idle::Yield => thread::yield_now(),
                            Idle::Sleep(d) => thread::sleep(d),
                        }
                    }
                }
            })
            .map_err(DmaError::Spawn)?;
        Ok(ModelWorker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and joins it. Errors: [`DmaError::WorkerPanicked`] if the thread
    /// panicked (the model's lock then recovers from the poison: the model stays usable).
    pub fn stop(mut self) -> Result<(), DmaError> {
        self.halt()
    }

    fn halt(&mut self) -> Result<(), DmaError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Release);
        thread.join().map_err(|_| DmaError::WorkerPanicked)
    }
}

impl Drop for ModelWorker {
    fn drop(&mut self) {
        if self.halt().is_err() {
            log::error!("rvhost-dma: a device model's thread panicked");
        }
    }
}

impl IoatModel {
    /// Serves the channel from a thread of its own (thread `rvhost-ioat-model` unless `cfg`
    /// names it): the thread processes descriptors as soon as DMACOUNT makes them pending,
    /// until the returned worker is stopped or dropped.
    pub fn spawn(&self, cfg: WorkerConfig) -> Result<ModelWorker, DmaError> {
        let model = Served::Ioat(self.clone());
        ModelWorker::spawn(cfg, "rvhost-ioat-model", move || model.step())
    }
}

impl DsaModel {
    /// Serves the device from a thread of its own (thread `rvhost-dsa-model` unless `cfg`
    /// names it): its engines take descriptors from the WQs as soon as a portal receives them,
    /// until the returned worker is stopped or dropped.
    pub fn spawn(&self, cfg: WorkerConfig) -> Result<ModelWorker, DmaError> {
        let model = Served::Dsa(self.clone());
        ModelWorker::spawn(cfg, "rvhost-dsa-model", move || model.step())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::hw::{DsaChannel, DsaDevice, IoatChannel};
    use crate::model::{DsaModelConfig, IoatModelConfig};
    use crate::{ChannelConfig, DmaEngine, Iova, OpFlags};

    /// Copies `n` jobs of varied sizes and offsets between two buffers mapped in the model,
    /// waiting for completions without ever stepping the model: its thread must do the work.
    /// `map(iova, len, true)` maps a range in the model, `map(iova, len, false)` unmaps it.
    /// Returns how many jobs it ran.
    fn copies_byte_for_byte(
        engine: &mut dyn DmaEngine,
        map: &dyn Fn(Iova, u64, bool) -> bool,
    ) -> u64 {
        const LEN: usize = 1 << 16;
        let src: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 253) as u8).collect();
        let mut dst = vec![0u8; LEN];
        let (s, d) = (
            Iova::from_ptr(src.as_ptr()),
            Iova::from_mut_ptr(dst.as_mut_ptr()),
        );
        assert!(map(s, LEN as u64, true) && map(d, LEN as u64, true));
        let mut off = 0usize;
        let mut jobs = 0u32;
        let start = Instant::now();
        let mut done = 0u32;
        while off < LEN || done < jobs {
            let len = (jobs as usize * 37 % 1500 + 1).min(LEN - off);
            if off < LEN && engine.burst_capacity() > 0 {
                // SAFETY: both buffers outlive every job (all are reported before the loop
                // ends), each destination range is written by one job only, and nothing reads
                // `dst` before then.
                unsafe {
                    engine.copy(
                        Iova(s.0 + off as u64),
                        Iova(d.0 + off as u64),
                        len as u32,
                        OpFlags::SUBMIT,
                    )
                }
                .unwrap();
                off += len;
                jobs += 1;
            }
            let c = engine.completed(64);
            assert!(!c.has_error);
            done += u32::from(c.count);
            assert!(start.elapsed() < Duration::from_secs(20), "stuck at {done}");
        }
        assert_eq!(src, dst);
        assert!(map(s, LEN as u64, false) && map(d, LEN as u64, false));
        u64::from(jobs)
    }

    #[test]
    fn ioat_channel_over_threaded_model_copies() {
        let model = IoatModel::new(IoatModelConfig::default());
        let mut ch = IoatChannel::new(
            model.clone(),
            &ChannelConfig::new(64),
            Arc::new(model.clone()),
        )
        .unwrap();
        let worker = model.spawn(WorkerConfig::default()).unwrap();
        let jobs = copies_byte_for_byte(&mut ch, &|iova, len, on| {
            // SAFETY: the buffers are unmapped before they are dropped.
            on && unsafe { model.map(iova, len) } || !on && model.unmap(iova, len)
        });
        assert!(jobs > 50);
        assert_eq!(model.stats().descriptors, jobs);
        // Stopped: nothing is processed any more, until the model is stepped by hand.
        worker.stop().unwrap();
        let src = [5u8; 64];
        let mut dst = [0u8; 64];
        let (s, d) = (
            Iova::from_ptr(src.as_ptr()),
            Iova::from_mut_ptr(dst.as_mut_ptr()),
        );
        // SAFETY: unmapped before the end of the test; both arrays outlive the job, reported below.
        unsafe {
            assert!(model.map(s, 64) && model.map(d, 64));
            ch.copy(s, d, 64, OpFlags::SUBMIT).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ch.completed(8).count, 0, "no thread serves the model");
        assert_eq!(model.run(8), 1);
        assert_eq!(ch.completed(8).count, 1);
        drop(ch);
        assert!(model.unmap(s, 64) && model.unmap(d, 64));
        assert_eq!(dst, src);
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }

    #[test]
    fn dsa_channel_over_threaded_model_copies() {
        let model = DsaModel::new(DsaModelConfig {
            parallel: 4,
            ..Default::default()
        });
        let dev = DsaDevice::setup(model.clone()).unwrap();
        let mut ch = DsaChannel::new(
            dev,
            model.portal(0),
            &ChannelConfig::new(64),
            Arc::new(model.clone()),
        )
        .unwrap();
        let worker = model.spawn(WorkerConfig::default()).unwrap();
        let jobs = copies_byte_for_byte(&mut ch, &|iova, len, on| {
            // SAFETY: the buffers are unmapped before they are dropped.
            on && unsafe { model.map(iova, len) } || !on && model.unmap(iova, len)
        });
        assert!(jobs > 50);
        assert_eq!(model.stats().descriptors, jobs);
        drop(worker);
        drop(ch);
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }

    #[test]
    fn one_thread_serves_several_models_in_passthrough() {
        let ioat = IoatModel::new(IoatModelConfig::default());
        let dsa = DsaModel::new(DsaModelConfig::default());
        // SAFETY: only the channels below submit to the models, under the DMA contract.
        unsafe {
            ioat.set_passthrough(true);
            dsa.set_passthrough(true);
        }
        let cfg = ChannelConfig::new(32);
        let mut a = IoatChannel::new(ioat.clone(), &cfg, Arc::new(ioat.clone())).unwrap();
        let dev = DsaDevice::setup(dsa.clone()).unwrap();
        let mut b = DsaChannel::new(dev, dsa.portal(0), &cfg, Arc::new(dsa.clone())).unwrap();
        let rings = (ioat.mappings().len(), dsa.mappings().len());
        let worker = ModelWorker::serve(
            vec![Served::Ioat(ioat.clone()), Served::Dsa(dsa.clone())],
            WorkerConfig::default(),
        )
        .unwrap();
        // Nothing of the test's buffers is mapped: passthrough lets the models reach them.
        let jobs = copies_byte_for_byte(&mut a, &|_, _, _| true);
        assert_eq!(ioat.stats().descriptors, jobs);
        let jobs = copies_byte_for_byte(&mut b, &|_, _, _| true);
        assert_eq!(dsa.stats().descriptors, jobs);
        assert_eq!((ioat.mappings().len(), dsa.mappings().len()), rings);
        worker.stop().unwrap();
        drop((a, b));
        assert!(ioat.violations().is_empty() && dsa.violations().is_empty());
    }
}
