//! A hostile guest against the data path on packed rings (as `tests/datapath_hostile.rs` on
//! split ones): the test writes raw packed descriptors into the frontend's shared memory, past
//! the frontend's bookkeeping, and `dequeue_burst` / `enqueue_burst` must drop and count every
//! malformed chain (returned used with length 0, the next chain served), mark the queue broken
//! when the ring itself is corrupt (a chain running into descriptors not made available, longer
//! than the ring, a buffer id beyond the queue size or already in flight), ignore descriptors
//! whose AVAIL/USED bits do not say "available" for the device's lap, and never panic.

mod common;

use common::Bed;
use common::pkt::{mbuf_of, packet_bytes, payload};
use rvhost::driver::Flags;
use rvhost::features::{VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use rvhost::frontend::FrontendOptions;
use rvhost::mbuf::OffloadFlags;
use rvhost::net::{QueuePair, enqueue_burst};

const Q0: QueuePair = QueuePair(0);

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
/// AVAIL and USED bits of a descriptor the driver makes available on the first lap (wrap
/// counter 1): AVAIL set, USED clear.
const AVAIL: u16 = 1 << 7;
const USED: u16 = 1 << 15;
const MEM: usize = 32 << 20;
const QSIZE: u16 = 64;
/// Scratch space at the end of the shared memory, past everything the frontend placed.
const SCRATCH: usize = MEM - (2 << 20);
/// The virtio-net header (VERSION_1).
const HDR: usize = 12;

fn bed() -> Bed {
    let opts = FrontendOptions {
        features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
        mem_size: MEM,
        force_small_pages: true,
        queue_size: QSIZE,
        packed: true,
        ..FrontendOptions::default()
    };
    Bed::configured("dphp", Flags::empty(), opts, "dphp", 1024, 32, |d, p| {
        d.enable_features(p, VIRTIO_F_RING_PACKED).unwrap();
    })
}

/// A descriptor: (guest address, length, buffer id, flags without AVAIL/USED).
type D = (u64, u32, u16, u16);

trait Packed {
    fn slot_at(&self, vring: u16, slot: u16) -> usize;
    fn pdesc(&self, vring: u16, slot: u16, d: D, bits: u16);
    fn post(&self, vring: u16, first: u16, descs: &[D]);
    fn used_desc(&self, vring: u16, slot: u16) -> (u32, u16, u16);
    /// A transmit buffer holding a header and `len` payload bytes of pattern `seed`.
    fn tx_buf(&self, at: usize, len: usize, seed: usize) -> (u64, u32);
}

impl Packed for Bed {
    fn slot_at(&self, vring: u16, slot: u16) -> usize {
        self.fe.ring_info(vring).unwrap().desc.offset + 16 * usize::from(slot)
    }

    /// Writes `d` at `slot` with the AVAIL/USED `bits` given (flags last).
    fn pdesc(&self, vring: u16, slot: u16, (addr, len, id, flags): D, bits: u16) {
        let at = self.slot_at(vring, slot);
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&id.to_le_bytes());
        b[14..16].copy_from_slice(&(flags | bits).to_le_bytes());
        self.write(at, &b);
    }

    /// Makes `descs` available from `first` on, in the first lap (no wrap in these tests).
    fn post(&self, vring: u16, first: u16, descs: &[D]) {
        for (k, &d) in descs.iter().enumerate().rev() {
            self.pdesc(vring, first + k as u16, d, AVAIL);
        }
    }

    /// (len, id, flags) of the descriptor at `slot`.
    fn used_desc(&self, vring: u16, slot: u16) -> (u32, u16, u16) {
        let s = self.fe.shm().slice();
        let at = self.slot_at(vring, slot);
        let len: u32 = s.read_obj(at + 8).unwrap();
        let id: u16 = s.read_obj(at + 12).unwrap();
        let flags: u16 = s.read_obj(at + 14).unwrap();
        (u32::from_le(len), u16::from_le(id), u16::from_le(flags))
    }

    fn tx_buf(&self, at: usize, len: usize, seed: usize) -> (u64, u32) {
        let mut bytes = vec![0u8; HDR];
        bytes.extend(payload(len, seed));
        self.write(at, &bytes);
        (self.gpa(at), bytes.len() as u32)
    }
}

