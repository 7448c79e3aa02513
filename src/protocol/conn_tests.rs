//! Tests of the framing over real socket pairs.

use super::*;
use crate::protocol::message::FrontendReq;
use crate::protocol::payload::{MemoryRegion, MemoryTable, VringState};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::stat::fstat;
use proptest::prelude::*;
use std::io::Write;
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

fn pair() -> (Connection, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Connection::new(a).unwrap(), b)
}

fn frame(req: FrontendReq, payload: &[u8]) -> Vec<u8> {
    let mut v = Header::for_request(req, payload.len() as u32)
        .to_bytes()
        .to_vec();
    v.extend_from_slice(payload);
    v
}

/// Sends `bytes` with `fds` in one sendmsg (blocking peer socket).
fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let n = send_chunk(s.as_fd(), &[IoSlice::new(bytes)], &raw, MsgFlags::empty()).unwrap();
    assert_eq!(n, bytes.len());
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

/// How many entries of /proc/self/fd point at the same object as `fd`.
/// Counting links to one private pipe is immune to other tests opening and
/// closing descriptors in parallel threads.
fn links_to(fd: BorrowedFd<'_>) -> usize {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| *t == target)
        .count()
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    fstat(fd).unwrap().st_ino
}

fn recv_some(conn: &mut Connection) -> Message {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(m) = conn.recv().unwrap() {
            return m;
        }
        assert!(Instant::now() < deadline, "no message");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn empty_socket_gives_none() {
    let (mut conn, _peer) = pair();
    assert!(conn.recv().unwrap().is_none());
    assert_eq!(conn.pending_input(), 0);
    assert!(!conn.wants_write());
}

#[test]
fn partial_header_and_payload_assemble_stepwise() {
    let (mut conn, mut peer) = pair();
    let state = VringState { index: 1, num: 256 }.to_bytes();
    let bytes = frame(FrontendReq::SetVringNum, &state);
    for (i, piece) in [&bytes[..5], &bytes[5..12], &bytes[12..15], &bytes[15..]]
        .iter()
        .enumerate()
    {
        peer.write_all(piece).unwrap();
        let got = conn.recv().unwrap();
        if i < 3 {
            assert!(got.is_none(), "piece {i}");
            assert!(conn.pending_input() > 0);
        } else {
            let m = got.unwrap();
            assert_eq!(m.check(), Ok(FrontendReq::SetVringNum));
            assert_eq!(
                m.parse_payload::<VringState>().unwrap(),
                VringState { index: 1, num: 256 }
            );
        }
    }
    assert_eq!(conn.pending_input(), 0);
}

#[test]
fn split_writes_with_delays_from_another_thread() {
    let (mut conn, mut peer) = pair();
    let table = MemoryTable {
        regions: vec![MemoryRegion::default(); 3],
    }
    .to_bytes();
    let bytes = frame(FrontendReq::SetMemTable, &table);
    let (r, _w) = pipe();
    let fds: Vec<OwnedFd> = (0..3).map(|_| r.try_clone().unwrap()).collect();
    let t = thread::spawn(move || {
        let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        send_with_fds(&peer, &bytes[..7], &b);
        for piece in [&bytes[7..12], &bytes[12..40], &bytes[40..]] {
            thread::sleep(Duration::from_millis(20));
            peer.write_all(piece).unwrap();
        }
        peer
    });
    let m = recv_some(&mut conn);
    assert_eq!(m.check(), Ok(FrontendReq::SetMemTable));
    assert_eq!(m.fds.len(), 3);
    assert_eq!(m.parse_payload::<MemoryTable>().unwrap().regions.len(), 3);
    let _peer = t.join().unwrap();
}

#[test]
fn two_messages_in_one_write() {
    let (mut conn, mut peer) = pair();
    let mut bytes = frame(FrontendReq::SetOwner, &[]);
    bytes.extend(frame(FrontendReq::SetFeatures, &7u64.to_ne_bytes()));
    peer.write_all(&bytes).unwrap();
    let a = conn.recv().unwrap().unwrap();
    assert_eq!(a.check(), Ok(FrontendReq::SetOwner));
    let b = conn.recv().unwrap().unwrap();
    assert_eq!(b.check(), Ok(FrontendReq::SetFeatures));
    assert_eq!(b.parse_payload::<u64>().unwrap(), 7);
    assert!(conn.recv().unwrap().is_none());
}

#[test]
fn fds_attach_to_their_own_message() {
    let (mut conn, peer) = pair();
    let (kick, _kw) = pipe();
    let (call, _cw) = pipe();
    let state = VringState { index: 0, num: 256 }.to_bytes();
    // Three messages queued before the back-end reads anything: none, one
    // fd, one other fd.
    send_with_fds(&peer, &frame(FrontendReq::SetVringNum, &state), &[]);
    send_with_fds(
        &peer,
        &frame(FrontendReq::SetVringKick, &0u64.to_ne_bytes()),
        &[kick.as_fd()],
    );
    send_with_fds(
        &peer,
        &frame(FrontendReq::SetVringCall, &0u64.to_ne_bytes()),
        &[call.as_fd()],
    );
    let a = conn.recv().unwrap().unwrap();
    assert_eq!((a.check(), a.fds.len()), (Ok(FrontendReq::SetVringNum), 0));
    let mut b = conn.recv().unwrap().unwrap();
    assert_eq!(b.check(), Ok(FrontendReq::SetVringKick));
    assert_eq!(inode(b.take_fd().unwrap().as_fd()), inode(kick.as_fd()));
    let mut c = conn.recv().unwrap().unwrap();
    assert_eq!(c.check(), Ok(FrontendReq::SetVringCall));
    assert_eq!(inode(c.take_fd().unwrap().as_fd()), inode(call.as_fd()));
    assert!(c.take_fd().is_none());
}

#[test]
fn fds_on_a_later_chunk_of_the_same_message_stay_with_it() {
    // Non-QEMU sender: header first, then the payload with the fd. The fd
    // came with bytes of this message, so it is this message's.
    let (mut conn, peer) = pair();
    let (kick, _kw) = pipe();
    let bytes = frame(FrontendReq::SetVringKick, &0u64.to_ne_bytes());
    send_with_fds(&peer, &bytes[..12], &[]);
    assert!(conn.recv().unwrap().is_none());
    send_with_fds(&peer, &bytes[12..], &[kick.as_fd()]);
    let m = conn.recv().unwrap().unwrap();
    assert_eq!((m.check(), m.fds.len()), (Ok(FrontendReq::SetVringKick), 1));
}

#[test]
fn eight_fds_are_accepted() {
    let (mut conn, peer) = pair();
    let (r, _w) = pipe();
    let table = MemoryTable {
        regions: vec![MemoryRegion::default(); 8],
    }
    .to_bytes();
    send_with_fds(
        &peer,
        &frame(FrontendReq::SetMemTable, &table),
        &[r.as_fd(); 8],
    );
    let m = conn.recv().unwrap().unwrap();
    assert_eq!(m.check(), Ok(FrontendReq::SetMemTable));
    assert_eq!(m.fds.len(), 8);
}

#[test]
fn more_than_eight_fds_is_an_error_and_leaks_nothing() {
    let (r, _w) = pipe();
    let before = links_to(r.as_fd());
    {
        let (mut conn, peer) = pair();
        let dups: Vec<OwnedFd> = (0..12).map(|_| r.try_clone().unwrap()).collect();
        let b: Vec<BorrowedFd<'_>> = dups.iter().map(|f| f.as_fd()).collect();
        let table = MemoryTable {
            regions: vec![MemoryRegion::default(); 8],
        }
        .to_bytes();
        send_with_fds(&peer, &frame(FrontendReq::SetMemTable, &table), &b);
        drop(dups);
        // The kernel installed 8 descriptors, dropped the rest, set MSG_CTRUNC.
        let err = conn.recv().unwrap_err();
        assert!(matches!(err, ConnError::FdsTruncated { max: 8 }), "{err}");
    }
    assert_eq!(links_to(r.as_fd()), before);
}

#[test]
fn fds_spread_over_chunks_are_bounded_and_closed() {
    let (r, _w) = pipe();
    let before = links_to(r.as_fd());
    {
        let (mut conn, peer) = pair();
        let table = MemoryTable {
            regions: vec![MemoryRegion::default(); 8],
        }
        .to_bytes();
        let bytes = frame(FrontendReq::SetMemTable, &table);
        let dups: Vec<OwnedFd> = (0..5).map(|_| r.try_clone().unwrap()).collect();
        let b: Vec<BorrowedFd<'_>> = dups.iter().map(|f| f.as_fd()).collect();
        send_with_fds(&peer, &bytes[..100], &b);
        assert!(conn.recv().unwrap().is_none());
        send_with_fds(&peer, &bytes[100..], &b);
        drop(dups);
        let err = conn.recv().unwrap_err();
        assert!(
            matches!(
                err,
                ConnError::Protocol(ProtocolError::TooManyFds {
                    got: 10,
                    max: 8,
                    ..
                })
            ),
            "{err}"
        );
    }
    assert_eq!(links_to(r.as_fd()), before);
}

#[test]
fn rejected_and_dropped_messages_close_their_fds() {
    let (r, _w) = pipe();
    let before = links_to(r.as_fd());
    {
        let (mut conn, peer) = pair();
        // SET_OWNER takes no fd: check() rejects it, drop closes the fd.
        send_with_fds(&peer, &frame(FrontendReq::SetOwner, &[]), &[r.as_fd()]);
        let m = conn.recv().unwrap().unwrap();
        assert!(matches!(
            m.check(),
            Err(ProtocolError::UnexpectedFds { got: 1, .. })
        ));
        assert_eq!(links_to(r.as_fd()), before + 1);
        drop(m);
        assert_eq!(links_to(r.as_fd()), before);
        // EOF in the middle of a message that already brought an fd.
        let bytes = frame(FrontendReq::SetVringKick, &0u64.to_ne_bytes());
        send_with_fds(&peer, &bytes[..14], &[r.as_fd()]);
        assert!(conn.recv().unwrap().is_none());
        drop(peer);
        let err = conn.recv().unwrap_err();
        assert!(matches!(err, ConnError::Closed { pending: 14 }), "{err}");
        assert_eq!(links_to(r.as_fd()), before);
    }
    assert_eq!(links_to(r.as_fd()), before);
}

#[test]
fn eof_mid_header_and_between_messages() {
    let (mut conn, mut peer) = pair();
    peer.write_all(&frame(FrontendReq::GetFeatures, &[])[..6])
        .unwrap();
    drop(peer);
    assert!(matches!(conn.recv(), Err(ConnError::Closed { pending: 6 })));

    let (mut conn, mut peer) = pair();
    peer.write_all(&frame(FrontendReq::GetFeatures, &[]))
        .unwrap();
    drop(peer);
    assert!(conn.recv().unwrap().is_some());
    assert!(matches!(conn.recv(), Err(ConnError::Closed { pending: 0 })));
}

#[test]
fn oversized_payload_is_refused_before_allocation() {
    let (mut conn, mut peer) = pair();
    let h = Header::new(FrontendReq::SetConfig.code(), Header::VERSION, u32::MAX);
    peer.write_all(&h.to_bytes()).unwrap();
    let err = conn.recv().unwrap_err();
    assert!(
        matches!(
            err,
            ConnError::Protocol(ProtocolError::PayloadTooLarge { size: u32::MAX, .. })
        ),
        "{err}"
    );
    let (mut conn, mut peer) = pair();
    let h = Header::new(
        FrontendReq::CreateCryptoSession.code(),
        Header::VERSION,
        MAX_PAYLOAD as u32,
    );
    peer.write_all(&h.to_bytes()).unwrap();
    peer.write_all(&vec![0; MAX_PAYLOAD]).unwrap();
    assert_eq!(recv_some(&mut conn).payload.len(), MAX_PAYLOAD);
}

/// Drains `reader` and flushes `writer` until both are idle.
fn pump(writer: &mut Connection, reader: &mut Connection) -> Vec<Message> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        writer.flush().unwrap();
        let mut progressed = false;
        while let Some(m) = reader.recv().unwrap() {
            got.push(m);
            progressed = true;
        }
        if !writer.wants_write() && !progressed {
            return got;
        }
        assert!(Instant::now() < deadline, "pump stuck");
    }
}

