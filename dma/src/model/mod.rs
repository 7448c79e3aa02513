//! Software models of hardware copy engines' register interfaces, for tests and CI where no
//! such hardware exists: the drivers of [`crate::hw`] run over them unchanged (through
//! [`Mmio`](crate::hw::Mmio) and [`DmaMapper`](crate::hw::DmaMapper)).
//!
//! A model reaches memory only through its own IOMMU table (IOVA = VA inside mapped ranges).
//! It is processed in steps on the caller's thread, so tests are deterministic (step mode:
//! `run(n)`), or by a thread of its own that polls it like the device would ([`worker`]:
//! `spawn`), so that a driver over the model is an engine the data path can use.
//!
//! * [`ioat`]: [`IoatModel`], one IOAT 3.x channel.
//! * [`dsa`]: [`DsaModel`], a DSA device: configuration registers and commands, WQ portals,
//!   engines processing MEMMOVE, NOOP, DRAIN and BATCH descriptors, completion records.
//! * [`worker`]: [`ModelWorker`], a model's own thread (thread mode).

pub mod dsa;
pub mod ioat;
mod iommu;
pub mod worker;

pub use dsa::{DsaFault, DsaModel, DsaModelConfig, DsaModelStats, DsaPortal};
pub use ioat::{IoatModel, IoatModelConfig, ModelFault, ModelStats};
pub use worker::{ModelWorker, Served};
