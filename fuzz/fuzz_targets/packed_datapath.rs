//! The packed-ring data path (virtio 1.2 §2.8: `PackedBurst`, `PackedQueue::avail_chain`,
//! `PackedChain`) over a fuzzed guest: the packed counterpart of `split_datapath`.
//!
//! Each input lays out guest memory as `split_datapath` does (one to four memfd regions between
//! guard pages, with fuzzed holes), negotiates `VIRTIO_F_RING_PACKED` through the real message
//! path (`Session`), with fuzzed queue sizes (1 to 256, any value) and a fuzzed vring base
//! (slot and wrap counter), then runs a sequence of guest actions and bursts. The guest keeps
//! its own available position per ring, as a driver does, and writes: well-formed chains
//! (direct, NEXT over consecutive slots wrapping the ring's end, or one slot pointing at an
//! indirect table) with a fuzzed buffer id (in range, raw, so often beyond the size, and
//! duplicated when it repeats); raw descriptors with fuzzed flags (NEXT, WRITE, INDIRECT, an
//! undefined bit, and AVAIL/USED of the right lap, the wrong lap, used, or raw); raw indirect
//! tables; packet bytes; driver event suppression settings; skips of its position and
//! SET_VRING_BASE at it. Bursts: `dequeue_burst` with a fuzzed maximum, `enqueue_burst` with
//! fuzzed packets (single or multi-segment; MRG_RXBUF on or off).
//!
//! Before each burst the harness reads the ring as the device will and models the packed rules
//! (`PackedQueue::avail_chain` and `PackedChain`): from the device's available position, a chain
//! is the run of slots linked by NEXT, each after the first available for its own lap; it breaks
//! the queue if a slot is not available, if it is longer than the slots the device may read
//! (the queue size less the slots of the chains the burst holds back: see `budget` below), if
//! its id (the last descriptor's) is not below the size or is already in flight (taken earlier
//! in the same burst: its used descriptor becomes visible only when the burst ends, for
//! enqueue from the shadow, for dequeue when the burst's first, held back, is written).
//! A well-shaped chain is malformed (used with length 0, counted in `bad_chains`) for: INDIRECT
//! with NEXT or in a chain of more than one slot, an indirect length of 0, not a multiple of 16
//! or over `MAX_INDIRECT` entries, a table not inside one region, a buffer not wholly in guest
//! memory, the wrong permission (WRITE on a transmit queue, none on a receive queue; WRITE in
//! an indirect table of a transmit chain is tolerated), more than 256 KiB, more than 128 buffers
//! for one packet. After each burst it checks:
//! - no panic, no access outside guest memory (the guard pages make one crash);
//! - the device's positions: available and used positions equal before and after (the sync
//!   path returns every chain it takes), moved by the slots of a prefix of the model's chains,
//!   never more than the ring's size in one burst;
//! - the used descriptors, when the burst cannot have changed what it read (no buffer over the
//!   descriptor ring, a table or another buffer): one per chain taken, in order, each at the
//!   used position (advancing by the chain's slots), with AVAIL = USED = the wrap counter of its
//!   lap, the chain's buffer id, WRITE set iff the length is not 0, a length no more than the
//!   chain's writable bytes, 0 for a malformed chain and for every dequeued chain;
//! - the queue broken exactly when the model says: on dequeue, iff a chain the burst reached
//!   breaks it; on enqueue (where a packet that does not fit stops the burst early, and
//!   mergeable packets give chains back), broken only if a chain at or after the first one not
//!   taken breaks it, or with MRG_RXBUF, could under a smaller budget (a chain of several slots),
//!   and broken when packets were left, every chain was used and the next one breaks it;
//! - dequeue: the packets are the model's good chains, in order, byte for byte (header's
//!   offload bytes clear), `bad_chains`/`too_large` count the others; enqueue: used lengths add
//!   up, packet by packet, to the header plus the packet, whose bytes and `num_buffers` the
//!   guest reads back, and `bad_chains` is the model's malformed chains (when clean);
//! - the interrupts counted are the call eventfd's writes, and (when clean) a burst that used
//!   descriptors interrupts exactly as the driver event suppression area asks (DISABLE never;
//!   DESC with EVENT_IDX when its position is among the slots used; otherwise always), and
//!   without EVENT_IDX sets the device event area to DISABLE; every mbuf is freed; no fd or
//!   guest mapping is left once the session is dropped.
//!
//! Not checked: a burst that is not clean gets only the position, one-lap, counter and
//! eventfd checks; a dequeue burst that failed to allocate mbufs gets no chain or byte checks;
//! the dirty log, the async path (refused on packed rings) and the device event area's
//! contents with EVENT_IDX are not exercised.

