//! [`GuestMemory`]: the immutable table of a frontend's mapped regions, and address translation.
//!
//! A table is built once (SET_MEM_TABLE) and then only replaced: ADD_MEM_REG / REM_MEM_REG
//! produce a new table that shares the unchanged regions (`Arc<GuestRegion>`). The control plane
//! publishes the new table to the data plane and drops the old one once no data-plane thread uses
//! it; a region is unmapped when the last table holding it is dropped.
//!
//! Translation is the data-plane hot path: no allocation, no formatting, no locking. Regions are
//! kept sorted by guest-physical address in a compact array; up to [`LINEAR_SCAN_MAX`] regions
//! are scanned linearly, more are binary searched. A [`TranslationCache`] (owned by the caller: a
//! burst or a chain walk makes one) remembers the last region hit.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::access::GuestSlice;
use super::error::MemoryError;
use super::region::{GuestRegion, RegionDesc};
use super::{FrontendVa, Gpa, MemoryLimits};

/// Tables with at most this many regions are searched linearly, larger ones by binary search.
pub const LINEAR_SCAN_MAX: usize = 8;

/// One region in the lookup array: everything translation needs, 40 bytes.
#[derive(Clone, Copy, Debug)]
struct Entry {
    gpa: u64,
    /// Exclusive; `gpa < gpa_end` because regions have nonzero size and no overflow.
    gpa_end: u64,
    uva: u64,
    uva_end: u64,
    host: NonNull<u8>,
}

// SAFETY: `host` is an address inside a GuestRegion mapping that the same Table keeps alive
// through an Arc; GuestRegion is Send + Sync and Entry only hands out GuestSlices over it.
unsafe impl Send for Entry {}
// SAFETY: as for Send.
unsafe impl Sync for Entry {}

impl Entry {
    fn new(r: &GuestRegion) -> Self {
        let d = r.desc();
        Entry {
            gpa: d.guest_phys_addr,
            gpa_end: d.gpa_end(),
            uva: d.userspace_addr,
            uva_end: d.uva_end(),
            // SAFETY: host_ptr() is derived from a non-null mapping address.
            host: unsafe { NonNull::new_unchecked(r.host_ptr()) },
        }
    }

    #[inline]
    fn contains_gpa(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa < self.gpa_end
    }

    #[inline]
    fn contains_uva(&self, va: u64) -> bool {
        va >= self.uva && va < self.uva_end
    }

    /// The slice at byte `off` of the region, `len` bytes long.
    ///
    /// # Safety
    ///
    /// `off + len` must not exceed the region size (`gpa_end - gpa`), and the returned lifetime
    /// must not outlive the table holding this entry's region.
    #[inline]
    unsafe fn slice<'a>(&self, off: u64, len: u64) -> GuestSlice<'a> {
        // SAFETY: the caller guarantees off + len <= region size, and the region size fits usize
        // (checked at map time), so the casts are lossless and host + off stays inside the
        // mapping; the caller bounds the lifetime by the table that keeps the mapping alive.
        unsafe {
            GuestSlice::from_raw(
                NonNull::new_unchecked(self.host.as_ptr().add(off as usize)),
                len as usize,
            )
        }
    }
}

#[inline]
fn find_gpa(entries: &[Entry], gpa: u64) -> Option<usize> {
    if entries.len() <= LINEAR_SCAN_MAX {
        entries.iter().position(|e| e.contains_gpa(gpa))
    } else {
        let i = entries.partition_point(|e| e.gpa <= gpa).checked_sub(1)?;
        entries[i].contains_gpa(gpa).then_some(i)
    }
}

/// `[addr, addr + len)` if it lies entirely in entry `e`, which spans `[start, end)` in the
/// address space of `addr` and contains it. The slice borrows the table that holds `e`.
#[inline(always)]
fn whole(e: &Entry, start: u64, end: u64, addr: u64, len: u64) -> Option<GuestSlice<'_>> {
    // addr in [start, end), so no underflow; `len <= end - addr` also rules out u64
    // overflow of addr + len.
    if len > end - addr {
        return None;
    }
    // SAFETY: (addr - start) + len <= end - start = region size; the slice borrows the entry,
    // and so the table that keeps the region mapped.
    Some(unsafe { e.slice(addr - start, len) })
}

