//! The vhost-user message path against arbitrary message sequences.
//!
//! Each input is a device configuration and a sequence of operations: well-framed messages
//! (any request code, payloads built from fuzzed fields so that they often parse, fds the
//! harness makes: memfds of a fuzzed size, eventfds, sockets, pipes, chosen per message),
//! raw bytes (framing: cut headers, lying sizes, garbage), guest writes into the memfds,
//! data-plane bursts, and hang-ups. Each message goes the real way, in this thread: the
//! frontend's bytes through the socket, `Connection::recv`, the policy check, the handler
//! table, the reply (`Session::serve`).
//!
//! Checked after every operation, besides "no panic" (and with ASan, no memory error):
//! - replies are well-formed (version 1, REPLY, no NEED_REPLY, size as announced), answer the
//!   request sent, and come exactly when the policy says (one for a request that always
//!   replies or that asked with NEED_REPLY, none otherwise), none from a message that closes
//!   the connection; acks are 0 or 1; only GET_INFLIGHT_FD's reply carries an fd;
//! - what the replies say: offered features, queue count, slots, status, vring base, config;
//!   SET_LOG_BASE's (with LOG_SHMFD) is empty and every vring then holds the dirty log;
//! - a request refused with a failure status leaves the device's state as it was (features,
//!   status, MTU, owner, memory table, every vring); one acked 0 did what it says;
//! - a message the policy refuses closes the connection; a closed connection has its device
//!   stopped, rings reset and memory and dirty log dropped; callbacks come in DPDK's order;
//! - and per input: once the session is dropped, the process has the fds and mappings it had
//!   before, and every mbuf is back in the pool.

#![no_main]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rvhost::driver::Flags;
use rvhost::driver::session::{Served, Session, SessionOptions};
use rvhost::features::{self, protocol as pf};
use rvhost::mbuf::{DEFAULT_DATA_ROOM, PktCache, PktPool};
use rvhost::memory::RegionDesc;
use rvhost::net::{QueuePair, dequeue_burst, enqueue_burst};
use rvhost::protocol::payload::{
    Config, InflightInfo, MemoryRegion, MemoryTable, Payload, SingleMemRegion, VringAddr,
    VringFile, VringState,
};
use rvhost::protocol::{FrontendReq, Header, Reply, policy};
use rvhost::virtq::VringAddrs;
use rvhost_fuzz::{Callbacks, Wire, eventfd, fd_count, mappings_named, memfd, replies};
use rvhost_hugepages::region::{PageSize, RegionConfig};

const PAGE: u64 = 4096;
/// Regions and ring addresses are placed on a grid of 64 KiB slots, so that fuzzed tables
/// overlap, duplicate and contain each other's rings often.
const SLOT: u64 = 0x1_0000;
const UVA_BASE: u64 = 0x7f00_0000_0000;
/// Largest memfd the harness makes.
const MAX_MEMFD: u64 = 1 << 20;

fn pool() -> &'static PktPool {
    static POOL: OnceLock<PktPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let region = RegionConfig::default().with_page_size(PageSize::Small);
        PktPool::new("fuzz-msg", 2048, DEFAULT_DATA_ROOM, 32, region).expect("mbuf pool")
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Registration flags: LINEARBUF, EXTBUF.
    flags: u8,
    /// Queue pairs offered, 1 to 4.
    pairs: u8,
    /// Virtio features withheld from the default offer.
    withhold: u64,
    /// Protocol features withheld from the default offer.
    withhold_protocol: u64,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Msg(Msg),
    /// Bytes as they are, with fds.
    Raw(Vec<u8>, Vec<FdKind>),
    /// The guest writes into memfd `memfd` (of those made so far) at `offset`.
    Poke {
        memfd: u8,
        offset: u32,
        bytes: Vec<u8>,
    },
    /// One dequeue and one enqueue burst on a queue pair.
    Burst {
        pair: u8,
        len: u16,
    },
    /// The frontend shuts its write side: EOF.
    HangUp,
    /// A whole device setup, as a frontend sends it (each message checked as above): owner,
    /// features, a memory table of one region holding the rings of queue pair 0, and for
    /// vrings 0 and 1 size, addresses, base, call and kick.
    Setup {
        features: u64,
        log2_size: u8,
        need_reply: bool,
    },
    /// The guest posts descriptor `head` (one buffer of `len` bytes after the rings) on vring
    /// `vring` of the last Setup's layout, and makes it available.
    Post {
        vring: bool,
        head: u8,
        len: u16,
    },
}

