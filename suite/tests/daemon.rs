//! The daemon, driven through the client library: every operation with its
//! answers and errno values, limits, expiry, timeouts, readiness, signals.
//! Operation tests run against our daemon and, when installed, the
//! reference daemon, so that both give the same answers.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{Daemon, Impl, Opts, file_with, have_reference, identity};
use fdholder::{Client, DumpEntryRef, Tain};

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn both(test: impl Fn(Impl)) {
    test(Impl::Ours);
    if have_reference() {
        test(Impl::Reference);
    }
}

#[test]
fn store_retrieve_delete_answers() {
    both(|which| {
        let d = Daemon::start(which);
        let mut c = d.client();
        let f = file_with(&d.dir, "f", b"hello");
        c.store(f.as_fd(), b"one", None, None).unwrap();
        assert_eq!(
            errno(c.store(f.as_fd(), b"one", None, None).unwrap_err()),
            libc::EBUSY,
            "{which:?}"
        );
        let got = c.retrieve(b"one", None).unwrap();
        assert_eq!(identity(&got), identity(&f));
        assert_eq!(errno(c.retrieve(b"two", None).unwrap_err()), libc::ENOENT);
        assert_eq!(errno(c.delete(b"two", None).unwrap_err()), libc::ENOENT);
        c.delete(b"one", None).unwrap();
        assert_eq!(errno(c.retrieve(b"one", None).unwrap_err()), libc::ENOENT);
        // retrieve -D hands the fd over and forgets it.
        c.store(f.as_fd(), b"one", None, None).unwrap();
        let got = c.retrieve_delete(b"one", None).unwrap();
        assert_eq!(identity(&got), identity(&f));
        assert_eq!(errno(c.retrieve(b"one", None).unwrap_err()), libc::ENOENT);
        assert!(c.list(None).unwrap().is_empty());
    });
}

#[test]
fn retrieved_fd_is_the_same_open_file() {
    both(|which| {
        let d = Daemon::start(which);
        let mut c = d.client();
        let mut f = file_with(&d.dir, "f", b"0123456789");
        f.seek(SeekFrom::Start(4)).unwrap();
        c.store(f.as_fd(), b"file", None, None).unwrap();
        drop(f);
        let mut got = std::fs::File::from(c.retrieve(b"file", None).unwrap());
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(
            s, "456789",
            "the offset is shared: same open file description"
        );
    });
}

#[test]
fn ids_any_bytes_up_to_255() {
    both(|which| {
        let d = Daemon::start(which);
        let mut c = d.client();
        let f = file_with(&d.dir, "f", b"");
        let long = vec![b'x'; 255];
        let odd: &[u8] = b"\x01tab\there\nnl \\ \"q\" \x7f\xff";
        c.store(f.as_fd(), &long, None, None).unwrap();
        c.store(f.as_fd(), odd, None, None).unwrap();
        let mut ids = c.list(None).unwrap();
        ids.sort();
        let mut want = vec![long.clone(), odd.to_vec()];
        want.sort();
        assert_eq!(ids, want);
        // Client-side checks: nothing is sent.
        assert_eq!(
            errno(c.store(f.as_fd(), &[b'x'; 256], None, None).unwrap_err()),
            libc::ENAMETOOLONG
        );
        assert_eq!(
            errno(c.retrieve(&[b'x'; 256], None).unwrap_err()),
            libc::ENAMETOOLONG
        );
        assert_eq!(errno(c.delete(b"", None).unwrap_err()), libc::EINVAL);
        let e = c.setdump(
            &[DumpEntryRef {
                id: b"",
                fd: f.as_fd(),
                limit: Tain::now(),
            }],
            None,
        );
        assert_eq!(errno(e.unwrap_err()), libc::EINVAL);
        // The connection is still good.
        assert_eq!(c.list(None).unwrap().len(), 2);
    });
}

