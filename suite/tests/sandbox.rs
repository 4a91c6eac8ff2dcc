//! The daemon's sandbox (issue 12): once started, `s6-fdholderd` runs
//! under no-new-privs, a seccomp allowlist and Landlock, unless `-S`.
//!
//! - The kernel's view of a started daemon (`/proc/PID/status`).
//! - The very sandbox function the daemon calls, applied in a child
//!   process of this test (this test binary re-run as `sandboxed_child`),
//!   which then tries what the daemon must never do and reports each
//!   errno: proof that the real filter and ruleset refuse them, with no
//!   hook in the shipped daemon.
//! - The daemon keeps serving when its rules are replaced by a rename
//!   (a rules directory; a cdb, then SIGHUP): Landlock covers the rules'
//!   path, not the inode it had at start.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Impl, Opts, tmpdir};
use fdholder_suite::daemon::RulesConfig;

fn status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
}

#[test]
fn started_daemon_runs_under_seccomp_and_no_new_privs() {
    let d = Daemon::start(Impl::Ours);
    let st = status(d.child.id());
    assert_eq!(field(&st, "Seccomp"), Some("2"), "{st}");
    assert_eq!(field(&st, "NoNewPrivs"), Some("1"), "{st}");
    assert_eq!(field(&st, "Seccomp_filters"), Some("1"), "{st}");
    // Landlock is there on this kernel: nothing to warn about.
    assert!(!d.stderr().contains("sandbox"), "{}", d.stderr());
    // And it still serves: store, list, retrieve.
    use std::os::fd::AsFd;
    let mut c = d.client();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    c.store(r.as_fd(), b"unix:/x", None, None).unwrap();
    assert_eq!(c.list(None).unwrap(), vec![b"unix:/x".to_vec()]);
    c.retrieve_delete(b"unix:/x", None).unwrap();
    drop(c);
    assert_eq!(d.terminate(), Some(0));
}

#[test]
fn option_s_turns_the_sandbox_off() {
    let d = Daemon::with_args(Impl::Ours, &["-S"]);
    let st = status(d.child.id());
    assert_eq!(field(&st, "Seccomp"), Some("0"), "{st}");
    assert_eq!(field(&st, "NoNewPrivs"), Some("0"), "{st}");
}

#[test]
fn s6_fdholder_daemon_passes_option_s_on() {
    let dir = tmpdir("sandbox-daemon");
    let rules = common::full_rules(dir.path());
    let sock = dir.join("s");
    for (extra, want) in [(None, "2"), (Some("-S"), "0")] {
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(common::ours("s6-fdholder-daemon"));
        cmd.arg("-1").args(extra).arg("-i").arg(&rules).arg(&sock);
        cmd.stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut line = [0u8; 1];
        std::io::Read::read_exact(&mut out, &mut line).unwrap();
        let st = status(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(field(&st, "Seccomp"), Some(want), "{extra:?}: {st}");
    }
}

/// What the sandboxed child reports: `name=result` lines.
fn outcomes(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        _ => format!("{e}"),
    }
}

fn report<T>(name: &str, r: std::io::Result<T>) {
    match r {
        Ok(_) => println!("{name}=ok"),
        Err(e) => println!("{name}={}", errno_name(&e)),
    }
}

