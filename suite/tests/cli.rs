//! The client programs as processes against live daemons: success paths,
//! refusals and their exit codes, usage errors, connection and exec
//! failures, POSIX getopt; then the same inputs given to the reference's
//! programs (Debian's s6), comparing stdout, stderr and exit codes.
//!
//! Known, deliberate differences, asserted here:
//! - `s6-fdholder-delete` names the id in its refusal message (the reference
//!   names the socket path, docs/protocol.md#known-defects-of-the-reference);
//! - `s6-fdholder-transferdump` exits 2 when the destination refuses, as
//!   documented (the reference's code exits 1);
//! - an empty id is refused by our client library (`Invalid argument`)
//!   before anything is sent; the reference sends it and the daemon drops
//!   the connection (`Broken pipe`). Both exit 1.

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    ALL_RIGHTS, Daemon, Impl, Outcome, TempDir, file_with, have_reference, identity, loud, prog,
    rules_with, run_cmd,
};
use fdholder::Tain;

/// A command for one of the programs, stdin /dev/null.
fn cmd(which: Impl, name: &str) -> Command {
    let mut c = Command::new(prog(which, name));
    c.stdin(Stdio::null());
    c
}

/// Runs `name args` of `which` to completion.
fn run(which: Impl, name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Outcome {
    let mut c = cmd(which, name);
    for a in args {
        c.arg(a);
    }
    run_cmd(&mut c)
}

/// `(code, stdout, stderr)` for compact assertions.
fn ces(o: &Outcome) -> (i32, String, String) {
    (
        o.code,
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.stderr.clone(),
    )
}

fn fatal(name: &str, msg: &str) -> String {
    format!("{name}: fatal: {msg}\n")
}

/// The usage lines, exactly as the reference prints them, but for
/// s6-fdholder-store's `[ -H ] ` (drop on hang-up, ours only: see
/// [`OURS_ONLY`]).
const USAGES: &[(&str, &str)] = &[
    (
        "s6-fdholder-store",
        "s6-fdholder-store [ -H ] [ -d fd ] [ -t timeout ] [ -T fdtimeout ] socket id",
    ),
    (
        "s6-fdholder-retrieve",
        "s6-fdholder-retrieve [ -D ] [ -t timeout ] socket id prog...",
    ),
    (
        "s6-fdholder-delete",
        "s6-fdholder-delete [ -t timeout ] socket id",
    ),
    // Ours adds -l and -j (the reference's usage is without them:
    // compat_usage_lines allows exactly that difference).
    (
        "s6-fdholder-list",
        "s6-fdholder-list [ -t timeout ] [ -l | -j ] socket",
    ),
    (
        "s6-fdholder-getdump",
        "s6-fdholder-getdump [ -t timeout ] socket prog...",
    ),
    (
        "s6-fdholder-setdump",
        "s6-fdholder-setdump [ -t timeout ] socket",
    ),
    (
        "s6-fdholder-transferdump",
        "s6-fdholder-transferdump [ -t timeoutfrom:timeoutto ] socketfrom socketto",
    ),
    (
        "s6-fdholder-daemon",
        "s6-fdholder-daemon [ -v verbosity ] [ -d | -D ] [ -1 ] [ -c maxconn ] [ -n maxfds ] [ -b backlog ] [ -G gid,gid,... ] [ -g gid ] [ -u uid ] [ -U ] [ -t timeout ] [ -T lameducktimeout ] [ -S ] [ -i rulesdir | -x rulesfile ] path",
    ),
];

fn usage(name: &str) -> String {
    let line = USAGES.iter().find(|(n, _)| *n == name).unwrap().1;
    format!("{name}: usage: {line}\n")
}

/// Command lines that are usage errors, per program.
const USAGE_CASES: &[(&str, &[&str])] = &[
    ("s6-fdholder-store", &[]),
    ("s6-fdholder-store", &["sock"]),
    ("s6-fdholder-store", &["-d"]),
    ("s6-fdholder-store", &["-d", "x", "sock", "id"]),
    ("s6-fdholder-store", &["-t", "-1", "sock", "id"]),
    ("s6-fdholder-store", &["-T", "1x", "sock", "id"]),
    ("s6-fdholder-store", &["-z", "sock", "id"]),
    ("s6-fdholder-store", &["--long", "sock", "id"]),
    ("s6-fdholder-retrieve", &[]),
    ("s6-fdholder-retrieve", &["sock", "id"]),
    ("s6-fdholder-retrieve", &["-t", "x", "sock", "id", "true"]),
    ("s6-fdholder-retrieve", &["-Dq", "sock", "id", "true"]),
    ("s6-fdholder-retrieve", &["-Dt"]),
    ("s6-fdholder-delete", &["sock"]),
    ("s6-fdholder-delete", &["-t"]),
    ("s6-fdholder-delete", &["-t", "+1", "sock", "id"]),
    ("s6-fdholder-list", &[]),
    ("s6-fdholder-list", &["-t", "1x", "sock"]),
    ("s6-fdholder-list", &["-x", "sock"]),
    ("s6-fdholder-list", &["-l"]),
    ("s6-fdholder-list", &["-j", "-t"]),
    ("s6-fdholder-getdump", &[]),
    ("s6-fdholder-getdump", &["sock"]),
    ("s6-fdholder-getdump", &["-t", "", "sock", "true"]),
    ("s6-fdholder-setdump", &[]),
    ("s6-fdholder-setdump", &["-x", "sock"]),
    ("s6-fdholder-transferdump", &["sock"]),
    ("s6-fdholder-transferdump", &["-t", "x", "a", "b"]),
    ("s6-fdholder-transferdump", &["-t", "1:2:3", "a", "b"]),
    ("s6-fdholder-transferdump", &["-t", "", "a", "b"]),
    ("s6-fdholder-transferdump", &["-t", "1:x", "a", "b"]),
    ("s6-fdholder-transferdump", &["-T", "1", "a", "b"]),
    ("s6-fdholder-daemon", &[]),
    ("s6-fdholder-daemon", &["-i", "rules"]),
    ("s6-fdholder-daemon", &["-v", "x", "-i", "r", "p"]),
    ("s6-fdholder-daemon", &["-G", "x", "-i", "r", "p"]),
    ("s6-fdholder-daemon", &["-c", "-1", "-i", "r", "p"]),
    ("s6-fdholder-daemon", &["-k", "-i", "r", "p"]),
];

/// A daemon of `which` whose rules give us exactly `env`.
fn daemon_with(which: Impl, env: &[(&str, Option<&str>)]) -> (Daemon, TempDir) {
    let t = TempDir::new("cli-rules");
    let rules = rules_with(t.path(), "rules", env);
    let d = Daemon::with_rules(which, "-i", rules);
    (d, t)
}

/// Store ids starting with `s`, retrieve ids starting with `r` or `s`;
/// no list, getdump or setdump.
fn limited(which: Impl) -> (Daemon, TempDir) {
    daemon_with(
        which,
        &[
            ("S6_FDHOLDER_STORE_REGEX", Some("^s")),
            ("S6_FDHOLDER_RETRIEVE_REGEX", Some("^[rs]")),
        ],
    )
}

/// Every right but setdump.
fn no_setdump(which: Impl) -> (Daemon, TempDir) {
    let env: Vec<_> = ALL_RIGHTS
        .iter()
        .filter(|(k, _)| *k != "S6_FDHOLDER_SETDUMP")
        .map(|(k, v)| (*k, Some(*v)))
        .collect();
    daemon_with(which, &env)
}

fn list_of(d: &Daemon) -> Vec<Vec<u8>> {
    let mut l = d.client().list(None).unwrap();
    l.sort();
    l
}

/// Parses `env -0` output into sorted `NAME=value` byte strings.
fn env0(out: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = out
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    v.sort();
    v
}

/// Only the `S6_FD*` variables of an `env -0` output.
fn s6_env(out: &[u8]) -> Vec<Vec<u8>> {
    env0(out)
        .into_iter()
        .filter(|v| v.starts_with(b"S6_FD"))
        .collect()
}

// ---------------------------------------------------------------------------
// Our programs against our daemon.

#[test]
fn usage_errors_exit_100_with_the_usage_line() {
    for (name, args) in USAGE_CASES {
        let mut c = cmd(Impl::Ours, name);
        c.args(*args);
        let o = run_cmd(&mut c);
        assert_eq!(
            ces(&o),
            (100, String::new(), usage(name)),
            "{name} {args:?}"
        );
    }
}

#[test]
fn connection_failures_exit_111() {
    let t = TempDir::new("cli-conn");
    let missing = t.join("missing");
    let notsock = t.join("file");
    std::fs::write(&notsock, "").unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("s6-fdholder-store", &["id"]),
        ("s6-fdholder-retrieve", &["id", "true"]),
        ("s6-fdholder-delete", &["id"]),
        ("s6-fdholder-list", &[]),
        ("s6-fdholder-getdump", &["true"]),
        ("s6-fdholder-setdump", &[]),
    ];
    for (path, err) in [
        (&missing, "No such file or directory"),
        (&notsock, "Connection refused"),
    ] {
        for (name, rest) in cases {
            let mut c = cmd(Impl::Ours, name);
            c.arg(path).args(*rest).env("S6_FD#", "0");
            let o = run_cmd(&mut c);
            let msg = format!(
                "unable to connect to a fd-holder daemon at {}: {err}",
                path.display()
            );
            assert_eq!(ces(&o), (111, String::new(), fatal(name, &msg)), "{name}");
        }
    }
    // transferdump names the side.
    let d = Daemon::start(Impl::Ours);
    let o = run(Impl::Ours, "s6-fdholder-transferdump", &[&missing, &d.sock]);
    let msg = format!(
        "unable to connect to a source fd-holder daemon at {}: No such file or directory",
        missing.display()
    );
    assert_eq!(
        ces(&o),
        (111, String::new(), fatal("s6-fdholder-transferdump", &msg))
    );
    let o = run(Impl::Ours, "s6-fdholder-transferdump", &[&d.sock, &missing]);
    let msg = format!(
        "unable to connect to a destination fd-holder daemon at {}: No such file or directory",
        missing.display()
    );
    assert_eq!(
        ces(&o),
        (111, String::new(), fatal("s6-fdholder-transferdump", &msg))
    );
}

