//! Tests of [`GuestMemory`] translation and table updates, with real memfds.

use super::*;
use crate::memory::testutil::*;
use crate::memory::{MapOptions, RegionDesc};
use proptest::prelude::*;
use std::os::fd::{AsFd, OwnedFd};

fn map(fd: &OwnedFd, gpa: u64, size: u64, uva: u64, off: u64) -> GuestRegion {
    let desc = RegionDesc {
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: uva,
        mmap_offset: off,
    };
    GuestRegion::map(fd.try_clone().unwrap(), desc, MapOptions::new()).unwrap()
}

fn limits() -> MemoryLimits {
    MemoryLimits {
        max_regions: 509,
        max_total_bytes: 1 << 40,
    }
}

/// Three regions, QEMU-like: [0, 0xa000) and [0xc000, 0x10000) from one file, and a
/// high region [0x1_0000_0000, +0x4000) from the same file further in. Frontend VAs mirror
/// the file offsets.
fn three(fd: &OwnedFd) -> GuestMemory {
    const UVA: u64 = 0x7f00_0000_0000;
    GuestMemory::new(
        vec![
            map(fd, 0x1_0000_0000, 0x4000, UVA + 0x10000, 0x10000),
            map(fd, 0, 0xa000, UVA, 0),
            map(fd, 0xc000, 0x4000, UVA + 0xc000, 0xc000),
        ],
        limits(),
    )
    .unwrap()
}

fn host_of(mem: &GuestMemory, region: usize, off: usize) -> usize {
    mem.regions().nth(region).unwrap().host_ptr() as usize + off
}

#[test]
fn translation_inside_outside_edges() {
    let fd = memfd(&unique_name("xlate"), 0x20000);
    let mem = three(&fd);
    assert_eq!(mem.len(), 3);
    assert_eq!(mem.total_bytes(), 0x12000);
    // Sorted by gpa.
    let gpas: Vec<u64> = mem.regions().map(|r| r.guest_phys_addr().0).collect();
    assert_eq!(gpas, [0, 0xc000, 0x1_0000_0000]);

    let s = mem.gpa_to_host(Gpa(0x100), 0x10).unwrap();
    assert_eq!(
        (s.as_ptr() as usize, s.len()),
        (host_of(&mem, 0, 0x100), 0x10)
    );
    // First and last byte of a region.
    assert!(mem.gpa_to_host(Gpa(0), 1).is_some());
    assert!(mem.gpa_to_host(Gpa(0x9fff), 1).is_some());
    assert!(mem.gpa_to_host(Gpa(0), 0xa000).is_some());
    assert!(mem.gpa_to_host(Gpa(0), 0xa001).is_none());
    // One past the end, the hole, past the last region.
    assert!(mem.gpa_to_host(Gpa(0xa000), 1).is_none());
    assert!(mem.gpa_to_host(Gpa(0xb000), 0).is_none());
    assert!(mem.gpa_to_host(Gpa(0x10000), 1).is_none());
    assert!(mem.gpa_to_host(Gpa(0x1_0000_4000), 1).is_none());
    assert!(mem.gpa_to_host(Gpa(u64::MAX), 1).is_none());
    // Zero length at a mapped address.
    assert_eq!(mem.gpa_to_host(Gpa(0x1_0000_3fff), 0).unwrap().len(), 0);
    // Straddling the end into the hole: whole refuses, prefix clamps.
    assert!(mem.gpa_to_host(Gpa(0x9ff0), 0x20).is_none());
    let p = mem.gpa_to_host_prefix(Gpa(0x9ff0), 0x20).unwrap();
    assert_eq!(
        (p.as_ptr() as usize, p.len()),
        (host_of(&mem, 0, 0x9ff0), 0x10)
    );
    assert!(mem.gpa_to_host_prefix(Gpa(0xa000), 0x20).is_none());
    assert_eq!(
        mem.gpa_to_host_prefix(Gpa(0xc000), 0x20).unwrap().len(),
        0x20
    );
    // Huge lengths: whole refuses, prefix clamps to the region.
    assert!(mem.gpa_to_host(Gpa(0xc000), u64::MAX).is_none());
    assert_eq!(
        mem.gpa_to_host_prefix(Gpa(0xc000), u64::MAX).unwrap().len(),
        0x4000
    );
    assert_eq!(
        mem.region_of_gpa(Gpa(0xdfff)).unwrap().guest_phys_addr(),
        Gpa(0xc000)
    );
}

