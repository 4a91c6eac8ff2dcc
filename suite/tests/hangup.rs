//! Drop on hang-up (issue 13): a store marked with
//! `Client::store_dropping_on_hangup` (request `H`, `s6-fdholder-store -H`)
//! is closed and forgotten by our daemon when the held fd reports POLLHUP
//! or POLLERR; unmarked fds, listening sockets and regular files are never
//! polled. Against the reference daemon, which does not know the request,
//! the client reports EOPNOTSUPP and `s6-fdholder-store -H` a clear message.
//!
//! No sleep is an assertion: a drop is waited for by polling `list` with a
//! deadline; "kept" is checked after a drop of another marked fd stored
//! later (the daemon handles hang-ups in one loop, so by the time the later
//! one is gone, the earlier one's state has been seen).

mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, have_reference, prog, run_cmd};

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

fn errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// A pipe (read end, write end), close-on-exec: a daemon another test
/// starts meanwhile must not inherit an end and keep it open.
fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    (r.into(), w.into())
}

#[test]
fn reference_daemon_refuses_a_marked_store_with_eopnotsupp() {
    if !have_reference() {
        return;
    }
    let d = Daemon::start(Impl::Reference);
    let (a, _b) = UnixStream::pair().unwrap();
    let mut c = d.client();
    let e = c
        .store_dropping_on_hangup(a.as_fd(), b"marked", None, deadline())
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::EOPNOTSUPP), "{e}");
    // The connection is gone: the next request on it fails.
    assert!(c.list(deadline()).is_err());
    // The daemon serves other clients as before, and holds nothing.
    let mut c = d.client();
    assert_eq!(c.list(deadline()).unwrap(), Vec::<Vec<u8>>::new());
    c.store(a.as_fd(), b"plain", None, deadline()).unwrap();
    assert_eq!(c.list(deadline()).unwrap(), [b"plain".to_vec()]);
}

/// One registration in the daemon's epoll set.
struct Registration {
    /// The event mask (the kernel adds EPOLLERR | EPOLLHUP to every one).
    events: u32,
    /// The token the daemon registered it with.
    data: u64,
}

/// The daemon's epoll set, from `/proc/PID/fdinfo`.
fn epoll_set(d: &Daemon) -> Vec<Registration> {
    let pid = d.child.id();
    let mut set = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_str() != Some("anon_inode:[eventpoll]") {
            continue;
        }
        let name = e.file_name();
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_str().unwrap()))
                .unwrap();
        for line in info.lines().filter(|l| l.starts_with("tfd:")) {
            // tfd: N events: HEX data: HEX ...
            let w: Vec<&str> = line.split_whitespace().collect();
            set.push(Registration {
                events: u32::from_str_radix(w[3], 16).unwrap(),
                data: u64::from_str_radix(w[5], 16).unwrap(),
            });
        }
    }
    set
}

/// The daemon's token bit for held fds (`HELD_TAG` in daemon.rs): the
/// listener's and the signalfd's have bit 63 too, connections' neither.
const HELD_TAG: u64 = 1 << 62;

/// The held fds in the epoll set (watched for a hang-up). Each must be
/// registered with no events: its mask is exactly EPOLLERR | EPOLLHUP.
fn watched(d: &Daemon) -> usize {
    let errhup = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
    let held = held_registrations(d);
    for r in &held {
        assert_eq!(r.events, errhup, "a held fd polled for more than a hang-up");
    }
    held.len()
}

/// The held fds in the epoll set, whatever their mask.
fn held_registrations(d: &Daemon) -> Vec<Registration> {
    epoll_set(d)
        .into_iter()
        .filter(|r| r.data & (HELD_TAG | 1 << 63) == HELD_TAG)
        .collect()
}

fn ids(c: &mut fdholder::Client) -> Vec<Vec<u8>> {
    let mut v = c.list(deadline()).unwrap();
    v.sort();
    v
}

