//! The describe request (`Client::describe`, `s6-fdholder-list -l` and
//! `-j`): each kind of descriptor held in our daemon is described as what
//! the test itself sees on its own copy (`fstat`, `fcntl(F_GETFL)`,
//! `getsockname`/`getpeername`, `F_GET_SEALS`, `/proc/self/fd` and
//! `/proc/self/fdinfo`); ids are quoted as plain `s6-fdholder-list`
//! (ours and the reference's) quotes them; the list right is needed; the
//! reference daemon, which does not know the request, gives EOPNOTSUPP
//! and a one-line message, and goes on serving; a large store is
//! described whole. The daemon's fd count is back to its baseline after
//! every describe.

mod common;

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Impl, Opts, have_reference, ours, rules_with, run, tmpdir};
use fdholder::describe::{Addr, Description, End, Held, Kind, Socket};
use fdholder::{Client, Tain};

fn dl() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(20))
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// The link `/proc/self/fd/N` of the test's copy.
fn link(fd: BorrowedFd<'_>) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .into_os_string()
        .into_vec()
}

/// A field of `/proc/self/fdinfo/N` of the test's copy.
fn fdinfo(fd: BorrowedFd<'_>, key: &str) -> String {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {info}"))
        .trim()
        .to_string()
}

/// What every description must say of the test's copy: fstat's mode,
/// dev and ino, F_GETFL's flags (and fdinfo's flags, without the
/// descriptor's own O_CLOEXEC).
fn check_common(id: &str, d: &Description, fd: BorrowedFd<'_>) {
    let st = rustix::fs::fstat(fd).unwrap();
    assert_eq!(
        (d.mode, d.dev, d.ino),
        (st.st_mode, st.st_dev, st.st_ino),
        "{id}: fstat"
    );
    let fl = rustix::fs::fcntl_getfl(fd).unwrap().bits();
    assert_eq!(d.flags, fl, "{id}: F_GETFL");
    let info = u32::from_str_radix(&fdinfo(fd, "flags"), 8).unwrap();
    assert_eq!(
        d.flags,
        info & !(libc::O_CLOEXEC as u32),
        "{id}: fdinfo flags"
    );
    assert_eq!(
        fdinfo(fd, "ino").parse::<u64>().unwrap(),
        d.ino,
        "{id}: fdinfo ino"
    );
}

/// What a socket's description must say: the test's getsockopt,
/// getsockname and getpeername on its copy.
fn expected_socket(fd: BorrowedFd<'_>) -> Socket {
    use rustix::net::sockopt;
    let conv = |a: rustix::net::SocketAddrAny| {
        if let Ok(inet) = std::net::SocketAddr::try_from(a.clone()) {
            return Addr::Inet(inet);
        }
        let u = rustix::net::SocketAddrUnix::try_from(a).unwrap();
        match (u.path_bytes(), u.abstract_name()) {
            (Some(p), _) => Addr::Path(p.to_vec()),
            (None, Some(n)) if !n.is_empty() => Addr::Abstract(n.to_vec()),
            _ => Addr::Unnamed,
        }
    };
    Socket {
        family: sockopt::socket_domain(fd).unwrap().as_raw(),
        sotype: sockopt::socket_type(fd).unwrap().as_raw(),
        listening: sockopt::socket_acceptconn(fd).unwrap(),
        local: conv(rustix::net::getsockname(fd).unwrap()),
        peer: match rustix::net::getpeername(fd) {
            Ok(Some(a)) => conv(a),
            Ok(None) => Addr::Unnamed,
            Err(e) => {
                assert_eq!(e, rustix::io::Errno::NOTCONN);
                Addr::None
            }
        },
    }
}

/// Describes through a new connection and checks the daemon's fd count
/// is back to `baseline` once the connection is gone.
fn describe(d: &Daemon, baseline: usize) -> Vec<Held> {
    let mut c = d.client();
    let held = c.describe(dl()).unwrap();
    drop(c);
    assert_eq!(
        d.wait_fds(baseline),
        baseline,
        "daemon fd count after describe"
    );
    held
}

