//! The driver side of a split virtqueue (virtio 1.2 §2.7): free descriptors, chains, the
//! available index, reaping the used ring, and notification suppression. Safe code over a
//! [`SharedRing`].
//!
//! The driver keeps its own shadow of every chain it made (links and length): the used ring
//! only names a head, and the device is never trusted to describe a chain back. A used element
//! naming a descriptor that is not the head of an outstanding chain, or a used index that runs
//! ahead of what was made available, is counted in [`RingStats`] and skipped.

use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};

use super::shm::{SharedRing, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY, VirtqDesc};

/// Counters of a ring; they never allocate or format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Publications after which the device wanted a kick.
    pub kicks_wanted: u64,
    /// Publications after which the device did not want a kick.
    pub kicks_suppressed: u64,
    /// Used elements whose id was not the head of an outstanding chain.
    pub bad_used_id: u64,
    /// Times the used index was further ahead than the chains made available.
    pub bad_used_idx: u64,
}

/// One element reaped from the used ring, for a valid outstanding chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// Descriptors in the chain.
    pub ndesc: u16,
}

/// `vring_need_event` (virtio 1.2 §2.7.10.2): with EVENT_IDX, the device wants a kick if
/// `event` lies in `[old, new)`, the indexes made available by this publication.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver's state of one split ring.
pub struct DriverRing {
    mem: SharedRing,
    /// Free descriptor ids, a stack (popped from the end).
    free: Vec<u16>,
    /// Shadow of each descriptor's `next`.
    next: Box<[u16]>,
    /// Per head: descriptors in its outstanding chain; 0 when `id` is no outstanding head.
    chain_len: Box<[u16]>,
    /// Next available-ring slot to fill.
    avail_idx: Wrapping<u16>,
    /// `avail.idx` as last published.
    published: Wrapping<u16>,
    /// Next used-ring slot to reap.
    last_used: Wrapping<u16>,
    /// `used.idx` as last seen (clamped to what was published).
    used_seen: Wrapping<u16>,
    event_idx: bool,
    interrupts: bool,
    stats: RingStats,
}

