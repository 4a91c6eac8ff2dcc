//! The fd-holder protocol: requests and answers carried in [`crate::wire`]
//! messages, encoded and parsed the same way by the client and the daemon.
//!
//! A request's first payload byte is its opcode. An id travels as
//! `idlen: u8`, the id bytes (1 to 255, no NUL), then a NUL. An answer whose
//! first byte is non-zero is an error: that byte is an errno value.
//!
//! The encoders ([`store`], [`delete`], [`retrieve`], [`setdump`],
//! [`list_answer`]) cannot fail: they trust their caller to have checked
//! the id ([`check_id`]). The parsers return `None` (or, for answers,
//! `EPROTO`, see [`eproto`]) for anything malformed; the daemon closes a
//! connection that sends such a request, a client gives up on such an
//! answer.
//!
//! # Example
//!
//! ```
//! use std::ffi::CStr;
//! use fdholder::proto::{self, Request};
//!
//! // What `Client::delete(b"web/listen")` sends, as the daemon reads it.
//! let id = b"web/listen";
//! proto::check_id(id)?;
//! let payload = proto::delete(id);
//! assert_eq!(payload, b"D\x0aweb/listen\0");
//! let want = CStr::from_bytes_with_nul(b"web/listen\0").unwrap();
//! assert_eq!(proto::parse_request(&payload, 0), Some(Request::Delete { id: want }));
//!
//! // The daemon's answer: 0 for success, else an errno.
//! assert!(proto::answer_error(&[0]).is_ok());
//! let e = proto::answer_error(&[2]).unwrap_err(); // ENOENT: nothing held
//! assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::CStr;
use std::io;

use crate::tain::{self, Tain};
use crate::wire::MAX_FDS;

/// Longest id, in bytes (the id's length travels in one byte).
///
/// # Example
///
/// ```
/// use fdholder::proto::{ID_MAX, check_id};
/// assert!(check_id(&[b'x'; ID_MAX]).is_ok());
/// assert!(check_id(&[b'x'; ID_MAX + 1]).is_err());
/// ```
pub const ID_MAX: usize = 255;

/// Opcode of a store request.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_STORE};
/// use fdholder::Tain;
/// assert_eq!(proto::store(b"web", Tain::now())[0], OP_STORE);
/// assert_eq!(OP_STORE, b'S');
/// ```
pub const OP_STORE: u8 = b'S';
/// Opcode of a store request whose fd the daemon drops when it hangs up
/// (ours only: the reference daemon, which does not know it, closes the
/// connection; not one of the reference's `SDRL?!.`).
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OnHangup, OP_STORE_DROPPING_ON_HANGUP};
/// use fdholder::Tain;
/// let b = proto::store_marked(b"web", Tain::now(), OnHangup::Drop);
/// assert_eq!(b[0], OP_STORE_DROPPING_ON_HANGUP);
/// assert_eq!(OP_STORE_DROPPING_ON_HANGUP, b'H');
/// ```
pub const OP_STORE_DROPPING_ON_HANGUP: u8 = b'H';
/// Opcode of a delete request.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_DELETE};
/// assert_eq!(proto::delete(b"web")[0], OP_DELETE);
/// assert_eq!(OP_DELETE, b'D');
/// ```
pub const OP_DELETE: u8 = b'D';
/// Opcode of a retrieve request.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_RETRIEVE};
/// assert_eq!(proto::retrieve(b"web", false)[0], OP_RETRIEVE);
/// assert_eq!(OP_RETRIEVE, b'R');
/// ```
pub const OP_RETRIEVE: u8 = b'R';
/// Opcode of a list request.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_LIST, Request};
/// // A list request is the opcode alone.
/// assert_eq!(proto::parse_request(&[OP_LIST], 0), Some(Request::List));
/// ```
pub const OP_LIST: u8 = b'L';
/// Opcode of a getdump request.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_GETDUMP, Request};
/// // A getdump request is the opcode alone.
/// assert_eq!(proto::parse_request(&[OP_GETDUMP], 0), Some(Request::GetDump));
/// ```
pub const OP_GETDUMP: u8 = b'?';
/// Opcode of a setdump request.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_SETDUMP};
/// assert_eq!(proto::setdump(3)[0], OP_SETDUMP);
/// assert_eq!(OP_SETDUMP, b'!');
/// ```
pub const OP_SETDUMP: u8 = b'!';
/// Opcode of a setdump data chunk.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_SETDUMP_CHUNK, Request};
/// use fdholder::Tain;
/// // The opcode, then one entry per descriptor sent with the message.
/// let mut chunk = vec![OP_SETDUMP_CHUNK];
/// proto::push_entry(&mut chunk, Tain::default(), b"a");
/// let Some(Request::SetDumpChunk { entries }) = proto::parse_request(&chunk, 1) else {
///     panic!("not a chunk");
/// };
/// assert_eq!(entries[0].1.to_bytes(), b"a");
/// ```
pub const OP_SETDUMP_CHUNK: u8 = b'.';
/// Opcode of a describe request (this suite's; no body, needs the list
/// right; the answer is in [`crate::describe`]). Upstream s6 (up to 2.15)
/// uses only `SDRL?!.` and drops a client sending another opcode.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OP_DESCRIBE, Request};
/// assert_eq!(OP_DESCRIBE, b'I');
/// assert_eq!(proto::parse_request(&[OP_DESCRIBE], 0), Some(Request::Describe));
/// ```
pub const OP_DESCRIBE: u8 = b'I';

