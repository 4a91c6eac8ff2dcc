//! The client library: talk to an `s6-fdholderd` (ours or the reference's).
//!
//! Every call takes a deadline (`None` waits forever). When a call fails
//! with [`io::ErrorKind::TimedOut`], the protocol state is unknown: drop the
//! client. Daemon refusals are `io::Error`s carrying the daemon's errno
//! (`EPERM`, `ENOENT`, `EBUSY`, `ENFILE`, ...), see [`io::Error::raw_os_error`].
//!
//! The crate documentation has a zero-downtime restart example.
//!
//! # Errors
//!
//! Every request of a [`Client`] fails in one of three ways:
//!
//! - **The daemon refuses** it: the error carries the errno it answered
//!   (each method lists them). `EPERM` means its rules do not give the right
//!   the request needs; the client stays usable.
//! - **A bad id**, checked before anything is sent ([`proto::check_id`]):
//!   `ENAMETOOLONG` over 255 bytes, `EINVAL` for an empty id or one with a
//!   NUL; the client stays usable.
//! - **The exchange breaks**: `ETIMEDOUT` when the deadline passes; `EPIPE`
//!   (or `ECONNRESET`) when the daemon closed the connection (it exited, it
//!   dropped the client under its `-t` timeout, for a request sent too
//!   slowly or answers not read, or it found the request malformed);
//!   `EPROTO` for an answer that is malformed or does not fit the request
//!   (a misbehaving daemon, or not a fd-holder at all). After these the
//!   protocol state is unknown: drop the client.
//!
//! # Example
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use std::time::{Duration, Instant};
//! use fdholder::Client;
//!
//! # fn main() -> std::io::Result<()> {
//! let deadline = Some(Instant::now() + Duration::from_secs(5));
//! let mut c = Client::connect("/run/fdholder/s", deadline)?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
//! match c.store(listener.as_fd(), b"web/listen", None, deadline) {
//!     Ok(()) => {}
//!     Err(e) if e.raw_os_error() == Some(16) => eprintln!("already held (EBUSY)"),
//!     Err(e) => return Err(e),
//! }
//! drop(c); // do not keep one of the daemon's connection slots
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::describe;
use crate::proto;
use crate::tain::Tain;
use crate::wire::{self, MAX_FDS, Receiver, Sender};

/// A deadline: `None` is no deadline.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use fdholder::Deadline;
/// let five_seconds: Deadline = Some(Instant::now() + Duration::from_secs(5));
/// let forever: Deadline = None;
/// # drop((five_seconds, forever));
/// ```
pub type Deadline = Option<Instant>;

/// One held descriptor, as a dump returns it ([`Client::getdump`]).
///
/// # Example
///
/// ```no_run
/// use fdholder::{Client, Tain};
/// # fn main() -> std::io::Result<()> {
/// let mut c = Client::connect("/run/fdholder/s", None)?;
/// let now = Tain::now();
/// for e in c.getdump(None)? {
///     let left = e.limit.duration_since(now);
///     println!("{}: expires in {left:?}", String::from_utf8_lossy(&e.id));
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DumpEntry {
    /// Identifier, 1 to 255 bytes, no NUL.
    pub id: Vec<u8>,
    /// The descriptor (close-on-exec).
    pub fd: OwnedFd,
    /// Expiry date, as the daemon holds it.
    pub limit: Tain,
}

impl DumpEntry {
    /// A borrowed view, for [`Client::setdump`].
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::{DumpEntry, Tain};
    /// # fn main() -> std::io::Result<()> {
    /// let e = DumpEntry {
    ///     id: b"log".to_vec(),
    ///     fd: std::fs::File::open("/dev/null")?.into(),
    ///     limit: Tain::infinite_from(Tain::now()),
    /// };
    /// let r = e.as_ref();
    /// assert_eq!((r.id, r.limit), (&b"log"[..], e.limit));
    /// # Ok(())
    /// # }
    /// ```
    pub fn as_ref(&self) -> DumpEntryRef<'_> {
        DumpEntryRef {
            id: &self.id,
            fd: self.fd.as_fd(),
            limit: self.limit,
        }
    }
}

