//! Access control with clients running as other users: run as root, each
//! client program is started under `s6-applyuidgid -u N -g M -G ''`, so
//! the daemon sees a foreign uid and gid. Every case runs against our
//! daemon and, when installed, the reference daemon on the same rules, and
//! the exit codes of the same client must agree, with our client tools and
//! with the reference's; key cases also have their expected codes written
//! out.

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{ALL_RIGHTS, Daemon, Impl, allow, deny, file_with, have_reference};

/// A uid and gid no real user has.
const U: u32 = 4242;
const G: u32 = 4343;

const OK: i32 = 0;
/// The daemon refused the operation (EPERM, ENOENT, EBUSY...).
const REFUSED: i32 = 1;

fn full() -> Vec<(&'static str, Option<&'static str>)> {
    ALL_RIGHTS.iter().map(|(k, v)| (*k, Some(*v))).collect()
}

/// Rules giving root (the test itself, as `uid/0`) every right, for setup.
fn root_rules(rules: &Path) {
    allow(rules, "uid/0", &full());
}

fn start(which: Impl, rules: &Path) -> Daemon {
    let d = Daemon::with_rules(which, "-i", rules.to_path_buf());
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Our program `name`, in the daemon's directory (which any uid may
/// enter; the build directory may be under a home only root can enter): a
/// copy of the multicall binary and its links, made at the first call and
/// removed with the daemon's directory.
fn ours(d: &Daemon, name: &str) -> PathBuf {
    let dir = d.dir.join("bin");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("fdholder");
        // A hard link where it can be (no file open for writing that a
        // concurrent fork could inherit), else a copy; a copy's first exec
        // may then meet ETXTBSY for a moment.
        if std::fs::hard_link(common::multicall(), &exe).is_err() {
            std::fs::copy(common::multicall(), &exe).unwrap();
        }
        let mut tries = 0;
        let st = loop {
            match Command::new(&exe).arg("--install").arg(&dir).status() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        assert!(st.success());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.join(name)
}

/// Runs one of our client tools as `uid`/`gid`; returns its exit code.
fn as_user(d: &Daemon, uid: u32, gid: u32, op: &str, id: &str) -> i32 {
    let sock = d.sock.to_str().unwrap();
    let tool = |name: &str| match CLIENT.with(|c| c.get()) {
        Impl::Ours => ours(d, name),
        Impl::Reference => PathBuf::from("/usr/bin").join(name),
    };
    let mut cmd = Command::new(ours(d, "s6-applyuidgid"));
    cmd.args(["-u", &uid.to_string(), "-g", &gid.to_string(), "-G", ""]);
    match op {
        "store" => cmd.arg(tool("s6-fdholder-store")).args([sock, id]),
        "retrieve" => cmd
            .arg(tool("s6-fdholder-retrieve"))
            .args([sock, id, "true"]),
        "retrieve-D" => cmd
            .arg(tool("s6-fdholder-retrieve"))
            .args(["-D", sock, id, "true"]),
        "delete" => cmd.arg(tool("s6-fdholder-delete")).args([sock, id]),
        "list" => cmd.arg(tool("s6-fdholder-list")).arg(sock),
        "getdump" => cmd.arg(tool("s6-fdholder-getdump")).args([sock, "true"]),
        "setdump" => cmd
            .arg(tool("s6-fdholder-setdump"))
            .arg(sock)
            .env("S6_FD#", "1")
            .env("S6_FD_0", "0")
            .env("S6_FDID_0", id),
        _ => unreachable!(),
    };
    cmd.stdin(Stdio::from(std::fs::File::open("/dev/null").unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().unwrap().code().unwrap_or(-1)
}

/// Root stores `id` (setup).
fn root_store(d: &Daemon, id: &str) {
    let f = file_with(&d.dir, "rootfile", b"");
    d.client()
        .store(f.as_fd(), id.as_bytes(), None, None)
        .unwrap();
}

/// Root deletes `id` if held (cleanup).
fn root_delete(d: &Daemon, id: &str) {
    let _ = d.client().delete(id.as_bytes(), None);
}

/// (daemon, client tools).
type Combo = (Impl, Impl);
/// What each client run gave.
type Codes = Vec<(String, i32)>;

thread_local! {
    // Whose client tools `as_user` runs.
    static CLIENT: std::cell::Cell<Impl> = const { std::cell::Cell::new(Impl::Ours) };
}

/// Runs `case` on our daemon and the reference (same rules, built by
/// `rules`), with our client tools and the reference's; every combination
/// must give the same codes. Returns ours with ours.
fn compare(
    name: &str,
    rules: impl Fn(&Path),
    case: impl Fn(&Daemon) -> Vec<(String, i32)>,
) -> Vec<(String, i32)> {
    let mut impls = vec![Impl::Ours];
    if have_reference() {
        impls.push(Impl::Reference);
    }
    let mut results: Vec<(Combo, Codes)> = Vec::new();
    for &client in &impls {
        CLIENT.with(|c| c.set(client));
        for &which in &impls {
            let dir = common::TempDir::new("access-rules");
            let r = dir.join("rules");
            std::fs::create_dir_all(&r).unwrap();
            rules(&r);
            let d = start(which, &r);
            results.push(((which, client), case(&d)));
        }
    }
    CLIENT.with(|c| c.set(Impl::Ours));
    for (k, v) in &results[1..] {
        assert_eq!(
            &results[0].1, v,
            "{name}: our daemon and clients (left) vs (daemon, clients) = {k:?} (right)"
        );
    }
    results.swap_remove(0).1
}

fn code_of(v: &[(String, i32)], what: &str) -> i32 {
    v.iter()
        .find(|(k, _)| k == what)
        .unwrap_or_else(|| panic!("no {what}"))
        .1
}

fn root_ok() -> bool {
    common::is_root("access-control tests (clients as other uids)")
}

/// Store then list as `uid`/`gid`: tells which key decided.
fn probe(d: &Daemon, uid: u32, gid: u32) -> Vec<(String, i32)> {
    let s = as_user(d, uid, gid, "store", "probe");
    root_delete(d, "probe");
    vec![
        ("store".into(), s),
        ("list".into(), as_user(d, uid, gid, "list", "")),
    ]
}

fn list_only() -> Vec<(&'static str, Option<&'static str>)> {
    vec![("S6_FDHOLDER_LIST", Some(""))]
}

#[test]
fn uid_default_allows_anyone() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "uid/default",
        |r| {
            root_rules(r);
            allow(r, "uid/default", &full());
        },
        |d| probe(d, U, G),
    );
    assert_eq!(code_of(&v, "store"), OK);
    assert_eq!(code_of(&v, "list"), OK);
}

#[test]
fn no_matching_key_refuses_the_connection() {
    if !root_ok() {
        return;
    }
    let v = compare("no key", root_rules, |d| probe(d, U, G));
    assert_ne!(code_of(&v, "store"), OK);
    assert_ne!(code_of(&v, "list"), OK);
}

#[test]
fn uid_deny_over_default() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "uid deny over default",
        |r| {
            root_rules(r);
            allow(r, "uid/default", &full());
            deny(r, &format!("uid/{U}"));
        },
        |d| {
            let mut v = probe(d, U, G);
            // Another uid still gets the default.
            v.extend(probe(d, U + 1, G).into_iter().map(|(k, c)| (k + "+1", c)));
            v
        },
    );
    assert_ne!(code_of(&v, "list"), OK);
    assert_eq!(code_of(&v, "list+1"), OK);
}

