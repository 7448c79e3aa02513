//! One guest memory region: validated, mapped `MAP_SHARED` from the frontend's fd, unmapped on
//! drop.
//!
//! # Mapping
//!
//! `mmap` file offsets must be multiples of the fd's page size (2 MiB / 1 GiB on hugetlbfs) but a
//! region's `mmap_offset` need not be (QEMU splits RAM around holes, e.g. a region at
//! `mmap_offset 0xc0000`). DPDK maps from file offset 0 with length
//! `mmap_offset + memory_size` rounded up to `st_blksize`. This module instead maps from
//! `mmap_offset` rounded *down* to the page size, for `(mmap_offset - aligned) + memory_size`
//! rounded up: same alignment guarantees, but it never maps (and with `populate`/`lock` never
//! faults in) the part of the file before the region, which matters when one backing file carries
//! several regions at large offsets (RAM above 4 GiB).
//!
//! The page size is `st_blksize` from `fstat` when it is a power of two at least the system page
//! size (hugetlbfs reports the huge page size there), the system page size otherwise.
//!
//! The mapping is `memmap2`'s [`MmapRaw`] (raw pointers only: the guest writes the memory
//! concurrently), except between guard pages ([`MapOptions::guard_pages`]), which needs
//! `MAP_FIXED`. The region's bytes are `mlock`ed by hand (memmap2 locks whole mappings).
//!
//! # The fd is kept
//!
//! [`GuestRegion`] keeps the frontend's fd open for its whole life (closed on drop, after the
//! unmap). It is needed later: DMA/IOMMU mapping of guest memory, re-checking seals, or handing
//! the memory to another component. The cost is one fd per region (at most 509 with
//! CONFIGURE_MEM_SLOTS); raise `RLIMIT_NOFILE` accordingly.
//!
//! # SIGBUS
//!
//! Mapping is refused when the region extends beyond the fd's size at map time. A hostile
//! frontend can still `ftruncate` the file smaller afterwards, which would make later accesses
//! SIGBUS, unless the fd is sealed with `F_SEAL_SHRINK` (QEMU's `memory-backend-memfd` seals by
//! default; `memory-backend-file` on hugetlbfs does not). [`GuestRegion::is_shrink_sealed`] tells
//! which case applies and [`MapOptions::require_shrink_seal`] refuses unsealed fds.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use memmap2::{Advice, MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::mman::{self, MapFlags, MmapAdvise, ProtFlags};
use nix::sys::stat::fstat;

use super::access::GuestSlice;
use super::error::{AddrField, MemoryError};
use super::{DEFAULT_MAX_TOTAL_BYTES, FrontendVa, Gpa};

/// A vhost-user memory region description, as carried by SET_MEM_TABLE, ADD_MEM_REG and
/// REM_MEM_REG (field order of the wire format).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionDesc {
    /// Guest-physical address of the first byte.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// The frontend's (QEMU's) virtual address of the first byte.
    pub userspace_addr: u64,
    /// Offset of the first byte in the fd.
    pub mmap_offset: u64,
}

impl RegionDesc {
    /// Checks the fields alone: nonzero size and no u64 overflow of any `start + size`.
    pub fn validate(&self) -> Result<(), MemoryError> {
        let size = self.memory_size;
        if size == 0 {
            return Err(MemoryError::ZeroSize);
        }
        for (field, start) in [
            (AddrField::GuestPhys, self.guest_phys_addr),
            (AddrField::Userspace, self.userspace_addr),
            (AddrField::MmapOffset, self.mmap_offset),
        ] {
            if start.checked_add(size).is_none() {
                return Err(MemoryError::AddressOverflow { field, start, size });
            }
        }
        Ok(())
    }

    /// Whether `other` names the same region for REM_MEM_REG: same guest address, user address
    /// and size (the mmap offset is ignored, as the protocol specifies).
    pub fn same_region(&self, other: &RegionDesc) -> bool {
        self.guest_phys_addr == other.guest_phys_addr
            && self.userspace_addr == other.userspace_addr
            && self.memory_size == other.memory_size
    }

    /// Exclusive guest-physical end. Only meaningful after [`validate`](Self::validate) succeeded.
    pub(crate) fn gpa_end(&self) -> u64 {
        self.guest_phys_addr.saturating_add(self.memory_size)
    }

    /// Exclusive frontend-VA end. Only meaningful after [`validate`](Self::validate) succeeded.
    pub(crate) fn uva_end(&self) -> u64 {
        self.userspace_addr.saturating_add(self.memory_size)
    }
}

