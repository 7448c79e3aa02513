//! The data path over a real socket and real shared memory: the Rust frontend plays the guest
//! driver, `enqueue_burst` / `dequeue_burst` run on the backend's device. Each case runs on
//! split and packed rings, with mergeable buffers on and off, and with the transmit header in
//! its own descriptor or inline.

mod common;

use std::time::{Duration, Instant};

use common::pkt::{mbuf_of, packet_bytes, payload};
use common::{Bed, Watchdog};
use rvhost::driver::Flags;
use rvhost::features::{
    VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
};
use rvhost::frontend::{FrontendOptions, TxLayout};
use rvhost::mbuf::{Mbuf, PktCache};
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};

const Q0: QueuePair = QueuePair(0);

/// Bound on one case of `host_to_guest_with_a_concurrent_guest` (100 000 packets; measured: about
/// 8 s in a debug build on two CPUs shared with the other tests of this file).
const CONCURRENT_CASE_BOUND: Duration = Duration::from_secs(120);

/// A bed for `features`; with `VIRTIO_F_RING_PACKED` among them, on packed rings (the driver
/// offers them, the frontend drives them).
fn bed(features: u64, layout: TxLayout, flags: Flags) -> Bed {
    let packed = features & VIRTIO_F_RING_PACKED != 0;
    let opts = FrontendOptions {
        features,
        tx_layout: layout,
        mem_size: 32 << 20,
        force_small_pages: true,
        packed,
        ..FrontendOptions::default()
    };
    Bed::on_ring("dp", flags, opts, "dp-test", 4096, 64)
}

const P: u64 = VIRTIO_F_RING_PACKED;

const CASES: [(u64, TxLayout); 8] = [
    (
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX,
        TxLayout::Inline,
    ),
    (
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
        TxLayout::Separate,
    ),
    (
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        TxLayout::Inline,
    ),
    (0, TxLayout::Separate),
    (
        P | VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX,
        TxLayout::Inline,
    ),
    (
        P | VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
        TxLayout::Separate,
    ),
    (
        P | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        TxLayout::Inline,
    ),
    (P | VIRTIO_F_VERSION_1, TxLayout::Separate),
];

/// Dequeues until `n` packets arrived or a second passes.
fn dequeue_n(b: &Bed, cache: &mut PktCache, n: usize) -> Vec<Mbuf> {
    let mut out = Vec::with_capacity(n + 32);
    let deadline = Instant::now() + Duration::from_secs(2);
    while out.len() < n && Instant::now() < deadline {
        dequeue_burst(&b.dev, Q0.tx(), cache, &mut out, 32);
    }
    out
}

/// A guest that polls its split transmit ring (no `EVENT_IDX`, `NO_INTERRUPT` set: this
/// frontend's default, and DPDK's virtio PMD) gets its last `min(32, size / 4)` buffers back
/// when the next chains come, or on the first poll ~10 µs after the last one, and all of them
/// before the ring stops; a guest that negotiated `EVENT_IDX` or wants interrupts gets every
/// buffer back at the end of each burst.
#[test]
fn transmit_buffers_held_back_from_a_polling_guest() {
    let one = [0u8; 60];
    let send = |b: &mut Bed, n: usize| {
        let refs = vec![&one[..]; n];
        assert_eq!(b.fe.tx(0).unwrap().send(&refs), n);
    };
    for (features, interrupts, size, held) in [
        (VIRTIO_F_VERSION_1, false, 256u16, 32u16),
        (VIRTIO_F_VERSION_1, false, 64, 16),
        (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX, false, 256, 0),
        (VIRTIO_F_VERSION_1, true, 256, 0),
    ] {
        let opts = FrontendOptions {
            features,
            interrupts,
            queue_size: size,
            mem_size: 32 << 20,
            force_small_pages: true,
            ..FrontendOptions::default()
        };
        let mut b = Bed::new("dpheld", Flags::empty(), opts, "dpheld-test", 4096, 64);
        let mut cache = b.pool.cache();
        let case = format!("features {features:#x} interrupts {interrupts} size {size}");
        send(&mut b, 40);
        let got = dequeue_n(&b, &mut cache, 40);
        assert_eq!(got.len(), 40, "{case}");
        cache.free_bulk(got);
        assert_eq!(b.published(1), 40 - held, "{case}: the last ones held");
        // More chains: the held ones go, the newest are held.
        send(&mut b, 10);
        let got = dequeue_n(&b, &mut cache, 10);
        assert_eq!(got.len(), 10, "{case}");
        cache.free_bulk(got);
        assert_eq!(
            b.published(1),
            50 - held,
            "{case}: the next burst publishes them"
        );
        // A poll right after finds nothing and keeps them; one ~10 µs later lets them go.
        assert!(b.dequeue(&mut cache).is_empty());
        if held != 0 {
            assert!(b.published(1) < 50, "{case}: a poll at once keeps them");
        }
        std::thread::sleep(Duration::from_millis(1));
        assert!(b.dequeue(&mut cache).is_empty());
        assert_eq!(b.published(1), 50, "{case}: a later poll publishes them");
        // The ring stops (the frontend goes away: the device resets its vrings) with none held.
        send(&mut b, 40);
        let got = dequeue_n(&b, &mut cache, 40);
        assert_eq!(got.len(), 40, "{case}");
        cache.free_bulk(got);
        assert_eq!(b.published(1), 90 - held, "{case}");
        let used = b.fe.ring_info(1).unwrap().used.offset + 2;
        let shm = std::sync::Arc::clone(b.fe.shm());
        b.fe.disconnect();
        assert!(
            common::eventually(Duration::from_secs(5), || {
                shm.slice()
                    .load_u16(used, std::sync::atomic::Ordering::Acquire)
                    .unwrap()
                    == 90
            }),
            "{case}: published when the device stopped"
        );
        drop(cache);
        assert_eq!(b.pool.in_use(), 0, "{case}: no mbuf leaked");
    }
}

