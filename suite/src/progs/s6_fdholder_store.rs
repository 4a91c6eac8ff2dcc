//! `s6-fdholder-store`: gives a copy of one of its fds to the daemon.
//! See `docs/s6-fdholder-store.md`.

use std::time::Duration;

use crate::cli::{EXIT_REFUSED, Prog};
use fdholder::Tain;

const PROG: Prog = Prog {
    name: "s6-fdholder-store",
    usage: "s6-fdholder-store [ -d fd ] [ -t timeout ] [ -T fdtimeout ] socket id",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("d:t:T:");
    let (mut fd, mut deadline, mut fdtimeout) = (0, None, 0);
    for (c, v) in opts {
        match c {
            'd' => fd = PROG.uint(&v),
            't' => deadline = PROG.timeout(&v),
            'T' => fdtimeout = PROG.uint(&v),
            _ => PROG.die_usage(),
        }
    }
    let [socket, id, ..] = &args[..] else {
        PROG.die_usage()
    };
    let limit = (fdtimeout != 0).then(|| Tain::now() + Duration::from_millis(fdtimeout.into()));
    let mut client = PROG.connect("", socket, deadline);
    let r = crate::sys::borrow_fd_number(fd)
        .and_then(|fd| client.store(fd, id.as_encoded_bytes(), limit, deadline));
    if let Err(e) = r {
        PROG.die_unable(EXIT_REFUSED, "store fd", &e);
    }
}
