//! `s6-fdholder-sdnotify` against our daemon, with real programs written
//! for systemd: Debian's `python3-systemd` (`systemd.daemon.notify` with
//! `fds=`, `listen_fds_with_names`, libsystemd underneath) and the Rust
//! crates `sd-notify` (feature `fdstore`) and `listenfd`, the latter run as
//! this test binary's ignored test `sd_notify_child` (as in sdlisten.rs).
//!
//! Most tests run a driver under sdnotify: a Python program that executes
//! the statements the test writes to its stdin, one a line, answering
//! `done`; so the test decides what the service sends and when. Every
//! hostile case is its own test: the warning naming it is written, nothing
//! is stored, the watcher's and the daemon's descriptor counts come back
//! to what they were, and the watcher goes on serving (a good datagram
//! after is stored). The watcher is found as the process holding the
//! notify socket (its inode, from /proc/net/unix).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, TempDir, is_root, ours, wait_timeout};

use common::PYTHON;

fn sdnotify() -> PathBuf {
    ours("s6-fdholder-sdnotify")
}

/// The driver: reports itself, then runs each line of stdin as a
/// statement. `raw` sends a datagram as it is (with fds), `pipe` makes a
/// pipe whose fds the driver closes after the statement.
const DRIVER: &str = r#"
import os, socket, sys
from systemd import daemon
NS = os.environ["NOTIFY_SOCKET"]
def raw(data, fds=()):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(NS)
    socket.send_fds(s, [data], list(fds)) if fds else s.send(data)
    s.close()
opened = []
def pipe():
    r, w = os.pipe()
    opened.extend([r, w])
    return r, w
print("start", os.getpid(), NS, os.environ.get("FDSTORE"), os.environ.get("LISTEN_FDNAMES", "-"), flush=True)
for line in sys.stdin:
    exec(line)
    for fd in opened:
        os.close(fd)
    opened = []
    print("done", flush=True)
"#;

/// A driver running under sdnotify.
struct Svc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    pid: u32,
    notify: String,
    fdstore: String,
    names: String,
    watcher: u32,
    tmp: TempDir,
    syncs: u32,
}

impl Svc {
    /// `sdnotify opts... SOCK svc/ python DRIVER`, with `shell` run first
    /// by `sh` (e.g. `exec 5>fifo`).
    fn start(d: &Daemon, opts: &[&str], shell: &str) -> Svc {
        Svc::start_in(d, opts, shell, &[])
    }

    /// [`Svc::start`] with sdnotify run by `wrap` (e.g. `unshare`).
    fn start_in(d: &Daemon, opts: &[&str], shell: &str, wrap: &[&str]) -> Svc {
        Svc::start_on(&d.sock, opts, shell, wrap)
    }

    /// [`Svc::start_in`] with the holder's path given.
    fn start_on(holder: &Path, opts: &[&str], shell: &str, wrap: &[&str]) -> Svc {
        let tmp = TempDir::new("sdnotify");
        let mut child = Command::new("sh")
            .args(["-c", &format!("{shell}\nexec \"$@\""), "sh"])
            .args(wrap)
            .arg(sdnotify())
            .args(opts)
            .arg(holder)
            .args(["svc/", PYTHON, "-c", DRIVER])
            .current_dir(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(tmp.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.first(), Some(&"start"), "{line:?}: {}", read(&tmp));
        let (pid, notify) = (f[1].parse().unwrap(), f[2].to_string());
        if wrap.is_empty() {
            assert_eq!(pid, child.id(), "sdnotify execs into the program");
        }
        let watcher = watcher_of(&notify);
        Svc {
            child,
            stdin,
            out,
            pid,
            notify,
            fdstore: f[3].to_string(),
            names: f[4].to_string(),
            watcher,
            tmp,
            syncs: 0,
        }
    }

    /// Runs a statement in the driver.
    fn exec(&mut self, stmt: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{stmt}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line, "done\n", "{stmt}: {}", self.stderr());
    }

    /// Waits until the watcher has handled everything the driver sent
    /// so far: it logs a `STATUS=` sent after.
    fn sync(&mut self) {
        self.syncs += 1;
        let n = self.syncs;
        self.exec(&format!("daemon.notify('STATUS=sync-{n}')"));
        let want = format!("status: sync-{n}\n");
        wait_for(|| self.stderr().contains(&want), || self.stderr());
    }

