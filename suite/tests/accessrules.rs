//! s6-accessrules-cdb-from-fs and s6-accessrules-fs-from-cdb, ours against
//! the reference: the same records from the same directory, the same tree
//! from the same cdb, both ways round, the same errors; and a cdb of ours
//! driving the reference daemon.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, TempDir, is_root, ours, reference, run};
use fdholder_suite::rules::{self, Decision};

const C2F: &str = "s6-accessrules-cdb-from-fs";
const F2C: &str = "s6-accessrules-fs-from-cdb";

/// A case: arguments, how to prepare the directory, exit code, stderr.
type Case<'a> = (Vec<&'a str>, &'a dyn Fn(&Path), i32, String);

fn write(p: impl AsRef<Path>, content: &[u8]) {
    let p = p.as_ref();
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn me() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The rules directory `r` under `dir`.
fn build_rules(dir: &Path) {
    let r = dir.join("r");
    let u = r.join(format!("uid/{}", me()));
    write(u.join("allow"), b"");
    write(u.join("env/S6_FDHOLDER_STORE_REGEX"), b"^foo\n");
    write(u.join("env/S6_FDHOLDER_LIST"), b"\n"); // set, empty
    write(u.join("env/S6_FDHOLDER_GETDUMP"), b""); // unset
    write(u.join("env/TRIM"), b"  spaced value \t\r\nsecond line\n");
    write(u.join("env/NUL"), b"a\0b\n");
    write(u.join("env/.hidden"), b"skipped\n");
    write(u.join("env/A=B"), b"skipped\n");
    write(r.join("uid/default/deny"), b"");
    write(r.join("gid/100/allow"), b"");
    write(r.join("gid/100/exec"), b"prog arg");
    write(r.join("gid/300/allow"), b"");
    write(r.join("gid/300/deny"), b"");
    write(r.join("uid/1234/env/X"), b"no allow, no deny: no record\n");
    write(r.join("uid/.dot/allow"), b"");
    write(r.join(".dotclass/x/allow"), b"");
}

/// A cdb's records, values decoded and environments sorted, so that the
/// order of records and of variables does not matter.
fn records(cdb: &Path) -> BTreeMap<Vec<u8>, Decision> {
    let c = cdb2::CDB::open(cdb).unwrap_or_else(|e| panic!("{}: {e}", cdb.display()));
    let mut out = BTreeMap::new();
    for kv in c.iter() {
        let (k, v) = kv.unwrap();
        let mut d = rules::cdb::decode_value(&v).unwrap();
        if let Decision::Allow(p) = &mut d {
            p.env.sort_by(|a, b| a.name.cmp(&b.name));
        }
        assert!(out.insert(k, d).is_none(), "duplicate key");
    }
    out
}

/// A cdb's records as raw (key, value) pairs.
fn raw_records(cdb: &Path) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    let c = cdb2::CDB::open(cdb).unwrap();
    c.iter().map(|kv| kv.unwrap()).collect()
}

