//! Unit tests of the region module.
//!
//! Hugepage tests use whatever pool the machine has (CI reserves some before running the
//! tests); they never change system settings and skip (`crate::test_support::skip`: a
//! message, or a failure under `RVHOST_TEST_REQUIRE=all`) when no pages are free. Checks of
//! physical addresses skip the same way when this process cannot read them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::status::{Plan, fallback_warning, hugepage_status_in, plan, warn_fallback_once};
use super::sys::sanitize_name;
use super::*;
use crate::test_support::skip;

const NO_2M: &str = "no free 2 MiB hugepages (reserve with echo 1024 > /proc/sys/vm/nr_hugepages)";
const NO_PFNS: &str = "physical addresses not readable (root with CAP_SYS_ADMIN can): Pa mode \
                       not checked";

fn small(size: usize) -> RegionConfig {
    RegionConfig::new(size)
        .with_page_size(PageSize::Small)
        .with_name("rvhost-test")
}

fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8
}

fn free_2m() -> usize {
    hugepage_status(PageSize::Huge2M).map_or(0, |s| s.available())
}

fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
    fd.try_clone_to_owned().expect("dup")
}

fn file_size(fd: BorrowedFd<'_>) -> u64 {
    fstat(fd).expect("fstat").st_size as u64
}

/// Whether this process can read physical addresses (root with CAP_SYS_ADMIN can).
fn pfns_readable() -> bool {
    let on_stack = [1u8; 64];
    pagemap::phys_addr(std::hint::black_box(&on_stack).as_ptr() as usize).is_ok()
}

/// A pool status with `free` pages free and nothing else going on.
fn fake_status(page_size: PageSize, total: usize, free: usize) -> HugepageStatus {
    HugepageStatus {
        page_size,
        total,
        free,
        reserved: 0,
        surplus: 0,
        overcommit: 0,
    }
}

#[test]
fn page_size_basics() {
    assert_eq!(PageSize::Small.bytes(), 4096);
    assert_eq!(PageSize::Huge2M.bytes(), 2 * 1024 * 1024);
    assert_eq!(PageSize::Huge1G.bytes(), 1024 * 1024 * 1024);
    assert!(!PageSize::Small.is_huge() && PageSize::Huge2M.is_huge());
    for ps in [PageSize::Small, PageSize::Huge2M, PageSize::Huge1G] {
        assert_eq!(PageSize::from_bytes(ps.bytes() as u64), Some(ps));
        assert_eq!(ps.round_up(1), Some(ps.bytes()));
        assert_eq!(ps.round_up(ps.bytes()), Some(ps.bytes()));
        assert_eq!(ps.round_up(0), Some(0));
        assert_eq!(ps.round_up(usize::MAX), None);
    }
    assert_eq!(PageSize::from_bytes(65536), None);
    assert_eq!(PageSize::Huge2M.to_string(), "2 MiB");
    assert_eq!(PageSize::Huge2M.sysfs_dir(), Some("hugepages-2048kB"));
    assert_eq!(PageSize::Huge1G.sysfs_dir(), Some("hugepages-1048576kB"));
}

#[test]
fn small_region_roundtrip() {
    let r = Region::new(&small(10_000)).unwrap();
    assert_eq!(r.len(), 12_288, "rounded up to 4 KiB");
    assert!(!r.is_empty());
    assert_eq!(r.page_size(), PageSize::Small);
    assert!(!r.is_hugepage());
    assert_eq!(r.mmap_offset(), 0);
    assert!(!r.is_locked());
    assert_eq!(file_size(r.fd()), 12_288);

    let data: Vec<u8> = (0..r.len()).map(|i| pattern(i, 7)).collect();
    r.write_at(0, &data).unwrap();
    let mut back = vec![0u8; r.len()];
    r.read_at(0, &mut back).unwrap();
    assert_eq!(back, data);
    r.write_at(5000, b"hello").unwrap();
    let mut five = [0u8; 5];
    r.read_at(5000, &mut five).unwrap();
    assert_eq!(&five, b"hello");
    // SAFETY: offset 5000 is inside the live region; a byte read through a raw pointer.
    assert_eq!(unsafe { r.as_ptr().add(5001).read() }, b'e');
    assert_eq!(r.ptr_at(5000), Some(r.as_ptr().wrapping_add(5000)));
    assert_eq!(r.ptr_at(r.len()), None);

    // Bounds of read/write.
    assert!(matches!(
        r.write_at(r.len() - 2, b"abc"),
        Err(RegionError::OutOfBounds { .. })
    ));
    assert!(r.write_at(r.len() - 3, b"abc").is_ok());
    assert!(r.read_at(usize::MAX, &mut five).is_err());
    assert!(
        r.write_at(r.len(), b"").is_ok(),
        "empty copy at the end is fine"
    );
    assert!(r.write_at(r.len() + 1, b"").is_err());
}

