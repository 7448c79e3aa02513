//! Postcopy (PAGEFAULT, `Flags::POSTCOPY_SUPPORT`) over a real Unix socket, the test playing
//! QEMU's part: POSTCOPY_ADVISE hands over a real userfaultfd, POSTCOPY_LISTEN, the memory
//! table answered with the backend's mapping addresses and registered at the acknowledgement
//! (SET_MEM_TABLE and ADD_MEM_REG), a page fault of a backend mapping read from the
//! userfaultfd and resolved as QEMU does for shared memory (the page written through another
//! mapping of the file, then UFFDIO_WAKE), POSTCOPY_END; and hostile sequences: requests out
//! of order, without PAGEFAULT negotiated, with a payload or an fd, an acknowledgement missing,
//! malformed or non-zero. Each case ends with no userfaultfd and no guest mapping left behind.
//!
//! The backend runs in this process, so its mappings are addresses the test can touch: a read
//! of a page not yet in the file blocks in the kernel (registered, missing) exactly as a
//! data-path lcore would. Needs userfaultfd (root, or `vm.unprivileged_userfaultfd=1`): skips
//! otherwise.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{Event, Recorder, skip, sock_path};
use nix::sys::memfd::{MFdFlags, memfd_create};
use rvhost::driver::{DeviceId, Driver, DriverError, Flags};
use rvhost::features::{VHOST_USER_F_PROTOCOL_FEATURES, protocol as pf};
use rvhost::memory::uffd::{UFFD_EVENT_PAGEFAULT, UffdMsg, Userfaultfd, wake};
use rvhost::protocol::payload::{MemoryRegion, MemoryTable, Payload, SingleMemRegion};
use rvhost::protocol::{ConnError, Endpoint, FrontendReq as R, Header};
use rvhost::test_support::mapped_bytes_named;

/// The memfd of the guest memory, by name (leak checks).
const GUEST: &str = "rvhost-postcopy-guest";
const PAGE: u64 = 4096;
const REGION: u64 = 1 << 20;

/// One test at a time: the fd and mapping counts are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Bed {
    _driver: Driver,
    sock: PathBuf,
    rec: Arc<Recorder>,
}

fn bed(flags: Flags) -> Bed {
    common::init_log();
    let sock = sock_path("postcopy");
    let rec = Recorder::new();
    let driver = Driver::new().unwrap();
    driver.register(&sock, flags).unwrap();
    driver.set_callbacks(&sock, Arc::clone(&rec) as _).unwrap();
    driver.start(&sock).unwrap();
    Bed {
        _driver: driver,
        sock,
        rec,
    }
}

/// Userfaultfds open in this process.
fn userfaultfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy() == "anon_inode:[userfaultfd]")
        .count()
}

/// Nothing of a closed connection is left: no userfaultfd, no guest mapping, and the
/// connection's device is gone.
fn expect_clean(case: &str, bed: &Bed, id: DeviceId) {
    assert!(
        common::eventually(Duration::from_secs(5), || {
            bed.rec.events().contains(&Event::DestroyConnection(id))
        }),
        "{case}: no destroy_connection for {id}"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || userfaultfds() == 0
            && mapped_bytes_named(GUEST) == 0),
        "{case}: left behind: {} userfaultfds, {} bytes of guest mappings",
        userfaultfds(),
        mapped_bytes_named(GUEST)
    );
}

fn connect(bed: &Bed) -> (Endpoint, DeviceId) {
    let before = bed.rec.count(|e| matches!(e, Event::NewConnection(_)));
    let mut ep = Endpoint::connect(&bed.sock).unwrap();
    ep.set_timeout(Duration::from_secs(5)).unwrap();
    assert!(common::eventually(Duration::from_secs(5), || {
        bed.rec.count(|e| matches!(e, Event::NewConnection(_))) > before
    }));
    let id = bed
        .rec
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::NewConnection(id) => Some(id),
            _ => None,
        })
        .nth(before)
        .unwrap();
    (ep, id)
}

/// SET_OWNER, SET_FEATURES (PROTOCOL_FEATURES) and SET_PROTOCOL_FEATURES `protocol`.
fn negotiate(ep: &mut Endpoint, protocol: u64) {
    ep.request(R::SetOwner, &[], &[]).unwrap();
    ep.set_u64(R::SetFeatures, VHOST_USER_F_PROTOCOL_FEATURES)
        .unwrap();
    ep.set_u64(R::SetProtocolFeatures, protocol).unwrap();
}

