//! Hostile clients against our daemon: malformed messages of every kind,
//! one case per test. Each case checks that (a) the offending connection
//! is answered with the right errno or dropped, (b) a well-behaved client
//! connected alongside is served before, during and after, and (c) the
//! daemon's open-fd count returns to what it was before the case.

mod common;
mod raw;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, Opts, file_with, identity};
use fdholder::proto::{
    self, OP_DELETE, OP_LIST, OP_RETRIEVE, OP_SETDUMP_CHUNK, OP_STORE, OP_STORE_DROPPING_ON_HANGUP,
};
use fdholder::{Client, Tain};
use raw::{Raw, Reply, header_raw, msg};

/// What a step expects back.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// An answer whose first byte is this.
    Answer(u8),
    /// The daemon drops the connection.
    Dropped,
    /// The daemon answers this, then drops the connection (the request
    /// was whole, the extra fds that came with it are not).
    AnsweredThenDropped(u8),
    /// Any one message (e.g. a getdump chunk).
    AnyMessage,
    /// Nothing yet (the daemon waits for more).
    Nothing,
}

/// One thing the hostile client sends: bytes, with `attach` copies of a
/// file's fd on the first write.
struct Step {
    bytes: Vec<u8>,
    attach: usize,
    want: Want,
}

fn step(bytes: Vec<u8>, attach: usize, want: Want) -> Step {
    Step {
        bytes,
        attach,
        want,
    }
}

/// A well-behaved client holding one fd, checked between hostile steps.
struct Bystander {
    c: Client,
    f: File,
}

impl Bystander {
    fn new(d: &Daemon) -> Bystander {
        let mut c = d.client();
        let f = file_with(&d.dir, "bystander", b"by");
        c.store(f.as_fd(), b"bystander", None, None).unwrap();
        Bystander { c, f }
    }
    fn check(&mut self) {
        let got = self.c.retrieve(b"bystander", None).unwrap();
        assert_eq!(identity(&got), identity(&self.f));
        // A fresh connection is served too.
        let mut fresh: Client = Client::connect(
            std::path::Path::new(&self.sock_path()),
            Some(Instant::now() + Duration::from_secs(10)),
        )
        .unwrap();
        assert!(fresh.list(None).unwrap().contains(&b"bystander".to_vec()));
    }
    fn sock_path(&self) -> std::path::PathBuf {
        SOCK.with(|s| s.borrow().clone())
    }
    fn finish(mut self) {
        self.check();
        self.c.delete(b"bystander", None).unwrap();
    }
}

thread_local! {
    static SOCK: std::cell::RefCell<std::path::PathBuf> = Default::default();
}

/// Runs the steps on a raw connection, then closes it; checks (a), (b), (c)
/// on our daemon. The reference daemon, when installed, gets the same
/// steps and must pass (b) and (c) too; for (a) it must answer valid
/// requests alike, but may answer or wait where ours drops (it is laxer
/// about ids: see RELIABILITY.md).
fn run_case_with(args: &[&str], steps: Vec<Step>) {
    run_on(Impl::Ours, args, &steps);
    if common::have_reference() {
        run_on(Impl::Reference, args, &steps);
    }
}

