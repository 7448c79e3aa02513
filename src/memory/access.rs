//! Safe access to guest memory without references into it.
//!
//! The guest (and the frontend) write guest memory concurrently with us, so a `&[u8]` or
//! `&mut [u8]` over it would be unsound: Rust assumes the bytes behind a shared reference do not
//! change, and that nothing else aliases a mutable one. A [`GuestSlice`] is instead a bounds-checked
//! `(pointer, length)` pair whose every operation is a raw-pointer copy, a volatile access or an
//! atomic access:
//!
//! - bulk data ([`copy_from`](GuestSlice::copy_from), [`copy_to`](GuestSlice::copy_to),
//!   [`read_at`](GuestSlice::read_at), [`write_at`](GuestSlice::write_at),
//!   [`copy_from_guest`](GuestSlice::copy_from_guest), [`fill`](GuestSlice::fill)): `ptr::copy*`
//!   / `ptr::write_bytes`; the bytes are data, the guest changing them mid-copy only garbles what
//!   the guest itself supplied;
//! - structures ([`read_obj`](GuestSlice::read_obj) / [`write_obj`](GuestSlice::write_obj)):
//!   exactly one volatile access (per byte when misaligned), so a value is fetched once and a
//!   validated copy cannot be re-read by the compiler behind the caller's back (no double fetch);
//!   copy descriptors/headers out with `read_obj` and validate the copy;
//! - ring indexes ([`load_u16`](GuestSlice::load_u16), [`store_u16`](GuestSlice::store_u16) and
//!   the acquire/release shorthands): atomics on naturally aligned addresses.
//!
//! Nothing here panics on bad offsets: every access returns an [`AccessError`] or a count.

use std::marker::PhantomData;
use std::mem::{MaybeUninit, align_of, size_of};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};

use super::error::AccessError;

/// Plain-old-data: types that may be copied to and from guest memory byte for byte.
///
/// # Safety
///
/// Implementors guarantee that:
/// - every bit pattern of `size_of::<Self>()` bytes is a valid value (guest memory is arbitrary);
/// - the type has no padding bytes (writing it must not copy uninitialized bytes to the guest);
/// - it holds no references, pointers with invariants, or interior mutability.
///
/// Typical implementors: the integer types (implemented here), arrays of them, and `#[repr(C)]`
/// virtio ring structures made only of such fields with no padding (for example a split-ring
/// descriptor `{ addr: u64, len: u32, flags: u16, next: u16 }`).
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! impl_pod {
    ($($t:ty),*) => {$(
        // SAFETY: integers have no padding, no invalid bit patterns and no pointers.
        unsafe impl Pod for $t {}
    )*};
}
impl_pod!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

// SAFETY: an array of Pod has no padding between elements (size is a multiple of alignment),
// every element accepts every bit pattern, and no pointers are added.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// 16 bytes in a vector register (SSE2, which every x86_64 CPU has): as `[u8; 16]` values
/// the compiler moved them through the stack, a store and a reload per chunk.
#[cfg(target_arch = "x86_64")]
type Chunk16 = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Chunk16 = [u8; 16];

/// # Safety
///
/// `p` must be readable for 16 bytes.
#[inline(always)]
unsafe fn load16(p: *const u8) -> Chunk16 {
    // SAFETY: the caller vouches for 16 readable bytes; an unaligned load needs no alignment.
    unsafe { ptr::read_unaligned(p.cast::<Chunk16>()) }
}

/// # Safety
///
/// `p` must be writable for 16 bytes.
#[inline(always)]
unsafe fn store16(p: *mut u8, v: Chunk16) {
    // SAFETY: the caller vouches for 16 writable bytes; an unaligned store needs no alignment.
    unsafe { ptr::write_unaligned(p.cast::<Chunk16>(), v) }
}

