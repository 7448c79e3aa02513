//! Request codes, the message header and the feature bits of vhost-user.
//!
//! Numbers on the wire are in the host's native byte order (spec: "All
//! numbers are in the machine native byte order"); on the x86-64 and arm64
//! hosts rvhost runs on that is little-endian.

use std::fmt;

use super::error::ProtocolError;

/// A request code type: [`FrontendReq`] or [`BackendReq`].
pub trait RequestCode: Copy + fmt::Debug {
    /// The code on the wire.
    fn code(self) -> u32;
    /// The spec's name, e.g. `VHOST_USER_GET_FEATURES`.
    fn name(self) -> &'static str;
}

macro_rules! request_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident, unknown = $unknown:ident {
            $( $(#[doc = $doc:literal])* $cname:literal $(| $old:literal)? => $var:ident = $code:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        #[non_exhaustive]
        pub enum $name {
            $(
                $(#[doc = $doc])*
                #[doc(alias = $cname)]
                $(#[doc(alias = $old)])?
                $var = $code,
            )*
        }

        impl $name {
            /// Every request, in code order.
            pub const ALL: &'static [$name] = &[$($name::$var),*];

            /// The code on the wire.
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The spec's name, e.g. `VHOST_USER_GET_FEATURES`.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$var => $cname,)*
                }
            }
        }

        impl TryFrom<u32> for $name {
            type Error = ProtocolError;

            fn try_from(code: u32) -> Result<Self, ProtocolError> {
                match code {
                    $($code => Ok($name::$var),)*
                    other => Err(ProtocolError::$unknown(other)),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(req: $name) -> u32 {
                req.code()
            }
        }

        impl RequestCode for $name {
            fn code(self) -> u32 {
                $name::code(self)
            }
            fn name(self) -> &'static str {
                $name::name(self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

request_enum! {
    /// Requests sent by the front-end (QEMU, virtio-user) to the back-end on
    /// the main socket ("front-end message types" of the spec).
    ///
    /// See [`policy`](super::policy()) for each request's payload size, file
    /// descriptors and reply.
    pub enum FrontendReq, unknown = UnknownRequest {
        /// Get the virtio feature bits offered by the back-end (reply: `u64`).
        "VHOST_USER_GET_FEATURES" => GetFeatures = 1,
        /// Set the negotiated virtio feature bits (`u64`).
        "VHOST_USER_SET_FEATURES" => SetFeatures = 2,
        /// Session start: the sender owns the back-end.
        "VHOST_USER_SET_OWNER" => SetOwner = 3,
        /// Deprecated; back-ends ignore it or disable all rings.
        "VHOST_USER_RESET_OWNER" => ResetOwner = 4,
        /// Guest memory regions, one fd per region.
        "VHOST_USER_SET_MEM_TABLE" => SetMemTable = 5,
        /// Dirty log area (size, offset) with its fd (LOG_SHMFD).
        "VHOST_USER_SET_LOG_BASE" => SetLogBase = 6,
        /// Eventfd to signal log changes.
        "VHOST_USER_SET_LOG_FD" => SetLogFd = 7,
        /// Ring size.
        "VHOST_USER_SET_VRING_NUM" => SetVringNum = 8,
        /// Ring addresses.
        "VHOST_USER_SET_VRING_ADDR" => SetVringAddr = 9,
        /// Next available index (and wrap counters for packed rings).
        "VHOST_USER_SET_VRING_BASE" => SetVringBase = 10,
        /// Stop the ring and return its next available index.
        "VHOST_USER_GET_VRING_BASE" => GetVringBase = 11,
        /// Kick eventfd (starts the ring).
        "VHOST_USER_SET_VRING_KICK" => SetVringKick = 12,
        /// Call (interrupt) eventfd.
        "VHOST_USER_SET_VRING_CALL" => SetVringCall = 13,
        /// Error eventfd.
        "VHOST_USER_SET_VRING_ERR" => SetVringErr = 14,
        /// Get the protocol feature bits (reply: `u64`).
        "VHOST_USER_GET_PROTOCOL_FEATURES" => GetProtocolFeatures = 15,
        /// Set the negotiated protocol feature bits.
        "VHOST_USER_SET_PROTOCOL_FEATURES" => SetProtocolFeatures = 16,
        /// Maximum number of queues (MQ; reply: `u64`).
        "VHOST_USER_GET_QUEUE_NUM" => GetQueueNum = 17,
        /// Enable or disable a ring.
        "VHOST_USER_SET_VRING_ENABLE" => SetVringEnable = 18,
        /// Broadcast a RARP for this MAC (first 6 payload bytes).
        "VHOST_USER_SEND_RARP" => SendRarp = 19,
        /// Host MTU (NET_MTU).
        "VHOST_USER_NET_SET_MTU" => NetSetMtu = 20,
        /// Socket for back-end initiated requests (BACKEND_REQ).
        "VHOST_USER_SET_BACKEND_REQ_FD" | "VHOST_USER_SET_SLAVE_REQ_FD" => SetBackendReqFd = 21,
        /// Device IOTLB update or invalidation.
        "VHOST_USER_IOTLB_MSG" => IotlbMsg = 22,
        /// Ring endianness of legacy devices (CROSS_ENDIAN).
        "VHOST_USER_SET_VRING_ENDIAN" => SetVringEndian = 23,
        /// Read the device config space (CONFIG).
        "VHOST_USER_GET_CONFIG" => GetConfig = 24,
        /// Write the device config space (CONFIG).
        "VHOST_USER_SET_CONFIG" => SetConfig = 25,
        /// Create a crypto session (CRYPTO_SESSION).
        "VHOST_USER_CREATE_CRYPTO_SESSION" => CreateCryptoSession = 26,
        /// Close a crypto session (CRYPTO_SESSION).
        "VHOST_USER_CLOSE_CRYPTO_SESSION" => CloseCryptoSession = 27,
        /// Postcopy migration coming: open a userfaultfd (PAGEFAULT).
        "VHOST_USER_POSTCOPY_ADVISE" => PostcopyAdvise = 28,
        /// Postcopy mode entered (PAGEFAULT).
        "VHOST_USER_POSTCOPY_LISTEN" => PostcopyListen = 29,
        /// Postcopy done (PAGEFAULT; reply: `u64`).
        "VHOST_USER_POSTCOPY_END" => PostcopyEnd = 30,
        /// Get the inflight tracking buffer (INFLIGHT_SHMFD).
        "VHOST_USER_GET_INFLIGHT_FD" => GetInflightFd = 31,
        /// Give back the inflight tracking buffer (INFLIGHT_SHMFD).
        "VHOST_USER_SET_INFLIGHT_FD" => SetInflightFd = 32,
        /// vhost-user-gpu protocol socket.
        "VHOST_USER_GPU_SET_SOCKET" => GpuSetSocket = 33,
        /// Disable all rings and reset the device (RESET_DEVICE).
        "VHOST_USER_RESET_DEVICE" => ResetDevice = 34,
        /// In-band kick (INBAND_NOTIFICATIONS).
        "VHOST_USER_VRING_KICK" => VringKick = 35,
        /// Maximum number of memory slots (CONFIGURE_MEM_SLOTS; reply: `u64`).
        "VHOST_USER_GET_MAX_MEM_SLOTS" => GetMaxMemSlots = 36,
        /// Add one memory region with its fd (CONFIGURE_MEM_SLOTS).
        "VHOST_USER_ADD_MEM_REG" => AddMemReg = 37,
        /// Remove one memory region (CONFIGURE_MEM_SLOTS).
        "VHOST_USER_REM_MEM_REG" => RemMemReg = 38,
        /// Device status byte (STATUS).
        "VHOST_USER_SET_STATUS" => SetStatus = 39,
        /// Read the device status byte (STATUS; reply: `u64`).
        "VHOST_USER_GET_STATUS" => GetStatus = 40,
        /// Look up a shared dma-buf by UUID (SHARED_OBJECT).
        "VHOST_USER_GET_SHARED_OBJECT" => GetSharedObject = 41,
        /// Channel for device state transfer (DEVICE_STATE).
        "VHOST_USER_SET_DEVICE_STATE_FD" => SetDeviceStateFd = 42,
        /// Was the device state transfer successful? (DEVICE_STATE)
        "VHOST_USER_CHECK_DEVICE_STATE" => CheckDeviceState = 43,
    }
}

request_enum! {
    /// Requests sent by the back-end to the front-end on the back-end channel
    /// (the socket given by `VHOST_USER_SET_BACKEND_REQ_FD`).
    pub enum BackendReq, unknown = UnknownBackendRequest {
        /// IOTLB miss or access failure.
        "VHOST_USER_BACKEND_IOTLB_MSG" | "VHOST_USER_SLAVE_IOTLB_MSG" => IotlbMsg = 1,
        /// The device config space changed (CONFIG).
        "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG" | "VHOST_USER_SLAVE_CONFIG_CHANGE_MSG" => ConfigChangeMsg = 2,
        /// Set or clear a queue's host notifier area (HOST_NOTIFIER).
        "VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG" | "VHOST_USER_SLAVE_VRING_HOST_NOTIFIER_MSG" => VringHostNotifierMsg = 3,
        /// In-band call (INBAND_NOTIFICATIONS).
        "VHOST_USER_BACKEND_VRING_CALL" | "VHOST_USER_SLAVE_VRING_CALL" => VringCall = 4,
        /// In-band error (INBAND_NOTIFICATIONS).
        "VHOST_USER_BACKEND_VRING_ERR" | "VHOST_USER_SLAVE_VRING_ERR" => VringErr = 5,
        /// Export a shared object (SHARED_OBJECT).
        "VHOST_USER_BACKEND_SHARED_OBJECT_ADD" => SharedObjectAdd = 6,
        /// Withdraw a shared object (SHARED_OBJECT).
        "VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE" => SharedObjectRemove = 7,
        /// Look up a shared object (SHARED_OBJECT).
        "VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP" => SharedObjectLookup = 8,
    }
}

/// The 12-byte header of every vhost-user message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Header {
    /// Request code ([`FrontendReq`] or [`BackendReq`], depending on the channel).
    pub request: u32,
    /// Version (bits 0-1), [`REPLY`](Self::REPLY), [`NEED_REPLY`](Self::NEED_REPLY).
    pub flags: u32,
    /// Payload size in bytes.
    pub size: u32,
}

impl Header {
    /// Bytes of a header on the wire.
    pub const SIZE: usize = 12;
    /// The protocol version, the only one there is.
    pub const VERSION: u32 = 0x1;
    /// Bits of `flags` holding the version.
    pub const VERSION_MASK: u32 = 0x3;
    /// Set on every reply.
    pub const REPLY: u32 = 0x4;
    /// REPLY_ACK: the sender wants a `u64` status reply (0 = success).
    pub const NEED_REPLY: u32 = 0x8;
    /// Every flag bit the spec defines.
    pub const KNOWN_FLAGS: u32 = Self::VERSION_MASK | Self::REPLY | Self::NEED_REPLY;

    /// A header with the given fields.
    pub const fn new(request: u32, flags: u32, size: u32) -> Self {
        Self {
            request,
            flags,
            size,
        }
    }

    /// A request header: version 1, no other flag.
    pub fn for_request<R: RequestCode>(req: R, size: u32) -> Self {
        Self::new(req.code(), Self::VERSION, size)
    }

    /// The header of a reply to `self`: same request code, version 1 and
    /// REPLY set, NEED_REPLY cleared.
    pub const fn reply(&self, size: u32) -> Self {
        Self::new(self.request, Self::VERSION | Self::REPLY, size)
    }

    /// Reads a header from the first 12 bytes of `buf` (no validation beyond
    /// the length: see [`check_flags`](Self::check_flags)).
    pub fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        let Some((head, _)) = buf.split_first_chunk::<{ Self::SIZE }>() else {
            return Err(ProtocolError::TruncatedHeader { got: buf.len() });
        };
        let [r0, r1, r2, r3, f0, f1, f2, f3, s0, s1, s2, s3] = *head;
        Ok(Self {
            request: u32::from_ne_bytes([r0, r1, r2, r3]),
            flags: u32::from_ne_bytes([f0, f1, f2, f3]),
            size: u32::from_ne_bytes([s0, s1, s2, s3]),
        })
    }

    /// The 12 wire bytes.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let (r, rest) = out.split_at_mut(4);
        let (f, s) = rest.split_at_mut(4);
        r.copy_from_slice(&self.request.to_ne_bytes());
        f.copy_from_slice(&self.flags.to_ne_bytes());
        s.copy_from_slice(&self.size.to_ne_bytes());
        out
    }

    /// Appends the 12 wire bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// The version bits.
    pub const fn version(&self) -> u32 {
        self.flags & Self::VERSION_MASK
    }

    /// Whether REPLY is set.
    pub const fn is_reply(&self) -> bool {
        self.flags & Self::REPLY != 0
    }

    /// Whether NEED_REPLY is set.
    pub const fn need_reply(&self) -> bool {
        self.flags & Self::NEED_REPLY != 0
    }

    /// Checks the version is 1.
    pub fn check_version(&self) -> Result<(), ProtocolError> {
        if self.version() == Self::VERSION {
            Ok(())
        } else {
            Err(bad_version(self.flags))
        }
    }

    /// Checks the version is 1 and no undefined flag bit is set.
    pub fn check_flags(&self) -> Result<(), ProtocolError> {
        self.check_version()?;
        if self.flags & !Self::KNOWN_FLAGS != 0 {
            return Err(ProtocolError::ReservedFlags { flags: self.flags });
        }
        Ok(())
    }

    /// The request code as a [`FrontendReq`].
    pub fn frontend_request(&self) -> Result<FrontendReq, ProtocolError> {
        FrontendReq::try_from(self.request)
    }

    /// The request code as a [`BackendReq`].
    pub fn backend_request(&self) -> Result<BackendReq, ProtocolError> {
        BackendReq::try_from(self.request)
    }
}

#[cold]
fn bad_version(flags: u32) -> ProtocolError {
    ProtocolError::BadVersion {
        version: flags & Header::VERSION_MASK,
        flags,
    }
}

/// Bit 30 of the virtio feature bits: the back-end supports
/// `GET/SET_PROTOCOL_FEATURES` (the legacy "UNUSED" bit reused by vhost-user).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// [`VHOST_USER_F_PROTOCOL_FEATURES`] as a mask.
pub const VHOST_USER_F_PROTOCOL_FEATURES_MASK: u64 = 1 << VHOST_USER_F_PROTOCOL_FEATURES;

macro_rules! protocol_features {
    ($( $(#[doc = $doc:literal])* $cname:literal $(| $old:literal)? => $var:ident = $bit:literal, )*) => {
        /// Protocol feature bits (`GET/SET_PROTOCOL_FEATURES`), by bit number.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        #[non_exhaustive]
        pub enum ProtocolFeature {
            $(
                $(#[doc = $doc])*
                #[doc(alias = $cname)]
                $(#[doc(alias = $old)])?
                $var = $bit,
            )*
        }

        impl ProtocolFeature {
            /// Every protocol feature, in bit order.
            pub const ALL: &'static [ProtocolFeature] = &[$(ProtocolFeature::$var),*];

            /// The spec's name, e.g. `VHOST_USER_PROTOCOL_F_MQ`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ProtocolFeature::$var => $cname,)*
                }
            }
        }
    };
}

protocol_features! {
    /// Multiple queues, `GET_QUEUE_NUM`.
    "VHOST_USER_PROTOCOL_F_MQ" => Mq = 0,
    /// Shared-memory dirty log: `SET_LOG_BASE` carries an fd and gets a reply.
    "VHOST_USER_PROTOCOL_F_LOG_SHMFD" => LogShmfd = 1,
    /// `SEND_RARP`.
    "VHOST_USER_PROTOCOL_F_RARP" => Rarp = 2,
    /// NEED_REPLY may be set on any request.
    "VHOST_USER_PROTOCOL_F_REPLY_ACK" => ReplyAck = 3,
    /// `NET_SET_MTU`.
    "VHOST_USER_PROTOCOL_F_MTU" | "VHOST_USER_PROTOCOL_F_NET_MTU" => NetMtu = 4,
    /// Back-end channel (`SET_BACKEND_REQ_FD`).
    "VHOST_USER_PROTOCOL_F_BACKEND_REQ" | "VHOST_USER_PROTOCOL_F_SLAVE_REQ" => BackendReq = 5,
    /// `SET_VRING_ENDIAN`.
    "VHOST_USER_PROTOCOL_F_CROSS_ENDIAN" => CrossEndian = 6,
    /// Crypto sessions.
    "VHOST_USER_PROTOCOL_F_CRYPTO_SESSION" => CryptoSession = 7,
    /// Postcopy migration (userfaultfd).
    "VHOST_USER_PROTOCOL_F_PAGEFAULT" => Pagefault = 8,
    /// `GET/SET_CONFIG`.
    "VHOST_USER_PROTOCOL_F_CONFIG" => Config = 9,
    /// File descriptors on the back-end channel.
    "VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD" | "VHOST_USER_PROTOCOL_F_SLAVE_SEND_FD" => BackendSendFd = 10,
    /// `BACKEND_VRING_HOST_NOTIFIER_MSG`.
    "VHOST_USER_PROTOCOL_F_HOST_NOTIFIER" => HostNotifier = 11,
    /// `GET/SET_INFLIGHT_FD`.
    "VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD" => InflightShmfd = 12,
    /// `RESET_DEVICE`.
    "VHOST_USER_PROTOCOL_F_RESET_DEVICE" => ResetDevice = 13,
    /// In-band kick, call and error messages.
    "VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS" => InbandNotifications = 14,
    /// `GET_MAX_MEM_SLOTS`, `ADD/REM_MEM_REG`.
    "VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS" => ConfigureMemSlots = 15,
    /// `SET/GET_STATUS`.
    "VHOST_USER_PROTOCOL_F_STATUS" => Status = 16,
    /// Xen mappings (memory regions grow two fields; not supported by rvhost).
    "VHOST_USER_PROTOCOL_F_XEN_MMAP" => XenMmap = 17,
    /// Shared objects (dma-buf) by UUID.
    "VHOST_USER_PROTOCOL_F_SHARED_OBJECT" => SharedObject = 18,
    /// Device state transfer for migration.
    "VHOST_USER_PROTOCOL_F_DEVICE_STATE" => DeviceState = 19,
}

impl ProtocolFeature {
    /// The bit number.
    pub const fn bit(self) -> u32 {
        self as u32
    }

    /// The bit as a mask.
    pub const fn mask(self) -> u64 {
        1u64 << (self as u32)
    }

    /// Whether `features` has this bit.
    pub const fn is_set(self, features: u64) -> bool {
        features & self.mask() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_codes_are_the_spec_codes() {
        // Codes 1..=43 with no gap.
        for (i, req) in FrontendReq::ALL.iter().enumerate() {
            assert_eq!(req.code() as usize, i + 1, "{req}");
            assert_eq!(FrontendReq::try_from(req.code()), Ok(*req));
            assert!(req.name().starts_with("VHOST_USER_"));
        }
        assert_eq!(FrontendReq::ALL.len(), 43);
        assert_eq!(FrontendReq::GetFeatures.code(), 1);
        assert_eq!(FrontendReq::GetProtocolFeatures.code(), 15);
        assert_eq!(FrontendReq::SetBackendReqFd.code(), 21);
        assert_eq!(FrontendReq::GetConfig.code(), 24);
        assert_eq!(FrontendReq::ResetDevice.code(), 34);
        assert_eq!(FrontendReq::GetMaxMemSlots.code(), 36);
        assert_eq!(FrontendReq::GetStatus.code(), 40);
        assert_eq!(
            FrontendReq::SetMemTable.to_string(),
            "VHOST_USER_SET_MEM_TABLE"
        );
    }

    #[test]
    fn unknown_codes_are_errors() {
        for code in [0, 44, 1000, u32::MAX] {
            assert_eq!(
                FrontendReq::try_from(code),
                Err(ProtocolError::UnknownRequest(code))
            );
        }
        for code in [0, 9, u32::MAX] {
            assert_eq!(
                BackendReq::try_from(code),
                Err(ProtocolError::UnknownBackendRequest(code))
            );
        }
    }

    #[test]
    fn backend_codes() {
        for (i, req) in BackendReq::ALL.iter().enumerate() {
            assert_eq!(req.code() as usize, i + 1);
            assert_eq!(BackendReq::try_from(req.code()), Ok(*req));
        }
        assert_eq!(BackendReq::VringHostNotifierMsg.code(), 3);
    }

    #[test]
    fn header_round_trip_and_flags() {
        let h = Header::new(5, Header::VERSION | Header::NEED_REPLY, 264);
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b), Ok(h));
        let mut v = Vec::new();
        h.write_to(&mut v);
        assert_eq!(v, b);
        assert!(h.need_reply() && !h.is_reply());
        assert_eq!(h.version(), 1);
        assert!(h.check_flags().is_ok());
        let r = h.reply(8);
        assert!(r.is_reply() && !r.need_reply());
        assert_eq!((r.request, r.size), (5, 8));
        assert_eq!(h.frontend_request(), Ok(FrontendReq::SetMemTable));
    }

    #[test]
    fn header_rejects() {
        assert_eq!(
            Header::parse(&[0u8; 11]),
            Err(ProtocolError::TruncatedHeader { got: 11 })
        );
        for flags in [0, 2, 3, 0xc] {
            assert!(matches!(
                Header::new(1, flags, 0).check_version(),
                Err(ProtocolError::BadVersion { .. })
            ));
        }
        assert_eq!(
            Header::new(1, 0x11, 0).check_flags(),
            Err(ProtocolError::ReservedFlags { flags: 0x11 })
        );
    }

    #[test]
    fn protocol_feature_bits() {
        for (i, f) in ProtocolFeature::ALL.iter().enumerate() {
            assert_eq!(f.bit() as usize, i);
            assert!(f.name().starts_with("VHOST_USER_PROTOCOL_F_"));
        }
        assert_eq!(ProtocolFeature::ReplyAck.mask(), 8);
        assert_eq!(ProtocolFeature::ConfigureMemSlots.bit(), 15);
        assert_eq!(ProtocolFeature::Status.bit(), 16);
        assert!(ProtocolFeature::Mq.is_set(1));
        assert_eq!(VHOST_USER_F_PROTOCOL_FEATURES_MASK, 0x4000_0000);
    }
}
