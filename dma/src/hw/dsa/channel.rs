//! [`DsaChannel`]: the [`DmaEngine`] over a DSA device's dedicated WQ, after DPDK's
//! `drivers/dma/idxd` (`idxd_common.c`).
//!
//! # Descriptors, batches, completion records
//!
//! Every job becomes MEMMOVE descriptors, one per contiguous piece (a NOOP for an empty job),
//! written to a descriptor ring in one [`DmaRegion`]; each descriptor has a 32-byte
//! completion record beside it, with CRAV set and RCR clear, so the device writes it only if
//! the descriptor fails. Jobs accumulate in an *open batch*; [`submit`](DmaEngine::submit)
//! closes it and writes it to the WQ's [`Portal`]: as one BATCH descriptor (descriptor list =
//! the batch's descriptors, its own completion record, RCR set) when it holds two or more
//! descriptors, or as the lone descriptor itself, with RCR set, otherwise (DSA 1.x refuses a
//! batch of fewer than two, and DPDK submits a lone job directly too). A batch is also closed
//! when the next job would take it past the WQ's maximum batch size, and before a fenced job.
//!
//! A batch's descriptors are contiguous. Like DPDK, the ring never splits a batch: positions
//! run on past the ring's end into `max_batch` spare slots, and a new batch starts back at
//! its masked position. So a descriptor's position is always its (free-running) number
//! modulo `D`, plus 0 or `D`; and fewer than `D` descriptors belong to unreported jobs (`D`, a
//! power of two, holds a full ring of the largest jobs): no two of them share a position.
//!
//! # Completion and in-order retirement
//!
//! The device writes a completion record's status byte last (the model, like silicon, with
//! one Release store of the word holding it; the driver reads it with an Acquire load). The
//! driver looks only at the *oldest* batch not yet retired: when its record has a status, the
//! jobs of the batch get theirs (success; or, for a failed batch, each job's first failed
//! descriptor's record, and NotAttempted past the count the batch completed), and the next
//! batch is looked at. A later batch finished before an earlier one (several engines) is
//! therefore only retired, and reported, after it: reports are always in ring order.
//!
//! # WQ occupancy and fences
//!
//! A dedicated WQ holds `wq_size` descriptors, and silently drops a write beyond that. The
//! driver sends a batch only while fewer than `wq_size` batches are sent and not retired (a
//! retired batch has left the WQ), and otherwise holds it; held batches go out from
//! [`completed`](DmaEngine::completed) / [`completed_status`](DmaEngine::completed_status)
//! as earlier ones retire. A DSA fence only orders descriptors inside one batch, and abandons
//! the rest of the batch after a failure, which is not dmadev's fence (a fenced job runs even
//! after a failure). So a fenced job starts a new batch, which is held until every earlier
//! batch has been retired: the fence is the driver's.
//!
//! # Errors
//!
//! DSA does not halt on a failed descriptor: its record carries the status, which
//! [`status_of`] maps onto [`Status`] (a page fault becomes [`Status::PageFault`], its address
//! is kept: [`DsaChannel::last_fault`]). If nothing progresses for a while, the driver reads
//! the WQ's state; a WQ or device disabled under it stops the channel
//! ([`DmaError::Device`]), reporting its submitted jobs as failed.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::fence;

use super::portal::{Descriptor, Portal};
use super::regs::*;
use super::setup::DsaDevice;
use crate::hw::dma_mem::{DmaMapper, DmaRegion};
use crate::hw::mmio::Mmio;
use crate::sg::Pieces;
use crate::track::Tracker;
use crate::{
    ChannelConfig, Completed, DmaEngine, DmaError, FailPolicy, Iova, OpFlags, Sge, Stats, Status,
};

/// Largest number of descriptors of a channel's ring.
pub const MAX_DESCRIPTORS: u32 = 1 << 15;

/// `completed` calls without progress between two reads of the WQ's state.
const QUIET_CHECK: u32 = 64;

