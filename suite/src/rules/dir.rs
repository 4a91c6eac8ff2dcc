//! The rules directory format, in one place: what the daemon's lookup by
//! path ([`lookup_dir`], for every connection) and
//! `s6-accessrules-cdb-from-fs` read, and what
//! `s6-accessrules-fs-from-cdb` writes.
//!
//! A key `class/name` (`uid/0`, `gid/100`, `uid/self`, `uid/default`...) is
//! the directory `DIR/class/name`. If its file `allow` is there, the key
//! allows, with the variables of its environment directory `env/` and the
//! first 4096 bytes of its file `exec`; else if `deny` is there, it denies;
//! else it has no rule. Each reader reaches the files its own way and has
//! its own idea of "there" and of which errors count ([`KeyFiles`]);
//! [`read_key`] is the rule itself.
//!
//! An environment directory holds one file per variable, named after it;
//! names starting with `.` or holding `=` are skipped. The value is the
//! first line of the file's first 4095 bytes, trailing spaces, tabs and CRs
//! removed, NULs turned into newlines; an empty file unsets the variable
//! (skalibs' `envdir`).

use std::ffi::{OsStr, OsString};
use std::fs::{File, ReadDir};
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::RawDir;

use super::{Decision, EXEC_MAX, EnvVar, Params};

/// The two files whose presence decides a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `allow`: the key allows.
    Allow,
    /// `deny`: the key denies (looked at only without `allow`).
    Deny,
}

impl Mark {
    /// The file's name in the key's directory.
    pub const fn file_name(self) -> &'static str {
        match self {
            Mark::Allow => "allow",
            Mark::Deny => "deny",
        }
    }
}

/// The name of a key's environment directory.
pub const ENV_DIR: &str = "env";
/// The name of a key's exec file.
pub const EXEC_FILE: &str = "exec";

/// How one reader reaches the files of one key.
pub trait KeyFiles {
    /// Why the reader gives up on the key.
    type Error;
    /// Whether the file of `mark` counts as there.
    fn present(&mut self, mark: Mark) -> Result<bool, Self::Error>;
    /// The variables of `env/` ([`read_env_files`]); none without `env/`.
    fn env(&mut self) -> Result<Vec<EnvVar>, Self::Error>;
    /// The first [`EXEC_MAX`] bytes of `exec` ([`read_exec`]); none
    /// without `exec`.
    fn exec(&mut self) -> Result<Vec<u8>, Self::Error>;
}

/// A key's rule: `allow` there allows, with `env/` and `exec` (read in that
/// order); else `deny` there denies; else no rule.
pub fn read_key<K: KeyFiles>(key: &mut K) -> Result<Decision, K::Error> {
    if !key.present(Mark::Allow)? {
        return Ok(if key.present(Mark::Deny)? {
            Decision::Deny
        } else {
            Decision::NotFound
        });
    }
    let env = key.env()?;
    let exec = key.exec()?;
    Ok(Decision::Allow(Params { env, exec }))
}

/// What a key's `exec` gives: its first [`EXEC_MAX`] bytes.
pub fn read_exec(f: File) -> io::Result<Vec<u8>> {
    let mut exec = Vec::new();
    f.take(EXEC_MAX as u64).read_to_end(&mut exec)?;
    Ok(exec)
}

/// How much of each file an environment directory read looks at, as
/// skalibs' `envdir` (`MAXVARSIZE`).
const MAX_VAR_SIZE: usize = 4095;

/// The variables of an environment directory whose entries are `names`
/// (in directory order; `.`, `..` and the other skipped names may be
/// there), each file opened by `open` when its turn comes: the envdir
/// rules of the module docs.
pub fn read_env_files<F: AsFd, E: From<io::Error>>(
    names: Vec<Vec<u8>>,
    mut open: impl FnMut(&[u8]) -> Result<F, E>,
) -> Result<Vec<EnvVar>, E> {
    let mut env = Vec::with_capacity(names.len());
    for name in names {
        if skipped_env_name(&name) {
            continue;
        }
        let f = open(&name)?;
        let value = env_value(read_first_line(f)?);
        env.push(EnvVar { name, value });
    }
    Ok(env)
}

