//! A real Linux guest (QEMU, virtio-net-pci over vhost-user) pings through
//! `rvhost fwd --mode icmpecho`, via the shared recipe `../shared/scripts/qemu_vhost_guest.sh`
//! (it boots the guest, makes it ARP and ping the backend, and checks the result).
//!
//! The first test runs the script five times in a row (each run is 10-30 s of TCG guest): QEMU
//! as vhost-user client (rvhost listens) and as server (rvhost `--client`), with and without
//! the reconnect cycle, the backend stopped gracefully (SIGINT) or with SIGKILL
//! (`VHG_RECONNECT_STOP=kill`). The second runs guests with 2 and 4 queue pairs (`mq=on`,
//! `-smp N` under single-threaded TCG through `scripts/qemu-tcg-single.sh`, `rvhost fwd
//! --queues N`): QEMU keeps one vhost device per queue pair on the one connection, each
//! sending its own ADD_MEM_REG for the same memory; and one with `mrg_rxbuf=off`. Each run must PASS, and every rvhost process the script stopped with a
//! signal it handles must have printed its `FINAL` line with every frame answered
//! (`tx_pkts == rx_pkts`, no drop) and, with queue pairs, `FINAL-QUEUE` lines that add up to
//! it; when no backend was killed, the backends together must have received exactly what the
//! guest's eth0 transmitted.
//!
//! Skipped (`skipping: <why>`, or a failure under `RVHOST_TEST_REQUIRE=all`) when the script is
//! absent or the test is not run as root (the script needs root; it installs QEMU and a guest
//! kernel with apt when missing).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::child::{Child, parse_final, parse_final_queues, rvhost_bin};
use common::{is_root, skip, sock_path};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/scripts/qemu_vhost_guest.sh")
}

#[derive(Debug, Clone, Copy)]
enum Reconnect {
    No,
    Graceful,
    Kill,
}

/// One run of the script.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// QEMU's vhost-user role: "client" (rvhost listens) or "server" (rvhost `--client`).
    qemu_mode: &'static str,
    reconnect: Reconnect,
    /// Queue pairs (VHG_QUEUES, `rvhost fwd --queues`).
    queues: u16,
    /// Extra virtio-net-pci properties (VHG_NET_OPTS).
    net_opts: &'static str,
    /// `rvhost fwd --copy`.
    copy: &'static str,
}

impl Case {
    const fn new(qemu_mode: &'static str, reconnect: Reconnect) -> Case {
        Case {
            qemu_mode,
            reconnect,
            queues: 1,
            net_opts: "",
            copy: "cpu",
        }
    }
}

