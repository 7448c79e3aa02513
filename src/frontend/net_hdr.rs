//! The virtio-net header (virtio 1.2 §5.1.6).

use crate::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};

/// The virtio-net header (`struct virtio_net_hdr`, virtio 1.2 §5.1.6): 12 bytes with
/// VERSION_1 or MRG_RXBUF (`num_buffers` included), 10 bytes otherwise. Little-endian.
#[doc(alias = "virtio_net_hdr")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetHdr {
    /// [`F_NEEDS_CSUM`](Self::F_NEEDS_CSUM), [`F_DATA_VALID`](Self::F_DATA_VALID).
    pub flags: u8,
    /// `GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers the packet spans (MRG_RXBUF, receive only).
    pub num_buffers: u16,
}

impl NetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub const F_DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub const GSO_NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    pub const GSO_TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_UDP`.
    pub const GSO_UDP: u8 = 3;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`.
    pub const GSO_TCPV6: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_ECN`.
    pub const GSO_ECN: u8 = 0x80;
    /// Size of the header with `num_buffers`.
    pub const SIZE: usize = 12;
    /// Size of the legacy header without `num_buffers`.
    pub const LEGACY_SIZE: usize = 10;

    /// Header size for the negotiated `features`.
    pub const fn size_for(features: u64) -> usize {
        if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            Self::SIZE
        } else {
            Self::LEGACY_SIZE
        }
    }

    /// The 12 wire bytes (the first 10 are the legacy header).
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes up to 12 bytes; missing bytes read as 0.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut b = [0u8; 12];
        let n = bytes.len().min(12);
        b[..n].copy_from_slice(&bytes[..n]);
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_header_round_trip() {
        let h = NetHdr {
            flags: NetHdr::F_NEEDS_CSUM,
            gso_type: NetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b[..4], [1, 1, 54, 0]);
        assert_eq!(b[10..], [3, 0]);
        assert_eq!(NetHdr::parse(&b), h);
        let legacy = NetHdr::parse(&b[..10]);
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(NetHdr::size_for(0), 10);
        assert_eq!(NetHdr::size_for(VIRTIO_NET_F_MRG_RXBUF), 12);
        assert_eq!(NetHdr::size_for(VIRTIO_F_VERSION_1), 12);
    }
}
