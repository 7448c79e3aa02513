//! The split-ring chain walker and the enqueue/dequeue data path over a fuzzed guest.
//!
//! Each input lays out guest memory (one to four regions, memfds mapped by the backend
//! between guard pages, with fuzzed holes between them in guest-physical space, or none so
//! that buffers straddle two mappings), sets the device up through the real message path
//! (`Session`), then runs a sequence of guest actions (descriptors, well-formed chains, direct
//! or indirect, raw indirect tables, packet bytes, available-ring entries, hostile indexes,
//! interrupt suppression) and bursts (`dequeue_burst` with a fuzzed maximum,
//! `enqueue_burst` with fuzzed packets, single or multi-segment).
//!
//! Before each burst the harness walks every pending chain itself (a model of the walker's
//! documented rules: budget of the table size, indirect rules, permissions, mapped buffers,
//! 256 KiB per chain, 128 buffers per packet) and checks after it:
//! - no panic, and no access outside guest memory (the guard pages make one crash);
//! - the used ring: `used.idx` advanced by exactly the chains taken (as the vring's
//!   `last_avail_idx` moved), each used entry is the head made available at that position of
//!   the available ring, in order, with a length no more than the chain's writable bytes, and
//!   0 for a chain the model finds malformed; a queue is marked broken only for an index jump
//!   over the queue size or a head beyond the table;
//! - every chain taken is delivered byte-exact or counted: dequeue's packets are the model's
//!   good chains, in order, byte for byte (with the header's offload bytes clear), and
//!   `bad_chains` / `too_large` count the others; enqueue's used lengths add up, packet by
//!   packet, to the header plus the packet, whose bytes (and `num_buffers`) the guest reads
//!   back, with `bad_chains` the model's malformed chains. Byte and count checks apply when
//!   the burst's writes cannot change what it reads (no buffer overlapping a ring, a table
//!   or another buffer); the rest always;
//! - the interrupts counted are the call eventfd's writes; every mbuf is freed; no fd or
//!   guest mapping is left once the session is dropped.

#![no_main]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rvhost::driver::session::{Session, SessionOptions};
use rvhost::driver::{Device, Flags};
use rvhost::features::{
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use rvhost::mbuf::{Mbuf, PktCache};
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};
use rvhost::protocol::FrontendReq;
use rvhost::protocol::payload::{MemoryTable, Payload, VringAddr, VringFile, VringState};
use rvhost::virtq::QueueStats;
use rvhost_fuzz::guest::{
    Guest, MBUF_ROOM, UVA_BASE, build_packet, layout, overlapping, packet_bytes, pattern_bytes,
    pool, send_ok,
};
use rvhost_fuzz::{Callbacks, Wire, eventfd, eventfd_take, fd_count, mappings_named};

