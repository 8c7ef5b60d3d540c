//! What real services speak, through the real `roster lb` binary: h2c
//! and HTTP/2 over TLS downstream, h2c upstream, gRPC (unary,
//! bidirectional streaming, statuses in trailers, failure accounting),
//! WebSocket, TLS with SNI and certificate reload, and old TLS refused.

mod common;
mod proto_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, Lb, client, wait_for};
use proto_support::{GrpcClient, H2Backend, STEP, frame, unframe};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Register `addr` under `id`, announcing `protocol` when given.
async fn register(lb: &Lb, id: &str, addr: SocketAddr, vitals: u16, protocol: Option<&str>) {
    let mut body = json!({"id": id, "address": addr.to_string(), "metrics_port": vitals});
    if let Some(p) = protocol {
        body["protocol"] = json!(p);
    }
    let status = client()
        .post(lb.url("/register"))
        .json(&body)
        .send()
        .await
        .expect("register")
        .status();
    assert!(status.is_success(), "register {id}: {status}");
}

/// An LB with one h2c-only backend registered as `protocol: h2c`.
async fn lb_with_h2_backend(
    ip: &str,
    extra: &[&str],
) -> (Lb, H2Backend, std::sync::Arc<common::Server>) {
    let lb = Lb::start(ip, extra).await;
    let h2 = H2Backend::start(ip).await;
    let vitals = proto_support::vitals(ip, "h2-1").await;
    register(&lb, "h2-1", h2.addr, vitals.addr.port(), Some("h2c")).await;
    lb.wait_backends(&[h2.addr], Duration::from_secs(10)).await;
    (lb, h2, vitals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http1_clients_share_the_plain_port() {
    let (lb, _h2, _v) = lb_with_h2_backend("127.0.50.1", &[]).await;
    // h2c in (the h2 crate, hyper's HTTP/2, with prior knowledge), h2c
    // out: the backend refuses anything but HTTP/2.
    let mut c = GrpcClient::connect(lb.proxy).await;
    let r = c.unary("/hello", b"", false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.messages.concat(), b"h2 /hello");
    // HTTP/1.1 on the same port still works (the preface tells them apart).
    let r = client().get(lb.proxy_url("/x")).send().await.expect("h1");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.expect("body"), "h2 /x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_off_serves_http1_only() {
    let lb = Lb::start("127.0.50.2", &["--h2c", "false"]).await;
    let b = Backend::start("b1", "127.0.50.2").await;
    lb.register("b1", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    let r = client().get(lb.proxy_url("/")).send().await.expect("h1");
    assert_eq!(r.status(), 200);
    let s = tokio::net::TcpStream::connect(lb.proxy).await.expect("tcp");
    let h2 = tokio::time::timeout(STEP, h2::client::handshake(s)).await;
    let refused = match h2 {
        Err(_) | Ok(Err(_)) => true,
        Ok(Ok((send, conn))) => {
            tokio::spawn(conn);
            let req = http::Request::get("http://x/").body(()).expect("req");
            match send.ready().await {
                Ok(mut r) => match r.send_request(req, true) {
                    Ok((resp, _)) => tokio::time::timeout(STEP, resp)
                        .await
                        .map_or(true, |r| r.is_err()),
                    Err(_) => true,
                },
                Err(_) => true,
            }
        }
    };
    assert!(refused, "h2c must not be served with lb.h2c=false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_trailers_pass_through() {
    let (lb, _h2, _v) = lb_with_h2_backend("127.0.50.3", &[]).await;
    let mut c = GrpcClient::connect(lb.proxy).await;
    // Unary: the message back, grpc-status 0 in the trailers.
    let r = c.unary("/grpc.Test/Unary", b"ping", true).await;
    assert_eq!(r.status, 200);
    let got: Vec<Bytes> = r.messages.into_iter().flat_map(unframe).collect();
    assert_eq!(got, [Bytes::from_static(b"ping")]);
    assert_eq!(r.trailers.get("grpc-status").expect("status"), "0");
    // A non-OK status in the trailers reaches the client unchanged.
    let r = c.unary("/grpc.Test/Status/5", b"x", true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.trailers.get("grpc-status").expect("status"), "5");
    assert_eq!(
        r.trailers.get("grpc-message").expect("message"),
        "told%20to%20fail"
    );
    // Bidirectional streaming: each echo arrives before the next send.
    let (resp, mut tx) = c.open("/grpc.Test/Chat", true).await;
    tx.send_data(frame(b"one"), false).expect("send one");
    let resp = tokio::time::timeout(STEP, resp)
        .await
        .expect("head in time")
        .expect("head");
    let mut body = resp.into_body();
    for (i, msg) in [&b"one"[..], b"two", b"three"].iter().enumerate() {
        let chunk = tokio::time::timeout(STEP, body.data())
            .await
            .unwrap_or_else(|_| panic!("echo {i} in time"))
            .expect("a chunk")
            .expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        assert_eq!(unframe(chunk), [Bytes::copy_from_slice(msg)]);
        match i {
            0 => tx.send_data(frame(b"two"), false).expect("send two"),
            1 => tx.send_data(frame(b"three"), true).expect("send three"),
            _ => {}
        }
    }
    let trailers = tokio::time::timeout(STEP, body.trailers())
        .await
        .expect("trailers in time")
        .expect("trailers")
        .expect("some trailers");
    assert_eq!(trailers.get("grpc-status").expect("status"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_counts_toward_ejection() {
    let (lb, _h2, _v) = lb_with_h2_backend("127.0.50.4", &["--eject-after", "3"]).await;
    let mut c = GrpcClient::connect(lb.proxy).await;
    // NOT_FOUND is the call's problem, not the backend's.
    for _ in 0..4 {
        let r = c.unary("/grpc.Test/Status/5", b"x", true).await;
        assert_eq!(r.trailers.get("grpc-status").expect("status"), "5");
    }
    assert!(lb.entry("h2-1").await["ejected"].is_null());
    for _ in 0..3 {
        let r = c.unary("/grpc.Test/Status/14", b"x", true).await;
        assert_eq!(r.trailers.get("grpc-status").expect("status"), "14");
    }
    let e = lb.entry("h2-1").await;
    let why = e["ejected"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("gRPC"), "ejected after 3 UNAVAILABLE: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_bounds_the_wait_on_the_backend() {
    let args = ["--read-timeout", "60s", "--eject-after", "1"];
    let (lb, _h2, _v) = lb_with_h2_backend("127.0.50.10", &args).await;
    let mut c = GrpcClient::connect(lb.proxy).await;
    c.deadline = Some("500m");
    let started = Instant::now();
    let r = c.unary("/grpc.Test/Slow", b"x", true).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "cut at the deadline: {took:?}"
    );
    assert!(r.status >= 500, "the LB gave up: {r:?}");
    // The client's deadline is not the backend's failure: no ejection, and
    // without a deadline the LB waits (read_timeout is 60 s).
    assert!(lb.entry("h2-1").await["ejected"].is_null());
    c.deadline = None;
    let r = c.unary("/grpc.Test/Slow", b"x", true).await;
    assert_eq!(r.trailers.get("grpc-status").expect("status"), "0");
}

/// The agent's `--app-protocol` rides in its registrations: an h2c-only
/// backend is reached although the LB's default is http1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_announces_app_protocol() {
    let ip = "127.0.50.5";
    let lb = Lb::start(ip, &[]).await;
    let h2 = H2Backend::start(ip).await;
    let vitals = common::free_addr(ip);
    let (addr, ctl, port) = (
        h2.addr.to_string(),
        lb.control.to_string(),
        vitals.port().to_string(),
    );
    let mut args = vec!["agent", "--id", "ag-1", "--address", &addr];
    args.extend(["--discovery-lb", &ctl, "--metrics-listen", ip]);
    args.extend(["--metrics-port", &port, "--app-health", "none"]);
    args.extend(["--app-protocol", "h2c", "--announce-interval", "1s"]);
    let _agent = common::Proc::spawn("agent", &args, &[]);
    lb.wait_backends(&[h2.addr], Duration::from_secs(15)).await;
    let mut c = GrpcClient::connect(lb.proxy).await;
    let r = c.unary("/plain", b"", false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.messages.concat(), b"h2 /plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_outlives_read_timeout_and_closes_on_shutdown() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ip = "127.0.50.6";
    let args = [
        "--read-timeout",
        "1s",
        "--proxy-body-timeout",
        "1s",
        "--websocket-idle-timeout",
        "30s",
        "--grace-period",
        "2s",
    ];
    let mut lb = Lb::start(ip, &args).await;
    let (ws_addr, _ws) = proto_support::ws_echo(ip).await;
    let vitals = proto_support::vitals(ip, "ws-1").await;
    register(&lb, "ws-1", ws_addr, vitals.addr.port(), None).await;
    lb.wait_backends(&[ws_addr], Duration::from_secs(10)).await;

    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.expect("tcp");
    let url = format!("ws://{}/chat", lb.proxy);
    let (mut ws, resp) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    for (i, pause) in [0u64, 2500].into_iter().enumerate() {
        // Quiet for longer than read_timeout and the body timeout.
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let got = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("echo");
        assert_eq!(got, Message::text(text));
    }
    // Shutdown: the connection is held through the grace period, then
    // closed with a WebSocket close frame, 1001 "going away".
    let sent = Instant::now();
    lb.proc.signal("TERM");
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("closed within the grace period and a margin");
    let lived = sent.elapsed();
    match end {
        Some(Ok(Message::Close(frame))) => {
            let code = frame.map(|f| u16::from(f.code));
            assert_eq!(code, Some(1001), "close code");
        }
        other => panic!("expected a 1001 close frame, got {other:?}"),
    }
    assert!(
        lived >= Duration::from_millis(1500),
        "held through the grace period, closed after {lived:?}"
    );
    assert!(
        lb.proc.wait_exit(Duration::from_secs(5)).is_some(),
        "LB exited"
    );
}

/// A TLS LB with certificates for a.test and b.test (reloaded every 200 ms).
async fn tls_lb(ip: &str, dir: &std::path::Path) -> (Lb, SocketAddr, Vec<u8>, Vec<u8>) {
    let a = proto_support::write_cert(dir, "a", "a.test");
    let b = proto_support::write_cert(dir, "b", "b.test");
    let tls = common::free_addr(ip);
    let config = dir.join("lb.yaml");
    let d = dir.display();
    std::fs::write(
        &config,
        format!(
            "lb:\n  tls:\n    listen: \"{tls}\"\n    reload_interval: 200ms\n    certs:\n      \
             - {{cert_file: \"{d}/a.crt\", key_file: \"{d}/a.key\"}}\n      \
             - {{cert_file: \"{d}/b.crt\", key_file: \"{d}/b.key\"}}\n"
        ),
    )
    .expect("config");
    let cfg = config.display().to_string();
    let lb = Lb::start(ip, &["--config", &cfg]).await;
    wait_for(Duration::from_secs(10), "tls port", || async {
        tokio::net::TcpStream::connect(tls).await.is_ok()
    })
    .await;
    (lb, tls, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_h2_and_http1_fallback() {
    let ip = "127.0.50.7";
    let dir = tempfile::tempdir().expect("dir");
    let (lb, tls, _, _) = tls_lb(ip, dir.path()).await;
    let b = Backend::start("t1", ip).await;
    lb.register("t1", b.addr(), b.metrics_port()).await;
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    // ALPN h2: HTTP/2 to the LB, HTTP/1.1 to the backend.
    let s = proto_support::tls_connect(tls, "a.test", &["h2", "http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut c = GrpcClient::over(s).await;
    let r = c.unary("/over-h2", b"", false).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.messages.concat()).expect("json");
    assert_eq!(v["id"], "t1");
    // A client that offers only http/1.1 (or no ALPN) gets HTTP/1.1.
    for alpn in [&["http/1.1"][..], &[]] {
        let mut s = proto_support::tls_connect(tls, "a.test", alpn).await;
        let negotiated = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_ne!(negotiated.as_deref(), Some(&b"h2"[..]));
        s.write_all(b"GET /h1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        tokio::time::timeout(STEP, s.read_to_end(&mut got))
            .await
            .expect("answer in time")
            .ok();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"t1\""), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_selects_and_reloads_without_restart() {
    let ip = "127.0.50.8";
    let dir = tempfile::tempdir().expect("dir");
    let (mut lb, tls, a, b) = tls_lb(ip, dir.path()).await;
    let leaf = |sni: &'static str| async move {
        proto_support::leaf(&proto_support::tls_connect(tls, sni, &[]).await)
    };
    assert_eq!(leaf("a.test").await, a);
    assert_eq!(leaf("b.test").await, b);
    assert_eq!(leaf("other.test").await, a, "no match: the first");
    // The Secret is updated: the next handshake sees the new certificate.
    let a2 = proto_support::write_cert(dir.path(), "a", "a.test");
    let mut now = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        now = leaf("a.test").await;
        if now == a2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now, a2, "reloaded certificate served");
    assert_eq!(leaf("b.test").await, b, "b untouched");
    assert!(
        lb.proc.child.try_wait().expect("wait").is_none(),
        "no restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused() {
    let ip = "127.0.50.9";
    let dir = tempfile::tempdir().expect("dir");
    let (_lb, tls, _, _) = tls_lb(ip, dir.path()).await;
    let first_reply = |minor: u8| async move {
        let mut s = tokio::net::TcpStream::connect(tls).await.expect("tcp");
        s.write_all(&proto_support::client_hello(minor))
            .await
            .expect("hello");
        let mut got = vec![0u8; 7];
        tokio::time::timeout(STEP, s.read_exact(&mut got))
            .await
            .expect("an answer in time")
            .expect("7 bytes");
        got
    };
    // The same hello as TLS 1.2 gets a ServerHello: only the version differs.
    assert_eq!(first_reply(3).await[0], 22, "handshake record for TLS 1.2");
    let got = first_reply(2).await;
    // An alert record (21): fatal (2) protocol_version (70).
    assert_eq!(got[0], 21, "{got:?}");
    assert_eq!(got[5..7], [2u8, 70], "{got:?}");
}
