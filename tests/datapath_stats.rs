//! What an application can see of its queues: typed queue ids that keep a burst off the
//! wrong vring, lock-free per-vring counters that say why a burst returned 0, and data-path
//! logs that a hostile guest cannot flood. Over a real socket with the Rust frontend; the
//! hostile guest writes its rings by hand (`common::raw`).

mod common;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Bed;
use common::pkt::mbuf_of;
use rvhost::driver::Flags;
use rvhost::frontend::FrontendOptions;
use rvhost::net::{QueueIdError, QueuePair, RxQueueId, TxQueueId, dequeue_burst, enqueue_burst};
use rvhost::ratelimit::LogLimiter;
use rvhost::virtq::stats::VringStats;

const NEXT: u16 = 1;
const MEM: usize = 32 << 20;
/// Scratch space at the end of the shared memory, past everything the frontend placed.
const SCRATCH: usize = MEM - (2 << 20);

/// Counts the data path's "descriptor chain ... dropped" lines, and prints every line.
struct Counting;

static BAD_CHAIN_LINES: AtomicUsize = AtomicUsize::new(0);

impl log::Log for Counting {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let text = r.args().to_string();
        if text.starts_with("descriptor chain") {
            BAD_CHAIN_LINES.fetch_add(1, Ordering::Relaxed);
        }
        eprintln!("{} {}: {text}", r.level(), r.target());
    }
    fn flush(&self) {}
}

/// Installs the counting logger before any test of this file logs (the test bed's
/// env_logger then finds a logger in place and stays out).
fn counting_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Counting).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

fn bed() -> Bed {
    counting_logger();
    let opts = FrontendOptions {
        mem_size: MEM,
        force_small_pages: true,
        ..FrontendOptions::default()
    };
    Bed::new("dpstats", Flags::empty(), opts, "dpstats", 1024, 32)
}

#[test]
fn a_raw_vring_index_of_the_wrong_kind_is_refused() {
    // The typed ids make a swapped pair a compile error (see rvhost::net::queue_id); a raw
    // index, as `vring_state_changed` reports it, is checked on the way in.
    assert_eq!(TxQueueId::from_vring(0), Err(QueueIdError::NotTransmit(0)));
    assert_eq!(RxQueueId::from_vring(1), Err(QueueIdError::NotReceive(1)));
    assert_eq!(TxQueueId::from_vring(1), Ok(QueuePair(0).tx()));
    assert_eq!(RxQueueId::from_vring(6), Ok(QueuePair(3).rx()));
}

#[test]
fn a_queue_the_device_lacks_or_has_not_set_up_touches_nothing() {
    let mut b = bed();
    let mut cache = b.pool.cache();
    // The guest posts receive buffers and sends two packets on queue pair 0.
    let posted = b.fe.rx(0).unwrap().post_rx(64, 2048);
    assert!(posted > 0);
    assert_eq!(b.fe.tx(0).unwrap().send(&[&[1u8; 60], &[2u8; 60]]), 2);
    let rings_before = (b.used(0, 0).0, b.used(1, 0).0);
    let pkts = vec![mbuf_of(&mut cache, &[0x42; 60])];

    // A queue pair beyond the device's vrings: 0, counted on the device.
    let beyond = QueuePair(u16::try_from(b.dev.max_vrings() / 2).unwrap());
    let mut out = Vec::new();
    assert_eq!(
        dequeue_burst(&b.dev, beyond.tx(), &mut cache, &mut out, 32),
        0
    );
    assert_eq!(enqueue_burst(&b.dev, beyond.rx(), &pkts), 0);
    assert_eq!(b.dev.bad_queue_ids(), 2);
    // A queue pair the device has but the frontend did not set up: 0, counted on the vring.
    assert_eq!(
        dequeue_burst(&b.dev, QueuePair(1).tx(), &mut cache, &mut out, 32),
        0
    );
    assert_eq!(enqueue_burst(&b.dev, QueuePair(1).rx(), &pkts), 0);
    assert_eq!(b.dev.vring_stats(3).unwrap().queue.not_ready, 1);
    assert_eq!(b.dev.vring_stats(2).unwrap().queue.not_ready, 1);
    assert!(out.is_empty());
    assert_eq!(
        (b.used(0, 0).0, b.used(1, 0).0),
        rings_before,
        "the guest's rings were not touched"
    );
    let untouched = VringStats {
        ready: true,
        enabled: true,
        ..VringStats::default()
    };
    assert_eq!(b.dev.vring_stats(0).unwrap(), untouched);
    assert_eq!(b.dev.vring_stats(1).unwrap(), untouched);

    // The right queues still find everything the guest offered.
    assert_eq!(
        dequeue_burst(&b.dev, QueuePair(0).tx(), &mut cache, &mut out, 32),
        2
    );
    assert_eq!(enqueue_burst(&b.dev, QueuePair(0).rx(), &pkts), 1);
    assert_eq!(b.fe.rx(0).unwrap().recv(8).len(), 1);
    cache.free_bulk(out);
    cache.free_bulk(pkts);
}