/// The child's side of `forbidden_calls_are_refused` (`SANDBOX_CHILD`
/// names the rules directory): applies the daemon's sandbox to itself (to
/// this thread: the filter and the domain are per thread) and tries
/// things, then exits.
fn sandboxed_child(rules: PathBuf) -> ! {
    let outside = std::env::var_os("SANDBOX_OUTSIDE").unwrap();
    let short = fdholder_suite::sandbox::confine(&RulesConfig::Dir(rules.clone()), None)
        .unwrap_or_else(|f| panic!("{}: {}", f.step, f.err));
    // (A line of its own: the harness has printed "test NAME ... ".)
    println!("\nshortfalls={short:?}");
    // Reading the rules, and their replacement's path: allowed.
    report(
        "read_rule",
        std::fs::read_dir(rules.join("uid")).map(|d| d.count()),
    );
    report(
        "read_sibling",
        std::fs::File::open(rules.parent().unwrap().join("sibling")),
    );
    // Reading outside the rules' directory: Landlock says no.
    report("read_outside", std::fs::File::open(&outside));
    report("read_etc", std::fs::File::open("/etc/passwd"));
    // Writing, creating, truncating: the seccomp filter says no (an open
    // that is not read-only), whatever the path.
    report(
        "write_inside",
        std::fs::OpenOptions::new()
            .append(true)
            .open(rules.parent().unwrap().join("sibling")),
    );
    report("create_inside", std::fs::File::create(rules.join("new")));
    report(
        "create_tmp",
        std::fs::File::create("/tmp/fdholder-sandbox-x"),
    );
    // Other calls the daemon never makes once started.
    report(
        "socket",
        rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .map_err(std::io::Error::from),
    );
    report(
        "unlink",
        rustix::fs::unlink(rules.parent().unwrap().join("sibling")).map_err(std::io::Error::from),
    );
    report("spawn", Command::new("/bin/true").spawn());
    // exec replaces this process only if it succeeds.
    println!("exec={}", errno_name(&Command::new("/bin/true").exec()));
    std::process::exit(0);
}

#[test]
fn forbidden_calls_are_refused() {
    if let Some(rules) = std::env::var_os("SANDBOX_CHILD") {
        sandboxed_child(rules.into());
    }
    let dir = tmpdir("sandbox-child");
    let rules = common::full_rules(dir.path());
    std::fs::write(dir.join("sibling"), "x").unwrap();
    let other = tmpdir("sandbox-outside");
    let outside = other.join("secret");
    std::fs::write(&outside, "x").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "forbidden_calls_are_refused",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SANDBOX_CHILD", &rules)
        .env("SANDBOX_OUTSIDE", &outside)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let got = outcomes(&text);
    let want = [
        ("shortfalls", "[]"),
        ("read_rule", "ok"),
        ("read_sibling", "ok"),
        ("read_outside", "EACCES"),
        ("read_etc", "EACCES"),
        ("write_inside", "EPERM"),
        ("create_inside", "EPERM"),
        ("create_tmp", "EPERM"),
        ("socket", "EPERM"),
        ("unlink", "EPERM"),
        ("spawn", "EPERM"),
        // execve is allowed for the upgrade; Landlock allows it only
        // beneath the program's directories (here, the test's and the
        // libraries'), not /bin.
        ("exec", "EACCES"),
    ];
    for (k, v) in want {
        assert_eq!(
            got.get(k).map(String::as_str),
            Some(v),
            "{k}; child said:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Nothing was created.
    assert!(!rules.join("new").exists());
    assert!(dir.join("sibling").exists());
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn can_list(sock: &Path) -> bool {
    fdholder::Client::connect(sock, Some(Instant::now() + Duration::from_secs(5)))
        .and_then(|mut c| c.list(None))
        .is_ok()
}

#[test]
fn rules_dir_replaced_by_rename_still_read() {
    let dir = tmpdir("sandbox-rename");
    let uid = rustix::process::geteuid().as_raw();
    let rules = dir.join("rules");
    common::deny(&rules, &format!("uid/{uid}"));
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            rules: Some(("-i", rules.clone())),
            ..Opts::default()
        },
    );
    assert!(!can_list(&d.sock), "denied at first");
    // The old directory moved away, the new one renamed into its place.
    let next = common::full_rules(&dir.join("next"));
    std::fs::rename(&rules, dir.join("old")).unwrap();
    std::fs::rename(&next, &rules).unwrap();
    wait_for("the new rules", || can_list(&d.sock));
    // And once more, the old inode gone for good.
    let _ = std::fs::remove_dir_all(dir.join("old"));
    assert!(can_list(&d.sock));
    assert_eq!(field(&status(d.child.id()), "Seccomp"), Some("2"));
}

#[test]
fn rules_cdb_replaced_by_rename_then_sighup_still_read() {
    let dir = tmpdir("sandbox-cdb");
    let uid = rustix::process::geteuid().as_raw();
    let denying = dir.join("deny-src");
    common::deny(&denying, &format!("uid/{uid}"));
    let allowing = common::full_rules(&dir.join("allow-src"));
    let make = |src: &Path, out: &Path| {
        let o = Command::new(common::ours("s6-accessrules-cdb-from-fs"))
            .arg(out)
            .arg(src)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    };
    let cdb = dir.join("rules.cdb");
    make(&denying, &cdb);
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            rules: Some(("-x", cdb.clone())),
            ..Opts::default()
        },
    );
    assert!(!can_list(&d.sock), "denied at first");
    // s6-accessrules-cdb-from-fs writes a new file and renames it over.
    make(&allowing, &cdb);
    d.signal(rustix::process::Signal::HUP);
    wait_for("the new cdb", || can_list(&d.sock));
    assert!(!d.stderr().contains("unable to reload"), "{}", d.stderr());
    assert_eq!(field(&status(d.child.id()), "Seccomp"), Some("2"));
}

