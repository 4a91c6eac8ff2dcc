//! `rules_readers`: the rules directory reader (`lookup_dir`, the key
//! order) and the env-file reader on a small tree the input builds in a
//! temp dir (allow, deny, env/ and exec as files with arbitrary bytes,
//! empty files, huge values, directories, symlinks, dangling ones, names
//! the envdir rules skip), checked against a model of the reference's
//! rules (rules/dir.rs's module docs, docs/s6-fdholderd.md); and the cdb
//! reader (`rules::cdb`) on arbitrary bytes, on cdbs cdb2 writes from the
//! input, and on those cut short or with bytes changed: it never panics,
//! finds exactly what was written, and a damaged file never yields a rule
//! that was not in it. No descriptor may stay open after a lookup.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fdholder_suite::rules::{Decision, EnvVar, Params, cdb, check_uidgid_with, lookup_dir};

use super::{Input, open_fds, settle_fds};

fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    let d = D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fdholder-fuzz-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    });
    // Made again after a cleanup.
    std::fs::create_dir_all(d).unwrap();
    d
}

/// Removes this target's temp dir (the stable run's end).
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(scratch());
}

/// What the model expects of one lookup: a decision, or an error.
type Verdict = Result<Decision, ()>;

/// A file of the tree, as the input makes it.
#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>),
    Dangling,
    /// A symlink to a regular file holding these bytes.
    Link(Vec<u8>),
    Dir,
}

fn node(inp: &mut Input<'_>, b: u8) -> Node {
    match b % 4 {
        0 => Node::File(content(inp)),
        1 => Node::Dangling,
        2 => Node::Link(content(inp)),
        _ => Node::Dir,
    }
}

/// Arbitrary bytes, sometimes a huge value.
fn content(inp: &mut Input<'_>) -> Vec<u8> {
    let b = inp.byte();
    match b % 8 {
        0 => Vec::new(),
        7 => {
            let mut v = inp.bytes(8);
            v.resize(4000 + inp.byte() as usize * 4, b'v');
            if inp.byte() % 2 == 0 {
                let at = v.len() - 3;
                v[at] = b'\n';
            }
            v
        }
        x => {
            let raw = inp.bytes((b >> 3) as usize);
            if x % 2 == 0 {
                // The bytes the envdir rules treat specially, often.
                raw.into_iter()
                    .map(|c| b" \t\r\n\0a="[c as usize % 7])
                    .collect()
            } else {
                raw
            }
        }
    }
}

fn make(path: &Path, n: &Node, aside: &Path) {
    match n {
        Node::File(b) => fs::write(path, b).unwrap(),
        Node::Dangling => symlink(aside.join("nowhere"), path).unwrap(),
        Node::Link(b) => {
            let target = aside.join(format!("t{}", rand_name(path)));
            fs::write(&target, b).unwrap();
            symlink(&target, path).unwrap();
        }
        Node::Dir => fs::create_dir(path).unwrap(),
    }
}

fn rand_name(p: &Path) -> String {
    p.as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bytes a regular file (or a link to one) holds.
fn bytes_of(n: &Node) -> Option<&[u8]> {
    match n {
        Node::File(b) | Node::Link(b) => Some(b),
        _ => None,
    }
}

/// An env/ directory's files: name and what it is.
type EnvFiles = Vec<(Vec<u8>, Node)>;

/// What a key directory holds.
#[derive(Debug, Default)]
struct KeyTree {
    /// The key is a regular file, not a directory.
    is_file: bool,
    allow: Option<Node>,
    deny: Option<Node>,
    /// env/: absent, a directory of (name, node), a file, a dangling link.
    env: Option<Result<EnvFiles, Node>>,
    exec: Option<Node>,
}

const ENV_NAMES: [&[u8]; 7] = [
    b"A",
    b"S6_FDHOLDER_LIST",
    b".hidden",
    b"X=Y",
    b"b c",
    b"\xff\x01",
    b"S6_FDHOLDER_STORE_REGEX",
];

fn key_tree(inp: &mut Input<'_>) -> KeyTree {
    let b = inp.byte();
    let mut k = KeyTree {
        is_file: b % 16 == 15,
        ..KeyTree::default()
    };
    if k.is_file {
        return k;
    }
    let opt = |inp: &mut Input<'_>| {
        let c = inp.byte();
        (c % 3 != 0).then(|| node(inp, c))
    };
    k.allow = opt(inp);
    k.deny = opt(inp);
    k.exec = opt(inp);
    let e = inp.byte();
    k.env = match e % 4 {
        0 => None,
        1 => Some(Err(Node::File(content(inp)))),
        2 => Some(Err(Node::Dangling)),
        _ => {
            let mut files: Vec<(Vec<u8>, Node)> = Vec::new();
            for _ in 0..(e >> 2) % 5 {
                let name = ENV_NAMES[inp.byte() as usize % ENV_NAMES.len()].to_vec();
                let c = inp.byte();
                let n = if c % 4 == 3 {
                    node(inp, c >> 2)
                } else {
                    Node::File(content(inp))
                };
                if !files.iter().any(|(f, _)| *f == name) {
                    files.push((name, n));
                }
            }
            Some(Ok(files))
        }
    };
    k
}

