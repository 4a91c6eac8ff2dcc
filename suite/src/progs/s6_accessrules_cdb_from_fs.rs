//! `s6-accessrules-cdb-from-fs`: compiles a rules directory into a rules
//! cdb, written to a temporary file and renamed into place (see
//! docs/s6-accessrules-cdb-from-fs.md).

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::BuildHasher;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use crate::cli::{self, EXIT_SYS, EXIT_USAGE, Prog, strerror};
use crate::rules::{self, EXEC_MAX, EnvVar, KeyFiles, Keys, KeysError, Mark, cdb};

const PROG: Prog = Prog {
    name: "s6-accessrules-cdb-from-fs",
    usage: "s6-accessrules-cdb-from-fs [ -m mode ] cdbfile dir",
};

/// `a` followed by `b`, as raw bytes.
fn cat(a: &OsStr, b: impl AsRef<OsStr>) -> OsString {
    let mut s = a.to_os_string();
    s.push(b);
    s
}

fn show(s: &OsStr) -> std::borrow::Cow<'_, str> {
    s.to_string_lossy()
}

/// The temporary file; removed on every failure after its creation.
struct Tmp(OsString);

impl Tmp {
    fn die(&self, code: i32, what: impl std::fmt::Display, e: &io::Error) -> ! {
        let _ = std::fs::remove_file(&self.0);
        PROG.die_unable(code, what, e)
    }
}

/// Creates `cdbfile:s6-accessrules-cdb-from-fs:XXXXXX` as mkstemp(3) does:
/// six random characters, created exclusively with mode 0600.
fn mkstemp(cdbfile: &OsStr) -> (Tmp, File) {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let seed = RandomState::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut h = seed.hash_one((std::process::id(), attempt));
        let mut suffix = [0u8; 6];
        for c in suffix.iter_mut() {
            *c = CHARS[(h % CHARS.len() as u64) as usize];
            h /= CHARS.len() as u64;
        }
        let name = cat(
            cat(cdbfile, ":s6-accessrules-cdb-from-fs:").as_os_str(),
            OsStr::from_bytes(&suffix),
        );
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create_new(true).mode(0o600);
        match opts.open(&name) {
            Ok(f) => return (Tmp(name), f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {}
            Err(e) => PROG.die_unable(EXIT_SYS, format_args!("mkstemp {}", show(&name)), &e),
        }
    }
}

/// A key's files (`dir/class/name/...`) as the reference's cdb-from-fs
/// reads them: `allow` and `deny` must merely exist (`F_OK`); `env/` is an
/// envdir whose encoding must fit in a value; `exec` is read up to 4096
/// bytes (blocking, as the reference), a warning if that may have cut it.
/// Every error but a missing file (and, for `access`, `EACCES`) is fatal.
struct KeyDir<'a>(&'a OsStr);

/// Why a key could not be compiled; each names the file.
enum KeyError {
    /// `access` failed on `allow` or `deny`.
    Access(OsString, io::Error),
    /// `env/` could not be read.
    Envdir(OsString, io::Error),
    /// `env/` holds more than a value can.
    TooBig(OsString),
    /// `exec` could not be read.
    Exec(OsString, io::Error),
}

impl KeyError {
    /// Removes the temporary file and dies with the reference's message.
    fn die(self, tmp: &Tmp) -> ! {
        match self {
            KeyError::Access(p, e) => tmp.die(EXIT_SYS, format_args!("access {}", show(&p)), &e),
            KeyError::Envdir(p, e) => tmp.die(EXIT_SYS, format_args!("envdir {}", show(&p)), &e),
            KeyError::TooBig(p) => {
                // The reference prints errno here, which is 0.
                let _ = std::fs::remove_file(&tmp.0);
                let ok = strerror(&io::Error::from_raw_os_error(0));
                PROG.die(EXIT_USAGE, format_args!("{} too big: {ok}", show(&p)))
            }
            KeyError::Exec(p, e) => {
                let what = format!("openreadnclose {}", show(&p));
                tmp.die(EXIT_SYS, what, &e)
            }
        }
    }
}

