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
    /// Counter names, in the order [`values`](Self::values) gives them (DPDK's
    /// `rte_vhost_vring_stats_get_names`).
    pub const NAMES: [&'static str; 14] = [
        "packets",
        "bytes",
        "bad_chains",
        "too_large",
        "alloc_failures",
        "interrupts",
        "not_ready",
        "broken_bursts",
        "breaks",
        "early_publishes",
        "lock_busy",
        "broken",
        "ready",
        "enabled",
    ];

    /// The values, flags as 0 or 1, in the order of [`NAMES`](Self::NAMES).
    pub fn values(&self) -> [u64; 14] {
        let q = &self.queue;
        [
            q.packets,
            q.bytes,
            q.bad_chains,
            q.too_large,
            q.alloc_failures,
            q.interrupts,
            q.not_ready,
            q.broken_bursts,
            q.breaks,
            q.early_publishes,
            self.lock_busy,
            u64::from(self.broken),
            u64::from(self.ready),
            u64::from(self.enabled),
        ]
    }

    /// `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        Self::NAMES.into_iter().zip(self.values())
    }
}

/// The published copy of a vring's counters (see the module docs).
#[derive(Debug, Default)]
pub struct Published {
    packets: AtomicU64,
    bytes: AtomicU64,
    bad_chains: AtomicU64,
    too_large: AtomicU64,
    alloc_failures: AtomicU64,
    interrupts: AtomicU64,
    not_ready: AtomicU64,
    broken_bursts: AtomicU64,
    breaks: AtomicU64,
    early_publishes: AtomicU64,
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
        let s = &vq.stats;
        let r = Ordering::Relaxed;
        self.packets.store(s.packets, r);
        self.bytes.store(s.bytes, r);
        self.bad_chains.store(s.bad_chains, r);
        self.too_large.store(s.too_large, r);
        self.alloc_failures.store(s.alloc_failures, r);
        self.interrupts.store(s.interrupts, r);
        self.not_ready.store(s.not_ready, r);
        self.broken_bursts.store(s.broken_bursts, r);
        self.breaks.store(s.breaks, r);
        self.early_publishes.store(s.early_publishes, r);
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
            queue: QueueStats {
                packets: self.packets.load(r),
                bytes: self.bytes.load(r),
                bad_chains: self.bad_chains.load(r),
                too_large: self.too_large.load(r),
                alloc_failures: self.alloc_failures.load(r),
                interrupts: self.interrupts.load(r),
                not_ready: self.not_ready.load(r),
                broken_bursts: self.broken_bursts.load(r),
                breaks: self.breaks.load(r),
                early_publishes: self.early_publishes.load(r),
            },
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
    /// Adds `o` to `self` (a burst's counters to the queue's).
    #[inline]
    pub fn add(&mut self, o: &QueueStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.bad_chains += o.bad_chains;
        self.too_large += o.too_large;
        self.alloc_failures += o.alloc_failures;
        self.interrupts += o.interrupts;
        self.not_ready += o.not_ready;
        self.broken_bursts += o.broken_bursts;
        self.breaks += o.breaks;
        self.early_publishes += o.early_publishes;
    }
}
