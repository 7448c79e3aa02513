//! [`DsaModel`]: the configuration interface of a DSA device in software, behind [`Mmio`]:
//! capability registers, the GRPCFG and WQCFG tables, GENSTS, and the command interface (CMD /
//! CMDSTATUS) with the error codes ENABLE_DEV, ENABLE_WQ, DISABLE_DEV and DISABLE_WQ report.
//!
//! # Rules (each broken one is an error code, or a violation for writes silicon ignores)
//!
//! * ENABLE_DEV: refused if enabled (DEV_ENABLED); if the enabled-to-be WQs (size > 0) add up
//!   to more than WQCAP's total (WQ_SIZE_ERANGE); if a sized WQ is in no group or in two, an
//!   engine in two groups, a group with WQs but no engine, or a bit beyond the counts
//!   (GRP_CONFIG).
//! * ENABLE_WQ (operand: index): INVAL_WQIDX, DEV_NOTEN, WQ_ENABLED, WQ_SIZE (size 0),
//!   WQ_PRIOR (priority 0, an assumption), WQ_MODE (a mode WQCAP does not offer),
//!   MAX_XFER_SIZE / MAX_BATCH_SIZE (shifts above GENCAP's).
//! * DISABLE_DEV: DIS_DEV_EN if not enabled; disables every WQ. DISABLE_WQ (operand: bitmap):
//!   DEV_NOT_EN, INVAL_WQIDX. RESET_DEVICE: everything disabled and the tables zeroed (DPDK
//!   zeroes them itself after a reset, so either behaviour suits it). Other commands:
//!   INVAL_CMD.
//! * Violations: GRPCFG written while the device is enabled, a WQ's WQCFG written while it is
//!   enabled, the WQ state word or a read-only register written, wrong widths, unmodelled
//!   offsets.
//!
//! # Not modelled
//!
//! Descriptor processing, portals, completion records, batches, shared-WQ ENQCMD, interrupts,
//! PASID, traffic classes, drain and abort, error logging in SWERR. Commands complete at once.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::hw::dsa::regs::*;
use crate::hw::mmio::Mmio;

/// Configuration of a [`DsaModel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsaModelConfig {
    /// Groups, `1..=64`. Default 4.
    pub groups: u8,
    /// Engines, `1..=64`. Default 4.
    pub engines: u8,
    /// Work queues, `1..=64`. Default 8.
    pub wqs: u8,
    /// WQ entries to share. Default 128.
    pub total_wq_size: u16,
    /// GENCAP's max transfer shift. Default 31.
    pub max_xfer_shift: u8,
    /// GENCAP's max batch shift. Default 10.
    pub max_batch_shift: u8,
    /// WQCAP: dedicated WQs. Default true.
    pub dedicated_mode: bool,
    /// WQCAP: shared WQs. Default true.
    pub shared_mode: bool,
}

impl Default for DsaModelConfig {
    fn default() -> Self {
        DsaModelConfig {
            groups: 4,
            engines: 4,
            wqs: 8,
            total_wq_size: 128,
            max_xfer_shift: 31,
            max_batch_shift: 10,
            dedicated_mode: true,
            shared_mode: true,
        }
    }
}

/// Where the model puts its tables (OFFSETS, in units of 0x100).
const GRPCFG_AT: usize = 0x400;
const WQCFG_AT: usize = 0x800;
/// 32-bit words of one WQCFG (WQCAP's WQCFG size field 0: 32 bytes).
const WQCFG_WORDS: usize = 8;

#[derive(Clone, Copy, Default)]
struct Group {
    wqs: [u64; 4],
    engines: u64,
    flags: u32,
}

struct Dev {
    cfg: DsaModelConfig,
    enabled: bool,
    groups: Vec<Group>,
    wqcfg: Vec<[u32; WQCFG_WORDS]>,
    wq_enabled: Vec<bool>,
    gencfg: u32,
    genctrl: u32,
    cmdstatus: u32,
    violations: Vec<String>,
}

/// The configuration interface of a DSA device (see the [module documentation](self)).
/// Clones are handles to the same device.
#[derive(Clone)]
pub struct DsaModel {
    inner: Arc<Mutex<Dev>>,
}