#[test]
fn translation_reads_the_right_file_bytes() {
    let name = unique_name("bytes");
    let fd = memfd(&name, 0x20000);
    let front = FrontendMap::new(&fd, 0x20000);
    let mem = three(&fd);
    front.write(0xc123, b"xyz");
    front.write(0x10000, b"high");
    let mut b = [0u8; 3];
    mem.gpa_to_host(Gpa(0xc123), 3)
        .unwrap()
        .read_at(0, &mut b)
        .unwrap();
    assert_eq!(&b, b"xyz");
    let mut h = [0u8; 4];
    mem.gpa_to_host(Gpa(0x1_0000_0000), 4)
        .unwrap()
        .copy_to(&mut h);
    assert_eq!(&h, b"high");
    let via_fva = mem.fva_to_host(FrontendVa(0x7f00_0000_c123), 3).unwrap();
    via_fva.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"xyz");
}

#[test]
fn top_of_address_space_and_overflow() {
    let fd = memfd(&unique_name("top"), 0x2000);
    // The region [u64::MAX - 0x1000, u64::MAX): its end is exactly u64::MAX.
    let top = u64::MAX - 0x1000;
    let mem = GuestMemory::new(
        vec![map(&fd, top, 0x1000, u64::MAX - 0x1000, 0x1000)],
        limits(),
    )
    .unwrap();
    assert!(mem.gpa_to_host(Gpa(u64::MAX - 1), 1).is_some());
    // gpa + len overflows u64.
    assert!(mem.gpa_to_host(Gpa(u64::MAX - 1), 4).is_none());
    assert!(mem.gpa_to_host(Gpa(u64::MAX - 1), u64::MAX).is_none());
    let mut c = TranslationCache::new();
    assert!(
        mem.gpa_to_host_cached(&mut c, Gpa(u64::MAX - 1), 4)
            .is_none()
    );
    assert_eq!(
        mem.gpa_to_host_prefix(Gpa(u64::MAX - 1), 4).unwrap().len(),
        1
    );
    assert!(
        mem.gpa_to_host(Gpa(u64::MAX), 1).is_none(),
        "u64::MAX is past the end"
    );
    assert!(mem.fva_to_host(FrontendVa(u64::MAX - 2), 4).is_none());
    assert_eq!(
        mem.fva_to_host_prefix(FrontendVa(u64::MAX - 2), 4)
            .unwrap()
            .len(),
        2
    );
    let chunks: Vec<_> = mem.gpa_chunks(Gpa(u64::MAX - 2), 4).collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].unwrap().len(), 2);
    assert_eq!(chunks[1].unwrap_err(), Gpa(u64::MAX));
    // Also for an empty table.
    let empty = GuestMemory::empty(limits());
    assert!(empty.gpa_to_host(Gpa(u64::MAX - 1), 4).is_none());
    assert!(empty.gpa_to_host_cached(&mut c, Gpa(0), 1).is_none());
}

#[test]
fn chunks_split_a_buffer_across_adjacent_regions() {
    let fd = memfd(&unique_name("chunks"), 0x10000);
    // gpa-adjacent, but far apart in the file and in host memory.
    let mem = GuestMemory::new(
        vec![
            map(&fd, 0x1000, 0x1000, 0x10_0000, 0x8000),
            map(&fd, 0x2000, 0x1000, 0x20_0000, 0x1000),
        ],
        limits(),
    )
    .unwrap();
    assert!(mem.gpa_to_host(Gpa(0x1f00), 0x200).is_none());
    let pieces: Vec<_> = mem
        .gpa_chunks(Gpa(0x1f00), 0x200)
        .map(Result::unwrap)
        .collect();
    assert_eq!(pieces.len(), 2);
    assert_eq!(pieces[0].len(), 0x100);
    assert_eq!(pieces[1].len(), 0x100);
    assert_eq!(pieces[0].as_ptr() as usize, host_of(&mem, 0, 0xf00));
    assert_eq!(pieces[1].as_ptr() as usize, host_of(&mem, 1, 0));
    // Write a buffer through the pieces and read it back through the file.
    let data: Vec<u8> = (0..=255u8).cycle().take(0x200).collect();
    let mut done = 0;
    for p in &pieces {
        done += p.copy_from(&data[done..]);
    }
    assert_eq!(done, 0x200);
    let mut a = vec![0u8; 0x100];
    nix::sys::uio::pread(&fd, &mut a, 0x8f00).unwrap();
    assert_eq!(a, data[..0x100]);
    nix::sys::uio::pread(&fd, &mut a, 0x1000).unwrap();
    assert_eq!(a, data[0x100..]);
    // Running off the end reports the first unmapped address.
    let mut it = mem.gpa_chunks(Gpa(0x2f00), 0x200);
    assert_eq!(it.next().unwrap().unwrap().len(), 0x100);
    assert_eq!(it.remaining(), 0x100);
    assert_eq!(it.next().unwrap().unwrap_err(), Gpa(0x3000));
    assert!(it.next().is_none());
    assert_eq!(mem.gpa_chunks(Gpa(0), 0).count(), 0);
}

