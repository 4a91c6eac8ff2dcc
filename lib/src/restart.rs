//! Zero-downtime restarts: take a listening socket (or a memfd of saved
//! state) back from the holder, or create it and hand the holder a copy.
//!
//! A [`Holder`] names the holder's socket, a deadline and an expiry; each of
//! its helpers does one short exchange and returns the descriptor:
//!
//! 1. with [`Holder::inherit`], a descriptor of that name passed by the
//!    launcher (see [`crate::launch`]) is taken first;
//! 2. else it connects to the holder and retrieves the id: when the holder
//!    holds it, that is the very socket the previous instance served on;
//! 3. else (`ENOENT`) it creates the descriptor (binds, or `memfd_create`),
//!    stores a copy under the id, and returns it;
//! 4. it drops the connection before returning: a service never keeps one of
//!    the holder's connection slots for its life.
//!
//! With the cargo feature `tokio`, each helper has an async twin
//! (`tcp_listener_async`, `unix_listener_async`, `udp_socket_async`,
//! `memfd_async`, `take_or_store_async`) that takes the same steps and
//! makes the same decisions, errors and races included (the code is
//! shared), on the async client, without blocking the runtime.
//!
//! # Races
//!
//! Two instances that start at once may both find nothing held and both
//! create. The holder takes the first store; the second gets `EBUSY`: that
//! instance then drops what it created and retrieves the first one's, so
//! both serve on the one socket (its [`Origin`] is then [`Origin::Held`]).
//! When the second cannot even bind because the first is listening on the
//! address (`EADDRINUSE`), it retrieves the first one's once stored,
//! retrying for up to a second (less if the deadline is nearer); past that
//! the address is someone else's and the error is [`Error::Io`].
//!
//! # The Unix socket path rule
//!
//! [`Holder::unix_listener`] never removes or rebinds a path the holder
//! still serves: when the holder holds the id, its socket is returned and
//! the path is not touched at all. Only when the holder does not hold it and
//! the bind fails with `EADDRINUSE` does it consider removing what is at the
//! path, and only if that is a socket (not a symlink, not a regular file)
//! on which a connect attempt is refused (`ECONNREFUSED`): no process
//! listens on it, it is a leftover of a process that is gone. A socket that
//! accepts, or whose backlog is full, or that cannot be tried (`EACCES`...)
//! is left alone, and the error is [`Error::Io`] (`EADDRINUSE`). Instances
//! using this module serialise that check, the removal, the bind and the
//! store with an exclusive `flock` on the path's directory (taken within the
//! deadline), so that one cannot remove the socket another has just bound.
//!
//! # Example
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use fdholder::restart::{Holder, Origin};
//!
//! # fn main() -> Result<(), fdholder::restart::Error> {
//! let holder = Holder::new("/run/fdholder/s")
//!     .deadline(Instant::now() + Duration::from_secs(5));
//! let (listener, origin) = holder.tcp_listener(b"web/listen", "127.0.0.1:8080")?;
//! if origin == Origin::Created {
//!     eprintln!("first start: bound 127.0.0.1:8080");
//! }
//! // ... serve on `listener`; exit at any time: the next start gets it back.
//! # drop(listener);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{TcpListener, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::client::{Client, Deadline};
use crate::launch::{self, Launcher};
use crate::proto;
use crate::tain::Tain;

