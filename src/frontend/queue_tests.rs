//! Tests of [`super`]: the test plays the device by hand. Guest-physical addresses equal
//! offsets in the shared memory here.

use std::num::Wrapping;
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::*;
use crate::features::VIRTIO_F_VERSION_1;
use crate::frontend::shm::tests::shm;
use crate::frontend::shm::{
    SharedRing, Shm, VIRTQ_USED_F_NO_NOTIFY, VirtqDesc, VirtqUsedElem, split_ring_lengths,
};

const SLOT: usize = 128;
const MERGE: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF;

fn parts(size: u16, base: u16) -> (Arc<Shm>, DriverRing, SlotPool) {
    let m = shm(0x20000);
    let (dl, al, _) = split_ring_lengths(size);
    let used = (dl + al).next_multiple_of(4);
    let ring = SharedRing::new(m.clone(), size, 0, dl, used).unwrap();
    let offsets: Box<[usize]> = (0..usize::from(size)).map(|i| 0x8000 + i * SLOT).collect();
    let gpas = offsets.iter().map(|&o| o as u64).collect();
    let pool = SlotPool::new(m.clone(), offsets, gpas, SLOT).unwrap();
    (m, DriverRing::new(ring, base, false), pool)
}

fn efd() -> EventFd {
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap()
}

fn tx(size: u16, layout: TxLayout) -> (Arc<Shm>, TxQueue) {
    let (m, ring, pool) = parts(size, 0);
    let mut q = TxQueue::new_tx(
        1,
        QueueRing::Split(ring),
        pool,
        Some(efd()),
        Some(efd()),
        layout,
    );
    q.configure(VIRTIO_F_VERSION_1);
    (m, q)
}

fn rx(size: u16, base: u16, features: u64) -> (Arc<Shm>, RxQueue) {
    let (m, ring, pool) = parts(size, base);
    let mut q = RxQueue::new_rx(0, QueueRing::Split(ring), pool, Some(efd()), None);
    q.configure_rx(features);
    (m, q)
}

/// The device side, by hand.
struct Device {
    ring: SharedRing,
    last_avail: Wrapping<u16>,
    used: Wrapping<u16>,
}

impl Device {
    fn of<K>(q: &Queue<K>) -> Self {
        let ring = q.ring().unwrap().shared().clone();
        let base = Wrapping(ring.load_used_idx());
        Self {
            ring,
            last_avail: base,
            used: base,
        }
    }

    fn next_chain(&mut self) -> Option<(u16, Vec<VirtqDesc>)> {
        if self.last_avail.0 == self.ring.load_avail_idx() {
            return None;
        }
        let head = self.ring.avail_entry(self.last_avail.0);
        self.last_avail += 1;
        let mut chain = vec![self.ring.read_desc(head)];
        while chain.last().unwrap().flags & VirtqDesc::F_NEXT != 0 {
            chain.push(self.ring.read_desc(chain.last().unwrap().next));
        }
        Some((head, chain))
    }