#[test]
fn dump_round_trip_keeps_ids_limits_and_files() {
    both(|which| {
        let d = Daemon::start(which);
        let mut c = d.client();
        let files: Vec<_> = (0..5)
            .map(|i| file_with(&d.dir, &format!("f{i}"), b"x"))
            .collect();
        let finite = Tain::now() + Duration::from_secs(3600);
        for (i, f) in files.iter().enumerate() {
            // Distinct limits: the reference nudges equal ones apart by 1 ns.
            let limit = (i % 2 == 0).then_some(finite + Duration::from_secs(i as u64));
            c.store(f.as_fd(), format!("id{i}").as_bytes(), limit, None)
                .unwrap();
        }
        let mut dump = c.getdump(None).unwrap();
        dump.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(dump.len(), 5);
        for (i, e) in dump.iter().enumerate() {
            assert_eq!(e.id, format!("id{i}").as_bytes());
            assert_eq!(identity(&e.fd), identity(&files[i]));
            assert_eq!(e.limit.is_finite_from(Tain::now()), i % 2 == 0);
            if i % 2 == 0 {
                assert_eq!(e.limit, finite + Duration::from_secs(i as u64));
            }
        }
        // setdump into a second daemon of the same kind: same set.
        let d2 = Daemon::start(which);
        let mut c2 = d2.client();
        let refs: Vec<_> = dump.iter().map(|e| e.as_ref()).collect();
        c2.setdump(&refs, None).unwrap();
        let mut dump2 = c2.getdump(None).unwrap();
        dump2.sort_by(|a, b| a.id.cmp(&b.id));
        for (a, b) in dump.iter().zip(&dump2) {
            assert_eq!(
                (a.id.clone(), a.limit, identity(&a.fd)),
                (b.id.clone(), b.limit, identity(&b.fd))
            );
        }
        // setdump adds; an id already held is replaced.
        let other = file_with(&d2.dir, "other", b"");
        c2.setdump(
            &[DumpEntryRef {
                id: b"id0",
                fd: other.as_fd(),
                limit: finite,
            }],
            None,
        )
        .unwrap();
        assert_eq!(
            identity(c2.retrieve(b"id0", None).unwrap()),
            identity(&other)
        );
        assert_eq!(c2.list(None).unwrap().len(), 5);
        // An empty setdump is fine.
        c2.setdump(&[], None).unwrap();
    });
}

#[test]
fn large_dumps_are_chunked() {
    // Past the reference's 253-fd limit: ours only.
    let d = Daemon::with_args(Impl::Ours, &["-n", "2000"]);
    let base = d.open_fds();
    let mut c = d.client();
    let f = file_with(&d.dir, "f", b"");
    let ids: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("fd-{i:04}").into_bytes())
        .collect();
    let entries = common::entries_for(&ids, f.as_fd());
    c.setdump(&entries, None).unwrap();
    assert_eq!(c.list(None).unwrap().len(), 1000);
    let dump = c.getdump(None).unwrap();
    assert_eq!(dump.len(), 1000);
    let mut got: Vec<_> = dump.iter().map(|e| e.id.clone()).collect();
    got.sort();
    assert_eq!(got, ids);
    assert!(dump.iter().all(|e| identity(&e.fd) == identity(&f)));
    drop(dump);
    drop(c);
    // Exactly the 1000 held fds more than at start: no leak.
    assert_eq!(d.wait_fds(base + 1000), base + 1000);
}

#[test]
fn maxfds_gives_enfile_and_recovers() {
    both(|which| {
        let d = Daemon::with_args(which, &["-n", "3"]);
        let mut c = d.client();
        let f = file_with(&d.dir, "f", b"");
        for i in 0..3 {
            c.store(f.as_fd(), format!("{i}").as_bytes(), None, None)
                .unwrap();
        }
        assert_eq!(
            errno(c.store(f.as_fd(), b"x", None, None).unwrap_err()),
            libc::ENFILE
        );
        let e = c.setdump(
            &[DumpEntryRef {
                id: b"y",
                fd: f.as_fd(),
                limit: Tain::now(),
            }],
            None,
        );
        assert_eq!(errno(e.unwrap_err()), libc::ENFILE);
        c.delete(b"0", None).unwrap();
        c.store(f.as_fd(), b"x", None, None).unwrap();
    });
}

#[test]
fn rlimit_clamps_maxfds() {
    // RLIMIT_NOFILE 20 < -n 1000: maxfds becomes 20 - 6 = 14.
    rlimit_clamp_case(&[]);
    // -n 18 is within 6 of the limit: also 14, so that the daemon always
    // keeps descriptors to accept a client and read its rules (the
    // reference keeps 18 and can wedge).
    rlimit_clamp_case(&["-n", "18"]);
}

