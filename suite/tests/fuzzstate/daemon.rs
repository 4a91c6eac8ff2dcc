//! `daemon_session`: the real daemon's connection state machine, in
//! process. Each input starts [`fdholder_suite::daemon::run`] in a thread
//! on a fresh socket with rules (a cdb) that grant some rights and refuse
//! others, then plays a sequence of client actions over up to four
//! connections: every request kind with fds, partial requests completed
//! later, pipelined requests, setdump with chunks right and wrong,
//! garbage, disconnects, time passing (expiries, the `-t` deadline),
//! hundreds of pipelined lists and dumps read after a pause (the daemon's
//! socket full, its answers queued: a slow reader, dropped with `-t`),
//! SIGHUP, and SIGTERM (lame duck) at the end. After every answer it
//! compares with a model (id -> fd identity (st_dev, st_ino) and limit)
//! and checks the process's fd count: the fixed baseline, plus the
//! connections (both ends), plus what the model says is held.
//!
//! Expiry is real time: a limit in the past or a few ms ahead makes its
//! entry uncertain (the daemon may not have expired it yet) until the
//! model can prove it gone (a request answered on the same connection,
//! sent after the limit and after the store's answer) or an answer shows
//! it gone; an uncertain entry widens the accepted answers and fd count by
//! one. A connection the daemon drops is accepted only when the daemon was
//! allowed to: a protocol error, or with `-t` a connection that never sent
//! anything, holds a partial request or reads slowly, and not before `-t`
//! has passed.

use std::collections::HashSet;
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fdholder::Tain;
use fdholder::proto::{self, MAX_REQUEST};
use fdholder::wire::{Receiver, header, send_some};
use fdholder_suite::daemon::{self, Config, RulesConfig};
use fdholder_suite::rules::{Decision, EnvVar, Params, cdb};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::{Input, fresh_fd, ident, open_fds, settle_fds};

const EPERM: u8 = libc::EPERM as u8;
const ENOENT: u8 = libc::ENOENT as u8;
const EBUSY: u8 = libc::EBUSY as u8;
const ENFILE: u8 = libc::ENFILE as u8;
const EAGAIN: u8 = libc::EAGAIN as u8;

/// How long an answer may take before the daemon is said to hang.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// The regexes the rules grant, each with its meaning for the model.
#[derive(Debug, Clone, Copy)]
enum Re {
    A,
    AorB,
    Any,
    OnlyX,
}

impl Re {
    fn pattern(self) -> &'static str {
        match self {
            Re::A => "^a",
            Re::AorB => "^[ab]",
            Re::Any => ".",
            Re::OnlyX => "^x$",
        }
    }
    fn matches(self, id: &[u8]) -> bool {
        match self {
            Re::A => id.first() == Some(&b'a'),
            Re::AorB => matches!(id.first(), Some(b'a' | b'b')),
            Re::Any => !id.is_empty(),
            Re::OnlyX => id == b"x",
        }
    }
}

fn re(b: u8) -> Option<Re> {
    [
        None,
        Some(Re::A),
        Some(Re::AorB),
        Some(Re::Any),
        Some(Re::OnlyX),
    ][b as usize % 5]
}

/// What every connection of this process may do (they all have our uid).
#[derive(Debug, Clone)]
struct Rights {
    /// Accepted at all (an allowing rule whose regexes compile).
    allowed: bool,
    store: Option<Re>,
    retrieve: Option<Re>,
    list: bool,
    getdump: bool,
    setdump: bool,
}

impl Rights {
    fn may_store(&self, id: &[u8]) -> bool {
        self.store.is_some_and(|r| r.matches(id))
    }
    fn may_retrieve(&self, id: &[u8]) -> bool {
        self.retrieve.is_some_and(|r| r.matches(id))
    }
}

static LONG_ID: [u8; 255] = [b'a'; 255];

fn id(b: u8) -> Vec<u8> {
    match b % 9 {
        0 => b"a".to_vec(),
        1 => b"b".to_vec(),
        2 => b"ab".to_vec(),
        3 => b"x".to_vec(),
        4 => b"xa".to_vec(),
        5 => b"a\xff\n".to_vec(),
        6 => LONG_ID.to_vec(),
        7 => vec![b'b'; 250],
        _ => {
            let mut v = vec![b'x'; 254];
            v[1] = b'a';
            v
        }
    }
}

