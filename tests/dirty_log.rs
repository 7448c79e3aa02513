//! Dirty logging for live migration (`VHOST_F_LOG_ALL`, LOG_SHMFD): the Rust frontend plays
//! QEMU's role (a memfd log sent with SET_LOG_BASE, `VHOST_VRING_F_LOG` on every vring), the
//! backend moves packets both ways, and the log must hold exactly the pages the backend wrote:
//! every page of the receive buffers' bytes it wrote (as the used entries say) and of the used
//! ring entries, flags and index it wrote, and no other page.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Bed;
use common::pkt::{mbuf_of, payload};
use rvhost::driver::{Device, Flags};
use rvhost::features::{
    VHOST_F_LOG_ALL, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
};
use rvhost::frontend::{DirtyLogArea, Frontend, FrontendOptions, VirtqDesc};
use rvhost::mbuf::{Mbuf, PktCache};
use rvhost::net::{
    AsyncConfig, QueuePair, async_channel_register, async_try_dequeue_burst, dequeue_burst,
    enqueue_burst, poll_enqueue_completed, submit_enqueue_burst,
};
use rvhost::protocol::FrontendReq;
use rvhost::test_support::{fds_named, mapped_bytes_named};
use rvhost::virtq::packed::RingPos;

const Q0: QueuePair = QueuePair(0);
const PAGE: u64 = 4096;

/// Buffers of 1500 bytes are placed 1536 bytes apart: many straddle a page boundary.
const BUF: usize = 1500;

fn opts(features: u64, regions: usize) -> FrontendOptions {
    FrontendOptions {
        features,
        dirty_log: true,
        regions,
        gpa_gap: if regions > 1 { 0x10_0000 } else { 0 },
        // With several regions, small ones (256 KiB each): the receive ring's buffers spread
        // over three of them.
        mem_size: if regions > 1 { 1 << 20 } else { 8 << 20 },
        buf_size: BUF,
        force_small_pages: true,
        ..FrontendOptions::default()
    }
}

/// With `VIRTIO_F_RING_PACKED` in `features`: on packed rings (offered by the driver, driven
/// by the frontend).
fn bed(features: u64, regions: usize) -> Bed {
    let packed = features & VIRTIO_F_RING_PACKED != 0;
    let opts = FrontendOptions {
        packed,
        ..opts(features, regions)
    };
    Bed::on_ring("dlog", Flags::empty(), opts, "dlog", 4096, 64)
}

/// The pages a set of writes touched.
#[derive(Default, Debug)]
struct Pages {
    set: BTreeSet<u64>,
    /// Writes that straddled a page boundary, and chains written across two regions.
    straddling: usize,
    across_regions: usize,
}

impl Pages {
    fn add(&mut self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (gpa / PAGE, (gpa + len - 1) / PAGE);
        if first != last {
            self.straddling += 1;
        }
        self.set.extend(first..=last);
    }
}

/// The pages marked in a log.
fn marked(log: &[u8]) -> BTreeSet<u64> {
    (0..log.len() as u64 * 8)
        .filter(|p| log[(p / 8) as usize] & (1 << (p % 8)) != 0)
        .collect()
}

/// The region (chunk) index of a guest address.
fn region_of(fe: &Frontend, gpa: u64) -> usize {
    fe.layout()
        .chunks()
        .iter()
        .position(|c| gpa >= c.gpa.raw() && gpa < c.gpa.raw() + c.len as u64)
        .expect("a buffer outside the layout")
}

/// Adds what the backend wrote for the used entries `[from, to)` of vring `v`: the ring's
/// entries, flags and index, and, on a receive ring, the first `len` bytes of each used chain.
fn written(fe: &Frontend, v: u16, from: u16, to: u16, pages: &mut Pages) {
    let info = *fe.ring_info(v).unwrap();
    let used = info.used.gpa.raw();
    let size = info.size;
    pages.add(used, 4);
    let mut i = from;
    while i != to {
        let slot = i & (size - 1);
        pages.add(used + 4 + 8 * u64::from(slot), 8);
        i = i.wrapping_add(1);
    }
}