/// Whether an environment directory read skips the file `name`: hidden
/// files (`.` and `..` among them), and names with `=` (no variable can be
/// called that).
fn skipped_env_name(name: &[u8]) -> bool {
    name.first() == Some(&b'.') || name.contains(&b'=')
}

/// Reads what [`env_value`] needs of a file: its first 4095 bytes, or
/// fewer as soon as a newline has been read (nothing after the first
/// newline counts, so the value is the same). A one-line file costs one
/// `read` instead of the two of `read_to_end` (data, then EOF).
fn read_first_line(f: impl AsFd) -> io::Result<Vec<u8>> {
    // Read into spare capacity: no zeroing of the 4095 bytes first.
    let mut buf = Vec::with_capacity(MAX_VAR_SIZE);
    while buf.len() < MAX_VAR_SIZE {
        let before = buf.len();
        match rustix::io::read(&f, rustix::buffer::spare_capacity(&mut buf)) {
            Ok(0) => break,
            Ok(_) => {
                if buf[before..].contains(&b'\n') {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Should the allocator have given more capacity than asked.
    buf.truncate(MAX_VAR_SIZE);
    Ok(buf)
}

/// A variable's value from what [`read_first_line`] read of its file: the
/// first line, trailing spaces, tabs and CRs removed, NULs turned into
/// newlines; `None` (unset) for an empty file.
fn env_value(mut line: Vec<u8>) -> Option<Vec<u8>> {
    if line.is_empty() {
        return None;
    }
    if let Some(i) = line.iter().position(|&c| c == b'\n') {
        line.truncate(i);
    }
    while matches!(line.last(), Some(b' ' | b'\t' | b'\r')) {
        line.pop();
    }
    for c in line.iter_mut() {
        if *c == 0 {
            *c = b'\n';
        }
    }
    Some(line)
}

/// Appends `/c` to a path being built (no slash on an empty path or after
/// one), as `Path::push` does for a relative component.
fn push_component(p: &mut Vec<u8>, c: &[u8]) {
    if !p.is_empty() && p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(c);
}

fn as_path(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// Opens a rule file for reading without blocking: a FIFO put in the rules
/// reads as empty instead of hanging the daemon (the reference hangs).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// The names in the directory `fd`, in directory order, without those the
/// envdir rules skip (`.`, `..` and the other hidden names, names with
/// `=`). Read with `getdents64` straight into a buffer on the stack: no
/// `fstat` first (as `opendir` does), no allocation but the names kept.
fn env_names(fd: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
    let mut dir = RawDir::new(fd, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = dir.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if !skipped_env_name(name) {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Reads the environment directory whose path `path` holds (and holds
/// again on return: names are appended to it, then cut off), with the
/// envdir rules of the module docs. The names are read first, so that the
/// directory is closed before files are opened (the daemon may be one
/// descriptor away from its limit); a file that vanishes between the two
/// is `EIDRM`, as the reference's.
fn read_envdir_in(path: &mut Vec<u8>) -> io::Result<Vec<EnvVar>> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let names = env_names(&rustix::fs::open(as_path(path), flags, Mode::empty())?)?;
    let base = path.len();
    let env = read_env_files(names, |name| {
        push_component(path, name);
        let f = open_nonblocking(as_path(path));
        path.truncate(base);
        f.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::from_raw_os_error(libc::EIDRM)
            } else {
                e
            }
        })
    });
    path.truncate(base);
    env
}

/// Reads an environment directory by path, with the envdir rules of the
/// module docs (see [`read_envdir_in`]).
pub fn read_envdir(dir: &Path) -> io::Result<Vec<EnvVar>> {
    let mut path = Vec::with_capacity(dir.as_os_str().len() + 1 + 256);
    path.extend_from_slice(dir.as_os_str().as_bytes());
    read_envdir_in(&mut path)
}

fn readable(path: &Path) -> io::Result<bool> {
    match rustix::fs::access(path, rustix::fs::Access::READ_OK) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::ACCESS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A key's files by path, as the reference daemon's
/// `s6_accessrules_backend_fs` reads them: `allow` and `deny` must be
/// readable (`access(R_OK)`), a missing or unreadable `exec` is none, every
/// other error is an error. One buffer serves every path below `DIR/key`
/// (a component appended, then cut back), and every key of a lookup:
/// `join` would allocate, then reallocate, each time.
struct KeyPath<'a> {
    path: &'a mut Vec<u8>,
    /// The length of `DIR/key` in `path`.
    base: usize,
}

impl KeyPath<'_> {
    /// `DIR/key` in `path` (what it held is dropped), as the reference
    /// builds it: `DIR`, a slash, `key`, whatever `DIR` is. So an empty
    /// `DIR` (`-i ''`) is the root, `/key`, never a path relative to the
    /// working directory.
    fn new<'a>(path: &'a mut Vec<u8>, dir: &Path, key: &str) -> KeyPath<'a> {
        path.clear();
        path.extend_from_slice(dir.as_os_str().as_bytes());
        path.push(b'/');
        path.extend_from_slice(key.as_bytes());
        let base = path.len();
        KeyPath { path, base }
    }

    /// `DIR/key/name`, left in the buffer.
    fn set_file(&mut self, name: &str) {
        self.path.truncate(self.base);
        push_component(self.path, name.as_bytes());
    }

    /// `DIR/key/name`.
    fn file(&mut self, name: &str) -> &Path {
        self.set_file(name);
        as_path(self.path)
    }
}

impl KeyFiles for KeyPath<'_> {
    type Error = io::Error;

    fn present(&mut self, mark: Mark) -> io::Result<bool> {
        readable(self.file(mark.file_name()))
    }

    fn env(&mut self) -> io::Result<Vec<EnvVar>> {
        self.set_file(ENV_DIR);
        match read_envdir_in(self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            r => r,
        }
    }

    fn exec(&mut self) -> io::Result<Vec<u8>> {
        match open_nonblocking(self.file(EXEC_FILE)) {
            Ok(f) => read_exec(f),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EACCES)) => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

/// Looks up `key` in a rules directory by path, as the reference daemon's
/// `s6_accessrules_backend_fs` does: `allow` and `deny` count if readable
/// (`access(R_OK)`), `exec` is opened without blocking (a FIFO reads as
/// empty) and is none if missing or unreadable; every other error is an
/// error. Nothing is kept from one lookup to the next.
pub fn lookup_dir(dir: &Path, key: &str) -> io::Result<Decision> {
    lookup_dir_in(&mut Vec::new(), dir, key)
}

/// [`lookup_dir`], building its paths in `buf` (whatever it holds is
/// dropped): the keys of one connection share one buffer.
pub fn lookup_dir_in(buf: &mut Vec<u8>, dir: &Path, key: &str) -> io::Result<Decision> {
    read_key(&mut KeyPath::new(buf, dir, key))
}

/// `a` followed by `b`, as raw bytes.
fn cat(a: &OsStr, b: &OsStr) -> OsString {
    let mut s = a.to_os_string();
    s.push(b);
    s
}

/// A key found by [`Keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key, `class/name`.
    pub name: OsString,
    /// Its directory, `DIR/class/name`.
    pub path: OsString,
}

/// Why listing a rules directory's keys failed; each names the directory.
#[derive(Debug)]
pub enum KeysError {
    /// The rules directory, or a class in it, could not be opened.
    Open(OsString, io::Error),
    /// The rules directory, or a class in it, could not be read.
    Read(OsString, io::Error),
}

/// Every key of a rules directory, as `s6-accessrules-cdb-from-fs` lists
/// them: `class/name` for each `DIR/class/name`, in directory order, names
/// starting with `.` skipped at both levels. Each class is opened when the
/// one before it has been listed (and closed); the caller stops at the
/// first error.
#[derive(Debug)]
pub struct Keys {
    top: ReadDir,
    /// The rules directory as given.
    dir: OsString,
    /// `DIR/`.
    prefix: OsString,
    /// The class being listed: its name, its path, its entries.
    class: Option<(OsString, OsString, ReadDir)>,
}

impl Keys {
    /// Opens the rules directory `dir`.
    pub fn new(dir: &OsStr) -> Result<Keys, KeysError> {
        let top = std::fs::read_dir(dir).map_err(|e| KeysError::Open(dir.to_owned(), e))?;
        Ok(Keys {
            top,
            dir: dir.to_owned(),
            prefix: cat(dir, "/".as_ref()),
            class: None,
        })
    }
}

/// Whether a name in a rules directory is no class or key.
fn hidden(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".")
}

