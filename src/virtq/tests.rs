//! Tests of queue configuration against a real memfd-backed memory table.

use super::*;
use crate::features::VIRTIO_F_RING_PACKED;
use crate::memory::testutil::{memfd, unique_name};
use crate::memory::{GuestRegion, MapOptions, MemoryLimits, RegionDesc};

const UVA: u64 = 0x7f00_0000_0000;

/// One 1 MiB region: GPA 0, frontend VA `UVA`.
fn memory() -> GuestMemory {
    let fd = memfd(&unique_name("virtq"), 1 << 20);
    let desc = RegionDesc {
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: UVA,
        mmap_offset: 0,
    };
    let region = GuestRegion::map(fd, desc, MapOptions::new()).unwrap();
    GuestMemory::new(vec![region], MemoryLimits::default()).unwrap()
}

fn addrs(desc: u64, avail: u64, used: u64) -> VringAddrs {
    VringAddrs {
        flags: 0,
        desc: FrontendVa(UVA + desc),
        avail: FrontendVa(UVA + avail),
        used: FrontendVa(UVA + used),
        log: 0,
    }
}

#[test]
fn sizes_must_be_powers_of_two_up_to_32768() {
    let mut vq = Vring::default();
    for bad in [0, 3, 100, 65536, 32769, u32::MAX] {
        assert_eq!(vq.set_size(bad), Err(VringError::BadSize(bad)));
    }
    for good in [1, 256, 1024, 32768] {
        vq.set_size(good).unwrap();
        assert_eq!(u32::from(vq.size), good);
    }
}

#[test]
fn addresses_must_be_aligned() {
    let mut vq = Vring::default();
    assert!(matches!(
        vq.set_addrs(addrs(8, 0x1000, 0x2000)),
        Err(VringError::Misaligned {
            ring: "descriptor",
            ..
        })
    ));
    assert!(matches!(
        vq.set_addrs(addrs(0, 0x1001, 0x2000)),
        Err(VringError::Misaligned {
            ring: "available",
            ..
        })
    ));
    assert!(matches!(
        vq.set_addrs(addrs(0, 0x1000, 0x2002)),
        Err(VringError::Misaligned { ring: "used", .. })
    ));
    assert!(vq.addrs.is_none());
}

#[test]
fn rings_translate_once_size_addresses_and_memory_are_known() {
    let mut vq = Vring::default();
    vq.set_addrs(addrs(0, 0x4000, 0x5000)).unwrap();
    assert!(vq.rings.is_none(), "no size and no memory yet");
    vq.set_size(256).unwrap();
    assert!(vq.rings.is_none(), "no memory yet");
    vq.set_memory(memory()).unwrap();
    let rings = vq.rings.as_ref().unwrap();
    assert_eq!(rings.desc.slice().len(), 256 * 16);
    assert_eq!(rings.avail.slice().len(), 4 + 2 * 256);
    assert_eq!(rings.used.slice().len(), 4 + 8 * 256);
    vq.set_features(VIRTIO_RING_F_EVENT_IDX).unwrap();
    assert_eq!(
        vq.rings.as_ref().unwrap().used.slice().len(),
        4 + 8 * 256 + 2
    );
}

#[test]
fn rings_outside_memory_are_refused() {
    let mut vq = Vring::default();
    vq.set_memory(memory()).unwrap();
    vq.set_size(1024).unwrap();
    // Used ring runs past the end of the 1 MiB region.
    let err = vq
        .set_addrs(addrs(0, 0x4000, (1 << 20) - 0x100))
        .unwrap_err();
    assert!(
        matches!(err, VringError::Unmapped { ring: "used", .. }),
        "{err}"
    );
    assert!(vq.rings.is_none());
    // Entirely outside.
    let err = vq
        .set_addrs(addrs(0x1000_0000, 0x4000, 0x8000))
        .unwrap_err();
    assert!(matches!(
        err,
        VringError::Unmapped {
            ring: "descriptor",
            ..
        }
    ));
    // A size change that pushes a valid ring past the region is refused too.
    vq.set_addrs(addrs(0, 0x8000, (1 << 20) - 0x2010)).unwrap();
    assert!(vq.rings.is_some());
    assert!(vq.set_size(32768).is_err());
    assert!(vq.rings.is_none());
}

#[test]
fn base_is_a_split_ring_index() {
    let mut vq = Vring::default();
    vq.set_base(65535).unwrap();
    assert_eq!((vq.last_avail_idx, vq.last_used_idx), (65535, 65535));
    assert_eq!(vq.set_base(65536), Err(VringError::BadBase(65536)));
}

#[test]
fn readiness_needs_rings_kick_call_and_enable() {
    let mut vq = Vring::default();
    vq.set_memory(memory()).unwrap();
    vq.set_size(256).unwrap();
    vq.set_addrs(addrs(0, 0x4000, 0x5000)).unwrap();
    assert!(!vq.is_ready());
    vq.kick_set = true;
    vq.call_set = true;
    assert!(!vq.is_ready());
    vq.enabled = true;
    assert!(vq.is_ready());
    vq.reset();
    assert!(!vq.is_ready());
    assert!(!vq.mem.is_empty(), "reset keeps the memory table");
}