/// One malformed transmit chain at slot 0 (id 5), then a good one after it: the first is
/// dropped, returned used with length 0 and counted; the second arrives; the ring is fine.
fn dropped(bad: impl FnOnce(&Bed) -> u16) {
    let b = bed();
    let mut cache = b.pool.cache();
    let slots = bad(&b);
    let (addr, len) = b.tx_buf(SCRATCH + 0x10000, 100, 7);
    b.post(1, slots, &[(addr, len, 6, 0)]);
    let got = b.dequeue(&mut cache);
    assert_eq!(got.len(), 1, "only the good chain makes a packet");
    assert_eq!(packet_bytes(&got[0]), payload(100, 7));
    assert_eq!(b.stats(1), (1, 1, false), "(packets, bad chains, broken)");
    // Returned in order: the bad one at slot 0 with length 0, the good one after its slots.
    assert_eq!(b.used_desc(1, 0), (0, 5, AVAIL | USED));
    assert_eq!(b.used_desc(1, slots).1, 6);
    assert_eq!(b.used_desc(1, slots).2 & (AVAIL | USED), AVAIL | USED);
    cache.free_bulk(got);
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
}

#[test]
fn indirect_descriptor_chained_with_next() {
    dropped(|b| {
        let table = SCRATCH;
        b.desc_at(table, b.gpa(SCRATCH + 4096), 64, 0, 0);
        let (addr, len) = b.tx_buf(SCRATCH + 8192, 20, 1);
        b.post(
            1,
            0,
            &[(b.gpa(table), 16, 0, INDIRECT | NEXT), (addr, len, 5, 0)],
        );
        2
    });
}

#[test]
fn bad_indirect_table_lengths() {
    for bad_len in [0u32, 17, 16 * 5000] {
        dropped(|b| {
            b.post(1, 0, &[(b.gpa(SCRATCH), bad_len, 5, INDIRECT)]);
            1
        });
    }
}

#[test]
fn indirect_table_outside_guest_memory() {
    dropped(|b| {
        b.post(1, 0, &[(1 << 40, 32, 5, INDIRECT)]);
        1
    });
}

#[test]
fn buffer_outside_guest_memory_or_wrapping_the_address_space() {
    for addr in [1u64 << 40, u64::MAX - 16] {
        dropped(|b| {
            b.post(1, 0, &[(addr, 64, 5, 0)]);
            1
        });
    }
}

#[test]
fn device_writable_buffer_in_a_transmit_chain() {
    dropped(|b| {
        let (addr, len) = b.tx_buf(SCRATCH, 50, 1);
        b.post(1, 0, &[(addr, len, 5, WRITE)]);
        1
    });
}

#[test]
fn chain_shorter_than_the_header() {
    dropped(|b| {
        b.post(1, 0, &[(b.gpa(SCRATCH), 4, 5, 0)]);
        1
    });
}

/// A ring corrupt in its structure: the queue is marked broken, nothing is delivered from the
/// bad chain on, and later bursts do nothing.
fn broken(setup: impl FnOnce(&Bed), delivered_before: usize) {
    let b = bed();
    let mut cache = b.pool.cache();
    setup(&b);
    let got = b.dequeue(&mut cache);
    assert_eq!(got.len(), delivered_before);
    let (_, _, is_broken) = b.stats(1);
    assert!(is_broken, "the queue is marked broken");
    cache.free_bulk(got);
    assert!(
        b.dequeue(&mut cache).is_empty(),
        "a broken queue stays idle"
    );
    let s = b.dev.vring_stats(1).unwrap();
    assert!(s.queue.breaks >= 1 && s.queue.broken_bursts >= 1, "{s:?}");
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
}

#[test]
fn buffer_id_beyond_the_queue_size_breaks_the_ring() {
    broken(
        |b| {
            let (addr, len) = b.tx_buf(SCRATCH, 60, 1);
            b.post(1, 0, &[(addr, len, QSIZE, 0)]);
        },
        0,
    );
}

