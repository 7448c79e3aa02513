//! A fixed-capacity, lock-free ring of `Copy` values with bulk and burst operations, following
//! the semantics of DPDK's `rte_ring`.
//!
//! # Algorithm
//!
//! The ring is an array of `2^k` slots indexed by free-running `u32` counters: slot of counter
//! `i` is `i & mask`, and all counter arithmetic wraps. Each side (producer, consumer) has a
//! `head` and a `tail`, and each side lives in its own [`CachePadded`] block so the two sides
//! never share a cache line:
//!
//! 1. *Reserve*: an operation first moves its own side's `head` forward by `n`, after checking
//!    against the opposite side's `tail` that `n` slots are free (enqueue) or filled (dequeue).
//!    In multi mode the head is moved with a compare-and-swap, so concurrent producers (or
//!    consumers) reserve disjoint ranges; in single mode it is a plain store.
//! 2. *Copy*: the values are copied into (or out of) the reserved slots, with at most two
//!    contiguous `memcpy`s (the range may wrap around the end of the array).
//! 3. *Publish*: the side's `tail` is moved from the old head to the new head with a `Release`
//!    store, which is what the opposite side reads (`Acquire`) to learn which slots it may use.
//!    In multi mode an operation first waits until the tail reaches its own old head, i.e. until
//!    every operation that reserved an earlier range on the same side has published: tails are
//!    published strictly in reservation order.
//!
//! # Capacity
//!
//! [`Ring::new`] takes the exact capacity wanted (like `RING_F_EXACT_SZ`): the ring allocates
//! `capacity.next_power_of_two()` slots and never holds more than `capacity` values. Unlike a
//! default `rte_ring` no slot is sacrificed, so a power-of-two capacity uses every slot. The
//! capacity must be in `1..=`[`MAX_CAPACITY`] (2^31, so that counter differences stay
//! unambiguous in `u32`).
//!
//! # Bulk and burst
//!
//! * `*_bulk` moves all of the slice or nothing, and returns `slice.len()` or `0`. A bulk
//!   operation longer than [`Ring::capacity`] always returns `0`.
//! * `*_burst` moves as many values as fit (enqueue) or are available (dequeue), from the front
//!   of the slice, and returns how many it moved.
//!
//! # Single vs multi mode, and how safe Rust keeps single mode single
//!
//! The mode of each side is a type parameter: `Ring<T, P, C>` with `P`, `C` ∈ {[`Single`],
//! [`Multi`]}, defaulting to `Ring<T, Multi, Multi>`. The aliases [`MpmcRing`], [`MpscRing`],
//! [`SpmcRing`] and [`SpscRing`] name the four combinations.
//!
//! * A **multi** side is used through `&self`: `Ring<T, Multi, C>` has
//!   [`enqueue_bulk(&self)`](Ring::enqueue_bulk) / [`enqueue_burst(&self)`](Ring::enqueue_burst),
//!   `Ring<T, P, Multi>` has [`dequeue_bulk(&self)`](Ring::dequeue_bulk) /
//!   [`dequeue_burst(&self)`](Ring::dequeue_burst). Such a ring is `Sync` and can simply be
//!   shared (`&Ring`, `Arc<Ring>`, or embedded in another shared struct such as a mempool).
//! * A **single** side has no `&self` operation at all. It is reached either
//!   - through `&mut self` (`Ring<T, Single, C>::enqueue_bulk(&mut self, ..)`, etc.): the
//!     borrow checker proves exclusivity, handy for single-threaded use; or
//!   - through a handle: [`Ring::producer`] / [`Ring::consumer`] (borrowing `&Ring`) or
//!     [`Ring::producer_arc`] / [`Ring::consumer_arc`] (holding an `Arc<Ring>`) return a
//!     [`SingleProducer`] / [`SingleConsumer`]. At most one handle per side exists at a time
//!     (the ring keeps a claim flag; a second request returns `None` until the first handle is
//!     dropped). A handle is not `Clone`, and its operations take `&mut self`, so the single
//!     side is never used from two threads at once. Handles are `Send` (when `T: Send`) and may
//!     be moved to another thread, or dropped and re-acquired elsewhere. (A handle leaked with
//!     `mem::forget` keeps its side claimed for good; that is safe, merely unusable.)
//!
//! Mixing is fine: an [`MpscRing`] is shared by `&self` among producers while one thread holds
//! the [`SingleConsumer`].
//!
//! # `T: Copy`
//!
//! Values are stored bitwise in `UnsafeCell<MaybeUninit<T>>` slots and copied out bitwise, and
//! the ring never drops the values it still holds when it is dropped. Requiring `T: Copy`
//! (which excludes `Drop` types) makes both of those trivially correct. The intended contents are
//! object indices (`u32`) and addresses (`usize`).
//!
//! # Progress: a preempted operation stalls its side
//!
//! Like `rte_ring` (default MP/MC "sync" mode), the ring is lock-free only in the weak sense:
//! in multi mode an operation that has reserved a range but not yet published its tail (for
//! example because its thread was preempted between the two steps) makes every later operation
//! on the same side spin (`std::hint::spin_loop`) in the publish step until it resumes. Reserving
//! never blocks, and the other side is never blocked by this. Use multi-mode sides from threads
//! pinned to dedicated cores (as poll-mode lcores are), or accept latency spikes of up to a
//! scheduler time slice when threads share cores.
//!
//! # Memory ordering
//!
//! The orderings, and the pairs they form, are:
//!
//! * `opposite.tail.load(Acquire)` in the reserve step ⟷ `tail.store(Release)` in the opposite
//!   side's publish step: an enqueuer sees the slot reads of the consumers that freed the slots
//!   before it overwrites them; a dequeuer sees the slot writes of the producers that filled them.
//! * Multi mode, publish wait `tail.load(Acquire)` ⟷ the previous same-side `tail.store(Release)`:
//!   a plain store ends the previous release sequence, so this pair is what makes the earlier
//!   operations' slot accesses visible (transitively) to whoever acquires our tail.
//! * Multi mode, `head.load(Acquire)` and the head CAS (`Release` on success, `Acquire` on
//!   failure) pair with each other: whoever reads a head value also sees the opposite tail the
//!   head's writer saw before moving it, so the opposite tail it loads next is at least that
//!   recent and the computed free/used count never exceeds what really is free/used.
//! * Single mode: `head` and the cached opposite tail are only touched by the owner, so
//!   `Relaxed`; ownership changes hands through the claim flag (`Release` store on handle drop
//!   ⟷ `Acquire` CAS on claim) or through `&mut` (whose hand-over already synchronizes).

use std::cell::UnsafeCell;
use std::fmt;
use std::hint::spin_loop;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crossbeam_utils::CachePadded;

/// Largest capacity a [`Ring`] accepts: 2^31 values.
pub const MAX_CAPACITY: usize = 1 << 31;

// The counters are u32 and slice lengths are usize: every u32 must fit in a usize.
const _: () = assert!(usize::BITS >= u32::BITS);