/// A limit and whether the model can be sure of it: far ones are, those in
/// the past or a few ms ahead expire on the daemon's time.
fn limit(b: u8) -> (Tain, Option<Tain>) {
    let now = Tain::now();
    let ms = |n: u32| {
        let nano = now.nano as u64 + n as u64 * 1_000_000;
        Tain {
            sec: now.sec + nano / 1_000_000_000,
            nano: (nano % 1_000_000_000) as u32,
        }
    };
    match b % 6 {
        0 | 1 => (Tain::infinite_from(now), None),
        2 => (now.add_secs(3600), None),
        3 => {
            let t = Tain {
                sec: now.sec - 1,
                ..now
            };
            (t, Some(t))
        }
        4 => (ms(2), Some(ms(2))),
        _ => (ms(25), Some(ms(25))),
    }
}

struct Entry {
    id: Vec<u8>,
    ident: (u64, u64),
    limit: Tain,
    /// Set for a limit the daemon may expire at any moment.
    expiry: Option<Tain>,
    /// Step at which the answer that made it held was received.
    stored: u64,
}

/// One client connection and what the model knows of it.
struct Conn {
    sock: OwnedFd,
    rx: Receiver,
    /// No byte sent yet (with `-t`, the daemon may drop it).
    fresh: bool,
    /// Since when the daemon may be waiting on it (its `-t` deadline
    /// started no earlier).
    wait_since: Option<Instant>,
    /// The step and time at which the last answered request was sent.
    last_done: Option<(u64, Tain)>,
    /// Fds the daemon still expects in a setdump.
    dumping: u32,
    /// The rest of a request partly sent, the request, and how many fds
    /// went with its first part.
    partial: Option<(Vec<u8>, Req, usize)>,
    /// Whether the daemon could drop it (`-t`) while the current exchange
    /// was sent.
    could_drop: bool,
}

/// A setdump entry: id, limit, expiry if uncertain, fd identity.
type ChunkEntry = (Vec<u8>, Tain, Option<Tain>, (u64, u64));
/// An id a list or dump shows, with (a dump's) fd identity and limit.
type Shown = (Vec<u8>, Option<((u64, u64), Tain)>);

#[derive(Debug, Clone)]
enum Req {
    Store {
        id: Vec<u8>,
        limit: Tain,
        expiry: Option<Tain>,
        ident: (u64, u64),
    },
    Delete {
        id: Vec<u8>,
    },
    Retrieve {
        id: Vec<u8>,
        delete: bool,
    },
    List,
    GetDump,
    SetDump {
        total: u32,
    },
    /// Entries (id, limit, expiry, identity); `fds` sent with it.
    Chunk {
        entries: Vec<ChunkEntry>,
        fds: usize,
    },
    /// A request the daemon must drop the connection for.
    Garbage,
}

/// The request as bytes (header included) and its fds.
fn encode(req: &Req, fds: &[OwnedFd]) -> Vec<u8> {
    let (payload, nfds) = match req {
        Req::Store { id, limit, .. } => (proto::store(id, *limit), 1),
        Req::Delete { id } => (proto::delete(id), 0),
        Req::Retrieve { id, delete } => (proto::retrieve(id, *delete), 0),
        Req::List => (vec![proto::OP_LIST], 0),
        Req::GetDump => (vec![proto::OP_GETDUMP], 0),
        Req::SetDump { total } => (proto::setdump(*total), 0),
        Req::Chunk { entries, fds } => {
            let mut b = vec![proto::OP_SETDUMP_CHUNK];
            for (id, limit, _, _) in entries {
                proto::push_entry(&mut b, *limit, id);
            }
            (b, *fds)
        }
        Req::Garbage => unreachable!("garbage is encoded by its action"),
    };
    debug_assert_eq!(nfds, fds.len());
    let mut bytes = header(payload.len(), nfds).to_vec();
    bytes.extend(payload);
    bytes
}

fn send_all(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[OwnedFd]) -> bool {
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut off = 0;
    let mut first = true;
    let start = Instant::now();
    while off < bytes.len() {
        let f: &[BorrowedFd<'_>] = if first { &fds } else { &[] };
        match send_some(sock, &[IoSlice::new(&bytes[off..])], f) {
            Ok(n) => {
                off += n;
                first = false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < ANSWER_WAIT, "the daemon stopped reading");
                let mut p = [PollFd::new(&sock, PollFlags::OUT)];
                let _ = poll(
                    &mut p,
                    Some(&rustix::event::Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    }),
                );
            }
            Err(_) => return false,
        }
    }
    true
}

