//! Device setup: reset, read the capabilities, configure one group holding engine 0 and one
//! dedicated work queue, enable the device and the queue (DPDK's `init_pci_device` and
//! `idxd_pci_dev_start`, for one queue).

use super::regs::*;
use crate::DmaError;
use crate::hw::mmio::Mmio;

/// Register reads a command may take before it counts as stuck.
const WAIT_READS: u32 = 100_000;

/// What a DSA device offers, from its capability and offset registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsaCaps {
    /// VERSION.
    pub version: u32,
    /// Groups.
    pub groups: u8,
    /// Engines.
    pub engines: u8,
    /// Work queues.
    pub wqs: u8,
    /// WQ entries to share among the WQs.
    pub total_wq_size: u16,
    /// Bytes of one WQ's WQCFG registers.
    pub wqcfg_bytes: usize,
    /// log2 of the largest transfer.
    pub max_xfer_shift: u8,
    /// log2 of the largest batch.
    pub max_batch_shift: u8,
    /// Dedicated WQs supported.
    pub dedicated: bool,
    /// Shared WQs supported.
    pub shared: bool,
    /// BAR offset of the GRPCFG table.
    pub grpcfg: usize,
    /// BAR offset of the WQCFG table.
    pub wqcfg: usize,
}

impl DsaCaps {
    /// Reads the capabilities of the device behind `bar`.
    pub fn read(bar: &impl Mmio) -> DsaCaps {
        let gencap = bar.read64(GENCAP);
        let wqcap = bar.read64(WQCAP);
        let offsets = bar.read64(OFFSETS);
        DsaCaps {
            version: bar.read32(VERSION),
            groups: bar.read64(GRPCAP) as u8,
            engines: bar.read64(ENGCAP) as u8,
            wqs: (wqcap >> 16) as u8,
            total_wq_size: wqcap as u16,
            wqcfg_bytes: 32 << ((wqcap >> 24) & 0xf),
            max_xfer_shift: ((gencap >> GENCAP_MAX_XFER_SHIFT) & 0x1f) as u8,
            max_batch_shift: ((gencap >> GENCAP_MAX_BATCH_SHIFT) & 0xf) as u8,
            dedicated: wqcap & WQCAP_DEDICATED_MODE != 0,
            shared: wqcap & WQCAP_SHARED_MODE != 0,
            grpcfg: usize::from(offsets as u16) * 0x100,
            wqcfg: usize::from((offsets >> 16) as u16) * 0x100,
        }
    }

    /// BAR offset of word `word` of WQ `wq`'s WQCFG.
    pub fn wqcfg_word(&self, wq: u8, word: usize) -> usize {
        self.wqcfg + usize::from(wq) * self.wqcfg_bytes + word * 4
    }

    /// BAR offset of register `reg` (a `GRPCFG_*` offset) of group `group`.
    pub fn grpcfg_reg(&self, group: u8, reg: usize) -> usize {
        self.grpcfg + usize::from(group) * GRPCFG_SIZE + reg
    }
}

/// Runs device command `cmd` with `operand` and waits for it: the error code CMDSTATUS
/// reports becomes [`DmaError::DeviceCommand`].
pub fn command(bar: &impl Mmio, cmd: u32, operand: u32) -> Result<(), DmaError> {
    bar.write32(CMD, cmd << CMD_SHIFT | (operand & 0xf_ffff));
    for _ in 0..WAIT_READS {
        let status = bar.read32(CMDSTATUS);
        if status & CMDSTATUS_ACTIVE == 0 {
            let code = (status & CMDSTATUS_ERR_MASK) as u8;
            return match code {
                0 => Ok(()),
                _ => Err(DmaError::DeviceCommand { cmd, code }),
            };
        }
        std::hint::spin_loop();
    }
    Err(DmaError::Device("a DSA command did not complete"))
}

