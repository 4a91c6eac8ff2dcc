//! The library's tokio client (`fdholder::asynchronous`, cargo feature
//! `tokio`) and the async restart helpers (`restart::Holder::*_async`)
//! against real daemons, on the multi-threaded runtime. Built only
//! with this crate's feature `tokio-tests`, so that the plain `cargo test`
//! does not compile tokio:
//!
//! ```sh
//! cargo test -p fdholder-suite --features tokio-tests --test async_client
//! ```

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::{Daemon, Impl, entries_for, have_reference, identity, rules_with, tmpdir};
use fdholder::asynchronous::AsyncClient;
use fdholder::restart::{Error, Holder, Origin};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Bounds every await of a test: a hang fails instead of blocking.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("an operation did not complete within 20 s")
}

fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Ours];
    if have_reference() {
        v.push(Impl::Reference);
    }
    v
}

fn errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

#[test]
fn every_request() {
    let rt = runtime();
    for which in impls() {
        let d = Daemon::start(which);
        let dir = tmpdir("async-every");
        let f = common::file_with(&dir, "f", b"content");
        let sock = d.sock.clone();
        rt.block_on(async {
            let mut c = bounded(AsyncClient::connect(&sock)).await.unwrap();
            bounded(c.store(f.as_fd(), b"one", None)).await.unwrap();
            bounded(c.store(f.as_fd(), b"two", None)).await.unwrap();
            // A refusal leaves the client usable.
            let e = bounded(c.store(f.as_fd(), b"one", None)).await.unwrap_err();
            assert_eq!(errno(&e), Some(libc::EBUSY));
            assert_eq!(
                bounded(c.list()).await.unwrap(),
                [b"one".to_vec(), b"two".to_vec()]
            );
            let got = bounded(c.retrieve(b"one")).await.unwrap();
            assert_eq!(identity(&got), identity(&f));
            let got = bounded(c.retrieve_delete(b"two")).await.unwrap();
            assert_eq!(identity(&got), identity(&f));
            let e = bounded(c.retrieve(b"two")).await.unwrap_err();
            assert_eq!(errno(&e), Some(libc::ENOENT));
            let dump = bounded(c.getdump()).await.unwrap();
            assert_eq!(dump.len(), 1);
            assert_eq!(dump[0].id, b"one");
            assert_eq!(identity(&dump[0].fd), identity(&f));
            bounded(c.delete(b"one")).await.unwrap();
            let e = bounded(c.delete(b"one")).await.unwrap_err();
            assert_eq!(errno(&e), Some(libc::ENOENT));
            // A bad id is refused before anything is sent.
            let e = bounded(c.delete(b"")).await.unwrap_err();
            assert_eq!(errno(&e), Some(libc::EINVAL));
            assert!(bounded(c.list()).await.unwrap().is_empty());
        });
    }
}

#[test]
fn setdump_and_getdump_in_chunks() {
    let rt = runtime();
    let d = Daemon::start(Impl::Ours);
    let dir = tmpdir("async-dump");
    let f = common::file_with(&dir, "f", b"x");
    // More than one message's worth of descriptors (253).
    let ids: Vec<Vec<u8>> = (0..300).map(|i| format!("id{i}").into_bytes()).collect();
    let entries = entries_for(&ids, f.as_fd());
    let sock = d.sock.clone();
    rt.block_on(async {
        let mut c = bounded(AsyncClient::connect(&sock)).await.unwrap();
        bounded(c.setdump(&entries)).await.unwrap();
        let dump = bounded(c.getdump()).await.unwrap();
        assert_eq!(dump.len(), 300);
        let mut got: Vec<Vec<u8>> = dump.iter().map(|e| e.id.clone()).collect();
        got.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(got, want);
        assert!(dump.iter().all(|e| identity(&e.fd) == identity(&f)));
        bounded(c.setdump(&[])).await.unwrap();
    });
    // What the async client stored, the blocking one sees.
    assert_eq!(
        d.client()
            .list(Some(std::time::Instant::now() + Duration::from_secs(10)))
            .unwrap()
            .len(),
        300
    );
}

#[test]
fn futures_are_send_on_the_multi_threaded_runtime() {
    let rt = runtime();
    let d = Daemon::start(Impl::Ours);
    let sock = d.sock.clone();
    rt.block_on(async move {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let sock = sock.clone();
                // tokio::spawn needs a Send future.
                tokio::spawn(async move {
                    let l = UnixListener::bind(sock.with_file_name(format!("l{i}"))).unwrap();
                    let mut c = AsyncClient::connect(&sock).await.unwrap();
                    let id = format!("task{i}").into_bytes();
                    c.store(l.as_fd(), &id, None).await.unwrap();
                    let back = c.retrieve(&id).await.unwrap();
                    assert_eq!(identity(&back), identity(&l));
                })
            })
            .collect();
        for t in tasks {
            bounded(t).await.unwrap();
        }
        let mut c = bounded(AsyncClient::connect(&sock)).await.unwrap();
        assert_eq!(bounded(c.list()).await.unwrap().len(), 8);
    });
}

