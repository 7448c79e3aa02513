//! Message framing over a non-blocking Unix stream socket, for the back-end's
//! event loop.
//!
//! # Receiving
//!
//! [`Connection::recv`] never reads past the end of the message it is
//! assembling: it asks `recvmsg` for the rest of the 12-byte header, then for
//! exactly `header.size` payload bytes. Because the kernel hands out the file
//! descriptors of a `sendmsg` together with the first bytes of that send, and
//! never glues bytes that follow an fd-carrying send into the same read,
//! every descriptor received belongs to the message whose bytes came with
//! it. A peer that sends two messages in one write gets them back from two
//! `recv` calls; a peer that stalls mid-message leaves a partial buffer and
//! `recv` returns `Ok(None)`.
//!
//! Descriptors are wrapped into [`OwnedFd`] as soon as `recvmsg` returns, so
//! every path that drops them (errors, EOF, a rejected message) closes them.
//! They are received with `MSG_CMSG_CLOEXEC`.
//!
//! The control buffer holds [`MAX_FDS`] descriptors. When a peer sends more,
//! the kernel installs those that fit and sets `MSG_CTRUNC`. nix's
//! `RecvMsg::cmsgs()` refuses to iterate a truncated buffer, which would leak
//! the installed descriptors, so the control buffer is decoded here, safely,
//! from the bytes the kernel wrote (`take_scm_rights`).
//!
//! # Sending
//!
//! [`Connection::send`] tries one non-blocking `sendmsg`; whatever the socket
//! does not take is queued (with duplicates of the descriptors, if none of the
//! message went out) and [`Connection::flush`] continues when the socket is
//! writable. Descriptors always travel with the first byte of their message.
//! The queue is bounded by [`OUTPUT_LIMIT`]: a peer that does not read makes
//! `send` fail, and the caller disconnects it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::cmsg_space;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, recvmsg, sendmsg};

use super::error::{ConnError, ProtocolError};
use super::message::{FrontendReq, Header};
use super::payload::Payload;
use super::{MAX_FDS, MAX_PAYLOAD, OUTPUT_LIMIT};

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// Exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// Descriptors that came with the message, in order (closed on drop).
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// Applies [`check`](super::policy::check) to this front-end request.
    pub fn check(&self) -> Result<FrontendReq, ProtocolError> {
        super::policy::check(&self.header, &self.payload, self.fds.len())
    }

    /// Parses the payload; errors name the front-end request when the code is
    /// one, else the payload type.
    pub fn parse_payload<T: Payload>(&self) -> Result<T, ProtocolError> {
        T::parse(&self.payload).map_err(|e| match self.header.frontend_request() {
            Ok(req) => e.in_request(req.name()),
            Err(_) => e,
        })
    }

    /// Removes and returns the first descriptor.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        if self.fds.is_empty() {
            None
        } else {
            Some(self.fds.remove(0))
        }
    }
}

/// What one `recvmsg` brought.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// Bytes read (0 at EOF).
    pub(crate) bytes: usize,
    /// Descriptors received (already owned).
    pub(crate) fds: Vec<OwnedFd>,
    /// `MSG_CTRUNC` was set.
    pub(crate) truncated: bool,
}

/// The checks every outgoing message passes, on the backend and the frontend side: the
/// header's size is the payload's, within [`MAX_PAYLOAD`], with at most [`MAX_FDS`] fds.
pub(crate) fn check_outgoing(
    header: &Header,
    payload: &[u8],
    nfds: usize,
) -> Result<(), ProtocolError> {
    if header.size as usize != payload.len() {
        return Err(ProtocolError::SizeMismatch {
            announced: header.size,
            got: payload.len(),
        });
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(ProtocolError::PayloadTooLarge {
            size: header.size,
            max: MAX_PAYLOAD,
        });
    }
    if nfds > MAX_FDS {
        return Err(ProtocolError::TooManyFds {
            what: "outgoing message",
            got: nfds,
            max: MAX_FDS,
        });
    }
    Ok(())
}

