//! [`IoatChannel`]: the driver of one IOAT channel, after DPDK's `drivers/dma/ioat`.
//!
//! # Rings and counters
//!
//! The driver owns `D` 64-byte descriptors in one [`DmaRegion`], linked once and for all by
//! their `next` fields into a circle, and an 8-byte completion word right after them
//! (CHANCMP points there). Two sets of free-running `u16` counters are kept:
//!
//! * jobs, as the [`DmaEngine`] trait numbers them: the tracker's ring indexes, plus
//!   `jsub` (jobs before it are submitted) and `jdone` (jobs before it have finished,
//!   successfully or not);
//! * descriptors: `dwrite` (next to write), `dsub` (the device has been told of those before
//!   it), `ddone` (those before it have completed), and `offset`, where the device's chain last
//!   (re)started: DMACOUNT, the doorbell, is `dsub - offset`, the number of descriptors since
//!   then.
//!
//! A job is one descriptor, or several for a scatter-gather copy (one per contiguous piece),
//! plus possibly a null descriptor carrying a fence; `last_desc[slot]` remembers its last one.
//! `D` is the smallest power of two above `ring_size * 2 * max_sges`, so a full job ring always
//! has descriptors, and fewer than `D` descriptors are ever outstanding (the completion address
//! then names one descriptor unambiguously).
//!
//! # Completion
//!
//! Every descriptor asks for a completion write-back: the device stores CHANSTS (the address of
//! the last completed descriptor, and the state) to the completion word. `completed` reads it
//! (an Acquire load: the copies of the descriptors up to that one are then visible), turns the
//! address into a descriptor counter, checked to lie among the outstanding descriptors (garbage
//! stops the channel: [`DmaError::Device`]), and advances `jdone` over the jobs whose last
//! descriptor is done.
//!
//! # Errors and recovery
//!
//! On an error the channel halts (CHANCTRL's ANY_ERR_ABORT_EN) and writes the completion word
//! with state HALTED (ERR_COMPLETION_EN). The job holding the next descriptor failed: its status
//! comes from CHANERR. As DPDK does, the driver then clears CHANERR, resets the channel,
//! restarts the chain at the first descriptor of the next job (skipping what is left of the
//! failed one) and rings DMACOUNT again for the descriptors already submitted; the failed job is
//! reported in order like any other. If the completion word cannot be written, the driver still
//! notices a halt: every 64th `completed` call without progress reads CHANSTS.
//!
//! # Fence
//!
//! An IOAT fence on descriptor `k` holds descriptor `k + 1` until every descriptor up to `k` has
//! completed; a dmadev fence is on the later job. So, like DPDK, a fenced job sets the fence bit
//! of the previous descriptor, if that one has not been submitted yet; if it has (the device may
//! already be reading it), the job starts with a null descriptor carrying the fence instead.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicU64, fence};

use super::regs::*;
use crate::hw::dma_mem::{DmaMapper, DmaRegion};
use crate::hw::mmio::Mmio;
use crate::sg::Pieces;
use crate::track::Tracker;
use crate::{
    ChannelConfig, Completed, DmaEngine, DmaError, FailPolicy, Iova, OpFlags, Sge, Stats, Status,
};

/// Largest number of descriptors of a channel's ring.
pub const MAX_DESCRIPTORS: u32 = 1 << 15;

/// Register reads a wait for the device (reset, re-arm) makes before giving up.
const WAIT_READS: u32 = 100_000;

/// `completed` calls without progress between two reads of CHANSTS.
const QUIET_CHECK: u32 = 64;

/// The control word of every descriptor: a copy that writes the completion status back.
const CTL_BASE: u32 = OP_COPY << CTL_OP_SHIFT | CTL_COMPL_WRITE;

/// One IOAT channel driven from user space, implementing [`DmaEngine`] (see the [module
/// documentation](self)). `M` is its BAR: a [`MmioBar`](crate::hw::MmioBar) over a mapped
/// device, or a model such as [`IoatModel`](crate::model::IoatModel).
///
/// Dropping it suspends and resets the channel, waiting for the device to confirm, so the
/// device no longer touches the memory of unreported jobs; only then are its rings unmapped and
/// freed (if the device never confirms, they are leaked, and the error is logged).
pub struct IoatChannel<M: Mmio> {
    bar: M,
    mapper: Arc<dyn DmaMapper>,
    /// Descriptors, then the completion word. `None` once leaked.
    mem: Option<DmaRegion>,
    ring_iova: u64,
    status_off: usize,
    ndesc: u32,
    dmask: u16,
    max_sges: u16,
    xfer_max: u64,
    track: Tracker,
    dwrite: u16,
    dsub: u16,
    ddone: u16,
    offset: u16,
    jsub: u16,
    jdone: u16,
    /// Per job slot: the job's last descriptor.
    last_desc: Box<[u16]>,
    /// Per job slot: the job failed with this status.
    err: Box<[Option<Status>]>,
    /// The completion word as last seen.
    last_status: u64,
    quiet: u32,
    broken: Option<&'static str>,
    recoveries: u64,
}

