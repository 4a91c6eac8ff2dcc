//! Where our programs are: links named after each program, next to the
//! multicall binary `fdholder` that cargo built for this run, made once by
//! `fdholder --install` (which replaces links atomically, so concurrent
//! test processes can all ask).

use std::path::PathBuf;
use std::sync::Once;

/// The multicall binary cargo built.
pub fn multicall() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fdholder"))
}

/// Path of our program `name` (a link to the multicall binary). With
/// `FDHOLDER_TEST_BIN_DIR` set, the program of that name in that directory
/// instead (to run the tests against an installed suite, or an older
/// build).
pub fn ours(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FDHOLDER_TEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static INSTALL: Once = Once::new();
    let exe = multicall();
    let dir = exe.parent().unwrap().to_path_buf();
    INSTALL.call_once(|| {
        // Programs of an older build (one binary per program) in cargo's
        // own target directory are stale artifacts: `--install` rightly
        // refuses to replace files that are not links, so they go first.
        let list = std::process::Command::new(&exe)
            .arg("--list")
            .output()
            .unwrap();
        for name in String::from_utf8(list.stdout).unwrap().lines() {
            let p = dir.join(name);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink()) {
                std::fs::remove_file(&p).unwrap();
            }
        }
        let out = std::process::Command::new(&exe)
            .arg("--install")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "fdholder --install: {out:?}");
    });
    let p = dir.join(name);
    assert!(p.exists(), "{} not installed", p.display());
    p
}
