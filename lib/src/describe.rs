//! What the daemon holds, described: the answer to a describe request
//! ([`Client::describe`](crate::Client::describe)), metadata only (the
//! descriptors never leave the daemon).
//!
//! For each held descriptor the daemon sends its id, its expiry and a
//! [`Description`]: what `fstat`, `fcntl(F_GETFL)`, the link
//! `/proc/self/fd/N` and, for a socket, `getsockopt(SO_DOMAIN, SO_TYPE,
//! SO_ACCEPTCONN)`, `getsockname` and `getpeername` say about it, and for a
//! memfd `fcntl(F_GET_SEALS)`. The binary encoding is defined here, once,
//! for the daemon (which encodes) and the clients (which parse); it is
//! described in `docs/protocol.md`.
//!
//! Only this suite's daemon knows the request: skarnet's `s6-fdholderd`
//! drops the connection on an opcode it does not know, which the clients
//! report as `EOPNOTSUPP`.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let mut c = fdholder::Client::connect("/run/fdholder/s", None)?;
//! for held in c.describe(None)? {
//!     if let Some(s) = &held.description.socket {
//!         println!("{:?} listening: {}", held.id, s.listening);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::proto;
use crate::tain::{self, Tain};

/// One held descriptor, described.
///
/// # Example
///
/// ```
/// use fdholder::describe::{Description, Held, Kind};
/// let h = Held {
///     id: b"tick".to_vec(),
///     limit: None,
///     description: Description { kind: Kind::TimerFd, ..Description::default() },
/// };
/// assert!(h.limit.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Identifier, 1 to 255 bytes, no NUL.
    pub id: Vec<u8>,
    /// Expiry date, `None` when the descriptor is held until deleted.
    pub limit: Option<Tain>,
    /// What the descriptor is.
    pub description: Description,
}

/// What a held descriptor is. Every field is there for every kind (0 or
/// empty when it does not apply or a call failed), so that one layout
/// serves all: which fields mean something for which [`Kind`] is said on
/// each.
///
/// # Example
///
/// ```
/// use fdholder::describe::{Description, End, Kind};
/// let d = Description {
///     kind: Kind::File,
///     flags: 0o2001, // O_WRONLY | O_APPEND
///     size: 12,
///     path: b"/var/log/app.log".to_vec(),
///     ..Description::default()
/// };
/// assert_eq!(d.end(), End::Write);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description {
    /// The kind.
    pub kind: Kind,
    /// `fstat`'s `st_mode` (file type and permission bits).
    pub mode: u32,
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino` (a pipe's inode is what `pipe:[N]` names).
    pub ino: u64,
    /// The open file's status flags, `fcntl(F_GETFL)`: `O_ACCMODE`,
    /// `O_APPEND`, `O_NONBLOCK`, ... (Linux values).
    pub flags: u32,
    /// `st_size`: for a file and a memfd.
    pub size: u64,
    /// `st_rdev`: for a device.
    pub rdev: u64,
    /// `fcntl(F_GET_SEALS)`, for a memfd: `F_SEAL_SEAL` 1, `_SHRINK` 2,
    /// `_GROW` 4, `_WRITE` 8, `_FUTURE_WRITE` 16, `_EXEC` 32.
    pub seals: u32,
    /// The path of a file, directory, FIFO, device (what
    /// `/proc/self/fd/N` links to; the kernel appends ` (deleted)` once it
    /// is unlinked), that link itself for [`Kind::Other`]; the name of a
    /// memfd, and of an anonymous inode (after `anon_inode:`); empty
    /// otherwise. Bytes, as the kernel gives them.
    pub path: Vec<u8>,
    /// A socket's particulars (`Some` exactly for [`Kind::Socket`]).
    pub socket: Option<Socket>,
}

impl Description {
    /// Which way the descriptor is open, from its access mode.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::describe::{Description, End, Kind};
    /// let d = Description { kind: Kind::Pipe, flags: 0, ..Description::default() };
    /// assert_eq!(d.end(), End::Read);
    /// ```
    pub fn end(&self) -> End {
        End::from_flags(self.flags)
    }
}

