//! Postcopy live migration (`VHOST_USER_PROTOCOL_F_PAGEFAULT`, [`Flags::POSTCOPY_SUPPORT`]),
//! as DPDK's `lib/vhost` does it, with QEMU 7.2's sequence (`hw/virtio/vhost-user.c`):
//!
//! 1. `POSTCOPY_ADVISE`: the back-end opens a userfaultfd and replies with it (an empty
//!    payload and the fd). A second ADVISE replaces the one held (DPDK does too; the old fd
//!    is closed here; DPDK overwrites its descriptor without closing it, as far as read).
//! 2. `POSTCOPY_LISTEN`: refused (failure status) without a userfaultfd, or once memory is
//!    mapped (as DPDK refuses it when regions are mapped).
//! 3. `SET_MEM_TABLE` while listening: the regions are mapped and the back-end replies with
//!    the table whose `userspace_addr` fields are its own mapping addresses; the front-end
//!    then sends its acknowledgement, a `SET_MEM_TABLE` carrying a `u64` 0 (no fds). Only
//!    then is each region's mapping registered for missing pages and the table installed
//!    (the data plane never sees it before), and the acknowledgement answered when it asks
//!    (QEMU sets NEED_REPLY with REPLY_ACK). The wait is a state of the connection
//!    ([`Postcopy::pending`]), not a blocking read: the control thread serves other
//!    connections meanwhile; any other message in its place closes the connection.
//!    `ADD_MEM_REG` while listening (QEMU 7.2 with CONFIGURE_MEM_SLOTS,
//!    `vhost_user_add_remove_regions(.., track_ramblocks = true)`): each new region is mapped
//!    and the request answered with the region whose `userspace_addr` is the back-end's
//!    address (a duplicate region, sent by another of QEMU's per-queue-pair devices, with the
//!    held one's); after its batch of removals and additions QEMU sends one acknowledgement,
//!    an `ADD_MEM_REG` carrying a `u64` 0 (8 bytes, which the wire policy's 40-byte rule
//!    would refuse: it is recognised first), also when the batch added nothing. The regions
//!    added are registered and installed then. Anything but another `ADD_MEM_REG` between
//!    an answered one and the acknowledgement closes the connection.
//! 4. `POSTCOPY_END`: every mapped region is unregistered, the userfaultfd closed, listening
//!    left; the reply is a `u64` 0.
//!
//! The data path needs nothing: a thread touching a page the destination has not received
//! yet waits in the kernel until the front-end places it and wakes it. Guest memory is mapped
//! without `MAP_POPULATE` or `mlock` except on [`Flags::ASYNC_COPY`] sockets, which is why
//! the two flags are refused together.
//!
//! [`Flags::POSTCOPY_SUPPORT`]: super::Flags::POSTCOPY_SUPPORT
//! [`Flags::ASYNC_COPY`]: super::Flags::ASYNC_COPY

use std::os::fd::OwnedFd;

use super::device::DeviceState;
use super::handlers::{Effects, HandlerError, Outcome};
use crate::features::protocol as pf;
use crate::memory::GuestMemory;
use crate::memory::uffd::Userfaultfd;
use crate::protocol::Message;
use crate::protocol::message::FrontendReq;
use crate::protocol::payload::{MemoryRegion, MemoryTable, Payload};

/// A device's postcopy state.
#[derive(Debug, Default)]
pub(crate) struct Postcopy {
    /// The userfaultfd from POSTCOPY_ADVISE.
    pub ufd: Option<Userfaultfd>,
    /// POSTCOPY_LISTEN was accepted (until POSTCOPY_END).
    pub listening: bool,
    /// Memory answered with its mapping addresses, waiting for the front-end's
    /// acknowledgement before it is registered and installed.
    pub pending: Option<Pending>,
}

/// What waits for the front-end's postcopy acknowledgement.
#[derive(Debug)]
pub(crate) enum Pending {
    /// A SET_MEM_TABLE was answered: the acknowledgement is the next message. `None`: the
    /// table held already (QEMU re-sent it) is kept.
    Table(Option<GuestMemory>),
    /// ADD_MEM_REGs were answered: the table with the regions added so far. More
    /// ADD_MEM_REGs may come before the acknowledgement.
    Regions(GuestMemory),
}

