//! `roster demo-backend` and `roster demo` end to end. IPs 127.0.30–39.x,
//! plus the demo's fixed addresses (127.0.0.1:8000/8080, 127.0.0.2–4),
//! used by `roster_demo_comes_up_with_three_backends` only.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Lb, Proc, client, free_addrs, wait_for};
use parking_lot::Mutex;
use serde_json::Value;

async fn get(url: &str) -> Option<(u16, Value)> {
    let r = client().get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_backend_joins_serves_through_the_proxy_and_drains() {
    let lb = Lb::start("127.0.30.1", &[]).await;
    let [listen, vitals] = free_addrs("127.0.30.2");
    let (l, port, control) = (
        listen.to_string(),
        vitals.port().to_string(),
        lb.control.to_string(),
    );
    let mut backend = Proc::spawn(
        "demo-backend",
        &[
            "demo-backend",
            "--listen",
            &l,
            "--id",
            "db-1",
            "--discovery-lb",
            &control,
            "--metrics-port",
            &port,
            "--announce-interval",
            "1s",
            "--health-interval",
            "300ms",
        ],
        &[],
    );
    // It announces its --listen address; its vitals bind the listen IP.
    lb.wait_backends(&[listen], Duration::from_secs(10)).await;
    let (status, v) = get(&lb.proxy_url("/hello")).await.expect("proxied");
    assert_eq!(status, 200);
    assert_eq!(v["id"], "db-1");
    assert_eq!(v["path"], "/hello");

    let (status, _) = get(&lb.proxy_url("/fail")).await.expect("proxied");
    assert_eq!(status, 500);
    let metrics = format!("http://{vitals}/metrics");
    let (_, m) = get(&metrics).await.expect("vitals");
    assert_eq!(m["failed_responses"], 1, "the layer counts 5xx: {m}");
    assert_eq!(m["id"], "db-1");

    // A slow request is in progress in the vitals while it runs.
    let slow = tokio::spawn(get(lb.proxy_url("/slow?ms=1500").leak()));
    wait_for(
        Duration::from_secs(2),
        "requests_in_progress = 1",
        || async {
            get(&metrics)
                .await
                .is_some_and(|(_, m)| m["requests_in_progress"] == 1)
        },
    )
    .await;
    // SIGTERM while it runs: out of the pool at once, the request still
    // finishes, the process exits 0.
    let term = Instant::now();
    backend.signal("TERM");
    lb.wait_backends(&[], Duration::from_millis(1500)).await;
    let (status, v) = slow.await.unwrap().expect("slow request finished");
    assert_eq!((status, v["slept_ms"].as_u64()), (200, Some(1500)));
    let status = backend
        .wait_exit(Duration::from_secs(8))
        .expect("demo-backend exits");
    assert!(status.success(), "{status}");
    eprintln!("demo-backend exited {:?} after SIGTERM", term.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn roster_demo_comes_up_with_three_backends() {
    let busy = roster::demo::busy_demo_addresses();
    if !busy.is_empty() {
        eprintln!("SKIPPED roster_demo_comes_up_with_three_backends: {busy:?} in use");
        return;
    }
    let mut child = Command::new(common::BIN)
        .arg("demo")
        .env_remove("ROSTER_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn roster demo");
    let stdout = child.stdout.take().unwrap();
    let printed: Arc<Mutex<String>> = Arc::default();
    let reader = std::thread::spawn({
        let printed = Arc::clone(&printed);
        move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut p = printed.lock();
                p.push_str(&line);
                p.push('\n');
            }
        }
    });
    let mut demo = Proc {
        child,
        name: "demo".into(),
    };

    // It says it is up once the LB routes to all three.
    wait_for(Duration::from_secs(60), "roster demo is up", || async {
        printed.lock().contains("Ctrl-C stops everything")
    })
    .await;
    let out = printed.lock().clone();
    for line in [
        "curl http://127.0.0.1:8080/backends",
        "curl http://127.0.0.1:8000/",
        "curl http://127.0.0.2:9090/metrics",
        "curl http://127.0.0.2:9090/telemetry",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    // Three backends answer through the proxy.
    let mut ids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for 3 ids through 127.0.0.1:8000: {ids:?}"
        );
        if let Some((200, v)) = get("http://127.0.0.1:8000/").await
            && let Some(id) = v["id"].as_str()
        {
            ids.insert(id.to_string());
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut want: Vec<&str> = vec!["demo-1", "demo-2", "demo-3"];
    let mut got: Vec<&str> = ids.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    let (_, backends) = get("http://127.0.0.1:8080/backends").await.unwrap();
    let mut b: Vec<&str> = backends
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    b.sort_unstable();
    assert_eq!(b, ["127.0.0.2:3000", "127.0.0.3:3000", "127.0.0.4:3000"]);
    let (_, m) = get("http://127.0.0.3:9090/metrics").await.unwrap();
    assert_eq!(
        (m["ready"].as_bool(), m["id"].as_str()),
        (Some(true), Some("demo-2"))
    );

    // Ctrl-C or SIGTERM stops every child.
    demo.signal("TERM");
    let status = demo
        .wait_exit(Duration::from_secs(30))
        .expect("roster demo exits");
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    // Nothing left behind: every demo address can be bound again.
    wait_for(Duration::from_secs(5), "demo addresses free", || async {
        roster::demo::busy_demo_addresses().is_empty()
    })
    .await;
}
