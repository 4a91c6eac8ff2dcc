//! `fdholder`: talk to an fd-holding daemon, `s6-fdholderd` (skarnet's s6
//! or the `fdholder` suite's), to keep listening sockets, pipes and memfds
//! alive while the services that own them restart.
//!
//! The modules, bottom up:
//!
//! - [`tain`]: TAI64N time as it travels on the wire;
//! - [`wire`]: message framing with `SCM_RIGHTS` descriptors;
//! - [`proto`]: requests and answers of the fd-holder protocol;
//! - [`client`]: the client ([`Client`]);
//! - [`restart`]: zero-downtime restart helpers ([`restart::Holder`]):
//!   a listener or a memfd from the holder, else created and stored;
//! - [`launch`]: descriptors passed by the launcher (systemd's
//!   `LISTEN_FDS`, `s6-fdholder-getdump`'s `S6_FD_i`);
//! - `asynchronous` (cargo feature `tokio`): an async client for tokio
//!   (`AsyncClient`), every request of [`Client`].
//!
//! The daemon, its rules and the command-line programs are in the
//! `fdholder-suite` crate, which uses this one for everything it says on the
//! wire: the protocol is written once.
//!
//! # A zero-downtime restart
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use std::os::unix::net::UnixListener;
//! use fdholder::Client;
//!
//! # fn main() -> std::io::Result<()> {
//! let mut holder = Client::connect("/run/fdholder/s", None)?;
//! // First run: bind, then hand a copy to the holder before serving.
//! let listener = match holder.retrieve(b"myservice/listen", None) {
//!     Ok(fd) => UnixListener::from(fd),
//!     Err(_) => {
//!         let l = UnixListener::bind("/run/myservice.sock")?;
//!         holder.store(l.as_fd(), b"myservice/listen", None, None)?;
//!         l
//!     }
//! };
//! // Do not keep the holder's connection for the life of the service: it
//! // takes one of the daemon's connection slots.
//! drop(holder);
//! // ... serve on `listener`, exit at any time: the next process gets the
//! // very same listening socket back, and no connection is refused meanwhile.
//! # drop(listener);
//! # Ok(())
//! # }
//! ```
//!
//! [`restart::Holder`] does all of that in one call, races between two
//! instances starting at once and stale Unix socket files included, with a
//! typed error ([`restart::Error`]); with [`restart::Holder::inherit`] it
//! takes what systemd or `s6-fdholder-getdump` passed first ([`launch`]):
//!
//! ```no_run
//! # fn main() -> Result<(), fdholder::restart::Error> {
//! let holder = fdholder::restart::Holder::new("/run/fdholder/s").inherit();
//! let (listener, _origin) = holder.unix_listener(b"myservice/listen", "/run/myservice.sock")?;
//! # drop(listener);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "tokio")]
pub mod asynchronous;
pub mod client;
pub mod launch;
pub mod proto;
pub mod restart;
pub mod tain;
pub mod wire;

pub use client::{Client, Deadline, DumpEntry, DumpEntryRef};
pub use tain::Tain;

// The READMEs' Rust snippets are compiled (and, where they can run, run) as
// doctests, so that what a reader pastes works.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct LibReadme;
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct RootReadme;
