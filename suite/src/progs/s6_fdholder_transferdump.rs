//! `s6-fdholder-transferdump`: copies every fd from one daemon to another.
//! See `docs/s6-fdholder-transferdump.md`.

use std::ffi::OsStr;

use crate::cli::{EXIT_REFUSED, Prog, deadline_ms, parse_uint};

const PROG: Prog = Prog {
    name: "s6-fdholder-transferdump",
    usage: "s6-fdholder-transferdump [ -t timeoutfrom:timeoutto ] socketfrom socketto",
};

/// Exit code when the destination refuses.
const EXIT_DEST_REFUSED: i32 = 2;

/// `from:to`, `from`, `:to`, `from:`: either side may be empty (0).
fn parse_timeouts(s: &OsStr) -> Option<(u32, u32)> {
    let s = s.as_encoded_bytes();
    let (from, to) = match s.iter().position(|&c| c == b':') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &b""[..]),
    };
    let num = |b: &[u8]| {
        if b.is_empty() {
            Some(0)
        } else {
            parse_uint(OsStr::new(std::str::from_utf8(b).ok()?))
        }
    };
    if s.is_empty() {
        return None;
    }
    Some((num(from)?, num(to)?))
}

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("t:");
    let (mut tfrom, mut tto) = (0, 0);
    for (c, v) in opts {
        match c {
            't' => (tfrom, tto) = parse_timeouts(&v).unwrap_or_else(|| PROG.die_usage()),
            _ => PROG.die_usage(),
        }
    }
    let [from, to, ..] = &args[..] else {
        PROG.die_usage()
    };
    let deadline = deadline_ms(tfrom);
    let mut src = PROG.connect("source ", from, deadline);
    let dump = src
        .getdump(deadline)
        .unwrap_or_else(|e| PROG.die_unable(EXIT_REFUSED, "get dump", &e));
    drop(src);
    let deadline = deadline_ms(tto);
    let mut dst = PROG.connect("destination ", to, deadline);
    if dump.is_empty() {
        // As the reference's library: an empty dump is not sent at all, so
        // a destination that would refuse setdump is never asked.
        return;
    }
    let refs: Vec<_> = dump.iter().map(|e| e.as_ref()).collect();
    if let Err(e) = dst.setdump(&refs, deadline) {
        PROG.die_unable(EXIT_DEST_REFUSED, "set dump", &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let p = |s: &str| parse_timeouts(OsStr::new(s));
        assert_eq!(p("10:20"), Some((10, 20)));
        assert_eq!(p("10"), Some((10, 0)));
        assert_eq!(p(":20"), Some((0, 20)));
        assert_eq!(p("10:"), Some((10, 0)));
        assert_eq!(p(":"), Some((0, 0)));
        assert_eq!(p("x"), None);
        assert_eq!(p("1:2:3"), None);
        assert_eq!(p(""), None);
    }
}
