//! `roster lb`: the Pingora proxy, the registry behind it, and the control
//! API, in one pingora `Server`.
//!
//! Pingora owns the runtimes: the proxy is a pingora service, and the
//! control API, the publisher, the sweeper and the routes watcher run as
//! one pingora `BackgroundService` (`control`). Every service has its own
//! pool ([`pools`](crate::lb::pools)); [`routes`](crate::lb::routes) picks the service of a request.

pub mod api;
pub mod auth;
pub mod bounded;
mod control;
pub mod forwarded;
pub mod grpc;
pub mod peer;
pub mod pools;
pub mod proxy;
pub mod ready;
pub mod routes;
pub mod select;
pub mod tls;
pub mod ui;
pub mod upgrade;
pub mod upstream_tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;

use crate::Error;
use crate::config::Config;
use crate::health::{Checker, HealthLoop};
use crate::label::Label;
use crate::limits::{self, ConnTable};
use crate::protocol::BackendState;
use crate::registry::{Policy, Registry, Thresholds};
use crate::telemetry::LbMetrics;
use pools::Pools;
use ready::Readiness;
use routes::RouteTable;
use strum::VariantArray;

/// Everything the LB shares between the proxy, the API and background tasks.
pub struct State {
    pub config: Config,
    pub registry: Arc<Registry>,
    /// One pool (slot + selector + settings) per service.
    pub pools: Pools,
    /// The compiled `routes:`, swapped whole on reload.
    pub routes: ArcSwap<RouteTable>,
    /// Why the last reload of the config file was refused, if it was.
    pub route_error: Mutex<Option<String>>,
    pub readiness: Readiness,
    pub metrics: Arc<LbMetrics>,
    pub health: Arc<HealthLoop>,
    pub auth: auth::Auth,
    /// Set on SIGTERM: `/readyz` answers 503 from then on.
    pub shutting_down: AtomicBool,
    /// Requests the proxy holds right now.
    pub active_requests: AtomicU64,
    /// The proxy port's connections (`lb.proxy_limits`).
    pub proxy_conns: Arc<ConnTable>,
    /// The control API's connections (`lb.control_limits`).
    pub control_conns: Arc<ConnTable>,
}

impl State {
    /// Build the state from a validated config.
    pub fn new(config: Config) -> Result<Arc<Self>, Error> {
        Self::with_fd_limit(config, u64::MAX)
    }

    /// [`State::new`], with each listener's connection cap held to its
    /// share of `fd_limit`: half for the proxy (each client connection may
    /// need an upstream one), an eighth for the control API; the rest is
    /// left for upstream pools and health checks.
    pub fn with_fd_limit(config: Config, fd_limit: u64) -> Result<Arc<Self>, Error> {
        let mut proxy_limits = config.lb.proxy_limits.get();
        proxy_limits.max_connections =
            limits::budget("proxy", proxy_limits.max_connections, fd_limit, 0.5);
        let mut control_limits = config.lb.control_limits.get();
        control_limits.max_connections =
            limits::budget("control", control_limits.max_connections, fd_limit, 0.125);
        let registry = Arc::new(registry_of(&config)?);
        let routes = RouteTable::build(&config.routes, &config.lb.default_service)?;
        registry.pin(pinned(&config, &routes));
        let metrics = Arc::new(LbMetrics::new());
        let hc = &config.health_check;
        let health = Arc::new(HealthLoop::new(
            Arc::clone(&registry),
            Checker::new(hc.timeout, hc.interval)?,
            hc.concurrency,
            Arc::clone(&metrics),
        ));
        let auth = auth::Auth::new(&config.registration)?;
        Ok(Arc::new(Self {
            auth,
            readiness: Readiness::new(config.lb.warmup, hc.interval * 2),
            registry,
            pools: Pools::new(&config)?,
            routes: ArcSwap::from_pointee(routes),
            route_error: Mutex::new(None),
            config,
            metrics,
            health,
            shutting_down: AtomicBool::new(false),
            active_requests: AtomicU64::new(0),
            proxy_conns: ConnTable::new("proxy", proxy_limits),
            control_conns: ConnTable::new("control", control_limits),
        }))
    }

