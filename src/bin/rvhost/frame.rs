//! The UDP test frame `rvhost fwd`'s `txonly` and `rvhost bench` send (as testpmd's
//! `txonly`).

use rvhost::net::ether::{ETH_HLEN, ETHERTYPE_IPV4, checksum};

/// The frame `txonly` sends (as testpmd's): Ethernet, IPv4 198.18.0.1 → 198.18.0.2, UDP port
/// 9 → 9, zero payload, `len` bytes in all (at least 42; shorter lengths give 42 bytes).
pub fn udp_frame(len: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let len = len.max(42);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_len = (len - ETH_HLEN).min(usize::from(u16::MAX)) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    let ck = checksum(ip);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txonly_frame_is_well_formed() {
        let f = udp_frame(64, [2, 0, 0, 0, 0, 1], [4; 6]);
        assert_eq!(f.len(), 64);
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 50);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 30);
        assert_eq!(udp_frame(10, [2; 6], [4; 6]).len(), 42);
    }
}
