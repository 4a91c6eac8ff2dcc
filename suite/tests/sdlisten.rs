//! `s6-fdholder-sdlisten` against our daemon, with real programs written
//! for systemd's socket passing: Debian's `python3-systemd`
//! (`systemd.daemon.listen_fds_with_names`, libsystemd's
//! `sd_listen_fds_with_names` underneath) and the Rust crate `listenfd`.
//! The program run under sdlisten must find the held fds (the same open
//! files, checked by `fstat` and by using them), their names, in the
//! documented order, `LISTEN_PID` its own pid, and nothing else of ours;
//! refusals, usage errors and time-outs give the documented messages and
//! exit codes. A scripted holder (a thread speaking the protocol) makes
//! what a real one cannot do on cue: an id that goes between the list and
//! its retrieval, answers that come late.
//!
//! The `listenfd` program is this test binary itself, run as
//! `sdlisten ... <this binary> listenfd_child --exact --ignored`: the
//! ignored test `listenfd_child` is the program, and does nothing when run
//! otherwise. So it is always built with the test, whatever cargo was
//! asked to build (an example would not be built by `cargo test --test
//! sdlisten`).

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ALL_RIGHTS, Daemon, Impl, Outcome, TempDir, file_with, identity, ours, rules_with, wait_timeout,
};
use fdholder::proto::{self, Request};
use fdholder::wire::{MAX_LEN, Receiver, Sender};

const USAGE: &str =
    "s6-fdholder-sdlisten: usage: s6-fdholder-sdlisten [ -t timeout ] [ -D ] path prefix prog...\n";

use common::PYTHON;

fn sdlisten() -> PathBuf {
    ours("s6-fdholder-sdlisten")
}

/// The systemd service: what libsystemd finds, as JSON, then its pid and
/// the `LISTEN_PID` it was given, then for each fd its `st_dev`, `st_ino`
/// and access mode (0 read, 1 write, 2 both). With `accept`, it also
/// accepts a connection (queued already) on fd 3 and answers it.
const PY_SERVICE: &str = r#"
import fcntl, json, os, socket, sys
from systemd import daemon
given = os.environ.get("LISTEN_PID")
fds = daemon.listen_fds_with_names()
out = [json.dumps(fds), "pid %d %s" % (os.getpid(), given)]
for fd in sorted(fds):
    st = os.fstat(fd)
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    out.append("fd %d %d %d %d" % (fd, st.st_dev, st.st_ino, mode))
if sys.argv[1:] == ["accept"]:
    s = socket.socket(fileno=3)
    s.setblocking(False)
    c, _ = s.accept()
    c.sendall(b"accepted on 3\n")
dest = os.environ.get("OUT")
text = "\n".join(out) + "\n"
if dest:
    with open(dest, "w") as f:
        f.write(text)
else:
    sys.stdout.write(text)
"#;

/// Spawns `cmd` with stdin from /dev/null and stdout, stderr piped.
fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (20 s at most) for a child spawned by [`spawn`] and collects it.
fn finish(mut child: Child) -> Outcome {
    let code = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or(-1);
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Outcome {
        code,
        stdout,
        stderr,
    }
}

/// `s6-fdholder-sdlisten args...`, to the end.
fn run<S: AsRef<OsStr>>(args: &[S]) -> Outcome {
    finish(spawn(Command::new(sdlisten()).args(args)))
}

