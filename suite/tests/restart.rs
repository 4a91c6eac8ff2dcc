//! The library's restart helpers (`fdholder::restart`) and launcher finder
//! (`fdholder::launch`) against real daemons: a first start binds and
//! stores, a restart gets the very same socket back, clients queue while no
//! service runs, every error variant, the store race, the Unix path rule,
//! memfd state, and each launcher (systemd's protocol, s6-fdholder-getdump,
//! none) seen from a child process.

mod common;

use std::io::{Read, Seek, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, TempDir, have_reference, identity, prog, rules_with, tmpdir};
use fdholder::launch::Launcher;
use fdholder::restart::{Error, Holder, Origin};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn holder(d: &Daemon) -> Holder {
    Holder::new(&d.sock).deadline(soon())
}

/// The implementations to run against: ours, and the reference when
/// installed.
fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Ours];
    if have_reference() {
        v.push(Impl::Reference);
    }
    v
}

#[test]
fn tcp_first_start_binds_and_stores_restart_gets_the_same_socket() {
    for which in impls() {
        let d = Daemon::start(which);
        let (l1, o1) = holder(&d).tcp_listener(b"web", "127.0.0.1:0").unwrap();
        assert_eq!(o1, Origin::Created);
        let (id1, addr) = (identity(&l1), l1.local_addr().unwrap());
        assert_eq!(d.client().list(Some(soon())).unwrap(), [b"web".to_vec()]);
        drop(l1);
        // Restarted: the same socket, whatever address is asked for.
        let (l2, o2) = holder(&d).tcp_listener(b"web", "127.0.0.1:0").unwrap();
        assert_eq!(
            (o2, identity(&l2), l2.local_addr().unwrap()),
            (Origin::Held, id1, addr)
        );
    }
}

#[test]
fn helpers_keep_no_connection_to_the_holder() {
    let d = Daemon::start(Impl::Ours);
    let before = d.open_fds();
    let (l, _) = holder(&d).unix_listener(b"u", d.dir.join("svc")).unwrap();
    // The daemon now holds one more fd (the listener) and no connection.
    assert_eq!(d.wait_fds(before + 1), before + 1);
    drop(l);
}

#[test]
fn clients_queue_while_no_service_runs_and_are_served_after() {
    for which in impls() {
        let d = Daemon::start(which);
        let path = d.dir.join("svc.sock");
        let (l, o) = holder(&d).unix_listener(b"svc", &path).unwrap();
        assert_eq!(o, Origin::Created);
        let (t, _) = holder(&d).tcp_listener(b"svc-tcp", "127.0.0.1:0").unwrap();
        let taddr = t.local_addr().unwrap();
        drop((l, t));
        // No service runs: clients connect all the same (queued in the
        // held sockets' backlogs) and send their request.
        let mut u = UnixStream::connect(&path).unwrap();
        u.write_all(b"ping").unwrap();
        let mut c = TcpStream::connect(taddr).unwrap();
        c.write_all(b"ping").unwrap();
        // The next instance serves them.
        let (l, o) = holder(&d).unix_listener(b"svc", &path).unwrap();
        let (t, ot) = holder(&d).tcp_listener(b"svc-tcp", "127.0.0.1:0").unwrap();
        assert_eq!((o, ot), (Origin::Held, Origin::Held));
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").unwrap();
        u.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        let (mut s, _) = t.accept().unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }
}

#[test]
fn refused_by_the_rules() {
    let dir = tmpdir("restart-refused");
    // Retrieve allowed for everything, store only for ids starting "other".
    let rules = rules_with(
        &dir,
        "rules",
        &[
            ("S6_FDHOLDER_RETRIEVE_REGEX", Some("")),
            ("S6_FDHOLDER_STORE_REGEX", Some("^other")),
        ],
    );
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    let e = holder(&d).tcp_listener(b"mine", "127.0.0.1:0").unwrap_err();
    assert!(matches!(e, Error::Refused), "{e:?}");
    let io: std::io::Error = e.into();
    assert_eq!(io.raw_os_error(), Some(libc::EPERM));
    // No right at all: the retrieve is refused already.
    let rules = rules_with(&dir, "none", &[("S6_FDHOLDER_LIST", Some(""))]);
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    let e = holder(&d).memfd(b"state", "state").unwrap_err();
    assert!(matches!(e, Error::Refused), "{e:?}");
}