/// Size of one dump entry with an id of `idlen` bytes: the packed limit,
/// the length byte, the id and its NUL.
///
/// # Example
///
/// ```
/// use fdholder::{proto, Tain};
/// let mut b = Vec::new();
/// proto::push_entry(&mut b, Tain::now(), b"web");
/// assert_eq!(b.len(), proto::entry_len(3));
/// assert_eq!(proto::entry_len(3), 12 + 2 + 3);
/// ```
pub const fn entry_len(idlen: usize) -> usize {
    tain::PACK + 2 + idlen
}

/// The longest request a well-formed client can send: a setdump chunk of
/// [`MAX_FDS`] entries with 255-byte ids. A daemon receives with this limit
/// ([`crate::wire::Receiver::new`]).
///
/// # Example
///
/// ```
/// use fdholder::proto::{MAX_REQUEST, entry_len, ID_MAX};
/// use fdholder::wire::{MAX_FDS, MAX_LEN};
/// assert_eq!(MAX_REQUEST, 1 + MAX_FDS * entry_len(ID_MAX));
/// assert!(MAX_REQUEST <= MAX_LEN);
/// ```
pub const MAX_REQUEST: usize = 1 + MAX_FDS * entry_len(ID_MAX);

/// What the daemon does with a held fd that hangs up (reports `POLLHUP`
/// or `POLLERR`): the mark a store gives it.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OnHangup, Request};
/// use fdholder::Tain;
/// let b = proto::store_marked(b"web", Tain { sec: 1, nano: 0 }, OnHangup::Drop);
/// match proto::parse_request(&b, 1) {
///     Some(Request::Store { on_hangup, .. }) => assert_eq!(on_hangup, OnHangup::Drop),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHangup {
    /// Keep it (a plain store, [`OP_STORE`]; every setdump entry).
    Keep,
    /// Close and forget it ([`OP_STORE_DROPPING_ON_HANGUP`]).
    Drop,
}