#![no_main]

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rvhost::driver::session::{Session, SessionOptions};
use rvhost::driver::{Device, Flags};
use rvhost::features::{
    DEFAULT_FEATURES, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
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
/// Byte offsets in region 0 of (descriptor ring, driver event area, device event area) of
/// vring 0 (rx) and vring 1 (tx), room for 256 descriptors each.
const RINGS: [(u64, u64, u64); 2] = [(0, 0x1000, 0x1010), (0x2000, 0x3000, 0x3010)];
/// Bytes of region 0 the rings take.
const RING_BYTES: u64 = 0x4000;
/// What the walker allows per chain, buffers per packet, entries per indirect table
/// (rvhost's documented limits).
const MAX_PKT_LEN: u64 = 256 * 1024;
const MAX_PIECES: usize = 128;
const MAX_INDIRECT: u32 = 32768;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const AVAIL: u16 = 1 << 7;
const USED: u16 = 1 << 15;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit 0 MRG_RXBUF, 1 EVENT_IDX, 2 INDIRECT_DESC, 3 LINEARBUF, 4 EXTBUF.
    mode: u8,
    /// Queue sizes (rx, tx), modulo 256, plus 1.
    qsize: (u8, u8),
    /// Vring bases (rx, tx): the slot (modulo the size) and, in bit 15, the wrap counter.
    bases: (u16, u16),
    /// First region's guest page.
    base: u8,
    /// Further regions: (pages, hole before it in pages).
    regions: Vec<(u8, u8)>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A chain written the way a driver does at its available position: consecutive slots
    /// with NEXT and WRITE set right (or one slot pointing at an indirect table at `indirect`),
    /// every descriptor available for its lap and carrying the id; the position moves on.
    Chain {
        rx: bool,
        id: Id,
        bufs: Vec<(Addr, u16)>,
        indirect: Option<Addr>,
        /// Fill its buffers with a pattern (a packet to transmit).
        post: bool,
    },
    /// The common case in a few bytes: a one-slot chain, its buffer in one of four 2 KiB slots
    /// after the rings (a pattern in it), id = its slot.
    Simple {
        rx: bool,
        len: u16,
    },
    /// A raw descriptor at the guest's position (`advance`: the position then moves on).
    Raw {
        rx: bool,
        desc: D,
        lap: Lap,
        id: Id,
        advance: bool,
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
    /// The guest's position moves by `n` slots without writing.
    Skip {
        rx: bool,
        n: u8,
    },
    /// SET_VRING_BASE at the guest's position (how a broken vring is revived).
    Rebase {
        rx: bool,
    },
    /// The driver event suppression area: flags (0 enable, 1 disable, 2 desc, 3 reserved)
    /// and off_wrap.
    Suppress {
        rx: bool,
        flags: u16,
        off_wrap: u16,
    },
    Dequeue {
        max: u8,
    },
    Enqueue {
        pkts: Vec<Pkt>,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    /// Modulo the queue size.
    In(u16),
    /// As is.
    Raw(u16),
}

/// The AVAIL/USED bits of a raw descriptor.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Lap {
    /// Available for the lap it is in.
    Right,
    /// Available for the other lap.
    Wrong,
    /// Used, in the lap it is in.
    Used,
    /// Both bits as given.
    Raw(bool, bool),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct D {
    addr: Addr,
    len: Len,
    flags: u8,
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

/// A ring position: slot and wrap counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    idx: u16,
    wrap: bool,
}

impl Pos {
    fn advance(self, n: u16, size: u16) -> Pos {
        let t = u32::from(self.idx) + u32::from(n);
        let s = u32::from(size);
        Pos {
            idx: (t % s) as u16,
            wrap: self.wrap ^ ((t / s) % 2 == 1),
        }
    }

    /// Slots from `from` to `self`, less than two laps.
    fn since(self, from: Pos, size: u16) -> u32 {
        let ext = |p: Pos| u32::from(p.idx) + if p.wrap { 0 } else { u32::from(size) };
        let m = 2 * u32::from(size);
        (ext(self) + m - ext(from)) % m
    }
}

fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & AVAIL != 0) == wrap && (flags & USED != 0) != wrap
}

fn used_bits(wrap: bool) -> u16 {
    if wrap { AVAIL | USED } else { 0 }
}

