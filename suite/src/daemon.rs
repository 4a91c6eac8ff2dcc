//! The core of `s6-fdholderd`: a single-threaded, event-driven server that
//! holds descriptors for its clients.
//!
//! - [`Store`]: the held fds, by id (hash map) and by expiry (ordered set),
//!   so that store, lookup and expiry are O(1) or O(log n).
//! - `Conn`: one client: framing buffers, rights decided at accept time,
//!   setdump progress, and the `-t` deadline.
//! - [`run`]: the epoll loop over the listener, a signalfd and the clients,
//!   waking only for I/O, signals, expiries and deadlines (idle CPU is 0).
//!   Held fds marked "drop on hang-up" are in the epoll set too, with no
//!   events: epoll reports only their POLLHUP or POLLERR, and each report
//!   drops the fd (see [`Watch`]).
//!
//! Every malformed request drops only its connection; dropping a connection
//! closes every descriptor that came with it. Nothing here panics on client
//! input: requests are parsed by [`fdholder::proto::parse_request`], which
//! checks every length.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::net::SocketFlags;

use crate::rules::{CdbOpenError, CdbRules, Decision, Rules};
use crate::sys::{self, Regex};
use crate::upgrade::{SavedConn, SavedHeld, SavedMsg, SavedWatch, State};
use fdholder::proto::{self, OnHangup, Request};
use fdholder::tain::Tain;
use fdholder::wire::{MAX_FDS, Receiver, Sender};

/// Hard limit on concurrent connections, as the reference.
pub const MAXCONN_LIMIT: u32 = 256;

/// Descriptors kept free below RLIMIT_NOFILE beyond the daemon's own and
/// the held ones: one for a connection, and one for what a request on it
/// brings (a store's fd, refused with ENFILE when the store is full) or
/// what judging a new one takes (a rule file read by path, one at a
/// time). So a full store answers ENFILE and takes the delete that frees
/// it. The reference keeps 6: these and the 4 it assumes are its own.
const CLIENT_FDS: u64 = 2;

/// The daemon's own descriptors when they cannot be counted (no
/// `/proc/self/fd`): 0 and 2, epoll and signalfd, as the reference assumes.
const OWN_FDS_ASSUMED: u64 = 4;

/// Where the access rules are.
#[derive(Debug, Clone)]
pub enum RulesConfig {
    /// `-i DIR`: a rules directory, read for every connection.
    Dir(PathBuf),
    /// `-x FILE`: a rules cdb, reopened on SIGHUP.
    Cdb(PathBuf),
}

/// The daemon's settings (the command-line options of `s6-fdholderd`).
#[derive(Debug, Clone)]
pub struct Config {
    /// `-v`: 0 quiet, 1 warnings (default), 2 also info.
    pub verbosity: u32,
    /// `-c`: concurrent connections, already clamped to 1..=256.
    pub maxconn: u32,
    /// `-n`: held fds at most (at least 1); lowered when the daemon
    /// starts to the room RLIMIT_NOFILE leaves (see [`CLIENT_FDS`]).
    pub maxfds: u32,
    /// `-t`: drop a client the daemon has waited on this long: for its
    /// first request since accept, for the rest of a request partly
    /// received, or for it to read its answers.
    pub client_timeout: Option<Duration>,
    /// `-T`: after SIGTERM, wait at most this long for clients.
    pub lameduck_timeout: Option<Duration>,
    /// `-i` or `-x`.
    pub rules: RulesConfig,
    /// How to execute the program again on SIGUSR2 (`None`: its path
    /// could not be found; SIGUSR2 then only warns).
    pub exec: Option<crate::upgrade::ExecSelf>,
}

/// Writes the daemon's log lines to stderr.
#[derive(Debug, Clone, Copy)]
struct Log {
    verbosity: u32,
}

impl Log {
    // Each line goes out in one write, errors ignored (never eprintln!,
    // which panics when stderr is gone: a dead logger must not kill us).
    fn warn(&self, msg: std::fmt::Arguments<'_>) {
        if self.verbosity >= 1 {
            crate::cli::write_stderr(format!("s6-fdholderd: warning: {msg}\n").as_bytes());
        }
    }
    fn info(&self, msg: std::fmt::Arguments<'_>) {
        if self.verbosity >= 2 {
            crate::cli::write_stderr(format!("s6-fdholderd: info: {msg}\n").as_bytes());
        }
    }
}

/// A held descriptor. Shared with outgoing messages, so that a fd being
/// sent stays open even if another client deletes it meanwhile.
struct Held {
    id: Box<[u8]>,
    fd: Rc<OwnedFd>,
    limit: Tain,
    /// When it expires, its key in [`Store::by_limit`] with its slot; none
    /// for an infinite limit. The limit, unless a store's limit equals the
    /// expiry of a held fd: then 1 ns later until it is unique, as the
    /// reference shifts it, so that equal limits expire in the order they
    /// were stored and free their slots in the reference's order.
    expiry: Option<Tain>,
    /// Whether the daemon watches it for a hang-up.
    watch: Watch,
}

/// Whether a held fd is in the epoll set, to be dropped on hang-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Stored unmarked (a plain store, a setdump entry): never polled.
    Unmarked,
    /// Marked, but it cannot hang up: a listening socket, or a file epoll
    /// refuses (EPERM: a regular file, a directory). Never polled.
    MarkedUnpollable,
    /// Marked and registered with no events under this token (see
    /// [`held_token`]): POLLHUP or POLLERR drops it.
    Polled(u64),
}

/// Tokens of held fds in the epoll set have this bit; those of
/// connections are their index (below [`MAXCONN_LIMIT`]), those of the
/// listener and the signalfd have bit 63.
const HELD_TAG: u64 = 1 << 62;

/// The epoll token of a held fd polled for hang-up: [`HELD_TAG`], a
/// registration count (30 bits, wrapping) and the slot. The count tells
/// a report for an fd already dropped, still in the batch epoll returned,
/// from one for the fd that took its slot since.
fn held_token(generation: u32, slot: u32) -> u64 {
    HELD_TAG | (u64::from(generation & ((1 << 30) - 1)) << 32) | u64::from(slot)
}

/// Why the store did not take a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// As many fds as `-n` allows are held (ENFILE).
    Full,
    /// The id is held already (EBUSY).
    Busy,
    /// Marked to drop on hang-up, and epoll could not take it (its errno:
    /// ENOMEM, ENOSPC past `max_user_watches`, ELOOP...).
    Unwatchable(i32),
}

impl Refusal {
    fn errno(self) -> i32 {
        match self {
            Refusal::Full => libc::ENFILE,
            Refusal::Busy => libc::EBUSY,
            Refusal::Unwatchable(e) => e,
        }
    }
}

/// The held descriptors, in slots numbered as the reference numbers them
/// (skalibs' `genset`): a new fd takes the slot most recently freed, else
/// the next never used; list and getdump go through the slots in order.
/// So the same requests give the same order as the reference's, and the
/// order never depends on a hash.
pub struct Store {
    slots: Vec<Option<Held>>,
    /// Freed slots, the last freed on top.
    free: Vec<u32>,
    by_id: HashMap<Box<[u8]>, u32>,
    /// Finite expiry dates only; "infinite" ones never expire.
    by_limit: BTreeSet<(Tain, u32)>,
    max: usize,
    /// The epoll set that fds marked "drop on hang-up" join (none in unit
    /// tests: marked stores then take [`Watch::MarkedUnpollable`]).
    epoll: Option<Rc<OwnedFd>>,
    /// Registrations so far, for [`held_token`].
    watches: u32,
}

