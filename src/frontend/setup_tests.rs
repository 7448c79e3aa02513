//! Tests of [`super`]: the exact message sequence, against a scripted back-end on a
//! socketpair.

use std::os::unix::net::UnixStream;
use std::thread;

use crate::features::{VIRTIO_F_VERSION_1, protocol as pf};
use crate::frontend::{Frontend, FrontendOptions};
use crate::protocol::payload::{MemoryTable, Payload, VringState};
use crate::protocol::{Endpoint, FrontendReq, VHOST_USER_F_PROTOCOL_FEATURES_MASK};

fn opts() -> FrontendOptions {
    FrontendOptions {
        mem_size: 4 << 20,
        force_small_pages: true,
        ..FrontendOptions::default()
    }
}

/// One request seen by the scripted back-end: code, NEED_REPLY, fd count.
type Seen = (FrontendReq, bool, usize);

/// A scripted back-end on a socketpair: answers GET_* with fixed values and acks NEED_REPLY.
fn scripted(features: u64, protocol: u64) -> (UnixStream, thread::JoinHandle<Vec<Seen>>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        let mut ep = Endpoint::new(b).unwrap();
        let mut seen = Vec::new();
        loop {
            let msg = match ep.recv_message() {
                Ok(m) => m,
                Err(e) if e.is_closed() => return seen,
                Err(e) => panic!("scripted back-end: {e}"),
            };
            let h = msg.header;
            let req = h.frontend_request().unwrap();
            seen.push((req, h.need_reply(), msg.fds.len()));
            let reply = match req {
                FrontendReq::GetFeatures => Some(features.to_bytes()),
                FrontendReq::GetProtocolFeatures => Some(protocol.to_bytes()),
                FrontendReq::GetQueueNum => Some(1u64.to_bytes()),
                FrontendReq::GetMaxMemSlots => Some(8u64.to_bytes()),
                FrontendReq::GetVringBase => Some(
                    VringState {
                        index: VringState::parse(&msg.payload).unwrap().index,
                        num: 5,
                    }
                    .to_bytes(),
                ),
                FrontendReq::SetMemTable => {
                    let t = MemoryTable::parse(&msg.payload).unwrap();
                    assert_eq!(t.regions.len(), msg.fds.len());
                    None
                }
                _ => None,
            };
            let reply = reply.or_else(|| h.need_reply().then(|| 0u64.to_bytes()));
            if let Some(p) = reply {
                ep.send_message(h.reply(p.len() as u32), &p, &[]).unwrap();
            }
        }
    });
    (a, t)
}

#[test]
fn setup_sequence_follows_qemu() {
    use FrontendReq as R;
    let features = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES_MASK;
    let protocol = pf::REPLY_ACK | pf::STATUS | pf::MQ;
    let (sock, t) = scripted(features, protocol);
    let mut fe = Frontend::from_stream(sock, opts()).unwrap();
    let neg = fe.start().unwrap();
    assert_eq!(neg.features, features);
    assert_eq!(neg.protocol_features, protocol);
    assert_eq!(fe.stop().unwrap(), [5, 5]);
    assert!(fe.reconnect().is_err(), "a stream cannot reconnect");
    drop(fe);
    let seen = t.join().unwrap();
    let mut want: Vec<Seen> = vec![
        (R::SetOwner, false, 0),
        (R::GetFeatures, false, 0),
        (R::GetProtocolFeatures, false, 0),
        (R::SetProtocolFeatures, false, 0),
        (R::GetQueueNum, false, 0),
        (R::SetFeatures, true, 0),
        (R::SetMemTable, true, 1),
    ];
    for _ in 0..2 {
        want.extend([
            (R::SetVringNum, true, 0),
            (R::SetVringBase, true, 0),
            (R::SetVringAddr, true, 0),
            (R::SetVringKick, true, 1),
            (R::SetVringCall, true, 1),
        ]);
    }
    want.extend([
        (R::SetVringEnable, true, 0),
        (R::SetVringEnable, true, 0),
        (R::SetStatus, true, 0),
        (R::SetVringEnable, true, 0),
        (R::SetVringEnable, true, 0),
        (R::GetVringBase, false, 0),
        (R::GetVringBase, false, 0),
    ]);
    assert_eq!(seen, want);
}

#[test]
fn setup_sequence_without_protocol_features() {
    use FrontendReq as R;
    let (sock, t) = scripted(VIRTIO_F_VERSION_1, 0);
    let o = FrontendOptions {
        regions: 3,
        eventfds: false,
        ..opts()
    };
    let mut fe = Frontend::from_stream(sock, o).unwrap();
    let neg = fe.start().unwrap();
    assert_eq!(neg.features, VIRTIO_F_VERSION_1);
    drop(fe);
    let seen = t.join().unwrap();
    let mut want: Vec<Seen> = vec![
        (R::SetOwner, false, 0),
        (R::GetFeatures, false, 0),
        (R::SetFeatures, false, 0),
        (R::SetMemTable, false, 3),
    ];
    for _ in 0..2 {
        want.extend([
            (R::SetVringNum, false, 0),
            (R::SetVringBase, false, 0),
            (R::SetVringAddr, false, 0),
            (R::SetVringKick, false, 0),
            (R::SetVringCall, false, 0),
        ]);
    }
    want.push((R::GetFeatures, false, 0)); // the barrier
    assert_eq!(seen, want);
}