fn avail_bits(wrap: bool) -> u16 {
    if wrap { AVAIL } else { USED }
}

/// A descriptor as read: (addr, len, id, flags).
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

fn parse(b: [u8; 16]) -> Desc {
    Desc {
        addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
        id: u16::from_le_bytes([b[12], b[13]]),
        flags: u16::from_le_bytes([b[14], b[15]]),
    }
}

/// A chain's buffers as the model walks them.
#[derive(Debug, Clone)]
enum Walk {
    Ok {
        /// Non-empty buffers, split where they cross a region end: (gpa, len).
        pieces: Vec<(u64, u64)>,
        /// Bytes the descriptors add up to.
        total: u64,
        /// What the walk read besides the ring: indirect tables.
        tables: Vec<(u64, u64)>,
    },
    Bad,
}

/// One chain of the model: where it starts, its slots, its id, its buffers.
#[derive(Debug, Clone)]
struct MChain {
    pos: Pos,
    count: u16,
    id: u16,
    walk: Walk,
}

/// Why the model's run of chains ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The next slot is not available (or the model was asked to stop).
    Empty,
    /// The next chain breaks the queue.
    Break,
}

/// One ring of the device, from the guest's side.
#[derive(Clone, Copy)]
struct Ring {
    desc: u64,
    driver: u64,
    device: u64,
    size: u16,
}

impl Ring {
    fn slot(&self, idx: u16) -> u64 {
        self.desc + 16 * u64::from(idx)
    }

    fn read(&self, g: &Guest, idx: u16) -> Desc {
        parse(
            g.read_arr::<16>(self.slot(idx))
                .expect("the ring is mapped"),
        )
    }

    /// The chains from `start` on, as the device reads them (see the module docs): at most
    /// `max_chains`. Used descriptors become visible at the burst's end (both directions), so
    /// the ids of the chains before stay in flight. The budget is the queue size: the device counts
    /// only the slots of the chains it holds for the packet being placed (`PackedBurst::budget`
    /// measures from the used position, shadowed descriptors included), which a mergeable
    /// enqueue makes smaller; the caller allows for that.
    fn chains(
        &self,
        g: &Guest,
        start: Pos,
        writable: bool,
        max_chains: usize,
    ) -> (Vec<MChain>, End) {
        let size = self.size;
        let mut out = Vec::new();
        let mut pos = start;
        let mut ids = HashSet::new();
        loop {
            if out.len() >= max_chains {
                return (out, End::Empty);
            }
            let first = self.read(g, pos.idx);
            if !is_avail(first.flags, pos.wrap) {
                return (out, End::Empty);
            }
            let mut last = first;
            let mut at = pos;
            let mut count = 1u16;
            while last.flags & NEXT != 0 {
                if count == size {
                    return (out, End::Break);
                }
                at = at.advance(1, size);
                let d = self.read(g, at.idx);
                if !is_avail(d.flags, at.wrap) {
                    return (out, End::Break);
                }
                last = d;
                count += 1;
            }
            if last.id >= size || ids.contains(&last.id) {
                return (out, End::Break);
            }
            let walk = self.walk(g, pos, count, writable);
            out.push(MChain {
                pos,
                count,
                id: last.id,
                walk,
            });
            ids.insert(last.id);
            pos = pos.advance(count, size);
        }
    }

    /// The model of `PackedChain`: the buffers of the chain of `count` slots at `pos`.
    fn walk(&self, g: &Guest, pos: Pos, count: u16, writable: bool) -> Walk {
        let mut pieces = Vec::new();
        let mut tables = Vec::new();
        let mut total = 0u64;
        let mut descs: Vec<(Desc, bool)> = (0..count)
            .map(|k| (self.read(g, pos.advance(k, self.size).idx), false))
            .collect();
        if descs.len() == 1 && descs[0].0.flags & INDIRECT != 0 {
            let d = descs[0].0;
            if d.flags & NEXT != 0
                || d.len == 0
                || !d.len.is_multiple_of(16)
                || d.len / 16 > MAX_INDIRECT
            {
                return Walk::Bad;
            }
            if !g.in_one_region(d.addr, u64::from(d.len)) {
                return Walk::Bad;
            }
            tables.push((d.addr, u64::from(d.len)));
            descs = (0..d.len / 16)
                .map(|k| {
                    let b = g.read_arr::<16>(d.addr + 16 * u64::from(k)).unwrap();
                    (parse(b), true)
                })
                .collect();
        }
        for (d, in_table) in descs {
            if !in_table && d.flags & INDIRECT != 0 {
                // INDIRECT in a chain of several slots.
                return Walk::Bad;
            }
            let write = d.flags & WRITE != 0;
            if write != writable && !(in_table && write && !writable) {
                return Walk::Bad;
            }
            total += u64::from(d.len);
            if total > MAX_PKT_LEN {
                return Walk::Bad;
            }
            let mut a = d.addr;
            let mut left = u64::from(d.len);
            while left > 0 {
                let Some((r, off)) = g.find(a) else {
                    return Walk::Bad;
                };
                let n = (r.size - off).min(left);
                pieces.push((a, n));
                a += n;
                left -= n;
            }
        }
        Walk::Ok {
            pieces,
            total,
            tables,
        }
    }
}

