//! Access rules, as s6's `accessrules` library reads them: a rules directory
//! (read by path at every lookup, as the reference reads it, so that any
//! change acts on the very next lookup) or a rules cdb.
//!
//! A connection is judged from its peer's uid and gid. Keys are tried in
//! this order, the first one present decides: `uid/self` (only if the peer
//! uid is our euid), `uid/<uid>`, `gid/self` (peer gid is our egid),
//! `gid/<gid>`, `uid/default`.
//!
//! Each format is written once: the rules directory's (what a key's files
//! mean, the environment directory's rules, the keys a directory holds) in
//! `rules/dir.rs`, whose items are re-exported here and serve the lookup by
//! path and `s6-accessrules-cdb-from-fs`; the cdb's (the file's
//! structure, a record's value) in [`cdb`], which serves the daemon's
//! `-x`, `s6-accessrules-cdb-from-fs` and `s6-accessrules-fs-from-cdb`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub mod cdb;
mod dir;
pub use dir::{
    ENV_DIR, EXEC_FILE, Key, KeyFiles, Keys, KeysError, Mark, lookup_dir, lookup_dir_in,
    read_env_files, read_envdir, read_exec, read_key,
};

/// Most bytes of a rule's `exec` string: what is read of an `exec` file,
/// and what a cdb value holds.
pub const EXEC_MAX: usize = 4096;

/// One variable of a rule's environment: a name and a value, or no value
/// when the rule unsets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// Variable name (no `=`, no NUL).
    pub name: Vec<u8>,
    /// `None` when the variable is unset.
    pub value: Option<Vec<u8>>,
}

/// What an allowing rule carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Environment modifications, in order.
    pub env: Vec<EnvVar>,
    /// The `exec` string (fd-holding ignores it), empty if none; at most
    /// [`EXEC_MAX`] bytes.
    pub exec: Vec<u8>,
}

impl Params {
    /// The first value set for `name`, if any.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.env
            .iter()
            .find(|v| v.name == name && v.value.is_some())?
            .value
            .as_deref()
    }

    /// Whether `name` is set (an empty value counts as set).
    pub fn is_set(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }
}

/// The verdict of one key, or of a whole lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the rule's parameters.
    Allow(Params),
    /// Explicitly denied.
    Deny,
    /// No rule for this key.
    NotFound,
}

/// Where the rules come from.
#[derive(Debug)]
pub enum Rules {
    /// A rules directory, read by path at every lookup ([`lookup_dir`]):
    /// nothing of it is kept, so a change made any way at all (even one no
    /// inotify event or metadata reports) acts on the very next lookup.
    Dir(PathBuf),
    /// A rules cdb, as mapped when opened (reopen to see a new file).
    Cdb(CdbRules),
    /// A rules file read on SIGHUP that is not a valid cdb: installed all
    /// the same, as the reference installs whatever it maps, so that every
    /// lookup fails and every connection is refused until a valid one is.
    RefuseAll(cdb::BadCdb),
}

/// An open rules cdb: the file's bytes, read when opened.
pub struct CdbRules(Vec<u8>);

impl std::fmt::Debug for CdbRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CdbRules")
    }
}

/// Why [`CdbRules::open`] gave no rules.
#[derive(Debug)]
pub enum CdbOpenError {
    /// The file could not be opened or read (missing, unreadable, out of
    /// descriptors or memory): nothing was read, so nothing new is known.
    Unreadable(io::Error),
    /// The file was read and is not a cdb (see [`cdb::Cdb::check_tables`]),
    /// or is too big to be one.
    Invalid(cdb::BadCdb),
}

impl From<CdbOpenError> for io::Error {
    fn from(e: CdbOpenError) -> io::Error {
        match e {
            CdbOpenError::Unreadable(e) => e,
            CdbOpenError::Invalid(e) => e.into(),
        }
    }
}

impl CdbRules {
    /// Opens a rules cdb: reads it whole and checks that it is one.
    pub fn open(path: impl AsRef<Path>) -> Result<CdbRules, CdbOpenError> {
        let data = read_cdb_file(path.as_ref())?;
        cdb::Cdb::new(&data)
            .check_tables()
            .map_err(CdbOpenError::Invalid)?;
        Ok(CdbRules(data))
    }

    /// Looks up one key.
    pub fn lookup(&self, key: &str) -> io::Result<Decision> {
        match cdb::Cdb::new(&self.0).find(key.as_bytes())? {
            None => Ok(Decision::NotFound),
            Some(v) => cdb::decode_value(v),
        }
    }
}

/// A rules file's bytes. A file of 4 GiB or more is not read: it cannot
/// be a cdb (its offsets are 32 bits).
fn read_cdb_file(path: &Path) -> Result<Vec<u8>, CdbOpenError> {
    use CdbOpenError::Unreadable;
    let mut f = File::open(path).map_err(Unreadable)?;
    let len = f.metadata().map_err(Unreadable)?.len();
    if len > u64::from(u32::MAX) {
        return Err(CdbOpenError::Invalid(cdb::BadCdb));
    }
    let mut data = Vec::new();
    // An error, not an abort, if memory is short (e.g. on SIGHUP).
    data.try_reserve_exact(len as usize)
        .map_err(|_| Unreadable(io::Error::from_raw_os_error(libc::ENOMEM)))?;
    f.read_to_end(&mut data).map_err(Unreadable)?;
    Ok(data)
}

