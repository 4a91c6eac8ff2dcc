//! s6-applyuidgid, ours against the reference: `id` run through both with
//! every option combination must print the same, and every failure must
//! read and exit alike.

mod common;

use std::path::{Path, PathBuf};

use common::{Run, TempDir, is_root, reference, run};

const NAME: &str = "s6-applyuidgid";

/// Environment variables to set.
type Env<'a> = &'a [(&'a str, &'a str)];
/// uid, gid, groups, as `id -u`, `id -g`, `id -G` print them.
type Creds = (String, String, String);

fn ours() -> PathBuf {
    common::ours("s6-applyuidgid")
}

/// Prints the credentials numerically, then as `id` does.
const ID: &[&str] = &["sh", "-c", "id -u; id -g; id -G; id"];

/// Runs ours and the reference with the same arguments (`{}` stands for
/// the program itself, to chain it) and environment; they must agree.
fn same(args: &[&str], env: &[(&str, &str)]) -> Option<Run> {
    let refbin = reference(NAME)?;
    let dir = TempDir::new("aug");
    let go = |bin: &Path| {
        let args: Vec<&str> = args
            .iter()
            .map(|&a| if a == "{}" { bin.to_str().unwrap() } else { a })
            .collect();
        run(bin, &args, dir.path(), env)
    };
    let (a, b) = (go(&ours()), go(&refbin));
    assert_eq!(a, b, "args {args:?} env {env:?}");
    Some(a)
}

