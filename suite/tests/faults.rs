//! Exhaustion, signals and faults: maxconn reached with idle clients,
//! `-t` freeing slots, maxfds reached in the middle of a setdump, the
//! daemon itself out of descriptors, clients unable to receive an fd,
//! SIGTERM during a setdump or a getdump, SIGHUP with the cdb gone, peers
//! and loggers that vanish (EPIPE, never SIGPIPE), and dumps transferred
//! to other daemons and back. Where the reference daemon can do the same,
//! it runs too and must agree.

mod common;
mod raw;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, Opts, file_with, have_reference, identity, ours};
use fdholder::proto;
use fdholder::{Client, DumpEntryRef, Tain};
use raw::{Raw, Reply, msg};
use rustix::process::Signal;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Ours];
    if have_reference() {
        v.push(Impl::Reference);
    }
    v
}

fn inf() -> Tain {
    Tain::infinite_from(Tain::now())
}

/// Polls (at most 5 s) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ids(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut id = format!("{i:05}-").into_bytes();
            id.resize(len.max(6), b'x');
            id
        })
        .collect()
}

fn setdump_many(d: &Daemon, ids: &[Vec<u8>], f: &File) {
    let entries: Vec<DumpEntryRef<'_>> = ids
        .iter()
        .map(|id| DumpEntryRef {
            id,
            fd: f.as_fd(),
            limit: inf(),
        })
        .collect();
    d.client().setdump(&entries, None).unwrap();
}

#[test]
fn maxconn_reached_the_loop_stays_alive() {
    for which in impls() {
        let d = Daemon::with_args(which, &["-c", "3"]);
        let base = d.open_fds();
        let f = file_with(&d.dir, "f", b"");
        let mut a = d.client();
        a.store(f.as_fd(), b"keep", None, None).unwrap();
        let soon = Tain::now() + Duration::from_millis(150);
        a.store(f.as_fd(), b"soon", Some(soon), None).unwrap();
        let b = Raw::connect(&d.sock);
        let c = Raw::connect(&d.sock);
        // Full. Expiry still happens on time while nobody can get in.
        assert_eq!(
            d.wait_fds(base + 3 + 1),
            base + 4,
            "{which:?}: no expiry while full"
        );
        // A fourth waits in the backlog, its request unanswered...
        let mut w = Raw::connect(&d.sock);
        w.send(&msg(b"L", 0), &[]).unwrap();
        assert!(
            w.recv_within(150).is_none(),
            "{which:?}: served beyond maxconn"
        );
        // ...until a slot frees.
        drop(b);
        assert_eq!(w.recv().code(), 0, "{which:?}");
        // The daemon still answers everyone connected.
        assert_eq!(a.list(None).unwrap(), vec![b"keep".to_vec()]);
        drop((a, c, w));
        assert_eq!(d.wait_fds(base + 1), base + 1, "{which:?}");
        d.client().delete(b"keep", None).unwrap();
        assert_eq!(d.wait_fds(base), base, "{which:?}");
    }
}

#[test]
fn maxconn_256_idle_clients_then_all_leave() {
    let d = Daemon::with_args(Impl::Ours, &["-c", "1000"]);
    let base = d.open_fds();
    // -c is clamped to 256.
    let idle: Vec<UnixStream> = (0..256)
        .map(|_| UnixStream::connect(&d.sock).unwrap())
        .collect();
    assert_eq!(d.wait_fds(base + 256), base + 256);
    let mut extra = Raw::connect(&d.sock);
    extra.send(&msg(b"L", 0), &[]).unwrap();
    assert!(extra.recv_within(150).is_none(), "served a 257th client");
    drop(idle);
    assert_eq!(extra.recv().code(), 0);
    drop(extra);
    for _ in 0..10 {
        d.client().list(None).unwrap();
    }
    assert_eq!(d.wait_fds(base), base);
}

#[test]
fn client_timeout_frees_the_slots_of_idle_clients() {
    let d = Daemon::with_args(Impl::Ours, &["-c", "2", "-t", "200"]);
    let base = d.open_fds();
    let idle1 = UnixStream::connect(&d.sock).unwrap();
    let idle2 = UnixStream::connect(&d.sock).unwrap();
    // Full with two idle clients: a third is served once -t drops them.
    let mut c = Client::connect(&d.sock, Some(Instant::now() + Duration::from_secs(10))).unwrap();
    assert!(
        c.list(Some(Instant::now() + Duration::from_secs(10)))
            .is_ok()
    );
    drop((idle1, idle2, c));
    assert_eq!(d.wait_fds(base), base);
}

