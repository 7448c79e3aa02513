//! DPDK testpmd (virtio-user frontend) against `rvhost fwd` (the vhost-user backend), both as
//! real processes: traffic both ways, with packet counts that must agree on both sides, for
//! mrg_rxbuf 0/1 × in_order 0/1, rvhost as server and as client (testpmd `server=1`), split
//! and packed virtqueues (testpmd `packed_vq=1`, rvhost `--packed`).
//!
//! # Loopback (exact counting)
//!
//! testpmd runs `--forward-mode=io --tx-first --burst=B`: it sends one burst of `B` packets,
//! then sends back whatever it receives; rvhost (`io` or `macswap`, one port back to itself)
//! sends back whatever it receives. `B` packets circulate; nothing creates packets and every
//! drop is counted (testpmd's `TX-dropped`, rvhost's `tx_drops`). testpmd is stopped with
//! SIGINT first (its stats are taken when its lcore stops), then rvhost (its `FINAL` line).
//! At that moment each live packet is in exactly one of two places: testpmd's transmit ring
//! not yet dequeued by rvhost (`tp.tx - rv.rx`), or testpmd's receive ring not yet received
//! (`rv.tx - tp.rx`). So, exactly:
//!
//! * testpmd: `tp.tx + tp.tx_dropped - tp.rx == B`;
//! * rvhost: `rv.rx == rv.tx + rv.tx_drops`;
//! * `0 <= tp.tx - rv.rx`, `0 <= rv.tx - tp.rx`, and
//!   `(tp.tx - rv.rx) + (rv.tx - tp.rx) + rv.tx_drops + tp.tx_dropped == B`.
//!
//! The only tolerance is the `B` packets in flight when testpmd stops (and rvhost may drop
//! them when testpmd's queues go away under it): less than a ring, and exactly accounted.
//!
//! # One way, at full rate (bounded by a ring)
//!
//! testpmd `txonly` → rvhost `rxonly`: `0 <= tp.tx - rv.rx <= 1024` (packets left in the
//! 1024-entry transmit ring when testpmd stops its port). rvhost `txonly` → testpmd `rxonly`:
//! `0 <= rv.tx - tp.rx <= 1024` (packets left in its receive ring). Byte counts must be
//! `packets × frame size` on rvhost's side.
//!
//! # Backend restarts
//!
//! testpmd's virtio-user server stays up while `rvhost fwd --client` is stopped, killed and
//! started again: each new rvhost receives traffic (DPDK sends no SET_OWNER on those
//! connections).
//!
//! Needs `dpdk-testpmd` (Debian: `apt-get install dpdk-dev`); without it the tests print
//! `skipping: <why>` and pass, or fail under `RVHOST_TEST_REQUIRE=all`. testpmd uses 2 MiB
//! hugepages when 128 are free, else `--no-huge` (memfd-backed memory, which virtio-user
//! shares as well). Runs are serialized (testpmd on CPU 1, rvhost on CPU 0) and take a few
//! seconds each.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::child::{Child, Final, parse_final_queues, rvhost_bin, stop_rvhost, wait_for_socket};
use common::testpmd::{self, TpStats, field, forward_stats, free_hugepages};
use common::{skip, sock_path};
use nix::sys::signal::Signal;

/// One run at a time: testpmd and rvhost poll their cores at 100%.
static SERIAL: Mutex<()> = Mutex::new(());

/// Ring size of testpmd's queues.
const QUEUE: u64 = 1024;
/// Packets that may be unaccounted for when testpmd stops mid-stream: a ring's worth left in
/// the ring, plus up to a few bursts testpmd's virtio PMD has taken off the ring but not yet
/// counted (seen once: 1120 with a busy CPU, on 3.7 M packets).
const IN_FLIGHT: u64 = QUEUE + 4 * 32;
/// Packets circulating in the loopback runs.
const POPULATION: u64 = 64;
/// Traffic time of a run.
const TRAFFIC: Duration = Duration::from_secs(3);
/// Fewest packets a run must move to count as traffic (a debug build forwards ~100k/s).
const MIN_PACKETS: u64 = 5_000;

