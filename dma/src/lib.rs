//! rvhost-dma: copy engines behind one trait, with the semantics of DPDK's `dmadev`
//! (`lib/dmadev/rte_dmadev.h`).
//!
//! # Model
//!
//! A [`DmaEngine`] is one *channel* of a copy engine (a dmadev virtual channel), driven by one
//! thread at a time (every method takes `&mut self`). A channel has a ring of
//! [`ring_size`](ChannelConfig::ring_size) job slots; a job's life is:
//!
//! 1. **enqueued** by [`copy`](DmaEngine::copy) or [`copy_sg`](DmaEngine::copy_sg), which
//!    return the job's *ring index*: a `u16` counter that starts at 0 on a new channel, grows by
//!    one per job and wraps from 65535 to 0 (dmadev's `ring_idx`). A full ring is an error
//!    ([`DmaError::RingFull`]); enqueueing never blocks.
//! 2. **submitted** by [`submit`](DmaEngine::submit) (the doorbell), or at once with
//!    [`OpFlags::SUBMIT`]: only submitted jobs are visible to the engine.
//! 3. **finished** by the engine, successfully or not, possibly out of order (an engine with
//!    several lanes runs several jobs at once).
//! 4. **reported** by [`completed`](DmaEngine::completed) or
//!    [`completed_status`](DmaEngine::completed_status), always *in ring order*: a report only
//!    covers the leading run of finished jobs, starting at the oldest job not yet reported. Its
//!    slot is then free again ([`burst_capacity`](DmaEngine::burst_capacity) grows).
//!
//! [`completed`](DmaEngine::completed) reports successful jobs only and stops at the first
//! failed one, setting [`Completed::has_error`]; the failed job stays at the head until
//! [`completed_status`](DmaEngine::completed_status), which reports jobs in order with a
//! [`Status`] each (failed ones included), consumes it. A job with [`OpFlags::FENCE`] starts
//! only after every earlier job of the channel has finished (a fence orders, it does not cancel:
//! the fenced job runs even if an earlier one failed).
//!
//! # Safety contract
//!
//! An engine reads and writes memory after the call that enqueued the job has returned, as a
//! hardware engine does. That is why [`copy`](DmaEngine::copy) and
//! [`copy_sg`](DmaEngine::copy_sg) are `unsafe fn`: as for a buffer given to io-uring, the
//! caller guarantees that, from the enqueue until the job is **reported**, the source is valid
//! for reads and not written, and the destination is valid for writes and neither read nor
//! written by anything else (other jobs in flight included, unless a fence orders them). Dropping
//! an engine ends the contract for its unreported jobs; each engine documents what happens to
//! them (the soft engine abandons them: once `drop` returns, their memory is never touched).
//!
//! Addresses are [`Iova`]s; for the engines of this crate an IOVA is the process virtual address
//! ([`Iova::from_ptr`]). Only the `sg` module dereferences them.
//!
//! # Engines
//!
//! | engine | where copies run | completion |
//! |---|---|---|
//! | [`CpuEngine`] | in [`submit`](DmaEngine::submit), on the calling thread, in order | at once: the reference behaviour |
//! | [`SoftEngine`] | on a [`SoftDevice`]: lanes served by a polling loop, on a thread of its own ([`SoftDevice::spawn`]) or inside the caller's loop ([`SoftDevice::poll`]) | per-job completion records written back like hardware; lanes finish out of order; failure injection and bandwidth throttling |
//! | [`IoatChannel`](hw::IoatChannel) | on an IOAT (CBDMA) channel, or on its model [`IoatModel`](model::IoatModel) | the channel's completion write-back: the address of the last completed descriptor |
//! | [`DsaChannel`](hw::DsaChannel) | on a DSA work queue, or on its model [`DsaModel`](model::DsaModel) | per-batch completion records, retired in order |
//!
//! The soft engine is what CI runs where no IOAT/DSA hardware exists; see [`soft`]. The IOAT
//! and DSA drivers ([`hw`]) are tested against register-level models of the devices
//! ([`model`]).
//!
//! # Example
//!
//! ```
//! use rvhost_dma::{ChannelConfig, CpuEngine, DmaEngine, Iova, OpFlags};
//!
//! let src = vec![7u8; 4096];
//! let mut dst = vec![0u8; 4096];
//! let mut dma = CpuEngine::new(&ChannelConfig::new(64)).unwrap();
//! // SAFETY: both buffers outlive the job, and `dst` is not touched until the job is reported.
//! let idx = unsafe {
//!     let (s, d) = (Iova::from_ptr(src.as_ptr()), Iova::from_mut_ptr(dst.as_mut_ptr()));
//!     dma.copy(s, d, 4096, OpFlags::SUBMIT)
//! }
//! .unwrap();
//! let done = dma.completed(32);
//! assert_eq!((done.count, done.last_idx, done.has_error), (1, idx, false));
//! assert_eq!(src, dst);
//! ```

