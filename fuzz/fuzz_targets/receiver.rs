//! libFuzzer target: `wire::Receiver` fed arbitrary chunks (with fds)
//! through a socketpair. Same checks as tests/fuzz_short.rs; also checks
//! that no fd leaks across inputs.
#![no_main]

#[path = "../../suite/tests/fuzzlib/mod.rs"]
mod fuzzlib;

use std::sync::OnceLock;

static FILE: OnceLock<std::fs::File> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let file = FILE.get_or_init(|| std::fs::File::open("/dev/null").unwrap());
    let before = fuzzlib::open_fds();
    fuzzlib::receiver_from_bytes(data, file);
    // libFuzzer's own threads open files now and then (the RSS monitor
    // reads /proc): a leak is what stays.
    let mut after = fuzzlib::open_fds();
    for _ in 0..20 {
        if after <= before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        after = fuzzlib::open_fds();
    }
    assert!(after <= before, "fd leak: {before} before, {after} after");
});
