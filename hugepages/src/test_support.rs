//! What a test does when this machine lacks what it needs (DPDK testpmd, QEMU, free hugepages,
//! readable physical addresses, root, a second CPU): the one convention of the workspace's
//! tests. It lives in this crate, the one every other depends on; rvhost re-exports it
//! (`rvhost::test_support`).
//!
//! Without `RVHOST_TEST_REQUIRE`, [`skip`] writes `skipping: <why> [<test>]` to the process's
//! standard error and the test returns and passes. The line goes to the file descriptor, not
//! through the test harness's capture, so `cargo test` shows it even for a passing test and CI
//! can count it. With `RVHOST_TEST_REQUIRE=all` (CI, where every peer is installed), [`skip`]
//! panics instead: a test that cannot run fails.

use std::fmt::Display;
use std::io::Write;

/// Whether `RVHOST_TEST_REQUIRE=all` asks for every test to really run.
pub fn required() -> bool {
    std::env::var("RVHOST_TEST_REQUIRE").is_ok_and(|v| v == "all")
}

/// Reports that the calling test cannot run here, because `why`; the test then returns (or,
/// for a check that needs what is missing, goes on without it). Panics under
/// `RVHOST_TEST_REQUIRE=all`.
#[track_caller]
pub fn skip(why: impl Display) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed thread")
        .to_owned();
    if required() {
        panic!("RVHOST_TEST_REQUIRE=all, but {test} cannot run: {why}");
    }
    let line = format!("skipping: {why} [{test}]\n");
    // One write, so that lines of tests running in parallel do not interleave.
    let _ = std::io::stderr().write_all(line.as_bytes());
}
