//! The packed virtqueue from the device side (virtio 1.2 §2.8): reading available descriptor
//! chains from the one descriptor ring, writing used descriptors (one at a time, or a batch
//! whose first element is stored last), event suppression in both directions, and the vring
//! base with its wrap counters (vhost-user GET/SET_VRING_BASE).
//!
//! A position in the ring is a [`RingPos`]: a slot below the queue size and the wrap counter
//! of the lap it is in. A descriptor at the device's available position is available when its
//! AVAIL bit equals the available wrap counter and its USED bit does not ([`desc_is_avail`]);
//! the device writes a used descriptor with both bits equal to the used wrap counter.
//!
//! Reading a chain takes two steps, as the split ring's `avail_head` and `chain` do:
//!
//! 1. [`PackedQueue::avail_chain`] finds the chain's shape: its slots (descriptors linked by
//!    `NEXT` in consecutive slots, wrapping at the ring's end), its buffer id (from the last
//!    descriptor, §2.8.6) and its first descriptor. A fault here — a descriptor of the chain not
//!    marked available, a chain longer than the room the device has, a buffer id beyond the
//!    queue size — leaves no way to know where the chain ends or whom to return it to: the
//!    caller marks the queue broken.
//! 2. [`PackedQueue::chain`] walks the chain's buffers as host slices, following an indirect
//!    table. A fault here (a buffer outside guest memory, the wrong permission, a bad indirect
//!    length, INDIRECT chained with NEXT) is a [`ChainError`] as on the split ring: the chain's
//!    shape is known, so the caller may return it used with length 0.
//!
//! Everything read from guest memory is hostile: every index is reduced or checked before it
//! is used, loops are bounded by the chain's slot count or the indirect table's length, byte
//! counts are summed in `u64` and bounded. Nothing here panics.
//!
//! Memory ordering: the driver writes a chain's descriptors, then the first one's flags with a
//! release (its memory barrier before the flags, §2.8.21.1); [`PackedQueue::desc_is_avail`]
//! loads those flags with `Acquire`, so the chain's descriptors read afterwards are the ones the
//! driver wrote. The device writes a used descriptor's length, id and flags (the slot's last 8
//! bytes) in one atomic store with `Release` ([`PackedQueue::write_used`]); the driver reads
//! the flags, then the rest after its read barrier, and sees them from the same store.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering, fence};

use thiserror::Error;

use super::split::{ChainError, MAX_INDIRECT};
use super::{VringAddrs, VringError};
use crate::memory::{DirtyLog, Gpa, GuestArea, GuestMemory, GuestSlice, Pod, TranslationCache};
use crate::protocol::payload::PackedVringBase;

/// The buffer continues in the next slot of the ring (`VIRTQ_DESC_F_NEXT`).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The buffer is device-writable (`VIRTQ_DESC_F_WRITE`); in a used descriptor: its length is
/// meaningful.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// The buffer holds an indirect table of [`PvirtqDesc`] (`VIRTQ_DESC_F_INDIRECT`).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// The driver's available bit (`VIRTQ_DESC_F_AVAIL`, bit 7).
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// The device's used bit (`VIRTQ_DESC_F_USED`, bit 15).
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;

/// Event suppression flags: notifications wanted.
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression flags: no notifications.
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression flags: a notification when the descriptor at `off_wrap` is made
/// available / used (only with `VIRTIO_RING_F_EVENT_IDX`).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;
/// The bits of the event suppression flags the spec defines (the rest is reserved).
const RING_EVENT_FLAGS_MASK: u16 = 3;

/// Largest packed queue size (virtio 1.2 §2.8: indexes are 15 bits).
pub const MAX_PACKED_SIZE: u16 = 32768;
/// Bytes of a packed descriptor.
pub const PACKED_DESC_SIZE: u64 = 16;
/// Descriptors read, checked and taken together when they allow it
/// ([`PackedQueue::avail_batch`]): the 4 slots of one 64-byte line (DPDK's
/// `PACKED_BATCH_SIZE`).
pub const BATCH: usize = 4;
// The batch code writes its 4 elements out.
const _: () = assert!(BATCH == 4);
/// Bytes of an event suppression structure.
pub const EVENT_SUPPRESS_SIZE: u64 = 4;

/// Offsets in a [`PvirtqDesc`]: the length, then the id (at 12), then the flags; a used
/// element is written as the 8 bytes from the length on ([`slot_tail`]).
const OFF_LEN: usize = 8;
const OFF_FLAGS: usize = 14;
const _: () = assert!(OFF_FLAGS == OFF_LEN + 6);

/// A packed-ring descriptor (`struct pvirtq_desc`, virtio 1.2 §2.8.13), 16 bytes. The same
/// layout serves available descriptors, used descriptors and indirect table entries.
#[doc(alias = "pvirtq_desc")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PvirtqDesc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length (in a used descriptor: the bytes the device wrote).
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
}

// SAFETY: repr(C) of u64, u32, u16, u16 at offsets 0, 8, 12, 14: 16 bytes without padding, and
// every bit pattern is a valid value.
unsafe impl Pod for PvirtqDesc {}

impl PvirtqDesc {
    /// The descriptor with its fields converted from little-endian (as read from the ring) to
    /// native, or back (the same swap both ways).
    #[inline]
    pub fn swap_le(self) -> PvirtqDesc {
        PvirtqDesc {
            addr: u64::from_le(self.addr),
            len: u32::from_le(self.len),
            id: u16::from_le(self.id),
            flags: u16::from_le(self.flags),
        }
    }
}

/// A position in the packed ring: a slot and the wrap counter of the lap it is in. Both
/// sides start at slot 0 with the wrap counter set ([`RingPos::START`]).
///
/// Kept as one word (slot in the low 16 bits, wrap counter in bit 16): a position is stored
/// and loaded whole. As a `u16` and a `bool`, the compiler stored the two fields apart and read
/// them back together with neighbouring fields, a load the CPU cannot forward from two stores
/// still in its store buffer, so it waited for every older store (the packets' guest lines).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RingPos(u32);

impl std::fmt::Debug for RingPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingPos")
            .field("idx", &self.idx())
            .field("wrap", &self.wrap())
            .finish()
    }
}

impl Default for RingPos {
    fn default() -> Self {
        RingPos::START
    }
}

const WRAP_BIT: u32 = 1 << 16;

impl RingPos {
    /// Where both wrap counters start (virtio 1.2 §2.8.1: initialised to 1).
    pub const START: RingPos = RingPos::new(0, true);

