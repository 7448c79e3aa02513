//! [`FrontendError`], the control-plane error of the front-end, and [`LayoutError`], the
//! errors of placing rings and buffers in the shared memory.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rvhost_hugepages::region::RegionError;

use crate::protocol::{ConnError, FrontendReq};

/// Why rings or buffers cannot be placed in the shared memory, or a ring accessor refused its
/// addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A queue size that is not a power of two in 1..=32768 (virtio 1.2 §2.7).
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadQueueSize(u32),
    /// A ring or buffer offset that is not aligned as required.
    #[error("{what} at offset {offset:#x} is not {align}-byte aligned")]
    Misaligned {
        /// The object.
        what: &'static str,
        /// Its offset in the shared memory.
        offset: usize,
        /// Required alignment.
        align: usize,
    },
    /// An object that does not fit in the shared memory.
    #[error("{what} [{offset:#x}, +{len:#x}) is outside the {size:#x}-byte shared memory")]
    OutOfBounds {
        /// The object.
        what: &'static str,
        /// Its offset.
        offset: usize,
        /// Its length.
        len: usize,
        /// Size of the shared memory.
        size: usize,
    },
    /// The rings and buffers need more memory than the options give.
    #[error(
        "rings and buffers need more than the {have:#x} bytes of shared memory \
         (stopped at {what}); raise mem_size or lower queue_size/buf_size/queue_pairs"
    )]
    TooSmall {
        /// The object that did not fit.
        what: &'static str,
        /// Bytes of shared memory.
        have: usize,
    },
    /// One object is larger than a memory region (objects never straddle regions).
    #[error("{what} of {len:#x} bytes is larger than a {chunk:#x}-byte memory region")]
    LargerThanRegion {
        /// The object.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Size of a region.
        chunk: usize,
    },
    /// The memory cannot be split into that many page-aligned regions.
    #[error("{len:#x} bytes cannot be split into {regions} regions of whole {page:#x}-byte pages")]
    TooManyRegions {
        /// Regions asked for.
        regions: usize,
        /// Bytes of shared memory.
        len: usize,
        /// Page size.
        page: usize,
    },
    /// Guest-physical addresses overflow `u64`.
    #[error("guest-physical addresses overflow (base {base:#x}, gap {gap:#x})")]
    GpaOverflow {
        /// `gpa_base`.
        base: u64,
        /// `gpa_gap`.
        gap: u64,
    },
}

/// Everything that can go wrong on the front-end's control plane. Each variant names the step
/// (socket operation, request, option) that failed and keeps the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    /// An option is out of range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option (field of [`FrontendOptions`](super::FrontendOptions)).
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The shared memory could not be allocated.
    #[error("allocating {size:#x} bytes of shared memory")]
    Memory {
        /// Bytes asked for.
        size: usize,
        /// The cause.
        #[source]
        source: RegionError,
    },
    /// Rings or buffers do not fit in the shared memory.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// An eventfd could not be created.
    #[error("creating the {what} eventfd of vring {vring}")]
    Eventfd {
        /// `kick` or `call`.
        what: &'static str,
        /// The vring.
        vring: u16,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Connecting to the back-end's socket failed.
    #[error("{}: connect failed", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause (of the last attempt).
        #[source]
        source: io::Error,
    },
    /// Binding or listening on the front-end's socket failed.
    #[error("{}: {op} failed", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// `bind`, `set_nonblocking`, ...
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No back-end connected in time.
    #[error("{}: no back-end connected within {timeout:?}", path.display())]
    AcceptTimeout {
        /// The socket path.
        path: PathBuf,
        /// The time allowed.
        timeout: Duration,
    },
    /// Accepting the back-end's connection failed.
    #[error("{}: accept failed", path.display())]
    Accept {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket could not be set up for blocking request/reply.
    #[error("setting up the vhost-user socket")]
    Socket(#[source] io::Error),
    /// An operation that needs a connection was called without one.
    #[error("{0}: not connected to a back-end")]
    NotConnected(&'static str),
    /// An operation that needs the other role or another state.
    #[error("{op}: {reason}")]
    State {
        /// The operation.
        op: &'static str,
        /// Why it cannot run now.
        reason: &'static str,
    },
    /// A request (or its reply or acknowledgement) failed.
    #[error("{req}: {source}")]
    Request {
        /// The request.
        req: FrontendReq,
        /// The cause.
        #[source]
        source: ConnError,
    },
    /// A per-vring request (or its reply or acknowledgement) failed.
    #[error("{req} (vring {vring}): {source}")]
    VringRequest {
        /// The request.
        req: FrontendReq,
        /// The vring.
        vring: u16,
        /// The cause.
        #[source]
        source: ConnError,
    },
    /// The back-end answered with something the front-end cannot use.
    #[error("{req}: {reason}")]
    BadReply {
        /// The request.
        req: FrontendReq,
        /// What is wrong.
        reason: String,
    },
    /// The back-end does not offer what the options require.
    #[error("negotiation: {0}")]
    Negotiation(String),
}

impl FrontendError {
    /// Wraps a request's error.
    pub(crate) fn request(req: FrontendReq) -> impl FnOnce(ConnError) -> FrontendError {
        move |source| FrontendError::Request { req, source }
    }

    /// Wraps a per-vring request's error.
    pub(crate) fn vring(req: FrontendReq, vring: u16) -> impl FnOnce(ConnError) -> FrontendError {
        move |source| FrontendError::VringRequest { req, vring, source }
    }

    /// The request that failed, if the error comes from one.
    pub fn failed_request(&self) -> Option<FrontendReq> {
        match self {
            Self::Request { req, .. }
            | Self::VringRequest { req, .. }
            | Self::BadReply { req, .. } => Some(*req),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_step() {
        let e =
            FrontendError::vring(FrontendReq::SetVringAddr, 3)(ConnError::Closed { pending: 0 });
        assert_eq!(
            e.to_string(),
            "VHOST_USER_SET_VRING_ADDR (vring 3): peer closed the connection \
             (0 bytes of an unfinished message discarded)"
        );
        assert_eq!(e.failed_request(), Some(FrontendReq::SetVringAddr));
        let e = FrontendError::request(FrontendReq::SetOwner)(ConnError::Nack {
            request: "VHOST_USER_SET_OWNER",
            code: 1,
        });
        assert!(e.to_string().starts_with("VHOST_USER_SET_OWNER: "));
        assert_eq!(FrontendError::NotConnected("start").failed_request(), None);
        let e = FrontendError::from(LayoutError::TooSmall {
            what: "buffer",
            have: 0x1000,
        });
        assert!(e.to_string().contains("raise mem_size"));
    }
}
