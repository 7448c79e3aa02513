//! Soft-engine behaviour the CPU engine has no counterpart for: lanes finishing out of order,
//! fences across lanes, throttling, dropping with jobs in flight, serving from one loop.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::*;
use crate::tests::{Buf, Rig};
use crate::{Completed, DmaEngine, OpFlags};

const DEADLINE: Duration = Duration::from_secs(20);

/// A slow lane 0 (1 MB/s, so a 64 KiB job needs at least 16 polls: its bucket holds 4 KiB at
/// most) and two unthrottled lanes; chunks of 64 KiB (a fast lane finishes a job in one poll).
fn slow_and_fast() -> SoftConfig {
    SoftConfig {
        lanes: vec![
            LaneConfig::throttled(1_000_000),
            LaneConfig::default(),
            LaneConfig::default(),
        ],
        chunk: 64 * 1024,
        ..Default::default()
    }
}

fn one(cfg: &SoftConfig, ch: ChannelConfig) -> (SoftDevice, SoftEngine) {
    let (device, mut engines) = SoftDevice::new(cfg, &[ch]).unwrap();
    (device, engines.pop().unwrap())
}

fn poll_until(device: &mut SoftDevice, mut done: impl FnMut(&mut SoftDevice) -> bool) {
    let start = Instant::now();
    while !done(device) {
        assert!(start.elapsed() < DEADLINE, "timed out");
        device.poll();
    }
}

#[test]
fn lanes_finish_out_of_order_and_are_reported_in_order() {
    let (mut device, mut dma) = one(&slow_and_fast(), ChannelConfig::new(32));
    let mut src = Buf::pattern(64 * 1024 + 20 * 1024, 5);
    let mut dst = Buf::filled(64 * 1024 + 20 * 1024, 0);
    // SAFETY: the buffers outlive the jobs, all reported (or the engine dropped) below.
    unsafe {
        dma.copy(src.at(0), dst.at(0), 64 * 1024, OpFlags::NONE)
            .unwrap();
        for i in 0..20 {
            let off = 64 * 1024 + i * 1024;
            dma.copy(src.at(off), dst.at(off), 1024, OpFlags::NONE)
                .unwrap();
        }
    }
    dma.submit().unwrap();
    // The 20 small jobs finish on the fast lanes while job 0 is still on the slow one.
    poll_until(&mut device, |d| {
        let s = d.stats();
        s.lanes[1].jobs + s.lanes[2].jobs == 20
    });
    let s = device.stats();
    assert_eq!(s.lanes[0].jobs, 0, "job 0 cannot be done yet: {s:?}");
    assert_eq!(
        s.lanes[1].out_of_order + s.lanes[2].out_of_order,
        20,
        "{s:?}"
    );
    // ... yet nothing is reported: job 0 heads the ring.
    assert_eq!(
        dma.completed(64),
        Completed {
            count: 0,
            last_idx: 0xffff,
            has_error: false
        }
    );
    poll_until(&mut device, |d| d.stats().lanes[0].jobs == 1);
    assert_eq!(
        dma.completed(64),
        Completed {
            count: 21,
            last_idx: 20,
            has_error: false
        }
    );
    assert!(dst.0 == src.0);
    assert_eq!(device.stats().lanes[0].bytes, 64 * 1024);
}

/// A: X -> Y (64 KiB, on the slow lane), B: Y -> Z on a fast lane, fenced or not.
fn fence_case(fence: OpFlags) -> bool {
    let (mut device, mut dma) = one(&slow_and_fast(), ChannelConfig::new(8));
    let len = 64 * 1024;
    let mut x = Buf::pattern(len, 6);
    let mut y = Buf::filled(len, 0);
    let mut z = Buf::filled(len, 0);
    // SAFETY: the buffers outlive the jobs, reported below. Without the fence, B reads Y while
    // A writes it: a race between two jobs of the same (single) polling thread, which gives
    // wrong bytes, not undefined behaviour.
    unsafe {
        dma.copy(x.at(0), y.at(0), len as u32, OpFlags::NONE)
            .unwrap();
        dma.copy(y.at(0), z.at(0), len as u32, fence | OpFlags::SUBMIT)
            .unwrap();
    }
    let mut got = 0;
    poll_until(&mut device, |_| {
        got += dma.completed(2).count;
        got == 2
    });
    z.0 == x.0
}

#[test]
fn fence_holds_across_lanes() {
    assert!(
        fence_case(OpFlags::FENCE),
        "the fenced job saw the earlier job's output"
    );
    // Control: without the fence, B runs on a fast lane at once and copies a mostly unwritten Y.
    assert!(
        !fence_case(OpFlags::NONE),
        "the control case must expose the race"
    );
}

