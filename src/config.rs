//! The configuration: one YAML file (`--config`), flags and `ROSTER_*`
//! environment variables, merged with precedence flag > env > file > default.
//!
//! The seed's keys (`discovery:`, `health_check:`) are accepted verbatim;
//! SPEC.md adds `lb:`, `registration:` and `agent:`. Unknown keys are an
//! error that names the key. `roster schema` prints the JSON Schema of
//! [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::{ControlLimitArgs, ProxyLimitArgs};
pub use crate::limits::{ControlLimits, ProxyLimits, VitalsLimits};

/// A configuration problem, always naming the file, key or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// The whole configuration file. Every section is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Agent side: where to announce and how often (the seed's keys).
    pub discovery: DiscoveryConfig,
    /// LB side: how backends' vitals are checked (the seed's keys).
    pub health_check: HealthCheckConfig,
    /// LB proxy and control API.
    pub lb: LbConfig,
    /// LB registration policy.
    pub registration: RegistrationConfig,
    /// Agent identity and vitals server.
    pub agent: AgentConfig,
}

/// `discovery:` — read by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// LB control addresses (`host:port`); each is resolved through DNS on
    /// every announce and every address it resolves to is announced to.
    pub load_balancers: Vec<String>,
    /// Heartbeat period (humantime, e.g. "30s"); ±10% jitter is applied.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub announce_interval: Duration,
    /// Port of the vitals server (`/metrics`, `/telemetry`).
    pub metrics_port: u16,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            load_balancers: vec!["127.0.0.1:8080".into()],
            announce_interval: Duration::from_secs(30),
            metrics_port: 9090,
        }
    }
}

/// `health_check:` — read by the LB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Time between two checks of one backend.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub interval: Duration,
    /// Time allowed for one check.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Duration,
    /// Path of the JSON vitals on the backend's metrics port.
    pub path: String,
    /// Consecutive failures before a backend leaves the pool.
    pub unhealthy_threshold: u32,
    /// Consecutive successes before it re-enters the pool.
    pub healthy_threshold: u32,
    /// Maximum number of checks in flight at once.
    pub concurrency: usize,
    /// Percent of registered, non-draining backends that must be healthy;
    /// below it the LB routes to every one that is not `ready:false`
    /// rather than overload the few left (panic mode). 0 disables.
    pub panic_threshold: f64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            path: "/metrics".into(),
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            concurrency: 256,
            panic_threshold: 50.0,
        }
    }
}

/// Backend selection algorithm.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Algorithm {
    /// Weighted round robin (the seed's).
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight requests and reported load.
    LeastLoaded,
    /// Ketama consistent hashing on `lb.hash_header`, else the client address.
    ConsistentHash,
}