#[test]
fn a_cancelled_request_breaks_the_client() {
    let rt = runtime();
    let dir = tmpdir("async-cancel");
    // A "daemon" that takes connections and never answers.
    let mute = UnixListener::bind(dir.join("mute")).unwrap();
    let path = dir.join("mute");
    rt.block_on(async {
        let mut c = bounded(AsyncClient::connect(&path)).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(50), c.list()).await;
        assert!(r.is_err(), "the mute daemon answered");
        // The dropped future left the protocol state unknown.
        let e = bounded(c.list()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Other);
        assert!(e.to_string().contains("did not complete"), "{e}");
    });
    drop(mute);
}

#[test]
fn connect_errors_and_fd_round_trip() {
    let rt = runtime();
    let dir = tmpdir("async-connect");
    let d = Daemon::start(Impl::Ours);
    let sock = d.sock.clone();
    rt.block_on(async {
        let e = bounded(AsyncClient::connect(dir.join("nothing")))
            .await
            .unwrap_err();
        assert_eq!(errno(&e), Some(libc::ENOENT));
        // A blocking socket handed in works (made non-blocking), and goes
        // back to a blocking client.
        let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut c = AsyncClient::from_fd(s.into()).unwrap();
        assert!(bounded(c.list()).await.unwrap().is_empty());
        let mut b = fdholder::Client::from_fd(c.into_fd().unwrap());
        assert!(b.list(None).unwrap().is_empty());
    });
}

/// A full listen backlog: the async connect waits for room, as the
/// blocking one does, instead of failing at once with `EAGAIN`.
#[test]
fn connect_waits_while_the_backlog_is_full() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let rt = runtime();
    let dir = tmpdir("async-backlog");
    let path = dir.join("s");
    let l = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&l, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&l, 0).unwrap();
    let listener = UnixListener::from(l);
    // Fill the backlog with non-blocking connects until one is refused.
    let mut queued = Vec::new();
    loop {
        let s = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        match rustix::net::connect(&s, &SocketAddrUnix::new(&path).unwrap()) {
            Ok(()) => queued.push(s),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("connect: {e}"),
        }
        assert!(queued.len() < 100, "the backlog never filled");
    }
    rt.block_on(async {
        let p = path.clone();
        let pending = tokio::spawn(async move { AsyncClient::connect(p).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !pending.is_finished(),
            "the connect ended while the backlog was full: {:?}",
            pending.await
        );
        // Room again: the waiting connect gets in.
        drop(listener.accept().unwrap());
        let c = bounded(pending).await.unwrap();
        assert!(c.is_ok(), "{:?}", c.err());
    });
    drop(queued);
}

// ---- The async restart helpers.

fn holder(d: &Daemon) -> Holder {
    Holder::new(&d.sock).deadline(std::time::Instant::now() + Duration::from_secs(10))
}

#[test]
fn async_helpers_first_start_creates_restart_gets_the_same() {
    let rt = runtime();
    for which in impls() {
        let d = Daemon::start(which);
        let h = holder(&d);
        let path = d.dir.join("svc.sock");
        // Every helper in a spawned task (a Send future), twice: created
        // and stored, then the very same descriptor back.
        let got = rt
            .block_on(rt.spawn(async move {
                let mut got = Vec::new();
                for _ in 0..2 {
                    let (t, ot) = bounded(h.tcp_listener_async(b"tcp", "127.0.0.1:0"))
                        .await
                        .unwrap();
                    let (u, ou) = bounded(h.unix_listener_async(b"unix", &path))
                        .await
                        .unwrap();
                    let (s, os) = bounded(h.udp_socket_async(b"udp", "127.0.0.1:0"))
                        .await
                        .unwrap();
                    let (m, om) = bounded(h.memfd_async(b"mem", "mem")).await.unwrap();
                    got.push((
                        [ot, ou, os, om],
                        [identity(&t), identity(&u), identity(&s), identity(&m)],
                    ));
                }
                got
            }))
            .unwrap();
        assert_eq!(got[0].0, [Origin::Created; 4]);
        assert_eq!(got[1].0, [Origin::Held; 4]);
        assert_eq!(got[0].1, got[1].1);
        let mut ids = d
            .client()
            .list(Some(std::time::Instant::now() + Duration::from_secs(10)))
            .unwrap();
        ids.sort();
        assert_eq!(ids, [&b"mem"[..], b"tcp", b"udp", b"unix"]);
    }
}