fn with_id(opts: &[&'static str]) -> Vec<&'static str> {
    opts.iter().chain(ID).copied().collect()
}

/// The first three lines of the ID output: uid, gid, groups.
fn creds(r: &Run) -> Creds {
    assert_eq!(r.code, Some(0), "{r:?}");
    let l: Vec<&str> = r.stdout.lines().collect();
    (l[0].into(), l[1].into(), l[2].into())
}

fn c(u: &str, g: &str, groups: &str) -> Creds {
    (u.into(), g.into(), groups.into())
}

#[test]
fn credentials_as_the_reference() {
    if !is_root("s6-applyuidgid credential tests") {
        return;
    }
    let cases: &[(&[&str], Env, Creds)] = &[
        (
            &["-u", "1000", "-g", "100", "-G", "5,6"],
            &[],
            c("1000", "100", "100 5 6"),
        ),
        (&["-g", "100", "-G", ""], &[], c("0", "100", "100")),
        (&["-u", "0", "-g", "0"], &[], c("0", "0", "0")),
        (&["-G", "1x"], &[], c("0", "0", "0 1")),
        (&["-G", "1,,2", "-g", "2"], &[], c("0", "2", "1 2")),
        (&["-G", "3:1; 2\n"], &[], c("0", "0", "0 1 2 3")),
        (&["-G", "99999999999"], &[], c("0", "0", "0 99 999999999")),
        (&["-G", "7", "-G", "8"], &[], c("0", "0", "0 8")),
        (
            &["-U"],
            &[("UID", "5"), ("GID", "6"), ("GIDLIST", "1:2")],
            c("5", "6", "6 1 2"),
        ),
        (
            &["-U"],
            &[("UID", "5"), ("GID", "6"), ("GIDLIST", "")],
            c("5", "6", "6"),
        ),
        (
            &["-U", "-u", "7"],
            &[("UID", "5"), ("GID", "6"), ("GIDLIST", "")],
            c("7", "6", "6"),
        ),
        (
            &["-u", "7", "-G", "9", "-U"],
            &[("UID", "5"), ("GID", "6"), ("GIDLIST", "6,3")],
            c("5", "6", "6 3"),
        ),
        (
            &["-U", "-G", "4"],
            &[("UID", "0"), ("GID", "0"), ("GIDLIST", "1")],
            c("0", "0", "0 4"),
        ),
    ];
    for (opts, env, want) in cases {
        let Some(r) = same(&with_id(opts), env) else {
            return;
        };
        let (u, g, groups) = creds(&r);
        // `id -G` lists the gid first, then the kernel's sorted list.
        let mut got: Vec<u32> = groups.split(' ').map(|x| x.parse().unwrap()).collect();
        let mut exp: Vec<u32> = want.2.split(' ').map(|x| x.parse().unwrap()).collect();
        got.sort();
        got.dedup();
        exp.sort();
        assert_eq!(
            (u, g, got),
            (want.0.clone(), want.1.clone(), exp),
            "{opts:?} {env:?}"
        );
    }
    // Without -G, the supplementary groups are left as they are.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mine = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap()
        .trim();
    let r = same(&with_id(&["-g", "100"]), &[]).unwrap();
    assert_eq!(creds(&r), c("0", "100", format!("100 {mine}").trim()));
}

#[test]
fn z_unexports_the_variables() {
    let show = "env | grep -E '^(UID|GID|GIDLIST)=' | sort; true";
    let env: Env = &[("UID", "0"), ("GID", "0"), ("GIDLIST", "")];
    // -U sets the group list, which needs root even to change nothing.
    let root = is_root("s6-applyuidgid -U with -z");
    let cases: &[(&[&str], bool)] = &[
        (&[], true),
        (&["-z"], false),
        (&["-U"], true),
        (&["-z", "-U"], false),
        (&["-U", "-z"], false),
    ];
    for (opts, kept) in cases {
        if opts.contains(&"-U") && !root {
            continue;
        }
        let args: Vec<&str> = opts.iter().copied().chain(["sh", "-c", show]).collect();
        let Some(r) = same(&args, env) else { return };
        let want = if *kept {
            "GID=0\nGIDLIST=\nUID=0\n"
        } else {
            ""
        };
        assert_eq!((r.code, r.stdout.as_str()), (Some(0), want), "{opts:?}");
    }
}

fn usage() -> String {
    format!("{NAME}: usage: {NAME} [ -z ] [ -u uid ] [ -g gid ] [ -G gidlist ] [ -U ] prog...\n")
}

#[test]
fn usage_and_environment_errors() {
    let u = usage();
    let cases: &[(&[&str], Env, &str)] = &[
        (&[], &[], &u),
        (&["-z"], &[], &u),
        (&["-u"], &[], &u),
        (&["-u", "x", "id"], &[], &u),
        (&["-u", "-1", "id"], &[], &u),
        (&["-g", "4294967296", "id"], &[], &u),
        (&["-G", "x", "id"], &[], &u),
        (&["-G", " 1", "id"], &[], &u),
        (&["-G", ",", "id"], &[], &u),
        (&["-q", "id"], &[], &u),
        (&["-U", "id"], &[], "s6-applyuidgid: fatal: UID not set\n"),
        (
            &["-U", "id"],
            &[("UID", "5")],
            "s6-applyuidgid: fatal: GID not set\n",
        ),
        (
            &["-U", "id"],
            &[("UID", "x")],
            "s6-applyuidgid: fatal: invalid $UID\n",
        ),
        (
            &["-U", "id"],
            &[("UID", "5"), ("GID", "")],
            "s6-applyuidgid: fatal: invalid $GID\n",
        ),
        (
            &["-U", "id"],
            &[("UID", "5"), ("GID", "6")],
            "s6-applyuidgid: fatal: GIDLIST not set\n",
        ),
        (
            &["-U", "id"],
            &[("UID", "5"), ("GID", "6"), ("GIDLIST", "x")],
            "s6-applyuidgid: fatal: invalid $GIDLIST\n",
        ),
        (
            &["-U", "-u"],
            &[("UID", "5"), ("GID", "6"), ("GIDLIST", "")],
            &u,
        ),
    ];
    for (args, env, msg) in cases {
        let Some(r) = same(args, env) else { return };
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (Some(100), *msg),
            "{args:?} {env:?}"
        );
    }
}

#[test]
fn failures_are_fatal() {
    if !is_root("s6-applyuidgid failure tests (they drop to uid 1000 first)") {
        return;
    }
    let fatal = |m: &str| format!("{NAME}: fatal: {m}\n");
    let cases: &[(&[&str], i32, String)] = &[
        (
            &["-u", "1000", "{}", "-g", "5", "id"],
            111,
            fatal("unable to setgid: Operation not permitted"),
        ),
        (
            &["-u", "1000", "{}", "-G", "5", "id"],
            111,
            fatal("unable to set supplementary group list: Operation not permitted"),
        ),
        (
            &["-u", "1000", "{}", "-G", "", "id"],
            111,
            fatal("unable to set supplementary group list: Operation not permitted"),
        ),
        (
            &["-u", "1000", "{}", "-u", "5", "id"],
            111,
            fatal("unable to setuid: Operation not permitted"),
        ),
        (
            &["-u", "1000", "{}", "-u", "5", "-g", "5", "-G", "5", "id"],
            111,
            fatal("unable to set supplementary group list: Operation not permitted"),
        ),
        (
            &["-g", "5", "/nonexistent"],
            127,
            fatal("unable to exec /nonexistent: No such file or directory"),
        ),
    ];
    for (args, code, msg) in cases {
        let Some(r) = same(args, &[]) else { return };
        assert_eq!(
            (r.code, &r.stderr, r.stdout.as_str()),
            (Some(*code), msg, ""),
            "{args:?}"
        );
    }
    // A uid of 0 leaves the credentials alone, so nothing fails.
    let Some(r) = same(&["-u", "1000", "{}", "-u", "0", "-g", "0", "id", "-u"], &[]) else {
        return;
    };
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "1000\n"));
}
