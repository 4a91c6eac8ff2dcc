//! `s6-fdholder-sdnotify`: runs a program as systemd runs a `Type=notify`
//! service with a file descriptor store. It hands back what is held under
//! a prefix (as `s6-fdholder-sdlisten`), makes a private notify socket,
//! and execs the program with `NOTIFY_SOCKET` and `FDSTORE` set, while a
//! watcher process (a grandchild) serves the socket as long as the
//! program lives: `FDSTORE=1` fds are stored in the holder,
//! `FDSTOREREMOVE=1` deletes them, `READY=1` writes s6's readiness
//! newline. See `docs/s6-fdholder-sdnotify.md`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use fdholder::Client;
use rustix::event::{PollFd, PollFlags};
use rustix::fs::Mode;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::s6_fdholder_sdlisten::{place, retrieve_held};
use crate::cli::{EXIT_SYS, Prog, deadline_ms, strerror};
use crate::sd;
use crate::sys::{self, Forked};

const PROG: Prog = Prog {
    name: "s6-fdholder-sdnotify",
    usage: "s6-fdholder-sdnotify [ -t timeout ] [ -d notif ] [ -a ] [ -n max ] path prefix prog...",
};

/// The largest notify datagram (systemd's `NOTIFY_BUFFER_MAX`).
const DGRAM_MAX: usize = 4096;
/// The most fds one datagram can carry (the kernel's `SCM_MAX_FD`).
const SCM_MAX_FD: u32 = 253;
/// The default `-n`: the store's limit, exported as `FDSTORE`.
const DEFAULT_MAX: u32 = 64;
/// The longest `FDNAME` (systemd's `FDNAME_MAX`).
const FDNAME_MAX: usize = 255;
/// The digits of `k` in `prefix + name + ":" + k`.
const WIDTH: usize = 8;
/// The name of fds sent without `FDNAME` (systemd's).
const DEFAULT_NAME: &[u8] = b"stored";
/// Datagrams served in one second; beyond, they are a flood: refused.
const FLOOD: u32 = 1000;
/// Warnings about refused datagrams written in one second; the others
/// are counted, and the count written when the second is over.
const WARN_BURST: u32 = 10;
/// Datagrams read in one poll round, before the program's exit is
/// looked at again.
const BATCH: u32 = 64;
/// Datagrams read at most once the program has exited: more than the
/// kernel queues on a datagram socket (`net.unix.max_dgram_qlen`, 512
/// by default).
const DRAIN_MAX: u32 = 2048;

/// Why a datagram was refused: its fds are closed, nothing of it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// More than [`DGRAM_MAX`] bytes.
    Oversize,
    /// Control data cut (more fds than `-n` allows).
    Truncated,
    /// No `SCM_CREDENTIALS`, or a pid of 0 in them (the sender is in
    /// no pid namespace this one sees).
    NoCredentials,
    /// Sent by another process than the program (without `-a`).
    OtherPid(i32),
    /// Sent by a process of another uid.
    OtherUid(u32),
    /// More than [`FLOOD`] datagrams this second.
    Flood,
    /// A NUL byte, or a line that is not `KEY=VALUE`.
    Garbage,
    /// fds without `FDSTORE=1`.
    FdsWithoutStore(usize),
    /// An `FDNAME` systemd would not take (too long, `:`, a control
    /// character).
    BadName,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Oversize => write!(f, "datagram larger than {DGRAM_MAX} bytes"),
            Refusal::Truncated => f.write_str("control data truncated (too many fds)"),
            Refusal::NoCredentials => f.write_str("no credentials (or a pid of 0)"),
            Refusal::OtherPid(p) => write!(f, "sent by pid {p}, not the program's"),
            Refusal::OtherUid(u) => write!(f, "sent by uid {u}, not the program's"),
            Refusal::Flood => write!(f, "flood (more than {FLOOD} datagrams in a second)"),
            Refusal::Garbage => f.write_str("malformed (not newline-separated KEY=VALUE)"),
            Refusal::FdsWithoutStore(n) => write!(f, "{n} fds without FDSTORE=1"),
            Refusal::BadName => f.write_str("invalid FDNAME"),
        }
    }
}

/// What a datagram asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Notice<'a> {
    ready: bool,
    store: bool,
    remove: bool,
    poll: bool,
    name: Option<&'a [u8]>,
    status: Option<&'a [u8]>,
}