#[test]
fn guest_to_host_payloads_arrive_intact() {
    for (features, layout) in CASES {
        let mut b = bed(features, layout, Flags::empty());
        let mut cache = b.pool.cache();
        let sizes = [60usize, 64, 128, 1000, 1514, 2000, 4000, 9000];
        let pkts: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| payload(n, i))
            .collect();
        let refs: Vec<&[u8]> = pkts.iter().map(Vec::as_slice).collect();
        let tx = b.fe.tx(0).unwrap();
        assert_eq!(tx.send(&refs), refs.len());
        let got = dequeue_n(&b, &mut cache, pkts.len());
        assert_eq!(got.len(), pkts.len(), "features {features:#x}");
        for (m, want) in got.iter().zip(&pkts) {
            assert_eq!(m.pkt_len(), want.len());
            assert_eq!(
                &packet_bytes(m),
                want,
                "features {features:#x} len {}",
                want.len()
            );
        }
        // The guest got its buffers back (the last ones once the device let them go).
        b.release_tx();
        let tx = b.fe.tx(0).unwrap();
        assert!(common::eventually(Duration::from_secs(1), || {
            tx.reap();
            tx.in_flight() == 0
        }));
        let vq = b.dev.lock_vring(1).unwrap();
        assert_eq!(vq.stats.packets, pkts.len() as u64);
        assert_eq!(vq.stats.bad_chains, 0);
        drop(vq);
        cache.free_bulk(got);
        drop(cache);
        assert_eq!(b.pool.in_use(), 0);
    }
}

/// A packed dequeue that finds more than 4 slots available takes them up to the last whole
/// line of 4 (the driver may still be writing the rest of a line); the rest goes with the next
/// burst, whole when 4 or fewer: nothing stays behind, and the order holds.
#[test]
fn packed_dequeue_bursts_end_at_a_line() {
    let mut b = bed(P | VIRTIO_F_VERSION_1, TxLayout::Inline, Flags::empty());
    let mut cache = b.pool.cache();
    let pkts: Vec<Vec<u8>> = (0..17).map(|i| payload(64, i)).collect();
    let refs: Vec<&[u8]> = pkts.iter().map(Vec::as_slice).collect();
    let mut got = Vec::new();
    let tx = b.fe.tx(0).unwrap();
    // Slots 0-6: 0-3, then 4-6.
    assert_eq!(tx.send(&refs[..7]), 7);
    assert_eq!(dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32), 4);
    assert_eq!(dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32), 3);
    // Slots 7-16, bursts of at most 6: 7-12 would end inside the line 12-15, so 7-11; then
    // 12-16 would end inside the line from 16, so 12-15; then 16 alone.
    let tx = b.fe.tx(0).unwrap();
    assert_eq!(tx.send(&refs[7..]), 10);
    assert_eq!(dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 6), 5);
    assert_eq!(dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32), 4);
    assert_eq!(dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32), 1);
    assert_eq!(dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32), 0);
    assert_eq!(got.len(), pkts.len());
    for (m, want) in got.iter().zip(&pkts) {
        assert_eq!(&packet_bytes(m), want);
    }
    cache.free_bulk(got);
}

