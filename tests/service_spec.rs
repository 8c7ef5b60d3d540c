//! Per-service settings reach the request path: `services.<name>` over
//! the LB's defaults, resolved once into the service's spec. IPs 127.0.76.x.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Backend, Lb, client};
use serde_json::json;
use tokio::io::AsyncReadExt;

/// An app port that reads a request and hangs up without answering: the
/// request reached a backend and failed.
async fn hang_up_app(ip: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            drop(s);
        }
    });
    addr
}

/// How many backends `/backends?service=` lists.
async fn routable(control: SocketAddr, service: &str) -> Option<usize> {
    client()
        .get(format!("http://{control}/backends?service={service}"))
        .send()
        .await
        .ok()?
        .json::<Vec<String>>()
        .await
        .ok()
        .map(|v| v.len())
}

async fn register(lb: &Lb, id: &str, service: &str, address: SocketAddr, metrics_port: u16) {
    let r = client()
        .post(lb.url("/register"))
        .json(
            &json!({"id": id, "service": service, "address": address.to_string(),
                      "metrics_port": metrics_port}),
        )
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
}

/// `lb.retry_idempotent` is on; `services.web.retry_idempotent: false`
/// turns it off for web only: a GET that reached a backend and failed is
/// replayed on another backend for api, answered 502 for web.
#[tokio::test(flavor = "multi_thread")]
async fn retry_idempotent_is_per_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lb.yaml");
    std::fs::write(
        &path,
        "services:\n  web: {retry_idempotent: false}\n  api: {}\n\
         routes:\n  - {host: web.example, service: web}\n  - {host: api.example, service: api}\n",
    )
    .expect("config");
    let p = path.to_string_lossy().to_string();
    let lb = Lb::start("127.0.76.1", &["--config", &p, "--eject-after", "0"]).await;
    // Per service: one backend that hangs up (its vitals say ready) and
    // one that answers.
    for (service, ip) in [("web", "127.0.76.2"), ("api", "127.0.76.3")] {
        let bad = Backend::start("bad", ip).await;
        let app = hang_up_app(ip).await;
        register(&lb, "bad", service, app, bad.metrics_port()).await;
        let good = Backend::start("good", ip).await;
        register(&lb, "good", service, good.addr(), good.metrics_port()).await;
        std::mem::forget((bad, good));
    }
    let control = lb.control;
    common::wait_for(
        Duration::from_secs(10),
        "both services routable",
        || async move {
            routable(control, "web").await == Some(2) && routable(control, "api").await == Some(2)
        },
    )
    .await;
    let statuses = |host: &'static str| {
        let url = lb.proxy_url("/x");
        async move {
            let mut out = Vec::new();
            for _ in 0..8 {
                let r = client().get(&url).header("host", host).send().await;
                out.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            out
        }
    };
    let api = statuses("api.example").await;
    assert!(api.iter().all(|s| *s == 200), "api replays: {api:?}");
    let web = statuses("web.example").await;
    assert!(web.contains(&502), "web does not replay: {web:?}");
    assert!(web.contains(&200), "{web:?}");
}
