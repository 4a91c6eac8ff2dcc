//! `s6-fdholder-delete`: makes the daemon close and forget an fd.
//! See `docs/s6-fdholder-delete.md`.

use crate::cli::{EXIT_REFUSED, Prog};

const PROG: Prog = Prog {
    name: "s6-fdholder-delete",
    usage: "s6-fdholder-delete [ -t timeout ] socket id",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (deadline, args) = PROG.getopt_timeout();
    let [socket, id, ..] = &args[..] else {
        PROG.die_usage()
    };
    let mut client = PROG.connect("", socket, deadline);
    if let Err(e) = client.delete(id.as_encoded_bytes(), deadline) {
        // The reference names the socket here; we name the id.
        PROG.die_unable(
            EXIT_REFUSED,
            format_args!("delete fd for id {}", id.to_string_lossy()),
            &e,
        );
    }
}
