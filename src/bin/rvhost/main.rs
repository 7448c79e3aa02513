//! The `rvhost` command line. Each subcommand lives in its own module beside this file.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod c2c;
mod dma;
mod frame;
mod fwd;

/// rvhost: a vhost-user backend (virtio-net over shared memory, poll-mode lcores).
#[derive(Debug, Parser)]
#[command(name = "rvhost", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forward packets between vhost-user ports, as DPDK testpmd does (io, macswap, rxonly,
    /// txonly, icmpecho).
    Fwd(fwd::Args),
    /// Measure the data path in one process: the backend on one pinned core, the Rust
    /// frontend (acting as the guest) on another; g2h, h2g and loopback, per packet size.
    Bench(bench::BenchArgs),
    /// Measure the one-way cache-line transfer latency between two CPUs (a ping-pong of one
    /// line between two pinned threads): the figure that moves shared-ring benchmarks.
    C2c(c2c::Args),
    /// Copy engine devices: `rvhost dma list` shows the IOAT and DSA PCI functions, their
    /// driver and IOMMU group.
    Dma(dma::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The benchmark prints a table: connection chatter would interleave with it.
    let level = match cli.command {
        Command::Bench(_) | Command::C2c(_) | Command::Dma(_) => "warn",
        Command::Fwd(_) => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Fwd(args) => fwd::run(args).map_err(Box::<dyn std::error::Error>::from),
        Command::Bench(args) => bench::run(&args).map_err(Box::<dyn std::error::Error>::from),
        Command::C2c(args) => c2c::run(&args).map_err(Box::<dyn std::error::Error>::from),
        Command::Dma(args) => dma::run(&args).map_err(Box::<dyn std::error::Error>::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("rvhost: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
