//! Access rules, as s6's `accessrules` library reads them: a rules directory
//! (whose edits act on the very next lookup; [`DirRules`] keeps decisions
//! until the kernel reports a change) or a rules cdb.
//!
//! A connection is judged from its peer's uid and gid. Keys are tried in
//! this order, the first one present decides: `uid/self` (only if the peer
//! uid is our euid), `uid/<uid>`, `gid/self` (peer gid is our egid),
//! `gid/<gid>`, `uid/default`.
//!
//! The rules directory's format (what a key's files mean, the environment
//! directory's rules, the keys a directory holds) is written once, in
//! `rules/dir.rs`, whose items are re-exported here and serve the lookup by
//! path, the cache and `s6-accessrules-cdb-from-fs`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

mod cache;
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
}

/// An open rules cdb: the file's bytes, read when opened.
pub struct CdbRules(Vec<u8>);

impl std::fmt::Debug for CdbRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CdbRules")
    }
}

impl CdbRules {
    /// Opens a rules cdb.
    pub fn open(path: impl AsRef<Path>) -> io::Result<CdbRules> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        if !(2048..=u64::from(u32::MAX)).contains(&len) {
            return Err(bad_cdb());
        }
        let mut data = Vec::new();
        // An error, not an abort, if memory is short (e.g. on SIGHUP).
        data.try_reserve_exact(len as usize)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        f.read_to_end(&mut data)?;
        Ok(CdbRules(data))
    }

    /// Looks up one key.
    pub fn lookup(&self, key: &str) -> io::Result<Decision> {
        match cdb_find(&self.0, key.as_bytes())? {
            None => Ok(Decision::NotFound),
            Some(v) => decode_value(v),
        }
    }
}

fn bad_cdb() -> io::Error {
    io::Error::other("Invalid file format")
}

/// `data[start..start + len]`, or a bad-file error if out of bounds.
fn cdb_slice(data: &[u8], start: usize, len: usize) -> io::Result<&[u8]> {
    start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .ok_or_else(bad_cdb)
}

fn cdb_u32(data: &[u8], pos: usize) -> io::Result<usize> {
    let b = <[u8; 4]>::try_from(cdb_slice(data, pos, 4)?).map_err(|_| bad_cdb())?;
    Ok(u32::from_le_bytes(b) as usize)
}

/// Finds the first record for `key` in a cdb, bounds-checking every
/// offset and length against the file before using it: a corrupt length
/// is an error, never an allocation of the size it claims (cdb2's reader
/// allocates a record's claimed length before checking it, which aborted
/// the daemon on a corrupt file).
fn cdb_find<'a>(data: &'a [u8], key: &[u8]) -> io::Result<Option<&'a [u8]>> {
    let h = key
        .iter()
        .fold(5381u32, |h, &c| (h << 5).wrapping_add(h) ^ u32::from(c));
    let x = (h as usize & 0xff) << 3;
    let hpos = cdb_u32(data, x)?;
    let hslots = cdb_u32(data, x + 4)?;
    if hslots == 0 {
        return Ok(None);
    }
    let mut slot = (h >> 8) as usize % hslots;
    for _ in 0..hslots {
        let spos = slot
            .checked_mul(8)
            .and_then(|o| hpos.checked_add(o))
            .ok_or_else(bad_cdb)?;
        let shash = cdb_u32(data, spos)?;
        let pos = cdb_u32(data, spos + 4)?;
        if pos == 0 {
            return Ok(None);
        }
        if shash == h as usize {
            let klen = cdb_u32(data, pos)?;
            let dlen = cdb_u32(data, pos + 4)?;
            if klen == key.len() && cdb_slice(data, pos + 8, klen)? == key {
                return cdb_slice(data, pos + 8 + klen, dlen).map(Some);
            }
        }
        slot += 1;
        if slot == hslots {
            slot = 0;
        }
    }
    Ok(None)
}

