//! One walk per chain, one copy step: the general data path of both directions and both copy
//! modes.
//!
//! A packet's chains are walked once, each into [`Pieces`]: the guest buffers it takes (every
//! descriptor checked by the chain walker; a malformed chain is refused whole). The bytes then
//! move between those pieces and host memory run by run ([`Runs`]), each run through a
//! [`CopyStep`]: [`Cpu`] copies it now (the sync path), the async path's step makes it a job
//! of the copy device when it reaches the channel's threshold. Headers and patched offload
//! prefixes are always the CPU's. The fast paths (one descriptor, one region) skip the walk
//! and call the same step.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;

use crate::memory::{DirtyLog, GuestMemory, GuestSlice};
use crate::virtq::split::ChainError;

use super::burst::MAX_PKT_LEN;
use super::ring::Ring;

/// Most guest buffers one packet may use (DPDK's `BUF_VECTOR_MAX` is 256). A chain with more
/// is malformed ([`ChainError::TooManyBuffers`]); a packet whose chains together need more
/// waits, as when it does not fit.
pub(super) const MAX_PIECES: usize = 128;

/// Most chains one packet may take with mergeable buffers.
pub(super) const MAX_CHAINS: usize = 64;

/// Where the bytes of one run go: now, by the CPU, or later, by a copy device.
pub(super) trait CopyStep {
    /// Copies `src` into the guest run `dst` (as long as `src`).
    fn write_guest(&mut self, src: &[u8], dst: GuestSlice<'_>);
    /// Copies the guest run `src` into `dst` (as long as `src`).
    fn read_guest(&mut self, src: GuestSlice<'_>, dst: &mut [u8]);
    /// `bytes` the CPU wrote for a header or a patched prefix (counted by the async path).
    #[inline]
    fn count_cpu(&mut self, _bytes: usize) {}
    /// The packet these copies were for is dropped before it was handed over: copies not
    /// done yet must not be (their destination is about to be freed).
    #[inline]
    fn forget(&mut self) {}
}

/// Where a burst marks the guest pages it writes: nowhere ([`NoLog`]: the burst's loop is
/// compiled without any trace of logging) or in the dirty log (`&DirtyLog`, while
/// `VHOST_F_LOG_ALL` is negotiated). The burst decides once, at its start, which loop to run.
pub(super) trait Dirty: Copy {
    /// Whether this logs (a constant per type: the loops test it at compile time).
    const ON: bool;
    /// Marks `[gpa, gpa + len)` written.
    fn mark(self, gpa: u64, len: u64);
    /// Marks the guest bytes of `s`, a slice of `mem`, written.
    fn mark_slice(self, mem: &GuestMemory, s: &GuestSlice<'_>);
}

/// No dirty logging: every marking is nothing.
#[derive(Clone, Copy)]
pub(super) struct NoLog;

impl Dirty for NoLog {
    const ON: bool = false;

    #[inline(always)]
    fn mark(self, _gpa: u64, _len: u64) {}

    #[inline(always)]
    fn mark_slice(self, _mem: &GuestMemory, _s: &GuestSlice<'_>) {}
}

impl Dirty for &DirtyLog {
    const ON: bool = true;

    #[inline]
    fn mark(self, gpa: u64, len: u64) {
        DirtyLog::mark(self, gpa, len);
    }

    #[inline]
    fn mark_slice(self, mem: &GuestMemory, s: &GuestSlice<'_>) {
        // Every piece came from translating a guest address with `mem`.
        if let Some(gpa) = mem.gpa_of_host(s) {
            DirtyLog::mark(self, gpa.raw(), s.len() as u64);
        }
    }
}

/// Dirty marks kept for later (the async path's): a packet's pages are marked when it
/// retires, after the copy device has written them.
#[derive(Default)]
pub(super) struct Marks(RefCell<Vec<(u64, u64)>>);

impl Marks {
    /// Moves the marks kept so far to the back of `to`; returns how many.
    pub(super) fn take_into(&self, to: &mut VecDeque<(u64, u64)>) -> u16 {
        let mut v = self.0.borrow_mut();
        let n = v.len();
        to.extend(v.drain(..));
        n as u16
    }
}

impl Dirty for &Marks {
    const ON: bool = true;

    #[inline]
    fn mark(self, gpa: u64, len: u64) {
        self.0.borrow_mut().push((gpa, len));
    }

    #[inline]
    fn mark_slice(self, mem: &GuestMemory, s: &GuestSlice<'_>) {
        if let Some(gpa) = mem.gpa_of_host(s) {
            self.mark(gpa.raw(), s.len() as u64);
        }
    }
}

/// The sync path's step: every copy now.
pub(super) struct Cpu;

impl CopyStep for Cpu {
    #[inline(always)]
    fn write_guest(&mut self, src: &[u8], dst: GuestSlice<'_>) {
        dst.copy_from(src);
    }

    #[inline(always)]
    fn read_guest(&mut self, src: GuestSlice<'_>, dst: &mut [u8]) {
        src.copy_to(dst);
    }
}

/// The guest buffers a packet takes, and the chains they belong to. Free to create (nothing
/// is initialised until used): it lives in the general path's own frame, so the bursts'
/// frames stay small.
pub(super) struct Pieces<'a, H = u16> {
    /// The first `n` are initialised.
    pieces: [MaybeUninit<GuestSlice<'a>>; MAX_PIECES],
    n: usize,
    /// (head, bytes of pieces collected from it); the first `nchains` are initialised. A head
    /// is what the ring returns a chain by ([`Ring::Head`]).
    chains: [MaybeUninit<(H, u64)>; MAX_CHAINS],
    nchains: usize,
    /// Bytes collected in all.
    have: u64,
}

impl<'a, H: Copy> Pieces<'a, H> {
    #[inline]
    pub(super) fn new() -> Pieces<'a, H> {
        Pieces {
            pieces: [const { MaybeUninit::uninit() }; MAX_PIECES],
            n: 0,
            chains: [const { MaybeUninit::uninit() }; MAX_CHAINS],
            nchains: 0,
            have: 0,
        }
    }

    /// Forgets everything collected (a packet starting over after a malformed chain).
    pub(super) fn clear(&mut self) {
        self.n = 0;
        self.nchains = 0;
        self.have = 0;
    }

    /// Bytes collected.
    #[inline]
    pub(super) fn have(&self) -> u64 {
        self.have
    }

    /// The chains collected: (head, bytes collected from it).
    #[inline]
    pub(super) fn chains(&self) -> &[(H, u64)] {
        // SAFETY: the first `nchains` entries were written (`add_chain` writes before it
        // counts), and MaybeUninit<T> has T's layout.
        unsafe { std::slice::from_raw_parts(self.chains.as_ptr().cast(), self.nchains) }
    }

    /// The buffers collected.
    #[inline]
    fn pieces(&self) -> &[GuestSlice<'a>] {
        // SAFETY: as in `chains`: the first `n` entries were written.
        unsafe { std::slice::from_raw_parts(self.pieces.as_ptr().cast(), self.n) }
    }

    /// Walks chain `head` (all of it, `writable` or readable buffers: a malformed chain is
    /// refused whole) and adds its buffers until `need` bytes are collected in all; the rest
    /// of the chain is only checked. `Ok(false)`: no room to track it (the chains, or the
    /// pieces of this packet's earlier chains, are used up; nothing is added). `Err` for a
    /// malformed chain (nothing is added), [`ChainError::TooManyBuffers`] for a chain that
    /// alone needs more than [`MAX_PIECES`] buffers.
    pub(super) fn add_chain<R: Ring<'a, Head = H>>(
        &mut self,
        b: &R,
        head: H,
        writable: bool,
        need: u64,
    ) -> Result<bool, ChainError> {
        if self.nchains == MAX_CHAINS {
            return Ok(false);
        }
        let (n0, have0) = (self.n, self.have);
        let mut got = 0u64;
        for piece in b.walk(head, writable, MAX_PKT_LEN) {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    self.n = n0;
                    self.have = have0;
                    return Err(e);
                }
            };
            if self.have >= need || piece.is_empty() {
                continue;
            }
            if self.n == MAX_PIECES {
                self.n = n0;
                self.have = have0;
                return if n0 == 0 {
                    Err(ChainError::TooManyBuffers(MAX_PIECES as u32))
                } else {
                    Ok(false)
                };
            }
            let take = piece.len().min((need - self.have) as usize);
            let Ok(p) = piece.subslice(0, take) else {
                break;
            };
            self.pieces[self.n].write(p);
            self.n += 1;
            self.have += take as u64;
            got += take as u64;
        }
        self.chains[self.nchains].write((head, got));
        self.nchains += 1;
        Ok(true)
    }

