//! [`IoatModel`]: one IOAT 3.x channel in software, behind the [`Mmio`] trait, so that
//! [`IoatChannel`](crate::hw::IoatChannel) is tested as it would run on silicon.
//!
//! # What it models
//!
//! * The registers the driver uses (offsets and bits in [`regs`]): CHANCNT, XFERCAP, CBVER,
//!   DMACAPABILITY (read-only), CHANCTRL, CHANCMD (RESET, SUSPEND, RESUME), DMACOUNT, CHANSTS
//!   (read-only), CHAINADDR, CHANCMP, CHANERR (write 1 to clear), CHANERRMASK. Each register
//!   has one width; any other access, or an access to an offset it does not model, is a
//!   *violation*.
//! * The channel states: after a reset (and at power-on) the channel reads HALTED with no
//!   completed address, until CHAINADDR is written (with CHANERR clear): then ARMED. A
//!   DMACOUNT write with descriptors pending makes it ACTIVE; when every descriptor up to
//!   DMACOUNT is done it is IDLE. SUSPEND holds it (DMACOUNT writes are kept; RESUME goes on).
//!   On an error it is HALTED and stays so until a RESET, whatever is written.
//! * Descriptor processing, in steps ([`IoatModel::run`] processes up to `n` descriptors, on
//!   the caller's thread: tests are deterministic): a descriptor is fetched at the chain
//!   address then through `next` pointers, through the model's IOMMU; copy or null opcode;
//!   size in `1..=2^XFERCAP`; source and destination through the IOMMU; after each
//!   descriptor with the completion-write bit, CHANSTS (the descriptor's address and
//!   ACTIVE/IDLE) is stored to CHANCMP with one atomic Release store; on an error, CHANERR gets
//!   the error's bit, the channel halts and, with CHANCTRL's ERR_COMPLETION_EN, writes CHANSTS
//!   (the last completed address and HALTED) back.
//! * Pipelining (on by default): before writing a descriptor's destination, the model reads
//!   the next submitted descriptor's source, unless the current descriptor has the fence bit.
//!   A driver that forgets a fence between dependent copies then copies stale bytes, as on
//!   hardware that overlaps reads and writes.
//! * An IOMMU: the model reads and writes only ranges it was told are mapped (by the driver
//!   through [`DmaMapper`], by tests through [`IoatModel::map`]). An unmapped source or
//!   destination halts the channel with SRC_ADDR or DEST_ADDR, an unmapped descriptor with
//!   CHAIN_ADDR_VALUE (first of the chain) or NEXT_ADDR, an unmapped CHANCMP with
//!   COMPLETION_ADDR.
//! * Knobs: a fault at a given descriptor or every n-th ([`ModelFault`]: the channel halts
//!   with the given CHANERR bits before copying), the transfer limit, the most descriptors
//!   DMACOUNT may put in flight.
//!
//! # Strictness
//!
//! What silicon would reject is never silently accepted: it sets a CHANERR bit and halts, and
//! is recorded in [`IoatModel::violations`] (tests assert that a driver run leaves none).
//! Rejected: CHAINADDR not 64-byte aligned, written without a reset first, or with CHANERR
//! set; a next pointer not 64-byte aligned; CHANCMP not 8-byte aligned; DMACOUNT written
//! before CHAINADDR, or putting more than `max_pending` descriptors in flight (that includes a
//! count that goes backwards); unknown CHANCMD bits; writes to read-only registers; wrong
//! access widths and unmodelled offsets; running without ANY_ERR_ABORT_EN.
//!
//! # What it does not model
//!
//! Interrupts, DCA, the other opcodes (fill, XOR, PQ: CONTROL error), several channels per
//! function, timing (a reset completes at once, RESET never reads back set), PCI config space,
//! and bus errors other than the injected ones. Where DPDK and Linux disagree on CHANERR bits,
//! it follows Linux (see [`regs`]). The post-reset state (HALTED until CHAINADDR) is an
//! assumption consistent with DPDK's stop and recovery code, not a documented fact.

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::iommu::{self, Iommu};
use crate::hw::dma_mem::DmaMapper;
use crate::hw::ioat::regs::{self, *};
use crate::hw::mmio::Mmio;
use crate::{DmaError, Iova};

/// Configuration of an [`IoatModel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoatModelConfig {
    /// XFERCAP: one descriptor moves at most `2^xfercap_log` bytes, `1..=31`. Default 20
    /// (1 MiB).
    pub xfercap_log: u8,
    /// The most descriptors DMACOUNT may put in flight (the driver's ring less one, if the
    /// test knows it). Default 32767.
    pub max_pending: u16,
    /// Read the next descriptor's source before writing the current destination, unless fenced.
    /// Default true.
    pub pipelined: bool,
}