/// `lb:` — the proxy and its control API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// Proxy (client traffic) listen address.
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Control API listen address.
    #[schemars(with = "String")]
    pub control_listen: SocketAddr,
    /// Proxy worker threads; null = number of cores.
    pub threads: Option<usize>,
    pub algorithm: Algorithm,
    /// Request header whose value keys `consistent_hash`.
    pub hash_header: String,
    /// Time given to in-flight requests on SIGTERM.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub grace_period: Duration,
    /// Time allowed to connect to a backend.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub connect_timeout: Duration,
    /// Time allowed between two reads from a backend.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub read_timeout: Duration,
    /// Idle upstream connections are closed after this long.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub idle_timeout: Duration,
    /// Idle upstream connections kept for reuse, across all backends. Round
    /// robin over N backends reuses connections only if this is ≥ N: the
    /// default covers 10,000 backends with room (bench part 2: 1,024 made
    /// one new connection per request at 10,000). An idle connection costs
    /// the LB ~5 KB and closes after `idle_timeout`.
    pub keepalive_pool_size: usize,
    /// Other backends tried when connecting to the chosen one fails.
    pub retries: usize,
    /// Also retry idempotent requests (GET, HEAD, PUT, DELETE, OPTIONS...)
    /// that failed after reaching a backend, as nginx does. Non-idempotent
    /// requests are never replayed.
    pub retry_idempotent: bool,
    /// Consecutive connect failures or 5xx answers that eject a backend
    /// from selection before its next health check; 0 disables.
    pub eject_after: u32,
    /// First ejection length; doubles on each repeat, up to `max_ejection_time`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ejection_time: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ejection_time: Duration,
    /// After SIGTERM, keep accepting this long with `/readyz` at 503 so
    /// Kubernetes can take the LB out of its Services first.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_delay: Duration,
    /// After start, `/readyz` says 503 until this long has passed or the
    /// registry has stabilized (every entry checked, no newcomer for two
    /// health intervals), so clients are not sent to an LB still refilling.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub warmup: Duration,
    /// Bounds on the proxy port's client connections.
    pub proxy_limits: ProxyLimits,
    /// Bounds on the control API's connections.
    pub control_limits: ControlLimits,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plaintext `listen`
    /// port, beside HTTP/1.1 (told apart by the h2 preface).
    pub h2c: bool,
    /// TLS termination (a second listener, when certificates are given).
    pub tls: crate::lb::tls::TlsConfig,
    /// What backends speak unless their registration says otherwise.
    pub upstream_protocol: crate::protocol::Protocol,
    /// An upgraded connection (WebSocket) is closed after this long with
    /// no data from one side; `read_timeout` does not apply to it.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub websocket_idle_timeout: Duration,
    /// gRPC methods (`/pkg.Service/Method`) safe to replay on another
    /// backend after a failure; other gRPC calls are retried only when
    /// they never reached a backend.
    pub grpc_idempotent_methods: Vec<String>,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8000).into(),
            control_listen: ([0, 0, 0, 0], 8080).into(),
            threads: None,
            algorithm: Algorithm::RoundRobin,
            hash_header: "x-roster-hash-key".into(),
            grace_period: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            keepalive_pool_size: 16384,
            retries: 2,
            retry_idempotent: true,
            eject_after: 3,
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            shutdown_delay: Duration::ZERO,
            warmup: Duration::from_secs(30),
            proxy_limits: ProxyLimits::default(),
            control_limits: ControlLimits::default(),
            h2c: true,
            tls: crate::lb::tls::TlsConfig::default(),
            upstream_protocol: crate::protocol::Protocol::Http1,
            websocket_idle_timeout: Duration::from_secs(3600),
            grpc_idempotent_methods: Vec::new(),
        }
    }
}

/// `registration:` — who may register what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// An entry not renewed within this time leaves the registry.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub lease_ttl: Duration,
    /// File holding the bearer token agents must send; null = open.
    pub token_file: Option<PathBuf>,
    /// CIDRs a registered address must fall in.
    pub allowed_networks: Vec<String>,
    /// Registrations beyond this many distinct ids get 429 (≤ 65535).
    pub max_backends: usize,
    /// Require the token (or a Kubernetes identity) for `/backends`,
    /// `/registry`, `/telemetry` and the dashboard too.
    pub protect_reads: bool,
    /// Validate agents' projected ServiceAccount tokens with a TokenReview
    /// and accept only the registering pod's own IP.
    pub kubernetes_auth: bool,
    /// Audience the ServiceAccount tokens must be issued for.
    pub token_audience: String,
    /// Control API requests per second per source IP; 0 = unlimited.
    pub rate_limit: u32,
    /// Burst above `rate_limit` a source may send at once.
    pub rate_limit_burst: u32,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(90),
            token_file: None,
            allowed_networks: vec![
                "10.0.0.0/8".into(),
                "172.16.0.0/12".into(),
                "192.168.0.0/16".into(),
                "fd00::/8".into(),
            ],
            max_backends: 10_000,
            protect_reads: false,
            kubernetes_auth: false,
            token_audience: "roster".into(),
            rate_limit: 50,
            rate_limit_burst: 100,
        }
    }
}

impl RegistrationConfig {
    /// The parsed `allowed_networks`.
    pub fn networks(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.allowed_networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .map_err(|e| invalid("registration.allowed_networks", format!("{n:?}: {e}")))
            })
            .collect()
    }
}