/// Why a restart helper failed.
///
/// Convert it into an [`io::Error`] with `?` in a function returning
/// `io::Result` (refusals become `EPERM`, `ENOENT`, `ETIMEDOUT`).
///
/// # Example
///
/// ```no_run
/// use fdholder::restart::{Error, Holder};
///
/// match Holder::new("/run/fdholder/s").memfd(b"state", "state") {
///     Ok((file, _origin)) => drop(file),
///     Err(Error::Unreachable(e)) => eprintln!("no holder ({e}): state will not survive"),
///     Err(Error::Refused) => eprintln!("the holder's rules refuse this id"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The holder's rules refuse this request for this id (it answered
    /// `EPERM`).
    Refused,
    /// The holder holds nothing under the id (it answered `ENOENT`) where
    /// something had to be (after losing a store race, the winner's
    /// descriptor was gone before it could be retrieved).
    NotHeld,
    /// The holder cannot be reached: connecting to its socket failed (no
    /// such path, `ECONNREFUSED`: nobody listens, `EACCES`...).
    Unreachable(io::Error),
    /// The deadline passed.
    TimedOut,
    /// The holder holds a descriptor under the id, but not of the kind
    /// asked for (say, a UDP socket where a TCP listener was expected).
    /// Delete the id to start afresh.
    Mismatch {
        /// What was expected: `"TCP listener"`, `"Unix listener"`, `"UDP
        /// socket"`, `"regular file"`.
        expected: &'static str,
    },
    /// Any other I/O error: binding, `memfd_create`, the holder's connection
    /// breaking, another errno from the holder (`ENFILE`: it is full).
    Io(io::Error),
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

impl Error {
    /// A failure to connect to the holder.
    fn connecting(e: io::Error) -> Error {
        match errno(&e) {
            Some(Errno::TIMEDOUT) => Error::TimedOut,
            _ => Error::Unreachable(e),
        }
    }

    /// A failure of a request to the holder.
    fn request(e: io::Error) -> Error {
        match errno(&e) {
            Some(Errno::PERM) => Error::Refused,
            Some(Errno::NOENT) => Error::NotHeld,
            Some(Errno::TIMEDOUT) => Error::TimedOut,
            _ => Error::Io(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused => f.write_str("the fd holder refused the request (EPERM)"),
            Error::NotHeld => f.write_str("the fd holder holds nothing under this id"),
            Error::Unreachable(e) => write!(f, "cannot reach the fd holder: {e}"),
            Error::TimedOut => f.write_str("the deadline passed"),
            Error::Mismatch { expected } => {
                write!(f, "the fd holder holds something other than a {expected}")
            }
            Error::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unreachable(e) | Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// For `?` in a function returning `io::Result`: [`Error::Refused`] is
/// `EPERM`, [`Error::NotHeld`] `ENOENT`, [`Error::TimedOut`] `ETIMEDOUT`,
/// [`Error::Mismatch`] an [`io::ErrorKind::InvalidData`] error with its
/// message; [`Error::Unreachable`] and [`Error::Io`] are their error.
///
/// # Example
///
/// ```
/// use std::io::{self, ErrorKind};
/// use fdholder::restart::Error;
/// assert_eq!(io::Error::from(Error::Refused).kind(), ErrorKind::PermissionDenied);
/// assert_eq!(io::Error::from(Error::TimedOut).kind(), ErrorKind::TimedOut);
/// let e = io::Error::from(Error::Mismatch { expected: "TCP listener" });
/// assert_eq!(e.kind(), ErrorKind::InvalidData);
/// ```
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Refused => Errno::PERM.into(),
            Error::NotHeld => Errno::NOENT.into(),
            Error::TimedOut => Errno::TIMEDOUT.into(),
            Error::Mismatch { .. } => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            Error::Unreachable(e) | Error::Io(e) => e,
        }
    }
}

/// Where a helper's descriptor came from.
///
/// # Example
///
/// ```no_run
/// use std::io::{Read, Seek};
/// use fdholder::restart::{Holder, Origin};
///
/// # fn main() -> std::io::Result<()> {
/// let (mut state, origin) = Holder::new("/run/fdholder/s").memfd(b"app/state", "state")?;
/// let mut saved = Vec::new();
/// if origin != Origin::Created {
///     state.rewind()?; // the offset is shared with the previous instance
///     state.read_to_end(&mut saved)?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The holder held it: an earlier instance created it.
    Held,
    /// Created now, and a copy stored in the holder.
    Created,
    /// Passed by the launcher (only with [`Holder::inherit`]).
    Inherited(Launcher),
}

