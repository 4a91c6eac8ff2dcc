//! The in-place upgrade of `s6-fdholderd` (SIGUSR2): the daemon's state
//! in a versioned binary form, written to a sealed memfd that the new
//! program inherits across `execve`, and the steps of the upgrade (a
//! trial run of the new binary, then the exec). One encoder and one
//! decoder, used by both sides. See `docs/s6-fdholderd.md`, "Upgrade".
//!
//! The format (all integers little-endian):
//!
//! ```text
//! magic "FDHSTATE" | version u32 | body length u64 | body | "END."
//! body: nonce u64, listener fd i32, max u64, own_fds u64,
//!       watches u32,
//!       nslots u32, per slot: present u8, [fd i32, id bytes, limit 12
//!         (TAIN, packed), has_expiry u8, [expiry 12], watch u8],
//!       nfree u32, free slot u32 ...,
//!       nconns u32, per connection: present u8, [sock i32,
//!         store regex opt-bytes, retrieve regex opt-bytes, list u8,
//!         getdump u8, setdump u8, dumping u32, deadline opt-u64 (ns from
//!         the save), rx bytes, rx fds (u32 count, i32 ...), tx messages
//!         (u32 count, per message: header 6, payload bytes, written u64,
//!         fds)]
//! bytes: u32 length then the bytes; opt-X: u8 0 | u8 1 then X.
//! ```
//!
//! Descriptors travel by number: the old program clears close-on-exec on
//! exactly those it lists; the new one adopts each number once (a number
//! both held and queued in an answer is one descriptor).

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use fdholder::tain::Tain;

/// The first bytes of a state.
pub const MAGIC: &[u8; 8] = b"FDHSTATE";
/// The version of the format this program writes and reads.
pub const VERSION: u32 = 1;
/// The environment variable that names the state's descriptor.
pub const ENV_STATE_FD: &str = "FDHOLDER_STATE_FD";
/// The environment variable of a trial run: the descriptor to write the
/// acknowledgement to (the program then exits, touching nothing).
pub const ENV_STATE_CHECK: &str = "FDHOLDER_STATE_CHECK";
/// How long the trial run may take.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(2);
const END: &[u8; 4] = b"END.";
/// What the trial's child writes when its exec fails: NUL, then the errno.
const EXEC_FAILED: &[u8; 5] = &[0; 5];

/// A held descriptor, saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedHeld {
    /// Its number.
    pub fd: i32,
    /// Its id.
    pub id: Vec<u8>,
    /// Its limit as stored.
    pub limit: Tain,
    /// Its expiry date (the limit, shifted to be unique), if finite.
    pub expiry: Option<Tain>,
    /// Whether it is watched for a hang-up.
    pub watch: SavedWatch,
}

/// [`crate::daemon`]'s `Watch`, saved (a token is not: it is made again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedWatch {
    /// Not marked.
    Unmarked,
    /// Marked, not pollable.
    MarkedUnpollable,
    /// Marked and polled for a hang-up.
    Polled,
}

/// A queued answer, saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMsg {
    /// Its header.
    pub header: [u8; fdholder::wire::HEADER],
    /// Its payload.
    pub payload: Vec<u8>,
    /// Bytes already written.
    pub written: u64,
    /// Descriptors still to send, by number.
    pub fds: Vec<i32>,
}

/// A connection, saved: its socket, the rights decided at accept time,
/// what it sent that is not yet handled, what waits to be sent to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SavedConn {
    /// Its socket.
    pub sock: i32,
    /// The store regex's text.
    pub store_re: Option<Vec<u8>>,
    /// The retrieve regex's text.
    pub retrieve_re: Option<Vec<u8>>,
    /// The list right.
    pub list: bool,
    /// The getdump right.
    pub getdump: bool,
    /// The setdump right.
    pub setdump: bool,
    /// Fds still expected in a setdump.
    pub dumping: u32,
    /// Its `-t` deadline, from the save.
    pub deadline_in: Option<Duration>,
    /// Bytes received, not yet handled.
    pub rx: Vec<u8>,
    /// Descriptors received with them.
    pub rx_fds: Vec<i32>,
    /// Answers not yet fully written.
    pub tx: Vec<SavedMsg>,
}

