//! The multicall entry point: one binary, `fdholder`, runs as the program
//! its name says (the basename of `argv[0]`, e.g. through a link named
//! `s6-fdholderd`), or as `fdholder PROGRAM args...`. Run as itself, it
//! also installs the links (`--install DIR`), lists the programs (`--list`)
//! and says what it is (`--version`). See `docs/fdholder.md`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::cli::{EXIT_REFUSED, EXIT_SYS, Prog};
use crate::progs::{self, PROGRAMS};

const PROG: Prog = Prog {
    name: "fdholder",
    usage: "fdholder program [ args... ] | fdholder --install dir | fdholder --list | fdholder --version",
};

/// What `fdholder --version` prints.
pub const VERSION: &str = concat!(
    "fdholder ",
    env!("CARGO_PKG_VERSION"),
    ": the s6 fd-holding suite in Rust (skarnet s6 2.11 to 2.15 compatible)\n"
);

/// Runs the program that `argv[0]` names, or `fdholder` itself.
pub fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if let Some(run) = progs::find(basename(&argv0)) {
        return run();
    }
    let Some(first) = args.next() else {
        PROG.die_usage()
    };
    match first.as_bytes() {
        b"--version" => print(VERSION.as_bytes()),
        b"--list" => {
            let mut out = String::new();
            for (name, _) in PROGRAMS {
                out.push_str(name);
                out.push('\n');
            }
            print(out.as_bytes())
        }
        b"--install" => match (args.next(), args.next()) {
            (Some(dir), None) => install(Path::new(&dir)),
            _ => PROG.die_usage(),
        },
        name => match progs::find(name) {
            Some(run) => {
                crate::cli::set_args_skipped(2);
                run()
            }
            None => PROG.die_usage(),
        },
    }
}

/// The last component of a path given as `argv[0]`.
fn basename(argv0: &OsString) -> &[u8] {
    let b = argv0.as_bytes();
    b.rsplit(|&c| c == b'/').next().unwrap_or(b)
}

/// Writes `out` to stdout, or dies 111.
fn print(out: &[u8]) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_all(out) {
        PROG.die_unable(EXIT_SYS, "write to stdout", &e);
    }
}

/// The path of this executable, resolved (`/proc/self/exe`).
pub fn self_exe() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

/// `--install DIR`: makes `DIR/PROGRAM` a symbolic link to this binary for
/// every program (a relative link when the binary is in `DIR`). A link that
/// is there already is replaced atomically; a file that is not a link is
/// left alone with a warning, and the exit code is then 1.
fn install(dir: &Path) {
    let exe = self_exe().unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "find own executable", &e));
    let same_dir = match (std::fs::canonicalize(dir), exe.parent()) {
        (Ok(d), Some(p)) => d == p,
        (Err(e), _) => PROG.die_unable(EXIT_SYS, format_args!("open {}", dir.display()), &e),
        _ => false,
    };
    let target: PathBuf = match (same_dir, exe.file_name()) {
        (true, Some(n)) => n.into(),
        _ => exe.clone(),
    };
    let mut refused = false;
    for (name, _) in PROGRAMS {
        let link = dir.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&link) {
            if !m.file_type().is_symlink() {
                PROG.warn(format_args!(
                    "not replacing {}: it is not a symbolic link",
                    link.display()
                ));
                refused = true;
                continue;
            }
        }
        let tmp = dir.join(format!(".{name}.fdholder-install.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let made = std::os::unix::fs::symlink(&target, &tmp).and_then(|()| {
            std::fs::rename(&tmp, &link).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        });
        if let Err(e) = made {
            PROG.die_unable(EXIT_SYS, format_args!("make link {}", link.display()), &e);
        }
    }
    if refused {
        std::process::exit(EXIT_REFUSED);
    }
}

/// How to run the sibling program `name` from a program of this binary:
/// the link `name` next to `argv[0]` when run through a link and there is
/// one; else the link next to this binary; else this binary itself as
/// `fdholder name` (when it is not itself named after a program, as a copy
/// would be); else `name`, searched in `PATH`. The first word is what to
/// exec.
///
/// Run as `fdholder PROGRAM` (not through a link), it is this binary as
/// `fdholder name` straight away: the binary's directory may hold another
/// package's programs of the same names (Debian's `/usr/bin`), which the
/// first two steps would take.
pub fn sibling(name: &str) -> Vec<OsString> {
    let next_to = |dir: Option<&Path>| {
        dir.map(|d| d.join(name))
            .filter(|p| p.exists())
            .map(|p| vec![p.into_os_string()])
    };
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    let through_link = argv0
        .as_deref()
        .filter(|p| p.as_os_str().as_bytes().contains(&b'/'));
    let exe = self_exe().ok();
    let multicall = exe
        .clone()
        .filter(|e| progs::find(e.file_name().map_or(&[][..], |n| n.as_bytes())).is_none());
    if crate::cli::run_by_first_argument() {
        if let Some(e) = multicall.clone() {
            return vec![e.into_os_string(), name.into()];
        }
    }
    next_to(through_link.and_then(Path::parent))
        .or_else(|| next_to(exe.as_deref().and_then(Path::parent)))
        .or_else(|| multicall.map(|e| vec![e.into_os_string(), name.into()]))
        .unwrap_or_else(|| vec![name.into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_found_by_its_name() {
        for (name, _) in PROGRAMS {
            assert!(progs::find(name.as_bytes()).is_some(), "{name}");
        }
        assert!(progs::find(b"fdholder").is_none());
        assert_eq!(basename(&"/usr/bin/s6-fdholderd".into()), b"s6-fdholderd");
        assert_eq!(basename(&"s6-fdholderd".into()), b"s6-fdholderd");
    }
}
