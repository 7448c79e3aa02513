//! Multi-threaded stress tests of the ring, in every mode combination.
//!
//! Each producer pushes values tagged `(producer id, sequence number)` in chunks of random
//! length, with bulk or burst operations at random, until a deadline; consumers dequeue with
//! random bulk/burst lengths until every producer has finished and the ring is drained. The
//! checks:
//!
//! * every consumer sees each producer's values in strictly increasing sequence order (a
//!   consumer's stream is a subsequence of the ring order, and each producer's values enter the
//!   ring in order), which with a single consumer is per-producer FIFO order, and with a single
//!   producer and consumer is exact FIFO order;
//! * over all consumers, every value pushed is received exactly once (nothing lost, nothing
//!   duplicated, nothing invented).
//!
//! Runs are bounded by time (a few hundred ms each), so they finish even on a 2-core machine
//! where producers are preempted mid-operation and the others wait for their tails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rvhost_hugepages::bulk_ring::{MpmcRing, MpscRing, SpmcRing, SpscRing};

const RUN_FOR: Duration = Duration::from_millis(300);
const MAX_CHUNK: usize = 32;
const SEQ_BITS: u32 = 40;

fn tag(producer: usize, seq: u64) -> u64 {
    ((producer as u64) << SEQ_BITS) | seq
}

fn untag(v: u64) -> (usize, u64) {
    ((v >> SEQ_BITS) as usize, v & ((1 << SEQ_BITS) - 1))
}

/// xorshift64*: enough randomness for chunk sizes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Chunk length in `1..=MAX_CHUNK` and bulk (true) or burst.
    fn chunk(&mut self) -> (usize, bool) {
        let r = self.next();
        (1 + (r % MAX_CHUNK as u64) as usize, r & (1 << 40) != 0)
    }
}

/// `tag(producer, seq)` for `seq` in `0..n`: the values a producer pushes, computed before the
/// timed run so the producers spend their time in the ring rather than building values (which
/// makes races between reserving and publishing far more likely to show).
fn tagged(producer: usize, n: usize) -> Vec<u64> {
    (0..n as u64).map(|seq| tag(producer, seq)).collect()
}

/// Values per producer: an upper bound, the deadline usually stops the producers first.
const VALUES: usize = 1 << 20;

/// Pushes `vals` in order with `enq(chunk, bulk)`, in random chunks, until all are pushed or
/// `deadline` passes; returns how many were pushed (a prefix of `vals`).
fn produce(
    vals: &[u64],
    seed: u64,
    deadline: Instant,
    mut enq: impl FnMut(&[u64], bool) -> usize,
) -> usize {
    let mut rng = Rng::new(seed);
    let mut pos = 0;
    let mut round = 0u32;
    while pos < vals.len() {
        round = round.wrapping_add(1);
        if round % 64 == 0 && Instant::now() >= deadline {
            break;
        }
        let (len, bulk) = rng.chunk();
        let chunk = &vals[pos..vals.len().min(pos + len)];
        let n = enq(chunk, bulk);
        assert!(if bulk {
            n == 0 || n == chunk.len()
        } else {
            n <= chunk.len()
        });
        pos += n;
        if n == 0 {
            // Full: let the consumers run (the machine may have fewer cores than threads).
            thread::yield_now();
        }
    }
    pos
}

/// Dequeues until `finished` producers equal `producers` and the ring is drained; checks that
/// each producer's values arrive in increasing sequence order and returns them all.
fn consume(
    id: usize,
    finished: &AtomicUsize,
    producers: usize,
    mut deq: impl FnMut(&mut [u64], bool) -> usize,
) -> Vec<u64> {
    let mut rng = Rng::new(1000 + id as u64);
    let mut got = Vec::new();
    let mut last: Vec<Option<u64>> = vec![None; producers];
    let mut buf = [u64::MAX; MAX_CHUNK];
    let mut record = |vals: &[u64], got: &mut Vec<u64>| {
        for &v in vals {
            let (p, seq) = untag(v);
            assert!(p < producers, "consumer {id}: invented value {v:#x}");
            if let Some(prev) = last[p] {
                assert!(
                    seq > prev,
                    "consumer {id}: producer {p} seq {seq} after {prev} (order broken)"
                );
            }
            last[p] = Some(seq);
        }
        got.extend_from_slice(vals);
    };
    loop {
        // Acquire: pairs with the producers' Release increment after their last enqueue, so
        // a drain attempt after seeing them all finished sees all their values.
        let all_done = finished.load(Ordering::Acquire) == producers;
        let (len, bulk) = rng.chunk();
        let n = deq(&mut buf[..len], bulk);
        assert!(if bulk { n == 0 || n == len } else { n <= len });
        record(&buf[..n], &mut got);
        if n == 0 {
            if all_done {
                // A bulk dequeue can fail while values remain: drain with bursts.
                let n = deq(&mut buf, false);
                record(&buf[..n], &mut got);
                if n == 0 {
                    return got;
                }
            }
            thread::yield_now();
        }
    }
}

