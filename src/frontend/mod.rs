//! A vhost-user front-end (DPDK's virtio-user, QEMU's vhost-user-net side): it owns guest
//! memory and virtio-net rings, negotiates with a back-end over a Unix socket, and drives the
//! rings as a guest driver would.
//!
//! It serves three users: tests that drive the rvhost back-end over a real socket (including
//! hostile input, through `Frontend::endpoint` (with the `internals` feature) and the raw ring accessors), benchmarks that
//! act as the guest at full speed (the data path never allocates), and applications that want
//! a virtio-net port on a vhost-user switch (container networking).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use rvhost::frontend::{Frontend, FrontendOptions};
//!
//! let opts = FrontendOptions {
//!     connect_timeout: Duration::from_secs(5), // wait for the back-end's socket
//!     ..FrontendOptions::default()
//! };
//! let mut fe = Frontend::connect("/tmp/vhost-user.sock", opts)?;
//! let negotiated = fe.start()?; // SET_OWNER ... SET_STATUS(DRIVER_OK)
//! println!("features {:#x}", negotiated.features);
//!
//! let (rx, tx) = fe.queue_pair(0).expect("pair 0");
//! rx.post_rx(64, 2048); // room for the back-end to deliver packets
//! let frame = [0xffu8; 60]; // a broadcast Ethernet frame
//! assert_eq!(tx.send(&[&frame]), 1); // one chain, one kick if the back-end wants it
//! rx.poll_rx(32, |pkt| println!("received {} bytes", pkt.data.len()));
//! tx.reap(); // give the sent descriptors back
//!
//! let bases = fe.stop()?; // SET_VRING_ENABLE 0 and GET_VRING_BASE on every vring
//! # let _ = bases;
//! # Ok::<(), rvhost::frontend::FrontendError>(())
//! ```
//!
//! # Roles
//!
//! - [`Frontend::connect`]: the back-end listens, the front-end connects (optionally retrying
//!   until [`FrontendOptions::connect_timeout`]).
//! - [`Frontend::listen`] then [`Frontend::accept`]: the front-end listens and the back-end
//!   connects as a client (DPDK's `server=1`, rvhost's [`Flags::CLIENT`](crate::driver::Flags)).
//! - [`Frontend::from_stream`]: an already connected socket (socketpair tests).
//!
//! [`Frontend::reconnect`] drops the socket, connects or accepts again and redoes the whole
//! setup with the same memory and rings. Each ring's base is then its used index, as QEMU
//! restores it after a back-end restart: chains made available but not used are processed
//! again.
//!
//! # Memory
//!
//! One [`rvhost_hugepages::region::Region`] of [`FrontendOptions::mem_size`] bytes
//! (2 MiB hugepages when the pool has enough, else a 4 KiB memfd), announced as one or more
//! regions ([`layout`]). Its guest-physical addresses start at
//! [`FrontendOptions::gpa_base`]; its front-end virtual addresses are its real addresses in
//! this process. Rings come first, then one buffer per descriptor for every vring.
//!
//! # Setup sequence
//!
//! [`Frontend::start`] sends what QEMU's vhost-user-net and DPDK's virtio-user send:
//!
//! 1. `SET_OWNER`, `GET_FEATURES`;
//! 2. when the back-end offers `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30):
//!    `GET_PROTOCOL_FEATURES`, `SET_PROTOCOL_FEATURES` (from here on every request carries
//!    NEED_REPLY if REPLY_ACK was negotiated);
//! 3. `GET_QUEUE_NUM` (with MQ), `SET_FEATURES`;
//! 4. `SET_MEM_TABLE` (on every start, as QEMU does), or `GET_MAX_MEM_SLOTS` and one
//!    `ADD_MEM_REG` per region (once per connection); with [`FrontendOptions::dirty_log`],
//!    `SET_LOG_BASE` (and its reply);
//! 5. per vring: `SET_VRING_NUM`, `SET_VRING_BASE`, `SET_VRING_ADDR`, `SET_VRING_KICK`,
//!    `SET_VRING_CALL`;
//! 6. `SET_VRING_ENABLE 1` on every vring (when bit 30 was negotiated);
//! 7. `SET_STATUS` (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) with STATUS;
//! 8. without REPLY_ACK, a `GET_FEATURES` as a barrier (QEMU's trick): when it is answered,
//!    the back-end has handled everything before it.
//!
//! Teardown ([`Frontend::stop`]): `SET_VRING_ENABLE 0` on every vring, then `GET_VRING_BASE`
//! on every vring.
//!
//! # Data path
//!
//! [`RxQueue`] and [`TxQueue`] ([`queue`]) sit on a [`DriverRing`] ([`driver_ring`]), which touches
//! the shared memory only through the checked accessors of [`shm`], the front-end's one
//! module with `unsafe` code.

