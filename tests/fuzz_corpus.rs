//! Every file of `fuzz/corpus/<target>/` through its fuzz target's harness
//! (`fuzz/src/`): the seconds-long smoke run of `make fuzz` under plain
//! `cargo test`, and the regression inputs of every crash fuzzing found.

#[path = "../fuzz/src/admission.rs"]
mod admission;
#[path = "../fuzz/src/auth.rs"]
mod auth;
#[path = "../fuzz/src/config.rs"]
mod config;
#[path = "../fuzz/src/registration.rs"]
mod registration;
#[path = "../fuzz/src/routes.rs"]
mod routes;
#[path = "../fuzz/src/tls.rs"]
mod tls;
#[path = "../fuzz/src/util.rs"]
mod util;
#[path = "../fuzz/src/vitals.rs"]
mod vitals;

use std::path::Path;

/// Run every corpus file of `target`; a failure names the file.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seeds", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
}

#[test]
fn registration_corpus() {
    replay("registration", registration::run);
}

#[test]
fn vitals_corpus() {
    replay("vitals", vitals::run);
}

#[test]
fn config_corpus() {
    replay("config", config::run);
}

#[test]
fn routes_corpus() {
    replay("routes", routes::run);
}

#[test]
fn auth_corpus() {
    replay("auth", auth::run);
}

#[test]
fn admission_corpus() {
    replay("admission", admission::run);
}

#[test]
fn tls_corpus() {
    replay("tls", tls::run);
}