/// Error returned by [`Ring::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring must hold at least one value.
    #[error("ring capacity must be at least 1")]
    ZeroCapacity,
    /// The requested capacity is above [`MAX_CAPACITY`].
    #[error("ring capacity {requested} exceeds the maximum of {max}")]
    CapacityTooLarge {
        /// The capacity that was asked for.
        requested: usize,
        /// [`MAX_CAPACITY`].
        max: usize,
    },
    /// The slot array could not be allocated.
    #[error("cannot allocate {slots} ring slots of {slot_size} bytes each")]
    AllocFailed {
        /// Number of slots (the capacity rounded up to a power of two).
        slots: usize,
        /// Size of one slot in bytes.
        slot_size: usize,
    },
}

mod sealed {
    pub trait Sealed {}
}

/// Synchronization mode of one side of a [`Ring`]: [`Single`] or [`Multi`]. Sealed.
pub trait SyncMode: sealed::Sealed + Send + Sync + 'static {
    /// `true` for [`Single`].
    const IS_SINGLE: bool;
    /// `"single"` or `"multi"`, for `Debug` output.
    const NAME: &'static str;
}

/// Mode marker: exactly one thread at a time uses this side (SP / SC), through `&mut Ring` or
/// through a [`SingleProducer`] / [`SingleConsumer`] handle. No compare-and-swap, no waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single {}

/// Mode marker: any number of threads use this side concurrently (MP / MC), through `&Ring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multi {}

impl sealed::Sealed for Single {}
impl sealed::Sealed for Multi {}

impl SyncMode for Single {
    const IS_SINGLE: bool = true;
    const NAME: &'static str = "single";
}

impl SyncMode for Multi {
    const IS_SINGLE: bool = false;
    const NAME: &'static str = "multi";
}

/// Multi-producer, multi-consumer ring: both sides used through `&self`.
pub type MpmcRing<T> = Ring<T, Multi, Multi>;
/// Multi-producer ring (`&self`) with a single consumer ([`SingleConsumer`] or `&mut self`).
pub type MpscRing<T> = Ring<T, Multi, Single>;
/// Single producer ([`SingleProducer`] or `&mut self`) with multiple consumers (`&self`).
pub type SpmcRing<T> = Ring<T, Single, Multi>;
/// Single producer and single consumer, each through a handle or `&mut self`.
pub type SpscRing<T> = Ring<T, Single, Single>;

/// Head and tail of one side.
struct HeadTail {
    /// End of the range reserved by this side (moved first).
    head: AtomicU32,
    /// End of the range published by this side (moved last; read by the opposite side).
    tail: AtomicU32,
    /// Single mode only: the opposite side's tail as last loaded by this side's owner. It is
    /// never ahead of the real value, so checking against it is conservative; it is refreshed
    /// only when it says there is not enough room, which keeps the owner from reading the
    /// opposite side's cache line on every operation.
    opp_tail_cache: AtomicU32,
    /// Single mode only: whether a [`SingleProducer`] / [`SingleConsumer`] handle exists.
    claimed: AtomicBool,
}

impl HeadTail {
    fn new(start: u32) -> Self {
        HeadTail {
            head: AtomicU32::new(start),
            tail: AtomicU32::new(start),
            opp_tail_cache: AtomicU32::new(start),
            claimed: AtomicBool::new(false),
        }
    }

    /// Publishes `old..new` by moving the tail from `old` to `new`. In multi mode, first waits
    /// for the operations that reserved ranges before `old` to publish theirs.
    #[inline(always)]
    fn publish(&self, old: u32, new: u32, single: bool) {
        if !single {
            // Acquire: pairs with the Release store below made by the operation that published
            // up to `old`. Our Release store is a plain store that ends its release sequence, so
            // this is what carries its slot accesses (transitively) to whoever acquires `new`.
            while self.tail.load(Acquire) != old {
                spin_loop();
            }
        }
        // Release: publishes the slots written (enqueue) or read (dequeue) by this operation to
        // the opposite side's Acquire load of this tail in its reserve step.
        self.tail.store(new, Release);
    }

    /// Releases the claim of a single-mode handle.
    fn unclaim(&self) {
        // Release: pairs with the Acquire CAS in `claim`, so the next handle owner sees this
        // owner's Relaxed accesses to `head` and `opp_tail_cache`.
        self.claimed.store(false, Release);
    }

    /// Claims the single-mode side; `false` if a handle already holds it.
    fn claim(&self) -> bool {
        // Acquire: pairs with the Release store in `unclaim` by the previous handle owner.
        // Relaxed on failure: nothing is accessed when the claim fails.
        self.claimed
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
    }
}

type Slot<T> = UnsafeCell<MaybeUninit<T>>;

/// A fixed-capacity lock-free ring of `Copy` values with bulk and burst operations.
///
/// `P` and `C` select the producer and consumer [`SyncMode`]; see the [module
/// documentation](self) for the design, the memory ordering and the progress caveat.
///
/// ```
/// use rvhost_hugepages::bulk_ring::MpmcRing;
///
/// let ring = MpmcRing::<u32>::new(8).unwrap();
/// assert_eq!(ring.enqueue_bulk(&[1, 2, 3]), 3);
/// assert_eq!(ring.enqueue_bulk(&[0; 6]), 0); // 3 + 6 > 8: all or nothing
/// assert_eq!(ring.enqueue_burst(&[4, 5, 6, 7, 8, 9]), 5); // as many as fit
/// let mut out = [0u32; 4];
/// assert_eq!(ring.dequeue_bulk(&mut out), 4);
/// assert_eq!(out, [1, 2, 3, 4]);
/// assert_eq!(ring.len(), 4);
/// ```
pub struct Ring<T, P = Multi, C = Multi> {
    prod: CachePadded<HeadTail>,
    cons: CachePadded<HeadTail>,
    slots: Box<[Slot<T>]>,
    /// Number of slots minus one (the number of slots is a power of two).
    mask: u32,
    /// The most values the ring holds (`<= mask + 1`).
    capacity: u32,
    _mode: PhantomData<fn() -> (P, C)>,
}

// SAFETY: the ring hands values of type `T` from the threads that enqueue them to the threads
// that dequeue them, hence `T: Send`. Shared (`&self`) access to the slots is only performed by
// the reserve/copy/publish protocol: a slot is written only by the operation that reserved it
// and read only after its producer published it (Release/Acquire on the tails), and a
// single-mode side is only reachable through `&mut self` or the unique claimed handle.
// (`Send` is the auto impl: `Box<[UnsafeCell<MaybeUninit<T>>]>` is `Send` when `T: Send`.)
unsafe impl<T: Send, P: SyncMode, C: SyncMode> Sync for Ring<T, P, C> {}

impl<T: Copy, P: SyncMode, C: SyncMode> Ring<T, P, C> {
    /// Creates an empty ring holding at most `capacity` values (exactly; the slot array is
    /// `capacity.next_power_of_two()` long).
    ///
    /// Errors: [`RingError::ZeroCapacity`], [`RingError::CapacityTooLarge`] above
    /// [`MAX_CAPACITY`], [`RingError::AllocFailed`].
    pub fn new(capacity: usize) -> Result<Self, RingError> {
        Self::with_start(capacity, 0)
    }