/// A parsed request. Ids are borrowed from the message, NUL-terminated.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, Request};
/// use fdholder::Tain;
///
/// let limit = Tain::now().add_secs(60);
/// let payload = proto::store(b"web", limit);
/// // A store comes with exactly one descriptor.
/// match proto::parse_request(&payload, 1) {
///     Some(Request::Store { limit: l, id, .. }) => {
///         assert_eq!((l, id.to_bytes()), (limit, &b"web"[..]));
///     }
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(proto::parse_request(&payload, 0), None);
/// ```
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Hold the message's fd under `id` until `limit`.
    Store {
        /// Expiry date.
        limit: Tain,
        /// Identifier.
        id: &'a CStr,
        /// Whether to drop it on hang-up: which opcode came.
        on_hangup: OnHangup,
    },
    /// Close and forget the fd held under `id`.
    Delete {
        /// Identifier.
        id: &'a CStr,
    },
    /// Send a copy of the fd held under `id`; also forget it if `delete`.
    Retrieve {
        /// Identifier.
        id: &'a CStr,
        /// Also delete it.
        delete: bool,
    },
    /// List the ids held.
    List,
    /// Describe every fd held ([`crate::describe`]).
    Describe,
    /// Send every fd held, with ids and limits.
    GetDump,
    /// Announce a dump of `total` fds, sent in chunks.
    SetDump {
        /// Number of fds to come.
        total: u32,
    },
    /// One chunk of a dump: an entry per fd that came with the message.
    SetDumpChunk {
        /// (limit, id) per fd, in order.
        entries: Vec<(Tain, &'a CStr)>,
    },
}

/// Checks an id as a client must before sending it: 1 to 255 bytes, no NUL.
/// Every [`Client`](crate::Client) request does, before sending anything.
///
/// # Errors
///
/// - `ENAMETOOLONG` for an id longer than [`ID_MAX`] (255) bytes;
/// - `EINVAL` for an empty id or one with a NUL byte.
///
/// # Example
///
/// ```
/// use fdholder::proto::check_id;
/// use std::io::ErrorKind;
///
/// assert!(check_id(b"web/listen").is_ok());
/// assert_eq!(check_id(b"").unwrap_err().kind(), ErrorKind::InvalidInput);
/// assert_eq!(check_id(b"a\0b").unwrap_err().kind(), ErrorKind::InvalidInput);
/// let long = [b'x'; 256];
/// assert_eq!(check_id(&long).unwrap_err().raw_os_error(), Some(36)); // ENAMETOOLONG
/// ```
pub fn check_id(id: &[u8]) -> io::Result<()> {
    if id.len() > ID_MAX {
        return Err(io::Error::from(rustix::io::Errno::NAMETOOLONG));
    }
    if id.is_empty() || id.contains(&0) {
        return Err(io::Error::from(rustix::io::Errno::INVAL));
    }
    Ok(())
}

fn push_id(buf: &mut Vec<u8>, id: &[u8]) {
    buf.push(id.len() as u8);
    buf.extend_from_slice(id);
    buf.push(0);
}

/// Reads an id at the start of `b`; returns it and what follows.
fn take_id(b: &[u8]) -> Option<(&CStr, &[u8])> {
    let (&idlen, rest) = b.split_first()?;
    let idlen = idlen as usize;
    if idlen == 0 || rest.len() < idlen + 1 {
        return None;
    }
    let id = CStr::from_bytes_with_nul(&rest[..=idlen]).ok()?;
    Some((id, &rest[idlen + 1..]))
}

fn take_tain(b: &[u8]) -> Option<(Tain, &[u8])> {
    let (t, rest) = b.split_first_chunk::<{ tain::PACK }>()?;
    Some((Tain::unpack(t), rest))
}

/// Appends one dump entry: limit, idlen, id, NUL. The caller has checked
/// `id` ([`check_id`]): a longer one would be encoded wrongly.
///
/// # Example
///
/// ```
/// use fdholder::{proto, Tain};
/// let mut b = Vec::new();
/// proto::push_entry(&mut b, Tain { sec: 1, nano: 2 }, b"ab");
/// assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 2, b'a', b'b', 0]);
/// ```
pub fn push_entry(buf: &mut Vec<u8>, limit: Tain, id: &[u8]) {
    buf.extend_from_slice(&limit.pack());
    push_id(buf, id);
}