    /// A position.
    #[inline(always)]
    pub const fn new(idx: u16, wrap: bool) -> RingPos {
        RingPos(idx as u32 | if wrap { WRAP_BIT } else { 0 })
    }

    /// Slot, below the queue size.
    #[inline(always)]
    pub const fn idx(self) -> u16 {
        self.0 as u16
    }

    /// Wrap counter: flips each time the slot wraps to 0.
    #[inline(always)]
    pub const fn wrap(self) -> bool {
        self.0 & WRAP_BIT != 0
    }

    /// The position `n` slots further in a ring of `size`: each pass over the ring's end flips
    /// the wrap counter. A `size` of 0 leaves the position as it is.
    /// Inlined, the general case out of line: called, it cost some 10 instructions twice a
    /// batch.
    #[inline(always)]
    pub fn advance(self, n: u16, size: u16) -> RingPos {
        let t = u32::from(self.idx()) + u32::from(n);
        let size = u32::from(size);
        if t < size {
            return RingPos((self.0 & WRAP_BIT) | t);
        }
        if t < 2 * size {
            // One pass over the end: the data path's case (a slot below the size, moved by
            // less than a lap), without a division.
            return RingPos(((self.0 & WRAP_BIT) ^ WRAP_BIT) | (t - size));
        }
        self.advance_laps(t, size)
    }

    /// [`advance`](Self::advance) to `t` (slot index plus the slots moved) at least a lap on.
    #[cold]
    #[inline(never)]
    fn advance_laps(self, t: u32, size: u32) -> RingPos {
        if size == 0 {
            return self;
        }
        let laps = t / size;
        // t % size < size <= 32768 fits in u16.
        RingPos::new((t % size) as u16, self.wrap() ^ (laps % 2 == 1))
    }

    /// The position on a ring of `2 * size` slots that counts both laps: distances between
    /// positions less than a lap apart are differences modulo `2 * size`.
    #[inline]
    fn extended(self, size: u16) -> u32 {
        let size = u32::from(size);
        let e = u32::from(self.idx()) + if self.wrap() { size } else { 0 };
        // A slot below the size (every position the rings keep) needs no reduction.
        if e < 2 * size {
            e
        } else {
            e % (2 * size).max(1)
        }
    }

    /// Slots from `from` to `self` (going forward, less than two laps), in a ring of `size`.
    #[inline]
    pub fn distance_from(self, from: RingPos, size: u16) -> u32 {
        let m = (2 * u32::from(size)).max(1);
        let (a, b) = (self.extended(size), from.extended(size));
        // Both are below `m` (or 0 when the size is 0).
        if a >= b { a - b } else { a + m - b }
    }
}

/// Encodes a position as the spec's 16-bit form: slot in bits 0-14, wrap counter in bit 15
/// (the event suppression's `off_wrap`, and each half of the vhost-user vring base).
#[inline]
pub const fn pack_base(idx: u16, wrap: bool) -> u16 {
    (idx & 0x7fff) | (wrap as u16) << 15
}

/// Decodes [`pack_base`]'s form into (slot, wrap counter).
#[inline]
pub const fn unpack_base(v: u16) -> (u16, bool) {
    (v & 0x7fff, v & 0x8000 != 0)
}

/// The vhost-user vring base of a packed queue (GET_VRING_BASE's reply, SET_VRING_BASE's
/// payload, [`PackedVringBase`]): bits 0-14 the next available slot, bit 15 the available wrap
/// counter, bits 16-30 the next used slot, bit 31 the used wrap counter.
#[inline]
pub const fn encode_vring_base(avail: RingPos, used: RingPos) -> u32 {
    PackedVringBase {
        avail_idx: avail.idx(),
        avail_wrap: avail.wrap(),
        used_idx: used.idx(),
        used_wrap: used.wrap(),
    }
    .to_num()
}

/// Decodes a packed queue's vring base into (available, used) positions, refusing a slot
/// beyond the queue size ([`VringError::BadBase`]).
pub fn decode_vring_base(num: u32, size: u16) -> Result<(RingPos, RingPos), VringError> {
    let b = PackedVringBase::from_num(num);
    if b.avail_idx >= size || b.used_idx >= size {
        return Err(VringError::BadBase(num));
    }
    Ok((
        RingPos::new(b.avail_idx, b.avail_wrap),
        RingPos::new(b.used_idx, b.used_wrap),
    ))
}

/// Whether a descriptor with `flags` is available at a position whose wrap counter is `wrap`:
/// its AVAIL bit equals the wrap counter and its USED bit does not (virtio 1.2 §2.8.1).
#[inline]
pub const fn desc_is_avail(flags: u16, wrap: bool) -> bool {
    let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
    let used = flags & VIRTQ_DESC_F_USED != 0;
    avail == wrap && used != wrap
}

/// Whether a descriptor with `flags` is used at a position whose wrap counter is `wrap`: both
/// bits equal the wrap counter (what the driver checks).
#[inline]
pub const fn desc_is_used(flags: u16, wrap: bool) -> bool {
    let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
    let used = flags & VIRTQ_DESC_F_USED != 0;
    avail == wrap && used == wrap
}

/// The AVAIL and USED bits of a used descriptor written at a position whose wrap counter is
/// `wrap` (both equal to it).
#[inline]
pub const fn used_bits(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
    } else {
        0
    }
}

/// The AVAIL and USED bits of a descriptor the driver makes available at a position whose wrap
/// counter is `wrap` (AVAIL = wrap, USED = !wrap).
#[inline]
pub const fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL
    } else {
        VIRTQ_DESC_F_USED
    }
}

/// `vring_need_event` on a packed ring: whether the event position `event` lies in
/// `[old, new)`, the positions a batch of used (or available) descriptors covered, with
/// positions compared over both laps (the wrap counters tell which lap each one is in).
#[inline]
pub fn need_event(event: RingPos, old: RingPos, new: RingPos, size: u16) -> bool {
    // event in [old, new)  <=>  new - event - 1 < new - old  (mod 2 * size)
    let m = (2 * u32::from(size)).max(1);
    let (e, o, n) = (event.extended(size), old.extended(size), new.extended(size));
    (n + 2 * m - e - 1) % m < (n + m - o) % m
}

/// An event suppression setting (`struct pvirtq_event_suppress`, virtio 1.2 §2.8.14).
#[doc(alias = "pvirtq_event_suppress")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSuppress {
    /// `RING_EVENT_FLAGS_ENABLE`: notify after every batch.
    Enable,
    /// `RING_EVENT_FLAGS_DISABLE`: never notify.
    Disable,
    /// `RING_EVENT_FLAGS_DESC`: notify when the descriptor at this position is made
    /// available / used (EVENT_IDX).
    Desc(RingPos),
}