impl fmt::Display for RegionDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{gpa {:#x}, size {:#x}, uva {:#x}, mmap_offset {:#x}}}",
            self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset
        )
    }
}

/// How to map a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapOptions {
    /// `MAP_POPULATE`: fault the whole mapping in now (DPDK does this when async DMA copy is
    /// used, so that IOVAs exist).
    pub populate: bool,
    /// `mlock` the region's bytes after mapping.
    pub lock: bool,
    /// Refuse regions with a larger `memory_size`.
    pub max_region_bytes: u64,
    /// Refuse fds that are not sealed with `F_SEAL_SHRINK` (see the module documentation).
    pub require_shrink_seal: bool,
    /// Place the mapping between two inaccessible (`PROT_NONE`) pages, so that an access
    /// running past either end of the region faults instead of reaching whatever the kernel
    /// mapped next to it (another region, another guest's memory). Costs one more mapping
    /// (address space only). rvhost's fuzz targets turn it on.
    pub guard_pages: bool,
}

impl MapOptions {
    /// No populate, no lock, a 1 TiB region limit, seals not required.
    pub const fn new() -> Self {
        MapOptions {
            populate: false,
            lock: false,
            max_region_bytes: DEFAULT_MAX_TOTAL_BYTES,
            require_shrink_seal: false,
            guard_pages: false,
        }
    }
}

impl Default for MapOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A guest memory region mapped into this process. Unmapped, and its fd closed, on drop.
///
/// Normally held in an `Arc` by one or more [`GuestMemory`](super::GuestMemory) tables.
pub struct GuestRegion {
    desc: RegionDesc,
    /// The whole mapping (from the aligned offset, page aligned), unmapped when it drops:
    /// before `fd` closes, which is declared after it.
    mapping: Mapping,
    /// `mapping.base() + (mmap_offset - aligned offset)`: the host address of
    /// `guest_phys_addr`, kept here so that the data path reads it with no indirection.
    host_base: NonNull<u8>,
    page_size: u64,
    shrink_sealed: bool,
    locked: bool,
    fd: OwnedFd,
    /// How many times the frontend has added this very region (see
    /// [`add_frontend_ref`](Self::add_frontend_ref)). Control-plane bookkeeping: only the
    /// control thread changes it, so `Relaxed` is enough.
    frontend_refs: AtomicU32,
}

// SAFETY: GuestRegion owns its mapping exclusively (unmapped only when it drops) and holds no
// thread-affine state; the raw pointers are plain addresses of that mapping. All access to the
// bytes goes through GuestSlice, whose operations are raw-pointer copies / volatile / atomic
// accesses of memory that the guest mutates concurrently anyway, so sharing between threads adds
// no new hazard.
unsafe impl Send for GuestRegion {}
// SAFETY: as for Send; &GuestRegion only exposes addresses and GuestSlice views, never references
// to the mapped bytes.
unsafe impl Sync for GuestRegion {}

fn system_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

impl GuestRegion {
    /// Validates `desc` against `fd` and maps it `MAP_SHARED`, read-write.
    ///
    /// Checks, all before anything is mapped: size 0, u64 overflow of every `start + size`,
    /// `memory_size <= opts.max_region_bytes`, the fd is a regular file, and
    /// `mmap_offset + memory_size <= st_size`. On any error the fd is closed and nothing stays
    /// mapped.
    pub fn map(
        fd: OwnedFd,
        desc: RegionDesc,
        opts: MapOptions,
    ) -> Result<GuestRegion, MemoryError> {
        desc.validate()?;
        let size = desc.memory_size;
        if size > opts.max_region_bytes {
            return Err(MemoryError::RegionTooLarge {
                size,
                limit: opts.max_region_bytes,
            });
        }

        let st = fstat(fd.as_fd()).map_err(MemoryError::Fstat)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(MemoryError::NotRegularFile { mode: st.st_mode });
        }
        let fd_size = u64::try_from(st.st_size).unwrap_or(0);
        // validate() guarantees no overflow.
        let region_end = desc.mmap_offset + size;
        if region_end > fd_size {
            return Err(MemoryError::BeyondFdSize {
                offset: desc.mmap_offset,
                size,
                fd_size,
            });
        }

