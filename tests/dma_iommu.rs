//! Guest memory mapped for the copy devices (`Driver::set_dma_mapper`): the async path over
//! the IOAT driver (guest's receive queue) and the DSA driver (its transmit queue), each over
//! its device model with the IOMMU strict, so that a copy naming memory nobody mapped faults.
//! The pool is mapped by the test (the application's part), guest memory by the driver through
//! the socket's mapper. Over a real socket with the Rust frontend in QEMU's part and real
//! memfds: the models' mapped ranges must be, at every step, exactly the drivers' rings, the
//! pool and the regions of the memory table the backend holds.

mod common;

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pkt::{mbuf_of, packet_bytes, payload};
use common::{Bed, eventually};
use nix::sys::memfd::{MFdFlags, memfd_create};
use rvhost::driver::{DmaMapper, Flags};
use rvhost::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use rvhost::frontend::{FrontendOptions, MemTableMode, TxLayout};
use rvhost::mbuf::Mbuf;
use rvhost::net::{
    AsyncConfig, AsyncCopyOps, DmaCopy, QueuePair, async_channel_register, async_clear_queue,
    async_stats, async_try_dequeue_burst, poll_enqueue_completed, submit_enqueue_burst,
};
use rvhost::protocol::payload::{MemoryRegion, MemoryTable, Payload, SingleMemRegion};
use rvhost::protocol::{FrontendReq as R, Header};
use rvhost_dma::hw::{DsaChannel, DsaDevice, IoatChannel, MapperSet};
use rvhost_dma::model::{
    DsaModel, DsaModelConfig, IoatModel, IoatModelConfig, ModelWorker, Served,
};
use rvhost_dma::soft::{Idle, WorkerConfig};
use rvhost_dma::{ChannelConfig, DmaError, Iova};

const Q0: QueuePair = QueuePair(0);
const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
/// Size of the extra region the tests add: 4 MiB, which no frontend region has.
const EXTRA: u64 = 4 << 20;

/// Mapped ranges, `(iova, len)`.
type Ranges = BTreeSet<(u64, u64)>;

/// The two models, their channels (until registered) and the thread serving them.
struct Models {
    ioat: IoatModel,
    dsa: DsaModel,
    channels: Option<(Box<dyn AsyncCopyOps>, Box<dyn AsyncCopyOps>)>,
    /// What the drivers mapped for themselves (rings, completion records): IOAT's, DSA's.
    own: (Ranges, Ranges),
    _worker: ModelWorker,
}

impl Models {
    fn new() -> Models {
        let cfg = ChannelConfig {
            max_sges: 1,
            ..ChannelConfig::new(256)
        };
        let ioat = IoatModel::new(IoatModelConfig::default());
        let dsa = DsaModel::new(DsaModelConfig {
            parallel: 4,
            ..DsaModelConfig::default()
        });
        let rx = IoatChannel::new(ioat.clone(), &cfg, Arc::new(ioat.clone())).unwrap();
        let dev = DsaDevice::setup(dsa.clone()).unwrap();
        let tx = DsaChannel::new(dev, dsa.portal(0), &cfg, Arc::new(dsa.clone())).unwrap();
        let served = vec![Served::Ioat(ioat.clone()), Served::Dsa(dsa.clone())];
        let worker = ModelWorker::serve(
            served,
            WorkerConfig {
                idle: Idle::Yield,
                ..WorkerConfig::default()
            },
        )
        .unwrap();
        let own = |v: Vec<(Iova, u64)>| v.into_iter().map(|(i, l)| (i.0, l)).collect();
        Models {
            own: (own(ioat.mappings()), own(dsa.mappings())),
            ioat,
            dsa,
            channels: Some((Box::new(DmaCopy::new(rx)), Box::new(DmaCopy::new(tx)))),
            _worker: worker,
        }
    }

    /// The mapper the socket gets: both models' IOMMUs.
    fn mapper(&self) -> Arc<dyn DmaMapper> {
        Arc::new(MapperSet::new(vec![
            Arc::new(Served::Ioat(self.ioat.clone())),
            Arc::new(Served::Dsa(self.dsa.clone())),
        ]))
    }

