//! The soft engine: a software DMA device that behaves like hardware, for CI and for machines
//! without IOAT/DSA.
//!
//! # Pieces
//!
//! * [`SoftDevice`]: the "hardware". It owns `L` *lanes* (simulated copy engines, each working
//!   on one job at a time) and serves `C` channels. [`SoftDevice::new`] returns it with one
//!   [`SoftEngine`] per channel.
//! * [`SoftEngine`]: the driver of one channel, implementing [`DmaEngine`](crate::DmaEngine).
//!   It writes descriptors into a ring shared with the device, rings a doorbell on submit, and
//!   polls per-job completion records the device writes back (see the `ring` module for the
//!   memory layout and the Acquire/Release pairs).
//!
//! # Serving the device
//!
//! Everything the device does happens inside [`SoftDevice::poll`], which is cheap when idle.
//! Either call it from your own polling loop (one thread then serves the device and, say, a
//! virtio frontend: no second busy thread on a 2-core machine), or move the device onto a
//! thread of its own with [`SoftDevice::spawn`] (optionally pinned to a core), or both at once
//! with [`SoftDevice::spawn_with`], which runs your poll function in the device's loop.
//!
//! One `poll` does one or more *rounds* of:
//!
//! 1. **Dispatch**: each idle lane, lowest number first, takes the next submitted job of the
//!    channels, taken round-robin. Jobs of a channel are taken in ring order. A job with
//!    [`OpFlags::FENCE`](crate::OpFlags::FENCE) is not taken while an earlier job of its
//!    channel is still on a lane. A job the channel's [`FailPolicy`] selects finishes at once
//!    with its error status, copying nothing.
//! 2. **Progress**: each busy lane copies the next `chunk` bytes of its job (fewer if the lane
//!    is throttled and its token bucket is short). A lane that finishes its job writes the job's
//!    completion record and is idle again.
//!
//! and starts another round while some lane finished a job in the last one, up to
//! [`SoftConfig::lane_burst`] rounds: a burst of small jobs is served in one poll, while a big
//! job moves by one chunk per poll.
//!
//! Lanes progress in parallel (interleaved by chunks), so a big or throttled job finishes after
//! smaller ones taken later: jobs finish **out of order**, and the driver still reports them in
//! order, because it only advances over the leading run of records. [`DeviceStats`] counts, per
//! lane, the jobs that finished while an earlier job of the same channel was still running.
//!
//! # Dropping
//!
//! * Dropping a [`SoftEngine`] *abandons* its jobs not yet reported: `drop` waits until the
//!   device is not in a copy step for the channel (at most one step of `chunk` bytes per lane),
//!   and the device never touches the channel's job memory again (a job may have been partly
//!   copied). The device keeps serving the other channels.
//! * Dropping a [`SoftDevice`] (or the [`SoftWorker`] that runs it, which stops and joins its
//!   thread) stops it: no job runs or finishes any more, unreported jobs are abandoned,
//!   [`SoftEngine::is_stopped`] becomes true (memory of abandoned jobs may then be reused), and
//!   `copy`/`submit` fail with [`DmaError::Stopped`].

mod channel_ring;
mod engine;
mod lane;
mod worker;

#[cfg(test)]
mod tests;

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crossbeam_utils::CachePadded;

pub use engine::SoftEngine;
pub use worker::{Idle, SoftWorker, WorkerConfig};

use self::channel_ring::ChannelRing;
use self::lane::Lane;
use crate::fault::FaultState;
use crate::{ChannelConfig, DmaError, FailPolicy, Status};

/// Largest number of lanes of a device.
pub const MAX_LANES: usize = 64;

/// One lane's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneConfig {
    /// Bandwidth limit in bytes per second; `None` copies as fast as the polling thread can.
    pub bytes_per_sec: Option<NonZeroU64>,
}

impl LaneConfig {
    /// A lane limited to `bytes_per_sec` (0 means unlimited).
    pub fn throttled(bytes_per_sec: u64) -> LaneConfig {
        LaneConfig {
            bytes_per_sec: NonZeroU64::new(bytes_per_sec),
        }
    }
}

/// Configuration of a [`SoftDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftConfig {
    /// The lanes, `1..=`[`MAX_LANES`] of them. Default: one unthrottled lane.
    pub lanes: Vec<LaneConfig>,
    /// Bytes a lane copies per poll at most, `>= 1`. Smaller chunks interleave the lanes more
    /// finely (and bound how long dropping a channel waits); larger ones cost fewer polls.
    /// Default 32 KiB.
    pub chunk: u32,
    /// The most jobs a lane finishes per poll (the most rounds of a poll), `>= 1`. Default 32.
    pub lane_burst: u32,
}

impl Default for SoftConfig {
    fn default() -> Self {
        SoftConfig {
            lanes: vec![LaneConfig::default()],
            chunk: 32 * 1024,
            lane_burst: 32,
        }
    }
}

