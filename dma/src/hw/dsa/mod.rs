//! DSA (Intel Data Streaming Accelerator, `idxd`), after DPDK's `drivers/dma/idxd`.
//!
//! * [`regs`]: BAR0 registers, command codes and their error codes; descriptor and completion
//!   record layout, opcodes, flags and status codes.
//! * [`setup`]: [`DsaDevice`]: reset, capabilities, one group with engine 0 and one dedicated
//!   WQ, ENABLE_DEV / ENABLE_WQ with their error codes, disable on drop.
//! * [`portal`]: [`Portal`], the 64-byte atomic submission; [`MovdirPortal`] (MOVDIR64B, no
//!   fallback: see there why).
//! * [`channel`]: [`DsaChannel`], the [`DmaEngine`](crate::DmaEngine) over the WQ: jobs
//!   grouped into one BATCH descriptor per submit, completion records, in-order retirement of
//!   out-of-order completions, WQ occupancy, fences.
//!
//! Both are tested against [`DsaModel`](crate::model::DsaModel), which models the
//! configuration registers and commands, the WQ portals and the engines.

pub mod channel;
pub mod portal;
pub mod regs;
pub mod setup;

#[cfg(test)]
mod tests;

pub use channel::{DsaChannel, DsaFaultInfo, status_of};
pub use portal::{Descriptor, MovdirPortal, Portal, has_movdir64b};
pub use setup::{DsaCaps, DsaDevice, command};
