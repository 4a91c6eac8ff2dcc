//! The in-place upgrade (SIGUSR2): the daemon, started from a copy of our
//! binary in a temporary directory, re-executes whatever is installed at
//! that path (replaced by rename, as a package manager does) in the same
//! process, keeping every held fd, every connection, mid-session or
//! mid-dump; a new binary that exits at once or cannot read the state
//! leaves the old daemon serving everything.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, identity};

/// The binary under test: ours, or `fdholder` in `FDHOLDER_TEST_BIN_DIR`
/// (an older build, to see these tests fail there).
fn multicall() -> PathBuf {
    match std::env::var_os("FDHOLDER_TEST_BIN_DIR") {
        Some(d) => PathBuf::from(d).join("fdholder"),
        None => common::multicall(),
    }
}
use fdholder::{Client, Tain, proto, wire};

fn dl() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(20))
}

/// A directory with a copy of our multicall binary, `fdholder`, and a
/// link to it, `s6-fdholderd`, from which the daemon is started.
struct Installed {
    dir: common::TempDir,
}

impl Installed {
    fn new() -> Installed {
        let dir = common::tmpdir("upgrade-bin");
        let i = Installed { dir };
        i.install(&multicall());
        std::os::unix::fs::symlink("fdholder", i.dir.join("s6-fdholderd")).unwrap();
        i
    }

    /// Installs `src` at the path, by rename (the old inode lives on).
    fn install(&self, src: &Path) {
        let tmp = self.dir.join("fdholder.new");
        // Copied by cp, not here: a descriptor open for writing in this
        // (multithreaded) process would be inherited by a concurrent
        // test's fork until its exec, and an exec of the copy meanwhile
        // would fail with ETXTBSY.
        let st = Command::new("cp").arg(src).arg(&tmp).status().unwrap();
        assert!(st.success());
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.dir.join("fdholder")).unwrap();
    }

    /// Installs a shell script at the path.
    fn install_script(&self, text: &str) {
        let tmp = self.dir.join("script");
        std::fs::write(&tmp, text).unwrap();
        self.install(&tmp);
        std::fs::remove_file(&tmp).unwrap();
    }

    fn bin(&self) -> PathBuf {
        self.dir.join("fdholder")
    }

    /// Starts the daemon from `dir/s6-fdholderd`, with `-1` and full
    /// rights, a descriptor limit of `nofile`.
    fn start(&self, args: &[&str], nofile: u32) -> Daemon {
        self.start_with_rules(args, nofile, None)
    }

    /// [`Installed::start`] with `-x cdb` instead of the full rules.
    fn start_with_rules(&self, args: &[&str], nofile: u32, cdb: Option<&Path>) -> Daemon {
        let ddir = common::tmpdir("upgrade").into_path();
        let sock = ddir.join("s");
        let listener = UnixListener::bind(&sock).unwrap();
        let (flag, rules) = match cdb {
            Some(c) => ("-x", c.to_path_buf()),
            None => ("-i", common::full_rules(&ddir)),
        };
        // (Rust opens every descriptor close-on-exec: none leaks here.)
        let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .arg(self.dir.join("s6-fdholderd"))
            .arg("-1")
            .args(args)
            .arg(flag)
            .arg(&rules)
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(ddir.join("stderr")).unwrap());
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let d = Daemon {
            child,
            sock,
            dir: ddir,
            which: Impl::Ours,
        };
        assert_eq!(line, "\n", "no readiness; stderr: {}", d.stderr());
        d
    }
}

/// The daemon's descriptor count once the connections of the requests
/// just made are closed on its side too.
fn baseline(d: &Daemon) -> usize {
    let mut n = d.open_fds();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let m = d.open_fds();
        if m == n {
            return n;
        }
        n = m;
    }
}

fn pid(d: &Daemon) -> rustix::process::Pid {
    rustix::process::Pid::from_raw(d.child.id() as i32).unwrap()
}

/// The identity of the file `/proc/PID/exe` names (the running image).
fn running_image(d: &Daemon) -> Option<(u64, u64)> {
    let st = std::fs::metadata(format!("/proc/{}/exe", d.child.id())).ok()?;
    use std::os::unix::fs::MetadataExt;
    Some((st.dev(), st.ino()))
}

fn file_identity(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.dev(), m.ino())
}

