//! The examples (`examples/echo.rs`, `examples/reconnect.rs`, `examples/switch.rs`) as real
//! processes against DPDK testpmd (virtio-user frontend), with exact packet counts.
//!
//! # Loopback (exact counting), as in `tests/fwd_testpmd.rs`
//!
//! testpmd runs `--forward-mode=io --tx-first --burst=B`: it sends one burst of `B` packets,
//! then sends back whatever it receives; the echo example sends back whatever it receives.
//! `B` packets circulate; nothing creates packets and every drop is counted (testpmd's
//! `TX-dropped`, echo's `drops`). testpmd is stopped with SIGINT first (its stats are taken
//! when its lcore stops), then the example. At that moment each live packet is either in
//! testpmd's transmit ring not yet dequeued by echo (`tp.tx - echo.rx`) or in testpmd's receive
//! ring not yet received (`echo.tx - tp.rx`). So, exactly:
//!
//! * testpmd: `tp.tx + tp.tx_dropped - tp.rx == B`;
//! * echo: `echo.rx == echo.tx + echo.drops`;
//! * `0 <= tp.tx - echo.rx`, `0 <= echo.tx - tp.rx`, and
//!   `(tp.tx - echo.rx) + (echo.tx - tp.rx) + echo.drops + tp.tx_dropped == B`.
//!
//! The reconnect test runs two such loopbacks in a row (two testpmd processes, one example
//! process that reconnects): the same equalities hold for the sums, with `2B` packets.
//! The switch test runs one testpmd with two ports whose frames all cross the switch, one
//! port's into the other's: the same accounting per direction, `2B` packets in all (see the
//! test).
//!
//! testpmd's counters cannot show that a frame was rewritten, so one more test runs testpmd
//! interactively in `rxonly` mode with `set verbose 1`: its first burst comes back once, and
//! every received frame must have the source and destination addresses of the sent ones,
//! swapped.
//!
//! Needs `dpdk-testpmd` (Debian: `apt-get install dpdk-dev`) and two CPUs; without them the
//! tests print `skipping: <why>` and pass, unless `RVHOST_TEST_REQUIRE=all`, which makes them
//! fail instead. testpmd uses 2 MiB hugepages when 128 are free, else `--no-huge`, and the
//! examples fall back to 4 KiB pages on their own. Runs are serialized: testpmd on CPU 1, the
//! example's worker on CPU 0.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::child::{Child, wait_for_socket};
use common::testpmd::{TpStats, forward_stats, free_hugepages};
use common::{eventually, skip, sock_path};
use nix::sys::signal::Signal;

/// One run at a time: testpmd and the examples poll their cores at 100%.
static SERIAL: Mutex<()> = Mutex::new(());

/// Ring size of testpmd's queues.
const QUEUE: u64 = 1024;
/// Packets circulating in a loopback run (testpmd's first burst).
const POPULATION: u64 = 64;
/// Traffic time of a run.
const TRAFFIC: Duration = Duration::from_secs(3);
/// Fewest packets a run must move to count as traffic (a debug build forwards ~100k/s).
const MIN_PACKETS: u64 = 5_000;
/// The CPU testpmd runs on; the examples' workers run on CPU 0.
const TESTPMD_CPU: usize = 1;

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    let testpmd = Command::new("dpdk-testpmd")
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if testpmd.is_err() {
        return Some("dpdk-testpmd is not installed (apt-get install dpdk-dev)".into());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= TESTPMD_CPU {
        return Some(format!(
            "testpmd and the example need CPUs 0 and 1, this process may use {cpus}"
        ));
    }
    None
}

/// `target/<profile>/examples/<name>`, built for this test.
///
/// A plain `cargo test` builds the examples before it runs any test, but
/// `cargo test --test examples` builds only this file: the example binaries could be missing,
/// or older than their sources. So the first call runs `cargo build --examples` in the profile
/// of this test binary (a no-op when they are fresh).
fn example_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build_examples)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    dir.join(name)
}

/// Builds the examples; returns their directory.
fn build_examples() -> Result<PathBuf, String> {
    // This test runs as target/<profile>/deps/examples-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in target/<profile>/deps", exe.display()))?;
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "--examples", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(other) => {
            cargo.args(["--profile", other]);
        }
        None => return Err(format!("no profile in {}", profile_dir.display())),
    }
    // The same target directory as this test binary, wherever CARGO_TARGET_DIR put it.
    if let Some(target) = profile_dir.parent() {
        cargo.arg("--target-dir").arg(target);
    }
    let st = cargo
        .status()
        .map_err(|e| format!("running {cargo:?}: {e}"))?;
    if !st.success() {
        return Err(format!("{cargo:?} failed: {st}"));
    }
    Ok(profile_dir.join("examples"))
}

