//! Ethernet helpers the data path needs (the offload code parses frames with them) and that
//! an application rewriting frames can use: EtherTypes, the L3 header's offset past one VLAN
//! tag, and the Internet checksum.
//!
//! Every function checks lengths before touching a field; a frame too short for what it claims
//! to be gives `None`.

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Bytes of an Ethernet header without a VLAN tag.
pub const ETH_HLEN: usize = 14;

pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Offset and EtherType of the L3 header, past one VLAN tag if there is one; `None` if the
/// frame is too short to say.
pub fn l3_header(frame: &[u8]) -> Option<(usize, u16)> {
    let t = be16(frame, 12)?;
    if t == ETHERTYPE_VLAN {
        Some((ETH_HLEN + 4, be16(frame, 16)?))
    } else {
        Some((ETH_HLEN, t))
    }
}

/// One's-complement sum of 16-bit words (RFC 1071), folded.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_header_with_its_checksum_is_zero() {
        // RFC 1071's example words, then the same with their checksum appended.
        let words = [0x00u8, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let ck = checksum(&words);
        assert_eq!(ck, !0xddf2);
        let mut with = words.to_vec();
        with.extend_from_slice(&ck.to_be_bytes());
        assert_eq!(checksum(&with), 0);
        // An odd length pads with a zero byte.
        assert_eq!(checksum(&[0x12]), !0x1200);
    }

    #[test]
    fn l3_header_skips_one_vlan_tag_and_refuses_runts() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        assert_eq!(l3_header(&f), Some((14, ETHERTYPE_IPV4)));
        let mut v = vec![0u8; 12];
        v.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        v.extend_from_slice(&[0, 5]);
        v.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(l3_header(&v), Some((18, ETHERTYPE_ARP)));
        assert_eq!(l3_header(&v[..17]), None);
        assert_eq!(l3_header(&f[..13]), None);
    }
}