/// A request with NEED_REPLY: the ack status.
fn acked(ep: &mut Endpoint, req: R, payload: &[u8]) -> Result<u64, ConnError> {
    ep.send_request(req, Header::NEED_REPLY, payload, &[])?;
    let (_, p) = ep.recv_reply(req)?;
    Ok(u64::parse(&p).unwrap())
}

/// POSTCOPY_ADVISE: the reply's fd.
fn advise(ep: &mut Endpoint) -> OwnedFd {
    ep.send_request(R::PostcopyAdvise, 0, &[], &[]).unwrap();
    let mut m = ep.recv_reply_with_fds(R::PostcopyAdvise).unwrap();
    assert!(m.payload.is_empty(), "ADVISE reply payload {:?}", m.payload);
    assert_eq!(m.fds.len(), 1, "ADVISE reply fds");
    m.fds.pop().unwrap()
}

fn is_userfaultfd(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[userfaultfd]")
}

fn guest_memfd() -> OwnedFd {
    let fd = memfd_create(GUEST, MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, REGION as i64).unwrap();
    fd
}

fn region() -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: 0,
        memory_size: REGION,
        userspace_addr: 0x7000_0000_0000,
        mmap_offset: 0,
    }
}

/// Skips when this process may not open a userfaultfd.
fn cannot_run() -> Option<String> {
    Userfaultfd::open()
        .err()
        .map(|e| format!("no userfaultfd here: {e}"))
}

/// ADVISE and LISTEN on a fresh connection with PAGEFAULT and REPLY_ACK (and `extra`).
fn listening(bed: &Bed, extra: u64) -> (Endpoint, DeviceId, OwnedFd) {
    let (mut ep, id) = connect(bed);
    negotiate(&mut ep, pf::PAGEFAULT | pf::REPLY_ACK | extra);
    ep.set_reply_ack(true);
    let ufd = advise(&mut ep);
    assert!(is_userfaultfd(ufd.as_fd()));
    assert_eq!(acked(&mut ep, R::PostcopyListen, &[]).unwrap(), 0);
    (ep, id, ufd)
}

/// SET_MEM_TABLE as QEMU sends it in postcopy (no NEED_REPLY): the backend's address of the
/// region.
fn set_table(ep: &mut Endpoint, fd: &OwnedFd) -> u64 {
    let table = MemoryTable {
        regions: vec![region()],
    };
    ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &[fd.as_fd()])
        .unwrap();
    let (_, p) = ep.recv_reply(R::SetMemTable).unwrap();
    let reply = MemoryTable::parse(&p).unwrap();
    assert_eq!(reply.regions.len(), 1);
    let r = reply.regions[0];
    assert_eq!(
        (r.guest_phys_addr, r.memory_size, r.mmap_offset),
        (0, REGION, 0)
    );
    assert_ne!(r.userspace_addr, region().userspace_addr);
    assert_eq!(r.userspace_addr % PAGE, 0);
    r.userspace_addr
}

/// Reads the u64 at `addr` on another thread: a page not yet in the file faults there and the
/// thread waits until woken.
fn read_on_thread(addr: u64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        // SAFETY: `addr` is inside the backend's mapping of the guest region, which stays mapped
        // until the connection closes (the test closes it only after joining this thread); the
        // region's file is 1 MiB, so reading it cannot SIGBUS. Read volatile: the memory is
        // shared with the backend.
        unsafe { std::ptr::read_volatile(addr as *const u64) }
    })
}

