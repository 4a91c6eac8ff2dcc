//! An async client for tokio (cargo feature `tokio`): every request of the
//! blocking [`Client`](crate::Client), on tokio's reactor, with
//! the same framing ([`crate::wire`]) and requests ([`crate::proto`]).
//!
//! The socket is a [`tokio::net::UnixStream`] used for its readiness only
//! (`readable`, `writable`, `try_io`): the bytes and descriptors go through
//! [`crate::wire`]'s `sendmsg`/`recvmsg`. (Not `tokio::io::unix::AsyncFd`:
//! since tokio 1.54 its safe constructors are deprecated as unsound and
//! registering is `unsafe`, which this crate forbids.)
//!
//! The futures are `Send`: the client works on the multi-threaded runtime.
//! The calls take no deadline: wrap them in `tokio::time::timeout`.
//!
//! # Cancellation
//!
//! [`AsyncClient::connect`] is cancellation-safe (a dropped future leaves
//! nothing behind). **No request is**: a request future dropped before it
//! completes (a `timeout` that fires, a `select!` branch not taken) may
//! leave a request half written, or an answer (and its descriptors) unread,
//! and the connection's protocol state is unknown. The client then refuses
//! further requests with an error (`io::ErrorKind::Other`, "an earlier
//! request did not complete"): drop it and connect again. The same holds
//! after an I/O error in the middle of an exchange. A request the daemon
//! refuses (`EPERM`, `ENOENT`, `EBUSY`...) leaves the client usable.
//!
//! # Example
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use fdholder::asynchronous::AsyncClient;
//!
//! # async fn f() -> std::io::Result<()> {
//! let mut c = AsyncClient::connect("/run/fdholder/s").await?;
//! let file = std::fs::File::open("/etc/hostname")?;
//! c.store(file.as_fd(), b"hostname", None).await?;
//! // With a deadline (tokio's "time" feature):
//! // tokio::time::timeout(Duration::from_secs(5), c.list()).await
//! let ids = c.list().await?;
//! # drop(ids);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::client::{self, DumpEntry, DumpEntryRef};
use crate::describe;
use crate::proto;
use crate::tain::Tain;
use crate::wire::{self, MAX_FDS, Receiver, Sender};

/// The longest pause between two tries of [`AsyncClient::connect`] while
/// the daemon's listen backlog is full.
const CONNECT_PAUSE_MAX: Duration = Duration::from_millis(64);

/// A connection to an fd-holding daemon, for tokio.
///
/// Each request takes `&mut self`: one exchange at a time per connection
/// (connect more for concurrent requests). For restarts,
/// [`crate::restart::Holder`]'s `*_async` helpers connect, exchange and
/// disconnect in one call.
///
/// # Example
///
/// ```no_run
/// use fdholder::asynchronous::AsyncClient;
///
/// # async fn f() -> std::io::Result<()> {
/// let mut c = AsyncClient::connect("/run/fdholder/s").await?;
/// let listener = std::net::TcpListener::from(c.retrieve(b"web/listen").await?);
/// drop(c); // do not keep one of the daemon's connection slots
/// # drop(listener);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncClient {
    sock: UnixStream,
    rx: Receiver,
    /// A request started and did not finish: the protocol state is unknown.
    broken: bool,
}

fn broken() -> io::Error {
    io::Error::other("fdholder: an earlier request did not complete: drop this client")
}

