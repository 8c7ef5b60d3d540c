//! [`Settings`]: the agent's configuration, validated, with the defaults
//! filled in from the Downward API (`POD_NAME`, `POD_IP`) and the hostname.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::{AgentError, AppHealth, invalid};
use crate::config::{AgentConfig, Config, DiscoveryConfig, ResourceMode};

/// Everything the agent needs, validated, defaults filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    pub id: String,
    /// Where the LBs send traffic.
    pub address: SocketAddr,
    /// `host:port` entries, each resolved on every round.
    pub load_balancers: Vec<String>,
    pub announce_interval: Duration,
    /// The service announced; None = the LB's default one.
    pub service: Option<String>,
    pub metrics_listen: IpAddr,
    /// 0 binds an ephemeral port; the bound port is announced.
    pub metrics_port: u16,
    pub token_file: Option<PathBuf>,
    pub app_health: AppHealth,
    pub app_vitals: Option<String>,
    /// Announced as the registration's `protocol`.
    pub app_protocol: Option<crate::protocol::Protocol>,
    pub drain_period: Duration,
    /// The LBs' `health_check.interval`.
    pub lb_health_interval: Duration,
    pub resources: ResourceMode,
    /// Bounds on the vitals port's connections.
    pub vitals_limits: crate::config::limits::Limits,
    /// Reported as `version` in the vitals.
    pub version: String,
}

/// Accepted ids: what the LB accepts.
pub fn valid_id(id: &str) -> bool {
    (1..=253).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Split `host:port` (`[v6]:port` too); None when the port is missing or bad.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((host, port))
}

impl Settings {
    /// Validate `config` and fill the defaults from the process environment
    /// (`POD_NAME`, `POD_IP`) and the hostname.
    pub fn from_config(config: &Config) -> Result<Self, AgentError> {
        Self::from_config_with_env(config, |k| std::env::var(k).ok())
    }

