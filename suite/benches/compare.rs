//! Side-by-side benchmark: our `s6-fdholderd` against the reference
//! (Debian's `s6`, `/usr/bin/s6-fdholderd`), same options, same rules.
//!
//! `cargo bench --bench compare` (full, about 3 minutes) or
//! `cargo bench --bench compare -- --quick`. See `BENCHMARKS.md`.
//!
//! Every load client is built on our client library, for both daemons, so
//! only the daemon differs. Multi-client loads are separate processes (this
//! program re-executed with `--worker`). Each measurement alternates the two
//! daemons (A B A B ...) and the table shows medians.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdholder::proto::{self, Request};
use fdholder::wire::{Receiver, Sender};
use fdholder::{Client, DumpEntryRef, Tain};

#[path = "../tests/ours/mod.rs"]
mod ours;

/// Our daemon: the link `s6-fdholderd` to the multicall binary.
fn ours_exe() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| ours::ours("s6-fdholderd").to_str().unwrap().to_string())
}
const REF: &str = "/usr/bin/s6-fdholderd";
/// Stands for the bench's own floor server ([`floor_daemon`]) in
/// [`Daemon::start`].
const FLOOR: &str = "floor";
/// Width of the text table's first column.
const NAME_WIDTH: usize = 54;
const MAXCONN: &str = "16";
const MAXFDS: &str = "11000";

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

fn devnull() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

// ---------------------------------------------------------------- daemons

struct Daemon {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

/// How a daemon gets its rules.
#[derive(Clone, Copy, PartialEq)]
enum Rules {
    /// `-i rules`: every right, ids matched by the empty regex (all ids).
    Dir,
    /// The same rules in a cdb, `-x rules.cdb`.
    Cdb,
    /// `-i rules`, but store and retrieve rights by the regex `^bench-`.
    DirRegex,
}

impl Daemon {
    /// Starts `prog` on a socket and a rules directory of its own (the
    /// same rules for every daemon: every right for our uid), with
    /// `-i rules`, or `-x rules.cdb`, as `how` says.
    fn start(prog: &str, tag: &str, how: Rules) -> Daemon {
        let dir = std::env::temp_dir().join(format!("fdh-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let regex = if how == Rules::DirRegex {
            "^bench-"
        } else {
            ""
        };
        let rules = rules_dir(&dir, regex);
        let (flag, rules) = if how == Rules::Cdb {
            let file = dir.join("rules.cdb");
            let made =
                Command::new(Path::new(ours_exe()).with_file_name("s6-accessrules-cdb-from-fs"))
                    .arg(&file)
                    .arg(&rules)
                    .status()
                    .unwrap();
            assert!(made.success(), "s6-accessrules-cdb-from-fs failed");
            ("-x", file)
        } else {
            ("-i", rules)
        };
        let sock = dir.join("s");
        let l = UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        l.set_nonblocking(true).unwrap();
        let mut cmd = if prog == FLOOR {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.arg("--floor-daemon");
            c
        } else {
            let mut c = Command::new(prog);
            c.args(["-1", "-c", MAXCONN, "-n", MAXFDS, flag]).arg(rules);
            c
        };
        let mut child = cmd
            .stdin(Stdio::from(OwnedFd::from(l)))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "\n", "{prog} did not start");
        Daemon { child, sock, dir }
    }

