//! Virtqueue state shared by the control plane and the data plane.
//!
//! Each queue of a device is a [`Vring`] behind its own spin lock ([`lock::VringLock`]). The
//! control thread takes the lock while a request changes what the data plane reads (addresses, base, memory table,
//! features, enable); the data plane takes it with `try_lock` once per burst and does nothing
//! when it cannot.
//!
//! Ring addresses are validated once, when they are set or when the memory table changes
//! (virtio 1.2 §2.7: descriptor table 16-byte aligned, available ring 2-byte aligned, used ring
//! 4-byte aligned; each ring must lie in one region), and kept as [`GuestArea`]s, so the data
//! plane never translates them again.

pub mod async_queue;
pub mod lock;
pub mod packed;
pub mod split;
pub mod stats;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use thiserror::Error;

use crate::features::{VHOST_F_LOG_ALL, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX};
use crate::memory::{DirtyLog, FrontendVa, GuestArea, GuestMemory};
use crate::protocol::payload::VringAddr;
use packed::{InFlightIds, PackedRings, RingPos, StagedUsed};

/// Chains a packed burst remembers to give back ([`Vring`]'s `packed_recent`): more than one
/// packet may take (the data path's `MAX_CHAINS`) plus the one that stopped it.
pub(crate) const PACKED_RECENT: usize = 128;

/// Largest queue size a split ring may have (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u32 = 32768;

/// Size of a split-ring descriptor (`struct virtq_desc`).
pub const DESC_SIZE: u64 = 16;

/// What SET_VRING_ADDR carried: the three rings as frontend virtual addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringAddrs {
    /// `VHOST_VRING_F_LOG` ([`VringAddr::F_LOG`]): log the used ring's writes at `log`.
    ///
    /// [`VringAddr::F_LOG`]: crate::protocol::payload::VringAddr::F_LOG
    pub flags: u32,
    /// Descriptor table.
    pub desc: FrontendVa,
    /// Used ring.
    pub used: FrontendVa,
    /// Available ring.
    pub avail: FrontendVa,
    /// Guest-physical address of the used ring, where its writes are marked in the dirty log
    /// (with `F_LOG`; not checked against the memory table: the spec allows any address the
    /// log holds, and the log's bounds are checked at each marking).
    pub log: u64,
}

/// [`Vring::dirty_log`] from a vring's fields (for a caller holding them borrowed apart, as
/// `Burst::begin` does): `log` while `features` have `VHOST_F_LOG_ALL`.
#[inline]
pub(crate) fn active_log(log: &Option<Arc<DirtyLog>>, features: u64) -> Option<&DirtyLog> {
    log.as_deref().filter(|_| features & VHOST_F_LOG_ALL != 0)
}

/// [`Vring::used_log`] from a vring's fields: `log` and the used ring's guest address when
/// `addrs` ask for the used ring's writes to be logged (`VHOST_VRING_F_LOG`).
#[inline]
pub(crate) fn used_ring_log(
    log: Option<&DirtyLog>,
    addrs: Option<VringAddrs>,
) -> Option<(&DirtyLog, u64)> {
    match (log, addrs) {
        (Some(l), Some(a)) if a.flags & VringAddr::F_LOG != 0 => Some((l, a.log)),
        _ => None,
    }
}

/// [`used_ring_log`] for a packed ring: the log and the descriptor ring's guest-physical
/// address, where its used descriptors are written (SET_VRING_ADDR's log address is the device
/// area's for a packed ring, which is not what the device writes). The address is looked up
/// only while the ring's writes are logged.
#[inline]
pub(crate) fn packed_used_log<'l>(
    log: Option<&'l DirtyLog>,
    addrs: Option<VringAddrs>,
    mem: &GuestMemory,
) -> Option<(&'l DirtyLog, u64)> {
    let (l, _) = used_ring_log(log, addrs)?;
    let gpa = mem.fva_to_gpa(addrs?.desc)?;
    Some((l, gpa.raw()))
}

/// A queue's rings, translated and checked against its size and the memory table.
#[derive(Debug, Clone)]
pub struct SplitRings {
    /// `struct virtq_desc[size]` (the descriptor table).
    pub desc: GuestArea,
    /// `struct virtq_avail` (flags, idx, `ring[size]`, used_event).
    pub avail: GuestArea,
    /// `struct virtq_used` (flags, idx, `ring[size]`, avail_event).
    pub used: GuestArea,
}