    /// Like `new`, with all counters starting at `start` (tests use it to exercise the `u32`
    /// counter wrap-around without 2^32 operations).
    fn with_start(capacity: usize, start: u32) -> Result<Self, RingError> {
        if capacity == 0 {
            return Err(RingError::ZeroCapacity);
        }
        if capacity > MAX_CAPACITY {
            return Err(RingError::CapacityTooLarge {
                requested: capacity,
                max: MAX_CAPACITY,
            });
        }
        let size = capacity.next_power_of_two();
        let mut slots: Vec<Slot<T>> = Vec::new();
        slots
            .try_reserve_exact(size)
            .map_err(|_| RingError::AllocFailed {
                slots: size,
                slot_size: size_of::<T>(),
            })?;
        // SAFETY: the capacity was reserved just above, and an `UnsafeCell<MaybeUninit<T>>`
        // needs no initialization (any bytes, including uninitialized ones, are valid for it).
        // This keeps `new` O(1) in the number of slots.
        unsafe { slots.set_len(size) };
        Ok(Ring {
            prod: CachePadded::new(HeadTail::new(start)),
            cons: CachePadded::new(HeadTail::new(start)),
            slots: slots.into_boxed_slice(),
            // Both fit: size <= 2^31 and capacity <= size.
            mask: (size - 1) as u32,
            capacity: capacity as u32,
            _mode: PhantomData,
        })
    }

    /// The most values the ring can hold (as passed to [`Ring::new`]).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Number of values in the ring. With concurrent operations this is a snapshot of published
    /// values (in-flight operations are not counted) and may be stale by the time it returns.
    #[inline]
    pub fn len(&self) -> usize {
        // Acquire: orders this load before the prod.tail load below (an Acquire load keeps later
        // loads after it), so prod.tail is read no earlier than cons.tail and the difference is
        // not negative in practice. It pairs with the consumers' Release store of cons.tail.
        let cons_tail = self.cons.tail.load(Acquire);
        // Relaxed: only a snapshot value is needed; no slot is accessed through it.
        let prod_tail = self.prod.tail.load(Relaxed);
        let used = prod_tail.wrapping_sub(cons_tail);
        // Clamp like rte_ring_count, in case the two loads still saw inconsistent values.
        used.min(self.capacity) as usize
    }

    /// Number of values that can be enqueued before the ring is full (a snapshot, see
    /// [`Ring::len`]).
    #[inline]
    pub fn free_count(&self) -> usize {
        self.capacity() - self.len()
    }

    /// Whether the ring holds no value (a snapshot).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the ring holds `capacity()` values (a snapshot).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// Producer mode name and consumer mode name, e.g. `("multi", "single")`.
    pub fn modes(&self) -> (&'static str, &'static str) {
        (P::NAME, C::NAME)
    }

    /// Pointer to the first slot, as `*mut T`.
    #[inline(always)]
    fn slot_ptr(&self) -> *mut T {
        // `UnsafeCell<MaybeUninit<T>>` has the layout of `T` (both wrappers are
        // `repr(transparent)`), and writing through a pointer derived from `&UnsafeCell` is
        // allowed. The pointer keeps the provenance of the whole slice.
        UnsafeCell::raw_get(self.slots.as_ptr()).cast::<T>()
    }

