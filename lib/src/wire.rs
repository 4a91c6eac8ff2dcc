//! Message framing over a Unix stream socket, byte-compatible with skalibs'
//! `unixmessage`.
//!
//! A message is a 6-byte header (payload length as u32 BE, number of
//! descriptors as u16 BE), then the payload. The descriptors travel as one
//! `SCM_RIGHTS` control message on the `sendmsg` that carries the message's
//! first bytes; a sender cut short sends the rest without control data.
//!
//! [`Sender`] is an outgoing queue flushed with non-blocking writes;
//! [`Receiver`] reassembles messages from any split or coalescing of reads,
//! with descriptors arriving on an earlier read than their header. Received
//! descriptors are close-on-exec, and every one not handed on is closed when
//! its owner drops.
//!
//! Both work on a socket in any mode (they pass `MSG_DONTWAIT`) and never
//! wait: the caller polls (as [`crate::Client`] does) or awaits readiness
//! (as `AsyncClient` does). A framing error ([`FrameError`], `EPROTO` as
//! an [`io::Error`]) leaves the stream unusable: close it.
//!
//! # Example
//!
//! ```
//! use std::fs::File;
//! use std::os::fd::{AsFd, BorrowedFd};
//! use std::os::unix::net::UnixStream;
//! use fdholder::wire::{Receiver, Sender, MAX_LEN};
//!
//! # fn main() -> std::io::Result<()> {
//! let (a, b) = UnixStream::pair()?;
//! let null = File::open("/dev/null")?;
//!
//! // Two messages, the first with a descriptor.
//! let mut tx: Sender<BorrowedFd<'_>> = Sender::new();
//! tx.push(b"first".to_vec(), vec![null.as_fd()]);
//! tx.push(b"second".to_vec(), vec![]);
//! assert!(tx.flush(a.as_fd())?, "small messages fit the socket buffer");
//!
//! // The kernel may need a read per message (it ends a read at a message
//! // that carries descriptors): take what is whole, else read more.
//! let mut rx = Receiver::new(MAX_LEN);
//! let mut got = Vec::new();
//! while got.len() < 2 {
//!     match rx.take_message()? {
//!         Some((payload, fds)) => got.push((payload.to_vec(), fds.len())),
//!         // Everything is sent already; else poll on WouldBlock.
//!         None => assert!(rx.fill(b.as_fd())? > 0),
//!     }
//! }
//! assert_eq!(got, [(b"first".to_vec(), 1), (b"second".to_vec(), 0)]);
//! assert!(rx.is_empty());
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Size of the message header: the payload length (u32 BE) and the number
/// of descriptors (u16 BE).
///
/// # Example
///
/// ```
/// use fdholder::wire::{header, HEADER};
/// assert_eq!(header(5, 1).len(), HEADER);
/// ```
pub const HEADER: usize = 6;
/// Largest payload a message may announce (2^28 bytes); a
/// [`Receiver`] may be given a lower limit.
///
/// # Example
///
/// ```
/// use fdholder::wire::{header, MAX_LEN};
/// assert_eq!(MAX_LEN, 256 << 20);
/// assert_eq!(header(MAX_LEN, 0), [0x10, 0, 0, 0, 0, 0]);
/// ```
pub const MAX_LEN: usize = 1 << 28;
/// Most descriptors one message may carry (the kernel's `SCM_MAX_FD` less
/// skalibs' margin). Dumps of more travel in several chunks
/// ([`crate::proto::chunks_for`]).
///
/// # Example
///
/// ```
/// use std::fs::File;
/// use std::io::{ErrorKind, IoSlice};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use fdholder::wire::{send_some, MAX_FDS};
///
/// # fn main() -> std::io::Result<()> {
/// let (a, _b) = UnixStream::pair()?;
/// let null = File::open("/dev/null")?;
/// let too_many = vec![null.as_fd(); MAX_FDS + 1];
/// let e = send_some(a.as_fd(), &[IoSlice::new(b"x")], &too_many).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::InvalidInput);
/// assert_eq!(send_some(a.as_fd(), &[IoSlice::new(b"x")], &too_many[1..])?, 1);
/// # Ok(())
/// # }
/// ```
pub const MAX_FDS: usize = 253;

