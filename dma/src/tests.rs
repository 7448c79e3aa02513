//! Conformance: the same cases on every engine — the CPU engine (the reference), the soft
//! engine polled by hand with one lane and with several, and on its own thread, the IOAT
//! driver over its model, and the DSA driver over its model, in order and with engines
//! completing out of order, each model stepped by hand and on a thread of its own (every live
//! [`Buf`] of the test's thread is mapped in the model's IOMMU, and the run must break none of
//! the model's rules).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hw::dsa::regs::comp;
use crate::hw::ioat::regs;
use crate::hw::{DsaChannel, DsaDevice, IoatChannel};
use crate::model::{
    DsaFault, DsaModel, DsaModelConfig, IoatModel, IoatModelConfig, ModelFault, ModelWorker,
};
use crate::soft::{SoftConfig, SoftWorker, WorkerConfig};
use crate::*;

/// How a test channel is served.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Cpu,
    /// Soft device polled by the test itself (deterministic).
    Polled(SoftConfig),
    /// Soft device on a worker thread.
    Threaded(SoftConfig),
    /// IOAT driver over its model, stepped by the test.
    Ioat(IoatModelConfig),
    /// DSA driver over its model, stepped by the test.
    Dsa(DsaModelConfig),
    /// IOAT driver over its model, served by the model's thread.
    IoatThreaded(IoatModelConfig),
    /// DSA driver over its model, served by the model's thread.
    DsaThreaded(DsaModelConfig),
}

/// Every configuration the conformance cases run on.
pub(crate) fn kinds() -> Vec<Kind> {
    // One job per lane and poll, small chunks: the most interleaving.
    let fine = SoftConfig {
        chunk: 512,
        lane_burst: 1,
        ..SoftConfig::with_lanes(3)
    };
    let threaded = SoftConfig {
        chunk: 4096,
        ..SoftConfig::with_lanes(2)
    };
    vec![
        Kind::Cpu,
        Kind::Polled(SoftConfig::default()),
        Kind::Polled(fine),
        Kind::Threaded(threaded),
        Kind::Ioat(IoatModelConfig::default()),
        Kind::Dsa(DsaModelConfig::default()),
        // Four descriptors at once, the newest advanced first: out-of-order completions.
        Kind::Dsa(DsaModelConfig {
            parallel: 4,
            ..Default::default()
        }),
        Kind::IoatThreaded(IoatModelConfig::default()),
        Kind::DsaThreaded(DsaModelConfig {
            parallel: 4,
            ..Default::default()
        }),
    ]
}

/// The completion status the DSA driver reports as `status`: how the DSA rig injects a
/// [`FailPolicy`].
pub(crate) fn dsa_code_of(status: Status) -> u8 {
    match status {
        Status::PageFault => comp::PAGE_FAULT_NOBOF,
        Status::InvalidOpcode => comp::BAD_OPCODE,
        Status::InvalidLength => comp::XFER_ERANGE,
        other => panic!("no DSA completion status is reported as {other:?}"),
    }
}

fn dsa_fault(policy: FailPolicy) -> DsaFault {
    match policy {
        FailPolicy::Never => DsaFault::None,
        FailPolicy::Index { idx, status } => DsaFault::AtDescriptor {
            n: u64::from(idx),
            status: dsa_code_of(status),
        },
        FailPolicy::EveryNth { n, status } => DsaFault::EveryNth {
            n: n.into(),
            status: dsa_code_of(status),
        },
    }
}

/// A device model a rig steps (or whose thread serves it), and whose IOMMU maps the test's
/// buffers.
#[derive(Clone)]
pub(crate) enum Model {
    Ioat(IoatModel),
    Dsa(DsaModel),
}

impl Model {
    /// # Safety
    ///
    /// The contract of [`IoatModel::map`].
    unsafe fn map(&self, iova: Iova, len: u64) -> bool {
        match self {
            // SAFETY: this function's contract.
            Model::Ioat(m) => unsafe { m.map(iova, len) },
            // SAFETY: this function's contract.
            Model::Dsa(m) => unsafe { m.map(iova, len) },
        }
    }