/// How to reach the holder: its socket, a deadline, an expiry. Each helper
/// connects, does its exchange and disconnects before returning.
///
/// # Example
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use fdholder::restart::Holder;
///
/// # fn main() -> Result<(), fdholder::restart::Error> {
/// let holder = Holder::new("/run/fdholder/s")
///     .deadline(Instant::now() + Duration::from_secs(5))
///     .expiry(Duration::from_secs(3600))
///     .inherit();
/// let (listener, _) = holder.unix_listener(b"app/listen", "/run/app.sock")?;
/// # drop(listener);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Holder {
    path: PathBuf,
    deadline: Deadline,
    expiry: Option<Duration>,
    inherit: bool,
}

/// How long an instance that cannot bind (`EADDRINUSE`) waits for the
/// instance that did to store its socket.
const IN_USE_WAIT: Duration = Duration::from_secs(1);
/// Pause between two tries while waiting.
const PAUSE: Duration = Duration::from_millis(5);

impl Holder {
    /// The holder listening on `path`; no deadline, no expiry, the
    /// environment not looked at.
    ///
    /// # Example
    ///
    /// ```
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// # drop(holder);
    /// ```
    pub fn new(path: impl Into<PathBuf>) -> Holder {
        Holder {
            path: path.into(),
            deadline: None,
            expiry: None,
            inherit: false,
        }
    }

    /// Gives up with [`Error::TimedOut`] once `deadline` passes (for the
    /// whole of each helper's exchange with the holder). Without one, a
    /// helper waits for the holder as long as it takes.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s")
    ///     .deadline(Instant::now() + Duration::from_secs(5));
    /// # drop(holder);
    /// ```
    pub fn deadline(mut self, deadline: Instant) -> Holder {
        self.deadline = Some(deadline);
        self
    }

    /// Stores what is created with this expiry, counted from the store: the
    /// holder closes it then. Without one, it is held until deleted.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s")
    ///     .expiry(Duration::from_secs(3600));
    /// # drop(holder);
    /// ```
    pub fn expiry(mut self, expiry: Duration) -> Holder {
        self.expiry = Some(expiry);
        self
    }

    /// Takes a descriptor passed by the launcher under the helper's id
    /// first, before asking the holder (see [`crate::launch`]: systemd's
    /// `LISTEN_FDS`, `s6-fdholder-getdump`'s `S6_FD_i`). It is a copy
    /// (`pidfd_getfd`): the inherited descriptor itself stays open.
    ///
    /// # Example
    ///
    /// ```
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s").inherit();
    /// # drop(holder);
    /// ```
    pub fn inherit(mut self) -> Holder {
        self.inherit = true;
        self
    }

    /// A TCP listener on `addr`, from the holder under `id`, or bound now
    /// (with `SO_REUSEADDR`, as [`TcpListener::bind`] does) and stored.
    ///
    /// A held listener is returned whatever address it listens on: to move
    /// to another address, delete the id first.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when the holder cannot be reached,
    /// [`Error::Refused`] when its rules refuse retrieving or storing `id`,
    /// [`Error::TimedOut`] past the deadline, [`Error::Mismatch`] when the
    /// holder holds something else under `id`, [`Error::NotHeld`] when a
    /// store race was lost and the winner's listener was deleted before it
    /// could be retrieved, [`Error::Io`] when binding fails (`EADDRINUSE`
    /// after [the wait](self#races)), for an invalid id (`EINVAL`,
    /// `ENAMETOOLONG`), for another errno of the holder (`ENFILE`: it is
    /// full) or a broken exchange (`EPIPE`, `EPROTO`). With
    /// [`Holder::inherit`]: [`Error::Io`] with `EINVAL` for malformed
    /// launcher variables or with [`Passed::duplicate`](crate::launch::Passed::duplicate)'s
    /// error, [`Error::Mismatch`] when the inherited descriptor is not of
    /// the kind asked for.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (listener, _origin) = holder.tcp_listener(b"web/listen", "[::]:8080")?;
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub fn tcp_listener(
        &self,
        id: &[u8],
        addr: impl ToSocketAddrs,
    ) -> Result<(TcpListener, Origin), Error> {
        let (fd, origin) =
            self.take_or(id, check_tcp_listener, "TCP listener", None, move || {
                TcpListener::bind(&addr).map(OwnedFd::from)
            })?;
        Ok((TcpListener::from(fd), origin))
    }