/// testpmd (line-buffered stdout) with virtio-user ports on `vdevs` (each `path=...,...`
/// without the driver name), on CPU 1, then `app_args` after `--`.
fn testpmd(vdevs: &[String], app_args: &[&str]) -> Command {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!(
        "rvh-ex-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "dpdk-testpmd", "--no-pci"]);
    if free_hugepages() >= 128 {
        cmd.args(["--in-memory", "--single-file-segments"]);
    } else {
        println!("fewer than 128 free 2 MiB hugepages: testpmd runs with --no-huge");
        cmd.args(["--no-huge", "--no-shconf"]);
    }
    let lcores = format!("0@{TESTPMD_CPU},1@{TESTPMD_CPU}");
    cmd.args(["-m", "256", "--file-prefix", &prefix, "--lcores", &lcores]);
    for (i, vdev) in vdevs.iter().enumerate() {
        cmd.arg("--vdev")
            .arg(format!("net_virtio_user{i},{vdev},queue_size={QUEUE}"));
    }
    cmd.arg("--")
        .args(["--nb-cores=1", "--total-num-mbufs=8192"])
        .args([format!("--rxd={QUEUE}"), format!("--txd={QUEUE}")])
        .args(app_args);
    cmd
}

/// testpmd forwarding `io` on one port back to itself, sending a first burst of `POPULATION`
/// packets, with the periodic stats that make it quit on SIGINT.
fn testpmd_loopback(sock: &Path, server: bool) -> Command {
    let mut vdev = format!("path={},queues=1", sock.display());
    if server {
        vdev.push_str(",server=1");
    }
    testpmd(
        &[vdev],
        &[
            "--port-topology=loop",
            "--auto-start",
            "--stats-period",
            "1",
            "--forward-mode=io",
            "--tx-first",
            &format!("--burst={POPULATION}"),
            "--txpkts=64",
            // testpmd drains its receive queues before it snapshots the counters its forward
            // statistics start from: what came back before would be received but not counted.
            "--no-flush-rx",
        ],
    )
}

/// The `key=value` numbers of the first stdout line starting with `prefix` (and a space)
/// that `pick` accepts.
fn counters(
    lines: &[String],
    prefix: &str,
    pick: impl Fn(&HashMap<String, u64>) -> bool,
) -> Option<HashMap<String, u64>> {
    lines.iter().find_map(|l| {
        let rest = l.strip_prefix(prefix)?.strip_prefix(' ')?;
        let kv: HashMap<String, u64> = rest
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect();
        pick(&kv).then_some(kv)
    })
}

/// A packet count of the example: `rx`, `tx`, `drops`.
#[derive(Debug, Clone, Copy)]
struct Counts {
    rx: u64,
    tx: u64,
    drops: u64,
}

impl Counts {
    fn from(kv: &HashMap<String, u64>) -> Counts {
        let get = |k: &str| *kv.get(k).unwrap_or_else(|| panic!("{k} missing in {kv:?}"));
        Counts {
            rx: get("rx"),
            tx: get("tx"),
            drops: get("drops"),
        }
    }
}

/// Starts an example with the worker on CPU 0 and waits for its `<TAG> ready` line.
fn start_example(name: &str, tag: &str, args: &[&str]) -> Child {
    let mut cmd = Command::new(example_bin(name));
    cmd.args(["--core", "0"]).args(args);
    let ex = Child::spawn(name, cmd);
    let ready = format!("{tag} ready");
    assert!(
        ex.wait_stdout(Duration::from_secs(10), |l| l.starts_with(&ready))
            .is_some(),
        "{name} never printed `{ready}`\n{}",
        ex.tail(20)
    );
    ex
}

/// Stops a child with SIGINT; it must exit 0 within 10 s.
fn stop_example(ex: &mut Child) {
    ex.signal(Signal::SIGINT);
    let st = ex.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "the example did not exit cleanly on SIGINT: {st:?}\n{}",
        ex.tail(30)
    );
}

/// Stops testpmd (non-interactive, `--stats-period`: it quits on SIGINT, printing its forward
/// statistics) and returns the statistics of `ports` ports.
fn stop_testpmd(tp: &mut Child, ports: usize) -> Vec<TpStats> {
    tp.signal(Signal::SIGINT);
    assert!(
        tp.wait_exit(Duration::from_secs(20)).is_some(),
        "testpmd did not stop\n{}",
        tp.tail(40)
    );
    (0..ports)
        .map(|p| {
            forward_stats(&tp.stdout(), p)
                .unwrap_or_else(|| panic!("no forward statistics for port {p}\n{}", tp.tail(60)))
        })
        .collect()
}

