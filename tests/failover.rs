//! Zero client-visible errors: retries, passive ejection, panic mode, LB
//! drain. Real binary under steady, bounded load on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Backend, Lb, client, metric, start_load, wait_for};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn crashed_backend_costs_no_request() {
    // A long health interval: only retries and ejection can hide the crash.
    let lb = Lb::start(
        "127.0.13.1",
        &["--health-interval", "5s", "--health-timeout", "1s"],
    )
    .await;
    let backends = [
        Backend::start("a", "127.0.13.2").await,
        Backend::start("b", "127.0.13.3").await,
        Backend::start("c", "127.0.13.4").await,
    ];
    for b in &backends {
        lb.register(&b.id, b.addr(), b.metrics_port()).await;
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    lb.wait_backends(&addrs, Duration::from_secs(5)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(
        lb.proxy_url("/"),
        8,
        Duration::from_secs(20),
        200_000,
        Arc::clone(&stop),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    // App and vitals die at once; nobody deregisters.
    backends[0].app.kill();
    backends[0].vitals.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(
        report.ok > 200,
        "too little load to mean anything: {report:?}"
    );
    assert!(
        report.failures.is_empty(),
        "{} failed: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );

    // Ejected at once, long before the next health check.
    let a = lb.entry("a").await;
    assert_eq!(a["routable"], false, "{a}");
    assert!(
        a["ejected"].as_str().unwrap().contains("consecutive"),
        "{a}"
    );
    let t = lb.telemetry().await;
    assert!(
        metric(&t, "roster_lb_ejections_total").unwrap_or(0.0) >= 1.0,
        "{t}"
    );
    assert!(metric(&t, "roster_lb_retries_total").unwrap_or(0.0) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn panic_mode_keeps_traffic_flowing() {
    let on = Lb::start("127.0.14.1", &["--panic-threshold", "50"]).await;
    let off = Lb::start("127.0.14.5", &["--panic-threshold", "0"]).await;
    let a = Backend::start("a", "127.0.14.2").await;
    let b = Backend::start("b", "127.0.14.3").await;
    let nr = Backend::start("nr", "127.0.14.4").await;
    for lb in [&on, &off] {
        for be in [&a, &b, &nr] {
            lb.register(&be.id, be.addr(), be.metrics_port()).await;
        }
        lb.wait_backends(&[a.addr(), b.addr(), nr.addr()], Duration::from_secs(5))
            .await;
    }
    // One backend says not ready: it must never be used, panic or not.
    nr.set_ready(false);
    // Every vitals server becomes unreachable; the apps keep serving.
    a.vitals.kill();
    b.vitals.kill();
    wait_for(Duration::from_secs(5), "panic mode", || async {
        on.registry().await["panic"] == true
    })
    .await;
    let mut got = on.backends().await;
    got.sort();
    let mut want = vec![a.addr().to_string(), b.addr().to_string()];
    want.sort();
    assert_eq!(got, want, "panic routes to verified, ready backends only");
    let nr_hits = nr.hits.load(Ordering::Relaxed);
    for _ in 0..20 {
        let r = client().get(on.proxy_url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(nr.hits.load(Ordering::Relaxed), nr_hits);
    let t = on.telemetry().await;
    assert_eq!(metric(&t, "roster_lb_panic"), Some(1.0));

    // Without panic mode the pool is empty: 503.
    off.wait_backends(&[], Duration::from_secs(5)).await;
    let r = client().get(off.proxy_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}

/// A backend that reads the request and hangs up without answering.
async fn black_hole(ip: &str, hits: Arc<AtomicU64>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                if let Ok(n) = s.read(&mut buf).await
                    && n > 0
                {
                    hits.fetch_add(1, Ordering::Relaxed);
                }
                // Dropped: connection closed with no response.
            });
        }
    });
    addr
}

/// A vitals server that says ready with the given id.
async fn vitals(ip: &str, id: &'static str) -> Arc<common::Server> {
    common::Server::start(
        common::free_addr(ip),
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move {
                axum::Json(serde_json::json!({"ready": true, "id": id}))
            }),
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_are_bounded_and_never_replay_unsafe_requests() {
    let lb = Lb::start("127.0.15.1", &["--retries", "1", "--eject-after", "0"]).await;
    let hits = Arc::new(AtomicU64::new(0));
    let mut servers = Vec::new();
    for (i, id) in ["h1", "h2", "h3"].into_iter().enumerate() {
        let ip = format!("127.0.15.{}", 2 + i);
        let app = black_hole(&ip, Arc::clone(&hits)).await;
        let v = vitals(&ip, id).await;
        lb.register(id, app, v.addr.port()).await;
        servers.push((app, v));
    }
    let apps: Vec<SocketAddr> = servers.iter().map(|s| s.0).collect();
    lb.wait_backends(&apps, Duration::from_secs(5)).await;

    // GET is idempotent: tried once more (retries=1), then 502.
    let r = client().get(lb.proxy_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(hits.swap(0, Ordering::Relaxed), 2, "1 try + 1 retry");

    // POST reached a backend: never replayed.
    let r = client()
        .post(lb.proxy_url("/order"))
        .body("buy 1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        hits.swap(0, Ordering::Relaxed),
        1,
        "POST must not be replayed"
    );

    // Connect failures: retried up to the limit too.
    let before = metric(
        &lb.telemetry().await,
        "roster_lb_upstream_connect_failures_total",
    )
    .unwrap_or(0.0);
    let lb2 = Lb::start(
        "127.0.15.9",
        &[
            "--retries",
            "1",
            "--eject-after",
            "0",
            "--health-interval",
            "10s",
        ],
    )
    .await;
    let closed: Vec<SocketAddr> = (0..3)
        .map(|i| common::free_addr(&format!("127.0.15.{}", 10 + i)))
        .collect();
    for (i, addr) in closed.iter().enumerate() {
        let id = ["c1", "c2", "c3"][i];
        let v = vitals(&addr.ip().to_string(), id).await;
        lb2.register(id, *addr, v.addr.port()).await;
        servers.push((*addr, v));
    }
    lb2.wait_backends(&closed, Duration::from_secs(5)).await;
    let r = client().get(lb2.proxy_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let t = lb2.telemetry().await;
    assert_eq!(
        metric(&t, "roster_lb_upstream_connect_failures_total"),
        Some(2.0)
    );
    assert_eq!(before, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_and_readyz_says_so() {
    let lb = Lb::start(
        "127.0.16.1",
        &["--shutdown-delay", "500ms", "--grace-period", "10s"],
    )
    .await;
    let a = Backend::start("a", "127.0.16.2").await;
    lb.register("a", a.addr(), a.metrics_port()).await;
    lb.wait_backends(&[a.addr()], Duration::from_secs(5)).await;
    wait_for(Duration::from_secs(3), "ready", || async {
        client()
            .get(lb.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // A slow request is in flight when SIGTERM arrives.
    let slow = tokio::spawn({
        let url = lb.proxy_url("/slow");
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    lb.proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = client().get(lb.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "readyz must fail at once on SIGTERM");
    // During shutdown_delay new requests are still served.
    let r = client().get(lb.proxy_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "a");

    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "in-flight request finished"
    );
    let mut lb = lb;
    let status = lb
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("LB exited");
    assert!(status.success(), "{status:?}");
    // Exited once idle, not after the whole 10s grace period.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_sigterm_then_app_exit_costs_no_request() {
    let lb = Lb::start("127.0.19.1", &[]).await;
    let stay = Backend::start("stay", "127.0.19.2").await;
    lb.register("stay", stay.addr(), stay.metrics_port()).await;
    // The leaving backend: an app plus a real `roster agent` sidecar.
    let leaving = Backend::start("leaving", "127.0.19.3").await;
    let vitals = common::free_addr("127.0.19.3");
    let (lb_control, port, app) = (
        lb.control.to_string(),
        vitals.port().to_string(),
        leaving.addr().to_string(),
    );
    let mut agent = common::Proc::spawn(
        "agent",
        &[
            "agent",
            "--discovery-lb",
            &lb_control,
            "--metrics-port",
            &port,
            "--metrics-listen",
            "127.0.19.3",
            "--id",
            "leaving",
            "--address",
            &app,
            "--announce-interval",
            "2s",
            "--drain-period",
            "5s",
            "--health-interval",
            "300ms",
        ],
        &[],
    );
    lb.wait_backends(&[stay.addr(), leaving.addr()], Duration::from_secs(10))
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(
        lb.proxy_url("/"),
        8,
        Duration::from_secs(20),
        200_000,
        Arc::clone(&stop),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = leaving.hits.load(Ordering::Relaxed);
    assert!(before > 0, "the leaving backend took traffic");
    agent.signal("TERM");
    let status = agent
        .wait_exit(Duration::from_secs(8))
        .expect("agent exits after draining");
    assert!(status.success(), "{status:?}");
    // The app stops right after its agent.
    leaving.app.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(report.ok > 200, "{report:?}");
    assert!(
        report.failures.is_empty(),
        "{} failed: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert_eq!(lb.backends().await, [stay.addr().to_string()]);
}