/// The next message on a connection, or `None` once the daemon closed it.
fn recv(c: &mut Conn) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let start = Instant::now();
    loop {
        match c.rx.take_message() {
            Ok(Some((p, fds))) => return Some((p.to_vec(), fds)),
            Ok(None) => {}
            Err(e) => panic!("the daemon broke the framing: {e:?}"),
        }
        match c.rx.fill(c.sock.as_fd()) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < ANSWER_WAIT, "no answer from the daemon");
                let mut p = [PollFd::new(&c.sock, PollFlags::IN)];
                let _ = poll(
                    &mut p,
                    Some(&rustix::event::Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    }),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn status(what: &Req, ans: &(Vec<u8>, Vec<OwnedFd>)) -> u8 {
    assert!(
        ans.0.len() == 1 && ans.1.is_empty(),
        "{what:?}: answer {:?} with {} fds, expected a status",
        ans.0,
        ans.1.len()
    );
    ans.0[0]
}

struct Session {
    rights: Rights,
    timeout: Option<Duration>,
    max: usize,
    entries: Vec<Entry>,
    conns: Vec<Option<Conn>>,
    path: PathBuf,
    step: u64,
    base: usize,
    log: Vec<String>,
}

impl Session {
    fn uncertain(&self) -> usize {
        self.entries.iter().filter(|e| e.expiry.is_some()).count()
    }
    fn certain(&self) -> usize {
        self.entries.len() - self.uncertain()
    }
    /// (room possible, full possible) for `n` more fds.
    fn room(&self, n: usize) -> (bool, bool) {
        let fits = |len: usize| n <= self.max && len + n <= self.max;
        (
            fits(self.certain()),
            !fits(self.certain() + self.uncertain()),
        )
    }
    fn find(&self, id: &[u8]) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }

    fn droppable(&self, c: &Conn) -> bool {
        self.timeout.is_some() && (c.fresh || c.partial.is_some())
    }

    /// The fd count: baseline, both ends of the live connections (the
    /// daemon's end only if it accepts us), fds in partial requests, held.
    fn check_fds(&self, what: &str) {
        let (mut lo, mut hi) = (self.base, self.base);
        for c in self.conns.iter().flatten() {
            lo += 1;
            hi += 1;
            if self.rights.allowed {
                let n = 1 + c.partial.as_ref().map_or(0, |p| p.2);
                hi += n;
                if !self.droppable(c) {
                    lo += n;
                }
            }
        }
        lo += self.certain();
        hi += self.certain() + self.uncertain();
        settle_fds(lo, hi, &|| format!("after {what}; actions: {:?}", self.log));
    }

    /// Entries the daemon has certainly expired for a request sent now on
    /// `c`: it answered on `c` a request sent after their limit and after
    /// they were stored, so an expiry pass ran in between.
    fn forget_expired(&mut self, ci: usize) {
        let Some(c) = self.conns[ci].as_ref() else {
            return;
        };
        if let Some((step, sent)) = c.last_done {
            self.entries.retain(|e| match e.expiry {
                Some(t) => !(step > e.stored && sent > t.add_secs(0) && sent > bump(t)),
                None => true,
            });
        }
    }

    fn connect(&mut self) {
        let Some(slot) = self.conns.iter().position(Option::is_none) else {
            return;
        };
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        // Before connect: the daemon may accept (and start its `-t`
        // deadline) before connect returns here.
        let since = Instant::now();
        rustix::net::connect(&sock, &SocketAddrUnix::new(&self.path).unwrap()).unwrap();
        rustix::fs::fcntl_setfl(&sock, rustix::fs::OFlags::NONBLOCK).unwrap();
        self.conns[slot] = Some(Conn {
            sock,
            rx: Receiver::new(fdholder::wire::MAX_LEN),
            fresh: true,
            wait_since: Some(since),
            last_done: None,
            dumping: 0,
            partial: None,
            could_drop: false,
        });
        self.check_fds("connect");
    }

    fn close(&mut self, ci: usize) {
        if self.conns[ci].take().is_some() {
            self.check_fds("close");
        }
    }

    /// The daemon closed `ci`: fine if it could, else a failure.
    fn closed(&mut self, ci: usize, expected: bool, what: &Req) {
        let c = self.conns[ci].take().unwrap();
        if !expected && self.rights.allowed {
            assert!(
                c.could_drop,
                "{what:?}: the daemon dropped a connection it had no reason to drop; actions: {:?}",
                self.log
            );
            let t = self.timeout.unwrap();
            let since = c.wait_since.expect("a droppable connection is waited on");
            assert!(
                since.elapsed() >= t,
                "{what:?}: dropped after {:?}, before -t {t:?}",
                since.elapsed()
            );
        }
        drop(c);
        self.check_fds("a drop");
    }

    /// Sends `bytes` (+ `fds`) on `ci`, then reads and checks the answers
    /// to `reqs`, in order.
    fn exchange(&mut self, ci: usize, bytes: &[u8], fds: Vec<OwnedFd>, reqs: &[Req]) {
        self.exchange_with(ci, bytes, fds, reqs, None);
    }

    /// [`Session::exchange`]; with `slow`, a flood of requests whose
    /// answers fill the socket, read after that pause (with `-t` the daemon
    /// may drop such a slow reader).
    fn exchange_with(
        &mut self,
        ci: usize,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        reqs: &[Req],
        slow: Option<Duration>,
    ) {
        if self.conns[ci].is_none() {
            return;
        }
        self.forget_expired(ci);
        self.step += 1;
        let sent = (self.step, Tain::now());
        {
            let could_drop = self.droppable(self.conns[ci].as_ref().unwrap())
                || (self.timeout.is_some() && slow.is_some());
            let c = self.conns[ci].as_mut().unwrap();
            c.could_drop = could_drop;
            if c.wait_since.is_none() {
                c.wait_since = Some(Instant::now());
            }
            send_all(c.sock.as_fd(), bytes, &fds);
            c.fresh = false;
            c.partial = None;
        }
        drop(fds);
        if std::env::var_os("FDHOLDER_FUZZ_DEBUG").is_some() {
            eprintln!("conn {ci}: {reqs:?}");
        }
        if let Some(pause) = slow {
            std::thread::sleep(pause);
        }
        for req in reqs {
            if !self.respond(ci, req) {
                return;
            }
        }
        let c = self.conns[ci].as_mut().unwrap();
        c.last_done = Some(sent);
        c.wait_since = None;
        c.could_drop = false;
        self.step += 1;
        // Named by opcode: formatting the request at every answer would
        // cost more than the exchange.
        self.check_fds(match reqs.last() {
            Some(Req::Store { .. }) => "store",
            Some(Req::Delete { .. }) => "delete",
            Some(Req::Retrieve { .. }) => "retrieve",
            Some(Req::List) => "list",
            Some(Req::GetDump) => "getdump",
            Some(Req::SetDump { .. }) => "setdump",
            Some(Req::Chunk { .. }) => "a setdump chunk",
            Some(Req::Garbage) | None => "garbage",
        });
    }

    /// Reads and checks the answer to `req`; false if the connection is
    /// gone.
    fn respond(&mut self, ci: usize, req: &Req) -> bool {
        let c = self.conns[ci].as_mut().unwrap();
        let dumping = c.dumping;
        let protocol_error = match req {
            Req::Garbage => true,
            Req::Chunk { entries, fds } => {
                dumping == 0 || entries.len() != *fds || entries.len() > dumping as usize
            }
            _ => dumping > 0,
        };
        let ans = recv(c);
        let Some(ans) = ans else {
            self.closed(ci, protocol_error || !self.rights.allowed, req);
            return false;
        };
        assert!(
            self.rights.allowed,
            "{req:?}: answered on a refused connection"
        );
        assert!(
            !protocol_error,
            "{req:?}: answered {:?} where the connection must be dropped; actions: {:?}",
            ans.0, self.log
        );
        let step = self.step;
        let r = self.rights.clone();
        let log = &self.log;
        match req {
            Req::Store {
                id,
                limit,
                expiry,
                ident,
            } => {
                let s = status(req, &ans);
                let (room, full) = self.room(1);
                let held = self.find(id);
                let held_sure = held.is_some_and(|i| self.entries[i].expiry.is_none());
                let ok = if !r.may_store(id) {
                    s == EPERM
                } else {
                    (s == ENFILE && full)
                        || (s == EBUSY && room && held.is_some())
                        || (s == 0 && room && !held_sure)
                };
                assert!(ok, "store {id:?}: answer {s}; actions: {log:?}");
                if s == 0 {
                    if let Some(i) = held {
                        self.entries.remove(i);
                    }
                    self.entries.push(Entry {
                        id: id.clone(),
                        ident: *ident,
                        limit: *limit,
                        expiry: *expiry,
                        stored: step,
                    });
                }
            }
            Req::Delete { id } => {
                let s = status(req, &ans);
                let held = self.find(id);
                let ok = if !r.may_store(id) {
                    s == EPERM
                } else {
                    match held.map(|i| self.entries[i].expiry.is_none()) {
                        Some(true) => s == 0,
                        Some(false) => s == 0 || s == ENOENT,
                        None => s == ENOENT,
                    }
                };
                assert!(ok, "delete {id:?}: answer {s}; actions: {log:?}");
                if s == 0 || s == ENOENT {
                    if let Some(i) = held {
                        self.entries.remove(i);
                    }
                }
            }
            Req::Retrieve { id, delete } => {
                let held = self.find(id);
                if !r.may_retrieve(id) || (*delete && !r.may_store(id)) {
                    assert_eq!(status(req, &ans), EPERM, "{req:?}; actions: {log:?}");
                } else if ans.0 == [0] && ans.1.len() == 1 {
                    let i = held.unwrap_or_else(|| {
                        panic!("{req:?}: an fd for an id not held; actions: {log:?}")
                    });
                    assert_eq!(
                        ident(&ans.1[0]),
                        self.entries[i].ident,
                        "{req:?}: another fd"
                    );
                    if *delete {
                        self.entries.remove(i);
                    }
                } else {
                    assert_eq!(status(req, &ans), ENOENT, "{req:?}; actions: {log:?}");
                    if let Some(i) = held {
                        assert!(
                            self.entries[i].expiry.is_some(),
                            "{req:?}: ENOENT for a held id; actions: {log:?}"
                        );
                        self.entries.remove(i);
                    }
                }
            }
            Req::List => {
                if !r.list {
                    assert_eq!(status(req, &ans), EPERM, "{req:?}");
                } else {
                    assert!(
                        ans.1.is_empty() && ans.0.first() == Some(&0),
                        "list: {:?}",
                        ans.0
                    );
                    let ids = proto::parse_list(&ans.0[1..])
                        .unwrap_or_else(|| panic!("list: bad answer {:?}", ans.0));
                    assert_eq!(proto::list_answer(ids.iter().map(|i| &i[..])), ans.0);
                    self.seen(ids.iter().map(|i| (i.clone(), None)).collect(), "list");
                }
            }
            Req::GetDump => {
                if !r.getdump {
                    assert_eq!(status(req, &ans), EPERM, "{req:?}");
                } else {
                    let h = &ans.0;
                    assert!(
                        ans.1.is_empty() && h.len() == 9 && h[0] == 0,
                        "getdump: {h:?}"
                    );
                    let chunks = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
                    let total = u32::from_be_bytes(h[5..9].try_into().unwrap()) as usize;
                    assert_eq!(chunks, proto::chunks_for(total), "getdump: header {h:?}");
                    let mut got = Vec::new();
                    for _ in 0..chunks {
                        let c = self.conns[ci].as_mut().unwrap();
                        let (p, fds) = recv(c).expect("getdump: dropped mid-dump");
                        let ents = proto::parse_entries(&p, fds.len())
                            .unwrap_or_else(|| panic!("getdump: bad chunk {p:?}"));
                        assert!(!fds.is_empty());
                        for ((limit, id), fd) in ents.into_iter().zip(fds) {
                            got.push((id.to_bytes().to_vec(), Some((ident(&fd), limit))));
                        }
                    }
                    assert_eq!(got.len(), total, "getdump: {total} announced");
                    self.seen(got, "getdump");
                }
            }
            Req::SetDump { total } => {
                let s = ans.0.first().copied();
                let (room, full) = self.room(*total as usize);
                if !r.setdump {
                    assert_eq!(status(req, &ans), EPERM, "{req:?}");
                } else if s == Some(0) {
                    assert!(
                        room,
                        "setdump {total}: accepted with no room; actions: {log:?}"
                    );
                    let mut want = vec![0];
                    want.extend_from_slice(
                        &(proto::chunks_for(*total as usize) as u32).to_be_bytes(),
                    );
                    assert!(ans.0 == want && ans.1.is_empty(), "setdump: {:?}", ans.0);
                    self.conns[ci].as_mut().unwrap().dumping = *total;
                } else {
                    assert!(
                        status(req, &ans) == ENFILE && full,
                        "setdump {total}: {:?}; actions: {log:?}",
                        ans.0
                    );
                }
            }
            Req::Chunk { entries, .. } => {
                let s = status(req, &ans);
                let (room, full) = self.room(entries.len());
                if s == ENFILE {
                    assert!(full, "chunk: ENFILE with room; actions: {log:?}");
                } else {
                    assert!(room, "chunk: answer {s} with no room; actions: {log:?}");
                    let c = self.conns[ci].as_mut().unwrap();
                    c.dumping -= entries.len() as u32;
                    let want = if c.dumping > 0 { EAGAIN } else { 0 };
                    assert_eq!(s, want, "chunk: answer; actions: {log:?}");
                    for (id, limit, expiry, ident) in entries {
                        if let Some(i) = self.find(id) {
                            self.entries.remove(i);
                        }
                        self.entries.push(Entry {
                            id: id.clone(),
                            ident: *ident,
                            limit: *limit,
                            expiry: *expiry,
                            stored: step,
                        });
                    }
                }
            }
            Req::Garbage => unreachable!(),
        }
        true
    }

    /// A list or dump shows exactly what is held: every sure entry, no
    /// unknown id, each at most once; uncertain ones not shown are gone.
    fn seen(&mut self, got: Vec<Shown>, what: &str) {
        let mut ids = HashSet::new();
        for (id, detail) in &got {
            assert!(ids.insert(id.clone()), "{what}: {id:?} twice");
            let i = self
                .find(id)
                .unwrap_or_else(|| panic!("{what}: {id:?} is not held; actions: {:?}", self.log));
            if let Some((ident, limit)) = detail {
                assert_eq!(*ident, self.entries[i].ident, "{what}: {id:?}'s fd");
                assert_eq!(*limit, self.entries[i].limit, "{what}: {id:?}'s limit");
            }
        }
        for e in &self.entries {
            assert!(
                e.expiry.is_some() || ids.contains(&e.id),
                "{what}: {:?} missing; actions: {:?}",
                e.id,
                self.log
            );
        }
        self.entries.retain(|e| ids.contains(&e.id));
    }

    /// Finishes a partial request on `ci`, if any.
    fn complete(&mut self, ci: usize) {
        let Some(c) = self.conns[ci].as_mut() else {
            return;
        };
        if let Some((rest, req, _)) = c.partial.take() {
            // Put it back for the fd count until it is sent.
            c.partial = Some((Vec::new(), req.clone(), 0));
            self.exchange(ci, &rest, Vec::new(), &[req]);
        }
    }
}