struct Harness {
    wire: Wire,
    session: Session,
    dev: Device,
    guest: Guest,
    rings: [Ring; 2],
    /// The guest's available position per ring (rx, tx).
    drv: [Pos; 2],
    /// Copies of the call eventfds handed to the backend (rx, tx).
    calls: [OwnedFd; 2],
    cache: PktCache,
    hlen: usize,
    mergeable: bool,
    event_idx: bool,
    large: Flags,
    region_spans: Vec<(u64, u64)>,
}

fn setup(input: &Input) -> Harness {
    let mode = input.mode;
    let mut features = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_PACKED;
    for (bit, f) in [
        (0, VIRTIO_NET_F_MRG_RXBUF),
        (1, VIRTIO_RING_F_EVENT_IDX),
        (2, VIRTIO_RING_F_INDIRECT_DESC),
    ] {
        if mode & (1 << bit) != 0 {
            features |= f;
        }
    }
    let mut flags = Flags::empty();
    if mode & 8 != 0 {
        flags = flags | Flags::LINEARBUF;
    }
    if mode & 16 != 0 {
        flags = flags | Flags::EXTBUF;
    }
    let opts = SessionOptions {
        flags,
        // Packed rings are offered only when the application enables them.
        features: DEFAULT_FEATURES | VIRTIO_F_RING_PACKED,
        guard_pages: true,
        max_queue_pairs: 1,
        ..SessionOptions::default()
    };
    let (wire, backend) = Wire::pair();
    let cb = Arc::new(Callbacks::default());
    let mut session = Session::new(backend, opts, Arc::clone(&cb) as _).expect("session");

    let (guest, fds, table) = layout(input.base, RING_REGION_PAGES, &input.regions);
    let spans: Vec<(u64, u64)> = guest.regions.iter().map(|r| (r.gpa, r.size)).collect();
    let sizes = [u16::from(input.qsize.0) + 1, u16::from(input.qsize.1) + 1];
    let g0 = spans[0].0;
    let rings = [0, 1].map(|v| Ring {
        desc: g0 + RINGS[v].0,
        driver: g0 + RINGS[v].1,
        device: g0 + RINGS[v].2,
        size: sizes[v],
    });
    let bases = [input.bases.0, input.bases.1];
    let drv = [0, 1].map(|v| Pos {
        idx: (bases[v] & 0x7fff) % sizes[v],
        wrap: bases[v] & 0x8000 != 0,
    });

    send_ok(&wire, &mut session, FrontendReq::SetOwner, &[], &[]);
    send_ok(
        &wire,
        &mut session,
        FrontendReq::SetFeatures,
        &features.to_bytes(),
        &[],
    );
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
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
        let p = drv[v as usize];
        let b = VringState {
            index: v,
            num: u32::from(p.idx) | u32::from(p.wrap) << 15,
        }
        .to_bytes();
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
    for v in 0..2 {
        let vq = dev.lock_vring(v).unwrap();
        assert!(vq.packed.is_some(), "vring {v} is not a packed ring");
    }
    Harness {
        wire,
        session,
        dev,
        guest,
        rings,
        drv,
        calls,
        cache: pool().cache(),
        hlen: rvhost::net::hdr::hdr_len(features),
        mergeable: features & VIRTIO_NET_F_MRG_RXBUF != 0,
        event_idx: features & VIRTIO_RING_F_EVENT_IDX != 0,
        large: flags,
        region_spans: spans,
    }
}

/// Where the device side of a vring stands.
#[derive(Debug, Clone, Copy)]
struct Side {
    avail: Pos,
    used: Pos,
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

    fn id(&self, rx: bool, id: Id) -> u16 {
        match id {
            Id::In(v) => v % self.ring(rx).size,
            Id::Raw(v) => v,
        }
    }