    /// A UDP socket bound to `addr`, from the holder under `id`, or bound
    /// now and stored.
    ///
    /// # Errors
    ///
    /// As [`Holder::tcp_listener`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (sock, _origin) = holder.udp_socket(b"dns/udp", "127.0.0.1:5353")?;
    /// # drop(sock);
    /// # Ok(())
    /// # }
    /// ```
    pub fn udp_socket(
        &self,
        id: &[u8],
        addr: impl ToSocketAddrs,
    ) -> Result<(UdpSocket, Origin), Error> {
        let (fd, origin) = self.take_or(id, check_udp, "UDP socket", None, move || {
            UdpSocket::bind(&addr).map(OwnedFd::from)
        })?;
        Ok((UdpSocket::from(fd), origin))
    }

    /// A Unix stream listener on `path`, from the holder under `id`, or
    /// bound now and stored, following [the path rule](self#the-unix-socket-path-rule):
    /// a held listener's path is never touched; a socket file at `path` is
    /// removed before binding only when a connect to it is refused.
    ///
    /// # Errors
    ///
    /// As [`Holder::tcp_listener`]; [`Error::Io`] with `EADDRINUSE` when
    /// something that is not a stale socket is at `path`, or with the
    /// error of opening or locking `path`'s directory.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (listener, _origin) = holder.unix_listener(b"app/listen", "/run/app.sock")?;
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub fn unix_listener(
        &self,
        id: &[u8],
        path: impl AsRef<Path>,
    ) -> Result<(UnixListener, Origin), Error> {
        let path = path.as_ref();
        let (fd, origin) = self.take_or(
            id,
            check_unix_listener,
            "Unix listener",
            Some(lock_dir_of(path)),
            || bind_unix(path).map(OwnedFd::from),
        )?;
        Ok((UnixListener::from(fd), origin))
    }

