//! Faulty backends and a faulty fleet against the real `roster lb`: who is
//! blamed for a broken exchange, how fast dead backends stop mattering, and
//! what a removal means for the very next request.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, Lb, client, free_addr, metric, until_closed, wait_for};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A client that sends a request to a slow backend and hangs up before the
/// answer, five times: never a backend failure, never an ejection, never a
/// replay on another backend.
#[tokio::test]
async fn client_hang_ups_are_not_backend_failures() {
    let (a, b) = (
        Backend::start("a", "127.0.0.71").await,
        Backend::start("b", "127.0.0.71").await,
    );
    let lb = Lb::start("127.0.0.71", &["--eject-after", "2"]).await;
    lb.register("a", a.addr(), a.metrics_port()).await;
    lb.register("b", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[a.addr(), b.addr()], Duration::from_secs(10))
        .await;
    for _ in 0..5 {
        let mut s = TcpStream::connect(lb.proxy).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
    }
    // Let the abandoned requests finish at the backends (1.5 s each).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let hits = a.hits.load(Ordering::Relaxed) + b.hits.load(Ordering::Relaxed);
    assert_eq!(
        hits, 5,
        "an abandoned request was re-sent to another backend"
    );
    let t = lb.telemetry().await;
    assert_eq!(
        metric(&t, "roster_lb_ejections_total").unwrap_or(0.0),
        0.0,
        "a backend was ejected for the client's hang-up:\n{t}"
    );
    for e in ["a", "b"] {
        assert!(lb.entry(e).await["ejected"].is_null());
    }
    assert!(t.contains(r#"code_class="aborted""#), "{t}");
    assert_eq!(metric(&t, "roster_lb_retries_total"), Some(0.0));
}

/// An app that answers every request with a header and then breaks the
/// body: `reset` closes the socket right after the header, otherwise it
/// sends half the promised body first.
async fn broken_app(ip: &str, reset: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::Relaxed);
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
                let _ = s.write_all(head).await;
                if !reset {
                    let _ = s.write_all(&[b'x'; 400]).await;
                }
                #[allow(deprecated)] // zero linger: an RST, no blocking
                let _ = s.set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn failures_after_the_header_count_and_eject() {
    for (ip, reset) in [("127.0.0.72", true), ("127.0.0.73", false)] {
        let vitals = Backend::start("bad", ip).await;
        let (app, hits) = broken_app(ip, reset).await;
        let lb = Lb::start(ip, &["--eject-after", "3", "--retries", "0"]).await;
        lb.register("bad", app, vitals.metrics_port()).await;
        lb.wait_backends(&[app], Duration::from_secs(10)).await;
        for _ in 0..4 {
            let r = client().get(lb.proxy_url("/")).send().await;
            if let Ok(r) = r {
                assert!(
                    r.bytes().await.is_err(),
                    "a broken body reached the client whole"
                );
            }
        }
        assert!(hits.load(Ordering::Relaxed) >= 3);
        let entry = lb.entry("bad").await;
        assert!(
            entry["ejected"].is_string(),
            "reset={reset}: a backend breaking every answer is not ejected: {entry}"
        );
        let t = lb.telemetry().await;
        let label = format!(r#"backend="{app}",code_class="#);
        assert!(
            t.contains(&format!(r#"{label}"error""#)),
            "reset={reset}: not counted as an error:\n{t}"
        );
        assert!(
            !t.contains(&format!(r#"{label}"2xx""#)),
            "reset={reset}: a broken answer counted as 2xx:\n{t}"
        );
    }
}

/// A vitals port that accepts and never answers (a zone outage).
async fn black_hole(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
            if held.len() > 2000 {
                held.remove(0);
            }
        }
    });
    addr
}

/// 300 registered backends whose vitals never answer must not delay the
/// first check of a new backend, nor the detection of a live one dying.
#[tokio::test]
async fn dead_backends_do_not_slow_checks_of_live_ones() {
    let ip = "127.0.0.74";
    let hole = black_hole(ip).await;
    let lb = Lb::start(
        ip,
        &[
            "--health-interval",
            "300ms",
            "--health-timeout",
            "1s",
            "--health-concurrency",
            "64",
            "--rate-limit",
            "0",
            "--panic-threshold",
            "0",
        ],
    )
    .await;
    let c = client();
    for i in 0..300 {
        let body = json!({"id": format!("dead-{i}"), "address": format!("{ip}:{}", 20000 + i),
            "metrics_port": hole.port()});
        let r = c
            .post(lb.url("/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Every dead one has timed out once (1 s each, 64 at a time): from now
    // on they keep timing out, and would fill one shared check queue.
    wait_for(
        Duration::from_secs(20),
        "every dead entry checked",
        || async {
            let reg = lb.registry().await;
            reg["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|e| !e["last_check"].is_null()))
        },
    )
    .await;
    let good = Backend::start("good", ip).await;
    let t0 = Instant::now();
    lb.register("good", good.addr(), good.metrics_port()).await;
    lb.wait_backends(&[good.addr()], Duration::from_secs(30))
        .await;
    let routable_after = t0.elapsed();
    assert!(
        routable_after < Duration::from_millis(1500),
        "a new backend waited {routable_after:?} behind dead ones"
    );
    // Its vitals die: out within threshold x (interval + timeout) + slack.
    good.vitals.kill();
    let t1 = Instant::now();
    lb.wait_backends(&[], Duration::from_secs(30)).await;
    let gone_after = t1.elapsed();
    assert!(
        gone_after < Duration::from_secs(4),
        "a dead backend stayed routable {gone_after:?}"
    );
}

/// After `DELETE` answers 204, neither `/backends` nor the next request
/// sees the backend (checked at once, over several rounds).
#[tokio::test]
async fn delete_is_read_your_writes() {
    let ip = "127.0.0.75";
    let keep = Backend::start("keep", ip).await;
    let lb = Lb::start(ip, &[]).await;
    lb.register("keep", keep.addr(), keep.metrics_port()).await;
    let c = client();
    for round in 0..5 {
        let gone = Backend::start(&format!("gone-{round}"), ip).await;
        lb.register(&gone.id, gone.addr(), gone.metrics_port())
            .await;
        lb.wait_backends(&[keep.addr(), gone.addr()], Duration::from_secs(10))
            .await;
        let r = c
            .delete(lb.url(&format!("/register/{}", gone.id)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let hits = gone.hits.load(Ordering::Relaxed);
        let listed = lb.backends().await;
        assert!(
            !listed.contains(&gone.addr().to_string()),
            "round {round}: /backends still lists a deleted backend: {listed:?}"
        );
        for _ in 0..10 {
            let r = c.get(lb.proxy_url("/")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        assert_eq!(
            gone.hits.load(Ordering::Relaxed),
            hits,
            "round {round}: traffic reached a deleted backend"
        );
    }
}

/// `ready: false` takes a backend out of `/backends` the moment `/registry`
/// shows it not ready.
#[tokio::test]
async fn not_ready_is_out_as_soon_as_it_is_seen() {
    let ip = "127.0.0.76";
    let b = Backend::start("b", ip).await;
    let lb = Lb::start(ip, &["--health-interval", "100ms"]).await;
    lb.register("b", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    b.set_ready(false);
    wait_for(Duration::from_secs(5), "not_ready in /registry", || async {
        lb.entry("b").await["state"] == "not_ready"
    })
    .await;
    assert!(
        lb.backends().await.is_empty(),
        "listed after not_ready was seen"
    );
}

/// A backend's `roster_lb_requests_total` series leave with it (deleted or
/// expired), so a scrape is bounded by the live pool.
#[tokio::test]
async fn per_backend_series_leave_with_the_backend() {
    let ip = "127.0.0.77";
    // Long enough that the "deleted" backend is still leased when it is
    // deleted, short enough that the "expired" one goes within the wait.
    let lb = Lb::start(ip, &["--lease-ttl", "3s"]).await;
    for how in ["deleted", "expired"] {
        let b = Backend::start(how, ip).await;
        lb.register(how, b.addr(), b.metrics_port()).await;
        lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
        client().get(lb.proxy_url("/")).send().await.unwrap();
        let series = format!(r#"backend="{}""#, b.addr());
        // The counter is bumped in pingora's logging phase, which runs after
        // the client already has its response.
        wait_for(Duration::from_secs(2), "the backend's series", || async {
            lb.telemetry().await.contains(&series)
        })
        .await;
        if how == "deleted" {
            client()
                .delete(lb.url(&format!("/register/{how}")))
                .send()
                .await
                .unwrap();
        }
        wait_for(
            Duration::from_secs(8),
            "the backend's series dropped",
            || async { !lb.telemetry().await.contains(&series) },
        )
        .await;
    }
}

#[tokio::test]
async fn registry_full_answers_retry_after() {
    let lb = Lb::start("127.0.0.78", &["--max-backends", "1"]).await;
    let a = free_addr("127.0.0.78");
    assert_eq!(lb.register("a", a, 9090).await, 201);
    let r = client()
        .post(lb.url("/register"))
        .json(&json!({"id": "b", "address": "127.0.0.78:1", "metrics_port": 9090}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let secs: u64 = after
        .expect("a full registry's 429 has Retry-After")
        .parse()
        .unwrap();
    assert!(secs >= 1);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("max_backends"));
}

/// RFC 9112: an HTTP/1.1 request without Host (or with two) is a 400 and
/// reaches no backend; HTTP/1.0 needs none.
#[tokio::test]
async fn http11_without_host_is_400() {
    let ip = "127.0.0.79";
    let b = Backend::start("b", ip).await;
    let lb = Lb::start(ip, &[]).await;
    lb.register("b", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    // (pingora's parser refuses two Hosts itself, with a bare 400.)
    for (req, json) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], true),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false),
    ] {
        let mut s = TcpStream::connect(lb.proxy).await.unwrap();
        s.write_all(req).await.unwrap();
        let (_, got) = until_closed(&mut s, Duration::from_secs(5))
            .await
            .expect("answered and closed");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(!json || text.contains(r#""error""#), "{text}");
    }
    assert_eq!(b.hits.load(Ordering::Relaxed), 0, "proxied without a Host");
    let mut s = TcpStream::connect(lb.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let (_, got) = until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200") || got.starts_with(b"HTTP/1.0 200"));
}

/// A declared body above the cap is refused before any of it is sent.
#[tokio::test]
async fn oversized_content_length_gets_an_early_413() {
    let lb = Lb::start("127.0.0.80", &[]).await;
    let mut s = TcpStream::connect(lb.control).await.unwrap();
    s.write_all(b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("no early answer to an oversized Content-Length")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains(r#""error""#), "{text}");
}

/// An empty token file is logged once per change, not once per request.
#[tokio::test]
async fn an_empty_token_file_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let log = dir.path().join("lb.log");
    let lb = Lb::start_with(
        "127.0.0.81",
        &["--token-file", token.to_str().unwrap()],
        &[],
        Some(&log),
    )
    .await;
    std::fs::write(&token, "").unwrap();
    let c = client();
    for _ in 0..20 {
        c.post(lb.url("/register"))
            .bearer_auth("s3cret")
            .json(&json!({"id": "a", "address": "127.0.0.81:1", "metrics_port": 9090}))
            .send()
            .await
            .unwrap();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings = text.matches("token file unreadable").count();
    assert_eq!(warnings, 1, "{text}");
}