/// Copies `len` bytes between non-overlapping ranges. Packet copies are mostly small (a
/// 12-byte header, a 64-byte frame): up to 64 bytes are moved inline with two unaligned
/// loads and two stores of 32, 16, 8 or 4 bytes (the first and the last chunk, overlapping),
/// which avoids a `memcpy` call per copy and a loop; longer copies use `memcpy`.
///
/// # Safety
///
/// `src` must be readable and `dst` writable for `len` bytes, and the ranges must not overlap.
#[inline(always)]
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: every access below is at an offset + width <= len, inside the ranges the
    // caller vouches for; unaligned reads/writes need no alignment.
    unsafe {
        if len > 64 {
            ptr::copy_nonoverlapping(src, dst, len);
        } else if len > 32 {
            // The first 32 bytes and the last 32 (overlapping), without a loop.
            let a0 = load16(src);
            let a1 = load16(src.add(16));
            let b0 = load16(src.add(len - 32));
            let b1 = load16(src.add(len - 16));
            store16(dst, a0);
            store16(dst.add(16), a1);
            store16(dst.add(len - 32), b0);
            store16(dst.add(len - 16), b1);
        } else if len >= 16 {
            let a = load16(src);
            let b = load16(src.add(len - 16));
            store16(dst, a);
            store16(dst.add(len - 16), b);
        } else if len >= 8 {
            let a = ptr::read_unaligned(src.cast::<u64>());
            let b = ptr::read_unaligned(src.add(len - 8).cast::<u64>());
            ptr::write_unaligned(dst.cast::<u64>(), a);
            ptr::write_unaligned(dst.add(len - 8).cast::<u64>(), b);
        } else if len >= 4 {
            let a = ptr::read_unaligned(src.cast::<u32>());
            let b = ptr::read_unaligned(src.add(len - 4).cast::<u32>());
            ptr::write_unaligned(dst.cast::<u32>(), a);
            ptr::write_unaligned(dst.add(len - 4).cast::<u32>(), b);
        } else {
            for i in 0..len {
                dst.add(i).write(src.add(i).read());
            }
        }
    }
}

/// A `T` read byte by byte (volatile), from an address that may not be aligned for it.
///
/// # Safety
///
/// `size_of::<T>()` bytes at `p` must be readable.
#[cold]
#[inline(never)]
unsafe fn read_bytewise<T: Pod>(p: *const T) -> T {
    let mut v = MaybeUninit::<T>::uninit();
    let src = p.cast::<u8>();
    let dst = v.as_mut_ptr().cast::<u8>();
    for i in 0..size_of::<T>() {
        // SAFETY: i < size_of::<T>(), so src + i is inside the range the caller vouches for (u8
        // needs no alignment) and dst + i inside the local `v`.
        unsafe { dst.add(i).write(ptr::read_volatile(src.add(i))) };
    }
    // SAFETY: all size_of::<T>() bytes of v were written above and T: Pod accepts any bit
    // pattern.
    unsafe { v.assume_init() }
}

/// Whether the `len` (at most 16) bytes at `a` and at `b` are equal, compared in registers:
/// copying guest bytes to the stack and comparing that copy would load what was just stored in
/// other widths, a store-to-load forward the CPU refuses, and the load would then wait until
/// every older store (the previous packet's guest lines among them, each a miss to the other
/// core) has reached the cache.
///
/// # Safety
///
/// `a` and `b` must be readable for `len` bytes, and `len <= 16`.
#[inline(always)]
unsafe fn same_bytes(a: *const u8, b: *const u8, len: usize) -> bool {
    debug_assert!(len <= 16);
    // SAFETY: every access below is at an offset + width <= len, inside the ranges the caller
    // vouches for; unaligned reads need no alignment.
    unsafe {
        if len >= 8 {
            // Two words cover the bytes, overlapping in the middle when len < 16.
            ptr::read_unaligned(a.cast::<u64>()) == ptr::read_unaligned(b.cast::<u64>())
                && ptr::read_unaligned(a.add(len - 8).cast::<u64>())
                    == ptr::read_unaligned(b.add(len - 8).cast::<u64>())
        } else if len >= 4 {
            ptr::read_unaligned(a.cast::<u32>()) == ptr::read_unaligned(b.cast::<u32>())
                && ptr::read_unaligned(a.add(len - 4).cast::<u32>())
                    == ptr::read_unaligned(b.add(len - 4).cast::<u32>())
        } else {
            (0..len).all(|i| a.add(i).read() == b.add(i).read())
        }
    }
}

/// A CPU feature asked once: a byte (0: not asked yet, 1: no, 2: yes) read with one load:
/// behind a `LazyLock`, each prefetch first checked the lock's state and then read the value
/// (callgrind, packed h2g 64 B: 5 instructions a call, one or two calls a packet).
#[cfg(target_arch = "x86_64")]
struct CpuFlag {
    state: std::sync::atomic::AtomicU8,
    ask: fn() -> bool,
}

#[cfg(target_arch = "x86_64")]
impl CpuFlag {
    const fn new(ask: fn() -> bool) -> CpuFlag {
        CpuFlag {
            state: std::sync::atomic::AtomicU8::new(0),
            ask,
        }
    }

