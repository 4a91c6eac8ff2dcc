//! Model-based randomized test of the daemon: a seeded, reproducible run of
//! random operations (store with and without expiry, retrieve, retrieve
//! -D, delete, list, getdump, setdump, waiting for expiries) from several
//! connections driven in an interleaved order, plus fresh connections now
//! and then. After every step the daemon is checked against an in-memory
//! model: the answer (errno included), the set of ids, each retrieved fd
//! being the very open file stored (st_dev/st_ino and file offset), each
//! dumped limit, and the daemon's open-fd count being its fixed overhead
//! plus the connections plus the fds the model holds.
//!
//! `FDHOLDER_SEED` sets the seed (default fixed); `FDHOLDER_MODEL_OPS` the
//! number of operations (default 10,000). The seed is printed, and every
//! failure message carries it and the step number.

mod common;
mod rng;

use rng::Rng;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, identity};
use fdholder::{Client, DumpEntryRef, Tain};

/// What the model knows of a held fd.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    ident: (u64, u64),
    offset: u64,
    limit: Tain,
}

const MAXFDS: usize = 30;
const STABLE_IDS: usize = 40;
const VOLATILE_IDS: usize = 8;
const CLIENTS: usize = 4;

/// Ids: short, long (255 bytes) and odd bytes; volatile ones (short
/// expiries) in their own namespace.
fn ids() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut stable: Vec<Vec<u8>> = Vec::new();
    for i in 0..STABLE_IDS {
        let mut id = format!("k{i}").into_bytes();
        match i % 5 {
            1 => id.resize(255, b'L'),
            2 => id.extend_from_slice(&[1, 0x7f, 0xff, b'\n', b' ']),
            3 => id.extend_from_slice(b"/.*[x]"),
            _ => {}
        }
        stable.push(id);
    }
    let volatile = (0..VOLATILE_IDS)
        .map(|i| format!("v{i}").into_bytes())
        .collect();
    (stable, volatile)
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

struct Model {
    held: BTreeMap<Vec<u8>, Held>,
    /// Volatile ids stored with a short expiry: present or already gone.
    volatile: BTreeMap<Vec<u8>, Instant>,
}

struct Run {
    seed: u64,
    step: usize,
    rng: Rng,
    d: Daemon,
    clients: Vec<Client>,
    files: Vec<std::path::PathBuf>,
    model: Model,
    overhead: usize,
    stable: Vec<Vec<u8>>,
    volatile_ids: Vec<Vec<u8>>,
    counts: BTreeMap<&'static str, usize>,
}

macro_rules! check {
    ($r:expr, $cond:expr, $($fmt:tt)*) => {
        if !$cond {
            panic!("seed {} step {}: {}", $r.seed, $r.step, format!($($fmt)*));
        }
    };
}

impl Run {
    fn ctx(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    /// A fresh open file (its own open file description) at a random
    /// offset, and what the model records for it.
    fn fresh_file(&mut self) -> (File, (u64, u64), u64) {
        let p = &self.files[self.rng.below(self.files.len())];
        let mut f = File::open(p).unwrap();
        let off = self.rng.below(1 << 20) as u64;
        f.seek(SeekFrom::Start(off)).unwrap();
        let ident = identity(&f);
        (f, ident, off)
    }

    fn check_fd(&self, fd: &OwnedFd, h: &Held, what: &str) {
        check!(self, identity(fd) == h.ident, "{what}: not the file stored");
        let off = rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(0)).unwrap();
        check!(
            self,
            off == h.offset,
            "{what}: offset {off} != {}",
            h.offset
        );
    }

    /// Fds held by the daemon: certain unless volatile ids may linger.
    fn held_range(&self) -> (usize, usize) {
        let n = self.model.held.len();
        (n, n + self.model.volatile.len())
    }

    fn limit(&mut self) -> Tain {
        let now = Tain::now();
        if self.rng.chance(50) {
            Tain::infinite_from(now)
        } else {
            // Finite but far: never expires during the run.
            now.add_secs(3600 + self.rng.below(1 << 20) as u64)
        }
    }

    fn op_store(&mut self, c: usize) {
        let (lo, hi) = self.held_range();
        let id = self.stable[self.rng.below(self.stable.len())].clone();
        let full = lo >= MAXFDS;
        if !full && hi >= MAXFDS {
            return; // ENFILE or not depends on expiries: skip.
        }
        let (f, ident, offset) = self.fresh_file();
        let limit = self.limit();
        let r = self.clients[c].store(f.as_fd(), &id, Some(limit), None);
        drop(f);
        let want = if full {
            libc::ENFILE
        } else if self.model.held.contains_key(&id) {
            libc::EBUSY
        } else {
            0
        };
        let got = r.map_or_else(errno, |_| 0);
        check!(self, got == want, "store: errno {got}, want {want}");
        if want == 0 {
            self.model.held.insert(
                id,
                Held {
                    ident,
                    offset,
                    limit,
                },
            );
        }
        let what = match want {
            0 => "store",
            libc::EBUSY => "store EBUSY",
            _ => "store ENFILE",
        };
        *self.counts.entry(what).or_default() += 1;
    }

