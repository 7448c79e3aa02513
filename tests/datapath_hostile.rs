//! A hostile guest against the data path: the Rust frontend writes raw descriptors and ring
//! indexes into its shared memory, and `dequeue_burst` / `enqueue_burst` must drop and count
//! every malformed chain (returned with length 0), mark the queue broken for a corrupt
//! available ring, never panic, and never touch memory outside the mapped regions. Valid but
//! unusual layouts (a header split across descriptors, a buffer spanning two regions) must
//! deliver the packet intact.

mod common;

use std::sync::atomic::Ordering;

use common::Bed;
use rvhost::driver::Flags;
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use rvhost::frontend::FrontendOptions;
use rvhost::mbuf::{Mbuf, PktCache};
use rvhost::net::{dequeue_burst, enqueue_burst};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const MEM: usize = 32 << 20;
/// Scratch space at the end of the shared memory, past everything the frontend placed.
const SCRATCH: usize = MEM - (2 << 20);

fn bed(regions: usize, gap: u64) -> Bed {
    let opts = FrontendOptions {
        features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
        mem_size: MEM,
        force_small_pages: true,
        regions,
        gpa_gap: gap,
        ..FrontendOptions::default()
    };
    Bed::new("dph", Flags::empty(), opts, "dph", 1024, 32)
}

impl Bed {
    fn gpa(&self, offset: usize) -> u64 {
        self.fe.layout().gpa(offset).unwrap().raw()
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        self.fe.shm().slice().write_at(offset, bytes).unwrap();
    }

    fn desc(&self, vring: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.fe.ring_info(vring).unwrap().desc.offset + 16 * usize::from(i);
        self.desc_at(at, addr, len, flags, next);
    }

    fn desc_at(&self, at: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_ne_bytes());
        d[8..12].copy_from_slice(&len.to_ne_bytes());
        d[12..14].copy_from_slice(&flags.to_ne_bytes());
        d[14..16].copy_from_slice(&next.to_ne_bytes());
        self.write(at, &d);
    }

    /// Makes `heads` available on `vring` and publishes the new avail.idx.
    fn avail(&self, vring: u16, heads: &[u16]) {
        let info = self.fe.ring_info(vring).unwrap();
        let s = self.fe.shm().slice();
        let mut idx = s
            .load_u16(info.avail.offset + 2, Ordering::Relaxed)
            .unwrap();
        for &h in heads {
            let slot = usize::from(idx % info.size);
            s.write_obj(info.avail.offset + 4 + 2 * slot, h).unwrap();
            idx = idx.wrapping_add(1);
        }
        s.store_u16_release(info.avail.offset + 2, idx).unwrap();
    }

    fn set_avail_idx(&self, vring: u16, idx: u16) {
        let info = self.fe.ring_info(vring).unwrap();
        let s = self.fe.shm().slice();
        s.store_u16_release(info.avail.offset + 2, idx).unwrap();
    }

    /// (used.idx, [(id, len)] of the first entries).
    fn used(&self, vring: u16, n: usize) -> (u16, Vec<(u32, u32)>) {
        let info = self.fe.ring_info(vring).unwrap();
        let s = self.fe.shm().slice();
        let idx = s.load_u16(info.used.offset + 2, Ordering::Acquire).unwrap();
        let elems = (0..n)
            .map(|k| {
                let e: [u32; 2] = s.read_obj(info.used.offset + 4 + 8 * k).unwrap();
                (e[0], e[1])
            })
            .collect();
        (idx, elems)
    }

    fn dequeue(&self, cache: &mut PktCache) -> Vec<Mbuf> {
        let mut out = Vec::new();
        dequeue_burst(&self.dev, 1, cache, &mut out, 32);
        out
    }

    fn stats(&self, vring: usize) -> (u64, u64, bool) {
        let vq = self.dev.lock_vring(vring).unwrap();
        (vq.stats.packets, vq.stats.bad_chains, vq.broken)
    }
}

fn bytes(m: &Mbuf) -> Vec<u8> {
    m.segments().flat_map(|s| s.data().to_vec()).collect()
}

