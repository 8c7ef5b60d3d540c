//! `benchfarm`: the backend farm and the clients `make bench` drives
//! (`bench/run.sh`). One process stands in for up to 10,000 backends.
//!
//! ```text
//! benchfarm serve --app 127.0.0.1:19001 --app 0.0.0.0:19100 --vitals-port 19090 --control 127.0.0.1:19099
//! benchfarm register --lb 127.0.0.1:18080 --count 10000 --app-port 19100 --metrics-port 19090
//! benchfarm register --lb 127.0.0.1:18080 --address 127.0.0.1:19001 --metrics-port 19090
//! benchfarm heartbeat --lb 127.0.0.1:18080 --count 10000 ... --period 30s --duration 30s
//! benchfarm wait-routable --lb 127.0.0.1:18080 --count 10000 --timeout 120s
//! benchfarm flip --farm 127.0.0.1:19099 --lb 127.0.0.1:18080 --count 100 --stride 100 --total 10000
//! ```
//!
//! * **App listeners** (`--app`, repeatable) answer every request with a tiny
//!   `200 ok` (hyper, HTTP/1.1 keep-alive). A listener bound to `0.0.0.0:P`
//!   accepts on every `127.x.y.z:P`, since all of 127.0.0.0/8 routes to `lo`:
//!   10,000 distinct backend addresses are real listeners in one process.
//! * **The vitals listener** (`0.0.0.0:--vitals-port`) answers `GET /metrics`
//!   with `{"ready": true}` for whichever 127.x.y.z address it was reached
//!   on, or `{"ready": false}` once that address was flipped.
//! * **The control listener** (`--control`): `POST /flip?first=I&count=N&stride=S`
//!   flips the generated addresses I, I+S, … (N of them) to not-ready and notes the time;
//!   for each flipped address the farm records when the LB first fetched
//!   the not-ready vitals (detection time = that request − the flip).
//!   `GET /detections` returns them, `POST /reset` unflips everything,
//!   `GET /stats` counts requests and accepted connections per listener kind
//!   (connections/requests on the app side shows upstream connection reuse).
//!   `POST /fault?first=I&count=N&stride=S&mode=M` injects a fault on those
//!   addresses (for `make soak`, bench/soak.py): `5xx` (the app answers
//!   `500` with `x-soak-fault: 5xx`), `reset` (the app resets new
//!   connections at once and closes kept-alive ones without an answer),
//!   `dead` (the vitals never answer) or `ok` (clears it); `GET /faults`
//!   counts the faulted answers per mode.
//! * **`/slow…`** on an app listener answers after 500 ms (a client can hang
//!   up while the LB waits for it).
//! * **Clients**: `register` (concurrent `POST /register`, reports the total
//!   time), `heartbeat` (re-registers a fleet spread evenly over a period, as
//!   agents do), `wait-routable` (polls `/telemetry` until
//!   `roster_lb_routable_backends` reaches a count) and `flip` (flips N at
//!   once, waits until the LB routes to N fewer, reports both distributions).
//!
//! Backend number `i` is `127.{10 + i/62500}.{(i/250) % 250}.{i % 250 + 1}`
//! with id `bench-i`. Every client prints one JSON object on stdout.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};

