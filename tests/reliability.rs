//! The defects of "trust under faults, part two", each against the real
//! binary (`ROSTER_TEST_BIN` to run them against another build):
//! - a config file read while empty, cut short or changing a restart-only
//!   key is refused and the config in force kept;
//! - checks of new and routable backends never wait behind the checks of a
//!   dark zone (vitals that accept and never answer), at 10,000 of them;
//! - an LB start does not log panic mode while its backends are unchecked.
//!
//! IPs 127.0.70–79.x.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Lb, client, metric, wait_for};
use futures::StreamExt;
use serde_json::{Value, json};

async fn routes(lb: &Lb) -> Value {
    client()
        .get(lb.url("/routes"))
        .send()
        .await
        .expect("routes")
        .json()
        .await
        .expect("json")
}

async fn reloads(lb: &Lb, result: &str) -> f64 {
    let text = lb.telemetry().await;
    metric(
        &text,
        &format!("roster_lb_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Write `text` the way a careless editor does: in place, not renamed.
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

const FILE: &str = r#"lb:
  default_service: ""
routes:
  - host: shop.example
    service: shop
  - path_prefix: /api
    service: api
"#;

/// Wait until the LB has looked at the file's new text: a reload counted,
/// either way.
async fn until_reloaded(lb: &Lb, before: f64) {
    wait_for(Duration::from_secs(10), "a reload attempt", || async {
        reloads(lb, "ok").await + reloads(lb, "refused").await > before
    })
    .await;
}

async fn attempts(lb: &Lb) -> f64 {
    reloads(lb, "ok").await + reloads(lb, "refused").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_never_empties_the_lb_or_changes_a_restart_only_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lb.yaml");
    write_in_place(&path, FILE);
    let p = path.to_string_lossy().to_string();
    let lb = Lb::start("127.0.70.1", &["--config", &p]).await;
    let first = routes(&lb).await;
    assert_eq!(first["routes"].as_array().map(Vec::len), Some(2), "{first}");
    assert!(
        first["default_service"].is_null(),
        "no default service: {first}"
    );

    // Every way a file can be empty or changed too far: refused, the
    // routes and the default service stay, and it says why.
    let refused: [(&str, &str); 5] = [
        ("", "no keys"),
        ("  \n\t\n", "no keys"),
        ("# rewritten soon\n", "no keys"),
        (
            "lb:\n  default_service: shop\nroutes: []\n",
            "`lb.default_service` changes need a restart",
        ),
        (
            "health_check:\n  interval: 9s\nlb:\n  default_service: \"\"\n",
            "`health_check.interval` changes need a restart",
        ),
    ];
    for (n, (text, why)) in refused.into_iter().enumerate() {
        let before = attempts(&lb).await;
        write_in_place(&path, text);
        until_reloaded(&lb, before).await;
        assert_eq!(reloads(&lb, "refused").await, n as f64 + 1.0, "{text:?}");
        let now = routes(&lb).await;
        assert_eq!(
            now["routes"], first["routes"],
            "{text:?} changed the routes"
        );
        assert!(now["default_service"].is_null(), "{text:?}: {now}");
        let err = now["last_reload_error"].as_str().unwrap_or_default();
        assert!(err.contains(why), "{text:?}: {err:?}");
    }
    // The default service is still none: a request no route matches is
    // 404 "no route", not sent to a "default" service (503).
    let r = client()
        .get(lb.proxy_url("/"))
        .header("host", "other.example")
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 404, "no route, no default service");

    // The next good file applies, and clears the error.
    let before = attempts(&lb).await;
    write_in_place(
        &path,
        &FILE.replace("path_prefix: /api", "path_prefix: /v2"),
    );
    until_reloaded(&lb, before).await;
    let now = routes(&lb).await;
    assert!(now["last_reload_error"].is_null(), "{now}");
    assert_eq!(now["routes"][1]["path_prefix"], "/v2", "{now}");
    assert_eq!(reloads(&lb, "ok").await, 1.0);
}

/// A vitals port that accepts connections and never answers: each one is
/// held until the LB gives up on it.
async fn dark_vitals(ip: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                // Read and drop until the LB closes; never write.
                loop {
                    match tokio::time::timeout(
                        Duration::from_secs(30),
                        tokio::io::AsyncReadExt::read(&mut s, &mut sink),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                }
            });
        }
    });
    addr
}

const DARK: usize = 10_000;

