//! Listener limits as configured: one section per listener (`lb.proxy_limits`,
//! `lb.control_limits`, `agent.vitals_limits`, the webhook's flags), each
//! declared once by `listener_limits!` with its keys, flags, env vars and
//! defaults. [`crate::limits`] enforces them.

use std::time::Duration;

use super::ConfigError;

/// The effective bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole request head, from accept or from its first byte.
    pub header_timeout: Duration,
    /// Wait for the next piece of a request body, or for the client to take
    /// the next piece of the answer.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in progress.
    pub idle_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
}

/// Declares one listener's limits section: the config type (serde, schema,
/// defaults) and its flags (`--<prefix>header-timeout`...), once.
macro_rules! listener_limits {
    (
        $(#[$doc:meta])*
        $name:ident, $args:ident, flags: $flag:literal, env: $env:literal,
        header: $h:expr, body: $b:expr, idle: $i:expr, max: $m:expr
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, clap::Args)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Longest time for a whole request head (from accept, or from
            /// the first byte after an idle spell); then 408 and close.
            #[serde(with = "humantime_serde")]
            #[schemars(schema_with = "crate::config::duration_schema")]
            #[arg(required = false, id = concat!($flag, "header-timeout"), long = concat!($flag, "header-timeout"),
                  env = concat!($env, "HEADER_TIMEOUT"), value_parser = crate::config::parse_duration)]
            pub header_timeout: Duration,
            /// Longest wait for the next piece of a request body, or for the
            /// client to take the next piece of the answer; then close.
            #[serde(with = "humantime_serde")]
            #[schemars(schema_with = "crate::config::duration_schema")]
            #[arg(required = false, id = concat!($flag, "body-timeout"), long = concat!($flag, "body-timeout"),
                  env = concat!($env, "BODY_TIMEOUT"), value_parser = crate::config::parse_duration)]
            pub body_timeout: Duration,
            /// A keep-alive connection with no request is closed after this.
            #[serde(with = "humantime_serde")]
            #[schemars(schema_with = "crate::config::duration_schema")]
            #[arg(required = false, id = concat!($flag, "idle-timeout"), long = concat!($flag, "idle-timeout"),
                  env = concat!($env, "IDLE_TIMEOUT"), value_parser = crate::config::parse_duration)]
            pub idle_timeout: Duration,
            /// Open connections at once (also capped by a share of the
            /// open-file limit); a newcomer beyond it evicts the oldest idle
            /// or slow one, or is refused when all are busy.
            #[arg(required = false, id = concat!($flag, "max-connections"), long = concat!($flag, "max-connections"),
                  env = concat!($env, "MAX_CONNECTIONS"))]
            pub max_connections: usize,
        }

        impl Default for $name {
            fn default() -> Self {
                Self { header_timeout: $h, body_timeout: $b, idle_timeout: $i, max_connections: $m }
            }
        }

        impl $name {
            /// The plain bounds.
            pub fn get(&self) -> Limits {
                Limits {
                    header_timeout: self.header_timeout,
                    body_timeout: self.body_timeout,
                    idle_timeout: self.idle_timeout,
                    max_connections: self.max_connections,
                }
            }
        }

        /// The same flags as plain options, for a command without a config
        /// file (the webhook).
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $args {
            #[arg(required = false, id = concat!($flag, "header-timeout"), long = concat!($flag, "header-timeout"),
                  env = concat!($env, "HEADER_TIMEOUT"), value_parser = crate::config::parse_duration,
                  help = "Longest time for a whole request head")]
            pub header_timeout: Option<Duration>,
            #[arg(required = false, id = concat!($flag, "body-timeout"), long = concat!($flag, "body-timeout"),
                  env = concat!($env, "BODY_TIMEOUT"), value_parser = crate::config::parse_duration,
                  help = "Longest wait for the next piece of a body, either way")]
            pub body_timeout: Option<Duration>,
            #[arg(required = false, id = concat!($flag, "idle-timeout"), long = concat!($flag, "idle-timeout"),
                  env = concat!($env, "IDLE_TIMEOUT"), value_parser = crate::config::parse_duration,
                  help = "Idle keep-alive connections are closed after this")]
            pub idle_timeout: Option<Duration>,
            #[arg(required = false, id = concat!($flag, "max-connections"), long = concat!($flag, "max-connections"),
                  env = concat!($env, "MAX_CONNECTIONS"),
                  help = "Open connections at once")]
            pub max_connections: Option<usize>,
        }

        impl $args {
            /// Overlay the flags that were given.
            pub fn apply(&self, l: &mut $name) {
                if let Some(v) = self.header_timeout { l.header_timeout = v; }
                if let Some(v) = self.body_timeout { l.body_timeout = v; }
                if let Some(v) = self.idle_timeout { l.idle_timeout = v; }
                if let Some(v) = self.max_connections { l.max_connections = v; }
            }
        }
    };
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

listener_limits!(
    /// `lb.proxy_limits`: the proxy port (client traffic).
    ProxyLimits, ProxyLimitArgs, flags: "proxy-", env: "ROSTER_PROXY_",
    header: secs(10), body: secs(60), idle: secs(60), max: 50_000
);
listener_limits!(
    /// `lb.control_limits`: the control API (agents, operators, probes).
    ControlLimits, ControlLimitArgs, flags: "control-", env: "ROSTER_CONTROL_",
    header: secs(10), body: secs(10), idle: secs(30), max: 4096
);
listener_limits!(
    /// `agent.vitals_limits`: the agent's vitals port. The idle timeout
    /// must outlast the LBs' pooled check connections (2 × interval).
    VitalsLimits, VitalsLimitArgs, flags: "vitals-", env: "ROSTER_VITALS_",
    header: secs(5), body: secs(5), idle: secs(60), max: 256
);
listener_limits!(
    /// The webhook's HTTPS port (`roster inject`; the head deadline covers
    /// the TLS handshake).
    WebhookLimits, WebhookLimitArgs, flags: "", env: "ROSTER_",
    header: secs(10), body: secs(10), idle: secs(60), max: 1024
);

/// Problems with a limits section, naming the key.
pub fn validate(field: &'static str, l: &Limits) -> Result<(), ConfigError> {
    let bad = |what: &str| ConfigError::Invalid {
        field,
        message: format!("{what} must be more than 0"),
    };
    if l.header_timeout.is_zero() {
        return Err(bad("header_timeout"));
    }
    if l.body_timeout.is_zero() {
        return Err(bad("body_timeout"));
    }
    if l.max_connections == 0 {
        return Err(bad("max_connections"));
    }
    Ok(())
}
