//! `client_answers`: the blocking [`fdholder::Client`] against a fake
//! daemon that sends fuzzed answers over a socketpair (wrong lengths, extra
//! or missing fds, wrong chunk counts, errors, garbage framing, a hang-up
//! or a stall). The client must return an error or the value the answers
//! say (checked against the script), never panic, return within its
//! deadline (with slack for a loaded machine) and close every descriptor it
//! received but did not return (the fd count, after the call, is the one
//! before plus the fds returned).

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fdholder::proto;
use fdholder::wire::{MAX_FDS, MAX_LEN, header, send_some};
use fdholder::{Client, DumpEntryRef, Tain};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

use super::{Input, frames, ident, open_fds, settle_fds};

/// The client call under test.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Store,
    Delete,
    Retrieve,
    RetrieveDelete,
    List,
    GetDump,
    /// With this many entries (chunks of 253).
    SetDump(usize),
}

/// One write of the fake daemon: bytes and the pool fds attached.
#[derive(Debug, Clone)]
pub struct Item {
    pub bytes: Vec<u8>,
    pub fds: Vec<usize>,
}

/// What the fake daemon sends, and whether it then hangs up or stalls.
#[derive(Debug, Clone)]
pub struct Script {
    pub op: Op,
    pub items: Vec<Item>,
    pub stall: bool,
}

const POOL: usize = 8;

/// Descriptors the fake daemon sends (copies of), kept for the process's
/// life: the baseline includes them.
fn pool() -> &'static [(OwnedFd, (u64, u64))] {
    static P: OnceLock<Vec<(OwnedFd, (u64, u64))>> = OnceLock::new();
    P.get_or_init(|| {
        (0..POOL)
            .map(|_| {
                let fd = super::fresh_fd();
                let id = ident(&fd);
                (fd, id)
            })
            .collect()
    })
}

fn framed(payload: &[u8], announced: usize, attached: Vec<usize>) -> Item {
    let mut bytes = header(payload.len(), announced).to_vec();
    bytes.extend_from_slice(payload);
    Item {
        bytes,
        fds: attached,
    }
}

const IDS: [&[u8]; 4] = [b"a", b"bb", b"c\xff", b"xyz"];

/// Decodes arbitrary bytes into a script: the first bytes pick the call,
/// then each item is a kind byte and its parameters.
pub fn script_from_bytes(data: &[u8]) -> Script {
    let mut inp = Input(data);
    let op = match inp.byte() % 7 {
        0 => Op::Store,
        1 => Op::Delete,
        2 => Op::Retrieve,
        3 => Op::RetrieveDelete,
        4 => Op::List,
        5 => Op::GetDump,
        _ => Op::SetDump([0, 1, 2, 3, 253, 254][inp.byte() as usize % 6]),
    };
    let mut items = Vec::new();
    let mut next_fd = 0;
    let mut fds = |n: usize| -> Vec<usize> {
        (0..n)
            .map(|_| {
                next_fd += 1;
                next_fd % POOL
            })
            .collect()
    };
    let mut stall = false;
    while !inp.is_empty() && items.len() < 64 {
        let k = inp.byte() % 10;
        let b = inp.byte();
        let item = match k {
            0 => framed(&[0], 0, vec![]),
            1 => framed(&[b], 0, vec![]),
            2 => framed(&[0], 1, fds(1)),
            3 => {
                let n = (b % 4) as usize;
                let mut a = proto::list_answer(IDS[..n].iter().copied());
                match inp.byte() % 4 {
                    0 => a[4] = a[4].wrapping_add(1),
                    1 => {
                        a.pop();
                    }
                    _ => {}
                }
                framed(&a, 0, vec![])
            }
            4 => {
                let chunks = (b % 4) as u32;
                let total = [0, 1, 2, 3, 4, 253, 254, 300][inp.byte() as usize % 8] as u32;
                let mut a = vec![0];
                a.extend_from_slice(&chunks.to_be_bytes());
                a.extend_from_slice(&total.to_be_bytes());
                framed(&a, 0, vec![])
            }
            5 => {
                // A dump chunk of n entries, announcing n fds and carrying
                // n, or one more or one less.
                let n = match b % 8 {
                    7 => MAX_FDS,
                    x => x as usize % 4,
                };
                let mut a = Vec::new();
                for i in 0..n {
                    let limit = match inp.byte() % 3 {
                        0 => Tain::infinite_from(Tain::now()),
                        1 => Tain::now(),
                        _ => Tain { sec: 1, nano: 2 },
                    };
                    proto::push_entry(&mut a, limit, IDS[i % 4]);
                }
                let attached = match inp.byte() % 6 {
                    0 => n + 1,
                    1 => n.saturating_sub(1),
                    _ => n,
                };
                framed(&a, n, fds(attached.min(MAX_FDS)))
            }
            6 => {
                let mut a = vec![0];
                a.extend_from_slice(&u32::from(b).to_be_bytes());
                framed(&a, 0, vec![])
            }
            7 => {
                let n = inp.byte() as usize;
                let p = inp.bytes(n);
                framed(&p, ((b >> 2) % 4) as usize, fds((b % 4) as usize))
            }
            8 => {
                let p = inp.bytes((b % 16) as usize);
                Item {
                    bytes: p,
                    fds: fds((b >> 4) as usize % 2),
                }
            }
            _ => {
                stall = b % 2 == 1;
                break;
            }
        };
        items.push(item);
    }
    for it in &mut items {
        if it.bytes.is_empty() {
            it.fds.clear(); // nothing carries fds without a byte
        }
    }
    Script { op, items, stall }
}

