//! `s6-ipcserver-socketbinder`: binds a Unix domain socket to a path, puts
//! it on fd 0 and executes a program (see docs/s6-ipcserver-socketbinder.md).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};

use crate::cli::{self, EXIT_SYS, Prog};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

const PROG: Prog = Prog {
    name: "s6-ipcserver-socketbinder",
    usage: "s6-ipcserver-socketbinder [ -d | -D ] [ -b backlog ] [ -M | -m ] [ -a perms ] [ -B ] path prog...",
};

/// The longest path skalibs binds to (`IPCPATH_MAX`).
const IPCPATH_MAX: usize = 107;

/// Binds `sock` to `path` as skalibs' `ipc_bind` (2.15, which s6 2.15 is
/// built with): a path too long is ENAMETOOLONG (older skalibs, as under
/// Debian's s6 2.11, said EPROTO); the empty path is the address of all
/// zeros (an abstract name).
fn bind(sock: &OwnedFd, path: &OsStr) -> io::Result<()> {
    if path.len() > IPCPATH_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let addr = if path.is_empty() {
        SocketAddrUnix::new_abstract_name(&[0; IPCPATH_MAX])?
    } else {
        SocketAddrUnix::new(path)?
    };
    Ok(rustix::net::bind(sock, &addr)?)
}

/// Binds as skalibs' `ipc_bind_reuse`: takes an exclusive lock on
/// `path.lock` (EBUSY if someone holds it), sets SO_REUSEADDR, removes
/// `path`, binds. The returned lock fd is close-on-exec: the lock lasts
/// until the exec.
fn bind_reuse(sock: &OwnedFd, path: &OsStr) -> io::Result<OwnedFd> {
    let mut lockname = path.to_os_string();
    lockname.push(".lock");
    let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CREATE | OFlags::CLOEXEC;
    let lock = rustix::fs::open(lockname.as_os_str(), flags, Mode::from_raw_mode(0o600))?;
    match rustix::fs::fcntl_lock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::ACCESS | Errno::AGAIN) => return Err(io::Error::from_raw_os_error(libc::EBUSY)),
        Err(e) => return Err(e.into()),
    }
    let _ = rustix::net::sockopt::set_socket_reuseaddr(sock, true);
    let _ = rustix::fs::unlink(path);
    bind(sock, path)?;
    Ok(lock)
}

/// The program: parses `std::env::args_os()` and exits or execs.
pub fn main() {
    let (opts, args) = PROG.getopt("DdMmBb:a:");
    let (mut reuse, mut dgram, mut nonblock) = (true, false, true);
    let mut backlog = libc::SOMAXCONN as u32;
    let mut perms = 0o777;
    for (c, v) in opts {
        match c {
            'D' => reuse = false,
            'd' => reuse = true,
            'M' => dgram = false,
            'm' => dgram = true,
            'B' => nonblock = false,
            'b' => backlog = PROG.uint(&v),
            'a' => perms = cli::parse_uint_octal(&v).unwrap_or_else(|| PROG.die_usage()),
            _ => PROG.die_usage(),
        }
    }
    if args.len() < 2 {
        PROG.die_usage();
    }
    let path = args[0].as_os_str();
    let ty = if dgram {
        SocketType::DGRAM
    } else {
        SocketType::STREAM
    };
    let flags = if nonblock {
        SocketFlags::NONBLOCK
    } else {
        SocketFlags::empty()
    };
    let sock = rustix::net::socket_with(AddressFamily::UNIX, ty, flags, None)
        .unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "create socket", &e.into()));

    // The permissions are those the umask lets through at bind time.
    let old = rustix::process::umask(Mode::from_raw_mode(!perms & 0o777));
    let bound = if reuse {
        bind_reuse(&sock, path).map(Some)
    } else {
        bind(&sock, path).map(|()| None)
    };
    let _lock = bound.unwrap_or_else(|e| {
        PROG.die_unable(
            EXIT_SYS,
            format_args!("bind to {}", path.to_string_lossy()),
            &e,
        )
    });
    rustix::process::umask(old);

    if backlog != 0 {
        // As C's listen(int): a backlog over INT_MAX wraps, the kernel clamps.
        rustix::net::listen(&sock, backlog as i32).unwrap_or_else(|e| {
            PROG.die_unable(
                EXIT_SYS,
                format_args!("listen to {}", path.to_string_lossy()),
                &e.into(),
            )
        });
    }

    // The socket becomes fd 0, inherited by the program.
    if sock.as_raw_fd() == 0 {
        let _ = sock.into_raw_fd();
    } else {
        rustix::stdio::dup2_stdin(&sock)
            .unwrap_or_else(|e| PROG.die_unable(EXIT_SYS, "dup2 socket to stdin", &e.into()));
        drop(sock);
    }
    PROG.exec(&args[1..], &[])
}