#[test]
fn no_holder_is_unreachable() {
    let dir = tmpdir("restart-unreachable");
    // No such path.
    let e = Holder::new(dir.join("nothing"))
        .memfd(b"state", "state")
        .unwrap_err();
    match &e {
        Error::Unreachable(io) => assert_eq!(io.raw_os_error(), Some(libc::ENOENT)),
        e => panic!("{e:?}"),
    }
    assert_eq!(std::io::Error::from(e).raw_os_error(), Some(libc::ENOENT));
    // A socket nobody listens on.
    drop(UnixListener::bind(dir.join("dead")).unwrap());
    let e = Holder::new(dir.join("dead"))
        .tcp_listener(b"x", "127.0.0.1:0")
        .unwrap_err();
    match &e {
        Error::Unreachable(io) => assert_eq!(io.raw_os_error(), Some(libc::ECONNREFUSED)),
        e => panic!("{e:?}"),
    }
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn deadline_is_timed_out() {
    let dir = tmpdir("restart-timeout");
    // A "holder" that accepts connections into its backlog and never
    // answers.
    let mute = UnixListener::bind(dir.join("mute")).unwrap();
    let e = Holder::new(dir.join("mute"))
        .deadline(Instant::now() + Duration::from_millis(100))
        .memfd(b"state", "state")
        .unwrap_err();
    assert!(matches!(e, Error::TimedOut), "{e:?}");
    assert_eq!(
        std::io::Error::from(e).raw_os_error(),
        Some(libc::ETIMEDOUT)
    );
    // A deadline already past.
    let d = Daemon::start(Impl::Ours);
    let e = Holder::new(&d.sock)
        .deadline(Instant::now())
        .memfd(b"state", "state")
        .unwrap_err();
    assert!(matches!(e, Error::TimedOut), "{e:?}");
    drop(mute);
}

#[test]
fn store_race_loser_takes_the_winners_descriptor() {
    let d = Daemon::start(Impl::Ours);
    let dir = tmpdir("restart-race");
    let winner = common::file_with(&dir, "winner", b"w");
    // Between our retrieve (ENOENT) and our store, another instance
    // stores: ours gets EBUSY, drops its own and returns the winner's.
    let mut other = d.client();
    let (fd, o) = holder(&d)
        .take_or_store(b"race", || {
            other.store(winner.as_fd(), b"race", None, Some(soon()))?;
            Ok(OwnedFd::from(common::file_with(&dir, "loser", b"l")))
        })
        .unwrap();
    assert_eq!((o, identity(&fd)), (Origin::Held, identity(&winner)));
    assert_eq!(d.client().list(Some(soon())).unwrap(), [b"race".to_vec()]);
}

/// Runs `f` in `n` threads started at once; returns their results.
fn at_once<T: Send + 'static>(n: usize, f: impl Fn() -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (f, b) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                f()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn concurrent_starts_all_serve_one_descriptor() {
    let d = Daemon::start(Impl::Ours);
    // memfds: every instance creates one; one store wins (EBUSY for the
    // others).
    let h = holder(&d);
    let got = at_once(4, move || {
        let (f, o) = h.memfd(b"state", "state").unwrap();
        (identity(&f), o)
    });
    assert_eq!(got.iter().filter(|g| g.1 == Origin::Created).count(), 1);
    assert!(got.iter().all(|g| g.0 == got[0].0), "{got:?}");
    // A Unix path: serialised by the directory lock, one bind.
    let h = holder(&d);
    let path = d.dir.join("one.sock");
    let got = at_once(4, move || {
        let (l, o) = h.unix_listener(b"one", &path).unwrap();
        (identity(&l), o)
    });
    assert_eq!(got.iter().filter(|g| g.1 == Origin::Created).count(), 1);
    assert!(got.iter().all(|g| g.0 == got[0].0), "{got:?}");
    // A TCP port: the others' binds fail (EADDRINUSE) and they wait for
    // the first's store.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = holder(&d);
    let got = at_once(4, move || {
        let (l, o) = h.tcp_listener(b"tcp", ("127.0.0.1", port)).unwrap();
        (identity(&l), o)
    });
    assert_eq!(got.iter().filter(|g| g.1 == Origin::Created).count(), 1);
    assert!(got.iter().all(|g| g.0 == got[0].0), "{got:?}");
}