/// Parses exactly `n` dump entries filling all of `b`.
///
/// `None` when `b` is not exactly `n` well-formed entries: too short, bytes
/// left over, an id of length 0, an id without its NUL or with a NUL
/// inside.
///
/// # Example
///
/// ```
/// use fdholder::{proto, Tain};
/// let mut b = Vec::new();
/// proto::push_entry(&mut b, Tain::default(), b"a");
/// proto::push_entry(&mut b, Tain::default(), b"bc");
/// let entries = proto::parse_entries(&b, 2).unwrap();
/// assert_eq!(entries[1].1.to_bytes(), b"bc");
/// assert_eq!(proto::parse_entries(&b, 1), None); // bytes left over
/// assert_eq!(proto::parse_entries(&b, 3), None); // too short
/// ```
pub fn parse_entries(mut b: &[u8], n: usize) -> Option<Vec<(Tain, &CStr)>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (limit, rest) = take_tain(b)?;
        let (id, rest) = take_id(rest)?;
        v.push((limit, id));
        b = rest;
    }
    b.is_empty().then_some(v)
}

/// Parses a request of `nfds` descriptors.
///
/// `None` is a protocol error: bad lengths, a missing NUL, an empty or
/// NUL-bearing id, the wrong number of fds (one for a store, one or more
/// for a setdump chunk, none otherwise), an unknown opcode or an empty
/// message.
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, Request};
///
/// let req = proto::retrieve(b"web", true);
/// match proto::parse_request(&req, 0) {
///     Some(Request::Retrieve { id, delete }) => assert_eq!((id.to_bytes(), delete), (&b"web"[..], true)),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(proto::parse_request(&req, 1), None); // a retrieve carries no fd
/// assert_eq!(proto::parse_request(b"X", 0), None); // unknown opcode
/// assert_eq!(proto::parse_request(b"", 0), None);
/// ```
pub fn parse_request(payload: &[u8], nfds: usize) -> Option<Request<'_>> {
    let (&op, body) = payload.split_first()?;
    let req = match op {
        OP_STORE | OP_STORE_DROPPING_ON_HANGUP => {
            let (limit, rest) = take_tain(body)?;
            let (id, rest) = take_id(rest)?;
            let on_hangup = match op {
                OP_STORE => OnHangup::Keep,
                _ => OnHangup::Drop,
            };
            (nfds == 1 && rest.is_empty()).then_some(Request::Store {
                limit,
                id,
                on_hangup,
            })?
        }
        OP_DELETE => {
            let (id, rest) = take_id(body)?;
            (nfds == 0 && rest.is_empty()).then_some(Request::Delete { id })?
        }
        OP_RETRIEVE => {
            let (&flag, rest) = body.split_first()?;
            let (id, rest) = take_id(rest)?;
            (nfds == 0 && rest.is_empty()).then_some(Request::Retrieve {
                id,
                delete: flag != 0,
            })?
        }
        OP_LIST => (nfds == 0 && body.is_empty()).then_some(Request::List)?,
        OP_GETDUMP => (nfds == 0 && body.is_empty()).then_some(Request::GetDump)?,
        OP_DESCRIBE => (nfds == 0 && body.is_empty()).then_some(Request::Describe)?,
        OP_SETDUMP => {
            let total = u32::from_be_bytes(*<&[u8; 4]>::try_from(body).ok()?);
            (nfds == 0).then_some(Request::SetDump { total })?
        }
        OP_SETDUMP_CHUNK => {
            if nfds == 0 {
                return None;
            }
            Request::SetDumpChunk {
                entries: parse_entries(body, nfds)?,
            }
        }
        _ => return None,
    };
    Some(req)
}