#[test]
fn store_success_and_refusals() {
    let d = Daemon::start(Impl::Ours);
    let f = file_with(&d.dir, "f", b"hello");
    let name = "s6-fdholder-store";
    // stdin by default
    let mut c = cmd(Impl::Ours, name);
    c.arg(&d.sock)
        .arg("one")
        .stdin(std::fs::File::open(d.dir.join("f")).unwrap());
    assert_eq!(ces(&run_cmd(&mut c)), (0, String::new(), String::new()));
    assert_eq!(
        identity(d.client().retrieve(b"one", None).unwrap()),
        identity(&f)
    );
    // EBUSY
    let mut c = cmd(Impl::Ours, name);
    c.arg(&d.sock).arg("one");
    assert_eq!(
        ces(&run_cmd(&mut c)),
        (
            1,
            String::new(),
            fatal(name, "unable to store fd: Device or resource busy")
        )
    );
    // -d fd, clustered with -t, and -T: a finite limit.
    let o = run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" -d7 -t 5000 -T 3600000 \"$1\" two 7<\"$2\"")
            .arg(prog(Impl::Ours, name))
            .arg(&d.sock)
            .arg(d.dir.join("f")),
    );
    assert_eq!(ces(&o), (0, String::new(), String::new()));
    let now = Tain::now();
    let dump = d.client().getdump(None).unwrap();
    let two = dump.iter().find(|e| e.id == b"two").unwrap();
    assert_eq!(identity(&two.fd), identity(&f));
    assert!(two.limit > now + Duration::from_secs(3500));
    assert!(two.limit < now + Duration::from_secs(3700));
    let one = dump.iter().find(|e| e.id == b"one").unwrap();
    assert!(!one.limit.is_finite_from(now));
    // An fd that is not open.
    let o = run(Impl::Ours, name, &[&"-d", &"987", &d.sock, &"three"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(name, "unable to store fd: Bad file descriptor")
        )
    );
    // EPERM
    let (l, _t) = limited(Impl::Ours);
    let o = run(Impl::Ours, name, &[&l.sock, &"x"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(name, "unable to store fd: Operation not permitted")
        )
    );
    // Ids: over 255 bytes, and empty.
    let o = run(Impl::Ours, name, &[&d.sock, &"x".repeat(256)]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(name, "unable to store fd: File name too long")
        )
    );
    let o = run(Impl::Ours, name, &[&d.sock, &""]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(name, "unable to store fd: Invalid argument")
        )
    );
    assert_eq!(list_of(&d), vec![b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn retrieve_success_refusals_exec_and_getopt() {
    let d = Daemon::start(Impl::Ours);
    let name = "s6-fdholder-retrieve";
    let f = file_with(&d.dir, "f", b"abcdef");
    let mut c = d.client();
    c.store(f.as_fd(), b"one", None, None).unwrap();
    c.store(f.as_fd(), b"two", None, None).unwrap();
    // The fd is the program's stdin; the program keeps its own options.
    let o = run(Impl::Ours, name, &[&d.sock, &"one", &"head", &"-c", &"2"]);
    assert_eq!(ces(&o), (0, "ab".into(), String::new()));
    // Same open file: the offset moved for everyone.
    let o = run(Impl::Ours, name, &[&d.sock, &"two", &"cat"]);
    assert_eq!(ces(&o), (0, "cdef".into(), String::new()));
    // Clustered -Dt 100: retrieve and delete.
    let o = run(
        Impl::Ours,
        name,
        &[
            &"-Dt",
            &"1000",
            &d.sock,
            &"one",
            &"sh",
            &"-c",
            &"echo $0 $1",
            &"-D",
            &"-t",
        ],
    );
    assert_eq!(ces(&o), (0, "-D -t\n".into(), String::new()));
    assert_eq!(list_of(&d), vec![b"two".to_vec()]);
    // `--` ends the options.
    let o = run(Impl::Ours, name, &[&"-t0", &"--", &d.sock, &"two", &"true"]);
    assert_eq!(ces(&o), (0, String::new(), String::new()));
    // ENOENT
    let o = run(Impl::Ours, name, &[&d.sock, &"nosuch", &"true"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(
                name,
                "unable to retrieve fd for id nosuch: No such file or directory"
            )
        )
    );
    // exec failures: 127 not found, 126 otherwise.
    let o = run(Impl::Ours, name, &[&d.sock, &"two", &"/nonexistent/prog"]);
    assert_eq!(
        ces(&o),
        (
            127,
            String::new(),
            fatal(
                name,
                "unable to exec /nonexistent/prog: No such file or directory"
            )
        )
    );
    let o = run(Impl::Ours, name, &[&d.sock, &"two", &d.dir]);
    assert_eq!(
        ces(&o),
        (
            126,
            String::new(),
            fatal(
                name,
                &format!("unable to exec {}: Permission denied", d.dir.display())
            )
        )
    );
    // EPERM: no retrieve right; -D without the store right.
    let (l, _t) = limited(Impl::Ours);
    l.client().store(f.as_fd(), b"s1", None, None).unwrap();
    let o = run(Impl::Ours, name, &[&l.sock, &"x", &"true"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(
                name,
                "unable to retrieve fd for id x: Operation not permitted"
            )
        )
    );
    assert_eq!(
        run(Impl::Ours, name, &[&l.sock, &"s1", &"true"]).code,
        0,
        "retrieve right"
    );
    let o = run(Impl::Ours, name, &[&"-D", &l.sock, &"r1", &"true"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(
                name,
                "unable to retrieve fd for id r1: Operation not permitted"
            )
        )
    );
}

#[test]
fn delete_success_and_refusals() {
    let d = Daemon::start(Impl::Ours);
    let name = "s6-fdholder-delete";
    let f = file_with(&d.dir, "f", b"");
    d.client().store(f.as_fd(), b"one", None, None).unwrap();
    let o = run(Impl::Ours, name, &[&"-t", &"1000", &d.sock, &"one"]);
    assert_eq!(ces(&o), (0, String::new(), String::new()));
    assert!(list_of(&d).is_empty());
    // The message names the id (the reference names the socket: docs/protocol.md#known-defects-of-the-reference).
    let o = run(Impl::Ours, name, &[&d.sock, &"one"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(
                name,
                "unable to delete fd for id one: No such file or directory"
            )
        )
    );
    let (l, _t) = limited(Impl::Ours);
    let o = run(Impl::Ours, name, &[&l.sock, &"r1"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(
                name,
                "unable to delete fd for id r1: Operation not permitted"
            )
        )
    );
}

/// Ids with every kind of byte the list quoting cares about.
fn odd_ids() -> Vec<Vec<u8>> {
    vec![
        b"plain".to_vec(),
        b"tab\there".to_vec(),
        b"new\nline".to_vec(),
        b"back\\slash".to_vec(),
        b"\"quoted\" 'single'".to_vec(),
        b"with space".to_vec(),
        b"\x07\x08\x0b\x0c\r".to_vec(),
        b"ctl\x01\x1b\x1f".to_vec(),
        b"del\x7f".to_vec(),
        b"high\x80\xff\xc3\xa9".to_vec(),
        b"$dollar`tick`".to_vec(),
        vec![b'y'; 255],
    ]
}

#[test]
fn list_quotes_ids() {
    let d = Daemon::start(Impl::Ours);
    let name = "s6-fdholder-list";
    let o = run(Impl::Ours, name, &[&d.sock]);
    assert_eq!(ces(&o), (0, String::new(), String::new()));
    let f = file_with(&d.dir, "f", b"");
    let mut c = d.client();
    for id in odd_ids() {
        c.store(f.as_fd(), &id, None, None).unwrap();
    }
    let o = run(Impl::Ours, name, &[&"-t", &"1000", &d.sock]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let mut lines: Vec<&[u8]> = o.stdout.split(|&b| b == b'\n').collect();
    assert_eq!(lines.pop(), Some(&b""[..]), "ends with a newline");
    lines.sort();
    let long = "y".repeat(255);
    let mut want: Vec<&[u8]> = vec![
        b"plain",
        b"tab\\there",
        b"new\\nline",
        b"back\\\\slash",
        b"\"quoted\" 'single'",
        b"with space",
        b"\\a\\b\\v\\f\\r",
        b"ctl\\0x01\\0x1b\\0x1f",
        b"del\\0x7f",
        b"high\\0x80\\0xff\\0xc3\\0xa9",
        b"$dollar`tick`",
        long.as_bytes(),
    ];
    want.sort();
    assert_eq!(lines, want);
    let (l, _t) = limited(Impl::Ours);
    let o = run(Impl::Ours, name, &[&l.sock]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(name, "unable to get fd list: Operation not permitted")
        )
    );
}

#[test]
fn getdump_environment_and_refusals() {
    let d = Daemon::start(Impl::Ours);
    let name = "s6-fdholder-getdump";
    let f = file_with(&d.dir, "f", b"hello");
    let mut c = d.client();
    let limit = Tain::now() + Duration::from_secs(3600);
    c.store(f.as_fd(), b"inf", None, None).unwrap();
    c.store(f.as_fd(), b"fin\nite", Some(limit), None).unwrap();
    let o = run(Impl::Ours, name, &[&"-t", &"1000", &d.sock, &"env", &"-0"]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let env = s6_env(&o.stdout);
    assert_eq!(env.len(), 1 + 3 + 2, "{env:?}");
    assert!(env.contains(&b"S6_FD#=2".to_vec()));
    let get = |k: &str| -> Option<Vec<u8>> {
        env.iter().find_map(|v| {
            v.strip_prefix(format!("{k}=").as_bytes())
                .map(<[u8]>::to_vec)
        })
    };
    let fin = (0..2)
        .find(|i| get(&format!("S6_FDID_{i}")) == Some(b"fin\nite".to_vec()))
        .unwrap();
    let inf = 1 - fin;
    assert_eq!(get(&format!("S6_FDID_{inf}")), Some(b"inf".to_vec()));
    assert_eq!(
        get(&format!("S6_FDLIMIT_{fin}")),
        Some(limit.to_text().into_bytes())
    );
    assert_eq!(get(&format!("S6_FDLIMIT_{inf}")), None, "infinite: unset");
    // The fds are open (not close-on-exec) in the program.
    let o = run(
        Impl::Ours,
        name,
        &[
            &d.sock,
            &"sh",
            &"-c",
            &"cat /dev/fd/$S6_FD_0 /dev/fd/$S6_FD_1",
        ],
    );
    assert_eq!(ces(&o), (0, "hellohello".into(), String::new()));
    // An empty store: S6_FD#=0.
    let e = Daemon::start(Impl::Ours);
    let o = run(Impl::Ours, name, &[&e.sock, &"env", &"-0"]);
    assert_eq!(s6_env(&o.stdout), vec![b"S6_FD#=0".to_vec()]);
    // exec failure
    let o = run(Impl::Ours, name, &[&d.sock, &"/nonexistent/prog"]);
    assert_eq!(
        ces(&o),
        (
            127,
            String::new(),
            fatal(
                name,
                "unable to exec /nonexistent/prog: No such file or directory"
            )
        )
    );
    let (l, _t) = limited(Impl::Ours);
    let o = run(Impl::Ours, name, &[&l.sock, &"true"]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(name, "unable to get dump: Operation not permitted")
        )
    );
}

/// A setdump environment, the exit code and the message it gets.
type EnvCase = (Vec<(&'static str, &'static str)>, i32, &'static str);

/// The setdump environment errors.
fn setdump_env_cases() -> Vec<EnvCase> {
    vec![
        (vec![], 100, "S6_FD# not set"),
        (vec![("S6_FD#", "x")], 100, "invalid $S6_FD#"),
        (vec![("S6_FD#", "-1")], 100, "invalid $S6_FD#"),
        (vec![("S6_FD#", "")], 100, "invalid $S6_FD#"),
        (vec![("S6_FD#", "1")], 100, "S6_FD_0 not set"),
        (
            vec![("S6_FD#", "1"), ("S6_FD_0", "x"), ("S6_FDID_0", "a")],
            100,
            "invalid $S6_FD_0",
        ),
        (
            vec![("S6_FD#", "1"), ("S6_FD_0", "0")],
            100,
            "S6_FDID_0 not set",
        ),
        (
            vec![("S6_FD#", "1"), ("S6_FD_0", "0"), ("S6_FDID_0", "")],
            100,
            "invalid $S6_FDID_0",
        ),
        (
            vec![
                ("S6_FD#", "1"),
                ("S6_FD_0", "0"),
                ("S6_FDID_0", "a"),
                ("S6_FDLIMIT_0", "bad"),
            ],
            100,
            "invalid $S6_FDLIMIT_0",
        ),
        (
            vec![
                ("S6_FD#", "1"),
                ("S6_FD_0", "0"),
                ("S6_FDID_0", "a"),
                ("S6_FDLIMIT_0", "@400000006b021c002015004"),
            ],
            100,
            "invalid $S6_FDLIMIT_0",
        ),
        (
            vec![
                ("S6_FD#", "2"),
                ("S6_FD_0", "0"),
                ("S6_FDID_0", "a"),
                ("S6_FD_1", "0"),
            ],
            100,
            "S6_FDID_1 not set",
        ),
        (
            vec![("S6_FD#", "1"), ("S6_FD_0", "987"), ("S6_FDID_0", "a")],
            1,
            "unable to set dump: Bad file descriptor",
        ),
    ]
}

#[test]
fn setdump_environment_errors() {
    let d = Daemon::start(Impl::Ours);
    let name = "s6-fdholder-setdump";
    let long = "z".repeat(256);
    let mut cases = setdump_env_cases();
    cases.push((
        vec![
            ("S6_FD#", "1"),
            ("S6_FD_0", "0"),
            ("S6_FDID_0", &*long.leak()),
        ],
        100,
        "invalid $S6_FDID_0",
    ));
    // A huge count is only a count: no allocation for it up front (ours
    // only; the reference puts that many entries on its stack).
    cases.push((vec![("S6_FD#", "4000000000")], 100, "S6_FD_0 not set"));
    for (env, code, msg) in cases {
        let mut c = cmd(Impl::Ours, name);
        c.arg(&d.sock)
            .env_remove("S6_FD#")
            .envs(env.iter().copied());
        assert_eq!(
            ces(&run_cmd(&mut c)),
            (code, String::new(), fatal(name, msg)),
            "{env:?}"
        );
    }
    assert!(list_of(&d).is_empty());
    // S6_FD#=0: nothing to do.
    let mut c = cmd(Impl::Ours, name);
    c.arg(&d.sock).env("S6_FD#", "0");
    assert_eq!(ces(&run_cmd(&mut c)), (0, String::new(), String::new()));
    // What follows the 24 hex digits of a timestamp is ignored, upper-case
    // hex is accepted (skalibs' timestamp_scan).
    let f = d.dir.join("f");
    std::fs::write(&f, "").unwrap();
    let mut c = cmd(Impl::Ours, name);
    c.arg(&d.sock)
        .stdin(std::fs::File::open(&f).unwrap())
        .envs([
            ("S6_FD#", "2"),
            ("S6_FD_0", "0"),
            ("S6_FDID_0", "trailing"),
            ("S6_FDLIMIT_0", "@4000000100000000000000ffxyz"),
            ("S6_FD_1", "0"),
            ("S6_FDID_1", "upper"),
            ("S6_FDLIMIT_1", "@4000000100000000000000FF"),
        ]);
    assert_eq!(ces(&run_cmd(&mut c)), (0, String::new(), String::new()));
    let dump = d.client().getdump(None).unwrap();
    for e in &dump {
        assert_eq!(
            e.limit,
            Tain::from_text(b"@4000000100000000000000ff").unwrap()
        );
    }
    assert_eq!(dump.len(), 2);
    // EPERM
    let (l, _t) = limited(Impl::Ours);
    let mut c = cmd(Impl::Ours, name);
    c.arg(&l.sock)
        .stdin(std::fs::File::open(&f).unwrap())
        .envs([("S6_FD#", "1"), ("S6_FD_0", "0"), ("S6_FDID_0", "s1")]);
    assert_eq!(
        ces(&run_cmd(&mut c)),
        (
            1,
            String::new(),
            fatal(name, "unable to set dump: Operation not permitted")
        )
    );
}

/// getdump from `a` execs `env` (`via_bash`: `bash`), which execs setdump
/// into `b`. Not dash: it drops `S6_FD#` from the environment, that name
/// not being a shell identifier.
fn getdump_setdump(g: Impl, s: Impl, a: &Path, b: &Path, via_bash: bool) -> Outcome {
    let mut c = cmd(g, "s6-fdholder-getdump");
    c.arg(a);
    if via_bash {
        c.args(["bash", "-c", "exec \"$0\" \"$1\""]);
    } else {
        c.arg("env");
    }
    c.arg(prog(s, "s6-fdholder-setdump")).arg(b);
    run_cmd(&mut c)
}

/// Checks that `b` holds what `a` holds: same ids, limits, open files.
fn same_dump(a: &Daemon, b: &Daemon) {
    let mut da = a.client().getdump(None).unwrap();
    let mut db = b.client().getdump(None).unwrap();
    da.sort_by(|x, y| x.id.cmp(&y.id));
    db.sort_by(|x, y| x.id.cmp(&y.id));
    let now = Tain::now();
    let key = |e: &fdholder::DumpEntry| {
        (
            e.id.clone(),
            e.limit.is_finite_from(now).then_some(e.limit),
            identity(&e.fd),
        )
    };
    assert_eq!(
        da.iter().map(key).collect::<Vec<_>>(),
        db.iter().map(key).collect::<Vec<_>>()
    );
}

/// Fills a daemon with odd ids, some with finite (distinct) limits.
fn fill_odd(d: &Daemon) -> Vec<std::fs::File> {
    let mut c = d.client();
    let base = Tain::now() + Duration::from_secs(7200);
    odd_ids()
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let f = file_with(&d.dir, &format!("odd{i}"), b"x");
            let limit = (i % 2 == 1).then_some(base + Duration::from_millis(i as u64));
            c.store(f.as_fd(), id, limit, None).unwrap();
            f
        })
        .collect()
}

#[test]
fn getdump_setdump_chain_round_trips() {
    let a = Daemon::start(Impl::Ours);
    let _files = fill_odd(&a);
    for via_bash in [false, true] {
        let b = Daemon::start(Impl::Ours);
        let o = getdump_setdump(Impl::Ours, Impl::Ours, &a.sock, &b.sock, via_bash);
        assert_eq!(ces(&o), (0, String::new(), String::new()));
        same_dump(&a, &b);
    }
    // dash drops `S6_FD#`: setdump says so.
    let b = Daemon::start(Impl::Ours);
    let mut c = cmd(Impl::Ours, "s6-fdholder-getdump");
    c.arg(&a.sock)
        .args(["sh", "-c", "exec \"$0\" \"$1\""])
        .arg(prog(Impl::Ours, "s6-fdholder-setdump"))
        .arg(&b.sock);
    if std::fs::read_link("/bin/sh").is_ok_and(|p| p.ends_with("dash")) {
        assert_eq!(
            ces(&run_cmd(&mut c)),
            (
                100,
                String::new(),
                fatal("s6-fdholder-setdump", "S6_FD# not set")
            )
        );
    }
}

#[test]
fn transferdump_success_refusals_and_timeouts() {
    let name = "s6-fdholder-transferdump";
    let a = Daemon::start(Impl::Ours);
    let _files = fill_odd(&a);
    let b = Daemon::start(Impl::Ours);
    let f = file_with(&b.dir, "f", b"");
    b.client().store(f.as_fd(), b"kept", None, None).unwrap();
    for t in ["1000:1000", ":1000", "1000:", "1000", ":", "0:0"] {
        let o = run(Impl::Ours, name, &[&"-t", &t, &a.sock, &b.sock]);
        assert_eq!(ces(&o), (0, String::new(), String::new()), "-t {t}");
    }
    let o = run(Impl::Ours, name, &[&a.sock, &b.sock]);
    assert_eq!(ces(&o), (0, String::new(), String::new()));
    // b holds a's set, plus what it had.
    let mut want = odd_ids();
    want.push(b"kept".to_vec());
    want.sort();
    assert_eq!(list_of(&b), want);
    b.client().delete(b"kept", None).unwrap();
    same_dump(&a, &b);
    // The source refuses: 1.
    let (l, _t) = limited(Impl::Ours);
    let o = run(Impl::Ours, name, &[&l.sock, &b.sock]);
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal(name, "unable to get dump: Operation not permitted")
        )
    );
    // The destination refuses: 2.
    let (n, _t2) = no_setdump(Impl::Ours);
    let o = run(Impl::Ours, name, &[&a.sock, &n.sock]);
    assert_eq!(
        ces(&o),
        (
            2,
            String::new(),
            fatal(name, "unable to set dump: Operation not permitted")
        )
    );
    // An empty dump is not sent: the destination is not asked (as the
    // reference's library).
    let e = Daemon::start(Impl::Ours);
    let o = run(Impl::Ours, name, &[&e.sock, &n.sock]);
    assert_eq!(ces(&o), (0, String::new(), String::new()));
}

