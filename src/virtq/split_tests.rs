//! Chain walking against hostile descriptor tables, in real memfd-backed guest memory.

use super::*;
use crate::memory::testutil::{memfd, unique_name};
use crate::memory::{FrontendVa, GuestRegion, MapOptions, MemoryLimits, RegionDesc};
use crate::virtq::{Vring, VringAddrs};

const QSIZE: u16 = 8;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const UVA: u64 = 0x7000_0000_0000;

/// Guest memory: region A = GPA [0, 1 MiB), region B = GPA [2 MiB, 3 MiB), from two fds, so
/// a buffer that runs from A's end to B's start crosses a hole and one that ends at A's end
/// is fine.
struct Guest {
    vq: Vring,
}

impl Guest {
    fn new() -> Guest {
        let a = GuestRegion::map(
            memfd(&unique_name("split-a"), 1 << 20),
            RegionDesc {
                guest_phys_addr: 0,
                memory_size: 1 << 20,
                userspace_addr: UVA,
                mmap_offset: 0,
            },
            MapOptions::new(),
        )
        .unwrap();
        let b = GuestRegion::map(
            memfd(&unique_name("split-b"), 1 << 20),
            RegionDesc {
                guest_phys_addr: 1 << 20,
                memory_size: 1 << 20,
                userspace_addr: UVA + (4 << 20),
                mmap_offset: 0,
            },
            MapOptions::new(),
        )
        .unwrap();
        let mem = GuestMemory::new(vec![a, b], MemoryLimits::default()).unwrap();
        let mut vq = Vring::default();
        vq.set_memory(mem).unwrap();
        vq.set_size(u32::from(QSIZE)).unwrap();
        vq.set_addrs(VringAddrs {
            flags: 0,
            desc: FrontendVa(UVA + DESC),
            avail: FrontendVa(UVA + AVAIL),
            used: FrontendVa(UVA + USED),
            log: 0,
        })
        .unwrap();
        Guest { vq }
    }

    fn q(&self) -> SplitQueue<'_> {
        SplitQueue::new(self.vq.rings.as_ref().unwrap(), &self.vq.mem, QSIZE)
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        self.vq
            .mem
            .gpa_to_host(Gpa(gpa), bytes.len() as u64)
            .unwrap()
            .write_at(0, bytes)
            .unwrap();
    }

    fn desc(&self, table: u64, i: u16, d: VirtqDesc) {
        let s = self
            .vq
            .mem
            .gpa_to_host(Gpa(table + 16 * u64::from(i)), 16)
            .unwrap();
        s.write_obj(0, d).unwrap();
    }

    fn avail(&self, idx: u16, heads: &[u16]) {
        for (k, h) in heads.iter().enumerate() {
            self.write(
                AVAIL + 4 + 2 * ((k as u64) % u64::from(QSIZE)),
                &h.to_ne_bytes(),
            );
        }
        self.write(AVAIL + 2, &idx.to_ne_bytes());
    }
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> VirtqDesc {
    VirtqDesc {
        addr,
        len,
        flags,
        next,
    }
}

const N: u16 = VIRTQ_DESC_F_NEXT;
const W: u16 = VIRTQ_DESC_F_WRITE;
const I: u16 = VIRTQ_DESC_F_INDIRECT;

fn walk(g: &Guest, head: u16, writable: bool) -> Result<Vec<(usize, usize)>, ChainError> {
    let q = g.q();
    let base = g.vq.mem.gpa_to_host(Gpa(0), 1).unwrap().as_ptr() as usize;
    let mut out = Vec::new();
    for piece in q.chain(head, writable, 1 << 20) {
        let s = piece?;
        out.push(((s.as_ptr() as usize).wrapping_sub(base), s.len()));
    }
    Ok(out)
}

#[test]
fn a_plain_chain_yields_its_buffers() {
    let g = Guest::new();
    g.desc(DESC, 0, d(0x10000, 12, N, 3));
    g.desc(DESC, 3, d(0x20000, 100, 0, 0));
    assert_eq!(
        walk(&g, 0, false).unwrap(),
        vec![(0x10000, 12), (0x20000, 100)]
    );
    let q = g.q();
    let mut c = q.chain(0, false, 1 << 20);
    while c.next().is_some() {}
    assert_eq!(c.total_len(), 112);
}