#[derive(Parser)]
#[command(
    name = "benchfarm",
    about = "backend farm and clients for `make bench`"
)]
struct Cli {
    /// Runtime worker threads (1 = a current-thread runtime).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve app listeners, the vitals listener and the control listener.
    Serve {
        /// An app listener (repeatable).
        #[arg(long)]
        app: Vec<SocketAddr>,
        /// Vitals port, bound on 0.0.0.0.
        #[arg(long)]
        vitals_port: Option<u16>,
        /// Bind the vitals port on each app listener's IP instead of
        /// 0.0.0.0 (loopback only, for a few dozen explicit addresses).
        #[arg(long)]
        vitals_on_apps: bool,
        /// Control listener.
        #[arg(long)]
        control: Option<SocketAddr>,
    },
    /// Register backends with an LB, `concurrency` POSTs at a time.
    Register {
        #[command(flatten)]
        fleet: Fleet,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Re-register the fleet continuously, spread evenly over `period`.
    Heartbeat {
        #[command(flatten)]
        fleet: Fleet,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        period: Duration,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Wait until the LB routes to `count` backends.
    WaitRoutable {
        #[arg(long)]
        lb: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Flip `count` generated backends (first, first+stride, ...) to
    /// not-ready; wait until the LB routes to `total - count`; report
    /// detection times.
    Flip {
        #[arg(long)]
        farm: SocketAddr,
        #[arg(long)]
        lb: SocketAddr,
        #[arg(long, default_value_t = 0)]
        first: u32,
        #[arg(long)]
        count: u32,
        /// Spread the flipped ones over the fleet (and so over check phases).
        #[arg(long, default_value_t = 1)]
        stride: u32,
        /// Routable backends before the flip.
        #[arg(long)]
        total: u64,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Which backends a client registers.
#[derive(clap::Args, Clone)]
struct Fleet {
    /// The LB's control API.
    #[arg(long)]
    lb: SocketAddr,
    /// Explicit traffic addresses (repeatable); ids `bench-a<n>`.
    #[arg(long)]
    address: Vec<SocketAddr>,
    /// Or this many generated addresses (see the module doc) on `app_port`.
    #[arg(long, default_value_t = 0)]
    count: u32,
    #[arg(long, default_value_t = 0)]
    app_port: u16,
    #[arg(long)]
    metrics_port: u16,
    /// Spread generated backends over this many services, `svc-<i % n>`
    /// (0: no `service` field, the LB's default service).
    #[arg(long, default_value_t = 0)]
    services: u32,
}

impl Fleet {
    fn bodies(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .address
            .iter()
            .enumerate()
            .map(|(n, a)| registration(&format!("bench-a{n}"), *a, self.metrics_port))
            .collect();
        out.extend((0..self.count).map(|i| {
            let addr = SocketAddr::new(backend_ip(i).into(), self.app_port);
            let body = registration(&format!("bench-{i}"), addr, self.metrics_port);
            match self.services {
                0 => body,
                n => with_service(body, &format!("svc-{}", i % n)),
            }
        }));
        out
    }
}

/// A registration body with a `service`.
fn with_service(body: String, service: &str) -> String {
    let mut v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["service"] = json!(service);
    v.to_string()
}

fn registration(id: &str, addr: SocketAddr, metrics_port: u16) -> String {
    json!({"id": id, "address": addr.to_string(), "metrics_port": metrics_port}).to_string()
}

/// The address of generated backend `i`.
fn backend_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        10 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 1) as u8,
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        match cli.command {
            Command::Serve {
                app,
                vitals_port,
                vitals_on_apps,
                control,
            } => {
                let vitals: Vec<SocketAddr> = match vitals_port {
                    Some(p) if vitals_on_apps => {
                        app.iter().map(|a| SocketAddr::new(a.ip(), p)).collect()
                    }
                    Some(p) => vec![SocketAddr::from(([0, 0, 0, 0], p))],
                    None => Vec::new(),
                };
                serve(app, vitals, control).await
            }
            Command::Register { fleet, concurrency } => register(fleet, concurrency).await,
            Command::Heartbeat {
                fleet,
                period,
                duration,
            } => heartbeat(fleet, period, duration).await,
            Command::WaitRoutable { lb, count, timeout } => {
                let started = Instant::now();
                let n = wait_routable(lb, |n| n == count, timeout).await?;
                let v = json!({"routable": n, "seconds": started.elapsed().as_secs_f64()});
                println!("{v}");
                Ok(())
            }
            Command::Flip {
                farm,
                lb,
                first,
                count,
                stride,
                total,
                timeout,
            } => flip(farm, lb, (first, count, stride), total, timeout).await,
        }
    })
}

// ---------------------------------------------------------------- server

/// A one-chunk response body with an exact length.
type Tiny = Full<Bytes>;

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Tiny> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn reply_json(v: Value) -> Response<Tiny> {
    reply(
        StatusCode::OK,
        "application/json",
        Bytes::from(v.to_string()),
    )
}

/// When an address was flipped, and when the LB first saw it not ready.
struct Flipped {
    at: Instant,
    detected: Option<Duration>,
}

#[derive(Default)]
struct Farm {
    app_requests: AtomicU64,
    app_connections: AtomicU64,
    vitals_requests: AtomicU64,
    vitals_connections: AtomicU64,
    /// Fast path: nothing flipped, no lock on the vitals path.
    any_flipped: AtomicBool,
    flipped: Mutex<HashMap<Ipv4Addr, Flipped>>,
    /// Fast path: no fault injected, no lock.
    any_fault: AtomicBool,
    faults: Mutex<HashMap<Ipv4Addr, Fault>>,
    /// Faulted answers (or resets, or held vitals) per mode.
    faulted: [AtomicU64; 3],
}

/// A fault injected on one address (`POST /fault`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    ServerError,
    Reset,
    DeadVitals,
}

