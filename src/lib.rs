//! rvhost: a vhost-user backend library (the capability set of DPDK's `lib/vhost`).
//!
//! A VM (QEMU) or a container (DPDK virtio-user) connects to a Unix socket rvhost serves; rvhost
//! maps the frontend's memory, and the application's poll-mode threads move packets between
//! the guest's virtqueues and hugepage-backed packet buffers.
//!
//! # What an application uses
//!
//! | module | for |
//! |---|---|
//! | [`driver`] | register sockets ([`Driver`](driver::Driver)), features, the device callbacks ([`DeviceOps`](driver::DeviceOps)), per-queue counters ([`Device::vring_stats`](driver::Device::vring_stats)) |
//! | [`dataplane`] | hand running devices to pinned cores, with the `destroy_device` handshake done ([`DeviceTable`](dataplane::DeviceTable)) |
//! | [`net`] | the bursts: [`dequeue_burst`](net::dequeue_burst) (guest → host), [`enqueue_burst`](net::enqueue_burst) (host → guest), with typed queue ids ([`QueuePair`](net::QueuePair)); [`net::ether`] has Ethernet helpers (EtherTypes, the L3 offset, the Internet checksum) |
//! | [`mbuf`] | packet buffers: [`PktPool::with_defaults`](mbuf::PktPool::with_defaults), a [`PktCache`](mbuf::PktCache) per worker |
//! | [`lcore`] | worker threads pinned to cores |
//! | [`features`] | virtio feature bits, for [`Driver::disable_features`](driver::Driver::disable_features) and friends |
//! | [`ratelimit`] | the per-queue log rate limit, for an application's own data-path logs |
//! | [`frontend`] | the other side: a vhost-user frontend in Rust, for testing and benchmarking a backend |
//!
//! The `examples/` directory of the repository has complete programs: a MAC-swap echo on a
//! pinned core (`echo.rs`), a MAC-learning switch between vhost-user ports (`switch.rs`), and a
//! client-mode backend that reconnects (`reconnect.rs`). The worker loop in the
//! [`dataplane`] docs is the shape every one of them has.
//!
//! # Threads
//!
//! One control thread (started by [`Driver::new`](driver::Driver::new)) serves every socket and
//! runs the callbacks; the data plane runs on the application's threads and never blocks:
//! a burst that finds its queue held by the control thread (a memory or ring change) returns
//! 0 and is counted (`lock_busy`).
//!
//! # Cargo features
//!
//! * `cli` (default): the `rvhost` command (`fwd`, `bench`) and its dependencies (clap,
//!   env_logger). An application depends with `default-features = false`.
//! * `internals`: makes the internal modules (`memory`, `protocol`, `virtq`) public for
//!   rvhost's own tests; not an API, no stability.
//!
//! The repository's `ARCHITECTURE.md` is the map of the code.

#![warn(missing_docs)]

/// Declares a method `pub` with the `internals` feature (rvhost's own tests use it) and
/// `pub(crate)` without it.
macro_rules! internal_pub {
    ($(#[$m:meta])* fn $($rest:tt)*) => {
        #[cfg(feature = "internals")]
        $(#[$m])*
        pub fn $($rest)*
        #[cfg(not(feature = "internals"))]
        $(#[$m])*
        pub(crate) fn $($rest)*
    };
}

#[doc(hidden)]
pub mod ab;
pub mod dataplane;
pub mod driver;
pub mod features;
pub mod frontend;
pub mod lcore;
pub mod mbuf;
pub mod net;
pub mod ratelimit;

// The skip-or-fail convention of rvhost's tests (`RVHOST_TEST_REQUIRE`): the crate's unit
// tests, the command's tests and `tests/` reach it here; not an API.
#[cfg(any(test, feature = "internals"))]
#[doc(hidden)]
pub mod test_support;

// Internals: the guest memory table, the vhost-user wire protocol and the vrings. rvhost's own
// tests reach into them through the `internals` feature (no stability promised); an
// application never needs them. Without the feature, the parts only those tests use (codecs of
// messages the backend does not serve yet, inspection helpers) are unused, hence the allow.
#[cfg(feature = "internals")]
pub mod memory;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)]
pub(crate) mod memory;
#[cfg(feature = "internals")]
pub mod protocol;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)]
pub(crate) mod protocol;
#[cfg(feature = "internals")]
pub mod virtq;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)]
pub(crate) mod virtq;