#[test]
fn avail_ring_and_used_ring() {
    let g = Guest::new();
    g.avail(3, &[5, 1, 7]);
    let q = g.q();
    assert_eq!(q.avail_idx(0), 3);
    assert_eq!(q.avail_head(1).unwrap(), 1);
    assert_eq!(q.avail_head(2 + QSIZE).unwrap(), 7, "index wraps mod size");
    g.avail(4, &[5, 1, 7, 9]);
    assert_eq!(
        g.q().avail_head(3),
        Err(ChainError::IndexOutOfRange { index: 9, size: 8 })
    );
    q.write_used(9, 5, 1234);
    q.publish_used(10);
    assert_eq!(q.used_idx(), 10);
    let used = g.vq.mem.gpa_to_host(Gpa(USED), 4 + 8 * 8).unwrap();
    assert_eq!(used.read_obj::<[u32; 2]>(4 + 8).unwrap(), [5, 1234]);
    // The shadow's one-word entries land as [id, len], wrapping at the ring's end.
    q.write_used_words(7, &[used_word(3, 0xdead_beef), used_word(0xffff, 60)]);
    let mut b = [0u8; 8];
    used.read_at(4 + 8 * 7, &mut b).unwrap();
    assert_eq!(b, [3, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
    assert_eq!(used.read_obj::<[u32; 2]>(4).unwrap(), [0xffff, 60]);
}

#[test]
fn descriptor_loops_end() {
    let g = Guest::new();
    g.desc(DESC, 0, d(0x10000, 1, N, 1));
    g.desc(DESC, 1, d(0x10000, 1, N, 0));
    assert_eq!(walk(&g, 0, false), Err(ChainError::Loop(8)));
    // A self-loop too.
    g.desc(DESC, 2, d(0x10000, 1, N, 2));
    assert_eq!(walk(&g, 2, false), Err(ChainError::Loop(8)));
}

#[test]
fn chains_longer_than_the_queue_end() {
    let g = Guest::new();
    for i in 0..QSIZE {
        g.desc(DESC, i, d(0x10000, 1, N, (i + 1) % QSIZE));
    }
    assert!(matches!(walk(&g, 0, false), Err(ChainError::Loop(_))));
}

#[test]
fn next_beyond_the_table_is_refused() {
    let g = Guest::new();
    g.desc(DESC, 0, d(0x10000, 1, N, 200));
    assert_eq!(
        walk(&g, 0, false),
        Err(ChainError::IndexOutOfRange {
            index: 200,
            size: 8
        })
    );
}

#[test]
fn indirect_tables_work_and_nesting_is_refused() {
    let g = Guest::new();
    let table = 0x30000;
    g.desc(table, 0, d(0x40000, 10, N, 1));
    g.desc(table, 1, d(0x50000, 20, 0, 0));
    g.desc(DESC, 0, d(table, 32, I, 0));
    assert_eq!(
        walk(&g, 0, false).unwrap(),
        vec![(0x40000, 10), (0x50000, 20)]
    );
    // Indirect inside indirect.
    g.desc(table, 1, d(table, 32, I, 0));
    assert_eq!(walk(&g, 0, false), Err(ChainError::NestedIndirect));
    // INDIRECT together with NEXT.
    g.desc(DESC, 1, d(table, 32, I | N, 2));
    assert_eq!(walk(&g, 1, false), Err(ChainError::NestedIndirect));
    // Bad table lengths.
    for len in [0, 17, 16 * (MAX_INDIRECT + 1)] {
        g.desc(DESC, 2, d(table, len, I, 0));
        assert_eq!(walk(&g, 2, false), Err(ChainError::IndirectLen(len)));
    }
    // A loop inside the indirect table.
    g.desc(table, 0, d(0x40000, 1, N, 1));
    g.desc(table, 1, d(0x40000, 1, N, 0));
    g.desc(DESC, 3, d(table, 32, I, 0));
    assert_eq!(walk(&g, 3, false), Err(ChainError::Loop(2)));
    // next beyond the indirect table.
    g.desc(table, 1, d(0x40000, 1, N, 2));
    assert_eq!(
        walk(&g, 3, false),
        Err(ChainError::IndexOutOfRange { index: 2, size: 2 })
    );
    // Table outside guest memory.
    g.desc(DESC, 4, d(0x1000_0000, 32, I, 0));
    assert!(matches!(
        walk(&g, 4, false),
        Err(ChainError::Unmapped { .. })
    ));
}

#[test]
fn lengths_whose_sum_overflows_are_refused() {
    let g = Guest::new();
    g.desc(DESC, 0, d(0x10000, u32::MAX, N, 1));
    g.desc(DESC, 1, d(0x10000, u32::MAX, N, 2));
    g.desc(DESC, 2, d(0x10000, u32::MAX, 0, 0));
    let q = g.q();
    let r: Result<Vec<_>, _> = q.chain(0, false, u64::from(u32::MAX)).collect();
    // The first descriptor alone is 4 GiB - 1, not inside the 1 MiB region.
    assert!(matches!(r, Err(ChainError::Unmapped { .. })));
    let r: Result<Vec<_>, _> = q.chain(0, false, 65536).collect();
    assert_eq!(r.unwrap_err(), ChainError::TooLarge(65536));
}

#[test]
fn buffers_outside_or_across_holes_are_refused_and_across_regions_split() {
    let g = Guest::new();
    // Entirely outside.
    g.desc(DESC, 0, d(0x4000_0000, 64, 0, 0));
    assert!(matches!(
        walk(&g, 0, false),
        Err(ChainError::Unmapped { .. })
    ));
    // Straddles the end of region A into region B (contiguous in GPA, not in host memory):
    // split into two pieces.
    g.desc(DESC, 1, d((1 << 20) - 16, 32, 0, 0));
    let pieces = walk(&g, 1, false).unwrap();
    assert_eq!(pieces.len(), 2);
    assert_eq!(pieces[0], ((1 << 20) - 16, 16));
    assert_eq!(pieces[1].1, 16);
    let b = g.vq.mem.gpa_to_host(Gpa(1 << 20), 1).unwrap().as_ptr() as usize;
    let a = g.vq.mem.gpa_to_host(Gpa(0), 1).unwrap().as_ptr() as usize;
    assert_eq!(
        pieces[1].0,
        b.wrapping_sub(a),
        "second piece starts region B"
    );
    // Runs past the end of region B into nothing.
    g.desc(DESC, 2, d((2 << 20) - 16, 32, 0, 0));
    assert!(matches!(
        walk(&g, 2, false),
        Err(ChainError::Unmapped { .. })
    ));
    // Address overflow.
    g.desc(DESC, 3, d(u64::MAX - 8, 64, 0, 0));
    assert!(matches!(
        walk(&g, 3, false),
        Err(ChainError::Unmapped { .. })
    ));
}

#[test]
fn permissions_must_fit_the_queue() {
    let g = Guest::new();
    g.desc(DESC, 0, d(0x10000, 64, W, 0));
    assert_eq!(walk(&g, 0, false), Err(ChainError::Permissions));
    assert!(walk(&g, 0, true).is_ok());
    g.desc(DESC, 1, d(0x10000, 64, N, 2));
    g.desc(DESC, 2, d(0x10000, 64, W, 0));
    assert_eq!(walk(&g, 1, false), Err(ChainError::Permissions));
}

#[test]
fn zero_length_descriptors_are_skipped() {
    let g = Guest::new();
    g.desc(DESC, 0, d(0x10000, 0, N, 1));
    g.desc(DESC, 1, d(0x20000, 8, N, 2));
    g.desc(DESC, 2, d(0x30000, 0, 0, 0));
    assert_eq!(walk(&g, 0, false).unwrap(), vec![(0x20000, 8)]);
}

#[test]
fn interrupt_suppression() {
    let mut g = Guest::new();
    // used_event lies after the available ring only when EVENT_IDX is negotiated.
    g.vq.set_features(crate::features::VIRTIO_RING_F_EVENT_IDX)
        .unwrap();
    let q = g.q();
    // Without EVENT_IDX: avail.flags NO_INTERRUPT.
    assert!(q.needs_interrupt(false, 0, 1));
    g.write(AVAIL, &VIRTQ_AVAIL_F_NO_INTERRUPT.to_ne_bytes());
    assert!(!q.needs_interrupt(false, 0, 1));
    // With EVENT_IDX: used_event = 5 → interrupt only when used.idx passes 5.
    g.write(AVAIL + 4 + 2 * u64::from(QSIZE), &5u16.to_ne_bytes());
    assert!(!q.needs_interrupt(true, 0, 5));
    assert!(q.needs_interrupt(true, 5, 6));
    assert!(q.needs_interrupt(true, 3, 9));
    assert!(!q.needs_interrupt(true, 6, 9));
    // Wrap-around of the 16-bit indexes.
    g.write(AVAIL + 4 + 2 * u64::from(QSIZE), &65535u16.to_ne_bytes());
    assert!(q.needs_interrupt(true, 65534, 1));
}