/// A daemon on cdb rules giving every right: its fd count does not move
/// with a rules directory cache (which a mount anywhere on the machine
/// empties, closing its descriptors).
fn daemon(which: Impl, args: &[&str], rules_dir: &common::TempDir) -> Daemon {
    let dir = common::full_rules(rules_dir);
    let cdb = rules_dir.join("rules.cdb");
    let out = run(
        &ours("s6-accessrules-cdb-from-fs"),
        &[cdb.to_str().unwrap(), dir.to_str().unwrap()],
        rules_dir,
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    Daemon::start_with(
        which,
        Opts {
            args,
            rules: Some(("-x", cdb)),
            ..Opts::default()
        },
    )
}

/// Waits for the daemon to hold exactly `n` descriptors (the client that
/// stored them gone) and returns `n`.
fn settled(d: &Daemon, n: usize) -> usize {
    assert_eq!(d.wait_fds(n), n, "daemon fd count before describe");
    n
}

fn by_id<'a>(held: &'a [Held], id: &str) -> &'a Held {
    held.iter()
        .find(|h| h.id == id.as_bytes())
        .unwrap_or_else(|| panic!("{id} not described"))
}

/// Everything the test holds, so that the copies stay open.
struct Fds(Vec<(String, OwnedFd)>);

impl Fds {
    fn add(&mut self, c: &mut Client, id: &str, fd: impl Into<OwnedFd>) {
        let fd = fd.into();
        c.store(fd.as_fd(), id.as_bytes(), None, dl()).unwrap();
        self.0.push((id.to_string(), fd));
    }
    fn get(&self, id: &str) -> BorrowedFd<'_> {
        self.0.iter().find(|(i, _)| i == id).unwrap().1.as_fd()
    }
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