/// The receive chains' bytes for used entries `[from, to)` of the receive ring of pair 0.
fn rx_written(fe: &mut Frontend, from: u16, to: u16, pages: &mut Pages) {
    // Per used entry, the (address, bytes written) of each buffer of its chain.
    let mut chains: Vec<Vec<(u64, u64)>> = Vec::new();
    let ring = fe.rx(0).unwrap().ring().unwrap().shared();
    let size = ring.size();
    let mut i = from;
    while i != to {
        let e = ring.read_used_elem(i & (size - 1));
        let mut left = u64::from(e.len);
        let mut id = e.id as u16;
        let mut chain = Vec::new();
        loop {
            let d = ring.read_desc(id);
            let n = left.min(u64::from(d.len));
            chain.push((d.addr, n));
            left -= n;
            if d.flags & VirtqDesc::F_NEXT == 0 || left == 0 {
                break;
            }
            id = d.next;
        }
        assert_eq!(left, 0, "used entry {i}: more bytes than its chain holds");
        chains.push(chain);
        i = i.wrapping_add(1);
    }
    add_chains(fe, chains, pages);
}

/// Adds the bytes written into each chain's buffers ((address, bytes) each), counting the
/// chains written across two regions.
fn add_chains(fe: &Frontend, chains: Vec<Vec<(u64, u64)>>, pages: &mut Pages) {
    for chain in chains {
        let regions: BTreeSet<usize> = chain
            .iter()
            .filter(|&&(_, n)| n > 0)
            .map(|&(a, _)| region_of(fe, a))
            .collect();
        if regions.len() > 1 {
            pages.across_regions += 1;
        }
        for (a, n) in chain {
            pages.add(a, n);
        }
    }
}

/// Where the device's next used entry goes on vring `v`: the used index of a split ring; on a
/// packed ring the position after the used descriptors waiting (the frontend reaped those
/// before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    Split(u16),
    Packed(RingPos),
}

fn device_pos(fe: &mut Frontend, vring: u16) -> Pos {
    let q = |fe: &mut Frontend| {
        if vring % 2 == 0 {
            fe.rx(vring / 2)
                .unwrap()
                .packed_ring()
                .map(|r| r.ready_used(r.size()).1)
        } else {
            fe.tx(vring / 2)
                .unwrap()
                .packed_ring()
                .map(|r| r.ready_used(r.size()).1)
        }
    };
    match q(fe) {
        Some(p) => Pos::Packed(p),
        None => Pos::Split(used_idx(fe, vring)),
    }
}

/// What the backend wrote on vring `v` between two positions: [`written`] and, on a receive
/// ring, [`rx_written`]; on a packed ring each used descriptor's slot in the descriptor ring
/// and, receiving, the bytes of its chain's buffers (each `BUF` long, in the slots after the
/// used descriptor's, which the device does not overwrite).
fn written_between(fe: &mut Frontend, v: u16, before: Pos, after: Pos, pages: &mut Pages) {
    match (before, after) {
        (Pos::Split(from), Pos::Split(to)) => {
            written(fe, v, from, to, pages);
            if v % 2 == 0 {
                rx_written(fe, from, to, pages);
            }
        }
        (Pos::Packed(from), Pos::Packed(to)) => {
            let info = *fe.ring_info(v).unwrap();
            let desc_gpa = info.desc.gpa.raw();
            let ring = if v % 2 == 0 {
                fe.rx(v / 2).unwrap().packed_ring().unwrap()
            } else {
                fe.tx(v / 2).unwrap().packed_ring().unwrap()
            };
            let size = ring.size();
            let mut chains: Vec<Vec<(u64, u64)>> = Vec::new();
            let mut p = from;
            while p != to {
                let d = ring.read_desc(p.idx());
                pages.add(desc_gpa + 16 * u64::from(p.idx()), 16);
                let slots = ring.slots_of(d.id);
                assert!(slots > 0, "used id {} not outstanding", d.id);
                if v % 2 == 0 {
                    let mut left = u64::from(d.len);
                    let mut chain = Vec::new();
                    for k in 0..slots {
                        let addr = ring.read_desc(p.advance(k, size).idx()).addr;
                        let n = left.min(BUF as u64);
                        chain.push((addr, n));
                        left -= n;
                    }
                    assert_eq!(left, 0, "more bytes than the chain holds");
                    chains.push(chain);
                }
                p = p.advance(slots, size);
            }
            add_chains(fe, chains, pages);
        }
        _ => unreachable!("one ring, one layout"),
    }
}