/// Sends the script from the daemon's end, then hangs up, or stalls until
/// the client hangs up. Never blocks for good: a client that stopped
/// reading and hung up makes the sends fail.
fn fake_daemon(sock: OwnedFd, items: Vec<Item>, stall: bool) {
    let pool = pool();
    'items: for it in &items {
        let fds: Vec<BorrowedFd<'_>> = it.fds.iter().map(|&i| pool[i].0.as_fd()).collect();
        let mut off = 0;
        let mut first = true;
        while off < it.bytes.len() {
            let f: &[BorrowedFd<'_>] = if first { &fds } else { &[] };
            match send_some(sock.as_fd(), &[IoSlice::new(&it.bytes[off..])], f) {
                Ok(n) => {
                    off += n;
                    first = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut p = [PollFd::new(&sock, PollFlags::OUT)];
                    let _ = poll(&mut p, None);
                    if p[0].revents().intersects(PollFlags::HUP | PollFlags::ERR) {
                        break 'items;
                    }
                }
                Err(_) => break 'items,
            }
        }
    }
    if stall {
        // Wait for the client to hang up (it reads nothing more).
        loop {
            let mut p = [PollFd::new(&sock, PollFlags::RDHUP)];
            if poll(&mut p, None).is_ok() && !p[0].revents().is_empty() {
                break;
            }
        }
    }
}

/// What the call returned, reduced to what is checked.
enum Outcome {
    Unit,
    Fd(OwnedFd),
    Ids(Vec<Vec<u8>>),
    Dump(Vec<fdholder::DumpEntry>),
}

impl Outcome {
    fn nfds(&self) -> usize {
        match self {
            Outcome::Fd(_) => 1,
            Outcome::Dump(d) => d.len(),
            _ => 0,
        }
    }
}

/// How long the client is given; its deadline.
const DEADLINE: Duration = Duration::from_millis(20);
/// Slack for a loaded machine before "returned past its deadline" is a
/// failure (a hang).
const SLACK: Duration = Duration::from_secs(10);

/// Plays a script and checks the client's result and descriptors.
pub fn check_client(s: &Script) {
    let pool = pool();
    let base = open_fds();
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::fs::fcntl_setfl(&theirs, rustix::fs::OFlags::NONBLOCK).unwrap();
    let items = s.items.clone();
    let stall = s.stall;
    let fake = std::thread::spawn(move || fake_daemon(theirs, items, stall));
    let mut client = Client::from_fd(mine);
    let start = Instant::now();
    let deadline = Some(start + DEADLINE);
    let mine_id = b"id";
    let r: std::io::Result<Outcome> = match s.op {
        Op::Store => client
            .store(pool[0].0.as_fd(), mine_id, None, deadline)
            .map(|()| Outcome::Unit),
        Op::Delete => client.delete(mine_id, deadline).map(|()| Outcome::Unit),
        Op::Retrieve => client.retrieve(mine_id, deadline).map(Outcome::Fd),
        Op::RetrieveDelete => client.retrieve_delete(mine_id, deadline).map(Outcome::Fd),
        Op::List => client.list(deadline).map(Outcome::Ids),
        Op::GetDump => client.getdump(deadline).map(Outcome::Dump),
        Op::SetDump(n) => {
            let ids: Vec<Vec<u8>> = (0..n).map(|i| format!("e{i}").into_bytes()).collect();
            let dump: Vec<DumpEntryRef<'_>> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| DumpEntryRef {
                    id,
                    fd: pool[i % POOL].0.as_fd(),
                    limit: Tain::infinite_from(Tain::now()),
                })
                .collect();
            client.setdump(&dump, deadline).map(|()| Outcome::Unit)
        }
    };
    let took = start.elapsed();
    assert!(
        took <= DEADLINE + SLACK,
        "{:?}: returned after {took:?}, deadline {DEADLINE:?}",
        s.op
    );
    drop(client);
    fake.join().unwrap();
    if let Ok(out) = &r {
        check_value(s, out);
    }
    let held = r.as_ref().map_or(0, Outcome::nfds);
    settle_fds(base + held, base + held, &|| {
        format!("{:?}: {held} fds returned, the others must be closed", s.op)
    });
    drop(r);
    settle_fds(base, base, &|| format!("{:?}: fds left after drop", s.op));
}