impl AsyncClient {
    /// Connects to the daemon listening on `path`.
    ///
    /// # Errors
    ///
    /// The connect's: `ENOENT` (no such path), `ECONNREFUSED` (nobody
    /// listens), `EACCES`...; [`io::ErrorKind::InvalidInput`] for a path too
    /// long for a `sockaddr_un`; an error registering with the runtime (no
    /// tokio runtime with I/O and time enabled).
    ///
    /// When the daemon's listen backlog is full (a burst of clients), a
    /// non-blocking connect fails with `EAGAIN`: this waits for room, as
    /// [`Client::connect`](crate::Client::connect) does, trying again after
    /// 1 ms, then 2, 4 ... up to 64 ms between tries, for as long as the
    /// future is polled. Bound it with `tokio::time::timeout`; dropping
    /// the future leaves nothing behind.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// let c = fdholder::asynchronous::AsyncClient::connect("/run/fdholder/s").await?;
    /// # drop(c);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<AsyncClient> {
        let path = path.as_ref();
        let mut pause = Duration::from_millis(1);
        loop {
            match UnixStream::connect(path).await {
                Ok(sock) => return Ok(AsyncClient::from_stream(sock)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(CONNECT_PAUSE_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uses `sock`, a stream socket already connected to a daemon (made
    /// non-blocking here).
    ///
    /// # Errors
    ///
    /// From `fcntl` or registering with the runtime.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// let s = std::os::unix::net::UnixStream::connect("/run/fdholder/s")?;
    /// let c = fdholder::asynchronous::AsyncClient::from_fd(s.into())?;
    /// # drop(c);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_fd(sock: OwnedFd) -> io::Result<AsyncClient> {
        let fl = rustix::fs::fcntl_getfl(&sock)?;
        if !fl.contains(rustix::fs::OFlags::NONBLOCK) {
            rustix::fs::fcntl_setfl(&sock, fl | rustix::fs::OFlags::NONBLOCK)?;
        }
        let std = std::os::unix::net::UnixStream::from(sock);
        Ok(AsyncClient::from_stream(UnixStream::from_std(std)?))
    }

    fn from_stream(sock: UnixStream) -> AsyncClient {
        AsyncClient {
            sock,
            rx: Receiver::new(wire::MAX_LEN),
            broken: false,
        }
    }

    /// Gives the connection back (deregistered from the runtime, still
    /// non-blocking).
    ///
    /// # Errors
    ///
    /// From deregistering.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// let c = fdholder::asynchronous::AsyncClient::connect("/run/fdholder/s").await?;
    /// let blocking = fdholder::Client::from_fd(c.into_fd()?);
    /// # drop(blocking);
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_fd(self) -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.sock.into_std()?))
    }

    fn begin(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(broken());
        }
        self.broken = true;
        Ok(())
    }

