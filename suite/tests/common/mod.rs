//! Shared test harness: temporary directories, rules, real daemons (ours
//! or the reference's) listening on sockets in those directories, and
//! helpers to run programs and compare their outcomes.
//!
//! The reference implementation is Debian's `s6` package. When it is
//! missing, tests that need it print a loud message and return; in CI
//! (`CI` set) its absence is a failure, since `.ci/run` installs it.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Which implementation of a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// Ours, built by cargo for this test run.
    Ours,
    /// Debian's `s6` package, in /usr/bin.
    Reference,
}

#[path = "../ours/mod.rs"]
mod ours_bin;
#[allow(unused_imports)]
pub use ours_bin::{multicall, ours};

/// Path of a program of the given implementation.
pub fn prog(which: Impl, name: &str) -> PathBuf {
    match which {
        Impl::Ours => ours(name),
        Impl::Reference => Path::new("/usr/bin").join(name),
    }
}

/// Whether the reference package is installed. Prints a loud message when
/// it is not; panics in CI, where it must be.
pub fn have_reference() -> bool {
    if Path::new("/usr/bin/s6-fdholderd").exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("the reference s6 package is missing in CI: .ci/run must install it");
    }
    eprintln!(
        "\n*** SKIPPED: the reference s6 package is not installed (apt-get install s6) ***\n"
    );
    false
}

/// A fresh, empty directory for one test, removed when dropped.
pub fn tmpdir(tag: &str) -> TempDir {
    TempDir::new(&format!("test-{tag}"))
}

/// All five rights, as environment files, with both regexes matching all.
pub const ALL_RIGHTS: &[(&str, &str)] = &[
    ("S6_FDHOLDER_STORE_REGEX", ""),
    ("S6_FDHOLDER_RETRIEVE_REGEX", ""),
    ("S6_FDHOLDER_LIST", ""),
    ("S6_FDHOLDER_GETDUMP", ""),
    ("S6_FDHOLDER_SETDUMP", ""),
];

/// Writes a rule `dir/key` that allows with the given environment (each
/// value written as one line; `None` writes an empty file, which unsets).
pub fn allow(dir: &Path, key: &str, env: &[(&str, Option<&str>)]) {
    let k = dir.join(key);
    let _ = std::fs::remove_dir_all(&k);
    std::fs::create_dir_all(k.join("env")).unwrap();
    std::fs::write(k.join("allow"), "").unwrap();
    for (name, value) in env {
        let content = value.map(|v| format!("{v}\n")).unwrap_or_default();
        std::fs::write(k.join("env").join(name), content).unwrap();
    }
}

/// Writes a rule `dir/key` that denies.
pub fn deny(dir: &Path, key: &str) {
    let k = dir.join(key);
    let _ = std::fs::remove_dir_all(&k);
    std::fs::create_dir_all(&k).unwrap();
    std::fs::write(k.join("deny"), "").unwrap();
}

/// A rules directory giving this test's uid every right.
pub fn full_rules(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    let env: Vec<(&str, Option<&str>)> = ALL_RIGHTS.iter().map(|(k, v)| (*k, Some(*v))).collect();
    allow(
        &rules,
        &format!("uid/{}", rustix::process::geteuid().as_raw()),
        &env,
    );
    rules
}

/// A rules directory `dir/name` giving this test's uid exactly the rights
/// in `env` (as [`allow`] writes them): for daemons with partial rights.
pub fn rules_with(dir: &Path, name: &str, env: &[(&str, Option<&str>)]) -> PathBuf {
    let rules = dir.join(name);
    allow(
        &rules,
        &format!("uid/{}", rustix::process::geteuid().as_raw()),
        env,
    );
    rules
}

/// A running daemon on a socket in a temporary directory.
pub struct Daemon {
    /// The daemon process (s6-fdholderd itself, stdin the listener).
    pub child: Child,
    /// Its socket.
    pub sock: PathBuf,
    /// Its temporary directory.
    pub dir: PathBuf,
    /// Which implementation.
    pub which: Impl,
}