fn build_key(dir: &Path, k: &KeyTree, aside: &Path) {
    if k.is_file {
        fs::write(dir, b"not a key").unwrap();
        return;
    }
    fs::create_dir_all(dir).unwrap();
    for (name, n) in [("allow", &k.allow), ("deny", &k.deny), ("exec", &k.exec)] {
        if let Some(n) = n {
            make(&dir.join(name), n, aside);
        }
    }
    match &k.env {
        None => {}
        Some(Err(n)) => make(&dir.join("env"), n, aside),
        Some(Ok(files)) => {
            fs::create_dir(dir.join("env")).unwrap();
            for (name, n) in files {
                make(
                    &dir.join("env").join(std::ffi::OsStr::from_bytes(name)),
                    n,
                    aside,
                );
            }
        }
    }
}

/// The envdir value of a file's bytes: the first line of its first 4095
/// bytes, trailing spaces, tabs and CRs cut, NULs made newlines; an empty
/// file unsets.
fn env_value(b: &[u8]) -> Option<Vec<u8>> {
    if b.is_empty() {
        return None;
    }
    let b = &b[..b.len().min(4095)];
    let line = match b.iter().position(|&c| c == b'\n') {
        Some(i) => &b[..i],
        None => b,
    };
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b' ' | b'\t' | b'\r') {
        end -= 1;
    }
    Some(
        line[..end]
            .iter()
            .map(|&c| if c == 0 { b'\n' } else { c })
            .collect(),
    )
}

/// The model of one key's lookup.
fn model_key(k: Option<&KeyTree>) -> Verdict {
    let Some(k) = k else {
        return Ok(Decision::NotFound);
    };
    if k.is_file {
        return Err(()); // DIR/key/allow: ENOTDIR
    }
    let there = |n: &Option<Node>| matches!(n, Some(n) if !matches!(n, Node::Dangling));
    if !there(&k.allow) {
        return Ok(if there(&k.deny) {
            Decision::Deny
        } else {
            Decision::NotFound
        });
    }
    let mut env = Vec::new();
    match &k.env {
        None | Some(Err(Node::Dangling)) => {}
        Some(Err(_)) => return Err(()),
        Some(Ok(files)) => {
            for (name, n) in files {
                if name[0] == b'.' || name.contains(&b'=') {
                    continue;
                }
                let b = bytes_of(n).ok_or(())?; // EIDRM, EISDIR
                env.push(EnvVar {
                    name: name.clone(),
                    value: env_value(b),
                });
            }
        }
    }
    let exec = match &k.exec {
        None | Some(Node::Dangling) => Vec::new(),
        Some(Node::Dir) => return Err(()),
        Some(n) => {
            let b = bytes_of(n).unwrap();
            b[..b.len().min(4096)].to_vec()
        }
    };
    Ok(Decision::Allow(Params { env, exec }))
}

fn sorted(v: Verdict) -> Verdict {
    v.map(|d| match d {
        Decision::Allow(mut p) => {
            p.env.sort_by(|a, b| a.name.cmp(&b.name));
            Decision::Allow(p)
        }
        d => d,
    })
}

/// A rules directory from the input, looked up as the daemon does.
fn check_dir(inp: &mut Input<'_>) {
    let root = scratch().join("rules");
    let aside = scratch().join("aside");
    let _ = fs::remove_dir_all(&root);
    let _ = fs::remove_dir_all(&aside);
    fs::create_dir_all(root.join("uid")).unwrap();
    fs::create_dir_all(root.join("gid")).unwrap();
    fs::create_dir_all(&aside).unwrap();
    let (uid, gid) = (5u32, 7u32);
    let names = ["uid/self", "uid/5", "gid/self", "gid/7", "uid/default"];
    let mut keys: Vec<Option<KeyTree>> = Vec::new();
    let present = inp.byte();
    for (i, name) in names.iter().enumerate() {
        let k = (present >> i & 1 != 0).then(|| key_tree(inp));
        if let Some(k) = &k {
            build_key(&root.join(name), k, &aside);
        }
        keys.push(k);
    }
    let as_self = inp.byte();
    let (euid, egid) = (
        if as_self & 1 != 0 { uid } else { 0 },
        if as_self & 2 != 0 { gid } else { 0 },
    );
    let base = open_fds();
    for (name, k) in names.iter().zip(&keys) {
        let got = lookup_dir(&root, name).map_err(|_| ());
        assert_eq!(
            sorted(got),
            sorted(model_key(k.as_ref())),
            "key {name}: {k:?}"
        );
    }
    // The key order: the first key with a rule decides; an error stops.
    let mut want: Verdict = Ok(Decision::NotFound);
    for (i, k) in keys.iter().enumerate() {
        if (i == 0 && uid != euid) || (i == 2 && gid != egid) {
            continue;
        }
        match model_key(k.as_ref()) {
            Ok(Decision::NotFound) => {}
            v => {
                want = v;
                break;
            }
        }
    }
    let got = check_uidgid_with(|k| lookup_dir(&root, k), uid, gid, euid, egid).map_err(|_| ());
    assert_eq!(
        sorted(got),
        sorted(want),
        "uid {uid} gid {gid} as {euid}/{egid}: {keys:?}"
    );
    settle_fds(base, base, &|| {
        "descriptors left open by a lookup".to_string()
    });
}

