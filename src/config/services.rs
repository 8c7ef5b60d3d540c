//! `routes:` and `services:`: which service a request goes to, and each
//! service's overrides of the LB's defaults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Algorithm, Config, ConfigError, duration_schema};
use crate::protocol::check_name;

/// One route: requests whose Host and path match go to `service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Optional label, used in errors and `GET /routes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`, any
    /// subdomain depth, not the apex); matched without the port,
    /// case-insensitively. Absent = any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$"))]
    pub host: Option<String>,
    /// Path prefix matched on segment boundaries: `/api` matches `/api`,
    /// `/api/` and `/api/v1`, not `/apis`. Absent = any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^?# ]*$"))]
    pub path_prefix: Option<String>,
    /// The service the request goes to.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,253}$"))]
    pub service: String,
}

impl RouteConfig {
    /// How errors name this route: `routes[2] "api"` or `routes[2]`.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("routes[{index}] {n:?}"),
            None => format!("routes[{index}]"),
        }
    }

    /// Check the route's fields; errors name the route.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let fail = |message: String| ConfigError::Route {
            route: self.label(index),
            message,
        };
        check_name(&self.service).map_err(|e| fail(format!("service: {e}")))?;
        if let Some(h) = &self.host {
            check_host(h).map_err(|m| fail(format!("host {h:?}: {m}")))?;
        }
        if let Some(p) = &self.path_prefix
            && (!p.starts_with('/') || p.contains(['?', '#', ' ']))
        {
            return Err(fail(format!(
                "path_prefix {p:?}: must start with '/' and hold no '?', '#' or spaces"
            )));
        }
        Ok(())
    }
}

/// A host name, or `*.` and one.
fn check_host(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1-253 characters");
    }
    if name.contains('*') {
        return Err("a wildcard is allowed only as a leading \"*.\"");
    }
    if name.contains(':') {
        return Err("no port: hosts are matched without it");
    }
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !name.split('.').all(label_ok) {
        return Err("must be DNS labels of A-Z a-z 0-9 - separated by dots");
    }
    Ok(())
}

/// `services.<name>`: overrides for one service; absent keys keep the LB's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Selection algorithm (default `lb.algorithm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// Header keying `consistent_hash` (default `lb.hash_header`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Panic threshold in percent (default `health_check.panic_threshold`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<f64>,
    /// Retries on other backends (default `lb.retries`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<usize>,
    /// Also replay idempotent requests that failed after reaching a backend
    /// (default `lb.retry_idempotent`): `false` for a service whose GETs
    /// are not safe to repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_idempotent: Option<bool>,
    /// What the service's backends speak unless their registration says
    /// (default `lb.upstream_protocol`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<crate::protocol::Protocol>,
    /// TLS toward the backends: `true` (certificate checked against the
    /// system roots, no SNI), or `{sni, ca_file, verify}`. `protocol`
    /// then picks ALPN: `http1` offers `http/1.1`, `h2c` offers `h2`
    /// only, `auto` offers both. Vitals checks stay plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::TlsSetting>,
    /// Vitals check overrides.
    pub health_check: ServiceCheckConfig,
}

/// `services.<name>.health_check`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceCheckConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "duration_schema")]
    pub interval: Option<Duration>,
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Option<Duration>,
}

/// How one service's backends are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// Path of the JSON vitals on the metrics port.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One service, resolved once: every per-service setting with the LB's
/// defaults applied. The registry's slot holds it and the proxy's pool
/// reads it through the slot, so a new per-service setting is a field
/// here, its override in [`ServiceConfig`], and one line in
/// [`Config::service_spec`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub algorithm: Algorithm,
    pub hash_header: String,
    pub retries: usize,
    /// Replay idempotent requests that failed after reaching a backend.
    pub retry_idempotent: bool,
    /// Upstream protocol of backends whose registration names none.
    pub protocol: crate::protocol::Protocol,
    /// Healthy percent below which the service enters panic mode; 0 = off.
    pub panic_percent: f64,
    /// How the service's backends are checked.
    pub check: Arc<CheckSpec>,
    /// TLS toward the backends, None for plaintext.
    pub tls: Option<super::UpstreamTls>,
}

/// Every service's spec: one per `services:` entry, and the defaults for
/// any other service.
#[derive(Debug, Clone)]
pub struct ServiceSpecs {
    pub default: Arc<ServiceSpec>,
    pub by_name: HashMap<String, Arc<ServiceSpec>>,
}

impl ServiceSpecs {
    /// The spec of `service`.
    pub fn of(&self, service: &str) -> Arc<ServiceSpec> {
        Arc::clone(self.by_name.get(service).unwrap_or(&self.default))
    }
}