    /// What is mapped in the models besides their drivers' own rings and records; the two
    /// models must agree on it (one mapper maps both).
    fn mapped(&self) -> BTreeSet<(u64, u64)> {
        let set = |v: Vec<(Iova, u64)>| -> BTreeSet<(u64, u64)> {
            v.into_iter().map(|(i, l)| (i.0, l)).collect()
        };
        let ioat: BTreeSet<_> = set(self.ioat.mappings())
            .difference(&self.own.0)
            .copied()
            .collect();
        let dsa: BTreeSet<_> = set(self.dsa.mappings())
            .difference(&self.own.1)
            .copied()
            .collect();
        assert_eq!(ioat, dsa, "both models map the same");
        ioat
    }

    fn violations(&self) -> Vec<String> {
        let mut v = self.ioat.violations();
        v.extend(self.dsa.violations());
        v
    }
}

/// The test bed: models (strict), a socket whose devices map their memory through them (when
/// `map_guest`), the pool mapped in them (the test's part).
struct Iommu {
    b: Bed,
    m: Models,
    mapper: Arc<dyn DmaMapper>,
    pool: Vec<(u64, u64)>,
}

impl Iommu {
    /// `socket` makes the socket's mapper from the models' (`None`: the socket has none).
    fn new(
        tag: &str,
        mode: MemTableMode,
        socket: impl FnOnce(Arc<dyn DmaMapper>) -> Option<Arc<dyn DmaMapper>>,
    ) -> Iommu {
        let m = Models::new();
        let mapper = m.mapper();
        let socket_mapper = socket(Arc::clone(&mapper));
        let opts = FrontendOptions {
            features: FEATURES,
            mem_table: mode,
            regions: 2,
            tx_layout: TxLayout::Inline,
            mem_size: 16 << 20,
            force_small_pages: true,
            ..FrontendOptions::default()
        };
        let b = Bed::configured(tag, Flags::ASYNC_COPY, opts, tag, 2048, 64, |d, p| {
            if let Some(mapper) = socket_mapper {
                d.set_dma_mapper(p, mapper).unwrap();
            }
        });
        let pool: Vec<(u64, u64)> = (b.pool.memory_ranges().into_iter())
            .map(|(va, len)| (va as u64, len as u64))
            .collect();
        for (va, len) in b.pool.memory_ranges() {
            // SAFETY: the pool's memory, which `b` keeps until `Drop for Iommu` unmapped it;
            // mbuf data is reached only through raw pointers while a copy may write it.
            unsafe { mapper.map(Iova::from_ptr(va), va, len) }.unwrap();
        }
        let mut it = Iommu { b, m, mapper, pool };
        let (rx, tx) = it.m.channels.take().unwrap();
        let config = AsyncConfig {
            threshold: 0,
            ..AsyncConfig::default()
        };
        async_channel_register(&it.b.dev, Q0.rx(), config, rx).unwrap();
        async_channel_register(&it.b.dev, Q0.tx(), config, tx).unwrap();
        it
    }

    /// The backend's regions, as host ranges (what must be mapped).
    fn regions(&self) -> Vec<(u64, u64)> {
        let vq = self.b.dev.lock_vring(0).unwrap();
        vq.mem
            .regions()
            .map(|r| (r.host_ptr() as u64, r.size()))
            .collect()
    }

    /// The models map exactly their drivers' rings, the pool and the backend's regions.
    fn assert_exactly_mapped(&self, what: &str) {
        assert!(!self.m.own.0.is_empty() && !self.m.own.1.is_empty());
        let want: BTreeSet<_> = (self.pool.iter().copied()).chain(self.regions()).collect();
        assert_eq!(self.m.mapped(), want, "{what}");
    }