#[test]
fn async_helpers_refused_and_unreachable() {
    let rt = runtime();
    let dir = tmpdir("async-restart-errors");
    let rules = rules_with(
        &dir,
        "rules",
        &[
            ("S6_FDHOLDER_RETRIEVE_REGEX", Some("")),
            ("S6_FDHOLDER_STORE_REGEX", Some("^other")),
        ],
    );
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    let h = holder(&d);
    let nothing = dir.join("nothing");
    rt.block_on(rt.spawn(async move {
        // Retrieve allowed, store refused.
        let e = bounded(h.tcp_listener_async(b"mine", "127.0.0.1:0"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Refused), "{e:?}");
        let e = bounded(h.memfd_async(b"mine", "x")).await.unwrap_err();
        assert!(matches!(e, Error::Refused), "{e:?}");
        // No holder.
        let e = bounded(Holder::new(&nothing).memfd_async(b"state", "state"))
            .await
            .unwrap_err();
        match &e {
            Error::Unreachable(io) => assert_eq!(io.raw_os_error(), Some(libc::ENOENT)),
            e => panic!("{e:?}"),
        }
        // A deadline already past.
        let e = bounded(
            Holder::new(&nothing)
                .deadline(std::time::Instant::now())
                .memfd_async(b"state", "state"),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::TimedOut), "{e:?}");
    }))
    .unwrap();
}

#[test]
fn async_helpers_deadline_on_a_mute_holder() {
    let rt = runtime();
    let dir = tmpdir("async-restart-mute");
    let mute = UnixListener::bind(dir.join("mute")).unwrap();
    let h = Holder::new(dir.join("mute"))
        .deadline(std::time::Instant::now() + Duration::from_millis(100));
    let e = rt
        .block_on(rt.spawn(async move { bounded(h.memfd_async(b"state", "state")).await }))
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::TimedOut), "{e:?}");
    drop(mute);
}

#[test]
fn async_concurrent_starts_all_serve_one_descriptor() {
    let rt = runtime();
    let d = Daemon::start(Impl::Ours);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = d.dir.join("one.sock");
    // 4 tasks at once on 2 worker threads: the losers of the TCP bind
    // (EADDRINUSE) wait for the winner's store, the Unix ones queue on the
    // directory lock, the memfd losers get EBUSY; all pause with tokio's
    // timer, not the thread's sleep (which would starve the winner's task
    // on a runtime this small).
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let h = holder(&d);
            let path = path.clone();
            rt.spawn(async move {
                let (t, ot) = h
                    .tcp_listener_async(b"tcp", ("127.0.0.1", port))
                    .await
                    .unwrap();
                let (u, ou) = h.unix_listener_async(b"unix", &path).await.unwrap();
                let (m, om) = h.memfd_async(b"mem", "mem").await.unwrap();
                [(ot, identity(&t)), (ou, identity(&u)), (om, identity(&m))]
            })
        })
        .collect();
    let got: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for t in tasks {
            v.push(bounded(t).await.unwrap());
        }
        v
    });
    for k in 0..3 {
        let created = got.iter().filter(|g| g[k].0 == Origin::Created).count();
        assert_eq!(created, 1, "{k}: {got:?}");
        assert!(got.iter().all(|g| g[k].1 == got[0][k].1), "{k}: {got:?}");
    }
}

#[test]
fn marked_store_against_the_reference_is_eopnotsupp() {
    if !have_reference() {
        return;
    }
    let rt = runtime();
    let d = Daemon::start(Impl::Reference);
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let sock = d.sock.clone();
    rt.block_on(async {
        let mut c = bounded(AsyncClient::connect(&sock)).await.unwrap();
        let e = bounded(c.store_dropping_on_hangup(a.as_fd(), b"marked", None))
            .await
            .unwrap_err();
        assert_eq!(errno(&e), Some(libc::EOPNOTSUPP), "{e}");
        // The client is no longer usable; a new one is, and nothing is held.
        assert!(bounded(c.list()).await.is_err());
        let mut c = bounded(AsyncClient::connect(&sock)).await.unwrap();
        assert_eq!(bounded(c.list()).await.unwrap(), Vec::<Vec<u8>>::new());
    });
}

#[test]
fn describe_as_the_blocking_client() {
    let rt = runtime();
    for which in impls() {
        let d = Daemon::start(which);
        let dir = tmpdir("async-describe");
        let f = common::file_with(&dir, "f", b"content");
        let l = UnixListener::bind(dir.join("l.sock")).unwrap();
        let mut c = d.client();
        c.store(f.as_fd(), b"file", None, None).unwrap();
        c.store(l.as_fd(), b"listener", None, None).unwrap();
        let blocking = c.describe(None);
        let sock = d.sock.clone();
        rt.block_on(async {
            let mut a = bounded(AsyncClient::connect(&sock)).await.unwrap();
            let got = bounded(a.describe()).await;
            match which {
                Impl::Ours => {
                    let got = got.unwrap();
                    assert_eq!(got, blocking.unwrap());
                    assert_eq!(got.len(), 2);
                    assert_eq!(got[1].description.kind.name(), "socket");
                }
                Impl::Reference => {
                    assert_eq!(errno(&got.unwrap_err()), Some(libc::EOPNOTSUPP));
                    assert_eq!(errno(&blocking.unwrap_err()), Some(libc::EOPNOTSUPP));
                }
            }
        });
    }
}
