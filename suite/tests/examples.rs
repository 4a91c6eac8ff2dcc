//! The s6 example, `examples/s6`: its README's walk-through, step by step,
//! on a copy in a temporary directory, under Debian's `s6-svscan`, with
//! the programs of this build installed the README's way (the binary and
//! `fdholder --install` links in a directory of their own, first in the run
//! scripts' `PATH`, `/usr/bin` after it).
//!
//! Every wait is bounded. Every process the example starts has its working
//! directory in the temporary directory: the guard kills those left (by
//! pid) and the test fails if the example leaves any.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TempDir, multicall};

/// What the example needs from Debian besides our programs.
const NEEDED: &[&str] = &[
    "/usr/bin/s6-svscan",
    "/usr/bin/s6-supervise",
    "/usr/bin/s6-svscanctl",
    "/usr/bin/s6-svc",
    "/usr/bin/s6-svok",
    "/usr/bin/s6-svstat",
    "/usr/bin/s6-svwait",
    "/usr/bin/python3",
];

/// The services, and the line each run script starts its work with.
const SERVICES: &[&str] = &["fdholder", "demo-store", "demo-serve"];
const PATH_LINE: &str = "export PATH=/opt/fdholder/bin:$PATH\n";

/// As `common::have_reference`: a loud skip, or a failure in CI.
fn have_debian_tools() -> bool {
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{missing:?} missing in CI: .ci/run must install s6 and python3");
    }
    common::loud(&format!(
        "examples.rs: {missing:?} not installed (apt-get install s6 python3)"
    ));
    false
}

/// Waits for a child at most `t`; `None` if it is still running.
fn wait_for(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + t;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `f` every 20 ms for at most `t`.
fn poll<T>(t: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + t;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose working directory is under `root`: the example's.
fn procs_in(root: &Path) -> Vec<(i32, PathBuf)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        match fs::read_link(e.path().join("cwd")) {
            Ok(cwd) if cwd.starts_with(root) => v.push((pid, cwd)),
            _ => {}
        }
    }
    v
}

/// Installs the suite in `bin` as the README says: the binary, and the
/// program names linked to it by `fdholder --install`.
fn install_suite(bin: &Path) {
    fs::create_dir(bin).unwrap();
    common::copy_executable(&multicall(), &bin.join("fdholder"));
    let out = Command::new(bin.join("fdholder"))
        .arg("--install")
        .arg(bin)
        .output()
        .unwrap();
    assert!(out.status.success(), "fdholder --install: {out:?}");
}

/// Copies a directory tree of directories and regular files (modes kept;
/// the files by `cp`: they are run scripts, see
/// [`common::copy_executable`]).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if ft.is_file() {
            common::copy_executable(&e.path(), &dest);
        } else {
            panic!(
                "{}: neither a file nor a directory (was s6-svscan run on examples/s6 itself? \
                 its README says to copy it)",
                e.path().display()
            );
        }
    }
}

/// The example running: a copy of examples/s6 under `s6-svscan`. Dropping
/// it stops everything it started.
struct Example {
    root: PathBuf,
    bin: PathBuf,
    scan: PathBuf,
    svscan: Child,
}

impl Example {
    /// The run scripts' PATH without their first entry: ours, then Debian's.
    fn path(&self) -> String {
        format!("{}:/usr/bin:/bin", self.bin.display())
    }

