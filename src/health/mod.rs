//! Vitals health checks: `GET http://<host>:<metrics_port><path>` per
//! registered backend, judged by the JSON body.
//!
//! roster owns this loop rather than using pingora's `HealthCheck`: pingora
//! probes the traffic address, starts every backend healthy and never reads
//! a body, while roster must probe the *registered* metrics port, read
//! `ready` and `id` from the vitals, and keep a new backend out of the pool
//! until its first good check.
//!
//! Every entry keeps its own phase in one timer queue, so checks of 10,000
//! backends spread over the interval instead of bursting; `lanes` bound
//! how many are in flight and keep checks of failing backends from holding
//! back the others; small registries reuse connections.

mod lanes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

use crate::backoff::Backoff;
use crate::config::CheckSpec;
use crate::label::Label;
use crate::protocol::{BackendState, Vitals};
use crate::registry::{Change, CheckResult, Registry, Target};
use crate::telemetry::LbMetrics;
use lanes::{Class, Lanes};

/// Largest vitals body read; the seed's document is ~300 bytes.
const MAX_VITALS_BYTES: usize = 64 * 1024;

/// Registries up to this size keep one idle connection per backend for
/// checks; larger ones connect afresh. Measured at 10,000 backends checked
/// every 5 s: pooled, 237 MB RSS and 13% of a core; fresh, 57 MB and 25% —
/// idle HTTP connections cost ~20 KB each, a loopback/LAN handshake little.
pub const POOLED_CHECKS_UP_TO: usize = 1000;

/// Probes one backend's vitals.
#[derive(Clone)]
pub struct Checker {
    /// Reuses connections (small registries).
    pooled: reqwest::Client,
    /// One connection per check (large registries).
    fresh: reqwest::Client,
}

impl Checker {
    /// `interval` sizes the idle timeout of pooled connections: one unused
    /// for two intervals (its backend left, or the registry outgrew pooling)
    /// is closed instead of holding ~20 KB for 90 s. `timeout` bounds the
    /// connect; each check brings its service's own timeout.
    pub fn new(timeout: Duration, interval: Duration) -> Result<Self, crate::Error> {
        let idle = interval * 2 + timeout;
        let client = |idle_per_host: usize| {
            crate::fetch::client(crate::fetch::Bounds {
                // Each check brings its own timeout.
                timeout: None,
                // A blackholed address (a zone outage drops SYNs) fails in
                // half the time a slow answer gets.
                connect_timeout: (timeout / 2).max(Duration::from_millis(100)),
                idle_per_host,
                idle_timeout: idle,
                ..crate::fetch::Bounds::timeout(timeout)
            })
            .map_err(|e| crate::Error::Http(e.to_string()))
        };
        Ok(Self {
            pooled: client(1)?,
            fresh: client(0)?,
        })
    }

    /// One check by `spec` (path, timeout). `expected_id` must match the
    /// vitals' `id` when present; `pooled` picks connection reuse.
    pub async fn check(
        &self,
        vitals_addr: SocketAddr,
        expected_id: &str,
        pooled: bool,
        spec: &CheckSpec,
    ) -> CheckResult {
        let client = if pooled { &self.pooled } else { &self.fresh };
        let url = format!("http://{vitals_addr}{}", spec.path);
        match crate::fetch::get_json(client, &url, MAX_VITALS_BYTES, spec.timeout).await {
            Ok(v) => judge(v, expected_id),
            Err(e) => CheckResult::Failed(e.to_string()),
        }
    }
}

/// Turn vitals into a verdict.
pub fn judge(v: Vitals, expected_id: &str) -> CheckResult {
    if let Some(id) = v.id.as_deref()
        && id != expected_id
    {
        // Pod IPs are reused: never route to a stranger.
        return CheckResult::Stranger(format!(
            "vitals id {id:?} does not match registered id {expected_id:?}"
        ));
    }
    if v.ready {
        CheckResult::Ready(v)
    } else {
        CheckResult::NotReady(v)
    }
}