    /// A memfd (`memfd_create(name)`, close-on-exec) for state to keep
    /// across restarts, from the holder under `id`, or created now (empty)
    /// and stored. A held one is the very same open file: its offset is
    /// where the previous instance left it (seek before reading), and what
    /// it wrote is there.
    ///
    /// # Errors
    ///
    /// As [`Holder::tcp_listener`] ([`Error::Mismatch`] when what is held
    /// is not a regular file); [`Error::Io`] when `memfd_create` fails.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::io::Write;
    /// # fn main() -> std::io::Result<()> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (mut state, _origin) = holder.memfd(b"app/state", "app-state")?;
    /// state.write_all(b"counter=1\n")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn memfd(&self, id: &[u8], name: &str) -> Result<(File, Origin), Error> {
        let (fd, origin) =
            self.take_or(id, check_file, "regular file", None, || create_memfd(name))?;
        Ok((File::from(fd), origin))
    }

    /// The general helper: the descriptor held under `id`, or the one
    /// `create` makes, stored now. No check of what is held is made.
    ///
    /// # Errors
    ///
    /// As [`Holder::tcp_listener`], [`Error::Io`] with `create`'s error.
    /// `create`'s `EADDRINUSE` starts [the wait](self#races).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::os::fd::OwnedFd;
    /// # fn main() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (fd, _origin) = holder.take_or_store(b"app/log", || {
    ///     Ok(OwnedFd::from(std::fs::File::create("/tmp/app.log")?))
    /// })?;
    /// # drop(fd);
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_or_store(
        &self,
        id: &[u8],
        create: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> Result<(OwnedFd, Origin), Error> {
        self.take_or(id, |_| Ok(true), "descriptor", None, once(create))
    }

    fn connect(&self) -> Result<Blocking, Error> {
        let client = Client::connect(&self.path, self.deadline).map_err(Error::connecting)?;
        Ok(Blocking {
            client,
            deadline: self.deadline,
        })
    }

    fn inherited(
        &self,
        id: &[u8],
        checker: Checker,
        what: &'static str,
    ) -> Result<Option<(OwnedFd, Origin)>, Error> {
        proto::check_id(id).map_err(Error::Io)?;
        if !self.inherit {
            return Ok(None);
        }
        let passed = launch::passed().map_err(Error::Io)?;
        match passed.iter().find(|p| p.name == id) {
            None => Ok(None),
            Some(p) => {
                let fd = p.duplicate().map_err(Error::Io)?;
                verify(&fd, checker, what)?;
                Ok(Some((fd, Origin::Inherited(p.launcher))))
            }
        }
    }

    /// The blocking helpers: the launcher's, else the shared exchange on a
    /// blocking connection.
    fn take_or<F>(
        &self,
        id: &[u8],
        checker: Checker,
        what: &'static str,
        lock: Option<&Path>,
        create: F,
    ) -> Result<(OwnedFd, Origin), Error>
    where
        F: FnMut() -> io::Result<OwnedFd>,
    {
        if let Some(got) = self.inherited(id, checker, what)? {
            return Ok(got);
        }
        let mut holder = self.connect()?;
        at_once(self.exchange(&mut holder, id, checker, what, lock, create))
    }

    /// Every decision after the launcher's: retrieve; else (with `lock`, a
    /// Unix path's directory: lock it and retrieve again) create, store,
    /// and on a lost race or an address in use take the holder's. Written
    /// once for both connections ([`Exchange`]).
    async fn exchange<C, F>(
        &self,
        holder: &mut C,
        id: &[u8],
        checker: Checker,
        what: &'static str,
        lock: Option<&Path>,
        mut create: F,
    ) -> Result<(OwnedFd, Origin), Error>
    where
        C: Exchange,
        F: FnMut() -> io::Result<OwnedFd>,
    {
        if let Some(fd) = retrieve(holder, id, checker, what).await? {
            return Ok((fd, Origin::Held));
        }
        // Not held: lock the directory, then look again (another instance
        // may have stored it meanwhile) before touching the path.
        let _lock = match lock {
            None => None,
            Some(dir) => {
                let l = self.lock_dir(holder, dir).await?;
                if let Some(fd) = retrieve(holder, id, checker, what).await? {
                    return Ok((fd, Origin::Held));
                }
                Some(l)
            }
        };
        let fd = match create() {
            Ok(fd) => fd,
            Err(e) if errno(&e) == Some(Errno::ADDRINUSE) => {
                return self.wait_held(holder, id, checker, what, e).await;
            }
            Err(e) => return Err(Error::Io(e)),
        };
        let limit = self
            .expiry
            .map(|d| Tain::from_system_time(SystemTime::now() + d));
        match holder.store(fd.as_fd(), id, limit).await {
            Ok(()) => Ok((fd, Origin::Created)),
            Err(e) if errno(&e) == Some(Errno::BUSY) => {
                // Another instance stored first: serve on its descriptor.
                drop(fd);
                match retrieve(holder, id, checker, what).await? {
                    Some(fd) => Ok((fd, Origin::Held)),
                    None => Err(Error::NotHeld),
                }
            }
            Err(e) => Err(Error::request(e)),
        }
    }

    /// The address is in use: wait (bounded) for its owner to store it.
    async fn wait_held<C: Exchange>(
        &self,
        holder: &mut C,
        id: &[u8],
        checker: Checker,
        what: &'static str,
        in_use: io::Error,
    ) -> Result<(OwnedFd, Origin), Error> {
        let mut end = Instant::now() + IN_USE_WAIT;
        if let Some(d) = self.deadline {
            end = end.min(d);
        }
        loop {
            if let Some(fd) = retrieve(holder, id, checker, what).await? {
                return Ok((fd, Origin::Held));
            }
            if Instant::now() >= end {
                return Err(Error::Io(in_use));
            }
            holder.pause().await;
        }
    }

    /// An exclusive `flock` on `dir`, taken within the deadline (blocking
    /// only on a blocking connection without a deadline).
    async fn lock_dir<C: Exchange>(&self, holder: &mut C, dir: &Path) -> Result<File, Error> {
        use rustix::fs::FlockOperation;
        let f = File::open(dir).map_err(Error::Io)?;
        loop {
            let op = match self.deadline {
                None if C::BLOCKING => FlockOperation::LockExclusive,
                _ => FlockOperation::NonBlockingLockExclusive,
            };
            match rustix::fs::flock(&f, op) {
                Ok(()) => return Ok(f),
                Err(Errno::INTR) => {}
                Err(Errno::WOULDBLOCK) => {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Error::TimedOut);
                    }
                    holder.pause().await;
                }
                Err(e) => return Err(Error::Io(e.into())),
            }
        }
    }
}

