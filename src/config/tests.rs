//! Config parsing, validation and precedence.
use super::*;
use clap::Parser;

const SEED: &str = r#"
# For backends
discovery:
  load_balancers: ["lb1:8080", "lb2:8080"]
  announce_interval: "30s"
  metrics_port: 9090

# For load balancers  
health_check:
  interval: "5s"
  timeout: "2s"
  path: "/metrics"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, Path::new("test.yaml"))
}

#[test]
fn seed_yaml_parses_verbatim() {
    let c = parse(SEED).expect("seed config");
    assert_eq!(c.discovery.load_balancers, ["lb1:8080", "lb2:8080"]);
    assert_eq!(c.discovery.announce_interval, Duration::from_secs(30));
    assert_eq!(c.discovery.metrics_port, 9090);
    assert_eq!(c.health_check.interval, Duration::from_secs(5));
    assert_eq!(c.health_check.timeout, Duration::from_secs(2));
    assert_eq!(c.health_check.path, "/metrics");
    assert_eq!(c.health_check.unhealthy_threshold, 2);
    c.validate_lb().expect("valid");
}

#[test]
fn spec_keys_parse() {
    let c = parse(
            "lb:\n  listen: \"127.0.0.1:9000\"\n  threads: 2\n  algorithm: least_loaded\n  grace_period: 10s\n\
             registration:\n  lease_ttl: 1m\n  max_backends: 5\n  allowed_networks: [\"127.0.0.0/8\"]\n\
             agent:\n  id: b1\n  metrics_listen: 127.0.0.2\n",
        )
        .expect("spec keys");
    assert_eq!(c.lb.listen, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(c.lb.threads, Some(2));
    assert_eq!(c.lb.algorithm, Algorithm::LeastLoaded);
    assert_eq!(c.registration.lease_ttl, Duration::from_secs(60));
    assert_eq!(c.agent.id.as_deref(), Some("b1"));
    c.validate_lb().expect("valid");
}

#[test]
fn unknown_key_is_named() {
    let err = parse("health_check:\n  intervall: 5s\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("intervall"), "{err}");
    let err = parse("bogus: 1\n").unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn bad_duration_is_named() {
    let err = parse("health_check:\n  interval: fast\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("health_check") && err.contains("interval"),
        "{err}"
    );
}

#[test]
fn range_errors_name_the_key() {
    let mut c = Config::default();
    c.health_check.unhealthy_threshold = 0;
    let err = c.validate_lb().unwrap_err().to_string();
    assert!(err.contains("health_check.unhealthy_threshold"), "{err}");
    let mut c = Config::default();
    c.registration.allowed_networks = vec!["10.0.0.0/33".into()];
    let err = c.validate_lb().unwrap_err().to_string();
    assert!(err.contains("allowed_networks"), "{err}");
}

#[test]
fn durations_too_long_to_compute_with_are_refused_by_key() {
    // Fuzzing (fuzz/corpus/config/crash-duration-overflow.yaml): the LB
    // doubled this interval at start and panicked on the overflow.
    let c = parse("health_check:\n  interval: 368934834354y\n").expect("parses");
    let err = c.validate_lb().unwrap_err().to_string();
    assert!(err.contains("health_check.interval"), "{err}");
    let c = parse("services:\n  web: {health_check: {timeout: 1000y}}\n").expect("parses");
    let err = c.validate_lb().unwrap_err().to_string();
    assert!(err.contains("services.*.health_check"), "{err}");
    let mut c = Config::default();
    c.registration.lease_ttl = validate::MAX_DURATION;
    c.validate_lb().expect("the bound itself is allowed");
    c.registration.lease_ttl += Duration::from_secs(1);
    let err = c.validate_lb().unwrap_err().to_string();
    assert!(err.contains("registration.lease_ttl"), "{err}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    lb: LbArgs,
}

#[test]
fn precedence_flag_over_file_over_default() {
    // Env sits between the two; tests/config.rs checks it on the binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "health_check:\n  interval: 7s\n  path: /file\n").unwrap();
    let cli = Cli::try_parse_from([
        "x",
        "--config",
        path.to_str().unwrap(),
        "--health-path",
        "/flag",
    ])
    .unwrap();
    let c = cli.lb.resolve().unwrap();
    assert_eq!(c.health_check.path, "/flag");
    assert_eq!(c.health_check.interval, Duration::from_secs(7));
    assert_eq!(c.health_check.unhealthy_threshold, 2);
}

#[test]
fn schema_names_seed_keys() {
    let schema = serde_json::to_string(&schemars::schema_for!(Config)).unwrap();
    for key in ["load_balancers", "announce_interval", "unhealthy_threshold"] {
        assert!(schema.contains(key), "{key}");
    }
}

/// The duration grammar has one list of units; humantime, the chart's
/// `roster.seconds` helper (and kit.py, which reads the helper) agree with it.
#[test]
fn duration_units_match_humantime_and_the_chart() {
    use super::{DURATION_UNITS, duration_pattern};
    for (unit, seconds) in DURATION_UNITS {
        let d = humantime::parse_duration(&format!("3{unit}")).unwrap();
        let want = 3.0 * seconds;
        assert!((d.as_secs_f64() - want).abs() <= want * 1e-9, "{unit}");
    }
    let helpers = include_str!("../../charts/roster/templates/_helpers.tpl");
    let dict = helpers
        .split("$units := dict ")
        .nth(1)
        .and_then(|rest| rest.split(" -}}").next())
        .expect("the units of roster.seconds");
    let words: Vec<&str> = dict.split_whitespace().collect();
    let chart: std::collections::BTreeMap<&str, f64> = words
        .chunks(2)
        .map(|p| (p[0].trim_matches('"'), p[1].parse().expect("seconds")))
        .collect();
    let ours = DURATION_UNITS.iter().copied().collect();
    assert_eq!(
        chart, ours,
        "charts/roster/templates/_helpers.tpl roster.seconds"
    );
    let pattern = regex::Regex::new(&duration_pattern()).unwrap();
    for ok in ["5s", "500ms", "1m 30s", " 2µs ", "1h30m", "3 days"] {
        assert!(pattern.is_match(ok), "{ok}");
        assert!(humantime::parse_duration(ok.trim()).is_ok(), "{ok}");
    }
    for bad in ["", "5", "s", "5 parsecs", "1.5s", "-1s"] {
        assert!(!pattern.is_match(bad), "{bad}");
    }
}
