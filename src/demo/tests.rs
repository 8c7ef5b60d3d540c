use super::*;
use clap::Parser;
use tower::ServiceExt;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    b: DemoBackendArgs,
}

#[test]
fn demo_backend_announces_its_listen_address() {
    let cli = Cli::try_parse_from(["x", "--listen", "127.0.0.9:3001", "--id", "d"]).unwrap();
    let c = cli.b.resolve().unwrap();
    assert_eq!(c.agent.address.as_deref(), Some("127.0.0.9:3001"));
    assert_eq!(c.agent.metrics_listen, "127.0.0.9");
    let cli = Cli::try_parse_from([
        "x",
        "--listen",
        "0.0.0.0:3001",
        "--address",
        "10.1.2.3:3001",
        "--metrics-listen",
        "0.0.0.0",
    ])
    .unwrap();
    let c = cli.b.resolve().unwrap();
    assert_eq!(c.agent.address.as_deref(), Some("10.1.2.3:3001"));
    assert_eq!(c.agent.metrics_listen, "0.0.0.0");
}

#[tokio::test]
async fn demo_routes() {
    let app = backend_router("demo-1", "127.0.0.2:3000".parse().unwrap());
    let body = |r: Response| async move {
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()
    };
    let get = |p: &str| Request::get(p).body(axum::body::Body::empty()).unwrap();
    let r = app.clone().oneshot(get("/hello")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v = body(r).await;
    assert_eq!(
        (v["id"].as_str(), v["path"].as_str()),
        (Some("demo-1"), Some("/hello"))
    );
    let r = app.clone().oneshot(get("/fail")).await.unwrap();
    assert_eq!(r.status(), 500);
    let r = app.oneshot(get("/slow?ms=10")).await.unwrap();
    assert_eq!(body(r).await["slept_ms"], 10);
}

#[test]
fn demo_addresses_are_fixed() {
    let a = demo_addresses();
    assert_eq!(a.len(), 8);
    assert!(a.contains(&"127.0.0.1:8000".parse().unwrap()));
    assert!(a.contains(&"127.0.0.4:9090".parse().unwrap()));
}
