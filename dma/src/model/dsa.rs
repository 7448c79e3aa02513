//! [`DsaModel`]: a DSA device in software, behind [`Mmio`] and [`Portal`]: capability
//! registers, the GRPCFG and WQCFG tables, GENSTS, the command interface (CMD / CMDSTATUS)
//! with the error codes ENABLE_DEV, ENABLE_WQ, DISABLE_DEV and DISABLE_WQ report, the WQ
//! portals, and engines that process descriptors and write completion records.
//!
//! # Configuration rules (each broken one is an error code, or a violation for writes
//! silicon ignores)
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
//!   INVAL_CMD. A disable or reset forgets the descriptors of the WQs it disables (silicon
//!   drains them first; either way nothing of theirs is touched once the command completes).
//! * Violations: GRPCFG written while the device is enabled, a WQ's WQCFG written while it is
//!   enabled, the WQ state word or a read-only register written, wrong widths, unmodelled
//!   offsets.
//!
//! # The data path
//!
//! * A portal ([`DsaModel::portal`]) takes a 64-byte descriptor atomically (under the model's
//!   lock, as MOVDIR64B is one write). A write to a disabled WQ or device, to a WQ holding
//!   WQCFG-size descriptors already (dedicated WQs drop it silently), or to a WQ that does not
//!   exist, is dropped and recorded as a violation: a driver must never do it.
//! * Engines, stepped by [`DsaModel::run`] (one work descriptor per step; tests are
//!   deterministic): when idle they take up to [`parallel`](DsaModelConfig::parallel)
//!   descriptors from the WQs and finish them newest first, so with several a descriptor's
//!   completion can be visible before an earlier one's. A DRAIN waits for the descriptors
//!   taken before it.
//! * Opcodes: NOOP, DRAIN, MEMMOVE (size in `1..=` the WQ's maximum, else XFER_ERANGE; the
//!   bytes before the first unmapped source or destination byte are moved, then the
//!   descriptor completes with PAGE_FAULT_NOBOF, the fault address, the bytes completed and,
//!   for a write, the status byte's write bit), BATCH (count in `2..=` the WQ's maximum batch,
//!   else DESC_CNT_ERANGE; list 64-byte aligned, else DESCLIST_ALIGN; an unreadable list entry
//!   ends the batch with BATCH_PAGE_FAULT; members in order; a BATCH or DRAIN member is
//!   BAD_OPCODE; a FENCE member after a failed one ends the batch, it and the rest abandoned;
//!   the batch completes with SUCCESS or BATCH_FAIL and the count of members processed).
//!   Other opcodes: BAD_OPCODE; flags other than FENCE, BOF, CRAV, RCR and CC:
//!   INVALID_FLAGS.
//! * Completion records (32 bytes, 32-byte aligned): written when CRAV is set and either RCR
//!   is or the descriptor failed; the status word last, with a Release store. A record that
//!   cannot be written (misaligned, unmapped) is a violation.
//! * An IOMMU ([`DsaModel::map`], or the driver through [`DmaMapper`]): memory outside the
//!   mapped ranges is never touched.
//! * Knobs: failure injection at given descriptors ([`DsaFault`], numbered in submission
//!   order), out-of-order engines ([`DsaModelConfig::parallel`]).
//!
//! # Not modelled
//!
//! Shared WQs and ENQCMD, interrupts (RCI is INVALID_FLAGS here), PASID, traffic classes,
//! block on fault, abort, the other opcodes (fill, compare, CRC, DIF, ...), error logging in
//! SWERR, timing (commands complete at once). The facts are those of Linux's
//! `include/uapi/linux/idxd.h` and DPDK's `drivers/dma/idxd`; the batch count minimum of 2
//! and the treatment of a nested batch are DSA 1.x rules as this crate understands them, not
//! checked against silicon.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::iommu::{self, Iommu};
use crate::hw::dma_mem::DmaMapper;
use crate::hw::dsa::portal::{Descriptor, Portal};
use crate::hw::dsa::regs::*;
use crate::hw::mmio::Mmio;
use crate::{DmaError, Iova};

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
    /// Descriptors taken from the WQs and worked on at once, by several engines, `1..=64`.
    /// With more than one, [`run`](DsaModel::run) advances the newest first, so a descriptor
    /// completes before the ones submitted just before it. Default 1 (in order).
    pub parallel: u8,
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
            parallel: 1,
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
    iommu: Iommu,
    /// Per WQ: descriptors written to its portal, not yet taken by an engine.
    queues: Vec<VecDeque<Work>>,
    /// Descriptors being worked on, oldest first (at most `cfg.parallel`).
    active: Vec<Work>,
    fault: DsaFault,
    /// Work descriptors (not batches) numbered so far, in submission order (a batch's members
    /// are numbered when the batch is written to a portal).
    numbered: u64,
    buf: Vec<u8>,
    stats: DsaModelStats,
}