impl Store {
    fn new(max: usize) -> Store {
        Store {
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_limit: BTreeSet::new(),
            max,
            epoll: None,
            watches: 0,
        }
    }

    /// Number of fds held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no fd is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether `n` more fds would fit.
    fn has_room_for(&self, n: usize) -> bool {
        n <= self.max && self.len() + n <= self.max
    }

    /// The fd held under `id`.
    fn get(&self, id: &[u8]) -> Option<&Rc<OwnedFd>> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_ref().map(|h| &h.fd)
    }

    /// Every held fd, in slot order.
    fn iter(&self) -> impl Iterator<Item = &Held> {
        self.slots.iter().flatten()
    }

    /// The slot the next [`Store::fill_slot`] takes.
    fn next_slot(&self) -> u32 {
        self.free.last().copied().unwrap_or(self.slots.len() as u32)
    }

    /// Puts a new entry in a slot; the id index is the caller's to update.
    /// `shift`: a store (the reference shifts equal limits for a store, not
    /// for a setdump).
    fn fill_slot(
        &mut self,
        id: &[u8],
        fd: OwnedFd,
        limit: Tain,
        now: Tain,
        shift: bool,
        watch: Watch,
    ) -> u32 {
        let mut expiry = limit.is_finite_from(now).then_some(limit);
        if let (Some(t), true) = (expiry.as_mut(), shift) {
            while self
                .by_limit
                .range((*t, 0)..=(*t, u32::MAX))
                .next()
                .is_some()
            {
                *t = match t.nano {
                    999_999_999 => Tain {
                        sec: t.sec.saturating_add(1),
                        nano: 0,
                    },
                    n => Tain { nano: n + 1, ..*t },
                };
            }
        }
        let held = Held {
            id: id.into(),
            fd: Rc::new(fd),
            limit,
            expiry,
            watch,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(held);
                slot
            }
            None => {
                self.slots.push(Some(held));
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(t) = expiry {
            self.index_expiry(t, slot);
        }
        slot
    }

    /// Indexes a finite expiry date (one copy of the B-tree's insert, for
    /// a store and for the upgrade's restore).
    #[inline(never)]
    fn index_expiry(&mut self, t: Tain, slot: u32) {
        self.by_limit.insert((t, slot));
    }

    /// Empties a slot and returns what it held.
    fn free_slot(&mut self, slot: u32) -> Held {
        let held = self.slots[slot as usize]
            .take()
            .expect("the id index names only filled slots");
        if let Some(t) = held.expiry {
            self.by_limit.remove(&(t, slot));
        }
        if let (Watch::Polled(_), Some(ep)) = (held.watch, &self.epoll) {
            // Explicitly, before the fd may be closed: a copy of it held
            // elsewhere (a client that retrieved it) would keep the
            // registration alive, reporting for a slot no longer its own.
            let _ = epoll::delete(ep, &held.fd);
        }
        self.free.push(slot);
        held
    }

    /// Registers a marked fd that is to take `slot`, with no events
    /// (epoll reports POLLHUP and POLLERR whatever the mask, so readable
    /// data costs nothing). A listening socket is never polled (it cannot
    /// hang up), nor a file epoll refuses (EPERM: regular files,
    /// directories).
    fn watch(&mut self, fd: BorrowedFd<'_>, slot: u32) -> Result<Watch, Refusal> {
        let Some(ep) = &self.epoll else {
            return Ok(Watch::MarkedUnpollable);
        };
        if rustix::net::sockopt::socket_acceptconn(fd) == Ok(true) {
            return Ok(Watch::MarkedUnpollable);
        }
        let token = held_token(self.watches, slot);
        match epoll::add(
            ep,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::empty(),
        ) {
            Ok(()) => {
                self.watches = self.watches.wrapping_add(1);
                Ok(Watch::Polled(token))
            }
            Err(rustix::io::Errno::PERM) => Ok(Watch::MarkedUnpollable),
            Err(e) => Err(Refusal::Unwatchable(e.raw_os_error())),
        }
    }

    /// Epoll reported `token` (a hang-up or an error): drops the fd it
    /// names, if it is still held there. Returns its id.
    fn hung_up(&mut self, token: u64) -> Option<Box<[u8]>> {
        let slot = token as u32;
        let held = self.slots.get(slot as usize)?.as_ref()?;
        if held.watch != Watch::Polled(token) {
            return None; // dropped already, in this batch
        }
        let held = self.free_slot(slot);
        self.by_id.remove(&held.id);
        Some(held.id)
    }

    /// Holds `fd` under `id` (store): refused when the store is full or
    /// the id is held, as the reference checks, in that order.
    #[cfg(test)]
    fn insert(&mut self, id: &[u8], fd: OwnedFd, limit: Tain, now: Tain) -> Result<(), Refusal> {
        self.insert_marked(id, fd, limit, now, OnHangup::Keep)
    }

    /// [`Store::insert`], with the store's mark: a fd to drop on hang-up
    /// is watched (and refused if epoll cannot take it).
    fn insert_marked(
        &mut self,
        id: &[u8],
        fd: OwnedFd,
        limit: Tain,
        now: Tain,
        on_hangup: OnHangup,
    ) -> Result<(), Refusal> {
        if !self.has_room_for(1) {
            return Err(Refusal::Full);
        }
        if self.by_id.contains_key(id) {
            return Err(Refusal::Busy);
        }
        let watch = match on_hangup {
            OnHangup::Keep => Watch::Unmarked,
            OnHangup::Drop => self.watch(fd.as_fd(), self.next_slot())?,
        };
        let slot = self.fill_slot(id, fd, limit, now, true, watch);
        self.by_id.insert(id.into(), slot);
        Ok(())
    }

    /// Holds `fd` under `id`, closing whatever was held there (setdump):
    /// the new entry takes its slot before the old one is freed, as in the
    /// reference. The caller has checked [`Store::has_room_for`] for the
    /// whole chunk.
    fn replace(&mut self, id: &[u8], fd: OwnedFd, limit: Tain, now: Tain) {
        let slot = self.fill_slot(id, fd, limit, now, false, Watch::Unmarked);
        if let Some(old) = self.by_id.insert(id.into(), slot) {
            self.free_slot(old);
        }
    }

    fn remove(&mut self, id: &[u8]) -> Option<Rc<OwnedFd>> {
        let slot = self.by_id.remove(id)?;
        Some(self.free_slot(slot).fd)
    }

    /// The earliest finite expiry date.
    fn next_expiry(&self) -> Option<Tain> {
        self.by_limit.first().map(|(t, _)| *t)
    }

    /// Closes and forgets every fd whose limit is not after `now`.
    fn expire(&mut self, now: Tain, log: Log) {
        while let Some(&(t, slot)) = self.by_limit.first() {
            if t > now {
                break;
            }
            let held = self.free_slot(slot);
            self.by_id.remove(&held.id);
            log.info(format_args!(
                "expired id {}",
                String::from_utf8_lossy(&held.id)
            ));
        }
    }
}