fn used_idx(fe: &mut Frontend, vring: u16) -> u16 {
    if vring % 2 == 0 {
        fe.rx(vring / 2)
            .unwrap()
            .ring()
            .unwrap()
            .shared()
            .load_used_idx()
    } else {
        fe.tx(vring / 2)
            .unwrap()
            .ring()
            .unwrap()
            .shared()
            .load_used_idx()
    }
}

/// Which data path moves the packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Sync,
    /// Submit and poll, through the async channel registered on the queue.
    Async,
}

/// Enqueues `pkts` (all must go), then checks the log against what was written.
fn enqueue_and_check(b: &mut Bed, cache: &mut PktCache, pkts: &[Vec<u8>], case: &str) -> Pages {
    enqueue_and_check_on(b, cache, pkts, case, Path::Sync)
}

/// As [`enqueue_and_check`], on `path` (async: submitted in one call, polled until every
/// packet is back).
fn enqueue_and_check_on(
    b: &mut Bed,
    cache: &mut PktCache,
    pkts: &[Vec<u8>],
    case: &str,
    path: Path,
) -> Pages {
    let before = device_pos(&mut b.fe, 0);
    b.fe.dirty_log().unwrap().take();
    let mut mbufs: Vec<Mbuf> = pkts.iter().map(|p| mbuf_of(cache, p)).collect();
    match path {
        Path::Sync => {
            assert_eq!(
                enqueue_burst(&b.dev, Q0.rx(), &mbufs),
                mbufs.len(),
                "{case}"
            );
            cache.free_bulk(mbufs);
        }
        Path::Async => {
            let n = mbufs.len();
            assert_eq!(
                submit_enqueue_burst(&b.dev, Q0.rx(), &mut mbufs),
                n,
                "{case}"
            );
            let mut back = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while back.len() < n && Instant::now() < deadline {
                poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
            }
            assert_eq!(back.len(), n, "{case}: every packet back from the channel");
            cache.free_bulk(back);
        }
    }
    let after = device_pos(&mut b.fe, 0);
    let mut want = Pages::default();
    written_between(&mut b.fe, 0, before, after, &mut want);
    let got = marked(&b.fe.dirty_log().unwrap().take());
    assert_eq!(
        got, want.set,
        "{case}: marked pages (left) vs written pages (right)"
    );
    // The guest gets every packet intact.
    let mut recv = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while recv.len() < pkts.len() && Instant::now() < deadline {
        recv.extend(b.fe.rx(0).unwrap().recv(64));
    }
    assert_eq!(recv, pkts, "{case}");
    want
}

/// Sends `pkts` from the guest, dequeues them all on `path`, then checks the log: the used
/// ring only.
fn dequeue_and_check_on(
    b: &mut Bed,
    cache: &mut PktCache,
    pkts: &[Vec<u8>],
    case: &str,
    path: Path,
) {
    let before = device_pos(&mut b.fe, 1);
    b.fe.dirty_log().unwrap().take();
    let refs: Vec<&[u8]> = pkts.iter().map(Vec::as_slice).collect();
    assert_eq!(b.fe.tx(0).unwrap().send(&refs), refs.len(), "{case}");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < pkts.len() && Instant::now() < deadline {
        match path {
            Path::Sync => dequeue_burst(&b.dev, Q0.tx(), cache, &mut out, 32),
            Path::Async => async_try_dequeue_burst(&b.dev, Q0.tx(), cache, &mut out, 32),
        };
    }
    let frames: Vec<&[u8]> = out.iter().map(|m| m.data()).collect();
    assert_eq!(frames, refs, "{case}: the frames dequeued, in order");
    assert_eq!(out.len(), pkts.len(), "{case}");
    cache.free_bulk(out);
    let after = device_pos(&mut b.fe, 1);
    let mut want = Pages::default();
    written_between(&mut b.fe, 1, before, after, &mut want);
    let got = marked(&b.fe.dirty_log().unwrap().take());
    assert_eq!(
        got, want.set,
        "{case}: marked pages (left) vs written pages (right)"
    );
    b.fe.tx(0).unwrap().reap();
}