/// Id 3 made available twice before the device returned it (receive chains, whose used
/// descriptors wait for the burst's end): the first chain takes a packet, the second breaks
/// the ring, and the first packet still goes back to the guest. (Once a used descriptor is
/// visible, its id may come again: the driver may have read it.)
#[test]
fn buffer_id_made_available_twice_breaks_the_ring() {
    let b = bed();
    let mut cache = b.pool.cache();
    b.post(
        0,
        0,
        &[
            (b.gpa(SCRATCH), 2048, 3, WRITE),
            (b.gpa(SCRATCH + 4096), 2048, 3, WRITE),
        ],
    );
    let pkts: Vec<_> = (0..2)
        .map(|i| mbuf_of(&mut cache, &payload(100, i)))
        .collect();
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &pkts), 1);
    let s = b.dev.vring_stats(0).unwrap();
    assert_eq!((s.queue.packets, s.broken), (1, true));
    let (len, id, flags) = b.used_desc(0, 0);
    assert_eq!(
        (len as usize, id, flags),
        (HDR + 100, 3, AVAIL | USED | WRITE)
    );
    assert_eq!(
        enqueue_burst(&b.dev, Q0.rx(), &pkts[1..]),
        0,
        "broken stays idle"
    );
    cache.free_bulk(pkts);
}

#[test]
fn chain_running_into_a_descriptor_not_available_breaks_the_ring() {
    broken(
        |b| {
            let (addr, len) = b.tx_buf(SCRATCH, 60, 1);
            // The second descriptor keeps the bits of an unused slot (zero: not available for
            // the first lap), so the chain's end is unknown.
            b.pdesc(1, 1, (addr, len, 9, 0), 0);
            b.pdesc(1, 0, (b.gpa(SCRATCH + 4096), 12, 9, NEXT), AVAIL);
        },
        0,
    );
}

#[test]
fn chain_longer_than_the_ring_breaks_the_ring() {
    broken(
        |b| {
            let descs: Vec<D> = (0..QSIZE).map(|_| (b.gpa(SCRATCH), 16, 1, NEXT)).collect();
            b.post(1, 0, &descs);
        },
        0,
    );
}

/// A descriptor whose AVAIL/USED bits are those of another lap (the guest flipped its wrap
/// counter): not available to the device, so nothing happens and nothing breaks; once the
/// guest writes the right bits the chain goes.
#[test]
fn descriptor_flagged_for_the_wrong_lap_is_not_taken() {
    let b = bed();
    let mut cache = b.pool.cache();
    let (addr, len) = b.tx_buf(SCRATCH, 80, 4);
    for bits in [USED, AVAIL | USED, 0] {
        b.pdesc(1, 0, (addr, len, 2, 0), bits);
        assert!(b.dequeue(&mut cache).is_empty(), "bits {bits:#x}");
        assert_eq!(b.stats(1), (0, 0, false), "bits {bits:#x}");
    }
    b.pdesc(1, 0, (addr, len, 2, 0), AVAIL);
    let got = b.dequeue(&mut cache);
    assert_eq!(got.len(), 1);
    assert_eq!(packet_bytes(&got[0]), payload(80, 4));
    cache.free_bulk(got);
}

/// Receive chains the device may not write (a readable buffer, a bad indirect table) are
/// returned with length 0 and counted; the packet goes into the next good chain.
#[test]
fn receive_chains_the_device_may_not_write_are_skipped() {
    let b = bed();
    let mut cache = b.pool.cache();
    let buf = |k: usize| b.gpa(SCRATCH + k * 4096);
    b.post(
        0,
        0,
        &[
            (buf(0), 2048, 1, 0),
            (b.gpa(SCRATCH + 0x20000), 17, 2, INDIRECT),
            (buf(2), 2048, 3, WRITE),
        ],
    );
    let p = payload(300, 9);
    let m = mbuf_of(&mut cache, &p);
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), std::slice::from_ref(&m)), 1);
    let s = b.dev.vring_stats(0).unwrap();
    assert_eq!(
        (s.queue.packets, s.queue.bad_chains, s.broken),
        (1, 2, false)
    );
    assert_eq!(b.used_desc(0, 0), (0, 1, AVAIL | USED));
    assert_eq!(b.used_desc(0, 1), (0, 2, AVAIL | USED));
    let (len, id, flags) = b.used_desc(0, 2);
    assert_eq!((len as usize, id), (HDR + 300, 3));
    assert_eq!(flags, AVAIL | USED | WRITE);
    let mut got = vec![0u8; 300];
    b.fe.shm()
        .slice()
        .read_at(SCRATCH + 2 * 4096 + HDR, &mut got)
        .unwrap();
    assert_eq!(got, p);
    cache.free(m);
}