/// Why a queue's configuration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VringError {
    /// Size zero, not a power of two, or above 32768.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u32),
    /// A ring address is not aligned as the spec requires.
    #[error("{ring} ring address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which ring.
        ring: &'static str,
        /// The address.
        addr: u64,
        /// Required alignment.
        align: u64,
    },
    /// A ring does not lie inside one memory region.
    #[error("{ring} ring [{addr:#x}, +{len:#x}) is not inside one memory region")]
    Unmapped {
        /// Which ring.
        ring: &'static str,
        /// Its frontend address.
        addr: u64,
        /// Its length for the queue size.
        len: u64,
    },
    /// SET_VRING_BASE with an index beyond what the ring allows: above 16 bits on a split
    /// ring, a slot beyond the queue size on a packed ring.
    #[error("ring base {0:#x} is out of range")]
    BadBase(u32),
}

/// One virtqueue's state.
#[derive(Debug, Default)]
pub struct Vring {
    /// Queue size (SET_VRING_NUM); 0 until set.
    pub size: u16,
    /// Ring addresses (SET_VRING_ADDR).
    pub addrs: Option<VringAddrs>,
    /// Translated split rings; `Some` only when size, addresses and memory agree and the
    /// features do not have `VIRTIO_F_RING_PACKED`.
    pub rings: Option<SplitRings>,
    /// Translated packed ring (descriptor ring and the two event suppression areas); `Some`
    /// only when size, addresses and memory agree and the features have
    /// `VIRTIO_F_RING_PACKED`. At most one of `rings` and `packed` is `Some`.
    pub packed: Option<PackedRings>,
    /// The memory table the rings and descriptors are translated with.
    pub mem: GuestMemory,
    /// The dirty log (SET_LOG_BASE), shared by the device's vrings; written only while the
    /// features have `VHOST_F_LOG_ALL`. Replaced under the vring's lock, so a log is unmapped
    /// only when no vring holds it.
    pub log: Option<Arc<DirtyLog>>,
    /// Split ring: next available-ring index to process (SET_VRING_BASE / GET_VRING_BASE).
    pub last_avail_idx: u16,
    /// Split ring: next used-ring index to write.
    pub last_used_idx: u16,
    /// Split ring: how many used entries before `last_used_idx` are written but not yet
    /// published in `used.idx` (a transmit queue's last ones, held back for a polling guest:
    /// see `net::burst`'s `HOLD_MAX`). The next burst publishes them, and so does any change
    /// to the ring ([`release_held`](Self::release_held)).
    pub(crate) used_held: u16,
    /// When the last chain of the held entries was taken ([`crate::lcore::ticks`]).
    pub(crate) held_since: u64,
    /// Packed ring, transmit queue: the first slot of the used descriptors our dequeue
    /// bursts wrote and have not yet written back from our cache (see `net::packed_burst`'s
    /// `WRITE_BACK_MAX`); `None` when there are none.
    pub(crate) packed_unclean: Option<u16>,
    /// Packed ring, transmit queue: the transmit buffers our dequeue bursts read since the
    /// last poll that found nothing, as host line address | line count (see `net::packed_burst`'s
    /// `READ_MAX`); their lines are demoted from our caches at that poll.
    pub(crate) packed_read: Vec<usize>,
    /// Packed ring: the next slot to read and its wrap counter (SET_VRING_BASE /
    /// GET_VRING_BASE, bits 0-15).
    pub avail_pos: RingPos,
    /// Packed ring: the next slot to write a used descriptor at and its wrap counter
    /// (GET_VRING_BASE, bits 16-31).
    pub used_pos: RingPos,
    /// Packed ring: the buffer ids taken and not yet returned (a driver that makes one
    /// available twice breaks the ring; none goes back twice).
    pub(crate) packed_ids: InFlightIds,
    /// Packed ring: scratch of the data path, the used descriptors of the current burst
    /// (sized to the queue when the ring is translated).
    pub(crate) packed_shadow: Vec<StagedUsed>,
    /// Packed ring: scratch of the data path, the chains a burst took, by take order modulo
    /// [`PACKED_RECENT`] (kept here so that a burst does not clear it: see `PackedBurst`);
    /// made by the first packed burst.
    pub(crate) packed_recent: Option<Box<[(RingPos, u16); PACKED_RECENT]>>,
    /// Kick eventfd (frontend → backend); `None` with `kick_set` means polling mode.
    pub kick: Option<OwnedFd>,
    /// SET_VRING_KICK was received (with an fd or the no-fd flag).
    pub kick_set: bool,
    /// Call eventfd (backend → frontend); `None` with `call_set` means no interrupts.
    pub call: Option<OwnedFd>,
    /// SET_VRING_CALL was received.
    pub call_set: bool,
    /// Error eventfd.
    pub err: Option<OwnedFd>,
    /// Enabled (SET_VRING_ENABLE, or by the first kick without PROTOCOL_FEATURES).
    pub enabled: bool,
    /// Started by a kick and not stopped by GET_VRING_BASE since.
    pub started: bool,
    /// Negotiated virtio features, for ring layout (EVENT_IDX) and the data path.
    pub features: u64,
    /// Marked broken by the data path (a hostile avail ring); cleared by a new base.
    pub broken: bool,
    /// Data-path counters.
    pub stats: QueueStats,
    /// Scratch of the data path: used entries of the current burst (see
    /// [`split::UsedShadow`]).
    pub used_shadow: split::UsedShadow,
    /// Limits the data path's log lines about this vring (malformed chains).
    pub log_limit: crate::ratelimit::LogLimiter,
    /// A hint of the receive path: the last virtio-net header it placed had to be written
    /// (the buffer held other bytes), so the next header's line is asked for to be written
    /// rather than read (see `net::enqueue::prefetch_ahead`).
    pub hdr_written: bool,
    /// The data path's translation memo, kept across bursts (a new one per burst made every
    /// burst's first translation a search of the table): only a hint, used only with the
    /// table it came from ([`TranslationCache`](crate::memory::TranslationCache)).
    pub(crate) memo: crate::memory::TranslationCache,
    /// The asynchronous copy channel, if the application registered one.
    pub(crate) async_q: Option<Box<async_queue::AsyncQueue>>,
}

