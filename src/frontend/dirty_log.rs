//! The front-end's side of dirty logging ([`FrontendOptions::dirty_log`]): a memfd log of one
//! bit per 4 KiB page of the guest-physical space, sent with SET_LOG_BASE, which QEMU's role
//! is to read and clear while it migrates the guest; tests read it to check what the back-end
//! marked.
//!
//! [`FrontendOptions::dirty_log`]: super::FrontendOptions::dirty_log

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use rvhost_hugepages::region::{PageSize, Region, RegionConfig};

use super::error::FrontendError;
use super::shm::Shm;
use crate::memory::log_bytes_for;
use crate::protocol::payload::{LogInfo, Payload};
use crate::protocol::{Endpoint, FrontendReq};

/// A dirty log: its memfd (4 KiB pages) and the bytes announced.
#[derive(Debug)]
pub struct DirtyLogArea {
    shm: Shm,
    bytes: u64,
    name: String,
}

impl DirtyLogArea {
    /// A zeroed log for guest-physical addresses below `gpa_end`, in a memfd named uniquely
    /// (see [`name`](Self::name)).
    pub fn new(gpa_end: u64) -> Result<Self, FrontendError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let bytes = log_bytes_for(gpa_end).max(1);
        let name = format!(
            "rvhost-dirty-log-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let size = usize::try_from(bytes).unwrap_or(usize::MAX);
        let cfg = RegionConfig::new(size)
            .with_page_size(PageSize::Small)
            .with_name(name.clone());
        let region = Region::new(&cfg).map_err(|source| FrontendError::Memory { size, source })?;
        Ok(DirtyLogArea {
            shm: Shm::new(region),
            bytes,
            name,
        })
    }

    /// Bytes of the log as announced (`mmap_size`).
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The memfd's name (`/memfd:NAME` in `/proc/self/maps`), to find its mappings.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shm.region().fd()
    }

    /// The log's bytes, left as they are.
    pub fn peek(&self) -> Vec<u8> {
        let mut v = vec![0; self.bytes as usize];
        self.shm.slice().copy_to(&mut v);
        v
    }

    /// The whole mapping of the log: its bytes and the rest of its pages, which nobody may
    /// write (tests of a log smaller than the guest memory).
    pub fn peek_mapping(&self) -> Vec<u8> {
        let mut v = vec![0; self.shm.len()];
        self.shm.slice().copy_to(&mut v);
        v
    }

    /// The log's bytes, each taken and cleared in one atomic step (as QEMU syncs its log), so a
    /// bit the back-end sets meanwhile is in this copy or stays for the next.
    pub fn take(&self) -> Vec<u8> {
        let s = self.shm.slice();
        (0..self.bytes as usize)
            .map(|i| s.swap_u8(i, 0, Ordering::Acquire).unwrap_or(0))
            .collect()
    }

    /// Sends SET_LOG_BASE with this log and reads the back-end's reply (an empty payload).
    pub fn send(&self, ep: &mut Endpoint) -> Result<(), FrontendError> {
        let info = LogInfo {
            mmap_size: self.bytes,
            mmap_offset: self.shm.region().mmap_offset(),
        };
        ep.call(FrontendReq::SetLogBase, &info.to_bytes(), &[self.fd()])
            .map_err(FrontendError::request(FrontendReq::SetLogBase))?;
        Ok(())
    }
}