/// The part of `[addr, addr + len)` inside entry `e` (see [`whole`]).
#[inline(always)]
fn prefix(e: &Entry, start: u64, end: u64, addr: u64, len: u64) -> GuestSlice<'_> {
    let n = len.min(end - addr);
    // SAFETY: (addr - start) + n <= end - start = region size; the slice borrows the entry.
    unsafe { e.slice(addr - start, n) }
}

/// The rules of every table, over valid descriptions sorted by guest-physical address: at most
/// `max_regions`, no two overlapping in guest-physical space, the total within
/// `max_total_bytes`, no two overlapping in frontend-VA space (checked in this order). Returns
/// the total size and the indexes of `descs` sorted by frontend VA.
fn check_layout(
    descs: &[RegionDesc],
    limits: MemoryLimits,
) -> Result<(u64, Vec<u32>), MemoryError> {
    if descs.len() > limits.max_regions {
        return Err(MemoryError::TooManyRegions {
            count: descs.len(),
            max: limits.max_regions,
        });
    }
    for w in descs.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.gpa_end() > b.guest_phys_addr {
            return Err(MemoryError::GpaOverlap { a: *a, b: *b });
        }
    }
    let total = descs
        .iter()
        .fold(0u64, |t, d| t.saturating_add(d.memory_size));
    if total > limits.max_total_bytes {
        return Err(MemoryError::TotalTooLarge {
            total,
            limit: limits.max_total_bytes,
        });
    }
    let mut by_uva: Vec<u32> = (0..descs.len() as u32).collect();
    by_uva.sort_by_key(|&i| descs[i as usize].userspace_addr);
    for w in by_uva.windows(2) {
        let (a, b) = (&descs[w[0] as usize], &descs[w[1] as usize]);
        if a.uva_end() > b.userspace_addr {
            return Err(MemoryError::FvaOverlap { a: *a, b: *b });
        }
    }
    Ok((total, by_uva))
}

/// What [`GuestMemory::check_add`] found for a region to add.
#[derive(Debug)]
pub enum AddCheck {
    /// The region can be added: no overlap, within the limits.
    New,
    /// The table already holds exactly this region (every field of the description equal).
    Duplicate(Arc<GuestRegion>),
}

/// What [`GuestMemory::with_released`] did.
#[derive(Debug)]
pub enum Released {
    /// The region had more than one frontend reference; it stays, with `refs` left.
    StillHeld {
        /// References left.
        refs: u32,
    },
    /// The last reference went: `table` is the table without `region`.
    Removed {
        /// The new table.
        table: GuestMemory,
        /// The region removed (mapped until every holder is dropped).
        region: Arc<GuestRegion>,
    },
}

/// Per-queue memo of the last region a translation hit: its guest-physical range and host
/// address, and the table they came from. Plain data owned by the caller; it is only a hint
/// (used only when its table is the one translating: tables are told apart by an id no other
/// table of the process gets), so using one cache with different tables is harmless. Kept by
/// value, a hit is a compare of the table and two of the address: through an index into the
/// table's entries it was some 15 instructions and 5 loads, four times per 64-byte round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslationCache {
    /// The id of the table the memo is from (0: none; no table has it).
    table: u64,
    gpa: u64,
    /// Bytes of the region from `gpa` on.
    size: u64,
    /// The host address of `gpa`.
    host: *mut u8,
}

impl TranslationCache {
    /// An empty cache.
    pub const fn new() -> Self {
        TranslationCache {
            table: 0,
            gpa: 0,
            size: 0,
            host: std::ptr::null_mut(),
        }
    }
}

// SAFETY: `host` is only dereferenced by the table whose id the cache holds, through that
// table (Send + Sync), which keeps the region mapped; the cache itself is plain data.
unsafe impl Send for TranslationCache {}
// SAFETY: as for Send; a shared cache is only read.
unsafe impl Sync for TranslationCache {}

impl Default for TranslationCache {
    fn default() -> Self {
        TranslationCache::new()
    }
}

