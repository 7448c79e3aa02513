//! Channels over the device models, for `--copy ioat-model` and `--copy dsa-model`: the IOAT
//! and DSA drivers of rvhost-dma run unchanged over software models of the devices'
//! registers, so the data path's DMA code runs end to end where no such device exists.
//!
//! Each channel gets a model of its own (an IOAT model is one channel; a DSA model is a device
//! whose WQ 0 the driver sets up). The models' IOMMU is strict, as a device's behind VFIO with
//! the IOMMU on: an address nobody mapped is a fault the driver reports as a failed job (the
//! async path then copies with the CPU and counts a `dma_error`). What the models reach is
//! mapped: their rings and completion records by their drivers; the mbuf pool by
//! [`PoolMapping`] (the application's part, as in DPDK); guest memory by the driver of each
//! socket, through the mapper [`ModelChannels::mapper`] gives ([`Driver::set_dma_mapper`]).
//!
//! [`Driver::set_dma_mapper`]: rvhost::driver::Driver::set_dma_mapper

use std::ops::Range;
use std::sync::Arc;

use rvhost::mbuf::PktPool;
use rvhost::net::AsyncCopyOps;
use rvhost_dma::hw::{DmaMapper, MapperSet};
use rvhost_dma::model::{DsaModel, DsaModelConfig, IoatModel, IoatModelConfig, Served};
use rvhost_dma::{DmaError, Iova};

use super::drivers::{copy_device, dsa_channel, ioat_channel};

/// Which device the channels model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// IOAT (CBDMA) channels ([`IoatModel`]).
    Ioat,
    /// DSA devices, WQ 0 each ([`DsaModel`]).
    Dsa,
}

impl ModelKind {
    /// `ioat-model` or `dsa-model`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Ioat => "ioat-model",
            ModelKind::Dsa => "dsa-model",
        }
    }

    /// `ioat` or `dsa`: the device itself (`--copy ioat:BDF`).
    pub fn device_name(self) -> &'static str {
        match self {
            ModelKind::Ioat => "ioat",
            ModelKind::Dsa => "dsa",
        }
    }
}

/// Channels over models, as the async path's copy devices, and the models serving them.
pub struct ModelChannels {
    /// One copy device per channel asked for.
    pub channels: Vec<Box<dyn AsyncCopyOps>>,
    /// The models, to step (in a loop of the caller's) or serve from a thread
    /// ([`rvhost_dma::model::ModelWorker::serve`]). Nothing is processed until then.
    pub models: Vec<Served>,
}

impl ModelChannels {
    /// One mapper programming the IOMMUs of the models `which` (indexes of `models`): what a
    /// socket whose queues use those channels gives its driver.
    pub fn mapper(&self, which: Range<usize>) -> Arc<dyn DmaMapper> {
        mapper_of(&self.models[which])
    }
}

/// One mapper programming the IOMMUs of `models`.
pub fn mapper_of(models: &[Served]) -> Arc<dyn DmaMapper> {
    let members = models
        .iter()
        .map(|m| Arc::new(m.clone()) as Arc<dyn DmaMapper>)
        .collect();
    Arc::new(MapperSet::new(members))
}

/// An mbuf pool's memory mapped in some IOMMUs (the models', or the containers of functions
/// opened through VFIO; IOVA = VA) for as long as this lives;
/// it keeps a handle of the pool, so the memory outlives the mapping.
pub struct PoolMapping {
    mapper: Arc<dyn DmaMapper>,
    ranges: Vec<(*const u8, usize)>,
    _pool: PktPool,
}

impl PoolMapping {
    /// Maps every memory range of `pool` through `mapper`; on a failure, unmaps what it
    /// mapped and returns the error.
    pub fn new(pool: &PktPool, mapper: Arc<dyn DmaMapper>) -> Result<PoolMapping, DmaError> {
        let mut out = PoolMapping {
            mapper,
            ranges: Vec::new(),
            _pool: pool.clone(),
        };
        for (va, len) in pool.memory_ranges() {
            // SAFETY: the range is the pool's memory, which `out._pool` keeps allocated until
            // `out` drops, and `drop` unmaps it first; mbuf data is only reached through raw
            // pointers while a copy may be writing it (the async path's rule).
            unsafe { out.mapper.map(Iova::from_ptr(va), va, len) }?;
            out.ranges.push((va, len));
        }
        Ok(out)
    }
}

impl Drop for PoolMapping {
    fn drop(&mut self) {
        for &(va, len) in &self.ranges {
            self.mapper.unmap(Iova::from_ptr(va), len);
        }
    }
}

// SAFETY: the raw pointers are addresses only (never dereferenced here); the pool handle and
// the mapper are Send + Sync.
unsafe impl Send for PoolMapping {}

/// `n` channels of `ring` jobs over models of `kind`, their IOMMUs strict (see the
/// [module documentation](self)): map the pool with [`PoolMapping`] and guest memory through
/// [`ModelChannels::mapper`] before traffic.
pub fn model_channels(kind: ModelKind, n: usize, ring: u16) -> Result<ModelChannels, DmaError> {
    let mut out = ModelChannels {
        channels: Vec::with_capacity(n),
        models: Vec::with_capacity(n),
    };
    for _ in 0..n {
        // The drivers' channels are built as over a device's BAR (`drivers`), the model
        // standing in for the BAR (and portal) and for the IOMMU.
        match kind {
            ModelKind::Ioat => {
                let model = IoatModel::new(IoatModelConfig::default());
                let ch = ioat_channel(model.clone(), ring, Arc::new(model.clone()))?;
                // The model checks that DMACOUNT never puts more than the ring in flight.
                model.set_max_pending(u16::try_from(ch.descriptors() - 1).unwrap_or(u16::MAX));
                out.channels.push(copy_device(ch));
                out.models.push(Served::Ioat(model));
            }
            ModelKind::Dsa => {
                // Four descriptors in progress at once, finished newest first: completions
                // arrive out of order, as with several engines.
                let model = DsaModel::new(DsaModelConfig {
                    parallel: 4,
                    ..DsaModelConfig::default()
                });
                let ch = dsa_channel(
                    model.clone(),
                    model.portal(0),
                    ring,
                    Arc::new(model.clone()),
                )?;
                out.channels.push(copy_device(ch));
                out.models.push(Served::Dsa(model));
            }
        }
    }
    Ok(out)
}

/// Logs the rules the models saw broken (none, unless a driver has a bug): called once the
/// channels are gone.
pub fn report_violations(models: &[Served]) {
    for (i, m) in models.iter().enumerate() {
        for v in m.violations() {
            log::error!("DMA model {i}: {v}");
        }
    }
}