impl KeyFiles for KeyDir<'_> {
    type Error = KeyError;

    fn present(&mut self, mark: Mark) -> Result<bool, KeyError> {
        let p = cat(self.0, format!("/{}", mark.file_name()));
        match rustix::fs::access(&p, rustix::fs::Access::EXISTS) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::ACCESS) => Ok(false),
            Err(e) => Err(KeyError::Access(p, e.into())),
        }
    }

    fn env(&mut self) -> Result<Vec<EnvVar>, KeyError> {
        let envdir = cat(self.0, format!("/{}", rules::ENV_DIR));
        let env = match rules::read_envdir(envdir.as_ref()) {
            Ok(env) => env,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Vec::new(),
            Err(e) => return Err(KeyError::Envdir(envdir, e)),
        };
        if cdb::encode_env(&env).len() > cdb::ENV_MAX {
            return Err(KeyError::TooBig(envdir));
        }
        Ok(env)
    }

    fn exec(&mut self) -> Result<Vec<u8>, KeyError> {
        let execfile = cat(self.0, format!("/{}", rules::EXEC_FILE));
        let exec = match File::open(&execfile).and_then(rules::read_exec) {
            Ok(exec) => exec,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Vec::new(),
            Err(e) => return Err(KeyError::Exec(execfile, e)),
        };
        if exec.len() == EXEC_MAX {
            PROG.warn(format_args!("possibly truncated file {}", show(&execfile)));
        }
        Ok(exec)
    }
}

/// Removes the temporary file and dies for a directory of the rules that
/// could not be listed.
fn keys_die(tmp: &Tmp, e: KeysError) -> ! {
    match e {
        KeysError::Open(p, e) => tmp.die(EXIT_SYS, format_args!("opendir {}", show(&p)), &e),
        KeysError::Read(p, e) => tmp.die(EXIT_SYS, format_args!("readdir {}", show(&p)), &e),
    }
}

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("m:");
    let mut mode = None;
    for (c, v) in opts {
        if c != 'm' {
            PROG.die_usage();
        }
        mode = Some(cli::parse_uint_octal(&v).unwrap_or_else(|| {
            PROG.die(
                EXIT_USAGE,
                "mode needs to be an unsigned integer (in octal)",
            )
        }));
    }
    if args.len() < 2 {
        PROG.die_usage();
    }
    let (cdbfile, dir) = (args[0].as_os_str(), args[1].as_os_str());
    let (tmp, file) = mkstemp(cdbfile);
    let maker = file.try_clone().and_then(cdb2::CDBMake::new);
    let mut maker = maker.unwrap_or_else(|e| tmp.die(EXIT_SYS, "cdbmake_start", &e));

    let keys = Keys::new(dir).unwrap_or_else(|e| keys_die(&tmp, e));
    for key in keys {
        let key = key.unwrap_or_else(|e| keys_die(&tmp, e));
        let rule = rules::read_key(&mut KeyDir(&key.path)).unwrap_or_else(|e| e.die(&tmp));
        let value = match cdb::encode_value(&rule) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => tmp.die(EXIT_SYS, "cdbmake_add", &e),
        };
        maker
            .add(key.name.as_bytes(), &value)
            .unwrap_or_else(|e| tmp.die(EXIT_SYS, "cdbmake_add", &e));
    }

    maker
        .finish()
        .unwrap_or_else(|e| tmp.die(EXIT_SYS, "cdb_make_finish", &e));
    file.sync_all()
        .unwrap_or_else(|e| tmp.die(EXIT_SYS, "fd_sync", &e));
    drop(file);
    if let Some(mode) = mode {
        std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| tmp.die(EXIT_SYS, format_args!("chmod {}", show(&tmp.0)), &e));
    }
    std::fs::rename(&tmp.0, cdbfile).unwrap_or_else(|e| {
        tmp.die(
            EXIT_SYS,
            format_args!("rename {} to {}", show(&tmp.0), show(cdbfile)),
            &e,
        )
    });
}