/// A fresh table's id (see [`TranslationCache`]): ids count up from 1 and are never reused.
fn next_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Table {
    /// Unique in the process ([`next_table_id`]).
    id: u64,
    /// Sorted by gpa; same order as `regions`.
    entries: Box<[Entry]>,
    regions: Box<[Arc<GuestRegion>]>,
    /// Indexes into `entries`, sorted by frontend VA.
    by_uva: Box<[u32]>,
    total_bytes: u64,
    limits: MemoryLimits,
}

/// An immutable table of mapped guest memory regions. Cloning is an `Arc` clone; the type is
/// `Send + Sync`.
#[derive(Clone)]
pub struct GuestMemory {
    table: Arc<Table>,
}

impl fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemory")
            .field("regions", &self.table.regions)
            .field("total_bytes", &self.table.total_bytes)
            .field("limits", &self.table.limits)
            .finish()
    }
}

impl Default for GuestMemory {
    /// An empty table with [`MemoryLimits::default`].
    fn default() -> Self {
        GuestMemory::empty(MemoryLimits::default())
    }
}

impl GuestMemory {
    /// A table without regions (every translation fails).
    pub fn empty(limits: MemoryLimits) -> Self {
        GuestMemory {
            table: Arc::new(Table {
                id: next_table_id(),
                entries: Box::new([]),
                regions: Box::new([]),
                by_uva: Box::new([]),
                total_bytes: 0,
                limits,
            }),
        }
    }

    /// Builds a table (SET_MEM_TABLE). Refuses more than `limits.max_regions` regions,
    /// overlapping guest-physical or frontend-VA ranges, and a total size above
    /// `limits.max_total_bytes`. On error all `regions` are dropped (unmapped, fds closed).
    pub fn new(regions: Vec<GuestRegion>, limits: MemoryLimits) -> Result<Self, MemoryError> {
        Self::from_shared(regions.into_iter().map(Arc::new).collect(), limits)
    }

    /// Like [`new`](Self::new) with regions that may also be held by other tables.
    pub fn from_shared(
        mut regions: Vec<Arc<GuestRegion>>,
        limits: MemoryLimits,
    ) -> Result<Self, MemoryError> {
        regions.sort_by_key(|r| r.desc().guest_phys_addr);
        let descs: Vec<RegionDesc> = regions.iter().map(|r| *r.desc()).collect();
        let (total, by_uva) = check_layout(&descs, limits)?;
        let entries = regions.iter().map(|r| Entry::new(r)).collect();
        Ok(GuestMemory {
            table: Arc::new(Table {
                id: next_table_id(),
                entries,
                regions: regions.into_boxed_slice(),
                by_uva: by_uva.into_boxed_slice(),
                total_bytes: total,
                limits,
            }),
        })
    }

    /// Checks a whole table (SET_MEM_TABLE) without mapping anything: each description valid
    /// ([`RegionDesc::validate`]) and the rules of [`new`](Self::new) (count, no two regions
    /// overlapping in guest-physical or frontend-VA space, total size). A table naming one
    /// region twice overlaps itself. Lets the control plane refuse a table before paying for
    /// its mmaps, and before comparing it with the table it holds
    /// ([`holds_exactly`](Self::holds_exactly)).
    pub fn check_table(descs: &[RegionDesc], limits: MemoryLimits) -> Result<(), MemoryError> {
        for d in descs {
            d.validate()?;
        }
        let mut sorted = descs.to_vec();
        sorted.sort_by_key(|d| d.guest_phys_addr);
        check_layout(&sorted, limits).map(drop)
    }

    /// Whether `descs` name exactly this table's regions, one to one, matched by guest
    /// address, frontend address and size (as REM_MEM_REG matches them; QEMU re-sends its
    /// table with new fds). A region named twice, or one held region named and another not,
    /// is not the same table.
    pub fn holds_exactly(&self, descs: &[RegionDesc]) -> bool {
        if descs.len() != self.len() {
            return false;
        }
        let mut sorted = descs.to_vec();
        sorted.sort_by_key(|d| d.guest_phys_addr);
        // Both sorted by guest address: the i-th of each must be the same region.
        sorted
            .iter()
            .zip(self.table.regions.iter())
            .all(|(d, r)| r.desc().same_region(d))
    }

