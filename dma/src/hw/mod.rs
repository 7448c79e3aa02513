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
//! No VFIO layer yet: a driver is given its BAR (`M: Mmio`) and a mapper. In tests both are a
//! device model ([`crate::model`]).

pub mod dma_mem;
pub mod dsa;
pub mod ioat;
pub mod mmio;

pub use dma_mem::{DmaMapper, DmaRegion, IdentityMapper};
pub use dsa::{DsaChannel, DsaDevice};
pub use ioat::IoatChannel;
pub use mmio::{Mmio, MmioBar};