#[test]
fn output_is_queued_when_the_peer_does_not_read_then_bounded() {
    let (mut conn, peer) = pair();
    setsockopt(&conn.as_fd(), sockopt::SndBuf, &4096usize).unwrap();
    let mut reader = Connection::new(peer).unwrap();
    let request = Header::for_request(FrontendReq::GetConfig, 0);
    let (r, _w) = pipe();
    let before = links_to(r.as_fd());
    let payload = [0x5au8; 200];
    let mut sent = 0u32;
    // Fill the socket until a reply has to wait in the queue.
    while !conn.wants_write() {
        conn.send_reply(&request, &payload, &[]).unwrap();
        sent += 1;
        assert!(sent < 10_000, "socket never filled");
    }
    // A reply with an fd, queued: the fd is duplicated for the queue.
    conn.send_reply(&request, &sent.to_ne_bytes(), &[r.as_fd()])
        .unwrap();
    let fd_msg = sent;
    sent += 1;
    assert_eq!(links_to(r.as_fd()), before + 1);
    // Keep going until the bound refuses.
    let err = loop {
        match conn.send_reply(&request, &payload, &[]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10_000);
    };
    assert!(
        matches!(
            err,
            ConnError::OutputFull {
                limit: OUTPUT_LIMIT,
                ..
            }
        ),
        "{err}"
    );
    assert!(conn.queued_output() <= OUTPUT_LIMIT);
    // The peer reads: everything accepted arrives in order, the fd with its message.
    let got = pump(&mut conn, &mut reader);
    assert_eq!(got.len(), sent as usize);
    for (i, m) in got.iter().enumerate() {
        assert!(m.header.is_reply());
        if i == fd_msg as usize {
            assert_eq!(m.payload, fd_msg.to_ne_bytes());
            assert_eq!(m.fds.len(), 1);
            assert_eq!(inode(m.fds[0].as_fd()), inode(r.as_fd()));
        } else {
            assert_eq!((m.payload.as_slice(), m.fds.len()), (&payload[..], 0));
        }
    }
    assert_eq!(conn.queued_output(), 0);
    drop(got);
    assert_eq!(links_to(r.as_fd()), before);
}