/// What a case sends.
#[derive(Debug, Clone, Copy)]
enum Traffic {
    /// testpmd io --tx-first ↔ rvhost in this mode; testpmd's `--txpkts` segments.
    Loopback(&'static str, &'static str),
    /// testpmd txonly → rvhost rxonly.
    ToRvhost,
    /// rvhost txonly → testpmd rxonly.
    FromRvhost,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    mrg: bool,
    in_order: bool,
    rvhost_server: bool,
    traffic: Traffic,
    /// Queue pairs on both sides (testpmd `queues=`, `--rxq`, `--txq`; rvhost `--queues`).
    queues: u16,
    /// rvhost's `--copy` (`cpu`: the sync path; `soft...`: the async path), then any further
    /// options of rvhost, space-separated.
    copy: &'static str,
    /// Packed virtqueues (testpmd `packed_vq=1`, rvhost `--packed`).
    packed: bool,
}

fn testpmd(sock: &Path, case: &Case) -> Command {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!(
        "rvh-fwd-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let mut vdev = format!(
        "net_virtio_user0,path={},queues={},queue_size={QUEUE},mrg_rxbuf={},in_order={}",
        sock.display(),
        case.queues,
        u8::from(case.mrg),
        u8::from(case.in_order)
    );
    if !case.rvhost_server {
        vdev.push_str(",server=1");
    }
    if case.packed {
        vdev.push_str(",packed_vq=1");
    }
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "dpdk-testpmd", "--no-pci"]);
    if free_hugepages() >= 128 {
        cmd.args(["--in-memory", "--single-file-segments"]);
    } else {
        println!("fewer than 128 free 2 MiB hugepages: testpmd runs with --no-huge");
        cmd.args(["--no-huge", "--no-shconf"]);
    }
    cmd.args(["-m", "256", "--file-prefix", &prefix, "--lcores", "0@1,1@1"])
        .args(["--vdev", &vdev])
        .args(["--", "--port-topology=loop", "--auto-start", "--nb-cores=1"])
        .args([&format!("--rxd={QUEUE}"), &format!("--txd={QUEUE}")])
        .args(["--stats-period", "1", "--total-num-mbufs=8192"])
        .args([
            &format!("--rxq={}", case.queues),
            &format!("--txq={}", case.queues),
        ])
        // testpmd drains its receive queues before it snapshots the counters its forward
        // statistics start from: what rvhost sent before would be received but not counted.
        .arg("--no-flush-rx");
    match case.traffic {
        Traffic::Loopback(_, txpkts) => cmd.args([
            "--forward-mode=io",
            "--tx-first",
            &format!("--burst={POPULATION}"),
            &format!("--txpkts={txpkts}"),
        ]),
        Traffic::ToRvhost => cmd.args(["--forward-mode=txonly", "--txpkts=64"]),
        Traffic::FromRvhost => cmd.args(["--forward-mode=rxonly"]),
    };
    cmd
}

fn rvhost(sock: &Path, case: &Case) -> Command {
    let mut cmd = Command::new(rvhost_bin());
    cmd.args(["fwd", "--lcores", "0", "--stats-period", "1"])
        .args(["--queues", &case.queues.to_string()])
        .arg("--iface")
        .arg(sock);
    match case.traffic {
        Traffic::Loopback(mode, _) => cmd.args(["--mode", mode]),
        Traffic::ToRvhost => cmd.args(["--mode", "rxonly"]),
        Traffic::FromRvhost => cmd.args(["--mode", "txonly", "--txpkts", "64"]),
    };
    if !case.rvhost_server {
        cmd.arg("--client");
    }
    cmd.arg("--copy").args(case.copy.split(' '));
    if case.packed {
        cmd.arg("--packed");
    }
    cmd
}

