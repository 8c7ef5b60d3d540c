//! Logging (tracing) and the LB's Prometheus metrics, `roster_lb_*`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::label::Label;
use std::sync::OnceLock;
use strum::VariantArray;

pub mod json;

/// Install the global tracing subscriber: `RUST_LOG` filter, default `info`;
/// `ROSTER_LOG_FORMAT=json` for JSON lines ([`json`]).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json::wanted(
        std::env::var(crate::config::env::LOG_FORMAT)
            .ok()
            .as_deref(),
    ) {
        fmt.event_format(json::JsonLines).try_init()
    } else {
        fmt.try_init()
    };
}

/// Every metric the LB exports.
pub struct LbMetrics {
    pub registry: Registry,
    /// `roster_lb_backends{state}`: registered backends per state, every service.
    pub backends: IntGaugeVec,
    /// `roster_lb_service_backends{service,state}`: the same per service.
    pub service_backends: IntGaugeVec,
    /// `roster_lb_routable_backends{service}`: backends traffic is sent to now.
    pub routable: IntGaugeVec,
    /// `roster_lb_routable_digest{service}`: the service's digest as a number.
    pub digest: IntGaugeVec,
    /// `roster_lb_requests_total{service,backend,code_class}`.
    pub requests: IntCounterVec,
    /// `roster_lb_request_duration_seconds{code_class}`.
    pub duration: HistogramVec,
    /// `duration`'s series per code class, resolved on first use (the
    /// request path then skips `with_label_values`: hashing the label and a
    /// lock per request, ~0.4k instructions).
    durations: [OnceLock<Histogram>; 7],
    /// `roster_lb_no_backend_total`: requests answered 503 for lack of a backend.
    pub no_backend: IntCounter,
    /// `roster_lb_upstream_connect_failures_total`.
    pub connect_failures: IntCounter,
    /// `roster_lb_health_checks_total{result}`.
    pub health_checks: IntCounterVec,
    /// `roster_lb_health_check_round_seconds`: time of one check.
    pub check_duration: Histogram,
    /// `roster_lb_registrations_total{result}`.
    pub registrations: IntCounterVec,
    /// `roster_lb_deregistrations_total{reason}`: deleted or expired.
    pub deregistrations: IntCounterVec,
    /// `roster_lb_ejections_total{reason}`: passive ejections.
    pub ejections: IntCounterVec,
    /// `roster_lb_panic{service}`: 1 while the service is in panic mode.
    pub panic: IntGaugeVec,
    /// `roster_lb_retries_total`: requests sent to another backend after a failure.
    pub retries: IntCounter,
    /// `roster_lb_config_reloads_total{result}`: route reloads, ok or refused.
    pub reloads: IntCounterVec,
    /// `roster_lb_open_connections{listener}`: client connections open now.
    pub open_connections: IntGaugeVec,
    /// `roster_lb_connections_shed_total{listener,reason}`: connections closed
    /// or refused by the listener's limits.
    pub connections_shed: IntCounterVec,
}

impl LbMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Families(&registry);
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let check_latency = vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0];
        Self {
            backends: r.gauges(BACKENDS, &["state"]),
            service_backends: r.gauges(SERVICE_BACKENDS, &["service", "state"]),
            routable: r.gauges(ROUTABLE, &["service"]),
            digest: r.gauges(DIGEST, &["service"]),
            requests: r.counters(REQUESTS, &["service", "backend", "code_class"]),
            duration: r.histograms(DURATION, latency, &["code_class"]),
            durations: Default::default(),
            no_backend: r.counter(NO_BACKEND),
            connect_failures: r.counter(CONNECT_FAILURES),
            health_checks: r.counters(HEALTH_CHECKS, &["result"]),
            check_duration: r.histogram(CHECK_DURATION, check_latency),
            registrations: r.counters(REGISTRATIONS, &["result"]),
            deregistrations: r.counters(DEREGISTRATIONS, &["reason"]),
            ejections: r.counters(EJECTIONS, &["reason"]),
            panic: r.gauges(PANIC, &["service"]),
            retries: r.counter(RETRIES),
            reloads: r.counters(RELOADS, &["result"]),
            open_connections: r.gauges(OPEN_CONNECTIONS, &["listener"]),
            connections_shed: r.counters(CONNECTIONS_SHED, &["listener", "reason"]),
            registry,
        }
    }

    /// Observe one request's duration under its code class.
    pub fn observe_duration(&self, class: CodeClass, seconds: f64) {
        self.durations[class as usize]
            .get_or_init(|| self.duration.with_label_values(&[class.as_str()]))
            .observe(seconds);
    }

    /// Copy a listener's connection counts into the series (at scrape time).
    pub fn observe_connections(&self, table: &crate::limits::ConnTable) {
        use std::sync::atomic::Ordering::Relaxed;
        let name = table.name();
        self.open_connections
            .with_label_values(&[name])
            .set(table.open() as i64);
        let s = &table.shed;
        for (reason, n) in [
            (ShedReason::HeaderTimeout, &s.header_timeout),
            (ShedReason::IdleTimeout, &s.idle_timeout),
            (ShedReason::WriteTimeout, &s.write_timeout),
            (ShedReason::Evicted, &s.evicted),
            (ShedReason::Refused, &s.refused),
        ] {
            let c = self
                .connections_shed
                .with_label_values(&[name, reason.as_str()]);
            c.inc_by(n.load(Relaxed).saturating_sub(c.get()));
        }
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

/// `roster_lb_registrations_total{result}`: how a `POST /register` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum RegistrationResult {
    Created,
    Renewed,
    RateLimited,
    Unauthorized,
    Forbidden,
    /// `registration.max_backends` reached.
    Full,
    /// The Kubernetes API did not answer a `kubernetes_auth` review.
    Unavailable,
    Invalid,
}

