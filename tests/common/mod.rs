//! Shared helpers for the integration tests that compare our programs with
//! the reference ones from Debian's `s6` package.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system's temporary directory, removed on
/// drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("fdholder-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints a loud line straight to stderr, past the test harness's output
/// capture, so that a skipped check is seen.
pub fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "!!!!! SKIPPED: {msg} !!!!!");
}

/// The reference program `/usr/bin/<name>`, or `None` with a loud message
/// when the `s6` package is not installed (CI installs it).
pub fn reference(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin").join(name);
    if p.exists() {
        Some(p)
    } else {
        loud(&format!(
            "reference program {} is not installed (apt-get install s6)",
            p.display()
        ));
        None
    }
}

/// Whether we run as root; says loudly when not.
pub fn is_root(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        loud(&format!("{what} needs root"));
        false
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `bin args` in `dir`, stdin from /dev/null, with `env` set and
/// UID, GID and GIDLIST removed unless `env` sets them.
pub fn run<S: AsRef<OsStr>>(bin: &Path, args: &[S], dir: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for v in ["UID", "GID", "GIDLIST"] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
        .into()
}
