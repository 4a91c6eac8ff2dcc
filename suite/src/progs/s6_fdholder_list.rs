//! `s6-fdholder-list`: prints the ids the daemon holds, one a line, quoted;
//! with `-l` or `-j`, what each held fd is (the describe request).
//! See `docs/s6-fdholder-list.md`.

use std::io::Write;

use fdholder::describe::{Addr, End, Held, Kind};

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

/// Writes the fields of one line: ` key=value` (`-l`) or `,"key":value`
/// (`-j`, the first opening the object).
struct Line<'a> {
    out: &'a mut Vec<u8>,
    json: bool,
    first: bool,
}

impl Line<'_> {
    fn key(&mut self, k: &str) {
        let (a, b): (&[u8], &[u8]) = match (self.json, self.first) {
            (true, true) => (b"{\"", b"\":"),
            (true, false) => (b",\"", b"\":"),
            (false, _) => (b" ", b"="),
        };
        self.first = false;
        self.out.extend_from_slice(a);
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b);
    }

    /// Bytes, quoted as ids are (in a JSON string with `-j`).
    fn str(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        if !self.json {
            return quote(self.out, v);
        }
        let mut q = Vec::new();
        quote(&mut q, v);
        self.out.push(b'"');
        for c in q {
            if c == b'"' || c == b'\\' {
                self.out.push(b'\\');
            }
            self.out.push(c);
        }
        self.out.push(b'"');
    }

    fn num(&mut self, k: &str, n: u64) {
        self.key(k);
        self.out.extend_from_slice(n.to_string().as_bytes());
    }

    /// A word (printable ASCII, no quote nor backslash); `-l`'s `yes`/`no`
    /// are JSON's `true`/`false`.
    fn word(&mut self, k: &str, w: &str) {
        self.key(k);
        match (self.json, w) {
            (true, "yes") => self.out.extend_from_slice(b"true"),
            (true, "no") => self.out.extend_from_slice(b"false"),
            (true, _) => {
                self.out.push(b'"');
                self.out.extend_from_slice(w.as_bytes());
                self.out.push(b'"');
            }
            _ => self.out.extend_from_slice(w.as_bytes()),
        }
    }

    /// Nothing: `none` (JSON `null`).
    fn none(&mut self, k: &str) {
        self.key(k);
        let w: &[u8] = if self.json { b"null" } else { b"none" };
        self.out.extend_from_slice(w);
    }

    fn addr(&mut self, k: &str, a: &Addr) {
        match a {
            Addr::None => self.none(k),
            Addr::Inet(sa) => self.str(k, inet(sa).as_bytes()),
            Addr::Path(p) => self.str(k, p),
            Addr::Abstract(n) => self.str(k, &[b"@", &n[..]].concat()),
            Addr::Unnamed => self.word(k, "unnamed"),
            Addr::Other => self.word(k, "other"),
        }
    }
}

/// `1.2.3.4:80`, `[2001:db8::1%2]:80` (the longest run of two or more
/// zero groups as `::`; written here, smaller than `std`'s `Display`).
fn inet(sa: &std::net::SocketAddr) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    match sa {
        std::net::SocketAddr::V4(a) => {
            let o = a.ip().octets();
            let _ = write!(s, "{}.{}.{}.{}", o[0], o[1], o[2], o[3]);
        }
        std::net::SocketAddr::V6(a) => {
            let g = a.ip().segments();
            let (mut best, mut len, mut i) = (8, 1, 0);
            while i < 8 {
                let start = i;
                while i < 8 && g[i] == 0 {
                    i += 1;
                }
                if i - start > len {
                    (best, len) = (start, i - start);
                }
                i += 1;
            }
            s.push('[');
            let mut j = 0;
            while j < 8 {
                if j == best {
                    s.push_str("::");
                    j += len;
                    continue;
                }
                if j > 0 && !s.ends_with(':') {
                    s.push(':');
                }
                let _ = write!(s, "{:x}", g[j]);
                j += 1;
            }
            if a.scope_id() != 0 {
                let _ = write!(s, "%{}", a.scope_id());
            }
            s.push(']');
        }
    }
    let _ = write!(s, ":{}", sa.port());
    s
}

