//! `s6-fdholder-getdump`: gets every fd the daemon holds and execs a
//! program with them open and described in its environment.
//! See `docs/s6-fdholder-getdump.md`.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;

use crate::cli::{EXIT_REFUSED, EXIT_SYS, Prog};
use fdholder::Tain;

const PROG: Prog = Prog {
    name: "s6-fdholder-getdump",
    usage: "s6-fdholder-getdump [ -t timeout ] socket prog...",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (deadline, args) = PROG.getopt_timeout();
    let [socket, prog @ ..] = &args[..] else {
        PROG.die_usage()
    };
    if prog.is_empty() {
        PROG.die_usage();
    }
    let mut client = PROG.connect("", socket, deadline);
    let dump = client
        .getdump(deadline)
        .unwrap_or_else(|e| PROG.die_unable(EXIT_REFUSED, "get dump", &e));
    drop(client);
    let now = Tain::now();
    let mut env: Vec<(OsString, Option<OsString>)> = Vec::with_capacity(1 + 3 * dump.len());
    env.push(("S6_FD#".into(), Some(dump.len().to_string().into())));
    for (i, e) in dump.iter().enumerate() {
        // The fds stay open across exec: `dump` lives until then.
        if let Err(err) = rustix::io::fcntl_setfd(&e.fd, rustix::io::FdFlags::empty()) {
            PROG.die_unable(EXIT_SYS, "uncoe", &err.into());
        }
        env.push((
            format!("S6_FD_{i}").into(),
            Some(e.fd.as_raw_fd().to_string().into()),
        ));
        env.push((
            format!("S6_FDID_{i}").into(),
            Some(OsString::from_vec(e.id.clone())),
        ));
        let limit = e
            .limit
            .is_finite_from(now)
            .then(|| e.limit.to_text().into());
        env.push((format!("S6_FDLIMIT_{i}").into(), limit));
    }
    PROG.exec(prog, &env)
}