/// The header for a message of `len` payload bytes and `nfds` descriptors.
/// The caller keeps within [`MAX_LEN`] and [`MAX_FDS`] (checked in debug
/// builds only).
///
/// # Example
///
/// ```
/// assert_eq!(fdholder::wire::header(0x0102_0304, 0xfd), [1, 2, 3, 4, 0, 0xfd]);
/// ```
pub fn header(len: usize, nfds: usize) -> [u8; HEADER] {
    debug_assert!(len <= MAX_LEN && nfds <= MAX_FDS);
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[4..].copy_from_slice(&(nfds as u16).to_be_bytes());
    h
}

/// Performs one non-blocking `sendmsg` of `bufs`, with `fds` attached if
/// non-empty (`MSG_NOSIGNAL`: no `SIGPIPE`). Returns the number of bytes
/// written, which may be fewer than `bufs` hold; the descriptors went
/// with them.
///
/// # Errors
///
/// - `EAGAIN` ([`io::ErrorKind::WouldBlock`]): the socket's buffer is
///   full, nothing was written;
/// - `EINTR`: try again;
/// - `EINVAL`: more than [`MAX_FDS`] descriptors;
/// - `EPIPE`, `ECONNRESET`: the peer closed its end;
/// - `ETOOMANYREFS`: the kernel's limit on descriptors in flight;
/// - `EBADF`, `ENOTSOCK`, `ENOTCONN`: `sock` is no connected socket.
///
/// # Example
///
/// ```
/// use std::fs::File;
/// use std::io::{ErrorKind, IoSlice};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use fdholder::wire::{header, send_some};
///
/// # fn main() -> std::io::Result<()> {
/// let (a, b) = UnixStream::pair()?;
/// let null = File::open("/dev/null")?;
/// let h = header(1, 1);
/// let bufs = [IoSlice::new(&h), IoSlice::new(b"x")];
/// assert_eq!(send_some(a.as_fd(), &bufs, &[null.as_fd()])?, 7);
/// # drop(b);
///
/// let (c, d) = UnixStream::pair()?;
/// drop(d);
/// let e = send_some(c.as_fd(), &bufs, &[]).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::BrokenPipe);
/// # Ok(())
/// # }
/// ```
pub fn send_some(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    let n = if fds.is_empty() {
        rustix::net::sendmsg(sock, bufs, &mut SendAncillaryBuffer::default(), flags)?
    } else {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::from(rustix::io::Errno::INVAL));
        }
        rustix::net::sendmsg(sock, bufs, &mut anc, flags)?
    };
    Ok(n)
}

struct Outgoing<F> {
    header: [u8; HEADER],
    payload: Vec<u8>,
    /// Bytes of header + payload already written.
    pos: usize,
    /// Sent with the first bytes, then dropped (closing them if owned).
    fds: Vec<F>,
}

/// A queue of outgoing messages, flushed without blocking.
///
/// `F` is whatever keeps a descriptor alive until it is sent: a
/// [`BorrowedFd`] for a client sending its own fd, an `Rc<OwnedFd>` for the
/// daemon sending a held one. A message's descriptors are dropped as soon
/// as its first bytes are written (the kernel holds them then).
///
/// # Example
///
/// ```
/// use std::os::fd::{AsFd, OwnedFd};
/// use std::os::unix::net::UnixStream;
/// use std::rc::Rc;
/// use fdholder::wire::Sender;
///
/// # fn main() -> std::io::Result<()> {
/// let (a, _b) = UnixStream::pair()?;
/// let held: Rc<OwnedFd> = Rc::new(std::fs::File::open("/dev/null")?.into());
/// let mut tx = Sender::new();
/// tx.push(vec![0], vec![Rc::clone(&held)]);
/// assert!(tx.flush(a.as_fd())?);
/// assert_eq!(Rc::strong_count(&held), 1); // the queue's copy is gone
/// # Ok(())
/// # }
/// ```
pub struct Sender<F: AsFd> {
    queue: VecDeque<Outgoing<F>>,
}

impl<F: AsFd> Default for Sender<F> {
    fn default() -> Self {
        Sender {
            queue: VecDeque::new(),
        }
    }
}