/// Parses a datagram's text: newline-separated `KEY=VALUE` (empty lines
/// are skipped, unknown keys ignored; the last `FDNAME` counts).
fn parse(text: &[u8]) -> Result<Notice<'_>, Refusal> {
    if text.contains(&0) {
        return Err(Refusal::Garbage);
    }
    let mut n = Notice {
        poll: true,
        ..Notice::default()
    };
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Some(eq) = line.iter().position(|&b| b == b'=').filter(|&i| i > 0) else {
            return Err(Refusal::Garbage);
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        match key {
            b"READY" => n.ready |= value == b"1",
            b"FDSTORE" => n.store |= value == b"1",
            b"FDSTOREREMOVE" => n.remove |= value == b"1",
            b"FDPOLL" => n.poll = value != b"0",
            b"FDNAME" => n.name = Some(value),
            b"STATUS" => n.status = Some(value),
            _ => {}
        }
    }
    if let Some(name) = n.name {
        // systemd's fdname_is_valid: at most 255 bytes, no `:`, no
        // control character.
        if name.len() > FDNAME_MAX || name.iter().any(|&b| b == b':' || b < 0x20 || b == 0x7f) {
            return Err(Refusal::BadName);
        }
    }
    Ok(n)
}

/// An open file as systemd compares them (`same_fd` without `kcmp`):
/// device, inode and access mode (the two ends of a pipe differ).
type Identity = (u64, u64, u32);

fn identity(fd: BorrowedFd<'_>) -> Option<Identity> {
    let st = rustix::fs::fstat(fd).ok()?;
    let mode = rustix::fs::fcntl_getfl(fd).ok()? & rustix::fs::OFlags::RWMODE;
    Some((st.st_dev, st.st_ino, mode.bits()))
}

/// Whether the holder marks fds to drop on hang-up, as far as known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hangup {
    /// Not tried yet, or it worked.
    Supported,
    /// The daemon refused the request (the reference's): fds are stored
    /// unmarked, and that was said once.
    Unsupported,
}

/// The watcher's state.
struct Watcher {
    sock: OwnedFd,
    pidfd: OwnedFd,
    notif: Option<BorrowedFd<'static>>,
    holder: OsString,
    prefix: Vec<u8>,
    pid: i32,
    uid: u32,
    any: bool,
    max: u32,
    timeout: u32,
    /// The ids held under the prefix that this watcher knows the file of
    /// (handed back at start, stored since).
    known: Vec<(Vec<u8>, Identity)>,
    hangup: Hangup,
    /// The current second, datagrams and warnings in it, warnings not
    /// written.
    second: Instant,
    served: u32,
    warned: u32,
    unsaid: u32,
    /// Room for the control data of one datagram: `max` fds and
    /// credentials.
    control: Vec<u64>,
}

