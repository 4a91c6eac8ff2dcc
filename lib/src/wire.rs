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

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Size of the message header.
pub const HEADER: usize = 6;
/// Largest payload a message may announce (2^28 bytes).
pub const MAX_LEN: usize = 1 << 28;
/// Most descriptors one message may carry (the kernel's `SCM_MAX_FD` less
/// skalibs' margin).
pub const MAX_FDS: usize = 253;

/// The header for a message of `len` payload bytes and `nfds` descriptors.
pub fn header(len: usize, nfds: usize) -> [u8; HEADER] {
    debug_assert!(len <= MAX_LEN && nfds <= MAX_FDS);
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[4..].copy_from_slice(&(nfds as u16).to_be_bytes());
    h
}

/// Performs one non-blocking `sendmsg` of `bufs`, with `fds` attached if
/// non-empty. Returns the number of bytes written.
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
/// daemon sending a held one.
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
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a message. The caller keeps within [`MAX_LEN`] and [`MAX_FDS`].
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
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of messages not yet fully written.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Writes as much as the socket takes. Returns `Ok(true)` when the queue
    /// is empty, `Ok(false)` when the socket would block.
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

/// Why a byte stream cannot be a sequence of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces more payload than allowed.
    TooLong,
    /// The header announces more than [`MAX_FDS`] descriptors.
    TooManyFds,
    /// Descriptors were lost in transit (`MSG_CTRUNC`).
    Truncated,
}

impl From<FrameError> for io::Error {
    fn from(_: FrameError) -> io::Error {
        io::Error::from(rustix::io::Errno::PROTO)
    }
}

/// A received message: its payload (borrowed from the receiver's buffer)
/// and its descriptors.
pub type Frame<'a> = (&'a [u8], Vec<OwnedFd>);

/// Reassembles messages from a stream socket.
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

    /// Whether no partial message bytes nor descriptors are buffered.
    pub fn is_empty(&self) -> bool {
        self.start == self.end && self.fds.is_empty()
    }

    /// Performs one `recvmsg` (non-blocking). Returns the number of bytes
    /// read; 0 means the peer closed its end.
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
    /// its descriptors. `Ok(None)` means more input is needed.
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