impl<F: AsFd> Sender<F> {
    /// An empty queue.
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::BorrowedFd;
    /// let tx = fdholder::wire::Sender::<BorrowedFd<'_>>::new();
    /// assert!(tx.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a message; nothing is written until [`Sender::flush`]. The
    /// caller keeps within [`MAX_LEN`] and [`MAX_FDS`] (more descriptors
    /// make the flush fail with `EINVAL`).
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::BorrowedFd;
    /// let mut tx = fdholder::wire::Sender::<BorrowedFd<'_>>::new();
    /// tx.push(b"L".to_vec(), vec![]);
    /// assert_eq!(tx.len(), 1);
    /// ```
    pub fn push(&mut self, payload: Vec<u8>, fds: Vec<F>) {
        let header = header(payload.len(), fds.len());
        self.queue.push_back(Outgoing {
            header,
            payload,
            pos: 0,
            fds,
        });
    }

    /// Whether everything queued has been written.
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::{AsFd, BorrowedFd};
    /// # fn main() -> std::io::Result<()> {
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut tx = fdholder::wire::Sender::<BorrowedFd<'_>>::new();
    /// tx.push(b"L".to_vec(), vec![]);
    /// assert!(!tx.is_empty());
    /// tx.flush(a.as_fd())?;
    /// assert!(tx.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of messages not yet fully written.
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::BorrowedFd;
    /// let mut tx = fdholder::wire::Sender::<BorrowedFd<'_>>::new();
    /// tx.push(b"L".to_vec(), vec![]);
    /// tx.push(b"?".to_vec(), vec![]);
    /// assert_eq!(tx.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The messages not yet fully written, oldest first, as an in-place
    /// upgrade saves them: each one's header, payload, bytes of header +
    /// payload already written, and descriptors not yet sent (none once
    /// its first bytes are written).
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use fdholder::wire::{header, Sender};
    /// let mut tx: Sender<OwnedFd> = Sender::new();
    /// tx.push(b"L".to_vec(), vec![]);
    /// let m = tx.pending().next().unwrap();
    /// assert_eq!((m.header, m.payload, m.written), (header(1, 0), &b"L"[..], 0));
    /// ```
    pub fn pending(&self) -> impl Iterator<Item = PendingMessage<'_, F>> {
        self.queue.iter().map(|m| PendingMessage {
            header: m.header,
            payload: &m.payload,
            written: m.pos,
            fds: &m.fds,
        })
    }

    /// Queues a message saved by [`Sender::pending`], resuming it after
    /// `written` bytes. A `written` past the message's end is taken as
    /// its end (nothing more is sent of it).
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use fdholder::wire::Sender;
    /// let mut old: Sender<OwnedFd> = Sender::new();
    /// old.push(b"L".to_vec(), vec![]);
    /// let m = old.pending().next().unwrap();
    /// let mut new: Sender<OwnedFd> = Sender::new();
    /// new.push_resumed(m.header, m.payload.to_vec(), m.written, vec![]);
    /// assert_eq!(new.len(), 1);
    /// ```
    pub fn push_resumed(
        &mut self,
        header: [u8; HEADER],
        payload: Vec<u8>,
        written: usize,
        fds: Vec<F>,
    ) {
        let pos = written.min(HEADER + payload.len());
        self.queue.push_back(Outgoing {
            header,
            payload,
            pos,
            fds,
        });
    }

    /// Writes as much as the socket takes. Returns `Ok(true)` when the queue
    /// is empty, `Ok(false)` when the socket would block (wait until it is
    /// writable and call again). `EINTR` is retried.
    ///
    /// # Errors
    ///
    /// [`send_some`]'s other errors: `EPIPE`/`ECONNRESET` when the peer
    /// closed its end, `EINVAL` for a message with more than [`MAX_FDS`]
    /// descriptors, ... A message may then be partly written: the stream is
    /// unusable.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io::Read;
    /// use std::os::fd::{AsFd, BorrowedFd};
    /// # fn main() -> std::io::Result<()> {
    /// let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut tx = fdholder::wire::Sender::<BorrowedFd<'_>>::new();
    /// tx.push(b"L".to_vec(), vec![]);
    /// assert!(tx.flush(a.as_fd())?);
    /// let mut got = [0; 7];
    /// b.read_exact(&mut got)?;
    /// assert_eq!(got, [0, 0, 0, 1, 0, 0, b'L']);
    /// # Ok(())
    /// # }
    /// ```
    pub fn flush(&mut self, sock: BorrowedFd<'_>) -> io::Result<bool> {
        while let Some(m) = self.queue.front_mut() {
            let total = HEADER + m.payload.len();
            while m.pos < total {
                let (h, p) = if m.pos < HEADER {
                    (&m.header[m.pos..], &m.payload[..])
                } else {
                    (&[][..], &m.payload[m.pos - HEADER..])
                };
                let bufs = [IoSlice::new(h), IoSlice::new(p)];
                let r = match &m.fds[..] {
                    _ if m.pos > 0 => send_some(sock, &bufs, &[]),
                    [] => send_some(sock, &bufs, &[]),
                    // One fd (a retrieve's answer) needs no list built.
                    [fd] => send_some(sock, &bufs, &[fd.as_fd()]),
                    fds => {
                        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                        send_some(sock, &bufs, &fds)
                    }
                };
                match r {
                    Ok(n) => {
                        if m.pos == 0 {
                            // The kernel holds its own references now.
                            m.fds.clear();
                        }
                        m.pos += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.queue.pop_front();
        }
        Ok(true)
    }
}

/// Why a byte stream cannot be a sequence of messages. As an
/// [`io::Error`] (`?` converts it) it is `EPROTO`.
///
/// # Example
///
/// ```
/// use std::io::Write;
/// use std::os::fd::AsFd;
/// use fdholder::wire::{header, FrameError, Receiver};
///
/// # fn main() -> std::io::Result<()> {
/// let (mut a, b) = std::os::unix::net::UnixStream::pair()?;
/// let mut rx = Receiver::new(16);
/// a.write_all(&header(17, 0))?; // over this receiver's limit
/// rx.fill(b.as_fd())?;
/// assert_eq!(rx.take_message().err(), Some(FrameError::TooLong));
/// let e = std::io::Error::from(FrameError::TooLong);
/// assert_eq!(e.raw_os_error(), Some(71)); // EPROTO
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces more payload than allowed.
    TooLong,
    /// The header announces more than [`MAX_FDS`] descriptors, or
    /// descriptors arrived that no message announced.
    TooManyFds,
    /// Descriptors were lost in transit (`MSG_CTRUNC`: say, the receiving
    /// process is at its descriptor limit), or a whole message is buffered
    /// and still waits for the descriptors it announced.
    Truncated,
}

impl From<FrameError> for io::Error {
    fn from(_: FrameError) -> io::Error {
        io::Error::from(rustix::io::Errno::PROTO)
    }
}

/// A received message: its payload (borrowed from the receiver's buffer)
/// and its descriptors.
///
/// # Example
///
/// ```
/// use fdholder::wire::{Frame, FrameError, Receiver};
/// // Copy the payload out to keep it past the next call on the receiver.
/// fn next(rx: &mut Receiver) -> Result<Option<Vec<u8>>, FrameError> {
///     let frame: Option<Frame<'_>> = rx.take_message()?;
///     Ok(frame.map(|(payload, _fds)| payload.to_vec()))
/// }
/// assert_eq!(next(&mut Receiver::new(100)), Ok(None));
/// ```
pub type Frame<'a> = (&'a [u8], Vec<OwnedFd>);

