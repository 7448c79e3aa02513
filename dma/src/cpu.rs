//! The CPU engine: the reference behaviour. Jobs are copied with `memcpy` on the calling thread,
//! in ring order, when they are submitted; a submitted job is finished at once.

use crate::fault::FaultState;
use crate::sg::{self, Cursor};
use crate::track::Tracker;
use crate::{
    ChannelConfig, Completed, DmaEngine, DmaError, FailPolicy, Iova, OpFlags, Sge, Stats, Status,
};

/// A job enqueued and not yet submitted.
#[derive(Clone, Copy, Debug, Default)]
enum Job {
    #[default]
    Empty,
    Copy {
        src: Iova,
        dst: Iova,
        len: u32,
    },
    /// Entries `start..start + nb_src` (sources) then `nb_dst` destinations of the SG arena.
    Sg {
        start: u32,
        nb_src: u16,
        nb_dst: u16,
    },
}

/// A synchronous copy engine: [`submit`](DmaEngine::submit) copies every enqueued job, in
/// order, before it returns, and the jobs are then reported by the next
/// [`completed`](DmaEngine::completed). Fences are trivially honoured.
///
/// It supports the same [`FailPolicy`] as the soft engine, so users can test their error paths
/// without a thread. Dropping it with jobs enqueued or unreported is fine: jobs not submitted
/// are never run, submitted ones already ran.
pub struct CpuEngine {
    track: Tracker,
    max_sges: u16,
    /// Per slot: the job, from enqueue to submit.
    jobs: Box<[Job]>,
    /// Scatter-gather lists of the jobs not yet submitted; emptied at each submit (its
    /// capacity stays, so a warm engine does not allocate).
    arena: Vec<Sge>,
    /// Per slot: the status of a submitted job.
    status: Box<[Status]>,
    fault: FaultState,
}

impl std::fmt::Debug for CpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEngine")
            .field("track", &self.track)
            .field("max_sges", &self.max_sges)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl CpuEngine {
    /// A CPU engine with one channel configured by `cfg`.
    pub fn new(cfg: &ChannelConfig) -> Result<CpuEngine, DmaError> {
        cfg.validate()?;
        let n = usize::from(cfg.ring_size);
        Ok(CpuEngine {
            track: Tracker::new(cfg.ring_size),
            max_sges: cfg.max_sges,
            jobs: vec![Job::Empty; n].into_boxed_slice(),
            arena: Vec::new(),
            status: vec![Status::Successful; n].into_boxed_slice(),
            fault: FaultState::new(cfg.fail),
        })
    }

    /// Replaces the failure injection policy (applies to jobs submitted from now on).
    pub fn set_fail_policy(&mut self, policy: FailPolicy) {
        self.fault.set(policy);
    }

    /// Runs one submitted job and records its status.
    fn run(&mut self, idx: u16) {
        let slot = self.track.slot(idx);
        let job = std::mem::take(&mut self.jobs[slot]);
        let status = match self.fault.check(idx) {
            Some(status) => status,
            None => {
                match job {
                    Job::Empty => unreachable!("submitted slot without a job"),
                    // SAFETY: the caller of `copy` guaranteed the two ranges valid, disjoint and
                    // exclusively the engine's until the job is reported, which happens only
                    // after this (its status is written below).
                    Job::Copy { src, dst, len } => unsafe {
                        sg::copy_raw(src.0, dst.0, len as usize)
                    },
                    Job::Sg {
                        start,
                        nb_src,
                        nb_dst,
                    } => {
                        let start = start as usize;
                        let mid = start + usize::from(nb_src);
                        let lists = &self.arena[start..mid + usize::from(nb_dst)];
                        let (src, dst) = lists.split_at(usize::from(nb_src));
                        // SAFETY: `copy_sg` validated the lists (equal totals) and its caller
                        // guaranteed every entry valid, disjoint and exclusively the engine's
                        // until the job is reported, which happens only after this.
                        unsafe { sg::copy_step(src, dst, &mut Cursor::default(), u64::MAX) };
                    }
                }
                Status::Successful
            }
        };
        self.status[slot] = status;
    }
}

impl DmaEngine for CpuEngine {
    unsafe fn copy(
        &mut self,
        src: Iova,
        dst: Iova,
        len: u32,
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        let idx = self.track.reserve()?;
        let slot = self.track.slot(idx);
        self.jobs[slot] = Job::Copy { src, dst, len };
        self.track.commit();
        if flags.contains(OpFlags::SUBMIT) {
            self.submit()?;
        }
        Ok(idx)
    }

    unsafe fn copy_sg(
        &mut self,
        src: &[Sge],
        dst: &[Sge],
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        sg::validate(src, dst, self.max_sges)?;
        let idx = self.track.reserve()?;
        let slot = self.track.slot(idx);
        // At most ring_size * 2 * MAX_SGES = 2^23 entries are pending: fits in u32.
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(src);
        self.arena.extend_from_slice(dst);
        // Both lengths are <= max_sges <= MAX_SGES (validated).
        self.jobs[slot] = Job::Sg {
            start,
            nb_src: src.len() as u16,
            nb_dst: dst.len() as u16,
        };
        self.track.commit();
        if flags.contains(OpFlags::SUBMIT) {
            self.submit()?;
        }
        Ok(idx)
    }

    fn submit(&mut self) -> Result<(), DmaError> {
        if let Some((from, to)) = self.track.submit() {
            let mut idx = from;
            while idx != to {
                self.run(idx);
                idx = idx.wrapping_add(1);
            }
            self.arena.clear();
        }
        Ok(())
    }

    fn completed(&mut self, max: u16) -> Completed {
        let (track, status) = (&mut self.track, &self.status);
        // Every submitted job has run: its status is final.
        track.completed(max, |idx| Some(status[track_slot(status, idx)]))
    }

    fn completed_status(&mut self, max: u16, out: &mut [Status]) -> Completed {
        let (track, status) = (&mut self.track, &self.status);
        track.completed_status(max, out, |idx| Some(status[track_slot(status, idx)]))
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

/// The slot of `idx` in a per-slot array (whose length is the ring size, a power of two).
#[inline]
fn track_slot<T>(per_slot: &[T], idx: u16) -> usize {
    usize::from(idx) & (per_slot.len() - 1)
}
