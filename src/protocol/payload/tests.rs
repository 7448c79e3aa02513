//! Tests of [`super`].

use super::*;

fn round_trip<T: Payload + PartialEq + std::fmt::Debug>(v: T) {
    let bytes = v.to_bytes();
    assert!(
        T::SIZE.allows(bytes.len()),
        "{} encodes {} bytes",
        T::NAME,
        bytes.len()
    );
    assert_eq!(T::parse(&bytes).unwrap(), v);
    // One byte short and one byte long are size errors.
    if let Some(short) = bytes.len().checked_sub(1) {
        assert!(matches!(
            T::parse(&bytes[..short]),
            Err(ProtocolError::PayloadSize { .. })
        ));
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        T::parse(&long),
        Err(ProtocolError::PayloadSize { .. })
    ));
}

fn region(i: u64) -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: i << 30,
        memory_size: 1 << 30,
        userspace_addr: 0x7f00_0000_0000 + (i << 30),
        mmap_offset: i * 4096,
    }
}

#[test]
fn every_payload_round_trips() {
    round_trip(0x1234_5678_9abc_def0u64);
    round_trip(VringState { index: 3, num: 256 });
    round_trip(VringAddr {
        index: 1,
        flags: VringAddr::F_LOG,
        desc_user_addr: 1,
        used_user_addr: 2,
        avail_user_addr: 3,
        log_guest_addr: 4,
    });
    round_trip(VringFile {
        index: 7,
        no_fd: true,
    });
    round_trip(VringFile {
        index: 255,
        no_fd: false,
    });
    round_trip(region(1));
    for n in 0..=8 {
        round_trip(MemoryTable {
            regions: (0..n).map(region).collect(),
        });
    }
    round_trip(SingleMemRegion { region: region(2) });
    round_trip(LogInfo {
        mmap_size: 1 << 20,
        mmap_offset: 0,
    });
    round_trip(IotlbMsg {
        iova: 0x1000,
        size: 0x2000,
        uaddr: 0x3000,
        perm: IotlbAccess::ReadWrite,
        kind: IotlbType::Update,
    });
    round_trip(Config {
        offset: 0,
        flags: Config::MIGRATION,
        payload: vec![1, 2, 3, 4, 5, 6],
    });
    round_trip(Config {
        offset: 4,
        flags: 0,
        payload: vec![0xaa; 256],
    });
    round_trip(VringArea {
        file: VringFile {
            index: 2,
            no_fd: false,
        },
        size: 4096,
        offset: 8192,
    });
    round_trip(InflightInfo {
        mmap_size: 4096,
        mmap_offset: 64,
        num_queues: 2,
        queue_size: 256,
    });
    round_trip(DeviceStatus(
        DeviceStatus::DRIVER_OK | DeviceStatus::FEATURES_OK,
    ));
    round_trip(RarpMac([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    round_trip(SharedObject { uuid: [9; 16] });
    round_trip(DeviceStateTransfer {
        direction: DeviceStateTransfer::LOAD,
        phase: 0,
    });
}

#[test]
fn wire_sizes_match_the_c_structs() {
    assert_eq!(VringAddr::default().to_bytes().len(), 40);
    assert_eq!(IotlbMsg::default().to_bytes().len(), 32);
    assert_eq!(InflightInfo::default().to_bytes().len(), 24);
    assert_eq!(SingleMemRegion::default().to_bytes().len(), 40);
    assert_eq!(MemoryTable::default().to_bytes().len(), 8);
    assert_eq!(
        MemoryTable {
            regions: vec![region(0); 8]
        }
        .to_bytes()
        .len(),
        264
    );
}

#[test]
fn field_layout_is_native_endian_in_spec_order() {
    let a = VringAddr {
        index: 1,
        flags: 2,
        desc_user_addr: 3,
        used_user_addr: 4,
        avail_user_addr: 5,
        log_guest_addr: 6,
    }
    .to_bytes();
    assert_eq!(&a[0..4], &1u32.to_ne_bytes());
    assert_eq!(&a[8..16], &3u64.to_ne_bytes());
    assert_eq!(&a[16..24], &4u64.to_ne_bytes());
    assert_eq!(&a[24..32], &5u64.to_ne_bytes());
    let mut t = 1u32.to_ne_bytes().to_vec();
    t.extend_from_slice(&[0xff; 4]); // padding is ignored
    t.extend_from_slice(&region(5).to_bytes());
    assert_eq!(MemoryTable::parse(&t).unwrap().regions, vec![region(5)]);
}

#[test]
fn memory_table_rejects_bad_counts() {
    let mut t = 9u32.to_ne_bytes().to_vec();
    t.resize(8 + 8 * 32, 0);
    assert!(matches!(
        MemoryTable::parse(&t),
        Err(ProtocolError::InvalidField {
            field: "nregions",
            ..
        })
    ));
    // nregions = 2 but room for 3.
    let mut t = MemoryTable {
        regions: vec![region(0); 3],
    }
    .to_bytes();
    t[..4].copy_from_slice(&2u32.to_ne_bytes());
    assert_eq!(
        MemoryTable::parse(&t),
        Err(ProtocolError::PayloadSize {
            what: "memory table",
            got: 104,
            expected: Size::Exact(72)
        })
    );
    assert!(MemoryTable::parse(&[1, 0, 0]).is_err());
}

#[test]
fn config_rejects_inconsistent_size() {
    let mut c = Config {
        offset: 0,
        flags: 0,
        payload: vec![0; 8],
    }
    .to_bytes();
    c[4..8].copy_from_slice(&9u32.to_ne_bytes());
    assert!(matches!(
        Config::parse(&c),
        Err(ProtocolError::PayloadSize { .. })
    ));
    let mut c = vec![0u8; 12];
    c[4..8].copy_from_slice(&300u32.to_ne_bytes());
    assert!(matches!(
        Config::parse(&c),
        Err(ProtocolError::InvalidField { field: "size", .. })
    ));
    assert!(Config::parse(&vec![0u8; 12 + 257]).is_err());
}

#[test]
fn value_checks() {
    assert!(VringFile::parse(&(1u64 << 9).to_ne_bytes()).is_err());
    assert!(DeviceStatus::parse(&256u64.to_ne_bytes()).is_err());
    let mut i = IotlbMsg::default().to_bytes();
    i[24] = 4;
    assert!(IotlbMsg::parse(&i).is_err());
    i[24] = 0;
    i[25] = 0;
    assert!(IotlbMsg::parse(&i).is_err());
    let mut d = DeviceStateTransfer::default().to_bytes();
    d[0] = 2;
    assert!(DeviceStateTransfer::parse(&d).is_err());
}

#[test]
fn packed_vring_base() {
    let b = PackedVringBase {
        avail_idx: 0x7fff,
        avail_wrap: true,
        used_idx: 5,
        used_wrap: false,
    };
    assert_eq!(PackedVringBase::from_num(b.to_num()), b);
    assert_eq!(b.to_num(), 0x0005_ffff);
}
