//! `s6-fdholder-setdump`: sends the fds described in its environment (as
//! `s6-fdholder-getdump` sets it) to the daemon.
//! See `docs/s6-fdholder-setdump.md`.

use std::ffi::OsStr;

use crate::cli::{EXIT_REFUSED, EXIT_USAGE, Prog};
use fdholder::{DumpEntryRef, Tain};

const PROG: Prog = Prog {
    name: "s6-fdholder-setdump",
    usage: "s6-fdholder-setdump [ -t timeout ] socket",
};

/// Length of a timestamp's text form: `@` and 24 hex digits.
const TIMESTAMP_LEN: usize = 25;

fn var(name: &str) -> std::ffi::OsString {
    std::env::var_os(name).unwrap_or_else(|| PROG.die(EXIT_USAGE, format_args!("{name} not set")))
}

fn invalid(name: &str) -> ! {
    PROG.die(EXIT_USAGE, format_args!("invalid ${name}"))
}

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (deadline, args) = PROG.getopt_timeout();
    let [socket, ..] = &args[..] else {
        PROG.die_usage()
    };
    let n = crate::cli::parse_uint(&var("S6_FD#")).unwrap_or_else(|| invalid("S6_FD#"));
    let mut client = PROG.connect("", socket, deadline);
    if n == 0 {
        return;
    }
    let now = Tain::now();
    // S6_FD# is untrusted: reserve no more than a dump can really hold.
    let mut entries = Vec::with_capacity((n as usize).min(1 << 16));
    for i in 0..n {
        let name = format!("S6_FD_{i}");
        let fd = crate::cli::parse_uint(&var(&name)).unwrap_or_else(|| invalid(&name));
        let name = format!("S6_FDID_{i}");
        let id = var(&name);
        if id.is_empty() || id.len() > fdholder::proto::ID_MAX {
            invalid(&name);
        }
        let name = format!("S6_FDLIMIT_{i}");
        let limit = match std::env::var_os(&name) {
            None => Tain::infinite_from(now),
            Some(t) => {
                // As skalibs' timestamp_scan: `@` and 24 hex digits, what
                // follows them is ignored.
                let t = OsStr::as_encoded_bytes(&t);
                Tain::from_text(&t[..t.len().min(TIMESTAMP_LEN)]).unwrap_or_else(|| invalid(&name))
            }
        };
        entries.push((fd, id, limit));
    }
    let r = entries
        .iter()
        .map(|(fd, id, limit)| {
            let fd = crate::sys::borrow_fd_number(*fd)?;
            Ok(DumpEntryRef {
                id: id.as_encoded_bytes(),
                fd,
                limit: *limit,
            })
        })
        .collect::<std::io::Result<Vec<_>>>()
        .and_then(|dump| client.setdump(&dump, deadline));
    if let Err(e) = r {
        PROG.die_unable(EXIT_REFUSED, "set dump", &e);
    }
}
