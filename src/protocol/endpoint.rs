//! A blocking endpoint for the front-end side (the Rust virtio-user front-end)
//! and for any request/reply exchange where blocking with a timeout is fine.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::MsgFlags;

use super::conn::{Message, cmsg_buffer, io_error, recv_chunk, send_chunk};
use super::error::{ConnError, ProtocolError};
use super::message::{Header, RequestCode};
use super::payload::Payload;
use super::{MAX_FDS, MAX_PAYLOAD};

/// A blocking vhost-user socket with a reply timeout.
///
/// Every request goes out in one `sendmsg` with its descriptors. Replies are
/// read with a deadline of [`timeout`](Self::timeout) from the start of the
/// read, however slowly the peer trickles bytes. Any error leaves the stream
/// in an unknown position: drop the endpoint.
#[derive(Debug)]
pub struct Endpoint {
    sock: UnixStream,
    cmsg: Vec<u8>,
    timeout: Duration,
    reply_ack: bool,
}

impl Endpoint {
    /// The default reply timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The shortest timeout accepted (shorter values are raised to it).
    const MIN_TIMEOUT: Duration = Duration::from_millis(1);

    /// Takes the socket and puts it in blocking mode.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(false)?;
        sock.set_write_timeout(Some(Self::DEFAULT_TIMEOUT))?;
        Ok(Self {
            sock,
            cmsg: cmsg_buffer(),
            timeout: Self::DEFAULT_TIMEOUT,
            reply_ack: false,
        })
    }

    /// Connects to a back-end listening at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::new(UnixStream::connect(path)?)
    }

    /// The socket.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The reply (and send) timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the reply and send timeout (at least 1 ms).
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.timeout = timeout.max(Self::MIN_TIMEOUT);
        self.sock.set_write_timeout(Some(self.timeout))
    }

    /// Whether REPLY_ACK was negotiated: then [`set_u64`](Self::set_u64) and
    /// [`request`](Self::request) set NEED_REPLY and wait for the status.
    pub fn reply_ack(&self) -> bool {
        self.reply_ack
    }

    /// Records whether REPLY_ACK was negotiated.
    pub fn set_reply_ack(&mut self, on: bool) {
        self.reply_ack = on;
    }

    /// Sends a message in one `sendmsg`, the descriptors with its first byte.
    pub fn send_message(
        &mut self,
        header: Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        super::conn::check_outgoing(&header, payload, fds.len())?;
        let head = header.to_bytes();
        let mut bytes = Vec::with_capacity(Header::SIZE + payload.len());
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(payload);
        let mut raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = 0;
        while let Some(rest) = bytes.get(sent..).filter(|r| !r.is_empty()) {
            match send_chunk(
                self.sock.as_fd(),
                &[IoSlice::new(rest)],
                &raw,
                MsgFlags::empty(),
            ) {
                Ok(0) => return Err(ConnError::Closed { pending: 0 }),
                Ok(n) => {
                    sent += n;
                    raw.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(ConnError::Timeout {
                        request: "send",
                        timeout: self.timeout,
                    });
                }
                Err(e) => return Err(io_error(e, 0)),
            }
        }
        Ok(())
    }

    /// Sends request `req` with extra `flags` (e.g. [`Header::NEED_REPLY`];
    /// the version bits are set here).
    pub fn send_request<R: RequestCode>(
        &mut self,
        req: R,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let flags = Header::VERSION | (flags & !Header::VERSION_MASK);
        self.send_message(Header::new(req.code(), flags, size), payload, fds)
    }

    /// Reads the next message, whatever it is, within the timeout.
    pub fn recv_message(&mut self) -> Result<Message, ConnError> {
        self.recv_within("message", Instant::now() + self.timeout)
    }

    fn recv_within(&mut self, what: &'static str, deadline: Instant) -> Result<Message, ConnError> {
        let mut fds = Vec::new();
        let mut head = [0u8; Header::SIZE];
        self.read_exact(&mut head, 0, &mut fds, what, deadline)?;
        let header = Header::parse(&head)?;
        header.check_version()?;
        if header.size as usize > MAX_PAYLOAD {
            return Err(ProtocolError::PayloadTooLarge {
                size: header.size,
                max: MAX_PAYLOAD,
            }
            .into());
        }
        let mut payload = vec![0u8; header.size as usize];
        self.read_exact(&mut payload, Header::SIZE, &mut fds, what, deadline)?;
        Ok(Message {
            header,
            payload,
            fds,
        })
    }

    fn read_exact(
        &mut self,
        buf: &mut [u8],
        before: usize,
        fds: &mut Vec<OwnedFd>,
        what: &'static str,
        deadline: Instant,
    ) -> Result<(), ConnError> {
        let mut got = 0;
        while let Some(want) = buf.get_mut(got..).filter(|w| !w.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Timeout {
                    request: what,
                    timeout: self.timeout,
                });
            }
            self.sock
                .set_read_timeout(Some(left.max(Self::MIN_TIMEOUT)))?;
            let pending = before + got;
            let chunk = recv_chunk(self.sock.as_fd(), want, &mut self.cmsg, MsgFlags::empty())
                .map_err(|e| io_error(e, pending))?;
            let Some(chunk) = chunk else {
                continue; // the receive timeout expired: the deadline check decides
            };
            if chunk.truncated {
                return Err(ConnError::FdsTruncated { max: MAX_FDS });
            }
            if fds.len() + chunk.fds.len() > MAX_FDS {
                return Err(ProtocolError::TooManyFds {
                    what,
                    got: fds.len() + chunk.fds.len(),
                    max: MAX_FDS,
                }
                .into());
            }
            fds.extend(chunk.fds);
            if chunk.bytes == 0 {
                return Err(ConnError::Closed { pending });
            }
            got += chunk.bytes;
        }
        Ok(())
    }

    /// Reads the reply to `expected`: REPLY must be set and the request code
    /// must match. Descriptors in the reply are returned in the message.
    pub fn recv_reply_with_fds<R: RequestCode>(
        &mut self,
        expected: R,
    ) -> Result<Message, ConnError> {
        let what = expected.name();
        let msg = self.recv_within(what, Instant::now() + self.timeout)?;
        let bad = |reason| ConnError::BadReply {
            request: what,
            reason,
            got_request: msg.header.request,
            flags: msg.header.flags,
        };
        if !msg.header.is_reply() {
            return Err(bad("REPLY flag not set"));
        }
        if msg.header.request != expected.code() {
            return Err(bad("reply to another request"));
        }
        Ok(msg)
    }

    /// Reads the reply to `expected`, which must carry no descriptor.
    pub fn recv_reply<R: RequestCode>(
        &mut self,
        expected: R,
    ) -> Result<(Header, Vec<u8>), ConnError> {
        let msg = self.recv_reply_with_fds(expected)?;
        if !msg.fds.is_empty() {
            return Err(ProtocolError::UnexpectedFds {
                what: expected.name(),
                got: msg.fds.len(),
            }
            .into());
        }
        Ok((msg.header, msg.payload))
    }

    /// Sends a request that is always answered and returns the reply payload.
    pub fn call<R: RequestCode>(
        &mut self,
        req: R,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, ConnError> {
        self.send_request(req, 0, payload, fds)?;
        Ok(self.recv_reply(req)?.1)
    }

    /// `GET_*` requests answered with a `u64`.
    pub fn get_u64<R: RequestCode>(&mut self, req: R) -> Result<u64, ConnError> {
        let payload = self.call(req, &[], &[])?;
        u64::parse(&payload).map_err(|e| e.in_request(req.name()).into())
    }

    /// `SET_*` requests carrying a `u64` (see [`request`](Self::request)).
    pub fn set_u64<R: RequestCode>(&mut self, req: R, value: u64) -> Result<(), ConnError> {
        self.request(req, &value.to_ne_bytes(), &[])
    }

    /// Sends a request that has no reply of its own. With REPLY_ACK it sets
    /// NEED_REPLY and waits for the status: non-zero is [`ConnError::Nack`].
    pub fn request<R: RequestCode>(
        &mut self,
        req: R,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        let flags = if self.reply_ack {
            Header::NEED_REPLY
        } else {
            0
        };
        self.send_request(req, flags, payload, fds)?;
        if self.reply_ack {
            self.wait_ack(req)?;
        }
        Ok(())
    }

    /// Reads a REPLY_ACK status for `req`.
    pub fn wait_ack<R: RequestCode>(&mut self, req: R) -> Result<(), ConnError> {
        let (_, payload) = self.recv_reply(req)?;
        let code = u64::parse(&payload).map_err(|e| e.in_request(req.name()))?;
        if code == 0 {
            Ok(())
        } else {
            Err(ConnError::Nack {
                request: req.name(),
                code,
            })
        }
    }
}

impl AsFd for Endpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Endpoint {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
