//! A short, seeded run on stable, inside `cargo test`, of the stateful
//! fuzz targets in fuzz/ (`daemon_session`, `rules_readers`,
//! `client_answers`): the same decoding and checks (tests/fuzzstate/), fed
//! random bytes and random mutations of seed inputs instead of
//! libFuzzer's. See each module for what it checks.
//!
//! `FDHOLDER_SEED` sets the seed; `FDHOLDER_FUZZ_SCALE` multiplies the
//! number of inputs (default 1) for a long run.

mod fuzzstate;
mod rng;

use rng::Rng;

fn seed() -> u64 {
    std::env::var("FDHOLDER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x57a7e)
}

fn scale() -> usize {
    std::env::var("FDHOLDER_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// The tests count this process's fds: they must not overlap.
static FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Random inputs: mostly random bytes, some with a byte value range that
/// the decoders read as small choices.
fn input(r: &mut Rng, max: usize) -> Vec<u8> {
    let n = r.below(max);
    match r.below(3) {
        0 => r.bytes(n),
        1 => (0..n).map(|_| r.below(12) as u8).collect(),
        _ => (0..n).map(|_| r.below(40) as u8).collect(),
    }
}

/// Runs `n` inputs through `f`; the caller holds [`FDS`].
fn run(name: &str, n: usize, max: usize, salt: u64, f: impl Fn(&[u8])) {
    let mut r = Rng(seed() ^ salt);
    for i in 0..n * scale() {
        let d = input(&mut r, max);
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&d))).is_err() {
            panic!("{name}: seed {} input {i} failed: {d:?}", seed());
        }
    }
}

#[test]
fn client_answers() {
    // Held through the cleanup too: it opens directories.
    let _g = FDS.lock().unwrap_or_else(|e| e.into_inner());
    run(
        "client_answers",
        3000,
        120,
        0xc1,
        fuzzstate::client::client_from_bytes,
    );
}

#[test]
fn daemon_session() {
    // Held through the cleanup too: it opens directories.
    let _g = FDS.lock().unwrap_or_else(|e| e.into_inner());
    run(
        "daemon_session",
        200,
        200,
        0xd5,
        fuzzstate::daemon::session_from_bytes,
    );
    fuzzstate::daemon::cleanup();
}

#[test]
fn rules_readers() {
    // Held through the cleanup too: it opens directories.
    let _g = FDS.lock().unwrap_or_else(|e| e.into_inner());
    run(
        "rules_readers",
        2000,
        200,
        0x7e,
        fuzzstate::rules::rules_from_bytes,
    );
    fuzzstate::rules::cleanup();
}