/// Checks that `received` holds exactly `tag(p, 0..pushed[p])` for every producer `p`.
fn verify(name: &str, pushed: &[usize], received: Vec<Vec<u64>>, elapsed: Duration) {
    let mut seen: Vec<Vec<bool>> = pushed.iter().map(|&n| vec![false; n]).collect();
    let mut total = 0u64;
    for v in received.into_iter().flatten() {
        let (p, seq) = untag(v);
        assert!(
            (seq as usize) < seen[p].len(),
            "{name}: producer {p} seq {seq} never pushed"
        );
        assert!(
            !seen[p][seq as usize],
            "{name}: producer {p} seq {seq} received twice"
        );
        seen[p][seq as usize] = true;
        total += 1;
    }
    for (p, s) in seen.iter().enumerate() {
        if let Some(missing) = s.iter().position(|&b| !b) {
            panic!("{name}: producer {p} seq {missing} lost");
        }
    }
    assert!(total > 0, "{name}: nothing went through");
    eprintln!(
        "{name}: {total} values ({:?} per producer) in {elapsed:?}",
        pushed
    );
}

#[test]
fn spsc_fifo() {
    let ring = SpscRing::<u64>::new(100).unwrap();
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let vals = tagged(0, VALUES);
    let mut tx = ring.producer().unwrap();
    let mut rx = ring.consumer().unwrap();
    let (pushed, got) = thread::scope(|s| {
        let (finished, vals) = (&finished, &vals);
        let p = s.spawn(move || {
            let n = produce(vals, 1, deadline, |c, bulk| {
                if bulk {
                    tx.enqueue_bulk(c)
                } else {
                    tx.enqueue_burst(c)
                }
            });
            finished.fetch_add(1, Ordering::Release);
            n
        });
        let c = s.spawn(move || {
            consume(0, finished, 1, |d, bulk| {
                if bulk {
                    rx.dequeue_bulk(d)
                } else {
                    rx.dequeue_burst(d)
                }
            })
        });
        (p.join().unwrap(), c.join().unwrap())
    });
    // Single producer, single consumer: exactly 0, 1, 2, ... in order.
    assert!(got.iter().enumerate().all(|(i, &v)| v == tag(0, i as u64)));
    verify("spsc", &[pushed], vec![got], start.elapsed());
    assert!(ring.is_empty());
}

/// `producers` threads and `consumers` threads on one MP/MC ring shared by `&self`.
fn mpmc(name: &str, capacity: usize, producers: usize, consumers: usize) {
    let ring = MpmcRing::<u64>::new(capacity).unwrap();
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let all: Vec<Vec<u64>> = (0..producers).map(|p| tagged(p, VALUES)).collect();
    let (pushed, got) = thread::scope(|s| {
        let (ring, finished, all) = (&ring, &finished, &all);
        let ps: Vec<_> = (0..producers)
            .map(|id| {
                s.spawn(move || {
                    let n = produce(&all[id], id as u64 + 1, deadline, |c, bulk| {
                        if bulk {
                            ring.enqueue_bulk(c)
                        } else {
                            ring.enqueue_burst(c)
                        }
                    });
                    finished.fetch_add(1, Ordering::Release);
                    n
                })
            })
            .collect();
        let cs: Vec<_> = (0..consumers)
            .map(|id| {
                s.spawn(move || {
                    consume(id, finished, producers, |d, bulk| {
                        if bulk {
                            ring.dequeue_bulk(d)
                        } else {
                            ring.dequeue_burst(d)
                        }
                    })
                })
            })
            .collect();
        let pushed: Vec<usize> = ps.into_iter().map(|h| h.join().unwrap()).collect();
        let got: Vec<Vec<u64>> = cs.into_iter().map(|h| h.join().unwrap()).collect();
        (pushed, got)
    });
    verify(name, &pushed, got, start.elapsed());
    assert!(ring.is_empty());
}

#[test]
fn mpmc_2x2() {
    mpmc("mpmc 2x2", 64, 2, 2);
}

#[test]
fn mpmc_4x4_small_ring() {
    // Capacity below the largest chunk: bulk operations over 24 always fail, full/empty
    // states and wrap-around are constant.
    mpmc("mpmc 4x4", 24, 4, 4);
}

