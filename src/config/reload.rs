//! What a reload of the watched config file may change, decided here once.
//!
//! The LB re-reads `--config` when its content changes. Only `routes:`
//! reloads ([`RELOADABLE`]); every other key is read at start. A new text
//! is refused, and the config in force kept, when
//! - it holds no keys at all (empty, whitespace or comments only: a
//!   truncate-then-write caught half way, or a full disk), because "all
//!   defaults" is never what a running LB's file meant;
//! - it does not parse or validate (garbage, a cut mid-token, a bad route);
//! - it changes a key that does not reload: such a change needs a restart,
//!   and the refusal names every such key.
//!
//! Keys are compared as the file states them (after defaults), against the
//! text the LB started from; flags and environment variables are not part
//! of the file and cannot change while the LB runs.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// Top-level keys a reload applies; everything else needs a restart.
pub const RELOADABLE: &[&str] = &["routes"];

/// Why a new text of the config file was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("config file {path} has no keys (empty, or only whitespace and comments)")]
    Empty { path: PathBuf },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// Keys that differ from the file the LB started with, dotted
    /// (`lb.default_service`, `services.api`).
    #[error("{} changes need a restart", quoted(keys))]
    NeedsRestart { keys: Vec<String> },
}

fn quoted(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The config of `text` if it may replace `running` (the file's config at
/// start): it has keys, parses, and differs from `running` only in
/// [`RELOADABLE`] keys.
pub fn check(running: &Config, text: &str, path: &Path) -> Result<Config, ReloadError> {
    if has_no_keys(text) {
        return Err(ReloadError::Empty {
            path: path.to_path_buf(),
        });
    }
    let new = Config::from_yaml(text, path)?;
    let keys = restart_only_changes(running, &new);
    if keys.is_empty() {
        Ok(new)
    } else {
        Err(ReloadError::NeedsRestart { keys })
    }
}

/// Whether `text` is a YAML document with nothing in it.
fn has_no_keys(text: &str) -> bool {
    text.trim().is_empty()
        || matches!(
            serde_yaml::from_str::<serde_yaml::Value>(text),
            Ok(serde_yaml::Value::Null)
        )
}

/// The dotted keys outside [`RELOADABLE`] whose values differ.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        // Config always serializes; if it ever did not, refuse everything.
        return vec!["(config)".into()];
    };
    let mut keys = Vec::new();
    diff("", &old, &new, &mut keys);
    keys.retain(|k| {
        let top = k.split('.').next().unwrap_or(k);
        !RELOADABLE.contains(&top)
    });
    keys
}