    /// Packets both ways through the async path, every byte checked, no DMA job failed.
    fn traffic(&mut self, round: usize) {
        let b = &mut self.b;
        let mut cache = b.pool.cache();
        let sent: Vec<Vec<u8>> = (0..48).map(|i| payload(60 + i * 31, round + i)).collect();
        let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        let mut got: Vec<Mbuf> = Vec::new();
        let mut queued = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < sent.len() && Instant::now() < deadline {
            let tx = b.fe.tx(0).unwrap();
            tx.reap();
            queued += tx.send(&refs[queued..]);
            async_try_dequeue_burst(&b.dev, Q0.tx(), &mut cache, &mut got, 32);
        }
        assert_eq!(got.len(), sent.len(), "round {round}: guest to host");
        for (m, want) in got.iter().zip(&sent) {
            assert_eq!(&packet_bytes(m), want, "round {round}: guest to host");
        }
        cache.free_bulk(got);

        let mut mbufs: Vec<Mbuf> = sent.iter().map(|p| mbuf_of(&mut cache, p)).collect();
        let mut back = Vec::new();
        let mut recv = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while (back.len() < sent.len() || recv.len() < sent.len()) && Instant::now() < deadline {
            b.fe.rx(0).unwrap().post_rx(64, 2048);
            submit_enqueue_burst(&b.dev, Q0.rx(), &mut mbufs);
            poll_enqueue_completed(&b.dev, Q0.rx(), &mut back, 64);
            recv.extend(b.fe.rx(0).unwrap().recv(64));
        }
        assert_eq!(recv, sent, "round {round}: host to guest");
        cache.free_bulk(back);
        cache.free_bulk(mbufs);
    }

    /// DMA jobs that failed on each queue (receive, transmit).
    fn dma_errors(&self) -> (u64, u64) {
        let e = |s: Option<rvhost::net::AsyncStats>| s.map_or(0, |s| s.dma_errors);
        (
            e(async_stats(&self.b.dev, Q0.rx())),
            e(async_stats(&self.b.dev, Q0.tx())),
        )
    }