#[test]
fn frontend_va_translation_and_fva_to_gpa() {
    let fd = memfd(&unique_name("fva"), 0x20000);
    let mem = three(&fd);
    let uva = 0x7f00_0000_0000u64;
    let s = mem.fva_to_host(FrontendVa(uva + 0xc010), 0x10).unwrap();
    assert_eq!(s.as_ptr() as usize, host_of(&mem, 1, 0x10));
    assert!(mem.fva_to_host(FrontendVa(uva + 0xa000), 1).is_none());
    assert!(mem.fva_to_host(FrontendVa(uva + 0x9fff), 2).is_none());
    assert_eq!(
        mem.fva_to_host_prefix(FrontendVa(uva + 0x9fff), 2)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        mem.fva_to_gpa(FrontendVa(uva + 0x10004)),
        Some(Gpa(0x1_0000_0004))
    );
    assert_eq!(mem.fva_to_gpa(FrontendVa(uva - 1)), None);
    // GPAs are not frontend VAs.
    assert!(mem.fva_to_host(FrontendVa(0x100), 1).is_none());
}

#[test]
fn many_regions_use_binary_search() {
    let n = 40u64;
    let fd = memfd(&unique_name("many"), n * 0x1000);
    // Frontend VAs in reverse order of gpa, so the uva index differs from the gpa order.
    let regions: Vec<_> = (0..n)
        .map(|i| {
            map(
                &fd,
                i * 0x3000 + 0x500,
                0x1000,
                (n - i) * 0x10_0000,
                i * 0x1000,
            )
        })
        .collect();
    let mem = GuestMemory::new(regions, limits()).unwrap();
    let mut c = TranslationCache::new();
    for i in 0..n as usize {
        let gpa = i as u64 * 0x3000 + 0x500;
        for (addr, len, want) in [
            (gpa, 0x1000, true),
            (gpa + 0xfff, 1, true),
            (gpa - 1, 1, false),
            (gpa + 0x1000, 1, false),
        ] {
            let got = mem.gpa_to_host(Gpa(addr), len);
            assert_eq!(got.is_some(), want, "gpa {addr:#x}");
            let cached = mem.gpa_to_host_cached(&mut c, Gpa(addr), len);
            assert_eq!(got.map(|s| s.as_ptr()), cached.map(|s| s.as_ptr()));
        }
        let uva = (n - i as u64) * 0x10_0000;
        assert_eq!(
            mem.fva_to_host(FrontendVa(uva + 5), 1).unwrap().as_ptr() as usize,
            host_of(&mem, i, 5)
        );
        assert!(mem.fva_to_host(FrontendVa(uva + 0x1000), 1).is_none());
    }
}

#[test]
fn overlaps_are_refused() {
    let name = unique_name("overlap");
    let fd = memfd(&name, 0x10000);
    let e = GuestMemory::new(
        vec![
            map(&fd, 0x1000, 0x2000, 0x10000, 0),
            map(&fd, 0x2fff, 0x1000, 0x20000, 0x4000),
        ],
        limits(),
    )
    .unwrap_err();
    match e {
        MemoryError::GpaOverlap { a, b } => {
            assert_eq!((a.guest_phys_addr, b.guest_phys_addr), (0x1000, 0x2fff));
        }
        other => panic!("{other}"),
    }
    let e = GuestMemory::new(
        vec![
            map(&fd, 0x1000, 0x2000, 0x10000, 0),
            map(&fd, 0x3000, 0x1000, 0x11fff, 0x4000),
        ],
        limits(),
    )
    .unwrap_err();
    assert!(matches!(e, MemoryError::FvaOverlap { .. }), "{e}");
    // Touching ranges are fine.
    let mem = GuestMemory::new(
        vec![
            map(&fd, 0x1000, 0x2000, 0x10000, 0),
            map(&fd, 0x3000, 0x1000, 0x12000, 0x4000),
        ],
        limits(),
    )
    .unwrap();
    // A region fully containing another.
    let e = mem.with_added(map(&fd, 0, 0x8000, 0x30000, 0)).unwrap_err();
    assert!(matches!(e, MemoryError::GpaOverlap { .. }), "{e}");
    let e = mem
        .check_add(&RegionDesc {
            guest_phys_addr: 0,
            memory_size: 0x8000,
            userspace_addr: 0x30000,
            mmap_offset: 0,
        })
        .unwrap_err();
    assert!(matches!(e, MemoryError::GpaOverlap { .. }), "{e}");
    let e = mem
        .check_add(&RegionDesc {
            guest_phys_addr: 0x8000,
            memory_size: 0x1000,
            userspace_addr: 0x12fff,
            mmap_offset: 0,
        })
        .unwrap_err();
    assert!(matches!(e, MemoryError::FvaOverlap { .. }), "{e}");
    mem.check_add(&RegionDesc {
        guest_phys_addr: 0x4000,
        memory_size: 0x1000,
        userspace_addr: 0x13000,
        mmap_offset: 0,
    })
    .unwrap();
    drop(mem);
    assert_eq!(
        mapped_bytes_named(&name),
        0,
        "refused tables unmapped their regions"
    );
}

