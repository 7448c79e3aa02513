//! Software models of hardware copy engines' register interfaces, for tests and CI where no
//! such hardware exists: the drivers of [`crate::hw`] run over them unchanged (through
//! [`Mmio`](crate::hw::Mmio) and [`DmaMapper`](crate::hw::DmaMapper)).
//!
//! A model reaches memory only through its own IOMMU table (IOVA = VA inside mapped ranges),
//! and is processed in steps on the caller's thread, so tests are deterministic.
//!
//! * [`ioat`]: [`IoatModel`], one IOAT 3.x channel.
//! * [`dsa`]: [`DsaModel`], a DSA device: configuration registers and commands, WQ portals,
//!   engines processing MEMMOVE, NOOP, DRAIN and BATCH descriptors, completion records.

pub mod dsa;
pub mod ioat;
mod iommu;

pub use dsa::{DsaFault, DsaModel, DsaModelConfig, DsaModelStats, DsaPortal};
pub use ioat::{IoatModel, IoatModelConfig, ModelFault, ModelStats};