/// Flags of every job descriptor: a record on error only, destination to the cache.
const JOB_FLAGS: u32 = flag::CRAV | flag::CC;

/// A page fault a job reported: the job, the address, and whether it was a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsaFaultInfo {
    /// Ring index of the job.
    pub job: u16,
    /// The address that could not be translated.
    pub addr: Iova,
    /// The fault was on a write (the destination).
    pub write: bool,
}

/// A run of jobs sent as one BATCH descriptor, or as one descriptor if it has one.
#[derive(Clone, Copy, Debug, Default)]
struct Batch {
    /// Position (ring slot, or spare slot past the ring) of its first descriptor.
    pos: u32,
    /// Descriptors.
    ndesc: u16,
    /// Ring index of its first job, and number of jobs.
    job: u16,
    njobs: u16,
    /// Sent only once every earlier batch has been retired.
    fence: bool,
}

/// Where a job's descriptors are.
#[derive(Clone, Copy, Debug, Default)]
struct JobDesc {
    pos: u32,
    ndesc: u16,
}

/// The [`DmaEngine`] over WQ 0 of a [`DsaDevice`] (see the [module documentation](self)).
/// `M` is the device's BAR, `P` its WQ's portal: a [`MovdirPortal`](super::MovdirPortal) or a
/// model's.
///
/// Dropping it disables the WQ and the device, so the device no longer touches the memory of
/// unreported jobs; only then are the rings unmapped and freed (if the WQ does not read as
/// disabled, they are leaked, and the error is logged).
pub struct DsaChannel<M: Mmio, P: Portal> {
    dev: DsaDevice<M>,
    portal: P,
    mapper: Arc<dyn DmaMapper>,
    /// Descriptors, their records, the batches' records. `None` once leaked.
    mem: Option<DmaRegion>,
    base: u64,
    rec_off: usize,
    brec_off: usize,
    ndesc: u32,
    dmask: u16,
    max_sges: u16,
    max_batch: u16,
    wq_size: u16,
    xfer_max: u64,
    track: Tracker,
    /// Next descriptor to write (free-running).
    dwrite: u16,
    /// The batch jobs are being added to (`njobs == 0`: none yet).
    open: Batch,
    batches: Box<[Batch]>,
    /// Batch counters: closed, submitted, sent to the portal, retired (`retired <= sent <=
    /// submitted <= closed`).
    bclosed: u16,
    bsub: u16,
    bsent: u16,
    bretired: u16,
    /// Jobs before this one are retired (finished, status known).
    jdone: u16,
    jobs: Box<[JobDesc]>,
    err: Box<[Option<Status>]>,
    quiet: u32,
    broken: Option<&'static str>,
    last_fault: Option<DsaFaultInfo>,
}