/// Waits, with a deadline, until `id` is no longer listed.
fn wait_gone(c: &mut fdholder::Client, id: &[u8]) {
    let end = Instant::now() + Duration::from_secs(10);
    while ids(c).iter().any(|i| i == id) {
        assert!(
            Instant::now() < end,
            "{} still held 10 s after it hung up",
            String::from_utf8_lossy(id)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Stores a marked sentinel (a pipe read end), hangs it up and waits for
/// its drop: every hang-up that happened before is then handled too (epoll
/// reports ready fds in the order they became ready, and a drop is done in
/// the loop iteration that sees it).
fn sync_with_a_sentinel(c: &mut fdholder::Client) {
    let (r, w) = pipe();
    c.store_dropping_on_hangup(r.as_fd(), b"sentinel", None, deadline())
        .unwrap();
    drop((r, w));
    wait_gone(c, b"sentinel");
}

fn v(ids: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ids.iter().map(|i| i.to_vec()).collect();
    v.sort();
    v
}

#[test]
fn marked_socket_and_pipe_are_dropped_when_their_peer_closes() {
    let d = Daemon::with_args(Impl::Ours, &["-v2"]);
    let mut c = d.client();
    // Once a request has been answered, the connection is accepted.
    assert!(ids(&mut c).is_empty());
    let base_fds = d.open_fds();
    let base_watched = watched(&d);
    assert_eq!(base_watched, 0);

    // A connected Unix stream socket whose peer closes.
    let (a, b) = UnixStream::pair().unwrap();
    c.store_dropping_on_hangup(a.as_fd(), b"sock", None, deadline())
        .unwrap();
    drop(a);
    assert_eq!(ids(&mut c), v(&[b"sock"]));
    assert_eq!(watched(&d), 1);
    assert_eq!(d.open_fds(), base_fds + 1);
    drop(b);
    wait_gone(&mut c, b"sock");
    assert_eq!(d.wait_fds(base_fds), base_fds);
    assert_eq!(watched(&d), 0);

    // A pipe's read end whose writer closes (POLLHUP).
    let (r, w) = pipe();
    c.store_dropping_on_hangup(r.as_fd(), b"pipe-r", None, deadline())
        .unwrap();
    drop(r);
    assert_eq!(ids(&mut c), v(&[b"pipe-r"]));
    drop(w);
    wait_gone(&mut c, b"pipe-r");
    assert_eq!(d.wait_fds(base_fds), base_fds);

    // A pipe's write end whose reader closes (POLLERR).
    let (r, w) = pipe();
    c.store_dropping_on_hangup(w.as_fd(), b"pipe-w", None, deadline())
        .unwrap();
    drop(w);
    assert_eq!(ids(&mut c), v(&[b"pipe-w"]));
    drop(r);
    wait_gone(&mut c, b"pipe-w");
    assert_eq!(d.wait_fds(base_fds), base_fds);
    assert_eq!(watched(&d), 0);
    let log = d.stderr();
    for id in ["sock", "pipe-r", "pipe-w"] {
        let line = format!("s6-fdholderd: info: dropped id {id}: it hung up\n");
        assert!(log.contains(&line), "{line:?} not in {log}");
    }
}

#[test]
fn unmarked_or_alive_fds_are_kept() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    // Marked, alive, with unread data: kept.
    let (r_alive, mut w_alive) = pipe();
    w_alive.write_all(b"unread").unwrap();
    c.store_dropping_on_hangup(r_alive.as_fd(), b"marked-pipe-alive", None, deadline())
        .unwrap();
    let (s_alive, mut peer_alive) = UnixStream::pair().unwrap();
    peer_alive.write_all(b"unread").unwrap();
    c.store_dropping_on_hangup(s_alive.as_fd(), b"marked-sock-alive", None, deadline())
        .unwrap();
    // Unmarked: kept, peer gone or not.
    let (a, b) = UnixStream::pair().unwrap();
    c.store(a.as_fd(), b"plain-sock-hung-up", None, deadline())
        .unwrap();
    let (r, w) = pipe();
    c.store(r.as_fd(), b"plain-pipe-hung-up", None, deadline())
        .unwrap();
    let (r2, mut w2) = pipe();
    w2.write_all(b"unread").unwrap();
    c.store(r2.as_fd(), b"plain-pipe-alive", None, deadline())
        .unwrap();
    assert_eq!(watched(&d), 2, "only the marked fds are polled");
    drop((a, b, r, w, r2, r_alive, s_alive));
    sync_with_a_sentinel(&mut c);
    assert_eq!(
        ids(&mut c),
        v(&[
            b"marked-pipe-alive",
            b"marked-sock-alive",
            b"plain-sock-hung-up",
            b"plain-pipe-hung-up",
            b"plain-pipe-alive",
        ])
    );
    // The kept ones are the same open files, data included.
    let mut got = std::fs::File::from(c.retrieve(b"marked-pipe-alive", deadline()).unwrap());
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut got, &mut buf).unwrap();
    assert_eq!(&buf, b"unread");
    drop((w_alive, peer_alive, w2));
}

#[test]
fn listening_sockets_and_regular_files_are_never_polled() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    let dir = common::tmpdir("hangup-never");
    let l = UnixListener::bind(dir.join("l")).unwrap();
    c.store_dropping_on_hangup(l.as_fd(), b"listener", None, deadline())
        .unwrap();
    let f = common::file_with(&dir, "f", b"file");
    c.store_dropping_on_hangup(f.as_fd(), b"file", None, deadline())
        .unwrap();
    let dirfd = std::fs::File::open(dir.path()).unwrap();
    c.store_dropping_on_hangup(dirfd.as_fd(), b"dir", None, deadline())
        .unwrap();
    let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    c.store_dropping_on_hangup(t.as_fd(), b"tcp-listener", None, deadline())
        .unwrap();
    assert_eq!(watched(&d), 0);
    drop((l, f, dirfd, t));
    sync_with_a_sentinel(&mut c);
    assert_eq!(
        ids(&mut c),
        v(&[b"listener", b"file", b"dir", b"tcp-listener"])
    );
    // Still listening: a client connects through the held copy.
    let l = UnixListener::from(c.retrieve(b"listener", deadline()).unwrap());
    let _conn = UnixStream::connect(dir.join("l")).unwrap();
    l.accept().unwrap();
}

