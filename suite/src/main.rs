//! `fdholder`: every program of the suite in one binary. See
//! `docs/fdholder.md`.

#![no_main]

fdholder_suite::c_main!(fdholder_suite::multicall::main);
