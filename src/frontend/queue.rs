//! Receive and transmit queues: virtio-net buffers (virtio 1.2 §5.1.6) over a split
//! [`DriverRing`] or a [`PackedDriverRing`], with the kick and call eventfds.
//!
//! On a split ring descriptor `i` of a queue always uses buffer slot `i` of its [`SlotPool`],
//! so a chain's buffers are found from its descriptor ids without any allocation (a packed
//! ring's chains take slots from a free list: see `queue_ring`). The hot paths
//! ([`TxQueue::send`], [`RxQueue::post_rx`], [`RxQueue::poll_rx`]) never allocate: a received
//! packet is gathered into a scratch buffer allocated with the queue.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;

use super::driver_ring::{DriverRing, RingStats};
use super::options::TxLayout;
use super::packed_ring::PackedDriverRing;
use super::queue_ring::QueueRing;
use super::shm::SlotPool;
use crate::features::{VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX};
pub use crate::net::hdr::VirtioNetHdr as NetHdr;

/// Counters of a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets sent or received.
    pub packets: u64,
    /// Payload bytes sent or received (without the virtio-net header).
    pub bytes: u64,
    /// Kick eventfd writes.
    pub kicks: u64,
    /// Sends that stopped for lack of free descriptors.
    pub full: u64,
    /// Packets refused because their chain would be longer than the ring.
    pub oversize: u64,
    /// Received packets cut to the scratch buffer.
    pub truncated: u64,
    /// Used lengths above the buffer's capacity (clamped).
    pub bad_len: u64,
    /// Mergeable headers whose `num_buffers` could never be satisfied (treated as 1).
    pub bad_num_buffers: u64,
}

/// Receive-side state of a [`Queue`].
pub struct Rx {
    /// Per head: bytes the posted buffer holds.
    cap: Box<[u32]>,
    scratch: Box<[u8]>,
    mergeable: bool,
}

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rx")
            .field("mergeable", &self.mergeable)
            .field("scratch_len", &self.scratch.len())
            .finish_non_exhaustive()
    }
}

/// Transmit-side state of a [`Queue`].
#[derive(Debug)]
pub struct Tx {
    layout: TxLayout,
}

/// A receive queue (vring `2 * pair`): the device writes into its buffers.
pub type RxQueue = Queue<Rx>;
/// A transmit queue (vring `2 * pair + 1`): the device reads its buffers.
pub type TxQueue = Queue<Tx>;

/// Bytes of a receive queue's scratch buffer: the largest packet [`RxQueue::poll_rx`]
/// delivers whole (a 64 KiB GSO packet with its headers fits).
pub const RX_SCRATCH: usize = 68 << 10;

/// One virtqueue of the front-end. See [`RxQueue`] and [`TxQueue`].
#[derive(Debug)]
pub struct Queue<K> {
    vring: u16,
    ring: QueueRing,
    pool: SlotPool,
    kick: Option<EventFd>,
    call: Option<EventFd>,
    hdr_len: usize,
    /// Base for the next SET_VRING_BASE, from GET_VRING_BASE at stop.
    pub(crate) resume_base: Option<u32>,
    stats: QueueStats,
    kind: K,
}

/// A packet handed to [`RxQueue::poll_rx`]'s callback.
#[derive(Debug, Clone, Copy)]
pub struct RxPacket<'a> {
    /// The virtio-net header.
    pub hdr: NetHdr,
    /// The payload, copied out of the shared buffers.
    pub data: &'a [u8],
    /// Bytes the device wrote, header included (used lengths, clamped to the buffers).
    pub written: usize,
    /// Used elements (buffers) the packet took.
    pub buffers: u16,
    /// The packet was longer than [`RX_SCRATCH`] and was cut.
    pub truncated: bool,
}

impl<K> Queue<K> {
    fn with_kind(
        vring: u16,
        ring: QueueRing,
        pool: SlotPool,
        kick: Option<EventFd>,
        call: Option<EventFd>,
        kind: K,
    ) -> Self {
        let mut q = Self {
            vring,
            ring,
            pool,
            hdr_len: NetHdr::SIZE,
            resume_base: None,
            stats: QueueStats::default(),
            kind,
            kick,
            call,
        };
        // Polled until asked otherwise (set_interrupts, wait_call).
        q.ring.set_interrupts(false);
        q
    }

    /// The vring index.
    pub fn vring(&self) -> u16 {
        self.vring
    }

    /// The split driver ring (indexes, free descriptors, counters, the shared accessor);
    /// `None` on a packed ring.
    pub fn ring(&self) -> Option<&DriverRing> {
        match &self.ring {
            QueueRing::Split(r) => Some(r),
            QueueRing::Packed(..) => None,
        }
    }