#[test]
fn small_region_iova() {
    let r = Region::new(&small(3 * 4096)).unwrap();
    let base = r.as_ptr() as usize;
    println!("4 KiB region iova mode: {:?}", r.iova_mode());
    assert_eq!(r.va_to_iova(base - 1), None);
    assert_eq!(r.va_to_iova(base + r.len()), None);
    assert_eq!(r.va_to_iova(0), None);
    assert_eq!(r.va_to_iova(usize::MAX), None);
    assert!(r.va_to_iova(base + r.len() - 1).is_some());
    match r.iova_mode() {
        IovaMode::Va => {
            assert_eq!(r.va_to_iova(base), Some(base as u64));
            assert_eq!(r.va_to_iova(base + 4097), Some(base as u64 + 4097));
        }
        IovaMode::Pa => {
            for page in 0..3 {
                let va = base + page * 4096 + 123;
                let iova = r.va_to_iova(va).unwrap();
                assert_eq!(iova % 4096, 123);
                // The cached value agrees with a fresh pagemap lookup.
                assert_eq!(iova, pagemap::phys_addr(va).unwrap());
            }
        }
    }
    if pfns_readable() {
        assert_eq!(r.iova_mode(), IovaMode::Pa, "PFNs are readable here");
    } else {
        skip(NO_PFNS);
    }
}

#[test]
fn forced_va_and_unprefaulted_regions_use_va() {
    let r = Region::new(&small(8192).with_iova_mode(IovaMode::Va)).unwrap();
    assert_eq!(r.iova_mode(), IovaMode::Va);
    let base = r.as_ptr() as usize;
    assert_eq!(r.va_to_iova(base + 100), Some(base as u64 + 100));

    let r = Region::new(&small(8192).with_prefault(false)).unwrap();
    assert_eq!(r.iova_mode(), IovaMode::Va);

    let e = Region::new(
        &small(8192)
            .with_prefault(false)
            .with_iova_mode(IovaMode::Pa),
    )
    .unwrap_err();
    assert!(matches!(e, RegionError::PhysAddrUnavailable { .. }), "{e}");
}

#[test]
fn locking_populates_like_prefault() {
    let r = Region::new(&small(8192).with_prefault(false).with_lock(true)).unwrap();
    assert!(r.is_locked());
    if pfns_readable() {
        assert_eq!(r.iova_mode(), IovaMode::Pa);
        let va = r.as_ptr() as usize + 4096 + 9;
        assert_eq!(r.va_to_iova(va), Some(pagemap::phys_addr(va).unwrap()));
    } else {
        skip(NO_PFNS);
    }
}

#[test]
fn required_pa_mode() {
    match Region::new(&small(8192).with_iova_mode(IovaMode::Pa)) {
        Ok(r) => assert_eq!(r.iova_mode(), IovaMode::Pa),
        Err(e) => {
            assert!(matches!(e, RegionError::PhysAddrUnavailable { .. }), "{e}");
            assert!(!pfns_readable());
        }
    }
}

#[test]
fn zero_size_is_an_error() {
    assert!(matches!(
        Region::new(&RegionConfig::default()),
        Err(RegionError::ZeroSize)
    ));
    assert!(matches!(
        Region::new(&small(usize::MAX)),
        Err(RegionError::SizeOverflow { .. })
    ));
}

#[test]
fn locked_region() {
    let r = Region::new(&small(16 * 1024).with_lock(true)).unwrap();
    assert!(r.is_locked());
    r.write_at(0, &[1; 16]).unwrap();
}

