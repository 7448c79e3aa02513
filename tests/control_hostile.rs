//! Hostile frontends against the control plane, over a real Unix socket.
//!
//! Each case connects, sends something bad, and checks that the backend closes that connection
//! (EOF on the socket, `destroy_connection` for that connection's device), that another
//! connection on the same socket is still served within [`SERVE_BOUND`], and that the process
//! then has exactly the fds it had before the case. The cases run in one test, in sequence,
//! and every test of this file holds [`SERIAL`] for its whole run: nothing else in the process
//! opens or closes fds while they are counted, so one leaked fd fails the case that leaked it.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{Event, Recorder, sock_path};
use nix::sys::memfd::{MFdFlags, memfd_create};
use rvhost::driver::{DeviceId, Driver, Flags};
use rvhost::features::{VHOST_USER_F_PROTOCOL_FEATURES, protocol as pf};
use rvhost::protocol::payload::{
    InflightInfo, LogInfo, MemoryRegion, MemoryTable, Payload, VringAddr, VringFile, VringState,
};
use rvhost::protocol::{ConnError, Endpoint, FrontendReq as R, Header};

struct Bed {
    driver: Option<Driver>,
    sock: PathBuf,
    rec: Arc<Recorder>,
}

impl Drop for Bed {
    /// Dropping a [`Driver`] joins its control thread: after a failed check (a control thread
    /// that no longer serves) that would hang the test instead of failing it, so the driver is
    /// leaked then.
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.driver.take());
        }
    }
}

fn bed() -> Bed {
    common::init_log();
    let sock = sock_path("hostile");
    let rec = Recorder::new();
    let driver = Driver::new().unwrap();
    driver.register(&sock, Flags::empty()).unwrap();
    driver.set_callbacks(&sock, Arc::clone(&rec) as _).unwrap();
    driver.start(&sock).unwrap();
    Bed {
        driver: Some(driver),
        sock,
        rec,
    }
}

/// The tests of this file run one at a time: the fd counts are exact.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a well-behaved frontend may wait (connect and one GET_FEATURES) while others
/// misbehave: generous for a debug build on a busy two-CPU machine, far below the endpoint's
/// 5 s timeout and the flood's bound. Measured: a few milliseconds.
const SERVE_BOUND: Duration = Duration::from_secs(1);

/// The devices of the connections the backend accepted, in order.
fn connections(bed: &Bed) -> Vec<DeviceId> {
    bed.rec
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::NewConnection(id) => Some(id),
            _ => None,
        })
        .collect()
}

/// The device of the connection the backend accepts after the first `before` (the tests
/// connect one at a time).
fn accepted(bed: &Bed, before: usize) -> DeviceId {
    let deadline = Instant::now() + Duration::from_secs(5);
    while connections(bed).len() == before {
        assert!(
            Instant::now() < deadline,
            "the backend did not accept the connection"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    let ids = connections(bed);
    assert_eq!(ids.len(), before + 1, "one connection at a time: {ids:?}");
    ids[before]
}

/// A new frontend connection and the backend's device for it.
fn connect(bed: &Bed) -> (Endpoint, DeviceId) {
    let before = connections(bed).len();
    let mut ep = Endpoint::connect(&bed.sock).unwrap();
    ep.set_timeout(Duration::from_secs(5)).unwrap();
    (ep, accepted(bed, before))
}

/// Whether the backend has closed the connection of `id`.
fn closed(bed: &Bed, id: DeviceId) -> bool {
    bed.rec.events().contains(&Event::DestroyConnection(id))
}

/// The process's open fds and what they are.
fn open_fds() -> BTreeMap<String, PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            // The listing's own fd is there too, the same each time; an fd closed meanwhile
            // has no target.
            let target = std::fs::read_link(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), target))
        })
        .collect()
}

/// The process has exactly the fds of `before` again (within 5 s: closing is asynchronous).
fn expect_fds(case: &str, before: &BTreeMap<String, PathBuf>) {
    if common::eventually(Duration::from_secs(5), || open_fds() == *before) {
        return;
    }
    let now = open_fds();
    let diff = |a: &BTreeMap<String, PathBuf>, b: &BTreeMap<String, PathBuf>| {
        a.iter()
            .filter(|(fd, t)| b.get(*fd) != Some(*t))
            .map(|(fd, t)| format!("{fd} -> {}", t.display()))
            .collect::<Vec<_>>()
    };
    panic!(
        "{case}: fds leaked: {} before, {} after; new: {:?}; gone: {:?}",
        before.len(),
        now.len(),
        diff(&now, before),
        diff(before, &now)
    );
}

