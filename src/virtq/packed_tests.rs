//! The packed ring's device side against well-formed and hostile rings, in real memfd-backed
//! guest memory.

use super::*;
use crate::memory::testutil::{memfd, unique_name};
use crate::memory::{FrontendVa, GuestRegion, MapOptions, MemoryLimits, RegionDesc};

const QSIZE: u16 = 8;
const DESC: u64 = 0x0;
const DRIVER: u64 = 0x1000;
const DEVICE: u64 = 0x1010;
const UVA: u64 = 0x7000_0000_0000;

/// Guest memory: region A = GPA [0, 1 MiB), region B = GPA [1 MiB, 2 MiB), from two fds (as
/// the split ring's tests), and a packed ring of `size` at DESC, DRIVER, DEVICE.
struct Guest {
    mem: GuestMemory,
    rings: PackedRings,
    size: u16,
}

fn region(tag: &str, gpa: u64, uva: u64) -> GuestRegion {
    GuestRegion::map(
        memfd(&unique_name(tag), 1 << 20),
        RegionDesc {
            guest_phys_addr: gpa,
            memory_size: 1 << 20,
            userspace_addr: uva,
            mmap_offset: 0,
        },
        MapOptions::new(),
    )
    .unwrap()
}

fn addrs(desc: u64, driver: u64, device: u64) -> VringAddrs {
    VringAddrs {
        flags: 0,
        desc: FrontendVa(UVA + desc),
        avail: FrontendVa(UVA + driver),
        used: FrontendVa(UVA + device),
        log: 0,
    }
}

impl Guest {
    fn new(size: u16) -> Guest {
        let a = region("packed-a", 0, UVA);
        let b = region("packed-b", 1 << 20, UVA + (4 << 20));
        let mem = GuestMemory::new(vec![a, b], MemoryLimits::default()).unwrap();
        let rings = PackedRings::new(&mem, &addrs(DESC, DRIVER, DEVICE), u32::from(size)).unwrap();
        Guest { mem, rings, size }
    }

    fn q(&self) -> PackedQueue<'_> {
        PackedQueue::new(&self.rings, &self.mem, self.size)
    }

    fn slice(&self, gpa: u64, len: u64) -> GuestSlice<'_> {
        self.mem.gpa_to_host(Gpa(gpa), len).unwrap()
    }

    /// Writes descriptor `d` at `table[i]` (a ring slot or an indirect table entry).
    fn put(&self, table: u64, i: u16, d: PvirtqDesc) {
        self.slice(table + 16 * u64::from(i), 16)
            .write_obj(0, d.swap_le())
            .unwrap();
    }

    fn get(&self, slot: u16) -> PvirtqDesc {
        self.slice(DESC + 16 * u64::from(slot), 16)
            .read_obj::<PvirtqDesc>(0)
            .unwrap()
            .swap_le()
    }

    /// Plays the driver: writes `bufs` (addr, len, flags without AVAIL/USED) from `pos` on with
    /// buffer id `id` in every descriptor and NEXT on all but the last, each with the
    /// AVAIL/USED bits of its own lap, the first one's flags last. Returns the next position.
    fn post(&self, pos: RingPos, id: u16, bufs: &[(u64, u32, u16)]) -> RingPos {
        let mut at = pos;
        let mut head_flags = 0;
        for (k, &(addr, len, flags)) in bufs.iter().enumerate() {
            let next = if k + 1 < bufs.len() {
                VIRTQ_DESC_F_NEXT
            } else {
                0
            };
            let f = flags | next | avail_bits(at.wrap());
            let mut d = PvirtqDesc {
                addr,
                len,
                id,
                flags: f,
            };
            if k == 0 {
                head_flags = f;
                d.flags = 0;
            }
            self.put(DESC, at.idx(), d);
            at = at.advance(1, self.size);
        }
        self.set_flags(pos.idx(), head_flags);
        at
    }

    fn set_flags(&self, slot: u16, flags: u16) {
        self.slice(DESC + 16 * u64::from(slot) + 14, 2)
            .store_u16(0, flags.to_le(), Ordering::Release)
            .unwrap();
    }

    fn set_driver_event(&self, off_wrap: u16, flags: u16) {
        let s = self.slice(DRIVER, 4);
        s.store_u16(0, off_wrap, Ordering::Relaxed).unwrap();
        s.store_u16(2, flags, Ordering::Relaxed).unwrap();
    }
}

fn d(addr: u64, len: u32, id: u16, flags: u16) -> PvirtqDesc {
    PvirtqDesc {
        addr,
        len,
        id,
        flags,
    }
}

const N: u16 = VIRTQ_DESC_F_NEXT;
const W: u16 = VIRTQ_DESC_F_WRITE;
const I: u16 = VIRTQ_DESC_F_INDIRECT;

/// The chain at `pos` (must be available) and its buffers as (GPA offset, len) pairs.
fn walk(
    g: &Guest,
    pos: RingPos,
    writable: bool,
) -> (AvailChain, Result<Vec<(usize, usize)>, ChainError>) {
    let q = g.q();
    let c = q.avail_chain(pos, g.size).unwrap().unwrap();
    let base = g.slice(0, 1).as_ptr() as usize;
    let mut out = Vec::new();
    for piece in q.chain(&c, writable, 1 << 20) {
        match piece {
            Ok(s) => out.push(((s.as_ptr() as usize).wrapping_sub(base), s.len())),
            Err(e) => return (c, Err(e)),
        }
    }
    (c, Ok(out))
}

#[test]
fn a_fresh_ring_has_nothing_available() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    for i in 0..QSIZE {
        assert_eq!(q.avail_chain(RingPos::new(i, true), QSIZE), Ok(None));
    }
}

