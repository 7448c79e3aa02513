//! `rvhost fwd --mode macswap` as a separate process, driven by the Rust frontend
//! (`rvhost::frontend::Frontend`) as the guest: every packet sent must come back once, in
//! order, with its MAC addresses swapped and every other byte unchanged.
//!
//! Sizes sweep 60..=9000 bytes with mergeable receive buffers (a packet spans several guest
//! buffers and several mbufs in rvhost), 60..=1514 without (one posted buffer per packet), and
//! 60..=9000 without mergeable buffers but with 9100-byte posted chains (a packet spans
//! several descriptors of one chain). rvhost serves as server and as client. Runs on 4 KiB
//! pages: no hugepages needed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::child::{Child, rvhost_bin, stop_rvhost, wait_for_socket};
use common::sock_path;
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX};
use rvhost::frontend::{Frontend, FrontendOptions, TxLayout};

/// Packets in flight at once: small enough that the posted receive buffers always hold them
/// (a 9000-byte packet takes 5 of the 2048-byte buffers; 256 are posted), so rvhost never has
/// to drop one and every packet must come back.
const WINDOW: usize = 16;

struct Case {
    name: &'static str,
    features: u64,
    layout: TxLayout,
    sizes: Vec<usize>,
    /// Bytes of each posted receive buffer (virtio-net header included).
    rx_buf: usize,
    rvhost_client: bool,
}

/// A sweep of `lo..=hi` (every `step` bytes) plus the sizes around the boundaries of mbufs
/// (2048 bytes of data room) and of 2048-byte guest buffers minus the 12-byte header.
fn sizes(lo: usize, hi: usize, step: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (lo..=hi).step_by(step).collect();
    for b in [
        64, 128, 1514, 1518, 2036, 2048, 4084, 4096, 6132, 6144, 8180, 8192,
    ] {
        v.extend([b - 1, b, b + 1]);
    }
    v.push(hi);
    v.retain(|&n| (lo..=hi).contains(&n));
    v
}

/// Packet `i` of `len` bytes: distinct MACs, then bytes that depend on `i` and the offset.
fn packet(i: usize, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|k| (k * 31 + i * 7 + (k >> 8)) as u8)
        .collect();
    p[..6].copy_from_slice(&[0x52, 0x54, 0, 0, (i >> 8) as u8, i as u8]);
    p[6..12].copy_from_slice(&[0x02, 0xaa, 0, 0, (i >> 8) as u8, i as u8]);
    p
}

fn swapped(p: &[u8]) -> Vec<u8> {
    let mut q = p.to_vec();
    q[..6].copy_from_slice(&p[6..12]);
    q[6..12].copy_from_slice(&p[..6]);
    q
}

fn run(case: Case) {
    common::init_log();
    let started = Instant::now();
    let sock = sock_path("fwd-payload");
    let mut cmd = Command::new(rvhost_bin());
    cmd.args([
        "fwd",
        "--mode",
        "macswap",
        "--lcores",
        "0",
        "--stats-period",
        "0",
    ])
    .arg("--iface")
    .arg(&sock);
    if case.rvhost_client {
        cmd.arg("--client");
    }
    let opts = FrontendOptions {
        features: case.features,
        tx_layout: case.layout,
        mem_size: 16 << 20,
        force_small_pages: true,
        connect_timeout: Duration::from_secs(10),
        ..FrontendOptions::default()
    };
    let (mut fe, mut rv) = if case.rvhost_client {
        let mut fe = Frontend::listen(&sock, opts).unwrap();
        let rv = Child::spawn("rvhost", cmd);
        fe.accept()
            .unwrap_or_else(|e| panic!("{e}\n{}", rv.tail(20)));
        (fe, rv)
    } else {
        let rv = Child::spawn("rvhost", cmd);
        assert!(
            wait_for_socket(&sock, Duration::from_secs(10)),
            "rvhost never listened\n{}",
            rv.tail(20)
        );
        (Frontend::connect(&sock, opts).unwrap(), rv)
    };
    fe.start()
        .unwrap_or_else(|e| panic!("{e}\n{}", rv.tail(20)));
    let pkts: Vec<Vec<u8>> = case
        .sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| packet(i, n))
        .collect();
    let total_bytes: usize = pkts.iter().map(Vec::len).sum();
    let (mut sent, mut got) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < pkts.len() {
        assert!(
            Instant::now() < deadline,
            "{}: {got} of {} packets came back ({sent} sent)\n{}",
            case.name,
            pkts.len(),
            rv.tail(20)
        );
        let (rx, tx) = fe.queue_pair(0).unwrap();
        rx.post_rx(256, case.rx_buf);
        tx.reap();
        while sent < pkts.len() && sent - got < WINDOW && tx.send(&[&pkts[sent]]) == 1 {
            sent += 1;
        }
        rx.poll_rx(64, |p| {
            assert!(got < sent, "{}: a packet nobody sent", case.name);
            let want = swapped(&pkts[got]);
            assert!(!p.truncated, "{}: packet {got} truncated", case.name);
            assert_eq!(
                p.data.len(),
                want.len(),
                "{}: length of packet {got}",
                case.name
            );
            if let Some(k) = (0..want.len()).find(|&k| p.data[k] != want[k]) {
                panic!(
                    "{}: packet {got} ({} bytes) differs first at byte {k}: {:#04x} != {:#04x}",
                    case.name,
                    want.len(),
                    p.data[k],
                    want[k]
                );
            }
            got += 1;
        });
        if got < sent {
            std::thread::yield_now();
        }
    }
    fe.stop().unwrap();
    let fin = stop_rvhost(&mut rv);
    let n = pkts.len() as u64;
    assert_eq!(
        (fin.rx_pkts, fin.tx_pkts, fin.tx_drops),
        (n, n, 0),
        "{}: rvhost counters",
        case.name
    );
    assert_eq!(fin.rx_bytes, total_bytes as u64, "{}: rx bytes", case.name);
    assert_eq!(fin.tx_bytes, total_bytes as u64, "{}: tx bytes", case.name);
    assert!(
        !sock.exists() || case.rvhost_client,
        "socket file left behind"
    );
    println!(
        "{}: {} packets ({} bytes) checked in {:.2} s",
        case.name,
        n,
        total_bytes,
        started.elapsed().as_secs_f64()
    );
}

const MRG: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX;
const NO_MRG: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

#[test]
fn macswap_payloads_mergeable_60_to_9000() {
    run(Case {
        name: "mergeable, rvhost server",
        features: MRG,
        layout: TxLayout::Inline,
        sizes: sizes(60, 9000, 7),
        rx_buf: 2048,
        rvhost_client: false,
    });
}

#[test]
fn macswap_payloads_mergeable_rvhost_client() {
    run(Case {
        name: "mergeable, header apart, rvhost client",
        features: MRG,
        layout: TxLayout::Separate,
        sizes: sizes(60, 9000, 7),
        rx_buf: 2048,
        rvhost_client: true,
    });
}

#[test]
fn macswap_payloads_without_mergeable_60_to_1514() {
    run(Case {
        name: "no mergeable, header apart",
        features: NO_MRG,
        layout: TxLayout::Separate,
        sizes: sizes(60, 1514, 1),
        rx_buf: 1600,
        rvhost_client: false,
    });
}

#[test]
fn macswap_payloads_without_mergeable_large_chains() {
    run(Case {
        name: "no mergeable, 9100-byte receive chains",
        features: NO_MRG,
        layout: TxLayout::Inline,
        sizes: sizes(60, 9000, 7),
        rx_buf: 9100,
        rvhost_client: false,
    });
}
