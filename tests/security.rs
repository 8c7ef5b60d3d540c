//! Registration you can trust: token auth and rotation, the address fence,
//! id rules, limits, rate limiting, hostile bodies, Kubernetes identity via
//! a fake API server, and no secrets in logs. Real binary, loopback only.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::{get, post};
use common::{Backend, Lb, client};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

fn reg_body(id: &str, addr: SocketAddr, metrics_port: u16) -> Value {
    json!({"id": id, "address": addr.to_string(), "metrics_port": metrics_port})
}

async fn post_register(lb: &Lb, body: &Value, token: Option<&str>) -> reqwest::Response {
    let mut req = client().post(lb.url("/register")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("post")
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_rotation_and_no_secret_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    let log = dir.path().join("lb.log");
    std::fs::write(&token_path, "first-secret-0123456789\n").unwrap();
    let tp = token_path.to_str().unwrap().to_string();
    let lb = Lb::start_with(
        "127.0.8.1",
        &["--token-file", &tp, "--protect-reads"],
        &[],
        Some(&log),
    )
    .await;
    let a = Backend::start("a", "127.0.8.2").await;
    let body = reg_body("a", a.addr(), a.metrics_port());

    let r = post_register(&lb, &body, None).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("Bearer"));
    assert_eq!(post_register(&lb, &body, Some("wrong")).await.status(), 401);
    assert_eq!(
        post_register(&lb, &body, Some("first-secret-0123456789"))
            .await
            .status(),
        201
    );

    // Reads are protected too with protect_reads; probes are not.
    let c = client();
    assert_eq!(
        c.get(lb.url("/backends")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        c.get(lb.url("/registry")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        c.get(lb.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ok = c
        .get(lb.url("/backends"))
        .bearer_auth("first-secret-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Rotation: rewrite the file; the old token stops working at once.
    std::fs::write(&token_path, "second-secret-9876543210").unwrap();
    assert_eq!(
        post_register(&lb, &body, Some("first-secret-0123456789"))
            .await
            .status(),
        401
    );
    assert_eq!(
        post_register(&lb, &body, Some("second-secret-9876543210"))
            .await
            .status(),
        200
    );

    // DELETE needs the token as well.
    let del = |t: Option<&'static str>| {
        let mut r = c.delete(lb.url("/register/a"));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(del(None).await.unwrap().status(), 401);
    assert_eq!(
        del(Some("second-secret-9876543210"))
            .await
            .unwrap()
            .status(),
        204
    );

    drop(lb);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("registered"), "logs were captured");
    assert!(!logs.contains("first-secret"), "token leaked into logs");
    assert!(!logs.contains("second-secret"), "token leaked into logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn fence_refuses_every_special_class() {
    // Even with everything allowed, special classes need an explicit listing.
    let lb = Lb::start("127.0.9.1", &["--allowed-networks", "0.0.0.0/0,::/0"]).await;
    for address in [
        "127.0.0.1:80",
        "169.254.169.254:80",
        "224.0.0.251:80",
        "0.0.0.0:80",
        "255.255.255.255:80",
        "[::1]:80",
        "[fe80::1]:80",
        "[ff02::1]:80",
        "[::]:80",
    ] {
        let r = client()
            .post(lb.url("/register"))
            .json(&json!({"id": "x", "address": address, "metrics_port": 9090}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{address}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().starts_with("address:"));
    }
    // Default networks: a public address is refused, a private one accepted.
    let lb2 = Lb::start("127.0.9.2", &["--allowed-networks", "10.0.0.0/8"]).await;
    for (address, want) in [
        ("8.8.8.8:80", 403),
        ("10.1.2.3:80", 201),
        ("[2001:db8::1]:80", 403),
    ] {
        let r = client()
            .post(lb2.url("/register"))
            .json(&json!({"id": "y", "address": address, "metrics_port": 9090}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{address}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn id_rules_size_cap_and_rate_limit() {
    let lb = Lb::start(
        "127.0.10.1",
        &["--max-backends", "2", "--rate-limit", "1000"],
    )
    .await;
    let addr = |i: u8| SocketAddr::from(([127, 0, 10, 10 + i], 3000));
    for bad in ["", "a b", "ü", "a/b", &"x".repeat(254)] {
        let r = post_register(&lb, &reg_body(bad, addr(0), 9090), None).await;
        assert_eq!(r.status(), 422, "{bad:?}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().starts_with("id:"), "{e}");
    }
    assert_eq!(
        post_register(&lb, &reg_body(&"x".repeat(253), addr(0), 9090), None)
            .await
            .status(),
        201
    );
    assert_eq!(
        post_register(&lb, &reg_body("b-1.x_y", addr(1), 9090), None)
            .await
            .status(),
        201
    );
    // Full: a new id is refused, renewals still succeed.
    let r = post_register(&lb, &reg_body("c", addr(2), 9090), None).await;
    assert_eq!(r.status(), 429);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("max_backends")
    );
    assert_eq!(
        post_register(&lb, &reg_body("b-1.x_y", addr(1), 9090), None)
            .await
            .status(),
        200
    );

    // 413 for an oversized body, with a JSON error.
    let r = client()
        .post(lb.url("/register"))
        .body(vec![b'{'; 65 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    // Rate limit: a small one, on its own LB.
    let lb2 = Lb::start(
        "127.0.10.2",
        &["--rate-limit", "2", "--rate-limit-burst", "3"],
    )
    .await;
    let mut limited = None;
    for _ in 0..20 {
        let r = client().get(lb2.url("/backends")).send().await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("rate limit hit within 20 requests");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("rate")
    );
    // Probes stay open while limited.
    assert_eq!(
        client()
            .get(lb2.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Bodies a hostile or broken client might send.
fn hostile_bodies() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"string\"".to_vec(),
        b"{}".to_vec(),
        vec![0xc3, 0x28, 0xa0, 0xa1],
        b"{\"id\": \"\xff\xfe\", \"address\": \"10.0.0.1:80\", \"metrics_port\": 1}".to_vec(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000)).into_bytes(),
        br#"{"id": 1, "address": 2, "metrics_port": 3}"#.to_vec(),
        br#"{"id": "a", "address": "10.0.0.1:80", "metrics_port": 1e400}"#.to_vec(),
        br#"{"id": "a", "address": "10.0.0.1:80", "metrics_port": -1}"#.to_vec(),
        br#"{"id": "a", "address": "10.0.0.1:80", "metrics_port": 99999999999999999999999}"#
            .to_vec(),
        br#"{"id": "a", "address": "10.0.0.1:80", "metrics_port": 1, "weight": 4294967296}"#
            .to_vec(),
        br#"{"id": "a", "address": "10.0.0.1:99999", "metrics_port": 1}"#.to_vec(),
        br#"{"id": "a", "address": "[::1", "metrics_port": 1}"#.to_vec(),
        br#"{"id": "a", "address": "10.0.0.1:80", "metrics_port": 1} trailing"#.to_vec(),
        br#"{"id": "a", "id": "b", "address": "10.0.0.1:80", "metrics_port": 1}"#.to_vec(),
        format!(
            r#"{{"id": "{}", "address": "10.0.0.1:80", "metrics_port": 1}}"#,
            "a".repeat(60_000)
        )
        .into_bytes(),
    ];
    // Random bytes and random JSON-ish text, reproducible.
    let mut runner = TestRunner::deterministic();
    let bytes = prop::collection::vec(any::<u8>(), 0..512);
    let jsonish = "[{}\\[\\]\":,a-z0-9 .\\-]{0,200}";
    let fields = (
        prop_oneof![
            Just(json!("a")),
            any::<i64>().prop_map(|n| json!(n)),
            Just(json!(null)),
            ".{0,40}".prop_map(|s| json!(s))
        ],
        prop_oneof![
            Just(json!("10.9.9.9:80")),
            any::<f64>().prop_map(|n| json!(n)),
            ".{0,40}".prop_map(|s| json!(s)),
            Just(json!([1, 2]))
        ],
        prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            Just(json!("9090")),
            Just(json!({}))
        ],
    );
    for _ in 0..150 {
        v.push(bytes.new_tree(&mut runner).unwrap().current());
        v.push(
            jsonish
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .into_bytes(),
        );
        let (id, address, port) = fields.new_tree(&mut runner).unwrap().current();
        v.push(
            json!({"id": id, "address": address, "metrics_port": port})
                .to_string()
                .into_bytes(),
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_bodies_never_hurt() {
    let lb = Lb::start("127.0.11.1", &["--rate-limit", "0"]).await;
    let a = Backend::start("a", "127.0.11.2").await;
    lb.register("a", a.addr(), a.metrics_port()).await;
    lb.wait_backends(&[a.addr()], Duration::from_secs(5)).await;
    let before = lb.registry().await["backends"].as_array().unwrap().len();
    let bodies = hostile_bodies();
    assert!(bodies.len() > 400);
    let c = client();
    for body in &bodies {
        for path in ["/register", "/register/a%00b"] {
            let req = if path == "/register" {
                c.post(lb.url(path))
            } else {
                c.delete(lb.url(path))
            };
            let r = req
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("LB still answers");
            let s = r.status().as_u16();
            assert!(
                (200..500).contains(&s),
                "{s} for {:?}",
                String::from_utf8_lossy(&body[..body.len().min(100)])
            );
            if s >= 400 {
                let e: Value = r.json().await.expect("JSON error body");
                assert!(e["error"].is_string());
            }
        }
    }
    // The only entry is still there, routable; random valid bodies (if any
    // were generated) could only add entries in 10.0.0.0/8... which the
    // loopback-only fence refuses.
    assert_eq!(lb.backends().await, [a.addr().to_string()]);
    assert_eq!(
        lb.registry().await["backends"].as_array().unwrap().len(),
        before
    );
    assert!(lb.proc.child.id() > 0);
    let r = client().get(lb.proxy_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A fake Kubernetes API: TokenReview and Pod GET, counting reviews. The
/// pod shows no IP while `ip_reported` is false (the kubelet has not
/// reported it yet).
async fn fake_kube_api(
    ip: &str,
    pod_ip: &str,
    reviews: Arc<AtomicU64>,
    ip_reported: Arc<AtomicBool>,
) -> Arc<common::Server> {
    let pod_ip = pod_ip.to_string();
    let router = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(move |Json(req): Json<Value>| {
                let reviews = Arc::clone(&reviews);
                async move {
                    reviews.fetch_add(1, Ordering::Relaxed);
                    let token = req["spec"]["token"].as_str().unwrap_or("");
                    let aud_ok = req["spec"]["audiences"][0] == "roster";
                    let status = if token == "pod-a-token" && aud_ok {
                        json!({"authenticated": true, "audiences": ["roster"],
                               "user": {"username": "system:serviceaccount:shop:default",
                                        "extra": {"authentication.kubernetes.io/pod-name": ["pod-a"],
                                                  "authentication.kubernetes.io/pod-uid": ["uid-a"]}}})
                    } else {
                        json!({"authenticated": false, "error": "invalid token"})
                    };
                    Json(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                "metadata": {}, "spec": req["spec"], "status": status}))
                }
            }),
        )
        .route(
            "/api/v1/namespaces/shop/pods/pod-a",
            get(move || {
                let pod_ip = pod_ip.clone();
                let hidden = !ip_reported.load(Ordering::Relaxed);
                async move {
                    let status = if hidden {
                        json!({"phase": "Pending"})
                    } else {
                        json!({"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]})
                    };
                    Json(json!({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": "pod-a", "namespace": "shop", "uid": "uid-a"},
                                "status": status}))
                }
            }),
        );
    common::Server::start(common::free_addr(ip), router).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_auth_via_token_review() {
    let reviews = Arc::new(AtomicU64::new(0));
    let reported = Arc::new(AtomicBool::new(true));
    let api = fake_kube_api("127.0.12.9", "127.0.12.2", Arc::clone(&reviews), reported).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
             users: [{{name: u, user: {{token: lb-sa-token}}}}]\n\
             contexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\n",
            api.addr
        ),
    )
    .unwrap();
    let lb = Lb::start_with(
        "127.0.12.1",
        &["--kubernetes-auth"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        None,
    )
    .await;
    let a = Backend::start("pod-a", "127.0.12.2").await;
    let body = reg_body("pod-a", a.addr(), a.metrics_port());
    assert_eq!(post_register(&lb, &body, None).await.status(), 401);
    assert_eq!(
        post_register(&lb, &body, Some("stolen")).await.status(),
        401
    );
    assert_eq!(
        post_register(&lb, &body, Some("pod-a-token"))
            .await
            .status(),
        201
    );
    // The token's pod may not register someone else's address.
    let other = reg_body("pod-a", SocketAddr::from(([127, 0, 12, 3], 3000)), 9090);
    let r = post_register(&lb, &other, Some("pod-a-token")).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("pod shop/pod-a")
    );
    // Heartbeats reuse the cached verdict: no new TokenReview.
    let n = reviews.load(Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(
            post_register(&lb, &body, Some("pod-a-token"))
                .await
                .status(),
            200
        );
    }
    assert_eq!(reviews.load(Ordering::Relaxed), n);
    lb.wait_backends(&[a.addr()], Duration::from_secs(5)).await;
    // Deregistration with the same identity.
    let r = client()
        .delete(lb.url("/register/pod-a"))
        .bearer_auth("pod-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// Found on a real cluster (`make e2e`): a native-sidecar agent announces
/// before the kubelet has reported the pod's IP. That first answer must not
/// be cached, or the pod is refused for the cache's minute.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_auth_pod_ip_reported_late() {
    let reviews = Arc::new(AtomicU64::new(0));
    let reported = Arc::new(AtomicBool::new(false));
    let api = fake_kube_api(
        "127.0.12.19",
        "127.0.12.12",
        Arc::clone(&reviews),
        Arc::clone(&reported),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
             users: [{{name: u, user: {{token: lb-sa-token}}}}]\n\
             contexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\n",
            api.addr
        ),
    )
    .unwrap();
    let lb = Lb::start_with(
        "127.0.12.11",
        &["--kubernetes-auth"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        None,
    )
    .await;
    let a = Backend::start("pod-a", "127.0.12.12").await;
    let body = reg_body("pod-a", a.addr(), a.metrics_port());
    for _ in 0..2 {
        let r = post_register(&lb, &body, Some("pod-a-token")).await;
        assert_eq!(r.status(), 403, "no pod IP reported yet");
    }
    reported.store(true, Ordering::Relaxed);
    assert_eq!(
        post_register(&lb, &body, Some("pod-a-token"))
            .await
            .status(),
        201,
        "the IP reported since is seen at once, not after the cache's TTL"
    );
    lb.wait_backends(&[a.addr()], Duration::from_secs(5)).await;
}