fn text(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The ids the daemon holds, sorted.
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

fn store(d: &Daemon, fd: impl AsFd, id: &str) {
    d.client()
        .store(fd.as_fd(), id.as_bytes(), None, None)
        .unwrap();
}

/// The `fd N dev ino mode` line [`PY_SERVICE`] prints for an fd.
fn fd_line(n: u32, fd: impl AsFd, mode: u32) -> String {
    let (dev, ino) = identity(fd);
    format!("fd {n} {dev} {ino} {mode}")
}

/// A listening socket, the read and the write end of a pipe (close-on-exec,
/// as everything this multi-threaded test process opens must be), and a
/// file, held under `svc/http`, `svc/state:0`, `svc/state:1`, `other/x`
/// and `svc`: stored in another order than the one handed over.
struct Service {
    tmp: TempDir,
    listener: UnixListener,
    read: OwnedFd,
    write: OwnedFd,
}

impl Service {
    fn hold(d: &Daemon) -> Service {
        let tmp = TempDir::new("sdlisten-svc");
        let listener = UnixListener::bind(tmp.join("http.sock")).unwrap();
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let file = file_with(&tmp, "x", b"other");
        store(d, &write, "svc/state:1");
        store(d, &file, "other/x");
        store(d, &listener, "svc/http");
        store(d, &file, "svc");
        store(d, &read, "svc/state:0");
        Service {
            tmp,
            listener,
            read,
            write,
        }
    }
}

/// The fds, names and pid libsystemd sees; the same open files, in the
/// order of the ids; the listening socket works; without `-D` everything
/// stays held, with `-D` what was handed over goes.
#[test]
fn python_systemd_gets_the_fds_their_names_and_its_pid() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let s = Service::hold(&d);
    let all = ["other/x", "svc", "svc/http", "svc/state:0", "svc/state:1"];
    let service = |opts: &[&str], prefix: &str, extra: &[&str]| {
        let mut cmd = Command::new(sdlisten());
        cmd.args(opts)
            .arg(&d.sock)
            .arg(prefix)
            .args([PYTHON, "-c", PY_SERVICE])
            .args(extra);
        let child = spawn(&mut cmd);
        let pid = child.id();
        let o = finish(child);
        assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{o:?}");
        (pid, text(&o))
    };
    let expected = |pid: u32, json: &str| {
        format!(
            "{json}\npid {pid} {pid}\n{}\n{}\n{}\n",
            fd_line(3, &s.listener, 2),
            fd_line(4, &s.read, 0),
            fd_line(5, &s.write, 1)
        )
    };
    let names = r#"{"3": "http", "4": "state", "5": "state"}"#;

    // Queued before the service starts, accepted by it on fd 3.
    let mut conn = UnixStream::connect(s.tmp.join("http.sock")).unwrap();
    let (pid, out) = service(&[], "svc/", &["accept"]);
    assert_eq!(out, expected(pid, names));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&mut conn).read_line(&mut line).unwrap();
    assert_eq!(line, "accepted on 3\n");
    assert_eq!(held(&d), all, "without -D everything stays held");

    // The name is what follows the prefix, up to a `:`; `unknown` if that
    // is empty. The empty prefix hands over every id.
    let (_, out) = service(&[], "svc", &[]);
    assert!(
        out.starts_with(r#"{"3": "unknown", "4": "/http", "5": "/state", "6": "/state"}"#),
        "{out}"
    );
    let (_, out) = service(&[], "", &[]);
    let every =
        r#"{"3": "other/x", "4": "svc", "5": "svc/http", "6": "svc/state", "7": "svc/state"}"#;
    assert!(out.starts_with(every), "{out}");
    let (_, out) = service(&[], "nothing/", &[]);
    assert_eq!(out, format!("{{}}\npid {} None\n", out_pid(&out)));
    assert_eq!(held(&d), all);

    let (pid, out) = service(&["-D"], "svc/", &[]);
    assert_eq!(out, expected(pid, names));
    assert_eq!(
        held(&d),
        ["other/x", "svc"],
        "-D deletes what it hands over"
    );
    let (_, out) = service(&["-D", "-t", "5000"], "svc/", &[]);
    assert!(out.starts_with("{}\n"), "nothing left: {out}");
    assert_eq!(held(&d), ["other/x", "svc"]);
}

/// The pid on the `pid` line of [`PY_SERVICE`]'s output.
fn out_pid(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default()
        .to_string()
}

/// With the standard descriptors closed, the fds come from the holder at
/// numbers inside 3, 4, 5 (1, 2, 3): they are handed over without one
/// overwriting another.
#[test]
fn fds_in_the_way_are_moved_not_overwritten() {
    if !common::have_python_systemd() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let s = Service::hold(&d);
    let out = s.tmp.join("out");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "exec 0<&- 1>&- 2>&-; exec \"$@\"", "bash"])
        .arg(sdlisten())
        .arg(&d.sock)
        .args(["svc/", PYTHON, "-c", PY_SERVICE])
        .env("OUT", &out);
    let child = spawn(&mut cmd);
    let pid = child.id();
    let o = finish(child);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!(
            "{}\npid {pid} {pid}\n{}\n{}\n{}\n",
            r#"{"3": "http", "4": "state", "5": "state"}"#,
            fd_line(3, &s.listener, 2),
            fd_line(4, &s.read, 0),
            fd_line(5, &s.write, 1)
        )
    );
}

