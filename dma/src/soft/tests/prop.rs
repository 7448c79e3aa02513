//! Property: whatever the lanes, chunks, ring size, fences, failures and the interleaving of
//! enqueue / submit / poll / report calls, every job is reported exactly once, in ring order,
//! with the status the failure policy gives it, and with its destination written when (and not
//! before) it is reported successfully. The CPU engine runs the same operations as reference.
//! The IOAT and DSA drivers over their models run them too (without failure injection; DSA
//! with one to four engines completing out of order).

use std::num::NonZeroU32;

use proptest::prelude::*;

use super::super::*;
use crate::model::{DsaModelConfig, IoatModelConfig};
use crate::tests::{Buf, Kind, Rig};
use crate::{OpFlags, Sge};

const MAX_LEN: usize = 3000;
const SRC_SPAN: usize = 1000;

#[derive(Clone, Debug)]
enum Op {
    /// `pieces.0 == 0`: a plain copy; else an SG copy cut into that many source pieces and
    /// `pieces.1` destination pieces.
    Job {
        len: usize,
        pieces: (u8, u8),
        fence: bool,
        submit: bool,
    },
    Submit,
    Poll(u8),
    Completed(u8),
    Status(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..=MAX_LEN, (0u8..4, 1u8..4), any::<bool>(), any::<bool>())
            .prop_map(|(len, pieces, fence, submit)| Op::Job { len, pieces, fence, submit }),
        1 => Just(Op::Submit),
        2 => (1u8..6).prop_map(Op::Poll),
        2 => (0u8..8).prop_map(Op::Completed),
        1 => (0u8..8).prop_map(Op::Status),
    ]
}

fn policy() -> impl Strategy<Value = FailPolicy> {
    prop_oneof![
        Just(FailPolicy::Never),
        (0u16..30).prop_map(|idx| FailPolicy::Index {
            idx,
            status: Status::InvalidSrcAddr
        }),
        (1u32..6).prop_map(|n| FailPolicy::EveryNth {
            n: NonZeroU32::new(n).unwrap(),
            status: Status::BusWriteError,
        }),
    ]
}

fn expected_status(policy: FailPolicy, job: usize) -> Status {
    match policy {
        FailPolicy::Never => Status::Successful,
        FailPolicy::Index { idx, status } if usize::from(idx) == job => status,
        FailPolicy::EveryNth { n, status } if (job + 1) % n.get() as usize == 0 => status,
        _ => Status::Successful,
    }
}

/// Cuts `len` bytes at `base` of `buf` into `n` pieces (some may be empty).
fn cut(buf: &mut Buf, base: usize, len: usize, n: u8, salt: usize) -> Vec<Sge> {
    let mut points: Vec<usize> = (1..n as usize)
        .map(|k| (k * 977 + salt * 131) % (len + 1))
        .collect();
    points.extend([0, len]);
    points.sort_unstable();
    (points.windows(2))
        .map(|w| Sge::new(buf.at(base + w[0]), (w[1] - w[0]) as u32))
        .collect()
}

/// The state a run checks the engine against.
struct Run {
    policy: FailPolicy,
    src: Buf,
    dst: Buf,
    lens: Vec<usize>,
    /// The `Job` operations the engine accepted (ring full depends on timing).
    accepted: Vec<Op>,
    submitted: usize,
    reported: Vec<Status>,
}

impl Run {
    fn src_off(job: usize) -> usize {
        job * 131 % SRC_SPAN
    }

    /// Job `job` was just reported with `status`: check status and memory.
    fn check_report(&mut self, job: usize, status: Status) -> Result<(), TestCaseError> {
        prop_assert_eq!(job, self.reported.len(), "reported out of order");
        prop_assert!(
            job < self.submitted,
            "reported job {} before it was submitted",
            job
        );
        prop_assert_eq!(status, expected_status(self.policy, job), "job {}", job);
        let len = self.lens[job];
        let got = &self.dst.0[job * MAX_LEN..job * MAX_LEN + len];
        if status.is_ok() {
            let want = &self.src.0[Self::src_off(job)..Self::src_off(job) + len];
            prop_assert!(got == want, "job {} reported before its bytes landed", job);
        } else {
            prop_assert!(got.iter().all(|&b| b == 0xee), "failed job {} wrote", job);
        }
        self.reported.push(status);
        Ok(())
    }

    fn check_last(&self, last_idx: u16) -> Result<(), TestCaseError> {
        prop_assert_eq!(last_idx, (self.reported.len() as u16).wrapping_sub(1));
        Ok(())
    }
}

