//! `s6-accessrules-fs-from-cdb`: recreates a rules directory from a rules
//! cdb (see docs/s6-accessrules-fs-from-cdb.md).

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;

use crate::cli::{EXIT_SYS, Prog};
use rustix::fs::{Mode, OFlags};

const PROG: Prog = Prog {
    name: "s6-accessrules-fs-from-cdb",
    usage: "s6-accessrules-fs-from-cdb dir cdbfile",
};

/// Directories are made 02755 whatever the umask, as the reference does.
const DIR_MODE: u32 = 0o2755;

/// The directory being built; removed whole on every failure.
struct Out(OsString);

impl Out {
    fn die(&self, what: impl std::fmt::Display, e: &io::Error) -> ! {
        let _ = std::fs::remove_dir_all(&self.0);
        PROG.die_unable(EXIT_SYS, what, e)
    }

    /// Dies for a failure without an errno, as s6 2.15 does: `fatal:
    /// unable to <msg>` (skalibs 2.13's `strerr_diefu*x`, which Debian's
    /// s6 2.11 is built with, printed a stray `": "` before `unable`).
    fn die_x(&self, msg: impl std::fmt::Display) -> ! {
        let _ = std::fs::remove_dir_all(&self.0);
        PROG.die(EXIT_SYS, format_args!("unable to {msg}"))
    }

    /// mkdir, an existing entry being fine, under umask 0.
    fn mkdir(&self, path: &[u8]) {
        let old = rustix::process::umask(Mode::empty());
        match rustix::fs::mkdir(OsStr::from_bytes(path), Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => self.die(
                format_args!("mkdir {}", String::from_utf8_lossy(path)),
                &e.into(),
            ),
        }
        rustix::process::umask(old);
    }

    /// Creates or truncates `path` (mode 0666 minus the umask), writing
    /// `content`; `what` names the operation in the error message.
    fn write(&self, path: &[u8], content: &[&[u8]], what: &str) {
        let flags =
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::TRUNC | OFlags::CREATE | OFlags::CLOEXEC;
        let r = rustix::fs::open(OsStr::from_bytes(path), flags, Mode::from_raw_mode(0o666))
            .map_err(io::Error::from)
            .and_then(|fd| {
                let mut f = std::fs::File::from(fd);
                content.iter().try_for_each(|c| f.write_all(c))
            });
        if let Err(e) = r {
            self.die(format_args!("{what} {}", String::from_utf8_lossy(path)), &e);
        }
    }

    /// Writes one record; `false` if its data is not valid rules data.
    fn record(&self, key: &[u8], data: &[u8]) -> bool {
        if data.is_empty() || data.len() > 8201 {
            return false;
        }
        let base = [self.0.as_bytes(), b"/", key].concat();
        // Every prefix of the key that ends before a '/', then the whole.
        let start = self.0.len() + 1;
        for (i, _) in base
            .iter()
            .enumerate()
            .skip(start)
            .filter(|(_, c)| **c == b'/')
        {
            self.mkdir(&base[..i]);
        }
        self.mkdir(&base);
        let file = |name: &str| [&base[..], b"/", name.as_bytes()].concat();
        match data[0] {
            b'A' => self.write(&file("allow"), &[], "open_trunc"),
            b'D' => self.write(&file("deny"), &[], "open_trunc"),
            _ => {}
        }
        if data.len() < 3 {
            return true;
        }
        let envlen = u16::from_be_bytes([data[1], data[2]]) as usize;
        if envlen > 4096 || 5 + envlen > data.len() {
            return false;
        }
        let execlen = u16::from_be_bytes([data[3 + envlen], data[4 + envlen]]) as usize;
        if execlen > 4096 || 5 + envlen + execlen != data.len() {
            return false;
        }
        if envlen > 0 && !self.env(&file("env"), &data[3..3 + envlen]) {
            return false;
        }
        if execlen > 0 {
            self.write(
                &file("exec"),
                &[&data[5 + envlen..]],
                "openwritenclose_unsafe",
            );
        }
        true
    }

    /// Writes `env/`: `VAR=value` gives a file `VAR` holding `value\n`,
    /// `VAR` an empty file. `false` if an entry lacks its NUL.
    fn env(&self, dir: &[u8], mut env: &[u8]) -> bool {
        self.mkdir(dir);
        while !env.is_empty() {
            let Some(n) = env.iter().position(|&c| c == 0) else {
                return false;
            };
            let entry = &env[..n];
            let p = entry.iter().position(|&c| c == b'=').unwrap_or(n);
            let path = [dir, b"/", &entry[..p]].concat();
            if p < n {
                self.write(&path, &[&entry[p + 1..], b"\n"], "openwritenclose_unsafe");
            } else {
                self.write(&path, &[], "open_trunc");
            }
            env = &env[n + 1..];
        }
        true
    }
}

/// A cdb record: key and data.
type Record<'a> = (&'a [u8], &'a [u8]);

/// The record at `*pos` of a cdb, as skalibs' `cdb_traverse_next` reads
/// them in file order: `Ok(None)` at the end, `Err(())` if the file is not
/// a valid cdb. A record reaching past the end of the file is invalid (the
/// reference reads beyond it).
fn next_record<'a>(cdb: &'a [u8], pos: &mut usize) -> Result<Option<Record<'a>>, ()> {
    let u32_at = |p: usize| {
        let b = cdb.get(p..p + 4).ok_or(())?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let eod = u32_at(0)?;
    if eod < 8 || eod - 8 < *pos {
        return Ok(None);
    }
    let (klen, dlen) = (u32_at(*pos)?, u32_at(*pos + 4)?);
    let key = cdb.get(*pos + 8..*pos + 8 + klen).ok_or(())?;
    let data = cdb.get(*pos + 8 + klen..*pos + 8 + klen + dlen).ok_or(())?;
    *pos += 8 + klen + dlen;
    Ok(Some((key, data)))
}

/// Reads the cdb file as skalibs' `cdb_init` maps it.
fn read_cdb(path: &OsStr) -> io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    if meta.len() == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if meta.len() > u32::MAX as u64 {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    }
    std::fs::read(path)
}

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (_, args) = PROG.getopt("");
    if args.len() < 2 {
        PROG.die_usage();
    }
    let (dir, cdbfile) = (args[0].as_os_str(), args[1].as_os_str());
    let cdb = read_cdb(cdbfile).unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "cdb_init", &e));
    let old = rustix::process::umask(Mode::empty());
    if let Err(e) = rustix::fs::mkdir(dir, Mode::from_raw_mode(DIR_MODE)) {
        PROG.die_unable(
            EXIT_SYS,
            format_args!("mkdir {}", dir.to_string_lossy()),
            &e.into(),
        );
    }
    rustix::process::umask(old);
    let out = Out(dir.to_os_string());
    let mut pos = 2048;
    loop {
        let Ok(next) = next_record(&cdb, &mut pos) else {
            out.die_x("cdb_traverse_next: invalid cdb")
        };
        let Some((key, data)) = next else { break };
        if !out.record(key, data) {
            out.die_x(format_args!(
                "handle cdb record: {} does not contain valid accessrules data",
                cdbfile.to_string_lossy()
            ));
        }
    }
}