#[test]
fn retrieve_delete_and_expiry_of_marked_fds() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    // Once a request has been answered, the connection is accepted.
    assert!(ids(&mut c).is_empty());
    let base_fds = d.open_fds();
    let (a, b) = UnixStream::pair().unwrap();
    c.store_dropping_on_hangup(a.as_fd(), b"s", None, deadline())
        .unwrap();
    // The same rights and answers as a store.
    let e = c
        .store_dropping_on_hangup(a.as_fd(), b"s", None, deadline())
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::EBUSY));
    let e = c.store(a.as_fd(), b"s", None, deadline()).unwrap_err();
    assert_eq!(errno(&e), Some(libc::EBUSY));
    // Retrieve: the same open file.
    let got = c.retrieve(b"s", deadline()).unwrap();
    assert_eq!(common::identity(&got), common::identity(&a));
    // Delete: gone, out of the epoll set although a copy lives here.
    assert_eq!(watched(&d), 1);
    c.delete(b"s", deadline()).unwrap();
    assert_eq!(watched(&d), 0);
    assert_eq!(d.wait_fds(base_fds), base_fds);
    // Store again (the same slot), then hang up the first peer: the new
    // entry is a different connection and stays.
    let (a2, b2) = UnixStream::pair().unwrap();
    c.store_dropping_on_hangup(a2.as_fd(), b"s2", None, deadline())
        .unwrap();
    drop(b);
    sync_with_a_sentinel(&mut c);
    assert_eq!(ids(&mut c), v(&[b"s2"]));
    // Retrieve-and-delete.
    let got = c.retrieve_delete(b"s2", deadline()).unwrap();
    assert_eq!(common::identity(&got), common::identity(&a2));
    assert_eq!(watched(&d), 0);
    assert!(ids(&mut c).is_empty());
    // Expiry.
    let (a3, _b3) = UnixStream::pair().unwrap();
    c.store_dropping_on_hangup(
        a3.as_fd(),
        b"s3",
        Some(fdholder::Tain::now() + Duration::from_millis(50)),
        deadline(),
    )
    .unwrap();
    wait_gone(&mut c, b"s3");
    assert_eq!(watched(&d), 0);
    assert_eq!(d.wait_fds(base_fds), base_fds);
    drop((a, a2, b2, got));
}