#[test]
fn every_kind_is_described_as_the_test_sees_it() {
    let t = tmpdir("describe-kinds");
    let d = daemon(Impl::Ours, &[], &t);
    let empty = d.open_fds();
    let mut c = d.client();
    let mut fds = Fds(Vec::new());

    // Sockets: TCP listening and both ends of a connection, UDP bound and
    // connected, IPv6 when the loopback has it, Unix stream and datagram on
    // a path, abstract, unnamed.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let tcp_client = TcpStream::connect(tcp_addr).unwrap();
    let (tcp_server, _) = tcp.accept().unwrap();
    fds.add(&mut c, "tcp-listen", tcp);
    fds.add(&mut c, "tcp-client", tcp_client);
    fds.add(&mut c, "tcp-server", tcp_server);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_conn = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp_conn.connect(udp.local_addr().unwrap()).unwrap();
    fds.add(&mut c, "udp", udp);
    fds.add(&mut c, "udp-connected", udp_conn);
    let v6 = TcpListener::bind("[::1]:0").ok();
    if let Some(v6) = v6 {
        fds.add(&mut c, "tcp6-listen", v6);
    } else {
        common::loud("no IPv6 loopback: the inet6 socket is not described");
    }
    let upath = t.join("u.sock");
    fds.add(&mut c, "unix-listen", UnixListener::bind(&upath).unwrap());
    let unix_conn = UnixStream::connect(&upath).unwrap();
    fds.add(&mut c, "unix-connected", unix_conn);
    let abs_name = format!("fdholder-describe-{}", std::process::id());
    let abs = UnixAddr::from_abstract_name(abs_name.as_bytes()).unwrap();
    fds.add(
        &mut c,
        "unix-abstract",
        UnixListener::bind_addr(&abs).unwrap(),
    );
    let dg = UnixDatagram::bind(t.join("d.sock")).unwrap();
    fds.add(&mut c, "unix-dgram-path", dg);
    let dg_abs = UnixAddr::from_abstract_name(format!("{abs_name}-dg").as_bytes()).unwrap();
    fds.add(
        &mut c,
        "unix-dgram-abstract",
        UnixDatagram::bind_addr(&dg_abs).unwrap(),
    );
    fds.add(
        &mut c,
        "unix-dgram-unbound",
        UnixDatagram::unbound().unwrap(),
    );
    let (p1, _p2) = UnixStream::pair().unwrap();
    fds.add(&mut c, "unix-pair", p1);

    // Pipes, a FIFO (both ends), files, a directory.
    let (r, w) = rustix::pipe::pipe().unwrap();
    fds.add(&mut c, "pipe-read", r);
    fds.add(&mut c, "pipe-write", w);
    let fifo = t.join("fifo");
    mkfifo(&fifo);
    let fifo_r = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let fifo_w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    fds.add(&mut c, "fifo-read", fifo_r);
    fds.add(&mut c, "fifo-write", fifo_w);
    let fpath = t.join("data");
    std::fs::write(&fpath, b"twelve bytes").unwrap();
    let rdwr = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fpath)
        .unwrap();
    let append = std::fs::OpenOptions::new()
        .append(true)
        .open(&fpath)
        .unwrap();
    fds.add(&mut c, "file-rdwr", rdwr);
    fds.add(&mut c, "file-append", append);
    fds.add(&mut c, "dir", std::fs::File::open(t.path()).unwrap());
    let o_path = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&fpath)
        .unwrap();
    fds.add(&mut c, "o-path", o_path);

    // A memfd with seals, the anonymous inodes, a device.
    let memfd = rustix::fs::memfd_create(
        "describe-me",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::io::write(&memfd, &[7u8; 5000]).unwrap();
    rustix::fs::fcntl_add_seals(
        &memfd,
        rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
    )
    .unwrap();
    fds.add(&mut c, "memfd", memfd);
    let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    fds.add(&mut c, "eventfd", ev);
    let tfd = rustix::time::timerfd_create(
        rustix::time::TimerfdClockId::Monotonic,
        rustix::time::TimerfdFlags::CLOEXEC,
    )
    .unwrap();
    fds.add(&mut c, "timerfd", tfd);
    fds.add(
        &mut c,
        "signalfd",
        fdholder_suite::sys::signalfd(&[libc::SIGUSR2]).unwrap(),
    );
    let pidfd = rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    fds.add(&mut c, "pidfd", pidfd);
    let ep = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
    fds.add(&mut c, "epoll", ep);
    fds.add(&mut c, "devnull", std::fs::File::open("/dev/null").unwrap());
    // One with an expiry.
    let limit = Tain::now().add_secs(1000);
    let pe = fds.get("pipe-read").try_clone_to_owned().unwrap();
    c.store(pe.as_fd(), b"expiring", Some(limit), dl()).unwrap();
    drop(c);

    let baseline = settled(&d, empty + fds.0.len() + 1);
    let held = describe(&d, baseline);
    assert_eq!(held.len(), fds.0.len() + 1);
    // Storage order, as list gives it.
    let ids = d.client().list(dl()).unwrap();
    assert_eq!(held.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(by_id(&held, "expiring").limit, Some(limit));
    for (id, fd) in &fds.0 {
        let h = by_id(&held, id);
        assert_eq!(h.limit, None, "{id}");
        let fd = fd.as_fd();
        let desc = &h.description;
        check_common(id, desc, fd);
        let l = link(fd);
        let st = rustix::fs::fstat(fd).unwrap();
        let mut want = Description {
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
            flags: rustix::fs::fcntl_getfl(fd).unwrap().bits(),
            ..Description::default()
        };
        (want.kind, want.path) = match id.as_str() {
            s if s.starts_with("tcp") || s.starts_with("udp") || s.starts_with("unix") => {
                want.socket = Some(expected_socket(fd));
                (Kind::Socket, vec![])
            }
            "pipe-read" | "pipe-write" => {
                assert_eq!(l, format!("pipe:[{}]", desc.ino).into_bytes(), "{id}");
                let end = if id == "pipe-read" {
                    End::Read
                } else {
                    End::Write
                };
                assert_eq!(desc.end(), end, "{id}");
                (Kind::Pipe, vec![])
            }
            "fifo-read" | "fifo-write" => {
                let end = if id == "fifo-read" {
                    End::Read
                } else {
                    End::Write
                };
                assert_eq!(desc.end(), end, "{id}");
                (Kind::Fifo, l.clone())
            }
            "file-rdwr" | "file-append" => {
                want.size = 12;
                (Kind::File, l.clone())
            }
            "dir" => (Kind::Directory, l.clone()),
            "o-path" => (Kind::Other, l.clone()),
            "memfd" => {
                want.size = 5000;
                want.seals = rustix::fs::fcntl_get_seals(fd).unwrap().bits();
                (Kind::Memfd, b"describe-me".to_vec())
            }
            "eventfd" => (Kind::EventFd, vec![]),
            "timerfd" => (Kind::TimerFd, vec![]),
            "signalfd" => (Kind::SignalFd, vec![]),
            "pidfd" => (Kind::PidFd, vec![]),
            "epoll" => (Kind::AnonInode, b"[eventpoll]".to_vec()),
            "devnull" => {
                want.rdev = st.st_rdev;
                (Kind::CharDevice, b"/dev/null".to_vec())
            }
            other => panic!("{other}"),
        };
        assert_eq!(desc, &want, "{id}");
    }

    // What the test knows independently of the daemon's calls.
    let sock = |id| by_id(&held, id).description.socket.clone().unwrap();
    let listen = sock("tcp-listen");
    assert!(listen.listening);
    assert_eq!(
        (listen.family, listen.local.clone(), listen.peer.clone()),
        (libc::AF_INET as u16, Addr::Inet(tcp_addr), Addr::None)
    );
    assert!(!sock("tcp-client").listening);
    assert_eq!(sock("tcp-client").peer, Addr::Inet(tcp_addr));
    assert_eq!(sock("tcp-server").local, Addr::Inet(tcp_addr));
    assert_eq!(sock("udp").sotype, libc::SOCK_DGRAM as u32);
    assert_eq!(sock("udp").peer, Addr::None);
    assert_eq!(sock("udp-connected").peer, sock("udp").local);
    assert_eq!(
        sock("unix-listen").local,
        Addr::Path(upath.as_os_str().as_encoded_bytes().to_vec())
    );
    assert_eq!(sock("unix-connected").local, Addr::Unnamed);
    assert_eq!(sock("unix-connected").peer, sock("unix-listen").local);
    assert_eq!(
        sock("unix-abstract").local,
        Addr::Abstract(abs_name.clone().into_bytes())
    );
    assert_eq!(sock("unix-dgram-unbound").local, Addr::Unnamed);
    assert_eq!(sock("unix-dgram-unbound").peer, Addr::None);
    assert_eq!(sock("unix-pair").peer, Addr::Unnamed);
    assert_eq!(sock("unix-pair").sotype, libc::SOCK_STREAM as u32);
    let append = &by_id(&held, "file-append").description;
    assert_eq!(
        append.flags & (libc::O_APPEND as u32),
        libc::O_APPEND as u32
    );
    assert_eq!(append.end(), End::Write);
    assert_eq!(by_id(&held, "file-rdwr").description.end(), End::Both);
    assert_eq!(by_id(&held, "memfd").description.seals, 2 | 4);

    // The same through the command line: one line per fd, in order.
    let out = run(
        &ours("s6-fdholder-list"),
        &["-l", d.sock.to_str().unwrap()],
        &d.dir,
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), held.len());
    let find = |id: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{id}\t")))
            .unwrap_or_else(|| panic!("{id}: {}", out.stdout))
    };
    assert_eq!(
        find("tcp-listen"),
        format!(
            "tcp-listen\tnever\tsocket flags=rdwr family=inet type=stream listening=yes local={tcp_addr} peer=none"
        )
    );
    assert!(
        find("expiring").starts_with("expiring\t99"),
        "{}",
        find("expiring")
    );
    assert_eq!(
        find("file-append"),
        format!(
            "file-append\tnever\tfile flags=wronly,append size=12 path={}",
            fpath.display()
        )
    );
    let ino = by_id(&held, "pipe-write").description.ino;
    assert_eq!(
        find("pipe-write"),
        format!("pipe-write\tnever\tpipe flags=wronly inode={ino} end=write")
    );
    assert_eq!(
        find("memfd"),
        "memfd\tnever\tmemfd flags=rdwr size=5000 seals=shrink,grow name=describe-me"
    );
    assert_eq!(
        find("devnull"),
        "devnull\tnever\tchardev flags=rdonly rdev=1:3 path=/dev/null"
    );
    assert_eq!(
        find("unix-abstract"),
        format!(
            "unix-abstract\tnever\tsocket flags=rdwr family=unix type=stream listening=yes local=@{abs_name} peer=none"
        )
    );
    assert_eq!(
        find("signalfd"),
        "signalfd\tnever\tsignalfd flags=rdwr,nonblock"
    );
    assert_eq!(d.wait_fds(baseline), baseline);
}

