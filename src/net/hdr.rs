//! The virtio-net header (virtio 1.2 §5.1.6) that precedes every packet in a virtqueue.

use crate::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use crate::memory::Pod;

/// `flags`: the checksum from `csum_start` on is partial and must be completed.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type` bit: the packet has ECN (CWR) set.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr_mrg_rxbuf` (12 bytes); the legacy header without MRG_RXBUF is the
/// first 10 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (L2 to L4).
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum is stored, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers this packet spans (MRG_RXBUF, receive side).
    pub num_buffers: u16,
}

// SAFETY: two u8 and five u16 fields: 12 bytes, every field naturally aligned at its offset, no
// padding, and any bit pattern is valid.
unsafe impl Pod for VirtioNetHdr {}

impl VirtioNetHdr {
    /// Serialises into the first `len` (10 or 12) bytes of `out`, native byte order as the
    /// spec requires for VERSION_1 (little-endian) on the little-endian hosts rvhost runs on.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Parses the first 10 or 12 bytes (`num_buffers` is 0 for 10).
    pub fn from_bytes(b: &[u8; 12], len: usize) -> VirtioNetHdr {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: if len >= 12 { u16_at(10) } else { 0 },
        }
    }
}

/// Header length for the negotiated features: 12 with VERSION_1 or MRG_RXBUF, else 10.
#[inline]
pub fn hdr_len(features: u64) -> usize {
    if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(hdr_len(0), 10);
        assert_eq!(hdr_len(VIRTIO_F_VERSION_1), 12);
        assert_eq!(hdr_len(VIRTIO_NET_F_MRG_RXBUF), 12);
    }

    #[test]
    fn round_trip() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        assert_eq!(VirtioNetHdr::from_bytes(&h.to_bytes(), 12), h);
        let legacy = VirtioNetHdr::from_bytes(&h.to_bytes(), 10);
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(legacy.gso_size, 1448);
        assert_eq!(std::mem::size_of::<VirtioNetHdr>(), 12);
    }
}