impl std::fmt::Debug for DsaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.lock();
        f.debug_struct("DsaModel")
            .field("enabled", &d.enabled)
            .field("wq_enabled", &d.wq_enabled)
            .field("cmdstatus", &format_args!("{:#x}", d.cmdstatus))
            .finish_non_exhaustive()
    }
}

impl Dev {
    fn violation(&mut self, what: String) {
        log::warn!("DSA model: {what}");
        self.violations.push(what);
    }

    fn n_wqs(&self) -> usize {
        usize::from(self.cfg.wqs)
    }

    fn gencap(&self) -> u64 {
        u64::from(self.cfg.max_xfer_shift & 0x1f) << GENCAP_MAX_XFER_SHIFT
            | u64::from(self.cfg.max_batch_shift & 0xf) << GENCAP_MAX_BATCH_SHIFT
    }

    fn wqcap(&self) -> u64 {
        let mut cap = u64::from(self.cfg.total_wq_size) | u64::from(self.cfg.wqs) << 16;
        if self.cfg.shared_mode {
            cap |= WQCAP_SHARED_MODE;
        }
        if self.cfg.dedicated_mode {
            cap |= WQCAP_DEDICATED_MODE;
        }
        cap
    }

    /// The ENABLE_DEV checks; the error code if one fails.
    fn check_config(&self) -> Result<(), u8> {
        let wq_mask = low_bits(self.cfg.wqs);
        let eng_mask = low_bits(self.cfg.engines);
        let sized: u64 = (0..self.n_wqs())
            .filter(|&w| self.wqcfg[w][WQCFG_SIZE_WORD] != 0)
            .fold(0, |m, w| m | 1 << w);
        let total: u64 = (self.wqcfg.iter())
            .map(|w| u64::from(w[WQCFG_SIZE_WORD]))
            .sum();
        if total > u64::from(self.cfg.total_wq_size) {
            return Err(err::WQ_SIZE_ERANGE);
        }
        let (mut wqs_seen, mut engs_seen) = (0u64, 0u64);
        for g in &self.groups {
            let (wqs, engs) = (g.wqs[0], g.engines);
            let beyond = wqs & !wq_mask != 0 || engs & !eng_mask != 0;
            let beyond = beyond || g.wqs[1..].iter().any(|&w| w != 0);
            let twice = wqs & wqs_seen != 0 || engs & engs_seen != 0;
            let idle = wqs & sized != 0 && engs == 0;
            if beyond || twice || idle {
                return Err(err::GRP_CONFIG);
            }
            wqs_seen |= wqs;
            engs_seen |= engs;
        }
        if sized & !wqs_seen != 0 {
            return Err(err::GRP_CONFIG);
        }
        Ok(())
    }

    /// The ENABLE_WQ checks for WQ `w` (in range).
    fn check_wq(&self, w: usize) -> Result<(), u8> {
        let cfg = &self.wqcfg[w];
        if !self.enabled {
            return Err(err::DEV_NOTEN);
        }
        if self.wq_enabled[w] {
            return Err(err::WQ_ENABLED);
        }
        if cfg[WQCFG_SIZE_WORD] == 0 {
            return Err(err::WQ_SIZE);
        }
        let mode = cfg[WQCFG_MODE_WORD];
        if (mode >> WQ_PRIORITY_SHIFT) & 0xf == 0 {
            return Err(err::WQ_PRIOR);
        }
        let dedicated = mode & WQ_MODE_DEDICATED != 0;
        if (dedicated && !self.cfg.dedicated_mode) || (!dedicated && !self.cfg.shared_mode) {
            return Err(err::WQ_MODE);
        }
        let sizes = cfg[WQCFG_SIZES_WORD];
        if sizes & 0x1f > u32::from(self.cfg.max_xfer_shift) {
            return Err(err::MAX_XFER_SIZE);
        }
        if (sizes >> WQ_BATCH_SHIFT) & 0xf > u32::from(self.cfg.max_batch_shift) {
            return Err(err::MAX_BATCH_SIZE);
        }
        Ok(())
    }

