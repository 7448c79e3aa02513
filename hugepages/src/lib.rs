//! rvhost-hugepages: the memory substrate of rvhost.
//!
//! - [`region`]: hugepage memory (hugetlbfs file or `memfd` with `MFD_HUGETLB`), with a 4 KiB
//!   fallback, the fd/offset a vhost-user frontend sends to share it, and VA→IOVA lookup.
//! - [`bulk_ring`]: a fixed-capacity lock-free ring with bulk and burst operations (rte_ring semantics).
//! - [`mempool`]: fixed-size objects carved from regions, with per-lcore caches (rte_mempool
//!   semantics).

pub mod bulk_ring;
pub mod mempool;
pub mod region;

// The skip-or-fail convention of rvhost's tests (`RVHOST_TEST_REQUIRE`): this crate's tests and
// rvhost's (which re-exports it) reach it here; not an API.
#[doc(hidden)]
pub mod test_support;
