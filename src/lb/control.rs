//! The LB's control plane as one pingora background service: the control
//! API, the per-service publisher, the sweeper (leases, ejections,
//! drains), the routes watcher, and the graceful drain on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use super::State;
use super::routes::RouteTable;
use super::tls::CertStore;
use super::upgrade::Upgrades;
use crate::config::{self, Config, Source};
use crate::label::Label;
use crate::registry::Change;
use crate::signals::Stop;
use crate::telemetry::{BackendRequests, DeregistrationReason, ReloadResult};

pub(super) struct Control {
    state: Arc<State>,
    /// Bound before the server starts so a busy port fails `roster lb` at once.
    listener: Mutex<Option<std::net::TcpListener>>,
    /// Told when the drain is over, so `lb::run` returns before pingora's
    /// full grace period when nothing is in flight.
    done: Mutex<Sender<()>>,
    /// The TLS listener's certificates, watched for changes.
    certs: Option<Arc<CertStore>>,
    /// Upgraded connections, ended just before the grace period does.
    upgrades: Arc<Upgrades>,
}

impl Control {
    pub fn new(
        state: Arc<State>,
        listener: std::net::TcpListener,
        done: Sender<()>,
        certs: Option<Arc<CertStore>>,
        upgrades: Arc<Upgrades>,
    ) -> Self {
        Self {
            state,
            listener: Mutex::new(Some(listener)),
            done: Mutex::new(done),
            certs,
            upgrades,
        }
    }
}

/// How long before the end of the grace period upgraded connections are
/// closed, so their close frames go out before pingora stops its runtimes.
const UPGRADE_CLOSE_MARGIN: Duration = Duration::from_millis(500);

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let st = Arc::clone(&self.state);
        // Subscribe before anything registers, so no removal is missed.
        tokio::spawn(Arc::clone(&st).publish_loop(st.registry.subscribe()));
        tokio::spawn(Arc::clone(&st).sweep_loop());
        tokio::spawn(Arc::clone(&st.health).run());
        if let Some(source) = st.config.source.clone() {
            tokio::spawn(Arc::clone(&st).watch_routes(source));
        }
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
                let _ = self.done.lock().send(());
                return;
            }
        };
        let serve = crate::serve::serve(
            crate::serve::Listener {
                listener,
                table: Arc::clone(&st.control_conns),
                max_body: super::api::MAX_BODY_BYTES,
                tls: None,
                info: crate::serve::remote,
            },
            super::api::router(Arc::clone(&st)),
            std::future::pending::<()>(),
            Duration::ZERO,
        );
        // The API keeps answering through the grace period (readyz says 503)
        // and stops with the runtime.
        let drain = async {
            let _ = shutdown.changed().await;
            st.drain(&self.upgrades).await;
            let _ = self.done.lock().send(());
        };
        tokio::select! {
            _ = serve => tracing::error!("control API stopped"),
            _ = drain => {}
        }
    }
}

