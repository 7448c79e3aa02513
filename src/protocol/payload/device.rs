//! Device payloads: IOTLB, config space, status, RARP, shared objects and
//! device state transfer.

use super::{Cursor, Payload, decode, invalid, size_error};
use crate::protocol::VHOST_USER_MAX_CONFIG_SIZE;
use crate::protocol::error::ProtocolError;
use crate::protocol::policy::Size;

/// IOTLB access rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum IotlbAccess {
    /// No access.
    #[default]
    None = 0,
    /// Read.
    ReadOnly = 1,
    /// Write.
    WriteOnly = 2,
    /// Read and write.
    ReadWrite = 3,
}

/// IOTLB message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum IotlbType {
    /// Back-end to front-end: translation missing.
    #[doc(alias = "VHOST_IOTLB_MISS")]
    #[default]
    Miss = 1,
    /// Front-end to back-end: new translation.
    #[doc(alias = "VHOST_IOTLB_UPDATE")]
    Update = 2,
    /// Front-end to back-end: drop translations.
    #[doc(alias = "VHOST_IOTLB_INVALIDATE")]
    Invalidate = 3,
    /// Back-end to front-end: access denied.
    #[doc(alias = "VHOST_IOTLB_ACCESS_FAIL")]
    AccessFail = 4,
}

/// `IOTLB_MSG` / `BACKEND_IOTLB_MSG`: `struct vhost_iotlb_msg`, 32 bytes
/// (three `u64`, `perm: u8`, `type: u8`, 6 bytes of padding).
#[doc(alias = "vhost_iotlb_msg")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IotlbMsg {
    /// I/O virtual address.
    pub iova: u64,
    /// Size.
    pub size: u64,
    /// Front-end user address.
    pub uaddr: u64,
    /// Access rights.
    pub perm: IotlbAccess,
    /// Message type.
    pub kind: IotlbType,
}

impl Payload for IotlbMsg {
    const NAME: &'static str = "IOTLB message";
    const SIZE: Size = Size::Exact(32);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        let (iova, size, uaddr, perm, kind) = decode::<Self, _>(buf, |c| {
            Some((c.u64()?, c.u64()?, c.u64()?, c.u8()?, c.u8()?))
        })?;
        let perm = match perm {
            0 => IotlbAccess::None,
            1 => IotlbAccess::ReadOnly,
            2 => IotlbAccess::WriteOnly,
            3 => IotlbAccess::ReadWrite,
            p => return Err(invalid(Self::NAME, "perm", p.into(), "not 0-3")),
        };
        let kind = match kind {
            1 => IotlbType::Miss,
            2 => IotlbType::Update,
            3 => IotlbType::Invalidate,
            4 => IotlbType::AccessFail,
            t => return Err(invalid(Self::NAME, "type", t.into(), "not 1-4")),
        };
        Ok(Self {
            iova,
            size,
            uaddr,
            perm,
            kind,
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for v in [self.iova, self.size, self.uaddr] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&[self.perm as u8, self.kind as u8, 0, 0, 0, 0, 0, 0]);
    }
}

/// `GET_CONFIG` / `SET_CONFIG`: `offset: u32`, `size: u32`, `flags: u32`,
/// then `size` bytes (at most [`VHOST_USER_MAX_CONFIG_SIZE`]). The size field
/// is the length of [`payload`](Self::payload).
///
/// A back-end answers a failed `GET_CONFIG` with an empty reply payload.
#[doc(alias = "VhostUserConfig")]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Offset in the device config space.
    pub offset: u32,
    /// [`Config::WRITABLE`] or [`Config::MIGRATION`].
    pub flags: u32,
    /// The config bytes (for a `GET_CONFIG` request: as many bytes as wanted).
    pub payload: Vec<u8>,
}

impl Config {
    /// Bytes before the config data.
    pub const HEADER_SIZE: usize = 12;
    /// Flags value: a write of writable fields.
    pub const WRITABLE: u32 = 0;
    /// Flags value: a write during live migration (read-only fields too).
    pub const MIGRATION: u32 = 1;

    /// The size field.
    pub fn size(&self) -> u32 {
        u32::try_from(self.payload.len()).unwrap_or(u32::MAX)
    }
}