/// Region 0 holds both rings (at the offsets below) and then buffers.
const RING_REGION_PAGES: u64 = 8;
/// Byte offsets in region 0 of (descriptor table, available ring, used ring) of vring 0 (rx)
/// and vring 1 (tx), room for 256 entries each.
const RINGS: [(u64, u64, u64); 2] = [(0, 0x1000, 0x2000), (0x3000, 0x4000, 0x5000)];
/// Bytes of region 0 the rings take.
const RING_BYTES: u64 = 0x6000;
/// What the walker allows per chain, and buffers per packet (rvhost's documented limits).
const MAX_PKT_LEN: u64 = 256 * 1024;
const MAX_PIECES: usize = 128;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit 0 MRG_RXBUF, 1 EVENT_IDX, 2 VERSION_1, 3 INDIRECT_DESC, 4 LINEARBUF, 5 EXTBUF.
    mode: u8,
    /// log2 of the queue sizes (rx, tx), taken modulo 9: 1 to 256.
    qsize: (u8, u8),
    /// First region's guest page.
    base: u8,
    /// Further regions: (pages, hole before it in pages).
    regions: Vec<(u8, u8)>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Desc {
        rx: bool,
        idx: u16,
        desc: D,
    },
    /// A chain written the way a driver does: descriptors `head, head + 1, ...` (or an
    /// indirect table at `indirect`) with NEXT and WRITE set right.
    Chain {
        rx: bool,
        head: u16,
        bufs: Vec<(Addr, u16)>,
        indirect: Option<Addr>,
        /// Then fill its buffers with a pattern (a packet to transmit) and make it available.
        post: bool,
    },
    /// The common case in a few bytes: a one-buffer chain at `head`, its buffer in one of four
    /// 2 KiB slots after the rings (a pattern in it), made available.
    Simple {
        rx: bool,
        head: u8,
        len: u16,
    },
    /// Raw descriptors at a guest address (an indirect table).
    Table {
        at: Addr,
        descs: Vec<D>,
    },
    /// Pattern bytes at a guest address (packet contents, a header's offload bytes).
    Fill {
        at: Addr,
        len: u16,
        seed: u8,
    },
    /// Heads made available (modulo the queue size), then the index published.
    Avail {
        rx: bool,
        heads: Vec<u16>,
    },
    /// A head beyond the table made available.
    BadHead {
        rx: bool,
        head: u16,
    },
    /// The available index moved by `delta` without writing the ring.
    AvailIdx {
        rx: bool,
        delta: i16,
    },
    /// SET_VRING_BASE through the message path, at the guest's available index (nothing
    /// pending): how a broken vring is revived.
    Rebase {
        rx: bool,
    },
    /// avail.flags and used_event.
    Suppress {
        rx: bool,
        flags: u16,
        used_event: u16,
    },
    Dequeue {
        max: u8,
    },
    Enqueue {
        pkts: Vec<Pkt>,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct D {
    addr: Addr,
    len: Len,
    flags: u8,
    next: u16,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// In (or just past) region `region`.
    In {
        region: u8,
        off: u16,
    },
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u8),
    Mid(u16),
    Raw(u32),
}