    /// The packed driver ring; `None` on a split ring.
    pub fn packed_ring(&self) -> Option<&PackedDriverRing> {
        match &self.ring {
            QueueRing::Packed(r, _) => Some(r),
            QueueRing::Split(_) => None,
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// Where the device resumes on a start without a base from a stop (see
    /// `QueueRing::start_base`).
    pub(crate) fn start_base(&self) -> u32 {
        self.ring.start_base()
    }

    /// The buffers.
    pub fn pool(&self) -> &SlotPool {
        &self.pool
    }

    /// Counters of the queue.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Counters of the ring.
    pub fn ring_stats(&self) -> RingStats {
        self.ring.stats()
    }

    /// Virtio-net header size in use.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The kick eventfd (`None` in polling mode).
    pub fn kick_fd(&self) -> Option<BorrowedFd<'_>> {
        self.kick.as_ref().map(AsFd::as_fd)
    }

    /// The call eventfd (`None` in polling mode).
    pub fn call_fd(&self) -> Option<BorrowedFd<'_>> {
        self.call.as_ref().map(AsFd::as_fd)
    }

    /// Applies negotiated features: header size, EVENT_IDX.
    pub(crate) fn configure(&mut self, features: u64) {
        self.hdr_len = NetHdr::size_for(features);
        self.ring
            .set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
    }

    /// Writes the kick eventfd (whatever the device's suppression says).
    pub fn kick(&mut self) {
        if let Some(k) = &self.kick {
            // Only fails when the counter would overflow: the device has a kick pending.
            if k.write(1).is_ok() {
                self.stats.kicks += 1;
            }
        }
    }

    #[inline]
    fn publish_and_kick(&mut self) {
        if self.ring.publish() {
            self.kick();
        }
    }

    /// Turns calls on or off (see [`DriverRing::set_interrupts`]).
    pub fn set_interrupts(&mut self, on: bool) {
        self.ring.set_interrupts(on);
    }

    /// Reads and clears the call eventfd: the number of calls since the last read (0 if none
    /// or in polling mode).
    pub fn take_calls(&self) -> u64 {
        self.call.as_ref().and_then(|c| c.read().ok()).unwrap_or(0)
    }

    /// Waits up to `timeout` for a call: turns calls on, checks for used elements that came
    /// meanwhile, sleeps on the call eventfd, and restores the previous interrupt setting.
    /// `Ok(true)` if a call came (or used elements were already there), `Ok(false)` on
    /// timeout. Without a call eventfd (polling mode) this is an `Unsupported` error.
    pub fn wait_call(&mut self, timeout: Duration) -> io::Result<bool> {
        let Some(call) = &self.call else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no call eventfd (polling mode)",
            ));
        };
        let was_on = self.ring.interrupts();
        let got = if self.ring.arm_interrupts() {
            Ok(true)
        } else {
            wait_readable(call.as_fd(), timeout)
        };
        if matches!(got, Ok(true)) {
            let _ = call.read();
        }
        if !was_on {
            self.ring.set_interrupts(false);
        }
        got
    }
}