/// Failure injection: work descriptors (MEMMOVE, NOOP, DRAIN, inside a batch or not; not the
/// BATCH descriptors themselves) that complete with completion status `status` instead of
/// running. They are numbered from 0 since the model was made, in submission order (a
/// batch's members in list order), whatever order the engines run them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DsaFault {
    /// No injected fault.
    #[default]
    None,
    /// Descriptor number `n` fails.
    AtDescriptor {
        /// Descriptor number.
        n: u64,
        /// Completion status (a `comp::*` code).
        status: u8,
    },
    /// Descriptors number `n - 1`, `2n - 1`, ... fail.
    EveryNth {
        /// Period.
        n: NonZeroU64,
        /// Completion status.
        status: u8,
    },
}

/// Counters of a [`DsaModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsaModelStats {
    /// Descriptors accepted by a portal.
    pub submitted: u64,
    /// Descriptors dropped by a portal (WQ disabled or full, unknown WQ).
    pub dropped: u64,
    /// Work descriptors completed (successfully or not).
    pub descriptors: u64,
    /// Batches completed.
    pub batches: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Completion records written.
    pub records: u64,
    /// Descriptors completed while an older one was still in progress.
    pub out_of_order: u64,
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug)]
struct Desc {
    opcode: u8,
    flags: u32,
    comp: u64,
    src: u64,
    dst: u64,
    size: u32,
}

impl Desc {
    fn decode(d: &Descriptor) -> Desc {
        let opflags = (d.0[0] >> DESC_OP_FLAGS_SHIFT) as u32;
        Desc {
            opcode: (opflags >> DESC_OPCODE_SHIFT) as u8,
            flags: opflags & 0xff_ffff,
            comp: d.0[DESC_COMP_WORD],
            src: d.0[DESC_SRC_WORD],
            dst: d.0[DESC_DST_WORD],
            size: d.0[DESC_SIZE_WORD] as u32,
        }
    }
}

/// What an engine works on: a descriptor from a portal, and for a batch its progress.
#[derive(Clone, Debug)]
struct Work {
    wq: usize,
    desc: Desc,
    /// A batch's members processed so far, and whether one failed.
    next: u32,
    failed: bool,
    /// Submission number (to count out-of-order completions).
    seq: u64,
    /// Number of the (first) work descriptor, for failure injection.
    num: u64,
}

/// The flags the model accepts; any other is INVALID_FLAGS.
const KNOWN_FLAGS: u32 = flag::FENCE | flag::BOF | flag::CRAV | flag::RCR | flag::CC;

/// A completion to write: status byte, bytes (or descriptors) completed, fault address,
/// invalid flags.
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    status: u8,
    done: u32,
    fault: u64,
    invalid: u32,
}

impl Outcome {
    fn ok(done: u32) -> Outcome {
        Outcome {
            status: comp::SUCCESS,
            done,
            ..Default::default()
        }
    }