fn rlimit_clamp_case(args: &[&str]) {
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            args,
            nofile: Some(20),
            ..Opts::default()
        },
    );
    let mut c = d.client();
    let f = file_with(&d.dir, "f", b"");
    for i in 0..14 {
        c.store(f.as_fd(), format!("{i}").as_bytes(), None, None)
            .unwrap();
    }
    assert_eq!(
        errno(c.store(f.as_fd(), b"x", None, None).unwrap_err()),
        libc::ENFILE
    );
    // Full, and still serving: the next client can delete and store again.
    // (With 14 held, the daemon has descriptors for one client at a time:
    // the next one is served once the first is gone, which the daemon sees
    // only when every copy of its socket is closed, and a process forked
    // meanwhile by another test thread holds one until it execs.)
    drop(c);
    let end = Instant::now() + Duration::from_secs(5);
    let mut c2 = loop {
        let mut c2 = d.client();
        match c2.delete(b"0", None) {
            Ok(()) => break c2,
            Err(e) if Instant::now() < end => {
                eprintln!("retrying after {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the daemon never served the next client: {e}"),
        }
    };
    c2.store(f.as_fd(), b"x", None, None).unwrap();
}

#[test]
fn open_file_limit_too_low() {
    let dir = common::tmpdir("lowlimit");
    let l = std::os::unix::net::UnixListener::bind(dir.join("s")).unwrap();
    let out = common::run_cmd(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 5 && exec \"$0\" -i /nonexistent")
            .arg(common::ours("s6-fdholderd"))
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(l))),
    );
    assert_eq!(out.code, 111);
    assert_eq!(out.stderr, "s6-fdholderd: fatal: open file limit too low\n");
}

#[test]
fn expiry_is_on_time_while_idle() {
    both(|which| {
        let d = Daemon::start(which);
        let mut c = d.client();
        let f = file_with(&d.dir, "f", b"");
        c.list(None).unwrap(); // the connection is accepted by now
        let base = d.open_fds();
        c.store(
            f.as_fd(),
            b"short",
            Some(Tain::now() + Duration::from_millis(300)),
            None,
        )
        .unwrap();
        c.store(
            f.as_fd(),
            b"long",
            Some(Tain::now() + Duration::from_secs(60)),
            None,
        )
        .unwrap();
        assert_eq!(d.open_fds(), base + 2);
        // Nobody talks to the daemon: it must wake up by itself.
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(
            d.open_fds(),
            base + 1,
            "{which:?}: the expired fd must be closed"
        );
        assert_eq!(c.list(None).unwrap(), vec![b"long".to_vec()]);
    });
}