/// Runs `cmd` (stdin and stdout piped) until its program is `cat` and
/// echoes a line, then returns it with what `/proc/PID/fd` lists: the
/// program's descriptors once it runs, seen from outside.
fn cat_fds(cmd: &mut Command) -> (Child, Vec<u32>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"ping\n").unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    if line.as_deref() != Ok("ping\n") {
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        panic!("cat did not echo: {line:?}, {o:?}");
    }
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    (child, fds)
}

/// (st_dev, st_ino) of descriptor `n` of process `pid`.
fn identity_of(pid: u32, n: u32) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/{pid}/fd/{n}")).unwrap();
    (m.dev(), m.ino())
}

/// Whether descriptor `n` of process `pid` is close-on-exec.
fn cloexec(pid: u32, n: u32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    u32::from_str_radix(flags, 8).unwrap() & libc::O_CLOEXEC as u32 != 0
}

/// Closes every descriptor above 2 that this test process let the shell
/// inherit (whatever ran `cargo test` may have left some open), opens the
/// files `$1` at 3 and `$2` at 9, and execs the rest.
const LAUNCHER: &str = "for f in /proc/$$/fd/*; do n=${f##*/}; \
    [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; done 2>/dev/null; \
    exec 3<\"$1\" 9<\"$2\"; shift 2; exec \"$@\"";

/// The program has 0, 1, 2, what its parent passed, and the fds handed
/// over at 3, 4 (replacing the parent's fd 3), inheritable: nothing else;
/// the connection to the holder is closed.
#[test]
fn the_program_gets_no_other_descriptor() {
    let d = Daemon::start(Impl::Ours);
    let idle = d.open_fds();
    let tmp = TempDir::new("sdlisten-fds");
    let listener = UnixListener::bind(tmp.join("l.sock")).unwrap();
    let file = file_with(&tmp, "held", b"held");
    store(&d, &file, "svc/b");
    store(&d, &listener, "svc/a");
    assert_eq!(d.wait_fds(idle + 2), idle + 2);
    let parent = [file_with(&tmp, "p3", b"3"), file_with(&tmp, "p9", b"9")];
    let launch = |prefix: &str| {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", LAUNCHER, "bash"])
            .arg(tmp.join("p3"))
            .arg(tmp.join("p9"))
            .arg(sdlisten())
            .arg(&d.sock)
            .args([prefix, "/bin/cat"]);
        cat_fds(&mut cmd)
    };

    let (mut child, fds) = launch("svc/");
    let pid = child.id();
    assert_eq!(fds, [0, 1, 2, 3, 4, 9]);
    assert_eq!(identity_of(pid, 3), identity(&listener));
    assert_eq!(identity_of(pid, 4), identity(&file));
    assert_eq!(identity_of(pid, 9), identity(&parent[1]));
    assert!(!cloexec(pid, 3) && !cloexec(pid, 4));
    assert_eq!(d.wait_fds(idle + 2), idle + 2, "the connection is closed");
    drop(child.stdin.take());
    assert_eq!(wait_timeout(&mut child, Duration::from_secs(10)), Some(0));

    // Nothing held under the prefix: the parent's fds are left alone.
    let (mut child, fds) = launch("none/");
    assert_eq!(fds, [0, 1, 2, 3, 9]);
    assert_eq!(identity_of(child.id(), 3), identity(&parent[0]));
    drop(child.stdin.take());
    assert_eq!(wait_timeout(&mut child, Duration::from_secs(10)), Some(0));
}

/// The environment `/bin/cat /proc/self/environ` shows under sdlisten,
/// started with exactly `env`; and the pid.
fn environ(d: &Daemon, prefix: &str, env: &[(&str, &str)]) -> (u32, Vec<String>) {
    // env(1) sets them in this order; Command would sort them.
    let mut cmd = Command::new("/usr/bin/env");
    cmd.arg("-i")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(sdlisten())
        .arg(&d.sock)
        .args([prefix, "/bin/cat", "/proc/self/environ"]);
    let child = spawn(&mut cmd);
    let pid = child.id();
    let o = finish(child);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{o:?}");
    let vars = o
        .stdout
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .collect();
    (pid, vars)
}

