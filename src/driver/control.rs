//! The control thread: one epoll loop over listening sockets, connections and client sockets
//! waiting to reconnect.
//!
//! Every socket is non-blocking: a frontend that stalls mid-message leaves a partial buffer in
//! its [`Connection`]; one that never reads its replies fills a bounded output queue and is
//! disconnected; one that floods requests is served at most [`MSGS_PER_EVENT`] messages per
//! turn (epoll is level-triggered, so it is served again on the next turn, after the others).
//! A bad message closes its connection with a logged error; other connections go on.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::device::{Device, DeviceId, DeviceState, lock};
use super::handlers::{self, DataPlane, Effects, Outcome};
use super::{DriverError, Flags, SocketConfig};
use crate::protocol::{ConnError, Connection, FrontendReq, Message, policy};

const DISCONNECTED: &str = "frontend disconnected";

/// Messages handled for one connection per epoll turn.
pub const MSGS_PER_EVENT: usize = 64;

/// Delay between connection attempts of a client socket.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

const WAKE_TOKEN: u64 = 0;

thread_local! {
    static ON_CONTROL_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// True on a control thread (inside a callback).
pub(crate) fn on_control_thread() -> bool {
    ON_CONTROL_THREAD.with(Cell::get)
}

static NEXT_DEVICE_ID: AtomicU32 = AtomicU32::new(0);

/// A process-wide id for a new connection.
pub(super) fn new_device_id() -> DeviceId {
    DeviceId(NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed))
}

enum Command {
    Start(SocketConfig, mpsc::Sender<Result<(), DriverError>>),
    Stop(PathBuf, mpsc::Sender<()>),
    Shutdown,
}

type Registry = Arc<Mutex<BTreeMap<DeviceId, Device>>>;

/// The API side of the control thread.
pub(crate) struct ControlHandle {
    tx: mpsc::Sender<Command>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    registry: Registry,
}