    /// Marks every buffer collected (the bytes the packet was written to) in `log`.
    #[inline]
    pub(super) fn mark_dirty(&self, mem: &GuestMemory, log: impl Dirty) {
        for p in self.pieces() {
            log.mark_slice(mem, p);
        }
    }

    /// The collected buffers as runs, from the first byte.
    #[inline]
    pub(super) fn runs(&self) -> Runs<'_, 'a> {
        Runs {
            pieces: self.pieces(),
            i: 0,
            off: 0,
        }
    }
}

/// A position in a packet's pieces.
pub(super) struct Runs<'p, 'a> {
    pieces: &'p [GuestSlice<'a>],
    i: usize,
    off: usize,
}

impl<'a> Runs<'_, 'a> {
    /// The next run of at most `max` bytes of the current piece (moving past it); `None` at
    /// the end.
    #[inline]
    fn next_run(&mut self, max: usize) -> Option<GuestSlice<'a>> {
        loop {
            let p = *self.pieces.get(self.i)?;
            if self.off < p.len() {
                let n = max.min(p.len() - self.off);
                let run = p.subslice(self.off, n).ok()?;
                self.off += n;
                return Some(run);
            }
            self.i += 1;
            self.off = 0;
        }
    }

    /// Writes `src` with the CPU (`update`: leaving bytes that already hold the value alone,
    /// for the header); returns how many bytes fit.
    pub(super) fn write_cpu(&mut self, src: &[u8], update: bool) -> usize {
        self.put(src, |src, run| {
            if update {
                let _ = run.update_at(0, src);
            } else {
                run.copy_from(src);
            }
        })
    }

    /// Writes `src` run by run through `step`; returns how many bytes fit.
    #[inline]
    pub(super) fn write(&mut self, src: &[u8], step: &mut impl CopyStep) -> usize {
        self.put(src, |src, run| step.write_guest(src, run))
    }

    /// Cuts `src` into runs of the pieces and hands each, with its bytes, to `copy`; returns
    /// how many bytes fit.
    #[inline]
    fn put(&mut self, mut src: &[u8], mut copy: impl FnMut(&[u8], GuestSlice<'a>)) -> usize {
        let start = src.len();
        while !src.is_empty() {
            let Some(run) = self.next_run(src.len()) else {
                break;
            };
            let n = run.len();
            copy(&src[..n], run);
            src = &src[n..];
        }
        start - src.len()
    }

    /// Fills `dst` run by run through `step`; returns how many bytes the pieces had.
    #[inline]
    pub(super) fn read(&mut self, dst: &mut [u8], step: &mut impl CopyStep) -> usize {
        let mut done = 0;
        while done < dst.len() {
            let Some(run) = self.next_run(dst.len() - done) else {
                break;
            };
            let n = run.len();
            step.read_guest(run, &mut dst[done..done + n]);
            done += n;
        }
        done
    }
}