/// The async helpers (cargo feature `tokio`): the same steps, decisions,
/// errors and races as the blocking ones, on an
/// [`AsyncClient`](crate::asynchronous::AsyncClient). They never block the
/// runtime's thread on the holder: the waits (for an address's owner to
/// store it, for the Unix path's directory lock) are `tokio::time::sleep`s,
/// and the deadline is a `tokio::time::timeout_at` around the exchange, so
/// they need a runtime with its I/O and time drivers enabled (`enable_all`,
/// as `#[tokio::main]` does). What is left on the thread is what takes no
/// waiting: `bind`, `memfd_create`, opening the directory, `pidfd_getfd`
/// for [`Holder::inherit`]; an address given as a host name (not an IP
/// literal) is resolved on it, blocking: resolve it first
/// (`tokio::net::lookup_host`) and pass a [`std::net::SocketAddr`].
///
/// The futures are `Send` when the arguments are: spawn them on the
/// multi-threaded runtime.
///
/// As the blocking helpers, they wait for room when the holder's listen
/// backlog is full, until the deadline (see
/// [`AsyncClient::connect`](crate::asynchronous::AsyncClient::connect)).
#[cfg(feature = "tokio")]
impl Holder {
    /// [`Holder::tcp_listener`], async.
    ///
    /// # Errors
    ///
    /// As [`Holder::tcp_listener`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (listener, _origin) = holder.tcp_listener_async(b"web/listen", "[::]:8080").await?;
    /// listener.set_nonblocking(true).map_err(fdholder::restart::Error::Io)?;
    /// let listener = tokio::net::TcpListener::from_std(listener).map_err(fdholder::restart::Error::Io)?;
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn tcp_listener_async(
        &self,
        id: &[u8],
        addr: impl ToSocketAddrs,
    ) -> Result<(TcpListener, Origin), Error> {
        let create = move || TcpListener::bind(&addr).map(OwnedFd::from);
        let (fd, origin) = self
            .take_or_async(id, check_tcp_listener, "TCP listener", None, create)
            .await?;
        Ok((TcpListener::from(fd), origin))
    }

