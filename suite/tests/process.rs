//! Process-level compatibility with the reference (Debian's `s6`): what a
//! program does as a process, beyond its bytes on the wire. For each case
//! the same command runs with our program and with the reference's, under
//! the same launcher, and the outcomes are compared: exit status (the
//! terminating signal included), stdout, stderr, and what the next program
//! of a chain sees (its open descriptors, signal dispositions and mask,
//! its environment bytes in order).
//!
//! The launcher is a small Python script (Debian's `python3`): it sets up
//! the state to pass on (signals ignored or blocked, descriptors closed,
//! stderr a pipe without reader), then execs the program with exactly the
//! environment it was given, in that order (not its own, which Python
//! changes at start-up). Python's own
//! start-up changes (SIGPIPE, SIGXFSZ ignored; a SIGINT handler) are undone
//! first. The probes that report what the next program sees are `cat` of
//! `/proc/self/status` and `/proc/self/environ`, and `sh` testing
//! `/proc/$$/fd/N`: they change nothing of what they report.

mod common;

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Daemon, Impl, TempDir, prog, reference};
use fdholder::Tain;

/// Sets up the process state its options say, then execs the rest.
const LAUNCHER: &str = r#"
import os, signal, sys
for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
    signal.signal(s, signal.SIG_DFL)
a = sys.argv[1:]
env = {}
while a[0] != '--':
    op, arg, a = a[0], a[1], a[2:]
    if op == 'env':
        k, v = arg.split('=', 1)
        env[k] = v
    elif op == 'ignore':
        signal.signal(int(arg), signal.SIG_IGN)
    elif op == 'block':
        signal.pthread_sigmask(signal.SIG_BLOCK, [int(arg)])
    elif op == 'close':
        os.close(int(arg))
    elif op == 'deadstderr':
        r, w = os.pipe()
        os.close(r)
        os.dup2(w, 2)
        os.close(w)
os.execve(a[1], a[1:], env)
"#;

