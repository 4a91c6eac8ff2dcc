//! `s6-fdholder-sdlisten`: gets every fd held under an id prefix and
//! execs a program with them at fds 3, 4, ... and described by
//! `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, as systemd hands a
//! service its sockets. See `docs/s6-fdholder-sdlisten.md`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::cli::{EXIT_REFUSED, EXIT_SYS, Prog, strerror};
use crate::sd;
use fdholder::client::Deadline;

const PROG: Prog = Prog {
    name: "s6-fdholder-sdlisten",
    usage: "s6-fdholder-sdlisten [ -t timeout ] [ -D ] path prefix prog...",
};

/// The first fd handed over (systemd's `SD_LISTEN_FDS_START`).
const FIRST: u32 = 3;

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (delete, deadline, args) = PROG.getopt_delete_timeout();
    let [socket, prefix, prog @ ..] = &args[..] else {
        PROG.die_usage()
    };
    if prog.is_empty() {
        PROG.die_usage();
    }
    let held = retrieve_held(&PROG, socket, prefix.as_bytes(), delete, deadline);
    let env = place(&PROG, held, prefix.as_bytes());
    PROG.exec(prog, &env)
}

/// The first half of the hand-back, shared with `s6-fdholder-sdnotify`:
/// connects to the daemon at `socket` and gets every fd held under
/// `prefix`, in [`sd::listen_order`], with its id; deletes them all from
/// the daemon too with `delete` (once all are retrieved). Dies with
/// `prog`'s messages on a failure; an id gone since the list is skipped
/// with a warning.
pub fn retrieve_held(
    prog: &Prog,
    socket: &OsStr,
    prefix: &[u8],
    delete: bool,
    deadline: Deadline,
) -> Vec<(Vec<u8>, OwnedFd)> {
    let shown = |id: &[u8]| String::from_utf8_lossy(id).into_owned();
    let mut client = prog.connect("", socket, deadline);
    let ids = client
        .list(deadline)
        .unwrap_or_else(|e| prog.die_unable(EXIT_REFUSED, "get fd list", &e));
    // Every fd is retrieved before any is deleted: a refusal or a
    // time-out on the way leaves the holder as it was.
    let mut held: Vec<(Vec<u8>, OwnedFd)> = Vec::new();
    for id in sd::listen_order(ids, prefix) {
        match client.retrieve(&id, deadline) {
            Ok(fd) => held.push((id, fd)),
            // Deleted since the list, by a client or its expiry: skipped.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => prog.warn(format_args!(
                "unable to retrieve fd for id {}: {}",
                shown(&id),
                strerror(&e)
            )),
            Err(e) => prog.die_unable(
                EXIT_REFUSED,
                format_args!("retrieve fd for id {}", shown(&id)),
                &e,
            ),
        }
    }
    if delete {
        for (id, _) in &held {
            match client.delete(id, deadline) {
                // Already gone: what -D asks for.
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => prog.die_unable(
                    EXIT_REFUSED,
                    format_args!("delete fd for id {}", shown(id)),
                    &e,
                ),
                _ => {}
            }
        }
    }
    held
}

/// The second half of the hand-back: puts the fds of `held` (ids under
/// `prefix`) at 3, 4, ... without close-on-exec, and returns the
/// environment modifications describing them (`LISTEN_PID` this process,
/// `LISTEN_FDS`, `LISTEN_FDNAMES`; all three unset when there are none),
/// for [`Prog::exec`]. Dies with `prog`'s messages on a failure.
pub fn place(
    prog: &Prog,
    held: Vec<(Vec<u8>, OwnedFd)>,
    prefix: &[u8],
) -> Vec<(OsString, Option<OsString>)> {
    let die_move = |e: io::Error| -> ! { prog.die_unable(EXIT_SYS, "move fd", &e) };
    let n = held.len();
    let mut names = Vec::new();
    for (i, (id, _)) in held.iter().enumerate() {
        if i > 0 {
            names.push(sd::SEPARATOR);
        }
        names.extend_from_slice(sd::fd_name(id, prefix).unwrap_or(sd::UNKNOWN));
    }
    // Each fd in turn goes to FIRST + k. Another fd still to be placed
    // that has that number is first moved above FIRST + n; an fd already
    // at its number only loses close-on-exec. So no more than one
    // descriptor beyond those handed over is ever needed.
    let top = i32::try_from(FIRST as usize + n).unwrap_or(i32::MAX);
    let mut fds: Vec<Option<OwnedFd>> = held.into_iter().map(|(_, fd)| Some(fd)).collect();
    let number = |fd: &OwnedFd| u32::try_from(fd.as_raw_fd()).ok();
    for (k, target) in (0..n).zip(FIRST..) {
        // Every fd not yet placed is in `fds` (a moved one is put back).
        let Some(fd) = fds[k].take() else { continue };
        if number(&fd) == Some(target) {
            if let Err(e) = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()) {
                die_move(e.into())
            }
            // Handed over: open, with this number, to the program.
            let _ = fd.into_raw_fd();
            continue;
        }
        let later = fds[k + 1..].iter_mut().flatten();
        if let Some(other) = later.into_iter().find(|f| number(f) == Some(target)) {
            match rustix::io::fcntl_dupfd_cloexec(&*other, top) {
                Ok(moved) => *other = moved,
                Err(e) => die_move(e.into()),
            }
        }
        // dup2 gives a descriptor without close-on-exec; the original goes.
        if let Err(e) = crate::sys::dup2_number(fd.as_fd(), target) {
            die_move(e)
        }
    }
    let var = |k: &str, v: Vec<u8>| (OsString::from(k), (n > 0).then(|| OsString::from_vec(v)));
    vec![
        var("LISTEN_PID", std::process::id().to_string().into_bytes()),
        var("LISTEN_FDS", n.to_string().into_bytes()),
        var("LISTEN_FDNAMES", names),
    ]
}
