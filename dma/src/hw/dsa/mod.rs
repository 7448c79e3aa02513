//! DSA (Intel Data Streaming Accelerator, `idxd`), after DPDK's `drivers/dma/idxd`: **setup
//! only so far**.
//!
//! * [`regs`]: BAR0 registers, command codes and their error codes.
//! * [`setup`]: [`DsaDevice`]: reset, capabilities, one group with engine 0 and one dedicated
//!   WQ, ENABLE_DEV / ENABLE_WQ with their error codes, disable on drop.
//!
//! Not yet: descriptor submission through the WQ's portal (MOVDIR64B, with a fallback),
//! completion records, batches, and the [`DmaEngine`](crate::DmaEngine) implementation. The
//! setup is tested against [`DsaModel`](crate::model::DsaModel), which models the configuration
//! registers and commands only.

pub mod regs;
pub mod setup;

#[cfg(test)]
mod tests;

pub use setup::{DsaCaps, DsaDevice, command};
