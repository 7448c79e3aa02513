//! Tests of [`super`]: the test plays the device by hand on the shared memory.

use std::num::Wrapping;

use super::*;
use crate::frontend::shm::tests::shm;
use crate::frontend::shm::{VirtqUsedElem, split_ring_lengths};

/// A ring of `size` entries at offset 0 of a fresh memory: desc, avail, used back to back
/// (each part aligned as the spec requires, not more).
fn ring(size: u16) -> SharedRing {
    let (dl, al, _) = split_ring_lengths(size);
    let avail = dl;
    let used = (avail + al).next_multiple_of(4);
    SharedRing::new(shm(0x10000), size, 0, avail, used).unwrap()
}

/// The device, by hand: reads available chains, writes used elements.
struct Device {
    ring: SharedRing,
    last_avail: Wrapping<u16>,
    used: Wrapping<u16>,
}

impl Device {
    fn new(ring: &SharedRing, base: u16) -> Self {
        Self {
            ring: ring.clone(),
            last_avail: Wrapping(base),
            used: Wrapping(base),
        }
    }

    /// Every newly available chain: head and descriptors.
    fn take(&mut self) -> Vec<(u16, Vec<VirtqDesc>)> {
        let idx = Wrapping(self.ring.load_avail_idx());
        let mut out = Vec::new();
        while self.last_avail != idx {
            let head = self.ring.avail_entry(self.last_avail.0);
            self.last_avail += 1;
            let mut chain = vec![self.ring.read_desc(head)];
            while chain.last().unwrap().flags & VirtqDesc::F_NEXT != 0 {
                chain.push(self.ring.read_desc(chain.last().unwrap().next));
                assert!(chain.len() <= usize::from(self.ring.size()), "loop");
            }
            out.push((head, chain));
        }
        out
    }

    fn complete(&mut self, head: u32, len: u32) {
        self.ring
            .write_used_elem(self.used.0, VirtqUsedElem { id: head, len });
        self.used += 1;
        self.ring.store_used_idx(self.used.0);
    }
}

/// Adds a chain of `n` descriptors whose addresses encode (chain tag, position).
fn add(r: &mut DriverRing, n: u16, tag: u64, write: bool) -> Option<u16> {
    r.add_chain(n, |i, _id| {
        (tag << 16 | u64::from(i), 100 + u32::from(i), write)
    })
}