#[test]
fn limits_on_count_and_total() {
    let fd = memfd(&unique_name("limits"), 0x10000);
    let small = MemoryLimits {
        max_regions: 2,
        max_total_bytes: 0x3000,
    };
    let three: Vec<_> = (0..3)
        .map(|i| map(&fd, i * 0x1000, 0x800, i * 0x1000, 0))
        .collect();
    assert!(matches!(
        GuestMemory::new(three, small),
        Err(MemoryError::TooManyRegions { count: 3, max: 2 })
    ));
    let mem = GuestMemory::new(
        vec![
            map(&fd, 0, 0x1000, 0, 0),
            map(&fd, 0x1000, 0x1000, 0x1000, 0),
        ],
        small,
    )
    .unwrap();
    assert!(matches!(
        mem.with_added(map(&fd, 0x2000, 0x800, 0x2000, 0)),
        Err(MemoryError::TooManyRegions { count: 3, max: 2 })
    ));
    let e = GuestMemory::new(
        vec![
            map(&fd, 0, 0x2000, 0, 0),
            map(&fd, 0x2000, 0x1001, 0x2000, 0),
        ],
        small,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            MemoryError::TotalTooLarge {
                total: 0x3001,
                limit: 0x3000
            }
        ),
        "{e}"
    );
    let one = GuestMemory::new(vec![map(&fd, 0, 0x2000, 0, 0)], small).unwrap();
    assert!(matches!(
        one.check_add(&RegionDesc {
            guest_phys_addr: 0x2000,
            memory_size: 0x1001,
            userspace_addr: 0x2000,
            mmap_offset: 0
        }),
        Err(MemoryError::TotalTooLarge { .. })
    ));
    assert!(matches!(
        one.check_add(&RegionDesc::default()),
        Err(MemoryError::ZeroSize)
    ));
    // The default limits follow the protocol's slot count.
    assert_eq!(MemoryLimits::default().max_regions, 509);
    assert!(MemoryLimits::default().max_total_bytes <= 1 << 40);
}

#[test]
fn add_and_remove_produce_new_tables() {
    let name = unique_name("addrem");
    let fd = memfd(&name, 0x10000);
    let m0 = GuestMemory::new(vec![map(&fd, 0, 0x1000, 0x10000, 0)], limits()).unwrap();
    let m1 = m0
        .with_added(map(&fd, 0x4000, 0x1000, 0x14000, 0x4000))
        .unwrap();
    let m2 = m1
        .with_added(map(&fd, 0x2000, 0x1000, 0x12000, 0x2000))
        .unwrap();
    assert_eq!((m0.len(), m1.len(), m2.len()), (1, 2, 3));
    // Old tables are unchanged and unchanged regions are shared, not remapped.
    assert!(m0.gpa_to_host(Gpa(0x4000), 1).is_none());
    assert!(m2.gpa_to_host(Gpa(0x2000), 1).is_some());
    assert!(Arc::ptr_eq(
        m0.regions().next().unwrap(),
        m2.regions().next().unwrap()
    ));
    assert!(Arc::ptr_eq(
        m1.regions().nth(1).unwrap(),
        m2.regions().nth(2).unwrap()
    ));
    assert_eq!(mapped_bytes_named(&name), 0x3000);

    // REM_MEM_REG identifies by gpa, uva, size; the mmap offset is ignored.
    let rem = RegionDesc {
        guest_phys_addr: 0x4000,
        memory_size: 0x1000,
        userspace_addr: 0x14000,
        mmap_offset: 0xdead_beef,
    };
    let (m3, removed) = m2.with_removed(&rem).unwrap();
    assert_eq!(removed.guest_phys_addr(), Gpa(0x4000));
    assert_eq!(m3.len(), 2);
    assert!(m3.gpa_to_host(Gpa(0x4000), 1).is_none());
    assert!(
        m2.gpa_to_host(Gpa(0x4000), 1).is_some(),
        "the old table still works"
    );
    assert!(m3.find_region(&rem).is_none());
    assert!(m2.find_region(&rem).is_some());
    let wrong_size = RegionDesc {
        memory_size: 0x800,
        ..rem
    };
    assert!(matches!(
        m3.with_removed(&wrong_size),
        Err(MemoryError::NotFound(_))
    ));
    assert!(matches!(
        m2.with_removed(&wrong_size),
        Err(MemoryError::NotFound(_))
    ));

    // The removed region is unmapped only once every holder is gone.
    drop((m1, m2, removed));
    assert_eq!(mapped_bytes_named(&name), 0x2000);
    drop((m0, m3));
    assert_eq!(mapped_bytes_named(&name), 0);
    drop(fd);
    assert_eq!(fds_named(&name), 0);
}

