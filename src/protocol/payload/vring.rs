//! Vring payloads: state, addresses, kick/call/err index, host notifier area.

use super::{Payload, decode, invalid};
use crate::protocol::error::ProtocolError;
use crate::protocol::policy::Size;

/// Vring state: `SET_VRING_NUM`, `SET/GET_VRING_BASE`, `SET_VRING_ENABLE`,
/// `SET_VRING_ENDIAN`, `VRING_KICK`.
#[doc(alias = "vhost_vring_state")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VringState {
    /// Vring index.
    pub index: u32,
    /// Size, base, enable flag, endianness (per request).
    pub num: u32,
}

impl Payload for VringState {
    const NAME: &'static str = "vring state";
    const SIZE: Size = Size::Exact(8);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| {
            Some(Self {
                index: c.u32()?,
                num: c.u32()?,
            })
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.to_ne_bytes());
        out.extend_from_slice(&self.num.to_ne_bytes());
    }
}

/// The `num` of `SET/GET_VRING_BASE` for a packed virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackedVringBase {
    /// Next available descriptor index (15 bits).
    pub avail_idx: u16,
    /// Driver ring wrap counter.
    pub avail_wrap: bool,
    /// Next used index (15 bits).
    pub used_idx: u16,
    /// Device ring wrap counter.
    pub used_wrap: bool,
}

impl PackedVringBase {
    /// Decodes bits 0-14 avail index, 15 avail wrap, 16-30 used index, 31 used wrap.
    pub const fn from_num(num: u32) -> Self {
        Self {
            avail_idx: (num & 0x7fff) as u16,
            avail_wrap: num & (1 << 15) != 0,
            used_idx: ((num >> 16) & 0x7fff) as u16,
            used_wrap: num & (1 << 31) != 0,
        }
    }

    /// Encodes as `num` (indices are truncated to 15 bits).
    pub const fn to_num(self) -> u32 {
        (self.avail_idx as u32 & 0x7fff)
            | ((self.avail_wrap as u32) << 15)
            | ((self.used_idx as u32 & 0x7fff) << 16)
            | ((self.used_wrap as u32) << 31)
    }
}

/// Ring addresses: `SET_VRING_ADDR` (40 bytes; the spec's table shows a
/// "size" column that does not exist on the wire).
#[doc(alias = "vhost_vring_addr")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VringAddr {
    /// Vring index.
    pub index: u32,
    /// [`VringAddr::F_LOG`] or 0.
    pub flags: u32,
    /// Descriptor table (user address, or IOVA with `VIRTIO_F_IOMMU_PLATFORM`).
    pub desc_user_addr: u64,
    /// Used ring.
    pub used_user_addr: u64,
    /// Available ring.
    pub avail_user_addr: u64,
    /// Guest physical address of the used ring, for dirty logging.
    pub log_guest_addr: u64,
}

impl VringAddr {
    /// `VHOST_VRING_F_LOG`: log writes to the used ring.
    #[doc(alias = "VHOST_VRING_F_LOG")]
    pub const F_LOG: u32 = 1 << 0;
}

impl Payload for VringAddr {
    const NAME: &'static str = "vring address";
    const SIZE: Size = Size::Exact(40);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| {
            Some(Self {
                index: c.u32()?,
                flags: c.u32()?,
                desc_user_addr: c.u64()?,
                used_user_addr: c.u64()?,
                avail_user_addr: c.u64()?,
                log_guest_addr: c.u64()?,
            })
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        for v in [
            self.desc_user_addr,
            self.used_user_addr,
            self.avail_user_addr,
            self.log_guest_addr,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
}

/// The `u64` of `SET_VRING_KICK/CALL/ERR`: vring index in bits 0-7, bit 8
/// set when no fd is attached (polling). Other bits must be 0.
#[doc(alias = "vhost_vring_file")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VringFile {
    /// Vring index.
    pub index: u8,
    /// No fd in the ancillary data.
    pub no_fd: bool,
}

impl VringFile {
    /// Bits 0-7: the vring index.
    #[doc(alias = "VHOST_USER_VRING_IDX_MASK")]
    pub const INDEX_MASK: u64 = 0xff;
    /// Bit 8: the invalid-fd flag.
    #[doc(alias = "VHOST_USER_VRING_NOFD_MASK")]
    pub const NO_FD: u64 = 1 << 8;

    /// Decodes the `u64`, rejecting undefined bits.
    pub fn from_u64(v: u64) -> Result<Self, ProtocolError> {
        if v & !(Self::INDEX_MASK | Self::NO_FD) != 0 {
            return Err(invalid(Self::NAME, "u64", v, "bits above 8 are reserved"));
        }
        Ok(Self {
            index: (v & Self::INDEX_MASK) as u8,
            no_fd: v & Self::NO_FD != 0,
        })
    }

    /// Encodes as the `u64`.
    pub const fn to_u64(self) -> u64 {
        self.index as u64 | if self.no_fd { Self::NO_FD } else { 0 }
    }
}

impl Payload for VringFile {
    const NAME: &'static str = "vring file index";
    const SIZE: Size = Size::Exact(8);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        Self::from_u64(u64::parse(buf).map_err(|e| e.in_request(Self::NAME))?)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        self.to_u64().write_to(out);
    }
}

/// `BACKEND_VRING_HOST_NOTIFIER_MSG`: queue index (bits 0-7) and no-fd flag
/// (bit 8) in a `u64`, then the area's size and offset in the fd (24 bytes).
#[doc(alias = "VhostUserVringArea")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VringArea {
    /// Queue index and no-fd flag.
    pub file: VringFile,
    /// mmap size (the host page size).
    pub size: u64,
    /// mmap offset.
    pub offset: u64,
}

impl Payload for VringArea {
    const NAME: &'static str = "vring area";
    const SIZE: Size = Size::Exact(24);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        let (u, size, offset) = decode::<Self, _>(buf, |c| Some((c.u64()?, c.u64()?, c.u64()?)))?;
        Ok(Self {
            file: VringFile::from_u64(u).map_err(|e| e.in_request(Self::NAME))?,
            size,
            offset,
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for v in [self.file.to_u64(), self.size, self.offset] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
}