#[test]
fn maxfds_reached_mid_setdump_gives_enfile_and_recovers() {
    for which in impls() {
        let d = Daemon::with_args(which, &["-n", "5"]);
        let base = d.open_fds();
        let f = file_with(&d.dir, "f", b"");
        let mut a = Raw::connect(&d.sock);
        a.send(&msg(&proto::setdump(3), 0), &[]).unwrap();
        assert_eq!(a.recv().code(), 0);
        // Meanwhile another client fills the store.
        let mut b = d.client();
        for id in [&b"b1"[..], b"b2", b"b3"] {
            b.store(f.as_fd(), id, None, None).unwrap();
        }
        let mut chunk = vec![proto::OP_SETDUMP_CHUNK];
        for id in ["d1", "d2", "d3"] {
            proto::push_entry(&mut chunk, inf(), id.as_bytes());
        }
        let fds = [f.as_fd(), f.as_fd(), f.as_fd()];
        a.send(&msg(&chunk, 3), &fds).unwrap();
        assert_eq!(a.recv().code(), libc::ENFILE as u8, "{which:?}");
        // Nothing of the refused chunk stayed.
        assert_eq!(d.wait_fds(base + 2 + 3), base + 5, "{which:?}");
        b.delete(b"b1", None).unwrap();
        a.send(&msg(&chunk, 3), &fds).unwrap();
        assert_eq!(a.recv().code(), 0, "{which:?}");
        let mut l = b.list(None).unwrap();
        l.sort();
        assert_eq!(l.len(), 5, "{which:?}");
        assert_eq!(
            errno(b.store(f.as_fd(), b"x", None, None).unwrap_err()),
            libc::ENFILE
        );
        for id in l {
            b.delete(&id, None).unwrap();
        }
        drop((a, b));
        assert_eq!(d.wait_fds(base), base, "{which:?}");
    }
}

#[test]
fn rlimit_clamp_as_the_reference() {
    // -n above the limit: limit - 6; -n well within it: kept. (-n within 6
    // of the limit: see held_fds_never_take_the_last_descriptors.)
    for which in impls() {
        for (nofile, n, want) in [(30, "1000", 24), (30, "10", 10)] {
            let d = Daemon::start_with(
                which,
                Opts {
                    nofile: Some(nofile),
                    args: &["-n", n],
                    ..Opts::default()
                },
            );
            let base = d.open_fds();
            let mut c = d.client();
            let f = file_with(&d.dir, "f", b"");
            let mut stored = 0;
            for i in 0..40 {
                match c.store(f.as_fd(), format!("{i}").as_bytes(), None, None) {
                    Ok(()) => stored += 1,
                    Err(e) => {
                        if errno(e) != libc::ENFILE {
                            // The daemon ran out of descriptors itself and
                            // dropped the connection: reconnect.
                            c = match Client::connect(&d.sock, None) {
                                Ok(c) => c,
                                Err(_) => break,
                            };
                        }
                        break;
                    }
                }
            }
            assert_eq!(
                stored,
                // As many as maxfds, or as the daemon has descriptors for
                // (one is the connection's).
                want.min(nofile as usize - base - 1),
                "{which:?} ulimit {nofile} -n {n}"
            );
            drop(c);
            // Recovers: deletes then stores again.
            eventually("reconnect", || {
                Client::connect(&d.sock, None)
                    .and_then(|mut c| c.list(None))
                    .is_ok()
            });
            let mut c = d.client();
            c.delete(b"0", None).unwrap();
            c.store(f.as_fd(), b"again", None, None).unwrap();
        }
    }
}

