//! `s6-accessrules-fs-from-cdb`: recreates a rules directory from a rules
//! cdb (see docs/s6-accessrules-fs-from-cdb.md).

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;

use crate::cli::{EXIT_SYS, Prog};
use crate::rules::cdb::{self, BadValue, Cdb};
use crate::rules::{ENV_DIR, EXEC_FILE};
use rustix::fs::{Mode, OFlags};

const PROG: Prog = Prog {
    name: "s6-accessrules-fs-from-cdb",
    usage: "s6-accessrules-fs-from-cdb dir cdbfile",
};

/// Directories are made 02755 whatever the umask, as the reference does.
const DIR_MODE: u32 = 0o2755;

/// The longest value the reference looks at (4 more than a value can be:
/// one a little longer is still invalid, but only once its key's
/// directories and `allow` or `deny` are made).
const REFERENCE_VALUE_MAX: usize = cdb::VALUE_MAX + 4;

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

    /// Writes one record: its key's directories, `allow` or `deny` as the
    /// value's first byte says, then `env/` and `exec` if the value holds
    /// any (whatever that first byte). `BadValue` if the value is not
    /// rules data.
    fn record(&self, key: &[u8], data: &[u8]) -> Result<(), BadValue> {
        if data.is_empty() || data.len() > REFERENCE_VALUE_MAX {
            return Err(BadValue);
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
        if let Some(mark) = cdb::mark(data) {
            self.write(&file(mark.file_name()), &[], "open_trunc");
        }
        if data.len() < 3 {
            return Ok(());
        }
        let (env, exec) = cdb::split_value(data)?;
        if !env.is_empty() {
            self.env(&file(ENV_DIR), env)?;
        }
        if !exec.is_empty() {
            self.write(&file(EXEC_FILE), &[exec], "openwritenclose_unsafe");
        }
        Ok(())
    }

    /// Writes `env/`: `VAR=value` gives a file `VAR` holding `value\n`,
    /// `VAR` an empty file. `BadValue` if an entry lacks its NUL (those
    /// before it are written).
    fn env(&self, dir: &[u8], env: &[u8]) -> Result<(), BadValue> {
        self.mkdir(dir);
        for entry in cdb::env_entries(env) {
            let (name, value) = entry?;
            let path = [dir, b"/", name].concat();
            match value {
                Some(v) => self.write(&path, &[v, b"\n"], "openwritenclose_unsafe"),
                None => self.write(&path, &[], "open_trunc"),
            }
        }
        Ok(())
    }
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
    for record in Cdb::new(&cdb).records() {
        let Ok((key, data)) = record else {
            out.die_x("cdb_traverse_next: invalid cdb")
        };
        if out.record(key, data).is_err() {
            out.die_x(format_args!(
                "handle cdb record: {} does not contain valid accessrules data",
                cdbfile.to_string_lossy()
            ));
        }
    }
}