/// Runs a malformed transmit chain at head 0 and checks it is dropped, returned, counted.
fn dropped(setup: impl FnOnce(&Bed)) {
    let b = bed(1, 0);
    let mut cache = b.pool.cache();
    setup(&b);
    b.avail(1, &[0]);
    let got = b.dequeue(&mut cache);
    assert!(got.is_empty(), "a malformed chain produced a packet");
    assert_eq!(b.stats(1), (0, 1, false));
    assert_eq!(b.used(1, 1), (1, vec![(0, 0)]), "returned with length 0");
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
}

#[test]
fn descriptor_loop() {
    dropped(|b| {
        let buf = b.gpa(SCRATCH);
        b.desc(1, 0, buf, 64, NEXT, 1);
        b.desc(1, 1, buf, 64, NEXT, 0);
    });
}

#[test]
fn chain_longer_than_the_queue() {
    dropped(|b| {
        let buf = b.gpa(SCRATCH);
        for i in 0..256u16 {
            b.desc(1, i, buf, 16, NEXT, (i + 1) % 256);
        }
    });
}

#[test]
fn indirect_table_inside_an_indirect_table() {
    dropped(|b| {
        let table = SCRATCH + 4096;
        let inner = b.gpa(table);
        b.desc_at(table, inner, 32, INDIRECT, 0);
        b.desc_at(table + 16, b.gpa(SCRATCH), 64, 0, 0);
        b.desc(1, 0, inner, 32, INDIRECT, 0);
    });
}

#[test]
fn lengths_whose_sum_overflows() {
    dropped(|b| {
        let buf = b.gpa(SCRATCH);
        b.desc(1, 0, buf, u32::MAX, NEXT, 1);
        b.desc(1, 1, buf, u32::MAX, NEXT, 2);
        b.desc(1, 2, buf, u32::MAX, 0, 0);
    });
}

#[test]
fn address_outside_every_region() {
    dropped(|b| b.desc(1, 0, 1 << 40, 64, 0, 0));
}

#[test]
fn address_that_wraps_the_address_space() {
    dropped(|b| b.desc(1, 0, u64::MAX - 16, 64, 0, 0));
}

#[test]
fn next_beyond_the_table() {
    dropped(|b| b.desc(1, 0, b.gpa(SCRATCH), 64, NEXT, 4000));
}

#[test]
fn device_writable_buffer_in_a_transmit_chain() {
    dropped(|b| b.desc(1, 0, b.gpa(SCRATCH), 64, WRITE, 0));
}

#[test]
fn chain_shorter_than_the_header() {
    dropped(|b| b.desc(1, 0, b.gpa(SCRATCH), 6, 0, 0));
}

#[test]
fn buffer_across_a_hole_between_regions() {
    // Two regions with a 1 MiB guest-physical hole: a buffer running off the end of the
    // first region falls into the hole.
    let b = bed(2, 1 << 20);
    let mut cache = b.pool.cache();
    let first_end = MEM / 2;
    b.desc(1, 0, b.gpa(first_end - 32), 64, 0, 0);
    b.avail(1, &[0]);
    assert!(b.dequeue(&mut cache).is_empty());
    assert_eq!(b.stats(1), (0, 1, false));
}

#[test]
fn buffer_across_two_regions_is_delivered_intact() {
    // Adjacent in guest-physical space, separate mappings in the backend.
    let b = bed(2, 0);
    let mut cache = b.pool.cache();
    let boundary = MEM / 2;
    let mut pkt = vec![0u8; 12];
    pkt.extend((0..200u32).map(|i| i as u8));
    b.write(boundary - 40, &pkt);
    b.desc(1, 0, b.gpa(boundary - 40), pkt.len() as u32, 0, 0);
    b.avail(1, &[0]);
    let got = b.dequeue(&mut cache);
    assert_eq!(got.len(), 1);
    assert_eq!(bytes(&got[0]), &pkt[12..]);
    cache.free_bulk(got);
}