    /// [`Settings::from_config`] with the environment given as a function.
    pub fn from_config_with_env(
        c: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, AgentError> {
        // A variable set to blanks counts as unset.
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let (d, a) = (&c.discovery, &c.agent);
        // The checks run in this order so the first error named stays the same.
        let load_balancers = load_balancers(&d.load_balancers)?;
        validate_intervals(d, c.health_check.interval)?;
        let id = resolve_id(a, env)?;
        let address = resolve_agent_address(a, env)?;
        let metrics_listen = parse_metrics_listen(&a.metrics_listen)?;
        let app_health = parse_app_health(a.app_health.as_deref(), address)?;
        let app_vitals = parse_app_vitals(a.app_vitals.as_deref())?;
        let vitals_limits = a.vitals_limits.get();
        crate::config::limits::validate("agent.vitals_limits", &vitals_limits)?;
        Ok(Self {
            vitals_limits,
            id,
            address,
            load_balancers,
            announce_interval: d.announce_interval,
            service: d.service.clone(),
            metrics_listen,
            metrics_port: d.metrics_port,
            token_file: a.token_file.clone(),
            app_health,
            app_vitals,
            app_protocol: a.app_protocol,
            drain_period: a.drain_period,
            lb_health_interval: c.health_check.interval,
            resources: a.resources,
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }
}

/// `discovery.load_balancers` trimmed, blanks dropped; at least one, each `HOST:PORT`.
fn load_balancers(entries: &[String]) -> Result<Vec<String>, AgentError> {
    let load_balancers: Vec<String> = entries
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if load_balancers.is_empty() {
        return Err(invalid(
            "discovery.load_balancers",
            "needs at least one HOST:PORT",
        ));
    }
    for lb in &load_balancers {
        if split_host_port(lb).is_none() {
            return Err(invalid(
                "discovery.load_balancers",
                format!("{lb:?} is not HOST:PORT"),
            ));
        }
    }
    Ok(load_balancers)
}

/// `discovery.service` is a valid name; both intervals are above zero.
fn validate_intervals(d: &DiscoveryConfig, lb_health_interval: Duration) -> Result<(), AgentError> {
    if let Some(svc) = d.service.as_deref() {
        crate::registry::validate_name(crate::registry::Field::Service, svc)
            .map_err(|e| invalid("discovery.service", e.to_string()))?;
    }
    if d.announce_interval.is_zero() {
        return Err(invalid(
            "discovery.announce_interval",
            "must be more than 0",
        ));
    }
    if lb_health_interval.is_zero() {
        return Err(invalid("health_check.interval", "must be more than 0"));
    }
    Ok(())
}

/// `agent.id`, else `$POD_NAME`, else the hostname; checked by [`valid_id`].
fn resolve_id(a: &AgentConfig, env: impl Fn(&str) -> Option<String>) -> Result<String, AgentError> {
    let id = match a.id.clone().filter(|s| !s.is_empty()) {
        Some(id) => id,
        None => env("POD_NAME")
            .or_else(|| sysinfo::System::host_name().ok())
            .ok_or_else(|| invalid("agent.id", "not set and no $POD_NAME or hostname"))?,
    };
    if !valid_id(&id) {
        return Err(invalid(
            "agent.id",
            format!("{id:?}: 1–253 characters of [A-Za-z0-9._-]"),
        ));
    }
    Ok(id)
}

/// `agent.address`, else `$POD_IP` with `agent.app_port`; never unspecified or port 0.
fn resolve_agent_address(
    a: &AgentConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<SocketAddr, AgentError> {
    let address = match a.address.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => resolve_address(s)?,
        None => match (env("POD_IP"), a.app_port) {
            (Some(ip), Some(port)) => {
                let ip: IpAddr = ip.trim().parse().map_err(|_| {
                    invalid("agent.address", format!("$POD_IP {ip:?} is not an IP"))
                })?;
                SocketAddr::new(ip, port)
            }
            _ => {
                return Err(invalid(
                    "agent.address",
                    "not set: give --address HOST:PORT, or $POD_IP and --app-port",
                ));
            }
        },
    };
    if address.ip().is_unspecified() || address.port() == 0 {
        return Err(invalid(
            "agent.address",
            format!("{address} is not an address the LBs can send traffic to"),
        ));
    }
    Ok(address)
}

/// `IP:port` as is; `host:port` through DNS (first address).
fn resolve_address(s: &str) -> Result<SocketAddr, AgentError> {
    if let Ok(a) = s.trim().parse() {
        return Ok(a);
    }
    if split_host_port(s).is_none() {
        return Err(invalid("agent.address", format!("{s:?} is not HOST:PORT")));
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| invalid("agent.address", format!("{s:?} does not resolve")))
}

/// `agent.metrics_listen` as an IP.
fn parse_metrics_listen(s: &str) -> Result<IpAddr, AgentError> {
    s.trim()
        .parse()
        .map_err(|_| invalid("agent.metrics_listen", format!("{s:?} is not an IP")))
}

/// `agent.app_health`; unset probes a TCP connect to the app's own address.
fn parse_app_health(s: Option<&str>, address: SocketAddr) -> Result<AppHealth, AgentError> {
    match s {
        None | Some("") => Ok(AppHealth::Tcp(address.to_string())),
        Some(s) => s
            .parse()
            .map_err(|e: String| invalid("agent.app_health", e)),
    }
}

/// `agent.app_vitals`: unset or blank is None, else an `http://` URL.
fn parse_app_vitals(s: Option<&str>) -> Result<Option<String>, AgentError> {
    let app_vitals = s.filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(u) = &app_vitals
        && !u.starts_with("http://")
    {
        return Err(invalid(
            "agent.app_vitals",
            format!("{u:?}: not an http:// URL"),
        ));
    }
    Ok(app_vitals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_come_from_the_downward_api() {
        let mut c = Config::default();
        c.agent.app_port = Some(3000);
        let s = Settings::from_config_with_env(
            &c,
            env(&[("POD_NAME", "web-7f9c"), ("POD_IP", "10.0.1.5")]),
        )
        .unwrap();
        assert_eq!(s.id, "web-7f9c");
        assert_eq!(s.address, "10.0.1.5:3000".parse().unwrap());
        assert_eq!(s.app_health, AppHealth::Tcp("10.0.1.5:3000".into()));
        assert_eq!(s.metrics_port, 9090);
        assert_eq!(s.drain_period, Duration::from_secs(10));
        assert_eq!(s.lb_health_interval, Duration::from_secs(5));
    }

    #[test]
    fn explicit_keys_win_and_errors_name_the_key() {
        let mut c = Config::default();
        c.agent.id = Some("b1".into());
        c.agent.address = Some("127.0.0.1:8081".into());
        c.agent.app_health = Some("tcp:3000".into());
        let s = Settings::from_config_with_env(&c, env(&[("POD_NAME", "x")])).unwrap();
        assert_eq!(s.id, "b1");
        assert_eq!(s.app_health, AppHealth::Tcp("127.0.0.1:3000".into()));

        let check = |c: &Config, key: &str| {
            let e = Settings::from_config_with_env(c, env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        };
        let mut bad = c.clone();
        bad.agent.address = None;
        check(&bad, "agent.address");
        let mut bad = c.clone();
        bad.agent.id = Some("no spaces".into());
        check(&bad, "agent.id");
        let mut bad = c.clone();
        bad.discovery.load_balancers = vec!["lb1".into()];
        check(&bad, "discovery.load_balancers");
        let mut bad = c.clone();
        bad.agent.app_health = Some("udp:1".into());
        check(&bad, "agent.app_health");
        let mut bad = c.clone();
        bad.agent.metrics_listen = "everywhere".into();
        check(&bad, "agent.metrics_listen");
        let mut bad = c.clone();
        bad.agent.address = Some("0.0.0.0:80".into());
        check(&bad, "agent.address");
        let mut bad = c;
        bad.agent.app_vitals = Some("ftp://x".into());
        check(&bad, "agent.app_vitals");
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("lb1:8080"), Some(("lb1", 8080)));
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", 80)));
        assert_eq!(split_host_port("lb1"), None);
        assert_eq!(split_host_port(":80"), None);
        assert_eq!(split_host_port("lb:99999"), None);
    }
}