    /// Checks whether a region described by `desc` could be added, without mapping anything
    /// (the same checks [`with_added`](Self::with_added) makes, plus [`RegionDesc::validate`]).
    /// Lets the control plane refuse ADD_MEM_REG before paying for an mmap.
    ///
    /// A `desc` equal to a region already in the table (guest address, size, frontend address
    /// and mmap offset) is [`AddCheck::Duplicate`]: QEMU sends one ADD_MEM_REG per queue pair
    /// for the same memory. Whether it is the same file is the caller's check
    /// ([`GuestRegion::same_file`]) before it counts a reference. Any other overlap is refused.
    pub fn check_add(&self, desc: &RegionDesc) -> Result<AddCheck, MemoryError> {
        desc.validate()?;
        let t = &*self.table;
        if let Some(r) = t.regions.iter().find(|r| r.desc() == desc) {
            return Ok(AddCheck::Duplicate(Arc::clone(r)));
        }
        let count = t.regions.len() + 1;
        if count > t.limits.max_regions {
            return Err(MemoryError::TooManyRegions {
                count,
                max: t.limits.max_regions,
            });
        }
        for r in t.regions.iter() {
            let a = r.desc();
            if a.guest_phys_addr < desc.gpa_end() && desc.guest_phys_addr < a.gpa_end() {
                return Err(MemoryError::GpaOverlap { a: *a, b: *desc });
            }
        }
        let total = t.total_bytes.saturating_add(desc.memory_size);
        if total > t.limits.max_total_bytes {
            return Err(MemoryError::TotalTooLarge {
                total,
                limit: t.limits.max_total_bytes,
            });
        }
        for r in t.regions.iter() {
            let a = r.desc();
            if a.userspace_addr < desc.uva_end() && desc.userspace_addr < a.uva_end() {
                return Err(MemoryError::FvaOverlap { a: *a, b: *desc });
            }
        }
        Ok(AddCheck::New)
    }

    /// A new table with `region` added (ADD_MEM_REG); `self` is unchanged and the new table shares
    /// its regions. On error `region` is dropped (unmapped, fd closed).
    pub fn with_added(&self, region: GuestRegion) -> Result<Self, MemoryError> {
        let mut v = Vec::with_capacity(self.table.regions.len() + 1);
        v.extend(self.table.regions.iter().cloned());
        v.push(Arc::new(region));
        Self::from_shared(v, self.table.limits)
    }

    /// A new table without the region matching `desc` by guest address, user address and size
    /// (REM_MEM_REG; the mmap offset is ignored). Returns the removed region too; it stays mapped
    /// until the last table holding it (e.g. `self`) and the returned `Arc` are dropped.
    pub fn with_removed(&self, desc: &RegionDesc) -> Result<(Self, Arc<GuestRegion>), MemoryError> {
        let pos = self.position(desc)?;
        self.without(pos)
    }

    /// REM_MEM_REG: drops one frontend reference of the region matching `desc` (as
    /// [`with_removed`](Self::with_removed) matches it). While references remain the table is
    /// unchanged ([`Released::StillHeld`]); the last one removes the region from a new table
    /// ([`Released::Removed`], whose region stays mapped while any table or the returned `Arc`
    /// holds it).
    pub fn with_released(&self, desc: &RegionDesc) -> Result<Released, MemoryError> {
        let pos = self.position(desc)?;
        let held = &self.table.regions[pos];
        if held.frontend_refs() > 1 {
            return Ok(Released::StillHeld {
                refs: held.drop_frontend_ref(),
            });
        }
        let (table, region) = self.without(pos)?;
        region.drop_frontend_ref();
        Ok(Released::Removed { table, region })
    }

    /// Where the region matching `desc` by guest address, user address and size is.
    fn position(&self, desc: &RegionDesc) -> Result<usize, MemoryError> {
        self.table
            .regions
            .iter()
            .position(|r| r.desc().same_region(desc))
            .ok_or(MemoryError::NotFound(*desc))
    }