impl<M: Mmio> std::fmt::Debug for IoatChannel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoatChannel")
            .field("track", &self.track)
            .field("descriptors", &self.ndesc)
            .field("dwrite", &self.dwrite)
            .field("dsub", &self.dsub)
            .field("ddone", &self.ddone)
            .field("offset", &self.offset)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<M: Mmio> IoatChannel<M> {
    /// Takes over the channel behind `bar`: checks its version and transfer limit, allocates
    /// and maps (with `mapper`) its descriptor ring and completion word, resets the channel and
    /// arms it with the ring.
    ///
    /// `cfg.fail` must be [`FailPolicy::Never`]: hardware cannot fail on purpose (a model can:
    /// see [`IoatModel::set_fault`](crate::model::IoatModel::set_fault)).
    pub fn new(
        bar: M,
        cfg: &ChannelConfig,
        mapper: Arc<dyn DmaMapper>,
    ) -> Result<IoatChannel<M>, DmaError> {
        cfg.validate()?;
        if cfg.fail != FailPolicy::Never {
            return Err(DmaError::InvalidConfig(
                "an IOAT channel cannot inject failures (a model can)",
            ));
        }
        let per_job = 2 * u32::from(cfg.max_sges);
        let ndesc = (u32::from(cfg.ring_size) * per_job + 1).next_power_of_two();
        if ndesc > MAX_DESCRIPTORS {
            return Err(DmaError::InvalidConfig(
                "ring_size * 2 * max_sges must be below 32768 for IOAT",
            ));
        }
        let version = bar.read8(CBVER);
        if version >> 4 != 3 {
            log::error!("IOAT version {version:#x} is not 3.x");
            return Err(DmaError::Device("not an IOAT 3.x channel"));
        }
        let xfercap = bar.read8(XFERCAP) & 0x1f;
        if xfercap == 0 {
            return Err(DmaError::Device("XFERCAP is 0"));
        }
        let ring_bytes = ndesc as usize * DESC_SIZE;
        let mem = DmaRegion::new(ring_bytes + 64)?;
        let ring_iova = mem.iova().0;
        for i in 0..ndesc as usize {
            let next = ring_iova + (((i + 1) % ndesc as usize) * DESC_SIZE) as u64;
            mem.write_u64(i * DESC_SIZE + DESC_NEXT_OFF, next);
        }
        // SAFETY: `mem` stays allocated until after `unmap` (in `drop`), or is leaked.
        unsafe { mapper.map(mem.iova(), mem.as_ptr(), mem.len())? };
        let n = usize::from(cfg.ring_size);
        let mut ch = IoatChannel {
            bar,
            mapper,
            mem: Some(mem),
            ring_iova,
            status_off: ring_bytes,
            ndesc,
            dmask: (ndesc - 1) as u16,
            max_sges: cfg.max_sges,
            xfer_max: 1u64 << xfercap,
            track: Tracker::new(cfg.ring_size),
            dwrite: 0,
            dsub: 0,
            ddone: 0,
            offset: 0,
            jsub: 0,
            jdone: 0,
            last_desc: vec![0; n].into_boxed_slice(),
            err: vec![None; n].into_boxed_slice(),
            last_status: 0,
            quiet: 0,
            broken: None,
            recoveries: 0,
        };
        if ch.bar.read16(CHANCTRL) & CHANCTRL_IN_USE != 0 {
            log::warn!("IOAT channel marked in use; taking it over");
            ch.bar.write16(CHANCTRL, 0);
        }
        ch.bar.write8(CHANCMD, CHANCMD_SUSPEND);
        if !ch.wait(|b| b.read64(CHANSTS) & CHANSTS_STATUS != CHANSTS_ACTIVE) {
            return Err(DmaError::Device("the channel did not suspend"));
        }
        ch.restart(0).map_err(DmaError::Device)?;
        Ok(ch)
    }

    /// Number of descriptors of the ring.
    pub fn descriptors(&self) -> u32 {
        self.ndesc
    }

    /// The most bytes one descriptor moves (2^XFERCAP); longer pieces are refused with
    /// [`DmaError::TooLong`].
    pub fn max_transfer(&self) -> u64 {
        self.xfer_max
    }

    /// How many times the channel was reset to recover from an error.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    /// Why the channel stopped for good, if it did.
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }

    /// The BAR (for tests and diagnostics).
    pub fn bar(&self) -> &M {
        &self.bar
    }

    fn mem(&self) -> &DmaRegion {
        // Only `None` after `drop` has leaked it.
        self.mem.as_ref().expect("DMA memory present until drop")
    }

    fn status_word(&self) -> &AtomicU64 {
        self.mem().atomic_u64(self.status_off)
    }

    fn status_iova(&self) -> u64 {
        self.ring_iova + self.status_off as u64
    }

    #[inline]
    fn desc_off(&self, d: u16) -> usize {
        usize::from(d & self.dmask) * DESC_SIZE
    }

    /// Reads registers until `ok`, at most [`WAIT_READS`] times.
    fn wait(&self, ok: impl Fn(&M) -> bool) -> bool {
        for _ in 0..WAIT_READS {
            if ok(&self.bar) {
                return true;
            }
            std::hint::spin_loop();
        }
        ok(&self.bar)
    }

    /// Resets the channel and restarts its chain at descriptor `from`: clears CHANERR, resets,
    /// sets CHAINADDR, CHANCTRL and CHANCMP, waits for ARMED, zeroes the completion word, and
    /// rings DMACOUNT for the descriptors already submitted from `from` on.
    fn restart(&mut self, from: u16) -> Result<(), &'static str> {
        let chanerr = self.bar.read32(CHANERR);
        if chanerr != 0 {
            // Write 1 to clear.
            self.bar.write32(CHANERR, chanerr);
        }
        self.bar.write8(CHANCMD, CHANCMD_RESET);
        if !self.wait(|b| b.read8(CHANCMD) & CHANCMD_RESET == 0) {
            return Err("the channel did not reset");
        }
        // The device is reset: it writes nothing until re-armed and rung.
        self.status_word().store(0, Relaxed);
        self.last_status = 0;
        let chain = self.ring_iova + self.desc_off(from) as u64;
        self.bar.write64(CHAINADDR, chain);
        self.bar.write16(
            CHANCTRL,
            CHANCTRL_ANY_ERR_ABORT_EN | CHANCTRL_ERR_COMPLETION_EN,
        );
        self.bar.write64(CHANCMP, self.status_iova());
        if !self.wait(|b| b.read64(CHANSTS) == CHANSTS_ARMED) {
            return Err("the channel did not arm after a reset");
        }
        self.offset = from;
        self.ddone = from;
        self.quiet = 0;
        if self.dsub != from {
            self.ring_doorbell();
        }
        Ok(())
    }

    #[inline]
    fn ring_doorbell(&mut self) {
        // Release: the descriptors written before are visible to the device before it can see
        // the new count (on x86 a compiler barrier: an uncached MMIO store is ordered after
        // earlier stores; the model synchronises through its lock).
        fence(std::sync::atomic::Ordering::Release);
        self.bar
            .write16(DMACOUNT, self.dsub.wrapping_sub(self.offset));
    }

    /// Writes descriptor `dwrite` and advances it.
    #[inline]
    fn put(&mut self, size: u32, ctl: u32, src: u64, dst: u64) {
        let off = self.desc_off(self.dwrite);
        let mem = self.mem();
        mem.write_u32(off + DESC_SIZE_OFF, size);
        mem.write_u32(off + DESC_CTL_OFF, ctl);
        mem.write_u64(off + DESC_SRC_OFF, src);
        mem.write_u64(off + DESC_DST_OFF, dst);
        self.dwrite = self.dwrite.wrapping_add(1);
    }

    /// Orders the job about to be written after every earlier one (see the module docs).
    fn fence_before(&mut self) {
        if self.dwrite != self.dsub {
            let off = self.desc_off(self.dwrite.wrapping_sub(1)) + DESC_CTL_OFF;
            let mem = self.mem();
            mem.write_u32(off, mem.read_u32(off) | CTL_FENCE);
        } else if self.dsub != self.ddone {
            self.put(NULL_DESC_SIZE, CTL_BASE | CTL_NULL | CTL_FENCE, 0, 0);
        }
    }

    fn enqueue(&mut self, pieces: Pieces<'_>, flags: OpFlags) -> Result<u16, DmaError> {
        if let Some(why) = self.broken {
            return Err(DmaError::Device(why));
        }
        let idx = self.track.reserve()?;
        if let Some(p) = pieces.clone().find(|p| u64::from(p.2) > self.xfer_max) {
            return Err(DmaError::TooLong {
                len: u64::from(p.2),
                max: self.xfer_max,
            });
        }
        if flags.contains(OpFlags::FENCE) {
            self.fence_before();
        }
        let first = self.dwrite;
        for (src, dst, len) in pieces {
            self.put(len, CTL_BASE, src, dst);
        }
        if self.dwrite == first {
            // Nothing to move: a null descriptor stands for the job.
            self.put(NULL_DESC_SIZE, CTL_BASE | CTL_NULL, 0, 0);
        }
        let slot = self.track.slot(idx);
        self.last_desc[slot] = self.dwrite.wrapping_sub(1);
        self.err[slot] = None;
        self.track.commit();
        if flags.contains(OpFlags::SUBMIT) {
            self.submit()?;
        }
        Ok(idx)
    }

    /// Whether descriptor `d` (outstanding or recent) has completed.
    #[inline]
    fn desc_done(&self, d: u16) -> bool {
        self.ddone.wrapping_sub(d).wrapping_sub(1) < 0x8000
    }

    /// Reads the device's progress: the completion word, and now and then CHANSTS.
    fn poll_hw(&mut self) {
        if self.broken.is_some() || self.jdone == self.jsub {
            self.quiet = 0;
            return;
        }
        // Acquire: pairs with the device's write-back, which follows its copies.
        let st = self.status_word().load(Acquire);
        if st != self.last_status {
            self.last_status = st;
            self.quiet = 0;
            self.progress(st);
            return;
        }
        self.quiet += 1;
        if self.quiet % QUIET_CHECK == 0 {
            let reg = self.bar.read64(CHANSTS);
            if reg & CHANSTS_STATUS == CHANSTS_HALTED {
                log::warn!("IOAT channel halted without a completion write-back");
                self.progress(reg);
            }
        }
    }

    /// Applies a CHANSTS value (from the completion word or the register).
    fn progress(&mut self, st: u64) {
        let addr = st & CHANSTS_COMPLETED_ADDR;
        if addr != 0 {
            let off = addr.wrapping_sub(self.ring_iova);
            if off >= u64::from(self.ndesc) * DESC_SIZE as u64 || off % DESC_SIZE as u64 != 0 {
                return self.stop("completion address outside the descriptor ring");
            }
            let slot = (off / DESC_SIZE as u64) as u16;
            let delta = slot.wrapping_sub(self.ddone.wrapping_sub(1)) & self.dmask;
            if delta > self.dsub.wrapping_sub(self.ddone) {
                return self.stop("completion address of a descriptor not submitted");
            }
            self.ddone = self.ddone.wrapping_add(delta);
            while self.jdone != self.jsub
                && self.desc_done(self.last_desc[self.track.slot(self.jdone)])
            {
                self.jdone = self.jdone.wrapping_add(1);
            }
        }
        if st & CHANSTS_STATUS == CHANSTS_HALTED {
            self.recover();
        }
    }

    /// The channel halted: the job holding descriptor `ddone` failed. Reset and restart at the
    /// next job.
    #[cold]
    fn recover(&mut self) {
        let chanerr = self.bar.read32(CHANERR);
        let restart = if self.jdone != self.jsub {
            let slot = self.track.slot(self.jdone);
            self.err[slot] = Some(status_of(chanerr));
            self.jdone = self.jdone.wrapping_add(1);
            self.last_desc[slot].wrapping_add(1)
        } else {
            // Nothing of ours was running: a configuration error.
            log::error!("IOAT channel halted with no job running, CHANERR {chanerr:#x}");
            self.dsub
        };
        log::debug!("IOAT channel halted, CHANERR {chanerr:#x}; restarting at {restart}");
        self.recoveries += 1;
        if let Err(why) = self.restart(restart) {
            self.stop(why);
        }
    }

    /// Stops the channel for good: resets it and, once the device confirms, reports every
    /// submitted job not finished as failed (its memory is no longer touched).
    #[cold]
    fn stop(&mut self, why: &'static str) {
        log::error!("IOAT channel stopped: {why}");
        self.broken = Some(why);
        self.bar.write8(CHANCMD, CHANCMD_RESET);
        if self.wait(|b| b.read8(CHANCMD) & CHANCMD_RESET == 0) {
            while self.jdone != self.jsub {
                let slot = self.track.slot(self.jdone);
                self.err[slot].get_or_insert(Status::ErrorUnknown);
                self.jdone = self.jdone.wrapping_add(1);
            }
        } else {
            log::error!("IOAT channel did not reset: its jobs stay in flight");
        }
    }
}

