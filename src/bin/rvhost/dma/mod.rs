//! `rvhost dma`: the copy engines' devices. [`list`] finds the IOAT and DSA functions in
//! sysfs (`rvhost dma list`); [`drivers`] builds the IOAT and DSA drivers' channels over a
//! BAR; [`models`] runs them over the IOAT and DSA models for `--copy ioat-model|dsa-model`;
//! [`device`] over functions opened through VFIO for `--copy ioat:BDF|dsa:BDF` (not run on
//! hardware).

use std::path::{Path, PathBuf};

use rvhost_dma::hw::vfio;

pub mod device;
pub mod drivers;
#[cfg(test)]
mod fake_sysfs;
pub mod list;
pub mod models;

use device::DeviceMode;
use models::ModelKind;

/// Options of `rvhost dma`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: DmaCommand,
}

/// `rvhost dma` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DmaCommand {
    /// List the IOAT (CBDMA) and DSA PCI functions with their driver and IOMMU group, and
    /// what to do before rvhost can drive one (exits 0 when there are none).
    List(ListArgs),
}

/// Options of `rvhost dma list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Where sysfs is mounted (tests point it at a fake tree).
    #[arg(long, value_name = "DIR", default_value = "/sys", hide = true)]
    pub sysfs: PathBuf,
}

