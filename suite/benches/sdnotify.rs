//! Figures for `s6-fdholder-sdnotify` (BENCHMARKS.md, section
//! "s6-fdholder-sdnotify"):
//!
//! 1. the time from the start of `sdnotify` (and, to compare, of
//!    `s6-fdholder-sdlisten`, and of the service started directly, binding
//!    its socket itself) to the service's first accepted connection, with
//!    1 and 100 fds handed back;
//! 2. the cost of one `FDSTORE=1` round (datagram sent to fd held: N
//!    datagrams, then `list` until all N are held), against one run of
//!    `s6-fdholder-store` (ours and the reference's) on our daemon;
//! 3. connections refused while a service under load is restarted 100
//!    times (SIGTERM, started again through sdnotify).
//!
//! `cargo bench -p fdholder-suite --bench sdnotify` (about a minute). The
//! service is this program re-executed with `--serve`, `--fdstore N` or
//! `--service`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/ours/mod.rs"]
mod ours;

const RUNS: usize = 21;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// A daemon (ours unless `prog` says otherwise) on a socket in a fresh
/// directory, every right for everyone.
struct Daemon {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Daemon {
    fn start(prog: &Path, tag: &str) -> Daemon {
        let dir =
            std::env::temp_dir().join(format!("fdholder-bench-sd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rules = dir.join("rules/uid/default");
        std::fs::create_dir_all(rules.join("env")).unwrap();
        std::fs::write(rules.join("allow"), "").unwrap();
        for v in [
            "S6_FDHOLDER_STORE_REGEX",
            "S6_FDHOLDER_RETRIEVE_REGEX",
            "S6_FDHOLDER_LIST",
        ] {
            std::fs::write(rules.join("env").join(v), "\n").unwrap();
        }
        let sock = dir.join("s");
        let l = UnixListener::bind(&sock).unwrap();
        let mut child = Command::new(prog)
            .args(["-1", "-n", "2000", "-i"])
            .arg(dir.join("rules"))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(l)))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut b = [0u8; 1];
        child.stdout.take().unwrap().read_exact(&mut b).unwrap();
        Daemon { child, dir, sock }
    }

    fn client(&self) -> fdholder::Client {
        fdholder::Client::connect(&self.sock, None).unwrap()
    }

