//! `rvhost fwd` modes driven by Rust frontends (`rvhost::frontend::Frontend`) as guests, one
//! process each: two ports forwarding to each other on two lcores (io), the same with
//! several queue pairs (each queue pair forwarded to its namesake), txonly frames byte for
//! byte with exact counts, icmpecho answering ARP and ICMP echo and dropping the rest, and a
//! storm of abrupt disconnects in the middle of traffic (the `destroy_device` handshake with
//! the lcores) after which the process still forwards and exits cleanly. 4 KiB pages only.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::child::{Child, parse_final, rvhost_bin, wait_for_socket};
use common::pkt::udp_frame;
use common::sock_path;
use nix::sys::signal::Signal;
use rvhost::frontend::{Frontend, FrontendOptions};
use rvhost::net::ether::{ETHERTYPE_ARP, checksum};

fn opts() -> FrontendOptions {
    FrontendOptions {
        mem_size: 16 << 20,
        force_small_pages: true,
        connect_timeout: Duration::from_secs(10),
        ..FrontendOptions::default()
    }
}

/// Starts `rvhost fwd` with `args` on ports `socks` (rvhost listens) and waits for the sockets.
fn spawn(args: &[&str], socks: &[PathBuf]) -> Child {
    common::init_log();
    let mut cmd = Command::new(rvhost_bin());
    cmd.args(["fwd", "--stats-period", "0"]).args(args);
    for s in socks {
        cmd.arg("--iface").arg(s);
    }
    let rv = Child::spawn("rvhost", cmd);
    for s in socks {
        assert!(
            wait_for_socket(s, Duration::from_secs(10)),
            "rvhost never listened on {}\n{}",
            s.display(),
            rv.tail(20)
        );
    }
    rv
}

fn connect(sock: &PathBuf) -> Frontend {
    let mut fe = Frontend::connect(sock, opts()).unwrap();
    fe.start().unwrap();
    fe
}

/// Stops rvhost with SIGINT; returns the FINAL counters of every port.
fn stop(rv: &mut Child) -> std::collections::HashMap<usize, common::child::Final> {
    rv.signal(Signal::SIGINT);
    let st = rv.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "rvhost did not exit cleanly: {st:?}\n{}",
        rv.tail(40)
    );
    parse_final(&rv.stdout())
}

/// Waits until rvhost runs a device on each of `ports`, then a moment for its lcores to take
/// them: a packet forwarded to a port whose device an lcore has not yet seen is dropped (and
/// counted), which [`pass_on`], keeping a window of packets in flight, would wait for forever.
fn wait_running(rv: &Child, ports: usize) {
    for p in 0..ports {
        let tag = format!("port {p}: vid ");
        assert!(
            rv.wait_stderr(Duration::from_secs(10), |l| l.contains(&tag)
                && l.contains("is running"))
                .is_some(),
            "port {p} has no device\n{}",
            rv.tail(40)
        );
    }
    std::thread::sleep(Duration::from_millis(200));
}

fn frame(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k ^ (i * 131)) as u8).collect()
}

/// Sends `pkts` on `from` and receives them on `to`, keeping at most 32 in flight.
fn pass(from: &mut Frontend, to: &mut Frontend, pkts: &[Vec<u8>], what: &str) {
    pass_on(from, to, 0, pkts, what);
}

/// [`pass`] on queue pair `q` of both frontends; packets must arrive on `q` and no other.
fn pass_on(from: &mut Frontend, to: &mut Frontend, q: u16, pkts: &[Vec<u8>], what: &str) {
    let (mut sent, mut got) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got < pkts.len() {
        assert!(
            Instant::now() < deadline,
            "{what}: {got}/{} received",
            pkts.len()
        );
        to.rx(q).unwrap().post_rx(256, 2048);
        let tx = from.tx(q).unwrap();
        tx.reap();
        while sent < pkts.len() && sent - got < 32 && tx.send(&[&pkts[sent]]) == 1 {
            sent += 1;
        }
        to.rx(q).unwrap().poll_rx(64, |p| {
            assert_eq!(p.data, &pkts[got][..], "{what}: packet {got}");
            got += 1;
        });
        for other in (0..to.queue_pairs()).filter(|&o| o != q) {
            let rx = to.rx(other).unwrap();
            rx.post_rx(8, 2048);
            rx.poll_rx(64, |_| {
                panic!("{what}: a packet arrived on queue pair {other}")
            });
        }
    }
}

