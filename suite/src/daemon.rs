//! The core of `s6-fdholderd`: a single-threaded, event-driven server that
//! holds descriptors for its clients.
//!
//! - [`Store`]: the held fds, by id (hash map) and by expiry (ordered set),
//!   so that store, lookup and expiry are O(1) or O(log n).
//! - `Conn`: one client: framing buffers, rights decided at accept time,
//!   setdump progress, and the `-t` deadline.
//! - [`run`]: the epoll loop over the listener, a signalfd and the clients,
//!   waking only for I/O, signals, expiries and deadlines (idle CPU is 0).
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

use crate::rules::{CdbOpenError, CdbRules, Decision, DirRules, Rules};
use crate::sys::{self, Regex};
use fdholder::proto::{self, Request};
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

/// Descriptors that must stay free, beyond the daemon's own, held fds and
/// connections, for the rules directory cache to stay open: a whole
/// setdump chunk ([`MAX_FDS`]) arriving at once, the cache's two and the
/// few a fill opens, with room to spare.
/// Nearer the limit the cache is closed and every lookup reads the
/// directory by path, one descriptor at a time, as before: the cache never
/// takes a descriptor a client needs.
const RULES_CACHE_FD_HEADROOM: u64 = MAX_FDS as u64 + 16;

/// How much more room it takes to open the cache again: a count hovering
/// at the threshold must not open and close it at every loop (closing an
/// inotify instance takes milliseconds).
const RULES_CACHE_FD_HYSTERESIS: u64 = 64;

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
}

/// Why the store did not take a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// As many fds as `-n` allows are held (ENFILE).
    Full,
    /// The id is held already (EBUSY).
    Busy,
}

