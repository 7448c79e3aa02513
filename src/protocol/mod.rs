//! The vhost-user wire format and socket framing.
//!
//! The protocol is QEMU's `docs/interop/vhost-user.rst`: every message is a
//! 12-byte [`Header`] (request code, flags, payload size) followed by the
//! payload; file descriptors travel as `SCM_RIGHTS` ancillary data with the
//! message's first bytes.
//!
//! - [`message`]: request codes ([`FrontendReq`], [`BackendReq`]), the
//!   [`Header`] and its flags, protocol feature bits.
//! - [`payload`]: payload types with panic-free codecs.
//! - [`policy`](mod@policy): per-request rules (size, fds, reply, data-plane effect) and
//!   [`check`].
//! - [`conn`]: [`Connection`], non-blocking framing for the back-end's event
//!   loop; [`endpoint`]: [`Endpoint`], blocking request/reply for a front-end.
//! - [`error`]: [`ProtocolError`] and [`ConnError`].
//!
//! # What a back-end must watch for
//!
//! - Replies. `GET_FEATURES`, `GET_PROTOCOL_FEATURES`, `GET_VRING_BASE`,
//!   `GET_QUEUE_NUM`, `GET_CONFIG`, `GET_INFLIGHT_FD` (with its fd),
//!   `GET_MAX_MEM_SLOTS`, `GET_STATUS`, `POSTCOPY_ADVISE` (with the
//!   userfaultfd), `POSTCOPY_END`, `CREATE_CRYPTO_SESSION`,
//!   `GET_SHARED_OBJECT`, `SET_DEVICE_STATE_FD` and `CHECK_DEVICE_STATE`
//!   are always answered, exactly once, whatever NEED_REPLY says.
//!   `SET_LOG_BASE` is answered when LOG_SHMFD was negotiated (QEMU waits
//!   for it; DPDK sends an empty payload). In postcopy (after
//!   `POSTCOPY_LISTEN`) `SET_MEM_TABLE` and `ADD_MEM_REG` are answered with
//!   the back-end's mapping addresses, and QEMU acknowledges with a
//!   `SET_MEM_TABLE` carrying a zero `u64` (after a batch of `ADD_MEM_REG`s:
//!   one 8-byte `ADD_MEM_REG` carrying a zero `u64`; QEMU 7.2 sends these
//!   without NEED_REPLY and waits for no answer). Every other request is answered
//!   only when it carries NEED_REPLY (REPLY_ACK), with a `u64` status, 0 for
//!   success; a reply sets REPLY, keeps the request code and clears
//!   NEED_REPLY. A failed `GET_CONFIG` is answered with an empty payload.
//! - Without REPLY_ACK, QEMU sends `GET_FEATURES` after some `SET_*`
//!   requests only as a barrier: answer it as usual.
//! - `GET_VRING_BASE` stops the ring: the worker must have left the queue
//!   before the index is read and returned. A ring starts on its first kick
//!   (or at `SET_VRING_KICK` with the no-fd flag: polling), and is enabled
//!   by `SET_VRING_ENABLE`, or at once when `SET_FEATURES` lacks
//!   [`VHOST_USER_F_PROTOCOL_FEATURES`].
//! - Descriptors come with `SET_MEM_TABLE` (one per region),
//!   `ADD_MEM_REG`, `SET_LOG_BASE`, `SET_LOG_FD`, `SET_VRING_KICK/CALL/ERR`
//!   (unless bit 8 of the payload is set), `SET_BACKEND_REQ_FD`,
//!   `SET_INFLIGHT_FD`, `GPU_SET_SOCKET` and `SET_DEVICE_STATE_FD`;
//!   `REM_MEM_REG` may carry a stray one, to be closed unused.
//! - Negotiating INBAND_NOTIFICATIONS without BACKEND_REQ and REPLY_ACK is
//!   an error the back-end can only answer by closing the connection.
//! - QEMU keeps one vhost device per queue pair, all on one connection
//!   (QEMU 7.2, as seen from rvhost): each sends `GET_FEATURES`,
//!   `GET/SET_PROTOCOL_FEATURES`, `GET_MAX_MEM_SLOTS`, `SET_FEATURES`,
//!   `GET_STATUS`, the setup of its own vrings, and its own memory table:
//!   with CONFIGURE_MEM_SLOTS an `ADD_MEM_REG` for every region, the same
//!   regions (same addresses, offset and file) as the other devices sent.
//!   `SET_OWNER`, `GET_QUEUE_NUM` and `SET_BACKEND_REQ_FD` come once.
//!   An exact duplicate region counts a reference; `REM_MEM_REG` drops one.

pub mod conn;
pub mod endpoint;
pub mod error;
pub mod message;
pub mod payload;
pub mod policy;

pub use conn::{Connection, Message};
pub use endpoint::Endpoint;
pub use error::{ConnError, ProtocolError};
pub use message::{
    BackendReq, FrontendReq, Header, ProtocolFeature, RequestCode, VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_F_PROTOCOL_FEATURES_MASK,
};
pub use policy::{Fds, Policy, Reply, Size, check, policy};

/// Largest payload accepted or sent, in bytes.
///
/// The largest legal payloads are far below it: `SET_MEM_TABLE` is
/// `8 + 8 * 32 = 264` bytes, `GET/SET_CONFIG` `12 + 256 = 268`, and QEMU's
/// crypto session description about 1.1 KiB (a 1024-byte asymmetric key).
/// One page leaves room for those and for small future extensions, while a
/// peer cannot make the back-end allocate more than 4 KiB per message. (The
/// rust-vmm `vhost` crate uses the same bound; DPDK uses the size of its
/// payload union.)
pub const MAX_PAYLOAD: usize = 4096;

/// Most file descriptors accepted with one message: one per region of a
/// `SET_MEM_TABLE`, and the spec's limit for the back-end channel.
pub const MAX_FDS: usize = VHOST_MEMORY_BASELINE_NREGIONS;

/// Regions in a `SET_MEM_TABLE`.
#[doc(alias = "VHOST_MEMORY_MAX_NREGIONS")]
pub const VHOST_MEMORY_BASELINE_NREGIONS: usize = 8;

/// Largest device config space access (`GET/SET_CONFIG`).
pub const VHOST_USER_MAX_CONFIG_SIZE: usize = 256;

/// Upper bound QEMU puts on `GET_MAX_MEM_SLOTS` (with CONFIGURE_MEM_SLOTS
/// the memory table is built with `ADD_MEM_REG`, one region at a time).
pub const VHOST_USER_MAX_RAM_SLOTS: u64 = 512;

/// Dirty log page size: bit `n` of the log covers guest bytes
/// `n * 4096 .. (n + 1) * 4096`.
pub const VHOST_LOG_PAGE: u64 = 0x1000;

/// Bound of a [`Connection`]'s output queue.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