#[test]
fn host_to_guest_payloads_arrive_intact() {
    for (features, layout) in CASES {
        let mut b = bed(features, layout, Flags::empty());
        let mut cache = b.pool.cache();
        let mergeable = features & VIRTIO_NET_F_MRG_RXBUF != 0;
        // Without mergeable buffers every packet must fit one posted chain.
        let sizes: &[usize] = if mergeable {
            &[60, 64, 1514, 3000, 9000]
        } else {
            &[60, 64, 1000, 1514]
        };
        let pkts: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| payload(n, i))
            .collect();
        let mbufs: Vec<Mbuf> = pkts.iter().map(|p| mbuf_of(&mut cache, p)).collect();
        let rx = b.fe.rx(0).unwrap();
        rx.post_rx(128, if mergeable { 1536 } else { 1600 });
        assert_eq!(
            enqueue_burst(&b.dev, Q0.rx(), &mbufs),
            mbufs.len(),
            "features {features:#x}"
        );
        let mut got = Vec::new();
        let rx = b.fe.rx(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < pkts.len() && Instant::now() < deadline {
            got.extend(rx.recv(32));
        }
        assert_eq!(got.len(), pkts.len());
        for (g, want) in got.iter().zip(&pkts) {
            assert_eq!(g, want, "features {features:#x}");
        }
        cache.free_bulk(mbufs);
    }
}

/// Mergeable bursts of jumbo frames: each packet takes 6 buffers, so one burst makes more
/// used entries (96) than the burst keeps in its shadow (64) before writing them out, and
/// over the rounds the ring (256) wraps inside a burst. Every packet arrives intact. On a
/// packed ring: 96 used descriptors in one batch, across the ring's end.
#[test]
fn host_to_guest_jumbo_bursts_overflow_the_used_shadow() {
    for packed in [0, P] {
        jumbo_bursts(packed | VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF);
    }
}

fn jumbo_bursts(features: u64) {
    let mut b = bed(features, TxLayout::Inline, Flags::empty());
    let mut cache = b.pool.cache();
    let mut received = 0usize;
    for round in 0..6 {
        let pkts: Vec<Vec<u8>> = (0..16).map(|i| payload(9000, round * 16 + i)).collect();
        let mbufs: Vec<Mbuf> = pkts.iter().map(|p| mbuf_of(&mut cache, p)).collect();
        let rx = b.fe.rx(0).unwrap();
        rx.post_rx(256, 1536);
        assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &mbufs), 16, "round {round}");
        cache.free_bulk(mbufs);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < pkts.len() && Instant::now() < deadline {
            got.extend(b.fe.rx(0).unwrap().recv(32));
        }
        assert_eq!(got.len(), pkts.len(), "round {round}");
        let bad = got.iter().zip(&pkts).position(|(g, p)| g != p);
        assert_eq!(bad, None, "round {round}: first packet that differs");
        received += got.len();
    }
    assert_eq!(received, 96);
    let s = b.dev.lock_vring(0).unwrap().stats;
    assert_eq!((s.packets, s.bad_chains), (96, 0));
}

/// Bursts longer than the enqueue's look-ahead, mixing packets that take one chain with
/// packets that take several (mergeable) and with packets the guest has no room for yet:
/// every packet arrives once, in order, byte for byte; what did not fit goes in a later call.
#[test]
fn host_to_guest_mixed_bursts_arrive_in_order() {
    for (features, layout) in CASES {
        let mut b = bed(features, layout, Flags::empty());
        let mut cache = b.pool.cache();
        let mergeable = features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let pkts: Vec<Vec<u8>> = (0..300)
            .map(|i| {
                let len = match i % 7 {
                    2 if mergeable => 3000,
                    5 => 1514,
                    6 if mergeable => 9000,
                    _ => 60 + i % 5,
                };
                payload(len, i)
            })
            .collect();
        let buf_len = if mergeable { 1536 } else { 1600 };
        let mut next = 0;
        let mut got = Vec::new();
        let mut rounds = 0;
        while got.len() < pkts.len() {
            rounds += 1;
            assert!(
                rounds < 10_000,
                "features {features:#x}: stuck at {}",
                got.len()
            );
            // A few buffers at a time, so bursts often stop part way.
            b.fe.rx(0).unwrap().post_rx(5 + rounds % 11, buf_len);
            let end = (next + 40).min(pkts.len());
            let mbufs: Vec<Mbuf> = pkts[next..end]
                .iter()
                .map(|p| mbuf_of(&mut cache, p))
                .collect();
            next += enqueue_burst(&b.dev, Q0.rx(), &mbufs);
            cache.free_bulk(mbufs);
            got.extend(b.fe.rx(0).unwrap().recv(64));
        }
        assert_eq!(got.len(), pkts.len(), "features {features:#x}");
        for (i, (g, want)) in got.iter().zip(&pkts).enumerate() {
            assert_eq!(g, want, "features {features:#x}: packet {i}");
        }
        drop(cache);
        assert_eq!(b.pool.in_use(), 0);
    }
}

