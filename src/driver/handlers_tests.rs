//! The handler table's data-plane column and the vring it names.

use super::*;
use crate::protocol::payload::VringAddr;

/// A payload naming vring 3 for a request about one vring, or `[0; 8]` for the others.
fn naming_three(req: FrontendReq) -> Vec<u8> {
    match req {
        FrontendReq::SetVringAddr => VringAddr {
            index: 3,
            ..VringAddr::default()
        }
        .to_bytes(),
        FrontendReq::SetVringKick | FrontendReq::SetVringCall | FrontendReq::SetVringErr => {
            3u64.to_ne_bytes().to_vec()
        }
        _ => VringState { index: 3, num: 0 }.to_bytes(),
    }
}

#[test]
fn queue_requests_name_their_vring() {
    for &req in FrontendReq::ALL {
        let named = vring_named(req, &naming_three(req));
        match row(req).data_plane {
            DataPlane::Queue => assert_eq!(named, Some(3), "{req}"),
            // An in-band kick and SET_VRING_ENDIAN name a queue; neither is handled (refused
            // as unsupported), so neither quiesces it.
            _ if matches!(req, FrontendReq::VringKick | FrontendReq::SetVringEndian) => {
                assert_eq!(named, Some(3), "{req}")
            }
            _ => assert_eq!(named, None, "{req}"),
        }
    }
    // A payload that does not parse names nothing (the handler refuses it).
    assert_eq!(vring_named(FrontendReq::SetVringAddr, &[0; 3]), None);
}

/// Every request that stops the device or changes memory, features or a vring quiesces what it
/// changes; requests that only read, or are refused, quiesce nothing.
#[test]
fn the_data_plane_column_covers_what_changes_rings_or_memory() {
    use FrontendReq as R;
    for &req in FrontendReq::ALL {
        let r = row(req);
        let expect = match req {
            R::SetFeatures
            | R::ResetOwner
            | R::ResetDevice
            | R::SetMemTable
            | R::SetLogBase
            | R::AddMemReg
            | R::RemMemReg
            | R::SetInflightFd
            | R::SetStatus => DataPlane::AllQueues,
            R::SetVringNum
            | R::SetVringAddr
            | R::SetVringBase
            | R::GetVringBase
            | R::SetVringKick
            | R::SetVringCall
            | R::SetVringErr
            | R::SetVringEnable => DataPlane::Queue,
            _ => DataPlane::None,
        };
        assert_eq!(r.data_plane, expect, "{req}");
        if r.stops_device {
            assert_ne!(r.data_plane, DataPlane::None, "{req} stops the device");
        }
    }
}

/// The GET/SET_VRING_BASE log lines' form, which `scripts/qemu-migrate.sh` parses: the number
/// in hex, and a packed ring's two positions as slot/wrap counter (bit 15: the available wrap,
/// bit 31: the used wrap).
#[test]
fn vring_bases_are_described_as_the_migration_script_reads_them() {
    assert_eq!(
        describe_base(0x8005_8005, true),
        "0x80058005 (packed: avail 5/1 used 5/1)"
    );
    assert_eq!(
        describe_base(0x0011_8022, true),
        "0x00118022 (packed: avail 34/1 used 17/0)"
    );
    assert_eq!(describe_base(1203, false), "0x000004b3 (split: avail 1203)");
}