#[test]
fn held_fds_never_take_the_last_descriptors() {
    // -n within 6 of RLIMIT_NOFILE is lowered to the limit - 6 (the
    // reference keeps it, and can then fill every descriptor with held fds,
    // accept nobody, and die on accept's EMFILE). So a full daemon answers
    // ENFILE on the same connection, stays reachable, and frees room as fds
    // expire.
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            nofile: Some(16),
            args: &["-n", "16"],
            ..Opts::default()
        },
    );
    let base = d.open_fds();
    let f = file_with(&d.dir, "f", b"");
    let soon = Tain::now() + Duration::from_millis(300);
    let mut c = d.client();
    for id in [&b"e1"[..], b"e2"] {
        c.store(f.as_fd(), id, Some(soon), None).unwrap();
    }
    let mut stored = 2;
    let dl = || Some(Instant::now() + Duration::from_secs(2));
    for i in 0..30 {
        match c.store(f.as_fd(), format!("{i}").as_bytes(), None, dl()) {
            Ok(()) => stored += 1,
            Err(e) => {
                assert_eq!(errno(e), libc::ENFILE);
                break;
            }
        }
    }
    assert!(c.list(dl()).is_ok(), "the connection survives a full store");
    drop(c);
    assert_eq!(stored, 16 - 6, "maxfds is the limit - 6");
    // The two with a limit expire and make room.
    eventually("the two expire", || {
        Client::connect(&d.sock, dl())
            .and_then(|mut c| c.list(dl()))
            .is_ok_and(|l| l.len() == stored - 2)
    });
    let mut c = d.client();
    c.store(f.as_fd(), b"room again", None, None).unwrap();
    let l = c.list(None).unwrap();
    assert_eq!(l.len(), stored - 1);
    for id in l {
        c.delete(&id, None).unwrap();
    }
    drop(c);
    assert_eq!(d.wait_fds(base), base);
    let mut d = d;
    assert!(d.child.try_wait().unwrap().is_none());
}

/// A `bash -c` script that opens `n` descriptors (3, 4, ...) on
/// `/dev/null`, not close-on-exec, then execs its arguments: they are
/// inherited by the daemon.
fn extra_fds_script(n: usize) -> String {
    let opens: String = (3..3 + n).map(|fd| format!(" {fd}</dev/null")).collect();
    if opens.is_empty() {
        "exec \"$@\"".to_owned()
    } else {
        format!("exec{opens}; exec \"$@\"")
    }
}

/// Runs `prog` (a `s6-fdholder-store`) storing its stdin, a file, under
/// `id` in `d`.
fn store_program(prog: &std::path::Path, d: &Daemon, id: &str) -> common::Outcome {
    let stdin = File::open(d.dir.join("f")).unwrap();
    common::run_cmd(Command::new(prog).arg(&d.sock).arg(id).stdin(stdin))
}

