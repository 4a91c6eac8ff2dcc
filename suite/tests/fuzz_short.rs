//! A short, seeded fuzz run on stable, inside `cargo test`: the request
//! parser and the framing receiver fed random and mutated inputs (the
//! same checks as the cargo-fuzz targets in fuzz/). Nothing may panic;
//! the parser accepts only what encodes back to the same bytes; the
//! receiver hands out each frame with exactly its announced fds, never
//! more, and every fd it received is handed out or closed (the process's
//! fd count returns to where it was).
//!
//! `FDHOLDER_SEED` sets the seed; `FDHOLDER_FUZZ_SCALE` multiplies the
//! number of inputs (default 1) for a long run.

mod fuzzlib;
mod rng;

use rng::Rng;
use std::fs::File;

use fdholder::Tain;
use fdholder::proto::{self, MAX_REQUEST};
use fdholder::wire::{MAX_FDS, header};
use fuzzlib::{Chunk, check_parse, check_receiver, open_fds};

fn seed() -> u64 {
    std::env::var("FDHOLDER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xf022)
}

fn scale() -> usize {
    std::env::var("FDHOLDER_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn id(r: &mut Rng) -> Vec<u8> {
    let n = match r.below(10) {
        0 => 255,
        1 => 1,
        _ => 1 + r.below(20),
    };
    (0..n).map(|_| 1 + r.below(255) as u8).collect()
}

fn tain(r: &mut Rng) -> Tain {
    match r.below(4) {
        0 => Tain::now(),
        1 => Tain::infinite_from(Tain::now()),
        _ => Tain::unpack(&r.bytes(12).try_into().unwrap()),
    }
}

/// A well-formed request and its fd count.
fn valid_request(r: &mut Rng) -> (Vec<u8>, usize) {
    match r.below(7) {
        0 => {
            let mark = match r.below(2) {
                0 => proto::OnHangup::Keep,
                _ => proto::OnHangup::Drop,
            };
            (proto::store_marked(&id(r), tain(r), mark), 1)
        }
        1 => (proto::delete(&id(r)), 0),
        2 => (proto::retrieve(&id(r), r.below(2) == 1), 0),
        3 => (b"L".to_vec(), 0),
        4 => (b"?".to_vec(), 0),
        5 => (proto::setdump(r.next() as u32), 0),
        _ => {
            let n = 1 + r.below(5);
            let mut b = vec![proto::OP_SETDUMP_CHUNK];
            for _ in 0..n {
                proto::push_entry(&mut b, tain(r), &id(r));
            }
            (b, n)
        }
    }
}

fn mutate(r: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + r.below(3) {
        match r.below(7) {
            0 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            1 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] = r.byte();
            }
            2 => b.truncate(r.below(b.len() + 1)),
            3 => {
                let i = r.below(b.len() + 1);
                let x = r.byte();
                b.insert(i, x);
            }
            4 if !b.is_empty() => {
                let i = r.below(b.len());
                b.remove(i);
            }
            5 if !b.is_empty() => {
                // Interesting values: 0, NUL, 255.
                let i = r.below(b.len());
                b[i] = [0, 255, 1, 254][r.below(4)];
            }
            _ => {
                let x = {
                    let n = r.below(8);
                    r.bytes(n)
                };
                b.extend(x);
            }
        }
    }
}

#[test]
fn parser_never_accepts_what_it_would_not_send() {
    let mut r = Rng(seed());
    let n = 300_000 * scale();
    let (mut accepted, mut valid_accepted) = (0, 0);
    for i in 0..n {
        let (mut p, mut nfds) = valid_request(&mut r);
        match i % 4 {
            0 => {
                // Well-formed: must be accepted.
                assert!(
                    check_parse(&p, nfds),
                    "seed {} input {i}: refused {p:?}",
                    seed()
                );
                valid_accepted += 1;
                continue;
            }
            1 => mutate(&mut r, &mut p),
            2 => nfds = r.below(4),
            _ => {
                p = {
                    let n = r.below(40);
                    r.bytes(n)
                };
                if !p.is_empty() && r.below(2) == 0 {
                    p[0] = b"SDRL?!."[r.below(7)];
                }
                nfds = r.below(3);
            }
        }
        if check_parse(&p, nfds) {
            accepted += 1;
        }
    }
    println!("parser: {n} inputs, {valid_accepted} valid accepted, {accepted} mutated accepted");
}