/// A request with NEED_REPLY: returns the ack status.
fn acked(
    ep: &mut Endpoint,
    req: R,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<u64, ConnError> {
    ep.send_request(req, Header::NEED_REPLY, payload, fds)?;
    let (_, p) = ep.recv_reply(req)?;
    Ok(u64::parse(&p).unwrap())
}

/// SET_OWNER and a memory table of one 1 MiB memfd region at GPA 0, frontend VA 0x1_0000_0000.
fn owned_with_memory(ep: &mut Endpoint) {
    assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
    let fd = memfd(1 << 20);
    let table = MemoryTable {
        regions: vec![region(0, 1 << 20, 0x1_0000_0000, 0)],
    };
    assert_eq!(
        acked(ep, R::SetMemTable, &table.to_bytes(), &[fd.as_fd()]).unwrap(),
        0
    );
}

fn memfd(size: u64) -> OwnedFd {
    let fd = memfd_create("hostile", MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    fd
}

fn region(gpa: u64, size: u64, uva: u64, offset: u64) -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: uva,
        mmap_offset: offset,
    }
}

fn state(index: u32, num: u32) -> Vec<u8> {
    VringState { index, num }.to_bytes()
}

/// The backend must close the connection of `id`: the next read sees EOF, and `id`'s
/// `destroy_connection` is called.
fn expect_closed(case: &str, ep: &mut Endpoint, bed: &Bed, id: DeviceId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ep.recv_message() {
            Err(ConnError::Closed { .. }) => break,
            Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) if Instant::now() > deadline => panic!("{case}: connection not closed: {e}"),
            Err(_) => {}
            Ok(m) => {
                // A reply sent before the error was detected is fine; keep reading.
                assert!(Instant::now() < deadline, "{case}: still talking: {m:?}");
            }
        }
    }
    assert!(
        common::eventually(Duration::from_secs(5), || closed(bed, id)),
        "{case}: no destroy_connection for {id}"
    );
}

/// Another connection is served within [`SERVE_BOUND`]: connected, and GET_FEATURES answered.
/// Returns how long that took.
fn still_serves(case: &str, bed: &Bed) -> Duration {
    let before = connections(bed).len();
    let started = Instant::now();
    let mut ep = Endpoint::connect(&bed.sock).unwrap();
    ep.set_timeout(SERVE_BOUND).unwrap();
    let f = ep.get_u64(R::GetFeatures);
    let took = started.elapsed();
    assert!(f.is_ok(), "{case}: a fresh connection is not served: {f:?}");
    assert!(
        took < SERVE_BOUND,
        "{case}: a fresh connection waited {took:?} for its reply (bound {SERVE_BOUND:?})"
    );
    let id = accepted(bed, before);
    drop(ep);
    assert!(
        common::eventually(Duration::from_secs(5), || closed(bed, id)),
        "{case}: the backend did not see a served frontend leave ({id})"
    );
    took
}