#[test]
fn gid_before_default_and_gid_deny() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "gid over default",
        |r| {
            root_rules(r);
            deny(r, "uid/default");
            allow(r, &format!("gid/{G}"), &list_only());
            deny(r, &format!("gid/{}", G + 1));
        },
        |d| {
            let mut v = probe(d, U, G);
            v.extend(probe(d, U, G + 1).into_iter().map(|(k, c)| (k + " g+1", c)));
            v
        },
    );
    assert_eq!(code_of(&v, "store"), REFUSED);
    assert_eq!(code_of(&v, "list"), OK);
    assert_ne!(code_of(&v, "list g+1"), OK);
}

#[test]
fn uid_before_gid() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "uid over gid",
        |r| {
            root_rules(r);
            allow(r, &format!("uid/{U}"), &list_only());
            allow(r, &format!("gid/{G}"), &full());
            deny(r, &format!("uid/{}", U + 1));
        },
        |d| {
            let mut v = probe(d, U, G);
            v.extend(probe(d, U + 1, G).into_iter().map(|(k, c)| (k + " u+1", c)));
            v.extend(probe(d, U + 2, G).into_iter().map(|(k, c)| (k + " u+2", c)));
            v
        },
    );
    // uid/U decides (list only) although gid/G gives everything.
    assert_eq!(code_of(&v, "store"), REFUSED);
    assert_eq!(code_of(&v, "list"), OK);
    // uid/U+1 denies although gid/G allows.
    assert_ne!(code_of(&v, "list u+1"), OK);
    // uid/U+2 has no key of its own: gid/G decides.
    assert_eq!(code_of(&v, "store u+2"), OK);
}

