//! Whole control-plane paths over real sockets with the Rust frontend: many devices in one
//! process, and a backend that restarts (both roles).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Event, Recorder, sock_path};
use rvhost::driver::{Driver, Flags};
use rvhost::frontend::{Frontend, FrontendOptions};

fn small() -> FrontendOptions {
    FrontendOptions {
        mem_size: 4 << 20,
        force_small_pages: true,
        queue_size: 64,
        ..FrontendOptions::default()
    }
}

fn new_devices(rec: &Recorder) -> usize {
    rec.count(|e| matches!(e, Event::NewDevice(..)))
}

#[test]
fn sixty_four_devices_in_one_process() {
    common::init_log();
    let rec = Recorder::new();
    let driver = Driver::new().unwrap();
    // 8 socket paths, 8 frontends on each.
    let paths: Vec<_> = (0..8).map(|_| sock_path("many")).collect();
    for p in &paths {
        driver.register(p, Flags::empty()).unwrap();
        driver.set_callbacks(p, Arc::clone(&rec) as _).unwrap();
        driver.start(p).unwrap();
    }
    let mut fronts = Vec::new();
    for i in 0..64 {
        let mut fe = Frontend::connect(&paths[i % 8], small()).unwrap();
        fe.start().unwrap();
        fronts.push(fe);
    }
    assert!(
        common::eventually(Duration::from_secs(20), || new_devices(&rec) == 64),
        "{} of 64 devices running",
        new_devices(&rec)
    );
    let devices = driver.devices();
    assert_eq!(devices.len(), 64);
    let mut ids: Vec<_> = devices.iter().map(|d| d.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 64, "device ids are distinct");
    for d in &devices {
        let vq = d.lock_vring(0).expect("vring 0");
        assert!(vq.is_ready());
    }
    // Half stop cleanly, half just go away.
    for (i, mut fe) in fronts.into_iter().enumerate() {
        if i % 2 == 0 {
            fe.stop().unwrap();
        }
    }
    assert!(common::eventually(Duration::from_secs(20), || {
        rec.count(|e| matches!(e, Event::DestroyConnection(_))) == 64
    }));
    assert_eq!(rec.count(|e| matches!(e, Event::DestroyDevice(_))), 64);
    assert!(driver.devices().is_empty());
    for p in &paths {
        driver.unregister(p).unwrap();
        assert!(!p.exists(), "unregister removes the socket file");
    }
}

#[test]
fn frontend_reconnects_to_a_restarted_backend_server() {
    common::init_log();
    let path = sock_path("restart-srv");
    let start = |rec: &Arc<Recorder>| {
        let d = Driver::new().unwrap();
        d.register(&path, Flags::empty()).unwrap();
        d.set_callbacks(&path, Arc::clone(rec) as _).unwrap();
        d.start(&path).unwrap();
        d
    };
    let rec = Recorder::new();
    let driver = start(&rec);
    let mut fe = Frontend::connect(&path, small()).unwrap();
    fe.start().unwrap();
    assert!(
        rec.wait_for(Duration::from_secs(10), |e| matches!(
            e,
            Event::NewDevice(..)
        ))
        .is_some()
    );
    // The backend process "crashes": its driver goes away with the connection.
    drop(driver);
    assert_eq!(rec.count(|e| matches!(e, Event::DestroyConnection(_))), 1);
    let rec2 = Recorder::new();
    let _driver = start(&rec2);
    fe.reconnect().unwrap();
    assert!(
        rec2.wait_for(Duration::from_secs(10), |e| matches!(
            e,
            Event::NewDevice(..)
        ))
        .is_some(),
        "no new_device after reconnect: {:?}",
        rec2.events()
    );
}

#[test]
fn client_backend_reconnects_when_the_frontend_server_returns() {
    common::init_log();
    let path = sock_path("restart-cli");
    let rec = Recorder::new();
    let driver = Driver::new().unwrap();
    driver.register(&path, Flags::CLIENT).unwrap();
    driver.set_callbacks(&path, Arc::clone(&rec) as _).unwrap();
    // The frontend is not there yet: the backend keeps retrying.
    driver.start(&path).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut fe = Frontend::listen(&path, small()).unwrap();
    fe.accept().unwrap();
    fe.start().unwrap();
    assert!(
        rec.wait_for(Duration::from_secs(10), |e| matches!(
            e,
            Event::NewDevice(..)
        ))
        .is_some()
    );
    // The frontend goes away entirely, then comes back on the same path.
    drop(fe);
    assert!(
        rec.wait_for(Duration::from_secs(10), |e| matches!(
            e,
            Event::DestroyConnection(_)
        ))
        .is_some()
    );
    let mut fe = Frontend::listen(&path, small()).unwrap();
    fe.accept().unwrap();
    fe.start().unwrap();
    assert!(common::eventually(Duration::from_secs(10), || new_devices(
        &rec
    ) == 2));
    // NO_RECONNECT: one attempt only, and start() reports the failure.
    let lone = sock_path("no-reconnect");
    driver
        .register(&lone, Flags::CLIENT | Flags::NO_RECONNECT)
        .unwrap();
    assert!(driver.start(&lone).is_err());
}

/// Packed rings are offered only when the application asks (not by default yet), on any
/// socket (the async path runs them too), and `ACCESS_PLATFORM` never.
#[test]
fn packed_rings_are_offered_on_request() {
    use rvhost::driver::DriverError;
    use rvhost::features::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_PACKED};
    let driver = Driver::new().unwrap();
    for (name, flags) in [
        ("packed-offer", Flags::empty()),
        ("packed-offer-async", Flags::ASYNC_COPY),
    ] {
        let path = sock_path(name);
        driver.register(&path, flags).unwrap();
        let offered = driver.features(&path).unwrap();
        assert_eq!(offered & VIRTIO_F_RING_PACKED, 0, "{flags:?}");
        driver.enable_features(&path, VIRTIO_F_RING_PACKED).unwrap();
        assert_ne!(driver.features(&path).unwrap() & VIRTIO_F_RING_PACKED, 0);
        driver.set_features(&path, offered).unwrap();
        assert_eq!(driver.features(&path).unwrap(), offered);
        driver
            .set_features(&path, offered | VIRTIO_F_RING_PACKED)
            .unwrap();
        assert_ne!(driver.features(&path).unwrap() & VIRTIO_F_RING_PACKED, 0);
        assert!(matches!(
            driver.enable_features(&path, VIRTIO_F_ACCESS_PLATFORM),
            Err(DriverError::UnsupportedFeatures(VIRTIO_F_ACCESS_PLATFORM))
        ));
    }
}
