//! What the forwarding modes do to a frame (as DPDK testpmd's): MAC swap, and ARP and ICMP
//! echo replies for `icmpecho`.
//!
//! Every function checks lengths before touching a field; a frame too short for what it claims
//! to be is left alone (`false` / [`Echo::Ignored`]).

use rvhost::net::ether::{ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, l3_header};

/// Swaps the destination and source MAC addresses. False if the frame is shorter than an
/// Ethernet header.
pub fn macswap(frame: &mut [u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return false;
    }
    let (dst, rest) = frame.split_at_mut(6);
    dst.swap_with_slice(&mut rest[..6]);
    true
}

/// What [`icmpecho`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// An ARP request, turned into the reply.
    ArpReply,
    /// An ICMP echo request, turned into the reply.
    IcmpReply,
    /// Anything else: to be dropped.
    Ignored,
}

/// testpmd's `icmpecho`: answers an ARP request for any IPv4 address with `mac`, and an ICMP
/// echo request to any address, rewriting the frame in place into the reply.
pub fn icmpecho(frame: &mut [u8], mac: [u8; 6]) -> Echo {
    let Some((off, ethertype)) = l3_header(frame) else {
        return Echo::Ignored;
    };
    match ethertype {
        ETHERTYPE_ARP if arp_reply(frame, off, mac) => Echo::ArpReply,
        ETHERTYPE_IPV4 if icmp_reply(frame, off) => Echo::IcmpReply,
        _ => Echo::Ignored,
    }
}

fn arp_reply(frame: &mut [u8], off: usize, mac: [u8; 6]) -> bool {
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request): 28 bytes.
    let Some(arp) = frame.get_mut(off..off + 28) else {
        return false;
    };
    if arp[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return false;
    }
    arp[7] = 2; // reply
    let mut sha = [0u8; 6];
    sha.copy_from_slice(&arp[8..14]);
    let mut spa = [0u8; 4];
    spa.copy_from_slice(&arp[14..18]);
    let mut tpa = [0u8; 4];
    tpa.copy_from_slice(&arp[24..28]);
    arp[8..14].copy_from_slice(&mac); // sender: us
    arp[14..18].copy_from_slice(&tpa); // sender IP: the address asked for
    arp[18..24].copy_from_slice(&sha); // target: the asker
    arp[24..28].copy_from_slice(&spa);
    frame[0..6].copy_from_slice(&sha);
    frame[6..12].copy_from_slice(&mac);
    true
}

fn icmp_reply(frame: &mut [u8], off: usize) -> bool {
    let Some(&vihl) = frame.get(off) else {
        return false;
    };
    let ihl = usize::from(vihl & 0xf) * 4;
    if vihl >> 4 != 4 || ihl < 20 || frame.get(off + 9) != Some(&1) {
        return false;
    }
    let icmp = off + ihl;
    // ICMP type 8 (echo request), code 0.
    if frame.get(icmp) != Some(&8) || frame.get(icmp + 1) != Some(&0) || frame.len() < icmp + 8 {
        return false;
    }
    // Swap IPv4 addresses: the header checksum is a sum, unchanged by the swap.
    let (a, b) = frame[off + 12..off + 20].split_at_mut(4);
    a.swap_with_slice(b);
    frame[icmp] = 0; // echo reply
    // RFC 1624 incremental update: the type went from 8 to 0 in the high byte of the first
    // 16-bit word, so the checksum grows by 0x0800 (one's complement).
    let ck = u16::from_be_bytes([frame[icmp + 2], frame[icmp + 3]]);
    let sum = u32::from(ck) + 0x0800;
    let ck = ((sum & 0xffff) + (sum >> 16)) as u16;
    frame[icmp + 2..icmp + 4].copy_from_slice(&ck.to_be_bytes());
    macswap(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::udp_frame;
    use rvhost::net::ether::{ETHERTYPE_VLAN, checksum};

    const US: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const HIM: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn arp_request() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&HIM);
        f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&HIM);
        f.extend_from_slice(&[192, 0, 2, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[192, 0, 2, 1]);
        f.resize(60, 0);
        f
    }

    fn ping() -> Vec<u8> {
        let mut f = udp_frame(98, HIM, US);
        f[14 + 9] = 1; // ICMP
        f[26..30].copy_from_slice(&[192, 0, 2, 2]);
        f[30..34].copy_from_slice(&[192, 0, 2, 1]);
        f[24..26].copy_from_slice(&[0, 0]);
        let ck = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ck.to_be_bytes());
        let icmp = &mut f[34..];
        icmp.fill(0xab);
        icmp[0] = 8;
        icmp[1] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let ck = checksum(icmp);
        icmp[2..4].copy_from_slice(&ck.to_be_bytes());
        f
    }

    #[test]
    fn macswap_swaps_and_refuses_runts() {
        let mut f = udp_frame(64, US, HIM);
        assert!(macswap(&mut f));
        assert_eq!(&f[0..6], &US);
        assert_eq!(&f[6..12], &HIM);
        assert!(!macswap(&mut [0u8; 13]));
    }

    #[test]
    fn arp_requests_are_answered_for_any_address() {
        let mut f = arp_request();
        assert_eq!(icmpecho(&mut f, US), Echo::ArpReply);
        assert_eq!(&f[0..6], &HIM);
        assert_eq!(&f[6..12], &US);
        assert_eq!(f[21], 2, "op = reply");
        assert_eq!(&f[22..28], &US, "sender MAC");
        assert_eq!(
            &f[28..32],
            &[192, 0, 2, 1],
            "sender IP = the address asked for"
        );
        assert_eq!(&f[32..38], &HIM);
        assert_eq!(&f[38..42], &[192, 0, 2, 2]);
        // A reply is not answered again.
        assert_eq!(icmpecho(&mut f, US), Echo::Ignored);
    }

    #[test]
    fn echo_requests_become_valid_replies() {
        let mut f = ping();
        assert_eq!(icmpecho(&mut f, US), Echo::IcmpReply);
        assert_eq!(&f[0..6], &HIM);
        assert_eq!(&f[26..30], &[192, 0, 2, 1]);
        assert_eq!(&f[30..34], &[192, 0, 2, 2]);
        assert_eq!(f[34], 0);
        assert_eq!(checksum(&f[34..]), 0, "ICMP checksum still verifies");
        assert_eq!(checksum(&f[14..34]), 0, "IP checksum still verifies");
    }

    #[test]
    fn short_or_other_frames_are_ignored() {
        let full = ping();
        for n in 0..42 {
            let mut f = full[..n].to_vec();
            assert_eq!(icmpecho(&mut f, US), Echo::Ignored, "{n} bytes");
        }
        let mut udp = udp_frame(64, HIM, US);
        assert_eq!(icmpecho(&mut udp, US), Echo::Ignored);
        let arp = arp_request();
        assert_eq!(icmpecho(&mut arp[..30].to_vec(), US), Echo::Ignored);
    }

    #[test]
    fn vlan_tagged_echo_is_answered() {
        let plain = ping();
        let mut f = plain[..12].to_vec();
        f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f.extend_from_slice(&[0, 5]);
        f.extend_from_slice(&plain[12..]);
        assert_eq!(icmpecho(&mut f, US), Echo::IcmpReply);
        assert_eq!(checksum(&f[38..]), 0);
    }
}