#[test]
fn mpsc_per_producer_fifo() {
    let producers = 3;
    let ring = MpscRing::<u64>::new(37).unwrap();
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let mut rx = ring.consumer().unwrap();
    let all: Vec<Vec<u64>> = (0..producers).map(|p| tagged(p, VALUES)).collect();
    let (pushed, got) = thread::scope(|s| {
        let (ring, finished, all) = (&ring, &finished, &all);
        let ps: Vec<_> = (0..producers)
            .map(|id| {
                s.spawn(move || {
                    let n = produce(&all[id], id as u64 + 1, deadline, |c, bulk| {
                        if bulk {
                            ring.enqueue_bulk(c)
                        } else {
                            ring.enqueue_burst(c)
                        }
                    });
                    finished.fetch_add(1, Ordering::Release);
                    n
                })
            })
            .collect();
        let c = s.spawn(move || {
            consume(0, finished, producers, |d, bulk| {
                if bulk {
                    rx.dequeue_bulk(d)
                } else {
                    rx.dequeue_burst(d)
                }
            })
        });
        let pushed: Vec<usize> = ps.into_iter().map(|h| h.join().unwrap()).collect();
        (pushed, c.join().unwrap())
    });
    // `consume` checked increasing order per producer; with one consumer and completeness
    // (checked by `verify`) that is exact per-producer FIFO.
    verify("mpsc 3x1", &pushed, vec![got], start.elapsed());
}

#[test]
fn spmc() {
    let consumers = 3;
    let ring = SpmcRing::<u64>::new(50).unwrap();
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let vals = tagged(0, VALUES);
    let mut tx = ring.producer().unwrap();
    let (pushed, got) = thread::scope(|s| {
        let (ring, finished, vals) = (&ring, &finished, &vals);
        let p = s.spawn(move || {
            let n = produce(vals, 1, deadline, |c, bulk| {
                if bulk {
                    tx.enqueue_bulk(c)
                } else {
                    tx.enqueue_burst(c)
                }
            });
            finished.fetch_add(1, Ordering::Release);
            n
        });
        let cs: Vec<_> = (0..consumers)
            .map(|id| {
                s.spawn(move || {
                    consume(id, finished, 1, |d, bulk| {
                        if bulk {
                            ring.dequeue_bulk(d)
                        } else {
                            ring.dequeue_burst(d)
                        }
                    })
                })
            })
            .collect();
        let pushed = p.join().unwrap();
        let got: Vec<Vec<u64>> = cs.into_iter().map(|h| h.join().unwrap()).collect();
        (pushed, got)
    });
    verify("spmc 1x3", &[pushed], got, start.elapsed());
}

/// Two threads take turns holding the single-producer handle (claim, push a little, drop),
/// continuing one sequence: the claim hand-over must carry the producer state (head, cached
/// consumer tail) between threads, so the consumer still sees exactly 0, 1, 2, ...
#[test]
fn single_producer_handle_moves_between_threads() {
    let ring = SpscRing::<u64>::new(33).unwrap();
    let finished = AtomicUsize::new(0);
    let threads_done = AtomicUsize::new(0);
    // Next sequence number; only touched by the thread holding the producer claim, which
    // orders the accesses, so Relaxed suffices.
    let next_seq = AtomicUsize::new(0);
    let vals = tagged(0, VALUES);
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let got = thread::scope(|s| {
        let (ring, finished, next_seq, threads_done, vals) =
            (&ring, &finished, &next_seq, &threads_done, &vals);
        for t in 0..2u64 {
            s.spawn(move || {
                let mut turns = 0u64;
                while Instant::now() < deadline {
                    let Some(mut tx) = ring.producer() else {
                        thread::yield_now();
                        continue;
                    };
                    let seq = next_seq.load(Ordering::Relaxed);
                    let burst_end = Instant::now() + Duration::from_micros(200);
                    let seed = seq as u64 + t;
                    let n = produce(&vals[seq..], seed, burst_end.min(deadline), |c, bulk| {
                        if bulk {
                            tx.enqueue_bulk(c)
                        } else {
                            tx.enqueue_burst(c)
                        }
                    });
                    next_seq.store(seq + n, Ordering::Relaxed);
                    drop(tx);
                    turns += 1;
                    thread::yield_now();
                }
                eprintln!("handoff: thread {t} held the producer {turns} times");
                // The consumer waits for one "producer": the last of the two threads reports
                // it. AcqRel: the last thread acquires the first one's Release here, so its
                // Release on `finished` covers both threads' enqueues.
                if threads_done.fetch_add(1, Ordering::AcqRel) == 1 {
                    finished.fetch_add(1, Ordering::Release);
                }
            });
        }
        let mut rx = ring.consumer().unwrap();
        // Both threads act as "producer 0".
        let c = s.spawn(move || {
            consume(0, finished, 1, |d, bulk| {
                if bulk {
                    rx.dequeue_bulk(d)
                } else {
                    rx.dequeue_burst(d)
                }
            })
        });
        c.join().unwrap()
    });
    let pushed = next_seq.load(Ordering::Relaxed);
    assert!(got.iter().enumerate().all(|(i, &v)| v == tag(0, i as u64)));
    verify("handoff", &[pushed], vec![got], start.elapsed());
}
