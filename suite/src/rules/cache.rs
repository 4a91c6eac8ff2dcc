//! A rules directory whose decisions are kept until the kernel reports a
//! change: the reference reads the directory for every connection (some 20
//! system calls); this reads it once and then checks, with two system
//! calls per connection, that nothing it read can have changed.
//!
//! # Why a kept decision is never stale
//!
//! Filling the cache for a key reads exactly what [`super::lookup_dir`]
//! reads, by the same rule ([`super::read_key`]), but relative to
//! descriptors (`openat`), and puts an inotify watch on every inode it
//! consults *before* reading it: the rules directory, each directory down
//! to the key, `allow`, `deny`, `env/`, every file in `env/`, `exec`. Watches are on inodes, so a change reaches us whatever path it is
//! made through (hard links, bind mounts). Every connection then checks, after
//! `accept` and so after every edit that happened before the client
//! connected:
//!
//! 1. `poll` on the inotify descriptor and on `/proc/self/mountinfo`: any
//!    event (an entry created, removed or renamed in a watched directory; a
//!    watched inode written, truncated, chmod-ed, chown-ed, opened, moved or
//!    deleted; the queue overflowing; any mount or unmount) throws the whole
//!    cache away;
//! 2. `stat` of the rules directory's path: if it now names another
//!    directory (it, or one of its ancestors, was renamed or replaced, or a
//!    symlink on the way was), the cache is thrown away too.
//!
//! A decision read while an event arrives is used for that one connection
//! (it was read after the connection came, as the reference reads it) but is
//! not kept.
//!
//! # What is never cached (read for every connection, as the reference)
//!
//! - Keys whose tree holds a symlink (its target's path is not watched), or
//!   anything unexpected: an error, a file where a directory belongs, an
//!   inode inotify refuses to watch. Such a key is looked up by path, with
//!   the reference's exact semantics, every time.
//! - Anything on a filesystem that can change without this kernel seeing it
//!   (NFS, FUSE, 9p, overlayfs, ...): only the local filesystems in
//!   [`LOCAL_FS`] are cached.
//! - Everything, when `/proc` is not mounted, inotify is not available, or
//!   the daemon is short of descriptors (see [`DirRules::set_caching`]).
//!
//! # When edits come too often
//!
//! A fill costs about three lookups by path (watches, `fstatfs`). When the
//! entries kept are thrown away before they answered three lookups per
//! fill (edits, or reads by other processes: an open counts), the cache
//! steps aside for 10 ms, doubling up to a second while it lasts, and
//! lookups go by path, as the reference's do.
//!
//! # The one known limit
//!
//! inotify does not see writes made through a shared writable `mmap` of a
//! file. Opening a watched file is itself an event here (`IN_OPEN`), so a
//! mapping made after the file was cached is seen when it is made; a
//! mapping through a descriptor opened before the file was read is not
//! (`tests/rules_cache.rs` writes through a mapping opened after). No tool
//! edits rule files that way.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{
    self as rfs, Access, AtFlags, CWD, FileType, Mode, OFlags, RawDir, StatxFlags, inotify,
};
use rustix::io::Errno;

use super::{
    Decision, ENV_DIR, EXEC_FILE, EnvVar, KeyFiles, Mark, check_uidgid_with, lookup_dir,
    read_env_files, read_exec, read_key,
};

/// Filesystems on which every change goes through this kernel, so that
/// inotify reports it: ext2/3/4, xfs, btrfs, tmpfs, ramfs, f2fs, jfs, bcachefs.
pub const LOCAL_FS: &[i64] = &[
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x8584_58F6, // ramfs
    0xF2F5_2010, // f2fs
    0x3153_464A, // jfs
    0xCA45_1A4E, // bcachefs
];

/// Whether a `statfs` filesystem type is one of [`LOCAL_FS`] (`f_type` is
/// 32 or 64 bits wide, depending on the target).
fn is_local(f_type: impl Into<i64>) -> bool {
    LOCAL_FS.contains(&f_type.into())
}