/// A directory tree: relative path to (kind, permissions, content).
fn tree(dir: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                out.insert(rel, ('d', mode, vec![]));
                walk(base, &p, out);
            } else {
                out.insert(rel, ('f', mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    let m = std::fs::metadata(dir).unwrap();
    out.insert(".".into(), ('d', m.permissions().mode() & 0o7777, vec![]));
    walk(dir, dir, &mut out);
    out
}

fn ok(r: Run) {
    assert_eq!((r.code, r.stderr.as_str()), (Some(0), ""), "{r:?}");
}

#[test]
fn same_records_and_trees_both_ways() {
    let (Some(ref_c2f), Some(ref_f2c)) = (reference(C2F), reference(F2C)) else {
        return;
    };
    let d = TempDir::new("ar");
    build_rules(d.path());
    ok(run(&ours(C2F), &["ours.cdb", "r"], d.path(), &[]));
    ok(run(&ref_c2f, &["ref.cdb", "r"], d.path(), &[]));

    let mine = records(&d.join("ours.cdb"));
    assert_eq!(mine, records(&d.join("ref.cdb")));
    // Both read the directory in the same order, so even the raw values
    // (variables in directory order) agree; the layout may differ.
    assert_eq!(
        raw_records(&d.join("ours.cdb")),
        raw_records(&d.join("ref.cdb"))
    );
    let keys: Vec<String> = mine
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let user = format!("uid/{}", me());
    let mut want_keys = vec![
        "gid/100".to_string(),
        "gid/300".into(),
        user.clone(),
        "uid/default".into(),
    ];
    want_keys.sort();
    assert_eq!(keys, want_keys);
    assert_eq!(mine[b"uid/default".as_slice()], Decision::Deny);
    let Decision::Allow(p) = &mine[user.as_bytes()] else {
        panic!("{user} not allowed")
    };
    let env: Vec<(String, Option<String>)> = p
        .env
        .iter()
        .map(|v| {
            let val = v
                .value
                .as_ref()
                .map(|x| String::from_utf8(x.clone()).unwrap());
            (String::from_utf8(v.name.clone()).unwrap(), val)
        })
        .collect();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        env,
        vec![
            ("NUL".into(), s("a\nb")),
            ("S6_FDHOLDER_GETDUMP".into(), None),
            ("S6_FDHOLDER_LIST".into(), s("")),
            ("S6_FDHOLDER_STORE_REGEX".into(), s("^foo")),
            ("TRIM".into(), s("  spaced value")),
        ]
    );
    assert!(p.exec.is_empty());
    let Decision::Allow(p) = &mine[b"gid/100".as_slice()] else {
        panic!()
    };
    assert_eq!(
        (p.env.len(), p.exec.as_slice()),
        (0, b"prog arg".as_slice())
    );

    // Without -m, the cdb has mkstemp's mode, as the reference's.
    for f in ["ours.cdb", "ref.cdb"] {
        assert_eq!(
            std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o7777,
            0o600
        );
    }

    // Back to directories: both tools, from both cdbs, give one tree.
    let mut trees = Vec::new();
    for (tool, cdb, out) in [
        (ours(F2C), "ours.cdb", "t1"),
        (ours(F2C), "ref.cdb", "t2"),
        (ref_f2c.clone(), "ours.cdb", "t3"),
        (ref_f2c.clone(), "ref.cdb", "t4"),
    ] {
        ok(run(&tool, &[out, cdb], d.path(), &[]));
        trees.push(tree(&d.join(out)));
    }
    for t in &trees[1..] {
        assert_eq!(t, &trees[0]);
    }
    let t = &trees[0];
    let file = |p: &str| {
        t.get(p)
            .unwrap_or_else(|| panic!("{p} missing: {t:?}"))
            .2
            .clone()
    };
    assert_eq!(file(&format!("{user}/env/S6_FDHOLDER_LIST")), b"\n");
    assert_eq!(file(&format!("{user}/env/S6_FDHOLDER_GETDUMP")), b"");
    assert_eq!(
        file(&format!("{user}/env/S6_FDHOLDER_STORE_REGEX")),
        b"^foo\n"
    );
    assert_eq!(file(&format!("{user}/env/NUL")), b"a\nb\n");
    assert_eq!(file(&format!("{user}/allow")), b"");
    assert_eq!(file("gid/100/exec"), b"prog arg");
    assert_eq!(file("gid/300/allow"), b"");
    assert!(!t.contains_key("gid/300/deny") && !t.contains_key("uid/1234"));

    // And round again, through the other tool: the same records, but for
    // a value holding a newline (from a NUL), which the written file cuts
    // at its first line, with either tool.
    ok(run(&ref_c2f, &["again-ref.cdb", "t1"], d.path(), &[]));
    ok(run(&ours(C2F), &["again-ours.cdb", "t4"], d.path(), &[]));
    let mut want = mine.clone();
    if let Some(Decision::Allow(p)) = want.get_mut(user.as_bytes()) {
        let nul = p.env.iter_mut().find(|v| v.name == b"NUL").unwrap();
        nul.value = Some(b"a".to_vec());
    }
    assert_eq!(records(&d.join("again-ref.cdb")), want);
    assert_eq!(records(&d.join("again-ours.cdb")), want);
}

#[test]
fn mode_option_and_atomic_replacement() {
    let d = TempDir::new("ar");
    build_rules(d.path());
    write(d.join("rules.cdb"), b"old");
    let old_ino = std::fs::metadata(d.join("rules.cdb")).unwrap().ino();
    ok(run(
        &ours(C2F),
        &["-m", "0640", "rules.cdb", "r"],
        d.path(),
        &[],
    ));
    let m = std::fs::metadata(d.join("rules.cdb")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_ne!(m.ino(), old_ino, "not replaced by rename");
    ok(run(
        &ours(C2F),
        &["-m0444", "rules.cdb", "r"],
        d.path(),
        &[],
    ));
    assert_eq!(
        std::fs::metadata(d.join("rules.cdb"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o444
    );
    let r = run(&ours(C2F), &["-m", "9", "rules.cdb", "r"], d.path(), &[]);
    assert_eq!(r.code, Some(100));
    assert_eq!(
        r.stderr,
        format!("{C2F}: fatal: mode needs to be an unsigned integer (in octal)\n")
    );
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(":s6-accessrules-cdb-from-fs:"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// Where the reference in /usr/bin (Debian's s6 2.11.3.2, built with
/// skalibs 2.13) prints other text than upstream s6 2.15, whose text ours
/// prints: (program, 2.11's text, 2.15's text).
///
/// - skalibs 2.13's `strerr_diefu*x` printed `fatal: : unable to ...` (a
///   stray `": "`, fixed in skalibs 2.14), for fs-from-cdb's two failures
///   that carry no errno: an invalid cdb and an invalid record;
/// - s6 2.11's cdb-from-fs has no `-m mode` option, and its usage line
///   does not show it; 2.15's does.
const NEWER_TEXT: &[(&str, &str, &str)] = &[
    (F2C, "fatal: : unable to ", "fatal: unable to "),
    (
        C2F,
        "usage: s6-accessrules-cdb-from-fs cdbfile dir\n",
        "usage: s6-accessrules-cdb-from-fs [ -m mode ] cdbfile dir\n",
    ),
];

/// The reference's stderr with 2.11's text (see [`NEWER_TEXT`]) replaced
/// by 2.15's; unchanged once /usr/bin holds a newer s6.
fn as_2_15(name: &str, stderr: &str) -> String {
    NEWER_TEXT
        .iter()
        .filter(|(prog, ..)| *prog == name)
        .fold(stderr.to_string(), |s, (_, old, new)| s.replace(old, new))
}

/// Runs ours and the reference in twin directories prepared by `setup`;
/// they must agree (the reference's stderr read as 2.15 would print it:
/// see [`NEWER_TEXT`]). Returns ours and the two directories.
fn same(name: &str, args: &[&str], setup: &dyn Fn(&Path)) -> Option<(Run, TempDir, TempDir)> {
    let refbin = reference(name)?;
    let (d1, d2) = (TempDir::new("ar"), TempDir::new("ar"));
    setup(d1.path());
    setup(d2.path());
    let a = run(&ours(name), args, d1.path(), &[]);
    let mut b = run(&refbin, args, d2.path(), &[]);
    b.stderr = as_2_15(name, &b.stderr);
    assert_eq!(a, b, "{name} {args:?}");
    assert_eq!(
        tree(d1.path()),
        tree(d2.path()),
        "{name} {args:?}: different files left"
    );
    Some((a, d1, d2))
}

#[test]
fn cdb_from_fs_errors_as_the_reference() {
    let usage = format!("{C2F}: usage: {C2F} [ -m mode ] cdbfile dir\n");
    let rules = |d: &Path| build_rules(d);
    let fatal = |m: &str| format!("{C2F}: fatal: {m}\n");
    let big_exec = |d: &Path| {
        build_rules(d);
        write(d.join("r/gid/100/exec"), &[b'x'; 5000]);
    };
    let cases: Vec<Case> = vec![
        (vec![], &rules, 100, usage.clone()),
        (vec!["x.cdb"], &rules, 100, usage.clone()),
        (
            vec!["x.cdb", "nonexistent"],
            &rules,
            111,
            fatal("unable to opendir nonexistent: No such file or directory"),
        ),
        (
            vec!["x.cdb", "r"],
            &|d: &Path| write(d.join("r/uid"), b""),
            111,
            fatal("unable to opendir r/uid: Not a directory"),
        ),
        (
            vec!["x.cdb", "r"],
            &|d: &Path| write(d.join("r/uid/5"), b""),
            111,
            fatal("unable to access r/uid/5/allow: Not a directory"),
        ),
        (
            vec!["x.cdb", "r"],
            &|d: &Path| {
                write(d.join("r/uid/5/allow"), b"");
                write(d.join("r/uid/5/env"), b"");
            },
            111,
            fatal("unable to envdir r/uid/5/env: Not a directory"),
        ),
        (
            vec!["x.cdb", "r"],
            &|d: &Path| {
                write(d.join("r/uid/5/allow"), b"");
                std::fs::create_dir_all(d.join("r/uid/5/exec")).unwrap();
            },
            111,
            fatal("unable to openreadnclose r/uid/5/exec: Is a directory"),
        ),
        (
            vec!["x.cdb", "r"],
            &|d: &Path| {
                write(d.join("r/uid/5/allow"), b"");
                write(d.join("r/uid/5/env/A"), &[b'a'; 3000]);
                write(d.join("r/uid/5/env/B"), &[b'b'; 3000]);
            },
            100,
            fatal("r/uid/5/env too big: Success"),
        ),
        (
            vec!["x.cdb", "r"],
            &big_exec,
            0,
            format!("{C2F}: warning: possibly truncated file r/gid/100/exec\n"),
        ),
    ];
    for (args, setup, code, msg) in cases {
        let Some((r, d1, d2)) = same(C2F, &args, setup) else {
            return;
        };
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (Some(code), msg.as_str()),
            "{args:?}"
        );
        if code == 0 {
            assert_eq!(records(&d1.join("x.cdb")), records(&d2.join("x.cdb")));
        }
    }

    // mkstemp's random suffix differs from run to run.
    let Some(refbin) = reference(C2F) else { return };
    let d = TempDir::new("ar");
    build_rules(d.path());
    for bin in [ours(C2F), refbin] {
        let r = run(&bin, &["nodir/x.cdb", "r"], d.path(), &[]);
        let msg = r
            .stderr
            .strip_prefix(&format!(
                "{C2F}: fatal: unable to mkstemp nodir/x.cdb:{C2F}:"
            ))
            .unwrap();
        let (suffix, err) = msg.split_at(6);
        assert!(suffix.bytes().all(|c| c.is_ascii_alphanumeric()), "{r:?}");
        assert_eq!((r.code, err), (Some(111), ": No such file or directory\n"));
    }
}

/// The one deliberate difference: an environment of 4097 to 4100 bytes is
/// refused, where the reference writes a record that neither its daemon nor
/// its fs-from-cdb accepts.
#[test]
fn env_just_over_4096_bytes_is_refused() {
    let (Some(ref_c2f), Some(ref_f2c)) = (reference(C2F), reference(F2C)) else {
        return;
    };
    let d = TempDir::new("ar");
    write(d.join("r/uid/5/allow"), b"");
    write(d.join("r/uid/5/env/A"), &[b'a'; 3000]); // "A=" + 3000 + NUL = 3003
    write(d.join("r/uid/5/env/B"), &[b'b'; 1092]); // "B=" + 1092 + NUL = 1095
    let r = run(&ours(C2F), &["x.cdb", "r"], d.path(), &[]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            Some(100),
            "s6-accessrules-cdb-from-fs: fatal: r/uid/5/env too big: Success\n"
        )
    );
    assert!(!d.join("x.cdb").exists());
    ok(run(&ref_c2f, &["x.cdb", "r"], d.path(), &[]));
    let r = run(&ref_f2c, &["out", "x.cdb"], d.path(), &[]);
    assert_eq!(
        r.code,
        Some(111),
        "the reference now reads its own record: {r:?}"
    );
    let r = run(&ours(F2C), &["out", "x.cdb"], d.path(), &[]);
    assert_eq!(r.code, Some(111), "{r:?}");
    // Exactly 4096 bytes is fine for everyone.
    write(d.join("r/uid/5/env/B"), &[b'b'; 1090]);
    ok(run(&ours(C2F), &["y.cdb", "r"], d.path(), &[]));
    ok(run(&ref_f2c, &["out", "y.cdb"], d.path(), &[]));
}

/// A cdb made with cdb2 from raw records.
fn make_cdb(path: &Path, recs: &[(&[u8], &[u8])]) {
    let mut m = cdb2::CDBMake::new(std::fs::File::create(path).unwrap()).unwrap();
    for (k, v) in recs {
        m.add(k, v).unwrap();
    }
    m.finish().unwrap();
}

#[test]
fn fs_from_cdb_as_the_reference() {
    let fatal = |m: &str| format!("{F2C}: fatal: {m}\n");
    let usage = format!("{F2C}: usage: {F2C} dir cdbfile\n");
    let invalid =
        fatal("unable to handle cdb record: x.cdb does not contain valid accessrules data");
    let rec = |recs: &'static [(&'static [u8], &'static [u8])]| {
        move |d: &Path| make_cdb(&d.join("x.cdb"), recs)
    };
    let odd = rec(&[
        (b"uid/7", b"D"),
        (b"uid/8", b"Z"),
        (b"a/b/c", b"A\0\0\0\0"),
        (b"uid/9", b"A\0\x06X=1\0Y\0\0\0"),
        (b"uid/10", b"A\0\x06E=a=b\0\0\x03x\ny"),
    ]);
    let bad_env = rec(&[(b"uid/1", b"A\0\0\0\0"), (b"uid/5", b"A\0\x03FOO\0\0")]);
    let bad_len = rec(&[(b"uid/5", b"A\0\x09xyz")]);
    let too_long = |d: &Path| make_cdb(&d.join("x.cdb"), &[(b"uid/5", &[b'A'; 8202][..])]);
    let bytes = |b: &'static [u8]| move |d: &Path| write(d.join("x.cdb"), b);
    let empty_name = rec(&[(b"uid/9", b"A\0\x03=z\0\0\0")]);
    let empty_value = rec(&[(b"uid/5", b"")]);
    let (b0, b2, b4, zeros) = (
        bytes(b""),
        bytes(b"\xff\xff"),
        bytes(b"\xff\xff\xff\xff"),
        bytes(&[0; 2048]),
    );
    let cases: Vec<Case> = vec![
        (vec![], &|_| {}, 100, usage.clone()),
        (vec!["out"], &|_| {}, 100, usage.clone()),
        (
            vec!["out", "x.cdb"],
            &|_| {},
            111,
            fatal("unable to cdb_init: No such file or directory"),
        ),
        (
            vec!["out", "x.cdb"],
            &b0,
            111,
            fatal("unable to cdb_init: Invalid argument"),
        ),
        (
            vec!["out", "x.cdb"],
            &b2,
            111,
            fatal("unable to cdb_traverse_next: invalid cdb"),
        ),
        (
            vec!["out", "x.cdb"],
            &b4,
            111,
            fatal("unable to cdb_traverse_next: invalid cdb"),
        ),
        (vec!["out", "x.cdb"], &zeros, 0, String::new()),
        (
            vec!["out", "x.cdb"],
            &|d: &Path| {
                make_cdb(&d.join("x.cdb"), &[]);
                std::fs::create_dir(d.join("out")).unwrap();
            },
            111,
            fatal("unable to mkdir out: File exists"),
        ),
        (vec!["out", "x.cdb"], &odd, 0, String::new()),
        (vec!["out", "x.cdb"], &bad_env, 111, invalid.clone()),
        (vec!["out", "x.cdb"], &bad_len, 111, invalid.clone()),
        (vec!["out", "x.cdb"], &too_long, 111, invalid.clone()),
        (vec!["out", "x.cdb"], &empty_value, 111, invalid.clone()),
        (
            vec!["out", "x.cdb"],
            &empty_name,
            111,
            fatal("unable to openwritenclose_unsafe out/uid/9/env/: Is a directory"),
        ),
    ];
    for (args, setup, code, msg) in cases {
        // `same` also checks that both left the same files (a failure
        // removes the directory it was making).
        let Some((r, ..)) = same(F2C, &args, setup) else {
            return;
        };
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (Some(code), msg.as_str()),
            "{args:?}"
        );
    }
}

/// cdb-from-fs's usage line is 2.15's, `-m mode` included (2.11's lacks
/// it: see [`NEWER_TEXT`]), for too few operands and for a bad option.
#[test]
fn cdb_from_fs_usage_as_2_15() {
    let d = TempDir::new("ar");
    build_rules(d.path());
    let usage = "s6-accessrules-cdb-from-fs: usage: \
                 s6-accessrules-cdb-from-fs [ -m mode ] cdbfile dir\n";
    for args in [
        &[][..],
        &["x.cdb"],
        &["-m", "0644", "x.cdb"],
        &["-z", "x.cdb", "r"],
    ] {
        let r = run(&ours(C2F), args, d.path(), &[]);
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (Some(100), "", usage),
            "{args:?}"
        );
    }
    assert!(!d.join("x.cdb").exists());
}

/// fs-from-cdb's two failures without an errno print 2.15's text,
/// `fatal: unable to ...` (2.11 prints `fatal: : unable to ...`: see
/// [`NEWER_TEXT`]), exit 111 and leave no directory behind.
#[test]
fn fs_from_cdb_invalid_cdb_messages_as_2_15() {
    let d = TempDir::new("ar");
    write(d.join("short.cdb"), b"\xff\xff");
    make_cdb(&d.join("bad.cdb"), &[(b"uid/5", b"A\0\x09xyz")]);
    let cases = [
        (
            "short.cdb",
            "s6-accessrules-fs-from-cdb: fatal: unable to cdb_traverse_next: invalid cdb\n",
        ),
        (
            "bad.cdb",
            "s6-accessrules-fs-from-cdb: fatal: unable to handle cdb record: \
             bad.cdb does not contain valid accessrules data\n",
        ),
    ];
    for (cdb, msg) in cases {
        let r = run(&ours(F2C), &["out", cdb], d.path(), &[]);
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (Some(111), "", msg),
            "{cdb}"
        );
        assert!(!d.join("out").exists(), "{cdb}: out left behind");
        // The reference prints 2.11's text or, once newer, this one.
        if let Some(refbin) = reference(F2C) {
            let r = run(&refbin, &["out", cdb], d.path(), &[]);
            assert_eq!((r.code, as_2_15(F2C, &r.stderr).as_str()), (Some(111), msg));
        }
    }
}