impl Postcopy {
    /// Forgets everything: registrations go with the fd.
    pub fn reset(&mut self) {
        *self = Postcopy::default();
    }
}

/// POSTCOPY_ADVISE: a new userfaultfd, kept, and a duplicate sent as the reply's fd.
pub(super) fn advise(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    negotiated(dev, FrontendReq::PostcopyAdvise)?;
    if dev.postcopy.ufd.is_some() {
        log::warn!(
            "{}: POSTCOPY_ADVISE again: the userfaultfd held is closed and replaced",
            dev.dev.id()
        );
        if dev.postcopy.pending.is_some() {
            return Err(HandlerError::State {
                request: FrontendReq::PostcopyAdvise.name(),
                reason: "a memory table is waiting for its acknowledgement".into(),
            });
        }
        dev.postcopy.reset();
    }
    let ufd = match Userfaultfd::open() {
        Ok(u) => u,
        Err(e) => {
            log::error!("{}: POSTCOPY_ADVISE: {e}", dev.dev.id());
            return Ok(Outcome::Failed(e.to_string()));
        }
    };
    let sent: OwnedFd = match ufd.try_clone_fd() {
        Ok(fd) => fd,
        Err(e) => return Ok(Outcome::Failed(format!("dup of the userfaultfd: {e}"))),
    };
    let (shmem, hugetlbfs) = ufd.missing_shared();
    log::info!(
        "{}: POSTCOPY_ADVISE: userfaultfd {} opened (features {:#x}: missing pages of shared memory {}, of hugetlbfs {})",
        dev.dev.id(),
        ufd.as_raw_fd(),
        ufd.features(),
        if shmem { "yes" } else { "no" },
        if hugetlbfs { "yes" } else { "no" },
    );
    dev.postcopy.ufd = Some(ufd);
    Ok(Outcome::Reply(Vec::new(), vec![sent]))
}

/// POSTCOPY_LISTEN.
pub(super) fn listen(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    negotiated(dev, FrontendReq::PostcopyListen)?;
    if dev.postcopy.ufd.is_none() {
        return Ok(Outcome::Failed(
            "no userfaultfd: POSTCOPY_ADVISE did not come first".into(),
        ));
    }
    if !dev.mem.is_empty() {
        return Ok(Outcome::Failed(format!(
            "{} memory regions are mapped already (they would not be registered)",
            dev.mem.len()
        )));
    }
    dev.postcopy.listening = true;
    log::info!("{}: postcopy: listening", dev.dev.id());
    Ok(Outcome::Done)
}

/// POSTCOPY_END: unregister, close, leave listening; reply `u64` 0.
pub(super) fn end(
    dev: &mut DeviceState,
    _: &mut Message,
    _: &mut Effects,
) -> Result<Outcome, HandlerError> {
    negotiated(dev, FrontendReq::PostcopyEnd)?;
    let Some(ufd) = dev.postcopy.ufd.take() else {
        return Ok(Outcome::Failed(
            "no userfaultfd: POSTCOPY_ADVISE never came".into(),
        ));
    };
    for r in dev.mem.regions() {
        let (start, len) = r.mapping_range();
        // Closing the fd below drops every registration anyway; a failure is only logged.
        if let Err(e) = ufd.unregister(start, len) {
            log::warn!("{}: POSTCOPY_END: {e}", dev.dev.id());
        }
    }
    dev.postcopy.reset();
    log::info!("{}: postcopy: ended, userfaultfd closed", dev.dev.id());
    Ok(Outcome::Reply(0u64.to_ne_bytes().to_vec(), Vec::new()))
}