/// How to start a daemon.
pub struct Opts<'a> {
    /// Extra options for s6-fdholderd, before the rules option.
    pub args: &'a [&'a str],
    /// `-i DIR` or `-x FILE` (default: full rights for our uid).
    pub rules: Option<(&'a str, PathBuf)>,
    /// Capture stderr in `dir/stderr` (default: inherit).
    pub stderr_file: bool,
    /// RLIMIT_NOFILE for the daemon (via `bash -c ulimit -n`), which then
    /// starts with only fds 0, 1 and 2.
    pub nofile: Option<u32>,
    /// A command that runs the daemon, its path and arguments appended
    /// (e.g. a shell that opens descriptors first, or enters a chroot);
    /// after the `nofile` set-up when both are given. Empty: none.
    pub wrap: &'a [&'a str],
    /// The daemon's working directory (default: the test's).
    pub cwd: Option<&'a Path>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            args: &[],
            rules: None,
            stderr_file: true,
            nofile: None,
            wrap: &[],
            cwd: None,
        }
    }
}

impl Daemon {
    /// Starts a daemon with full rights for our uid.
    pub fn start(which: Impl) -> Daemon {
        Daemon::start_with(which, Opts::default())
    }

    /// Starts a daemon with extra options and full rights for our uid.
    pub fn with_args(which: Impl, args: &[&str]) -> Daemon {
        Daemon::start_with(
            which,
            Opts {
                args,
                ..Opts::default()
            },
        )
    }

    /// Starts a daemon on the given rules (`-i DIR` or `-x FILE`).
    pub fn with_rules(which: Impl, flag: &str, rules: PathBuf) -> Daemon {
        Daemon::start_with(
            which,
            Opts {
                rules: Some((flag, rules)),
                ..Opts::default()
            },
        )
    }

    /// Starts a daemon and waits for its `-1` readiness notification.
    pub fn start_with(which: Impl, o: Opts<'_>) -> Daemon {
        // The daemon removes its directory when dropped.
        let dir = tmpdir(match which {
            Impl::Ours => "ours",
            Impl::Reference => "ref",
        })
        .into_path();
        let sock = dir.join("s");
        let listener = UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (rflag, rpath) = o.rules.unwrap_or_else(|| ("-i", full_rules(&dir)));
        let daemon = prog(which, "s6-fdholderd");
        // The program to run: the daemon, or the wrapper, which is given
        // the daemon (and from here on is what `daemon` names).
        let (first, then): (PathBuf, Vec<&OsStr>) = match o.wrap.split_first() {
            None => (daemon.clone(), Vec::new()),
            Some((w, rest)) => {
                let mut then: Vec<&OsStr> = rest.iter().map(OsStr::new).collect();
                then.push(daemon.as_os_str());
                (PathBuf::from(w), then)
            }
        };
        let daemon = first;
        let mut cmd = match o.nofile {
            None => Command::new(&daemon),
            Some(n) => {
                // Close whatever the test runner let us inherit, so that
                // the daemon's descriptor budget is exactly what it counts.
                let script = format!(
                    "for f in /proc/$$/fd/*; do n=${{f##*/}}; \
                     [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; done 2>/dev/null; \
                     ulimit -n {n} && exec \"$0\" \"$@\""
                );
                let mut c = Command::new("bash");
                c.arg("-c").arg(script).arg(&daemon);
                c
            }
        };
        cmd.args(then);
        if let Some(cwd) = o.cwd {
            cmd.current_dir(cwd);
        }
        cmd.arg("-1").args(o.args).arg(rflag).arg(&rpath);
        cmd.stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::piped());
        if o.stderr_file {
            cmd.stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Then EOF: the daemon has closed its stdout, its fd count is settled.
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(
            line,
            "\n",
            "daemon did not notify readiness; stderr: {}",
            read_stderr(&dir)
        );
        Daemon {
            child,
            sock,
            dir,
            which,
        }
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_stderr(&self.dir)
    }

