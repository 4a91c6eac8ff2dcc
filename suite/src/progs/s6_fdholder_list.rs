//! `s6-fdholder-list`: prints the ids the daemon holds, one a line, quoted;
//! with `-l` or `-j`, what each held fd is (the describe request).
//! See `docs/s6-fdholder-list.md`.

use std::io::Write;

use fdholder::describe::{Addr, Description, End, Held, Kind};

use crate::cli::{EXIT_REFUSED, EXIT_SYS, Prog, quote};

const PROG: Prog = Prog {
    name: "s6-fdholder-list",
    usage: "s6-fdholder-list [ -t timeout ] [ -l | -j ] socket",
};

/// How to print.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Ids only, as the reference prints them.
    Ids,
    /// `-l`: one human line per fd.
    Long,
    /// `-j`: one JSON object per fd.
    Json,
}

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("t:lj");
    let (mut deadline, mut format) = (None, Format::Ids);
    for (c, v) in opts {
        match c {
            'l' => format = Format::Long,
            'j' => format = Format::Json,
            _ => deadline = PROG.timeout(&v),
        }
    }
    let [socket, ..] = &args[..] else {
        PROG.die_usage()
    };
    let mut client = PROG.connect("", socket, deadline);
    let mut out = Vec::new();
    if format == Format::Ids {
        let ids = client
            .list(deadline)
            .unwrap_or_else(|e| PROG.die_unable(EXIT_REFUSED, "get fd list", &e));
        for id in &ids {
            quote(&mut out, id);
            out.push(b'\n');
        }
    } else {
        let held = client.describe(deadline).unwrap_or_else(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                PROG.die(
                    EXIT_REFUSED,
                    "unable to describe fds: the daemon does not know the describe request \
                     (an s6-fdholderd from s6?): run s6-fdholder-list without -l or -j",
                )
            }
            PROG.die_unable(EXIT_REFUSED, "describe fds", &e)
        });
        let now = fdholder::Tain::now();
        for h in &held {
            line(&mut out, h, now, format == Format::Json);
        }
    }
    if let Err(e) = std::io::stdout().lock().write_all(&out) {
        PROG.die_unable(EXIT_SYS, "write to stdout", &e);
    }
}

/// A field's value.
enum Val {
    /// Bytes, printed quoted as ids are (a JSON string of that form).
    Str(Vec<u8>),
    Num(u64),
    Bool(bool),
    /// Nothing: `none` (JSON `null`).
    Null,
}

fn s(v: impl Into<Vec<u8>>) -> Val {
    Val::Str(v.into())
}

fn put(out: &mut Vec<u8>, v: &Val, json: bool) {
    match v {
        Val::Str(b) => {
            let mut q = Vec::new();
            quote(&mut q, b);
            if json {
                out.push(b'"');
                for c in q {
                    if c == b'"' || c == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(c);
                }
                out.push(b'"');
            } else {
                out.extend_from_slice(&q);
            }
        }
        Val::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Val::Bool(b) => out.extend_from_slice(match (json, *b) {
            (true, true) => b"true",
            (true, false) => b"false",
            (false, true) => b"yes",
            (false, false) => b"no",
        }),
        Val::Null => out.extend_from_slice(if json { b"null" } else { b"none" }),
    }
}

/// Prints one held fd: `id TAB expiry TAB kind key=value...`, or a JSON
/// object with the same keys.
fn line(out: &mut Vec<u8>, h: &Held, now: fdholder::Tain, json: bool) {
    let left = h.limit.map(|l| l.duration_since(now).as_secs());
    let d = &h.description;
    let mut f: Vec<(&str, Val)> = Vec::new();
    if json {
        f.push(("id", s(&h.id[..])));
        let hex: String = h.id.iter().map(|c| format!("{c:02x}")).collect();
        f.push(("id_hex", s(hex)));
        f.push(("expires_in", left.map_or(Val::Null, Val::Num)));
        f.push(("kind", s(d.kind.name())));
        f.push(("mode", Val::Num(d.mode.into())));
        f.push(("dev", Val::Num(d.dev)));
        f.push(("ino", Val::Num(d.ino)));
    } else {
        quote(out, &h.id);
        match left {
            Some(n) => out.extend_from_slice(format!("\t{n}s\t").as_bytes()),
            None => out.extend_from_slice(b"\tnever\t"),
        }
        out.extend_from_slice(d.kind.name().as_bytes());
    }
    f.push(("flags", s(flags(d.flags))));
    fields(&mut f, d);
    for (i, (k, v)) in f.iter().enumerate() {
        if json {
            out.extend_from_slice(if i == 0 { b"{\"" } else { b",\"" });
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
        } else {
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
        }
        put(out, v, json);
    }
    out.extend_from_slice(if json { b"}\n" } else { b"\n" });
}

