//! The setup and teardown sequences (listed in the [module docs](super#setup-sequence)).

use std::os::fd::{BorrowedFd, OwnedFd};

use super::Frontend;
use super::error::FrontendError;
use super::layout::{MemLayout, RingInfo};
use super::options::{FrontendOptions, MemTableMode};
use super::queue::{NetHdr, Queue};
use super::shm::Shm;
use crate::features::{
    VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_RING_PACKED, VIRTIO_NET_F_MQ,
    protocol as pf,
};
use crate::protocol::payload::{
    MemoryRegion, MemoryTable, Payload, SingleMemRegion, VringAddr, VringFile, VringState,
};
use crate::protocol::{Endpoint, FrontendReq, Header, VHOST_MEMORY_BASELINE_NREGIONS};

/// Device status: the guest noticed the device (virtio 1.2 §2.1).
#[doc(alias = "VIRTIO_CONFIG_S_ACKNOWLEDGE")]
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
#[doc(alias = "VIRTIO_CONFIG_S_DRIVER")]
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready.
#[doc(alias = "VIRTIO_CONFIG_S_DRIVER_OK")]
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
#[doc(alias = "VIRTIO_CONFIG_S_FEATURES_OK")]
pub const STATUS_FEATURES_OK: u8 = 8;

/// What [`Frontend::start`] negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The back-end's `GET_FEATURES`.
    pub offered_features: u64,
    /// Sent with `SET_FEATURES`: wanted ∩ offered, plus bit 30 when offered.
    pub features: u64,
    /// The back-end's `GET_PROTOCOL_FEATURES` (0 without bit 30).
    pub offered_protocol_features: u64,
    /// Sent with `SET_PROTOCOL_FEATURES`.
    pub protocol_features: u64,
    /// The back-end's `GET_QUEUE_NUM` (with MQ).
    pub queue_num: Option<u64>,
    /// The back-end's `GET_MAX_MEM_SLOTS` (with [`MemTableMode::AddMemReg`]).
    pub max_mem_slots: Option<u64>,
    /// Virtio-net header size for these features.
    pub hdr_len: usize,
}

impl Negotiated {
    /// Whether protocol feature `mask` was negotiated.
    pub fn has_protocol(&self, mask: u64) -> bool {
        self.protocol_features & mask != 0
    }
}