/// The whole state of a daemon, as the upgrade carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// A random number the trial run echoes back.
    pub nonce: u64,
    /// The listening socket.
    pub listener: i32,
    /// The held-fd limit settled at start (`-n` lowered to the room).
    pub max: u64,
    /// The daemon's own descriptors counted at start.
    pub own_fds: u64,
    /// Hang-up registrations so far.
    pub watches: u32,
    /// The store's slots, in order.
    pub slots: Vec<Option<SavedHeld>>,
    /// The store's free slots, the last freed last.
    pub free: Vec<u32>,
    /// The connections, by slot.
    pub conns: Vec<Option<SavedConn>>,
}

/// Why a state could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// It does not start with [`MAGIC`].
    NotAState,
    /// It is of another version of the format.
    Version(u32),
    /// It ends early.
    Truncated,
    /// A field is out of range.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotAState => f.write_str("not an fdholder state"),
            DecodeError::Version(v) => {
                write!(f, "state version {v}, this program reads {VERSION}")
            }
            DecodeError::Truncated => f.write_str("state truncated"),
            DecodeError::Invalid(what) => write!(f, "invalid state: {what}"),
        }
    }
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt_bytes(&mut self, b: &Option<Vec<u8>>) {
        match b {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
        }
    }
    fn fds(&mut self, fds: &[i32]) {
        self.u32(fds.len() as u32);
        for &fd in fds {
            self.i32(fd);
        }
    }
    fn tain(&mut self, t: Tain) {
        self.0.extend_from_slice(&t.pack());
    }
}

/// The reader: `None` is the end of the input, or, with `why` set, a
/// field out of range.
struct R<'a> {
    b: &'a [u8],
    why: Option<&'static str>,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn bad<T>(&mut self, why: &'static str) -> Option<T> {
        self.why = Some(why);
        None
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => self.bad("a flag"),
        }
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count of items at least `min` bytes each: checked against what
    /// is left, so that a bad count allocates nothing large.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.saturating_mul(min) <= self.b.len()).then_some(n)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.count(1)?;
        Some(self.take(n)?.to_vec())
    }
    fn opt_bytes(&mut self) -> Option<Option<Vec<u8>>> {
        Some(if self.bool()? {
            Some(self.bytes()?)
        } else {
            None
        })
    }
    fn fd(&mut self) -> Option<i32> {
        match self.u32()? {
            fd if fd <= i32::MAX as u32 => Some(fd as i32),
            _ => self.bad("a descriptor"),
        }
    }
    fn fds(&mut self) -> Option<Vec<i32>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.fd()).collect()
    }
    fn tain(&mut self) -> Option<Tain> {
        Some(Tain::unpack(self.take(12)?.try_into().ok()?))
    }
}