/// A control buffer for `MAX_FDS` descriptors.
pub(crate) fn cmsg_buffer() -> Vec<u8> {
    cmsg_space!([RawFd; MAX_FDS])
}

/// One `recvmsg` into `buf`, retrying on `EINTR`. `Ok(None)` means `EAGAIN`
/// (no data now, or the receive timeout expired).
pub(crate) fn recv_chunk(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    cmsg: &mut [u8],
    flags: MsgFlags,
) -> io::Result<Option<Chunk>> {
    loop {
        cmsg.fill(0);
        let mut iov = [IoSliceMut::new(buf)];
        let res = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut *cmsg),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        );
        // Keep only plain values so that the borrow of `cmsg` ends here.
        let res = res.map(|m| (m.bytes, m.flags.contains(MsgFlags::MSG_CTRUNC)));
        match res {
            Ok((bytes, truncated)) => {
                return Ok(Some(Chunk {
                    bytes,
                    fds: take_scm_rights(cmsg),
                    truncated,
                }));
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Bytes of `cmsghdr.cmsg_len` in the kernel ABI (`__kernel_size_t`).
const CMSG_LEN_BYTES: usize = size_of::<usize>();
/// `CMSG_ALIGN`: control messages are aligned to `size_t` (`None` on overflow).
fn cmsg_align(n: usize) -> Option<usize> {
    Some(n.checked_add(CMSG_LEN_BYTES - 1)? & !(CMSG_LEN_BYTES - 1))
}
/// `CMSG_ALIGN(sizeof(struct cmsghdr))`: where a control message's data starts.
const CMSG_HDR: usize = (size_of::<libc::cmsghdr>() + CMSG_LEN_BYTES - 1) & !(CMSG_LEN_BYTES - 1);

/// Decodes the control messages the kernel wrote into `buf` (zeroed before
/// the call, so the first zero `cmsg_len` ends the list) and takes ownership
/// of every descriptor of every `SCM_RIGHTS` message, including a truncated
/// one (`MSG_CTRUNC`: the kernel writes the descriptors that fit and sets
/// `cmsg_len` to match).
pub(crate) fn take_scm_rights(buf: &[u8]) -> Vec<OwnedFd> {
    let level_at = offset_of!(libc::cmsghdr, cmsg_level);
    let type_at = offset_of!(libc::cmsghdr, cmsg_type);
    let mut fds = Vec::new();
    let mut off = 0usize;
    while let Some(msg) = buf.get(off..) {
        let Some(len) = read_ne::<CMSG_LEN_BYTES>(msg, 0).map(usize::from_ne_bytes) else {
            break;
        };
        if len < CMSG_HDR {
            break;
        }
        let level = read_ne::<4>(msg, level_at).map(i32::from_ne_bytes);
        let kind = read_ne::<4>(msg, type_at).map(i32::from_ne_bytes);
        let data = msg.get(CMSG_HDR..len.min(msg.len())).unwrap_or(&[]);
        if level == Some(libc::SOL_SOCKET) && kind == Some(libc::SCM_RIGHTS) {
            for raw in data.chunks_exact(4) {
                let Ok(raw) = <[u8; 4]>::try_from(raw).map(i32::from_ne_bytes) else {
                    continue;
                };
                if raw >= 0 {
                    // SAFETY: the kernel has just installed this descriptor in
                    // our fd table for this recvmsg (SCM_RIGHTS); nothing else
                    // knows it, and it is wrapped exactly once, here.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        match cmsg_align(len).and_then(|step| off.checked_add(step)) {
            Some(next) if next > off => off = next,
            _ => break,
        }
    }
    fds
}

fn read_ne<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..)?.first_chunk::<N>().copied()
}

/// One `sendmsg` of `iov` with `fds`, retrying on `EINTR`, never raising
/// `SIGPIPE`. Returns the bytes sent.
pub(crate) fn send_chunk(
    fd: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fds: &[RawFd],
    flags: MsgFlags,
) -> io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            fd.as_raw_fd(),
            iov,
            cmsgs,
            flags | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Maps a socket error to `Closed` when it means the peer is gone.
pub(crate) fn io_error(e: io::Error, pending: usize) -> ConnError {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => ConnError::Closed { pending },
        _ => ConnError::Io(e),
    }
}

/// A queued outgoing message.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    /// Sent with the first byte; empty once any byte went out.
    fds: Vec<OwnedFd>,
}

