//! `s6-applyuidgid`: sets supplementary groups, gid and uid, then executes
//! a program (see docs/s6-applyuidgid.md).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::cli::{self, EXIT_SYS, EXIT_USAGE, Prog};
use crate::sys;

const PROG: Prog = Prog {
    name: "s6-applyuidgid",
    usage: "s6-applyuidgid [ -z ] [ -u uid ] [ -g gid ] [ -G gidlist ] [ -U ] prog...",
};

/// Linux's NGROUPS_MAX.
const NGROUPS_MAX: usize = 65536;

/// Reads `$name` for `-U`: missing or not a number is a usage error.
fn env_uint(name: &str) -> u32 {
    let v = std::env::var_os(name)
        .unwrap_or_else(|| PROG.die(EXIT_USAGE, format_args!("{name} not set")));
    cli::parse_uint(&v).unwrap_or_else(|| PROG.die(EXIT_USAGE, format_args!("invalid ${name}")))
}

/// Scans a gid list; `None` if nothing could be read from a non-empty
/// string. Scanning stops silently at the first thing that is not a number.
fn gid_list(s: &[u8], max: usize) -> Option<Vec<u32>> {
    let (list, len) = cli::scan_uint_list(s, max);
    (len > 0 || s.is_empty()).then_some(list)
}

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("zUu:g:G:");
    let (mut uid, mut gid) = (0, 0);
    let mut groups: Option<Vec<u32>> = None;
    let mut unexport = false;
    // Options act in order: a later -u, -g, -G or -U overrides an earlier one.
    for (c, v) in opts {
        match c {
            'z' => unexport = true,
            'u' => uid = PROG.uint(&v),
            'g' => gid = PROG.uint(&v),
            'G' => {
                groups =
                    Some(gid_list(v.as_bytes(), NGROUPS_MAX).unwrap_or_else(|| PROG.die_usage()))
            }
            'U' => {
                uid = env_uint("UID");
                gid = env_uint("GID");
                let list = std::env::var_os("GIDLIST")
                    .unwrap_or_else(|| PROG.die(EXIT_USAGE, "GIDLIST not set"));
                groups = Some(
                    gid_list(list.as_bytes(), NGROUPS_MAX + 1)
                        .unwrap_or_else(|| PROG.die(EXIT_USAGE, "invalid $GIDLIST")),
                );
            }
            _ => PROG.die_usage(),
        }
    }
    if args.is_empty() {
        PROG.die_usage();
    }

    // Supplementary groups first (the primary gid leads the list), then the
    // gid, then the uid; 0 means "leave as is". Any failure is fatal, so the
    // program never runs with half the credentials applied.
    if let Some(list) = groups {
        let g = if gid != 0 {
            gid
        } else {
            rustix::process::getegid().as_raw()
        };
        let mut all = Vec::with_capacity(list.len() + 1);
        all.push(g);
        all.extend_from_slice(&list);
        if let Some(i) = all[1..].iter().position(|&x| x == g) {
            all.remove(i + 1);
        }
        sys::setgroups(&all)
            .unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "set supplementary group list", &e));
    }
    if gid != 0 {
        sys::setgid(gid).unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "setgid", &e));
    }
    if uid != 0 {
        sys::setuid(uid).unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "setuid", &e));
    }

    let unset: Vec<(OsString, Option<OsString>)> = if unexport {
        ["UID", "GID", "GIDLIST"]
            .iter()
            .map(|n| (OsString::from(n), None))
            .collect()
    } else {
        Vec::new()
    };
    PROG.exec(&args, &unset)
}
