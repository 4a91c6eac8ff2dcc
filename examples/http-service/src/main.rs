//! The `http_service` binary: the example `examples/http_service.rs`, built
//! as a binary too so that the load proof (`tests/restarts.rs`) can run it
//! (cargo tells integration tests where a package's binaries are, not where
//! its examples are).

#![forbid(unsafe_code)]

#[path = "../examples/http_service.rs"]
mod http_service;

fn main() -> std::process::ExitCode {
    http_service::main()
}
