//! DPDK's testpmd as a virtio-user frontend reaches `new_device` on an rvhost backend, with
//! rvhost as the server (`net_virtio_user0,path=SOCK`) and as the client
//! (`...,server=1`, rvhost connects with `Flags::CLIENT`).
//!
//! Needs `dpdk-testpmd` (Debian: `apt-get install dpdk-dev`) and free 2 MiB hugepages; `.ci/run`
//! installs and reserves them. Without them the tests print `skipping: <why>` and pass, or fail
//! under `RVHOST_TEST_REQUIRE=all`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Event, Recorder, skip, sock_path};
use rvhost::driver::{Driver, Flags};

fn testpmd_available() -> Result<(), String> {
    if Command::new("dpdk-testpmd")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Err("dpdk-testpmd is not installed (apt-get install dpdk-dev)".into());
    }
    let free = std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if free < 128 {
        return Err(format!(
            "{free} free 2 MiB hugepages, testpmd needs 128 (echo 1024 > /proc/sys/vm/nr_hugepages)"
        ));
    }
    Ok(())
}

/// Starts testpmd with one virtio-user port on `sock`; stdin stays open (testpmd quits at EOF).
fn testpmd(sock: &Path, server: bool, prefix: &str) -> Child {
    let mut vdev = format!(
        "net_virtio_user0,path={},queues=1,queue_size=256",
        sock.display()
    );
    if server {
        vdev.push_str(",server=1");
    }
    Command::new("dpdk-testpmd")
        .args([
            "-l",
            "0-1",
            "--no-pci",
            "--in-memory",
            "--single-file-segments",
        ])
        .args([
            "-m",
            "256",
            "--file-prefix",
            prefix,
            "--log-level",
            "pmd.net.virtio,7",
        ])
        .args(["--vdev", &vdev])
        .args([
            "--",
            "--port-topology=loop",
            "--forward-mode=io",
            "--auto-start",
        ])
        .args(["--stats-period", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dpdk-testpmd")
}

fn stop(mut child: Child) {
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run(server_backend: bool) {
    common::init_log();
    if let Err(why) = testpmd_available() {
        return skip(why);
    }
    let sock = sock_path("testpmd");
    let rec = Recorder::new();
    let driver = Driver::new().unwrap();
    let flags = if server_backend {
        Flags::empty()
    } else {
        Flags::CLIENT
    };
    driver.register(&sock, flags).unwrap();
    driver.set_callbacks(&sock, Arc::clone(&rec) as _).unwrap();
    let prefix = format!("rvh-tp-{}-{}", std::process::id(), server_backend);
    let child = if server_backend {
        driver.start(&sock).unwrap();
        testpmd(&sock, false, &prefix)
    } else {
        let child = testpmd(&sock, true, &prefix);
        // rvhost retries every second until testpmd listens.
        driver.start(&sock).unwrap();
        child
    };
    let new = rec.wait_for(Duration::from_secs(60), |e| {
        matches!(e, Event::NewDevice(..))
    });
    let Some(Event::NewDevice(id, features)) = new else {
        let events = rec.events();
        stop(child);
        panic!("testpmd never reached new_device; events: {events:?}");
    };
    assert!(
        features & rvhost::features::VIRTIO_F_VERSION_1 != 0,
        "{features:#x}"
    );
    let dev = rec.devices.lock().unwrap()[0].clone();
    for i in 0..2 {
        // While running, the control thread holds a vring lock only briefly.
        let vq = loop {
            if let Some(vq) = dev.try_lock_vring(i) {
                break vq;
            }
        };
        assert!(vq.rings.is_some(), "ring {i} translated");
        assert_eq!(vq.size, 256);
        assert!(vq.enabled && vq.kick_set && vq.call_set);
    }
    stop(child);
    // testpmd going away destroys the device, then the connection.
    assert!(
        rec.wait_for(Duration::from_secs(20), |e| *e
            == Event::DestroyConnection(id))
            .is_some(),
        "no destroy_connection; events: {:?}",
        rec.events()
    );
    let events = rec.events();
    let pos = |want: &Event| events.iter().position(|e| e == want);
    assert!(pos(&Event::NewConnection(id)) < pos(&Event::NewDevice(id, features)));
    assert!(pos(&Event::NewDevice(id, features)) < pos(&Event::DestroyDevice(id)));
    assert!(pos(&Event::DestroyDevice(id)) < pos(&Event::DestroyConnection(id)));
    driver.unregister(&sock).unwrap();
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn testpmd_virtio_user_reaches_new_device_rvhost_server() {
    run(true);
}

#[test]
fn testpmd_virtio_user_reaches_new_device_rvhost_client() {
    run(false);
}
