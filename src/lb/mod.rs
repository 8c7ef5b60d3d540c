//! `roster lb`: the Pingora proxy, the registry behind it, and the control
//! API, in one pingora `Server`.
//!
//! Pingora owns the runtimes: the proxy is a pingora service, and the
//! control API, the routable-set publisher and the lease sweeper run as one
//! pingora `BackgroundService`.

pub mod api;
pub mod auth;
pub mod bounded;
pub mod grpc;
pub mod peer;
pub mod proxy;
pub mod select;
pub mod tls;
pub mod ui;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};

use crate::Error;
use crate::config::Config;
use crate::health::{Checker, HealthLoop};
use crate::limits::{self, ConnTable};
use crate::protocol::BackendState;
use crate::registry::{Policy, Registry, Thresholds};
use crate::telemetry::{BackendRequests, LbMetrics};
use select::Selector;

/// Everything the LB shares between the proxy, the API and background tasks.
pub struct State {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub selector: Selector,
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
        let networks = config.registration.networks()?;
        let policy = Policy {
            allowed_networks: networks,
            max_backends: config.registration.max_backends,
            lease_ttl: config.registration.lease_ttl,
        };
        let hc = &config.health_check;
        let thresholds = Thresholds {
            unhealthy: hc.unhealthy_threshold,
            healthy: hc.healthy_threshold,
            panic_percent: hc.panic_threshold,
        };
        let registry = Arc::new(Registry::new(
            policy,
            thresholds,
            config.lb.warmup,
            hc.interval * 2,
        ));
        let metrics = Arc::new(LbMetrics::new());
        let health = Arc::new(HealthLoop::new(
            Arc::clone(&registry),
            Checker::new(&hc.path, hc.timeout, hc.interval)?,
            hc.interval,
            hc.concurrency,
            Arc::clone(&metrics),
        ));
        let selector = Selector::new(config.lb.algorithm, Arc::clone(&registry));
        let auth = auth::Auth::new(&config.registration)?;
        Ok(Arc::new(Self {
            auth,
            config,
            registry,
            selector,
            metrics,
            health,
            shutting_down: AtomicBool::new(false),
            active_requests: AtomicU64::new(0),
            proxy_conns: ConnTable::new("proxy", proxy_limits),
            control_conns: ConnTable::new("control", control_limits),
        }))
    }

    /// Update the gauges that are derived from the registry at scrape time.
    pub fn refresh_gauges(&self) {
        let counts = self.registry.counts();
        for s in BackendState::ALL {
            let n = counts.get(&s).copied().unwrap_or(0);
            self.metrics
                .backends
                .with_label_values(&[s.as_str()])
                .set(n as i64);
        }
        let routable = self.registry.routable();
        let (live, digest) = routable.live();
        self.metrics.routable.set(live.len() as i64);
        self.metrics.digest.set(i64::from(digest));
        for table in [&self.proxy_conns, &self.control_conns] {
            self.metrics.observe_connections(table);
        }
    }

    /// Republish the routable set whenever it changes and rebuild the
    /// selector. A rebuild is O(pool); to keep a burst of changes (10,000
    /// backends joining at once) from turning into O(pool²) work, the next
    /// rebuild waits ten times as long as the last one took (capped at
    /// 250 ms), and every change made meanwhile rides along. Small pools
    /// rebuild at once.
    pub async fn publish_loop(self: Arc<Self>) {
        let mut panic = false;
        loop {
            let started = Instant::now();
            let r = self.registry.publish();
            if r.panic != panic {
                panic = r.panic;
                self.metrics.panic.set(i64::from(panic));
                if panic {
                    tracing::error!(
                        threshold = self.config.health_check.panic_threshold,
                        routing_to = r.addresses.len(),
                        "PANIC MODE: too few healthy backends, routing to every verified ready one"
                    );
                } else {
                    tracing::warn!("panic mode over");
                }
            }
            if let Err(e) = self.selector.update().await {
                tracing::error!(error = %e, "selector update failed");
            }
            // Series of backends that left: cardinality follows the pool.
            let requests = &self.metrics.requests;
            self.registry
                .forget_removed(|label| BackendRequests::forget(requests, label));
            let cost = started.elapsed();
            tracing::debug!(
                routable = r.addresses.len(),
                ?cost,
                "routable set published"
            );
            self.registry.wait_dirty().await;
            tokio::time::sleep((cost * 10).min(Duration::from_millis(250))).await;
        }
    }

    /// Drop entries whose lease ran out.
    pub async fn sweep_loop(self: Arc<Self>) {
        let period = (self.config.registration.lease_ttl / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_housekeeping = Instant::now();
        loop {
            tick.tick().await;
            if last_housekeeping.elapsed() >= Duration::from_secs(60) {
                self.auth.housekeeping();
                last_housekeeping = Instant::now();
            }
            for id in self.registry.release_ejections(Instant::now()) {
                tracing::info!(%id, "ejection over: back in selection");
            }
            for id in self.registry.expire(Instant::now()) {
                tracing::warn!(%id, "lease expired: removed");
                self.metrics
                    .deregistrations
                    .with_label_values(&["expired"])
                    .inc();
            }
        }
    }
}