/// Schedules and runs every entry's checks.
///
/// One timer queue holds every entry's next deadline, so an idle entry costs
/// a queue slot (~100 bytes) instead of a parked task with its future
/// (~1 KB): at 10,000 backends that is 1 MB instead of 10 MB. Only checks in
/// flight hold futures, and the semaphore bounds those.
pub struct HealthLoop {
    registry: Arc<Registry>,
    checker: Checker,
    /// Check slots by what each backend did last ([`lanes`]), so checks
    /// that time out (dark backends) never delay those of new or
    /// answering ones.
    lanes: Lanes,
    metrics: Arc<LbMetrics>,
    queue: mpsc::UnboundedSender<Due>,
    /// Taken by [`HealthLoop::run`]: requeued entries, and the registry's
    /// changes (new and replaced entries are checked at once).
    inbox: Mutex<Option<Inbox>>,
}

struct Inbox {
    due: mpsc::UnboundedReceiver<Due>,
    changes: mpsc::UnboundedReceiver<Change>,
}

/// An entry whose next check should be queued after `after`.
struct Due {
    service: Arc<str>,
    id: String,
    generation: u64,
    after: Duration,
}

impl HealthLoop {
    /// Subscribes to the registry at once: entries registered before
    /// [`HealthLoop::run`] starts wait in the inbox.
    pub fn new(
        registry: Arc<Registry>,
        checker: Checker,
        concurrency: usize,
        metrics: Arc<LbMetrics>,
    ) -> Self {
        let (queue, due) = mpsc::unbounded_channel();
        let changes = registry.subscribe();
        Self {
            registry,
            checker,
            lanes: Lanes::new(concurrency),
            metrics,
            queue,
            inbox: Mutex::new(Some(Inbox { due, changes })),
        }
    }

    /// The scheduler: fires due entries, runs their checks under the
    /// semaphore, and queues each entry again once its check is done (so a
    /// slow backend is never checked twice at once). Returns only if called
    /// twice.
    pub async fn run(self: Arc<Self>) {
        let Some(mut inbox) = self.inbox.lock().take() else {
            return;
        };
        let mut timers: DelayQueue<(Arc<str>, String, u64)> = DelayQueue::new();
        loop {
            tokio::select! {
                due = inbox.due.recv() => {
                    let Some(due) = due else { return };
                    timers.insert((due.service, due.id, due.generation), due.after);
                }
                change = inbox.changes.recv() => match change {
                    // Check a new (or replaced) entry at once, then every
                    // interval until it leaves the registry.
                    Some(Change::Added(t)) => {
                        timers.insert((t.service, t.id, t.generation), Duration::ZERO);
                    }
                    Some(Change::Removed(_)) => {}
                    None => return,
                },
                Some(fired) = timers.next(), if !timers.is_empty() => {
                    let (service, id, generation) = fired.into_inner();
                    // Gone or replaced since: its successor has its own slot.
                    let Some(target) = self.registry.target(&service, &id, generation) else {
                        continue;
                    };
                    // The scheduler never waits for a permit: a full lane
                    // must not hold back the other lane or new entries.
                    tokio::spawn(Arc::clone(&self).check_and_requeue(target));
                }
            }
        }
    }

    /// One check in the entry's lane, then the entry's next slot: the
    /// interval (±5% jitter, so a fleet registered at once does not stay
    /// in step), or longer for an entry that keeps failing.
    async fn check_and_requeue(self: Arc<Self>, target: Target) {
        let slot = self
            .lanes
            .acquire(Class::of(target.checked, target.failing))
            .await;
        self.check_once(&target).await;
        drop(slot);
        let failing = self
            .registry
            .target(&target.service, &target.id, target.generation)
            .map_or(0, |t| t.failing);
        let _ = self.queue.send(Due {
            after: check_backoff(target.check.interval).next(failing),
            service: target.service,
            id: target.id,
            generation: target.generation,
        });
    }

    async fn check_once(&self, target: &Target) {
        let result = {
            let _timer = self.metrics.check_duration.start_timer();
            let pooled = self.registry.len() <= POOLED_CHECKS_UP_TO;
            self.checker
                .check(target.vitals_addr, &target.id, pooled, &target.check)
                .await
        };
        self.metrics
            .health_checks
            .with_label_values(&[result.observation().as_str()])
            .inc();
        let err = result.error();
        if let Some((from, to)) = self.registry.apply_check(target, result) {
            log_flip(&target.id, from, to, err.as_deref());
        }
    }
}