#[test]
fn daemon_wrapper_errors() {
    let name = "s6-fdholder-daemon";
    let o = run(Impl::Ours, name, &[&"/tmp/nonexistent-dir/s"]);
    assert_eq!(
        ces(&o),
        (
            100,
            String::new(),
            fatal(name, "no access rights specified!")
        )
    );
    // The siblings are missing and not in PATH: the exec fails.
    let t = TempDir::new("cli-lonely");
    install(t.path(), &[name]);
    let o = run_cmd(
        Command::new(t.join(name))
            .args(["-i", "rules", "sock"])
            .env("PATH", "/nonexistent")
            .stdin(Stdio::null()),
    );
    assert_eq!(
        ces(&o),
        (
            127,
            String::new(),
            fatal(
                name,
                "unable to exec s6-ipcserver-socketbinder: No such file or directory"
            )
        )
    );
}

/// Copies our programs `names` into `dir`. With `cp`, not from this
/// process: a copy written here could be inherited, open for writing, by a
/// child that another test thread forks, and exec would then fail with
/// ETXTBSY.
fn install(dir: &Path, names: &[&str]) {
    let st = Command::new("cp")
        .args(names.iter().map(|n| prog(Impl::Ours, n)))
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Option sets for the daemon wrapper's exec chain.
const DAEMON_ARGVS: &[&[&str]] = &[
    &["-i", "/r"],
    &["-x", "/r.cdb"],
    &["-1", "-v0", "-i", "/r"],
    &[
        "-v2", "-D", "-1", "-c", "3", "-n", "7", "-b", "5", "-G", "1,2", "-g", "3", "-u", "4",
        "-t", "9", "-T", "8", "-x", "/r",
    ],
    &[
        "-d", "-b0", "-c0", "-n0", "-v1", "-t0", "-T0", "-i", "/a", "-x", "/b",
    ],
    &["-x", "/a", "-i", "/b"],
    &["-U", "-i", "/r"],
    &["-u", "4", "-g", "5", "-G", "6", "-U", "-i", "/r"],
    &["-G", "", "-i", "/r"],
    &["-G", "1:2;3 4", "-g0", "-u0", "-i", "/r"],
    &["-c", "1000", "-n", "100000", "-i", "/r"],
];

/// The argv of every `execve` that `exe args` performs (strace), with the
/// directory of the executables replaced by `BIN`. The path is in a
/// directory that does not exist, so the chain stops at the socketbinder.
fn exec_chain(exe: &Path, args: &[&str]) -> Option<Vec<Vec<String>>> {
    let t = TempDir::new("cli-strace");
    let log = t.join("log");
    let out = Command::new("strace")
        .arg("-o")
        .arg(&log)
        .args(["-e", "trace=execve", "-s", "4096"])
        .arg(exe)
        .args(args)
        .arg("/nonexistent-dir/s")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.code() == Some(111) => {}
        Ok(o) => panic!("{exe:?} {args:?}: {:?}", o.status),
        Err(_) => {
            loud("strace is not installed: the exec chain is not checked");
            return None;
        }
    }
    let dir = exe.parent().unwrap().to_str().unwrap().to_string() + "/";
    let text = std::fs::read_to_string(&log).unwrap();
    Some(
        text.lines()
            .filter(|l| l.starts_with("execve(") && l.ends_with("= 0"))
            .map(|l| {
                let start = l.find('[').unwrap() + 1;
                let end = l.find(']').unwrap();
                l[start..end]
                    .split(", ")
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim_matches('"').replace(&dir, "BIN/"))
                    .collect()
            })
            .collect(),
    )
}