/// Ids with bytes that need quoting.
const ODD: &[&[u8]] = &[
    b"plain",
    b"tab\there",
    b"nl\nx",
    b"\x01\x7f\x80\xff",
    b"back\\slash",
    b"quo\"te",
    b"sp ace",
    b"\x07\x08\x0b\x0c\r",
];

#[test]
fn ids_are_quoted_as_plain_list_quotes_them() {
    let t = tmpdir("describe-ids");
    let d = daemon(Impl::Ours, &[], &t);
    let empty = d.open_fds();
    let mut c = d.client();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    for id in ODD {
        c.store(r.as_fd(), id, None, dl()).unwrap();
    }
    drop(c);
    let baseline = settled(&d, empty + ODD.len());
    let sock = d.sock.to_str().unwrap();
    let plain = run(&ours("s6-fdholder-list"), &[sock], &d.dir, &[]);
    assert_eq!(plain.code, Some(0));
    assert_eq!(plain.stdout.lines().count(), ODD.len());
    if let Some(theirs) = common::reference("s6-fdholder-list") {
        // Without -l the output is byte for byte the reference's.
        let t = Command::new(theirs).arg(sock).output().unwrap();
        assert_eq!(t.status.code(), Some(0));
        assert_eq!(plain.stdout.as_bytes(), &t.stdout[..]);
    }
    let long = run(&ours("s6-fdholder-list"), &["-l", sock], &d.dir, &[]);
    assert_eq!(long.code, Some(0), "{long:?}");
    let ids: Vec<&str> = long
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(ids, plain.stdout.lines().collect::<Vec<_>>());
    assert_eq!(d.wait_fds(baseline), baseline);

    // JSON: one object per line; "id" is the quoted form, "id_hex" the
    // bytes; checked with Python's json module.
    let json = run(&ours("s6-fdholder-list"), &["-j", sock], &d.dir, &[]);
    assert_eq!(json.code, Some(0), "{json:?}");
    let py = "import json,sys\n\
              for l in sys.stdin:\n\
              \x20 o=json.loads(l)\n\
              \x20 assert o['kind']=='pipe' and o['end']=='read' and o['expires_in'] is None, o\n\
              \x20 print(o['id']); print(o['id_hex'])\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", py])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.stdout.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", json.stdout);
    let o = String::from_utf8(o.stdout).unwrap();
    let got: Vec<&str> = o.lines().collect();
    for (i, (quoted, id)) in plain.stdout.lines().zip(ODD).enumerate() {
        assert_eq!(got[2 * i], quoted);
        let hex: String = id.iter().map(|c| format!("{c:02x}")).collect();
        assert_eq!(got[2 * i + 1], hex);
    }
    assert_eq!(d.wait_fds(baseline), baseline);
}