#[test]
fn names_are_sanitized() {
    assert_eq!(sanitize_name("a/b\0c"), "a_b_c");
    assert_eq!(sanitize_name(""), "rvhost");
    assert!(sanitize_name(&"x".repeat(1000)).len() <= 200);
    let r = Region::new(&small(4096).with_name("weird/name\0with nul")).unwrap();
    assert_eq!(r.len(), 4096);
}

#[test]
fn from_fd_maps_the_same_memory() {
    let r = Region::new(&small(4 * 4096)).unwrap();
    let data: Vec<u8> = (0..r.len()).map(|i| pattern(i, 1)).collect();
    r.write_at(0, &data).unwrap();

    // Aligned window.
    let w = Region::from_fd(dup(r.fd()), 4096, 8192).unwrap();
    assert_ne!(w.as_ptr(), r.as_ptr());
    assert_eq!((w.len(), w.mmap_offset()), (8192, 4096));
    assert_eq!(w.page_size(), PageSize::Small);
    assert_eq!(w.iova_mode(), IovaMode::Va);
    let mut buf = vec![0u8; 8192];
    w.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, data[4096..12288]);
    w.write_at(10, b"xyz").unwrap();
    let mut b3 = [0u8; 3];
    r.read_at(4096 + 10, &mut b3).unwrap();
    assert_eq!(&b3, b"xyz");

    // Unaligned offset, up to the very end of the file.
    let w = Region::from_fd(dup(r.fd()), 100, r.len() - 100).unwrap();
    assert_eq!(w.mmap_offset(), 100);
    let mut buf = vec![0u8; 50];
    w.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, data[100..150]);
    assert!(w.contains(w.as_ptr() as usize));
    assert!(!w.contains(w.as_ptr() as usize - 1));
    assert_eq!(
        w.va_to_iova(w.as_ptr() as usize - 1),
        None,
        "start of page, before offset"
    );

    // Prefaulted, in Pa mode when PFNs are readable: the same physical pages as `r`.
    let p = Region::from_fd_with(
        dup(r.fd()),
        4096,
        4096,
        &MapOptions {
            prefault: true,
            ..MapOptions::default()
        },
    )
    .unwrap();
    if p.iova_mode() == IovaMode::Pa && r.iova_mode() == IovaMode::Pa {
        assert_eq!(
            p.va_to_iova(p.as_ptr() as usize + 7),
            r.va_to_iova(r.as_ptr() as usize + 4096 + 7)
        );
    }
}

#[test]
fn from_fd_rejects_hostile_requests() {
    let r = Region::new(&small(2 * 4096)).unwrap();
    let size = r.len();
    let cases: [(u64, usize); 8] = [
        (0, 0),
        (0, size + 1),
        (4096, size),
        (size as u64, 1),
        (u64::MAX, 1),
        (u64::MAX - 4095, 4096),
        (1 << 62, usize::MAX),
        (i64::MAX as u64, 1),
    ];
    for (offset, len) in cases {
        match Region::from_fd(dup(r.fd()), offset, len) {
            Ok(m) => panic!("from_fd({offset}, {len}) mapped {m:?}"),
            Err(
                RegionError::ZeroSize
                | RegionError::Overflow { .. }
                | RegionError::OutOfFile { .. },
            ) => {}
            Err(e) => panic!("from_fd({offset}, {len}): unexpected error {e}"),
        }
    }
    let e = Region::from_fd(dup(r.fd()), 4096, size).unwrap_err();
    assert!(
        e.to_string()
            .contains("does not fit in the file of 8192 bytes"),
        "{e}"
    );
    let e = Region::from_fd(dup(r.fd()), u64::MAX, 1).unwrap_err();
    assert!(matches!(e, RegionError::Overflow { .. }), "{e}");

    // Not a file at all: a pipe has size 0.
    let (rd, _wr) = nix::unistd::pipe().unwrap();
    assert!(matches!(
        Region::from_fd(rd, 0, 4096),
        Err(RegionError::OutOfFile { file_size: 0, .. })
    ));

    // The whole file is fine.
    assert!(Region::from_fd(dup(r.fd()), 0, size).is_ok());
}