/// `n` rounds of traffic both ways on `path`, each checked bit for bit ([`enqueue_and_check_on`],
/// [`dequeue_and_check_on`]): packets of 60 to 9000 bytes, receive chains of one buffer (with
/// mergeable buffers) or two (without: a packet may take both), posted so that some writes
/// straddle a page boundary and, with several regions and no mergeable buffers, a chain is
/// written across two regions (the whole ring is posted in order the first time, so the
/// chains are used up to the one on both sides of the first region's end); both are checked
/// to have happened.
fn rounds(
    b: &mut Bed,
    cache: &mut PktCache,
    features: u64,
    regions: usize,
    n: usize,
    case: &str,
    path: Path,
) {
    let mergeable = features & VIRTIO_NET_F_MRG_RXBUF != 0;
    let mut seen = Pages::default();
    for round in 0..n {
        let (posted, buf_len) = if mergeable { (64, BUF) } else { (128, 2 * BUF) };
        b.fe.rx(0).unwrap().post_rx(posted, buf_len);
        let pkts: Vec<Vec<u8>> = (0..24)
            .map(|i| {
                let len = match (i + round) % 6 {
                    0 => 60,
                    1 => 1000,
                    2 => 1400,
                    3 if mergeable => 9000,
                    3 => 2900,
                    4 if mergeable => 4000,
                    _ => 1514,
                };
                payload(len, round * 100 + i)
            })
            .collect();
        let w = enqueue_and_check_on(b, cache, &pkts, case, path);
        seen.straddling += w.straddling;
        seen.across_regions += w.across_regions;
        let tx: Vec<Vec<u8>> = (0..16).map(|i| payload(60 + 97 * i, i)).collect();
        dequeue_and_check_on(b, cache, &tx, case, path);
    }
    assert!(
        seen.straddling > 0,
        "{case}: no write straddled a page boundary"
    );
    if regions > 1 && !mergeable {
        assert!(
            seen.across_regions > 0,
            "{case}: no chain was written across two regions"
        );
    }
}

const MRG_CASES: [u64; 2] = [
    VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
];

/// Both directions, mergeable buffers on and off, one region and four (with holes between
/// them): the log holds exactly the pages written, bit for bit.
#[test]
fn the_log_marks_exactly_the_pages_written() {
    for features in MRG_CASES {
        for regions in [1, 4] {
            let case = format!("features {features:#x}, {regions} regions");
            let mut b = bed(features, regions);
            assert!(b.fe.features() & VHOST_F_LOG_ALL != 0, "{case}");
            let mut cache = b.pool.cache();
            rounds(&mut b, &mut cache, features, regions, 12, &case, Path::Sync);
            let vq = b.dev.lock_vring(0).unwrap();
            assert_eq!(vq.log.as_ref().map(|l| l.beyond()), Some(0), "{case}");
        }
    }
}

/// The same on packed rings: the used descriptors are marked where they are written, in the
/// descriptor ring (not at the "used ring" log address, which for a packed ring names its
/// device event area), and the receive buffers' bytes.
#[test]
fn the_log_marks_exactly_the_pages_written_on_packed_rings() {
    for features in MRG_CASES {
        for regions in [1, 4] {
            let features = features | VIRTIO_F_RING_PACKED;
            let case = format!("packed, features {features:#x}, {regions} regions");
            let mut b = bed(features, regions);
            assert!(b.fe.features() & VHOST_F_LOG_ALL != 0, "{case}");
            assert!(b.fe.features() & VIRTIO_F_RING_PACKED != 0, "{case}");
            let mut cache = b.pool.cache();
            rounds(&mut b, &mut cache, features, regions, 12, &case, Path::Sync);
            let vq = b.dev.lock_vring(0).unwrap();
            assert_eq!(vq.log.as_ref().map(|l| l.beyond()), Some(0), "{case}");
        }
    }
}