    fn op_store_volatile(&mut self, c: usize) {
        let (_, hi) = self.held_range();
        if hi >= MAXFDS {
            return;
        }
        let free: Vec<Vec<u8>> = self
            .volatile_ids
            .iter()
            .filter(|v| !self.model.volatile.contains_key(*v))
            .cloned()
            .collect();
        if free.is_empty() {
            return;
        }
        let id = free[self.rng.below(free.len())].clone();
        let ms = 5 + self.rng.below(20) as u64;
        let (f, _, _) = self.fresh_file();
        let limit = Tain::now() + Duration::from_millis(ms);
        self.clients[c]
            .store(f.as_fd(), &id, Some(limit), None)
            .unwrap_or_else(|e| panic!("{}: volatile store: {e}", self.ctx()));
        self.model
            .volatile
            .insert(id, Instant::now() + Duration::from_millis(ms));
        *self.counts.entry("store with expiry").or_default() += 1;
    }

    fn op_wait_expiries(&mut self) {
        let Some(last) = self.model.volatile.values().max().copied() else {
            return;
        };
        let now = Instant::now();
        if last > now {
            std::thread::sleep(last - now + Duration::from_millis(2));
        }
        // The daemon expires on time; poll (bounded) rather than assume.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let l = self.clients[0].list(None).unwrap();
            if !l.iter().any(|id| self.model.volatile.contains_key(id)) {
                break;
            }
            check!(self, Instant::now() < end, "volatile ids never expired");
            std::thread::sleep(Duration::from_millis(2));
        }
        self.model.volatile.clear();
        *self.counts.entry("expiry wait").or_default() += 1;
    }

    fn pick_id(&mut self) -> Vec<u8> {
        // Mostly held ids, sometimes absent ones.
        if !self.model.held.is_empty() && self.rng.chance(75) {
            let i = self.rng.below(self.model.held.len());
            self.model.held.keys().nth(i).unwrap().clone()
        } else {
            self.stable[self.rng.below(self.stable.len())].clone()
        }
    }

    fn op_retrieve(&mut self, c: usize, delete: bool) {
        let id = self.pick_id();
        let r = if delete {
            self.clients[c].retrieve_delete(&id, None)
        } else {
            self.clients[c].retrieve(&id, None)
        };
        match (r, self.model.held.get(&id).cloned()) {
            (Ok(fd), Some(h)) => {
                self.check_fd(&fd, &h, "retrieve");
                if delete {
                    self.model.held.remove(&id);
                }
            }
            (Err(e), None) => {
                check!(self, errno(e) == libc::ENOENT, "retrieve: wrong errno");
            }
            (r, h) => check!(self, false, "retrieve: got {r:?}, model {h:?}"),
        }
        *self
            .counts
            .entry(if delete { "retrieve -D" } else { "retrieve" })
            .or_default() += 1;
    }

    fn op_delete(&mut self, c: usize) {
        let id = self.pick_id();
        let r = self.clients[c].delete(&id, None);
        let want = if self.model.held.remove(&id).is_some() {
            0
        } else {
            libc::ENOENT
        };
        let got = r.map_or_else(errno, |_| 0);
        check!(self, got == want, "delete: errno {got}, want {want}");
        *self.counts.entry("delete").or_default() += 1;
    }

    fn check_ids(&self, got: &[Vec<u8>], what: &str) {
        let mut stable: Vec<&Vec<u8>> = got
            .iter()
            .filter(|id| !self.model.volatile.contains_key(*id))
            .collect();
        stable.sort();
        let want: Vec<&Vec<u8>> = self.model.held.keys().collect();
        check!(self, stable == want, "{what}: ids differ");
        check!(
            self,
            got.len() <= stable.len() + self.model.volatile.len(),
            "{what}: extra ids"
        );
    }

    fn op_list(&mut self, c: usize) {
        let l = self.clients[c].list(None).unwrap();
        self.check_ids(&l, "list");
        *self.counts.entry("list").or_default() += 1;
    }

    fn op_getdump(&mut self, c: usize) {
        let dump = self.clients[c].getdump(None).unwrap();
        let ids: Vec<Vec<u8>> = dump.iter().map(|e| e.id.clone()).collect();
        self.check_ids(&ids, "getdump");
        for e in &dump {
            if let Some(h) = self.model.held.get(&e.id) {
                self.check_fd(&e.fd, h, "getdump");
                check!(self, e.limit == h.limit, "getdump: limit differs");
            }
        }
        *self.counts.entry("getdump").or_default() += 1;
    }

    fn op_setdump(&mut self, c: usize) {
        let n = 1 + self.rng.below(6);
        let mut entries: Vec<(Vec<u8>, File, Held)> = Vec::new();
        for _ in 0..n {
            let id = self.stable[self.rng.below(self.stable.len())].clone();
            if entries.iter().any(|e| e.0 == id) {
                continue;
            }
            let (f, ident, offset) = self.fresh_file();
            let limit = self.limit();
            entries.push((
                id,
                f,
                Held {
                    ident,
                    offset,
                    limit,
                },
            ));
        }
        let (lo, hi) = self.held_range();
        let full = entries.len() + lo > MAXFDS;
        if !full && entries.len() + hi > MAXFDS {
            return;
        }
        let refs: Vec<DumpEntryRef<'_>> = entries
            .iter()
            .map(|(id, f, h)| DumpEntryRef {
                id,
                fd: f.as_fd(),
                limit: h.limit,
            })
            .collect();
        let r = self.clients[c].setdump(&refs, None);
        let got = r.map_or_else(errno, |_| 0);
        let want = if full { libc::ENFILE } else { 0 };
        check!(self, got == want, "setdump: errno {got}, want {want}");
        if want == 0 {
            for (id, _, h) in entries {
                // An id already held is replaced.
                self.model.held.insert(id, h);
            }
        }
        *self
            .counts
            .entry(if want == 0 {
                "setdump"
            } else {
                "setdump refused"
            })
            .or_default() += 1;
    }

    fn check_fd_count(&mut self) {
        if !self.model.volatile.is_empty() {
            return;
        }
        *self.counts.entry("(fd count checks)").or_default() += 1;
        let want = self.overhead + self.clients.len() + self.model.held.len();
        let got = self.d.wait_fds(want);
        check!(
            self,
            got == want,
            "daemon has {got} fds open, model says {want}"
        );
    }

    fn step(&mut self) {
        let c = self.rng.below(CLIENTS);
        match self.rng.below(1000) {
            0..=299 => self.op_store(c),
            300..=449 => self.op_retrieve(c, false),
            450..=549 => self.op_retrieve(c, true),
            550..=699 => self.op_delete(c),
            700..=779 => self.op_list(c),
            780..=819 => self.op_getdump(c),
            820..=899 => self.op_setdump(c),
            900..=939 => self.op_store_volatile(c),
            940..=979 => self.op_wait_expiries(),
            _ => {
                // A fresh connection in place of an old one.
                self.clients[c] = self.d.client();
                *self.counts.entry("fresh connection").or_default() += 1;
            }
        }
        self.check_fd_count();
    }
}

