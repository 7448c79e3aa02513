//! Failure injection: which jobs an engine fails on purpose, so that the error paths of its
//! users can be tested.

use std::num::NonZeroU32;

use crate::Status;

/// Which jobs of a channel fail on purpose. A failed job copies nothing and finishes with the
/// given [`Status`]; it is reported like a hardware failure (see
/// [`DmaEngine::completed`](crate::DmaEngine::completed)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailPolicy {
    /// No job fails.
    #[default]
    Never,
    /// The job whose ring index is `idx` fails (again each time the 16-bit index comes round).
    Index {
        /// Ring index to fail.
        idx: u16,
        /// Status it finishes with.
        status: Status,
    },
    /// The `n`-th, `2n`-th, ... job run since the policy was set fails.
    EveryNth {
        /// Period.
        n: NonZeroU32,
        /// Status they finish with.
        status: Status,
    },
}

const MODE_NEVER: u64 = 0;
const MODE_INDEX: u64 = 1;
const MODE_NTH: u64 = 2;

impl FailPolicy {
    /// Packs the policy into one word (mode in bits 0..8, status code in 8..24, value in
    /// 32..64), so that it can be changed through an atomic while a device runs.
    pub(crate) fn encode(self) -> u64 {
        let (mode, status, value) = match self {
            FailPolicy::Never => (MODE_NEVER, 0, 0),
            FailPolicy::Index { idx, status } => (MODE_INDEX, status.code(), u64::from(idx)),
            FailPolicy::EveryNth { n, status } => (MODE_NTH, status.code(), u64::from(n.get())),
        };
        mode | u64::from(status) << 8 | value << 32
    }

    /// Inverse of [`FailPolicy::encode`].
    pub(crate) fn decode(word: u64) -> FailPolicy {
        let status = Status::from_code((word >> 8) as u16);
        let value = (word >> 32) as u32;
        match (word & 0xff, NonZeroU32::new(value)) {
            (MODE_INDEX, _) => FailPolicy::Index {
                idx: value as u16,
                status,
            },
            (MODE_NTH, Some(n)) => FailPolicy::EveryNth { n, status },
            _ => FailPolicy::Never,
        }
    }
}

/// The engine side of a [`FailPolicy`]: decides, job by job in the order they run, which fail.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    policy: FailPolicy,
    /// Jobs run since `policy` was set (for [`FailPolicy::EveryNth`]).
    count: u64,
}

impl FaultState {
    pub(crate) fn new(policy: FailPolicy) -> Self {
        FaultState { policy, count: 0 }
    }

    /// Installs `policy`; a changed policy restarts the `EveryNth` count.
    #[inline]
    pub(crate) fn set(&mut self, policy: FailPolicy) {
        if policy != self.policy {
            self.policy = policy;
            self.count = 0;
        }
    }

    /// Called once per job, in the order jobs run: the status the job must fail with, if any.
    #[inline]
    pub(crate) fn check(&mut self, idx: u16) -> Option<Status> {
        match self.policy {
            FailPolicy::Never => None,
            FailPolicy::Index { idx: bad, status } => (idx == bad).then_some(status),
            FailPolicy::EveryNth { n, status } => {
                self.count += 1;
                (self.count % u64::from(n.get()) == 0).then_some(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips() {
        let n = NonZeroU32::new(70_000).unwrap();
        for p in [
            FailPolicy::Never,
            FailPolicy::Index {
                idx: 65535,
                status: Status::PageFault,
            },
            FailPolicy::EveryNth {
                n,
                status: Status::ErrorUnknown,
            },
        ] {
            assert_eq!(FailPolicy::decode(p.encode()), p);
        }
    }

    #[test]
    fn every_nth_counts_from_set() {
        let status = Status::BusReadError;
        let n = NonZeroU32::new(3).unwrap();
        let mut f = FaultState::new(FailPolicy::EveryNth { n, status });
        let hits: Vec<u16> = (0..9).filter(|&i| f.check(i).is_some()).collect();
        assert_eq!(hits, [2, 5, 8]);
        f.check(9);
        f.set(FailPolicy::EveryNth { n, status });
        assert_eq!(
            f.check(10),
            None,
            "same policy: count goes on (11th job, not a multiple)"
        );
        let m = NonZeroU32::new(2).unwrap();
        f.set(FailPolicy::EveryNth { n: m, status });
        assert_eq!((f.check(11), f.check(12)), (None, Some(status)));
    }
}
