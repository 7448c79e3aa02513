//! virtio-net over split virtqueues: the data path (enqueue to the guest, dequeue from it),
//! the header and its offloads, and the packet rewriting of the forwarding modes.
//!
//! Vring numbering is virtio-net's: vring `2*q` is queue pair `q`'s receive queue (the host
//! enqueues into it), vring `2*q + 1` its transmit queue (the host dequeues from it). The
//! bursts take typed ids ([`QueuePair`]`(q).rx()` / `.tx()`), so the two cannot be swapped.

mod copy;
mod dequeue;
mod enqueue;
pub mod hdr;
mod offload;
pub mod pkt;
mod queue_id;
mod ring;

pub use dequeue::dequeue_burst;
pub use enqueue::enqueue_burst;
pub use queue_id::{QueueIdError, QueuePair, RxQueueId, TxQueueId};
