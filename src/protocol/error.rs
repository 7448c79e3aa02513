//! Errors of the vhost-user wire format ([`ProtocolError`]) and of the socket
//! framing ([`ConnError`]).
//!
//! Every error is fatal for the connection it happened on: the spec gives no
//! way to resynchronise a byte stream after a bad message, so the caller logs
//! the error and drops the connection (which closes every file descriptor that
//! came with the bad message).

use std::io;
use std::time::Duration;

use super::policy::Size;

/// A message that breaks the vhost-user wire format or a request's policy.
///
/// `what` fields name the request (`VHOST_USER_SET_MEM_TABLE`) when the error
/// comes from [`check`](super::policy::check) or
/// [`Message::parse_payload`](super::Message::parse_payload), or the payload
/// type when a payload is parsed on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Fewer than 12 bytes were given to [`Header::parse`](super::Header::parse).
    #[error("truncated header: {got} bytes, a vhost-user header is 12")]
    TruncatedHeader {
        /// Bytes available.
        got: usize,
    },
    /// The version bits (0-1) of the flags are not 1.
    #[error("unsupported vhost-user version {version} (flags {flags:#x}); only version 1 exists")]
    BadVersion {
        /// The version found.
        version: u32,
        /// The whole flags word.
        flags: u32,
    },
    /// Flag bits above bit 3, which the spec does not define, are set.
    #[error("reserved header flag bits set (flags {flags:#x})")]
    ReservedFlags {
        /// The whole flags word.
        flags: u32,
    },
    /// A request (not a reply) carries the REPLY flag.
    #[error("{what}: REPLY flag set on a request")]
    UnexpectedReplyFlag {
        /// The request.
        what: &'static str,
    },
    /// The request code is not a front-end message type of the spec.
    #[error("unknown front-end request code {0}")]
    UnknownRequest(u32),
    /// The request code is not a back-end message type of the spec.
    #[error("unknown back-end request code {0}")]
    UnknownBackendRequest(u32),
    /// The payload size breaks the request's (or payload type's) size rule.
    #[error("{what}: payload is {got} bytes, expected {expected}")]
    PayloadSize {
        /// The request or payload type.
        what: &'static str,
        /// Bytes received.
        got: usize,
        /// The rule.
        expected: Size,
    },
    /// The header's size field and the payload handed over disagree.
    #[error("header announces {announced} payload bytes but {got} were supplied")]
    SizeMismatch {
        /// `header.size`.
        announced: u32,
        /// Payload length.
        got: usize,
    },
    /// `header.size` is above [`MAX_PAYLOAD`](super::MAX_PAYLOAD).
    #[error("payload of {size} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge {
        /// `header.size`.
        size: u32,
        /// The limit.
        max: usize,
    },
    /// More file descriptors than the request accepts.
    #[error("{what}: {got} file descriptors, at most {max} accepted")]
    TooManyFds {
        /// The request.
        what: &'static str,
        /// Descriptors received.
        got: usize,
        /// Descriptors accepted.
        max: usize,
    },
    /// File descriptors on a request that takes none.
    #[error("{what}: carries {got} file descriptor(s) but takes none")]
    UnexpectedFds {
        /// The request.
        what: &'static str,
        /// Descriptors received.
        got: usize,
    },
    /// Fewer file descriptors than the request needs.
    #[error("{what}: expected {expected} file descriptor(s), got {got}")]
    MissingFd {
        /// The request.
        what: &'static str,
        /// Descriptors needed.
        expected: usize,
        /// Descriptors received.
        got: usize,
    },
    /// A payload field holds a value the spec does not allow.
    #[error("{what}: {field} is {value:#x}: {reason}")]
    InvalidField {
        /// The request or payload type.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl ProtocolError {
    /// Replaces the payload-type name in `what` by a request name, so that a
    /// payload parse error names the request it came with.
    #[must_use]
    pub fn in_request(mut self, request: &'static str) -> Self {
        match &mut self {
            Self::PayloadSize { what, .. }
            | Self::InvalidField { what, .. }
            | Self::UnexpectedReplyFlag { what }
            | Self::TooManyFds { what, .. }
            | Self::UnexpectedFds { what, .. }
            | Self::MissingFd { what, .. } => *what = request,
            Self::TruncatedHeader { .. }
            | Self::BadVersion { .. }
            | Self::ReservedFlags { .. }
            | Self::UnknownRequest(_)
            | Self::UnknownBackendRequest(_)
            | Self::SizeMismatch { .. }
            | Self::PayloadTooLarge { .. } => {}
        }
        self
    }
}

/// An error of the socket framing ([`Connection`](super::Connection),
/// [`Endpoint`](super::Endpoint)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The peer broke the wire format.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A socket call failed.
    #[error("vhost-user socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection (EOF, `EPIPE`, `ECONNRESET`).
    #[error("peer closed the connection ({pending} bytes of an unfinished message discarded)")]
    Closed {
        /// Bytes of a partly received message that were dropped (0 on a
        /// clean close between messages).
        pending: usize,
    },
    /// `recvmsg` reported `MSG_CTRUNC`: the peer sent more descriptors than
    /// the control buffer holds. The ones that did arrive were closed.
    #[error("control data truncated (MSG_CTRUNC): the peer sent more than {max} file descriptors")]
    FdsTruncated {
        /// Descriptors the control buffer holds.
        max: usize,
    },
    /// The output queue would exceed its bound: the peer does not read.
    #[error("output queue full: {queued} bytes queued, {adding} more would exceed {limit}")]
    OutputFull {
        /// Bytes already queued.
        queued: usize,
        /// Bytes of the message refused.
        adding: usize,
        /// The bound.
        limit: usize,
    },
    /// No reply arrived in time.
    #[error("no reply to {request} within {timeout:?}")]
    Timeout {
        /// The request waited on.
        request: &'static str,
        /// The time allowed.
        timeout: Duration,
    },
    /// A reply that does not answer the request.
    #[error("bad reply to {request}: {reason} (request code {got_request}, flags {flags:#x})")]
    BadReply {
        /// The request waited on.
        request: &'static str,
        /// What is wrong.
        reason: &'static str,
        /// Request code of the reply.
        got_request: u32,
        /// Flags of the reply.
        flags: u32,
    },
    /// The back-end acknowledged a request (REPLY_ACK) with a non-zero status.
    #[error("{request} failed: the peer acknowledged with status {code:#x}")]
    Nack {
        /// The request.
        request: &'static str,
        /// The non-zero status.
        code: u64,
    },
}

impl ConnError {
    /// Whether the error is a plain close of the connection by the peer.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_request_renames_payload_errors_only() {
        let e = ProtocolError::PayloadSize {
            what: "VringState",
            got: 3,
            expected: Size::Exact(8),
        }
        .in_request("VHOST_USER_SET_VRING_NUM");
        assert_eq!(
            e.to_string(),
            "VHOST_USER_SET_VRING_NUM: payload is 3 bytes, expected exactly 8 bytes"
        );
        let e = ProtocolError::UnknownRequest(99).in_request("X");
        assert_eq!(e, ProtocolError::UnknownRequest(99));
    }

    #[test]
    fn messages_are_readable() {
        let e = ConnError::Closed { pending: 5 };
        assert!(e.is_closed());
        assert!(e.to_string().contains("5 bytes"));
        let e = ConnError::from(ProtocolError::BadVersion {
            version: 2,
            flags: 2,
        });
        assert!(e.to_string().contains("version 2"));
    }
}