/// Four one-descriptor transmit chains at slots 0-3 (one line: the data path takes such chains
/// 4 at a time) with buffer ids `ids`, payloads of pattern 10 + k.
fn post_batch(b: &Bed, ids: [u16; 4]) {
    let descs: Vec<D> = (0..4)
        .map(|k| {
            let (addr, len) = b.tx_buf(SCRATCH + k * 4096, 60 + k, 10 + k);
            (addr, len, ids[k], 0)
        })
        .collect();
    b.post(1, 0, &descs);
}

/// A repeated id inside a batch of 4 (7 at slots 1 and 3) is not taken with the batch: the
/// chains before it arrive one by one, and the repeat breaks the ring.
#[test]
fn buffer_id_repeated_inside_a_batch_breaks_the_ring() {
    broken(|b| post_batch(b, [5, 7, 8, 7]), 3);
}

/// An id beyond the queue size inside a batch: the chains before it arrive, it breaks the ring.
#[test]
fn buffer_id_beyond_the_queue_size_inside_a_batch_breaks_the_ring() {
    broken(|b| post_batch(b, [5, 6, QSIZE, 8]), 2);
}

/// A buffer outside guest memory in the third chain of a batch: that chain is dropped,
/// counted and returned with length 0 in its place; the other three arrive in order.
#[test]
fn bad_buffer_inside_a_batch_is_dropped_in_its_place() {
    let b = bed();
    let mut cache = b.pool.cache();
    post_batch(&b, [4, 5, 6, 7]);
    b.pdesc(1, 2, (1 << 40, 72, 6, 0), AVAIL);
    let got = b.dequeue(&mut cache);
    let bytes: Vec<_> = got.iter().map(packet_bytes).collect();
    assert_eq!(
        bytes,
        vec![payload(60, 10), payload(61, 11), payload(63, 13)]
    );
    assert_eq!(b.stats(1), (3, 1, false), "(packets, bad chains, broken)");
    for (slot, id) in [(0, 4), (1, 5), (2, 6), (3, 7)] {
        assert_eq!(b.used_desc(1, slot), (0, id, AVAIL | USED), "slot {slot}");
    }
    cache.free_bulk(got);
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
}

/// Two lines of transmit chains (slots 0-7): the second chain's header asks for an offload
/// (DATA_VALID), the third's buffer is outside guest memory. A batch is copied whole only while
/// its chains are plain ones; from the first that is not, chain by chain. The offloaded packet
/// arrives with its flag, the bad chain is dropped in its place, and the second line, after a
/// drop, arrives whole and in order: every packet where it belongs, every id returned in order.
#[test]
fn batches_hand_offloads_and_drops_to_the_chain_by_chain_path() {
    let b = bed();
    let mut cache = b.pool.cache();
    let descs: Vec<D> = (0..8)
        .map(|k| {
            let at = SCRATCH + k * 4096;
            let (addr, len) = b.tx_buf(at, 60 + k, 30 + k);
            if k == 1 {
                // flags: VIRTIO_NET_HDR_F_DATA_VALID.
                b.write(at, &[2]);
            }
            let addr = if k == 2 { 1 << 40 } else { addr };
            (addr, len, 20 + k as u16, 0)
        })
        .collect();
    b.post(1, 0, &descs);
    let got = b.dequeue(&mut cache);
    let bytes: Vec<_> = got.iter().map(packet_bytes).collect();
    let want: Vec<_> = [0, 1, 3, 4, 5, 6, 7]
        .iter()
        .map(|&k| payload(60 + k, 30 + k))
        .collect();
    assert_eq!(bytes, want);
    let valid: Vec<bool> = got
        .iter()
        .map(|m| m.meta().ol_flags.contains(OffloadFlags::RX_L4_CKSUM_GOOD))
        .collect();
    assert_eq!(valid, [false, true, false, false, false, false, false]);
    assert_eq!(b.stats(1), (7, 1, false), "(packets, bad chains, broken)");
    for slot in 0..8 {
        assert_eq!(
            b.used_desc(1, slot),
            (0, 20 + slot, AVAIL | USED),
            "slot {slot}"
        );
    }
    cache.free_bulk(got);
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
}

