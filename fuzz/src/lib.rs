//! What rvhost's fuzz targets share: the frontend's end of the socket ([`Wire`]), the fds the
//! harness hands the backend, the process's fd and mapping counts, and device callbacks that
//! check the order DPDK's API promises ([`Callbacks`]).
//!
//! The targets drive the backend in one thread through
//! [`Session`](rvhost::driver::session::Session): the harness writes a frontend's bytes into
//! its end of a socket pair and calls `serve`, which runs the control thread's own code
//! (framing, policy, handler table, replies, teardown) on the backend's end.

pub mod guest;

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use rvhost::driver::{Device, DeviceOps, Refused};
use rvhost::protocol::Header;

/// Name of every memfd the harness makes (a leaked mapping of one shows in /proc/self/maps).
pub const GUEST_MEMFD: &str = "fuzz-guest";

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Mappings of this process whose /proc/self/maps line contains `name`.
pub fn mappings_named(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().filter(|l| l.contains(name)).count())
        .unwrap_or(0)
}

/// A memfd of `size` bytes named [`GUEST_MEMFD`].
pub fn memfd(size: u64) -> OwnedFd {
    let fd = memfd_create(GUEST_MEMFD, MFdFlags::MFD_CLOEXEC).expect("memfd_create");
    nix::unistd::ftruncate(&fd, size as i64).expect("ftruncate");
    fd
}

/// A non-blocking eventfd.
pub fn eventfd() -> OwnedFd {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .expect("eventfd")
        .into()
}

/// Reads (and so clears) an eventfd's counter; 0 when nothing was written.
pub fn eventfd_take(fd: BorrowedFd<'_>) -> u64 {
    let mut b = [0u8; 8];
    match nix::unistd::read(fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

/// A message as the frontend frames it: the 12-byte header (`size` as given, which a test
/// may make lie) and the payload.
pub fn frame(request: u32, flags: u32, size: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Header::new(request, flags, size).to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The frontend's end of the connection.
pub struct Wire {
    sock: UnixStream,
}

/// What the backend sent back since the last read: the bytes and the fds that came with them.
#[derive(Default)]
pub struct Received {
    /// Bytes, in order.
    pub bytes: Vec<u8>,
    /// Fds, in order (owned: closed on drop).
    pub fds: Vec<OwnedFd>,
}

impl Wire {
    /// A connected pair: the frontend's end (non-blocking) and the backend's end.
    pub fn pair() -> (Wire, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        (Wire { sock: a }, b)
    }

    /// Sends `bytes` with `fds` in one `sendmsg`; returns how many bytes the socket took
    /// (fewer when its buffer is full, 0 once the backend closed).
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> usize {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(bytes)];
        loop {
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(n) => return n,
                Err(Errno::EINTR) => continue,
                Err(_) => return 0,
            }
        }
    }

    /// Shuts the frontend's write side down: the backend reads EOF.
    pub fn hang_up(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    /// Everything the backend has sent and the frontend not read yet.
    pub fn recv(&self) -> Received {
        let mut got = Received::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut cmsg = nix::cmsg_space!([RawFd; 16]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let (n, fds) = match r {
                Ok(m) => {
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = m.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(v) = c {
                                fds.extend(v);
                            }
                        }
                    }
                    assert!(
                        !m.flags.contains(MsgFlags::MSG_CTRUNC),
                        "the backend sent more fds than any reply carries"
                    );
                    (m.bytes, fds)
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            // SAFETY: the kernel has just installed these fds in this process for this
            // recvmsg; nothing else knows them, and each is wrapped once, here.
            got.fds.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
            if n == 0 {
                break;
            }
            got.bytes.extend_from_slice(&buf[..n]);
        }
        got
    }
}

impl AsFd for Wire {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Splits what the backend sent into replies, checking each is well-formed: version 1,
/// REPLY set, NEED_REPLY and unknown flags clear, and the announced size present. Panics
/// otherwise (a finding).
pub fn replies(bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let h = Header::parse(rest).unwrap_or_else(|e| panic!("reply header: {e}"));
        assert_eq!(h.version(), Header::VERSION, "reply version: {h:?}");
        assert!(h.is_reply(), "a message without REPLY: {h:?}");
        assert!(!h.need_reply(), "a reply with NEED_REPLY: {h:?}");
        h.check_flags()
            .unwrap_or_else(|e| panic!("reply flags: {e} ({h:?})"));
        let end = Header::SIZE + h.size as usize;
        assert!(
            h.size as usize <= rvhost::protocol::MAX_PAYLOAD,
            "reply over MAX_PAYLOAD: {h:?}"
        );
        assert!(
            rest.len() >= end,
            "reply cut short: {h:?}, {} bytes",
            rest.len()
        );
        out.push((h, rest[Header::SIZE..end].to_vec()));
        rest = &rest[end..];
    }
    out
}

#[derive(Debug, Default)]
struct Order {
    connected: bool,
    running: bool,
    gone: bool,
    new_devices: u64,
}

/// Device callbacks that accept every device and check the order DPDK's API promises:
/// `new_connection` first, `new_device` only on a stopped device, `destroy_device` only on a
/// running one, `vring_state_changed` / `features_changed` only while running, and
/// `destroy_connection` once, last, after the device stopped. A violation panics (a finding).
#[derive(Debug, Default)]
pub struct Callbacks {
    order: Mutex<Order>,
}

impl Callbacks {
    fn with<T>(&self, f: impl FnOnce(&mut Order) -> T) -> T {
        f(&mut self.order.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the device is running (between `new_device` and `destroy_device`).
    pub fn running(&self) -> bool {
        self.with(|o| o.running)
    }

    /// Whether `destroy_connection` was called.
    pub fn gone(&self) -> bool {
        self.with(|o| o.gone)
    }

    /// How many times `new_device` was called.
    pub fn new_devices(&self) -> u64 {
        self.with(|o| o.new_devices)
    }
}

impl DeviceOps for Callbacks {
    fn new_connection(&self, _: &Device) {
        self.with(|o| {
            assert!(!o.connected, "new_connection twice");
            o.connected = true;
        });
    }

    fn new_device(&self, _: &Device) -> Result<(), Refused> {
        self.with(|o| {
            assert!(o.connected && !o.gone, "new_device outside the connection");
            assert!(!o.running, "new_device on a running device");
            o.running = true;
            o.new_devices += 1;
        });
        Ok(())
    }

    fn destroy_device(&self, _: &Device) {
        self.with(|o| {
            assert!(o.running, "destroy_device on a device not running");
            o.running = false;
        });
    }

    fn vring_state_changed(&self, _: &Device, _: u16, _: bool) {
        self.with(|o| assert!(o.running, "vring_state_changed on a device not running"));
    }

    fn features_changed(&self, _: &Device, _: u64) {
        self.with(|o| assert!(o.running, "features_changed on a device not running"));
    }

    fn destroy_connection(&self, _: &Device) {
        self.with(|o| {
            assert!(o.connected, "destroy_connection without new_connection");
            assert!(!o.gone, "destroy_connection twice");
            assert!(!o.running, "destroy_connection before destroy_device");
            o.gone = true;
        });
    }
}