#[test]
fn memfd_is_sealed_against_resizing() {
    let r = Region::new(&small(8192)).unwrap();
    assert_eq!(
        ftruncate(r.fd(), 4096),
        Err(Errno::EPERM),
        "F_SEAL_SHRINK keeps a peer from truncating the file under the mapping"
    );
    assert_eq!(file_size(r.fd()), 8192);
}

#[test]
fn hugepage_status_parses_sysfs() {
    let root = scratch_dir("sysfs");
    let dir = root.join("hugepages-2048kB");
    std::fs::create_dir_all(&dir).unwrap();
    for (file, v) in [
        ("nr_hugepages", "64\n"),
        ("free_hugepages", "40\n"),
        ("resv_hugepages", "8\n"),
        ("surplus_hugepages", "1\n"),
        ("nr_overcommit_hugepages", "3\n"),
    ] {
        std::fs::write(dir.join(file), v).unwrap();
    }
    let s = hugepage_status_in(&root, PageSize::Huge2M).unwrap();
    assert_eq!(
        s,
        HugepageStatus {
            page_size: PageSize::Huge2M,
            total: 64,
            free: 40,
            reserved: 8,
            surplus: 1,
            overcommit: 3
        }
    );
    assert_eq!(s.available(), 40 - 8 + (3 - 1));
    assert_eq!(hugepage_status_in(&root, PageSize::Huge1G), None);
    assert_eq!(hugepage_status_in(&root, PageSize::Small), None);
    std::fs::remove_dir_all(&root).unwrap();

    // The real machine: the 2 MiB pool exists on any x86-64 kernel with hugetlbfs.
    let real = hugepage_status(PageSize::Huge2M);
    println!("2 MiB pool: {real:?}");
    if let Some(s) = real {
        assert!(s.free <= s.total + s.surplus);
    }
}