    /// Number of descriptors the daemon has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Waits until the daemon's open-fd count equals `n` (it settles
    /// asynchronously after clients go away); returns the last count seen.
    pub fn wait_fds(&self, n: usize) -> usize {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let c = self.open_fds();
            if c == n || Instant::now() > end {
                return c;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Sends SIGTERM and waits for the exit code (None if killed).
    pub fn terminate(mut self) -> Option<i32> {
        self.signal(rustix::process::Signal::TERM);
        let code = wait_timeout(&mut self.child, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
        std::mem::forget(self);
        code
    }

    /// A client connected to this daemon.
    pub fn client(&self) -> fdholder::Client {
        fdholder::Client::connect(&self.sock, Some(Instant::now() + Duration::from_secs(10)))
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_stderr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
}

/// Waits for a child with a timeout; kills it past the timeout.
pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<i32> {
    let end = Instant::now() + t;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {t:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The outcome of running a program: exit code, stdout, stderr.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Outcome {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

/// Runs a command to completion (stdin is /dev/null unless set).
pub fn run_cmd(cmd: &mut Command) -> Outcome {
    let out = cmd.output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Debian's Python, where `python3-systemd` installs (a `python3` earlier
/// in `PATH` may be another one).
pub const PYTHON: &str = "/usr/bin/python3";

/// Whether Debian's `python3-systemd` is there; loud when not, and a
/// failure in CI, whose `.ci/run` installs it.
pub fn have_python_systemd() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import systemd.daemon"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3-systemd is missing in CI: .ci/run must install it");
        }
        loud("python3-systemd is not installed (apt-get install python3-systemd)");
    }
    ok
}

/// Copies the executable `from` to `to` with `cp`, not from this process:
/// a copy written here could be inherited, open for writing, by a child
/// that another test thread forks at that moment, and an exec of the copy
/// would then fail with ETXTBSY until that child execs.
pub fn copy_executable(from: &Path, to: &Path) {
    let st = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// A file to store: a regular file with known content, opened for reading.
pub fn file_with(dir: &Path, name: &str, content: &[u8]) -> std::fs::File {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::File::open(p).unwrap()
}

/// (st_dev, st_ino) of an open descriptor: identifies the open file.
pub fn identity(fd: impl std::os::fd::AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).unwrap();
    (st.st_dev, st.st_ino)
}

/// A fresh directory under the system's temporary directory, removed on
/// drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("fdholder-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path, no longer removed on drop: the caller removes it.
    pub fn into_path(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints a loud line straight to stderr, past the test harness's output
/// capture, so that a skipped check is seen.
pub fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "!!!!! SKIPPED: {msg} !!!!!");
}

/// The reference program `/usr/bin/<name>`, or `None` with a loud message
/// when the `s6` package is not installed (CI installs it).
pub fn reference(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin").join(name);
    if p.exists() {
        Some(p)
    } else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "reference program {} is missing in CI: .ci/run must install it",
                p.display()
            );
        }
        loud(&format!(
            "reference program {} is not installed (apt-get install s6)",
            p.display()
        ));
        None
    }
}

/// Whether we run as root; says loudly when not.
pub fn is_root(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        loud(&format!("{what} needs root"));
        false
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `bin args` in `dir`, stdin from /dev/null, with `env` set and
/// UID, GID and GIDLIST removed unless `env` sets them.
pub fn run<S: AsRef<OsStr>>(bin: &Path, args: &[S], dir: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for v in ["UID", "GID", "GIDLIST"] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
        .into()
}

/// Dump entries for `ids`, all with the same descriptor and no expiry.
pub fn entries_for<'a>(
    ids: &'a [Vec<u8>],
    fd: std::os::fd::BorrowedFd<'a>,
) -> Vec<fdholder::DumpEntryRef<'a>> {
    let limit = fdholder::Tain::infinite_from(fdholder::Tain::now());
    ids.iter()
        .map(|id| fdholder::DumpEntryRef { id, fd, limit })
        .collect()
}