impl Rules {
    /// Looks up one key (`uid/0`, `gid/default`, ...).
    pub fn lookup(&self, key: &str) -> io::Result<Decision> {
        match self {
            Rules::Dir(dir) => dir.lookup_uncached(key),
            Rules::Cdb(c) => c.lookup(key),
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

/// Encodes an environment as the cdb stores it: `VAR=value\0` or `VAR\0`.
pub fn encode_env(env: &[EnvVar]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in env {
        b.extend_from_slice(&v.name);
        if let Some(val) = &v.value {
            b.push(b'=');
            b.extend_from_slice(val);
        }
        b.push(0);
    }
    b
}

/// Decodes an environment blob (NUL-terminated entries). Bytes after the
/// last NUL are no entry: the reference's `env_make` takes exactly as many
/// strings as there are NULs, so an unterminated `VAR=value` grants nothing.
pub fn decode_env(b: &[u8]) -> Vec<EnvVar> {
    let terminated = match b.iter().rposition(|&c| c == 0) {
        Some(i) => &b[..i],
        None => return Vec::new(),
    };
    terminated
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| match s.iter().position(|&c| c == b'=') {
            Some(i) => EnvVar {
                name: s[..i].to_vec(),
                value: Some(s[i + 1..].to_vec()),
            },
            None => EnvVar {
                name: s.to_vec(),
                value: None,
            },
        })
        .collect()
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Encodes a decision as a cdb value: `D`, or `A`, envlen u16 BE, env,
/// execlen u16 BE, exec. `None` for `NotFound` (no record).
pub fn encode_value(d: &Decision) -> io::Result<Option<Vec<u8>>> {
    match d {
        Decision::NotFound => Ok(None),
        Decision::Deny => Ok(Some(b"D".to_vec())),
        Decision::Allow(p) => {
            let env = encode_env(&p.env);
            if env.len() > 4096 || p.exec.len() > 4096 {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            let mut v = Vec::with_capacity(5 + env.len() + p.exec.len());
            v.push(b'A');
            v.extend_from_slice(&(env.len() as u16).to_be_bytes());
            v.extend_from_slice(&env);
            v.extend_from_slice(&(p.exec.len() as u16).to_be_bytes());
            v.extend_from_slice(&p.exec);
            Ok(Some(v))
        }
    }
}

/// Decodes a cdb value with the reference's checks.
pub fn decode_value(v: &[u8]) -> io::Result<Decision> {
    if v.is_empty() || v.len() > 8197 {
        return Err(einval());
    }
    match v[0] {
        b'D' => return Ok(Decision::Deny),
        b'A' => {}
        _ => return Ok(Decision::NotFound),
    }
    if v.len() < 5 {
        return Err(einval());
    }
    let envlen = u16::from_be_bytes([v[1], v[2]]) as usize;
    if envlen > 4096 || v.len() - 5 < envlen {
        return Err(einval());
    }
    let execlen = u16::from_be_bytes([v[3 + envlen], v[4 + envlen]]) as usize;
    if execlen > 4096 || 5 + envlen + execlen != v.len() {
        return Err(einval());
    }
    Ok(Decision::Allow(Params {
        env: decode_env(&v[3..3 + envlen]),
        exec: v[5 + envlen..].to_vec(),
    }))
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

    #[test]
    fn cdb_values() {
        let p = Params {
            env: vec![
                EnvVar {
                    name: b"A".to_vec(),
                    value: Some(b"x=y".to_vec()),
                },
                EnvVar {
                    name: b"B".to_vec(),
                    value: None,
                },
                EnvVar {
                    name: b"C".to_vec(),
                    value: Some(vec![]),
                },
            ],
            exec: b"prog".to_vec(),
        };
        let v = encode_value(&Decision::Allow(p.clone())).unwrap().unwrap();
        assert_eq!(&v[..3], &[b'A', 0, 11]);
        assert_eq!(decode_value(&v).unwrap(), Decision::Allow(p.clone()));
        assert!(p.is_set(b"C") && !p.is_set(b"B") && p.get(b"A") == Some(&b"x=y"[..]));
        assert_eq!(decode_value(b"D").unwrap(), Decision::Deny);
        assert_eq!(decode_value(b"X").unwrap(), Decision::NotFound);
        assert!(decode_value(b"").is_err());
        assert!(decode_value(b"A\0").is_err());
        assert!(decode_value(&[b'A', 0, 9, 0, 0]).is_err());
        assert!(decode_value(&[b'A', 0, 0, 0, 1]).is_err());
        // Only NUL-terminated entries count, as the reference's env_make:
        // a trailing `VAR=value` without its NUL sets nothing.
        let env = b"S6_FDHOLDER_LIST=\0S6_FDHOLDER_GETDUMP=";
        let mut v = vec![b'A', 0, env.len() as u8];
        v.extend_from_slice(env);
        v.extend_from_slice(&[0, 0]);
        match decode_value(&v).unwrap() {
            Decision::Allow(p) => {
                assert!(p.is_set(b"S6_FDHOLDER_LIST"));
                assert!(!p.is_set(b"S6_FDHOLDER_GETDUMP"));
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(decode_env(b"S6_FDHOLDER_SETDUMP=1"), vec![]);
    }

    #[test]
    fn cdb_find_agrees_with_cdb2() {
        let path = std::env::temp_dir().join(format!("fdholder-cdbfind-{}", std::process::id()));
        let mut m = cdb2::CDBMake::new(File::create(&path).unwrap()).unwrap();
        for i in 0..3000 {
            m.add(format!("uid/{i}").as_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        m.add(b"uid/7", b"second").unwrap();
        m.finish().unwrap();
        let c = CdbRules::open(&path).unwrap();
        let theirs = cdb2::CDB::open(&path).unwrap();
        for i in 0..3100 {
            let k = format!("uid/{i}");
            let ours = cdb_find(&c.0, k.as_bytes()).unwrap().map(<[u8]>::to_vec);
            assert_eq!(ours, theirs.get(k.as_bytes()).map(Result::unwrap), "{k}");
        }
        assert_eq!(cdb_find(&c.0, b"uid/7").unwrap(), Some(&b"v7"[..]));
        // Cut short: the tables point past the end, an error.
        assert!(cdb_find(&c.0[..2100], b"uid/7").is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
