//! Per-vring counters an application reads without stopping the data plane
//! (`rte_vhost_vring_stats_get` / `_reset`).
//!
//! The data path keeps its counters in the [`Vring`] it holds locked
//! ([`QueueStats`]); every unlock copies them into a [`Published`] beside
//! the lock with `Relaxed` stores (one cache line the data-plane core already owns), and
//! [`VringStats`] is read from there with `Relaxed` loads, never taking the lock. A value can
//! be one burst old, and two counters of one snapshot can come from neighbouring bursts; each
//! counter only grows (until a reset).
//!
//! Why a burst returned 0, from the counters: `lock_busy` grew (the control thread held the
//! vring: a memory or ring change was under way), `not_ready` grew (not started, disabled, or
//! rings not translated: see `ready` and `enabled`), `broken` is set (the guest corrupted the
//! available ring; only a new ring base clears it), `alloc_failures` grew (no mbufs), or none
//! of them: the guest had nothing for us.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{QueueStats, Vring};

/// A snapshot of one vring's counters and state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VringStats {
    /// The data path's counters (packets, bytes, bad chains, not-ready and broken bursts...).
    pub queue: QueueStats,
    /// Bursts skipped because the control thread held the vring.
    pub lock_busy: u64,
    /// The vring is marked broken (a corrupt available ring); a new base clears it.
    pub broken: bool,
    /// Ready for the data path (rings translated, kick and call set, enabled).
    pub ready: bool,
    /// Enabled by the frontend.
    pub enabled: bool,
}

impl VringStats {
    /// How many values [`values`](Self::values) gives.
    pub const LEN: usize = QueueStats::LEN + 4;

    /// Value names, in the order [`values`](Self::values) gives them (DPDK's
    /// `rte_vhost_vring_stats_get_names`): [`QueueStats::NAMES`], then `lock_busy`, `broken`,
    /// `ready`, `enabled`.
    pub const NAMES: [&'static str; Self::LEN] = {
        let mut names = [""; Self::LEN];
        let mut i = 0;
        while i < QueueStats::LEN {
            names[i] = QueueStats::NAMES[i];
            i += 1;
        }
        names[QueueStats::LEN] = "lock_busy";
        names[QueueStats::LEN + 1] = "broken";
        names[QueueStats::LEN + 2] = "ready";
        names[QueueStats::LEN + 3] = "enabled";
        names
    };

    /// The values, flags as 0 or 1, in the order of [`NAMES`](Self::NAMES).
    pub fn values(&self) -> [u64; Self::LEN] {
        let mut v = [0; Self::LEN];
        v[..QueueStats::LEN].copy_from_slice(&self.queue.to_array());
        v[QueueStats::LEN..].copy_from_slice(&[
            self.lock_busy,
            u64::from(self.broken),
            u64::from(self.ready),
            u64::from(self.enabled),
        ]);
        v
    }

    /// `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        Self::NAMES.into_iter().zip(self.values())
    }
}

/// The published copy of a vring's counters (see the module docs).
#[derive(Debug, Default)]
pub struct Published {
    /// [`QueueStats::to_array`] of the vring as of the last unlock.
    counters: [AtomicU64; QueueStats::LEN],
    /// Counted at the failed try-lock itself (there is no vring to count it in).
    lock_busy: AtomicU64,
    broken: AtomicBool,
    ready: AtomicBool,
    enabled: AtomicBool,
}

impl Published {
    /// Copies `vq`'s counters and state; called by the lock holder as it unlocks, so there
    /// is one writer at a time. `Relaxed`: readers want each value, not an order between them.
    #[inline]
    pub(crate) fn publish(&self, vq: &Vring) {
        let r = Ordering::Relaxed;
        for (to, v) in self.counters.iter().zip(vq.stats.to_array()) {
            to.store(v, r);
        }
        self.broken.store(vq.broken, r);
        self.ready.store(vq.is_ready(), r);
        self.enabled.store(vq.enabled, r);
    }

    /// A try-lock found the vring held.
    #[cold]
    pub(crate) fn count_lock_busy(&self) {
        self.lock_busy.fetch_add(1, Ordering::Relaxed);
    }

    /// The snapshot.
    pub fn get(&self) -> VringStats {
        let r = Ordering::Relaxed;
        VringStats {
            queue: QueueStats::from_array(std::array::from_fn(|i| self.counters[i].load(r))),
            lock_busy: self.lock_busy.load(r),
            broken: self.broken.load(r),
            ready: self.ready.load(r),
            enabled: self.enabled.load(r),
        }
    }

    /// Zeroes the busy count; the vring's own counters are zeroed by the caller, under the
    /// lock, and published as it unlocks.
    pub(crate) fn reset_lock_busy(&self) {
        self.lock_busy.store(0, Ordering::Relaxed);
    }
}

impl QueueStats {
    /// How many counters there are.
    pub const LEN: usize = 9;

    /// The counters' names, in the order of [`to_array`](Self::to_array).
    pub const NAMES: [&'static str; Self::LEN] = [
        "packets",
        "bytes",
        "bad_chains",
        "too_large",
        "alloc_failures",
        "interrupts",
        "not_ready",
        "broken_bursts",
        "breaks",
    ];

    /// The counters in the order of [`NAMES`](Self::NAMES).
    #[inline]
    pub fn to_array(&self) -> [u64; Self::LEN] {
        [
            self.packets,
            self.bytes,
            self.bad_chains,
            self.too_large,
            self.alloc_failures,
            self.interrupts,
            self.not_ready,
            self.broken_bursts,
            self.breaks,
        ]
    }

    /// The inverse of [`to_array`](Self::to_array).
    #[inline]
    pub fn from_array(a: [u64; Self::LEN]) -> QueueStats {
        let [
            packets,
            bytes,
            bad_chains,
            too_large,
            alloc_failures,
            interrupts,
            not_ready,
            broken_bursts,
            breaks,
        ] = a;
        QueueStats {
            packets,
            bytes,
            bad_chains,
            too_large,
            alloc_failures,
            interrupts,
            not_ready,
            broken_bursts,
            breaks,
        }
    }

    /// Adds `o` to `self` (a burst's counters to the queue's).
    #[inline]
    pub fn add(&mut self, o: &QueueStats) {
        let (mut a, b) = (self.to_array(), o.to_array());
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        *self = QueueStats::from_array(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_and_names_line_up() {
        let s = QueueStats::from_array(std::array::from_fn(|i| i as u64 + 1));
        assert_eq!((s.packets, s.bad_chains, s.breaks), (1, 3, 9));
        assert_eq!(QueueStats::from_array(s.to_array()), s);
        let mut t = s;
        t.add(&s);
        assert_eq!(t.to_array(), std::array::from_fn(|i| 2 * (i as u64 + 1)));
        let v = VringStats {
            queue: s,
            lock_busy: 10,
            broken: true,
            ready: false,
            enabled: true,
        };
        let named: Vec<_> = v.iter().collect();
        assert_eq!(named[0], ("packets", 1));
        assert_eq!(named[8], ("breaks", 9));
        assert_eq!(
            &named[9..],
            [
                ("lock_busy", 10),
                ("broken", 1),
                ("ready", 0),
                ("enabled", 1)
            ]
        );
    }
}
