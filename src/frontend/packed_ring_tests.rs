//! Tests of [`super`]: the driver against the device side of `virtq::packed`, both over the
//! same shared memory (the device maps the driver's region as guest memory at GPA 0, so a GPA
//! is an offset in the shared memory).

use super::*;
use crate::frontend::shm::tests::shm;
use crate::memory::{Gpa, GuestMemory, GuestRegion, MapOptions, MemoryLimits, RegionDesc};
use crate::virtq::packed::{
    AvailChain, InFlightIds, PackedQueue, PackedRings, PackedUsed, RING_EVENT_FLAGS_DISABLE,
    VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED,
};

const MEM: usize = 0x40000;
/// Where the buffers start (GPA = offset).
const BUFS: u64 = 0x10000;
/// Where indirect tables go.
const TABLES: usize = 0x8000;

/// The driver's ring and the device's view of the same memory.
struct Pair {
    drv: PackedDriverRing,
    mem: GuestMemory,
    rings: PackedRings,
    size: u16,
}

fn pair(size: u16, in_order: bool) -> Pair {
    let m = shm(MEM);
    let desc = 0;
    let driver = (16 * usize::from(size)).next_multiple_of(4);
    let device = driver + 4;
    let drv = PackedDriverRing::new(m.clone(), size, desc, driver, device, in_order).unwrap();
    let region = m.region();
    let g = GuestRegion::map(
        region.fd().try_clone_to_owned().unwrap(),
        RegionDesc {
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: m.host_addr(),
            mmap_offset: region.mmap_offset(),
        },
        MapOptions::new(),
    )
    .unwrap();
    let mem = GuestMemory::new(vec![g], MemoryLimits::default()).unwrap();
    let area = |off: usize, len: u64| mem.gpa_area(Gpa(off as u64), len).unwrap();
    let rings = PackedRings {
        desc: area(desc, 16 * u64::from(size)),
        driver: area(driver, 4),
        device: area(device, 4),
    };
    Pair {
        drv,
        mem,
        rings,
        size,
    }
}

/// The device's state: where it reads and writes, the ids it holds.
struct Dev {
    avail: RingPos,
    used: RingPos,
    held: u16,
    ids: InFlightIds,
}

impl Dev {
    fn new(size: u16) -> Dev {
        Dev {
            avail: RingPos::START,
            used: RingPos::START,
            held: 0,
            ids: InFlightIds::new(size),
        }
    }

    /// Takes every available chain: (chain, its buffers as (GPA, len)).
    fn take(&mut self, p: &Pair, writable: bool) -> Vec<(AvailChain, Vec<(u64, usize)>)> {
        let q = p.q();
        let base = p.mem.gpa_to_host(Gpa(0), 1).unwrap().as_ptr() as usize;
        let mut out = Vec::new();
        while let Some(c) = q.avail_chain(self.avail, p.size - self.held).unwrap() {
            self.ids.insert(c.id).unwrap();
            self.avail = c.next(p.size);
            self.held += c.count;
            let bufs = q
                .chain(&c, writable, 1 << 20)
                .map(|s| {
                    let s = s.unwrap();
                    ((s.as_ptr() as usize - base) as u64, s.len())
                })
                .collect();
            out.push((c, bufs));
        }
        out
    }

    /// Returns chains, one used descriptor each, in the order given.
    fn give(&mut self, p: &Pair, used: &[(u16, u32, u16)]) {
        let q = p.q();
        for &(id, len, count) in used {
            assert!(self.ids.remove(id));
            self.used = q.write_used(self.used, PackedUsed { id, len, count });
            self.held -= count;
        }
    }
}

impl Pair {
    fn q(&self) -> PackedQueue<'_> {
        PackedQueue::new(&self.rings, &self.mem, self.size)
    }
}

fn buf(k: u64) -> u64 {
    BUFS + 0x100 * k
}

