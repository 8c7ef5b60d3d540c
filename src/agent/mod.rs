//! `roster agent` and the embeddable agent library.
//!
//! The agent is what every backend runs beside it (a sidecar) or inside it
//! (a Rust backend embedding this module). It
//! - announces `POST /register` to **every** address each
//!   `discovery.load_balancers` entry resolves to, at once on start and then
//!   every `announce_interval` ±10%, each LB address on its own task with its
//!   own backoff ([`announce`](crate::agent::announce));
//! - serves the vitals port ([`vitals`](crate::agent::vitals)): `GET /metrics` (JSON vitals),
//!   `GET /telemetry` (Prometheus), `GET /healthz`, and `POST /drain`
//!   (loopback callers only);
//! - drains on SIGTERM or `roster agent drain` ([`drain`](crate::agent::drain)): `ready` goes
//!   false at once, `DELETE /register/{id}` goes to every LB address, vitals
//!   keep being served as not-ready, and it ends after `agent.drain_period`,
//!   or sooner once every LB confirmed and one LB health interval passed.
//!
//! # Embedding
//! ```no_run
//! use axum::{Router, routing::get};
//! use roster::agent::Agent;
//! use roster::config::Config;
//!
//! # async fn app() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::default();
//! config.discovery.load_balancers = vec!["lb1:8080".into(), "lb2:8080".into()];
//! config.agent.id = Some("backend-1".into());
//! config.agent.address = Some("10.0.1.5:3000".into());
//!
//! // Binds the vitals port (9090) and starts announcing on this runtime.
//! let agent = Agent::from_config(&config)?
//!     .version(env!("CARGO_PKG_VERSION"))
//!     .spawn()
//!     .await?;
//! agent.drain_on_signals()?; // SIGTERM/SIGINT: ready=false, deregister, drain
//!
//! // The layer counts requests in flight and 5xx answers into the vitals.
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(agent.layer());
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! // Keep serving while the LBs let go; stop once the drain is done.
//! let drained = agent.clone();
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move { drained.drained().await; })
//!     .await?;
//! # Ok(()) }
//! ```
//! Counters that no layer sees are set by hand: [`AgentHandle::in_flight`](crate::agent::AgentHandle::in_flight)
//! (a guard), [`AgentHandle::failed_response`](crate::agent::AgentHandle::failed_response),
//! [`AgentHandle::set_connected_peers`](crate::agent::AgentHandle::set_connected_peers), [`AgentHandle::set_backoff_requests`](crate::agent::AgentHandle::set_backoff_requests).

pub mod announce;
pub mod drain;
pub mod layer;
pub mod probe;
pub mod resources;
pub mod vitals;

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use parking_lot::Mutex;

use crate::config::{Config, ConfigError, ResourceMode};
use crate::protocol::{Registration, Vitals};
pub use drain::DrainReport;
pub use layer::{Counters, InFlight, VitalsLayer, VitalsService};
pub use probe::AppHealth;

/// What can go wrong running the agent or talking to it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("http client: {0}")]
    Http(String),
    #[error("no roster agent answers on {url}: {message}")]
    NoAgent { url: String, message: String },
    #[error("the agent at {url} refused to drain: {message}")]
    DrainRefused { url: String, message: String },
    #[error("interrupted during the drain")]
    Interrupted,
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn invalid(field: &'static str, message: impl Into<String>) -> AgentError {
    AgentError::Config(ConfigError::Invalid {
        field,
        message: message.into(),
    })
}

/// `roster agent` flags: every key of `discovery:` and `agent:`, and
/// `health_check.interval` (see each field for its flag and `ROSTER_*`
/// variable: the sidecar's contract).
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub overlay: crate::config::Overlay<crate::config::AgentSections>,
    /// Print the merged configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl AgentArgs {
    /// File (or defaults), then flags/env on top. [`Settings::from_config`]
    /// validates.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        self.overlay.load()
    }
}

/// `roster agent [drain]`.
#[derive(Debug, Clone, Args)]
pub struct AgentCommand {
    #[command(subcommand)]
    pub command: Option<AgentSubcommand>,
    #[command(flatten)]
    pub args: AgentArgs,
}

/// `roster agent [drain]` as a program, run by both `roster agent` and the
/// lean `roster-agent` binary (the sidecar: it carries no proxy code, so
/// it maps less).
pub fn cli(cmd: AgentCommand) -> anyhow::Result<()> {
    use crate::current_thread;
    use anyhow::Context;
    match &cmd.command {
        Some(AgentSubcommand::Drain(d)) => {
            let target = d
                .resolve()
                .context("roster agent drain: bad configuration")?;
            let report = current_thread()?
                .block_on(drain::request(&target))
                .context("roster agent drain")?;
            println!(
                "drained in {:.1}s: {} LB(s) confirmed{}",
                report.seconds,
                report.confirmed.len(),
                if report.unconfirmed.is_empty() {
                    String::new()
                } else {
                    format!(", no answer from {}", report.unconfirmed.join(", "))
                }
            );
        }
        None => {
            let config = cmd
                .args
                .resolve()
                .context("roster agent: bad configuration")?;
            if cmd.args.print_config {
                print!("{}", serde_yaml::to_string(&config)?);
                return Ok(());
            }
            // One thread: the agent is small and mostly idle.
            current_thread()?
                .block_on(run(config))
                .context("roster agent")?;
        }
    }
    Ok(())
}