    #[inline(always)]
    fn get(&self) -> bool {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            2 => true,
            1 => false,
            _ => self.ask_now(),
        }
    }

    /// Asks the CPU and keeps the answer; racing first calls store the same answer.
    #[cold]
    fn ask_now(&self) -> bool {
        let yes = (self.ask)();
        self.state.store(
            if yes { 2 } else { 1 },
            std::sync::atomic::Ordering::Relaxed,
        );
        yes
    }
}

/// `prefetchw`: CPUID 0x8000_0001, ECX bit 8 (PRFCHW); the leaf is read only if the highest
/// extended leaf includes it.
#[cfg(target_arch = "x86_64")]
static PRFCHW: CpuFlag = CpuFlag::new(|| {
    use std::arch::x86_64::__cpuid;
    __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
});

/// `clwb`: CPUID leaf 7, subleaf 0, EBX bit 24; the leaf is read only if the highest basic
/// leaf includes it.
#[cfg(target_arch = "x86_64")]
static CLWB: CpuFlag = CpuFlag::new(|| {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 24) != 0
});

/// Moves the cache lines of `[addr, addr + len)` out of this core's caches to the shared one
/// (`cldemote`), so that another core that writes them next finds no copy of ours to take
/// back first. Any address will do: a hint, it never faults and changes nothing a program
/// can read; a no-op off x86_64, and a NOP on CPUs without CLDEMOTE.
#[inline]
pub fn demote_range(addr: usize, len: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, len);
    #[cfg(target_arch = "x86_64")]
    {
        let end = addr.saturating_add(len);
        let mut line = addr & !63;
        while line < end {
            // SAFETY: CLDEMOTE only hints where a line is cached: its one exception is #UD with
            // a LOCK prefix (none here), it never faults whatever the address, and it reads
            // or writes no memory the program can observe (a NOP where unsupported).
            unsafe {
                std::arch::asm!("cldemote [{0}]", in(reg) line, options(nostack, preserves_flags));
            }
            let Some(next) = line.checked_add(64) else {
                break;
            };
            line = next;
        }
    }
}

/// A bounds-checked window `[ptr, ptr + len)` of mapped guest memory, valid for `'a` (a borrow of
/// the [`GuestMemory`](super::GuestMemory) or [`GuestRegion`](super::GuestRegion) it came from).
///
/// It is `Copy`: it is only an address range, and every access through it is a raw-pointer,
/// volatile or atomic operation (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct GuestSlice<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _mem: PhantomData<&'a ()>,
}

// SAFETY: a GuestSlice is an address range in a mapping kept alive by the borrow 'a of a
// Send + Sync owner (GuestRegion/GuestMemory); its operations are copies/volatile/atomic
// accesses of memory that other parties modify concurrently anyway.
unsafe impl Send for GuestSlice<'_> {}
// SAFETY: as for Send; all methods take &self and never form references to the bytes.
unsafe impl Sync for GuestSlice<'_> {}

impl<'a> GuestSlice<'a> {
    /// Builds a slice from a raw range.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must be readable and writable memory (a `MAP_SHARED` guest mapping,
    /// or memory the caller owns) that stays mapped for all of `'a`, and no Rust reference to
    /// those bytes may exist during `'a`.
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> Self {
        GuestSlice {
            ptr,
            len,
            _mem: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of the first byte, e.g. for a DMA engine. Getting it is safe; any access
    /// through it is `unsafe` and must stay within [`len`](Self::len) bytes and within `'a`.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Checks `[offset, offset + len)` and returns a pointer to its start.
    #[inline]
    fn range(&self, offset: usize, len: usize) -> Result<*mut u8, AccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: offset <= end <= self.len, so the result stays inside (or one past the
                // end of) the range this slice describes.
                Ok(unsafe { self.ptr.as_ptr().add(offset) })
            }
            _ => Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// The sub-range `[offset, offset + len)`.
    #[inline]
    pub fn subslice(&self, offset: usize, len: usize) -> Result<GuestSlice<'a>, AccessError> {
        let p = self.range(offset, len)?;
        // SAFETY: range() checked the sub-range lies within self, which satisfies from_raw's
        // contract for 'a; p is derived from a NonNull so it is non-null.
        Ok(unsafe { GuestSlice::from_raw(NonNull::new_unchecked(p), len) })
    }

    /// Splits into `[0, mid)` and `[mid, len)`.
    pub fn split_at(&self, mid: usize) -> Result<(GuestSlice<'a>, GuestSlice<'a>), AccessError> {
        let head = self.subslice(0, mid)?;
        let tail = self.subslice(mid, self.len - mid)?;
        Ok((head, tail))
    }

    /// Copies `min(self.len(), src.len())` bytes from `src` to the start of the slice; returns
    /// the count.
    #[inline]
    pub fn copy_from(&self, src: &[u8]) -> usize {
        let n = self.len.min(src.len());
        // SAFETY: n <= self.len bytes are writable guest memory; src is a Rust slice of at least
        // n bytes that cannot overlap guest memory (no references into guest memory exist).
        unsafe { copy_bytes(src.as_ptr(), self.ptr.as_ptr(), n) };
        n
    }

    /// Copies `min(self.len(), dst.len())` bytes from the start of the slice into `dst`; returns
    /// the count.
    #[inline]
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = self.len.min(dst.len());
        // SAFETY: n <= self.len bytes are readable guest memory; dst is an exclusive Rust slice of
        // at least n bytes that cannot overlap guest memory.
        unsafe { copy_bytes(self.ptr.as_ptr(), dst.as_mut_ptr(), n) };
        n
    }

