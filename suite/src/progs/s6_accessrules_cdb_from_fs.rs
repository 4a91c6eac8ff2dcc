//! `s6-accessrules-cdb-from-fs`: compiles a rules directory into a rules
//! cdb, written to a temporary file and renamed into place (see
//! docs/s6-accessrules-cdb-from-fs.md).

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use crate::cli::{self, EXIT_SYS, EXIT_USAGE, Prog, strerror};
use crate::rules::{self, Decision, Params};

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

/// The decision for the rule directory `base` (`dir/class/name`), as the
/// reference reads it: `allow` or `deny` must merely exist (F_OK); `env/`
/// is an envdir; `exec` is read up to 4096 bytes.
fn rule(tmp: &Tmp, base: &OsStr) -> Decision {
    let exists = |p: &OsStr| match rustix::fs::access(p, rustix::fs::Access::EXISTS) {
        Ok(()) => true,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::ACCESS) => false,
        Err(e) => tmp.die(EXIT_SYS, format_args!("access {}", show(p)), &e.into()),
    };
    if !exists(&cat(base, "/allow")) {
        return if exists(&cat(base, "/deny")) {
            Decision::Deny
        } else {
            Decision::NotFound
        };
    }
    let envdir = cat(base, "/env");
    let env = match rules::read_envdir(envdir.as_ref()) {
        Ok(env) => env,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Vec::new(),
        Err(e) => tmp.die(EXIT_SYS, format_args!("envdir {}", show(&envdir)), &e),
    };
    if rules::encode_env(&env).len() > 4096 {
        // The reference prints errno here, which is 0.
        let _ = std::fs::remove_file(&tmp.0);
        let ok = strerror(&io::Error::from_raw_os_error(0));
        PROG.die(EXIT_USAGE, format_args!("{} too big: {ok}", show(&envdir)));
    }
    let execfile = cat(base, "/exec");
    let mut exec = Vec::new();
    match File::open(&execfile).and_then(|f| f.take(4096).read_to_end(&mut exec)) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
            let what = format!("openreadnclose {}", show(&execfile));
            tmp.die(EXIT_SYS, what, &e)
        }
        _ => {}
    }
    if exec.len() == 4096 {
        PROG.warn(format_args!("possibly truncated file {}", show(&execfile)));
    }
    Decision::Allow(Params { env, exec })
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

    // Every dir/<class>/<name>, in directory order, dot-names skipped.
    let top = std::fs::read_dir(dir)
        .unwrap_or_else(|e| tmp.die(EXIT_SYS, format_args!("opendir {}", show(dir)), &e));
    let prefix = cat(dir, "/");
    for class in top {
        let class =
            class.unwrap_or_else(|e| tmp.die(EXIT_SYS, format_args!("readdir {}", show(dir)), &e));
        let cname = class.file_name();
        if cname.as_bytes().starts_with(b".") {
            continue;
        }
        let cpath = cat(&prefix, &cname);
        let sub = std::fs::read_dir(&cpath)
            .unwrap_or_else(|e| tmp.die(EXIT_SYS, format_args!("opendir {}", show(&cpath)), &e));
        for entry in sub {
            let entry = entry.unwrap_or_else(|e| {
                tmp.die(EXIT_SYS, format_args!("readdir {}", show(&cpath)), &e)
            });
            let ename = entry.file_name();
            if ename.as_bytes().starts_with(b".") {
                continue;
            }
            let key = cat(cat(&cname, "/").as_os_str(), &ename);
            let value = match rules::encode_value(&rule(&tmp, &cat(&prefix, &key))) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => tmp.die(EXIT_SYS, "cdbmake_add", &e),
            };
            maker
                .add(key.as_bytes(), &value)
                .unwrap_or_else(|e| tmp.die(EXIT_SYS, "cdbmake_add", &e));
        }
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
