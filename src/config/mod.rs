//! The configuration: one YAML file (`--config`), flags and `ROSTER_*`
//! environment variables, merged with precedence flag > env > file > default.
//!
//! The seed's keys (`discovery:`, `health_check:`) are accepted verbatim;
//! SPEC.md adds `lb:`, `registration:` and `agent:`. Unknown keys are an
//! error that names the key. `roster schema` prints the JSON Schema of
//! [`Config`](crate::config::Config).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use limits::{ControlLimits, ProxyLimits, VitalsLimits};

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
    /// A route is refused; `route` names it (`routes[2] "api"`).
    #[error("invalid {route}: {message}")]
    Route { route: String, message: String },
    /// A `services:` entry is refused.
    #[error("invalid `services.{service}`: {message}")]
    Service { service: String, message: String },
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
    /// Routing: which service a request goes to, by Host and path prefix.
    /// The most specific match wins; reloaded from the file on change.
    pub routes: Vec<RouteConfig>,
    /// Per-service overrides of the LB's defaults, by service name.
    #[schemars(extend("propertyNames" = {"pattern": "^[A-Za-z0-9._-]{1,253}$"}))]
    pub services: std::collections::BTreeMap<String, ServiceConfig>,
    /// The file this came from and the text it was read from (not a key):
    /// the LB watches it for route changes and checks reloads against it.
    #[serde(skip)]
    #[schemars(skip)]
    pub source: Option<Source>,
}

/// A config file as it was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub text: std::sync::Arc<str>,
}