/// A vring whose features have `VIRTIO_F_RING_PACKED`.
fn packed_vring() -> Vring {
    let mut vq = Vring::default();
    vq.set_features(VIRTIO_F_RING_PACKED).unwrap();
    vq
}

#[test]
fn packed_sizes_need_not_be_powers_of_two() {
    let mut vq = packed_vring();
    for bad in [0, 32769, 65536, u32::MAX] {
        assert_eq!(vq.set_size(bad), Err(VringError::BadSize(bad)));
    }
    for good in [1, 3, 100, 1000, 32768] {
        vq.set_size(good).unwrap();
        assert_eq!(u32::from(vq.size), good);
    }
    // Back to a split ring: a size of 1000 no longer translates.
    vq.set_size(1000).unwrap();
    vq.set_memory(memory()).unwrap();
    vq.set_addrs(addrs(0, 0x8000, 0x9000)).unwrap();
    assert!(vq.packed.is_some());
    assert_eq!(vq.set_features(0), Err(VringError::BadSize(1000)));
    assert!(vq.rings.is_none() && vq.packed.is_none());
}

#[test]
fn packed_rings_translate_as_one_descriptor_ring_and_two_event_areas() {
    let mut vq = packed_vring();
    vq.set_memory(memory()).unwrap();
    vq.set_size(300).unwrap();
    vq.set_addrs(addrs(0, 0x8000, 0x8004)).unwrap();
    assert!(vq.rings.is_none(), "no split rings on a packed queue");
    let p = vq.packed.as_ref().unwrap();
    assert_eq!(p.desc.slice().len(), 300 * 16);
    assert_eq!(p.driver.slice().len(), 4);
    assert_eq!(p.device.slice().len(), 4);
    vq.kick_set = true;
    vq.call_set = true;
    vq.enabled = true;
    assert!(vq.is_ready());
    // The same addresses as a split ring: the layout follows the features.
    vq.set_size(256).unwrap();
    vq.set_addrs(addrs(0, 0x8000, 0x9000)).unwrap();
    vq.set_features(0).unwrap();
    assert!(vq.rings.is_some() && vq.packed.is_none());
    vq.set_features(VIRTIO_F_RING_PACKED).unwrap();
    assert!(vq.rings.is_none() && vq.packed.is_some());
    // The driver event area must be 4-byte aligned (the split avail ring only 2).
    assert!(matches!(
        vq.set_addrs(addrs(0, 0x8002, 0x9000)),
        Err(VringError::Misaligned {
            ring: "driver event",
            ..
        })
    ));
    assert!(vq.packed.is_none());
    // A descriptor ring that runs past the region.
    assert!(matches!(
        vq.set_addrs(addrs((1 << 20) - 0x800, 0x8000, 0x9000)),
        Err(VringError::Unmapped {
            ring: "descriptor",
            ..
        })
    ));
}

#[test]
fn packed_base_carries_the_wrap_counters() {
    use super::packed::RingPos;
    let mut vq = packed_vring();
    assert_eq!(
        vq.base(),
        0x8000_8000,
        "both positions start at slot 0, wrap 1"
    );
    vq.set_size(256).unwrap();
    // Slot 5 on the lap with the wrap counter clear; the used half is ignored (DPDK's
    // virtio-user sends 0 there): the used position resumes at the available one.
    vq.set_base(5).unwrap();
    assert_eq!(vq.avail_pos, RingPos::new(5, false));
    assert_eq!(vq.used_pos, RingPos::new(5, false));
    assert_eq!(vq.base(), 5 | 5 << 16);
    vq.set_base(0x8000 | 255).unwrap();
    assert_eq!(vq.base(), 0x80ff_80ff);
    // Slot beyond the size.
    assert_eq!(vq.set_base(256), Err(VringError::BadBase(256)));
    assert_eq!(vq.set_base(0x8000 | 300), Err(VringError::BadBase(0x812c)));
    assert_eq!(
        vq.avail_pos,
        RingPos::new(255, true),
        "a refused base changes nothing"
    );
    // A base set before the size is checked when the ring is translated.
    let mut vq = packed_vring();
    vq.set_base(200).unwrap();
    vq.set_size(100).unwrap();
    vq.set_memory(memory()).unwrap();
    assert!(matches!(
        vq.set_addrs(addrs(0, 0x8000, 0x9000)),
        Err(VringError::BadBase(_))
    ));
    assert!(vq.packed.is_none());
    // A split ring's base is unchanged by all this.
    assert_eq!(vq.last_avail_idx, 0);
    vq.broken = true;
    vq.set_base(7).unwrap();
    assert!(!vq.broken, "a new base clears broken on a packed ring too");
}