/// Waits until `s6-fdholder-list` succeeds on `sock`.
fn wait_ready(list: &Path, dir: &Path) {
    let t = Instant::now();
    while run(list, &["sock"], dir, &[]).code != Some(0) {
        assert!(t.elapsed() < Duration::from_secs(10), "daemon not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Our cdb drives the reference daemon: stores and lists are allowed or
/// refused as the rules say.
#[test]
fn reference_daemon_obeys_our_cdb() {
    let names = [
        "s6-ipcserver-socketbinder",
        "s6-fdholderd",
        "s6-fdholder-store",
        "s6-fdholder-list",
    ];
    let bins: Vec<PathBuf> = names.iter().filter_map(|n| reference(n)).collect();
    let (Some(applyuidgid), [socketbinder, daemon, store, list]) =
        (reference("s6-applyuidgid"), &bins[..])
    else {
        return;
    };
    let d = TempDir::new("ar");
    build_rules(d.path());
    ok(run(&ours(C2F), &["rules.cdb", "r"], d.path(), &[]));
    let mut child = Command::new(socketbinder)
        .args([
            "sock".as_ref(),
            daemon.as_os_str(),
            "-x".as_ref(),
            "rules.cdb".as_ref(),
        ])
        .current_dir(d.path())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checks = || {
        wait_ready(list, d.path());
        ok(run(store, &["sock", "foo1"], d.path(), &[]));
        let r = run(store, &["sock", "bar"], d.path(), &[]);
        assert_eq!(r.code, Some(1), "store outside STORE_REGEX: {r:?}");
        assert_eq!(
            r.stderr,
            "s6-fdholder-store: fatal: unable to store fd: Operation not permitted\n"
        );
        let r = run(list, &["sock"], d.path(), &[]);
        assert_eq!((r.code, r.stdout.as_str()), (Some(0), "foo1\n"));
        let getdump = PathBuf::from("/usr/bin/s6-fdholder-getdump");
        if getdump.exists() {
            // S6_FDHOLDER_GETDUMP is an empty file: unset, so refused.
            assert_eq!(
                run(&getdump, &["sock", "true"], d.path(), &[]).code,
                Some(1)
            );
        }
        if is_root("the live check's other uids") {
            let l = list.to_str().unwrap();
            // uid 1000, gid 1000: no rule but uid/default, a deny.
            let r = run(
                &applyuidgid,
                &["-u", "1000", "-g", "1000", "-G", "", l, "sock"],
                d.path(),
                &[],
            );
            assert_ne!(r.code, Some(0), "denied peer listed: {r:?}");
            assert_eq!(r.stdout, "");
            // gid 100: allowed, but with no right to list.
            let r = run(
                &applyuidgid,
                &["-u", "1000", "-g", "100", "-G", "", l, "sock"],
                d.path(),
                &[],
            );
            assert_eq!(r.code, Some(1), "{r:?}");
            assert_eq!(
                r.stderr,
                "s6-fdholder-list: fatal: unable to get fd list: Operation not permitted\n"
            );
        }
    };
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
    child.kill().unwrap();
    child.wait().unwrap();
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
}