#[test]
fn daemon_wrapper_exec_chain() {
    let ours = prog(Impl::Ours, "s6-fdholder-daemon");
    let Some(chain) = exec_chain(&ours, DAEMON_ARGVS[3]) else {
        return;
    };
    let want: Vec<&str> = vec![
        "BIN/s6-ipcserver-socketbinder",
        "-D",
        "-b",
        "5",
        "--",
        "/nonexistent-dir/s",
        "BIN/s6-applyuidgid",
        "-u",
        "4",
        "-g",
        "3",
        "-G",
        "1,2",
        "--",
        "BIN/s6-fdholderd",
        "-v",
        "2",
        "-1",
        "-c",
        "3",
        "-n",
        "7",
        "-t",
        "9",
        "-T",
        "8",
        "-x",
        "/r",
    ];
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!(chain[1], want);
    let chain = exec_chain(&ours, &["-i", "/r"]).unwrap();
    assert_eq!(
        chain[1],
        vec![
            "BIN/s6-ipcserver-socketbinder",
            "--",
            "/nonexistent-dir/s",
            "BIN/s6-fdholderd",
            "-i",
            "/r"
        ]
    );
    if !have_reference() {
        return;
    }
    let reference = prog(Impl::Reference, "s6-fdholder-daemon");
    for args in DAEMON_ARGVS {
        let a = exec_chain(&ours, args).unwrap();
        let b = exec_chain(&reference, args).unwrap();
        assert_eq!(a[1..], b[1..], "{args:?}");
    }
}