    /// Copies `src` into the slots of counters `start..start + src.len()`.
    ///
    /// # Safety
    ///
    /// The caller has reserved those counters on the producer side (so no other thread accesses
    /// their slots until they are published) and `src.len() <= capacity`.
    #[inline(always)]
    unsafe fn write_slots(&self, start: u32, src: &[T]) {
        let n = src.len();
        let size = self.mask as usize + 1;
        let idx = (start & self.mask) as usize;
        let first = n.min(size - idx);
        let base = self.slot_ptr();
        // SAFETY: `idx + first <= size` and `n - first <= idx` (because `n <= size`), so both
        // destination ranges are inside the slot array and disjoint; `src` is a separate
        // allocation. The slots are ours (reserved, unpublished) per the caller's contract.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), base.add(idx), first);
            if first < n {
                ptr::copy_nonoverlapping(src.as_ptr().add(first), base, n - first);
            }
        }
    }

    /// Copies the slots of counters `start..start + dst.len()` into `dst`.
    ///
    /// # Safety
    ///
    /// The caller has reserved those counters on the consumer side after loading (Acquire) a
    /// producer tail covering them, so they hold published values no other thread writes until
    /// this operation publishes the consumer tail; and `dst.len() <= capacity`.
    #[inline(always)]
    unsafe fn read_slots(&self, start: u32, dst: &mut [T]) {
        let n = dst.len();
        let size = self.mask as usize + 1;
        let idx = (start & self.mask) as usize;
        let first = n.min(size - idx);
        let base = self.slot_ptr();
        // SAFETY: same bounds as in `write_slots`; the slots were initialized by the producers
        // that published them (so reading them as `T` is valid) and are not written until we
        // publish, per the caller's contract. `dst` is an exclusive borrow, disjoint from them.
        unsafe {
            ptr::copy_nonoverlapping(base.add(idx), dst.as_mut_ptr(), first);
            if first < n {
                ptr::copy_nonoverlapping(base, dst.as_mut_ptr().add(first), n - first);
            }
        }
    }

    /// Multi-mode reserve step for side `own` against the opposite side `opp`. The room is
    /// `offset + opp.tail - head`: `offset` is the capacity for the producer side (free slots)
    /// and 0 for the consumer side (filled slots). Reserves `want` (bulk: `fixed`) or up to
    /// `want` counters and returns `(old_head, n)` with `n > 0`, or `None`.
    #[inline(always)]
    fn reserve_multi(
        &self,
        own: &HeadTail,
        opp: &HeadTail,
        offset: u32,
        want: u32,
        fixed: bool,
    ) -> Option<(u32, u32)> {
        // Acquire: pairs with the Release CAS below done by the operation that wrote this head
        // value; it loaded `opp.tail` before its CAS, so our `opp.tail` load below sees a value
        // at least that recent (never one older than the head we use).
        let mut old = own.head.load(Acquire);
        loop {
            // Acquire: pairs with the opposite side's Release store of its tail (`publish`):
            // for an enqueue, the consumers' reads of the slots we may overwrite happen-before
            // our writes; for a dequeue, the producers' writes of the slots we read
            // happen-before our reads.
            let opp_tail = opp.tail.load(Acquire);
            let room = offset.wrapping_add(opp_tail).wrapping_sub(old);
            if room > self.capacity {
                // Impossible for a current head: ours is stale (other operations moved the
                // head, and the opposite side moved past it, since we loaded it). Reload.
                // Acquire: same pairing as the initial head load.
                old = own.head.load(Acquire);
                continue;
            }
            let n = if want <= room {
                want
            } else if fixed {
                return None;
            } else {
                room
            };
            if n == 0 {
                return None;
            }
            // Release on success: pairs with the Acquire head loads (initial load, reload above,
            // CAS failure) of later operations on this side, carrying our `opp.tail`
            // observation to them. The head's release sequence continues through every later
            // CAS, all of which are RMWs.
            // Acquire on failure: same pairing, for the head value we retry with.
            // The slots themselves are ordered by the tails, not by this CAS.
            match own
                .head
                .compare_exchange_weak(old, old.wrapping_add(n), Release, Acquire)
            {
                Ok(_) => return Some((old, n)),
                Err(current) => old = current,
            }
        }
    }

    /// Single-mode reserve step; same contract as `reserve_multi`.
    ///
    /// # Safety
    ///
    /// The caller is the only thread using side `own` (it holds the claim or `&mut self`).
    #[inline(always)]
    unsafe fn reserve_single(
        &self,
        own: &HeadTail,
        opp: &HeadTail,
        offset: u32,
        want: u32,
        fixed: bool,
    ) -> Option<(u32, u32)> {
        // Relaxed: only the side's owner writes its head and cache; earlier owners' writes are
        // ordered before ours by the claim flag or by `&mut` (see `HeadTail::claim`).
        let old = own.head.load(Relaxed);
        let mut opp_tail = own.opp_tail_cache.load(Relaxed);
        let mut room = offset.wrapping_add(opp_tail).wrapping_sub(old);
        if room < want {
            // Acquire: pairs with the opposite side's Release store of its tail (`publish`),
            // exactly as in `reserve_multi`. A cached value was loaded the same way earlier,
            // and the slots it covers stay covered, so using the cache is sound.
            opp_tail = opp.tail.load(Acquire);
            // Relaxed: owner-only field (see above).
            own.opp_tail_cache.store(opp_tail, Relaxed);
            room = offset.wrapping_add(opp_tail).wrapping_sub(old);
        }
        let n = if want <= room {
            want
        } else if fixed {
            return None;
        } else {
            room
        };
        if n == 0 {
            return None;
        }
        // Relaxed: owner-only; the opposite side reads the tail, not the head.
        own.head.store(old.wrapping_add(n), Relaxed);
        Some((old, n))
    }

    /// Enqueues all of `src` (`fixed`) or as much of it as fits.
    ///
    /// # Safety
    ///
    /// If `P` is [`Single`], the caller is the only thread using the producer side.
    #[inline(always)]
    unsafe fn enqueue_impl(&self, src: &[T], fixed: bool) -> usize {
        if src.len() > self.capacity as usize && fixed {
            return 0;
        }
        // Fits in u32: at most `capacity`.
        let want = src.len().min(self.capacity as usize) as u32;
        if want == 0 {
            return 0;
        }
        let reserved = if P::IS_SINGLE {
            // SAFETY: single producer side, and the caller is its only user.
            unsafe { self.reserve_single(&self.prod, &self.cons, self.capacity, want, fixed) }
        } else {
            self.reserve_multi(&self.prod, &self.cons, self.capacity, want, fixed)
        };
        let Some((old, n)) = reserved else {
            return 0;
        };
        // SAFETY: `n <= want <= src.len()`.
        let src = unsafe { src.get_unchecked(..n as usize) };
        // SAFETY: counters `old..old + n` are reserved by this operation on the producer side,
        // and `n <= capacity`.
        unsafe { self.write_slots(old, src) };
        self.prod.publish(old, old.wrapping_add(n), P::IS_SINGLE);
        n as usize
    }

    /// Dequeues `dst.len()` values (`fixed`) or as many as are available, into the front of
    /// `dst`.
    ///
    /// # Safety
    ///
    /// If `C` is [`Single`], the caller is the only thread using the consumer side.
    #[inline(always)]
    unsafe fn dequeue_impl(&self, dst: &mut [T], fixed: bool) -> usize {
        if dst.len() > self.capacity as usize && fixed {
            return 0;
        }
        // Fits in u32: at most `capacity`.
        let want = dst.len().min(self.capacity as usize) as u32;
        if want == 0 {
            return 0;
        }
        let reserved = if C::IS_SINGLE {
            // SAFETY: single consumer side, and the caller is its only user.
            unsafe { self.reserve_single(&self.cons, &self.prod, 0, want, fixed) }
        } else {
            self.reserve_multi(&self.cons, &self.prod, 0, want, fixed)
        };
        let Some((old, n)) = reserved else {
            return 0;
        };
        // SAFETY: `n <= want <= dst.len()`.
        let dst = unsafe { dst.get_unchecked_mut(..n as usize) };
        // SAFETY: counters `old..old + n` are reserved by this operation on the consumer side,
        // below the producer tail loaded with Acquire in the reserve step; `n <= capacity`.
        unsafe { self.read_slots(old, dst) };
        self.cons.publish(old, old.wrapping_add(n), C::IS_SINGLE);
        n as usize
    }
}

/// Multi-producer operations, through `&self`.
impl<T: Copy, C: SyncMode> Ring<T, Multi, C> {
    /// Enqueues all of `src`, or nothing if it does not fit. Returns `src.len()` or 0.
    #[inline]
    #[must_use = "a bulk enqueue returns 0 when nothing was enqueued"]
    pub fn enqueue_bulk(&self, src: &[T]) -> usize {
        // SAFETY: the producer side is Multi: no precondition.
        unsafe { self.enqueue_impl(src, true) }
    }

    /// Enqueues as many values from the front of `src` as fit. Returns how many.
    #[inline]
    #[must_use = "a burst enqueue may enqueue only part of the slice"]
    pub fn enqueue_burst(&self, src: &[T]) -> usize {
        // SAFETY: the producer side is Multi: no precondition.
        unsafe { self.enqueue_impl(src, false) }
    }
}

/// Multi-consumer operations, through `&self`.
impl<T: Copy, P: SyncMode> Ring<T, P, Multi> {
    /// Fills all of `dst`, or dequeues nothing if fewer values are available. Returns
    /// `dst.len()` or 0.
    #[inline]
    #[must_use = "a bulk dequeue returns 0 when nothing was dequeued"]
    pub fn dequeue_bulk(&self, dst: &mut [T]) -> usize {
        // SAFETY: the consumer side is Multi: no precondition.
        unsafe { self.dequeue_impl(dst, true) }
    }

    /// Dequeues as many values as are available, up to `dst.len()`, into the front of `dst`.
    /// Returns how many.
    #[inline]
    #[must_use = "the values are only in the first N elements of the slice"]
    pub fn dequeue_burst(&self, dst: &mut [T]) -> usize {
        // SAFETY: the consumer side is Multi: no precondition.
        unsafe { self.dequeue_impl(dst, false) }
    }
}

/// Single-producer access: `&mut self` operations and the [`SingleProducer`] handle.
impl<T: Copy, C: SyncMode> Ring<T, Single, C> {
    /// Enqueues all of `src`, or nothing if it does not fit. Returns `src.len()` or 0.
    #[inline]
    #[must_use = "a bulk enqueue returns 0 when nothing was enqueued"]
    pub fn enqueue_bulk(&mut self, src: &[T]) -> usize {
        // SAFETY: `&mut self` excludes every other user of the ring, handles included (they
        // borrow the ring or hold an `Arc`, which `&mut` excludes too).
        unsafe { self.enqueue_impl(src, true) }
    }

    /// Enqueues as many values from the front of `src` as fit. Returns how many.
    #[inline]
    #[must_use = "a burst enqueue may enqueue only part of the slice"]
    pub fn enqueue_burst(&mut self, src: &[T]) -> usize {
        // SAFETY: as in `enqueue_bulk`.
        unsafe { self.enqueue_impl(src, false) }
    }