/// What a connection may do, decided once at accept time.
#[derive(Default)]
struct Rights {
    store: Option<Rc<Regex>>,
    retrieve: Option<Rc<Regex>>,
    list: bool,
    getdump: bool,
    setdump: bool,
}

fn matches(re: &Option<Rc<Regex>>, id: &CStr) -> bool {
    re.as_ref().is_some_and(|re| re.is_match(id))
}

/// The per-client state that request handling touches.
struct ConnState {
    tx: Sender<Rc<OwnedFd>>,
    rights: Rights,
    /// Fds still expected in the current setdump (0: none under way).
    dumping: u32,
    /// When to drop this client (`-t`): set when the daemon starts waiting
    /// on it (at accept, for its first request; when part of a request
    /// arrives, or an answer is queued, while none is set), cleared only
    /// once it waits for nothing (every answer written, no part of a
    /// request received). So it bounds every wait, from its start.
    deadline: Option<Instant>,
}

/// One client connection.
struct Conn {
    sock: OwnedFd,
    rx: Receiver,
    st: ConnState,
    /// The epoll interest currently registered.
    interest: epoll::EventFlags,
}

/// A request that breaks the protocol: the connection is dropped.
struct ProtocolError;

const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_SIGNALS: u64 = u64::MAX - 1;

struct Daemon<'a> {
    cfg: Config,
    log: Log,
    listener: BorrowedFd<'a>,
    /// Shared with the store, which registers the fds it watches.
    epoll: Rc<OwnedFd>,
    signals: OwnedFd,
    rules: Rules,
    regex_cache: HashMap<Vec<u8>, Rc<Regex>>,
    store: Store,
    conns: Vec<Option<Conn>>,
    nconns: usize,
    accepting: bool,
    accept_backoff: Option<Instant>,
    lameduck: Option<Option<Instant>>,
    /// This process's euid and egid, for `uid/self` and `gid/self`: read
    /// once, they never change while the daemon runs.
    euid: u32,
    egid: u32,
    /// RLIMIT_NOFILE when the daemon started (`None`: unlimited).
    fd_limit: Option<u64>,
    /// The daemon's own descriptors below that limit: those it was given
    /// (0, 2 and any other inherited) and those it opened to run (epoll,
    /// signalfd). Counted before it serves.
    own_fds: u64,
}

/// How many descriptors numbered below `limit` are open (those numbered
/// above it take no room: a new descriptor gets the lowest free number,
/// which must be below the limit); `None` if `/proc/self/fd` cannot be
/// read.
fn open_fds_below(limit: u64) -> Option<u64> {
    let mut n: u64 = 0;
    for entry in std::fs::read_dir("/proc/self/fd").ok()? {
        let name = entry.ok()?.file_name();
        let fd: u64 = name.to_str()?.parse().ok()?;
        if fd < limit {
            n += 1;
        }
    }
    // One of them is the directory being read, closed now.
    Some(n.saturating_sub(1))
}

/// Whether descriptor 1 is open (`-1` closes it once ready).
fn stdout_is_open() -> bool {
    rustix::io::fcntl_getfd(io::stdout().as_fd()).is_ok()
}

fn err(e: rustix::io::Errno) -> io::Error {
    e.into()
}

/// Opens the rules `cfg` names (the cdb is mapped now).
pub fn open_rules(cfg: &RulesConfig) -> io::Result<Rules> {
    Ok(match cfg {
        RulesConfig::Dir(d) => Rules::Dir(d.clone()),
        RulesConfig::Cdb(f) => Rules::Cdb(CdbRules::open(f)?),
    })
}

/// Runs the daemon on `listener` until SIGTERM and the lame-duck period are
/// over. Returns the exit code: bit 0 set if fds were still held, bit 1 if
/// connections were still open. `ready` is called once the daemon is about
/// to serve (it implements `-1`).
pub fn run(
    listener: BorrowedFd<'_>,
    cfg: Config,
    rules: Rules,
    ready: impl FnOnce(),
    resume: Option<State>,
) -> io::Result<i32> {
    sys::ignore_sigpipe()?;
    let signals = sys::signalfd(&[libc::SIGTERM, libc::SIGHUP, libc::SIGUSR2])?;
    let fl = rustix::fs::fcntl_getfl(listener)?;
    rustix::fs::fcntl_setfl(listener, fl | rustix::fs::OFlags::NONBLOCK)?;
    let ep = Rc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?);
    epoll::add(
        &ep,
        listener,
        epoll::EventData::new_u64(TOKEN_LISTENER),
        epoll::EventFlags::IN,
    )?;
    epoll::add(
        &ep,
        &signals,
        epoll::EventData::new_u64(TOKEN_SIGNALS),
        epoll::EventFlags::IN,
    )?;
    let log = Log {
        verbosity: cfg.verbosity,
    };
    let mut store = Store::new(cfg.maxfds as usize);
    store.epoll = Some(ep.clone());
    let mut d = Daemon {
        store,
        conns: Vec::new(),
        nconns: 0,
        cfg,
        log,
        listener,
        epoll: ep,
        signals,
        rules,
        regex_cache: HashMap::new(),
        accepting: true,
        accept_backoff: None,
        lameduck: None,
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
        fd_limit: rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
        own_fds: OWN_FDS_ASSUMED,
    };
    if let Some(state) = resume {
        // After an upgrade: readiness was signalled (and the sandbox set)
        // by the first program; the budget was settled then.
        d.restore(state)?;
        return d.main_loop();
    }
    // The daemon's descriptors are counted before it says it is ready:
    // none is opened after (whoever counts them once it is ready sees them
    // settled). Stdout, if `ready` closes it, is then not counted.
    let counted = d.fd_limit.map(open_fds_below);
    let stdout_open = stdout_is_open();
    ready();
    let closed = u64::from(stdout_open && !stdout_is_open());
    d.settle_fd_budget(counted.map(|n| n.map(|n| n.saturating_sub(closed))));
    d.main_loop()
}