#[test]
fn no_fd_or_mapping_leaks() {
    // Counting /proc/self/fd entries globally is racy with tests running in parallel, so each
    // check counts the fds and mappings of this test's uniquely named memfd.
    let name = unique_name("leak");
    let fd = memfd(&name, 0x20000);
    {
        let mem = three(&fd);
        assert_eq!(fds_named(&name), 4, "three regions + the test's own fd");
        let bigger = mem
            .with_added(map(&fd, 0x2_0000_0000, 0x1000, 0x1000, 0))
            .unwrap();
        let (smaller, _) = bigger
            .with_removed(mem.regions().next().unwrap().desc())
            .unwrap();
        assert_eq!(fds_named(&name), 5);
        let _clone = smaller.clone();
        // Refused: overlapping.
        assert!(
            smaller
                .with_added(map(&fd, 0x2_0000_0000, 0x1000, 0x5000, 0))
                .is_err()
        );
        assert_eq!(fds_named(&name), 5);
        // Refused: beyond the file.
        let bad = RegionDesc {
            guest_phys_addr: 0x3_0000_0000,
            memory_size: 0x1000,
            userspace_addr: 0x9000,
            mmap_offset: 0x20000,
        };
        assert!(GuestRegion::map(fd.try_clone().unwrap(), bad, MapOptions::new()).is_err());
        assert_eq!(fds_named(&name), 5);
        assert_eq!(mapped_bytes_named(&name), 0x13000);
    }
    assert_eq!(fds_named(&name), 1);
    assert_eq!(mapped_bytes_named(&name), 0);
    drop(fd);
    assert_eq!(fds_named(&name), 0);
}

#[test]
fn guest_memory_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GuestMemory>();
    assert_send_sync::<GuestRegion>();
    assert_send_sync::<GuestSlice<'static>>();
    assert_send_sync::<MemoryError>();
    let fd = memfd(&unique_name("threads"), 0x20000);
    let mem = three(&fd);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let mem = mem.clone();
            s.spawn(move || {
                let mut c = TranslationCache::new();
                for i in 0..1000u64 {
                    let gpa = Gpa((i * 8 + t * 0x800) % 0xa000);
                    mem.gpa_to_host_cached(&mut c, gpa, 8)
                        .unwrap()
                        .write_obj(0, i)
                        .unwrap();
                }
            });
        }
    });
}

/// Reference model: the region containing `addr` by a naive scan.
fn model(descs: &[RegionDesc], addr: u64, uva: bool) -> Option<(usize, u64, u64)> {
    descs.iter().enumerate().find_map(|(i, d)| {
        let start = if uva {
            d.userspace_addr
        } else {
            d.guest_phys_addr
        };
        (addr >= start && addr - start < d.memory_size)
            .then(|| (i, addr - start, d.memory_size - (addr - start)))
    })
}

