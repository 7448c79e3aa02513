//! rvhost: a vhost-user backend library.
//!
//! See `DESIGN.md` for the map of the system. The entry point is [`driver::Driver`].

pub mod bench;
pub mod dataplane;
pub mod driver;
pub mod features;
pub mod frontend;
pub mod lcore;
pub mod mbuf;
pub mod memory;
pub mod net;
pub mod protocol;
pub mod ratelimit;
pub mod virtq;