/// How long the cache steps aside at first, and at most, when edits come
/// faster than it pays (see `DirRules::churned`).
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Most keys kept at once; past that the cache starts again empty (each
/// key costs a few inotify watches).
const MAX_ENTRIES: usize = 256;

/// How the cache has been used, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Keys answered from the cache.
    pub hits: u64,
    /// Keys read from the directory and kept.
    pub fills: u64,
    /// Keys read from the directory by path and not kept (uncacheable,
    /// or caching off).
    pub uncached: u64,
    /// Times kept entries were thrown away because something changed.
    pub invalidations: u64,
}

/// A rules directory (`s6-fdholderd -i`), with its decisions cached by key
/// for as long as the kernel reports no change (see the module docs).
#[derive(Debug)]
pub struct DirRules {
    path: PathBuf,
    allowed: bool,
    /// inotify or `/proc` is missing: never cache.
    unavailable: bool,
    watch: Option<Watch>,
    stats: CacheStats,
    /// Fills and hits of the entries kept since the last change.
    gen_fills: u64,
    gen_hits: u64,
    /// While edits come too fast to keep anything: read by path until then.
    bypass_until: Option<Instant>,
    backoff: Duration,
}

/// The descriptors and entries of an active cache.
#[derive(Debug)]
struct Watch {
    inotify: OwnedFd,
    /// `/proc/self/mountinfo`: `POLLPRI` when the mount table changes.
    mounts: OwnedFd,
    /// The directory the entries were read from, and through which mount.
    root: Option<Identity>,
    entries: HashMap<String, Decision>,
    /// Every watch made since the last reset (an inode watched already
    /// gives its existing watch descriptor back).
    wds: Vec<i32>,
}

/// What names a directory exactly: its device and inode, and the mount it
/// is reached through (the same directory seen through another mount may
/// have other mounts below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: (u32, u32),
    ino: u64,
    mnt_id: u64,
}