/// Where a Setup put the rings: (descriptor table, available ring, used ring) offsets in its
/// region, per vring, and where buffers go.
const LAYOUT: [(u64, u64, u64); 2] = [(0, 0x1000, 0x2000), (0x3000, 0x4000, 0x5000)];
const LAYOUT_PAGES: u8 = 8;
const LAYOUT_BUFS: u64 = 0x6000;

#[derive(Arbitrary, Debug)]
struct Msg {
    req: Req,
    need_reply: bool,
    /// Flag bits xored into the header (reserved bits, REPLY, version).
    flip: Option<u8>,
    /// Announce this size instead of the payload's.
    lie: Option<u16>,
    body: Body,
    /// `None`: the fds the request calls for, made to fit; else these.
    fds: Option<Vec<FdKind>>,
}

#[derive(Arbitrary, Debug)]
enum Req {
    Known(u8),
    Any(u32),
}

impl Req {
    fn code(&self) -> u32 {
        match *self {
            Req::Known(i) => FrontendReq::ALL[usize::from(i) % FrontendReq::ALL.len()].code(),
            Req::Any(c) => c,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Empty,
    U64(u64),
    /// A small `u64` (MTUs, status bytes, enable values, vring indexes).
    Small(u8),
    /// Offered virtio features masked by this (SET_FEATURES that is usually legal).
    Features(u64),
    /// Offered protocol features masked by this.
    ProtocolFeatures(u64),
    State {
        index: u8,
        num: u32,
    },
    File {
        index: u8,
        no_fd: bool,
        junk: bool,
    },
    Addr {
        index: u8,
        flags: u8,
        desc: Va,
        used: Va,
        avail: Va,
        log: u64,
    },
    Table(Vec<Region>),
    MemReg(Region),
    Inflight {
        size: u32,
        offset: u16,
        num_queues: u16,
        queue_size: u16,
    },
    Config {
        offset: u16,
        flags: u32,
        len: u16,
    },
    Raw(Vec<u8>),
}

/// A frontend address: on the slot grid (16-byte aligned), or anything.
#[derive(Arbitrary, Debug)]
enum Va {
    Grid { slot: u8, page: u8, off: u8 },
    Raw(u64),
}

impl Va {
    fn get(&self) -> u64 {
        match *self {
            Va::Grid { slot, page, off } => {
                UVA_BASE
                    + u64::from(slot % 8) * SLOT
                    + u64::from(page % 16) * PAGE
                    + u64::from(off) * 16
            }
            Va::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Region {
    /// On the slot grid: GPA slot, size in pages, frontend-VA slot, offset in the fd in
    /// 256-byte steps.
    Grid {
        gpa: u8,
        pages: u8,
        uva: u8,
        off: u8,
    },
    Raw([u64; 4]),
}

impl Region {
    fn get(&self) -> MemoryRegion {
        match *self {
            Region::Grid {
                gpa,
                pages,
                uva,
                off,
            } => MemoryRegion {
                guest_phys_addr: u64::from(gpa % 8) * SLOT,
                memory_size: u64::from(pages % 33) * PAGE,
                userspace_addr: UVA_BASE + u64::from(uva % 8) * SLOT,
                mmap_offset: u64::from(off) * 256,
            },
            Region::Raw([g, s, u, o]) => MemoryRegion {
                guest_phys_addr: g,
                memory_size: s,
                userspace_addr: u,
                mmap_offset: o,
            },
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FdKind {
    Memfd {
        pages: u8,
    },
    /// A memfd made earlier in this input (the same file).
    Reuse(u8),
    Eventfd,
    Socket,
    Pipe,
}

/// The state a refused request must leave alone, as the device shows it.
#[derive(Debug, PartialEq)]
struct Snap {
    open: bool,
    owner: bool,
    running: bool,
    features: u64,
    protocol_features: u64,
    status: u8,
    mtu: u16,
    mem: Vec<(RegionDesc, u32)>,
    vrings: Vec<VringSnap>,
}

#[derive(Debug, PartialEq)]
struct VringSnap {
    size: u16,
    addrs: Option<VringAddrs>,
    translated: bool,
    last_avail: u16,
    last_used: u16,
    kick: (bool, bool),
    call: (bool, bool),
    err: bool,
    enabled: bool,
    started: bool,
    broken: bool,
    mem_regions: usize,
}

struct Harness {
    wire: Wire,
    session: Session,
    cb: Arc<Callbacks>,
    /// Memfds made in this input, for reuse and guest writes.
    memfds: Vec<OwnedFd>,
    /// Other ends of sockets handed to the backend.
    peers: Vec<UnixStream>,
    offered: u64,
    offered_protocol: u64,
    pairs: u16,
    hung_up: bool,
    cache: PktCache,
    /// The last Setup's memfd (index in `memfds`) and queue size.
    layout: Option<(usize, u16)>,
}

impl Harness {
    fn snap(&self) -> Snap {
        let dev = self.session.device();
        let vrings = (0..dev.max_vrings())
            .map(|i| {
                let vq = dev.lock_vring(i).expect("vring index in range");
                VringSnap {
                    size: vq.size,
                    addrs: vq.addrs,
                    translated: vq.rings.is_some(),
                    last_avail: vq.last_avail_idx,
                    last_used: vq.last_used_idx,
                    kick: (vq.kick_set, vq.kick.is_some()),
                    call: (vq.call_set, vq.call.is_some()),
                    err: vq.err.is_some(),
                    enabled: vq.enabled,
                    started: vq.started,
                    broken: vq.broken,
                    mem_regions: vq.mem.len(),
                }
            })
            .collect();
        Snap {
            open: self.session.is_open(),
            owner: self.session.owner(),
            running: self.session.running(),
            features: dev.features(),
            protocol_features: dev.protocol_features(),
            status: dev.status(),
            mtu: dev.mtu(),
            mem: self
                .session
                .memory()
                .map(|m| {
                    m.regions()
                        .map(|r| (*r.desc(), r.frontend_refs()))
                        .collect()
                })
                .unwrap_or_default(),
            vrings,
        }
    }

    /// A vring index for a payload: mostly the device's, sometimes one past them.
    fn index(&self, i: u8) -> u32 {
        u32::from(i) % (2 * u32::from(self.pairs) + 1)
    }

    fn new_memfd(&mut self, size: u64) -> OwnedFd {
        let fd = memfd(size.min(MAX_MEMFD));
        let keep = fd.try_clone().expect("dup");
        self.memfds.push(keep);
        fd
    }

    fn make_fd(&mut self, kind: FdKind) -> OwnedFd {
        match kind {
            FdKind::Memfd { pages } => self.new_memfd(u64::from(pages % 65) * PAGE),
            FdKind::Reuse(k) if !self.memfds.is_empty() => {
                let i = usize::from(k) % self.memfds.len();
                self.memfds[i].try_clone().expect("dup")
            }
            FdKind::Reuse(_) => self.new_memfd(PAGE),
            FdKind::Eventfd => eventfd(),
            FdKind::Socket => {
                let (a, b) = UnixStream::pair().expect("socketpair");
                self.peers.push(b);
                a.into()
            }
            FdKind::Pipe => nix::unistd::pipe().expect("pipe").0,
        }
    }

    /// A memfd that holds `r` (its offset plus size, within [`MAX_MEMFD`]).
    fn fitting(&mut self, r: &MemoryRegion) -> OwnedFd {
        let end = r.mmap_offset.saturating_add(r.memory_size).min(MAX_MEMFD);
        self.new_memfd(end.next_multiple_of(PAGE))
    }

    fn payload(&self, b: &Body) -> Vec<u8> {
        match b {
            Body::Empty => Vec::new(),
            Body::U64(v) => v.to_bytes(),
            Body::Small(v) => u64::from(*v).to_bytes(),
            Body::Features(m) => (self.offered & m).to_bytes(),
            Body::ProtocolFeatures(m) => (self.offered_protocol & m).to_bytes(),
            Body::State { index, num } => VringState {
                index: self.index(*index),
                num: *num,
            }
            .to_bytes(),
            Body::File { index, no_fd, junk } => {
                let mut v = VringFile {
                    index: self.index(*index) as u8,
                    no_fd: *no_fd,
                }
                .to_u64();
                if *junk {
                    v |= 1 << 9;
                }
                v.to_bytes()
            }
            Body::Addr {
                index,
                flags,
                desc,
                used,
                avail,
                log,
            } => VringAddr {
                index: self.index(*index),
                flags: u32::from(*flags % 4),
                desc_user_addr: desc.get(),
                used_user_addr: used.get(),
                avail_user_addr: avail.get(),
                log_guest_addr: *log,
            }
            .to_bytes(),
            Body::Table(rs) => MemoryTable {
                regions: rs.iter().take(9).map(Region::get).collect(),
            }
            .to_bytes(),
            Body::MemReg(r) => SingleMemRegion { region: r.get() }.to_bytes(),
            Body::Inflight {
                size,
                offset,
                num_queues,
                queue_size,
            } => InflightInfo {
                mmap_size: u64::from(*size),
                mmap_offset: u64::from(*offset),
                num_queues: num_queues % 10,
                queue_size: *queue_size,
            }
            .to_bytes(),
            Body::Config { offset, flags, len } => Config {
                offset: u32::from(*offset % 300),
                flags: *flags % 3,
                payload: vec![0; usize::from(*len % 300)],
            }
            .to_bytes(),
            Body::Raw(v) => v.clone(),
        }
    }

    /// The fds the request calls for, made to fit the payload.
    fn auto_fds(&mut self, req: Option<FrontendReq>, body: &Body) -> Vec<OwnedFd> {
        use FrontendReq as R;
        let Some(req) = req else { return Vec::new() };
        match (req, body) {
            (R::SetMemTable, Body::Table(rs)) => rs
                .iter()
                .take(8)
                .map(|r| {
                    let r = r.get();
                    self.fitting(&r)
                })
                .collect(),
            (R::AddMemReg, Body::MemReg(r)) => {
                let r = r.get();
                vec![self.fitting(&r)]
            }
            (R::SetVringKick | R::SetVringCall | R::SetVringErr, Body::File { no_fd, .. }) => {
                if *no_fd {
                    Vec::new()
                } else {
                    vec![eventfd()]
                }
            }
            (R::SetInflightFd, Body::Inflight { size, offset, .. }) => {
                vec![self.new_memfd(u64::from(*size) + u64::from(*offset))]
            }
            (R::SetBackendReqFd, _) => vec![self.make_fd(FdKind::Socket)],
            (R::SetLogBase | R::SetLogFd | R::GpuSetSocket | R::SetDeviceStateFd, _) => {
                vec![eventfd()]
            }
            _ => Vec::new(),
        }
    }

    fn message(&mut self, m: &Msg) {
        if self.hung_up || !self.session.is_open() {
            return;
        }
        let code = m.req.code();
        let req = FrontendReq::try_from(code).ok();
        let payload = self.payload(&m.body);
        let fds = match &m.fds {
            None => self.auto_fds(req, &m.body),
            Some(kinds) => kinds.iter().take(10).map(|&k| self.make_fd(k)).collect(),
        };
        let mut flags = Header::VERSION;
        if m.need_reply {
            flags |= Header::NEED_REPLY;
        }
        if let Some(f) = m.flip {
            flags ^= u32::from(f);
        }
        let size = m.lie.map_or(payload.len() as u32, u32::from);
        let header = Header::new(code, flags, size);
        // Whether this message is exactly what the backend will read as one message: the
        // expectations below hold only then.
        let whole = size as usize == payload.len()
            && payload.len() <= rvhost::protocol::MAX_PAYLOAD
            && self.session.pending_input() == 0;
        // Whether every reply of this step answers this message: it starts on a frame boundary
        // (if an earlier message promised more bytes than it sent, this one's first bytes
        // complete that one, and the reply to it comes now), and it sends no bytes beyond the
        // size its header gives (those are read as the next messages, each with its own
        // reply: a header that says 0 bytes ahead of a 40-byte body sent the backend a
        // GET_FEATURES from the body's first 12 bytes, and it answered that).
        let fresh = self.session.pending_input() == 0 && size as usize >= payload.len();
        let before = self.snap();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let bytes = rvhost_fuzz::frame(code, flags, size, &payload);
        let sent = self.wire.send(&bytes, &borrowed);
        drop(borrowed);
        drop(fds);
        let served = self.session.serve();
        let got = self.wire.recv();
        let reps = replies(&got.bytes);
        if fresh {
            for (h, _) in &reps {
                assert_eq!(h.request, code, "a reply to another request");
            }
        }
        if !whole || sent != bytes.len() {
            assert!(got.fds.len() <= reps.len(), "more fds than replies");
            return self.after(served);
        }
        let nfds = m.fds.as_ref().map_or_else(
            || {
                // auto_fds: count what it made for this request.
                expected_auto_fds(req, &m.body)
            },
            |k| k.len().min(10),
        );
        let policy_ok = rvhost::protocol::check(&header, &payload, nfds).is_ok();
        if !policy_ok {
            assert_eq!(
                served,
                Served::Closed,
                "a message the policy refuses must close"
            );
        }
        let Some(req) = req else {
            assert_eq!(served, Served::Closed, "an unknown request must close");
            return self.after(served);
        };
        if served == Served::Closed {
            assert!(reps.is_empty(), "{req}: a reply from a message that closed");
            assert!(got.fds.is_empty(), "{req}: fds from a message that closed");
            return self.after(served);
        }
        let p = policy(req);
        let expected = p.reply_expected(&header, before.protocol_features);
        assert_eq!(
            reps.len(),
            usize::from(expected),
            "{req}: replies (policy {:?}, need_reply {})",
            p.reply,
            header.need_reply()
        );
        let want_fds = usize::from(req == FrontendReq::GetInflightFd && expected);
        assert_eq!(got.fds.len(), want_fds, "{req}: fds with the reply");
        let after = self.snap();
        if let Some((_, body)) = reps.first() {
            if p.reply == Reply::Always {
                self.check_reply(req, &payload, body, &before, &after);
            } else if req == FrontendReq::SetLogBase && before.protocol_features & pf::LOG_SHMFD != 0
            {
                // The LOG_SHMFD reply: an empty payload, and every vring holds the new log.
                assert!(body.is_empty(), "{req}: the reply carries {} bytes", body.len());
                let dev = self.session.device();
                for i in 0..dev.max_vrings() {
                    assert!(dev.lock_vring(i).unwrap().log.is_some(), "{req}: vring {i}");
                }
            } else {
                assert_eq!(body.len(), 8, "{req}: an ack is a u64");
                match u64::parse(body).unwrap() {
                    0 => self.check_done(req, &payload, &after),
                    1 => assert_eq!(after, before, "{req}: refused, yet the state changed"),
                    s => panic!("{req}: ack status {s}"),
                }
            }
        }
        self.after(served)
    }

    /// What a reply of a request that always replies says.
    fn check_reply(&self, req: FrontendReq, sent: &[u8], body: &[u8], before: &Snap, after: &Snap) {
        use FrontendReq as R;
        let u = || u64::parse(body).unwrap_or_else(|e| panic!("{req}: {e}"));
        match req {
            R::GetFeatures => assert_eq!(u(), self.offered, "{req}"),
            R::GetProtocolFeatures => assert_eq!(u(), self.offered_protocol, "{req}"),
            R::GetQueueNum => assert_eq!(u(), u64::from(self.pairs), "{req}"),
            R::GetMaxMemSlots => assert_eq!(u(), 509, "{req}"),
            R::GetStatus => assert_eq!(u(), u64::from(before.status), "{req}"),
            R::GetVringBase => {
                let asked = VringState::parse(sent).unwrap();
                let got = VringState::parse(body).unwrap_or_else(|e| panic!("{req}: {e}"));
                let i = asked.index as usize;
                assert_eq!(got.index, asked.index, "{req}: index");
                assert_eq!(
                    got.num,
                    u32::from(before.vrings[i].last_avail),
                    "{req}: base"
                );
                let v = &after.vrings[i];
                assert!(
                    !v.started && !v.kick.0 && !v.call.0 && !v.translated && v.addrs.is_none(),
                    "{req}: the vring is not stopped: {v:?}"
                );
            }
            R::GetConfig => {
                let asked = Config::parse(sent).unwrap();
                let got = Config::parse(body).unwrap_or_else(|e| panic!("{req}: {e}"));
                assert_eq!(
                    (got.offset, got.flags),
                    (asked.offset, asked.flags),
                    "{req}"
                );
                assert!(
                    got.payload.is_empty() || got.payload.len() == asked.payload.len(),
                    "{req}: {} bytes for {} asked",
                    got.payload.len(),
                    asked.payload.len()
                );
            }
            R::GetInflightFd => {
                let asked = InflightInfo::parse(sent).unwrap();
                let got = InflightInfo::parse(body).unwrap_or_else(|e| panic!("{req}: {e}"));
                assert_eq!(
                    (got.num_queues, got.queue_size, got.mmap_offset),
                    (asked.num_queues, asked.queue_size, 0),
                    "{req}"
                );
                let per_queue = (16 + 16 * u64::from(asked.queue_size)).next_multiple_of(64);
                assert_eq!(
                    got.mmap_size,
                    per_queue * u64::from(asked.num_queues),
                    "{req}"
                );
            }
            _ => panic!("{req}: a reply from a request not served"),
        }
    }

    /// What a request acknowledged with status 0 promises.
    fn check_done(&self, req: FrontendReq, sent: &[u8], after: &Snap) {
        use FrontendReq as R;
        let u = || u64::parse(sent).unwrap();
        match req {
            R::SetOwner => assert!(after.owner, "{req}"),
            R::SetFeatures => assert_eq!(after.features, u(), "{req}"),
            R::SetProtocolFeatures => assert_eq!(after.protocol_features, u(), "{req}"),
            R::SetStatus => assert_eq!(u64::from(after.status), u(), "{req}"),
            R::NetSetMtu => assert_eq!(u64::from(after.mtu), u(), "{req}"),
            R::ResetOwner => {
                assert!(
                    !after.owner && after.mem.is_empty() && after.features == 0,
                    "{req}"
                )
            }
            R::SetVringNum => {
                let s = VringState::parse(sent).unwrap();
                assert_eq!(
                    u32::from(after.vrings[s.index as usize].size),
                    s.num,
                    "{req}"
                );
            }
            R::SetVringBase => {
                let s = VringState::parse(sent).unwrap();
                let v = &after.vrings[s.index as usize];
                assert_eq!(u32::from(v.last_avail), s.num, "{req}");
                assert!(!v.broken, "{req}: a new base clears broken");
            }
            R::SetVringEnable => {
                let s = VringState::parse(sent).unwrap();
                assert_eq!(after.vrings[s.index as usize].enabled, s.num == 1, "{req}");
            }
            R::SetMemTable => {
                // The table is what the message says: the same regions, each once.
                let t = MemoryTable::parse(sent).unwrap();
                let same = |d: &RegionDesc, r: &MemoryRegion| {
                    d.guest_phys_addr == r.guest_phys_addr
                        && d.memory_size == r.memory_size
                        && d.userspace_addr == r.userspace_addr
                };
                assert_eq!(after.mem.len(), t.regions.len(), "{req}: regions");
                for r in &t.regions {
                    assert!(
                        after.mem.iter().any(|(d, _)| same(d, r)),
                        "{req}: {r:?} missing"
                    );
                }
                for (d, refs) in &after.mem {
                    assert!(t.regions.iter().any(|r| same(d, r)), "{req}: {d} not sent");
                    assert_eq!(*refs, 1, "{req}: {d} held {refs} times");
                }
            }
            R::AddMemReg => {
                let r = SingleMemRegion::parse(sent).unwrap().region;
                assert!(
                    after
                        .mem
                        .iter()
                        .any(|(d, _)| d.guest_phys_addr == r.guest_phys_addr
                            && d.memory_size == r.memory_size
                            && d.userspace_addr == r.userspace_addr),
                    "{req}: {r:?} missing"
                );
            }
            _ => {}
        }
        // Every vring works with the connection's memory table.
        for v in &after.vrings {
            assert_eq!(
                v.mem_regions,
                after.mem.len(),
                "{req}: a vring's memory table"
            );
        }
    }

    /// Checks that hold after any operation.
    fn after(&self, served: Served) {
        assert_eq!(served == Served::Open, self.session.is_open());
        assert_eq!(
            self.cb.running(),
            self.session.running(),
            "callbacks vs device"
        );
        if served == Served::Closed {
            assert!(self.cb.gone(), "closed without destroy_connection");
            let dev = self.session.device();
            for i in 0..dev.max_vrings() {
                let vq = dev.lock_vring(i).unwrap();
                assert!(
                    vq.rings.is_none()
                        && vq.mem.is_empty()
                        && vq.kick.is_none()
                        && vq.log.is_none(),
                    "vring {i} kept its rings or memory after the close"
                );
            }
        }
    }

    fn setup(&mut self, features: u64, log2_size: u8, need_reply: bool) {
        let size = 1u32 << (log2_size % 9);
        let msg = |req: FrontendReq, body: Body| Msg {
            req: Req::Known(FrontendReq::ALL.iter().position(|&r| r == req).unwrap() as u8),
            need_reply,
            flip: None,
            lie: None,
            body,
            fds: None,
        };
        let grid = |off: u64| Va::Grid {
            slot: 0,
            page: (off / PAGE) as u8,
            off: 0,
        };
        let mut script = vec![
            msg(FrontendReq::SetOwner, Body::Empty),
            msg(FrontendReq::SetFeatures, Body::Features(features)),
            msg(
                FrontendReq::SetMemTable,
                Body::Table(vec![Region::Grid {
                    gpa: 0,
                    pages: LAYOUT_PAGES,
                    uva: 0,
                    off: 0,
                }]),
            ),
        ];
        for v in 0..2u8 {
            let (d, a, u) = LAYOUT[usize::from(v)];
            script.extend([
                msg(
                    FrontendReq::SetVringNum,
                    Body::State {
                        index: v,
                        num: size,
                    },
                ),
                msg(
                    FrontendReq::SetVringAddr,
                    Body::Addr {
                        index: v,
                        flags: 0,
                        desc: grid(d),
                        used: grid(u),
                        avail: grid(a),
                        log: 0,
                    },
                ),
                msg(FrontendReq::SetVringBase, Body::State { index: v, num: 0 }),
                msg(
                    FrontendReq::SetVringCall,
                    Body::File {
                        index: v,
                        no_fd: false,
                        junk: false,
                    },
                ),
                msg(
                    FrontendReq::SetVringKick,
                    Body::File {
                        index: v,
                        no_fd: false,
                        junk: false,
                    },
                ),
            ]);
        }
        for (k, m) in script.iter().enumerate() {
            let made = self.memfds.len();
            self.message(m);
            if k == 2 && self.memfds.len() > made {
                self.layout = Some((made, size as u16));
            }
        }
    }

    fn post(&self, vring: bool, head: u8, len: u16) {
        let Some((k, size)) = self.layout else { return };
        let Some(fd) = self.memfds.get(k) else { return };
        let (d, a, _) = LAYOUT[usize::from(vring)];
        let head = u16::from(head) % size;
        // Device-writable on the receive vring (0), readable on the transmit vring (1).
        let flags: u16 = if vring { 0 } else { 2 };
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&LAYOUT_BUFS.to_le_bytes()); // GPA 0 is the region's start
        desc[8..12].copy_from_slice(&u32::from(len % 0x2000).to_le_bytes());
        desc[12..14].copy_from_slice(&flags.to_le_bytes());
        let _ = nix::sys::uio::pwrite(fd, &desc, (d + 16 * u64::from(head)) as i64);
        let mut idx = [0u8; 2];
        let _ = nix::sys::uio::pread(fd, &mut idx, (a + 2) as i64);
        let i = u16::from_le_bytes(idx);
        let slot = a + 4 + 2 * u64::from(i % size);
        let _ = nix::sys::uio::pwrite(fd, &head.to_le_bytes(), slot as i64);
        let _ = nix::sys::uio::pwrite(fd, &i.wrapping_add(1).to_le_bytes(), (a + 2) as i64);
    }

    fn poke(&self, k: u8, offset: u32, bytes: &[u8]) {
        if self.memfds.is_empty() {
            return;
        }
        let fd = &self.memfds[usize::from(k) % self.memfds.len()];
        let size = nix::sys::stat::fstat(fd.as_fd()).map_or(0, |s| s.st_size as u64);
        if size == 0 {
            return;
        }
        // Within the file: growing it is harmless, but stay with what was mapped.
        let at = u64::from(offset) % size;
        let n = bytes.len().min((size - at) as usize);
        let _ = nix::sys::uio::pwrite(fd, &bytes[..n], at as i64);
    }

    fn burst(&mut self, pair: u8, len: u16) {
        let dev = self.session.device().clone();
        let q = QueuePair(u16::from(pair) % (self.pairs + 1));
        let mut out = Vec::new();
        let got = dequeue_burst(&dev, q.tx(), &mut self.cache, &mut out, 32);
        assert_eq!(got, out.len());
        self.cache.free_bulk(out);
        let Ok(mut m) = self.cache.alloc() else {
            return;
        };
        let n = usize::from(len).min(m.tailroom());
        if m.append(n).is_ok()
            && let Ok(d) = m.data_mut()
        {
            d.fill(0x5a);
        }
        let sent = enqueue_burst(&dev, q.rx(), std::slice::from_ref(&m));
        self.cache.free(m);
        if !self.session.is_open() {
            assert_eq!(got + sent, 0, "a burst moved packets after the close");
        }
    }
}

/// How many fds `Harness::auto_fds` makes for a request and body.
fn expected_auto_fds(req: Option<FrontendReq>, body: &Body) -> usize {
    use FrontendReq as R;
    match (req, body) {
        (Some(R::SetMemTable), Body::Table(rs)) => rs.len().min(8),
        (Some(R::AddMemReg), Body::MemReg(_)) => 1,
        (Some(R::SetVringKick | R::SetVringCall | R::SetVringErr), Body::File { no_fd, .. }) => {
            usize::from(!*no_fd)
        }
        (Some(R::SetInflightFd), Body::Inflight { .. }) => 1,
        (Some(R::SetBackendReqFd), _) => 1,
        (Some(R::SetLogBase | R::SetLogFd | R::GpuSetSocket | R::SetDeviceStateFd), _) => 1,
        _ => 0,
    }
}

fn run(input: &Input) {
    let mut opts = SessionOptions {
        guard_pages: true,
        ..SessionOptions::default()
    };
    if input.flags & 1 != 0 {
        opts.flags = opts.flags | Flags::LINEARBUF;
    }
    if input.flags & 2 != 0 {
        opts.flags = opts.flags | Flags::EXTBUF;
    }
    opts.features = features::DEFAULT_FEATURES & !input.withhold;
    opts.protocol_features = pf::DEFAULT & !input.withhold_protocol;
    opts.max_queue_pairs = u16::from(input.pairs % 4) + 1;
    let (wire, backend) = Wire::pair();
    let cb = Arc::new(Callbacks::default());
    let session = Session::new(backend, opts, Arc::clone(&cb) as _).expect("session");
    let mut h = Harness {
        wire,
        session,
        cb,
        memfds: Vec::new(),
        peers: Vec::new(),
        offered: opts.features,
        offered_protocol: opts.protocol_features,
        pairs: opts.max_queue_pairs,
        hung_up: false,
        cache: pool().cache(),
        layout: None,
    };
    for op in input.ops.iter().take(64) {
        match op {
            Op::Msg(m) => h.message(m),
            Op::Raw(bytes, kinds) => {
                if h.hung_up || !h.session.is_open() {
                    continue;
                }
                let fds: Vec<OwnedFd> = kinds.iter().take(10).map(|&k| h.make_fd(k)).collect();
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                h.wire.send(bytes, &borrowed);
                drop(borrowed);
                drop(fds);
                // Every message of the bytes is handled now (a call handles at most 64), so
                // that the next operation's replies are its own.
                let mut served = Served::Open;
                for _ in 0..bytes.len() / (Header::SIZE * 64) + 2 {
                    served = h.session.serve();
                }
                let got = h.wire.recv();
                let reps = replies(&got.bytes);
                assert!(got.fds.len() <= reps.len(), "more fds than replies");
                h.after(served);
            }
            Op::Poke {
                memfd,
                offset,
                bytes,
            } => h.poke(*memfd, *offset, bytes),
            Op::Burst { pair, len } => h.burst(*pair, *len),
            Op::Setup {
                features,
                log2_size,
                need_reply,
            } => h.setup(*features, *log2_size, *need_reply),
            Op::Post { vring, head, len } => h.post(*vring, *head, *len),
            Op::HangUp => {
                if h.hung_up || !h.session.is_open() {
                    continue;
                }
                h.hung_up = true;
                h.wire.hang_up();
                let served = h.session.serve();
                assert_eq!(served, Served::Closed, "EOF must close the connection");
                h.after(served);
            }
        }
    }
    let Harness {
        wire,
        session,
        cb,
        memfds,
        peers,
        cache,
        ..
    } = h;
    drop(session);
    assert!(cb.gone(), "no destroy_connection after the session closed");
    drop((wire, memfds, peers, cache));
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
    assert_eq!(
        mappings_named("rvhost-inflight"),
        0,
        "an inflight area is still mapped"
    );
    assert_eq!(pool.in_use(), 0, "mbufs leaked");
});