/// Subcommands of `roster agent`.
#[derive(Debug, Clone, Subcommand)]
pub enum AgentSubcommand {
    /// Tell the local agent to drain (ready=false, deregister from every LB)
    /// and return once it is done: the preStop hook.
    Drain(drain::DrainArgs),
}

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
    pub vitals_limits: crate::limits::Limits,
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
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let d = &c.discovery;
        let load_balancers: Vec<String> = d
            .load_balancers
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
        if c.health_check.interval.is_zero() {
            return Err(invalid("health_check.interval", "must be more than 0"));
        }
        let a = &c.agent;
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
        let metrics_listen: IpAddr = a.metrics_listen.trim().parse().map_err(|_| {
            invalid(
                "agent.metrics_listen",
                format!("{:?} is not an IP", a.metrics_listen),
            )
        })?;
        let app_health = match a.app_health.as_deref() {
            None | Some("") => AppHealth::Tcp(address.to_string()),
            Some(s) => s
                .parse()
                .map_err(|e: String| invalid("agent.app_health", e))?,
        };
        let app_vitals = a.app_vitals.clone().filter(|s| !s.is_empty());
        if let Some(u) = &app_vitals
            && !u.starts_with("http://")
        {
            return Err(invalid(
                "agent.app_vitals",
                format!("{u:?}: not an http:// URL"),
            ));
        }
        let vitals_limits = a.vitals_limits.get();
        crate::limits::validate("agent.vitals_limits", &vitals_limits)?;
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

/// State shared by the announcer, the vitals server and the handle.
pub(crate) struct Shared {
    pub settings: Settings,
    /// The `POST /register` body (with the bound vitals port).
    pub registration: Registration,
    pub metrics_addr: SocketAddr,
    pub counters: Arc<Counters>,
    pub started: Instant,
    /// Client for the LBs: no proxy, no pooled connections (one announce
    /// every interval does not need them, and a restarted LB never meets a
    /// stale one).
    pub client: reqwest::Client,
    pub sources: probe::Sources,
    pub sampler: Mutex<resources::Sampler>,
    pub metrics: vitals::AgentMetrics,
    pub drain: drain::DrainState,
    /// A missing registration token, reported in the vitals.
    pub token: announce::TokenState,
}

impl Shared {
    /// The vitals right now.
    pub async fn vitals(&self) -> Vitals {
        let observed = self.sources.observe().await;
        let res = self.sampler.lock().sample();
        vitals::merge(vitals::Inputs {
            id: &self.settings.id,
            version: &self.settings.version,
            draining: self.drain.is_draining(),
            counters: self.counters.snapshot(),
            app_healthy: observed.app_healthy,
            app: observed.app.as_ref(),
            resources: res,
            uptime: self.started.elapsed(),
            blocked: self.token.problem(),
        })
    }
}

pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, AgentError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(0)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("roster-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AgentError::Http(e.to_string()))
}

/// An agent ready to start: [`Agent::spawn`] binds the vitals port and
/// starts announcing.
pub struct Agent {
    settings: Settings,
}

impl Agent {
    pub fn new(settings: Settings) -> Self {
        Self { settings }
    }

    /// Validate `config` (see [`Settings::from_config`]).
    pub fn from_config(config: &Config) -> Result<Self, AgentError> {
        Settings::from_config(config).map(Self::new)
    }