/// One ns after `t`, then a ms: equal limits are shifted by a few ns.
fn bump(t: Tain) -> Tain {
    let nano = t.nano as u64 + 1_000_000;
    Tain {
        sec: t.sec + nano / 1_000_000_000,
        nano: (nano % 1_000_000_000) as u32,
    }
}

fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    let d = D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fdholder-fuzz-session-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    });
    // Made again after a cleanup.
    std::fs::create_dir_all(d).unwrap();
    d
}

/// Removes this target's temp dir (the stable run's end).
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(scratch());
}

fn write_rules(path: &std::path::Path, key: &str, d: &Decision) {
    let mut m = cdb2::CDBMake::new(std::fs::File::create(path).unwrap()).unwrap();
    if let Some(v) = cdb::encode_value(d).unwrap() {
        m.add(key.as_bytes(), &v).unwrap();
    }
    m.finish().unwrap();
}

/// The target: arbitrary bytes as rules, settings and client actions.
pub fn session_from_bytes(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut inp = Input(data);
    let (b0, b1, b2, b3) = (inp.byte(), inp.byte(), inp.byte(), inp.byte());
    let rights = Rights {
        allowed: b0 % 8 >= 3,
        store: re(b1 >> 3),
        retrieve: re(b2),
        list: b1 & 1 != 0,
        getdump: b1 & 2 != 0,
        setdump: b1 & 4 != 0,
    };
    let mut env = vec![];
    for (name, set) in [
        ("S6_FDHOLDER_LIST", rights.list),
        ("S6_FDHOLDER_GETDUMP", rights.getdump),
        ("S6_FDHOLDER_SETDUMP", rights.setdump),
    ] {
        if set {
            env.push(EnvVar {
                name: name.into(),
                value: Some(vec![]),
            });
        }
    }
    for (name, r) in [
        ("S6_FDHOLDER_STORE_REGEX", rights.store),
        ("S6_FDHOLDER_RETRIEVE_REGEX", rights.retrieve),
    ] {
        if let Some(r) = r {
            env.push(EnvVar {
                name: name.into(),
                value: Some(r.pattern().into()),
            });
        }
    }
    let decision = match b0 % 8 {
        0 => Decision::Deny,
        1 => Decision::NotFound,
        2 => {
            // A regex that does not compile refuses the connection (the
            // first value of a variable is the one used).
            env.insert(
                0,
                EnvVar {
                    name: b"S6_FDHOLDER_STORE_REGEX".to_vec(),
                    value: Some(b"(".to_vec()),
                },
            );
            Decision::Allow(Params { env, exec: vec![] })
        }
        _ => Decision::Allow(Params { env, exec: vec![] }),
    };
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let key = match (b0 >> 3) % 3 {
        0 => format!("uid/{uid}"),
        1 => format!("gid/{gid}"),
        _ => "uid/default".to_string(),
    };
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = scratch();
    let rules_path = dir.join("rules.cdb");
    write_rules(&rules_path, &key, &decision);
    let path = dir.join(format!("s{}", n % 2));
    let _ = std::fs::remove_file(&path);
    let timeout = (b3 & 0x10 != 0).then(|| Duration::from_millis(15));
    let max = 1 + (b3 % 6) as usize;

    let base0 = open_fds();
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&listener, 16).unwrap();
    let cfg = Config {
        verbosity: 0,
        maxconn: 8,
        maxfds: max as u32,
        client_timeout: timeout,
        lameduck_timeout: None,
        rules: RulesConfig::Cdb(rules_path.clone()),
        exec: None,
    };
    let rules = daemon::open_rules(&cfg.rules).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let r = daemon::run(
            listener.as_fd(),
            cfg,
            rules,
            || {
                ready_tx.send(tid).unwrap();
            },
            None,
        );
        drop(listener);
        let _ = done_tx.send(());
        r
    });
    let tid = ready_rx
        .recv_timeout(ANSWER_WAIT)
        .expect("the daemon did not start");
    let mut s = Session {
        rights,
        timeout,
        max,
        entries: Vec::new(),
        conns: (0..4).map(|_| None).collect(),
        path,
        step: 0,
        // The listener, the daemon's epoll and signalfd.
        base: base0 + 3,
        log: Vec::new(),
    };
    s.check_fds("start");

    while !inp.is_empty() && s.log.len() < 48 {
        let a = inp.byte();
        let ci = (a >> 4) as usize % 4;
        let p = inp.byte();
        let action = a % 16;
        s.log.push(format!("{action}@{ci}:{p}"));
        if s.conns[ci].is_none() && action != 11 && action != 12 {
            s.connect();
            continue;
        }
        if action != 7 && action != 12 && action != 11 && action != 10 {
            // Anything else sent on a connection finishes its partial
            // request first.
            s.complete(ci);
        }
        if s.conns[ci].is_none() && action != 11 && action != 12 {
            continue;
        }
        let simple = |p: u8, q: u8| -> Req {
            match p % 4 {
                0 => Req::Delete { id: id(q) },
                1 => Req::Retrieve {
                    id: id(q),
                    delete: q & 0x80 != 0,
                },
                2 => Req::List,
                _ => Req::GetDump,
            }
        };
        match action {
            0 | 1 => {
                let fd = fresh_fd();
                let (limit, expiry) = limit(p >> 3);
                let req = Req::Store {
                    id: id(p),
                    limit,
                    expiry,
                    ident: ident(&fd),
                };
                let fds = vec![fd];
                let bytes = encode(&req, &fds);
                s.exchange(ci, &bytes, fds, &[req]);
            }
            2 | 3 => {
                let q = inp.byte();
                let req = simple(p, q);
                let bytes = encode(&req, &[]);
                s.exchange(ci, &bytes, vec![], &[req]);
            }
            4 => {
                let total = [0, 1, 2, 3, 5, 7, 300, u32::MAX][p as usize % 8];
                let req = Req::SetDump { total };
                let bytes = encode(&req, &[]);
                s.exchange(ci, &bytes, vec![], &[req]);
            }
            5 | 6 => {
                // A setdump chunk, right or wrong.
                let k = 1 + (p % 3) as usize;
                let mut entries = Vec::new();
                let mut fds = Vec::new();
                for _ in 0..k {
                    let q = inp.byte();
                    let fd = fresh_fd();
                    let (limit, expiry) = limit(q >> 3);
                    entries.push((id(q), limit, expiry, ident(&fd)));
                    fds.push(fd);
                }
                match (p >> 2) % 8 {
                    0 => drop(fds.pop()),
                    1 => fds.push(fresh_fd()),
                    _ => {}
                }
                let req = Req::Chunk {
                    entries,
                    fds: fds.len(),
                };
                let bytes = encode(&req, &fds);
                s.exchange(ci, &bytes, fds, &[req]);
            }
            7 => {
                // Part of a request now, the rest with the next one.
                let c = s.conns[ci].as_ref().unwrap();
                if c.partial.is_some() {
                    continue;
                }
                let (req, fds) = if p & 1 == 0 {
                    let fd = fresh_fd();
                    let (limit, expiry) = limit(p >> 3);
                    (
                        Req::Store {
                            id: id(p >> 1),
                            limit,
                            expiry,
                            ident: ident(&fd),
                        },
                        vec![fd],
                    )
                } else {
                    (simple(p >> 1, p >> 3), vec![])
                };
                let bytes = encode(&req, &fds);
                let cut = 1 + inp.byte() as usize % (bytes.len() - 1);
                let c = s.conns[ci].as_mut().unwrap();
                if c.wait_since.is_none() {
                    c.wait_since = Some(Instant::now());
                }
                send_all(c.sock.as_fd(), &bytes[..cut], &fds);
                c.fresh = false;
                c.partial = Some((bytes[cut..].to_vec(), req, fds.len()));
                drop(fds);
                s.check_fds("a partial request");
            }
            8 => {
                // Pipelined: up to three requests in one write.
                let mut bytes = Vec::new();
                let mut reqs = Vec::new();
                for _ in 0..2 + p % 2 {
                    let (x, y) = (inp.byte(), inp.byte());
                    let req = simple(x, y);
                    bytes.extend(encode(&req, &[]));
                    reqs.push(req);
                }
                s.exchange(ci, &bytes, vec![], &reqs);
            }
            9 => {
                // Garbage: the connection must be dropped.
                let (bytes, fds) = match p % 4 {
                    0 => {
                        let mut b = header(1, 0).to_vec();
                        b.push(b'Z');
                        (b, vec![])
                    }
                    1 => {
                        let mut b = header(1, 1).to_vec();
                        b.push(proto::OP_LIST);
                        (b, vec![fresh_fd()])
                    }
                    2 => (header(MAX_REQUEST + 1, 0).to_vec(), vec![]),
                    _ => (header(0, 0).to_vec(), vec![]),
                };
                s.exchange(ci, &bytes, fds, &[Req::Garbage]);
            }
            10 => s.close(ci),
            11 => {
                std::thread::sleep(Duration::from_millis([1, 3, 8, 20][p as usize % 4]));
            }
            12 => {
                fdholder_suite::sys::signal_thread(tid, libc::SIGHUP).unwrap();
            }
            14 => {
                // A slow reader: enough lists and dumps pipelined that
                // their answers fill the socket (with long ids held),
                // read after a pause.
                let k = 40 + (p as usize % 4) * 90;
                let reqs: Vec<Req> = (0..k)
                    .map(|i| {
                        if i % 16 == 15 {
                            Req::GetDump
                        } else {
                            Req::List
                        }
                    })
                    .collect();
                let bytes: Vec<u8> = reqs.iter().flat_map(|r| encode(r, &[])).collect();
                let pause = Duration::from_millis([0, 2, 10, 30][(p >> 2) as usize % 4]);
                s.exchange_with(ci, &bytes, vec![], &reqs, Some(pause));
            }
            _ => {
                // A request kept simple but sent on a new connection
                // sometimes, so that accepts and closes interleave.
                if p % 3 == 0 {
                    s.close(ci);
                    s.connect();
                }
                let req = simple(p, inp.byte());
                let bytes = encode(&req, &[]);
                s.exchange(ci, &bytes, vec![], &[req]);
            }
        }
    }

    // Lame duck: partial requests are finished, then SIGTERM; the daemon
    // leaves idle clients alone and exits, telling whether it held fds.
    for ci in 0..4 {
        s.complete(ci);
    }
    fdholder_suite::sys::signal_thread(tid, libc::SIGTERM).unwrap();
    done_rx
        .recv_timeout(ANSWER_WAIT)
        .unwrap_or_else(|_| panic!("no exit after SIGTERM; actions: {:?}", s.log));
    let code = thread.join().unwrap().expect("daemon::run failed");
    if s.uncertain() == 0 {
        assert_eq!(
            code & 1,
            (!s.entries.is_empty()) as i32,
            "exit code {code}: fds held"
        );
    } else if s.certain() > 0 {
        assert_eq!(code & 1, 1, "exit code {code}: fds held");
    }
    // A connection that never sent a request may not have been accepted
    // yet when SIGTERM came (then it never is); one that was answered was.
    let open = s
        .conns
        .iter()
        .flatten()
        .any(|c| !c.fresh && !s.droppable(c));
    if s.rights.allowed && open {
        assert_eq!(code & 2, 2, "exit code {code}: connections open");
    } else if !s.rights.allowed {
        assert_eq!(code & 2, 0, "exit code {code}: no connection was accepted");
    }
    s.conns.clear();
    settle_fds(base0, base0, &|| {
        format!("after the daemon exited; actions: {:?}", s.log)
    });
}
