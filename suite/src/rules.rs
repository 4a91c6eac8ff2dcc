//! Access rules, as s6's `accessrules` library reads them: a rules directory
//! (whose edits act on the very next lookup; [`DirRules`] keeps decisions
//! until the kernel reports a change) or a rules cdb.
//!
//! A connection is judged from its peer's uid and gid. Keys are tried in
//! this order, the first one present decides: `uid/self` (only if the peer
//! uid is our euid), `uid/<uid>`, `gid/self` (peer gid is our egid),
//! `gid/<gid>`, `uid/default`.
//!
//! Each format is written once: the rules directory's (what a key's files
//! mean, the environment directory's rules, the keys a directory holds) in
//! `rules/dir.rs`, whose items are re-exported here and serve the lookup by
//! path, the cache and `s6-accessrules-cdb-from-fs`; the cdb's (the file's
//! structure, a record's value) in [`cdb`], which serves the daemon's
//! `-x`, `s6-accessrules-cdb-from-fs` and `s6-accessrules-fs-from-cdb`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

mod cache;
pub mod cdb;
mod dir;
pub use cache::{CacheStats, DirRules, LOCAL_FS};
pub use dir::{
    ENV_DIR, EXEC_FILE, Key, KeyFiles, Keys, KeysError, Mark, lookup_dir, read_env_files,
    read_envdir, read_exec, read_key,
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
    /// A rules directory: edits act on the very next lookup (read at every
    /// lookup, or kept until the kernel reports a change: see [`DirRules`]).
    Dir(Box<DirRules>),
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
    /// Descriptors these rules keep open: the rules directory cache's, if
    /// it is open; none for a cdb (read whole when opened).
    pub fn cache_fds(&self) -> u64 {
        match self {
            Rules::Dir(d) => d.open_fds(),
            Rules::Cdb(_) | Rules::RefuseAll(_) => 0,
        }
    }

    /// Looks up one key (`uid/0`, `gid/default`, ...).
    pub fn lookup(&self, key: &str) -> io::Result<Decision> {
        match self {
            Rules::Dir(dir) => dir.lookup_uncached(key),
            Rules::Cdb(c) => c.lookup(key),
            Rules::RefuseAll(e) => Err((*e).into()),
        }
    }

    /// Judges a peer by uid and gid, against this process's euid and egid.
    pub fn check_uidgid(&mut self, uid: u32, gid: u32) -> io::Result<Decision> {
        let euid = rustix::process::geteuid().as_raw();
        let egid = rustix::process::getegid().as_raw();
        self.check_uidgid_as(uid, gid, euid, egid)
    }

    /// [`Rules::check_uidgid`] with this process's euid and egid given
    /// (the daemon reads them once: they never change while it runs).
    pub fn check_uidgid_as(
        &mut self,
        uid: u32,
        gid: u32,
        euid: u32,
        egid: u32,
    ) -> io::Result<Decision> {
        match self {
            Rules::Dir(d) => d.check_uidgid_as(uid, gid, euid, egid),
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
    let uid_key = format!("uid/{uid}");
    let gid_key = format!("gid/{gid}");
    let keys = [
        (uid == euid).then_some("uid/self"),
        Some(uid_key.as_str()),
        (gid == egid).then_some("gid/self"),
        Some(gid_key.as_str()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Decision {
        Decision::Allow(Params::default())
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