#[test]
fn a_single_descriptor_is_read_with_its_id() {
    let g = Guest::new(QSIZE);
    let next = g.post(RingPos::START, 5, &[(0x10000, 64, 0)]);
    assert_eq!(next, RingPos::new(1, true));
    let (c, bufs) = walk(&g, RingPos::START, false);
    assert_eq!((c.id, c.count, c.head), (5, 1, RingPos::START));
    assert_eq!(c.next(QSIZE), next);
    assert_eq!(bufs.unwrap(), vec![(0x10000, 64)]);
    // The next slot is still empty.
    assert_eq!(g.q().avail_chain(next, QSIZE), Ok(None));
}

#[test]
fn a_chain_across_the_ring_end_flips_the_wrap_counter() {
    let g = Guest::new(QSIZE);
    let start = RingPos::new(6, true);
    let bufs = [(0x10000, 10, 0), (0x20000, 20, 0), (0x30000, 30, 0)];
    let next = g.post(start, 3, &bufs);
    assert_eq!(next, RingPos::new(1, false));
    // Slot 0 of the next lap carries the flipped bits: AVAIL clear, USED set.
    assert_eq!(g.get(0).flags, VIRTQ_DESC_F_USED);
    let (c, got) = walk(&g, start, false);
    assert_eq!((c.id, c.count, c.next(QSIZE)), (3, 3, next));
    assert_eq!(
        got.unwrap(),
        vec![(0x10000, 10), (0x20000, 20), (0x30000, 30)]
    );
    // A tail in slot 0 still marked for the old lap is not available.
    g.put(DESC, 0, d(0x30000, 30, 3, avail_bits(true)));
    assert_eq!(
        g.q().avail_chain(start, QSIZE),
        Err(PackedError::NotAvailable { slot: 0 })
    );
}

#[test]
fn the_buffer_id_comes_from_the_last_descriptor() {
    let g = Guest::new(QSIZE);
    g.post(RingPos::START, 7, &[(0x10000, 1, 0), (0x10000, 1, 0)]);
    // The driver's id in the first descriptor differs: the last one's counts.
    let mut first = g.get(0);
    first.id = 1;
    g.put(DESC, 0, first);
    let c = g.q().avail_chain(RingPos::START, QSIZE).unwrap().unwrap();
    assert_eq!((c.id, c.count), (7, 2));
}

#[test]
fn descriptors_not_marked_available_are_not_read() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    // Marked used for the current lap (AVAIL = USED = 1).
    g.put(DESC, 0, d(0x10000, 8, 0, used_bits(true)));
    assert_eq!(q.avail_chain(RingPos::START, QSIZE), Ok(None));
    // Marked available for the other lap: the guest flipped its wrap counter.
    g.put(DESC, 0, d(0x10000, 8, 0, avail_bits(false)));
    assert_eq!(q.avail_chain(RingPos::START, QSIZE), Ok(None));
    // ... but it is available to a device on that lap.
    assert!(
        q.avail_chain(RingPos::new(0, false), QSIZE)
            .unwrap()
            .is_some()
    );
    // Both bits set with the wrap counter clear: neither available nor used.
    g.put(DESC, 0, d(0x10000, 8, 0, used_bits(true)));
    assert_eq!(q.avail_chain(RingPos::new(0, false), QSIZE), Ok(None));
}

#[test]
fn a_chain_running_into_unavailable_descriptors_is_refused() {
    let g = Guest::new(QSIZE);
    g.post(RingPos::START, 2, &[(0x10000, 1, 0), (0x10000, 1, 0)]);
    // The tail is marked used (as the device left it), not available.
    g.put(DESC, 1, d(0x10000, 1, 2, used_bits(true)));
    assert_eq!(
        g.q().avail_chain(RingPos::START, QSIZE),
        Err(PackedError::NotAvailable { slot: 1 })
    );
    // A NEXT in the last descriptor runs into an empty slot.
    g.post(RingPos::new(3, true), 2, &[(0x10000, 1, N)]);
    assert_eq!(
        g.q().avail_chain(RingPos::new(3, true), QSIZE),
        Err(PackedError::NotAvailable { slot: 4 })
    );
}

#[test]
fn chains_longer_than_the_ring_or_the_room_are_refused() {
    let g = Guest::new(QSIZE);
    // Every slot NEXT, marked available for the lap it is in: it never ends.
    for i in 0..QSIZE {
        g.put(DESC, i, d(0x10000, 1, 0, N | avail_bits(true)));
    }
    let q = g.q();
    assert_eq!(
        q.avail_chain(RingPos::START, QSIZE),
        Err(PackedError::TooLong { max: QSIZE })
    );
    // A budget above the size is the size.
    assert_eq!(
        q.avail_chain(RingPos::START, 1000),
        Err(PackedError::TooLong { max: QSIZE })
    );
    // A chain of 4 with room for 3 (slots of chains in flight).
    g.post(RingPos::START, 1, &[(0x10000, 1, 0); 4]);
    assert_eq!(
        q.avail_chain(RingPos::START, 3),
        Err(PackedError::TooLong { max: 3 })
    );
    assert_eq!(q.avail_chain(RingPos::START, 4).unwrap().unwrap().count, 4);
    // No room at all.
    assert_eq!(
        q.avail_chain(RingPos::START, 0),
        Err(PackedError::TooLong { max: 0 })
    );
}