#[test]
fn the_counters_say_why_a_burst_returned_nothing() {
    let mut b = bed();
    let mut cache = b.pool.cache();
    let q = QueuePair(0).tx();
    let stats = |b: &Bed| b.dev.vring_stats(q.vring()).unwrap();
    let mut out = Vec::new();

    // Idle: nothing counted but the state.
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 0);
    let s = stats(&b);
    assert_eq!(s.values()[..10], [0; 10], "{s:?}");
    assert!(s.ready && s.enabled && !s.broken);

    // Packets: counted, and visible without the lock.
    let p = [7u8; 100];
    assert_eq!(b.fe.tx(0).unwrap().send(&[&p, &p, &p]), 3);
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 3);
    assert_eq!((stats(&b).queue.packets, stats(&b).queue.bytes), (3, 300));
    cache.free_bulk(out.drain(..));

    // The control thread holds the vring: the burst is skipped and counted.
    assert_eq!(b.fe.tx(0).unwrap().send(&[&[7u8; 100]]), 1);
    let held = b.dev.lock_vring(q.vring()).unwrap();
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 0);
    // Readable while it is held.
    assert_eq!(stats(&b).lock_busy, 1);
    drop(held);
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 1);
    cache.free_bulk(out.drain(..));

    // No mbufs: the burst is cut short and counted.
    let mut hoard = Vec::new();
    while let Ok(m) = cache.alloc() {
        hoard.push(m);
    }
    assert_eq!(b.fe.tx(0).unwrap().send(&[&[7u8; 100]]), 1);
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 0);
    assert_eq!(stats(&b).queue.alloc_failures, 1);
    cache.free_bulk(hoard);
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 1);
    cache.free_bulk(out.drain(..));

    // The guest corrupts its available ring: broken, counted, reported on the device.
    assert_eq!(b.dev.vring_breaks(), 0);
    let used = b.used(1, 0).0;
    b.set_avail_idx(1, used.wrapping_add(1000));
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 0);
    assert_eq!(dequeue_burst(&b.dev, q, &mut cache, &mut out, 32), 0);
    let s = stats(&b);
    assert!(s.broken);
    assert_eq!((s.queue.breaks, s.queue.broken_bursts), (1, 1));
    assert_eq!(b.dev.vring_breaks(), 1);
    let named: Vec<(&str, u64)> = s.iter().collect();
    assert_eq!(named.len(), VringStats::NAMES.len());
    assert!(named.contains(&("packets", 5)));
    assert!(named.contains(&("broken", 1)));

    // Reset: the counters go to zero; the state stays what it is.
    assert!(b.dev.vring_stats_reset(q.vring()));
    let s = stats(&b);
    assert_eq!(s.values()[..10], [0; 10], "{s:?}");
    assert!(s.broken);
    assert!(!b.dev.vring_stats_reset(b.dev.max_vrings()));
}

