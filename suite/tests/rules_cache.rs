//! The rules directory cache never serves a stale decision: every kind of
//! edit acts on the very next connection, exactly as with the reference,
//! which reads the directory for every connection.
//!
//! Each case starts a daemon on a rules directory, connects twice (for ours
//! the second connection is answered from the cache: the test checks that
//! the daemon's inotify descriptor holds watches, so the cache really is in
//! play), edits the rules one way, and checks the rights of the very next
//! connection. Every case runs against the reference daemon too: the
//! expected rights are the reference's.
//!
//! Our daemon runs here with `-S` (no sandbox): the cache needs inotify
//! and `fstatfs`, which the sandbox's seccomp allowlist refuses (with the
//! sandbox on, the daemon never opens the cache and every lookup goes by
//! path; see `docs/s6-fdholderd.md`, "Sandbox").

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, Impl, Opts, have_reference, is_root};
use fdholder::Client;

/// Runs `mount` or `umount` with `args`; it must succeed.
fn mount(args: &[&std::ffi::OsStr]) {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap();
    assert!(st.success(), "{args:?} failed");
}

/// The tests of this file one at a time: a mount or unmount made by one
/// is an event for every daemon's cache (the mount table is one), which
/// would empty another test's cache just before it checks that the cache
/// is in play.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Ours];
    if have_reference() {
        v.push(Impl::Reference);
    }
    v
}

/// A daemon on the rules directory `rules`; ours without the sandbox, so
/// that its cache is in play.
fn cache_daemon(which: Impl, rules: PathBuf) -> Daemon {
    Daemon::start_with(
        which,
        Opts {
            args: if which == Impl::Ours { &["-S"] } else { &[] },
            rules: Some(("-i", rules)),
            ..Opts::default()
        },
    )
}

fn me() -> String {
    format!("uid/{}", rustix::process::geteuid().as_raw())
}

fn dl() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

