//! Translation between the virtio-net header's offload fields and mbuf offload flags.
//!
//! As DPDK's vhost library does by default (its "legacy" offload flags), a packet dequeued
//! from a guest carries *transmit* requests: a partial checksum becomes `TX_TCP_CKSUM` /
//! `TX_UDP_CKSUM` with `l2_len`/`l3_len`/`l4_len` set, a GSO packet `TX_TCP_SEG` /
//! `TX_UDP_SEG` with `tso_segsz`. So a packet forwarded unchanged from one guest to another is
//! enqueued with the same header it came with. A partial checksum this code cannot describe
//! with flags (an unknown protocol, or `csum_start` elsewhere than the L4 header) is completed
//! in software when the packet is one segment.

use super::ether::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, be16, checksum};
use super::hdr::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, VirtioNetHdr,
};
use crate::mbuf::{OffloadFlags as F, PktMeta};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// L2/L3/L4 facts parsed from the start of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Headers {
    l2: u16,
    l3: u16,
    ipv4: bool,
    proto: u8,
    l4: u16,
}

fn parse(frame: &[u8]) -> Option<Headers> {
    let (l2, ethertype) = match be16(frame, 12)? {
        ETHERTYPE_VLAN => (18u16, be16(frame, 16)?),
        t => (14u16, t),
    };
    let ip = usize::from(l2);
    let (l3, ipv4, proto) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ihl = u16::from(*frame.get(ip)? & 0xf) * 4;
            (ihl, true, *frame.get(ip + 9)?)
        }
        ETHERTYPE_IPV6 => (40, false, *frame.get(ip + 6)?),
        _ => return None,
    };
    let l4 = match proto {
        IPPROTO_TCP => u16::from(*frame.get(ip + usize::from(l3) + 12)? >> 4) * 4,
        IPPROTO_UDP => 8,
        _ => 0,
    };
    Some(Headers {
        l2,
        l3,
        ipv4,
        proto,
        l4,
    })
}

/// Applies a dequeued packet's header to its metadata; `head` is the start of the frame.
/// Returns true if the packet holds a partial checksum no flag describes: the caller completes
/// it with [`software_checksum`].
#[must_use]
pub fn from_virtio(hdr: &VirtioNetHdr, meta: &mut PktMeta, head: &[u8]) -> bool {
    if hdr.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
        meta.ol_flags.insert(F::RX_L4_CKSUM_GOOD);
    }
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 && hdr.gso_type == 0 {
        return false;
    }
    let parsed = parse(head);
    if let Some(h) = parsed {
        meta.l2_len = h.l2;
        meta.l3_len = h.l3;
        meta.l4_len = h.l4;
        meta.ol_flags
            .insert(if h.ipv4 { F::TX_IPV4 } else { F::TX_IPV6 });
    }
    let mut software = false;
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let l4_at = parsed.map(|h| h.l2 + h.l3);
        match (parsed.map(|h| h.proto), hdr.csum_offset) {
            (Some(IPPROTO_TCP), 16) if l4_at == Some(hdr.csum_start) => {
                meta.ol_flags.insert(F::TX_TCP_CKSUM)
            }
            (Some(IPPROTO_UDP), 6) if l4_at == Some(hdr.csum_start) => {
                meta.ol_flags.insert(F::TX_UDP_CKSUM)
            }
            _ => software = true,
        }
    }
    match hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 if hdr.gso_size != 0 => {
            meta.ol_flags.insert(F::TX_TCP_SEG);
            meta.tso_segsz = hdr.gso_size;
        }
        VIRTIO_NET_HDR_GSO_UDP if hdr.gso_size != 0 => {
            meta.ol_flags.insert(F::TX_UDP_SEG);
            meta.tso_segsz = hdr.gso_size;
        }
        _ => {}
    }
    software
}

/// Completes a partial checksum: the one's-complement sum from `start` to the end, stored at
/// `start + offset`. Out-of-range fields leave the frame alone.
pub fn software_checksum(frame: &mut [u8], start: u16, offset: u16) {
    let (start, at) = (usize::from(start), usize::from(start) + usize::from(offset));
    if at + 2 > frame.len() || start >= frame.len() {
        return;
    }
    // The partial checksum already in the field seeds the sum (it holds the pseudo-header).
    let ck = checksum(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&ck.to_be_bytes());
}