impl Fault {
    fn parse(s: &str) -> Option<Option<Self>> {
        match s {
            "5xx" => Some(Some(Self::ServerError)),
            "reset" => Some(Some(Self::Reset)),
            "dead" => Some(Some(Self::DeadVitals)),
            "ok" => Some(None),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        ["5xx", "reset", "dead"][self as usize]
    }
}

impl Farm {
    fn fault(&self, ip: Ipv4Addr) -> Option<Fault> {
        if !self.any_fault.load(Ordering::Relaxed) {
            return None;
        }
        self.faults.lock().expect("lock").get(&ip).copied()
    }

    /// Count one faulted answer (or reset, or held vitals request).
    fn hit(&self, f: Fault) {
        self.faulted[f as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    App,
    Vitals,
    Control,
}

fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
    Ok(socket.listen(4096)?)
}

async fn serve(
    apps: Vec<SocketAddr>,
    vitals: Vec<SocketAddr>,
    control: Option<SocketAddr>,
) -> anyhow::Result<()> {
    // 10,000 pooled vitals connections plus proxied ones.
    let _ = rlimit::increase_nofile_limit(1 << 20);
    let farm = Arc::new(Farm::default());
    let mut listeners = Vec::new();
    for a in apps {
        listeners.push((listen(a)?, Kind::App));
    }
    for v in vitals {
        listeners.push((listen(v)?, Kind::Vitals));
    }
    if let Some(c) = control {
        listeners.push((listen(c)?, Kind::Control));
    }
    let mut tasks = Vec::new();
    for (l, kind) in listeners {
        tasks.push(tokio::spawn(accept_loop(l, kind, Arc::clone(&farm))));
    }
    eprintln!("benchfarm: serving");
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn accept_loop(l: TcpListener, kind: Kind, farm: Arc<Farm>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match l.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("benchfarm: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(SocketAddr::V4(a)) => *a.ip(),
            _ => Ipv4Addr::LOCALHOST,
        };
        if matches!(kind, Kind::App) && farm.fault(local) == Some(Fault::Reset) {
            farm.hit(Fault::Reset);
            #[allow(deprecated)] // zero linger: an RST, no blocking
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        }
        let farm = Arc::clone(&farm);
        match kind {
            Kind::App => farm.app_connections.fetch_add(1, Ordering::Relaxed),
            Kind::Vitals => farm.vitals_connections.fetch_add(1, Ordering::Relaxed),
            Kind::Control => 0,
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let farm = Arc::clone(&farm);
                async move { handle(&farm, kind, local, req).await }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The error that makes hyper close a kept-alive connection unanswered.
#[derive(Debug)]
struct Hangup;

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected reset")
    }
}

impl std::error::Error for Hangup {}

async fn handle(
    farm: &Farm,
    kind: Kind,
    local: Ipv4Addr,
    req: Request<Incoming>,
) -> Result<Response<Tiny>, Hangup> {
    let fault = match kind {
        Kind::Control => None,
        _ => farm.fault(local),
    };
    Ok(match kind {
        Kind::App => {
            farm.app_requests.fetch_add(1, Ordering::Relaxed);
            match fault {
                Some(Fault::Reset) => {
                    farm.hit(Fault::Reset);
                    return Err(Hangup);
                }
                Some(Fault::ServerError) => {
                    farm.hit(Fault::ServerError);
                    let mut r = reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        Bytes::from_static(b"injected\n"),
                    );
                    r.headers_mut().insert(
                        "x-soak-fault",
                        hyper::header::HeaderValue::from_static("5xx"),
                    );
                    return Ok(r);
                }
                _ => {}
            }
            if req.uri().path().starts_with("/slow") {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            reply(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
        }
        Kind::Vitals => {
            farm.vitals_requests.fetch_add(1, Ordering::Relaxed);
            if fault == Some(Fault::DeadVitals) {
                farm.hit(Fault::DeadVitals);
                // Never answers within any check timeout; the LB hangs up.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            let mut ready = true;
            if farm.any_flipped.load(Ordering::Relaxed) {
                let mut flipped = farm.flipped.lock().expect("lock");
                if let Some(f) = flipped.get_mut(&local) {
                    ready = false;
                    if f.detected.is_none() {
                        f.detected = Some(f.at.elapsed());
                    }
                }
            }
            let body: &'static [u8] = if ready {
                b"{\"ready\": true}"
            } else {
                b"{\"ready\": false}"
            };
            reply(StatusCode::OK, "application/json", Bytes::from_static(body))
        }
        Kind::Control => control(farm, req),
    })
}

fn query_str<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// `POST /fault?first=I&count=N&stride=S&mode=M`.
fn inject(farm: &Farm, req: &Request<Incoming>) -> Response<Tiny> {
    let Some(mode) = query_str(req, "mode").and_then(Fault::parse) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            Bytes::from_static(b"mode: 5xx | reset | dead | ok\n"),
        );
    };
    let first = query_u32(req, "first").unwrap_or(0);
    let count = query_u32(req, "count").unwrap_or(0);
    let stride = query_u32(req, "stride").unwrap_or(1).max(1);
    let mut faults = farm.faults.lock().expect("lock");
    for k in 0..count {
        let ip = backend_ip(first.saturating_add(k.saturating_mul(stride)));
        match mode {
            Some(f) => faults.insert(ip, f),
            None => faults.remove(&ip),
        };
    }
    farm.any_fault.store(!faults.is_empty(), Ordering::Relaxed);
    reply_json(json!({"faulted": faults.len()}))
}

fn query_u32(req: &Request<Incoming>, key: &str) -> Option<u32> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k == key { v.parse().ok() } else { None }
    })
}

