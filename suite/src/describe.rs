//! The daemon's side of a describe request: what each held descriptor is,
//! from the system calls that say it, without touching the descriptor's
//! state (no read, no write, no seek).
//!
//! The calls: `fstat`; `fcntl(F_GETFL)`; `readlink("/proc/self/fd/N")` for
//! paths and anonymous inodes; for a socket `getsockopt(SO_DOMAIN, SO_TYPE,
//! SO_ACCEPTCONN)`, `getsockname` and `getpeername`; for a memfd
//! `fcntl(F_GET_SEALS)`. A call that fails leaves its field empty (0, an
//! empty path, [`Addr::None`]): a description is never refused.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use fdholder::describe::{Addr, Description, Kind, Socket};
use rustix::fs::FileType;
use rustix::net::{SocketAddrAny, SocketAddrUnix};

/// Describes `fd`.
pub fn describe(fd: BorrowedFd<'_>) -> Description {
    let mut d = Description::default();
    if let Ok(st) = rustix::fs::fstat(fd) {
        (d.mode, d.dev, d.ino) = (st.st_mode, st.st_dev, st.st_ino);
        (d.size, d.rdev) = (st.st_size as u64, st.st_rdev);
    }
    d.flags = rustix::fs::fcntl_getfl(fd).map_or(0, |f| f.bits());
    let link = link(fd);
    let anon = link.strip_prefix(b"anon_inode:");
    let memfd = link
        .strip_prefix(b"/memfd:")
        .and_then(|n| n.strip_suffix(b" (deleted)"));
    let ft = FileType::from_raw_mode(d.mode);
    (d.kind, d.path) = match (ft, anon, memfd) {
        // An O_PATH descriptor is only a place: what it opens is not open.
        _ if d.flags & (libc::O_PATH as u32) != 0 => (Kind::Other, link),
        (_, Some(b"[eventfd]"), _) => (Kind::EventFd, Vec::new()),
        (_, Some(b"[timerfd]"), _) => (Kind::TimerFd, Vec::new()),
        (_, Some(b"[signalfd]"), _) => (Kind::SignalFd, Vec::new()),
        (_, Some(b"[pidfd]"), _) => (Kind::PidFd, Vec::new()),
        (_, Some(name), _) => (Kind::AnonInode, name.to_vec()),
        (FileType::Socket, ..) => (Kind::Socket, Vec::new()),
        (FileType::Fifo, ..) if link.starts_with(b"pipe:") => (Kind::Pipe, Vec::new()),
        (FileType::Fifo, ..) => (Kind::Fifo, link),
        (FileType::RegularFile, _, Some(name)) => (Kind::Memfd, name.to_vec()),
        (FileType::RegularFile, ..) => (Kind::File, link),
        (FileType::Directory, ..) => (Kind::Directory, link),
        (FileType::CharacterDevice, ..) => (Kind::CharDevice, link),
        (FileType::BlockDevice, ..) => (Kind::BlockDevice, link),
        _ if link.starts_with(b"pidfd:") => (Kind::PidFd, Vec::new()),
        _ => (Kind::Other, link),
    };
    match d.kind {
        Kind::Memfd => d.seals = rustix::fs::fcntl_get_seals(fd).map_or(0, |s| s.bits()),
        Kind::Socket => d.socket = Some(socket(fd)),
        _ => {}
    }
    if !matches!(d.kind, Kind::File | Kind::Memfd) {
        d.size = 0;
    }
    if !matches!(d.kind, Kind::CharDevice | Kind::BlockDevice) {
        d.rdev = 0;
    }
    d
}

/// The target of `/proc/self/fd/N` (empty if unreadable; cut at 4096
/// bytes, as the kernel's paths are).
fn link(fd: BorrowedFd<'_>) -> Vec<u8> {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut n = fd.as_raw_fd() as u32;
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    path[14..14 + digits.len() - i].copy_from_slice(&digits[i..]);
    let Ok(path) = std::ffi::CStr::from_bytes_until_nul(&path) else {
        return Vec::new();
    };
    let mut buf = [0u8; 4096];
    match rustix::fs::readlinkat_raw(rustix::fs::CWD, path, &mut buf[..]) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

fn socket(fd: BorrowedFd<'_>) -> Socket {
    use rustix::net::sockopt;
    Socket {
        family: sockopt::socket_domain(fd).map_or(0, |f| f.as_raw()),
        sotype: sockopt::socket_type(fd).map_or(0, |t| t.as_raw()),
        listening: sockopt::socket_acceptconn(fd).unwrap_or(false),
        local: rustix::net::getsockname(fd).map_or(Addr::None, addr),
        // Ok(None): connected to an unnamed peer (a socketpair end);
        // ENOTCONN: not connected.
        peer: match rustix::net::getpeername(fd) {
            Ok(Some(a)) => addr(a),
            Ok(None) => Addr::Unnamed,
            Err(_) => Addr::None,
        },
    }
}

fn addr(a: SocketAddrAny) -> Addr {
    if let Ok(inet) = SocketAddr::try_from(a.clone()) {
        return Addr::Inet(inet);
    }
    match SocketAddrUnix::try_from(a) {
        Ok(u) => {
            // An empty abstract name is what rustix makes of an unnamed
            // socket's address (no name can be bound empty).
            match (u.path_bytes(), u.abstract_name()) {
                (Some(p), _) => Addr::Path(p.to_vec()),
                (None, Some(n)) if !n.is_empty() => Addr::Abstract(n.to_vec()),
                _ => Addr::Unnamed,
            }
        }
        Err(_) => Addr::Other,
    }
}

/// The messages of a describe answer for `held` (limit, id, fd, in storage
/// order): the header, then chunks of entries of up to
/// [`fdholder::describe::CHUNK_BYTES`] (at least one entry each).
pub fn answer<'a>(
    held: impl ExactSizeIterator<Item = (fdholder::Tain, &'a [u8], BorrowedFd<'a>)>,
) -> Vec<Vec<u8>> {
    let total = held.len() as u32;
    let mut msgs = vec![Vec::new()];
    let mut chunk = Vec::new();
    for (limit, id, fd) in held {
        fdholder::describe::push_held(&mut chunk, limit, id, &describe(fd));
        if chunk.len() >= fdholder::describe::CHUNK_BYTES {
            msgs.push(std::mem::take(&mut chunk));
        }
    }
    if !chunk.is_empty() {
        msgs.push(chunk);
    }
    msgs[0] = fdholder::describe::header(msgs.len() as u32 - 1, total).to_vec();
    msgs
}