impl State {
    /// The state in its binary form.
    #[inline(never)]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(64 + self.slots.len() * 48));
        w.u64(self.nonce);
        w.i32(self.listener);
        w.u64(self.max);
        w.u64(self.own_fds);
        w.u32(self.watches);
        w.u32(self.slots.len() as u32);
        for s in &self.slots {
            let Some(h) = s else {
                w.u8(0);
                continue;
            };
            w.u8(1);
            w.i32(h.fd);
            w.bytes(&h.id);
            w.tain(h.limit);
            match h.expiry {
                None => w.u8(0),
                Some(t) => {
                    w.u8(1);
                    w.tain(t);
                }
            }
            w.u8(match h.watch {
                SavedWatch::Unmarked => 0,
                SavedWatch::MarkedUnpollable => 1,
                SavedWatch::Polled => 2,
            });
        }
        w.u32(self.free.len() as u32);
        for &f in &self.free {
            w.u32(f);
        }
        w.u32(self.conns.len() as u32);
        for c in &self.conns {
            let Some(c) = c else {
                w.u8(0);
                continue;
            };
            w.u8(1);
            w.i32(c.sock);
            w.opt_bytes(&c.store_re);
            w.opt_bytes(&c.retrieve_re);
            w.u8(c.list as u8);
            w.u8(c.getdump as u8);
            w.u8(c.setdump as u8);
            w.u32(c.dumping);
            match c.deadline_in {
                None => w.u8(0),
                Some(d) => {
                    w.u8(1);
                    w.u64(d.as_nanos().min(u64::MAX as u128) as u64);
                }
            }
            w.bytes(&c.rx);
            w.fds(&c.rx_fds);
            w.u32(c.tx.len() as u32);
            for m in &c.tx {
                w.0.extend_from_slice(&m.header);
                w.bytes(&m.payload);
                w.u64(m.written);
                w.fds(&m.fds);
            }
        }
        let mut out = Vec::with_capacity(w.0.len() + 24);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(w.0.len() as u64).to_le_bytes());
        out.extend_from_slice(&w.0);
        out.extend_from_slice(END);
        out
    }

    /// Reads a state written by [`State::encode`], checking every field.
    pub fn decode(b: &[u8]) -> Result<State, DecodeError> {
        if b.len() < 12 || &b[..8] != MAGIC {
            return Err(DecodeError::NotAState);
        }
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let mut r = R {
            b: &b[12..],
            why: None,
        };
        let body = r.u64().and_then(|len| {
            (len.checked_add(END.len() as u64) == Some(r.b.len() as u64) && r.b.ends_with(END))
                .then(|| &r.b[..len as usize])
        });
        let Some(body) = body else {
            return Err(DecodeError::Truncated);
        };
        let mut r = R { b: body, why: None };
        match Self::body(&mut r) {
            Some(s) if r.b.is_empty() => Ok(s),
            Some(_) => Err(DecodeError::Invalid("trailing bytes")),
            None => Err(r.why.map_or(DecodeError::Truncated, DecodeError::Invalid)),
        }
    }

    fn body(r: &mut R<'_>) -> Option<State> {
        let mut s = State {
            nonce: r.u64()?,
            listener: r.fd()?,
            max: r.u64()?,
            own_fds: r.u64()?,
            watches: r.u32()?,
            ..State::default()
        };
        for _ in 0..r.count(1)? {
            if !r.bool()? {
                s.slots.push(None);
                continue;
            }
            let fd = r.fd()?;
            let id = r.bytes()?;
            if id.is_empty() || id.len() > 255 || id.contains(&0) {
                return r.bad("a held id");
            }
            let limit = r.tain()?;
            let expiry = if r.bool()? { Some(r.tain()?) } else { None };
            let watch = match r.u8()? {
                0 => SavedWatch::Unmarked,
                1 => SavedWatch::MarkedUnpollable,
                2 => SavedWatch::Polled,
                _ => return r.bad("a mark"),
            };
            s.slots.push(Some(SavedHeld {
                fd,
                id,
                limit,
                expiry,
                watch,
            }));
        }
        for _ in 0..r.count(4)? {
            let f = r.u32()?;
            if s.slots.get(f as usize).is_none_or(Option::is_some) {
                return r.bad("a free slot");
            }
            s.free.push(f);
        }
        if s.free.len() != s.slots.iter().filter(|x| x.is_none()).count() {
            return r.bad("the free slots");
        }
        let nconns = r.count(1)?;
        if nconns > crate::daemon::MAXCONN_LIMIT as usize {
            return r.bad("connections");
        }
        for _ in 0..nconns {
            if !r.bool()? {
                s.conns.push(None);
                continue;
            }
            let mut c = SavedConn {
                sock: r.fd()?,
                store_re: r.opt_bytes()?,
                retrieve_re: r.opt_bytes()?,
                list: r.bool()?,
                getdump: r.bool()?,
                setdump: r.bool()?,
                dumping: r.u32()?,
                deadline_in: if r.bool()? {
                    Some(Duration::from_nanos(r.u64()?))
                } else {
                    None
                },
                rx: r.bytes()?,
                rx_fds: r.fds()?,
                tx: Vec::new(),
            };
            for _ in 0..r.count(6 + 4 + 8 + 4)? {
                let header: [u8; 6] = r.take(6)?.try_into().ok()?;
                let payload = r.bytes()?;
                let written = r.u64()?;
                let fds = r.fds()?;
                if fds.len() > fdholder::wire::MAX_FDS
                    || written > (6 + payload.len()) as u64
                    || (written > 0 && !fds.is_empty())
                {
                    return r.bad("a queued answer");
                }
                c.tx.push(SavedMsg {
                    header,
                    payload,
                    written,
                    fds,
                });
            }
            s.conns.push(Some(c));
        }
        Some(s)
    }

    /// What a trial run of a program that read this state writes back.
    pub fn acknowledgement(&self) -> Vec<u8> {
        let held = self.slots.iter().flatten().count();
        let conns = self.conns.iter().flatten().count();
        format!(
            "fdholder state v{VERSION} ok {:016x} {held} {conns}\n",
            self.nonce
        )
        .into_bytes()
    }
}

