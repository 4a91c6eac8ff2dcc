//! libFuzzer target: `proto::parse_request` on arbitrary bytes (first byte:
//! fd count). Same checks as tests/fuzz_short.rs.
#![no_main]

#[path = "../../suite/tests/fuzzlib/mod.rs"]
mod fuzzlib;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzlib::parse_from_bytes(data);
});