/// SET_FEATURES without LOG_ALL (QEMU's end of a cancelled migration): the log stays mapped and
/// the vrings keep `VHOST_VRING_F_LOG`, but nothing is written to it any more.
#[test]
fn without_log_all_nothing_is_written_to_the_log() {
    let mut b = bed(MRG_CASES[0], 1);
    let mut cache = b.pool.cache();
    let features = b.fe.features() & !VHOST_F_LOG_ALL;
    b.fe.endpoint()
        .unwrap()
        .set_u64(FrontendReq::SetFeatures, features)
        .unwrap();
    // A GET_FEATURES answered: the SET_FEATURES before it was handled.
    let _ = b.fe.endpoint().unwrap().get_u64(FrontendReq::GetFeatures);
    assert_eq!(b.dev.features() & VHOST_F_LOG_ALL, 0);
    for round in 0..4 {
        b.fe.rx(0).unwrap().post_rx(64, BUF);
        let pkts: Vec<Vec<u8>> = (0..32)
            .map(|i| payload(60 + 40 * i, round * 32 + i))
            .collect();
        let mbufs: Vec<Mbuf> = pkts.iter().map(|p| mbuf_of(&mut cache, p)).collect();
        assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &mbufs), mbufs.len());
        cache.free_bulk(mbufs);
        while !b.fe.rx(0).unwrap().recv(64).is_empty() {}
        let refs: Vec<Vec<u8>> = (0..16).map(|i| payload(100 + i, i)).collect();
        let refs: Vec<&[u8]> = refs.iter().map(Vec::as_slice).collect();
        b.fe.tx(0).unwrap().send(&refs);
        let mut out = Vec::new();
        dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut out, 32);
        assert_eq!(out.len(), 16);
        cache.free_bulk(out);
    }
    let log = b.fe.dirty_log().unwrap();
    assert!(
        log.peek_mapping().iter().all(|&x| x == 0),
        "the log was written"
    );
}

/// A second SET_LOG_BASE replaces the first: the first is unmapped (here the frontend drops
/// its own mapping too, so nothing of it is left in the process), and the backend marks the
/// new one.
#[test]
fn a_second_log_replaces_the_first_which_is_unmapped() {
    let mut b = bed(MRG_CASES[0], 1);
    let mut cache = b.pool.cache();
    let first = b.fe.dirty_log().unwrap().name().to_owned();
    let one = mapped_bytes_named(&first);
    assert!(
        one >= 2 * PAGE,
        "the frontend's and the backend's mapping: {one}"
    );
    b.fe.replace_dirty_log().unwrap();
    let second = b.fe.dirty_log().unwrap().name().to_owned();
    assert_ne!(first, second);
    assert_eq!(
        mapped_bytes_named(&first),
        0,
        "the first log is still mapped"
    );
    assert_eq!(fds_named(&first), 0, "the first log's fd is still open");
    assert_eq!(fds_named(&second), 2, "the frontend's and the backend's fd");
    assert!(mapped_bytes_named(&second) >= 2 * PAGE);
    b.fe.rx(0).unwrap().post_rx(64, BUF);
    let pkts: Vec<Vec<u8>> = (0..8).map(|i| payload(1000, i)).collect();
    enqueue_and_check(&mut b, &mut cache, &pkts, "after a second SET_LOG_BASE");
    // The connection's end unmaps the log too.
    drop(cache);
    let Bed { fe, dev, .. } = b;
    drop(fe);
    assert!(common::eventually(Duration::from_secs(5), || {
        mapped_bytes_named(&second) == 0 && fds_named(&second) == 0
    }));
    drop(dev);
}

