//! IOAT (Intel QuickData Technology, "CBDMA", version 3.x): one channel per PCI function,
//! driven through its registers like DPDK's `drivers/dma/ioat`.
//!
//! * [`regs`]: register offsets, bits and the descriptor layout.
//! * [`channel`]: [`IoatChannel`], the driver, implementing [`DmaEngine`](crate::DmaEngine); see its module
//!   for the ring protocol, completion, fences and recovery.
//!
//! The driver is tested against [`IoatModel`](crate::model::IoatModel), a strict software
//! model of the channel's registers.

pub mod channel;
pub mod regs;

#[cfg(test)]
mod tests;

pub use channel::{IoatChannel, MAX_DESCRIPTORS, status_of};