/// The reply to a SET_MEM_TABLE while listening: the table with the back-end's addresses.
/// `mem` is the new table (`None`: the held one is kept); it is installed after the
/// acknowledgement ([`acknowledged`]).
pub(super) fn answer_table(
    dev: &mut DeviceState,
    table: &MemoryTable,
    mem: Option<GuestMemory>,
) -> Result<Outcome, HandlerError> {
    let view = mem.as_ref().unwrap_or(&dev.mem);
    let mut regions = Vec::with_capacity(table.regions.len());
    for r in &table.regions {
        let held = view
            .regions()
            .find(|g| g.guest_phys_addr().raw() == r.guest_phys_addr && g.size() == r.memory_size)
            .ok_or_else(|| HandlerError::State {
                request: FrontendReq::SetMemTable.name(),
                reason: format!("region at {:#x} not mapped", r.guest_phys_addr),
            })?;
        regions.push(MemoryRegion {
            userspace_addr: held.host_ptr() as u64,
            ..*r
        });
    }
    dev.postcopy.pending = Some(Pending::Table(mem));
    log::info!(
        "{}: postcopy: SET_MEM_TABLE of {} regions answered with the mapping addresses; waiting for the acknowledgement",
        dev.dev.id(),
        regions.len()
    );
    Ok(Outcome::Reply(
        MemoryTable { regions }.to_bytes(),
        Vec::new(),
    ))
}

/// Registers every region of `mem` with the userfaultfd.
pub(super) fn register_all(dev: &DeviceState, mem: &GuestMemory) -> Result<(), HandlerError> {
    let ufd = dev
        .postcopy
        .ufd
        .as_ref()
        .ok_or_else(|| HandlerError::State {
            request: FrontendReq::SetMemTable.name(),
            reason: "listening without a userfaultfd".into(),
        })?;
    for r in mem.regions() {
        let (start, len) = r.mapping_range();
        ufd.register(start, len)?;
        log::debug!(
            "{}: postcopy: registered {start:#x}+{len:#x} (guest {:#x})",
            dev.dev.id(),
            r.guest_phys_addr().raw()
        );
    }
    Ok(())
}

/// Whether `msg` must be taken as the front-end's postcopy acknowledgement (before the
/// wire policy sees it): anything while a SET_MEM_TABLE waits for it (it must be the
/// acknowledgement, [`acknowledged`] refuses the rest), and an 8-byte ADD_MEM_REG while
/// listening.
pub(super) fn is_acknowledgement(dev: &DeviceState, msg: &Message) -> bool {
    match dev.postcopy.pending {
        Some(Pending::Table(_)) => true,
        Some(Pending::Regions(_)) | None => {
            listening(dev)
                && msg.header.frontend_request() == Ok(FrontendReq::AddMemReg)
                && msg.header.size == 8
        }
    }
}

/// Checks the front-end's acknowledgement of the memory answered before (the request code
/// of that memory's messages, a `u64` 0, no fds), then registers the new regions with the
/// userfaultfd and installs them. `Err` closes the connection (the memory waiting is
/// dropped, unmapped).
pub(super) fn acknowledged(dev: &mut DeviceState, msg: &Message) -> Result<(), String> {
    let pending = dev.postcopy.pending.take();
    let due = match pending {
        Some(Pending::Table(_)) => FrontendReq::SetMemTable,
        Some(Pending::Regions(_)) | None => FrontendReq::AddMemReg,
    };
    let req = msg.header.frontend_request().map_err(|e| e.to_string())?;
    if req != due {
        return Err(format!(
            "{} received where the postcopy acknowledgement ({} with a u64 0) was due",
            req.name(),
            due.name()
        ));
    }
    if due == FrontendReq::AddMemReg && !dev.has_protocol(pf::CONFIGURE_MEM_SLOTS) {
        return Err("an ADD_MEM_REG acknowledgement without CONFIGURE_MEM_SLOTS negotiated".into());
    }
    msg.header.check_flags().map_err(|e| e.to_string())?;
    if msg.header.is_reply() {
        return Err("postcopy acknowledgement with the REPLY flag".into());
    }
    if !msg.fds.is_empty() {
        return Err(format!(
            "postcopy acknowledgement with {} fds (none expected)",
            msg.fds.len()
        ));
    }
    let value = <u64 as Payload>::parse(&msg.payload)
        .map_err(|e| format!("postcopy acknowledgement: {e} (a u64 0 expected)"))?;
    if value != 0 {
        return Err(format!(
            "postcopy acknowledgement is {value:#x}: the front-end reports a failure"
        ));
    }
    let mem = match pending {
        Some(Pending::Table(Some(mem)) | Pending::Regions(mem)) => mem,
        // The table held is kept (re-registering a registered range is harmless), or an
        // ADD_MEM_REG batch added nothing.
        Some(Pending::Table(None)) | None => dev.mem.clone(),
    };
    register_all(dev, &mem).map_err(|e| e.to_string())?;
    dev.quiesce(None);
    // No DMA mapper on a postcopy socket (it needs ASYNC_COPY, refused with POSTCOPY_SUPPORT):
    // nothing can refuse the table here.
    dev.set_memory(mem).map_err(|e| e.to_string())?;
    log::info!(
        "{}: postcopy: {} acknowledged; {} regions registered for missing pages",
        dev.dev.id(),
        due.name(),
        dev.mem.len()
    );
    Ok(())
}