        let shrink_sealed = match fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS) {
            Ok(bits) => SealFlag::from_bits_truncate(bits).contains(SealFlag::F_SEAL_SHRINK),
            // EINVAL: the filesystem does not support seals.
            Err(_) => false,
        };
        if opts.require_shrink_seal && !shrink_sealed {
            return Err(MemoryError::NotShrinkSealed);
        }

        let sys_page = system_page_size();
        let blk = u64::try_from(st.st_blksize).unwrap_or(0);
        let page_size = if blk.is_power_of_two() && blk >= sys_page {
            blk
        } else {
            sys_page
        };
        let map_offset = desc.mmap_offset & !(page_size - 1);
        let delta = desc.mmap_offset - map_offset;
        // delta + size <= mmap_offset + size, which does not overflow.
        let unaligned_len = delta + size;
        let too_large = MemoryError::MappingTooLarge {
            offset: map_offset,
            len: unaligned_len,
        };
        let map_len_u64 = match unaligned_len.checked_add(page_size - 1) {
            Some(v) => v & !(page_size - 1),
            None => return Err(too_large),
        };
        let (Ok(map_len), Ok(file_off), Ok(delta_usize), Ok(_)) = (
            usize::try_from(map_len_u64),
            libc::off_t::try_from(map_offset),
            usize::try_from(delta),
            usize::try_from(size),
        ) else {
            return Err(too_large);
        };
        let Some(map_len_nz) = NonZeroUsize::new(map_len) else {
            return Err(too_large);
        };

        let mmap_err = |errno| MemoryError::Mmap {
            offset: map_offset,
            len: map_len_u64,
            errno,
        };
        let mapping = if opts.guard_pages {
            // page_size is a power of two that fits in usize (it is st_blksize or the system
            // page size).
            let guarded = GuardedMapping::map(
                fd.as_fd(),
                map_len_nz,
                file_off,
                opts.populate,
                page_size as usize,
                sys_page as usize,
            );
            Mapping::Guarded(guarded.map_err(mmap_err)?)
        } else {
            let mut options = MmapOptions::new();
            options.offset(map_offset).len(map_len);
            if opts.populate {
                options.populate();
            }
            // A fresh MAP_SHARED read-write mapping placed by the kernel. map_offset is a
            // multiple of the system page size, so memmap2 maps from it exactly and its
            // pointer is the mapping's start. Only [delta, delta + size) of it is ever
            // accessed, and that range was checked to lie within st_size.
            let raw = options.map_raw(&fd).map_err(|e| mmap_err(errno_of(&e)))?;
            Mapping::Shared(raw)
        };

        // SAFETY: delta < page_size <= map_len, so base + delta is inside the mapping just
        // created (and therefore non-null).
        let host_base = unsafe { NonNull::new_unchecked(mapping.base().add(delta_usize)) };

        // From here on, dropping `region` unmaps on any error return.
        let mut region = GuestRegion {
            desc,
            mapping,
            host_base,
            page_size,
            shrink_sealed,
            locked: false,
            fd,
            frontend_refs: AtomicU32::new(1),
        };

        // Keep guest memory out of core dumps (as DPDK's mem_set_dump does). Best effort.
        if let Err(e) = region.mapping.dont_dump() {
            log::debug!("madvise(MADV_DONTDUMP) on guest region {desc} failed: {e}");
        }

        if opts.lock {
            // The region's bytes only, not the whole mapping as memmap2's `lock` would: that
            // adds up to a page on each side (with 1 GiB pages, as much of RLIMIT_MEMLOCK),
            // and where st_blksize is larger than the pages of the file, pages past its end.
            // SAFETY: [host_base, host_base + size) lies inside the mapping (delta + size <=
            // map_len) and inside the file, so faulting it in cannot SIGBUS; mlock does not
            // change the contents.
            unsafe { mman::mlock(region.host_base.cast::<c_void>(), size as usize) }.map_err(
                |errno| MemoryError::Mlock {
                    len: size,
                    limit: super::soft_rlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK),
                    errno,
                },
            )?;
            region.locked = true;
        }

        log::debug!(
            "mapped guest region {desc}: host {:p}, mapping {:p}+{map_len:#x} at file offset {map_offset:#x}, page size {page_size:#x}{}",
            region.host_base,
            region.mapping.base(),
            if shrink_sealed { ", shrink-sealed" } else { "" }
        );
        Ok(region)
    }

    /// The description this region was mapped from.
    pub fn desc(&self) -> &RegionDesc {
        &self.desc
    }

    /// Guest-physical address of the first byte.
    pub fn guest_phys_addr(&self) -> Gpa {
        Gpa(self.desc.guest_phys_addr)
    }

    /// Frontend virtual address of the first byte.
    pub fn userspace_addr(&self) -> FrontendVa {
        FrontendVa(self.desc.userspace_addr)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.desc.memory_size
    }

    /// `mmap_offset` of the description.
    pub fn mmap_offset(&self) -> u64 {
        self.desc.mmap_offset
    }

    /// Host address of the region's first byte (`guest_phys_addr`). Getting it is safe; reading
    /// or writing through it is the caller's `unsafe` business (prefer [`as_slice`](Self::as_slice)).
    pub fn host_ptr(&self) -> *mut u8 {
        self.host_base.as_ptr()
    }

    /// The whole mapping holding the region, as (start address, length): page aligned at the
    /// region's page size, from the page holding its first byte to the page holding its last
    /// (postcopy registers it with the userfaultfd). Guard pages are not part of it.
    pub fn mapping_range(&self) -> (u64, u64) {
        (self.mapping.base() as u64, self.mapping.len() as u64)
    }

    /// The page size used for alignment (huge page size for hugetlbfs).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Whether the fd carried `F_SEAL_SHRINK` at map time (then the frontend cannot truncate it
    /// and accesses cannot SIGBUS).
    pub fn is_shrink_sealed(&self) -> bool {
        self.shrink_sealed
    }

    /// Whether the region was mlocked.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The frontend's fd, kept open for the region's life (for DMA/IOMMU mapping).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether `fd` is the file this region maps: the same device and inode (`fstat` of both).
    /// A duplicate ADD_MEM_REG must name the same backing file, not only the same addresses.
    pub fn same_file(&self, fd: BorrowedFd<'_>) -> Result<bool, MemoryError> {
        let ours = fstat(self.fd.as_fd()).map_err(MemoryError::Fstat)?;
        let theirs = fstat(fd).map_err(MemoryError::Fstat)?;
        Ok(ours.st_dev == theirs.st_dev && ours.st_ino == theirs.st_ino)
    }

    /// How many times the frontend holds this region: 1 when mapped, one more for each exact
    /// duplicate ADD_MEM_REG. QEMU keeps one vhost device per queue pair on one connection
    /// and each adds the same guest memory; REM_MEM_REG takes one reference back and the
    /// region leaves the table with the last ([`GuestMemory::with_released`]).
    ///
    /// [`GuestMemory::with_released`]: super::GuestMemory::with_released
    pub fn frontend_refs(&self) -> u32 {
        self.frontend_refs.load(Ordering::Relaxed)
    }

    /// Counts one more frontend reference; refused at `u32::MAX`.
    pub(crate) fn add_frontend_ref(&self) -> Result<u32, MemoryError> {
        let n = self.frontend_refs();
        let n = n
            .checked_add(1)
            .ok_or(MemoryError::TooManyReferences(self.desc))?;
        self.frontend_refs.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Drops one frontend reference (never below 0) and returns how many are left.
    pub(crate) fn drop_frontend_ref(&self) -> u32 {
        let n = self.frontend_refs().saturating_sub(1);
        self.frontend_refs.store(n, Ordering::Relaxed);
        n
    }

    /// Back to one reference (a SET_MEM_TABLE that names the region again: the table is what
    /// it says, each region held once).
    pub(crate) fn reset_frontend_refs(&self) {
        self.frontend_refs.store(1, Ordering::Relaxed);
    }

    /// The whole region as a [`GuestSlice`].
    pub fn as_slice(&self) -> GuestSlice<'_> {
        // SAFETY: [host_base, host_base + size) lies inside the mapping, which lives as long as
        // &self; size fits in usize (checked in map).
        unsafe { GuestSlice::from_raw(self.host_base, self.desc.memory_size as usize) }
    }
}