/// Encodes a store request (sent with the fd): opcode, limit, id. The
/// caller has checked `id` ([`check_id`]).
///
/// # Example
///
/// ```
/// use fdholder::{proto, Tain};
/// let b = proto::store(b"web", Tain { sec: 1, nano: 0 });
/// assert_eq!(b, [b'S', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0]);
/// ```
pub fn store(id: &[u8], limit: Tain) -> Vec<u8> {
    store_marked(id, limit, OnHangup::Keep)
}

/// Encodes a store request with the fd's mark: [`OnHangup::Keep`] is a
/// plain store, [`OnHangup::Drop`] the same payload under
/// [`OP_STORE_DROPPING_ON_HANGUP`].
///
/// # Example
///
/// ```
/// use fdholder::proto::{self, OnHangup};
/// use fdholder::Tain;
/// let t = Tain { sec: 1, nano: 0 };
/// let marked = proto::store_marked(b"web", t, OnHangup::Drop);
/// let plain = proto::store_marked(b"web", t, OnHangup::Keep);
/// assert_eq!(plain, proto::store(b"web", t));
/// assert_eq!((marked[0], &marked[1..]), (b'H', &plain[1..]));
/// ```
pub fn store_marked(id: &[u8], limit: Tain, on_hangup: OnHangup) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + tain::PACK + id.len() + 1);
    b.push(match on_hangup {
        OnHangup::Keep => OP_STORE,
        OnHangup::Drop => OP_STORE_DROPPING_ON_HANGUP,
    });
    push_entry(&mut b, limit, id);
    b
}

/// Encodes a delete request: opcode, id. The caller has checked `id`
/// ([`check_id`]).
///
/// # Example
///
/// ```
/// assert_eq!(fdholder::proto::delete(b"web"), b"D\x03web\0");
/// ```
pub fn delete(id: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(3 + id.len());
    b.push(OP_DELETE);
    push_id(&mut b, id);
    b
}

/// Encodes a retrieve request, with deletion if `delete`: opcode, a flag
/// byte, id. The caller has checked `id` ([`check_id`]).
///
/// # Example
///
/// ```
/// use fdholder::proto::retrieve;
/// assert_eq!(retrieve(b"web", false), b"R\0\x03web\0");
/// assert_eq!(retrieve(b"web", true), b"R\x01\x03web\0");
/// ```
pub fn retrieve(id: &[u8], delete: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + id.len());
    b.push(OP_RETRIEVE);
    b.push(delete as u8);
    push_id(&mut b, id);
    b
}

/// Encodes a setdump announcement of `total` fds: opcode, u32 BE.
///
/// # Example
///
/// ```
/// assert_eq!(fdholder::proto::setdump(300), [b'!', 0, 0, 1, 44]);
/// ```
pub fn setdump(total: u32) -> Vec<u8> {
    let mut b = vec![OP_SETDUMP];
    b.extend_from_slice(&total.to_be_bytes());
    b
}

/// Number of chunks needed for `n` fds, [`MAX_FDS`] (253) to a chunk.
///
/// # Example
///
/// ```
/// use fdholder::proto::chunks_for;
/// assert_eq!([chunks_for(0), chunks_for(1), chunks_for(253), chunks_for(254)], [0, 1, 1, 2]);
/// ```
pub fn chunks_for(n: usize) -> usize {
    n.div_ceil(MAX_FDS)
}

