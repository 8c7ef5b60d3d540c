//! The vitals server on `agent.metrics_listen:discovery.metrics_port`.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /metrics` | JSON vitals: every field of the seed, plus `id` |
//! | `GET /telemetry` | Prometheus text: `node_ready`, `requests_in_progress`, `cpu_usage_percent`, `memory_usage_percent`, `failed_responses_total`, `gpu_usage_percent`, `connected_peers`, `backoff_requests`, `uptime_seconds`, `roster_build_info`, `roster_agent_announces_total` |
//! | `GET /healthz` | 200 while the process runs (the container's probes) |
//! | `POST /drain` | local callers only (else 403): starts the drain, answers the [`DrainReport`](super::DrainReport) once it is done |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::Shared;
use super::layer::CounterSnapshot;
use super::probe::AppVitals;
use super::resources::Resources;
use crate::label::Label;
use crate::protocol::Vitals;
use strum::VariantArray;

/// Everything the vitals are made of.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub id: &'a str,
    pub version: &'a str,
    pub draining: bool,
    /// From the embedding app (library) or zeros (sidecar).
    pub counters: CounterSnapshot,
    /// The health probe's verdict.
    pub app_healthy: bool,
    /// What the app serves at `agent.app_vitals`, if anything.
    pub app: Option<&'a AppVitals>,
    pub resources: Resources,
    pub uptime: Duration,
    /// Registration cannot work (the token is missing): not ready, and why.
    pub blocked: Option<String>,
}

/// Merge the sources into the vitals.
///
/// - `ready`: not draining, the probe passes, the app's latch is set, and
///   the app's own vitals do not say `ready: false`;
/// - counters: the library's plus the app's (one of them is usually 0);
/// - `cpu_usage`/`memory_usage`/`gpu_usage`/`version`: the app's when it
///   reports them (it knows its own container), else the agent's.
pub fn merge(i: Inputs<'_>) -> Vitals {
    let default = AppVitals::default();
    let app = i.app.unwrap_or(&default);
    let c = i.counters;
    // The first reason that holds; None exactly when ready.
    let reason = [
        (i.blocked.is_some(), i.blocked.clone().unwrap_or_default()),
        (i.draining, "draining".to_string()),
        (!i.app_healthy, "the app's health check fails".to_string()),
        (!c.app_ready, "the app set itself not ready".to_string()),
        (
            app.ready == Some(false),
            "the app's vitals say ready: false".to_string(),
        ),
    ]
    .into_iter()
    .find_map(|(holds, why)| holds.then_some(why));
    Vitals {
        ready: reason.is_none(),
        reason,
        requests_in_progress: c
            .requests_in_progress
            .saturating_add(app.requests_in_progress.unwrap_or(0)),
        cpu_usage: app.cpu_usage.unwrap_or(i.resources.cpu_usage),
        memory_usage: app.memory_usage.unwrap_or(i.resources.memory_usage),
        gpu_usage: app.gpu_usage.unwrap_or(i.resources.gpu_usage),
        failed_responses: c
            .failed_responses
            .saturating_add(app.failed_responses.unwrap_or(0)),
        connected_peers: c
            .connected_peers
            .saturating_add(app.connected_peers.unwrap_or(0)),
        backoff_requests: c
            .backoff_requests
            .saturating_add(app.backoff_requests.unwrap_or(0)),
        uptime_seconds: i.uptime.as_secs(),
        version: app
            .version
            .clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| i.version.to_string()),
        id: Some(i.id.to_string()),
    }
}

/// The `/telemetry` families.
pub(crate) struct AgentMetrics {
    registry: Registry,
    node_ready: IntGauge,
    requests_in_progress: IntGauge,
    cpu: Gauge,
    memory: Gauge,
    failed: IntCounter,
    gpu: Gauge,
    peers: IntGauge,
    backoff: IntGauge,
    uptime: IntGauge,
    /// `roster_agent_announces_total{result}`.
    announces: IntCounterVec,
    /// Serializes scrapes: the failed counter is advanced by differences.
    render: Mutex<()>,
}

/// `roster_build_info{version, app_version}`, always 1.
fn build_info(version: &str) -> IntGaugeVec {
    let build = IntGaugeVec::new(
        Opts::new("roster_build_info", "roster version, always 1"),
        &["version", "app_version"],
    )
    .expect("metric");
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), version])
        .set(1);
    build
}

/// `roster_agent_announces_total{result}`: how one `POST /register` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum AnnounceResult {
    Ok,
    Error,
    /// The LB answered 429/503 with `Retry-After`.
    Throttled,
}

/// `roster_agent_announces_total{result}`, every result present from the start.
fn announces_total() -> IntCounterVec {
    let announces = IntCounterVec::new(
        Opts::new(
            "roster_agent_announces_total",
            "POST /register attempts by result (ok, error, throttled)",
        ),
        &["result"],
    )
    .expect("metric");
    for r in AnnounceResult::VARIANTS {
        announces.with_label_values(&[r.as_str()]);
    }
    announces
}