/// The status of submitted job `idx` if it has finished: every job before `jdone` has; `err`
/// holds the failures, per slot (its length is the ring size, a power of two).
#[inline]
fn record(jdone: u16, err: &[Option<Status>], idx: u16) -> Option<Status> {
    let done = jdone.wrapping_sub(idx).wrapping_sub(1) < 0x8000;
    done.then(|| err[usize::from(idx) & (err.len() - 1)].unwrap_or(Status::Successful))
}

/// The job status of a CHANERR value.
pub fn status_of(chanerr: u32) -> Status {
    let table = [
        (CHANERR_SRC_ADDR, Status::InvalidSrcAddr),
        (CHANERR_DEST_ADDR, Status::InvalidDstAddr),
        (CHANERR_READ_DATA, Status::BusReadError),
        (CHANERR_WRITE_DATA, Status::BusWriteError),
        (CHANERR_LENGTH, Status::InvalidLength),
        (CHANERR_CONTROL, Status::InvalidOpcode),
        (CHANERR_NEXT_ADDR, Status::InvalidAddr),
        (CHANERR_NEXT_DESC_ALIGN, Status::InvalidAddr),
        (CHANERR_CHAIN_ADDR_VALUE, Status::InvalidAddr),
    ];
    (table.iter())
        .find(|(bit, _)| chanerr & bit != 0)
        .map_or(Status::ErrorUnknown, |&(_, s)| s)
}