/// 10,000 registered backends whose vitals accept and never answer,
/// interval 1 s, timeout 2 s, default concurrency: a backend registered
/// after them is checked, and routable, without waiting for any of their
/// checks to time out; one in the pool that turns not-ready leaves on its
/// own schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dark_zone_does_not_delay_anyone_elses_checks() {
    let _ = rlimit::increase_nofile_limit(65_536);
    let max = (DARK + 10).to_string();
    let lb = Lb::start(
        "127.0.71.1",
        &[
            "--health-interval",
            "1s",
            "--health-timeout",
            "2s",
            "--max-backends",
            &max,
            "--rate-limit",
            "0",
            "--panic-threshold",
            "0",
        ],
    )
    .await;
    let dark = dark_vitals("127.0.71.2").await;
    let c = client();
    // Distinct traffic ports on one IP share the one dark vitals port.
    let registered = futures::stream::iter(0..DARK)
        .map(|i| {
            let c = c.clone();
            let url = lb.url("/register");
            async move {
                let body = json!({
                    "id": format!("dark-{i}"),
                    "address": format!("127.0.71.2:{}", 1024 + i),
                    "metrics_port": dark.port(),
                });
                c.post(url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        })
        .buffer_unordered(32)
        .filter(|r| std::future::ready(matches!(r, Ok(201) | Ok(200))))
        .count()
        .await;
    assert_eq!(registered, DARK, "every dark backend registered");

    // First checks of the newest registrations are under way, the earlier
    // ones already fail: a newcomer must not queue behind either.
    let good = Backend::start("good", "127.0.71.3").await;
    let t = Instant::now();
    assert_eq!(
        lb.register("good", good.addr(), good.metrics_port()).await,
        201
    );
    let want = good.addr().to_string();
    wait_for(Duration::from_secs(20), "the newcomer routable", || async {
        lb.backends().await.contains(&want)
    })
    .await;
    let joined = t.elapsed();
    assert!(
        joined < Duration::from_secs(2),
        "the newcomer waited {joined:?}: behind dark checks (timeout 2s)"
    );

    // A backend in the pool that says not-ready leaves within its own
    // interval, whatever the dark zone does.
    good.set_ready(false);
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "the not-ready one out", || async {
        !lb.backends().await.contains(&want)
    })
    .await;
    let left = t.elapsed();
    assert!(
        left < Duration::from_secs(2),
        "not-ready noticed after {left:?} (interval 1s)"
    );
}

/// Backends registered at once are checked one by one: the first answer
/// is not "1 of N healthy", so no panic mode and no ERROR at start.
#[tokio::test(flavor = "multi_thread")]
async fn an_lb_start_logs_no_panic_and_no_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("lb.log");
    let lb = Lb::start_with("127.0.72.1", &[], &[], Some(&log)).await;
    let mut backends = Vec::new();
    for i in 0..20 {
        backends.push(Arc::new(
            Backend::start(&format!("b{i}"), &format!("127.0.72.{}", i + 10)).await,
        ));
    }
    let statuses = futures::future::join_all(
        backends
            .iter()
            .map(|b| lb.register(&b.id, b.addr(), b.metrics_port())),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let want: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    lb.wait_backends(&want, Duration::from_secs(10)).await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains("PANIC MODE"), "panic mode at start:\n{text}");
    assert!(!text.contains("ERROR"), "an ERROR at start:\n{text}");
}

/// Clients that hang up mid-request are counted, not logged at ERROR:
/// any client could otherwise write ERROR lines at will (make soak found
/// one per hang-up).
#[tokio::test(flavor = "multi_thread")]
async fn client_hang_ups_log_no_error() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("lb.log");
    let lb = Lb::start_with("127.0.74.1", &[], &[], Some(&log)).await;
    let b = Backend::start("slow", "127.0.74.2").await;
    assert_eq!(lb.register("slow", b.addr(), b.metrics_port()).await, 201);
    lb.wait_backends(&[b.addr()], Duration::from_secs(10)).await;
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(lb.proxy)
            .await
            .expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    // The backend answers /slow after 1.5 s; the LB notices the hang-ups
    // when it writes the answers.
    wait_for(
        Duration::from_secs(10),
        "5 aborted requests counted",
        || async {
            let text = lb.telemetry().await;
            let aborted: f64 = text
                .lines()
                .filter(|l| l.starts_with("roster_lb_requests_total") && l.contains("aborted"))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum();
            aborted >= 5.0
        },
    )
    .await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains("ERROR"),
        "a hang-up logged an ERROR:\n{text}"
    );
}
