//! The fdholder suite: the s6 fd-holding programs in Rust, as one multicall
//! binary. Not a published API: the `fdholder` crate is the library for
//! other programs; this crate is what only the programs need.
//!
//! The modules read as the architecture, bottom up:
//!
//! - [`sys`]: the only `unsafe` code (POSIX regex, signalfd, credentials,
//!   `execve`, the C `main`);
//! - [`rules`]: access rules (directory or cdb), by peer uid/gid;
//! - [`daemon`]: the core of `s6-fdholderd`;
//! - [`describe`]: what a held descriptor is (the describe request);
//! - [`upgrade`]: the in-place upgrade (SIGUSR2): the state's format,
//!   the trial run and the exec;
//! - [`sandbox`]: what `s6-fdholderd` may do once started (seccomp,
//!   Landlock), and confining it;
//! - [`cli`]: what every program shares (arguments, getopt, messages, exit
//!   codes, exec);
//! - [`sd`]: systemd's protocols (held ids as systemd's fd names);
//! - [`progs`]: one file per program;
//! - [`multicall`]: runs the program that `argv[0]` names.
//!
//! Time, framing and the protocol come from the `fdholder` crate.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cli;
pub mod daemon;
pub mod describe;
pub mod multicall;
pub mod progs;
pub mod rules;
pub mod sandbox;
pub mod sd;
pub mod sys;
pub mod upgrade;