    /// The `version` the vitals report (default: roster's version).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.settings.version = version.into();
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Bind the vitals port, then start the vitals server, the announcers
    /// and the drain coordinator on the current tokio runtime.
    pub async fn spawn(self) -> Result<AgentHandle, AgentError> {
        let s = self.settings;
        // Idle clients of the vitals port must never leave the agent without
        // a descriptor for its own probe and announcer: a quarter at most.
        let fd_limit = crate::limits::raise_fd_limit();
        let mut vitals_limits = s.vitals_limits;
        vitals_limits.max_connections =
            crate::limits::budget("vitals", vitals_limits.max_connections, fd_limit, 0.25);
        let bind = SocketAddr::new(s.metrics_listen, s.metrics_port);
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| AgentError::Bind { addr: bind, source })?;
        let metrics_addr = listener.local_addr()?;
        let mode = s.resources;
        let sampler = tokio::task::spawn_blocking(move || resources::Sampler::new(mode))
            .await
            .map_err(|e| AgentError::Io(io::Error::other(e)))?;
        let registration = Registration {
            id: s.id.clone(),
            address: s.address.to_string(),
            metrics_port: metrics_addr.port(),
            weight: 1,
            service: s.service.clone(),
            protocol: s.app_protocol,
        };
        let client = http_client(announce::request_timeout(s.announce_interval))?;
        let sources = probe::Sources::new(s.app_health.clone(), s.app_vitals.clone())?;
        let metrics = vitals::AgentMetrics::new(&s.version);
        tracing::info!(
            id = %s.id,
            address = %s.address,
            vitals = %metrics_addr,
            load_balancers = ?s.load_balancers,
            interval = ?s.announce_interval,
            app_health = %s.app_health,
            resources = %sampler.describe(),
            "roster agent starting"
        );
        let shared = Arc::new(Shared {
            settings: s,
            registration,
            metrics_addr,
            counters: Arc::new(Counters::default()),
            started: Instant::now(),
            client,
            sources,
            sampler: Mutex::new(sampler),
            metrics,
            drain: drain::DrainState::new(),
            token: announce::TokenState::default(),
        });
        let table = crate::limits::ConnTable::new("vitals", vitals_limits);
        tokio::spawn(vitals::serve(listener, table, Arc::clone(&shared)));
        let announcer = tokio::spawn(announce::run(Arc::clone(&shared)));
        tokio::spawn(drain::coordinate(Arc::clone(&shared), announcer));
        Ok(AgentHandle { shared })
    }
}

/// A running agent. Cheap to clone; the counters feed the vitals.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
}

impl AgentHandle {
    pub fn id(&self) -> &str {
        &self.shared.settings.id
    }

    /// Where the vitals server listens.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.shared.metrics_addr
    }

    /// The counters behind `requests_in_progress`, `failed_responses`,
    /// `connected_peers` and `backoff_requests`.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    /// Count one request in progress until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.shared.counters.in_flight()
    }

    /// Count one failed response.
    pub fn failed_response(&self) {
        self.shared.counters.failed_response();
    }

    pub fn set_connected_peers(&self, n: u32) {
        self.shared.counters.set_connected_peers(n);
    }

    pub fn set_backoff_requests(&self, n: u32) {
        self.shared.counters.set_backoff_requests(n);
    }

    /// The app's own readiness latch (default true); `ready` is also false
    /// while the health probe fails or the agent drains.
    pub fn set_ready(&self, ready: bool) {
        self.shared.counters.set_ready(ready);
    }

    /// A tower layer counting in-flight requests and 5xx answers.
    pub fn layer(&self) -> VitalsLayer {
        VitalsLayer::new(Arc::clone(&self.shared.counters))
    }

    /// The vitals `GET /metrics` would answer now.
    pub async fn vitals(&self) -> Vitals {
        self.shared.vitals().await
    }

    /// Start draining (idempotent); see [`drain`].
    pub fn start_drain(&self) {
        self.shared.drain.start();
    }

    pub fn is_draining(&self) -> bool {
        self.shared.drain.is_draining()
    }

    /// Start draining and wait until it is done.
    pub async fn drain(&self) -> DrainReport {
        self.start_drain();
        self.drained().await
    }

    /// Wait until a drain (started by anyone) is done and the vitals server
    /// has answered its last `/drain` caller.
    pub async fn drained(&self) -> DrainReport {
        self.shared.drain.finished().await
    }

    /// Drain on SIGTERM or SIGINT (Ctrl-C).
    pub fn drain_on_signals(&self) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if me.is_draining() {
                    tracing::info!(signal = name, "already draining");
                } else {
                    tracing::info!(signal = name, "draining");
                    me.start_drain();
                }
            }
        });
        Ok(())
    }
}

/// `roster agent`: run until drained (SIGTERM, SIGINT or `roster agent
/// drain`). A second signal during the drain stops at once.
pub async fn run(config: Config) -> Result<(), AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut settings = Settings::from_config(&config)?;
    if settings.resources == ResourceMode::Auto {
        // A sidecar's own cgroup is its container, not the app's: report
        // the host unless told otherwise.
        settings.resources = ResourceMode::Host;
    }
    let agent = Agent::new(settings).spawn().await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let drained = agent.drained();
    tokio::pin!(drained);
    let mut signals = 0;
    loop {
        let name = tokio::select! {
            report = &mut drained => {
                tracing::info!(
                    confirmed = report.confirmed.len(),
                    unconfirmed = ?report.unconfirmed,
                    seconds = report.seconds,
                    "drained: exiting"
                );
                return Ok(());
            }
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        signals += 1;
        if signals > 1 {
            tracing::warn!(
                signal = name,
                "second signal: stopping without finishing the drain"
            );
            return Err(AgentError::Interrupted);
        }
        tracing::info!(signal = name, "draining");
        agent.start_drain();
    }
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
