//! rvhost: a vhost-user backend library.
//!
//! See `DESIGN.md` for the map of the system.

pub mod features;
pub mod lcore;
pub mod mbuf;
pub mod memory;
pub mod virtq;
