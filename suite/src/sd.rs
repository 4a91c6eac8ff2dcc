//! The systemd side of the holder: how held ids map to the fd names of
//! systemd's socket-passing protocol (`LISTEN_FDS`, `LISTEN_FDNAMES`,
//! `sd_listen_fds_with_names(3)`), for `s6-fdholder-sdlisten`, which
//! hands held fds to a program, and the future `s6-fdholder-sdnotify`,
//! which will store a program's `FDSTORE=1` fds. See
//! `docs/s6-fdholder-sdlisten.md`.
//!
//! [`fd_name`] is the one place the mapping is written. The ids of a
//! service all begin with one prefix (`svc/`); sdnotify will store an fd
//! sent with `FDNAME=name` under `prefix + name + ":" + k`, `k` a
//! uniquifier, because a systemd fd name may not contain `:` and several
//! fds may share a name. It should write `k` with a fixed width (e.g.
//! zero-padded decimal), so that the bytewise order of [`listen_order`] is
//! the order of `k`.

/// The name of an fd whose id has no name after the prefix, as
/// `sd_listen_fds_with_names` names fds when `LISTEN_FDNAMES` is unset.
pub const UNKNOWN: &[u8] = b"unknown";

/// What ends a name in an id: systemd's separator in `LISTEN_FDNAMES`,
/// which no name may contain.
pub const SEPARATOR: u8 = b':';

/// The systemd fd name of the held `id` under `prefix`: the bytes after
/// the prefix up to the first `:` (all of them if there is none), or
/// [`UNKNOWN`] when that is empty (the id is the prefix, or the prefix
/// followed by `:`). `None` if `id` does not begin with `prefix`.
///
/// A name is therefore never empty and never contains `:`: names joined
/// by `:` split back into the same names.
pub fn fd_name<'a>(id: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = id.strip_prefix(prefix)?;
    let name = rest.split(|&b| b == SEPARATOR).next().unwrap_or(rest);
    Some(if name.is_empty() { UNKNOWN } else { name })
}

/// The ids of `ids` that begin with `prefix` (every id if it is empty), in
/// the order their fds are handed over: by id, bytewise ascending. The
/// order depends on nothing but the ids: not on the daemon's storage
/// order, its implementation or its restarts; and the ids
/// `prefix + name + ":" + k` of one name come together, in the bytewise
/// order of `k`.
pub fn listen_order(mut ids: Vec<Vec<u8>>, prefix: &[u8]) -> Vec<Vec<u8>> {
    ids.retain(|id| id.starts_with(prefix));
    // A heap sort: O(n log n) as `sort_unstable`, whose code would make
    // the binary 4 KB larger (no program sorts anything else).
    std::collections::BinaryHeap::from(ids).into_sorted_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(id: &str, prefix: &str) -> Option<String> {
        fd_name(id.as_bytes(), prefix.as_bytes()).map(|n| String::from_utf8(n.to_vec()).unwrap())
    }

    #[test]
    fn names() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(name("svc/http", "svc/"), some("http"));
        assert_eq!(name("svc/state:0", "svc/"), some("state"));
        assert_eq!(name("svc/state:a:b", "svc/"), some("state"));
        assert_eq!(name("svc/", "svc/"), some("unknown"));
        assert_eq!(name("svc/:3", "svc/"), some("unknown"));
        assert_eq!(name("svc/:", "svc/"), some("unknown"));
        assert_eq!(name("svc/x:", "svc/"), some("x"));
        assert_eq!(name("other/x", "svc/"), None);
        assert_eq!(name("svc", "svc/"), None);
        // The empty prefix: every id, named from its start.
        assert_eq!(name("http:1", ""), some("http"));
        assert_eq!(name(":1", ""), some("unknown"));
        // No separator needed in the prefix.
        assert_eq!(name("svc-http", "svc-"), some("http"));
        assert_eq!(name("svchttp", "svc"), some("http"));
        // Bytes other than `:` are kept as they are.
        assert_eq!(fd_name(b"p\xff\n\t x:1", b"p"), Some(&b"\xff\n\t x"[..]));
    }

    #[test]
    fn names_never_empty_nor_with_separator() {
        let bytes = [b'a', b':', b'/', 0xff, b'\n'];
        let mut ids: Vec<Vec<u8>> = vec![];
        for a in bytes {
            ids.push(vec![b'p', a]);
            for b in bytes {
                ids.push(vec![b'p', a, b]);
                for c in bytes {
                    ids.push(vec![b'p', a, b, c]);
                }
            }
        }
        ids.push(b"p".to_vec());
        for id in &ids {
            for prefix in [&b""[..], b"p", b"p:"] {
                if let Some(n) = fd_name(id, prefix) {
                    assert!(!n.is_empty() && !n.contains(&SEPARATOR), "{id:?}");
                    assert!(id.starts_with(prefix));
                }
            }
        }
    }

    #[test]
    fn order() {
        let ids = [
            "svc/state:1",
            "other/x",
            "svc/http",
            "svc",
            "svc/state:0",
            "svc/a-b:0",
            "svc/a:1",
            "svc/a:0",
        ];
        let got = listen_order(ids.iter().map(|s| s.as_bytes().to_vec()).collect(), b"svc/");
        let got: Vec<&str> = got
            .iter()
            .map(|i| std::str::from_utf8(i).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "svc/a-b:0",
                "svc/a:0",
                "svc/a:1",
                "svc/http",
                "svc/state:0",
                "svc/state:1"
            ]
        );
        // Bytewise: bytes from 0x80 after ASCII, whatever the locale.
        let got = listen_order(
            vec![b"\xc3\xa9".to_vec(), b"z".to_vec(), b"A".to_vec()],
            b"",
        );
        assert_eq!(got, [&b"A"[..], b"z", b"\xc3\xa9"]);
        assert!(listen_order(vec![b"x".to_vec()], b"svc/").is_empty());
    }
}