const CDB_KEYS: [&[u8]; 5] = [b"uid/0", b"uid/default", b"gid/7", b"", b"uid/self"];

/// Arbitrary bytes as a cdb; then a cdb written by cdb2 from the input,
/// read back whole, cut short and with a byte changed.
fn check_cdb(inp: &mut Input<'_>) {
    let mode = inp.byte();
    if mode % 2 == 0 {
        let data = inp.bytes(usize::MAX);
        probe(&data, None);
        return;
    }
    let mut recs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for _ in 0..mode as usize % 9 {
        let k = inp.byte();
        let key = if k % 4 == 3 {
            inp.bytes(k as usize % 12)
        } else {
            CDB_KEYS[k as usize % 5].to_vec()
        };
        let v = inp.byte();
        let value = match v % 3 {
            0 => inp.bytes(v as usize % 20),
            1 => cdb::encode_value(&Decision::Deny).unwrap().unwrap(),
            _ => {
                let env = vec![EnvVar {
                    name: b"S6_FDHOLDER_LIST".to_vec(),
                    value: Some(inp.bytes(3).into_iter().map(|c| c.max(1)).collect()),
                }];
                // (A value holds no NUL: the readers make NULs newlines.)
                let d = Decision::Allow(Params {
                    env,
                    exec: inp.bytes(v as usize % 5),
                });
                let e = cdb::encode_value(&d).unwrap().unwrap();
                assert_eq!(
                    cdb::decode_value(&e).unwrap(),
                    d,
                    "a value does not decode back"
                );
                e
            }
        };
        recs.push((key, value));
    }
    let path = scratch().join("x.cdb");
    let mut m = cdb2::CDBMake::new(fs::File::create(&path).unwrap()).unwrap();
    for (k, v) in &recs {
        m.add(k, v).unwrap();
    }
    m.finish().unwrap();
    let data = fs::read(&path).unwrap();
    let c = cdb::Cdb::new(&data);
    c.check_tables().expect("a cdb2 file is a cdb");
    let all: Vec<(&[u8], &[u8])> = c.records().map(|r| r.unwrap()).collect();
    let want: Vec<(&[u8], &[u8])> = recs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    assert_eq!(all, want, "records in file order");
    let first = |key: &[u8]| recs.iter().find(|(k, _)| k == key).map(|(_, v)| &v[..]);
    for (k, _) in &recs {
        assert_eq!(c.find(k).unwrap(), first(k), "find {k:?}");
    }
    for k in CDB_KEYS {
        assert_eq!(c.find(k).unwrap(), first(k), "find {k:?}");
    }
    // Damaged: never a value that was not written for that key.
    let cut = inp.byte() as usize * 7 % data.len();
    probe(&data[..cut], Some(&recs));
    let mut flipped = data.clone();
    let at = (inp.byte() as usize * 13 + inp.byte() as usize) % data.len();
    flipped[at] ^= 1 << (inp.byte() % 8);
    probe(&flipped, None);
}

/// Reads `data` as a cdb every way the daemon and the tools do. With
/// `recs` (the cdb it was cut from), whatever is found must be what was
/// written.
fn probe(data: &[u8], recs: Option<&[(Vec<u8>, Vec<u8>)]>) {
    let c = cdb::Cdb::new(data);
    let valid = c.check_tables().is_ok();
    for k in CDB_KEYS {
        if let Ok(Some(v)) = c.find(k) {
            let _ = cdb::decode_value(v);
            if let Some(recs) = recs {
                assert!(
                    recs.iter().any(|(rk, rv)| rk == k && rv == v),
                    "a cut cdb ({} bytes) gave {k:?} a value never written (tables {valid})",
                    data.len()
                );
            }
        }
    }
    for r in c.records().take(10_000) {
        match r {
            Ok((_, v)) => {
                let _ = cdb::decode_value(v);
            }
            Err(_) => break,
        }
    }
}

/// The target: the first byte picks the directory or the cdb.
pub fn rules_from_bytes(data: &[u8]) {
    let mut inp = Input(data);
    if inp.byte() % 2 == 0 {
        check_dir(&mut inp);
    } else {
        check_cdb(&mut inp);
    }
}