mod cpu;
mod error;
mod fault;
pub mod hw;
pub mod model;
mod sg;
pub mod soft;
mod track;
mod types;

#[cfg(test)]
mod tests;

pub use cpu::CpuEngine;
pub use error::DmaError;
pub use fault::FailPolicy;
pub use soft::{SoftDevice, SoftEngine};
pub use types::{
    ChannelConfig, Completed, Iova, MAX_RING_SIZE, MAX_SGES, OpFlags, Sge, Stats, Status,
};

/// One channel of a copy engine, with dmadev semantics (see the [crate documentation](crate)).
///
/// Object safe: the data path may hold a `Box<dyn DmaEngine + Send>`.
pub trait DmaEngine {
    /// Enqueues a copy of `len` bytes from `src` to `dst` and returns its ring index
    /// (`rte_dma_copy`). With [`OpFlags::SUBMIT`] the doorbell is rung too.
    ///
    /// Errors: [`DmaError::RingFull`] when [`burst_capacity`](Self::burst_capacity) is 0 (nothing
    /// is enqueued); [`DmaError::Stopped`] when the engine behind the channel is gone.
    ///
    /// # Safety
    ///
    /// From this call until the job is reported by [`completed`](Self::completed) or
    /// [`completed_status`](Self::completed_status) (or the engine is dropped):
    /// - `src..src + len` is valid for reads and nothing writes it;
    /// - `dst..dst + len` is valid for writes, and nothing else reads or writes it (other jobs in
    ///   flight included, unless ordered by [`OpFlags::FENCE`]);
    /// - the two ranges do not overlap.
    ///
    /// IOVAs are process virtual addresses for the engines of this crate.
    unsafe fn copy(
        &mut self,
        src: Iova,
        dst: Iova,
        len: u32,
        flags: OpFlags,
    ) -> Result<u16, DmaError>;

    /// Enqueues a scatter-gather copy and returns its ring index (`rte_dma_copy_sg`): the bytes
    /// of the `src` entries, in order, go to the bytes of the `dst` entries, in order.
    ///
    /// Errors: [`DmaError::EmptySgList`], [`DmaError::TooManySges`] (more than
    /// [`max_sges`](Self::max_sges) entries on one side), [`DmaError::SgLengthMismatch`] (the
    /// two sides' totals differ), [`DmaError::RingFull`], [`DmaError::Stopped`].
    ///
    /// # Safety
    ///
    /// The contract of [`copy`](Self::copy), for every entry: each `src` entry is valid for
    /// reads and unwritten, each `dst` entry valid for writes and otherwise unaccessed, until the
    /// job is reported; no `dst` entry overlaps another `dst` entry or any `src` entry.
    unsafe fn copy_sg(&mut self, src: &[Sge], dst: &[Sge], flags: OpFlags)
    -> Result<u16, DmaError>;

    /// Makes every enqueued job visible to the engine (`rte_dma_submit`). Idempotent.
    ///
    /// Errors: [`DmaError::Stopped`] when the engine behind the channel is gone.
    fn submit(&mut self) -> Result<(), DmaError>;

    /// Reports up to `max` finished jobs, in ring order, stopping before the first failed one
    /// (`rte_dma_completed`). `last_idx` is the ring index of the last job reported so far (by
    /// this or an earlier call; `0xffff` before any). A failed job at the head makes every
    /// call return `has_error` until [`completed_status`](Self::completed_status) reports it.
    fn completed(&mut self, max: u16) -> Completed;

    /// Reports up to `min(max, status.len())` finished jobs, in ring order, failed ones
    /// included, writing each job's status to `status[..count]`
    /// (`rte_dma_completed_status`). `has_error` tells whether any of them failed.
    fn completed_status(&mut self, max: u16, status: &mut [Status]) -> Completed;

    /// How many more jobs can be enqueued now (`rte_dma_burst_capacity`):
    /// `ring_size - in_flight`.
    fn burst_capacity(&self) -> u16;

    /// Jobs enqueued and not yet reported (submitted or not).
    fn in_flight(&self) -> u16;

    /// The most jobs in flight at once.
    fn ring_size(&self) -> u16;

    /// The most entries on each side of a [`copy_sg`](Self::copy_sg).
    fn max_sges(&self) -> u16;

    /// This channel's counters (`rte_dma_stats_get`).
    fn stats(&self) -> Stats;

    /// Zeroes this channel's counters (`rte_dma_stats_reset`).
    fn reset_stats(&mut self);
}