/// A queued message, as [`Sender::pending`] shows it.
///
/// # Example
///
/// ```
/// use std::os::fd::OwnedFd;
/// use fdholder::wire::{PendingMessage, Sender};
/// let mut tx: Sender<OwnedFd> = Sender::new();
/// tx.push(b"?".to_vec(), vec![]);
/// let m: PendingMessage<'_, OwnedFd> = tx.pending().next().unwrap();
/// assert!(m.fds.is_empty());
/// ```
#[derive(Debug)]
pub struct PendingMessage<'a, F> {
    /// Its header (as queued: it announces the descriptors even after
    /// they are sent).
    pub header: [u8; HEADER],
    /// Its payload.
    pub payload: &'a [u8],
    /// Bytes of header and payload already written.
    pub written: usize,
    /// Descriptors still to send with its first bytes.
    pub fds: &'a [F],
}

/// Reassembles messages from a stream socket: [`Receiver::fill`] reads,
/// [`Receiver::take_message`] hands out each complete message.
///
/// # Example
///
/// ```
/// use std::io::ErrorKind;
/// use std::os::fd::{AsFd, BorrowedFd};
/// use std::os::unix::net::UnixStream;
/// use fdholder::wire::{Receiver, Sender, MAX_LEN};
///
/// # fn main() -> std::io::Result<()> {
/// let (a, b) = UnixStream::pair()?;
/// let mut rx = Receiver::new(MAX_LEN);
/// // Nothing sent yet: a non-blocking read finds nothing.
/// assert_eq!(rx.fill(b.as_fd()).unwrap_err().kind(), ErrorKind::WouldBlock);
/// let mut tx = Sender::<BorrowedFd<'_>>::new();
/// tx.push(b"hello".to_vec(), vec![]);
/// tx.flush(a.as_fd())?;
/// assert_eq!(rx.fill(b.as_fd())?, 6 + 5);
/// assert_eq!(rx.take_message()?.map(|(p, _)| p.to_vec()), Some(b"hello".to_vec()));
/// drop(a);
/// assert_eq!(rx.fill(b.as_fd())?, 0); // the peer closed its end
/// # Ok(())
/// # }
/// ```
pub struct Receiver {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    max_len: usize,
    initial: usize,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("buffered", &(self.end - self.start))
            .field("fds", &self.fds.len())
            .finish()
    }
}