#[test]
fn uid_self_before_uid_and_only_for_the_daemon_uid() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "uid/self",
        |r| {
            allow(r, "uid/self", &list_only());
            allow(r, "uid/0", &full());
            allow(r, &format!("uid/{U}"), &full());
            allow(r, "uid/default", &list_only());
        },
        |d| {
            // Root with another gid: uid/self decides, not uid/0.
            let mut v = vec![
                ("root store".into(), as_user(d, 0, G, "store", "p")),
                ("root list".into(), as_user(d, 0, G, "list", "")),
            ];
            // Another uid: uid/self does not apply.
            v.push(("U store".into(), as_user(d, U, G, "store", "q")));
            v
        },
    );
    assert_eq!(code_of(&v, "root store"), REFUSED);
    assert_eq!(code_of(&v, "root list"), OK);
    assert_eq!(code_of(&v, "U store"), OK);
}

#[test]
fn gid_self_after_uid_before_gid() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "gid/self",
        |r| {
            root_rules(r);
            allow(r, "gid/self", &list_only());
            allow(r, "gid/0", &full());
            allow(r, &format!("uid/{U}"), &full());
        },
        |d| {
            let mut v = probe(d, U + 1, 0);
            v.extend(probe(d, U, 0).into_iter().map(|(k, c)| (k + " uidkey", c)));
            v.extend(
                probe(d, U + 1, G)
                    .into_iter()
                    .map(|(k, c)| (k + " othergid", c)),
            );
            v
        },
    );
    // gid 0 is the daemon's egid: gid/self decides over gid/0.
    assert_eq!(code_of(&v, "store"), REFUSED);
    assert_eq!(code_of(&v, "list"), OK);
    // uid/U comes before gid/self.
    assert_eq!(code_of(&v, "store uidkey"), OK);
    // Neither: no key at all.
    assert_ne!(code_of(&v, "list othergid"), OK);
}

const OPS: &[&str] = &[
    "store",
    "retrieve",
    "retrieve-D",
    "delete",
    "list",
    "getdump",
    "setdump",
];

/// Runs every operation as U with the given rights; fds "held" and
/// "held2" exist beforehand (so that retrieve, delete... can succeed).
fn every_op(d: &Daemon) -> Vec<(String, i32)> {
    let mut v = Vec::new();
    for op in OPS {
        root_store(d, "held");
        let id = match *op {
            "store" | "setdump" => "new",
            _ => "held",
        };
        v.push((op.to_string(), as_user(d, U, G, op, id)));
        root_delete(d, "held");
        root_delete(d, "new");
    }
    v
}

fn granted(env: Vec<(&'static str, Option<&'static str>)>, want_ok: &[&str]) {
    let name = format!("{env:?}");
    let v = compare(
        &name,
        |r| {
            root_rules(r);
            allow(r, &format!("uid/{U}"), &env);
        },
        every_op,
    );
    for (op, code) in &v {
        let want = if want_ok.contains(&op.as_str()) {
            OK
        } else {
            REFUSED
        };
        assert_eq!(*code, want, "{name}: {op}");
    }
}

