//! Pinned poll-mode worker threads ("lcores", as DPDK calls them).
//!
//! [`Lcores::launch`] starts one thread per entry of a core list, pins it to that core with
//! `core_affinity`, and hands the worker closure an [`Lcore`] context: its [`LcoreId`] (the
//! index into the core list, dense from 0, so it can index per-lcore state such as mempool
//! caches) and a stop flag to poll. [`Lcores::stop`] raises the flag; [`Lcores::join`] waits for
//! every worker and returns their results in lcore order.
//!
//! ```
//! use rvhost::lcore::Lcores;
//! let workers = Lcores::launch(&[0], |lcore| {
//!     let mut spins = 0u64;
//!     while !lcore.should_stop() && spins < 1000 {
//!         spins += 1;
//!     }
//!     lcore.id().index()
//! })
//! .unwrap();
//! workers.stop();
//! assert_eq!(workers.join().unwrap(), vec![0]);
//! ```

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use thiserror::Error;

/// Dense id of a worker: its position in the core list given to [`Lcores::launch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LcoreId(u32);

impl LcoreId {
    /// The id as an index into per-lcore state.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

thread_local! {
    static CURRENT: Cell<Option<LcoreId>> = const { Cell::new(None) };
}

/// The lcore id of the calling thread, or `None` if it is not an rvhost worker.
pub fn current() -> Option<LcoreId> {
    CURRENT.with(Cell::get)
}

/// Errors from launching or joining workers.
#[derive(Debug, Error)]
pub enum LcoreError {
    /// The core list was empty.
    #[error("no cores given to launch workers on")]
    NoCores,
    /// A core is not one this process may run on.
    #[error("core {core} is not available to this process (allowed: {allowed:?})")]
    CoreUnavailable {
        /// The requested core.
        core: usize,
        /// The cores the process may use.
        allowed: Vec<usize>,
    },
    /// The OS refused to start a thread.
    #[error("could not spawn the worker for lcore {lcore} on core {core}")]
    Spawn {
        /// Worker id.
        lcore: usize,
        /// Core it was meant for.
        core: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Pinning the thread to its core failed.
    #[error("could not pin lcore {lcore} to core {core}")]
    Pin {
        /// Worker id.
        lcore: usize,
        /// Core it was meant for.
        core: usize,
    },
    /// A worker panicked.
    #[error("lcore {lcore} (core {core}) panicked: {message}")]
    Panicked {
        /// Worker id.
        lcore: usize,
        /// Core it ran on.
        core: usize,
        /// The panic payload, if it was a string.
        message: String,
    },
    /// A core list did not parse.
    #[error("bad core list {list:?}: {reason}")]
    BadCoreList {
        /// The text given.
        list: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a worker closure receives: who it is and when to stop.
#[derive(Debug, Clone)]
pub struct Lcore {
    id: LcoreId,
    core: usize,
    stop: Arc<AtomicBool>,
}

impl Lcore {
    /// This worker's dense id.
    pub fn id(&self) -> LcoreId {
        self.id
    }

    /// The CPU this worker is pinned to.
    pub fn core(&self) -> usize {
        self.core
    }

    /// True once [`Lcores::stop`] was called. Cheap enough to poll once per burst.
    #[inline]
    pub fn should_stop(&self) -> bool {
        // Relaxed: the flag carries no data; a worker seeing it one burst late is harmless.
        self.stop.load(Ordering::Relaxed)
    }
}

/// A set of running pinned workers, each returning an `R`.
#[derive(Debug)]
pub struct Lcores<R> {
    workers: Vec<(usize, JoinHandle<Result<R, LcoreError>>)>,
    stop: Arc<AtomicBool>,
}

impl<R: Send + 'static> Lcores<R> {
    /// Starts one worker per entry of `cores` (lcore `i` on `cores[i]`), each running `f`.
    ///
    /// Every core is checked against the cores this process may use before any thread
    /// starts. A worker that cannot be pinned returns [`LcoreError::Pin`] from [`join`](Self::join)
    /// without running `f`.
    pub fn launch<F>(cores: &[usize], f: F) -> Result<Self, LcoreError>
    where
        F: Fn(Lcore) -> R + Send + Sync + 'static,
    {
        if cores.is_empty() {
            return Err(LcoreError::NoCores);
        }
        let allowed = allowed_cores();
        if let Some(&core) = cores.iter().find(|c| !allowed.contains(c)) {
            return Err(LcoreError::CoreUnavailable { core, allowed });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let f = Arc::new(f);
        let mut launched = Lcores {
            workers: Vec::with_capacity(cores.len()),
            stop,
        };
        for (index, &core) in cores.iter().enumerate() {
            let lcore = Lcore {
                id: LcoreId(index as u32),
                core,
                stop: Arc::clone(&launched.stop),
            };
            let f = Arc::clone(&f);
            let spawned = std::thread::Builder::new()
                .name(format!("rvhost-lcore{index}"))
                .spawn(move || run_pinned(lcore, &*f));
            match spawned {
                Ok(handle) => launched.workers.push((core, handle)),
                Err(source) => {
                    // Stop and reap what already runs, then report.
                    launched.stop();
                    let _ = launched.join();
                    return Err(LcoreError::Spawn {
                        lcore: index,
                        core,
                        source,
                    });
                }
            }
        }
        Ok(launched)
    }

    /// Asks every worker to stop (they see it at their next [`Lcore::should_stop`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A clone of the stop flag, e.g. for a signal handler thread.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// True if there are no workers (never, after a successful launch).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Waits for every worker; returns their results in lcore order, or the first error.
    pub fn join(self) -> Result<Vec<R>, LcoreError> {
        let mut results = Vec::with_capacity(self.workers.len());
        let mut first_err = None;
        for (lcore, (core, handle)) in self.workers.into_iter().enumerate() {
            match handle.join() {
                Ok(Ok(r)) => results.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".into());
                    first_err.get_or_insert(LcoreError::Panicked {
                        lcore,
                        core,
                        message,
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }
}

fn run_pinned<R>(lcore: Lcore, f: &(dyn Fn(Lcore) -> R + Send + Sync)) -> Result<R, LcoreError> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: lcore.core }) {
        return Err(LcoreError::Pin {
            lcore: lcore.id.index(),
            core: lcore.core,
        });
    }
    CURRENT.with(|c| c.set(Some(lcore.id)));
    Ok(f(lcore))
}

/// The CPUs this process may run on (its affinity), in ascending order; empty if they
/// cannot be read. Pinning to any other CPU fails (and `core_affinity` panics on one beyond
/// its CPU set), so check against this first.
pub fn allowed_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Parses a core list such as `"0-3,6,8-9"` into `[0, 1, 2, 3, 6, 8, 9]` (order kept,
/// duplicates refused).
pub fn parse_core_list(list: &str) -> Result<Vec<usize>, LcoreError> {
    let bad = |reason| LcoreError::BadCoreList {
        list: list.to_string(),
        reason,
    };
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad("empty entry"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| bad("not a number"))?;
        let hi: usize = hi.parse().map_err(|_| bad("not a number"))?;
        if lo > hi {
            return Err(bad("range runs backwards"));
        }
        if hi - lo >= 4096 || cores.len() + (hi - lo) >= 4096 {
            return Err(bad("more than 4096 cores"));
        }
        for c in lo..=hi {
            if cores.contains(&c) {
                return Err(bad("core listed twice"));
            }
            cores.push(c);
        }
    }
    Ok(cores)
}

/// The poll loop's clock: the TSC on x86_64 (constant-rate on every CPU a poll-mode backend
/// runs on: `constant_tsc` / `nonstop_tsc`), nanoseconds since the first call elsewhere. Cheap
/// enough for a data path to read once per burst; its rate is not known without calibration.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn ticks() -> u64 {
    // SAFETY: RDTSC has no preconditions and touches no memory; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The poll loop's clock: nanoseconds since the first call in this process.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn ticks() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn affinity_of_current_thread() -> Vec<usize> {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    }

    #[test]
    fn workers_are_pinned_and_numbered() {
        let cores = allowed_cores();
        let workers = Lcores::launch(&cores, |lcore| {
            (
                lcore.id().index(),
                lcore.core(),
                current(),
                affinity_of_current_thread(),
            )
        })
        .unwrap();
        let results = workers.join().unwrap();
        assert_eq!(results.len(), cores.len());
        for (i, (index, core, cur, affinity)) in results.into_iter().enumerate() {
            assert_eq!(index, i);
            assert_eq!(core, cores[i]);
            assert_eq!(cur, Some(LcoreId(i as u32)));
            assert_eq!(
                affinity,
                vec![cores[i]],
                "lcore {i} must run on core {core} only"
            );
        }
        assert_eq!(current(), None, "the launching thread is not an lcore");
    }

    #[test]
    fn stop_reaches_every_worker() {
        let spins = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&spins);
        let workers = Lcores::launch(&[0, 0], move |lcore| {
            while !lcore.should_stop() {
                s.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
            lcore.id().index()
        })
        .unwrap();
        while spins.load(Ordering::Relaxed) < 10 {
            std::thread::yield_now();
        }
        workers.stop();
        assert_eq!(workers.join().unwrap(), vec![0, 1]);
    }

    #[test]
    fn unavailable_core_is_refused_before_starting() {
        match Lcores::launch(&[0, 100_000], |_| ()) {
            Err(LcoreError::CoreUnavailable { core: 100_000, .. }) => {}
            other => panic!("expected CoreUnavailable, got {other:?}"),
        }
        assert!(matches!(
            Lcores::launch(&[], |_| ()),
            Err(LcoreError::NoCores)
        ));
    }

    #[test]
    fn a_panicking_worker_is_reported() {
        let workers = Lcores::launch(&[0], |lcore| {
            if lcore.id().index() == 0 {
                panic!("boom");
            }
        })
        .unwrap();
        match workers.join() {
            Err(LcoreError::Panicked {
                lcore: 0, message, ..
            }) => assert_eq!(message, "boom"),
            other => panic!("expected Panicked, got {other:?}"),
        }
    }

    #[test]
    fn core_lists_parse() {
        assert_eq!(
            parse_core_list("0-3,6,8-9").unwrap(),
            vec![0, 1, 2, 3, 6, 8, 9]
        );
        assert_eq!(parse_core_list("1").unwrap(), vec![1]);
        assert_eq!(parse_core_list(" 2 , 0 ").unwrap(), vec![2, 0]);
        for bad in ["", "a", "3-1", "1,,2", "1,1", "0-100000", "-1", "1-"] {
            assert!(parse_core_list(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