#[test]
fn buffer_ids_beyond_the_ring_and_ids_in_flight_are_refused() {
    let g = Guest::new(QSIZE);
    g.post(RingPos::START, QSIZE, &[(0x10000, 1, 0)]);
    assert_eq!(
        g.q().avail_chain(RingPos::START, QSIZE),
        Err(PackedError::BadId {
            id: QSIZE,
            size: QSIZE
        })
    );
    let mut f = InFlightIds::new(QSIZE);
    assert_eq!(f.insert(3), Ok(()));
    assert_eq!(f.insert(7), Ok(()));
    assert_eq!(f.insert(3), Err(PackedError::IdInFlight(3)));
    assert_eq!(
        f.insert(QSIZE),
        Err(PackedError::BadId {
            id: QSIZE,
            size: QSIZE
        })
    );
    assert_eq!(
        f.insert(u16::MAX),
        Err(PackedError::BadId {
            id: u16::MAX,
            size: QSIZE
        })
    );
    assert_eq!(f.count(), 2);
    assert!(f.remove(3));
    assert!(!f.remove(3), "returned twice");
    assert!(!f.contains(3));
    assert!(f.contains(7));
    assert_eq!(f.insert(3), Ok(()));
    // An id above 64 in a ring that is not a power of two.
    let mut f = InFlightIds::new(100);
    assert_eq!(f.insert(99), Ok(()));
    assert_eq!(f.insert(99), Err(PackedError::IdInFlight(99)));
    assert!(matches!(f.insert(100), Err(PackedError::BadId { .. })));
    // Returned in one go: ids not in flight (never taken, returned twice, out of range) are
    // skipped.
    assert_eq!(f.insert(5), Ok(()));
    assert_eq!(f.insert(64), Ok(()));
    assert_eq!(f.count(), 3);
    f.remove_all([64, 5, 6, 64, 100, u16::MAX]);
    assert_eq!(f.count(), 1);
    assert!(!f.contains(5) && !f.contains(64) && f.contains(99));
    f.remove_all([]);
    assert_eq!(f.count(), 1);
    f.remove_all([99]);
    assert_eq!(f.count(), 0);
}

#[test]
fn indirect_tables_are_read_in_order() {
    let g = Guest::new(QSIZE);
    let table = 0x30000;
    g.put(table, 0, d(0x40000, 10, 0, 0));
    // NEXT, INDIRECT and the id inside a table are reserved and ignored (§2.8.7).
    g.put(table, 1, d(0x50000, 20, 99, N | I));
    g.put(table, 2, d(0x60000, 0, 0, 0));
    g.put(table, 3, d(0x70000, 30, 0, 0));
    // WRITE on the descriptor naming the table is ignored too.
    g.post(RingPos::START, 4, &[(table, 64, I | W)]);
    let (c, got) = walk(&g, RingPos::START, false);
    assert_eq!((c.id, c.count), (4, 1));
    assert_eq!(
        got.unwrap(),
        vec![(0x40000, 10), (0x50000, 20), (0x70000, 30)]
    );
    // A writable entry in a transmit chain's table is read (DPDK's virtio driver leaves WRITE
    // on its tables' header entries; reading cannot harm the guest)...
    g.put(table, 3, d(0x70000, 30, 0, W));
    assert_eq!(
        walk(&g, RingPos::START, false).1.unwrap(),
        vec![(0x40000, 10), (0x50000, 20), (0x70000, 30)]
    );
    // ...but a readable entry in a receive chain's table is refused (it would be written),
    // and so is a writable buffer in a transmit chain outside a table (see
    // `buffers_are_checked_as_on_the_split_ring`).
    for k in 0..4 {
        g.put(table, k, d(0x40000 + k as u64 * 0x1000, 10, 0, W));
    }
    g.put(table, 2, d(0x60000, 10, 0, 0));
    assert_eq!(
        walk(&g, RingPos::START, true).1,
        Err(ChainError::Permissions)
    );
}

#[test]
fn bad_indirect_descriptors_are_refused() {
    let g = Guest::new(QSIZE);
    let table = 0x30000;
    g.put(table, 0, d(0x40000, 10, 0, 0));
    // INDIRECT with NEXT.
    let p = g.post(RingPos::START, 0, &[(table, 16, I), (0x10000, 1, 0)]);
    assert_eq!(
        walk(&g, RingPos::START, false).1,
        Err(ChainError::NestedIndirect)
    );
    // INDIRECT as the last of a NEXT chain.
    let p2 = g.post(p, 1, &[(0x10000, 1, 0), (table, 16, I)]);
    assert_eq!(walk(&g, p, false).1, Err(ChainError::NestedIndirect));
    // Bad table lengths.
    let mut at = p2;
    for len in [0, 17, 16 * (MAX_INDIRECT + 1)] {
        let next = g.post(at, 2, &[(table, len, I)]);
        assert_eq!(walk(&g, at, false).1, Err(ChainError::IndirectLen(len)));
        at = next;
    }
    // A table outside guest memory, or across the hole after region B.
    for addr in [0x1000_0000, (2 << 20) - 16, u64::MAX - 8] {
        let next = g.post(at, 3, &[(addr, 32, I)]);
        assert!(matches!(
            walk(&g, at, false).1,
            Err(ChainError::Unmapped { .. })
        ));
        at = next;
    }
}