/// `agent:` — the agent's identity and vitals server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Backend id; default `$POD_NAME`, else the hostname.
    pub id: Option<String>,
    /// Address announced for traffic; default `$POD_IP:$ROSTER_APP_PORT`.
    pub address: Option<String>,
    /// Address the vitals server binds (on `discovery.metrics_port`).
    pub metrics_listen: String,
    /// File holding the bearer token sent to the LBs; re-read on every
    /// announce and deregistration.
    pub token_file: Option<PathBuf>,
    /// The app's port: the default address is `$POD_IP:<app_port>`.
    pub app_port: Option<u16>,
    /// How `ready` is decided: `http://127.0.0.1:3000/healthz` (2xx),
    /// `tcp:3000` or `tcp:HOST:PORT` (connect), `none` (always);
    /// null = TCP connect to `address`.
    pub app_health: Option<String>,
    /// URL of a JSON document in the vitals' shape that the app serves; the
    /// fields it has are merged into the agent's vitals.
    pub app_vitals: Option<String>,
    /// Longest time a drain (SIGTERM, `roster agent drain`) lasts before the
    /// agent exits; it exits sooner once every LB confirmed the removal and
    /// not-ready has been served for one `health_check.interval`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_period: Duration,
    /// Where `cpu_usage` and `memory_usage` come from.
    pub resources: ResourceMode,
    /// Bounds on the vitals port's connections.
    pub vitals_limits: VitalsLimits,
    /// What the app speaks (http1, h2c, auto), announced in every
    /// registration; null = the LB's `lb.upstream_protocol`.
    pub app_protocol: Option<crate::protocol::Protocol>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            id: None,
            address: None,
            metrics_listen: "0.0.0.0".into(),
            token_file: None,
            app_port: None,
            app_health: None,
            app_vitals: None,
            drain_period: Duration::from_secs(10),
            resources: ResourceMode::Auto,
            vitals_limits: VitalsLimits::default(),
            app_protocol: None,
        }
    }
}

/// Source of the agent's `cpu_usage` and `memory_usage`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ResourceMode {
    /// Embedded (library, `roster demo-backend`): the cgroup v2 of the
    /// process when it runs in a container (its own cgroup namespace), else
    /// the host. The `roster agent` sidecar: the host, since its own cgroup
    /// is the sidecar container, not the app's.
    #[default]
    Auto,
    /// Always the process's cgroup v2: usage over its limits, or over the
    /// host's capacity where no limit is set.
    Cgroup,
    /// Always the whole host (sysinfo).
    Host,
}

