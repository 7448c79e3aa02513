//! `rvhost c2c`: the one-way cache-line transfer latency between two CPUs.
//!
//! Two threads, pinned to the two CPUs, bounce one cache line: the first writes an odd number
//! and spins until the second has answered with the next even one, and so on. A round trip
//! moves the line twice, so the one-way latency is half of it. On a shared VM this figure is
//! what moves from day to day (the host places the vCPUs on sibling threads, on one socket or
//! across sockets), and with it every number of a benchmark whose two sides talk through shared
//! rings; `scripts/bench-vs-dpdk.sh` prints it before and after each run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use rvhost::lcore::allowed_cores;
use thiserror::Error;

/// Options of `rvhost c2c`.
#[derive(Debug, Parser)]
pub struct Args {
    /// The two CPUs, e.g. `0,1`.
    #[arg(long, value_name = "A,B", default_value = "0,1", value_parser = parse_pair)]
    pub cpus: (usize, usize),
    /// Round trips per batch.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub rounds: u64,
    /// Batches; the figure is their median.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub batches: usize,
    /// Print only the median one-way latency in nanoseconds (for scripts).
    #[arg(long)]
    pub quiet: bool,
}

fn parse_pair(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once(',').ok_or("give two CPUs, e.g. 0,1")?;
    let cpu = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{v}: not a CPU number"))
    };
    match (cpu(a)?, cpu(b)?) {
        (a, b) if a == b => Err("the two CPUs must differ".into()),
        pair => Ok(pair),
    }
}

/// Why `rvhost c2c` failed.
#[derive(Debug, Error)]
pub enum C2cError {
    /// A CPU this process may not run on.
    #[error("cannot pin a thread to CPU {0}")]
    Pin(usize),
    /// The other side did not answer in time (its CPU busy with something else?).
    #[error("CPU {0} did not answer within {1:?} (is it busy?)")]
    Timeout(usize, Duration),
    /// `--rounds` or `--batches` is zero.
    #[error("--rounds and --batches must be at least 1")]
    Empty,
}

/// Written to the line by the pinging side when it gives up, to release the echo thread.
const FAILED: u64 = u64::MAX;
/// The echo thread's start-up states.
const STARTING: u8 = 0;
const READY: u8 = 1;
const PIN_FAILED: u8 = 2;

/// Longest a batch may take before the probe gives up.
const BATCH_LIMIT: Duration = Duration::from_secs(2);

/// The line both threads write, alone in its 128 bytes (adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct Line(AtomicU64);

fn pin(cpu: usize) -> Result<(), C2cError> {
    if allowed_cores().contains(&cpu)
        && core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
    {
        Ok(())
    } else {
        Err(C2cError::Pin(cpu))
    }
}

/// One-way latency of each batch, in nanoseconds, in the order measured.
pub fn measure(a: usize, b: usize, rounds: u64, batches: usize) -> Result<Vec<f64>, C2cError> {
    if rounds == 0 || batches == 0 {
        return Err(C2cError::Empty);
    }
    let line = Arc::new(Line(AtomicU64::new(0)));
    // The echo thread says here whether it could pin itself, before the ping-pong starts (on
    // the line itself its word could be overwritten by the first ping).
    let ready = Arc::new(AtomicU8::new(STARTING));
    let total = rounds * batches as u64;
    let echo = {
        let (line, ready) = (Arc::clone(&line), Arc::clone(&ready));
        thread::Builder::new()
            .name("rvhost-c2c".into())
            .spawn(move || -> Result<(), C2cError> {
                if let Err(e) = pin(b) {
                    ready.store(PIN_FAILED, Ordering::Release);
                    return Err(e);
                }
                ready.store(READY, Ordering::Release);
                for i in 0..total {
                    loop {
                        match line.0.load(Ordering::Acquire) {
                            v if v == 2 * i + 1 => break,
                            // The pinger gave up.
                            FAILED => return Ok(()),
                            _ => std::hint::spin_loop(),
                        }
                    }
                    line.0.store(2 * i + 2, Ordering::Release);
                }
                Ok(())
            })
            .expect("spawn the c2c echo thread")
    };
    let ping = || -> Result<Vec<f64>, C2cError> {
        pin(a)?;
        let t = Instant::now();
        loop {
            match ready.load(Ordering::Acquire) {
                READY => break,
                PIN_FAILED => return Err(C2cError::Pin(b)),
                _ if t.elapsed() > BATCH_LIMIT => {
                    return Err(C2cError::Timeout(b, BATCH_LIMIT));
                }
                _ => std::hint::spin_loop(),
            }
        }
        let mut out = Vec::with_capacity(batches);
        for batch in 0..batches as u64 {
            let t = Instant::now();
            for i in batch * rounds..(batch + 1) * rounds {
                line.0.store(2 * i + 1, Ordering::Release);
                let mut spins = 0u32;
                loop {
                    match line.0.load(Ordering::Acquire) {
                        v if v == 2 * i + 2 => break,
                        _ => std::hint::spin_loop(),
                    }
                    spins = spins.wrapping_add(1);
                    if spins & 0xffff == 0 && t.elapsed() > BATCH_LIMIT {
                        return Err(C2cError::Timeout(b, BATCH_LIMIT));
                    }
                }
            }
            out.push(t.elapsed().as_nanos() as f64 / (2 * rounds) as f64);
        }
        Ok(out)
    };
    let result = ping();
    if result.is_err() {
        // Release the echo thread if it waits for a number that will not come.
        line.0.store(FAILED, Ordering::Release);
    }
    let echoed = echo.join().unwrap_or(Ok(()));
    let out = result?;
    echoed?;
    Ok(out)
}

/// Median of a non-empty list.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn run(args: &Args) -> Result<(), C2cError> {
    let (a, b) = args.cpus;
    let ns = measure(a, b, args.rounds, args.batches)?;
    let med = median(&ns);
    if args.quiet {
        println!("{med:.0}");
    } else {
        let min = ns.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ns.iter().copied().fold(0.0, f64::max);
        println!(
            "c2c cpus={a},{b} one_way_ns={med:.0} (median of {} batches of {} round trips; \
             min {min:.0}, max {max:.0})",
            ns.len(),
            args.rounds
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_is_two_different_cpus() {
        assert_eq!(parse_pair("0,1"), Ok((0, 1)));
        assert_eq!(parse_pair(" 3 , 2"), Ok((3, 2)));
        assert!(parse_pair("1,1").is_err());
        assert!(parse_pair("1").is_err());
        assert!(parse_pair("a,1").is_err());
    }

    #[test]
    fn a_round_trip_between_two_cpus_takes_a_plausible_time() {
        let cpus = allowed_cores();
        let [a, b, ..] = cpus[..] else {
            return rvhost::test_support::skip(format!("one CPU allowed ({cpus:?})"));
        };
        // Few round trips: other tests may share these CPUs, and then every round trip can
        // wait for a scheduler slice.
        let ns = measure(a, b, 100, 3).expect("probe");
        assert_eq!(ns.len(), 3);
        // Slower than a store to one's own cache; faster than 10 ms even when the CPUs are
        // time-sliced with other threads.
        assert!(ns.iter().all(|&v| v > 1.0 && v < 1e7), "{ns:?}");
    }

    #[test]
    fn a_cpu_that_does_not_exist_is_an_error() {
        assert!(matches!(measure(0, 4096, 10, 1), Err(C2cError::Pin(4096))));
        assert!(matches!(measure(0, 1, 0, 1), Err(C2cError::Empty)));
    }

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
