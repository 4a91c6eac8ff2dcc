//! Descriptors passed by the launcher, whichever launched the service:
//! systemd's socket activation (`LISTEN_FDS`) or `s6-fdholder-getdump`
//! (`S6_FD#`); none when started some other way (then ask the holder, see
//! [`crate::restart`]).
//!
//! - systemd: `LISTEN_PID` must be this process's pid (else the variables
//!   were meant for another process and are ignored); `LISTEN_FDS` is the
//!   count n, the descriptors are 3 to 3 + n − 1; `LISTEN_FDNAMES`, when
//!   set, is their names separated by `:` (n of them), else every name is
//!   `unknown`, as systemd's `sd_listen_fds_with_names`.
//! - `s6-fdholder-getdump`: `S6_FD#` is the count n, `S6_FD_i` the i-th
//!   descriptor's number and `S6_FDID_i` its id (raw bytes), for `i` from 0
//!   to n − 1 (see `docs/s6-fdholder-getdump.md`).
//!
//! # Taking ownership without `unsafe`
//!
//! An inherited descriptor is only a number in the environment: turning it
//! into an [`OwnedFd`] asserts that nothing else owns it, which safe Rust
//! cannot check (`OwnedFd::from_raw_fd` and `BorrowedFd::borrow_raw` are
//! `unsafe`, in std and in `rustix` alike), and this crate forbids `unsafe`.
//! So there are two ways:
//!
//! - [`Passed::fd`] is the number: a caller that knows it owns it (it is
//!   its launcher's, at the start of `main`) takes it with
//!   `unsafe { OwnedFd::from_raw_fd(p.fd) }` in its own code. No copy, no
//!   descriptor left over.
//! - [`Passed::duplicate`] is safe: it asks the kernel for a *copy* of the
//!   process's own descriptor number through `pidfd_getfd(2)` (Linux 5.6),
//!   a new descriptor this library owns (close-on-exec), referring to the
//!   same open socket. The inherited descriptor itself stays open (and
//!   inheritable by children) for the life of the process, since only its
//!   owner may close it. [`crate::restart::Holder::inherit`] uses this.
//!
//! Neither closes the inherited one nor unsets the variables (unsetting the
//! environment is `unsafe` in Rust 2024): children see `LISTEN_PID` that is
//! not theirs and ignore it, but would see `S6_FD#`.
//!
//! # Example
//!
//! ```no_run
//! use std::net::TcpListener;
//! use std::os::fd::FromRawFd;
//!
//! # fn main() -> std::io::Result<()> {
//! for p in fdholder::launch::passed()? {
//!     if p.name == b"web" {
//!         // SAFETY: the launcher passed fd `p.fd` to this process, and
//!         // nothing else in it takes ownership of that number.
//!         let listener = unsafe { TcpListener::from_raw_fd(p.fd) };
//!         # drop(listener);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;

/// Who passed a descriptor.
///
/// # Example
///
/// ```
/// use fdholder::launch::{passed, Launcher};
/// # fn main() -> std::io::Result<()> {
/// let from_systemd = passed()?.iter().filter(|p| p.launcher == Launcher::Systemd).count();
/// eprintln!("systemd passed {from_systemd} descriptors");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Launcher {
    /// systemd's socket activation (`LISTEN_FDS`, `LISTEN_FDNAMES`,
    /// `LISTEN_PID`), or anything speaking its protocol.
    Systemd,
    /// `s6-fdholder-getdump` (`S6_FD#`, `S6_FD_i`, `S6_FDID_i`).
    Getdump,
}

/// A descriptor the launcher passed.
///
/// # Example
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let web = fdholder::launch::passed()?.into_iter().find(|p| p.name == b"web");
/// if let Some(p) = web {
///     eprintln!("web is fd {}, from {:?}", p.fd, p.launcher);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// Who passed it.
    pub launcher: Launcher,
    /// Its name: the `LISTEN_FDNAMES` entry, or the holder's id.
    pub name: Vec<u8>,
    /// Its number in this process.
    pub fd: RawFd,
}

impl Passed {
    /// A new descriptor for the same open file (`pidfd_getfd` on this
    /// process), close-on-exec; the inherited one stays open.
    ///
    /// # Errors
    ///
    /// `EBADF` when no descriptor of that number is open; `ENOSYS` on
    /// kernels before 5.6; `EPERM` where a security module forbids it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::os::unix::net::UnixListener;
    /// # fn main() -> std::io::Result<()> {
    /// if let Some(p) = fdholder::launch::passed()?.into_iter().next() {
    ///     let listener = UnixListener::from(p.duplicate()?);
    ///     # drop(listener);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn duplicate(&self) -> io::Result<OwnedFd> {
        use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
        let me = pidfd_open(getpid(), PidfdFlags::empty())?;
        Ok(pidfd_getfd(&me, self.fd, PidfdGetfdFlags::empty())?)
    }
}

/// Every descriptor the launcher passed, systemd's first, then
/// `s6-fdholder-getdump`'s; empty when neither set its variables.
///
/// # Errors
///
/// `EINVAL` when the variables are set but malformed: a count or a
/// descriptor number that is not a decimal number, a missing `S6_FD_i` or
/// `S6_FDID_i`, a `LISTEN_FDNAMES` with another number of names.
///
/// # Example
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// for p in fdholder::launch::passed()? {
///     eprintln!("{:?} passed fd {} named {:?}", p.launcher, p.fd, p.name);
/// }
/// # Ok(())
/// # }
/// ```
pub fn passed() -> io::Result<Vec<Passed>> {
    let var = |k: &str| std::env::var_os(k);
    let mut all = systemd(
        std::process::id(),
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
    )?;
    all.extend(getdump(|k| var(k))?);
    Ok(all)
}