/// One guest at a time: the tests of this file share the script's cache (kernel, initramfs),
/// the hugepages and the two cores.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// The last `key=N` in the last line containing `marker`.
fn value_after(lines: &[String], marker: &str, key: &str) -> Option<u64> {
    let line = lines.iter().rev().find(|l| l.contains(marker))?;
    let at = line.find(key)? + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs the script for `case`; returns the frames rvhost received per queue pair, summed
/// over the backends that printed their counters.
fn run(case: Case) -> BTreeMap<usize, u64> {
    let Case {
        qemu_mode,
        reconnect,
        queues,
        net_opts,
        copy,
    } = case;
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let sock = sock_path("fwd-qemu");
    // A packed ring asked of the guest is offered by rvhost (not by default yet).
    let packed = net_opts.contains("packed=on");
    let backend = format!(
        "exec {} fwd --mode icmpecho --iface @SOCK@ --lcores 0 --queues {queues} --copy {copy}{} $([ @CLIENT@ = 1 ] && echo --client)",
        rvhost_bin().display(),
        if packed { " --packed" } else { "" }
    );
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .args([
            "--mode",
            qemu_mode,
            "--timeout",
            "240",
            "--backend",
            &backend,
        ])
        .env("VHG_SOCK", &sock)
        .env("VHG_QUEUES", queues.to_string())
        .env("VHG_NET_OPTS", net_opts)
        .env_remove("VHG_RECONNECT_STOP");
    if queues > 1 {
        // A guest with one vCPU per queue pair: single-threaded TCG (the script's header
        // says why).
        cmd.env(
            "VHG_QEMU",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/qemu-tcg-single.sh"),
        );
    }
    match reconnect {
        Reconnect::No => {
            cmd.arg("--no-reconnect");
        }
        Reconnect::Graceful => {
            cmd.arg("--reconnect").env("VHG_RECONNECT_STOP", "graceful");
        }
        Reconnect::Kill => {
            cmd.arg("--reconnect").env("VHG_RECONNECT_STOP", "kill");
        }
    }
    let what = format!(
        "QEMU {qemu_mode} mode, reconnect {reconnect:?}, {queues} queue pair(s){}, copy {copy}",
        if net_opts.is_empty() {
            String::new()
        } else {
            format!(", {net_opts}")
        }
    );
    let mut vm = Child::spawn("qemu_vhost_guest.sh", cmd);
    let status = vm.wait_script(Duration::from_secs(300), &what, 60);
    let out = vm.stdout();
    let passed = status.success() && out.iter().any(|l| l.starts_with("RESULT: PASS"));
    assert!(
        passed || lost_race_with_a_passing_guest(&out),
        "{what}: {status:?}\n{}",
        vm.tail(80)
    );
    // "backend #k pid P, log PATH" (the script's log, on stderr): every backend's log.
    let logs: Vec<PathBuf> = vm
        .stderr()
        .iter()
        .filter(|l| l.contains("] backend #") && l.contains(", log "))
        .filter_map(|l| {
            l.rsplit_once(", log ")
                .map(|(_, p)| PathBuf::from(p.trim()))
        })
        .collect();
    let expect = match reconnect {
        Reconnect::No => 1,
        _ => 2,
    };
    assert_eq!(
        logs.len(),
        expect,
        "{what}: backends started\n{}",
        vm.tail(80)
    );
    let mut received = 0;
    let mut per_queue = BTreeMap::new();
    for (i, log) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let finals = parse_final(&lines);
        let killed = matches!(reconnect, Reconnect::Kill) && i == 0;
        if killed {
            assert!(finals.is_empty(), "{what}: a killed backend printed FINAL");
            continue;
        }
        let f = finals
            .get(&0)
            .unwrap_or_else(|| panic!("{what}: {} has no FINAL line:\n{text}", log.display()));
        assert!(f.rx_pkts > 0, "{what}: backend {} saw no traffic", i + 1);
        assert_eq!(
            (f.tx_pkts, f.tx_drops),
            (f.rx_pkts, 0),
            "{what}: backend {} must answer every frame",
            i + 1
        );
        received += f.rx_pkts;
        if copy != "cpu" {
            // The replies went through the async path: the engine copied them, and every one
            // the channel took came back before the device went away.
            assert!(
                !text.contains("DMA model"),
                "{what}: backend {}: a device model saw broken rules:\n{text}",
                i + 1
            );
            // A model's IOMMU is strict: a copy naming memory nobody mapped (guest memory, the
            // pool) faults, and the job comes back failed (copied again by the CPU, counted).
            if copy.contains("model") {
                for l in lines.iter().filter(|l| l.contains(": async: submitted=")) {
                    assert!(
                        l.contains(" dma_errors=0 "),
                        "{what}: backend {}: DMA jobs failed: {l}\n{text}",
                        i + 1
                    );
                }
            }
            let stat = |key| value_after(&lines, "h2g: async: submitted=", key);
            let (sub, done, dma) = (stat("submitted="), stat("completed="), stat("dma_copies="));
            assert!(
                dma.is_some_and(|n| n > 0) && sub == done && sub == Some(f.tx_pkts),
                "{what}: backend {}: async counters {sub:?} {done:?} {dma:?}:\n{text}",
                i + 1
            );
        }
        if queues > 1 {
            let fq: BTreeMap<_, _> = parse_final_queues(&lines).into_iter().collect();
            assert_eq!(
                fq.keys().map(|&(p, _)| p).collect::<Vec<_>>(),
                vec![0; usize::from(queues)],
                "{what}: backend {}: one FINAL-QUEUE line per queue pair:\n{text}",
                i + 1
            );
            let mut sum = (0, 0);
            for (&(_, q), c) in &fq {
                println!(
                    "{what}: backend {}: FINAL-QUEUE queue={q} rx_pkts={} tx_pkts={} tx_drops={}",
                    i + 1,
                    c.rx_pkts,
                    c.tx_pkts,
                    c.tx_drops
                );
                sum = (sum.0 + c.rx_pkts, sum.1 + c.tx_pkts);
                *per_queue.entry(q).or_insert(0) += c.rx_pkts;
            }
            assert_eq!(
                sum,
                (f.rx_pkts, f.tx_pkts),
                "{what}: backend {}: the queues add up to the port",
                i + 1
            );
        }
    }
    // What the guest's driver negotiated: MRG_RXBUF (bit 15) as VHG_NET_OPTS asked, MQ (bit
    // 22) with more than one queue pair.
    let bits = out
        .iter()
        .find_map(|l| l.split_once("virtio_features=").map(|(_, b)| b.trim()))
        .unwrap_or_else(|| panic!("{what}: no guest features\n{}", vm.tail(80)));
    let bit = |n: usize| bits.as_bytes().get(n) == Some(&b'1');
    assert_eq!(
        bit(15),
        !net_opts.contains("mrg_rxbuf=off"),
        "{what}: MRG_RXBUF in {bits}"
    );
    assert_eq!(bit(22), queues > 1, "{what}: MQ in {bits}");
    // QEMU falls back to a split ring silently when the backend does not offer packed ones.
    assert_eq!(bit(34), packed, "{what}: RING_PACKED in {bits}");
    if !matches!(reconnect, Reconnect::Kill) {
        let guest_tx = value_after(&out, "VHOST-GUEST: stats[", "tx_packets=")
            .unwrap_or_else(|| panic!("{what}: no guest stats\n{}", vm.tail(80)));
        assert_eq!(
            received, guest_tx,
            "{what}: the backends received what the guest's eth0 sent"
        );
    }
    assert!(
        !sock.exists() || qemu_mode == "server",
        "socket file left behind"
    );
    println!("{what}: PASS in {:.1} s", started.elapsed().as_secs_f64());
    per_queue
}