type Case = (&'static str, fn(&mut Endpoint));

fn cases() -> Vec<Case> {
    vec![
        ("truncated header", |ep| {
            let mut s = ep.socket().try_clone().unwrap();
            s.write_all(&[1, 0, 0, 0, 1]).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }),
        ("payload size not matching the request", |ep| {
            ep.send_request(R::SetFeatures, 0, &[0; 4], &[]).unwrap();
        }),
        ("unknown request code", |ep| {
            ep.send_message(Header::new(999, Header::VERSION, 0), &[], &[])
                .unwrap();
        }),
        ("bad version", |ep| {
            ep.send_message(Header::new(1, 2, 0), &[], &[]).unwrap();
        }),
        ("payload larger than any request", |ep| {
            let mut s = ep.socket().try_clone().unwrap();
            s.write_all(&Header::new(2, Header::VERSION, 1 << 30).to_bytes())
                .unwrap();
        }),
        ("unexpected fd", |ep| {
            let fd = memfd(4096);
            ep.send_request(R::SetOwner, 0, &[], &[fd.as_fd()]).unwrap();
        }),
        ("too many fds (9)", |ep| {
            let fds: Vec<OwnedFd> = (0..9).map(|_| memfd(4096)).collect();
            let raw: Vec<i32> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
            let head = Header::new(R::SetOwner as u32, Header::VERSION, 0).to_bytes();
            let iov = [std::io::IoSlice::new(&head)];
            let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
            nix::sys::socket::sendmsg::<()>(
                std::os::fd::AsRawFd::as_raw_fd(ep.socket()),
                &iov,
                &cmsg,
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .unwrap();
        }),
        ("fewer fds than regions", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let fd = memfd(1 << 20);
            let table = MemoryTable {
                regions: vec![
                    region(0, 4096, 0x1000, 0),
                    region(0x10000, 4096, 0x20000, 0),
                ],
            };
            ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &[fd.as_fd()])
                .unwrap();
        }),
        ("more than 8 regions", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let mut p = Vec::new();
            p.extend_from_slice(&9u32.to_ne_bytes());
            p.extend_from_slice(&0u32.to_ne_bytes());
            for i in 0..9u64 {
                region(i << 20, 4096, i << 32, 0).write_to(&mut p);
            }
            ep.send_request(R::SetMemTable, 0, &p, &[]).unwrap();
        }),
        ("overlapping regions", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let (a, b) = (memfd(1 << 20), memfd(1 << 20));
            let table = MemoryTable {
                regions: vec![
                    region(0, 1 << 20, 0x1000_0000, 0),
                    region(0x8_0000, 1 << 20, 0x2000_0000, 0),
                ],
            };
            ep.send_request(
                R::SetMemTable,
                0,
                &table.to_bytes(),
                &[a.as_fd(), b.as_fd()],
            )
            .unwrap();
        }),
        ("a table naming one held region twice", |ep| {
            // Holds {A, B}, then sends {A, A}: both entries match held region A, as many
            // entries as held regions. An overlapping table, refused like any other: no ack,
            // the connection closes (and with it the fds of the message).
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let (a, b) = (memfd(1 << 20), memfd(1 << 20));
            let ra = region(0, 1 << 20, 0x1000_0000, 0);
            let rb = region(1 << 20, 1 << 20, 0x2000_0000, 0);
            let held = MemoryTable {
                regions: vec![ra, rb],
            };
            let fds = [a.as_fd(), b.as_fd()];
            assert_eq!(
                acked(ep, R::SetMemTable, &held.to_bytes(), &fds).unwrap(),
                0
            );
            let twice = MemoryTable {
                regions: vec![ra, ra],
            };
            let fds = [a.as_fd(), a.as_fd()];
            ep.send_request(R::SetMemTable, Header::NEED_REPLY, &twice.to_bytes(), &fds)
                .unwrap();
            if let Ok((_, p)) = ep.recv_reply(R::SetMemTable) {
                panic!(
                    "{{A, A}} over {{A, B}} was answered (status {:?}) instead of refused",
                    u64::parse(&p)
                );
            }
        }),
        ("region size overflows", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let fd = memfd(1 << 20);
            let table = MemoryTable {
                regions: vec![region(u64::MAX - 4095, 8192, 0x1000, 0)],
            };
            ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &[fd.as_fd()])
                .unwrap();
        }),
        ("region offset overflows", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let fd = memfd(1 << 20);
            let table = MemoryTable {
                regions: vec![region(0, 4096, 0x1000, u64::MAX - 100)],
            };
            ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &[fd.as_fd()])
                .unwrap();
        }),
        ("region beyond the fd's size", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let fd = memfd(1 << 20);
            let table = MemoryTable {
                regions: vec![region(0, 2 << 20, 0x1000_0000, 0)],
            };
            ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &[fd.as_fd()])
                .unwrap();
        }),
        ("memory table larger than the process may map", |ep| {
            // Two sparse 600 GiB memfds: each fits its fd, the total exceeds the 1 TiB bound.
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let size = 600u64 << 30;
            let (a, b) = (memfd(size), memfd(size));
            let table = MemoryTable {
                regions: vec![region(0, size, 0, 0), region(size, size, size, 0)],
            };
            ep.send_request(
                R::SetMemTable,
                0,
                &table.to_bytes(),
                &[a.as_fd(), b.as_fd()],
            )
            .unwrap();
        }),
        ("vring index out of range", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            ep.send_request(R::SetVringNum, 0, &state(1000, 256), &[])
                .unwrap();
        }),
        ("queue size zero", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            ep.send_request(R::SetVringNum, 0, &state(0, 0), &[])
                .unwrap();
        }),
        ("queue size not a power of two", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            ep.send_request(R::SetVringNum, 0, &state(0, 100), &[])
                .unwrap();
        }),
        ("queue size over 32768", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            ep.send_request(R::SetVringNum, 0, &state(0, 65536), &[])
                .unwrap();
        }),
        ("vring addresses outside every region", |ep| {
            owned_with_memory(ep);
            assert_eq!(acked(ep, R::SetVringNum, &state(0, 256), &[]).unwrap(), 0);
            let a = VringAddr {
                index: 0,
                flags: 0,
                desc_user_addr: 0x5000_0000,
                used_user_addr: 0x5001_0000,
                avail_user_addr: 0x5002_0000,
                log_guest_addr: 0,
            };
            ep.send_request(R::SetVringAddr, 0, &a.to_bytes(), &[])
                .unwrap();
        }),
        ("vring address misaligned", |ep| {
            owned_with_memory(ep);
            let a = VringAddr {
                index: 0,
                flags: 0,
                desc_user_addr: 0x1_0000_0008,
                used_user_addr: 0x1_0001_0000,
                avail_user_addr: 0x1_0002_0000,
                log_guest_addr: 0,
            };
            ep.send_request(R::SetVringAddr, 0, &a.to_bytes(), &[])
                .unwrap();
        }),
        ("SET_VRING_BASE beyond the queue", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            ep.send_request(R::SetVringBase, 0, &state(0, 0x1_0000), &[])
                .unwrap();
        }),
        ("kick fd missing without the no-fd flag", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let f = VringFile {
                index: 0,
                no_fd: false,
            };
            ep.send_request(R::SetVringKick, 0, &f.to_bytes(), &[])
                .unwrap();
        }),
        ("features that were not offered", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            ep.send_request(R::SetFeatures, 0, &(1u64 << 63).to_ne_bytes(), &[])
                .unwrap();
        }),
        ("inflight request with absurd queue counts", |ep| {
            negotiate_protocol(ep, pf::INFLIGHT_SHMFD);
            let info = InflightInfo {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: u16::MAX,
                queue_size: u16::MAX,
            };
            ep.send_request(R::GetInflightFd, 0, &info.to_bytes(), &[])
                .unwrap();
        }),
        ("inflight area larger than its fd", |ep| {
            negotiate_protocol(ep, pf::INFLIGHT_SHMFD);
            let fd = memfd(4096);
            let info = InflightInfo {
                mmap_size: 1 << 20,
                mmap_offset: 0,
                num_queues: 2,
                queue_size: 256,
            };
            ep.send_request(R::SetInflightFd, 0, &info.to_bytes(), &[fd.as_fd()])
                .unwrap();
        }),
        (
            "used ring in memory the backend may not write (write-sealed memfd)",
            |ep| {
                assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
                let fd = memfd_create(
                    "sealed",
                    MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
                )
                .unwrap();
                nix::unistd::ftruncate(&fd, 1 << 20).unwrap();
                nix::fcntl::fcntl(
                    &fd,
                    nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_WRITE),
                )
                .unwrap();
                let table = MemoryTable {
                    regions: vec![region(0, 1 << 20, 0x1000_0000, 0)],
                };
                ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &[fd.as_fd()])
                    .unwrap();
            },
        ),
        ("memory given through a read-only fd", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let rw = memfd(1 << 20);
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&rw));
            let ro = std::fs::File::open(path).unwrap();
            let table = MemoryTable {
                regions: vec![region(0, 1 << 20, 0x1000_0000, 0)],
            };
            ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &[ro.as_fd()])
                .unwrap();
        }),
        ("dirty log without LOG_SHMFD", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let fd = memfd(4096);
            ep.send_request(R::SetLogBase, 0, &log_info(16, 0), &[fd.as_fd()])
                .unwrap();
        }),
        ("dirty log of size 0", |ep| {
            negotiate_protocol(ep, pf::LOG_SHMFD);
            let fd = memfd(4096);
            ep.send_request(R::SetLogBase, 0, &log_info(0, 0), &[fd.as_fd()])
                .unwrap();
        }),
        ("dirty log offset beyond its fd", |ep| {
            negotiate_protocol(ep, pf::LOG_SHMFD);
            let fd = memfd(4096);
            ep.send_request(R::SetLogBase, 0, &log_info(16, 8192), &[fd.as_fd()])
                .unwrap();
        }),
        ("dirty log larger than its fd", |ep| {
            negotiate_protocol(ep, pf::LOG_SHMFD);
            let fd = memfd(4096);
            ep.send_request(R::SetLogBase, 0, &log_info(4097, 0), &[fd.as_fd()])
                .unwrap();
        }),
        ("dirty log size plus offset overflows", |ep| {
            negotiate_protocol(ep, pf::LOG_SHMFD);
            let fd = memfd(4096);
            ep.send_request(
                R::SetLogBase,
                0,
                &log_info(4096, u64::MAX - 100),
                &[fd.as_fd()],
            )
            .unwrap();
        }),
        ("dirty log without an fd", |ep| {
            negotiate_protocol(ep, pf::LOG_SHMFD);
            ep.send_request(R::SetLogBase, 0, &log_info(16, 0), &[])
                .unwrap();
        }),
        ("dirty log in a socket instead of a file", |ep| {
            negotiate_protocol(ep, pf::LOG_SHMFD);
            let (a, _b) = UnixStream::pair().unwrap();
            ep.send_request(R::SetLogBase, 0, &log_info(16, 0), &[a.as_fd()])
                .unwrap();
        }),
        ("ADD_MEM_REG without CONFIGURE_MEM_SLOTS", |ep| {
            assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
            let fd = memfd(4096);
            let mut p = 0u64.to_ne_bytes().to_vec();
            region(0, 4096, 0x1000, 0).write_to(&mut p);
            ep.send_request(R::AddMemReg, 0, &p, &[fd.as_fd()]).unwrap();
        }),
    ]
}

