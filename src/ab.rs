//! A switch for measuring a change to the data path inside one run (a developer's tool).
//!
//! These machines are shared: two runs a few seconds apart differ by 10-40% in loopback rows,
//! so an A/B of two builds run one after the other needs many pairs to see a 5% effect. Here
//! one build carries both variants: the code under test asks [`on`] with its bit, and
//! `rvhost fwd --ab MASK` turns the bits of `MASK` on and off at every statistics period,
//! tagging each period's lines `AB A` (off) or `AB B` (on). Neighbouring periods see the
//! same host, so the ratio of each B period to the A periods around it measures the change
//! (`scripts/ab-inprocess.sh` runs it against DPDK's testpmd frontend and prints that
//! ratio). Both variants do the same work to ask: one relaxed load and a test.
//!
//! Nothing on main asks for a bit: wire [`on`] into the code being measured, measure, and
//! keep only the winning variant.

use std::sync::atomic::{AtomicU32, Ordering};

/// The bits on now (0: variant A).
static ACTIVE: AtomicU32 = AtomicU32::new(0);

/// Whether the experiment with bit `bit` runs now (variant B of an A/B run that selected it).
#[inline(always)]
pub fn on(bit: u32) -> bool {
    ACTIVE.load(Ordering::Relaxed) & bit != 0
}

/// Turns on exactly the experiments in `bits` (0: variant A).
pub fn set(bits: u32) {
    ACTIVE.store(bits, Ordering::Relaxed);
}

/// The experiments on now.
pub fn active() -> u32 {
    ACTIVE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_turns_on_exactly_the_bits_given() {
        set(0b101);
        assert!(on(0b001) && on(0b100) && !on(0b010));
        assert_eq!(active(), 0b101);
        set(0);
        assert!(!on(0b001) && !on(0b100));
        assert_eq!(active(), 0);
    }
}