/// The identity of `path` from `dir` (`statx`); `None` if it cannot be had,
/// mount id included (Linux before 5.8 has none: nothing is cached there).
fn identity(dir: BorrowedFd<'_>, path: &Path, flags: AtFlags) -> Option<Identity> {
    let need = StatxFlags::INO | StatxFlags::MNT_ID;
    let st = rfs::statx(dir, path, flags, need).ok()?;
    if st.stx_mask & need.bits() != need.bits() {
        return None;
    }
    Some(Identity {
        dev: (st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mnt_id: st.stx_mnt_id,
    })
}

/// Path limits (`<limits.h>`), for paths lookup_dir builds.
const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;

/// Why a key is not cached but looked up by path: something the cache
/// cannot watch or does not expect (a symlink, a file where a directory
/// belongs, a filesystem not in [`LOCAL_FS`], an error...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Uncacheable;

impl From<io::Error> for Uncacheable {
    fn from(_: io::Error) -> Uncacheable {
        Uncacheable
    }
}

impl From<Errno> for Uncacheable {
    fn from(_: Errno) -> Uncacheable {
        Uncacheable
    }
}

impl DirRules {
    /// A rules directory, caching allowed; nothing is opened yet.
    pub fn new(path: impl Into<PathBuf>) -> DirRules {
        DirRules {
            path: path.into(),
            allowed: true,
            unavailable: false,
            watch: None,
            stats: CacheStats::default(),
            gen_fills: 0,
            gen_hits: 0,
            bypass_until: None,
            backoff: Duration::ZERO,
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allows or forbids caching. Allowing it opens the cache's two
    /// descriptors now (an inotify instance and `/proc/self/mountinfo`), so
    /// that the daemon's descriptor count is settled before it serves;
    /// forbidding it closes them at once. The daemon forbids it when held
    /// fds come near its descriptor limit, so that the cache never takes
    /// the descriptors a client needs.
    pub fn set_caching(&mut self, on: bool) {
        self.allowed = on;
        if !on {
            self.watch = None;
        } else if self.watch.is_none() && !self.unavailable {
            match Watch::new() {
                Ok(w) => {
                    // A new cache: what the last one kept is no churn.
                    self.gen_fills = 0;
                    self.gen_hits = 0;
                    self.watch = Some(w);
                }
                // Short of descriptors or memory: try again later.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM)
                    ) => {}
                // No inotify, no /proc: read by path for good.
                Err(_) => self.unavailable = true,
            }
        }
    }

    /// Never caches from now on (closing what is open): every lookup goes
    /// by path. For the daemon's sandbox, which allows neither inotify nor
    /// `fstatfs` (a cache trying would only add failing system calls).
    pub fn never_cache(&mut self) {
        self.unavailable = true;
        self.watch = None;
    }

    /// How many descriptors the cache holds open now: an inotify instance
    /// and `/proc/self/mountinfo` while it is open, none otherwise.
    pub fn open_fds(&self) -> u64 {
        if self.watch.is_some() { Watch::FDS } else { 0 }
    }

    /// Whether caching is allowed (see [`DirRules::set_caching`]).
    pub fn caching(&self) -> bool {
        self.allowed
    }

    /// How the cache has been used so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Looks up one key by path, as the reference does (no cache).
    pub fn lookup_uncached(&self, key: &str) -> io::Result<Decision> {
        lookup_dir(&self.path, key)
    }

    /// Judges a peer in the reference's key order, from the cache where
    /// nothing has changed since it was read.
    pub fn check_uidgid_as(
        &mut self,
        uid: u32,
        gid: u32,
        euid: u32,
        egid: u32,
    ) -> io::Result<Decision> {
        let cached = self.sync();
        check_uidgid_with(
            |key| {
                if cached {
                    self.lookup_cached(key)
                } else {
                    self.stats.uncached += 1;
                    lookup_dir(&self.path, key)
                }
            },
            uid,
            gid,
            euid,
            egid,
        )
    }

    /// Brings the cache up to date with the filesystem: throws it away if
    /// anything was reported or the path names another directory. Returns
    /// whether the cache may be used for this lookup.
    fn sync(&mut self) -> bool {
        if let Some(t) = self.bypass_until {
            if Instant::now() < t {
                return false;
            }
            self.bypass_until = None;
        }
        self.set_caching(self.allowed);
        let Some(w) = self.watch.as_mut() else {
            return false;
        };
        let changed = w.changed();
        let id = identity(CWD, &self.path, AtFlags::empty());
        if changed || id.is_none() || w.root != id {
            w.root = id;
            if w.reset().is_err() {
                self.watch = None;
                return false;
            }
            self.churned();
        }
        // Gone or unreachable: the lookup by path gives the reference's
        // answer (and error).
        id.is_some() && self.bypass_until.is_none()
    }

    /// Accounts for a cache thrown away because something changed. A
    /// generation of entries pays for its fills (each costs about three
    /// lookups by path: watches, `fstatfs`) once it has answered three
    /// times as many lookups as it filled; one that did not means edits
    /// (or reads: opening a rule file counts) come too often to keep
    /// anything, and the cache steps aside for a while, 10 ms doubling up
    /// to a second, reading by path meanwhile, as the reference does.
    fn churned(&mut self) {
        let (fills, hits) = (self.gen_fills, self.gen_hits);
        self.gen_fills = 0;
        self.gen_hits = 0;
        if fills == 0 {
            return; // nothing was kept: nothing to judge
        }
        self.stats.invalidations += 1;
        if hits >= 3 * fills {
            self.backoff = Duration::ZERO;
        } else {
            self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
            self.bypass_until = Some(Instant::now() + self.backoff);
        }
    }

    fn lookup_cached(&mut self, key: &str) -> io::Result<Decision> {
        let Some(w) = self.watch.as_mut() else {
            // Closed by a failed reset for an earlier key of this lookup.
            self.stats.uncached += 1;
            return lookup_dir(&self.path, key);
        };
        if let Some(d) = w.entries.get(key) {
            self.stats.hits += 1;
            self.gen_hits += 1;
            return Ok(d.clone());
        }
        if w.entries.len() >= MAX_ENTRIES && w.reset().is_err() {
            self.watch = None;
            self.stats.uncached += 1;
            return lookup_dir(&self.path, key);
        }
        // A fill that gives up still counts: it may have watched files that
        // the lookup by path then opens (an event), and if that happens at
        // every connection, the churn rule makes the cache step aside.
        self.gen_fills += 1;
        let Ok(d) = w.fill(&self.path, key) else {
            self.stats.uncached += 1;
            return lookup_dir(&self.path, key);
        };
        if w.changed() {
            // Something changed while it was read: good for this
            // connection (read after it came), not to keep.
            self.stats.uncached += 1;
            if w.reset().is_err() {
                self.watch = None;
            }
            self.churned();
        } else {
            w.entries.insert(key.to_owned(), d.clone());
            self.stats.fills += 1;
        }
        Ok(d)
    }
}

/// The events that make a kept decision stale. `IN_OPEN` is added for
/// files: an open may be followed by writes through `mmap`, which inotify
/// does not report.
fn watch_flags(dir: bool) -> inotify::WatchFlags {
    use inotify::WatchFlags as W;
    let f = W::MODIFY
        | W::ATTRIB
        | W::CLOSE_WRITE
        | W::MOVED_FROM
        | W::MOVED_TO
        | W::CREATE
        | W::DELETE
        | W::DELETE_SELF
        | W::MOVE_SELF;
    if dir { f } else { f | W::OPEN }
}

/// Opens a rule file to read it, as `lookup_dir` does (non-blocking: a
/// FIFO reads as empty), but never through a symlink (`ELOOP`: the key is
/// then read by path).
fn open_rule_file(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn new_inotify() -> io::Result<OwnedFd> {
    Ok(inotify::init(
        inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK,
    )?)
}

impl Watch {
    /// The descriptors a `Watch` holds: `inotify` and `mounts`.
    const FDS: u64 = 2;

    fn new() -> io::Result<Watch> {
        let inotify = new_inotify()?;
        let mounts = rfs::open(
            "/proc/self/mountinfo",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Watch {
            inotify,
            mounts,
            root: None,
            entries: HashMap::new(),
            wds: Vec::new(),
        })
    }

    /// Whether anything was reported since the last reset: an inotify
    /// event waiting, or a mount table change (reported once by `poll`).
    fn changed(&self) -> bool {
        let mut fds = [
            PollFd::new(&self.inotify, PollFlags::IN),
            PollFd::new(&self.mounts, PollFlags::PRI),
        ];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(n) => n > 0,
            Err(_) => true,
        }
    }

    /// Forgets every entry, every watch and every queued event. Watches
    /// are removed one by one (a few per key) rather than with the whole
    /// inotify instance: closing an instance waits for an RCU grace period,
    /// some milliseconds. None may stay: a fill opens each file before
    /// watching it, so that its own open is no `IN_OPEN` event.
    fn reset(&mut self) -> io::Result<()> {
        self.entries.clear();
        for wd in self.wds.drain(..) {
            // Fails only for a watch the kernel already dropped (its inode
            // deleted or unmounted).
            let _ = inotify::remove_watch(&self.inotify, wd);
        }
        // Then the queue: what came before, and the removals' IN_IGNORED.
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        loop {
            match rustix::io::read(&self.inotify, &mut buf) {
                Ok((read, _)) if !read.is_empty() => {}
                Ok(_) | Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Watches the inode `fd` refers to, if its filesystem reports every
    /// change.
    fn watch(&mut self, fd: BorrowedFd<'_>, dir: bool) -> Result<(), Uncacheable> {
        let fs = rfs::fstatfs(fd)?;
        if !is_local(fs.f_type) {
            return Err(Uncacheable);
        }
        // The kernel's name for exactly this open inode: a watch added by
        // the file's own path could land on another inode if the path
        // changed meanwhile.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let wd = inotify::add_watch(&self.inotify, path, watch_flags(dir))?;
        if !self.wds.contains(&wd) {
            self.wds.push(wd);
        }
        Ok(())
    }

    /// Opens `name` in `dir` without following a symlink, and watches it.
    /// `Ok(None)`: it does not exist (the watched `dir` reports its
    /// creation). A symlink is not cacheable.
    fn node(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &str,
    ) -> Result<Option<(OwnedFd, FileType)>, Uncacheable> {
        let fd = match rfs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(_) => return Err(Uncacheable),
        };
        let ty = FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode);
        if ty == FileType::Symlink {
            return Err(Uncacheable);
        }
        self.watch(fd.as_fd(), ty == FileType::Directory)?;
        Ok(Some((fd, ty)))
    }

    /// Whether `dir/name` exists and is readable, as `access(R_OK)`, with
    /// the inode watched first (its mode or owner may change).
    fn readable(&mut self, dir: BorrowedFd<'_>, name: &str) -> Result<bool, Uncacheable> {
        // The descriptor `node` opens is closed at once (the condition's
        // temporary), before `accessat`.
        if self.node(dir, name)?.is_none() {
            return Ok(false);
        }
        match rfs::accessat(dir, name, Access::READ_OK, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) | Err(Errno::ACCESS) => Ok(false),
            Err(_) => Err(Uncacheable),
        }
    }

    /// Reads `key` below `path` as [`lookup_dir`] does, watching every
    /// inode before reading it.
    fn fill(&mut self, path: &Path, key: &str) -> Result<Decision, Uncacheable> {
        let root = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Paths as long as lookup_dir's fail there (ENAMETOOLONG) while
        // relative ones would not: those are read by path.
        if path.as_os_str().len() + key.len() + 2 * NAME_MAX >= PATH_MAX {
            return Err(Uncacheable);
        }
        let here = identity(root.as_fd(), Path::new(""), AtFlags::EMPTY_PATH);
        if here.is_none() || here != self.root {
            return Err(Uncacheable); // replaced since the check: read it by path
        }
        self.watch(root.as_fd(), true)?;
        let mut dir = root;
        for component in key.split('/') {
            match self.node(dir.as_fd(), component)? {
                None => return Ok(Decision::NotFound),
                Some((fd, FileType::Directory)) => dir = fd,
                Some(_) => return Err(Uncacheable),
            }
        }
        read_key(&mut WatchedKey { watch: self, dir })
    }

    /// The key's `env/`, as [`super::read_envdir`] reads it.
    fn read_env(&mut self, key: BorrowedFd<'_>) -> Result<Vec<EnvVar>, Uncacheable> {
        let dir = match rfs::openat(
            key,
            ENV_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            Err(_) => return Err(Uncacheable),
        };
        self.watch(dir.as_fd(), true)?;
        let mut names = Vec::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        let mut entries = RawDir::new(&dir, &mut buf);
        while let Some(e) = entries.next() {
            names.push(e?.file_name().to_bytes().to_vec());
        }
        read_env_files(names, |name| {
            let f = open_rule_file(dir.as_fd(), OsStr::from_bytes(name))?;
            self.watch(f.as_fd(), false)?;
            Ok(f)
        })
    }

    /// The key's `exec` (up to 4096 bytes), empty if absent or unreadable.
    /// Opened before it is watched, as the env files: our own open must not
    /// count as an `IN_OPEN` event.
    fn read_exec(&mut self, key: BorrowedFd<'_>) -> Result<Vec<u8>, Uncacheable> {
        let f = match open_rule_file(key, EXEC_FILE.as_ref()) {
            Ok(f) => f,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            // Unreadable: nothing, but watched (a chmod makes it readable).
            Err(Errno::ACCESS) => {
                self.node(key, EXEC_FILE)?;
                return Ok(Vec::new());
            }
            Err(_) => return Err(Uncacheable),
        };
        self.watch(f.as_fd(), false)?;
        Ok(read_exec(f.into())?)
    }
}

/// A key's files through the descriptor of its directory, each inode
/// watched before it is read: how a fill reads a key.
struct WatchedKey<'a> {
    watch: &'a mut Watch,
    dir: OwnedFd,
}

impl KeyFiles for WatchedKey<'_> {
    type Error = Uncacheable;

    fn present(&mut self, mark: Mark) -> Result<bool, Uncacheable> {
        self.watch.readable(self.dir.as_fd(), mark.file_name())
    }

    fn env(&mut self) -> Result<Vec<EnvVar>, Uncacheable> {
        self.watch.read_env(self.dir.as_fd())
    }

    fn exec(&mut self) -> Result<Vec<u8>, Uncacheable> {
        self.watch.read_exec(self.dir.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory on a filesystem the cache trusts (tmpfs where
    /// there is one), so that these tests exercise the cache itself.
    fn tmp(tag: &str) -> PathBuf {
        let base = ["/dev/shm", "/tmp"]
            .into_iter()
            .map(Path::new)
            .find(|p| {
                rfs::statfs(*p).is_ok_and(|s| is_local(s.f_type))
                    && rfs::access(*p, Access::WRITE_OK).is_ok()
            })
            .expect("no local filesystem to test on");
        let d = base.join(format!("fdholder-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn allow(rules: &Path, key: &str, env: &[(&str, &str)]) {
        let k = rules.join(key);
        std::fs::create_dir_all(k.join("env")).unwrap();
        std::fs::write(k.join("allow"), "").unwrap();
        for (n, v) in env {
            std::fs::write(k.join("env").join(n), v).unwrap();
        }
    }

    fn uncached(rules: &Path, uid: u32, gid: u32) -> io::Result<Decision> {
        check_uidgid_with(|k| lookup_dir(rules, k), uid, gid, 0, 0)
    }

    #[test]
    fn hits_until_an_edit_then_reads_again() {
        let d = tmp("hits");
        let rules = d.join("rules");
        allow(&rules, "uid/5", &[("S6_FDHOLDER_LIST", "\n")]);
        let mut r = DirRules::new(&rules);
        r.set_caching(true);
        let first = r.check_uidgid_as(5, 7, 0, 0).unwrap();
        assert!(matches!(&first, Decision::Allow(p) if p.is_set(b"S6_FDHOLDER_LIST")));
        assert_eq!(r.stats().fills, 1);
        for _ in 0..10 {
            assert_eq!(r.check_uidgid_as(5, 7, 0, 0).unwrap(), first);
        }
        assert_eq!(r.stats().hits, 10);
        assert_eq!(r.stats().fills, 1);
        // A peer whose keys are all absent: every key is a NotFound kept.
        assert_eq!(r.check_uidgid_as(6, 8, 0, 0).unwrap(), Decision::NotFound);
        assert_eq!(r.check_uidgid_as(6, 8, 0, 0).unwrap(), Decision::NotFound);
        assert_eq!(r.stats().fills, 4, "uid/6, gid/8, uid/default");
        assert_eq!(r.stats().uncached, 0);
        // Edits: each seen at once, by a new read.
        std::fs::write(rules.join("uid/5/env/S6_FDHOLDER_LIST"), "").unwrap();
        let d1 = r.check_uidgid_as(5, 7, 0, 0).unwrap();
        assert!(matches!(&d1, Decision::Allow(p) if !p.is_set(b"S6_FDHOLDER_LIST")));
        assert_eq!(r.stats().invalidations, 1);
        allow(&rules, "uid/default", &[]);
        assert!(matches!(
            r.check_uidgid_as(6, 8, 0, 0).unwrap(),
            Decision::Allow(_)
        ));
        assert_eq!(r.stats().invalidations, 2);
        // Forbidding the cache closes it; lookups go on, by path.
        r.set_caching(false);
        let before = r.stats();
        assert_eq!(r.check_uidgid_as(5, 7, 0, 0).unwrap(), d1);
        assert_eq!(r.stats().hits, before.hits);
        assert!(r.stats().uncached > before.uncached);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn steps_aside_while_edits_come_too_fast_then_caches_again() {
        let d = tmp("churn");
        let rules = d.join("rules");
        allow(&rules, "uid/5", &[("S6_FDHOLDER_LIST", "\n")]);
        let list = rules.join("uid/5/env/S6_FDHOLDER_LIST");
        let mut r = DirRules::new(&rules);
        r.set_caching(true);
        let end = Instant::now() + Duration::from_millis(300);
        let mut i = 0u64;
        while Instant::now() < end {
            // Every lookup follows an edit, and sees it.
            std::fs::write(&list, if i.is_multiple_of(2) { "" } else { "\n" }).unwrap();
            match r.check_uidgid_as(5, 7, 0, 0).unwrap() {
                Decision::Allow(p) => assert_eq!(p.is_set(b"S6_FDHOLDER_LIST"), i % 2 == 1),
                d => panic!("{d:?}"),
            }
            i += 1;
        }
        let s = r.stats();
        // Filling costs more than reading by path: the cache stepped aside
        // for most of the storm instead of filling for every lookup.
        assert!(s.fills + s.invalidations < i / 4, "{s:?} after {i} lookups");
        assert!(s.uncached > i / 2, "{s:?} after {i} lookups");
        // Quiet again: after at most the longest step aside, kept again (at
        // most one fill, if the storm ended between fills, then hits).
        std::thread::sleep(MAX_BACKOFF + Duration::from_millis(50));
        let before = r.stats();
        for _ in 0..5 {
            r.check_uidgid_as(5, 7, 0, 0).unwrap();
        }
        let after = r.stats();
        assert!(after.fills <= before.fills + 1, "{before:?} {after:?}");
        assert!(after.hits >= before.hits + 4, "{before:?} {after:?}");
        assert_eq!(after.uncached, before.uncached, "{before:?} {after:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_key_with_exec_is_kept_and_its_edits_seen() {
        let d = tmp("exec");
        let rules = d.join("rules");
        allow(&rules, "uid/5", &[("S6_FDHOLDER_LIST", "\n")]);
        std::fs::write(rules.join("uid/5/exec"), "prog").unwrap();
        let mut r = DirRules::new(&rules);
        r.set_caching(true);
        let exec = |d: Decision| match d {
            Decision::Allow(p) => p.exec,
            d => panic!("{d:?}"),
        };
        assert_eq!(exec(r.check_uidgid_as(5, 7, 0, 0).unwrap()), b"prog");
        assert_eq!(exec(r.check_uidgid_as(5, 7, 0, 0).unwrap()), b"prog");
        assert_eq!((r.stats().fills, r.stats().hits), (1, 1));
        std::fs::write(rules.join("uid/5/exec"), "other").unwrap();
        assert_eq!(exec(r.check_uidgid_as(5, 7, 0, 0).unwrap()), b"other");
        assert_eq!(r.stats().invalidations, 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlinked_key_is_never_kept() {
        let d = tmp("symkey");
        let rules = d.join("rules");
        allow(&d, "real", &[("S6_FDHOLDER_LIST", "\n")]);
        std::fs::create_dir_all(rules.join("uid")).unwrap();
        symlink(d.join("real"), rules.join("uid/5")).unwrap();
        let mut r = DirRules::new(&rules);
        r.set_caching(true);
        for _ in 0..3 {
            assert!(matches!(
                r.check_uidgid_as(5, 7, 0, 0).unwrap(),
                Decision::Allow(_)
            ));
        }
        assert_eq!(r.stats().fills, 0);
        assert_eq!(r.stats().uncached, 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A small deterministic generator (xorshift), for the trees below.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random trees, shapes the reference meets: keys present or not,
    /// allow and/or deny, env files of every kind (empty, blank, long,
    /// with NULs, hidden, with `=`, symlinked, directories), exec, keys
    /// that are files or symlinks. The cached answer (first read and kept
    /// one) must always be the answer by path, error or decision.
    #[test]
    fn cached_answers_equal_answers_by_path() {
        let d = tmp("diff");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let keys = ["uid/5", "gid/7", "uid/default", "uid/self", "gid/self"];
        let contents: &[&[u8]] = &[b"", b"\n", b"^a\n", b"x \t\r\nmore", b"a\0b", &[b'y'; 5000]];
        let (mut fills, mut hits, mut uncached_keys) = (0, 0, 0);
        for round in 0..150 {
            let rules = d.join(format!("r{round}"));
            std::fs::create_dir_all(&rules).unwrap();
            for key in keys {
                let k = rules.join(key);
                match rng.below(8) {
                    0 => continue,
                    1 => {
                        std::fs::create_dir_all(k.parent().unwrap()).unwrap();
                        std::fs::write(&k, "a file").unwrap();
                        continue;
                    }
                    2 => {
                        std::fs::create_dir_all(k.parent().unwrap()).unwrap();
                        symlink(d.join("nowhere"), &k).unwrap();
                        continue;
                    }
                    _ => std::fs::create_dir_all(&k).unwrap(),
                }
                if rng.below(4) > 0 {
                    std::fs::write(k.join("allow"), "").unwrap();
                }
                if rng.below(3) == 0 {
                    std::fs::write(k.join("deny"), "").unwrap();
                }
                if rng.below(2) == 0 {
                    std::fs::write(k.join("exec"), "prog arg").unwrap();
                }
                match rng.below(5) {
                    0 => {}
                    1 => std::fs::write(k.join("env"), "not a dir").unwrap(),
                    _ => {
                        std::fs::create_dir(k.join("env")).unwrap();
                        for i in 0..rng.below(6) {
                            let name = match rng.below(8) {
                                0 => format!(".hidden{i}"),
                                1 => format!("A=B{i}"),
                                _ => format!("S6_VAR_{i}"),
                            };
                            let p = k.join("env").join(&name);
                            match rng.below(12) {
                                0 => symlink(k.join("allow"), &p).unwrap(),
                                1 => std::fs::create_dir(&p).unwrap(),
                                n => {
                                    let c = contents[n as usize % contents.len()];
                                    std::fs::write(&p, c).unwrap();
                                }
                            }
                        }
                    }
                }
            }
            let mut r = DirRules::new(&rules);
            r.set_caching(true);
            for (uid, gid) in [(5, 7), (0, 0), (6, 8)] {
                let want = uncached(&rules, uid, gid).map_err(|e| e.kind());
                for pass in 0..2 {
                    let got = r.check_uidgid_as(uid, gid, 0, 0).map_err(|e| e.kind());
                    assert_eq!(got, want, "round {round} uid {uid} pass {pass}");
                }
            }
            fills += r.stats().fills;
            hits += r.stats().hits;
            uncached_keys += r.stats().uncached;
        }
        // Both ways were exercised: most keys kept, the odd ones by path.
        assert!(fills > 500 && hits > 500, "fills {fills} hits {hits}");
        assert!(uncached_keys > 50, "uncached {uncached_keys}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