#[test]
fn send_checks_its_arguments() {
    let (mut conn, _peer) = pair();
    let h = Header::for_request(FrontendReq::GetFeatures, 9);
    assert!(matches!(
        conn.send(h, &[0; 8], &[]),
        Err(ConnError::Protocol(ProtocolError::SizeMismatch { .. }))
    ));
    let big = vec![0; MAX_PAYLOAD + 1];
    let h = Header::for_request(FrontendReq::GetFeatures, big.len() as u32);
    assert!(matches!(
        conn.send(h, &big, &[]),
        Err(ConnError::Protocol(ProtocolError::PayloadTooLarge { .. }))
    ));
    let (r, _w) = pipe();
    let nine = [r.as_fd(); 9];
    let h = Header::for_request(FrontendReq::GetFeatures, 0);
    assert!(matches!(
        conn.send(h, &[], &nine),
        Err(ConnError::Protocol(ProtocolError::TooManyFds { .. }))
    ));
}

#[test]
fn send_to_a_closed_peer_is_closed() {
    let (mut conn, peer) = pair();
    drop(peer);
    let h = Header::for_request(FrontendReq::GetFeatures, 0);
    let err = conn.send_reply(&h, &[0; 8], &[]).unwrap_err();
    assert!(err.is_closed(), "{err}");
}

