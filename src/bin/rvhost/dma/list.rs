//! `rvhost dma list`: the IOAT (CBDMA) and DSA PCI functions in sysfs, with their current
//! driver and IOMMU group, and what to do before rvhost can drive one.
//!
//! Device ids: IOAT from DPDK's `drivers/dma/ioat/ioat_hw_defs.h` (the IOAT 3.x functions
//! DPDK's driver, which rvhost's follows, takes); DSA and IAX from Linux's
//! `drivers/dma/idxd/registers.h` and `include/linux/pci_ids.h`. IAX (IAA) functions are
//! listed as not supported: they share DSA's interface but offer compression, not copies.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Intel's PCI vendor id.
const INTEL: u16 = 0x8086;

/// IOAT 3.x functions: Skylake-SP, Broadwell (eight channels and two more), Ice Lake-SP.
const IOAT_IDS: [u16; 12] = [
    0x2021, 0x6f20, 0x6f21, 0x6f22, 0x6f23, 0x6f24, 0x6f25, 0x6f26, 0x6f27, 0x6f2e, 0x6f2f, 0x0b00,
];
/// DSA functions: Sapphire Rapids, Granite Rapids-D, Diamond Rapids.
const DSA_IDS: [u16; 3] = [0x0b25, 0x11fb, 0x1212];
/// IAX (IAA) functions: Sapphire Rapids, Diamond Rapids, Panther Lake.
const IAX_IDS: [u16; 3] = [0x0cfe, 0x1216, 0xb02d];

/// What a function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An IOAT (CBDMA) channel.
    Ioat,
    /// A DSA device.
    Dsa,
    /// An IAX (IAA) device: listed, not supported.
    Iax,
}

impl Kind {
    fn of(vendor: u16, device: u16) -> Option<Kind> {
        if vendor != INTEL {
            return None;
        }
        if IOAT_IDS.contains(&device) {
            Some(Kind::Ioat)
        } else if DSA_IDS.contains(&device) {
            Some(Kind::Dsa)
        } else if IAX_IDS.contains(&device) {
            Some(Kind::Iax)
        } else {
            None
        }
    }

    /// `ioat`, `dsa` or `iax`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ioat => "ioat",
            Kind::Dsa => "dsa",
            Kind::Iax => "iax",
        }
    }
}

/// One function found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// PCI address, `dddd:bb:dd.f`.
    pub bdf: String,
    /// What it is.
    pub kind: Kind,
    /// Its PCI device id.
    pub device: u16,
    /// The driver bound to it (`driver` link), if any.
    pub driver: Option<String>,
    /// Its IOMMU group (`iommu_group` link), if it has one.
    pub iommu_group: Option<String>,
}

impl Function {
    /// What to do before rvhost can drive it, or `None` if it is ready (bound to vfio-pci,
    /// in an IOMMU group).
    pub fn advice(&self) -> Option<String> {
        if self.kind == Kind::Iax {
            return Some("not supported (IAX compresses; rvhost drives IOAT and DSA)".into());
        }
        if self.iommu_group.is_none() {
            return Some("no IOMMU group: enable the IOMMU (intel_iommu=on)".into());
        }
        match self.driver.as_deref() {
            Some("vfio-pci") => None,
            Some(d) => Some(format!(
                "bound to {d}: scripts/vfio-bind.sh {} binds it to vfio-pci",
                self.bdf
            )),
            None => Some(format!(
                "no driver: scripts/vfio-bind.sh {} binds it to vfio-pci",
                self.bdf
            )),
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<14}{:<6}{:<11}{:<12}{:<8}{}",
            self.bdf,
            self.kind.name(),
            format!("{INTEL:04x}:{:04x}", self.device),
            self.driver.as_deref().unwrap_or("none"),
            self.iommu_group.as_deref().unwrap_or("none"),
            self.advice().unwrap_or_else(|| "ready".into()),
        )
    }
}

/// The kind of the function at `bdf` under `sysfs`: `None` if it does not exist, `Some(None)`
/// if it is not an IOAT, DSA or IAX function.
pub fn kind_at(sysfs: &Path, bdf: &str) -> Option<Option<Kind>> {
    let dir = sysfs.join("bus/pci/devices").join(bdf);
    if !dir.exists() {
        return None;
    }
    let id = |f: &str| read_hex(&dir.join(f)).and_then(|v| u16::try_from(v).ok());
    Some(match (id("vendor"), id("device")) {
        (Some(v), Some(d)) => Kind::of(v, d),
        _ => None,
    })
}