/// The rights of a fresh connection, in short: `refused`, or the words
/// `list` (may list) and each of the ids `a`, `b` it may store.
fn probe(sock: &Path) -> String {
    let Ok(mut c) = Client::connect(sock, dl()) else {
        return "refused".into();
    };
    let mut got = Vec::new();
    match c.list(dl()) {
        Ok(_) => got.push("list"),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(_) => return "refused".into(),
    }
    let f = std::fs::File::open("/dev/null").unwrap();
    for id in ["a", "b"] {
        match c.store(f.as_fd(), id.as_bytes(), None, dl()) {
            Ok(()) => {
                got.push(id);
                c.delete(id.as_bytes(), dl()).unwrap();
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(_) => return "refused".into(),
        }
    }
    got.join(" ")
}

/// Number of inotify watches the daemon holds (0 without an inotify fd).
fn watches(pid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy().contains("inotify") {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            n += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

/// Writes a rule for our uid at `rules/key` allowing `list` (if asked) and
/// storing ids that match `re` (none if `None`).
fn rule(rules: &Path, key: &str, list: bool, re: Option<&str>) {
    let mut env: Vec<(&str, Option<&str>)> = Vec::new();
    if list {
        env.push(("S6_FDHOLDER_LIST", Some("")));
    }
    if let Some(re) = re {
        env.push(("S6_FDHOLDER_STORE_REGEX", Some(re)));
    }
    common::allow(rules, key, &env);
}

/// Runs one edit case on each implementation: `setup` builds the tree in
/// a fresh directory and returns the path to give `-i`; `edit` changes it;
/// the next connection must have `after` rights (the reference's).
fn case(
    name: &str,
    setup: impl Fn(&Path) -> PathBuf,
    before: &str,
    edit: impl Fn(&Path),
    after: &str,
) {
    for which in impls() {
        let dir = common::tmpdir(name);
        let rules = setup(&dir);
        let d = cache_daemon(which, rules);
        assert_eq!(probe(&d.sock), before, "{name} {which:?}: before");
        assert_eq!(probe(&d.sock), before, "{name} {which:?}: again");
        if which == Impl::Ours {
            assert!(
                watches(d.child.id()) > 0,
                "{name}: our daemon should be answering from its cache"
            );
        }
        edit(&dir);
        assert_eq!(probe(&d.sock), after, "{name} {which:?}: after the edit");
        assert_eq!(probe(&d.sock), after, "{name} {which:?}: and after that");
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The usual tree: `dir/rules`, our uid may list and store `^a`.
fn base(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    rule(&rules, &me(), true, Some("^a"));
    rules
}

fn env_file(dir: &Path, var: &str) -> PathBuf {
    dir.join("rules").join(me()).join("env").join(var)
}

#[test]
fn env_file_rewritten_in_place() {
    let _serial = serial();
    case(
        "inplace",
        base,
        "list a",
        |dir| std::fs::write(env_file(dir, "S6_FDHOLDER_STORE_REGEX"), "^b\n").unwrap(),
        "list b",
    );
}

#[test]
fn env_file_replaced_by_rename() {
    let _serial = serial();
    case(
        "rename",
        base,
        "list a",
        |dir| {
            let f = env_file(dir, "S6_FDHOLDER_STORE_REGEX");
            let tmp = f.with_file_name(".new");
            std::fs::write(&tmp, "^[ab]\n").unwrap();
            std::fs::rename(&tmp, &f).unwrap();
        },
        "list a b",
    );
}

#[test]
fn env_file_removed_emptied_truncated_or_added() {
    let _serial = serial();
    case(
        "removed",
        base,
        "list a",
        |dir| std::fs::remove_file(env_file(dir, "S6_FDHOLDER_LIST")).unwrap(),
        "a",
    );
    case(
        "emptied",
        base,
        "list a",
        |dir| std::fs::write(env_file(dir, "S6_FDHOLDER_LIST"), "").unwrap(),
        "a",
    );
    case(
        "truncated",
        base,
        "list a",
        |dir| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(env_file(dir, "S6_FDHOLDER_STORE_REGEX"))
                .unwrap()
                .set_len(0)
                .unwrap();
        },
        "list",
    );
    case(
        "added",
        |dir| {
            let rules = dir.join("rules");
            rule(&rules, &me(), false, Some("^a"));
            rules
        },
        "a",
        |dir| std::fs::write(env_file(dir, "S6_FDHOLDER_LIST"), "\n").unwrap(),
        "list a",
    );
}

#[test]
fn env_file_edited_through_a_hard_link_elsewhere() {
    let _serial = serial();
    case(
        "hardlink",
        |dir| {
            let rules = base(dir);
            std::fs::hard_link(
                env_file(dir, "S6_FDHOLDER_STORE_REGEX"),
                dir.join("elsewhere"),
            )
            .unwrap();
            rules
        },
        "list a",
        |dir| std::fs::write(dir.join("elsewhere"), "^b\n").unwrap(),
        "list b",
    );
}

#[test]
fn env_dir_replaced() {
    let _serial = serial();
    case(
        "envdir",
        base,
        "list a",
        |dir| {
            let env = dir.join("rules").join(me()).join("env");
            std::fs::rename(&env, env.with_file_name("env.old")).unwrap();
            std::fs::create_dir(&env).unwrap();
            std::fs::write(env.join("S6_FDHOLDER_STORE_REGEX"), "^b\n").unwrap();
        },
        "b",
    );
}

#[test]
fn allow_removed_then_deny_then_allow_again() {
    let _serial = serial();
    let key = |dir: &Path| dir.join("rules").join(me());
    case(
        "noallow",
        base,
        "list a",
        |dir| std::fs::remove_file(key(dir).join("allow")).unwrap(),
        "refused",
    );
    case(
        "deny",
        base,
        "list a",
        |dir| {
            std::fs::remove_file(key(dir).join("allow")).unwrap();
            std::fs::write(key(dir).join("deny"), "").unwrap();
        },
        "refused",
    );
    case(
        "allowback",
        |dir| {
            let rules = base(dir);
            std::fs::remove_file(key(dir).join("allow")).unwrap();
            rules
        },
        "refused",
        |dir| std::fs::write(key(dir).join("allow"), "").unwrap(),
        "list a",
    );
}

#[test]
fn key_dir_swapped_or_created_with_precedence() {
    let _serial = serial();
    case(
        "keyswap",
        base,
        "list a",
        |dir| {
            let rules = dir.join("rules");
            rule(&rules, "uid/new", false, Some("^b"));
            let k = rules.join(me());
            std::fs::rename(&k, k.with_file_name("old")).unwrap();
            std::fs::rename(rules.join("uid/new"), &k).unwrap();
        },
        "b",
    );
    // The daemon runs as our uid, so `uid/self` is tried before `uid/<n>`:
    // creating it must take over at once.
    case(
        "selfkey",
        base,
        "list a",
        |dir| rule(&dir.join("rules"), "uid/self", false, Some("^b")),
        "b",
    );
    // And a deny on `uid/self` refuses.
    case(
        "selfdeny",
        base,
        "list a",
        |dir| common::deny(&dir.join("rules"), "uid/self"),
        "refused",
    );
}

#[test]
fn rules_dir_or_an_ancestor_swapped() {
    let _serial = serial();
    case(
        "rootswap",
        base,
        "list a",
        |dir| {
            rule(&dir.join("next"), &me(), false, Some("^b"));
            std::fs::rename(dir.join("rules"), dir.join("prev")).unwrap();
            std::fs::rename(dir.join("next"), dir.join("rules")).unwrap();
        },
        "b",
    );
    case(
        "ancestor",
        |dir| {
            let rules = dir.join("cur").join("rules");
            rule(&rules, &me(), true, Some("^a"));
            rules
        },
        "list a",
        |dir| {
            rule(&dir.join("next").join("rules"), &me(), false, Some("^b"));
            std::fs::rename(dir.join("cur"), dir.join("prev")).unwrap();
            std::fs::rename(dir.join("next"), dir.join("cur")).unwrap();
        },
        "b",
    );
}

#[test]
fn symlinked_rules_dir_switched() {
    let _serial = serial();
    // The s6-rc way of switching a live directory: a new symlink renamed
    // over the old one.
    case(
        "symlink",
        |dir| {
            rule(&dir.join("v1"), &me(), true, Some("^a"));
            rule(&dir.join("v2"), &me(), false, Some("^b"));
            std::os::unix::fs::symlink("v1", dir.join("live")).unwrap();
            dir.join("live")
        },
        "list a",
        |dir| {
            std::os::unix::fs::symlink("v2", dir.join("live.new")).unwrap();
            std::fs::rename(dir.join("live.new"), dir.join("live")).unwrap();
        },
        "b",
    );
}

#[test]
fn symlinks_inside_the_tree_are_followed_and_never_go_stale() {
    let _serial = serial();
    // A key that is a symlink, and an env file that is a symlink to a file
    // outside the tree: the cache does not keep such keys, so editing the
    // targets acts at once.
    case(
        "keylink",
        |dir| {
            let rules = dir.join("rules");
            rule(&dir.join("real"), "k", true, Some("^a"));
            std::fs::create_dir_all(rules.join("uid")).unwrap();
            std::os::unix::fs::symlink(dir.join("real/k"), rules.join(me())).unwrap();
            rules
        },
        "list a",
        |dir| std::fs::write(dir.join("real/k/env/S6_FDHOLDER_STORE_REGEX"), "^b\n").unwrap(),
        "list b",
    );
    for which in impls() {
        let dir = common::tmpdir("envlink");
        let rules = base(&dir);
        std::fs::write(dir.join("re"), "^a\n").unwrap();
        let f = env_file(&dir, "S6_FDHOLDER_STORE_REGEX");
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(dir.join("re"), &f).unwrap();
        let d = cache_daemon(which, rules);
        assert_eq!(probe(&d.sock), "list a", "{which:?}");
        std::fs::write(dir.join("re"), "^b\n").unwrap();
        assert_eq!(probe(&d.sock), "list b", "{which:?}");
        // The target replaced by rename (no event on the link or its dir).
        std::fs::write(dir.join("re.new"), "^[ab]\n").unwrap();
        std::fs::rename(dir.join("re.new"), dir.join("re")).unwrap();
        assert_eq!(probe(&d.sock), "list a b", "{which:?}");
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bind_mount_over_a_key_then_unmount() {
    let _serial = serial();
    // Mounts are not inotify events: the daemon also watches the mount
    // table. Mounting over the key replaces it; unmounting brings it back.
    if !is_root("mounting over a rules key") {
        return;
    }
    for which in impls() {
        let dir = common::tmpdir("mount");
        let rules = base(&dir);
        rule(&dir.join("other"), "k", false, Some("^b"));
        let key = rules.join(me());
        let d = cache_daemon(which, rules.clone());
        assert_eq!(probe(&d.sock), "list a", "{which:?}");
        assert_eq!(probe(&d.sock), "list a", "{which:?}");
        if which == Impl::Ours {
            assert!(watches(d.child.id()) > 0);
        }
        let other = dir.join("other/k");
        mount(&[
            "mount".as_ref(),
            "--bind".as_ref(),
            other.as_os_str(),
            key.as_os_str(),
        ]);
        let mounted = probe(&d.sock);
        let again = probe(&d.sock);
        mount(&["umount".as_ref(), key.as_os_str()]);
        assert_eq!(mounted, "b", "{which:?}: after mount");
        assert_eq!(again, "b", "{which:?}: after mount, again");
        assert_eq!(probe(&d.sock), "list a", "{which:?}: after umount");
        assert_eq!(probe(&d.sock), "list a", "{which:?}: after umount, again");
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_burst_of_edits_each_seen_by_the_next_connection() {
    let _serial = serial();
    for which in impls() {
        let dir = common::tmpdir("burst");
        let rules = base(&dir);
        let d = cache_daemon(which, rules);
        let re = env_file(&dir, "S6_FDHOLDER_STORE_REGEX");
        let list = env_file(&dir, "S6_FDHOLDER_LIST");
        for i in 0..100 {
            let (content, want_re) = if i % 2 == 0 { ("^b", "b") } else { ("^a", "a") };
            std::fs::write(&re, content).unwrap();
            if i % 3 == 0 {
                std::fs::remove_file(&list).unwrap();
            } else {
                std::fs::write(&list, "").unwrap();
            }
            // An empty LIST file unsets it, as a removed one does.
            let want = want_re.to_string();
            assert_eq!(probe(&d.sock), want, "{which:?} round {i}");
            std::fs::write(&list, "x\n").unwrap();
            assert_eq!(
                probe(&d.sock),
                format!("list {want_re}"),
                "{which:?} round {i}"
            );
        }
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn cache_closes_its_descriptors_near_the_fd_limit() {
    let _serial = serial();
    // The cache stays open while held fds and connections leave 269
    // descriptors free (a whole setdump chunk of 253, and the daemon's
    // own), and opens again only with 64 more. With RLIMIT_NOFILE 400: open
    // with few held, closed (inotify descriptor gone) past 131, open again
    // below 67. Rights stay right throughout.
    let dir = common::tmpdir("cachefds");
    let rules = base(&dir);
    let d = Daemon::start_with(
        Impl::Ours,
        Opts {
            args: &["-S"],
            nofile: Some(400),
            rules: Some(("-i", rules)),
            ..Opts::default()
        },
    );
    let pid = d.child.id();
    assert_eq!(probe(&d.sock), "list a");
    assert!(watches(pid) > 0, "cache in use with room to spare");
    let f = std::fs::File::open("/dev/null").unwrap();
    let mut c = Client::connect(&d.sock, dl()).unwrap();
    for i in 0..140 {
        c.store(f.as_fd(), format!("a{i}").as_bytes(), None, dl())
            .unwrap();
    }
    assert_eq!(probe(&d.sock), "list a");
    assert_eq!(watches(pid), 0, "cache closed near the limit");
    std::fs::write(env_file(&dir, "S6_FDHOLDER_STORE_REGEX"), "^[ab]\n").unwrap();
    assert_eq!(probe(&d.sock), "list a b");
    for i in 0..30 {
        c.delete(format!("a{i}").as_bytes(), dl()).unwrap();
    }
    assert_eq!(probe(&d.sock), "list a b");
    assert_eq!(watches(pid), 0, "not yet open again: 110 held");
    for i in 30..100 {
        c.delete(format!("a{i}").as_bytes(), dl()).unwrap();
    }
    assert_eq!(probe(&d.sock), "list a b");
    assert!(
        watches(pid) > 0,
        "cache back with room again: {}",
        d.stderr()
    );
    std::fs::write(env_file(&dir, "S6_FDHOLDER_STORE_REGEX"), "^b\n").unwrap();
    assert_eq!(probe(&d.sock), "list b");
    drop(c);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fifo_in_the_rules_never_hangs_the_daemon() {
    let _serial = serial();
    // The reference blocks for ever opening a FIFO put in a rules
    // directory; ours opens rule files non-blocking: a FIFO reads as an
    // empty file (the variable is unset), and the daemon serves on.
    let dir = common::tmpdir("fifo");
    let rules = base(&dir);
    let list = env_file(&dir, "S6_FDHOLDER_LIST");
    std::fs::remove_file(&list).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(&list)
        .status()
        .unwrap();
    assert!(st.success());
    let d = cache_daemon(Impl::Ours, rules);
    assert_eq!(probe(&d.sock), "a");
    assert_eq!(probe(&d.sock), "a");
    std::fs::remove_file(&list).unwrap();
    std::fs::write(&list, "\n").unwrap();
    assert_eq!(probe(&d.sock), "list a");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_write_through_mmap_after_caching_is_seen() {
    let _serial = serial();
    // inotify reports no write through a mapping: the open before it is
    // the event that throws the cache away. python3 opens and maps the
    // file, writes through the mapping, and keeps the file open and mapped
    // while the daemon is asked (so no close event helps).
    use std::io::{BufRead, BufReader, Write};
    let script = "import mmap,sys\n\
                  f=open(sys.argv[1],'r+b')\n\
                  m=mmap.mmap(f.fileno(),0)\n\
                  m[0:2]=b'^b'\n\
                  print('written',flush=True)\n\
                  sys.stdin.read()\n";
    for which in impls() {
        let dir = common::tmpdir("mmap");
        let rules = base(&dir);
        let d = cache_daemon(which, rules);
        assert_eq!(probe(&d.sock), "list a", "{which:?}");
        assert_eq!(probe(&d.sock), "list a", "{which:?}");
        let mut py = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(env_file(&dir, "S6_FDHOLDER_STORE_REGEX"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed to write through mmap");
        let mut line = String::new();
        BufReader::new(py.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "written\n");
        assert_eq!(probe(&d.sock), "list b", "{which:?}: mapped and written");
        py.stdin.take().unwrap().write_all(b"").unwrap();
        assert!(py.wait().unwrap().success());
        assert_eq!(probe(&d.sock), "list b", "{which:?}");
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_same_directory_through_another_mount_is_another_directory() {
    let _serial = serial();
    // `alt` is a bind mount of `real`: its `rules` is the very same
    // directory (same device and inode), but a key below it is mounted
    // over in `alt` only. Switching the path from `real` to `alt` with a
    // symlink (no mount or unmount then) must give `alt`'s view at once.
    if !is_root("bind mounts") {
        return;
    }
    for which in impls() {
        let dir = common::tmpdir("mntid");
        base(&dir.join("real"));
        rule(&dir.join("other"), "k", false, Some("^b"));
        let alt = dir.join("alt");
        std::fs::create_dir(&alt).unwrap();
        let covered = alt.join("rules").join(me());
        mount(&[
            "mount".as_ref(),
            "--bind".as_ref(),
            dir.join("real").as_os_str(),
            alt.as_os_str(),
        ]);
        mount(&[
            "mount".as_ref(),
            "--bind".as_ref(),
            dir.join("other/k").as_os_str(),
            covered.as_os_str(),
        ]);
        std::os::unix::fs::symlink("real", dir.join("live")).unwrap();
        let d = cache_daemon(which, dir.join("live/rules"));
        let first = probe(&d.sock);
        let second = probe(&d.sock);
        let cached = which != Impl::Ours || watches(d.child.id()) > 0;
        std::os::unix::fs::symlink("alt", dir.join("live.new")).unwrap();
        std::fs::rename(dir.join("live.new"), dir.join("live")).unwrap();
        let after = probe(&d.sock);
        drop(d);
        mount(&["umount".as_ref(), covered.as_os_str()]);
        mount(&["umount".as_ref(), alt.as_os_str()]);
        assert_eq!(
            (first.as_str(), second.as_str()),
            ("list a", "list a"),
            "{which:?}"
        );
        assert!(cached, "our daemon should be answering from its cache");
        assert_eq!(after, "b", "{which:?}: through the other mount");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
