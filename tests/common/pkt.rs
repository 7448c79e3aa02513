//! Packets for the data-path tests: payloads, mbufs holding them, their bytes back, and the
//! UDP frame `rvhost fwd`'s txonly sends.

use rvhost::mbuf::{Mbuf, PktCache};
use rvhost::net::ether::{ETHERTYPE_IPV4, checksum};

/// `len` bytes of a pattern that differs with `seed`.
pub fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seed * 13) as u8).collect()
}

/// Every byte of a packet, all segments.
pub fn packet_bytes(m: &Mbuf) -> Vec<u8> {
    m.segments().flat_map(|s| s.data().to_vec()).collect()
}

/// An mbuf (chained into as many segments as needed) holding `bytes`.
pub fn mbuf_of(cache: &mut PktCache, bytes: &[u8]) -> Mbuf {
    let mut head = cache.alloc().unwrap();
    let mut rest = bytes;
    let mut first = true;
    while first || !rest.is_empty() {
        let mut m = if first {
            None
        } else {
            Some(cache.alloc().unwrap())
        };
        let target = m.as_mut().unwrap_or(&mut head);
        let n = rest.len().min(target.tailroom());
        target.append(n).unwrap();
        target.data_mut().unwrap().copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Some(m) = m {
            head.chain(m).unwrap();
        }
        first = false;
    }
    head
}

/// The frame testpmd's (and `rvhost fwd`'s) txonly sends, written here from its description:
/// Ethernet, IPv4 198.18.0.1 -> 198.18.0.2 (TTL 64, header checksum), UDP 9 -> 9, zero
/// payload, `len` bytes in all (at least 42).
pub fn udp_frame(len: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let len = len.max(42);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_len = (len - 14).min(usize::from(u16::MAX)) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[198, 18, 0, 1]);
    f[30..34].copy_from_slice(&[198, 18, 0, 2]);
    let ck = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ck.to_be_bytes());
    f[34..36].copy_from_slice(&9u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}