/// A descriptor to send in a dump ([`Client::setdump`]).
///
/// # Example
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use fdholder::{Client, DumpEntryRef, Tain};
/// # fn main() -> std::io::Result<()> {
/// let log = std::fs::File::create("/tmp/app.log")?;
/// let entry = DumpEntryRef {
///     id: b"app/log",
///     fd: log.as_fd(),
///     limit: Tain::now().add_secs(3600),
/// };
/// Client::connect("/run/fdholder/s", None)?.setdump(&[entry], None)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DumpEntryRef<'a> {
    /// Identifier, 1 to 255 bytes, no NUL.
    pub id: &'a [u8],
    /// The descriptor; a copy is sent.
    pub fd: BorrowedFd<'a>,
    /// Expiry date ([`Tain::infinite_from`] for none).
    pub limit: Tain,
}

/// A connection to an fd-holding daemon.
///
/// One request at a time (`&mut self`); each takes a deadline. Connect,
/// make the requests and drop it: a client kept for a service's life takes
/// one of the daemon's connection slots (`-c`) for nothing, and while they
/// are all taken the daemon accepts nobody else. See the
/// [module](self#errors) for how requests fail.
///
/// # Example
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use fdholder::Client;
///
/// # fn main() -> std::io::Result<()> {
/// let deadline = Some(Instant::now() + Duration::from_secs(5));
/// let mut c = Client::connect("/run/fdholder/s", deadline)?;
/// let listener = std::net::TcpListener::from(c.retrieve(b"web/listen", deadline)?);
/// drop(c);
/// # drop(listener);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Client {
    sock: OwnedFd,
    rx: Receiver,
}

fn timed_out() -> io::Error {
    io::Error::from(rustix::io::Errno::TIMEDOUT)
}

