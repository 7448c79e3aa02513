//! What a test does when this machine lacks a peer it needs (DPDK testpmd, QEMU, free
//! hugepages, root, a second CPU): the one convention of rvhost's tests, unit tests, the
//! command's tests and `tests/` (through `tests/common`) alike. It is the hugepages crate's
//! (`rvhost_hugepages::test_support`, which its own tests use), re-exported: see there.
//! Also the /proc leak checks of memfds that the memory tests and `tests/` share.

pub use rvhost_hugepages::test_support::{required, skip};

// Leak checks through /proc for the memory tests and `tests/` (fds and mappings of a named
// memfd).

/// Whether a `/proc` link or map path names the memfd called `name`.
fn is_ours(target: &str, name: &str) -> bool {
    target
        .strip_prefix("/memfd:")
        .and_then(|t| t.strip_prefix(name))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// Open fds of this process that refer to the memfd called `name`.
pub fn fds_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| is_ours(&t.to_string_lossy(), name))
        .count()
}

/// Bytes of this process's address space mapped from the memfd called `name`. (Bytes, not
/// mapping count: the kernel may merge adjacent mappings of adjacent file ranges.)
pub fn mapped_bytes_named(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| {
            // address perms offset dev inode path
            let mut f = l.splitn(6, ' ');
            let range = f.next()?;
            let path = f.nth(4).unwrap_or("").trim_start();
            if !is_ours(path, name) {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .sum()
}