#[test]
fn throttle_is_roughly_respected() {
    let rate = 4_000_000u64;
    let cfg = SoftConfig {
        lanes: vec![LaneConfig::throttled(rate)],
        ..Default::default()
    };
    let mut rig_src = Buf::pattern(512 * 1024, 8);
    let mut rig_dst = Buf::filled(512 * 1024, 0);
    let (device, mut dma) = one(&cfg, ChannelConfig::new(8));
    let worker = device.spawn(WorkerConfig::default()).unwrap();
    let start = Instant::now();
    for i in 0..4 {
        let off = i * 128 * 1024;
        // SAFETY: the buffers outlive the jobs, all reported below.
        unsafe {
            dma.copy(
                rig_src.at(off),
                rig_dst.at(off),
                128 * 1024,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
    }
    let mut got = 0;
    while got < 4 {
        got += dma.completed(8).count;
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    let measured = (512 * 1024) as f64 / secs;
    println!("throttle: asked {rate} B/s, measured {measured:.0} B/s over {secs:.3} s");
    // Loose: the bucket starts empty and holds 8 KiB at most, so 512 KiB at 4 MB/s needs
    // about 130 ms; half of that is a bound no scheduling hiccup can break.
    assert!(secs > 0.065, "throttled copy too fast: {secs} s");
    assert!(rig_dst.0 == rig_src.0);
    assert_eq!(worker.stats().lanes[0].bytes, 512 * 1024);
}

#[test]
fn dropping_a_channel_abandons_its_jobs_and_spares_the_others() {
    let cfg = SoftConfig {
        lanes: vec![LaneConfig::throttled(1_000_000)],
        chunk: 1024,
        ..Default::default()
    };
    let (device, mut engines) =
        SoftDevice::new(&cfg, &[ChannelConfig::new(8), ChannelConfig::new(8)]).unwrap();
    let mut second = engines.pop().unwrap();
    let mut first = engines.pop().unwrap();
    let worker = device.spawn(WorkerConfig::default()).unwrap();
    let mut src = Buf::pattern(8 * 65536, 9);
    let mut dst = Buf::filled(8 * 65536, 0);
    for i in 0..8 {
        // SAFETY: `src` and `dst` outlive the jobs: they are freed only after `first` is
        // dropped, which abandons the jobs.
        unsafe { first.copy(src.at(i * 65536), dst.at(i * 65536), 65536, OpFlags::SUBMIT) }
            .unwrap();
    }
    let start = Instant::now();
    while worker.stats().lanes[0].bytes == 0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::yield_now();
    }
    let t = Instant::now();
    drop(first);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop waits one step at most"
    );
    // Abandoned: the device never writes `dst` again.
    let snapshot = dst.0.clone();
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        dst.0 == snapshot,
        "the device wrote memory of a dropped channel"
    );
    assert!(
        dst.0[7 * 65536..].iter().all(|&b| b == 0),
        "the last job never started"
    );
    drop((src, dst));
    // The other channel is still served.
    let mut a = Buf::pattern(100, 1);
    let mut b = Buf::filled(100, 0);
    // SAFETY: `a` and `b` outlive the job, reported below.
    unsafe { second.copy(a.at(0), b.at(0), 100, OpFlags::SUBMIT) }.unwrap();
    let start = Instant::now();
    while second.completed(1).count == 0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::yield_now();
    }
    assert!(a.0 == b.0);
    drop(worker);
    assert!(second.is_stopped());
}

#[test]
fn dropping_the_worker_stops_the_device() {
    let cfg = SoftConfig {
        lanes: vec![LaneConfig::throttled(1_000_000); 2],
        chunk: 4096,
        ..Default::default()
    };
    let (device, mut dma) = one(&cfg, ChannelConfig::new(16));
    let worker = device.spawn(WorkerConfig::default()).unwrap();
    let mut src = Buf::pattern(16 * 65536, 10);
    let mut dst = Buf::filled(16 * 65536, 0);
    for i in 0..16 {
        // SAFETY: the buffers outlive the jobs: kept until the device has stopped.
        unsafe { dma.copy(src.at(i * 65536), dst.at(i * 65536), 65536, OpFlags::SUBMIT) }.unwrap();
    }
    let start = Instant::now();
    while worker.stats().lanes[0].bytes == 0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::yield_now();
    }
    assert!(!dma.is_stopped());
    let t = Instant::now();
    drop(worker);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(dma.is_stopped());
    let snapshot = dst.0.clone();
    std::thread::sleep(Duration::from_millis(20));
    assert!(dst.0 == snapshot);
    assert_eq!(dma.completed(16).count, 0, "no job could finish");
    // SAFETY: rejected before anything is enqueued.
    let r = unsafe { dma.copy(src.at(0), dst.at(0), 1, OpFlags::NONE) };
    assert!(matches!(r, Err(DmaError::Stopped)));
    assert!(matches!(dma.submit(), Err(DmaError::Stopped)));
    drop(dma);
}