    /// Concatenated bytes of a device-readable chain.
    fn read(&self, chain: &[VirtqDesc]) -> Vec<u8> {
        let s = self.ring.shm().slice();
        let mut out = Vec::new();
        for d in chain {
            assert_eq!(d.flags & VirtqDesc::F_WRITE, 0);
            let mut b = vec![0u8; d.len as usize];
            s.read_at(d.addr as usize, &mut b).unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    /// Writes `bytes` across a device-writable chain; returns bytes written.
    fn write(&self, chain: &[VirtqDesc], bytes: &[u8]) -> u32 {
        let s = self.ring.shm().slice();
        let mut at = 0;
        for d in chain {
            assert_ne!(d.flags & VirtqDesc::F_WRITE, 0);
            let n = (d.len as usize).min(bytes.len() - at);
            s.write_at(d.addr as usize, &bytes[at..at + n]).unwrap();
            at += n;
        }
        at as u32
    }

    fn used(&mut self, head: u16, len: u32) {
        self.ring.write_used_elem(
            self.used.0,
            VirtqUsedElem {
                id: head.into(),
                len,
            },
        );
        self.used += 1;
    }

    fn publish(&self) {
        self.ring.store_used_idx(self.used.0);
    }
}

fn packet(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

#[test]
fn send_builds_inline_chains_with_header() {
    let (_m, mut q) = tx(8, TxLayout::Inline);
    let small = packet(60, 1);
    let big = packet(300, 7); // 12 + 300 bytes: three 128-byte buffers
    assert_eq!(q.descs_for(60), Some(1));
    assert_eq!(q.descs_for(300), Some(3));
    assert_eq!(q.send(&[&small, &big]), 2);
    assert_eq!(q.stats().kicks, 1, "one kick for the burst");
    assert_eq!(q.free_descriptors(), 4);
    let mut dev = Device::of(&q);
    let (h1, c1) = dev.next_chain().unwrap();
    assert_eq!(c1.len(), 1);
    let bytes = dev.read(&c1);
    assert_eq!(bytes[..12], [0; 12], "zero header");
    assert_eq!(bytes[12..], small[..]);
    let (h2, c2) = dev.next_chain().unwrap();
    assert_eq!(c2.iter().map(|d| d.len).collect::<Vec<_>>(), [128, 128, 56]);
    assert_eq!(dev.read(&c2)[12..], big[..]);
    assert!(dev.next_chain().is_none());
    dev.used(h2, 0);
    dev.used(h1, 0);
    dev.publish();
    assert_eq!(q.reap(), 2);
    assert_eq!((q.free_descriptors(), q.in_flight()), (8, 0));
}

#[test]
fn send_separate_header_and_offload_fields() {
    let (_m, mut q) = tx(8, TxLayout::Separate);
    let hdr = NetHdr {
        flags: NetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..NetHdr::default()
    };
    let p = packet(200, 3);
    assert_eq!(q.send_with_hdr(&hdr, &[&p, &[]]), 2);
    let mut dev = Device::of(&q);
    let (_, c) = dev.next_chain().unwrap();
    assert_eq!(c.iter().map(|d| d.len).collect::<Vec<_>>(), [12, 128, 72]);
    let bytes = dev.read(&c);
    assert_eq!(NetHdr::parse(&bytes[..12]), hdr);
    assert_eq!(bytes[12..], p[..]);
    let (_, c) = dev.next_chain().unwrap();
    assert_eq!(c.len(), 1, "an empty packet is its header alone");
    assert_eq!(q.max_packet_len(), 7 * SLOT);
}

#[test]
fn send_stops_when_full_and_reaps_to_make_room() {
    let (_m, mut q) = tx(4, TxLayout::Inline);
    let p = packet(100, 0);
    let burst: Vec<&[u8]> = vec![&p; 6];
    assert_eq!(q.send(&burst), 4);
    assert_eq!(q.stats().full, 1);
    let mut dev = Device::of(&q);
    let (h, _) = dev.next_chain().unwrap();
    dev.used(h, 0);
    dev.publish();
    // send reaps the used chain by itself.
    assert_eq!(q.send(&burst), 1);
    assert_eq!(q.stats().packets, 5);
    // Larger than the whole ring: refused.
    let huge = packet(4 * SLOT, 0);
    assert_eq!(q.send(&[&huge]), 0);
    assert_eq!(q.stats().oversize, 1);
}

#[test]
fn kicks_honour_no_notify() {
    let (_m, mut q) = tx(8, TxLayout::Inline);
    q.ring()
        .unwrap()
        .shared()
        .set_used_flags(VIRTQ_USED_F_NO_NOTIFY);
    assert_eq!(q.send(&[&[1u8; 10]]), 1);
    assert_eq!(q.stats().kicks, 0);
    q.ring().unwrap().shared().set_used_flags(0);
    assert_eq!(q.send(&[&[1u8; 10]]), 1);
    assert_eq!(q.stats().kicks, 1);
    let kick = q.kick_fd().unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(nix::unistd::read(kick, &mut buf).unwrap(), 8);
    assert_eq!(u64::from_ne_bytes(buf), 1);
}

#[test]
fn receive_single_and_chained_buffers() {
    let (_m, mut q) = rx(8, 0, VIRTIO_F_VERSION_1);
    assert_eq!(q.post_rx(2, SLOT), 2);
    assert_eq!(
        q.post_rx(10, 2 * SLOT + 10),
        2,
        "3 descriptors each; 6 left"
    );
    assert_eq!(q.posted(), 4);
    assert_eq!(q.post_rx(1, 8), 0, "smaller than the header");
    let mut dev = Device::of(&q);
    let mut chains = Vec::new();
    while let Some(c) = dev.next_chain() {
        chains.push(c);
    }
    assert_eq!(
        chains[2].1.iter().map(|d| d.len).collect::<Vec<_>>(),
        [128, 128, 10]
    );
    let p1 = packet(100, 1);
    let p2 = packet(250, 2);
    for ((head, chain), p) in [(&chains[0], &p1), (&chains[2], &p2)] {
        let mut bytes = NetHdr::default().to_bytes().to_vec();
        bytes.extend_from_slice(p);
        let n = dev.write(chain, &bytes);
        dev.used(*head, n);
    }
    dev.publish();
    let got = q.recv(10);
    assert_eq!(got, vec![p1, p2]);
    assert_eq!(q.posted(), 2);
    assert_eq!(q.stats().packets, 2);
    assert_eq!(q.stats().bytes, 350);
}

#[test]
fn mergeable_packets_wait_for_all_their_buffers() {
    let (_m, mut q) = rx(8, 0, MERGE);
    assert_eq!(q.post_rx(8, SLOT), 8);
    let mut dev = Device::of(&q);
    let p = packet(300, 9); // 12 + 300 bytes: 3 buffers
    let mut hdr = NetHdr {
        num_buffers: 3,
        ..NetHdr::default()
    }
    .to_bytes()
    .to_vec();
    hdr.extend_from_slice(&p);
    let mut rest = &hdr[..];
    let mut heads = Vec::new();
    while !rest.is_empty() {
        let (h, c) = dev.next_chain().unwrap();
        let n = dev.write(&c, rest);
        rest = &rest[n as usize..];
        heads.push((h, n));
    }
    assert_eq!(heads.len(), 3);
    // Publish two of the three buffers: nothing is delivered yet.
    dev.used(heads[0].0, heads[0].1);
    dev.used(heads[1].0, heads[1].1);
    dev.publish();
    assert_eq!(q.poll_rx(8, |_| panic!("incomplete packet delivered")), 0);
    dev.used(heads[2].0, heads[2].1);
    dev.publish();
    let mut seen = 0;
    q.poll_rx(8, |pkt| {
        assert_eq!(pkt.data, &p[..]);
        assert_eq!((pkt.buffers, pkt.hdr.num_buffers), (3, 3));
        assert_eq!(pkt.written, 312);
        seen += 1;
    });
    assert_eq!(seen, 1);
    assert_eq!(q.ring().unwrap().free_count(), 3);
}

#[test]
fn bad_lengths_and_num_buffers_are_contained() {
    let (_m, mut q) = rx(4, 0, MERGE);
    q.post_rx(2, SLOT);
    let mut dev = Device::of(&q);
    let (h0, c0) = dev.next_chain().unwrap();
    let (h1, c1) = dev.next_chain().unwrap();
    // Claims 1000 bytes in a 128-byte buffer, and num_buffers 40 with 2 posted.
    let hdr = NetHdr {
        num_buffers: 40,
        ..NetHdr::default()
    };
    dev.write(&c0, &hdr.to_bytes());
    dev.used(h0, 1000);
    dev.write(&c1, &NetHdr::default().to_bytes());
    dev.used(h1, 12);
    dev.publish();
    let mut lens = Vec::new();
    q.poll_rx(8, |p| lens.push(p.data.len()));
    assert_eq!(lens, [SLOT - 12, 0]);
    let st = q.stats();
    assert_eq!((st.bad_len, st.bad_num_buffers), (1, 1));
    // Shorter than a header: dropped and counted.
    q.post_rx(1, SLOT);
    let (h, _) = dev.next_chain().unwrap();
    dev.used(h, 5);
    dev.publish();
    assert_eq!(q.poll_rx(8, |_| panic!("runt delivered")), 0);
    assert_eq!(q.stats().bad_len, 2);
    assert_eq!(q.ring().unwrap().free_count(), 4);
}

#[test]
fn receive_wraps_the_16_bit_indexes() {
    let (_m, mut q) = rx(4, 65533, VIRTIO_F_VERSION_1);
    let mut dev = Device::of(&q);
    let mut total = 0;
    for round in 0..10u8 {
        assert_eq!(q.post_rx(4, SLOT), 4, "round {round}");
        while let Some((h, c)) = dev.next_chain() {
            let mut b = NetHdr::default().to_bytes().to_vec();
            b.extend_from_slice(&packet(20, round));
            let n = dev.write(&c, &b);
            dev.used(h, n);
        }
        dev.publish();
        let got = q.recv(16);
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|p| *p == packet(20, round)));
        total += got.len();
    }
    assert_eq!(total, 40);
    assert_eq!(q.ring().unwrap().last_used(), 65533u16.wrapping_add(40));
    assert_eq!(q.ring().unwrap().free_count(), 4);
}

#[test]
fn calls_are_waited_for_on_the_call_eventfd() {
    let (_m, mut q) = tx(8, TxLayout::Inline);
    assert!(!q.wait_call(Duration::from_millis(1)).unwrap());
    q.send(&[&[0u8; 20]]);
    let mut dev = Device::of(&q);
    let (h, _) = dev.next_chain().unwrap();
    dev.used(h, 0);
    dev.publish();
    assert!(q.wait_call(Duration::ZERO).unwrap(), "used element pending");
    q.reap();
    // The device calls: write the (shared) call eventfd from "its" side.
    let call = q.call_fd().unwrap().try_clone_to_owned().unwrap();
    nix::unistd::write(&call, &1u64.to_ne_bytes()).unwrap();
    assert!(q.wait_call(Duration::from_secs(1)).unwrap());
    assert_eq!(q.take_calls(), 0, "wait_call consumed it");
    let (_m, mut polled) = rx(4, 0, MERGE);
    assert!(polled.wait_call(Duration::ZERO).is_err(), "no call fd");
}
