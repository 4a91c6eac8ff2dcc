//! The load proof: `http_service` restarted N times under load, with its
//! listener in our holder (`s6-fdholderd`) and then without one (`-`: it
//! binds the address itself at each start), counting failed requests and
//! measuring latency in steady state and during the restarts.
//!
//! - The holder is the suite's multicall binary `fdholder`: `FDHOLDER_BIN`
//!   when set, else `fdholder` in the directory of this cargo profile
//!   (`target/release/fdholder` for `cargo test --release`), which
//!   `cargo build --release -p fdholder-suite` makes. It is installed
//!   (`fdholder --install`) in a temporary directory, and `s6-fdholderd`
//!   started as the suite's tests start it: a Unix listener bound here,
//!   passed as its stdin, `-1` readiness, a rules directory giving our uid
//!   every right.
//! - The service is this package's `http_service` binary (the example's
//!   source, see `src/main.rs`).
//! - Load: 2 threads each making one request per new connection, and 2
//!   threads on keep-alive connections, plain std `TcpStream` HTTP/1.1.
//!   A failed request is a refused or reset connection, a time-out, a
//!   truncated answer or a status other than 200. One case is retried
//!   instead, as HTTP/1.1 clients do (RFC 9112 §9.3.1): a request on a
//!   reused keep-alive connection that the server closed before any byte
//!   of an answer (an idle connection closed by the graceful shutdown just
//!   as the request was sent); those are counted apart ("retried").
//! - Restarts: SIGTERM, wait for the exit (it must be 0), start the next
//!   one, wait for its "serving" line, serve for `FDHOLDER_HTTP_INTERVAL_MS`
//!   (default 100 ms); `FDHOLDER_HTTP_RESTARTS` times (default 20), after
//!   `1 s` of steady state.
//!
//! The table is written to stderr directly, so that it shows without
//! `--nocapture`. No timing is asserted; the only assertion on the figures
//! is 0 failed requests with the holder.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on every wait for a process (readiness, exit).
const WAIT: Duration = Duration::from_secs(10);
/// Bound on every client connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Steady state before the restarts.
const STEADY: Duration = Duration::from_secs(1);
/// Load threads of each kind.
const THREADS: usize = 2;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "fdholder-http-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let p = PathBuf::from(p.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed and reaped when dropped.
struct Proc {
    child: Child,
    /// Its stdout's lines.
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next line of its stdout, within [`WAIT`].
    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no line from pid {}: {e}", self.child.id()))
    }

    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.child.id() as i32).unwrap()
    }

    /// SIGTERM, then its exit status within [`WAIT`].
    fn terminate(&mut self) -> ExitStatus {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::TERM).unwrap();
        let end = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "pid {} did not exit", self.child.id());
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The suite's multicall binary (see the module's documentation).
fn fdholder_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FDHOLDER_BIN") {
        return PathBuf::from(p);
    }
    // This test is <target>/<profile>/deps/restarts-HASH.
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("fdholder");
    assert!(
        p.exists(),
        "{} is missing: build the suite first (cargo build --release -p fdholder-suite, \
         in this cargo profile) or set FDHOLDER_BIN",
        p.display()
    );
    p
}

/// Our holder, running on `dir/s`.
fn start_holder(dir: &Path) -> (Proc, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let out = Command::new(fdholder_bin())
        .arg("--install")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(out.status.success(), "fdholder --install: {out:?}");
    let uid = rustix::process::geteuid().as_raw();
    let rule = dir.join(format!("rules/uid/{uid}"));
    std::fs::create_dir_all(rule.join("env")).unwrap();
    std::fs::write(rule.join("allow"), "").unwrap();
    for v in [
        "S6_FDHOLDER_STORE_REGEX",
        "S6_FDHOLDER_RETRIEVE_REGEX",
        "S6_FDHOLDER_LIST",
        "S6_FDHOLDER_GETDUMP",
        "S6_FDHOLDER_SETDUMP",
    ] {
        std::fs::write(rule.join("env").join(v), "\n").unwrap();
    }
    let sock = dir.join("s");
    let listener = UnixListener::bind(&sock).unwrap();
    let daemon = Proc::spawn(
        Command::new(bin.join("s6-fdholderd"))
            .arg("-1")
            .arg("-i")
            .arg(dir.join("rules"))
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stderr(std::fs::File::create(dir.join("holder.stderr")).unwrap()),
    );
    assert_eq!(daemon.line(), "", "the holder did not notify readiness");
    (daemon, sock)
}