impl<M: Mmio, P: Portal> std::fmt::Debug for DsaChannel<M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsaChannel")
            .field("track", &self.track)
            .field("descriptors", &self.ndesc)
            .field("dwrite", &self.dwrite)
            .field("open", &self.open)
            .field("bclosed", &self.bclosed)
            .field("bsub", &self.bsub)
            .field("bsent", &self.bsent)
            .field("bretired", &self.bretired)
            .field("jdone", &self.jdone)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<M: Mmio, P: Portal> DsaChannel<M, P> {
    /// Drives WQ 0 of `dev` through `portal`: allocates and maps (with `mapper`) the
    /// descriptor ring and completion records.
    ///
    /// `cfg.fail` must be [`FailPolicy::Never`]: hardware cannot fail on purpose (a model
    /// can: [`DsaModel::set_fault`](crate::model::DsaModel::set_fault)). A scatter-gather job
    /// of `2 * max_sges - 1` pieces must fit in one batch.
    pub fn new(
        dev: DsaDevice<M>,
        portal: P,
        cfg: &ChannelConfig,
        mapper: Arc<dyn DmaMapper>,
    ) -> Result<DsaChannel<M, P>, DmaError> {
        cfg.validate()?;
        if cfg.fail != FailPolicy::Never {
            return Err(DmaError::InvalidConfig(
                "a DSA channel cannot inject failures (a model can)",
            ));
        }
        if !dev.wq_enabled() {
            return Err(DmaError::Device("DSA WQ 0 is not enabled"));
        }
        let caps = *dev.caps();
        let per_job = 2 * u32::from(cfg.max_sges) - 1;
        let ndesc = (u32::from(cfg.ring_size) * per_job).next_power_of_two();
        if ndesc > MAX_DESCRIPTORS {
            return Err(DmaError::InvalidConfig(
                "ring_size * (2 * max_sges - 1) must be at most 32768 for DSA",
            ));
        }
        let max_batch = (1u32 << caps.max_batch_shift).min(ndesc);
        if per_job > 1 && per_job > max_batch {
            return Err(DmaError::InvalidConfig(
                "a scatter-gather job may need more descriptors than a DSA batch holds",
            ));
        }
        let positions = (ndesc + max_batch) as usize;
        let rec_off = positions * DESC_SIZE;
        let brec_off = rec_off + positions * COMP_SIZE;
        let n = usize::from(cfg.ring_size);
        let mem = DmaRegion::new(brec_off + n * COMP_SIZE)?;
        // SAFETY: `mem` stays allocated until after `unmap` (in `drop`), or is leaked.
        unsafe { mapper.map(mem.iova(), mem.as_ptr(), mem.len())? };
        Ok(DsaChannel {
            dev,
            portal,
            mapper,
            base: mem.iova().0,
            mem: Some(mem),
            rec_off,
            brec_off,
            ndesc,
            dmask: (ndesc - 1) as u16,
            max_sges: cfg.max_sges,
            // At most 2^15 (ndesc).
            max_batch: max_batch as u16,
            wq_size: caps.total_wq_size,
            xfer_max: 1u64 << caps.max_xfer_shift,
            track: Tracker::new(cfg.ring_size),
            dwrite: 0,
            open: Batch::default(),
            batches: vec![Batch::default(); n].into_boxed_slice(),
            bclosed: 0,
            bsub: 0,
            bsent: 0,
            bretired: 0,
            jdone: 0,
            jobs: vec![JobDesc::default(); n].into_boxed_slice(),
            err: vec![None; n].into_boxed_slice(),
            quiet: 0,
            broken: None,
            last_fault: None,
        })
    }

    /// Descriptors of the ring.
    pub fn descriptors(&self) -> u32 {
        self.ndesc
    }

    /// The most descriptors of one batch.
    pub fn max_batch(&self) -> u16 {
        self.max_batch
    }

    /// Entries of the WQ: the most batches sent and not retired.
    pub fn wq_size(&self) -> u16 {
        self.wq_size
    }

    /// Batches (or lone descriptors) written to the portal and not yet retired.
    pub fn batches_in_wq(&self) -> u16 {
        self.bsent.wrapping_sub(self.bretired)
    }

    /// Batches submitted but held back (WQ full, or a fence waiting).
    pub fn batches_held(&self) -> u16 {
        self.bsub.wrapping_sub(self.bsent)
    }

    /// The most bytes one descriptor moves; longer pieces are refused with
    /// [`DmaError::TooLong`].
    pub fn max_transfer(&self) -> u64 {
        self.xfer_max
    }

    /// The last page fault a job reported.
    pub fn last_fault(&self) -> Option<DsaFaultInfo> {
        self.last_fault
    }

    /// Why the channel stopped for good, if it did.
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }

    /// The device.
    pub fn device(&self) -> &DsaDevice<M> {
        &self.dev
    }

    fn mem(&self) -> &DmaRegion {
        // Only `None` after `drop` has leaked it.
        self.mem.as_ref().expect("DMA memory present until drop")
    }

    #[inline]
    fn desc_off(pos: u32) -> usize {
        pos as usize * DESC_SIZE
    }

    #[inline]
    fn rec_off(&self, pos: u32) -> usize {
        self.rec_off + pos as usize * COMP_SIZE
    }

    #[inline]
    fn brec_off(&self, b: u16) -> usize {
        self.brec_off + self.track.slot(b) * COMP_SIZE
    }

    /// Writes descriptor `desc` at position `pos`, and zeroes its completion record.
    #[inline]
    fn put(&self, pos: u32, op: u8, src: u64, dst: u64, size: u32) {
        let (off, rec) = (Self::desc_off(pos), self.rec_off(pos));
        let mem = self.mem();
        mem.atomic_u64(rec).store(0, Relaxed);
        let opflags = u32::from(op) << DESC_OPCODE_SHIFT | JOB_FLAGS;
        let words = [
            u64::from(opflags) << DESC_OP_FLAGS_SHIFT,
            self.base + rec as u64,
            src,
            dst,
            u64::from(size),
            0,
            0,
            0,
        ];
        for (k, w) in words.into_iter().enumerate() {
            mem.write_u64(off + 8 * k, w);
        }
    }

    /// Closes the open batch (not empty).
    fn close(&mut self) {
        let b = std::mem::take(&mut self.open);
        let slot = self.track.slot(self.bclosed);
        self.batches[slot] = b;
        if b.ndesc > 1 {
            let off = self.brec_off(self.bclosed);
            self.mem().atomic_u64(off).store(0, Relaxed);
        }
        self.bclosed = self.bclosed.wrapping_add(1);
    }

    fn enqueue(&mut self, pieces: Pieces<'_>, flags: OpFlags) -> Result<u16, DmaError> {
        if let Some(why) = self.broken {
            return Err(DmaError::Device(why));
        }
        let idx = self.track.reserve()?;
        let mut n = 0u16;
        for p in pieces.clone() {
            if u64::from(p.2) > self.xfer_max {
                return Err(DmaError::TooLong {
                    len: u64::from(p.2),
                    max: self.xfer_max,
                });
            }
            n += 1;
        }
        let n = n.max(1);
        let fence = flags.contains(OpFlags::FENCE);
        let open = &self.open;
        if open.njobs > 0
            && (fence || u32::from(open.ndesc) + u32::from(n) > u32::from(self.max_batch))
        {
            self.close();
        }
        if self.open.njobs == 0 {
            self.open = Batch {
                pos: u32::from(self.dwrite & self.dmask),
                ndesc: 0,
                job: idx,
                njobs: 0,
                fence,
            };
        }
        let first = self.open.pos + u32::from(self.open.ndesc);
        let mut pos = first;
        for (src, dst, len) in pieces {
            self.put(pos, op::MEMMOVE, src, dst, len);
            pos += 1;
        }
        if pos == first {
            // Nothing to move: a NOOP stands for the job.
            self.put(pos, op::NOOP, 0, 0, 0);
        }
        let slot = self.track.slot(idx);
        self.jobs[slot] = JobDesc {
            pos: first,
            ndesc: n,
        };
        self.err[slot] = None;
        self.open.ndesc += n;
        self.open.njobs += 1;
        self.dwrite = self.dwrite.wrapping_add(n);
        self.track.commit();
        if flags.contains(OpFlags::SUBMIT) {
            self.submit()?;
        }
        Ok(idx)
    }

    /// Sends the submitted batches the WQ has room for, in order, stopping at a fenced one
    /// while earlier batches are not retired.
    fn flush(&mut self) {
        while self.bsent != self.bsub {
            let b = self.batches[self.track.slot(self.bsent)];
            let in_wq = self.bsent.wrapping_sub(self.bretired);
            if in_wq >= self.wq_size || (b.fence && in_wq != 0) {
                break;
            }
            let desc = if b.ndesc == 1 {
                let off = Self::desc_off(b.pos);
                let mut d = Descriptor::default();
                for (k, w) in d.0.iter_mut().enumerate() {
                    *w = self.mem().read_u64(off + 8 * k);
                }
                d.0[0] |= u64::from(flag::RCR) << DESC_OP_FLAGS_SHIFT;
                d
            } else {
                let opflags = u32::from(op::BATCH) << DESC_OPCODE_SHIFT | flag::CRAV | flag::RCR;
                let mut d = Descriptor::default();
                d.0[0] = u64::from(opflags) << DESC_OP_FLAGS_SHIFT;
                d.0[DESC_COMP_WORD] = self.base + self.brec_off(self.bsent) as u64;
                d.0[DESC_SRC_WORD] = self.base + Self::desc_off(b.pos) as u64;
                d.0[DESC_SIZE_WORD] = u64::from(b.ndesc);
                d
            };
            // Release: the descriptors and zeroed records written before are visible to the
            // device before the portal write (on x86 the portal does an SFENCE; the model
            // synchronises through its lock).
            fence(Release);
            self.portal.submit(&desc);
            self.bsent = self.bsent.wrapping_add(1);
        }
    }

    /// Reads the oldest batches' records, retires the finished ones, sends held batches.
    fn poll_hw(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let mut progress = false;
        while self.bretired != self.bsent {
            let b = self.batches[self.track.slot(self.bretired)];
            let off = if b.ndesc == 1 {
                self.rec_off(b.pos)
            } else {
                self.brec_off(self.bretired)
            };
            // Acquire: pairs with the device's Release store of the status word, which
            // follows its copies and the members' records.
            let w0 = self.mem().atomic_u64(off).load(Acquire);
            if w0 as u8 == comp::NONE {
                break;
            }
            self.retire(b, off, w0);
            self.bretired = self.bretired.wrapping_add(1);
            progress = true;
        }
        if progress || self.bretired == self.bsent {
            self.quiet = 0;
        } else {
            self.quiet += 1;
            if self.quiet % QUIET_CHECK == 0 && !self.dev.wq_enabled() {
                return self.stop("the DSA WQ was disabled under the driver");
            }
        }
        self.flush();
    }

    /// Gives the jobs of finished batch `b` (record at `off`, word 0 `w0`) their statuses.
    fn retire(&mut self, b: Batch, off: usize, w0: u64) {
        let code = w0 as u8;
        if b.ndesc == 1 {
            self.set_status(b.job, off, code);
        } else if code != comp::SUCCESS {
            // Descriptors the batch completed (processed, successfully or not).
            let done = (w0 >> COMP_BYTES_SHIFT) as u32;
            if code != comp::BATCH_FAIL {
                log::warn!("DSA batch of {} descriptors failed with {code:#x}", b.ndesc);
            }
            for k in 0..b.njobs {
                let job = b.job.wrapping_add(k);
                let jd = self.jobs[self.track.slot(job)];
                for p in jd.pos..jd.pos + u32::from(jd.ndesc) {
                    let (st, at) = if p - b.pos < done {
                        let at = self.rec_off(p);
                        (self.mem().atomic_u64(at).load(Acquire) as u8, at)
                    } else if code == comp::BATCH_FAIL {
                        // Abandoned after a fenced failure (the driver sets no DSA fence).
                        self.err[self.track.slot(job)] = Some(Status::NotAttempted);
                        break;
                    } else {
                        // Not processed: the batch's own error (its record at `off`).
                        (code, off)
                    };
                    if st != comp::NONE && st != comp::SUCCESS {
                        self.set_status(job, at, st);
                        break;
                    }
                }
            }
        }
        self.jdone = self.jdone.wrapping_add(b.njobs);
    }

    /// Job `job` failed with status byte `code` (record at `off`), unless it is a success.
    fn set_status(&mut self, job: u16, off: usize, code: u8) {
        if code == comp::SUCCESS {
            return;
        }
        let st = status_of(code);
        if st == Status::PageFault {
            let addr = self.mem().atomic_u64(off + 8).load(Relaxed);
            self.last_fault = Some(DsaFaultInfo {
                job,
                addr: Iova(addr),
                write: code & comp::FAULT_WRITE != 0,
            });
        }
        self.err[self.track.slot(job)] = Some(st);
    }

    /// Stops the channel for good: the WQ no longer runs anything of ours, so every submitted
    /// job not retired is reported as failed (sent ones `ErrorUnknown`, held ones
    /// `NotAttempted`).
    #[cold]
    fn stop(&mut self, why: &'static str) {
        log::error!("DSA channel stopped: {why}");
        self.broken = Some(why);
        while self.bretired != self.bsub {
            let b = self.batches[self.track.slot(self.bretired)];
            let st = if self.bretired == self.bsent {
                Status::NotAttempted
            } else {
                Status::ErrorUnknown
            };
            for k in 0..b.njobs {
                let slot = self.track.slot(b.job.wrapping_add(k));
                self.err[slot] = Some(st);
            }
            if self.bsent == self.bretired {
                self.bsent = self.bsent.wrapping_add(1);
            }
            self.bretired = self.bretired.wrapping_add(1);
            self.jdone = self.jdone.wrapping_add(b.njobs);
        }
    }
}

