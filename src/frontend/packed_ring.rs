//! The driver side of a packed virtqueue (virtio 1.2 §2.8): posting chains (direct or through an
//! indirect table) with buffer ids, making them available with the AVAIL/USED bits of the
//! driver's wrap counter, reading used descriptors back, and event suppression. Safe code over
//! the shared memory's `GuestSlice` view (no `unsafe` here).
//!
//! The driver keeps its own record of every chain it made available (the slots each buffer id
//! took, and the order they were posted in): a used descriptor only names an id, and the
//! device is never trusted to describe a chain back. A used descriptor naming an id that is not
//! outstanding leaves no way to know how many slots to skip: the ring is then marked broken
//! (as Linux's `BAD_RING`) and yields nothing more.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use super::error::LayoutError;
use super::shm::Shm;
use crate::memory::GuestSlice;
use crate::virtq::packed::{
    EventSuppress, MAX_PACKED_SIZE, PACKED_DESC_SIZE, PvirtqDesc, RingPos, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, avail_bits, desc_is_used, need_event,
};

/// Byte offset of the flags in a descriptor.
const OFF_FLAGS: usize = 14;

/// Counters of a packed ring; they never allocate or format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedRingStats {
    /// Publications after which the device wanted a kick.
    pub kicks_wanted: u64,
    /// Publications after which the device did not want a kick.
    pub kicks_suppressed: u64,
    /// Used descriptors whose id was not outstanding (the ring is broken after the first).
    pub bad_used_id: u64,
}

/// A used buffer read back from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedUsedBuf {
    /// The buffer id the device returned.
    pub id: u16,
    /// Bytes the device says it wrote (0 when the used descriptor has no WRITE flag: the
    /// length is reserved then, §2.8.4).
    pub len: u32,
    /// Buffers it stands for: 1, or with IN_ORDER the batch up to and including `id`.
    pub buffers: u16,
    /// Ring slots freed.
    pub slots: u16,
}

/// The driver's state of one packed ring in the shared memory.
pub struct PackedDriverRing {
    shm: Arc<Shm>,
    desc: usize,
    driver: usize,
    device: usize,
    size: u16,
    /// Next slot to fill, with the driver ring wrap counter.
    avail: RingPos,
    /// `avail` at the last kick decision.
    published: RingPos,
    /// Next slot to read a used descriptor from, with the device ring wrap counter.
    used: RingPos,
    /// Slots not taken by outstanding chains.
    free_slots: u16,
    /// Free buffer ids, a stack (popped from the end).
    free_ids: Vec<u16>,
    /// Per id: slots its outstanding chain took; 0 when the id is not outstanding.
    id_slots: Box<[u16]>,
    /// Outstanding ids in the order they were made available (IN_ORDER only).
    order: VecDeque<u16>,
    in_order: bool,
    event_idx: bool,
    broken: bool,
    stats: PackedRingStats,
}