impl Default for IoatModelConfig {
    fn default() -> Self {
        IoatModelConfig {
            xfercap_log: 20,
            max_pending: 0x7fff,
            pipelined: true,
        }
    }
}

/// Failure injection: descriptors that halt the channel with `chanerr` (CHANERR bits) instead
/// of running. Descriptors are counted from 0 since the model was made, across resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ModelFault {
    /// No injected fault.
    #[default]
    None,
    /// Descriptor number `n` fails.
    AtDescriptor {
        /// Descriptor number.
        n: u64,
        /// CHANERR bits to set.
        chanerr: u32,
    },
    /// Descriptors number `n - 1`, `2n - 1`, ... fail (the n-th, 2n-th, ...).
    EveryNth {
        /// Period.
        n: NonZeroU64,
        /// CHANERR bits to set.
        chanerr: u32,
    },
}

/// Counters of an [`IoatModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Descriptors completed.
    pub descriptors: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Halts on an error.
    pub halts: u64,
    /// RESET commands.
    pub resets: u64,
    /// Completion write-backs.
    pub write_backs: u64,
    /// Sources read ahead of the previous descriptor's write.
    pub prefetches: u64,
}

/// One IOAT channel in software (see the [module documentation](self)). Clones are handles
/// to the same channel: give one to the driver as its BAR and its [`DmaMapper`], keep one to
/// [`run`](IoatModel::run) it.
#[derive(Clone)]
pub struct IoatModel {
    inner: Arc<Mutex<Chan>>,
}

impl std::fmt::Debug for IoatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.lock();
        f.debug_struct("IoatModel")
            .field("state", &regs::state_name(c.state))
            .field("chanerr", &format_args!("{:#x}", c.chanerr))
            .field("dmacount", &c.dmacount)
            .field("processed", &c.processed)
            .finish_non_exhaustive()
    }
}

struct Chan {
    cfg: IoatModelConfig,
    iommu: Iommu,
    chanctrl: u16,
    chanerr: u32,
    chanerrmask: u32,
    chainaddr: u64,
    chancmp: u64,
    dmacount: u16,
    /// Descriptors done since the chain started.
    processed: u16,
    state: u64,
    /// Reset, waiting for CHAINADDR (reads HALTED).
    fresh: bool,
    /// The state RESUME returns to.
    resume_to: u64,
    last_completed: u64,
    next_addr: u64,
    /// The next descriptor is the chain's first.
    first: bool,
    fault: ModelFault,
    /// Descriptors fetched since the model was made.
    seen: u64,
    prefetched: Option<(u64, Vec<u8>)>,
    buf: Vec<u8>,
    violations: Vec<String>,
    stats: ModelStats,
}

/// A fetched descriptor.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    size: u32,
    ctl: u32,
    src: u64,
    dst: u64,
    next: u64,
}

impl Chan {
    fn violation(&mut self, what: String) {
        log::warn!("IOAT model: {what}");
        self.violations.push(what);
    }

    fn xfer_max(&self) -> u64 {
        1 << self.cfg.xfercap_log
    }

    fn chansts(&self) -> u64 {
        self.last_completed | self.state
    }

    /// Halts with `bits` set in CHANERR, writing CHANSTS back if asked to.
    fn halt(&mut self, bits: u32) {
        self.chanerr |= bits;
        self.state = CHANSTS_HALTED;
        self.fresh = false;
        self.prefetched = None;
        self.stats.halts += 1;
        if self.chanctrl & CHANCTRL_ERR_COMPLETION_EN != 0 && bits & CHANERR_COMPLETION_ADDR == 0 {
            self.write_back(self.chansts());
        }
    }

    /// Stores `val` to CHANCMP; an unusable CHANCMP halts the channel instead.
    fn write_back(&mut self, val: u64) {
        let at = self.chancmp;
        if at % CHANCMP_ALIGN != 0 || !self.iommu.check(at, 8) {
            if self.state != CHANSTS_HALTED {
                self.stats.halts += 1;
            }
            self.chanerr |= CHANERR_COMPLETION_ADDR;
            self.state = CHANSTS_HALTED;
            self.fresh = false;
            self.prefetched = None;
            return;
        }
        // SAFETY: `at..at + 8` is mapped (checked just above: the mapper keeps it valid) and
        // 8-byte aligned; a completion word is only accessed atomically.
        unsafe { iommu::write_back(at, val) };
        self.stats.write_backs += 1;
    }