pub mod dirty_log;
pub mod driver_ring;
pub mod error;
pub mod layout;
pub mod options;
pub mod packed_ring;
pub mod queue;
mod queue_ring;
mod setup;
pub mod shm;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use rvhost_hugepages::region::{PageSize, Region, RegionConfig};

pub use dirty_log::DirtyLogArea;
pub use driver_ring::{DriverRing, RingStats};
pub use error::{FrontendError, LayoutError};
pub use layout::{Area, MemLayout, RingInfo};
pub use options::{FrontendOptions, MemTableMode, TxLayout};
pub use packed_ring::PackedDriverRing;
pub use queue::{NetHdr, QueueStats, RxPacket, RxQueue, TxQueue};
use queue_ring::QueueRing;
pub use setup::{
    Negotiated, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
pub use shm::{SharedRing, Shm, SlotPool, VirtqDesc, VirtqUsedElem};

use crate::protocol::Endpoint;
use crate::protocol::payload::MemoryRegion;

/// How the front-end reached its back-end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The front-end connected to the back-end's socket.
    Client,
    /// The front-end listens; the back-end connects.
    Server,
    /// A socket handed over by the caller (no reconnect).
    Stream,
}

/// Delay between connection attempts while [`FrontendOptions::connect_timeout`] runs.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// A vhost-user front-end: shared memory, rings, queues and the connection. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct Frontend {
    role: Role,
    path: Option<PathBuf>,
    listener: Option<UnixListener>,
    ep: Option<Endpoint>,
    opts: FrontendOptions,
    shm: Arc<Shm>,
    layout: MemLayout,
    rings: Vec<RingInfo>,
    rx: Vec<RxQueue>,
    tx: Vec<TxQueue>,
    negotiated: Option<Negotiated>,
    running: bool,
    /// ADD_MEM_REG was sent on this connection (regions are added once per connection).
    regions_added: bool,
    /// The dirty log ([`FrontendOptions::dirty_log`]).
    log: Option<DirtyLogArea>,
    /// Postcopy ([`FrontendOptions::postcopy`]): the back-end's userfaultfd and its answer to
    /// the memory table.
    postcopy: Option<(
        std::os::fd::OwnedFd,
        Vec<crate::protocol::payload::MemoryRegion>,
    )>,
}

impl Frontend {
    /// Allocates memory and rings, then connects to a back-end listening at `path`, retrying
    /// a missing or refusing socket for [`FrontendOptions::connect_timeout`]. Nothing is
    /// negotiated until [`start`](Self::start).
    pub fn connect(path: impl AsRef<Path>, opts: FrontendOptions) -> Result<Self, FrontendError> {
        let path = path.as_ref().to_path_buf();
        let mut fe = Self::build(Role::Client, Some(path), opts)?;
        fe.reconnect_socket()?;
        Ok(fe)
    }