/// A stream of well-formed messages cut into chunks, fds on the chunk
/// that starts each message.
fn clean_stream(r: &mut Rng, max_len: usize) -> Vec<Chunk> {
    let mut msgs: Vec<(Vec<u8>, usize)> = Vec::new();
    for _ in 0..1 + r.below(6) {
        let len = match r.below(8) {
            0 => max_len,
            1 => 0,
            _ => r.below(max_len.min(600) + 1),
        };
        let nfds = match r.below(50) {
            0 => MAX_FDS,
            1..=20 => 0,
            _ => 1 + r.below(3),
        };
        let mut m = header(len, nfds).to_vec();
        m.extend(r.bytes(len));
        msgs.push((m, nfds));
    }
    let mut chunks = Vec::new();
    for (m, nfds) in msgs {
        // Random cuts inside the message; the fds go on its first piece.
        let mut cuts: Vec<usize> = (0..r.below(4)).map(|_| 1 + r.below(m.len())).collect();
        cuts.push(m.len());
        cuts.sort();
        cuts.dedup();
        let mut from = 0;
        for c in cuts {
            if c > from {
                chunks.push(Chunk {
                    bytes: m[from..c].to_vec(),
                    nfds: if from == 0 { nfds } else { 0 },
                });
                from = c;
            }
        }
    }
    chunks
}

fn mutate_stream(r: &mut Rng, chunks: &mut Vec<Chunk>) {
    for _ in 0..1 + r.below(3) {
        let i = r.below(chunks.len());
        match r.below(8) {
            0 => mutate(r, &mut chunks[i].bytes),
            1 => chunks[i].nfds = r.below(4),
            2 => chunks[i].nfds += 1 + r.below(3),
            3 => {
                // A header announcing too much.
                let mut b = header(0, 0).to_vec();
                match r.below(3) {
                    0 => b[..4].copy_from_slice(&((1u32 << 28) + 1).to_be_bytes()),
                    1 => b[4..].copy_from_slice(&(254 + r.below(1000) as u16).to_be_bytes()),
                    _ => b[..4].copy_from_slice(&(r.next() as u32).to_be_bytes()),
                }
                chunks.insert(
                    i,
                    Chunk {
                        bytes: b,
                        nfds: r.below(2),
                    },
                );
            }
            4 => {
                chunks.truncate(i + 1);
                let c = &mut chunks[i];
                c.bytes.truncate(r.below(c.bytes.len() + 1));
            }
            5 => {
                let b = {
                    let n = 1 + r.below(20);
                    r.bytes(n)
                };
                chunks.insert(
                    i,
                    Chunk {
                        bytes: b,
                        nfds: r.below(3),
                    },
                );
            }
            6 => {
                let c = chunks.remove(i);
                if !chunks.is_empty() {
                    let j = r.below(chunks.len());
                    chunks[j].bytes.extend(c.bytes);
                    chunks[j].nfds += c.nfds;
                }
            }
            _ => chunks[i].nfds = 0,
        }
        if chunks.is_empty() {
            chunks.push(Chunk {
                bytes: vec![],
                nfds: 0,
            });
        }
        for c in chunks.iter_mut() {
            // The kernel does not pass fds on an empty write.
            if c.bytes.is_empty() {
                c.nfds = 0;
            }
            c.nfds = c.nfds.min(MAX_FDS);
        }
    }
}

/// The tests that count this process's fds must not overlap.
static FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn receiver_frames_and_fds_exactly() {
    let _g = FDS.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::open("/dev/null").unwrap();
    let base = open_fds();
    let mut r = Rng(seed() ^ 0xabcdef);
    let n = 100_000 * scale();
    let (mut msgs, mut fds, mut errors) = (0, 0, 0);
    for i in 0..n {
        let max_len = [16, 64, 1024, MAX_REQUEST][r.below(4)];
        let mut chunks = clean_stream(&mut r, max_len);
        let clean = i % 3 == 0;
        if !clean {
            mutate_stream(&mut r, &mut chunks);
        }
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_receiver(&chunks, max_len, clean, &file)
        }))
        .unwrap_or_else(|_| panic!("seed {} input {i}: {chunks:?}", seed()));
        msgs += out.messages;
        fds += out.fds_out;
        errors += out.error as usize;
        if i % 1000 == 0 {
            assert_eq!(open_fds(), base, "seed {} input {i}: fds leaked", seed());
        }
    }
    assert_eq!(open_fds(), base, "fds leaked");
    println!("receiver: {n} streams, {msgs} messages and {fds} fds handed out, {errors} refused");
}

#[test]
fn arbitrary_bytes_through_both() {
    // The fuzz targets' own decoding, on random bytes.
    let _g = FDS.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::open("/dev/null").unwrap();
    let mut r = Rng(seed() ^ 0x1234);
    for _ in 0..50_000 * scale() {
        let d = {
            let n = r.below(300);
            r.bytes(n)
        };
        fuzzlib::parse_from_bytes(&d);
        fuzzlib::receiver_from_bytes(&d, &file);
    }
}