    fn unmap(&self, iova: Iova, len: u64) -> bool {
        match self {
            Model::Ioat(m) => m.unmap(iova, len),
            Model::Dsa(m) => m.unmap(iova, len),
        }
    }

    fn run(&self, n: usize) -> usize {
        match self {
            Model::Ioat(m) => m.run(n),
            Model::Dsa(m) => m.run(n),
        }
    }

    fn violations(&self) -> Vec<String> {
        match self {
            Model::Ioat(m) => m.violations(),
            Model::Dsa(m) => m.violations(),
        }
    }
}

/// The CHANERR bits the IOAT driver reports as `status`: how the IOAT rig injects a
/// [`FailPolicy`].
pub(crate) fn chanerr_of(status: Status) -> u32 {
    match status {
        Status::InvalidSrcAddr => regs::CHANERR_SRC_ADDR,
        Status::InvalidDstAddr => regs::CHANERR_DEST_ADDR,
        Status::BusReadError => regs::CHANERR_READ_DATA,
        Status::BusWriteError => regs::CHANERR_WRITE_DATA,
        Status::InvalidLength => regs::CHANERR_LENGTH,
        Status::InvalidOpcode => regs::CHANERR_CONTROL,
        other => panic!("no CHANERR bit is reported as {other:?}"),
    }
}

fn model_fault(policy: FailPolicy) -> ModelFault {
    match policy {
        FailPolicy::Never => ModelFault::None,
        FailPolicy::Index { idx, status } => ModelFault::AtDescriptor {
            n: u64::from(idx),
            chanerr: chanerr_of(status),
        },
        FailPolicy::EveryNth { n, status } => ModelFault::EveryNth {
            n: n.into(),
            chanerr: chanerr_of(status),
        },
    }
}

thread_local! {
    /// Every live `Buf` of this thread: address -> length.
    static LIVE: RefCell<BTreeMap<usize, usize>> = const { RefCell::new(BTreeMap::new()) };
    /// The models of this thread's live rigs served by a thread of their own, by rig number:
    /// every live `Buf` is mapped in them from its birth to its drop (their thread runs any
    /// time, so a buffer is mapped before any job can name it).
    static THREADED: RefCell<Vec<(u64, Model)>> = const { RefCell::new(Vec::new()) };
}

/// Numbers the threaded rigs of all threads.
static RIG_NUMBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Maps every live `Buf` of this thread in `model` and keeps mapping new ones until
/// [`unregister_threaded`] is called with the returned number.
fn register_threaded(model: &Model) -> u64 {
    let n = RIG_NUMBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    LIVE.with_borrow(|live| {
        for (&addr, &len) in live {
            // SAFETY: a live `Buf` of this thread; it is unmapped by its drop (or when the rig
            // unregisters), before its memory goes. The DMA contract says which of its bytes
            // the model may touch.
            assert!(unsafe { model.map(Iova(addr as u64), len as u64) });
        }
    });
    THREADED.with_borrow_mut(|t| t.push((n, model.clone())));
    n
}

/// Stops mapping new `Buf`s in the model registered as `n`, and unmaps the live ones.
fn unregister_threaded(n: u64) {
    let Some(model) = THREADED.with_borrow_mut(|t| {
        let at = t.iter().position(|(k, _)| *k == n)?;
        Some(t.remove(at).1)
    }) else {
        return;
    };
    LIVE.with_borrow(|live| {
        for (&addr, &len) in live {
            model.unmap(Iova(addr as u64), len as u64);
        }
    });
}