impl AgentMetrics {
    /// Count one announce by how it ended.
    pub fn count_announce(&self, result: AnnounceResult) {
        self.announces.with_label_values(&[result.as_str()]).inc();
    }

    pub fn new(version: &str) -> Self {
        let registry = Registry::new();
        let gauge = |n: &str, h: &str| IntGauge::new(n, h).expect("metric");
        let fgauge = |n: &str, h: &str| Gauge::new(n, h).expect("metric");
        let node_ready = gauge(
            "node_ready",
            "Whether the node is ready to receive requests",
        );
        let requests_in_progress = gauge(
            "requests_in_progress",
            "Current number of requests being processed",
        );
        let cpu = fgauge("cpu_usage_percent", "CPU usage percentage");
        let memory = fgauge("memory_usage_percent", "Memory usage percentage");
        let failed = IntCounter::new("failed_responses_total", "Total number of failed responses")
            .expect("metric");
        let gpu = fgauge("gpu_usage_percent", "GPU usage percentage");
        let peers = gauge("connected_peers", "Number of connected peers");
        let backoff = gauge(
            "backoff_requests",
            "Requests waiting in backoff before a retry",
        );
        let uptime = gauge("uptime_seconds", "Seconds since the agent started");
        let build = build_info(version);
        let announces = announces_total();
        for c in [
            Box::new(node_ready.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests_in_progress.clone()),
            Box::new(cpu.clone()),
            Box::new(memory.clone()),
            Box::new(failed.clone()),
            Box::new(gpu.clone()),
            Box::new(peers.clone()),
            Box::new(backoff.clone()),
            Box::new(uptime.clone()),
            Box::new(build),
            Box::new(announces.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            node_ready,
            requests_in_progress,
            cpu,
            memory,
            failed,
            gpu,
            peers,
            backoff,
            uptime,
            announces,
            render: Mutex::new(()),
        }
    }

    /// Set every family from `v` and encode.
    pub fn render(&self, v: &Vitals) -> String {
        let _one_at_a_time = self.render.lock();
        self.node_ready.set(i64::from(v.ready));
        self.requests_in_progress
            .set(i64::from(v.requests_in_progress));
        self.cpu.set(v.cpu_usage);
        self.memory.set(v.memory_usage);
        self.gpu.set(v.gpu_usage);
        self.peers.set(i64::from(v.connected_peers));
        self.backoff.set(i64::from(v.backoff_requests));
        self.uptime
            .set(i64::try_from(v.uptime_seconds).unwrap_or(i64::MAX));
        let seen = self.failed.get();
        if v.failed_responses >= seen {
            self.failed.inc_by(v.failed_responses - seen);
        } else {
            // The app behind --app-vitals restarted: a counter reset.
            self.failed.reset();
            self.failed.inc_by(v.failed_responses);
        }
        crate::telemetry::encode(&self.registry)
    }
}

/// The two ends of a vitals connection, for the local-caller check.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl Peer {
    fn of(tcp: &tokio::net::TcpStream, remote: SocketAddr) -> Self {
        Self {
            remote,
            local: tcp.local_addr().ok(),
        }
    }
}

/// Largest request body (nothing the vitals port serves takes one).
const MAX_BODY_BYTES: usize = 4096;

fn error(status: StatusCode, message: &str) -> Response {
    crate::serve::error(status, message).into_response()
}

/// The vitals router.
pub(crate) fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/telemetry", get(telemetry))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/drain", post(drain))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(sh)
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    Json(sh.vitals().await).into_response()
}

async fn telemetry(State(sh): State<Arc<Shared>>) -> Response {
    let v = sh.vitals().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        sh.metrics.render(&v),
    )
        .into_response()
}

async fn drain(State(sh): State<Arc<Shared>>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    let local = peer.local.map_or(peer.remote.ip(), |l| l.ip());
    if !super::drain::is_local(peer.remote.ip(), local) {
        tracing::warn!(caller = %peer.remote, "refused a drain request from another host");
        return error(
            StatusCode::FORBIDDEN,
            "drain: only callers on this host may drain the agent",
        );
    }
    if !sh.drain.is_draining() {
        tracing::info!(caller = %peer.remote, "drain requested");
    }
    sh.drain.start();
    Json(sh.drain.done().await).into_response()
}

