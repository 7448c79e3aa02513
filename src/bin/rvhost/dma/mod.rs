//! `rvhost dma`: the copy engines' devices. [`list`] finds the IOAT and DSA functions in
//! sysfs (`rvhost dma list`); [`models`] builds channels over the IOAT and DSA models for
//! `--copy ioat-model|dsa-model`.

use std::path::PathBuf;

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
