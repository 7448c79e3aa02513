//! One lane of a soft device: a simulated copy engine that works on one job at a time, a chunk
//! per poll, optionally throttled by a token bucket.

use std::time::Instant;

use super::channel_ring::ChannelRing;
use crate::Sge;
use crate::sg::{self, Cursor};

/// Token bucket of a throttled lane.
#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Bytes the lane may copy now.
    tokens: f64,
    /// Most tokens kept: 2 ms worth, at least 4 KiB (bursts stay short).
    cap: f64,
    last: Instant,
}

impl Bucket {
    fn new(bytes_per_sec: u64, now: Instant) -> Self {
        let rate = bytes_per_sec as f64;
        Bucket {
            rate,
            tokens: 0.0,
            cap: (rate * 0.002).max(4096.0),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.cap);
        self.last = now;
    }
}

/// The job a lane is working on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Current {
    /// Index of its channel in the device.
    pub(super) chan: usize,
    /// Its ring index.
    pub(super) idx: u16,
}

/// One lane. Its lists are kept between jobs, so a warm lane does not allocate.
#[derive(Debug)]
pub(super) struct Lane {
    current: Option<Current>,
    src: Vec<Sge>,
    dst: Vec<Sge>,
    cursor: Cursor,
    remaining: u64,
    bucket: Option<Bucket>,
}

impl Lane {
    pub(super) fn new(bytes_per_sec: Option<u64>, max_sges: usize, now: Instant) -> Lane {
        Lane {
            current: None,
            src: Vec::with_capacity(max_sges),
            dst: Vec::with_capacity(max_sges),
            cursor: Cursor::default(),
            remaining: 0,
            bucket: bytes_per_sec.map(|r| Bucket::new(r, now)),
        }
    }

    #[inline]
    pub(super) fn current(&self) -> Option<Current> {
        self.current
    }

    pub(super) fn is_throttled(&self) -> bool {
        self.bucket.is_some()
    }

    /// Takes job `idx` of channel `chan` (submitted, its fence satisfied).
    pub(super) fn load(&mut self, chan: usize, ring: &ChannelRing, idx: u16) {
        debug_assert!(self.current.is_none());
        self.remaining = ring.read_job(idx, &mut self.src, &mut self.dst);
        self.cursor = Cursor::default();
        self.current = Some(Current { chan, idx });
    }

    /// Drops the current job without finishing it (its channel closed).
    pub(super) fn abandon(&mut self) {
        self.current = None;
    }

    /// Copies the next piece of the current job: at most `chunk` bytes, and no more than the
    /// bucket allows. Returns the bytes copied and, when the job is finished, the job (the lane
    /// is then idle; the caller writes its completion record).
    ///
    /// # Safety
    ///
    /// The caller holds the guard of the job's channel ([`ChannelRing::enter`] returned
    /// `Some`): the driver has not been dropped, so the job is not reported yet and its memory
    /// is under the contract of [`DmaEngine::copy`](crate::DmaEngine::copy).
    pub(super) unsafe fn step(
        &mut self,
        chunk: u64,
        now: Option<Instant>,
    ) -> (u64, Option<Current>) {
        let Some(current) = self.current else {
            return (0, None);
        };
        let mut budget = chunk.min(self.remaining);
        if let (Some(bucket), Some(now)) = (self.bucket.as_mut(), now) {
            bucket.refill(now);
            budget = budget.min(bucket.tokens as u64);
        }
        let copied = if budget > 0 {
            // SAFETY: the lists come from a descriptor the driver validated (`sg::validate` or a
            // single entry on each side), and the caller's guard keeps the job's memory under
            // its contract for the duration of this call.
            unsafe { sg::copy_step(&self.src, &self.dst, &mut self.cursor, budget) }
        } else {
            0
        };
        if let Some(bucket) = self.bucket.as_mut() {
            bucket.tokens -= copied as f64;
        }
        self.remaining -= copied;
        if self.remaining == 0 {
            self.current = None;
            return (copied, Some(current));
        }
        (copied, None)
    }
}