impl EventSuppress {
    /// The structure's two fields `(off_wrap, flags)`.
    pub fn fields(self) -> (u16, u16) {
        match self {
            EventSuppress::Enable => (0, RING_EVENT_FLAGS_ENABLE),
            EventSuppress::Disable => (0, RING_EVENT_FLAGS_DISABLE),
            EventSuppress::Desc(p) => (pack_base(p.idx(), p.wrap()), RING_EVENT_FLAGS_DESC),
        }
    }

    /// Reads the fields as the other side wrote them: the reserved flags value 3 reads as
    /// `Enable` (notifying too often is harmless, never notifying is not).
    pub fn from_fields(off_wrap: u16, flags: u16) -> EventSuppress {
        match flags & RING_EVENT_FLAGS_MASK {
            RING_EVENT_FLAGS_DISABLE => EventSuppress::Disable,
            RING_EVENT_FLAGS_DESC => {
                let (idx, wrap) = unpack_base(off_wrap);
                EventSuppress::Desc(RingPos::new(idx, wrap))
            }
            _ => EventSuppress::Enable,
        }
    }
}

/// A packed queue's three parts, translated and checked against its size and the memory table.
/// SET_VRING_ADDR's three addresses name them: `desc` the descriptor ring, `avail` the driver
/// event suppression area, `used` the device event suppression area.
#[derive(Debug, Clone)]
pub struct PackedRings {
    /// `struct pvirtq_desc[size]` (the descriptor ring).
    pub desc: GuestArea,
    /// The driver event suppression structure: the driver's wishes about used notifications
    /// (read by the device).
    pub driver: GuestArea,
    /// The device event suppression structure: the device's wishes about available
    /// notifications (written by the device).
    pub device: GuestArea,
}

impl PackedRings {
    /// Byte lengths of (descriptor ring, driver area, device area) for `size` entries.
    pub const fn lengths(size: u16) -> (u64, u64, u64) {
        (
            PACKED_DESC_SIZE * size as u64,
            EVENT_SUPPRESS_SIZE,
            EVENT_SUPPRESS_SIZE,
        )
    }

    /// Checks the queue size (1..=32768, any value: a packed ring need not be a power of two),
    /// the parts' alignment (16, 4, 4; virtio 1.2 §2.8.10) and translates each into one region.
    pub fn new(
        mem: &GuestMemory,
        addrs: &VringAddrs,
        size: u32,
    ) -> Result<PackedRings, VringError> {
        if size == 0 || size > u32::from(MAX_PACKED_SIZE) {
            return Err(VringError::BadSize(size));
        }
        let (dl, el, _) = PackedRings::lengths(size as u16);
        let parts = [
            ("descriptor", addrs.desc, 16, dl),
            ("driver event", addrs.avail, 4, el),
            ("device event", addrs.used, 4, el),
        ];
        for (ring, va, align, _) in parts {
            if va.raw() % align != 0 {
                return Err(VringError::Misaligned {
                    ring,
                    addr: va.raw(),
                    align,
                });
            }
        }
        let [desc, driver, device] = parts.map(|(ring, va, _, len)| {
            mem.fva_area(va, len).ok_or(VringError::Unmapped {
                ring,
                addr: va.raw(),
                len,
            })
        });
        let desc = desc?;
        // The data path reads descriptors as two aligned words: the host mapping must keep
        // the 16-byte alignment (it does unless a region's host and guest offsets differ).
        let host = desc.slice().as_ptr() as u64;
        if host % 16 != 0 {
            return Err(VringError::Misaligned {
                ring: "descriptor (host mapping)",
                addr: host,
                align: 16,
            });
        }
        Ok(PackedRings {
            desc,
            driver: driver?,
            device: device?,
        })
    }
}

/// Why a packed ring's available chain could not be taken: the chain's shape is unknown, so
/// the queue is broken (see the module documentation). Faults of the buffers are [`ChainError`]s.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PackedError {
    /// A descriptor after the chain's first is not marked available for its lap (AVAIL/USED
    /// bits inconsistent with the wrap counter): the chain runs into descriptors the driver did
    /// not make available.
    #[error("descriptor at slot {slot} of a chain is not marked available")]
    NotAvailable {
        /// The slot.
        slot: u16,
    },
    /// The chain is longer than the slots the device may read (the queue size, less the slots
    /// of chains not yet returned).
    #[error("chain longer than the {max} slots available to it")]
    TooLong {
        /// The slots it could have.
        max: u16,
    },
    /// The buffer id is beyond the queue size.
    #[error("buffer id {id} is beyond the queue size {size}")]
    BadId {
        /// The id.
        id: u16,
        /// Queue size.
        size: u16,
    },
    /// The buffer id is already in flight (made available again before it was used).
    #[error("buffer id {0} is already in flight")]
    IdInFlight(u16),
}

/// An available chain's shape (see [`PackedQueue::avail_chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvailChain {
    /// Where the chain starts in the ring. (Its used descriptor goes wherever the device's
    /// used position is when it is returned: the same slot only when buffers are used in the
    /// order they came.)
    pub head: RingPos,
    /// Buffer id (from the chain's last descriptor).
    pub id: u16,
    /// Ring slots the chain takes (the next chain starts this many slots further).
    pub count: u16,
    /// The first descriptor, as read after its flags showed it available.
    pub first: PvirtqDesc,
}

impl AvailChain {
    /// The position after the chain: where the next chain starts.
    #[inline]
    pub fn next(&self, size: u16) -> RingPos {
        self.head.advance(self.count, size)
    }
}

/// A used element to write: buffer `id`, `len` bytes written, `count` ring slots the
/// element's chains took (the next used descriptor is written `count` slots further; with
/// IN_ORDER, one element may stand for several chains, the last one's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackedUsed {
    /// Buffer id.
    pub id: u16,
    /// Bytes written into the buffer's device-writable part.
    pub len: u32,
    /// Ring slots covered.
    pub count: u16,
}

/// The descriptor at `p`, read as two volatile aligned words (the guest may write them
/// concurrently).
///
/// # Safety
///
/// `p` must be a slot of a descriptor ring: 16 readable bytes, 16-byte aligned.
#[inline(always)]
unsafe fn read_desc(p: *const u8) -> PvirtqDesc {
    // SAFETY: the caller vouches for 16 readable, aligned bytes at `p`.
    let (addr, rest) = unsafe {
        (
            u64::from_le(std::ptr::read_volatile(p.cast::<u64>())),
            u64::from_le(std::ptr::read_volatile(p.add(OFF_LEN).cast::<u64>())),
        )
    };
    PvirtqDesc {
        addr,
        len: rest as u32,
        id: (rest >> 32) as u16,
        flags: (rest >> 48) as u16,
    }
}