fn run(case: Case) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::init_log();
    if !testpmd::installed() {
        return skip("dpdk-testpmd is not installed (apt-get install dpdk-dev)");
    }
    let started = Instant::now();
    let sock = sock_path("fwd-testpmd");
    let (mut tp, mut rv) = if case.rvhost_server {
        let rv = Child::spawn("rvhost", rvhost(&sock, &case));
        assert!(
            wait_for_socket(&sock, Duration::from_secs(10)),
            "rvhost never listened\n{}",
            rv.tail(20)
        );
        (Child::spawn("testpmd", testpmd(&sock, &case)), rv)
    } else {
        // testpmd's virtio-user server waits for the backend in its probe.
        let tp = Child::spawn("testpmd", testpmd(&sock, &case));
        assert!(
            wait_for_socket(&sock, Duration::from_secs(30)),
            "testpmd never listened\n{}",
            tp.tail(40)
        );
        (tp, Child::spawn("rvhost", rvhost(&sock, &case)))
    };
    let running = rv.wait_stderr(Duration::from_secs(30), |l| l.contains("is running"));
    let Some(running) = running else {
        panic!(
            "{case:?}: no device on rvhost\n{}\n{}",
            rv.tail(30),
            tp.tail(40)
        )
    };
    // The ring layout is the one asked for (virtio-user falls back to split rings when the
    // backend does not offer packed ones): `... is running (features 0x...)`.
    let features = running
        .split("features 0x")
        .nth(1)
        .and_then(|t| u64::from_str_radix(t.trim_end_matches(')'), 16).ok())
        .unwrap_or_else(|| panic!("no features in {running:?}"));
    assert_eq!(
        features & (1 << 34) != 0,
        case.packed,
        "{case:?}: VIRTIO_F_RING_PACKED in {features:#x}"
    );
    std::thread::sleep(TRAFFIC);
    // The sender stops first, so the receiver's count is not cut off mid-stream: when rvhost
    // sends, it stops (and the receiving testpmd gets a moment to drain its ring) before
    // testpmd; otherwise testpmd stops first.
    let early = matches!(case.traffic, Traffic::FromRvhost).then(|| {
        let f = stop_rvhost(&mut rv);
        std::thread::sleep(Duration::from_millis(500));
        f
    });
    // testpmd with --stats-period quits on a signal (not on stdin); it then prints its
    // forward statistics and closes its port.
    tp.signal(Signal::SIGINT);
    let exited = tp.wait_exit(Duration::from_secs(20));
    assert!(
        exited.is_some(),
        "{case:?}: testpmd did not stop\n{}",
        tp.tail(40)
    );
    let rvf = match early {
        Some(f) => f,
        None => stop_rvhost(&mut rv),
    };
    let tpf = forward_stats(&tp.stdout(), 0)
        .unwrap_or_else(|| panic!("{case:?}: no forward statistics\n{}", tp.tail(60)));
    println!(
        "{case:?}: testpmd {tpf:?}; rvhost {rvf:?}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if case.copy != "cpu" {
        // The async path carried the traffic both ways (the queue's lines, logged when the
        // device went away): every packet a channel took came back; host to guest, the
        // engine copied.
        let line = |dir: &str| {
            rv.stderr()
                .into_iter()
                .find(|l| l.contains(&format!("{dir}: async: submitted=")))
                .unwrap_or_else(|| panic!("{case:?}: no {dir} async statistics\n{}", rv.tail(30)))
        };
        let (h2g, g2h) = (line("h2g"), line("g2h"));
        // Over a device model, the drivers broke none of its rules (each would be logged).
        let broken: Vec<String> = (rv.stderr().into_iter())
            .filter(|l| l.contains("DMA model"))
            .collect();
        assert!(broken.is_empty(), "{case:?}: {broken:#?}");
        let num = |l: &str, key: &str| field(l, key).unwrap_or_else(|| panic!("{key} in {l}"));
        assert!(num(&h2g, "dma_copies=") > 0, "{case:?}: {h2g}");
        assert_eq!(
            num(&h2g, "submitted="),
            num(&h2g, "completed="),
            "{case:?}: {h2g}"
        );
        assert_eq!(num(&h2g, "submitted="), rvf.tx_pkts, "{case:?}: {h2g}");
        assert_eq!(
            num(&g2h, "submitted="),
            num(&g2h, "completed="),
            "{case:?}: {g2h}"
        );
        if case.copy.contains("threshold=0") && matches!(case.traffic, Traffic::Loopback(_, "1518"))
        {
            // One-segment frames arrive in one descriptor: the engine copies them from the
            // guest too.
            assert!(num(&g2h, "dma_copies=") > 0, "{case:?}: {g2h}");
        }
        // Taken from the guest: forwarded (counted as received) or cleared at the stop.
        assert_eq!(
            num(&g2h, "completed=") - num(&g2h, "cleared="),
            rvf.rx_pkts,
            "{case:?}: {g2h}"
        );
    }
    let per_queue = parse_final_queues(&rv.stdout());
    let ctx = || format!("{case:?}\ntestpmd {tpf:?}\nrvhost {rvf:?}\nper queue {per_queue:?}");
    if case.queues > 1 {
        // Every queue pair carried its share, and the port's line is their sum.
        let (mut rx, mut tx) = (0, 0);
        for q in 0..usize::from(case.queues) {
            let f = per_queue
                .get(&(0, q))
                .unwrap_or_else(|| panic!("no FINAL-QUEUE line for queue {q}: {}", ctx()));
            let moved = match case.traffic {
                Traffic::FromRvhost => f.tx_pkts,
                _ => f.rx_pkts,
            };
            assert!(moved >= MIN_PACKETS / 4, "queue {q} idle: {}", ctx());
            (rx, tx) = (rx + f.rx_pkts, tx + f.tx_pkts);
        }
        assert_eq!((rx, tx), (rvf.rx_pkts, rvf.tx_pkts), "{}", ctx());
    } else {
        assert!(per_queue.is_empty(), "{}", ctx());
    }
    let queues = u64::from(case.queues);
    match case.traffic {
        Traffic::Loopback(_, txpkts) => check_loopback(&tpf, &rvf, txpkts, queues, ctx),
        Traffic::ToRvhost => {
            assert_eq!((tpf.rx, rvf.tx_pkts), (0, 0), "{}", ctx());
            assert!(rvf.rx_pkts >= MIN_PACKETS, "too little traffic: {}", ctx());
            assert!(
                rvf.rx_pkts <= tpf.tx && tpf.tx - rvf.rx_pkts <= IN_FLIGHT * queues,
                "rvhost must receive what testpmd sent, but a ring: {}",
                ctx()
            );
            assert_eq!(rvf.rx_bytes, rvf.rx_pkts * 64, "{}", ctx());
        }
        Traffic::FromRvhost => {
            assert_eq!((tpf.tx, rvf.rx_pkts), (0, 0), "{}", ctx());
            assert!(tpf.rx >= MIN_PACKETS, "too little traffic: {}", ctx());
            assert!(
                tpf.rx <= rvf.tx_pkts && rvf.tx_pkts - tpf.rx <= IN_FLIGHT * queues,
                "testpmd must receive what rvhost sent, but a ring: {}",
                ctx()
            );
            assert_eq!(rvf.tx_bytes, rvf.tx_pkts * 64, "{}", ctx());
        }
    }
    if case.rvhost_server {
        assert!(!sock.exists(), "rvhost left its socket file");
    }
}

