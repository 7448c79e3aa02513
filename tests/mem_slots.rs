//! Memory slots as QEMU uses them with more than one queue pair: each of its vhost devices
//! (one per queue pair, all on one connection) sends ADD_MEM_REG for the same guest memory,
//! and REM_MEM_REG for it when the memory changes. rvhost counts a reference per exact
//! duplicate and unmaps a region with the last reference; anything else that overlaps is
//! refused. Over a real socket with the Rust frontend and real memfds; the fds and mappings of
//! the frontend's memory file are counted by inode, so the counts are this test's alone.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use common::pkt::{mbuf_of, packet_bytes, payload};
use common::{Bed, eventually};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::stat::fstat;
use rvhost::driver::Flags;
use rvhost::frontend::{FrontendOptions, MemTableMode};
use rvhost::mbuf::Mbuf;
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};

const Q0: QueuePair = QueuePair(0);
use rvhost::protocol::payload::{MemoryRegion, Payload, SingleMemRegion};
use rvhost::protocol::{ConnError, FrontendReq as R, Header};

/// (device, inode) of a file.
fn file_id(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = fstat(fd).unwrap();
    (st.st_dev, st.st_ino)
}

/// Open fds of this process on the file `id`.
fn fds_on(id: (u64, u64)) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .filter(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino()) == id
        })
        .count()
}

/// Bytes of this process's address space mapped from the file with inode `ino`.
fn mapped_bytes_of(ino: u64) -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| {
            // address perms offset dev inode path
            let mut f = l.split_whitespace();
            let range = f.next()?;
            if f.nth(3)?.parse::<u64>().ok()? != ino {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .sum()
}

fn mem_reg(region: MemoryRegion) -> Vec<u8> {
    SingleMemRegion { region }.to_bytes()
}

/// Sends `req` with NEED_REPLY and returns the status the backend answered.
fn status(b: &mut Bed, req: R, region: MemoryRegion, fd: Option<BorrowedFd<'_>>) -> u64 {
    let ep = b.fe.endpoint().unwrap();
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    ep.send_request(req, Header::NEED_REPLY, &mem_reg(region), &fds)
        .unwrap();
    let (_, p) = ep.recv_reply(req).unwrap();
    u64::parse(&p).unwrap()
}

/// Packets both ways, every byte checked: the guest sends 64 packets, the host answers 64.
fn traffic_passes(b: &mut Bed, round: usize) {
    let mut cache = b.pool.cache();
    let sent: Vec<Vec<u8>> = (0..64).map(|i| payload(60 + i * 23, round + i)).collect();
    let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    assert_eq!(b.fe.tx(0).unwrap().send(&refs), refs.len());
    let mut got: Vec<Mbuf> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < sent.len() && Instant::now() < deadline {
        dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32);
    }
    assert_eq!(got.len(), sent.len(), "round {round}: guest to host");
    for (m, want) in got.iter().zip(&sent) {
        assert_eq!(&packet_bytes(m), want, "round {round}: guest to host");
    }
    cache.free_bulk(got);

    let back: Vec<Mbuf> = sent.iter().map(|p| mbuf_of(&mut cache, p)).collect();
    b.fe.rx(0).unwrap().post_rx(128, 2048);
    assert_eq!(enqueue_burst(&b.dev, Q0.rx(), &back), back.len());
    cache.free_bulk(back);
    let mut recv = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while recv.len() < sent.len() && Instant::now() < deadline {
        recv.extend(b.fe.rx(0).unwrap().recv(32));
    }
    assert_eq!(recv, sent, "round {round}: host to guest");
    let bad = |v: usize| b.dev.lock_vring(v).unwrap().stats.bad_chains;
    assert_eq!((bad(0), bad(1)), (0, 0), "round {round}");
}

/// Regions in the backend's table, as the data plane sees it (vring 0's memory).
fn backend_regions(b: &Bed) -> Vec<(u64, u64)> {
    let vq = b.dev.lock_vring(0).unwrap();
    vq.mem
        .regions()
        .map(|r| (r.guest_phys_addr().raw(), r.size()))
        .collect()
}

fn bed() -> Bed {
    let opts = FrontendOptions {
        mem_table: MemTableMode::AddMemReg,
        regions: 2,
        mem_size: 16 << 20,
        force_small_pages: true,
        ..FrontendOptions::default()
    };
    Bed::new("memslots", Flags::empty(), opts, "memslots", 1024, 32)
}

