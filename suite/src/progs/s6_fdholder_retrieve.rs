//! `s6-fdholder-retrieve`: gets an fd from the daemon and execs a program
//! with it as stdin. See `docs/s6-fdholder-retrieve.md`.

use crate::cli::{EXIT_REFUSED, EXIT_SYS, Prog};

const PROG: Prog = Prog {
    name: "s6-fdholder-retrieve",
    usage: "s6-fdholder-retrieve [ -D ] [ -t timeout ] socket id prog...",
};

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (delete, deadline, args) = PROG.getopt_delete_timeout();
    let [socket, id, prog @ ..] = &args[..] else {
        PROG.die_usage()
    };
    if prog.is_empty() {
        PROG.die_usage();
    }
    let mut client = PROG.connect("", socket, deadline);
    let id_bytes = id.as_encoded_bytes();
    let r = if delete {
        client.retrieve_delete(id_bytes, deadline)
    } else {
        client.retrieve(id_bytes, deadline)
    };
    let fd = r.unwrap_or_else(|e| {
        PROG.die_unable(
            EXIT_REFUSED,
            format_args!("retrieve fd for id {}", id.to_string_lossy()),
            &e,
        )
    });
    drop(client);
    // dup2 onto fd 0 gives a descriptor without close-on-exec.
    if let Err(e) = rustix::stdio::dup2_stdin(&fd) {
        PROG.die_unable(EXIT_SYS, "move fd", &e.into());
    }
    drop(fd);
    PROG.exec(prog, &[])
}
