//! The rules cdb, in one place: the cdb file's structure (records and hash
//! tables, read by key for the daemon's `-x` and in file order for
//! `s6-accessrules-fs-from-cdb`; `s6-accessrules-cdb-from-fs` writes it
//! with cdb2) and the value each key's record holds (written by
//! `s6-accessrules-cdb-from-fs`, read by the daemon and by
//! `s6-accessrules-fs-from-cdb`).
//!
//! A value is `D` (deny), or `A` (allow) followed by the environment's
//! length (u16, big-endian), the environment (`VAR=value\0` or `VAR\0` per
//! variable), the exec string's length (u16, big-endian) and the exec
//! string.

use std::io;

use super::{Decision, EXEC_MAX, EnvVar, Mark, Params};

/// The first byte of an allowing value.
const ALLOW_TAG: u8 = b'A';
/// The first byte of a denying value (the whole value, as written).
const DENY_TAG: u8 = b'D';
/// Most bytes of an encoded environment.
pub const ENV_MAX: usize = 4096;
/// Most bytes of a value: the tag, two lengths, the longest environment
/// and the longest exec string.
pub const VALUE_MAX: usize = 1 + 2 + ENV_MAX + 2 + EXEC_MAX;

/// The length of a cdb's header, its 256 hash table pointers: the least a
/// cdb can be, and where its records start.
pub const HEADER_LEN: usize = 2048;

/// A cdb whose offsets and lengths do not fit in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCdb;

impl std::fmt::Display for BadCdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Invalid file format")
    }
}

impl std::error::Error for BadCdb {}

impl From<BadCdb> for io::Error {
    fn from(e: BadCdb) -> io::Error {
        io::Error::other(e)
    }
}

/// A cdb file's bytes, every offset and length checked against the file
/// before it is used: a corrupt length is an error, never an allocation
/// of the size it claims (cdb2's reader allocates a record's claimed
/// length before checking it, which aborted the daemon on a corrupt file).
#[derive(Clone, Copy)]
pub struct Cdb<'a>(&'a [u8]);

/// A record: its key and its data.
pub type Record<'a> = (&'a [u8], &'a [u8]);

impl<'a> Cdb<'a> {
    /// The cdb in `data` (nothing is checked yet).
    pub fn new(data: &'a [u8]) -> Cdb<'a> {
        Cdb(data)
    }

    /// `len` bytes at `start`.
    fn slice(&self, start: usize, len: usize) -> Result<&'a [u8], BadCdb> {
        start
            .checked_add(len)
            .and_then(|end| self.0.get(start..end))
            .ok_or(BadCdb)
    }

    /// The little-endian u32 at `pos`.
    fn u32_at(&self, pos: usize) -> Result<usize, BadCdb> {
        let b = <[u8; 4]>::try_from(self.slice(pos, 4)?).map_err(|_| BadCdb)?;
        Ok(u32::from_le_bytes(b) as usize)
    }

    /// A record's key and data lengths, at its position `pos`.
    fn lengths(&self, pos: usize) -> Result<(usize, usize), BadCdb> {
        Ok((self.u32_at(pos)?, self.u32_at(pos + 4)?))
    }

    /// Checks that the file is a cdb at all: a whole header, and each of
    /// its 256 hash tables within the file. A file shorter than a header
    /// (`echo > rules.cdb`), or a cdb cut short (its tables come last), is
    /// not. Records are checked as they are read, by [`Cdb::find`].
    pub fn check_tables(&self) -> Result<(), BadCdb> {
        for x in (0..HEADER_LEN).step_by(8) {
            let hpos = self.u32_at(x)?;
            let hslots = self.u32_at(x + 4)?;
            let len = hslots.checked_mul(8).ok_or(BadCdb)?;
            self.slice(hpos, len)?;
        }
        Ok(())
    }

    /// The data of the first record for `key`.
    pub fn find(&self, key: &[u8]) -> Result<Option<&'a [u8]>, BadCdb> {
        let h = key
            .iter()
            .fold(5381u32, |h, &c| (h << 5).wrapping_add(h) ^ u32::from(c));
        let x = (h as usize & 0xff) << 3;
        let hpos = self.u32_at(x)?;
        let hslots = self.u32_at(x + 4)?;
        if hslots == 0 {
            return Ok(None);
        }
        let mut slot = (h >> 8) as usize % hslots;
        for _ in 0..hslots {
            let spos = slot
                .checked_mul(8)
                .and_then(|o| hpos.checked_add(o))
                .ok_or(BadCdb)?;
            let shash = self.u32_at(spos)?;
            let pos = self.u32_at(spos + 4)?;
            if pos == 0 {
                return Ok(None);
            }
            if shash == h as usize {
                let (klen, dlen) = self.lengths(pos)?;
                if klen == key.len() && self.slice(pos + 8, klen)? == key {
                    return self.slice(pos + 8 + klen, dlen).map(Some);
                }
            }
            slot += 1;
            if slot == hslots {
                slot = 0;
            }
        }
        Ok(None)
    }

    /// Every record in file order, as skalibs' `cdb_traverse_next` reads
    /// them; an error ends the walk. A record reaching past the end of the
    /// file is an error (the reference reads beyond it).
    pub fn records(&self) -> Records<'a> {
        Records {
            cdb: *self,
            pos: Some(HEADER_LEN),
        }
    }
}