impl<M: Mmio> DmaEngine for IoatChannel<M> {
    unsafe fn copy(
        &mut self,
        src: Iova,
        dst: Iova,
        len: u32,
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        let (s, d) = ([Sge::new(src, len)], [Sge::new(dst, len)]);
        let pieces = Pieces::new(&s, &d);
        self.enqueue(pieces, flags)
    }

    unsafe fn copy_sg(
        &mut self,
        src: &[Sge],
        dst: &[Sge],
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        crate::sg::validate(src, dst, self.max_sges)?;
        let pieces = Pieces::new(src, dst);
        self.enqueue(pieces, flags)
    }

    fn submit(&mut self) -> Result<(), DmaError> {
        if let Some(why) = self.broken {
            return Err(DmaError::Device(why));
        }
        if let Some((_, to)) = self.track.submit() {
            self.jsub = to;
            self.dsub = self.dwrite;
            self.ring_doorbell();
        }
        Ok(())
    }

    fn completed(&mut self, max: u16) -> Completed {
        self.poll_hw();
        let (jdone, err) = (self.jdone, &self.err);
        self.track.completed(max, |idx| record(jdone, err, idx))
    }

    fn completed_status(&mut self, max: u16, status: &mut [Status]) -> Completed {
        self.poll_hw();
        let (jdone, err) = (self.jdone, &self.err);
        (self.track).completed_status(max, status, |idx| record(jdone, err, idx))
    }

