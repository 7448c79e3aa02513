//! `rvhost dma`: the copy engines' devices. [`list`] finds the IOAT and DSA functions in
//! sysfs (`rvhost dma list`); [`drivers`] builds the IOAT and DSA drivers' channels over a
//! BAR; [`models`] runs them over the IOAT and DSA models for `--copy ioat-model|dsa-model`.

use std::path::{Path, PathBuf};

use rvhost_dma::hw::vfio;

pub mod drivers;
pub mod list;
pub mod models;

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

/// Why `--copy ioat:BDF` or `--copy dsa:BDF` (`tok`) cannot run, with sysfs at `sysfs` and
/// the VFIO nodes in `dev_vfio`: what the VFIO checks find missing, with what to do; or, when
/// the function is ready, that rvhost does not drive a real device yet (untried on hardware).
pub fn device_mode_refusal(tok: &str, sysfs: &Path, dev_vfio: &Path) -> String {
    let (want, bdf) = tok.split_once(':').unwrap_or((tok, ""));
    if !is_bdf(bdf) {
        return format!("{tok}: '{bdf}' is not a PCI address (dddd:bb:dd.f, e.g. 0000:00:04.0)");
    }
    if let Some(kind) = list::kind_at(sysfs, bdf) {
        match kind {
            Some(k) if k.name() == want => {}
            Some(k) => return format!("{tok}: {bdf} is a {} function, not {want}", k.name()),
            None => {
                return format!(
                    "{tok}: {bdf} is not an IOAT or DSA function (`rvhost dma list` shows them)"
                );
            }
        }
    }
    match vfio::check(sysfs, dev_vfio, bdf) {
        Err(e) => format!("{tok}: {e}"),
        Ok(ready) => format!(
            "{tok}: {bdf} is ready (vfio-pci, IOMMU group {}), but rvhost does not drive a real \
             device yet: nothing of the VFIO path (open, BARs, the drivers on silicon, the \
             IOMMU mapping of the pool and of guest memory through Driver::set_dma_mapper) \
             has run on hardware; ioat-model and dsa-model run the same drivers and the same \
             mapping over models with a strict IOMMU",
            ready.group
        ),
    }
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
    fn device_modes_say_what_is_missing_then_what_rvhost_lacks() {
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
        let refusal = |tok: &str| device_mode_refusal(tok, &sys, &dev);
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
        let r = refusal("dsa:0000:6a:01.0");
        assert!(
            r.contains("is ready (vfio-pci, IOMMU group 40)")
                && r.contains("does not drive a real device yet"),
            "{r}"
        );
        let _ = fs::remove_dir_all(&root);
    }
}