/// One channel and whatever serves it. Fields drop in order: the engine first.
pub(crate) struct Rig {
    pub(crate) engine: Box<dyn DmaEngine + Send>,
    pub(crate) device: Option<SoftDevice>,
    _worker: Option<SoftWorker>,
    /// The device model, and the `Buf` ranges the rig mapped in it.
    pub(crate) model: Option<Model>,
    mapped: Vec<(u64, u64)>,
    /// The model's thread and the rig's number in `THREADED`, when the model is threaded.
    threaded: Option<(ModelWorker, u64)>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The engine first: the drivers' teardown must break no rule either.
        let stub = CpuEngine::new(&ChannelConfig::new(1)).unwrap();
        drop(std::mem::replace(&mut self.engine, Box::new(stub)));
        if let Some((worker, n)) = self.threaded.take() {
            let stopped = worker.stop();
            unregister_threaded(n);
            if !std::thread::panicking() {
                stopped.expect("the model's thread");
            }
        }
        if let Some(model) = &self.model {
            let v = model.violations();
            if !std::thread::panicking() {
                assert!(v.is_empty(), "the device model saw broken rules: {v:#?}");
            }
        }
    }
}

const DEADLINE: Duration = Duration::from_secs(20);

impl Rig {
    pub(crate) fn new(kind: &Kind, ch: ChannelConfig) -> Rig {
        match kind {
            Kind::Cpu => Rig {
                engine: Box::new(CpuEngine::new(&ch).unwrap()),
                device: None,
                _worker: None,
                model: None,
                mapped: Vec::new(),
                threaded: None,
            },
            Kind::Ioat(cfg) => {
                let model = IoatModel::new(*cfg);
                let hw_cfg = ChannelConfig {
                    fail: FailPolicy::Never,
                    ..ch
                };
                let engine = IoatChannel::new(model.clone(), &hw_cfg, Arc::new(model.clone()))
                    .expect("IOAT channel over its model");
                model.set_max_pending((engine.descriptors() - 1) as u16);
                model.set_fault(model_fault(ch.fail));
                Rig {
                    engine: Box::new(engine),
                    device: None,
                    _worker: None,
                    model: Some(Model::Ioat(model)),
                    mapped: Vec::new(),
                    threaded: None,
                }
            }
            Kind::Dsa(cfg) => {
                let model = DsaModel::new(*cfg);
                let hw_cfg = ChannelConfig {
                    fail: FailPolicy::Never,
                    ..ch
                };
                let dev = DsaDevice::setup(model.clone()).expect("DSA device over its model");
                let engine =
                    DsaChannel::new(dev, model.portal(0), &hw_cfg, Arc::new(model.clone()))
                        .expect("DSA channel over its model");
                model.set_fault(dsa_fault(ch.fail));
                Rig {
                    engine: Box::new(engine),
                    device: None,
                    _worker: None,
                    model: Some(Model::Dsa(model)),
                    mapped: Vec::new(),
                    threaded: None,
                }
            }
            Kind::IoatThreaded(cfg) => {
                Rig::threaded(Rig::new(&Kind::Ioat(*cfg), ch), |m| match m {
                    Model::Ioat(m) => m.spawn(WorkerConfig::default()),
                    Model::Dsa(_) => unreachable!(),
                })
            }
            Kind::DsaThreaded(cfg) => Rig::threaded(Rig::new(&Kind::Dsa(*cfg), ch), |m| match m {
                Model::Dsa(m) => m.spawn(WorkerConfig::default()),
                Model::Ioat(_) => unreachable!(),
            }),
            Kind::Polled(cfg) | Kind::Threaded(cfg) => {
                let (device, mut engines) = SoftDevice::new(cfg, &[ch]).unwrap();
                let engine = Box::new(engines.pop().unwrap());
                if matches!(kind, Kind::Polled(_)) {
                    Rig {
                        engine,
                        device: Some(device),
                        _worker: None,
                        model: None,
                        mapped: Vec::new(),
                        threaded: None,
                    }
                } else {
                    let worker = device.spawn(WorkerConfig::default()).unwrap();
                    Rig {
                        engine,
                        device: None,
                        _worker: Some(worker),
                        model: None,
                        mapped: Vec::new(),
                        threaded: None,
                    }
                }
            }
        }
    }