#[test]
fn buffers_are_checked_as_on_the_split_ring() {
    let g = Guest::new(QSIZE);
    // Outside guest memory.
    let p = g.post(RingPos::START, 0, &[(0x4000_0000, 64, 0)]);
    assert!(matches!(
        walk(&g, RingPos::START, false).1,
        Err(ChainError::Unmapped { .. })
    ));
    // Across regions A and B: two pieces.
    let p2 = g.post(p, 1, &[((1 << 20) - 16, 32, 0)]);
    let got = walk(&g, p, false).1.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0], got[1].1), (((1 << 20) - 16, 16), 16));
    // Writable after readable in a transmit chain; readable in a receive chain.
    let p3 = g.post(p2, 2, &[(0x10000, 8, 0), (0x20000, 8, W)]);
    assert_eq!(walk(&g, p2, false).1, Err(ChainError::Permissions));
    assert_eq!(walk(&g, p2, true).1, Err(ChainError::Permissions));
    // A receive chain.
    let p4 = g.post(p3, 3, &[(0x10000, 8, W), (0x20000, 0, W), (0x30000, 8, W)]);
    assert_eq!(
        walk(&g, p3, true).1.unwrap(),
        vec![(0x10000, 8), (0x30000, 8)]
    );
    // Lengths whose sum passes the bound.
    g.post(p4, 4, &[(0x10000, u32::MAX, 0), (0x10000, u32::MAX, 0)]);
    let q = g.q();
    let c = q.avail_chain(p4, QSIZE).unwrap().unwrap();
    let r: Result<Vec<_>, _> = q.chain(&c, false, 65536).collect();
    assert_eq!(r.unwrap_err(), ChainError::TooLarge(65536));
    // Without the bound: 4 GiB is not in guest memory (region A, then B, then nothing).
    let mut it = q.chain(&c, false, 1 << 40);
    assert!(matches!(it.next(), Some(Ok(s)) if s.len() == (1 << 20) - 0x10000));
    assert!(matches!(it.next(), Some(Ok(s)) if s.len() == 1 << 20));
    assert!(matches!(it.next(), Some(Err(ChainError::Unmapped { .. }))));
    assert!(it.next().is_none(), "an iterator that failed is done");
}

#[test]
fn used_descriptors_carry_the_used_wrap_counter() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    let next = q.write_used(
        RingPos::new(3, true),
        PackedUsed {
            id: 5,
            len: 100,
            count: 2,
        },
    );
    assert_eq!(next, RingPos::new(5, true));
    let u = g.get(3);
    assert_eq!((u.id, u.len), (5, 100));
    assert_eq!(u.flags, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED | W);
    assert!(desc_is_used(u.flags, true));
    assert!(!desc_is_avail(u.flags, true));
    // On a lap with the counter clear both bits are clear; length 0: no WRITE.
    let next = q.write_used(
        RingPos::new(7, false),
        PackedUsed {
            id: 1,
            len: 0,
            count: 3,
        },
    );
    assert_eq!(next, RingPos::new(2, true));
    assert_eq!(g.get(7).flags, 0);
    assert!(desc_is_used(g.get(7).flags, false));
}

#[test]
fn used_ids_may_come_back_out_of_order_or_in_order_batches() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    let mut pos = RingPos::START;
    for id in 0..3 {
        pos = g.post(pos, id, &[(0x10000, 1, W)]);
    }
    // Completed 2, 0, 1: the used descriptors are written in completion order.
    let mut u = RingPos::START;
    for id in [2, 0, 1] {
        u = q.write_used(
            u,
            PackedUsed {
                id,
                len: 1,
                count: 1,
            },
        );
    }
    assert_eq!(u, pos);
    assert_eq!([g.get(0).id, g.get(1).id, g.get(2).id], [2, 0, 1]);
    // IN_ORDER: one used descriptor with the last id stands for a batch of three chains
    // (5 slots); the slots it skips keep what the driver wrote.
    let a = g.post(pos, 3, &[(0x10000, 1, W), (0x10000, 1, W)]);
    let b = g.post(a, 4, &[(0x10000, 1, W)]);
    let c = g.post(b, 5, &[(0x10000, 1, W), (0x10000, 1, W)]);
    let end = q.write_used(
        pos,
        PackedUsed {
            id: 5,
            len: 1,
            count: 5,
        },
    );
    assert_eq!(end, c);
    assert_eq!(end, RingPos::new(0, false));
    assert_eq!(g.get(3).id, 5);
    assert!(desc_is_used(g.get(3).flags, true));
    assert!(
        desc_is_avail(g.get(5).flags, true),
        "skipped slots untouched"
    );
}

#[test]
fn a_batch_of_used_descriptors_shows_its_first_flags_last() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    // Chains of 1, 2, 1, 1 slots from slot 6: the batch crosses the ring's end.
    let start = RingPos::new(6, true);
    let mut p = start;
    let counts = [1, 2, 1, 1];
    for (id, &n) in counts.iter().enumerate() {
        p = g.post(p, id as u16, &vec![(0x10000, 1, W); n]);
    }
    let batch: Vec<PackedUsed> = counts
        .iter()
        .enumerate()
        .map(|(id, &n)| PackedUsed {
            id: id as u16,
            len: 10 + id as u32,
            count: n as u16,
        })
        .collect();
    let slots = [
        RingPos::new(6, true),
        RingPos::new(7, true),
        RingPos::new(1, false),
        RingPos::new(2, false),
    ];
    // Everything but the first element's flags: a driver reading from slot 6 sees nothing.
    let mut staged = Vec::new();
    let end = q.stage_used(start, batch.iter().copied(), &mut staged);
    assert_eq!(end, p);
    assert_eq!(
        staged.iter().map(|u| (u.idx(), u.id())).collect::<Vec<_>>(),
        [(6, 0), (7, 1), (1, 2), (2, 3)]
    );
    q.write_staged_but_first(&staged);
    assert!(desc_is_avail(g.get(6).flags, true), "first not yet used");
    assert!(!desc_is_used(g.get(6).flags, true));
    for (k, s) in slots.iter().enumerate().skip(1) {
        let u = g.get(s.idx());
        assert!(desc_is_used(u.flags, s.wrap()), "element {k} used");
        assert_eq!((u.id, u.len), (k as u16, 10 + k as u32));
    }
    // The whole batch: the first is used too, with its id and length.
    assert_eq!(q.write_used_batch(start, &batch), p);
    let u = g.get(6);
    assert!(desc_is_used(u.flags, true));
    assert_eq!((u.id, u.len), (0, 10));
    assert_eq!(q.write_used_batch(start, &[]), start);
}