/// Used element `u` at a slot of wrap counter `wrap` as the slot's last 8 bytes, as they are
/// in memory (little-endian): length (bytes 8-11), id (12-13), flags (14-15: AVAIL and USED
/// equal to `wrap`, WRITE when the length is not 0).
#[inline(always)]
fn slot_tail(u: PackedUsed, wrap: bool) -> u64 {
    let write = if u.len != 0 { VIRTQ_DESC_F_WRITE } else { 0 };
    let flags = used_bits(wrap) | write;
    (u64::from(u.len) | u64::from(u.id) << 32 | u64::from(flags) << 48).to_le()
}

impl PackedUsed {
    /// The element as one word (id in bits 0-15, slots in 16-31, length in 32-63): the async
    /// path keeps used entries of both ring layouts in one queue of words until their packet
    /// retires (a split ring's are [`used_word`](super::split::used_word)s).
    #[inline(always)]
    pub const fn to_word(self) -> u64 {
        self.id as u64 | (self.count as u64) << 16 | (self.len as u64) << 32
    }

    /// The element [`to_word`](Self::to_word) made.
    #[inline(always)]
    pub const fn from_word(w: u64) -> PackedUsed {
        PackedUsed {
            id: w as u16,
            count: (w >> 16) as u16,
            len: (w >> 32) as u32,
        }
    }
}

/// A used descriptor ready for its slot: the slot's index and its last 8 bytes
/// (`slot_tail`: length, id, flags with the slot's wrap counter), both computed when the
/// chain is returned ([`StagedUsed::new`]). Writing a batch of them is one store each: with
/// the ring positions and words worked out at the write, a burst's used writes cost some 25
/// instructions per element (callgrind, loop-tput packed 64 B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedUsed {
    word: u64,
    idx: u16,
}

impl StagedUsed {
    /// Used element `u` for the slot at `at`.
    #[inline(always)]
    pub fn new(at: RingPos, u: PackedUsed) -> StagedUsed {
        StagedUsed {
            word: slot_tail(u, at.wrap()),
            idx: at.idx(),
        }
    }

    /// The buffer id returned.
    #[inline(always)]
    pub fn id(self) -> u16 {
        (u64::from_le(self.word) >> 32) as u16
    }

    /// The slot the descriptor goes to.
    #[inline(always)]
    pub fn idx(self) -> u16 {
        self.idx
    }
}

/// Calls `f` with each element of `batch` but the first, with its index, in the order
/// [`PackedQueue::write_staged_but_first`] stores them: those after the first `head` (the
/// first slot's line) first, then the rest of that line.
#[inline(always)]
fn in_line_order(batch: &[StagedUsed], head: usize, mut f: impl FnMut(usize, &StagedUsed)) {
    for (k, u) in batch.iter().enumerate().skip(head) {
        f(k, u);
    }
    for (k, u) in batch.iter().enumerate().take(head).skip(1) {
        f(k, u);
    }
}

/// Marks in `log` the used descriptors of `batch`, each at its slot's guest address in the
/// descriptor ring at `desc_gpa` (a packed ring's used descriptors are written in place).
pub fn mark_used_slots(log: &DirtyLog, desc_gpa: u64, batch: &[StagedUsed]) {
    for u in batch {
        log.mark(
            desc_gpa + PACKED_DESC_SIZE * u64::from(u.idx),
            PACKED_DESC_SIZE,
        );
    }
}

/// The buffer ids a device has taken and not yet returned: a chain whose id is still in
/// flight is refused ([`PackedError::IdInFlight`]), so a driver cannot make the device return
/// one buffer twice.
///
/// A byte per id, not a bit: as a bitmap, a batch's ids cost ~25 instructions each to check
/// and set and ~15 to clear (callgrind, loop-tput packed 64 B), a tenth of a round trip. No
/// count is kept either (it cost a load and an add per id returned).
#[derive(Debug, Clone, Default)]
pub struct InFlightIds {
    /// 1 while the id is in flight; one byte per id below the queue's size.
    taken: Box<[u8]>,
}

impl InFlightIds {
    /// No id in flight, for a queue of `size` (ids below it).
    pub fn new(size: u16) -> InFlightIds {
        InFlightIds {
            taken: vec![0; usize::from(size)].into(),
        }
    }

    /// Ids in flight (counted: for tests and diagnostics).
    pub fn count(&self) -> usize {
        self.taken.iter().filter(|&&t| t != 0).count()
    }

    /// Whether `id` is in flight.
    #[inline]
    pub fn contains(&self, id: u16) -> bool {
        self.taken.get(usize::from(id)).is_some_and(|&t| t != 0)
    }

    /// Records `id` as taken: [`PackedError::IdInFlight`] if it already is,
    /// [`PackedError::BadId`] if it is beyond the ids tracked.
    pub fn insert(&mut self, id: u16) -> Result<(), PackedError> {
        let size = self.taken.len() as u16;
        let Some(t) = self.taken.get_mut(usize::from(id)) else {
            return Err(PackedError::BadId { id, size });
        };
        if *t != 0 {
            return Err(PackedError::IdInFlight(id));
        }
        *t = 1;
        Ok(())
    }

    /// Records the ids of `ids` as taken if each is below the size, not in flight and not
    /// repeated among them; otherwise records none and returns `false` (the caller takes the
    /// chains one by one, and reports the fault there).
    #[inline(always)]
    pub fn insert_all<const N: usize>(&mut self, ids: [u16; N]) -> bool {
        for (k, &id) in ids.iter().enumerate() {
            match self.taken.get_mut(usize::from(id)) {
                Some(t) if *t == 0 => *t = 1,
                _ => {
                    self.remove_all(ids[..k].iter().copied());
                    return false;
                }
            }
        }
        true
    }

    /// Records every id of `ids` as returned (those not in flight or beyond the ids tracked
    /// are skipped).
    #[inline]
    pub fn remove_all(&mut self, ids: impl IntoIterator<Item = u16>) {
        for id in ids {
            if let Some(t) = self.taken.get_mut(usize::from(id)) {
                *t = 0;
            }
        }
    }

    /// Records `id` as returned; whether it was in flight.
    pub fn remove(&mut self, id: u16) -> bool {
        self.taken
            .get_mut(usize::from(id))
            .is_some_and(|t| std::mem::replace(t, 0) != 0)
    }
}

