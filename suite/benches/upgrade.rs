//! The in-place upgrade's figures (BENCHMARKS.md, "In-place upgrade"):
//! the longest request latency that clients see across an upgrade, with
//! 0, 1,000 and 10,000 fds held, and the requests that failed (must be
//! 0); beside it, the reference's only way to move held fds to a new
//! daemon: `s6-fdholder-transferdump` of the same fds to a fresh one.
//!
//! `cargo bench -p fdholder-suite --bench upgrade`

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fdholder::{Client, Tain};

const CLIENTS: usize = 4;
const UPGRADES: usize = 5;

fn dl() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

struct D {
    child: Child,
    sock: PathBuf,
    _dir: common::TempDir,
}

impl Drop for D {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `exe` (our link in `bin`, or the reference) with `-1`, full
/// rights, room for 11,000 fds.
fn start(exe: &Path) -> D {
    let dir = common::tmpdir("bench-upgrade");
    let sock = dir.join("s");
    let listener = UnixListener::bind(&sock).unwrap();
    let rules = common::full_rules(dir.path());
    let mut child = Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 12000 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["-1", "-c", "64", "-n", "11000", "-i"])
        .arg(&rules)
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(line, "\n", "{} did not start", exe.display());
    D {
        child,
        sock,
        _dir: dir,
    }
}

fn fill(sock: &Path, n: usize) {
    let f = std::fs::File::open("/dev/null").unwrap();
    let mut c = Client::connect(sock, dl()).unwrap();
    let far = Tain::now().add_secs(3600);
    for i in 0..n {
        c.store(f.as_fd(), format!("held/{i}").as_bytes(), Some(far), dl())
            .unwrap();
    }
}

fn image(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The longest request latency and the failed requests across
/// [`UPGRADES`] upgrades with `n` fds held, clients storing, retrieving
/// and deleting throughout (half on long sessions, half on fresh
/// connections).
fn ours(n: usize) -> (Duration, u64, Duration) {
    let bin = common::tmpdir("bench-upgrade-bin");
    let install = || {
        let tmp = bin.join("fdholder.new");
        assert!(
            Command::new("cp")
                .arg(common::multicall())
                .arg(&tmp)
                .status()
                .unwrap()
                .success()
        );
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, bin.join("fdholder")).unwrap();
    };
    install();
    std::os::unix::fs::symlink("fdholder", bin.join("s6-fdholderd")).unwrap();
    let d = start(&bin.join("s6-fdholderd"));
    fill(&d.sock, n);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (sock, stop, failed) = (d.sock.clone(), stop.clone(), failed.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open("/dev/null").unwrap();
                let mut longest = Duration::ZERO;
                let mut session = Client::connect(&sock, dl()).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("load/{w}/{i}");
                    let t = Instant::now();
                    let r = if i % 2 == 0 {
                        session
                            .store(f.as_fd(), id.as_bytes(), None, dl())
                            .and_then(|_| session.retrieve(id.as_bytes(), dl()))
                            .and_then(|_| session.delete(id.as_bytes(), dl()))
                    } else {
                        Client::connect(&sock, dl()).and_then(|mut c| {
                            c.store(f.as_fd(), id.as_bytes(), None, dl())?;
                            c.delete(id.as_bytes(), dl())
                        })
                    };
                    // One round (several requests) is timed: each of its
                    // requests took at most that.
                    longest = longest.max(t.elapsed());
                    if r.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        session = Client::connect(&sock, dl()).unwrap();
                    }
                    i += 1;
                }
                longest
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut longest_upgrade = Duration::ZERO;
    for _ in 0..UPGRADES {
        install();
        let target = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(bin.join("fdholder")).unwrap();
            (m.dev(), m.ino())
        };
        let pid = d.child.id();
        let t = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::USR2,
        )
        .unwrap();
        while image(pid) != Some(target) {
            std::thread::sleep(Duration::from_micros(200));
        }
        Client::connect(&d.sock, dl()).unwrap().list(dl()).unwrap();
        longest_upgrade = longest_upgrade.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let longest = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap();
    let held = Client::connect(&d.sock, dl())
        .unwrap()
        .list(dl())
        .unwrap()
        .len();
    assert_eq!(held, n, "fds lost");
    (longest, failed.load(Ordering::Relaxed), longest_upgrade)
}

/// The reference's path: `s6-fdholder-transferdump` of `n` fds from one
/// daemon to a fresh one (median of 3), with `daemon` and `transferdump`
/// of one implementation. `Err`: what the transfer said (Debian's
/// daemon cannot dump more than 253 descriptors: see docs/protocol.md,
/// "Known defects of the reference").
fn transfer(daemon: &Path, td: &Path, n: usize) -> Result<Duration, String> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let from = start(daemon);
        fill(&from.sock, n);
        let to = start(daemon);
        let t = Instant::now();
        let out = Command::new(td)
            .arg(&from.sock)
            .arg(&to.sock)
            .output()
            .unwrap();
        times.push(t.elapsed());
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let held = Client::connect(&to.sock, dl()).unwrap().list(dl()).unwrap();
        assert_eq!(held.len(), n);
    }
    times.sort();
    Ok(times[1])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reference = Path::new("/usr/bin/s6-fdholderd").exists();
    println!("In-place upgrade (SIGUSR2), {CLIENTS} clients, {UPGRADES} upgrades per row:");
    println!(
        "{:<10} {:>24} {:>8} {:>26}",
        "fds held", "longest request round", "failed", "SIGUSR2 to serving (max)"
    );
    for n in [0, 1000, 10_000] {
        let (longest, failed, up) = ours(n);
        println!("{n:<10} {:>24} {failed:>8} {:>26}", ms(longest), ms(up));
    }
    println!("\ntransferdump of the same fds to a fresh daemon (median of 3):");
    println!(
        "{:<10} {:>28} {:>28}",
        "fds held", "ours (daemons and tool)", "reference"
    );
    for n in [0, 1000, 10_000] {
        let show = |r: Result<Duration, String>| r.map(ms).unwrap_or_else(|e| e);
        let o = show(transfer(
            &common::ours("s6-fdholderd"),
            &common::ours("s6-fdholder-transferdump"),
            n,
        ));
        let r = if reference {
            show(transfer(
                Path::new("/usr/bin/s6-fdholderd"),
                Path::new("/usr/bin/s6-fdholder-transferdump"),
                n,
            ))
        } else {
            "n/a".to_string()
        };
        println!("{n:<10} {o:>28} {r:>28}");
    }
}