/// The fields particular to the kind (a path or name last).
fn fields(f: &mut Vec<(&str, Val)>, d: &Description) {
    match &d.kind {
        Kind::Socket(so) => {
            let family = match so.family as i32 {
                libc::AF_UNIX => s("unix"),
                libc::AF_INET => s("inet"),
                libc::AF_INET6 => s("inet6"),
                libc::AF_NETLINK => s("netlink"),
                libc::AF_PACKET => s("packet"),
                n => s(n.to_string()),
            };
            let sotype = match so.sotype as i32 {
                libc::SOCK_STREAM => s("stream"),
                libc::SOCK_DGRAM => s("dgram"),
                libc::SOCK_SEQPACKET => s("seqpacket"),
                libc::SOCK_RAW => s("raw"),
                n => s(n.to_string()),
            };
            f.push(("family", family));
            f.push(("type", sotype));
            f.push(("listening", Val::Bool(so.listening)));
            f.push(("local", addr(&so.local)));
            f.push(("peer", addr(&so.peer)));
        }
        Kind::Pipe { end } | Kind::Fifo { end, .. } => {
            f.push(("inode", Val::Num(d.ino)));
            let end = match end {
                End::Read => "read",
                End::Write => "write",
                End::Both => "both",
                End::Neither => "neither",
            };
            f.push(("end", s(end)));
            if let Kind::Fifo { path, .. } = &d.kind {
                f.push(("path", s(&path[..])));
            }
        }
        Kind::File { path, size } => {
            f.push(("size", Val::Num(*size)));
            f.push(("path", s(&path[..])));
        }
        Kind::Directory { path } | Kind::Other { path } => f.push(("path", s(&path[..]))),
        Kind::Memfd { name, size, seals } => {
            f.push(("size", Val::Num(*size)));
            f.push(("seals", s(names(*seals, SEALS))));
            f.push(("name", s(&name[..])));
        }
        Kind::EventFd | Kind::TimerFd | Kind::SignalFd | Kind::PidFd => {}
        Kind::AnonInode { name } => f.push(("name", s(&name[..]))),
        Kind::Device { rdev, path, .. } => {
            let (maj, min) = (libc::major(*rdev), libc::minor(*rdev));
            f.push(("rdev", s(format!("{maj}:{min}"))));
            f.push(("path", s(&path[..])));
        }
    }
}

fn addr(a: &Addr) -> Val {
    match a {
        Addr::None => Val::Null,
        Addr::Inet(sa) => s(sa.to_string()),
        Addr::Path(p) => s(&p[..]),
        Addr::Abstract(n) => {
            let mut v = vec![b'@'];
            v.extend_from_slice(n);
            Val::Str(v)
        }
        Addr::Unnamed => s("unnamed"),
        Addr::Other => s("other"),
    }
}

const SEALS: &[(u32, &str)] = &[
    (1, "seal"),
    (2, "shrink"),
    (4, "grow"),
    (8, "write"),
    (16, "future_write"),
    (32, "exec"),
];

const FLAGS: &[(u32, &str)] = &[
    (libc::O_APPEND as u32, "append"),
    (libc::O_NONBLOCK as u32, "nonblock"),
    (libc::O_SYNC as u32, "sync"),
    (libc::O_DSYNC as u32, "dsync"),
    (libc::O_DIRECT as u32, "direct"),
    (libc::O_NOATIME as u32, "noatime"),
    (libc::O_ASYNC as u32, "async"),
];

/// The names of the bits of `v` in `table`, comma-separated, `none` for
/// none; a bit named twice (`sync` includes `dsync`) is said once.
fn names(mut v: u32, table: &[(u32, &str)]) -> String {
    let mut n = Vec::new();
    for &(bit, name) in table {
        if v & bit == bit {
            n.push(name);
            v &= !bit;
        }
    }
    if n.is_empty() {
        return "none".into();
    }
    n.join(",")
}

/// The access mode, then the other status flags: `rdwr,append`.
fn flags(fl: u32) -> String {
    let mode = match End::from_flags(fl) {
        End::Read => "rdonly",
        End::Write => "wronly",
        End::Both => "rdwr",
        End::Neither if fl & libc::O_PATH as u32 != 0 => "path",
        End::Neither => "accmode3",
    };
    match names(fl, FLAGS).as_str() {
        "none" => mode.into(),
        rest => format!("{mode},{rest}"),
    }
}