    /// The body of the first answer of a chunked exchange (getdump,
    /// describe): a refusal is the whole answer, and leaves the client
    /// usable; anything else leaves the exchange to finish.
    fn chunked_answer_body<'a>(&mut self, ans: &'a [u8]) -> io::Result<&'a [u8]> {
        proto::answer_error(ans).inspect_err(|_| self.broken = false)
    }

    async fn send(&mut self, payload: Vec<u8>, fds: Vec<BorrowedFd<'_>>) -> io::Result<()> {
        let mut tx = Sender::new();
        tx.push(payload, fds);
        // Most requests go out in one write, with no readiness wait.
        if tx.flush(self.sock.as_fd())? {
            return Ok(());
        }
        loop {
            self.sock.writable().await?;
            // try_io clears the readiness when the socket would block.
            let sock = &self.sock;
            match sock.try_io(Interest::WRITABLE, || match tx.flush(sock.as_fd()) {
                Ok(true) => Ok(()),
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            }) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn recv(&mut self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        loop {
            if let Some((payload, fds)) = self.rx.take_message()? {
                return Ok((payload.to_vec(), fds));
            }
            self.sock.readable().await?;
            let (sock, rx) = (&self.sock, &mut self.rx);
            // try_io clears the readiness when the socket would block.
            match sock.try_io(Interest::READABLE, || rx.fill(sock.as_fd())) {
                Ok(0) => return Err(Errno::PIPE.into()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives the last answer of an exchange: a one-byte status, no fds.
    async fn recv_status(&mut self) -> io::Result<()> {
        let (ans, fds) = self.recv().await?;
        self.broken = false;
        let rest = proto::answer_error(&ans)?;
        if !rest.is_empty() || !fds.is_empty() {
            return Err(proto::eproto());
        }
        Ok(())
    }

    /// Stores a copy of `fd` under `id`, until `limit` (`None`: no
    /// expiry). Not cancellation-safe (see the [module](self)).
    ///
    /// # Errors
    ///
    /// The daemon's errno: `EPERM` (the rules), `EBUSY` (`id` is held),
    /// `ENFILE` (it is full); `EINVAL`/`ENAMETOOLONG` for a bad id; I/O
    /// errors (`EPIPE`: the daemon went), `EPROTO` for a malformed answer;
    /// [`io::ErrorKind::Other`] when an earlier request did not complete
    /// (see [Cancellation](self#cancellation)).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// let l = std::net::TcpListener::bind("127.0.0.1:8080")?;
    /// c.store(l.as_fd(), b"web", None).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn store(
        &mut self,
        fd: BorrowedFd<'_>,
        id: &[u8],
        limit: Option<Tain>,
    ) -> io::Result<()> {
        let payload = client::store_payload(id, limit, proto::OnHangup::Keep)?;
        self.begin()?;
        self.send(payload, vec![fd]).await?;
        self.recv_status().await
    }

    /// Stores like [`AsyncClient::store`], marked so that the daemon
    /// closes and forgets it when it reports `POLLHUP` or `POLLERR` (a
    /// connected socket whose peer left, a pipe whose other end closed).
    /// The same semantics as the blocking
    /// [`Client::store_dropping_on_hangup`](crate::Client::store_dropping_on_hangup).
    /// Not cancellation-safe.
    ///
    /// # Errors
    ///
    /// As [`AsyncClient::store`], and `EOPNOTSUPP`: the daemon does not
    /// support marked stores; the connection is no longer usable (the
    /// client refuses further requests), connect again (and, e.g., store
    /// unmarked).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient,
    /// #            conn: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    /// match c.store_dropping_on_hangup(conn.as_fd(), b"conn/1", None).await {
    ///     Err(e) if e.raw_os_error() == Some(95) => { /* EOPNOTSUPP: reconnect, store unmarked */ }
    ///     r => r?,
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn store_dropping_on_hangup(
        &mut self,
        fd: BorrowedFd<'_>,
        id: &[u8],
        limit: Option<Tain>,
    ) -> io::Result<()> {
        let payload = client::store_payload(id, limit, proto::OnHangup::Drop)?;
        self.begin()?;
        let r = match self.send(payload, vec![fd]).await {
            Ok(()) => self.recv_status().await,
            Err(e) => Err(e),
        };
        r.map_err(client::marked_store_error)
    }

    /// Deletes (and closes, in the daemon) the fd held under `id`. Not
    /// cancellation-safe.
    ///
    /// # Errors
    ///
    /// `EPERM`, `ENOENT` (nothing held), as [`AsyncClient::store`] else.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// c.delete(b"web").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&mut self, id: &[u8]) -> io::Result<()> {
        proto::check_id(id)?;
        self.begin()?;
        self.send(proto::delete(id), vec![]).await?;
        self.recv_status().await
    }

    async fn retrieve_maybe_delete(&mut self, id: &[u8], delete: bool) -> io::Result<OwnedFd> {
        proto::check_id(id)?;
        self.begin()?;
        self.send(proto::retrieve(id, delete), vec![]).await?;
        let (ans, mut fds) = self.recv().await?;
        self.broken = false;
        let rest = proto::answer_error(&ans)?;
        match (rest.is_empty(), fds.pop(), fds.is_empty()) {
            (true, Some(fd), true) => Ok(fd),
            _ => Err(proto::eproto()),
        }
    }

    /// Gets a copy of the fd held under `id`. Not cancellation-safe: a
    /// dropped future may leave the descriptor unread in the connection.
    ///
    /// # Errors
    ///
    /// `EPERM`, `ENOENT` (nothing held), as [`AsyncClient::store`] else.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// let l = std::net::TcpListener::from(c.retrieve(b"web").await?);
    /// # drop(l);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn retrieve(&mut self, id: &[u8]) -> io::Result<OwnedFd> {
        self.retrieve_maybe_delete(id, false).await
    }

    /// Gets the fd held under `id` and deletes it from the daemon (needs
    /// both the retrieve and the store right). Not cancellation-safe: a
    /// dropped future may lose the descriptor (deleted, never read).
    ///
    /// # Errors
    ///
    /// As [`AsyncClient::retrieve`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// let fd = c.retrieve_delete(b"web").await?;
    /// # drop(fd);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn retrieve_delete(&mut self, id: &[u8]) -> io::Result<OwnedFd> {
        self.retrieve_maybe_delete(id, true).await
    }

    /// Lists the ids held. Not cancellation-safe.
    ///
    /// # Errors
    ///
    /// `EPERM` (no list right), I/O errors, `EPROTO`, an earlier request
    /// that did not complete, as [`AsyncClient::store`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// for id in c.list().await? {
    ///     println!("{}", String::from_utf8_lossy(&id));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.begin()?;
        self.send(vec![proto::OP_LIST], vec![]).await?;
        let (ans, fds) = self.recv().await?;
        self.broken = false;
        let body = proto::answer_error(&ans)?;
        if !fds.is_empty() {
            return Err(proto::eproto());
        }
        proto::parse_list(body).ok_or_else(proto::eproto)
    }

    /// Gets every fd held, with ids and limits. Not cancellation-safe.
    ///
    /// # Errors
    ///
    /// `EPERM` (no getdump right), I/O errors, `EPROTO` for a dump that
    /// does not add up, an earlier request that did not complete, as
    /// [`AsyncClient::store`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// for e in c.getdump().await? {
    ///     println!("{}", String::from_utf8_lossy(&e.id));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn getdump(&mut self) -> io::Result<Vec<DumpEntry>> {
        self.begin()?;
        self.send(vec![proto::OP_GETDUMP], vec![]).await?;
        let (ans, fds) = self.recv().await?;
        let body = self.chunked_answer_body(&ans)?;
        let (chunks, total) = client::dump_header(body, &fds)?;
        let mut dump = Vec::with_capacity(total.min(1 << 16));
        for _ in 0..chunks {
            let (payload, fds) = self.recv().await?;
            client::take_dump_chunk(&mut dump, total, &payload, fds)?;
        }
        let dump = client::dump_complete(dump, total)?;
        self.broken = false;
        Ok(dump)
    }

    /// Describes every fd held (as [`Client::describe`](crate::Client::describe)):
    /// metadata only. Not cancellation-safe.
    ///
    /// # Errors
    ///
    /// `EOPNOTSUPP` when the daemon does not know the request (skarnet's
    /// `s6-fdholderd` closes the connection; the client is then unusable),
    /// `EPERM` (no list right), I/O errors, `EPROTO`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f(c: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// for h in c.describe().await? {
    ///     println!("{}: {}", String::from_utf8_lossy(&h.id), h.description.kind.name());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn describe(&mut self) -> io::Result<Vec<describe::Held>> {
        self.begin()?;
        self.send(vec![proto::OP_DESCRIBE], vec![]).await?;
        let (ans, fds) = self.recv().await.map_err(describe::first_answer_error)?;
        let body = self.chunked_answer_body(&ans)?;
        let (chunks, total) = client::dump_header(body, &fds)?;
        let now = Tain::now();
        let mut held = Vec::with_capacity(total.min(1 << 16));
        for _ in 0..chunks {
            let (payload, fds) = self.recv().await?;
            describe::take_chunk(&mut held, total, &payload, fds.len(), now)?;
        }
        if held.len() != total {
            return Err(proto::eproto());
        }
        self.broken = false;
        Ok(held)
    }

    /// Sends a set of fds to the daemon, which adds them to what it holds.
    /// Not cancellation-safe: a dropped future may leave part of the dump
    /// stored.
    ///
    /// # Errors
    ///
    /// `EPERM` (no setdump right), `ENFILE` (more than the daemon has room
    /// for), a bad id, I/O errors, `EPROTO`, an earlier request that did not
    /// complete, as [`AsyncClient::store`]. After a refusal of a chunk, the
    /// client is broken, as after an I/O error: part of the dump may be
    /// stored.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn f(a: &mut fdholder::asynchronous::AsyncClient,
    /// #            b: &mut fdholder::asynchronous::AsyncClient) -> std::io::Result<()> {
    /// let dump = a.getdump().await?;
    /// let refs: Vec<_> = dump.iter().map(|e| e.as_ref()).collect();
    /// b.setdump(&refs).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn setdump(&mut self, dump: &[DumpEntryRef<'_>]) -> io::Result<()> {
        for e in dump {
            proto::check_id(e.id)?;
        }
        let total = u32::try_from(dump.len()).map_err(|_| io::Error::from(Errno::NFILE))?;
        self.begin()?;
        self.send(proto::setdump(total), vec![]).await?;
        let (ans, fds) = self.recv().await?;
        let body = match proto::answer_error(&ans) {
            Ok(b) => b,
            Err(e) => {
                self.broken = false;
                return Err(e);
            }
        };
        client::setdump_accepted(body, &fds)?;
        if dump.is_empty() {
            self.broken = false;
            return Ok(());
        }
        let n = dump.len().div_ceil(MAX_FDS);
        for (i, chunk) in dump.chunks(MAX_FDS).enumerate() {
            self.send(
                client::setdump_chunk(chunk),
                chunk.iter().map(|e| e.fd).collect(),
            )
            .await?;
            let (ans, fds) = self.recv().await?;
            // After a refusal, what the daemon makes of the rest is not
            // known: the client stays broken.
            client::setdump_chunk_answer(&ans, &fds, i + 1 == n)?;
        }
        self.broken = false;
        Ok(())
    }
}

/// The connection's socket (registered with the runtime: do not change
/// its mode, nor read or write it).
///
/// # Example
///
/// ```no_run
/// use std::os::fd::{AsFd, AsRawFd};
/// # async fn f() -> std::io::Result<()> {
/// let c = fdholder::asynchronous::AsyncClient::connect("/run/fdholder/s").await?;
/// eprintln!("connected on fd {}", c.as_fd().as_raw_fd());
/// # Ok(())
/// # }
/// ```
impl AsFd for AsyncClient {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