    /// A new table without the region at `pos`, and that region.
    fn without(&self, pos: usize) -> Result<(Self, Arc<GuestRegion>), MemoryError> {
        let mut v: Vec<Arc<GuestRegion>> = self.table.regions.to_vec();
        let removed = v.remove(pos);
        Ok((Self::from_shared(v, self.table.limits)?, removed))
    }

    /// Sets every region back to one frontend reference (a SET_MEM_TABLE naming the regions
    /// this table already holds).
    pub(crate) fn reset_frontend_refs(&self) {
        self.table
            .regions
            .iter()
            .for_each(|r| r.reset_frontend_refs());
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.table.regions.len()
    }

    /// Whether the table has no regions.
    pub fn is_empty(&self) -> bool {
        self.table.regions.is_empty()
    }

    /// Sum of the regions' sizes.
    pub fn total_bytes(&self) -> u64 {
        self.table.total_bytes
    }

    /// The limits this table was built with (inherited by `with_added`/`with_removed`).
    pub fn limits(&self) -> MemoryLimits {
        self.table.limits
    }

    /// The regions, sorted by guest-physical address.
    pub fn regions(&self) -> impl ExactSizeIterator<Item = &Arc<GuestRegion>> + '_ {
        self.table.regions.iter()
    }

    /// The region matching `desc` by guest address, user address and size.
    pub fn find_region(&self, desc: &RegionDesc) -> Option<&Arc<GuestRegion>> {
        let pos = self.position(desc).ok()?;
        Some(&self.table.regions[pos])
    }

    /// The guest-physical address of the host bytes `s` points at, if they lie in one region
    /// of this table: the reverse of [`gpa_to_host`](Self::gpa_to_host), for the dirty log of
    /// bytes the data path wrote through a slice (a linear scan of the regions; only while
    /// logging).
    pub fn gpa_of_host(&self, s: &GuestSlice<'_>) -> Option<Gpa> {
        let p = s.as_ptr() as usize;
        self.table.entries.iter().find_map(|e| {
            let off = p.checked_sub(e.host.as_ptr() as usize)? as u64;
            let size = e.gpa_end - e.gpa;
            (off < size && s.len() as u64 <= size - off).then_some(Gpa(e.gpa + off))
        })
    }

    /// The region containing `gpa`.
    pub fn region_of_gpa(&self, gpa: Gpa) -> Option<&Arc<GuestRegion>> {
        find_gpa(&self.table.entries, gpa.0).map(|i| &self.table.regions[i])
    }

    /// The entry containing `gpa`, remembered in `cache` for the next translations.
    #[inline]
    fn find_gpa_memo(&self, cache: &mut TranslationCache, gpa: u64) -> Option<&Entry> {
        let entries = &self.table.entries;
        let i = find_gpa(entries, gpa)?;
        let e = &entries[i];
        *cache = TranslationCache {
            table: self.table.id,
            gpa: e.gpa,
            size: e.gpa_end - e.gpa,
            host: e.host.as_ptr(),
        };
        Some(e)
    }

    #[inline]
    fn find_uva(&self, va: u64) -> Option<usize> {
        let t = &*self.table;
        if t.entries.len() <= LINEAR_SCAN_MAX {
            t.entries.iter().position(|e| e.contains_uva(va))
        } else {
            let k = t
                .by_uva
                .partition_point(|&i| t.entries[i as usize].uva <= va)
                .checked_sub(1)?;
            let i = t.by_uva[k] as usize;
            t.entries[i].contains_uva(va).then_some(i)
        }
    }

    /// Host view of `[gpa, gpa + len)` if the whole range lies in one region; `None` if `gpa` is
    /// unmapped, the range crosses a region end, or `gpa + len` overflows. `len == 0` gives an
    /// empty slice when `gpa` itself is mapped.
    #[inline]
    pub fn gpa_to_host(&self, gpa: Gpa, len: u64) -> Option<GuestSlice<'_>> {
        let e = &self.table.entries[find_gpa(&self.table.entries, gpa.0)?];
        whole(e, e.gpa, e.gpa_end, gpa.0, len)
    }

    /// Host view of the longest prefix of `[gpa, gpa + len)` that lies in one region (at most
    /// `len` bytes, fewer if the region ends first); `None` if `gpa` is unmapped. Call again at
    /// `gpa + returned.len()` to continue a buffer that straddles regions (or use
    /// [`gpa_chunks`](Self::gpa_chunks)).
    #[inline]
    pub fn gpa_to_host_prefix(&self, gpa: Gpa, len: u64) -> Option<GuestSlice<'_>> {
        let e = &self.table.entries[find_gpa(&self.table.entries, gpa.0)?];
        Some(prefix(e, e.gpa, e.gpa_end, gpa.0, len))
    }

    /// [`gpa_to_host`](Self::gpa_to_host) trying the region of the previous hit first.
    #[inline(always)]
    pub fn gpa_to_host_cached(
        &self,
        cache: &mut TranslationCache,
        gpa: Gpa,
        len: u64,
    ) -> Option<GuestSlice<'_>> {
        let off = gpa.0.wrapping_sub(cache.gpa);
        if cache.table == self.table.id && off < cache.size {
            if len > cache.size - off {
                return None;
            }
            // SAFETY: the memo is of this table (the ids are unique), which keeps the region
            // mapped while `self` is borrowed: `host` is the region's host address of `gpa`,
            // and `off + len <= size`, the region's bytes from there.
            return Some(unsafe {
                GuestSlice::from_raw(
                    NonNull::new_unchecked(cache.host.add(off as usize)),
                    len as usize,
                )
            });
        }
        self.gpa_to_host_uncached(cache, gpa, len)
    }

    /// [`gpa_to_host_cached`](Self::gpa_to_host_cached) for each of `reqs` (guest address,
    /// length), in order, with the same results, through a local copy of the memo written back
    /// at the end: one by one through `cache`, each translation loaded the memo again (some 8
    /// instructions each, four times a batch of 4 buffers).
    #[inline(always)]
    pub fn gpa_to_host_cached_each<const N: usize>(
        &self,
        cache: &mut TranslationCache,
        reqs: [(Gpa, u64); N],
    ) -> [Option<GuestSlice<'_>>; N] {
        let mut memo = *cache;
        let mut out = [None; N];
        for (o, (gpa, len)) in out.iter_mut().zip(reqs) {
            *o = self.gpa_to_host_cached(&mut memo, gpa, len);
        }
        *cache = memo;
        out
    }

    /// The miss of [`gpa_to_host_cached`](Self::gpa_to_host_cached): out of line.
    #[inline(never)]
    fn gpa_to_host_uncached(
        &self,
        cache: &mut TranslationCache,
        gpa: Gpa,
        len: u64,
    ) -> Option<GuestSlice<'_>> {
        let e = self.find_gpa_memo(cache, gpa.0)?;
        whole(e, e.gpa, e.gpa_end, gpa.0, len)
    }

    /// [`gpa_to_host_prefix`](Self::gpa_to_host_prefix) trying the region of the previous hit
    /// first.
    #[inline]
    pub fn gpa_to_host_prefix_cached(
        &self,
        cache: &mut TranslationCache,
        gpa: Gpa,
        len: u64,
    ) -> Option<GuestSlice<'_>> {
        let off = gpa.0.wrapping_sub(cache.gpa);
        if cache.table == self.table.id && off < cache.size {
            let n = len.min(cache.size - off);
            // SAFETY: as in `gpa_to_host_cached`, with `off + n <= size`.
            return Some(unsafe {
                GuestSlice::from_raw(
                    NonNull::new_unchecked(cache.host.add(off as usize)),
                    n as usize,
                )
            });
        }
        let e = self.find_gpa_memo(cache, gpa.0)?;
        Some(prefix(e, e.gpa, e.gpa_end, gpa.0, len))
    }

    /// Host view of `[va, va + len)` in frontend-VA space (vring addresses of SET_VRING_ADDR
    /// without IOMMU) if it lies in one region; same rules as [`gpa_to_host`](Self::gpa_to_host).
    pub fn fva_to_host(&self, va: FrontendVa, len: u64) -> Option<GuestSlice<'_>> {
        let e = &self.table.entries[self.find_uva(va.0)?];
        whole(e, e.uva, e.uva_end, va.0, len)
    }

    /// The longest prefix of `[va, va + len)` inside one region; same rules as
    /// [`gpa_to_host_prefix`](Self::gpa_to_host_prefix).
    pub fn fva_to_host_prefix(&self, va: FrontendVa, len: u64) -> Option<GuestSlice<'_>> {
        let e = &self.table.entries[self.find_uva(va.0)?];
        Some(prefix(e, e.uva, e.uva_end, va.0, len))
    }

    /// The guest-physical address of a frontend VA (e.g. to log writes to a ring given by VA).
    pub fn fva_to_gpa(&self, va: FrontendVa) -> Option<Gpa> {
        let i = self.find_uva(va.0)?;
        let e = &self.table.entries[i];
        Some(Gpa(e.gpa + (va.0 - e.uva)))
    }

    /// Iterates over the host pieces of `[gpa, gpa + len)`, one per region crossed. Yields
    /// `Err(first unmapped gpa)` once and stops if the range runs into unmapped space.
    pub fn gpa_chunks(&self, gpa: Gpa, len: u64) -> GpaChunks<'_> {
        GpaChunks {
            mem: self,
            cache: TranslationCache::new(),
            gpa: gpa.0,
            remaining: len,
            failed: false,
        }
    }
}

