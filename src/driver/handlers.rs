//! One small function per front-end request, and the table that maps requests to them.
//!
//! The [`policy`](crate::protocol::policy) table has already checked a message's header, size and fd
//! count when a handler runs; the handler parses the payload, checks what depends on device
//! state (indexes, negotiated features, address ranges), and changes the state. A handler that
//! returns `Err` closes the connection; [`Outcome::Failed`] answers a failure status (with
//! REPLY_ACK) and keeps it open.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use thiserror::Error;

use super::device::{DeviceState, Inflight, MAX_QUEUE_PAIRS, lock};
use crate::features::{VHOST_USER_F_PROTOCOL_FEATURES, protocol as pf};
use crate::memory::{
    AddCheck, DirtyLog, FrontendVa, GuestMemory, GuestRegion, MapOptions, MemoryError, RegionDesc,
    Released, VHOST_USER_MAX_MEM_SLOTS, log_bytes_for,
};
use crate::protocol::Message;
use crate::protocol::error::ProtocolError;
use crate::protocol::message::FrontendReq;
use crate::protocol::payload::{
    Config, InflightInfo, LogInfo, MemoryTable, PackedVringBase, Payload, SingleMemRegion,
    VringAddr, VringFile, VringState,
};
use crate::virtq::{MAX_QUEUE_SIZE, VringAddrs, VringError};