/// One-slot chains in a row, from slot 1 to the ring's end (slots 1-7: two lines): written
/// from the first slot's address on, each in its own slot, the first's flags last; then a run
/// of one at slot 0 of the next lap. (Runs that wrap or skip slots: the test above.)
#[test]
fn used_descriptors_of_slots_in_a_row_go_each_to_its_slot() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    let mut p = RingPos::new(1, true);
    for id in 0..7 {
        p = g.post(p, id, &[(0x10000, 1, W)]);
    }
    assert_eq!(p, RingPos::new(0, false));
    let used = |n: u16| {
        (0..n).map(|id| PackedUsed {
            id,
            len: 20 + u32::from(id),
            count: 1,
        })
    };
    let mut staged = Vec::new();
    assert_eq!(q.stage_used(RingPos::new(1, true), used(7), &mut staged), p);
    q.write_staged_but_first(&staged);
    assert!(!desc_is_used(g.get(1).flags, true), "first not yet used");
    for slot in 2..8 {
        let u = g.get(slot);
        assert!(desc_is_used(u.flags, true), "slot {slot} used");
        assert_eq!((u.id, u.len), (slot - 1, 19 + u32::from(slot)));
    }
    q.write_staged(&staged);
    assert!(desc_is_used(g.get(1).flags, true));
    assert_eq!((g.get(1).id, g.get(1).len), (0, 20));
    // A run of one at slot 0 (second lap): written whole by `write_staged`.
    g.post(RingPos::new(0, false), 9, &[(0x10000, 1, W)]);
    staged.clear();
    let one = [PackedUsed {
        id: 9,
        len: 5,
        count: 1,
    }];
    q.stage_used(RingPos::new(0, false), one, &mut staged);
    q.write_staged(&staged);
    assert!(desc_is_used(g.get(0).flags, false));
    assert_eq!((g.get(0).id, g.get(0).len), (9, 5));
}