    fn stderr(&self) -> String {
        read(&self.tmp)
    }

    fn watcher_fds(&self) -> usize {
        fd_count(self.watcher)
    }

    /// Closes the driver's stdin: it exits, and so does the watcher.
    fn stop(mut self) -> String {
        drop(self.stdin.take());
        let code = wait_timeout(&mut self.child, Duration::from_secs(20));
        assert_eq!(code, Some(0), "{}", self.stderr());
        let w = self.watcher;
        wait_for(|| !Path::new(&format!("/proc/{w}")).exists(), String::new);
        let dir = Path::new(&self.notify).parent().unwrap().to_path_buf();
        assert!(!dir.exists(), "the socket's directory is removed");
        self.stderr()
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(tmp: &TempDir) -> String {
    std::fs::read_to_string(tmp.join("stderr")).unwrap_or_default()
}

/// Polls `cond` for 20 s at most; panics with `what()` past that.
fn wait_for(mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The process holding the socket bound at `path` (the watcher).
fn watcher_of(path: &str) -> u32 {
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let inode = unix
        .lines()
        .find(|l| l.ends_with(&format!(" {path}")))
        .and_then(|l| l.split_whitespace().nth(6))
        .unwrap_or_else(|| panic!("{path} not in /proc/net/unix"))
        .to_string();
    let link = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == link) {
                return pid;
            }
        }
    }
    panic!("no process holds {path}")
}

/// The ids held, sorted.
fn held(d: &Daemon) -> Vec<String> {
    let mut ids: Vec<String> = d
        .client()
        .list(None)
        .unwrap()
        .into_iter()
        .map(|i| String::from_utf8(i).unwrap())
        .collect();
    ids.sort();
    ids
}

/// A hostile datagram, sent by `stmt` in the driver run with `opts`: the
/// warning `warning` is written, nothing is stored, no fd is left in the
/// watcher or the daemon, the program runs on and a good datagram after
/// is stored.
fn hostile(opts: &[&str], stmt: &str, warning: &str) {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let dfds = d.open_fds();
    let mut s = Svc::start(&d, opts, "");
    let wfds = s.watcher_fds();
    s.exec(stmt);
    s.sync();
    let err = s.stderr();
    assert!(
        err.contains(&format!("s6-fdholder-sdnotify: warning: {warning}")),
        "{err}"
    );
    assert_eq!(held(&d), Vec::<String>::new());
    assert_eq!(s.watcher_fds(), wfds, "no fd left in the watcher");
    assert_eq!(d.wait_fds(dfds), dfds, "no fd left in the daemon");
    s.exec("r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=after\\nFDPOLL=0', fds=[r])");
    s.sync();
    assert_eq!(held(&d), ["svc/after:00000000"]);
    assert_eq!(s.watcher_fds(), wfds);
    s.stop();
}

#[test]
fn oversize_datagram() {
    hostile(
        &[],
        "r, w = pipe(); raw(b'FDSTORE=1\\nSTATUS=' + b'x' * 5000, [r])",
        "datagram refused: datagram larger than 4096 bytes",
    );
}

/// More fds than `-n 2` makes room for: the kernel truncates the control
/// data (MSG_CTRUNC) and closes those that did not fit; the others are
/// closed by the watcher.
#[test]
fn truncated_control_data() {
    hostile(
        &["-n", "2"],
        "ps = [pipe() for _ in range(5)]; raw(b'FDSTORE=1', [p[0] for p in ps] + [p[1] for p in ps])",
        "datagram refused: control data truncated (too many fds)",
    );
}

/// Sent by another process (the test): refused without `-a`.
#[test]
fn another_pid() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let dfds = d.open_fds();
    let mut s = Svc::start(&d, &[], "");
    let wfds = s.watcher_fds();
    let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    send_from_here(&s.notify, b"FDSTORE=1\nFDNAME=x", &[r.as_fd()]);
    s.sync();
    let me = std::process::id();
    assert!(
        s.stderr().contains(&format!(
            "warning: datagram refused: sent by pid {me}, not the program's"
        )),
        "{}",
        s.stderr()
    );
    assert_eq!(held(&d), Vec::<String>::new());
    assert_eq!(s.watcher_fds(), wfds);
    assert_eq!(d.wait_fds(dfds), dfds);
    s.stop();
}