impl Receiver {
    /// A receiver that accepts payloads up to `max_len` bytes (at most
    /// [`MAX_LEN`]), starting with a small buffer that grows on demand.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::{proto, wire::Receiver};
    /// // What a daemon accepts: the longest well-formed request.
    /// let rx = Receiver::new(proto::MAX_REQUEST);
    /// assert!(rx.is_empty());
    /// ```
    pub fn new(max_len: usize) -> Receiver {
        let initial = 4096;
        Receiver {
            buf: vec![0; initial],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            max_len: max_len.min(MAX_LEN),
            initial,
        }
    }

    /// What is buffered and not yet taken (bytes of messages not yet
    /// complete or not yet taken, and the descriptors received for them),
    /// as an in-place upgrade saves it.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsFd;
    /// use fdholder::wire::{header, Receiver, MAX_LEN};
    /// # fn main() -> std::io::Result<()> {
    /// let (mut a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut rx = Receiver::new(MAX_LEN);
    /// a.write_all(&header(1, 0)[..3])?; // half a header
    /// rx.fill(b.as_fd())?;
    /// let (bytes, fds) = rx.buffered();
    /// assert_eq!((bytes, fds.count()), (&header(1, 0)[..3], 0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn buffered(&self) -> (&[u8], impl Iterator<Item = BorrowedFd<'_>>) {
        (
            &self.buf[self.start..self.end],
            self.fds.iter().map(|f| f.as_fd()),
        )
    }

    /// A receiver like [`Receiver::new`] holding what
    /// [`Receiver::buffered`] showed of another.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsFd;
    /// use fdholder::wire::{header, Receiver, MAX_LEN};
    /// # fn main() -> std::io::Result<()> {
    /// let (mut a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut old = Receiver::new(MAX_LEN);
    /// a.write_all(&header(1, 0)[..3])?; // half a header
    /// old.fill(b.as_fd())?;
    /// let mut new = Receiver::resumed(MAX_LEN, old.buffered().0, vec![]);
    /// a.write_all(&header(1, 0)[3..])?; // the rest, and the payload
    /// a.write_all(b"L")?;
    /// new.fill(b.as_fd())?;
    /// assert_eq!(new.take_message()?.map(|(p, _)| p.to_vec()), Some(b"L".to_vec()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn resumed(max_len: usize, bytes: &[u8], fds: Vec<OwnedFd>) -> Receiver {
        let mut rx = Receiver::new(max_len);
        if bytes.len() > rx.buf.len() {
            rx.buf.resize(bytes.len(), 0);
        }
        rx.buf[..bytes.len()].copy_from_slice(bytes);
        rx.end = bytes.len();
        rx.fds = fds.into();
        rx
    }

    /// Whether no partial message bytes nor descriptors are buffered.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsFd;
    /// use fdholder::wire::{header, Receiver, MAX_LEN};
    /// # fn main() -> std::io::Result<()> {
    /// let (mut a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut rx = Receiver::new(MAX_LEN);
    /// a.write_all(&header(1, 0)[..3])?; // half a header
    /// rx.fill(b.as_fd())?;
    /// assert!(rx.take_message()?.is_none());
    /// assert!(!rx.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.start == self.end && self.fds.is_empty()
    }

    /// Performs one `recvmsg` (non-blocking). Returns the number of bytes
    /// read; 0 means the peer closed its end. Descriptors received are
    /// close-on-exec.
    ///
    /// # Errors
    ///
    /// - `EAGAIN` ([`io::ErrorKind::WouldBlock`]): nothing to read yet;
    /// - `EINTR`: try again;
    /// - `EPROTO` ([`FrameError::Truncated`]): descriptors were lost
    ///   (`MSG_CTRUNC`), or the buffer holds a whole `max_len` message still
    ///   waiting for its descriptors; the stream is unusable;
    /// - `ECONNRESET`; `EBADF`, `ENOTSOCK`: `sock` is no socket.
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use fdholder::wire::{Receiver, MAX_LEN};
    /// # fn main() -> std::io::Result<()> {
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut rx = Receiver::new(MAX_LEN);
    /// drop(a);
    /// assert_eq!(rx.fill(b.as_fd())?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn fill(&mut self, sock: BorrowedFd<'_>) -> io::Result<usize> {
        self.make_room()?;
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
        let r = rustix::net::recvmsg(
            sock,
            &mut iov,
            &mut anc,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        )?;
        for msg in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                self.fds.extend(fds);
            }
        }
        if r.flags.contains(ReturnFlags::CTRUNC) {
            return Err(FrameError::Truncated.into());
        }
        self.end += r.bytes;
        Ok(r.bytes)
    }

    fn make_room(&mut self) -> io::Result<()> {
        if self.end < self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end < self.buf.len() {
                return Ok(());
            }
        }
        let cap = self.max_len + HEADER;
        if self.buf.len() >= cap {
            // A whole message is buffered and still waits for descriptors
            // that a well-behaved sender would have sent with its bytes.
            return Err(FrameError::Truncated.into());
        }
        let want = (self.buf.len() * 2).min(cap);
        self.buf.resize(want, 0);
        Ok(())
    }

    /// Takes the next complete message out of the buffer: its payload and
    /// its descriptors. `Ok(None)` means more input is needed
    /// ([`Receiver::fill`]).
    ///
    /// # Errors
    ///
    /// - [`FrameError::TooLong`]: the header announces more than `max_len`
    ///   bytes;
    /// - [`FrameError::TooManyFds`]: the header announces more than
    ///   [`MAX_FDS`] descriptors, or descriptors came that no message
    ///   announced.
    ///
    /// The stream is unusable after either.
    ///
    /// # Example
    ///
    /// ```
    /// use std::fs::File;
    /// use std::io::IoSlice;
    /// use std::os::fd::AsFd;
    /// use fdholder::wire::{header, send_some, FrameError, Receiver, MAX_LEN};
    /// # fn main() -> std::io::Result<()> {
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let null = File::open("/dev/null")?;
    /// // A message that announces no descriptor, sent with one.
    /// let h = header(0, 0);
    /// send_some(a.as_fd(), &[IoSlice::new(&h)], &[null.as_fd()])?;
    /// let mut rx = Receiver::new(MAX_LEN);
    /// rx.fill(b.as_fd())?;
    /// assert!(matches!(rx.take_message(), Ok(Some((p, fds))) if p.is_empty() && fds.is_empty()));
    /// assert_eq!(rx.take_message().err(), Some(FrameError::TooManyFds));
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_message(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let avail = self.end - self.start;
        if avail < HEADER {
            if avail == 0 && !self.fds.is_empty() {
                // Descriptors come with their message's first bytes: with
                // no byte left, these came with a message that did not
                // announce them. Refuse them rather than let them pile up.
                return Err(FrameError::TooManyFds);
            }
            self.maybe_shrink();
            return Ok(None);
        }
        let h = &self.buf[self.start..self.start + HEADER];
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let nfds = u16::from_be_bytes([h[4], h[5]]) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLong);
        }
        if nfds > MAX_FDS {
            return Err(FrameError::TooManyFds);
        }
        if avail < HEADER + len {
            if self.fds.len() > nfds {
                // No later message has started yet: these are extra fds.
                return Err(FrameError::TooManyFds);
            }
            return Ok(None);
        }
        if self.fds.len() < nfds {
            return Ok(None);
        }
        let fds: Vec<OwnedFd> = self.fds.drain(..nfds).collect();
        let from = self.start + HEADER;
        self.start = from + len;
        if self.start == self.end && self.buf.len() <= self.initial {
            // Common case: everything consumed; restart at the front.
            let (s, e) = (from, from + len);
            self.start = 0;
            self.end = 0;
            return Ok(Some((&self.buf[s..e], fds)));
        }
        Ok(Some((&self.buf[from..from + len], fds)))
    }

    fn maybe_shrink(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > self.initial {
                self.buf = vec![0; self.initial];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    use std::fs::File;
    use std::os::fd::AsRawFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn recv_one(rx: &mut Receiver, sock: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
        loop {
            if let Some((p, f)) = rx.take_message().unwrap() {
                return (p.to_vec(), f);
            }
            match rx.fill(sock.as_fd()) {
                Ok(0) => panic!("eof"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    rustix::event::poll(
                        &mut [rustix::event::PollFd::new(
                            sock,
                            rustix::event::PollFlags::IN,
                        )],
                        None,
                    )
                    .unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn header_layout() {
        assert_eq!(header(0x0102_0304, 0xfd), [1, 2, 3, 4, 0, 0xfd]);
    }

    #[test]
    fn small_messages_coalesced_in_one_read() {
        let (a, b) = pair();
        let mut tx: Sender<BorrowedFd<'_>> = Sender::new();
        tx.push(b"one".to_vec(), vec![]);
        tx.push(b"".to_vec(), vec![]);
        tx.push(b"three".to_vec(), vec![]);
        assert!(tx.flush(a.as_fd()).unwrap());
        let mut rx = Receiver::new(MAX_LEN);
        assert_eq!(rx.fill(b.as_fd()).unwrap(), 3 * HEADER + 8);
        assert_eq!(rx.take_message().unwrap().unwrap().0, b"one");
        assert_eq!(rx.take_message().unwrap().unwrap().0, b"");
        assert_eq!(rx.take_message().unwrap().unwrap().0, b"three");
        assert!(rx.take_message().unwrap().is_none());
        assert!(rx.is_empty());
    }

    #[test]
    fn message_split_byte_by_byte() {
        let (a, b) = pair();
        let f = File::open("/dev/null").unwrap();
        let mut bytes = header(4, 1).to_vec();
        bytes.extend_from_slice(b"abcd");
        // First byte with the fd, then one byte per write.
        send_some(a.as_fd(), &[IoSlice::new(&bytes[..1])], &[f.as_fd()]).unwrap();
        let mut rx = Receiver::new(MAX_LEN);
        for i in 1..bytes.len() {
            rx.fill(b.as_fd()).unwrap();
            assert!(rx.take_message().unwrap().is_none());
            send_some(a.as_fd(), &[IoSlice::new(&bytes[i..i + 1])], &[]).unwrap();
        }
        let (p, fds) = recv_one(&mut rx, &b);
        assert_eq!(p, b"abcd");
        assert_eq!(fds.len(), 1);
        // Received descriptors are close-on-exec.
        let fl = rustix::io::fcntl_getfd(&fds[0]).unwrap();
        assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn fds_arrive_before_their_header_is_parsed() {
        let (a, b) = pair();
        let f = File::open("/dev/null").unwrap();
        let bytes = header(0, 1);
        // The fd comes with 3 bytes; the header completes on a later read.
        send_some(a.as_fd(), &[IoSlice::new(&bytes[..3])], &[f.as_fd()]).unwrap();
        let mut rx = Receiver::new(MAX_LEN);
        rx.fill(b.as_fd()).unwrap();
        assert!(rx.take_message().unwrap().is_none());
        assert!(!rx.is_empty());
        send_some(a.as_fd(), &[IoSlice::new(&bytes[3..])], &[]).unwrap();
        let (p, fds) = recv_one(&mut rx, &b);
        assert!(p.is_empty());
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn max_fds_in_one_message() {
        let (a, b) = pair();
        let files: Vec<File> = (0..MAX_FDS)
            .map(|_| File::open("/dev/null").unwrap())
            .collect();
        let mut tx = Sender::new();
        tx.push(vec![7u8; 10], files.iter().map(|f| f.as_fd()).collect());
        assert!(tx.flush(a.as_fd()).unwrap());
        let mut rx = Receiver::new(MAX_LEN);
        let (p, fds) = recv_one(&mut rx, &b);
        assert_eq!(p, vec![7u8; 10]);
        assert_eq!(fds.len(), MAX_FDS);
        // Distinct, newly allocated descriptors.
        let mut raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        raw.sort();
        raw.dedup();
        assert_eq!(raw.len(), MAX_FDS);
    }

    #[test]
    fn one_mib_payload_with_partial_writes() {
        let (a, b) = pair();
        let payload: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        let f = File::open("/dev/null").unwrap();
        let mut tx = Sender::new();
        tx.push(payload.clone(), vec![f.as_fd()]);
        let mut rx = Receiver::new(MAX_LEN);
        let mut partial_writes = 0;
        let got = loop {
            if !tx.flush(a.as_fd()).unwrap() {
                partial_writes += 1;
            }
            match rx.fill(b.as_fd()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if let Some((p, fds)) = rx.take_message().unwrap() {
                break (p.to_vec(), fds);
            }
        };
        assert!(
            partial_writes > 0,
            "a 1 MiB message must not fit the socket buffer at once"
        );
        assert_eq!(got.0, payload);
        assert_eq!(got.1.len(), 1);
        assert!(tx.is_empty());
    }

    #[test]
    fn unannounced_fds_are_errors() {
        let f = File::open("/dev/null").unwrap();
        // A whole message announcing no fd, sent with one: the message is
        // handed out, then the stray fd is refused.
        let (a, b) = pair();
        let bytes = header(1, 0);
        let msg = [&bytes[..], b"L"].concat();
        send_some(a.as_fd(), &[IoSlice::new(&msg)], &[f.as_fd()]).unwrap();
        let mut rx = Receiver::new(MAX_LEN);
        rx.fill(b.as_fd()).unwrap();
        let (p, fds) = rx.take_message().unwrap().unwrap();
        assert_eq!((p, fds.len()), (&b"L"[..], 0));
        assert_eq!(rx.take_message().err(), Some(FrameError::TooManyFds));

        // An incomplete message with more fds than it announces.
        let (a, b) = pair();
        let bytes = header(4, 1);
        send_some(a.as_fd(), &[IoSlice::new(&bytes)], &[f.as_fd(), f.as_fd()]).unwrap();
        let mut rx = Receiver::new(MAX_LEN);
        rx.fill(b.as_fd()).unwrap();
        assert_eq!(rx.take_message().err(), Some(FrameError::TooManyFds));

        // Fds for the next message, read along with the tail of this one,
        // are fine.
        let (a, b) = pair();
        let first = [&header(2, 0)[..], b"ab"].concat();
        let second = [&header(0, 1)[..]].concat();
        send_some(a.as_fd(), &[IoSlice::new(&first)], &[]).unwrap();
        send_some(a.as_fd(), &[IoSlice::new(&second)], &[f.as_fd()]).unwrap();
        let mut rx = Receiver::new(MAX_LEN);
        let (p, fds) = recv_one(&mut rx, &b);
        assert_eq!((&p[..], fds.len()), (&b"ab"[..], 0));
        let (p, fds) = recv_one(&mut rx, &b);
        assert_eq!((p.len(), fds.len()), (0, 1));
        assert!(rx.is_empty());
    }

    #[test]
    fn oversized_headers_are_errors() {
        let (a, b) = pair();
        let mut h = header(0, 0);
        h[..4].copy_from_slice(&((MAX_LEN as u32) + 1).to_be_bytes());
        send_some(a.as_fd(), &[IoSlice::new(&h)], &[]).unwrap();
        let mut rx = Receiver::new(MAX_LEN);
        rx.fill(b.as_fd()).unwrap();
        assert_eq!(rx.take_message().err(), Some(FrameError::TooLong));

        let (a, b) = pair();
        let mut h = header(0, 0);
        h[4..].copy_from_slice(&254u16.to_be_bytes());
        send_some(a.as_fd(), &[IoSlice::new(&h)], &[]).unwrap();
        let mut rx = Receiver::new(MAX_LEN);
        rx.fill(b.as_fd()).unwrap();
        assert_eq!(rx.take_message().err(), Some(FrameError::TooManyFds));
    }
}