impl Refusal {
    fn errno(self) -> i32 {
        match self {
            Refusal::Full => libc::ENFILE,
            Refusal::Busy => libc::EBUSY,
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
}

impl Store {
    fn new(max: usize) -> Store {
        Store {
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_limit: BTreeSet::new(),
            max,
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

    /// Puts a new entry in a slot; the id index is the caller's to update.
    /// `shift`: a store (the reference shifts equal limits for a store, not
    /// for a setdump).
    fn fill_slot(&mut self, id: &[u8], fd: OwnedFd, limit: Tain, now: Tain, shift: bool) -> u32 {
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
            self.by_limit.insert((t, slot));
        }
        slot
    }

    /// Empties a slot and returns what it held.
    fn free_slot(&mut self, slot: u32) -> Held {
        let held = self.slots[slot as usize]
            .take()
            .expect("the id index names only filled slots");
        if let Some(t) = held.expiry {
            self.by_limit.remove(&(t, slot));
        }
        self.free.push(slot);
        held
    }

    /// Holds `fd` under `id` (store): refused when the store is full or
    /// the id is held, as the reference checks, in that order.
    fn insert(&mut self, id: &[u8], fd: OwnedFd, limit: Tain, now: Tain) -> Result<(), Refusal> {
        if !self.has_room_for(1) {
            return Err(Refusal::Full);
        }
        if self.by_id.contains_key(id) {
            return Err(Refusal::Busy);
        }
        let slot = self.fill_slot(id, fd, limit, now, true);
        self.by_id.insert(id.into(), slot);
        Ok(())
    }

    /// Holds `fd` under `id`, closing whatever was held there (setdump):
    /// the new entry takes its slot before the old one is freed, as in the
    /// reference. The caller has checked [`Store::has_room_for`] for the
    /// whole chunk.
    fn replace(&mut self, id: &[u8], fd: OwnedFd, limit: Tain, now: Tain) {
        let slot = self.fill_slot(id, fd, limit, now, false);
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
    epoll: OwnedFd,
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
    /// signalfd); not the rules cache's. Counted before it serves.
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

fn err(e: rustix::io::Errno) -> io::Error {
    e.into()
}

/// Opens the rules `cfg` names (the cdb is mapped now).
pub fn open_rules(cfg: &RulesConfig) -> io::Result<Rules> {
    Ok(match cfg {
        RulesConfig::Dir(d) => Rules::Dir(Box::new(DirRules::new(d.clone()))),
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
) -> io::Result<i32> {
    sys::ignore_sigpipe()?;
    let signals = sys::signalfd(&[libc::SIGTERM, libc::SIGHUP])?;
    let fl = rustix::fs::fcntl_getfl(listener)?;
    rustix::fs::fcntl_setfl(listener, fl | rustix::fs::OFlags::NONBLOCK)?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
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
    let mut d = Daemon {
        store: Store::new(cfg.maxfds as usize),
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
    // The rules cache's descriptors, if any, are opened now: the daemon's
    // own descriptors are all open before it says it is ready. Whether
    // there is room for them is judged from what is open now (stdout
    // included, with -1, until `ready` closes it).
    if let Some(open) = d.fd_limit.and_then(open_fds_below) {
        d.own_fds = open;
    }
    d.fit_rules_cache();
    // The daemon's own descriptors are counted now, before `ready`: it may
    // confine the daemon (the sandbox grants nothing in /proc), and once it
    // has closed stdout (with -1) the count must be settled (whoever waits
    // for that EOF may count the daemon's descriptors). Stdout is not one
    // of them: if `ready` closed descriptor 1, it is taken off the count.
    let counted = d.fd_limit.map(|limit| (limit, open_fds_below(limit)));
    let fd1_open = sys::borrow_fd_number(1).is_ok();
    ready();
    let counted = counted.map(|(limit, n)| {
        let stdout_closed = fd1_open && 1 < limit && sys::borrow_fd_number(1).is_err();
        n.map(|n| n.saturating_sub(u64::from(stdout_closed)))
    });
    d.settle_fd_budget(counted.flatten());
    d.main_loop()
}

impl Daemon<'_> {
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
                    t => self.handle_conn(t as usize, ev.flags),
                }
            }
            self.store.expire(Tain::now(), self.log);
            self.drop_late_clients();
            self.update_listener();
            self.fit_rules_cache();
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

    /// Given how many descriptors are open below the limit once the
    /// daemon's own are all open, stdout not counted (`run` counts them in
    /// `/proc/self/fd` just before `ready`; `None`: unreadable), lowers
    /// `-n` to the room the descriptor limit leaves for held fds: the
    /// limit, less those, less [`CLIENT_FDS`]. Counted, not assumed:
    /// descriptors the daemon was given beyond 0, 1 and 2 take room too.
    fn settle_fd_budget(&mut self, open_below_limit: Option<u64>) {
        let Some(limit) = self.fd_limit else {
            return; // unlimited: -n as given
        };
        match open_below_limit {
            Some(open) => self.own_fds = open.saturating_sub(self.rules.cache_fds()),
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

    /// Allows the rules directory cache only while descriptors are
    /// plentiful (see [`RULES_CACHE_FD_HEADROOM`]); forbidding it closes
    /// its descriptors at once, allowing it opens them.
    fn fit_rules_cache(&mut self) {
        if let Rules::Dir(d) = &mut self.rules {
            let used = self.own_fds + (self.store.len() + self.nconns) as u64;
            let need = if d.caching() {
                RULES_CACHE_FD_HEADROOM
            } else {
                RULES_CACHE_FD_HEADROOM + RULES_CACHE_FD_HYSTERESIS
            };
            d.set_caching(self.fd_limit.is_none_or(|lim| used + need <= lim));
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
        Request::Store { limit, id } => do_store(st, store, cfg, limit, id, fds)?,
        Request::Delete { id } => do_delete(st, store, cfg, id),
        Request::Retrieve { id, delete } => do_retrieve(st, store, cfg, id, delete),
        Request::List => do_list(st, store, cfg),
        Request::GetDump => do_getdump(st, store, cfg),
        Request::SetDump { total } => do_setdump(st, store, cfg, total),
        Request::SetDumpChunk { entries } => do_setdump_chunk(st, store, cfg, entries, fds)?,
    }
    Ok(())
}

/// Store: hold the one fd that came with the request under `id`.
fn do_store(
    st: &mut ConnState,
    store: &mut Store,
    cfg: &Config,
    limit: Tain,
    id: &CStr,
    mut fds: Vec<OwnedFd>,
) -> Result<(), ProtocolError> {
    let errno = if !matches(&st.rights.store, id) {
        libc::EPERM
    } else {
        let fd = fds.pop().ok_or(ProtocolError)?;
        match store.insert(id.to_bytes(), fd, limit, Tain::now()) {
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