#[test]
fn rights_are_enforced_per_operation() {
    both(|which| {
        let dir = common::tmpdir("rights");
        let rules = dir.join("rules");
        let me = format!("uid/{}", rustix::process::geteuid().as_raw());
        common::allow(
            &rules,
            &me,
            &[
                ("S6_FDHOLDER_STORE_REGEX", Some("^s")),
                ("S6_FDHOLDER_RETRIEVE_REGEX", Some("^r|^s")),
            ],
        );
        let d = Daemon::with_rules(which, "-i", rules.clone());
        let mut c = d.client();
        let f = file_with(&d.dir, "f", b"");
        c.store(f.as_fd(), b"s1", None, None).unwrap();
        assert_eq!(
            errno(c.store(f.as_fd(), b"r1", None, None).unwrap_err()),
            libc::EPERM
        );
        assert_eq!(errno(c.retrieve(b"x", None).unwrap_err()), libc::EPERM);
        assert_eq!(errno(c.retrieve(b"r1", None).unwrap_err()), libc::ENOENT);
        c.retrieve(b"s1", None).unwrap();
        assert_eq!(errno(c.delete(b"r1", None).unwrap_err()), libc::EPERM);
        assert_eq!(errno(c.list(None).unwrap_err()), libc::EPERM);
        assert_eq!(errno(c.getdump(None).unwrap_err()), libc::EPERM);
        assert_eq!(errno(c.setdump(&[], None).unwrap_err()), libc::EPERM);
        // The rules directory is read for every connection: grant list now.
        std::fs::write(rules.join(&me).join("env/S6_FDHOLDER_LIST"), "\n").unwrap();
        assert_eq!(
            errno(c.list(None).unwrap_err()),
            libc::EPERM,
            "rights are per connection"
        );
        assert_eq!(d.client().list(None).unwrap(), vec![b"s1".to_vec()]);
        // An empty file unsets: list is refused again.
        std::fs::write(rules.join(&me).join("env/S6_FDHOLDER_LIST"), "").unwrap();
        assert_eq!(errno(d.client().list(None).unwrap_err()), libc::EPERM);
        // Deny: the connection is closed at once.
        common::deny(&rules, &me);
        let mut c3 = Client::connect(&d.sock, None).unwrap();
        assert!(matches!(
            errno(c3.list(None).unwrap_err()),
            libc::EPIPE | libc::ECONNRESET
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn regex_edits_act_on_the_next_connection() {
    // The daemon reads only the first line of an env file (and may stop
    // reading there); a new value must be seen by the very next connection,
    // whatever regex was compiled (and cached) for the previous one.
    both(|which| {
        let dir = common::tmpdir("regex-edit");
        let rules = dir.join("rules");
        let me = format!("uid/{}", rustix::process::geteuid().as_raw());
        common::allow(&rules, &me, &[]);
        let re = rules.join(&me).join("env/S6_FDHOLDER_STORE_REGEX");
        std::fs::write(&re, "^a\n^b\n").unwrap();
        let d = Daemon::with_rules(which, "-i", rules.clone());
        let f = file_with(&d.dir, "f", b"");
        let mut c = d.client();
        c.store(f.as_fd(), b"a1", None, None).unwrap();
        assert_eq!(
            errno(c.store(f.as_fd(), b"b1", None, None).unwrap_err()),
            libc::EPERM,
            "{which:?}: only the first line counts"
        );
        std::fs::write(&re, "^b").unwrap();
        let mut c2 = d.client();
        c2.store(f.as_fd(), b"b1", None, None).unwrap();
        assert_eq!(
            errno(c2.store(f.as_fd(), b"a2", None, None).unwrap_err()),
            libc::EPERM,
            "{which:?}: the edited regex acts on the next connection"
        );
        // The first connection keeps the rights it was given.
        c.store(f.as_fd(), b"a2", None, None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn invalid_regex_refuses_the_connection_with_a_warning() {
    let dir = common::tmpdir("badre");
    let rules = dir.join("rules");
    let me = format!("uid/{}", rustix::process::geteuid().as_raw());
    common::allow(
        &rules,
        &me,
        &[
            ("S6_FDHOLDER_STORE_REGEX", Some("(")),
            ("S6_FDHOLDER_LIST", Some("")),
        ],
    );
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    let mut c = Client::connect(&d.sock, None).unwrap();
    assert!(matches!(
        errno(c.list(None).unwrap_err()),
        libc::EPIPE | libc::ECONNRESET
    ));
    assert!(
        d.stderr()
            .contains("s6-fdholderd: warning: invalid S6_FDHOLDER_STORE_REGEX value: ("),
        "{}",
        d.stderr()
    );
}

#[test]
fn cdb_rules_and_sighup_reload() {
    if !have_reference() {
        return;
    }
    let dir = common::tmpdir("cdb");
    let rules = dir.join("rules");
    let me = format!("uid/{}", rustix::process::geteuid().as_raw());
    common::allow(&rules, &me, &[("S6_FDHOLDER_LIST", Some(""))]);
    let cdb = dir.join("rules.cdb");
    let mk = || {
        let out = common::run_cmd(
            std::process::Command::new("/usr/bin/s6-accessrules-cdb-from-fs")
                .arg(&cdb)
                .arg(&rules),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    };
    mk();
    let d = Daemon::with_rules(Impl::Ours, "-x", cdb.clone());
    assert!(d.client().list(None).unwrap().is_empty());
    // Change the rules: no effect until SIGHUP.
    common::deny(&rules, &me);
    mk();
    assert!(d.client().list(None).is_ok());
    d.signal(rustix::process::Signal::HUP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.client().list(None).is_err());
    // A file that is not a cdb on SIGHUP refuses everyone (fail closed),
    // with a warning; one that cannot be read keeps the previous rules,
    // with another (faults.rs has both, allow rules before).
    std::fs::write(&cdb, b"garbage").unwrap();
    d.signal(rustix::process::Signal::HUP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.client().list(None).is_err(), "refused");
    assert!(
        d.stderr().contains("warning: rules file") && d.stderr().contains("is not a valid cdb"),
        "{}",
        d.stderr()
    );
    std::fs::remove_file(&cdb).unwrap();
    d.signal(rustix::process::Signal::HUP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.client().list(None).is_err(), "still refused");
    assert!(
        d.stderr().contains("warning: unable to reload rules"),
        "{}",
        d.stderr()
    );
}

#[test]
fn maxconn_stops_accepting_until_a_slot_frees() {
    let d = Daemon::with_args(Impl::Ours, &["-c", "2"]);
    let c1 = d.client();
    let mut c2 = d.client();
    c2.list(None).unwrap();
    // The third connection waits in the kernel backlog, unanswered.
    let mut c3 = Client::connect(&d.sock, None).unwrap();
    let e = c3
        .list(Some(Instant::now() + Duration::from_millis(300)))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    drop(c3);
    let sock = d.sock.clone();
    let waiter = std::thread::spawn(move || {
        Client::connect(&sock, None)
            .unwrap()
            .list(None)
            .map(|v| v.len())
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(c1);
    assert_eq!(waiter.join().unwrap().unwrap(), 0);
}

#[test]
fn client_timeout_drops_silent_clients() {
    let d = Daemon::with_args(Impl::Ours, &["-t", "200"]);
    let base = d.open_fds();
    let idle = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.open_fds(), base + 1);
    assert_eq!(
        d.wait_fds(base),
        base,
        "a silent client is dropped after -t"
    );
    drop(idle);
    // A client that does its business promptly is served normally.
    d.client().list(None).unwrap();
}

#[test]
fn readiness_and_stdout() {
    // Daemon::start waits for the -1 newline; without -1, stdout is closed.
    let dir = common::tmpdir("nonotify");
    let rules = common::full_rules(&dir);
    let l = std::os::unix::net::UnixListener::bind(dir.join("s")).unwrap();
    let mut child = std::process::Command::new(common::ours("s6-fdholderd"))
        .arg("-i")
        .arg(&rules)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(l)))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "", "stdout reaches EOF at once, nothing written");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn usage_errors() {
    let run = |args: &[&str]| {
        common::run_cmd(std::process::Command::new(common::ours("s6-fdholderd")).args(args))
    };
    let o = run(&["-Z"]);
    assert_eq!(o.code, 100);
    assert_eq!(
        o.stderr,
        "s6-fdholderd: usage: s6-fdholderd [ -v verbosity ] [ -1 ] [ -c maxconn ] [ -n maxfds ] [ -t timeout ] [ -T lameducktimeout ] [ -S ] [ -i rulesdir | -x rulesfile ]\n"
    );
    let o = run(&[]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (100, "s6-fdholderd: fatal: no access rights specified!\n")
    );
    let o = run(&["-i", "/x"]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (100, "s6-fdholderd: fatal: stdin is not a socket\n")
    );
    let o = run(&["-c", "x", "-i", "/x"]);
    assert_eq!(o.code, 100);
}

#[test]
fn sigterm_exit_code_bits() {
    both(|which| {
        // Nothing held, nobody connected: 0.
        assert_eq!(Daemon::start(which).terminate(), Some(0));
        // An fd held: bit 0.
        let d = Daemon::start(which);
        let f = file_with(&d.dir, "f", b"");
        d.client().store(f.as_fd(), b"x", None, None).unwrap();
        assert_eq!(d.terminate(), Some(1), "{which:?}");
        // An fd held and an idle client connected: bits 0 and 1.
        let d = Daemon::start(which);
        let mut c = d.client();
        c.store(f.as_fd(), b"x", None, None).unwrap();
        assert_eq!(d.terminate(), Some(3), "{which:?}");
    });
}

#[test]
fn lame_duck_finishes_a_large_getdump() {
    let d = Daemon::with_args(Impl::Ours, &["-n", "3000"]);
    let mut c = d.client();
    let f = file_with(&d.dir, "f", b"");
    let ids: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("{i:0200}").into_bytes())
        .collect();
    let entries = common::entries_for(&ids, f.as_fd());
    c.setdump(&entries, None).unwrap();
    // Ask for a dump (about 440 kB: more than the socket buffer), then
    // SIGTERM before reading it: the daemon must finish sending it.
    let mut raw = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
    use std::io::Write;
    raw.write_all(&[0, 0, 0, 1, 0, 0, b'?']).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    d.signal(rustix::process::Signal::TERM);
    std::thread::sleep(Duration::from_millis(100));
    // Reading (without taking the fds: the kernel closes them) until the
    // daemon, done, exits and closes the connection.
    let mut buf = Vec::new();
    raw.read_to_end(&mut buf).unwrap();
    assert!(buf.len() > 2000 * 200, "only {} bytes arrived", buf.len());
    let mut d = d;
    let code = common::wait_timeout(&mut d.child, Duration::from_secs(10));
    // Fds still held (bit 0) and clients still connected (bit 1).
    assert_eq!(code, Some(3));
    drop(c);
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from 3 after the comm.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn lame_duck_idle_client_hanging_up_costs_no_cpu() {
    // Ours only: the reference exits at once in lame duck when the only
    // busy client has sent just part of a header.
    [Impl::Ours].into_iter().for_each(|which| {
        use std::io::Write;
        let d = Daemon::start(which);
        // An idle client, and one in the middle of a request.
        let idle = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
        let mut busy = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
        busy.write_all(&[0, 0, 0, 1]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        d.signal(rustix::process::Signal::TERM);
        std::thread::sleep(Duration::from_millis(100));
        // The idle client goes away while the daemon waits for the other:
        // its socket now reports HUP, whatever interest it has.
        drop(idle);
        let before = cpu_ticks(d.child.id());
        std::thread::sleep(Duration::from_millis(500));
        let spent = cpu_ticks(d.child.id()) - before;
        assert!(spent < 10, "{which:?}: {spent} ticks of CPU in 500 ms");
        // The request completes and is answered; then the daemon exits.
        busy.write_all(&[0, 0, b'L']).unwrap();
        let mut ans = Vec::new();
        busy.read_to_end(&mut ans).unwrap();
        assert_eq!(&ans[..7], &[0, 0, 0, 5, 0, 0, 0], "{which:?}");
        let mut d = d;
        let code = common::wait_timeout(&mut d.child, Duration::from_secs(10));
        assert_eq!(code, Some(2), "{which:?}");
    });
}

/// The cdb hash (djb's).
fn cdb_hash(key: &[u8]) -> u32 {
    key.iter()
        .fold(5381u32, |h, &c| (h << 5).wrapping_add(h) ^ c as u32)
}

#[test]
fn corrupt_cdb_record_length_does_not_kill_the_daemon() {
    // A rules cdb whose record for our uid claims a 4 GB value (a file
    // cut short or overwritten in place). Reading it must fail cleanly,
    // not allocate the claimed size first: under a 1 GB address-space
    // limit that aborted the daemon.
    use std::process::{Command, Stdio};
    let dir = common::tmpdir("cdbcorrupt");
    let key = format!("uid/{}", rustix::process::geteuid().as_raw());
    let h = cdb_hash(key.as_bytes());
    let mut f = vec![0u8; 2048];
    let rec = 2048u32;
    let table = rec + 8 + key.len() as u32;
    let slot = (h & 0xff) as usize * 8;
    f[slot..slot + 4].copy_from_slice(&table.to_le_bytes());
    f[slot + 4..slot + 8].copy_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(key.len() as u32).to_le_bytes());
    f.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    f.extend_from_slice(key.as_bytes());
    f.extend_from_slice(&h.to_le_bytes());
    f.extend_from_slice(&rec.to_le_bytes());
    let cdb = dir.join("rules.cdb");
    std::fs::write(&cdb, &f).unwrap();
    let sock = dir.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1000000 && exec \"$0\" -1 -x \"$1\"")
        .arg(common::ours("s6-fdholderd"))
        .arg(&cdb)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "\n");
    // Refused (the rule cannot be read), and the daemon lives on.
    let r = Client::connect(&sock, Some(Instant::now() + Duration::from_secs(5)))
        .and_then(|mut c| c.list(None));
    assert!(r.is_err());
    std::thread::sleep(Duration::from_millis(100));
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(alive, "the daemon died on a corrupt cdb record");
}

/// Whether a fresh connection to `d` is served (a list answered).
fn served(d: &Daemon) -> bool {
    let dl = || Some(Instant::now() + Duration::from_secs(5));
    Client::connect(&d.sock, dl())
        .and_then(|mut c| c.list(dl()))
        .is_ok()
}

/// The implementations to compare: ours, and the reference when installed.
fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Ours];
    if have_reference() {
        v.push(Impl::Reference);
    }
    v
}

/// Whether `/` holds rules of its own (a `uid` or `gid` directory), which
/// the `-i ''` tests need it not to.
fn root_has_rules() -> bool {
    let found = ["/uid", "/gid"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if found {
        common::loud("/ holds a uid or gid directory: the -i '' tests need it without");
    }
    found
}

#[test]
fn empty_rules_path_is_the_root_not_the_working_directory() {
    // -i '': the reference looks up "" + "/" + key, i.e. /uid/<n>: the
    // rules are read from /, never from the working directory. Here the
    // working directory gives every right and / has no rules: refused.
    if root_has_rules() {
        return;
    }
    for which in impls() {
        let tmp = common::tmpdir("emptyi");
        let cwd = common::full_rules(&tmp);
        let d = Daemon::start_with(
            which,
            Opts {
                rules: Some(("-i", std::path::PathBuf::new())),
                cwd: Some(&cwd),
                ..Opts::default()
            },
        );
        assert!(
            !served(&d),
            "{which:?}: rules read from the working directory"
        );
    }
}

/// Runs the daemon chrooted in `$1`, working directory `$2` (inside it),
/// in a mount namespace of its own: `/usr` and the daemon's directory are
/// bind-mounted into the new root (read-only), `/bin`, `/lib`... as on the
/// host. The mounts never reach the host's namespace (private
/// propagation) and go with the daemon's namespace.
const CHROOT: &str = r#"set -e
R=$1 C=$2; shift 2
mkdir -p "$R/usr" "$R$C"
mount --bind /usr "$R/usr"
mount -o remount,bind,ro "$R/usr"
for l in bin sbin lib lib64; do
  if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$R/$l"
  elif [ -d "/$l" ]; then mkdir "$R/$l"; mount --bind "/$l" "$R/$l"; mount -o remount,bind,ro "$R/$l"
  fi
done
B=${1%/*}
mkdir -p "$R$B"
mount --bind "$B" "$R$B"
mount -o remount,bind,ro "$R$B"
exec chroot "$R" /bin/sh -c 'cd "$0" && exec "$@"' "$C" "$@"
"#;

#[test]
fn empty_rules_path_is_the_root_in_a_chroot() {
    // The opposite arrangement, with a root of the test's own (nothing is
    // written under the real /): the root gives every right, the working
    // directory has no rules. Served, by both daemons.
    if !common::is_root("a chroot in a mount namespace") {
        return;
    }
    if !std::path::Path::new("/usr/bin/unshare").exists() {
        common::loud("unshare (util-linux) is missing");
        return;
    }
    for which in impls() {
        let root = common::tmpdir("chroot");
        common::allow(
            &root,
            &format!("uid/{}", rustix::process::geteuid().as_raw()),
            &[("S6_FDHOLDER_LIST", Some(""))],
        );
        let r = root.to_str().unwrap();
        let wrap = [
            "/usr/bin/unshare",
            "-m",
            "--propagation",
            "private",
            "/bin/bash",
            "-c",
            CHROOT,
            "chroot",
            r,
            "/work",
        ];
        let d = Daemon::start_with(
            which,
            Opts {
                rules: Some(("-i", std::path::PathBuf::new())),
                wrap: &wrap,
                ..Opts::default()
            },
        );
        assert!(
            served(&d),
            "{which:?}: rules not read from /: {}",
            d.stderr()
        );
        // Only the rules of the root: the right it gives, and no other.
        let f = file_with(&d.dir, "f", b"");
        let mut c = d.client();
        assert_eq!(
            errno(c.store(f.as_fd(), b"x", None, None).unwrap_err()),
            libc::EPERM,
            "{which:?}"
        );
        drop(d);
        // The mounts were the daemon's namespace's: none is left here.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(r), "{which:?}: a mount left behind");
    }
}
