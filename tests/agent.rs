//! `roster agent` end to end: the real binary against real LBs, fake LBs
//! that record what they get, and LBs that never answer. IPs 127.0.20–29.x.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{Lb, Proc, Server, any_port, client, free_addr, wait_for};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// An app the default TCP probe can reach.
async fn app(ip: &str) -> Arc<Server> {
    Server::start(any_port(ip), Router::new().fallback(|| async { "app\n" })).await
}

/// `roster agent` announcing `address` with its vitals on `ip:<free port>`.
fn agent(
    ip: &str,
    id: &str,
    address: SocketAddr,
    lbs: &[String],
    extra: &[&str],
) -> (Proc, SocketAddr) {
    agent_from(common::BIN, ip, id, address, lbs, extra)
}

/// `agent`, run by `bin`: `roster` (`roster agent …`) or the sidecar
/// binary (`roster-agent …`).
fn agent_from(
    bin: &str,
    ip: &str,
    id: &str,
    address: SocketAddr,
    lbs: &[String],
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let vitals = free_addr(ip);
    let (lbs, addr, port) = (
        lbs.join(","),
        address.to_string(),
        vitals.port().to_string(),
    );
    let mut args = vec![
        "agent",
        "--id",
        id,
        "--address",
        &addr,
        "--discovery-lb",
        &lbs,
        "--metrics-listen",
        ip,
        "--metrics-port",
        &port,
    ];
    args.extend_from_slice(extra);
    if bin != common::BIN {
        args.remove(0);
    }
    (Proc::spawn_bin(bin, id, &args, &[], None), vitals)
}

async fn get_json(url: &str) -> Option<Value> {
    client().get(url).send().await.ok()?.json().await.ok()
}

async fn wait_vitals(vitals: SocketAddr) -> Value {
    let url = format!("http://{vitals}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = get_json(&url).await {
            return v;
        }
        assert!(Instant::now() < deadline, "no vitals on {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a fake LB saw.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    method: Method,
    path: String,
    auth: Option<String>,
    body: String,
}

type Answer = Arc<dyn Fn(usize) -> Response + Send + Sync>;

/// An LB that records requests; `answer(n)` answers the n-th POST (from 0).
struct FakeLb {
    server: Arc<Server>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl FakeLb {
    async fn start(ip: &str, answer: Answer) -> Self {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let posts = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        let router = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                h.lock().push(Hit {
                    at: Instant::now(),
                    method: method.clone(),
                    path: uri.path().to_string(),
                    auth,
                    body,
                });
                let resp = if method == Method::POST {
                    answer(posts.fetch_add(1, Ordering::SeqCst))
                } else {
                    StatusCode::NO_CONTENT.into_response()
                };
                async move { resp }
            },
        );
        Self {
            server: Server::start(any_port(ip), router).await,
            hits,
        }
    }

    fn addr(&self) -> String {
        self.server.addr.to_string()
    }

    fn hits(&self, method: Method) -> Vec<Hit> {
        self.hits
            .lock()
            .iter()
            .filter(|h| h.method == method)
            .cloned()
            .collect()
    }
}

fn registered(next: u64) -> Response {
    (
        StatusCode::OK,
        axum::Json(
            json!({"id": "x", "address": "127.0.0.1:1", "metrics_port": 1, "weight": 1,
            "state": "unhealthy", "lease_ttl_seconds": 90, "next_announce_seconds": next}),
        ),
    )
        .into_response()
}

/// `roster lb` on fixed addresses (as `Lb::start` runs it otherwise).
async fn lb_at(proxy: SocketAddr, control: SocketAddr) -> Lb {
    let (p, c) = (proxy.to_string(), control.to_string());
    let args = [
        "lb",
        "--listen",
        &p,
        "--control-listen",
        &c,
        "--threads",
        "2",
        "--allowed-networks",
        "127.0.0.0/8",
        "--health-interval",
        "300ms",
        "--health-timeout",
        "250ms",
        "--warmup",
        "0s",
    ];
    let mut lb = Lb {
        proc: Proc::spawn("lb", &args, &[]),
        proxy,
        control,
    };
    lb.wait_up().await;
    lb
}

/// A listener that completes TCP handshakes and never answers.
fn blackhole(ip: &str) -> std::net::TcpListener {
    std::net::TcpListener::bind((ip, 0)).expect("bind blackhole")
}