    /// Sends `req` with NEED_REPLY and returns the status.
    fn status(&mut self, req: R, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u64 {
        let ep = self.b.fe.endpoint().unwrap();
        ep.send_request(req, Header::NEED_REPLY, payload, fds)
            .unwrap();
        let (_, p) = ep.recv_reply(req).unwrap();
        u64::parse(&p).unwrap()
    }
}

impl Drop for Iommu {
    fn drop(&mut self) {
        for &(va, len) in &self.pool {
            self.mapper.unmap(Iova(va), len as usize);
        }
        if !std::thread::panicking() {
            assert_eq!(self.m.violations(), Vec::<String>::new());
        }
    }
}

/// A region of `EXTRA` bytes in a memfd of its own, far above the frontend's memory.
fn extra_region() -> (MemoryRegion, OwnedFd) {
    let fd = memfd_create("dma-iommu-extra", MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, EXTRA as i64).unwrap();
    let r = MemoryRegion {
        guest_phys_addr: 1 << 40,
        memory_size: EXTRA,
        userspace_addr: 0x7e00_0000_0000,
        mmap_offset: 0,
    };
    (r, fd)
}

fn mem_reg(region: MemoryRegion) -> Vec<u8> {
    SingleMemRegion { region }.to_bytes()
}

/// A mapper that refuses regions of `EXTRA` bytes and passes the rest on.
struct RefuseExtra(Arc<dyn DmaMapper>);

impl DmaMapper for RefuseExtra {
    unsafe fn map(&self, iova: Iova, va: *const u8, len: usize) -> Result<(), DmaError> {
        if len as u64 == EXTRA {
            return Err(DmaError::InvalidConfig("test mapper refuses 4 MiB regions"));
        }
        // SAFETY: this method's contract, passed on.
        unsafe { self.0.map(iova, va, len) }
    }
    fn unmap(&self, iova: Iova, len: usize) {
        self.0.unmap(iova, len)
    }
}

/// The frontend's table, plus `extra` if given, as a SET_MEM_TABLE payload and its fds.
fn table(it: &Iommu, extra: Option<MemoryRegion>) -> Vec<u8> {
    let mut regions = it.b.fe.memory_regions();
    regions.extend(extra);
    MemoryTable { regions }.to_bytes()
}

#[test]
fn traffic_passes_with_every_region_mapped_and_a_new_table_remaps() {
    let mut it = Iommu::new("iommu-table", MemTableMode::SetMemTable, Some);
    it.assert_exactly_mapped("after the first table");
    assert_eq!(it.regions().len(), 2);
    it.traffic(0);
    let shm: OwnedFd = it.b.fe.shm().region().fd().try_clone_to_owned().unwrap();
    let (extra, extra_fd) = extra_region();

    // The same table again (QEMU re-sends it): kept, nothing mapped again (the models would
    // refuse an overlapping map, and the request with it).
    let before = it.m.mapped();
    let p = table(&it, None);
    assert_eq!(
        it.status(R::SetMemTable, &p, &[shm.as_fd(), shm.as_fd()]),
        0
    );
    assert_eq!(
        it.m.mapped(),
        before,
        "an identical table maps nothing again"
    );
    it.traffic(1);

    // A new table (one more region) with copies in flight: every region is new (mapped
    // afresh), the old ones are unmapped after the drain.
    let old = it.regions();
    for round in 2..5 {
        let mut cache = it.b.pool.cache();
        let mut mbufs: Vec<Mbuf> = (0..32)
            .map(|i| mbuf_of(&mut cache, &payload(1500, round * 100 + i)))
            .collect();
        it.b.fe.rx(0).unwrap().post_rx(64, 2048);
        submit_enqueue_burst(&it.b.dev, Q0.rx(), &mut mbufs);
        let with_extra = round % 2 == 0;
        let p = table(&it, with_extra.then_some(extra));
        let fds: Vec<BorrowedFd<'_>> = if with_extra {
            vec![shm.as_fd(), shm.as_fd(), extra_fd.as_fd()]
        } else {
            vec![shm.as_fd(), shm.as_fd()]
        };
        assert_eq!(it.status(R::SetMemTable, &p, &fds), 0, "round {round}");
        it.assert_exactly_mapped(&format!("round {round}: after the new table"));
        assert_eq!(it.regions().len(), 2 + usize::from(with_extra));
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while back.len() < 32 && Instant::now() < deadline {
            poll_enqueue_completed(&it.b.dev, Q0.rx(), &mut back, 64);
        }
        assert_eq!(
            back.len(),
            32,
            "round {round}: the packets in flight came back"
        );
        let got = it.b.fe.rx(0).unwrap().recv(64);
        assert_eq!(got.len(), 32, "round {round}: delivered across the change");
        cache.free_bulk(back);
        cache.free_bulk(mbufs);
        it.traffic(round);
    }
    // A later region may be mmapped at an address an unmapped one had (the kernel reuses
    // them): only the first table's ranges the current table does not hold must be gone.
    let now: BTreeSet<_> = it.m.mapped();
    let current = it.regions();
    assert!(
        old.iter()
            .filter(|r| !current.contains(r))
            .all(|r| !now.contains(r)),
        "the first table's regions are unmapped"
    );
    assert_eq!(it.dma_errors(), (0, 0));
    let rx = async_stats(&it.b.dev, Q0.rx()).unwrap();
    let tx = async_stats(&it.b.dev, Q0.tx()).unwrap();
    assert_eq!(
        (rx.late_drains, tx.late_drains),
        (0, 0),
        "the dispatcher drained first"
    );

    // The connection's end, with copies in flight, unmaps every region after they are
    // drained (none fails); the drivers' rings and the pool stay.
    let mut cache = it.b.pool.cache();
    let mut mbufs: Vec<Mbuf> = (0..32)
        .map(|i| mbuf_of(&mut cache, &payload(1500, 900 + i)))
        .collect();
    it.b.fe.rx(0).unwrap().post_rx(64, 2048);
    submit_enqueue_burst(&it.b.dev, Q0.rx(), &mut mbufs);
    it.b.fe.disconnect();
    let want: BTreeSet<_> = it.pool.iter().copied().collect();
    assert!(
        eventually(Duration::from_secs(5), || it.m.mapped() == want),
        "after the disconnect: {:?}",
        it.m.mapped()
    );
    assert_eq!(
        it.dma_errors(),
        (0, 0),
        "every copy finished before its unmap"
    );
    let mut back = Vec::new();
    async_clear_queue(&it.b.dev, Q0.rx(), &mut back);
    poll_enqueue_completed(&it.b.dev, Q0.rx(), &mut back, 64);
    assert_eq!(back.len() + mbufs.len(), 32, "every mbuf back once");
    cache.free_bulk(back);
    cache.free_bulk(mbufs);
}