fn send_from_here(path: &str, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sock.connect(path).unwrap();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    rustix::net::sendmsg(
        &sock,
        &[std::io::IoSlice::new(data)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
}

/// A sender outside the watcher's pid namespace (the test; sdnotify runs
/// under `unshare --pid --fork`): the kernel's credentials say pid 0,
/// which names no process: refused as no credentials, even with `-a`.
#[test]
fn no_credentials() {
    if !is_root("no_credentials") || !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let dfds = d.open_fds();
    let mut s = Svc::start_in(&d, &["-a"], "", &["unshare", "--pid", "--fork"]);
    let wfds = s.watcher_fds();
    let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    send_from_here(&s.notify, b"FDSTORE=1\nFDNAME=x", &[r.as_fd()]);
    s.sync();
    assert!(
        s.stderr()
            .contains("warning: datagram refused: no credentials (or a pid of 0)"),
        "{}",
        s.stderr()
    );
    assert_eq!(held(&d), Vec::<String>::new());
    assert_eq!(s.watcher_fds(), wfds);
    assert_eq!(d.wait_fds(dfds), dfds);
    s.exec("r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=after\\nFDPOLL=0', fds=[r])");
    s.sync();
    assert_eq!(held(&d), ["svc/after:00000000"]);
    drop(s.stdin.take());
    let code = wait_timeout(&mut s.child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", s.stderr());
    // The program was pid 1 of its namespace: its exit killed the watcher
    // (SIGKILL from the kernel), which could not remove its directory.
    let dir = Path::new(&s.notify).parent().unwrap().to_path_buf();
    let _ = std::fs::remove_file(&s.notify);
    let _ = std::fs::remove_dir(&dir);
}

/// A process of another uid (the driver's child, connected as root, then
/// uid 65534): refused even with `-a`.
#[test]
fn another_uid() {
    if !is_root("another_uid") {
        return;
    }
    hostile(
        &["-a"],
        "r, w = pipe(); s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect(NS); \
         c = os.fork(); exec(\"if c == 0:\\n os.setuid(65534); \
         socket.send_fds(s, [b'FDSTORE=1'], [r]); os._exit(0)\"); s.close(); os.waitpid(c, 0)",
        "datagram refused: sent by uid 65534, not the program's",
    );
}

#[test]
fn fds_without_fdstore() {
    hostile(
        &[],
        "r, w = pipe(); raw(b'FDNAME=x', [r, w])",
        "datagram refused: 2 fds without FDSTORE=1",
    );
}

#[test]
fn name_with_a_colon() {
    hostile(
        &[],
        "r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=a:b', fds=[r])",
        "datagram refused: invalid FDNAME",
    );
}

#[test]
fn name_with_a_control_character() {
    hostile(
        &[],
        "r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=a\\tb', fds=[r])",
        "datagram refused: invalid FDNAME",
    );
}

#[test]
fn name_of_256_characters() {
    hostile(
        &[],
        "r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=' + 'n' * 256, fds=[r])",
        "datagram refused: invalid FDNAME",
    );
}

#[test]
fn garbage_bytes() {
    hostile(
        &[],
        "r, w = pipe(); raw(b'\\xff\\x00\\x01garbage\\nFDSTORE=1', [r])",
        "datagram refused: malformed (not newline-separated KEY=VALUE)",
    );
}

/// 5000 datagrams with fds as fast as the driver can send them: each is
/// refused, its fds closed, the warnings are bounded, the program runs
/// on and the watcher serves after.
#[test]
fn flood() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let dfds = d.open_fds();
    let mut s = Svc::start(&d, &[], "");
    let wfds = s.watcher_fds();
    s.exec(
        "r, w = pipe(); s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect(NS); \
         [socket.send_fds(s, [b'X=1'], [r]) for _ in range(5000)]; s.close()",
    );
    // A datagram in the flood's second is refused too: sent again until
    // one is served.
    let mut n = 0;
    loop {
        n += 1;
        s.exec(&format!("daemon.notify('STATUS=flood-over-{n}')"));
        let end = Instant::now() + Duration::from_secs(2);
        let want = format!("status: flood-over-{n}\n");
        while Instant::now() < end && !s.stderr().contains(&want) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if s.stderr().contains(&want) {
            break;
        }
        assert!(n < 10, "the watcher serves again: {}", s.stderr());
    }
    let err = s.stderr();
    let lines = err
        .lines()
        .filter(|l| l.contains("datagram refused"))
        .count();
    assert!(lines <= 200, "warnings are bounded: {lines}");
    assert!(err.contains("more datagrams refused"), "{err}");
    assert_eq!(held(&d), Vec::<String>::new());
    assert_eq!(s.watcher_fds(), wfds);
    assert_eq!(d.wait_fds(dfds), dfds);
    s.exec("r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=after\\nFDPOLL=0', fds=[r])");
    s.sync();
    assert_eq!(held(&d), ["svc/after:00000000"]);
    s.stop();
}

/// `READY=1` twice: one newline on the notification fd, which the program
/// does not have.
#[test]
fn ready_writes_one_newline_once() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let tmp = TempDir::new("sdnotify-fifo");
    let fifo = tmp.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut s = Svc::start(&d, &["-d", "5"], &format!("exec 5>{}", fifo.display()));
    assert!(
        !Path::new(&format!("/proc/{}/fd/5", s.pid)).exists(),
        "the program has no notification fd"
    );
    s.exec("daemon.notify('READY=1')");
    s.exec("daemon.notify('READY=1')");
    s.sync();
    s.stop();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"\n");
}