#[test]
fn io_forwards_between_two_ports_on_two_lcores() {
    let socks = [sock_path("fwd-io-a"), sock_path("fwd-io-b")];
    let mut rv = spawn(&["--mode", "io", "--lcores", "0,1"], &socks);
    let mut a = connect(&socks[0]);
    let mut b = connect(&socks[1]);
    wait_running(&rv, 2);
    let ab: Vec<Vec<u8>> = (0..500).map(|i| frame(i, 60 + i % 1400)).collect();
    let ba: Vec<Vec<u8>> = (0..300).map(|i| frame(i + 7, 1514 - i)).collect();
    pass(&mut a, &mut b, &ab, "port 0 → port 1");
    pass(&mut b, &mut a, &ba, "port 1 → port 0");
    let f = stop(&mut rv);
    // Nothing recorded without --record-core-cycles or --record-burst-stats.
    assert!(!rv.stdout().iter().any(|l| l.starts_with("FINAL-LCORE")));
    let bytes = |v: &[Vec<u8>]| v.iter().map(|p| p.len() as u64).sum::<u64>();
    assert_eq!(
        (f[&0].rx_pkts, f[&0].tx_pkts, f[&0].tx_drops),
        (500, 300, 0)
    );
    assert_eq!(
        (f[&1].rx_pkts, f[&1].tx_pkts, f[&1].tx_drops),
        (300, 500, 0)
    );
    assert_eq!((f[&0].rx_bytes, f[&1].tx_bytes), (bytes(&ab), bytes(&ab)));
    assert_eq!((f[&1].rx_bytes, f[&0].tx_bytes), (bytes(&ba), bytes(&ba)));
}

/// The value of `key=` in a `FINAL-LCORE` line.
fn field(line: &str, key: &str) -> u64 {
    let tag = format!(" {key}=");
    let at = line
        .find(&tag)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + tag.len();
    line[at..].split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn record_options_count_every_packet_and_burst() {
    let socks = [sock_path("fwd-rec-a"), sock_path("fwd-rec-b")];
    let mut rv = spawn(
        &[
            "--mode",
            "io",
            "--lcores",
            "0",
            "--record-core-cycles",
            "--record-burst-stats",
        ],
        &socks,
    );
    let mut a = connect(&socks[0]);
    let mut b = connect(&socks[1]);
    wait_running(&rv, 2);
    let ab: Vec<Vec<u8>> = (0..500).map(|i| frame(i, 60 + i % 200)).collect();
    pass(&mut a, &mut b, &ab, "port 0 → port 1");
    let f = stop(&mut rv);
    assert_eq!((f[&0].rx_pkts, f[&1].tx_pkts), (500, 500));
    let out = rv.stdout();
    let fin: Vec<&String> = out
        .iter()
        .filter(|l| l.starts_with("FINAL-LCORE"))
        .collect();
    assert_eq!(fin.len(), 1, "one lcore, one line\n{}", rv.tail(20));
    let l = fin[0];
    assert!(l.starts_with("FINAL-LCORE lcore=0 cpu=0 "), "{l}");
    // Every packet received counts once, with the cycles of the polls that brought them.
    assert_eq!(field(l, "pkts"), 500, "{l}");
    let (busy, total) = (field(l, "busy_cycles"), field(l, "total_cycles"));
    assert!(0 < busy && busy < total, "{l}");
    // Each receive burst with packets was sent on as one transmit burst; the lcore also
    // polled while the frontends were quiet.
    let (rx, empty, tx) = (
        field(l, "rx_bursts"),
        field(l, "empty_rx_bursts"),
        field(l, "tx_bursts"),
    );
    assert!(empty > 0 && rx > empty, "{l}");
    assert_eq!(tx, rx - empty, "{l}");
    assert!(tx <= 500, "{l}");
    for tag in [
        "lcore 0 (CPU 0): CPU cycles/packet=",
        "lcore 0 (CPU 0): RX-bursts: ",
    ] {
        assert!(
            out.iter().any(|l| l.starts_with(tag)),
            "no {tag}\n{}",
            rv.tail(20)
        );
    }
}

#[test]
fn io_keeps_each_queue_pair_apart() {
    // rvhost offers 3 queue pairs; the guests enable 2 (the third is polled, never ready).
    let socks = [sock_path("fwd-mq-a"), sock_path("fwd-mq-b")];
    let mut rv = spawn(
        &["--mode", "io", "--lcores", "0,1", "--queues", "3"],
        &socks,
    );
    let two = FrontendOptions {
        queue_pairs: 2,
        ..opts()
    };
    let mut a = Frontend::connect(&socks[0], two.clone()).unwrap();
    a.start().unwrap();
    let mut b = Frontend::connect(&socks[1], two).unwrap();
    b.start().unwrap();
    wait_running(&rv, 2);
    let on0: Vec<Vec<u8>> = (0..300).map(|i| frame(i, 60 + i % 1000)).collect();
    let on1: Vec<Vec<u8>> = (0..200).map(|i| frame(i + 3, 1514 - i)).collect();
    pass_on(&mut a, &mut b, 0, &on0, "port 0 queue 0 → port 1");
    pass_on(&mut a, &mut b, 1, &on1, "port 0 queue 1 → port 1");
    pass_on(&mut b, &mut a, 1, &on0[..50], "port 1 queue 1 → port 0");
    rv.signal(Signal::SIGINT);
    assert!(
        rv.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        rv.tail(40)
    );
    let out = rv.stdout();
    let f = parse_final(&out);
    let q = common::child::parse_final_queues(&out);
    assert_eq!((f[&0].rx_pkts, f[&0].tx_pkts), (500, 50));
    assert_eq!((f[&1].rx_pkts, f[&1].tx_pkts), (50, 500));
    let counts = |p, k| (q[&(p, k)].rx_pkts, q[&(p, k)].tx_pkts, q[&(p, k)].tx_drops);
    assert_eq!(counts(0, 0), (300, 0, 0));
    assert_eq!(counts(0, 1), (200, 50, 0));
    assert_eq!(counts(0, 2), (0, 0, 0));
    assert_eq!(counts(1, 0), (0, 300, 0));
    assert_eq!(counts(1, 1), (50, 200, 0));
    assert_eq!(counts(1, 2), (0, 0, 0));
}

#[test]
fn txonly_frames_are_exact_and_counted() {
    let sock = sock_path("fwd-txonly");
    let mut rv = spawn(
        &[
            "--mode", "txonly", "--txpkts", "100", "--burst", "8", "--lcores", "0",
        ],
        std::slice::from_ref(&sock),
    );
    let mut fe = connect(&sock);
    let mac = [2, 0, 0, 0, 0, 0];
    let want = udp_frame(100, mac, mac);
    let mut got = 0u64;
    let check = |got: &mut u64, p: rvhost::frontend::RxPacket<'_>| {
        assert_eq!(p.data, &want[..], "frame {got}");
        *got += 1;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while got < 2000 {
        assert!(Instant::now() < deadline, "{got} frames received");
        let rx = fe.rx(0).unwrap();
        rx.post_rx(256, 2048);
        rx.poll_rx(256, |p| check(&mut got, p));
    }
    let f = stop(&mut rv);
    // rvhost is gone: whatever it enqueued is in the ring now.
    fe.rx(0)
        .unwrap()
        .poll_rx(usize::MAX, |p| check(&mut got, p));
    assert_eq!(f[&0].tx_pkts, got, "every frame rvhost counted arrived");
    assert_eq!(f[&0].tx_bytes, got * 100);
    assert_eq!(f[&0].rx_pkts, 0);
}

fn arp_request(sender: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[192, 0, 2, 2, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1]);
    f.resize(60, 0);
    f
}

