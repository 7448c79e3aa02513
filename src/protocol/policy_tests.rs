//! Tests of [`super`].

use super::*;
use crate::protocol::payload::MemoryRegion;

fn hdr(req: FrontendReq, len: usize) -> Header {
    Header::new(req.code(), Header::VERSION, len as u32)
}

/// A payload and fd count that pass `check` for `req`.
fn valid(req: FrontendReq) -> (Vec<u8>, usize) {
    let p = policy(req);
    let len = match p.size {
        Size::Exact(n) | Size::Min(n) | Size::Range(n, _) => n as usize,
    };
    let nfds = match p.fds {
        Fds::None | Fds::UpTo(_) => 0,
        Fds::One | Fds::OneUnlessNoFdFlag => 1,
    };
    (vec![0; len], nfds)
}

#[test]
fn table_has_one_row_per_request() {
    for &req in FrontendReq::ALL {
        assert_eq!(policy(req).request, req);
    }
}

#[test]
fn every_row_accepts_its_valid_form() {
    for &req in FrontendReq::ALL {
        let (payload, nfds) = valid(req);
        assert_eq!(
            check(&hdr(req, payload.len()), &payload, nfds),
            Ok(req),
            "{req}"
        );
    }
}

#[test]
fn every_row_rejects_wrong_sizes() {
    for &req in FrontendReq::ALL {
        let (_, nfds) = valid(req);
        let bad: Vec<usize> = match policy(req).size {
            Size::Exact(n) => [n.checked_sub(1), Some(n + 1)]
                .into_iter()
                .flatten()
                .map(|n| n as usize)
                .collect(),
            Size::Min(n) => n.checked_sub(1).map(|n| n as usize).into_iter().collect(),
            Size::Range(a, b) => [a.checked_sub(1), Some(b + 1)]
                .into_iter()
                .flatten()
                .map(|n| n as usize)
                .collect(),
        };
        for len in bad {
            if len > MAX_PAYLOAD {
                continue;
            }
            let payload = vec![0; len];
            let err = check(&hdr(req, len), &payload, nfds).unwrap_err();
            assert!(
                matches!(err, ProtocolError::PayloadSize { what, got, .. } if what == req.name() && got == len),
                "{req} len {len}: {err}"
            );
        }
    }
}

#[test]
fn every_row_rejects_bad_fd_counts() {
    for &req in FrontendReq::ALL {
        let (payload, _) = valid(req);
        let h = hdr(req, payload.len());
        match policy(req).fds {
            Fds::None => assert_eq!(
                check(&h, &payload, 1),
                Err(ProtocolError::UnexpectedFds {
                    what: req.name(),
                    got: 1
                })
            ),
            Fds::One | Fds::OneUnlessNoFdFlag => {
                assert_eq!(
                    check(&h, &payload, 0),
                    Err(ProtocolError::MissingFd {
                        what: req.name(),
                        expected: 1,
                        got: 0
                    })
                );
                assert_eq!(
                    check(&h, &payload, 2),
                    Err(ProtocolError::TooManyFds {
                        what: req.name(),
                        got: 2,
                        max: 1
                    })
                );
            }
            Fds::UpTo(n) => assert!(matches!(
                check(&h, &payload, usize::from(n) + 1),
                Err(ProtocolError::TooManyFds { .. })
            )),
        }
        assert!(matches!(
            check(&h, &payload, MAX_FDS + 1),
            Err(ProtocolError::TooManyFds { .. })
        ));
    }
}

#[test]
fn every_row_rejects_bad_headers() {
    for &req in FrontendReq::ALL {
        let (payload, nfds) = valid(req);
        let h = hdr(req, payload.len());
        for flags in [0, 2, 3] {
            let bad = Header { flags, ..h };
            assert!(matches!(
                check(&bad, &payload, nfds),
                Err(ProtocolError::BadVersion { .. })
            ));
        }
        let reply = Header {
            flags: Header::VERSION | Header::REPLY,
            ..h
        };
        assert_eq!(
            check(&reply, &payload, nfds),
            Err(ProtocolError::UnexpectedReplyFlag { what: req.name() })
        );
        let reserved = Header {
            flags: Header::VERSION | 0x100,
            ..h
        };
        assert!(matches!(
            check(&reserved, &payload, nfds),
            Err(ProtocolError::ReservedFlags { .. })
        ));
        let need = Header {
            flags: Header::VERSION | Header::NEED_REPLY,
            ..h
        };
        assert_eq!(check(&need, &payload, nfds), Ok(req));
        let liar = Header {
            size: h.size + 1,
            ..h
        };
        assert!(matches!(
            check(&liar, &payload, nfds),
            Err(ProtocolError::SizeMismatch { .. })
        ));
    }
}

