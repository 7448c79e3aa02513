//! The guest side the data-path targets share: guest memory laid out in memfd regions
//! ([`Guest`]), pattern bytes for packets, and the message helper that sets the device up.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use memmap2::{MmapOptions, MmapRaw};
use rvhost::driver::session::{Served, Session};
use rvhost::mbuf::{DEFAULT_DATA_ROOM, Mbuf, PktCache, PktPool};
use rvhost::protocol::payload::{MemoryRegion, Payload};
use rvhost::protocol::{FrontendReq, Header};
use rvhost_hugepages::region::{PageSize, RegionConfig};

use crate::{Wire, memfd};

/// One guest region: where the guest sees it and the harness's own mapping of its memfd
/// (unmapped when the Guest drops).
pub struct GuestRegion {
    /// Guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
    /// The harness's mapping of the region's memfd.
    pub map: MmapRaw,
}

/// The guest's memory as the harness (the guest) sees it.
pub struct Guest {
    /// The regions, in guest-physical order.
    pub regions: Vec<GuestRegion>,
}

impl Guest {
    /// The region and offset holding `gpa`.
    pub fn find(&self, gpa: u64) -> Option<(&GuestRegion, u64)> {
        self.regions
            .iter()
            .find(|r| gpa >= r.gpa && gpa - r.gpa < r.size)
            .map(|r| (r, gpa - r.gpa))
    }

    /// Writes what lands in mapped memory (bytes over a hole are dropped).
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        let mut k = 0;
        while k < bytes.len() {
            let Some(a) = gpa.checked_add(k as u64) else {
                return;
            };
            let Some((r, off)) = self.find(a) else {
                // Over a hole: on to the next region, if it starts within the bytes.
                let Some(next) = self.regions.iter().map(|r| r.gpa).filter(|&g| g > a).min() else {
                    return;
                };
                k = usize::try_from(next - gpa).unwrap_or(usize::MAX);
                continue;
            };
            let n = ((r.size - off) as usize).min(bytes.len() - k);
            // SAFETY: [off, off + n) is inside the harness's mapping of the region, alive for
            // the Guest's life; a raw copy, no reference to the shared bytes is made.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes[k..].as_ptr(),
                    r.map.as_mut_ptr().add(off as usize),
                    n,
                )
            };
            k += n;
        }
    }

    /// `len` bytes at `gpa` if all of them are mapped (possibly across adjacent regions).
    pub fn read(&self, gpa: u64, len: u64) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        let mut a = gpa;
        let end = gpa.checked_add(len)?;
        while a < end {
            let (r, off) = self.find(a)?;
            let n = (r.size - off).min(end - a);
            let mut chunk = vec![0u8; n as usize];
            // SAFETY: [off, off + n) is inside the harness's mapping of the region; copied
            // into a fresh Vec without forming a reference to the shared bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    r.map.as_mut_ptr().add(off as usize),
                    chunk.as_mut_ptr(),
                    n as usize,
                )
            };
            out.extend_from_slice(&chunk);
            a += n;
        }
        Some(out)
    }

    /// `N` bytes at `gpa`, all mapped, without allocating (descriptors, ring entries).
    pub fn read_arr<const N: usize>(&self, gpa: u64) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        if let Some((r, off)) = self.find(gpa)
            && (N as u64) <= r.size - off
        {
            // SAFETY: [off, off + N) is inside the harness's mapping of the region; copied
            // into a local array without forming a reference to the shared bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(r.map.as_ptr().add(off as usize), out.as_mut_ptr(), N)
            };
            return Some(out);
        }
        let v = self.read(gpa, N as u64)?;
        out.copy_from_slice(&v);
        Some(out)
    }

    /// The little-endian u16 at `gpa` (0 if unmapped).
    pub fn u16_at(&self, gpa: u64) -> u16 {
        self.read_arr::<2>(gpa).map_or(0, u16::from_le_bytes)
    }

    /// Writes a little-endian u16 at `gpa`.
    pub fn set_u16(&self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }

    /// Whether `[gpa, gpa + len)` lies in one region (an indirect table must).
    pub fn in_one_region(&self, gpa: u64, len: u64) -> bool {
        self.find(gpa).is_some_and(|(r, off)| len <= r.size - off)
    }
}

/// Sends `req` with NEED_REPLY and checks the backend accepted it (connection open, one
/// reply, status 0).
pub fn send_ok(
    wire: &Wire,
    session: &mut Session,
    req: FrontendReq,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) {
    let bytes = crate::frame(
        req.code(),
        Header::VERSION | Header::NEED_REPLY,
        payload.len() as u32,
        payload,
    );
    assert_eq!(wire.send(&bytes, fds), bytes.len());
    assert_eq!(session.serve(), Served::Open, "{req} closed the connection");
    let got = wire.recv();
    let reps = crate::replies(&got.bytes);
    assert_eq!(reps.len(), 1, "{req}: one ack");
    assert_eq!(u64::parse(&reps[0].1).unwrap(), 0, "{req} refused");
}