impl Frontend {
    /// Runs the whole setup (the [sequence](crate::frontend#setup-sequence)) and marks the
    /// front-end running. Rings keep their contents: each starts at the base [`stop`](Self::stop)
    /// returned, else at its used index.
    pub fn start(&mut self) -> Result<Negotiated, FrontendError> {
        self.running = false;
        let Self {
            ep,
            opts,
            shm,
            layout,
            rings,
            rx,
            tx,
            negotiated,
            running,
            regions_added,
            log,
            postcopy,
            ..
        } = self;
        let ep = ep.as_mut().ok_or(FrontendError::NotConnected("start"))?;
        ep.set_reply_ack(false);
        let mut neg = negotiate(ep, opts)?;
        for q in rx.iter_mut() {
            q.configure_rx(neg.features);
        }
        for q in tx.iter_mut() {
            q.configure(neg.features);
        }
        if opts.postcopy {
            let (ufd, answered, slots) = postcopy_memory(ep, opts.mem_table, &neg, shm, layout)?;
            neg.max_mem_slots = slots;
            *regions_added = opts.mem_table == MemTableMode::AddMemReg;
            *postcopy = Some((ufd, answered));
        } else if opts.mem_table == MemTableMode::AddMemReg && *regions_added {
            // QEMU adds only the regions the back-end lacks: none on a restart.
            neg.max_mem_slots = negotiated.and_then(|n| n.max_mem_slots);
        } else {
            neg.max_mem_slots = send_memory(ep, opts.mem_table, &neg, shm, layout)?;
            *regions_added = opts.mem_table == MemTableMode::AddMemReg;
        }
        if let Some(log) = log.as_ref() {
            log.send(ep)?;
        }
        let log_used = log.is_some();
        for (pair, (r, t)) in rx.iter_mut().zip(tx.iter_mut()).enumerate() {
            setup_vring(ep, r, &rings[2 * pair], log_used)?;
            setup_vring(ep, t, &rings[2 * pair + 1], log_used)?;
        }
        if neg.features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for v in 0..opts.vrings() {
                set_vring_enable(ep, v, true)?;
            }
        }
        if neg.has_protocol(pf::STATUS) {
            let mut status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            if opts.driver_ok {
                status |= STATUS_DRIVER_OK;
            }
            ep.set_u64(FrontendReq::SetStatus, status.into())
                .map_err(FrontendError::request(FrontendReq::SetStatus))?;
        }
        if !ep.reply_ack() {
            ep.get_u64(FrontendReq::GetFeatures)
                .map_err(FrontendError::request(FrontendReq::GetFeatures))?;
        }
        *negotiated = Some(neg);
        *running = true;
        Ok(neg)
    }

    /// Stops every vring: `SET_VRING_ENABLE 0` on each (when bit 30 was negotiated), then
    /// `GET_VRING_BASE` on each. Returns the bases, indexed by vring; the next
    /// [`start`](Self::start) resumes from them.
    pub fn stop(&mut self) -> Result<Vec<u16>, FrontendError> {
        let features = self.features();
        let vrings = self.opts.vrings();
        let Self { ep, rx, tx, .. } = self;
        let ep = ep.as_mut().ok_or(FrontendError::NotConnected("stop"))?;
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for v in 0..vrings {
                set_vring_enable(ep, v, false)?;
            }
        }
        let mut bases = Vec::with_capacity(usize::from(vrings));
        for (r, t) in rx.iter_mut().zip(tx.iter_mut()) {
            bases.push(get_vring_base(ep, r)?);
            bases.push(get_vring_base(ep, t)?);
        }
        self.running = false;
        Ok(bases)
    }

    /// `SET_VRING_ENABLE` for one vring.
    pub fn set_vring_enable(&mut self, vring: u16, on: bool) -> Result<(), FrontendError> {
        let ep = self.endpoint()?;
        set_vring_enable(ep, vring, on)
    }

    /// `SET_STATUS` (needs the STATUS protocol feature on the back-end's side).
    pub fn set_status(&mut self, status: u8) -> Result<(), FrontendError> {
        self.endpoint()?
            .set_u64(FrontendReq::SetStatus, status.into())
            .map_err(FrontendError::request(FrontendReq::SetStatus))
    }

    /// `GET_STATUS`.
    pub fn get_status(&mut self) -> Result<u64, FrontendError> {
        self.endpoint()?
            .get_u64(FrontendReq::GetStatus)
            .map_err(FrontendError::request(FrontendReq::GetStatus))
    }
}