impl std::fmt::Debug for DriverRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverRing")
            .field("size", &self.size())
            .field("free", &self.free.len())
            .field("avail_idx", &self.avail_idx.0)
            .field("published", &self.published.0)
            .field("last_used", &self.last_used.0)
            .field("event_idx", &self.event_idx)
            .field("interrupts", &self.interrupts)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl DriverRing {
    /// A fresh ring: zeroes the shared parts and sets both indexes to `base` (a test may start
    /// near 65535 to exercise wrap-around). Every descriptor is free; interrupts are wanted.
    pub fn new(mem: SharedRing, base: u16, event_idx: bool) -> Self {
        let size = mem.size();
        mem.zero();
        mem.store_avail_idx(base);
        mem.store_used_idx(base);
        let base = Wrapping(base);
        Self {
            // Pushed in reverse so that ids are handed out 0, 1, 2, ...
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)].into(),
            chain_len: vec![0; usize::from(size)].into(),
            avail_idx: base,
            published: base,
            last_used: base,
            used_seen: base,
            event_idx,
            interrupts: true,
            stats: RingStats::default(),
            mem,
        }
    }

    /// The shared ring.
    pub fn shared(&self) -> &SharedRing {
        &self.mem
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.mem.size()
    }

    /// Free descriptors.
    pub fn free_count(&self) -> u16 {
        self.free.len() as u16
    }

    /// Chains made available (published or not) and not reaped yet.
    pub fn outstanding(&self) -> u16 {
        (self.avail_idx - self.last_used).0
    }

    /// The next available index (the value `avail.idx` takes at the next publication).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx.0
    }

    /// The next used index to reap.
    pub fn last_used(&self) -> u16 {
        self.last_used.0
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Whether EVENT_IDX suppression is used (set after feature negotiation).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
        self.set_interrupts(self.interrupts);
    }

    /// Makes a chain of `n` descriptors and puts its head in the next available slot (not yet
    /// published). `seg(i, id)` gives descriptor `i` of the chain (id `id`): its guest address,
    /// length and whether the device writes it. `None` (nothing changed) if fewer than `n`
    /// descriptors are free or `n` is 0.
    #[inline]
    pub fn add_chain(
        &mut self,
        n: u16,
        mut seg: impl FnMut(u16, u16) -> (u64, u32, bool),
    ) -> Option<u16> {
        if n == 0 || usize::from(n) > self.free.len() {
            return None;
        }
        let head = *self.free.last()?;
        for i in 0..n {
            let id = self.free.pop()?;
            let (addr, len, write) = seg(i, id);
            let mut flags = if write { VirtqDesc::F_WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < n {
                flags |= VirtqDesc::F_NEXT;
                next = *self.free.last()?;
            }
            self.mem.write_desc(
                id,
                VirtqDesc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
            self.next[usize::from(id)] = next;
        }
        self.chain_len[usize::from(head)] = n;
        self.mem.set_avail_entry(self.avail_idx.0, head);
        self.avail_idx += 1;
        Some(head)
    }

    /// Publishes the chains added since the last publication and tells whether the device
    /// wants a kick for them (virtio 1.2 §2.7.13, §2.7.10).
    #[inline]
    pub fn publish(&mut self) -> bool {
        let (old, new) = (self.published.0, self.avail_idx.0);
        if old == new {
            return false;
        }
        // Release: the descriptors and avail entries written above are visible before idx.
        self.mem.store_avail_idx(new);
        self.published = self.avail_idx;
        // Store-load barrier (Linux virtio_mb in virtqueue_kick_prepare): the idx store must
        // be visible before we read the device's suppression fields, or a device that checks
        // idx and then enables notifications could be left without a kick.
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            need_event(self.mem.avail_event(), new, old)
        } else {
            self.mem.used_flags() & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        if kick {
            self.stats.kicks_wanted += 1;
        } else {
            self.stats.kicks_suppressed += 1;
        }
        kick
    }

    /// Used elements published by the device and not reaped yet.
    #[inline]
    pub fn used_ready(&mut self) -> u16 {
        // Acquire (in load_used_idx): pairs with the device's release of used.idx.
        let idx = Wrapping(self.mem.load_used_idx());
        let ahead = (idx - self.last_used).0;
        let published = (self.published - self.last_used).0;
        if ahead > published {
            // The device claims more than was made available: believe only what was.
            self.stats.bad_used_idx += 1;
            self.used_seen = self.published;
            return published;
        }
        self.used_seen = idx;
        ahead
    }

    /// The `k`-th unreaped used element, unchecked (for looking ahead, e.g. at a mergeable
    /// buffer's header). `k` should be below [`used_ready`](Self::used_ready).
    #[inline]
    pub fn peek_used(&self, k: u16) -> (u32, u32) {
        let e = self.mem.read_used_elem((self.last_used + Wrapping(k)).0);
        (e.id, e.len)
    }

    /// Whether `id` is the head of an outstanding chain.
    #[inline]
    pub fn is_head(&self, id: u32) -> bool {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.chain_len.get(i))
            .is_some_and(|&n| n != 0)
    }

    /// Reaps the next used element whose id is an outstanding head, freeing its chain, and
    /// skipping (and counting) bad ones. `None` when no used element is ready.
    ///
    /// The chain's descriptors go back to the free list at once; their links stay readable
    /// with [`chain`](Self::chain) until the next [`add_chain`](Self::add_chain).
    #[inline]
    pub fn pop_used(&mut self) -> Option<Used> {
        loop {
            if self.last_used == self.used_seen && self.used_ready() == 0 {
                return None;
            }
            let (id, len) = self.peek_used(0);
            self.last_used += 1;
            if self.interrupts && self.event_idx {
                // Ask for a call at the next used element (no fence: see arm_interrupts).
                self.mem.set_used_event(self.last_used.0);
            }
            if !self.is_head(id) {
                self.stats.bad_used_id += 1;
                continue;
            }
            let head = id as u16;
            let ndesc = self.free_chain(head);
            return Some(Used { head, len, ndesc });
        }
    }

    fn free_chain(&mut self, head: u16) -> u16 {
        let n = std::mem::take(&mut self.chain_len[usize::from(head)]);
        let mut id = head;
        for _ in 0..n {
            self.free.push(id);
            id = self.next[usize::from(id)];
        }
        n
    }

    /// The descriptor ids of the chain at `head` (`ndesc` long), from the driver's shadow.
    pub fn chain(&self, head: u16, ndesc: u16) -> impl Iterator<Item = u16> + '_ {
        let mut id = head;
        (0..ndesc).map(move |_| {
            let this = id;
            id = self.next[usize::from(id & (self.size() - 1))];
            this
        })
    }

    /// Whether calls are wanted.
    pub fn interrupts(&self) -> bool {
        self.interrupts
    }

    /// Sets whether calls are wanted. Without EVENT_IDX this is `avail.flags`'
    /// [`VIRTQ_AVAIL_F_NO_INTERRUPT`]; with it, `used_event` follows the reaped index while on
    /// (the device ignores the flag then and may call once more after turning off).
    pub fn set_interrupts(&mut self, on: bool) {
        self.interrupts = on;
        let flags = if on { 0 } else { VIRTQ_AVAIL_F_NO_INTERRUPT };
        self.mem.set_avail_flags(flags);
        if on && self.event_idx {
            self.mem.set_used_event(self.last_used.0);
        }
    }

    /// Turns calls on before sleeping on the call eventfd, and tells whether used elements
    /// arrived meanwhile (then reap instead of sleeping: the call may have been skipped).
    pub fn arm_interrupts(&mut self) -> bool {
        self.set_interrupts(true);
        // Store-load barrier (Linux virtio_store_mb): the device must see used_event / flags
        // before we look at used.idx, or it may skip the call for an element we then miss.
        fence(Ordering::SeqCst);
        self.used_ready() != 0
    }
}

#[cfg(test)]
#[path = "driver_ring_tests.rs"]
mod tests;