impl Config {
    /// Parse YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        // An empty file is an empty mapping, not an error.
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Load `path`, or the defaults when there is no file.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Ok(Self::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::from_yaml(&text, p)
            }
        }
    }

    /// Checks the LB needs: ranges that serde cannot express.
    pub fn validate_lb(&self) -> Result<(), ConfigError> {
        let hc = &self.health_check;
        if hc.interval.is_zero() {
            return Err(invalid("health_check.interval", "must be more than 0"));
        }
        if hc.timeout.is_zero() {
            return Err(invalid("health_check.timeout", "must be more than 0"));
        }
        if !hc.path.starts_with('/') {
            return Err(invalid("health_check.path", "must start with '/'"));
        }
        if hc.unhealthy_threshold == 0 {
            return Err(invalid("health_check.unhealthy_threshold", "must be ≥ 1"));
        }
        if hc.healthy_threshold == 0 {
            return Err(invalid("health_check.healthy_threshold", "must be ≥ 1"));
        }
        if !(0.0..=100.0).contains(&hc.panic_threshold) {
            return Err(invalid(
                "health_check.panic_threshold",
                "must be 0-100 (percent)",
            ));
        }
        if self.lb.ejection_time.is_zero() || self.lb.max_ejection_time < self.lb.ejection_time {
            return Err(invalid(
                "lb.max_ejection_time",
                "must be ≥ lb.ejection_time, and both more than 0",
            ));
        }
        if hc.concurrency == 0 {
            return Err(invalid("health_check.concurrency", "must be ≥ 1"));
        }
        if self.lb.threads == Some(0) {
            return Err(invalid("lb.threads", "must be ≥ 1 or null"));
        }
        if self.registration.lease_ttl.is_zero() {
            return Err(invalid("registration.lease_ttl", "must be more than 0"));
        }
        // pingora's weighted selectors index backends with u16.
        if self.registration.max_backends == 0 || self.registration.max_backends > 65_535 {
            return Err(invalid("registration.max_backends", "must be 1..=65535"));
        }
        self.registration.networks()?;
        crate::limits::validate("lb.proxy_limits", &self.lb.proxy_limits.get())?;
        crate::limits::validate("lb.control_limits", &self.lb.control_limits.get())?;
        if self.lb.websocket_idle_timeout.is_zero() {
            return Err(invalid("lb.websocket_idle_timeout", "must be more than 0"));
        }
        if let Some(m) = self
            .lb
            .grpc_idempotent_methods
            .iter()
            .find(|m| !m.starts_with('/') || m.matches('/').count() != 2)
        {
            return Err(invalid(
                "lb.grpc_idempotent_methods",
                format!("{m:?}: expected /package.Service/Method"),
            ));
        }
        if self.lb.tls.enabled() && self.lb.tls.reload_interval.is_zero() {
            return Err(invalid("lb.tls.reload_interval", "must be more than 0"));
        }
        Ok(())
    }
}

/// What `humantime` accepts ("500ms", "5s", "1m 30s"), for the JSON Schema.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+$";

/// JSON Schema of a humantime duration string.
pub fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "examples": ["5s", "500ms", "1m 30s"],
    })
}

/// Parse a humantime duration for a clap flag ("500ms", "5s", "1m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Flags shared by every subcommand that reads the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// YAML config file.
    #[arg(long, env = "ROSTER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `roster lb` flags. Each overrides the file's key of the same meaning.