/// Steps 1 to 3: ownership, features, protocol features, queue count.
fn negotiate(ep: &mut Endpoint, opts: &FrontendOptions) -> Result<Negotiated, FrontendError> {
    use FrontendReq as R;
    ep.request(R::SetOwner, &[], &[])
        .map_err(FrontendError::request(R::SetOwner))?;
    let offered = ep
        .get_u64(R::GetFeatures)
        .map_err(FrontendError::request(R::GetFeatures))?;
    let missing = opts.required_features & !offered;
    if missing != 0 {
        return Err(FrontendError::Negotiation(format!(
            "the back-end does not offer required features {missing:#x} (offered {offered:#x})"
        )));
    }
    let mut wanted = opts.features & !VIRTIO_F_RING_PACKED;
    if opts.packed {
        if offered & VIRTIO_F_RING_PACKED == 0 {
            return Err(FrontendError::Negotiation(format!(
                "packed rings asked for; the back-end does not offer VIRTIO_F_RING_PACKED (offered {offered:#x})"
            )));
        }
        wanted |= VIRTIO_F_RING_PACKED;
    }
    if opts.queue_pairs > 1 {
        wanted |= VIRTIO_NET_F_MQ;
    }
    let mut wanted_pf = opts.protocol_features;
    if opts.postcopy {
        wanted_pf |= pf::PAGEFAULT;
    }
    if opts.dirty_log {
        wanted |= VHOST_F_LOG_ALL;
        wanted_pf |= pf::LOG_SHMFD;
    }
    let features = (wanted & offered) | (offered & VHOST_USER_F_PROTOCOL_FEATURES);
    let (offered_pf, pfeat) = if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let o = ep
            .get_u64(R::GetProtocolFeatures)
            .map_err(FrontendError::request(R::GetProtocolFeatures))?;
        let p = o & wanted_pf;
        // Sent before REPLY_ACK is in force (QEMU does the same).
        ep.request(R::SetProtocolFeatures, &p.to_ne_bytes(), &[])
            .map_err(FrontendError::request(R::SetProtocolFeatures))?;
        ep.set_reply_ack(p & pf::REPLY_ACK != 0);
        (o, p)
    } else {
        (0, 0)
    };
    let queue_num = if pfeat & pf::MQ != 0 {
        let n = ep
            .get_u64(R::GetQueueNum)
            .map_err(FrontendError::request(R::GetQueueNum))?;
        if n < u64::from(opts.queue_pairs) {
            return Err(FrontendError::Negotiation(format!(
                "{} queue pairs wanted, the back-end has {n}",
                opts.queue_pairs
            )));
        }
        Some(n)
    } else {
        None
    };
    if opts.dirty_log && (features & VHOST_F_LOG_ALL == 0 || pfeat & pf::LOG_SHMFD == 0) {
        return Err(FrontendError::Negotiation(format!(
            "dirty logging needs VHOST_F_LOG_ALL and the LOG_SHMFD protocol feature (offered {offered:#x}, protocol {offered_pf:#x})"
        )));
    }
    if opts.queue_pairs > 1 && (queue_num.is_none() || features & VIRTIO_NET_F_MQ == 0) {
        return Err(FrontendError::Negotiation(format!(
            "{} queue pairs need the MQ protocol feature and VIRTIO_NET_F_MQ",
            opts.queue_pairs
        )));
    }
    ep.set_u64(R::SetFeatures, features)
        .map_err(FrontendError::request(R::SetFeatures))?;
    Ok(Negotiated {
        offered_features: offered,
        features,
        offered_protocol_features: offered_pf,
        protocol_features: pfeat,
        queue_num,
        max_mem_slots: None,
        hdr_len: NetHdr::size_for(features),
    })
}

/// Step 4: the memory table. Returns the back-end's slot count with ADD_MEM_REG.
fn send_memory(
    ep: &mut Endpoint,
    mode: MemTableMode,
    neg: &Negotiated,
    shm: &Shm,
    layout: &MemLayout,
) -> Result<Option<u64>, FrontendError> {
    use FrontendReq as R;
    let regions = layout.regions();
    let fd = shm.region().fd();
    match mode {
        MemTableMode::SetMemTable => {
            if regions.len() > VHOST_MEMORY_BASELINE_NREGIONS {
                return Err(FrontendError::Negotiation(format!(
                    "{} regions do not fit in SET_MEM_TABLE",
                    regions.len()
                )));
            }
            let fds: Vec<BorrowedFd<'_>> = regions.iter().map(|_| fd).collect();
            let table = MemoryTable { regions };
            ep.request(R::SetMemTable, &table.to_bytes(), &fds)
                .map_err(FrontendError::request(R::SetMemTable))?;
            Ok(None)
        }
        MemTableMode::AddMemReg => {
            if !neg.has_protocol(pf::CONFIGURE_MEM_SLOTS) {
                return Err(FrontendError::Negotiation(
                    "ADD_MEM_REG needs the CONFIGURE_MEM_SLOTS protocol feature".into(),
                ));
            }
            let slots = ep
                .get_u64(R::GetMaxMemSlots)
                .map_err(FrontendError::request(R::GetMaxMemSlots))?;
            if regions.len() as u64 > slots {
                return Err(FrontendError::Negotiation(format!(
                    "{} regions, the back-end has {slots} memory slots",
                    regions.len()
                )));
            }
            for region in regions {
                ep.request(R::AddMemReg, &SingleMemRegion { region }.to_bytes(), &[fd])
                    .map_err(FrontendError::request(R::AddMemReg))?;
            }
            Ok(Some(slots))
        }
    }
}