/// Which way a descriptor is open (its `O_ACCMODE`).
///
/// # Example
///
/// ```
/// use fdholder::describe::End;
/// assert_eq!(End::from_flags(0o1), End::Write);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `O_RDONLY`: a pipe's read end.
    Read,
    /// `O_WRONLY`: a pipe's write end.
    Write,
    /// `O_RDWR`.
    Both,
    /// `O_PATH` or another access mode: neither read nor write.
    Neither,
}

impl End {
    /// The access mode of `fcntl(F_GETFL)` flags.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::describe::End;
    /// assert_eq!(End::from_flags(0o2000), End::Read); // O_APPEND, O_RDONLY
    /// ```
    pub fn from_flags(flags: u32) -> End {
        const O_PATH: u32 = 0o10000000;
        match (flags & O_PATH, flags & 3) {
            (0, 0) => End::Read,
            (0, 1) => End::Write,
            (0, 2) => End::Both,
            _ => End::Neither,
        }
    }
}

/// The kinds of descriptor told apart. On the wire each is one byte, its
/// discriminant.
///
/// # Example
///
/// ```
/// use fdholder::describe::Kind;
/// assert_eq!(Kind::Memfd.name(), "memfd");
/// assert_eq!(Kind::from_byte(b'm'), Some(Kind::Memfd));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A socket ([`Description::socket`]).
    Socket = b's',
    /// A pipe (`pipe:[inode]`); its end is [`Description::end`].
    Pipe = b'p',
    /// A FIFO opened by its path.
    Fifo = b'f',
    /// A regular file.
    File = b'r',
    /// A directory.
    Directory = b'd',
    /// A memfd (`memfd_create`): name, size, seals.
    Memfd = b'm',
    /// An eventfd.
    EventFd = b'e',
    /// A timerfd.
    TimerFd = b't',
    /// A signalfd.
    SignalFd = b'g',
    /// A pidfd.
    PidFd = b'P',
    /// Another anonymous inode (`anon_inode:NAME`: `[eventpoll]`,
    /// `[io_uring]`, `inotify`...).
    AnonInode = b'a',
    /// A character device.
    CharDevice = b'c',
    /// A block device.
    BlockDevice = b'b',
    /// Anything else, and every descriptor opened with `O_PATH`:
    /// [`Description::path`] is what `/proc/self/fd/N` links to.
    #[default]
    Other = b'o',
}

impl Kind {
    /// The kind of a wire byte: `None` for a byte that names no kind.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(fdholder::describe::Kind::from_byte(b'?'), None);
    /// ```
    pub fn from_byte(b: u8) -> Option<Kind> {
        use Kind::*;
        [
            Socket,
            Pipe,
            Fifo,
            File,
            Directory,
            Memfd,
            EventFd,
            TimerFd,
            SignalFd,
            PidFd,
            AnonInode,
            CharDevice,
            BlockDevice,
            Other,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }

    /// The kind's name as `s6-fdholder-list -l` prints it.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(fdholder::describe::Kind::PidFd.name(), "pidfd");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Kind::Socket => "socket",
            Kind::Pipe => "pipe",
            Kind::Fifo => "fifo",
            Kind::File => "file",
            Kind::Directory => "directory",
            Kind::Memfd => "memfd",
            Kind::EventFd => "eventfd",
            Kind::TimerFd => "timerfd",
            Kind::SignalFd => "signalfd",
            Kind::PidFd => "pidfd",
            Kind::AnonInode => "anon_inode",
            Kind::CharDevice => "chardev",
            Kind::BlockDevice => "blockdev",
            Kind::Other => "other",
        }
    }
}