/// With every receive buffer posted, enqueue publishes its first packets early (before the
/// burst ends): after the burst the guest has every packet once, in order, burst after burst.
/// (Single-threaded, this sees only the final index; see
/// `host_to_guest_with_a_concurrent_guest`.)
#[test]
fn host_to_guest_with_the_whole_ring_posted() {
    for (features, layout) in CASES {
        let mut b = bed(features, layout, Flags::empty());
        let mut cache = b.pool.cache();
        let mut next = 0usize;
        let mut received = 0usize;
        for _ in 0..40 {
            // Fill the ring (256 buffers): the next burst sees every buffer posted.
            b.fe.rx(0).unwrap().post_rx(1 << 16, 1536);
            let mbufs: Vec<Mbuf> = (next..next + 32)
                .map(|i| mbuf_of(&mut cache, &payload(60 + i % 40, i)))
                .collect();
            assert_eq!(
                enqueue_burst(&b.dev, Q0.rx(), &mbufs),
                32,
                "features {features:#x}"
            );
            next += 32;
            cache.free_bulk(mbufs);
            b.fe.rx(0).unwrap().poll_rx(64, |p| {
                assert_eq!(
                    p.data,
                    payload(60 + received % 40, received).as_slice(),
                    "features {features:#x}: packet {received}"
                );
                received += 1;
            });
            assert_eq!(received, next, "features {features:#x}");
        }
        drop(cache);
        assert_eq!(b.pool.in_use(), 0);
    }
}

/// A guest on its own thread reads the used ring while bursts are written. Before each burst
/// the host waits until the guest has taken every packet and posted its buffers again, so
/// that every burst finds the whole ring posted and publishes its first packets early; the
/// guest polls `used.idx` meanwhile and sees the early index. Every packet must arrive once,
/// in order, with every byte (a used index published before its entries, or an entry before
/// its buffer, shows up here as a wrong payload: publishing two entries too many early was
/// caught in 5 of 6 runs, debug and release; the window is a few hundred nanoseconds).
///
/// A fault here can hang rather than fail (a call that never returns, on either side, or a
/// guest the host waits for in `join`): each case runs under a [`Watchdog`] of
/// [`CONCURRENT_CASE_BOUND`].
#[test]
fn host_to_guest_with_a_concurrent_guest() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const PACKETS: usize = 100_000;
    for (features, layout) in CASES {
        // Packets the host enqueued, and the guest received and posted buffers for again.
        let sent = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let _watchdog = {
            let (sent, done) = (Arc::clone(&sent), Arc::clone(&done));
            Watchdog::arm(
                format!("host_to_guest_with_a_concurrent_guest, features {features:#x}"),
                CONCURRENT_CASE_BOUND,
                move || {
                    format!(
                        "{}/{PACKETS} packets sent, the guest has {}",
                        sent.load(Ordering::Relaxed),
                        done.load(Ordering::Relaxed)
                    )
                },
            )
        };
        let b = bed(features, layout, Flags::empty());
        let Bed { fe, dev, pool, .. } = b;
        let mut fe = fe;
        let guest_done = Arc::clone(&done);
        let guest = std::thread::spawn(move || {
            let mut received = 0usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            while received < PACKETS {
                assert!(Instant::now() < deadline, "{received}/{PACKETS} received");
                let rx = fe.rx(0).unwrap();
                rx.post_rx(1 << 16, 1536);
                guest_done.store(received, Ordering::Release);
                rx.poll_rx(64, |p| {
                    assert_eq!(
                        p.data,
                        payload(60 + received % 40, received).as_slice(),
                        "packet {received}"
                    );
                    received += 1;
                });
            }
            fe
        });
        let mut cache = pool.cache();
        let mut next = 0usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while next < PACKETS {
            assert!(
                Instant::now() < deadline && !guest.is_finished(),
                "features {features:#x}: {next}/{PACKETS} sent, the guest has {}",
                done.load(Ordering::Relaxed)
            );
            if done.load(Ordering::Acquire) < next {
                std::hint::spin_loop();
                continue;
            }
            let end = (next + 32).min(PACKETS);
            let mbufs: Vec<Mbuf> = (next..end)
                .map(|i| mbuf_of(&mut cache, &payload(60 + i % 40, i)))
                .collect();
            next += enqueue_burst(&dev, Q0.rx(), &mbufs);
            sent.store(next, Ordering::Relaxed);
            cache.free_bulk(mbufs);
        }
        let fe = guest
            .join()
            .unwrap_or_else(|_| panic!("features {features:#x}: the guest failed"));
        drop((cache, fe));
        assert_eq!(pool.in_use(), 0, "features {features:#x}");
    }
}

