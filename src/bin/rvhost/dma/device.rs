//! `--copy ioat:BDF[+BDF...]` and `--copy dsa:BDF[+BDF...]`: the IOAT and DSA drivers over
//! PCI functions opened through VFIO, one channel per function (an IOAT function is one
//! channel; a DSA function is set up with one dedicated WQ, WQ 0).
//!
//! Each function is opened with [`VfioPci::open_at`] (its own container, so its own IOMMU
//! table), its registers' BAR mapped (BAR0 for both) and, for DSA, WQ 0's portal (the first
//! page of BAR2), and the channel built by [`super::drivers`], the code the models run
//! (`--copy ioat-model|dsa-model`), with the function as the channel's [`DmaMapper`]. The
//! pool is mapped in every function's IOMMU ([`PoolMapping`] over [`DeviceChannels::mapper`])
//! and each socket gets the mapper of its own channels' functions for guest memory
//! (`Driver::set_dma_mapper`), exactly as for the models.
//!
//! **Not run on hardware**: no IOAT or DSA function was available where this was written.
//! Tests cover the refusals before and at the opening (fake sysfs trees) and the drivers'
//! construction over the models (`drivers`), not the BARs, the portal or the IOMMU of a
//! real function.
//!
//! On an error nothing stays mapped or enabled: what was built is dropped in the order
//! channels (which stop the device and unmap their rings), BARs and portals (inside the
//! channels), then the functions (closing the container removes its IOMMU mappings).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use rvhost::mbuf::PktPool;
use rvhost::net::AsyncCopyOps;
use rvhost_dma::DmaError;
use rvhost_dma::hw::dsa::regs as dsa_regs;
use rvhost_dma::hw::ioat::regs as ioat_regs;
use rvhost_dma::hw::vfio::VfioPci;
use rvhost_dma::hw::{DmaMapper, MapperSet};

use super::drivers::{copy_device, dsa_channel, ioat_channel};
use super::models::{ModelKind, PoolMapping};

/// A checked `ioat:BDF[+BDF...]` or `dsa:BDF[+BDF...]` (see [`super::device_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceMode {
    /// IOAT or DSA.
    pub kind: ModelKind,
    /// The functions, one channel each, in the order the channels are used. Parsed once per
    /// process from the command line (leaked: the mode is `Copy`, as the others).
    pub bdfs: &'static [String],
}

impl DeviceMode {
    /// `ioat:BDF+BDF`, as on the command line.
    pub fn name(&self) -> String {
        format!("{}:{}", self.kind.device_name(), self.bdfs.join("+"))
    }

    /// Checks that there are `n` functions, one per channel the command needs (`what`
    /// says which), else says how many to give.
    pub fn check_count(&self, n: usize, what: &str) -> Result<(), String> {
        if self.bdfs.len() == n {
            return Ok(());
        }
        let kind = self.kind.device_name();
        let example = vec!["BDF"; n].join("+");
        Err(format!(
            "{}: {n} function(s) needed, one channel each ({what}), {} given: \
             {kind}:{example} (`rvhost dma list` shows them)",
            self.name(),
            self.bdfs.len()
        ))
    }
}

/// Channels over functions opened through VFIO, and the functions.
pub struct DeviceChannels {
    /// One copy device per function, in the order of [`DeviceMode::bdfs`]. Declared first:
    /// the channels drop before the functions.
    pub channels: Vec<Box<dyn AsyncCopyOps>>,
    /// The functions, each its own container and IOMMU table.
    pub functions: Vec<Arc<VfioPci>>,
}

impl DeviceChannels {
    /// One mapper programming the IOMMUs of the functions `which` (indexes of
    /// `functions`): what a socket whose queues use those channels gives its driver, and
    /// (all of them) what the pool is mapped through.
    pub fn mapper(&self, which: Range<usize>) -> Arc<dyn DmaMapper> {
        let members = self.functions[which]
            .iter()
            .map(|f| Arc::clone(f) as Arc<dyn DmaMapper>)
            .collect();
        Arc::new(MapperSet::new(members))
    }

    /// Maps `pool` in every function's IOMMU; on a failure nothing of it stays mapped.
    pub fn map_pool(&self, pool: &PktPool, mode: &DeviceMode) -> Result<PoolMapping, String> {
        PoolMapping::new(pool, self.mapper(0..self.functions.len())).map_err(|e| {
            format!(
                "{}: mapping the mbuf pool in the IOMMU: {}; VFIO pins what it maps: raise \
                 RLIMIT_MEMLOCK (ulimit -l) or run as root",
                mode.name(),
                what(&e)
            )
        })
    }
}

/// An error's text without the PCI address a VFIO error starts with (the caller's message
/// names the function).
fn what(e: &DmaError) -> String {
    match e {
        DmaError::Vfio { what, .. } => what.clone(),
        other => other.to_string(),
    }
}

