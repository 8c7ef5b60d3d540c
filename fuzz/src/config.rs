//! The config file: YAML to a config ([`Config::from_yaml`]), validated
//! ([`Config::validate_lb`]) and everything `roster lb` builds from it at
//! start ([`State::new`]); the same text as a reload of a running LB's
//! file ([`reload::check`], then the routes), against the README's
//! reference file and against itself.

use std::path::Path;
use std::sync::OnceLock;

use roster::config::{Config, reload};
use roster::lb::State;
use roster::lb::routes::RouteTable;

/// A running LB's file: routes, services, a default service.
const RUNNING: &str = "lb:\n  default_service: web\n  algorithm: least_loaded\n\
    routes:\n  - {host: shop.example.com, service: shop}\n  - {path_prefix: /api, service: api}\n\
    services:\n  api: {retries: 2}\n";

pub fn run(data: &[u8]) {
    // Start and reload both read the bytes as text, lossily.
    let text = String::from_utf8_lossy(data);
    let path = Path::new("roster.yaml");
    reload_over(running(), &text, path);
    let Ok(config) = Config::from_yaml(&text, path) else {
        return;
    };
    // What `roster lb` does with it at start: each step may refuse it.
    if config.validate_lb().is_err() {
        return;
    }
    let start = keep_off_files(config.clone());
    if crate::util::block_on(async move { State::new(start) }).is_err() {
        return;
    }
    // The file unchanged, or printed (`roster lb --print-config`), reloads.
    let printed = serde_yaml::to_string(&config).expect("a config prints");
    let back = Config::from_yaml(&printed, path)
        .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
    assert_eq!(back, config, "printed config loads differently:\n{printed}");
    for again in [&*text, &printed] {
        match reload::check(&config, again, path) {
            Ok(_) | Err(reload::ReloadError::Empty { .. }) => {}
            Err(e) => panic!("the running file does not reload: {e}\n{again}"),
        }
    }
}

fn running() -> &'static Config {
    static RUNNING_CONFIG: OnceLock<Config> = OnceLock::new();
    RUNNING_CONFIG.get_or_init(|| {
        let c = Config::from_yaml(RUNNING, Path::new("running.yaml")).expect("running file");
        c.validate_lb().expect("running file validates");
        c
    })
}

/// `text` as the new content of `running`'s file: refused, or it changes
/// nothing but `routes` and its routes compile or are refused.
fn reload_over(running: &Config, text: &str, path: &Path) {
    let new = match reload::check(running, text, path) {
        Ok(new) => new,
        Err(reload::ReloadError::Empty { .. }) => {
            let keys = matches!(
                serde_yaml::from_str::<serde_yaml::Value>(text),
                Ok(serde_yaml::Value::Mapping(m)) if !m.is_empty()
            );
            assert!(!keys, "a file with keys refused as empty: {text:?}");
            return;
        }
        Err(_) => return,
    };
    assert!(!text.trim().is_empty(), "an empty file reloaded");
    let without_routes = |c: &Config| {
        let mut v = serde_json::to_value(c).expect("a config serializes");
        v.as_object_mut().map(|o| o.remove("routes"));
        v
    };
    assert_eq!(
        without_routes(&new),
        without_routes(running),
        "a reload changed more than routes:\n{text}"
    );
    let _ = RouteTable::build(&new.routes, &running.lb.default_service);
}

/// Paths in the file name files the LB reads at start; the fuzzer's
/// would be anything on this machine (`/dev/zero`), so they go.
fn keep_off_files(mut config: Config) -> Config {
    config.registration.token_file = None;
    config.lb.tls.certs.clear();
    for service in config.services.values_mut() {
        if let Some(roster::config::TlsSetting::Settings(s)) = &mut service.tls {
            s.ca_file = None;
        }
    }
    config
}