#[test]
fn enqueue_stops_when_the_guest_has_no_buffers() {
    let mut b = bed(CASES[0].0, TxLayout::Inline, Flags::empty());
    let mut cache = b.pool.cache();
    let mbufs: Vec<Mbuf> = (0..8)
        .map(|i| mbuf_of(&mut cache, &payload(100, i)))
        .collect();
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &mbufs), 0, "nothing posted");
    b.fe.rx(0).unwrap().post_rx(3, 1536);
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &mbufs), 3);
    assert_eq!(b.fe.rx(0).unwrap().recv(8).len(), 3);
    cache.free_bulk(mbufs);
}

#[test]
fn linearbuf_drops_and_extbuf_attaches_large_packets() {
    for flags in [Flags::LINEARBUF, Flags::EXTBUF] {
        let mut b = bed(CASES[0].0, TxLayout::Inline, flags);
        let mut cache = b.pool.cache();
        let big = payload(9000, 1);
        let small = payload(100, 2);
        b.fe.tx(0).unwrap().send(&[&big, &small]);
        let got = dequeue_n(
            &b,
            &mut cache,
            if flags == Flags::LINEARBUF { 1 } else { 2 },
        );
        let vq = b.dev.lock_vring(1).unwrap();
        if flags == Flags::LINEARBUF {
            assert_eq!(got.len(), 1);
            assert_eq!(packet_bytes(&got[0]), small);
            assert_eq!(vq.stats.too_large, 1);
        } else {
            assert_eq!(got.len(), 2);
            assert!(got[0].has_extbuf());
            assert_eq!(got[0].nb_segs(), 1);
            assert_eq!(packet_bytes(&got[0]), big);
            assert_eq!(packet_bytes(&got[1]), small);
        }
        drop(vq);
        cache.free_bulk(got);
    }
}

/// On split rings the 16-bit indexes wrap; on packed rings the wrap counters flip some 270
/// times.
#[test]
fn loopback_many_bursts_with_wrapping_indexes() {
    for features in [CASES[0].0, P | CASES[0].0] {
        loopback_wrapping(features);
    }
}

fn loopback_wrapping(features: u64) {
    let mut b = bed(features, TxLayout::Inline, Flags::empty());
    let mut cache = b.pool.cache();
    let mut sent = 0usize;
    let mut received = 0usize;
    let mut burst = Vec::with_capacity(64);
    // 256-entry rings: 20k packets wrap the 16-bit indexes.
    while received < 70_000 {
        let rx = b.fe.rx(0).unwrap();
        rx.post_rx(64, 1536);
        let tx = b.fe.tx(0).unwrap();
        tx.reap();
        if sent - received < 128 {
            let p = payload(64 + sent % 100, sent);
            if tx.send(&[&p]) == 1 {
                sent += 1;
            }
        }
        dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut burst, 32);
        let n = enqueue_burst(&b.dev, Q0.rx(), &burst);
        cache.free_bulk(burst.drain(..n));
        let rx = b.fe.rx(0).unwrap();
        rx.poll_rx(64, |p| {
            assert_eq!(p.data, payload(64 + received % 100, received).as_slice());
            received += 1;
        });
    }
    cache.free_bulk(burst);
}