/// ADD_MEM_REG while listening: a new region is mapped and kept with the others waiting for
/// the acknowledgement; a duplicate counts a reference. Either is answered with the
/// back-end's address of the region.
pub(super) fn add_region(
    dev: &mut DeviceState,
    msg: &mut Message,
) -> Result<Outcome, HandlerError> {
    let reg: crate::protocol::payload::SingleMemRegion = msg.parse_payload()?;
    let desc = super::handlers::desc_of(&reg.region);
    let fd = msg.take_fd().ok_or_else(|| HandlerError::State {
        request: FrontendReq::AddMemReg.name(),
        reason: "no fd".into(),
    })?;
    let base = match dev.postcopy.pending.take() {
        Some(Pending::Regions(mem)) => mem,
        Some(other) => {
            dev.postcopy.pending = Some(other);
            return Err(HandlerError::State {
                request: FrontendReq::AddMemReg.name(),
                reason: "a SET_MEM_TABLE waits for its acknowledgement".into(),
            });
        }
        None => dev.mem.clone(),
    };
    let mem = match base.check_add(&desc)? {
        crate::memory::AddCheck::New => {
            let region =
                crate::memory::GuestRegion::map(fd, desc, super::handlers::map_options(dev))?;
            base.with_added(region)?
        }
        crate::memory::AddCheck::Duplicate(held) => {
            if !held.same_file(std::os::fd::AsFd::as_fd(&fd))? {
                return Err(crate::memory::MemoryError::OtherFile(desc).into());
            }
            held.add_frontend_ref()?;
            base.clone()
        }
    };
    let reply = answer_region(&mem, &reg.region)?;
    log::info!(
        "{}: postcopy: ADD_MEM_REG {desc} answered with its mapping address; registered at the acknowledgement",
        dev.dev.id()
    );
    dev.postcopy.pending = Some(Pending::Regions(mem));
    Ok(reply)
}

/// The reply to an ADD_MEM_REG while listening: the region with the back-end's address.
fn answer_region(mem: &GuestMemory, region: &MemoryRegion) -> Result<Outcome, HandlerError> {
    let held = mem
        .regions()
        .find(|g| {
            g.guest_phys_addr().raw() == region.guest_phys_addr && g.size() == region.memory_size
        })
        .ok_or_else(|| HandlerError::State {
            request: FrontendReq::AddMemReg.name(),
            reason: format!("region at {:#x} not mapped", region.guest_phys_addr),
        })?;
    let reply = crate::protocol::payload::SingleMemRegion {
        region: MemoryRegion {
            userspace_addr: held.host_ptr() as u64,
            ..*region
        },
    };
    Ok(Outcome::Reply(reply.to_bytes(), Vec::new()))
}

/// Whether `dev` takes memory in postcopy mode (listening with PAGEFAULT negotiated).
pub(super) fn listening(dev: &DeviceState) -> bool {
    dev.postcopy.listening && dev.has_protocol(pf::PAGEFAULT)
}

/// POSTCOPY_* requests need PAGEFAULT negotiated (offered only with POSTCOPY_SUPPORT); without
/// it they close the connection, as an unsupported request does.
fn negotiated(dev: &DeviceState, req: FrontendReq) -> Result<(), HandlerError> {
    if dev.has_protocol(pf::PAGEFAULT) {
        Ok(())
    } else {
        Err(HandlerError::State {
            request: req.name(),
            reason: "the PAGEFAULT protocol feature was not negotiated".into(),
        })
    }
}