/// The program: parses `std::env::args_os()` and execs.
pub fn main() {
    let (opts, args) = PROG.getopt("t:d:an:");
    let (mut timeout, mut notif, mut any, mut max) = (0, None, false, DEFAULT_MAX);
    for (c, v) in opts {
        match c {
            't' => timeout = PROG.uint(&v),
            'd' => notif = Some(PROG.uint(&v)),
            'a' => any = true,
            _ => max = PROG.uint(&v),
        }
    }
    let [holder, prefix, prog @ ..] = &args[..] else {
        PROG.die_usage()
    };
    if prog.is_empty() || max > SCM_MAX_FD {
        PROG.die_usage();
    }
    let notif = notif.map(|n| {
        sys::borrow_fd_number(n)
            .unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "use notification fd", &e))
    });
    let prefix = prefix.as_bytes().to_vec();
    let held = retrieve_held(&PROG, holder, &prefix, false, deadline_ms(timeout));
    let known = held
        .iter()
        .filter_map(|(id, fd)| Some((id.clone(), identity(fd.as_fd())?)))
        .collect();
    let me = rustix::process::getpid();
    let pidfd = rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty())
        .unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "pidfd_open", &e.into()));
    let (sock, dir, path) = notify_socket().unwrap_or_else(|e| {
        PROG.die_unable(EXIT_SYS, "create a notify socket", &e);
    });
    // From here until the watcher runs, a failure removes the socket.
    let remove = || {
        let _ = rustix::fs::unlink(&path);
        let _ = rustix::fs::rmdir(&dir);
    };
    let fork = || {
        sys::fork().unwrap_or_else(|e| {
            remove();
            PROG.die_unable(EXIT_SYS, "fork", &e)
        })
    };
    match fork() {
        Forked::Child => {
            // The middle process: forks the watcher and exits, so that the
            // program gets no child it did not make.
            if let Forked::Parent(_) = fork() {
                sys::exit_now(0)
            }
            drop(held);
            let mut w = Watcher {
                sock,
                pidfd,
                notif,
                holder: holder.clone(),
                prefix,
                pid: me.as_raw_nonzero().get(),
                uid: rustix::process::getuid().as_raw(),
                any,
                max,
                timeout,
                known,
                hangup: Hangup::Supported,
                second: Instant::now(),
                served: 0,
                warned: 0,
                unsaid: 0,
                control: vec![0; control_words(max)],
            };
            w.run();
            remove();
            std::process::exit(0)
        }
        Forked::Parent(child) => {
            // The middle process exits 0 once the watcher is forked, or
            // dies of a failed fork: then nobody would serve the socket.
            let st = rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty());
            if !matches!(st, Ok(Some((_, st))) if st.exit_status() == Some(0)) {
                remove();
                PROG.die(EXIT_SYS, "unable to fork the watcher");
            }
        }
    }
    // The notification fd is the watcher's alone; the socket and the pidfd
    // are close-on-exec.
    if let Some(fd) = notif {
        let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    }
    let mut env = place(&PROG, held, &prefix);
    env.push(("NOTIFY_SOCKET".into(), Some(path)));
    env.push(("FDSTORE".into(), Some(max.to_string().into())));
    PROG.exec(prog, &env)
}

/// The 8-byte words of control data for `max` fds and credentials:
/// `CMSG_SPACE(4 * max) + CMSG_SPACE(sizeof(struct ucred))`, with 64-bit
/// headers (16 bytes) and payloads padded to 8 bytes. A datagram with
/// more fds than fit is truncated by the kernel (`MSG_CTRUNC`).
fn control_words(max: u32) -> usize {
    let space = |payload: usize| 16 + payload.div_ceil(8) * 8;
    (space(4 * max as usize) + space(12)) / 8
}

/// Makes a directory only this uid can enter (mode 0700, under
/// `$XDG_RUNTIME_DIR`, else `/run`, else `/tmp`) and binds a datagram
/// socket in it, receiving credentials, close-on-exec and non-blocking.
/// Returns the socket, the directory and the socket's path.
fn notify_socket() -> io::Result<(OwnedFd, OsString, OsString)> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, flags, None)?;
    rustix::net::sockopt::set_socket_passcred(&sock, true)?;
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty());
    let bases = xdg.into_iter().chain(["/run".into(), "/tmp".into()]);
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for base in bases {
        for n in 0..10u32 {
            let mut dir = base.clone();
            dir.push(format!(
                "/s6-fdholder-sdnotify.{}.{}",
                std::process::id(),
                nanos ^ n
            ));
            match rustix::fs::mkdir(&dir, Mode::RWXU) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => {
                    last = e.into();
                    break;
                }
            }
            let mut path = dir.clone();
            path.push("/notify");
            let bound = SocketAddrUnix::new(path.as_os_str())
                .and_then(|addr| rustix::net::bind(&sock, &addr));
            match bound {
                Ok(()) => return Ok((sock, dir, path)),
                Err(e) => {
                    let _ = rustix::fs::rmdir(&dir);
                    last = e.into();
                    break;
                }
            }
        }
    }
    Err(last)
}

impl Watcher {
    /// Serves the socket until the program exits, then what is queued.
    fn run(&mut self) {
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGPIPE] {
            sys::ignore_signal(sig);
        }
        loop {
            let mut fds = [
                PollFd::new(&self.sock, PollFlags::IN),
                PollFd::new(&self.pidfd, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => PROG.die_unable(EXIT_SYS, "poll", &e.into()),
            }
            let (readable, gone) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
            if gone {
                // Only what was queued when the program exited: a process
                // that goes on sending cannot keep the watcher alive.
                for _ in 0..DRAIN_MAX {
                    if !self.serve_one() {
                        break;
                    }
                }
                self.say_unsaid();
                return;
            }
            if readable {
                for _ in 0..BATCH {
                    if !self.serve_one() {
                        break;
                    }
                }
            }
        }
    }

