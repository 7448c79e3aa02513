//! The bench's clock: the TSC on x86_64 (cycles), nanoseconds of a monotonic clock elsewhere.

use std::time::{Duration, Instant};

/// A tick counter and how fast it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Ticks per second.
    pub hz: f64,
    /// What a tick is, for column headers: "cyc" (TSC) or "ns".
    pub unit: &'static str,
}

/// How long [`Clock::calibrate`] watches the TSC against the monotonic clock.
const CALIBRATION: Duration = Duration::from_millis(100);

impl Clock {
    /// Measures the tick rate against [`Instant`] over about 100 ms (x86_64), or returns the
    /// nanosecond clock.
    pub fn calibrate() -> Clock {
        if cfg!(target_arch = "x86_64") {
            let (t0, c0) = (Instant::now(), ticks());
            std::thread::sleep(CALIBRATION);
            let (c1, t1) = (ticks(), Instant::now());
            let secs = (t1 - t0).as_secs_f64();
            Clock {
                hz: c1.wrapping_sub(c0) as f64 / secs,
                unit: "cyc",
            }
        } else {
            Clock {
                hz: 1e9,
                unit: "ns",
            }
        }
    }

    /// Seconds in `ticks` ticks.
    pub fn secs(&self, ticks: u64) -> f64 {
        ticks as f64 / self.hz
    }
}

pub(crate) use rvhost::lcore::ticks;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_runs_at_a_plausible_rate() {
        let c = Clock::calibrate();
        // From a 100 MHz embedded TSC to a 10 GHz one; ns clock is 1 GHz.
        assert!(c.hz > 1e8 && c.hz < 1e10, "{} Hz", c.hz);
        let (a, b) = (ticks(), ticks());
        assert!(b >= a);
        assert!((c.secs(c.hz as u64) - 1.0).abs() < 1e-6);
    }
}