/// `roster_lb_deregistrations_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum DeregistrationReason {
    /// `DELETE /register/{id}`.
    Deleted,
    /// The lease ran out.
    Expired,
}

/// `roster_lb_ejections_total{reason}`: what live traffic saw fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum EjectionReason {
    Connect,
    Reset,
    #[strum(serialize = "5xx")]
    ServerError,
    /// gRPC UNAVAILABLE or RESOURCE_EXHAUSTED.
    Grpc,
}

/// `roster_lb_config_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum ReloadResult {
    Ok,
    /// The new file was invalid; the routes in force stay.
    Refused,
}

/// `roster_lb_connections_shed_total{reason}`: which limit closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum ShedReason {
    HeaderTimeout,
    IdleTimeout,
    WriteTimeout,
    Evicted,
    Refused,
}

/// A family's name and help text.
type Family = (&'static str, &'static str);

const BACKENDS: Family = ("roster_lb_backends", "Registered backends by state");
const SERVICE_BACKENDS: Family = (
    "roster_lb_service_backends",
    "Registered backends by service and state",
);
const ROUTABLE: Family = (
    "roster_lb_routable_backends",
    "Backends that traffic is routed to now, by service",
);
const DIGEST: Family = (
    "roster_lb_routable_digest",
    "32-bit digest of a service's routable address set; equal on replicas that agree",
);
const REQUESTS: Family = (
    "roster_lb_requests_total",
    "Proxied requests by service, backend and status class",
);
const DURATION: Family = (
    "roster_lb_request_duration_seconds",
    "Time from request to the end of the response, by status class",
);
const NO_BACKEND: Family = (
    "roster_lb_no_backend_total",
    "Requests answered 503 because no backend was available",
);
const CONNECT_FAILURES: Family = (
    "roster_lb_upstream_connect_failures_total",
    "Failed connection attempts to backends",
);
const HEALTH_CHECKS: Family = ("roster_lb_health_checks_total", "Vitals checks by result");
const CHECK_DURATION: Family = (
    "roster_lb_health_check_duration_seconds",
    "Time of one vitals check",
);
const REGISTRATIONS: Family = (
    "roster_lb_registrations_total",
    "POST /register answers by result",
);
const DEREGISTRATIONS: Family = (
    "roster_lb_deregistrations_total",
    "Entries removed, by reason (deleted, expired)",
);
const EJECTIONS: Family = (
    "roster_lb_ejections_total",
    "Backends ejected after failures on live traffic, by reason",
);
const PANIC: Family = (
    "roster_lb_panic",
    "1 while too few of a service's backends are healthy and the LB routes to all its verified ready ones",
);
const RETRIES: Family = (
    "roster_lb_retries_total",
    "Requests retried on another backend after a failure",
);
const RELOADS: Family = (
    "roster_lb_config_reloads_total",
    "Reloads of routes from the config file, by result (ok, refused)",
);
const OPEN_CONNECTIONS: Family = (
    "roster_lb_open_connections",
    "Client connections open now, by listener",
);
const CONNECTIONS_SHED: Family = (
    "roster_lb_connections_shed_total",
    "Connections closed or refused by the listener's limits, by reason",
);

/// Builds metric families and registers each as it is made: a family
/// that is declared is exported. Names are constants, so a failure is a bug.
struct Families<'a>(&'a Registry);