/// Serve until the drain is done, give pending answers a moment, then mark
/// the agent finished.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    table: Arc<crate::limits::ConnTable>,
    sh: Arc<Shared>,
) {
    let done = {
        let sh = Arc::clone(&sh);
        async move {
            sh.drain.done().await;
        }
    };
    let serve = crate::serve::serve(
        crate::serve::Listener {
            listener,
            table,
            max_body: MAX_BODY_BYTES,
            tls: None,
            info: Peer::of,
        },
        router(Arc::clone(&sh)).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES)),
        done,
        Duration::from_secs(2),
    );
    let finished = async {
        // Bounded: an LB's keep-alive connection must not hold the exit.
        sh.drain.done().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        _ = serve => {}
        _ = finished => {}
    }
    sh.drain.set_finished();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(app: Option<&'a AppVitals>) -> Inputs<'a> {
        Inputs {
            id: "b1",
            version: "1.0.0",
            draining: false,
            counters: CounterSnapshot {
                requests_in_progress: 2,
                failed_responses: 5,
                connected_peers: 1,
                backoff_requests: 0,
                app_ready: true,
            },
            app_healthy: true,
            app,
            blocked: None,
            resources: Resources {
                cpu_usage: 35.2,
                memory_usage: 67.8,
                gpu_usage: 0.0,
            },
            uptime: Duration::from_millis(86_400_900),
        }
    }

    #[test]
    fn merge_library_only() {
        let v = merge(inputs(None));
        assert!(v.ready);
        assert_eq!(v.requests_in_progress, 2);
        assert_eq!(v.failed_responses, 5);
        assert_eq!(v.cpu_usage, 35.2);
        assert_eq!(v.uptime_seconds, 86_400);
        assert_eq!(v.version, "1.0.0");
        assert_eq!(v.id.as_deref(), Some("b1"));
    }

    #[test]
    fn merge_with_app_vitals() {
        let app = AppVitals {
            requests_in_progress: Some(40),
            failed_responses: Some(10),
            connected_peers: Some(2),
            backoff_requests: Some(3),
            cpu_usage: Some(12.5),
            version: Some("2.3.4".into()),
            ..Default::default()
        };
        let v = merge(inputs(Some(&app)));
        assert_eq!(v.requests_in_progress, 42, "summed");
        assert_eq!(v.failed_responses, 15);
        assert_eq!(v.connected_peers, 3);
        assert_eq!(v.backoff_requests, 3);
        assert_eq!(v.cpu_usage, 12.5, "the app knows its container");
        assert_eq!(v.memory_usage, 67.8, "ours where the app is silent");
        assert_eq!(v.version, "2.3.4");
        assert!(v.ready);
    }

    #[test]
    fn ready_needs_every_source() {
        let mut i = inputs(None);
        i.draining = true;
        assert!(!merge(i).ready, "draining");
        let mut i = inputs(None);
        i.app_healthy = false;
        assert!(!merge(i).ready, "probe fails");
        let mut i = inputs(None);
        i.counters.app_ready = false;
        assert!(!merge(i).ready, "app latch");
        let app = AppVitals {
            ready: Some(false),
            ..Default::default()
        };
        assert!(!merge(inputs(Some(&app))).ready, "app says not ready");
        let mut i = inputs(None);
        i.counters.requests_in_progress = u32::MAX;
        let app = AppVitals {
            requests_in_progress: Some(5),
            ..Default::default()
        };
        i.app = Some(&app);
        assert_eq!(merge(i).requests_in_progress, u32::MAX, "saturates");
    }

    #[test]
    fn not_ready_says_why_and_ready_stays_the_seed_shape() {
        let mut i = inputs(None);
        i.blocked = Some("registration token missing".into());
        let v = merge(i);
        assert!(!v.ready);
        assert_eq!(v.reason.as_deref(), Some("registration token missing"));
        let mut i = inputs(None);
        i.draining = true;
        assert_eq!(merge(i).reason.as_deref(), Some("draining"));
        let v = merge(inputs(None));
        assert!(v.ready && v.reason.is_none());
        let json = serde_json::to_value(&v).unwrap();
        assert!(json.get("reason").is_none(), "absent when ready: {json}");
    }

    #[test]
    fn telemetry_has_the_seed_series() {
        let m = AgentMetrics::new("9.9.9");
        let mut v = merge(inputs(None));
        let text = m.render(&v);
        for (name, kind) in [
            ("node_ready", "gauge"),
            ("requests_in_progress", "gauge"),
            ("cpu_usage_percent", "gauge"),
            ("memory_usage_percent", "gauge"),
            ("failed_responses_total", "counter"),
            ("gpu_usage_percent", "gauge"),
            ("connected_peers", "gauge"),
            ("backoff_requests", "gauge"),
            ("uptime_seconds", "gauge"),
            ("roster_build_info", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(text.contains("\nnode_ready 1\n"), "{text}");
        assert!(text.contains("\ncpu_usage_percent 35.2\n"), "{text}");
        assert!(text.contains("\nfailed_responses_total 5\n"), "{text}");
        v.failed_responses = 7;
        assert!(m.render(&v).contains("\nfailed_responses_total 7\n"));
        v.failed_responses = 1;
        assert!(
            m.render(&v).contains("\nfailed_responses_total 1\n"),
            "reset"
        );
        assert!(text.contains("app_version=\"9.9.9\""), "{text}");
    }
}
