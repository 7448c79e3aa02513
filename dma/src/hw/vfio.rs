//! The VFIO layer: a PCI function bound to vfio-pci, opened from user space.
//!
//! [`check`] looks at what the kernel shows before anything is opened (the function exists,
//! is bound to vfio-pci, has an IOMMU group, `/dev/vfio/vfio` and the group's node exist), so
//! that each missing piece is an error that says what to do. With the `vfio` feature,
//! [`VfioPci::open`] then opens the container and the group with the rust-vmm `vfio-ioctls`
//! crate (without its KVM support), gets the device, turns on memory decoding and bus
//! mastering, and maps BARs ([`VfioBar`], an [`Mmio`](crate::hw::Mmio)) and DSA portals
//! ([`VfioPortal`]); it is a [`DmaMapper`](crate::hw::DmaMapper) that programs the
//! container's IOMMU (IOVA = VA), so the drivers run over it as they run over a model.
//!
//! Nothing past the checks can be exercised without a device: the tests cover [`check`] on
//! fake sysfs trees and `VfioPci::open_at` refusing nodes that are not VFIO's; the opening,
//! BAR and portal mapping and IOMMU programming have not run on hardware.

use std::fs;
use std::path::{Path, PathBuf};

use crate::DmaError;

/// What [`check`] found: the function is ready to be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The function's sysfs directory.
    pub sysfs_dir: PathBuf,
    /// Its IOMMU group.
    pub group: u32,
}

fn vfio_err(bdf: &str, what: String) -> DmaError {
    DmaError::Vfio {
        bdf: bdf.to_owned(),
        what,
    }
}

/// The last component of the target of the symlink at `path`.
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Checks that the function at `bdf` (`dddd:bb:dd.f`) can be opened through VFIO, with sysfs
/// at `sysfs` (`/sys`) and the VFIO device nodes in `dev_vfio` (`/dev/vfio`). Each error names
/// what is missing and what to do: no such function, bound to another driver or to none, no
/// IOMMU group, no `/dev/vfio/vfio` (vfio-pci not loaded), no node for the group.
pub fn check(sysfs: &Path, dev_vfio: &Path, bdf: &str) -> Result<Ready, DmaError> {
    let dir = sysfs.join("bus/pci/devices").join(bdf);
    if !dir.exists() {
        return Err(vfio_err(
            bdf,
            "no such PCI device (`rvhost dma list` shows the IOAT and DSA functions)".into(),
        ));
    }
    match link_name(&dir.join("driver")).as_deref() {
        Some("vfio-pci") => {}
        Some(other) => {
            return Err(vfio_err(
                bdf,
                format!(
                    "bound to {other}, not vfio-pci: `scripts/vfio-bind.sh {bdf}` binds it \
                     (`--unbind` gives it back)"
                ),
            ));
        }
        None => {
            return Err(vfio_err(
                bdf,
                format!("bound to no driver, not vfio-pci: `scripts/vfio-bind.sh {bdf}` binds it"),
            ));
        }
    }
    let Some(group) = link_name(&dir.join("iommu_group")) else {
        return Err(vfio_err(
            bdf,
            "no IOMMU group: enable the IOMMU (intel_iommu=on on the kernel command line)".into(),
        ));
    };
    let group: u32 = group
        .parse()
        .map_err(|_| vfio_err(bdf, format!("IOMMU group '{group}' is not a number")))?;
    let container = dev_vfio.join("vfio");
    if !container.exists() {
        return Err(vfio_err(
            bdf,
            format!(
                "{} is missing: load the vfio-pci module (modprobe vfio-pci)",
                container.display()
            ),
        ));
    }
    let node = dev_vfio.join(group.to_string());
    if !node.exists() {
        return Err(vfio_err(
            bdf,
            format!(
                "{} (its IOMMU group) is missing although it is bound to vfio-pci: is \
                 /dev/vfio mounted in this container?",
                node.display()
            ),
        ));
    }
    Ok(Ready {
        sysfs_dir: dir,
        group,
    })
}

#[cfg(feature = "vfio")]
pub use open::{VfioBar, VfioPci, VfioPortal};

#[cfg(feature = "vfio")]
mod open {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    use std::path::Path;
    use std::ptr;
    use std::sync::Arc;

    use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

    use super::{check, vfio_err};
    use crate::hw::dma_mem::DmaMapper;
    use crate::hw::dsa::portal::{Descriptor, MovdirPortal, Portal};
    use crate::hw::mmio::{Mmio, MmioBar};
    use crate::{DmaError, Iova};