/// Per-queue counters, updated by the data path once per burst (read them without the lock
/// through [`stats::VringStats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets moved.
    pub packets: u64,
    /// Bytes moved (packet bytes, without the virtio-net header).
    pub bytes: u64,
    /// Descriptor chains refused as malformed (returned to the guest with length 0).
    pub bad_chains: u64,
    /// Packets dropped because they did not fit (LINEARBUF, or larger than any buffer).
    pub too_large: u64,
    /// Bursts cut short because no mbuf could be allocated.
    pub alloc_failures: u64,
    /// Interrupts (call eventfd writes) sent to the guest.
    pub interrupts: u64,
    /// Bursts that found the vring not ready (not started, disabled, rings not translated).
    pub not_ready: u64,
    /// Bursts that found the vring broken.
    pub broken_bursts: u64,
    /// Times the data path marked the vring broken.
    pub breaks: u64,
    /// Enqueue bursts that published their first used entries before the end of the burst
    /// (to a guest waiting with all its receive buffers posted and nothing left to send).
    pub early_publishes: u64,
}

impl Vring {
    /// Whether the features have `VIRTIO_F_RING_PACKED`: the queue is a packed ring.
    pub fn is_packed(&self) -> bool {
        self.features & VIRTIO_F_RING_PACKED != 0
    }

    /// Sets the queue size: 1..=32768, and a power of two on a split ring (a packed ring may
    /// have any size; virtio 1.2 §2.7, §2.8). QEMU and DPDK negotiate the features before the
    /// sizes; [`translate`](Self::translate) checks the rule again if they change after.
    pub fn set_size(&mut self, num: u32) -> Result<(), VringError> {
        self.settle("SET_VRING_NUM");
        if num == 0 || num > MAX_QUEUE_SIZE || (!self.is_packed() && !num.is_power_of_two()) {
            return Err(VringError::BadSize(num));
        }
        // num <= 32768 fits in u16. The ring lengths depend on the size: translate again.
        self.size = num as u16;
        self.translate()
    }

    /// Sets the ring addresses after checking their alignment, and translates them if the
    /// size and a memory table are known.
    pub fn set_addrs(&mut self, addrs: VringAddrs) -> Result<(), VringError> {
        self.settle("SET_VRING_ADDR");
        for (ring, addr, align) in [
            ("descriptor", addrs.desc.raw(), 16),
            ("available", addrs.avail.raw(), 2),
            ("used", addrs.used.raw(), 4),
        ] {
            if addr % align != 0 {
                return Err(VringError::Misaligned { ring, addr, align });
            }
        }
        self.addrs = Some(addrs);
        self.forget_rings();
        self.translate()
    }

