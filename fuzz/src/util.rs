//! What several targets share: a runtime, a scratch directory, sections of
//! an input, a registry as `roster lb` builds one.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use roster::config::Config;
use roster::protocol::Registration;
use roster::registry::{Change, Policy, Registry, Target, Thresholds};

/// Between the sections of an input (`auth`, `tls`).
pub const SEPARATOR: &[u8] = b"\n%%\n";

/// The first `n` sections of `data`; missing ones are empty, the last
/// keeps any further separators.
pub fn sections(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[][..]);
    out
}

/// One current-thread runtime per thread (tests run targets in parallel).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = roster::current_thread().expect("a runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

/// A fresh directory for files a target hands to the code under test;
/// in memory where the machine has /dev/shm.
pub fn scratch() -> tempfile::TempDir {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    tempfile::Builder::new()
        .prefix("roster-fuzz-")
        .tempdir_in(base)
        .expect("a scratch directory")
}

/// The registry `roster lb` builds from the default config, with loopback
/// and link-local networks allowed too (their own fence rules apply) and
/// room for a few backends.
pub fn registry(default_service: &str) -> Registry {
    let mut config = Config::default();
    config.lb.default_service = default_service.into();
    config
        .registration
        .allowed_networks
        .extend(["127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10"].map(String::from));
    let policy = Policy {
        allowed_networks: config
            .registration
            .networks()
            .expect("default networks parse"),
        max_backends: 8,
        lease_ttl: config.registration.lease_ttl,
        default_service: default_service.into(),
    };
    let thresholds = Thresholds {
        unhealthy: config.health_check.unhealthy_threshold,
        healthy: config.health_check.healthy_threshold,
    };
    Registry::new(policy, thresholds, config.service_specs())
}

/// A valid registration of `id` at `address` in the default service.
pub fn backend(id: &str, address: &str) -> Registration {
    Registration {
        id: id.into(),
        address: address.into(),
        metrics_port: 9090,
        weight: 1,
        service: None,
        protocol: None,
    }
}

/// Register `reg` (it must pass) and return the target its checks probe.
pub fn register(registry: &Registry, reg: &Registration, now: Instant) -> Target {
    let mut changes = registry.subscribe();
    let valid = registry
        .policy()
        .validate(reg)
        .expect("a valid registration");
    registry.register(valid, now).expect("room in the registry");
    let mut target = None;
    while let Ok(c) = changes.try_recv() {
        if let Change::Added(t) = c {
            target = Some(t);
        }
    }
    target.expect("a new entry is announced for checking")
}