#[test]
fn each_right_granted_alone() {
    if !root_ok() {
        return;
    }
    granted(
        vec![("S6_FDHOLDER_STORE_REGEX", Some(""))],
        &["store", "delete"],
    );
    granted(
        vec![("S6_FDHOLDER_RETRIEVE_REGEX", Some(""))],
        &["retrieve"],
    );
    granted(vec![("S6_FDHOLDER_LIST", Some(""))], &["list"]);
    granted(vec![("S6_FDHOLDER_GETDUMP", Some(""))], &["getdump"]);
    granted(vec![("S6_FDHOLDER_SETDUMP", Some(""))], &["setdump"]);
    // retrieve -D needs both regexes.
    granted(
        vec![
            ("S6_FDHOLDER_STORE_REGEX", Some("")),
            ("S6_FDHOLDER_RETRIEVE_REGEX", Some("")),
        ],
        &["store", "delete", "retrieve", "retrieve-D"],
    );
    granted(full(), OPS);
    // Unset (empty file) is not granted; "0" as a value still is.
    granted(
        vec![
            ("S6_FDHOLDER_LIST", None),
            ("S6_FDHOLDER_GETDUMP", Some("0")),
        ],
        &["getdump"],
    );
    granted(vec![], &[]);
}

#[test]
fn retrieve_delete_needs_both_regexes_to_match_the_id() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "retrieve -D",
        |r| {
            root_rules(r);
            allow(
                r,
                &format!("uid/{U}"),
                &[
                    ("S6_FDHOLDER_STORE_REGEX", Some("^s")),
                    ("S6_FDHOLDER_RETRIEVE_REGEX", Some("^r|^sr")),
                ],
            );
        },
        |d| {
            let mut v = Vec::new();
            for id in ["sr", "s", "r"] {
                root_store(d, id);
                v.push((id.to_string(), as_user(d, U, G, "retrieve-D", id)));
                root_delete(d, id);
            }
            v
        },
    );
    assert_eq!(
        v,
        vec![
            ("sr".to_string(), OK),
            ("s".to_string(), REFUSED),
            ("r".to_string(), REFUSED)
        ]
    );
}

const REGEXES: &[&str] = &[
    "^foo$",
    "foo",
    "foo|bar",
    "^(foo|bar)$",
    "^[ab]x",
    "^[^ab]x$",
    "^[[:digit:]]+$",
    "[[:upper:]]",
    "o$",
    "^f",
    "a.c",
    "a\\.c",
    "^.{3}$",
    "x*",
    "",
];

const IDS: &[&str] = &[
    "foo", "xfoo", "foox", "bar", "foobar", "ax", "bx", "cx", "123", "12a", "o", "fo", "abc",
    "a.c", "ABC", "F",
];

/// Stores (or retrieves) every id as U under each regex; ours and the
/// reference must agree id by id.
fn regex_table(var: &'static str, op: &'static str) {
    for re in REGEXES {
        let v = compare(
            &format!("{var}={re}"),
            |r| {
                root_rules(r);
                allow(r, &format!("uid/{U}"), &[(var, Some(re))]);
            },
            |d| {
                let mut v = Vec::new();
                for id in IDS {
                    if op == "retrieve" {
                        root_store(d, id);
                    }
                    v.push((id.to_string(), as_user(d, U, G, op, id)));
                    root_delete(d, id);
                }
                v
            },
        );
        // A few written out, so that agreement is not all we check.
        let code = |id: &str| code_of(&v, id);
        match *re {
            "^foo$" => {
                assert_eq!(code("foo"), OK);
                assert_eq!(code("xfoo"), REFUSED);
                assert_eq!(code("foox"), REFUSED);
            }
            "foo" => assert_eq!(code("xfoo"), OK, "unanchored search"),
            "^(foo|bar)$" => {
                assert_eq!(code("bar"), OK);
                assert_eq!(code("foobar"), REFUSED);
            }
            "^[[:digit:]]+$" => {
                assert_eq!(code("123"), OK);
                assert_eq!(code("12a"), REFUSED);
            }
            "a\\.c" => {
                assert_eq!(code("a.c"), OK);
                assert_eq!(code("abc"), REFUSED);
            }
            "" => assert!(v.iter().all(|(_, c)| *c == OK), "empty regex matches all"),
            _ => {}
        }
    }
}