    /// Claims the single producer side, borrowing the ring. Returns `None` while another
    /// [`SingleProducer`] exists.
    pub fn producer(&self) -> Option<SingleProducer<&Self>> {
        self.prod.claim().then(|| SingleProducer { ring: self })
    }

    /// Claims the single producer side, holding a clone of the `Arc`. Returns `None` while
    /// another [`SingleProducer`] exists.
    pub fn producer_arc(self: &Arc<Self>) -> Option<SingleProducer<Arc<Self>>> {
        self.prod.claim().then(|| SingleProducer {
            ring: Arc::clone(self),
        })
    }
}

/// Single-consumer access: `&mut self` operations and the [`SingleConsumer`] handle.
impl<T: Copy, P: SyncMode> Ring<T, P, Single> {
    /// Fills all of `dst`, or dequeues nothing if fewer values are available. Returns
    /// `dst.len()` or 0.
    #[inline]
    #[must_use = "a bulk dequeue returns 0 when nothing was dequeued"]
    pub fn dequeue_bulk(&mut self, dst: &mut [T]) -> usize {
        // SAFETY: `&mut self` excludes every other user of the ring, handles included.
        unsafe { self.dequeue_impl(dst, true) }
    }

    /// Dequeues as many values as are available, up to `dst.len()`, into the front of `dst`.
    /// Returns how many.
    #[inline]
    #[must_use = "the values are only in the first N elements of the slice"]
    pub fn dequeue_burst(&mut self, dst: &mut [T]) -> usize {
        // SAFETY: as in `dequeue_bulk`.
        unsafe { self.dequeue_impl(dst, false) }
    }

    /// Claims the single consumer side, borrowing the ring. Returns `None` while another
    /// [`SingleConsumer`] exists.
    pub fn consumer(&self) -> Option<SingleConsumer<&Self>> {
        self.cons.claim().then(|| SingleConsumer { ring: self })
    }

    /// Claims the single consumer side, holding a clone of the `Arc`. Returns `None` while
    /// another [`SingleConsumer`] exists.
    pub fn consumer_arc(self: &Arc<Self>) -> Option<SingleConsumer<Arc<Self>>> {
        self.cons.claim().then(|| SingleConsumer {
            ring: Arc::clone(self),
        })
    }
}

impl<T, P: SyncMode, C: SyncMode> fmt::Debug for Ring<T, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: diagnostic snapshot only.
        f.debug_struct("Ring")
            .field("producer", &P::NAME)
            .field("consumer", &C::NAME)
            .field("capacity", &self.capacity)
            .field("slots", &(self.mask as u64 + 1))
            .field("prod_head", &self.prod.head.load(Relaxed))
            .field("prod_tail", &self.prod.tail.load(Relaxed))
            .field("cons_head", &self.cons.head.load(Relaxed))
            .field("cons_tail", &self.cons.tail.load(Relaxed))
            .finish()
    }
}

/// A pointer to a [`Ring`] that a [`SingleProducer`] / [`SingleConsumer`] can hold: `&Ring`
/// or `Arc<Ring>`. Sealed (the handles rely on it always designating the same ring).
pub trait RingRef: sealed::Sealed {
    /// The ring's value type.
    type Item: Copy;
    /// The ring's producer mode.
    type Prod: SyncMode;
    /// The ring's consumer mode.
    type Cons: SyncMode;
    /// The ring.
    fn ring(&self) -> &Ring<Self::Item, Self::Prod, Self::Cons>;
}

impl<T: Copy, P: SyncMode, C: SyncMode> sealed::Sealed for &Ring<T, P, C> {}
impl<T: Copy, P: SyncMode, C: SyncMode> sealed::Sealed for Arc<Ring<T, P, C>> {}

impl<T: Copy, P: SyncMode, C: SyncMode> RingRef for &Ring<T, P, C> {
    type Item = T;
    type Prod = P;
    type Cons = C;
    #[inline(always)]
    fn ring(&self) -> &Ring<T, P, C> {
        self
    }
}

impl<T: Copy, P: SyncMode, C: SyncMode> RingRef for Arc<Ring<T, P, C>> {
    type Item = T;
    type Prod = P;
    type Cons = C;
    #[inline(always)]
    fn ring(&self) -> &Ring<T, P, C> {
        self
    }
}

/// The unique handle to the producer side of a ring whose producer mode is [`Single`].
///
/// Obtained from [`Ring::producer`] (`R = &Ring`) or [`Ring::producer_arc`] (`R = Arc<Ring>`).
/// Not `Clone`; its operations take `&mut self`. Dropping it releases the claim.
///
/// ```
/// use rvhost_hugepages::bulk_ring::SpscRing;
/// use std::sync::Arc;
///
/// let ring = Arc::new(SpscRing::<u64>::new(64).unwrap());
/// let mut tx = ring.producer_arc().unwrap();
/// let mut rx = ring.consumer_arc().unwrap();
/// assert!(ring.producer().is_none()); // already claimed
/// let t = std::thread::spawn(move || {
///     let mut sent = 0;
///     while sent < 1000 {
///         sent += tx.enqueue_burst(&[sent as u64; 16][..(1000 - sent).min(16)]);
///     }
/// });
/// let mut got = 0;
/// let mut buf = [0u64; 16];
/// while got < 1000 {
///     got += rx.dequeue_burst(&mut buf);
/// }
/// t.join().unwrap();
/// ```
///
/// A single-producer ring has no `&self` enqueue, so it cannot be fed from several threads:
///
/// ```compile_fail
/// use rvhost_hugepages::bulk_ring::SpscRing;
/// let ring = SpscRing::<u32>::new(8).unwrap();
/// let shared = &ring;
/// let _ = shared.enqueue_bulk(&[1]); // needs `&mut Ring` or a SingleProducer
/// ```
///
/// ```compile_fail
/// use rvhost_hugepages::bulk_ring::SpscRing;
/// let ring = SpscRing::<u32>::new(8).unwrap();
/// let tx = ring.producer().unwrap();
/// let tx2 = tx.clone(); // handles are not Clone
/// ```
pub struct SingleProducer<R: RingRef> {
    ring: R,
}

impl<R: RingRef<Prod = Single>> SingleProducer<R> {
    /// Enqueues all of `src`, or nothing if it does not fit. Returns `src.len()` or 0.
    #[inline]
    #[must_use = "a bulk enqueue returns 0 when nothing was enqueued"]
    pub fn enqueue_bulk(&mut self, src: &[R::Item]) -> usize {
        // SAFETY: this handle is the unique claim of the single producer side, and `&mut self`
        // keeps it from being used by two threads at once.
        unsafe { self.ring.ring().enqueue_impl(src, true) }
    }

    /// Enqueues as many values from the front of `src` as fit. Returns how many.
    #[inline]
    #[must_use = "a burst enqueue may enqueue only part of the slice"]
    pub fn enqueue_burst(&mut self, src: &[R::Item]) -> usize {
        // SAFETY: as in `enqueue_bulk`.
        unsafe { self.ring.ring().enqueue_impl(src, false) }
    }