    /// Writes all of `src` at `offset`, or nothing if it does not fit.
    #[inline]
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        let p = self.range(offset, src.len())?;
        // SAFETY: range() checked [offset, offset + src.len()) is inside the slice; src cannot
        // overlap guest memory.
        unsafe { copy_bytes(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    /// Writes `src` at `offset` unless the bytes there already equal it; returns whether it
    /// wrote (sources over 16 bytes are always written). For small fields the other side reads
    /// but rarely sees change (a virtio-net header), reading leaves the cache line shared where
    /// a write would take it away from the reader and cost it a miss on its next look.
    #[inline]
    pub fn update_at(&self, offset: usize, src: &[u8]) -> Result<bool, AccessError> {
        let p = self.range(offset, src.len())?;
        // SAFETY: range() checked [offset, offset + src.len()) is inside the slice, readable and
        // writable; src cannot overlap guest memory.
        unsafe {
            if src.len() <= 16 && same_bytes(p, src.as_ptr(), src.len()) {
                return Ok(false);
            }
            copy_bytes(src.as_ptr(), p, src.len());
        }
        Ok(true)
    }

    /// Calls `f` with the address of each 64-byte cache line that `[offset, offset + len)`,
    /// clamped to the slice, touches. No range check fails: a prefetch never faults, so its
    /// addresses need none, and the clamp keeps the hints inside the slice (the receive path's
    /// two checked subslices cost it 3.5 instructions a packet: callgrind, packed loop-tput 64 B,
    /// 550.3 -> 546.7; packed h2g 425.8 -> 422.8).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn for_each_line_in(&self, offset: usize, len: usize, mut f: impl FnMut(usize)) {
        let base = self.ptr.as_ptr() as usize;
        let end = base + offset.saturating_add(len).min(self.len);
        let mut line = (base + offset.min(self.len)) & !63;
        while line < end {
            f(line);
            line += 64;
        }
    }

    /// Asks for every cache line of the slice for reading (`prefetcht0`), so that the misses
    /// of later reads overlap with other work. A hint: it never faults and has no visible
    /// effect; a no-op off x86_64.
    #[inline(always)]
    pub fn prefetch_for_read(&self) {
        self.prefetch_range_for_read(0, self.len);
    }

    /// [`prefetch_for_read`](Self::prefetch_for_read) of the lines of `[offset, offset + len)`
    /// (clamped to the slice).
    #[inline(always)]
    pub fn prefetch_range_for_read(&self, offset: usize, len: usize) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (offset, len);
        #[cfg(target_arch = "x86_64")]
        self.for_each_line_in(offset, len, |line| {
            // SAFETY: prefetcht0 only hints the cache: it never faults whatever the address
            // and reads or writes no memory the program can observe.
            unsafe {
                std::arch::asm!(
                    "prefetcht0 [{0}]",
                    in(reg) line,
                    options(nostack, preserves_flags, readonly)
                );
            }
        });
    }

    /// Asks for every cache line of the slice in a writable state (`prefetchw`), so that
    /// the misses of a long copy into it overlap rather than wait one behind the other in
    /// the store buffer. A hint: it never faults and has no visible effect; a no-op off
    /// x86_64 and on CPUs without PRFCHW (a read prefetch instead would make the stores pay
    /// a second transaction to upgrade the line, which measured slower than nothing).
    #[inline(always)]
    pub fn prefetch_for_write(&self) {
        self.prefetch_range_for_write(0, self.len);
    }

