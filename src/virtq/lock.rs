//! The per-vring lock: a spin try-lock the data plane takes once per burst.
//!
//! `std::sync::Mutex` would do, but its unlock is an atomic exchange: a full barrier that waits
//! at the end of every burst for the burst's stores to guest memory (cache lines the other
//! core owns) to complete. Here unlocking is a plain `Release` store, as DPDK's
//! `rte_spinlock_unlock`; taking it is one compare-exchange. The data plane only ever
//! `try_lock`s (it skips the burst when the control thread holds the vring); the control
//! thread spins, which is bounded by one burst.

use std::cell::UnsafeCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use super::Vring;
use super::stats::{Published, VringStats};

/// A [`Vring`] behind a spin try-lock, and its counters as of the last unlock (readable
/// without the lock, see [`stats`](super::stats)).
#[derive(Default)]
pub struct VringLock {
    locked: AtomicBool,
    /// A transmit vring's last dequeue burst left chains the guest had made available: the
    /// guest sends faster than it is served. Beside the lock word, whose line the lcore that
    /// polls the vring owns; readable without the lock (see [`backlog`](Self::backlog)).
    backlog: AtomicBool,
    vring: UnsafeCell<Vring>,
    published: Published,
}

// SAFETY: the Vring inside is only reached through a VringGuard, and at most one guard exists
// at a time (the compare-exchange in try_lock), so sharing &VringLock between threads hands the
// Vring to one thread at a time; Vring itself is Send (fds, Arcs and plain data).
unsafe impl Sync for VringLock {}

impl VringLock {
    /// Takes the lock if it is free (the data plane, once per burst); a failure is counted
    /// (`lock_busy`).
    #[inline]
    pub fn try_lock(&self) -> Option<VringGuard<'_>> {
        let g = self.try_acquire();
        if g.is_none() {
            self.published.count_lock_busy();
        }
        g
    }

    #[inline]
    fn try_acquire(&self) -> Option<VringGuard<'_>> {
        // Acquire: pairs with the Release store of the previous holder's unlock, so its
        // writes to the Vring are visible to us.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| VringGuard { lock: self })
    }

    /// Whether the last dequeue burst on this (transmit) vring left chains behind: the enqueue
    /// on the same queue pair's receive vring batches its used entries then rather than
    /// publishing some early (see `enqueue_burst`). A hint: `Relaxed`, stale by at most a
    /// burst.
    #[inline]
    pub fn backlog(&self) -> bool {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Records what the dequeue burst that just ended left behind (a store only when it
    /// changed, so a steady state leaves the line alone).
    #[inline]
    pub fn set_backlog(&self, left: bool) {
        if self.backlog.load(Ordering::Relaxed) != left {
            self.backlog.store(left, Ordering::Relaxed);
        }
    }

    /// The counters and state as of the last unlock, without taking the lock.
    pub fn stats(&self) -> VringStats {
        self.published.get()
    }

    /// Zeroes the counters (waits for a burst in progress, as [`lock`](Self::lock)).
    pub fn reset_stats(&self) {
        let mut g = self.lock();
        g.stats = super::QueueStats::default();
        self.published.reset_lock_busy();
        drop(g); // publishes the zeroes
    }

    /// Takes the lock, spinning while a burst holds it (the control thread). Copies in
    /// flight stay in flight: the control thread quiesces the vrings a request changes before
    /// its handler runs (`DeviceState::quiesce`), and the [`Vring`] setters that change rings
    /// or memory drain what is still in flight (and say so) as a last line.
    pub fn lock(&self) -> VringGuard<'_> {
        let mut spins = 0u32;
        loop {
            if let Some(g) = self.try_acquire() {
                return g;
            }
            // Read-only spin until it looks free, so the cache line is not bounced.
            while self.locked.load(Ordering::Relaxed) {
                spins = spins.wrapping_add(1);
                if spins % 1024 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

impl fmt::Debug for VringLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VringLock")
            .field("locked", &self.locked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Exclusive access to a [`Vring`]; unlocks on drop.
pub struct VringGuard<'a> {
    lock: &'a VringLock,
}

impl Deref for VringGuard<'_> {
    type Target = Vring;
    #[inline]
    fn deref(&self) -> &Vring {
        // SAFETY: this guard is the only one (try_lock's compare-exchange), so no other
        // reference to the Vring exists while it lives.
        unsafe { &*self.lock.vring.get() }
    }
}

impl DerefMut for VringGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Vring {
        // SAFETY: as in deref, and &mut self makes this the only borrow of the guard.
        unsafe { &mut *self.lock.vring.get() }
    }
}

impl Drop for VringGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // The counters for lock-free readers, while we still hold the Vring.
        // SAFETY: this guard is the only one, and `self` is being dropped: no other
        // reference to the Vring exists.
        self.lock
            .published
            .publish(unsafe { &*self.lock.vring.get() });
        // Release: publishes our writes to the Vring to the next holder's Acquire.
        self.lock.locked.store(false, Ordering::Release);
    }
}

impl fmt::Debug for VringGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_holder_at_a_time() {
        let l = VringLock::default();
        let g = l.try_lock().unwrap();
        assert!(l.try_lock().is_none());
        drop(g);
        let mut g = l.lock();
        g.last_avail_idx = 7;
        drop(g);
        assert_eq!(l.try_lock().unwrap().last_avail_idx, 7);
    }

    #[test]
    fn counts_survive_contention() {
        let l = Arc::new(VringLock::default());
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 20_000 {
                        let g = if t == 0 { Some(l.lock()) } else { l.try_lock() };
                        if let Some(mut g) = g {
                            g.stats.packets += 1;
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.lock().stats.packets, 60_000);
    }
}