    fn reset(&mut self) {
        self.state = CHANSTS_HALTED;
        self.fresh = true;
        self.dmacount = 0;
        self.processed = 0;
        self.last_completed = 0;
        self.prefetched = None;
        self.stats.resets += 1;
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            0 => {}
            CHANCMD_RESET => self.reset(),
            CHANCMD_SUSPEND => {
                if matches!(self.state, CHANSTS_ACTIVE | CHANSTS_IDLE | CHANSTS_ARMED) {
                    self.resume_to = self.state;
                    self.state = CHANSTS_SUSPENDED;
                    self.prefetched = None;
                }
            }
            CHANCMD_RESUME => {
                if self.state == CHANSTS_SUSPENDED {
                    self.state = self.resume_to;
                    self.start_if_pending();
                }
            }
            _ => {
                self.violation(format!("CHANCMD {cmd:#x}: unknown or combined command"));
                self.halt(CHANERR_CHANCMD);
            }
        }
    }

    fn start_if_pending(&mut self) {
        if matches!(self.state, CHANSTS_ARMED | CHANSTS_IDLE) && self.dmacount != self.processed {
            self.state = CHANSTS_ACTIVE;
        }
    }

    fn set_chainaddr(&mut self, val: u64) {
        if !(self.state == CHANSTS_HALTED && self.fresh) {
            self.violation(format!(
                "CHAINADDR written in state {} without a reset",
                regs::state_name(self.state)
            ));
            return self.halt(CHANERR_CHAIN_ADDR_VALUE);
        }
        if val % DESC_SIZE as u64 != 0 {
            self.violation(format!("CHAINADDR {val:#x} is not 64-byte aligned"));
            return self.halt(CHANERR_CHAIN_ADDR_VALUE);
        }
        self.chainaddr = val;
        if self.chanerr != 0 {
            self.violation(format!(
                "CHAINADDR written with CHANERR {:#x} set: the channel stays halted",
                self.chanerr
            ));
            return;
        }
        self.fresh = false;
        self.state = CHANSTS_ARMED;
        self.next_addr = val;
        self.first = true;
        self.processed = 0;
        self.dmacount = 0;
    }

    fn set_dmacount(&mut self, val: u16) {
        if self.state == CHANSTS_HALTED {
            if self.fresh {
                self.violation("DMACOUNT written before CHAINADDR".into());
                self.halt(CHANERR_DESCRIPTOR_COUNT);
            }
            // Halted on an error: ignored until a reset.
            return;
        }
        if self.chanctrl & CHANCTRL_ANY_ERR_ABORT_EN == 0 {
            self.violation("DMACOUNT written without CHANCTRL.ANY_ERR_ABORT_EN".into());
        }
        let pending = val.wrapping_sub(self.processed);
        if pending > self.cfg.max_pending {
            self.violation(format!(
                "DMACOUNT {val} puts {pending} descriptors in flight (at most {}; {} done)",
                self.cfg.max_pending, self.processed
            ));
            return self.halt(CHANERR_DESCRIPTOR_COUNT);
        }
        self.dmacount = val;
        self.start_if_pending();
    }

    fn set_chancmp(&mut self, val: u64) {
        if val % CHANCMP_ALIGN != 0 {
            self.violation(format!("CHANCMP {val:#x} is not 8-byte aligned"));
            return self.halt(CHANERR_COMPLETION_ADDR);
        }
        self.chancmp = val;
    }

    /// Fetches the descriptor at `addr`, if it is mapped.
    fn fetch(&self, addr: u64) -> Option<Desc> {
        if addr % DESC_SIZE as u64 != 0 || !self.iommu.check(addr, DESC_SIZE as u64) {
            return None;
        }
        // SAFETY: the 64 bytes at `addr` are mapped (checked above: the mapper keeps them valid)
        // and 64-byte aligned, so every field is aligned; the driver does not write a
        // descriptor between its doorbell and its completion.
        unsafe {
            Some(Desc {
                addr,
                size: iommu::read_u32(addr + DESC_SIZE_OFF as u64),
                ctl: iommu::read_u32(addr + DESC_CTL_OFF as u64),
                src: iommu::read_u64(addr + DESC_SRC_OFF as u64),
                dst: iommu::read_u64(addr + DESC_DST_OFF as u64),
                next: iommu::read_u64(addr + DESC_NEXT_OFF as u64),
            })
        }
    }

    /// The CHANERR bits a descriptor's checks give, 0 if it may run.
    fn check(&self, d: &Desc) -> u32 {
        if d.ctl >> CTL_OP_SHIFT != OP_COPY {
            return CHANERR_CONTROL;
        }
        if d.ctl & CTL_NULL != 0 {
            return 0;
        }
        let size = u64::from(d.size);
        if size == 0 || size > self.xfer_max() {
            return CHANERR_LENGTH;
        }
        if !self.iommu.check(d.src, size) {
            return CHANERR_SRC_ADDR;
        }
        if !self.iommu.check(d.dst, size) {
            return CHANERR_DEST_ADDR;
        }
        0
    }

    fn fault_hits(&self) -> Option<u32> {
        match self.fault {
            ModelFault::None => None,
            ModelFault::AtDescriptor { n, chanerr } => (self.seen == n).then_some(chanerr),
            ModelFault::EveryNth { n, chanerr } => {
                ((self.seen + 1) % n.get() == 0).then_some(chanerr)
            }
        }
    }

    /// Reads the source of the descriptor after `d`, if it is submitted and would run.
    fn prefetch_after(&mut self, d: &Desc) {
        if self.processed.wrapping_add(1) == self.dmacount {
            return; // not submitted: hardware does not fetch beyond DMACOUNT
        }
        let Some(next) = self.fetch(d.next) else {
            return;
        };
        if next.ctl & CTL_NULL != 0 || self.check(&next) != 0 {
            return;
        }
        let mut bytes = Vec::new();
        // SAFETY: `check` found the source mapped for `size` bytes; the DMA contract keeps a
        // submitted job's source valid and unwritten until it is reported.
        unsafe { iommu::read_bytes(next.src, next.size as usize, &mut bytes) };
        self.prefetched = Some((next.addr, bytes));
        self.stats.prefetches += 1;
    }

    /// Processes one descriptor; false if the channel has nothing to do.
    fn step(&mut self) -> bool {
        if self.state != CHANSTS_ACTIVE {
            return false;
        }
        let addr = self.next_addr;
        if addr % DESC_SIZE as u64 != 0 {
            self.halt(CHANERR_NEXT_DESC_ALIGN);
            return false;
        }
        let Some(d) = self.fetch(addr) else {
            let bit = if self.first {
                CHANERR_CHAIN_ADDR_VALUE
            } else {
                CHANERR_NEXT_ADDR
            };
            self.halt(bit);
            return false;
        };
        let injected = self.fault_hits();
        self.seen += 1;
        if let Some(bits) = injected {
            self.halt(bits);
            return false;
        }
        let bad = self.check(&d);
        if bad != 0 {
            self.halt(bad);
            return false;
        }
        if d.ctl & CTL_NULL == 0 {
            let mut data = std::mem::take(&mut self.buf);
            data.clear();
            match self.prefetched.take() {
                Some((at, bytes)) if at == d.addr => data = bytes,
                // SAFETY: `check` found the source mapped for `size` bytes; the DMA contract
                // keeps a submitted job's source valid and unwritten until it is reported.
                _ => unsafe { iommu::read_bytes(d.src, d.size as usize, &mut data) },
            }
            if self.cfg.pipelined && d.ctl & CTL_FENCE == 0 {
                self.prefetch_after(&d);
            }
            // SAFETY: `check` found the destination mapped for `size` bytes; the DMA contract
            // gives a submitted job's destination to the device until the job is reported.
            unsafe { iommu::write_bytes(d.dst, &data) };
            self.stats.bytes += u64::from(d.size);
            self.buf = data;
        }
        self.processed = self.processed.wrapping_add(1);
        self.last_completed = d.addr;
        self.next_addr = d.next;
        self.first = false;
        self.stats.descriptors += 1;
        if self.processed == self.dmacount {
            self.state = CHANSTS_IDLE;
        }
        if d.ctl & CTL_COMPL_WRITE != 0 {
            self.write_back(self.chansts());
        }
        true
    }

    fn read(&mut self, off: usize, width: usize) -> u64 {
        let Some(w) = reg_width(off) else {
            self.violation(format!("read of unmodelled register {off:#x}"));
            return u64::MAX;
        };
        if w != width {
            self.violation(format!("{width}-byte read of {w}-byte register {off:#x}"));
            return u64::MAX;
        }
        match off {
            CHANCNT => 1,
            XFERCAP => u64::from(self.cfg.xfercap_log),
            CBVER => 0x33,
            DMACAPABILITY => 0,
            CHANCTRL => u64::from(self.chanctrl),
            CHANCMD => 0,
            DMACOUNT => u64::from(self.dmacount),
            CHANSTS => self.chansts(),
            CHAINADDR => self.chainaddr,
            CHANCMP => self.chancmp,
            CHANERR => u64::from(self.chanerr),
            CHANERRMASK => u64::from(self.chanerrmask),
            _ => unreachable!("reg_width lists only the registers above"),
        }
    }

    fn write(&mut self, off: usize, width: usize, val: u64) {
        let Some(w) = reg_width(off) else {
            return self.violation(format!("write of unmodelled register {off:#x}"));
        };
        if w != width {
            return self.violation(format!("{width}-byte write of {w}-byte register {off:#x}"));
        }
        // `val` fits the register's width (the accessor's type).
        match off {
            CHANCTRL => self.chanctrl = val as u16,
            CHANCMD => self.command(val as u8),
            DMACOUNT => self.set_dmacount(val as u16),
            CHAINADDR => self.set_chainaddr(val),
            CHANCMP => self.set_chancmp(val),
            CHANERR => self.chanerr &= !(val as u32),
            CHANERRMASK => self.chanerrmask = val as u32,
            _ => self.violation(format!("write of read-only register {off:#x}")),
        }
    }
}