/// Reads a sysfs hex file such as `vendor` (`0x8086`).
fn read_hex(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// The last component of the target of the symlink at `path`.
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The IOAT, DSA and IAX functions under `sysfs` (`/sys` on a live system), by address.
/// `Ok(None)` if there is no PCI bus directory at all.
pub fn scan(sysfs: &Path) -> std::io::Result<Option<Vec<Function>>> {
    let dir = sysfs.join("bus/pci/devices");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path: PathBuf = entry?.path();
        let (Some(vendor), Some(device)) = (
            read_hex(&path.join("vendor")),
            read_hex(&path.join("device")),
        ) else {
            continue;
        };
        let (Ok(vendor), Ok(device)) = (u16::try_from(vendor), u16::try_from(device)) else {
            continue;
        };
        let Some(kind) = Kind::of(vendor, device) else {
            continue;
        };
        found.push(Function {
            bdf: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind,
            device,
            driver: link_name(&path.join("driver")),
            iommu_group: link_name(&path.join("iommu_group")),
        });
    }
    found.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(Some(found))
}

/// The lines `rvhost dma list` prints for what [`scan`] found.
pub fn report(sysfs: &Path, found: Option<&[Function]>) -> Vec<String> {
    match found {
        None => vec![format!(
            "no IOAT or DSA devices (no PCI bus in sysfs: {} is missing)",
            sysfs.join("bus/pci/devices").display()
        )],
        Some([]) => vec!["no IOAT or DSA devices".into()],
        Some(list) => {
            let mut out = vec![format!(
                "{:<14}{:<6}{:<11}{:<12}{:<8}{}",
                "BDF", "kind", "id", "driver", "group", "status"
            )];
            out.extend(list.iter().map(|f| f.to_string()));
            if !list.iter().any(|f| f.kind != Kind::Iax) {
                out.push("no IOAT or DSA devices (only IAX, which rvhost does not drive)".into());
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_sysfs::FakeSys;
    use super::*;

    #[test]
    fn no_devices_is_said_so() {
        let sys = FakeSys::new("empty");
        // Another vendor's function, and an Intel one of another kind: not listed.
        sys.function("0000:00:00.0", 0x1af4, 0x1041, Some("virtio-pci"), Some(1));
        sys.function("0000:00:1f.0", INTEL, 0x2918, None, None);
        let found = scan(&sys.0).unwrap().unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(report(&sys.0, Some(&found)), ["no IOAT or DSA devices"]);
        // No PCI bus at all.
        let nothing = sys.0.join("nowhere");
        assert_eq!(scan(&nothing).unwrap(), None);
        assert!(report(&nothing, None)[0].starts_with("no IOAT or DSA devices (no PCI bus"));
    }

    #[test]
    fn functions_are_listed_with_driver_group_and_advice() {
        let sys = FakeSys::new("populated");
        sys.function("0000:6a:01.0", INTEL, 0x0b25, Some("idxd"), Some(40));
        sys.function("0000:00:04.1", INTEL, 0x2021, Some("vfio-pci"), Some(12));
        sys.function("0000:00:04.0", INTEL, 0x2021, Some("ioatdma"), None);
        sys.function("0000:6a:02.0", INTEL, 0x0cfe, None, Some(41));
        sys.function("0000:80:04.0", INTEL, 0x6f2e, None, Some(7));
        let found = scan(&sys.0).unwrap().unwrap();
        let brief: Vec<_> = found
            .iter()
            .map(|f| {
                (
                    f.bdf.as_str(),
                    f.kind,
                    f.driver.as_deref(),
                    f.iommu_group.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                ("0000:00:04.0", Kind::Ioat, Some("ioatdma"), None),
                ("0000:00:04.1", Kind::Ioat, Some("vfio-pci"), Some("12")),
                ("0000:6a:01.0", Kind::Dsa, Some("idxd"), Some("40")),
                ("0000:6a:02.0", Kind::Iax, None, Some("41")),
                ("0000:80:04.0", Kind::Ioat, None, Some("7")),
            ]
        );
        let lines = report(&sys.0, Some(&found));
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines[0].starts_with("BDF"));
        let line = |bdf: &str| lines.iter().find(|l| l.starts_with(bdf)).unwrap().clone();
        assert!(line("0000:00:04.0").contains("no IOMMU group: enable the IOMMU (intel_iommu=on)"));
        assert!(line("0000:00:04.1").ends_with("ready"), "{lines:#?}");
        assert!(line("0000:6a:01.0").contains("bound to idxd: scripts/vfio-bind.sh 0000:6a:01.0"));
        assert!(line("0000:6a:02.0").contains("not supported"));
        assert!(line("0000:80:04.0").contains("no driver: scripts/vfio-bind.sh"));
        assert!(line("0000:6a:01.0").contains("8086:0b25"));
    }
}