impl Daemon<'_> {
    /// The whole state, for an upgrade.
    #[inline(never)]
    fn save(&self) -> State {
        use std::os::fd::AsRawFd;
        let now = Instant::now();
        let re = |r: &Option<Rc<Regex>>| r.as_ref().map(|r| r.source().to_vec());
        let mut st = State {
            nonce: crate::upgrade::nonce(),
            listener: self.listener.as_raw_fd(),
            max: self.store.max as u64,
            own_fds: self.own_fds,
            watches: self.store.watches,
            free: self.store.free.clone(),
            ..State::default()
        };
        for s in &self.store.slots {
            st.slots.push(s.as_ref().map(|h| SavedHeld {
                fd: h.fd.as_raw_fd(),
                id: h.id.to_vec(),
                limit: h.limit,
                expiry: h.expiry,
                watch: match h.watch {
                    Watch::Unmarked => SavedWatch::Unmarked,
                    Watch::MarkedUnpollable => SavedWatch::MarkedUnpollable,
                    Watch::Polled(_) => SavedWatch::Polled,
                },
            }));
        }
        for c in &self.conns {
            let Some(c) = c else {
                st.conns.push(None);
                continue;
            };
            let (bytes, fds) = c.rx.buffered();
            let mut saved = SavedConn {
                sock: c.sock.as_raw_fd(),
                store_re: re(&c.st.rights.store),
                retrieve_re: re(&c.st.rights.retrieve),
                list: c.st.rights.list,
                getdump: c.st.rights.getdump,
                setdump: c.st.rights.setdump,
                dumping: c.st.dumping,
                deadline_in: c.st.deadline.map(|d| d.saturating_duration_since(now)),
                rx: bytes.to_vec(),
                ..SavedConn::default()
            };
            for f in fds {
                saved.rx_fds.push(f.as_raw_fd());
            }
            for m in c.st.tx.pending() {
                let mut msg = SavedMsg {
                    header: m.header,
                    payload: m.payload.to_vec(),
                    written: m.written as u64,
                    fds: Vec::new(),
                };
                for f in m.fds {
                    msg.fds.push(f.as_raw_fd());
                }
                saved.tx.push(msg);
            }
            st.conns.push(Some(saved));
        }
        st
    }

    /// Every descriptor the state names (some more than once).
    fn state_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v = vec![self.listener];
        v.extend(self.store.iter().map(|h| h.fd.as_fd()));
        for c in self.conns.iter().flatten() {
            v.push(c.sock.as_fd());
            v.extend(c.rx.buffered().1);
            for m in c.st.tx.pending() {
                v.extend(m.fds.iter().map(|f| f.as_fd()));
            }
        }
        v
    }

    /// SIGUSR2: executes the program at its path again, in this process,
    /// with the whole state; a failure at any step before the exec leaves
    /// this daemon serving, with a warning that says why.
    #[inline(never)]
    fn upgrade(&self) {
        use crate::upgrade::Failure;
        let why = match &self.cfg.exec {
            None => Failure::NoPath,
            Some(_) if self.lameduck.is_some() => Failure::LameDuck,
            Some(exe) => {
                self.log.info(format_args!("received SIGUSR2, upgrading"));
                self.try_upgrade(exe)
            }
        };
        self.log
            .warn(format_args!("upgrade failed, still serving: {why}"));
    }

    /// The upgrade's steps; returns only on failure.
    fn try_upgrade<'a>(&self, exe: &'a crate::upgrade::ExecSelf) -> crate::upgrade::Failure<'a> {
        use crate::upgrade::{self as up, Failure};
        let state = self.save();
        let memfd = match up::seal(&state.encode()) {
            Ok(fd) => fd,
            Err(e) => return Failure::Memfd(e),
        };
        if let Err(f) = up::trial(exe, memfd.as_fd(), &state.acknowledgement()) {
            return Failure::Trial(&exe.path, f);
        }
        // Every descriptor but the listener is close-on-exec (received,
        // accepted, created or adopted so); the listener, inherited as
        // stdin, is not.
        let mut fds = self.state_fds();
        fds.push(memfd.as_fd());
        let set = |cloexec| {
            for fd in &fds[1..] {
                let _ = rustix::io::fcntl_setfd(fd, cloexec);
            }
        };
        set(rustix::io::FdFlags::empty());
        let e = up::exec(exe, memfd.as_fd());
        // Still here: the exec failed. Back as it was.
        set(rustix::io::FdFlags::CLOEXEC);
        Failure::Exec(&exe.path, e)
    }

    /// Takes up the state an upgrade left: every held fd in its slot, every
    /// connection where it was.
    fn restore(&mut self, s: State) -> io::Result<()> {
        let mut adopted = Adopted(Vec::new());
        {
            use std::os::fd::AsRawFd;
            *adopted.slot(self.listener.as_raw_fd()) = Adoption::Own;
        }
        self.store.max = usize::try_from(s.max).unwrap_or(usize::MAX);
        self.own_fds = s.own_fds;
        self.store.watches = s.watches;
        for (slot, saved) in s.slots.into_iter().enumerate() {
            let Some(h) = saved else {
                self.store.slots.push(None);
                continue;
            };
            let slot = slot as u32;
            let fd = adopted.shared(h.fd)?;
            let watch = match h.watch {
                SavedWatch::Unmarked => Watch::Unmarked,
                SavedWatch::MarkedUnpollable => Watch::MarkedUnpollable,
                // Epoll took it before; if it cannot now (out of memory,
                // max_user_watches), it is kept, no longer watched.
                SavedWatch::Polled => {
                    (self.store.watch(fd.as_fd(), slot)).unwrap_or(Watch::MarkedUnpollable)
                }
            };
            if let Some(t) = h.expiry {
                self.store.index_expiry(t, slot);
            }
            if self.store.by_id.insert(h.id.clone().into(), slot).is_some() {
                return Err(io::ErrorKind::InvalidData.into()); // an id held twice
            }
            self.store.slots.push(Some(Held {
                id: h.id.into(),
                fd,
                limit: h.limit,
                expiry: h.expiry,
                watch,
            }));
        }
        self.store.free = s.free;
        let now = Instant::now();
        for (i, saved) in s.conns.into_iter().enumerate() {
            self.conns.push(None);
            let Some(c) = saved else { continue };
            let sock = adopted.own(c.sock)?;
            let rx_fds = (c.rx_fds.iter())
                .map(|&n| adopted.own(n))
                .collect::<io::Result<Vec<_>>>()?;
            let mut tx = Sender::new();
            for m in c.tx {
                let fds = (m.fds.iter())
                    .map(|&n| adopted.shared(n))
                    .collect::<io::Result<Vec<_>>>()?;
                tx.push_resumed(m.header, m.payload, m.written as usize, fds);
            }
            let mut rights = Rights {
                list: c.list,
                getdump: c.getdump,
                setdump: c.setdump,
                ..Rights::default()
            };
            for (pattern, slot) in [
                (&c.store_re, &mut rights.store),
                (&c.retrieve_re, &mut rights.retrieve),
            ] {
                if let Some(p) = pattern {
                    *slot = self.compile("regex", p);
                }
            }
            self.conns[i] = Some(Conn {
                sock,
                rx: Receiver::resumed(proto::MAX_REQUEST, &c.rx, rx_fds),
                st: ConnState {
                    tx,
                    rights,
                    dumping: c.dumping,
                    deadline: c.deadline_in.map(|d| now + d),
                },
                interest: epoll::EventFlags::empty(),
            });
            self.nconns += 1;
        }
        // Each connection goes on where it was: answers flushed, requests
        // already in handled, its interest registered.
        for i in 0..self.conns.len() {
            if self.conns[i].is_some() {
                self.handle_conn(i, epoll::EventFlags::empty());
            }
        }
        self.update_listener();
        Ok(())
    }

    fn main_loop(&mut self) -> io::Result<i32> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            if let Some(lameduck) = self.lameduck {
                if !self
                    .conns
                    .iter()
                    .flatten()
                    .any(|c| !c.st.tx.is_empty() || !c.rx.is_empty())
                {
                    break;
                }
                if lameduck.is_some_and(|t| t <= Instant::now()) {
                    break;
                }
            }
            let timeout = self.next_timeout();
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(err(e)),
            }
            for ev in events.iter() {
                match ev.data.u64() {
                    TOKEN_SIGNALS => self.handle_signals()?,
                    TOKEN_LISTENER => self.accept_clients(),
                    t if t & HELD_TAG != 0 => self.held_hung_up(t),
                    t => self.handle_conn(t as usize, ev.flags),
                }
            }
            self.store.expire(Tain::now(), self.log);
            self.drop_late_clients();
            self.update_listener();
        }
        Ok((!self.store.is_empty()) as i32 | ((self.nconns > 0) as i32) << 1)
    }

    /// How long epoll may sleep: until the next expiry, client deadline,
    /// accept backoff or lame-duck deadline, whichever comes first.
    fn next_timeout(&self) -> Option<rustix::event::Timespec> {
        let now = Instant::now();
        let mut until: Option<Duration> = self
            .store
            .next_expiry()
            .map(|t| t.duration_since(Tain::now()));
        let mut consider = |i: Option<Instant>| {
            if let Some(i) = i {
                let d = i.saturating_duration_since(now);
                until = Some(until.map_or(d, |u| u.min(d)));
            }
        };
        // Client deadlines exist only with -t.
        if self.cfg.client_timeout.is_some() {
            for c in self.conns.iter().flatten() {
                consider(c.st.deadline);
            }
        }
        consider(self.accept_backoff);
        consider(self.lameduck.flatten());
        until.map(|d| {
            // Round up to the next millisecond so that a wake-up is never early.
            let d = d.min(Duration::from_secs(86400)) + Duration::from_nanos(999_999);
            let d = Duration::from_millis(d.as_millis() as u64);
            rustix::event::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            }
        })
    }

    /// A held fd marked "drop on hang-up" reported POLLHUP or POLLERR
    /// (epoll reports nothing else for it): closes and forgets it.
    fn held_hung_up(&mut self, token: u64) {
        if let Some(id) = self.store.hung_up(token) {
            self.log.info(format_args!(
                "dropped id {}: it hung up",
                String::from_utf8_lossy(&id)
            ));
        }
    }

    fn handle_signals(&mut self) -> io::Result<()> {
        while let Some(sig) = sys::read_signal(&self.signals)? {
            match sig as i32 {
                libc::SIGTERM if self.lameduck.is_none() => {
                    self.log
                        .info(format_args!("received SIGTERM, entering lame duck mode"));
                    self.lameduck = Some(self.cfg.lameduck_timeout.map(|t| Instant::now() + t));
                    // Idle clients may now be left alone: stop reading them.
                    for i in 0..self.conns.len() {
                        self.update_interest(i);
                    }
                }
                libc::SIGHUP => self.reload_rules(),
                libc::SIGUSR2 => self.upgrade(),
                _ => {}
            }
        }
        Ok(())
    }

    /// SIGHUP with `-x`: reads the rules file again. A file that is read
    /// but is not a valid cdb is installed as rules that refuse everyone
    /// (fail closed, as the reference, which maps whatever it finds); one
    /// that cannot be read at all leaves the previous rules in place (as
    /// the reference: nothing new is known, and the cause may be a
    /// passing shortage of descriptors or memory). Both are warned about.
    fn reload_rules(&mut self) {
        let RulesConfig::Cdb(path) = &self.cfg.rules else {
            return;
        };
        match CdbRules::open(path) {
            Ok(c) => {
                self.rules = Rules::Cdb(c);
                self.log
                    .info(format_args!("reloaded rules from {}", path.display()));
            }
            Err(CdbOpenError::Invalid(bad)) => {
                self.rules = Rules::RefuseAll(bad);
                self.log.warn(format_args!(
                    "rules file {} is not a valid cdb: refusing every connection until SIGHUP finds a valid one",
                    path.display()
                ));
            }
            Err(CdbOpenError::Unreadable(e)) => self.log.warn(format_args!(
                "unable to reload rules from {}, keeping the previous ones: {}",
                path.display(),
                crate::cli::strerror(&e)
            )),
        }
    }

    /// Registers or unregisters the listener as the state requires: not
    /// during lame duck, not while full, not during an accept backoff.
    fn update_listener(&mut self) {
        if self.accept_backoff.is_some_and(|t| t <= Instant::now()) {
            self.accept_backoff = None;
        }
        let want = self.lameduck.is_none()
            && self.nconns < self.cfg.maxconn as usize
            && self.accept_backoff.is_none();
        if want != self.accepting {
            let r = if want {
                epoll::add(
                    &self.epoll,
                    self.listener,
                    epoll::EventData::new_u64(TOKEN_LISTENER),
                    epoll::EventFlags::IN,
                )
            } else {
                epoll::delete(&self.epoll, self.listener)
            };
            if r.is_ok() {
                self.accepting = want;
            }
        }
    }

    fn accept_clients(&mut self) {
        while self.accepting && self.lameduck.is_none() && self.nconns < self.cfg.maxconn as usize {
            match rustix::net::accept_with(
                self.listener,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(sock) => {
                    // One per wake-up: the listener is level-triggered, so
                    // epoll reports it again while more wait, and a lone
                    // client costs no accept4 that fails with EAGAIN.
                    self.new_connection(sock);
                    break;
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::CONNABORTED) => {}
                Err(e) => {
                    // Out of descriptors or memory: back off instead of
                    // spinning on a readable listener, and serve the others.
                    self.log.warn(format_args!(
                        "unable to accept: {}",
                        crate::cli::strerror(&err(e))
                    ));
                    self.accept_backoff = Some(Instant::now() + Duration::from_millis(100));
                    break;
                }
            }
        }
        self.update_listener();
    }

    /// Lowers `-n` to the room the descriptor limit leaves for held fds:
    /// the limit, less the daemon's own descriptors (`counted` once they
    /// are all open and stdout is closed; `None` without a limit, `Some(None)`
    /// if they could not be counted), less [`CLIENT_FDS`]. Counted, not
    /// assumed: descriptors the daemon was given beyond 0, 1 and 2 take
    /// room too.
    fn settle_fd_budget(&mut self, counted: Option<Option<u64>>) {
        let (Some(limit), Some(counted)) = (self.fd_limit, counted) else {
            return; // unlimited: -n as given
        };
        match counted {
            Some(open) => self.own_fds = open,
            None => {
                self.own_fds = OWN_FDS_ASSUMED;
                self.log.warn(format_args!(
                    "unable to count open descriptors in /proc/self/fd: assuming {OWN_FDS_ASSUMED}"
                ));
            }
        }
        let room = limit.saturating_sub(self.own_fds + CLIENT_FDS);
        self.store.max = self.cfg.maxfds.min(u32::try_from(room).unwrap_or(u32::MAX)) as usize;
        if self.store.max == 0 {
            self.log.warn(format_args!(
                "{} descriptors open for a limit of {limit}: no room to hold any, every store is refused",
                self.own_fds
            ));
        }
    }

    fn new_connection(&mut self, sock: OwnedFd) {
        let cred = match rustix::net::sockopt::socket_peercred(&sock) {
            Ok(c) => c,
            Err(e) => {
                self.log.warn(format_args!(
                    "unable to getpeereid: {}",
                    crate::cli::strerror(&err(e))
                ));
                return;
            }
        };
        let (uid, gid) = (cred.uid.as_raw(), cred.gid.as_raw());
        let Some(rights) = self.rights_for(uid, gid) else {
            self.log
                .info(format_args!("refused connection from uid {uid} gid {gid}"));
            return;
        };
        self.log
            .info(format_args!("accepted connection from uid {uid} gid {gid}"));
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let interest = epoll::EventFlags::IN;
        if let Err(e) = epoll::add(
            &self.epoll,
            &sock,
            epoll::EventData::new_u64(slot as u64),
            interest,
        ) {
            self.log.warn(format_args!(
                "unable to register a connection: {}",
                crate::cli::strerror(&err(e))
            ));
            return;
        }
        let deadline = self.cfg.client_timeout.map(|t| Instant::now() + t);
        self.conns[slot] = Some(Conn {
            sock,
            rx: Receiver::new(proto::MAX_REQUEST),
            st: ConnState {
                tx: Sender::new(),
                rights,
                dumping: 0,
                deadline,
            },
            interest,
        });
        self.nconns += 1;
    }

    /// Judges a peer: `None` refuses it (no rule, deny, error, bad regex).
    fn rights_for(&mut self, uid: u32, gid: u32) -> Option<Rights> {
        let params = match self.rules.check_uidgid_as(uid, gid, self.euid, self.egid) {
            Ok(Decision::Allow(p)) => p,
            Ok(_) => return None,
            Err(e) => {
                self.log.warn(format_args!(
                    "error while checking rules: {}",
                    crate::cli::strerror(&e)
                ));
                return None;
            }
        };
        if !params.exec.is_empty() {
            self.log.warn(format_args!(
                "unused exec string in rules for uid {uid} gid {gid}"
            ));
        }
        let mut rights = Rights {
            list: params.is_set(b"S6_FDHOLDER_LIST"),
            getdump: params.is_set(b"S6_FDHOLDER_GETDUMP"),
            setdump: params.is_set(b"S6_FDHOLDER_SETDUMP"),
            ..Rights::default()
        };
        for (var, slot) in [
            ("S6_FDHOLDER_RETRIEVE_REGEX", &mut rights.retrieve),
            ("S6_FDHOLDER_STORE_REGEX", &mut rights.store),
        ] {
            if let Some(pattern) = params.get(var.as_bytes()) {
                *slot = Some(self.compile(var, pattern)?);
            }
        }
        Some(rights)
    }

    /// Compiles a regex, or reuses the one compiled from the same text.
    /// Keyed by the pattern's text, the cache never serves a stale rule.
    fn compile(&mut self, var: &str, pattern: &[u8]) -> Option<Rc<Regex>> {
        if let Some(re) = self.regex_cache.get(pattern) {
            return Some(re.clone());
        }
        match Regex::new(pattern) {
            Ok(re) => {
                if self.regex_cache.len() >= 64 {
                    self.regex_cache.clear();
                }
                let re = Rc::new(re);
                self.regex_cache.insert(pattern.to_vec(), re.clone());
                Some(re)
            }
            Err(msg) => {
                self.log.warn(format_args!(
                    "invalid {var} value: {}: {msg}",
                    String::from_utf8_lossy(pattern)
                ));
                None
            }
        }
    }

    fn drop_conn(&mut self, i: usize) {
        if let Some(c) = self.conns.get_mut(i).and_then(Option::take) {
            // Dropping `c` closes its socket, the only descriptor of that
            // open file (never duplicated), which removes it from the epoll
            // set: no epoll_ctl(DEL) needed.
            drop(c);
            self.nconns -= 1;
        }
    }

    fn drop_late_clients(&mut self) {
        if self.cfg.client_timeout.is_none() {
            return; // no -t: no client has a deadline
        }
        let now = Instant::now();
        for i in 0..self.conns.len() {
            if self.conns[i]
                .as_ref()
                .is_some_and(|c| c.st.deadline.is_some_and(|d| d <= now))
            {
                self.log
                    .info(format_args!("dropping a client that timed out"));
                self.drop_conn(i);
            }
        }
    }

    fn handle_conn(&mut self, i: usize, flags: epoll::EventFlags) {
        let lameduck = self.lameduck.is_some();
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let mut eof = false;
        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
            && (!lameduck || !c.rx.is_empty())
        {
            match c.rx.fill(c.sock.as_fd()) {
                Ok(0) => eof = true,
                Ok(_) => c.st.input_came(&c.rx, &self.cfg),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(i),
            }
        }
        if service(c, &mut self.store, &self.cfg).is_err() || eof {
            return self.drop_conn(i);
        }
        self.update_interest(i);
    }

    /// Wants input while answers are flushed (and, in lame duck, only to
    /// finish a partial request), output while answers wait.
    fn update_interest(&mut self, i: usize) {
        let lameduck = self.lameduck.is_some();
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let mut want = epoll::EventFlags::empty();
        if c.st.tx.is_empty() {
            if !lameduck || !c.rx.is_empty() {
                want |= epoll::EventFlags::IN;
            }
        } else {
            want |= epoll::EventFlags::OUT;
        }
        if want != c.interest {
            // No interest at all must mean out of the set: epoll reports
            // HUP and ERR whatever the mask, so a lame-duck idle client
            // that hangs up would wake us at once, again and again.
            let data = epoll::EventData::new_u64(i as u64);
            let r = if want.is_empty() {
                epoll::delete(&self.epoll, &c.sock)
            } else if c.interest.is_empty() {
                epoll::add(&self.epoll, &c.sock, data, want)
            } else {
                epoll::modify(&self.epoll, &c.sock, data, want)
            };
            if r.is_err() {
                return self.drop_conn(i);
            }
            c.interest = want;
        }
    }
}