/// Leaf paths where `a` and `b` differ; objects are descended into, any
/// other value (arrays included) is compared whole.
fn diff(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(a), Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const FILE: &str = r#"# an LB's file, as a ConfigMap would hold it
lb:
  default_service: ""
  algorithm: least_loaded
health_check:
  interval: 2s
services:
  api:
    algorithm: round_robin
routes:
  - host: shop.example
    service: shop
  - path_prefix: /api
    service: api
"#;

    fn parse(text: &str) -> Config {
        Config::from_yaml(text, Path::new("lb.yaml")).expect("parses")
    }

    fn reload(running: &Config, text: &str) -> Result<Config, ReloadError> {
        check(running, text, Path::new("lb.yaml"))
    }

    #[test]
    fn a_file_without_keys_is_refused() {
        let running = parse(FILE);
        for text in [
            "",
            " ",
            "\n\n",
            "\t \r\n",
            "# only a comment\n",
            "---\n",
            "~\n",
        ] {
            let err = reload(&running, text).expect_err(text);
            assert!(matches!(err, ReloadError::Empty { .. }), "{text:?}: {err}");
            assert!(err.to_string().contains("lb.yaml"), "{err}");
        }
    }

    #[test]
    fn route_changes_apply() {
        let running = parse(FILE);
        let text = FILE.replace("path_prefix: /api", "path_prefix: /v2");
        let new = reload(&running, &text).expect("routes reload");
        assert_eq!(new.routes[1].path_prefix.as_deref(), Some("/v2"));
        let none = FILE.split("routes:").next().unwrap_or_default().to_string() + "routes: []\n";
        assert!(reload(&running, &none).expect("explicit").routes.is_empty());
    }

    #[test]
    fn the_empty_default_service_case_of_the_issue_is_named() {
        let running = parse(FILE);
        let text = FILE.replace("  default_service: \"\"\n", "");
        let err = reload(&running, &text).expect_err("default_service changed");
        assert_eq!(
            err.to_string(),
            "`lb.default_service` changes need a restart"
        );
    }

    /// Every leaf of the config other than `routes`, as a dotted path with
    /// its default value.
    fn leaves(at: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    leaves(&path, x, out);
                }
            }
            _ => out.push((at.to_string(), v.clone())),
        }
    }

    fn set(doc: &mut Value, path: &str, value: Value) {
        let mut at = doc;
        for k in path.split('.') {
            at = &mut at[k];
        }
        *at = value;
    }

    /// Values of other types a leaf could take; the first that makes a
    /// config different from the default is used.
    fn alternatives(v: &Value) -> Vec<Value> {
        let strings = [
            "7s",
            "127.0.0.1:9",
            "10.1.0.0/16",
            "least_loaded",
            "consistent_hash",
            "h2c",
            "in_flight=1,reported=2",
            "/other",
            "other",
            "cgroup",
            "/a.B/C",
        ];
        match v {
            Value::Bool(b) => vec![json!(!b)],
            Value::Number(n) if n.is_u64() => vec![json!(n.as_u64().unwrap_or(0) + 1)],
            Value::Number(n) => vec![json!(n.as_f64().unwrap_or(0.0) + 1.0)],
            Value::Array(a) if !a.is_empty() => vec![json!([])],
            Value::Array(_) => strings
                .iter()
                .map(|s| json!([s]))
                .chain([json!([{"cert_file": "/c.pem", "key_file": "/k.pem"}])])
                .collect(),
            Value::Null => [json!(2), json!("/tmp/x")]
                .into_iter()
                .chain(strings.iter().map(|s| json!(s)))
                .collect(),
            Value::String(_) => strings.iter().map(|s| json!(s)).collect(),
            Value::Object(_) => vec![],
        }
    }

    #[test]
    fn every_key_but_routes_needs_a_restart() {
        let running = Config::default();
        let doc = serde_json::to_value(&running).expect("serializes");
        let mut all = Vec::new();
        leaves("", &doc, &mut all);
        let mut checked = 0;
        for (path, value) in all {
            if path == "routes" || path == "services" {
                continue;
            }
            let changed = alternatives(&value).into_iter().find_map(|alt| {
                let mut d = doc.clone();
                set(&mut d, &path, alt);
                serde_json::from_value::<Config>(d)
                    .ok()
                    .filter(|c| *c != running)
            });
            let Some(changed) = changed else {
                panic!("no other value found for `{path}`: extend alternatives()");
            };
            let text = serde_yaml::to_string(&changed).expect("yaml");
            match reload(&running, &text) {
                Err(ReloadError::NeedsRestart { keys }) => {
                    assert!(keys.iter().any(|k| k == &path), "{path}: {keys:?}");
                    assert!(keys.iter().all(|k| !k.starts_with("routes")), "{keys:?}");
                }
                other => panic!("`{path}` changed and reload said {other:?}"),
            }
            checked += 1;
        }
        assert!(checked > 60, "only {checked} keys seen");
    }

    #[test]
    fn services_need_a_restart_by_name() {
        let running = parse(FILE);
        let added = FILE.replace("services:\n", "services:\n  web: {}\n");
        let err = reload(&running, &added).expect_err("service added");
        assert_eq!(err.to_string(), "`services.web` changes need a restart");
        let changed = FILE.replace("algorithm: round_robin", "algorithm: least_loaded");
        let err = reload(&running, &changed).expect_err("setting changed");
        assert!(
            err.to_string().contains("`services.api.algorithm`"),
            "{err}"
        );
    }

    /// Every prefix of the file (a write caught part way, a full disk) is
    /// refused or leaves every restart-only key as it was.
    #[test]
    fn no_cut_of_the_file_changes_a_restart_only_key() {
        let running = parse(FILE);
        for end in 0..FILE.len() {
            let Some(text) = FILE.get(..end) else {
                continue;
            };
            match reload(&running, text) {
                Ok(new) => {
                    assert!(restart_only_changes(&running, &new).is_empty(), "{text:?}");
                    assert_eq!(new.lb.default_service, "", "{text:?}");
                }
                Err(ReloadError::Empty { .. }) => {
                    assert!(has_no_keys(text), "{text:?}")
                }
                Err(_) => {}
            }
        }
        // Cut to nothing, or to its first comment: refused as empty.
        assert!(matches!(
            reload(&running, ""),
            Err(ReloadError::Empty { .. })
        ));
        let first_line = FILE.lines().next().unwrap_or_default();
        assert!(matches!(
            reload(&running, first_line),
            Err(ReloadError::Empty { .. })
        ));
    }

    #[test]
    fn garbage_and_unknown_keys_stay_invalid() {
        let running = parse(FILE);
        for text in [
            "lb: [",
            "{{{",
            "bogus: 1\n",
            "routes:\n  - host: a\n    servic",
        ] {
            assert!(
                matches!(reload(&running, text), Err(ReloadError::Invalid(_))),
                "{text:?}"
            );
        }
    }
}