/// Waits until `fd` is ready for `events` or the deadline passes.
fn wait(fd: BorrowedFd<'_>, events: PollFlags, deadline: Deadline) -> io::Result<()> {
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                Some(
                    Timespec::try_from(left)
                        .map_err(|_| io::Error::from(rustix::io::Errno::INVAL))?,
                )
            }
        };
        let mut pfd = [PollFd::new(&fd, events)];
        match rustix::event::poll(&mut pfd, timeout.as_ref()) {
            Ok(0) => {}
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl Client {
    /// Connects to the daemon listening on `path`.
    ///
    /// A connect to a Unix socket only waits while the daemon's listen
    /// backlog is full; without a deadline that wait has no end.
    ///
    /// # Errors
    ///
    /// - `ENAMETOOLONG`: `path` does not fit a `sockaddr_un` (107 bytes);
    ///   `EINVAL`: it contains a NUL;
    /// - the connect's: `ENOENT` (no such path), `ECONNREFUSED` (nobody
    ///   listens there: a stale socket, or not a socket at all), `EACCES`
    ///   (no search or write permission), `ENOTDIR`...;
    /// - `ETIMEDOUT`: the deadline had passed or passed while the backlog
    ///   stayed full;
    /// - `EMFILE`/`ENFILE` from `socket`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use std::time::Instant;
    /// use fdholder::Client;
    ///
    /// let e = Client::connect("/nonexistent/fdholder/s", None).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::NotFound);
    /// let e = Client::connect("/nonexistent/fdholder/s", Some(Instant::now())).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::TimedOut);
    /// let e = Client::connect("/".repeat(200), None).unwrap_err();
    /// assert_eq!(e.raw_os_error(), Some(36)); // ENAMETOOLONG
    /// ```
    pub fn connect(path: impl AsRef<Path>, deadline: Deadline) -> io::Result<Client> {
        let addr = SocketAddrUnix::new(path.as_ref())?;
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        if let Some(d) = deadline {
            // A Unix connect only blocks while the listener's backlog is
            // full; SO_SNDTIMEO bounds that wait.
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            rustix::net::sockopt::set_socket_timeout(
                &sock,
                rustix::net::sockopt::Timeout::Send,
                Some(left),
            )?;
        }
        match rustix::net::connect(&sock, &addr) {
            Ok(()) => {}
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INPROGRESS) => {
                return Err(timed_out());
            }
            Err(e) => return Err(e.into()),
        }
        if deadline.is_some() {
            rustix::net::sockopt::set_socket_timeout(
                &sock,
                rustix::net::sockopt::Timeout::Send,
                None,
            )?;
        }
        Ok(Client::from_fd(sock))
    }

    /// Uses `sock`, a stream socket already connected to a daemon (say,
    /// one a launcher passed, or one end of a `socketpair`). It may be
    /// blocking: every read and write passes `MSG_DONTWAIT`, and the client
    /// sets `O_NONBLOCK` on it only if a request does not go out in one
    /// write.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use fdholder::{proto, wire, Client};
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let (ours, mut theirs) = UnixStream::pair()?;
    /// // A stand-in for the daemon: reads a list request, answers two ids.
    /// let daemon = std::thread::spawn(move || -> std::io::Result<()> {
    ///     let mut req = [0; wire::HEADER + 1];
    ///     theirs.read_exact(&mut req)?;
    ///     assert_eq!(req[wire::HEADER], proto::OP_LIST);
    ///     let ids: [&[u8]; 2] = [b"a", b"b"];
    ///     let answer = proto::list_answer(ids.into_iter());
    ///     theirs.write_all(&wire::header(answer.len(), 0))?;
    ///     theirs.write_all(&answer)
    /// });
    /// let mut c = Client::from_fd(ours.into());
    /// assert_eq!(c.list(None)?, [b"a".to_vec(), b"b".to_vec()]);
    /// daemon.join().unwrap()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_fd(sock: OwnedFd) -> Client {
        Client {
            sock,
            rx: Receiver::new(wire::MAX_LEN),
        }
    }

    /// Gives the connection back (with `O_NONBLOCK` set if a request did not
    /// go out in one write). Whatever the client had read from it and not
    /// handed out yet is lost.
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// # fn main() -> std::io::Result<()> {
    /// let (ours, _theirs) = UnixStream::pair()?;
    /// let c = fdholder::Client::from_fd(ours.into());
    /// let back = UnixStream::from(c.into_fd());
    /// # drop(back);
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_fd(self) -> OwnedFd {
        self.sock
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        let fl = rustix::fs::fcntl_getfl(&self.sock)?;
        if !fl.contains(rustix::fs::OFlags::NONBLOCK) {
            rustix::fs::fcntl_setfl(&self.sock, fl | rustix::fs::OFlags::NONBLOCK)?;
        }
        Ok(())
    }

    fn send(
        &mut self,
        payload: Vec<u8>,
        fds: Vec<BorrowedFd<'_>>,
        deadline: Deadline,
    ) -> io::Result<()> {
        let mut tx = Sender::new();
        tx.push(payload, fds);
        // Most requests go out in one write; only then make sure of O_NONBLOCK
        // (a socket handed in by `from_fd` may be blocking).
        loop {
            match tx.flush(self.sock.as_fd()) {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    self.set_nonblocking()?;
                    wait(self.sock.as_fd(), PollFlags::OUT, deadline)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, deadline: Deadline) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        loop {
            if let Some((payload, fds)) = self.rx.take_message()? {
                return Ok((payload.to_vec(), fds));
            }
            match self.rx.fill(self.sock.as_fd()) {
                Ok(0) => return Err(io::Error::from(rustix::io::Errno::PIPE)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(self.sock.as_fd(), PollFlags::IN, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives a one-byte answer with no fds: 0 or an errno.
    fn recv_status(&mut self, deadline: Deadline) -> io::Result<()> {
        let (ans, fds) = self.recv(deadline)?;
        let rest = proto::answer_error(&ans)?;
        if !rest.is_empty() || !fds.is_empty() {
            return Err(proto::eproto());
        }
        Ok(())
    }

    /// Stores a copy of `fd` under `id`, until `limit` (`None`: no expiry).
    /// The rules must give the store right on `id`
    /// (`S6_FDHOLDER_STORE_REGEX`). `fd` itself stays open here.
    ///
    /// # Errors
    ///
    /// The daemon's `EPERM` (no store right on `id`), `EBUSY` (something is
    /// held under `id` already: delete it first), `ENFILE` (it holds as many
    /// as its `-n` allows); `ENAMETOOLONG`/`EINVAL` for a bad id;
    /// `ETIMEDOUT`, `EPIPE`, `EPROTO` as every request (see the
    /// [module](self#errors)).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// use std::time::{Duration, SystemTime};
    /// use fdholder::{Client, Tain};
    /// # fn main() -> std::io::Result<()> {
    /// let mut c = Client::connect("/run/fdholder/s", None)?;
    /// let l = std::net::TcpListener::bind("127.0.0.1:8080")?;
    /// // Held for a day at most.
    /// let limit = Tain::from_system_time(SystemTime::now() + Duration::from_secs(86400));
    /// c.store(l.as_fd(), b"web/listen", Some(limit), None)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn store(
        &mut self,
        fd: BorrowedFd<'_>,
        id: &[u8],
        limit: Option<Tain>,
        deadline: Deadline,
    ) -> io::Result<()> {
        let payload = store_payload(id, limit, proto::OnHangup::Keep)?;
        self.send(payload, vec![fd], deadline)?;
        self.recv_status(deadline)
    }

    /// Stores like [`Client::store`], marked so that the daemon closes and
    /// forgets it when it reports `POLLHUP` or `POLLERR`: a connected
    /// socket whose peer left (a Unix stream socket, a TCP connection
    /// reset), a pipe whose other end closed. The daemon applies the store
    /// right, and answers `EPERM`, `ENFILE`, `EBUSY` as for a store. It
    /// never polls a listening socket, a regular file or a directory: the
    /// mark is taken and has no effect. See `docs/s6-fdholderd.md`.
    ///
    /// # Errors
    ///
    /// As [`Client::store`], and `EOPNOTSUPP`: the daemon does not support
    /// marked stores; the connection is no longer usable, connect again
    /// (and, e.g., store unmarked). The reference daemon closes the
    /// connection on a request it does not know; a daemon that closes it
    /// for another reason at that moment (it exits, its `-t` passed) looks
    /// the same from here.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// use std::os::fd::AsFd;
    /// let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
    /// let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
    /// // Held until `theirs` is closed, then dropped by the daemon.
    /// c.store_dropping_on_hangup(mine.as_fd(), b"web/peer", None, None)?;
    /// # drop(theirs);
    /// # Ok(())
    /// # }
    /// ```
    pub fn store_dropping_on_hangup(
        &mut self,
        fd: BorrowedFd<'_>,
        id: &[u8],
        limit: Option<Tain>,
        deadline: Deadline,
    ) -> io::Result<()> {
        let payload = store_payload(id, limit, proto::OnHangup::Drop)?;
        self.send(payload, vec![fd], deadline)
            .and_then(|()| self.recv_status(deadline))
            .map_err(marked_store_error)
    }

    /// Deletes (and closes, in the daemon) the fd held under `id`. The
    /// rules must give the store right on `id` (`S6_FDHOLDER_STORE_REGEX`).
    ///
    /// # Errors
    ///
    /// The daemon's `EPERM` (no store right on `id`), `ENOENT` (nothing held
    /// under `id`); `ENAMETOOLONG`/`EINVAL` for a bad id; `ETIMEDOUT`,
    /// `EPIPE`, `EPROTO` as every request (see the [module](self#errors)).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
    /// match c.delete(b"web/listen", None) {
    ///     Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // nothing held
    ///     r => r?,
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn delete(&mut self, id: &[u8], deadline: Deadline) -> io::Result<()> {
        proto::check_id(id)?;
        self.send(proto::delete(id), vec![], deadline)?;
        self.recv_status(deadline)
    }

    fn retrieve_maybe_delete(
        &mut self,
        id: &[u8],
        delete: bool,
        deadline: Deadline,
    ) -> io::Result<OwnedFd> {
        proto::check_id(id)?;
        self.send(proto::retrieve(id, delete), vec![], deadline)?;
        let (ans, mut fds) = self.recv(deadline)?;
        let rest = proto::answer_error(&ans)?;
        match (rest.is_empty(), fds.pop(), fds.is_empty()) {
            (true, Some(fd), true) => Ok(fd),
            _ => Err(proto::eproto()),
        }
    }

    /// Gets a copy of the fd held under `id` (close-on-exec); the daemon
    /// keeps holding it. The rules must give the retrieve right on `id`
    /// (`S6_FDHOLDER_RETRIEVE_REGEX`).
    ///
    /// # Errors
    ///
    /// The daemon's `EPERM` (no retrieve right on `id`), `ENOENT` (nothing
    /// held under `id`); `ENAMETOOLONG`/`EINVAL` for a bad id; `EPROTO` when
    /// the answer does not carry exactly one descriptor; `ETIMEDOUT`,
    /// `EPIPE` as every request (see the [module](self#errors)).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::os::unix::net::UnixListener;
    /// # fn main() -> std::io::Result<()> {
    /// let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
    /// let listener = UnixListener::from(c.retrieve(b"app/listen", None)?);
    /// drop(c);
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub fn retrieve(&mut self, id: &[u8], deadline: Deadline) -> io::Result<OwnedFd> {
        self.retrieve_maybe_delete(id, false, deadline)
    }

    /// Gets the fd held under `id` and deletes it from the daemon (needs
    /// both the retrieve and the store right).
    ///
    /// # Errors
    ///
    /// As [`Client::retrieve`]; `EPERM` also without the store right on
    /// `id`. After a `ETIMEDOUT` or a broken connection, the descriptor may
    /// be deleted and lost.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
    /// let fd = c.retrieve_delete(b"web/listen", None)?; // no longer held
    /// # drop(fd);
    /// # Ok(())
    /// # }
    /// ```
    pub fn retrieve_delete(&mut self, id: &[u8], deadline: Deadline) -> io::Result<OwnedFd> {
        self.retrieve_maybe_delete(id, true, deadline)
    }

    /// Lists the ids held, in the daemon's order. The rules must give the
    /// list right (`S6_FDHOLDER_LIST`).
    ///
    /// # Errors
    ///
    /// The daemon's `EPERM` (no list right); `EPROTO` for an answer that
    /// is not a count and that many ids, or carries descriptors;
    /// `ETIMEDOUT`, `EPIPE` as every request (see the [module](self#errors)).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
    /// for id in c.list(None)? {
    ///     println!("{}", String::from_utf8_lossy(&id));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn list(&mut self, deadline: Deadline) -> io::Result<Vec<Vec<u8>>> {
        self.send(vec![proto::OP_LIST], vec![], deadline)?;
        let (ans, fds) = self.recv(deadline)?;
        let body = proto::answer_error(&ans)?;
        if !fds.is_empty() {
            return Err(proto::eproto());
        }
        proto::parse_list(body).ok_or_else(proto::eproto)
    }

    /// Describes every fd held: id, expiry and what the fd is (a socket and
    /// its addresses, a pipe, a file and its path...), in storage order.
    /// Metadata only: no fd leaves the daemon. Needs the list right.
    ///
    /// # Errors
    ///
    /// `EOPNOTSUPP` when the daemon does not know the request (it closed
    /// the connection without answering, as skarnet's `s6-fdholderd`
    /// does with an opcode it does not know); `EPERM` without the list
    /// right; I/O errors; `EPROTO` for a malformed answer.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
    /// match c.describe(None) {
    ///     Ok(held) => {
    ///         for h in held {
    ///             println!("{:?}: {}", h.id, h.description.kind.name());
    ///         }
    ///     }
    ///     Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
    ///         eprintln!("an s6-fdholderd that cannot describe: fall back to list()");
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn describe(&mut self, deadline: Deadline) -> io::Result<Vec<describe::Held>> {
        self.send(vec![proto::OP_DESCRIBE], vec![], deadline)?;
        let (ans, fds) = self.recv(deadline).map_err(describe::first_answer_error)?;
        let (chunks, total) = dump_header(proto::answer_error(&ans)?, &fds)?;
        let now = Tain::now();
        let mut held = Vec::with_capacity(total.min(1 << 16));
        for _ in 0..chunks {
            let (payload, fds) = self.recv(deadline)?;
            describe::take_chunk(&mut held, total, &payload, fds.len(), now)?;
        }
        if held.len() != total {
            return Err(proto::eproto());
        }
        Ok(held)
    }

    /// Gets every fd held, with ids and limits, in chunks of up to 253. The
    /// rules must give the getdump right (`S6_FDHOLDER_GETDUMP`). The
    /// daemon keeps holding them.
    ///
    /// # Errors
    ///
    /// The daemon's `EPERM` (no getdump right); `EPROTO` for a dump that
    /// does not add up (chunk and descriptor counts that disagree with its
    /// header, malformed entries); `ETIMEDOUT`, `EPIPE` as every request
    /// (see the [module](self#errors)).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
    /// let dump = c.getdump(None)?;
    /// eprintln!("{} descriptors held", dump.len());
    /// # Ok(())
    /// # }
    /// ```
    pub fn getdump(&mut self, deadline: Deadline) -> io::Result<Vec<DumpEntry>> {
        self.send(vec![proto::OP_GETDUMP], vec![], deadline)?;
        let (ans, fds) = self.recv(deadline)?;
        let (chunks, total) = dump_header(proto::answer_error(&ans)?, &fds)?;
        let mut dump = Vec::with_capacity(total.min(1 << 16));
        for _ in 0..chunks {
            let (payload, fds) = self.recv(deadline)?;
            take_dump_chunk(&mut dump, total, &payload, fds)?;
        }
        dump_complete(dump, total)
    }

    /// Sends a set of fds to the daemon, which adds them to what it holds
    /// (an id already held is replaced). The rules must give the setdump
    /// right (`S6_FDHOLDER_SETDUMP`).
    ///
    /// # Errors
    ///
    /// Checked before anything is sent: `ENAMETOOLONG`/`EINVAL` for a bad
    /// id, `ENFILE` for more than 2^32 − 1 entries. The daemon's `EPERM`
    /// (no setdump right), `ENFILE` (not room for them all), answered to
    /// the announcement: nothing is stored, the client stays usable; the
    /// same answered to a chunk (the rights or the room changed meanwhile)
    /// leaves the daemon expecting the rest: drop the client. `EPROTO`,
    /// `ETIMEDOUT`, `EPIPE` as every request (see the [module](self#errors)):
    /// part of the dump may then be stored.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use fdholder::Client;
    /// # fn main() -> std::io::Result<()> {
    /// // Move everything from one holder to another.
    /// let dump = Client::connect("/run/fdholder/old", None)?.getdump(None)?;
    /// let refs: Vec<_> = dump.iter().map(|e| e.as_ref()).collect();
    /// Client::connect("/run/fdholder/new", None)?.setdump(&refs, None)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn setdump(&mut self, dump: &[DumpEntryRef<'_>], deadline: Deadline) -> io::Result<()> {
        for e in dump {
            proto::check_id(e.id)?;
        }
        let total =
            u32::try_from(dump.len()).map_err(|_| io::Error::from(rustix::io::Errno::NFILE))?;
        self.send(proto::setdump(total), vec![], deadline)?;
        let (ans, fds) = self.recv(deadline)?;
        setdump_accepted(proto::answer_error(&ans)?, &fds)?;
        let n = dump.len().div_ceil(MAX_FDS);
        for (i, chunk) in dump.chunks(MAX_FDS).enumerate() {
            self.send(
                setdump_chunk(chunk),
                chunk.iter().map(|e| e.fd).collect(),
                deadline,
            )?;
            let (ans, fds) = self.recv(deadline)?;
            setdump_chunk_answer(&ans, &fds, i + 1 == n)?;
        }
        Ok(())
    }
}

/// A store request's payload, as both clients send it: `id` checked, no
/// `limit` meaning none (the far future), the opcode of `on_hangup`.
pub(crate) fn store_payload(
    id: &[u8],
    limit: Option<Tain>,
    on_hangup: proto::OnHangup,
) -> io::Result<Vec<u8>> {
    proto::check_id(id)?;
    let limit = limit.unwrap_or_else(|| Tain::infinite_from(Tain::now()));
    Ok(proto::store_marked(id, limit, on_hangup))
}

/// Maps a marked store's failure: the connection closed under it (`EPIPE`
/// as the clients report an end of file, `ECONNRESET`) is how a daemon
/// that does not know the request answers it, reported as `EOPNOTSUPP`.
pub(crate) fn marked_store_error(e: io::Error) -> io::Error {
    use rustix::io::Errno;
    match e.raw_os_error() {
        Some(n) if n == Errno::PIPE.raw_os_error() || n == Errno::CONNRESET.raw_os_error() => {
            io::Error::from(Errno::OPNOTSUPP)
        }
        _ => e,
    }
}

// The steps of the two dump exchanges, written once for the blocking and
// the async client.

/// Checks a getdump answer's header (`0`, chunks, total; no fd) and returns
/// (chunks, total). Any split into chunks is accepted, as long as every
/// chunk carries fds and they add up: the reference counts chunks of 255
/// (a limit the kernel does not allow), our daemon chunks of 253.
pub(crate) fn dump_header(body: &[u8], fds: &[OwnedFd]) -> io::Result<(usize, usize)> {
    if body.len() != 8 || !fds.is_empty() {
        return Err(proto::eproto());
    }
    let chunks = proto::be32(&body[..4]).ok_or_else(proto::eproto)? as usize;
    let total = proto::be32(&body[4..]).ok_or_else(proto::eproto)? as usize;
    if chunks > total || (total > 0 && chunks == 0) {
        return Err(proto::eproto());
    }
    Ok((chunks, total))
}

/// Adds one getdump chunk to `dump`, which must stay within `total`.
pub(crate) fn take_dump_chunk(
    dump: &mut Vec<DumpEntry>,
    total: usize,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> io::Result<()> {
    if fds.is_empty() || dump.len() + fds.len() > total {
        return Err(proto::eproto());
    }
    let entries = proto::parse_entries(payload, fds.len()).ok_or_else(proto::eproto)?;
    for ((limit, id), fd) in entries.into_iter().zip(fds) {
        dump.push(DumpEntry {
            id: id.to_bytes().to_vec(),
            fd,
            limit,
        });
    }
    Ok(())
}

/// The dump, once every chunk is in: exactly `total` entries.
pub(crate) fn dump_complete(dump: Vec<DumpEntry>, total: usize) -> io::Result<Vec<DumpEntry>> {
    if dump.len() != total {
        return Err(proto::eproto());
    }
    Ok(dump)
}

/// Checks the daemon's acceptance of a setdump (`0` and a chunk count, no
/// fd). The announced chunk count is not checked: the reference daemon
/// counts chunks of 255 fds, which no kernel lets through in one message.
/// We send chunks of 253; the daemon answers EAGAIN until it has received
/// every fd it was announced, whatever the split.
pub(crate) fn setdump_accepted(body: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    if !fds.is_empty() || proto::be32(body).is_none() {
        return Err(proto::eproto());
    }
    Ok(())
}

/// The payload of one setdump chunk (its fds go with it).
pub(crate) fn setdump_chunk(chunk: &[DumpEntryRef<'_>]) -> Vec<u8> {
    let len: usize = chunk.iter().map(|e| proto::entry_len(e.id.len())).sum();
    let mut payload = Vec::with_capacity(1 + len);
    payload.push(proto::OP_SETDUMP_CHUNK);
    for e in chunk {
        proto::push_entry(&mut payload, e.limit, e.id);
    }
    payload
}

/// Checks the answer to a setdump chunk: EAGAIN after every chunk but the
/// last, 0 after the last; another errno is the daemon's refusal.
pub(crate) fn setdump_chunk_answer(ans: &[u8], fds: &[OwnedFd], last: bool) -> io::Result<()> {
    let again = rustix::io::Errno::AGAIN.raw_os_error();
    match (ans, fds.is_empty()) {
        ([0], true) if last => Ok(()),
        ([e], true) if !last && i32::from(*e) == again => Ok(()),
        ([e], true) if *e != 0 && i32::from(*e) != again => {
            Err(io::Error::from_raw_os_error(i32::from(*e)))
        }
        _ => Err(proto::eproto()),
    }
}

/// The connection's socket, say to poll it alongside other descriptors.
///
/// # Example
///
/// ```
/// use std::os::fd::{AsFd, AsRawFd};
/// use std::os::unix::net::UnixStream;
/// # fn main() -> std::io::Result<()> {
/// let (ours, _theirs) = UnixStream::pair()?;
/// let raw = ours.as_raw_fd();
/// let c = fdholder::Client::from_fd(ours.into());
/// assert_eq!(c.as_fd().as_raw_fd(), raw);
/// # Ok(())
/// # }
/// ```
impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