/// Nothing held under the prefix: the three variables are unset, even if
/// the parent set them, and the program runs. Something held: they are set
/// once each, in the order LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, as
/// skalibs' env_merge sets them: each replaces its namesake by the last
/// variable, then goes at the end.
#[test]
fn the_environment() {
    let d = Daemon::start(Impl::Ours);
    let stale = [
        ("A", "1"),
        ("LISTEN_PID", "1"),
        ("LISTEN_FDS", "2"),
        ("LISTEN_FDNAMES", "x:y"),
        ("Z", "2"),
    ];
    let (_, vars) = environ(&d, "svc/", &stale);
    assert_eq!(vars, ["A=1", "Z=2"], "an empty holder");
    let tmp = TempDir::new("sdlisten-env");
    let file = file_with(&tmp, "f", b"f");
    store(&d, &file, "other/x");
    let (_, vars) = environ(&d, "svc/", &stale);
    assert_eq!(vars, ["A=1", "Z=2"], "nothing under the prefix");
    let (_, vars) = environ(&d, "svc/", &[]);
    assert!(vars.is_empty(), "{vars:?}");

    store(&d, &file, "svc/one:7");
    store(&d, &file, "svc/two");
    let (pid, vars) = environ(&d, "svc/", &[("A", "1"), ("Z", "2")]);
    let set = [
        format!("LISTEN_PID={pid}"),
        "LISTEN_FDS=2".into(),
        "LISTEN_FDNAMES=one:two".into(),
    ];
    assert_eq!(vars, ["A=1", "Z=2", &set[0], &set[1], &set[2]]);
    // A, PID, FDS, FDNAMES, Z: Z replaces the PID (A Z FDS FDNAMES PID),
    // the PID the FDS (A Z PID FDNAMES FDS), the FDS the FDNAMES.
    let (pid, vars) = environ(&d, "svc/", &stale);
    assert_eq!(
        vars,
        ["A=1", "Z=2", &format!("LISTEN_PID={pid}"), &set[1], &set[2]]
    );
}

/// Reported by [`listenfd_child`] to the file this variable names.
const LISTENFD_OUT: &str = "SDLISTEN_LISTENFD_OUT";

/// The program that `listenfd_takes_the_listeners` runs under sdlisten:
/// what `ListenFd::from_env()` finds, each fd taken as a Unix listener
/// (which then accepts the connection queued on it and answers it), and
/// the names, which listenfd does not read, from `LISTEN_FDNAMES`.
#[test]
#[ignore = "the program listenfd_takes_the_listeners runs; does nothing alone"]
fn listenfd_child() {
    let Some(out) = std::env::var_os(LISTENFD_OUT) else {
        return;
    };
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut report = format!("{} fds named {names}\n", fds.len());
    for i in 0..fds.len() {
        match fds.take_unix_listener(i) {
            Ok(Some(l)) => {
                let addr = l.local_addr().unwrap();
                let path = addr.as_pathname().unwrap().file_name().unwrap();
                l.set_nonblocking(true).unwrap();
                let (mut conn, _) = l.accept().unwrap();
                writeln!(conn, "accepted by listener {i}").unwrap();
                report += &format!("{i}: listener {}\n", path.to_str().unwrap());
            }
            Ok(None) => report += &format!("{i}: none\n"),
            Err(e) => report += &format!("{i}: {e}\n"),
        }
    }
    std::fs::write(out, report).unwrap();
}