/// Starts the service and waits until it serves.
fn start_service(holder: &str, addr: SocketAddr, stderr: &Path) -> Proc {
    let p = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_http_service"))
            .arg(holder)
            .arg(addr.to_string())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(stderr)
                    .unwrap(),
            ),
    );
    let line = p.line();
    assert!(line.contains(" serving on "), "unexpected: {line}");
    p
}

/// How one request went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Ok after a retry on a fresh connection (stale keep-alive).
    Retried,
    Refused,
    Reset,
    TimedOut,
    /// Truncated, malformed, or a status other than 200.
    Bad,
}

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Outcome::Reset,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::TimedOut,
        _ => Outcome::Bad,
    }
}

/// One request's record: when it started (from the run's start), how long
/// it took, how it went.
#[derive(Clone, Copy)]
struct Sample {
    start: Duration,
    took: Duration,
    outcome: Outcome,
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What reading an answer found.
enum Read1 {
    /// 200 and a body starting with a pid; whether the server will close.
    Ok { close: bool },
    /// Closed before any byte of an answer.
    Nothing,
}

/// Reads one answer from `r`.
fn read_answer(r: &mut BufReader<TcpStream>) -> io::Result<Read1> {
    let bad = |what: &str| io::Error::other(what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(Read1::Nothing);
    }
    if !line.starts_with("HTTP/1.1 200 ") {
        return Err(bad(&format!("status line {line:?}")));
    }
    let mut len = None;
    let mut close = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("truncated headers"));
        }
        let h = line.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if h == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; len.ok_or_else(|| bad("no content-length"))?];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad("truncated body"),
        _ => e,
    })?;
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || body.get(digits) != Some(&b'\n') {
        return Err(bad("body is not a pid"));
    }
    Ok(Read1::Ok { close })
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// One request on a new connection.
fn fresh_request(addr: SocketAddr) -> Outcome {
    let go = || -> io::Result<Outcome> {
        let mut s = connect(addr)?;
        s.write_all(REQUEST_CLOSE)?;
        match read_answer(&mut BufReader::new(s))? {
            Read1::Ok { .. } => Ok(Outcome::Ok),
            // A fresh connection closed with no answer: the request is lost.
            Read1::Nothing => Ok(Outcome::Reset),
        }
    };
    go().unwrap_or_else(|e| classify(&e))
}