fn ping(src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let mut f = udp_frame(98, src, dst);
    f[23] = 1; // ICMP
    f[24..26].fill(0);
    let ck = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ck.to_be_bytes());
    let icmp = &mut f[34..];
    icmp.fill(0x5a);
    icmp[..4].copy_from_slice(&[8, 0, 0, 0]);
    let ck = checksum(icmp);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());
    f
}

#[test]
fn icmpecho_answers_arp_and_ping_and_drops_the_rest() {
    let sock = sock_path("fwd-echo");
    let mut rv = spawn(
        &["--mode", "icmpecho", "--lcores", "0"],
        std::slice::from_ref(&sock),
    );
    let mut fe = connect(&sock);
    let guest = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let port = [2, 0, 0, 0, 0, 0];
    let udp = udp_frame(64, guest, port);
    let arp = arp_request(guest);
    let echo = ping(guest, port);
    let runt = echo[..40].to_vec();
    fe.rx(0).unwrap().post_rx(64, 2048);
    let (rx, tx) = fe.queue_pair(0).unwrap();
    assert_eq!(tx.send(&[&udp, &arp, &runt, &echo]), 4);
    let mut replies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replies.len() < 2 && Instant::now() < deadline {
        replies.extend(rx.recv(8));
    }
    std::thread::sleep(Duration::from_millis(100));
    replies.extend(rx.recv(8));
    assert_eq!(
        replies.len(),
        2,
        "exactly the ARP and the echo are answered"
    );
    let (a, e) = (&replies[0], &replies[1]);
    assert_eq!((&a[0..6], &a[6..12], a[21]), (&guest[..], &port[..], 2));
    assert_eq!(&a[22..28], &port, "ARP sender is the port's MAC");
    assert_eq!((&e[0..6], &e[6..12], e[34]), (&guest[..], &port[..], 0));
    assert_eq!(checksum(&e[34..]), 0, "ICMP checksum of the reply");
    let f = stop(&mut rv);
    assert_eq!((f[&0].rx_pkts, f[&0].tx_pkts, f[&0].tx_drops), (4, 2, 0));
}

