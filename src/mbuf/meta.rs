//! Packet metadata: offload flags and header lengths.

use std::fmt;
use std::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, Not, Sub};

/// Offload flags of a packet (`ol_flags` of an `rte_mbuf`): what a receiver learnt about
/// checksums and segmentation (`RX_*`), and what the sender asks the device to do (`TX_*`).
///
/// A bit set with the usual operators (`|`, `&`, `!`, `-`). The names follow DPDK's
/// `RTE_MBUF_F_*`; the bit values are this crate's own (every flag is one independent bit, so
/// `contains` is never fooled by a multi-bit field as DPDK's `TX_L4_MASK` values would be).
///
/// ```
/// use rvhost::mbuf::OffloadFlags;
/// let tx = OffloadFlags::TX_IPV4 | OffloadFlags::TX_IP_CKSUM | OffloadFlags::TX_TCP_SEG;
/// assert!(tx.contains(OffloadFlags::TX_IPV4 | OffloadFlags::TX_TCP_SEG));
/// assert!(!tx.intersects(OffloadFlags::RX_MASK));
/// assert_eq!(format!("{tx:?}"), "OffloadFlags(TX_IP_CKSUM | TX_TCP_SEG | TX_IPV4)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OffloadFlags(u64);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr;)*) => {
        impl OffloadFlags {
            $($(#[$doc])* pub const $name: OffloadFlags = OffloadFlags(1 << $bit);)*
            pub(super) const NAMES: &'static [(&'static str, OffloadFlags)] =
                &[$((stringify!($name), OffloadFlags::$name)),*];
        }
    };
}

flags! {
    /// RX: the IP header checksum was verified and is correct.
    RX_IP_CKSUM_GOOD = 0;
    /// RX: the IP header checksum is wrong.
    RX_IP_CKSUM_BAD = 1;
    /// RX: the L4 (TCP/UDP) checksum was verified and is correct (virtio `DATA_VALID`).
    RX_L4_CKSUM_GOOD = 2;
    /// RX: the L4 checksum is wrong.
    RX_L4_CKSUM_BAD = 3;
    /// RX: the L4 checksum in the data is not filled in but the data is intact (virtio
    /// `NEEDS_CSUM`: a peer offloaded the checksum).
    RX_L4_CKSUM_NONE = 4;
    /// RX: the packet is a coalesced (LRO/GRO) packet; `tso_segsz` is the segment size.
    RX_LRO = 5;
    /// TX: compute the IPv4 header checksum (needs `l2_len`, `l3_len`).
    TX_IP_CKSUM = 32;
    /// TX: compute the TCP checksum (needs `l2_len`, `l3_len`).
    TX_TCP_CKSUM = 33;
    /// TX: compute the UDP checksum (needs `l2_len`, `l3_len`).
    TX_UDP_CKSUM = 34;
    /// TX: TCP segmentation offload (TSO) into `tso_segsz` payload bytes per segment (needs
    /// `l2_len`, `l3_len`, `l4_len`; implies the TCP checksum).
    TX_TCP_SEG = 35;
    /// TX: UDP segmentation offload (USO) into `tso_segsz` payload bytes per datagram.
    TX_UDP_SEG = 36;
    /// TX: the packet is IPv4.
    TX_IPV4 = 37;
    /// TX: the packet is IPv6.
    TX_IPV6 = 38;
}

impl OffloadFlags {
    /// Every RX flag.
    pub const RX_MASK: OffloadFlags = OffloadFlags(0x3f);
    /// Every TX flag.
    pub const TX_MASK: OffloadFlags = OffloadFlags(0x7f << 32);
    /// Every defined flag.
    pub const ALL: OffloadFlags = OffloadFlags(Self::RX_MASK.0 | Self::TX_MASK.0);