/// Why `rvhost dma` failed.
#[derive(Debug, thiserror::Error)]
pub enum DmaCliError {
    /// sysfs could not be read.
    #[error("reading {path}")]
    Sysfs {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether `s` is a PCI address `dddd:bb:dd.f`.
fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

/// Parses `--copy ioat:BDF[+BDF...]` or `--copy dsa:BDF[+BDF...]` (`tok`), with sysfs at
/// `sysfs` and the VFIO nodes in `dev_vfio`, checking each function before anything is
/// opened: a PCI address, of that kind, then what the VFIO checks find missing, with what to
/// do; no function twice (one channel each), nor two of one IOMMU group (each is opened in a
/// container of its own). The functions are opened when the command starts
/// ([`device::device_channels`]).
pub fn device_mode(tok: &str, sysfs: &Path, dev_vfio: &Path) -> Result<DeviceMode, String> {
    let (want, list) = tok.split_once(':').unwrap_or((tok, ""));
    let kind = match want {
        "ioat" => ModelKind::Ioat,
        "dsa" => ModelKind::Dsa,
        _ => return Err(format!("{tok}: expected ioat:BDF or dsa:BDF")),
    };
    // (function, IOMMU group)
    let mut found: Vec<(String, u32)> = Vec::new();
    for bdf in list.split('+') {
        let group = function_check(tok, want, bdf, sysfs, dev_vfio)?;
        if found.iter().any(|(b, _)| b == bdf) {
            return Err(format!(
                "{tok}: {bdf} given twice (one channel per function)"
            ));
        }
        if let Some((other, _)) = found.iter().find(|&&(_, g)| g == group) {
            return Err(format!(
                "{tok}: {bdf} and {other} are both in IOMMU group {group}: each function is \
                 opened in a VFIO container of its own, and a group joins one container only; \
                 give functions of distinct groups (`rvhost dma list` shows them)"
            ));
        }
        found.push((bdf.to_owned(), group));
    }
    Ok(DeviceMode {
        kind,
        bdfs: Vec::leak(found.into_iter().map(|(b, _)| b).collect()),
    })
}

/// Checks function `bdf` of `tok` (`want`: `ioat` or `dsa`) before it is opened: its IOMMU
/// group, or what is missing.
fn function_check(
    tok: &str,
    want: &str,
    bdf: &str,
    sysfs: &Path,
    dev_vfio: &Path,
) -> Result<u32, String> {
    if !is_bdf(bdf) {
        return Err(format!(
            "{tok}: '{bdf}' is not a PCI address (dddd:bb:dd.f, e.g. 0000:00:04.0)"
        ));
    }
    if let Some(kind) = list::kind_at(sysfs, bdf) {
        match kind {
            Some(k) if k.name() == want => {}
            Some(k) => {
                return Err(format!(
                    "{tok}: {bdf} is a {} function, not {want}",
                    k.name()
                ));
            }
            None => {
                return Err(format!(
                    "{tok}: {bdf} is not an IOAT or DSA function (`rvhost dma list` shows them)"
                ));
            }
        }
    }
    vfio::check(sysfs, dev_vfio, bdf)
        .map(|ready| ready.group)
        .map_err(|e| format!("{tok}: {e}"))
}

/// Runs `rvhost dma ...`.
pub fn run(args: &Args) -> Result<(), DmaCliError> {
    match &args.command {
        DmaCommand::List(a) => {
            let found = list::scan(&a.sysfs).map_err(|source| DmaCliError::Sysfs {
                path: a.sysfs.join("bus/pci/devices"),
                source,
            })?;
            for line in list::report(&a.sysfs, found.as_deref()) {
                println!("{line}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn device_modes_say_what_is_missing_and_accept_ready_functions() {
        let root = std::env::temp_dir().join(format!("rvhost-dma-refusal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (sys, dev) = (root.join("sys"), root.join("dev"));
        fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(&dev).unwrap();
        let function = |bdf: &str, device: &str, driver: &str, group: u32| {
            let d = root.join("sys/devices").join(bdf);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), "0x8086\n").unwrap();
            fs::write(d.join("device"), format!("{device}\n")).unwrap();
            let drv = sys.join("bus/pci/drivers").join(driver);
            fs::create_dir_all(&drv).unwrap();
            symlink(&drv, d.join("driver")).unwrap();
            let grp = sys.join("kernel/iommu_groups").join(group.to_string());
            fs::create_dir_all(&grp).unwrap();
            symlink(&grp, d.join("iommu_group")).unwrap();
            symlink(&d, sys.join("bus/pci/devices").join(bdf)).unwrap();
        };
        let refusal = |tok: &str| device_mode(tok, &sys, &dev).unwrap_err();
        assert!(refusal("ioat:00:04.0").contains("is not a PCI address"));
        assert!(refusal("ioat:0000:00:04.0").contains("no such PCI device"));
        function("0000:00:04.0", "0x2021", "ioatdma", 12);
        function("0000:6a:01.0", "0x0b25", "vfio-pci", 40);
        function("0000:00:1f.0", "0x2918", "lpc_ich", 3);
        let r = refusal("ioat:0000:00:04.0");
        assert!(r.contains("bound to ioatdma, not vfio-pci"), "{r}");
        assert!(refusal("ioat:0000:6a:01.0").contains("is a dsa function, not ioat"));
        assert!(refusal("dsa:0000:00:1f.0").contains("not an IOAT or DSA function"));
        assert!(refusal("dsa:0000:6a:01.0").contains("/vfio is missing"));
        fs::write(dev.join("vfio"), "").unwrap();
        fs::write(dev.join("40"), "").unwrap();
        let m = device_mode("dsa:0000:6a:01.0", &sys, &dev).unwrap();
        assert_eq!(
            (m.kind, m.bdfs),
            (ModelKind::Dsa, &["0000:6a:01.0".to_string()][..])
        );
        // Several functions: each is checked, none twice.
        function("0000:6a:02.0", "0x0b25", "vfio-pci", 41);
        fs::write(dev.join("41"), "").unwrap();
        let m = device_mode("dsa:0000:6a:01.0+0000:6a:02.0", &sys, &dev).unwrap();
        assert_eq!(m.bdfs.len(), 2);
        assert_eq!(m.name(), "dsa:0000:6a:01.0+0000:6a:02.0");
        let r = refusal("dsa:0000:6a:01.0+0000:00:04.0");
        assert!(
            r.contains("0000:00:04.0 is a ioat function, not dsa"),
            "{r}"
        );
        let r = refusal("dsa:0000:6a:01.0+0000:6a:01.0");
        assert!(r.contains("0000:6a:01.0 given twice"), "{r}");
        function("0000:6a:03.0", "0x0b25", "vfio-pci", 40);
        let r = refusal("dsa:0000:6a:01.0+0000:6a:03.0");
        assert!(
            r.contains("0000:6a:03.0 and 0000:6a:01.0 are both in IOMMU group 40"),
            "{r}"
        );
        assert!(refusal("dsa:0000:6a:01.0+").contains("'' is not a PCI address"));
        let _ = fs::remove_dir_all(&root);
    }
}