#[test]
fn plan_decisions() {
    let mib = 1 << 20;
    let st = |free| Some(fake_status(PageSize::Huge2M, 64, free));
    // Required 4 KiB: never hugepages, never a warning.
    assert_eq!(
        plan(Some(PageSize::Small), PageSize::Huge2M, 10, st(0)).unwrap(),
        Plan::Small { warning: None }
    );
    // Preferred and available.
    assert_eq!(
        plan(None, PageSize::Huge2M, 5 * mib, st(3)).unwrap(),
        Plan::Huge {
            page_size: PageSize::Huge2M,
            fallback: true
        }
    );
    // Preferred, not enough: fallback with the warning.
    let Plan::Small { warning: Some(w) } = plan(None, PageSize::Huge2M, 5 * mib, st(2)).unwrap()
    else {
        panic!("expected a fallback")
    };
    assert!(
        w.contains("no free 2 MiB hugepages (wanted 3, free 2)"),
        "{w}"
    );
    assert!(w.contains("using 4 KiB pages"), "{w}");
    assert!(w.contains("echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"));
    // No pool at all.
    let Plan::Small { warning: Some(w) } = plan(None, PageSize::Huge2M, mib, None).unwrap() else {
        panic!("expected a fallback")
    };
    assert!(w.contains("no 2 MiB hugepage pool"), "{w}");
    // Required and available.
    assert_eq!(
        plan(Some(PageSize::Huge2M), PageSize::Huge2M, 4 * mib, st(2)).unwrap(),
        Plan::Huge {
            page_size: PageSize::Huge2M,
            fallback: false
        }
    );
    // Required, not enough.
    let e = plan(Some(PageSize::Huge2M), PageSize::Huge2M, 4 * mib + 1, st(2)).unwrap_err();
    assert!(
        matches!(
            e,
            RegionError::NotEnoughHugepages {
                wanted: 3,
                free: 2,
                total: 64,
                page_size: PageSize::Huge2M
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("wanted 3, free 2"), "{msg}");
    assert!(msg.contains("2 MiB"), "{msg}");
    assert!(
        msg.contains("echo 65 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "{msg}"
    );
    // Reserved pages are not available to us; overcommit headroom is.
    let mut s = fake_status(PageSize::Huge2M, 64, 4);
    s.reserved = 3;
    assert!(plan(Some(PageSize::Huge2M), PageSize::Huge2M, 4 * mib, Some(s)).is_err());
    s.overcommit = 1;
    assert!(plan(Some(PageSize::Huge2M), PageSize::Huge2M, 4 * mib, Some(s)).is_ok());
    // Required, no pool.
    assert!(matches!(
        plan(Some(PageSize::Huge1G), PageSize::Huge2M, 1, None),
        Err(RegionError::HugepagesUnsupported {
            page_size: PageSize::Huge1G
        })
    ));
}

#[test]
fn fallback_warning_text_and_once() {
    let w = fallback_warning(PageSize::Huge2M, 10, 0, 0, None);
    assert_eq!(
        w,
        "rvhost: no free 2 MiB hugepages (wanted 10, free 0); using 4 KiB pages. Reserve some as \
         root: echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    );
    let w = fallback_warning(PageSize::Huge1G, 3, 1, 2000, Some("mmap failed: ENOMEM"));
    assert!(
        w.starts_with(
            "rvhost: could not get 1 GiB hugepages (wanted 3, free 1: mmap failed: ENOMEM); \
             using 4 KiB pages"
        ),
        "{w}"
    );
    assert!(
        w.ends_with("echo 2002 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"),
        "{w}"
    );
    warn_fallback_once("first (maybe)");
    assert!(
        !warn_fallback_once("second"),
        "only one warning per process"
    );
}

/// Log records of this test process, captured by a minimal logger.
static LOGGED: std::sync::Mutex<Vec<(log::Level, String)>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        LOGGED.lock().unwrap().push((record.level(), msg));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
}

#[test]
fn falls_back_to_small_pages_when_the_pool_is_empty() {
    capture_logs();
    // Whatever the machine has, a pool reported empty makes an unrequired size fall back.
    let empty = |ps| Some(fake_status(ps, 0, 0));
    let cfg = RegionConfig::new(3 << 20).with_name("fallback");
    let r = Region::new_with_status(&cfg, &empty).unwrap();
    assert_eq!(r.page_size(), PageSize::Small);
    assert_eq!(r.len(), 3 << 20, "rounded to 4 KiB, not 2 MiB");
    r.write_at(r.len() - 1, &[9]).unwrap();
    let again = Region::new_with_status(&cfg, &empty).unwrap();
    assert_eq!(again.page_size(), PageSize::Small);
    {
        let logged = LOGGED.lock().unwrap();
        let fallbacks: Vec<_> = logged
            .iter()
            .filter(|(_, m)| m.contains("using 4 KiB pages"))
            .collect();
        assert!(
            fallbacks
                .iter()
                .any(|(_, m)| m.contains("no free 2 MiB hugepages (wanted 2, free 0)")),
            "{fallbacks:?}"
        );
        let warnings = fallbacks
            .iter()
            .filter(|(l, _)| *l == log::Level::Warn)
            .count();
        assert!(warnings <= 1, "one warning per process: {fallbacks:?}");
    }
    // And a required size errors with the (fake) numbers.
    let e =
        Region::new_with_status(&cfg.clone().with_page_size(PageSize::Huge2M), &empty).unwrap_err();
    assert!(
        matches!(
            e,
            RegionError::NotEnoughHugepages {
                wanted: 2,
                free: 0,
                total: 0,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn falls_back_when_the_kernel_refuses_hugepages() {
    capture_logs();
    // The pool claims plenty, but the request exceeds anything the real pool could give, so
    // the kernel itself refuses (mmap ENOMEM) and the region falls back to 4 KiB pages.
    let real = hugepage_status(PageSize::Huge2M);
    let impossible = real.map_or(1, |s| s.total + s.overcommit + 1);
    let plenty = |ps| Some(fake_status(ps, impossible, impossible));
    let cfg = RegionConfig::new(impossible * PageSize::Huge2M.bytes())
        .with_prefault(false)
        .with_name("kernel-refuses");
    let r = Region::new_with_status(&cfg, &plenty).unwrap();
    assert_eq!(r.page_size(), PageSize::Small);
    assert_eq!(r.iova_mode(), IovaMode::Va);
    if real.is_some() {
        let logged = LOGGED.lock().unwrap();
        let msg = logged
            .iter()
            .map(|(_, m)| m)
            .find(|m| m.contains(&format!("wanted {impossible}, free {impossible}")))
            .expect("fallback logged");
        println!("fallback log: {msg}");
        assert!(msg.contains("ENOMEM"), "{msg}");
    }

    // Required: the kernel's ENOMEM turns into NotEnoughHugepages (with the pool numbers of
    // the status function, here the fake ones).
    let e = Region::new_with_status(&cfg.clone().with_page_size(PageSize::Huge2M), &plenty)
        .unwrap_err();
    println!("kernel refusal reported as: {e}");
    match e {
        RegionError::NotEnoughHugepages {
            wanted, page_size, ..
        } => {
            assert_eq!(wanted, impossible);
            assert_eq!(page_size, PageSize::Huge2M);
        }
        // A kernel without hugetlb support fails memfd_create instead.
        RegionError::MemfdCreate { .. } => assert!(real.is_none()),
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn kernel_reports_hugepage_exhaustion_at_mmap() {
    // hugetlb reserves a MAP_SHARED mapping's pages in mmap: a pool that is too small shows up
    // as mmap ENOMEM, not as SIGBUS on first touch.
    let Some(s) = hugepage_status(PageSize::Huge2M) else {
        return skip("no 2 MiB hugepage pool");
    };
    let impossible = s.total + s.overcommit + 1;
    let cfg = RegionConfig::new(impossible * PageSize::Huge2M.bytes());
    let e = Region::create(&cfg, PageSize::Huge2M, None).unwrap_err();
    println!(
        "raw kernel error: {e} ({:?})",
        std::error::Error::source(&e)
    );
    assert!(
        matches!(
            e,
            RegionError::Mmap {
                source: Errno::ENOMEM,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_hugepage_shortage());
}

#[test]
fn hugetlbfs_backing_needs_a_mount() {
    let not_mounted = scratch_dir("not-hugetlbfs");
    let cfg = RegionConfig::new(1 << 20).with_backing(Backing::Hugetlbfs {
        dir: not_mounted.clone(),
    });
    let e = Region::new(&cfg).unwrap_err();
    assert!(matches!(e, RegionError::NotHugetlbfs { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("is not a hugetlbfs mount"), "{msg}");
    assert!(msg.contains("mount -t hugetlbfs nodev"), "{msg}");
    std::fs::remove_dir_all(&not_mounted).unwrap();

    let missing = not_mounted.join("missing");
    let e = Region::new(&cfg.with_backing(Backing::Hugetlbfs { dir: missing })).unwrap_err();
    assert!(
        matches!(
            e,
            RegionError::NotHugetlbfs {
                source: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn required_hugepages_beyond_the_pool_error_clearly() {
    let Some(s) = hugepage_status(PageSize::Huge2M) else {
        // No pool at all: requiring 2 MiB pages still errors clearly.
        let e = Region::new(&RegionConfig::new(1).with_page_size(PageSize::Huge2M)).unwrap_err();
        assert!(matches!(e, RegionError::HugepagesUnsupported { .. }), "{e}");
        return;
    };
    // More than the pool could ever give (works with 0 configured pages too).
    let wanted = s.total + s.overcommit + 1;
    let cfg = RegionConfig::new(wanted * PageSize::Huge2M.bytes()).with_page_size(PageSize::Huge2M);
    let e = Region::new(&cfg).unwrap_err();
    println!("{e}");
    match e {
        RegionError::NotEnoughHugepages {
            wanted: w,
            free,
            total,
            page_size,
        } => {
            assert_eq!(w, wanted);
            assert_eq!(page_size, PageSize::Huge2M);
            assert!(free < wanted);
            assert_eq!(total, s.total, "pool size changed during the test?");
        }
        e => panic!("unexpected {e:?}"),
    }
    // 1 GiB pages: same (or no pool at all).
    let e = Region::new(
        &RegionConfig::new(1)
            .with_page_size(PageSize::Huge1G)
            .with_prefault(false),
    );
    match (hugepage_status(PageSize::Huge1G), e) {
        (_, Ok(r)) => assert_eq!(r.page_size(), PageSize::Huge1G),
        (None, Err(e)) => assert!(matches!(e, RegionError::HugepagesUnsupported { .. }), "{e}"),
        (Some(_), Err(e)) => assert!(matches!(e, RegionError::NotEnoughHugepages { .. }), "{e}"),
    }
}

/// Checks shared by the hugepage tests.
fn check_huge_region(r: &Region, pages: usize) {
    let ps = PageSize::Huge2M.bytes();
    assert!(r.is_hugepage());
    assert_eq!(r.page_size(), PageSize::Huge2M);
    assert_eq!(r.len(), pages * ps);
    assert_eq!(
        r.as_ptr() as usize % ps,
        0,
        "hugepage mappings are hugepage aligned"
    );
    assert_eq!(file_size(r.fd()), r.len() as u64);
    let data: Vec<u8> = (0..r.len()).map(|i| pattern(i, 3)).collect();
    r.write_at(0, &data).unwrap();
    let mut back = vec![0u8; r.len()];
    r.read_at(0, &mut back).unwrap();
    assert!(back == data);

    let base = r.as_ptr() as usize;
    assert_eq!(r.va_to_iova(base + r.len()), None);
    assert_eq!(r.va_to_iova(base.wrapping_sub(1)), None);
    println!("2 MiB region iova mode: {:?}", r.iova_mode());
    match r.iova_mode() {
        IovaMode::Pa => {
            let pas: Vec<u64> = (0..pages)
                .map(|p| r.va_to_iova(base + p * ps).unwrap())
                .collect();
            for (p, &pa) in pas.iter().enumerate() {
                assert_eq!(pa % ps as u64, 0, "page {p} PA {pa:#x} not 2 MiB aligned");
                assert_eq!(r.va_to_iova(base + p * ps + 12345), Some(pa + 12345));
                assert_eq!(
                    r.va_to_iova(base + p * ps + ps - 1),
                    Some(pa + ps as u64 - 1)
                );
                // Inside a hugepage the memory is physically contiguous.
                assert_eq!(
                    pagemap::phys_addr(base + p * ps + 5 * 4096 + 1).unwrap(),
                    pa + 5 * 4096 + 1
                );
            }
            let mut sorted = pas.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                pages,
                "distinct pages have distinct PAs: {pas:x?}"
            );
        }
        IovaMode::Va => assert_eq!(r.va_to_iova(base + 7), Some(base as u64 + 7)),
    }
}

#[test]
fn hugepage_region_memfd() {
    if free_2m() < 3 {
        return skip(NO_2M);
    }
    let cfg = RegionConfig::new(5 << 20)
        .with_page_size(PageSize::Huge2M)
        .with_lock(true)
        .with_name("huge-memfd");
    let r = match Region::new(&cfg) {
        Ok(r) => r,
        // Other tests may have taken the pages meanwhile.
        Err(RegionError::NotEnoughHugepages { .. }) => {
            return skip(NO_2M);
        }
        Err(e) => panic!("{e}"),
    };
    assert!(r.is_locked());
    check_huge_region(&r, 3);
    if pfns_readable() {
        assert_eq!(r.iova_mode(), IovaMode::Pa);
    } else {
        skip(NO_PFNS);
    }
    // Another mapping of the same fd sees the same bytes and (in Pa mode) the same PAs.
    let w = Region::from_fd_with(
        dup(r.fd()),
        2 << 20,
        2 << 20,
        &MapOptions {
            prefault: true,
            ..MapOptions::default()
        },
    )
    .unwrap();
    assert_eq!(w.page_size(), PageSize::Huge2M);
    let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
    w.read_at(100, &mut a).unwrap();
    r.read_at((2 << 20) + 100, &mut b).unwrap();
    assert_eq!(a, b);
    if w.iova_mode() == IovaMode::Pa && r.iova_mode() == IovaMode::Pa {
        assert_eq!(
            w.va_to_iova(w.as_ptr() as usize),
            r.va_to_iova(r.as_ptr() as usize + (2 << 20))
        );
    }
    // An unaligned offset into a hugetlb file.
    let u = Region::from_fd(dup(r.fd()), (2 << 20) + 100, 64).unwrap();
    u.read_at(0, &mut a).unwrap();
    assert_eq!(a, b);
}

#[test]
fn hugepage_region_preferred() {
    if free_2m() < 1 {
        return skip(NO_2M);
    }
    let r = Region::new(&RegionConfig::new(100).with_name("huge-preferred")).unwrap();
    // Unless another test raced us for the last page, this got a hugepage.
    if r.page_size() != PageSize::Huge2M {
        return skip("the last free 2 MiB hugepages were taken meanwhile");
    }
    check_huge_region(&r, 1);
}

#[test]
fn hugepage_region_hugetlbfs() {
    let dir = PathBuf::from("/dev/hugepages");
    match hugetlbfs_page_size(&dir) {
        Ok(PageSize::Huge2M) => {}
        Ok(other) => return skip(format!("/dev/hugepages serves {other} pages")),
        Err(e) => return skip(e),
    }
    if free_2m() < 2 {
        return skip(NO_2M);
    }
    let before = count_files(&dir);
    let cfg = RegionConfig::new(4 << 20)
        .with_page_size(PageSize::Huge2M)
        .with_backing(Backing::Hugetlbfs { dir: dir.clone() })
        .with_name("huge-hugetlbfs");
    let r = match Region::new(&cfg) {
        Ok(r) => r,
        Err(RegionError::NotEnoughHugepages { .. }) => {
            return skip(NO_2M);
        }
        Err(e) => panic!("{e}"),
    };
    check_huge_region(&r, 2);
    assert_eq!(count_files(&dir), before, "the backing file is unlinked");
    // A 4 KiB requirement cannot be served by a 2 MiB mount.
    let e = Region::new(&cfg.with_page_size(PageSize::Small)).unwrap_err();
    assert!(
        matches!(e, RegionError::HugetlbfsPageSizeMismatch { .. }),
        "{e}"
    );
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn scratch_dir(tag: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rvhost-region-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn region_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Region>();
    let r = std::sync::Arc::new(Region::new(&small(4096)).unwrap());
    let r2 = r.clone();
    std::thread::spawn(move || r2.write_at(0, b"t").unwrap())
        .join()
        .unwrap();
    let mut b = [0u8; 1];
    r.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"t");
    assert!(r.fd().as_raw_fd() >= 0);
}

/// Bytes of this process's address space mapped from the memfd called `name` (as the kernel
/// names it in `/proc/self/maps`: `/memfd:NAME (deleted)`).
fn mapped_bytes_of_memfd(name: &str) -> usize {
    let target = format!("/memfd:{name} ");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&target))
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?.0.split_once('-')?;
            Some(usize::from_str_radix(b, 16).ok()? - usize::from_str_radix(a, 16).ok()?)
        })
        .sum()
}

/// The mapping's owner (`memmap2`) ignores `munmap` errors, and `munmap` of a hugetlb mapping
/// fails unless its length is a whole number of huge pages: check that a dropped region
/// leaves nothing mapped, for 4 KiB and (when free) 2 MiB pages, at aligned and unaligned
/// offsets.
#[test]
fn dropped_regions_leave_nothing_mapped() {
    let name = format!("rvhost-unmap-{}", std::process::id());
    let mut configs = vec![(small(3 * 4096).with_name(&name), 4096)];
    if free_2m() >= 2 {
        let huge = RegionConfig::new(4 << 20)
            .with_page_size(PageSize::Huge2M)
            .with_name(format!("{name}-huge"));
        configs.push((huge, 2 << 20));
    } else {
        skip(NO_2M);
    }
    for (cfg, ps) in configs {
        let r = match Region::new(&cfg) {
            Ok(r) => r,
            Err(RegionError::NotEnoughHugepages { .. }) => {
                skip(NO_2M);
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let whole = r.len();
        assert_eq!(mapped_bytes_of_memfd(&cfg.name), whole);
        for (offset, len) in [(ps as u64, 100), (ps as u64 + 100, ps - 100), (100, 64)] {
            let w = Region::from_fd(dup(r.fd()), offset, len).unwrap();
            w.write_at(len - 1, b"x").unwrap();
            assert_eq!(
                mapped_bytes_of_memfd(&cfg.name),
                whole + ps,
                "{offset:#x}+{len:#x}: one page mapped"
            );
            drop(w);
            assert_eq!(
                mapped_bytes_of_memfd(&cfg.name),
                whole,
                "{offset:#x}+{len:#x}"
            );
        }
        drop(r);
        assert_eq!(mapped_bytes_of_memfd(&cfg.name), 0);
    }
}