/// The error an answer's first byte carries, if any; else the rest of the
/// answer.
///
/// # Errors
///
/// - the errno the daemon answered (the first byte, when not 0): `EPERM`
///   (its rules refuse), `ENOENT` (nothing held under the id), `EBUSY`
///   (the id is held already), `ENFILE` (it is full), `EAGAIN` (a setdump
///   chunk while more are expected: not a failure there), ...;
/// - `EPROTO` for an empty answer.
///
/// # Example
///
/// ```
/// use fdholder::proto::answer_error;
/// assert_eq!(answer_error(&[0, 1, 2]).unwrap(), [1, 2]);
/// let e = answer_error(&[1]).unwrap_err(); // EPERM
/// assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
/// assert_eq!(answer_error(&[]).unwrap_err().raw_os_error(), Some(71)); // EPROTO
/// ```
pub fn answer_error(answer: &[u8]) -> io::Result<&[u8]> {
    match answer.split_first() {
        None => Err(eproto()),
        Some((0, rest)) => Ok(rest),
        Some((&e, _)) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// The error for a malformed exchange: `EPROTO`, what the clients return
/// for an answer that does not parse or does not fit the request.
///
/// # Example
///
/// ```
/// let e = fdholder::proto::eproto();
/// assert_eq!(e.raw_os_error(), Some(71)); // EPROTO on Linux
/// ```
pub fn eproto() -> io::Error {
    io::Error::from(rustix::io::Errno::PROTO)
}

/// Reads a u32 BE that must be the whole of `b`.
///
/// `None` unless `b` is exactly 4 bytes long.
///
/// # Example
///
/// ```
/// use fdholder::proto::be32;
/// assert_eq!(be32(&[0, 0, 1, 44]), Some(300));
/// assert_eq!(be32(&[0, 1, 44]), None);
/// ```
pub fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(*<&[u8; 4]>::try_from(b).ok()?))
}

/// Encodes a list answer: 0, count u32 BE, ids NUL-terminated.
///
/// # Example
///
/// ```
/// use fdholder::proto::list_answer;
/// let ids: [&[u8]; 2] = [b"a", b"bc"];
/// assert_eq!(list_answer(ids.into_iter()), [0, 0, 0, 0, 2, b'a', 0, b'b', b'c', 0]);
/// ```
pub fn list_answer<'a>(ids: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        b.extend_from_slice(id);
        b.push(0);
    }
    b
}