#[test]
fn daemon_wrapper_finds_its_siblings() {
    // An "install" directory with copies of the programs, and no PATH.
    let t = TempDir::new("cli-install");
    let bin = t.join("bin");
    std::fs::create_dir(&bin).unwrap();
    install(
        &bin,
        &[
            "s6-fdholder-daemon",
            "s6-ipcserver-socketbinder",
            "s6-applyuidgid",
            "s6-fdholderd",
        ],
    );
    let rules = common::full_rules(t.path());
    let sock = t.join("s");
    let mut child = Command::new(bin.join("s6-fdholder-daemon"))
        .arg("-1")
        .arg("-i")
        .arg(&rules)
        .arg(&sock)
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "\n", "readiness");
    let pid = child.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<PathBuf> = cmdline
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(String::from_utf8(s.to_vec()).unwrap()))
        .collect();
    let ok = fdholder::Client::connect(&sock, None)
        .and_then(|mut c| c.list(None))
        .map(|l| l.is_empty());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(exe, bin.join("s6-fdholderd"));
    assert_eq!(
        argv,
        vec![
            bin.join("s6-fdholderd"),
            "-1".into(),
            "-i".into(),
            rules.clone()
        ]
    );
    assert!(ok.unwrap());
}

// ---------------------------------------------------------------------------
// Side by side with the reference's programs.

