//! `s6-fdholder-list`: prints the ids the daemon holds, one a line, quoted.
//! See `docs/s6-fdholder-list.md`.

use std::io::Write;

use crate::cli::{EXIT_REFUSED, EXIT_SYS, Prog, quote};

const PROG: Prog = Prog {
    name: "s6-fdholder-list",
    usage: "s6-fdholder-list [ -t timeout ] socket",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (deadline, args) = PROG.getopt_timeout();
    let [socket, ..] = &args[..] else {
        PROG.die_usage()
    };
    let mut client = PROG.connect("", socket, deadline);
    let ids = client
        .list(deadline)
        .unwrap_or_else(|e| PROG.die_unable(EXIT_REFUSED, "get fd list", &e));
    let mut out = Vec::new();
    for id in &ids {
        quote(&mut out, id);
        out.push(b'\n');
    }
    if let Err(e) = std::io::stdout().lock().write_all(&out) {
        PROG.die_unable(EXIT_SYS, "write to stdout", &e);
    }
}
