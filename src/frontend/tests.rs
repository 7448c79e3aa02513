//! Tests of [`super`] against the rvhost back-end ([`Driver`]) over real Unix sockets.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::driver::{Device, DeviceOps, Driver, Flags};
use crate::features::{
    VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
    protocol as pf,
};
use crate::memory::Gpa;
use crate::protocol::payload::{Payload, VringState};
use crate::protocol::{ConnError, FrontendReq, Header, VHOST_USER_F_PROTOCOL_FEATURES_MASK};

/// What the callbacks saw, by device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    NewConnection(u32),
    NewDevice(u32),
    DestroyDevice(u32),
    DestroyConnection(u32),
    VringState(u32, u16, bool),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    devices: Mutex<Vec<Device>>,
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    /// Waits until `pred` holds for the events (5 s at most) and returns them.
    fn wait(&self, what: &str, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ev = self.events.lock().unwrap().clone();
            if pred(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "timeout waiting for {what}: {ev:?}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for `e` and returns the device it names.
    fn wait_for(&self, e: Event) -> Option<Device> {
        self.wait(&format!("{e:?}"), |ev| ev.contains(&e));
        let id = match e {
            Event::NewConnection(i)
            | Event::NewDevice(i)
            | Event::DestroyDevice(i)
            | Event::DestroyConnection(i)
            | Event::VringState(i, ..) => i,
        };
        self.devices
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.id().0 == id)
            .cloned()
    }

    /// The newest device that reached `new_device`.
    fn running_device(&self) -> Device {
        self.running_device_other_than(None)
    }

    /// The newest device that reached `new_device`, other than `old`. (The back-end acks the
    /// request that makes a device ready before it calls `new_device`, so the call may come
    /// after `Frontend::start` returns.)
    fn running_device_other_than(&self, old: Option<&Device>) -> Device {
        let old = old.map(|d| d.id().0);
        let ev = self.wait("new_device", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::NewDevice(i) if Some(*i) != old))
        });
        let id = ev
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::NewDevice(i) => Some(*i),
                _ => None,
            })
            .unwrap();
        self.wait_for(Event::NewDevice(id)).unwrap()
    }
}

impl DeviceOps for Recorder {
    fn new_device(&self, dev: &Device) -> Result<(), crate::driver::Refused> {
        self.push(Event::NewDevice(dev.id().0));
        Ok(())
    }
    fn destroy_device(&self, dev: &Device) {
        self.push(Event::DestroyDevice(dev.id().0));
    }
    fn vring_state_changed(&self, dev: &Device, queue: u16, enabled: bool) {
        self.push(Event::VringState(dev.id().0, queue, enabled));
    }
    fn new_connection(&self, dev: &Device) {
        self.devices.lock().unwrap().push(dev.clone());
        self.push(Event::NewConnection(dev.id().0));
    }
    fn destroy_connection(&self, dev: &Device) {
        self.push(Event::DestroyConnection(dev.id().0));
    }
}

/// A socket path under the temp dir, unique in this process.
fn sock_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "rvhost-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// An rvhost back-end serving one path, with a recorder; unregistered on drop.
struct Backend {
    driver: Driver,
    path: PathBuf,
    rec: Arc<Recorder>,
}

impl Backend {
    /// Registers `path` with `flags`, lets `tweak` change its settings, and starts it.
    fn start(path: &Path, flags: Flags, tweak: impl FnOnce(&Driver, &Path)) -> Self {
        let driver = Driver::new().unwrap();
        driver.register(path, flags).unwrap();
        let rec = Arc::new(Recorder::default());
        driver.set_callbacks(path, rec.clone()).unwrap();
        tweak(&driver, path);
        driver.start(path).unwrap();
        Self {
            driver,
            path: path.to_path_buf(),
            rec,
        }
    }

