//! Many services on one LB: routing by host and path prefix, separate
//! pools and panic states, per-service views, routes reloaded from the file
//! without a restart. Against the real binary on loopback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn register_in(lb: &Lb, b: &Backend, service: Option<&str>) -> reqwest::Response {
    let mut body =
        json!({"id": b.id, "address": b.addr().to_string(), "metrics_port": b.metrics_port()});
    if let Some(s) = service {
        body["service"] = json!(s);
    }
    client()
        .post(lb.url("/register"))
        .json(&body)
        .send()
        .await
        .expect("register")
}

async fn get_json(lb: &Lb, path: &str) -> Value {
    client()
        .get(lb.url(path))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

async fn wait_service(lb: &Lb, service: &str, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    let path = format!("/backends?service={service}");
    wait_for(
        Duration::from_secs(10),
        &format!("{service} == {want:?}"),
        || async {
            let mut got: Vec<String> =
                serde_json::from_value(get_json(lb, &path).await).unwrap_or_default();
            got.sort();
            got == want
        },
    )
    .await;
}

/// GET through the proxy with a Host; returns the status and the backend id.
async fn via(lb: &Lb, host: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(lb.proxy_url(path))
        .header("host", host)
        .send()
        .await
        .expect("proxy");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["id"].as_str().unwrap_or("").to_string())
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("roster.yaml");
    // Write then rename, as a ConfigMap update swaps the file whole.
    let tmp = dir.path().join("roster.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.to_string_lossy().into_owned()
}

const ROUTES: &str = r#"
routes:
  - {name: web, host: web.example.com, service: web}
  - {name: api, host: "*.api.example.com", service: api}
  - {name: admin, path_prefix: /admin, service: admin}
services:
  api: {algorithm: least_loaded}
"#;

#[tokio::test]
async fn three_services_route_by_host_and_prefix_without_crosstalk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, ROUTES);
    let lb = Lb::start("127.0.0.60", &["--config", &cfg]).await;
    let mut all = Vec::new();
    for (i, svc) in ["web", "web", "api", "api", "admin", "admin"]
        .iter()
        .enumerate()
    {
        let b = Backend::start(&format!("{svc}-{i}"), &format!("127.0.0.{}", 61 + i)).await;
        assert_eq!(register_in(&lb, &b, Some(svc)).await.status(), 201);
        all.push((svc.to_string(), b));
    }
    // The seed's un-named registration: the default service, seed answer.
    let seed = Backend::start("seed-1", "127.0.0.67").await;
    let r = register_in(&lb, &seed, None).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert!(
        body.get("service").is_none(),
        "seed answer unchanged: {body}"
    );
    for svc in ["web", "api", "admin"] {
        let want: Vec<SocketAddr> = all
            .iter()
            .filter(|(s, _)| s == svc)
            .map(|(_, b)| b.addr())
            .collect();
        wait_service(&lb, svc, &want).await;
    }
    lb.wait_backends(&[seed.addr()], Duration::from_secs(10))
        .await;
    let raw = client()
        .get(lb.url("/backends"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        raw,
        format!("[\"{}\"]", seed.addr()),
        "seed /backends byte for byte"
    );

    for (host, path, svc) in [
        ("web.example.com", "/", "web"),
        ("WEB.example.com:8000", "/x", "web"),
        ("v1.api.example.com", "/", "api"),
        ("other.example.org", "/admin/users", "admin"),
        ("other.example.org", "/", "default"),
        ("api.example.com", "/", "default"),
    ] {
        for _ in 0..6 {
            let (status, id) = via(&lb, host, path).await;
            assert_eq!(status, 200, "{host}{path}");
            let want = if svc == "default" {
                "seed-1".to_string()
            } else {
                svc.to_string()
            };
            assert!(
                id.starts_with(&want),
                "{host}{path} went to {id}, not {svc}"
            );
        }
    }
    // Counted at the backends: each got only its own service's traffic.
    let hits = |svc: &str| -> u64 {
        all.iter()
            .filter(|(s, _)| s == svc)
            .map(|(_, b)| b.hits.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    assert_eq!((hits("web"), hits("api"), hits("admin")), (12, 6, 6));
    assert_eq!(seed.hits.load(std::sync::atomic::Ordering::Relaxed), 12);

    let services = get_json(&lb, "/services").await;
    let names: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "api", "default", "web"]);
    let web = &services.as_array().unwrap()[3];
    assert_eq!(
        (web["registered"].as_u64(), web["routable"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(web["digest"].as_str().unwrap().len(), 8);
    let reg = get_json(&lb, "/registry?service=api").await;
    assert!(
        reg["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["service"] == "api")
    );
    let text = lb.telemetry().await;
    assert!(
        text.contains("roster_lb_routable_backends{service=\"web\"} 2"),
        "{text}"
    );
    // An unknown service is a clear 404, a bad name a 400.
    let r = client()
        .get(lb.url("/backends?service=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .get(lb.url("/backends?service=a%2Fb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_dead_service_panics_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "routes:\n  - {host: web.test, service: web}\n  - {host: api.test, service: api}\n",
    );
    let lb = Lb::start("127.0.0.70", &["--config", &cfg]).await;
    let mut web = Vec::new();
    let mut api = Vec::new();
    for i in 0..2 {
        let w = Backend::start(&format!("web-{i}"), &format!("127.0.0.{}", 71 + i)).await;
        let a = Backend::start(&format!("api-{i}"), &format!("127.0.0.{}", 73 + i)).await;
        register_in(&lb, &w, Some("web")).await;
        register_in(&lb, &a, Some("api")).await;
        web.push(w);
        api.push(a);
    }
    wait_service(&lb, "web", &[web[0].addr(), web[1].addr()]).await;
    wait_service(&lb, "api", &[api[0].addr(), api[1].addr()]).await;
    // Every web backend's vitals fail: web goes into its own panic mode.
    for w in &web {
        w.vitals_status
            .store(500, std::sync::atomic::Ordering::Relaxed);
    }
    wait_for(Duration::from_secs(10), "web in panic", || async {
        get_json(&lb, "/registry?service=web").await["panic"] == true
    })
    .await;
    assert_eq!(get_json(&lb, "/registry?service=api").await["panic"], false);
    let text = lb.telemetry().await;
    assert!(
        text.contains("roster_lb_panic{service=\"web\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("roster_lb_panic{service=\"api\"} 0"),
        "{text}"
    );
    // api routes normally and only to api; web still gets answers (panic).
    for _ in 0..6 {
        let (s, id) = via(&lb, "api.test", "/").await;
        assert_eq!(s, 200);
        assert!(id.starts_with("api-"), "{id}");
        let (s, id) = via(&lb, "web.test", "/").await;
        assert_eq!(s, 200);
        assert!(id.starts_with("web-"), "{id}");
    }
    let api = get_json(&lb, "/services").await;
    let api = api
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .cloned()
        .unwrap();
    assert_eq!(api["routable"], 2);
}

#[tokio::test]
async fn routes_reload_without_restart_and_bad_routes_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "routes:\n  - {name: first, path_prefix: /one, service: one}\n",
    );
    let lb = Lb::start("127.0.0.76", &["--config", &cfg, "--default-service", ""]).await;
    let one = Backend::start("one-1", "127.0.0.77").await;
    let two = Backend::start("two-1", "127.0.0.78").await;
    register_in(&lb, &one, Some("one")).await;
    register_in(&lb, &two, Some("two")).await;
    wait_service(&lb, "one", &[one.addr()]).await;
    wait_service(&lb, "two", &[two.addr()]).await;
    assert_eq!(via(&lb, "h", "/one/x").await, (200, "one-1".into()));
    // No default service: an unrouted request is a 404 naming why, and an
    // un-named registration is refused naming the field.
    let r = client().get(lb.proxy_url("/two")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "no route"})
    );
    let r = register_in(&lb, &one, None).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("service"));

    // A new route applies without a restart.
    write_config(
        &dir,
        "routes:\n  - {name: first, path_prefix: /one, service: one}\n  - {name: second, path_prefix: /two, service: two}\n",
    );
    wait_for(Duration::from_secs(10), "route /two applied", || async {
        via(&lb, "h", "/two/y").await == (200, "two-1".to_string())
    })
    .await;
    // A bad route is refused, named, and the routes in force stay.
    write_config(
        &dir,
        "routes:\n  - {name: broken, path_prefix: nope, service: two}\n",
    );
    wait_for(Duration::from_secs(10), "reload refused", || async {
        get_json(&lb, "/routes").await["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("\"broken\""))
    })
    .await;
    assert_eq!(via(&lb, "h", "/two").await, (200, "two-1".into()));
    assert_eq!(
        get_json(&lb, "/routes").await["routes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        lb.telemetry()
            .await
            .contains("roster_lb_config_reloads_total{result=\"refused\"} 1")
    );
}

#[test]
fn a_bad_route_at_start_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "routes:\n  - {name: wild-in-middle, host: \"a.*.com\", service: web}\n",
    );
    let out = std::process::Command::new(bin())
        .args(["lb", "--config", &cfg, "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[0] \"wild-in-middle\""), "{err}");
}