#[test]
fn setdump_replaces_a_marked_entry_with_an_unmarked_one() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    let (a, b) = UnixStream::pair().unwrap();
    c.store_dropping_on_hangup(a.as_fd(), b"s", None, deadline())
        .unwrap();
    assert_eq!(watched(&d), 1);
    // A getdump carries no mark: set it back, it replaces the entry.
    let dump = c.getdump(deadline()).unwrap();
    let refs: Vec<_> = dump.iter().map(|e| e.as_ref()).collect();
    c.setdump(&refs, deadline()).unwrap();
    assert_eq!(watched(&d), 0);
    drop((a, b, dump));
    sync_with_a_sentinel(&mut c);
    assert_eq!(ids(&mut c), v(&[b"s"]));
}

#[test]
fn tcp_connection_dropped_on_reset_kept_on_a_half_close() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // The peer closes normally: a FIN is only the end of its data
    // (POLLIN|POLLRDHUP, no POLLHUP), so the connection is kept.
    let fin_peer = std::net::TcpStream::connect(addr).unwrap();
    let (held_fin, _) = l.accept().unwrap();
    c.store_dropping_on_hangup(held_fin.as_fd(), b"tcp-fin", None, deadline())
        .unwrap();
    drop((held_fin, fin_peer));
    // The peer resets it (SO_LINGER 0): POLLHUP|POLLERR, dropped.
    let rst_peer = std::net::TcpStream::connect(addr).unwrap();
    let (held_rst, _) = l.accept().unwrap();
    c.store_dropping_on_hangup(held_rst.as_fd(), b"tcp-rst", None, deadline())
        .unwrap();
    drop(held_rst);
    rustix::net::sockopt::set_socket_linger(&rst_peer, Some(Duration::ZERO)).unwrap();
    drop(rst_peer);
    wait_gone(&mut c, b"tcp-rst");
    sync_with_a_sentinel(&mut c);
    assert_eq!(ids(&mut c), v(&[b"tcp-fin"]));
}

/// The daemon's time on the CPU so far, in ns (`/proc/PID/schedstat`),
/// else its utime + stime in clock ticks.
fn cpu_time(pid: u32) -> u64 {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    if let Some(ns) = sched.split_whitespace().next().and_then(|n| n.parse().ok()) {
        if ns > 0 {
            return ns;
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after_comm
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat, 12 and 13 after the command name.
    f[11] + f[12]
}

#[test]
fn idle_with_a_hundred_readable_marked_fds_the_daemon_does_not_run() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    let mut peers = Vec::new();
    for i in 0..100 {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"unread data").unwrap();
        c.store_dropping_on_hangup(a.as_fd(), format!("conn/{i}").as_bytes(), None, deadline())
            .unwrap();
        peers.push(b);
    }
    // (Whatever their mask: this test checks what it costs.)
    assert_eq!(held_registrations(&d).len(), 100);
    let pid = d.child.id();
    // The last answer may be read before the daemon is done with its loop
    // iteration: wait until it sleeps in epoll_wait (a daemon that never
    // does fails below).
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end
        && !std::fs::read_to_string(format!("/proc/{pid}/wchan"))
            .unwrap()
            .contains("epoll_wait")
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let before = cpu_time(pid);
    // One second with nothing to do: not scheduled at all (a daemon that
    // polled for POLLIN would spin on these readable fds).
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_time(pid);
    assert_eq!(before, after, "the daemon ran while idle");
    assert_eq!(ids(&mut c).len(), 100);
    // And they all go when their peers do.
    drop(peers);
    for i in 0..100 {
        wait_gone(&mut c, format!("conn/{i}").as_bytes());
    }
    assert_eq!(watched(&d), 0);
}