    fn client(&self) -> Client {
        Client::connect(&self.sock, deadline()).unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the bench's rules directory in `dir` (every right for our uid,
/// ids for store and retrieve matched by `regex`).
fn rules_dir(dir: &Path, regex: &str) -> PathBuf {
    let d = dir.join("rules");
    let k = d.join(format!("uid/{}", rustix::process::geteuid().as_raw()));
    std::fs::create_dir_all(k.join("env")).unwrap();
    std::fs::write(k.join("allow"), "").unwrap();
    for v in [
        "S6_FDHOLDER_STORE_REGEX",
        "S6_FDHOLDER_RETRIEVE_REGEX",
        "S6_FDHOLDER_LIST",
        "S6_FDHOLDER_GETDUMP",
        "S6_FDHOLDER_SETDUMP",
    ] {
        let value = if v.ends_with("_REGEX") { regex } else { "" };
        std::fs::write(k.join("env").join(v), format!("{value}\n")).unwrap();
    }
    d
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Pins process `pid` (0: this one) to `cpu`, or lets it run on every CPU.
fn pin(pid: u32, cpu: Option<usize>) {
    let mut set = rustix::thread::CpuSet::new();
    match cpu {
        Some(c) => set.set(c),
        None => {
            for c in 0..rustix::thread::CpuSet::MAX_CPU.min(1024) {
                set.set(c);
            }
        }
    }
    let pid = rustix::process::Pid::from_raw(pid as i32);
    let _ = rustix::thread::sched_setaffinity(pid, &set);
}

/// Where a load runs: `Free` leaves placement to the scheduler, `Same`
/// pins the daemon and its client(s) to CPU 0, `Split` pins the daemon to
/// CPU 0 and the client(s) to CPU 1.
#[derive(Clone, Copy)]
enum Place {
    Free,
    Same,
    Split,
}

// ---------------------------------------------------------------- workers

/// Load generator, run as a separate process: prints "ready", waits for a
/// byte on stdin, runs for `millis`, prints "ops nanos".
fn worker(args: &[String]) {
    let (kind, sock, idx, millis) = (
        args[0].as_str(),
        PathBuf::from(&args[1]),
        &args[2],
        args[3].parse::<u64>().unwrap(),
    );
    if let Some(cpu) = args.get(4).and_then(|c| c.parse().ok()) {
        pin(0, Some(cpu));
    }
    let id = format!("bench-{kind}-{idx}");
    let id = id.as_bytes();
    let fd = devnull();
    let mut session = (kind == "session").then(|| Client::connect(&sock, deadline()).unwrap());
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let start = Instant::now();
    let end = start + Duration::from_millis(millis);
    let mut ops = 0u64;
    while Instant::now() < end {
        match &mut session {
            Some(c) => {
                c.store(fd.as_fd(), id, None, None).unwrap();
                drop(c.retrieve(id, None).unwrap());
                c.delete(id, None).unwrap();
            }
            None => {
                Client::connect(&sock, deadline())
                    .unwrap()
                    .store(fd.as_fd(), id, None, None)
                    .unwrap();
                drop(
                    Client::connect(&sock, deadline())
                        .unwrap()
                        .retrieve(id, None)
                        .unwrap(),
                );
                Client::connect(&sock, deadline())
                    .unwrap()
                    .delete(id, None)
                    .unwrap();
            }
        }
        ops += 3;
    }
    println!("{} {}", ops, start.elapsed().as_nanos());
}

/// Runs `n` worker processes of `kind` against `sock` for `millis`;
/// returns the total ops/s.
fn load(kind: &str, d: &Daemon, n: usize, millis: u64, place: Place) -> f64 {
    let sock = &d.sock;
    let (dcpu, ccpu) = match place {
        Place::Free => (None, None),
        Place::Same => (Some(0), Some(0)),
        Place::Split => (Some(0), Some(1)),
    };
    pin(d.pid(), dcpu);
    let r = load_on(kind, sock, n, millis, ccpu);
    pin(d.pid(), None);
    r
}

fn load_on(kind: &str, sock: &Path, n: usize, millis: u64, cpu: Option<usize>) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let mut ws: Vec<(Child, ChildStdin, BufReader<ChildStdout>)> = (0..n)
        .map(|i| {
            let mut c = Command::new(&exe)
                .arg("--worker")
                .arg(kind)
                .arg(sock)
                .arg(i.to_string())
                .arg(millis.to_string())
                .args(cpu.map(|c| c.to_string()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let i = c.stdin.take().unwrap();
            let o = BufReader::new(c.stdout.take().unwrap());
            (c, i, o)
        })
        .collect();
    for (_, _, o) in ws.iter_mut() {
        let mut l = String::new();
        o.read_line(&mut l).unwrap();
        assert_eq!(l, "ready\n");
    }
    for (_, i, _) in ws.iter_mut() {
        i.write_all(b"g\n").unwrap();
    }
    let mut rate = 0.0;
    for (mut c, _, mut o) in ws {
        let mut l = String::new();
        o.read_line(&mut l).unwrap();
        let mut it = l.split_whitespace().map(|x| x.parse::<f64>().unwrap());
        let (ops, ns) = (it.next().unwrap(), it.next().unwrap());
        rate += ops / (ns / 1e9);
        assert!(c.wait().unwrap().success());
    }
    rate
}

/// The fds a floor server holds, by id.
type Held = HashMap<Vec<u8>, Rc<OwnedFd>>;

/// A floor server's answer to the request `payload` (store, retrieve,
/// delete), parsed by the library's parser: it keeps a stored fd by id and
/// sends it back by reference, as the daemons do (no `dup`), with no check
/// of any kind (no rules, no credentials, no limits).
fn floor_answer(
    payload: &[u8],
    mut fds: Vec<OwnedFd>,
    held: &mut Held,
    tx: &mut Sender<Rc<OwnedFd>>,
) {
    match proto::parse_request(payload, fds.len()) {
        Some(Request::Store { id, .. }) => {
            if let Some(fd) = fds.pop() {
                held.insert(id.to_bytes().to_vec(), Rc::new(fd));
            }
            tx.push(vec![0], vec![]);
        }
        Some(Request::Retrieve { id, .. }) => match held.get(id.to_bytes()) {
            Some(fd) => tx.push(vec![0], vec![fd.clone()]),
            None => tx.push(vec![libc_enoent()], vec![]),
        },
        Some(Request::Delete { id }) => {
            held.remove(id.to_bytes());
            tx.push(vec![0], vec![]);
        }
        _ => tx.push(vec![libc_enoent()], vec![]),
    }
}

/// ENOENT, the answer to a retrieve of nothing.
fn libc_enoent() -> u8 {
    rustix::io::Errno::NOENT.raw_os_error() as u8
}

/// The physical limit: the session exchange (store, retrieve, delete) over
/// a socketpair, against a process that answers without any daemon logic.
fn floor_server() {
    let sock: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let mut rx = Receiver::new(1 << 16);
    let mut tx: Sender<Rc<OwnedFd>> = Sender::new();
    let mut held = Held::new();
    loop {
        let (payload, fds) = match rx.take_message().unwrap() {
            Some((p, f)) => (p.to_vec(), f),
            None => {
                let mut pfd = [rustix::event::PollFd::new(
                    &sock,
                    rustix::event::PollFlags::IN,
                )];
                rustix::event::poll(&mut pfd, None).unwrap();
                match rx.fill(sock.as_fd()) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        };
        floor_answer(&payload, fds, &mut held, &mut tx);
        assert!(tx.flush(sock.as_fd()).unwrap());
    }
}

/// The physical limit for several clients: a server on the daemons' kind
/// of socket (listener on stdin, `-1` readiness, epoll, one `recvmsg` per
/// readable client, replies written at once) that answers the session
/// exchange with no daemon logic: no rules, no credentials, no limits; fds
/// held by id in one map for all connections (so that the conn load, which
/// stores on one connection and retrieves on the next, works too), sent
/// back by reference as the daemons do.
fn floor_daemon() {
    use rustix::event::epoll;
    struct Peer {
        sock: OwnedFd,
        rx: Receiver,
        tx: Sender<Rc<OwnedFd>>,
    }
    const LISTENER: u64 = u64::MAX;
    let listener: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )
    .unwrap();
    let mut peers: Vec<Option<Peer>> = Vec::new();
    let mut held = Held::new();
    let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
    println!();
    std::io::stdout().flush().unwrap();
    loop {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("{e}"),
        }
        for ev in events.iter() {
            let key = ev.data.u64();
            if key == LISTENER {
                let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
                while let Ok(sock) = rustix::net::accept_with(&listener, flags) {
                    let slot = peers.iter().position(Option::is_none).unwrap_or_else(|| {
                        peers.push(None);
                        peers.len() - 1
                    });
                    epoll::add(
                        &ep,
                        &sock,
                        epoll::EventData::new_u64(slot as u64),
                        epoll::EventFlags::IN,
                    )
                    .unwrap();
                    peers[slot] = Some(Peer {
                        sock,
                        rx: Receiver::new(1 << 16),
                        tx: Sender::new(),
                    });
                }
                continue;
            }
            let slot = key as usize;
            let Some(p) = peers[slot].as_mut() else {
                continue;
            };
            match p.rx.fill(p.sock.as_fd()) {
                Ok(0) => {
                    // Closing the socket takes it out of the epoll set.
                    peers[slot] = None;
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
            while let Some((payload, fds)) = p.rx.take_message().unwrap() {
                floor_answer(payload, fds, &mut held, &mut p.tx);
            }
            assert!(p.tx.flush(p.sock.as_fd()).unwrap());
        }
    }
}

fn floor(millis: u64) -> f64 {
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::fs::fcntl_setfl(&b, rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut server = Command::new(std::env::current_exe().unwrap())
        .arg("--floor-server")
        .stdin(Stdio::from(b))
        .spawn()
        .unwrap();
    // Same placement as the single-client loads: both on CPU 0.
    pin(server.id(), Some(0));
    pin(0, Some(0));
    let mut c = Client::from_fd(a);
    let fd = devnull();
    let id = b"floor";
    let start = Instant::now();
    let end = start + Duration::from_millis(millis);
    let mut ops = 0u64;
    while Instant::now() < end {
        c.store(fd.as_fd(), id, None, None).unwrap();
        drop(c.retrieve(id, None).unwrap());
        c.delete(id, None).unwrap();
        ops += 3;
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    pin(0, None);
    drop(c);
    server.wait().unwrap();
    rate
}

// ---------------------------------------------------------------- helpers

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ids(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .collect()
}

fn setdump(d: &Daemon, ids: &[Vec<u8>], fd: &OwnedFd) -> Result<Duration, String> {
    let inf = Tain::infinite_from(Tain::now());
    let dump: Vec<DumpEntryRef<'_>> = ids
        .iter()
        .map(|id| DumpEntryRef {
            id,
            fd: fd.as_fd(),
            limit: inf,
        })
        .collect();
    let mut c = d.client();
    let t = Instant::now();
    c.setdump(&dump, deadline()).map_err(|e| e.to_string())?;
    Ok(t.elapsed())
}

fn getdump(d: &Daemon, n: usize) -> Result<Duration, String> {
    let mut c = Client::connect(&d.sock, deadline()).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let dump = c
        .getdump(Some(Instant::now() + Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let el = t.elapsed();
    if dump.len() != n {
        return Err(format!("got {} fds, expected {n}", dump.len()));
    }
    Ok(el)
}

fn clear(d: &Daemon, ids: &[Vec<u8>]) {
    let mut c = d.client();
    for id in ids {
        c.delete(id, deadline()).unwrap();
    }
}

struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, name: &str, ours: String, reference: String, ratio: String) {
        println!("{name:<NAME_WIDTH$} {ours:>14} {reference:>14} {ratio:>8}");
        self.rows.push([name.into(), ours, reference, ratio]);
    }
    fn rate(&mut self, name: &str, (o, r, q): (f64, f64, f64)) {
        self.row(
            name,
            format!("{o:.0}"),
            format!("{r:.0}"),
            format!("{q:.2}"),
        );
    }
    fn time(&mut self, name: &str, o: Result<f64, String>, r: Result<f64, String>) {
        let f = |x: &Result<f64, String>| match x {
            Ok(ms) => format!("{ms:.2}"),
            Err(_) => "FAILED".into(),
        };
        let ratio = match (&o, &r) {
            (Ok(a), Ok(b)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        self.row(name, f(&o), f(&r), ratio);
        for (who, x) in [("ours", &o), ("reference", &r)] {
            if let Err(e) = x {
                println!("    ({who}: {e})");
            }
        }
    }
}

/// Runs `f` on each daemon `rounds` times, alternated (A B, B A, ...).
/// Returns the median of each and the median of the per-round ratios
/// ours/reference (runs of one round are back to back, so the ratio of a
/// round is fair even when the machine's load drifts between rounds).
fn alternate<F: FnMut(&Daemon) -> f64>(
    rounds: usize,
    ours: &Daemon,
    reference: &Daemon,
    f: F,
) -> (f64, f64, f64) {
    let runs = rotate(rounds, [ours, reference], f);
    (
        median_of(&runs, |r| r[0]),
        median_of(&runs, |r| r[1]),
        median_of(&runs, |r| r[0] / r[1]),
    )
}

/// Runs `f` on each of `ds` `rounds` times; each round runs them all back
/// to back, starting one further along each time. Returns each round's
/// results, in the order of `ds`.
fn rotate<const N: usize, F: FnMut(&Daemon) -> f64>(
    rounds: usize,
    ds: [&Daemon; N],
    mut f: F,
) -> Vec<[f64; N]> {
    (0..rounds)
        .map(|i| {
            let mut r = [0.0; N];
            for k in 0..N {
                let j = (i + k) % N;
                r[j] = f(ds[j]);
            }
            r
        })
        .collect()
}

/// The median of `g` over rounds.
fn median_of<const N: usize>(runs: &[[f64; N]], g: impl Fn(&[f64; N]) -> f64) -> f64 {
    median(&mut runs.iter().map(g).collect::<Vec<_>>())
}

/// The floor of a tool pair: the same processes doing nothing, trivial C
/// programs of Debian's (`true` for the store, `env true` for the retrieve
/// that execs `true`): two spawns, three execs. No tool can go below it.
fn floor_pair() -> Duration {
    let t = Instant::now();
    let st = Command::new("/bin/true")
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("/usr/bin/env")
        .arg("/bin/true")
        .status()
        .unwrap();
    assert!(st.success());
    t.elapsed()
}

/// One store + retrieve -D pair of processes; returns its wall time.
fn tool_pair(bin: &Path, sock: &Path, i: usize) -> Duration {
    let id = format!("proc{i}");
    let t = Instant::now();
    let st = Command::new(bin.join("s6-fdholder-store"))
        .arg(sock)
        .arg(&id)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "store failed in {}", bin.display());
    let st = Command::new(bin.join("s6-fdholder-retrieve"))
        .arg("-D")
        .arg(sock)
        .arg(&id)
        .arg("/bin/true")
        .status()
        .unwrap();
    assert!(st.success(), "retrieve failed in {}", bin.display());
    t.elapsed()
}

// ---------------------------------------------------------------- main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Worker processes need many descriptors too (getdump of 10,000).
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    match args.first().map(String::as_str) {
        Some("--worker") => return worker(&args[1..]),
        Some("--floor-server") => return floor_server(),
        Some("--floor-daemon") => return floor_daemon(),
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    if !Path::new(REF).exists() {
        eprintln!("the reference s6 package is not installed (apt-get install s6)");
        std::process::exit(1);
    }
    let (rounds, millis, pairs, idle_secs) = if quick {
        (5, 100, 200, 2)
    } else {
        (15, 200, 1000, 10)
    };
    let ours_bin = Path::new(ours_exe()).parent().unwrap().to_path_buf();
    let ref_bin = PathBuf::from("/usr/bin");
    println!(
        "fdholder compare ({}): daemons with -c {MAXCONN} -n {MAXFDS} -i rules; {rounds} rounds, A B alternated, medians",
        if quick { "quick" } else { "full" }
    );
    println!("ours: {}\nreference: {REF}\n", ours_exe());
    println!(
        "{:<NAME_WIDTH$} {:>14} {:>14} {:>8}",
        "workload", "ours", "reference", "ours/ref"
    );
    let mut t = Table { rows: Vec::new() };
    let ours = Daemon::start(ours_exe(), "ours", Rules::Dir);
    let reference = Daemon::start(REF, "ref", Rules::Dir);
    let fd = devnull();

    // Throughput.
    for (kind, n, place, how) in [
        ("conn", 1, Place::Same, "same CPU"),
        ("conn", 4, Place::Free, "unpinned"),
        ("session", 1, Place::Same, "same CPU"),
        ("session", 1, Place::Split, "split CPUs"),
        ("session", 4, Place::Free, "unpinned"),
    ] {
        let m = alternate(rounds, &ours, &reference, |d| {
            load(kind, d, n, millis, place)
        });
        t.rate(&format!("{kind}, {n} client(s), {how} (ops/s)"), m);
    }
    // Other rules, same loads. In a cdb (`-x`), conn: neither daemon reads
    // files per connection, so this compares the rest of the work. Store
    // and retrieve rights by the regex `^bench-`, session: the daemons run
    // it for each request (the empty regex of the rows above matches all).
    for (rules, tag, kind, name) in [
        (Rules::Cdb, "cdb", "conn", "conn -x cdb"),
        (Rules::DirRegex, "re", "session", "session, ids by regex"),
    ] {
        let o = Daemon::start(ours_exe(), &format!("ours-{tag}"), rules);
        let r = Daemon::start(REF, &format!("ref-{tag}"), rules);
        for (n, place, how) in [(1, Place::Same, "same CPU"), (4, Place::Free, "unpinned")] {
            let m = alternate(rounds, &o, &r, |d| load(kind, d, n, millis, place));
            t.rate(&format!("{name}, {n} client(s), {how} (ops/s)"), m);
        }
    }
    // The floor of the conn load: the floor server (no rules, no
    // credentials) rotated with both daemons, rules in a directory and in
    // a cdb. What the floor gets over the reference bounds what any daemon
    // can get over it on this load.
    {
        let floor_d = Daemon::start(FLOOR, "floor-conn", Rules::Dir);
        let oc = Daemon::start(ours_exe(), "ours-cdb2", Rules::Cdb);
        let rc = Daemon::start(REF, "ref-cdb2", Rules::Cdb);
        for (n, place, how) in [(1, Place::Same, "same CPU"), (4, Place::Free, "unpinned")] {
            for (o, r, tag) in [(&ours, &reference, "dir"), (&oc, &rc, "cdb")] {
                let runs = rotate(rounds, [o, r, &floor_d], |d| {
                    load("conn", d, n, millis, place)
                });
                let [mo, mr, mf] = [0, 1, 2].map(|j| median_of(&runs, |r| r[j]));
                t.rate(
                    &format!("conn ({tag}), {n} client(s), {how}: floor server vs reference"),
                    (mf, mr, median_of(&runs, |r| r[2] / r[1])),
                );
                t.rate(
                    &format!("conn ({tag}), {n} client(s), {how}: ours vs floor server"),
                    (mo, mf, median_of(&runs, |r| r[0] / r[2])),
                );
            }
        }
    }
    // The floor for 4 clients: a server with no daemon logic on the same
    // kind of socket, rotated with both daemons (each round runs the three
    // back to back, in a rotating order).
    {
        let floor_d = Daemon::start(FLOOR, "floor", Rules::Dir);
        let runs = rotate(rounds, [&ours, &reference, &floor_d], |d| {
            load("session", d, 4, millis, Place::Free)
        });
        let [mo, mr, mf] = [0, 1, 2].map(|j| median_of(&runs, |r| r[j]));
        let fr = median_of(&runs, |r| r[2] / r[1]);
        let of = median_of(&runs, |r| r[0] / r[2]);
        t.rate(
            "session, 4 clients: floor server vs reference",
            (mf, mr, fr),
        );
        t.rate("session, 4 clients: ours vs floor server", (mo, mf, of));
    }
    // The floor, alternated with our single-client session.
    let (mut fl, mut s1, mut q) = (vec![], vec![], vec![]);
    for i in 0..rounds {
        let (a, b) = if i % 2 == 0 {
            let a = load("session", &ours, 1, millis, Place::Same);
            (a, floor(millis))
        } else {
            let b = floor(millis);
            (load("session", &ours, 1, millis, Place::Same), b)
        };
        s1.push(a);
        fl.push(b);
        q.push(a / b);
    }
    t.row(
        "session, 1 client, same CPU: ours vs floor",
        format!("{:.0}", median(&mut s1)),
        format!("{:.0}", median(&mut fl)),
        format!("{:.2}", median(&mut q)),
    );

    // Dumps: setdump into an empty daemon, then getdump, then clear.
    for n in [253usize, 1000, 10000] {
        let names = ids("dump", n);
        let (mut so, mut sr, mut go, mut gr) = (vec![], vec![], vec![], vec![]);
        let (mut serr, mut gerr) = ([None, None], [None, None]);
        let dr = if n >= 10000 { rounds.min(3) } else { rounds };
        for i in 0..dr {
            let order: [(usize, &Daemon); 2] = if i % 2 == 0 {
                [(0, &ours), (1, &reference)]
            } else {
                [(1, &reference), (0, &ours)]
            };
            for (w, d) in order {
                match setdump(d, &names, &fd) {
                    Ok(el) => [&mut so, &mut sr][w].push(el.as_secs_f64() * 1e3),
                    Err(e) => {
                        serr[w] = Some(e);
                        continue;
                    }
                }
                if gerr[w].is_none() {
                    match getdump(d, n) {
                        Ok(el) => [&mut go, &mut gr][w].push(el.as_secs_f64() * 1e3),
                        Err(e) => gerr[w] = Some(e),
                    }
                }
                clear(d, &names);
            }
        }
        let res = |v: &mut Vec<f64>, e: &Option<String>| match e {
            Some(e) => Err(e.clone()),
            None => Ok(median(v)),
        };
        t.time(
            &format!("getdump of {n} fds (ms)"),
            res(&mut go, &gerr[0]),
            res(&mut gr, &gerr[1]),
        );
        t.time(
            &format!("setdump of {n} fds (ms)"),
            res(&mut so, &serr[0]),
            res(&mut sr, &serr[1]),
        );
    }

    // Scale: session throughput with 0 and with 10,000 fds held, on four
    // daemons (ours and the reference, empty and loaded) run in rotating
    // order each round, so that every ratio is between back-to-back runs.
    let held = ids("held", 10000);
    let ours_full = Daemon::start(ours_exe(), "ours-full", Rules::Dir);
    let ref_full = Daemon::start(REF, "ref-full", Rules::Dir);
    setdump(&ours_full, &held, &fd).unwrap();
    setdump(&ref_full, &held, &fd).unwrap();
    let runs = rotate(rounds, [&ours, &ours_full, &reference, &ref_full], |d| {
        load("session", d, 1, millis, Place::Same)
    });
    let [m0, m1, m2, m3] = [0, 1, 2, 3].map(|j| median_of(&runs, |r| r[j]));
    let q0 = median_of(&runs, |r| r[0] / r[2]); // ours / reference, 0 held
    let q1 = median_of(&runs, |r| r[1] / r[3]); // ours / reference, 10,000 held
    let q2 = median_of(&runs, |r| r[1] / r[0]); // ours: 10,000 held / 0 held
    let q3 = median_of(&runs, |r| r[3] / r[2]); // reference: 10,000 held / 0 held
    t.rate("scale: session, 0 held (ops/s)", (m0, m2, q0));
    t.rate("scale: session, 10,000 held (ops/s)", (m1, m3, q1));
    t.row(
        "scale: 10,000 held / 0 held",
        format!("{q2:.2}"),
        format!("{q3:.2}"),
        "-".into(),
    );
    drop(ours_full);
    drop(ref_full);
    drop(ours);
    drop(reference);

    // Memory: fresh daemons, RSS at 0, 1,000 and 10,000 held.
    let ours = Daemon::start(ours_exe(), "ours-mem", Rules::Dir);
    let reference = Daemon::start(REF, "ref-mem", Rules::Dir);
    let all = ids("mem", 10000);
    let mut prev = 0;
    for n in [0usize, 1000, 10000] {
        for d in [&ours, &reference] {
            if n > prev {
                setdump(d, &all[prev..n], &fd).unwrap();
            }
            // One more exchange, so both have settled after the dump.
            d.client().list(deadline()).unwrap();
        }
        prev = n;
        let (o, r) = (
            proc_status(ours.pid(), "VmRSS:"),
            proc_status(reference.pid(), "VmRSS:"),
        );
        t.row(
            &format!("memory: VmRSS with {n} held (KiB)"),
            o.to_string(),
            r.to_string(),
            format!("{:.2}", o as f64 / r as f64),
        );
    }

    // Idle CPU, both at once, holding 10,000 fds.
    let (o0, r0) = (cpu_ticks(ours.pid()), cpu_ticks(reference.pid()));
    std::thread::sleep(Duration::from_secs(idle_secs));
    let (o1, r1) = (cpu_ticks(ours.pid()), cpu_ticks(reference.pid()));
    let tick = rustix::param::clock_ticks_per_second() as f64;
    t.row(
        &format!("idle CPU over {idle_secs} s, 10,000 held (ms)"),
        format!("{:.0}", (o1 - o0) as f64 * 1e3 / tick),
        format!("{:.0}", (r1 - r0) as f64 * 1e3 / tick),
        "-".into(),
    );
    drop(ours);
    drop(reference);

    // Processes: store + retrieve -D pairs, each implementation's tools
    // against its own daemon.
    let ours = Daemon::start(ours_exe(), "ours-proc", Rules::Dir);
    let reference = Daemon::start(REF, "ref-proc", Rules::Dir);
    // Rotated pair by pair with the floor; totals.
    let (mut po, mut pr, mut pf) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..pairs {
        for k in 0..3 {
            match (i + k) % 3 {
                0 => po += tool_pair(&ours_bin, &ours.sock, i),
                1 => pr += tool_pair(&ref_bin, &reference.sock, i),
                _ => pf += floor_pair(),
            }
        }
    }
    t.time(
        &format!("processes: {pairs} store + retrieve -D pairs, total (ms)"),
        Ok(po.as_secs_f64() * 1e3),
        Ok(pr.as_secs_f64() * 1e3),
    );
    t.time(
        &format!("processes: floor ({pairs} true + env true pairs) vs reference (ms)"),
        Ok(pf.as_secs_f64() * 1e3),
        Ok(pr.as_secs_f64() * 1e3),
    );
    drop(ours);
    drop(reference);

    println!("\nMarkdown:\n");
    println!("| workload | ours | reference | ours/ref |\n|---|---:|---:|---:|");
    for r in &t.rows {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
}