impl ControlHandle {
    pub fn spawn() -> Result<ControlHandle, DriverError> {
        let err = |e: io::Error| DriverError::Control(format!("cannot start: {e}"));
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| err(e.into()))?;
        let wake = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| err(e.into()))?,
        );
        epoll
            .add(
                wake.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
            )
            .map_err(|e| err(e.into()))?;
        let (tx, rx) = mpsc::channel();
        let registry = Registry::default();
        let mut ctl = Control {
            epoll,
            wake: Arc::clone(&wake),
            rx,
            registry: Arc::clone(&registry),
            next_token: WAKE_TOKEN + 1,
            listeners: HashMap::new(),
            conns: HashMap::new(),
            reconnect: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("rvhost-ctrl".into())
            .spawn(move || {
                ON_CONTROL_THREAD.with(|c| c.set(true));
                ctl.run();
            })
            .map_err(err)?;
        Ok(ControlHandle {
            tx,
            wake,
            thread: Some(thread),
            registry,
        })
    }

    fn send(&self, cmd: Command) -> Result<(), DriverError> {
        self.tx
            .send(cmd)
            .map_err(|_| DriverError::Control("the control thread has exited".into()))?;
        let _ = self.wake.write(1);
        Ok(())
    }

    pub fn start(&self, cfg: SocketConfig) -> Result<(), DriverError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Start(cfg, tx))?;
        rx.recv()
            .map_err(|_| DriverError::Control("the control thread has exited".into()))?
    }

    pub fn stop(&self, path: PathBuf) -> Result<(), DriverError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Stop(path, tx))?;
        rx.recv()
            .map_err(|_| DriverError::Control("the control thread has exited".into()))
    }

    pub fn devices(&self) -> Vec<Device> {
        lock(&self.registry).values().cloned().collect()
    }

    pub fn shutdown(&mut self) {
        let _ = self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Listener {
    sock: UnixListener,
    cfg: SocketConfig,
}

/// One connection: its framing and its device.
pub(super) struct Conn {
    pub conn: Connection,
    pub state: DeviceState,
    /// EPOLLOUT is in the interest set.
    pub writing: bool,
}

struct Pending {
    cfg: SocketConfig,
    next: Instant,
}

struct Control {
    epoll: Epoll,
    wake: Arc<EventFd>,
    rx: mpsc::Receiver<Command>,
    registry: Registry,
    next_token: u64,
    listeners: HashMap<u64, Listener>,
    conns: HashMap<u64, Conn>,
    reconnect: Vec<Pending>,
}

impl Control {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let timeout = self.timeout_ms();
            let n = match self.epoll.wait(&mut events, EpollTimeout::from(timeout)) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => 0,
                Err(e) => {
                    log::error!("vhost-user control: epoll_wait failed: {e}; stopping");
                    self.close_all();
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == WAKE_TOKEN {
                    let _ = self.wake.read();
                    if !self.commands() {
                        self.close_all();
                        return;
                    }
                } else if self.listeners.contains_key(&token) {
                    self.accept(token);
                } else if self.conns.contains_key(&token) {
                    self.serve(token, ev.events());
                }
            }
            self.retry_clients();
        }
    }

    fn timeout_ms(&self) -> u16 {
        let now = Instant::now();
        self.reconnect
            .iter()
            .map(|p| p.next.saturating_duration_since(now).as_millis())
            .min()
            .map_or(1000, |ms| ms.min(1000) as u16)
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Handles queued API commands; false on shutdown.
    fn commands(&mut self) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Start(cfg, reply) => {
                    let _ = reply.send(self.start(cfg));
                }
                Command::Stop(path, reply) => {
                    self.stop(&path);
                    let _ = reply.send(());
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn start(&mut self, cfg: SocketConfig) -> Result<(), DriverError> {
        if cfg.flags.contains(Flags::CLIENT) {
            match UnixStream::connect(&cfg.path) {
                Ok(s) => self.add_conn(s, cfg),
                Err(e) if cfg.flags.contains(Flags::NO_RECONNECT) => {
                    return Err(DriverError::Socket {
                        path: cfg.path,
                        op: "connect",
                        source: e,
                    });
                }
                Err(e) => {
                    log::info!(
                        "{}: connect failed ({e}); retrying every second",
                        cfg.path.display()
                    );
                    self.reconnect.push(Pending {
                        next: Instant::now() + RECONNECT_INTERVAL,
                        cfg,
                    });
                }
            }
            return Ok(());
        }
        let sock = listen(&cfg.path)?;
        let token = self.token();
        self.epoll
            .add(sock.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(|e| DriverError::Socket {
                path: cfg.path.clone(),
                op: "epoll add",
                source: e.into(),
            })?;
        log::info!("{}: listening for vhost-user frontends", cfg.path.display());
        self.listeners.insert(token, Listener { sock, cfg });
        Ok(())
    }

    fn stop(&mut self, path: &Path) {
        self.reconnect.retain(|p| p.cfg.path != path);
        let tokens: Vec<u64> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.cfg.path == path)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some(l) = self.listeners.remove(&t) {
                let _ = self.epoll.delete(l.sock.as_fd());
                let _ = std::fs::remove_file(path);
            }
        }
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state.cfg.path == path)
            .map(|(t, _)| *t)
            .collect();
        for t in conns {
            self.close(t, "socket unregistered", false);
        }
    }

    fn close_all(&mut self) {
        let conns: Vec<u64> = self.conns.keys().copied().collect();
        for t in conns {
            self.close(t, "driver shut down", false);
        }
        for (_, l) in self.listeners.drain() {
            let _ = std::fs::remove_file(&l.cfg.path);
        }
        self.reconnect.clear();
    }

    fn accept(&mut self, token: u64) {
        loop {
            let Some(l) = self.listeners.get(&token) else {
                return;
            };
            match l.sock.accept() {
                Ok((s, _)) => {
                    let cfg = l.cfg.clone();
                    self.add_conn(s, cfg);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::error!("{}: accept failed: {e}", l.cfg.path.display());
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, sock: UnixStream, cfg: SocketConfig) {
        let path = cfg.path.clone();
        let conn = match Connection::new(sock) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{}: cannot set up connection: {e}", path.display());
                return self.schedule_reconnect(cfg);
            }
        };
        let token = self.token();
        if let Err(e) = self.epoll.add(
            conn.socket().as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, token),
        ) {
            log::error!("{}: epoll add failed: {e}", path.display());
            return self.schedule_reconnect(cfg);
        }
        let id = new_device_id();
        let state = DeviceState::new(id, cfg);
        let dev = state.dev.clone();
        let ops = Arc::clone(&state.cfg.ops);
        log::info!("{}: new vhost-user connection, {id}", path.display());
        lock(&self.registry).insert(id, dev.clone());
        self.conns.insert(
            token,
            Conn {
                conn,
                state,
                writing: false,
            },
        );
        ops.new_connection(&dev);
    }

    fn schedule_reconnect(&mut self, cfg: SocketConfig) {
        if cfg.flags.contains(Flags::CLIENT) && !cfg.flags.contains(Flags::NO_RECONNECT) {
            self.reconnect.push(Pending {
                next: Instant::now() + RECONNECT_INTERVAL,
                cfg,
            });
        }
    }

    fn retry_clients(&mut self) {
        let now = Instant::now();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reconnect)
            .into_iter()
            .partition(|p| p.next <= now);
        self.reconnect = wait;
        for p in due {
            match UnixStream::connect(&p.cfg.path) {
                Ok(s) => {
                    log::info!("{}: connected", p.cfg.path.display());
                    self.add_conn(s, p.cfg);
                }
                Err(_) => self.reconnect.push(Pending {
                    next: now + RECONNECT_INTERVAL,
                    cfg: p.cfg,
                }),
            }
        }
    }

    fn serve(&mut self, token: u64, events: EpollFlags) {
        if events.contains(EpollFlags::EPOLLOUT) {
            let flushed = self.conns.get_mut(&token).map(|c| c.conn.flush());
            if let Some(Err(e)) = flushed {
                return self.close(token, &format!("write failed: {e}"), true);
            }
        }
        for _ in 0..MSGS_PER_EVENT {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            match c.conn.recv() {
                Ok(Some(msg)) => {
                    if let Err(reason) = dispatch(c, msg) {
                        return self.close(token, &reason, true);
                    }
                }
                Ok(None) => break,
                Err(ConnError::Closed { pending: 0 }) => {
                    return self.close(token, DISCONNECTED, true);
                }
                Err(e) => return self.close(token, &format!("bad message: {e}"), true),
            }
        }
        self.update_interest(token);
    }

    fn update_interest(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let want = c.conn.wants_write();
        if want != c.writing {
            let flags = if want {
                EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
            } else {
                EpollFlags::EPOLLIN
            };
            let mut ev = EpollEvent::new(flags, token);
            if self.epoll.modify(c.conn.socket().as_fd(), &mut ev).is_ok() {
                c.writing = want;
            }
        }
    }

    /// Closes a connection: destroy_device if running, then destroy_connection.
    fn close(&mut self, token: u64, reason: &str, reconnect: bool) {
        let Some(mut c) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.epoll.delete(c.conn.socket().as_fd());
        let id = c.state.dev.id();
        let path = c.state.cfg.path.clone();
        if reason == DISCONNECTED || !reconnect {
            log::info!("{}: {id}: {reason}", path.display());
        } else {
            log::error!("{}: {id}: {reason}; closing the connection", path.display());
        }
        let ops = Arc::clone(&c.state.cfg.ops);
        let dev = c.state.dev.clone();
        stop_device(&mut c.state);
        lock(&self.registry).remove(&id);
        let cfg = c.state.cfg.clone();
        drop(c);
        ops.destroy_connection(&dev);
        if reconnect {
            self.schedule_reconnect(cfg);
        }
    }
}