/// The descriptors of an upgrade's state adopted so far, by number: each
/// is adopted once (a held fd also queued in an answer is one `OwnedFd`).
struct Adopted(Vec<Adoption>);

enum Adoption {
    None,
    /// Held, or queued in an answer: may be named again.
    Shared(Rc<OwnedFd>),
    /// The listener, a connection's socket, a fd a client sent.
    Own,
}

fn listed_twice() -> io::Error {
    io::ErrorKind::InvalidData.into()
}

impl Adopted {
    /// The entry for `n` (the decoder has checked it is not negative).
    fn slot(&mut self, n: i32) -> &mut Adoption {
        let n = n as usize;
        if self.0.len() <= n {
            self.0.resize_with(n + 1, || Adoption::None);
        }
        &mut self.0[n]
    }

    fn shared(&mut self, n: i32) -> io::Result<Rc<OwnedFd>> {
        match self.0.get(n as usize) {
            Some(Adoption::Shared(f)) => return Ok(f.clone()),
            Some(Adoption::Own) => return Err(listed_twice()),
            _ => {}
        }
        // Adopted first: a number that is not open (EBADF) never grows
        // the vector.
        let f = Rc::new(sys::adopt_fd(n)?);
        *self.slot(n) = Adoption::Shared(f.clone());
        Ok(f)
    }

