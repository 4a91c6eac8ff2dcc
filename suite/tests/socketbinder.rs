//! s6-ipcserver-socketbinder, ours against the reference: what the exec'd
//! program finds on fd 0 (socket type, listening, O_NONBLOCK), the path's
//! permissions, the lock file, the umask, and every error.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, TempDir, reference, run};

const NAME: &str = "s6-ipcserver-socketbinder";

/// A case: arguments, how to prepare the directory, exit code, stderr.
type Case<'a> = (Vec<&'a str>, &'a dyn Fn(&Path), i32, String);

fn ours() -> PathBuf {
    common::ours("s6-ipcserver-socketbinder")
}

/// Prints, from the exec'd program: fd 0's link, its fdinfo flags, the
/// umask, and the kernel's table of Unix sockets.
const PROBE: &str =
    "readlink /proc/$$/fd/0; grep '^flags:' /proc/$$/fdinfo/0; umask; cat /proc/net/unix";

/// What the exec'd program saw, and what is left on disk.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    /// SOCK_STREAM 1, SOCK_DGRAM 2 (the Type column of /proc/net/unix).
    sock_type: u32,
    listening: bool,
    nonblock: bool,
    umask: String,
    /// Permissions of the socket path.
    mode: u32,
    /// Permissions of `path.lock`, if there is one.
    lock_mode: Option<u32>,
}

fn probe_out(r: &Run, dir: &Path, path: &str) -> Probe {
    assert_eq!(r.code, Some(0), "{r:?}");
    let mut lines = r.stdout.lines();
    let link = lines.next().unwrap();
    let inode = link
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .expect(link);
    let flags = lines.next().unwrap().strip_prefix("flags:").unwrap().trim();
    let flags = u32::from_str_radix(flags, 8).unwrap();
    let umask = lines.next().unwrap().to_string();
    // Num RefCount Protocol Flags Type St Inode [Path]
    let row: Vec<&str> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[6] == inode)
        .expect("fd 0 is not in /proc/net/unix");
    let mode = |p: PathBuf| {
        std::fs::symlink_metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777)
    };
    Probe {
        sock_type: u32::from_str_radix(row[4], 16).unwrap(),
        listening: u32::from_str_radix(row[3], 16).unwrap() & 0x10000 != 0,
        nonblock: flags & libc::O_NONBLOCK as u32 != 0,
        umask,
        mode: mode(dir.join(path)).unwrap(),
        lock_mode: mode(dir.join(format!("{path}.lock"))),
    }
}

/// Runs `bin opts sock sh -c PROBE` in a fresh directory.
fn probe(bin: &Path, opts: &[&str], setup: impl Fn(&Path)) -> Probe {
    let dir = TempDir::new("sb");
    setup(dir.path());
    let mut args: Vec<&str> = opts.to_vec();
    args.extend(["sock", "sh", "-c", PROBE]);
    probe_out(&run(bin, &args, dir.path(), &[]), dir.path(), "sock")
}

fn want(
    sock_type: u32,
    listening: bool,
    nonblock: bool,
    mode: u32,
    lock_mode: Option<u32>,
) -> Probe {
    // Our umask, which the program must find restored.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap()
        .trim()
        .to_string();
    Probe {
        sock_type,
        listening,
        nonblock,
        umask,
        mode,
        lock_mode,
    }
}

#[test]
fn what_the_program_sees() {
    let Some(refbin) = reference(NAME) else {
        return;
    };
    let cases: &[(&[&str], Probe)] = &[
        (&[], want(1, true, true, 0o777, Some(0o600))),
        (&["-d", "-M"], want(1, true, true, 0o777, Some(0o600))),
        (&["-a", "0750"], want(1, true, true, 0o750, Some(0o600))),
        (&["-a", "0444"], want(1, true, true, 0o444, Some(0o400))),
        (
            &["-a", "0700", "-B"],
            want(1, true, false, 0o700, Some(0o600)),
        ),
        (&["-B", "-b", "3"], want(1, true, false, 0o777, Some(0o600))),
        (&["-b0"], want(1, false, true, 0o777, Some(0o600))),
        (&["-m", "-b0"], want(2, false, true, 0o777, Some(0o600))),
        (
            &["-m", "-b", "0", "-M", "-B"],
            want(1, false, false, 0o777, Some(0o600)),
        ),
        (&["-D"], want(1, true, true, 0o777, None)),
        (
            &["-D", "-a", "0711", "-m", "-b0"],
            want(2, false, true, 0o711, None),
        ),
        (&["-D", "-d"], want(1, true, true, 0o777, Some(0o600))),
    ];
    for (opts, expected) in cases {
        let got = probe(&ours(), opts, |_| {});
        assert_eq!(&got, expected, "ours, options {opts:?}");
        assert_eq!(
            probe(&refbin, opts, |_| {}),
            got,
            "reference differs, options {opts:?}"
        );
    }
}