fn layout() -> impl Strategy<Value = (u64, Vec<(u64, u64)>, Vec<u64>)> {
    (
        0u64..(1 << 40),
        prop::collection::vec((0u64..0x2000, 1u64..0x3000), 1..24),
        any::<u64>(),
    )
        .prop_map(|(base, gaps_sizes, seed)| {
            // A shuffled order of frontend-VA slots, so uva order differs from gpa order.
            let mut slots: Vec<u64> = (0..gaps_sizes.len() as u64).collect();
            let mut s = seed | 1;
            for i in (1..slots.len()).rev() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                slots.swap(i, (s % (i as u64 + 1)) as usize);
            }
            (base, gaps_sizes, slots)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn cached_agrees_with_uncached_and_model(
        (base, gaps_sizes, slots) in layout(),
        queries in prop::collection::vec((any::<u16>(), any::<u32>(), 0u64..0x5000, any::<bool>()), 1..64),
    ) {
        let file_size: u64 = gaps_sizes.iter().map(|&(_, sz)| sz + 0x123).sum();
        let fd = memfd(&unique_name("prop"), file_size);
        let mut gpa = base;
        let mut off = 0;
        let mut descs = Vec::new();
        let mut regions = Vec::new();
        for (i, &(gap, size)) in gaps_sizes.iter().enumerate() {
            gpa += gap;
            let uva = 0x7f00_0000_0000 + slots[i] * 0x10_0000 + (gap & 0xfff);
            regions.push(map(&fd, gpa, size, uva, off));
            descs.push(RegionDesc { guest_phys_addr: gpa, memory_size: size, userspace_addr: uva, mmap_offset: off });
            gpa += size;
            off += size + 0x123;
        }
        let mem = GuestMemory::new(regions, limits()).unwrap();
        // descs are already in gpa order, like mem.regions().
        let mut cache = TranslationCache::new();
        for (pick, delta, len, use_uva) in queries {
            let d = &descs[pick as usize % descs.len()];
            let start = if use_uva { d.userspace_addr } else { d.guest_phys_addr };
            // Addresses around the chosen region, including just before and past it.
            let addr = start.wrapping_add(u64::from(delta) % (d.memory_size + 0x200)).wrapping_sub(0x100);
            let want = model(&descs, addr, use_uva);
            let want_whole = want.filter(|&(_, _, avail)| len <= avail);
            let host = |(i, o, _): (usize, u64, u64)| mem.regions().nth(i).unwrap().host_ptr() as usize + o as usize;
            if use_uva {
                let whole = mem.fva_to_host(FrontendVa(addr), len);
                prop_assert_eq!(whole.map(|s| (s.as_ptr() as usize, s.len() as u64)), want_whole.map(|w| (host(w), len)));
                let pre = mem.fva_to_host_prefix(FrontendVa(addr), len);
                prop_assert_eq!(pre.map(|s| (s.as_ptr() as usize, s.len() as u64)), want.map(|w| (host(w), len.min(w.2))));
                let g = mem.fva_to_gpa(FrontendVa(addr));
                prop_assert_eq!(g, want.map(|(i, o, _)| Gpa(descs[i].guest_phys_addr + o)));
            } else {
                let whole = mem.gpa_to_host(Gpa(addr), len);
                let cached = mem.gpa_to_host_cached(&mut cache, Gpa(addr), len);
                prop_assert_eq!(whole.map(|s| (s.as_ptr(), s.len())), cached.map(|s| (s.as_ptr(), s.len())));
                prop_assert_eq!(whole.map(|s| (s.as_ptr() as usize, s.len() as u64)), want_whole.map(|w| (host(w), len)));
                let pre = mem.gpa_to_host_prefix(Gpa(addr), len);
                let pre_c = mem.gpa_to_host_prefix_cached(&mut cache, Gpa(addr), len);
                prop_assert_eq!(pre.map(|s| (s.as_ptr(), s.len())), pre_c.map(|s| (s.as_ptr(), s.len())));
                prop_assert_eq!(pre.map(|s| (s.as_ptr() as usize, s.len() as u64)), want.map(|w| (host(w), len.min(w.2))));
                // Chunks cover exactly the mapped run from addr.
                let mut covered = 0u64;
                let mut a = addr;
                for c in mem.gpa_chunks(Gpa(addr), len) {
                    match c {
                        Ok(s) => {
                            let w = model(&descs, a, false).unwrap();
                            prop_assert_eq!(s.as_ptr() as usize, host(w));
                            covered += s.len() as u64;
                            a += s.len() as u64;
                        }
                        Err(g) => {
                            prop_assert_eq!(g, Gpa(a));
                            prop_assert!(model(&descs, a, false).is_none());
                        }
                    }
                }
                prop_assert!(covered <= len);
            }
        }
    }
}

#[test]
fn guest_area_keeps_its_table_mapped() {
    let name = unique_name("area");
    let fd = memfd(&name, 0x20000);
    let mem = three(&fd);
    let area = mem
        .fva_area(FrontendVa(0x7f00_0000_0000 + 0x100), 0x200)
        .unwrap();
    let by_gpa = mem.gpa_area(Gpa(0x100), 0x200).unwrap();
    assert_eq!(area.slice().as_ptr(), by_gpa.slice().as_ptr());
    assert!(
        mem.fva_area(FrontendVa(0x7f00_0000_0000 + 0x9f00), 0x200)
            .is_none()
    );
    assert!(mem.gpa_area(Gpa(0xa000), 1).is_none());
    drop(mem);
    drop(by_gpa);
    // The table is gone from every other holder; the area still maps it.
    assert!(mapped_bytes_named(&name) > 0);
    area.slice().write_at(0, b"ring").unwrap();
    let mut back = [0u8; 4];
    area.slice().read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"ring");
    drop(area);
    assert_eq!(mapped_bytes_named(&name), 0);
}