    fn own(&mut self, n: i32) -> io::Result<OwnedFd> {
        if !matches!(self.0.get(n as usize), None | Some(Adoption::None)) {
            return Err(listed_twice());
        }
        let f = sys::adopt_fd(n)?;
        *self.slot(n) = Adoption::Own;
        Ok(f)
    }
}

/// Flushes answers and handles buffered requests while the answers go out
/// at once; stops when the socket would block or input runs out.
fn service(c: &mut Conn, store: &mut Store, cfg: &Config) -> Result<(), ProtocolError> {
    loop {
        let pending = !c.st.tx.is_empty();
        match c.st.tx.flush(c.sock.as_fd()) {
            Ok(true) => {
                // Answers all written: the wait is over, unless part of a
                // request is in (then it goes on, from when it began).
                if pending && c.rx.is_empty() {
                    c.st.deadline = None;
                }
            }
            Ok(false) => return Ok(()),
            Err(_) => return Err(ProtocolError),
        }
        match c.rx.take_message() {
            Ok(Some((payload, fds))) => handle_request(&mut c.st, store, cfg, payload, fds)?,
            Ok(None) => return Ok(()),
            Err(_) => return Err(ProtocolError),
        }
    }
}

impl ConnState {
    /// Bytes came in: if they are (part of) a request while the daemon
    /// waited for nothing, it now waits for that request, for `-t` at most.
    fn input_came(&mut self, rx: &Receiver, cfg: &Config) {
        if self.deadline.is_none() && !rx.is_empty() {
            self.deadline = cfg.client_timeout.map(|t| Instant::now() + t);
        }
    }