    fn command(&mut self, val: u32) -> u8 {
        let (code, operand) = (val >> CMD_SHIFT & 0x1f, val & 0xf_ffff);
        let result = match code {
            cmd::ENABLE_DEV if self.enabled => Err(err::DEV_ENABLED),
            cmd::ENABLE_DEV => self.check_config().map(|()| self.enabled = true),
            cmd::DISABLE_DEV if !self.enabled => Err(err::DIS_DEV_EN),
            cmd::DISABLE_DEV => {
                self.enabled = false;
                self.wq_enabled.fill(false);
                Ok(())
            }
            cmd::RESET_DEVICE => {
                self.enabled = false;
                self.wq_enabled.fill(false);
                self.groups.fill(Group::default());
                self.wqcfg.fill([0; WQCFG_WORDS]);
                Ok(())
            }
            cmd::ENABLE_WQ => {
                let w = operand as usize;
                if w >= self.n_wqs() {
                    Err(err::INVAL_WQIDX)
                } else {
                    self.check_wq(w).map(|()| self.wq_enabled[w] = true)
                }
            }
            cmd::DISABLE_WQ if !self.enabled => Err(err::DEV_NOT_EN),
            cmd::DISABLE_WQ if u64::from(operand) & !low_bits(self.cfg.wqs) != 0 => {
                Err(err::INVAL_WQIDX)
            }
            cmd::DISABLE_WQ => {
                for (w, on) in self.wq_enabled.iter_mut().enumerate() {
                    if operand & 1 << w != 0 {
                        *on = false;
                    }
                }
                Ok(())
            }
            _ => Err(err::INVAL_CMD),
        };
        result.err().unwrap_or(0)
    }

    fn width(&self, off: usize) -> Option<usize> {
        Some(match off {
            VERSION | GENCFG | GENCTRL | GENSTS | CMD | CMDSTATUS => 4,
            GENCAP | WQCAP | GRPCAP | ENGCAP | OFFSETS => 8,
            o if (OPCAP..OPCAP + 32).contains(&o) && o % 8 == 0 => 8,
            o if (SWERR..SWERR + 32).contains(&o) && o % 8 == 0 => 8,
            o if self.group_reg(o).is_some() => match self.group_reg(o)?.1 {
                GRPCFG_FLAGS => 4,
                _ => 8,
            },
            o if self.wq_word(o).is_some() => 4,
            _ => return None,
        })
    }

    /// `(group, register)` of a GRPCFG offset.
    fn group_reg(&self, off: usize) -> Option<(usize, usize)> {
        let rel = off.checked_sub(GRPCFG_AT)?;
        let (g, reg) = (rel / GRPCFG_SIZE, rel % GRPCFG_SIZE);
        let known = matches!(reg, 0 | 8 | 16 | 24 | GRPCFG_ENGINES | GRPCFG_FLAGS);
        (g < usize::from(self.cfg.groups) && known).then_some((g, reg))
    }

    /// `(wq, word)` of a WQCFG offset.
    fn wq_word(&self, off: usize) -> Option<(usize, usize)> {
        let rel = off.checked_sub(WQCFG_AT)?;
        let (w, word) = (rel / (WQCFG_WORDS * 4), rel % (WQCFG_WORDS * 4));
        (w < self.n_wqs() && word % 4 == 0).then_some((w, word / 4))
    }

    fn read(&mut self, off: usize, width: usize) -> u64 {
        match self.width(off) {
            Some(w) if w == width => {}
            Some(w) => {
                self.violation(format!("{width}-byte read of {w}-byte register {off:#x}"));
                return u64::MAX;
            }
            None => {
                self.violation(format!("read of unmodelled register {off:#x}"));
                return u64::MAX;
            }
        }
        match off {
            VERSION => 0x100,
            GENCAP => self.gencap(),
            WQCAP => self.wqcap(),
            GRPCAP => u64::from(self.cfg.groups),
            ENGCAP => u64::from(self.cfg.engines),
            OFFSETS => ((GRPCFG_AT / 0x100) | ((WQCFG_AT / 0x100) << 16)) as u64,
            GENCFG => u64::from(self.gencfg),
            GENCTRL => u64::from(self.genctrl),
            GENSTS => u64::from(if self.enabled {
                GENSTS_ENABLED
            } else {
                GENSTS_DISABLED
            }),
            CMD => 0,
            CMDSTATUS => u64::from(self.cmdstatus),
            o if self.group_reg(o).is_some() => {
                let (g, reg) = self.group_reg(o).unwrap_or_default();
                let grp = &self.groups[g];
                match reg {
                    GRPCFG_ENGINES => grp.engines,
                    GRPCFG_FLAGS => u64::from(grp.flags),
                    r => grp.wqs[r / 8],
                }
            }
            o if self.wq_word(o).is_some() => {
                let (w, word) = self.wq_word(o).unwrap_or_default();
                if word == WQCFG_STATE_WORD {
                    u64::from(u32::from(self.wq_enabled[w]) << WQ_STATE_SHIFT)
                } else {
                    u64::from(self.wqcfg[w][word])
                }
            }
            _ => 0, // OPCAP, SWERR: nothing offered, nothing logged
        }
    }

