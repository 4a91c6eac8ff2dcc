//! fdholder: the s6 fd-holding suite in Rust, wire-compatible with skalibs/s6.
//!
//! The modules read as the architecture, bottom up:
//!
//! - [`sys`]: the only `unsafe` code (POSIX regex, signalfd, credentials);
//! - [`tain`]: TAI64N time as it travels on the wire;
//! - [`wire`]: message framing with `SCM_RIGHTS` descriptors;
//! - [`proto`]: requests and answers of the fd-holder protocol;
//! - [`client`]: the client library ([`Client`]);
//! - [`rules`]: access rules (directory or cdb), by peer uid/gid;
//! - [`daemon`]: the core of `s6-fdholderd`;
//! - [`cli`]: what every command-line program shares (getopt, messages,
//!   exit codes).
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
//! // ... serve on `listener`, exit at any time: the next process gets the
//! // very same listening socket back, and no connection is refused meanwhile.
//! # drop(listener);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod daemon;
pub mod proto;
pub mod rules;
pub mod sys;
pub mod tain;
pub mod wire;

pub use client::{Client, Deadline, DumpEntry, DumpEntryRef};
pub use tain::Tain;