impl Len {
    fn get(self) -> u32 {
        match self {
            Len::Small(v) => u32::from(v),
            Len::Mid(v) => u32::from(v),
            Len::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Pkt {
    len: u16,
    seed: u8,
    /// Bytes per segment (modulo the data room; 0: as many as fit).
    seg: u16,
}

/// A chain as the model walks it.
#[derive(Debug, Clone)]
enum Walk {
    Ok {
        /// Non-empty buffers, split where they cross a region end: (gpa, len).
        pieces: Vec<(u64, u64)>,
        /// Bytes the descriptors add up to.
        total: u64,
        /// What the walk read besides the buffers: descriptors of indirect tables.
        tables: Vec<(u64, u64)>,
    },
    Bad,
}

/// One ring of the device, from the guest's side.
#[derive(Clone, Copy)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    event_idx: bool,
}

impl Ring {
    fn used_len(&self) -> u64 {
        4 + 8 * u64::from(self.size) + 2
    }

    fn avail_len(&self) -> u64 {
        4 + 2 * u64::from(self.size) + 2
    }

    /// The model of the walker (`virtq::split::Chain`): see the module docs.
    fn walk(&self, g: &Guest, head: u16, writable: bool) -> Walk {
        let mut table = self.desc;
        let mut table_len = u32::from(self.size);
        let mut budget = table_len;
        let mut index = u32::from(head);
        let mut indirect = false;
        let mut pieces = Vec::new();
        let mut tables = Vec::new();
        let mut total = 0u64;
        loop {
            if index >= table_len || budget == 0 {
                return Walk::Bad;
            }
            budget -= 1;
            let Some(b) = g.read_arr::<16>(table + 16 * u64::from(index)) else {
                return Walk::Bad;
            };
            let addr = u64::from_le_bytes(b[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(b[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([b[12], b[13]]);
            let next = u16::from_le_bytes([b[14], b[15]]);
            if flags & INDIRECT != 0 {
                if indirect || flags & NEXT != 0 || len == 0 || len % 16 != 0 {
                    return Walk::Bad;
                }
                if !g.in_one_region(addr, u64::from(len)) {
                    return Walk::Bad;
                }
                tables.push((addr, u64::from(len)));
                table = addr;
                table_len = len / 16;
                budget = table_len;
                index = 0;
                indirect = true;
                continue;
            }
            if (flags & WRITE != 0) != writable {
                return Walk::Bad;
            }
            total += u64::from(len);
            if total > MAX_PKT_LEN {
                return Walk::Bad;
            }
            // The buffer, split at region ends; every byte must be mapped.
            let mut a = addr;
            let mut left = u64::from(len);
            while left > 0 {
                let Some((r, off)) = g.find(a) else {
                    return Walk::Bad;
                };
                let n = (r.size - off).min(left);
                pieces.push((a, n));
                a += n;
                left -= n;
            }
            if flags & NEXT == 0 {
                return Walk::Ok {
                    pieces,
                    total,
                    tables,
                };
            }
            index = u32::from(next);
        }
    }
}

struct Harness {
    wire: Wire,
    session: Session,
    dev: Device,
    guest: Guest,
    rings: [Ring; 2],
    /// Copies of the call eventfds handed to the backend (rx, tx).
    calls: [OwnedFd; 2],
    cache: PktCache,
    hlen: usize,
    mergeable: bool,
    large: Flags,
    /// Guest memory bytes, for placing addresses.
    region_spans: Vec<(u64, u64)>,
}

fn setup(input: &Input) -> Harness {
    let mode = input.mode;
    let mut features = 0;
    for (bit, f) in [
        (0, VIRTIO_NET_F_MRG_RXBUF),
        (1, VIRTIO_RING_F_EVENT_IDX),
        (2, VIRTIO_F_VERSION_1),
        (3, VIRTIO_RING_F_INDIRECT_DESC),
    ] {
        if mode & (1 << bit) != 0 {
            features |= f;
        }
    }
    let mut flags = Flags::empty();
    if mode & 16 != 0 {
        flags = flags | Flags::LINEARBUF;
    }
    if mode & 32 != 0 {
        flags = flags | Flags::EXTBUF;
    }
    let opts = SessionOptions {
        flags,
        guard_pages: true,
        max_queue_pairs: 1,
        ..SessionOptions::default()
    };
    let (wire, backend) = Wire::pair();
    let cb = Arc::new(Callbacks::default());
    let mut session = Session::new(backend, opts, Arc::clone(&cb) as _).expect("session");

    // Regions: region 0 holds the rings; the others follow with holes between them.
    let (guest, fds, table) = layout(input.base, RING_REGION_PAGES, &input.regions);
    let spans: Vec<(u64, u64)> = guest.regions.iter().map(|r| (r.gpa, r.size)).collect();
    let size_of = |l: u8| 1u16 << (l % 9);
    let sizes = [size_of(input.qsize.0), size_of(input.qsize.1)];
    let g0 = spans[0].0;
    let rings = [0, 1].map(|v| Ring {
        desc: g0 + RINGS[v].0,
        avail: g0 + RINGS[v].1,
        used: g0 + RINGS[v].2,
        size: sizes[v],
        event_idx: features & VIRTIO_RING_F_EVENT_IDX != 0,
    });

    send_ok(&wire, &mut session, FrontendReq::SetOwner, &[], &[]);
    send_ok(
        &wire,
        &mut session,
        FrontendReq::SetFeatures,
        &features.to_bytes(),
        &[],
    );
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let t = MemoryTable { regions: table }.to_bytes();
    send_ok(&wire, &mut session, FrontendReq::SetMemTable, &t, &borrowed);
    drop(borrowed);
    drop(fds);
    let calls = [eventfd(), eventfd()];
    for v in 0..2u32 {
        let r = &rings[v as usize];
        let uva = |off: u64| UVA_BASE + off;
        let s = VringState {
            index: v,
            num: u32::from(r.size),
        }
        .to_bytes();
        send_ok(&wire, &mut session, FrontendReq::SetVringNum, &s, &[]);
        let a = VringAddr {
            index: v,
            flags: 0,
            desc_user_addr: uva(RINGS[v as usize].0),
            used_user_addr: uva(RINGS[v as usize].2),
            avail_user_addr: uva(RINGS[v as usize].1),
            log_guest_addr: 0,
        };
        send_ok(
            &wire,
            &mut session,
            FrontendReq::SetVringAddr,
            &a.to_bytes(),
            &[],
        );
        let b = VringState { index: v, num: 0 }.to_bytes();
        send_ok(&wire, &mut session, FrontendReq::SetVringBase, &b, &[]);
        let f = VringFile {
            index: v as u8,
            no_fd: false,
        }
        .to_bytes();
        send_ok(
            &wire,
            &mut session,
            FrontendReq::SetVringCall,
            &f,
            &[calls[v as usize].as_fd()],
        );
        let kick = eventfd();
        send_ok(
            &wire,
            &mut session,
            FrontendReq::SetVringKick,
            &f,
            &[kick.as_fd()],
        );
    }
    assert!(
        session.running() && cb.running(),
        "the device did not start"
    );
    let dev = session.device().clone();
    Harness {
        wire,
        session,
        dev,
        guest,
        rings,
        calls,
        cache: pool().cache(),
        hlen: rvhost::net::hdr::hdr_len(features),
        mergeable: features & VIRTIO_NET_F_MRG_RXBUF != 0,
        large: flags,
        region_spans: spans,
    }
}

/// Where the device side of a vring stands.
#[derive(Debug, Clone, Copy)]
struct Side {
    last_avail: u16,
    last_used: u16,
    broken: bool,
    stats: QueueStats,
}

impl Harness {
    fn addr(&self, a: Addr) -> u64 {
        match a {
            Addr::In { region, off } => {
                let i = usize::from(region) % self.region_spans.len();
                let (g, s) = self.region_spans[i];
                // Region 0's buffers start after the rings (a raw address may still hit them).
                let first = if i == 0 { RING_BYTES } else { 0 };
                // Mostly inside, sometimes up to 64 bytes past the end.
                g + first + u64::from(off) % (s - first + 64)
            }
            Addr::Raw(v) => v,
        }
    }

    fn ring(&self, rx: bool) -> Ring {
        self.rings[usize::from(!rx)]
    }

    fn write_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.guest.write(at, &d);
    }

    fn raw_desc(&self, at: u64, d: &D) {
        // NEXT, WRITE, INDIRECT, and sometimes a flag no one defined.
        let flags = u16::from(d.flags & 7) | if d.flags & 0x80 != 0 { 0x10 } else { 0 };
        self.write_desc(at, self.addr(d.addr), d.len.get(), flags, d.next);
    }

    fn chain(&self, rx: bool, head: u16, bufs: &[(Addr, u16)], indirect: Option<Addr>) {
        let r = self.ring(rx);
        let head = head % r.size;
        let bufs = &bufs[..bufs.len().min(200)];
        let n = bufs.len();
        let w = if rx { WRITE } else { 0 };
        let flags = |k: usize| w | if k + 1 < n { NEXT } else { 0 };
        match indirect {
            Some(t) => {
                let t = self.addr(t);
                for (k, &(a, len)) in bufs.iter().enumerate() {
                    let at = t.wrapping_add(16 * k as u64);
                    self.write_desc(at, self.addr(a), u32::from(len), flags(k), k as u16 + 1);
                }
                self.write_desc(r.desc + 16 * u64::from(head), t, 16 * n as u32, INDIRECT, 0);
            }
            None => {
                let idx = |k: usize| (usize::from(head) + k) % usize::from(r.size);
                for (k, &(a, len)) in bufs.iter().enumerate() {
                    let at = r.desc + 16 * idx(k) as u64;
                    self.write_desc(
                        at,
                        self.addr(a),
                        u32::from(len),
                        flags(k),
                        idx(k + 1) as u16,
                    );
                }
            }
        }
    }

    fn avail(&self, rx: bool, heads: &[u16], raw: bool) {
        let r = self.ring(rx);
        let mut idx = self.guest.u16_at(r.avail + 2);
        for &h in heads.iter().take(300) {
            let h = if raw { h.max(r.size) } else { h % r.size };
            let slot = u64::from(idx % r.size);
            self.guest.set_u16(r.avail + 4 + 2 * slot, h);
            idx = idx.wrapping_add(1);
        }
        self.guest.set_u16(r.avail + 2, idx);
    }

    fn side(&self, vring: usize) -> Side {
        let vq = self.dev.lock_vring(vring).unwrap();
        Side {
            last_avail: vq.last_avail_idx,
            last_used: vq.last_used_idx,
            broken: vq.broken,
            stats: vq.stats,
        }
    }

    /// The heads at available-ring positions `from..from + n`.
    fn heads(&self, r: &Ring, from: u16, n: u16) -> Vec<u16> {
        (0..n)
            .map(|k| {
                self.guest
                    .u16_at(r.avail + 4 + 2 * u64::from(from.wrapping_add(k) % r.size))
            })
            .collect()
    }

    /// The used entries at ring positions `from..from + n`: (id, len).
    fn used(&self, r: &Ring, from: u16, n: u16) -> Vec<(u32, u32)> {
        (0..n)
            .map(|k| {
                let at = r.used + 4 + 8 * u64::from(from.wrapping_add(k) % r.size);
                let b = self.guest.read_arr::<8>(at).unwrap();
                (
                    u32::from_le_bytes(b[0..4].try_into().unwrap()),
                    u32::from_le_bytes(b[4..8].try_into().unwrap()),
                )
            })
            .collect()
    }

    /// The checks every burst passes (`entries`: whether the used entries can be compared
    /// with the available ring: a burst that writes packets over the used ring may not);
    /// returns the chains taken.
    fn ring_checks(&self, rx: bool, before: &Side, after: &Side, entries: bool) -> u16 {
        let what = if rx { "enqueue" } else { "dequeue" };
        let r = self.ring(rx);
        let avail_idx = self.guest.u16_at(r.avail + 2);
        let taken = after.last_avail.wrapping_sub(before.last_avail);
        let written = after.last_used.wrapping_sub(before.last_used);
        assert_eq!(
            written, taken,
            "{what}: {written} used entries, {taken} chains taken"
        );
        if taken > 0 {
            let used_idx = self.guest.u16_at(r.used + 2);
            assert_eq!(
                after.last_used, used_idx,
                "{what}: used.idx is not the vring's index"
            );
        }
        let pending = avail_idx.wrapping_sub(before.last_avail);
        if before.broken {
            assert_eq!(taken, 0, "{what}: a broken vring took chains");
            return 0;
        }
        assert!(
            taken <= pending.min(r.size),
            "{what}: took {taken} of {pending} pending"
        );
        if entries {
            let heads = self.heads(&r, before.last_avail, taken);
            let used = self.used(&r, before.last_used, taken);
            for (k, (&h, &(id, _))) in heads.iter().zip(&used).enumerate() {
                assert_eq!(
                    id,
                    u32::from(h),
                    "{what}: used entry {k} is not the head made available"
                );
            }
        }
        if after.broken && !before.broken {
            let jump = pending > r.size;
            // A packet that needed more chains gives back those it reserved before the bad
            // head (mergeable): the head is at or after the first chain not taken.
            let rest = pending.saturating_sub(taken);
            let bad_head = self
                .heads(&r, before.last_avail.wrapping_add(taken), rest)
                .iter()
                .any(|&h| h >= r.size);
            assert!(jump || bad_head, "{what}: vring marked broken for nothing");
            assert_eq!(
                after.stats.breaks,
                before.stats.breaks + 1,
                "{what}: breaks"
            );
        } else {
            assert!(!after.broken, "{what}: broken");
        }
        let irq = after.stats.interrupts - before.stats.interrupts;
        let calls = eventfd_take(self.calls[usize::from(!rx)].as_fd());
        assert_eq!(
            irq, calls,
            "{what}: interrupts counted vs call eventfd writes"
        );
        taken
    }

    fn dequeue(&mut self, max: u8) {
        let r = self.ring(false);
        let before = self.side(1);
        let pending = self
            .guest
            .u16_at(r.avail + 2)
            .wrapping_sub(before.last_avail);
        // The model, on the guest's memory before the burst.
        let max = usize::from(max % 33);
        let n = pending.min(r.size).min(max as u16);
        let walks: Vec<Walk> = self
            .heads(&r, before.last_avail, n)
            .iter()
            .map(|&h| {
                if h < r.size {
                    r.walk(&self.guest, h, false)
                } else {
                    Walk::Bad
                }
            })
            .collect();
        // The burst writes only the used ring: clean when no chain reads it.
        let used_span = (r.used, r.used_len());
        let clean = walks.iter().all(|w| match w {
            Walk::Ok { pieces, tables, .. } => pieces
                .iter()
                .chain(tables)
                .all(|&s| !overlapping(vec![s, used_span])),
            Walk::Bad => true,
        });
        let mut out = Vec::new();
        let got = dequeue_burst(&self.dev, QueuePair(0).tx(), &mut self.cache, &mut out, max);
        assert_eq!(got, out.len(), "dequeue: returned count");
        let after = self.side(1);
        // Dequeue writes nothing but the used ring: its entries are always comparable.
        let taken = self.ring_checks(false, &before, &after, true);
        assert!(usize::from(taken) <= max, "dequeue: took more than asked");
        for (k, &(_, len)) in self.used(&r, before.last_used, taken).iter().enumerate() {
            assert_eq!(len, 0, "dequeue: used entry {k} has a length");
        }
        let d = |f: fn(&QueueStats) -> u64| f(&after.stats) - f(&before.stats);
        assert_eq!(d(|s| s.packets), got as u64, "dequeue: packets counted");
        let counted = got as u64 + d(|s| s.bad_chains) + d(|s| s.too_large);
        assert_eq!(
            counted,
            u64::from(taken),
            "dequeue: a chain neither delivered nor counted"
        );
        if clean && before.stats.alloc_failures == after.stats.alloc_failures {
            self.dequeue_model(&walks[..usize::from(taken)], &out, &before, &after);
        }
        self.cache.free_bulk(out);
    }

    /// Dequeue's packets are the model's good chains, byte for byte.
    fn dequeue_model(&self, walks: &[Walk], out: &[Mbuf], before: &Side, after: &Side) {
        let mut bad = 0;
        let mut too_large = 0;
        let mut good = Vec::new();
        for w in walks {
            let Walk::Ok { pieces, .. } = w else {
                bad += 1;
                continue;
            };
            if pieces.len() > MAX_PIECES {
                bad += 1;
                continue;
            }
            let bytes: Vec<u8> = pieces
                .iter()
                .flat_map(|&(a, l)| self.guest.read(a, l).unwrap())
                .collect();
            if bytes.len() < self.hlen {
                bad += 1;
                continue;
            }
            let data = &bytes[self.hlen..];
            if self.large.contains(Flags::LINEARBUF)
                && !self.large.contains(Flags::EXTBUF)
                && data.len() > MBUF_ROOM
            {
                too_large += 1;
                continue;
            }
            good.push(bytes);
        }
        assert_eq!(
            after.stats.bad_chains - before.stats.bad_chains,
            bad,
            "dequeue: bad chains"
        );
        assert_eq!(
            after.stats.too_large - before.stats.too_large,
            too_large,
            "dequeue: too large"
        );
        assert_eq!(out.len(), good.len(), "dequeue: packets");
        for (k, (m, bytes)) in out.iter().zip(&good).enumerate() {
            let got: Vec<u8> = m.segments().flat_map(|s| s.data().to_vec()).collect();
            let data = &bytes[self.hlen..];
            if bytes[0] | bytes[1] == 0 {
                assert!(got == data, "dequeue: packet {k} differs from its chain");
            } else {
                // Offloads may complete a checksum in the packet: the length is what is kept.
                assert_eq!(got.len(), data.len(), "dequeue: packet {k} length");
            }
        }
    }

    fn packet(&mut self, p: &Pkt) -> Option<(Mbuf, Vec<u8>)> {
        build_packet(&mut self.cache, p.len, p.seed, p.seg)
    }

    fn enqueue(&mut self, spec: &[Pkt]) {
        let mut pkts = Vec::new();
        let mut datas = Vec::new();
        for p in spec.iter().take(32) {
            match self.packet(p) {
                Some((m, d)) => {
                    pkts.push(m);
                    datas.push(d);
                }
                None => break,
            }
        }
        let r = self.ring(true);
        let before = self.side(0);
        let pending = self
            .guest
            .u16_at(r.avail + 2)
            .wrapping_sub(before.last_avail);
        let n = pending.min(r.size);
        let walks: Vec<Walk> = self
            .heads(&r, before.last_avail, n)
            .iter()
            .map(|&h| {
                if h < r.size {
                    r.walk(&self.guest, h, true)
                } else {
                    Walk::Bad
                }
            })
            .collect();
        // Clean: no buffer the burst may write overlaps another, a ring or a table it reads.
        let mut spans = vec![
            (r.desc, 16 * u64::from(r.size)),
            (r.avail, r.avail_len()),
            (r.used, r.used_len()),
        ];
        for w in &walks {
            if let Walk::Ok { pieces, tables, .. } = w {
                spans.extend(pieces);
                spans.extend(tables);
            }
        }
        let clean = !overlapping(spans);
        let sent = enqueue_burst(&self.dev, QueuePair(0).rx(), &pkts);
        assert!(sent <= pkts.len(), "enqueue: sent more than given");
        let after = self.side(0);
        let taken = self.ring_checks(true, &before, &after, clean);
        let used = self.used(&r, before.last_used, taken);
        let d = |f: fn(&QueueStats) -> u64| f(&after.stats) - f(&before.stats);
        assert_eq!(
            d(|s| s.packets) + d(|s| s.too_large),
            sent as u64,
            "enqueue: packets counted"
        );
        // Used lengths add up, packet by packet, to the header plus the packet.
        let mut p = 0;
        let mut acc = 0u64;
        let mut members = Vec::new();
        let mut bad = 0u64;
        // Chains of more than 128 buffers are malformed only if a packet needs that many.
        let mut maybe_bad = 0u64;
        for (k, &(_, len)) in used.iter().enumerate() {
            let walk = &walks[k];
            if clean {
                match walk {
                    Walk::Bad => {
                        assert_eq!(len, 0, "enqueue: a malformed chain has a used length");
                        bad += 1;
                        continue;
                    }
                    Walk::Ok { total, pieces, .. } => {
                        assert!(
                            u64::from(len) <= *total,
                            "enqueue: used length over the chain"
                        );
                        if pieces.len() > MAX_PIECES && len == 0 {
                            maybe_bad += 1;
                        }
                    }
                }
            }
            members.push(k);
            if len == 0 {
                continue;
            }
            assert!(p < sent, "enqueue: a used length for a packet not sent");
            acc += u64::from(len);
            let need = (self.hlen + datas[p].len()) as u64;
            assert!(acc <= need, "enqueue: packet {p} got {acc} bytes of {need}");
            if acc == need {
                if clean {
                    self.enqueue_bytes(p, &datas[p], &members, &used, &walks);
                }
                p += 1;
                acc = 0;
                members.clear();
            }
        }
        assert_eq!(acc, 0, "enqueue: a packet cut short");
        assert_eq!(
            p, sent,
            "enqueue: used entries for {p} packets, {sent} sent"
        );
        if clean {
            let counted = d(|s| s.bad_chains);
            assert!(
                bad <= counted && counted <= bad + maybe_bad,
                "enqueue: {counted} bad chains counted, the model finds {bad} (+{maybe_bad})"
            );
        }
        self.cache.free_bulk(pkts);
    }

    /// The guest reads packet `p` back from the chains of used entries `members`.
    fn enqueue_bytes(
        &self,
        p: usize,
        data: &[u8],
        members: &[usize],
        used: &[(u32, u32)],
        walks: &[Walk],
    ) {
        let mut got = Vec::new();
        let mut nonzero = 0;
        for &k in members {
            let len = u64::from(used[k].1);
            if len == 0 {
                continue;
            }
            nonzero += 1;
            let Walk::Ok { pieces, .. } = &walks[k] else {
                unreachable!("checked: a malformed chain has length 0")
            };
            let mut left = len;
            for &(a, l) in pieces {
                let n = l.min(left);
                got.extend(self.guest.read(a, n).unwrap());
                left -= n;
                if left == 0 {
                    break;
                }
            }
        }
        let h = self.hlen;
        assert_eq!(got.len(), h + data.len());
        assert!(
            got[..10].iter().all(|&b| b == 0),
            "enqueue: packet {p} header {:?}",
            &got[..h]
        );
        if h == 12 {
            let nb = u16::from_le_bytes([got[10], got[11]]) as usize;
            if self.mergeable {
                assert!(
                    nb >= nonzero && nb <= members.len(),
                    "enqueue: packet {p} num_buffers {nb}, {nonzero} buffers used of {}",
                    members.len()
                );
            } else {
                assert_eq!(nb, 1, "enqueue: packet {p} num_buffers");
            }
        }
        assert!(
            got[h..] == *data,
            "enqueue: packet {p} differs in the guest"
        );
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Desc { rx, idx, desc } => {
                let r = self.ring(*rx);
                self.raw_desc(r.desc + 16 * u64::from(idx % r.size), desc);
            }
            Op::Chain {
                rx,
                head,
                bufs,
                indirect,
                post,
            } => {
                self.chain(*rx, *head, bufs, *indirect);
                if *post {
                    // A packet: a header without offloads, then a pattern.
                    // Guest memory is at most 160 KiB: no buffer needs more than 32 KiB of
                    // pattern (a longer descriptor reads what the memory holds).
                    let fill = |l: u16| usize::from(l).min(0x8000);
                    let total: usize = bufs.iter().take(200).map(|&(_, l)| fill(l)).sum::<usize>();
                    let bytes = packet_bytes(*head as u8, total);
                    let mut at = 0;
                    for &(a, len) in bufs.iter().take(200) {
                        let len = fill(len);
                        self.guest.write(self.addr(a), &bytes[at..at + len]);
                        at += len;
                    }
                    self.avail(*rx, &[*head], false);
                }
            }
            Op::Simple { rx, head, len } => {
                let r = self.ring(*rx);
                let head = u16::from(*head) % r.size;
                let at = self.region_spans[0].0 + RING_BYTES + 0x800 * u64::from(head % 4);
                let len = len % 0x801;
                let w = if *rx { WRITE } else { 0 };
                self.write_desc(r.desc + 16 * u64::from(head), at, u32::from(len), w, 0);
                self.guest
                    .write(at, &packet_bytes(head as u8, usize::from(len)));
                self.avail(*rx, &[head], false);
            }
            Op::Table { at, descs } => {
                let at = self.addr(*at);
                for (k, d) in descs.iter().take(300).enumerate() {
                    self.raw_desc(at.wrapping_add(16 * k as u64), d);
                }
            }
            Op::Fill { at, len, seed } => {
                let bytes = pattern_bytes(*seed, usize::from(*len).min(0x8000));
                self.guest.write(self.addr(*at), &bytes);
            }
            Op::Avail { rx, heads } => self.avail(*rx, heads, false),
            Op::BadHead { rx, head } => self.avail(*rx, &[*head], true),
            Op::AvailIdx { rx, delta } => {
                let r = self.ring(*rx);
                let idx = self.guest.u16_at(r.avail + 2);
                self.guest
                    .set_u16(r.avail + 2, idx.wrapping_add_signed(*delta));
            }
            Op::Rebase { rx } => {
                let r = self.ring(*rx);
                let base = self.guest.u16_at(r.avail + 2);
                let s = VringState {
                    index: u32::from(!*rx),
                    num: u32::from(base),
                };
                send_ok(
                    &self.wire,
                    &mut self.session,
                    FrontendReq::SetVringBase,
                    &s.to_bytes(),
                    &[],
                );
                let side = self.side(usize::from(!*rx));
                assert!(
                    !side.broken && side.last_avail == base,
                    "SET_VRING_BASE: {side:?}"
                );
            }
            Op::Suppress {
                rx,
                flags,
                used_event,
            } => {
                let r = self.ring(*rx);
                self.guest.set_u16(r.avail, *flags);
                if r.event_idx {
                    self.guest
                        .set_u16(r.avail + 4 + 2 * u64::from(r.size), *used_event);
                }
            }
            Op::Dequeue { max } => self.dequeue(*max),
            Op::Enqueue { pkts } => self.enqueue(pkts),
        }
    }
}

fn run(input: &Input) {
    let mut h = setup(input);
    for op in input.ops.iter().take(64) {
        h.op(op);
    }
    let Harness {
        wire,
        session,
        guest,
        calls,
        cache,
        dev,
        ..
    } = h;
    drop(session);
    drop((wire, guest, calls, cache, dev));
}

fuzz_target!(|input: Input| {
    let pool = pool();
    let fds = fd_count();
    run(&input);
    assert_eq!(fd_count(), fds, "fds leaked");
    assert_eq!(
        mappings_named(rvhost_fuzz::GUEST_MEMFD),
        0,
        "a guest region is still mapped"
    );
    assert_eq!(pool.in_use(), 0, "mbufs leaked");
});
