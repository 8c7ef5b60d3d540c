//! Shared helpers for integration tests: the real `roster` binary as a child
//! process, and in-process fake backends (app + vitals) that can be killed
//! for real (listener and every open connection closed).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::task::JoinSet;

pub const BIN: &str = env!("CARGO_BIN_EXE_roster");
/// The sidecar binary: `roster-agent …` is `roster agent …`.
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_roster-agent");

/// The binary tests run: `ROSTER_TEST_BIN` if set (to show a new test
/// fails against an older build), else this build's `roster`.
pub fn bin() -> String {
    std::env::var("ROSTER_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Like [`bin`], for `roster-agent` (`ROSTER_TEST_AGENT_BIN`).
pub fn agent_bin() -> String {
    std::env::var("ROSTER_TEST_AGENT_BIN").unwrap_or_else(|_| AGENT_BIN.to_string())
}

/// Read from `s` until the peer closes it (EOF or reset) or `limit`
/// passes: what was read and how long the connection lived, or None if it
/// was still open at the limit.
pub async fn until_closed(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<(Duration, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((started.elapsed(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A free port on `ip` (bound then released; tests use distinct IPs to
/// keep the window for collisions tiny).
pub fn free_addr(ip: &str) -> SocketAddr {
    let [a] = free_addrs(ip);
    a
}

/// `N` distinct free ports on `ip`: all listeners are held until every
/// port is chosen, so two calls in a row cannot hand out the same port.
pub fn free_addrs<const N: usize>(ip: &str) -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((ip, 0)).expect("bind port 0"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr"))
}

/// Port 0 on `ip`: bound directly by in-process servers, so no other
/// test can take the port between choosing and binding it.
pub fn any_port(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP"), 0)
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_logged(name, args, env, None)
    }

    /// Like `spawn`, with stderr (the logs) written to `log` when given.
    pub fn spawn_logged(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        Self::spawn_bin(&bin(), name, args, env, log)
    }

    /// Like `spawn_logged`, running `bin` instead of `roster`.
    pub fn spawn_bin(
        bin: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let mut cmd = Command::new(bin);
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
            None => Stdio::inherit(),
        };
        cmd.args(args)
            .env_remove("ROSTER_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn roster");
        Self {
            child,
            name: name.into(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal (TERM, INT...) with `kill`.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Wait for exit up to `limit`; None if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Spawn `roster lb` on these ports with the test defaults; `extra`
/// overrides a default flag of the same name.
fn spawn_lb(
    proxy: SocketAddr,
    control: SocketAddr,
    extra: &[&str],
    env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Proc {
    let (p, c) = (proxy.to_string(), control.to_string());
    let defaults: [(&str, &str); 9] = [
        ("--listen", &p),
        ("--control-listen", &c),
        ("--threads", "2"),
        ("--allowed-networks", "127.0.0.0/8"),
        ("--health-interval", "300ms"),
        ("--health-timeout", "250ms"),
        ("--grace-period", "5s"),
        ("--warmup", "0s"),
        ("--rate-limit", "1000"),
    ];
    let mut args = vec!["lb"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    Proc::spawn_logged("lb", &args, env, log)
}

/// A running `roster lb` with its addresses.
pub struct Lb {
    pub proc: Proc,
    pub proxy: SocketAddr,
    pub control: SocketAddr,
}

impl Lb {
    /// Start an LB on `ip` that allows loopback backends, with fast checks.
    pub async fn start(ip: &str, extra: &[&str]) -> Self {
        Self::start_with(ip, extra, &[], None).await
    }

    /// `start` with extra environment and an optional stderr log file.
    pub async fn start_with(
        ip: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        // A port taken between choosing and binding makes the LB exit at
        // once: start again on fresh ports rather than fail the test.
        for attempt in 1..=3 {
            let [proxy, control] = free_addrs(ip);
            let proc = spawn_lb(proxy, control, extra, env, log);
            let mut lb = Self {
                proc,
                proxy,
                control,
            };
            match lb.wait_up_or_exit().await {
                Ok(()) => return lb,
                Err(status) => eprintln!("lb on {ip} exited ({status}) on attempt {attempt}"),
            }
        }
        panic!("lb on {ip} exited at start three times");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.control, path)
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// Wait for the control API and the proxy port to answer.
    pub async fn wait_up(&mut self) {
        if let Err(status) = self.wait_up_or_exit().await {
            panic!("lb exited before it was up: {status}");
        }
    }

    /// Like `wait_up`, returning the exit status if the LB exits first.
    async fn wait_up_or_exit(&mut self) -> Result<(), std::process::ExitStatus> {
        let c = client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return Err(status);
            }
            let control = c.get(self.url("/healthz")).send().await.is_ok();
            let proxy = tokio::net::TcpStream::connect(self.proxy).await.is_ok();
            if control && proxy {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "lb still running but not up after 20s (control {control}, proxy {proxy})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn register(&self, id: &str, address: SocketAddr, metrics_port: u16) -> u16 {
        client()
            .post(self.url("/register"))
            .json(&json!({"id": id, "address": address.to_string(), "metrics_port": metrics_port}))
            .send()
            .await
            .expect("register")
            .status()
            .as_u16()
    }

    pub async fn backends(&self) -> Vec<String> {
        client()
            .get(self.url("/backends"))
            .send()
            .await
            .expect("backends")
            .json()
            .await
            .expect("json")
    }

    pub async fn registry(&self) -> Value {
        client()
            .get(self.url("/registry"))
            .send()
            .await
            .expect("registry")
            .json()
            .await
            .expect("json")
    }

    /// One entry of `/registry`, by id.
    pub async fn entry(&self, id: &str) -> Value {
        let reg = self.registry().await;
        reg["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|e| e["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no entry {id:?} in {reg}"))
    }

    /// The Prometheus text of `/telemetry`.
    pub async fn telemetry(&self) -> String {
        client()
            .get(self.url("/telemetry"))
            .send()
            .await
            .expect("telemetry")
            .text()
            .await
            .expect("text")
    }

    /// Wait until `/backends` has exactly these addresses (any order).
    pub async fn wait_backends(&self, want: &[SocketAddr], limit: Duration) {
        let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
        want.sort();
        wait_for(limit, &format!("backends == {want:?}"), || async {
            let mut got = self.backends().await;
            got.sort();
            got == want
        })
        .await;
    }
}

pub fn client() -> reqwest::Client {
    roster::fetch::client(roster::fetch::Bounds::timeout(Duration::from_secs(5))).expect("client")
}

/// Poll `f` every 50ms until true; panic after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP server whose listener *and* open connections die on `kill()`.
pub struct Server {
    pub addr: SocketAddr,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Server {
    pub async fn start(addr: SocketAddr, router: Router) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut set = JoinSet::new();
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = router.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let mut svc = svc.clone();
                        async move {
                            use tower::Service;
                            Ok::<_, Infallible>(svc.call(req).await.expect("infallible"))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow.
                while conns.try_join_next().is_some() {}
            }
        });
        Arc::new(Self {
            addr,
            tasks: Mutex::new(Some(set)),
        })
    }

    /// Close the listener and every connection now.
    pub fn kill(&self) {
        if let Some(mut set) = self.tasks.lock().take() {
            set.abort_all();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fake backend: an app answering with its id, and a vitals server whose
/// answer the test controls.
pub struct Backend {
    pub id: String,
    pub app: Arc<Server>,
    pub vitals: Arc<Server>,
    pub ready: Arc<AtomicBool>,
    /// Status the vitals answer with (200 normally).
    pub vitals_status: Arc<AtomicU64>,
    /// The id the vitals claim (defaults to `id`).
    pub vitals_id: Arc<Mutex<String>>,
    pub hits: Arc<AtomicU64>,
    /// `requests_in_progress` the vitals report.
    pub reported_load: Arc<AtomicU64>,
}

impl Backend {
    pub async fn start(id: &str, ip: &str) -> Self {
        let ready = Arc::new(AtomicBool::new(true));
        let vitals_status = Arc::new(AtomicU64::new(200));
        let vitals_id = Arc::new(Mutex::new(id.to_string()));
        let hits = Arc::new(AtomicU64::new(0));
        let reported_load = Arc::new(AtomicU64::new(0));
        let app = {
            let id = id.to_string();
            let hits = Arc::clone(&hits);
            Router::new().fallback(move |req: axum::extract::Request| {
                let id = id.clone();
                hits.fetch_add(1, Ordering::Relaxed);
                async move {
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    axum::Json(json!({"id": id, "path": req.uri().path(), "xff": xff}))
                }
            })
        };
        let vitals = {
            let (ready, st, vid, load) = (
                Arc::clone(&ready),
                Arc::clone(&vitals_status),
                Arc::clone(&vitals_id),
                Arc::clone(&reported_load),
            );
            Router::new().route(
                "/metrics",
                get(move || {
                    let body = json!({
                        "ready": ready.load(Ordering::Relaxed),
                        "requests_in_progress": load.load(Ordering::Relaxed), "cpu_usage": 1.5, "memory_usage": 2.5,
                        "gpu_usage": 0.0, "failed_responses": 0, "connected_peers": 0,
                        "backoff_requests": 0, "uptime_seconds": 1, "version": "test",
                        "id": vid.lock().clone(),
                    });
                    let status = st.load(Ordering::Relaxed) as u16;
                    async move {
                        (
                            axum::http::StatusCode::from_u16(status).expect("status"),
                            axum::Json(body),
                        )
                    }
                }),
            )
        };
        Self {
            id: id.to_string(),
            app: Server::start(any_port(ip), app).await,
            vitals: Server::start(any_port(ip), vitals).await,
            ready,
            vitals_status,
            vitals_id,
            hits,
            reported_load,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.app.addr
    }

    pub fn metrics_port(&self) -> u16 {
        self.vitals.addr.port()
    }

    pub fn set_ready(&self, r: bool) {
        self.ready.store(r, Ordering::Relaxed);
    }
}

/// Results of a bounded load run.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failures: Vec<String>,
}

/// Steady load: `concurrency` clients sending GET `url` back to back until
/// `stop` is set, `limit` passes, or `max` requests are sent in total.
pub fn start_load(
    url: String,
    concurrency: usize,
    limit: Duration,
    max: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let sent = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + limit;
        let mut set = JoinSet::new();
        for _ in 0..concurrency {
            let (url, stop, sent) = (url.clone(), Arc::clone(&stop), Arc::clone(&sent));
            set.spawn(async move {
                let c = client();
                let mut r = LoadReport::default();
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && sent.fetch_add(1, Ordering::Relaxed) < max
                {
                    match c.get(&url).send().await {
                        Ok(resp) if resp.status().is_success() => {
                            // Read the body: a truncated one is a failure too.
                            match resp.bytes().await {
                                Ok(_) => r.ok += 1,
                                Err(e) => r.failures.push(format!("body: {e}")),
                            }
                        }
                        Ok(resp) => r.failures.push(format!("status {}", resp.status())),
                        Err(e) => r.failures.push(format!("error: {e}")),
                    }
                }
                r
            });
        }
        let mut total = LoadReport::default();
        while let Some(Ok(r)) = set.join_next().await {
            total.ok += r.ok;
            total.failures.extend(r.failures);
        }
        total
    })
}

/// One Prometheus sample value (first line starting with `prefix`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}