    /// VFIO's region index of PCI configuration space (`VFIO_PCI_CONFIG_REGION_INDEX`).
    const CONFIG_REGION: u32 = 7;
    /// `VFIO_REGION_INFO_FLAG_MMAP`: the region can be mmapped.
    const REGION_MMAP: u32 = 1 << 2;
    /// PCI command register, and its memory-space and bus-master bits.
    const PCI_COMMAND: u64 = 0x04;
    const COMMAND_MEMORY: u16 = 1 << 1;
    const COMMAND_MASTER: u16 = 1 << 2;

    /// A PCI function opened through VFIO: its container (one per function here), its device,
    /// bus mastering on. Dropping it closes the device and the container, which removes every
    /// IOMMU mapping made through it.
    pub struct VfioPci {
        bdf: String,
        container: Arc<VfioContainer>,
        device: VfioDevice,
    }

    impl std::fmt::Debug for VfioPci {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("VfioPci").field("bdf", &self.bdf).finish()
        }
    }

    impl VfioPci {
        /// Opens the function at `bdf` (bound to vfio-pci: see [`check`], whose errors come
        /// first), with memory decoding and bus mastering turned on.
        pub fn open(bdf: &str) -> Result<VfioPci, DmaError> {
            VfioPci::open_at(Path::new("/sys"), Path::new("/dev/vfio"), bdf)
        }

        /// [`open`](VfioPci::open) with sysfs at `sysfs` and the VFIO nodes in `dev_vfio` for
        /// the checks ([`check`], then: both nodes are character devices). `vfio-ioctls`
        /// opens the nodes at their fixed paths (`/dev/vfio/vfio`, `/dev/vfio/GROUP`), so
        /// another `dev_vfio` is refused once its nodes pass: it is there for tests, which
        /// reach this refusal or an earlier one.
        pub fn open_at(sysfs: &Path, dev_vfio: &Path, bdf: &str) -> Result<VfioPci, DmaError> {
            let ready = check(sysfs, dev_vfio, bdf)?;
            for node in [
                dev_vfio.join("vfio"),
                dev_vfio.join(ready.group.to_string()),
            ] {
                let is_chr = std::fs::metadata(&node).is_ok_and(|m| m.file_type().is_char_device());
                if !is_chr {
                    return Err(vfio_err(
                        bdf,
                        format!(
                            "{} is not a character device, so not a VFIO node: is /dev/vfio \
                             the host's (mount it into this container with the group's node)?",
                            node.display()
                        ),
                    ));
                }
            }
            if dev_vfio != Path::new("/dev/vfio") {
                return Err(vfio_err(
                    bdf,
                    format!(
                        "VFIO nodes in {}: only /dev/vfio can be opened (vfio-ioctls' paths)",
                        dev_vfio.display()
                    ),
                ));
            }
            let container = VfioContainer::new(None)
                .map_err(|e| vfio_err(bdf, format!("opening the VFIO container: {e}")))?;
            let container = Arc::new(container);
            let ops: Arc<dyn VfioOps> = container.clone();
            let device = VfioDevice::new(&ready.sysfs_dir, ops, false).map_err(|e| {
                vfio_err(
                    bdf,
                    format!(
                        "opening it in IOMMU group {} (every device of the group must be \
                         bound to vfio-pci or to no driver): {e}",
                        ready.group
                    ),
                )
            })?;
            let mut cmd = [0u8; 2];
            device.region_read(CONFIG_REGION, &mut cmd, PCI_COMMAND);
            let on = u16::from_le_bytes(cmd) | COMMAND_MEMORY | COMMAND_MASTER;
            device.region_write(CONFIG_REGION, &on.to_le_bytes(), PCI_COMMAND);
            Ok(VfioPci {
                bdf: bdf.to_owned(),
                container,
                device,
            })
        }

        /// Maps BAR `index` (`0..=5`) of the function.
        pub fn map_bar(&self, index: u32) -> Result<VfioBar, DmaError> {
            if index > 5 {
                return Err(vfio_err(&self.bdf, format!("BAR {index} does not exist")));
            }
            let size = self.device.get_region_size(index);
            if size == 0 {
                return Err(vfio_err(&self.bdf, format!("BAR {index} is empty")));
            }
            if self.device.get_region_flags(index) & REGION_MMAP == 0 {
                return Err(vfio_err(
                    &self.bdf,
                    format!("BAR {index} cannot be mmapped through VFIO"),
                ));
            }
            let len = usize::try_from(size)
                .map_err(|_| vfio_err(&self.bdf, format!("BAR {index} is too large")))?;
            let offset = libc::off_t::try_from(self.device.get_region_offset(index))
                .map_err(|_| vfio_err(&self.bdf, format!("BAR {index}'s offset is too large")))?;
            // SAFETY: a new shared mapping of the device fd's BAR region, at an address the
            // kernel picks; nothing else is affected. The result is checked below.
            let base = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.device.as_raw_fd(),
                    offset,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(vfio_err(
                    &self.bdf,
                    format!("mmap of BAR {index}: {}", std::io::Error::last_os_error()),
                ));
            }
            // SAFETY: `base..base + len` is the BAR's registers, mapped MAP_SHARED just above,
            // unmapped only when the `VfioBar` is dropped, and never referenced as Rust data.
            let bar = unsafe { MmioBar::new(base.cast(), len) };
            Ok(VfioBar { bar, base, len })
        }
    }

    impl VfioPci {
        /// The function's PCI address.
        pub fn bdf(&self) -> &str {
            &self.bdf
        }

        /// A DSA work queue's portal: BAR `index` mapped, the 4 KiB portal page at `offset`
        /// in it (64-byte aligned, inside the BAR), written with MOVDIR64B
        /// ([`MovdirPortal`]: refused on a CPU without it). The portal owns the BAR's
        /// mapping, unmapped when it drops.
        pub fn map_portal(&self, index: u32, offset: usize) -> Result<VfioPortal, DmaError> {
            let bar = self.map_bar(index)?;
            if offset
                .checked_add(PORTAL_PAGE)
                .is_none_or(|end| end > bar.len)
            {
                return Err(vfio_err(
                    &self.bdf,
                    format!(
                        "BAR {index} ({:#x} bytes) has no portal page at {offset:#x}",
                        bar.len
                    ),
                ));
            }
            let at = bar.base.cast::<u8>().wrapping_add(offset);
            // SAFETY: `at..at + 4096` lies in the BAR mapped just above (checked), which the
            // returned value owns (`_bar`, dropped after `portal`), so it stays valid for
            // 64-byte writes for the portal's life.
            let portal = unsafe { MovdirPortal::new(at) }
                .map_err(|e| vfio_err(&self.bdf, format!("DSA portal in BAR {index}: {e}")))?;
            Ok(VfioPortal { portal, _bar: bar })
        }
    }

    /// Bytes of one portal page.
    const PORTAL_PAGE: usize = 4096;

    /// A DSA work queue's portal in a BAR mapped through VFIO ([`VfioPci::map_portal`]):
    /// MOVDIR64B submission, the mapping unmapped on drop.
    #[derive(Debug)]
    pub struct VfioPortal {
        // Field order: the portal (a pointer into the BAR) goes before the mapping.
        portal: MovdirPortal,
        _bar: VfioBar,
    }

    impl Portal for VfioPortal {
        #[inline]
        fn submit(&self, desc: &Descriptor) {
            self.portal.submit(desc)
        }
    }

    impl DmaMapper for VfioPci {
        unsafe fn map(&self, iova: Iova, va: *const u8, len: usize) -> Result<(), DmaError> {
            // SAFETY: the caller keeps `va..va + len` allocated until `unmap` (this method's
            // contract); the kernel pins the pages and programs the IOMMU.
            unsafe { self.container.vfio_dma_map(iova.0, len, va.cast_mut()) }
                .map_err(|e| vfio_err(&self.bdf, format!("IOMMU map of {len:#x} bytes: {e}")))
        }

        fn unmap(&self, iova: Iova, len: usize) {
            if let Err(e) = self.container.vfio_dma_unmap(iova.0, len) {
                log::error!("{}: IOMMU unmap of {iova:?}+{len:#x}: {e}", self.bdf);
            }
        }
    }

    /// A BAR mapped through VFIO: register access with [`Mmio`], unmapped on drop.
    #[derive(Debug)]
    pub struct VfioBar {
        bar: MmioBar,
        base: *mut libc::c_void,
        len: usize,
    }

    // SAFETY: as `MmioBar`: a mapping of device registers, valid until drop, accessed only by
    // single volatile loads and stores.
    unsafe impl Send for VfioBar {}
    // SAFETY: as for `Send`.
    unsafe impl Sync for VfioBar {}

    impl Drop for VfioBar {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `map_bar`, unmapped once, here; `bar` (its only
            // user) goes with `self`.
            unsafe { libc::munmap(self.base, self.len) };
        }
    }

    impl Mmio for VfioBar {
        fn read8(&self, off: usize) -> u8 {
            self.bar.read8(off)
        }
        fn read16(&self, off: usize) -> u16 {
            self.bar.read16(off)
        }
        fn read32(&self, off: usize) -> u32 {
            self.bar.read32(off)
        }
        fn read64(&self, off: usize) -> u64 {
            self.bar.read64(off)
        }
        fn write8(&self, off: usize, val: u8) {
            self.bar.write8(off, val)
        }
        fn write16(&self, off: usize, val: u16) {
            self.bar.write16(off, val)
        }
        fn write32(&self, off: usize, val: u32) {
            self.bar.write32(off, val)
        }
        fn write64(&self, off: usize, val: u64) {
            self.bar.write64(off, val)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake sysfs and /dev/vfio under a fresh temporary directory, removed on drop.
    struct Fake(PathBuf);

    impl Fake {
        fn new(name: &str) -> Fake {
            let root =
                std::env::temp_dir().join(format!("rvhost-vfio-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
            fs::create_dir_all(root.join("dev")).unwrap();
            Fake(root)
        }

        fn sys(&self) -> PathBuf {
            self.0.join("sys")
        }

        fn dev(&self) -> PathBuf {
            self.0.join("dev")
        }

        fn function(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) {
            let dev = self.0.join("sys/devices").join(bdf);
            fs::create_dir_all(&dev).unwrap();
            if let Some(d) = driver {
                let drv = self.0.join("sys/bus/pci/drivers").join(d);
                fs::create_dir_all(&drv).unwrap();
                symlink(&drv, dev.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let grp = self.0.join("sys/kernel/iommu_groups").join(g.to_string());
                fs::create_dir_all(&grp).unwrap();
                symlink(&grp, dev.join("iommu_group")).unwrap();
            }
            symlink(&dev, self.0.join("sys/bus/pci/devices").join(bdf)).unwrap();
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn what(e: DmaError) -> String {
        match e {
            DmaError::Vfio { what, .. } => what,
            other => panic!("not a VFIO error: {other}"),
        }
    }

    #[test]
    fn each_missing_piece_is_named() {
        let f = Fake::new("check");
        let err = |bdf| what(check(&f.sys(), &f.dev(), bdf).unwrap_err());
        assert!(err("0000:00:04.0").starts_with("no such PCI device"));
        f.function("0000:00:04.0", Some("ioatdma"), Some(12));
        let e = err("0000:00:04.0");
        assert!(
            e.contains("bound to ioatdma, not vfio-pci: `scripts/vfio-bind.sh 0000:00:04.0`"),
            "{e}"
        );
        f.function("0000:00:04.1", None, Some(13));
        assert!(err("0000:00:04.1").starts_with("bound to no driver"));
        f.function("0000:00:04.2", Some("vfio-pci"), None);
        assert!(err("0000:00:04.2").contains("enable the IOMMU (intel_iommu=on"));
        f.function("0000:00:04.3", Some("vfio-pci"), Some(14));
        let e = err("0000:00:04.3");
        assert!(
            e.contains("/vfio is missing: load the vfio-pci module"),
            "{e}"
        );
        fs::write(f.dev().join("vfio"), "").unwrap();
        assert!(err("0000:00:04.3").contains("/14 (its IOMMU group) is missing"));
        fs::write(f.dev().join("14"), "").unwrap();
        let ready = check(&f.sys(), &f.dev(), "0000:00:04.3").unwrap();
        assert_eq!(ready.group, 14);
        assert!(ready.sysfs_dir.ends_with("bus/pci/devices/0000:00:04.3"));
    }

    #[cfg(feature = "vfio")]
    #[test]
    fn open_at_refuses_nodes_that_are_not_vfio_nodes() {
        let f = Fake::new("open-at");
        f.function("0000:6a:01.0", Some("vfio-pci"), Some(40));
        // The checks' errors come first.
        let e = what(VfioPci::open_at(&f.sys(), &f.dev(), "0000:6a:01.0").unwrap_err());
        assert!(e.contains("/vfio is missing"), "{e}");
        // Nodes that pass the checks but are plain files: not VFIO nodes, nothing opened.
        fs::write(f.dev().join("vfio"), "").unwrap();
        fs::write(f.dev().join("40"), "").unwrap();
        check(&f.sys(), &f.dev(), "0000:6a:01.0").unwrap();
        let e = what(VfioPci::open_at(&f.sys(), &f.dev(), "0000:6a:01.0").unwrap_err());
        assert!(
            e.contains("/vfio is not a character device, so not a VFIO node"),
            "{e}"
        );
    }

    #[cfg(feature = "vfio")]
    #[test]
    fn open_fails_with_the_checks_error_on_this_machine() {
        // No function has this address here (domain ffff).
        let e = VfioPci::open("ffff:ff:1f.7").unwrap_err();
        assert!(what(e).starts_with("no such PCI device"));
    }
}
