//! The ring under a [`Queue`](super::queue::Queue): a split [`DriverRing`] or a packed
//! [`PackedDriverRing`], with the one interface the queue uses (chains of buffer slots, publish
//! and kick, used elements, interrupts).
//!
//! On a split ring descriptor `i` always uses buffer slot `i` of the queue's pool. A packed
//! ring names chains by buffer id and reuses its slots in ring order, so its chains take their
//! buffer slots from a free list instead (at most the queue size are outstanding, as there are
//! slots in the pool), linked per chain; a reaped chain's slots stay readable until the next
//! reap or post.

use super::driver_ring::{DriverRing, RingStats, Used};
use super::packed_ring::PackedDriverRing;
use crate::virtq::packed::{EventSuppress, RingPos, encode_vring_base};

/// The buffer slots of a packed ring's chains.
#[derive(Debug)]
pub(crate) struct PackedSlots {
    /// Free buffer slots, a stack.
    free: Vec<u16>,
    /// Per slot: the next slot of its chain.
    next: Box<[u16]>,
    /// Per buffer id: the first slot of its chain and how many.
    chain: Box<[(u16, u16)]>,
    /// Slots of the chain reaped last, freed at the next reap or post.
    reaped: Option<(u16, u16)>,
    /// Descriptors of the chain being posted.
    bufs: Vec<(u64, u32, bool)>,
    interrupts: bool,
}

/// A queue's ring (see the module docs).
#[derive(Debug)]
pub(crate) enum QueueRing {
    Split(DriverRing),
    Packed(PackedDriverRing, PackedSlots),
}

impl QueueRing {
    /// A packed ring over a fresh [`PackedDriverRing`] of `size` slots.
    pub(crate) fn packed(ring: PackedDriverRing) -> QueueRing {
        let size = ring.size();
        QueueRing::Packed(
            ring,
            PackedSlots {
                free: (0..size).rev().collect(),
                next: vec![0; usize::from(size)].into(),
                chain: vec![(0, 0); usize::from(size)].into(),
                reaped: None,
                bufs: Vec::with_capacity(usize::from(size)),
                interrupts: true,
            },
        )
    }

    pub(crate) fn size(&self) -> u16 {
        match self {
            QueueRing::Split(r) => r.size(),
            QueueRing::Packed(r, _) => r.size(),
        }
    }

    /// Descriptors free for new chains.
    pub(crate) fn free_count(&self) -> u16 {
        match self {
            QueueRing::Split(r) => r.free_count(),
            QueueRing::Packed(r, s) => {
                let pending = s.reaped.map_or(0, |(_, n)| n);
                r.free_slots().min(s.free.len() as u16 + pending)
            }
        }
    }

    /// Chains made available and not reaped yet.
    pub(crate) fn outstanding(&self) -> u16 {
        match self {
            QueueRing::Split(r) => r.outstanding(),
            QueueRing::Packed(r, _) => r.size() - r.free_ids(),
        }
    }

    pub(crate) fn stats(&self) -> RingStats {
        match self {
            QueueRing::Split(r) => r.stats(),
            QueueRing::Packed(r, _) => {
                let p = r.stats();
                RingStats {
                    kicks_wanted: p.kicks_wanted,
                    kicks_suppressed: p.kicks_suppressed,
                    bad_used_id: p.bad_used_id,
                    bad_used_idx: 0,
                }
            }
        }
    }

    pub(crate) fn set_event_idx(&mut self, on: bool) {
        match self {
            QueueRing::Split(r) => r.set_event_idx(on),
            QueueRing::Packed(r, s) => {
                r.set_event_idx(on);
                let interrupts = s.interrupts;
                self.set_interrupts(interrupts);
            }
        }
    }

    /// Makes a chain of `n` descriptors available (not yet published): `seg(i, slot)` gives
    /// descriptor `i`, in buffer slot `slot`. Returns the id the chain is reaped by (the head
    /// descriptor on a split ring, the buffer id on a packed one); `None` if there is no room.
    #[inline]
    pub(crate) fn add_chain(
        &mut self,
        n: u16,
        mut seg: impl FnMut(u16, u16) -> (u64, u32, bool),
    ) -> Option<u16> {
        let (r, s) = match self {
            QueueRing::Split(r) => return r.add_chain(n, seg),
            QueueRing::Packed(r, s) => (r, s),
        };
        s.release_reaped();
        if n == 0 || usize::from(n) > s.free.len() || n > r.free_slots() {
            return None;
        }
        s.bufs.clear();
        let mut first = 0;
        let mut prev: Option<u16> = None;
        for i in 0..n {
            let slot = s.free.pop()?;
            if let Some(p) = prev {
                s.next[usize::from(p)] = slot;
            } else {
                first = slot;
            }
            prev = Some(slot);
            s.bufs.push(seg(i, slot));
        }
        match r.add_chain(&s.bufs) {
            Some(id) => {
                s.chain[usize::from(id)] = (first, n);
                Some(id)
            }
            None => {
                // No id free: the slots go back.
                s.free_chain(first, n);
                None
            }
        }
    }