    fn burst_capacity(&self) -> u16 {
        self.track.capacity()
    }

    fn in_flight(&self) -> u16 {
        self.track.in_flight()
    }

    fn ring_size(&self) -> u16 {
        self.track.ring_size()
    }

    fn max_sges(&self) -> u16 {
        self.max_sges
    }

    fn stats(&self) -> Stats {
        self.track.stats()
    }

    fn reset_stats(&mut self) {
        self.track.reset_stats();
    }
}

impl<M: Mmio> Drop for IoatChannel<M> {
    fn drop(&mut self) {
        self.bar.write8(CHANCMD, CHANCMD_SUSPEND);
        let suspended = self.wait(|b| {
            matches!(
                b.read64(CHANSTS) & CHANSTS_STATUS,
                CHANSTS_SUSPENDED | CHANSTS_HALTED | CHANSTS_ARMED
            )
        });
        self.bar.write8(CHANCMD, CHANCMD_RESET);
        let reset = self.wait(|b| b.read8(CHANCMD) & CHANCMD_RESET == 0);
        let Some(mem) = self.mem.take() else { return };
        if suspended && reset {
            self.mapper.unmap(mem.iova(), mem.len());
            drop(mem);
        } else {
            log::error!("IOAT channel did not stop: leaking its rings, which it may still use");
            std::mem::forget(mem);
        }
    }
}