use std::os::unix::fs::OpenOptionsExt;

/// Several fds under one name are all kept, in order; the same file again
/// is not stored twice; the next start gets them all under that name;
/// `FDSTOREREMOVE=1` deletes every one of that name and nothing else.
#[test]
fn several_fds_one_name_and_remove() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let dfds = d.open_fds();
    let mut s = Svc::start(&d, &[], "");
    assert_eq!(s.fdstore, "64");
    assert_eq!(s.names, "-");
    s.exec(
        "a = pipe(); b = pipe(); \
         daemon.notify('FDSTORE=1\\nFDNAME=p\\nFDPOLL=0', fds=[a[0], b[0]]); \
         daemon.notify('FDSTORE=1\\nFDNAME=other\\nFDPOLL=0', fds=[a[1]])",
    );
    s.sync();
    assert_eq!(
        held(&d),
        ["svc/other:00000000", "svc/p:00000000", "svc/p:00000001"]
    );
    s.stop();
    let mut s = Svc::start(&d, &[], "");
    assert_eq!(s.names, "other:p:p");
    // fd 4 and 5 are what is held: storing them again stores nothing.
    s.exec("daemon.notify('FDSTORE=1\\nFDNAME=p\\nFDPOLL=0', fds=[4, 5])");
    s.exec("r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=p\\nFDPOLL=0', fds=[r])");
    s.sync();
    assert_eq!(
        held(&d),
        [
            "svc/other:00000000",
            "svc/p:00000000",
            "svc/p:00000001",
            "svc/p:00000002"
        ]
    );
    s.exec("daemon.notify('FDSTOREREMOVE=1\\nFDNAME=p')");
    s.sync();
    assert_eq!(held(&d), ["svc/other:00000000"]);
    s.stop();
    let mut c = d.client();
    c.delete(b"svc/other:00000000", None).unwrap();
    drop(c);
    assert_eq!(d.wait_fds(dfds), dfds);
}

/// A datagram from a child of the program: refused by default
/// (`NotifyAccess=main`), stored with `-a` (`NotifyAccess=all`).
#[test]
fn notify_access_main_and_all() {
    if !common::have_python_systemd() {
        return;
    }
    let from_child = "r, w = pipe(); c = os.fork(); \
        exec('if c == 0: daemon.notify(\"FDSTORE=1\\\\nFDNAME=kid\\\\nFDPOLL=0\", fds=[r]); os._exit(0)'); \
        os.waitpid(c, 0)";
    let d = Daemon::start(Impl::Ours);
    let mut s = Svc::start(&d, &[], "");
    s.exec(from_child);
    s.sync();
    assert!(s.stderr().contains("not the program's"), "{}", s.stderr());
    assert_eq!(held(&d), Vec::<String>::new());
    s.stop();
    let mut s = Svc::start(&d, &["-a"], "");
    s.exec(from_child);
    s.sync();
    assert_eq!(held(&d), ["svc/kid:00000000"]);
    assert!(!s.stderr().contains("refused"), "{}", s.stderr());
    s.stop();
}