/// The status of submitted job `idx` if it has been retired: every job before `jdone` has;
/// `err` holds the failures, per slot (its length is the ring size, a power of two).
#[inline]
fn record(jdone: u16, err: &[Option<Status>], idx: u16) -> Option<Status> {
    let done = jdone.wrapping_sub(idx).wrapping_sub(1) < 0x8000;
    done.then(|| err[usize::from(idx) & (err.len() - 1)].unwrap_or(Status::Successful))
}

/// The job status of a completion record's status byte.
pub fn status_of(code: u8) -> Status {
    match code & comp::STATUS_MASK {
        comp::SUCCESS => Status::Successful,
        comp::PAGE_FAULT_NOBOF | comp::BATCH_PAGE_FAULT => Status::PageFault,
        comp::BAD_OPCODE => Status::InvalidOpcode,
        comp::XFER_ERANGE => Status::InvalidLength,
        comp::DESCLIST_ALIGN => Status::InvalidAddr,
        _ => Status::ErrorUnknown,
    }
}

impl<M: Mmio, P: Portal> DmaEngine for DsaChannel<M, P> {
    unsafe fn copy(
        &mut self,
        src: Iova,
        dst: Iova,
        len: u32,
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        let (s, d) = ([Sge::new(src, len)], [Sge::new(dst, len)]);
        self.enqueue(Pieces::new(&s, &d), flags)
    }

    unsafe fn copy_sg(
        &mut self,
        src: &[Sge],
        dst: &[Sge],
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        crate::sg::validate(src, dst, self.max_sges)?;
        self.enqueue(Pieces::new(src, dst), flags)
    }

    fn submit(&mut self) -> Result<(), DmaError> {
        if let Some(why) = self.broken {
            return Err(DmaError::Device(why));
        }
        if self.track.submit().is_some() {
            if self.open.njobs > 0 {
                self.close();
            }
            self.bsub = self.bclosed;
            self.flush();
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

impl<M: Mmio, P: Portal> Drop for DsaChannel<M, P> {
    fn drop(&mut self) {
        if let Err(e) = self.dev.disable() {
            log::warn!("disabling the DSA device: {e}");
        }
        let Some(mem) = self.mem.take() else { return };
        if !self.dev.wq_enabled() {
            self.mapper.unmap(mem.iova(), mem.len());
            drop(mem);
        } else {
            log::error!("DSA WQ still enabled: leaking its rings, which it may still use");
            std::mem::forget(mem);
        }
    }
}
