//! Hostile clients against every listener (proxy, control API, vitals port,
//! webhook): a head that never ends, a body that never comes, idle and
//! keep-alive connections are shed within the configured limits; a full
//! listener evicts idle connections; one port's clients cannot take the
//! descriptors another port (or the agent's own probe) needs.
//!
//! Limits are set short (500 ms), so every test is bounded in seconds.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{Backend, Lb, Proc, agent_bin, bin, client, free_addr, until_closed, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: &str = "500ms";
/// Longest a shed connection may live: the limit plus slack for loaded CI.
const SHED_BY: Duration = Duration::from_secs(3);

fn limit_flags(prefix: &str) -> Vec<String> {
    ["header-timeout", "body-timeout", "idle-timeout"]
        .iter()
        .flat_map(|k| [format!("--{prefix}{k}"), SHORT.to_string()])
        .collect()
}

/// Connect and send `bytes`.
async fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if !bytes.is_empty() {
        s.write_all(bytes).await.expect("write");
    }
    s
}

/// Idle and stalled clients against a plain HTTP listener: each must be
/// closed within `SHED_BY`.
async fn assert_sheds_slow_clients(addr: SocketAddr, post_path: &str) {
    // Connects and sends nothing.
    let mut idle = open(addr, b"").await;
    // A Content-Length body that never comes.
    let head = format!(
        "POST {post_path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"id\""
    );
    let mut no_body = open(addr, head.as_bytes()).await;
    // A chunked body that never ends.
    let head = format!(
        "POST {post_path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{{\"id\r\n"
    );
    let mut chunked = open(addr, head.as_bytes()).await;
    // Keep-alive: one request, then silence.
    let mut kept = open(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (a, c, d, e) = tokio::join!(
        until_closed(&mut idle, SHED_BY),
        until_closed(&mut no_body, SHED_BY),
        until_closed(&mut chunked, SHED_BY),
        until_closed(&mut kept, SHED_BY),
    );
    assert!(a.is_some(), "{addr}: an idle connection is held");
    assert!(
        c.is_some(),
        "{addr}: a body that never comes is waited for forever"
    );
    assert!(
        d.is_some(),
        "{addr}: a chunked body that never ends is waited for forever"
    );
    let (_, kept_bytes) = e.expect("an idle keep-alive connection is held");
    assert!(
        kept_bytes.starts_with(b"HTTP/1.1 "),
        "the request itself was answered"
    );
}

/// A slowloris connection (one header byte every 100 ms) is closed at the
/// head deadline with a 408, although every single read is fast.
async fn assert_slowloris_shed(addr: SocketAddr) {
    let mut s = open(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"a").await.is_err() {
            break;
        }
        if let Some((_, got)) = until_closed(&mut s, Duration::from_millis(1)).await {
            answer = got;
            break;
        }
    }
    let lived = started.elapsed();
    assert!(lived < SHED_BY, "{addr}: slowloris lived {lived:?}");
    if !answer.is_empty() {
        assert!(
            answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[tokio::test]
async fn control_api_sheds_slow_and_idle_clients() {
    let flags = limit_flags("control-");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let lb = Lb::start("127.0.0.61", &flags).await;
    assert_sheds_slow_clients(lb.control, "/register").await;
    assert_slowloris_shed(lb.control).await;
    // The API still answers the next client, and counted what it shed.
    assert_eq!(
        client()
            .get(lb.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let t = lb.telemetry().await;
    assert!(
        t.contains(
            r#"roster_lb_connections_shed_total{listener="control",reason="header_timeout"}"#
        ),
        "{t}"
    );
}

#[tokio::test]
async fn proxy_port_sheds_slow_and_idle_clients() {
    let b = Backend::start("b1", "127.0.0.62").await;
    let flags = limit_flags("proxy-");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let lb = Lb::start("127.0.0.62", &flags).await;
    lb.register("b1", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    assert_sheds_slow_clients(lb.proxy, "/echo").await;
    assert_slowloris_shed(lb.proxy).await;
    let r = client().get(lb.proxy_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "normal traffic still flows");
}

/// A client that asks for a large answer and stops reading is cut after
/// `body_timeout` without progress: on HTTP/1 this is the listener's own
/// write bound (pingora's per-request write timer stays off there).
#[tokio::test]
async fn proxy_port_cuts_a_client_that_stops_reading() {
    const BIG: usize = 64 << 20;
    let ip = "127.0.0.68";
    let vitals = Backend::start("big", ip).await;
    let app = axum::Router::new().fallback(|| async { vec![b'x'; BIG] });
    let big = common::Server::start(common::any_port(ip), app).await;
    let flags = limit_flags("proxy-");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let lb = Lb::start(ip, &flags).await;
    lb.register("big", big.addr, vitals.metrics_port()).await;
    lb.wait_backends(&[big.addr], Duration::from_secs(10)).await;

    let mut s = open(lb.proxy, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // Socket buffers fill within milliseconds; then no progress.
    tokio::time::sleep(SHED_BY).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was never closed");
    assert!(
        got < BIG,
        "the whole answer arrived: the client was never cut"
    );
    let text = lb.telemetry().await;
    let shed = common::metric(
        &text,
        "roster_lb_connections_shed_total{listener=\"proxy\",reason=\"write_timeout\"}",
    );
    assert_eq!(shed, Some(1.0), "{text}");
}

/// Start `roster-agent` serving vitals on `ip` with short limits (and any
/// `extra` flags), for an app at `app`.
fn agent(ip: &str, app: SocketAddr, lb: SocketAddr, extra: &[&str]) -> (Proc, SocketAddr) {
    let vitals = free_addr(ip);
    let (app, lb, port) = (app.to_string(), lb.to_string(), vitals.port().to_string());
    let mut args = vec![
        "--id",
        "v1",
        "--address",
        &app,
        "--discovery-lb",
        &lb,
        "--metrics-listen",
        ip,
        "--metrics-port",
        &port,
    ];
    args.extend_from_slice(extra);
    (
        Proc::spawn_bin(&agent_bin(), "agent", &args, &[], None),
        vitals,
    )
}

async fn wait_ready(vitals: SocketAddr) {
    let url = format!("http://{vitals}/metrics");
    wait_for(Duration::from_secs(10), "agent vitals ready", || async {
        match client().get(&url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["ready"] == true),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn vitals_port_sheds_slow_and_idle_clients() {
    let app = tokio::net::TcpListener::bind("127.0.0.63:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let flags = limit_flags("vitals-");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_agent, vitals) = agent("127.0.0.63", app_addr, free_addr("127.0.0.63"), &flags);
    wait_ready(vitals).await;
    assert_sheds_slow_clients(vitals, "/metrics").await;
    assert_slowloris_shed(vitals).await;
    drop(app);
}

/// The agent at a 256-descriptor limit with 300 idle clients on its vitals
/// port: its own probe still has descriptors (ready stays true) and a new
/// client (an LB's check) still gets an answer, evicting an idle one.
#[tokio::test]
async fn idle_clients_cannot_knock_an_agent_out() {
    let app = tokio::net::TcpListener::bind("127.0.0.64:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let [vitals, lb] = common::free_addrs("127.0.0.64");
    let (app_s, port) = (app_addr.to_string(), vitals.port().to_string());
    let lb = lb.to_string();
    let agent = agent_bin();
    let _agent = Proc::spawn_bin(
        "prlimit",
        "agent",
        &[
            "--nofile=256:256",
            &agent,
            "--id",
            "v2",
            "--address",
            &app_s,
            "--discovery-lb",
            &lb,
            "--metrics-listen",
            "127.0.0.64",
            "--metrics-port",
            &port,
            // A slow app probe cadence is not what is tested: keep defaults.
        ],
        &[],
        None,
    );
    wait_ready(vitals).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(vitals).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let v: serde_json::Value = client()
            .get(format!("http://{vitals}/metrics"))
            .send()
            .await
            .expect("a new client is answered despite 300 idle ones")
            .json()
            .await
            .unwrap();
        assert_eq!(v["ready"], true, "the agent's own probe still works: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(idle);
    drop(app);
}

/// The LB at a 512-descriptor limit with 600 idle control connections:
/// proxied requests still succeed, and so do control calls.
#[tokio::test]
async fn control_clients_cannot_starve_the_proxy() {
    let b = Backend::start("b1", "127.0.0.65").await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let [proxy, control] = common::free_addrs("127.0.0.65");
    let roster = bin();
    let (p, c) = (proxy.to_string(), control.to_string());
    let mut lb = Lb {
        proc: Proc::spawn_bin(
            "prlimit",
            "lb",
            &[
                "--nofile=512:512",
                &roster,
                "lb",
                "--listen",
                &p,
                "--control-listen",
                &c,
                "--allowed-networks",
                "127.0.0.0/8",
                "--health-interval",
                "300ms",
                "--warmup",
                "0s",
                "--rate-limit",
                "0",
                "--threads",
                "1",
            ],
            &[],
            Some(log.path()),
        ),
        proxy,
        control,
    };
    lb.wait_up().await;
    lb.register("b1", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    let mut idle = Vec::new();
    for _ in 0..600 {
        match TcpStream::connect(control).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ok = 0;
    for _ in 0..15 {
        if let Ok(r) = client().get(lb.proxy_url("/")).send().await
            && r.status() == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 15, "proxied requests failed while control was flooded");
    assert_eq!(lb.register("b1", b.addr(), b.metrics_port()).await, 200);
    drop(idle);
    let _ = lb.proc.child.kill();
}

/// A full listener keeps at most `max_connections`: newcomers evict the
/// oldest idle connections instead of being refused.
#[tokio::test]
async fn a_full_listener_evicts_idle_connections() {
    let lb = Lb::start("127.0.0.66", &["--control-max-connections", "20"]).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(lb.control).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut open_now = 0;
    for s in &mut idle {
        if until_closed(s, Duration::from_millis(20)).await.is_none() {
            open_now += 1;
        }
    }
    assert!(
        open_now <= 20,
        "{open_now} of 50 idle connections still open"
    );
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

/// HTTP/2 connections count as busy only while a stream is open: a full
/// proxy table evicts a quiet one (the client preface and SETTINGS, then
/// nothing) for a newcomer instead of refusing it.
#[tokio::test]
async fn a_full_proxy_evicts_quiet_h2_connections() {
    const PREFACE_AND_SETTINGS: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let ip = "127.0.0.69";
    let b = Backend::start("b1", ip).await;
    let lb = Lb::start(ip, &["--proxy-max-connections", "2"]).await;
    lb.register("b1", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    let _h2a = open(lb.proxy, PREFACE_AND_SETTINGS).await;
    let _h2b = open(lb.proxy, PREFACE_AND_SETTINGS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = open(
        lb.proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (_, answer) = until_closed(&mut s, SHED_BY)
        .await
        .expect("the newcomer was answered and closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let text = lb.telemetry().await;
    let evicted = common::metric(
        &text,
        "roster_lb_connections_shed_total{listener=\"proxy\",reason=\"evicted\"}",
    );
    assert_eq!(evicted, Some(1.0), "{text}");
}

/// The webhook: a TCP connection that never starts its TLS handshake, and
/// one that never sends a request after it, are both closed.
#[tokio::test]
async fn webhook_sheds_idle_and_handshake_less_clients() {
    let dir = tempfile::tempdir().unwrap();
    generate_cert(dir.path());
    let addr = free_addr("127.0.0.67");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let a = addr.to_string();
    let _inject = Proc::spawn(
        "inject",
        &[
            "inject",
            "--listen",
            &a,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--header-timeout",
            "500ms",
            "--idle-timeout",
            "500ms",
        ],
        &[],
    );
    wait_for(Duration::from_secs(10), "webhook up", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let mut no_handshake = TcpStream::connect(addr).await.unwrap();
    assert!(
        until_closed(&mut no_handshake, SHED_BY).await.is_some(),
        "a connection without a TLS handshake is held"
    );
    let mut half = open(addr, &[0x16, 0x03, 0x01]).await;
    assert!(
        until_closed(&mut half, SHED_BY).await.is_some(),
        "a stalled TLS handshake is held"
    );
}

fn generate_cert(dir: &Path) {
    let out = std::process::Command::new(bin())
        .args(["inject", "--generate-cert"])
        .arg(dir)
        .args(["--dns-name", "localhost", "--dns-name", "127.0.0.67"])
        .output()
        .expect("run roster inject --generate-cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