/// The loopback equalities of the module docs, for `b` circulating packets.
fn check_loopback(tp: &TpStats, ex: &Counts, b: u64, ctx: &str) {
    assert!(ex.rx >= MIN_PACKETS, "too little traffic: {ctx}");
    assert_eq!(
        tp.tx + tp.tx_dropped,
        tp.rx + b,
        "testpmd sends back all it gets, plus the first burst: {ctx}"
    );
    assert_eq!(
        ex.rx,
        ex.tx + ex.drops,
        "the example sends back or counts as a drop all it gets: {ctx}"
    );
    assert!(
        ex.rx <= tp.tx && tp.tx - ex.rx <= b,
        "the example received what testpmd sent, but packets in flight: {ctx}"
    );
    assert!(
        tp.rx <= ex.tx && ex.tx - tp.rx <= b,
        "testpmd received what the example sent, but packets in flight: {ctx}"
    );
    assert_eq!(
        (tp.tx - ex.rx) + (ex.tx - tp.rx) + ex.drops + tp.tx_dropped,
        b,
        "every circulating packet is in flight or counted as dropped: {ctx}"
    );
}

#[test]
fn echo_against_testpmd_exact_counts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let started = Instant::now();
    let sock = sock_path("echo");
    let sock_arg = sock.to_str().expect("utf-8 path");
    let mut echo = start_example("echo", "ECHO", &["--socket", sock_arg]);
    assert!(
        wait_for_socket(&sock, Duration::from_secs(10)),
        "echo printed ready but does not listen\n{}",
        echo.tail(20)
    );
    let mut tp = Child::spawn("testpmd", testpmd_loopback(&sock, false));
    assert!(
        tp.wait_stdout(Duration::from_secs(30), |l| l
            .contains("start packet forwarding"))
            .is_some(),
        "testpmd never started forwarding\n{}\n{}",
        tp.tail(40),
        echo.tail(20)
    );
    std::thread::sleep(TRAFFIC);
    // testpmd first: it sends the packets; echo only answers.
    let tps = stop_testpmd(&mut tp, 1)[0];
    stop_example(&mut echo);
    let line = counters(&echo.stdout(), "ECHO", |kv| kv.contains_key("rx"))
        .unwrap_or_else(|| panic!("no ECHO rx=.. line\n{}", echo.tail(20)));
    let ex = Counts::from(&line);
    let ctx = format!("testpmd {tps:?}; echo {ex:?}");
    println!("echo: {ctx}; {:.1} s", started.elapsed().as_secs_f64());
    check_loopback(&tps, &ex, POPULATION, &ctx);
    assert!(!sock.exists(), "echo left its socket file behind");
}

/// testpmd's counters do not show what echo did to a frame: its verbose mode does. In
/// `rxonly` mode, testpmd's first burst (source: its port's address, destination: its default
/// peer 02:00:00:00:00:00) comes back exactly once, addresses swapped.
#[test]
fn echo_swaps_mac_addresses() {
    const BURST: usize = 8;
    const PEER: &str = "02:00:00:00:00:00";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let sock = sock_path("echo-mac");
    let sock_arg = sock.to_str().expect("utf-8 path");
    let mut echo = start_example("echo", "ECHO", &["--socket", sock_arg]);
    assert!(wait_for_socket(&sock, Duration::from_secs(10)));
    let mut tp = Child::spawn(
        "testpmd",
        testpmd(
            &[format!("path={},queues=1", sock.display())],
            &[
                "-i",
                "--port-topology=loop",
                "--forward-mode=rxonly",
                &format!("--burst={BURST}"),
            ],
        ),
    );
    // "Port 0: AE:2C:93:D5:A4:F1": its (random) address.
    let port_line = tp
        .wait_stdout(Duration::from_secs(30), |l| l.starts_with("Port 0: "))
        .unwrap_or_else(|| panic!("testpmd printed no port address\n{}", tp.tail(40)));
    let port_mac = port_line["Port 0: ".len()..].trim().to_string();
    tp.send_stdin(b"set verbose 1\nstart tx_first\n");
    let received = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("src=") && l.contains("dst="))
            .cloned()
            .collect()
    };
    let all_back = eventually(Duration::from_secs(10), || {
        received(&tp.stdout()).len() >= BURST
    });
    // A moment for a frame too many, if echo sent one.
    std::thread::sleep(Duration::from_millis(300));
    tp.send_stdin(b"stop\nquit\n");
    let exited = tp.wait_exit(Duration::from_secs(20));
    stop_example(&mut echo);
    assert!(
        all_back && exited.is_some(),
        "testpmd did not get its burst back\n{}\n{}",
        tp.tail(40),
        echo.tail(20)
    );
    let frames = received(&tp.stdout());
    assert_eq!(frames.len(), BURST, "{frames:#?}");
    let swapped = format!("src={PEER} - dst={port_mac} ");
    for f in &frames {
        assert!(
            f.contains(&swapped), // the first may follow the `testpmd> ` prompt
            "expected `{swapped}` (testpmd sent src={port_mac} dst={PEER}), got {f:?}"
        );
    }
    let line = counters(&echo.stdout(), "ECHO", |kv| kv.contains_key("rx"))
        .unwrap_or_else(|| panic!("no ECHO rx=.. line\n{}", echo.tail(20)));
    let ex = Counts::from(&line);
    assert_eq!((ex.rx, ex.tx, ex.drops), (BURST as u64, BURST as u64, 0));
}