fn log_info(mmap_size: u64, mmap_offset: u64) -> Vec<u8> {
    LogInfo {
        mmap_size,
        mmap_offset,
    }
    .to_bytes()
}

fn negotiate_protocol(ep: &mut Endpoint, features: u64) {
    assert_eq!(acked(ep, R::SetOwner, &[], &[]).unwrap(), 0);
    let offered = ep.get_u64(R::GetFeatures).unwrap();
    assert!(offered & VHOST_USER_F_PROTOCOL_FEATURES != 0);
    let pfs = ep.get_u64(R::GetProtocolFeatures).unwrap();
    assert_eq!(
        acked(
            ep,
            R::SetProtocolFeatures,
            &(pfs & features).to_ne_bytes(),
            &[]
        )
        .unwrap(),
        0
    );
}

#[test]
fn hostile_frontends_are_disconnected_and_others_keep_working() {
    let _serial = serial();
    let bed = bed();
    // Warm up lazily-opened fds (logger, test harness) before counting.
    still_serves("warm-up", &bed);
    let fds_before = open_fds();
    for (case, send) in cases() {
        let (mut ep, id) = connect(&bed);
        send(&mut ep);
        expect_closed(case, &mut ep, &bed, id);
        drop(ep);
        still_serves(case, &bed);
        // Every connection, fd and mapping the case made is gone.
        expect_fds(case, &fds_before);
    }
    assert!(bed.rec.count(|e| matches!(e, Event::NewDevice(..))) == 0);
}

