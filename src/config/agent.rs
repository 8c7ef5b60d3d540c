//! `discovery:` and `agent:`: the sections the agent reads.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{VitalsLimits, duration_schema, parse_duration};

/// `discovery:` — read by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// LB control addresses (`host:port`); each is resolved through DNS on
    /// every announce and every address it resolves to is announced to.
    #[arg(
        id = "discovery.load_balancers",
        required = false,
        value_name = "LOAD_BALANCERS",
        long = "discovery-lb",
        env = super::env::DISCOVERY_LB,
        value_delimiter = ','
    )]
    pub load_balancers: Vec<String>,
    /// Heartbeat period (humantime, e.g. "30s"); ±10% jitter is applied.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "discovery.announce_interval", required = false, value_name = "ANNOUNCE_INTERVAL", long = "announce-interval", env = super::env::ANNOUNCE_INTERVAL, value_parser = parse_duration)]
    pub announce_interval: Duration,
    /// Port of the vitals server (`/metrics`, `/telemetry`).
    #[arg(
        id = "discovery.metrics_port",
        required = false,
        value_name = "METRICS_PORT",
        long = "metrics-port",
        env = super::env::METRICS_PORT
    )]
    pub metrics_port: u16,
    /// The service this backend serves, announced with every registration;
    /// null = the LB's `lb.default_service`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(
        id = "discovery.service",
        required = false,
        value_name = "SERVICE",
        long = "service",
        env = super::env::SERVICE
    )]
    pub service: Option<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            load_balancers: vec!["127.0.0.1:8080".into()],
            announce_interval: Duration::from_secs(30),
            metrics_port: 9090,
            service: None,
        }
    }
}

/// `agent:` — the agent's identity and vitals server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Backend id; default `$POD_NAME`, else the hostname.
    #[arg(
        id = "agent.id",
        required = false,
        value_name = "ID",
        long = "id",
        env = "ROSTER_ID"
    )]
    pub id: Option<String>,
    /// Address announced for traffic; default `$POD_IP:$ROSTER_APP_PORT`.
    #[arg(
        id = "agent.address",
        required = false,
        value_name = "ADDRESS",
        long = "address",
        env = "ROSTER_ADDRESS"
    )]
    pub address: Option<String>,
    /// Address the vitals server binds (on `discovery.metrics_port`).
    #[arg(
        id = "agent.metrics_listen",
        required = false,
        value_name = "METRICS_LISTEN",
        long = "metrics-listen",
        env = "ROSTER_METRICS_LISTEN"
    )]
    pub metrics_listen: String,
    /// File holding the bearer token sent to the LBs; re-read on every
    /// announce and deregistration.
    #[arg(
        id = "agent.token_file",
        required = false,
        value_name = "TOKEN_FILE",
        long = "token-file",
        env = super::env::TOKEN_FILE
    )]
    pub token_file: Option<PathBuf>,
    /// The app's port: the default address is `$POD_IP:<app_port>`.
    #[arg(
        id = "agent.app_port",
        required = false,
        value_name = "APP_PORT",
        long = "app-port",
        env = super::env::APP_PORT
    )]
    pub app_port: Option<u16>,
    /// How `ready` is decided: `http://127.0.0.1:3000/healthz` (2xx),
    /// `tcp:3000` or `tcp:HOST:PORT` (connect), `none` (always);
    /// null = TCP connect to `address`.
    #[arg(
        id = "agent.app_health",
        required = false,
        value_name = "APP_HEALTH",
        long = "app-health",
        env = super::env::APP_HEALTH
    )]
    pub app_health: Option<String>,
    /// URL of a JSON document in the vitals' shape that the app serves; the
    /// fields it has are merged into the agent's vitals.
    #[arg(
        id = "agent.app_vitals",
        required = false,
        value_name = "APP_VITALS",
        long = "app-vitals",
        env = "ROSTER_APP_VITALS"
    )]
    pub app_vitals: Option<String>,
    /// Longest time a drain (SIGTERM, `roster agent drain`) lasts before the
    /// agent exits; it exits sooner once every LB confirmed the removal and
    /// not-ready has been served for one `health_check.interval`.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    #[arg(id = "agent.drain_period", required = false, value_name = "DRAIN_PERIOD", long = "drain-period", env = super::env::DRAIN_PERIOD, value_parser = parse_duration)]
    pub drain_period: Duration,
    /// Where `cpu_usage` and `memory_usage` come from.
    #[arg(
        id = "agent.resources",
        required = false,
        value_name = "RESOURCES",
        long = "resources",
        env = "ROSTER_RESOURCES"
    )]
    pub resources: ResourceMode,
    /// Bounds on the vitals port's connections.
    #[command(flatten)]
    pub vitals_limits: VitalsLimits,
    /// What the app speaks (http1, h2c, auto), announced in every
    /// registration; null = the LB's `lb.upstream_protocol`.
    #[arg(
        id = "agent.app_protocol",
        required = false,
        value_name = "APP_PROTOCOL",
        long = "app-protocol",
        env = super::env::APP_PROTOCOL
    )]
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