/// `queues`: testpmd's first burst goes out on each of them.
fn check_loopback(tp: &TpStats, rv: &Final, txpkts: &str, queues: u64, ctx: impl Fn() -> String) {
    let b = POPULATION * queues;
    assert!(rv.rx_pkts >= MIN_PACKETS, "too little traffic: {}", ctx());
    assert_eq!(
        tp.tx + tp.tx_dropped,
        tp.rx + b,
        "testpmd sends back all it gets, plus the first burst: {}",
        ctx()
    );
    assert_eq!(
        rv.rx_pkts,
        rv.tx_pkts + rv.tx_drops,
        "rvhost sends back or counts a drop for all it gets: {}",
        ctx()
    );
    assert!(
        rv.rx_pkts <= tp.tx && tp.tx - rv.rx_pkts <= b,
        "rvhost received what testpmd sent, but packets in flight: {}",
        ctx()
    );
    assert!(
        tp.rx <= rv.tx_pkts && rv.tx_pkts - tp.rx <= b,
        "testpmd received what rvhost sent, but packets in flight: {}",
        ctx()
    );
    assert_eq!(
        (tp.tx - rv.rx_pkts) + (rv.tx_pkts - tp.rx) + rv.tx_drops + tp.tx_dropped,
        b,
        "every circulating packet is in flight or counted as dropped: {}",
        ctx()
    );
    let len: u64 = txpkts.split(',').map(|s| s.parse::<u64>().unwrap()).sum();
    assert_eq!(rv.rx_bytes, rv.rx_pkts * len, "{}", ctx());
    assert_eq!(rv.tx_bytes, rv.tx_pkts * len, "{}", ctx());
}