#[test]
fn a_full_store_answers_enfile_whatever_descriptors_were_inherited() {
    // RLIMIT_NOFILE 100, -n 1000 (more than the limit allows), and the
    // daemon started with 0, 1, 2 or 7 descriptors more than 0, 1, 2: -n
    // is lowered to what is left below the limit once the daemon's own
    // descriptors (those it was given included) are open, less one for a
    // connection and one for the fd a request brings. So every store past
    // the limit is answered ENFILE, on the same connection, which keeps
    // working; the programs say ENFILE too; a delete works, a store after
    // it works, and the daemon's descriptors come back to their count.
    // The reference lowers -n to the limit - 6 whatever it inherited: it
    // runs here with nothing extra only (its own are 3: with one more, a
    // new client is refused while it is full, its rules unreadable; with
    // two more, the store past the limit loses its connection).
    let msg = "s6-fdholder-store: fatal: unable to store fd: Too many open files in system\n";
    let mut cases = vec![
        (Impl::Ours, 0),
        (Impl::Ours, 1),
        (Impl::Ours, 2),
        (Impl::Ours, 7),
    ];
    if have_reference() {
        cases.push((Impl::Reference, 0));
    }
    let dl = || Some(Instant::now() + Duration::from_secs(5));
    for (which, extra) in cases {
        let what = format!("{which:?}, {extra} more inherited");
        let script = extra_fds_script(extra);
        let wrap = ["/bin/bash", "-c", script.as_str(), "extra-fds"];
        let d = Daemon::start_with(
            which,
            Opts {
                nofile: Some(100),
                args: &["-n", "1000"],
                wrap: &wrap,
                ..Opts::default()
            },
        );
        let base = d.open_fds();
        assert!(base >= 3 + extra, "{what}: {base} open");
        let f = file_with(&d.dir, "f", b"");
        let mut c = d.client();
        let mut stored = 0;
        loop {
            match c.store(f.as_fd(), format!("{stored}").as_bytes(), None, dl()) {
                Ok(()) => stored += 1,
                Err(e) => {
                    assert_eq!(errno(e), libc::ENFILE, "{what}: store {stored}");
                    break;
                }
            }
            assert!(stored <= 100, "{what}: more stored than the limit allows");
        }
        // Ours: all the room but a connection and the fd it brings. The
        // reference: the limit - 6 (its own are 3: 0, 2 and a signalfd).
        let want = match which {
            Impl::Ours => 100 - base - 2,
            Impl::Reference => 100 - 6,
        };
        assert_eq!(stored, want, "{what}: {base} open");
        for i in 0..3 {
            let e = c.store(f.as_fd(), b"past", None, dl()).unwrap_err();
            assert_eq!(errno(e), libc::ENFILE, "{what}: store past the limit {i}");
        }
        assert_eq!(c.list(dl()).unwrap().len(), stored, "{what}");
        drop(c);
        assert_eq!(d.wait_fds(base + stored), base + stored, "{what}");
        // The programs, ours and the reference's, see ENFILE and exit 1.
        let mut progs = vec![ours("s6-fdholder-store")];
        progs.extend(common::reference("s6-fdholder-store"));
        for prog in &progs {
            let out = store_program(prog, &d, "past");
            assert_eq!(
                (out.code, out.stderr.as_str()),
                (1, msg),
                "{what}: {prog:?}"
            );
        }
        assert_eq!(d.wait_fds(base + stored), base + stored, "{what}");
        // A delete frees a slot, which a store takes; then full again.
        let mut c = d.client();
        c.delete(b"0", dl()).unwrap();
        c.store(f.as_fd(), b"again", None, dl()).unwrap();
        let e = c.store(f.as_fd(), b"past", None, dl()).unwrap_err();
        assert_eq!(errno(e), libc::ENFILE, "{what}: full again");
        for id in c.list(dl()).unwrap() {
            c.delete(&id, dl()).unwrap();
        }
        drop(c);
        assert_eq!(d.wait_fds(base), base, "{what}: back to the baseline");
        drop(f);
    }
}

#[test]
fn client_unable_to_receive_the_fd_loses_nothing_in_the_daemon() {
    for which in impls() {
        let d = Daemon::start(which);
        let base = d.open_fds() + 1;
        let f = file_with(&d.dir, "f", b"hello");
        d.client().store(f.as_fd(), b"x", None, None).unwrap();
        assert_eq!(d.wait_fds(base), base);
        // The retriever has fds 0, 1, 2 and its socket: no room for the fd.
        for flag in [None, Some("-D")] {
            let mut cmd = Command::new("bash");
            cmd.arg("-c")
                .arg("ulimit -n 4 && exec \"$@\"")
                .arg("bash")
                .arg(ours("s6-fdholder-retrieve"));
            if let Some(fl) = flag {
                cmd.arg(fl);
            }
            cmd.arg(&d.sock).arg("x").arg("true");
            let out = common::run_cmd(cmd.stdin(Stdio::null()));
            assert_ne!(out.code, 0, "{which:?}: {out:?}");
            if flag.is_none() {
                // Still held, the same open file, nothing leaked.
                let got = d.client().retrieve(b"x", None).unwrap();
                assert_eq!(identity(&got), identity(&f));
                assert_eq!(d.wait_fds(base), base, "{which:?}");
            } else {
                // -D: the daemon let go of it as asked (both daemons do).
                assert_eq!(
                    errno(d.client().retrieve(b"x", None).unwrap_err()),
                    libc::ENOENT
                );
                assert_eq!(d.wait_fds(base - 1), base - 1, "{which:?}");
            }
        }
    }
}

/// A setdump announcing 300 fds, its first chunk (253) sent and answered.
fn setdump_started(d: &Daemon, f: &File) -> Raw {
    let mut a = Raw::connect(&d.sock);
    a.send(&msg(&proto::setdump(300), 0), &[]).unwrap();
    assert_eq!(a.recv().code(), 0);
    let mut chunk = vec![proto::OP_SETDUMP_CHUNK];
    for i in 0..253 {
        proto::push_entry(&mut chunk, inf(), format!("s{i}").as_bytes());
    }
    let fds: Vec<_> = (0..253).map(|_| f.as_fd()).collect();
    a.send(&msg(&chunk, 253), &fds).unwrap();
    assert_eq!(a.recv().code(), libc::EAGAIN as u8);
    a
}

