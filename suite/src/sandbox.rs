//! The daemon's confinement once it has started (on by default, `-S` turns
//! it off): what it may still do, and applying it. See
//! `docs/s6-fdholderd.md`, "Sandbox", and RELIABILITY.md.
//!
//! [`confine`] sets, in this order and for good:
//!
//! 1. `PR_SET_NO_NEW_PRIVS`;
//! 2. Landlock, best effort on the kernel's ABI: no filesystem access at
//!    all (no write, no execute, no create, remove, rename, truncate or
//!    device ioctl anywhere; no TCP bind or connect; no abstract Unix
//!    socket and no signal outside the domain) except reading files and
//!    listing directories beneath the directory that holds the rules
//!    (the rules directory's or cdb's parent), so that the rules can be
//!    replaced by a rename (as `s6-accessrules-cdb-from-fs` and users do)
//!    and still be read at the same path: a rule on the rules' own inode
//!    would leave the daemon unable to read their replacement;
//! 3. the seccomp allowlist that `build.rs` compiles: any other system
//!    call fails with EPERM. It never kills: the daemon holds descriptors
//!    a whole system depends on, and a killed holder loses them all; a
//!    refused call is an error the daemon reports and survives.
//!
//! What cannot be applied (no seccomp filter for this architecture, a
//! kernel without Landlock or with an older ABI) is returned as a
//! [`Shortfall`] for the daemon to warn about; it runs on.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::daemon::RulesConfig;
use crate::sys;

// `const SECCOMP_FILTER: Option<&[libc::sock_filter]>`, from build.rs.
include!(concat!(env!("OUT_DIR"), "/seccomp_filter.rs"));

/// `LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR`: all that is
/// granted, beneath the rules' directory.
pub const LANDLOCK_READ: u64 = (1 << 2) | (1 << 3);

/// `LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE`: granted
/// beneath the directories of the program's own path and of the files
/// it runs from (the dynamic loader, the libraries), for the in-place
/// upgrade to execute the new binary.
pub const LANDLOCK_EXEC: u64 = (1 << 0) | (1 << 2);

/// `LANDLOCK_ACCESS_FS_READ_FILE` alone (the right a rule on a file, not a
/// directory, may grant of [`LANDLOCK_READ`]).
const LANDLOCK_READ_FILE: u64 = 1 << 2;

/// The newest Landlock ABI whose rights are all handled here (ABI 7 adds
/// only audit-logging flags).
pub const LANDLOCK_ABI_KNOWN: u32 = 6;

/// Filesystem rights a kernel of Landlock ABI `abi` knows: all 13 of ABI 1
/// (execute, write, read, read dir, remove dir/file, make char, dir, reg,
/// sock, fifo, block, sym), then refer (2), truncate (3), device ioctl (5).
fn landlock_fs_rights(abi: u32) -> u64 {
    let mut fs = (1 << 13) - 1;
    if abi >= 2 {
        fs |= 1 << 13;
    }
    if abi >= 3 {
        fs |= 1 << 14;
    }
    if abi >= 5 {
        fs |= 1 << 15;
    }
    fs
}

/// What [`confine`] could not apply; the daemon warns and runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// No seccomp allowlist was built for this architecture.
    NoSeccompFilterForArch,
    /// The kernel has no seccomp filters.
    NoSeccompInKernel,
    /// The kernel has no Landlock (or it is disabled at boot).
    NoLandlock,
    /// The kernel's Landlock ABI is older than [`LANDLOCK_ABI_KNOWN`]: the
    /// rights it does not know are not restricted by Landlock.
    LandlockAbi(u32),
}

impl Shortfall {
    /// The warning, after `sandbox: ` (and the ABI, for
    /// [`Shortfall::LandlockAbi`]).
    pub fn warning(self) -> &'static str {
        match self {
            Shortfall::NoSeccompFilterForArch => "no seccomp allowlist for this architecture",
            Shortfall::NoSeccompInKernel => "no seccomp filters in this kernel",
            Shortfall::NoLandlock => "no Landlock in this kernel: file access not confined",
            Shortfall::LandlockAbi(_) => "Landlock confines only what this ABI knows: ",
        }
    }
}