impl fmt::Debug for GuestRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRegion")
            .field("desc", &self.desc)
            .field("host_base", &self.host_base)
            .field("map_len", &self.mapping.len())
            .field("page_size", &self.page_size)
            .field("shrink_sealed", &self.shrink_sealed)
            .field("locked", &self.locked)
            .field("frontend_refs", &self.frontend_refs())
            .finish()
    }
}

/// The errno of an error `memmap2` returned. Its only errors that are not the kernel's are
/// lengths above `isize::MAX`, hence `EOVERFLOW`.
fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EOVERFLOW, Errno::from_raw)
}

/// A region's mapping, unmapped when it drops. Every [`GuestSlice`] borrows the region
/// (directly or through a [`GuestMemory`](super::GuestMemory) holding an `Arc` to it), so
/// none outlives it.
#[derive(Debug)]
enum Mapping {
    /// Placed by the kernel: `memmap2`, which only hands out raw pointers (the guest writes
    /// the memory concurrently; no reference may be formed over it).
    Shared(MmapRaw),
    /// Inside a `PROT_NONE` reservation ([`MapOptions::guard_pages`]): `MAP_FIXED`, which
    /// `memmap2` does not offer, so by hand.
    Guarded(GuardedMapping),
}

impl Mapping {
    /// The mapping's first byte (page aligned).
    fn base(&self) -> *mut u8 {
        match self {
            Mapping::Shared(m) => m.as_mut_ptr(),
            Mapping::Guarded(g) => g.inner.as_ptr().cast(),
        }
    }