/// The script's `wait_serial` greps the serial log for the awaited marker and then for
/// `VHOST-GUEST: RESULT=` as "the guest finished early". When the awaited marker *is*
/// `RESULT=` and the guest prints it between the two greps, the script reports
/// "guest finished before 'VHOST-GUEST: RESULT='" although the guest passed (seen once in CI,
/// 2026-11-26). That failure, and only that one, counts as a pass when the guest's own
/// verdict is `RESULT=PASS`; every check after the script's verdict still runs.
fn lost_race_with_a_passing_guest(out: &[String]) -> bool {
    let raced = out
        .iter()
        .any(|l| l.starts_with("RESULT: FAIL: guest finished before 'VHOST-GUEST: RESULT='"));
    let guest_passed = out.iter().any(|l| l.trim() == "VHOST-GUEST: RESULT=PASS");
    if raced && guest_passed {
        println!(
            "note: the script lost its race with the guest's RESULT=PASS; taking the guest's verdict"
        );
    }
    raced && guest_passed
}

/// Why the guest tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    let script = script();
    if !script.exists() {
        return Some(format!("{} is absent", script.display()));
    }
    if !is_root() {
        return Some("qemu_vhost_guest.sh needs root".into());
    }
    None
}

#[test]
fn linux_guest_pings_through_rvhost_fwd_icmpecho() {
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    run(Case::new("client", Reconnect::No));
    run(Case::new("server", Reconnect::Graceful));
    run(Case::new("client", Reconnect::Graceful));
    run(Case::new("client", Reconnect::Kill));
    run(Case::new("server", Reconnect::Kill));
}