/// Why [`confine`] failed: the step, and the kernel's error. The process
/// may be partly confined.
#[derive(Debug)]
pub struct Failure {
    /// What was being done.
    pub step: &'static str,
    /// The error.
    pub err: io::Error,
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> Failure {
    move |err| Failure { step, err }
}

/// The directories beneath which Landlock lets the daemon read: the parent
/// of the rules' path as given (relative to the working directory, as the
/// daemon looks it up; `/` for a path without parent), and the parent of
/// the path it resolves to now, if that differs (a symlinked rules
/// directory or cdb).
pub fn readable_dirs(rules: &RulesConfig) -> Vec<PathBuf> {
    let path = match rules {
        RulesConfig::Dir(p) | RulesConfig::Cdb(p) => p,
    };
    let parent = |p: &Path| match p.parent() {
        Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("/"),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let real = parent(&real);
        if dirs[0].as_os_str() != real.as_os_str() {
            dirs.push(real);
        }
    }
    dirs
}

/// What Landlock lets the daemon execute (and read), for the in-place
/// upgrade: beneath the directory of `exe` (the path it re-executes, as
/// given: a new binary is installed there by rename, a new inode that a
/// rule on the old one would not cover) and of what it resolves to now;
/// beneath the directory of every file mapped executable now (the
/// dynamic loader, the C library: the new program needs them too); and
/// the loader's cache, [`LOADER_CACHE`], is granted apart (read only: a
/// file).
pub fn exec_dirs(exe: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |d: Option<&Path>| {
        if let Some(d) = d.filter(|d| !d.as_os_str().is_empty()) {
            if !dirs.iter().any(|x| x.as_os_str() == d.as_os_str()) {
                dirs.push(d.to_path_buf());
            }
        }
    };
    if let Some(exe) = exe {
        add(exe.parent());
        if let Ok(real) = std::fs::canonicalize(exe) {
            add(real.parent());
        }
    }
    if let Some(maps) = read_proc("/proc/self/maps") {
        use std::os::unix::ffi::OsStrExt;
        // "start-end perms offset dev inode   path": the path from the
        // first '/', for mappings whose perms have 'x'.
        for line in maps.split(|&c| c == b'\n') {
            let exec = (line.split(|&c| c == b' '))
                .nth(1)
                .is_some_and(|p| p.contains(&b'x'));
            let path = line.iter().position(|&c| c == b'/').map(|i| &line[i..]);
            if let (true, Some(path)) = (exec, path) {
                add(Path::new(std::ffi::OsStr::from_bytes(path)).parent());
            }
        }
    }
    dirs
}

/// The dynamic loader's cache, which the new program's loader reads.
const LOADER_CACHE: &str = "/etc/ld.so.cache";

/// A file of `/proc` (whose size `fstat` does not give), whole.
fn read_proc(path: &str) -> Option<Vec<u8>> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
}

/// Confines the calling process for good (see the module's doc). Call it
/// once the listening socket and the rules are open, while the process is
/// single-threaded. `exe`: the path the upgrade re-executes (see
/// [`exec_dirs`]).
pub fn confine(rules: &RulesConfig, exe: Option<&Path>) -> Result<Vec<Shortfall>, Failure> {
    let mut short = Vec::new();
    sys::set_no_new_privs().map_err(step("set no_new_privs"))?;
    match sys::landlock_abi() {
        Ok(abi) => {
            if abi < LANDLOCK_ABI_KNOWN {
                short.push(Shortfall::LandlockAbi(abi));
            }
            landlock(rules, exe, abi)?;
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP)) => {
            short.push(Shortfall::NoLandlock)
        }
        Err(e) => return Err(step("query the Landlock ABI")(e)),
    }
    match SECCOMP_FILTER {
        None => short.push(Shortfall::NoSeccompFilterForArch),
        Some(filter) => match sys::install_seccomp_filter(filter) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                short.push(Shortfall::NoSeccompInKernel)
            }
            Err(e) => return Err(step("install the seccomp filter")(e)),
        },
    }
    Ok(short)
}

fn landlock(rules: &RulesConfig, exe: Option<&Path>, abi: u32) -> Result<(), Failure> {
    let net = if abi >= 4 { 0b11 } else { 0 }; // bind, connect TCP
    let scoped = if abi >= 6 { 0b11 } else { 0 }; // abstract Unix, signals
    let fs = landlock_fs_rights(abi);
    let ruleset =
        sys::landlock_create_ruleset(fs, net, scoped).map_err(step("create a Landlock ruleset"))?;
    let mut grants = Vec::new();
    for d in readable_dirs(rules) {
        grants.push((d, LANDLOCK_READ));
    }
    for d in exec_dirs(exe) {
        grants.push((d, LANDLOCK_EXEC));
    }
    grants.push((PathBuf::from(LOADER_CACHE), LANDLOCK_READ_FILE));
    for (dir, rights) in grants {
        // A directory that is not there now has nothing to grant: the
        // rules in it cannot be read then, sandbox or not.
        let Ok(fd): Result<OwnedFd, _> = rustix::fs::open(
            dir.as_path(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            continue;
        };
        sys::landlock_allow_beneath(ruleset.as_fd(), fd.as_fd(), rights & fs)
            .map_err(step("add a Landlock rule"))?;
    }
    sys::landlock_restrict_self(ruleset.as_fd()).map_err(step("enforce the Landlock ruleset"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_dirs_cover_the_rules_path() {
        let d = |p: &str| readable_dirs(&RulesConfig::Dir(p.into()));
        assert_eq!(d("/nonexistent/a/rules"), [PathBuf::from("/nonexistent/a")]);
        assert_eq!(d("rules-nonexistent"), [PathBuf::from(".")]);
        assert_eq!(d("/"), [PathBuf::from("/")]);
        assert_eq!(d(""), [PathBuf::from("/")]);
    }

    #[test]
    fn landlock_rights_by_abi() {
        assert_eq!(landlock_fs_rights(1), 0x1fff);
        assert_eq!(landlock_fs_rights(3), 0x7fff);
        assert_eq!(landlock_fs_rights(7), 0xffff);
    }
}