#[test]
fn describe_needs_the_list_right() {
    let t = tmpdir("describe-rights");
    let rules = rules_with(
        &t,
        "rules",
        &[
            ("S6_FDHOLDER_STORE_REGEX", Some("")),
            ("S6_FDHOLDER_RETRIEVE_REGEX", Some("")),
            ("S6_FDHOLDER_GETDUMP", Some("")),
        ],
    );
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    let mut c = d.client();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    c.store(r.as_fd(), b"x", None, dl()).unwrap();
    assert_eq!(errno(c.list(dl()).unwrap_err()), libc::EPERM);
    assert_eq!(errno(c.describe(dl()).unwrap_err()), libc::EPERM);
    // The refusal is a whole answer: the connection goes on.
    assert_eq!(c.retrieve(b"x", dl()).map(|_| ()).unwrap(), ());
    drop(c);
    let sock = d.sock.to_str().unwrap();
    for opt in ["-l", "-j"] {
        let out = run(&ours("s6-fdholder-list"), &[opt, sock], &d.dir, &[]);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert_eq!(
            out.stderr,
            "s6-fdholder-list: fatal: unable to describe fds: Operation not permitted\n"
        );
        assert_eq!(out.stdout, "");
    }
}

#[test]
fn reference_daemon_does_not_know_describe() {
    if !have_reference() {
        return;
    }
    let t = tmpdir("describe-ref");
    let d = daemon(Impl::Reference, &[], &t);
    let empty = d.open_fds();
    let mut c = d.client();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    c.store(r.as_fd(), b"held", None, dl()).unwrap();
    drop(c);
    let baseline = settled(&d, empty + 1);
    let mut c = d.client();
    let e = c.describe(dl()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
    drop(c);
    let sock = d.sock.to_str().unwrap();
    for opt in ["-l", "-j"] {
        let out = run(&ours("s6-fdholder-list"), &[opt, sock], &d.dir, &[]);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert_eq!(
            out.stderr,
            "s6-fdholder-list: fatal: unable to describe fds: the daemon does not know the \
             describe request (an s6-fdholderd from s6?): run s6-fdholder-list without -l or -j\n"
        );
        assert_eq!(out.stdout, "");
    }
    // It goes on serving, and holds what it held.
    assert_eq!(d.client().list(dl()).unwrap(), vec![b"held".to_vec()]);
    let out = run(&ours("s6-fdholder-list"), &[sock], &d.dir, &[]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "held\n"));
    assert_eq!(d.wait_fds(baseline), baseline);
}

