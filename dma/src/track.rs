//! The driver side's bookkeeping, common to every engine: the three ring indexes of a channel
//! and the in-order reporting of finished jobs.
//!
//! ```text
//!   head            submitted          write
//!    |  submitted,     |  enqueued, not   |   free slots
//!    |  not reported   |  yet submitted   |
//! ---+-----------------+------------------+-------------
//! ```
//!
//! All three are free-running `u16` counters (the ring index of a job is the value of `write`
//! when it was enqueued); a job's slot is `idx & (ring_size - 1)`. `write - head` (wrapping) is
//! the number of jobs in flight, at most `ring_size <= 2^15`, so it is never ambiguous.

use crate::{Completed, DmaError, Stats, Status};

/// Ring indexes and counters of one channel, owned by the channel's (single) driver thread.
#[derive(Debug)]
pub(crate) struct Tracker {
    ring_size: u16,
    /// Oldest job not yet reported.
    head: u16,
    /// Jobs before this one have been submitted.
    submitted: u16,
    /// Ring index of the next job to enqueue.
    write: u16,
    stats: Stats,
}

impl Tracker {
    /// `ring_size` is a validated power of two (see `ChannelConfig::validate`).
    pub(crate) fn new(ring_size: u16) -> Self {
        debug_assert!(ring_size.is_power_of_two());
        Tracker {
            ring_size,
            head: 0,
            submitted: 0,
            write: 0,
            stats: Stats::default(),
        }
    }

    #[inline]
    pub(crate) fn ring_size(&self) -> u16 {
        self.ring_size
    }

    /// The slot of ring index `idx`.
    #[inline]
    pub(crate) fn slot(&self, idx: u16) -> usize {
        usize::from(idx & (self.ring_size - 1))
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> u16 {
        self.write.wrapping_sub(self.head)
    }

    #[inline]
    pub(crate) fn capacity(&self) -> u16 {
        self.ring_size - self.in_flight()
    }

    /// The ring index the next job will get, if a slot is free. Nothing changes until
    /// [`Tracker::commit`].
    #[inline]
    pub(crate) fn reserve(&self) -> Result<u16, DmaError> {
        if self.in_flight() == self.ring_size {
            return Err(DmaError::RingFull);
        }
        Ok(self.write)
    }

    /// Accounts the job reserved last as enqueued.
    #[inline]
    pub(crate) fn commit(&mut self) {
        self.write = self.write.wrapping_add(1);
    }

    /// Marks every enqueued job as submitted; returns the submitted range `from..to` of ring
    /// indexes if it is not empty.
    #[inline]
    pub(crate) fn submit(&mut self) -> Option<(u16, u16)> {
        let (from, to) = (self.submitted, self.write);
        if from == to {
            return None;
        }
        self.submitted = to;
        self.stats.submitted += u64::from(to.wrapping_sub(from));
        Some((from, to))
    }

    /// `completed`: reports the leading run of successful jobs, at most `max`. `record(idx)`
    /// is the status of submitted job `idx` if it has finished.
    #[inline]
    pub(crate) fn completed(
        &mut self,
        max: u16,
        mut record: impl FnMut(u16) -> Option<Status>,
    ) -> Completed {
        let mut count = 0u16;
        let mut has_error = false;
        while count < max && self.head != self.submitted {
            match record(self.head) {
                None => break,
                Some(Status::Successful) => {
                    self.head = self.head.wrapping_add(1);
                    count += 1;
                }
                Some(_) => {
                    // Left at the head for `completed_status`.
                    has_error = true;
                    break;
                }
            }
        }
        self.stats.completed += u64::from(count);
        Completed {
            count,
            last_idx: self.head.wrapping_sub(1),
            has_error,
        }
    }

    /// `completed_status`: reports the leading run of finished jobs, failed ones included, at
    /// most `min(max, out.len())`, writing their statuses to `out`.
    #[inline]
    pub(crate) fn completed_status(
        &mut self,
        max: u16,
        out: &mut [Status],
        mut record: impl FnMut(u16) -> Option<Status>,
    ) -> Completed {
        let max = usize::from(max).min(out.len());
        let mut count = 0usize;
        let mut has_error = false;
        while count < max && self.head != self.submitted {
            let Some(status) = record(self.head) else {
                break;
            };
            out[count] = status;
            if !status.is_ok() {
                has_error = true;
                self.stats.errors += 1;
            }
            self.head = self.head.wrapping_add(1);
            count += 1;
        }
        self.stats.completed += count as u64;
        Completed {
            // count <= max <= u16::MAX.
            count: count as u16,
            last_idx: self.head.wrapping_sub(1),
            has_error,
        }
    }

    #[inline]
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    pub(crate) fn reset_stats(&mut self) {
        self.stats = Stats::default();
    }
}