#[test]
fn store_program_marks_with_dash_h() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    let (r, w) = pipe();
    let o = run_cmd(
        Command::new(prog(Impl::Ours, "s6-fdholder-store"))
            .args(["-H", "-d", "0"])
            .arg(&d.sock)
            .arg("marked")
            .stdin(Stdio::from(r)),
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let (r2, w2) = pipe();
    let o = run_cmd(
        Command::new(prog(Impl::Ours, "s6-fdholder-store"))
            .arg(&d.sock)
            .arg("plain")
            .stdin(Stdio::from(r2)),
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(watched(&d), 1);
    drop((w, w2));
    wait_gone(&mut c, b"marked");
    sync_with_a_sentinel(&mut c);
    assert_eq!(ids(&mut c), v(&[b"plain"]));
}

#[test]
fn store_program_with_dash_h_against_the_reference_daemon() {
    if !have_reference() {
        return;
    }
    let d = Daemon::start(Impl::Reference);
    let (r, _w) = pipe();
    let o = run_cmd(
        Command::new(prog(Impl::Ours, "s6-fdholder-store"))
            .arg("-H")
            .arg(&d.sock)
            .arg("marked")
            .stdin(Stdio::from(r.try_clone().unwrap())),
    );
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "s6-fdholder-store: fatal: unable to store fd: the daemon does not support dropping on hang-up\n"
        )
    );
    // The reference daemon still serves, our program and its own.
    let mut c = d.client();
    assert!(ids(&mut c).is_empty());
    for (which, id) in [(Impl::Ours, "ours"), (Impl::Reference, "theirs")] {
        let o = run_cmd(
            Command::new(prog(which, "s6-fdholder-store"))
                .arg(&d.sock)
                .arg(id)
                .stdin(Stdio::from(r.try_clone().unwrap())),
        );
        assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{which:?}");
    }
    assert_eq!(ids(&mut c), v(&[b"ours", b"theirs"]));
}

#[test]
fn reference_store_program_against_our_daemon_is_unchanged() {
    if !have_reference() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    let (r, w) = pipe();
    let o = run_cmd(
        Command::new(prog(Impl::Reference, "s6-fdholder-store"))
            .arg(&d.sock)
            .arg("theirs")
            .stdin(Stdio::from(r)),
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(watched(&d), 0);
    // Its -H is no option of the reference's: a usage error.
    let o = run_cmd(
        Command::new(prog(Impl::Reference, "s6-fdholder-store"))
            .arg("-H")
            .arg(&d.sock)
            .arg("x"),
    );
    assert_eq!(o.code, 100);
    drop(w);
    sync_with_a_sentinel(&mut c);
    assert_eq!(ids(&mut c), v(&[b"theirs"]));
}

#[test]
fn unconnected_stream_socket_and_udp_error_hang_up_at_once() {
    let d = Daemon::start(Impl::Ours);
    let mut c = d.client();
    // Neither connected nor listening: POLLHUP from the start.
    let s = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    c.store_dropping_on_hangup(s.as_fd(), b"unconnected", None, deadline())
        .unwrap();
    wait_gone(&mut c, b"unconnected");
    // A connected UDP socket that gets an ICMP port unreachable: POLLERR.
    let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.connect(addr).unwrap();
    c.store_dropping_on_hangup(u.as_fd(), b"udp", None, deadline())
        .unwrap();
    // Unconnected UDP with no error: kept.
    let quiet = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.store_dropping_on_hangup(quiet.as_fd(), b"udp-quiet", None, deadline())
        .unwrap();
    // Sent again until the error comes (an ICMP can be rate-limited); a
    // send may itself fail with that error once the daemon took it.
    let end = Instant::now() + Duration::from_secs(10);
    while ids(&mut c).iter().any(|i| i == b"udp") {
        assert!(Instant::now() < end, "udp still held 10 s after its error");
        let _ = u.send(b"anyone?");
        std::thread::sleep(Duration::from_millis(2));
    }
    sync_with_a_sentinel(&mut c);
    assert_eq!(ids(&mut c), v(&[b"udp-quiet"]));
}
