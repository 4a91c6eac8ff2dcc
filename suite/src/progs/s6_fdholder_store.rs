//! `s6-fdholder-store`: gives a copy of one of its fds to the daemon.
//! See `docs/s6-fdholder-store.md`.

use std::time::Duration;

use crate::cli::{EXIT_REFUSED, Prog};
use fdholder::Tain;

const PROG: Prog = Prog {
    name: "s6-fdholder-store",
    usage: "s6-fdholder-store [ -H ] [ -d fd ] [ -t timeout ] [ -T fdtimeout ] socket id",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("Hd:t:T:");
    let (mut fd, mut deadline, mut fdtimeout, mut hangup) = (0, None, 0, false);
    for (c, v) in opts {
        match c {
            'H' => hangup = true,
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
    let id = id.as_encoded_bytes();
    let r = crate::sys::borrow_fd_number(fd).and_then(|fd| match hangup {
        false => client.store(fd, id, limit, deadline),
        true => client.store_dropping_on_hangup(fd, id, limit, deadline),
    });
    match r {
        Ok(()) => {}
        // A refusal, as the daemon's others (exit 1, as s6 exits for any
        // failed store): the daemon closed the connection on the request.
        Err(e) if hangup && e.raw_os_error() == Some(libc::EOPNOTSUPP) => PROG.die(
            EXIT_REFUSED,
            "unable to store fd: the daemon does not support dropping on hang-up",
        ),
        Err(e) => PROG.die_unable(EXIT_REFUSED, "store fd", &e),
    }
}