/// Replaces the programs' directories by `BIN/` and the daemons' socket
/// paths by `SOCK`.
fn normalise(s: &str, socks: &[&Path]) -> String {
    let mut s = s
        .replace(
            &format!(
                "{}/",
                prog(Impl::Ours, "s6-fdholderd").parent().unwrap().display()
            ),
            "BIN/",
        )
        .replace("/usr/bin/", "BIN/")
        // An addition of ours (docs/compatibility.md): the daemon's -S (no
        // sandbox) in the usage lines of s6-fdholderd and s6-fdholder-daemon.
        .replace(" [ -S ]", "");
    for p in socks {
        s = s.replace(p.to_str().unwrap(), "SOCK");
    }
    s
}

/// One comparison case: a program, arguments (`SOCK` is the daemon's
/// socket), environment, and state set up in a fresh daemon before each run.
struct Case {
    name: &'static str,
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    stdin_file: bool,
    setup: fn(&Daemon),
}

fn case(name: &'static str, args: &[&str]) -> Case {
    Case {
        name,
        args: args.iter().map(OsString::from).collect(),
        env: vec![],
        stdin_file: false,
        setup: |_| {},
    }
}

fn store_one(d: &Daemon) {
    let f = file_with(&d.dir, "held", b"held");
    d.client().store(f.as_fd(), b"one", None, None).unwrap();
}

/// Runs `c` with the program of `which` against a fresh daemon of `daemon`
/// (full rights, or `limited`), normalised.
fn run_case(c: &Case, which: Impl, daemon: Impl, rights_limited: bool) -> (i32, Vec<u8>, String) {
    let (d, _t) = if rights_limited {
        let (d, t) = limited(daemon);
        (d, Some(t))
    } else {
        (Daemon::start(daemon), None)
    };
    (c.setup)(&d);
    let mut cmd = cmd(which, c.name);
    for a in &c.args {
        if a == "SOCK" {
            cmd.arg(&d.sock);
        } else {
            cmd.arg(a);
        }
    }
    cmd.env_remove("S6_FD#");
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    if c.stdin_file {
        let f = file_with(&d.dir, "stdin", b"input");
        cmd.stdin(f);
    }
    let o = run_cmd(&mut cmd);
    let stdout = normalise(&String::from_utf8_lossy(&o.stdout), &[&d.sock]);
    let stdout = if stdout.as_bytes() == o.stdout.as_slice() {
        o.stdout
    } else {
        stdout.into_bytes()
    };
    (o.code, stdout, normalise(&o.stderr, &[&d.sock]))
}

/// Options of ours the reference does not have, as its usage line gives
/// them: `(program, what the reference's usage line says, ours)`.
const OURS_ONLY: &[(&str, &str, &str)] = &[(
    "s6-fdholder-store",
    "usage: s6-fdholder-store [ -d fd ]",
    "usage: s6-fdholder-store [ -H ] [ -d fd ]",
)];

fn compare(cases: &[Case], daemon: Impl, rights_limited: bool) {
    for c in cases {
        let ours = run_case(c, Impl::Ours, daemon, rights_limited);
        let mut theirs = run_case(c, Impl::Reference, daemon, rights_limited);
        for (name, from, to) in OURS_ONLY {
            if c.name == *name {
                theirs.2 = theirs.2.replace(from, to);
            }
        }
        assert_eq!(
            ours, theirs,
            "{} {:?} env {:?} (daemon {daemon:?}, limited {rights_limited})",
            c.name, c.args, c.env
        );
    }
}

#[test]
fn compat_usage_lines() {
    if !have_reference() {
        return;
    }
    let (list, others): (Vec<Case>, Vec<Case>) = USAGE_CASES
        .iter()
        .map(|(name, args)| case(name, args))
        .partition(|c| c.name == "s6-fdholder-list");
    compare(&others, Impl::Ours, false);
    // s6-fdholder-list: the same but for our -l and -j in the usage line.
    for c in &list {
        let (code, out, err) = run_case(c, Impl::Ours, Impl::Ours, false);
        let ours = (code, out, err.replace(" [ -l | -j ]", ""));
        let theirs = run_case(c, Impl::Reference, Impl::Ours, false);
        assert_eq!(ours, theirs, "{} {:?}", c.name, c.args);
    }
}

