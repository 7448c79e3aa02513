//! What each front-end request may carry, and the check a back-end applies to
//! every request before handling it.
//!
//! [`policy`] is the table: one row per [`FrontendReq`], stating the payload
//! size rule, the file descriptors accepted, whether the request is answered
//! by definition, and the protocol feature that gates it. [`check`] applies
//! the header, size and fd rules. What a request does to the device (its
//! handler, and what of the data plane it quiesces) is the device layer's
//! table, in `driver/handlers.rs`.
//!
//! Sizes are those QEMU sends (`hw/virtio/vhost-user.c`) where the spec's
//! message table is loose: `SET_LOG_BASE` carries the 16-byte log
//! description (not a `u64`), requests with "N/A" payload are sent with
//! size 0, `SET_MEM_TABLE` is `8 + 32 * nregions` bytes.

use std::fmt;

use super::error::ProtocolError;
use super::message::{FrontendReq, Header, ProtocolFeature};
use super::payload::{Config, MemoryTable, Payload, VringFile};
use super::{MAX_FDS, MAX_PAYLOAD};

/// A payload size rule, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Exactly this many.
    Exact(u32),
    /// At least this many (and at most [`MAX_PAYLOAD`]).
    Min(u32),
    /// From the first to the second, both included.
    Range(u32, u32),
}

impl Size {
    /// Whether a payload of `n` bytes satisfies the rule.
    pub const fn allows(self, n: usize) -> bool {
        match self {
            Size::Exact(e) => n == e as usize,
            Size::Min(m) => n >= m as usize && n <= MAX_PAYLOAD,
            Size::Range(a, b) => n >= a as usize && n <= b as usize,
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Size::Exact(n) => write!(f, "exactly {n} bytes"),
            Size::Min(n) => write!(f, "at least {n} bytes"),
            Size::Range(a, b) => write!(f, "{a} to {b} bytes"),
        }
    }
}

/// File descriptors a request accepts in its ancillary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fds {
    /// None.
    None,
    /// Exactly one.
    One,
    /// Exactly one, unless bit 8 of the `u64` payload (no-fd flag) is set:
    /// then none (`SET_VRING_KICK/CALL/ERR`).
    OneUnlessNoFdFlag,
    /// At most this many. `SET_MEM_TABLE` (`UpTo(8)`) needs exactly one per
    /// region; `REM_MEM_REG` (`UpTo(1)`) tolerates a stray fd, which the
    /// back-end must close unused (spec).
    UpTo(u8),
}

/// Whether the back-end answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// No reply, unless NEED_REPLY is set (REPLY_ACK): then one `u64`
    /// status, 0 for success.
    AckIfRequested,
    /// Always exactly one reply with the request's reply payload; NEED_REPLY
    /// changes nothing (no second, ack-only reply).
    Always,
    /// A reply when this protocol feature was negotiated (`SET_LOG_BASE`
    /// with LOG_SHMFD); otherwise as [`Reply::AckIfRequested`].
    IfProtocolFeature(ProtocolFeature),
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The request.
    pub request: FrontendReq,
    /// Payload size rule.
    pub size: Size,
    /// File descriptors accepted.
    pub fds: Fds,
    /// Reply by definition.
    pub reply: Reply,
    /// The protocol feature that must be negotiated for the request to be
    /// legal (informative: [`check`] does not know the negotiated set).
    pub feature: Option<ProtocolFeature>,
}

impl Policy {
    /// Whether the back-end must send a reply to this request, given its
    /// header and the negotiated protocol features. A request with NEED_REPLY
    /// is always answered (once), even if REPLY_ACK was not negotiated: the
    /// front-end that set the flag is waiting.
    pub fn reply_expected(&self, header: &Header, protocol_features: u64) -> bool {
        match self.reply {
            Reply::Always => true,
            Reply::IfProtocolFeature(f) => f.is_set(protocol_features) || header.need_reply(),
            Reply::AckIfRequested => header.need_reply(),
        }
    }
}