/// The program sends and exits at once: the watcher stores what was
/// queued, then exits; `s6-fdholder-list` shows it held.
#[test]
fn program_exit_drains_the_queue() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let mut s = Svc::start(&d, &[], "");
    let stdin = s.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        "r, w = pipe(); [daemon.notify('FDSTORE=1\\nFDPOLL=0\\nFDNAME=q%d' % i, fds=[r]) for i in range(3)]; os._exit(0)"
    )
    .unwrap();
    let code = wait_timeout(&mut s.child, Duration::from_secs(20));
    assert_eq!(code, Some(0));
    let w = s.watcher;
    wait_for(|| !Path::new(&format!("/proc/{w}")).exists(), String::new);
    let out = Command::new(ours("s6-fdholder-list"))
        .arg(&d.sock)
        .output()
        .unwrap();
    let mut ids: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    ids.sort();
    // One file under three names: stored once (systemd ignores the same
    // file again).
    assert_eq!(ids, ["svc/q0:00000000"]);
}

/// The scenario of the issue, with Python's systemd module: a service
/// stores its listener and a pipe with data in it (`FDPOLL=0`: the pipe's
/// writer dies with the service, which would drop it otherwise), is
/// killed, is started again through sdnotify, gets both back by name; a
/// client that connected while it was down is served.
const PY_SERVICE: &str = r#"
import os, socket, sys
from systemd import daemon
fds = {n: fd for fd, n in daemon.listen_fds_with_names().items()}
if "listener" in fds:
    l = socket.socket(fileno=fds["listener"])
    state = os.read(fds["state"], 100).decode()
else:
    l = socket.socket(socket.AF_UNIX)
    l.bind(sys.argv[1])
    l.listen(16)
    r, w = os.pipe()
    os.write(w, b"kept-state")
    daemon.notify("FDSTORE=1\nFDNAME=listener", fds=[l.fileno()])
    daemon.notify("FDSTORE=1\nFDNAME=state\nFDPOLL=0", fds=[r])
    os.close(r)
    state = "fresh"
daemon.notify("READY=1")
while True:
    c, _ = l.accept()
    c.sendall(("served by %d %s\n" % (os.getpid(), state)).encode())
    c.close()
"#;

