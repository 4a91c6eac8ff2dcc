//! The client library: talk to an `s6-fdholderd` (ours or the reference's).
//!
//! Every call takes a deadline (`None` waits forever). When a call fails
//! with [`io::ErrorKind::TimedOut`], the protocol state is unknown: drop the
//! client. Daemon refusals are `io::Error`s carrying the daemon's errno
//! (`EPERM`, `ENOENT`, `EBUSY`, `ENFILE`, ...), see [`io::Error::raw_os_error`].
//!
//! The crate documentation has a zero-downtime restart example.

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
pub type Deadline = Option<Instant>;

/// One held descriptor, as a dump returns it.
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
    pub fn as_ref(&self) -> DumpEntryRef<'_> {
        DumpEntryRef {
            id: &self.id,
            fd: self.fd.as_fd(),
            limit: self.limit,
        }
    }
}

/// A descriptor to send in a dump.
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

    /// Uses `sock`, a stream socket already connected to a daemon.
    pub fn from_fd(sock: OwnedFd) -> Client {
        Client {
            sock,
            rx: Receiver::new(wire::MAX_LEN),
        }
    }

    /// Gives the connection back.
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
    pub fn store(
        &mut self,
        fd: BorrowedFd<'_>,
        id: &[u8],
        limit: Option<Tain>,
        deadline: Deadline,
    ) -> io::Result<()> {
        proto::check_id(id)?;
        let limit = limit.unwrap_or_else(|| Tain::infinite_from(Tain::now()));
        self.send(proto::store(id, limit), vec![fd], deadline)?;
        self.recv_status(deadline)
    }

    /// Deletes (and closes, in the daemon) the fd held under `id`.
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

    /// Gets a copy of the fd held under `id`.
    pub fn retrieve(&mut self, id: &[u8], deadline: Deadline) -> io::Result<OwnedFd> {
        self.retrieve_maybe_delete(id, false, deadline)
    }

    /// Gets the fd held under `id` and deletes it from the daemon (needs
    /// both the retrieve and the store right).
    pub fn retrieve_delete(&mut self, id: &[u8], deadline: Deadline) -> io::Result<OwnedFd> {
        self.retrieve_maybe_delete(id, true, deadline)
    }

    /// Lists the ids held.
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

    /// Gets every fd held, with ids and limits, in chunks of up to 253.
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
    /// (an id already held is replaced).
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

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