#[test]
fn add_and_remove_regions_map_once_and_unmap_with_the_last_reference() {
    let mut it = Iommu::new("iommu-slots", MemTableMode::AddMemReg, Some);
    it.assert_exactly_mapped("after the regions were added");
    it.traffic(0);
    let shm: OwnedFd = it.b.fe.shm().region().fd().try_clone_to_owned().unwrap();
    let regions = it.b.fe.memory_regions();
    let mapped = it.m.mapped();

    // QEMU's second vhost device adds the same regions: counted, not mapped again.
    for r in &regions {
        assert_eq!(it.status(R::AddMemReg, &mem_reg(*r), &[shm.as_fd()]), 0);
    }
    assert_eq!(it.m.mapped(), mapped, "duplicates map nothing");
    // One removal each: still held, still mapped.
    for r in &regions {
        assert_eq!(it.status(R::RemMemReg, &mem_reg(*r), &[]), 0);
    }
    assert_eq!(it.m.mapped(), mapped, "still referenced: still mapped");
    it.traffic(1);

    // A new region: mapped; removed: unmapped; traffic goes on throughout.
    let (extra, extra_fd) = extra_region();
    assert_eq!(
        it.status(R::AddMemReg, &mem_reg(extra), &[extra_fd.as_fd()]),
        0
    );
    assert_eq!(it.regions().len(), 3);
    it.assert_exactly_mapped("after ADD_MEM_REG");
    it.traffic(2);
    assert_eq!(it.status(R::RemMemReg, &mem_reg(extra), &[]), 0);
    assert_eq!(it.regions().len(), 2);
    it.assert_exactly_mapped("after REM_MEM_REG");
    assert_eq!(it.m.mapped(), mapped);
    it.traffic(3);
    assert_eq!(it.dma_errors(), (0, 0));

    it.b.fe.disconnect();
    let want: BTreeSet<_> = it.pool.iter().copied().collect();
    assert!(eventually(Duration::from_secs(5), || it.m.mapped() == want));
}

/// A mapper that refuses a region refuses the memory change: a failure status, the
/// connection and the old table kept, nothing of the new table left mapped in any model.
#[test]
fn a_refused_mapping_refuses_the_memory_change_cleanly() {
    for mode in [MemTableMode::SetMemTable, MemTableMode::AddMemReg] {
        let mut it = Iommu::new("iommu-refuse", mode, |m| Some(Arc::new(RefuseExtra(m))));
        it.assert_exactly_mapped("before");
        let mapped = it.m.mapped();
        let regions = it.regions();
        let shm: OwnedFd = it.b.fe.shm().region().fd().try_clone_to_owned().unwrap();
        let (extra, extra_fd) = extra_region();
        let status = match mode {
            MemTableMode::SetMemTable => {
                let p = table(&it, Some(extra));
                let fds = [shm.as_fd(), shm.as_fd(), extra_fd.as_fd()];
                it.status(R::SetMemTable, &p, &fds)
            }
            MemTableMode::AddMemReg => {
                it.status(R::AddMemReg, &mem_reg(extra), &[extra_fd.as_fd()])
            }
        };
        assert_ne!(status, 0, "{mode:?}: refused");
        assert_eq!(it.regions(), regions, "{mode:?}: the old table stays");
        assert_eq!(it.m.mapped(), mapped, "{mode:?}: nothing half-mapped");
        it.traffic(0);
        assert_eq!(it.dma_errors(), (0, 0));
    }
}

/// The mutation: the same traffic without the socket's mapper. The strict models fault on
/// guest memory: every job fails, the async path copies its bytes with the CPU (the guest and
/// the host still get every byte) and counts it.
#[test]
fn without_the_mapping_the_strict_models_fault_and_the_cpu_copies() {
    let mut it = Iommu::new("iommu-none", MemTableMode::SetMemTable, |_| None);
    assert!(
        it.regions().iter().all(|r| !it.m.mapped().contains(r)),
        "no guest region mapped"
    );
    it.traffic(0);
    let (rx, tx) = it.dma_errors();
    assert!(rx > 0 && tx > 0, "the models faulted: rx {rx}, tx {tx}");
    assert!(
        it.m.ioat.stats().halts > 0,
        "the IOAT channel halted on the fault"
    );
}