impl SoftConfig {
    /// `n` unthrottled lanes, default chunk.
    pub fn with_lanes(n: usize) -> SoftConfig {
        SoftConfig {
            lanes: vec![LaneConfig::default(); n],
            ..Default::default()
        }
    }
}

/// Counters of one lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Jobs finished (successfully) by this lane.
    pub jobs: u64,
    /// Bytes copied by this lane.
    pub bytes: u64,
    /// Jobs this lane finished while an earlier job of the same channel was still on another
    /// lane: completions out of ring order.
    pub out_of_order: u64,
}

/// Counters of a [`SoftDevice`] (a snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Calls of [`SoftDevice::poll`].
    pub polls: u64,
    /// Polls that did some work.
    pub busy_polls: u64,
    /// Jobs failed by failure injection.
    pub injected_failures: u64,
    /// Per lane.
    pub lanes: Vec<LaneStats>,
}

/// The device's counters, readable from any thread while it runs. Written by the device only,
/// so a `Relaxed` load and store (no read-modify-write) is enough to bump one.
#[derive(Debug, Default)]
struct Counters {
    polls: AtomicU64,
    busy_polls: AtomicU64,
    injected: AtomicU64,
    /// Per lane: jobs, bytes, out of order.
    lanes: Box<[CachePadded<[AtomicU64; 3]>]>,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed) + by, Relaxed);
}

impl Counters {
    fn snapshot(&self) -> DeviceStats {
        DeviceStats {
            polls: self.polls.load(Relaxed),
            busy_polls: self.busy_polls.load(Relaxed),
            injected_failures: self.injected.load(Relaxed),
            lanes: (self.lanes.iter())
                .map(|l| LaneStats {
                    jobs: l[0].load(Relaxed),
                    bytes: l[1].load(Relaxed),
                    out_of_order: l[2].load(Relaxed),
                })
                .collect(),
        }
    }
}

/// The device's view of one channel.
struct Chan {
    ring: Arc<ChannelRing>,
    /// Next job to dispatch.
    fetch: u16,
    /// Last doorbell value read.
    tail: u16,
    /// Jobs of this channel on lanes.
    active: u16,
    /// The driver is gone: skip this channel for good.
    dead: bool,
    fault: FaultState,
    fail_word: u64,
}

/// What the next job of a channel is.
enum Next {
    /// None submitted, or the channel is closed.
    Empty,
    /// A fenced job waits for earlier jobs to finish.
    Fenced,
    /// Failure injection finished a job at once.
    Failed,
    /// A job was loaded on the lane.
    Loaded,
}

impl Chan {
    /// Takes the next job of this channel (number `chan`) onto `lane`, if one can start.
    fn next(&mut self, chan: usize, lane: &mut Lane, counters: &Counters) -> Next {
        if self.dead {
            return Next::Empty;
        }
        if self.fetch == self.tail {
            if self.ring.is_closed() {
                self.dead = true;
                return Next::Empty;
            }
            self.tail = self.ring.doorbell();
            if self.fetch == self.tail {
                return Next::Empty;
            }
        }
        let idx = self.fetch;
        if self.active > 0 && self.ring.fenced(idx) {
            return Next::Fenced;
        }
        self.fetch = idx.wrapping_add(1);
        let word = self.ring.fail_word();
        if word != self.fail_word {
            self.fail_word = word;
            self.fault.set(FailPolicy::decode(word));
        }
        if let Some(status) = self.fault.check(idx) {
            self.ring.complete(idx, status);
            bump(&counters.injected, 1);
            return Next::Failed;
        }
        lane.load(chan, &self.ring, idx);
        self.active += 1;
        Next::Loaded
    }
}