/// The back-end side of a vhost-user connection: a non-blocking socket, the
/// message being assembled and the output queue.
///
/// Register [`as_fd`](AsFd::as_fd) with epoll for reading, and for writing
/// while [`wants_write`](Self::wants_write). Any error is fatal: drop the
/// connection.
#[derive(Debug)]
pub struct Connection {
    sock: UnixStream,
    cmsg: Vec<u8>,
    head: [u8; Header::SIZE],
    head_len: usize,
    header: Option<Header>,
    payload: Vec<u8>,
    payload_len: usize,
    fds: Vec<OwnedFd>,
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    out_limit: usize,
}

impl Connection {
    /// Takes the socket and puts it in non-blocking mode.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            cmsg: cmsg_buffer(),
            head: [0; Header::SIZE],
            head_len: 0,
            header: None,
            payload: Vec::new(),
            payload_len: 0,
            fds: Vec::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            out_limit: OUTPUT_LIMIT,
        })
    }

    /// The socket.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Changes the output queue bound (default [`OUTPUT_LIMIT`]).
    pub fn set_output_limit(&mut self, limit: usize) {
        self.out_limit = limit;
    }

    /// Bytes of a partly received message (0 between messages).
    pub fn pending_input(&self) -> usize {
        self.head_len + self.payload_len
    }

    /// Reads what is available. Returns `Ok(Some(msg))` once a whole message
    /// has arrived, `Ok(None)` when the socket has no more bytes for now, and
    /// `Err(ConnError::Closed)` at EOF. Call it until it returns `Ok(None)`
    /// after each readiness event (edge-triggered epoll needs that; bytes of a
    /// next message may already be waiting).
    ///
    /// Errors: `header.size > MAX_PAYLOAD` (before allocating), more than
    /// [`MAX_FDS`] descriptors for one message, `MSG_CTRUNC`, socket errors.
    /// The header is not otherwise validated: see
    /// [`Message::check`].
    pub fn recv(&mut self) -> Result<Option<Message>, ConnError> {
        loop {
            if let Some(header) = self.header {
                if self.payload_len == self.payload.len() {
                    return Ok(Some(self.finish(header)));
                }
            }
            let want = match self.header {
                None => self.head.get_mut(self.head_len..),
                Some(_) => self.payload.get_mut(self.payload_len..),
            }
            .unwrap_or(&mut []);
            let pending = self.head_len + self.payload_len;
            let chunk = recv_chunk(
                self.sock.as_fd(),
                want,
                &mut self.cmsg,
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(|e| io_error(e, pending))?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            if chunk.truncated {
                return Err(ConnError::FdsTruncated { max: MAX_FDS });
            }
            if !chunk.fds.is_empty() {
                let total = self.fds.len().saturating_add(chunk.fds.len());
                if total > MAX_FDS {
                    return Err(ProtocolError::TooManyFds {
                        what: "vhost-user message",
                        got: total,
                        max: MAX_FDS,
                    }
                    .into());
                }
                self.fds.extend(chunk.fds);
            }
            if chunk.bytes == 0 {
                self.reset_input();
                return Err(ConnError::Closed { pending });
            }
            match self.header {
                None => {
                    self.head_len = self.head_len.saturating_add(chunk.bytes).min(Header::SIZE);
                    if self.head_len == Header::SIZE {
                        let header = Header::parse(&self.head)?;
                        if header.size as usize > MAX_PAYLOAD {
                            return Err(ProtocolError::PayloadTooLarge {
                                size: header.size,
                                max: MAX_PAYLOAD,
                            }
                            .into());
                        }
                        self.payload = vec![0; header.size as usize];
                        self.payload_len = 0;
                        self.header = Some(header);
                    }
                }
                Some(_) => {
                    self.payload_len = self
                        .payload_len
                        .saturating_add(chunk.bytes)
                        .min(self.payload.len());
                }
            }
        }
    }

    fn finish(&mut self, header: Header) -> Message {
        let msg = Message {
            header,
            payload: std::mem::take(&mut self.payload),
            fds: std::mem::take(&mut self.fds),
        };
        self.reset_input();
        msg
    }

    fn reset_input(&mut self) {
        self.head_len = 0;
        self.header = None;
        self.payload = Vec::new();
        self.payload_len = 0;
        self.fds.clear();
    }

    /// Sends a message (reply or back-end request) without blocking: what the
    /// socket does not take now is queued for [`flush`](Self::flush).
    ///
    /// `header.size` must equal `payload.len()`. The descriptors are
    /// duplicated if the message has to wait in the queue, so the caller
    /// keeps ownership of its own. Fails with [`ConnError::OutputFull`] when
    /// the queue would exceed its bound.
    pub fn send(
        &mut self,
        header: Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        check_outgoing(&header, payload, fds.len())?;
        let head = header.to_bytes();
        let total = Header::SIZE + payload.len();
        let mut sent = 0;
        if !self.out.is_empty() {
            self.flush()?;
        }
        if self.out.is_empty() {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let iov = [IoSlice::new(&head), IoSlice::new(payload)];
            match send_chunk(self.sock.as_fd(), &iov, &raw, MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n >= total => return Ok(()),
                Ok(n) => sent = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io_error(e, 0)),
            }
        }
        let rest = total - sent;
        if self.out_bytes.saturating_add(rest) > self.out_limit {
            return Err(ConnError::OutputFull {
                queued: self.out_bytes,
                adding: rest,
                limit: self.out_limit,
            });
        }
        let fds = if sent == 0 {
            fds.iter()
                .map(|fd| fd.try_clone_to_owned())
                .collect::<io::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(payload);
        self.out.push_back(Outgoing { bytes, sent, fds });
        self.out_bytes += rest;
        Ok(())
    }

    /// Sends the reply to `request` with `payload` (REPLY set, NEED_REPLY
    /// clear, same request code).
    pub fn send_reply(
        &mut self,
        request: &Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.send(request.reply(size), payload, fds)
    }

    /// Sends the REPLY_ACK status for `request` (0 = success).
    pub fn send_ack(&mut self, request: &Header, status: u64) -> Result<(), ConnError> {
        self.send_reply(request, &status.to_ne_bytes(), &[])
    }

    /// Sends queued bytes until the queue is empty or the socket is full.
    /// Call it when the socket is writable.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        while let Some(front) = self.out.front_mut() {
            let rest = front.bytes.get(front.sent..).unwrap_or(&[]);
            if rest.is_empty() {
                self.out.pop_front();
                continue;
            }
            let raw: Vec<RawFd> = front.fds.iter().map(AsRawFd::as_raw_fd).collect();
            match send_chunk(
                self.sock.as_fd(),
                &[IoSlice::new(rest)],
                &raw,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    let n = n.min(rest.len());
                    front.sent += n;
                    front.fds.clear();
                    self.out_bytes = self.out_bytes.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(io_error(e, 0)),
            }
        }
        Ok(())
    }

    /// Whether output is queued (register for writability).
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes queued for output.
    pub fn queued_output(&self) -> usize {
        self.out_bytes
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
