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

use fdholder::describe::{Addr, Description, End, Kind, Socket};
use rustix::fs::FileType;
use rustix::net::{SocketAddrAny, SocketAddrUnix};

/// Describes `fd`.
pub fn describe(fd: BorrowedFd<'_>) -> Description {
    let (mode, dev, ino, size, rdev) = match rustix::fs::fstat(fd) {
        Ok(st) => (
            st.st_mode,
            st.st_dev,
            st.st_ino,
            st.st_size as u64,
            st.st_rdev,
        ),
        Err(_) => (0, 0, 0, 0, 0),
    };
    let flags = rustix::fs::fcntl_getfl(fd).map_or(0, |f| f.bits());
    let link = rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new())
        .map(|c| c.into_bytes())
        .unwrap_or_default();
    let kind = match FileType::from_raw_mode(mode) {
        // An O_PATH descriptor is only a place: what it opens is not open.
        _ if flags & (libc::O_PATH as u32) != 0 => Kind::Other { path: link },
        _ if link.starts_with(b"anon_inode:") => anon(&link[b"anon_inode:".len()..]),
        FileType::Socket => Kind::Socket(socket(fd)),
        FileType::Fifo if link.starts_with(b"pipe:") => Kind::Pipe {
            end: End::from_flags(flags),
        },
        FileType::Fifo => Kind::Fifo {
            path: link,
            end: End::from_flags(flags),
        },
        FileType::RegularFile => match memfd_name(&link) {
            Some(name) => Kind::Memfd {
                name: name.to_vec(),
                size,
                seals: rustix::fs::fcntl_get_seals(fd).map_or(0, |s| s.bits()),
            },
            None => Kind::File { path: link, size },
        },
        FileType::Directory => Kind::Directory { path: link },
        FileType::CharacterDevice | FileType::BlockDevice => Kind::Device {
            rdev,
            block: FileType::from_raw_mode(mode) == FileType::BlockDevice,
            path: link,
        },
        _ if link.starts_with(b"pidfd:") => Kind::PidFd,
        _ => Kind::Other { path: link },
    };
    Description {
        kind,
        mode,
        dev,
        ino,
        flags,
    }
}

/// An anonymous inode by the name after `anon_inode:`.
fn anon(name: &[u8]) -> Kind {
    match name {
        b"[eventfd]" => Kind::EventFd,
        b"[timerfd]" => Kind::TimerFd,
        b"[signalfd]" => Kind::SignalFd,
        b"[pidfd]" => Kind::PidFd,
        _ => Kind::AnonInode {
            name: name.to_vec(),
        },
    }
}

/// The name of a memfd from its link, `/memfd:NAME (deleted)`.
fn memfd_name(link: &[u8]) -> Option<&[u8]> {
    link.strip_prefix(b"/memfd:")?.strip_suffix(b" (deleted)")
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