/// Requests on one keep-alive connection, reconnecting when the server
/// closes it.
struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    fn request(&mut self) -> Outcome {
        let reused = self.conn.is_some();
        match self.try_once() {
            Ok(Some(o)) => o,
            // Closed before any answer on a reused connection: retry once.
            Ok(None) | Err(_) if reused => {
                self.conn = None;
                match self.try_once() {
                    Ok(Some(Outcome::Ok)) => Outcome::Retried,
                    Ok(Some(o)) => o,
                    Ok(None) => Outcome::Reset,
                    Err(e) => classify(&e),
                }
            }
            Ok(None) => Outcome::Reset,
            Err(e) => classify(&e),
        }
    }

    /// `None`: the connection closed before any byte of an answer.
    fn try_once(&mut self) -> io::Result<Option<Outcome>> {
        if self.conn.is_none() {
            self.conn = Some(BufReader::new(connect(self.addr)?));
        }
        let r = self.conn.as_mut().unwrap();
        let got = r.get_mut().write_all(REQUEST).and_then(|()| read_answer(r));
        match got {
            Ok(Read1::Ok { close }) => {
                if close {
                    self.conn = None;
                }
                Ok(Some(Outcome::Ok))
            }
            Ok(Read1::Nothing) => {
                self.conn = None;
                Ok(None)
            }
            Err(e) => {
                self.conn = None;
                match e.kind() {
                    // Reset before an answer (the close found our request
                    // unread): nothing was processed.
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

/// A free port on 127.0.0.1 (bound then released).
fn free_addr() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One run's results.
struct Run {
    label: &'static str,
    fresh: Vec<Sample>,
    keepalive: Vec<Sample>,
    /// Restart phase, from the run's start.
    restarts: (Duration, Duration),
    /// SIGTERM to the next instance's "serving" line, each restart.
    gaps: Vec<Duration>,
}

/// Runs the load with `restarts` restarts; `holder` is the holder's socket
/// or `-`.
fn run(label: &'static str, holder: &str, restarts: u64, dir: &Path) -> Run {
    let addr = free_addr();
    let interval = Duration::from_millis(env_num("FDHOLDER_HTTP_INTERVAL_MS", 100));
    let stderr = dir.join(format!("service-{label}.stderr"));
    let mut service = start_service(holder, addr, &stderr);
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let fresh = Arc::new(Mutex::new(Vec::new()));
    let keepalive = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..2 * THREADS {
        let stop = stop.clone();
        let out = if i < THREADS { &fresh } else { &keepalive }.clone();
        threads.push(thread::spawn(move || {
            let mut ka = KeepAlive { addr, conn: None };
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let outcome = if i < THREADS {
                    fresh_request(addr)
                } else {
                    ka.request()
                };
                mine.push(Sample {
                    start: start - t0,
                    took: start.elapsed(),
                    outcome,
                });
                if !matches!(outcome, Outcome::Ok | Outcome::Retried) {
                    // Do not spin on refusals.
                    thread::sleep(Duration::from_millis(1));
                }
            }
            out.lock().unwrap().extend(mine);
        }));
    }
    thread::sleep(STEADY);
    let from = t0.elapsed();
    let mut gaps = Vec::new();
    for _ in 0..restarts {
        let t = Instant::now();
        let st = service.terminate();
        assert!(st.success(), "http_service exited with {st}");
        service = start_service(holder, addr, &stderr);
        gaps.push(t.elapsed());
        thread::sleep(interval);
    }
    let to = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let st = service.terminate();
    assert!(st.success(), "http_service exited with {st}");
    let take = |m: Arc<Mutex<Vec<Sample>>>| std::mem::take(&mut *m.lock().unwrap());
    Run {
        label,
        fresh: take(fresh),
        keepalive: take(keepalive),
        restarts: (from, to),
        gaps,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Table rows for one run: one per client kind and phase. Returns the
/// failed requests.
fn report(r: &Run, out: &mut String) -> usize {
    let mut failed = 0;
    for (kind, samples) in [("new conn", &r.fresh), ("keep-alive", &r.keepalive)] {
        for (phase, during) in [("steady", false), ("restarts", true)] {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| (s.start >= r.restarts.0 && s.start < r.restarts.1) == during)
                .filter(|s| during || s.start < r.restarts.0)
                .collect();
            let count = |o: Outcome| mine.iter().filter(|s| s.outcome == o).count();
            let f = mine.len() - count(Outcome::Ok) - count(Outcome::Retried);
            failed += f;
            let mut lat: Vec<Duration> = mine
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Ok | Outcome::Retried))
                .map(|s| s.took)
                .collect();
            lat.sort();
            out.push_str(&format!(
                "| {} | {kind} | {phase} | {} | {f} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.label,
                mine.len(),
                count(Outcome::Refused),
                count(Outcome::Reset),
                count(Outcome::TimedOut) + count(Outcome::Bad),
                count(Outcome::Retried),
                ms(pct(&lat, 0.50)),
                ms(pct(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or_default()),
            ));
        }
    }
    failed
}

#[test]
fn restarts_under_load() {
    let n = env_num("FDHOLDER_HTTP_RESTARTS", 20);
    let dir = TempDir::new("restarts");
    let (mut holder, sock) = start_holder(&dir.0);
    let with = run("holder", sock.to_str().unwrap(), n, &dir.0);
    // Exit code 1: it still held a descriptor (the listener), as it should.
    let st = holder.terminate();
    assert!(
        matches!(st.code(), Some(0 | 1)),
        "the holder exited with {st}"
    );
    let without = run("no holder", "-", n, &dir.0);

    let mut table = format!(
        "\nhttp_service, {n} restarts under load ({THREADS} new-connection and {THREADS} \
         keep-alive client threads); latency in ms of the requests that succeeded\n\n\
         | run | client | phase | requests | failed | refused | reset | other | retried | p50 | p99 | max |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let failed_with = report(&with, &mut table);
    let failed_without = report(&without, &mut table);
    for r in [&with, &without] {
        let mut g = r.gaps.clone();
        g.sort();
        table.push_str(&format!(
            "\n{}: SIGTERM to the next instance serving: median {} ms, max {} ms; \
             restart phase {:.1} s",
            r.label,
            ms(pct(&g, 0.5)),
            ms(g.last().copied().unwrap_or_default()),
            (r.restarts.1 - r.restarts.0).as_secs_f64()
        ));
    }
    table.push_str(&format!(
        "\nfailed requests: {failed_with} with the holder, {failed_without} without\n"
    ));
    // Directly to stderr: shown without --nocapture.
    let _ = io::stderr().write_all(table.as_bytes());
    assert_eq!(
        failed_with,
        0,
        "requests failed with the holder; service stderr in {}",
        dir.0.display()
    );
}
