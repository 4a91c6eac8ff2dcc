//! The fd-holder protocol: requests and answers carried in [`crate::wire`]
//! messages, encoded and parsed the same way by the client and the daemon.
//!
//! A request's first payload byte is its opcode. An id travels as
//! `idlen: u8`, the id bytes (1 to 255, no NUL), then a NUL. An answer whose
//! first byte is non-zero is an error: that byte is an errno value.

use std::ffi::CStr;
use std::io;

use crate::tain::{self, Tain};
use crate::wire::MAX_FDS;

/// Longest id, in bytes.
pub const ID_MAX: usize = 255;

/// Opcode of a store request.
pub const OP_STORE: u8 = b'S';
/// Opcode of a delete request.
pub const OP_DELETE: u8 = b'D';
/// Opcode of a retrieve request.
pub const OP_RETRIEVE: u8 = b'R';
/// Opcode of a list request.
pub const OP_LIST: u8 = b'L';
/// Opcode of a getdump request.
pub const OP_GETDUMP: u8 = b'?';
/// Opcode of a setdump request.
pub const OP_SETDUMP: u8 = b'!';
/// Opcode of a setdump data chunk.
pub const OP_SETDUMP_CHUNK: u8 = b'.';
/// Opcode of a describe request (this suite's; no body, needs the list
/// right; the answer is in [`crate::describe`]). Upstream s6 (up to 2.15)
/// uses only `SDRL?!.` and drops a client sending another opcode.
pub const OP_DESCRIBE: u8 = b'I';

/// Size of one dump entry with an id of `idlen` bytes.
pub const fn entry_len(idlen: usize) -> usize {
    tain::PACK + 2 + idlen
}

/// The longest request a well-formed client can send: a setdump chunk of
/// [`MAX_FDS`] entries with 255-byte ids.
pub const MAX_REQUEST: usize = 1 + MAX_FDS * entry_len(ID_MAX);

/// A parsed request. Ids are borrowed from the message, NUL-terminated.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Hold the message's fd under `id` until `limit`.
    Store {
        /// Expiry date.
        limit: Tain,
        /// Identifier.
        id: &'a CStr,
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

/// Appends one dump entry: limit, idlen, id, NUL.
pub fn push_entry(buf: &mut Vec<u8>, limit: Tain, id: &[u8]) {
    buf.extend_from_slice(&limit.pack());
    push_id(buf, id);
}

/// Parses exactly `n` dump entries filling all of `b`.
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

/// Parses a request of `nfds` descriptors. `None` is a protocol error: bad
/// lengths, a missing NUL, an empty or NUL-bearing id, the wrong number of
/// fds, an unknown opcode or an empty message.
pub fn parse_request(payload: &[u8], nfds: usize) -> Option<Request<'_>> {
    let (&op, body) = payload.split_first()?;
    let req = match op {
        OP_STORE => {
            let (limit, rest) = take_tain(body)?;
            let (id, rest) = take_id(rest)?;
            (nfds == 1 && rest.is_empty()).then_some(Request::Store { limit, id })?
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

/// Encodes a store request (sent with the fd).
pub fn store(id: &[u8], limit: Tain) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + tain::PACK + id.len() + 1);
    b.push(OP_STORE);
    push_entry(&mut b, limit, id);
    b
}

/// Encodes a delete request.
pub fn delete(id: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(3 + id.len());
    b.push(OP_DELETE);
    push_id(&mut b, id);
    b
}

/// Encodes a retrieve request, with deletion if `delete`.
pub fn retrieve(id: &[u8], delete: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + id.len());
    b.push(OP_RETRIEVE);
    b.push(delete as u8);
    push_id(&mut b, id);
    b
}

/// Encodes a setdump announcement of `total` fds.
pub fn setdump(total: u32) -> Vec<u8> {
    let mut b = vec![OP_SETDUMP];
    b.extend_from_slice(&total.to_be_bytes());
    b
}

/// Number of chunks needed for `n` fds.
pub fn chunks_for(n: usize) -> usize {
    n.div_ceil(MAX_FDS)
}

/// The error an answer's first byte carries, if any.
pub fn answer_error(answer: &[u8]) -> io::Result<&[u8]> {
    match answer.split_first() {
        None => Err(eproto()),
        Some((0, rest)) => Ok(rest),
        Some((&e, _)) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// The error for a malformed exchange.
pub fn eproto() -> io::Error {
    io::Error::from(rustix::io::Errno::PROTO)
}

/// Reads a u32 BE that must be the whole of `b`.
pub fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(*<&[u8; 4]>::try_from(b).ok()?))
}

/// Encodes a list answer: 0, count u32 BE, ids NUL-terminated.
pub fn list_answer<'a>(ids: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        b.extend_from_slice(id);
        b.push(0);
    }
    b
}

/// Parses the body of a list answer (after the 0 byte).
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
            Some(Request::Store { limit: t, id: foo })
        );
        assert_eq!(parse_request(&b, 0), None);
        assert_eq!(parse_request(&b, 2), None);
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