    fn server(tweak: impl FnOnce(&Driver, &Path)) -> Self {
        Self::start(&sock_path(), Flags::empty(), tweak)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.driver.unregister(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Small 4 KiB-page memory, so tests stay light.
fn opts() -> FrontendOptions {
    FrontendOptions {
        mem_size: 4 << 20,
        force_small_pages: true,
        connect_timeout: Duration::from_secs(5),
        ..FrontendOptions::default()
    }
}

/// Checks what the back-end holds for vring `v` against the front-end's view.
fn check_vring(dev: &Device, fe: &Frontend, v: u16, base: u16) {
    let vq = dev.lock_vring(usize::from(v)).expect("vring index");
    let info = fe.ring_info(v).unwrap();
    assert!(vq.rings.is_some(), "vring {v} translated");
    assert_eq!(vq.size, info.size);
    assert_eq!(vq.last_avail_idx, base, "vring {v} base");
    let addrs = vq.addrs.unwrap();
    assert_eq!(
        (addrs.desc, addrs.avail, addrs.used),
        (info.desc.fva, info.avail.fva, info.used.fva)
    );
    assert!(vq.enabled && vq.kick_set && vq.call_set);
    // The back-end's mapping shows the front-end's bytes: the avail index the front-end
    // wrote, and a marker written now in the descriptor table.
    let rings = vq.rings.as_ref().unwrap();
    let idx = rings.avail.slice().load_u16_acquire(2).unwrap();
    assert_eq!(
        idx,
        fe.shm()
            .slice()
            .read_obj::<u16>(info.avail.offset + 2)
            .unwrap()
    );
    let marker = 0x5eed_0000_0000_0000 | u64::from(v);
    fe.shm()
        .slice()
        .write_obj(info.desc.offset + 16 * 3, marker)
        .unwrap();
    assert_eq!(rings.desc.slice().read_obj::<u64>(16 * 3).unwrap(), marker);
}

#[test]
fn frontend_client_negotiates_with_the_backend() {
    let be = Backend::server(|_, _| {});
    let mut fe = Frontend::connect(&be.path, opts()).unwrap();
    assert_eq!(fe.role(), Role::Client);
    let neg = fe.start().unwrap();
    assert_eq!(
        neg.features,
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_RING_F_EVENT_IDX
            | VHOST_USER_F_PROTOCOL_FEATURES_MASK
    );
    assert_eq!(
        neg.protocol_features,
        pf::MQ | pf::REPLY_ACK | pf::CONFIGURE_MEM_SLOTS | pf::STATUS
    );
    assert_eq!(
        neg.queue_num,
        Some(u64::from(crate::driver::device::MAX_QUEUE_PAIRS))
    );
    assert_eq!(neg.hdr_len, 12);
    assert!(fe.is_running());

    let dev = be.rec.running_device();
    assert_eq!(dev.features(), neg.features);
    assert_eq!(dev.protocol_features(), neg.protocol_features);
    assert_eq!(
        dev.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    );
    assert_eq!(dev.vring_count(), 2);
    check_vring(&dev, &fe, 0, 0);
    check_vring(&dev, &fe, 1, 0);
    {
        let vq = dev.lock_vring(0).unwrap();
        assert!(vq.kick.is_some() && vq.call.is_some());
        assert_eq!(vq.mem.len(), 1);
    }
    assert_eq!(fe.get_status().unwrap(), 15);

    let bases = fe.stop().unwrap();
    assert_eq!(bases, [0, 0]);
    assert!(!fe.is_running());
    let id = dev.id().0;
    be.rec.wait_for(Event::DestroyDevice(id));
    assert!(dev.lock_vring(0).unwrap().rings.is_none(), "stopped");
    drop(fe);
    let ev = be.rec.wait("destroy_connection", |ev| {
        ev.contains(&Event::DestroyConnection(id))
    });
    eprintln!("EVENTS {ev:?}");
    assert_eq!(ev.first(), Some(&Event::NewConnection(id)));
    assert_eq!(ev.iter().filter(|e| **e == Event::NewDevice(id)).count(), 1);
}

#[test]
fn frontend_server_accepts_a_client_backend() {
    let path = sock_path();
    let mut fe = Frontend::listen(&path, opts()).unwrap();
    assert!(!fe.is_connected());
    assert!(matches!(
        fe.start(),
        Err(FrontendError::NotConnected("start"))
    ));
    let be = Backend::start(&path, Flags::CLIENT, |_, _| {});
    fe.accept().unwrap();
    assert_eq!(fe.role(), Role::Server);
    fe.start().unwrap();
    let dev = be.rec.running_device();
    check_vring(&dev, &fe, 0, 0);
    check_vring(&dev, &fe, 1, 0);
    let id = dev.id().0;
    fe.stop().unwrap();
    be.rec.wait_for(Event::DestroyDevice(id));
    fe.disconnect();
    be.rec.wait_for(Event::DestroyConnection(id));
    drop(fe);
    assert!(!path.exists(), "the listening socket file is removed");
}

#[test]
fn server_reconnect_waits_for_the_client_backend() {
    let path = sock_path();
    let mut fe = Frontend::listen(&path, opts()).unwrap();
    let be = Backend::start(&path, Flags::CLIENT, |_, _| {});
    fe.accept().unwrap();
    fe.start().unwrap();
    let first = be.rec.running_device();
    // The back-end retries every second after the front-end hangs up.
    fe.reconnect().unwrap();
    be.rec.wait_for(Event::DestroyConnection(first.id().0));
    let second = be.rec.running_device_other_than(Some(&first));
    assert_ne!(second.id(), first.id());
    check_vring(&second, &fe, 0, 0);
}

#[test]
fn queues_can_move_to_worker_threads() {
    fn send<T: Send>() {}
    send::<Frontend>();
    send::<RxQueue>();
    send::<TxQueue>();
    let be = Backend::server(|_, _| {});
    let o = FrontendOptions {
        interrupts: true,
        ..opts()
    };
    let mut fe = Frontend::connect(&be.path, o).unwrap();
    fe.start().unwrap();
    let info = *fe.ring_info(0).unwrap();
    assert_eq!(
        fe.shm().slice().read_obj::<u16>(info.avail.offset).unwrap(),
        0,
        "interrupts wanted"
    );
    let (rx, tx) = fe.queues();
    thread::scope(|s| {
        s.spawn(|| assert_eq!(rx[0].post_rx(8, 2048), 8));
        s.spawn(|| assert_eq!(tx[0].send(&[&[7u8; 100]]), 1));
    });
    assert_eq!(fe.rx(0).unwrap().posted(), 8);
}

#[test]
fn kicks_reach_the_backend_and_calls_the_frontend() {
    let be = Backend::server(|_, _| {});
    let mut fe = Frontend::connect(&be.path, opts()).unwrap();
    fe.start().unwrap();
    let dev = be.rec.running_device();
    let tx = fe.tx(0).unwrap();
    assert_eq!(tx.send(&[&[0xab; 60], &[0xcd; 1500]]), 2);
    assert_eq!(tx.stats().kicks, 1);
    let vq = dev.lock_vring(1).unwrap();
    let mut buf = [0u8; 8];
    let kick = vq.kick.as_ref().unwrap();
    assert_eq!(nix::unistd::read(kick, &mut buf).unwrap(), 8);
    assert_eq!(u64::from_ne_bytes(buf), 1);
    let avail = vq.rings.as_ref().unwrap().avail.slice();
    assert_eq!(avail.load_u16_acquire(2).unwrap(), 2);
    // The back-end calls: the front-end wakes.
    let call = vq.call.as_ref().unwrap();
    nix::unistd::write(call, &1u64.to_ne_bytes()).unwrap();
    drop(vq);
    assert!(fe.tx(0).unwrap().wait_call(Duration::from_secs(5)).unwrap());
    // Posting receive buffers kicks the receive vring.
    assert_eq!(fe.rx(0).unwrap().post_rx(16, 2048), 16);
    let vq = dev.lock_vring(0).unwrap();
    assert_eq!(
        nix::unistd::read(vq.kick.as_ref().unwrap(), &mut buf).unwrap(),
        8
    );
}

#[test]
fn multi_region_tables_both_ways() {
    for mode in [MemTableMode::SetMemTable, MemTableMode::AddMemReg] {
        let be = Backend::server(|_, _| {});
        let o = FrontendOptions {
            regions: 4,
            mem_table: mode,
            gpa_base: 0x1_0000_0000,
            gpa_gap: 0x10_0000,
            ..opts()
        };
        let mut fe = Frontend::connect(&be.path, o).unwrap();
        let neg = fe.start().unwrap();
        assert_eq!(
            neg.max_mem_slots.is_some(),
            mode == MemTableMode::AddMemReg,
            "{mode:?}"
        );
        let regions = fe.memory_regions();
        assert_eq!(regions.len(), 4);
        assert_eq!(
            regions[1].guest_phys_addr,
            0x1_0000_0000 + (1 << 20) + 0x10_0000
        );
        let dev = be.rec.running_device();
        check_vring(&dev, &fe, 0, 0);
        check_vring(&dev, &fe, 1, 0);
        let vq = dev.lock_vring(1).unwrap();
        assert_eq!(vq.mem.len(), 4, "{mode:?}");
        // A buffer's GPA (past the first hole) translates to the front-end's bytes.
        let tx = fe.tx(0).unwrap();
        let (gpa, off) = (tx.pool().gpa(255), tx.pool().offset(255));
        assert!(gpa >= regions[1].guest_phys_addr, "{gpa:#x}");
        fe.shm().slice().write_at(off, b"region").unwrap();
        let host = vq.mem.gpa_to_host(Gpa(gpa), 6).unwrap();
        let mut got = [0u8; 6];
        host.read_at(0, &mut got).unwrap();
        assert_eq!(&got, b"region");
        drop(vq);
        // Stop and start again on the same connection: the table is not added twice.
        fe.stop().unwrap();
        let again = fe.start().unwrap();
        assert_eq!(again.max_mem_slots, neg.max_mem_slots);
        let id = dev.id().0;
        be.rec.wait("second new_device", |ev| {
            ev.iter().filter(|e| **e == Event::NewDevice(id)).count() == 2
        });
        assert_eq!(dev.lock_vring(0).unwrap().mem.len(), 4, "{mode:?}");
    }
}

#[test]
fn hugepage_memory_when_the_pool_has_room() {
    let be = Backend::server(|_, _| {});
    let o = FrontendOptions {
        mem_size: 8 << 20,
        force_small_pages: false,
        regions: 2,
        ..opts()
    };
    let mut fe = Frontend::connect(&be.path, o).unwrap();
    let page = fe.shm().region().page_size();
    let regions = fe.memory_regions();
    assert_eq!(regions[1].mmap_offset, 4 << 20, "{page}");
    fe.start().unwrap();
    let dev = be.rec.running_device();
    check_vring(&dev, &fe, 0, 0);
    check_vring(&dev, &fe, 1, 0);
}

#[test]
fn polling_mode_sends_the_no_fd_flag() {
    let be = Backend::server(|_, _| {});
    let o = FrontendOptions {
        eventfds: false,
        ..opts()
    };
    let mut fe = Frontend::connect(&be.path, o).unwrap();
    fe.start().unwrap();
    let dev = be.rec.running_device();
    for v in 0..2 {
        let vq = dev.lock_vring(v).unwrap();
        assert!(vq.kick_set && vq.kick.is_none(), "vring {v}");
        assert!(vq.call_set && vq.call.is_none(), "vring {v}");
    }
    let tx = fe.tx(0).unwrap();
    assert!(tx.kick_fd().is_none());
    assert_eq!(tx.send(&[&[1; 64]]), 1);
    assert_eq!(tx.stats().kicks, 0);
    assert_eq!(
        fe.shm()
            .slice()
            .read_obj::<u16>(fe.ring_info(1).unwrap().avail.offset)
            .unwrap(),
        shm::VIRTQ_AVAIL_F_NO_INTERRUPT,
        "no call fd: interrupts off"
    );
}

#[test]
fn legacy_backend_without_protocol_features() {
    let be = Backend::server(|d, p| {
        d.disable_features(
            p,
            VHOST_USER_F_PROTOCOL_FEATURES_MASK | VIRTIO_RING_F_EVENT_IDX,
        )
        .unwrap();
    });
    let o = FrontendOptions {
        features: VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX,
        ..opts()
    };
    let mut fe = Frontend::connect(&be.path, o).unwrap();
    let neg = fe.start().unwrap();
    assert_eq!(neg.features, VIRTIO_NET_F_MRG_RXBUF, "intersection");
    assert_eq!(
        (neg.protocol_features, neg.offered_protocol_features),
        (0, 0)
    );
    let dev = be.rec.running_device();
    assert_eq!(dev.features(), VIRTIO_NET_F_MRG_RXBUF);
    // Enabled by the kick, not by SET_VRING_ENABLE.
    check_vring(&dev, &fe, 1, 0);
    fe.stop().unwrap();
    be.rec.wait_for(Event::DestroyDevice(dev.id().0));
}

#[test]
fn reconnect_restores_each_base_from_the_used_index() {
    let be = Backend::server(|_, _| {});
    let o = FrontendOptions {
        ring_base: 65535,
        ..opts()
    };
    let mut fe = Frontend::connect(&be.path, o).unwrap();
    fe.start().unwrap();
    let first = be.rec.running_device();
    check_vring(&first, &fe, 1, 65535);
    // Three packets; "the back-end" uses two of them (written by hand: the data path is not
    // built yet), then goes away.
    let tx = fe.tx(0).unwrap();
    assert_eq!(tx.send(&[&[1; 60], &[2; 60], &[3; 60]]), 3);
    let ring = tx.ring().unwrap().shared().clone();
    for (slot, id) in [(65535u16, 0u32), (0, 1)] {
        ring.write_used_elem(slot, VirtqUsedElem { id, len: 0 });
    }
    ring.store_used_idx(1);
    assert_eq!(ring.load_avail_idx(), 2);
    fe.reconnect().unwrap();
    let id = first.id().0;
    be.rec.wait_for(Event::DestroyConnection(id));
    let second = be.rec.running_device_other_than(Some(&first));
    assert_ne!(second.id(), first.id());
    check_vring(&second, &fe, 0, 65535);
    check_vring(&second, &fe, 1, 1);
    assert_eq!(fe.tx(0).unwrap().reap(), 2, "the front-end reaps as usual");
}

#[test]
fn stop_then_start_resumes_from_get_vring_base() {
    let be = Backend::server(|_, _| {});
    let o = FrontendOptions {
        ring_base: 7,
        ..opts()
    };
    let mut fe = Frontend::connect(&be.path, o).unwrap();
    fe.start().unwrap();
    let dev = be.rec.running_device();
    assert_eq!(fe.stop().unwrap(), [7, 7]);
    be.rec.wait_for(Event::DestroyDevice(dev.id().0));
    assert_eq!(fe.rx(0).unwrap().resume_base, Some(7));
    fe.start().unwrap();
    be.rec.wait("second new_device", |ev| {
        ev.iter()
            .filter(|e| **e == Event::NewDevice(dev.id().0))
            .count()
            == 2
    });
    check_vring(&dev, &fe, 0, 7);
    check_vring(&dev, &fe, 1, 7);
}

#[test]
fn multiqueue_needs_enough_backend_queues() {
    let be = Backend::server(|d, p| d.set_max_queue_pairs(p, 2).unwrap());
    let o = FrontendOptions {
        queue_pairs: 2,
        ..opts()
    };
    let mut fe = Frontend::connect(&be.path, o.clone()).unwrap();
    let neg = fe.start().unwrap();
    assert_eq!(neg.queue_num, Some(2));
    assert_ne!(neg.features & crate::features::VIRTIO_NET_F_MQ, 0);
    let dev = be.rec.running_device();
    assert_eq!(dev.vring_count(), 4);
    for v in 0..4 {
        check_vring(&dev, &fe, v, 0);
    }
    assert_eq!(fe.stop().unwrap().len(), 4);
    drop(fe);

    let mut fe = Frontend::connect(
        &be.path,
        FrontendOptions {
            queue_pairs: 3,
            ..o
        },
    )
    .unwrap();
    let err = fe.start().unwrap_err();
    assert!(matches!(err, FrontendError::Negotiation(_)), "{err}");
    assert!(err.to_string().contains("3 queue pairs wanted"), "{err}");
}

#[test]
fn errors_name_the_failed_step() {
    let missing = sock_path();
    let err = Frontend::connect(
        &missing,
        FrontendOptions {
            connect_timeout: Duration::ZERO,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, FrontendError::Connect { .. }), "{err}");

    let path = sock_path();
    let mut fe = Frontend::listen(
        &path,
        FrontendOptions {
            accept_timeout: Duration::from_millis(20),
            ..opts()
        },
    )
    .unwrap();
    assert!(matches!(
        fe.accept(),
        Err(FrontendError::AcceptTimeout { .. })
    ));
    drop(fe);

    let be = Backend::server(|_, _| {});
    let mut fe = Frontend::connect(
        &be.path,
        FrontendOptions {
            required_features: VIRTIO_F_RING_PACKED,
            ..opts()
        },
    )
    .unwrap();
    assert!(matches!(fe.start(), Err(FrontendError::Negotiation(_))));

    // ADD_MEM_REG without CONFIGURE_MEM_SLOTS on the back-end's side.
    let be = Backend::server(|d, p| d.set_protocol_features(p, pf::REPLY_ACK).unwrap());
    let mut fe = Frontend::connect(
        &be.path,
        FrontendOptions {
            mem_table: MemTableMode::AddMemReg,
            ..opts()
        },
    )
    .unwrap();
    let err = fe.start().unwrap_err();
    assert!(err.to_string().contains("CONFIGURE_MEM_SLOTS"), "{err}");

    // Options are checked before anything is allocated.
    let err = Frontend::connect(
        &be.path,
        FrontendOptions {
            queue_size: 3,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(
        err,
        FrontendError::InvalidOption {
            option: "queue_size",
            ..
        }
    ));
}

#[test]
fn raw_messages_through_the_escape_hatch() {
    let be = Backend::server(|_, _| {});
    let mut fe = Frontend::connect(&be.path, opts()).unwrap();
    fe.start().unwrap();
    let dev = be.rec.running_device();
    let id = dev.id().0;

    // A raw descriptor written straight into the transmit ring, published by hand.
    let info = *fe.ring_info(1).unwrap();
    let s = fe.shm().slice();
    let desc = VirtqDesc {
        addr: 0xdead_beef_0000,
        len: 64,
        flags: 0,
        next: 0,
    };
    s.write_obj(info.desc.offset + 16 * 9, desc).unwrap();
    s.write_obj::<u16>(info.avail.offset + 4, 9).unwrap();
    s.store_u16_release(info.avail.offset + 2, 1).unwrap();
    {
        let vq = dev.lock_vring(1).unwrap();
        let rings = vq.rings.as_ref().unwrap();
        assert_eq!(
            rings.desc.slice().read_obj::<u64>(16 * 9).unwrap(),
            desc.addr
        );
        assert_eq!(
            rings.avail.slice().read_obj::<[u16; 3]>(0).unwrap(),
            [shm::VIRTQ_AVAIL_F_NO_INTERRUPT, 1, 9]
        );
    }

    // A queue size that is not a power of two: the back-end closes the connection instead
    // of acknowledging.
    let ep = fe.endpoint().unwrap();
    assert!(ep.reply_ack());
    let bad = VringState { index: 0, num: 3 };
    ep.send_request(
        FrontendReq::SetVringNum,
        Header::NEED_REPLY,
        &bad.to_bytes(),
        &[],
    )
    .unwrap();
    let err = ep.wait_ack(FrontendReq::SetVringNum).unwrap_err();
    assert!(matches!(err, ConnError::Closed { .. }), "{err}");
    let ev = be
        .rec
        .wait("close", |ev| ev.contains(&Event::DestroyConnection(id)));
    assert!(ev.contains(&Event::DestroyDevice(id)));
    // The next step fails, naming its request.
    let err = fe.stop().unwrap_err();
    assert_eq!(
        err.failed_request(),
        Some(FrontendReq::SetVringEnable),
        "{err}"
    );
}