/// `health_check:` — read by the LB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Time between two checks of one backend.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "health_check.interval", required = false, value_name = "INTERVAL", long = "health-interval", env = env::HEALTH_INTERVAL, value_parser = parse_duration)]
    pub interval: Duration,
    /// Time allowed for one check.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "health_check.timeout", required = false, value_name = "TIMEOUT", long = "health-timeout", env = "ROSTER_HEALTH_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Path of the JSON vitals on the backend's metrics port.
    #[arg(
        id = "health_check.path",
        required = false,
        value_name = "PATH",
        long = "health-path",
        env = "ROSTER_HEALTH_PATH"
    )]
    pub path: String,
    /// Consecutive failures before a backend leaves the pool.
    #[arg(
        id = "health_check.unhealthy_threshold",
        required = false,
        value_name = "UNHEALTHY_THRESHOLD",
        long = "unhealthy-threshold",
        env = "ROSTER_UNHEALTHY_THRESHOLD"
    )]
    pub unhealthy_threshold: u32,
    /// Consecutive successes before it re-enters the pool.
    #[arg(
        id = "health_check.healthy_threshold",
        required = false,
        value_name = "HEALTHY_THRESHOLD",
        long = "healthy-threshold",
        env = "ROSTER_HEALTHY_THRESHOLD"
    )]
    pub healthy_threshold: u32,
    /// Maximum number of checks in flight at once.
    #[arg(
        id = "health_check.concurrency",
        required = false,
        value_name = "CONCURRENCY",
        long = "health-concurrency",
        env = "ROSTER_HEALTH_CONCURRENCY"
    )]
    pub concurrency: usize,
    /// Percent of checked, non-draining backends that must be healthy;
    /// below it the LB routes to every one that is not `ready:false`
    /// rather than overload the few left (panic mode). A backend not
    /// checked yet counts neither way. 0 disables.
    #[arg(
        id = "health_check.panic_threshold",
        required = false,
        value_name = "PANIC_THRESHOLD",
        long = "panic-threshold",
        env = "ROSTER_PANIC_THRESHOLD"
    )]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// Proxy (client traffic) listen address.
    #[schemars(with = "String")]
    #[arg(
        id = "lb.listen",
        required = false,
        value_name = "LISTEN",
        long = "listen",
        env = "ROSTER_LISTEN"
    )]
    pub listen: SocketAddr,
    /// Control API listen address.
    #[schemars(with = "String")]
    #[arg(
        id = "lb.control_listen",
        required = false,
        value_name = "CONTROL_LISTEN",
        long = "control-listen",
        env = "ROSTER_CONTROL_LISTEN"
    )]
    pub control_listen: SocketAddr,
    /// Proxy worker threads; null = number of cores.
    #[arg(
        id = "lb.threads",
        required = false,
        value_name = "THREADS",
        long = "threads",
        env = "ROSTER_THREADS"
    )]
    pub threads: Option<usize>,
    /// Backend selection algorithm.
    #[arg(
        id = "lb.algorithm",
        required = false,
        value_name = "ALGORITHM",
        long = "algorithm",
        env = "ROSTER_ALGORITHM"
    )]
    pub algorithm: Algorithm,
    /// How `least_loaded` scores a backend: weights of this LB's in-flight
    /// requests, the backend's reported load and its GPU usage, e.g.
    /// `in_flight=4,reported=1,gpu=0.5,latency=3` (the score is
    /// `(load + 1) × max(1, ewma / (2 × fastest)) ^ latency`, see docs/load-balancer.md).
    #[arg(
        id = "lb.load_score",
        required = false,
        value_name = "LOAD_SCORE",
        long = "load-score",
        env = "ROSTER_LOAD_SCORE"
    )]
    pub load_score: LoadScore,
    /// Request header whose value keys `consistent_hash`.
    #[arg(
        id = "lb.hash_header",
        required = false,
        value_name = "HASH_HEADER",
        long = "hash-header",
        env = "ROSTER_HASH_HEADER"
    )]
    pub hash_header: String,
    /// Time given to in-flight requests on SIGTERM.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.grace_period", required = false, value_name = "GRACE_PERIOD", long = "grace-period", env = "ROSTER_GRACE_PERIOD", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// Time allowed to connect to a backend.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.connect_timeout", required = false, value_name = "CONNECT_TIMEOUT", long = "connect-timeout", env = "ROSTER_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed between two reads from a backend.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.read_timeout", required = false, value_name = "READ_TIMEOUT", long = "read-timeout", env = "ROSTER_READ_TIMEOUT", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Idle upstream connections are closed after this long.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.idle_timeout", required = false, value_name = "IDLE_TIMEOUT", long = "idle-timeout", env = "ROSTER_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Idle upstream connections kept for reuse, across all backends. Round
    /// robin over N backends reuses connections only if this is ≥ N: the
    /// default covers 10,000 backends with room (bench part 2: 1,024 made
    /// one new connection per request at 10,000). An idle connection costs
    /// the LB ~5 KB and closes after `idle_timeout`.
    #[arg(
        id = "lb.keepalive_pool_size",
        required = false,
        value_name = "KEEPALIVE_POOL_SIZE",
        long = "keepalive-pool-size",
        env = "ROSTER_KEEPALIVE_POOL_SIZE"
    )]
    pub keepalive_pool_size: usize,
    /// Other backends tried when connecting to the chosen one fails.
    #[arg(
        id = "lb.retries",
        required = false,
        value_name = "RETRIES",
        long = "retries",
        env = "ROSTER_RETRIES"
    )]
    pub retries: usize,
    /// Also retry idempotent requests (GET, HEAD, PUT, DELETE, OPTIONS...)
    /// that failed after reaching a backend, as nginx does. Non-idempotent
    /// requests are never replayed.
    #[arg(id = "lb.retry_idempotent", required = false, value_name = "RETRY_IDEMPOTENT", long = "retry-idempotent", env = "ROSTER_RETRY_IDEMPOTENT", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub retry_idempotent: bool,
    /// Consecutive connect failures or 5xx answers that eject a backend
    /// from selection before its next health check; 0 disables.
    #[arg(
        id = "lb.eject_after",
        required = false,
        value_name = "EJECT_AFTER",
        long = "eject-after",
        env = "ROSTER_EJECT_AFTER"
    )]
    pub eject_after: u32,
    /// First ejection length; doubles on each repeat, up to `max_ejection_time`.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.ejection_time", required = false, value_name = "EJECTION_TIME", long = "ejection-time", env = "ROSTER_EJECTION_TIME", value_parser = parse_duration)]
    pub ejection_time: Duration,
    /// Longest ejection: repeats double `ejection_time` up to this. A
    /// backend not ejected for twice this long starts again from
    /// `ejection_time`; at least `ejection_time`.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.max_ejection_time", required = false, value_name = "MAX_EJECTION_TIME", long = "max-ejection-time", env = "ROSTER_MAX_EJECTION_TIME", value_parser = parse_duration)]
    pub max_ejection_time: Duration,
    /// After SIGTERM, keep accepting this long with `/readyz` at 503 so
    /// Kubernetes can take the LB out of its Services first.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.shutdown_delay", required = false, value_name = "SHUTDOWN_DELAY", long = "shutdown-delay", env = "ROSTER_SHUTDOWN_DELAY", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// After start, `/readyz` says 503 until this long has passed or the
    /// registry has stabilized (every entry checked, no newcomer for two
    /// health intervals), so clients are not sent to an LB still refilling.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.warmup", required = false, value_name = "WARMUP", long = "warmup", env = "ROSTER_WARMUP", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Service of registrations that name none, and of requests no route
    /// matches; "" = none (such registrations are refused, such requests
    /// get 404 `{"error": "no route"}`).
    #[arg(
        id = "lb.default_service",
        required = false,
        value_name = "DEFAULT_SERVICE",
        long = "default-service",
        env = "ROSTER_DEFAULT_SERVICE"
    )]
    pub default_service: String,
    /// Bounds on the proxy port's client connections.
    #[command(flatten)]
    pub proxy_limits: ProxyLimits,
    /// Bounds on the control API's connections.
    #[command(flatten)]
    pub control_limits: ControlLimits,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plaintext `listen`
    /// port, beside HTTP/1.1 (told apart by the h2 preface).
    #[arg(id = "lb.h2c", required = false, value_name = "H2C", long = "h2c", env = "ROSTER_H2C", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub h2c: bool,
    /// TLS termination (a second listener, when certificates are given).
    #[command(flatten)]
    pub tls: TlsConfig,
    /// What backends speak unless their registration says otherwise.
    #[arg(
        id = "lb.upstream_protocol",
        required = false,
        value_name = "UPSTREAM_PROTOCOL",
        long = "upstream-protocol",
        env = "ROSTER_UPSTREAM_PROTOCOL"
    )]
    pub upstream_protocol: crate::protocol::Protocol,
    /// An upgraded connection (WebSocket) is closed after this long with
    /// no data from one side; `read_timeout` does not apply to it.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "lb.websocket_idle_timeout", required = false, value_name = "WEBSOCKET_IDLE_TIMEOUT", long = "websocket-idle-timeout", env = "ROSTER_WEBSOCKET_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub websocket_idle_timeout: Duration,
    /// gRPC methods (`/pkg.Service/Method`) safe to replay on another
    /// backend after a failure; other gRPC calls are retried only when
    /// they never reached a backend.
    #[arg(
        id = "lb.grpc_idempotent_methods",
        required = false,
        value_name = "GRPC_IDEMPOTENT_METHODS",
        long = "grpc-idempotent-methods",
        env = "ROSTER_GRPC_IDEMPOTENT_METHODS",
        value_delimiter = ','
    )]
    pub grpc_idempotent_methods: Vec<String>,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8000).into(),
            control_listen: ([0, 0, 0, 0], 8080).into(),
            threads: None,
            algorithm: Algorithm::RoundRobin,
            load_score: Default::default(),
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
            default_service: "default".into(),
            proxy_limits: ProxyLimits::default(),
            control_limits: ControlLimits::default(),
            h2c: true,
            tls: TlsConfig::default(),
            upstream_protocol: crate::protocol::Protocol::Http1,
            websocket_idle_timeout: Duration::from_secs(3600),
            grpc_idempotent_methods: Vec::new(),
        }
    }
}

