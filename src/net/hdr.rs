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
/// first 10 bytes. Little-endian on the wire.
///
/// The data path and the virtio-user front-end share it; the front-end re-exports it as
/// [`frontend::NetHdr`](crate::frontend::NetHdr).
#[doc(alias = "virtio_net_hdr")]
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
    /// [`VIRTIO_NET_HDR_F_NEEDS_CSUM`].
    pub const F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    /// [`VIRTIO_NET_HDR_F_DATA_VALID`].
    pub const F_DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID;
    /// [`VIRTIO_NET_HDR_GSO_NONE`].
    pub const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE;
    /// [`VIRTIO_NET_HDR_GSO_TCPV4`].
    pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4;
    /// [`VIRTIO_NET_HDR_GSO_UDP`].
    pub const GSO_UDP: u8 = VIRTIO_NET_HDR_GSO_UDP;
    /// [`VIRTIO_NET_HDR_GSO_TCPV6`].
    pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6;
    /// [`VIRTIO_NET_HDR_GSO_ECN`].
    pub const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN;
    /// Size of the header with `num_buffers`.
    pub const SIZE: usize = 12;
    /// Size of the legacy header without `num_buffers`.
    pub const LEGACY_SIZE: usize = 10;

    /// Header size for the negotiated `features`: [`SIZE`](Self::SIZE) with VERSION_1 or
    /// MRG_RXBUF, else [`LEGACY_SIZE`](Self::LEGACY_SIZE).
    pub const fn size_for(features: u64) -> usize {
        if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            Self::SIZE
        } else {
            Self::LEGACY_SIZE
        }
    }

    /// The 12 wire bytes, little-endian (the first 10 are the legacy header), as the spec
    /// requires for VERSION_1.
    pub const fn to_bytes(&self) -> [u8; 12] {
        let [l0, l1] = self.hdr_len.to_le_bytes();
        let [s0, s1] = self.gso_size.to_le_bytes();
        let [c0, c1] = self.csum_start.to_le_bytes();
        let [o0, o1] = self.csum_offset.to_le_bytes();
        let [n0, n1] = self.num_buffers.to_le_bytes();
        [
            self.flags,
            self.gso_type,
            l0,
            l1,
            s0,
            s1,
            c0,
            c1,
            o0,
            o1,
            n0,
            n1,
        ]
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

    /// Decodes up to 12 bytes; missing bytes read as 0 (so `num_buffers` is 0 for a 10-byte
    /// legacy header).
    pub fn parse(bytes: &[u8]) -> Self {
        let mut b = [0u8; 12];
        let n = bytes.len().min(12);
        b[..n].copy_from_slice(&bytes[..n]);
        Self::from_bytes(&b, 12)
    }
}

/// Header length for the negotiated features: 12 with VERSION_1 or MRG_RXBUF, else 10
/// ([`VirtioNetHdr::size_for`]).
#[inline]
pub fn hdr_len(features: u64) -> usize {
    VirtioNetHdr::size_for(features)
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
        assert_eq!(std::mem::size_of::<VirtioNetHdr>(), VirtioNetHdr::SIZE);
    }

    #[test]
    fn parse_reads_up_to_12_bytes() {
        let h = VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type: VirtioNetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b[..4], [1, 1, 54, 0]);
        assert_eq!(b[10..], [3, 0]);
        assert_eq!(VirtioNetHdr::parse(&b), h);
        let legacy = VirtioNetHdr::parse(&b[..10]);
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(legacy, VirtioNetHdr::from_bytes(&b, 10));
    }
}