#[derive(Debug, Clone, Default, Args)]
pub struct LbArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// Proxy listen address (lb.listen).
    #[arg(long, env = "ROSTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Control API listen address (lb.control_listen).
    #[arg(long, env = "ROSTER_CONTROL_LISTEN")]
    pub control_listen: Option<SocketAddr>,
    /// Proxy worker threads (lb.threads).
    #[arg(long, env = "ROSTER_THREADS")]
    pub threads: Option<usize>,
    /// Selection algorithm (lb.algorithm).
    #[arg(long, env = "ROSTER_ALGORITHM")]
    pub algorithm: Option<Algorithm>,
    /// Header keying consistent_hash (lb.hash_header).
    #[arg(long, env = "ROSTER_HASH_HEADER")]
    pub hash_header: Option<String>,
    /// Shutdown grace period (lb.grace_period).
    #[arg(long, env = "ROSTER_GRACE_PERIOD", value_parser = parse_duration)]
    pub grace_period: Option<Duration>,
    /// Backend connect timeout (lb.connect_timeout).
    #[arg(long, env = "ROSTER_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Backend read timeout (lb.read_timeout).
    #[arg(long, env = "ROSTER_READ_TIMEOUT", value_parser = parse_duration)]
    pub read_timeout: Option<Duration>,
    /// Upstream idle timeout (lb.idle_timeout).
    #[arg(long, env = "ROSTER_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Idle upstream connections kept (lb.keepalive_pool_size).
    #[arg(long, env = "ROSTER_KEEPALIVE_POOL_SIZE")]
    pub keepalive_pool_size: Option<usize>,
    /// Retries on other backends after a connect failure (lb.retries).
    #[arg(long, env = "ROSTER_RETRIES")]
    pub retries: Option<usize>,
    /// Retry failed idempotent requests elsewhere (lb.retry_idempotent).
    #[arg(long, env = "ROSTER_RETRY_IDEMPOTENT", num_args = 0..=1, default_missing_value = "true")]
    pub retry_idempotent: Option<bool>,
    /// Failures that eject a backend, 0 = off (lb.eject_after).
    #[arg(long, env = "ROSTER_EJECT_AFTER")]
    pub eject_after: Option<u32>,
    /// First ejection length (lb.ejection_time).
    #[arg(long, env = "ROSTER_EJECTION_TIME", value_parser = parse_duration)]
    pub ejection_time: Option<Duration>,
    /// Longest ejection (lb.max_ejection_time).
    #[arg(long, env = "ROSTER_MAX_EJECTION_TIME", value_parser = parse_duration)]
    pub max_ejection_time: Option<Duration>,
    /// Keep accepting after SIGTERM (lb.shutdown_delay).
    #[arg(long, env = "ROSTER_SHUTDOWN_DELAY", value_parser = parse_duration)]
    pub shutdown_delay: Option<Duration>,
    /// Healthy percent below which panic mode starts, 0 = off (health_check.panic_threshold).
    #[arg(long, env = "ROSTER_PANIC_THRESHOLD")]
    pub panic_threshold: Option<f64>,
    /// Readiness warm-up after start (lb.warmup).
    #[arg(long, env = "ROSTER_WARMUP", value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Check period (health_check.interval).
    #[arg(long, env = "ROSTER_HEALTH_INTERVAL", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Check timeout (health_check.timeout).
    #[arg(long, env = "ROSTER_HEALTH_TIMEOUT", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Vitals path (health_check.path).
    #[arg(long, env = "ROSTER_HEALTH_PATH")]
    pub health_path: Option<String>,
    /// Failures before leaving the pool (health_check.unhealthy_threshold).
    #[arg(long, env = "ROSTER_UNHEALTHY_THRESHOLD")]
    pub unhealthy_threshold: Option<u32>,
    /// Successes before re-entering (health_check.healthy_threshold).
    #[arg(long, env = "ROSTER_HEALTHY_THRESHOLD")]
    pub healthy_threshold: Option<u32>,
    /// Checks in flight at once (health_check.concurrency).
    #[arg(long, env = "ROSTER_HEALTH_CONCURRENCY")]
    pub health_concurrency: Option<usize>,
    /// Lease length (registration.lease_ttl).
    #[arg(long, env = "ROSTER_LEASE_TTL", value_parser = parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Bearer token file agents must present (registration.token_file).
    #[arg(long, env = "ROSTER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Comma-separated CIDRs (registration.allowed_networks).
    #[arg(long, env = "ROSTER_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub allowed_networks: Option<Vec<String>>,
    /// Registry size cap (registration.max_backends).
    #[arg(long, env = "ROSTER_MAX_BACKENDS")]
    pub max_backends: Option<usize>,
    /// Protect reads with the token too (registration.protect_reads).
    #[arg(long, env = "ROSTER_PROTECT_READS", num_args = 0..=1, default_missing_value = "true")]
    pub protect_reads: Option<bool>,
    /// Validate ServiceAccount tokens by TokenReview (registration.kubernetes_auth).
    #[arg(long, env = "ROSTER_KUBERNETES_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub kubernetes_auth: Option<bool>,
    /// Requests/s per source IP on the control API, 0 = off (registration.rate_limit).
    #[arg(long, env = "ROSTER_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Burst per source IP (registration.rate_limit_burst).
    #[arg(long, env = "ROSTER_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    #[command(flatten)]
    pub proxy_limits: ProxyLimitArgs,
    #[command(flatten)]
    pub control_limits: ControlLimitArgs,
    /// Accept h2c (HTTP/2 prior knowledge) on the proxy port (lb.h2c).
    #[arg(long, env = "ROSTER_H2C", num_args = 0..=1, default_missing_value = "true")]
    pub h2c: Option<bool>,
    /// TLS listen address (lb.tls.listen).
    #[arg(long, env = "ROSTER_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// Certificate and key, CERT_FILE:KEY_FILE; repeat or comma-separate
    /// for several SNI names (lb.tls.certs).
    #[arg(long = "tls-cert", env = "ROSTER_TLS_CERTS", value_delimiter = ',')]
    pub tls_certs: Option<Vec<crate::lb::tls::CertPair>>,
    /// What backends speak by default: http1, h2c or auto (lb.upstream_protocol).
    #[arg(long, env = "ROSTER_UPSTREAM_PROTOCOL")]
    pub upstream_protocol: Option<crate::protocol::Protocol>,
    /// Idle timeout of upgraded (WebSocket) connections (lb.websocket_idle_timeout).
    #[arg(long, env = "ROSTER_WEBSOCKET_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub websocket_idle_timeout: Option<Duration>,
    /// Comma-separated gRPC methods safe to retry (lb.grpc_idempotent_methods).
    #[arg(long, env = "ROSTER_GRPC_IDEMPOTENT_METHODS", value_delimiter = ',')]
    pub grpc_idempotent_methods: Option<Vec<String>>,
    /// Print the merged configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