    /// [`Holder::udp_socket`], async.
    ///
    /// # Errors
    ///
    /// As [`Holder::tcp_listener`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (sock, _origin) = holder.udp_socket_async(b"dns/udp", "127.0.0.1:5353").await?;
    /// # drop(sock);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn udp_socket_async(
        &self,
        id: &[u8],
        addr: impl ToSocketAddrs,
    ) -> Result<(UdpSocket, Origin), Error> {
        let create = move || UdpSocket::bind(&addr).map(OwnedFd::from);
        let (fd, origin) = self
            .take_or_async(id, check_udp, "UDP socket", None, create)
            .await?;
        Ok((UdpSocket::from(fd), origin))
    }

    /// [`Holder::unix_listener`], async, with the same
    /// [path rule](self#the-unix-socket-path-rule) and the same directory
    /// lock (so blocking and async instances serialise with each other).
    ///
    /// # Errors
    ///
    /// As [`Holder::unix_listener`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (listener, _origin) = holder.unix_listener_async(b"app/listen", "/run/app.sock").await?;
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unix_listener_async(
        &self,
        id: &[u8],
        path: impl AsRef<Path>,
    ) -> Result<(UnixListener, Origin), Error> {
        let path = path.as_ref();
        let (fd, origin) = self
            .take_or_async(
                id,
                check_unix_listener,
                "Unix listener",
                Some(lock_dir_of(path)),
                || bind_unix(path).map(OwnedFd::from),
            )
            .await?;
        Ok((UnixListener::from(fd), origin))
    }

    /// [`Holder::memfd`], async.
    ///
    /// # Errors
    ///
    /// As [`Holder::memfd`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (state, _origin) = holder.memfd_async(b"app/state", "app-state").await?;
    /// # drop(state);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn memfd_async(&self, id: &[u8], name: &str) -> Result<(File, Origin), Error> {
        let (fd, origin) = self
            .take_or_async(id, check_file, "regular file", None, || create_memfd(name))
            .await?;
        Ok((File::from(fd), origin))
    }

    /// [`Holder::take_or_store`], async (`create` runs on the task: it
    /// should not block).
    ///
    /// # Errors
    ///
    /// As [`Holder::take_or_store`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::os::fd::OwnedFd;
    /// # async fn f() -> Result<(), fdholder::restart::Error> {
    /// let holder = fdholder::restart::Holder::new("/run/fdholder/s");
    /// let (fd, _origin) = holder
    ///     .take_or_store_async(b"app/log", || Ok(OwnedFd::from(std::fs::File::create("/tmp/app.log")?)))
    ///     .await?;
    /// # drop(fd);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn take_or_store_async(
        &self,
        id: &[u8],
        create: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> Result<(OwnedFd, Origin), Error> {
        self.take_or_async(id, |_| Ok(true), "descriptor", None, once(create))
            .await
    }

    /// The async helpers: the launcher's, else the shared exchange on an
    /// async connection, within the deadline.
    async fn take_or_async<F>(
        &self,
        id: &[u8],
        checker: Checker,
        what: &'static str,
        lock: Option<&Path>,
        create: F,
    ) -> Result<(OwnedFd, Origin), Error>
    where
        F: FnMut() -> io::Result<OwnedFd>,
    {
        if let Some(got) = self.inherited(id, checker, what)? {
            return Ok(got);
        }
        let run = async {
            let client = crate::asynchronous::AsyncClient::connect(&self.path)
                .await
                .map_err(Error::connecting)?;
            let mut holder = Async(client);
            self.exchange(&mut holder, id, checker, what, lock, create)
                .await
        };
        match self.deadline {
            None => run.await,
            // As the blocking client: a deadline already past fails at
            // once (tokio's timeout would poll the exchange first).
            Some(d) if Instant::now() >= d => Err(Error::TimedOut),
            Some(d) => tokio::time::timeout_at(d.into(), run)
                .await
                .unwrap_or(Err(Error::TimedOut)),
        }
    }
}

/// The async client; the deadline is the caller's `timeout_at`.
#[cfg(feature = "tokio")]
struct Async(crate::asynchronous::AsyncClient);

#[cfg(feature = "tokio")]
impl Exchange for Async {
    const BLOCKING: bool = false;
    async fn retrieve(&mut self, id: &[u8]) -> io::Result<OwnedFd> {
        self.0.retrieve(id).await
    }
    async fn store(
        &mut self,
        fd: BorrowedFd<'_>,
        id: &[u8],
        limit: Option<Tain>,
    ) -> io::Result<()> {
        self.0.store(fd, id, limit).await
    }
    async fn pause(&mut self) {
        tokio::time::sleep(PAUSE).await;
    }
}

/// `create` as the `FnMut` the exchange takes (it calls it once at most).
fn once(create: impl FnOnce() -> io::Result<OwnedFd>) -> impl FnMut() -> io::Result<OwnedFd> {
    let mut create = Some(create);
    move || match create.take() {
        Some(f) => f(),
        None => Err(Errno::INVAL.into()),
    }
}

fn create_memfd(name: &str) -> io::Result<OwnedFd> {
    rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).map_err(io::Error::from)
}

