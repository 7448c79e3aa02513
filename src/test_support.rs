//! What a test does when this machine lacks a peer it needs (DPDK testpmd, QEMU, free
//! hugepages, root, a second CPU): the one convention of rvhost's tests, unit tests, the
//! command's tests and `tests/` (through `tests/common`) alike. It is the hugepages crate's
//! (`rvhost_hugepages::test_support`, which its own tests use), re-exported: see there.

pub use rvhost_hugepages::test_support::{required, skip};