    /// No flag.
    pub const fn empty() -> OffloadFlags {
        OffloadFlags(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The flags of `bits`, or `None` if an undefined bit is set.
    pub const fn from_bits(bits: u64) -> Option<OffloadFlags> {
        if bits & !Self::ALL.0 == 0 {
            Some(OffloadFlags(bits))
        } else {
            None
        }
    }

    /// The flags of `bits`, keeping undefined bits.
    pub const fn from_bits_retain(bits: u64) -> OffloadFlags {
        OffloadFlags(bits)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: OffloadFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: OffloadFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: OffloadFlags) {
        self.0 |= other.0;
    }

    /// Clears the flags of `other`.
    pub fn remove(&mut self, other: OffloadFlags) {
        self.0 &= !other.0;
    }

    /// Sets or clears the flags of `other`.
    pub fn set(&mut self, other: OffloadFlags, value: bool) {
        if value {
            self.insert(other);
        } else {
            self.remove(other);
        }
    }
}

impl BitOr for OffloadFlags {
    type Output = OffloadFlags;
    fn bitor(self, rhs: OffloadFlags) -> OffloadFlags {
        OffloadFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for OffloadFlags {
    fn bitor_assign(&mut self, rhs: OffloadFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for OffloadFlags {
    type Output = OffloadFlags;
    fn bitand(self, rhs: OffloadFlags) -> OffloadFlags {
        OffloadFlags(self.0 & rhs.0)
    }
}

impl BitAndAssign for OffloadFlags {
    fn bitand_assign(&mut self, rhs: OffloadFlags) {
        self.0 &= rhs.0;
    }
}

impl Not for OffloadFlags {
    type Output = OffloadFlags;
    fn not(self) -> OffloadFlags {
        OffloadFlags(!self.0)
    }
}

impl Sub for OffloadFlags {
    type Output = OffloadFlags;
    /// The flags of `self` that are not in `rhs`.
    fn sub(self, rhs: OffloadFlags) -> OffloadFlags {
        OffloadFlags(self.0 & !rhs.0)
    }
}

impl fmt::Debug for OffloadFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OffloadFlags(")?;
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { " | " };
            first = false;
            f.write_str(s)
        };
        for (name, flag) in Self::NAMES {
            if self.contains(*flag) {
                sep(f)?;
                f.write_str(name)?;
            }
        }
        let unknown = self.0 & !Self::ALL.0;
        if unknown != 0 {
            sep(f)?;
            write!(f, "{unknown:#x}")?;
        }
        f.write_str(")")
    }
}

/// `port` of an mbuf no port has claimed (`RTE_MBUF_PORT_INVALID`).
pub const PORT_INVALID: u16 = u16::MAX;

/// The metadata of a packet that carries no memory-safety invariant: read and write it freely
/// with [`Mbuf::meta`](super::Mbuf::meta) / [`Mbuf::meta_mut`](super::Mbuf::meta_mut).
///
/// The fields are those of an `rte_mbuf` a vhost data path reads and writes; they are reset
/// (to [`PktMeta::default`]) when an mbuf is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PktMeta {
    /// Offload flags.
    pub ol_flags: OffloadFlags,
    /// Packet type (`RTE_PTYPE_*` values: L2/L3/L4/tunnel classification).
    pub packet_type: u32,
    /// Length of the L2 header (for TX checksum and segmentation offloads).
    pub l2_len: u16,
    /// Length of the L3 header.
    pub l3_len: u16,
    /// Length of the L4 header.
    pub l4_len: u16,
    /// Segment size for TSO/USO (TX) or of the coalesced segments (RX LRO): the virtio
    /// `gso_size`.
    pub tso_segsz: u16,
    /// VLAN tag control information (valid with a VLAN flag a device sets).
    pub vlan_tci: u16,
    /// Input port, or [`PORT_INVALID`].
    pub port: u16,
    /// RSS hash.
    pub hash: u32,
    /// Free for the application (DPDK's `udata64` / dynamic field).
    pub udata64: u64,
}

impl Default for PktMeta {
    fn default() -> Self {
        PktMeta {
            ol_flags: OffloadFlags::empty(),
            packet_type: 0,
            l2_len: 0,
            l3_len: 0,
            l4_len: 0,
            tso_segsz: 0,
            vlan_tci: 0,
            port: PORT_INVALID,
            hash: 0,
            udata64: 0,
        }
    }
}
