//! rvhost: a vhost-user backend library.
//!
//! See `DESIGN.md` for the map of the system.

pub mod lcore;
pub mod mbuf;