    /// The mapping's length (a multiple of the region's page size).
    fn len(&self) -> usize {
        match self {
            Mapping::Shared(m) => m.len(),
            Mapping::Guarded(g) => g.inner_len,
        }
    }

    /// `MADV_DONTDUMP` on the whole mapping.
    fn dont_dump(&self) -> Result<(), Errno> {
        match self {
            Mapping::Shared(m) => m.advise(Advice::DontDump).map_err(|e| errno_of(&e)),
            // SAFETY: [inner, inner + inner_len) is exactly the mapping placed in `map`;
            // madvise DONTDUMP does not change its contents.
            Mapping::Guarded(g) => unsafe {
                mman::madvise(g.inner, g.inner_len, MmapAdvise::MADV_DONTDUMP)
            },
        }
    }
}

/// Address space reserved `PROT_NONE` around a region's mapping ([`MapOptions::guard_pages`]):
/// the mapping replaces its middle (`MAP_FIXED`), at least one system page on each side stays
/// inaccessible. Unmapping the reservation unmaps the mapping inside it too.
///
/// `memmap2` cannot place a mapping at a chosen address, so this one is made with nix.
#[derive(Debug)]
struct GuardedMapping {
    /// The reservation.
    start: NonNull<c_void>,
    len: usize,
    /// The file's mapping inside it.
    inner: NonNull<c_void>,
    inner_len: usize,
}