/// A socket's particulars.
///
/// # Example
///
/// ```
/// use fdholder::describe::{Addr, Socket};
/// let s = Socket { family: 1, sotype: 1, listening: true,
///                  local: Addr::Path(b"/run/web.sock".to_vec()), peer: Addr::None };
/// assert!(s.listening);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// `SO_DOMAIN` (`AF_UNIX` 1, `AF_INET` 2, `AF_INET6` 10, ...).
    pub family: u16,
    /// `SO_TYPE` (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_SEQPACKET` 5, ...).
    pub sotype: u32,
    /// `SO_ACCEPTCONN`: it listens.
    pub listening: bool,
    /// `getsockname`.
    pub local: Addr,
    /// `getpeername`: [`Addr::None`] when not connected.
    pub peer: Addr,
}

/// A socket address.
///
/// # Example
///
/// ```
/// use fdholder::describe::Addr;
/// let a = Addr::Inet("127.0.0.1:80".parse().unwrap());
/// assert_ne!(a, Addr::Unnamed);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// No address: the peer of an unconnected socket, or the call failed.
    None,
    /// An IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A Unix socket bound to a path.
    Path(Vec<u8>),
    /// A Unix socket in the abstract namespace (the name without its
    /// leading NUL).
    Abstract(Vec<u8>),
    /// An unbound Unix socket (or a `socketpair` end).
    Unnamed,
    /// An address of another family (not decoded).
    Other,
}

/// The most bytes of entries the daemon puts in one chunk of a describe
/// answer (a chunk holds at least one entry, whatever its size).
///
/// # Example
///
/// ```
/// use fdholder::describe::CHUNK_BYTES;
/// // A chunk fits in one message of the wire format.
/// assert!(CHUNK_BYTES < fdholder::wire::MAX_LEN);
/// ```
pub const CHUNK_BYTES: usize = 1 << 16;

// Address tags on the wire.
const A_NONE: u8 = 0;
const A_INET4: u8 = 4;
const A_INET6: u8 = 6;
const A_PATH: u8 = b'p';
const A_ABSTRACT: u8 = b'a';
const A_UNNAMED: u8 = b'u';
const A_OTHER: u8 = b'o';

fn push_bytes(b: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(u16::MAX as usize)];
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s);
}

fn push_addr(b: &mut Vec<u8>, a: &Addr) {
    match a {
        Addr::None => b.push(A_NONE),
        Addr::Inet(SocketAddr::V4(v4)) => {
            b.push(A_INET4);
            b.extend_from_slice(&v4.ip().octets());
            b.extend_from_slice(&v4.port().to_be_bytes());
        }
        Addr::Inet(SocketAddr::V6(v6)) => {
            b.push(A_INET6);
            b.extend_from_slice(&v6.ip().octets());
            b.extend_from_slice(&v6.port().to_be_bytes());
            b.extend_from_slice(&v6.flowinfo().to_be_bytes());
            b.extend_from_slice(&v6.scope_id().to_be_bytes());
        }
        Addr::Path(p) => {
            b.push(A_PATH);
            push_bytes(b, p);
        }
        Addr::Abstract(p) => {
            b.push(A_ABSTRACT);
            push_bytes(b, p);
        }
        Addr::Unnamed => b.push(A_UNNAMED),
        Addr::Other => b.push(A_OTHER),
    }
}

/// Appends one entry of a describe answer: the dump entry (limit, idlen,
/// id, NUL: [`proto::push_entry`]), then the description. Used by the
/// daemon.
///
/// # Example
///
/// ```
/// use fdholder::describe::{push_held, parse_chunk, Description, Kind};
/// let d = Description { kind: Kind::TimerFd, mode: 0o600, ino: 9, flags: 2, ..Description::default() };
/// let limit = fdholder::Tain::infinite_from(fdholder::Tain::now());
/// let mut b = Vec::new();
/// push_held(&mut b, limit, b"tick", &d);
/// let mut v = Vec::new();
/// parse_chunk(&b, fdholder::Tain::now(), &mut v).unwrap();
/// assert_eq!(v[0].description, d);
/// ```
pub fn push_held(b: &mut Vec<u8>, limit: Tain, id: &[u8], d: &Description) {
    proto::push_entry(b, limit, id);
    b.push(d.kind as u8);
    for n in [d.mode, d.flags, d.seals] {
        b.extend_from_slice(&n.to_be_bytes());
    }
    for n in [d.dev, d.ino, d.size, d.rdev] {
        b.extend_from_slice(&n.to_be_bytes());
    }
    push_bytes(b, &d.path);
    if let Some(s) = &d.socket {
        b.extend_from_slice(&s.family.to_be_bytes());
        b.extend_from_slice(&s.sotype.to_be_bytes());
        b.push(s.listening as u8);
        push_addr(b, &s.local);
        push_addr(b, &s.peer);
    }
}

