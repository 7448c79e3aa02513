//! One vhost-user connection served on the caller's thread (`internals` only).
//!
//! [`Session`] does for one connection what the control thread does (`control.rs`): framing
//! ([`Connection::recv`]), the policy check, the handler table, replies and acks, the
//! end-of-message callbacks, and on a bad message or [`close`](Session::close) the same
//! teardown (`destroy_device`, rings, fds and memory dropped, `destroy_connection`), with the
//! same functions. What it leaves out is the thread, epoll, listeners, reconnects and the
//! driver's registry: the caller writes a frontend's bytes into the other end of the socket
//! and calls [`serve`](Session::serve). rvhost's fuzz targets drive the message path this way,
//! in one thread and deterministically.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use super::control::{self, Conn, MSGS_PER_EVENT};
use super::device::{DeviceState, MAX_QUEUE_PAIRS};
use super::{Device, DeviceOps, DriverError, Flags, SocketConfig, supported};
use crate::features;
use crate::memory::GuestMemory;
use crate::protocol::{ConnError, Connection};

/// What a [`Session`] offers: [`Driver::register`](super::Driver::register)'s defaults, which
/// a `Driver`'s setters change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Registration flags (those of features not built are refused, as by `register`).
    pub flags: Flags,
    /// Virtio features offered (GET_FEATURES).
    pub features: u64,
    /// Protocol features offered (GET_PROTOCOL_FEATURES).
    pub protocol_features: u64,
    /// Queue pairs offered (GET_QUEUE_NUM), clamped to 1..=[`MAX_QUEUE_PAIRS`].
    pub max_queue_pairs: u16,
    /// Map guest regions between inaccessible pages
    /// ([`MapOptions::guard_pages`](crate::memory::MapOptions::guard_pages)).
    pub guard_pages: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            flags: Flags::empty(),
            features: features::DEFAULT_FEATURES,
            protocol_features: features::protocol::DEFAULT,
            max_queue_pairs: MAX_QUEUE_PAIRS,
            guard_pages: false,
        }
    }
}

/// Whether the connection is still open after [`Session::serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Open: every complete message waiting was handled (at most 64 per call, the control
    /// thread's `MSGS_PER_EVENT`).
    Open,
    /// Closed, now or before: a bad message, the peer went away, or [`Session::close`]. The
    /// reason is [`Session::closed_reason`].
    Closed,
}

/// One connection and its device, served on the caller's thread (see the module docs).
pub struct Session {
    /// `None` once closed.
    conn: Option<Conn>,
    dev: Device,
    ops: Arc<dyn DeviceOps>,
    closed: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("device", &self.dev.id())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Takes the backend's end of a connected socket (made non-blocking) and creates its
    /// device; `new_connection` is called before this returns.
    pub fn new(
        sock: UnixStream,
        opts: SessionOptions,
        ops: Arc<dyn DeviceOps>,
    ) -> Result<Session, DriverError> {
        for (flag, name) in Flags::NOT_BUILT {
            if opts.flags.contains(flag) {
                return Err(DriverError::UnsupportedFlag(name));
            }
        }
        supported(opts.features, features::UNSUPPORTED_FEATURES)?;
        supported(opts.protocol_features, features::protocol::UNSUPPORTED)?;
        let path = PathBuf::from("session");
        let conn = Connection::new(sock).map_err(|source| DriverError::Socket {
            path: path.clone(),
            op: "set_nonblocking",
            source,
        })?;
        let cfg = SocketConfig {
            path,
            flags: opts.flags,
            features: opts.features,
            protocol_features: opts.protocol_features,
            max_queue_pairs: opts.max_queue_pairs.clamp(1, MAX_QUEUE_PAIRS),
            ops: Arc::clone(&ops),
            started: true,
            dma_mapper: None,
        };
        let mut state = DeviceState::new(control::new_device_id(), cfg);
        state.guard_pages = opts.guard_pages;
        let dev = state.dev.clone();
        ops.new_connection(&dev);
        Ok(Session {
            conn: Some(Conn {
                conn,
                state,
                writing: false,
            }),
            dev,
            ops,
            closed: None,
        })
    }