/// A software DMA device: lanes that serve the channels of [`SoftEngine`]s. See the [module
/// documentation](self).
pub struct SoftDevice {
    chans: Vec<Chan>,
    lanes: Vec<Lane>,
    chunk: u64,
    rounds: u32,
    /// Channel the next dispatch looks at first.
    rr: usize,
    throttled: bool,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for SoftDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftDevice")
            .field("channels", &self.chans.len())
            .field("lanes", &self.lanes.len())
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl SoftDevice {
    /// A device configured by `cfg`, with one channel per entry of `channels`, returned as the
    /// device and the channels' drivers (same order).
    pub fn new(
        cfg: &SoftConfig,
        channels: &[ChannelConfig],
    ) -> Result<(SoftDevice, Vec<SoftEngine>), DmaError> {
        if cfg.lanes.is_empty() || cfg.lanes.len() > MAX_LANES {
            return Err(DmaError::InvalidConfig("a soft device has 1..=64 lanes"));
        }
        if cfg.chunk == 0 {
            return Err(DmaError::InvalidConfig("chunk must be at least 1 byte"));
        }
        if cfg.lane_burst == 0 {
            return Err(DmaError::InvalidConfig("lane_burst must be at least 1"));
        }
        if channels.is_empty() {
            return Err(DmaError::InvalidConfig("a soft device needs a channel"));
        }
        for ch in channels {
            ch.validate()?;
        }
        let now = Instant::now();
        let max_sges = channels.iter().map(|c| usize::from(c.max_sges)).max();
        let lanes: Vec<Lane> = (cfg.lanes.iter())
            .map(|l| {
                Lane::new(
                    l.bytes_per_sec.map(NonZeroU64::get),
                    max_sges.unwrap_or(1),
                    now,
                )
            })
            .collect();
        let rings: Vec<Arc<ChannelRing>> = (channels.iter())
            .map(|c| Arc::new(ChannelRing::new(c)))
            .collect();
        let engines = rings
            .iter()
            .map(|r| SoftEngine::new(Arc::clone(r)))
            .collect();
        let chans = (rings.into_iter().zip(channels))
            .map(|(ring, c)| Chan {
                ring,
                fetch: 0,
                tail: 0,
                active: 0,
                dead: false,
                fault: FaultState::new(c.fail),
                fail_word: c.fail.encode(),
            })
            .collect();
        let counters = Counters {
            lanes: (0..lanes.len()).map(|_| CachePadded::default()).collect(),
            ..Default::default()
        };
        let device = SoftDevice {
            chans,
            throttled: lanes.iter().any(Lane::is_throttled),
            lanes,
            chunk: u64::from(cfg.chunk),
            rounds: cfg.lane_burst,
            rr: 0,
            counters: Arc::new(counters),
        };
        Ok((device, engines))
    }

    /// Does the device's work: rounds of dispatch and one copy step per busy lane, while
    /// lanes finish jobs (see the [module documentation](self)). Returns a measure of the work
    /// done (jobs taken, failed or finished, plus copy steps that moved bytes); 0 means there
    /// was nothing to do.
    pub fn poll(&mut self) -> usize {
        let now = self.throttled.then(Instant::now);
        let mut work = 0;
        for _ in 0..self.rounds {
            let dispatched = self.dispatch();
            let (steps, finished) = self.progress(now);
            work += dispatched + steps + finished;
            if finished == 0 {
                // No lane is free for more: another round would only copy more chunks.
                break;
            }
        }
        bump(&self.counters.polls, 1);
        if work > 0 {
            bump(&self.counters.busy_polls, 1);
        }
        work
    }

    /// Number of lanes.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// A snapshot of the device's counters.
    pub fn stats(&self) -> DeviceStats {
        self.counters.snapshot()
    }

    /// Gives idle lanes the next jobs that may start.
    fn dispatch(&mut self) -> usize {
        let mut work = 0;
        let n = self.chans.len();
        'lanes: for lane in self.lanes.iter_mut() {
            if lane.current().is_some() {
                continue;
            }
            for k in 0..n {
                let c = (self.rr + k) % n;
                loop {
                    match self.chans[c].next(c, lane, &self.counters) {
                        Next::Empty | Next::Fenced => break,
                        Next::Failed => work += 1,
                        Next::Loaded => {
                            work += 1;
                            self.rr = (c + 1) % n;
                            continue 'lanes;
                        }
                    }
                }
            }
            // No channel has a job that can start: the other idle lanes would find none either.
            break;
        }
        work
    }

    /// One copy step for every busy lane, channel by channel under the channel's guard.
    /// Returns the steps that moved bytes and the jobs finished.
    fn progress(&mut self, now: Option<Instant>) -> (usize, usize) {
        let mut steps = 0;
        let mut finished = 0;
        for c in 0..self.chans.len() {
            let chan = &mut self.chans[c];
            if chan.active == 0 {
                continue;
            }
            let Some(_busy) = chan.ring.enter() else {
                // Closed: abandon its jobs; their memory is no longer ours.
                for lane in self.lanes.iter_mut() {
                    if lane.current().is_some_and(|j| j.chan == c) {
                        lane.abandon();
                    }
                }
                chan.active = 0;
                chan.dead = true;
                continue;
            };
            for l in 0..self.lanes.len() {
                if self.lanes[l].current().is_none_or(|j| j.chan != c) {
                    continue;
                }
                // SAFETY: `_busy` is the guard of channel `c`, the lane's job's channel.
                let (bytes, done) = unsafe { self.lanes[l].step(self.chunk, now) };
                let stats = &self.counters.lanes[l];
                if bytes > 0 {
                    bump(&stats[1], bytes);
                    steps += 1;
                }
                let Some(job) = done else { continue };
                // Finished out of order if an earlier job of the channel is on another lane.
                let earlier = |other: &Lane| {
                    other
                        .current()
                        .is_some_and(|o| o.chan == c && (o.idx.wrapping_sub(job.idx) as i16) < 0)
                };
                if self.lanes.iter().any(earlier) {
                    bump(&stats[2], 1);
                }
                bump(&stats[0], 1);
                chan.ring.complete(job.idx, Status::Successful);
                chan.active -= 1;
                finished += 1;
            }
        }
        (steps, finished)
    }
}

impl Drop for SoftDevice {
    fn drop(&mut self) {
        // After the last poll: nothing touches job memory any more.
        for chan in &self.chans {
            chan.ring.stop();
        }
    }
}
