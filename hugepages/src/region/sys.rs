//! The system-call layer: memfds, hugetlbfs files and owned mappings.

use std::ffi::CString;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::statfs::{HUGETLBFS_MAGIC, statfs};

use super::{PageSize, RegionError, Result};

/// An owned `MAP_SHARED`, read-write mapping of a file; unmapped on drop (by `memmap2`).
///
/// `MmapRaw` only hands out raw pointers, which is what a mapping shared with other processes
/// needs (they write it at any time; no `&[u8]` may be formed over it), and it is `Send` and
/// `Sync`. Its length must be a multiple of the file's page size: `munmap` of a hugetlb
/// mapping fails otherwise (and `memmap2` ignores unmap errors), so callers round it up.
pub(crate) struct Mapping {
    map: MmapRaw,
}

/// The errno of an error `memmap2` returned. Its only errors that are not the kernel's are
/// lengths above `isize::MAX`, hence `EOVERFLOW`.
pub(crate) fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EOVERFLOW, Errno::from_raw)
}

impl Mapping {
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        offset: u64,
        populate: bool,
    ) -> Result<Mapping> {
        let mmap_err = |source| RegionError::Mmap {
            len,
            offset,
            source,
        };
        if len == 0 {
            return Err(RegionError::ZeroSize);
        }
        if libc::off_t::try_from(offset).is_err() {
            return Err(mmap_err(Errno::EOVERFLOW));
        }
        let mut options = MmapOptions::new();
        options.len(len).offset(offset);
        if populate {
            options.populate();
        }
        // The kernel chooses the address (memmap2 never passes MAP_FIXED), so no existing
        // mapping is replaced. The callers pass page-aligned offsets, so the mapping starts at
        // the returned pointer.
        let map = options.map_raw(&fd).map_err(|e| mmap_err(errno_of(&e)))?;
        Ok(Mapping { map })
    }

    /// First byte of the mapping.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Fault in every page of `page_size` bytes by reading its first byte.
    pub(crate) fn touch(&self, page_size: usize) {
        let mut off = 0;
        while off < self.len() {
            // SAFETY: `off < len`, so the byte is inside the mapping, which is readable. The
            // callers only map ranges inside the file, so the read cannot SIGBUS (unless another
            // process truncates the file concurrently, which the owner of the file must not do).
            // A volatile read does not form a reference and tolerates concurrent writers.
            unsafe { self.ptr().add(off).read_volatile() };
            off += page_size;
        }
    }

    /// `mlock` the whole mapping.
    pub(crate) fn lock(&self) -> Result<()> {
        self.map.lock().map_err(|e| RegionError::Lock {
            len: self.len(),
            source: errno_of(&e),
        })
    }
}

/// A name usable for memfd_create / a file name: no NUL, no `/`, at most 200 bytes.
pub(crate) fn sanitize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c == '\0' || c == '/' { '_' } else { c })
        .collect();
    if s.is_empty() {
        s.push_str("rvhost");
    }
    while s.len() > 200 {
        s.pop();
    }
    s
}

pub(crate) fn memfd(name: &str, page_size: PageSize) -> Result<OwnedFd> {
    let name = sanitize_name(name);
    let cname = CString::new(name.clone()).expect("sanitized name has no NUL");
    memfd_create(
        cname.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING | page_size.memfd_flags(),
    )
    .map_err(|source| RegionError::MemfdCreate {
        name,
        page_size,
        source,
    })
}

/// Page size of the hugetlbfs mounted at `dir`, or a clear error if it is no hugetlbfs mount.
pub(crate) fn hugetlbfs_page_size(dir: &Path) -> Result<PageSize> {
    let fs = statfs(dir).map_err(|e| RegionError::NotHugetlbfs {
        dir: dir.to_path_buf(),
        reason: format!("statfs failed: {e}"),
        source: Some(e.into()),
    })?;
    if fs.filesystem_type() != HUGETLBFS_MAGIC {
        return Err(RegionError::NotHugetlbfs {
            dir: dir.to_path_buf(),
            reason: format!("filesystem magic {:#x}", fs.filesystem_type().0),
            source: None,
        });
    }
    let bytes = u64::try_from(fs.block_size()).unwrap_or(0);
    PageSize::from_bytes(bytes).ok_or(RegionError::UnsupportedPageSize { bytes })
}

/// Create a fresh file in the hugetlbfs mount `dir` and unlink it (the fd keeps it alive).
pub(crate) fn hugetlbfs_file(dir: &Path, name: &str) -> Result<OwnedFd> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = sanitize_name(name);
    loop {
        let path = dir.join(format!(
            "{name}.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(RegionError::HugetlbfsFile { path, source }),
        };
        std::fs::remove_file(&path)
            .map_err(|source| RegionError::HugetlbfsFile { path, source })?;
        return Ok(file.into());
    }
}
