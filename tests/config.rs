//! Config precedence on the real binary: flag > env > file > default.

mod common;

use std::process::Command;

#[test]
fn precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roster.yaml");
    std::fs::write(
        &path,
        "health_check:\n  interval: 7s\n  timeout: 3s\n  path: /file\n",
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args(["lb", "--print-config", "--health-path", "/flag"])
        .env("ROSTER_CONFIG", &path)
        .env("ROSTER_HEALTH_PATH", "/env")
        .env("ROSTER_HEALTH_TIMEOUT", "4s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let hc = &c["health_check"];
    assert_eq!(hc["path"].as_str(), Some("/flag"), "flag beats env");
    assert_eq!(hc["timeout"].as_str(), Some("4s"), "env beats file");
    assert_eq!(hc["interval"].as_str(), Some("7s"), "file beats default");
    assert_eq!(hc["unhealthy_threshold"].as_u64(), Some(2), "default");
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roster.yaml");
    std::fs::write(&path, "health_check:\n  intervall: 5s\n").unwrap();
    let out = Command::new(common::BIN)
        .args(["lb", "--print-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("intervall"), "{err}");

    let out = Command::new(common::BIN)
        .args(["lb", "--print-config", "--health-interval", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--health-interval"));
}

#[test]
fn schema_is_json_schema_of_the_config() {
    let out = Command::new(common::BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["properties"]["health_check"].is_object(), "{v}");
    assert!(v["properties"]["discovery"].is_object());
}