/// DPDK's virtio-user in server mode, when a backend reconnects to it, sends no SET_OWNER and
/// stops the rings it had (SET_VRING_ENABLE 0, GET_VRING_BASE) before setting them up again on
/// the new connection. That frontend is served: the rings answer their base (0, or what
/// SET_VRING_BASE said), and the connection stays up; requests that are bad for other reasons
/// still close it (the cases above).
#[test]
fn a_frontend_that_sends_no_set_owner_is_served() {
    let _serial = serial();
    let bed = bed();
    let (mut ep, id) = connect(&bed);
    ep.send_request(R::SetVringEnable, 0, &state(0, 0), &[])
        .unwrap();
    ep.send_request(R::SetVringEnable, 0, &state(1, 0), &[])
        .unwrap();
    for i in 0..2 {
        ep.send_request(R::GetVringBase, 0, &state(i, 0), &[])
            .unwrap();
        let (_, reply) = ep.recv_reply(R::GetVringBase).unwrap();
        let s = VringState::parse(&reply).unwrap();
        assert_eq!((s.index, s.num), (i, 0), "vring {i} never set up");
    }
    ep.send_request(R::SetVringNum, 0, &state(0, 256), &[])
        .unwrap();
    ep.send_request(R::SetVringBase, 0, &state(0, 7), &[])
        .unwrap();
    ep.send_request(R::GetVringBase, 0, &state(0, 0), &[])
        .unwrap();
    let (_, reply) = ep.recv_reply(R::GetVringBase).unwrap();
    assert_eq!(VringState::parse(&reply).unwrap().num, 7);
    assert!(ep.get_u64(R::GetFeatures).unwrap() & VHOST_USER_F_PROTOCOL_FEATURES != 0);
    assert!(!closed(&bed, id), "the connection of {id} was closed");
    // A bad request on it still closes it.
    ep.send_request(R::SetVringBase, 0, &state(0, 0x1_0000), &[])
        .unwrap();
    expect_closed("SET_VRING_BASE beyond the queue", &mut ep, &bed, id);
}