/// The log replaced again and again while another thread enqueues without pause: nothing
/// crashes, every packet arrives, and once the churn stops the writes go to the last log, bit
/// for bit.
#[test]
fn the_log_changed_under_traffic() {
    let mut b = bed(MRG_CASES[0], 1);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = {
        let (dev, stop) = (b.dev.clone(), Arc::clone(&stop));
        let pool = b.pool.clone();
        std::thread::spawn(move || host(&dev, &pool, &stop))
    };
    let mut received = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut replaced = 0;
    let mut last = Instant::now();
    while Instant::now() < deadline {
        b.fe.rx(0).unwrap().post_rx(256, BUF);
        received += b.fe.rx(0).unwrap().recv(256).len();
        if last.elapsed() >= Duration::from_millis(10) {
            b.fe.replace_dirty_log().unwrap();
            replaced += 1;
            last = Instant::now();
        }
    }
    assert!(received > 0, "no traffic while the log changed");
    stop.store(true, Ordering::Relaxed);
    let sent = sent.join().unwrap();
    while received < sent {
        let n = b.fe.rx(0).unwrap().recv(256).len();
        assert!(n > 0, "{received} of {sent} packets arrived");
        received += n;
    }
    assert!(replaced >= 5, "the log was replaced only {replaced} times");
    // The last log gets what is written after the churn, exactly.
    b.fe.replace_dirty_log().unwrap();
    let mut cache = b.pool.cache();
    b.fe.rx(0).unwrap().post_rx(64, BUF);
    let pkts: Vec<Vec<u8>> = (0..16).map(|i| payload(200 * i + 60, i)).collect();
    enqueue_and_check(&mut b, &mut cache, &pkts, "after the churn");
}

/// Enqueues 64-byte packets until told to stop; returns how many went.
fn host(dev: &Device, pool: &rvhost::mbuf::PktPool, stop: &AtomicBool) -> usize {
    let mut cache = pool.cache();
    let mbufs: Vec<Mbuf> = (0..32)
        .map(|i| mbuf_of(&mut cache, &payload(64, i)))
        .collect();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        sent += enqueue_burst(dev, Q0.rx(), &mbufs[..8]);
    }
    cache.free_bulk(mbufs);
    sent
}

/// A log smaller than the guest memory (its first 32 KiB): accepted (with a warning), the
/// pages it holds are marked, the rest counted, and nothing is written beyond it.
#[test]
fn a_log_smaller_than_guest_memory_is_never_written_beyond() {
    let mut b = bed(MRG_CASES[0], 1);
    let mut cache = b.pool.cache();
    let small = DirtyLogArea::new(8 * PAGE).unwrap();
    assert_eq!(small.len(), 1);
    small.send(b.fe.endpoint().unwrap()).unwrap();
    b.fe.rx(0).unwrap().post_rx(64, BUF);
    let pkts: Vec<Vec<u8>> = (0..32).map(|i| payload(1514, i)).collect();
    let mbufs: Vec<Mbuf> = pkts.iter().map(|p| mbuf_of(&mut cache, p)).collect();
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &mbufs), 32);
    cache.free_bulk(mbufs);
    let mut got = Vec::new();
    while got.len() < 32 {
        got.extend(b.fe.rx(0).unwrap().recv(64));
    }
    assert_eq!(got, pkts);
    let bytes = small.peek_mapping();
    assert!(bytes.len() >= PAGE as usize);
    assert!(
        bytes[1..].iter().all(|&x| x == 0),
        "written beyond the log's byte"
    );
    // The used ring is in the first 32 KiB: its page is marked.
    let used = b.fe.ring_info(0).unwrap().used.gpa.raw();
    assert!(used < 8 * PAGE);
    assert!(bytes[0] & (1 << (used / PAGE)) != 0);
    let beyond = b.dev.lock_vring(0).unwrap().log.as_ref().unwrap().beyond();
    assert!(beyond > 0, "buffers beyond the log were not counted");
}