#[test]
fn model_based_random_run() {
    let seed = std::env::var("FDHOLDER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_u64);
    let ops: usize = std::env::var("FDHOLDER_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    println!("model run: FDHOLDER_SEED={seed} FDHOLDER_MODEL_OPS={ops}");
    let n = MAXFDS.to_string();
    let d = Daemon::with_args(Impl::Ours, &["-n", &n]);
    let overhead = d.open_fds();
    let files = (0..16)
        .map(|i| {
            let p = d.dir.join(format!("file{i}"));
            std::fs::write(&p, format!("{i}")).unwrap();
            p
        })
        .collect();
    let clients = (0..CLIENTS).map(|_| d.client()).collect();
    let (stable, volatile_ids) = ids();
    let mut r = Run {
        seed,
        step: 0,
        rng: Rng(seed),
        d,
        clients,
        files,
        model: Model {
            held: BTreeMap::new(),
            volatile: BTreeMap::new(),
        },
        overhead,
        stable,
        volatile_ids,
        counts: BTreeMap::new(),
    };
    for i in 0..ops {
        r.step = i;
        r.step();
    }
    // The end: everything checked one last time, then released.
    r.op_wait_expiries();
    r.op_getdump(0);
    r.check_fd_count();
    let ids: Vec<Vec<u8>> = r.model.held.keys().cloned().collect();
    for id in ids {
        r.clients[0].delete(&id, None).unwrap();
        r.model.held.remove(&id);
    }
    r.clients.clear();
    assert_eq!(r.d.wait_fds(overhead), overhead, "{}", r.ctx());
    println!("operations: {:?}", r.counts);
    let total: usize = r
        .counts
        .iter()
        .filter(|(k, _)| !k.starts_with('('))
        .map(|(_, v)| v)
        .sum();
    assert!(
        total >= ops * 9 / 10,
        "too many skipped operations: {total}"
    );
}
