//! libFuzzer target `daemon_session`: the checks are in suite/tests/fuzzstate/
//! (shared with the stable seeded run, suite/tests/fuzz_state.rs).
#![no_main]

#[path = "../../suite/tests/fuzzstate/mod.rs"]
mod fuzzstate;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzstate::daemon::session_from_bytes(data);
});
