//! Virtio and vhost-user feature bits (virtio 1.2 §5.1.3, §6; vhost-user spec).
//!
//! Each constant is the bit *mask* (`1 << bit`), so sets are built with `|`.

/// Device handles packets with partial checksum (guest → host offload).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Driver handles packets with partial checksum (host → guest).
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// Control channel offloads reconfiguration.
pub const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
/// Device reports a maximum MTU.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Device has a given MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Driver can receive TSOv4.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// Driver can receive TSOv6.
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
/// Driver can receive TSO with ECN.
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
/// Driver can receive UFO.
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
/// Device can receive TSOv4.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// Device can receive TSOv6.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// Device can receive TSO with ECN.
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
/// Device can receive UFO.
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
/// Driver can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Configuration status field is available.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Control channel is available.
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
/// Control channel RX mode support.
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
/// Control channel VLAN filtering.
pub const VIRTIO_NET_F_CTRL_VLAN: u64 = 1 << 19;
/// Driver can send gratuitous packets.
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u64 = 1 << 21;
/// Device supports multiqueue with automatic receive steering.
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// Set MAC address through the control channel.
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = 1 << 23;
/// Legacy: notify when the available ring is empty.
pub const VIRTIO_F_NOTIFY_ON_EMPTY: u64 = 1 << 24;
/// vhost: log dirty pages for live migration. While negotiated, every guest page the data path
/// writes (receive buffers, used rings with `VHOST_VRING_F_LOG`) is marked in the log of
/// SET_LOG_BASE (needs the [`protocol::LOG_SHMFD`] protocol feature). Not on vrings with an
/// async copy channel: refused there (SET_FEATURES fails, registering a channel fails).
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;
/// Legacy: no framing assumptions about descriptor layout.
pub const VIRTIO_F_ANY_LAYOUT: u64 = 1 << 27;
/// Indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// used_event / avail_event notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// vhost-user protocol features are negotiable (GET/SET_PROTOCOL_FEATURES).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Virtio 1.0 compliance (12-byte net header, little-endian).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device is behind an IOMMU (addresses are IOVAs).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Packed virtqueue layout.
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
/// Buffers are used in the order they were made available.
pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;

/// The virtio-net features rvhost offers by default: what its split-ring data path serves.
///
/// Not offered: `ACCESS_PLATFORM` (IOTLB), whose subsystem is not built, and packed rings
/// (see [`UNSUPPORTED_FEATURES`]).
/// `LOG_ALL` (dirty logging for live migration) is offered, with the `LOG_SHMFD` protocol
/// feature.
pub const DEFAULT_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_MTU
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_HOST_UFO
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_CTRL_VQ
    | VIRTIO_NET_F_CTRL_RX
    | VIRTIO_NET_F_GUEST_ANNOUNCE
    | VIRTIO_NET_F_MQ
    | VHOST_F_LOG_ALL
    | VIRTIO_F_ANY_LAYOUT
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES
    | VIRTIO_F_VERSION_1
    | VIRTIO_F_IN_ORDER;

/// Features the control plane can never offer (their subsystems are not built); asking to
/// enable them is an error.
///
/// `VIRTIO_F_RING_PACKED` is not among them but not offered by default either: an application
/// enables it (`Driver::enable_features`, `rvhost fwd --packed`) while the packed data path
/// is being proven against QEMU and DPDK (issue 13); on sync and `ASYNC_COPY` sockets alike.
pub const UNSUPPORTED_FEATURES: u64 = VIRTIO_F_ACCESS_PLATFORM;

/// vhost-user protocol feature bits (masks), as numbered by the vhost-user spec.
pub mod protocol {
    /// Multiple queues (GET_QUEUE_NUM).
    pub const MQ: u64 = 1 << 0;
    /// Dirty log in shared memory: SET_LOG_BASE carries the log's fd and is answered (see
    /// [`VHOST_F_LOG_ALL`](super::VHOST_F_LOG_ALL)).
    pub const LOG_SHMFD: u64 = 1 << 1;
    /// SEND_RARP after migration.
    pub const RARP: u64 = 1 << 2;
    /// NEED_REPLY flag is honoured on every request.
    pub const REPLY_ACK: u64 = 1 << 3;
    /// NET_SET_MTU.
    pub const NET_MTU: u64 = 1 << 4;
    /// SET_BACKEND_REQ_FD: a channel for backend-initiated requests.
    pub const BACKEND_REQ: u64 = 1 << 5;
    /// Cross-endian rings.
    pub const CROSS_ENDIAN: u64 = 1 << 6;
    /// Crypto sessions.
    pub const CRYPTO_SESSION: u64 = 1 << 7;
    /// Postcopy page faults.
    pub const PAGEFAULT: u64 = 1 << 8;
    /// GET/SET_CONFIG.
    pub const CONFIG: u64 = 1 << 9;
    /// Backend requests may carry fds.
    pub const BACKEND_SEND_FD: u64 = 1 << 10;
    /// Host notifiers.
    pub const HOST_NOTIFIER: u64 = 1 << 11;
    /// GET/SET_INFLIGHT_FD.
    pub const INFLIGHT_SHMFD: u64 = 1 << 12;
    /// RESET_DEVICE.
    pub const RESET_DEVICE: u64 = 1 << 13;
    /// In-band notifications.
    pub const INBAND_NOTIFICATIONS: u64 = 1 << 14;
    /// GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG.
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
    /// SET_STATUS / GET_STATUS.
    pub const STATUS: u64 = 1 << 16;

    /// What rvhost offers by default.
    pub const DEFAULT: u64 = MQ
        | LOG_SHMFD
        | RARP
        | REPLY_ACK
        | NET_MTU
        | BACKEND_REQ
        | CONFIG
        | BACKEND_SEND_FD
        | INFLIGHT_SHMFD
        | RESET_DEVICE
        | CONFIGURE_MEM_SLOTS
        | STATUS;

    /// Protocol features whose subsystems are not built; never offered. (PAGEFAULT is
    /// offered on sockets registered with `Flags::POSTCOPY_SUPPORT` only.)
    pub const UNSUPPORTED: u64 =
        CROSS_ENDIAN | CRYPTO_SESSION | HOST_NOTIFIER | INBAND_NOTIFICATIONS;
}