#[test]
fn store_regex_boundaries() {
    if !root_ok() {
        return;
    }
    regex_table("S6_FDHOLDER_STORE_REGEX", "store");
}

#[test]
fn retrieve_regex_boundaries() {
    if !root_ok() {
        return;
    }
    regex_table("S6_FDHOLDER_RETRIEVE_REGEX", "retrieve");
}

#[test]
fn invalid_regex_refuses_only_that_client() {
    if !root_ok() {
        return;
    }
    for bad in ["(", "a[", "*a", "a{2,1}"] {
        let v = compare(
            &format!("invalid regex {bad}"),
            |r| {
                root_rules(r);
                allow(
                    r,
                    &format!("uid/{U}"),
                    &[
                        ("S6_FDHOLDER_STORE_REGEX", Some(bad)),
                        ("S6_FDHOLDER_LIST", Some("")),
                    ],
                );
            },
            |d| {
                let mut v = probe(d, U, G);
                // Root is still served.
                root_store(d, "x");
                root_delete(d, "x");
                v.push(("root list".into(), d.client().list(None).map_or(1, |_| 0)));
                v
            },
        );
        if bad == "(" || bad == "a[" {
            // Rejected by every regcomp: the whole connection is refused,
            // list included.
            assert_ne!(code_of(&v, "list"), OK, "{bad}");
        }
        assert_eq!(code_of(&v, "root list"), OK);
    }
}

#[test]
fn rights_are_per_connection_and_never_leak() {
    if !root_ok() {
        return;
    }
    let v = compare(
        "per connection",
        |r| {
            allow(
                r,
                "uid/0",
                &[
                    ("S6_FDHOLDER_STORE_REGEX", Some("^b")),
                    ("S6_FDHOLDER_RETRIEVE_REGEX", Some("")),
                    ("S6_FDHOLDER_LIST", Some("")),
                ],
            );
            allow(
                r,
                &format!("uid/{U}"),
                &[("S6_FDHOLDER_STORE_REGEX", Some("^a"))],
            );
            allow(r, &format!("uid/{}", U + 1), &list_only());
        },
        |d| {
            // A root connection stays open with its rights throughout.
            let mut root = d.client();
            let f = file_with(&d.dir, "f", b"");
            let mut v = Vec::new();
            let rs = |root: &mut fdholder::Client, id: &str| {
                root.store(f.as_fd(), id.as_bytes(), None, None)
                    .map_or(1, |_| 0)
            };
            v.push(("root a1".to_string(), rs(&mut root, "a1")));
            v.push(("U a1".into(), as_user(d, U, G, "store", "a1")));
            v.push(("root b1".into(), rs(&mut root, "b1")));
            v.push(("U b2".into(), as_user(d, U, G, "store", "b2")));
            v.push(("U+1 a2".into(), as_user(d, U + 1, G, "store", "a2")));
            v.push(("U+1 list".into(), as_user(d, U + 1, G, "list", "")));
            v.push(("U list".into(), as_user(d, U, G, "list", "")));
            v.push(("root b3".into(), rs(&mut root, "b3")));
            v.push(("root a3".into(), rs(&mut root, "a3")));
            let mut ids = root.list(None).unwrap();
            ids.sort();
            v.push((format!("{ids:?}"), 0));
            v
        },
    );
    let want: Vec<(String, i32)> = vec![
        ("root a1".into(), REFUSED),
        ("U a1".into(), OK),
        ("root b1".into(), OK),
        ("U b2".into(), REFUSED),
        ("U+1 a2".into(), REFUSED),
        ("U+1 list".into(), OK),
        ("U list".into(), REFUSED),
        ("root b3".into(), OK),
        ("root a3".into(), REFUSED),
        (
            format!("{:?}", vec![b"a1".to_vec(), b"b1".to_vec(), b"b3".to_vec()]),
            0,
        ),
    ];
    assert_eq!(v, want);
}