fn run_on(which: Impl, args: &[&str], steps: &[Step]) {
    let strict = which == Impl::Ours;
    let d = Daemon::start_with(
        which,
        Opts {
            args,
            ..Opts::default()
        },
    );
    SOCK.with(|s| *s.borrow_mut() = d.sock.clone());
    let base = d.open_fds();
    let mut by = Bystander::new(&d);
    let f = file_with(&d.dir, "payload", b"p");
    let mut r = Raw::connect(&d.sock);
    let mut closed = false;
    for (i, s) in steps.iter().enumerate() {
        let fds: Vec<BorrowedFd<'_>> = (0..s.attach).map(|_| f.as_fd()).collect();
        let sent = r.send(&s.bytes, &fds);
        match s.want {
            Want::Answer(e) => {
                sent.unwrap();
                let rep = r.recv();
                assert_eq!(rep.code(), e, "{which:?} step {i}: wrong answer");
            }
            Want::Dropped | Want::AnsweredThenDropped(_) if !strict => {
                // Whatever it does, the rest of the case no longer applies.
                let _ = r.recv_within(300);
                closed = true;
            }
            Want::Dropped => {
                assert!(r.recv().is_closed(), "step {i}: connection not dropped");
                closed = true;
            }
            Want::AnsweredThenDropped(e) => {
                assert_eq!(r.recv().code(), e, "step {i}: wrong answer");
                assert!(r.recv().is_closed(), "step {i}: connection not dropped");
                closed = true;
            }
            Want::AnyMessage => {
                assert!(!r.recv().is_closed(), "{which:?} step {i}: closed");
            }
            Want::Nothing => {
                sent.unwrap();
                let early = r.recv_within(100);
                if strict {
                    assert!(
                        early.is_none(),
                        "step {i}: the daemon answered or closed too early"
                    );
                } else if early.is_some() {
                    closed = true;
                }
            }
        }
        by.check();
        if closed {
            break;
        }
    }
    drop(r);
    // What the case stored legitimately goes.
    let mut c = d.client();
    for id in c.list(None).unwrap() {
        if id != b"bystander" {
            c.delete(&id, None).unwrap();
        }
    }
    drop(c);
    by.finish();
    assert_eq!(
        d.wait_fds(base),
        base,
        "{which:?}: fd leak; stderr: {}",
        d.stderr()
    );
    assert!(!d.stderr().contains("panick"), "{which:?}: {}", d.stderr());
}

fn run_case(steps: Vec<Step>) {
    run_case_with(&[], steps)
}

fn inf() -> Tain {
    Tain::infinite_from(Tain::now())
}

/// A valid request of each opcode with its fd count, and the offset of
/// its idlen byte if it has an id.
fn valid(op: u8) -> (Vec<u8>, usize, Option<usize>) {
    match op {
        OP_STORE => (proto::store(b"hostile", inf()), 1, Some(13)),
        // Ours only; the reference drops every one (an unknown opcode).
        OP_STORE_DROPPING_ON_HANGUP => (
            proto::store_marked(b"hostile", inf(), proto::OnHangup::Drop),
            1,
            Some(13),
        ),
        OP_DELETE => (proto::delete(b"hostile"), 0, Some(1)),
        OP_RETRIEVE => (proto::retrieve(b"hostile", false), 0, Some(2)),
        OP_LIST => (b"L".to_vec(), 0, None),
        b'?' => (b"?".to_vec(), 0, None),
        b'!' => (proto::setdump(1), 0, None),
        OP_SETDUMP_CHUNK => {
            let mut c = vec![OP_SETDUMP_CHUNK];
            proto::push_entry(&mut c, inf(), b"hostile");
            (c, 1, Some(13))
        }
        _ => unreachable!(),
    }
}

/// The steps that must come before `op` (a setdump start before a chunk).
fn prelude(op: u8) -> Vec<Step> {
    if op == OP_SETDUMP_CHUNK {
        vec![step(msg(&proto::setdump(1), 0), 0, Want::Answer(0))]
    } else {
        vec![]
    }
}

/// Payload one byte short (header consistent).
fn payload_short(op: u8) {
    let (p, n, _) = valid(op);
    if p.len() == 1 {
        // L and ?: one byte short is an empty message.
        let mut s = prelude(op);
        s.push(step(msg(&[], n as u16), n, Want::Dropped));
        return run_case(s);
    }
    let mut s = prelude(op);
    s.push(step(msg(&p[..p.len() - 1], n as u16), n, Want::Dropped));
    run_case(s)
}

/// Payload one byte long (header consistent).
fn payload_long(op: u8) {
    let (mut p, n, _) = valid(op);
    p.push(0);
    let mut s = prelude(op);
    s.push(step(msg(&p, n as u16), n, Want::Dropped));
    run_case(s)
}