    /// Sends queued replies, then handles the complete messages waiting on the socket, as the
    /// control thread does on a readiness event. A bad message closes the connection.
    pub fn serve(&mut self) -> Served {
        let Some(c) = self.conn.as_mut() else {
            return Served::Closed;
        };
        if c.conn.wants_write() {
            if let Err(e) = c.conn.flush() {
                return self.close_with(format!("write failed: {e}"));
            }
        }
        for _ in 0..MSGS_PER_EVENT {
            let Some(c) = self.conn.as_mut() else {
                return Served::Closed;
            };
            match c.conn.recv() {
                Ok(Some(msg)) => {
                    if let Err(reason) = control::dispatch(c, msg) {
                        return self.close_with(reason);
                    }
                }
                Ok(None) => break,
                Err(ConnError::Closed { pending: 0 }) => {
                    return self.close_with("frontend disconnected".into());
                }
                Err(e) => return self.close_with(format!("bad message: {e}")),
            }
        }
        Served::Open
    }

    /// Closes the connection as the control thread does (`destroy_device` if the device runs,
    /// rings and memory dropped, the socket closed, `destroy_connection`). Nothing if closed.
    pub fn close(&mut self) {
        self.close_with("session closed".into());
    }

    fn close_with(&mut self, reason: String) -> Served {
        if let Some(mut c) = self.conn.take() {
            log::debug!("{}: {reason}; closing the session", self.dev.id());
            control::stop_device(&mut c.state);
            drop(c);
            self.ops.destroy_connection(&self.dev);
            self.closed = Some(reason);
        }
        Served::Closed
    }

    /// The device (valid after the close too, as a `Device` is until `destroy_connection`).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Why the connection closed; `None` while open.
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Whether `new_device` accepted the device and it has not been stopped since.
    pub fn running(&self) -> bool {
        self.state().is_some_and(|s| s.running)
    }

    /// Whether SET_OWNER was received (and not undone by RESET_OWNER).
    pub fn owner(&self) -> bool {
        self.state().is_some_and(|s| s.owner)
    }

    /// Bytes of a message received in part (0 between messages, and once closed).
    pub fn pending_input(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.conn.pending_input())
    }

    /// The connection's memory table; `None` once closed.
    pub fn memory(&self) -> Option<&GuestMemory> {
        self.state().map(|s| &s.mem)
    }

    fn state(&self) -> Option<&DeviceState> {
        self.conn.as_ref().map(|c| &c.state)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close_with("session dropped".into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::driver::NoOps;
    use crate::protocol::{FrontendReq, Header};

    fn request(req: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Header::new(req, Header::VERSION, payload.len() as u32)
            .to_bytes()
            .to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn serves_requests_and_closes_on_a_bad_one() {
        let (mut fe, be) = UnixStream::pair().unwrap();
        let opts = SessionOptions {
            features: features::VIRTIO_F_VERSION_1,
            ..SessionOptions::default()
        };
        let mut s = Session::new(be, opts, Arc::new(NoOps)).unwrap();
        assert_eq!(s.serve(), Served::Open, "nothing sent yet");
        fe.write_all(&request(FrontendReq::GetFeatures.code(), &[]))
            .unwrap();
        assert_eq!(s.serve(), Served::Open);
        let mut reply = [0u8; Header::SIZE + 8];
        fe.read_exact(&mut reply).unwrap();
        let h = Header::parse(&reply).unwrap();
        assert!(h.is_reply());
        assert_eq!(h.request, FrontendReq::GetFeatures.code());
        assert_eq!(
            reply[Header::SIZE..],
            features::VIRTIO_F_VERSION_1.to_ne_bytes()
        );
        // An unknown request closes the connection, with the control thread's teardown.
        fe.write_all(&request(999, &[])).unwrap();
        assert_eq!(s.serve(), Served::Closed);
        assert!(!s.is_open() && s.memory().is_none());
        assert!(s.closed_reason().unwrap().contains("999"), "{s:?}");
        let mut rest = Vec::new();
        fe.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "no reply to the bad message, then EOF");
        assert_eq!(s.serve(), Served::Closed);
    }
}