impl std::fmt::Debug for PackedDriverRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedDriverRing")
            .field("size", &self.size)
            .field("avail", &self.avail)
            .field("used", &self.used)
            .field("free_slots", &self.free_slots)
            .field("free_ids", &self.free_ids.len())
            .field("in_order", &self.in_order)
            .field("event_idx", &self.event_idx)
            .field("broken", &self.broken)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PackedDriverRing {
    /// A fresh ring of `size` (1..=32768, any value) whose descriptor ring, driver event area
    /// and device event area are at these offsets of `shm` (checked: alignment 16, 4, 4 and
    /// inside the memory). Zeroes the three parts (§2.8.13: the ring is zero-initialized);
    /// both wrap counters start set; every id and slot is free. `in_order`: the device uses
    /// buffers in order and may return a batch with one used descriptor (VIRTIO_F_IN_ORDER).
    pub fn new(
        shm: Arc<Shm>,
        size: u16,
        desc: usize,
        driver: usize,
        device: usize,
        in_order: bool,
    ) -> Result<Self, LayoutError> {
        if size == 0 || size > MAX_PACKED_SIZE {
            return Err(LayoutError::BadQueueSize(size.into()));
        }
        let dl = PACKED_DESC_SIZE as usize * usize::from(size);
        for (what, offset, len, align) in [
            ("descriptor ring", desc, dl, 16),
            ("driver event area", driver, 4, 4),
            ("device event area", device, 4, 4),
        ] {
            if offset % align != 0 {
                return Err(LayoutError::Misaligned {
                    what,
                    offset,
                    align,
                });
            }
            let part = shm
                .slice()
                .subslice(offset, len)
                .map_err(|_| LayoutError::OutOfBounds {
                    what,
                    offset,
                    len,
                    size: shm.len(),
                })?;
            part.fill(0);
        }
        Ok(Self {
            shm,
            desc,
            driver,
            device,
            size,
            avail: RingPos::START,
            published: RingPos::START,
            used: RingPos::START,
            free_slots: size,
            // Pushed in reverse so that ids are handed out 0, 1, 2, ...
            free_ids: (0..size).rev().collect(),
            id_slots: vec![0; usize::from(size)].into(),
            order: VecDeque::with_capacity(usize::from(size)),
            in_order,
            event_idx: false,
            broken: false,
            stats: PackedRingStats::default(),
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Offsets of (descriptor ring, driver event area, device event area).
    pub fn offsets(&self) -> (usize, usize, usize) {
        (self.desc, self.driver, self.device)
    }

    /// Slots free for new chains.
    pub fn free_slots(&self) -> u16 {
        self.free_slots
    }

    /// Buffer ids free.
    pub fn free_ids(&self) -> u16 {
        self.free_ids.len() as u16
    }

    /// The next slot to fill, with the driver ring wrap counter.
    pub fn avail_pos(&self) -> RingPos {
        self.avail
    }

    /// The next slot to read a used descriptor from, with the device ring wrap counter.
    pub fn used_pos(&self) -> RingPos {
        self.used
    }

    /// Whether a used descriptor named an id that was not outstanding (nothing more is read).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Counters.
    pub fn stats(&self) -> PackedRingStats {
        self.stats
    }

    /// Whether EVENT_IDX suppression is used (set after feature negotiation).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// `[offset, offset + len)` of the shared memory. The parts were checked in `new` and the
    /// memory's length does not change; were one not to fit, it would read as an empty slice
    /// (every access then fails and is ignored), never as another part.
    fn part(&self, offset: usize, len: usize) -> GuestSlice<'_> {
        let s = self.shm.slice();
        // subslice(0, 0) cannot fail.
        s.subslice(offset, len)
            .or_else(|_| s.subslice(0, 0))
            .unwrap_or(s)
    }

    /// The descriptor ring.
    fn ring(&self) -> GuestSlice<'_> {
        self.part(
            self.desc,
            PACKED_DESC_SIZE as usize * usize::from(self.size),
        )
    }

    /// An event area.
    fn area(&self, offset: usize) -> GuestSlice<'_> {
        self.part(offset, 4)
    }

    fn slot_off(&self, idx: u16) -> usize {
        usize::from(idx % self.size) * PACKED_DESC_SIZE as usize
    }

    /// Reads slot `idx` of the ring as it is now (tests; a used descriptor's fields).
    pub fn read_desc(&self, idx: u16) -> PvirtqDesc {
        self.ring()
            .read_obj::<PvirtqDesc>(self.slot_off(idx))
            .unwrap_or_default()
            .swap_le()
    }

    /// Takes an id and `n` slots for a new chain, or `None` if there is no room.
    fn take(&mut self, n: u16) -> Option<u16> {
        if n == 0 || n > self.free_slots || self.broken {
            return None;
        }
        let id = self.free_ids.pop()?;
        self.free_slots -= n;
        self.id_slots[usize::from(id)] = n;
        if self.in_order {
            self.order.push_back(id);
        }
        Some(id)
    }

    /// Writes `descs` (flags without AVAIL/USED) into consecutive slots from the available
    /// position, each with buffer `id` and the AVAIL/USED bits of its own lap, and makes them
    /// available: the first one's flags are stored last, with `Release`, so a device that sees
    /// them sees the whole chain (§2.8.6, §2.8.21.1).
    fn make_available(&mut self, id: u16, descs: impl Iterator<Item = (u64, u32, u16)>) {
        let head = self.avail;
        let ring = self.part(
            self.desc,
            PACKED_DESC_SIZE as usize * usize::from(self.size),
        );
        let mut at = head;
        let mut head_flags = 0;
        for (k, (addr, len, flags)) in descs.enumerate() {
            let off = self.slot_off(at.idx());
            let flags = flags | avail_bits(at.wrap());
            // addr, len, id; the flags after (the head's old flags, still showing it used or
            // zero, stay until the whole chain is written).
            let _ = ring.write_obj(off, addr.to_le());
            let _ = ring.write_obj(off + 8, len.to_le());
            let _ = ring.write_obj(off + 12, id.to_le());
            if k == 0 {
                head_flags = flags;
            } else {
                // The head's release below orders this store too.
                let _ = ring.store_u16(off + OFF_FLAGS, flags.to_le(), Ordering::Relaxed);
            }
            at = at.advance(1, self.size);
        }
        let off = self.slot_off(head.idx()) + OFF_FLAGS;
        let _ = ring.store_u16(off, head_flags.to_le(), Ordering::Release);
        self.avail = at;
    }

    /// Posts a chain of `bufs` (guest address, length, device-writable) in consecutive slots
    /// and makes it available. Returns its buffer id, or `None` (nothing changed) if `bufs` is
    /// empty, longer than the free slots, or no id is free.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        let n = u16::try_from(bufs.len()).ok()?;
        let id = self.take(n)?;
        let last = bufs.len() - 1;
        self.make_available(
            id,
            bufs.iter().enumerate().map(|(k, &(addr, len, write))| {
                let mut flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
                if k < last {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                (addr, len, flags)
            }),
        );
        Some(id)
    }

    /// Posts `bufs` through an indirect table written at `table_offset` of the shared memory
    /// (16-byte aligned; its guest address `table_gpa`), taking one slot: entries in order,
    /// their only flag WRITE (§2.8.7). Returns the buffer id, or `None` (nothing changed) if
    /// `bufs` is empty, the table does not fit there, or no slot or id is free.
    pub fn add_indirect(
        &mut self,
        table_offset: usize,
        table_gpa: u64,
        bufs: &[(u64, u32, bool)],
    ) -> Option<u16> {
        let len = u32::try_from(bufs.len().checked_mul(PACKED_DESC_SIZE as usize)?).ok()?;
        if bufs.is_empty() || table_offset % 16 != 0 {
            return None;
        }
        let shm = Arc::clone(&self.shm);
        let table = shm.slice().subslice(table_offset, len as usize).ok()?;
        let id = self.take(1)?;
        for (k, &(addr, blen, write)) in bufs.iter().enumerate() {
            let d = PvirtqDesc {
                addr,
                len: blen,
                id: 0,
                flags: if write { VIRTQ_DESC_F_WRITE } else { 0 },
            };
            let _ = table.write_obj(k * PACKED_DESC_SIZE as usize, d.swap_le());
        }
        self.make_available(id, std::iter::once((table_gpa, len, VIRTQ_DESC_F_INDIRECT)));
        Some(id)
    }

    /// Whether the device wants a kick for the chains made available since the last call
    /// (§2.8.10): not if it disabled notifications; with EVENT_IDX and `DESC`, only if its
    /// position was among them.
    pub fn kick_needed(&mut self) -> bool {
        let (old, new) = (self.published, self.avail);
        if old == new {
            return false;
        }
        self.published = new;
        // Store-load barrier: the flags stored above must be visible before we read the
        // device's suppression state, or a device that checks the ring and then enables
        // notifications could be left without a kick.
        fence(Ordering::SeqCst);
        let area = self.area(self.device);
        let flags = u16::from_le(area.load_u16(2, Ordering::Acquire).unwrap_or(0));
        let off_wrap = u16::from_le(area.load_u16(0, Ordering::Relaxed).unwrap_or(0));
        let kick = match EventSuppress::from_fields(off_wrap, flags) {
            EventSuppress::Disable => false,
            EventSuppress::Enable => true,
            EventSuppress::Desc(_) if !self.event_idx => true,
            EventSuppress::Desc(ev) => need_event(ev, old, new, self.size),
        };
        if kick {
            self.stats.kicks_wanted += 1;
        } else {
            self.stats.kicks_suppressed += 1;
        }
        kick
    }

    /// Whether a used descriptor is waiting at the used position (its flags loaded with
    /// `Acquire`: pairs with the device's release of them, so its id and length, and the
    /// buffer's bytes, are visible after).
    pub fn used_ready(&self) -> bool {
        if self.broken {
            return false;
        }
        let flags = self
            .ring()
            .load_u16(
                self.slot_off(self.used.idx()) + OFF_FLAGS,
                Ordering::Acquire,
            )
            .map(u16::from_le)
            .unwrap_or(0);
        desc_is_used(flags, self.used.wrap())
    }

    /// Ring slots the outstanding chain of buffer `id` took (0: not outstanding).
    pub fn slots_of(&self, id: u16) -> u16 {
        self.id_slots.get(usize::from(id)).copied().unwrap_or(0)
    }

    /// Whether buffer `id` is outstanding (made available, not yet used).
    pub fn is_outstanding(&self, id: u16) -> bool {
        self.id_slots.get(usize::from(id)).is_some_and(|&n| n != 0)
    }

    /// The used descriptors waiting from the used position on, up to `max`: each must name an
    /// outstanding id (the walk stops at one that does not; [`pop_used`](Self::pop_used) then
    /// breaks the ring), and the next one is looked for after its chain's slots. Without
    /// IN_ORDER (with it one descriptor may stand for several chains).
    pub fn ready_used(&self, max: u16) -> (u16, RingPos) {
        let mut at = self.used;
        let mut n = 0;
        while n < max && !self.broken {
            let flags = self
                .ring()
                .load_u16(self.slot_off(at.idx()) + OFF_FLAGS, Ordering::Acquire)
                .map(u16::from_le)
                .unwrap_or(0);
            if !desc_is_used(flags, at.wrap()) {
                break;
            }
            let id = self.read_desc(at.idx()).id;
            let slots = self.id_slots.get(usize::from(id)).copied().unwrap_or(0);
            if slots == 0 {
                break;
            }
            n += 1;
            at = at.advance(slots, self.size);
        }
        (n, at)
    }

    /// Reads the next used descriptor, freeing its chain's id and slots (with IN_ORDER, every
    /// outstanding chain up to and including the id it names). `None` when none is ready or
    /// the ring is broken; a used id that is not outstanding breaks it.
    pub fn pop_used(&mut self) -> Option<PackedUsedBuf> {
        if !self.used_ready() {
            return None;
        }
        let d = self.read_desc(self.used.idx());
        let len = if d.flags & VIRTQ_DESC_F_WRITE != 0 {
            d.len
        } else {
            0
        };
        let slots_of = |ring: &Self, id: u16| -> u16 {
            ring.id_slots.get(usize::from(id)).copied().unwrap_or(0)
        };
        if slots_of(self, d.id) == 0 {
            self.stats.bad_used_id += 1;
            self.broken = true;
            return None;
        }
        let (mut buffers, mut slots) = (0u16, 0u16);
        if self.in_order {
            while let Some(id) = self.order.pop_front() {
                slots += self.free_id(id);
                buffers += 1;
                if id == d.id {
                    break;
                }
            }
        } else {
            slots = self.free_id(d.id);
            buffers = 1;
        }
        self.used = self.used.advance(slots, self.size);
        Some(PackedUsedBuf {
            id: d.id,
            len,
            buffers,
            slots,
        })
    }

    /// Frees an outstanding id; returns its slots.
    fn free_id(&mut self, id: u16) -> u16 {
        let n = std::mem::take(&mut self.id_slots[usize::from(id)]);
        self.free_slots += n;
        self.free_ids.push(id);
        n
    }

    /// Writes the driver event suppression structure (what the device reads to decide on used
    /// notifications): `off_wrap` first, the flags last with `Release`.
    pub fn set_driver_event(&self, ev: EventSuppress) {
        let (off_wrap, flags) = ev.fields();
        let area = self.area(self.driver);
        let _ = area.store_u16(0, off_wrap.to_le(), Ordering::Relaxed);
        let _ = area.store_u16(2, flags.to_le(), Ordering::Release);
    }

    /// Turns used notifications on (with EVENT_IDX: for the next used descriptor) before
    /// sleeping, and tells whether a used descriptor arrived meanwhile (then read instead of
    /// sleeping: the notification may have been skipped).
    pub fn arm_interrupts(&mut self) -> bool {
        let ev = if self.event_idx {
            EventSuppress::Desc(self.used)
        } else {
            EventSuppress::Enable
        };
        self.set_driver_event(ev);
        // Store-load barrier: the device must see the event structure before we look at the
        // ring, or it may skip the notification for a descriptor we then miss.
        fence(Ordering::SeqCst);
        self.used_ready()
    }

    /// Turns used notifications off (the device may still send one it decided on before).
    pub fn disable_interrupts(&self) {
        self.set_driver_event(EventSuppress::Disable);
    }
}

#[cfg(test)]
#[path = "packed_ring_tests.rs"]
mod tests;
