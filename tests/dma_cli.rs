//! The `rvhost` command's DMA device handling, run as a user would: `rvhost dma list` on this
//! machine and on a fake sysfs tree, and the clear refusals of what cannot work here.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rvhost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rvhost"))
        .args(args)
        .output()
        .expect("run rvhost")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A fresh directory under the temporary directory, removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    fn new(name: &str) -> TempTree {
        let root =
            std::env::temp_dir().join(format!("rvhost-dma-cli-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        TempTree(root)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Adds a PCI function to a fake sysfs at `root`, with `driver` and `iommu_group` links.
fn function(root: &Path, bdf: &str, device: u16, driver: Option<&str>, group: Option<u32>) {
    let dev = root.join("devices/pci0000:00").join(bdf);
    fs::create_dir_all(&dev).unwrap();
    fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
    fs::write(dev.join("vendor"), "0x8086\n").unwrap();
    fs::write(dev.join("device"), format!("0x{device:04x}\n")).unwrap();
    if let Some(d) = driver {
        let drv = root.join("bus/pci/drivers").join(d);
        fs::create_dir_all(&drv).unwrap();
        symlink(&drv, dev.join("driver")).unwrap();
    }
    if let Some(g) = group {
        let grp = root.join("kernel/iommu_groups").join(g.to_string());
        fs::create_dir_all(&grp).unwrap();
        symlink(&grp, dev.join("iommu_group")).unwrap();
    }
    symlink(&dev, root.join("bus/pci/devices").join(bdf)).unwrap();
}

#[test]
fn dma_list_on_this_machine_exits_0() {
    let out = rvhost(&["dma", "list"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    // Either none (CI machines, VMs) or a table of them.
    assert!(
        stdout.starts_with("no IOAT or DSA devices") || stdout.starts_with("BDF"),
        "{stdout}"
    );
}

#[test]
fn dma_list_reads_the_fake_sysfs_it_is_given() {
    let sys = TempTree::new("list");
    let root = sys.path().to_str().unwrap();
    fs::create_dir_all(sys.path().join("bus/pci/devices")).unwrap();
    let out = rvhost(&["dma", "list", "--sysfs", root]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "no IOAT or DSA devices\n");

    function(sys.path(), "0000:00:04.0", 0x2021, Some("ioatdma"), None);
    function(
        sys.path(),
        "0000:6a:01.0",
        0x0b25,
        Some("vfio-pci"),
        Some(40),
    );
    let out = rvhost(&["dma", "list", "--sysfs", root]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[1].starts_with("0000:00:04.0  ioat") && lines[1].contains("ioatdma"));
    assert!(lines[1].contains("no IOMMU group: enable the IOMMU (intel_iommu=on)"));
    assert!(lines[2].starts_with("0000:6a:01.0  dsa") && lines[2].contains("vfio-pci"));
    assert!(
        lines[2].contains(" 40 ") && lines[2].ends_with("ready"),
        "{stdout}"
    );
}

#[test]
fn hardware_copy_modes_are_refused_with_what_to_do() {
    // No function has these addresses on this machine (domain ffff).
    for argv in [
        &["bench", "--copy", "ioat:ffff:00:04.0"][..],
        &["bench", "--copy", "cpu,dsa:ffff:6a:01.0"][..],
        &[
            "fwd",
            "--mode",
            "io",
            "--iface",
            "/nonexistent/x.sock",
            "--copy",
            "dsa:ffff:6a:01.0",
        ][..],
    ] {
        let out = rvhost(argv);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{argv:?}");
        assert!(
            stderr.contains("no such PCI device") && stderr.contains("rvhost dma list"),
            "{argv:?}: {stderr}"
        );
    }
    let out = rvhost(&["bench", "--copy", "ioat:0:4.0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not a PCI address"));
}

/// Runs `rvhost` with sysfs and /dev/vfio at `sys` and `dev` (the hidden test variables).
fn rvhost_on(sys: &Path, dev: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rvhost"))
        .args(args)
        .env("RVHOST_SYSFS", sys)
        .env("RVHOST_DEV_VFIO", dev)
        .output()
        .expect("run rvhost")
}

#[test]
fn device_modes_reach_the_vfio_open_and_fail_cleanly_here() {
    // Functions bound to vfio-pci whose /dev/vfio nodes exist but are plain files: every check
    // before the opening passes, the opening refuses them (no VFIO device here to open).
    let tree = TempTree::new("device-open");
    let (sys, dev) = (tree.path().join("sys"), tree.path().join("dev"));
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("vfio"), "").unwrap();
    for (bdf, id, group) in [
        ("0000:00:04.0", 0x2021, 12),
        ("0000:00:04.1", 0x2021, 13),
        ("0000:6a:01.0", 0x0b25, 40),
        ("0000:6b:01.0", 0x0b25, 41),
    ] {
        function(&sys, bdf, id, Some("vfio-pci"), Some(group));
        fs::write(dev.join(group.to_string()), "").unwrap();
    }
    let sock = tree.path().join("x.sock");
    let sock = sock.to_str().unwrap();
    let fwd = |copy: &str| {
        let args = ["fwd", "--mode", "io", "--iface", sock, "--copy", copy];
        rvhost_on(&sys, &dev, &args)
    };
    let bench = |copy: &str| {
        let args = [
            "bench",
            "--dir",
            "g2h",
            "--sizes",
            "64",
            "--duration",
            "0.1",
        ];
        rvhost_on(&sys, &dev, &[&args[..], &["--copy", copy]].concat())
    };
    let fails_with = |out: Output, what: &[&str]| {
        let stderr = text(&out.stderr);
        // 1: the command failed; 2: clap refused an argument; a panic would be 101.
        assert!(matches!(out.status.code(), Some(1 | 2)), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for w in what {
            assert!(stderr.contains(w), "{w:?} not in: {stderr}");
        }
    };
    // One function per channel: a bench row has two, fwd one per port, queue pair and way.
    fails_with(
        bench("ioat:0000:00:04.0"),
        &["2 function(s) needed", "ioat:BDF+BDF"],
    );
    fails_with(
        fwd("dsa:0000:6a:01.0"),
        &["2 function(s) needed", "dsa:BDF+BDF"],
    );
    // The right count: the command starts, opens the first function and stops there.
    let not_vfio = "is not a character device, so not a VFIO node";
    fails_with(
        bench("ioat:0000:00:04.0+0000:00:04.1"),
        &[
            "rvhost: ioat:0000:00:04.0: opening it through VFIO: ",
            not_vfio,
        ],
    );
    fails_with(
        bench("cpu,dsa:0000:6a:01.0+0000:6b:01.0,threshold=64"),
        &[
            "rvhost: dsa:0000:6a:01.0: opening it through VFIO: ",
            not_vfio,
        ],
    );
    fails_with(
        fwd("dsa:0000:6a:01.0+0000:6b:01.0"),
        &[
            "rvhost: dsa:0000:6a:01.0: opening it through VFIO: ",
            not_vfio,
        ],
    );
    fails_with(
        fwd("ioat:0000:00:04.0+0000:00:04.1"),
        &[
            "rvhost: ioat:0000:00:04.0: opening it through VFIO: ",
            not_vfio,
        ],
    );
    // The checks still come first, per function.
    fails_with(
        fwd("ioat:0000:00:04.0+0000:6a:01.0"),
        &["0000:6a:01.0 is a dsa function, not ioat"],
    );
}

/// Runs `scripts/vfio-bind.sh` with `args`, sysfs at `sysfs`, its state under `state`, and a
/// modprobe that always fails (nothing is ever loaded on the test machine).
fn vfio_bind(args: &[&str], sysfs: &Path, state: &Path) -> (i32, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vfio-bind.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .env("SYSFS", sysfs)
        .env("RVHOST_VFIO_STATE", state)
        .env("MODPROBE", "false")
        .output()
        .expect("run vfio-bind.sh");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The script's error paths (no device here can be bound for real): each exits non-zero with
/// a message naming what is missing, and leaves nothing changed.
#[test]
fn vfio_bind_script_says_what_is_missing() {
    let tree = TempTree::new("vfio-bind");
    let sys = tree.path().join("sys");
    let state = tree.path().join("state");
    fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();

    let (code, out, _) = vfio_bind(&["--help"], &sys, &state);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: scripts/vfio-bind.sh BDF") && out.contains("--unbind BDF"));
    assert_eq!(vfio_bind(&[], &sys, &state).0, 1);
    assert_eq!(vfio_bind(&["--unbind"], &sys, &state).0, 1);
    let (code, _, err) = vfio_bind(&["00:04"], &sys, &state);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a PCI address"), "{err}");

    let (code, _, err) = vfio_bind(&["0000:00:04.0"], &sys, &state);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such PCI device: 0000:00:04.0"), "{err}");
    let (code, _, err) = vfio_bind(&["--unbind", "0000:00:04.0"], &sys, &state);
    assert_eq!(code, 2, "{err}");
    // This machine's sysfs has no domain ffff.
    let (code, _, err) = vfio_bind(&["ffff:ff:1f.7"], Path::new("/sys"), &state);
    assert_eq!(code, 2, "{err}");

    // Not a copy engine: refused whatever else holds.
    function(&sys, "0000:00:03.0", 0x1572, Some("i40e"), Some(3));
    let (code, _, err) = vfio_bind(&["0000:00:03.0"], &sys, &state);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("(0x8086:0x1572, driver i40e) is not an IOAT or DSA function"),
        "{err}"
    );

    function(&sys, "0000:00:04.0", 0x2021, Some("ioatdma"), None);
    let (code, _, err) = vfio_bind(&["0000:00:04.0"], &sys, &state);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no IOMMU group: enable the IOMMU (intel_iommu=on"),
        "{err}"
    );

    // In an IOMMU group, vfio-pci absent and not loadable.
    function(&sys, "0000:00:04.1", 0x2021, Some("ioatdma"), Some(12));
    let dev = sys.join("bus/pci/devices/0000:00:04.1");
    fs::write(dev.join("driver_override"), "").unwrap();
    let (code, _, err) = vfio_bind(&["0000:00:04.1"], &sys, &state);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("vfio-pci module is not loaded"), "{err}");
    assert_eq!(fs::read_to_string(dev.join("driver_override")).unwrap(), "");
    assert!(!state.join("0000:00:04.1").exists());

    // vfio-pci present, but the (fake) kernel binds nothing: undone, and said so.
    fs::create_dir_all(sys.join("bus/pci/drivers/vfio-pci")).unwrap();
    let (code, _, err) = vfio_bind(&["0000:00:04.1"], &sys, &state);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("did not bind 0000:00:04.1 to vfio-pci (now: ioatdma)"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(dev.join("driver_override")).unwrap(),
        "\n"
    );
    assert!(!state.join("0000:00:04.1").exists());

    // Nothing to do: already bound, or not bound to vfio-pci.
    function(&sys, "0000:6a:01.0", 0x0b25, Some("vfio-pci"), Some(40));
    let (code, out, _) = vfio_bind(&["0000:6a:01.0"], &sys, &state);
    assert_eq!(code, 0);
    assert!(
        out.contains("already bound to vfio-pci (IOMMU group 40)"),
        "{out}"
    );
    let (code, out, _) = vfio_bind(&["--unbind", "0000:00:04.1"], &sys, &state);
    assert_eq!(code, 0);
    assert!(
        out.contains("not bound to vfio-pci (driver: ioatdma)"),
        "{out}"
    );
}