#[test]
fn a_large_store_is_described_whole() {
    const N: usize = 5000;
    let t = tmpdir("describe-large");
    let d = daemon(Impl::Ours, &["-n", "6000"], &t);
    let empty = d.open_fds();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let (s1, _s2) = UnixStream::pair().unwrap();
    // Long ids, so that the answer takes many chunks.
    let ids: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("{i:05}-{}", "x".repeat(200)).into_bytes())
        .collect();
    let limit = Tain::infinite_from(Tain::now());
    let entries: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| fdholder::DumpEntryRef {
            id,
            fd: if i % 2 == 0 { r.as_fd() } else { s1.as_fd() },
            limit,
        })
        .collect();
    let mut c = d.client();
    c.setdump(&entries, dl()).unwrap();
    drop(c);
    let baseline = settled(&d, empty + N);
    let held = describe(&d, baseline);
    assert_eq!(held.len(), N);
    let ino = rustix::fs::fstat(&r).unwrap().st_ino;
    for (i, h) in held.iter().enumerate() {
        assert_eq!(h.id, ids[i]);
        if i % 2 == 0 {
            assert_eq!(h.description.kind, Kind::Pipe);
            assert_eq!(h.description.end(), End::Read);
            assert_eq!(h.description.ino, ino);
        } else {
            assert_eq!(h.description.kind, Kind::Socket);
            assert_eq!(h.description.socket.as_ref().unwrap().peer, Addr::Unnamed);
        }
    }
    // And twice in a row on one connection.
    let mut c = d.client();
    assert_eq!(c.describe(dl()).unwrap().len(), N);
    assert_eq!(c.describe(dl()).unwrap().len(), N);
    drop(c);
    assert_eq!(d.wait_fds(baseline), baseline);
}