    /// Update the gauges that are derived from the registry at scrape
    /// time. Series of services that left are dropped with them.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        let pools = self.pools.all();
        for vec in [&m.service_backends, &m.routable, &m.digest, &m.panic] {
            vec.reset();
        }
        let counts = self.registry.counts();
        let services = pools.iter().map(|p| Arc::clone(p.name()));
        let names: std::collections::BTreeSet<Arc<str>> = services
            .chain(counts.keys().map(|(s, _)| Arc::clone(s)))
            .collect();
        for &s in BackendState::VARIANTS {
            let mut total = 0;
            for name in &names {
                let n = counts.get(&(Arc::clone(name), s)).copied().unwrap_or(0);
                total += n;
                m.service_backends
                    .with_label_values(&[name, s.as_str()])
                    .set(n as i64);
            }
            m.backends
                .with_label_values(&[s.as_str()])
                .set(total as i64);
        }
        for pool in &pools {
            let routable = pool.slot.routable();
            let (live, digest) = routable.live();
            let name: &str = pool.name();
            m.routable.with_label_values(&[name]).set(live.len() as i64);
            m.digest.with_label_values(&[name]).set(i64::from(digest));
            m.panic
                .with_label_values(&[name])
                .set(i64::from(routable.panic));
        }
        for table in [&self.proxy_conns, &self.control_conns] {
            m.observe_connections(table);
        }
    }

    /// Swap in new routes (already validated) and keep their services'
    /// slots.
    pub fn set_routes(&self, routes: RouteTable) {
        self.registry.pin(pinned(&self.config, &routes));
        self.routes.store(Arc::new(routes));
    }
}

/// The registry a config describes.
fn registry_of(config: &Config) -> Result<Registry, Error> {
    let policy = Policy {
        allowed_networks: config.registration.networks()?,
        max_backends: config.registration.max_backends,
        lease_ttl: config.registration.lease_ttl,
        default_service: config.lb.default_service.clone(),
    };
    let hc = &config.health_check;
    let thresholds = Thresholds {
        unhealthy: hc.unhealthy_threshold,
        healthy: hc.healthy_threshold,
    };
    Ok(Registry::new(policy, thresholds, config.service_specs()))
}

/// Services kept with a pool even before backends arrive.
fn pinned<'a>(config: &'a Config, routes: &'a RouteTable) -> Vec<&'a str> {
    config
        .services
        .keys()
        .map(String::as_str)
        .chain(routes.services())
        .collect()
}

/// Bind a std listener for a tokio server started later.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(l)
}

/// The proxy services: the plaintext listener (HTTP/1.1, and h2c when
/// `lb.h2c`), and the TLS listener when certificates are configured. The
/// TLS port is a plain TCP listener whose app runs the handshake, bounded
/// by the head deadline ([`bounded`]).
fn proxy_services(
    server: &Server,
    state: &Arc<State>,
    certs: Option<&Arc<tls::CertStore>>,
    upgrades: &Arc<upgrade::Upgrades>,
) -> Result<Vec<pingora::services::listening::Service<ProxyApp>>, Error> {
    let lb = &state.config.lb;
    let inner = Arc::new(proxy_app(server, state, upgrades, false));
    let mut proxy = pingora::services::listening::Service::new(
        "proxy".into(),
        bounded::Bounded {
            inner: Arc::clone(&inner),
            h2c: lb
                .h2c
                .then(|| Arc::new(proxy_app(server, state, upgrades, true))),
            tls: None,
            table: Arc::clone(&state.proxy_conns),
        },
    );
    proxy.add_tcp(&lb.listen.to_string());
    let mut services = vec![proxy];
    if let Some(certs) = certs {
        let settings = certs
            .settings()
            .map_err(|e| Error::Http(format!("TLS listener: {e}")))?;
        let mut tls = pingora::services::listening::Service::new(
            "proxy-tls".into(),
            bounded::Bounded {
                inner,
                h2c: None,
                tls: Some(Arc::new(settings.build())),
                table: Arc::clone(&state.proxy_conns),
            },
        );
        tls.add_tcp(&lb.tls.listen.to_string());
        services.push(tls);
    }
    Ok(services)
}