/// Whether any two of `spans` (gpa, len) overlap.
pub fn overlapping(mut spans: Vec<(u64, u64)>) -> bool {
    spans.retain(|&(_, l)| l > 0);
    spans.sort_unstable();
    spans
        .windows(2)
        .any(|w| w[0].0.saturating_add(w[0].1) > w[1].0)
}

/// What a transmitting guest writes: a virtio-net header without offloads (12 zero bytes),
/// then [`pattern`].
pub fn packet_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut v = pattern_bytes(seed, len);
    let h = len.min(12);
    v[..h].fill(0);
    v
}

/// `len` bytes of [`pattern`] (built from its 256-byte period: the harness's per-byte loops
/// are instrumented too, and were most of the time spent).
pub fn pattern_bytes(seed: u8, len: usize) -> Vec<u8> {
    let period: Vec<u8> = (0..256).map(|k| pattern(seed, k)).collect();
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(256);
        v.extend_from_slice(&period[..n]);
    }
    v
}

/// The pattern byte `k` of a packet with `seed` (periodic in `k` modulo 256).
pub fn pattern(seed: u8, k: usize) -> u8 {
    (k as u8).wrapping_mul(31).wrapping_add(seed)
}

/// Where the harness tells the backend the regions are mapped (its own addresses for them):
/// region `i` at `UVA_BASE + i * 16 MiB`.
pub const UVA_BASE: u64 = 0x7f00_0000_0000;
/// Guest page size.
pub const PAGE: u64 = 4096;

/// Guest memory of one to four regions: region 0 of `first_pages` pages at guest page `base`
/// (it holds the rings), then up to three more of `(pages % 8) + 1` pages each, each after a
/// hole of `hole % 3` pages (none: a buffer may straddle two mappings). Returns the guest, the
/// regions' memfds and the SET_MEM_TABLE entries for them.
pub fn layout(
    base: u8,
    first_pages: u64,
    more: &[(u8, u8)],
) -> (Guest, Vec<OwnedFd>, Vec<MemoryRegion>) {
    let mut spans = vec![(u64::from(base) * PAGE, first_pages * PAGE)];
    for &(pages, hole) in more.iter().take(3) {
        let (g, s) = spans[spans.len() - 1];
        let gpa = g + s + u64::from(hole % 3) * PAGE;
        spans.push((gpa, (u64::from(pages % 8) + 1) * PAGE));
    }
    let mut fds = Vec::new();
    let mut regions = Vec::new();
    let mut table = Vec::new();
    for (i, &(gpa, size)) in spans.iter().enumerate() {
        let fd = memfd(size);
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(&fd)
            .expect("mmap");
        regions.push(GuestRegion { gpa, size, map });
        table.push(MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: UVA_BASE + (i as u64) * 0x100_0000,
            mmap_offset: 0,
        });
        fds.push(fd);
    }
    (Guest { regions }, fds, table)
}

/// An mbuf of the data room's size (the most one segment holds).
pub const MBUF_ROOM: usize = 2048;

/// A packet of `len % 9000` pattern bytes (`seed`) in segments of `seg` bytes (modulo the
/// data room; 0: as many as fit; at most 16 segments), and its bytes; `None` when the cache
/// runs out of mbufs.
pub fn build_packet(cache: &mut PktCache, len: u16, seed: u8, seg: u16) -> Option<(Mbuf, Vec<u8>)> {
    let len = usize::from(len) % 9000;
    let bytes = pattern_bytes(seed, len);
    // At most 16 segments (chaining is linear in the segments already there).
    let seg = match usize::from(seg) % MBUF_ROOM {
        0 => MBUF_ROOM,
        n => n,
    }
    .max(len.div_ceil(16));
    let mut head = cache.alloc().ok()?;
    let mut rest = &bytes[..];
    let mut first = true;
    while first || !rest.is_empty() {
        let mut m = if first {
            None
        } else {
            Some(cache.alloc().ok()?)
        };
        let t = m.as_mut().unwrap_or(&mut head);
        let n = rest.len().min(t.tailroom()).min(seg);
        t.append(n).ok()?;
        t.data_mut().ok()?.copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Some(m) = m {
            head.chain(m).ok()?;
        }
        first = false;
    }
    Some((head, bytes))
}

/// The mbuf pool of the data-path targets (one per process, 8192 mbufs of 4 KiB pages).
pub fn pool() -> &'static PktPool {
    static POOL: OnceLock<PktPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let region = RegionConfig::default().with_page_size(PageSize::Small);
        PktPool::new("fuzz-dp", 8192, DEFAULT_DATA_ROOM, 64, region).expect("mbuf pool")
    })
}