/// Iterator of [`GuestMemory::gpa_chunks`].
#[derive(Debug)]
pub struct GpaChunks<'a> {
    mem: &'a GuestMemory,
    cache: TranslationCache,
    gpa: u64,
    remaining: u64,
    failed: bool,
}

impl GpaChunks<'_> {
    /// Bytes not yet yielded.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl<'a> Iterator for GpaChunks<'a> {
    type Item = Result<GuestSlice<'a>, Gpa>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.remaining == 0 {
            return None;
        }
        let mem: &'a GuestMemory = self.mem;
        match mem.gpa_to_host_prefix_cached(&mut self.cache, Gpa(self.gpa), self.remaining) {
            Some(s) => {
                let n = s.len() as u64;
                self.remaining -= n;
                // n <= region end - gpa, and region ends fit in u64.
                self.gpa += n;
                Some(Ok(s))
            }
            None => {
                self.failed = true;
                Some(Err(Gpa(self.gpa)))
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// A validated range of guest memory that keeps its table mapped: what a virtqueue stores for
/// its rings, so the data plane need not translate them again each burst.
#[derive(Clone, Debug)]
pub struct GuestArea {
    mem: GuestMemory,
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a GuestArea is an address range inside a mapping owned by `mem` (Send + Sync); all
// access goes through GuestSlice, whose operations are raw/volatile/atomic.
unsafe impl Send for GuestArea {}
// SAFETY: as for Send; it hands out only GuestSlices.
unsafe impl Sync for GuestArea {}

impl GuestArea {
    /// The range as a slice, valid while `self` lives.
    #[inline]
    pub fn slice(&self) -> GuestSlice<'_> {
        // SAFETY: ptr/len came from a GuestSlice of `self.mem`'s table, whose regions stay
        // mapped while `self.mem` (an Arc clone of the table) lives, i.e. for the borrow.
        unsafe { GuestSlice::from_raw(self.ptr, self.len) }
    }

    /// The table the range belongs to.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }
}

impl GuestMemory {
    fn area(&self, s: Option<GuestSlice<'_>>) -> Option<GuestArea> {
        let s = s?;
        Some(GuestArea {
            mem: self.clone(),
            ptr: std::ptr::NonNull::new(s.as_ptr())?,
            len: s.len(),
        })
    }

    /// Like [`fva_to_host`](Self::fva_to_host), as an owned [`GuestArea`].
    pub fn fva_area(&self, va: FrontendVa, len: u64) -> Option<GuestArea> {
        self.area(self.fva_to_host(va, len))
    }

    /// Like [`gpa_to_host`](Self::gpa_to_host), as an owned [`GuestArea`].
    pub fn gpa_area(&self, gpa: Gpa, len: u64) -> Option<GuestArea> {
        self.area(self.gpa_to_host(gpa, len))
    }
}