    fn write(&mut self, off: usize, width: usize, val: u64) {
        match self.width(off) {
            Some(w) if w == width => {}
            Some(w) => {
                return self.violation(format!("{width}-byte write of {w}-byte register {off:#x}"));
            }
            None => return self.violation(format!("write of unmodelled register {off:#x}")),
        }
        // `val` fits the register's width (the accessor's type).
        match off {
            GENCFG => self.gencfg = val as u32,
            GENCTRL => self.genctrl = val as u32,
            CMD => self.cmdstatus = u32::from(self.command(val as u32)),
            o if self.group_reg(o).is_some() => {
                let (g, reg) = self.group_reg(o).unwrap_or_default();
                if self.enabled {
                    return self.violation(format!("GRPCFG {g} written while enabled"));
                }
                let grp = &mut self.groups[g];
                match reg {
                    GRPCFG_ENGINES => grp.engines = val,
                    GRPCFG_FLAGS => grp.flags = val as u32,
                    r => grp.wqs[r / 8] = val,
                }
            }
            o if self.wq_word(o).is_some() => {
                let (w, word) = self.wq_word(o).unwrap_or_default();
                if self.wq_enabled[w] || word == WQCFG_STATE_WORD {
                    return self.violation(format!(
                        "WQCFG {w} word {word} written while enabled or read-only"
                    ));
                }
                self.wqcfg[w][word] = val as u32;
            }
            _ => self.violation(format!("write of read-only register {off:#x}")),
        }
    }
}

/// The `n` low bits set.
fn low_bits(n: u8) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

impl DsaModel {
    /// A disabled device with zeroed tables.
    pub fn new(cfg: DsaModelConfig) -> DsaModel {
        let mut cfg = cfg;
        cfg.groups = cfg.groups.clamp(1, 64);
        cfg.engines = cfg.engines.clamp(1, 64);
        cfg.wqs = cfg.wqs.clamp(1, 64);
        let dev = Dev {
            cfg,
            enabled: false,
            groups: vec![Group::default(); usize::from(cfg.groups)],
            wqcfg: vec![[0; WQCFG_WORDS]; usize::from(cfg.wqs)],
            wq_enabled: vec![false; usize::from(cfg.wqs)],
            gencfg: 0,
            genctrl: 0,
            cmdstatus: 0,
            violations: Vec::new(),
        };
        DsaModel {
            inner: Arc::new(Mutex::new(dev)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Dev> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the device is enabled.
    pub fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// Whether WQ `wq` is enabled.
    pub fn wq_enabled(&self, wq: usize) -> bool {
        self.lock().wq_enabled.get(wq).copied().unwrap_or(false)
    }

    /// Every ignored write or bad access so far, in order.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }
}

impl Mmio for DsaModel {
    fn read8(&self, off: usize) -> u8 {
        self.lock().read(off, 1) as u8
    }
    fn read16(&self, off: usize) -> u16 {
        self.lock().read(off, 2) as u16
    }
    fn read32(&self, off: usize) -> u32 {
        self.lock().read(off, 4) as u32
    }
    fn read64(&self, off: usize) -> u64 {
        self.lock().read(off, 8)
    }
    fn write8(&self, off: usize, val: u8) {
        self.lock().write(off, 1, u64::from(val));
    }
    fn write16(&self, off: usize, val: u16) {
        self.lock().write(off, 2, u64::from(val));
    }
    fn write32(&self, off: usize, val: u32) {
        self.lock().write(off, 4, u64::from(val));
    }
    fn write64(&self, off: usize, val: u64) {
        self.lock().write(off, 8, val);
    }
}
