//! virtio-net over split virtqueues: the data path (enqueue to the guest, dequeue from it),
//! the header and its offloads, and the Ethernet helpers they use.
//!
//! Vring numbering is virtio-net's: vring `2*q` is queue pair `q`'s receive queue (the host
//! enqueues into it), vring `2*q + 1` its transmit queue (the host dequeues from it). The
//! bursts take typed ids ([`QueuePair`]`(q).rx()` / `.tx()`), so the two cannot be swapped.

mod async_dequeue;
mod async_enqueue;
mod burst;
mod dequeue;
mod enqueue;
pub mod ether;
pub mod hdr;
mod offload;
mod packed_burst;
mod queue_id;
mod ring;
mod runs;

pub use crate::virtq::async_queue::{
    AsyncConfig, AsyncCopyOps, AsyncStats, CopyJob, CopyStatus, DEFAULT_THRESHOLD, DmaCopy,
};
pub use async_dequeue::async_try_dequeue_burst;
pub use async_enqueue::{
    AsyncError, async_channel_register, async_channel_unregister, async_clear_queue,
    async_in_flight, async_stats, poll_enqueue_completed, submit_enqueue_burst,
};
pub use dequeue::dequeue_burst;
pub use enqueue::enqueue_burst;
pub(crate) use packed_burst::READ_MAX as PACKED_READ_MAX;
pub use queue_id::{QueueIdError, QueuePair, RxQueueId, TxQueueId, VringId};