/// The async path logs too: with async channels on both queues of a socket registered with
/// `ASYNC_COPY` (which offers LOG_ALL as any other), a software copy engine whose lanes finish
/// out of order, and a threshold that makes most payloads jobs, the log holds exactly the
/// pages written, both directions, mergeable buffers on and off, one region and four.
#[test]
fn the_async_path_marks_exactly_the_pages_written() {
    for features in MRG_CASES
        .iter()
        .flat_map(|&f| [f, f | VIRTIO_F_RING_PACKED])
    {
        for regions in [1, 4] {
            let case = format!("async, features {features:#x}, {regions} regions");
            let packed = features & VIRTIO_F_RING_PACKED != 0;
            let opts = FrontendOptions {
                packed,
                ..opts(features, regions)
            };
            let mut b = Bed::on_ring(
                "dlog-async",
                Flags::ASYNC_COPY,
                opts,
                "dlog-async",
                4096,
                64,
            );
            assert_eq!(
                b.fe.features() & VIRTIO_F_RING_PACKED != 0,
                packed,
                "{case}: ring layout"
            );
            assert!(
                b.fe.features() & VHOST_F_LOG_ALL != 0,
                "{case}: LOG_ALL offered"
            );
            let config = AsyncConfig {
                threshold: 128,
                ..AsyncConfig::default()
            };
            let (ops, rx_worker) = common::dma::copy_device(3, 50 << 20, Default::default());
            async_channel_register(&b.dev, Q0.rx(), config, ops).unwrap();
            let (ops, tx_worker) = common::dma::copy_device(2, 0, Default::default());
            async_channel_register(&b.dev, Q0.tx(), config, ops).unwrap();
            let mut cache = b.pool.cache();
            rounds(&mut b, &mut cache, features, regions, 8, &case, Path::Async);
            let stats = rvhost::net::async_stats(&b.dev, Q0.rx()).unwrap();
            assert!(stats.dma_copies > 0, "{case}: no copy went to the engine");
            drop(cache);
            drop(b);
            drop((rx_worker, tx_worker));
        }
    }
}

/// A page the copy engine writes is marked once the job is done, not at submit: QEMU may
/// read and clear the log in between, copy the page, and never see the late write. With a
/// slow engine (one lane at 2 KB/s) one 1400-byte packet stays in flight ~0.7 s: meanwhile
/// nothing is marked (no used entry is written either); after the poll that retires it, its
/// buffer and the used ring are.
#[test]
fn the_async_path_marks_a_page_after_its_copy() {
    let mut b = Bed::new(
        "dlog-async-late",
        Flags::ASYNC_COPY,
        opts(MRG_CASES[0], 1),
        "dlog-async-late",
        1024,
        64,
    );
    let config = AsyncConfig {
        threshold: 128,
        ..AsyncConfig::default()
    };
    let (ops, worker) = common::dma::copy_device(1, 2_000, Default::default());
    async_channel_register(&b.dev, Q0.rx(), config, ops).unwrap();
    let mut cache = b.pool.cache();
    b.fe.rx(0).unwrap().post_rx(8, BUF);
    let before = used_idx(&mut b.fe, 0);
    b.fe.dirty_log().unwrap().take();
    let pkt = payload(1400, 7);
    let mut mbufs = vec![mbuf_of(&mut cache, &pkt)];
    assert_eq!(submit_enqueue_burst(&b.dev, Q0.rx(), &mut mbufs), 1);
    let mut back = Vec::new();
    poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
    assert!(back.is_empty(), "the slow engine finished at once");
    let early = marked(&b.fe.dirty_log().unwrap().take());
    assert!(
        early.is_empty(),
        "pages marked while their copy was in flight: {early:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while back.is_empty() && Instant::now() < deadline {
        poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
    }
    assert_eq!(back.len(), 1, "the packet came back");
    let after = used_idx(&mut b.fe, 0);
    assert_eq!(after, before.wrapping_add(1));
    let mut want = Pages::default();
    written(&b.fe, 0, before, after, &mut want);
    rx_written(&mut b.fe, before, after, &mut want);
    assert_eq!(marked(&b.fe.dirty_log().unwrap().take()), want.set);
    assert_eq!(b.fe.rx(0).unwrap().recv(8), vec![pkt]);
    cache.free_bulk(back);
    drop(cache);
    drop(b);
    drop(worker);
}