/// Guests with 2 and 4 queue pairs, rvhost as server and as client, each with a reconnect
/// cycle; and one without mergeable receive buffers. The guest's driver enables
/// min(CPUs, queue pairs) pairs and transmits on the sending CPU's queue; which CPU the
/// guest's ping and arping run on is up to its scheduler, so more than one queue pair
/// carrying traffic is asserted over the runs of each queue count, not per run.
#[test]
fn multiqueue_linux_guest_pings_through_rvhost_fwd_icmpecho() {
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    let mq = |qemu_mode, reconnect, queues| Case {
        queues,
        ..Case::new(qemu_mode, reconnect)
    };
    let mut two = run(mq("client", Reconnect::Graceful, 2));
    for (q, n) in run(mq("server", Reconnect::Kill, 2)) {
        *two.entry(q).or_insert(0) += n;
    }
    let four = run(mq("server", Reconnect::Graceful, 4));
    run(Case {
        net_opts: "mrg_rxbuf=off",
        ..mq("client", Reconnect::Graceful, 2)
    });
    for (queues, seen) in [(2, &two), (4, &four)] {
        let busy = seen.values().filter(|&&n| n > 0).count();
        println!("{queues} queue pairs: frames per queue pair {seen:?}");
        assert!(
            busy > 1,
            "{queues} queue pairs: only one carried traffic ({seen:?})"
        );
    }
}

/// The replies on the async path (`--copy soft`, every copy on the software DMA engine): a
/// guest served without reconnect, and one whose backend is killed with jobs possibly in
/// flight and comes back; on split rings, then on packed rings (the guest's RING_PACKED
/// asserted, the rings resuming from the vring base after the kill).
#[test]
fn linux_guest_pings_through_rvhost_fwd_on_the_async_path() {
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    for net_opts in ["", "packed=on"] {
        run(Case {
            copy: "soft,threshold=0",
            net_opts,
            ..Case::new("client", Reconnect::No)
        });
        run(Case {
            copy: "soft,threshold=0,engines=2",
            net_opts,
            ..Case::new("server", Reconnect::Kill)
        });
    }
}

/// Packed virtqueues (`packed=on`, rvhost `--packed`), the guest's negotiated RING_PACKED
/// asserted: QEMU client and server, both reconnect cycles (the rings resume from the vring
/// base with its wrap counters), with and without mergeable receive buffers.
#[test]
fn linux_guest_pings_through_rvhost_fwd_on_packed_rings() {
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    for (qemu_mode, reconnect, net_opts) in [
        ("client", Reconnect::Graceful, "packed=on"),
        ("server", Reconnect::Kill, "packed=on"),
        ("client", Reconnect::Kill, "packed=on,mrg_rxbuf=off"),
        ("server", Reconnect::Graceful, "packed=on,mrg_rxbuf=off"),
    ] {
        run(Case {
            net_opts,
            ..Case::new(qemu_mode, reconnect)
        });
    }
}

/// The replies through the IOAT and the DSA driver, each over its device model
/// (`--copy ioat-model|dsa-model`, every copy on the driver).
#[test]
fn linux_guest_pings_through_rvhost_fwd_over_the_device_models() {
    if let Some(why) = cannot_run() {
        return skip(why);
    }
    run(Case {
        copy: "ioat-model,threshold=0",
        ..Case::new("client", Reconnect::No)
    });
    run(Case {
        copy: "dsa-model,threshold=0",
        ..Case::new("server", Reconnect::Kill)
    });
}

#[test]
fn only_the_scripts_race_with_a_passing_guest_is_forgiven() {
    let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // As printed by the CI run that hit the race.
    let raced = lines(&[
        "  VHOST-GUEST: ping[phase2-stream] sent=1000 received=1000",
        "  VHOST-GUEST: RESULT=PASS",
        "RESULT: FAIL: guest finished before 'VHOST-GUEST: RESULT=' (17.9 s)",
    ]);
    assert!(lost_race_with_a_passing_guest(&raced));
    let guest_failed = lines(&[
        "  VHOST-GUEST: RESULT=FAIL",
        "RESULT: FAIL: guest finished before 'VHOST-GUEST: RESULT=' (17.9 s)",
    ]);
    assert!(!lost_race_with_a_passing_guest(&guest_failed));
    let other_marker = lines(&[
        "  VHOST-GUEST: RESULT=PASS",
        "RESULT: FAIL: guest finished before 'VHOST-GUEST: LINK-UP' (17.9 s)",
    ]);
    assert!(!lost_race_with_a_passing_guest(&other_marker));
    let timeout = lines(&["RESULT: FAIL: timeout waiting for 'VHOST-GUEST: RESULT=' (240 s)"]);
    assert!(!lost_race_with_a_passing_guest(&timeout));
}