type ProxyApp = bounded::Bounded<pingora::proxy::HttpProxy<proxy::Proxy>>;

/// The proxy as a pingora HTTP app; `h2c` turns on pingora's cleartext
/// HTTP/2. An idle h2 connection closes after the proxy port's idle
/// timeout, as an idle HTTP/1.1 one does.
fn proxy_app(
    server: &Server,
    state: &Arc<State>,
    upgrades: &Arc<upgrade::Upgrades>,
    h2c: bool,
) -> pingora::proxy::HttpProxy<proxy::Proxy> {
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        proxy::Proxy {
            state: Arc::clone(state),
            upgrades: Arc::clone(upgrades),
        },
    );
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = h2c;
    options.h2_idle_timeout = Some(state.proxy_conns.limits().idle_timeout);
    app.server_options = Some(options);
    app
}

/// pingora's settings for `lb:`.
fn server_conf(lb: &crate::config::LbConfig) -> ServerConf {
    let threads = lb
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    ServerConf {
        threads,
        grace_period_seconds: Some(lb.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: lb.keepalive_pool_size,
        // One thread: a current-thread runtime, with no steal checks or
        // cross-thread wakeups on the hot path (perf, bench part 1: +25%
        // requests/s). Several threads keep work stealing: with one runtime
        // per thread, pingora parks idle upstream connections on a random
        // runtime and reusing them races ("failed to acquire reusable
        // stream", a new connection instead).
        work_stealing: threads > 1,
        ..ServerConf::default()
    }
}

/// Run `roster lb` until SIGTERM (graceful) or SIGINT (fast). Blocks.
pub fn run(config: Config) -> Result<(), Error> {
    // Each backend may hold a pooled check connection and proxied ones.
    let fd_limit = limits::raise_fd_limit();
    let control_listener = bind(config.lb.control_listen)?;
    // Fail fast when the proxy port is taken too (pingora would panic later).
    drop(bind(config.lb.listen)?);
    let certs = if config.lb.tls.enabled() {
        drop(bind(config.lb.tls.listen)?);
        Some(tls::CertStore::load(&config.lb.tls.certs)?)
    } else {
        None
    };
    let state = State::with_fd_limit(config, fd_limit)?;
    let lb = &state.config.lb;
    let conf = server_conf(lb);
    let threads = conf.threads;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let upgrades = Arc::new(upgrade::Upgrades::default());
    let proxy = proxy_services(&server, &state, certs.as_ref(), &upgrades)?;
    // Either the control service says the drain is done (idle before the
    // grace period ends) or pingora's own shutdown finishes: whichever
    // comes first ends `run`, and with it the process.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let control = background_service(
        "control",
        control::Control::new(
            Arc::clone(&state),
            control_listener,
            done.clone(),
            certs.clone(),
            Arc::clone(&upgrades),
        ),
    );
    tracing::info!(
        proxy = %lb.listen,
        tls = ?certs.as_ref().map(|_| lb.tls.listen),
        h2c = lb.h2c,
        control = %lb.control_listen,
        algorithm = ?lb.algorithm,
        threads,
        "roster lb starting"
    );
    for p in proxy {
        server.add_service(p);
    }
    server.add_service(control);
    let signals = Box::new(control::Signals::new(Arc::clone(&state)));
    std::thread::Builder::new()
        .name("pingora".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: signals,
            });
            let _ = done.send(());
        })?;
    let _ = finished.recv();
    Ok(())
}