fn control(farm: &Farm, req: Request<Incoming>) -> Response<Tiny> {
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/flip") => {
            let first = query_u32(&req, "first").unwrap_or(0);
            let count = query_u32(&req, "count").unwrap_or(0);
            let stride = query_u32(&req, "stride").unwrap_or(1).max(1);
            let now = Instant::now();
            let mut flipped = farm.flipped.lock().expect("lock");
            for k in 0..count {
                flipped.insert(
                    backend_ip(first.saturating_add(k.saturating_mul(stride))),
                    Flipped {
                        at: now,
                        detected: None,
                    },
                );
            }
            farm.any_flipped.store(true, Ordering::Relaxed);
            reply_json(json!({"flipped": flipped.len()}))
        }
        ("POST", "/reset") => {
            farm.flipped.lock().expect("lock").clear();
            farm.any_flipped.store(false, Ordering::Relaxed);
            reply_json(json!({"flipped": 0}))
        }
        ("GET", "/detections") => {
            let flipped = farm.flipped.lock().expect("lock");
            let ms: Vec<f64> = flipped
                .values()
                .filter_map(|f| f.detected.map(|d| d.as_secs_f64() * 1000.0))
                .collect();
            reply_json(json!({"flipped": flipped.len(), "detected_ms": ms}))
        }
        ("POST", "/fault") => inject(farm, &req),
        ("GET", "/faults") => {
            let mut v = json!({"faulted": farm.faults.lock().expect("lock").len()});
            for f in [Fault::ServerError, Fault::Reset, Fault::DeadVitals] {
                v[f.name()] = json!(farm.faulted[f as usize].load(Ordering::Relaxed));
            }
            reply_json(v)
        }
        ("GET", "/stats") => reply_json(json!({
            "app_requests": farm.app_requests.load(Ordering::Relaxed),
            "app_connections": farm.app_connections.load(Ordering::Relaxed),
            "vitals_requests": farm.vitals_requests.load(Ordering::Relaxed),
            "vitals_connections": farm.vitals_connections.load(Ordering::Relaxed),
        })),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"no such route\n"),
        ),
    }
}

// ---------------------------------------------------------------- clients

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(roster::fetch::client(roster::fetch::Bounds {
        idle_per_host: 256,
        ..roster::fetch::Bounds::timeout(Duration::from_secs(10))
    })?)
}