#[test]
fn ack_and_reply_headers() {
    let (mut conn, peer) = pair();
    let mut reader = Connection::new(peer).unwrap();
    let req = Header::new(
        FrontendReq::SetFeatures.code(),
        Header::VERSION | Header::NEED_REPLY,
        8,
    );
    conn.send_ack(&req, 0).unwrap();
    let m = reader.recv().unwrap().unwrap();
    assert_eq!(m.header, Header::new(2, Header::VERSION | Header::REPLY, 8));
    assert_eq!(m.parse_payload::<u64>().unwrap(), 0);
}

#[test]
fn scm_rights_decoder_agrees_with_nix() {
    let (a, b) = UnixStream::pair().unwrap();
    let (r, _w) = pipe();
    let fds = [r.as_fd(), r.as_fd(), r.as_fd()];
    send_with_fds(&a, b"x", &fds);
    let mut buf = [0u8; 1];
    let mut cmsg = cmsg_buffer();
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        b.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    let mut from_nix = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(v) = c {
            from_nix.extend(v);
        }
    }
    let ours = take_scm_rights(&cmsg);
    let ours_raw: Vec<RawFd> = ours.iter().map(AsRawFd::as_raw_fd).collect();
    assert_eq!(ours_raw, from_nix);
    assert_eq!(ours.len(), 3);
}