/// The directory whose lock serialises binds of the Unix path `path`.
fn lock_dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `Some` when held, `None` when not (`ENOENT`).
async fn retrieve<C: Exchange>(
    holder: &mut C,
    id: &[u8],
    checker: Checker,
    what: &'static str,
) -> Result<Option<OwnedFd>, Error> {
    match holder.retrieve(id).await {
        Ok(fd) => {
            verify(&fd, checker, what)?;
            Ok(Some(fd))
        }
        Err(e) if errno(&e) == Some(Errno::NOENT) => Ok(None),
        Err(e) => Err(Error::request(e)),
    }
}

/// A connection to the holder as the helpers' decisions use it: blocking
/// ([`Blocking`], whose futures are ready at their first poll) or, with
/// the `tokio` feature, async. The requests themselves are the clients'.
trait Exchange {
    /// Whether the thread may block (in `flock`) rather than pause.
    const BLOCKING: bool;
    async fn retrieve(&mut self, id: &[u8]) -> io::Result<OwnedFd>;
    async fn store(&mut self, fd: BorrowedFd<'_>, id: &[u8], limit: Option<Tain>)
    -> io::Result<()>;
    /// Waits a moment before trying again.
    async fn pause(&mut self);
}

/// The blocking client, its deadline on every request.
struct Blocking {
    client: Client,
    deadline: Deadline,
}

impl Exchange for Blocking {
    const BLOCKING: bool = true;
    async fn retrieve(&mut self, id: &[u8]) -> io::Result<OwnedFd> {
        self.client.retrieve(id, self.deadline)
    }
    async fn store(
        &mut self,
        fd: BorrowedFd<'_>,
        id: &[u8],
        limit: Option<Tain>,
    ) -> io::Result<()> {
        self.client.store(fd, id, limit, self.deadline)
    }
    async fn pause(&mut self) {
        std::thread::sleep(PAUSE);
    }
}

/// Runs a future that never waits (one on [`Blocking`]) to completion.
fn at_once<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("a blocking exchange never waits"),
    }
}

/// Whether a descriptor is of the kind asked for.
type Checker = fn(&OwnedFd) -> io::Result<bool>;

fn verify(fd: &OwnedFd, checker: Checker, expected: &'static str) -> Result<(), Error> {
    match checker(fd) {
        Ok(true) => Ok(()),
        // ENOTSOCK and the like: not a socket at all.
        Ok(false) | Err(_) => Err(Error::Mismatch { expected }),
    }
}

fn is_socket(
    fd: &OwnedFd,
    families: &[AddressFamily],
    ty: SocketType,
    listening: bool,
) -> io::Result<bool> {
    use rustix::net::sockopt;
    Ok(families.contains(&sockopt::socket_domain(fd)?)
        && sockopt::socket_type(fd)? == ty
        && (!listening || sockopt::socket_acceptconn(fd)?))
}

fn check_tcp_listener(fd: &OwnedFd) -> io::Result<bool> {
    is_socket(
        fd,
        &[AddressFamily::INET, AddressFamily::INET6],
        SocketType::STREAM,
        true,
    )
}

fn check_udp(fd: &OwnedFd) -> io::Result<bool> {
    is_socket(
        fd,
        &[AddressFamily::INET, AddressFamily::INET6],
        SocketType::DGRAM,
        false,
    )
}

fn check_unix_listener(fd: &OwnedFd) -> io::Result<bool> {
    is_socket(fd, &[AddressFamily::UNIX], SocketType::STREAM, true)
}

fn check_file(fd: &OwnedFd) -> io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile)
}

/// Binds `path`; when that is in use, removes it first only if it is a
/// stale socket (see the module's path rule).
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if !is_stale(path)? {
                return Err(e);
            }
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            UnixListener::bind(path)
        }
        r => r,
    }
}

/// Whether `path` is a socket nobody listens on: a connect is refused.
fn is_stale(path: &Path) -> io::Result<bool> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        // Gone meanwhile: nothing to remove, the bind may be retried.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if !md.file_type().is_socket() {
        return Ok(false);
    }
    let addr = SocketAddrUnix::new(path)?;
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    Ok(rustix::net::connect(&sock, &addr) == Err(Errno::CONNREFUSED))
}
