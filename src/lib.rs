//! roster: dead-simple service discovery for the Pingora proxy.
//!
//! Backends announce themselves to load balancers and serve a vitals port;
//! the LB keeps an in-memory registry, checks each backend's vitals, and
//! proxies only to backends that are alive and ready. The wire protocol is
//! in [`protocol`]; the binary's subcommands are thin wrappers over the
//! modules below.
#![forbid(unsafe_code)]

/// The one-thread runtime the small commands (agent, demo, status) run on.
pub fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `roster agent` and the embeddable agent library: announcer, vitals, drain.
pub mod agent;
/// Exponential backoff with jitter, for every retry schedule.
pub mod backoff;
/// The YAML file, flags and env vars, merged.
pub mod config;
/// `roster demo` and `roster demo-backend`: roster on one machine.
pub mod demo;
/// `roster docs config`: the configuration reference, from the code.
pub mod docs;
/// Outgoing HTTP: clients with shared bounds, a bounded JSON GET.
pub mod fetch;
/// Vitals health checks from one timer queue.
pub mod health;
/// The Helm chart's values, typed: `roster schema --helm`.
pub mod helm;
/// `roster inject`: the sidecar-injecting admission webhook.
pub mod inject;
pub mod label;
/// `roster lb`: pingora proxy, selection, control API.
pub mod lb;
/// Per-listener bounds: head/body/idle timeouts, connection caps, shedding.
pub mod limits;
/// Wire types: registration, vitals, registry view.
pub mod protocol;
/// Entries, leases, states and the published routable set.
pub mod registry;
/// The bounded HTTP server behind the control API, vitals port and webhook.
pub mod serve;
/// SIGTERM and SIGINT, heard alike by every command.
pub mod signals;
/// `roster status`: the registry as a table.
pub mod status;
/// Logging and the LB's Prometheus metrics.
pub mod telemetry;

/// Library errors; the binary adds context with `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("http: {0}")]
    Http(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Cert(#[from] inject::certs::CertError),
    #[error("webhook TLS bootstrap: {0}")]
    Bootstrap(#[from] inject::bootstrap::BootstrapError),
    #[error("lb.tls: {0}")]
    Tls(#[from] lb::tls::TlsError),
    #[error(transparent)]
    UpstreamTls(#[from] lb::upstream_tls::UpstreamTlsError),
}
