//! Checks shared by the short fuzz run in `cargo test` (tests/fuzz_short.rs)
//! and the cargo-fuzz targets (fuzz/): the request parser and the framing
//! receiver, fed arbitrary input, must never panic and must keep their
//! invariants.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use fdholder::proto::{self, Request};
use fdholder::wire::{HEADER, MAX_FDS, Receiver, send_some};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

/// Parses `payload` as a request of `nfds` descriptors. Whatever it
/// accepts must encode back to the very same bytes (the retrieve flag
/// normalised: any non-zero byte means "also delete", as the reference).
/// Returns whether it was accepted.
pub fn check_parse(payload: &[u8], nfds: usize) -> bool {
    let Some(req) = proto::parse_request(payload, nfds) else {
        return false;
    };
    let (enc, want_nfds) = match &req {
        Request::Store {
            limit,
            id,
            on_hangup,
        } => (proto::store_marked(id.to_bytes(), *limit, *on_hangup), 1),
        Request::Delete { id } => (proto::delete(id.to_bytes()), 0),
        Request::Retrieve { id, delete } => (proto::retrieve(id.to_bytes(), *delete), 0),
        Request::List => (vec![proto::OP_LIST], 0),
        Request::GetDump => (vec![proto::OP_GETDUMP], 0),
        Request::Describe => (vec![proto::OP_DESCRIBE], 0),
        Request::SetDump { total } => (proto::setdump(*total), 0),
        Request::SetDumpChunk { entries } => {
            let mut b = vec![proto::OP_SETDUMP_CHUNK];
            for (limit, id) in entries {
                assert!(!id.to_bytes().is_empty() && id.to_bytes().len() <= proto::ID_MAX);
                proto::push_entry(&mut b, *limit, id.to_bytes());
            }
            (b, entries.len())
        }
    };
    let mut norm = payload.to_vec();
    if norm[0] == proto::OP_RETRIEVE && norm[1] != 0 {
        norm[1] = 1;
    }
    assert_eq!(enc, norm, "accepted {req:?}, which encodes differently");
    assert_eq!(nfds, want_nfds, "accepted {req:?} with {nfds} fds");
    true
}

/// One write of a byte stream: bytes, and how many fds ride on it.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub nfds: usize,
}

/// The frames a byte stream holds, as the framing defines them, up to the
/// first bad header or the incomplete end. `(payload, nfds)`.
pub fn frames(stream: &[u8], max_len: usize) -> (Vec<(Vec<u8>, usize)>, bool) {
    let mut out = Vec::new();
    let mut p = 0;
    while stream.len() - p >= HEADER {
        let h = &stream[p..p + HEADER];
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let nfds = u16::from_be_bytes([h[4], h[5]]) as usize;
        if len > max_len || nfds > MAX_FDS {
            return (out, true);
        }
        if stream.len() - p - HEADER < len {
            break;
        }
        out.push((stream[p + HEADER..p + HEADER + len].to_vec(), nfds));
        p += HEADER + len;
    }
    (out, false)
}

/// What a receiver run gave.
#[derive(Debug, Default)]
pub struct RxOutcome {
    pub messages: usize,
    pub fds_out: usize,
    pub error: bool,
}

fn drain(rx: &mut Receiver, sock: BorrowedFd<'_>, got: &mut Vec<(Vec<u8>, usize)>) -> bool {
    loop {
        loop {
            match rx.take_message() {
                Ok(Some((p, fds))) => {
                    // Handed out, then closed here.
                    got.push((p.to_vec(), fds.len()));
                    drop(fds);
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        match rx.fill(sock) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// Sends `chunks` through a socketpair (fds: dups of `file`) into a
/// [`Receiver`] of `max_len`, reading as it goes. Checks that every
/// message handed out is the next frame of the stream with exactly its
/// announced fds, never more; and, when `clean` (fds on each message's
/// first chunk, headers valid), that every frame comes out and nothing
/// fails.
pub fn check_receiver(chunks: &[Chunk], max_len: usize, clean: bool, file: &File) -> RxOutcome {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut rx = Receiver::new(max_len);
    let mut got = Vec::new();
    let mut alive = true;
    let mut sent_fds = 0;
    'outer: for c in chunks {
        let fds: Vec<BorrowedFd<'_>> = (0..c.nfds.min(MAX_FDS)).map(|_| file.as_fd()).collect();
        let mut off = 0;
        let mut first = true;
        while off < c.bytes.len() {
            let f: &[BorrowedFd<'_>] = if first { &fds } else { &[] };
            match send_some(a.as_fd(), &[IoSlice::new(&c.bytes[off..])], f) {
                Ok(n) => {
                    if first {
                        sent_fds += f.len();
                    }
                    off += n;
                    first = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("send: {e}"),
            }
            if !drain(&mut rx, b.as_fd(), &mut got) {
                alive = false;
                break 'outer;
            }
        }
    }
    if alive {
        drop(a);
        alive = drain(&mut rx, b.as_fd(), &mut got);
    }
    let stream: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.bytes.iter().copied())
        .collect();
    let (want, _) = frames(&stream, max_len);
    assert!(got.len() <= want.len(), "more messages than frames");
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        assert_eq!(g.0, w.0, "message {i}: payload differs");
        assert_eq!(
            g.1, w.1,
            "message {i}: {} fds handed out, {} announced",
            g.1, w.1
        );
    }
    let fds_out: usize = got.iter().map(|g| g.1).sum();
    assert!(fds_out <= sent_fds, "more fds out than in");
    if clean {
        assert!(alive, "a well-formed stream was refused");
        assert_eq!(got.len(), want.len(), "frames lost");
    }
    RxOutcome {
        messages: got.len(),
        fds_out,
        error: !alive,
    }
}

/// Decodes arbitrary bytes (a fuzzer's input) into a receiver run: first
/// byte picks max_len, then per chunk a byte of fd count (0..3, rarely
/// many) and a length byte, then that many bytes.
pub fn receiver_from_bytes(data: &[u8], file: &File) {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let max_len = [16, 64, 1024, proto::MAX_REQUEST][(sel & 3) as usize];
    let mut chunks = Vec::new();
    while rest.len() >= 2 {
        let nfds = match rest[0] {
            255 => MAX_FDS,
            x => (x % 4) as usize,
        };
        let n = (rest[1] as usize).min(rest.len() - 2);
        chunks.push(Chunk {
            bytes: rest[2..2 + n].to_vec(),
            nfds: if n == 0 { 0 } else { nfds },
        });
        rest = &rest[2 + n..];
    }
    check_receiver(&chunks, max_len, false, file);
}

/// Decodes arbitrary bytes into a parse: first byte's low bits are the fd
/// count.
pub fn parse_from_bytes(data: &[u8]) {
    if let Some((&n, payload)) = data.split_first() {
        check_parse(payload, (n % 4) as usize);
    }
}

/// Number of descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Keeps the compiler quiet about the unused import in some users.
pub fn _unused(_: OwnedFd) {}