    /// Receives and handles one datagram; `false` when none is queued.
    fn serve_one(&mut self) -> bool {
        let mut buf = [0u8; DGRAM_MAX];
        let d = match sys::recv_datagram(self.sock.as_fd(), &mut buf, &mut self.control) {
            Ok(Some(d)) => d,
            Ok(None) => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(e) => PROG.die_unable(EXIT_SYS, "receive a notification", &e),
        };
        let text = &buf[..d.len.min(DGRAM_MAX)];
        match self.check(&d, text) {
            Ok(n) => self.act(n, d.fds),
            Err(r) => self.refuse(&r),
        }
        true
    }

    /// Everything a datagram is refused for, in the order of the checks.
    fn check<'a>(&mut self, d: &sys::Datagram, text: &'a [u8]) -> Result<Notice<'a>, Refusal> {
        let now = Instant::now();
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.say_unsaid();
            (self.second, self.served, self.warned) = (now, 0, 0);
        }
        self.served += 1;
        if self.served > FLOOD {
            return Err(Refusal::Flood);
        }
        if d.len > DGRAM_MAX || d.truncated {
            return Err(Refusal::Oversize);
        }
        if d.control_truncated || d.fds.len() > self.max as usize {
            return Err(Refusal::Truncated);
        }
        // A pid of 0: the sender is outside this pid namespace.
        let (pid, uid, _) = d.cred.filter(|c| c.0 != 0).ok_or(Refusal::NoCredentials)?;
        if uid != self.uid {
            return Err(Refusal::OtherUid(uid));
        }
        if !self.any && pid != self.pid {
            return Err(Refusal::OtherPid(pid));
        }
        let n = parse(text)?;
        if !d.fds.is_empty() && !n.store {
            return Err(Refusal::FdsWithoutStore(d.fds.len()));
        }
        Ok(n)
    }

    /// Warns of a refusal, unless there were too many this second.
    fn refuse(&mut self, r: &Refusal) {
        if self.warned < WARN_BURST {
            self.warned += 1;
            PROG.warn(format_args!("datagram refused: {r}"));
        } else {
            self.unsaid += 1;
        }
    }

    /// Writes how many refusals were not written, if any.
    fn say_unsaid(&mut self) {
        if self.unsaid > 0 {
            PROG.warn(format_args!("{} more datagrams refused", self.unsaid));
            self.unsaid = 0;
        }
    }

    /// Does what an accepted datagram asks.
    fn act(&mut self, n: Notice<'_>, fds: Vec<OwnedFd>) {
        if let Some(status) = n.status {
            PROG.info(format_args!("status: {}", String::from_utf8_lossy(status)));
        }
        if n.ready {
            if let Some(fd) = self.notif.take() {
                let _ = rustix::io::write(fd, b"\n");
                // Once: the fd stays open (it may be any number) but unused.
            }
        }
        if !n.remove && fds.is_empty() {
            return;
        }
        let name = match n.name {
            Some(b"") | None => DEFAULT_NAME,
            Some(name) => name,
        };
        let mut base = self.prefix.clone();
        base.extend_from_slice(name);
        base.push(sd::SEPARATOR);
        if base.len() + WIDTH > fdholder::proto::ID_MAX {
            PROG.warn(format_args!(
                "name {} too long for an id under the prefix: {} fds closed",
                String::from_utf8_lossy(name),
                fds.len()
            ));
            return;
        }
        if let Err(e) = self.hold(&base, n.remove, n.poll, fds) {
            PROG.warn(format_args!(
                "unable to store or delete fds in the fd-holder daemon at {} (the fds not stored are closed): {}",
                self.holder.to_string_lossy(),
                strerror(&e)
            ));
        }
    }

    fn connect(&self) -> io::Result<Client> {
        Client::connect(&self.holder, deadline_ms(self.timeout))
    }

    /// One conversation with the holder: deletes every id `base + k` with
    /// `remove`, then stores `fds` under the next free `base + k`.
    fn hold(&mut self, base: &[u8], remove: bool, poll: bool, fds: Vec<OwnedFd>) -> io::Result<()> {
        let deadline = || deadline_ms(self.timeout);
        let mut client = self.connect()?;
        let mut ids: Vec<Vec<u8>> = client.list(deadline())?;
        ids.retain(|id| id.starts_with(&self.prefix));
        self.known.retain(|(id, _)| ids.contains(id));
        let of_name = |id: &[u8]| id.strip_prefix(base).and_then(k_of);
        if remove {
            for id in ids.iter().filter(|id| of_name(id).is_some()) {
                match client.delete(id, deadline()) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                    _ => {}
                }
            }
            ids.retain(|id| of_name(id).is_none());
            self.known.retain(|(id, _)| of_name(id).is_none());
        }
        let mut k = ids
            .iter()
            .filter_map(|id| of_name(id))
            .max()
            .map_or(0, |k| k + 1);
        let mut held = ids.len();
        let total = fds.len();
        for (i, fd) in fds.into_iter().enumerate() {
            let ident = identity(fd.as_fd());
            if ident.is_some() && self.known.iter().any(|(_, x)| Some(*x) == ident) {
                continue; // Already in the store: systemd ignores it too.
            }
            if held >= self.max as usize || k >= 10u32.pow(WIDTH as u32) {
                PROG.warn(format_args!(
                    "fd store full ({} fds under the prefix): {} fds closed",
                    self.max,
                    total - i
                ));
                break;
            }
            let mut id = base.to_vec();
            id.extend_from_slice(format!("{k:0WIDTH$}").as_bytes());
            self.store(&mut client, fd.as_fd(), &id, poll)?;
            if let Some(x) = ident {
                self.known.push((id, x));
            }
            held += 1;
            k += 1;
        }
        Ok(())
    }

    /// Stores `fd` under `id`, marked to be dropped on hang-up if `poll`
    /// and the daemon can; else unmarked (said once).
    fn store(
        &mut self,
        client: &mut Client,
        fd: BorrowedFd<'_>,
        id: &[u8],
        poll: bool,
    ) -> io::Result<()> {
        let deadline = deadline_ms(self.timeout);
        if poll && self.hangup == Hangup::Supported {
            match client.store_dropping_on_hangup(fd, id, None, deadline) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.hangup = Hangup::Unsupported;
                    PROG.warn(
                        "the fd-holder daemon cannot drop fds on hang-up: storing them unmarked",
                    );
                    *client = self.connect()?;
                }
                r => return r,
            }
        }
        client.store(fd, id, None, deadline)
    }
}

