//! The driver of one soft channel: [`SoftEngine`].

use std::sync::Arc;

use super::channel_ring::ChannelRing;
use crate::sg;
use crate::track::Tracker;
use crate::{Completed, DmaEngine, DmaError, FailPolicy, Iova, OpFlags, Sge, Stats, Status};

/// One channel of a [`SoftDevice`](super::SoftDevice), implementing [`DmaEngine`]: descriptors
/// go into a ring shared with the device, the doorbell is one release store, and completions are
/// per-job records written back by the device.
///
/// Jobs make progress only while the device is polled (by its [`SoftWorker`](super::SoftWorker)
/// thread or by your calls to [`SoftDevice::poll`](super::SoftDevice::poll)). Dropping a
/// `SoftEngine` abandons its unreported jobs (see the [module documentation](super)).
#[derive(Debug)]
pub struct SoftEngine {
    ring: Arc<ChannelRing>,
    track: Tracker,
}

impl SoftEngine {
    pub(super) fn new(ring: Arc<ChannelRing>) -> SoftEngine {
        SoftEngine {
            track: Tracker::new(ring.ring_size()),
            ring,
        }
    }

    /// Replaces the channel's failure injection policy. The device applies it from a later
    /// dispatch on (jobs already taken by a lane are not affected).
    pub fn set_fail_policy(&self, policy: FailPolicy) {
        self.ring.set_fail(policy.encode());
    }

    /// Whether the device has stopped for good (it was dropped). Then no job of this channel
    /// runs or finishes any more, unreported jobs are abandoned, and their memory may be
    /// reused: the device never touches it again.
    pub fn is_stopped(&self) -> bool {
        self.ring.is_stopped()
    }

    #[inline]
    fn check_running(&self) -> Result<(), DmaError> {
        if self.ring.is_stopped() {
            return Err(DmaError::Stopped);
        }
        Ok(())
    }

    /// Enqueues the job `write` describes into the next slot.
    #[inline]
    fn enqueue(
        &mut self,
        flags: OpFlags,
        write: impl FnOnce(&ChannelRing, u16),
    ) -> Result<u16, DmaError> {
        self.check_running()?;
        let idx = self.track.reserve()?;
        // The slot is free: its previous job was reported, i.e. its record was read with
        // Acquire (see `ChannelRing::record`), so the device is done with the slot.
        write(&self.ring, idx);
        self.track.commit();
        if flags.contains(OpFlags::SUBMIT) {
            self.ring_doorbell();
        }
        Ok(idx)
    }

    #[inline]
    fn ring_doorbell(&mut self) {
        if let Some((_, tail)) = self.track.submit() {
            self.ring.ring_doorbell(tail);
        }
    }
}

impl DmaEngine for SoftEngine {
    unsafe fn copy(
        &mut self,
        src: Iova,
        dst: Iova,
        len: u32,
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        let fence = flags.contains(OpFlags::FENCE);
        self.enqueue(flags, |ring, idx| {
            ring.write_copy(idx, src, dst, len, fence)
        })
    }

    unsafe fn copy_sg(
        &mut self,
        src: &[Sge],
        dst: &[Sge],
        flags: OpFlags,
    ) -> Result<u16, DmaError> {
        sg::validate(src, dst, self.ring.max_sges())?;
        let fence = flags.contains(OpFlags::FENCE);
        self.enqueue(flags, |ring, idx| ring.write_sg(idx, src, dst, fence))
    }

    fn submit(&mut self) -> Result<(), DmaError> {
        self.check_running()?;
        self.ring_doorbell();
        Ok(())
    }

    fn completed(&mut self, max: u16) -> Completed {
        let ring = &self.ring;
        self.track.completed(max, |idx| ring.record(idx))
    }

    fn completed_status(&mut self, max: u16, status: &mut [Status]) -> Completed {
        let ring = &self.ring;
        self.track
            .completed_status(max, status, |idx| ring.record(idx))
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
        self.ring.max_sges()
    }

    fn stats(&self) -> Stats {
        self.track.stats()
    }

    fn reset_stats(&mut self) {
        self.track.reset_stats();
    }
}

impl Drop for SoftEngine {
    fn drop(&mut self) {
        // Waits (at most one copy step) until the device no longer touches our jobs' memory.
        self.ring.close();
    }
}
