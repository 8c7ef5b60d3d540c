//! The config file: YAML to a config ([`Config::from_yaml`], what the LB
//! reads at start and on reload), validated ([`Config::validate_lb`]),
//! then everything `roster lb` builds from it ([`State::new`]).

use std::path::Path;

use roster::config::Config;
use roster::lb::State;

pub fn run(data: &[u8]) {
    // The reload reads bytes (lossy); the start reads UTF-8 text.
    let text = String::from_utf8_lossy(data);
    let path = Path::new("roster.yaml");
    let Ok(mut config) = Config::from_yaml(&text, path) else {
        return;
    };
    keep_off_files(&mut config);
    // What `roster lb` does with it at start: each step may refuse it.
    if config.validate_lb().is_err() {
        return;
    }
    let start = config.clone();
    if crate::util::block_on(async move { State::new(start) }).is_err() {
        return;
    }
    // `roster lb --print-config` prints a file that loads as the same config.
    let printed = serde_yaml::to_string(&config).expect("a config prints");
    let back = Config::from_yaml(&printed, path)
        .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
    assert_eq!(back, config, "printed config loads differently:\n{printed}");
}

/// Paths in the file name files the LB reads at start; the fuzzer's
/// would be anything on this machine (`/dev/zero`), so they go.
fn keep_off_files(config: &mut Config) {
    config.registration.token_file = None;
    config.lb.tls.certs.clear();
    for service in config.services.values_mut() {
        if let Some(roster::config::TlsSetting::Settings(s)) = &mut service.tls {
            s.ca_file = None;
        }
    }
}