    /// The ring (for `len`, `capacity`, and the consumer side when it is [`Multi`]).
    #[inline]
    pub fn ring(&self) -> &Ring<R::Item, Single, R::Cons> {
        self.ring.ring()
    }
}

impl<R: RingRef> Drop for SingleProducer<R> {
    fn drop(&mut self) {
        self.ring.ring().prod.unclaim();
    }
}

impl<R: RingRef> fmt::Debug for SingleProducer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleProducer")
            .field("ring", self.ring.ring())
            .finish()
    }
}

/// The unique handle to the consumer side of a ring whose consumer mode is [`Single`].
///
/// Obtained from [`Ring::consumer`] (`R = &Ring`) or [`Ring::consumer_arc`] (`R = Arc<Ring>`).
/// Not `Clone`; its operations take `&mut self`. Dropping it releases the claim.
pub struct SingleConsumer<R: RingRef> {
    ring: R,
}

impl<R: RingRef<Cons = Single>> SingleConsumer<R> {
    /// Fills all of `dst`, or dequeues nothing if fewer values are available. Returns
    /// `dst.len()` or 0.
    #[inline]
    #[must_use = "a bulk dequeue returns 0 when nothing was dequeued"]
    pub fn dequeue_bulk(&mut self, dst: &mut [R::Item]) -> usize {
        // SAFETY: this handle is the unique claim of the single consumer side, and `&mut self`
        // keeps it from being used by two threads at once.
        unsafe { self.ring.ring().dequeue_impl(dst, true) }
    }

    /// Dequeues as many values as are available, up to `dst.len()`, into the front of `dst`.
    /// Returns how many.
    #[inline]
    #[must_use = "the values are only in the first N elements of the slice"]
    pub fn dequeue_burst(&mut self, dst: &mut [R::Item]) -> usize {
        // SAFETY: as in `dequeue_bulk`.
        unsafe { self.ring.ring().dequeue_impl(dst, false) }
    }

    /// The ring (for `len`, `capacity`, and the producer side when it is [`Multi`]).
    #[inline]
    pub fn ring(&self) -> &Ring<R::Item, R::Prod, Single> {
        self.ring.ring()
    }
}

impl<R: RingRef> Drop for SingleConsumer<R> {
    fn drop(&mut self) {
        self.ring.ring().cons.unclaim();
    }
}

