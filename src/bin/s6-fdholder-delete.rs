//! `s6-fdholder-delete`: makes the daemon close and forget an fd.
//! See `docs/s6-fdholder-delete.md`.

// Not under `cargo test`, which builds each program as a test harness.
#![cfg_attr(not(test), no_main)]

use fdholder::cli::{EXIT_REFUSED, Prog};

const PROG: Prog = Prog {
    name: "s6-fdholder-delete",
    usage: "s6-fdholder-delete [ -t timeout ] socket id",
};

fdholder::c_main!(run);

#[cfg_attr(test, allow(dead_code))]
fn run() {
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