    fn answer(&mut self, payload: Vec<u8>, fds: Vec<Rc<OwnedFd>>, cfg: &Config) {
        self.tx.push(payload, fds);
        if self.deadline.is_none() {
            self.deadline = cfg.client_timeout.map(|t| Instant::now() + t);
        }
    }

    fn status(&mut self, errno: i32, cfg: &Config) {
        self.answer(vec![errno as u8], Vec::new(), cfg);
    }
}

/// Handles one request. Refusals are answered with an errno; protocol
/// errors drop the connection. Fds that came with a refused request are
/// closed here (dropped). One function per request follows, as the
/// reference's `do_store` ... `do_setdump_data`.
fn handle_request(
    st: &mut ConnState,
    store: &mut Store,
    cfg: &Config,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(), ProtocolError> {
    let req = proto::parse_request(payload, fds.len()).ok_or(ProtocolError)?;
    let setdump_chunk = matches!(req, Request::SetDumpChunk { .. });
    if (st.dumping > 0) != setdump_chunk {
        // During a setdump only chunks are allowed, and chunks only then.
        return Err(ProtocolError);
    }
    match req {
        Request::Store {
            limit,
            id,
            on_hangup,
        } => do_store(st, store, cfg, limit, id, on_hangup, fds)?,
        Request::Delete { id } => do_delete(st, store, cfg, id),
        Request::Retrieve { id, delete } => do_retrieve(st, store, cfg, id, delete),
        Request::List => do_list(st, store, cfg),
        Request::Describe => do_describe(st, store, cfg),
        Request::GetDump => do_getdump(st, store, cfg),
        Request::SetDump { total } => do_setdump(st, store, cfg, total),
        Request::SetDumpChunk { entries } => do_setdump_chunk(st, store, cfg, entries, fds)?,
    }
    Ok(())
}

/// Store: hold the one fd that came with the request under `id`, marked
/// to drop on hang-up for request `H` (the same rights and answers).
fn do_store(
    st: &mut ConnState,
    store: &mut Store,
    cfg: &Config,
    limit: Tain,
    id: &CStr,
    on_hangup: OnHangup,
    mut fds: Vec<OwnedFd>,
) -> Result<(), ProtocolError> {
    let errno = if !matches(&st.rights.store, id) {
        libc::EPERM
    } else {
        let fd = fds.pop().ok_or(ProtocolError)?;
        match store.insert_marked(id.to_bytes(), fd, limit, Tain::now(), on_hangup) {
            Ok(()) => 0,
            Err(refusal) => refusal.errno(),
        }
    };
    st.status(errno, cfg);
    Ok(())
}

/// Delete: close and forget `id` (needs the store right on it).
fn do_delete(st: &mut ConnState, store: &mut Store, cfg: &Config, id: &CStr) {
    let errno = if !matches(&st.rights.store, id) {
        libc::EPERM
    } else if store.remove(id.to_bytes()).is_none() {
        libc::ENOENT
    } else {
        0
    };
    st.status(errno, cfg);
}

/// Retrieve: send the fd held under `id`, forgetting it if `delete`
/// (which needs the store right too).
fn do_retrieve(st: &mut ConnState, store: &mut Store, cfg: &Config, id: &CStr, delete: bool) {
    if !matches(&st.rights.retrieve, id) || (delete && !matches(&st.rights.store, id)) {
        return st.status(libc::EPERM, cfg);
    }
    let fd = if delete {
        store.remove(id.to_bytes())
    } else {
        store.get(id.to_bytes()).cloned()
    };
    match fd {
        Some(fd) => st.answer(vec![0], vec![fd], cfg),
        None => st.status(libc::ENOENT, cfg),
    }
}

/// List: every id, in storage order.
fn do_list(st: &mut ConnState, store: &Store, cfg: &Config) {
    if !st.rights.list {
        return st.status(libc::EPERM, cfg);
    }
    let ids: Vec<&[u8]> = store.iter().map(|h| &h.id[..]).collect();
    st.answer(proto::list_answer(ids.into_iter()), Vec::new(), cfg);
}

/// Describe: what each fd is, in storage order (needs the list right).
fn do_describe(st: &mut ConnState, store: &Store, cfg: &Config) {
    if !st.rights.list {
        return st.status(libc::EPERM, cfg);
    }
    let held: Vec<_> = store
        .iter()
        .map(|h| (h.limit, &h.id[..], h.fd.as_fd()))
        .collect();
    for m in crate::describe::answer(held.into_iter()) {
        st.answer(m, Vec::new(), cfg);
    }
}

/// Getdump: every fd with its id and limit, in storage order.
fn do_getdump(st: &mut ConnState, store: &Store, cfg: &Config) {
    if !st.rights.getdump {
        return st.status(libc::EPERM, cfg);
    }
    getdump(st, store, cfg);
}

/// Setdump: announce `total` fds to come in chunks; answer how many chunks.
fn do_setdump(st: &mut ConnState, store: &Store, cfg: &Config, total: u32) {
    if !st.rights.setdump {
        return st.status(libc::EPERM, cfg);
    }
    if !store.has_room_for(total as usize) {
        return st.status(libc::ENFILE, cfg);
    }
    st.dumping = total;
    let mut ans = vec![0];
    ans.extend_from_slice(&(proto::chunks_for(total as usize) as u32).to_be_bytes());
    st.answer(ans, Vec::new(), cfg);
}

/// A setdump chunk: hold each fd under its id, replacing what was held
/// there; EAGAIN while more are expected, 0 after the last.
fn do_setdump_chunk(
    st: &mut ConnState,
    store: &mut Store,
    cfg: &Config,
    entries: Vec<(Tain, &CStr)>,
    fds: Vec<OwnedFd>,
) -> Result<(), ProtocolError> {
    if entries.len() > st.dumping as usize {
        return Err(ProtocolError);
    }
    if !st.rights.setdump {
        st.status(libc::EPERM, cfg);
    } else if !store.has_room_for(entries.len()) {
        st.status(libc::ENFILE, cfg);
    } else {
        let now = Tain::now();
        st.dumping -= entries.len() as u32;
        for ((limit, id), fd) in entries.into_iter().zip(fds) {
            store.replace(id.to_bytes(), fd, limit, now);
        }
        st.status(if st.dumping > 0 { libc::EAGAIN } else { 0 }, cfg);
    }
    Ok(())
}

/// Queues a dump: a header (0, chunks, total), then chunks of up to 253
/// fds, each entry `limit, idlen, id, NUL`.
fn getdump(st: &mut ConnState, store: &Store, cfg: &Config) {
    let total = store.len();
    let mut head = vec![0];
    head.extend_from_slice(&(proto::chunks_for(total) as u32).to_be_bytes());
    head.extend_from_slice(&(total as u32).to_be_bytes());
    st.answer(head, Vec::new(), cfg);
    let mut payload = Vec::new();
    let mut fds = Vec::with_capacity(MAX_FDS.min(total));
    for held in store.iter() {
        proto::push_entry(&mut payload, held.limit, &held.id);
        fds.push(held.fd.clone());
        if fds.len() == MAX_FDS {
            st.answer(std::mem::take(&mut payload), std::mem::take(&mut fds), cfg);
        }
    }
    if !fds.is_empty() {
        st.answer(payload, fds, cfg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_expiry_and_replace() {
        let now = Tain::now();
        let mut s = Store::new(10);
        let f = || std::fs::File::open("/dev/null").unwrap().into();
        s.insert(b"a", f(), now.add_secs(1), now).unwrap();
        s.insert(b"b", f(), Tain::infinite_from(now), now).unwrap();
        s.insert(b"c", f(), now.add_secs(5), now).unwrap();
        assert_eq!(s.insert(b"c", f(), now, now), Err(Refusal::Busy));
        assert_eq!(s.len(), 3);
        assert_eq!(s.next_expiry(), Some(now.add_secs(1)));
        // Replacing an id replaces its expiry too.
        s.replace(b"a", f(), now.add_secs(10), now);
        assert_eq!(s.next_expiry(), Some(now.add_secs(5)));
        s.expire(now.add_secs(6), Log { verbosity: 0 });
        assert_eq!(s.len(), 2);
        assert!(s.by_id.contains_key(&b"a"[..]) && s.by_id.contains_key(&b"b"[..]));
        assert!(s.remove(b"a").is_some());
        assert_eq!(s.next_expiry(), None);
        assert!(s.remove(b"a").is_none());
    }

    #[test]
    fn marked_entries_are_watched_and_a_stale_report_drops_nothing() {
        let now = Tain::now();
        let inf = Tain::infinite_from(now);
        let ep = Rc::new(epoll::create(epoll::CreateFlags::CLOEXEC).unwrap());
        let mut s = Store::new(10);
        s.epoll = Some(ep.clone());
        let pair = || {
            rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap()
        };
        let watch_of = |s: &Store, id: &[u8]| s.slots[s.by_id[id] as usize].as_ref().unwrap().watch;
        let (a, _peer_a) = pair();
        s.insert_marked(b"a", a, inf, now, OnHangup::Drop).unwrap();
        let Watch::Polled(old) = watch_of(&s, b"a") else {
            panic!("not polled");
        };
        // Deleted, then another marked fd takes its slot: a report for
        // the old registration (still in a batch) drops nothing.
        s.remove(b"a");
        let (b, peer_b) = pair();
        s.insert_marked(b"b", b, inf, now, OnHangup::Drop).unwrap();
        let Watch::Polled(new) = watch_of(&s, b"b") else {
            panic!("not polled");
        };
        assert_eq!(old as u32, new as u32, "the same slot");
        assert_ne!(old, new);
        assert_eq!(s.hung_up(old), None);
        assert_eq!(s.len(), 1);
        // Unmarked, a listening socket, a regular file: not watched.
        let (c, _peer_c) = pair();
        s.insert_marked(b"c", c, inf, now, OnHangup::Keep).unwrap();
        assert_eq!(watch_of(&s, b"c"), Watch::Unmarked);
        let l = std::os::unix::net::UnixListener::bind(
            std::env::temp_dir().join(format!("fdholder-unit-{}", std::process::id())),
        )
        .unwrap();
        let _ = std::fs::remove_file(l.local_addr().unwrap().as_pathname().unwrap());
        s.insert_marked(b"l", l.into(), inf, now, OnHangup::Drop)
            .unwrap();
        assert_eq!(watch_of(&s, b"l"), Watch::MarkedUnpollable);
        let f: OwnedFd = std::fs::File::open(std::env::current_exe().unwrap())
            .unwrap()
            .into();
        s.insert_marked(b"f", f, inf, now, OnHangup::Drop).unwrap();
        assert_eq!(watch_of(&s, b"f"), Watch::MarkedUnpollable);
        // b's peer goes: epoll reports b's token alone, and it is dropped.
        drop(peer_b);
        let mut events: Vec<epoll::Event> = Vec::with_capacity(8);
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        epoll::wait(
            &ep,
            rustix::buffer::spare_capacity(&mut events),
            Some(&zero),
        )
        .unwrap();
        let tokens: Vec<u64> = events.iter().map(|e| e.data.u64()).collect();
        assert_eq!(tokens, [new]);
        assert_eq!(s.hung_up(new).as_deref(), Some(&b"b"[..]));
        assert_eq!(s.hung_up(new), None);
        assert_eq!(ids(&s).len(), 3);
    }

    fn ids(s: &Store) -> Vec<&[u8]> {
        s.iter().map(|h| &h.id[..]).collect()
    }

    #[test]
    fn slot_order_is_the_references() {
        let now = Tain::now();
        let inf = Tain::infinite_from(now);
        let mut s = Store::new(4);
        let f = || std::fs::File::open("/dev/null").unwrap().into();
        for id in [&b"a"[..], b"b", b"c"] {
            s.insert(id, f(), inf, now).unwrap();
        }
        // The freed slot is the next one taken.
        s.remove(b"a");
        s.insert(b"d", f(), inf, now).unwrap();
        assert_eq!(ids(&s), [&b"d"[..], b"b", b"c"]);
        // Last freed, first taken.
        s.remove(b"b");
        s.remove(b"d");
        s.insert(b"e", f(), inf, now).unwrap();
        s.insert(b"g", f(), inf, now).unwrap();
        assert_eq!(ids(&s), [&b"e"[..], b"g", b"c"]);
        // setdump: the new entry takes a slot, then the old one is freed.
        s.replace(b"e", f(), inf, now);
        assert_eq!(ids(&s), [&b"g"[..], b"c", b"e"]);
        s.insert(b"h", f(), inf, now).unwrap();
        assert_eq!(ids(&s), [&b"h"[..], b"g", b"c", b"e"]);
        assert_eq!(s.insert(b"i", f(), inf, now), Err(Refusal::Full));
    }
}