    /// A stepped model's rig, its model now served by a thread `spawn` starts.
    fn threaded(mut rig: Rig, spawn: impl FnOnce(&Model) -> Result<ModelWorker, DmaError>) -> Rig {
        let model = rig.model.clone().expect("a model's rig");
        let n = register_threaded(&model);
        let worker = spawn(&model).expect("the model's thread");
        rig.threaded = Some((worker, n));
        rig
    }

    /// Lets the engine make progress.
    pub(crate) fn pump(&mut self) {
        if self.threaded.is_some() {
            return std::thread::yield_now();
        }
        if let Some(model) = &self.model {
            // The IOMMU maps exactly the live buffers of this thread while the model runs.
            for (iova, len) in self.mapped.drain(..) {
                assert!(model.unmap(Iova(iova), len));
            }
            LIVE.with_borrow(|live| {
                for (&addr, &len) in live {
                    // SAFETY: a live `Buf` of this thread; the model runs only here, right
                    // below, and the buffer cannot be dropped before this call returns (the
                    // mapping is renewed at every pump). The DMA contract says which of its
                    // bytes the model may touch.
                    if unsafe { model.map(Iova(addr as u64), len as u64) } {
                        self.mapped.push((addr as u64, len as u64));
                    }
                }
            });
            // DSA: a few steps at a time, so that the driver polls while the engines are half
            // way through a window of out-of-order descriptors.
            model.run(match model {
                Model::Ioat(_) => 64,
                Model::Dsa(_) => 3,
            });
            return;
        }
        match &mut self.device {
            Some(device) => {
                device.poll();
            }
            None => std::thread::yield_now(),
        }
    }

    /// Collects `n` successful jobs with `completed`; returns the last index.
    pub(crate) fn wait_ok(&mut self, n: usize) -> u16 {
        let start = Instant::now();
        let mut got = 0;
        let mut last = 0;
        while got < n {
            let c = self.engine.completed(64);
            assert!(!c.has_error, "unexpected failure after {got} jobs");
            assert!(
                usize::from(c.count) <= n - got,
                "reported more than submitted"
            );
            got += usize::from(c.count);
            last = c.last_idx;
            if c.count == 0 {
                assert!(start.elapsed() < DEADLINE, "stuck at {got} of {n} jobs");
                self.pump();
            }
        }
        last
    }

    /// Collects the statuses of the next `n` jobs with `completed_status`.
    pub(crate) fn wait_status(&mut self, n: usize) -> Vec<Status> {
        let start = Instant::now();
        let mut out = vec![Status::ErrorUnknown; n];
        let mut got = 0;
        while got < n {
            let c = self.engine.completed_status(64, &mut out[got..]);
            got += usize::from(c.count);
            if c.count == 0 {
                assert!(start.elapsed() < DEADLINE, "stuck at {got} of {n} jobs");
                self.pump();
            }
        }
        out
    }
}

/// A byte buffer jobs read or write; IOVAs point into it.
pub(crate) struct Buf(pub(crate) Vec<u8>);

impl Buf {
    fn live(bytes: Vec<u8>) -> Buf {
        if !bytes.is_empty() {
            let (addr, len) = (bytes.as_ptr() as usize, bytes.len());
            LIVE.with_borrow_mut(|live| live.insert(addr, len));
            THREADED.with_borrow(|t| {
                for (_, model) in t {
                    // SAFETY: the buffer is unmapped by its drop (or when the rig unregisters),
                    // before its memory goes; the DMA contract says which of its bytes the
                    // model may touch.
                    assert!(unsafe { model.map(Iova(addr as u64), len as u64) });
                }
            });
        }
        Buf(bytes)
    }