#[test]
fn a_duplicate_is_counted_and_released_reference_by_reference() {
    // QEMU's per-queue-pair vhost devices each ADD_MEM_REG the same memory.
    let name = unique_name("dup");
    let fd = memfd(&name, 0x10000);
    let other = memfd(&unique_name("dup-other"), 0x10000);
    let mem = GuestMemory::new(vec![map(&fd, 0, 0x4000, 0x10000, 0x1000)], limits()).unwrap();
    let same = *mem.regions().next().unwrap().desc();
    let r = match mem.check_add(&same).unwrap() {
        AddCheck::Duplicate(r) => r,
        AddCheck::New => panic!("an exact duplicate is not new"),
    };
    assert!(r.same_file(fd.as_fd()).unwrap());
    assert!(!r.same_file(other.as_fd()).unwrap(), "another memfd");
    // A dup of the fd is the same file.
    assert!(r.same_file(fd.try_clone().unwrap().as_fd()).unwrap());
    assert_eq!(r.add_frontend_ref().unwrap(), 2);
    drop(r);

    // Anything short of an exact duplicate is an overlap, whatever the counts.
    for changed in [
        RegionDesc {
            mmap_offset: 0,
            ..same
        },
        RegionDesc {
            userspace_addr: 0x20000,
            ..same
        },
        RegionDesc {
            memory_size: 0x2000,
            ..same
        },
        RegionDesc {
            guest_phys_addr: 0x1000,
            userspace_addr: 0x30000,
            ..same
        },
    ] {
        assert!(mem.check_add(&changed).is_err(), "{changed}");
    }

    // First release: still held, same table, still mapped.
    match mem.with_released(&same).unwrap() {
        Released::StillHeld { refs } => assert_eq!(refs, 1),
        Released::Removed { .. } => panic!("removed with a reference left"),
    }
    assert_eq!(mem.len(), 1);
    assert!(mem.gpa_to_host(Gpa(0x3fff), 1).is_some());
    // Second release: gone from the new table; unmapped once the old one goes too.
    let (smaller, region) = match mem.with_released(&same).unwrap() {
        Released::Removed { table, region } => (table, region),
        Released::StillHeld { .. } => panic!("held after the last release"),
    };
    assert!(smaller.is_empty());
    assert_eq!(region.frontend_refs(), 0);
    assert!(matches!(
        smaller.with_released(&same),
        Err(MemoryError::NotFound(_))
    ));
    drop((mem, region));
    assert_eq!(mapped_bytes_named(&name), 0);
    assert_eq!(fds_named(&name), 1, "only the test's own fd");
}

#[test]
fn set_mem_table_again_resets_the_counts() {
    let fd = memfd(&unique_name("reset"), 0x10000);
    let mem = GuestMemory::new(vec![map(&fd, 0, 0x4000, 0x10000, 0)], limits()).unwrap();
    let r = mem.regions().next().unwrap();
    r.add_frontend_ref().unwrap();
    r.add_frontend_ref().unwrap();
    assert_eq!(r.frontend_refs(), 3);
    mem.reset_frontend_refs();
    assert_eq!(r.frontend_refs(), 1);
    assert!(matches!(
        mem.with_released(r.desc()).unwrap(),
        Released::Removed { .. }
    ));
}

/// SET_MEM_TABLE's "same table" check: one to one, and a table naming a region twice is
/// refused before it is compared.
#[test]
fn a_table_is_the_held_one_only_one_to_one() {
    let fd = memfd(&unique_name("same"), 0x10000);
    let mem = GuestMemory::new(
        vec![
            map(&fd, 0, 0x4000, 0x10000, 0),
            map(&fd, 0x4000, 0x4000, 0x20000, 0x4000),
        ],
        limits(),
    )
    .unwrap();
    let a = *mem.regions().next().unwrap().desc();
    let b = *mem.regions().nth(1).unwrap().desc();
    assert!(mem.holds_exactly(&[a, b]));
    assert!(mem.holds_exactly(&[b, a]), "in any order");
    assert!(!mem.holds_exactly(&[a, a]), "A twice is not {{A, B}}");
    assert!(!mem.holds_exactly(&[b, b]));
    assert!(!mem.holds_exactly(&[a]));
    assert!(!mem.holds_exactly(&[a, b, b]));
    GuestMemory::check_table(&[b, a], limits()).unwrap();
    match GuestMemory::check_table(&[a, a], limits()) {
        Err(MemoryError::GpaOverlap { a: x, b: y }) => assert_eq!((x, y), (a, a)),
        other => panic!("{other:?}"),
    }
    let e = GuestMemory::check_table(&[a, RegionDesc::default()], limits()).unwrap_err();
    assert!(matches!(e, MemoryError::ZeroSize), "{e}");
    let e = GuestMemory::check_table(
        &[a, b],
        MemoryLimits {
            max_regions: 1,
            ..limits()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, MemoryError::TooManyRegions { count: 2, max: 1 }),
        "{e}"
    );
}