/// How a run ended and what it printed.
#[derive(Debug, PartialEq, Eq)]
struct Ended {
    /// `Ok(code)` for an exit, `Err(signal)` for a death by signal.
    status: Result<i32, i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `argv` (its first word a program name, resolved for `which`) under
/// the launcher with `setup` (pairs such as `("ignore", "13")`), in `dir`,
/// with exactly the environment `env`.
fn launch(
    which: Impl,
    dir: &Path,
    setup: &[(&str, &str)],
    argv: &[&str],
    env: &[(&str, &str)],
) -> Ended {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(LAUNCHER);
    for (op, arg) in setup {
        cmd.args([op, arg]);
    }
    for (k, v) in env {
        cmd.args(["env", &format!("{k}={v}")]);
    }
    cmd.arg("--");
    cmd.arg(resolve(which, argv[0]));
    cmd.args(&argv[1..]);
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Every case ends within seconds; one that does not is a failure (a
    // daemon that should have stopped), not a hang of the test run.
    let mut child = cmd.spawn().unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{argv:?} did not end within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    Ended {
        status: match out.status.code() {
            Some(c) => Ok(c),
            None => Err(out.status.signal().unwrap()),
        },
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A program name of the suite as `which` spells it (a path), anything
/// else as given.
fn resolve(which: Impl, name: &str) -> PathBuf {
    if name.starts_with("s6-") {
        prog(which, name)
    } else {
        PathBuf::from(name)
    }
}

/// Runs the same case with both implementations (`argv` is made for each:
/// it may name the other programs of the chain) and returns both.
fn both(
    dirs: [&Path; 2],
    setup: &[(&str, &str)],
    argv: impl Fn(Impl) -> Vec<String>,
    env: &[(&str, &str)],
) -> (Ended, Ended) {
    let run = |which, dir| {
        let a = argv(which);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        launch(which, dir, setup, &a, env)
    };
    (run(Impl::Ours, dirs[0]), run(Impl::Reference, dirs[1]))
}

/// A path string for `which`'s program `name`.
fn path_of(which: Impl, name: &str) -> String {
    prog(which, name).to_str().unwrap().to_string()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A PATH for the programs: the usual one.
const ENV_PATH: (&str, &str) = ("PATH", "/usr/bin:/bin");

/// Reports, on stderr, whether descriptors 0, 1 and 2 are open.
const FD_PROBE: &str = "for f in 0 1 2; do if [ -e /proc/$$/fd/$f ]; then echo $f open >&2; else echo $f closed >&2; fi; done";

/// The ignored and blocked signals of a `/proc/PID/status` text, among
/// signals 1 to 31 (the real-time signals from 32 on are glibc's own:
/// posix_spawn in the multi-threaded test process may leave its
/// internal ones to a child).
fn signal_lines(status: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(status)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(":\t")?;
            let bits = u64::from_str_radix(v.trim(), 16).ok()? & 0x7fff_ffff;
            ["SigIgn", "SigBlk"]
                .contains(&k)
                .then(|| format!("{k}:\t{bits:016x}"))
        })
        .collect()
}

fn have_reference() -> bool {
    reference("s6-fdholderd").is_some()
}

#[test]
fn closed_standard_descriptors_stay_closed() {
    if !have_reference() {
        return;
    }
    let (a, b) = (TempDir::new("proc-ours"), TempDir::new("proc-ref"));
    let dirs = [a.path(), b.path()];
    // The socketbinder's daemon, with -1 and stdout closed, stops at once.
    let (o, r) = both(
        dirs,
        &[("close", "1")],
        |w| {
            vec![
                path_of(w, "s6-ipcserver-socketbinder"),
                "x.s".into(),
                path_of(w, "s6-fdholderd"),
                "-1".into(),
                "-i".into(),
                "r".into(),
            ]
        },
        &[ENV_PATH],
    );
    assert_eq!(o, r);
    assert_eq!(
        o.stderr,
        "s6-fdholderd: fatal: called with option -1 but stdout said: Bad file descriptor\n"
    );
    assert_eq!(o.status, Ok(100));
    // The daemon with stdin closed.
    let (o, r) = both(
        dirs,
        &[("close", "0")],
        |w| strings(&[&path_of(w, "s6-fdholderd"), "-i", "r"]),
        &[ENV_PATH],
    );
    assert_eq!(o, r);
    assert_eq!(o.status, Ok(111));
    assert_eq!(
        o.stderr,
        "s6-fdholderd: fatal: unable to fstat stdin: Bad file descriptor\n"
    );
    // What the next program sees, for each standard descriptor closed.
    let uid = rustix::process::geteuid().as_raw().to_string();
    for fd in ["0", "1"] {
        let (o, r) = both(
            dirs,
            &[("close", fd)],
            |w| {
                strings(&[
                    &path_of(w, "s6-applyuidgid"),
                    "-u",
                    &uid,
                    "/bin/sh",
                    "-c",
                    FD_PROBE,
                ])
            },
            &[ENV_PATH],
        );
        assert_eq!(o, r, "fd {fd} closed");
        assert!(o.stderr.contains(&format!("{fd} closed")), "{o:?}");
    }
    // With stderr closed, a usage error is silent and exits 100.
    for name in ["s6-fdholder-list", "s6-fdholderd", "s6-applyuidgid"] {
        let (o, r) = both(
            dirs,
            &[("close", "2")],
            |w| strings(&[&path_of(w, name), "-Z"]),
            &[ENV_PATH],
        );
        assert_eq!(o, r, "{name}");
        assert_eq!(o.status, Ok(100), "{name}");
    }
}

/// The programs that chain-load, each with a command line that ends with
/// `prog...` (given by `tail`), against a daemon at `sock` where needed.
fn chainloaders(w: Impl, sock: &Path, dir: &Path, tail: &[&str]) -> Vec<Vec<String>> {
    let uid = rustix::process::geteuid().as_raw().to_string();
    let s = sock.to_str().unwrap();
    let bound = dir.join("bound.s");
    let mut all = vec![
        strings(&[&path_of(w, "s6-applyuidgid"), "-u", &uid]),
        strings(&[&path_of(w, "s6-fdholder-getdump"), s]),
        strings(&[&path_of(w, "s6-fdholder-retrieve"), s, "held"]),
        strings(&[
            &path_of(w, "s6-ipcserver-socketbinder"),
            bound.to_str().unwrap(),
        ]),
    ];
    for a in &mut all {
        a.extend(tail.iter().map(|t| t.to_string()));
    }
    all
}

/// Two daemons, ours and the reference's, holding the same two fds under
/// the same ids and limits (one finite, one not).
fn two_daemons() -> [Daemon; 2] {
    let limit = Tain::now().add_secs(3600);
    let file = std::fs::File::open("/dev/null").unwrap();
    [Impl::Ours, Impl::Reference].map(|w| {
        let d = Daemon::start(w);
        let mut c = d.client();
        c.store(file.as_fd(), b"held", Some(limit), None).unwrap();
        c.store(file.as_fd(), b"other", None, None).unwrap();
        d
    })
}

/// The descriptors a probe listed, as `N kind`: the number, and what its
/// `/proc/self/fd` link says it is (`socket`, `pipe`, `anon_inode`, or
/// `path` for a file), without inode numbers or paths, which differ between
/// the two runs.
fn open_fds(listing: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(listing)
        .lines()
        .filter_map(|l| {
            let (n, target) = l.split_once(" -> ")?;
            let kind = target.split(':').next().unwrap_or(target);
            let kind = if kind.starts_with('/') { "path" } else { kind };
            Some(format!("{n} {kind}"))
        })
        .collect()
}

#[test]
fn descriptors_the_next_program_sees() {
    if !have_reference() {
        return;
    }
    let [od, rd] = two_daemons();
    let (a, b) = (TempDir::new("proc-ours"), TempDir::new("proc-ref"));
    // The probe lists its descriptors with what each is; its own listing
    // descriptor is the same in both runs.
    let probe = [
        "/bin/sh",
        "-c",
        "cd /proc/self/fd && for f in *; do echo \"$f -> $(readlink $f)\"; done",
    ];
    let ours = chainloaders(Impl::Ours, &od.sock, a.path(), &probe);
    let refs = chainloaders(Impl::Reference, &rd.sock, b.path(), &probe);
    for (o, r) in ours.iter().zip(&refs) {
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        let eo = launch(Impl::Ours, a.path(), &[], &o, &[ENV_PATH]);
        let er = launch(Impl::Reference, b.path(), &[], &r, &[ENV_PATH]);
        assert_eq!(eo.status, Ok(0), "{o:?}: {eo:?}");
        assert_eq!(er.status, Ok(0), "{r:?}: {er:?}");
        let (fo, fr) = (open_fds(&eo.stdout), open_fds(&er.stdout));
        assert_eq!(fo, fr, "{o:?}");
        assert!(fo.len() >= 3, "{fo:?}");
        if o[0].ends_with("getdump") {
            // The two held fds, at the numbers the reference gives them.
            assert!(
                fo.iter().filter(|f| f.ends_with(" path")).count() >= 2,
                "{fo:?}"
            );
        }
    }
}

#[test]
fn signal_dispositions_and_mask_pass_through_exec() {
    if !have_reference() {
        return;
    }
    let [od, rd] = two_daemons();
    let (a, b) = (TempDir::new("proc-ours"), TempDir::new("proc-ref"));
    // SIGHUP and SIGPIPE ignored, SIGUSR1 and SIGTERM blocked.
    let setup = [
        ("ignore", "1"),
        ("ignore", "13"),
        ("block", "10"),
        ("block", "15"),
    ];
    let tail = ["/bin/cat", "/proc/self/status"];
    let ours = chainloaders(Impl::Ours, &od.sock, a.path(), &tail);
    let refs = chainloaders(Impl::Reference, &rd.sock, b.path(), &tail);
    for (o, r) in ours.iter().zip(&refs) {
        let run = |w, dir, argv: &Vec<String>| {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            launch(w, dir, &setup, &argv, &[ENV_PATH])
        };
        let (eo, er) = (
            run(Impl::Ours, a.path(), o),
            run(Impl::Reference, b.path(), r),
        );
        assert_eq!((eo.status, &eo.stderr), (Ok(0), &String::new()), "{o:?}");
        assert_eq!((er.status, &er.stderr), (Ok(0), &String::new()), "{r:?}");
        let (so, sr) = (signal_lines(&eo.stdout), signal_lines(&er.stdout));
        assert_eq!(so, sr, "{o:?}");
        // And they are what the launcher set: bits 1 and 13 ignored, 10 and
        // 15 blocked (bit n-1 for signal n).
        let ign = 1u64 << 0 | 1 << 12;
        let blk = 1u64 << 9 | 1 << 14;
        assert_eq!(
            so,
            [
                format!("SigBlk:\t{blk:016x}"),
                format!("SigIgn:\t{ign:016x}")
            ],
            "{o:?}"
        );
    }
}

#[test]
fn a_stderr_without_reader_kills_by_sigpipe() {
    if !have_reference() {
        return;
    }
    let (a, b) = (TempDir::new("proc-ours"), TempDir::new("proc-ref"));
    let dirs = [a.path(), b.path()];
    for name in [
        "s6-fdholderd",
        "s6-fdholder-daemon",
        "s6-ipcserver-socketbinder",
        "s6-applyuidgid",
        "s6-accessrules-cdb-from-fs",
        "s6-accessrules-fs-from-cdb",
        "s6-fdholder-list",
        "s6-fdholder-getdump",
    ] {
        // A usage error must be printed: SIGPIPE kills, as in the reference.
        let (o, r) = both(
            dirs,
            &[("deadstderr", "-")],
            |w| strings(&[&path_of(w, name), "-Z"]),
            &[ENV_PATH],
        );
        assert_eq!(o, r, "{name}");
        assert_eq!(o.status, Err(libc::SIGPIPE), "{name}");
        // With SIGPIPE ignored, the write fails and the exit code stays.
        let (o, r) = both(
            dirs,
            &[("ignore", "13"), ("deadstderr", "-")],
            |w| strings(&[&path_of(w, name), "-Z"]),
            &[ENV_PATH],
        );
        assert_eq!(o, r, "{name}");
        assert_eq!(o.status, Ok(100), "{name}");
    }
}

#[test]
fn the_environment_keeps_its_order() {
    if !have_reference() {
        return;
    }
    let [od, rd] = two_daemons();
    let (a, b) = (TempDir::new("proc-ours"), TempDir::new("proc-ref"));
    let envs: [&[(&str, &str)]; 2] = [
        &[("A", "1"), ("Z", "2"), ("M", "3")],
        // Variables getdump sets, inherited: each is replaced where skalibs'
        // merge puts it (the last variable moves into its place).
        &[
            ("S6_FD#", "9"),
            ("A", "1"),
            ("S6_FDID_0", "x"),
            ("Z", "2"),
            ("S6_FDLIMIT_1", "y"),
            ("M", "3"),
        ],
    ];
    for env in envs {
        let ours = chainloaders(
            Impl::Ours,
            &od.sock,
            a.path(),
            &["/bin/cat", "/proc/self/environ"],
        );
        let refs = chainloaders(
            Impl::Reference,
            &rd.sock,
            b.path(),
            &["/bin/cat", "/proc/self/environ"],
        );
        for (o, r) in ours.iter().zip(&refs) {
            let o: Vec<&str> = o.iter().map(String::as_str).collect();
            let r: Vec<&str> = r.iter().map(String::as_str).collect();
            let eo = launch(Impl::Ours, a.path(), &[], &o, env);
            let er = launch(Impl::Reference, b.path(), &[], &r, env);
            assert_eq!(eo.status, Ok(0), "{o:?}: {eo:?}");
            assert_eq!(
                String::from_utf8_lossy(&eo.stdout),
                String::from_utf8_lossy(&er.stdout),
                "{o:?}"
            );
        }
    }
    // The getdump case of the issue, spelled out: inherited order, then
    // S6_FD#, then S6_FD_i, S6_FDID_i, S6_FDLIMIT_i per fd.
    let o = chainloaders(
        Impl::Ours,
        &od.sock,
        a.path(),
        &["/bin/cat", "/proc/self/environ"],
    );
    let o: Vec<&str> = o[1].iter().map(String::as_str).collect();
    let e = launch(
        Impl::Ours,
        a.path(),
        &[],
        &o,
        &[("A", "1"), ("Z", "2"), ("M", "3")],
    );
    let vars: Vec<String> = String::from_utf8_lossy(&e.stdout)
        .split('\0')
        .filter(|v| !v.is_empty())
        .map(|v| v.split('=').next().unwrap().to_string())
        .collect();
    assert_eq!(
        vars,
        [
            "A",
            "Z",
            "M",
            "S6_FD#",
            "S6_FD_0",
            "S6_FDID_0",
            "S6_FDLIMIT_0",
            "S6_FD_1",
            "S6_FDID_1"
        ]
    );
}

/// The ids of a getdump environment (`S6_FDID_0`, `S6_FDID_1`, ...), one a
/// line, in the order of their index.
fn dump_ids(environ: &[u8]) -> String {
    let text = String::from_utf8_lossy(environ);
    let mut ids: Vec<(usize, &str)> = text
        .split('\0')
        .filter_map(|v| v.strip_prefix("S6_FDID_")?.split_once('='))
        .map(|(i, id)| (i.parse().unwrap(), id))
        .collect();
    ids.sort();
    ids.iter().map(|(_, id)| format!("{id}\n")).collect()
}

/// The same requests to both daemons; then their list and getdump orders.
#[test]
fn list_and_getdump_order_is_the_references() {
    if !have_reference() {
        return;
    }
    let file = std::fs::File::open("/dev/null").unwrap();
    let fd = file.as_fd();
    let daemons = [Impl::Ours, Impl::Reference].map(Daemon::start);
    let mut lists = Vec::new();
    for d in &daemons {
        let mut c = d.client();
        for id in ["a", "b", "c", "d", "e", "f"] {
            c.store(fd, id.as_bytes(), None, None).unwrap();
        }
        c.delete(b"b", None).unwrap();
        c.delete(b"e", None).unwrap();
        c.store(fd, b"g", None, None).unwrap();
        c.retrieve_delete(b"a", None).unwrap();
        c.store(fd, b"h", None, None).unwrap();
        c.store(fd, b"i", None, None).unwrap();
        // A setdump replacing a held id and adding new ones.
        let ids: Vec<Vec<u8>> = ["c", "j", "k"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        c.setdump(&common::entries_for(&ids, fd), None).unwrap();
        c.delete(b"d", None).unwrap();
        c.store(fd, b"l", None, None).unwrap();
        let list = Command::new(prog(d.which, "s6-fdholder-list"))
            .arg(&d.sock)
            .output()
            .unwrap();
        assert!(list.status.success());
        let dump = Command::new(prog(d.which, "s6-fdholder-getdump"))
            .arg(&d.sock)
            .args(["/bin/cat", "/proc/self/environ"])
            .output()
            .unwrap();
        assert!(dump.status.success());
        lists.push((
            String::from_utf8(list.stdout).unwrap(),
            dump_ids(&dump.stdout),
        ));
    }
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[0].0, lists[0].1, "list and getdump agree");
    assert_eq!(lists[0].0.split('\n').count(), 9);
}

#[test]
fn messages_for_a_socket_path_too_long() {
    if !have_reference() {
        return;
    }
    let t = TempDir::new("proc-long");
    let long = t.join("y".repeat(120));
    let l = long.to_str().unwrap();
    // The clients say EPROTO, as 2.11 and 2.15 do.
    for name in ["s6-fdholder-list", "s6-fdholder-delete"] {
        let mut args = vec![l];
        if name.ends_with("delete") {
            args.push("id");
        }
        let run = |w| {
            let o = Command::new(prog(w, name)).args(&args).output().unwrap();
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let (o, r) = (run(Impl::Ours), run(Impl::Reference));
        assert_eq!(o, r, "{name}");
        assert!(o.1.ends_with(": Protocol error\n"), "{o:?}");
    }
    // The socketbinder says ENAMETOOLONG, as 2.15 does (skalibs 2.14's
    // ipc_bind); Debian's 2.11 said EPROTO.
    let run = |w| {
        let o = Command::new(prog(w, "s6-ipcserver-socketbinder"))
            .args([l, "true"])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let want = |what: &str| {
        (
            Some(111),
            format!("s6-ipcserver-socketbinder: fatal: unable to bind to {l}: {what}\n"),
        )
    };
    assert_eq!(run(Impl::Ours), want("File name too long"));
    assert_eq!(run(Impl::Reference), want("Protocol error"));
}