#[test]
fn a_flood_of_bad_chains_logs_a_bounded_number_of_lines() {
    let b = bed();
    let mut cache = b.pool.cache();
    // Chain 0 loops on itself; the guest makes it available again after every burst.
    let buf = b.gpa(SCRATCH);
    b.desc(1, 0, buf, 64, NEXT, 0);
    let before = BAD_CHAIN_LINES.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut posted = 0u64;
    while started.elapsed() < Duration::from_millis(2500) {
        b.avail(1, &[0; 8]);
        posted += 8;
        assert!(b.dequeue(&mut cache).is_empty());
    }
    let secs = started.elapsed().as_secs_f64();
    let lines = BAD_CHAIN_LINES.load(Ordering::Relaxed) - before;
    let s = b.dev.vring_stats(1).unwrap();
    assert_eq!(s.queue.bad_chains, posted, "every bad chain counted");
    assert_eq!(s.queue.packets, 0);
    // The first, then at most one a period.
    let bound = 1 + (secs / LogLimiter::PERIOD.as_secs_f64()).ceil() as usize;
    println!("{posted} bad chains in {secs:.1} s: {lines} log lines (bound {bound})");
    assert!(posted > 1000, "the flood was a flood: {posted}");
    assert!(
        (1..=bound).contains(&lines),
        "{lines} lines for {posted} bad chains in {secs:.1} s"
    );
}

/// The early publish (enqueue's `PUBLISH_FIRST`): a burst hands its first used entries to a
/// guest that waits, one with every receive buffer posted and nothing left on its transmit
/// queue; not to a guest with buffers still to post, nor to one whose transmit queue our last
/// dequeue left chains on (a busy guest), nor for a burst too short to have a first part.
#[test]
fn enqueue_publishes_early_only_to_a_waiting_guest() {
    let mut b = bed();
    let mut cache = b.pool.cache();
    let q = QueuePair(0);
    let early = |b: &Bed| {
        b.dev
            .vring_stats(q.rx().vring())
            .unwrap()
            .queue
            .early_publishes
    };
    let size = 256;
    let pkts: Vec<_> = (0..32u8).map(|i| mbuf_of(&mut cache, &[i; 60])).collect();
    // Takes every packet the guest received and posts receive buffers up to `n`.
    let refill = |b: &mut Bed, n: u16| {
        let rx = b.fe.rx(0).unwrap();
        while !rx.recv(64).is_empty() {}
        let posted = rx.posted();
        rx.post_rx(usize::from(n - posted), 2048);
        assert_eq!(rx.posted(), n);
    };

    // One buffer short of a full ring: the guest is still posting.
    refill(&mut b, size - 1);
    assert_eq!(enqueue_burst(&b.dev, q.rx(), &pkts), 32);
    assert_eq!(early(&b), 0, "early publish with the ring not fully posted");

    // Every buffer posted, nothing to send: it waits for us.
    refill(&mut b, size);
    assert_eq!(enqueue_burst(&b.dev, q.rx(), &pkts), 32);
    assert_eq!(early(&b), 1, "no early publish to a waiting guest");

    // The guest has 40 packets to send and our dequeue took 32: a transmit backlog.
    refill(&mut b, size);
    let frames: Vec<[u8; 60]> = (0..40u8).map(|i| [i; 60]).collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
    assert_eq!(b.fe.tx(0).unwrap().send(&refs), 40);
    let mut out = Vec::new();
    assert_eq!(dequeue_burst(&b.dev, q.tx(), &mut cache, &mut out, 32), 32);
    assert_eq!(enqueue_burst(&b.dev, q.rx(), &pkts), 32);
    assert_eq!(
        early(&b),
        1,
        "early publish to a guest with a transmit backlog"
    );

    // The backlog taken: waiting again.
    assert_eq!(dequeue_burst(&b.dev, q.tx(), &mut cache, &mut out, 32), 8);
    refill(&mut b, size);
    assert_eq!(enqueue_burst(&b.dev, q.rx(), &pkts), 32);
    assert_eq!(early(&b), 2, "no early publish once the backlog was taken");

    // A burst shorter than the first part: nothing to publish before its end.
    refill(&mut b, size);
    assert_eq!(enqueue_burst(&b.dev, q.rx(), &pkts[..4]), 4);
    assert_eq!(early(&b), 2, "early publish of a 4-packet burst");
    let got = b.fe.rx(0).unwrap().recv(64);
    assert_eq!(got.len(), 4);
    assert_eq!(got[3], vec![3u8; 60], "the packets arrive whole");

    cache.free_bulk(out);
    cache.free_bulk(pkts);
}