/// Opens every function of `mode` through VFIO (sysfs at `sysfs`, the VFIO nodes in
/// `dev_vfio`: `/sys` and `/dev/vfio` but in tests) and builds a channel of `ring` jobs over
/// each. An error names the function, what failed and what to do; everything opened before
/// it is closed again, nothing stays mapped.
pub fn device_channels(
    mode: &DeviceMode,
    ring: u16,
    sysfs: &Path,
    dev_vfio: &Path,
) -> Result<DeviceChannels, String> {
    let mut out = DeviceChannels {
        channels: Vec::with_capacity(mode.bdfs.len()),
        functions: Vec::with_capacity(mode.bdfs.len()),
    };
    let kind = mode.kind.device_name();
    for bdf in mode.bdfs {
        let fail = |step: &str, e: &DmaError, todo: &str| {
            format!("{kind}:{bdf}: {step}: {}{todo}", what(e))
        };
        let function = VfioPci::open_at(sysfs, dev_vfio, bdf)
            .map(Arc::new)
            .map_err(|e| {
                fail(
                    "opening it through VFIO",
                    &e,
                    "; `rvhost dma list` shows its state",
                )
            })?;
        let mapper = Arc::clone(&function) as Arc<dyn DmaMapper>;
        let reset = format!(
            "; if the function was left in use, `scripts/vfio-bind.sh --unbind {bdf}` then \
             `scripts/vfio-bind.sh {bdf}` resets it"
        );
        let channel = match mode.kind {
            ModelKind::Ioat => {
                let bar = function
                    .map_bar(ioat_regs::REGS_BAR)
                    .map_err(|e| fail("mapping its registers (BAR0)", &e, ""))?;
                ioat_channel(bar, ring, mapper)
                    .map(copy_device)
                    .map_err(|e| fail("setting up the IOAT channel", &e, &reset))?
            }
            ModelKind::Dsa => {
                let bar = function
                    .map_bar(dsa_regs::REGS_BAR)
                    .map_err(|e| fail("mapping its registers (BAR0)", &e, ""))?;
                // WQ 0's unlimited portal: the first page of the portal BAR.
                let portal = function
                    .map_portal(dsa_regs::PORTAL_BAR, 0)
                    .map_err(|e| fail("mapping WQ 0's portal (BAR2)", &e, ""))?;
                dsa_channel(bar, portal, ring, mapper)
                    .map(copy_device)
                    .map_err(|e| fail("setting up the DSA device and WQ 0", &e, &reset))?
            }
        };
        out.channels.push(channel);
        out.functions.push(function);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::super::fake_sysfs::FakeSys;
    use super::*;

    /// A fake sysfs and /dev/vfio, removed on drop.
    struct Fake {
        sys: FakeSys,
        dev: PathBuf,
    }

    impl Fake {
        fn new(name: &str) -> Fake {
            let dev = std::env::temp_dir()
                .join(format!("rvhost-dma-device-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dev);
            fs::create_dir_all(&dev).unwrap();
            Fake {
                sys: FakeSys::new(&format!("device-{name}")),
                dev,
            }
        }

        fn sys(&self) -> PathBuf {
            self.sys.0.clone()
        }

        fn dev(&self) -> PathBuf {
            self.dev.clone()
        }

        /// An Intel function bound to vfio-pci in IOMMU group `group`, whose /dev/vfio nodes
        /// exist as plain files (they pass the checks; they are not VFIO's character devices).
        fn vfio_function(&self, bdf: &str, device: u16, group: u32) {
            self.sys
                .function(bdf, 0x8086, device, Some("vfio-pci"), Some(group));
            fs::write(self.dev.join("vfio"), "").unwrap();
            fs::write(self.dev.join(group.to_string()), "").unwrap();
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dev);
        }
    }

    fn mode(kind: ModelKind, bdfs: &[&str]) -> DeviceMode {
        DeviceMode {
            kind,
            bdfs: Vec::leak(bdfs.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn opening_a_function_that_only_looks_ready_fails_with_what_to_do() {
        let f = Fake::new("open");
        f.vfio_function("0000:00:04.0", 0x2021, 12);
        f.vfio_function("0000:6a:01.0", 0x0b25, 40);
        for (kind, bdf) in [
            (ModelKind::Ioat, "0000:00:04.0"),
            (ModelKind::Dsa, "0000:6a:01.0"),
        ] {
            let Err(e) = device_channels(&mode(kind, &[bdf]), 64, &f.sys(), &f.dev()) else {
                panic!("opened a fake function");
            };
            assert!(
                e.starts_with(&format!(
                    "{}:{bdf}: opening it through VFIO: ",
                    kind.device_name()
                )) && e.contains("is not a character device, so not a VFIO node")
                    && e.ends_with("`rvhost dma list` shows its state"),
                "{e}"
            );
        }
        // The second function fails: the first is not left open (nothing was, here).
        let Err(e) = device_channels(
            &mode(ModelKind::Ioat, &["0000:00:04.0", "0000:00:04.1"]),
            64,
            &f.sys(),
            &f.dev(),
        ) else {
            panic!("opened a fake function");
        };
        assert!(e.starts_with("ioat:0000:00:04.0: "), "{e}");
        // The functions' checks come first, with their own advice.
        let Err(e) = device_channels(
            &mode(ModelKind::Ioat, &["0000:00:04.7"]),
            64,
            &f.sys(),
            &f.dev(),
        ) else {
            panic!("opened a missing function");
        };
        assert!(e.contains("no such PCI device"), "{e}");
    }

    #[test]
    fn the_function_count_is_one_per_channel() {
        let m = mode(ModelKind::Dsa, &["0000:6a:01.0"]);
        assert_eq!(m.name(), "dsa:0000:6a:01.0");
        assert!(m.check_count(1, "x").is_ok());
        let e = m.check_count(2, "one per direction").unwrap_err();
        assert!(
            e.contains("2 function(s) needed, one channel each (one per direction), 1 given")
                && e.contains("dsa:BDF+BDF"),
            "{e}"
        );
    }
}
