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
//! - [`describe`]: what the daemon holds, described (metadata only);
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
//! # A zero-downtime restart in 20 lines
//!
//! A service that takes its listening socket through [`restart::Holder`]
//! can be stopped and started again at any time: the holder keeps the
//! socket open meanwhile, clients queue in its backlog, and the next
//! process serves them on the very same socket.
//!
//! ```no_run
//! use std::io::Write;
//! use std::time::{Duration, Instant};
//! use fdholder::restart::{Holder, Origin};
//!
//! fn main() -> std::io::Result<()> {
//!     // Launched by systemd or s6-fdholder-getdump: take what it passed.
//!     let holder = Holder::new("/run/fdholder/s")
//!         .deadline(Instant::now() + Duration::from_secs(5))
//!         .inherit();
//!     // One short exchange: connect, retrieve (or bind and store), disconnect.
//!     let (listener, origin) = holder.unix_listener(b"myservice/listen", "/run/myservice.sock")?;
//!     if origin == Origin::Created {
//!         eprintln!("first start: bound /run/myservice.sock, a copy is held");
//!     }
//!     // No remove_file("/run/myservice.sock") here, nor at exit.
//!     for conn in listener.incoming() {
//!         conn?.write_all(b"hello\n")?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! What it avoids:
//!
//! - **No connection to the holder stays open.** Each helper connects,
//!   makes its one or two requests and disconnects before returning (so does
//!   the async twin, `unix_listener_async`, with the feature `tokio`). A
//!   connection kept for the life of the service takes one of the daemon's
//!   connection slots (`-c`) for nothing.
//! - **The socket path is never unlinked while the holder serves it.** Do not
//!   `remove_file` the path before binding or at exit, as services usually
//!   do: the held socket is bound to that path, and once it is unlinked new
//!   clients get `ENOENT` (or reach another socket) although the holder
//!   still holds the listener. The helper follows [its
//!   rule](restart#the-unix-socket-path-rule): a held socket's path is not
//!   touched; only when the holder holds nothing is a socket file at the
//!   path removed, and only if a connect to it is refused (nobody listens).
//! - **The rules give both rights on the id.** The first start stores
//!   (`S6_FDHOLDER_STORE_REGEX` must match the id), every later one
//!   retrieves (`S6_FDHOLDER_RETRIEVE_REGEX` must match it): with only one
//!   of them the helper fails with [`restart::Error::Refused`]. For a
//!   service running as uid 1000 and a holder started with `-i rules`:
//!
//!   ```text
//!   rules/uid/1000/allow                            (empty)
//!   rules/uid/1000/env/S6_FDHOLDER_STORE_REGEX      ^myservice/
//!   rules/uid/1000/env/S6_FDHOLDER_RETRIEVE_REGEX   ^myservice/
//!   ```
//!
//! A listener stored once stays held until deleted (or until the expiry
//! given with [`restart::Holder::expiry`]): to move the service to another
//! path, delete the id (`s6-fdholder-delete /run/fdholder/s
//! myservice/listen`). [`restart::Holder::tcp_listener`],
//! [`restart::Holder::udp_socket`] and [`restart::Holder::memfd`] (state
//! kept across restarts) work the same way; [`Client`] makes the requests
//! one by one.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Every public function returning a `Result` says when it fails, and every
// one that can panic says when (`cargo clippy -- -D warnings` enforces it);
// lib/tests/doc_coverage.rs checks that every public item has an example.
#![warn(clippy::missing_errors_doc, clippy::missing_panics_doc)]

#[cfg(feature = "tokio")]
pub mod asynchronous;
pub mod client;
pub mod describe;
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