/// A state in a sealed memfd (close-on-exec; the exec clears that).
pub fn seal(bytes: &[u8]) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "fdholder-state",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut done = 0;
    while done < bytes.len() {
        done += rustix::io::write(&fd, &bytes[done..])?;
    }
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// Reads the whole state out of descriptor `fd` (from its start).
pub fn read_all(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size as usize;
    let mut buf = vec![0; size];
    let mut done = 0;
    while done < size {
        match rustix::io::pread(fd, &mut buf[done..], done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// A random nonce (the clock and the pid: it only has to differ from one
/// upgrade to the next, so that a stale answer cannot pass).
pub fn nonce() -> u64 {
    let t = Tain::now();
    (t.sec << 30) ^ u64::from(t.nano) ^ (u64::from(std::process::id()) << 48)
}

/// How to execute this program again: its path, as resolved at start (a
/// new binary installed at that path takes over), and its arguments.
#[derive(Debug, Clone)]
pub struct ExecSelf {
    /// The path.
    pub path: CString,
    /// `argv`, as given to this process.
    pub argv: Vec<CString>,
}

impl ExecSelf {
    /// The program's own path and arguments: `argv[0]` if it has a `/`
    /// (as given: a relative path stays good, the daemon never changes
    /// directory; symlinks are not followed, so a link repointed to a new
    /// binary takes it), else `/proc/self/exe` as it resolves at start
    /// (a program found through `PATH`: the binary it runs now).
    pub fn current() -> Option<ExecSelf> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let argv0 = args.first()?.clone();
        let path = if argv0.as_bytes().contains(&b'/') {
            argv0.into_vec()
        } else {
            std::fs::read_link("/proc/self/exe")
                .ok()?
                .into_os_string()
                .into_vec()
        };
        let argv = args
            .into_iter()
            .map(|a| CString::new(a.into_vec()).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(ExecSelf {
            path: CString::new(path).ok()?,
            argv,
        })
    }

    /// The environment for the new program: this one's, without the
    /// upgrade's variables (every `FDHOLDER_STATE_*`), with
    /// `FDHOLDER_STATE_FD=fd` and, for a trial, `FDHOLDER_STATE_CHECK=0`.
    fn env(fd: BorrowedFd<'_>, check: bool) -> Vec<CString> {
        let mut env: Vec<CString> = Vec::new();
        for kv in crate::sys::environ() {
            if !kv.starts_with(b"FDHOLDER_STATE_") {
                env.extend(CString::new(kv));
            }
        }
        env.extend(CString::new(format!("{ENV_STATE_FD}={}", fd.as_raw_fd())));
        if check {
            env.extend(CString::new(format!("{ENV_STATE_CHECK}=0")));
        }
        env
    }
}

/// Why an upgrade failed (the daemon serves on).
#[derive(Debug)]
pub enum Failure<'a> {
    /// The program's own path was not found at start.
    NoPath,
    /// After SIGTERM.
    LameDuck,
    /// The state could not be written.
    Memfd(io::Error),
    /// The new binary at that path failed the trial.
    Trial(&'a std::ffi::CStr, TrialFailure),
    /// The exec failed.
    Exec(&'a std::ffi::CStr, io::Error),
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = crate::cli::strerror;
        match self {
            Failure::NoPath => f.write_str("the program's own path is not known"),
            Failure::LameDuck => f.write_str("in lame duck mode"),
            Failure::Memfd(err) => write!(f, "unable to write the state to a memfd: {}", e(err)),
            Failure::Trial(p, t) => write!(f, "{}: {t}", p.to_string_lossy()),
            Failure::Exec(x, err) => {
                write!(f, "unable to exec {}: {}", x.to_string_lossy(), e(err))
            }
        }
    }
}

/// Why the trial run of the new binary failed.
#[derive(Debug)]
pub enum TrialFailure {
    /// Fork, pipe or wait failed.
    Sys(&'static str, io::Error),
    /// The exec itself failed (in the trial's child).
    Exec(io::Error),
    /// It did not answer in time ([`TRIAL_TIMEOUT`]).
    TimedOut,
    /// It exited without answering (its status).
    NoAnswer(Exit),
    /// It answered, but not what this state asks.
    WrongAnswer(String),
    /// It answered, then exited with a failure.
    Failed(Exit),
}

impl fmt::Display for TrialFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrialFailure::Sys(what, e) => {
                write!(f, "unable to {what}: {}", crate::cli::strerror(e))
            }
            TrialFailure::Exec(e) => write!(f, "unable to exec: {}", crate::cli::strerror(e)),
            TrialFailure::TimedOut => write!(
                f,
                "the new binary did not acknowledge the state within {} s",
                TRIAL_TIMEOUT.as_secs()
            ),
            TrialFailure::NoAnswer(st) => write!(
                f,
                "the new binary cannot read the state: it {st} without acknowledging it"
            ),
            TrialFailure::WrongAnswer(a) => {
                write!(f, "the new binary cannot read the state: it answered {a:?}")
            }
            TrialFailure::Failed(st) => write!(f, "the new binary {st} after the check"),
        }
    }
}

/// How the trial's child ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit(rustix::process::WaitStatus);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.exit_status(), self.0.terminating_signal()) {
            (Some(code), _) => write!(f, "exited {code}"),
            (None, Some(sig)) => write!(f, "was killed by signal {sig}"),
            _ => f.write_str("stopped"),
        }
    }
}