    /// [`prefetch_for_write`](Self::prefetch_for_write) of the lines of `[offset, offset +
    /// len)` (clamped to the slice).
    #[inline(always)]
    pub fn prefetch_range_for_write(&self, offset: usize, len: usize) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (offset, len);
        #[cfg(target_arch = "x86_64")]
        {
            if !PRFCHW.get() {
                return;
            }
            self.for_each_line_in(offset, len, |line| {
                // SAFETY: the CPU has PRFCHW (checked above); prefetchw only hints the
                // cache: it never faults whatever the address and reads or writes no memory
                // the program can observe.
                unsafe {
                    std::arch::asm!(
                        "prefetchw [{0}]",
                        in(reg) line,
                        options(nostack, preserves_flags, readonly)
                    );
                }
            });
        }
    }

    /// Writes the lines of `[offset, offset + len)` (clamped to the slice) back to memory
    /// (`clwb`) and moves them out of this core's caches to the shared one (`cldemote`, a
    /// no-op on CPUs without it): a line we wrote and another core reads much later is then
    /// a clean line in the shared cache, not one that core must take from ours in the
    /// modified state and then ask for again to write. The contents do not change. A no-op
    /// off x86_64 and on CPUs without CLWB.
    ///
    /// A later locked instruction or fence waits for the write-backs to finish: call it where
    /// that wait costs nothing (the packed dequeue does it from a poll that found no work).
    #[inline]
    pub fn write_back_range(&self, offset: usize, len: usize) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (offset, len);
        #[cfg(target_arch = "x86_64")]
        {
            if !CLWB.get() {
                return;
            }
            self.for_each_line_in(offset, len, |line| {
                // SAFETY: the CPU has CLWB (checked above; CLDEMOTE is a NOP where it is
                // missing). The line holds a byte of the slice (`for_each_line_in` clamps
                // the range to it), which is mapped for 'a, and a line never straddles a
                // page, so neither instruction can fault; they move the line between caches
                // and memory without changing what any party reads from it.
                unsafe {
                    std::arch::asm!(
                        "clwb [{0}]",
                        "cldemote [{0}]",
                        in(reg) line,
                        options(nostack, preserves_flags)
                    );
                }
            });
        }
    }

    /// Fills all of `dst` from `offset`, or nothing if the range does not fit.
    #[inline]
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        let p = self.range(offset, dst.len())?;
        // SAFETY: range() checked [offset, offset + dst.len()) is inside the slice; dst is an
        // exclusive Rust slice that cannot overlap guest memory.
        unsafe { copy_bytes(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `min(self.len(), src.len())` bytes from another guest slice (memmove semantics:
    /// the two may overlap); returns the count.
    pub fn copy_from_guest(&self, src: &GuestSlice<'_>) -> usize {
        let n = self.len.min(src.len);
        // SAFETY: both ranges have at least n valid bytes (readable for src, writable for self);
        // ptr::copy allows overlap.
        unsafe { ptr::copy(src.ptr.as_ptr(), self.ptr.as_ptr(), n) };
        n
    }

    /// Sets every byte of the slice to `byte`.
    pub fn fill(&self, byte: u8) {
        // SAFETY: the slice's len bytes are writable guest memory.
        unsafe { ptr::write_bytes(self.ptr.as_ptr(), byte, self.len) };
    }

    /// Reads a `T` at `offset` with a single fetch (volatile; bytewise volatile if misaligned,
    /// out of line: inline, both paths met in code that took an aligned descriptor's words
    /// apart into bytes and put them back together, ~55 instructions per 16-byte read).
    #[inline]
    pub fn read_obj<T: Pod>(&self, offset: usize) -> Result<T, AccessError> {
        let p = self.range(offset, size_of::<T>())?.cast::<T>();
        if p.is_aligned() {
            // SAFETY: range() checked size_of::<T>() bytes at p are inside the slice, p is
            // aligned for T, and T: Pod accepts any bit pattern.
            Ok(unsafe { ptr::read_volatile(p) })
        } else {
            // SAFETY: range() checked size_of::<T>() bytes at p are inside the slice.
            Ok(unsafe { read_bytewise(p) })
        }
    }

    /// Writes a `T` at `offset` with a single store (volatile; bytewise volatile if misaligned).
    #[inline]
    pub fn write_obj<T: Pod>(&self, offset: usize, val: T) -> Result<(), AccessError> {
        let p = self.range(offset, size_of::<T>())?.cast::<T>();
        if p.is_aligned() {
            // SAFETY: range() checked size_of::<T>() writable bytes at p inside the slice, and p
            // is aligned for T.
            unsafe { ptr::write_volatile(p, val) };
        } else {
            let src = ptr::from_ref(&val).cast::<u8>();
            let dst = p.cast::<u8>();
            for i in 0..size_of::<T>() {
                // SAFETY: i < size_of::<T>(): src + i is inside `val`, which has no padding
                // (T: Pod) so every byte is initialized; dst + i is inside the checked range.
                unsafe { ptr::write_volatile(dst.add(i), src.add(i).read()) };
            }
        }
        Ok(())
    }

    /// Checks `offset` for a naturally aligned u16 inside the slice.
    #[inline]
    fn atomic_u16_ptr(&self, offset: usize) -> Result<*mut u16, AccessError> {
        let p = self.range(offset, size_of::<u16>())?.cast::<u16>();
        if (p as usize) % align_of::<AtomicU16>() != 0 {
            return Err(AccessError::Misaligned {
                offset,
                align: align_of::<AtomicU16>(),
            });
        }
        Ok(p)
    }

    /// Atomically loads the u16 at `offset` (which must be 2-byte aligned in host memory).
    /// `Release` and `AcqRel` are refused (they are invalid for loads).
    #[inline]
    pub fn load_u16(&self, offset: usize, order: Ordering) -> Result<u16, AccessError> {
        if matches!(order, Ordering::Release | Ordering::AcqRel) {
            return Err(AccessError::InvalidOrdering(order));
        }
        let p = self.atomic_u16_ptr(offset)?;
        // SAFETY: atomic_u16_ptr checked p is inside the slice (valid, read-write mapping for 'a)
        // and aligned for AtomicU16; this crate never accesses guest ring indexes non-atomically
        // (callers are documented to use only these methods for them); the ordering was checked
        // to be valid for a load, so load() cannot panic.
        Ok(unsafe { AtomicU16::from_ptr(p) }.load(order))
    }

    /// Atomically stores `val` at `offset` (2-byte aligned). `Acquire` and `AcqRel` are refused.
    #[inline]
    pub fn store_u16(&self, offset: usize, val: u16, order: Ordering) -> Result<(), AccessError> {
        if matches!(order, Ordering::Acquire | Ordering::AcqRel) {
            return Err(AccessError::InvalidOrdering(order));
        }
        let p = self.atomic_u16_ptr(offset)?;
        // SAFETY: as in load_u16: p is inside the writable slice and aligned for AtomicU16, and the
        // ordering was checked to be valid for a store.
        unsafe { AtomicU16::from_ptr(p) }.store(val, order);
        Ok(())
    }

    /// Atomically ORs `bits` into the byte at `offset` and returns its previous value (the
    /// dirty log's marking: other parties set and clear bits of the same byte concurrently).
    #[inline]
    pub fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> Result<u8, AccessError> {
        let p = self.range(offset, 1)?;
        // SAFETY: range() checked the byte is inside the slice (a valid read-write mapping for
        // 'a); a u8 is always aligned for AtomicU8; every ordering is valid for an RMW; the
        // bytes are only ever accessed atomically or by copies, never through references.
        Ok(unsafe { AtomicU8::from_ptr(p) }.fetch_or(bits, order))
    }

    /// Atomically replaces the byte at `offset` with `val` and returns the previous value (a
    /// dirty log's reader takes the bits and clears them in one step).
    #[inline]
    pub fn swap_u8(&self, offset: usize, val: u8, order: Ordering) -> Result<u8, AccessError> {
        let p = self.range(offset, 1)?;
        // SAFETY: as in fetch_or_u8: p is inside the writable slice, aligned for AtomicU8, and
        // every ordering is valid for an RMW.
        Ok(unsafe { AtomicU8::from_ptr(p) }.swap(val, order))
    }

    /// `load_u16(offset, Ordering::Acquire)`: read a ring index the guest publishes (avail->idx).
    #[inline]
    pub fn load_u16_acquire(&self, offset: usize) -> Result<u16, AccessError> {
        self.load_u16(offset, Ordering::Acquire)
    }

    /// `store_u16(offset, val, Ordering::Release)`: publish a ring index (used->idx) after the
    /// entries it covers.
    #[inline]
    pub fn store_u16_release(&self, offset: usize, val: u16) -> Result<(), AccessError> {
        self.store_u16(offset, val, Ordering::Release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::testutil::*;
    use crate::memory::{GuestRegion, MapOptions, RegionDesc};

    fn region(size: u64) -> GuestRegion {
        let fd = memfd(&unique_name("access"), size);
        let desc = RegionDesc {
            memory_size: size,
            ..RegionDesc::default()
        };
        GuestRegion::map(fd, desc, MapOptions::new()).unwrap()
    }

    #[test]
    fn copies_report_counts_and_never_overrun() {
        let r = region(0x1000);
        let s = r.as_slice().subslice(0x10, 8).unwrap();
        assert_eq!(s.copy_from(b"0123456789"), 8);
        let mut out = [0u8; 12];
        assert_eq!(s.copy_to(&mut out), 8);
        assert_eq!(&out[..8], b"01234567");
        assert_eq!(
            r.as_slice().read_obj::<u8>(0x18).unwrap(),
            0,
            "byte after the window untouched"
        );
        let mut small = [0u8; 3];
        assert_eq!(s.copy_to(&mut small), 3);
        assert_eq!(&small, b"012");
        assert_eq!(s.copy_from(&[]), 0);
    }

    #[test]
    fn exact_reads_and_writes_are_bounds_checked() {
        let r = region(0x1000);
        let s = r.as_slice();
        s.write_at(0xffc, b"abcd").unwrap();
        let err = s.write_at(0xffd, b"abcd").unwrap_err();
        assert_eq!(
            err,
            AccessError::OutOfBounds {
                offset: 0xffd,
                len: 4,
                size: 0x1000
            }
        );
        let mut b = [0u8; 4];
        assert!(
            s.read_at(usize::MAX, &mut b).is_err(),
            "offset + len overflow"
        );
        assert!(s.read_at(0x1000, &mut b).is_err());
        s.read_at(0x1000, &mut []).unwrap();
        s.read_at(0xffc, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        assert!(s.subslice(0x800, 0x801).is_err());
        assert!(s.subslice(usize::MAX, 2).is_err());
        let (h, t) = s.split_at(0x400).unwrap();
        assert_eq!((h.len(), t.len()), (0x400, 0xc00));
        assert_eq!(t.as_ptr() as usize - h.as_ptr() as usize, 0x400);
        assert!(s.split_at(0x1001).is_err());
    }

    /// Every length the inline copy has a case for (and some past it), at unaligned offsets:
    /// exactly the bytes asked for, nothing before or after them.
    #[test]
    fn copies_of_every_small_length_are_exact() {
        let r = region(0x1000);
        let s = r.as_slice();
        for len in 0..=130usize {
            for off in [0usize, 1, 7, 13] {
                let src: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8 | 1).collect();
                s.fill(0);
                let dst = s.subslice(0x100 + off, len).unwrap();
                assert_eq!(dst.copy_from(&src), len);
                let mut back = vec![0u8; len + 2];
                s.read_at(0x100 + off - 1, &mut back).unwrap();
                assert_eq!(back[0], 0, "len {len} off {off}: byte before");
                assert_eq!(&back[1..=len], &src[..], "len {len} off {off}");
                assert_eq!(back[len + 1], 0, "len {len} off {off}: byte after");
                let mut out = vec![0u8; len + 1];
                assert_eq!(dst.copy_to(&mut out[..len]), len);
                assert_eq!(&out[..len], &src[..], "len {len} off {off}: copy_to");
                assert_eq!(out[len], 0, "len {len} off {off}: copy_to past the end");
            }
        }
    }

    #[test]
    fn update_writes_only_what_differs() {
        let r = region(0x1000);
        let s = r.as_slice();
        let hdr = [1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(s.update_at(0x40, &hdr).unwrap(), "zeros differ: written");
        let mut b = [0u8; 12];
        s.read_at(0x40, &mut b).unwrap();
        assert_eq!(b, hdr);
        assert!(!s.update_at(0x40, &hdr).unwrap(), "same bytes: left alone");
        assert!(s.update_at(0x40, &[2u8; 12]).unwrap());
        for len in 0..=16 {
            let base: Vec<u8> = (0..len as u8).collect();
            s.write_at(0x200, &base).unwrap();
            assert!(!s.update_at(0x200, &base).unwrap(), "len {len}");
            for i in 0..len {
                let mut other = base.clone();
                other[i] ^= 0x80;
                assert!(
                    s.update_at(0x200, &other).unwrap(),
                    "len {len}, byte {i} differs"
                );
                s.write_at(0x200, &base).unwrap();
            }
        }
        let long = [7u8; 40];
        assert!(
            s.update_at(0x100, &long).unwrap(),
            "over 16 bytes: always written"
        );
        assert!(s.update_at(0x100, &long).unwrap());
        assert!(s.update_at(0xffc, &hdr).is_err(), "bounds checked");
        assert!(s.update_at(usize::MAX, &hdr).is_err());
    }

    #[test]
    fn objects_aligned_and_unaligned() {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(C)]
        struct Desc {
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        }
        // SAFETY: repr(C) of u64, u32, u16, u16: 16 bytes, no padding, all bit patterns valid.
        unsafe impl Pod for Desc {}

        let r = region(0x1000);
        let s = r.as_slice();
        let d = Desc {
            addr: 0x1234_5678_9abc_def0,
            len: 1500,
            flags: 3,
            next: 7,
        };
        for off in [0usize, 16, 1, 3, 0xff0] {
            s.write_obj(off, d).unwrap();
            assert_eq!(s.read_obj::<Desc>(off).unwrap(), d, "offset {off}");
            let mut raw = [0u8; 16];
            s.read_at(off, &mut raw).unwrap();
            assert_eq!(u64::from_ne_bytes(raw[..8].try_into().unwrap()), d.addr);
        }
        assert!(s.read_obj::<Desc>(0xff1).is_err());
        assert!(s.write_obj(0xfff, 0u16).is_err());
        s.write_obj(0x101, [1u8, 2, 3]).unwrap();
        assert_eq!(s.read_obj::<[u8; 3]>(0x101).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn atomic_u16_alignment_and_orderings() {
        let r = region(0x1000);
        let s = r.as_slice();
        s.store_u16_release(2, 0xbeef).unwrap();
        assert_eq!(s.load_u16_acquire(2).unwrap(), 0xbeef);
        assert_eq!(s.read_obj::<u16>(2).unwrap(), 0xbeef);
        s.store_u16(0xffe, 7, Ordering::Relaxed).unwrap();
        assert_eq!(s.load_u16(0xffe, Ordering::SeqCst).unwrap(), 7);

        assert_eq!(
            s.load_u16_acquire(3).unwrap_err(),
            AccessError::Misaligned {
                offset: 3,
                align: 2
            }
        );
        assert!(matches!(
            s.store_u16_release(1, 0),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(matches!(
            s.load_u16_acquire(0xfff),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            s.load_u16_acquire(0x1000),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert_eq!(
            s.load_u16(0, Ordering::Release).unwrap_err(),
            AccessError::InvalidOrdering(Ordering::Release)
        );
        assert!(s.load_u16(0, Ordering::AcqRel).is_err());
        assert!(s.store_u16(0, 1, Ordering::Acquire).is_err());
        assert!(s.store_u16(0, 1, Ordering::AcqRel).is_err());

        // Alignment is of the host address: a sub-slice starting at an odd address shifts it.
        let odd = s.subslice(1, 0x10).unwrap();
        assert!(odd.load_u16_acquire(0).is_err());
        assert_eq!(odd.load_u16_acquire(1).unwrap(), 0xbeef);
    }

    #[test]
    fn release_acquire_publishes_data_across_threads() {
        let r = region(0x1000);
        let s = r.as_slice();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for i in 1..=1000u16 {
                    s.write_obj(0x100, u64::from(i) * 3).unwrap();
                    s.store_u16_release(0, i).unwrap();
                    while s.load_u16_acquire(2).unwrap() != i {
                        std::thread::yield_now();
                    }
                }
            });
            let mut seen = 0u16;
            while seen < 1000 {
                let idx = s.load_u16_acquire(0).unwrap();
                if idx != seen {
                    assert_eq!(s.read_obj::<u64>(0x100).unwrap(), u64::from(idx) * 3);
                    seen = idx;
                    s.store_u16_release(2, idx).unwrap();
                }
                std::thread::yield_now();
            }
        });
    }

    #[test]
    fn copy_within_guest_handles_overlap() {
        let r = region(0x1000);
        let s = r.as_slice();
        s.write_at(0, b"abcdefgh").unwrap();
        let src = s.subslice(0, 8).unwrap();
        let dst = s.subslice(2, 8).unwrap();
        assert_eq!(dst.copy_from_guest(&src), 8);
        let mut out = [0u8; 10];
        s.read_at(0, &mut out).unwrap();
        assert_eq!(&out, b"ababcdefgh");
        let short = s.subslice(0x800, 3).unwrap();
        assert_eq!(short.copy_from_guest(&src), 3);
        short.fill(0);
        assert_eq!(s.read_obj::<[u8; 4]>(0x800).unwrap(), [0, 0, 0, 0]);
    }
}