#[test]
fn unix_path_rule() {
    let d = Daemon::start(Impl::Ours);
    let dir = tmpdir("restart-path");
    // A stale socket (its process gone): removed, the path bound afresh.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let (l, o) = holder(&d).unix_listener(b"stale", &stale).unwrap();
    assert_eq!(o, Origin::Created);
    UnixStream::connect(&stale).unwrap();
    drop(l);

    // A live socket the holder does not hold: left alone.
    let live = dir.join("live.sock");
    let other = UnixListener::bind(&live).unwrap();
    let e = holder(&d).unix_listener(b"live", &live).unwrap_err();
    match e {
        Error::Io(e) => assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE)),
        e => panic!("{e:?}"),
    }
    UnixStream::connect(&live).unwrap();
    other.accept().unwrap();

    // Not a socket: left alone.
    let file = dir.join("file");
    std::fs::write(&file, "keep").unwrap();
    let e = holder(&d).unix_listener(b"file", &file).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    assert!(d.client().list(Some(soon())).unwrap() == [b"stale".to_vec()]);

    // Held: the path is not touched, even when it is gone.
    std::fs::remove_file(&stale).unwrap();
    let (l, o) = holder(&d).unix_listener(b"stale", &stale).unwrap();
    assert_eq!(o, Origin::Held);
    assert!(!stale.exists());
    drop(l);
}

#[test]
fn memfd_state_survives_a_restart() {
    for which in impls() {
        let d = Daemon::start(which);
        let (mut f, o) = holder(&d).memfd(b"state", "app-state").unwrap();
        assert_eq!(o, Origin::Created);
        f.write_all(b"counter=41\n").unwrap();
        drop(f);
        let (mut f, o) = holder(&d).memfd(b"state", "app-state").unwrap();
        assert_eq!(o, Origin::Held);
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "counter=41\n");
    }
}

#[test]
fn expiry_is_sent() {
    let d = Daemon::start(Impl::Ours);
    let before = fdholder::Tain::now();
    let (_f, _) = holder(&d)
        .expiry(Duration::from_secs(3600))
        .memfd(b"e", "e")
        .unwrap();
    let dump = d.client().getdump(Some(soon())).unwrap();
    let left = dump[0].limit.duration_since(before);
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3700));
}

#[test]
fn something_else_held_is_a_mismatch() {
    let d = Daemon::start(Impl::Ours);
    let dir = tmpdir("restart-mismatch");
    let f = common::file_with(&dir, "f", b"x");
    d.client()
        .store(f.as_fd(), b"web", None, Some(soon()))
        .unwrap();
    let e = holder(&d).tcp_listener(b"web", "127.0.0.1:0").unwrap_err();
    assert!(
        matches!(
            e,
            Error::Mismatch {
                expected: "TCP listener"
            }
        ),
        "{e:?}"
    );
    let (u, _) = holder(&d).udp_socket(b"udp", "127.0.0.1:0").unwrap();
    let e = holder(&d).memfd(b"udp", "x").unwrap_err();
    assert!(matches!(e, Error::Mismatch { .. }), "{e:?}");
    let (u2, o) = holder(&d).udp_socket(b"udp", "127.0.0.1:0").unwrap();
    assert_eq!((o, identity(&u2)), (Origin::Held, identity(&u)));
}

