//! libFuzzer target: `wire::Receiver` fed arbitrary chunks (with fds)
//! through a socketpair. Same checks as tests/fuzz_short.rs; also checks
//! that no fd leaks across inputs.
#![no_main]

#[path = "../../tests/fuzzlib/mod.rs"]
mod fuzzlib;

use std::sync::OnceLock;

static FILE: OnceLock<std::fs::File> = OnceLock::new();
static BASE: OnceLock<usize> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let file = FILE.get_or_init(|| std::fs::File::open("/dev/null").unwrap());
    let base = *BASE.get_or_init(fuzzlib::open_fds);
    fuzzlib::receiver_from_bytes(data, file);
    assert_eq!(fuzzlib::open_fds(), base, "fd leak");
});