#[test]
fn ring_memory_follows_the_virtio_layout() {
    let mem = ring(8);
    let mut r = DriverRing::new(mem.clone(), 0, false);
    assert_eq!(add(&mut r, 3, 1, false), Some(0));
    assert_eq!(add(&mut r, 1, 2, true), Some(3));
    assert!(r.publish(), "no suppression: kick");
    let s = mem.shm().slice();
    // Descriptors at a 16-byte stride: addr u64, len u32, flags u16, next u16.
    for (i, (addr, len, flags, next)) in [
        (1u64 << 16, 100u32, VirtqDesc::F_NEXT, 1u16),
        ((1 << 16) | 1, 101, VirtqDesc::F_NEXT, 2),
        ((1 << 16) | 2, 102, 0, 0),
        (2 << 16, 100, VirtqDesc::F_WRITE, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut raw = [0u8; 16];
        s.read_at(16 * i, &mut raw).unwrap();
        assert_eq!(raw[..8], addr.to_le_bytes(), "desc {i} addr");
        assert_eq!(raw[8..12], len.to_le_bytes(), "desc {i} len");
        assert_eq!(raw[12..14], flags.to_le_bytes(), "desc {i} flags");
        assert_eq!(raw[14..16], next.to_le_bytes(), "desc {i} next");
    }
    // Available ring right after the 128-byte table: flags, idx, ring[8], used_event.
    let avail = 128;
    assert_eq!(s.read_obj::<[u16; 4]>(avail).unwrap(), [0, 2, 0, 3]);
    // Used ring: flags, idx, then 8-byte elements; the device writes it.
    let used = (avail + 6 + 16usize).next_multiple_of(4);
    let mut dev = Device::new(&mem, 0);
    dev.complete(3, 64);
    assert_eq!(s.read_obj::<[u16; 2]>(used).unwrap(), [0, 1]);
    assert_eq!(s.read_obj::<[u32; 2]>(used + 4).unwrap(), [3, 64]);
    assert_eq!(
        r.pop_used(),
        Some(Used {
            head: 3,
            len: 64,
            ndesc: 1
        })
    );
}

#[test]
fn chains_free_lists_and_out_of_order_completion() {
    let mem = ring(8);
    let mut r = DriverRing::new(mem.clone(), 0, false);
    let mut dev = Device::new(&mem, 0);
    let a = add(&mut r, 2, 1, false).unwrap();
    let b = add(&mut r, 3, 2, false).unwrap();
    let c = add(&mut r, 3, 3, true).unwrap();
    assert_eq!((r.free_count(), r.outstanding()), (0, 3));
    assert_eq!(add(&mut r, 1, 4, false), None, "no descriptor left");
    assert!(dev.take().is_empty(), "nothing published yet");
    r.publish();
    let chains = dev.take();
    assert_eq!(chains.len(), 3);
    assert_eq!(chains[1].0, b);
    let addrs: Vec<u64> = chains[1].1.iter().map(|d| d.addr).collect();
    assert_eq!(addrs, [2 << 16, (2 << 16) | 1, (2 << 16) | 2]);
    assert!(
        chains[2]
            .1
            .iter()
            .all(|d| d.flags & VirtqDesc::F_WRITE != 0)
    );
    // The device completes b, then c, then a.
    dev.complete(b.into(), 7);
    dev.complete(c.into(), 8);
    let u = r.pop_used().unwrap();
    assert_eq!((u.head, u.len, u.ndesc), (b, 7, 3));
    let ids: Vec<u16> = r.chain(u.head, u.ndesc).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(r.free_count(), 3);
    assert_eq!(r.pop_used().unwrap().head, c);
    assert_eq!(r.pop_used(), None);
    assert_eq!(r.outstanding(), 1);
    // Freed descriptors are reused.
    let d = add(&mut r, 6, 5, false).unwrap();
    assert_ne!(d, a);
    r.publish();
    dev.complete(a.into(), 0);
    dev.take();
    dev.complete(d.into(), 0);
    assert_eq!(r.pop_used().unwrap().head, a);
    assert_eq!(r.pop_used().unwrap().ndesc, 6);
    assert_eq!((r.free_count(), r.outstanding()), (8, 0));
    assert_eq!(r.stats().bad_used_id, 0);
}

#[test]
fn indexes_wrap_around_65535() {
    for event_idx in [false, true] {
        let mem = ring(4);
        let base = 65530;
        let mut r = DriverRing::new(mem.clone(), base, event_idx);
        let mut dev = Device::new(&mem, base);
        assert_eq!(mem.load_avail_idx(), base);
        assert_eq!(mem.load_used_idx(), base);
        let mut done = 0u32;
        for round in 0..40u64 {
            // Fill the ring with chains of 1 or 2 descriptors.
            let n = 1 + (round % 2) as u16;
            while add(&mut r, n, round, false).is_some() {}
            r.publish();
            for (head, chain) in dev.take() {
                assert_eq!(chain.len(), usize::from(n));
                dev.complete(head.into(), 1);
            }
            while r.pop_used().is_some() {
                done += 1;
            }
            assert_eq!((r.free_count(), r.outstanding()), (4, 0), "round {round}");
        }
        // 20 rounds of 4 chains, 20 of 2.
        assert_eq!(done, 120);
        assert_eq!(r.avail_idx(), base.wrapping_add(120));
        assert_eq!(r.last_used(), base.wrapping_add(120));
        assert_eq!(mem.load_avail_idx(), base.wrapping_add(120));
        assert_eq!(r.stats().bad_used_idx + r.stats().bad_used_id, 0);
    }
}

#[test]
fn bad_used_elements_are_counted_and_skipped() {
    let mem = ring(8);
    let mut r = DriverRing::new(mem.clone(), 0, false);
    let mut dev = Device::new(&mem, 0);
    let a = add(&mut r, 1, 1, false).unwrap();
    add(&mut r, 1, 2, false).unwrap();
    add(&mut r, 1, 3, false).unwrap();
    r.publish();
    dev.complete(5, 0); // not an outstanding head
    dev.complete(1000, 0); // out of range
    dev.complete(a.into(), 9);
    let u = r.pop_used().unwrap();
    assert_eq!((u.head, u.len), (a, 9));
    assert_eq!(r.pop_used(), None);
    assert_eq!(r.stats().bad_used_id, 2);
    // A used index far beyond what was made available is not believed.
    mem.store_used_idx(100);
    assert_eq!(r.pop_used(), None);
    assert_eq!(r.stats().bad_used_idx, 1);
    assert_eq!(r.free_count(), 6, "the two skipped chains stay outstanding");
}

#[test]
fn need_event_matches_the_spec_formula() {
    assert!(need_event(0, 1, 0));
    assert!(!need_event(1, 1, 0), "event 1 not passed by [0, 1)");
    assert!(need_event(5, 10, 3));
    assert!(!need_event(10, 10, 3));
    assert!(!need_event(2, 10, 3));
    // Across the wrap.
    assert!(need_event(65535, 2, 65534));
    assert!(need_event(0, 2, 65534));
    assert!(!need_event(2, 2, 65534));
}

#[test]
fn kicks_follow_the_devices_suppression() {
    // Without EVENT_IDX: used.flags NO_NOTIFY.
    let mem = ring(8);
    let mut r = DriverRing::new(mem.clone(), 0, false);
    mem.set_used_flags(VIRTQ_USED_F_NO_NOTIFY);
    add(&mut r, 1, 0, false);
    assert!(!r.publish());
    assert!(!r.publish(), "nothing new: no kick");
    mem.set_used_flags(0);
    add(&mut r, 1, 0, false);
    assert!(r.publish());
    assert_eq!((r.stats().kicks_wanted, r.stats().kicks_suppressed), (1, 1));

    // With EVENT_IDX: kick only when avail_event is among the new indexes.
    let mem = ring(8);
    let mut r = DriverRing::new(mem.clone(), 0, true);
    mem.set_used_flags(VIRTQ_USED_F_NO_NOTIFY); // ignored with EVENT_IDX
    mem.set_avail_event(2);
    add(&mut r, 1, 0, false);
    add(&mut r, 1, 0, false);
    assert!(!r.publish(), "indexes 0 and 1 do not reach avail_event 2");
    add(&mut r, 1, 0, false);
    assert!(r.publish(), "index 2 reached");
    add(&mut r, 1, 0, false);
    assert!(!r.publish(), "device did not move avail_event");
}

#[test]
fn interrupt_suppression_fields() {
    let mem = ring(8);
    let mut r = DriverRing::new(mem.clone(), 0, false);
    assert_eq!(mem.avail_flags(), 0);
    r.set_interrupts(false);
    assert_eq!(mem.avail_flags(), VIRTQ_AVAIL_F_NO_INTERRUPT);
    assert!(!r.arm_interrupts());
    assert_eq!(mem.avail_flags(), 0);

    let mut r = DriverRing::new(mem.clone(), 0, true);
    let mut dev = Device::new(&mem, 0);
    add(&mut r, 1, 0, false);
    add(&mut r, 1, 0, false);
    r.publish();
    dev.take();
    dev.complete(0, 0);
    r.pop_used();
    assert_eq!(mem.used_event(), 1, "call me at the next used element");
    dev.complete(1, 0);
    assert!(r.arm_interrupts(), "an element arrived: reap, don't sleep");
    r.pop_used();
    assert!(!r.arm_interrupts());
    assert_eq!(mem.used_event(), 2);
}
