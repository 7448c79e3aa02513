//! A hostile guest against the data path: the Rust frontend writes raw descriptors and ring
//! indexes into its shared memory, and `dequeue_burst` / `enqueue_burst` must drop and count
//! every malformed chain (returned with length 0), mark the queue broken for a corrupt
//! available ring, never panic, and never touch memory outside the mapped regions. Valid but
//! unusual layouts (a header split across descriptors, a buffer spanning two regions) must
//! deliver the packet intact.

mod common;

use common::Bed;
use common::pkt::packet_bytes;
use rvhost::driver::Flags;
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use rvhost::frontend::FrontendOptions;
use rvhost::net::{QueuePair, enqueue_burst};

const Q0: QueuePair = QueuePair(0);

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
fn more_buffers_than_a_packet_may_use() {
    // 200 buffers of 64 B: a valid chain, but over the 128 buffers one packet may take.
    dropped(|b| {
        for i in 0..200u16 {
            let next = if i < 199 { NEXT } else { 0 };
            b.desc(1, i, b.gpa(SCRATCH + 64 * usize::from(i)), 64, next, i + 1);
        }
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
    assert_eq!(packet_bytes(&got[0]), &pkt[12..]);
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
    assert_eq!(packet_bytes(&got[0]), data);
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
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), std::slice::from_ref(&m)), 1);
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

/// One receive-side scenario on both paths: a 100-byte packet offered to the chains `heads`
/// set up by `setup`, through `enqueue_burst` and through the async path (`submit` + `poll`,
/// every copy on the copy device). Both must leave the same used entries and counters, and
/// the async path must hand the mbuf back exactly once.
fn rx_both(
    what: &str,
    setup: impl Fn(&Bed),
    heads: &[u16],
    used: &[(u32, u32)],
    counts: (u64, u64, bool),
) {
    use rvhost::net::{
        AsyncConfig, DmaCopy, async_channel_register, poll_enqueue_completed, submit_enqueue_burst,
    };
    use rvhost_dma::{ChannelConfig, CpuEngine};
    for asynch in [false, true] {
        let ctx = format!("{what}, {}", if asynch { "async" } else { "sync" });
        let opts = FrontendOptions {
            features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
            mem_size: MEM,
            force_small_pages: true,
            ..FrontendOptions::default()
        };
        let flags = if asynch {
            Flags::ASYNC_COPY
        } else {
            Flags::empty()
        };
        let b = Bed::new("dph-rx", flags, opts, "dph-rx", 1024, 32);
        let mut cache = b.pool.cache();
        let mut m = cache.alloc().unwrap();
        m.append(100).unwrap();
        m.data_mut().unwrap().fill(0x5a);
        setup(&b);
        b.avail(0, heads);
        if asynch {
            let engine = CpuEngine::new(&ChannelConfig::new(64)).unwrap();
            let cfg = AsyncConfig {
                threshold: 0,
                ..AsyncConfig::default()
            };
            async_channel_register(&b.dev, Q0.rx(), cfg, Box::new(DmaCopy::new(engine))).unwrap();
            let mut pkts = vec![m];
            let taken = submit_enqueue_burst(&b.dev, Q0.rx(), &mut pkts);
            let mut back = Vec::new();
            poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 32);
            assert_eq!(taken + pkts.len(), 1, "{ctx}");
            assert_eq!(back.len(), taken, "{ctx}: every taken mbuf back once");
            cache.free_bulk(back);
            cache.free_bulk(pkts);
        } else {
            enqueue_burst(&b.dev, Q0.rx(), std::slice::from_ref(&m));
            cache.free(m);
        }
        let (idx, elems) = b.used(0, used.len());
        assert_eq!(usize::from(idx), used.len(), "{ctx}: used.idx");
        assert_eq!(elems, used, "{ctx}: used entries");
        assert_eq!(b.stats(0), counts, "{ctx}: (packets, bad chains, broken)");
        drop(cache);
        assert_eq!(b.pool.in_use(), 0, "{ctx}: no mbuf leaked");
    }
}

/// Receive chains a guest made malformed, on both paths: each is returned empty and counted
/// in its place in the order, and the packet goes into the next good chain.
#[test]
fn malformed_receive_chains_on_both_paths() {
    let buf = |b: &Bed, k: usize| b.gpa(SCRATCH + 4096 * k);
    // A loop, then a good chain.
    rx_both(
        "descriptor loop",
        |b| {
            b.desc(0, 0, buf(b, 0), 64, WRITE | NEXT, 1);
            b.desc(0, 1, buf(b, 0), 64, WRITE | NEXT, 0);
            b.desc(0, 2, buf(b, 1), 2048, WRITE, 0);
        },
        &[0, 2],
        &[(0, 0), (2, 112)],
        (1, 1, false),
    );
    // An address outside every region, then a good chain.
    rx_both(
        "address outside the regions",
        |b| {
            b.desc(0, 0, 1 << 46, 2048, WRITE, 0);
            b.desc(0, 1, buf(b, 1), 2048, WRITE, 0);
        },
        &[0, 1],
        &[(0, 0), (1, 112)],
        (1, 1, false),
    );
    // One buffer that runs past the end of guest memory, though the packet would fit in its
    // mapped part (the one-descriptor fast path translated only what it needed; found by
    // fuzz/split_datapath), then a good chain.
    rx_both(
        "a buffer running past the end of guest memory",
        |b| {
            b.desc(0, 0, b.gpa(MEM - 1024), 4096, WRITE, 0);
            b.desc(0, 1, buf(b, 1), 2048, WRITE, 0);
        },
        &[0, 1],
        &[(0, 0), (1, 112)],
        (1, 1, false),
    );
    // An indirect table inside an indirect table, then a good chain.
    rx_both(
        "nested indirect",
        |b| {
            let table = SCRATCH + 8192;
            b.desc_at(table, b.gpa(table), 16, INDIRECT, 0);
            b.desc(0, 0, b.gpa(table), 16, INDIRECT, 0);
            b.desc(0, 1, buf(b, 4), 2048, WRITE, 0);
        },
        &[0, 1],
        &[(0, 0), (1, 112)],
        (1, 1, false),
    );
    // A chain the device may not write (no WRITE): skipped the same way.
    rx_both(
        "read-only receive chain",
        |b| {
            b.desc(0, 0, buf(b, 0), 2048, 0, 0);
            b.desc(0, 1, buf(b, 1), 2048, WRITE, 0);
        },
        &[0, 1],
        &[(0, 0), (1, 112)],
        (1, 1, false),
    );
    // 200 one-byte buffers: the packet uses the first 112 (under the 128 a packet may use),
    // the rest is only checked: delivered.
    rx_both(
        "a long chain of one-byte buffers",
        |b| {
            for i in 0..200u16 {
                let next = if i < 199 { WRITE | NEXT } else { WRITE };
                b.desc(0, i, buf(b, 0) + u64::from(i), 1, next, i + 1);
            }
        },
        &[0],
        &[(0, 112)],
        (1, 0, false),
    );
    // A head beyond the table: the queue is broken, nothing is taken or written.
    rx_both("head beyond the table", |_| {}, &[999], &[], (0, 0, true));
}
