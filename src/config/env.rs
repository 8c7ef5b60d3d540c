//! The agent's environment contract: every `ROSTER_*` variable the agent
//! reads and the injector sets on the sidecar, named once. The agent's
//! flags take them in their `#[arg(env = ...)]`, the injector's patch
//! writes them, and a test checks that every variable the injector writes
//! is one the agent reads.
//!
//! Adding one: a `pub const` here, `env = env::NAME` on the config field
//! the agent reads it into, and the injector's `agent_env` writes it.

/// LB control addresses to announce to (`discovery.load_balancers`).
pub const DISCOVERY_LB: &str = "ROSTER_DISCOVERY_LB";
/// Time between two announcements (`discovery.announce_interval`).
pub const ANNOUNCE_INTERVAL: &str = "ROSTER_ANNOUNCE_INTERVAL";
/// The vitals port (`discovery.metrics_port`).
pub const METRICS_PORT: &str = "ROSTER_METRICS_PORT";
/// The service the backend registers under (`discovery.service`).
pub const SERVICE: &str = "ROSTER_SERVICE";
/// The app's traffic port (`agent.app_port`).
pub const APP_PORT: &str = "ROSTER_APP_PORT";
/// URL probed on the app to decide `ready` (`agent.app_health`).
pub const APP_HEALTH: &str = "ROSTER_APP_HEALTH";
/// What the app speaks on its port (`agent.app_protocol`).
pub const APP_PROTOCOL: &str = "ROSTER_APP_PROTOCOL";
/// How long the agent drains on SIGTERM (`agent.drain_period`).
pub const DRAIN_PERIOD: &str = "ROSTER_DRAIN_PERIOD";
/// File holding the registration token (`agent.token_file`).
pub const TOKEN_FILE: &str = "ROSTER_TOKEN_FILE";
/// The LBs' check interval, which sizes the drain (`health_check.interval`).
pub const HEALTH_INTERVAL: &str = "ROSTER_HEALTH_INTERVAL";
/// `json` for one JSON object per log line (every roster command).
pub const LOG_FORMAT: &str = "ROSTER_LOG_FORMAT";
