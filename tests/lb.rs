//! `roster lb` end to end: the real binary, fake backends on loopback.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Backend, Lb, client, wait_for};
use serde_json::{Value, json};

async fn proxied_id(lb: &Lb) -> Option<String> {
    let r = client().get(lb.proxy_url("/hello")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["id"].as_str().map(String::from)
}

#[tokio::test(flavor = "multi_thread")]
async fn register_renew_delete_and_round_robin() {
    let lb = Lb::start("127.0.1.1", &[]).await;
    let a = Backend::start("a", "127.0.1.2").await;
    let b = Backend::start("b", "127.0.1.3").await;
    // Different metrics ports per backend: the registered one is probed.
    assert_ne!(a.metrics_port(), b.metrics_port());

    assert_eq!(lb.register("a", a.addr(), a.metrics_port()).await, 201);
    assert_eq!(lb.register("b", b.addr(), b.metrics_port()).await, 201);
    let r = client()
        .post(lb.url("/register"))
        .json(
            &json!({"id": "a", "address": a.addr().to_string(), "metrics_port": a.metrics_port()}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "re-posting renews");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "a");
    assert!(body["next_announce_seconds"].as_u64().unwrap() >= 1);

    lb.wait_backends(&[a.addr(), b.addr()], Duration::from_secs(5))
        .await;

    // Round robin spreads evenly.
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..40 {
        let id = proxied_id(&lb).await.expect("proxied");
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    for n in seen.values() {
        assert!((15..=25).contains(n), "uneven spread {seen:?}");
    }

    // X-Forwarded-For carries the client address.
    let v: Value = client()
        .get(lb.proxy_url("/x"))
        .header("x-forwarded-for", "1.2.3.4")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["xff"], "1.2.3.4, 127.0.0.1");

    // Delete: out of /backends at once; unknown id → 404 JSON.
    let r = client().delete(lb.url("/register/a")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    lb.wait_backends(&[b.addr()], Duration::from_secs(2)).await;
    let r = client().delete(lb.url("/register/a")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("id"));

    // The registry shows state, vitals and the digest.
    let reg = lb.registry().await;
    assert_eq!(reg["digest"].as_str().unwrap().len(), 8);
    let entry = &reg["backends"][0];
    assert_eq!(entry["id"], "b");
    assert_eq!(entry["state"], "healthy");
    assert_eq!(entry["vitals"]["cpu_usage"], 1.5);
    assert!(entry["last_check"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_dead_and_recovery() {
    let lb = Lb::start("127.0.2.1", &["--unhealthy-threshold", "2"]).await;
    let a = Backend::start("a", "127.0.2.2").await;
    let b = Backend::start("b", "127.0.2.3").await;
    lb.register("a", a.addr(), a.metrics_port()).await;
    lb.register("b", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[a.addr(), b.addr()], Duration::from_secs(5))
        .await;

    // ready=false: out within one interval (300ms) plus slack.
    a.set_ready(false);
    lb.wait_backends(&[b.addr()], Duration::from_millis(1500))
        .await;
    let ea = lb.entry("a").await;
    assert_eq!(ea["state"], "not_ready");
    a.set_ready(true);
    lb.wait_backends(&[a.addr(), b.addr()], Duration::from_secs(2))
        .await;

    // Non-2xx vitals count as failures: out after the threshold.
    a.vitals_status
        .store(500, std::sync::atomic::Ordering::Relaxed);
    lb.wait_backends(&[b.addr()], Duration::from_secs(3)).await;
    a.vitals_status
        .store(200, std::sync::atomic::Ordering::Relaxed);
    lb.wait_backends(&[a.addr(), b.addr()], Duration::from_secs(3))
        .await;

    // Vitals port dies: out after unhealthy_threshold failures, not before
    // the first failure is seen.
    b.vitals.kill();
    lb.wait_backends(&[a.addr()], Duration::from_secs(3)).await;
    let eb = lb.entry("b").await;
    assert_eq!(eb["state"], "unhealthy");
    assert!(eb["last_error"].as_str().unwrap().contains("GET"), "{eb}");

    // Recovery: a fresh vitals server on the same port brings it back.
    let port = b.metrics_port();
    let vitals = common::Server::start(
        std::net::SocketAddr::new("127.0.2.3".parse().unwrap(), port),
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { axum::Json(json!({"ready": true, "id": "b"})) }),
        ),
    )
    .await;
    lb.wait_backends(&[a.addr(), b.addr()], Duration::from_secs(3))
        .await;
    drop(vitals);
}

#[tokio::test(flavor = "multi_thread")]
async fn id_mismatch_is_refused_and_leases_expire() {
    let lb = Lb::start("127.0.3.1", &["--lease-ttl", "1500ms"]).await;
    let a = Backend::start("a", "127.0.3.2").await;
    *a.vitals_id.lock() = "someone-else".into();
    lb.register("a", a.addr(), a.metrics_port()).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        lb.backends().await.is_empty(),
        "a stranger's vitals never route"
    );
    let reg = lb.registry().await;
    assert!(
        reg["backends"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );
    // Not renewed: gone after the lease.
    wait_for(Duration::from_secs(4), "lease expiry", || async {
        lb.registry().await["backends"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_pool_is_503_with_a_body() {
    let lb = Lb::start("127.0.4.1", &[]).await;
    let r = client().get(lb.proxy_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no backend"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_waits_for_the_first_round() {
    // Warm-up is long; readiness must come from the registry stabilizing.
    let lb = Lb::start(
        "127.0.5.1",
        &[
            "--warmup",
            "60s",
            "--health-interval",
            "1s",
            "--health-timeout",
            "900ms",
        ],
    )
    .await;
    let r = client().get(lb.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "warming up");
    // A registered backend whose vitals answer slowly holds readiness back
    // until its first check is done.
    let slow = common::Server::start(
        common::free_addr("127.0.5.2"),
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                axum::Json(json!({"ready": true}))
            }),
        ),
    )
    .await;
    let app = common::free_addr("127.0.5.2");
    lb.register("slow", app, slow.addr.port()).await;
    let r = client().get(lb.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "first check still running");
    wait_for(Duration::from_secs(6), "readyz 200", || async {
        client()
            .get(lb.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(
        client()
            .get(lb.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_json_4xx_and_lb_keeps_serving() {
    let lb = Lb::start("127.0.6.1", &[]).await;
    let a = Backend::start("a", "127.0.6.2").await;
    lb.register("a", a.addr(), a.metrics_port()).await;
    lb.wait_backends(&[a.addr()], Duration::from_secs(5)).await;

    let c = client();
    let addr = a.addr().to_string();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "malformed"),
        (b"".to_vec(), 400, "malformed"),
        (br#"{"id":"x"}"#.to_vec(), 422, "address"),
        (
            json!({"id": "x", "address": addr, "metrics_port": "9090"})
                .to_string()
                .into_bytes(),
            422,
            "metrics_port",
        ),
        (
            json!({"id": "x", "address": addr, "metrics_port": 70000})
                .to_string()
                .into_bytes(),
            422,
            "metrics_port",
        ),
        (
            json!({"id": "bad id!", "address": addr, "metrics_port": 1})
                .to_string()
                .into_bytes(),
            422,
            "id",
        ),
        (
            json!({"id": "x", "address": "nohost", "metrics_port": 1})
                .to_string()
                .into_bytes(),
            422,
            "address",
        ),
        (
            json!({"id": "x", "address": "169.254.169.254:80", "metrics_port": 1})
                .to_string()
                .into_bytes(),
            403,
            "address",
        ),
        (
            json!({"id": "x", "address": addr, "metrics_port": 1, "weight": 0})
                .to_string()
                .into_bytes(),
            422,
            "weight",
        ),
        (vec![b' '; 70 * 1024], 413, "body"),
        (vec![0xff, 0xfe, 0x00], 400, "malformed"),
    ];
    for (body, status, field) in cases {
        let r = c
            .post(lb.url("/register"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            status,
            "body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        let e: Value = r.json().await.expect("JSON error body");
        let msg = e["error"].as_str().expect("error field");
        assert!(msg.contains(field), "{msg:?} should name {field}");
    }
    // Nothing changed, and the proxy still serves.
    assert_eq!(lb.backends().await, [a.addr().to_string()]);
    assert_eq!(proxied_id(&lb).await.as_deref(), Some("a"));
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_is_prometheus_text() {
    let lb = Lb::start("127.0.7.1", &[]).await;
    let a = Backend::start("a", "127.0.7.2").await;
    lb.register("a", a.addr(), a.metrics_port()).await;
    lb.wait_backends(&[a.addr()], Duration::from_secs(5)).await;
    for _ in 0..3 {
        proxied_id(&lb).await.expect("proxied");
    }
    // Requests are counted in pingora's logging phase, just after the
    // response went out: wait for the third.
    let scrape = || lb.telemetry();
    wait_for(Duration::from_secs(2), "3 requests counted", || async {
        scrape().await.lines().any(|l| {
            l.starts_with("roster_lb_requests_total{") && l.contains("2xx") && l.ends_with(" 3")
        })
    })
    .await;
    let text = scrape().await;
    let families = parse_prometheus(&text);
    for name in [
        "roster_lb_backends",
        "roster_lb_routable_backends",
        "roster_lb_routable_digest",
        "roster_lb_requests_total",
        "roster_lb_request_duration_seconds",
        "roster_lb_health_checks_total",
        "roster_lb_registrations_total",
    ] {
        assert!(families.contains_key(name), "{name} missing in\n{text}");
    }
    assert_eq!(families["roster_lb_backends"], "gauge");
    assert_eq!(families["roster_lb_requests_total"], "counter");
    assert_eq!(families["roster_lb_request_duration_seconds"], "histogram");
    let line = text
        .lines()
        .find(|l| l.starts_with("roster_lb_requests_total{") && l.contains("2xx"))
        .expect("2xx counter");
    assert!(line.ends_with(" 3"), "{line}");
    assert!(text.contains("roster_lb_backends{state=\"healthy\"} 1"));
}

/// Minimal Prometheus text parser: every sample line must be well-formed
/// and belong to a family with HELP and TYPE. Returns family → type.
pub fn parse_prometheus(text: &str) -> HashMap<String, String> {
    let mut types = HashMap::new();
    let mut helps = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (n, t) = (it.next().unwrap(), it.next().unwrap());
            types.insert(n.to_string(), t.to_string());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if !line.is_empty() {
            let (name_labels, value) = line.rsplit_once(' ').expect("sample");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            let name = name_labels.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE for {line}");
            assert!(helps.contains(family), "no HELP for {line}");
        }
    }
    types
}

#[tokio::test(flavor = "multi_thread")]
async fn status_prints_the_registry_table() {
    let lb = Lb::start("127.0.17.1", &[]).await;
    let a = Backend::start("backend-1", "127.0.17.2").await;
    lb.register("backend-1", a.addr(), a.metrics_port()).await;
    lb.wait_backends(&[a.addr()], Duration::from_secs(5)).await;
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--lb", &lb.control.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("ID"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("backend-1"))
        .expect("row");
    assert!(
        row.contains(&a.addr().to_string()) && row.contains("healthy") && row.contains("yes"),
        "{row}"
    );
    assert!(text.contains("1 registered, 1 routable"));
    // An unreachable LB is a clear error, not a panic.
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--lb", "127.0.17.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/registry"));
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_sticks_and_least_loaded_avoids_busy() {
    let ch = Lb::start("127.0.18.1", &["--algorithm", "consistent_hash"]).await;
    // Queues only: on a loaded machine one answer can take 20× the others',
    // and the response-time factor (tested on its own in select_tests)
    // would then outweigh b's reported load.
    let ll = Lb::start(
        "127.0.18.5",
        &["--algorithm", "least_loaded", "--load-score", "latency=0"],
    )
    .await;
    let bs = [
        Backend::start("a", "127.0.18.2").await,
        Backend::start("b", "127.0.18.3").await,
        Backend::start("c", "127.0.18.4").await,
    ];
    // b reports a heavy load in its vitals.
    bs[1]
        .reported_load
        .store(1000, std::sync::atomic::Ordering::Relaxed);
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    for lb in [&ch, &ll] {
        for b in &bs {
            lb.register(&b.id, b.addr(), b.metrics_port()).await;
        }
        lb.wait_backends(&addrs, Duration::from_secs(5)).await;
    }
    // Same key → same backend; many keys → more than one backend.
    let mut by_key: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for i in 0..60 {
        let key = format!("user-{}", i % 12);
        let v: Value = client()
            .get(ch.proxy_url("/"))
            .header("x-roster-hash-key", &key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        by_key
            .entry(key)
            .or_default()
            .insert(v["id"].as_str().unwrap().to_string());
    }
    assert!(by_key.values().all(|ids| ids.len() == 1), "{by_key:?}");
    let used: std::collections::HashSet<_> = by_key.values().flatten().collect();
    assert!(used.len() > 1, "keys spread over backends: {used:?}");

    // Least loaded: the busy backend loses every draw.
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..90 {
        let id = proxied_id(&ll).await.expect("proxied");
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.get("b").copied().unwrap_or(0), 0, "{seen:?}");
    assert!(
        seen.get("a").copied().unwrap_or(0) > 20 && seen.get("c").copied().unwrap_or(0) > 20,
        "{seen:?}"
    );
}

/// With several threads, idle upstream connections are reused, not raced
/// for: one current-thread runtime per thread made pingora fail to
/// reacquire pooled connections ("failed to acquire reusable stream") and
/// connect afresh, hundreds of times a second under load.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused_with_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lb.log");
    let lb = Lb::start_with("127.0.31.1", &["--threads", "2"], &[], Some(&log)).await;
    let b = Backend::start("reuse-1", "127.0.31.2").await;
    lb.register(&b.id, b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(5)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let report = common::start_load(
        format!("http://{}/", lb.proxy),
        16,
        Duration::from_secs(10),
        3000,
        stop,
    )
    .await
    .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.ok >= 3000, "{} requests", report.ok);
    let logged = std::fs::read_to_string(&log).unwrap();
    let raced = logged.matches("failed to acquire reusable stream").count();
    assert_eq!(raced, 0, "{raced} pooled connections could not be reused");
}