    /// Publishes the chains added since the last publication (a packed ring's are visible at
    /// once) and tells whether the device wants a kick.
    #[inline]
    pub(crate) fn publish(&mut self) -> bool {
        match self {
            QueueRing::Split(r) => r.publish(),
            QueueRing::Packed(r, _) => r.kick_needed(),
        }
    }

    /// Used elements ready to be reaped: all of them on a split ring (its index says), on a
    /// packed ring counted up to `want` (each one read from the ring: a caller asks for what
    /// it needs, not for the whole ring on every packet).
    #[inline]
    pub(crate) fn used_ready(&mut self, want: u16) -> u16 {
        match self {
            QueueRing::Split(r) => r.used_ready(),
            QueueRing::Packed(r, _) => r.ready_used(want).0,
        }
    }

    /// The next used element's (id, length), unchecked; only after `used_ready` saw one.
    #[inline]
    pub(crate) fn peek_used(&self) -> (u32, u32) {
        match self {
            QueueRing::Split(r) => r.peek_used(0),
            QueueRing::Packed(r, _) => {
                let d = r.read_desc(r.used_pos().idx());
                (u32::from(d.id), d.len)
            }
        }
    }

    /// Whether `id` names an outstanding chain.
    #[inline]
    pub(crate) fn is_head(&self, id: u32) -> bool {
        match self {
            QueueRing::Split(r) => r.is_head(id),
            QueueRing::Packed(r, _) => u16::try_from(id).is_ok_and(|id| r.is_outstanding(id)),
        }
    }

    /// Reaps the next used element (see [`DriverRing::pop_used`]); its chain's slots are
    /// readable with [`chain`](Self::chain) until the next reap or post.
    #[inline]
    pub(crate) fn pop_used(&mut self) -> Option<Used> {
        let (r, s) = match self {
            QueueRing::Split(r) => return r.pop_used(),
            QueueRing::Packed(r, s) => (r, s),
        };
        s.release_reaped();
        let u = r.pop_used()?;
        let (first, n) = std::mem::take(&mut s.chain[usize::from(u.id)]);
        s.reaped = Some((first, n));
        Some(Used {
            head: u.id,
            len: u.len,
            ndesc: n,
        })
    }

    /// The buffer slots of the chain reaped as `head` (`ndesc` long).
    pub(crate) fn chain(&self, head: u16, ndesc: u16) -> impl Iterator<Item = u16> + '_ {
        let (split, packed) = match self {
            QueueRing::Split(r) => (Some(r.chain(head, ndesc)), None),
            QueueRing::Packed(_, s) => {
                let (first, n) = s.reaped.unwrap_or((0, 0));
                let mut slot = first;
                let walk = (0..n.min(ndesc)).map(move |_| {
                    let this = slot;
                    slot = s.next[usize::from(slot) % s.next.len().max(1)];
                    this
                });
                (None, Some(walk))
            }
        };
        split
            .into_iter()
            .flatten()
            .chain(packed.into_iter().flatten())
    }

    pub(crate) fn interrupts(&self) -> bool {
        match self {
            QueueRing::Split(r) => r.interrupts(),
            QueueRing::Packed(_, s) => s.interrupts,
        }
    }

    /// Sets whether used notifications (calls) are wanted.
    pub(crate) fn set_interrupts(&mut self, on: bool) {
        match self {
            QueueRing::Split(r) => r.set_interrupts(on),
            QueueRing::Packed(r, s) => {
                s.interrupts = on;
                if on {
                    r.set_driver_event(EventSuppress::Enable);
                } else {
                    r.disable_interrupts();
                }
            }
        }
    }

    /// Turns calls on before sleeping; whether used elements came meanwhile.
    pub(crate) fn arm_interrupts(&mut self) -> bool {
        match self {
            QueueRing::Split(r) => r.arm_interrupts(),
            QueueRing::Packed(r, s) => {
                s.interrupts = true;
                r.arm_interrupts()
            }
        }
    }

    /// Where the device resumes on a start without a base from GET_VRING_BASE: a split ring
    /// at its used index in memory; a packed ring after the used descriptors waiting (its
    /// available and used positions then agree, with nothing in flight), as the vring base
    /// (available half in bits 0-15).
    pub(crate) fn start_base(&self) -> u32 {
        match self {
            QueueRing::Split(r) => u32::from(r.shared().load_used_idx()),
            QueueRing::Packed(r, _) => {
                let (_, at): (u16, RingPos) = r.ready_used(r.size());
                encode_vring_base(at, at)
            }
        }
    }
}

impl PackedSlots {
    /// Returns the slots of the chain reaped last to the free list.
    fn release_reaped(&mut self) {
        if let Some((first, n)) = self.reaped.take() {
            self.free_chain(first, n);
        }
    }

    /// Returns the `n` slots of the chain starting at `first` to the free list.
    fn free_chain(&mut self, first: u16, n: u16) {
        let mut slot = first;
        for _ in 0..n {
            self.free.push(slot);
            slot = self.next[usize::from(slot)];
        }
    }
}