/// A reader over an entry's bytes; `None` when they run out.
struct Cur<'a>(&'a [u8]);

impl Cur<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (h, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u16()? as usize;
        let s = self.0.get(..n)?.to_vec();
        self.0 = &self.0[n..];
        Some(s)
    }
    fn addr(&mut self) -> Option<Addr> {
        Some(match self.u8()? {
            A_NONE => Addr::None,
            A_INET4 => {
                let ip = Ipv4Addr::from(self.take::<4>()?);
                Addr::Inet(SocketAddrV4::new(ip, self.u16()?).into())
            }
            A_INET6 => {
                let ip = Ipv6Addr::from(self.take::<16>()?);
                let (port, flow, scope) = (self.u16()?, self.u32()?, self.u32()?);
                Addr::Inet(SocketAddrV6::new(ip, port, flow, scope).into())
            }
            A_PATH => Addr::Path(self.bytes()?),
            A_ABSTRACT => Addr::Abstract(self.bytes()?),
            A_UNNAMED => Addr::Unnamed,
            A_OTHER => Addr::Other,
            _ => return None,
        })
    }
    fn description(&mut self) -> Option<Description> {
        let kind = Kind::from_byte(self.u8()?)?;
        let (mode, flags, seals) = (self.u32()?, self.u32()?, self.u32()?);
        let (dev, ino, size, rdev) = (self.u64()?, self.u64()?, self.u64()?, self.u64()?);
        let path = self.bytes()?;
        let socket = match kind {
            Kind::Socket => Some(Socket {
                family: self.u16()?,
                sotype: self.u32()?,
                listening: self.u8()? != 0,
                local: self.addr()?,
                peer: self.addr()?,
            }),
            _ => None,
        };
        Some(Description {
            kind,
            mode,
            dev,
            ino,
            flags,
            size,
            rdev,
            seals,
            path,
            socket,
        })
    }
}

/// Parses one chunk of a describe answer (one or more entries, nothing
/// else), appending to `out`; limits that are "infinite" as of `now`
/// become `None`. `None` for a malformed or empty chunk.
///
/// # Errors
///
/// None is returned when the bytes are not a whole number of well-formed
/// entries (the clients report it as `EPROTO`).
///
/// # Example
///
/// ```
/// let mut v = Vec::new();
/// assert!(fdholder::describe::parse_chunk(b"", fdholder::Tain::now(), &mut v).is_none());
/// ```
pub fn parse_chunk(b: &[u8], now: Tain, out: &mut Vec<Held>) -> Option<()> {
    let mut c = Cur(b);
    if b.is_empty() {
        return None;
    }
    while !c.0.is_empty() {
        let limit = Tain::unpack(&c.take::<{ tain::PACK }>()?);
        let idlen = c.u8()? as usize;
        if idlen == 0 || c.0.len() < idlen + 1 || c.0[idlen] != 0 || c.0[..idlen].contains(&0) {
            return None;
        }
        let id = c.0[..idlen].to_vec();
        c.0 = &c.0[idlen + 1..];
        let description = c.description()?;
        out.push(Held {
            id,
            limit: limit.is_finite_from(now).then_some(limit),
            description,
        });
    }
    Some(())
}