    fn held(&self) -> usize {
        self.client().list(None).unwrap().len()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------ child modes

/// `--serve PATH`: takes its listener at fd 3 (LISTEN_FDS) or binds PATH,
/// accepts one connection, answers one byte, exits.
fn serve(path: &str) {
    let mut fds = listenfd::ListenFd::from_env();
    let l = match fds.take_unix_listener(0).unwrap() {
        Some(l) => l,
        None => UnixListener::bind(path).unwrap(),
    };
    let (mut c, _) = l.accept().unwrap();
    c.write_all(b"x").unwrap();
}

/// `--fdstore N SOCK`: sends N `FDSTORE=1` datagrams (each with another
/// fd, `FDPOLL=0`), then lists until N are held; prints the time per fd.
fn fdstore(n: usize, sock: &str) {
    // Pipes: each a file of its own (the same file again is not stored).
    let files: Vec<_> = (0..n).map(|_| rustix::pipe::pipe().unwrap()).collect();
    let t0 = Instant::now();
    for (f, _) in &files {
        sd_notify::notify_with_fds(
            &[
                sd_notify::NotifyState::FdStore,
                sd_notify::NotifyState::FdName("b"),
                sd_notify::NotifyState::Custom("FDPOLL=0"),
            ],
            &[f.as_fd()],
        )
        .unwrap();
    }
    loop {
        let held = fdholder::Client::connect(sock, None)
            .unwrap()
            .list(None)
            .unwrap()
            .len();
        if held >= n {
            break;
        }
    }
    println!("{}", t0.elapsed().as_nanos() / n as u128);
}

/// `--service PATH`: a service for systemd: its listener from LISTEN_FDS
/// or bound at PATH and stored (`FDSTORE=1`); answers each client one
/// byte; on SIGTERM, finishes the client in hand and exits.
fn service(path: &str) {
    let sig = fdholder_suite::sys::signalfd(&[libc::SIGTERM]).unwrap();
    let mut fds = listenfd::ListenFd::from_env();
    let l = match fds.take_unix_listener(0).unwrap() {
        Some(l) => l,
        None => {
            let l = UnixListener::bind(path).unwrap();
            sd_notify::notify_with_fds(
                &[
                    sd_notify::NotifyState::FdStore,
                    sd_notify::NotifyState::FdName("l"),
                ],
                &[l.as_fd()],
            )
            .unwrap();
            l
        }
    };
    sd_notify::notify(&[sd_notify::NotifyState::Ready]).unwrap();
    use rustix::event::{PollFd, PollFlags};
    loop {
        let mut p = [
            PollFd::new(&l, PollFlags::IN),
            PollFd::new(&sig, PollFlags::IN),
        ];
        let _ = rustix::event::poll(&mut p, None);
        if !p[1].revents().is_empty() {
            return;
        }
        if let Ok((mut c, _)) = l.accept() {
            let _ = c.write_all(b"x");
        }
    }
}

// ----------------------------------------------------------- measurements

/// Spawns `cmd` and connects to `path` until the answer comes (retrying
/// while nothing listens there yet): the time from spawn to the answer.
fn time_to_first_connection(mut cmd: Command, path: &Path) -> Duration {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let got = loop {
        match UnixStream::connect(path) {
            Ok(mut c) => {
                let mut b = [0u8; 1];
                c.read_exact(&mut b).unwrap();
                break t0.elapsed();
            }
            Err(_) => std::hint::spin_loop(),
        }
    };
    child.wait().unwrap();
    got
}

fn startup(me: &Path, n: usize) -> [Duration; 3] {
    let d = Daemon::start(&ours::ours("s6-fdholderd"), &format!("start{n}"));
    let path = d.dir.join("l.sock");
    let l = UnixListener::bind(&path).unwrap();
    let mut c = d.client();
    c.store(l.as_fd(), b"svc/l:00000000", None, None).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    for k in 1..n {
        c.store(null.as_fd(), format!("svc/z:{k:08}").as_bytes(), None, None)
            .unwrap();
    }
    drop(c);
    let run = |wrapper: Option<&str>| {
        let mut v = Vec::new();
        for _ in 0..RUNS {
            let mut cmd = match wrapper {
                Some(w) => {
                    let mut c = Command::new(ours::ours(w));
                    c.arg(&d.sock).arg("svc/").arg(me);
                    c
                }
                None => Command::new(me),
            };
            let p = if wrapper.is_some() {
                path.clone()
            } else {
                d.dir.join("direct.sock")
            };
            let _ = std::fs::remove_file(d.dir.join("direct.sock"));
            cmd.arg("--serve").arg(&p);
            v.push(time_to_first_connection(cmd, &p));
        }
        median(v)
    };
    [
        run(Some("s6-fdholder-sdnotify")),
        run(Some("s6-fdholder-sdlisten")),
        run(None),
    ]
}

fn fdstore_round(me: &Path) -> Duration {
    let mut v = Vec::new();
    for i in 0..5 {
        let d = Daemon::start(&ours::ours("s6-fdholderd"), &format!("fdstore{i}"));
        let out = Command::new(ours::ours("s6-fdholder-sdnotify"))
            .args(["-n", "253"])
            .arg(&d.sock)
            .arg("svc/")
            .arg(me)
            .args(["--fdstore", "200"])
            .arg(&d.sock)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let ns: u64 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        v.push(Duration::from_nanos(ns));
    }
    median(v)
}

fn store_run(store: &Path) -> Duration {
    let d = Daemon::start(&ours::ours("s6-fdholderd"), "store");
    let mut v = Vec::new();
    for k in 0..RUNS * 3 {
        let t0 = Instant::now();
        let st = Command::new(store)
            .arg(&d.sock)
            .arg(format!("svc/s:{k:08}"))
            .stdin(std::fs::File::open("/dev/null").unwrap())
            .status()
            .unwrap();
        v.push(t0.elapsed());
        assert!(st.success());
    }
    assert_eq!(d.held(), RUNS * 3);
    median(v)
}

/// 100 restarts (SIGTERM, then started again through sdnotify) while a
/// client thread connects again and again: (answered, refused, other
/// failures).
fn restarts(me: &Path) -> (usize, usize, usize) {
    let d = Daemon::start(&ours::ours("s6-fdholderd"), "restarts");
    let path = d.dir.join("svc.sock");
    let start = || {
        Command::new(ours::ours("s6-fdholder-sdnotify"))
            .arg(&d.sock)
            .arg("svc/")
            .arg(me)
            .arg("--service")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut svc = start();
    while d.held() < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let hammer = {
        let (stop, counts, path) = (stop.clone(), counts.clone(), path.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match UnixStream::connect(&path) {
                    Ok(mut c) => {
                        let mut b = [0u8; 1];
                        match c.read_exact(&mut b) {
                            Ok(()) => counts[0].fetch_add(1, Ordering::Relaxed),
                            Err(_) => counts[2].fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counts[2].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let pid = rustix::process::Pid::from_raw(svc.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        svc.wait().unwrap();
        svc = start();
    }
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    hammer.join().unwrap();
    let _ = svc.kill();
    let _ = svc.wait();
    (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
        counts[2].load(Ordering::Relaxed),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => return serve(&args[2]),
        Some("--fdstore") => return fdstore(args[2].parse().unwrap(), &args[3]),
        Some("--service") => return service(&args[2]),
        _ => {}
    }
    let me = std::env::current_exe().unwrap();
    println!("s6-fdholder-sdnotify figures ({RUNS} runs each, medians)");
    for n in [1, 100] {
        let [notify, listen, direct] = startup(&me, n);
        println!(
            "start to first accepted connection, {n:>3} fds handed back: sdnotify {}, sdlisten {}, direct (binds itself, no fds) {}",
            ms(notify),
            ms(listen),
            ms(direct)
        );
    }
    println!(
        "one FDSTORE round (datagram to fd held, 200 in a row, 5 runs): {}",
        us(fdstore_round(&me))
    );
    println!(
        "one s6-fdholder-store run: ours {}",
        us(store_run(&ours::ours("s6-fdholder-store")))
    );
    let reference = Path::new("/usr/bin/s6-fdholder-store");
    if reference.exists() {
        println!(
            "one s6-fdholder-store run: reference {}",
            us(store_run(reference))
        );
    }
    let (answered, refused, failed) = restarts(&me);
    println!(
        "100 restarts under load: {answered} connections answered, {refused} refused, {failed} other failures"
    );
}