impl State {
    /// After pingora stopped accepting: wait for in-flight requests, at
    /// most the grace period (pingora sleeps all of it; end sooner once
    /// idle). Upgraded connections (WebSocket) get a 1001 close just before
    /// the grace period ends.
    async fn drain(&self, upgrades: &Upgrades) {
        self.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!("stopped accepting: draining in-flight requests");
        let grace = self.config.lb.grace_period;
        let started = Instant::now();
        let deadline = started + grace;
        // pingora's grace period is in whole seconds; its runtimes stop
        // right after, so upgraded connections are ended a little before.
        let close_upgrades =
            started + Duration::from_secs(grace.as_secs()).saturating_sub(UPGRADE_CLOSE_MARGIN);
        let mut upgrades_closed = false;
        while Instant::now() < deadline {
            if self.active_requests.load(Ordering::Relaxed) == 0 {
                tracing::info!("no request in flight: exiting");
                return;
            }
            if !upgrades_closed && Instant::now() >= close_upgrades {
                upgrades_closed = true;
                let n = upgrades.close_all();
                tracing::info!(
                    connections = n,
                    "grace period ending: closing upgraded connections (1001)"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await
    }

    /// Republish each service whose routable set changed and rebuild its
    /// selector. A rebuild is O(that service); to keep a burst of changes
    /// (10,000 backends joining at once) from turning into O(pool²) work,
    /// the next round waits ten times as long as the last one took (capped
    /// at 250 ms), and every change made meanwhile rides along.
    async fn publish_loop(
        self: Arc<Self>,
        mut changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
    ) {
        loop {
            let dirty = self.registry.wait_dirty().await;
            let started = Instant::now();
            for service in &dirty {
                let Some(p) = self
                    .pools
                    .publish(&self.registry, &self.config, service)
                    .await
                else {
                    continue;
                };
                if let Some(panic) = p.panic_flip {
                    log_panic(service, panic, p.pool.slot.routable().addresses.len());
                }
            }
            self.forget_removed(&mut changes);
            let cost = started.elapsed();
            tracing::debug!(services = dirty.len(), ?cost, "routable sets published");
            tokio::time::sleep((cost * 10).min(Duration::from_millis(250))).await;
        }
    }

    /// Series of backends that left: cardinality follows the pool (a
    /// successor on the same address keeps them).
    fn forget_removed(&self, changes: &mut tokio::sync::mpsc::UnboundedReceiver<Change>) {
        let requests = &self.metrics.requests;
        while let Ok(c) = changes.try_recv() {
            if let Change::Removed(u) = c
                && !self.registry.holds(&u.service, &u.addr)
            {
                BackendRequests::forget(requests, &u.service, &u.label);
            }
        }
    }

    /// Leases, ejections and drains, on a short tick.
    async fn sweep_loop(self: Arc<Self>) {
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
            let now = Instant::now();
            for id in self.registry.release_ejections(now) {
                tracing::info!(%id, "ejection over: back in selection");
            }
            for id in self
                .registry
                .finish_drains(now, self.config.lb.grace_period)
            {
                tracing::info!(%id, "drained: removed");
            }
            for id in self.registry.expire(now) {
                tracing::warn!(%id, "lease expired: removed");
                self.metrics
                    .deregistrations
                    .with_label_values(&[DeregistrationReason::Expired.as_str()])
                    .inc();
            }
        }
    }

    /// Reload `routes:` when the config file changes (a ConfigMap update
    /// swaps a symlink, so the content is compared, not the mtime). A new
    /// text is applied once it reads the same twice, [`SETTLE`] apart (a
    /// write caught half way is not), and only if [`config::reload::check`]
    /// accepts it: a file with no keys, one that does not parse, or one
    /// that changes a restart-only key keeps the routes in force and says
    /// why (the log, `GET /routes`, `roster_lb_config_reloads_total`).
    async fn watch_routes(self: Arc<Self>, source: Source) {
        let running = match Config::from_yaml(&source.text, &source.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config file: not watched");
                return;
            }
        };
        let path = source.path;
        let mut last: Vec<u8> = source.text.as_bytes().to_vec();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(text) = tokio::fs::read(&path).await else {
                continue;
            };
            if text == last {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            if tokio::fs::read(&path).await.ok().as_ref() != Some(&text) {
                continue; // still being written: look again next tick
            }
            let outcome = config::reload::check(&running, &String::from_utf8_lossy(&text), &path)
                .map_err(|e| e.to_string())
                .and_then(|new| {
                    RouteTable::build(&new.routes, &self.config.lb.default_service)
                        .map_err(|e| e.to_string())
                });
            last = text;
            self.apply_reload(&path, outcome);
        }
    }

    fn apply_reload(&self, path: &std::path::Path, outcome: Result<RouteTable, String>) {
        let result = match outcome {
            Ok(routes) => {
                tracing::info!(path = %path.display(), routes = routes.view().routes.len(), "routes reloaded");
                self.set_routes(routes);
                *self.route_error.lock() = None;
                ReloadResult::Ok
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "config file not reloaded: keeping the config in force");
                *self.route_error.lock() = Some(e);
                ReloadResult::Refused
            }
        };
        self.metrics
            .reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }
}

/// How long a changed config file must read the same before it is applied.
const SETTLE: Duration = Duration::from_millis(200);

fn log_panic(service: &str, panic: bool, routing_to: usize) {
    if panic {
        tracing::error!(
            %service,
            routing_to,
            "PANIC MODE: too few healthy backends, routing to every verified ready one"
        );
    } else {
        tracing::warn!(%service, "panic mode over");
    }
}

/// SIGTERM: `/readyz` goes 503 at once; after `lb.shutdown_delay` pingora
/// stops accepting and drains. SIGINT: fast shutdown.
pub(super) struct Signals {
    state: Arc<State>,
}

impl Signals {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        match crate::signals::next_stop().await {
            Stop::Term => {
                self.state.shutting_down.store(true, Ordering::Relaxed);
                let delay = self.state.config.lb.shutdown_delay;
                tracing::info!(delay = ?delay, "SIGTERM: readyz now 503; still accepting for shutdown_delay");
                tokio::time::sleep(delay).await;
                ShutdownSignal::GracefulTerminate
            }
            Stop::Int => ShutdownSignal::FastShutdown,
        }
    }
}
