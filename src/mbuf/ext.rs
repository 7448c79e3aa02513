//! External buffers (`rte_pktmbuf_attach_extbuf` with an `rte_mbuf_ext_shared_info`).
//!
//! An [`ExtBuf`] is memory outside any packet pool — e.g. a buffer large enough for a 64 KiB
//! guest packet — plus a free callback. Attached to an mbuf it becomes that segment's data;
//! clones of the mbuf share it. The callback runs exactly once, when the last reference goes:
//! the last mbuf (original or clone) referencing it is freed or detached, or the `ExtBuf` is
//! dropped without ever being attached.
//!
//! The shared info (reference count and callback) lives in one heap allocation made by
//! [`ExtBuf::new`], type-erased behind a thin pointer so a header holds it in 8 bytes.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};

/// Reference count plus the type-erased release function of one external buffer. The first
/// field of every `ExtBox<F>`, so a pointer to it is a pointer to the box.
#[repr(C)]
struct ExtShared {
    refcnt: AtomicU32,
    /// Frees the `ExtBox<F>` this header starts and runs its callback.
    release: unsafe fn(NonNull<ExtShared>),
}

#[repr(C)]
struct ExtBox<F> {
    shared: ExtShared,
    free: F,
}

/// # Safety
///
/// `p` came from `Box::<ExtBox<F>>::into_raw` in [`ExtRef::new`] and its count just reached
/// zero (nobody else can reach it).
unsafe fn release_box<F: FnOnce()>(p: NonNull<ExtShared>) {
    // SAFETY: per the contract, `p` is the start of a live `ExtBox<F>` allocated by `Box`
    // (the cast back recovers the original type; `ExtShared` is its first field, `repr(C)`),
    // and we are its last user.
    let boxed = unsafe { Box::from_raw(p.cast::<ExtBox<F>>().as_ptr()) };
    let ExtBox { free, .. } = *boxed;
    free();
}

/// A counted reference to an external buffer's shared info.
///
/// Invariant: the count is at least the number of `ExtRef` copies that will still call
/// [`release`](Self::release), so the info is alive while one of them exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct ExtRef(NonNull<ExtShared>);

impl ExtRef {
    fn new<F: FnOnce() + Send + 'static>(free: F) -> ExtRef {
        let boxed = Box::new(ExtBox {
            shared: ExtShared {
                refcnt: AtomicU32::new(1),
                release: release_box::<F>,
            },
            free,
        });
        ExtRef(
            NonNull::new(Box::into_raw(boxed))
                .expect("Box pointers are non-null")
                .cast(),
        )
    }

    fn shared(&self) -> &ExtShared {
        // SAFETY: the type invariant: the info is alive while this reference counts.
        unsafe { self.0.as_ref() }
    }

    /// Takes one more reference (a clone attaches to the buffer).
    pub(super) fn acquire(self) {
        // Relaxed: as `Arc::clone`; the new reference is made from an existing one, which
        // keeps the count above zero, and hands nothing over.
        let old = self.shared().refcnt.fetch_add(1, Ordering::Relaxed);
        if old > u32::MAX / 2 {
            // As `Arc`: a count this high means references are leaked in a loop.
            std::process::abort();
        }
    }

    /// Drops one reference; the last one runs the free callback.
    pub(super) fn release(self) {
        // Release: every access to the buffer through this reference happens-before the
        // callback, which runs after the Acquire fence of whoever drops the count to zero.
        if self.shared().refcnt.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            let release = self.shared().release;
            // SAFETY: `self.0` came from `ExtRef::new` with this `release` function, and the
            // count just reached zero: no other reference remains.
            unsafe { release(self.0) };
        }
    }

    /// Whether this is the only reference (the buffer may then be written).
    pub(super) fn is_exclusive(self) -> bool {
        // Acquire: pairs with the Release decrement of references dropped on other threads, so
        // their reads of the buffer happen-before our writes.
        self.shared().refcnt.load(Ordering::Acquire) == 1
    }

    /// The number of references (a snapshot).
    pub(super) fn count(self) -> u32 {
        self.shared().refcnt.load(Ordering::Relaxed)
    }
}

/// A send-able raw pointer, for the free callback of a boxed slice.
struct SendPtr(*mut [u8]);

// SAFETY: the pointer is the sole owner of a `Box<[u8]>` (plain bytes), moved into the free
// callback which is the only code that touches it.
unsafe impl Send for SendPtr {}

/// An external data buffer with its free callback; attach it with
/// [`Mbuf::attach_extbuf`](super::Mbuf::attach_extbuf). Dropping an `ExtBuf` that was never
/// attached runs the callback.
pub struct ExtBuf {
    addr: NonNull<u8>,
    iova: u64,
    len: u32,
    shared: ExtRef,
}

// SAFETY: the buffer is owned by the `ExtBuf` (constructor contract), the callback is `Send`,
// and the shared info is only touched through atomics.
unsafe impl Send for ExtBuf {}
// SAFETY: `&ExtBuf` only reads plain fields.
unsafe impl Sync for ExtBuf {}

impl ExtBuf {
    /// An external buffer of `len` bytes at `addr` whose device address is `iova`; `free`
    /// runs once when the last reference goes.
    ///
    /// # Safety
    ///
    /// - `addr..addr + len` is valid for reads and writes, and initialized, until `free` runs;
    /// - nothing else accesses that memory until `free` runs (mbufs give out `&[u8]` and
    ///   `&mut [u8]` over it — never pass guest memory or memory a device writes on its own);
    /// - `iova` is the IOVA of `addr`, and the buffer is IOVA-contiguous.
    pub unsafe fn new(
        addr: NonNull<u8>,
        iova: u64,
        len: u32,
        free: impl FnOnce() + Send + 'static,
    ) -> ExtBuf {
        ExtBuf {
            addr,
            iova,
            len,
            shared: ExtRef::new(free),
        }
    }

    /// A heap buffer as an external buffer, freed when the last reference goes. Its IOVA is
    /// its virtual address (fine for the CPU and for devices behind an IOMMU in VA mode).
    pub fn from_boxed_slice(buf: Box<[u8]>) -> Result<ExtBuf, Box<[u8]>> {
        let Ok(len) = u32::try_from(buf.len()) else {
            return Err(buf);
        };
        let raw = SendPtr(Box::into_raw(buf));
        let addr = NonNull::new(raw.0.cast::<u8>()).expect("Box pointers are non-null");
        let free = move || {
            let raw = raw;
            // SAFETY: `raw` came from `Box::into_raw` above and this callback runs once.
            drop(unsafe { Box::from_raw(raw.0) });
        };
        // SAFETY: the box's bytes are initialized, valid until the callback frees them, and
        // reachable only through this buffer (the box was turned into a raw pointer). IOVA =
        // VA and a heap allocation is virtually contiguous.
        Ok(unsafe { ExtBuf::new(addr, addr.as_ptr() as u64, len, free) })
    }

    /// First byte.
    pub fn addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// IOVA of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the buffer has no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts, handing the reference over to the caller (no callback runs).
    pub(super) fn into_parts(self) -> (NonNull<u8>, u64, u32, ExtRef) {
        let parts = (self.addr, self.iova, self.len, self.shared);
        std::mem::forget(self);
        parts
    }
}

impl Drop for ExtBuf {
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl fmt::Debug for ExtBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtBuf")
            .field("addr", &self.addr)
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("len", &self.len)
            .field("refs", &self.shared.count())
            .finish()
    }
}
