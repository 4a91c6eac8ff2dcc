//! A raw protocol client for hostile tests: hand-built messages over a
//! `UnixStream`, fds attached with `wire::send_some`, answers read with
//! `wire::Receiver`.

#![allow(dead_code)]

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use fdholder::wire::{MAX_LEN, Receiver, send_some};
use rustix::event::{PollFd, PollFlags, poll};

/// What came back from the daemon.
#[derive(Debug)]
pub enum Reply {
    /// A message: payload and fds.
    Msg(Vec<u8>, Vec<OwnedFd>),
    /// The daemon closed the connection (EOF or reset).
    Closed,
}

impl Reply {
    /// The answer's first byte (0 success, else errno); panics if closed.
    pub fn code(&self) -> u8 {
        match self {
            Reply::Msg(p, _) => *p.first().expect("empty answer"),
            Reply::Closed => panic!("connection closed instead of an answer"),
        }
    }
    pub fn is_closed(&self) -> bool {
        matches!(self, Reply::Closed)
    }
}

/// A raw connection.
pub struct Raw {
    pub sock: UnixStream,
    rx: Receiver,
}

/// A header with any values (no checks).
pub fn header_raw(len: u32, nfds: u16) -> [u8; 6] {
    let mut h = [0u8; 6];
    h[..4].copy_from_slice(&len.to_be_bytes());
    h[4..].copy_from_slice(&nfds.to_be_bytes());
    h
}

/// A whole message: header announcing `nfds` fds, then `payload`.
pub fn msg(payload: &[u8], nfds: u16) -> Vec<u8> {
    let mut m = header_raw(payload.len() as u32, nfds).to_vec();
    m.extend_from_slice(payload);
    m
}

fn wait(fd: BorrowedFd<'_>, flags: PollFlags, ms: i32) -> bool {
    let mut p = [PollFd::new(&fd, flags)];
    let t = rustix::event::Timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) as i64) * 1_000_000,
    };
    matches!(poll(&mut p, Some(&t)), Ok(n) if n > 0)
}

impl Raw {
    pub fn connect(sock: &Path) -> Raw {
        Raw {
            sock: UnixStream::connect(sock).unwrap(),
            rx: Receiver::new(MAX_LEN),
        }
    }

    /// Sends all of `bytes`, `fds` attached to the first write. Errors
    /// (the daemon closed) are returned, not raised.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut off = 0;
        let mut first = true;
        while off < bytes.len() {
            let f: &[BorrowedFd<'_>] = if first { fds } else { &[] };
            match send_some(self.sock.as_fd(), &[IoSlice::new(&bytes[off..])], f) {
                Ok(n) => {
                    off += n;
                    first = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(self.sock.as_fd(), PollFlags::OUT, 1000);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits (at most 10 s) for the next message or the connection's end.
    pub fn recv(&mut self) -> Reply {
        self.recv_within(10_000)
            .expect("no answer and no close within 10 s")
    }

    /// Waits at most `ms` for a message or the end; `None` if neither came.
    pub fn recv_within(&mut self, ms: i32) -> Option<Reply> {
        let end = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
        loop {
            match self.rx.take_message() {
                Ok(Some((p, f))) => return Some(Reply::Msg(p.to_vec(), f)),
                Ok(None) => {}
                Err(e) => panic!("daemon sent a bad frame: {e:?}"),
            }
            match self.rx.fill(self.sock.as_fd()) {
                Ok(0) => return Some(Reply::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = end.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    wait(
                        self.sock.as_fd(),
                        PollFlags::IN,
                        left.as_millis().max(1) as i32,
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Reply::Closed),
            }
        }
    }
}