    /// Sets where the ring resumes (SET_VRING_BASE). Split ring: the next available index,
    /// the low 16 bits (the rest must be zero). Packed ring: bits 0-14 the next available
    /// slot, bit 15 its wrap counter; the used position is set to the same place, as DPDK
    /// does: a ring is stopped (GET_VRING_BASE) only with every chain it took returned, so the
    /// two agree, and a DPDK virtio-user frontend sends 0 in bits 16-31. A slot beyond the
    /// queue size is refused (if the size is not known yet, `translate` checks it).
    pub fn set_base(&mut self, num: u32) -> Result<(), VringError> {
        self.settle("SET_VRING_BASE");
        if self.is_packed() {
            let (idx, wrap) = packed::unpack_base(num as u16);
            if num >> 16 != 0 && num >> 16 != num & 0xffff {
                log::debug!(
                    "packed vring base {num:#x}: used half ignored, the used position resumes \
                     at the available one"
                );
            }
            if self.size != 0 && idx >= self.size {
                return Err(VringError::BadBase(num));
            }
            self.avail_pos = RingPos::new(idx, wrap);
            self.used_pos = self.avail_pos;
        } else {
            let base = u16::try_from(num).map_err(|_| VringError::BadBase(num))?;
            self.last_avail_idx = base;
            self.last_used_idx = base;
        }
        self.broken = false;
        Ok(())
    }

    /// The vring base GET_VRING_BASE answers: the next available index on a split ring; on a
    /// packed ring the available position in bits 0-15 and the used one in bits 16-31 (the
    /// vhost-user spec's layout; QEMU reads both halves).
    pub fn base(&self) -> u32 {
        if self.is_packed() {
            packed::encode_vring_base(self.avail_pos, self.used_pos)
        } else {
            u32::from(self.last_avail_idx)
        }
    }

    /// Replaces the memory table and re-translates the rings with it.
    pub fn set_memory(&mut self, mem: GuestMemory) -> Result<(), VringError> {
        self.settle("a memory table change");
        self.mem = mem;
        self.forget_rings();
        self.translate()
    }

    /// Replaces the dirty log (`None`: no log).
    pub fn set_log(&mut self, log: Option<Arc<DirtyLog>>) {
        self.settle("a dirty log change");
        self.log = log;
    }

    /// The dirty log the data path marks its writes of guest memory in: while the features
    /// have `VHOST_F_LOG_ALL` and SET_LOG_BASE gave one.
    pub fn dirty_log(&self) -> Option<&DirtyLog> {
        active_log(&self.log, self.features)
    }

    /// The dirty log and the used ring's guest-physical address, when the used ring's writes
    /// are logged too (`VHOST_VRING_F_LOG` in SET_VRING_ADDR).
    pub fn used_log(&self) -> Option<(&DirtyLog, u64)> {
        used_ring_log(self.dirty_log(), self.addrs)
    }

    /// Byte lengths of (descriptor table, available ring, used ring) for the current size.
    pub fn ring_lengths(&self) -> (u64, u64, u64) {
        let n = u64::from(self.size);
        let event = if self.features & VIRTIO_RING_F_EVENT_IDX != 0 {
            2
        } else {
            0
        };
        (DESC_SIZE * n, 4 + 2 * n + event, 4 + 8 * n + event)
    }

    /// Forgets the translated rings of either layout (the data plane stops using them), after
    /// publishing the used entries held back (`release_held`).
    pub fn forget_rings(&mut self) {
        self.release_held();
        self.rings = None;
        self.packed = None;
    }

    /// Translates the rings if size, addresses and memory are all set, as a split or a packed
    /// ring as the features say. An address that is not inside one region, or a size or base
    /// the layout does not allow, is an error; a missing piece is not (it may come later).
    pub fn translate(&mut self) -> Result<(), VringError> {
        self.forget_rings();
        let Some(a) = self.addrs else { return Ok(()) };
        if self.size == 0 || self.mem.is_empty() {
            return Ok(());
        }
        if self.is_packed() {
            return self.translate_packed(a);
        }
        // The features may have changed since SET_VRING_NUM.
        if !self.size.is_power_of_two() {
            return Err(VringError::BadSize(u32::from(self.size)));
        }
        let (dl, al, ul) = self.ring_lengths();
        let area = |ring, va: FrontendVa, len| {
            self.mem.fva_area(va, len).ok_or(VringError::Unmapped {
                ring,
                addr: va.raw(),
                len,
            })
        };
        let rings = SplitRings {
            desc: area("descriptor", a.desc, dl)?,
            avail: area("available", a.avail, al)?,
            used: area("used", a.used, ul)?,
        };
        // As DPDK: the used index in guest memory is the truth after a (re)connect; a base
        // that disagrees would re-send or lose buffers.
        let used_idx = rings
            .used
            .slice()
            .load_u16(2, std::sync::atomic::Ordering::Acquire)
            .unwrap_or(self.last_used_idx);
        if used_idx != self.last_used_idx {
            log::warn!(
                "vring base {} disagrees with used.idx {used_idx}; resuming from used.idx",
                self.last_used_idx
            );
            self.last_used_idx = used_idx;
            self.last_avail_idx = used_idx;
        }
        self.rings = Some(rings);
        Ok(())
    }