/// The policy of `req`.
pub const fn policy(req: FrontendReq) -> Policy {
    use FrontendReq as R;
    use ProtocolFeature as F;
    use Reply::{AckIfRequested as Ack, Always};
    use Size::{Exact, Range};

    const fn row(
        request: FrontendReq,
        size: Size,
        fds: Fds,
        reply: Reply,
        feature: Option<ProtocolFeature>,
    ) -> Policy {
        Policy {
            request,
            size,
            fds,
            reply,
            feature,
        }
    }
    const MEM_TABLE: Size = MemoryTable::SIZE;
    const CONFIG: Size = Config::SIZE;
    const MAX: u32 = MAX_PAYLOAD as u32;

    match req {
        R::GetFeatures => row(req, Exact(0), Fds::None, Always, None),
        R::SetFeatures => row(req, Exact(8), Fds::None, Ack, None),
        R::SetOwner => row(req, Exact(0), Fds::None, Ack, None),
        R::ResetOwner => row(req, Exact(0), Fds::None, Ack, None),
        R::SetMemTable => row(req, MEM_TABLE, Fds::UpTo(8), Ack, None),
        R::SetLogBase => row(
            req,
            Exact(16),
            Fds::One,
            Reply::IfProtocolFeature(F::LogShmfd),
            Some(F::LogShmfd),
        ),
        R::SetLogFd => row(req, Exact(0), Fds::One, Ack, None),
        R::SetVringNum => row(req, Exact(8), Fds::None, Ack, None),
        R::SetVringAddr => row(req, Exact(40), Fds::None, Ack, None),
        R::SetVringBase => row(req, Exact(8), Fds::None, Ack, None),
        R::GetVringBase => row(req, Exact(8), Fds::None, Always, None),
        R::SetVringKick | R::SetVringCall | R::SetVringErr => {
            row(req, Exact(8), Fds::OneUnlessNoFdFlag, Ack, None)
        }
        R::GetProtocolFeatures => row(req, Exact(0), Fds::None, Always, None),
        R::SetProtocolFeatures => row(req, Exact(8), Fds::None, Ack, None),
        R::GetQueueNum => row(req, Exact(0), Fds::None, Always, Some(F::Mq)),
        R::SetVringEnable => row(req, Exact(8), Fds::None, Ack, None),
        R::SendRarp => row(req, Exact(8), Fds::None, Ack, Some(F::Rarp)),
        R::NetSetMtu => row(req, Exact(8), Fds::None, Ack, Some(F::NetMtu)),
        R::SetBackendReqFd => row(req, Exact(0), Fds::One, Ack, Some(F::BackendReq)),
        R::IotlbMsg => row(req, Exact(32), Fds::None, Ack, None),
        R::SetVringEndian => row(req, Exact(8), Fds::None, Ack, Some(F::CrossEndian)),
        R::GetConfig => row(req, CONFIG, Fds::None, Always, Some(F::Config)),
        R::SetConfig => row(req, CONFIG, Fds::None, Ack, Some(F::Config)),
        R::CreateCryptoSession => row(
            req,
            Range(8, MAX),
            Fds::None,
            Always,
            Some(F::CryptoSession),
        ),
        R::CloseCryptoSession => row(req, Exact(8), Fds::None, Ack, Some(F::CryptoSession)),
        R::PostcopyAdvise => row(req, Exact(0), Fds::None, Always, Some(F::Pagefault)),
        R::PostcopyListen => row(req, Exact(0), Fds::None, Ack, Some(F::Pagefault)),
        R::PostcopyEnd => row(req, Exact(0), Fds::None, Always, Some(F::Pagefault)),
        R::GetInflightFd => row(req, Exact(24), Fds::None, Always, Some(F::InflightShmfd)),
        R::SetInflightFd => row(req, Exact(24), Fds::One, Ack, Some(F::InflightShmfd)),
        R::GpuSetSocket => row(req, Exact(0), Fds::One, Ack, None),
        R::ResetDevice => row(req, Exact(0), Fds::None, Ack, Some(F::ResetDevice)),
        R::VringKick => row(req, Exact(8), Fds::None, Ack, Some(F::InbandNotifications)),
        R::GetMaxMemSlots => row(req, Exact(0), Fds::None, Always, Some(F::ConfigureMemSlots)),
        R::AddMemReg => row(req, Exact(40), Fds::One, Ack, Some(F::ConfigureMemSlots)),
        R::RemMemReg => row(
            req,
            Exact(40),
            Fds::UpTo(1),
            Ack,
            Some(F::ConfigureMemSlots),
        ),
        R::SetStatus => row(req, Exact(8), Fds::None, Ack, Some(F::Status)),
        R::GetStatus => row(req, Exact(0), Fds::None, Always, Some(F::Status)),
        R::GetSharedObject => row(req, Exact(16), Fds::None, Always, Some(F::SharedObject)),
        R::SetDeviceStateFd => row(req, Exact(8), Fds::One, Always, Some(F::DeviceState)),
        R::CheckDeviceState => row(req, Exact(0), Fds::None, Always, Some(F::DeviceState)),
    }
}