impl Rules {
    /// Looks up one key (`uid/0`, `gid/default`, ...).
    pub fn lookup(&self, key: &str) -> io::Result<Decision> {
        match self {
            Rules::Dir(dir) => lookup_dir(dir, key),
            Rules::Cdb(c) => c.lookup(key),
            Rules::RefuseAll(e) => Err((*e).into()),
        }
    }

    /// Judges a peer by uid and gid, against this process's euid and egid.
    pub fn check_uidgid(&self, uid: u32, gid: u32) -> io::Result<Decision> {
        let euid = rustix::process::geteuid().as_raw();
        let egid = rustix::process::getegid().as_raw();
        self.check_uidgid_as(uid, gid, euid, egid)
    }

    /// [`Rules::check_uidgid`] with this process's euid and egid given
    /// (the daemon reads them once: they never change while it runs).
    pub fn check_uidgid_as(
        &self,
        uid: u32,
        gid: u32,
        euid: u32,
        egid: u32,
    ) -> io::Result<Decision> {
        match self {
            Rules::Dir(d) => {
                let mut buf = Vec::new();
                check_uidgid_with(|k| lookup_dir_in(&mut buf, d, k), uid, gid, euid, egid)
            }
            Rules::Cdb(c) => check_uidgid_with(|k| c.lookup(k), uid, gid, euid, egid),
            Rules::RefuseAll(e) => Err((*e).into()),
        }
    }
}

/// The key order, over any lookup function. `NotFound` from every key is
/// returned as `NotFound` (the caller denies).
pub fn check_uidgid_with(
    mut lookup: impl FnMut(&str) -> io::Result<Decision>,
    uid: u32,
    gid: u32,
    euid: u32,
    egid: u32,
) -> io::Result<Decision> {
    let (mut uid_buf, mut gid_buf) = ([0; KEY_MAX], [0; KEY_MAX]);
    let keys = [
        (uid == euid).then_some("uid/self"),
        Some(numbered_key(&mut uid_buf, "uid/", uid)),
        (gid == egid).then_some("gid/self"),
        Some(numbered_key(&mut gid_buf, "gid/", gid)),
        Some("uid/default"),
    ];
    for key in keys.into_iter().flatten() {
        match lookup(key)? {
            Decision::NotFound => {}
            d => return Ok(d),
        }
    }
    Ok(Decision::NotFound)
}

/// Room for the longest numbered key, `uid/4294967295`.
const KEY_MAX: usize = 16;

/// `class` followed by `n` in decimal, written in `buf` (no allocation).
fn numbered_key<'a>(buf: &'a mut [u8; KEY_MAX], class: &str, n: u32) -> &'a str {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = class.len() + digits.len() - i;
    buf[..class.len()].copy_from_slice(class.as_bytes());
    buf[class.len()..len].copy_from_slice(&digits[i..]);
    // ASCII only: the class given and the digits.
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Decision {
        Decision::Allow(Params::default())
    }

    #[test]
    fn numbered_keys() {
        let mut buf = [0; KEY_MAX];
        for n in [0, 7, 10, 65534, u32::MAX] {
            assert_eq!(numbered_key(&mut buf, "uid/", n), format!("uid/{n}"));
        }
    }

    #[test]
    fn key_order() {
        // (keys present, uid, gid, euid, egid) -> deciding key
        let cases: &[(&[&str], u32, u32, &str)] = &[
            (&["uid/self", "uid/5", "uid/default"], 5, 7, "uid/self"),
            (&["uid/5", "gid/self", "uid/default"], 5, 7, "uid/5"),
            (&["gid/self", "gid/7", "uid/default"], 6, 7, "gid/self"),
            (&["gid/7", "uid/default"], 6, 7, "gid/7"),
            (&["gid/8", "uid/default"], 6, 7, "uid/default"),
            (&["uid/self"], 6, 7, ""),
        ];
        for (present, uid, gid, want) in cases {
            let mut tried = Vec::new();
            let d = check_uidgid_with(
                |k| {
                    tried.push(k.to_string());
                    Ok(if present.contains(&k) {
                        Decision::Allow(Params {
                            exec: k.as_bytes().to_vec(),
                            env: vec![],
                        })
                    } else {
                        Decision::NotFound
                    })
                },
                *uid,
                *gid,
                5,
                7,
            )
            .unwrap();
            match d {
                Decision::Allow(p) => assert_eq!(p.exec, want.as_bytes(), "{present:?}"),
                _ => assert_eq!(*want, "", "{present:?}"),
            }
        }
        // Deny at a key stops the search.
        let d = check_uidgid_with(
            |k| {
                Ok(if k == "uid/5" {
                    Decision::Deny
                } else {
                    allow()
                })
            },
            5,
            7,
            0,
            0,
        )
        .unwrap();
        assert_eq!(d, Decision::Deny);
    }
}