    /// `prog args` as the README types it: in the scan directory, with
    /// `prog` from our bin directory or /usr/bin, or the example's own.
    fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        let path = if let Some(own) = prog.strip_prefix("./") {
            self.scan.join(own)
        } else if self.bin.join(prog).exists() {
            self.bin.join(prog)
        } else {
            Path::new("/usr/bin").join(prog)
        };
        let mut c = Command::new(path);
        c.args(args)
            .current_dir(&self.scan)
            .env_clear()
            .env("PATH", self.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs `prog args` to completion, in at most 10 s.
    fn run(&self, prog: &str, args: &[&str]) -> Output {
        let mut child = self
            .cmd(prog, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_for(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(status.is_some(), "{prog} {args:?} still running after 10 s");
        out
    }

    /// Runs `prog args`, which must succeed; returns its stdout.
    fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?}: {:?}, stderr {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `s6-svstat -o FIELDS service`, trimmed.
    fn svstat(&self, fields: &str, service: &str) -> String {
        self.ok("s6-svstat", &["-o", fields, service])
            .trim()
            .to_owned()
    }

    /// demo-serve's pid, as s6-svstat says.
    fn serve_pid(&self) -> u32 {
        let p = self.svstat("pid", "demo-serve");
        p.parse()
            .unwrap_or_else(|_| panic!("demo-serve's pid: {p:?}\n{}", self.log()))
    }

    /// One `./client demo-serve/socket`: the answering pid, or None (the
    /// client failed: it said why on stderr).
    fn client_once(&self) -> Option<u32> {
        let out = self.run("./client", &["demo-serve/socket"]);
        let text = String::from_utf8(out.stdout).unwrap();
        out.status.success().then(|| parse_pid(text.trim()))
    }

    /// What s6-svscan and the services wrote (their stdout and stderr).
    fn log(&self) -> String {
        let log = fs::read_to_string(self.root.join("log")).unwrap_or_default();
        format!("--- s6-svscan's output:\n{log}---")
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if matches!(self.svscan.try_wait(), Ok(None)) {
            if let Ok(mut c) = Command::new("/usr/bin/s6-svscanctl")
                .arg("-t")
                .arg(&self.scan)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                && wait_for(&mut c, Duration::from_secs(5)).is_none()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
            if wait_for(&mut self.svscan, Duration::from_secs(5)).is_none() {
                let _ = self.svscan.kill();
                let _ = self.svscan.wait();
            }
        }
        // Whatever is left (s6-supervise, the services): killed by pid.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let left = procs_in(&self.root);
            if left.is_empty() || Instant::now() > end {
                break;
            }
            for (pid, _) in left {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn parse_pid(s: &str) -> u32 {
    s.parse()
        .unwrap_or_else(|_| panic!("not a pid: {s:?} (the answer of serve)"))
}

/// What a client loop of our own saw: answers by pid, and failures.
#[derive(Default, Debug)]
struct Tally {
    answered: Vec<u32>,
    refused: usize,
    other_errors: Vec<String>,
    unanswered: usize,
}

/// Stops a [`client_loop`] when dropped, on failure too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Connects to `sock` again and again until `stop`, as the README's client
/// does, counting what happens.
fn client_loop(sock: PathBuf, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let mut s = match UnixStream::connect(&sock) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                t.refused += 1;
                continue;
            }
            Err(e) => {
                t.other_errors.push(format!("connect: {e}"));
                continue;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        match s.read_to_string(&mut answer) {
            Ok(_) if answer.ends_with('\n') => t.answered.push(parse_pid(answer.trim())),
            Ok(_) => t.unanswered += 1,
            Err(e) => t.other_errors.push(format!("read: {e}")),
        }
    }
    t
}

#[test]
fn s6_example_walkthrough() {
    if !have_debian_tools() {
        return;
    }
    let tmp = TempDir::new("examples");
    let root = tmp.path().canonicalize().unwrap();

    // Install: the binary and its links in a directory of their own (the
    // README's /opt/fdholder/bin).
    let bin = root.join("bin");
    install_suite(&bin);
    for p in [
        "s6-fdholder-daemon",
        "s6-fdholderd",
        "s6-ipcserver-socketbinder",
        "s6-fdholder-store",
        "s6-fdholder-retrieve",
        "s6-fdholder-list",
    ] {
        assert!(bin.join(p).exists(), "{p} not installed");
    }

    // `cp -R examples/s6 /tmp/scan`; the run scripts' PATH line names our
    // bin directory instead of /opt/fdholder/bin.
    let scan = root.join("scan");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/s6"),
        &scan,
    );
    for service in SERVICES {
        let run = scan.join(service).join("run");
        let text = fs::read_to_string(&run).unwrap();
        assert_eq!(
            text.matches(PATH_LINE).count(),
            1,
            "{service}/run: no single {PATH_LINE:?}"
        );
        let ours = format!("export PATH={}:$PATH\n", bin.display());
        fs::write(&run, text.replace(PATH_LINE, &ours)).unwrap();
    }
    assert_eq!(
        fs::read_to_string(scan.join("fdholder/notification-fd")).unwrap(),
        "1\n"
    );

    // `s6-svscan . &`
    let log = fs::File::create(root.join("log")).unwrap();
    let svscan = Command::new("/usr/bin/s6-svscan")
        .arg(".")
        .current_dir(&scan)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut ex = Example {
        root: root.clone(),
        bin,
        scan,
        svscan,
    };
    let started = Instant::now();

    // `until s6-svok fdholder; do sleep 0.1; done`
    // `s6-svwait -U -t 5000 fdholder`
    let supervised = poll(Duration::from_secs(10), || {
        ex.run("s6-svok", &["fdholder"])
            .status
            .success()
            .then_some(())
    });
    assert!(
        supervised.is_some(),
        "fdholder not supervised\n{}",
        ex.log()
    );
    ex.ok("s6-svwait", &["-U", "-t", "5000", "fdholder"]);
    // Ready means ready: the holder answers at once, no retry.
    ex.ok("s6-fdholder-list", &["fdholder/socket"]);
    assert_eq!(ex.svstat("up,ready", "fdholder"), "true true");

    // `$B/s6-fdholder-list fdholder/socket`: demo/listen, within seconds.
    let held = poll(Duration::from_secs(10), || {
        let l = ex.ok("s6-fdholder-list", &["fdholder/socket"]);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(held.as_deref(), Some("demo/listen\n"), "{}", ex.log());

    // `./client demo-serve/socket`: demo-serve's pid.
    let first = poll(Duration::from_secs(10), || ex.client_once());
    let first = first.unwrap_or_else(|| panic!("no answer from demo-serve\n{}", ex.log()));
    assert_eq!(first, ex.serve_pid());
    let meta = fs::metadata(ex.scan.join("demo-serve/socket")).unwrap();
    assert!(meta.file_type().is_socket());
    let socket_ino = meta.ino();

    // `s6-svstat demo-store`: done, and stays down.
    let store_done = poll(Duration::from_secs(5), || {
        let s = ex.svstat("up,wantedup,exitcode", "demo-store");
        (s == "false false 0").then_some(())
    });
    assert!(
        store_done.is_some(),
        "demo-store: {}\n{}",
        ex.svstat("up,wantedup,exitcode", "demo-store"),
        ex.log()
    );
    let setup = started.elapsed();

    // `s6-svc -wD -d demo-serve`, `./client demo-serve/socket &`,
    // `s6-svc -u demo-serve`: with no server, a connection is not refused,
    // it waits for the next server.
    ex.ok("s6-svc", &["-T", "5000", "-wD", "-d", "demo-serve"]);
    assert_eq!(ex.svstat("up", "demo-serve"), "false");
    let mut waiting = UnixStream::connect(ex.scan.join("demo-serve/socket"))
        .unwrap_or_else(|e| panic!("connect with demo-serve down: {e}\n{}", ex.log()));
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut client = ex
        .cmd("./client", &["demo-serve/socket"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        client.try_wait().unwrap().is_none(),
        "./client did not wait for the server: {:?}",
        client.wait_with_output()
    );
    ex.ok("s6-svc", &["-u", "demo-serve"]);
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).unwrap();
    let second = parse_pid(answer.trim());
    assert_ne!(second, first);
    assert_eq!(second, ex.serve_pid());
    let status = wait_for(&mut client, Duration::from_secs(10));
    let out = client.wait_with_output().unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "./client: {status:?} {out:?}"
    );
    assert_eq!(
        parse_pid(String::from_utf8_lossy(&out.stdout).trim()),
        second
    );

    // `./client demo-serve/socket 7 | uniq -c &`
    // `for i in 1 2 3; do sleep 1; s6-svc -wr -r demo-serve; done; wait`
    // and, at the same time, a client loop of our own that counts.
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let ours = {
        let (sock, stop) = (ex.scan.join("demo-serve/socket"), stop.0.clone());
        std::thread::spawn(move || client_loop(sock, stop))
    };
    let mut client = ex
        .cmd("./client", &["demo-serve/socket", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let mut servers = vec![second];
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        ex.ok("s6-svc", &["-T", "5000", "-wr", "-r", "demo-serve"]);
        let pid = ex.serve_pid();
        assert!(!servers.contains(&pid), "demo-serve not restarted");
        servers.push(pid);
    }
    let status = wait_for(&mut client, Duration::from_secs(15));
    drop(stop);
    let tally = ours.join().unwrap();
    if status.is_none() {
        let _ = client.kill();
    }
    let out = client.wait_with_output().unwrap();
    let stdout = reader.join().unwrap().unwrap();
    assert!(
        status.is_some_and(|s| s.success()) && out.stderr.is_empty(),
        "./client demo-serve/socket 7: {status:?}, stderr {:?}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ex.log()
    );
    // `uniq -c`: one line per server, in order, every one of them.
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for line in stdout.lines() {
        let pid = parse_pid(line);
        match runs.last_mut() {
            Some((p, n)) if *p == pid => *n += 1,
            _ => runs.push((pid, 1)),
        }
    }
    let by: Vec<u32> = runs.iter().map(|r| r.0).collect();
    assert_eq!(by, servers, "./client's answers by pid: {runs:?}");
    // Ours: no connection refused, none failed, none unanswered.
    assert_eq!(
        (tally.refused, tally.unanswered, &tally.other_errors),
        (0, 0, &Vec::new()),
        "{} answered",
        tally.answered.len()
    );
    let answered_by: BTreeSet<u32> = tally.answered.iter().copied().collect();
    assert!(
        answered_by.is_subset(&servers.iter().copied().collect()) && answered_by.len() >= 3,
        "our client loop's answers came from {answered_by:?}, servers {servers:?}"
    );

    // `s6-svc -u demo-store`: it runs, sees demo/listen held, does nothing.
    ex.ok("s6-svc", &["-T", "5000", "-wu", "-u", "demo-store"]);
    let store_done = poll(Duration::from_secs(5), || {
        (ex.svstat("up,wantedup,exitcode", "demo-store") == "false false 0").then_some(())
    });
    assert!(store_done.is_some(), "demo-store again\n{}", ex.log());
    assert_eq!(
        ex.ok("s6-fdholder-list", &["fdholder/socket"]),
        "demo/listen\n"
    );
    assert_eq!(
        fs::metadata(ex.scan.join("demo-serve/socket"))
            .unwrap()
            .ino(),
        socket_ino,
        "demo-store bound the socket again"
    );
    assert_eq!(ex.client_once(), Some(*servers.last().unwrap()));

    // `s6-svscanctl -t .`: every service down, then s6-svscan exits.
    ex.ok("s6-svscanctl", &["-t", "."]);
    let status = wait_for(&mut ex.svscan, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "s6-svscan: {status:?}\n{}",
        ex.log()
    );
    let left = poll(Duration::from_secs(5), || {
        procs_in(&root).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "left running: {:?}\n{}",
        procs_in(&root),
        ex.log()
    );
    // The holder's readiness newline went to s6-supervise (notification-fd),
    // not to s6-svscan's output, where every line is a message.
    let log = ex.log();
    assert!(
        !log.lines().any(str::is_empty),
        "a blank line in s6-svscan's output: is fdholder/notification-fd used?\n{log}"
    );
    eprintln!(
        "examples.rs: set up in {setup:?}; ./client's answers by pid {runs:?}, \
         our loop's {}; total {:?}",
        tally.answered.len(),
        started.elapsed()
    );
}

/// `examples/s6/sd-service`: a service written for systemd (Python's
/// `systemd.daemon`), under `s6-supervise` with `s6-fdholder-sdnotify`:
/// started with `s6-svc -u` (it has a `down` file, so that the walk-through
/// above does not start it), `s6-svwait -U` sees its `READY=1`, its
/// listener is stored as `sd/listener:00000000`; killed (`s6-svc -k`),
/// s6-supervise starts it again and it comes back ready with the same
/// listener (same st_dev and st_ino, seen from the service's own fstat),
/// while a client that connected when it was down is served.
#[test]
fn s6_sd_service_example() {
    if !have_debian_tools() {
        return;
    }
    if !common::have_python_systemd() {
        return;
    }
    let tmp = TempDir::new("examples-sd");
    let root = tmp.path().canonicalize().unwrap();
    let bin = root.join("bin");
    install_suite(&bin);
    let scan = root.join("scan");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/s6"),
        &scan,
    );
    for service in ["fdholder", "sd-service"] {
        let run = scan.join(service).join("run");
        let text = fs::read_to_string(&run).unwrap();
        assert_eq!(text.matches(PATH_LINE).count(), 1, "{service}/run");
        let ours = format!("export PATH={}:$PATH\n", bin.display());
        fs::write(&run, text.replace(PATH_LINE, &ours)).unwrap();
    }
    // Only the holder and this service run: the demo's are marked down.
    for service in ["demo-store", "demo-serve"] {
        fs::write(scan.join(service).join("down"), "").unwrap();
    }
    let log = fs::File::create(root.join("log")).unwrap();
    let svscan = Command::new("/usr/bin/s6-svscan")
        .arg(".")
        .current_dir(&scan)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ex = Example {
        root: root.clone(),
        bin,
        scan,
        svscan,
    };
    let supervised = poll(Duration::from_secs(10), || {
        let ok = |s| ex.run("s6-svok", &[s]).status.success();
        (ok("fdholder") && ok("sd-service")).then_some(())
    });
    assert!(supervised.is_some(), "not supervised\n{}", ex.log());
    ex.ok("s6-svwait", &["-U", "-t", "5000", "fdholder"]);
    assert_eq!(ex.svstat("up", "sd-service"), "false");

    // `s6-svc -u sd-service; s6-svwait -U sd-service`: up and ready.
    ex.ok("s6-svc", &["-u", "sd-service"]);
    ex.ok("s6-svwait", &["-U", "-t", "10000", "sd-service"]);
    let pid1: u32 = ex.svstat("pid", "sd-service").parse().unwrap();
    assert_eq!(
        ex.ok("s6-fdholder-list", &["fdholder/socket"]),
        "sd/listener:00000000\n",
        "{}",
        ex.log()
    );
    let sock = ex.scan.join("sd-service/socket");
    let ask = |sock: &Path| {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut a = String::new();
        s.read_to_string(&mut a).unwrap();
        let f: Vec<u64> = a.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(f.len(), 3, "{a:?}");
        (f[0] as u32, (f[1], f[2]))
    };
    let (answered, listener1) = ask(&sock);
    assert_eq!(answered, pid1);

    // `s6-svc -k sd-service`: killed; a client connects while it is down;
    // s6-supervise starts it again a second later.
    ex.ok("s6-svc", &["-k", "sd-service"]);
    let gone = poll(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid1}")).exists()).then_some(())
    });
    assert!(gone.is_some());
    let waiting = std::thread::spawn({
        let sock = sock.clone();
        move || ask(&sock)
    });
    let back = poll(Duration::from_secs(20), || {
        let s = ex.svstat("up,ready,pid", "sd-service");
        let f: Vec<&str> = s.split_whitespace().collect();
        (f.len() == 3 && f[0] == "true" && f[1] == "true" && f[2] != pid1.to_string())
            .then(|| f[2].parse::<u32>().unwrap())
    });
    let pid2 = back.unwrap_or_else(|| panic!("not back up and ready\n{}", ex.log()));
    let (answered, listener2) = waiting.join().unwrap();
    assert_eq!(answered, pid2, "the client that waited is served");
    assert_eq!(listener2, listener1, "the same listener");
    assert_eq!(ask(&sock), (pid2, listener1));
    assert_eq!(
        ex.ok("s6-fdholder-list", &["fdholder/socket"]),
        "sd/listener:00000000\n"
    );
    ex.ok("s6-svc", &["-d", "sd-service"]);
}