/// Runs the new binary in a child with the state (`state`, inherited) and
/// [`ENV_STATE_CHECK`]: it must read the state and answer
/// [`State::acknowledgement`] within [`TRIAL_TIMEOUT`], then exit 0. The
/// child's stdin is the answer pipe, not the listener, so that a binary
/// that does not know the check (an older one) cannot serve on the
/// listener: it fails, or is killed at the timeout.
#[inline(never)]
pub fn trial(exe: &ExecSelf, state: BorrowedFd<'_>, want: &[u8]) -> Result<(), TrialFailure> {
    let sys = TrialFailure::Sys;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| sys("create a pipe", e.into()))?;
    let env = ExecSelf::env(state, true);
    match crate::sys::fork().map_err(|e| sys("fork", e))? {
        crate::sys::Forked::Child => {
            // Only async-signal-safe calls from here: nothing allocates.
            if crate::sys::dup2_number(w.as_fd(), 0).is_err()
                || rustix::io::fcntl_setfd(state, rustix::io::FdFlags::empty()).is_err()
            {
                crate::sys::exit_now(126);
            }
            let e = crate::sys::execve(&exe.path, &exe.argv, &env);
            // Tell the parent why (no acknowledgement starts with NUL).
            let mut why = *EXEC_FAILED;
            why[1..].copy_from_slice(&e.raw_os_error().unwrap_or(0).to_le_bytes());
            let _ = rustix::io::write(w.as_fd(), &why);
            crate::sys::exit_now(127)
        }
        crate::sys::Forked::Parent(pid) => {
            drop(w);
            let got = read_answer(r.as_fd(), want.len() + 1);
            let status = match got {
                Err(TrialFailure::TimedOut) => {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    wait_child(pid)?;
                    return Err(TrialFailure::TimedOut);
                }
                _ => wait_child(pid)?,
            };
            let got = got?;
            if got.len() == EXEC_FAILED.len() && got[0] == 0 {
                let errno = i32::from_le_bytes(got[1..].try_into().unwrap());
                return Err(TrialFailure::Exec(io::Error::from_raw_os_error(errno)));
            }
            if got.is_empty() {
                return Err(TrialFailure::NoAnswer(Exit(status)));
            }
            if got != want {
                return Err(TrialFailure::WrongAnswer(
                    String::from_utf8_lossy(&got).into_owned(),
                ));
            }
            if status.exit_status() != Some(0) {
                return Err(TrialFailure::Failed(Exit(status)));
            }
            Ok(())
        }
    }
}

fn wait_child(pid: rustix::process::Pid) -> Result<rustix::process::WaitStatus, TrialFailure> {
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, st))) => return Ok(st),
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(TrialFailure::Sys("wait for the trial run", e.into())),
        }
    }
}