/// Header length one short of the payload sent: the daemon reads a short
/// request (then garbage).
fn header_len_short(op: u8) {
    let (p, n, _) = valid(op);
    let mut b = header_raw(p.len() as u32 - 1, n as u16).to_vec();
    b.extend_from_slice(&p);
    let mut s = prelude(op);
    s.push(step(b, n, Want::Dropped));
    run_case(s)
}

/// Header length one beyond the payload sent: the daemon waits for the
/// missing byte, then gets a long request.
fn header_len_long(op: u8) {
    let (p, n, _) = valid(op);
    let mut b = header_raw(p.len() as u32 + 1, n as u16).to_vec();
    b.extend_from_slice(&p);
    let mut s = prelude(op);
    s.push(step(b, n, Want::Nothing));
    s.push(step(vec![0], 0, Want::Dropped));
    run_case(s)
}

/// Header length one beyond the payload, then the client goes away.
fn header_len_long_then_close(op: u8) {
    let (p, n, _) = valid(op);
    let mut b = header_raw(p.len() as u32 + 1, n as u16).to_vec();
    b.extend_from_slice(&p);
    let mut s = prelude(op);
    s.push(step(b, n, Want::Nothing));
    run_case(s)
}

/// idlen one less or one more than the id, total length unchanged.
fn idlen_off(op: u8, delta: i8) {
    let (mut p, n, at) = valid(op);
    let at = at.unwrap();
    p[at] = (p[at] as i16 + delta as i16) as u8;
    let mut s = prelude(op);
    s.push(step(msg(&p, n as u16), n, Want::Dropped));
    run_case(s)
}