/// A DSA device set up with one dedicated work queue (WQ 0, in group 0 with engine 0, holding
/// every WQ entry), enabled. Dropping it disables the queue and the device.
///
/// Descriptors are submitted by a [`DsaChannel`](super::DsaChannel), which takes the device
/// over.
#[derive(Debug)]
pub struct DsaDevice<M: Mmio> {
    bar: M,
    caps: DsaCaps,
    enabled: bool,
}

impl<M: Mmio> DsaDevice<M> {
    /// Resets the device behind `bar`, configures it and enables it and WQ 0.
    pub fn setup(bar: M) -> Result<DsaDevice<M>, DmaError> {
        command(&bar, cmd::RESET_DEVICE, 0)?;
        if bar.read32(GENSTS) & GENSTS_STATE_MASK != GENSTS_DISABLED {
            return Err(DmaError::Device("DSA device not disabled after a reset"));
        }
        let caps = DsaCaps::read(&bar);
        if caps.groups == 0 || caps.engines == 0 || caps.wqs == 0 || caps.total_wq_size == 0 {
            return Err(DmaError::Device("DSA device without group, engine or WQ"));
        }
        if !caps.dedicated {
            return Err(DmaError::Device("DSA device without dedicated WQs"));
        }
        // Forget any earlier configuration.
        for g in 0..caps.groups {
            bar.write64(caps.grpcfg_reg(g, GRPCFG_ENGINES), 0);
            bar.write64(caps.grpcfg_reg(g, GRPCFG_WQS), 0);
        }
        for w in 0..caps.wqs {
            bar.write32(caps.wqcfg_word(w, WQCFG_SIZE_WORD), 0);
        }
        bar.write64(caps.grpcfg_reg(0, GRPCFG_ENGINES), 1);
        bar.write64(caps.grpcfg_reg(0, GRPCFG_WQS), 1);
        bar.write32(
            caps.wqcfg_word(0, WQCFG_SIZE_WORD),
            u32::from(caps.total_wq_size),
        );
        bar.write32(
            caps.wqcfg_word(0, WQCFG_MODE_WORD),
            1 << WQ_PRIORITY_SHIFT | WQ_MODE_DEDICATED,
        );
        bar.write32(
            caps.wqcfg_word(0, WQCFG_SIZES_WORD),
            u32::from(caps.max_xfer_shift) | u32::from(caps.max_batch_shift) << WQ_BATCH_SHIFT,
        );
        command(&bar, cmd::ENABLE_DEV, 0)?;
        let mut dev = DsaDevice {
            bar,
            caps,
            enabled: true,
        };
        command(&dev.bar, cmd::ENABLE_WQ, 0)?;
        if !dev.wq_enabled() {
            dev.disable()?;
            return Err(DmaError::Device("DSA WQ 0 not enabled after ENABLE_WQ"));
        }
        Ok(dev)
    }

    /// The device's capabilities.
    pub fn caps(&self) -> &DsaCaps {
        &self.caps
    }

    /// The BAR.
    pub fn bar(&self) -> &M {
        &self.bar
    }

    /// Whether WQ 0 reads as enabled.
    pub fn wq_enabled(&self) -> bool {
        let state = self.bar.read32(self.caps.wqcfg_word(0, WQCFG_STATE_WORD));
        (state >> WQ_STATE_SHIFT) & 0x3 == WQ_STATE_ENABLED
    }

    /// Disables WQ 0 and the device.
    pub fn disable(&mut self) -> Result<(), DmaError> {
        if !self.enabled {
            return Ok(());
        }
        self.enabled = false;
        command(&self.bar, cmd::DISABLE_WQ, 1)?;
        command(&self.bar, cmd::DISABLE_DEV, 0)
    }
}

impl<M: Mmio> Drop for DsaDevice<M> {
    fn drop(&mut self) {
        if let Err(e) = self.disable() {
            log::error!("disabling the DSA device: {e}");
        }
    }
}
