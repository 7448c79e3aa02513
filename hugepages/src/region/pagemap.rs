//! Virtual → physical translation through `/proc/self/pagemap`.
//!
//! Each 4 KiB virtual page has a 64-bit entry at offset `(va / 4096) * 8`: bit 63 = present,
//! bits 0..=54 = page frame number. Without `CAP_SYS_ADMIN` the kernel reports PFN 0 (since
//! Linux 4.2), which is how "physical addresses are not readable" shows up.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PAGEMAP: &str = "/proc/self/pagemap";
const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;
/// Entries read per `pread` when translating consecutive 4 KiB pages.
const CHUNK_ENTRIES: usize = 8192;

/// Why physical addresses could not be had.
#[derive(Debug)]
pub(crate) enum PagemapError {
    Io(io::Error),
    NotPresent { va: usize },
    HiddenPfn,
}

impl PagemapError {
    pub(crate) fn describe(&self) -> String {
        match self {
            PagemapError::Io(e) => format!("reading {PAGEMAP} failed: {e}"),
            PagemapError::NotPresent { va } => {
                format!("page at {va:#x} is not present (not faulted in)")
            }
            PagemapError::HiddenPfn => {
                format!("{PAGEMAP} reports PFN 0 (needs CAP_SYS_ADMIN)")
            }
        }
    }

    pub(crate) fn into_io(self) -> Option<io::Error> {
        match self {
            PagemapError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The base page size used by pagemap indices and PFNs.
fn base_page() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let sz = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(sz).ok().filter(|&s| s > 0).unwrap_or(4096)
}

fn decode(entry: u64, va: usize, base: usize) -> Result<u64, PagemapError> {
    if entry & PRESENT == 0 {
        return Err(PagemapError::NotPresent { va });
    }
    let pfn = entry & PFN_MASK;
    if pfn == 0 {
        return Err(PagemapError::HiddenPfn);
    }
    // PFN < 2^55 and base is a small power of two; the product fits for any real machine, but
    // stay checked rather than wrap.
    pfn.checked_mul(base as u64)
        .ok_or(PagemapError::HiddenPfn)
        .map(|pa| pa + (va % base) as u64)
}

/// Physical address of the first byte of each of the `pages` pages of `page_size` bytes
/// starting at virtual address `start` (which must be `page_size`-aligned). Every page must be
/// faulted in.
pub(crate) fn page_phys_addrs(
    start: usize,
    pages: usize,
    page_size: usize,
) -> Result<Vec<u64>, PagemapError> {
    let file = File::open(PAGEMAP).map_err(PagemapError::Io)?;
    let base = base_page();
    let mut out = Vec::with_capacity(pages);
    if page_size == base {
        // Consecutive entries: read them in chunks.
        let mut buf = vec![0u8; CHUNK_ENTRIES.min(pages) * 8];
        let mut done = 0;
        while done < pages {
            let n = CHUNK_ENTRIES.min(pages - done);
            let va = start + done * base;
            let bytes = &mut buf[..n * 8];
            file.read_exact_at(bytes, (va / base * 8) as u64)
                .map_err(PagemapError::Io)?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_ne_bytes(e.try_into().expect("8-byte chunk"));
                out.push(decode(entry, va + i * base, base)?);
            }
            done += n;
        }
    } else {
        // One entry per hugepage: the head 4 KiB page gives the start of the hugepage.
        let mut e = [0u8; 8];
        for i in 0..pages {
            let va = start + i * page_size;
            file.read_exact_at(&mut e, (va / base * 8) as u64)
                .map_err(PagemapError::Io)?;
            out.push(decode(u64::from_ne_bytes(e), va, base)?);
        }
    }
    Ok(out)
}

/// Physical address of one virtual address, looked up now (slow: one `open` + `pread`).
#[cfg(test)]
pub(crate) fn phys_addr(va: usize) -> Result<u64, PagemapError> {
    let base = base_page();
    let file = File::open(PAGEMAP).map_err(PagemapError::Io)?;
    let mut e = [0u8; 8];
    file.read_exact_at(&mut e, (va / base * 8) as u64)
        .map_err(PagemapError::Io)?;
    decode(u64::from_ne_bytes(e), va, base)
}