// ---- Launchers, seen from a child process: this test binary run again
// with PROBE set, on the one test `launcher_probe`.

/// In a child (PROBE set): finds its descriptor "web" the way the helpers
/// do and prints what it found. A no-op in the ordinary run.
#[test]
fn launcher_probe() {
    let Some(holder) = std::env::var_os("PROBE") else {
        return;
    };
    let passed = fdholder::launch::passed().unwrap();
    for p in &passed {
        println!(
            "PASSED {:?} {} {}",
            p.launcher,
            String::from_utf8_lossy(&p.name),
            p.fd
        );
    }
    let path = std::env::var_os("PROBE_PATH").unwrap();
    let (l, o) = Holder::new(holder)
        .deadline(soon())
        .inherit()
        .unix_listener(b"web", path)
        .unwrap();
    let (dev, ino) = identity(&l);
    println!("PROBE {o:?} {dev}:{ino}");
}

/// Runs the probe under `launcher` (argv before the test binary), with
/// `stdin` as its standard input; returns its PASSED and PROBE lines.
fn probe(
    launcher: &[&std::ffi::OsStr],
    stdin: Stdio,
    holder: &std::path::Path,
    path: &std::path::Path,
) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(launcher[0]);
    cmd.args(&launcher[1..])
        .arg(&exe)
        .args([
            "--exact",
            "launcher_probe",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROBE", holder)
        .env("PROBE_PATH", path)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(stdin);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = common::wait_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "probe failed: {out}\n{err}");
    // libtest writes "test launcher_probe ... " before the test's own
    // output, on the same line.
    out.lines()
        .filter_map(|l| {
            let at = ["PASSED ", "PROBE "]
                .iter()
                .filter_map(|m| l.find(m))
                .min()?;
            Some(l[at..].to_owned())
        })
        .collect()
}

fn ident(l: &impl AsFd) -> String {
    let (dev, ino) = identity(l);
    format!("{dev}:{ino}")
}

#[test]
fn launcher_systemd() {
    let dir = TempDir::new("restart-sd");
    let l = UnixListener::bind(dir.join("web.sock")).unwrap();
    let id = ident(&l);
    // bash moves stdin to fd 3 and sets the variables for its own pid,
    // which the exec keeps. The holder is not even reachable: not needed.
    let script = "exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_FDNAMES=web LISTEN_PID=$$; exec \"$0\" \"$@\"";
    let lines = probe(
        &["bash".as_ref(), "-c".as_ref(), script.as_ref()],
        Stdio::from(OwnedFd::from(l)),
        &dir.join("no-holder"),
        &dir.join("web.sock"),
    );
    assert_eq!(
        lines,
        [
            "PASSED Systemd web 3".to_owned(),
            format!("PROBE Inherited({:?}) {id}", Launcher::Systemd)
        ]
    );
}

#[test]
fn launcher_getdump() {
    let d = Daemon::start(Impl::Ours);
    let path = d.dir.join("web.sock");
    let (l, _) = holder(&d).unix_listener(b"web", &path).unwrap();
    let id = ident(&l);
    drop(l);
    let getdump = prog(Impl::Ours, "s6-fdholder-getdump");
    let lines = probe(
        &[getdump.as_os_str(), d.sock.as_os_str()],
        Stdio::null(),
        &d.sock,
        &path,
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("PASSED Getdump web "), "{lines:?}");
    assert_eq!(
        lines[1],
        format!("PROBE Inherited({:?}) {id}", Launcher::Getdump)
    );
}

#[test]
fn launcher_none_asks_the_holder() {
    let d = Daemon::start(Impl::Ours);
    let path = d.dir.join("web.sock");
    let lines = probe(&["env".as_ref()], Stdio::null(), &d.sock, &path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("PROBE Created "), "{lines:?}");
    // The next start (no launcher either) gets what the first stored.
    let (l, o) = holder(&d).unix_listener(b"web", &path).unwrap();
    assert_eq!(o, Origin::Held);
    assert_eq!(lines[0], format!("PROBE Created {}", ident(&l)));
}