#[test]
fn unknown_codes_and_oversize() {
    for code in [0, 44, 255, u32::MAX] {
        let h = Header::new(code, Header::VERSION, 0);
        assert_eq!(check(&h, &[], 0), Err(ProtocolError::UnknownRequest(code)));
    }
    let big = vec![0; MAX_PAYLOAD + 1];
    let h = hdr(FrontendReq::CreateCryptoSession, big.len());
    assert!(matches!(
        check(&h, &big, 0),
        Err(ProtocolError::PayloadTooLarge { .. })
    ));
    let ok = vec![0; MAX_PAYLOAD];
    let h = hdr(FrontendReq::CreateCryptoSession, ok.len());
    assert!(check(&h, &ok, 0).is_ok());
}

#[test]
fn vring_fd_flag() {
    for req in [
        FrontendReq::SetVringKick,
        FrontendReq::SetVringCall,
        FrontendReq::SetVringErr,
    ] {
        let nofd = (3u64 | VringFile::NO_FD).to_ne_bytes();
        assert_eq!(check(&hdr(req, 8), &nofd, 0), Ok(req));
        assert_eq!(
            check(&hdr(req, 8), &nofd, 1),
            Err(ProtocolError::UnexpectedFds {
                what: req.name(),
                got: 1
            })
        );
        let with_fd = 3u64.to_ne_bytes();
        assert_eq!(check(&hdr(req, 8), &with_fd, 1), Ok(req));
        let reserved = (1u64 << 20).to_ne_bytes();
        assert!(matches!(
            check(&hdr(req, 8), &reserved, 1),
            Err(ProtocolError::InvalidField { what, .. }) if what == req.name()
        ));
    }
}

#[test]
fn mem_table_fds_match_regions() {
    let req = FrontendReq::SetMemTable;
    let table = MemoryTable {
        regions: vec![MemoryRegion::default(); 2],
    }
    .to_bytes();
    let h = hdr(req, table.len());
    assert_eq!(check(&h, &table, 2), Ok(req));
    assert_eq!(
        check(&h, &table, 1),
        Err(ProtocolError::MissingFd {
            what: req.name(),
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        check(&h, &table, 3),
        Err(ProtocolError::TooManyFds {
            what: req.name(),
            got: 3,
            max: 2
        })
    );
    // nregions says 3 but only two regions follow.
    let mut lying = table.clone();
    lying[..4].copy_from_slice(&3u32.to_ne_bytes());
    assert!(
        matches!(check(&h, &lying, 3), Err(ProtocolError::PayloadSize { what, .. }) if what == req.name())
    );
    // nregions 9.
    let mut nine = vec![0u8; 264];
    nine[..4].copy_from_slice(&9u32.to_ne_bytes());
    assert!(matches!(
        check(&hdr(req, 264), &nine, 8),
        Err(ProtocolError::InvalidField {
            field: "nregions",
            ..
        })
    ));
    // QEMU's postcopy acknowledgement: SET_MEM_TABLE with a zero u64.
    assert_eq!(check(&hdr(req, 8), &[0; 8], 0), Ok(req));
}

#[test]
fn config_size_field_must_match() {
    let req = FrontendReq::SetConfig;
    let mut c = Config {
        offset: 0,
        flags: 0,
        payload: vec![1; 6],
    }
    .to_bytes();
    assert_eq!(check(&hdr(req, c.len()), &c, 0), Ok(req));
    c[4..8].copy_from_slice(&5u32.to_ne_bytes());
    assert!(
        matches!(check(&hdr(req, c.len()), &c, 0), Err(ProtocolError::PayloadSize { what, .. }) if what == req.name())
    );
}

#[test]
fn rem_mem_reg_tolerates_one_fd() {
    let req = FrontendReq::RemMemReg;
    let p = vec![0; 40];
    assert_eq!(check(&hdr(req, 40), &p, 0), Ok(req));
    assert_eq!(check(&hdr(req, 40), &p, 1), Ok(req));
}

#[test]
fn reply_rules() {
    let plain = Header::new(0, Header::VERSION, 0);
    let need = Header::new(0, Header::VERSION | Header::NEED_REPLY, 0);
    let get = policy(FrontendReq::GetFeatures);
    assert!(get.reply_expected(&plain, 0) && get.reply_expected(&need, 0));
    let set = policy(FrontendReq::SetFeatures);
    assert!(!set.reply_expected(&plain, u64::MAX));
    assert!(set.reply_expected(&need, 0));
    let log = policy(FrontendReq::SetLogBase);
    assert!(!log.reply_expected(&plain, 0));
    assert!(log.reply_expected(&plain, ProtocolFeature::LogShmfd.mask()));
    for &req in FrontendReq::ALL {
        let name = req.name();
        if name.starts_with("VHOST_USER_GET_") {
            assert_eq!(policy(req).reply, Reply::Always, "{name}");
        }
    }
}

#[test]
fn size_display() {
    assert_eq!(Size::Exact(8).to_string(), "exactly 8 bytes");
    assert_eq!(Size::Min(8).to_string(), "at least 8 bytes");
    assert_eq!(Size::Range(8, 264).to_string(), "8 to 264 bytes");
    assert!(!Size::Min(0).allows(MAX_PAYLOAD + 1));
}