    pub(crate) fn pattern(len: usize, seed: u32) -> Buf {
        let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
        Buf::live(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect(),
        )
    }

    pub(crate) fn filled(len: usize, byte: u8) -> Buf {
        Buf::live(vec![byte; len])
    }

    pub(crate) fn at(&mut self, off: usize) -> Iova {
        assert!(off <= self.0.len());
        Iova::from_mut_ptr(self.0.as_mut_ptr().wrapping_add(off))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let addr = self.0.as_ptr() as usize;
        if LIVE.with_borrow_mut(|live| live.remove(&addr)).is_some() {
            THREADED.with_borrow(|t| {
                for (_, model) in t {
                    model.unmap(Iova(addr as u64), self.0.len() as u64);
                }
            });
        }
    }
}

fn for_each_kind(ch: ChannelConfig, mut case: impl FnMut(&mut Rig, &Kind)) {
    for kind in kinds() {
        let mut rig = Rig::new(&kind, ch);
        case(&mut rig, &kind);
    }
}

#[test]
fn copies_every_size_and_alignment() {
    let sizes = [
        1usize, 2, 3, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 127, 255, 256, 1000, 1500, 2048, 4095,
        4096, 4097, 8191, 9000, 16384, 32767, 65535, 65536,
    ];
    let offsets = [(0usize, 0usize), (1, 3), (7, 0), (0, 5), (3, 3)];
    for_each_kind(ChannelConfig::new(8), |rig, kind| {
        for &size in &sizes {
            let mut src: Vec<Buf> = Vec::new();
            let mut dst: Vec<Buf> = Vec::new();
            for (k, &(so, doff)) in offsets.iter().enumerate() {
                src.push(Buf::pattern(size + so + 8, (size * 8 + k) as u32));
                dst.push(Buf::filled(size + doff + 16, 0xee));
                let (s, d) = (src[k].at(so), dst[k].at(doff));
                let last = k + 1 == offsets.len();
                let flags = if last { OpFlags::SUBMIT } else { OpFlags::NONE };
                // SAFETY: the buffers live until the jobs are reported by `wait_ok` below and
                // are not touched before.
                unsafe { rig.engine.copy(s, d, size as u32, flags) }.unwrap();
            }
            rig.wait_ok(offsets.len());
            for (k, &(so, doff)) in offsets.iter().enumerate() {
                let d = &dst[k].0;
                assert!(
                    d[..doff].iter().all(|&b| b == 0xee),
                    "{kind:?} {size}: before"
                );
                assert!(
                    d[doff + size..].iter().all(|&b| b == 0xee),
                    "{kind:?} {size}: after"
                );
                assert!(
                    d[doff..doff + size] == src[k].0[so..so + size],
                    "{kind:?} {size} {k}"
                );
            }
        }
    });
}

/// Cuts `total` bytes at `base` into pieces of the given lengths, scaled to add up.
fn split(buf: &mut Buf, base: usize, total: usize, cuts: &[usize]) -> Vec<Sge> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (total + 1)).collect();
    points.push(0);
    points.push(total);
    points.sort_unstable();
    (points.windows(2))
        .map(|w| Sge::new(buf.at(base + w[0]), (w[1] - w[0]) as u32))
        .collect()
}