/// The Rust crate `listenfd` takes the held listeners at the fds and in
/// the order documented, and they are the listening sockets (each accepts
/// a connection made to its path); a pipe is not taken for a listener.
#[test]
fn listenfd_takes_the_listeners() {
    let d = Daemon::start(Impl::Ours);
    let tmp = TempDir::new("sdlisten-listenfd");
    let bind = |name: &str| UnixListener::bind(tmp.join(name)).unwrap();
    let (web0, web1, admin) = (bind("web0.sock"), bind("web1.sock"), bind("admin.sock"));
    let (pipe, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    store(&d, &pipe, "svc/zpipe");
    store(&d, &web1, "svc/web:1");
    store(&d, &admin, "svc/admin");
    store(&d, &web0, "svc/web:0");
    let conns: Vec<UnixStream> = ["admin.sock", "web0.sock", "web1.sock"]
        .iter()
        .map(|n| UnixStream::connect(tmp.join(n)).unwrap())
        .collect();
    let out = tmp.join("report");
    let mut cmd = Command::new(sdlisten());
    cmd.arg(&d.sock)
        .arg("svc/")
        .arg(std::env::current_exe().unwrap())
        .args(["listenfd_child", "--exact", "--ignored", "--test-threads=1"])
        .env(LISTENFD_OUT, &out);
    let o = finish(spawn(&mut cmd));
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "4 fds named admin:web:web:zpipe\n\
         0: listener admin.sock\n\
         1: listener web0.sock\n\
         2: listener web1.sock\n\
         3: fd 6 is not a socket\n"
    );
    for (i, c) in conns.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).unwrap();
        assert_eq!(line, format!("accepted by listener {i}\n"));
    }
}

/// Rules giving our uid the list right and these two regexes.
fn rights(dir: &Path, name: &str, retrieve: &str, store: &str) -> PathBuf {
    rules_with(
        dir,
        name,
        &[
            ("S6_FDHOLDER_LIST", Some("")),
            ("S6_FDHOLDER_RETRIEVE_REGEX", Some(retrieve)),
            ("S6_FDHOLDER_STORE_REGEX", Some(store)),
        ],
    )
}

fn fatal(msg: &str) -> String {
    format!("s6-fdholder-sdlisten: fatal: {msg}\n")
}

/// Refused by the holder: exit 1 with the message, and the program does
/// not run. Without the retrieve right on one id, nothing is deleted even
/// with -D (every fd is retrieved before any is deleted); without the
/// right to delete one, those before it in the order are deleted.
#[test]
fn refusals() {
    let tmp = TempDir::new("sdlisten-rules");
    let prog = ["/bin/echo", "ran"];

    let rules = rules_with(
        &tmp,
        "nolist",
        &[
            ("S6_FDHOLDER_RETRIEVE_REGEX", Some("")),
            ("S6_FDHOLDER_STORE_REGEX", Some("")),
        ],
    );
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    let o = run(&[d.sock.as_os_str(), "svc/".as_ref(), prog[0].as_ref()]);
    assert_eq!(
        (o.code, text(&o), o.stderr.as_str()),
        (
            1,
            String::new(),
            &*fatal("unable to get fd list: Operation not permitted")
        )
    );

    let d = Daemon::with_rules(Impl::Ours, "-i", rights(&tmp, "retrieve-a", "^svc/a$", ""));
    let file = file_with(&tmp, "f", b"f");
    store(&d, &file, "svc/a");
    store(&d, &file, "svc/b");
    for opts in [&[][..], &["-D"]] {
        let mut args: Vec<&OsStr> = opts.iter().map(OsStr::new).collect();
        args.extend([d.sock.as_os_str(), "svc/".as_ref()]);
        args.extend(prog.iter().map(OsStr::new));
        let o = run(&args);
        assert_eq!(
            (o.code, text(&o), o.stderr.as_str()),
            (
                1,
                String::new(),
                &*fatal("unable to retrieve fd for id svc/b: Operation not permitted")
            ),
            "{opts:?}"
        );
        let ids = d.client().list(None).unwrap();
        assert_eq!(ids.len(), 2, "{opts:?}: nothing deleted");
    }

    // Every right, then (the rules directory is read again for each
    // connection) no right to delete svc/b.
    let rules = rules_with(
        &tmp,
        "delete-a",
        &ALL_RIGHTS
            .iter()
            .map(|(k, v)| (*k, Some(*v)))
            .collect::<Vec<_>>(),
    );
    let d = Daemon::with_rules(Impl::Ours, "-i", rules);
    store(&d, &file, "svc/a");
    store(&d, &file, "svc/b");
    store(&d, &file, "svc/c");
    rights(&tmp, "delete-a", "", "^svc/a$");
    let o = run(&[
        "-D".as_ref(),
        d.sock.as_os_str(),
        "svc/".as_ref(),
        prog[0].as_ref(),
    ]);
    assert_eq!(
        (o.code, text(&o), o.stderr.as_str()),
        (
            1,
            String::new(),
            &*fatal("unable to delete fd for id svc/b: Operation not permitted")
        )
    );
    assert_eq!(held(&d), ["svc/b", "svc/c"]);
}