#[test]
fn compat_messages_and_codes() {
    if !have_reference() {
        return;
    }
    let mut cases = vec![
        case("s6-fdholder-store", &["/nonexistent/sock", "id"]),
        case("s6-fdholder-retrieve", &["/nonexistent/sock", "id", "true"]),
        case("s6-fdholder-delete", &["/nonexistent/sock", "id"]),
        case("s6-fdholder-list", &["/nonexistent/sock"]),
        case("s6-fdholder-getdump", &["/nonexistent/sock", "true"]),
        case("s6-fdholder-transferdump", &["/nonexistent/sock", "SOCK"]),
        case("s6-fdholder-transferdump", &["SOCK", "/nonexistent/sock"]),
        case("s6-fdholder-transferdump", &["SOCK", "SOCK"]),
        case("s6-fdholder-daemon", &["/nonexistent/s"]),
        case(
            "s6-fdholder-daemon",
            &["-x", "r", "-i", "/nonexistent/r", "-D"],
        ),
        Case {
            stdin_file: true,
            ..case("s6-fdholder-store", &["-t", "1000", "SOCK", "id"])
        },
        Case {
            setup: store_one,
            ..case("s6-fdholder-store", &["SOCK", "one"])
        },
        case("s6-fdholder-store", &["-d", "987", "SOCK", "one"]),
        case("s6-fdholder-store", &["SOCK", &"x".repeat(256)]),
        Case {
            setup: store_one,
            ..case(
                "s6-fdholder-retrieve",
                &["-Dt", "100", "SOCK", "one", "head", "-c", "2"],
            )
        },
        Case {
            setup: store_one,
            ..case(
                "s6-fdholder-retrieve",
                &[
                    "--",
                    "SOCK",
                    "one",
                    "sh",
                    "-c",
                    "cat; echo \" $0 $1\"",
                    "-D",
                    "--",
                ],
            )
        },
        case("s6-fdholder-retrieve", &["SOCK", "nosuch", "true"]),
        case("s6-fdholder-retrieve", &["SOCK", &"x".repeat(256), "true"]),
        Case {
            setup: store_one,
            ..case(
                "s6-fdholder-retrieve",
                &["SOCK", "one", "/nonexistent/prog"],
            )
        },
        Case {
            setup: store_one,
            ..case("s6-fdholder-retrieve", &["SOCK", "one", "/"])
        },
        Case {
            setup: store_one,
            ..case("s6-fdholder-delete", &["SOCK", "one"])
        },
        case("s6-fdholder-list", &["SOCK"]),
        Case {
            setup: store_one,
            ..case("s6-fdholder-list", &["-t0", "SOCK"])
        },
        case("s6-fdholder-getdump", &["SOCK", "/nonexistent/prog"]),
        case("s6-fdholder-getdump", &["SOCK", "/"]),
        Case {
            setup: store_one,
            ..case(
                "s6-fdholder-getdump",
                &[
                    "SOCK",
                    "sh",
                    "-c",
                    "cat /dev/fd/$S6_FD_0; echo \" $S6_FDID_0 $0\"",
                    "-t",
                ],
            )
        },
        case("s6-fdholder-setdump", &["SOCK"]),
        Case {
            setup: store_one,
            ..case("s6-fdholder-transferdump", &["-t", ":", "SOCK", "SOCK"])
        },
    ];
    for (env, _, _) in setdump_env_cases() {
        cases.push(Case {
            env: env.iter().map(|(k, v)| (*k, OsString::from(v))).collect(),
            stdin_file: true,
            ..case("s6-fdholder-setdump", &["SOCK"])
        });
    }
    for (i, lim) in [
        "@4000000100000000000000ffxyz",
        "@4000000100000000000000FF",
        "@4000000100000000000000ff ",
        "4000000100000000000000ff",
    ]
    .into_iter()
    .enumerate()
    {
        let _ = i;
        cases.push(Case {
            env: vec![
                ("S6_FD#", "1".into()),
                ("S6_FD_0", "0".into()),
                ("S6_FDID_0", "x".into()),
                ("S6_FDLIMIT_0", lim.into()),
            ],
            stdin_file: true,
            ..case("s6-fdholder-setdump", &["SOCK"])
        });
    }
    compare(&cases, Impl::Ours, false);
    if common::reference("s6-fdholderd").is_some() {
        compare(&cases, Impl::Reference, false);
    }

    // Refusals (EPERM) on a daemon with limited rights.
    let refused = vec![
        Case {
            stdin_file: true,
            ..case("s6-fdholder-store", &["SOCK", "x"])
        },
        case("s6-fdholder-retrieve", &["SOCK", "x", "true"]),
        case("s6-fdholder-retrieve", &["-D", "SOCK", "r1", "true"]),
        case("s6-fdholder-list", &["SOCK"]),
        case("s6-fdholder-getdump", &["SOCK", "true"]),
        Case {
            env: vec![
                ("S6_FD#", "1".into()),
                ("S6_FD_0", "0".into()),
                ("S6_FDID_0", "s1".into()),
            ],
            stdin_file: true,
            ..case("s6-fdholder-setdump", &["SOCK"])
        },
        case("s6-fdholder-transferdump", &["SOCK", "SOCK"]),
    ];
    compare(&refused, Impl::Ours, true);
    compare(&refused, Impl::Reference, true);
}

#[test]
fn compat_deliberate_differences() {
    if !have_reference() {
        return;
    }
    let d = Daemon::start(Impl::Ours);
    let name = "s6-fdholder-delete";
    // delete: the reference names the socket where it means the id.
    let ours = run(Impl::Ours, name, &[&d.sock, &"nosuch"]);
    let theirs = run(Impl::Reference, name, &[&d.sock, &"nosuch"]);
    assert_eq!(
        ces(&ours),
        (
            1,
            String::new(),
            fatal(
                name,
                "unable to delete fd for id nosuch: No such file or directory"
            )
        )
    );
    assert_eq!(
        ces(&theirs),
        (
            1,
            String::new(),
            fatal(
                name,
                &format!(
                    "unable to delete fd for id {}: No such file or directory",
                    d.sock.display()
                )
            )
        )
    );
    // transferdump, destination refuses: ours 2 as documented, the
    // reference's code 1; same message.
    let f = file_with(&d.dir, "f", b"");
    d.client().store(f.as_fd(), b"one", None, None).unwrap();
    let (n, _t) = no_setdump(Impl::Ours);
    let name = "s6-fdholder-transferdump";
    let ours = run(Impl::Ours, name, &[&d.sock, &n.sock]);
    let theirs = run(Impl::Reference, name, &[&d.sock, &n.sock]);
    let msg = fatal(name, "unable to set dump: Operation not permitted");
    assert_eq!(ces(&ours), (2, String::new(), msg.clone()));
    assert_eq!(ces(&theirs), (1, String::new(), msg));
    // An empty id: refused before sending (ours), or sent and the
    // connection dropped (the reference). Both exit 1.
    for (name, rest) in [
        ("s6-fdholder-store", &[][..]),
        ("s6-fdholder-retrieve", &["true"][..]),
        ("s6-fdholder-delete", &[][..]),
    ] {
        let mut c = cmd(Impl::Ours, name);
        c.arg(&d.sock).arg("").args(rest);
        let ours = run_cmd(&mut c);
        let mut c = cmd(Impl::Reference, name);
        c.arg(&d.sock).arg("").args(rest);
        let theirs = run_cmd(&mut c);
        assert_eq!((ours.code, theirs.code), (1, 1), "{name}");
        assert!(ours.stderr.ends_with(": Invalid argument\n"), "{ours:?}");
        assert!(theirs.stderr.ends_with(": Broken pipe\n"), "{theirs:?}");
    }
    // The daemon survived all that.
    assert_eq!(list_of(&d), vec![b"one".to_vec()]);
}