impl Families<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("unique metric names");
        c
    }

    fn gauges(&self, (name, help): Family, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("metric"))
    }

    fn counters(&self, (name, help): Family, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("metric"))
    }

    fn counter(&self, (name, help): Family) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("metric"))
    }

    fn histogram(&self, (name, help): Family, buckets: Vec<f64>) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.add(Histogram::with_opts(opts).expect("metric"))
    }

    fn histograms(&self, (name, help): Family, buckets: Vec<f64>, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.add(HistogramVec::new(opts, labels).expect("metric"))
    }
}

impl Default for LbMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Encode a registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// The `code_class` label of `roster_lb_requests_total` and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum CodeClass {
    #[strum(serialize = "1xx")]
    Informational,
    #[strum(serialize = "2xx")]
    Success,
    #[strum(serialize = "3xx")]
    Redirect,
    #[strum(serialize = "4xx")]
    ClientError,
    #[strum(serialize = "5xx")]
    ServerError,
    /// No answer, or the backend broke its answer after the header.
    Error,
    /// The client hung up before the answer was done.
    Aborted,
}

impl CodeClass {
    /// `2xx`, `4xx`... for a status code; `error` when none was sent.
    pub fn of(status: u16) -> Self {
        match status {
            100..=599 => Self::VARIANTS[usize::from(status / 100 - 1)],
            _ => Self::Error,
        }
    }
}

/// `2xx`, `4xx`... for a status code; `error` when no response was sent.
pub fn code_class(status: u16) -> &'static str {
    CodeClass::of(status).as_str()
}

/// One backend's `roster_lb_requests_total` series, resolved on first use:
/// the request path then skips `with_label_values` (hashing two label
/// strings per request, 1% of a proxy core at 10,000 backends).
#[derive(Debug, Default)]
pub struct BackendRequests([OnceLock<IntCounter>; 7]);

impl BackendRequests {
    /// Count one request to `backend` of `service` in `class`.
    pub fn inc(&self, vec: &IntCounterVec, service: &str, backend: &str, class: CodeClass) {
        self.0[class as usize]
            .get_or_init(|| vec.with_label_values(&[service, backend, class.as_str()]))
            .inc();
    }

    /// Drop every series of `backend` (it left the registry), so the
    /// scrape is bounded by the live pool.
    pub fn forget(vec: &IntCounterVec, service: &str, backend: &str) {
        for class in CodeClass::VARIANTS {
            let _ = vec.remove_label_values(&[service, backend, class.as_str()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_classes() {
        let got: Vec<_> = [0, 99, 100, 204, 301, 404, 503, 599, 600]
            .into_iter()
            .map(code_class)
            .collect();
        assert_eq!(
            got,
            [
                "error", "error", "1xx", "2xx", "3xx", "4xx", "5xx", "5xx", "error"
            ]
        );
    }

    #[test]
    fn durations_observe_into_the_labelled_series() {
        let m = LbMetrics::new();
        m.observe_duration(CodeClass::of(200), 0.002);
        m.observe_duration(CodeClass::of(204), 0.004);
        m.observe_duration(CodeClass::Aborted, 1.0);
        let h = |class| m.duration.with_label_values(&[class]);
        assert_eq!(h("2xx").get_sample_count(), 2);
        assert!((h("2xx").get_sample_sum() - 0.006).abs() < 1e-9);
        assert_eq!(h("aborted").get_sample_count(), 1);
        let text = m.render();
        // Classes never seen have no series.
        assert!(!text.contains(r#"code_class="3xx""#), "{text}");
    }

    #[test]
    fn backend_requests_count_into_the_shared_series() {
        let m = LbMetrics::new();
        let a = BackendRequests::default();
        a.inc(&m.requests, "s", "10.0.0.1:80", CodeClass::of(200));
        a.inc(&m.requests, "s", "10.0.0.1:80", CodeClass::of(201));
        a.inc(&m.requests, "s", "10.0.0.1:80", CodeClass::of(502));
        // A second holder (a re-registered backend) shares the series.
        BackendRequests::default().inc(&m.requests, "s", "10.0.0.1:80", CodeClass::of(200));
        let v = |class| {
            m.requests
                .with_label_values(&["s", "10.0.0.1:80", class])
                .get()
        };
        assert_eq!((v("2xx"), v("5xx"), v("4xx")), (3, 1, 0));
        BackendRequests::forget(&m.requests, "s", "10.0.0.1:80");
        assert!(!m.render().contains("10.0.0.1:80"), "series dropped");
    }
}