/// Why a request closes its connection.
#[derive(Debug, Error)]
pub enum HandlerError {
    /// The message itself is malformed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A memory region or table was refused.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The socket's DMA mapper refused a region of a new memory table.
    #[error(transparent)]
    DmaMap(#[from] super::dma_map::DmaMapError),
    /// A vring setting was refused.
    #[error("vring {index}: {source}")]
    Vring {
        /// The vring.
        index: u32,
        /// What is wrong.
        #[source]
        source: VringError,
    },
    /// A vring index beyond the device's queues.
    #[error("vring index {index} out of range (device has {max} vrings)")]
    VringIndex {
        /// The index sent.
        index: u32,
        /// Vrings the device has.
        max: usize,
    },
    /// The request is not valid in the device's current state.
    #[error("{request}: {reason}")]
    State {
        /// The request name.
        request: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A userfaultfd operation of postcopy failed.
    #[error("postcopy: {0}")]
    Postcopy(#[from] crate::memory::uffd::UffdError),
    /// A request this backend does not implement and cannot answer meaningfully.
    #[error("{0} is not supported (its protocol feature is not offered)")]
    Unsupported(&'static str),
}

/// What a handler produced.
#[derive(Debug)]
pub enum Outcome {
    /// Done; acknowledged with status 0 if the frontend asked (NEED_REPLY).
    Done,
    /// The request's reply payload and fds (requests that always reply).
    Reply(Vec<u8>, Vec<OwnedFd>),
    /// Refused without closing: a failure status if the frontend asked for one.
    Failed(String),
}

/// Side effects the caller runs after the handler, with no locks held.
#[derive(Debug, Default)]
pub struct Effects {
    /// Negotiated features changed (for `features_changed`).
    pub features_changed: Option<u64>,
}

type Handler = fn(&mut DeviceState, &mut Message, &mut Effects) -> Result<Outcome, HandlerError>;

/// What a request does to state the queue workers and the async copy channels read: the
/// dispatcher quiesces that much of the data plane before the handler runs (the one place
/// that rule lives; see [`quiesce`](super::device::DeviceState::quiesce)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataPlane {
    /// Nothing: handled without touching the queues.
    None,
    /// Changes the state of the vring named in the payload ([`vring_named`]): its copies in
    /// flight are drained first.
    Queue,
    /// Changes state every queue reads (memory table, features, IOTLB, log, reset): every
    /// vring's copies in flight are drained first.
    AllQueues,
}

/// One row of the table.
pub(crate) struct Row {
    /// The handler.
    pub handler: Handler,
    /// The request changes device state, so it needs an owner (SET_OWNER first).
    pub needs_owner: bool,
    /// The device must stop (destroy_device) before the handler runs.
    pub stops_device: bool,
    /// What of the data plane must be quiet before the handler runs.
    pub data_plane: DataPlane,
}

/// The table: for each request its handler, whether it needs an owner, whether it stops the
/// device, and what it changes under the data plane. The wire rules (payload size, fds,
/// reply) are [`policy`](crate::protocol::policy::policy)'s, checked before.
pub(crate) fn row(req: FrontendReq) -> Row {
    use DataPlane::{AllQueues as All, None as Nothing, Queue};
    use FrontendReq as R;
    let (handler, needs_owner, stops_device, data_plane): (Handler, bool, bool, DataPlane) =
        match req {
            R::GetFeatures => (get_features, false, false, Nothing),
            R::SetFeatures => (set_features, true, false, All),
            R::SetOwner => (set_owner, false, false, Nothing),
            R::ResetOwner => (reset_owner, false, true, All),
            R::SetMemTable => (set_mem_table, true, false, All),
            R::SetLogBase => (set_log_base, true, false, All),
            R::SetLogFd => (set_log_fd, true, false, Nothing),
            R::SetVringNum => (set_vring_num, true, false, Queue),
            R::SetVringAddr => (set_vring_addr, true, false, Queue),
            R::SetVringBase => (set_vring_base, true, false, Queue),
            R::GetVringBase => (get_vring_base, true, true, Queue),
            R::SetVringKick => (set_vring_kick, true, false, Queue),
            R::SetVringCall => (set_vring_call, true, false, Queue),
            R::SetVringErr => (set_vring_err, true, false, Queue),
            R::GetProtocolFeatures => (get_protocol_features, false, false, Nothing),
            R::SetProtocolFeatures => (set_protocol_features, false, false, Nothing),
            R::GetQueueNum => (get_queue_num, false, false, Nothing),
            R::SetVringEnable => (set_vring_enable, true, false, Queue),
            R::SendRarp => (send_rarp, true, false, Nothing),
            R::NetSetMtu => (net_set_mtu, true, false, Nothing),
            R::SetBackendReqFd => (set_backend_req_fd, false, false, Nothing),
            R::GetConfig => (get_config, false, false, Nothing),
            R::SetConfig => (set_config, true, false, Nothing),
            R::GetInflightFd => (get_inflight_fd, true, false, Nothing),
            R::SetInflightFd => (set_inflight_fd, true, false, All),
            R::ResetDevice => (reset_device, false, true, All),
            R::GetMaxMemSlots => (get_max_mem_slots, false, false, Nothing),
            R::AddMemReg => (add_mem_reg, true, false, All),
            R::RemMemReg => (rem_mem_reg, true, false, All),
            R::SetStatus => (set_status, false, false, All),
            R::GetStatus => (get_status, false, false, Nothing),
            R::PostcopyAdvise => (super::postcopy::advise, true, false, Nothing),
            R::PostcopyListen => (super::postcopy::listen, true, false, Nothing),
            R::PostcopyEnd => (super::postcopy::end, true, false, Nothing),
            // Refused below without touching any state.
            _ => (unsupported, false, false, Nothing),
        };
    Row {
        handler,
        needs_owner,
        stops_device,
        data_plane,
    }
}

/// The vring a [`DataPlane::Queue`] request names (`None` for other requests or a payload
/// that does not parse: the handler refuses those).
pub(crate) fn vring_named(req: FrontendReq, payload: &[u8]) -> Option<u32> {
    match req {
        FrontendReq::SetVringNum
        | FrontendReq::SetVringBase
        | FrontendReq::GetVringBase
        | FrontendReq::SetVringEnable
        | FrontendReq::SetVringEndian
        | FrontendReq::VringKick => VringState::parse(payload).ok().map(|s| s.index),
        FrontendReq::SetVringAddr => VringAddr::parse(payload).ok().map(|a| a.index),
        FrontendReq::SetVringKick | FrontendReq::SetVringCall | FrontendReq::SetVringErr => {
            VringFile::parse(payload).ok().map(|f| f.index.into())
        }
        _ => None,
    }
}

fn parse<T: Payload>(msg: &Message) -> Result<T, HandlerError> {
    Ok(msg.parse_payload::<T>()?)
}

fn reply_u64(v: u64) -> Outcome {
    Outcome::Reply(v.to_ne_bytes().to_vec(), Vec::new())
}

fn state_err(req: FrontendReq, reason: impl Into<String>) -> HandlerError {
    HandlerError::State {
        request: req.name(),
        reason: reason.into(),
    }
}

/// Checks a vring index against the device's queues.
fn vring_index(dev: &DeviceState, index: u32) -> Result<usize, HandlerError> {
    let max = dev.dev.max_vrings();
    match usize::try_from(index) {
        Ok(i) if i < max => Ok(i),
        _ => Err(HandlerError::VringIndex { index, max }),
    }
}

fn vring_err(index: usize) -> impl FnOnce(VringError) -> HandlerError {
    move |source| HandlerError::Vring {
        index: index as u32,
        source,
    }
}

/// A SET of feature bits may only acknowledge bits that were offered.
fn offered(req: FrontendReq, features: u64, offer: u64) -> Result<(), HandlerError> {
    let extra = features & !offer;
    if extra == 0 {
        return Ok(());
    }
    Err(state_err(
        req,
        format!("features {extra:#x} were not offered (offered {offer:#x})"),
    ))
}

fn get_features(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    Ok(reply_u64(dev.cfg.features))
}

fn set_features(
    dev: &mut DeviceState,
    msg: &mut Message,
    fx: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let features: u64 = parse(msg)?;
    offered(FrontendReq::SetFeatures, features, dev.cfg.features)?;
    if dev.running && features != dev.features {
        fx.features_changed = Some(features);
    }
    dev.features = features;
    for (i, q) in dev.dev.shared.queues.iter().enumerate() {
        let mut vq = q.lock();
        if let Err(e) = vq.set_features(features) {
            log::warn!("{}: vring {i} after SET_FEATURES: {e}", dev.dev.id());
        }
    }
    dev.publish();
    Ok(Outcome::Done)
}

fn set_owner(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    dev.owner = true;
    Ok(Outcome::Done)
}

fn reset_owner(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    // As DPDK: forget everything negotiated, the memory table and the rings.
    dev.reset_vrings();
    dev.clear_memory();
    dev.features = 0;
    dev.protocol_features = 0;
    dev.status = 0;
    dev.owner = false;
    dev.inflight = None;
    dev.set_log(None);
    dev.postcopy.reset();
    dev.publish();
    Ok(Outcome::Done)
}

fn reset_device(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    // The spec keeps ownership (and with it the negotiated protocol features and the
    // backend channel); rings, features and status go back to their initial state.
    dev.reset_vrings();
    dev.features = 0;
    dev.status = 0;
    dev.inflight = None;
    dev.publish();
    Ok(Outcome::Done)
}

/// Maps every region of a table, each with its fd. Nothing is kept if one fails.
fn map_regions(
    dev: &DeviceState,
    regions: &[crate::protocol::payload::MemoryRegion],
    fds: Vec<OwnedFd>,
) -> Result<GuestMemory, HandlerError> {
    let mapped = regions
        .iter()
        .zip(fds)
        .map(|(r, fd)| GuestRegion::map(fd, desc_of(r), map_options(dev)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GuestMemory::new(mapped, dev.limits)?)
}

pub(super) fn desc_of(r: &crate::protocol::payload::MemoryRegion) -> RegionDesc {
    RegionDesc {
        guest_phys_addr: r.guest_phys_addr,
        memory_size: r.memory_size,
        userspace_addr: r.userspace_addr,
        mmap_offset: r.mmap_offset,
    }
}

pub(super) fn map_options(dev: &DeviceState) -> MapOptions {
    let mut opts = MapOptions {
        guard_pages: dev.guard_pages,
        ..MapOptions::new()
    };
    if dev.dev.flags().contains(crate::driver::Flags::ASYNC_COPY) {
        // A copy device writes guest memory without faulting pages in (and with an IOMMU
        // needs them pinned): populate and lock, as DPDK does for async vrings.
        opts.populate = true;
        opts.lock = true;
    }
    opts
}

fn set_mem_table(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let table: MemoryTable = parse(msg)?;
    if table.regions.len() != msg.fds.len() {
        return Err(state_err(
            FrontendReq::SetMemTable,
            format!("{} regions but {} fds", table.regions.len(), msg.fds.len()),
        ));
    }
    let descs: Vec<RegionDesc> = table.regions.iter().map(desc_of).collect();
    // Every table follows the table's rules, the one held again included: a table naming a
    // held region twice overlaps itself and is refused here, not taken for the held table.
    GuestMemory::check_table(&descs, dev.limits)?;
    let postcopy = super::postcopy::listening(dev);
    // QEMU re-sends identical tables; keep the mapping (the new fds are closed on drop).
    if !dev.mem.is_empty() && dev.mem.holds_exactly(&descs) {
        dev.mem.reset_frontend_refs();
        if postcopy {
            return super::postcopy::answer_table(dev, &table, None);
        }
        return Ok(Outcome::Done);
    }
    let mem = map_regions(dev, &table.regions, std::mem::take(&mut msg.fds))?;
    if postcopy {
        // Installed (and registered) once the frontend acknowledges the addresses.
        return super::postcopy::answer_table(dev, &table, Some(mem));
    }
    install(dev, msg, mem)
}

/// ADD_MEM_REG. An exact duplicate of a region in the table (QEMU sends one per queue pair:
/// each of its vhost devices keeps its own view of the guest's memory) counts a reference
/// when the fd is the same backing file; its fd is closed. Anything else that overlaps is
/// refused ([`refuse_memory`]).
fn add_mem_reg(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    require_protocol(dev, FrontendReq::AddMemReg, pf::CONFIGURE_MEM_SLOTS)?;
    if super::postcopy::listening(dev) {
        return super::postcopy::add_region(dev, msg);
    }
    let reg: SingleMemRegion = parse(msg)?;
    let desc = desc_of(&reg.region);
    let fd = msg
        .take_fd()
        .ok_or_else(|| state_err(FrontendReq::AddMemReg, "no fd"))?;
    match dev.mem.check_add(&desc) {
        Ok(AddCheck::New) => {}
        Ok(AddCheck::Duplicate(held)) => {
            if !held.same_file(fd.as_fd())? {
                return refuse_memory(msg, MemoryError::OtherFile(desc));
            }
            let refs = held.add_frontend_ref()?;
            log::debug!(
                "{}: ADD_MEM_REG {desc} again: {refs} references",
                dev.dev.id()
            );
            return Ok(Outcome::Done); // `fd` closes here
        }
        Err(e) => return refuse_memory(msg, e),
    }
    let region = GuestRegion::map(fd, desc, map_options(dev))?;
    let mem = dev.mem.with_added(region)?;
    install(dev, msg, mem)
}

/// Installs a new memory table. The socket's DMA mapper refusing one of its regions refuses the
/// request as a refused region is ([`refuse`]): the old table stays, nothing of the new one
/// stays mapped (its regions are unmapped, their fds closed, as the table drops).
fn install(
    dev: &mut DeviceState,
    msg: &Message,
    mem: GuestMemory,
) -> Result<Outcome, HandlerError> {
    match dev.set_memory(mem) {
        Ok(()) => Ok(Outcome::Done),
        Err(e) => refuse(msg, e.into()),
    }
}

/// REM_MEM_REG: drops one reference; the region leaves the table with the last one.
fn rem_mem_reg(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    require_protocol(dev, FrontendReq::RemMemReg, pf::CONFIGURE_MEM_SLOTS)?;
    let reg: SingleMemRegion = parse(msg)?;
    let desc = desc_of(&reg.region);
    // A stray fd is closed unused (spec), by dropping the message's fds.
    msg.fds.clear();
    match dev.mem.with_released(&desc) {
        Ok(Released::StillHeld { refs }) => {
            log::debug!(
                "{}: REM_MEM_REG {desc}: still held, {refs} references left",
                dev.dev.id()
            );
        }
        // A table without the region has nothing new to map: not refused.
        Ok(Released::Removed { table, .. }) => return install(dev, msg, table),
        Err(e) => return refuse_memory(msg, e),
    }
    Ok(Outcome::Done)
}

/// A memory region the table cannot take (or a removal of one it does not hold). The table
/// is unchanged either way. When the frontend asked for a reply (REPLY_ACK) it gets a failure
/// status and the connection stays: QEMU then reports `vhost_set_mem_table failed` and stops
/// using the backend for that device, without a reconnect loop. When it did not ask, the
/// connection is closed: the frontend would otherwise go on as if the region were mapped, and
/// the guest's buffers in it would be dropped as unmapped, one by one.
fn refuse_memory(msg: &Message, e: MemoryError) -> Result<Outcome, HandlerError> {
    refuse(msg, e.into())
}

/// A failure status when the frontend asked for one, else the connection closes.
fn refuse(msg: &Message, e: HandlerError) -> Result<Outcome, HandlerError> {
    if msg.header.need_reply() {
        Ok(Outcome::Failed(e.to_string()))
    } else {
        Err(e)
    }
}

/// SET_LOG_BASE (LOG_SHMFD): maps the dirty log from its fd, checked as a memory region is
/// (size 0, beyond the fd's size, `offset + size` overflow, no fd: refused, the fd closed,
/// nothing mapped), and installs it on every vring; the log it replaces is unmapped once no
/// vring holds it. Answered with an empty reply (QEMU waits for one and reads no payload, as
/// DPDK answers). A refused log closes the connection: the reply has no status a frontend
/// reads, so a failure answered with one would be taken for success and the migration would
/// go on unlogged.
///
/// A log smaller than the guest memory it should cover is accepted with a warning: QEMU grows
/// its log after a memory hotplug by sending a larger one, so a short log can be a passing
/// state. The data path never writes beyond it; pages it cannot hold are counted
/// ([`DirtyLog::beyond`]) and logged, rate-limited.
fn set_log_base(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    require_protocol(dev, FrontendReq::SetLogBase, pf::LOG_SHMFD)?;
    let info: LogInfo = parse(msg)?;
    let fd = msg
        .take_fd()
        .ok_or_else(|| state_err(FrontendReq::SetLogBase, "no fd"))?;
    let log = DirtyLog::map(fd, info.mmap_size, info.mmap_offset).map_err(|e| {
        state_err(
            FrontendReq::SetLogBase,
            format!(
                "log of {:#x} bytes at offset {:#x}: {e}",
                info.mmap_size, info.mmap_offset
            ),
        )
    })?;
    let mem_end = dev
        .mem
        .regions()
        .map(|r| r.guest_phys_addr().raw().saturating_add(r.size()))
        .max()
        .unwrap_or(0);
    let need = log_bytes_for(mem_end);
    if log.len() < need {
        log::warn!(
            "{}: SET_LOG_BASE: a log of {} bytes covers guest memory below {:#x}, which reaches {mem_end:#x} ({need} bytes needed): writes above it will not be logged (counted)",
            dev.dev.id(),
            log.len(),
            log.covers()
        );
    }
    log::info!(
        "{}: dirty log of {} bytes mapped (offset {:#x})",
        dev.dev.id(),
        info.mmap_size,
        info.mmap_offset
    );
    dev.set_log(Some(Arc::new(log)));
    Ok(Outcome::Reply(Vec::new(), Vec::new()))
}

/// SET_LOG_FD: an eventfd to tell the frontend the log changed. rvhost never signals it (the
/// frontend reads the log when it syncs): the fd is closed, as DPDK does.
fn set_log_fd(
    _: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    msg.fds.clear();
    Ok(Outcome::Done)
}

fn get_max_mem_slots(
    _: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    Ok(reply_u64(VHOST_USER_MAX_MEM_SLOTS as u64))
}

fn set_vring_num(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let s: VringState = parse(msg)?;
    let i = vring_index(dev, s.index)?;
    let mut vq = dev.dev.shared.queues[i].lock();
    vq.set_size(s.num).map_err(vring_err(i))?;
    drop(vq);
    dev.touch_vring(i);
    Ok(Outcome::Done)
}

fn set_vring_addr(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let a: VringAddr = parse(msg)?;
    let i = vring_index(dev, a.index)?;
    let addrs = VringAddrs {
        flags: a.flags,
        desc: FrontendVa(a.desc_user_addr),
        used: FrontendVa(a.used_user_addr),
        avail: FrontendVa(a.avail_user_addr),
        log: a.log_guest_addr,
    };
    dev.dev.shared.queues[i]
        .lock()
        .set_addrs(addrs)
        .map_err(vring_err(i))?;
    dev.touch_vring(i);
    Ok(Outcome::Done)
}

fn set_vring_base(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let s: VringState = parse(msg)?;
    let i = vring_index(dev, s.index)?;
    let mut vq = dev.dev.shared.queues[i].lock();
    vq.set_base(s.num).map_err(vring_err(i))?;
    let packed = vq.is_packed();
    drop(vq);
    log::info!(
        "{}: vring {i}: SET_VRING_BASE {}",
        dev.dev.id(),
        describe_base(s.num, packed)
    );
    Ok(Outcome::Done)
}

/// A vring base as the GET/SET_VRING_BASE log lines give it (`scripts/qemu-migrate.sh` checks
/// that the destination resumes where the source stopped): the number, and on a packed ring
/// its two positions as slot/wrap counter.
fn describe_base(num: u32, packed: bool) -> String {
    if packed {
        let b = PackedVringBase::from_num(num);
        format!(
            "{num:#010x} (packed: avail {}/{} used {}/{})",
            b.avail_idx,
            u8::from(b.avail_wrap),
            b.used_idx,
            u8::from(b.used_wrap)
        )
    } else {
        format!("{num:#010x} (split: avail {num})")
    }
}

fn get_vring_base(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let s: VringState = parse(msg)?;
    let i = vring_index(dev, s.index)?;
    let mut vq = dev.dev.shared.queues[i].lock();
    // A ring never set up has nothing to stop, and answers its base (0, or what
    // SET_VRING_BASE said) as DPDK's vhost does: DPDK's virtio-user, reconnected to as the
    // server, stops every ring it had before it sets them up again on the new connection.
    let base = vq.base();
    let packed = vq.is_packed();
    // Stop the ring as DPDK does: forget the translated rings (publishing the used entries
    // held back, while the addresses and their log flag are still known), kick, call and the
    // addresses; size, base and enable state stay until the frontend sets them again.
    vq.forget_rings();
    vq.started = false;
    vq.kick = None;
    vq.kick_set = false;
    vq.call = None;
    vq.call_set = false;
    vq.addrs = None;
    drop(vq);
    log::info!(
        "{}: vring {i}: GET_VRING_BASE {}",
        dev.dev.id(),
        describe_base(base, packed)
    );
    let reply = VringState {
        index: s.index,
        num: base,
    };
    Ok(Outcome::Reply(reply.to_bytes(), Vec::new()))
}

/// Parses a SET_VRING_KICK/CALL/ERR payload and takes its fd (policy checked the count).
fn vring_file(
    dev: &DeviceState,
    msg: &mut Message,
) -> Result<(usize, Option<OwnedFd>), HandlerError> {
    let f: VringFile = parse(msg)?;
    let i = vring_index(dev, u32::from(f.index))?;
    let fd = if f.no_fd { None } else { msg.take_fd() };
    Ok((i, fd))
}

fn set_vring_kick(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let (i, fd) = vring_file(dev, msg)?;
    let mut vq = dev.dev.shared.queues[i].lock();
    vq.kick = fd;
    vq.kick_set = true;
    vq.started = true;
    // Without PROTOCOL_FEATURES a ring is enabled as soon as it starts (spec).
    if dev.features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
        vq.enabled = true;
    }
    drop(vq);
    dev.touch_vring(i);
    Ok(Outcome::Done)
}

fn set_vring_call(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let (i, fd) = vring_file(dev, msg)?;
    let mut vq = dev.dev.shared.queues[i].lock();
    vq.call = fd;
    vq.call_set = true;
    Ok(Outcome::Done)
}

fn set_vring_err(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let (i, fd) = vring_file(dev, msg)?;
    dev.dev.shared.queues[i].lock().err = fd;
    Ok(Outcome::Done)
}

fn set_vring_enable(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let s: VringState = parse(msg)?;
    let i = vring_index(dev, s.index)?;
    let enable = match s.num {
        0 => false,
        1 => true,
        n => {
            return Err(state_err(
                FrontendReq::SetVringEnable,
                format!("enable value {n} is neither 0 nor 1"),
            ));
        }
    };
    dev.dev.shared.queues[i].lock().enabled = enable;
    dev.touch_vring(i);
    Ok(Outcome::Done)
}

fn get_protocol_features(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    Ok(reply_u64(dev.cfg.protocol_features))
}

fn set_protocol_features(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let features: u64 = parse(msg)?;
    offered(
        FrontendReq::SetProtocolFeatures,
        features,
        dev.cfg.protocol_features,
    )?;
    dev.protocol_features = features;
    dev.publish();
    Ok(Outcome::Done)
}

fn get_queue_num(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    Ok(reply_u64(u64::from(
        dev.cfg.max_queue_pairs.min(MAX_QUEUE_PAIRS),
    )))
}

fn send_rarp(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let mac: crate::protocol::payload::RarpMac = parse(msg)?;
    // Once per announce round after a migration (QEMU sends a few).
    log::info!(
        "{}: SEND_RARP for {}: the next dequeue on vring 1 announces it",
        dev.dev.id(),
        mac.0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    );
    *lock(&dev.dev.shared.rarp) = Some(mac.0);
    dev.dev
        .shared
        .rarp_pending
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(Outcome::Done)
}

fn net_set_mtu(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let mtu: u64 = parse(msg)?;
    // virtio-net: 68 (IPv4 minimum) to 65535.
    match u16::try_from(mtu) {
        Ok(m) if m >= 68 => {
            dev.dev
                .shared
                .mtu
                .store(m, std::sync::atomic::Ordering::Relaxed);
            Ok(Outcome::Done)
        }
        _ => Ok(Outcome::Failed(format!("MTU {mtu} is outside 68..=65535"))),
    }
}

fn set_backend_req_fd(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    require_protocol(dev, FrontendReq::SetBackendReqFd, pf::BACKEND_REQ)?;
    let fd = msg
        .take_fd()
        .ok_or_else(|| state_err(FrontendReq::SetBackendReqFd, "no fd"))?;
    dev.backend_req = Some(UnixStream::from(fd));
    Ok(Outcome::Done)
}

/// virtio-net config space (virtio 1.2 §5.1.4): mac, status, max_virtqueue_pairs, mtu.
fn net_config(dev: &DeviceState) -> [u8; 12] {
    const LINK_UP: u16 = 1;
    let mut c = [0u8; 12];
    c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
    c[8..10].copy_from_slice(&dev.cfg.max_queue_pairs.to_le_bytes());
    c[10..12].copy_from_slice(&dev.dev.mtu().to_le_bytes());
    c
}

fn get_config(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let req: Config = parse(msg)?;
    let space = net_config(dev);
    let start = req.offset as usize;
    let end = start.saturating_add(req.payload.len());
    let Some(bytes) = space.get(start..end) else {
        // The spec's failure answer: the same request with an empty payload.
        log::warn!(
            "{}: GET_CONFIG of {start}..{end} is outside the {}-byte config space",
            dev.dev.id(),
            space.len()
        );
        let failed = Config {
            offset: req.offset,
            flags: req.flags,
            payload: Vec::new(),
        };
        return Ok(Outcome::Reply(failed.to_bytes(), Vec::new()));
    };
    let reply = Config {
        offset: req.offset,
        flags: req.flags,
        payload: bytes.to_vec(),
    };
    Ok(Outcome::Reply(reply.to_bytes(), Vec::new()))
}

fn set_config(
    _: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    Ok(Outcome::Failed(
        "the virtio-net config space is read-only here".into(),
    ))
}

/// Bytes of the split-ring inflight area of one queue (DPDK's layout: a 16-byte header and a
/// 16-byte entry per descriptor, rounded up to 64 bytes).
fn inflight_queue_bytes(queue_size: u16) -> u64 {
    (16 + 16 * u64::from(queue_size)).next_multiple_of(64)
}

fn check_inflight(
    dev: &DeviceState,
    req: FrontendReq,
    num_queues: u16,
    queue_size: u16,
) -> Result<(), HandlerError> {
    require_protocol(dev, req, pf::INFLIGHT_SHMFD)?;
    let max = dev.dev.max_vrings();
    if num_queues == 0 || usize::from(num_queues) > max {
        return Err(state_err(
            req,
            format!("num_queues {num_queues} outside 1..={max}"),
        ));
    }
    if queue_size == 0 || u32::from(queue_size) > MAX_QUEUE_SIZE {
        return Err(state_err(
            req,
            format!("queue_size {queue_size} outside 1..=32768"),
        ));
    }
    Ok(())
}

fn get_inflight_fd(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let info: InflightInfo = parse(msg)?;
    check_inflight(
        dev,
        FrontendReq::GetInflightFd,
        info.num_queues,
        info.queue_size,
    )?;
    let size = inflight_queue_bytes(info.queue_size) * u64::from(info.num_queues);
    let fd = inflight_memfd(size).map_err(|e| {
        state_err(
            FrontendReq::GetInflightFd,
            format!("creating a {size}-byte memfd: {e}"),
        )
    })?;
    let reply_fd = fd
        .try_clone()
        .map_err(|e| state_err(FrontendReq::GetInflightFd, format!("dup: {e}")))?;
    let region = GuestRegion::map(fd, inflight_desc(0, size), MapOptions::new())?;
    let slice = region.as_slice();
    for q in 0..u64::from(info.num_queues) {
        // Header of each queue: features u64, version u16 = 1, desc_num u16.
        let at = (q * inflight_queue_bytes(info.queue_size)) as usize;
        let _ = slice.write_obj::<u16>(at + 8, 1);
        let _ = slice.write_obj::<u16>(at + 10, info.queue_size);
    }
    dev.inflight = Some(Inflight {
        region,
        num_queues: info.num_queues,
        queue_size: info.queue_size,
    });
    let reply = InflightInfo {
        mmap_size: size,
        mmap_offset: 0,
        num_queues: info.num_queues,
        queue_size: info.queue_size,
    };
    Ok(Outcome::Reply(reply.to_bytes(), vec![reply_fd]))
}

fn inflight_desc(offset: u64, size: u64) -> RegionDesc {
    RegionDesc {
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: 0,
        mmap_offset: offset,
    }
}

fn inflight_memfd(size: u64) -> nix::Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create("rvhost-inflight", MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&fd, i64::try_from(size).map_err(|_| nix::Error::EINVAL)?)?;
    Ok(fd)
}

fn set_inflight_fd(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let info: InflightInfo = parse(msg)?;
    check_inflight(
        dev,
        FrontendReq::SetInflightFd,
        info.num_queues,
        info.queue_size,
    )?;
    let need = inflight_queue_bytes(info.queue_size) * u64::from(info.num_queues);
    if info.mmap_size < need {
        return Err(state_err(
            FrontendReq::SetInflightFd,
            format!(
                "mmap_size {} is below the {need} bytes the queues need",
                info.mmap_size
            ),
        ));
    }
    let fd = msg
        .take_fd()
        .ok_or_else(|| state_err(FrontendReq::SetInflightFd, "no fd"))?;
    // GuestRegion::map checks offset + size against the fd's size before mapping.
    let region = GuestRegion::map(
        fd,
        inflight_desc(info.mmap_offset, info.mmap_size),
        MapOptions::new(),
    )?;
    dev.inflight = Some(Inflight {
        region,
        num_queues: info.num_queues,
        queue_size: info.queue_size,
    });
    Ok(Outcome::Done)
}

fn set_status(
    dev: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let status: u64 = parse(msg)?;
    let Ok(status) = u8::try_from(status) else {
        return Err(state_err(
            FrontendReq::SetStatus,
            format!("status {status:#x} is not a byte"),
        ));
    };
    dev.status = status;
    dev.publish();
    Ok(Outcome::Done)
}

fn get_status(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    Ok(reply_u64(u64::from(dev.status)))
}

fn unsupported(
    _: &mut DeviceState,
    msg: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    let name = msg
        .header
        .frontend_request()
        .map(FrontendReq::name)
        .unwrap_or("unknown request");
    let policy = msg
        .header
        .frontend_request()
        .map(crate::protocol::policy::policy);
    match policy {
        // Requests answered by a failure status when the frontend asks for one.
        Ok(p) if p.reply != crate::protocol::policy::Reply::Always => {
            Ok(Outcome::Failed(format!("{name} is not supported")))
        }
        _ => Err(HandlerError::Unsupported(name)),
    }
}

fn require_protocol(dev: &DeviceState, req: FrontendReq, mask: u64) -> Result<(), HandlerError> {
    if dev.has_protocol(mask) {
        Ok(())
    } else {
        Err(state_err(req, "its protocol feature was not negotiated"))
    }
}

#[cfg(test)]
#[path = "handlers_tests.rs"]
mod tests;