macro_rules! loopback {
    ($name:ident, $mrg:expr, $in_order:expr, $server:expr, $mode:expr, $txpkts:expr) => {
        #[test]
        fn $name() {
            run(Case {
                mrg: $mrg,
                in_order: $in_order,
                rvhost_server: $server,
                traffic: Traffic::Loopback($mode, $txpkts),
                queues: 1,
                copy: "cpu",
                packed: false,
            });
        }
    };
}

// mrg_rxbuf × in_order × rvhost role; io and macswap; 64-byte frames, 1518-byte frames in
// one segment, and 1518-byte frames in two segments (a chain of descriptors from testpmd).
loopback!(
    loopback_mrg0_inorder0_rvhost_server,
    false,
    false,
    true,
    "io",
    "64"
);
loopback!(
    loopback_mrg0_inorder1_rvhost_server,
    false,
    true,
    true,
    "macswap",
    "1518"
);
loopback!(
    loopback_mrg1_inorder0_rvhost_server,
    true,
    false,
    true,
    "macswap",
    "64,1454"
);
loopback!(
    loopback_mrg1_inorder1_rvhost_server,
    true,
    true,
    true,
    "io",
    "64"
);
loopback!(
    loopback_mrg0_inorder0_rvhost_client,
    false,
    false,
    false,
    "macswap",
    "64,1454"
);
loopback!(
    loopback_mrg0_inorder1_rvhost_client,
    false,
    true,
    false,
    "io",
    "64"
);
loopback!(
    loopback_mrg1_inorder0_rvhost_client,
    true,
    false,
    false,
    "io",
    "1518"
);
loopback!(
    loopback_mrg1_inorder1_rvhost_client,
    true,
    true,
    false,
    "macswap",
    "64"
);

/// The async path (`rvhost fwd --copy soft`): the same exact counts, with every copy on the
/// software DMA engine (threshold 0) or mixed with CPU copies (default threshold, 64 and
/// 1454-byte segments), as server and client; the first with the engine pinned to the
/// frontend's CPU and polling (`--dma-lcore`).
macro_rules! loopback_async {
    ($name:ident, $mrg:expr, $in_order:expr, $server:expr, $mode:expr, $txpkts:expr, $copy:expr) => {
        #[test]
        fn $name() {
            run(Case {
                mrg: $mrg,
                in_order: $in_order,
                rvhost_server: $server,
                traffic: Traffic::Loopback($mode, $txpkts),
                queues: 1,
                copy: $copy,
                packed: false,
            });
        }
    };
}

loopback_async!(
    loopback_async_all_dma_mrg1_inorder1_rvhost_server,
    true,
    true,
    true,
    "io",
    "1518",
    "soft,threshold=0,engines=2 --dma-lcore 1"
);
loopback_async!(
    loopback_async_mixed_mrg0_inorder0_rvhost_client,
    false,
    false,
    false,
    "macswap",
    "64,1454",
    "soft"
);
loopback_async!(
    loopback_async_mixed_mrg1_inorder0_rvhost_server,
    true,
    false,
    true,
    "io",
    "64,1454",
    "soft,engines=4"
);

// The IOAT and DSA drivers over their device models (`--copy ioat-model|dsa-model`), every
// copy on the driver and its model: the same exact counts.
loopback_async!(
    loopback_async_ioat_model_mrg1_inorder1_rvhost_server,
    true,
    true,
    true,
    "io",
    "1518",
    "ioat-model,threshold=0"
);
loopback_async!(
    loopback_async_dsa_model_mrg0_inorder0_rvhost_client,
    false,
    false,
    false,
    "macswap",
    "64,1454",
    "dsa-model,threshold=0"
);
loopback_async!(
    loopback_async_dsa_model_mrg1_inorder1_rvhost_server,
    true,
    true,
    true,
    "io",
    "1518",
    "dsa-model,threshold=0"
);

/// rvhost txonly on the async path, frames large enough for the engine.
#[test]
fn rvhost_txonly_async_to_testpmd_rxonly() {
    run(Case {
        mrg: true,
        in_order: false,
        rvhost_server: true,
        traffic: Traffic::FromRvhost,
        queues: 1,
        copy: "soft,threshold=0",
        packed: false,
    });
}