impl Payload for Config {
    const NAME: &'static str = "device config";
    const SIZE: Size = Size::Range(
        Self::HEADER_SIZE as u32,
        (Self::HEADER_SIZE + VHOST_USER_MAX_CONFIG_SIZE) as u32,
    );

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        if !Self::SIZE.allows(buf.len()) {
            return Err(size_error(Self::NAME, buf.len(), Self::SIZE));
        }
        let (head, data) = buf
            .split_at_checked(Self::HEADER_SIZE)
            .unwrap_or((buf, &[]));
        let mut c = Cursor(head);
        let (offset, size, flags) = (
            c.u32().unwrap_or(0),
            c.u32().unwrap_or(0),
            c.u32().unwrap_or(0),
        );
        if size as usize > VHOST_USER_MAX_CONFIG_SIZE {
            return Err(invalid(
                Self::NAME,
                "size",
                size.into(),
                "above VHOST_USER_MAX_CONFIG_SIZE (256)",
            ));
        }
        if data.len() != size as usize {
            return Err(size_error(
                Self::NAME,
                buf.len(),
                Size::Exact(Self::HEADER_SIZE as u32 + size),
            ));
        }
        Ok(Self {
            offset,
            flags,
            payload: data.to_vec(),
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_ne_bytes());
        out.extend_from_slice(&self.size().to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&self.payload);
    }
}

/// `SET/GET_STATUS`: the virtio device status byte, carried in a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStatus(pub u8);

impl DeviceStatus {
    /// Guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// Guest has a driver.
    pub const DRIVER: u8 = 2;
    /// Driver ready.
    pub const DRIVER_OK: u8 = 4;
    /// Features negotiated.
    pub const FEATURES_OK: u8 = 8;
    /// Device hit an error.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// Driver gave up.
    pub const FAILED: u8 = 0x80;
}

impl Payload for DeviceStatus {
    const NAME: &'static str = "device status";
    const SIZE: Size = Size::Exact(8);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        let v = u64::parse(buf).map_err(|e| e.in_request(Self::NAME))?;
        u8::try_from(v)
            .map(Self)
            .map_err(|_| invalid(Self::NAME, "u64", v, "the status is 8 bits"))
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        u64::from(self.0).write_to(out);
    }
}

/// `SEND_RARP`: the guest MAC in the first 6 bytes of a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RarpMac(pub [u8; 6]);

impl Payload for RarpMac {
    const NAME: &'static str = "RARP MAC";
    const SIZE: Size = Size::Exact(8);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| c.take::<6>().map(Self))
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
        out.extend_from_slice(&[0, 0]);
    }
}

/// `GET_SHARED_OBJECT` and `BACKEND_SHARED_OBJECT_*`: a 16-byte UUID.
#[doc(alias = "VhostUserShared")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SharedObject {
    /// The UUID bytes as sent.
    pub uuid: [u8; 16],
}

impl Payload for SharedObject {
    const NAME: &'static str = "shared object";
    const SIZE: Size = Size::Exact(16);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| c.take::<16>().map(|uuid| Self { uuid }))
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.uuid);
    }
}

/// `SET_DEVICE_STATE_FD`: transfer direction (0 save, 1 load) and migration
/// phase (0 stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStateTransfer {
    /// [`DeviceStateTransfer::SAVE`] or [`DeviceStateTransfer::LOAD`].
    pub direction: u32,
    /// [`DeviceStateTransfer::PHASE_STOPPED`].
    pub phase: u32,
}

impl DeviceStateTransfer {
    /// Back-end to front-end (migration source).
    pub const SAVE: u32 = 0;
    /// Front-end to back-end (migration destination).
    pub const LOAD: u32 = 1;
    /// Device suspended, after memory transfer.
    pub const PHASE_STOPPED: u32 = 0;
}

impl Payload for DeviceStateTransfer {
    const NAME: &'static str = "device state transfer";
    const SIZE: Size = Size::Exact(8);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        let s = decode::<Self, _>(buf, |c| {
            Some(Self {
                direction: c.u32()?,
                phase: c.u32()?,
            })
        })?;
        if s.direction > Self::LOAD {
            return Err(invalid(
                Self::NAME,
                "direction",
                s.direction.into(),
                "not 0 or 1",
            ));
        }
        if s.phase != Self::PHASE_STOPPED {
            return Err(invalid(
                Self::NAME,
                "phase",
                s.phase.into(),
                "only 0 (stopped) exists",
            ));
        }
        Ok(s)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.direction.to_ne_bytes());
        out.extend_from_slice(&self.phase.to_ne_bytes());
    }
}