    fn write_desc(&self, at: u64, addr: u64, len: u32, id: u16, flags: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&id.to_le_bytes());
        d[14..16].copy_from_slice(&flags.to_le_bytes());
        self.guest.write(at, &d);
    }

    /// NEXT, WRITE, INDIRECT, and sometimes a flag no one defined.
    fn raw_flags(d: &D) -> u16 {
        u16::from(d.flags & 7) | if d.flags & 0x80 != 0 { 0x10 } else { 0 }
    }

    /// A driver's chain at its position; the position moves on.
    fn chain(&mut self, rx: bool, id: u16, bufs: &[(Addr, u16)], indirect: Option<Addr>) {
        let r = self.ring(rx);
        let v = usize::from(!rx);
        let n = bufs.len().min(r.size.into()).min(200);
        let bufs = &bufs[..n];
        let w = if rx { WRITE } else { 0 };
        let start = self.drv[v];
        match indirect {
            Some(t) => {
                let t = self.addr(t);
                for (k, &(a, len)) in bufs.iter().enumerate() {
                    // The table's NEXT flags and ids are ignored by the device.
                    let f = w | if k + 1 < n { NEXT } else { 0 };
                    let at = t.wrapping_add(16 * k as u64);
                    self.write_desc(at, self.addr(a), u32::from(len), 0, f);
                }
                let f = INDIRECT | avail_bits(start.wrap);
                self.write_desc(r.slot(start.idx), t, 16 * n as u32, id, f);
                self.drv[v] = start.advance(1, r.size);
            }
            None => {
                if n == 0 {
                    return;
                }
                // The first descriptor's flags last, as a driver does (one thread here: the
                // order is only the driver's habit).
                for (k, &(a, len)) in bufs.iter().enumerate().rev() {
                    let p = start.advance(k as u16, r.size);
                    let f = w | if k + 1 < n { NEXT } else { 0 } | avail_bits(p.wrap);
                    self.write_desc(r.slot(p.idx), self.addr(a), u32::from(len), id, f);
                }
                self.drv[v] = start.advance(n as u16, r.size);
            }
        }
    }

    fn side(&self, vring: usize) -> Side {
        let vq = self.dev.lock_vring(vring).unwrap();
        Side {
            avail: Pos {
                idx: vq.avail_pos.idx(),
                wrap: vq.avail_pos.wrap(),
            },
            used: Pos {
                idx: vq.used_pos.idx(),
                wrap: vq.used_pos.wrap(),
            },
            broken: vq.broken,
            stats: vq.stats,
        }
    }

    /// The checks every burst passes, against the model's `chains` (read before the burst):
    /// returns how many of them the burst took. `entries`: whether the used descriptors can be
    /// compared with the model (the burst cannot have changed what it read).
    fn ring_checks(
        &self,
        rx: bool,
        before: &Side,
        after: &Side,
        chains: &[MChain],
        entries: bool,
    ) -> usize {
        let what = if rx { "enqueue" } else { "dequeue" };
        let r = self.ring(rx);
        assert_eq!(
            before.avail, before.used,
            "{what}: chains left in flight before the burst"
        );
        assert_eq!(
            after.avail, after.used,
            "{what}: chains left in flight by the burst"
        );
        let slots = after.avail.since(before.avail, r.size);
        if before.broken {
            assert_eq!(slots, 0, "{what}: a broken vring took chains");
            assert!(after.broken, "{what}: a broken vring revived by a burst");
        }
        let irq = after.stats.interrupts - before.stats.interrupts;
        let calls = eventfd_take(self.calls[usize::from(!rx)].as_fd());
        assert_eq!(
            irq, calls,
            "{what}: interrupts counted vs call eventfd writes"
        );
        if entries && slots > 0 {
            // The driver event suppression area (virtio 1.2 §2.8.10, §2.8.14): DISABLE never,
            // DESC with EVENT_IDX when its position is among those the burst used, else always
            // (DESC without EVENT_IDX and the reserved value read as enabled).
            let off_wrap = self.guest.u16_at(r.driver);
            let flags = self.guest.u16_at(r.driver + 2) & 3;
            let want = match flags {
                1 => false,
                2 if self.event_idx => {
                    let e = Pos {
                        idx: off_wrap & 0x7fff,
                        wrap: off_wrap & 0x8000 != 0,
                    };
                    e.since(before.used, r.size) < after.used.since(before.used, r.size)
                }
                _ => true,
            };
            assert_eq!(
                irq,
                u64::from(want),
                "{what}: interrupt with driver event flags {flags}, off_wrap {off_wrap:#x}, used \
                 {:?} -> {:?}",
                before.used,
                after.used
            );
            if !self.event_idx {
                // The device polls: it asks the driver not to notify.
                assert_eq!(
                    self.guest.u16_at(r.device + 2),
                    1,
                    "{what}: device event flags without EVENT_IDX"
                );
            }
        }
        if !entries {
            return 0;
        }
        // Every slot the burst read was available for its lap: reading on past a lap would
        // need a slot available for both (only the burst's own writes, when it writes a packet
        // over the ring, can do that).
        assert!(
            slots <= u32::from(r.size),
            "{what}: {slots} slots taken in one burst, more than the ring's {}",
            r.size
        );
        // Which prefix of the model's chains the slots are.
        let mut taken = 0;
        let mut at = 0u32;
        while at < slots {
            assert!(
                taken < chains.len(),
                "{what}: {slots} slots taken, the model's chains cover {at}: {chains:?}"
            );
            at += u32::from(chains[taken].count);
            taken += 1;
        }
        assert_eq!(
            at, slots,
            "{what}: {slots} slots taken, not a whole number of chains"
        );
        // The used descriptors, in order at the used position.
        let mut pos = before.used;
        for (k, c) in chains[..taken].iter().enumerate() {
            assert_eq!(pos, c.pos, "{what}: chain {k} returned out of place");
            let d = r.read(&self.guest, pos.idx);
            let w = if d.len != 0 { WRITE } else { 0 };
            assert_eq!(
                d.flags,
                used_bits(pos.wrap) | w,
                "{what}: used descriptor {k} at {pos:?} flags ({d:?})"
            );
            assert_eq!(d.id, c.id, "{what}: used descriptor {k} id");
            match &c.walk {
                Walk::Bad => assert_eq!(d.len, 0, "{what}: malformed chain {k} has a length"),
                Walk::Ok { total, .. } => assert!(
                    u64::from(d.len) <= *total && (rx || d.len == 0),
                    "{what}: used descriptor {k} length {} of {total}",
                    d.len
                ),
            }
            pos = pos.advance(c.count, r.size);
        }
        taken
    }

    fn dequeue(&mut self, max: u8) {
        let r = self.ring(false);
        let before = self.side(1);
        let max = usize::from(max % 33);
        // The burst looks at the slots available from its position, up to `max` (and the size).
        let mut n = 0;
        while n < max.min(usize::from(r.size)) {
            let p = before.avail.advance(n as u16, r.size);
            if !is_avail(r.read(&self.guest, p.idx).flags, p.wrap) {
                break;
            }
            n += 1;
        }
        // A run of more than 4 slots stops at the last whole line of 4 slots
        // (`PackedBurst::available`).
        if n > 4 {
            n -= (usize::from(before.avail.idx) + n) % usize::from(r.size) % 4;
        }
        let (chains, end) = r.chains(&self.guest, before.avail, false, n);
        // The burst writes only used descriptors, in slots it has read: clean when no chain
        // reads the descriptor ring (beyond its own descriptors).
        let ring_span = (r.desc, 16 * u64::from(r.size));
        let clean = chains.iter().all(|c| match &c.walk {
            Walk::Ok { pieces, tables, .. } => pieces
                .iter()
                .chain(tables)
                .all(|&s| !overlapping(vec![s, ring_span])),
            Walk::Bad => true,
        });
        let mut out = Vec::new();
        let got = dequeue_burst(&self.dev, QueuePair(0).tx(), &mut self.cache, &mut out, max);
        assert_eq!(got, out.len(), "dequeue: returned count");
        let after = self.side(1);
        let alloc_ok = before.stats.alloc_failures == after.stats.alloc_failures;
        let taken = self.ring_checks(false, &before, &after, &chains, clean);
        assert!(taken <= max, "dequeue: took more than asked");
        let d = |f: fn(&QueueStats) -> u64| f(&after.stats) - f(&before.stats);
        assert_eq!(d(|s| s.packets), got as u64, "dequeue: packets counted");
        if clean && !before.broken && alloc_ok {
            // Every chain the burst reached was taken, up to the one that ends the run.
            assert_eq!(taken, chains.len(), "dequeue: chains taken");
            let broke = taken < n && end == End::Break;
            assert_eq!(
                after.broken, broke,
                "dequeue: broken after {taken} chains of {n} slots ({end:?})"
            );
            let counted = got as u64 + d(|s| s.bad_chains) + d(|s| s.too_large);
            assert_eq!(
                counted, taken as u64,
                "dequeue: a chain neither delivered nor counted"
            );
            self.dequeue_model(&chains[..taken], &out, &before, &after);
        }
        self.cache.free_bulk(out);
    }

    /// Dequeue's packets are the model's good chains, byte for byte.
    fn dequeue_model(&self, chains: &[MChain], out: &[Mbuf], before: &Side, after: &Side) {
        let mut bad = 0;
        let mut too_large = 0;
        let mut good = Vec::new();
        for c in chains {
            let Walk::Ok { pieces, .. } = &c.walk else {
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

    fn enqueue(&mut self, spec: &[Pkt]) {
        let mut pkts = Vec::new();
        let mut datas = Vec::new();
        for p in spec.iter().take(32) {
            match build_packet(&mut self.cache, p.len, p.seed, p.seg) {
                Some((m, d)) => {
                    pkts.push(m);
                    datas.push(d);
                }
                None => break,
            }
        }
        let r = self.ring(true);
        let before = self.side(0);
        let (chains, end) = r.chains(&self.guest, before.avail, true, usize::MAX);
        // Clean: no buffer the burst may write overlaps another, the rings or a table it
        // reads.
        let mut spans = vec![
            (r.desc, 16 * u64::from(r.size)),
            (r.driver, 4),
            (r.device, 4),
        ];
        for c in &chains {
            if let Walk::Ok { pieces, tables, .. } = &c.walk {
                spans.extend(pieces);
                spans.extend(tables);
            }
        }
        let clean = !overlapping(spans);
        let sent = enqueue_burst(&self.dev, QueuePair(0).rx(), &pkts);
        assert!(sent <= pkts.len(), "enqueue: sent more than given");
        let after = self.side(0);
        let taken = self.ring_checks(true, &before, &after, &chains, clean);
        let d = |f: fn(&QueueStats) -> u64| f(&after.stats) - f(&before.stats);
        assert_eq!(
            d(|s| s.packets) + d(|s| s.too_large),
            sent as u64,
            "enqueue: packets counted"
        );
        if !clean {
            self.cache.free_bulk(pkts);
            return;
        }
        if after.broken && !before.broken {
            // A packet that needed more chains gives back those it reserved: the chain that
            // broke the queue is at or after the first one not taken.
            // With MRG_RXBUF, a chain of several slots after the first one not taken may have
            // met a budget smaller than the size.
            let smaller = self.mergeable && chains[taken..].iter().any(|c| c.count > 1);
            assert!(
                end == End::Break || smaller,
                "enqueue: vring marked broken for nothing (after {taken} of {} chains)",
                chains.len()
            );
        }
        if !before.broken && sent < pkts.len() && taken == chains.len() && end == End::Break {
            // A packet was left and every chain before the bad one was used: the burst went on
            // to the bad chain (the only reason a packet stops here: no GSO packets, and no
            // chain left to be too short or too fragmented).
            assert!(
                after.broken,
                "enqueue: {sent} of {} sent, every chain used, the next one breaks the queue: \
                 not broken",
                pkts.len()
            );
        }
        // The used lengths, read back at the used positions.
        let used: Vec<u32> = chains[..taken]
            .iter()
            .map(|c| r.read(&self.guest, c.pos.idx).len)
            .collect();
        let mut p = 0;
        let mut acc = 0u64;
        let mut members = Vec::new();
        let mut bad = 0u64;
        // Chains of more than 128 buffers are malformed only if a packet needs that many.
        let mut maybe_bad = 0u64;
        for (k, &len) in used.iter().enumerate() {
            match &chains[k].walk {
                Walk::Bad => {
                    bad += 1;
                    continue;
                }
                Walk::Ok { pieces, .. } => {
                    if pieces.len() > MAX_PIECES && len == 0 {
                        maybe_bad += 1;
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
                self.enqueue_bytes(p, &datas[p], &members, &used, &chains);
                p += 1;
                acc = 0;
                members.clear();
            }
        }
        assert_eq!(acc, 0, "enqueue: a packet cut short");
        assert_eq!(
            p, sent,
            "enqueue: used descriptors for {p} packets, {sent} sent"
        );
        let counted = d(|s| s.bad_chains);
        assert!(
            bad <= counted && counted <= bad + maybe_bad,
            "enqueue: {counted} bad chains counted, the model finds {bad} (+{maybe_bad})"
        );
        self.cache.free_bulk(pkts);
    }

    /// The guest reads packet `p` back from the chains `members`.
    fn enqueue_bytes(
        &self,
        p: usize,
        data: &[u8],
        members: &[usize],
        used: &[u32],
        chains: &[MChain],
    ) {
        let mut got = Vec::new();
        let mut nonzero = 0;
        for &k in members {
            let len = u64::from(used[k]);
            if len == 0 {
                continue;
            }
            nonzero += 1;
            let Walk::Ok { pieces, .. } = &chains[k].walk else {
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
        assert!(
            got[h..] == *data,
            "enqueue: packet {p} differs in the guest"
        );
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Chain {
                rx,
                id,
                bufs,
                indirect,
                post,
            } => {
                let id = self.id(*rx, *id);
                self.chain(*rx, id, bufs, *indirect);
                if *post {
                    // A packet: a header without offloads, then a pattern (no buffer needs
                    // more than 32 KiB of it: guest memory is at most 160 KiB).
                    let fill = |l: u16| usize::from(l).min(0x8000);
                    let total: usize = bufs.iter().take(200).map(|&(_, l)| fill(l)).sum();
                    let bytes = packet_bytes(id as u8, total);
                    let mut at = 0;
                    for &(a, len) in bufs.iter().take(200) {
                        let len = fill(len);
                        self.guest.write(self.addr(a), &bytes[at..at + len]);
                        at += len;
                    }
                }
            }
            Op::Simple { rx, len } => {
                let r = self.ring(*rx);
                let v = usize::from(!*rx);
                let p = self.drv[v];
                let at = self.region_spans[0].0 + RING_BYTES + 0x800 * u64::from(p.idx % 4);
                let len = len % 0x801;
                let w = if *rx { WRITE } else { 0 };
                self.guest
                    .write(at, &packet_bytes(p.idx as u8, usize::from(len)));
                let f = w | avail_bits(p.wrap);
                self.write_desc(r.slot(p.idx), at, u32::from(len), p.idx, f);
                self.drv[v] = p.advance(1, r.size);
            }
            Op::Raw {
                rx,
                desc,
                lap,
                id,
                advance,
            } => {
                let r = self.ring(*rx);
                let v = usize::from(!*rx);
                let p = self.drv[v];
                let bits = match lap {
                    Lap::Right => avail_bits(p.wrap),
                    Lap::Wrong => avail_bits(!p.wrap),
                    Lap::Used => used_bits(p.wrap),
                    Lap::Raw(a, u) => (if *a { AVAIL } else { 0 }) | (if *u { USED } else { 0 }),
                };
                let id = self.id(*rx, *id);
                let f = Self::raw_flags(desc) | bits;
                self.write_desc(r.slot(p.idx), self.addr(desc.addr), desc.len.get(), id, f);
                if *advance {
                    self.drv[v] = p.advance(1, r.size);
                }
            }
            Op::Table { at, descs } => {
                let at = self.addr(*at);
                for (k, d) in descs.iter().take(300).enumerate() {
                    let f = Self::raw_flags(d);
                    let a = at.wrapping_add(16 * k as u64);
                    self.write_desc(a, self.addr(d.addr), d.len.get(), 0, f);
                }
            }
            Op::Fill { at, len, seed } => {
                let bytes = pattern_bytes(*seed, usize::from(*len).min(0x8000));
                self.guest.write(self.addr(*at), &bytes);
            }
            Op::Skip { rx, n } => {
                let v = usize::from(!*rx);
                self.drv[v] = self.drv[v].advance(u16::from(*n), self.ring(*rx).size);
            }
            Op::Rebase { rx } => {
                let v = usize::from(!*rx);
                let p = self.drv[v];
                let s = VringState {
                    index: v as u32,
                    num: u32::from(p.idx) | u32::from(p.wrap) << 15,
                };
                send_ok(
                    &self.wire,
                    &mut self.session,
                    FrontendReq::SetVringBase,
                    &s.to_bytes(),
                    &[],
                );
                let side = self.side(v);
                assert!(
                    !side.broken && side.avail == p && side.used == p,
                    "SET_VRING_BASE: {side:?}"
                );
            }
            Op::Suppress {
                rx,
                flags,
                off_wrap,
            } => {
                let r = self.ring(*rx);
                self.guest.set_u16(r.driver, *off_wrap);
                self.guest.set_u16(r.driver + 2, flags % 4);
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