#[test]
fn scatter_gather_matches_concatenation() {
    let ch = ChannelConfig {
        max_sges: 8,
        ..ChannelConfig::new(16)
    };
    let cases: [(usize, &[usize], &[usize]); 5] = [
        (1, &[], &[]),
        (100, &[10, 20, 30], &[50]),
        (
            5000,
            &[1, 4999, 2500, 2500],
            &[4096, 17, 999, 3000, 4000, 1],
        ),
        (
            65536,
            &[4096, 8192, 12288, 16384, 20480, 24576, 28672],
            &[60000],
        ),
        (3000, &[0, 0, 1500], &[3000, 3000, 7]),
    ];
    for_each_kind(ch, |rig, kind| {
        let mut srcs = Vec::new();
        let mut dsts = Vec::new();
        for (k, &(total, scuts, dcuts)) in cases.iter().enumerate() {
            let mut src = Buf::pattern(total + 64, k as u32);
            let mut dst = Buf::filled(total + 64, 0xee);
            let sl = split(&mut src, 5, total, scuts);
            let dl = split(&mut dst, 11, total, dcuts);
            // SAFETY: the buffers live until the jobs are reported below, untouched.
            unsafe { rig.engine.copy_sg(&sl, &dl, OpFlags::NONE) }.unwrap();
            srcs.push(src);
            dsts.push(dst);
        }
        rig.engine.submit().unwrap();
        rig.wait_ok(cases.len());
        for (k, &(total, _, _)) in cases.iter().enumerate() {
            let d = &dsts[k].0;
            assert!(
                d[11..11 + total] == srcs[k].0[5..5 + total],
                "{kind:?} case {k}"
            );
            assert!(d[..11].iter().chain(&d[11 + total..]).all(|&b| b == 0xee));
        }
    });
}

#[test]
fn sg_lists_are_validated() {
    for_each_kind(ChannelConfig::new(4), |rig, _| {
        let mut b = Buf::filled(64, 0);
        let e = Sge::new(b.at(0), 4);
        let f = Sge::new(b.at(32), 4);
        let max = usize::from(rig.engine.max_sges());
        // SAFETY: every call below fails validation: nothing is enqueued.
        unsafe {
            assert!(matches!(
                rig.engine.copy_sg(&[], &[f], OpFlags::SUBMIT),
                Err(DmaError::EmptySgList)
            ));
            let many = vec![Sge::new(b.at(0), 0); max + 1];
            assert!(matches!(
                rig.engine.copy_sg(&many, &[f], OpFlags::SUBMIT),
                Err(DmaError::TooManySges { .. })
            ));
            assert!(matches!(
                rig.engine.copy_sg(&[e, e], &[f], OpFlags::SUBMIT),
                Err(DmaError::SgLengthMismatch { src: 8, dst: 4 })
            ));
        }
        assert_eq!(rig.engine.in_flight(), 0);
        assert_eq!(rig.engine.stats(), Stats::default());
    });
}

#[test]
fn ring_full_then_capacity_comes_back() {
    for_each_kind(ChannelConfig::new(8), |rig, kind| {
        let mut src = Buf::pattern(64, 1);
        let mut dst = Buf::filled(9 * 64, 0);
        assert_eq!(rig.engine.burst_capacity(), 8);
        for i in 0..8u16 {
            // SAFETY: the buffers outlive the jobs, reported below; `dst` is untouched until then.
            let idx = unsafe {
                rig.engine
                    .copy(src.at(0), dst.at(usize::from(i) * 64), 64, OpFlags::NONE)
            };
            assert_eq!(idx.unwrap(), i);
            assert_eq!(rig.engine.burst_capacity(), 7 - i);
        }
        // SAFETY: rejected: nothing is enqueued.
        let full = unsafe { rig.engine.copy(src.at(0), dst.at(512), 64, OpFlags::SUBMIT) };
        assert!(matches!(full, Err(DmaError::RingFull)), "{kind:?}");
        assert_eq!(rig.engine.in_flight(), 8);
        // Nothing was submitted: nothing can complete.
        rig.pump();
        assert_eq!(rig.engine.completed(8).count, 0);
        rig.engine.submit().unwrap();
        assert_eq!(rig.wait_ok(8), 7);
        assert_eq!(
            (rig.engine.burst_capacity(), rig.engine.in_flight()),
            (8, 0)
        );
        let s = rig.engine.stats();
        assert_eq!((s.submitted, s.completed, s.errors), (8, 8, 0));
        assert!(dst.0[..512].chunks(64).all(|c| c == &src.0[..]));
    });
}