/// A translation cache remembers its table: a cache filled by one table is not used by
/// another mapping the same addresses elsewhere, nor by a table made after the first is gone
/// (which may be allocated where it was).
#[test]
fn a_translation_cache_is_used_only_with_its_table() {
    let fd = memfd(&unique_name("cache_tables"), 0x4000);
    let a = GuestMemory::new(
        vec![map(&fd, 0x10000, 0x1000, 0x7f00_0000_0000, 0)],
        limits(),
    )
    .unwrap();
    let b = GuestMemory::new(
        vec![map(&fd, 0x10000, 0x1000, 0x7f00_0000_0000, 0x2000)],
        limits(),
    )
    .unwrap();
    let mut c = TranslationCache::new();
    let via_a = a.gpa_to_host_cached(&mut c, Gpa(0x10010), 8).unwrap();
    assert_eq!(via_a.as_ptr() as usize, host_of(&a, 0, 0x10));
    let via_b = b.gpa_to_host_cached(&mut c, Gpa(0x10010), 8).unwrap();
    assert_eq!(via_b.as_ptr() as usize, host_of(&b, 0, 0x10));
    let pre = b
        .gpa_to_host_prefix_cached(&mut c, Gpa(0x10ff0), 0x100)
        .unwrap();
    assert_eq!(
        (pre.as_ptr() as usize, pre.len()),
        (host_of(&b, 0, 0xff0), 0x10)
    );
    // Past the region's end, from a cached hit: refused whole, cut as a prefix.
    assert!(b.gpa_to_host_cached(&mut c, Gpa(0x10ff0), 0x11).is_none());
    assert!(b.gpa_to_host_cached(&mut c, Gpa(0x11000), 1).is_none());
    drop((a, b));
    let d = GuestMemory::new(
        vec![map(&fd, 0x10000, 0x1000, 0x7f00_0000_0000, 0x1000)],
        limits(),
    )
    .unwrap();
    let via_d = d.gpa_to_host_cached(&mut c, Gpa(0x10010), 8).unwrap();
    assert_eq!(via_d.as_ptr() as usize, host_of(&d, 0, 0x10));
    // A table without regions translates nothing, whatever the cache holds.
    let e = GuestMemory::empty(limits());
    assert!(e.gpa_to_host_cached(&mut c, Gpa(0x10010), 8).is_none());
}

/// GPA [0x10000, 0x12000) and [0x13000, 0x15000) (a hole between), from one fd.
fn two_regions_with_a_hole() -> (OwnedFd, GuestMemory) {
    let fd = memfd(&unique_name("two_regions"), 0x4000);
    let mem = GuestMemory::new(
        vec![
            map(&fd, 0x10000, 0x2000, 0x7f00_0000_0000, 0),
            map(&fd, 0x13000, 0x2000, 0x7f00_0001_0000, 0x2000),
        ],
        limits(),
    )
    .unwrap();
    (fd, mem)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Translating 4 buffers at once gives what translating them one by one gives, from any
    /// memo (of this table, of another, or none): hits, misses across two regions, buffers
    /// running past a region's end, addresses outside guest memory.
    #[test]
    fn translating_several_at_once_is_translating_each(
        reqs in proptest::array::uniform4((0x8000u64..0x16000, 0u64..0x1200)),
        warm in 0u8..3,
    ) {
        let (fd, mem) = two_regions_with_a_hole();
        let other = GuestMemory::new(
            vec![map(&fd, 0x10000, 0x1000, 0x7f00_0002_0000, 0)],
            limits(),
        )
        .unwrap();
        let mut c = TranslationCache::new();
        match warm {
            0 => {}
            1 => drop(mem.gpa_to_host_cached(&mut c, Gpa(0x13010), 8)),
            _ => drop(other.gpa_to_host_cached(&mut c, Gpa(0x10010), 8)),
        }
        let mut one = c;
        let each = mem.gpa_to_host_cached_each(&mut c, reqs.map(|(g, l)| (Gpa(g), l)));
        for (k, &(g, l)) in reqs.iter().enumerate() {
            let want = mem.gpa_to_host_cached(&mut one, Gpa(g), l);
            let plain = mem.gpa_to_host(Gpa(g), l);
            let view = |s: Option<GuestSlice<'_>>| s.map(|s| (s.as_ptr() as usize, s.len()));
            prop_assert_eq!(view(each[k]), view(want), "request {}", k);
            prop_assert_eq!(view(each[k]), view(plain), "request {}", k);
        }
    }
}

/// At once, from a memo of the first region: a buffer ending at its end is translated, one a
/// byte longer is not, an address in the hole after it is not, one in the second region is.
#[test]
fn translating_several_at_once_stops_at_the_region_end() {
    let (_fd, mem) = two_regions_with_a_hole();
    let mut c = TranslationCache::new();
    assert!(mem.gpa_to_host_cached(&mut c, Gpa(0x10000), 1).is_some());
    let got = mem.gpa_to_host_cached_each(
        &mut c,
        [
            (Gpa(0x11ff0), 0x10),
            (Gpa(0x11ff0), 0x11),
            (Gpa(0x12000), 1),
            (Gpa(0x13000), 8),
        ],
    );
    let view: Vec<_> = got
        .iter()
        .map(|s| s.map(|s| (s.as_ptr() as usize, s.len())))
        .collect();
    assert_eq!(
        view,
        vec![
            Some((host_of(&mem, 0, 0x1ff0), 0x10)),
            None,
            None,
            Some((host_of(&mem, 1, 0), 8)),
        ]
    );
}
