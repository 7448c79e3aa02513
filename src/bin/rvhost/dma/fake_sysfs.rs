//! A fake sysfs tree for the tests of `rvhost dma list` and of opening a function
//! (`device`): PCI functions with their ids, driver and IOMMU group links.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

/// A fake sysfs tree under a fresh temporary directory, removed on drop.
pub struct FakeSys(pub PathBuf);

impl FakeSys {
    pub fn new(name: &str) -> FakeSys {
        let root =
            std::env::temp_dir().join(format!("rvhost-fake-sysfs-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(root.join("bus/pci/drivers")).unwrap();
        fs::create_dir_all(root.join("kernel/iommu_groups")).unwrap();
        FakeSys(root)
    }

    /// A function at `bdf`, with a `driver` link if `driver` and an `iommu_group` link if
    /// `group`.
    pub fn function(
        &self,
        bdf: &str,
        vendor: u16,
        device: u16,
        driver: Option<&str>,
        group: Option<u32>,
    ) {
        let dev = self.0.join("devices/pci0000:00").join(bdf);
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("vendor"), format!("0x{vendor:04x}\n")).unwrap();
        fs::write(dev.join("device"), format!("0x{device:04x}\n")).unwrap();
        fs::write(dev.join("class"), "0x088000\n").unwrap();
        if let Some(d) = driver {
            let drv = self.0.join("bus/pci/drivers").join(d);
            fs::create_dir_all(&drv).unwrap();
            symlink(&drv, dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            let grp = self.0.join("kernel/iommu_groups").join(g.to_string());
            fs::create_dir_all(&grp).unwrap();
            symlink(&grp, dev.join("iommu_group")).unwrap();
        }
        symlink(&dev, self.0.join("bus/pci/devices").join(bdf)).unwrap();
    }
}

impl Drop for FakeSys {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
