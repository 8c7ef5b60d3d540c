//! The fuzz harness: one `run(&[u8])` per target, each calling the code
//! production runs on that input and asserting what must hold. The
//! libFuzzer binaries in `fuzz_targets/` and `tests/fuzz_corpus.rs` (which
//! replays `corpus/` under `cargo test`) share it.

pub mod admission;
pub mod auth;
pub mod config;
pub mod registration;
pub mod routes;
pub mod tls;
pub mod util;
pub mod vitals;