#[test]
fn cmsg_layout_is_the_kernel_one() {
    assert_eq!(offset_of!(libc::cmsghdr, cmsg_level), size_of::<usize>());
    assert_eq!(offset_of!(libc::cmsghdr, cmsg_type), size_of::<usize>() + 4);
    // SAFETY: CMSG_LEN is arithmetic on its argument only.
    let len0 = unsafe { libc::CMSG_LEN(0) } as usize;
    assert_eq!(CMSG_HDR, len0);
    // Garbage-free decoding of an empty or short buffer.
    assert!(take_scm_rights(&[]).is_empty());
    assert!(take_scm_rights(&[0; 64]).is_empty());
    let mut bogus = vec![0u8; 64];
    bogus[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
    assert!(take_scm_rights(&bogus).is_empty());
}

/// How a stream ends: EOF (with the bytes of an unfinished message), or a header whose size is
/// over [`MAX_PAYLOAD`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Eof { pending: usize },
    TooLarge { size: u32 },
}

/// What a [`Connection`] made of a stream: every message (header and payload; none of them
/// carries fds), then how it ended. Panics on any other error.
fn feed(stream: &[u8], cuts: &[usize]) -> (Vec<(Header, Vec<u8>)>, End) {
    let (mut conn, mut peer) = pair();
    let mut pieces = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let end = (at + c).min(stream.len());
        pieces.push(&stream[at..end]);
        at = end;
    }
    pieces.push(&stream[at..]);
    let mut msgs = Vec::new();
    // Reads until the socket is empty (`None`) or the stream ended (`Some`).
    let mut drain = |conn: &mut Connection| loop {
        match conn.recv() {
            Ok(Some(m)) => {
                assert!(m.fds.is_empty());
                msgs.push((m.header, m.payload));
            }
            Ok(None) => return None,
            Err(ConnError::Closed { pending }) => return Some(End::Eof { pending }),
            Err(ConnError::Protocol(ProtocolError::PayloadTooLarge { size, max })) => {
                assert_eq!(max, MAX_PAYLOAD);
                return Some(End::TooLarge { size });
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    for piece in pieces {
        peer.write_all(piece).unwrap();
        if let Some(end) = drain(&mut conn) {
            return (msgs, end);
        }
    }
    drop(peer);
    let end = drain(&mut conn).expect("EOF must end the stream");
    (msgs, end)
}

/// The framing rules, written out: 12-byte headers, `size` bytes of payload each, a size over
/// [`MAX_PAYLOAD`] refused as soon as its header is complete, EOF with what was left over.
fn reference(mut stream: &[u8]) -> (Vec<(Header, Vec<u8>)>, End) {
    let mut msgs = Vec::new();
    loop {
        if stream.len() < Header::SIZE {
            return (
                msgs,
                End::Eof {
                    pending: stream.len(),
                },
            );
        }
        let header = Header::parse(stream).unwrap();
        if header.size as usize > MAX_PAYLOAD {
            return (msgs, End::TooLarge { size: header.size });
        }
        let end = Header::SIZE + header.size as usize;
        if stream.len() < end {
            return (
                msgs,
                End::Eof {
                    pending: stream.len(),
                },
            );
        }
        msgs.push((header, stream[Header::SIZE..end].to_vec()));
        stream = &stream[end..];
    }
}

/// A well-formed message: any request code and flags (framing checks neither), a size up to
/// [`MAX_PAYLOAD`] (its ends more often than a uniform pick gives them), exactly that many
/// payload bytes.
fn message() -> impl Strategy<Value = (Header, Vec<u8>)> {
    let size = prop_oneof![
        2 => Just(0usize),
        2 => Just(MAX_PAYLOAD),
        6 => 1..MAX_PAYLOAD,
    ];
    (any::<u32>(), any::<u32>(), size).prop_flat_map(|(request, flags, size)| {
        prop::collection::vec(any::<u8>(), size).prop_map(move |payload| {
            let header = Header {
                request,
                flags,
                size: size as u32,
            };
            (header, payload)
        })
    })
}

/// `got` is `want`: the same messages, byte for byte, and the same end. Headers, sizes and the
/// end are compared first, so that a failure prints those rather than kilobytes of payload.
fn same(
    got: &(Vec<(Header, Vec<u8>)>, End),
    want: &(Vec<(Header, Vec<u8>)>, End),
) -> Result<(), TestCaseError> {
    let shape = |(msgs, end): &(Vec<(Header, Vec<u8>)>, End)| {
        let sizes: Vec<_> = msgs.iter().map(|(h, p)| (*h, p.len())).collect();
        (sizes, end.clone())
    };
    prop_assert_eq!(shape(got), shape(want));
    for (i, (g, w)) in got.0.iter().zip(&want.0).enumerate() {
        let at = g.1.iter().zip(&w.1).position(|(a, b)| a != b);
        prop_assert!(
            at.is_none(),
            "message {}: payload differs at byte {:?}",
            i,
            at
        );
    }
    Ok(())
}

fn wire(msgs: &[(Header, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (h, p) in msgs {
        v.extend_from_slice(&h.to_bytes());
        v.extend_from_slice(p);
    }
    v
}

/// What follows the well-formed messages of a stream.
#[derive(Debug, Clone)]
enum Tail {
    /// Nothing: a clean EOF.
    Clean,
    /// A header with a size over [`MAX_PAYLOAD`], and some bytes after it.
    TooLarge { size: u32, after: usize },
    /// The first `keep` bytes (at least one, fewer than all) of one more well-formed message.
    Truncated { msg: (Header, Vec<u8>), keep: usize },
}

fn tail() -> impl Strategy<Value = Tail> {
    let too_large = (
        prop_oneof![
            Just(MAX_PAYLOAD as u32 + 1),
            Just(u32::MAX),
            MAX_PAYLOAD as u32 + 1..=u32::MAX
        ],
        0usize..64,
    )
        .prop_map(|(size, after)| Tail::TooLarge { size, after });
    let truncated = message().prop_flat_map(|msg| {
        let len = Header::SIZE + msg.1.len();
        (Just(msg), 1..len).prop_map(|(msg, keep)| Tail::Truncated { msg, keep })
    });
    prop_oneof![Just(Tail::Clean), too_large, truncated]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any bytes, cut anywhere: the connection makes of them exactly what the framing rules
    /// say, and never panics.
    #[test]
    fn arbitrary_bytes_frame_as_the_rules_say(
        stream in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(0usize..64, 0..16),
    ) {
        same(&feed(&stream, &cuts), &reference(&stream))?;
    }

    /// Well-formed messages, cut anywhere, come out exactly as sent, in order; then the tail:
    /// a clean EOF, a size over the bound refused, or a truncated message reported as the
    /// bytes it left pending.
    #[test]
    fn arbitrary_frames_assemble_exactly(
        msgs in prop::collection::vec(message(), 0..8),
        tail in tail(),
        cuts in prop::collection::vec(0usize..5000, 0..16),
    ) {
        let mut stream = wire(&msgs);
        let end = match &tail {
            Tail::Clean => End::Eof { pending: 0 },
            Tail::TooLarge { size, after } => {
                stream.extend_from_slice(&Header::new(1, Header::VERSION, *size).to_bytes());
                stream.resize(stream.len() + after, 0xab);
                End::TooLarge { size: *size }
            }
            Tail::Truncated { msg, keep } => {
                stream.extend_from_slice(&wire(std::slice::from_ref(msg))[..*keep]);
                End::Eof { pending: *keep }
            }
        };
        same(&feed(&stream, &cuts), &(msgs, end))?;
    }
}