#[test]
fn compat_list_odd_ids() {
    if !have_reference() {
        return;
    }
    for daemon in [Impl::Ours, Impl::Reference] {
        let d = Daemon::start(daemon);
        let _files = fill_odd(&d);
        let ours = run(Impl::Ours, "s6-fdholder-list", &[&d.sock]);
        let theirs = run(Impl::Reference, "s6-fdholder-list", &[&d.sock]);
        assert_eq!(ours, theirs, "daemon {daemon:?}");
        assert_eq!(ours.code, 0);
        assert_eq!(
            ours.stdout.iter().filter(|&&b| b == b'\n').count(),
            odd_ids().len()
        );
    }
}

#[test]
fn compat_getdump_environment() {
    if !have_reference() {
        return;
    }
    for daemon in [Impl::Ours, Impl::Reference] {
        let d = Daemon::start(daemon);
        let _files = fill_odd(&d);
        // The whole environment the program sees, not only S6_FD*.
        let ours = run(Impl::Ours, "s6-fdholder-getdump", &[&d.sock, &"env", &"-0"]);
        let theirs = run(
            Impl::Reference,
            "s6-fdholder-getdump",
            &[&d.sock, &"env", &"-0"],
        );
        assert_eq!((ours.code, theirs.code), (0, 0));
        assert_eq!((&*ours.stderr, &*theirs.stderr), ("", ""));
        assert_eq!(
            env0(&ours.stdout),
            env0(&theirs.stdout),
            "daemon {daemon:?}"
        );
        let n = odd_ids().len();
        let env = s6_env(&ours.stdout);
        assert_eq!(env.len(), 1 + 2 * n + n / 2, "finite limits only");
        // And through a shell, as a script would use it.
        // (bash: dash would drop `S6_FD#`.)
        let script = "env | grep -a '^S6_FD' | sort";
        let ours = run(
            Impl::Ours,
            "s6-fdholder-getdump",
            &[&d.sock, &"bash", &"-c", &script],
        );
        let theirs = run(
            Impl::Reference,
            "s6-fdholder-getdump",
            &[&d.sock, &"bash", &"-c", &script],
        );
        assert_eq!(ours, theirs);
        assert!(String::from_utf8_lossy(&ours.stdout).contains(&format!("S6_FD#={n}\n")));
    }
}

#[test]
fn compat_getdump_setdump_chain() {
    if !have_reference() {
        return;
    }
    for (g, s) in [
        (Impl::Ours, Impl::Ours),
        (Impl::Reference, Impl::Reference),
        (Impl::Ours, Impl::Reference),
        (Impl::Reference, Impl::Ours),
    ] {
        let a = Daemon::start(Impl::Ours);
        let _files = fill_odd(&a);
        for via_bash in [false, true] {
            let b = Daemon::start(Impl::Ours);
            let o = getdump_setdump(g, s, &a.sock, &b.sock, via_bash);
            assert_eq!(ces(&o), (0, String::new(), String::new()), "{g:?} {s:?}");
            same_dump(&a, &b);
        }
    }
}

#[test]
fn timeouts_against_a_silent_listener() {
    // A socket that accepts connections (the kernel's backlog) and never
    // answers: `-t` is what ends the wait. Compared with the reference
    // when it is installed.
    let t = TempDir::new("cli-silent");
    let silent = t.join("silent");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let d = Daemon::start(Impl::Ours);
    let f = file_with(&d.dir, "f", b"");
    d.client().store(f.as_fd(), b"one", None, None).unwrap();
    let timed_out = |what: &str| format!("unable to {what}: Connection timed out");
    let cases: Vec<(&str, Vec<&dyn AsRef<std::ffi::OsStr>>, String)> = vec![
        (
            "s6-fdholder-store",
            vec![&"-t", &"50", &silent, &"id"],
            timed_out("store fd"),
        ),
        (
            "s6-fdholder-retrieve",
            vec![&"-Dt50", &silent, &"id", &"true"],
            timed_out("retrieve fd for id id"),
        ),
        (
            "s6-fdholder-list",
            vec![&"-t", &"50", &silent],
            timed_out("get fd list"),
        ),
        (
            "s6-fdholder-getdump",
            vec![&"-t", &"50", &silent, &"true"],
            timed_out("get dump"),
        ),
        (
            "s6-fdholder-transferdump",
            vec![&"-t", &"50:", &silent, &d.sock],
            timed_out("get dump"),
        ),
    ];
    for (name, args, msg) in &cases {
        let ours = run(Impl::Ours, name, args);
        assert_eq!(ces(&ours), (1, String::new(), fatal(name, msg)), "{name}");
        if common::reference(name).is_some() {
            assert_eq!(ours, run(Impl::Reference, name, args), "{name}");
        }
    }
    // delete: ours only, the reference names the socket (docs/protocol.md#known-defects-of-the-reference).
    let o = run(
        Impl::Ours,
        "s6-fdholder-delete",
        &[&"-t", &"50", &silent, &"id"],
    );
    assert_eq!(
        ces(&o),
        (
            1,
            String::new(),
            fatal("s6-fdholder-delete", &timed_out("delete fd for id id"))
        )
    );
    // setdump times out waiting for the answer to its request.
    let mut c = cmd(Impl::Ours, "s6-fdholder-setdump");
    c.args(["-t", "50"])
        .arg(&silent)
        .envs([("S6_FD#", "1"), ("S6_FD_0", "0"), ("S6_FDID_0", "x")]);
    assert_eq!(
        ces(&run_cmd(&mut c)),
        (
            1,
            String::new(),
            fatal("s6-fdholder-setdump", &timed_out("set dump"))
        )
    );
    // The destination side of transferdump: 2 (the reference: 1).
    let o = run(
        Impl::Ours,
        "s6-fdholder-transferdump",
        &[&"-t", &":50", &d.sock, &silent],
    );
    assert_eq!(
        ces(&o),
        (
            2,
            String::new(),
            fatal("s6-fdholder-transferdump", &timed_out("set dump"))
        )
    );
}
