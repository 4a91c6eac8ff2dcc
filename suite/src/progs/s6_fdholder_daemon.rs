//! `s6-fdholder-daemon`: builds and execs the command line
//! `s6-ipcserver-socketbinder … path [s6-applyuidgid …] s6-fdholderd …`,
//! with the sibling programs found next to it (see
//! [`crate::multicall::sibling`]).
//! See `docs/s6-fdholder-daemon.md`.

use std::ffi::OsString;

use crate::cli::{EXIT_USAGE, Prog};
use crate::multicall::sibling;

const PROG: Prog = Prog {
    name: "s6-fdholder-daemon",
    usage: "s6-fdholder-daemon [ -v verbosity ] [ -d | -D ] [ -1 ] [ -c maxconn ] [ -n maxfds ] [ -b backlog ] [ -G gid,gid,... ] [ -g gid ] [ -u uid ] [ -U ] [ -t timeout ] [ -T lameducktimeout ] [ -S ] [ -i rulesdir | -x rulesfile ] path",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("1DdSv:c:n:b:u:g:G:Ut:T:i:x:");
    let (mut verbosity, mut notify, mut reuse, mut flag_u) = (1, false, true, false);
    let (mut maxconn, mut maxfds, mut backlog, mut uid, mut gid) = (0, 0, None, 0, 0);
    let (mut gids, mut timeout, mut ltimeout, mut rules) = (None, 0, 0, None);
    let mut no_sandbox = false;
    for (c, v) in opts {
        match c {
            'D' => reuse = false,
            'd' => reuse = true,
            '1' => notify = true,
            'S' => no_sandbox = true,
            'v' => verbosity = PROG.uint(&v),
            'c' => maxconn = PROG.uint(&v).max(1),
            'n' => maxfds = PROG.uint(&v).max(1),
            'b' => backlog = Some(PROG.uint(&v)),
            'u' => uid = PROG.uint(&v),
            'g' => gid = PROG.uint(&v),
            'G' => gids = Some(crate::cli::parse_gidlist(&v).unwrap_or_else(|| PROG.die_usage())),
            'U' => (flag_u, uid, gid, gids) = (true, 0, 0, None),
            't' => timeout = PROG.uint(&v),
            'T' => ltimeout = PROG.uint(&v),
            'i' => rules = Some(("-i", v)),
            'x' => rules = Some(("-x", v)),
            _ => PROG.die_usage(),
        }
    }
    let [path, ..] = &args[..] else {
        PROG.die_usage()
    };
    let Some((rflag, rpath)) = rules else {
        PROG.die(EXIT_USAGE, "no access rights specified!")
    };

    let mut argv: Vec<OsString> = sibling("s6-ipcserver-socketbinder");
    if !reuse {
        argv.push("-D".into());
    }
    if let Some(b) = backlog {
        argv.extend(["-b".into(), b.to_string().into()]);
    }
    argv.extend(["--".into(), path.clone()]);
    if flag_u || uid != 0 || gid != 0 || gids.is_some() {
        argv.extend(sibling("s6-applyuidgid"));
        if flag_u {
            argv.push("-Uz".into());
        }
        for (flag, val) in [("-u", uid), ("-g", gid)] {
            if val != 0 {
                argv.extend([flag.into(), val.to_string().into()]);
            }
        }
        if let Some(g) = &gids {
            argv.extend([
                "-G".into(),
                g.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
            ]);
        }
        argv.push("--".into());
    }
    argv.extend(sibling("s6-fdholderd"));
    if verbosity != 1 {
        argv.extend(["-v".into(), verbosity.to_string().into()]);
    }
    if notify {
        argv.push("-1".into());
    }
    if no_sandbox {
        argv.push("-S".into());
    }
    for (flag, val) in [
        ("-c", maxconn),
        ("-n", maxfds),
        ("-t", timeout),
        ("-T", ltimeout),
    ] {
        if val != 0 {
            argv.extend([flag.into(), val.to_string().into()]);
        }
    }
    argv.extend([rflag.into(), rpath]);
    PROG.exec(&argv, &[])
}