/// The pool runs out in the middle of a batch (the third chain needs a second segment): the
/// burst stops there and that chain and the one after it stay available, taken by the next
/// burst once mbufs are back, in order and whole.
#[test]
fn mbufs_running_out_inside_a_batch_leave_the_rest_available() {
    let b = bed();
    let mut cache = b.pool.cache();
    let mut descs: Vec<D> = Vec::new();
    for k in 0..4 {
        let len = if k == 2 { 3000 } else { 60 };
        let (addr, l) = b.tx_buf(SCRATCH + k * 8192, len, 20 + k);
        descs.push((addr, l, 10 + k as u16, 0));
    }
    b.post(1, 0, &descs);
    // Leave the pool exactly the 4 mbufs of the burst's bulk allocation.
    let mut held = Vec::new();
    assert!(
        b.pool.data_room() < 3000,
        "the long packet takes two segments"
    );
    while b.pool.available() > 4 {
        held.push(cache.alloc().unwrap());
    }
    let got = b.dequeue(&mut cache);
    let bytes: Vec<_> = got.iter().map(packet_bytes).collect();
    assert_eq!(bytes, vec![payload(60, 20), payload(60, 21)]);
    assert_eq!(b.stats(1), (2, 0, false));
    cache.free_bulk(got);
    cache.free_bulk(held);
    let got = b.dequeue(&mut cache);
    let bytes: Vec<_> = got.iter().map(packet_bytes).collect();
    assert_eq!(bytes, vec![payload(3000, 22), payload(60, 23)]);
    for slot in 0..4 {
        assert_eq!(b.used_desc(1, slot).1, 10 + slot, "slot {slot}");
    }
    assert_eq!(b.stats(1), (4, 0, false));
    cache.free_bulk(got);
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
}

/// A receive buffer outside guest memory in the third chain of a line of four (which enqueue
/// takes as a batch when it can): that chain is returned with length 0 and counted, the
/// packets go into the other three in order, the fourth packet stays with the caller.
#[test]
fn bad_receive_buffer_inside_a_batch_is_skipped_in_its_place() {
    let b = bed();
    let mut cache = b.pool.cache();
    let buf = |k: usize| b.gpa(SCRATCH + k * 4096);
    b.post(
        0,
        0,
        &[
            (buf(0), 2048, 4, WRITE),
            (buf(1), 2048, 5, WRITE),
            (1 << 40, 2048, 6, WRITE),
            (buf(3), 2048, 7, WRITE),
        ],
    );
    let pkts: Vec<_> = (0..4)
        .map(|k| mbuf_of(&mut cache, &payload(70 + k, 30 + k)))
        .collect();
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &pkts), 3);
    let s = b.dev.vring_stats(0).unwrap();
    assert_eq!(
        (s.queue.packets, s.queue.bad_chains, s.broken),
        (3, 1, false)
    );
    let w = AVAIL | USED | WRITE;
    assert_eq!(b.used_desc(0, 0), ((HDR + 70) as u32, 4, w));
    assert_eq!(b.used_desc(0, 1), ((HDR + 71) as u32, 5, w));
    assert_eq!(b.used_desc(0, 2), (0, 6, AVAIL | USED));
    assert_eq!(b.used_desc(0, 3), ((HDR + 72) as u32, 7, w));
    for (k, at) in [(0, 0), (1, 1), (2, 3)] {
        let mut got = vec![0u8; 70 + k];
        b.fe.shm()
            .slice()
            .read_at(SCRATCH + at * 4096 + HDR, &mut got)
            .unwrap();
        assert_eq!(got, payload(70 + k, 30 + k), "packet {k}");
    }
    cache.free_bulk(pkts);
}