/// A seccomp filter for the wrapper of `without_landlock_the_daemon_warns_and_serves`:
/// `landlock_create_ruleset` (444 on x86_64 and aarch64) fails with ENOSYS,
/// as on a kernel without Landlock; everything else is allowed.
static NO_LANDLOCK: [libc::sock_filter; 4] = [
    // A = syscall number
    libc::sock_filter {
        code: 0x20,
        jt: 0,
        jf: 0,
        k: 0,
    },
    // if A == 444: next, else skip one
    libc::sock_filter {
        code: 0x15,
        jt: 0,
        jf: 1,
        k: 444,
    },
    // SECCOMP_RET_ERRNO | ENOSYS
    libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x0005_0000 | libc::ENOSYS as u32,
    },
    // SECCOMP_RET_ALLOW
    libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    },
];

#[test]
fn without_landlock_the_daemon_warns_and_serves() {
    // The wrapper's side: this test binary re-run, it hides Landlock from
    // itself and execs the daemon (filters are inherited across exec).
    if let Some(daemon) = std::env::var_os("SANDBOX_NO_LANDLOCK_EXEC") {
        fdholder_suite::sys::set_no_new_privs().unwrap();
        fdholder_suite::sys::install_seccomp_filter(&NO_LANDLOCK).unwrap();
        let rules = std::env::var_os("SANDBOX_RULES").unwrap();
        let e = Command::new(daemon).arg("-1").arg("-i").arg(rules).exec();
        panic!("exec: {e}");
    }
    let dir = tmpdir("sandbox-nolandlock");
    let rules = common::full_rules(dir.path());
    let sock = dir.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_landlock_the_daemon_warns_and_serves",
            "--test-threads=1",
        ])
        .env("SANDBOX_NO_LANDLOCK_EXEC", common::ours("s6-fdholderd"))
        .env("SANDBOX_RULES", &rules)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            listener,
        )))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    // What the test harness printed before the exec, then the daemon's
    // readiness newline, then EOF: the daemon closed its stdout.
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let st = status(child.id());
    let served = can_list(&sock);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.ends_with(b" ... \n"),
        "not ready: {:?}; stderr: {}",
        String::from_utf8_lossy(&out),
        stderr()
    );
    assert_eq!(field(&st, "Name"), Some("s6-fdholderd"), "{st}");
    // The daemon's own filter on top of the wrapper's.
    assert_eq!(field(&st, "Seccomp"), Some("2"), "{st}");
    assert_eq!(field(&st, "Seccomp_filters"), Some("2"), "{st}");
    assert_eq!(
        stderr(),
        "s6-fdholderd: warning: sandbox: no Landlock in this kernel: file access not confined\n"
    );
    assert!(served, "stderr: {}", stderr());
}