/// The wait before the next check of an entry out of the pool for
/// `failing` checks in a row: the interval, doubling from the third on, at
/// most 4 × interval (a dead backend costs a quarter of the checks; one
/// that comes back is in again within 4 intervals).
pub fn check_backoff(interval: Duration) -> Backoff {
    Backoff::new(interval, interval * 4).with_jitter(0.05)
}

/// Log only when health flips, not on every check.
fn log_flip(id: &str, from: BackendState, to: BackendState, err: Option<&str>) {
    match to {
        BackendState::Healthy => {
            tracing::info!(%id, from = from.as_str(), "backend healthy: in the pool")
        }
        _ => tracing::warn!(
            %id,
            from = from.as_str(),
            to = to.as_str(),
            error = err.unwrap_or(""),
            "backend left the pool"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_four_intervals() {
        let i = Duration::from_secs(5);
        let got: Vec<u64> = (0..6)
            .map(|f| check_backoff(i).delay(f).as_secs())
            .collect();
        assert_eq!(got, [5, 5, 10, 20, 20, 20]);
    }

    #[test]
    fn judge_reads_ready_and_id() {
        let v = |ready, id: Option<&str>| Vitals {
            ready,
            id: id.map(String::from),
            ..Default::default()
        };
        assert!(matches!(judge(v(true, None), "a"), CheckResult::Ready(_)));
        assert!(matches!(
            judge(v(true, Some("a")), "a"),
            CheckResult::Ready(_)
        ));
        assert!(matches!(
            judge(v(false, Some("a")), "a"),
            CheckResult::NotReady(_)
        ));
        assert!(matches!(
            judge(v(true, Some("b")), "a"),
            CheckResult::Stranger(_)
        ));
    }

    #[test]
    fn minimal_vitals_parse_and_seed_vitals_keep_types() {
        let v: Vitals = serde_json::from_str(r#"{"ready": true}"#).unwrap();
        assert!(v.ready);
        let seed = r#"{"ready": true, "requests_in_progress": 42, "cpu_usage": 35.2,
            "memory_usage": 67.8, "gpu_usage": 0.0, "failed_responses": 15,
            "connected_peers": 3, "backoff_requests": 0, "uptime_seconds": 86400,
            "version": "1.0.0"}"#;
        let v: Vitals = serde_json::from_str(seed).unwrap();
        assert_eq!(v.requests_in_progress, 42);
        assert!(serde_json::from_str::<Vitals>(r#"{"ready": "yes"}"#).is_err());
        assert!(serde_json::from_str::<Vitals>(r#"{"cpu_usage": 1.0}"#).is_err());
    }
}

#[cfg(test)]
mod scheduler_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::protocol::Registration;
    use crate::registry::{Policy, Thresholds};

    /// A vitals server on 127.0.0.x counting the checks it answers.
    async fn vitals_server(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(serde_json::json!({"ready": true})) }
            }),
        );
        let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (addr, hits)
    }

    fn health(interval: Duration) -> Arc<HealthLoop> {
        let timeout = Duration::from_secs(1);
        let mut config = crate::config::Config::default();
        config.health_check.panic_threshold = 0.0;
        config.health_check.interval = interval;
        config.health_check.timeout = timeout;
        let rules = config.service_specs();
        let registry = Arc::new(Registry::new(
            Policy {
                allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
                max_backends: 10,
                lease_ttl: Duration::from_secs(90),
                default_service: "default".into(),
            },
            Thresholds {
                unhealthy: 1,
                healthy: 1,
            },
            rules,
        ));
        Arc::new(HealthLoop::new(
            registry,
            Checker::new(timeout, interval).unwrap(),
            4,
            Arc::new(LbMetrics::new()),
        ))
    }

    fn register(h: &HealthLoop, id: &str, vitals: SocketAddr) {
        let reg = Registration {
            id: id.into(),
            address: format!("{}:1", vitals.ip()),
            metrics_port: vitals.port(),
            weight: 1,
            service: None,
            protocol: None,
        };
        let valid = h.registry.policy().validate(&reg).unwrap();
        // The registry announces the new entry; the loop checks it.
        h.registry.register(valid, Instant::now()).unwrap();
    }

    fn routable(h: &HealthLoop) -> usize {
        let slot = h.registry.publish(&Arc::from("default")).unwrap();
        slot.routable().addresses.len()
    }

    use std::time::Instant;

    /// Wait (bounded) until `hits` reaches `n`.
    async fn until(hits: &AtomicUsize, n: usize) {
        for _ in 0..100 {
            if hits.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never reached {n} checks");
    }

    // Interval 300 ms: 1.5 s windows expect 5 checks; a double schedule
    // would make 10, a stopped one 0. Bounds are wide for loaded CI.
    const INTERVAL: Duration = Duration::from_millis(300);
    const WINDOW: Duration = Duration::from_millis(1500);

    #[tokio::test]
    async fn checks_at_once_then_every_interval_and_stop_when_gone() {
        let h = health(INTERVAL);
        let (a, hits_a) = vitals_server("127.0.0.81").await;
        let (b, hits_b) = vitals_server("127.0.0.82").await;
        // Scheduled before the loop runs: waits in the inbox.
        register(&h, "a", a);
        tokio::spawn(Arc::clone(&h).run());
        register(&h, "b", b);
        until(&hits_a, 1).await;
        until(&hits_b, 1).await;
        assert_eq!(routable(&h), 2, "both healthy");

        let before = hits_a.load(Ordering::SeqCst);
        tokio::time::sleep(WINDOW).await;
        let n = hits_a.load(Ordering::SeqCst) - before;
        assert!((3..=7).contains(&n), "{n} checks in 1.5 s at 300 ms");

        assert_eq!(
            h.registry.deregister("default", "a", Instant::now()),
            crate::registry::Removal::Removed
        );
        let gone = hits_a.load(Ordering::SeqCst);
        let b_before = hits_b.load(Ordering::SeqCst);
        tokio::time::sleep(WINDOW).await;
        assert!(
            hits_a.load(Ordering::SeqCst) <= gone + 1,
            "a removed entry is no longer checked"
        );
        assert!(hits_b.load(Ordering::SeqCst) >= b_before + 3, "b still is");
    }

    #[tokio::test]
    async fn a_replaced_entry_is_checked_once_per_interval() {
        let h = health(INTERVAL);
        tokio::spawn(Arc::clone(&h).run());
        let (old, _) = vitals_server("127.0.0.83").await;
        let (new, hits) = vitals_server("127.0.0.84").await;
        register(&h, "x", old);
        // Same id, new address: a new generation, the old slot ends.
        register(&h, "x", new);
        until(&hits, 1).await;
        let before = hits.load(Ordering::SeqCst);
        tokio::time::sleep(WINDOW).await;
        let n = hits.load(Ordering::SeqCst) - before;
        assert!(
            (3..=7).contains(&n),
            "{n} checks in 1.5 s: one schedule only"
        );
    }
}

#[cfg(test)]
mod checker_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::serve::ListenerExt;

    use super::*;

    /// Pooled check connections are reused within an interval and closed
    /// after two unused ones (not kept the 90 s of reqwest's default).
    #[tokio::test]
    async fn pooled_connections_idle_out_after_two_intervals() {
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = Arc::clone(&accepted);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"ready": true})) }),
        );
        let l = tokio::net::TcpListener::bind(("127.0.0.85", 0))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let l = l.tap_io(move |_| {
            a.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(l, app).await });

        let interval = Duration::from_millis(100);
        let checker = Checker::new(Duration::from_millis(200), interval).unwrap();
        let spec = CheckSpec {
            path: "/metrics".into(),
            interval,
            timeout: Duration::from_millis(200),
        };
        for _ in 0..3 {
            let r = checker.check(addr, "x", true, &spec).await;
            assert!(matches!(r, CheckResult::Ready(_)), "{r:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one pooled connection");
        // Idle timeout: 2 × 100 ms + 200 ms.
        tokio::time::sleep(Duration::from_millis(900)).await;
        checker.check(addr, "x", true, &spec).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the idle one was closed"
        );
        checker.check(addr, "x", false, &spec).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "fresh: a new connection"
        );
    }
}