#[test]
fn d_replaces_an_existing_path() {
    let Some(refbin) = reference(NAME) else {
        return;
    };
    let setup = |d: &Path| std::fs::write(d.join("sock"), "old file").unwrap();
    let got = probe(&ours(), &[], setup);
    assert_eq!(got, want(1, true, true, 0o777, Some(0o600)));
    assert_eq!(probe(&refbin, &[], setup), got);
}

/// The reference's (Debian's 2.11) text as s6 2.15 prints it: skalibs 2.15's
/// `ipc_bind` says ENAMETOOLONG for a path too long, older ones EPROTO.
fn as_2_15(mut r: Run) -> Run {
    if r.stderr.contains(": unable to bind to ") && r.stderr.ends_with(": Protocol error\n") {
        r.stderr = r
            .stderr
            .replace(": Protocol error\n", ": File name too long\n");
    }
    r
}

/// Runs ours and the reference in twin directories prepared by `setup`;
/// both must print the same (the reference's text as 2.15's, see
/// [`as_2_15`]) and exit alike. Returns ours.
fn same(args: &[&str], setup: impl Fn(&Path)) -> Option<Run> {
    let refbin = reference(NAME)?;
    let (d1, d2) = (TempDir::new("sb"), TempDir::new("sb"));
    setup(d1.path());
    setup(d2.path());
    let a = run(&ours(), args, d1.path(), &[]);
    let b = as_2_15(run(&refbin, args, d2.path(), &[]));
    assert_eq!(a, b, "args {args:?}");
    Some(a)
}

fn usage() -> String {
    format!(
        "{NAME}: usage: {NAME} [ -d | -D ] [ -b backlog ] [ -M | -m ] [ -a perms ] [ -B ] path prog...\n"
    )
}

#[test]
fn usage_errors() {
    for args in [
        &[][..],
        &["sock"],
        &["-a", "8", "sock", "true"],
        &["-a", "0o7", "sock", "true"],
        &["-a", "", "sock", "true"],
        &["-b", "x", "sock", "true"],
        &["-b", "-1", "sock", "true"],
        &["-x", "sock", "true"],
        &["-b"],
        &["--long", "sock", "true"],
    ] {
        let Some(r) = same(args, |_| {}) else { return };
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (Some(100), usage().as_str()),
            "{args:?}"
        );
    }
}

#[test]
fn system_errors() {
    let long = "a".repeat(108);
    let busy = |d: &Path| {
        // Held by this process: the program, another process, must fail.
        let f = std::fs::File::create(d.join("sock.lock")).unwrap();
        rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        std::mem::forget(f);
    };
    let file = |d: &Path| std::fs::write(d.join("existing"), "x").unwrap();
    let cases: Vec<Case> = vec![
        (
            vec!["-D", "existing", "true"],
            &file,
            111,
            "unable to bind to existing: Address already in use".into(),
        ),
        (
            vec!["-m", "sock", "true"],
            &|_| {},
            111,
            "unable to listen to sock: Operation not supported".into(),
        ),
        (
            vec!["nodir/sock", "true"],
            &|_| {},
            111,
            "unable to bind to nodir/sock: No such file or directory".into(),
        ),
        (
            vec!["-D", "nodir/sock", "true"],
            &|_| {},
            111,
            "unable to bind to nodir/sock: No such file or directory".into(),
        ),
        (
            vec![&long, "true"],
            &|_| {},
            111,
            format!("unable to bind to {long}: File name too long"),
        ),
        (
            vec!["sock", "true"],
            &busy,
            111,
            "unable to bind to sock: Device or resource busy".into(),
        ),
        (
            vec!["sock", "/nonexistent/prog"],
            &|_| {},
            127,
            "unable to exec /nonexistent/prog: No such file or directory".into(),
        ),
    ];
    for (args, setup, code, msg) in cases {
        let Some(r) = same(&args, setup) else { return };
        assert_eq!(r.code, Some(code), "{args:?}: {r:?}");
        assert_eq!(r.stderr, format!("{NAME}: fatal: {msg}\n"), "{args:?}");
    }
}

/// Starts `bin opts sock sleep 30` and waits until it is `sleep`.
fn start(bin: &Path, opts: &[&str], dir: &Path) -> std::process::Child {
    let child = Command::new(bin)
        .args(opts)
        .args(["sock", "sleep", "30"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let comm = format!("/proc/{}/comm", child.id());
    let t = Instant::now();
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} never exec'd sleep",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn backlog_zero_is_bound_but_not_listening() {
    let Some(refbin) = reference(NAME) else {
        return;
    };
    for bin in [ours(), refbin] {
        for (opts, listening) in [
            (&[][..], true),
            (&["-b0"][..], false),
            (&["-b", "1"][..], true),
        ] {
            let dir = TempDir::new("sb");
            let mut child = start(&bin, opts, dir.path());
            let r = UnixStream::connect(dir.join("sock"));
            child.kill().unwrap();
            child.wait().unwrap();
            match r {
                Ok(_) => assert!(listening, "{} {opts:?}: connect succeeded", bin.display()),
                Err(e) => {
                    assert!(!listening, "{} {opts:?}: {e}", bin.display());
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED),
                        "{} {opts:?}",
                        bin.display()
                    );
                }
            }
        }
    }
}