    fn err(status: u8) -> Outcome {
        Outcome {
            status,
            ..Default::default()
        }
    }

    fn failed(&self) -> bool {
        self.status & comp::STATUS_MASK != comp::SUCCESS
    }
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
                self.abandon(u64::MAX);
                Ok(())
            }
            cmd::RESET_DEVICE => {
                self.enabled = false;
                self.wq_enabled.fill(false);
                self.abandon(u64::MAX);
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
                self.abandon(u64::from(operand));
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

/// The data path: portals, engines, descriptors, completion records.
impl Dev {
    /// Forgets the descriptors of the WQs in bitmap `wqs`, queued or in progress: nothing of
    /// theirs is touched any more once a disable or reset command has completed.
    fn abandon(&mut self, wqs: u64) {
        let hit = |w: usize| w < 64 && wqs & 1 << w != 0;
        for (w, q) in self.queues.iter_mut().enumerate() {
            if hit(w) {
                q.clear();
            }
        }
        self.active.retain(|work| !hit(work.wq));
    }

    /// A 64-byte write to WQ `wq`'s portal.
    fn portal_write(&mut self, wq: usize, d: &Descriptor) {
        let why = if wq >= self.n_wqs() {
            Some(format!(
                "descriptor written to the portal of WQ {wq}, which does not exist"
            ))
        } else if !self.enabled || !self.wq_enabled[wq] {
            Some(format!(
                "descriptor written to the portal of disabled WQ {wq}: dropped"
            ))
        } else if self.queues[wq].len() >= self.wqcfg[wq][WQCFG_SIZE_WORD] as usize {
            Some(format!(
                "descriptor written to full WQ {wq} ({} entries): dropped",
                self.wqcfg[wq][WQCFG_SIZE_WORD]
            ))
        } else {
            None
        };
        if let Some(why) = why {
            self.stats.dropped += 1;
            return self.violation(why);
        }
        self.stats.submitted += 1;
        let seq = self.stats.submitted;
        let desc = Desc::decode(d);
        let num = self.numbered;
        self.numbered += match desc.opcode {
            op::BATCH => u64::from(desc.size.min(self.wq_limits(wq).1)),
            _ => 1,
        };
        self.queues[wq].push_back(Work {
            wq,
            desc,
            next: 0,
            failed: false,
            seq,
            num,
        });
    }

    /// WQ `wq`'s largest transfer and batch.
    fn wq_limits(&self, wq: usize) -> (u64, u32) {
        let sizes = self.wqcfg[wq][WQCFG_SIZES_WORD];
        (
            1u64 << (sizes & 0x1f),
            1u32 << ((sizes >> WQ_BATCH_SHIFT) & 0xf),
        )
    }

    /// Once the engines are idle, gives them up to `parallel` queued descriptors (WQ order,
    /// round robin): they finish all of them (newest first, if several) before taking more, so
    /// a descriptor is overtaken by at most `parallel - 1` later ones.
    fn dispatch(&mut self) {
        if !self.active.is_empty() {
            return;
        }
        let parallel = usize::from(self.cfg.parallel.clamp(1, 64));
        let mut w = 0;
        let mut idle = 0;
        while self.active.len() < parallel && idle < self.queues.len() {
            match self.queues[w].pop_front() {
                Some(work) => {
                    self.active.push(work);
                    idle = 0;
                }
                None => idle += 1,
            }
            w = (w + 1) % self.queues.len();
        }
    }

    /// Advances one work descriptor (alone or in a batch); false if there is nothing to do.
    fn step(&mut self) -> bool {
        self.dispatch();
        // A DRAIN runs only once it is the oldest; otherwise the newest (out of order) or the
        // oldest (in order) goes on.
        let pick = if self.cfg.parallel > 1 {
            (0..self.active.len())
                .rev()
                .find(|&i| i == 0 || self.active[i].desc.opcode != op::DRAIN)
        } else if self.active.is_empty() {
            None
        } else {
            Some(0)
        };
        let Some(i) = pick else {
            return false;
        };
        let work = self.active[i].clone();
        let finished = if work.desc.opcode == op::BATCH {
            self.batch_step(i)
        } else {
            let out = self.execute(work.wq, &work.desc, false, work.num);
            self.complete(&work.desc, out);
            true
        };
        if finished {
            let work = self.active.remove(i);
            if self.active.iter().any(|w| w.seq < work.seq) {
                self.stats.out_of_order += 1;
            }
        }
        true
    }

    /// Processes the next member of the batch `active[i]`; true when the batch is done (its
    /// record written).
    fn batch_step(&mut self, i: usize) -> bool {
        let Work {
            wq,
            desc: b,
            next,
            failed,
            num,
            ..
        } = self.active[i].clone();
        let (_, max_batch) = self.wq_limits(wq);
        if b.flags & !KNOWN_FLAGS != 0 {
            let mut out = Outcome::err(comp::INVALID_FLAGS);
            out.invalid = b.flags & !KNOWN_FLAGS;
            self.complete(&b, out);
            return true;
        }
        if b.size < 2 || b.size > max_batch {
            self.complete(&b, Outcome::err(comp::DESC_CNT_ERANGE));
            return true;
        }
        if b.src % DESC_SIZE as u64 != 0 {
            self.complete(&b, Outcome::err(comp::DESCLIST_ALIGN));
            return true;
        }
        let done = |failed: bool, n: u32| Outcome {
            status: if failed {
                comp::BATCH_FAIL
            } else {
                comp::SUCCESS
            },
            done: n,
            ..Default::default()
        };
        let at = b.src + u64::from(next) * DESC_SIZE as u64;
        if !self.iommu.check(at, DESC_SIZE as u64) {
            let mut out = Outcome::err(comp::BATCH_PAGE_FAULT);
            out.done = next;
            out.fault = at;
            self.complete(&b, out);
            return true;
        }
        let mut raw = Descriptor::default();
        for (k, word) in raw.0.iter_mut().enumerate() {
            // SAFETY: the 64 bytes at `at` are mapped (checked above: the mapper keeps them
            // valid) and 64-byte aligned; the driver does not write a submitted batch's list.
            *word = unsafe { iommu::read_u64(at + 8 * k as u64) };
        }
        let m = Desc::decode(&raw);
        if m.flags & flag::FENCE != 0 && failed {
            // A fence after a failure: this member and the rest are abandoned.
            self.complete(&b, done(true, next));
            return true;
        }
        let out = self.execute(wq, &m, true, num + u64::from(next));
        self.complete(&m, out);
        let failed = failed || out.failed();
        let next = next + 1;
        if next == b.size {
            self.stats.batches += 1;
            self.complete(&b, done(failed, next));
            return true;
        }
        let work = &mut self.active[i];
        (work.next, work.failed) = (next, failed);
        false
    }

    /// The injected status of work descriptor number `num`, if any.
    fn fault_hits(&self, num: u64) -> Option<u8> {
        match self.fault {
            DsaFault::None => None,
            DsaFault::AtDescriptor { n, status } => (num == n).then_some(status),
            DsaFault::EveryNth { n, status } => ((num + 1) % n.get() == 0).then_some(status),
        }
    }

    /// Runs work descriptor number `num` of WQ `wq` (in a batch if `in_batch`).
    fn execute(&mut self, wq: usize, d: &Desc, in_batch: bool, num: u64) -> Outcome {
        if d.flags & !KNOWN_FLAGS != 0 {
            let mut out = Outcome::err(comp::INVALID_FLAGS);
            out.invalid = d.flags & !KNOWN_FLAGS;
            return out;
        }
        let work = matches!(d.opcode, op::NOOP | op::DRAIN | op::MEMMOVE);
        if !work || (in_batch && d.opcode == op::DRAIN) {
            // Unknown opcodes, a batch in a batch, a drain in a batch.
            return Outcome::err(comp::BAD_OPCODE);
        }
        let injected = self.fault_hits(num);
        self.stats.descriptors += 1;
        if let Some(status) = injected {
            let mut out = Outcome::err(status);
            if status & comp::STATUS_MASK == comp::PAGE_FAULT_NOBOF {
                out.fault = d.src;
            }
            return out;
        }
        if d.opcode != op::MEMMOVE {
            return Outcome::ok(0);
        }
        let (max_xfer, _) = self.wq_limits(wq);
        let size = u64::from(d.size);
        if size == 0 || size > max_xfer {
            return Outcome::err(comp::XFER_ERANGE);
        }
        // The bytes before the first unmapped one, on either side, are moved; then the fault.
        let readable = self.iommu.mapped_prefix(d.src, size);
        let writable = self.iommu.mapped_prefix(d.dst, size);
        let n = readable.min(writable);
        let mut data = std::mem::take(&mut self.buf);
        data.clear();
        // SAFETY: `src..src + n` is mapped (`mapped_prefix`), and the DMA contract keeps a
        // submitted job's source valid and unwritten until it is reported.
        unsafe { iommu::read_bytes(d.src, n as usize, &mut data) };
        // SAFETY: `dst..dst + n` is mapped, and the DMA contract gives a submitted job's
        // destination to the device until the job is reported.
        unsafe { iommu::write_bytes(d.dst, &data) };
        self.buf = data;
        self.stats.bytes += n;
        // `n <= size`, a u32.
        let mut out = Outcome::ok(n as u32);
        if n < size {
            out.status = comp::PAGE_FAULT_NOBOF;
            if readable <= writable {
                out.fault = d.src + readable;
            } else {
                out.status |= comp::FAULT_WRITE;
                out.fault = d.dst + writable;
            }
        }
        out
    }

    /// Writes the completion record of `d` if its flags ask for it: CRAV, and RCR or an error.
    /// The status word goes last, with a Release store.
    fn complete(&mut self, d: &Desc, out: Outcome) {
        if d.flags & flag::CRAV == 0 || (d.flags & flag::RCR == 0 && !out.failed()) {
            return;
        }
        let at = d.comp;
        if at % COMP_SIZE as u64 != 0 || !self.iommu.check(at, COMP_SIZE as u64) {
            return self.violation(format!(
                "completion record at {at:#x} misaligned or unmapped: not written"
            ));
        }
        let word0 = u64::from(out.status) | u64::from(out.done) << COMP_BYTES_SHIFT;
        // SAFETY: the 32 bytes at `at` are mapped (checked above: the mapper keeps them valid)
        // and 32-byte aligned; a completion record is only accessed atomically.
        unsafe {
            iommu::write_back(at + 8, out.fault);
            iommu::write_back(at + 16, u64::from(out.invalid));
            iommu::write_back(at + 24, 0);
            iommu::write_back(at, word0);
        }
        self.stats.records += 1;
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
        cfg.parallel = cfg.parallel.clamp(1, 64);
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
            iommu: Iommu::default(),
            queues: vec![VecDeque::new(); usize::from(cfg.wqs)],
            active: Vec::new(),
            fault: DsaFault::None,
            numbered: 0,
            buf: Vec::new(),
            stats: DsaModelStats::default(),
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

    /// The portal of WQ `wq`: give it to the driver.
    pub fn portal(&self, wq: u8) -> DsaPortal {
        DsaPortal {
            model: self.clone(),
            wq: usize::from(wq),
        }
    }

    /// Advances up to `n` work descriptors (each member of a batch counts as one); returns how
    /// many were advanced.
    pub fn run(&self, n: usize) -> usize {
        let mut d = self.lock();
        let mut done = 0;
        while done < n && d.step() {
            done += 1;
        }
        done
    }

    /// Descriptors waiting in WQ `wq`, not yet taken by an engine.
    pub fn queued(&self, wq: usize) -> usize {
        self.lock().queues.get(wq).map_or(0, VecDeque::len)
    }

    /// Sets the failure injection.
    pub fn set_fault(&self, fault: DsaFault) {
        self.lock().fault = fault;
    }

    /// Sets how many descriptors the engines work on at once (see
    /// [`DsaModelConfig::parallel`]).
    pub fn set_parallel(&self, parallel: u8) {
        self.lock().cfg.parallel = parallel.clamp(1, 64);
    }

    /// The model's counters.
    pub fn stats(&self) -> DsaModelStats {
        self.lock().stats
    }

    /// Maps `len` bytes at `iova` (IOVA = VA) for the device; false if the range is empty or
    /// overlaps a mapped one.
    ///
    /// # Safety
    ///
    /// As [`IoatModel::map`](crate::model::IoatModel::map): the range stays valid for the
    /// model's reads and writes, whenever a submitted descriptor tells it to access it, until
    /// it is unmapped or the model is gone; nothing makes a Rust reference into the bytes the
    /// model may write.
    pub unsafe fn map(&self, iova: Iova, len: u64) -> bool {
        self.lock().iommu.map(iova.0, len)
    }

    /// Turns IOMMU passthrough on or off: with it on, the model accesses any address a
    /// descriptor names, mapped or not (as a device does with the IOMMU off or in pass-through
    /// mode); mappings are still recorded and checked again once it is off. Off by default.
    ///
    /// For tests and data paths that do not map what they hand the model; rvhost's own maps
    /// guest memory through `Driver::set_dma_mapper` and its pools itself, with the model
    /// strict.
    ///
    /// # Safety
    ///
    /// While it is on, every address a descriptor submitted to the model names is valid for
    /// the access the descriptor asks for, when the model makes it: true of this crate's
    /// drivers, whose rings and completion words are their own and whose jobs' memory is the
    /// caller's under the [`DmaEngine::copy`](crate::DmaEngine::copy) contract.
    pub unsafe fn set_passthrough(&self, on: bool) {
        self.lock().iommu.passthrough = on;
    }

    /// Unmaps the range mapped at exactly `iova..iova + len`; false if there is none.
    pub fn unmap(&self, iova: Iova, len: u64) -> bool {
        self.lock().iommu.unmap(iova.0, len)
    }

    /// The mapped ranges, `(iova, len)`, in address order.
    pub fn mappings(&self) -> Vec<(Iova, u64)> {
        (self.lock().iommu.ranges())
            .map(|(s, l)| (Iova(s), l))
            .collect()
    }
}

/// A WQ's portal on a [`DsaModel`]: a descriptor write is atomic (it happens under the
/// model's lock), like MOVDIR64B.
#[derive(Clone, Debug)]
pub struct DsaPortal {
    model: DsaModel,
    wq: usize,
}

impl Portal for DsaPortal {
    fn submit(&self, desc: &Descriptor) {
        self.model.lock().portal_write(self.wq, desc);
    }
}

impl DmaMapper for DsaModel {
    unsafe fn map(&self, iova: Iova, va: *const u8, len: usize) -> Result<(), DmaError> {
        if iova.0 != va.expose_provenance() as u64 {
            return Err(DmaError::InvalidConfig("the DSA model maps IOVA = VA only"));
        }
        if !self.lock().iommu.map(iova.0, len as u64) {
            return Err(DmaError::InvalidConfig(
                "DMA mapping empty or overlapping another",
            ));
        }
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: usize) {
        if !DsaModel::unmap(self, iova, len as u64) {
            self.lock()
                .violation(format!("unmap of {iova:?}+{len:#x}, which is not mapped"));
        }
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