impl Config {
    /// The spec of `service`: its `services:` overrides over the LB's
    /// defaults. The one place a per-service setting is resolved.
    pub fn service_spec(&self, service: &str) -> ServiceSpec {
        let o = self.services.get(service);
        let hc = &self.health_check;
        let c = o.map(|o| &o.health_check);
        ServiceSpec {
            algorithm: o.and_then(|o| o.algorithm).unwrap_or(self.lb.algorithm),
            hash_header: o
                .and_then(|o| o.hash_header.clone())
                .unwrap_or_else(|| self.lb.hash_header.clone()),
            retries: o.and_then(|o| o.retries).unwrap_or(self.lb.retries),
            retry_idempotent: o
                .and_then(|o| o.retry_idempotent)
                .unwrap_or(self.lb.retry_idempotent),
            protocol: o
                .and_then(|o| o.protocol)
                .unwrap_or(self.lb.upstream_protocol),
            panic_percent: o
                .and_then(|o| o.panic_threshold)
                .unwrap_or(hc.panic_threshold),
            check: Arc::new(CheckSpec {
                path: c
                    .and_then(|c| c.path.clone())
                    .unwrap_or_else(|| hc.path.clone()),
                interval: c.and_then(|c| c.interval).unwrap_or(hc.interval),
                timeout: c.and_then(|c| c.timeout).unwrap_or(hc.timeout),
            }),
            tls: o.and_then(|o| o.tls.as_ref()).and_then(|t| t.get()),
        }
    }

    /// Every configured service's spec, and the defaults.
    pub fn service_specs(&self) -> ServiceSpecs {
        ServiceSpecs {
            // No `services:` entry can be named "" (the naming rule).
            default: Arc::new(self.service_spec("")),
            by_name: self
                .services
                .keys()
                .map(|name| (name.clone(), Arc::new(self.service_spec(name))))
                .collect(),
        }
    }
}

/// Check `routes:` and `services:`; errors name the route or service.
pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    for (i, r) in c.routes.iter().enumerate() {
        r.validate(i)?;
    }
    for (name, s) in &c.services {
        let fail = |message: String| ConfigError::Service {
            service: name.clone(),
            message,
        };
        check_name(name).map_err(|e| fail(format!("service: {e}")))?;
        if let Some(tls) = s.tls.as_ref().and_then(|t| t.get()) {
            tls.validate().map_err(fail)?;
        }
        if s.panic_threshold
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            return Err(fail("panic_threshold: must be 0-100 (percent)".into()));
        }
        let hc = &s.health_check;
        if hc.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            return Err(fail("health_check.path: must start with '/'".into()));
        }
        if hc.interval.is_some_and(|d| d.is_zero()) || hc.timeout.is_some_and(|d| d.is_zero()) {
            return Err(fail(
                "health_check: interval and timeout must be more than 0".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: Option<&str>, service: &str) -> RouteConfig {
        RouteConfig {
            name: Some("r".into()),
            host: host.map(String::from),
            path_prefix: prefix.map(String::from),
            service: service.into(),
        }
    }

    #[test]
    fn routes_are_validated_with_their_name() {
        let ok = [
            route(Some("api.example.com"), None, "api"),
            route(Some("*.example.com"), Some("/v1"), "web"),
            route(None, Some("/"), "web"),
        ];
        for r in ok {
            r.validate(0).unwrap();
        }
        let bad = [
            route(Some("a*.example.com"), None, "web"),
            route(Some("example.com:80"), None, "web"),
            route(Some("exa mple.com"), None, "web"),
            route(None, Some("api"), "web"),
            route(None, None, "bad/name"),
            route(None, None, ""),
        ];
        for r in bad {
            let e = r.validate(3).unwrap_err().to_string();
            assert!(e.contains("routes[3] \"r\""), "{e}");
        }
    }

    #[test]
    fn service_overrides_apply_over_defaults() {
        let c: Config = serde_yaml::from_str(
            "lb: {algorithm: least_loaded, retries: 2}\n\
             services:\n  web: {algorithm: round_robin, retry_idempotent: false, panic_threshold: 0, health_check: {path: /v, interval: 1s}}\n",
        )
        .unwrap();
        c.validate_lb().unwrap();
        let web = c.service_spec("web");
        assert_eq!((web.algorithm, web.retries), (Algorithm::RoundRobin, 2));
        assert!(!web.retry_idempotent, "the service's own");
        assert!(
            c.service_spec("other").retry_idempotent,
            "lb.retry_idempotent"
        );
        assert_eq!(c.service_spec("other").algorithm, Algorithm::LeastLoaded);
        let bad: Config =
            serde_yaml::from_str("services:\n  web: {panic_threshold: 101}\n").unwrap();
        let e = bad.validate_lb().unwrap_err().to_string();
        assert!(e.contains("services.web"), "{e}");
        let bad: Config =
            serde_yaml::from_str("services:\n  web: {tls: {verify: false, ca_file: /ca.pem}}\n")
                .unwrap();
        let e = bad.validate_lb().unwrap_err().to_string();
        assert!(
            e.contains("services.web") && e.contains("tls.ca_file"),
            "{e}"
        );
    }
}