/// The control plane as one pingora background service.
struct Control {
    state: Arc<State>,
    /// Bound before the server starts so a busy port fails `roster lb` at once.
    listener: Mutex<Option<std::net::TcpListener>>,
    /// The TLS listener's certificates, watched for changes.
    certs: Option<Arc<tls::CertStore>>,
    /// Upgraded connections, ended just before the grace period does.
    upgrades: Arc<upgrade::Upgrades>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let st = Arc::clone(&self.state);
        tokio::spawn(Arc::clone(&st).publish_loop());
        tokio::spawn(Arc::clone(&st).sweep_loop());
        tokio::spawn(Arc::clone(&st.health).run());
        if let Some(certs) = &self.certs {
            tokio::spawn(Arc::clone(certs).watch(st.config.lb.tls.reload_interval));
        }
        let Some(listener) = self.listener.lock().take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "control listener");
                std::process::exit(1);
            }
        };
        let app = api::router(Arc::clone(&st));
        let serve = crate::serve::serve(
            crate::serve::Listener {
                listener,
                table: Arc::clone(&st.control_conns),
                max_body: api::MAX_BODY_BYTES,
                tls: None,
                info: crate::serve::remote,
            },
            app,
            std::future::pending::<()>(),
            Duration::ZERO,
        );
        // The API keeps answering through the grace period (readyz says 503)
        // and stops with the runtime.
        let drain = async move {
            let _ = shutdown.changed().await;
            st.shutting_down.store(true, Ordering::Relaxed);
            tracing::info!("stopped accepting: draining in-flight requests");
            let grace = st.config.lb.grace_period;
            let started = Instant::now();
            let deadline = started + grace;
            // pingora's grace period is in whole seconds; its runtimes stop
            // right after, so upgraded connections are ended a little before.
            let close_upgrades =
                started + Duration::from_secs(grace.as_secs()).saturating_sub(UPGRADE_CLOSE_MARGIN);
            let mut upgrades_closed = false;
            // pingora sleeps the whole grace period; end sooner once idle.
            while Instant::now() < deadline {
                if st.active_requests.load(Ordering::Relaxed) == 0 {
                    tracing::info!("no request in flight: exiting");
                    std::process::exit(0);
                }
                if !upgrades_closed && Instant::now() >= close_upgrades {
                    upgrades_closed = true;
                    let n = self.upgrades.close_all();
                    tracing::info!(
                        connections = n,
                        "grace period ending: closing upgraded connections (1001)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = serve => tracing::error!("control API stopped"),
            _ = drain => {}
        }
    }
}

/// How long before the end of the grace period upgraded connections are
/// closed, so their close frames go out before pingora stops its runtimes.
const UPGRADE_CLOSE_MARGIN: Duration = Duration::from_millis(500);

/// SIGTERM: `/readyz` goes 503 at once; after `lb.shutdown_delay` pingora
/// stops accepting and drains. SIGINT: fast shutdown.
struct Signals {
    state: Arc<State>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                self.state.shutting_down.store(true, Ordering::Relaxed);
                let delay = self.state.config.lb.shutdown_delay;
                tracing::info!(delay = ?delay, "SIGTERM: readyz now 503; still accepting for shutdown_delay");
                tokio::time::sleep(delay).await;
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// Bind a std listener for a tokio server started later.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(l)
}

/// The proxy service: the plaintext listener (HTTP/1.1, and h2c when
/// `lb.h2c`), and the TLS listener when certificates are configured.
fn proxy_service(
    server: &Server,
    state: &Arc<State>,
    certs: Option<&Arc<tls::CertStore>>,
    upgrades: &Arc<upgrade::Upgrades>,
) -> Result<pingora::services::listening::Service<ProxyApp>, Error> {
    let lb = &state.config.lb;
    let mut proxy = pingora::services::listening::Service::new(
        "proxy".into(),
        bounded::Bounded {
            inner: Arc::new(proxy_app(server, state, upgrades, false)),
            h2c: lb
                .h2c
                .then(|| Arc::new(proxy_app(server, state, upgrades, true))),
            table: Arc::clone(&state.proxy_conns),
        },
    );
    proxy.add_tcp(&lb.listen.to_string());
    if let Some(certs) = certs {
        let settings = certs
            .settings()
            .map_err(|e| Error::Http(format!("TLS listener: {e}")))?;
        proxy.add_tls_with_settings(&lb.tls.listen.to_string(), None, settings);
    }
    Ok(proxy)
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
    let threads = lb
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let conf = ServerConf {
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
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let upgrades = Arc::new(upgrade::Upgrades::default());
    let proxy = proxy_service(&server, &state, certs.as_ref(), &upgrades)?;
    let control = background_service(
        "control",
        Control {
            state: Arc::clone(&state),
            listener: Mutex::new(Some(control_listener)),
            certs: certs.clone(),
            upgrades: Arc::clone(&upgrades),
        },
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
    server.add_service(proxy);
    server.add_service(control);
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            state: Arc::clone(&state),
        }),
    });
    Ok(())
}