/// A batch of 4 transmit chains cut short by the mempool: the second packet needs a further
/// segment and no mbuf is left. The first is delivered and returned used; the second and the
/// two after it stay available (not returned, not lost) and come, in order, once mbufs are
/// back.
#[test]
fn a_batch_cut_short_by_the_mempool_gives_the_rest_back() {
    let b = bed();
    let mut cache = b.pool.cache();
    let big = rvhost::mbuf::DEFAULT_DATA_ROOM + 500;
    let sizes = [100, big, 100, 100];
    let descs: Vec<D> = sizes
        .iter()
        .enumerate()
        .map(|(k, &len)| {
            let (addr, l) = b.tx_buf(SCRATCH + k * 0x4000, len, 40 + k);
            (addr, l, 10 + k as u16, 0)
        })
        .collect();
    b.post(1, 0, &descs);
    // Only the burst's 4 mbufs are left: none for the big packet's second segment.
    let mut hoard = Vec::new();
    while let Ok(m) = cache.alloc() {
        hoard.push(m);
    }
    cache.free_bulk(hoard.drain(..4));
    let got = b.dequeue(&mut cache);
    assert_eq!(got.len(), 1);
    assert_eq!(packet_bytes(&got[0]), payload(100, 40));
    assert_eq!(b.used_desc(1, 0), (0, 10, AVAIL | USED));
    for slot in 1..4 {
        assert_eq!(
            b.used_desc(1, slot).2 & (AVAIL | USED),
            AVAIL,
            "slot {slot} kept"
        );
    }
    let s = b.dev.vring_stats(1).unwrap();
    assert_eq!((s.queue.packets, s.queue.alloc_failures), (1, 1));
    cache.free_bulk(got);
    cache.free_bulk(hoard);
    let rest = b.dequeue(&mut cache);
    assert_eq!(rest.len(), 3);
    for (m, k) in rest.iter().zip(1..) {
        assert_eq!(packet_bytes(m), payload(sizes[k], 40 + k), "packet {k}");
        assert_eq!(b.used_desc(1, k as u16), (0, 10 + k as u16, AVAIL | USED));
    }
    assert_eq!(b.stats(1), (4, 0, false));
    cache.free_bulk(rest);
    drop(cache);
    assert_eq!(b.pool.in_use(), 0, "no mbuf leaked");
}

/// Eight receive chains in two lines of four, the second line repeating id 2 of the first
/// while it is in flight. Enqueue reads the second line while it fills the first (to ask for
/// its buffers early); taking it finds the id in flight: the first line's packets and the two
/// chains before the repeat are placed, the repeat breaks the ring.
#[test]
fn buffer_id_of_a_batch_read_ahead_already_in_flight_breaks_the_ring() {
    let b = bed();
    let mut cache = b.pool.cache();
    let ids = [0, 1, 2, 3, 4, 5, 2, 7];
    let descs: Vec<D> = (0..8)
        .map(|k| (b.gpa(SCRATCH + k * 4096), 2048, ids[k], WRITE))
        .collect();
    b.post(0, 0, &descs);
    let pkts: Vec<_> = (0..8)
        .map(|k| mbuf_of(&mut cache, &payload(70 + k, 40 + k)))
        .collect();
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &pkts), 6);
    let s = b.dev.vring_stats(0).unwrap();
    assert_eq!((s.queue.packets, s.broken), (6, true));
    for (slot, &id) in ids.iter().enumerate().take(6) {
        let want = ((HDR + 70 + slot) as u32, id, AVAIL | USED | WRITE);
        assert_eq!(b.used_desc(0, slot as u16), want, "slot {slot}");
    }
    assert_eq!(b.used_desc(0, 6).2 & USED, 0, "the repeat is not returned");
    cache.free_bulk(pkts);
}

/// Eight receive chains in two lines of four, and a packet of two segments second: the first
/// line cannot go as a batch, so its chains are taken one by one and the second line, read
/// ahead while the first was tried, is read again where it then is. Every packet lands in its
/// chain, in order, whole.
#[test]
fn a_batch_read_ahead_is_read_again_after_the_batch_before_it_went_chain_by_chain() {
    let b = bed();
    let mut cache = b.pool.cache();
    let descs: Vec<D> = (0..8)
        .map(|k| (b.gpa(SCRATCH + k * 4096), 4096, 10 + k as u16, WRITE))
        .collect();
    b.post(0, 0, &descs);
    let lens: Vec<usize> = (0..8).map(|k| if k == 1 { 3000 } else { 70 + k }).collect();
    let pkts: Vec<_> = (0..8)
        .map(|k| mbuf_of(&mut cache, &payload(lens[k], 50 + k)))
        .collect();
    assert!(pkts[1].nb_segs() > 1, "the second packet is chained");
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &pkts), 8);
    let s = b.dev.vring_stats(0).unwrap();
    assert_eq!((s.queue.packets, s.broken), (8, false));
    for (k, &len) in lens.iter().enumerate() {
        let want = ((HDR + len) as u32, 10 + k as u16, AVAIL | USED | WRITE);
        assert_eq!(b.used_desc(0, k as u16), want, "slot {k}");
        let mut got = vec![0u8; len];
        b.fe.shm()
            .slice()
            .read_at(SCRATCH + k * 4096 + HDR, &mut got)
            .unwrap();
        assert_eq!(got, payload(len, 50 + k), "packet {k}");
    }
    cache.free_bulk(pkts);
}