/// The next fault event on `ufd` (nonblocking fd: polls up to 5 s).
fn next_fault(ufd: &OwnedFd) -> UffdMsg {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(ufd.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
    assert_eq!(n, 1, "no fault event within 5 s");
    let mut msg = UffdMsg::default();
    // SAFETY: UffdMsg is the kernel's 32-byte uffd_msg, plain integers; read writes at most
    // its size into it.
    let got = unsafe {
        libc::read(
            ufd.as_raw_fd(),
            (&raw mut msg).cast::<libc::c_void>(),
            std::mem::size_of::<UffdMsg>(),
        )
    };
    assert_eq!(got, std::mem::size_of::<UffdMsg>() as isize);
    msg
}

/// QEMU's shared-memory fault service: the page written through another mapping of the file
/// (here: `pwrite` on the memfd), then UFFDIO_WAKE on the backend's userfaultfd.
fn serve_fault(ufd: &OwnedFd, file: &OwnedFd, base: u64, value: u64) -> u64 {
    let msg = next_fault(ufd);
    assert_eq!(msg.event, UFFD_EVENT_PAGEFAULT, "{msg:?}");
    let page = msg.address & !(PAGE - 1);
    assert!(page >= base && page < base + REGION, "{msg:?}");
    let off = page - base;
    nix::sys::uio::pwrite(file, &value.to_ne_bytes(), off as i64).unwrap();
    wake(ufd.as_fd(), page, PAGE).unwrap();
    page
}

#[test]
fn pagefault_is_offered_only_with_postcopy_support() {
    let _s = serial();
    let driver = Driver::new().unwrap();
    let with = sock_path("pc-with");
    let without = sock_path("pc-without");
    driver.register(&with, Flags::POSTCOPY_SUPPORT).unwrap();
    driver.register(&without, Flags::empty()).unwrap();
    assert_ne!(driver.protocol_features(&with).unwrap() & pf::PAGEFAULT, 0);
    assert_eq!(
        driver.protocol_features(&without).unwrap() & pf::PAGEFAULT,
        0
    );
    let all = driver.protocol_features(&without).unwrap();
    assert!(matches!(
        driver.set_protocol_features(&without, all | pf::PAGEFAULT),
        Err(DriverError::UnsupportedFeatures(_))
    ));
    let both = sock_path("pc-both");
    let e = driver
        .register(&both, Flags::POSTCOPY_SUPPORT | Flags::ASYNC_COPY)
        .unwrap_err();
    assert!(matches!(e, DriverError::IncompatibleFlags(..)), "{e}");
    assert!(e.to_string().contains("ASYNC_COPY"), "{e}");
}

/// The whole sequence with SET_MEM_TABLE, a fault served, END.
#[test]
fn set_mem_table_registers_and_a_fault_is_served() {
    let _s = serial();
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let bed = bed(Flags::POSTCOPY_SUPPORT);
    let (mut ep, id, ufd) = listening(&bed, 0);
    let file = guest_memfd();
    let base = set_table(&mut ep, &file);
    // QEMU's acknowledgement (QEMU sends it without NEED_REPLY; asked for here to know it
    // was taken).
    assert_eq!(
        acked(&mut ep, R::SetMemTable, &0u64.to_ne_bytes()).unwrap(),
        0
    );
    // A backend thread touching a page the file does not have yet waits for the frontend.
    let reader = read_on_thread(base + 5 * PAGE);
    let page = serve_fault(&ufd, &file, base, 0x1234_5678);
    assert_eq!(page, base + 5 * PAGE);
    // The thread read the page the "frontend" placed.
    assert_eq!(reader.join().unwrap(), 0x1234_5678);
    // A page the file has is read without a fault.
    nix::sys::uio::pwrite(&file, &7u64.to_ne_bytes(), (9 * PAGE) as i64).unwrap();
    assert_eq!(read_on_thread(base + 9 * PAGE).join().unwrap(), 7);
    // END: unregistered, the userfaultfd closed; a missing page is now just a zero page.
    ep.send_request(R::PostcopyEnd, 0, &[], &[]).unwrap();
    let (_, p) = ep.recv_reply(R::PostcopyEnd).unwrap();
    assert_eq!(u64::parse(&p).unwrap(), 0);
    drop(ufd);
    assert!(common::eventually(Duration::from_secs(5), || userfaultfds() == 0));
    assert_eq!(read_on_thread(base + 20 * PAGE).join().unwrap(), 0);
    // The device is still served, with its memory.
    assert!(ep.get_u64(R::GetFeatures).is_ok());
    drop(ep);
    drop(file);
    expect_clean("set_mem_table sequence", &bed, id);
}

/// The CONFIGURE_MEM_SLOTS form QEMU 7.2 uses: ADD_MEM_REG answered with the address, one
/// ADD_MEM_REG-coded acknowledgement (8 bytes) for the batch, then the region is registered.
#[test]
fn add_mem_reg_batch_registers_at_its_acknowledgement() {
    let _s = serial();
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let bed = bed(Flags::POSTCOPY_SUPPORT);
    let (mut ep, id, ufd) = listening(&bed, pf::CONFIGURE_MEM_SLOTS);
    let file = guest_memfd();
    let reg = SingleMemRegion { region: region() };
    ep.send_request(R::AddMemReg, 0, &reg.to_bytes(), &[file.as_fd()])
        .unwrap();
    let (_, p) = ep.recv_reply(R::AddMemReg).unwrap();
    let reply = SingleMemRegion::parse(&p).unwrap().region;
    assert_eq!(reply.guest_phys_addr, 0);
    let base = reply.userspace_addr;
    assert_ne!(base, region().userspace_addr);
    // The same region again (QEMU's second queue pair): the same address, a reference.
    ep.send_request(R::AddMemReg, 0, &reg.to_bytes(), &[file.as_fd()])
        .unwrap();
    let (_, p) = ep.recv_reply(R::AddMemReg).unwrap();
    assert_eq!(
        SingleMemRegion::parse(&p).unwrap().region.userspace_addr,
        base
    );
    // The batch's acknowledgement: ADD_MEM_REG with a u64 0.
    assert_eq!(
        acked(&mut ep, R::AddMemReg, &0u64.to_ne_bytes()).unwrap(),
        0
    );
    let reader = read_on_thread(base + 3 * PAGE);
    serve_fault(&ufd, &file, base, 42);
    assert_eq!(reader.join().unwrap(), 42);
    // An acknowledgement of an empty batch (QEMU sends one after removals only) is taken.
    assert_eq!(
        acked(&mut ep, R::AddMemReg, &0u64.to_ne_bytes()).unwrap(),
        0
    );
    assert!(ep.get_u64(R::GetFeatures).is_ok());
    drop(ep);
    drop(ufd);
    drop(file);
    expect_clean("add_mem_reg batch", &bed, id);
}

/// A second ADVISE replaces the userfaultfd held (the old one is closed by the backend).
#[test]
fn a_second_advise_replaces_the_first() {
    let _s = serial();
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let bed = bed(Flags::POSTCOPY_SUPPORT);
    let (mut ep, id) = connect(&bed);
    negotiate(&mut ep, pf::PAGEFAULT);
    let first = advise(&mut ep);
    drop(first);
    // The backend's copy of the sent duplicate closes just after the reply went out.
    assert!(
        common::eventually(Duration::from_secs(5), || userfaultfds() == 1),
        "the backend holds {} userfaultfds, not one",
        userfaultfds()
    );
    let second = advise(&mut ep);
    assert!(is_userfaultfd(second.as_fd()));
    drop(second);
    assert!(
        common::eventually(Duration::from_secs(5), || userfaultfds() == 1),
        "the first one was not closed: {}",
        userfaultfds()
    );
    drop(ep);
    expect_clean("second advise", &bed, id);
}

/// Refusals that keep the connection: a failure status, state unchanged.
#[test]
fn out_of_order_requests_are_refused_with_a_status() {
    let _s = serial();
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let bed = bed(Flags::POSTCOPY_SUPPORT);
    let (mut ep, id) = connect(&bed);
    negotiate(&mut ep, pf::PAGEFAULT | pf::REPLY_ACK);
    ep.set_reply_ack(true);
    // LISTEN without ADVISE.
    assert_eq!(acked(&mut ep, R::PostcopyListen, &[]).unwrap(), 1);
    // END without ADVISE: its u64 reply says failure.
    ep.send_request(R::PostcopyEnd, 0, &[], &[]).unwrap();
    let (_, p) = ep.recv_reply(R::PostcopyEnd).unwrap();
    assert_eq!(u64::parse(&p).unwrap(), 1);
    // LISTEN with memory mapped already (DPDK refuses it too).
    let file = guest_memfd();
    let table = MemoryTable {
        regions: vec![region()],
    };
    ep.request(R::SetMemTable, &table.to_bytes(), &[file.as_fd()])
        .unwrap();
    let ufd = advise(&mut ep);
    assert_eq!(acked(&mut ep, R::PostcopyListen, &[]).unwrap(), 1);
    assert!(ep.get_u64(R::GetFeatures).is_ok());
    drop(ep);
    drop(ufd);
    drop(file);
    expect_clean("out of order", &bed, id);
}

/// Sends something bad; the fd is a spare one to attach.
type Send = fn(&mut Endpoint, &OwnedFd);
type Hostile = (&'static str, u64, Send);

/// Sequences that close the connection, each leaving nothing behind.
#[test]
fn hostile_sequences_close_the_connection() {
    let _s = serial();
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let bed = bed(Flags::POSTCOPY_SUPPORT);
    let cases: Vec<Hostile> = vec![
        ("ADVISE with a payload", pf::PAGEFAULT, |ep, _| {
            ep.send_request(R::PostcopyAdvise, 0, &[0; 8], &[]).unwrap();
        }),
        ("ADVISE with an fd", pf::PAGEFAULT, |ep, f| {
            ep.send_request(R::PostcopyAdvise, 0, &[], &[f.as_fd()])
                .unwrap();
        }),
        ("LISTEN with a payload", pf::PAGEFAULT, |ep, _| {
            ep.send_request(R::PostcopyListen, 0, &[0; 8], &[]).unwrap();
        }),
        ("ADVISE without PAGEFAULT negotiated", 0, |ep, _| {
            ep.send_request(R::PostcopyAdvise, 0, &[], &[]).unwrap();
        }),
        ("LISTEN without PAGEFAULT negotiated", 0, |ep, _| {
            ep.send_request(R::PostcopyListen, Header::NEED_REPLY, &[], &[])
                .unwrap();
        }),
        ("END without PAGEFAULT negotiated", 0, |ep, _| {
            ep.send_request(R::PostcopyEnd, 0, &[], &[]).unwrap();
        }),
        (
            "an ADD_MEM_REG acknowledgement without CONFIGURE_MEM_SLOTS",
            pf::PAGEFAULT | pf::REPLY_ACK,
            |ep, _| {
                assert!(is_userfaultfd(advise(ep).as_fd()));
                assert_eq!(acked(ep, R::PostcopyListen, &[]).unwrap(), 0);
                ep.send_request(R::AddMemReg, 0, &0u64.to_ne_bytes(), &[])
                    .unwrap();
            },
        ),
    ];
    let after_table: Vec<(&'static str, Send)> = vec![
        ("acknowledgement missing: another request", |ep, _| {
            ep.send_request(R::GetFeatures, 0, &[], &[]).unwrap();
        }),
        ("acknowledgement non-zero", |ep, _| {
            ep.send_request(R::SetMemTable, 0, &1u64.to_ne_bytes(), &[])
                .unwrap();
        }),
        ("acknowledgement of 16 bytes", |ep, _| {
            ep.send_request(R::SetMemTable, 0, &[0; 16], &[]).unwrap();
        }),
        ("acknowledgement of 4 bytes", |ep, _| {
            ep.send_request(R::SetMemTable, 0, &[0; 4], &[]).unwrap();
        }),
        ("acknowledgement with an fd", |ep, f| {
            ep.send_request(R::SetMemTable, 0, &0u64.to_ne_bytes(), &[f.as_fd()])
                .unwrap();
        }),
        ("acknowledgement as ADD_MEM_REG", |ep, _| {
            ep.send_request(R::AddMemReg, 0, &0u64.to_ne_bytes(), &[])
                .unwrap();
        }),
        ("the peer leaves before acknowledging", |ep, _| {
            ep.socket().shutdown(std::net::Shutdown::Both).unwrap();
        }),
    ];
    for (case, protocol, send) in cases {
        let (mut ep, id) = connect(&bed);
        negotiate(&mut ep, protocol);
        let spare = guest_memfd();
        send(&mut ep, &spare);
        expect_eof(case, &mut ep);
        drop(ep);
        drop(spare);
        expect_clean(case, &bed, id);
    }
    for (case, send) in after_table {
        let (mut ep, id, ufd) = listening(&bed, 0);
        let file = guest_memfd();
        set_table(&mut ep, &file);
        send(&mut ep, &file);
        expect_eof(case, &mut ep);
        drop(ep);
        drop(ufd);
        drop(file);
        expect_clean(case, &bed, id);
    }
    // Between an answered ADD_MEM_REG and its acknowledgement, only ADD_MEM_REGs.
    let (mut ep, id, ufd) = listening(&bed, pf::CONFIGURE_MEM_SLOTS);
    let file = guest_memfd();
    ep.send_request(
        R::AddMemReg,
        0,
        &SingleMemRegion { region: region() }.to_bytes(),
        &[file.as_fd()],
    )
    .unwrap();
    ep.recv_reply(R::AddMemReg).unwrap();
    ep.send_request(R::GetFeatures, 0, &[], &[]).unwrap();
    expect_eof("GET_FEATURES inside an ADD_MEM_REG batch", &mut ep);
    drop(ep);
    drop(ufd);
    drop(file);
    expect_clean("GET_FEATURES inside an ADD_MEM_REG batch", &bed, id);
}

/// The backend closes: EOF (a reply sent before the error was seen is skipped).
fn expect_eof(case: &str, ep: &mut Endpoint) {
    for _ in 0..4 {
        match ep.recv_message() {
            Err(ConnError::Closed { .. }) => return,
            Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::NotConnected => return,
            Err(e) => panic!("{case}: {e}"),
            Ok(_) => {}
        }
    }
    panic!("{case}: the connection stayed open");
}

/// The data path faults and waits: the Rust frontend in QEMU's role sets up a device in
/// postcopy (ADVISE, LISTEN, the table answered and acknowledged), the pages of its receive
/// buffers are then taken out of the file (as QEMU's discard does: `fallocate(PUNCH_HOLE)`),
/// and `enqueue_burst` writes packets into them: each first touch of a buffer page faults on
/// the backend's mapping, a thread in QEMU's role reads the fault from the userfaultfd, places
/// a zero page through the file and wakes the lcore, and every packet arrives intact.
#[test]
fn the_data_path_waits_for_missing_pages() {
    use rvhost::frontend::MemTableMode;

    let _s = serial();
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    for mode in [MemTableMode::SetMemTable, MemTableMode::AddMemReg] {
        data_path_faults(mode);
    }
}

fn data_path_faults(mode: rvhost::frontend::MemTableMode) {
    use rvhost::frontend::FrontendOptions;
    use rvhost::net::{QueuePair, enqueue_burst};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let opts = FrontendOptions {
        postcopy: true,
        force_small_pages: true,
        mem_table: mode,
        ..FrontendOptions::default()
    };
    let mut b = common::Bed::new(
        "pc-data",
        Flags::POSTCOPY_SUPPORT,
        opts,
        "pc-pool",
        1024,
        32,
    );
    let regions = b.fe.postcopy_regions().to_vec();
    assert_eq!(regions.len(), 1, "{regions:?}");
    let region = regions[0];
    let ufd = b.fe.postcopy_ufd().unwrap().try_clone_to_owned().unwrap();
    assert!(is_userfaultfd(ufd.as_fd()));
    let file = b.fe.shm().region().fd().try_clone_to_owned().unwrap();
    // Post the buffers, then drop their pages from the file (whole pages inside the slots).
    let rx = b.fe.rx(0).unwrap();
    assert_eq!(rx.post_rx(16, 1536), 16);
    let pool = rx.pool();
    let start = (pool.offset(0) as u64).next_multiple_of(PAGE);
    let end = (pool.offset(15) + pool.slot_len()) as u64 / PAGE * PAGE;
    assert!(end > start, "buffers {start:#x}..{end:#x}");
    let at = region.mmap_offset + (start - region.guest_phys_addr);
    nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        at as i64,
        (end - start) as i64,
    )
    .unwrap();
    // QEMU's part: serve the backend's faults until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let server = {
        let (done, served) = (Arc::clone(&done), Arc::clone(&served));
        let base = region.userspace_addr;
        std::thread::spawn(move || {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            while !done.load(Ordering::Acquire) {
                let mut fds = [PollFd::new(ufd.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(50u16)).unwrap() == 0 {
                    continue;
                }
                let msg = next_fault(&ufd);
                assert_eq!(msg.event, UFFD_EVENT_PAGEFAULT, "{msg:?}");
                let page = msg.address & !(PAGE - 1);
                assert!(page >= base && page < base + region.memory_size, "{msg:?}");
                let off = region.mmap_offset + (page - base);
                // The page's content: it was taken out of the file, so zeros.
                nix::sys::uio::pwrite(&file, &[0u8; PAGE as usize], off as i64).unwrap();
                wake(ufd.as_fd(), page, PAGE).unwrap();
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut cache = b.pool.cache();
    let pkts: Vec<Vec<u8>> = (0..12).map(|i| common::pkt::payload(1400, i)).collect();
    let mbufs: Vec<_> = pkts
        .iter()
        .map(|p| common::pkt::mbuf_of(&mut cache, p))
        .collect();
    let q0 = QueuePair(0);
    assert_eq!(enqueue_burst(&b.dev, q0.rx(), &mbufs), mbufs.len());
    cache.free_bulk(mbufs);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.len() < pkts.len() && std::time::Instant::now() < deadline {
        got.extend(b.fe.rx(0).unwrap().recv(32));
    }
    done.store(true, Ordering::Release);
    server.join().unwrap();
    assert_eq!(got, pkts);
    let faults = served.load(Ordering::Relaxed);
    assert!(
        faults > 0,
        "the backend wrote the buffers without one fault"
    );
    eprintln!(
        "postcopy data path ({mode:?}): {} packets over {} faults served",
        pkts.len(),
        faults
    );
}
