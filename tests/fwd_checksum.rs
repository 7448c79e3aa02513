//! A guest without GUEST_CSUM must never receive a partial checksum: a packet forwarded from a
//! guest that offloaded its UDP checksum (NEEDS_CSUM) reaches it completed in software.
mod common;
use common::child::{Child, rvhost_bin, stop_rvhost, wait_for_socket};
use common::pkt::udp_frame;
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM};
use rvhost::frontend::{Frontend, FrontendOptions, NetHdr};
use rvhost::net::ether::checksum;
use std::process::Command;
use std::time::{Duration, Instant};

fn udp_ok(f: &[u8]) -> bool {
    // pseudo header + UDP segment must sum to 0xffff (checksum() returns !sum => 0)
    let udp = &f[34..];
    let mut ph = Vec::new();
    ph.extend_from_slice(&f[26..34]);
    ph.extend_from_slice(&[0, 17]);
    ph.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    ph.extend_from_slice(udp);
    checksum(&ph) == 0
}

#[test]
fn partial_checksum_to_guest_without_guest_csum() {
    let sock = common::sock_path("repro");
    let mut cmd = Command::new(rvhost_bin());
    cmd.args([
        "fwd",
        "--mode",
        "io",
        "--lcores",
        "0",
        "--stats-period",
        "0",
        "--iface",
    ])
    .arg(&sock);
    let mut rv = Child::spawn("rvhost", cmd);
    assert!(wait_for_socket(&sock, Duration::from_secs(5)));
    let opts = FrontendOptions {
        features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CSUM,
        mem_size: 16 << 20,
        force_small_pages: true,
        ..FrontendOptions::default()
    };
    let mut fe = Frontend::connect(&sock, opts).unwrap();
    let neg = fe.start().unwrap();
    println!("negotiated {:#x}", neg.features);
    // UDP frame with payload, partial checksum = ~pseudo-header sum (as Linux sends with NEEDS_CSUM)
    let mut f = udp_frame(100, [2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 0]);
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8 * 3 + 1;
    }
    let udp_len = (f.len() - 34) as u16;
    let mut ph = Vec::new();
    ph.extend_from_slice(&f[26..34]);
    ph.extend_from_slice(&[0, 17]);
    ph.extend_from_slice(&udp_len.to_be_bytes());
    let partial = !checksum(&ph); // folded sum, not complemented
    f[40..42].copy_from_slice(&partial.to_be_bytes());
    let hdr = NetHdr {
        flags: NetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..NetHdr::default()
    };
    let (rx, tx) = fe.queue_pair(0).unwrap();
    rx.post_rx(16, 2048);
    assert_eq!(tx.send_with_hdr(&hdr, &[&f]), 1);
    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.is_none() && Instant::now() < deadline {
        rx.poll_rx(1, |p| got = Some((p.hdr, p.data.to_vec())));
    }
    let (h, data) = got.expect("packet back");
    println!("received hdr {h:?}; udp checksum valid: {}", udp_ok(&data));
    stop_rvhost(&mut rv);
    assert!(
        h.flags & NetHdr::F_NEEDS_CSUM != 0 || udp_ok(&data),
        "guest got a partial checksum with flags {:#x}",
        h.flags
    );
}