#[test]
fn stopped_worker_hands_the_device_back_with_jobs_in_flight() {
    let (device, mut dma) = one(&SoftConfig::with_lanes(2), ChannelConfig::new(64));
    let worker = device.spawn(WorkerConfig {
        core: Some(0),
        idle: Idle::Sleep(Duration::from_micros(50)),
        name: Some("test-soft".into()),
    });
    let mut device = worker.unwrap().stop().unwrap();
    let mut src = Buf::pattern(64 * 100, 2);
    let mut dst = Buf::filled(64 * 100, 0);
    for i in 0..64 {
        // SAFETY: the buffers outlive the jobs, all reported below.
        unsafe { dma.copy(src.at(i * 100), dst.at(i * 100), 100, OpFlags::NONE) }.unwrap();
    }
    dma.submit().unwrap();
    poll_until(&mut device, |_| {
        dma.completed(64);
        dma.in_flight() == 0
    });
    assert!(dst.0 == src.0);
    let mut device = Some(device);
    let worker = device
        .take()
        .unwrap()
        .spawn(WorkerConfig::default())
        .unwrap();
    drop(worker);
    assert!(dma.is_stopped());
}

#[test]
fn one_loop_serves_two_channels_and_other_work() {
    let (device, engines) = SoftDevice::new(
        &SoftConfig::with_lanes(2),
        &[ChannelConfig::new(16), ChannelConfig::new(16)],
    )
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let worker = device
        .spawn_with(WorkerConfig::default(), move || {
            seen.fetch_add(1, Relaxed);
            0
        })
        .unwrap();
    let mut src = Buf::pattern(4096, 3);
    let mut dsts = [Buf::filled(4096, 0), Buf::filled(4096, 0)];
    let mut engines = engines;
    for (dma, dst) in engines.iter_mut().zip(dsts.iter_mut()) {
        for i in 0..16 {
            // SAFETY: the buffers outlive the jobs, all reported below.
            unsafe { dma.copy(src.at(i * 256), dst.at(i * 256), 256, OpFlags::SUBMIT) }.unwrap();
        }
    }
    let start = Instant::now();
    let mut left = [16u16, 16];
    while left != [0, 0] {
        for (dma, left) in engines.iter_mut().zip(left.iter_mut()) {
            *left -= dma.completed(16).count;
        }
        assert!(start.elapsed() < DEADLINE);
        std::thread::yield_now();
    }
    assert!(dsts.iter().all(|d| d.0 == src.0));
    let s = worker.stats();
    // The loop calls `also` after each poll, before it checks for a stop: once joined, the
    // polls that finished the jobs have been followed by calls.
    let device = worker.stop().unwrap();
    assert!(calls.load(Relaxed) > 0);
    assert_eq!(device.stats().polls, calls.load(Relaxed) as u64);
    assert_eq!(s.lanes.iter().map(|l| l.jobs).sum::<u64>(), 32);
    assert!(s.polls >= s.busy_polls && s.busy_polls > 0);
}

#[test]
fn fail_policy_changes_at_runtime() {
    let (mut device, mut dma) = one(&SoftConfig::default(), ChannelConfig::new(16));
    let mut b = Buf::filled(64, 0);
    let run = |dma: &mut SoftEngine, device: &mut SoftDevice, b: &mut Buf, n: usize| {
        for _ in 0..n {
            // SAFETY: `b` outlives the jobs, all reported right after.
            unsafe { dma.copy(b.at(0), b.at(32), 8, OpFlags::SUBMIT) }.unwrap();
        }
        let mut out = vec![Status::ErrorUnknown; n];
        let mut got = 0;
        poll_until(device, |_| {
            got += usize::from(dma.completed_status(16, &mut out[got..]).count);
            got == n
        });
        out
    };
    assert!(
        run(&mut dma, &mut device, &mut b, 4)
            .iter()
            .all(|s| s.is_ok())
    );
    dma.set_fail_policy(FailPolicy::EveryNth {
        n: NonZeroU32::new(2).unwrap(),
        status: Status::DataPoison,
    });
    let st = run(&mut dma, &mut device, &mut b, 4);
    assert_eq!(
        st,
        [
            Status::Successful,
            Status::DataPoison,
            Status::Successful,
            Status::DataPoison
        ]
    );
    dma.set_fail_policy(FailPolicy::Never);
    assert!(
        run(&mut dma, &mut device, &mut b, 4)
            .iter()
            .all(|s| s.is_ok())
    );
    assert_eq!(device.stats().injected_failures, 2);
}