/// testpmd is the server (`server=1`), the reconnect example the client. testpmd goes away
/// and a new one comes up on the same path: the example must find it on its own, and both
/// loopback runs must add up exactly.
#[test]
fn reconnect_survives_frontend_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let started = Instant::now();
    let sock = sock_path("reconnect");
    let sock_arg = sock.to_str().expect("utf-8 path");
    let ups = |ex: &Child| {
        ex.stdout()
            .iter()
            .filter(|l| l.starts_with("RECONNECT device up"))
            .count()
    };
    let downs = |ex: &Child| {
        ex.stdout()
            .iter()
            .filter(|l| l.starts_with("RECONNECT device down"))
            .count()
    };

    // testpmd's virtio-user server waits in its probe until a backend connects.
    let mut tp = Child::spawn("testpmd", testpmd_loopback(&sock, true));
    assert!(
        wait_for_socket(&sock, Duration::from_secs(30)),
        "testpmd never listened\n{}",
        tp.tail(40)
    );
    let mut rc = start_example("reconnect", "RECONNECT", &["--socket", sock_arg]);
    let mut runs = Vec::new();
    for run in 1..=2 {
        let up = eventually(Duration::from_secs(30), || ups(&rc) >= run);
        assert!(
            up,
            "run {run}: no `RECONNECT device up`\n{}\n{}",
            rc.tail(20),
            tp.tail(40)
        );
        assert!(
            tp.wait_stdout(Duration::from_secs(30), |l| l
                .contains("start packet forwarding"))
                .is_some(),
            "run {run}: testpmd never started forwarding\n{}",
            tp.tail(40)
        );
        std::thread::sleep(TRAFFIC / 2);
        let tps = stop_testpmd(&mut tp, 1)[0];
        println!("run {run}: testpmd {tps:?}");
        assert!(
            tps.rx >= MIN_PACKETS,
            "run {run}: no traffic through the example: {tps:?}"
        );
        runs.push(tps);
        assert!(
            eventually(Duration::from_secs(10), || downs(&rc) >= run),
            "run {run}: testpmd quit but no `RECONNECT device down`\n{}",
            rc.tail(20)
        );
        if run == 1 {
            // The same path again; the example retries every second.
            let _ = std::fs::remove_file(&sock);
            tp = Child::spawn("testpmd", testpmd_loopback(&sock, true));
            assert!(
                wait_for_socket(&sock, Duration::from_secs(30)),
                "the second testpmd never listened\n{}",
                tp.tail(40)
            );
        }
    }
    stop_example(&mut rc);
    let line = counters(&rc.stdout(), "RECONNECT", |kv| kv.contains_key("rx"))
        .unwrap_or_else(|| panic!("no RECONNECT rx=.. line\n{}", rc.tail(20)));
    let ex = Counts::from(&line);
    assert_eq!(line.get("ups"), Some(&2), "{line:?}");
    // Two loopbacks in a row: their sums obey the one-loopback equalities with 2B packets.
    let sum = runs.iter().fold(TpStats::default(), |a, t| TpStats {
        rx: a.rx + t.rx,
        tx: a.tx + t.tx,
        tx_dropped: a.tx_dropped + t.tx_dropped,
    });
    let ctx = format!("testpmd runs {runs:?}; reconnect {ex:?}");
    println!("reconnect: {ctx}; {:.1} s", started.elapsed().as_secs_f64());
    check_loopback(&sum, &ex, 2 * POPULATION, &ctx);
}