impl GuardedMapping {
    /// Maps `len` bytes of `fd` at `offset` (`MAP_SHARED`, read-write, `MAP_POPULATE` if
    /// `populate`) at an address aligned to `page` (a hugetlb mapping must be), with at least
    /// `sys_page` inaccessible bytes before and after it.
    fn map(
        fd: BorrowedFd<'_>,
        len: NonZeroUsize,
        offset: libc::off_t,
        populate: bool,
        page: usize,
        sys_page: usize,
    ) -> Result<GuardedMapping, Errno> {
        // The mapping starts at the first `page` boundary past `start + sys_page`, at most
        // `start + page` (start is sys_page aligned): `page + len + sys_page` bytes hold it
        // and a guard page after it.
        let total = page
            .checked_add(len.get())
            .and_then(|n| n.checked_add(sys_page))
            .and_then(NonZeroUsize::new)
            .ok_or(Errno::ENOMEM)?;
        // SAFETY: a fresh anonymous PROT_NONE mapping chosen by the kernel (addr None) aliases
        // nothing, and nothing can be read or written through it.
        let start = unsafe {
            mman::mmap_anonymous(
                None,
                total,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }?;
        let mut g = GuardedMapping {
            start,
            len: total.get(),
            inner: start,
            inner_len: 0,
        };
        // On any error below, `g` drops: the reservation is unmapped.
        let at = (start.as_ptr() as usize)
            .checked_add(sys_page)
            .and_then(|a| a.checked_next_multiple_of(page))
            .and_then(NonZeroUsize::new)
            .ok_or(Errno::ENOMEM)?;
        let mut flags = MapFlags::MAP_SHARED | MapFlags::MAP_FIXED;
        if populate {
            flags |= MapFlags::MAP_POPULATE;
        }
        // SAFETY: MAP_FIXED replaces part of the PROT_NONE reservation made just above, which
        // nothing else uses: [at, at + len) lies inside it with at least one page of it left
        // on each side. fd is a valid open regular file, offset is page aligned and len
        // nonzero (checked by the caller, which accesses only the part of the mapping that
        // lies within the file's size).
        g.inner = unsafe {
            mman::mmap(
                Some(at),
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        }?;
        g.inner_len = len.get();
        Ok(g)
    }
}

impl Drop for GuardedMapping {
    fn drop(&mut self) {
        // SAFETY: [start, start + len) is the reservation made in `map`, with the region's
        // mapping inside it; both belong to the GuestRegion being dropped (or to a `map` that
        // failed), and no GuestSlice of them outlives it (see `Mapping`).
        if let Err(e) = unsafe { mman::munmap(self.start, self.len) } {
            log::error!("munmap of a guarded guest region failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::testutil::*;
    use crate::test_support::skip;
    use nix::sys::uio::{pread, pwrite};

    #[test]
    fn shared_with_a_frontend_mapping() {
        let name = unique_name("shared");
        let fd = memfd(&name, 0x10000);
        let front = FrontendMap::new(&fd, 0x10000);
        let desc = RegionDesc {
            guest_phys_addr: 0x10_0000,
            memory_size: 0x8000,
            userspace_addr: front.addr() + 0x3000,
            mmap_offset: 0x3000,
        };
        let r = GuestRegion::map(fd.try_clone().unwrap(), desc, MapOptions::new()).unwrap();
        assert_eq!(r.size(), 0x8000);
        assert_eq!(r.guest_phys_addr(), Gpa(0x10_0000));
        let s = r.as_slice();

        // Frontend writes, we read.
        front.write(0x3010, b"hello guest");
        let mut buf = [0u8; 11];
        s.read_at(0x10, &mut buf).unwrap();
        assert_eq!(&buf, b"hello guest");

        // We write, frontend (and the file) reads.
        s.write_at(0x7ff0, b"0123456789abcdef").unwrap();
        assert_eq!(front.read(0xaff0, 16), b"0123456789abcdef");
        let mut fbuf = [0u8; 16];
        pread(&fd, &mut fbuf, 0xaff0).unwrap();
        assert_eq!(&fbuf, b"0123456789abcdef");
    }

    #[test]
    fn non_page_aligned_offsets() {
        for off in [0x1234u64, 0x5123, 0xfff, 0x1000, 0x1001] {
            let name = unique_name("unaligned");
            let fd = memfd(&name, 0x10000);
            let pattern: Vec<u8> = (0..0x2000u32).map(|i| (i * 7 + off as u32) as u8).collect();
            pwrite(&fd, &pattern, off as i64).unwrap();
            let desc = RegionDesc {
                guest_phys_addr: 0,
                memory_size: 0x2000,
                userspace_addr: 0x7f00_0000_0000,
                mmap_offset: off,
            };
            let r = GuestRegion::map(fd.try_clone().unwrap(), desc, MapOptions::new()).unwrap();
            let mut got = vec![0u8; 0x2000];
            assert_eq!(r.as_slice().copy_to(&mut got), 0x2000);
            assert_eq!(got, pattern, "offset {off:#x}");
            assert_eq!(r.host_ptr() as u64 % r.page_size(), off % r.page_size());
            drop(r);
            assert_eq!(mapped_bytes_named(&name), 0);
        }
    }

    #[test]
    fn offset_plus_size_exactly_fd_size_is_accepted() {
        let name = unique_name("exact");
        let fd = memfd(&name, 0x5000);
        let desc = RegionDesc {
            guest_phys_addr: 0,
            memory_size: 0x2800,
            userspace_addr: 0,
            mmap_offset: 0x2800,
        };
        let r = GuestRegion::map(fd, desc, MapOptions::new()).unwrap();
        // Touch the very last byte: must not SIGBUS.
        r.as_slice().write_obj(0x27ff, 0xa5u8).unwrap();
        assert_eq!(r.as_slice().read_obj::<u8>(0x27ff).unwrap(), 0xa5);
    }

    #[test]
    fn beyond_fd_size_is_refused_without_mapping() {
        let name = unique_name("beyond");
        for (off, size) in [
            (0x2000u64, 0x3000u64),
            (0x4000, 1),
            (0, 0x4001),
            (0x10_0000, 0x1000),
        ] {
            let fd = memfd(&name, 0x4000);
            let desc = RegionDesc {
                guest_phys_addr: 0,
                memory_size: size,
                userspace_addr: 0,
                mmap_offset: off,
            };
            match GuestRegion::map(fd, desc, MapOptions::new()) {
                Err(MemoryError::BeyondFdSize {
                    offset,
                    size: s,
                    fd_size,
                }) => {
                    assert_eq!((offset, s, fd_size), (off, size, 0x4000));
                }
                other => panic!("expected BeyondFdSize, got {other:?}"),
            }
            assert_eq!(mapped_bytes_named(&name), 0, "nothing may stay mapped");
            assert_eq!(fds_named(&name), 0, "the fd must be closed");
        }
    }

    #[test]
    fn overflowing_fields_are_refused() {
        let cases = [
            (u64::MAX - 10, 0x1000, 0, 0, AddrField::GuestPhys),
            (0, 0x1000, u64::MAX - 0xfff, 0, AddrField::Userspace),
            (0, 0x1000, 0, u64::MAX - 0x800, AddrField::MmapOffset),
            (1, u64::MAX, 0, 0, AddrField::GuestPhys),
        ];
        for (gpa, size, uva, off, want) in cases {
            let fd = memfd(&unique_name("ovf"), 0x1000);
            let desc = RegionDesc {
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: uva,
                mmap_offset: off,
            };
            match GuestRegion::map(fd, desc, MapOptions::new()) {
                Err(MemoryError::AddressOverflow { field, .. }) => assert_eq!(field, want),
                other => panic!("expected overflow of {want}, got {other:?}"),
            }
        }
        // Largest non-overflowing end is accepted by validate (end == u64::MAX).
        let ok = RegionDesc {
            guest_phys_addr: u64::MAX - 0x1000,
            memory_size: 0x1000,
            userspace_addr: 0,
            mmap_offset: 0,
        };
        ok.validate().unwrap();
    }

    #[test]
    fn zero_size_and_too_large_are_refused() {
        let fd = memfd(&unique_name("zero"), 0x1000);
        let desc = RegionDesc {
            memory_size: 0,
            ..RegionDesc::default()
        };
        assert!(matches!(
            GuestRegion::map(fd, desc, MapOptions::new()),
            Err(MemoryError::ZeroSize)
        ));

        let fd = memfd(&unique_name("large"), 0x4000);
        let desc = RegionDesc {
            memory_size: 0x4000,
            ..RegionDesc::default()
        };
        let opts = MapOptions {
            max_region_bytes: 0x3000,
            ..MapOptions::new()
        };
        assert!(matches!(
            GuestRegion::map(fd, desc, opts),
            Err(MemoryError::RegionTooLarge {
                size: 0x4000,
                limit: 0x3000
            })
        ));
    }

    #[test]
    fn non_regular_fd_is_refused() {
        let f = std::fs::File::open("/dev/zero").unwrap();
        let desc = RegionDesc {
            memory_size: 0x1000,
            ..RegionDesc::default()
        };
        assert!(matches!(
            GuestRegion::map(OwnedFd::from(f), desc, MapOptions::new()),
            Err(MemoryError::NotRegularFile { .. })
        ));
        let (rd, _wr) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            GuestRegion::map(rd, desc, MapOptions::new()),
            Err(MemoryError::NotRegularFile { .. })
        ));
    }

    #[test]
    fn shrink_seal_detection_and_requirement() {
        let desc = RegionDesc {
            memory_size: 0x2000,
            ..RegionDesc::default()
        };
        let opts = MapOptions {
            require_shrink_seal: true,
            ..MapOptions::new()
        };
        let fd = memfd(&unique_name("unsealed"), 0x2000);
        assert!(matches!(
            GuestRegion::map(fd, desc, opts),
            Err(MemoryError::NotShrinkSealed)
        ));

        let fd = memfd(&unique_name("sealed"), 0x2000);
        fcntl(
            fd.as_fd(),
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
        )
        .unwrap();
        let r = GuestRegion::map(fd, desc, opts).unwrap();
        assert!(r.is_shrink_sealed());
        // The seal is what makes a later truncation (and SIGBUS) impossible.
        assert!(nix::unistd::ftruncate(r.fd(), 0).is_err());
    }

    #[test]
    fn populate_and_lock() {
        let name = unique_name("locked");
        let fd = memfd(&name, 0x8000);
        let desc = RegionDesc {
            memory_size: 0x6000,
            mmap_offset: 0x1800,
            ..RegionDesc::default()
        };
        let opts = MapOptions {
            populate: true,
            lock: true,
            ..MapOptions::new()
        };
        match GuestRegion::map(fd, desc, opts) {
            Ok(r) => {
                assert!(r.is_locked());
                r.as_slice().fill(0x5a);
                assert_eq!(
                    r.as_slice().read_obj::<u64>(0x5ff8).unwrap(),
                    0x5a5a5a5a5a5a5a5a
                );
            }
            // Without CAP_IPC_LOCK and with a tiny RLIMIT_MEMLOCK this can fail; it must fail
            // cleanly.
            Err(MemoryError::Mlock { .. }) => {
                eprintln!("mlock not permitted here; checked cleanup only")
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert_eq!(mapped_bytes_named(&name), 0);
        assert_eq!(fds_named(&name), 0);
    }

    /// The permissions `/proc/self/maps` gives the mapping holding `addr` (`None`: unmapped).
    fn perms_at(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a <= addr && addr < b).then(|| rest.split(' ').next().unwrap_or("").to_string())
        })
    }

    #[test]
    fn guard_pages_around_the_mapping() {
        let name = unique_name("guarded");
        let fd = memfd(&name, 0x6000);
        // An unaligned offset: the mapping starts a page before the region.
        let desc = RegionDesc {
            memory_size: 0x3000,
            mmap_offset: 0x1800,
            ..RegionDesc::default()
        };
        let opts = MapOptions {
            guard_pages: true,
            ..MapOptions::new()
        };
        let r = GuestRegion::map(fd, desc, opts).unwrap();
        r.as_slice().fill(0x5a);
        assert_eq!(
            r.as_slice().read_obj::<u64>(0x2ff8).unwrap(),
            0x5a5a5a5a5a5a5a5a
        );
        let start = r.host_ptr() as usize;
        let map_start = start - 0x800;
        let map_end = start + 0x3800; // 0x800 + 0x3000 rounded up to the page
        assert_eq!(perms_at(map_start).as_deref(), Some("rw-s"));
        assert_eq!(perms_at(map_end - 1).as_deref(), Some("rw-s"));
        assert_eq!(
            perms_at(map_start - 1).as_deref(),
            Some("---p"),
            "guard before"
        );
        assert_eq!(perms_at(map_end).as_deref(), Some("---p"), "guard after");
        assert_eq!(mapped_bytes_named(&name), 0x4000);
        drop(r);
        assert_eq!(mapped_bytes_named(&name), 0);
        assert_eq!(fds_named(&name), 0);
    }

    #[test]
    fn fd_kept_while_mapped_and_closed_on_drop() {
        let name = unique_name("fdleak");
        let fd = memfd(&name, 0x4000);
        assert_eq!(fds_named(&name), 1);
        let desc = RegionDesc {
            memory_size: 0x4000,
            ..RegionDesc::default()
        };
        let r = GuestRegion::map(fd, desc, MapOptions::new()).unwrap();
        assert_eq!(fds_named(&name), 1, "the region keeps its fd");
        assert_eq!(mapped_bytes_named(&name), 0x4000);
        drop(r);
        assert_eq!(fds_named(&name), 0);
        assert_eq!(mapped_bytes_named(&name), 0);
    }

    /// A hugetlb memfd with a region whose mmap_offset is not huge-page aligned (QEMU splits low
    /// RAM around the VGA hole, e.g. a region at offset 0xc0000).
    #[test]
    fn hugetlb_region_with_unaligned_offset() {
        const HUGE: u64 = 2 << 20;
        let free: u64 =
            std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
        if free < 2 {
            return skip(format!("{free} free 2 MiB hugepages, need 2"));
        }
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let name = unique_name("huge");
        let fd = match memfd_create(
            name.as_str(),
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB | MFdFlags::MFD_HUGE_2MB,
        ) {
            Ok(fd) => fd,
            Err(e) => return skip(format!("memfd_create(MFD_HUGETLB) failed: {e}")),
        };
        if let Err(e) = nix::unistd::ftruncate(&fd, (2 * HUGE) as i64) {
            return skip(format!("ftruncate of a hugetlb memfd failed: {e}"));
        }
        // Frontend view: the whole file. This reserves both huge pages for the file.
        let front = match FrontendMap::try_new(&fd, (2 * HUGE) as usize) {
            Ok(m) => m,
            Err(e) => return skip(format!("huge pages taken meanwhile (mmap: {e})")),
        };
        for (off, size) in [
            (0u64, 0xa0000u64),
            (0xc0000, HUGE),
            (HUGE + 0x1000, 0x10000),
        ] {
            let desc = RegionDesc {
                guest_phys_addr: off,
                memory_size: size,
                userspace_addr: front.addr() + off,
                mmap_offset: off,
            };
            let r = GuestRegion::map(fd.try_clone().unwrap(), desc, MapOptions::new()).unwrap();
            assert_eq!(r.page_size(), HUGE, "st_blksize of hugetlb memfd");
            let s = r.as_slice();
            let last = size as usize - 8;
            s.write_obj(0, off ^ 0x1111).unwrap();
            s.write_obj(last, off ^ 0x2222).unwrap();
            assert_eq!(
                u64::from_ne_bytes(front.read(off as usize, 8).try_into().unwrap()),
                off ^ 0x1111
            );
            let tail = front.read(off as usize + last, 8);
            assert_eq!(u64::from_ne_bytes(tail.try_into().unwrap()), off ^ 0x2222);
            // Unmapped whole: munmap of a hugetlb mapping needs whole huge pages (memmap2
            // would not report the failure).
            drop(r);
            assert_eq!(
                mapped_bytes_named(&name),
                2 * HUGE,
                "only the frontend's map"
            );
        }
        // Beyond the end of a hugetlb file is refused as well.
        let desc = RegionDesc {
            memory_size: HUGE,
            mmap_offset: HUGE + 0x1000,
            ..RegionDesc::default()
        };
        assert!(matches!(
            GuestRegion::map(fd.try_clone().unwrap(), desc, MapOptions::new()),
            Err(MemoryError::BeyondFdSize { .. })
        ));
    }
}