#[test]
fn index_wraps_past_65535() {
    const JOBS: usize = 70_000;
    const BATCH: usize = 50;
    for_each_kind(ChannelConfig::new(64), |rig, kind| {
        let mut src = Buf::pattern(256, 9);
        let mut dst = Buf::filled(BATCH * 8, 0);
        let mut next: u16 = 0;
        let mut done = 0;
        while done < JOBS {
            let n = BATCH.min(JOBS - done);
            for k in 0..n {
                let flags = if k + 1 == n {
                    OpFlags::SUBMIT
                } else {
                    OpFlags::NONE
                };
                let from = (done + k) % 248;
                // SAFETY: the buffers outlive the jobs, all reported by `wait_ok` before the
                // next batch reuses `dst`.
                let idx = unsafe { rig.engine.copy(src.at(from), dst.at(k * 8), 8, flags) };
                assert_eq!(idx.unwrap(), next, "{kind:?}");
                next = next.wrapping_add(1);
            }
            assert_eq!(rig.wait_ok(n), next.wrapping_sub(1));
            let k = done % n;
            let from = (done + k) % 248;
            assert_eq!(dst.0[k * 8..k * 8 + 8], src.0[from..from + 8]);
            done += n;
        }
        assert_eq!(next, (JOBS % 65536) as u16);
        let s = rig.engine.stats();
        assert_eq!((s.submitted, s.completed), (JOBS as u64, JOBS as u64));
    });
}

#[test]
fn fence_orders_dependent_copies() {
    // A: X -> Y; B (fenced): Y -> Z; C (fenced): Z -> W. W must equal X.
    for_each_kind(ChannelConfig::new(16), |rig, kind| {
        let len = 40_000;
        let mut x = Buf::pattern(len, 77);
        let mut y = Buf::filled(len, 0);
        let mut z = Buf::filled(len, 0);
        let mut w = Buf::filled(len, 0);
        // SAFETY: all buffers outlive the jobs (reported by `wait_ok`); Y and Z are each read by
        // a job only after the job writing them, thanks to the fences.
        unsafe {
            rig.engine
                .copy(x.at(0), y.at(0), len as u32, OpFlags::NONE)
                .unwrap();
            rig.engine
                .copy(y.at(0), z.at(0), len as u32, OpFlags::FENCE)
                .unwrap();
            let sg = [
                Sge::new(z.at(0), 1000),
                Sge::new(z.at(1000), len as u32 - 1000),
            ];
            let to = [Sge::new(w.at(0), len as u32)];
            rig.engine
                .copy_sg(&sg, &to, OpFlags::FENCE | OpFlags::SUBMIT)
                .unwrap();
        }
        assert_eq!(rig.wait_ok(3), 2);
        assert!(w.0 == x.0, "{kind:?}");
    });
}

#[test]
fn failed_job_is_reported_then_later_jobs() {
    let ch = ChannelConfig {
        fail: FailPolicy::Index {
            idx: 5,
            status: Status::InvalidLength,
        },
        ..ChannelConfig::new(16)
    };
    for_each_kind(ch, |rig, kind| {
        let mut src = Buf::pattern(10 * 512, 3);
        let mut dst = Buf::filled(10 * 512, 0xee);
        for i in 0..10 {
            // SAFETY: the buffers outlive the jobs, all reported below.
            unsafe {
                rig.engine
                    .copy(src.at(i * 512), dst.at(i * 512), 512, OpFlags::SUBMIT)
            }
            .unwrap();
        }
        // `completed` stops before the failed job, and keeps stopping there.
        let start = Instant::now();
        let mut ok = 0;
        loop {
            let c = rig.engine.completed(16);
            ok += c.count;
            if c.has_error {
                assert_eq!(c.last_idx, 4, "{kind:?}");
                break;
            }
            assert!(start.elapsed() < DEADLINE);
            rig.pump();
        }
        assert_eq!(ok, 5);
        for _ in 0..3 {
            rig.pump();
            let again = rig.engine.completed(16);
            assert_eq!((again.count, again.last_idx, again.has_error), (0, 4, true));
        }
        // `completed_status` reports it, then the later jobs.
        let st = rig.wait_status(5);
        assert_eq!(st[0], Status::InvalidLength, "{kind:?}");
        assert!(st[1..].iter().all(|s| s.is_ok()), "{kind:?}: {st:?}");
        assert_eq!(
            rig.engine.completed(16),
            Completed {
                count: 0,
                last_idx: 9,
                has_error: false
            }
        );
        let s = rig.engine.stats();
        assert_eq!((s.submitted, s.completed, s.errors), (10, 10, 1));
        for i in 0..10 {
            let d = &dst.0[i * 512..(i + 1) * 512];
            if i == 5 {
                assert!(d.iter().all(|&b| b == 0xee), "a failed job copies nothing");
            } else {
                assert!(d == &src.0[i * 512..(i + 1) * 512]);
            }
        }
    });
}

