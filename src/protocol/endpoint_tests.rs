//! Tests of [`super`].

use super::*;
use crate::protocol::message::FrontendReq;
use crate::protocol::payload::{InflightInfo, VringState};
use std::io::{Read, Write};
use std::thread;

fn pair() -> (Endpoint, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Endpoint::new(a).unwrap(), b)
}

fn read_msg(s: &mut UnixStream) -> (Header, Vec<u8>) {
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    let h = Header::parse(&head).unwrap();
    let mut p = vec![0; h.size as usize];
    s.read_exact(&mut p).unwrap();
    (h, p)
}

fn write_msg(s: &mut UnixStream, h: Header, p: &[u8]) {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(p);
    s.write_all(&v).unwrap();
}

#[test]
fn get_u64_matches_reply() {
    let (mut ep, mut peer) = pair();
    let t = thread::spawn(move || {
        let (h, p) = read_msg(&mut peer);
        assert_eq!(h.frontend_request(), Ok(FrontendReq::GetFeatures));
        assert_eq!((h.flags, p.len()), (Header::VERSION, 0));
        write_msg(&mut peer, h.reply(8), &0x1234u64.to_ne_bytes());
        peer
    });
    assert_eq!(ep.get_u64(FrontendReq::GetFeatures).unwrap(), 0x1234);
    t.join().unwrap();
}

#[test]
fn reply_must_match_request_and_have_reply_flag() {
    let (mut ep, mut peer) = pair();
    let reply = Header::new(
        FrontendReq::GetProtocolFeatures.code(),
        Header::VERSION | Header::REPLY,
        8,
    );
    write_msg(&mut peer, reply, &[0; 8]);
    let err = ep.recv_reply(FrontendReq::GetFeatures).unwrap_err();
    assert!(
        matches!(
            err,
            ConnError::BadReply {
                reason: "reply to another request",
                ..
            }
        ),
        "{err}"
    );

    let (mut ep, mut peer) = pair();
    let not_reply = Header::new(FrontendReq::GetFeatures.code(), Header::VERSION, 8);
    write_msg(&mut peer, not_reply, &[0; 8]);
    let err = ep.recv_reply(FrontendReq::GetFeatures).unwrap_err();
    assert!(
        matches!(
            err,
            ConnError::BadReply {
                reason: "REPLY flag not set",
                ..
            }
        ),
        "{err}"
    );

    let (mut ep, mut peer) = pair();
    let short = Header::new(
        FrontendReq::GetFeatures.code(),
        Header::VERSION | Header::REPLY,
        4,
    );
    write_msg(&mut peer, short, &[0; 4]);
    let err = ep.get_u64(FrontendReq::GetFeatures).unwrap_err();
    assert!(
        matches!(
            err,
            ConnError::Protocol(ProtocolError::PayloadSize {
                what: "VHOST_USER_GET_FEATURES",
                got: 4,
                ..
            })
        ),
        "{err}"
    );

    let (mut ep, mut peer) = pair();
    let huge = Header::new(
        FrontendReq::GetFeatures.code(),
        Header::VERSION | Header::REPLY,
        1 << 20,
    );
    write_msg(&mut peer, huge, &[]);
    assert!(matches!(
        ep.recv_reply(FrontendReq::GetFeatures),
        Err(ConnError::Protocol(ProtocolError::PayloadTooLarge { .. }))
    ));
}

#[test]
fn timeout_when_no_reply() {
    let (mut ep, _peer) = pair();
    ep.set_timeout(Duration::from_millis(50)).unwrap();
    let start = Instant::now();
    let err = ep.recv_reply(FrontendReq::GetFeatures).unwrap_err();
    assert!(
        matches!(
            err,
            ConnError::Timeout {
                request: "VHOST_USER_GET_FEATURES",
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn timeout_bounds_a_trickling_peer() {
    let (mut ep, mut peer) = pair();
    ep.set_timeout(Duration::from_millis(200)).unwrap();
    let t = thread::spawn(move || {
        let reply = Header::new(1, Header::VERSION | Header::REPLY, 8).to_bytes();
        for b in reply {
            if peer.write_all(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(60));
        }
    });
    // Each byte comes before a per-read timeout would expire; the header
    // alone takes 720 ms. Only a deadline over the whole reply stops at 200.
    let start = Instant::now();
    let err = ep.recv_reply(FrontendReq::GetFeatures).unwrap_err();
    assert!(matches!(err, ConnError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_millis(600));
    drop(ep);
    t.join().unwrap();
}

#[test]
fn closed_peer() {
    let (mut ep, peer) = pair();
    drop(peer);
    assert!(
        ep.recv_reply(FrontendReq::GetFeatures)
            .unwrap_err()
            .is_closed()
    );
    assert!(
        ep.send_request(FrontendReq::SetOwner, 0, &[], &[])
            .unwrap_err()
            .is_closed()
    );
}

#[test]
fn reply_ack_round_trip_and_nack() {
    let (mut ep, mut peer) = pair();
    ep.set_reply_ack(true);
    let t = thread::spawn(move || {
        for status in [0u64, 7] {
            let (h, p) = read_msg(&mut peer);
            assert!(h.need_reply());
            assert_eq!(p, 0x40u64.to_ne_bytes());
            write_msg(&mut peer, h.reply(8), &status.to_ne_bytes());
        }
    });
    ep.set_u64(FrontendReq::SetFeatures, 0x40).unwrap();
    let err = ep.set_u64(FrontendReq::SetFeatures, 0x40).unwrap_err();
    assert!(matches!(err, ConnError::Nack { code: 7, .. }), "{err}");
    t.join().unwrap();
}

#[test]
fn without_reply_ack_set_does_not_wait() {
    let (mut ep, mut peer) = pair();
    ep.set_u64(FrontendReq::SetFeatures, 1).unwrap();
    let (h, p) = read_msg(&mut peer);
    assert!(!h.need_reply());
    assert_eq!(p, 1u64.to_ne_bytes());
}

#[test]
fn request_with_fd_and_reply_with_fd() {
    let (mut ep, peer) = pair();
    let mut conn = crate::protocol::Connection::new(peer).unwrap();
    let (r, _w) = nix::unistd::pipe().unwrap();
    let state = VringState { index: 1, num: 0 }.to_bytes();
    ep.send_request(
        FrontendReq::SetVringKick,
        0,
        &1u64.to_ne_bytes(),
        &[r.as_fd()],
    )
    .unwrap();
    ep.send_request(FrontendReq::GetVringBase, 0, &state, &[])
        .unwrap();
    let m = conn.recv().unwrap().unwrap();
    assert_eq!(m.check(), Ok(FrontendReq::SetVringKick));
    assert_eq!(m.fds.len(), 1);
    let m = conn.recv().unwrap().unwrap();
    assert_eq!(m.check(), Ok(FrontendReq::GetVringBase));
    let info = InflightInfo::default().to_bytes();
    conn.send_reply(&m.header, &info, &[r.as_fd()]).unwrap();
    let reply = ep.recv_reply_with_fds(FrontendReq::GetVringBase).unwrap();
    assert_eq!(reply.fds.len(), 1);
    assert_eq!(reply.payload, info);
    // The same reply through recv_reply is an error: it carries an fd.
    conn.send_reply(&m.header, &info, &[r.as_fd()]).unwrap();
    assert!(matches!(
        ep.recv_reply(FrontendReq::GetVringBase),
        Err(ConnError::Protocol(ProtocolError::UnexpectedFds { .. }))
    ));
}