/// The header for a packet to enqueue, from its metadata (`num_buffers` left 0).
pub fn to_virtio(meta: &PktMeta) -> VirtioNetHdr {
    let mut hdr = VirtioNetHdr::default();
    let f = meta.ol_flags;
    let l4_start = meta.l2_len + meta.l3_len;
    if f.intersects(F::TX_TCP_CKSUM | F::TX_TCP_SEG) {
        hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr.csum_start = l4_start;
        hdr.csum_offset = 16;
    } else if f.intersects(F::TX_UDP_CKSUM | F::TX_UDP_SEG) {
        hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr.csum_start = l4_start;
        hdr.csum_offset = 6;
    } else if f.contains(F::RX_L4_CKSUM_GOOD) {
        hdr.flags = VIRTIO_NET_HDR_F_DATA_VALID;
    }
    if f.contains(F::TX_TCP_SEG) && meta.tso_segsz != 0 {
        hdr.gso_type = if f.contains(F::TX_IPV6) {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        hdr.gso_size = meta.tso_segsz;
        hdr.hdr_len = l4_start + meta.l4_len;
    } else if f.contains(F::TX_UDP_SEG) && meta.tso_segsz != 0 {
        hdr.gso_type = VIRTIO_NET_HDR_GSO_UDP;
        hdr.gso_size = meta.tso_segsz;
        hdr.hdr_len = l4_start + 8;
    }
    hdr
}

/// The first bytes of a packet to write instead of the original ones, with the checksums the
/// packet asks for filled in: the IPv4 header checksum (`TX_IP_CKSUM`), and the L4 checksum
/// (`TX_TCP_CKSUM`/`TX_UDP_CKSUM`) when the guest cannot take a partial one (`guest_csum`
/// false), summed over every segment. `None` when nothing is to be filled in, or the headers
/// are not in the first segment (the packet is then written as it is).
pub fn patched_prefix<'s, I: Iterator<Item = &'s [u8]>>(
    meta: &PktMeta,
    guest_csum: bool,
    segments: impl Fn() -> I,
) -> Option<([u8; 128], usize)> {
    let f = meta.ol_flags;
    let ip = f.contains(F::TX_IP_CKSUM);
    let l4 = !guest_csum && f.intersects(F::TX_TCP_CKSUM | F::TX_UDP_CKSUM | F::TX_TCP_SEG);
    if !ip && !l4 {
        return None;
    }
    let head = segments().next()?;
    let (l2, l3) = (usize::from(meta.l2_len), usize::from(meta.l3_len));
    let start = l2 + l3;
    let field = if f.intersects(F::TX_TCP_CKSUM | F::TX_TCP_SEG) {
        16
    } else {
        6
    };
    let n = if l4 { start + field + 2 } else { start };
    if l3 < 20 && ip || n > 128 || n > head.len() {
        return None;
    }
    let mut buf = [0u8; 128];
    buf[..n].copy_from_slice(&head[..n]);
    if ip {
        buf[l2 + 10..l2 + 12].fill(0);
        let ck = checksum(&buf[l2..start]);
        buf[l2 + 10..l2 + 12].copy_from_slice(&ck.to_be_bytes());
    }
    if l4 {
        // The field holds the pseudo-header sum (a partial checksum, virtio's NEEDS_CSUM
        // convention): the one's-complement sum from the L4 header to the end completes it.
        let ck = sum_from(segments(), start);
        buf[start + field..start + field + 2].copy_from_slice(&ck.to_be_bytes());
    }
    Some((buf, n))
}

/// The folded, complemented one's-complement sum of the bytes from `start` to the end,
/// across segments (an odd-length segment shifts the next one's bytes).
fn sum_from<'s>(segments: impl Iterator<Item = &'s [u8]>, start: usize) -> u16 {
    let mut sum = 0u64;
    let mut pos = 0usize;
    let mut odd = false;
    for seg in segments {
        let from = start.saturating_sub(pos).min(seg.len());
        pos += seg.len();
        for &b in &seg[from..] {
            sum += if odd { u64::from(b) } else { u64::from(b) << 8 };
            odd = !odd;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet, IPv4 (header checksum filled in), UDP, zero payload: `len` bytes (>= 42).
    fn udp_frame(len: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_len = (len - 14) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = IPPROTO_UDP;
        let ck = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ck.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        f
    }

    fn tcp_frame() -> Vec<u8> {
        let mut f = udp_frame(100, [2; 6], [4; 6]);
        f[23] = IPPROTO_TCP;
        f[34 + 12] = 5 << 4; // data offset 5 words
        f
    }

    #[test]
    fn partial_tcp_checksum_becomes_tx_flags_and_back() {
        let f = tcp_frame();
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            hdr_len: 54,
            num_buffers: 0,
        };
        let mut meta = PktMeta::default();
        assert!(!from_virtio(&hdr, &mut meta, &f));
        assert!(
            meta.ol_flags
                .contains(F::TX_TCP_CKSUM | F::TX_TCP_SEG | F::TX_IPV4)
        );
        assert_eq!(
            (meta.l2_len, meta.l3_len, meta.l4_len, meta.tso_segsz),
            (14, 20, 20, 1448)
        );
        assert_eq!(to_virtio(&meta), hdr, "forwarding keeps the header");
    }

    #[test]
    fn udp_and_ipv6_and_vlan() {
        let f = udp_frame(100, [2; 6], [4; 6]);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        let mut meta = PktMeta::default();
        assert!(!from_virtio(&hdr, &mut meta, &f));
        assert!(meta.ol_flags.contains(F::TX_UDP_CKSUM));
        assert_eq!(to_virtio(&meta).csum_offset, 6);
        let mut v6 = f[..12].to_vec();
        v6.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        v6.extend_from_slice(&[0, 1]);
        v6.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, IPPROTO_TCP, 64]);
        v6.resize(18 + 40 + 20, 0);
        v6[18 + 40 + 12] = 5 << 4;
        assert_eq!(
            parse(&v6),
            Some(Headers {
                l2: 18,
                l3: 40,
                ipv4: false,
                proto: IPPROTO_TCP,
                l4: 20
            })
        );
    }

    #[test]
    fn unknown_partial_checksum_is_completed_in_software() {
        let mut f = udp_frame(64, [2; 6], [4; 6]);
        f[23] = 0x84; // SCTP: no flag describes it
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        let head = f.clone();
        let mut meta = PktMeta::default();
        assert!(from_virtio(&hdr, &mut meta, &head));
        software_checksum(&mut f, hdr.csum_start, hdr.csum_offset);
        assert!(!meta.ol_flags.intersects(F::TX_UDP_CKSUM | F::TX_TCP_CKSUM));
        assert_eq!(checksum(&f[34..]), 0, "the checksum now verifies");
    }

    #[test]
    fn hostile_header_fields_do_not_panic() {
        let mut f = tcp_frame();
        let head = f.clone();
        for (start, off) in [(u16::MAX, u16::MAX), (99, 1), (0, 200), (200, 0)] {
            let hdr = VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: 0xff,
                csum_start: start,
                csum_offset: off,
                ..Default::default()
            };
            let mut meta = PktMeta::default();
            if from_virtio(&hdr, &mut meta, &head) {
                software_checksum(&mut f, start, off);
            }
        }
        let mut meta = PktMeta::default();
        assert!(!from_virtio(&VirtioNetHdr::default(), &mut meta, &[]));
        assert_eq!(meta, PktMeta::default());
    }

    #[test]
    fn ip_checksum_is_filled_in_the_prefix() {
        let mut f = udp_frame(64, [2; 6], [4; 6]);
        f[24..26].fill(0xee);
        let mut meta = PktMeta::default();
        assert!(patched_prefix(&meta, false, || [&f[..]].into_iter()).is_none());
        meta.ol_flags.insert(F::TX_IP_CKSUM);
        meta.l2_len = 14;
        meta.l3_len = 20;
        let (buf, n) = patched_prefix(&meta, true, || [&f[..]].into_iter()).unwrap();
        assert_eq!(n, 34);
        assert_eq!(checksum(&buf[14..34]), 0);
        meta.l3_len = 200;
        assert!(patched_prefix(&meta, true, || [&f[..]].into_iter()).is_none());
    }

    /// A UDP datagram whose checksum field holds the pseudo-header sum, as a guest with
    /// NEEDS_CSUM sends it.
    fn partial_udp(len: usize) -> Vec<u8> {
        let mut f = udp_frame(len, [2; 6], [4; 6]);
        for (i, b) in f[42..].iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        let udp_len = (len - 34) as u32;
        let mut pseudo = 0u32;
        for w in [0xc612u32, 0x0001, 0xc612, 0x0002, 17, udp_len] {
            pseudo += w;
        }
        let pseudo = ((pseudo & 0xffff) + (pseudo >> 16)) as u16;
        f[40..42].copy_from_slice(&pseudo.to_be_bytes());
        f
    }

    fn udp_verifies(f: &[u8]) -> bool {
        // Pseudo-header + UDP header and data sum to 0xffff when the checksum is right.
        let udp_len = (f.len() - 34) as u32;
        let mut sum = 0u32;
        for w in [0xc612u32, 0x0001, 0xc612, 0x0002, 17, udp_len] {
            sum += w;
        }
        sum += u32::from(!checksum(&f[34..]));
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn l4_checksum_is_completed_for_guests_without_guest_csum() {
        let f = partial_udp(301);
        assert!(!udp_verifies(&f));
        let mut meta = PktMeta::default();
        meta.ol_flags.insert(F::TX_UDP_CKSUM | F::TX_IPV4);
        meta.l2_len = 14;
        meta.l3_len = 20;
        assert!(patched_prefix(&meta, true, || [&f[..]].into_iter()).is_none());
        // One segment, and the same packet split at odd and even offsets.
        for cut in [f.len(), 41, 42, 43, 100, 101] {
            let (a, b) = f.split_at(cut);
            let segs = [a, b];
            let Some((buf, n)) = patched_prefix(&meta, false, || segs.iter().copied()) else {
                assert!(cut < 42, "headers in the first segment must be patched");
                continue;
            };
            let mut done = buf[..n].to_vec();
            done.extend_from_slice(&f[n..]);
            assert!(udp_verifies(&done), "cut at {cut}");
        }
    }
}