/// The `k` of an id's tail after `prefix + name + ":"`: exactly
/// [`WIDTH`] decimal digits.
fn k_of(tail: &[u8]) -> Option<u32> {
    if tail.len() != WIDTH || !tail.iter().all(u8::is_ascii_digit) {
        return None;
    }
    crate::cli::parse_uint(OsStr::from_bytes(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let n = parse(b"FDSTORE=1\nFDNAME=http\nFDPOLL=0\nX=y\n\nSTATUS=ok").unwrap();
        assert!(n.store && !n.poll && !n.ready && !n.remove);
        assert_eq!(n.name, Some(&b"http"[..]));
        assert_eq!(n.status, Some(&b"ok"[..]));
        let n = parse(b"READY=1").unwrap();
        assert!(n.ready && n.poll && n.name.is_none());
        assert!(!parse(b"READY=0").unwrap().ready);
        assert_eq!(parse(b"READY=1\0"), Err(Refusal::Garbage));
        assert_eq!(parse(b"READY=1\ngarbage"), Err(Refusal::Garbage));
        assert_eq!(parse(b"=1"), Err(Refusal::Garbage));
        assert_eq!(parse(b"FDNAME=a:b"), Err(Refusal::BadName));
        assert_eq!(parse(b"FDNAME=a\tb"), Err(Refusal::BadName));
        let long = [b"FDNAME=".to_vec(), vec![b'x'; 256]].concat();
        assert_eq!(parse(&long), Err(Refusal::BadName));
        assert!(parse(&long[..long.len() - 1]).is_ok());
    }

    #[test]
    fn ks() {
        assert_eq!(k_of(b"00000000"), Some(0));
        assert_eq!(k_of(b"00000042"), Some(42));
        assert_eq!(k_of(b"0000042"), None);
        assert_eq!(k_of(b"0000004x"), None);
        assert_eq!(k_of(b""), None);
    }
}
