//! Cross-process sharing of a region: the parent allocates a region, writes a pattern, and
//! sends the fd over a Unix socket (`SCM_RIGHTS`) to a child process (this test binary
//! re-executed with `--exact share_child`), which maps it with `Region::from_fd`, checks the
//! pattern and writes a reply pattern that the parent then verifies.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use rvhost_hugepages::region::{
    IovaMode, MapOptions, PageSize, Region, RegionConfig, RegionError, hugepage_status,
};

/// Set in the child's environment: the abstract socket name to connect to.
/// The skip-or-fail convention (`RVHOST_TEST_REQUIRE`), shared with the crate's unit tests.
use rvhost_hugepages::test_support::skip;

const CHILD_ENV: &str = "RVHOST_REGION_SHARE_SOCKET";
const TIMEOUT: Duration = Duration::from_secs(30);
/// Message header: offset, len, seed, parent's IOVA of the window start (u64::MAX if not Pa).
const HDR: usize = 4 * 8;

fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8
}

fn reply_seed(seed: u8) -> u8 {
    seed.wrapping_mul(3).wrapping_add(101)
}

/// Parent side: share `[offset, offset + len)` of `region` with a child process.
fn share_with_child(region: &Region, offset: usize, len: usize, seed: u8) {
    let data: Vec<u8> = (0..region.len()).map(|i| pattern(i, seed)).collect();
    region.write_at(0, &data).unwrap();

    let name = format!(
        "rvhost-region-share-{}-{}-{seed}",
        std::process::id(),
        region.page_size().bytes()
    );
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "share_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut stream = accept(&listener, &mut child);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();

    let parent_iova = match region.iova_mode() {
        IovaMode::Pa => region
            .va_to_iova(region.as_ptr() as usize + offset)
            .unwrap(),
        IovaMode::Va => u64::MAX,
    };
    let mut hdr = Vec::with_capacity(HDR);
    for v in [offset as u64, len as u64, u64::from(seed), parent_iova] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    let fds = [region.fd().as_raw_fd()];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&hdr)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(sent, HDR);

    let mut ack = [0u8; 1];
    let got = stream.read(&mut ack);
    let out = child.wait_with_output().unwrap();
    let child_log = format!(
        "child stdout:\n{}\nchild stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child failed: {}\n{child_log}",
        out.status
    );
    assert!(
        matches!(got, Ok(1)) && ack[0] == b'K',
        "no ack ({got:?})\n{child_log}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("share_child: verified"),
        "the child did not run the check\n{child_log}"
    );

    // The child's reply is in the window; the rest is untouched.
    let mut back = vec![0u8; region.len()];
    region.read_at(0, &mut back).unwrap();
    for (i, &b) in back.iter().enumerate() {
        let want = if (offset..offset + len).contains(&i) {
            pattern(i - offset, reply_seed(seed))
        } else {
            data[i]
        };
        assert_eq!(b, want, "byte {i} (window {offset}+{len})");
    }
}

fn accept(listener: &UnixListener, child: &mut Child) -> UnixStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait().unwrap() {
                    let out = child.stderr.take().map(|mut e| {
                        let mut s = String::new();
                        e.read_to_string(&mut s).ok();
                        s
                    });
                    panic!("child exited ({status}) before connecting: {out:?}");
                }
                assert!(Instant::now() < deadline, "child never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The child process. A no-op unless run by `share_with_child`.
#[test]
fn share_child() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut stream =
        UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();

    let mut hdr = [0u8; HDR];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                assert_eq!(fds.len(), 1);
                // SAFETY: SCM_RIGHTS just installed this fd in our table; nothing else owns it.
                fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        (msg.bytes, fd.expect("no fd received"))
    };
    assert_eq!(n, HDR);
    let word = |i: usize| u64::from_le_bytes(hdr[i * 8..i * 8 + 8].try_into().unwrap());
    let (offset, len, seed, parent_iova) = (word(0), word(1) as usize, word(2) as u8, word(3));

    let region = Region::from_fd_with(
        fd,
        offset,
        len,
        &MapOptions {
            prefault: true,
            ..MapOptions::default()
        },
    )
    .unwrap();
    assert_eq!(region.len(), len);
    assert_eq!(region.mmap_offset(), offset);
    println!(
        "share_child: mapped {len} bytes at offset {offset}, {} pages, iova {:?}",
        region.page_size(),
        region.iova_mode()
    );

    let mut seen = vec![0u8; len];
    region.read_at(0, &mut seen).unwrap();
    for (i, &b) in seen.iter().enumerate() {
        assert_eq!(b, pattern(offset as usize + i, seed), "byte {i}");
    }
    // Same physical memory: in Pa mode both processes see the same IOVA.
    if parent_iova != u64::MAX && region.iova_mode() == IovaMode::Pa {
        assert_eq!(
            region.va_to_iova(region.as_ptr() as usize),
            Some(parent_iova)
        );
    }

    let reply: Vec<u8> = (0..len).map(|i| pattern(i, reply_seed(seed))).collect();
    region.write_at(0, &reply).unwrap();
    drop(region);
    stream.write_all(b"K").unwrap();
    println!("share_child: verified");
}

#[test]
fn share_small_region() {
    let r = Region::new(
        &RegionConfig::new(64 * 1024)
            .with_page_size(PageSize::Small)
            .with_name("share-small"),
    )
    .unwrap();
    // Whole region, then a window at an unaligned offset.
    share_with_child(&r, 0, r.len(), 1);
    share_with_child(&r, 4096 + 33, 3 * 4096, 2);
}

#[test]
fn share_hugepage_region() {
    let free = hugepage_status(PageSize::Huge2M).map_or(0, |s| s.available());
    if free < 2 {
        return skip(
            "no free 2 MiB hugepages (reserve with echo 1024 > /proc/sys/vm/nr_hugepages)",
        );
    }
    let r = match Region::new(
        &RegionConfig::new(4 << 20)
            .with_page_size(PageSize::Huge2M)
            .with_name("share-huge"),
    ) {
        Ok(r) => r,
        // The other test in this process may have taken the last pages meanwhile.
        Err(e @ RegionError::NotEnoughHugepages { .. }) => return skip(e),
        Err(e) => panic!("{e}"),
    };
    assert!(r.is_hugepage());
    share_with_child(&r, 0, r.len(), 3);
    share_with_child(&r, (2 << 20) + 100, 1 << 20, 4);
}

#[test]
fn share_preferred_region() {
    // Whatever `page_size: None` gives on this machine (hugepages or the 4 KiB fallback).
    let r = Region::new(&RegionConfig::new(3 << 20).with_name("share-preferred")).unwrap();
    println!("preferred region: {} pages", r.page_size());
    share_with_child(&r, 0, r.len(), 5);
}