#[test]
fn testpmd_txonly_to_rvhost_rxonly() {
    run(Case {
        mrg: true,
        in_order: true,
        rvhost_server: true,
        traffic: Traffic::ToRvhost,
        queues: 1,
        copy: "cpu",
        packed: false,
    });
}

/// Two queue pairs: testpmd's one forwarding lcore polls both, rvhost's one lcore too.
#[test]
fn loopback_two_queue_pairs() {
    run(Case {
        mrg: true,
        in_order: false,
        rvhost_server: true,
        traffic: Traffic::Loopback("io", "64"),
        queues: 2,
        copy: "cpu",
        packed: false,
    });
}

#[test]
fn testpmd_txonly_to_rvhost_rxonly_two_queue_pairs() {
    run(Case {
        mrg: false,
        in_order: false,
        rvhost_server: false,
        traffic: Traffic::ToRvhost,
        queues: 2,
        copy: "cpu",
        packed: false,
    });
}

#[test]
fn rvhost_txonly_to_testpmd_rxonly_two_queue_pairs() {
    run(Case {
        mrg: true,
        in_order: true,
        rvhost_server: true,
        traffic: Traffic::FromRvhost,
        queues: 2,
        copy: "cpu",
        packed: false,
    });
}

#[test]
fn rvhost_txonly_to_testpmd_rxonly() {
    run(Case {
        mrg: false,
        in_order: false,
        rvhost_server: false,
        traffic: Traffic::FromRvhost,
        queues: 1,
        copy: "cpu",
        packed: false,
    });
}

#[test]
fn rvhost_txonly_to_testpmd_rxonly_mergeable() {
    run(Case {
        mrg: true,
        in_order: false,
        rvhost_server: true,
        traffic: Traffic::FromRvhost,
        queues: 1,
        copy: "cpu",
        packed: false,
    });
}

/// Packed virtqueues (testpmd `packed_vq=1`, rvhost `--packed`): the same exact counts, the
/// ring asserted packed from the features rvhost negotiated.
macro_rules! packed {
    ($name:ident, $mrg:expr, $in_order:expr, $server:expr, $traffic:expr, $queues:expr) => {
        #[test]
        fn $name() {
            run(Case {
                mrg: $mrg,
                in_order: $in_order,
                rvhost_server: $server,
                traffic: $traffic,
                queues: $queues,
                copy: "cpu",
                packed: true,
            });
        }
    };
}

// mrg_rxbuf × in_order × rvhost role, loopback; io and macswap; one-segment and two-segment
// frames (a chain of two descriptors from testpmd), 64 and 1518 bytes.
packed!(
    packed_loopback_mrg0_inorder0_rvhost_server,
    false,
    false,
    true,
    Traffic::Loopback("io", "64"),
    1
);
packed!(
    packed_loopback_mrg0_inorder1_rvhost_server,
    false,
    true,
    true,
    Traffic::Loopback("macswap", "1518"),
    1
);
packed!(
    packed_loopback_mrg1_inorder0_rvhost_server,
    true,
    false,
    true,
    Traffic::Loopback("macswap", "64,1454"),
    1
);
packed!(
    packed_loopback_mrg1_inorder1_rvhost_server,
    true,
    true,
    true,
    Traffic::Loopback("io", "64"),
    1
);
packed!(
    packed_loopback_mrg0_inorder0_rvhost_client,
    false,
    false,
    false,
    Traffic::Loopback("macswap", "64,1454"),
    1
);
packed!(
    packed_loopback_mrg0_inorder1_rvhost_client,
    false,
    true,
    false,
    Traffic::Loopback("io", "64"),
    1
);
packed!(
    packed_loopback_mrg1_inorder0_rvhost_client,
    true,
    false,
    false,
    Traffic::Loopback("io", "1518"),
    1
);
packed!(
    packed_loopback_mrg1_inorder1_rvhost_client,
    true,
    true,
    false,
    Traffic::Loopback("macswap", "64"),
    1
);
// One way at full rate, both directions; two queue pairs.
packed!(
    packed_testpmd_txonly_to_rvhost_rxonly,
    true,
    false,
    true,
    Traffic::ToRvhost,
    1
);
packed!(
    packed_rvhost_txonly_to_testpmd_rxonly_mrg0,
    false,
    false,
    false,
    Traffic::FromRvhost,
    1
);
packed!(
    packed_rvhost_txonly_to_testpmd_rxonly_mrg1,
    true,
    true,
    true,
    Traffic::FromRvhost,
    1
);
packed!(
    packed_loopback_two_queue_pairs,
    true,
    false,
    true,
    Traffic::Loopback("io", "64"),
    2
);
packed!(
    packed_rvhost_txonly_to_testpmd_rxonly_two_queue_pairs,
    false,
    true,
    false,
    Traffic::FromRvhost,
    2
);