/// Parses the body of a list answer (after the 0 byte, see
/// [`answer_error`]).
///
/// `None` when the body is not a count and exactly that many ids: shorter
/// than 4 bytes, fewer ids than counted, bytes left over, an empty id or
/// one longer than [`ID_MAX`].
///
/// # Example
///
/// ```
/// use fdholder::proto::{answer_error, list_answer, parse_list};
/// let ids: [&[u8]; 2] = [b"a", b"bc"];
/// let answer = list_answer(ids.into_iter());
/// let body = answer_error(&answer)?;
/// assert_eq!(parse_list(body), Some(vec![b"a".to_vec(), b"bc".to_vec()]));
/// assert_eq!(parse_list(&body[..body.len() - 1]), None);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn parse_list(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (n, mut rest) = body.split_first_chunk::<4>()?;
    let n = u32::from_be_bytes(*n) as usize;
    let mut ids = Vec::with_capacity(n.min(rest.len()));
    for _ in 0..n {
        let end = rest.iter().position(|&c| c == 0)?;
        if end == 0 || end > ID_MAX {
            return None;
        }
        ids.push(rest[..end].to_vec());
        rest = &rest[end + 1..];
    }
    rest.is_empty().then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &[u8]) -> Vec<u8> {
        let mut v = s.to_vec();
        v.push(0);
        v
    }

    #[test]
    fn round_trips() {
        let t = Tain {
            sec: 1 << 62,
            nano: 5,
        };
        let b = store(b"foo", t);
        assert_eq!(b.len(), 1 + 12 + 1 + 3 + 1);
        let idc = id(b"foo");
        let foo = CStr::from_bytes_with_nul(&idc).unwrap();
        assert_eq!(
            parse_request(&b, 1),
            Some(Request::Store {
                limit: t,
                id: foo,
                on_hangup: OnHangup::Keep
            })
        );
        assert_eq!(parse_request(&b, 0), None);
        assert_eq!(parse_request(&b, 2), None);
        let h = store_marked(b"foo", t, OnHangup::Drop);
        assert_eq!(h[0], OP_STORE_DROPPING_ON_HANGUP);
        assert_eq!(h[1..], b[1..]);
        assert_eq!(
            parse_request(&h, 1),
            Some(Request::Store {
                limit: t,
                id: foo,
                on_hangup: OnHangup::Drop
            })
        );
        assert_eq!(parse_request(&h, 0), None);
        assert_eq!(parse_request(&h[..h.len() - 1], 1), None);
        assert_eq!(
            parse_request(&delete(b"foo"), 0),
            Some(Request::Delete { id: foo })
        );
        assert_eq!(parse_request(&delete(b"foo"), 1), None);
        assert_eq!(
            parse_request(&retrieve(b"foo", true), 0),
            Some(Request::Retrieve {
                id: foo,
                delete: true
            })
        );
        assert_eq!(
            parse_request(&retrieve(b"foo", false), 0),
            Some(Request::Retrieve {
                id: foo,
                delete: false
            })
        );
        assert_eq!(parse_request(b"L", 0), Some(Request::List));
        assert_eq!(parse_request(b"?", 0), Some(Request::GetDump));
        assert_eq!(parse_request(b"I", 0), Some(Request::Describe));
        assert_eq!(parse_request(b"Ix", 0), None);
        assert_eq!(parse_request(b"I", 1), None);
        assert_eq!(
            parse_request(&setdump(300), 0),
            Some(Request::SetDump { total: 300 })
        );
        let mut chunk = vec![OP_SETDUMP_CHUNK];
        push_entry(&mut chunk, t, b"foo");
        push_entry(&mut chunk, t, b"bar");
        match parse_request(&chunk, 2) {
            Some(Request::SetDumpChunk { entries }) => assert_eq!(entries.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_request(&chunk, 1), None);
        assert_eq!(parse_request(&chunk, 3), None);
    }

    #[test]
    fn malformed_requests() {
        let good = store(b"foo", Tain::default());
        // One byte too short and one too long.
        assert_eq!(parse_request(&good[..good.len() - 1], 1), None);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_request(&long, 1), None);
        // idlen 0; id without its NUL; NUL inside the id.
        assert_eq!(parse_request(&[OP_DELETE, 0, 0], 0), None);
        assert_eq!(parse_request(&[OP_DELETE, 1, b'a', b'b'], 0), None);
        assert_eq!(parse_request(&[OP_DELETE, 2, b'a', 0, 0], 0), None);
        assert_eq!(parse_request(b"", 0), None);
        assert_eq!(parse_request(b"X", 0), None);
        assert_eq!(parse_request(b"L ", 0), None);
        assert_eq!(parse_request(b"L", 1), None);
        assert_eq!(parse_request(b"!abc", 0), None);
        assert_eq!(parse_request(b".", 0), None);
    }

    #[test]
    fn ids_checked_client_side() {
        assert!(check_id(b"a").is_ok());
        assert!(check_id(&[b'x'; 255]).is_ok());
        assert_eq!(
            check_id(&[b'x'; 256]).unwrap_err().raw_os_error(),
            Some(rustix::io::Errno::NAMETOOLONG.raw_os_error())
        );
        assert_eq!(
            check_id(b"").unwrap_err().raw_os_error(),
            Some(rustix::io::Errno::INVAL.raw_os_error())
        );
        assert_eq!(
            check_id(b"a\0b").unwrap_err().raw_os_error(),
            Some(rustix::io::Errno::INVAL.raw_os_error())
        );
    }

    #[test]
    fn list_round_trip() {
        let ids: Vec<&[u8]> = vec![b"a", b"bc\t"];
        let ans = list_answer(ids.iter().copied());
        let body = answer_error(&ans).unwrap();
        assert_eq!(
            parse_list(body).unwrap(),
            vec![b"a".to_vec(), b"bc\t".to_vec()]
        );
        assert_eq!(parse_list(&body[..body.len() - 1]), None);
        assert_eq!(
            answer_error(&[rustix::io::Errno::PERM.raw_os_error() as u8])
                .unwrap_err()
                .raw_os_error(),
            Some(rustix::io::Errno::PERM.raw_os_error())
        );
    }
}