/// Waits for `fd` to become readable (retrying on EINTR).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let t = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, t) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Queue<Rx> {
    /// A receive queue.
    pub(crate) fn new_rx(
        vring: u16,
        ring: QueueRing,
        pool: SlotPool,
        kick: Option<EventFd>,
        call: Option<EventFd>,
    ) -> Self {
        let size = usize::from(ring.size());
        let rx = Rx {
            cap: vec![0; size].into(),
            scratch: vec![0; RX_SCRATCH].into(),
            mergeable: true,
        };
        Self::with_kind(vring, ring, pool, kick, call, rx)
    }

    /// Applies negotiated features (header size, EVENT_IDX, mergeable buffers).
    pub(crate) fn configure_rx(&mut self, features: u64) {
        self.configure(features);
        self.kind.mergeable = features & VIRTIO_NET_F_MRG_RXBUF != 0;
    }

    /// Makes up to `n` receive buffers of `buf_len` bytes available (each a chain of
    /// `buf_len / buf_size` descriptors, rounded up) and kicks if the device wants it. Returns
    /// how many were posted: fewer when descriptors run out, 0 when `buf_len` is smaller than
    /// the virtio-net header or needs more descriptors than the ring has.
    pub fn post_rx(&mut self, n: usize, buf_len: usize) -> usize {
        let slot = self.pool.slot_len();
        let ndesc = buf_len.div_ceil(slot);
        let Ok(ndesc) = u16::try_from(ndesc) else {
            return 0;
        };
        if buf_len < self.hdr_len || ndesc > self.ring.size() || u32::try_from(buf_len).is_err() {
            return 0;
        }
        let pool = &self.pool;
        let mut posted = 0;
        while posted < n {
            let seg = |i: u16, id: u16| {
                let len = slot.min(buf_len - usize::from(i) * slot);
                (pool.gpa(id), len as u32, true)
            };
            let Some(head) = self.ring.add_chain(ndesc, seg) else {
                break;
            };
            self.kind.cap[usize::from(head)] = buf_len as u32;
            posted += 1;
        }
        if posted > 0 {
            self.publish_and_kick();
        }
        posted
    }

    /// Receive buffers posted and not yet used by the device.
    pub fn posted(&self) -> u16 {
        self.ring.outstanding()
    }

    /// Reaps up to `max` received packets, calling `f` with each (header parsed, payload
    /// copied out of the shared buffers). The buffers go back to the free list: post new
    /// ones with [`post_rx`](Self::post_rx). With MRG_RXBUF a packet spanning several buffers
    /// is delivered once all of them are used.
    pub fn poll_rx(&mut self, max: usize, f: impl FnMut(RxPacket<'_>)) -> usize {
        self.poll_rx_upto(max, usize::MAX, f)
    }

    /// As [`poll_rx`](Self::poll_rx), but copies only the header and the first `sample` bytes
    /// of each packet out of the shared buffers: `data` is that sample, `written` still the
    /// whole length the device wrote. For benchmarks, where a receiver that copied every
    /// payload would cost its core what the backend saves.
    pub fn poll_rx_sample(
        &mut self,
        max: usize,
        sample: usize,
        f: impl FnMut(RxPacket<'_>),
    ) -> usize {
        self.poll_rx_upto(max, self.hdr_len.saturating_add(sample), f)
    }

    fn poll_rx_upto(&mut self, max: usize, limit: usize, mut f: impl FnMut(RxPacket<'_>)) -> usize {
        let mut got = 0;
        while got < max {
            if self.ring.used_ready(1) == 0 {
                break;
            }
            let Some(nbufs) = self.buffers_of_next() else {
                break;
            };
            let g = self.gather(nbufs, limit);
            if g.written < self.hdr_len {
                // Nothing valid (bad ids only, counted by the ring), or not even a header.
                if g.popped > 0 {
                    self.stats.bad_len += 1;
                }
                continue;
            }
            let bytes = &self.kind.scratch[..g.len];
            let (head, data) = bytes.split_at(self.hdr_len.min(g.len));
            self.stats.packets += 1;
            self.stats.bytes += data.len() as u64;
            f(RxPacket {
                hdr: NetHdr::parse(head),
                data,
                written: g.written,
                buffers: nbufs,
                truncated: g.truncated,
            });
            got += 1;
        }
        got
    }

    /// Convenience (allocates): reaps up to `max` packets and returns their payloads.
    pub fn recv(&mut self, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.poll_rx(max, |p| out.push(p.data.to_vec()));
        out
    }

    /// How many used elements the next packet takes: 1, or its header's `num_buffers` with
    /// MRG_RXBUF. `None` if they are not all used yet.
    fn buffers_of_next(&mut self) -> Option<u16> {
        let (id, _) = self.ring.peek_used();
        if !self.kind.mergeable || self.hdr_len < NetHdr::SIZE || !self.ring.is_head(id) {
            return Some(1);
        }
        let mut nb = [0u8; 2];
        self.pool.read(id as u16, 10, &mut nb);
        let nb = u16::from_le_bytes(nb).max(1);
        if nb <= self.ring.used_ready(nb) {
            Some(nb)
        } else if nb <= self.ring.outstanding() {
            None // the rest is still being written
        } else {
            self.stats.bad_num_buffers += 1;
            Some(1)
        }
    }

    /// Pops `nbufs` used elements and copies what the device wrote into the scratch buffer,
    /// up to `limit` bytes.
    fn gather(&mut self, nbufs: u16, limit: usize) -> Gathered {
        let slot = self.pool.slot_len();
        let mut total = 0;
        let mut written = 0;
        let mut popped = 0;
        let mut truncated = false;
        for _ in 0..nbufs {
            let Some(u) = self.ring.pop_used() else {
                break;
            };
            popped += 1;
            let cap = self.kind.cap[usize::from(u.head)];
            if u.len > cap {
                self.stats.bad_len += 1;
            }
            let mut left = u.len.min(cap) as usize;
            written += left;
            for id in self.ring.chain(u.head, u.ndesc) {
                if left == 0 {
                    break;
                }
                let take = left.min(slot);
                left -= take;
                let room = self.kind.scratch.len() - total;
                let copy = take.min(room).min(limit.saturating_sub(total));
                let dst = &mut self.kind.scratch[total..total + copy];
                total += self.pool.read(id, 0, dst);
                truncated |= take > room && limit == usize::MAX;
            }
        }
        if truncated {
            self.stats.truncated += 1;
        }
        Gathered {
            len: total,
            written,
            popped,
            truncated,
        }
    }
}

/// What [`RxQueue::gather`] collected for one packet.
struct Gathered {
    /// Bytes copied into the scratch buffer.
    len: usize,
    /// Bytes the device wrote (clamped to the buffers).
    written: usize,
    /// Valid used elements popped.
    popped: u16,
    /// Some bytes did not fit in the scratch buffer.
    truncated: bool,
}

impl Queue<Tx> {
    /// A transmit queue.
    pub(crate) fn new_tx(
        vring: u16,
        ring: QueueRing,
        pool: SlotPool,
        kick: Option<EventFd>,
        call: Option<EventFd>,
        layout: TxLayout,
    ) -> Self {
        Self::with_kind(vring, ring, pool, kick, call, Tx { layout })
    }

    /// Descriptors a packet of `len` payload bytes takes, `None` if more than the ring has.
    pub fn descs_for(&self, len: usize) -> Option<u16> {
        let slot = self.pool.slot_len();
        let n = match self.kind.layout {
            TxLayout::Inline => (self.hdr_len + len).div_ceil(slot),
            TxLayout::Separate => 1 + len.div_ceil(slot),
        };
        u16::try_from(n).ok().filter(|&n| n <= self.ring.size())
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> u16 {
        self.ring.free_count()
    }

    /// Packets sent and not yet reaped.
    pub fn in_flight(&self) -> u16 {
        self.ring.outstanding()
    }

    /// Sends packets with an all-zero virtio-net header (no offload). See
    /// [`send_with_hdr`](Self::send_with_hdr).
    pub fn send(&mut self, pkts: &[&[u8]]) -> usize {
        self.send_with_hdr(&NetHdr::default(), pkts)
    }

    /// Sends packets with header `hdr`: one descriptor chain each, published together, with
    /// at most one kick. Reaps used entries when descriptors run short. Returns how many
    /// packets were queued: a prefix of `pkts`, shorter when the ring is full or a packet
    /// needs more descriptors than the ring has.
    pub fn send_with_hdr(&mut self, hdr: &NetHdr, pkts: &[&[u8]]) -> usize {
        let hdr_bytes = hdr.to_bytes();
        let hdr = &hdr_bytes[..self.hdr_len];
        let mut sent = 0;
        for pkt in pkts {
            let Some(n) = self.descs_for(pkt.len()) else {
                self.stats.oversize += 1;
                break;
            };
            if self.ring.free_count() < n {
                self.reap();
                if self.ring.free_count() < n {
                    self.stats.full += 1;
                    break;
                }
            }
            let pool = &self.pool;
            let slot = pool.slot_len();
            let separate = self.kind.layout == TxLayout::Separate;
            let seg = |i: u16, id: u16| {
                let i = usize::from(i);
                let len = if separate {
                    match i {
                        0 => pool.write(id, 0, hdr),
                        _ => pool.write(id, 0, window(pkt, (i - 1) * slot, i * slot)),
                    }
                } else {
                    write_stream(pool, id, hdr, pkt, i * slot, (i + 1) * slot)
                };
                (pool.gpa(id), len as u32, false)
            };
            if self.ring.add_chain(n, seg).is_none() {
                break;
            }
            self.stats.packets += 1;
            self.stats.bytes += pkt.len() as u64;
            sent += 1;
        }
        if sent > 0 {
            self.publish_and_kick();
        }
        sent
    }

    /// Reaps used transmit chains, freeing their descriptors; returns how many.
    pub fn reap(&mut self) -> usize {
        let mut n = 0;
        while self.ring.pop_used().is_some() {
            n += 1;
        }
        n
    }

    /// Largest payload one packet can have.
    pub fn max_packet_len(&self) -> usize {
        let slot = self.pool.slot_len();
        let total = usize::from(self.ring.size()) * slot;
        match self.kind.layout {
            TxLayout::Inline => total - self.hdr_len,
            TxLayout::Separate => total - slot,
        }
    }
}

/// `bytes[start..end]`, clamped to the slice.
fn window(bytes: &[u8], start: usize, end: usize) -> &[u8] {
    let end = end.min(bytes.len());
    bytes.get(start.min(end)..end).unwrap_or(&[])
}

/// Writes bytes `[start, end)` of the stream `hdr ++ pkt` at the start of slot `id`.
fn write_stream(
    pool: &SlotPool,
    id: u16,
    hdr: &[u8],
    pkt: &[u8],
    start: usize,
    end: usize,
) -> usize {
    let h = window(hdr, start, end);
    let at = pool.write(id, 0, h);
    let p = window(
        pkt,
        start.saturating_sub(hdr.len()),
        end.saturating_sub(hdr.len()),
    );
    at + pool.write(id, at, p)
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