fn run(kind: &Kind, ch: ChannelConfig, ops: &[Op]) -> Result<Run, TestCaseError> {
    let jobs = ops.iter().filter(|o| matches!(o, Op::Job { .. })).count();
    // `r` (the memory jobs use) is declared before `rig`, so that on an early return the rig
    // (and its engine, which abandons the jobs) is dropped first.
    let mut r = Run {
        policy: ch.fail,
        src: Buf::pattern(SRC_SPAN + MAX_LEN, 42),
        dst: Buf::filled(jobs.max(1) * MAX_LEN, 0xee),
        lens: Vec::new(),
        accepted: Vec::new(),
        submitted: 0,
        reported: Vec::new(),
    };
    let mut rig = Rig::new(kind, ch);
    let ring = usize::from(ch.ring_size);
    for op in ops {
        match *op {
            Op::Job {
                len,
                pieces,
                fence,
                submit,
            } => {
                let job = r.lens.len();
                let mut flags = if fence { OpFlags::FENCE } else { OpFlags::NONE };
                if submit {
                    flags |= OpFlags::SUBMIT;
                }
                let (so, doff) = (Run::src_off(job), job * MAX_LEN);
                // SAFETY: `r.src` and `r.dst` outlive the rig's jobs (the rig is dropped at the
                // end of this function, before `r` is returned); each job writes its own
                // `dst` region, read only once the job is reported.
                let res = unsafe {
                    if pieces.0 == 0 {
                        rig.engine
                            .copy(r.src.at(so), r.dst.at(doff), len as u32, flags)
                    } else {
                        let s = cut(&mut r.src, so, len, pieces.0, job);
                        let d = cut(&mut r.dst, doff, len, pieces.1, job + 7);
                        rig.engine.copy_sg(&s, &d, flags)
                    }
                };
                let in_flight = r.lens.len() - r.reported.len();
                if in_flight == ring {
                    prop_assert!(matches!(res, Err(DmaError::RingFull)), "{:?}", res);
                    continue;
                }
                prop_assert_eq!(res.unwrap(), job as u16);
                r.lens.push(len);
                r.accepted.push(op.clone());
                if submit {
                    r.submitted = r.lens.len();
                }
            }
            Op::Submit => {
                rig.engine.submit().unwrap();
                r.submitted = r.lens.len();
            }
            Op::Poll(n) => (0..n).for_each(|_| rig.pump()),
            Op::Completed(max) => {
                let c = rig.engine.completed(u16::from(max));
                prop_assert!(c.count <= u16::from(max));
                let first = r.reported.len();
                for job in first..first + usize::from(c.count) {
                    r.check_report(job, Status::Successful)?;
                }
                r.check_last(c.last_idx)?;
                if c.has_error {
                    let next = r.reported.len();
                    prop_assert!(!expected_status(r.policy, next).is_ok(), "job {}", next);
                }
            }
            Op::Status(max) => {
                let mut st = [Status::ErrorUnknown; 8];
                let c = rig.engine.completed_status(u16::from(max), &mut st);
                let first = r.reported.len();
                for (k, &s) in st[..usize::from(c.count)].iter().enumerate() {
                    r.check_report(first + k, s)?;
                }
                r.check_last(c.last_idx)?;
                prop_assert_eq!(
                    c.has_error,
                    st[..usize::from(c.count)].iter().any(|s| !s.is_ok())
                );
            }
        }
        prop_assert_eq!(
            usize::from(rig.engine.in_flight()),
            r.lens.len() - r.reported.len()
        );
    }
    // Drain.
    rig.engine.submit().unwrap();
    r.submitted = r.lens.len();
    let first = r.reported.len();
    let rest = rig.wait_status(r.lens.len() - first);
    for (k, s) in rest.into_iter().enumerate() {
        r.check_report(first + k, s)?;
    }
    prop_assert_eq!(rig.engine.completed(8).count, 0);
    let stats = rig.engine.stats();
    prop_assert_eq!(stats.completed, r.lens.len() as u64);
    prop_assert_eq!(
        stats.errors,
        r.reported.iter().filter(|s| !s.is_ok()).count() as u64
    );
    Ok(r)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn in_order_reports_match_the_cpu_reference(
        ring_log in 0u32..5,
        lanes in 1usize..4,
        chunk in prop_oneof![Just(64u32), Just(700), Just(65536)],
        lane_burst in prop_oneof![Just(1u32), Just(2), Just(32)],
        fail in policy(),
        threaded in any::<bool>(),
        dsa_parallel in 1u8..5,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let ch = ChannelConfig { ring_size: 1 << ring_log, max_sges: 4, fail };
        run(&Kind::Cpu, ch, &ops)?;
        let cfg = SoftConfig { lanes: vec![LaneConfig::default(); lanes], chunk, lane_burst };
        let kind = if threaded { Kind::Threaded(cfg) } else { Kind::Polled(cfg) };
        let soft = run(&kind, ch, &ops)?;
        // Reference: the jobs the soft engine accepted, replayed on the CPU engine (with a ring
        // large enough for all of them): same statuses, same bytes everywhere.
        let all = ChannelConfig { ring_size: 128, ..ch };
        let reference = run(&Kind::Cpu, all, &soft.accepted)?;
        prop_assert_eq!(&soft.reported, &reference.reported);
        let used = soft.accepted.len() * MAX_LEN;
        prop_assert!(soft.dst.0[..used] == reference.dst.0[..used]);
        // The IOAT driver over its model, without failure injection (the model fails
        // descriptors, not jobs): the same against its own CPU replay.
        let hw = ChannelConfig { fail: FailPolicy::Never, ..ch };
        let ioat = run(&Kind::Ioat(IoatModelConfig::default()), hw, &ops)?;
        let all = ChannelConfig { ring_size: 128, ..hw };
        let reference = run(&Kind::Cpu, all, &ioat.accepted)?;
        prop_assert_eq!(&ioat.reported, &reference.reported);
        let used = ioat.accepted.len() * MAX_LEN;
        prop_assert!(ioat.dst.0[..used] == reference.dst.0[..used]);
        // The DSA driver over its model, the same way.
        let dsa_cfg = DsaModelConfig { parallel: dsa_parallel, ..Default::default() };
        let dsa = run(&Kind::Dsa(dsa_cfg), hw, &ops)?;
        let reference = run(&Kind::Cpu, all, &dsa.accepted)?;
        prop_assert_eq!(&dsa.reported, &reference.reported);
        let used = dsa.accepted.len() * MAX_LEN;
        prop_assert!(dsa.dst.0[..used] == reference.dst.0[..used]);
    }
}
