//! Copy devices for the async-path tests: the CPU engine, or the software engine on a thread
//! of its own, through the `DmaCopy` adapter.

use rvhost::net::{AsyncCopyOps, DmaCopy};
use rvhost_dma::soft::{Idle, LaneConfig, SoftConfig, SoftWorker, WorkerConfig};
use rvhost_dma::{ChannelConfig, CpuEngine, FailPolicy, SoftDevice};

/// The CPU engine when `lanes` is 0, else a software engine with `lanes` lanes (the first
/// throttled to `slow` bytes/s when that is not 0, so the others overtake it), failing jobs as
/// `fail` says; with the thread serving the software engine, which must outlive the channel.
pub fn copy_device(
    lanes: usize,
    slow: u64,
    fail: FailPolicy,
) -> (Box<dyn AsyncCopyOps>, Option<SoftWorker>) {
    let mut ch = ChannelConfig::new(1024);
    ch.fail = fail;
    if lanes == 0 {
        return (Box::new(DmaCopy::new(CpuEngine::new(&ch).unwrap())), None);
    }
    let mut cfg = SoftConfig::with_lanes(lanes);
    if slow > 0 {
        cfg.lanes[0] = LaneConfig::throttled(slow);
    }
    // Small chunks interleave the lanes finely, so that they finish out of order.
    cfg.chunk = 512;
    let (dev, mut engines) = SoftDevice::new(&cfg, &[ch]).unwrap();
    let worker = dev
        .spawn(WorkerConfig {
            idle: Idle::Yield,
            ..WorkerConfig::default()
        })
        .unwrap();
    (Box::new(DmaCopy::new(engines.remove(0))), Some(worker))
}
