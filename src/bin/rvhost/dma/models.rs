//! Channels over the device models, for `--copy ioat-model` and `--copy dsa-model`: the IOAT
//! and DSA drivers of rvhost-dma run unchanged over software models of the devices'
//! registers, so the data path's DMA code runs end to end where no such device exists.
//!
//! Each channel gets a model of its own (an IOAT model is one channel; a DSA model is a device
//! whose WQ 0 the driver sets up). The models' IOMMU is in passthrough: the data path copies
//! between guest memory and mbufs, and rvhost has no hook yet to tell a device about a guest's
//! memory when its table changes (what DPDK's vhost does on SET_MEM_TABLE with
//! `async_dma_map`), so the models reach any address a descriptor names, as a device does with
//! the IOMMU off or in pass-through mode.

use std::sync::Arc;

use rvhost::net::{AsyncCopyOps, DmaCopy};
use rvhost_dma::hw::{DsaChannel, DsaDevice, IoatChannel};
use rvhost_dma::model::{DsaModel, DsaModelConfig, IoatModel, IoatModelConfig, Served};
use rvhost_dma::{ChannelConfig, DmaError};

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
}

/// Channels over models, as the async path's copy devices, and the models serving them.
pub struct ModelChannels {
    /// One copy device per channel asked for.
    pub channels: Vec<Box<dyn AsyncCopyOps>>,
    /// The models, to step (in a loop of the caller's) or serve from a thread
    /// ([`rvhost_dma::model::ModelWorker::serve`]). Nothing is processed until then.
    pub models: Vec<Served>,
}

/// `n` channels of `ring` jobs over models of `kind`, in IOMMU passthrough (see the
/// [module documentation](self)).
pub fn model_channels(kind: ModelKind, n: usize, ring: u16) -> Result<ModelChannels, DmaError> {
    // The data path copies contiguous ranges only.
    let cfg = ChannelConfig {
        max_sges: 1,
        ..ChannelConfig::new(ring)
    };
    let mut out = ModelChannels {
        channels: Vec::with_capacity(n),
        models: Vec::with_capacity(n),
    };
    for _ in 0..n {
        match kind {
            ModelKind::Ioat => {
                let model = IoatModel::new(IoatModelConfig::default());
                // SAFETY: only the channel below submits to the model: its own rings, and jobs
                // whose memory the async path keeps valid until they are reported (the
                // contract of `AsyncCopyOps::transfer_data`, which `DmaCopy` passes to `copy`).
                unsafe { model.set_passthrough(true) };
                let ch = IoatChannel::new(model.clone(), &cfg, Arc::new(model.clone()))?;
                // The model checks that DMACOUNT never puts more than the ring in flight.
                model.set_max_pending(u16::try_from(ch.descriptors() - 1).unwrap_or(u16::MAX));
                out.channels.push(Box::new(DmaCopy::new(ch)));
                out.models.push(Served::Ioat(model));
            }
            ModelKind::Dsa => {
                // Four descriptors in progress at once, finished newest first: completions
                // arrive out of order, as with several engines.
                let model = DsaModel::new(DsaModelConfig {
                    parallel: 4,
                    ..DsaModelConfig::default()
                });
                // SAFETY: as for the IOAT model above.
                unsafe { model.set_passthrough(true) };
                let dev = DsaDevice::setup(model.clone())?;
                let ch = DsaChannel::new(dev, model.portal(0), &cfg, Arc::new(model.clone()))?;
                out.channels.push(Box::new(DmaCopy::new(ch)));
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