/// Checks a received front-end request: version 1 and no reserved or REPLY
/// flag, a known request code, `payload.len() == header.size <= MAX_PAYLOAD`,
/// the request's size rule, and its fd rule (including the payload-dependent
/// ones: `SET_MEM_TABLE` needs one fd per region, `SET_VRING_KICK/CALL/ERR`
/// none when the no-fd flag is set; `GET/SET_CONFIG` size fields must match).
///
/// On error the caller drops the message, which closes its fds.
pub fn check(header: &Header, payload: &[u8], nfds: usize) -> Result<FrontendReq, ProtocolError> {
    header.check_flags()?;
    let req = header.frontend_request()?;
    let what = req.name();
    if header.is_reply() {
        return Err(ProtocolError::UnexpectedReplyFlag { what });
    }
    if header.size as usize > MAX_PAYLOAD {
        return Err(ProtocolError::PayloadTooLarge {
            size: header.size,
            max: MAX_PAYLOAD,
        });
    }
    if payload.len() != header.size as usize {
        return Err(ProtocolError::SizeMismatch {
            announced: header.size,
            got: payload.len(),
        });
    }
    if nfds > MAX_FDS {
        return Err(ProtocolError::TooManyFds {
            what,
            got: nfds,
            max: MAX_FDS,
        });
    }
    let p = policy(req);
    if !p.size.allows(payload.len()) {
        return Err(ProtocolError::PayloadSize {
            what,
            got: payload.len(),
            expected: p.size,
        });
    }
    match p.fds {
        Fds::None => fd_count(what, nfds, 0)?,
        Fds::One => fd_count(what, nfds, 1)?,
        Fds::OneUnlessNoFdFlag => {
            let file = VringFile::parse(payload).map_err(|e| e.in_request(what))?;
            fd_count(what, nfds, usize::from(!file.no_fd))?;
        }
        Fds::UpTo(max) => {
            if nfds > usize::from(max) {
                return Err(ProtocolError::TooManyFds {
                    what,
                    got: nfds,
                    max: max.into(),
                });
            }
        }
    }
    match req {
        FrontendReq::SetMemTable => {
            let table = MemoryTable::parse(payload).map_err(|e| e.in_request(what))?;
            fd_count(what, nfds, table.regions.len())?;
        }
        FrontendReq::GetConfig | FrontendReq::SetConfig => {
            Config::parse(payload).map_err(|e| e.in_request(what))?;
        }
        _ => {}
    }
    Ok(req)
}

fn fd_count(what: &'static str, got: usize, expected: usize) -> Result<(), ProtocolError> {
    if got == expected {
        Ok(())
    } else {
        Err(fd_count_error(what, got, expected))
    }
}

#[cold]
fn fd_count_error(what: &'static str, got: usize, expected: usize) -> ProtocolError {
    if expected == 0 {
        ProtocolError::UnexpectedFds { what, got }
    } else if got < expected {
        ProtocolError::MissingFd {
            what,
            expected,
            got,
        }
    } else {
        ProtocolError::TooManyFds {
            what,
            got,
            max: expected,
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
