//! The IOAT and DSA drivers' channels as the data path uses them, over any BAR: the one place
//! that builds them, for the models (`--copy ioat-model|dsa-model`, [`super::models`]) and
//! for functions opened through VFIO (`--copy ioat:BDF|dsa:BDF`, [`super::device`]). What
//! runs over a model in the tests is what would run over a device's BAR.

use std::sync::Arc;

use rvhost::net::{AsyncCopyOps, DmaCopy};
use rvhost_dma::hw::dsa::Portal;
use rvhost_dma::hw::{DmaMapper, DsaChannel, DsaDevice, IoatChannel, Mmio};
use rvhost_dma::{ChannelConfig, DmaEngine, DmaError};

/// A channel of `ring` jobs as the data path uses it: contiguous copies only.
pub fn channel_config(ring: u16) -> ChannelConfig {
    ChannelConfig {
        max_sges: 1,
        ..ChannelConfig::new(ring)
    }
}

/// The IOAT channel behind `bar` (a function's BAR0 registers, or a model), its ring mapped
/// through `mapper` (the IOMMU the channel's device is behind).
pub fn ioat_channel<M: Mmio>(
    bar: M,
    ring: u16,
    mapper: Arc<dyn DmaMapper>,
) -> Result<IoatChannel<M>, DmaError> {
    IoatChannel::new(bar, &channel_config(ring), mapper)
}

/// The DSA device behind `bar` (BAR0 registers, or a model) reset and set up with WQ 0, and
/// the channel over that WQ submitting through `portal` (WQ 0's portal), its rings mapped
/// through `mapper`. On an error nothing is left enabled or mapped (the device is disabled
/// when it drops).
pub fn dsa_channel<M: Mmio, P: Portal>(
    bar: M,
    portal: P,
    ring: u16,
    mapper: Arc<dyn DmaMapper>,
) -> Result<DsaChannel<M, P>, DmaError> {
    let dev = DsaDevice::setup(bar)?;
    DsaChannel::new(dev, portal, &channel_config(ring), mapper)
}

/// A channel as the async path's copy device.
pub fn copy_device<E: DmaEngine + Send + 'static>(channel: E) -> Box<dyn AsyncCopyOps> {
    Box::new(DmaCopy::new(channel))
}

#[cfg(test)]
mod tests {
    use rvhost_dma::model::{DsaModel, DsaModelConfig, IoatModel, IoatModelConfig};
    use rvhost_dma::{Iova, OpFlags};

    use super::*;

    /// One copy through `ch`, its buffers mapped in `mapper`, the device stepped by `step`.
    fn one_copy(ch: &mut impl DmaEngine, mapper: &dyn DmaMapper, step: impl Fn()) {
        let src: Vec<u8> = (0..=255).collect();
        let mut dst = vec![0u8; 256];
        // The device writes it: a pointer that may write, not one from a shared borrow.
        let dst_p = dst.as_mut_ptr().cast_const();
        // SAFETY: both buffers live until after the unmaps below, and the job is reported
        // (or the test fails) before they are read or dropped.
        unsafe {
            mapper
                .map(Iova::from_ptr(src.as_ptr()), src.as_ptr(), 256)
                .unwrap();
            mapper.map(Iova::from_ptr(dst_p), dst_p, 256).unwrap();
            ch.copy(
                Iova::from_ptr(src.as_ptr()),
                Iova::from_ptr(dst_p),
                256,
                OpFlags::SUBMIT,
            )
            .unwrap();
        }
        let mut done = 0;
        for _ in 0..100 {
            step();
            let c = ch.completed(1);
            assert!(!c.has_error);
            done += c.count;
            if done == 1 {
                break;
            }
        }
        assert_eq!(done, 1, "the copy never completed");
        mapper.unmap(Iova::from_ptr(src.as_ptr()), 256);
        mapper.unmap(Iova::from_ptr(dst_p), 256);
        assert_eq!(src, dst);
    }

    #[test]
    fn ioat_channel_over_the_model_maps_its_ring_copies_and_unmaps() {
        let model = IoatModel::new(IoatModelConfig::default());
        let mapper: Arc<dyn DmaMapper> = Arc::new(model.clone());
        let mut ch = ioat_channel(model.clone(), 64, Arc::clone(&mapper)).unwrap();
        assert_eq!(model.mappings().len(), 1, "the ring and completion word");
        one_copy(&mut ch, &*mapper, || {
            model.run(16);
        });
        drop(ch);
        assert!(model.mappings().is_empty());
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }

    #[test]
    fn dsa_channel_over_the_model_sets_up_wq0_copies_and_disables() {
        let model = DsaModel::new(DsaModelConfig::default());
        let mapper: Arc<dyn DmaMapper> = Arc::new(model.clone());
        let mut ch = dsa_channel(model.clone(), model.portal(0), 64, Arc::clone(&mapper)).unwrap();
        assert!(ch.device().wq_enabled());
        assert_eq!(
            model.mappings().len(),
            1,
            "descriptors and completion records"
        );
        one_copy(&mut ch, &*mapper, || {
            model.run(16);
        });
        drop(ch);
        assert!(model.mappings().is_empty());
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }

    /// An IOMMU that refuses every mapping (e.g. VFIO past `RLIMIT_MEMLOCK`).
    struct Refuse;

    impl DmaMapper for Refuse {
        unsafe fn map(&self, _: Iova, _: *const u8, _: usize) -> Result<(), DmaError> {
            Err(DmaError::Device("refused"))
        }
        fn unmap(&self, _: Iova, _: usize) {
            panic!("nothing was mapped");
        }
    }

    #[test]
    fn a_failed_setup_leaves_nothing_mapped_or_enabled() {
        // A ring the IOAT driver refuses (beyond its descriptors): refused before mapping.
        let model = IoatModel::new(IoatModelConfig::default());
        assert!(ioat_channel(model.clone(), 32768, Arc::new(model.clone())).is_err());
        assert!(model.mappings().is_empty());
        // Its rings refused by the IOMMU.
        let e = ioat_channel(model.clone(), 64, Arc::new(Refuse)).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        // DSA: set up, then its rings refused; the device is disabled again.
        let model = DsaModel::new(DsaModelConfig::default());
        let e = dsa_channel(model.clone(), model.portal(0), 64, Arc::new(Refuse)).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        use rvhost_dma::hw::dsa::regs::{GENSTS, GENSTS_DISABLED, GENSTS_STATE_MASK};
        assert_eq!(model.read32(GENSTS) & GENSTS_STATE_MASK, GENSTS_DISABLED);
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }
}
