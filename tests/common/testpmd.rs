//! DPDK testpmd as a test peer: whether it is there, the hugepages it may use, and its final
//! forward statistics.

use std::process::{Command, Stdio};

/// `dpdk-testpmd` runs (Debian: `apt-get install dpdk-dev`).
pub fn installed() -> bool {
    Command::new("dpdk-testpmd")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Free 2 MiB hugepages (testpmd runs with `--no-huge` below 128).
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One port's "Forward statistics" of testpmd.
#[derive(Debug, Clone, Copy, Default)]
pub struct TpStats {
    pub rx: u64,
    pub tx: u64,
    pub tx_dropped: u64,
}

/// The number after `key` in `line` (testpmd's `RX-packets: N`, rvhost's `key=N`).
pub fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()?.parse().ok()
}

/// The last "Forward statistics for port `port`" block testpmd printed.
pub fn forward_stats(lines: &[String], port: usize) -> Option<TpStats> {
    let title = format!("Forward statistics for port {port} ");
    let start = lines.iter().rposition(|l| l.contains(&title))?;
    let rx = lines[start..].iter().find(|l| l.contains("RX-packets:"))?;
    let tx = lines[start..].iter().find(|l| l.contains("TX-packets:"))?;
    Some(TpStats {
        rx: field(rx, "RX-packets:")?,
        tx: field(tx, "TX-packets:")?,
        tx_dropped: field(tx, "TX-dropped:")?,
    })
}