/// The header of a describe answer: `0`, chunks u32 BE, total u32 BE.
/// Used by the daemon.
///
/// # Example
///
/// ```
/// assert_eq!(fdholder::describe::header(1, 2), [0, 0, 0, 0, 1, 0, 0, 0, 2]);
/// ```
pub fn header(chunks: u32, total: u32) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[1..5].copy_from_slice(&chunks.to_be_bytes());
    h[5..].copy_from_slice(&total.to_be_bytes());
    h
}

/// The error a describe request gets from a daemon that does not know it.
pub(crate) fn unsupported() -> std::io::Error {
    std::io::Error::from(rustix::io::Errno::OPNOTSUPP)
}

/// Maps the error of a describe request's first answer: the connection
/// closed without an answer (the daemon dropped the request it does not
/// know) is `EOPNOTSUPP`.
pub(crate) fn first_answer_error(e: std::io::Error) -> std::io::Error {
    let closed = [rustix::io::Errno::PIPE, rustix::io::Errno::CONNRESET];
    match e.raw_os_error() {
        Some(n) if closed.iter().any(|c| c.raw_os_error() == n) => unsupported(),
        _ => e,
    }
}

/// Adds one chunk (no fd) to `out`, which must stay within `total`.
pub(crate) fn take_chunk(
    out: &mut Vec<Held>,
    total: usize,
    payload: &[u8],
    nfds: usize,
    now: Tain,
) -> std::io::Result<()> {
    if nfds != 0 || parse_chunk(payload, now, out).is_none() || out.len() > total {
        return Err(proto::eproto());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind() {
        let sock = |local, peer| Socket {
            family: 2,
            sotype: 1,
            listening: true,
            local,
            peer,
        };
        let socks = [
            sock(Addr::Inet("1.2.3.4:5".parse().unwrap()), Addr::None),
            sock(Addr::Inet("[::1%3]:80".parse().unwrap()), Addr::Unnamed),
            sock(
                Addr::Path(b"/a b".to_vec()),
                Addr::Abstract(b"\0x".to_vec()),
            ),
            sock(Addr::Other, Addr::None),
        ];
        let mut descs: Vec<Description> = socks
            .into_iter()
            .map(|s| Description {
                kind: Kind::Socket,
                socket: Some(s),
                ..Description::default()
            })
            .collect();
        for b in 0..=255u8 {
            if let Some(kind) = Kind::from_byte(b).filter(|k| *k != Kind::Socket) {
                descs.push(Description {
                    kind,
                    mode: 0o644,
                    dev: 1,
                    ino: u64::from(b),
                    flags: 1,
                    size: 1 << 40,
                    rdev: 259,
                    seals: 15,
                    path: vec![b, b'/'],
                    socket: None,
                });
            }
        }
        assert_eq!(descs.len(), 4 + 13);
        let now = Tain::now();
        let mut b = Vec::new();
        let mut want = Vec::new();
        for (i, d) in descs.into_iter().enumerate() {
            let limit = now.add_secs(i as u64 + 1);
            push_held(&mut b, limit, format!("id{i}").as_bytes(), &d);
            want.push(Held {
                id: format!("id{i}").into_bytes(),
                limit: Some(limit),
                description: d,
            });
        }
        let mut got = Vec::new();
        parse_chunk(&b, now, &mut got).unwrap();
        assert_eq!(got, want);
        // Random corruption is refused or parsed, never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut c = b.clone();
            let i = (x as usize) % c.len();
            c[i] = (x >> 32) as u8;
            let cut = ((x >> 40) as usize) % (c.len() + 1);
            let _ = parse_chunk(&c[..cut], now, &mut Vec::new());
        }
        // Every truncation is refused, or parses fewer entries.
        for n in 0..b.len() {
            let mut v = Vec::new();
            let ok = parse_chunk(&b[..n], now, &mut v).is_some();
            assert!(!ok || v.len() < want.len(), "prefix {n} parsed whole");
        }
    }
}