fn wait_exit(d: Daemon) -> Option<i32> {
    let mut d = d;
    common::wait_timeout(&mut d.child, Duration::from_secs(10))
}

#[test]
fn sigterm_between_setdump_chunks() {
    for which in impls() {
        let d = Daemon::start(which);
        let f = file_with(&d.dir, "f", b"");
        let _a = setdump_started(&d, &f);
        // Nothing pending: the daemon exits at once, fds held and a
        // client connected (bits 0 and 1).
        assert_eq!(d.terminate(), Some(3), "{which:?}");
    }
}

#[test]
fn sigterm_mid_setdump_chunk_waits_for_it() {
    // Ours only: the reference does not take in the partial chunk's fds
    // before its bytes are complete, so there is no telling when it has
    // read them.
    for which in [Impl::Ours] {
        let d = Daemon::start(which);
        let f = file_with(&d.dir, "f", b"");
        let mut a = setdump_started(&d, &f);
        let mut chunk = vec![proto::OP_SETDUMP_CHUNK];
        for i in 0..47 {
            proto::push_entry(&mut chunk, inf(), format!("t{i}").as_bytes());
        }
        let m = msg(&chunk, 47);
        let fds: Vec<_> = (0..47).map(|_| f.as_fd()).collect();
        a.send(&m[..100], &fds).unwrap();
        eventually(&format!("{which:?} partial chunk read"), || {
            d.open_fds() > 253 + 47
        });
        d.signal(Signal::TERM);
        // Lame duck without -T: the partial request is waited for...
        assert!(a.recv_within(100).is_none(), "{which:?}");
        a.send(&m[100..], &[]).unwrap();
        // ...handled and answered, then the daemon exits.
        assert_eq!(a.recv().code(), 0, "{which:?}");
        assert_eq!(wait_exit(d), Some(3), "{which:?}");
    }
}