#[test]
fn every_nth_failure_nothing_lost_or_duplicated() {
    let ch = ChannelConfig {
        fail: FailPolicy::EveryNth {
            n: std::num::NonZeroU32::new(3).unwrap(),
            status: Status::InvalidOpcode,
        },
        ..ChannelConfig::new(32)
    };
    for_each_kind(ch, |rig, kind| {
        let mut src = Buf::pattern(30 * 100, 4);
        let mut dst = Buf::filled(30 * 100, 0);
        for i in 0..30 {
            let flags = if i % 7 == 6 {
                OpFlags::SUBMIT
            } else {
                OpFlags::NONE
            };
            // SAFETY: the buffers outlive the jobs, all reported below.
            unsafe {
                rig.engine
                    .copy(src.at(i * 100), dst.at(i * 100), 100, flags)
            }
            .unwrap();
        }
        rig.engine.submit().unwrap();
        let mut reported: Vec<(u16, bool)> = Vec::new();
        let start = Instant::now();
        while reported.len() < 30 {
            let before = reported.len();
            let c = rig.engine.completed(4);
            let first = c.last_idx.wrapping_sub(c.count).wrapping_add(1);
            reported.extend((0..c.count).map(|k| (first.wrapping_add(k), true)));
            if c.has_error {
                let mut st = [Status::Successful; 1];
                let e = rig.engine.completed_status(1, &mut st);
                assert_eq!(
                    (e.count, st[0], e.has_error),
                    (1, Status::InvalidOpcode, true)
                );
                reported.push((e.last_idx, false));
            }
            if reported.len() == before {
                assert!(start.elapsed() < DEADLINE);
                rig.pump();
            }
        }
        for (k, &(idx, ok)) in reported.iter().enumerate() {
            assert_eq!(usize::from(idx), k, "{kind:?}: in order, once each");
            assert_eq!(ok, k % 3 != 2, "{kind:?}: job {k}");
            let (d, s) = (
                &dst.0[k * 100..k * 100 + 100],
                &src.0[k * 100..k * 100 + 100],
            );
            assert_eq!(ok, d == s);
        }
        assert_eq!(rig.engine.stats().errors, 10);
    });
}

#[test]
fn zero_length_jobs_complete() {
    for_each_kind(ChannelConfig::new(4), |rig, _| {
        let mut b = Buf::filled(8, 1);
        // SAFETY: nothing is read or written by zero-length jobs; `b` outlives them anyway.
        unsafe {
            rig.engine.copy(b.at(0), b.at(4), 0, OpFlags::NONE).unwrap();
            let e = [Sge::new(b.at(0), 0)];
            rig.engine.copy_sg(&e, &e, OpFlags::SUBMIT).unwrap();
        }
        assert_eq!(rig.wait_ok(2), 1);
        rig.engine.reset_stats();
        assert_eq!(rig.engine.stats(), Stats::default());
    });
}
