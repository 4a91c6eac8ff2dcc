//! The multicall binary itself: `fdholder --version`, `--list`,
//! `--install DIR`, `fdholder PROGRAM args...`, and how
//! `s6-fdholder-daemon` finds its siblings when no link exists.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Daemon, Impl, TempDir, multicall};

/// The programs, as `--list` must print them.
const PROGRAMS: &[&str] = &[
    "s6-accessrules-cdb-from-fs",
    "s6-accessrules-fs-from-cdb",
    "s6-applyuidgid",
    "s6-fdholder-daemon",
    "s6-fdholder-delete",
    "s6-fdholder-getdump",
    "s6-fdholder-list",
    "s6-fdholder-retrieve",
    "s6-fdholder-sdlisten",
    "s6-fdholder-sdnotify",
    "s6-fdholder-setdump",
    "s6-fdholder-store",
    "s6-fdholder-transferdump",
    "s6-fdholderd",
    "s6-ipcserver-socketbinder",
];

fn fdholder(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(multicall())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const USAGE: &str = "fdholder: usage: fdholder program [ args... ] | fdholder --install dir | fdholder --list | fdholder --version\n";

#[test]
fn version_list_and_usage() {
    let (code, out, err) = fdholder(&["--version"]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert_eq!(
        out,
        format!(
            "fdholder {}: the s6 fd-holding suite in Rust (skarnet s6 2.11 to 2.15 compatible)\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    let (code, out, _) = fdholder(&["--list"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().collect::<Vec<_>>(), PROGRAMS);
    for bad in [
        &[][..],
        &["--help"],
        &["nosuchprogram"],
        &["--install"],
        &["--install", "a", "b"],
    ] {
        assert_eq!(
            fdholder(bad),
            (Some(100), String::new(), USAGE.to_string()),
            "{bad:?}"
        );
    }
}

/// The multicall binary at `to`: a hard link where it can be, else a copy
/// made by `cp` ([`common::copy_executable`]: no ETXTBSY at its first exec).
fn place_binary(to: &Path) {
    if std::fs::hard_link(multicall(), to).is_err() {
        common::copy_executable(&multicall(), to);
    }
}

/// The link `dir/name` and where it points.
fn link_target(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    assert!(
        std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{}",
        p.display()
    );
    std::fs::read_link(p).unwrap()
}

#[test]
fn install_makes_links_and_replaces_only_links() {
    let t = TempDir::new("multicall-install");
    // Elsewhere than the binary: absolute links.
    let (code, out, err) = fdholder(&["--install", t.to_str().unwrap()]);
    assert_eq!((code, out.as_str(), err.as_str()), (Some(0), "", ""));
    for name in PROGRAMS {
        assert_eq!(link_target(&t, name), multicall().canonicalize().unwrap());
    }
    // A link run by its name is that program.
    let o = Command::new(t.join("s6-fdholder-list")).output().unwrap();
    assert_eq!(o.status.code(), Some(100));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "s6-fdholder-list: usage: s6-fdholder-list [ -t timeout ] [ -l | -j ] socket\n"
    );
    // Next to the binary: relative links; a stale link is replaced, a file
    // that is not a link is left alone (exit 1, a warning for it).
    let bin = t.join("bin");
    std::fs::create_dir(&bin).unwrap();
    place_binary(&bin.join("fdholder"));
    std::os::unix::fs::symlink("/nonexistent", bin.join("s6-fdholder-list")).unwrap();
    std::fs::write(bin.join("s6-fdholderd"), "not ours").unwrap();
    let o = Command::new(bin.join("fdholder"))
        .arg("--install")
        .arg(&bin)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "fdholder: warning: not replacing {}: it is not a symbolic link\n",
            bin.join("s6-fdholderd").display()
        )
    );
    assert_eq!(
        std::fs::read(bin.join("s6-fdholderd")).unwrap(),
        b"not ours"
    );
    for name in PROGRAMS.iter().filter(|n| **n != "s6-fdholderd") {
        assert_eq!(link_target(&bin, name), Path::new("fdholder"), "{name}");
    }
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&bin)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), PROGRAMS.len() + 1, "{names:?}");
    // A directory that does not exist.
    let (code, _, err) = fdholder(&["--install", "/nonexistent-dir"]);
    assert_eq!(code, Some(111));
    assert!(
        err.starts_with("fdholder: fatal: unable to open /nonexistent-dir: "),
        "{err}"
    );
}

#[test]
fn program_as_first_argument() {
    let d = Daemon::start(Impl::Ours);
    let file = std::fs::File::open("/dev/null").unwrap();
    d.client()
        .store(std::os::fd::AsFd::as_fd(&file), b"x", None, None)
        .unwrap();
    let sock = d.sock.to_str().unwrap();
    assert_eq!(
        fdholder(&["s6-fdholder-list", sock]),
        (Some(0), "x\n".to_string(), String::new())
    );
    // Options are the program's, and its messages name it.
    assert_eq!(
        fdholder(&["s6-fdholder-list", "-Z"]),
        (
            Some(100),
            String::new(),
            "s6-fdholder-list: usage: s6-fdholder-list [ -t timeout ] [ -l | -j ] socket\n"
                .to_string()
        )
    );
}

/// `s6-fdholder-daemon` run as `fdholder s6-fdholder-daemon` from a
/// directory with no links: it runs its siblings as `fdholder NAME`, and
/// the daemon comes up and serves.
#[test]
fn daemon_launcher_without_links() {
    let t = TempDir::new("multicall-lonely");
    let exe = t.join("fdholder");
    place_binary(&exe);
    let rules = common::full_rules(&t);
    let sock = t.join("s");
    let mut child = Command::new(&exe)
        .args(["s6-fdholder-daemon", "-1", "-i"])
        .arg(&rules)
        .arg(&sock)
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Readiness: one newline on stdout once it listens.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "\n");
    let o = Command::new(&exe)
        .args(["s6-fdholder-list"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // It is s6-fdholderd, run by this binary.
    let status = std::fs::read_to_string(format!("/proc/{}/cmdline", child.id())).unwrap();
    let argv: Vec<&str> = status.split('\0').collect();
    assert_eq!(
        &argv[..2],
        [exe.to_str().unwrap(), "s6-fdholderd"],
        "{argv:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