/// Prints one held fd: `id TAB expiry TAB kind key=value...`, or a JSON
/// object with the keys `id`, `id_hex`, `expires_in`, `kind`, `mode`,
/// `dev`, `ino`, then the same keys.
fn line(out: &mut Vec<u8>, h: &Held, now: fdholder::Tain, json: bool) {
    let left = h.limit.map(|l| l.duration_since(now).as_secs());
    let d = &h.description;
    let name = d.kind.name();

    if !json {
        quote(out, &h.id);
        match left {
            Some(n) => out.extend_from_slice(format!("\t{n}s\t").as_bytes()),
            None => out.extend_from_slice(b"\tnever\t"),
        }
        out.extend_from_slice(name.as_bytes());
    }
    let mut l = Line {
        out,
        json,
        first: true,
    };
    if json {
        l.str("id", &h.id);
        let hex: Vec<u8> = h.id.iter().flat_map(|c| [c >> 4, c & 15]).collect();
        let hex: String = hex
            .iter()
            .map(|&n| b"0123456789abcdef"[n as usize] as char)
            .collect();
        l.word("id_hex", &hex);
        match left {
            Some(n) => l.num("expires_in", n),
            None => l.none("expires_in"),
        }
        l.word("kind", name);
        l.num("mode", d.mode.into());
        l.num("dev", d.dev);
        l.num("ino", d.ino);
    }
    l.word("flags", &flags(d.flags));
    if let Some(so) = &d.socket {
        let family = match so.family as i32 {
            libc::AF_UNIX => "unix",
            libc::AF_INET => "inet",
            libc::AF_INET6 => "inet6",
            libc::AF_NETLINK => "netlink",
            libc::AF_PACKET => "packet",
            _ => "",
        };
        let sotype = match so.sotype as i32 {
            libc::SOCK_STREAM => "stream",
            libc::SOCK_DGRAM => "dgram",
            libc::SOCK_SEQPACKET => "seqpacket",
            libc::SOCK_RAW => "raw",
            _ => "",
        };
        match family {
            "" => l.num("family", so.family.into()),
            f => l.word("family", f),
        }
        match sotype {
            "" => l.num("type", so.sotype.into()),
            t => l.word("type", t),
        }
        l.word("listening", if so.listening { "yes" } else { "no" });
        l.addr("local", &so.local);
        l.addr("peer", &so.peer);
    }
    // Which fields each kind shows, in this order.
    const INODE: u8 = 1;
    const SIZE: u8 = 2;
    const SEALS: u8 = 4;
    const RDEV: u8 = 8;
    const PATH: u8 = 16;
    const NAME: u8 = 32;
    let shown = match d.kind {
        Kind::Pipe => INODE,
        Kind::Fifo => INODE | PATH,
        Kind::File => SIZE | PATH,
        Kind::Directory | Kind::Other => PATH,
        Kind::Memfd => SIZE | SEALS | NAME,
        Kind::AnonInode => NAME,
        Kind::CharDevice | Kind::BlockDevice => RDEV | PATH,
        _ => 0,
    };
    if shown & INODE != 0 {
        l.num("inode", d.ino);
        let end = match d.end() {
            End::Read => "read",
            End::Write => "write",
            End::Both => "both",
            End::Neither => "neither",
        };
        l.word("end", end);
    }
    if shown & SIZE != 0 {
        l.num("size", d.size);
    }
    if shown & SEALS != 0 {
        l.word("seals", &names("", d.seals, SEAL_NAMES));
    }
    if shown & RDEV != 0 {
        let (maj, min) = (libc::major(d.rdev), libc::minor(d.rdev));
        l.word("rdev", &format!("{maj}:{min}"));
    }
    if shown & (PATH | NAME) != 0 {
        l.str(if shown & PATH != 0 { "path" } else { "name" }, &d.path);
    }
    out.extend_from_slice(if json { b"}\n" } else { b"\n" });
}

const SEAL_NAMES: &[(u32, &str)] = &[
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

/// The names of the bits of `v` in `table`, comma-separated after
/// `first` (`none` when there are none at all); a bit named twice (`sync`
/// includes `dsync`) is said once.
fn names(first: &str, mut v: u32, table: &[(u32, &str)]) -> String {
    let mut s = String::from(first);
    for &(bit, name) in table {
        if v & bit == bit {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(name);
            v &= !bit;
        }
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
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
    names(mode, fl, FLAGS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn inet_is_std_display() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut addrs: Vec<std::net::SocketAddr> = [
            "1.2.3.4:5",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::]:1",
            "[::1]:80",
            "[1::]:80",
            "[1:0:0:2:0:0:0:3]:80",
            "[1:0:2:0:3:0:4:0]:80",
            "[2001:db8::1%3]:443",
            "[fe80::1:0:0:1]:9",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Groups that are often zero, so that runs of zeros are common.
            let g: [u16; 8] = std::array::from_fn(|i| {
                let v = (x >> (i * 8)) as u16;
                if v & 3 == 0 { v >> 2 } else { 0 }
            });
            let ip = std::net::Ipv6Addr::from(g);
            // std writes IPv4-mapped and -compatible addresses in dotted form.
            if ip.to_ipv4().is_some() {
                continue;
            }
            addrs.push(std::net::SocketAddrV6::new(ip, x as u16, 0, (x >> 60) as u32).into());
        }
        for a in addrs {
            assert_eq!(super::inet(&a), a.to_string(), "{a:?}");
        }
    }
}
