//! `s6-fdholder-list`: prints the ids the daemon holds, one a line, quoted.
//! See `docs/s6-fdholder-list.md`.

// Not under `cargo test`, which builds each program as a test harness.
#![cfg_attr(not(test), no_main)]

use std::io::Write;

use fdholder::cli::{EXIT_REFUSED, EXIT_SYS, Prog, quote};

const PROG: Prog = Prog {
    name: "s6-fdholder-list",
    usage: "s6-fdholder-list [ -t timeout ] socket",
};

fdholder::c_main!(run);

#[cfg_attr(test, allow(dead_code))]
fn run() {
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