/// The width in bytes of the register at `off`, if the model has one there.
fn reg_width(off: usize) -> Option<usize> {
    Some(match off {
        CHANCNT | XFERCAP | CBVER | CHANCMD => 1,
        CHANCTRL | DMACOUNT => 2,
        DMACAPABILITY | CHANERR | CHANERRMASK => 4,
        CHANSTS | CHAINADDR | CHANCMP => 8,
        _ => return None,
    })
}

impl IoatModel {
    /// A channel in its power-on state (as after a reset: HALTED, waiting for CHAINADDR), with
    /// nothing mapped.
    pub fn new(cfg: IoatModelConfig) -> IoatModel {
        let mut cfg = cfg;
        cfg.xfercap_log = cfg.xfercap_log.clamp(1, 31);
        let chan = Chan {
            cfg,
            iommu: Iommu::default(),
            chanctrl: 0,
            chanerr: 0,
            chanerrmask: 0,
            chainaddr: 0,
            chancmp: 0,
            dmacount: 0,
            processed: 0,
            state: CHANSTS_HALTED,
            fresh: true,
            resume_to: CHANSTS_IDLE,
            last_completed: 0,
            next_addr: 0,
            first: true,
            fault: ModelFault::None,
            seen: 0,
            prefetched: None,
            buf: Vec::new(),
            violations: Vec::new(),
            stats: ModelStats::default(),
        };
        IoatModel {
            inner: Arc::new(Mutex::new(chan)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Chan> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Maps `len` bytes at `iova` (IOVA = VA) for the device; false if the range is empty or
    /// overlaps a mapped one.
    ///
    /// # Safety
    ///
    /// Until it is unmapped or every handle of the model is dropped, the range stays valid for
    /// reads and writes by the model, whenever a submitted descriptor tells it to access it
    /// (the DMA contract of [`DmaEngine::copy`](crate::DmaEngine::copy) then says when that
    /// is), and nothing makes a Rust reference into the bytes the model may write.
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

    /// Processes up to `n` descriptors; returns how many completed.
    pub fn run(&self, n: usize) -> usize {
        let mut c = self.lock();
        let mut done = 0;
        while done < n && c.step() {
            done += 1;
        }
        done
    }

    /// Sets the failure injection.
    pub fn set_fault(&self, fault: ModelFault) {
        self.lock().fault = fault;
    }

    /// Sets the most descriptors DMACOUNT may put in flight.
    pub fn set_max_pending(&self, max: u16) {
        self.lock().cfg.max_pending = max;
    }

    /// CHANSTS as the register reads.
    pub fn chansts(&self) -> u64 {
        self.lock().chansts()
    }

    /// CHANERR as the register reads.
    pub fn chanerr(&self) -> u32 {
        self.lock().chanerr
    }

    /// Every rule broken so far, in order (see the [module documentation](self)).
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The model's counters.
    pub fn stats(&self) -> ModelStats {
        self.lock().stats
    }
}

impl Mmio for IoatModel {
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

impl DmaMapper for IoatModel {
    unsafe fn map(&self, iova: Iova, va: *const u8, len: usize) -> Result<(), DmaError> {
        if iova.0 != va.expose_provenance() as u64 {
            return Err(DmaError::InvalidConfig(
                "the IOAT model maps IOVA = VA only",
            ));
        }
        if !self.lock().iommu.map(iova.0, len as u64) {
            return Err(DmaError::InvalidConfig(
                "DMA mapping empty or overlapping another",
            ));
        }
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: usize) {
        if !IoatModel::unmap(self, iova, len as u64) {
            self.lock()
                .violation(format!("unmap of {iova:?}+{len:#x}, which is not mapped"));
        }
    }
}