/// A packed queue's rings, for the duration of one burst (borrowed from the locked vring).
#[derive(Debug, Clone, Copy)]
pub struct PackedQueue<'a> {
    desc: GuestSlice<'a>,
    driver: GuestSlice<'a>,
    device: GuestSlice<'a>,
    mem: &'a GuestMemory,
    size: u16,
}

impl<'a> PackedQueue<'a> {
    /// Views `rings` (translated for a queue of `size`) and the table to translate buffers.
    /// A `size` beyond what the descriptor ring holds is reduced to it.
    pub fn new(rings: &'a PackedRings, mem: &'a GuestMemory, size: u16) -> PackedQueue<'a> {
        let desc = rings.desc.slice();
        let fits = (desc.len() as u64 / PACKED_DESC_SIZE).min(u64::from(MAX_PACKED_SIZE));
        PackedQueue {
            desc,
            driver: rings.driver.slice(),
            device: rings.device.slice(),
            mem,
            size: size.min(fits as u16),
        }
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The memory table buffers are translated with.
    #[inline]
    pub fn memory(&self) -> &'a GuestMemory {
        self.mem
    }

    /// Byte offset of slot `idx` (reduced modulo the size: every access stays in the ring).
    #[inline]
    fn off(&self, idx: u16) -> usize {
        // Positions keep their slot below the size: the reduction is for anything else.
        let idx = if idx < self.size {
            idx
        } else {
            idx % self.size.max(1)
        };
        usize::from(idx) * PACKED_DESC_SIZE as usize
    }

    /// Slot `idx`'s 16 bytes (reduced modulo the size), or `None` for a queue of size 0.
    #[inline(always)]
    fn slot(&self, idx: u16) -> Option<*mut u8> {
        if self.size == 0 {
            return None;
        }
        // SAFETY: `off` is below `size * 16`, and `new` reduced the size to what the
        // descriptor ring holds, so the slot's 16 bytes are inside `desc` (valid for 'a).
        Some(unsafe { self.desc.as_ptr().add(self.off(idx)) })
    }

    /// The flags of slot `idx`, with `Acquire`: pairs with the driver's barrier before it
    /// stores the flags of a chain's first descriptor, so the chain read afterwards is whole.
    /// A queue of size 0 reads 0 (not available at the start).
    #[inline]
    pub fn flags_acquire(&self, idx: u16) -> u16 {
        self.flags_load(idx, Ordering::Acquire)
    }

    #[inline(always)]
    fn flags_load(&self, idx: u16, order: Ordering) -> u16 {
        let Some(p) = self.slot(idx) else { return 0 };
        // SAFETY: the slot is inside the ring (`slot`), whose host address is 16-byte aligned
        // (checked at translation), so its flags are an aligned u16; guest ring words are
        // only accessed atomically or volatile by rvhost.
        u16::from_le(unsafe { AtomicU16::from_ptr(p.add(OFF_FLAGS).cast::<u16>()) }.load(order))
    }

    /// Whether the descriptor at `pos` is available (its flags loaded with `Acquire`).
    #[inline]
    pub fn desc_is_avail(&self, pos: RingPos) -> bool {
        desc_is_avail(self.flags_acquire(pos.idx()), pos.wrap())
    }

    /// How many slots from `pos` on, at most `max`, are available in a row (each one's flags
    /// loaded with `Acquire`; the wrap counter flips at the ring's end).
    #[inline]
    pub fn avail_run(&self, pos: RingPos, max: u16) -> u16 {
        let (mut idx, mut wrap) = (pos.idx(), pos.wrap());
        if idx >= self.size {
            return 0;
        }
        let base = self.desc.as_ptr();
        // Slot `i`'s flags; called below only with `i` below the size.
        let flags = |i: u16| {
            let p = base.wrapping_add(usize::from(i) * PACKED_DESC_SIZE as usize + OFF_FLAGS);
            // SAFETY: `i` is below the size (every call below), which `new` bounded by what
            // the descriptor ring holds, so the slot's flags are inside the ring: an aligned
            // u16 (the ring is 16-byte aligned), accessed atomically.
            u16::from_le(unsafe { AtomicU16::from_ptr(p.cast()) }.load(Ordering::Acquire))
        };
        const BITS: u16 = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;
        let mut want = avail_bits(wrap);
        let mut n = 0;
        while n < max {
            // A line of 4 at once where it is whole (one by one, a dequeue's count cost 18
            // instructions a packet); where one of them is not available, one by one. `idx`
            // stays below the size (checked above, wrapped to 0 at it).
            let step = if idx % 4 == 0
                && max - n >= 4
                && self.size - idx >= 4
                && ((flags(idx) ^ want)
                    | (flags(idx + 1) ^ want)
                    | (flags(idx + 2) ^ want)
                    | (flags(idx + 3) ^ want))
                    & BITS
                    == 0
            {
                4
            } else if flags(idx) & BITS == want {
                1
            } else {
                break;
            };
            n += step;
            idx += step;
            if idx == self.size {
                idx = 0;
                wrap = !wrap;
                want = avail_bits(wrap);
            }
        }
        n
    }

    /// Descriptor `idx` of the ring (a copy, read once as two words; reduced modulo the
    /// size; all zero for a queue of size 0).
    #[inline]
    pub fn desc(&self, idx: u16) -> PvirtqDesc {
        let Some(p) = self.slot(idx) else {
            return PvirtqDesc::default();
        };
        // SAFETY: the slot's 16 bytes are inside the ring and 16-byte aligned (see
        // `flags_load`).
        unsafe { read_desc(p) }
    }

    /// The [`BATCH`] descriptors from `pos` if each is available and alone in its chain (no
    /// NEXT, no INDIRECT) and has WRITE as `writable` says, with `pos` the first slot of a line
    /// of them (a multiple of [`BATCH`]) and the batch before the ring's end; otherwise `None`
    /// (the caller takes the chains one by one). Their flags are read first, then (after an
    /// `Acquire` fence: pairs with the driver's barrier before each flags store) the
    /// descriptors, as DPDK's `vhost_reserve_avail_batch_packed` does. Ids are not checked.
    #[inline(always)]
    pub fn avail_batch(&self, pos: RingPos, writable: bool) -> Option<[PvirtqDesc; BATCH]> {
        let idx = pos.idx();
        if idx as usize % BATCH != 0 || usize::from(idx) + BATCH > usize::from(self.size) {
            return None;
        }
        let p = self.slot(idx)?;
        let want = avail_bits(pos.wrap()) | if writable { VIRTQ_DESC_F_WRITE } else { 0 };
        const MASK: u16 = VIRTQ_DESC_F_AVAIL
            | VIRTQ_DESC_F_USED
            | VIRTQ_DESC_F_NEXT
            | VIRTQ_DESC_F_INDIRECT
            | VIRTQ_DESC_F_WRITE;
        for k in 0..BATCH {
            // SAFETY: slots `idx..idx + BATCH` are below the size (checked above), so inside
            // the ring (`slot`), 16-byte aligned; flags are an aligned u16 accessed atomically.
            let f = unsafe {
                AtomicU16::from_ptr(p.add(k * PACKED_DESC_SIZE as usize + OFF_FLAGS).cast())
            }
            .load(Ordering::Relaxed);
            if u16::from_le(f) & MASK != want {
                return None;
            }
        }
        fence(Ordering::Acquire);
        // Written out: `array::from_fn` cost 9 instructions per descriptor, and through
        // `desc` each slot was checked and its address computed again.
        // SAFETY: as for the flags above: the 4 slots from `p` are inside the ring, aligned.
        let d = |k: usize| unsafe { read_desc(p.add(k * PACKED_DESC_SIZE as usize)) };
        Some([d(0), d(1), d(2), d(3)])
    }

    /// The chain made available at `pos`, if the descriptor there is available: its slots
    /// (following `NEXT` into consecutive slots, the wrap counter flipping at the ring's end),
    /// buffer id and first descriptor. `budget` is the slots the device may read from `pos`
    /// (the queue size less the slots of chains taken and not yet returned); a longer chain is
    /// [`PackedError::TooLong`]. Every descriptor after the first must be marked available for
    /// its own lap ([`PackedError::NotAvailable`]), and the id must be below the queue size
    /// ([`PackedError::BadId`]).
    ///
    /// Only the shape is checked here; the buffers are checked by [`chain`](Self::chain).
    #[inline(always)]
    pub fn avail_chain(
        &self,
        pos: RingPos,
        budget: u16,
    ) -> Result<Option<AvailChain>, PackedError> {
        if !self.desc_is_avail(pos) {
            return Ok(None);
        }
        let budget = budget.min(self.size);
        if budget == 0 {
            return Err(PackedError::TooLong { max: 0 });
        }
        let first = self.desc(pos.idx());
        // One slot is the common case: no walk. The walk is out of line and returns scalars,
        // so that this chain stays in registers: a chain built in memory by both paths and
        // read back in other widths made the CPU wait for the stores (a load spanning two
        // stores is not forwarded), a third of a packed dequeue's `next_head`.
        let (id, count) = if first.flags & VIRTQ_DESC_F_NEXT == 0 {
            (first.id, 1)
        } else {
            self.avail_chain_walk(pos, budget)?
        };
        if id >= self.size {
            return Err(PackedError::BadId {
                id,
                size: self.size,
            });
        }
        Ok(Some(AvailChain {
            head: pos,
            id,
            count,
            first,
        }))
    }

    /// The rest of [`avail_chain`](Self::avail_chain) for a chain whose first descriptor (at
    /// `pos`) has NEXT: its last descriptor's id (not yet checked) and its slots, at most
    /// `budget` (at least 1, at most the size).
    #[inline(never)]
    fn avail_chain_walk(&self, pos: RingPos, budget: u16) -> Result<(u16, u16), PackedError> {
        // The first descriptor (at `pos`) has NEXT: the chain goes on after it.
        let mut at = pos;
        let mut count: u16 = 1;
        loop {
            if count == budget {
                return Err(PackedError::TooLong { max: budget });
            }
            at = at.advance(1, self.size);
            // The first descriptor's Acquire ordered the rest of the chain (written before it):
            // a plain load suffices.
            let flags = self.flags_load(at.idx(), Ordering::Relaxed);
            if !desc_is_avail(flags, at.wrap()) {
                return Err(PackedError::NotAvailable { slot: at.idx() });
            }
            let d = self.desc(at.idx());
            count += 1;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok((d.id, count));
            }
        }
    }

    /// Walks `chain`'s buffers: an iterator over host slices (a buffer across two regions comes
    /// as two pieces), ending with `None` after the last or with one `Err` for a bad chain.
    ///
    /// `writable` selects the queue kind as on the split ring: a receive queue needs every
    /// buffer device-writable, a transmit queue every buffer device-readable. `max_len` bounds
    /// the chain's total length. A descriptor with INDIRECT must be the chain's only one; its
    /// table (a non-empty multiple of 16 bytes, at most [`MAX_INDIRECT`] entries, inside guest
    /// memory) holds consecutive descriptors whose only meaningful flag is WRITE (the others,
    /// NEXT and INDIRECT included, and the ids are reserved and ignored: virtio 1.2 §2.8.7).
    pub fn chain(&self, chain: &AvailChain, writable: bool, max_len: u64) -> PackedChain<'a> {
        PackedChain {
            mem: self.mem,
            cache: TranslationCache::new(),
            ring: self.desc,
            size: self.size,
            slot: chain.head.idx(),
            first: Some(chain.first),
            left: u32::from(chain.count),
            chained: chain.count > 1,
            table: None,
            writable,
            cur_addr: 0,
            cur_len: 0,
            total: 0,
            max_len,
            failed: false,
        }
    }

    /// Writes `used` at `pos` — length, id and flags (AVAIL and USED equal to `pos`'s wrap
    /// counter, WRITE when the length is not 0) in one 8-byte store with `Release`, so a
    /// driver that sees the flags sees the rest — and returns the position of the next used
    /// descriptor.
    #[inline]
    pub fn write_used(&self, pos: RingPos, used: PackedUsed) -> RingPos {
        self.store_used(pos, used, Ordering::Release);
        pos.advance(used.count, self.size)
    }

    /// Writes a batch of used elements from `pos` on, each at the position after the previous
    /// one's slots, and returns the position after the batch: [`stage_used`](Self::stage_used)
    /// into a fresh vector, then [`write_staged`](Self::write_staged). For one-off batches; the
    /// data path stages each element as its chain is returned.
    pub fn write_used_batch(&self, pos: RingPos, batch: &[PackedUsed]) -> RingPos {
        let mut staged = Vec::with_capacity(batch.len());
        let end = self.stage_used(pos, batch.iter().copied(), &mut staged);
        self.write_staged(&staged);
        end
    }

    /// Appends to `out` the elements of `batch` staged from `pos` on, each at the position
    /// after the previous one's slots; returns the position after the batch.
    pub fn stage_used(
        &self,
        pos: RingPos,
        batch: impl IntoIterator<Item = PackedUsed>,
        out: &mut Vec<StagedUsed>,
    ) -> RingPos {
        let mut at = pos;
        for u in batch {
            out.push(StagedUsed::new(at, u));
            at = at.advance(u.count, self.size);
        }
        at
    }

    /// Writes a batch of staged used descriptors. Nothing of the batch is visible to the
    /// driver before all of it is: the elements after the first are written first, and the
    /// first last with `Release` (DPDK's batched used writes; the driver reads used
    /// descriptors in ring order, so it stops at the first until the whole batch is there).
    /// This is also the order the spec asks of a request spread over several buffers (§2.8.8
    /// "Multi-buffer requests": a mergeable receive packet's chains), so such a packet goes in
    /// one batch.
    #[inline]
    pub fn write_staged(&self, batch: &[StagedUsed]) {
        let Some(&first) = batch.first() else {
            return;
        };
        self.write_staged_but_first(batch);
        self.store_word(first.idx, first.word, Ordering::Release);
    }

    /// The first part of [`write_staged`](Self::write_staged): every element but the first.
    ///
    /// The elements after the first cache line of the batch are written first, and those in
    /// that line last: a driver waiting for the batch polls its first slot, and each write to
    /// that line while it polls would take the line back from its core (an access of the
    /// other core's latency per write). Written last, the line is taken once.
    #[inline]
    pub(crate) fn write_staged_but_first(&self, batch: &[StagedUsed]) {
        let Some(&first) = batch.first() else {
            return;
        };
        // The elements whose slots share the first slot's line (4 slots of 16 bytes; the
        // ring's host address is 16-byte aligned, so the line is a guess, not a bound). A
        // batch's slots are distinct, so one past the ring's end comes back below the first.
        let line_end = (first.idx | 3).saturating_add(1);
        let n = batch.len();
        let run = batch[n - 1].idx.checked_sub(first.idx) == Some((n - 1) as u16);
        if let (true, true, Some(p)) = (
            run,
            usize::from(first.idx) + n <= usize::from(self.size),
            self.slot(first.idx),
        ) {
            // The slots follow each other from the first, before the ring's end (a batch of
            // one-slot chains: each element's slot is after the previous one's, so the last
            // at `n - 1` on means no gap and no wrap): stored from the first slot's address
            // on, no slot reduced to the ring one by one (callgrind, loop-tput packed 64 B:
            // write_staged 28.4 -> 21.0 instructions a packet, both directions together).
            // The first line's elements are those of its slots.
            let head = usize::from(line_end - first.idx).min(n);
            in_line_order(batch, head, |k, u| {
                // SAFETY: `k < n` (an element's index), and slots `first.idx..first.idx + n`
                // are below the size (checked above), so inside the ring (`slot`) and 16-byte
                // aligned: the 8 bytes from slot `first.idx + k`'s length on are an aligned
                // u64, accessed atomically.
                unsafe {
                    AtomicU64::from_ptr(
                        p.add(k * PACKED_DESC_SIZE as usize + OFF_LEN).cast::<u64>(),
                    )
                }
                .store(u.word, Ordering::Relaxed);
            });
        } else {
            let head = batch
                .iter()
                .take(BATCH)
                .take_while(|u| u.idx >= first.idx && u.idx < line_end)
                .count();
            in_line_order(batch, head, |_, u| {
                self.store_word(u.idx, u.word, Ordering::Relaxed);
            });
        }
    }

    /// Writes the lines of the `n` slots from slot `from` back from our caches
    /// ([`GuestSlice::write_back_range`]), wrapping at the ring's end; slots beyond the size
    /// are ignored.
    pub fn write_back_slots(&self, from: u16, n: u16) {
        if from >= self.size {
            return;
        }
        let n = n.min(self.size);
        let first = n.min(self.size - from);
        let d = PACKED_DESC_SIZE as usize;
        self.desc
            .write_back_range(usize::from(from) * d, usize::from(first) * d);
        if n > first {
            self.desc.write_back_range(0, usize::from(n - first) * d);
        }
    }

    /// Writes used element `u` at `pos` whole ([`store_word`](Self::store_word)).
    #[inline]
    fn store_used(&self, pos: RingPos, u: PackedUsed, order: Ordering) {
        self.store_word(pos.idx(), slot_tail(u, pos.wrap()), order);
    }

    /// Stores `word` as slot `idx`'s last 8 bytes: its length, id and flags in one atomic
    /// store. A driver that sees the flags sees the rest (one store), and a burst's used
    /// writes are a third of the stores they were as three (each waiting in the store buffer
    /// for a line the driver holds). A slot beyond the size is reduced to it ([`slot`](Self::slot)).
    #[inline(always)]
    fn store_word(&self, idx: u16, word: u64, order: Ordering) {
        let Some(p) = self.slot(idx) else {
            return;
        };
        // SAFETY: the slot's 16 bytes are inside the ring and 16-byte aligned (see
        // `flags_load`), so the 8 from the length on are an aligned u64, accessed atomically.
        unsafe { AtomicU64::from_ptr(p.add(OFF_LEN).cast::<u64>()) }.store(word, order);
    }

    /// After used descriptors were published over `[old, new)`: without EVENT_IDX keeps the
    /// device event area at DISABLE (we poll; virtio 1.2 §2.8.10), and writes `call` when the
    /// driver wants a notification ([`needs_interrupt`](Self::needs_interrupt)). Returns
    /// whether it did.
    pub fn signal_used(
        &self,
        event_idx: bool,
        call: Option<BorrowedFd<'_>>,
        old: RingPos,
        new: RingPos,
    ) -> bool {
        if !event_idx {
            self.keep_device_event(EventSuppress::Disable);
        }
        match call {
            Some(call) if self.needs_interrupt(event_idx, old, new) => {
                // EAGAIN (the counter is full) still leaves the eventfd readable.
                let _ = nix::unistd::write(call, &1u64.to_ne_bytes());
                true
            }
            _ => false,
        }
    }

    /// The driver event suppression structure: what the driver wants of used notifications.
    #[inline]
    pub fn driver_event(&self) -> EventSuppress {
        let flags = u16::from_le(self.driver.load_u16(2, Ordering::Acquire).unwrap_or(0));
        let off_wrap = u16::from_le(self.driver.load_u16(0, Ordering::Relaxed).unwrap_or(0));
        EventSuppress::from_fields(off_wrap, flags)
    }

    /// Sets the device event suppression structure to `ev` unless it holds that already: the
    /// driver reads it before each notification it might send, so a store of an unchanged
    /// value would still take its line from the driver's cache on every burst.
    #[inline]
    pub fn keep_device_event(&self, ev: EventSuppress) {
        let (off_wrap, flags) = ev.fields();
        let cur_flags = u16::from_le(self.device.load_u16(2, Ordering::Relaxed).unwrap_or(!0));
        let cur_off = u16::from_le(self.device.load_u16(0, Ordering::Relaxed).unwrap_or(!0));
        if cur_flags != flags || cur_off != off_wrap {
            self.set_device_event(ev);
        }
    }

    /// Writes the device event suppression structure: what the device wants of available
    /// notifications (kicks). `off_wrap` is stored before the flags (with `Release`), so a
    /// driver that sees `DESC` sees its position. After enabling, the device must look at the
    /// ring once more before sleeping: a chain made available before the driver saw the change
    /// came without a kick.
    pub fn set_device_event(&self, ev: EventSuppress) {
        let (off_wrap, flags) = ev.fields();
        let _ = self
            .device
            .store_u16(0, off_wrap.to_le(), Ordering::Relaxed);
        let _ = self.device.store_u16(2, flags.to_le(), Ordering::Release);
    }

    /// Whether the driver wants a used notification after the device wrote used descriptors
    /// over the positions `[old, new)` (virtio 1.2 §2.8.10/§2.8.14): without EVENT_IDX unless it
    /// disabled them; with EVENT_IDX as its flags say, for `DESC` when its position lies in
    /// `[old, new)`. `DESC` without EVENT_IDX, and the reserved flags value, read as enabled.
    #[inline]
    pub fn needs_interrupt(&self, event_idx: bool, old: RingPos, new: RingPos) -> bool {
        // The used descriptors must be visible before we read the driver's suppression state,
        // or we could miss a request it made after reading them (pairs with the driver's
        // barrier between writing its event structure and re-reading the ring).
        fence(Ordering::SeqCst);
        match self.driver_event() {
            EventSuppress::Disable => false,
            EventSuppress::Enable => true,
            EventSuppress::Desc(_) if !event_idx => true,
            EventSuppress::Desc(ev) => need_event(ev, old, new, self.size),
        }
    }
}