/// POST one registration; the status code, or 0 on a transport error.
async fn post(c: &reqwest::Client, url: &str, body: String) -> u16 {
    match c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn register(fleet: Fleet, concurrency: usize) -> anyhow::Result<()> {
    let c = client()?;
    let url = format!("http://{}/register", fleet.lb);
    let bodies = fleet.bodies();
    let n = bodies.len();
    let started = Instant::now();
    let codes: Vec<u16> = futures::stream::iter(bodies)
        .map(|b| post(&c, &url, b))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut status: HashMap<String, usize> = HashMap::new();
    for code in &codes {
        *status.entry(code.to_string()).or_default() += 1;
    }
    let ok = codes.iter().filter(|c| matches!(c, 200 | 201)).count();
    println!(
        "{}",
        json!({"count": n, "ok": ok, "status": status, "seconds": seconds,
               "per_second": n as f64 / seconds.max(1e-9)})
    );
    if ok != n {
        anyhow::bail!("{} of {n} registrations failed", n - ok);
    }
    Ok(())
}

async fn heartbeat(fleet: Fleet, period: Duration, duration: Duration) -> anyhow::Result<()> {
    let c = client()?;
    let url = format!("http://{}/register", fleet.lb);
    let bodies = Arc::new(fleet.bodies());
    let n = bodies.len().max(1);
    // Ticks of 10 ms, each sending its share of the fleet.
    let tick = Duration::from_millis(10);
    let per_tick = n as f64 * tick.as_secs_f64() / period.as_secs_f64();
    let started = Instant::now();
    let mut interval = tokio::time::interval(tick);
    let (mut due, mut next) = (0.0f64, 0usize);
    let mut inflight = futures::stream::FuturesUnordered::new();
    let (mut sent, mut ok) = (0usize, 0usize);
    while started.elapsed() < duration {
        tokio::select! {
            _ = interval.tick() => {
                due += per_tick;
                while due >= 1.0 {
                    due -= 1.0;
                    let body = bodies[next % n].clone();
                    next += 1;
                    sent += 1;
                    let (c, url) = (c.clone(), url.clone());
                    inflight.push(async move { post(&c, &url, body).await });
                }
            }
            Some(code) = inflight.next(), if !inflight.is_empty() => {
                ok += usize::from(matches!(code, 200 | 201));
            }
        }
    }
    while let Some(code) = inflight.next().await {
        ok += usize::from(matches!(code, 200 | 201));
    }
    println!(
        "{}",
        json!({"sent": sent, "ok": ok, "seconds": started.elapsed().as_secs_f64(),
               "per_second": sent as f64 / started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// Read `roster_lb_routable_backends` from the LB's `/telemetry`, summed
/// over its services (one series per service).
async fn routable(c: &reqwest::Client, lb: SocketAddr) -> Option<u64> {
    let text = c
        .get(format!("http://{lb}/telemetry"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("roster_lb_routable_backends"))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Poll until `done(routable)`; the last count read.
async fn wait_routable(
    lb: SocketAddr,
    done: impl Fn(u64) -> bool,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let c = client()?;
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        last = routable(&c, lb).await;
        if last.is_some_and(&done) {
            return Ok(last.unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("timed out after {timeout:?}: routable = {last:?}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn flip(
    farm: SocketAddr,
    lb: SocketAddr,
    (first, count, stride): (u32, u32, u32),
    total: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let c = client()?;
    let started = Instant::now();
    c.post(format!(
        "http://{farm}/flip?first={first}&count={count}&stride={stride}"
    ))
    .send()
    .await?
    .error_for_status()?;
    let target = total.saturating_sub(u64::from(count));
    let left = wait_routable(lb, |n| n <= target, timeout).await;
    let out_of_pool = started.elapsed().as_secs_f64();
    let d: Value = c
        .get(format!("http://{farm}/detections"))
        .send()
        .await?
        .json()
        .await?;
    let mut ms: Vec<f64> = d["detected_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    ms.sort_by(f64::total_cmp);
    c.post(format!("http://{farm}/reset")).send().await?;
    println!(
        "{}",
        json!({
            "flipped": count,
            "detected": ms.len(),
            "detect_p50_ms": percentile(&ms, 50.0),
            "detect_p90_ms": percentile(&ms, 90.0),
            "detect_max_ms": ms.last().copied().unwrap_or(f64::NAN),
            "all_out_of_pool_s": out_of_pool,
            "routable_after": left.as_ref().ok(),
            "error": left.as_ref().err().map(ToString::to_string),
        })
    );
    Ok(())
}