/// The switch between two ports of one testpmd in `mac` mode (each port sends to the other
/// port's address, from its own): 0 → switch → 1 → testpmd → 0 → switch → ... Each testpmd
/// port's first burst is flooded (destination not yet learnt), everything after goes to the
/// learnt port. Every frame the switch receives on one port is for the other port, so per
/// direction: `sw.rx[i] == sw.tx[1-i] + sw.drops[1-i] + sw.filtered[i]`, and the `2B` frames
/// of the two first bursts are in flight or counted as dropped or filtered. A frame is filtered
/// only when it is flooded while the other port's device is not running yet (testpmd starts
/// its ports one after the other; under load the first port's first burst can arrive before
/// the second is up): at most a first burst per port.
#[test]
fn switch_forwards_between_two_testpmd_ports() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let started = Instant::now();
    let socks = [sock_path("switch0"), sock_path("switch1")];
    let macs = ["02:00:00:00:0e:00", "02:00:00:00:0e:01"];
    let args: Vec<&str> = socks
        .iter()
        .flat_map(|s| ["--socket", s.to_str().expect("utf-8 path")])
        .collect();
    let mut sw = start_example("switch", "SWITCH", &args);
    for s in &socks {
        assert!(wait_for_socket(s, Duration::from_secs(10)));
    }
    let vdevs: Vec<String> = (0..2)
        .map(|i| format!("path={},queues=1,mac={}", socks[i].display(), macs[i]))
        .collect();
    let peers = [
        format!("--eth-peer=0,{}", macs[1]),
        format!("--eth-peer=1,{}", macs[0]),
    ];
    let mut tp = Child::spawn(
        "testpmd",
        testpmd(
            &vdevs,
            &[
                "--port-topology=paired",
                "--auto-start",
                "--stats-period",
                "1",
                // mac: sets the source to the sending port's address, the destination to its
                // peer's, so each address is only ever seen behind its own port.
                "--forward-mode=mac",
                "--tx-first",
                &format!("--burst={POPULATION}"),
                "--txpkts=64",
                "--no-flush-rx",
                &peers[0],
                &peers[1],
            ],
        ),
    );
    assert!(
        tp.wait_stdout(Duration::from_secs(30), |l| l
            .contains("start packet forwarding"))
            .is_some(),
        "testpmd never started forwarding\n{}\n{}",
        tp.tail(40),
        sw.tail(20)
    );
    std::thread::sleep(TRAFFIC);
    let tps = stop_testpmd(&mut tp, 2);
    stop_example(&mut sw);
    let ports: Vec<HashMap<String, u64>> = (0..2u64)
        .map(|p| {
            counters(&sw.stdout(), "SWITCH", |kv| kv.get("port") == Some(&p))
                .unwrap_or_else(|| panic!("no SWITCH port={p} line\n{}", sw.tail(20)))
        })
        .collect();
    let ctx = format!("testpmd {tps:?}; switch {ports:?}");
    println!("switch: {ctx}; {:.1} s", started.elapsed().as_secs_f64());
    let c = |p: usize, k: &str| ports[p][k];
    for p in 0..2 {
        assert!(
            c(p, "filtered") <= POPULATION,
            "more than a first burst filtered: {ctx}"
        );
        assert!(c(p, "rx") >= MIN_PACKETS, "too little traffic: {ctx}");
        assert_eq!(
            c(p, "rx"),
            c(1 - p, "tx") + c(1 - p, "drops") + c(p, "filtered"),
            "all from port {p} goes to port {}: {ctx}",
            1 - p
        );
        // testpmd port p sends what it gets on port 1-p, plus its first burst.
        assert_eq!(
            tps[p].tx + tps[p].tx_dropped,
            tps[1 - p].rx + POPULATION,
            "{ctx}"
        );
        assert!(c(p, "rx") <= tps[p].tx, "{ctx}");
        assert!(tps[p].rx <= c(p, "tx"), "{ctx}");
    }
    let in_flight: u64 = (0..2)
        .map(|p| (tps[p].tx - c(p, "rx")) + (c(p, "tx") - tps[p].rx))
        .sum();
    let dropped: u64 = (0..2)
        .map(|p| c(p, "drops") + c(p, "filtered") + tps[p].tx_dropped)
        .sum();
    assert_eq!(
        in_flight + dropped,
        2 * POPULATION,
        "every circulating frame is in flight or counted as dropped or filtered: {ctx}"
    );
    for s in &socks {
        assert!(!s.exists(), "the switch left {} behind", s.display());
    }
}