fn served(path: &Path) -> String {
    let mut c = UnixStream::connect(path).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// Runs the scenario with `service` (argv after sdnotify's), whose
/// listener is bound at `tmp/l.sock`.
fn scenario(service: &[&str]) {
    let d = Daemon::start(Impl::Ours);
    let tmp = TempDir::new("sdnotify-svc");
    let path = tmp.join("l.sock");
    let start = || {
        Command::new(sdnotify())
            .arg(&d.sock)
            .arg("svc/")
            .args(service)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut first = start();
    wait_for(|| held(&d).len() == 2, || format!("{:?}", held(&d)));
    assert_eq!(held(&d), ["svc/listener:00000000", "svc/state:00000000"]);
    let ino = std::fs::metadata(&path).unwrap().ino();
    assert_eq!(served(&path), format!("served by {} fresh\n", first.id()));
    first.kill().unwrap();
    first.wait().unwrap();
    // Down: a client connects (the held listener queues it).
    let waiting = std::thread::spawn({
        let path = path.clone();
        move || served(&path)
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut second = start();
    let got = waiting.join().unwrap();
    assert_eq!(got, format!("served by {} kept-state\n", second.id()));
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    let listener = d.client().retrieve(b"svc/listener:00000000", None).unwrap();
    let l = UnixListener::from(listener);
    assert_eq!(
        l.local_addr().unwrap().as_pathname(),
        Some(path.as_path()),
        "the same listener"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn python_service_gets_listener_and_pipe_back_by_name() {
    if !common::have_python_systemd() {
        return;
    }
    scenario(&[PYTHON, "-c", PY_SERVICE]);
}

/// The scenario's service, in Rust: `sd-notify` stores, `listenfd` takes
/// the listener back, `sd-notify`'s `listen_fds_with_names` names them.
/// Run as `sdnotify ... THIS_BINARY sd_notify_child --exact --ignored
/// --test-threads=1`, the listener's path in `SVC_PATH`; without it, does
/// nothing.
#[test]
#[ignore = "the Rust service of sd_notify_and_listenfd_service; does nothing on its own"]
fn sd_notify_child() {
    let Some(path) = std::env::var_os("SVC_PATH") else {
        return;
    };
    use sd_notify::NotifyState;
    let names: Vec<String> = sd_notify::listen_fds_with_names()
        .map(|it| it.map(|(_, n)| n).collect())
        .unwrap_or_default();
    let (listener, state) = if let Some(i) = names.iter().position(|n| n == "listener") {
        let mut lfd = listenfd::ListenFd::from_env();
        let l = lfd.take_unix_listener(i).unwrap().unwrap();
        let j = names.iter().position(|n| n == "state").unwrap();
        (l, read_handed(3 + j))
    } else {
        let l = UnixListener::bind(&path).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, b"kept-state").unwrap();
        drop(w);
        sd_notify::notify_with_fds(
            &[NotifyState::FdStore, NotifyState::FdName("listener")],
            &[l.as_fd()],
        )
        .unwrap();
        sd_notify::notify_with_fds(
            &[
                NotifyState::FdStore,
                NotifyState::FdName("state"),
                NotifyState::Custom("FDPOLL=0"),
            ],
            &[r.as_fd()],
        )
        .unwrap();
        (l, "fresh".to_string())
    };
    sd_notify::notify(&[NotifyState::Ready]).unwrap();
    for c in listener.incoming() {
        let mut c = c.unwrap();
        let _ = writeln!(c, "served by {} {state}", std::process::id());
    }
}

/// What the pipe read end handed over at descriptor `n` holds, read
/// through a new open of it (/proc/self/fd/N; non-blocking: its writer is
/// gone), without unsafe code.
fn read_handed(n: usize) -> String {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{n}"))
        .unwrap();
    let mut buf = [0u8; 100];
    let k = f.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..k]).into_owned()
}

#[test]
fn sd_notify_and_listenfd_service() {
    let me = std::env::current_exe().unwrap();
    let d = Daemon::start(Impl::Ours);
    let tmp = TempDir::new("sdnotify-rs");
    let path = tmp.join("l.sock");
    let start = || {
        Command::new(sdnotify())
            .arg(&d.sock)
            .arg("svc/")
            .arg(&me)
            .args([
                "sd_notify_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env("SVC_PATH", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut first = start();
    wait_for(|| held(&d).len() == 2, || format!("{:?}", held(&d)));
    assert_eq!(held(&d), ["svc/listener:00000000", "svc/state:00000000"]);
    let pid1 = served(&path);
    assert!(pid1.ends_with(" fresh\n"), "{pid1}");
    first.kill().unwrap();
    first.wait().unwrap();
    let waiting = std::thread::spawn({
        let path = path.clone();
        move || served(&path)
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut second = start();
    let got = waiting.join().unwrap();
    assert!(got.ends_with(" kept-state\n"), "{got}");
    assert_ne!(got, pid1);
    second.kill().unwrap();
    second.wait().unwrap();
}

/// `FDPOLL` (systemd's default: poll): a pipe stored without `FDPOLL=0`
/// is dropped by our daemon once its writer is gone (the driver closes
/// both ends after the statement); one stored with `FDPOLL=0` stays.
#[test]
fn fdpoll_default_drops_on_hangup_and_fdpoll_0_keeps() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let mut s = Svc::start(&d, &[], "");
    s.exec(
        "a = pipe(); b = pipe(); \
         daemon.notify('FDSTORE=1\\nFDNAME=polled', fds=[a[0]]); \
         daemon.notify('FDSTORE=1\\nFDNAME=kept\\nFDPOLL=0', fds=[b[0]])",
    );
    s.sync();
    wait_for(
        || held(&d) == ["svc/kept:00000000"],
        || format!("{:?}", held(&d)),
    );
    let err = s.stop();
    assert!(!err.contains("hang-up"), "{err}");
}

/// Against the reference daemon, which does not know the mark: the fds
/// are stored unmarked, and that is said once.
#[test]
fn reference_daemon_stores_unmarked_said_once() {
    if !common::have_python_systemd() || !common::have_reference() {
        return;
    }
    let d = Daemon::start(Impl::Reference);
    let mut s = Svc::start(&d, &[], "");
    s.exec("r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=a', fds=[r])");
    s.exec("r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=b', fds=[w])");
    s.sync();
    assert_eq!(held(&d), ["svc/a:00000000", "svc/b:00000000"]);
    let err = s.stop();
    assert_eq!(
        err.matches("warning: the fd-holder daemon cannot drop fds on hang-up")
            .count(),
        1,
        "{err}"
    );
}

/// The holder goes away and another starts at the same path (a symbolic
/// link the test moves): the watcher, which connects per datagram, warns
/// and closes the fds of a datagram sent meanwhile, then stores in the new
/// holder, numbering after what that one holds.
#[test]
fn holder_restart_between_datagrams() {
    if !common::have_python_systemd() {
        return;
    }
    let tmp = TempDir::new("sdnotify-restart");
    let link = tmp.join("holder");
    let d1 = Daemon::start(Impl::Ours);
    std::os::unix::fs::symlink(&d1.sock, &link).unwrap();
    let mut s = Svc::start_on(&link, &[], "", &[]);
    let wfds = s.watcher_fds();
    let store = "r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=n\\nFDPOLL=0', fds=[r])";
    s.exec(store);
    s.sync();
    assert_eq!(held(&d1), ["svc/n:00000000"]);
    drop(d1);
    s.exec(store);
    s.sync();
    assert!(
        s.stderr()
            .contains("warning: unable to store or delete fds in the fd-holder daemon"),
        "{}",
        s.stderr()
    );
    assert_eq!(s.watcher_fds(), wfds);
    let d2 = Daemon::start(Impl::Ours);
    let null = std::fs::File::open("/dev/null").unwrap();
    d2.client()
        .store(null.as_fd(), b"svc/n:00000007", None, None)
        .unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&d2.sock, &link).unwrap();
    s.exec(store);
    s.sync();
    assert_eq!(held(&d2), ["svc/n:00000007", "svc/n:00000008"]);
    assert_eq!(s.watcher_fds(), wfds);
    s.stop();
}

fn outcome(cmd: &mut Command) -> (Option<i32>, String, String) {
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const USAGE: &str = "s6-fdholder-sdnotify: usage: s6-fdholder-sdnotify [ -t timeout ] [ -d notif ] [ -a ] [ -n max ] path prefix prog...\n";

/// Usage errors exit 100 with the usage line; a notification fd that is
/// not open is fatal (111) before anything runs; a daemon that is not
/// there is sdlisten's fatal error (111).
#[test]
fn usage_and_errors() {
    let d = Daemon::start(Impl::Ours);
    for args in [
        &[][..],
        &["sock"],
        &["sock", "svc/"],
        &["-n", "254", "sock", "svc/", "true"],
        &["-x", "sock", "svc/", "true"],
    ] {
        let (code, out, err) = outcome(Command::new(sdnotify()).args(args));
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (Some(100), "", USAGE),
            "{args:?}"
        );
    }
    let (code, _, err) = outcome(
        Command::new(sdnotify())
            .args(["-d", "99"])
            .arg(&d.sock)
            .args(["svc/", "true"]),
    );
    assert_eq!(code, Some(111));
    assert_eq!(
        err,
        "s6-fdholder-sdnotify: fatal: unable to use notification fd: Bad file descriptor\n"
    );
    let tmp = TempDir::new("sdnotify-none");
    let (code, _, err) = outcome(
        Command::new(sdnotify())
            .arg(tmp.join("nothing"))
            .args(["svc/", "true"]),
    );
    assert_eq!(code, Some(111));
    assert!(
        err.starts_with("s6-fdholder-sdnotify: fatal: unable to connect to a fd-holder daemon at "),
        "{err}"
    );
}

/// What the program gets: what sdnotify was given (whatever the test
/// harness lets through, measured by running the same lister without
/// sdnotify), less the notification fd, and nothing of sdnotify's own (not
/// the notify socket, the pidfd, the daemon connection).
#[test]
fn the_program_gets_no_descriptor_of_ours() {
    let d = Daemon::start(Impl::Ours);
    let lister = "for f in /proc/$$/fd/*; do echo ${f##*/}; done";
    let run = |with: bool| {
        let mut c = Command::new("sh");
        c.args(["-c", "exec 5>/dev/null; exec \"$@\"", "sh"]);
        if with {
            c.arg(sdnotify()).args(["-d", "5"]).arg(&d.sock).arg("svc/");
        }
        c.args(["sh", "-c", lister]);
        let (code, out, err) = outcome(&mut c);
        assert_eq!(code, Some(0), "{err}");
        out
    };
    let given = run(false);
    assert!(given.lines().any(|l| l == "5"), "{given}");
    let expected: Vec<&str> = given.lines().filter(|l| *l != "5").collect();
    let got = run(true);
    assert_eq!(got.lines().collect::<Vec<_>>(), expected);
}

/// `-n 2`: `FDSTORE=2` is exported; a third fd under the prefix is closed
/// with a warning, as systemd closes fds beyond `FileDescriptorStoreMax=`;
/// after `FDSTOREREMOVE=1` there is room again.
#[test]
fn store_limit() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let dfds = d.open_fds();
    let mut s = Svc::start(&d, &["-n", "2"], "");
    assert_eq!(s.fdstore, "2");
    let wfds = s.watcher_fds();
    s.exec(
        "a = pipe(); b = pipe(); \
         daemon.notify('FDSTORE=1\\nFDNAME=x\\nFDPOLL=0', fds=[a[0], b[0]]); \
         daemon.notify('FDSTORE=1\\nFDNAME=y\\nFDPOLL=0', fds=[a[1]])",
    );
    s.sync();
    assert_eq!(held(&d), ["svc/x:00000000", "svc/x:00000001"]);
    assert!(
        s.stderr()
            .contains("warning: fd store full (2 fds under the prefix): 1 fds closed"),
        "{}",
        s.stderr()
    );
    assert_eq!(s.watcher_fds(), wfds);
    s.exec("daemon.notify('FDSTOREREMOVE=1\\nFDNAME=x')");
    s.exec("r, w = pipe(); daemon.notify('FDSTORE=1\\nFDNAME=y\\nFDPOLL=0', fds=[r])");
    s.sync();
    assert_eq!(held(&d), ["svc/y:00000000"]);
    s.stop();
    d.client().delete(b"svc/y:00000000", None).unwrap();
    assert_eq!(d.wait_fds(dfds), dfds);
}

/// The watcher's fork fails (root: run as an unused uid with
/// `RLIMIT_NPROC` 2, so that sdnotify may fork once but its child may
/// not): sdnotify dies 111 rather than exec the program with nobody
/// serving its socket.
#[test]
fn a_failed_watcher_fork_is_fatal() {
    if !is_root("a_failed_watcher_fork_is_fatal") {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let env: Vec<(&str, Option<&str>)> = common::ALL_RIGHTS
        .iter()
        .map(|(k, v)| (*k, Some(*v)))
        .collect();
    common::allow(&d.dir.join("rules"), "uid/54321", &env);
    let (code, out, err) = outcome(
        Command::new("prlimit")
            .arg("--nproc=2:2")
            .args([
                "setpriv",
                "--reuid=54321",
                "--regid=54321",
                "--clear-groups",
            ])
            .arg(sdnotify())
            .arg(&d.sock)
            .args(["svc/", "echo", "exec'd"])
            .env_remove("XDG_RUNTIME_DIR"),
    );
    assert_eq!(out, "", "{err}");
    assert_eq!(code, Some(111), "{err}");
    assert!(
        err.ends_with("s6-fdholder-sdnotify: fatal: unable to fork the watcher\n"),
        "{err}"
    );
    // Its socket and directory are gone (under /tmp: /run is root's).
    let pid = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("s6-fdholder-sdnotify."))
        .collect::<Vec<_>>();
    assert!(
        pid.iter().all(|n| {
            std::fs::metadata(format!("/tmp/{n}")).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.uid() != 54321
            })
        }),
        "{pid:?}"
    );
}