/// Reads until end of file, `max` bytes or the timeout.
fn read_answer(r: BorrowedFd<'_>, max: usize) -> Result<Vec<u8>, TrialFailure> {
    let deadline = Instant::now() + TRIAL_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TrialFailure::TimedOut);
        }
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
        };
        let mut pfd = [rustix::event::PollFd::new(&r, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut pfd, Some(&ts)) {
            Ok(0) => return Err(TrialFailure::TimedOut),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(TrialFailure::Sys("poll the trial run", e.into())),
        }
        match rustix::io::read(r, &mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= max {
                    return Ok(got);
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(TrialFailure::Sys("read the trial's answer", e.into())),
        }
    }
}

/// Executes the new binary for good with the state at `state` (whose
/// close-on-exec the caller has cleared, with that of every descriptor
/// the state lists). Returns only on failure.
pub fn exec(exe: &ExecSelf, state: BorrowedFd<'_>) -> io::Error {
    let env = ExecSelf::env(state, false);
    crate::sys::execve(&exe.path, &exe.argv, &env)
}

/// A descriptor number from an environment variable.
fn fd_var(name: &str) -> Option<i32> {
    std::env::var_os(name)?.to_str()?.parse().ok()
}

/// The state an upgrading daemon left ([`ENV_STATE_FD`]), if any; dies 111
/// if it cannot be read.
pub fn inherited(prog: &crate::cli::Prog) -> Option<State> {
    std::env::var_os(ENV_STATE_FD)?;
    let fd = fd_var(ENV_STATE_FD)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
        .and_then(crate::sys::adopt_fd)
        .and_then(|fd| read_all(fd.as_fd()))
        .unwrap_or_else(|e| prog.die_unable(111, "read the upgrade's state", &e));
    let state = State::decode(&fd)
        .unwrap_or_else(|e| prog.die(111, format_args!("unable to resume after an upgrade: {e}")));
    Some(state)
}

/// In a trial run ([`ENV_STATE_CHECK`] set): runs `check` (what would stop
/// the program from serving and is not checked yet: it dies of a failure,
/// and the trial fails with it), then writes the acknowledgement of
/// `state` to that descriptor and exits 0. Otherwise returns at once.
pub fn acknowledge_trial(prog: &crate::cli::Prog, state: &State, check: impl FnOnce()) {
    let Some(out) = fd_var(ENV_STATE_CHECK) else {
        return;
    };
    check();
    let out = crate::sys::borrow_fd_number(out as u32)
        .unwrap_or_else(|e| prog.die_unable(111, "answer the upgrade's check", &e));
    let _ = rustix::io::write(out, &state.acknowledgement());
    crate::sys::exit_now(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let now = Tain::now();
        State {
            nonce: 42,
            listener: 0,
            max: 1000,
            own_fds: 3,
            watches: 7,
            slots: vec![
                Some(SavedHeld {
                    fd: 5,
                    id: b"a".to_vec(),
                    limit: now,
                    expiry: Some(now),
                    watch: SavedWatch::Polled,
                }),
                None,
                Some(SavedHeld {
                    fd: 6,
                    id: b"b\xff".to_vec(),
                    limit: Tain::infinite_from(now),
                    expiry: None,
                    watch: SavedWatch::Unmarked,
                }),
            ],
            free: vec![1],
            conns: vec![
                None,
                Some(SavedConn {
                    sock: 7,
                    store_re: Some(b".*".to_vec()),
                    retrieve_re: None,
                    list: true,
                    getdump: false,
                    setdump: true,
                    dumping: 3,
                    deadline_in: Some(Duration::from_millis(5)),
                    rx: b"\0\0".to_vec(),
                    rx_fds: vec![8],
                    tx: vec![SavedMsg {
                        header: [0, 0, 0, 1, 0, 1],
                        payload: vec![0],
                        written: 0,
                        fds: vec![5],
                    }],
                }),
            ],
        }
    }

    #[test]
    fn round_trip_and_every_truncation_refused() {
        let s = sample();
        let b = s.encode();
        assert_eq!(State::decode(&b), Ok(s));
        for n in 0..b.len() {
            assert!(State::decode(&b[..n]).is_err(), "{n}");
        }
        let mut v2 = b.clone();
        v2[8] = 2;
        assert_eq!(State::decode(&v2), Err(DecodeError::Version(2)));
        assert_eq!(State::decode(b"hello"), Err(DecodeError::NotAState));
    }
}