fn number(v: &OsStr) -> io::Result<u32> {
    let s = v.to_str().ok_or(Errno::INVAL)?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::INVAL.into());
    }
    s.parse().map_err(|_| Errno::INVAL.into())
}

/// systemd's variables, for the process `pid`.
fn systemd(
    pid: u32,
    listen_pid: Option<&OsStr>,
    fds: Option<&OsStr>,
    names: Option<&OsStr>,
) -> io::Result<Vec<Passed>> {
    let (Some(listen_pid), Some(fds)) = (listen_pid, fds) else {
        return Ok(vec![]);
    };
    if number(listen_pid)? != pid {
        return Ok(vec![]);
    }
    let n = number(fds)?;
    if n > i32::MAX as u32 - 3 {
        return Err(Errno::INVAL.into());
    }
    let names: Vec<Vec<u8>> = match names {
        None => vec![b"unknown".to_vec(); n as usize],
        Some(v) if n == 0 && v.is_empty() => vec![],
        Some(v) => v
            .as_bytes()
            .split(|&b| b == b':')
            .map(<[u8]>::to_vec)
            .collect(),
    };
    if names.len() != n as usize {
        return Err(Errno::INVAL.into());
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Passed {
            launcher: Launcher::Systemd,
            name,
            fd: 3 + i as RawFd,
        })
        .collect())
}

/// `s6-fdholder-getdump`'s variables, read through `var`.
fn getdump(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> io::Result<Vec<Passed>> {
    let Some(n) = var("S6_FD#") else {
        return Ok(vec![]);
    };
    let n = number(&n)?;
    let mut v = Vec::new();
    for i in 0..n {
        let fd = var(&format!("S6_FD_{i}")).ok_or(Errno::INVAL)?;
        let fd = RawFd::try_from(number(&fd)?).map_err(|_| Errno::INVAL)?;
        let name = var(&format!("S6_FDID_{i}")).ok_or(Errno::INVAL)?;
        v.push(Passed {
            launcher: Launcher::Getdump,
            name: name.as_bytes().to_vec(),
            fd,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn systemd_only_for_our_pid() {
        assert!(systemd(42, os("41"), os("2"), None).unwrap().is_empty());
        assert!(systemd(42, None, os("2"), None).unwrap().is_empty());
        let v = systemd(42, os("42"), os("2"), None).unwrap();
        assert_eq!(
            v.iter().map(|p| (p.fd, &p.name[..])).collect::<Vec<_>>(),
            [(3, &b"unknown"[..]), (4, &b"unknown"[..])]
        );
        assert!(v.iter().all(|p| p.launcher == Launcher::Systemd));
    }

    #[test]
    fn systemd_names_split_on_colons() {
        let v = systemd(7, os("7"), os("3"), os("web:admin:")).unwrap();
        let names: Vec<&[u8]> = v.iter().map(|p| &p.name[..]).collect();
        assert_eq!(names, [&b"web"[..], b"admin", b""]);
        assert_eq!(v[2].fd, 5);
        assert!(systemd(7, os("7"), os("0"), os("")).unwrap().is_empty());
    }

    #[test]
    fn systemd_malformed() {
        for (pid, fds, names) in [
            ("x", "1", None),
            ("7", "-1", None),
            ("7", "", None),
            ("7", "2", Some("one")),
            ("7", "1", Some("a:b")),
        ] {
            let e = systemd(7, os(pid), os(fds), names.map(OsStr::new)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
        }
    }

    fn env(pairs: &[(&str, &[u8])]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsStr::from_bytes(v).to_os_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn getdump_variables() {
        assert!(getdump(env(&[])).unwrap().is_empty());
        let v = getdump(env(&[
            ("S6_FD#", b"2"),
            ("S6_FD_0", b"7"),
            ("S6_FDID_0", b"web/listen"),
            ("S6_FD_1", b"3"),
            ("S6_FDID_1", b"raw\n\xff"),
        ]))
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].fd, &v[0].name[..]), (7, &b"web/listen"[..]));
        assert_eq!((v[1].fd, &v[1].name[..]), (3, &b"raw\n\xff"[..]));
        assert!(v.iter().all(|p| p.launcher == Launcher::Getdump));
        assert!(getdump(env(&[("S6_FD#", b"1"), ("S6_FD_0", b"7")])).is_err());
        assert!(
            getdump(env(&[
                ("S6_FD#", b"1"),
                ("S6_FD_0", b"x"),
                ("S6_FDID_0", b"a")
            ]))
            .is_err()
        );
    }

    #[test]
    fn duplicate_is_the_same_file() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let p = Passed {
            launcher: Launcher::Getdump,
            name: b"x".to_vec(),
            fd: std::os::fd::AsRawFd::as_raw_fd(&f),
        };
        let d = p.duplicate().unwrap();
        let (a, b) = (
            rustix::fs::fstat(&f).unwrap(),
            rustix::fs::fstat(&d).unwrap(),
        );
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        let closed = Passed { fd: 1 << 20, ..p };
        assert_eq!(
            closed.duplicate().unwrap_err().raw_os_error(),
            Some(Errno::BADF.raw_os_error())
        );
    }
}
