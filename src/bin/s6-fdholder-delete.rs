//! `s6-fdholder-delete`: makes the daemon close and forget an fd.
//! See `docs/s6-fdholder-delete.md`.

// Not under `cargo test`, which builds each program as a test harness.
#![cfg_attr(not(test), no_main)]

use fdholder::cli::{EXIT_REFUSED, Prog};

const PROG: Prog = Prog {
    name: "s6-fdholder-delete",
    usage: "s6-fdholder-delete [ -t timeout ] socket id",
};

/// The C entry point, as the reference's programs have: std's runtime
/// setup is skipped (stdio sanitising, SIGPIPE ignored, stack-guard probe
/// through /proc/self/maps, sigaltstack), about 25 system calls that a
/// one-shot client does not need. std still works: arguments and the
/// environment come from glibc, and `process::exit` flushes stdout.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    run();
    std::process::exit(0)
}

#[cfg_attr(test, allow(dead_code))]
fn run() {
    let (opts, args) = PROG.getopt("t:");
    let mut deadline = None;
    for (c, v) in opts {
        match c {
            't' => deadline = PROG.timeout(&v),
            _ => PROG.die_usage(),
        }
    }
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