macro_rules! set {
    ($dst:expr, $src:expr) => {
        if let Some(v) = $src.clone() {
            $dst = v;
        }
    };
}

impl LbArgs {
    /// File (or defaults), then flags/env on top, then validation.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.file.config.as_deref())?;
        self.apply(&mut c);
        c.validate_lb()?;
        Ok(c)
    }

    /// Overlay every flag or env var that was given.
    pub fn apply(&self, c: &mut Config) {
        set!(c.lb.listen, self.listen);
        set!(c.lb.control_listen, self.control_listen);
        if self.threads.is_some() {
            c.lb.threads = self.threads;
        }
        set!(c.lb.algorithm, self.algorithm);
        set!(c.lb.hash_header, self.hash_header);
        set!(c.lb.grace_period, self.grace_period);
        set!(c.lb.connect_timeout, self.connect_timeout);
        set!(c.lb.read_timeout, self.read_timeout);
        set!(c.lb.idle_timeout, self.idle_timeout);
        set!(c.lb.retries, self.retries);
        set!(c.lb.keepalive_pool_size, self.keepalive_pool_size);
        set!(c.lb.warmup, self.warmup);
        set!(c.lb.retry_idempotent, self.retry_idempotent);
        set!(c.lb.eject_after, self.eject_after);
        set!(c.lb.ejection_time, self.ejection_time);
        set!(c.lb.max_ejection_time, self.max_ejection_time);
        set!(c.lb.shutdown_delay, self.shutdown_delay);
        set!(c.health_check.panic_threshold, self.panic_threshold);
        set!(c.health_check.interval, self.health_interval);
        set!(c.health_check.timeout, self.health_timeout);
        set!(c.health_check.path, self.health_path);
        set!(c.health_check.unhealthy_threshold, self.unhealthy_threshold);
        set!(c.health_check.healthy_threshold, self.healthy_threshold);
        set!(c.health_check.concurrency, self.health_concurrency);
        set!(c.registration.lease_ttl, self.lease_ttl);
        if self.token_file.is_some() {
            c.registration.token_file = self.token_file.clone();
        }
        set!(c.registration.allowed_networks, self.allowed_networks);
        set!(c.registration.max_backends, self.max_backends);
        set!(c.registration.protect_reads, self.protect_reads);
        set!(c.registration.kubernetes_auth, self.kubernetes_auth);
        set!(c.registration.rate_limit, self.rate_limit);
        set!(c.registration.rate_limit_burst, self.rate_limit_burst);
        self.proxy_limits.apply(&mut c.lb.proxy_limits);
        self.control_limits.apply(&mut c.lb.control_limits);
        set!(c.lb.h2c, self.h2c);
        set!(c.lb.tls.listen, self.tls_listen);
        set!(c.lb.tls.certs, self.tls_certs);
        set!(c.lb.upstream_protocol, self.upstream_protocol);
        set!(c.lb.websocket_idle_timeout, self.websocket_idle_timeout);
        set!(c.lb.grpc_idempotent_methods, self.grpc_idempotent_methods);
    }
}

#[cfg(test)]
mod tests {
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
}