/// Step 4 in postcopy (QEMU's `vhost_user_postcopy_advise`, `_listen` and
/// `vhost_user_set_mem_table_postcopy`): POSTCOPY_ADVISE (its reply's fd is the back-end's
/// userfaultfd), POSTCOPY_LISTEN, then the memory without NEED_REPLY, each request answered with
/// the back-end's addresses, and the acknowledgement (a `u64` 0 coded as the memory's request,
/// once after ADD_MEM_REGs). Returns the fd, the regions as answered and the slot count.
#[allow(clippy::type_complexity)]
fn postcopy_memory(
    ep: &mut Endpoint,
    mode: MemTableMode,
    neg: &Negotiated,
    shm: &Shm,
    layout: &MemLayout,
) -> Result<(OwnedFd, Vec<MemoryRegion>, Option<u64>), FrontendError> {
    use FrontendReq as R;
    if !neg.has_protocol(pf::PAGEFAULT) {
        return Err(FrontendError::Negotiation(
            "postcopy needs the PAGEFAULT protocol feature".into(),
        ));
    }
    ep.send_request(R::PostcopyAdvise, 0, &[], &[])
        .map_err(FrontendError::request(R::PostcopyAdvise))?;
    let mut advised = ep
        .recv_reply_with_fds(R::PostcopyAdvise)
        .map_err(FrontendError::request(R::PostcopyAdvise))?;
    let ufd = match (advised.payload.is_empty(), advised.fds.pop()) {
        (true, Some(fd)) if advised.fds.is_empty() => fd,
        _ => {
            return Err(FrontendError::Negotiation(
                "POSTCOPY_ADVISE: the back-end answered without its userfaultfd".into(),
            ));
        }
    };
    ep.send_request(R::PostcopyListen, Header::NEED_REPLY, &[], &[])
        .map_err(FrontendError::request(R::PostcopyListen))?;
    ep.wait_ack(R::PostcopyListen)
        .map_err(FrontendError::request(R::PostcopyListen))?;
    let regions = layout.regions();
    let fd = shm.region().fd();
    let bad = |what: &str| FrontendError::Negotiation(format!("postcopy: {what}"));
    let (answered, slots, ack) = match mode {
        MemTableMode::SetMemTable => {
            let fds: Vec<BorrowedFd<'_>> = regions.iter().map(|_| fd).collect();
            let table = MemoryTable { regions };
            ep.send_request(R::SetMemTable, 0, &table.to_bytes(), &fds)
                .map_err(FrontendError::request(R::SetMemTable))?;
            let (_, p) = ep
                .recv_reply(R::SetMemTable)
                .map_err(FrontendError::request(R::SetMemTable))?;
            let got = MemoryTable::parse(&p).map_err(|e| bad(&e.to_string()))?;
            if got.regions.len() != table.regions.len() {
                return Err(bad("the answer has another number of regions"));
            }
            (got.regions, None, R::SetMemTable)
        }
        MemTableMode::AddMemReg => {
            let slots = ep
                .get_u64(R::GetMaxMemSlots)
                .map_err(FrontendError::request(R::GetMaxMemSlots))?;
            let mut got = Vec::new();
            for region in regions {
                ep.send_request(
                    R::AddMemReg,
                    0,
                    &SingleMemRegion { region }.to_bytes(),
                    &[fd],
                )
                .map_err(FrontendError::request(R::AddMemReg))?;
                let (_, p) = ep
                    .recv_reply(R::AddMemReg)
                    .map_err(FrontendError::request(R::AddMemReg))?;
                got.push(
                    SingleMemRegion::parse(&p)
                        .map_err(|e| bad(&e.to_string()))?
                        .region,
                );
            }
            (got, Some(slots), R::AddMemReg)
        }
    };
    // QEMU sends the acknowledgement without NEED_REPLY; asked for here when REPLY_ACK is on,
    // so that the regions are registered when this returns.
    if ep.reply_ack() {
        ep.send_request(ack, Header::NEED_REPLY, &0u64.to_ne_bytes(), &[])
            .map_err(FrontendError::request(ack))?;
        ep.wait_ack(ack).map_err(FrontendError::request(ack))?;
    } else {
        ep.send_request(ack, 0, &0u64.to_ne_bytes(), &[])
            .map_err(FrontendError::request(ack))?;
    }
    Ok((ufd, answered, slots))
}