impl<R: RingRef> fmt::Debug for SingleConsumer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleConsumer")
            .field("ring", self.ring.ring())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn capacity_validation() {
        assert_eq!(
            MpmcRing::<u32>::new(0).unwrap_err(),
            RingError::ZeroCapacity
        );
        assert_eq!(
            MpmcRing::<u32>::new(MAX_CAPACITY + 1).unwrap_err(),
            RingError::CapacityTooLarge {
                requested: MAX_CAPACITY + 1,
                max: MAX_CAPACITY
            }
        );
        assert!(matches!(
            MpmcRing::<u32>::new(usize::MAX),
            Err(RingError::CapacityTooLarge { .. })
        ));
        // 2^31 slots of 1 MiB do not fit in the address space.
        assert_eq!(
            SpscRing::<[u8; 1 << 20]>::new(MAX_CAPACITY).unwrap_err(),
            RingError::AllocFailed {
                slots: MAX_CAPACITY,
                slot_size: 1 << 20
            }
        );
        // The largest capacity is accepted (zero-sized values: no allocation).
        let big = MpmcRing::<()>::new(MAX_CAPACITY).unwrap();
        assert_eq!(big.capacity(), MAX_CAPACITY);
        assert_eq!(big.enqueue_burst(&[(); 5]), 5);
        assert_eq!(big.len(), 5);
        assert_eq!(big.free_count(), MAX_CAPACITY - 5);
        let big = MpmcRing::<()>::new(MAX_CAPACITY - 1).unwrap();
        assert_eq!(big.mask as usize + 1, MAX_CAPACITY);
        // Error messages come from thiserror.
        assert_eq!(
            RingError::ZeroCapacity.to_string(),
            "ring capacity must be at least 1"
        );
    }

    #[test]
    fn exact_capacity_and_slot_count() {
        for cap in [1usize, 2, 3, 5, 7, 8, 9, 100, 1024, 1025] {
            let ring = MpmcRing::<u32>::new(cap).unwrap();
            assert_eq!(ring.capacity(), cap);
            assert_eq!(ring.mask as usize + 1, cap.next_power_of_two());
            let src: Vec<u32> = (0..cap as u32 + 3).collect();
            assert_eq!(ring.enqueue_burst(&src), cap, "cap {cap}");
            assert!(ring.is_full());
            assert_eq!(ring.free_count(), 0);
            assert_eq!(ring.enqueue_burst(&[1]), 0);
            assert_eq!(ring.enqueue_bulk(&[1]), 0);
            let mut dst = vec![0; cap + 3];
            assert_eq!(ring.dequeue_burst(&mut dst), cap);
            assert_eq!(&dst[..cap], &src[..cap]);
            assert!(ring.is_empty());
        }
    }

    #[test]
    fn bulk_is_all_or_nothing() {
        let ring = MpmcRing::<u32>::new(8).unwrap();
        let mut out = [0u32; 8];
        // Empty ring: bulk dequeue of anything fails, of nothing returns 0.
        assert_eq!(ring.dequeue_bulk(&mut out[..1]), 0);
        assert_eq!(ring.dequeue_bulk(&mut out[..0]), 0);
        assert_eq!(ring.enqueue_bulk(&[]), 0);
        // Longer than the capacity: never fits.
        assert_eq!(ring.enqueue_bulk(&[7; 9]), 0);
        assert!(ring.is_empty());
        assert_eq!(ring.enqueue_bulk(&[1, 2, 3, 4, 5]), 5);
        // Partial room: 3 free, 4 asked.
        assert_eq!(ring.enqueue_bulk(&[6, 7, 8, 9]), 0);
        assert_eq!(ring.len(), 5);
        assert_eq!(ring.enqueue_bulk(&[6, 7, 8]), 3);
        assert!(ring.is_full());
        assert_eq!(ring.enqueue_bulk(&[9]), 0);
        // Partial content: 8 there, 9 asked.
        let mut big = [0u32; 9];
        assert_eq!(ring.dequeue_bulk(&mut big), 0);
        assert_eq!(big, [0; 9], "a failed bulk dequeue writes nothing");
        assert_eq!(ring.dequeue_bulk(&mut out[..6]), 6);
        assert_eq!(&out[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(ring.dequeue_bulk(&mut out[..3]), 0);
        assert_eq!(ring.dequeue_bulk(&mut out[..2]), 2);
        assert_eq!(&out[..2], &[7, 8]);
        assert!(ring.is_empty());
    }

    #[test]
    fn burst_moves_what_it_can() {
        let ring = MpmcRing::<u32>::new(6).unwrap();
        let mut out = [0u32; 10];
        assert_eq!(ring.dequeue_burst(&mut out), 0);
        assert_eq!(ring.enqueue_burst(&[1, 2, 3, 4]), 4);
        assert_eq!(ring.enqueue_burst(&[5, 6, 7, 8]), 2, "only 2 free");
        assert_eq!(ring.enqueue_burst(&[9]), 0);
        assert_eq!(ring.dequeue_burst(&mut out[..3]), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(ring.dequeue_burst(&mut out), 3, "only 3 left");
        assert_eq!(&out[..3], &[4, 5, 6]);
        assert_eq!(ring.dequeue_burst(&mut out), 0);
        // A burst longer than the capacity fills the ring.
        let src: Vec<u32> = (100..120).collect();
        assert_eq!(ring.enqueue_burst(&src), 6);
        assert_eq!(ring.dequeue_burst(&mut out), 6);
        assert_eq!(&out[..6], &src[..6]);
    }

    #[test]
    fn slot_array_wrap_around() {
        // Capacity 8 = 8 slots: every offset of a 5-element copy, both in and out.
        let ring = MpmcRing::<u64>::new(8).unwrap();
        let mut next = 0u64;
        let mut expect = 0u64;
        for round in 0..40 {
            let src: Vec<u64> = (next..next + 5).collect();
            assert_eq!(ring.enqueue_bulk(&src), 5, "round {round}");
            next += 5;
            let mut out = [0u64; 5];
            assert_eq!(ring.dequeue_bulk(&mut out), 5);
            for v in out {
                assert_eq!(v, expect);
                expect += 1;
            }
        }
    }

    #[test]
    fn counter_wrap_around() {
        // Counters start 3 below u32::MAX, so they wrap during the first operations.
        fn check<P: SyncMode, C: SyncMode>(
            ring: &mut Ring<u32, P, C>,
            ops: impl Fn(&mut Ring<u32, P, C>, &[u32], &mut [u32]) -> (usize, usize),
        ) {
            let mut expect = 0u32;
            let mut next = 0u32;
            for _ in 0..20 {
                let src: Vec<u32> = (next..next + 7).collect();
                let mut out = [0u32; 7];
                let (e, d) = ops(ring, &src, &mut out);
                assert_eq!((e, d), (7, 7));
                next += 7;
                for v in out {
                    assert_eq!(v, expect);
                    expect += 1;
                }
                assert!(ring.is_empty());
            }
            // Fill across the wrap point, then check len/free.
            let src: Vec<u32> = (0..10).collect();
            let (e, _) = ops(ring, &src, &mut []);
            assert_eq!(e, 10);
            assert_eq!(ring.len(), 10);
            assert_eq!(ring.free_count(), 0);
        }
        let mut mpmc = MpmcRing::<u32>::with_start(10, u32::MAX - 3).unwrap();
        check(&mut mpmc, |r, s, d| (r.enqueue_bulk(s), r.dequeue_bulk(d)));
        let mut spsc = SpscRing::<u32>::with_start(10, u32::MAX - 3).unwrap();
        check(&mut spsc, |r, s, d| (r.enqueue_bulk(s), r.dequeue_bulk(d)));
    }

    #[test]
    fn single_mode_by_mut_and_handles() {
        let mut ring = SpscRing::<u32>::new(4).unwrap();
        assert_eq!(ring.modes(), ("single", "single"));
        assert_eq!(ring.enqueue_bulk(&[1, 2]), 2);
        let mut one = [0u32; 1];
        assert_eq!(ring.dequeue_bulk(&mut one), 1);
        assert_eq!(one, [1]);
        {
            let mut tx = ring.producer().unwrap();
            assert!(ring.producer().is_none(), "one producer handle at a time");
            let mut rx = ring.consumer().unwrap();
            assert!(ring.consumer().is_none(), "one consumer handle at a time");
            assert_eq!(tx.enqueue_burst(&[3, 4, 5, 6]), 3);
            assert_eq!(tx.ring().len(), 4);
            let mut out = [0u32; 8];
            assert_eq!(rx.dequeue_burst(&mut out), 4);
            assert_eq!(&out[..4], &[2, 3, 4, 5]);
            assert!(rx.ring().is_empty());
            let _ = format!("{tx:?} {rx:?}");
        }
        // Dropped handles release their claims.
        let tx = ring.producer();
        assert!(tx.is_some());
        drop(tx);
        assert_eq!(ring.enqueue_bulk(&[7]), 1);

        let arc = Arc::new(MpscRing::<u32>::new(4).unwrap());
        let mut rx = arc.consumer_arc().unwrap();
        assert!(arc.consumer_arc().is_none());
        assert!(arc.consumer().is_none());
        assert_eq!(arc.enqueue_bulk(&[9, 10]), 2);
        let mut out = [0u32; 2];
        assert_eq!(rx.dequeue_bulk(&mut out), 2);
        assert_eq!(out, [9, 10]);
        drop(rx);
        assert!(arc.consumer().is_some());

        let spmc = SpmcRing::<u32>::new(4).unwrap();
        let mut tx = spmc.producer().unwrap();
        assert_eq!(tx.enqueue_bulk(&[1, 2, 3]), 3);
        assert_eq!(tx.ring().dequeue_bulk(&mut out), 2);
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn single_cache_refreshes_when_needed() {
        // The producer's cached consumer tail lags; a full-looking ring must re-read it.
        let ring = SpmcRing::<u32>::new(4).unwrap();
        let mut tx = ring.producer().unwrap();
        assert_eq!(tx.enqueue_bulk(&[1, 2, 3, 4]), 4);
        assert_eq!(tx.enqueue_bulk(&[5]), 0);
        let mut out = [0u32; 3];
        assert_eq!(ring.dequeue_bulk(&mut out), 3);
        assert_eq!(tx.enqueue_bulk(&[5, 6, 7]), 3);
        assert_eq!(tx.enqueue_burst(&[8, 9]), 0);
        let mut out = [0u32; 4];
        assert_eq!(ring.dequeue_bulk(&mut out), 4);
        assert_eq!(out, [4, 5, 6, 7]);
    }

    #[test]
    fn drop_with_items_inside() {
        // T: Copy, so the ring never drops its values; dropping a non-empty ring (also across
        // its wrap point, and through the last Arc held by handles on other threads) is fine.
        let ring = MpmcRing::<u64>::new(1000).unwrap();
        assert_eq!(ring.enqueue_bulk(&[0xdead_beef; 700]), 700);
        let mut out = [0u64; 500];
        assert_eq!(ring.dequeue_bulk(&mut out), 500);
        assert_eq!(ring.enqueue_bulk(&[1; 800]), 800);
        assert!(ring.is_full());
        drop(ring);

        let ring = Arc::new(SpscRing::<[u8; 24]>::new(16).unwrap());
        let mut tx = ring.producer_arc().unwrap();
        let rx = ring.consumer_arc().unwrap();
        drop(ring);
        assert_eq!(tx.enqueue_burst(&[[7; 24]; 20]), 16);
        std::thread::spawn(move || drop(tx)).join().unwrap();
        std::thread::spawn(move || drop(rx)).join().unwrap();
    }

    #[test]
    fn debug_output() {
        let ring = MpscRing::<u32>::new(3).unwrap();
        let s = format!("{ring:?}");
        assert!(s.contains("producer: \"multi\""), "{s}");
        assert!(s.contains("consumer: \"single\""), "{s}");
        assert!(s.contains("slots: 4"), "{s}");
    }

    // ---- property test against a VecDeque model ----

    #[derive(Debug, Clone)]
    enum Op {
        EnqBulk(Vec<u32>),
        EnqBurst(Vec<u32>),
        DeqBulk(usize),
        DeqBurst(usize),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(any::<u32>(), 0..40).prop_map(Op::EnqBulk),
            prop::collection::vec(any::<u32>(), 0..40).prop_map(Op::EnqBurst),
            (0usize..40).prop_map(Op::DeqBulk),
            (0usize..40).prop_map(Op::DeqBurst),
        ]
    }

    /// The four operations, whatever the modes and access path.
    trait Ops {
        fn enq(&mut self, src: &[u32], bulk: bool) -> usize;
        fn deq(&mut self, dst: &mut [u32], bulk: bool) -> usize;
        fn state(&self) -> (usize, usize, bool, bool);
    }

    fn state_of<P: SyncMode, C: SyncMode>(r: &Ring<u32, P, C>) -> (usize, usize, bool, bool) {
        (r.len(), r.free_count(), r.is_empty(), r.is_full())
    }

    impl Ops for MpmcRing<u32> {
        fn enq(&mut self, src: &[u32], bulk: bool) -> usize {
            let shared: &Self = self;
            if bulk {
                shared.enqueue_bulk(src)
            } else {
                shared.enqueue_burst(src)
            }
        }
        fn deq(&mut self, dst: &mut [u32], bulk: bool) -> usize {
            let shared: &Self = self;
            if bulk {
                shared.dequeue_bulk(dst)
            } else {
                shared.dequeue_burst(dst)
            }
        }
        fn state(&self) -> (usize, usize, bool, bool) {
            state_of(self)
        }
    }

    impl Ops for SpscRing<u32> {
        fn enq(&mut self, src: &[u32], bulk: bool) -> usize {
            if bulk {
                self.enqueue_bulk(src)
            } else {
                self.enqueue_burst(src)
            }
        }
        fn deq(&mut self, dst: &mut [u32], bulk: bool) -> usize {
            if bulk {
                self.dequeue_bulk(dst)
            } else {
                self.dequeue_burst(dst)
            }
        }
        fn state(&self) -> (usize, usize, bool, bool) {
            state_of(self)
        }
    }

    impl Ops for MpscRing<u32> {
        fn enq(&mut self, src: &[u32], bulk: bool) -> usize {
            let shared: &Self = self;
            if bulk {
                shared.enqueue_bulk(src)
            } else {
                shared.enqueue_burst(src)
            }
        }
        fn deq(&mut self, dst: &mut [u32], bulk: bool) -> usize {
            if bulk {
                self.dequeue_bulk(dst)
            } else {
                self.dequeue_burst(dst)
            }
        }
        fn state(&self) -> (usize, usize, bool, bool) {
            state_of(self)
        }
    }

    /// An SP/SC ring used through its `Arc` handles (the handle paths).
    struct Handles {
        tx: SingleProducer<Arc<SpscRing<u32>>>,
        rx: SingleConsumer<Arc<SpscRing<u32>>>,
    }

    impl Ops for Handles {
        fn enq(&mut self, src: &[u32], bulk: bool) -> usize {
            if bulk {
                self.tx.enqueue_bulk(src)
            } else {
                self.tx.enqueue_burst(src)
            }
        }
        fn deq(&mut self, dst: &mut [u32], bulk: bool) -> usize {
            if bulk {
                self.rx.dequeue_bulk(dst)
            } else {
                self.rx.dequeue_burst(dst)
            }
        }
        fn state(&self) -> (usize, usize, bool, bool) {
            state_of(self.tx.ring())
        }
    }

    /// An SP/MC ring: the producer through an `Arc` handle, the consumers through `&self`.
    struct SpmcHandle {
        tx: SingleProducer<Arc<SpmcRing<u32>>>,
    }

    impl Ops for SpmcHandle {
        fn enq(&mut self, src: &[u32], bulk: bool) -> usize {
            if bulk {
                self.tx.enqueue_bulk(src)
            } else {
                self.tx.enqueue_burst(src)
            }
        }
        fn deq(&mut self, dst: &mut [u32], bulk: bool) -> usize {
            let ring = self.tx.ring();
            if bulk {
                ring.dequeue_bulk(dst)
            } else {
                ring.dequeue_burst(dst)
            }
        }
        fn state(&self) -> (usize, usize, bool, bool) {
            state_of(self.tx.ring())
        }
    }

    fn run_model(ring: &mut dyn Ops, cap: usize, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut model: VecDeque<u32> = VecDeque::with_capacity(cap);
        for op in ops {
            match op {
                Op::EnqBulk(src) | Op::EnqBurst(src) => {
                    let bulk = matches!(op, Op::EnqBulk(_));
                    let free = cap - model.len();
                    let expect = if bulk {
                        if src.len() <= free { src.len() } else { 0 }
                    } else {
                        src.len().min(free)
                    };
                    let got = ring.enq(src, bulk);
                    prop_assert_eq!(got, expect, "{:?}", op);
                    model.extend(&src[..got]);
                }
                Op::DeqBulk(n) | Op::DeqBurst(n) => {
                    let bulk = matches!(op, Op::DeqBulk(_));
                    let n = *n;
                    let expect = if bulk {
                        if n <= model.len() { n } else { 0 }
                    } else {
                        n.min(model.len())
                    };
                    let sentinel = 0xAAAA_5555;
                    let mut dst = vec![sentinel; n];
                    let got = ring.deq(&mut dst, bulk);
                    prop_assert_eq!(got, expect, "{:?}", op);
                    let want: Vec<u32> = model.drain(..got).collect();
                    prop_assert_eq!(&dst[..got], &want[..]);
                    prop_assert!(
                        dst[got..].iter().all(|&v| v == sentinel),
                        "wrote past count"
                    );
                }
            }
            let len = model.len();
            prop_assert_eq!(ring.state(), (len, cap - len, len == 0, len == cap));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_vecdeque_model(
            cap in 1usize..48,
            near_wrap in any::<bool>(),
            ops in prop::collection::vec(op_strategy(), 1..120),
        ) {
            // Half of the cases start the u32 counters just below the wrap point.
            let start = if near_wrap { u32::MAX - 200 } else { 0 };
            run_model(&mut MpmcRing::<u32>::with_start(cap, start).unwrap(), cap, &ops)?;
            run_model(&mut SpscRing::<u32>::with_start(cap, start).unwrap(), cap, &ops)?;
            run_model(&mut MpscRing::<u32>::with_start(cap, start).unwrap(), cap, &ops)?;
            let spsc = Arc::new(SpscRing::<u32>::with_start(cap, start).unwrap());
            let mut handles = Handles {
                tx: spsc.producer_arc().unwrap(),
                rx: spsc.consumer_arc().unwrap(),
            };
            run_model(&mut handles, cap, &ops)?;
            let spmc = Arc::new(SpmcRing::<u32>::with_start(cap, start).unwrap());
            let mut spmc = SpmcHandle { tx: spmc.producer_arc().unwrap() };
            run_model(&mut spmc, cap, &ops)?;
        }
    }
}