macro_rules! per_opcode {
    ($($name:ident => $op:expr),* $(,)?) => {
        mod short { use super::*; $( #[test] fn $name() { payload_short($op) } )* }
        mod long { use super::*; $( #[test] fn $name() { payload_long($op) } )* }
        mod hdr_short { use super::*; $( #[test] fn $name() { header_len_short($op) } )* }
        mod hdr_long { use super::*; $( #[test] fn $name() { header_len_long($op) } )* }
        mod hdr_long_close { use super::*; $( #[test] fn $name() { header_len_long_then_close($op) } )* }
    };
}

per_opcode! {
    store => OP_STORE,
    store_dropping_on_hangup => OP_STORE_DROPPING_ON_HANGUP,
    delete => OP_DELETE,
    retrieve => OP_RETRIEVE,
    list => OP_LIST,
    getdump => b'?',
    setdump => b'!',
    setdump_chunk => OP_SETDUMP_CHUNK,
}

macro_rules! per_id_opcode {
    ($($name:ident => $op:expr),* $(,)?) => {
        mod idlen_minus { use super::*; $( #[test] fn $name() { idlen_off($op, -1) } )* }
        mod idlen_plus { use super::*; $( #[test] fn $name() { idlen_off($op, 1) } )* }
    };
}

per_id_opcode! {
    store => OP_STORE,
    store_dropping_on_hangup => OP_STORE_DROPPING_ON_HANGUP,
    delete => OP_DELETE,
    retrieve => OP_RETRIEVE,
    setdump_chunk => OP_SETDUMP_CHUNK,
}

#[test]
fn valid_requests_are_answered() {
    // The baseline the malformed cases depart from.
    run_case(vec![
        step(msg(&valid(OP_STORE).0, 1), 1, Want::Answer(0)),
        step(msg(&valid(OP_RETRIEVE).0, 0), 0, Want::Answer(0)),
        step(msg(&valid(OP_DELETE).0, 0), 0, Want::Answer(0)),
        step(
            msg(&valid(OP_DELETE).0, 0),
            0,
            Want::Answer(libc::ENOENT as u8),
        ),
        step(msg(b"L", 0), 0, Want::Answer(0)),
        step(msg(b"?", 0), 0, Want::Answer(0)),
        step(vec![], 0, Want::AnyMessage),
        step(msg(&proto::setdump(1), 0), 0, Want::Answer(0)),
        step(msg(&valid(OP_SETDUMP_CHUNK).0, 1), 1, Want::Answer(0)),
    ]);
}

#[test]
fn id_without_its_nul() {
    run_case(vec![step(
        msg(&[OP_DELETE, 3, b'a', b'b', b'c', b'x'], 0),
        0,
        Want::Dropped,
    )]);
}

#[test]
fn id_with_a_nul_inside() {
    run_case(vec![step(
        msg(&[OP_DELETE, 3, b'a', 0, b'c', 0], 0),
        0,
        Want::Dropped,
    )]);
}

#[test]
fn idlen_zero() {
    run_case(vec![step(msg(&[OP_DELETE, 0, 0], 0), 0, Want::Dropped)]);
}

#[test]
fn idlen_255_with_a_wrong_total() {
    let mut p = vec![OP_DELETE, 255];
    p.extend_from_slice(&[b'a'; 254]);
    p.push(0);
    run_case(vec![step(msg(&p, 0), 0, Want::Dropped)]);
}

#[test]
fn idlen_255_is_fine() {
    let mut p = vec![OP_DELETE, 255];
    p.extend_from_slice(&[b'a'; 255]);
    p.push(0);
    run_case(vec![step(msg(&p, 0), 0, Want::Answer(libc::ENOENT as u8))]);
}

#[test]
fn unknown_opcode() {
    run_case(vec![step(msg(b"Z", 0), 0, Want::Dropped)]);
}

#[test]
fn empty_message() {
    run_case(vec![step(msg(b"", 0), 0, Want::Dropped)]);
}

#[test]
fn store_with_no_fd() {
    run_case(vec![step(msg(&valid(OP_STORE).0, 0), 0, Want::Dropped)]);
}

#[test]
fn store_with_two_fds() {
    run_case(vec![step(msg(&valid(OP_STORE).0, 2), 2, Want::Dropped)]);
}

#[test]
fn marked_store_with_no_fd_or_two() {
    let p = valid(OP_STORE_DROPPING_ON_HANGUP).0;
    run_case(vec![step(msg(&p, 0), 0, Want::Dropped)]);
    run_case(vec![step(msg(&p, 2), 2, Want::Dropped)]);
}

#[test]
fn store_announcing_one_fd_sending_two() {
    run_case(vec![step(
        msg(&valid(OP_STORE).0, 1),
        2,
        Want::AnsweredThenDropped(0),
    )]);
}

#[test]
fn store_announcing_one_fd_sending_none() {
    // The daemon waits for the fd that never comes; the client leaves.
    run_case(vec![step(msg(&valid(OP_STORE).0, 1), 0, Want::Nothing)]);
}

#[test]
fn delete_with_an_fd_announced() {
    run_case(vec![step(msg(&valid(OP_DELETE).0, 1), 1, Want::Dropped)]);
}

#[test]
fn delete_with_an_fd_unannounced() {
    run_case(vec![step(
        msg(&valid(OP_DELETE).0, 0),
        1,
        Want::AnsweredThenDropped(libc::ENOENT as u8),
    )]);
}

#[test]
fn list_with_an_fd_announced() {
    run_case(vec![step(msg(b"L", 1), 1, Want::Dropped)]);
}

#[test]
fn list_with_fds_unannounced() {
    // Used to pile up in the daemon, held for the connection's lifetime.
    run_case(vec![step(msg(b"L", 0), 3, Want::AnsweredThenDropped(0))]);
}

#[test]
fn getdump_with_an_fd() {
    run_case(vec![step(msg(b"?", 1), 1, Want::Dropped)]);
}

#[test]
fn unannounced_fds_do_not_pile_up() {
    // Many fd-less requests, each smuggling fds: the daemon must not keep
    // them (it drops the connection at the first).
    let d = Daemon::start(Impl::Ours);
    let base = d.open_fds();
    let f = file_with(&d.dir, "f", b"");
    let mut r = Raw::connect(&d.sock);
    let fds: Vec<BorrowedFd<'_>> = (0..200).map(|_| f.as_fd()).collect();
    let mut dropped = false;
    for _ in 0..20 {
        if r.send(&msg(b"L", 0), &fds).is_err() {
            dropped = true;
            break;
        }
        if r.recv().is_closed() || r.recv().is_closed() {
            dropped = true;
            break;
        }
        assert!(d.open_fds() < base + 250, "fds pile up in the daemon");
    }
    assert!(dropped);
    drop(r);
    assert_eq!(d.wait_fds(base), base);
}

#[test]
fn setdump_chunk_without_start() {
    run_case(vec![step(
        msg(&valid(OP_SETDUMP_CHUNK).0, 1),
        1,
        Want::Dropped,
    )]);
}

#[test]
fn setdump_more_chunks_than_announced() {
    run_case(vec![
        step(msg(&proto::setdump(1), 0), 0, Want::Answer(0)),
        step(msg(&valid(OP_SETDUMP_CHUNK).0, 1), 1, Want::Answer(0)),
        step(msg(&valid(OP_SETDUMP_CHUNK).0, 1), 1, Want::Dropped),
    ]);
}

#[test]
fn setdump_more_fds_than_announced() {
    let mut c = vec![OP_SETDUMP_CHUNK];
    proto::push_entry(&mut c, inf(), b"one");
    proto::push_entry(&mut c, inf(), b"two");
    run_case(vec![
        step(msg(&proto::setdump(1), 0), 0, Want::Answer(0)),
        step(msg(&c, 2), 2, Want::Dropped),
    ]);
}

#[test]
fn setdump_chunk_fewer_entries_than_fds() {
    run_case(vec![
        step(msg(&proto::setdump(2), 0), 0, Want::Answer(0)),
        step(msg(&valid(OP_SETDUMP_CHUNK).0, 2), 2, Want::Dropped),
    ]);
}

#[test]
fn other_request_during_setdump() {
    run_case(vec![
        step(msg(&proto::setdump(2), 0), 0, Want::Answer(0)),
        step(
            msg(&valid(OP_SETDUMP_CHUNK).0, 1),
            1,
            Want::Answer(libc::EAGAIN as u8),
        ),
        step(msg(b"L", 0), 0, Want::Dropped),
    ]);
}

#[test]
fn setdump_during_setdump() {
    run_case(vec![
        step(msg(&proto::setdump(2), 0), 0, Want::Answer(0)),
        step(msg(&proto::setdump(2), 0), 0, Want::Dropped),
    ]);
}

#[test]
fn header_announcing_2_28_plus_1_bytes() {
    run_case(vec![step(
        header_raw((1 << 28) + 1, 0).to_vec(),
        0,
        Want::Dropped,
    )]);
}

#[test]
fn header_announcing_2_28_bytes() {
    // Within the framing limit, beyond any request: refused without the
    // daemon buffering 256 MiB.
    run_case(vec![step(
        header_raw(1 << 28, 0).to_vec(),
        0,
        Want::Dropped,
    )]);
}

#[test]
fn header_announcing_254_fds() {
    run_case(vec![step(header_raw(1, 254).to_vec(), 0, Want::Dropped)]);
}

#[test]
fn header_announcing_max_u16_fds_with_fds() {
    run_case(vec![step(
        header_raw(1, u16::MAX).to_vec(),
        3,
        Want::Dropped,
    )]);
}

#[test]
fn truncated_message_then_close() {
    let (p, _, _) = valid(OP_STORE);
    let m = msg(&p, 1);
    run_case(vec![step(m[..m.len() / 2].to_vec(), 1, Want::Nothing)]);
}

#[test]
fn truncated_header_with_fds_then_close() {
    run_case(vec![step(vec![0, 0, 0], 5, Want::Nothing)]);
}

#[test]
fn full_chunk_of_253_fds_with_bad_last_entry_then_close() {
    let mut c = vec![OP_SETDUMP_CHUNK];
    for i in 0..253 {
        proto::push_entry(&mut c, inf(), format!("id{i}").as_bytes());
    }
    c.pop(); // the last NUL
    c.push(b'x');
    run_case(vec![
        step(msg(&proto::setdump(253), 0), 0, Want::Answer(0)),
        step(msg(&c, 253), 253, Want::Dropped),
    ]);
}

/// Sends a store request one byte per write.
fn byte_by_byte(args: &[&str]) {
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            args,
            ..Opts::default()
        },
    );
    let base = d.open_fds();
    let mut by = Bystander::new(&d);
    SOCK.with(|s| *s.borrow_mut() = d.sock.clone());
    let f = file_with(&d.dir, "f", b"");
    let mut r = Raw::connect(&d.sock);
    let m = msg(&valid(OP_STORE).0, 1);
    for (i, b) in m.iter().enumerate() {
        let fds = if i == 0 { vec![f.as_fd()] } else { vec![] };
        r.send(&[*b], &fds).unwrap();
        if i % 8 == 0 {
            by.check();
        }
    }
    assert_eq!(r.recv().code(), 0);
    // And a second one, answered the same way.
    let m = msg(&valid(OP_RETRIEVE).0, 0);
    for b in &m {
        r.send(&[*b], &[]).unwrap();
    }
    match r.recv() {
        Reply::Msg(p, fds) => {
            assert_eq!(p, vec![0]);
            assert_eq!(identity(&fds[0]), identity(&f));
        }
        Reply::Closed => panic!("closed"),
    }
    drop(r);
    let mut c = d.client();
    c.delete(b"hostile", None).unwrap();
    drop(c);
    by.finish();
    assert_eq!(d.wait_fds(base), base);
}

#[test]
fn one_byte_at_a_time() {
    byte_by_byte(&[]);
}

#[test]
fn one_byte_at_a_time_with_client_timeout() {
    // -t counts from accept until answers are flushed; a generous -t lets
    // a slow but steady writer through.
    byte_by_byte(&["-t", "10000"]);
}

#[test]
fn half_a_request_then_silence_is_dropped_with_client_timeout() {
    let d = Daemon::with_args(Impl::Ours, &["-t", "500"]);
    let base = d.open_fds();
    let f = file_with(&d.dir, "f", b"");
    let mut r = Raw::connect(&d.sock);
    let m = msg(&valid(OP_STORE).0, 1);
    r.send(&m[..10], &[f.as_fd()]).unwrap();
    assert!(r.recv().is_closed());
    let mut c = d.client();
    assert!(c.list(None).unwrap().is_empty());
    drop(c);
    drop(r);
    assert_eq!(d.wait_fds(base), base);
}

/// The implementations to compare: ours, and the reference when installed.
fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Ours];
    if common::have_reference() {
        v.push(Impl::Reference);
    }
    v
}

/// The two ways to leave a second request half sent: half of its header,
/// or its header and half of its payload.
fn second_request_halves() -> [(&'static str, Vec<u8>); 2] {
    let m = msg(&proto::delete(b"some-id"), 0);
    [
        ("half a header", m[..3].to_vec()),
        ("a header and half the payload", m[..6 + 4].to_vec()),
    ]
}

/// A raw client whose first request (a list) was answered.
fn answered_once(d: &Daemon) -> Raw {
    let mut r = Raw::connect(&d.sock);
    r.send(&msg(&[OP_LIST], 0), &[]).unwrap();
    assert_eq!(r.recv().code(), 0);
    r
}

#[test]
fn a_second_request_half_sent_is_dropped_with_client_timeout() {
    // -t bounds every wait for a client, not only its first request: one
    // whose first request was answered, then sends half of a second, is
    // dropped about -t later (the reference drops it at once, as it does
    // any client whose read ends inside a message). An idle client, its
    // answers all written, is kept however long it waits, by both.
    for which in impls() {
        for (what, half) in second_request_halves() {
            let d = Daemon::with_args(which, &["-t", "300"]);
            let base = d.open_fds();
            let mut idle = answered_once(&d);
            let mut r = answered_once(&d);
            let sent = Instant::now();
            r.send(&half, &[]).unwrap();
            assert!(
                matches!(r.recv_within(3000), Some(Reply::Closed)),
                "{which:?}, {what}: not dropped within 3 s"
            );
            drop(r);
            // Past -t for the idle one too, with room to spare: still in.
            std::thread::sleep(Duration::from_millis(600).saturating_sub(sent.elapsed()));
            idle.send(&msg(&[OP_LIST], 0), &[]).unwrap();
            assert_eq!(
                idle.recv().code(),
                0,
                "{which:?}, {what}: idle client dropped"
            );
            drop(idle);
            assert_eq!(d.wait_fds(base), base, "{which:?}, {what}");
        }
    }
}

#[test]
fn sigterm_with_a_second_request_half_sent_ends_at_client_timeout() {
    // In lame duck, a client in the middle of a request is waited for to
    // finish it, as long as -t allows (and -T): here -T is 10 s and -t
    // 300 ms, so the daemon drops it and exits about 300 ms after it was
    // sent, never holding out for -T. An idle client is not waited for
    // (still connected at exit: code 2). The reference drops the half
    // request at once.
    for which in impls() {
        for (what, half) in second_request_halves() {
            let d = Daemon::with_args(which, &["-t", "300", "-T", "10000"]);
            let idle = answered_once(&d);
            let r = answered_once(&d);
            r.send(&half, &[]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            d.signal(rustix::process::Signal::TERM);
            let mut d = d;
            let code = common::wait_timeout(&mut d.child, Duration::from_secs(3));
            assert_eq!(code, Some(2), "{which:?}, {what}");
            drop((idle, r));
        }
    }
}

/// Holds `n` fds with long ids, so that a dump is bigger than a socket
/// buffer.
fn fill_store(d: &Daemon, n: usize) -> File {
    let mut c = d.client();
    let f = file_with(&d.dir, "many", b"");
    let entries: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut id = format!("{i:05}-").into_bytes();
            id.resize(255, b'x');
            id
        })
        .collect();
    let dump: Vec<fdholder::DumpEntryRef<'_>> = entries
        .iter()
        .map(|id| fdholder::DumpEntryRef {
            id,
            fd: f.as_fd(),
            limit: inf(),
        })
        .collect();
    c.setdump(&dump, None).unwrap();
    f
}

#[test]
fn client_that_never_reads_its_answers() {
    let d = Daemon::start(Impl::Ours);
    let base = d.open_fds();
    let _f = fill_store(&d, 900);
    let held = d.wait_fds(base + 900);
    assert_eq!(held, base + 900);
    let r = Raw::connect(&d.sock);
    // Many getdumps and lists, never read: the daemon must not buffer
    // without bound nor stop serving others.
    for _ in 0..20 {
        if r.send(&msg(b"?", 0), &[]).is_err() {
            break;
        }
        if r.send(&msg(b"L", 0), &[]).is_err() {
            break;
        }
    }
    let mut c = d.client();
    for _ in 0..3 {
        assert_eq!(c.list(None).unwrap().len(), 900);
        assert_eq!(c.getdump(None).unwrap().len(), 900);
    }
    drop(c);
    // It sits; then it goes away without reading.
    drop(r);
    assert_eq!(d.wait_fds(held), held);
    let mut c = d.client();
    for id in c.list(None).unwrap() {
        c.delete(&id, None).unwrap();
    }
    drop(c);
    assert_eq!(d.wait_fds(base), base);
    assert!(d.terminate().is_some());
}

#[test]
fn client_that_never_reads_is_dropped_with_client_timeout() {
    let d = Daemon::with_args(Impl::Ours, &["-t", "1000"]);
    let base = d.open_fds();
    let _f = fill_store(&d, 900);
    let held = d.wait_fds(base + 900);
    assert_eq!(held, base + 900);
    let r = Raw::connect(&d.sock);
    r.send(&msg(b"?", 0), &[]).unwrap();
    // Dropped after -t: its connection and in-flight dump are gone.
    assert_eq!(d.wait_fds(held), held);
    let mut c = d.client();
    assert_eq!(c.list(None).unwrap().len(), 900);
    drop(r);
}

#[test]
fn client_killed_mid_message() {
    let d = Daemon::start(Impl::Ours);
    let base = d.open_fds();
    let mut by = Bystander::new(&d);
    SOCK.with(|s| *s.borrow_mut() = d.sock.clone());
    let f = file_with(&d.dir, "f", b"");
    let r = Raw::connect(&d.sock);
    let m = msg(&valid(OP_STORE).0, 1);
    // Half a store, with its fd, then the connection's only other holder,
    // a child process, is killed with SIGKILL.
    fdholder::wire::send_some(
        r.sock.as_fd(),
        &[std::io::IoSlice::new(&m[..m.len() - 3])],
        &[f.as_fd()],
    )
    .unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            r.sock.try_clone().unwrap(),
        )))
        .spawn()
        .unwrap();
    drop(r);
    by.check();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    by.finish();
    assert_eq!(d.wait_fds(base), base);
    assert!(d.client().list(None).unwrap().is_empty());
}

#[test]
fn setdump_abandoned_midway() {
    // What arrived stays (a setdump adds); the rest never comes.
    run_case(vec![
        step(msg(&proto::setdump(2), 0), 0, Want::Answer(0)),
        step(
            msg(&valid(OP_SETDUMP_CHUNK).0, 1),
            1,
            Want::Answer(libc::EAGAIN as u8),
        ),
    ]);
}

#[test]
fn concurrent_hostile_and_valid_clients() {
    // 6 threads at once, each mixing valid requests with malformed ones on
    // fresh connections; then everything is released and the daemon must
    // be alive, answering, and back to its baseline.
    let d = Daemon::start(Impl::Ours);
    let base = d.open_fds();
    let sock = d.sock.clone();
    let dir = d.dir.clone();
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let sock = sock.clone();
            let dir = dir.clone();
            std::thread::spawn(move || {
                let f = file_with(&dir, &format!("t{t}"), b"");
                let mut seed = 0x9e37_79b9_u64.wrapping_mul(t + 1);
                let mut rnd = || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut c = Client::connect(&sock, None).unwrap();
                for i in 0..300 {
                    let id = format!("t{t}-{}", rnd() % 8);
                    match rnd() % 6 {
                        0 => {
                            let _ = c.store(f.as_fd(), id.as_bytes(), None, None);
                        }
                        1 => {
                            let _ = c.retrieve_delete(id.as_bytes(), None);
                        }
                        2 => {
                            let _ = c.delete(id.as_bytes(), None);
                        }
                        3 => {
                            c.list(None).unwrap();
                        }
                        _ => {
                            // A malformed message on a fresh connection,
                            // with fds, left at once or after the drop.
                            let mut r = Raw::connect(&sock);
                            let (mut p, n, _) =
                                valid([OP_STORE, OP_DELETE, OP_RETRIEVE, OP_LIST][i % 4]);
                            let cut = (rnd() as usize) % (p.len() + 1);
                            p.truncate(cut);
                            let fds: Vec<BorrowedFd<'_>> =
                                (0..(rnd() % 3) as usize).map(|_| f.as_fd()).collect();
                            let _ = r.send(&msg(&p, n as u16), &fds);
                            if rnd() % 2 == 0 {
                                let _ = r.recv_within(20);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = d.client();
    for id in c.list(None).unwrap() {
        c.delete(&id, None).unwrap();
    }
    drop(c);
    assert_eq!(d.wait_fds(base), base);
    assert!(d.terminate().is_some());
}

// The describe request (this suite's `I`): no body, no fd; anything else
// is dropped like any malformed request (the reference drops every `I`).

#[test]
fn describe_is_answered_and_leaks_nothing() {
    // Ours only: the reference drops it (tests/describe.rs).
    run_on(
        Impl::Ours,
        &[],
        &[
            step(msg(b"I", 0), 0, Want::AnyMessage),
            step(msg(b"L", 0), 0, Want::AnyMessage),
        ],
    );
}

#[test]
fn describe_with_a_body() {
    run_case(vec![step(msg(b"Ix", 0), 0, Want::Dropped)]);
}

#[test]
fn describe_with_an_fd() {
    run_case(vec![step(msg(b"I", 1), 1, Want::Dropped)]);
}

#[test]
fn describe_during_a_setdump() {
    run_case(vec![
        step(msg(&proto::setdump(1), 0), 0, Want::Answer(0)),
        step(msg(b"I", 0), 0, Want::Dropped),
    ]);
}
