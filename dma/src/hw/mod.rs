//! Drivers of hardware copy engines, driven from user space, and what they stand on.
//!
//! * [`mmio`]: [`Mmio`], register access at BAR offsets; [`MmioBar`] over a mapped BAR (the
//!   crate's only code touching device registers).
//! * [`dma_mem`]: [`DmaRegion`], memory the device reads and writes (rings, completion
//!   words), and [`DmaMapper`], which makes it visible to the device (an IOMMU mapping).
//! * [`ioat`]: [`IoatChannel`], the IOAT (QuickData / CBDMA) driver.
//! * [`dsa`]: the DSA driver: device setup ([`DsaDevice`]) and [`DsaChannel`] over a WQ
//!   portal.
//!
//! * [`vfio`]: the VFIO layer: [`vfio::check`] says what is missing before a function can be
//!   opened; with the `vfio` feature, `VfioPci` opens it and maps its BARs, and is the
//!   [`DmaMapper`] of its IOMMU.
//!
//! A driver is given its BAR (`M: Mmio`) and a mapper: a device model ([`crate::model`]) in
//! tests, a BAR and the IOMMU of a function opened through VFIO on hardware.

pub mod dma_mem;
pub mod dsa;
pub mod ioat;
pub mod mmio;
pub mod vfio;

pub use dma_mem::{DmaMapper, DmaRegion, IdentityMapper, MapperSet};
pub use dsa::{DsaChannel, DsaDevice};
pub use ioat::IoatChannel;
pub use mmio::{Mmio, MmioBar};