/// No holder: 111. Usage errors: 100 and the usage line. A program that
/// cannot be found: 127.
#[test]
fn errors_and_usage() {
    let tmp = TempDir::new("sdlisten-usage");
    let nosock = tmp.join("nosock");
    let o = run(&[nosock.as_os_str(), "svc/".as_ref(), "/bin/true".as_ref()]);
    assert_eq!(
        (o.code, o.stderr),
        (
            111,
            fatal(&format!(
                "unable to connect to a fd-holder daemon at {}: No such file or directory",
                nosock.display()
            ))
        )
    );
    let s = nosock.to_str().unwrap();
    for args in [
        &[][..],
        &[s],
        &[s, "svc/"],
        &["-D", s, "svc/"],
        &["-t", "x", s, "svc/", "true"],
        &["-t", "-1", s, "svc/", "true"],
        &["-z", s, "svc/", "true"],
        &["-t"],
        &["--timeout", "1", s, "svc/", "true"],
    ] {
        let o = run(args);
        assert_eq!(
            (o.code, o.stderr.as_str(), text(&o)),
            (100, USAGE, String::new()),
            "{args:?}"
        );
    }
    let d = Daemon::start(Impl::Ours);
    let o = run(&[
        d.sock.as_os_str(),
        "svc/".as_ref(),
        "no-such-prog-sdlisten".as_ref(),
    ]);
    assert_eq!(
        (o.code, o.stderr),
        (
            127,
            fatal("unable to exec no-such-prog-sdlisten: No such file or directory")
        )
    );
    // Options stop at the first operand: the program keeps its own.
    let o = run(&[
        "-Dt".as_ref(),
        "5000".as_ref(),
        d.sock.as_os_str(),
        "-t".as_ref(),
        "/bin/echo".as_ref(),
        "-D".as_ref(),
    ]);
    assert_eq!(
        (o.code, text(&o), o.stderr),
        (0, "-D\n".into(), String::new())
    );
}

/// A holder run by a thread, on one connection: each request is answered
/// with `answer(request)`; returns the requests it got, once the client
/// has gone (or after 20 s without one).
fn scripted_holder(
    path: &Path,
    answer: impl Fn(&[u8]) -> (Vec<u8>, Vec<OwnedFd>) + Send + 'static,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let listener = UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("no client: {e}"),
            }
        };
        let mut rx = Receiver::new(MAX_LEN);
        let mut got = Vec::new();
        loop {
            if let Some((payload, _)) = rx.take_message().unwrap() {
                let payload = payload.to_vec();
                let (ans, fds) = answer(&payload);
                got.push(payload);
                let mut tx = Sender::new();
                tx.push(ans, fds);
                match tx.flush(sock.as_fd()) {
                    Ok(true) => continue,
                    _ => return got,
                }
            }
            match rx.fill(sock.as_fd()) {
                Ok(0) => return got,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut p = [rustix::event::PollFd::new(
                        &sock,
                        rustix::event::PollFlags::IN,
                    )];
                    let t = rustix::event::Timespec {
                        tv_sec: 20,
                        tv_nsec: 0,
                    };
                    if rustix::event::poll(&mut p, Some(&t)) != Ok(1) {
                        return got;
                    }
                }
                Err(_) => return got,
            }
        }
    })
}

/// Answers `svc/a`, `svc/b`, `svc/c` to a list, the file `a` or `c` to
/// their retrieval, ENOENT for `svc/b` (gone since the list) and for the
/// deletion of `svc/c` (gone since its retrieval), 0 to other deletions.
fn holder_losing_b(dir: &Path) -> impl Fn(&[u8]) -> (Vec<u8>, Vec<OwnedFd>) + Send + 'static {
    let a = file_with(dir, "a", b"a");
    let c = file_with(dir, "c", b"c");
    move |req| match proto::parse_request(req, 0).unwrap() {
        Request::List => {
            let ids: [&[u8]; 3] = [b"svc/a", b"svc/b", b"svc/c"];
            (proto::list_answer(ids.into_iter()), vec![])
        }
        Request::Retrieve { id, .. } => match id.to_bytes() {
            b"svc/a" => (vec![0], vec![a.try_clone().unwrap().into()]),
            b"svc/c" => (vec![0], vec![c.try_clone().unwrap().into()]),
            _ => (vec![libc::ENOENT as u8], vec![]),
        },
        Request::Delete { id } if id.to_bytes() == b"svc/c" => (vec![libc::ENOENT as u8], vec![]),
        Request::Delete { .. } => (vec![0], vec![]),
        r => panic!("unexpected request {r:?}"),
    }
}