/// Step 5 for one vring (`log_used`: ask for its used ring's writes in the dirty log).
fn setup_vring<K>(
    ep: &mut Endpoint,
    q: &mut Queue<K>,
    info: &RingInfo,
    log_used: bool,
) -> Result<(), FrontendError> {
    use FrontendReq as R;
    let v = q.vring();
    let err = |req| FrontendError::vring(req, v);
    let index = u32::from(v);
    let base = q.resume_base.take().unwrap_or_else(|| q.start_base());
    let state = |num: u32| VringState { index, num }.to_bytes();
    ep.request(R::SetVringNum, &state(info.size.into()), &[])
        .map_err(err(R::SetVringNum))?;
    ep.request(R::SetVringBase, &state(base), &[])
        .map_err(err(R::SetVringBase))?;
    let addr = VringAddr {
        index,
        flags: if log_used { VringAddr::F_LOG } else { 0 },
        desc_user_addr: info.desc.fva.raw(),
        used_user_addr: info.used.fva.raw(),
        avail_user_addr: info.avail.fva.raw(),
        log_guest_addr: info.used.gpa.raw(),
    };
    ep.request(R::SetVringAddr, &addr.to_bytes(), &[])
        .map_err(err(R::SetVringAddr))?;
    // Vring indexes are below 256 (at most 128 pairs), as VringFile's 8 bits require.
    for (req, fd) in [
        (R::SetVringKick, q.kick_fd()),
        (R::SetVringCall, q.call_fd()),
    ] {
        let file = VringFile {
            index: v as u8,
            no_fd: fd.is_none(),
        };
        let fds: &[BorrowedFd<'_>] = match &fd {
            Some(fd) => std::slice::from_ref(fd),
            None => &[],
        };
        ep.request(req, &file.to_bytes(), fds).map_err(err(req))?;
    }
    Ok(())
}

fn set_vring_enable(ep: &mut Endpoint, vring: u16, on: bool) -> Result<(), FrontendError> {
    let s = VringState {
        index: vring.into(),
        num: on.into(),
    };
    ep.request(FrontendReq::SetVringEnable, &s.to_bytes(), &[])
        .map_err(FrontendError::vring(FrontendReq::SetVringEnable, vring))
}

/// `GET_VRING_BASE` for one vring; records the base for the next start.
fn get_vring_base<K>(ep: &mut Endpoint, q: &mut Queue<K>) -> Result<u16, FrontendError> {
    use FrontendReq as R;
    let v = q.vring();
    let req = VringState {
        index: v.into(),
        num: 0,
    };
    let reply = ep
        .call(R::GetVringBase, &req.to_bytes(), &[])
        .map_err(FrontendError::vring(R::GetVringBase, v))?;
    let bad = |reason: String| FrontendError::BadReply {
        req: R::GetVringBase,
        reason,
    };
    let s = VringState::parse(&reply).map_err(|e| bad(e.to_string()))?;
    if s.index != u32::from(v) {
        return Err(bad(format!("answers vring {} instead of {v}", s.index)));
    }
    if q.packed_ring().is_some() {
        // Bits 0-15 the available slot and wrap counter, 16-31 the used ones; a stopped ring
        // has both at the same place (checked: a device that disagrees lost track of a chain).
        let (avail, used) = (s.num & 0xffff, s.num >> 16);
        let size = u32::from(q.size());
        if avail & 0x7fff >= size || (used != 0 && used != avail) {
            return Err(bad(format!(
                "packed ring base {:#x} is not a stopped ring's",
                s.num
            )));
        }
        q.resume_base = Some(avail);
        return Ok(avail as u16);
    }
    let base = u16::try_from(s.num)
        .map_err(|_| bad(format!("base {:#x} does not fit a split ring", s.num)))?;
    q.resume_base = Some(u32::from(base));
    Ok(base)
}

#[cfg(test)]
#[path = "setup_tests.rs"]
mod tests;
