//! Checks shared by the stateful cargo-fuzz targets (fuzz/fuzz_targets/
//! `daemon_session`, `rules_readers`, `client_answers`) and their short
//! seeded run on stable (tests/fuzz_state.rs). Each target is one
//! `*_from_bytes` function: it decodes arbitrary bytes into a scenario,
//! plays it, compares every answer with a model and checks the process's
//! descriptor count after every answer. Written once, run by both.

#![allow(dead_code)]

pub mod client;
pub mod daemon;
pub mod rules;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

/// Reads a fuzzer's input a byte at a time; zeros once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next byte, 0 when the input is exhausted.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// Up to `n` next bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Number of descriptors this process has open (the directory read is
/// not counted).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits until the descriptor count is within `lo..=hi` and returns it;
/// panics with `what` if it never gets there. Descriptors are closed by
/// other threads (the daemon's, libFuzzer's RSS thread reads /proc now and
/// then), so a count is judged once it settles: a leak is what stays.
pub fn settle_fds(lo: usize, hi: usize, what: &dyn Fn() -> String) -> usize {
    let mut n = open_fds();
    for i in 0..4000 {
        if (lo..=hi).contains(&n) {
            return n;
        }
        std::thread::sleep(Duration::from_micros(if i < 100 { 50 } else { 500 }));
        n = open_fds();
    }
    panic!("{}: {n} descriptors open, expected {lo}..={hi}", what());
}

/// A new descriptor with an identity of its own (a memfd: a new inode).
pub fn fresh_fd() -> OwnedFd {
    rustix::fs::memfd_create("fdholder-fuzz", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
}

/// What a descriptor refers to: (st_dev, st_ino).
pub fn ident(fd: impl AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).unwrap();
    (st.st_dev as u64, st.st_ino as u64)
}

/// The frames a byte stream holds, as the framing defines them, up to the
/// first bad header or the incomplete end: `(payload, announced fds)`.
pub fn frames(stream: &[u8], max_len: usize) -> Vec<(Vec<u8>, usize)> {
    use fdholder::wire::{HEADER, MAX_FDS};
    let mut out = Vec::new();
    let mut p = 0;
    while stream.len() - p >= HEADER {
        let h = &stream[p..p + HEADER];
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let nfds = u16::from_be_bytes([h[4], h[5]]) as usize;
        if len > max_len || nfds > MAX_FDS || stream.len() - p - HEADER < len {
            break;
        }
        out.push((stream[p + HEADER..p + HEADER + len].to_vec(), nfds));
        p += HEADER + len;
    }
    out
}