    /// The packed half of [`translate`](Self::translate). Unlike the split ring's used index,
    /// nothing in a packed ring's memory says where the device stopped (a used descriptor's
    /// flags tell only its lap): the base from SET_VRING_BASE is the truth, as in DPDK.
    fn translate_packed(&mut self, a: VringAddrs) -> Result<(), VringError> {
        let rings = PackedRings::new(&self.mem, &a, u32::from(self.size))?;
        for pos in [self.avail_pos, self.used_pos] {
            if pos.idx() >= self.size {
                return Err(VringError::BadBase(self.base()));
            }
        }
        self.packed = Some(rings);
        self.packed_ids = InFlightIds::new(self.size);
        self.packed_shadow = Vec::with_capacity(usize::from(self.size));
        self.packed_unclean = None;
        self.packed_read = Vec::with_capacity(crate::net::PACKED_READ_MAX);
        Ok(())
    }

    /// Sets the negotiated features (the used/avail ring lengths depend on EVENT_IDX).
    pub fn set_features(&mut self, features: u64) -> Result<(), VringError> {
        self.settle("SET_FEATURES");
        self.features = features;
        self.translate()
    }

    /// Before a setter changes the rings or the memory: copies still in flight would write
    /// into buffers of chains the change forgets (or into memory it unmaps), and their
    /// packets would never retire. The control thread quiesced the vring before the handler
    /// (the handler table's `data_plane` column); finding copies here is a bug of that table,
    /// logged, and the copies are drained now so the guest and the application lose nothing.
    fn settle(&mut self, what: &str) {
        self.release_held();
        if let Some(aq) = self.async_q.as_mut().filter(|a| a.in_flight()) {
            aq.stats.late_drains += 1;
            log::error!("{what} with copies in flight on a vring not quiesced first: draining");
            self.drain_async();
        }
    }

    /// Publishes the used entries a transmit queue's bursts held back (`used_held`), with
    /// their dirty-log marks: before the ring stops (GET_VRING_BASE), changes or resets, or an
    /// async channel takes it over, so that `used.idx` says where the device stopped. Nothing
    /// if none are held, or the rings are gone.
    pub(crate) fn release_held(&mut self) {
        let held = std::mem::take(&mut self.used_held);
        let Some(rings) = self.rings.as_ref().filter(|_| held != 0) else {
            return;
        };
        let q = split::SplitQueue::new(rings, &self.mem, self.size);
        q.publish_used(self.last_used_idx);
        let log = active_log(&self.log, self.features);
        if let Some((log, gpa)) = used_ring_log(log, self.addrs) {
            q.log_used(
                log,
                gpa,
                self.last_used_idx.wrapping_sub(held),
                self.last_used_idx,
            );
        }
    }

    /// Whether a data-plane burst may start: not broken and ready; otherwise counted
    /// (`broken_bursts` or `not_ready`). The first step of every burst, on either layout.
    #[inline]
    pub fn burst_may_start(&mut self) -> bool {
        if self.broken {
            self.stats.broken_bursts += 1;
            return false;
        }
        if !self.is_ready() {
            self.stats.not_ready += 1;
            return false;
        }
        true
    }

    /// Ready for the data plane: rings translated (either layout), kick and call set, enabled.
    pub fn is_ready(&self) -> bool {
        (self.rings.is_some() || self.packed.is_some())
            && self.kick_set
            && self.call_set
            && self.enabled
    }

    /// Back to the state of a fresh queue, keeping the memory table, the dirty log and the async
    /// channel (drained first: see `settle`).
    pub fn reset(&mut self) {
        self.settle("a reset");
        let mem = std::mem::take(&mut self.mem);
        let log = self.log.take();
        let async_q = self.async_q.take();
        *self = Vring {
            mem,
            log,
            async_q,
            ..Vring::default()
        };
    }
}

#[cfg(test)]
mod tests;