/// A mapper only makes sense on the async path, and only before the socket starts.
#[test]
fn a_mapper_needs_async_copy_and_a_socket_not_started() {
    use rvhost::driver::{Driver, DriverError};
    use rvhost_dma::hw::IdentityMapper;
    let d = Driver::new().unwrap();
    let (sync, asynch) = (
        common::sock_path("iommu-sync"),
        common::sock_path("iommu-async"),
    );
    d.register(&sync, Flags::empty()).unwrap();
    let r = d.set_dma_mapper(&sync, Arc::new(IdentityMapper));
    assert!(matches!(r, Err(DriverError::NotAsyncCopy(_))), "{r:?}");
    d.register(&asynch, Flags::ASYNC_COPY).unwrap();
    d.set_dma_mapper(&asynch, Arc::new(IdentityMapper)).unwrap();
    d.start(&asynch).unwrap();
    let r = d.set_dma_mapper(&asynch, Arc::new(IdentityMapper));
    assert!(matches!(r, Err(DriverError::AlreadyStarted(_))), "{r:?}");
}

/// A packet of 1000 bytes carrying its sequence number in its first 8.
fn numbered(seq: u64) -> Vec<u8> {
    let mut p = payload(1000, seq as usize);
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

/// Memory tables replaced while a data-plane thread keeps submitting on the async receive
/// queue: its bursts may run between the dispatcher's drain and the new table (the vring's own
/// drain then takes them), and no copy may ever meet an unmapped region (none fails). The guest
/// gets every packet, in order.
#[test]
fn tables_replaced_under_concurrent_traffic_never_fault() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut it = Iommu::new("iommu-concurrent", MemTableMode::SetMemTable, Some);
    let shm: OwnedFd = it.b.fe.shm().region().fd().try_clone_to_owned().unwrap();
    let (extra, extra_fd) = extra_region();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (dev, pool, stop) = (it.b.dev.clone(), it.b.pool.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut cache = pool.cache();
            let (mut seq, mut pending, mut back) = (0u64, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                while pending.len() < 32 {
                    pending.push(mbuf_of(&mut cache, &numbered(seq)));
                    seq += 1;
                }
                submit_enqueue_burst(&dev, Q0.rx(), &mut pending);
                poll_enqueue_completed(&dev, Q0.rx(), &mut back, 64);
                cache.free_bulk(std::mem::take(&mut back));
            }
            // What is still in the channel comes back once it is drained.
            let deadline = Instant::now() + Duration::from_secs(5);
            while rvhost::net::async_in_flight(&dev, Q0.rx()).unwrap_or(0) > 0
                && Instant::now() < deadline
            {
                poll_enqueue_completed(&dev, Q0.rx(), &mut back, 64);
            }
            cache.free_bulk(back);
            cache.free_bulk(pending);
        })
    };
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut guest = |it: &mut Iommu, ms: u64| {
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            it.b.fe.rx(0).unwrap().post_rx(64, 2048);
            got.extend(it.b.fe.rx(0).unwrap().recv(64));
        }
    };
    for round in 0..8 {
        guest(&mut it, 50);
        let with_extra = round % 2 == 0;
        let p = table(&it, with_extra.then_some(extra));
        let fds: Vec<BorrowedFd<'_>> = if with_extra {
            vec![shm.as_fd(), shm.as_fd(), extra_fd.as_fd()]
        } else {
            vec![shm.as_fd(), shm.as_fd()]
        };
        assert_eq!(it.status(R::SetMemTable, &p, &fds), 0, "round {round}");
        it.assert_exactly_mapped(&format!("round {round}"));
    }
    guest(&mut it, 50);
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    guest(&mut it, 200);
    assert_eq!(it.dma_errors().0, 0, "no copy met an unmapped region");
    assert!(got.len() > 100, "traffic flowed: {} packets", got.len());
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &numbered(i as u64), "packet {i}: every one, in order");
    }
}