/// testpmd's virtio-user is the server and stays up while the backend goes away and comes
/// back, as a vswitch restarts under running containers: rvhost stopped (SIGINT), then a
/// second one killed (SIGKILL), then a third. DPDK 22.11 resets its rings and sets them up
/// again on each new connection, without SET_OWNER and stopping rings the new backend never
/// had; each rvhost receives testpmd's traffic.
fn backend_restarts_under_a_server_frontend(packed: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::init_log();
    if !testpmd::installed() {
        return skip("dpdk-testpmd is not installed (apt-get install dpdk-dev)");
    }
    let case = Case {
        mrg: true,
        in_order: false,
        rvhost_server: false,
        traffic: Traffic::ToRvhost,
        queues: 1,
        copy: "cpu",
        packed,
    };
    let sock = sock_path("fwd-restart");
    let mut tp = Child::spawn("testpmd", testpmd(&sock, &case));
    assert!(
        wait_for_socket(&sock, Duration::from_secs(30)),
        "testpmd never listened\n{}",
        tp.tail(40)
    );
    for (generation, crash) in [(1, false), (2, true), (3, false)] {
        let mut rv = Child::spawn("rvhost", rvhost(&sock, &case));
        let running = rv.wait_stderr(Duration::from_secs(30), |l| l.contains("is running"));
        assert!(
            running.is_some(),
            "{case:?}: rvhost {generation}: no device\n{}\n{}",
            rv.tail(30),
            tp.tail(40)
        );
        // Traffic flows: rvhost's 1 s statistics show packets received.
        // `port 0: Rx  M Mpps  G Gbit/s  N pkts | Tx ...`
        let received = |l: &str| {
            let rx = l.strip_prefix("port 0: Rx")?.split('|').next()?;
            rx.split_whitespace().rev().nth(1)?.parse::<u64>().ok()
        };
        let moving = rv.wait_stdout(Duration::from_secs(10), |l| {
            received(l).is_some_and(|n| n > 0)
        });
        assert!(
            moving.is_some(),
            "{case:?}: rvhost {generation} received nothing\n{}\n{}",
            rv.tail(30),
            tp.tail(40)
        );
        if crash {
            rv.signal(Signal::SIGKILL);
            assert!(rv.wait_exit(Duration::from_secs(10)).is_some());
        } else {
            let f = stop_rvhost(&mut rv);
            assert!(
                f.rx_pkts >= MIN_PACKETS && f.rx_bytes == f.rx_pkts * 64,
                "{case:?}: rvhost {generation}: {f:?}\n{}",
                tp.tail(40)
            );
            println!("{case:?}: rvhost {generation}: {f:?}");
        }
        let broken: Vec<String> = (rv.stderr().into_iter())
            .filter(|l| l.contains("ERROR"))
            .collect();
        assert!(
            broken.is_empty(),
            "{case:?}: rvhost {generation}: {broken:#?}"
        );
    }
    tp.signal(Signal::SIGINT);
    assert!(tp.wait_exit(Duration::from_secs(20)).is_some());
    let tpf = forward_stats(&tp.stdout(), 0)
        .unwrap_or_else(|| panic!("{case:?}: no forward statistics\n{}", tp.tail(60)));
    assert!(tpf.tx >= 3 * MIN_PACKETS, "{case:?}: testpmd {tpf:?}");
}

#[test]
fn backend_restarts_under_a_server_frontend_split() {
    backend_restarts_under_a_server_frontend(false);
}

#[test]
fn backend_restarts_under_a_server_frontend_packed() {
    backend_restarts_under_a_server_frontend(true);
}