/// The device side of closing a connection: `destroy_device` if it runs, then its rings, fds
/// and memory go (nothing may use them after destroy_device; the copy devices finish with them
/// first). The caller drops the connection and calls `destroy_connection` after this.
pub(super) fn stop_device(state: &mut DeviceState) {
    if state.running {
        state.running = false;
        let ops = Arc::clone(&state.cfg.ops);
        ops.destroy_device(&state.dev);
    }
    state.quiesce(None);
    state.reset_vrings();
    state.clear_memory();
    state.set_log(None);
}

/// Creates a listening socket, replacing a stale socket file nobody listens on.
fn listen(path: &Path) -> Result<UnixListener, DriverError> {
    let err = |op, source| DriverError::Socket {
        path: path.to_path_buf(),
        op,
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let sock = UnixListener::bind(path).map_err(|e| err("bind", e))?;
    sock.set_nonblocking(true)
        .map_err(|e| err("set_nonblocking", e))?;
    Ok(sock)
}

/// Handles one message: checks, runs the handler, replies, and runs the callbacks that
/// follow from the new state. `Err` closes the connection.
pub(super) fn dispatch(c: &mut Conn, mut msg: Message) -> Result<(), String> {
    if super::postcopy::is_acknowledgement(&c.state, &msg) {
        return postcopy_acknowledged(c, &msg);
    }
    let req = msg.check().map_err(|e| e.to_string())?;
    if matches!(
        c.state.postcopy.pending,
        Some(super::postcopy::Pending::Regions(_))
    ) && req != FrontendReq::AddMemReg
    {
        return Err(format!(
            "{} received between postcopy ADD_MEM_REGs and their acknowledgement",
            req.name()
        ));
    }
    let row = handlers::row(req);
    let state = &mut c.state;
    // The spec has SET_OWNER open every session, but DPDK's virtio-user in server mode (22.11)
    // sends none when a backend reconnects to it: it starts with SET_VRING_ENABLE and
    // GET_VRING_BASE (stopping the rings it had), then the usual set-up. DPDK's vhost and
    // libvhost-user ignore SET_OWNER, so that frontend works with them. The session is this
    // connection's, whatever it sends: the first request that needs an owner and is served
    // makes its peer the owner (one refused leaves the state as it was).
    let implicit_owner = row.needs_owner && !state.owner;
    if row.stops_device && state.running {
        state.running = false;
        let ops = Arc::clone(&state.cfg.ops);
        ops.destroy_device(&state.dev);
    }
    // Copies in flight on what the request changes finish (and their packets retire) before
    // the handler sees the rings or the memory.
    match row.data_plane {
        DataPlane::None => {}
        DataPlane::Queue => {
            if let Some(i) = handlers::vring_named(req, &msg.payload) {
                state.quiesce(Some(i as usize));
            }
        }
        DataPlane::AllQueues => state.quiesce(None),
    }
    let header = msg.header;
    let reply_expected = policy(req).reply_expected(&header, state.protocol_features);
    let mut fx = Effects::default();
    let outcome = (row.handler)(state, &mut msg, &mut fx).map_err(|e| with_causes(&e))?;
    log::debug!("{}: {} handled", state.dev.id(), req.name());
    let outcome_failed = matches!(outcome, Outcome::Failed(_));
    match outcome {
        Outcome::Reply(payload, fds) => {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(OwnedFd::as_fd).collect();
            c.conn
                .send_reply(&header, &payload, &borrowed)
                .map_err(|e| format!("reply to {}: {e}", req.name()))?;
        }
        Outcome::Done if reply_expected => c
            .conn
            .send_ack(&header, 0)
            .map_err(|e| format!("ack of {}: {e}", req.name()))?,
        Outcome::Failed(why) => {
            log::warn!("{}: {} refused: {why}", c.state.dev.id(), req.name());
            if reply_expected {
                c.conn
                    .send_ack(&header, 1)
                    .map_err(|e| format!("ack of {}: {e}", req.name()))?;
            }
        }
        Outcome::Done => {}
    }
    if implicit_owner && !outcome_failed {
        log::warn!(
            "{}: {} before SET_OWNER: taking the frontend as the owner (DPDK virtio-user \
             sends none when a backend reconnects to it)",
            c.state.dev.id(),
            req.name()
        );
        c.state.owner = true;
    }
    after_message(&mut c.state, req, fx);
    Ok(())
}

/// The message after a SET_MEM_TABLE answered in postcopy mode: it must be the frontend's
/// acknowledgement ([`postcopy::acknowledged`](super::postcopy::acknowledged)); answered with
/// status 0 when it asks (QEMU sets NEED_REPLY with REPLY_ACK).
fn postcopy_acknowledged(c: &mut Conn, msg: &Message) -> Result<(), String> {
    super::postcopy::acknowledged(&mut c.state, msg)?;
    if msg.header.need_reply() {
        c.conn
            .send_ack(&msg.header, 0)
            .map_err(|e| format!("ack of the postcopy acknowledgement: {e}"))?;
    }
    let req = msg
        .header
        .frontend_request()
        .unwrap_or(FrontendReq::SetMemTable);
    after_message(&mut c.state, req, Effects::default());
    Ok(())
}

/// An error and its chain of causes, for the log line that closes a connection.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// DPDK's end-of-message step: features_changed, new_device when the device became ready,
/// vring_state_changed for every vring whose enable state changed while running.
fn after_message(state: &mut DeviceState, req: FrontendReq, fx: Effects) {
    let ops = Arc::clone(&state.cfg.ops);
    if let Some(f) = fx.features_changed {
        ops.features_changed(&state.dev, f);
    }
    if !state.running && state.is_ready() {
        state.publish();
        match ops.new_device(&state.dev) {
            Ok(()) => {
                log::info!("{}: device is running", state.dev.id());
                state.running = true;
            }
            Err(e) => log::warn!(
                "{}: new_device refused the device after {}: {e}",
                state.dev.id(),
                req.name()
            ),
        }
    }
    if state.running {
        for i in 0..state.notified.len() {
            let enabled = state.dev.lock_vring(i).is_some_and(|vq| vq.enabled);
            if state.notified[i] != enabled {
                state.notified[i] = enabled;
                ops.vring_state_changed(&state.dev, i as u16, enabled);
            }
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}