/// Iterator over one packed chain's buffers (see [`PackedQueue::chain`]).
#[derive(Debug)]
pub struct PackedChain<'a> {
    mem: &'a GuestMemory,
    cache: TranslationCache,
    ring: GuestSlice<'a>,
    size: u16,
    /// Ring slot of the next direct descriptor.
    slot: u16,
    /// The first descriptor, already read by `avail_chain`.
    first: Option<PvirtqDesc>,
    /// Direct descriptors (or, in a table, entries) left to read.
    left: u32,
    /// The chain has more than one direct descriptor.
    chained: bool,
    /// The indirect table being read and the index of its next entry.
    table: Option<(GuestSlice<'a>, u32)>,
    writable: bool,
    cur_addr: u64,
    cur_len: u64,
    total: u64,
    max_len: u64,
    failed: bool,
}

impl<'a> PackedChain<'a> {
    /// Total bytes of the descriptors read so far (the whole chain once exhausted).
    pub fn total_len(&self) -> u64 {
        self.total
    }

    #[cold]
    fn fail(&mut self, e: ChainError) -> Option<Result<GuestSlice<'a>, ChainError>> {
        self.failed = true;
        Some(Err(e))
    }

    /// The next descriptor: the next entry of the indirect table, or the next ring slot.
    fn next_desc(&mut self) -> PvirtqDesc {
        self.left -= 1;
        if let Some((t, i)) = self.table.as_mut() {
            let d = t
                .read_obj::<PvirtqDesc>(*i as usize * PACKED_DESC_SIZE as usize)
                .unwrap_or_default()
                .swap_le();
            *i += 1;
            return d;
        }
        let slot = u32::from(self.slot) % u32::from(self.size.max(1));
        // slot + 1 <= size <= 32768: the result fits in u16.
        self.slot = ((slot + 1) % u32::from(self.size.max(1))) as u16;
        if let Some(d) = self.first.take() {
            return d;
        }
        self.ring
            .read_obj::<PvirtqDesc>(slot as usize * PACKED_DESC_SIZE as usize)
            .unwrap_or_default()
            .swap_le()
    }

    /// Reads the next buffer into `cur_*`, entering an indirect table.
    fn advance(&mut self) -> Result<(), ChainError> {
        loop {
            let d = self.next_desc();
            let in_table = self.table.is_some();
            if !in_table && d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if self.chained || d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(ChainError::NestedIndirect);
                }
                let n = d.len / PACKED_DESC_SIZE as u32;
                if d.len == 0 || d.len % PACKED_DESC_SIZE as u32 != 0 || n > MAX_INDIRECT {
                    return Err(ChainError::IndirectLen(d.len));
                }
                let t = self.mem.gpa_to_host(Gpa(d.addr), u64::from(d.len)).ok_or(
                    ChainError::Unmapped {
                        addr: d.addr,
                        len: u64::from(d.len),
                    },
                )?;
                self.table = Some((t, 0));
                self.left = n;
                continue;
            }
            // A device-readable buffer marked writable is refused everywhere but in an indirect
            // table read by a transmit queue: DPDK's virtio driver leaves WRITE set on the
            // header entry of its packed indirect tables (`vring_desc_init_indirect_packed`),
            // and DPDK's vhost reads them without looking. Reading such a buffer cannot harm
            // the guest; writing into a readable one could, so receive queues stay strict.
            let write = d.flags & VIRTQ_DESC_F_WRITE != 0;
            if write != self.writable && !(in_table && write && !self.writable) {
                return Err(ChainError::Permissions);
            }
            self.total += u64::from(d.len);
            if self.total > self.max_len {
                return Err(ChainError::TooLarge(self.max_len));
            }
            self.cur_addr = d.addr;
            self.cur_len = u64::from(d.len);
            return Ok(());
        }
    }
}

impl<'a> Iterator for PackedChain<'a> {
    type Item = Result<GuestSlice<'a>, ChainError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while self.cur_len == 0 {
            if self.left == 0 {
                return None;
            }
            if let Err(e) = self.advance() {
                return self.fail(e);
            }
        }
        let mem: &'a GuestMemory = self.mem;
        match mem.gpa_to_host_prefix_cached(&mut self.cache, Gpa(self.cur_addr), self.cur_len) {
            Some(s) => {
                let n = s.len() as u64;
                self.cur_len -= n;
                // n <= region end - cur_addr: no overflow.
                self.cur_addr += n;
                Some(Ok(s))
            }
            None => {
                let e = ChainError::Unmapped {
                    addr: self.cur_addr,
                    len: self.cur_len,
                };
                self.fail(e)
            }
        }
    }
}

#[cfg(test)]
#[path = "packed_tests.rs"]
mod tests;