/// An `Ok` value must be what the script's frames say.
fn check_value(s: &Script, out: &Outcome) {
    let stream: Vec<u8> = s.items.iter().flat_map(|i| i.bytes.clone()).collect();
    let sent: Vec<(u64, u64)> = s
        .items
        .iter()
        .flat_map(|i| i.fds.iter().map(|&f| pool()[f].1))
        .collect();
    let fr = frames(&stream, MAX_LEN);
    let first = fr
        .first()
        .unwrap_or_else(|| panic!("{:?}: Ok without an answer", s.op));
    match (s.op, out) {
        (Op::Store | Op::Delete, Outcome::Unit) => {
            assert_eq!(first, &(vec![0], 0), "{:?}: Ok from another answer", s.op);
        }
        (Op::Retrieve | Op::RetrieveDelete, Outcome::Fd(fd)) => {
            assert_eq!(first, &(vec![0], 1), "retrieve: Ok from another answer");
            assert_eq!(Some(&ident(fd)), sent.first(), "retrieve: not the fd sent");
        }
        (Op::List, Outcome::Ids(ids)) => {
            assert_eq!(first.1, 0, "list: an answer with fds accepted");
            let enc = proto::list_answer(ids.iter().map(|i| &i[..]));
            assert_eq!(enc, first.0, "list: returned {ids:?}, not what was sent");
        }
        (Op::GetDump, Outcome::Dump(d)) => {
            let (h, hn) = first;
            assert_eq!(*hn, 0, "getdump: a header with fds accepted");
            assert_eq!(h.len(), 9, "getdump: header {h:?}");
            assert_eq!(h[0], 0);
            let chunks = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
            let total = u32::from_be_bytes(h[5..9].try_into().unwrap()) as usize;
            assert_eq!(
                d.len(),
                total,
                "getdump: {} entries, {total} announced",
                d.len()
            );
            assert!(fr.len() > chunks, "getdump: fewer chunks than announced");
            let mut at = 0;
            for (p, n) in &fr[1..=chunks] {
                assert!(*n > 0, "getdump: a chunk without fds accepted");
                let mut enc = Vec::new();
                for e in &d[at..at + n] {
                    proto::push_entry(&mut enc, e.limit, &e.id);
                }
                assert_eq!(&enc, p, "getdump: entries differ from the chunk");
                at += n;
            }
            assert_eq!(at, total);
            for (i, e) in d.iter().enumerate() {
                assert_eq!(Some(&ident(&e.fd)), sent.get(i), "getdump: entry {i}'s fd");
            }
        }
        (Op::SetDump(n), Outcome::Unit) => {
            let (h, hn) = first;
            assert!(
                h.len() == 5 && h[0] == 0 && *hn == 0,
                "setdump: accepted by {h:?}"
            );
            let chunks = n.div_ceil(MAX_FDS);
            assert!(
                fr.len() > chunks,
                "setdump: Ok before every chunk was answered"
            );
            for (i, (p, pn)) in fr[1..=chunks].iter().enumerate() {
                let want = if i + 1 == chunks {
                    0
                } else {
                    rustix::io::Errno::AGAIN.raw_os_error() as u8
                };
                assert_eq!((p, *pn), (&vec![want], 0), "setdump: chunk {i}'s answer");
            }
        }
        (op, _) => panic!("{op:?}: wrong kind of value"),
    }
}

/// The target: arbitrary bytes as a script.
pub fn client_from_bytes(data: &[u8]) {
    check_client(&script_from_bytes(data));
}