#[test]
fn abrupt_disconnects_during_traffic_leave_a_working_forwarder() {
    let sock = sock_path("fwd-storm");
    let mut rv = spawn(
        &["--mode", "macswap", "--lcores", "0"],
        std::slice::from_ref(&sock),
    );
    let pkts: Vec<Vec<u8>> = (0..64).map(|i| frame(i, 64 + i * 20)).collect();
    let refs: Vec<&[u8]> = pkts.iter().map(Vec::as_slice).collect();
    for round in 0..20 {
        let mut fe = connect(&sock);
        let (rx, tx) = fe.queue_pair(0).unwrap();
        rx.post_rx(128, 2048);
        assert!(tx.send(&refs) > 0);
        // Take some back, then vanish with the rest in flight.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = 0;
        while got < round && Instant::now() < deadline {
            got += rx.recv(8).len();
        }
        drop(fe);
    }
    // Still forwarding, byte for byte.
    let mut fe = connect(&sock);
    let swapped: Vec<Vec<u8>> = pkts
        .iter()
        .map(|p| {
            let mut q = p.clone();
            q[..6].copy_from_slice(&p[6..12]);
            q[6..12].copy_from_slice(&p[..6]);
            q
        })
        .collect();
    let (rx, tx) = fe.queue_pair(0).unwrap();
    rx.post_rx(128, 2048);
    assert_eq!(tx.send(&refs), refs.len());
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < swapped.len() && Instant::now() < deadline {
        got.extend(rx.recv(64));
    }
    assert_eq!(got, swapped);
    let f = stop(&mut rv);
    let f = f[&0];
    assert_eq!(f.rx_pkts, f.tx_pkts + f.tx_drops, "{f:?}");
    assert!(f.tx_pkts >= 64 + (0..20).sum::<u64>(), "{f:?}");
    assert!(!sock.exists());
}

/// No echo reply is dropped while control messages hold the vrings: a frontend pings `rvhost
/// fwd --mode icmpecho` without pause (32 in flight) while it replaces the dirty log again and
/// again (SET_LOG_BASE locks every vring for a moment, as a live migration's start does with
/// SET_LOG_BASE, SET_FEATURES with LOG_ALL and SET_VRING_ADDR), and every ping is answered.
/// A data-path burst never waits for a vring's lock (it returns 0, `lock_busy`); `rvhost fwd`
/// tries a reply again while the lock was the reason, as DPDK's enqueue waits for the lock,
/// instead of dropping it (`qemu-migrate.sh --packed --postcopy` once lost a reply so at the
/// switch-over). Both ring layouts.
#[test]
fn icmpecho_drops_no_reply_while_control_messages_hold_the_vrings() {
    for packed in [false, true] {
        let sock = sock_path(if packed { "fwd-lock-p" } else { "fwd-lock-s" });
        let mut args = vec!["--mode", "icmpecho", "--lcores", "0"];
        if packed {
            args.push("--packed");
        }
        let mut rv = spawn(&args, std::slice::from_ref(&sock));
        let o = FrontendOptions {
            dirty_log: true,
            packed,
            ..opts()
        };
        let mut fe = Frontend::connect(&sock, o).unwrap();
        fe.start().unwrap();
        wait_running(&rv, 1);
        let echo = ping([0x52, 0x54, 0, 0x12, 0x34, 0x56], [2, 0, 0, 0, 0, 0]);
        let (mut sent, mut got, mut logs) = (0usize, 0usize, 0usize);
        let churn = Instant::now() + Duration::from_secs(5);
        let end = churn + Duration::from_secs(5);
        while got < sent || Instant::now() < churn {
            if Instant::now() > end {
                break;
            }
            let (rx, tx) = fe.queue_pair(0).unwrap();
            rx.post_rx(256, 2048);
            tx.reap();
            while Instant::now() < churn && sent - got < 32 && tx.send(&[&echo]) == 1 {
                sent += 1;
            }
            got += rx.recv(64).len();
            if Instant::now() < churn {
                fe.replace_dirty_log().unwrap();
                logs += 1;
            }
        }
        let what = format!(
            "{} rings: {sent} pings, {got} replies, {logs} SET_LOG_BASEs",
            if packed { "packed" } else { "split" }
        );
        assert!(sent > 1000 && logs > 100, "{what}");
        let f = stop(&mut rv);
        assert_eq!(
            (f[&0].rx_pkts, f[&0].tx_pkts, f[&0].tx_drops),
            (sent as u64, sent as u64, 0),
            "{what}: replies dropped"
        );
        assert_eq!(got, sent, "{what}");
    }
}