#[test]
fn sizes_alignment_and_bounds_are_checked() {
    let m = shm(0x4000);
    let new = |size, d, dr, de| PackedDriverRing::new(m.clone(), size, d, dr, de, false);
    assert_eq!(
        new(0, 0, 0x1000, 0x1004).unwrap_err(),
        LayoutError::BadQueueSize(0)
    );
    assert!(new(100, 0, 0x1000, 0x1004).is_ok(), "any size");
    assert!(matches!(
        new(8, 8, 0x1000, 0x1004),
        Err(LayoutError::Misaligned { align: 16, .. })
    ));
    assert!(matches!(
        new(8, 0, 0x1002, 0x1004),
        Err(LayoutError::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        new(2048, 0, 0x1000, 0x1004),
        Err(LayoutError::OutOfBounds {
            what: "descriptor ring",
            ..
        })
    ));
    assert!(matches!(
        new(8, 0, 0x1000, 0x4000),
        Err(LayoutError::OutOfBounds { .. })
    ));
}

#[test]
fn a_chain_is_written_with_its_id_and_the_head_flags() {
    let mut p = pair(8, false);
    let id = p
        .drv
        .add_chain(&[(0x1000, 10, false), (0x2000, 20, true)])
        .unwrap();
    assert_eq!(id, 0);
    let d0 = p.drv.read_desc(0);
    let d1 = p.drv.read_desc(1);
    assert_eq!((d0.addr, d0.len, d0.id), (0x1000, 10, 0));
    assert_eq!(d0.flags, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL);
    assert_eq!((d1.addr, d1.len, d1.id), (0x2000, 20, 0));
    assert_eq!(d1.flags, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_AVAIL);
    assert_eq!(p.drv.avail_pos(), RingPos::new(2, true));
    assert_eq!((p.drv.free_slots(), p.drv.free_ids()), (6, 7));
    assert!(!p.drv.used_ready());
    // Room: 6 slots left.
    assert_eq!(p.drv.add_chain(&[(0, 1, false); 7]), None);
    assert_eq!(p.drv.add_chain(&[]), None);
    assert_eq!(p.drv.free_slots(), 6, "a refused chain takes nothing");
}

#[test]
fn chains_go_round_the_ring_many_times() {
    for size in [8, 5] {
        let mut p = pair(size, false);
        let mut dev = Dev::new(size);
        let mut k = 0u64;
        for round in 0..40u32 {
            // Chains of 1, 2 and 3 buffers while they fit.
            let mut posted = Vec::new();
            for n in 1..=3u16 {
                let bufs: Vec<_> = (0..u64::from(n))
                    .map(|j| (buf(k + j), 16 + n as u32, true))
                    .collect();
                if let Some(id) = p.drv.add_chain(&bufs) {
                    posted.push((id, bufs));
                    k = (k + u64::from(n)) % 64;
                }
            }
            assert!(!posted.is_empty());
            let got = dev.take(&p, true);
            assert_eq!(got.len(), posted.len(), "round {round}");
            for ((c, bufs), (id, want)) in got.iter().zip(&posted) {
                assert_eq!(c.id, *id);
                assert_eq!(c.count as usize, want.len());
                let want: Vec<_> = want.iter().map(|&(a, l, _)| (a, l as usize)).collect();
                assert_eq!(bufs, &want);
            }
            // Odd rounds return them in reverse: ids come back out of order.
            let mut used: Vec<_> = got
                .iter()
                .map(|(c, _)| (c.id, 100 + u32::from(c.id), c.count))
                .collect();
            if round % 2 == 1 {
                used.reverse();
            }
            dev.give(&p, &used);
            for &(id, len, count) in &used {
                let u = p.drv.pop_used().unwrap();
                assert_eq!((u.id, u.len, u.slots, u.buffers), (id, len, count, 1));
            }
            assert_eq!(p.drv.pop_used(), None);
            assert_eq!(p.drv.free_slots(), size);
            assert_eq!(p.drv.used_pos(), dev.used);
            assert_eq!(p.drv.avail_pos(), dev.avail);
        }
        // 40 rounds of up to 6 slots: both wrap counters flipped many times.
        assert!(p.drv.stats().bad_used_id == 0 && !p.drv.is_broken());
    }
}

#[test]
fn indirect_chains_take_one_slot() {
    let mut p = pair(4, false);
    let mut dev = Dev::new(4);
    let bufs = [
        (buf(0), 10, false),
        (buf(1), 20, false),
        (buf(2), 30, false),
    ];
    let id = p.drv.add_indirect(TABLES, TABLES as u64, &bufs).unwrap();
    assert_eq!(p.drv.free_slots(), 3);
    let got = dev.take(&p, false);
    assert_eq!(got.len(), 1);
    let (c, seen) = &got[0];
    assert_eq!((c.id, c.count), (id, 1));
    assert_eq!(c.first.flags & VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_INDIRECT);
    assert_eq!(seen, &vec![(buf(0), 10), (buf(1), 20), (buf(2), 30)]);
    dev.give(&p, &[(id, 0, 1)]);
    let u = p.drv.pop_used().unwrap();
    assert_eq!((u.id, u.len, u.slots), (id, 0, 1));
    // Tables that do not fit or are misaligned are refused.
    assert_eq!(p.drv.add_indirect(MEM - 16, 0, &bufs), None);
    assert_eq!(p.drv.add_indirect(TABLES + 8, 0, &bufs), None);
    assert_eq!(p.drv.add_indirect(TABLES, 0, &[]), None);
    assert_eq!(p.drv.free_slots(), 4);
}

#[test]
fn in_order_batches_free_every_chain_up_to_the_id() {
    let mut p = pair(8, true);
    let mut dev = Dev::new(8);
    let a = p
        .drv
        .add_chain(&[(buf(0), 1, true), (buf(1), 1, true)])
        .unwrap();
    let b = p.drv.add_chain(&[(buf(2), 1, true)]).unwrap();
    let c = p
        .drv
        .add_chain(&[(buf(3), 1, true), (buf(4), 1, true)])
        .unwrap();
    let got = dev.take(&p, true);
    assert_eq!(got.len(), 3);
    // One used descriptor with the last id for the first two chains (3 slots) ...
    dev.ids.remove(a);
    dev.give(&p, &[(b, 7, 3)]);
    let u = p.drv.pop_used().unwrap();
    assert_eq!((u.id, u.len, u.buffers, u.slots), (b, 7, 2, 3));
    assert_eq!(p.drv.used_pos(), RingPos::new(3, true));
    // ... then one for the third.
    dev.give(&p, &[(c, 9, 2)]);
    let u = p.drv.pop_used().unwrap();
    assert_eq!((u.id, u.buffers, u.slots), (c, 1, 2));
    assert_eq!((p.drv.free_slots(), p.drv.free_ids()), (8, 8));
}

#[test]
fn a_batch_of_used_descriptors_is_read_back_whole() {
    let mut p = pair(4, false);
    let mut dev = Dev::new(4);
    // Move both sides to slot 3 so that the batch wraps.
    p.drv.add_chain(&[(buf(0), 1, true); 3]).unwrap();
    let got = dev.take(&p, true);
    dev.give(&p, &[(got[0].0.id, 1, 3)]);
    p.drv.pop_used().unwrap();
    let ids: Vec<u16> = (0..3)
        .map(|k| p.drv.add_chain(&[(buf(k), 1, true)]).unwrap())
        .collect();
    let got = dev.take(&p, true);
    assert_eq!(got.len(), 3);
    let batch: Vec<_> = ids
        .iter()
        .rev()
        .map(|&id| PackedUsed {
            id,
            len: 50 + u32::from(id),
            count: 1,
        })
        .collect();
    for &id in &ids {
        dev.ids.remove(id);
    }
    let end = p.q().write_used_batch(dev.used, &batch);
    assert_eq!(end, RingPos::new(2, false));
    for u in &batch {
        let r = p.drv.pop_used().unwrap();
        assert_eq!((r.id, r.len), (u.id, u.len));
    }
    assert_eq!(p.drv.pop_used(), None);
    assert_eq!(p.drv.used_pos(), end);
}

#[test]
fn kicks_follow_the_device_event_area() {
    let mut p = pair(8, false);
    let q = PackedQueue::new(&p.rings, &p.mem, p.size);
    assert!(!p.drv.kick_needed(), "nothing new");
    p.drv.add_chain(&[(buf(0), 1, false)]).unwrap();
    assert!(p.drv.kick_needed(), "enabled (the zeroed area)");
    q.set_device_event(EventSuppress::Disable);
    p.drv.add_chain(&[(buf(0), 1, false)]).unwrap();
    assert!(!p.drv.kick_needed());
    // DESC at slot 4 of the first lap: a kick once a chain covers it.
    p.drv.set_event_idx(true);
    q.set_device_event(EventSuppress::Desc(RingPos::new(4, true)));
    p.drv.add_chain(&[(buf(0), 1, false)]).unwrap(); // slot 2
    assert!(!p.drv.kick_needed());
    p.drv.add_chain(&[(buf(0), 1, false); 3]).unwrap(); // slots 3..6
    assert!(p.drv.kick_needed());
    assert_eq!(p.drv.stats().kicks_wanted, 2);
    assert_eq!(p.drv.stats().kicks_suppressed, 2);
}

#[test]
fn interrupts_follow_the_driver_event_area() {
    let mut p = pair(8, false);
    let mut dev = Dev::new(8);
    p.drv.set_event_idx(true);
    p.drv.disable_interrupts();
    let area = p.mem.gpa_to_host(Gpa(128), 4).unwrap();
    assert_eq!(
        area.load_u16(2, Ordering::Relaxed).unwrap(),
        RING_EVENT_FLAGS_DISABLE
    );
    for k in 0..3 {
        p.drv.add_chain(&[(buf(k), 1, true)]).unwrap();
    }
    let got = dev.take(&p, true);
    let old = dev.used;
    dev.give(&p, &[(got[0].0.id, 1, 1)]);
    assert!(!p.q().needs_interrupt(true, old, dev.used));
    // Armed at the driver's used position (slot 0): a used descriptor is already there.
    assert!(p.drv.arm_interrupts(), "used meanwhile");
    assert!(p.q().needs_interrupt(true, old, dev.used));
    p.drv.pop_used().unwrap();
    // Armed at slot 1: the device's next used descriptor wants an interrupt, not the one after.
    assert!(!p.drv.arm_interrupts());
    let old = dev.used;
    dev.give(&p, &[(got[1].0.id, 1, 1)]);
    assert!(p.q().needs_interrupt(true, old, dev.used));
    let old = dev.used;
    dev.give(&p, &[(got[2].0.id, 1, 1)]);
    assert!(!p.q().needs_interrupt(true, old, dev.used));
}

#[test]
fn a_used_id_that_is_not_outstanding_breaks_the_ring() {
    let mut p = pair(8, false);
    let id = p.drv.add_chain(&[(buf(0), 1, true)]).unwrap();
    // The device returns id 5, never posted.
    p.q().write_used(
        RingPos::START,
        PackedUsed {
            id: 5,
            len: 1,
            count: 1,
        },
    );
    assert_eq!(p.drv.pop_used(), None);
    assert!(p.drv.is_broken());
    assert_eq!(p.drv.stats().bad_used_id, 1);
    // Nothing more is read or posted.
    p.q().write_used(
        RingPos::START,
        PackedUsed {
            id,
            len: 1,
            count: 1,
        },
    );
    assert_eq!(p.drv.pop_used(), None);
    assert_eq!(p.drv.add_chain(&[(buf(0), 1, true)]), None);
    // A used descriptor whose flags show the other lap is not used.
    let mut p = pair(8, false);
    p.drv.add_chain(&[(buf(0), 1, true)]).unwrap();
    let s = p.mem.gpa_to_host(Gpa(14), 2).unwrap();
    s.store_u16(0, VIRTQ_DESC_F_USED, Ordering::Release)
        .unwrap();
    assert!(!p.drv.used_ready());
}

#[test]
fn a_driver_and_a_device_on_two_threads_never_see_a_torn_chain() {
    // The driver posts chains of 3 descriptors whose lengths all carry the chain's sequence
    // number; the device checks every chain it takes is whole (3 slots, equal lengths) and
    // returns it with that length; the driver checks each used length against its id. A head
    // made available before the rest of its chain shows up as a torn chain within a few
    // thousand.
    const CHAINS: u32 = 20_000;
    let Pair {
        mut drv,
        mem,
        rings,
        size,
    } = pair(8, false);
    let torn = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let q = PackedQueue::new(&rings, &mem, size);
            let (mut avail, mut used, mut done) = (RingPos::START, RingPos::START, 0);
            while done < CHAINS {
                let c = match q.avail_chain(avail, size) {
                    Ok(Some(c)) => c,
                    Ok(None) if torn.load(Ordering::Relaxed) != 0 => return,
                    Ok(None) => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Err(_) => {
                        torn.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let lens: Vec<usize> = q
                    .chain(&c, false, 1 << 20)
                    .map(|b| b.map_or(0, |b| b.len()))
                    .collect();
                if c.count != 3 || lens.len() != 3 || lens.iter().any(|&l| l != lens[0]) {
                    torn.fetch_add(1, Ordering::Relaxed);
                }
                avail = c.next(size);
                used = q.write_used(
                    used,
                    PackedUsed {
                        id: c.id,
                        len: lens[0] as u32,
                        count: c.count,
                    },
                );
                done += 1;
            }
        });
        let mut lens = [0u32; 8];
        let (mut posted, mut reaped) = (0u32, 0u32);
        while reaped < CHAINS {
            if posted < CHAINS {
                let len = 1 + posted % 251;
                if let Some(id) = drv.add_chain(&[(buf(0), len, false); 3]) {
                    lens[usize::from(id)] = len;
                    posted += 1;
                }
            }
            while let Some(u) = drv.pop_used() {
                if u.len != lens[usize::from(u.id)] {
                    torn.fetch_add(1, Ordering::Relaxed);
                }
                reaped += 1;
            }
            if drv.is_broken() || torn.load(Ordering::Relaxed) != 0 {
                break;
            }
        }
    });
    assert_eq!(torn.load(Ordering::Relaxed), 0);
    assert!(!drv.is_broken());
}
