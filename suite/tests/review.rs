//! A second review's findings: each test here failed on the build it
//! was written against (or pins what was checked and found sound).

mod common;

use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use common::*;
use fdholder::Tain;

/// The daemon's list after the same requests to ours and the reference's.
fn lists_after(script: impl Fn(&mut fdholder::Client, std::os::fd::BorrowedFd<'_>)) -> Vec<String> {
    let file = std::fs::File::open("/dev/null").unwrap();
    [Impl::Ours, Impl::Reference]
        .map(Daemon::start)
        .iter()
        .map(|d| {
            let mut c = d.client();
            script(&mut c, file.as_fd());
            let o = Command::new(prog(d.which, "s6-fdholder-list"))
                .arg(&d.sock)
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
            String::from_utf8(o.stdout).unwrap()
        })
        .collect()
}

fn ids(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// A setdump replacing several held ids (one of them twice in the same
/// dump), then stores into the slots freed.
#[test]
fn store_order_after_a_setdump_replacing_several_ids() {
    if !have_reference() {
        return;
    }
    let l = lists_after(|c, fd| {
        for id in ["a", "b", "c", "d", "e"] {
            c.store(fd, id.as_bytes(), None, None).unwrap();
        }
        c.delete(b"c", None).unwrap();
        let dump = ids(&["e", "x", "a", "y", "b"]);
        c.setdump(&entries_for(&dump, fd), None).unwrap();
        for id in ["p", "q", "r", "s"] {
            c.store(fd, id.as_bytes(), None, None).unwrap();
        }
    });
    assert_eq!(l[0], l[1]);
}

/// Expiries free slots in the reference's order too.
#[test]
fn store_order_after_expiries() {
    if !have_reference() {
        return;
    }
    let l = lists_after(|c, fd| {
        let soon = |ms| {
            Some(Tain::from_system_time(
                std::time::SystemTime::now() + Duration::from_millis(ms),
            ))
        };
        c.store(fd, b"a", None, None).unwrap();
        c.store(fd, b"b", soon(300), None).unwrap();
        c.store(fd, b"c", None, None).unwrap();
        c.store(fd, b"d", soon(200), None).unwrap();
        c.store(fd, b"e", soon(250), None).unwrap();
        c.store(fd, b"f", None, None).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        // Wakes the daemon, whose expiry runs before the next request.
        let _ = c.list(None).unwrap();
        for id in ["p", "q", "r", "s"] {
            c.store(fd, id.as_bytes(), None, None).unwrap();
        }
    });
    assert_eq!(l[0], l[1]);
}

/// Fds with the same limit, the later stored in lower slots: the
/// reference shifts a store's limit by 1 ns while it equals a held one's
/// (so `b` at L + 1 ns pushes `c`, sent with L, to L + 2 ns), expires them
/// in that order and frees their slots so; the next stores take them last
/// freed first. Ours expired equal limits in slot order.
#[test]
fn store_order_after_equal_limits_expire() {
    if !have_reference() {
        return;
    }
    let l = lists_after(|c, fd| {
        let at = std::time::SystemTime::now() + Duration::from_millis(300);
        let limit = Some(Tain::from_system_time(at));
        let later = Some(Tain::from_system_time(at + Duration::from_nanos(1)));
        for id in ["x0", "x1", "x2"] {
            c.store(fd, id.as_bytes(), None, None).unwrap();
        }
        c.store(fd, b"a", limit, None).unwrap();
        c.store(fd, b"b", later, None).unwrap();
        c.delete(b"x0", None).unwrap();
        c.delete(b"x1", None).unwrap();
        c.store(fd, b"c", limit, None).unwrap();
        c.store(fd, b"d", limit, None).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let _ = c.list(None).unwrap();
        for id in ["p", "q", "r", "s", "t"] {
            c.store(fd, id.as_bytes(), None, None).unwrap();
        }
    });
    assert_eq!(l[0], l[1]);
}

/// The multicall binary as `dir/fdholder`, hard-linked (or copied by `cp`).
fn place_binary(to: &std::path::Path) {
    if std::fs::hard_link(multicall(), to).is_err() {
        common::copy_executable(&multicall(), to);
    }
}

/// `fdholder s6-fdholder-daemon` with the binary in a directory it shares
/// with another package's programs (Debian's /usr/bin): the sibling
/// lookup took the other package's `s6-ipcserver-socketbinder`, though
/// the binary is named `fdholder` ("ours never runs another package's
/// programs by accident", docs/fdholder.md). Run as `fdholder PROGRAM`,
/// it runs its siblings as `fdholder NAME`, whatever the directory holds.
#[test]
fn daemon_launcher_never_runs_a_foreign_sibling() {
    let t = tmpdir("review-foreign");
    let exe = t.join("fdholder");
    place_binary(&exe);
    let foreign = t.join("s6-ipcserver-socketbinder");
    std::fs::write(&foreign, "#!/bin/sh\necho foreign\nexit 42\n").unwrap();
    std::fs::set_permissions(
        &foreign,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(t.join("s6-fdholderd"), "#!/bin/sh\nexit 43\n").unwrap();
    let rules = full_rules(t.path());
    let sock = t.join("s");
    let mut child = Command::new(&exe)
        .args(["s6-fdholder-daemon", "-1", "-i"])
        .arg(&rules)
        .arg(&sock)
        .env("PATH", "/nonexistent")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let argv = std::fs::read_to_string(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line, "\n", "not our daemon");
    let argv: Vec<&str> = argv.split('\0').collect();
    assert_eq!(
        argv[..2],
        [exe.to_str().unwrap(), "s6-fdholderd"],
        "{argv:?}"
    );
}

/// `s6-fdholder-sdlisten` put n fds at 3 .. 3 + n by first copying every
/// one above 3 + n: it needed 2n + 3 descriptors where 3 + n (and one
/// spare) do, so 40 fds under RLIMIT_NOFILE 64 failed with
/// `unable to move fd: Too many open files` (and 511 under the usual
/// 1024, within the daemon's default `-n` of 1000).
#[test]
fn sdlisten_places_fds_within_the_descriptor_limit() {
    let d = Daemon::start(Impl::Ours);
    let file = std::fs::File::open("/dev/null").unwrap();
    let mut c = d.client();
    for i in 0..40 {
        c.store(file.as_fd(), format!("p/{i:02}").as_bytes(), None, None)
            .unwrap();
    }
    drop(c);
    let o = Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(ours("s6-fdholder-sdlisten"))
        .arg(&d.sock)
        .args(["p/", "sh", "-c", "echo $LISTEN_FDS"])
        .output()
        .unwrap();
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(0), "40\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