/// `registration:` — who may register what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// An entry not renewed within this time leaves the registry.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "registration.lease_ttl", required = false, value_name = "LEASE_TTL", long = "lease-ttl", env = "ROSTER_LEASE_TTL", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// File holding the bearer token agents must send; null = open.
    #[arg(
        id = "registration.token_file",
        required = false,
        value_name = "TOKEN_FILE",
        long = "token-file",
        env = "ROSTER_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// CIDRs a registered address must fall in.
    #[arg(
        id = "registration.allowed_networks",
        required = false,
        value_name = "ALLOWED_NETWORKS",
        long = "allowed-networks",
        env = "ROSTER_ALLOWED_NETWORKS",
        value_delimiter = ','
    )]
    pub allowed_networks: Vec<String>,
    /// Registrations beyond this many distinct ids get 429 (≤ 65535).
    #[arg(
        id = "registration.max_backends",
        required = false,
        value_name = "MAX_BACKENDS",
        long = "max-backends",
        env = "ROSTER_MAX_BACKENDS"
    )]
    pub max_backends: usize,
    /// Require the token (or a Kubernetes identity) for `/backends`,
    /// `/registry`, `/telemetry` and the dashboard too.
    #[arg(id = "registration.protect_reads", required = false, value_name = "PROTECT_READS", long = "protect-reads", env = "ROSTER_PROTECT_READS", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub protect_reads: bool,
    /// Validate agents' projected ServiceAccount tokens with a TokenReview
    /// and accept only the registering pod's own IP.
    #[arg(id = "registration.kubernetes_auth", required = false, value_name = "KUBERNETES_AUTH", long = "kubernetes-auth", env = "ROSTER_KUBERNETES_AUTH", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kubernetes_auth: bool,
    /// Audience the ServiceAccount tokens must be issued for.
    #[arg(
        id = "registration.token_audience",
        required = false,
        value_name = "TOKEN_AUDIENCE",
        long = "token-audience",
        env = "ROSTER_TOKEN_AUDIENCE"
    )]
    pub token_audience: String,
    /// Control API requests per second per source IP; 0 = unlimited.
    #[arg(
        id = "registration.rate_limit",
        required = false,
        value_name = "RATE_LIMIT",
        long = "rate-limit",
        env = "ROSTER_RATE_LIMIT"
    )]
    pub rate_limit: u32,
    /// Burst above `rate_limit` a source may send at once.
    #[arg(
        id = "registration.rate_limit_burst",
        required = false,
        value_name = "RATE_LIMIT_BURST",
        long = "rate-limit-burst",
        env = "ROSTER_RATE_LIMIT_BURST"
    )]
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

impl Config {
    /// Parse YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        // An empty file is an empty mapping at start, not an error (a
        // reload refuses it: see [`reload`]).
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
                let mut c = Self::from_yaml(&text, p)?;
                c.source = Some(Source {
                    path: p.to_path_buf(),
                    text: text.into(),
                });
                Ok(c)
            }
        }
    }
}

mod agent;
mod args;
mod duration;
pub mod env;
pub mod limits;
mod load_score;
pub mod reload;
mod services;
#[cfg(test)]
mod tests;
mod tls;
mod upstream_tls;
mod validate;

pub use agent::{AgentConfig, DiscoveryConfig, ResourceMode};
pub use args::{AgentSections, ConfigArgs, LbArgs, LbSections, Overlay, Sections};
pub use duration::{DURATION_UNITS, duration_pattern, duration_schema, parse_duration};
pub use load_score::LoadScore;
pub use services::{
    CheckSpec, RouteConfig, ServiceCheckConfig, ServiceConfig, ServiceSpec, ServiceSpecs,
};
pub use tls::{CertPair, TlsConfig};
pub use upstream_tls::{TlsSetting, UpstreamTls};