#[tokio::test(flavor = "multi_thread")]
async fn vitals_fields_and_types_exactly_as_the_seed() {
    let lb = Lb::start("127.0.20.1", &[]).await;
    let app = app("127.0.20.2").await;
    let (_agent, vitals) = agent(
        "127.0.20.2",
        "vit-1",
        app.addr,
        &[lb.control.to_string()],
        &["--announce-interval", "1s"],
    );
    let v = wait_vitals(vitals).await;
    let obj = v.as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "backoff_requests",
            "connected_peers",
            "cpu_usage",
            "failed_responses",
            "gpu_usage",
            "id",
            "memory_usage",
            "ready",
            "requests_in_progress",
            "uptime_seconds",
            "version",
        ],
        "{v}"
    );
    assert!(v["ready"].is_boolean(), "{v}");
    for int in [
        "requests_in_progress",
        "failed_responses",
        "connected_peers",
        "backoff_requests",
        "uptime_seconds",
    ] {
        assert!(v[int].is_u64(), "{int} must be an integer: {v}");
    }
    for float in ["cpu_usage", "memory_usage", "gpu_usage"] {
        assert!(v[float].is_f64(), "{float} must be a float: {v}");
        let x = v[float].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&x), "{float} = {x}");
    }
    // Serialized as 0.0, not 0: the seed's JSON types.
    let text = client()
        .get(format!("http://{vitals}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"gpu_usage\":0.0"), "{text}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["id"], "vit-1");
    assert_eq!(v["ready"], true, "the app answers the TCP probe: {v}");

    let r = client()
        .get(format!("http://{vitals}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The LB accepts these vitals (ready and a matching id).
    lb.wait_backends(&[app.addr], Duration::from_secs(5)).await;

    // The app dies: ready=false, and the LB takes it out.
    app.kill();
    wait_for(Duration::from_secs(5), "ready=false", || async {
        get_json(&format!("http://{vitals}/metrics"))
            .await
            .is_some_and(|v| v["ready"] == false)
    })
    .await;
    lb.wait_backends(&[], Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_series_have_type_lines() {
    let app = app("127.0.21.2").await;
    let dead = free_addr("127.0.21.1").to_string();
    let (_agent, vitals) = agent("127.0.21.2", "tel-1", app.addr, &[dead], &[]);
    wait_vitals(vitals).await;
    let r = client()
        .get(format!("http://{vitals}/telemetry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let text = r.text().await.unwrap();
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
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}:\n{text}"
        );
    }
    assert!(text.contains("\nnode_ready 1\n"), "{text}");
    assert!(text.contains("\nfailed_responses_total 0\n"), "{text}");
    assert!(
        text.contains(&format!(
            "roster_build_info{{app_version=\"{0}\",version=\"{0}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn app_health_and_app_vitals_are_merged() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = Arc::clone(&healthy);
    let router = Router::new()
        .route(
            "/healthz",
            get(move || {
                let ok = h.load(Ordering::SeqCst);
                async move { if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE } }
            }),
        )
        .route(
            "/vitals",
            get(|| async {
                axum::Json(json!({"requests_in_progress": 7, "failed_responses": 3,
                    "connected_peers": 2, "backoff_requests": 1, "version": "2.0.0", "ignored": [1]}))
            }),
        );
    let app = Server::start(any_port("127.0.22.2"), router).await;
    let dead = free_addr("127.0.22.1").to_string();
    let (health, vit) = (
        format!("http://{}/healthz", app.addr),
        format!("http://{}/vitals", app.addr),
    );
    let (_agent, vitals) = agent(
        "127.0.22.2",
        "merge-1",
        app.addr,
        &[dead],
        &["--app-health", &health, "--app-vitals", &vit],
    );
    let v = wait_vitals(vitals).await;
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["requests_in_progress"], 7);
    assert_eq!(v["failed_responses"], 3);
    assert_eq!(v["connected_peers"], 2);
    assert_eq!(v["backoff_requests"], 1);
    assert_eq!(v["version"], "2.0.0");
    assert_eq!(v["id"], "merge-1");
    healthy.store(false, Ordering::SeqCst);
    wait_for(
        Duration::from_secs(5),
        "ready=false on a 503 probe",
        || async {
            get_json(&format!("http://{vitals}/metrics"))
                .await
                .is_some_and(|v| v["ready"] == false)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn announces_to_two_lbs_at_once() {
    let lb1 = Lb::start("127.0.23.1", &[]).await;
    let lb2 = Lb::start("127.0.23.2", &[]).await;
    let app = app("127.0.23.3").await;
    let started = Instant::now();
    let (_agent, vitals) = agent(
        "127.0.23.3",
        "two-1",
        app.addr,
        &[lb1.control.to_string(), lb2.control.to_string()],
        &["--announce-interval", "30s"],
    );
    // At once on start, not after the 30 s interval.
    lb1.wait_backends(&[app.addr], Duration::from_secs(5)).await;
    lb2.wait_backends(&[app.addr], Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    for lb in [&lb1, &lb2] {
        let reg = lb.registry().await;
        let e = &reg["backends"][0];
        assert_eq!(e["id"], "two-1");
        assert_eq!(e["address"], app.addr.to_string());
        assert_eq!(e["metrics_port"], vitals.port());
        assert_eq!(e["vitals"]["id"], "two-1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lb_does_not_delay_the_other() {
    let hole = blackhole("127.0.24.1");
    let fake = FakeLb::start("127.0.24.2", Arc::new(|_| registered(30))).await;
    let app = app("127.0.24.3").await;
    let started = Instant::now();
    let (mut agent, _) = agent(
        "127.0.24.3",
        "hole-1",
        app.addr,
        // The black hole first: it must not hold up the live LB.
        &[hole.local_addr().unwrap().to_string(), fake.addr()],
        // 2 s: each try at the black hole hangs for 1 s (half the interval).
        &["--announce-interval", "2s"],
    );
    wait_for(Duration::from_secs(3), "first announce", || async {
        !fake.hits(Method::POST).is_empty()
    })
    .await;
    let first = fake.hits(Method::POST)[0].at - started;
    assert!(
        first < Duration::from_millis(1500),
        "first announce after {first:?}"
    );
    tokio::time::sleep(Duration::from_millis(7000)).await;
    let posts = fake.hits(Method::POST);
    assert!(posts.len() >= 4, "{} announces in ~7 s", posts.len());
    for w in posts.windows(2) {
        let gap = w[1].at - w[0].at;
        // 2 s ±10%; waiting on the black hole first would add a second.
        assert!(
            gap >= Duration::from_millis(1750) && gap <= Duration::from_millis(2600),
            "gap {gap:?}: the live LB's heartbeat must keep its own pace"
        );
    }
    assert!(agent.child.try_wait().unwrap().is_none(), "agent alive");
    drop(hole);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_reread_sent_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-one\n").unwrap();
    // The LB asks for a 1 s heartbeat although the agent's interval is 30 s.
    let fake = FakeLb::start("127.0.25.1", Arc::new(|_| registered(1))).await;
    let app = app("127.0.25.2").await;
    let vitals = free_addr("127.0.25.2");
    let mut child = Command::new(common::BIN)
        .args([
            "agent",
            "--metrics-listen",
            "127.0.25.2",
            "--metrics-port",
            &vitals.port().to_string(),
            "--announce-interval",
            "30s",
            "--drain-period",
            "2s",
            "--health-interval",
            "100ms",
        ])
        .env("ROSTER_DISCOVERY_LB", fake.addr())
        .env("ROSTER_TOKEN_FILE", &token)
        // The injected sidecar's defaults: id and address from the downward API.
        .env("POD_NAME", "tok-1")
        .env("POD_IP", app.addr.ip().to_string())
        .env("ROSTER_APP_PORT", app.addr.port().to_string())
        .env("RUST_LOG", "debug")
        .env_remove("ROSTER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut guard = ChildGuard(child);
    wait_for(
        Duration::from_secs(5),
        "announce with token one",
        || async {
            fake.hits(Method::POST)
                .iter()
                .any(|h| h.auth.as_deref() == Some("Bearer s3cret-one"))
        },
    )
    .await;
    // Rotated in place, as a Secret or projected token is: the next
    // heartbeat (1 s later, as the LB asked) carries the new one.
    std::fs::write(&token, "s3cret-two").unwrap();
    let rotated = Instant::now();
    wait_for(
        Duration::from_secs(3),
        "announce with token two",
        || async {
            fake.hits(Method::POST)
                .iter()
                .any(|h| h.auth.as_deref() == Some("Bearer s3cret-two"))
        },
    )
    .await;
    assert!(rotated.elapsed() < Duration::from_millis(2500));
    let posts = fake.hits(Method::POST);
    assert!(posts.len() >= 2);
    assert!(posts.iter().all(|h| h.path == "/register"));
    let reg: Value = serde_json::from_str(&posts[0].body).unwrap();
    assert_eq!(reg["id"], "tok-1");
    assert_eq!(reg["address"], app.addr.to_string());
    assert_eq!(reg["metrics_port"], vitals.port());

    let child = &mut guard.0;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_child(child, Duration::from_secs(6)).expect("agent exits");
    assert!(status.success(), "{status}");
    let deletes = fake.hits(Method::DELETE);
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].path, "/register/tok-1");
    assert_eq!(deletes[0].auth.as_deref(), Some("Bearer s3cret-two"));
    let log = log.join().unwrap();
    assert!(log.contains("announcing"), "debug log captured: {log}");
    assert!(
        !log.contains("s3cret"),
        "the token leaked into the log:\n{log}"
    );
}

/// Kills the child on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_child(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_answers_never_crash_and_retry_after_is_honoured() {
    let answer: Answer = Arc::new(|n| match n {
        0 => (StatusCode::OK, "this is not JSON").into_response(),
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "{\"error\":").into_response(),
        2 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "3")],
            axum::Json(json!({"error": "too many backends"})),
        )
            .into_response(),
        _ => registered(30),
    });
    let fake = FakeLb::start("127.0.26.1", answer).await;
    let app = app("127.0.26.2").await;
    let (mut agent, vitals) = agent(
        "127.0.26.2",
        "bad-1",
        app.addr,
        &[fake.addr()],
        &["--announce-interval", "1s"],
    );
    wait_for(Duration::from_secs(10), "4 announces", || async {
        fake.hits(Method::POST).len() >= 4
    })
    .await;
    let t: Vec<Instant> = fake.hits(Method::POST).iter().map(|h| h.at).collect();
    let gap = |i: usize| t[i + 1] - t[i];
    // A 200 with a body that is not JSON still renewed the lease: interval.
    assert!(gap(0) >= Duration::from_millis(850), "{:?}", gap(0));
    // A 500: first backoff step (0.5 s ±10%), sooner than the interval.
    assert!(gap(1) < Duration::from_millis(850), "{:?}", gap(1));
    // A 429 with Retry-After: 3 waits 3 s although the interval is 1 s.
    assert!(gap(2) >= Duration::from_millis(2950), "{:?}", gap(2));
    assert!(agent.child.try_wait().unwrap().is_none(), "agent alive");
    let r = client()
        .get(format!("http://{vitals}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_lb_is_refilled_within_one_interval() {
    let lb = Lb::start("127.0.27.1", &[]).await;
    let (proxy, control) = (lb.proxy, lb.control);
    let app = app("127.0.27.2").await;
    let (_agent, _) = agent(
        "127.0.27.2",
        "re-1",
        app.addr,
        &[control.to_string()],
        &["--announce-interval", "2s"],
    );
    lb.wait_backends(&[app.addr], Duration::from_secs(5)).await;
    drop(lb); // SIGKILL: the registry is gone with it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lb = lb_at(proxy, control).await;
    let up = Instant::now();
    assert!(lb.backends().await.is_empty(), "restarted empty");
    // One interval (2 s + 10%) plus one health check.
    lb.wait_backends(&[app.addr], Duration::from_millis(3500))
        .await;
    eprintln!("refilled {:?} after the restart", up.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_deregisters_everywhere_then_exits_after_the_drain_period() {
    let lb1 = Lb::start("127.0.28.1", &[]).await;
    let lb2 = Lb::start("127.0.28.2", &[]).await;
    let hole = blackhole("127.0.28.3");
    let app = app("127.0.28.4").await;
    let (mut agent, vitals) = agent(
        "127.0.28.4",
        "term-1",
        app.addr,
        &[
            lb1.control.to_string(),
            lb2.control.to_string(),
            hole.local_addr().unwrap().to_string(),
        ],
        &[
            "--announce-interval",
            "1s",
            "--drain-period",
            "2s",
            "--health-interval",
            "300ms",
        ],
    );
    lb1.wait_backends(&[app.addr], Duration::from_secs(5)).await;
    lb2.wait_backends(&[app.addr], Duration::from_secs(5)).await;
    let term = Instant::now();
    agent.signal("TERM");
    // ready=false at once, while the vitals keep being served.
    wait_for(Duration::from_millis(800), "ready=false", || async {
        get_json(&format!("http://{vitals}/metrics"))
            .await
            .is_some_and(|v| v["ready"] == false)
    })
    .await;
    lb1.wait_backends(&[], Duration::from_millis(1500)).await;
    lb2.wait_backends(&[], Duration::from_millis(1500)).await;
    assert!(
        term.elapsed() < Duration::from_millis(1800),
        "{:?}",
        term.elapsed()
    );
    assert!(
        lb1.registry().await["backends"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The black hole never confirms: the agent serves not-ready for the
    // whole drain period, then exits 0.
    let status = agent
        .wait_exit(Duration::from_secs(6))
        .expect("agent exits");
    let took = term.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(4500),
        "exited {took:?} after SIGTERM with a 2 s drain period"
    );
    drop(hole);
}

/// Runs the sidecar binary exactly as the injector does: `roster-agent`,
/// then `roster-agent drain` as the preStop hook.
#[tokio::test(flavor = "multi_thread")]
async fn agent_drain_blocks_until_drained() {
    let lb = Lb::start("127.0.29.1", &[]).await;
    let app = app("127.0.29.2").await;
    let (mut agent, vitals) = agent_from(
        common::AGENT_BIN,
        "127.0.29.2",
        "drain-1",
        app.addr,
        &[lb.control.to_string()],
        &["--drain-period", "30s", "--health-interval", "1500ms"],
    );
    lb.wait_backends(&[app.addr], Duration::from_secs(5)).await;
    let port = vitals.port().to_string();
    let drain = move || {
        Command::new(common::AGENT_BIN)
            .args(["drain", "--metrics-listen", "127.0.29.2"])
            .env("ROSTER_METRICS_PORT", &port)
            .env_remove("ROSTER_CONFIG")
            .output()
            .unwrap()
    };
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(drain.clone()).await.unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 LB(s) confirmed"), "{stdout}");
    // Every LB confirmed at once, so it returns after one LB health
    // interval of not-ready (1.5 s), not after the 30 s drain period.
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
        "roster agent drain returned after {took:?}"
    );
    assert!(lb.backends().await.is_empty());
    let status = agent
        .wait_exit(Duration::from_secs(4))
        .expect("agent exits");
    assert!(status.success(), "{status}");

    // Nobody left to drain: a clear error, non-zero.
    let out = tokio::task::spawn_blocking(drain).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no roster agent answers"), "{err}");
}

#[test]
fn agent_config_from_flags_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roster.yaml");
    std::fs::write(
        &path,
        "discovery:\n  load_balancers: [\"lb1:8080\", \"lb2:8080\"]\n  announce_interval: 30s\n  metrics_port: 9090\n\
         agent:\n  drain_period: 20s\n  app_health: tcp:3000\n",
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args(["agent", "--print-config", "--metrics-port", "9191"])
        .env("ROSTER_CONFIG", &path)
        .env("ROSTER_METRICS_PORT", "9999")
        .env(
            "ROSTER_DISCOVERY_LB",
            "roster-lb-control:8080,10.0.0.9:8080",
        )
        .env("ROSTER_ANNOUNCE_INTERVAL", "10s")
        .env("ROSTER_ID", "web-1")
        .env("ROSTER_APP_PORT", "3000")
        .env("ROSTER_TOKEN_FILE", "/var/run/secrets/roster/token")
        .env("ROSTER_APP_VITALS", "http://127.0.0.1:3000/vitals")
        .env("ROSTER_METRICS_LISTEN", "0.0.0.0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let d = &c["discovery"];
    assert_eq!(d["metrics_port"].as_u64(), Some(9191), "flag beats env");
    assert_eq!(
        d["announce_interval"].as_str(),
        Some("10s"),
        "env beats file"
    );
    assert_eq!(
        d["load_balancers"][0].as_str(),
        Some("roster-lb-control:8080")
    );
    assert_eq!(d["load_balancers"][1].as_str(), Some("10.0.0.9:8080"));
    let a = &c["agent"];
    assert_eq!(a["id"].as_str(), Some("web-1"));
    assert_eq!(a["app_port"].as_u64(), Some(3000));
    assert_eq!(
        a["token_file"].as_str(),
        Some("/var/run/secrets/roster/token")
    );
    assert_eq!(
        a["app_vitals"].as_str(),
        Some("http://127.0.0.1:3000/vitals")
    );
    assert_eq!(a["app_health"].as_str(), Some("tcp:3000"), "file");
    assert_eq!(
        a["drain_period"].as_str(),
        Some("20s"),
        "file beats default"
    );

    // Neither --address nor $POD_IP: the error names the key.
    let out = Command::new(common::BIN)
        .args(["agent", "--id", "x", "--discovery-lb", "127.0.20.9:1"])
        .env_remove("ROSTER_CONFIG")
        .env_remove("POD_IP")
        .env_remove("ROSTER_ADDRESS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.address"), "{err}");
}