/// Sends SIGUSR2 and waits until the process runs the binary now at the
/// path (its image is that file) and answers.
fn upgrade(d: &Daemon, bin: &Installed) {
    let want = file_identity(&bin.bin());
    assert_ne!(running_image(d), Some(want), "install a new copy first");
    d.signal(rustix::process::Signal::USR2);
    let end = Instant::now() + Duration::from_secs(20);
    while running_image(d) != Some(want) {
        assert!(Instant::now() < end, "no upgrade; stderr: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(2));
    }
    // Serving again (the listener's backlog waited meanwhile).
    d.client().list(dl()).unwrap();
}

/// Sends SIGUSR2 and waits for the warning of a failed upgrade; returns it.
fn failed_upgrade(d: &Daemon) -> String {
    let before = d.stderr().matches("upgrade failed").count();
    d.signal(rustix::process::Signal::USR2);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let e = d.stderr();
        if e.matches("upgrade failed").count() > before {
            return e
                .lines()
                .rfind(|l| l.contains("upgrade failed"))
                .unwrap()
                .to_string();
        }
        assert!(Instant::now() < end, "no warning; stderr: {e}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the daemon holds: (id, limit, identity of the fd), by getdump.
fn holdings(d: &Daemon) -> Vec<(Vec<u8>, Tain, (u64, u64))> {
    let mut v: Vec<_> = d
        .client()
        .getdump(dl())
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.limit, identity(e.fd.as_fd())))
        .collect();
    v.sort();
    v
}

/// A field of `/proc/PID/status` (`Seccomp:`, `Seccomp_filters:`).
fn status_field(d: &Daemon, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// Stores `n` fds: files (each its own open file), with and without a
/// limit; returns what is held and the files.
fn fill(d: &Daemon, n: usize) -> Vec<std::fs::File> {
    let tmp = common::tmpdir("upgrade-files");
    let mut c = d.client();
    let far = Tain::now().add_secs(3600);
    // Eight open files, each stored many times (each store is a new fd
    // in the daemon, of the same open file).
    let files: Vec<std::fs::File> = (0..8)
        .map(|i| common::file_with(tmp.path(), &format!("f{i}"), b"x"))
        .collect();
    for i in 0..n {
        let limit = (i % 3 == 0).then_some(far);
        c.store(
            files[i % 8].as_fd(),
            format!("id/{i}").as_bytes(),
            limit,
            dl(),
        )
        .unwrap();
    }
    files
}

#[test]
fn held_fds_limits_and_marks_survive_twenty_upgrades() {
    let bin = Installed::new();
    let d = bin.start(&["-S"], 4096);
    let _files = fill(&d, 100);
    // One marked to drop on hang-up: still watched after the upgrades.
    let (mine, theirs) = UnixStream::pair().unwrap();
    d.client()
        .store_dropping_on_hangup(mine.as_fd(), b"marked", None, dl())
        .unwrap();
    drop(mine);
    let before = holdings(&d);
    let fds = baseline(&d);
    let p = pid(&d);
    for _ in 0..20 {
        bin.install(&multicall());
        upgrade(&d, &bin);
        assert_eq!(pid(&d), p);
        assert_eq!(holdings(&d), before);
        assert_eq!(d.wait_fds(fds), fds, "fd count back to its baseline");
    }
    drop(theirs);
    let end = Instant::now() + Duration::from_secs(10);
    while d.client().list(dl()).unwrap().contains(&b"marked".to_vec()) {
        assert!(Instant::now() < end, "the mark was lost");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(d.wait_fds(fds - 1), fds - 1);
    assert!(!d.stderr().contains("warning"), "{}", d.stderr());
    // SIGTERM as before: exits 1 (fds still held).
    assert_eq!(d.terminate(), Some(1));
}

#[test]
fn ten_thousand_fds_and_short_expiries() {
    let bin = Installed::new();
    let d = bin.start(&["-S", "-n", "11000"], 12000);
    let files = fill(&d, 10_000);
    // Short limits pending across the upgrade: they still expire.
    let soon = Tain::now().add_secs(2);
    d.client()
        .store(files[0].as_fd(), b"soon", Some(soon), dl())
        .unwrap();
    let before = holdings(&d);
    assert_eq!(before.len(), 10_001);
    let fds = baseline(&d);
    bin.install(&multicall());
    upgrade(&d, &bin);
    let after = holdings(&d);
    if after.len() == 10_001 {
        assert_eq!(after, before);
    } else {
        // The 2 s passed meanwhile (a slow machine): only "soon" went.
        let mut b = before.clone();
        b.retain(|h| h.0 != b"soon");
        assert_eq!(after, b);
    }
    assert_eq!(d.wait_fds(fds), fds);
    let end = Instant::now() + Duration::from_secs(10);
    while d.client().list(dl()).unwrap().contains(&b"soon".to_vec()) {
        assert!(Instant::now() < end, "the expiry was lost");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.wait_fds(fds - 1), fds - 1);
}

#[test]
fn a_binary_that_exits_at_once_leaves_the_holder_serving() {
    let bin = Installed::new();
    let d = bin.start(&["-S"], 4096);
    let _files = fill(&d, 50);
    let before = holdings(&d);
    let fds = baseline(&d);
    let image = running_image(&d);
    bin.install_script("#!/bin/sh\nexit 0\n");
    let w = failed_upgrade(&d);
    assert!(w.contains("exited 0 without acknowledging"), "{w}");
    assert_eq!(running_image(&d), image);
    assert_eq!(holdings(&d), before);
    assert_eq!(d.wait_fds(fds), fds);
    // A path with nothing there: the exec fails, in the trial.
    std::fs::remove_file(bin.bin()).unwrap();
    let w = failed_upgrade(&d);
    assert!(
        w.contains("unable to exec: No such file or directory"),
        "{w}"
    );
    assert_eq!(holdings(&d), before);
    // A binary that hangs: killed at the timeout.
    bin.install_script("#!/bin/sh\nexec sleep 60\n");
    let w = failed_upgrade(&d);
    assert!(w.contains("did not acknowledge the state within"), "{w}");
    assert_eq!(holdings(&d), before);
    assert_eq!(d.wait_fds(fds), fds);
    // And then a good one still works.
    bin.install(&multicall());
    upgrade(&d, &bin);
    assert_eq!(holdings(&d), before);
    assert_eq!(d.wait_fds(fds), fds);
}

#[test]
fn a_binary_that_cannot_read_the_state_is_refused() {
    // The reference's daemon knows no state: given the trial's pipe as
    // stdin, it fails; were it exec'd for real, it would start empty.
    if !common::have_reference() {
        return;
    }
    let bin = Installed::new();
    let d = bin.start(&["-S"], 4096);
    let _files = fill(&d, 20);
    let before = holdings(&d);
    let fds = baseline(&d);
    bin.install(Path::new("/usr/bin/s6-fdholderd"));
    let w = failed_upgrade(&d);
    assert!(w.contains("cannot read the state"), "{w}");
    assert_eq!(holdings(&d), before);
    assert_eq!(d.wait_fds(fds), fds);
    // One that answers something else (an older or newer format).
    bin.install_script("#!/bin/sh\necho 'fdholder state v9 ok' >&0\n");
    let w = failed_upgrade(&d);
    assert!(w.contains("cannot read the state: it answered"), "{w}");
    assert_eq!(holdings(&d), before);
}

/// A raw connection, to stop in the middle of a request or a dump.
struct Raw {
    sock: UnixStream,
    rx: wire::Receiver,
}

impl Raw {
    fn connect(d: &Daemon) -> Raw {
        Raw {
            sock: UnixStream::connect(&d.sock).unwrap(),
            rx: wire::Receiver::new(wire::MAX_LEN),
        }
    }

    fn send(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut tx: wire::Sender<BorrowedFd<'_>> = wire::Sender::new();
        tx.push(payload.to_vec(), fds.to_vec());
        while !tx.flush(self.sock.as_fd()).unwrap() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn recv(&mut self) -> (Vec<u8>, Vec<OwnedFd>) {
        loop {
            if let Some((p, f)) = self.rx.take_message().unwrap() {
                return (p.to_vec(), f);
            }
            let mut pfd = [rustix::event::PollFd::new(
                &self.sock,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut pfd, None).unwrap();
            match self.rx.fill(self.sock.as_fd()) {
                Ok(0) => panic!("the daemon closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn sessions_and_dumps_in_progress_go_on_across_upgrades() {
    let bin = Installed::new();
    let d = bin.start(&["-S", "-n", "5000"], 8192);
    let files = fill(&d, 3000);
    let fds = baseline(&d);
    // A session: one request before the upgrade, more after, same socket.
    let mut session = d.client();
    session
        .store(files[0].as_fd(), b"session/1", None, dl())
        .unwrap();
    // A request sent in part: its first half before, the rest after.
    let half = Raw::connect(&d);
    let req = proto::store(b"half", Tain::infinite_from(Tain::now()));
    let mut bytes = wire::header(req.len(), 1).to_vec();
    bytes.extend_from_slice(&req);
    wire::send_some(
        half.sock.as_fd(),
        &[std::io::IoSlice::new(&bytes[..9])],
        &[files[1].as_fd()],
    )
    .unwrap();
    // A setdump announced, one chunk of two sent: the second after.
    let mut sd = Raw::connect(&d);
    sd.send(&proto::setdump(2), &[]);
    assert_eq!(sd.recv().0, [0, 0, 0, 0, 1]);
    let inf = Tain::infinite_from(Tain::now());
    let mut chunk = vec![proto::OP_SETDUMP_CHUNK];
    proto::push_entry(&mut chunk, inf, b"dump/1");
    sd.send(&chunk, &[files[2].as_fd()]);
    assert_eq!(sd.recv().0, [libc::EAGAIN as u8]);
    // A getdump of 3,000+ fds to a reader that reads only its header:
    // the rest waits in the daemon's queue, part written.
    let mut gd = Raw::connect(&d);
    gd.send(&[proto::OP_GETDUMP], &[]);
    let (head, _) = gd.recv();
    let total = u32::from_be_bytes(head[5..9].try_into().unwrap()) as usize;
    let expected: Vec<Vec<u8>> = {
        let mut v = d.client().list(dl()).unwrap();
        v.sort();
        v
    };
    assert_eq!(total, expected.len());
    std::thread::sleep(Duration::from_millis(100));

    bin.install(&multicall());
    upgrade(&d, &bin);
    bin.install(&multicall());
    upgrade(&d, &bin);

    // The getdump goes on: every id and a good fd for each.
    let mut got = Vec::new();
    while got.len() < total {
        let (p, f) = gd.recv();
        let entries = proto::parse_entries(&p, f.len()).unwrap();
        for ((_, id), fd) in entries.into_iter().zip(f) {
            rustix::fs::fstat(&fd).unwrap();
            got.push(id.to_bytes().to_vec());
        }
    }
    got.sort();
    assert_eq!(got, expected);
    // The session goes on.
    session
        .store(files[3].as_fd(), b"session/2", None, dl())
        .unwrap();
    assert_eq!(
        identity(session.retrieve(b"session/1", dl()).unwrap()),
        identity(&files[0])
    );
    // The half request completes.
    wire::send_some(
        half.sock.as_fd(),
        &[std::io::IoSlice::new(&bytes[9..])],
        &[],
    )
    .unwrap();
    let mut half = half;
    assert_eq!(half.recv().0, [0]);
    // The setdump completes.
    let mut chunk = vec![proto::OP_SETDUMP_CHUNK];
    proto::push_entry(&mut chunk, inf, b"dump/2");
    sd.send(&chunk, &[files[4].as_fd()]);
    assert_eq!(sd.recv().0, [0]);
    let mut c = d.client();
    for (id, f) in [
        (&b"half"[..], &files[1]),
        (b"dump/1", &files[2]),
        (b"dump/2", &files[4]),
        (b"session/2", &files[3]),
    ] {
        assert_eq!(identity(c.retrieve(id, dl()).unwrap()), identity(f));
    }
    drop((c, session, half, sd, gd));
    assert_eq!(d.wait_fds(fds + 5), fds + 5);
}

#[test]
fn clients_under_load_see_no_error_across_upgrades() {
    let bin = Installed::new();
    let d = bin.start(&["-S", "-c", "64"], 4096);
    let _files = fill(&d, 500);
    let sock = d.sock.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let sock = sock.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let f = std::fs::File::open("/dev/null").unwrap();
            let mut n = 0u64;
            let mut session = Client::connect(&sock, dl()).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("load/{w}/{n}");
                // Half on a long session, half on fresh connections.
                let mut fresh;
                let c = if n % 2 == 0 {
                    &mut session
                } else {
                    fresh = Client::connect(&sock, dl()).unwrap();
                    &mut fresh
                };
                c.store(f.as_fd(), id.as_bytes(), None, dl()).unwrap();
                c.retrieve(id.as_bytes(), dl()).unwrap();
                c.delete(id.as_bytes(), dl()).unwrap();
                n += 1;
            }
            n
        }));
    }
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        bin.install(&multicall());
        upgrade(&d, &bin);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
    assert_eq!(d.client().list(dl()).unwrap().len(), 500);
}

#[test]
fn upgrades_in_the_sandbox_keep_it_and_install_no_second_filter() {
    let bin = Installed::new();
    let d = bin.start(&[], 4096);
    let _files = fill(&d, 200);
    let (mine, theirs) = UnixStream::pair().unwrap();
    d.client()
        .store_dropping_on_hangup(mine.as_fd(), b"marked", None, dl())
        .unwrap();
    drop(mine);
    assert_eq!(status_field(&d, "Seccomp:"), "2");
    let filters = status_field(&d, "Seccomp_filters:");
    let before = holdings(&d);
    let fds = baseline(&d);
    let p = pid(&d);
    for _ in 0..3 {
        bin.install(&multicall());
        upgrade(&d, &bin);
        assert_eq!(pid(&d), p);
        assert_eq!(status_field(&d, "Seccomp:"), "2");
        assert_eq!(status_field(&d, "Seccomp_filters:"), filters);
        assert_eq!(holdings(&d), before);
        assert_eq!(d.wait_fds(fds), fds);
    }
    // A failed one in the sandbox too: still serving. (A script cannot
    // even start there: its interpreter, /bin/sh, is not beneath a
    // directory the daemon may execute from.)
    bin.install_script("#!/bin/sh\nexit 3\n");
    let w = failed_upgrade(&d);
    assert!(w.contains("unable to exec: Permission denied"), "{w}");
    std::fs::remove_file(bin.bin()).unwrap();
    let w = failed_upgrade(&d);
    assert!(
        w.contains("unable to exec: No such file or directory"),
        "{w}"
    );
    assert_eq!(holdings(&d), before);
    drop(theirs);
    let end = Instant::now() + Duration::from_secs(10);
    while d.client().list(dl()).unwrap().contains(&b"marked".to_vec()) {
        assert!(Instant::now() < end, "the mark was lost");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Nothing else said: no sandbox warning after the upgrades.
    let e = d.stderr();
    assert!(e.lines().all(|l| l.contains("upgrade failed")), "{e}");
}

/// Compiles the rules directory `dir` into the cdb `cdb` (by rename).
fn cdb_from(dir: &Path, cdb: &Path) {
    let st = Command::new(common::ours("s6-accessrules-cdb-from-fs"))
        .arg(cdb)
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn sighup_and_sigterm_after_an_upgrade() {
    let bin = Installed::new();
    let tmp = common::tmpdir("upgrade-cdb");
    let rules = common::full_rules(tmp.path());
    let cdb = tmp.join("rules.cdb");
    cdb_from(&rules, &cdb);
    let d = bin.start_with_rules(&["-S", "-v2", "-t", "60000"], 4096, Some(&cdb));
    let _files = fill(&d, 10);
    // A client in the middle of a request, with a -t deadline pending.
    let half = Raw::connect(&d);
    let req = proto::store(b"late", Tain::infinite_from(Tain::now()));
    let mut bytes = wire::header(req.len(), 1).to_vec();
    bytes.extend_from_slice(&req);
    let f = std::fs::File::open("/dev/null").unwrap();
    wire::send_some(
        half.sock.as_fd(),
        &[std::io::IoSlice::new(&bytes[..3])],
        &[f.as_fd()],
    )
    .unwrap();
    bin.install(&multicall());
    upgrade(&d, &bin);
    // SIGHUP reads the cdb again: now it denies us.
    std::fs::remove_dir_all(&rules).unwrap();
    common::deny(
        &rules,
        &format!("uid/{}", rustix::process::geteuid().as_raw()),
    );
    cdb_from(&rules, &cdb);
    d.signal(rustix::process::Signal::HUP);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = Client::connect(&d.sock, dl())
            .and_then(|mut c| c.list(dl()))
            .is_err();
        if refused {
            break;
        }
        assert!(Instant::now() < end, "SIGHUP did not reload the cdb");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGTERM: lame duck, while the half request is finished; an upgrade
    // is refused then.
    d.signal(rustix::process::Signal::TERM);
    // (Once it is in lame duck: signals pending together are read lowest
    // first, SIGUSR2 before SIGTERM.)
    let end = Instant::now() + Duration::from_secs(10);
    while !d.stderr().contains("entering lame duck mode") {
        assert!(Instant::now() < end, "no lame duck: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    let w = failed_upgrade(&d);
    assert!(w.contains("in lame duck mode"), "{w}");
    wire::send_some(
        half.sock.as_fd(),
        &[std::io::IoSlice::new(&bytes[3..])],
        &[],
    )
    .unwrap();
    let mut half = half;
    assert_eq!(half.recv().0, [0], "the rights decided at accept were kept");
    // It exits as soon as that answer is out: fds held (bit 0), that
    // client still connected (bit 1).
    let mut d = d;
    assert_eq!(
        common::wait_timeout(&mut d.child, Duration::from_secs(10)),
        Some(3)
    );
    drop(half);
}

/// The reference's clients cannot tell an upgrade happened: what its
/// `s6-fdholder-store` stored (with and without an expiry) is listed by
/// its `s6-fdholder-list` byte for byte as before, and its
/// `s6-fdholder-retrieve` gets the same file back; its `-T` expiry still
/// counts from the store.
#[test]
fn the_reference_clients_cannot_tell() {
    let (Some(store), Some(list), Some(retrieve)) = (
        common::reference("s6-fdholder-store"),
        common::reference("s6-fdholder-list"),
        common::reference("s6-fdholder-retrieve"),
    ) else {
        return;
    };
    let bin = Installed::new();
    let d = bin.start(&[], 4096);
    let dir = common::tmpdir("upgrade-ref");
    let f = common::file_with(&dir, "f", b"held across the upgrade\n");
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        out.stdout
    };
    for (id, args) in [
        ("plain", &[][..]),
        ("odd\tid", &[][..]),
        ("timed", &["-T", "600000"][..]),
    ] {
        run(Command::new(&store)
            .args(args)
            .arg(&d.sock)
            .arg(id)
            .stdin(std::fs::File::open(dir.join("f")).unwrap()));
    }
    let listed = run(Command::new(&list).arg(&d.sock));
    let held = holdings(&d);
    let p = pid(&d);
    bin.install(&multicall());
    upgrade(&d, &bin);
    assert_eq!(pid(&d), p);
    assert_eq!(run(Command::new(&list).arg(&d.sock)), listed);
    assert_eq!(holdings(&d), held);
    for id in ["plain", "odd\tid", "timed"] {
        let got = run(Command::new(&retrieve).arg(&d.sock).arg(id).arg("cat"));
        assert_eq!(got, b"held across the upgrade\n", "{id}");
    }
    drop(f);
    assert!(!d.stderr().contains("warning"), "{}", d.stderr());
}

/// Rules the new program could not open (a cdb moved away, or not a cdb)
/// fail the trial: the daemon keeps serving everything and says why;
/// with the rules back, the upgrade goes through. Before, the trial
/// passed (it answered before reading the rules) and the new program
/// died of them, every held fd with it.
#[test]
fn rules_the_new_program_cannot_open_fail_the_trial() {
    let bin = Installed::new();
    let tmp = common::tmpdir("upgrade-nocdb");
    let rules = common::full_rules(tmp.path());
    let cdb = tmp.join("rules.cdb");
    cdb_from(&rules, &cdb);
    for sandbox in [&["-S"][..], &[][..]] {
        let d = bin.start_with_rules(sandbox, 4096, Some(&cdb));
        let _files = fill(&d, 10);
        let held = holdings(&d);
        let fds = baseline(&d);
        let p = pid(&d);
        bin.install(&multicall());
        std::fs::rename(&cdb, tmp.join("away.cdb")).unwrap();
        let w = failed_upgrade(&d);
        assert!(w.contains("without acknowledging"), "{sandbox:?}: {w}");
        assert!(d.stderr().contains("cdb_init"), "{}", d.stderr());
        assert_eq!((pid(&d), holdings(&d)), (p, held.clone()));
        assert_eq!(d.wait_fds(fds), fds);
        // Not a cdb at all: the same.
        std::fs::write(&cdb, b"\n").unwrap();
        let w = failed_upgrade(&d);
        assert!(w.contains("without acknowledging"), "{sandbox:?}: {w}");
        assert_eq!(holdings(&d), held);
        // The rules back: it upgrades, with everything.
        std::fs::rename(tmp.join("away.cdb"), &cdb).unwrap();
        upgrade(&d, &bin);
        assert_eq!((pid(&d), holdings(&d)), (p, held));
        assert_eq!(d.wait_fds(fds), fds);
    }
}