#[test]
fn sigterm_mid_setdump_chunk_with_lameduck_timeout() {
    for which in impls() {
        let d = Daemon::with_args(which, &["-T", "200"]);
        let f = file_with(&d.dir, "f", b"");
        let a = setdump_started(&d, &f);
        let mut chunk = vec![proto::OP_SETDUMP_CHUNK];
        proto::push_entry(&mut chunk, inf(), b"t");
        a.send(&msg(&chunk, 1)[..10], &[f.as_fd()]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        d.signal(Signal::TERM);
        // The chunk never completes: -T ends the wait.
        let code = wait_exit(d);
        if which == Impl::Ours {
            assert_eq!(code, Some(3));
        } else {
            // The reference exits 1 here: it dropped the client with the
            // incomplete request (bit 1 clear).
            assert!(matches!(code, Some(1) | Some(3)), "{code:?}");
        }
        drop(a);
    }
}

#[test]
fn sigterm_during_getdump_with_lameduck_timeout_and_a_reader_that_never_reads() {
    let d = Daemon::with_args(Impl::Ours, &["-T", "200", "-n", "3000"]);
    let f = file_with(&d.dir, "f", b"");
    setdump_many(&d, &ids(2000, 200), &f);
    let r = Raw::connect(&d.sock);
    r.send(&msg(b"?", 0), &[]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    d.signal(Signal::TERM);
    assert_eq!(wait_exit(d), Some(3));
    drop(r);
}

#[test]
fn sighup_with_the_cdb_gone_keeps_the_rules() {
    for which in impls() {
        let dir = common::TempDir::new("hup");
        let rules = common::full_rules(dir.path());
        let cdb = dir.join("rules.cdb");
        let out = common::run_cmd(
            Command::new(ours("s6-accessrules-cdb-from-fs"))
                .arg(&cdb)
                .arg(&rules),
        );
        assert_eq!(out.code, 0, "{out:?}");
        let d = Daemon::with_rules(which, "-x", cdb.clone());
        d.client().list(None).unwrap();
        std::fs::remove_file(&cdb).unwrap();
        d.signal(Signal::HUP);
        if which == Impl::Ours {
            // The reference keeps the old rules silently.
            eventually("a warning", || d.stderr().contains("warning"));
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The previous rules still hold, for old and new connections.
        d.client().list(None).unwrap();
        d.client().list(None).unwrap();
        assert!(d.terminate().is_some());
    }
}

/// Compiles `rules` into the cdb `cdb` with our `s6-accessrules-cdb-from-fs`.
fn compile_rules(rules: &std::path::Path, cdb: &std::path::Path) {
    let out = common::run_cmd(
        Command::new(ours("s6-accessrules-cdb-from-fs"))
            .arg(cdb)
            .arg(rules),
    );
    assert_eq!(out.code, 0, "{out:?}");
}

/// Puts `bytes` at `path` by a rename, as an editor or `cdb-from-fs` does
/// (the reference maps its cdb: rewriting it in place under the map would
/// be another test).
fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Whether a fresh connection is served (a list answered).
fn served(d: &Daemon) -> bool {
    Client::connect(&d.sock, Some(Instant::now() + Duration::from_secs(5)))
        .and_then(|mut c| c.list(Some(Instant::now() + Duration::from_secs(5))))
        .is_ok()
}

#[test]
fn sighup_with_an_invalid_cdb_refuses_everyone() {
    // "Revoke everyone by emptying the rules": a rules file that is not a
    // valid cdb, installed and signalled, refuses every new connection, as
    // the reference does (it maps whatever file it finds, and each lookup
    // then fails or finds nothing). Ours says so once, at the SIGHUP. A
    // valid cdb and another SIGHUP serve again. The empty file (0 bytes)
    // is ours only: the reference cannot map it and keeps the old rules.
    let mut cases: Vec<(Impl, &str, Vec<u8>)> = Vec::new();
    for which in impls() {
        cases.push((which, "echo > rules.cdb", b"\n".to_vec()));
        cases.push((which, "2047 zero bytes", vec![0; 2047]));
    }
    cases.push((Impl::Ours, "an empty file", Vec::new()));
    cases.push((Impl::Ours, "a cdb cut short", Vec::new()));
    for (which, what, bytes) in cases {
        let dir = common::TempDir::new("hupbad");
        let rules = common::full_rules(dir.path());
        let cdb = dir.join("rules.cdb");
        compile_rules(&rules, &cdb);
        let bytes = if what == "a cdb cut short" {
            // The records and the header, the hash tables at the end gone.
            let whole = std::fs::read(&cdb).unwrap();
            whole[..whole.len() - 16].to_vec()
        } else {
            bytes
        };
        let good = std::fs::read(&cdb).unwrap();
        let d = Daemon::with_rules(which, "-x", cdb.clone());
        let mut kept = d.client();
        kept.list(None).unwrap();
        replace_file(&cdb, &bytes);
        d.signal(Signal::HUP);
        eventually(
            &format!("{which:?}, {what}: every connection refused"),
            || !served(&d),
        );
        assert!(!served(&d), "{which:?}, {what}");
        if which == Impl::Ours {
            assert!(
                d.stderr().contains(&format!(
                    "s6-fdholderd: warning: rules file {} is not a valid cdb: \
                     refusing every connection until SIGHUP finds a valid one",
                    cdb.display()
                )),
                "{what}: {}",
                d.stderr()
            );
        }
        // Rights are judged at accept: a client already in keeps its own.
        kept.list(None).unwrap();
        replace_file(&cdb, &good);
        d.signal(Signal::HUP);
        eventually(&format!("{which:?}, {what}: served again"), || served(&d));
        assert!(d.terminate().is_some());
    }
}

#[test]
fn a_peer_gone_mid_answer_never_kills_the_daemon() {
    let d = Daemon::start(Impl::Ours);
    let base = d.open_fds();
    let f = file_with(&d.dir, "f", b"");
    setdump_many(&d, &ids(900, 255), &f);
    assert_eq!(d.wait_fds(base + 900), base + 900);
    for _ in 0..5 {
        let mut r = Raw::connect(&d.sock);
        for _ in 0..3 {
            r.send(&msg(b"?", 0), &[]).unwrap();
        }
        // Read a little of the first answer, then vanish: the daemon's
        // next write fails with EPIPE or ECONNRESET.
        assert!(matches!(r.recv(), Reply::Msg(..)));
        drop(r);
    }
    assert_eq!(d.wait_fds(base + 900), base + 900);
    assert_eq!(d.client().list(None).unwrap().len(), 900);
    let mut d = d;
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
}

#[test]
fn a_logger_gone_never_kills_the_daemon() {
    // stderr is a pipe whose reader went away: every log line fails with
    // EPIPE. -v 2 logs every connection.
    for which in impls() {
        let dir = common::TempDir::new("nolog");
        let sock = dir.join("s");
        let l = UnixListener::bind(&sock).unwrap();
        let rules = common::full_rules(dir.path());
        let mut child = Command::new(common::prog(which, "s6-fdholderd"))
            .args(["-1", "-v", "2", "-i"])
            .arg(&rules)
            .stdin(Stdio::from(OwnedFd::from(l)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "\n");
        let f = file_with(dir.path(), "f", b"");
        for i in 0..20 {
            let mut c = Client::connect(&sock, Some(Instant::now() + Duration::from_secs(5)))
                .unwrap_or_else(|e| panic!("{which:?}: connection {i}: {e}"));
            c.store(f.as_fd(), format!("{i}").as_bytes(), None, None)
                .unwrap_or_else(|e| panic!("{which:?}: store {i}: {e}"));
        }
        assert!(child.try_wait().unwrap().is_none(), "{which:?}: died");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What a held fd must be: id, file identity, offset, limit.
type Want = (Vec<u8>, (u64, u64), u64, Tain);

/// A daemon holding `n` fds, each its own open file at its own offset,
/// some with finite limits.
fn populated(which: Impl, n: usize) -> (Daemon, Vec<Want>) {
    let d = Daemon::start(which);
    let mut want = Vec::new();
    let mut files = Vec::new();
    let now = Tain::now();
    for (i, id) in ids(n, 40).into_iter().enumerate() {
        let p = d.dir.join(format!("f{}", i % 20));
        if !p.exists() {
            std::fs::write(&p, b"x").unwrap();
        }
        let mut f = File::open(&p).unwrap();
        f.seek(SeekFrom::Start(i as u64)).unwrap();
        let limit = if i % 3 == 0 {
            now.add_secs(3600 + i as u64)
        } else {
            Tain::infinite_from(now)
        };
        want.push((id, identity(&f), i as u64, limit));
        files.push(f);
    }
    let entries: Vec<DumpEntryRef<'_>> = want
        .iter()
        .zip(&files)
        .map(|((id, _, _, limit), f)| DumpEntryRef {
            id,
            fd: f.as_fd(),
            limit: *limit,
        })
        .collect();
    d.client().setdump(&entries, None).unwrap();
    (d, want)
}

fn check_dump(d: &Daemon, want: &[Want], what: &str) {
    let mut dump = d.client().getdump(None).unwrap();
    dump.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(dump.len(), want.len(), "{what}");
    for (e, (id, ident, off, limit)) in dump.iter().zip(want) {
        assert_eq!(&e.id, id, "{what}");
        assert_eq!(identity(&e.fd), *ident, "{what}");
        let o = rustix::fs::seek(&e.fd, rustix::fs::SeekFrom::Current(0)).unwrap();
        assert_eq!(o, *off, "{what}: the same open file");
        if limit.is_finite_from(Tain::now()) {
            assert_eq!(e.limit, *limit, "{what}");
        } else {
            assert!(!e.limit.is_finite_from(Tain::now()), "{what}");
        }
    }
}

fn transfer(from: &Daemon, to: &Daemon) {
    let out = common::run_cmd(
        Command::new(ours("s6-fdholder-transferdump"))
            .arg(&from.sock)
            .arg(&to.sock),
    );
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn transferdump_there_and_back_keeps_everything() {
    let (a, want) = populated(Impl::Ours, 600);
    let b = Daemon::start(Impl::Ours);
    transfer(&a, &b);
    check_dump(&b, &want, "ours to ours");
    let c = Daemon::start(Impl::Ours);
    transfer(&b, &c);
    check_dump(&c, &want, "and back");
    check_dump(&a, &want, "the source keeps its own");
}

#[test]
fn transferdump_through_the_reference_and_back() {
    if !have_reference() {
        return;
    }
    // The reference sends a dump in one message: at most 253 fds.
    let (a, want) = populated(Impl::Ours, 250);
    let b = Daemon::start(Impl::Reference);
    transfer(&a, &b);
    check_dump(&b, &want, "ours to the reference");
    let c = Daemon::start(Impl::Ours);
    transfer(&b, &c);
    check_dump(&c, &want, "the reference back to ours");
}