impl Iterator for Keys {
    type Item = Result<Key, KeysError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((class, cpath, entries)) = &mut self.class {
                match entries.next() {
                    Some(Ok(entry)) => {
                        let ename = entry.file_name();
                        if hidden(&ename) {
                            continue;
                        }
                        let name = cat(&cat(class, "/".as_ref()), &ename);
                        let path = cat(&self.prefix, &name);
                        return Some(Ok(Key { name, path }));
                    }
                    Some(Err(e)) => return Some(Err(KeysError::Read(cpath.clone(), e))),
                    None => self.class = None,
                }
                continue;
            }
            let class = match self.top.next()? {
                Ok(class) => class.file_name(),
                Err(e) => return Some(Err(KeysError::Read(self.dir.clone(), e))),
            };
            if hidden(&class) {
                continue;
            }
            let cpath = cat(&self.prefix, &class);
            match std::fs::read_dir(&cpath) {
                Ok(entries) => self.class = Some((class, cpath, entries)),
                Err(e) => return Some(Err(KeysError::Open(cpath, e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envdir_semantics() {
        let d = std::env::temp_dir().join(format!("fdholder-envdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let w = |n: &str, c: &[u8]| std::fs::write(d.join(n), c).unwrap();
        w("EMPTY", b"");
        w("NL", b"\n");
        w("TRIM", b"^foo$ \t\r\nsecond line");
        w("NONL", b"abc");
        w("NUL", b"a\0b\n");
        let mut long = vec![b'x'; 5000];
        long[4094] = b' ';
        w("LONG", &long);
        w(".hidden", b"x");
        w("A=B", b"x");
        let mut env = read_envdir(&d).unwrap();
        env.sort_by(|a, b| a.name.cmp(&b.name));
        let got: Vec<(String, Option<Vec<u8>>)> = env
            .into_iter()
            .map(|v| (String::from_utf8(v.name).unwrap(), v.value))
            .collect();
        assert_eq!(
            got,
            vec![
                ("EMPTY".into(), None),
                ("LONG".into(), Some(vec![b'x'; 4094])),
                ("NL".into(), Some(vec![])),
                ("NONL".into(), Some(b"abc".to_vec())),
                ("NUL".into(), Some(b"a\nb".to_vec())),
                ("TRIM".into(), Some(b"^foo$".to_vec())),
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keys_and_rules() {
        let d = std::env::temp_dir().join(format!("fdholder-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let w = |p: &str, c: &[u8]| {
            let p = d.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        };
        w("uid/5/allow", b"");
        w("uid/5/env/X", b"1\n");
        w("uid/5/exec", &[b'e'; 5000]);
        w("uid/6/deny", b"");
        w("uid/7/env/X", b"1\n");
        w("uid/.8/allow", b"");
        w(".gid/9/allow", b"");
        let mut keys: Vec<_> = Keys::new(d.as_os_str())
            .unwrap()
            .map(|k| k.unwrap().name.into_string().unwrap())
            .collect();
        keys.sort();
        assert_eq!(keys, ["uid/5", "uid/6", "uid/7"]);
        let Decision::Allow(p) = lookup_dir(&d, "uid/5").unwrap() else {
            panic!()
        };
        assert_eq!(p.get(b"X"), Some(&b"1"[..]));
        assert_eq!(p.exec, [b'e'; EXEC_MAX]);
        assert_eq!(lookup_dir(&d, "uid/6").unwrap(), Decision::Deny);
        assert_eq!(lookup_dir(&d, "uid/7").unwrap(), Decision::NotFound);
        assert_eq!(lookup_dir(&d, "uid/8").unwrap(), Decision::NotFound);
        let e = Keys::new(d.join("none").as_os_str()).unwrap_err();
        assert!(
            matches!(e, KeysError::Open(p, e) if p == d.join("none") && e.kind() == io::ErrorKind::NotFound)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
