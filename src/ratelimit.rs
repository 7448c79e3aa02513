//! Rate limits for log lines a peer can trigger.
//!
//! A guest that posts malformed chains in a loop, or a frontend that repeats a refused
//! request, must not fill the log: the first occurrence is logged, then at most one line per
//! [`LogLimiter::PERIOD`], which says how many occurrences it stands for. Counters (e.g.
//! [`VringStats`](crate::driver::VringStats)) carry every occurrence.
//!
//! ```
//! use rvhost::ratelimit::LogLimiter;
//!
//! let mut limit = LogLimiter::new();
//! let mut lines = 0;
//! for chain in 0..100_000 {
//!     if let Some(more) = limit.check() {
//!         // `more` occurrences since the last line were not logged
//!         lines += 1;
//!         let _ = (chain, more);
//!     }
//! }
//! assert_eq!(lines, 1, "one line for a burst of occurrences within a second");
//! ```

use std::time::{Duration, Instant};

/// The first occurrence, then at most one per [`PERIOD`](Self::PERIOD). Plain data owned by
/// whoever logs (e.g. a vring, under its lock); checking costs a clock read, so it belongs on
/// a path that is already cold.
#[derive(Debug, Default, Clone)]
pub struct LogLimiter {
    /// When the next line may be logged; `None` before the first.
    next: Option<Instant>,
    /// Occurrences not logged since the last line.
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per this period.
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// A limiter that lets the next occurrence through.
    pub const fn new() -> Self {
        LogLimiter {
            next: None,
            suppressed: 0,
        }
    }

    /// An occurrence: `Some(n)` if it is to be logged now, `n` being how many were left
    /// unlogged since the last line (say so in the line when it is not 0); `None` if it is
    /// only counted.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + Self::PERIOD);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_one_per_period_with_the_count() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        for i in 1..1000u64 {
            assert_eq!(l.check_at(t0 + Duration::from_micros(i)), None);
        }
        let t1 = t0 + LogLimiter::PERIOD;
        assert_eq!(l.check_at(t1), Some(999));
        assert_eq!(l.check_at(t1), None);
        assert_eq!(l.check_at(t1 + LogLimiter::PERIOD * 3), Some(1));
    }
}
