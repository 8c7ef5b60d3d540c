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
mod settings;
pub mod vitals;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use parking_lot::Mutex;

use crate::config::{Config, ConfigError, ResourceMode};
use crate::protocol::{Registration, Vitals};
pub use drain::DrainReport;
pub use layer::{Counters, InFlight, VitalsLayer, VitalsService};
pub use probe::AppHealth;
pub use settings::{Settings, split_host_port, valid_id};

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

/// The agent's client: a fresh connection per call (announces and probes
/// are seconds apart; an idle connection would outlive an LB's restart).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, AgentError> {
    crate::fetch::client(crate::fetch::Bounds {
        idle_per_host: 0,
        user_agent: concat!("roster-agent/", env!("CARGO_PKG_VERSION")),
        ..crate::fetch::Bounds::timeout(timeout)
    })
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
        let mut signals = crate::signals::StopSignals::new()?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let name = signals.recv().await.name();
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
    let mut settings = Settings::from_config(&config)?;
    if settings.resources == ResourceMode::Auto {
        // A sidecar's own cgroup is its container, not the app's: report
        // the host unless told otherwise.
        settings.resources = ResourceMode::Host;
    }
    let agent = Agent::new(settings).spawn().await?;
    let mut signals = crate::signals::StopSignals::new()?;
    let drained = agent.drained();
    tokio::pin!(drained);
    let mut received = 0;
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
            stop = signals.recv() => stop.name(),
        };
        received += 1;
        if received > 1 {
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
