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
    for argv in [
        &["bench", "--copy", "ioat:0000:00:04.0"][..],
        &["bench", "--copy", "cpu,dsa:0000:6a:01.0"][..],
        &[
            "fwd",
            "--mode",
            "io",
            "--iface",
            "/nonexistent/x.sock",
            "--copy",
            "dsa:0000:6a:01.0",
        ][..],
    ] {
        let out = rvhost(argv);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{argv:?}");
        assert!(
            stderr.contains("not supported yet") && stderr.contains("rvhost dma list"),
            "{argv:?}: {stderr}"
        );
    }
}