#[test]
fn a_batch_is_never_seen_half_written() {
    // A reader polls the first slot's flags; once it sees them used, every element of the
    // batch must be there (id, length, flags). The writer plays the driver too, making every
    // slot available again before each round's batch; a sequence count (odd while it does)
    // lets the reader drop what it read during that.
    use std::sync::atomic::{AtomicBool, AtomicU32};
    let g = Guest::new(QSIZE);
    let stop = AtomicBool::new(false);
    let seq = AtomicU32::new(0);
    let (torn, seen) = (AtomicU32::new(0), AtomicU32::new(0));
    let rounds = 20_000u32;
    std::thread::scope(|s| {
        s.spawn(|| {
            let q = g.q();
            while !stop.load(Ordering::Relaxed) {
                let s1 = seq.load(Ordering::Acquire);
                // Odd: the slots are being made available again. 0: before the first round
                // (a zeroed ring reads as used on a lap whose counter is clear).
                if s1 % 2 == 1 || s1 == 0 {
                    continue;
                }
                let r = s1 / 2;
                let wrap = r % 2 == 1;
                if !desc_is_used(q.flags_acquire(0), wrap) {
                    continue;
                }
                let mut bad = false;
                for k in 1..QSIZE {
                    let u = g.get(k);
                    bad |= !desc_is_used(u.flags, wrap) || u.len != r * 100 + u32::from(k);
                }
                fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == s1 {
                    seen.fetch_add(1, Ordering::Relaxed);
                    torn.fetch_add(u32::from(bad), Ordering::Relaxed);
                }
            }
        });
        let q = g.q();
        for r in 1..=rounds {
            let wrap = r % 2 == 1;
            seq.store(2 * r - 1, Ordering::Relaxed);
            fence(Ordering::Release);
            for k in 0..QSIZE {
                g.put(DESC, k, d(0, 0, k, avail_bits(wrap)));
            }
            seq.store(2 * r, Ordering::Release);
            let batch: Vec<_> = (0..QSIZE)
                .map(|k| PackedUsed {
                    id: k,
                    len: r * 100 + u32::from(k),
                    count: 1,
                })
                .collect();
            q.write_used_batch(RingPos::new(0, wrap), &batch);
            // Give the reader a moment on a used batch.
            for _ in 0..50 {
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(seen.load(Ordering::Relaxed) > 0, "the reader saw batches");
    assert_eq!(torn.load(Ordering::Relaxed), 0);
}

#[test]
fn interrupts_follow_the_driver_event_suppression() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    let (old, new) = (RingPos::new(3, true), RingPos::new(6, true));
    // ENABLE (the zeroed area), with or without EVENT_IDX.
    assert!(q.needs_interrupt(false, old, new));
    assert!(q.needs_interrupt(true, old, new));
    g.set_driver_event(0, RING_EVENT_FLAGS_DISABLE);
    assert!(!q.needs_interrupt(false, old, new));
    assert!(!q.needs_interrupt(true, old, new));
    // The reserved value reads as enabled.
    g.set_driver_event(0, 3);
    assert!(q.needs_interrupt(true, old, new));
    // DESC at slot 5, wrap 1.
    g.set_driver_event(pack_base(5, true), RING_EVENT_FLAGS_DESC);
    assert_eq!(q.driver_event(), EventSuppress::Desc(RingPos::new(5, true)));
    assert!(q.needs_interrupt(false, old, new), "DESC needs EVENT_IDX");
    assert!(q.needs_interrupt(true, old, new));
    assert!(
        !q.needs_interrupt(true, old, RingPos::new(5, true)),
        "not reached"
    );
    assert!(
        q.needs_interrupt(true, RingPos::new(5, true), new),
        "first written"
    );
    assert!(!q.needs_interrupt(true, RingPos::new(6, true), RingPos::new(2, false)));
    // The same slot on the other lap is a different position.
    g.set_driver_event(pack_base(5, false), RING_EVENT_FLAGS_DESC);
    assert!(!q.needs_interrupt(true, old, new));
    assert!(q.needs_interrupt(true, RingPos::new(6, true), RingPos::new(6, false)));
    // Across the ring's end.
    g.set_driver_event(pack_base(1, false), RING_EVENT_FLAGS_DESC);
    assert!(q.needs_interrupt(true, RingPos::new(6, true), RingPos::new(2, false)));
    assert!(!q.needs_interrupt(true, RingPos::new(6, true), RingPos::new(1, false)));
    // A hostile offset beyond the ring: no panic, some answer.
    g.set_driver_event(0x7fff, RING_EVENT_FLAGS_DESC);
    let _ = q.needs_interrupt(true, old, new);
}

#[test]
fn need_event_counts_positions_over_both_laps() {
    let p = RingPos::new;
    // A whole lap written: every position of it is in [old, new).
    for i in 0..QSIZE {
        assert!(need_event(p(i, true), p(4, true), p(4, false), QSIZE) == (i >= 4));
        assert!(need_event(p(i, false), p(4, true), p(4, false), QSIZE) == (i < 4));
    }
    // Nothing written: no event.
    assert!(!need_event(p(4, true), p(4, true), p(4, true), QSIZE));
    // The largest ring (the positions span all of u16 over two laps).
    let big = MAX_PACKED_SIZE;
    assert!(need_event(
        p(big - 1, true),
        p(big - 2, true),
        p(1, false),
        big
    ));
    assert!(!need_event(p(1, false), p(big - 2, true), p(1, false), big));
}

#[test]
fn the_device_event_area_is_written_flags_last() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    let area = g.slice(DEVICE, 4);
    let read = || {
        (
            area.load_u16(0, Ordering::Relaxed).unwrap(),
            area.load_u16(2, Ordering::Relaxed).unwrap(),
        )
    };
    q.set_device_event(EventSuppress::Disable);
    assert_eq!(read(), (0, RING_EVENT_FLAGS_DISABLE));
    q.set_device_event(EventSuppress::Desc(RingPos::new(3, false)));
    assert_eq!(read(), (3, RING_EVENT_FLAGS_DESC));
    q.set_device_event(EventSuppress::Desc(RingPos::new(3, true)));
    assert_eq!(read(), (0x8003, RING_EVENT_FLAGS_DESC));
    q.set_device_event(EventSuppress::Enable);
    assert_eq!(read(), (0, RING_EVENT_FLAGS_ENABLE));
    // `keep_device_event` stores only a different value (both fields compared).
    q.keep_device_event(EventSuppress::Disable);
    assert_eq!(read(), (0, RING_EVENT_FLAGS_DISABLE));
    q.keep_device_event(EventSuppress::Disable);
    assert_eq!(read(), (0, RING_EVENT_FLAGS_DISABLE));
    q.keep_device_event(EventSuppress::Desc(RingPos::new(5, true)));
    assert_eq!(read(), (0x8005, RING_EVENT_FLAGS_DESC));
    q.keep_device_event(EventSuppress::Desc(RingPos::new(5, false)));
    assert_eq!(read(), (5, RING_EVENT_FLAGS_DESC));
}

#[test]
fn the_vring_base_carries_both_wrap_counters_in_bit_15() {
    assert_eq!(pack_base(5, true), 0x8005);
    assert_eq!(pack_base(5, false), 5);
    assert_eq!(unpack_base(0x8005), (5, true));
    assert_eq!(unpack_base(0x7fff), (0x7fff, false));
    let (a, u) = (RingPos::new(3, false), RingPos::new(200, true));
    let num = encode_vring_base(a, u);
    assert_eq!(num, 0x80c8_0003);
    assert_eq!(decode_vring_base(num, 256), Ok((a, u)));
    assert_eq!(decode_vring_base(num, 200), Err(VringError::BadBase(num)));
    assert_eq!(
        decode_vring_base(0x0000_8100, 256),
        Err(VringError::BadBase(0x8100))
    );
    assert_eq!(
        decode_vring_base(encode_vring_base(RingPos::START, RingPos::START), 1),
        Ok((RingPos::START, RingPos::START))
    );
}

#[test]
fn positions_advance_and_flip_at_the_ring_end() {
    let p = RingPos::new;
    assert_eq!(p(5, true).advance(2, 8), p(7, true));
    assert_eq!(p(5, true).advance(3, 8), p(0, false));
    assert_eq!(p(7, false).advance(8, 8), p(7, true));
    assert_eq!(p(0, true).advance(16, 8), p(0, true));
    assert_eq!(p(99, true).advance(1, 100), p(0, false));
    assert_eq!(p(3, true).advance(1, 0), p(3, true));
    assert_eq!(p(1, false).distance_from(p(6, true), 8), 3);
    assert_eq!(p(6, false).distance_from(p(6, true), 8), 8);
    assert_eq!(p(6, true).distance_from(p(6, true), 8), 0);
}

/// A ring whose frontend address is 16-byte aligned but whose host mapping is not (a region
/// whose `mmap_offset` is not a multiple of 16: the mapping starts at the page below it) is
/// refused at translation: the data path reads descriptors as aligned words.
#[test]
fn a_ring_misaligned_in_the_host_mapping_is_refused() {
    let r = GuestRegion::map(
        memfd(&unique_name("packed-misaligned"), 2 << 20),
        RegionDesc {
            guest_phys_addr: 0,
            memory_size: 1 << 20,
            userspace_addr: UVA,
            mmap_offset: 8,
        },
        MapOptions::new(),
    )
    .unwrap();
    let mem = GuestMemory::new(vec![r], MemoryLimits::default()).unwrap();
    assert_eq!(
        mem.gpa_to_host(Gpa(DESC), 16).unwrap().as_ptr() as usize % 16,
        8,
        "the host mapping is off by the offset"
    );
    assert!(matches!(
        PackedRings::new(&mem, &addrs(DESC, DRIVER, DEVICE), 8),
        Err(VringError::Misaligned { align: 16, .. })
    ));
}

/// The division-free paths of `advance` and `distance_from` (a slot below the size, moved by
/// less than two laps) agree with stepping slot by slot, and so do the general ones.
#[test]
fn positions_agree_with_stepping_one_slot_at_a_time() {
    for size in [1u16, 2, 3, 7, 8, 100, 256] {
        for start in 0..size {
            for wrap in [false, true] {
                let from = RingPos::new(start, wrap);
                let mut stepped = from;
                for n in 0..=3 * size {
                    assert_eq!(from.advance(n, size), stepped, "size {size} {from:?} + {n}");
                    if n < 2 * size {
                        assert_eq!(
                            stepped.distance_from(from, size),
                            u32::from(n),
                            "size {size} {from:?} + {n}"
                        );
                    }
                    stepped = if stepped.idx() + 1 == size {
                        RingPos::new(0, !stepped.wrap())
                    } else {
                        RingPos::new(stepped.idx() + 1, stepped.wrap())
                    };
                }
            }
        }
    }
    // A slot beyond the size (not one a ring keeps) is reduced, as before.
    assert_eq!(RingPos::new(9, true).advance(0, 8), RingPos::new(1, false));
    assert_eq!(RingPos::new(20, true).advance(1, 8), RingPos::new(5, true));
}

#[test]
fn rings_are_checked_at_translation() {
    let g = Guest::new(QSIZE);
    let ok = addrs(DESC, DRIVER, DEVICE);
    for size in [0, 32769] {
        assert_eq!(
            PackedRings::new(&g.mem, &ok, size).unwrap_err(),
            VringError::BadSize(size)
        );
    }
    // Not a power of two: fine on a packed ring.
    assert!(PackedRings::new(&g.mem, &ok, 100).is_ok());
    assert!(matches!(
        PackedRings::new(&g.mem, &addrs(8, DRIVER, DEVICE), 8),
        Err(VringError::Misaligned { align: 16, .. })
    ));
    assert!(matches!(
        PackedRings::new(&g.mem, &addrs(DESC, DRIVER + 2, DEVICE), 8),
        Err(VringError::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        PackedRings::new(&g.mem, &addrs(DESC, DRIVER, 0x4000_0000), 8),
        Err(VringError::Unmapped {
            ring: "device event",
            ..
        })
    ));
    // A descriptor ring running off the end of region A.
    assert!(matches!(
        PackedRings::new(&g.mem, &addrs((1 << 20) - 64, DRIVER, DEVICE), 8),
        Err(VringError::Unmapped {
            ring: "descriptor",
            ..
        })
    ));
    assert_eq!(PackedRings::lengths(256), (4096, 4, 4));
}

#[test]
fn a_ring_that_is_not_a_power_of_two_wraps_at_its_size() {
    let g = Guest::new(5);
    let start = RingPos::new(3, true);
    let next = g.post(
        start,
        4,
        &[(0x10000, 1, 0), (0x20000, 2, 0), (0x30000, 3, 0)],
    );
    assert_eq!(next, RingPos::new(1, false));
    let (c, got) = walk(&g, start, false);
    assert_eq!((c.id, c.count), (4, 3));
    assert_eq!(got.unwrap(), vec![(0x10000, 1), (0x20000, 2), (0x30000, 3)]);
    assert_eq!(
        g.q().write_used(
            start,
            PackedUsed {
                id: 4,
                len: 0,
                count: 3
            }
        ),
        next
    );
}

#[test]
fn garbage_rings_never_panic() {
    // Random descriptors (with a bias to valid-looking flags and addresses), read at every
    // position of both laps and walked as both queue kinds.
    let g = Guest::new(QSIZE);
    let table = 0x30000u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut taken = 0u32;
    for _ in 0..300 {
        for t in [DESC, table] {
            for i in 0..QSIZE {
                let r = rnd();
                let addr = match r % 4 {
                    0 => r >> 8,
                    1 => table,
                    _ => (r >> 8) % (2 << 20),
                };
                let len = match (r >> 3) % 4 {
                    0 => (r >> 32) as u32,
                    1 => 16 * ((r >> 40) % 10) as u32,
                    _ => ((r >> 32) % 4096) as u32,
                };
                let flags = (rnd() as u16) & (N | W | I | VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED);
                g.put(t, i, d(addr, len, (r >> 48) as u16 % 12, flags));
            }
        }
        let q = g.q();
        for i in 0..QSIZE {
            for wrap in [false, true] {
                let budget = (rnd() % 10) as u16;
                if let Ok(Some(c)) = q.avail_chain(RingPos::new(i, wrap), budget) {
                    assert!(c.count >= 1 && c.count <= budget.min(QSIZE));
                    assert!(c.id < QSIZE);
                    for writable in [false, true] {
                        let mut n = 0;
                        for piece in q.chain(&c, writable, 1 << 20) {
                            n += 1;
                            assert!(n < 1000, "an iterator that does not end");
                            if piece.is_err() {
                                break;
                            }
                        }
                    }
                    taken += 1;
                }
            }
        }
    }
    assert!(taken > 100, "the generator made available chains ({taken})");
}

#[test]
fn ids_of_a_batch_are_taken_all_or_none() {
    let mut f = InFlightIds::new(QSIZE);
    assert!(f.insert_all([1, 2, 3, 4]));
    assert_eq!(f.count(), 4);
    // One in flight, one repeated, one out of range: none of the batch is taken.
    for bad in [[5, 6, 2, 7], [5, 6, 6, 7], [5, 6, 7, QSIZE]] {
        assert!(!f.insert_all(bad), "{bad:?}");
        assert_eq!(f.count(), 4, "{bad:?}");
        assert!(!f.contains(5) && !f.contains(6), "{bad:?}");
    }
    assert!(f.insert_all([5, 6, 7, 0]));
    assert_eq!(f.count(), 8);
}

/// A line of four one-descriptor chains is read as a batch; anything that would need the
/// chain-by-chain path (not aligned, past the ring's end, a descriptor chained, indirect, of
/// the other direction, or not available for this lap) is not.
#[test]
fn batches_are_read_only_where_four_single_descriptors_are_available() {
    let g = Guest::new(QSIZE);
    let mut at = RingPos::START;
    for k in 0..8u16 {
        at = g.post(at, 10 + k, &[(0x10000 + 4096 * u64::from(k), 100, 0)]);
    }
    let q = g.q();
    let batch = q.avail_batch(RingPos::START, false).unwrap();
    let ids: Vec<_> = batch.iter().map(|d| d.id).collect();
    assert_eq!(ids, [10, 11, 12, 13]);
    assert_eq!(batch[2].addr, 0x12000);
    assert!(q.avail_batch(RingPos::new(4, true), false).is_some());
    assert!(
        q.avail_batch(RingPos::START, true).is_none(),
        "readable buffers"
    );
    assert!(
        q.avail_batch(RingPos::new(1, true), false).is_none(),
        "unaligned"
    );
    assert!(
        q.avail_batch(RingPos::new(8, true), false).is_none(),
        "not posted"
    );
    assert!(
        q.avail_batch(RingPos::new(0, false), false).is_none(),
        "other lap"
    );
    // A chain of two, an indirect descriptor, a writable one in the second line.
    for (slot, flags) in [(5, N), (6, I), (7, W)] {
        let g = Guest::new(QSIZE);
        let mut at = RingPos::START;
        for k in 0..8u16 {
            let f = if k == slot { flags } else { 0 };
            at = g.post(at, k, &[(0x10000, 100, f)]);
        }
        assert!(g.q().avail_batch(RingPos::START, false).is_some());
        assert!(
            g.q().avail_batch(RingPos::new(4, true), false).is_none(),
            "{flags}"
        );
    }
    // A ring whose size is not a multiple of 4: no batch runs past its end.
    let g = Guest::new(6);
    let mut at = RingPos::START;
    for k in 0..6u16 {
        at = g.post(at, k, &[(0x10000, 100, 0)]);
    }
    assert!(g.q().avail_batch(RingPos::START, false).is_some());
    assert!(g.q().avail_batch(RingPos::new(4, true), false).is_none());
}

#[test]
fn runs_of_available_slots_stop_at_the_first_gap_and_cross_the_ring_end() {
    let g = Guest::new(QSIZE);
    let q = g.q();
    assert_eq!(q.avail_run(RingPos::START, QSIZE), 0);
    let mut at = RingPos::START;
    for k in 0..5u16 {
        at = g.post(at, k, &[(0x10000, 64, 0)]);
    }
    assert_eq!(q.avail_run(RingPos::START, QSIZE), 5);
    assert_eq!(q.avail_run(RingPos::START, 3), 3);
    assert_eq!(q.avail_run(RingPos::new(2, true), QSIZE), 3);
    assert_eq!(q.avail_run(RingPos::new(0, false), QSIZE), 0, "other lap");
    for k in 5..8u16 {
        at = g.post(at, k, &[(0x10000, 64, 0)]);
    }
    assert_eq!(
        q.avail_run(RingPos::new(6, true), QSIZE),
        2,
        "slot 0 is a lap behind"
    );
    // The driver's second lap at slot 0 (wrap counter 0): the run goes on over the end.
    assert_eq!(at, RingPos::new(0, false));
    g.post(at, 0, &[(0x10000, 64, 0)]);
    assert_eq!(q.avail_run(RingPos::new(6, true), QSIZE), 3);
    assert_eq!(
        q.avail_run(RingPos::new(QSIZE, true), QSIZE),
        0,
        "a slot beyond the size"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

    /// `avail_run` (which checks a line of 4 slots at once where it can) counts what a check
    /// of one slot after the other counts, for any flags, start and limit, across the ring's
    /// end, on rings whose size is or is not a multiple of 4.
    #[test]
    fn runs_of_available_slots_count_as_one_by_one(
        size in 1u16..=20,
        bits in proptest::collection::vec(0u8..4, 20),
        start in 0u16..20,
        wrap: bool,
        max in 0u16..48,
    ) {
        let g = Guest::new(size);
        let q = g.q();
        for slot in 0..size {
            let b = bits[usize::from(slot)];
            let flags = if b & 1 != 0 { VIRTQ_DESC_F_AVAIL } else { 0 }
                | if b & 2 != 0 { VIRTQ_DESC_F_USED } else { 0 };
            g.put(DESC, slot, PvirtqDesc { addr: 0x10000, len: 64, id: slot, flags });
        }
        let pos = RingPos::new(start % size, wrap);
        let mut want = 0;
        let mut at = pos;
        while want < max && q.desc_is_avail(at) {
            want += 1;
            at = at.advance(1, size);
        }
        proptest::prop_assert_eq!(q.avail_run(pos, max), want);
    }
}

#[test]
fn write_back_slots_leave_the_ring_as_it_was() {
    let size = 64;
    let g = Guest::new(size);
    for i in 0..size {
        g.put(DESC, i, d(0x1000 + u64::from(i), 100 + u32::from(i), i, i));
    }
    let q = g.q();
    // The whole ring, across its end, more than the ring, from beyond it, nothing.
    for (from, n) in [(0, 64), (60, 10), (3, 200), (64, 4), (u16::MAX, 1), (5, 0)] {
        q.write_back_slots(from, n);
    }
    for i in 0..size {
        assert_eq!(
            g.get(i),
            d(0x1000 + u64::from(i), 100 + u32::from(i), i, i),
            "slot {i}"
        );
    }
}