#[test]
fn bad_configurations_are_refused() {
    let ch = [ChannelConfig::default()];
    let refused = |cfg: SoftConfig, ch: &[ChannelConfig]| {
        matches!(SoftDevice::new(&cfg, ch), Err(DmaError::InvalidConfig(_)))
    };
    assert!(refused(SoftConfig::with_lanes(0), &ch));
    assert!(refused(SoftConfig::with_lanes(MAX_LANES + 1), &ch));
    assert!(refused(
        SoftConfig {
            chunk: 0,
            ..Default::default()
        },
        &ch
    ));
    assert!(refused(
        SoftConfig {
            lane_burst: 0,
            ..Default::default()
        },
        &ch
    ));
    assert!(refused(SoftConfig::default(), &[]));
    assert!(refused(SoftConfig::default(), &[ChannelConfig::new(3)]));
    let (device, engines) = SoftDevice::new(&SoftConfig::with_lanes(MAX_LANES), &ch).unwrap();
    assert_eq!((device.lanes(), engines.len()), (MAX_LANES, 1));
    assert!(format!("{device:?} {:?}", engines[0]).contains("ring_size: 1024"));
}

/// The engines the printing tests below measure, by name.
fn printed_kinds() -> [(&'static str, crate::tests::Kind); 3] {
    [
        ("cpu", crate::tests::Kind::Cpu),
        (
            "soft, own thread",
            crate::tests::Kind::Threaded(SoftConfig::default()),
        ),
        (
            "soft, polled",
            crate::tests::Kind::Polled(SoftConfig::default()),
        ),
    ]
}

/// Not a benchmark (debug build, shared cores): a rough figure printed for the record.
#[test]
fn large_copy_throughput_print() {
    const MIB: usize = 1 << 20;
    const JOBS: usize = 16;
    let mut src = Buf::pattern(4 * MIB, 11);
    // Filled with a non-zero byte, so its pages are touched before any timing starts.
    let mut dst = Buf::filled(JOBS * MIB, 0xee);
    let kinds = printed_kinds();
    // Twice each, the first round to warm up.
    for (name, kind) in kinds.iter().chain(&kinds) {
        let mut rig = Rig::new(kind, ChannelConfig::new(64));
        let start = Instant::now();
        for i in 0..JOBS {
            let from = (i % 4) * MIB;
            let flags = if i + 1 == JOBS {
                OpFlags::SUBMIT
            } else {
                OpFlags::NONE
            };
            // SAFETY: the buffers outlive the jobs (all reported by `wait_ok`); each job has
            // its own MiB of `dst` (sources are only read, so sharing them is fine).
            unsafe {
                rig.engine
                    .copy(src.at(from), dst.at(i * MIB), MIB as u32, flags)
            }
            .unwrap();
        }
        rig.wait_ok(JOBS);
        let secs = start.elapsed().as_secs_f64();
        let gbs = (JOBS * MIB) as f64 / secs / 1e9;
        println!("{name}: {JOBS} x 1 MiB in {secs:.4} s = {gbs:.2} GB/s");
        assert!(dst.0.chunks(4 * MIB).all(|c| c == &src.0[..]));
        dst.0.fill(0xee);
    }
}

/// Not a benchmark either: the per-job cost with small (64 B) copies, in bursts of 32.
#[test]
fn small_job_rate_print() {
    const BURSTS: usize = 1024;
    let mut src = Buf::pattern(64 * 32, 12);
    let mut dst = Buf::filled(64 * 32, 0);
    let kinds = printed_kinds();
    for (name, kind) in &kinds {
        let mut rig = Rig::new(kind, ChannelConfig::new(64));
        let start = Instant::now();
        for _ in 0..BURSTS {
            for k in 0..32 {
                let flags = if k == 31 {
                    OpFlags::SUBMIT
                } else {
                    OpFlags::NONE
                };
                // SAFETY: the buffers outlive the jobs, all reported by `wait_ok` before the
                // next burst writes `dst` again.
                unsafe { rig.engine.copy(src.at(k * 64), dst.at(k * 64), 64, flags) }.unwrap();
            }
            rig.wait_ok(32);
        }
        let ns = start.elapsed().as_nanos() as f64 / (BURSTS * 32) as f64;
        println!("{name}: 64 B jobs in bursts of 32: {ns:.0} ns per job, enqueue to report");
        assert!(dst.0 == src.0);
    }
}

mod prop;