/// Bound on the flood: a frontend that never reads its replies must be cut off before this.
/// Its replies fill its socket and then the backend's output queue (`OUTPUT_LIMIT`, 64 KiB),
/// a few thousand GET_FEATURES; measured: well under a second.
const FLOOD_LIMIT: Duration = Duration::from_secs(10);

/// A frontend that floods requests and never reads a reply is disconnected, one stalled in the
/// middle of a header is not, and neither keeps the backend from serving others within
/// [`SERVE_BOUND`], checked again and again while the flood goes on.
#[test]
fn a_stalled_or_deaf_frontend_does_not_block_others() {
    let _serial = serial();
    let bed = bed();
    let get = Header::new(R::GetFeatures as u32, Header::VERSION, 0).to_bytes();
    // Five bytes of a GET_FEATURES header, then silence.
    let (mut stalled, stalled_id) = connect(&bed);
    stalled.socket().write_all(&get[..5]).unwrap();
    // A frontend that floods GET_FEATURES and never reads a reply.
    let before = connections(&bed).len();
    let mut deaf = UnixStream::connect(&bed.sock).unwrap();
    let deaf_id = accepted(&bed, before);
    deaf.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let (mut sent, mut checks, mut slowest) = (0usize, 0usize, Duration::ZERO);
    let mut last_check = started;
    let cut_off = loop {
        assert!(
            started.elapsed() < FLOOD_LIMIT,
            "the flooding frontend {deaf_id} was not cut off within {FLOOD_LIMIT:?} \
             ({} requests sent)",
            sent / get.len()
        );
        // Whole requests only: a short write leaves the rest of one for the next turn.
        match deaf.write(&get[sent % get.len()..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) => break e,
        }
        // Another frontend, every 2 ms of the flood.
        if last_check.elapsed() >= Duration::from_millis(2) {
            slowest = slowest.max(still_serves("while flooded", &bed));
            checks += 1;
            last_check = Instant::now();
        }
    };
    let flood = started.elapsed();
    println!(
        "flooder cut off after {} requests in {flood:?} ({cut_off}); served {checks} others \
         meanwhile, the slowest in {slowest:?}",
        sent / get.len()
    );
    assert!(
        matches!(
            cut_off.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "the flood ended with {cut_off}, not a closed connection"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || closed(&bed, deaf_id)),
        "the backend closed the flooder's socket but called no destroy_connection for {deaf_id}"
    );
    assert!(
        checks > 0,
        "no other frontend was served during the flood ({flood:?})"
    );
    assert!(
        !closed(&bed, stalled_id),
        "the stalled frontend {stalled_id} was cut off with the flooder"
    );
    still_serves("after the flood", &bed);
    // The stalled one is still connected, and served once it finishes its header.
    let started = Instant::now();
    stalled.socket().write_all(&get[5..]).unwrap();
    let (_, reply) = stalled.recv_reply(R::GetFeatures).unwrap();
    assert!(u64::parse(&reply).unwrap() & VHOST_USER_F_PROTOCOL_FEATURES != 0);
    assert!(started.elapsed() < SERVE_BOUND, "{:?}", started.elapsed());
    still_serves("after the stall", &bed);
}