    /// Allocates memory and rings and listens at `path` (a stale socket file nobody listens
    /// on is replaced). Call [`accept`](Self::accept) once the back-end is told to connect.
    pub fn listen(path: impl AsRef<Path>, opts: FrontendOptions) -> Result<Self, FrontendError> {
        let path = path.as_ref().to_path_buf();
        let err = |op, source| FrontendError::Listen {
            path: path.clone(),
            op,
            source,
        };
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if meta.file_type().is_socket() && UnixStream::connect(&path).is_err() {
                let _ = fs::remove_file(&path);
            }
        }
        let listener = UnixListener::bind(&path).map_err(|e| err("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("set_nonblocking", e))?;
        let mut fe = Self::build(Role::Server, Some(path), opts)?;
        fe.listener = Some(listener);
        Ok(fe)
    }

    /// A front-end over an already connected socket.
    pub fn from_stream(sock: UnixStream, opts: FrontendOptions) -> Result<Self, FrontendError> {
        let mut fe = Self::build(Role::Stream, None, opts)?;
        fe.set_socket(sock)?;
        Ok(fe)
    }

    /// Server role: waits up to [`FrontendOptions::accept_timeout`] for the back-end to
    /// connect. An existing connection is dropped first.
    pub fn accept(&mut self) -> Result<(), FrontendError> {
        let (Some(listener), Some(path)) = (&self.listener, &self.path) else {
            return Err(FrontendError::State {
                op: "accept",
                reason: "the front-end is not listening (use Frontend::listen)",
            });
        };
        self.ep = None;
        self.running = false;
        let timeout = self.opts.accept_timeout;
        let deadline = Instant::now() + timeout;
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ready = queue::wait_readable(listener.as_fd(), left).map_err(|source| {
                        FrontendError::Accept {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    if !ready {
                        return Err(FrontendError::AcceptTimeout {
                            path: path.clone(),
                            timeout,
                        });
                    }
                }
                Err(source) => {
                    return Err(FrontendError::Accept {
                        path: path.clone(),
                        source,
                    });
                }
            }
        };
        self.set_socket(sock)
    }

    /// Drops the connection, connects (client, retrying for
    /// [`FrontendOptions::connect_timeout`]) or accepts (server) again, and redoes the whole
    /// setup with the same memory and rings; each ring restarts at its used index (or at the
    /// base [`stop`](Self::stop) returned).
    pub fn reconnect(&mut self) -> Result<Negotiated, FrontendError> {
        self.disconnect();
        match self.role {
            Role::Client => self.reconnect_socket()?,
            Role::Server => self.accept()?,
            Role::Stream => {
                return Err(FrontendError::State {
                    op: "reconnect",
                    reason: "a front-end built from a stream cannot reconnect",
                });
            }
        }
        self.start()
    }

    /// Closes the connection (the back-end sees the front-end go away).
    pub fn disconnect(&mut self) {
        self.ep = None;
        self.running = false;
        self.regions_added = false;
        self.postcopy = None;
    }

    fn reconnect_socket(&mut self) -> Result<(), FrontendError> {
        let Some(path) = &self.path else {
            return Err(FrontendError::State {
                op: "connect",
                reason: "no socket path",
            });
        };
        let deadline = Instant::now() + self.opts.connect_timeout;
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    std::thread::sleep(CONNECT_RETRY);
                }
                Err(source) => {
                    return Err(FrontendError::Connect {
                        path: path.clone(),
                        source,
                    });
                }
            }
        };
        self.set_socket(sock)
    }

    /// Takes a new connection: nothing is negotiated on it yet.
    fn set_socket(&mut self, sock: UnixStream) -> Result<(), FrontendError> {
        let mut ep = Endpoint::new(sock).map_err(FrontendError::Socket)?;
        ep.set_timeout(self.opts.reply_timeout)
            .map_err(FrontendError::Socket)?;
        self.ep = Some(ep);
        self.running = false;
        self.regions_added = false;
        Ok(())
    }

    /// Allocates the memory, lays out rings and buffers, makes the queues.
    fn build(
        role: Role,
        path: Option<PathBuf>,
        opts: FrontendOptions,
    ) -> Result<Self, FrontendError> {
        opts.validate()?;
        let mut cfg = RegionConfig::new(opts.mem_size).with_name("rvhost-frontend");
        if opts.force_small_pages {
            cfg = cfg.with_page_size(PageSize::Small);
        }
        let region = Region::new(&cfg).map_err(|source| FrontendError::Memory {
            size: opts.mem_size,
            source,
        })?;
        let page = region.page_size().bytes();
        let shm = Arc::new(Shm::new(region));
        let layout = MemLayout::new(
            shm.host_addr(),
            shm.region().mmap_offset(),
            shm.len(),
            page,
            opts.regions,
            opts.gpa_base,
            opts.gpa_gap,
        )?;
        let plans = layout::plan(&layout, opts.vrings(), opts.queue_size, opts.buf_size)?;
        let log = if opts.dirty_log {
            Some(DirtyLogArea::new(gpa_end(&layout))?)
        } else {
            None
        };
        let event_idx = opts.features & crate::features::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut rx = Vec::with_capacity(usize::from(opts.queue_pairs));
        let mut tx = Vec::with_capacity(usize::from(opts.queue_pairs));
        let mut rings = Vec::with_capacity(plans.len());
        for plan in plans {
            let info = plan.info;
            let shared = SharedRing::new(
                Arc::clone(&shm),
                info.size,
                info.desc.offset,
                info.avail.offset,
                info.used.offset,
            )?;
            let ring = if opts.packed {
                // The split plan's areas hold a packed ring's (descriptor ring of the same
                // size, 4-byte event areas in the larger avail and used rings).
                let mut r = PackedDriverRing::new(
                    Arc::clone(&shm),
                    info.size,
                    info.desc.offset,
                    info.avail.offset,
                    info.used.offset,
                    false,
                )?;
                r.set_event_idx(event_idx);
                QueueRing::packed(r)
            } else {
                QueueRing::Split(DriverRing::new(shared, opts.ring_base, event_idx))
            };
            let pool = SlotPool::new(Arc::clone(&shm), plan.slots, plan.slot_gpas, opts.buf_size)?;
            let (kick, call) = if opts.eventfds {
                (
                    Some(eventfd("kick", info.vring)?),
                    Some(eventfd("call", info.vring)?),
                )
            } else {
                (None, None)
            };
            let interrupts = opts.interrupts && call.is_some();
            if info.vring % 2 == 0 {
                let mut q = RxQueue::new_rx(info.vring, ring, pool, kick, call);
                q.configure_rx(opts.features);
                q.set_interrupts(interrupts);
                rx.push(q);
            } else {
                let mut q = TxQueue::new_tx(info.vring, ring, pool, kick, call, opts.tx_layout);
                q.configure(opts.features);
                q.set_interrupts(interrupts);
                tx.push(q);
            }
            rings.push(info);
        }
        Ok(Self {
            role,
            path,
            listener: None,
            ep: None,
            opts,
            shm,
            layout,
            rings,
            rx,
            tx,
            negotiated: None,
            running: false,
            regions_added: false,
            log,
            postcopy: None,
        })
    }

    /// How the back-end was reached.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The socket path (`None` for [`Role::Stream`]).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The options.
    pub fn options(&self) -> &FrontendOptions {
        &self.opts
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.ep.is_some()
    }

    /// Whether [`start`](Self::start) completed and neither [`stop`](Self::stop) nor a
    /// disconnection happened since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// What the last [`start`](Self::start) negotiated.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The negotiated virtio features (0 before [`start`](Self::start)).
    pub fn features(&self) -> u64 {
        self.negotiated.as_ref().map_or(0, |n| n.features)
    }

    internal_pub! {
        /// The connection, for raw messages (hostile-input tests): any request, flags, payload
        /// and descriptors with `Endpoint::send_request` / `Endpoint::send_message`.
        fn endpoint(&mut self) -> Result<&mut Endpoint, FrontendError> {
            self.ep
                .as_mut()
                .ok_or(FrontendError::NotConnected("endpoint"))
        }
    }

    /// The shared memory.
    pub fn shm(&self) -> &Arc<Shm> {
        &self.shm
    }

    /// The guest address spaces over the shared memory.
    pub fn layout(&self) -> &MemLayout {
        &self.layout
    }

    /// The memory regions as sent to the back-end.
    pub fn memory_regions(&self) -> Vec<MemoryRegion> {
        self.layout.regions()
    }

    /// Where vring `vring` lives (offsets, guest-physical and front-end addresses).
    pub fn ring_info(&self, vring: u16) -> Option<&RingInfo> {
        self.rings.get(usize::from(vring))
    }

    /// Number of queue pairs.
    pub fn queue_pairs(&self) -> u16 {
        self.opts.queue_pairs
    }

    /// The receive queue of `pair` (vring `2 * pair`).
    pub fn rx(&mut self, pair: u16) -> Option<&mut RxQueue> {
        self.rx.get_mut(usize::from(pair))
    }

    /// The transmit queue of `pair` (vring `2 * pair + 1`).
    pub fn tx(&mut self, pair: u16) -> Option<&mut TxQueue> {
        self.tx.get_mut(usize::from(pair))
    }

    /// Both queues of `pair`.
    pub fn queue_pair(&mut self, pair: u16) -> Option<(&mut RxQueue, &mut TxQueue)> {
        let i = usize::from(pair);
        Some((self.rx.get_mut(i)?, self.tx.get_mut(i)?))
    }

    /// Every queue, e.g. to hand them to worker threads (`std::thread::scope`).
    pub fn queues(&mut self) -> (&mut [RxQueue], &mut [TxQueue]) {
        (&mut self.rx, &mut self.tx)
    }

    /// The back-end's userfaultfd from POSTCOPY_ADVISE ([`FrontendOptions::postcopy`]), after
    /// [`start`](Self::start): read its fault events, place the page, then wake the faulting
    /// thread (`UFFDIO_WAKE`).
    pub fn postcopy_ufd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.postcopy.as_ref().map(|(fd, _)| fd.as_fd())
    }

    /// The back-end's answer to the memory table in postcopy: the regions with the back-end's
    /// mapping address of each in `userspace_addr` (empty without
    /// [`FrontendOptions::postcopy`]).
    pub fn postcopy_regions(&self) -> &[crate::protocol::payload::MemoryRegion] {
        self.postcopy.as_ref().map_or(&[], |(_, r)| r.as_slice())
    }

    /// The dirty log ([`FrontendOptions::dirty_log`]), to read
    /// ([`DirtyLogArea::peek`]) or read and clear ([`DirtyLogArea::take`]).
    pub fn dirty_log(&self) -> Option<&DirtyLogArea> {
        self.log.as_ref()
    }

    /// Replaces the dirty log with a new, zeroed one and sends it with SET_LOG_BASE (QEMU does
    /// when the guest's memory grows); the old one is dropped (unmapped here) once the back-end
    /// has answered. Needs [`FrontendOptions::dirty_log`] and a connection.
    pub fn replace_dirty_log(&mut self) -> Result<(), FrontendError> {
        if self.log.is_none() {
            return Err(FrontendError::State {
                op: "replace_dirty_log",
                reason: "FrontendOptions::dirty_log is off",
            });
        }
        let new = DirtyLogArea::new(gpa_end(&self.layout))?;
        new.send(self.endpoint()?)?;
        self.log = Some(new);
        Ok(())
    }
}

/// The end of the guest-physical space the layout announces (what a dirty log must cover).
fn gpa_end(layout: &MemLayout) -> u64 {
    layout
        .chunks()
        .iter()
        .map(|c| c.gpa.raw().saturating_add(c.len as u64))
        .max()
        .unwrap_or(0)
}

impl Drop for Frontend {
    fn drop(&mut self) {
        if self.listener.take().is_some() {
            if let Some(p) = &self.path {
                let _ = fs::remove_file(p);
            }
        }
    }
}

fn retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::NotFound | K::ConnectionRefused | K::WouldBlock | K::Interrupted
    )
}

fn eventfd(what: &'static str, vring: u16) -> Result<EventFd, FrontendError> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(|e| {
        FrontendError::Eventfd {
            what,
            vring,
            source: e.into(),
        }
    })
}

#[cfg(test)]
mod tests;