#[test]
fn a_region_added_twice_stays_until_removed_twice() {
    let mut b = bed();
    let shm_fd: OwnedFd = b.fe.shm().region().fd().try_clone_to_owned().unwrap();
    let id = file_id(shm_fd.as_fd());
    let regions = b.fe.memory_regions();
    assert_eq!(regions.len(), 2);
    let (r0, r1) = (regions[0], regions[1]);
    // The frontend's own fd + our dup + one per backend region; its mapping + the backend's.
    assert_eq!(fds_on(id), 4);
    let mapped = mapped_bytes_of(id.1);
    traffic_passes(&mut b, 0);

    // QEMU's second vhost device adds the same regions again: accepted, the new fd closed,
    // nothing mapped again.
    for r in [r0, r1] {
        assert_eq!(status(&mut b, R::AddMemReg, r, Some(shm_fd.as_fd())), 0);
    }
    assert_eq!(fds_on(id), 4, "the duplicates' fds are closed");
    assert_eq!(mapped_bytes_of(id.1), mapped, "nothing mapped twice");
    assert_eq!(backend_regions(&b).len(), 2);

    // One removal each: the regions stay and carry traffic.
    for r in [r0, r1] {
        assert_eq!(status(&mut b, R::RemMemReg, r, None), 0);
    }
    assert_eq!(backend_regions(&b).len(), 2);
    assert_eq!(mapped_bytes_of(id.1), mapped);
    traffic_passes(&mut b, 1);

    // The second removal of r1 takes it out: unmapped, its fd closed.
    assert_eq!(status(&mut b, R::RemMemReg, r1, None), 0);
    assert_eq!(
        backend_regions(&b),
        [(r0.guest_phys_addr, r0.memory_size)],
        "r1 left the table"
    );
    assert_eq!(fds_on(id), 3);
    assert_eq!(mapped_bytes_of(id.1), mapped - r1.memory_size);
    // A third removal names a region that is gone: refused, connection kept.
    assert_ne!(status(&mut b, R::RemMemReg, r1, None), 0);

    // Added back once, it is a fresh region with one reference.
    assert_eq!(status(&mut b, R::AddMemReg, r1, Some(shm_fd.as_fd())), 0);
    assert_eq!(fds_on(id), 4);
    assert_eq!(mapped_bytes_of(id.1), mapped);
    assert_eq!(status(&mut b, R::RemMemReg, r1, None), 0);
    assert_eq!(backend_regions(&b).len(), 1);

    drop(b);
    assert!(
        eventually(Duration::from_secs(5), || fds_on(id) == 1),
        "only our own dup is left: {} fds",
        fds_on(id)
    );
    assert_eq!(
        mapped_bytes_of(id.1),
        0,
        "nothing of the frontend's memory mapped"
    );
}

#[test]
fn a_region_that_differs_from_one_held_is_refused_without_closing() {
    let mut b = bed();
    let shm_fd: OwnedFd = b.fe.shm().region().fd().try_clone_to_owned().unwrap();
    let id = file_id(shm_fd.as_fd());
    let r0 = b.fe.memory_regions()[0];
    let other = memfd_create("memslots-other", MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&other, (r0.mmap_offset + r0.memory_size) as i64).unwrap();
    let other_id = file_id(other.as_fd());
    let mapped = mapped_bytes_of(id.1);

    let refused: [(&str, MemoryRegion, BorrowedFd<'_>); 5] = [
        ("same addresses, another file", r0, other.as_fd()),
        (
            "same GPA, another frontend address",
            MemoryRegion {
                userspace_addr: r0.userspace_addr + (1 << 30),
                ..r0
            },
            shm_fd.as_fd(),
        ),
        (
            "same GPA and address, another offset",
            MemoryRegion {
                mmap_offset: r0.mmap_offset + 4096,
                memory_size: r0.memory_size - 4096,
                ..r0
            },
            shm_fd.as_fd(),
        ),
        (
            "a part of r0",
            MemoryRegion {
                guest_phys_addr: r0.guest_phys_addr + 4096,
                userspace_addr: r0.userspace_addr + 4096,
                mmap_offset: r0.mmap_offset + 4096,
                memory_size: 4096,
            },
            shm_fd.as_fd(),
        ),
        (
            "same size, GPA shifted into r0",
            MemoryRegion {
                guest_phys_addr: r0.guest_phys_addr + 4096,
                userspace_addr: r0.userspace_addr + (1 << 30),
                ..r0
            },
            shm_fd.as_fd(),
        ),
    ];
    for (what, r, fd) in refused {
        assert_ne!(status(&mut b, R::AddMemReg, r, Some(fd)), 0, "{what}");
        assert_eq!(backend_regions(&b).len(), 2, "{what}");
    }
    assert_eq!(fds_on(other_id), 1, "the refused fd was closed");
    assert_eq!(fds_on(id), 4);
    assert_eq!(mapped_bytes_of(id.1), mapped);
    // The connection is still served, the table unchanged: traffic passes.
    traffic_passes(&mut b, 0);

    // Without NEED_REPLY there is no way to tell the frontend: the connection closes.
    let ep = b.fe.endpoint().unwrap();
    ep.send_request(R::AddMemReg, 0, &mem_reg(r0), &[other.as_fd()])
        .unwrap();
    let closed = ep.get_u64(R::GetFeatures);
    assert!(
        matches!(
            closed,
            Err(ConnError::Closed { .. }) | Err(ConnError::Io(_))
        ),
        "{closed:?}"
    );
    drop(b);
    assert!(eventually(Duration::from_secs(5), || fds_on(id) == 1));
    assert_eq!(fds_on(other_id), 1);
}
