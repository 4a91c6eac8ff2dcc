//! Drop on hang-up (issue 13): a store marked with
//! `Client::store_dropping_on_hangup` (request `H`, `s6-fdholder-store -H`)
//! is closed and forgotten by our daemon when the held fd reports POLLHUP
//! or POLLERR; unmarked fds, listening sockets and regular files are never
//! polled. Against the reference daemon, which does not know the request,
//! the client reports EOPNOTSUPP and `s6-fdholder-store -H` a clear message.
//!
//! No sleep is an assertion: a drop is waited for by polling `list` with a
//! deadline; "kept" is checked after a drop of another marked fd stored
//! later (the daemon handles hang-ups in one loop, so by the time the later
//! one is gone, the earlier one's state has been seen).

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Daemon, Impl, have_reference};

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

fn errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

#[test]
fn reference_daemon_refuses_a_marked_store_with_eopnotsupp() {
    if !have_reference() {
        return;
    }
    let d = Daemon::start(Impl::Reference);
    let (a, _b) = UnixStream::pair().unwrap();
    let mut c = d.client();
    let e = c
        .store_dropping_on_hangup(a.as_fd(), b"marked", None, deadline())
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::EOPNOTSUPP), "{e}");
    // The connection is gone: the next request on it fails.
    assert!(c.list(deadline()).is_err());
    // The daemon serves other clients as before, and holds nothing.
    let mut c = d.client();
    assert_eq!(c.list(deadline()).unwrap(), Vec::<Vec<u8>>::new());
    c.store(a.as_fd(), b"plain", None, deadline()).unwrap();
    assert_eq!(c.list(deadline()).unwrap(), [b"plain".to_vec()]);
}