/// An id that is gone when it is retrieved (deleted or expired since the
/// list) is skipped with a warning: the others are handed over. With -D,
/// the fds are all retrieved, then deleted; one already deleted is fine.
#[test]
fn an_id_gone_since_the_list_is_skipped() {
    let tmp = TempDir::new("sdlisten-gone");
    let (a, c) = (file_with(&tmp, "a", b"a"), file_with(&tmp, "c", b"c"));
    let show = "echo \"$LISTEN_FDS $LISTEN_FDNAMES\"; exec stat -L -c '%d %i' /proc/self/fd/3 /proc/self/fd/4";
    let expected = format!(
        "2 a:c\n{} {}\n{} {}\n",
        identity(&a).0,
        identity(&a).1,
        identity(&c).0,
        identity(&c).1
    );
    let warning = "s6-fdholder-sdlisten: warning: unable to retrieve fd for id svc/b: No such file or directory\n";
    for delete in [false, true] {
        let sock = tmp.join(format!("s{delete}"));
        let holder = scripted_holder(&sock, holder_losing_b(&tmp));
        let mut args = vec![];
        if delete {
            args.push("-D");
        }
        args.extend([sock.to_str().unwrap(), "svc/", "/bin/sh", "-c", show]);
        let o = run(&args);
        assert_eq!(
            (o.code, text(&o), o.stderr.as_str()),
            (0, expected.clone(), warning)
        );
        let mut want = vec![
            vec![proto::OP_LIST],
            proto::retrieve(b"svc/a", false),
            proto::retrieve(b"svc/b", false),
            proto::retrieve(b"svc/c", false),
        ];
        if delete {
            want.extend([proto::delete(b"svc/a"), proto::delete(b"svc/c")]);
        }
        assert_eq!(holder.join().unwrap(), want, "-D: {delete}");
    }
}

/// `-t` bounds the whole conversation, not each request: answers 250 ms
/// apart, each well within 400 ms, time out at the second retrieval.
/// A holder that never answers times out too.
#[test]
fn the_timeout_bounds_the_whole_conversation() {
    let tmp = TempDir::new("sdlisten-timeout");
    let file = file_with(&tmp, "f", b"f");
    let sock = tmp.join("slow");
    let holder = scripted_holder(&sock, move |req| {
        match proto::parse_request(req, 0).unwrap() {
            Request::List => {
                let ids: [&[u8]; 3] = [b"svc/a", b"svc/b", b"svc/c"];
                (proto::list_answer(ids.into_iter()), vec![])
            }
            Request::Retrieve { .. } => {
                std::thread::sleep(Duration::from_millis(250));
                (vec![0], vec![file.try_clone().unwrap().into()])
            }
            r => panic!("unexpected request {r:?}"),
        }
    });
    let start = Instant::now();
    let o = run(&[
        "-t".as_ref(),
        "400".as_ref(),
        sock.as_os_str(),
        "svc/".as_ref(),
        "/bin/true".as_ref(),
    ]);
    let took = start.elapsed();
    assert_eq!(
        (o.code, o.stderr),
        (
            1,
            fatal("unable to retrieve fd for id svc/b: Connection timed out")
        )
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(holder.join().unwrap().len(), 3);

    // Connected (the backlog takes it), never answered.
    let mute = tmp.join("mute");
    let _listener = UnixListener::bind(&mute).unwrap();
    let start = Instant::now();
    let o = run(&[
        "-t".as_ref(),
        "300".as_ref(),
        mute.as_os_str(),
        "svc/".as_ref(),
        "/bin/true".as_ref(),
    ]);
    assert_eq!(
        (o.code, o.stderr),
        (1, fatal("unable to get fd list: Connection timed out"))
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