#[test]
fn header_split_across_descriptors_is_delivered_intact() {
    let b = bed(1, 0);
    let mut cache = b.pool.cache();
    let data: Vec<u8> = (0..100u8).collect();
    b.write(SCRATCH, &[0; 5]);
    b.write(SCRATCH + 64, &[0; 7]);
    b.write(SCRATCH + 128, &data[..30]);
    b.write(SCRATCH + 256, &data[30..]);
    b.desc(1, 0, b.gpa(SCRATCH), 5, NEXT, 1);
    b.desc(1, 1, b.gpa(SCRATCH + 64), 7, NEXT, 2);
    b.desc(1, 2, b.gpa(SCRATCH + 128), 30, NEXT, 3);
    b.desc(1, 3, b.gpa(SCRATCH + 256), 70, 0, 0);
    b.avail(1, &[0]);
    let got = b.dequeue(&mut cache);
    assert_eq!(got.len(), 1);
    assert_eq!(bytes(&got[0]), data);
    cache.free_bulk(got);
}

#[test]
fn a_bad_chain_does_not_stop_the_good_ones_after_it() {
    let b = bed(1, 0);
    let mut cache = b.pool.cache();
    b.desc(1, 0, 1 << 40, 64, 0, 0);
    b.write(SCRATCH, &[0; 76]);
    b.desc(1, 1, b.gpa(SCRATCH), 76, 0, 0);
    b.avail(1, &[0, 1]);
    let got = b.dequeue(&mut cache);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pkt_len(), 64);
    assert_eq!(b.stats(1), (1, 1, false));
    assert_eq!(b.used(1, 2), (2, vec![(0, 0), (1, 0)]));
    cache.free_bulk(got);
}

#[test]
fn avail_index_jumping_past_the_queue_size_breaks_the_queue() {
    let b = bed(1, 0);
    let mut cache = b.pool.cache();
    b.set_avail_idx(1, 1000);
    assert!(b.dequeue(&mut cache).is_empty());
    let (_, _, broken) = b.stats(1);
    assert!(broken);
    assert_eq!(b.used(1, 0).0, 0, "nothing was returned");
    // Broken stays broken for later bursts, without touching the rings.
    assert!(b.dequeue(&mut cache).is_empty());
}

#[test]
fn head_index_beyond_the_table_breaks_the_queue() {
    let b = bed(1, 0);
    let mut cache = b.pool.cache();
    b.avail(1, &[999]);
    assert!(b.dequeue(&mut cache).is_empty());
    assert!(b.stats(1).2);
    drop(cache);
    assert_eq!(b.pool.in_use(), 0);
}

#[test]
fn receive_chains_the_device_may_not_write_are_skipped() {
    let b = bed(1, 0);
    let mut cache = b.pool.cache();
    let mut m = cache.alloc().unwrap();
    m.append(100).unwrap();
    m.data_mut().unwrap().fill(0x5a);
    // Chain 0 is device-readable only (no WRITE), chain 1 loops, chain 2 is fine.
    b.desc(0, 0, b.gpa(SCRATCH), 2048, 0, 0);
    b.desc(0, 1, b.gpa(SCRATCH), 2048, WRITE | NEXT, 1);
    b.desc(0, 2, b.gpa(SCRATCH + 4096), 2048, WRITE, 0);
    b.avail(0, &[0, 1, 2]);
    assert_eq!(enqueue_burst(&b.dev, 0, std::slice::from_ref(&m)), 1);
    let (idx, elems) = b.used(0, 3);
    assert_eq!(idx, 3);
    assert_eq!(elems, vec![(0, 0), (1, 0), (2, 112)]);
    let vq = b.dev.lock_vring(0).unwrap();
    assert_eq!((vq.stats.packets, vq.stats.bad_chains), (1, 2));
    drop(vq);
    let mut back = [0u8; 112];
    b.fe.shm()
        .slice()
        .read_at(SCRATCH + 4096, &mut back)
        .unwrap();
    assert_eq!(back[0..10], [0; 10], "no offloads in the header");
    assert_eq!(u16::from_le_bytes([back[10], back[11]]), 1, "num_buffers");
    assert!(back[12..].iter().all(|&x| x == 0x5a));
    cache.free(m);
}