/// The records of a cdb in file order: see [`Cdb::records`].
pub struct Records<'a> {
    cdb: Cdb<'a>,
    /// The next record's position; `None` once the walk has ended.
    pos: Option<usize>,
}

impl<'a> Records<'a> {
    fn next_record(&self, pos: usize) -> Result<Option<(Record<'a>, usize)>, BadCdb> {
        let eod = self.cdb.u32_at(0)?;
        if eod < 8 || eod - 8 < pos {
            return Ok(None);
        }
        let (klen, dlen) = self.cdb.lengths(pos)?;
        let key = self.cdb.slice(pos + 8, klen)?;
        let data = self.cdb.slice(pos + 8 + klen, dlen)?;
        Ok(Some(((key, data), pos + 8 + klen + dlen)))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BadCdb>;

    fn next(&mut self) -> Option<Self::Item> {
        let pos = self.pos.take()?;
        match self.next_record(pos) {
            Ok(None) => None,
            Ok(Some((record, next))) => {
                self.pos = Some(next);
                Some(Ok(record))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// A value that is not rules data: its lengths do not add up (or exceed
/// [`ENV_MAX`] and [`EXEC_MAX`]), or an environment entry lacks its NUL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadValue;

impl From<Unterminated> for BadValue {
    fn from(_: Unterminated) -> BadValue {
        BadValue
    }
}

/// What a value's first byte says: `A` allows, `D` denies, anything else
/// (or nothing) neither.
pub fn mark(v: &[u8]) -> Option<Mark> {
    match v.first() {
        Some(&ALLOW_TAG) => Some(Mark::Allow),
        Some(&DENY_TAG) => Some(Mark::Deny),
        _ => None,
    }
}

/// What follows an `A` value's tag: the encoded environment and the exec
/// string, once the reference's checks pass (at least 5 bytes, lengths
/// within [`ENV_MAX`] and [`EXEC_MAX`] and adding up to the value's).
pub fn split_value(v: &[u8]) -> Result<(&[u8], &[u8]), BadValue> {
    if v.len() < 5 {
        return Err(BadValue);
    }
    let envlen = u16::from_be_bytes([v[1], v[2]]) as usize;
    if envlen > ENV_MAX || v.len() - 5 < envlen {
        return Err(BadValue);
    }
    let execlen = u16::from_be_bytes([v[3 + envlen], v[4 + envlen]]) as usize;
    if execlen > EXEC_MAX || 5 + envlen + execlen != v.len() {
        return Err(BadValue);
    }
    Ok((&v[3..3 + envlen], &v[5 + envlen..]))
}

/// Encodes a decision as a cdb value. `None` for `NotFound` (no record);
/// `E2BIG` if the environment or the exec string is too long.
pub fn encode_value(d: &Decision) -> io::Result<Option<Vec<u8>>> {
    match d {
        Decision::NotFound => Ok(None),
        Decision::Deny => Ok(Some(vec![DENY_TAG])),
        Decision::Allow(p) => {
            let env = encode_env(&p.env);
            if env.len() > ENV_MAX || p.exec.len() > EXEC_MAX {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            let mut v = Vec::with_capacity(5 + env.len() + p.exec.len());
            v.push(ALLOW_TAG);
            v.extend_from_slice(&(env.len() as u16).to_be_bytes());
            v.extend_from_slice(&env);
            v.extend_from_slice(&(p.exec.len() as u16).to_be_bytes());
            v.extend_from_slice(&p.exec);
            Ok(Some(v))
        }
    }
}

/// Decodes a cdb value as the daemon reads it, with the reference's
/// checks: `EINVAL` for an empty or overlong value, or an `A` value whose
/// lengths do not add up; a first byte other than `A` and `D` is no rule.
pub fn decode_value(v: &[u8]) -> io::Result<Decision> {
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    if v.is_empty() || v.len() > VALUE_MAX {
        return Err(einval());
    }
    match mark(v) {
        Some(Mark::Deny) => return Ok(Decision::Deny),
        Some(Mark::Allow) => {}
        None => return Ok(Decision::NotFound),
    }
    let (env, exec) = split_value(v).map_err(|BadValue| einval())?;
    Ok(Decision::Allow(Params {
        env: decode_env(env),
        exec: exec.to_vec(),
    }))
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

/// One entry of an encoded environment: the name, and the value (after the
/// first `=`) or `None` (no `=`: the variable is unset).
pub type EnvEntry<'a> = (&'a [u8], Option<&'a [u8]>);

/// Bytes after an encoded environment's last NUL: an entry that lacks its
/// terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unterminated;

/// The entries of an encoded environment, in order, empty ones included;
/// bytes after the last NUL come last, as [`Unterminated`].
pub fn env_entries(mut b: &[u8]) -> impl Iterator<Item = Result<EnvEntry<'_>, Unterminated>> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let Some(n) = b.iter().position(|&c| c == 0) else {
            b = &[];
            return Some(Err(Unterminated));
        };
        let entry = &b[..n];
        b = &b[n + 1..];
        Some(Ok(match entry.iter().position(|&c| c == b'=') {
            Some(i) => (&entry[..i], Some(&entry[i + 1..])),
            None => (entry, None),
        }))
    })
}

/// Decodes an environment blob as the daemon does: empty entries are
/// skipped, and bytes after the last NUL are no entry (the reference's
/// `env_make` takes exactly as many strings as there are NULs, so an
/// unterminated `VAR=value` grants nothing).
pub fn decode_env(b: &[u8]) -> Vec<EnvVar> {
    env_entries(b)
        .map_while(Result::ok)
        .filter(|(name, value)| !name.is_empty() || value.is_some())
        .map(|(name, value)| EnvVar {
            name: name.to_vec(),
            value: value.map(<[u8]>::to_vec),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn values() {
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
        // Empty entries are no variables, but `=x` is one, named "".
        let d = decode_env(b"A\0\0=x\0\0");
        let names: Vec<&[u8]> = d.iter().map(|v| &v.name[..]).collect();
        assert_eq!(names, [&b"A"[..], b""]);
        let entries: Vec<_> = env_entries(b"A=1\0\0B\0C").collect();
        assert_eq!(
            entries,
            [
                Ok((&b"A"[..], Some(&b"1"[..]))),
                Ok((&b""[..], None)),
                Ok((&b"B"[..], None)),
                Err(Unterminated),
            ]
        );
    }

    #[test]
    fn find_agrees_with_cdb2() {
        let path = std::env::temp_dir().join(format!("fdholder-cdbfind-{}", std::process::id()));
        let mut m = cdb2::CDBMake::new(File::create(&path).unwrap()).unwrap();
        for i in 0..3000 {
            m.add(format!("uid/{i}").as_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        m.add(b"uid/7", b"second").unwrap();
        m.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        let c = Cdb::new(&data);
        let theirs = cdb2::CDB::open(&path).unwrap();
        for i in 0..3100 {
            let k = format!("uid/{i}");
            let ours = c.find(k.as_bytes()).unwrap().map(<[u8]>::to_vec);
            assert_eq!(ours, theirs.get(k.as_bytes()).map(Result::unwrap), "{k}");
        }
        assert_eq!(c.find(b"uid/7").unwrap(), Some(&b"v7"[..]));
        // Every record, in the order written, the second uid/7 included.
        let all: Vec<_> = c.records().map(Result::unwrap).collect();
        assert_eq!(all.len(), 3001);
        assert_eq!(all[7], (&b"uid/7"[..], &b"v7"[..]));
        assert_eq!(all[3000], (&b"uid/7"[..], &b"second"[..]));
        assert_eq!(c.check_tables(), Ok(()));
        // Cut short: the tables point past the end, an error.
        let short = Cdb::new(&data[..2100]);
        assert_eq!(short.check_tables(), Err(BadCdb));
        assert_eq!(
            Cdb::new(&data[..data.len() - 1]).check_tables(),
            Err(BadCdb)
        );
        assert_eq!(Cdb::new(b"\n").check_tables(), Err(BadCdb));
        assert_eq!(Cdb::new(&[0; 2047]).check_tables(), Err(BadCdb));
        assert_eq!(Cdb::new(&[0; 2048]).check_tables(), Ok(()));
        assert_eq!(short.find(b"uid/7"), Err(BadCdb));
        assert!(short.records().any(|r| r == Err(BadCdb)));
        assert_eq!(
            Cdb::new(b"\xff\xff").records().collect::<Vec<_>>(),
            [Err(BadCdb)]
        );
        std::fs::remove_file(&path).unwrap();
    }
}
