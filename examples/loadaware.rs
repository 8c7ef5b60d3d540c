//! `loadaware`: the backends and the open-loop client of `make bench`'s
//! load-aware part (bench/loadaware.sh), and the sized backends of the
//! body-size and instructions-per-request parts (bench/instructions.sh).
//!
//! ```text
//! loadaware backends --backend 127.0.1.1:29001 --backend 127.0.1.2:29001 \
//!     --vitals-port 29090 --workers 8 --service-ms 2 --slow 127.0.1.2:29001 --slow-factor 10
//! loadaware load --target 127.0.0.1:28000 --target 127.0.0.1:28010 --rate 2000 --seconds 20
//! ```
//!
//! * **Backends**: each answers `GET` with `--body-bytes` bytes after
//!   `--service-ms` of work (a sleep), at most `--workers` at a time; the
//!   rest wait in a queue, as in a server with a fixed worker pool. A slow
//!   backend (`--slow`) takes `--slow-factor` times as long. Each backend's
//!   vitals are on its own IP at `--vitals-port` (`GET /metrics`):
//!   `requests_in_progress` = requests being served, `backoff_requests` =
//!   requests queued for a worker. Every LB replica's requests count there;
//!   a least-connections peer sees only its own. `--external N` keeps N more
//!   requests queued on the slow backends, from clients no LB here sees.
//!   `--h2c` makes the backends speak HTTP/2 by prior knowledge (the vitals
//!   stay HTTP/1.1), for the upstream-protocol row of the instructions part.
//! * **Load**: an open-loop generator. Request `i` is due at `start + i/rate`
//!   whatever happened to the earlier ones, the targets take turns, and a
//!   latency is measured from the time the request was due, so a queue in
//!   front of a slow backend shows in the tail instead of slowing the
//!   client down (no coordinated omission). Prints one JSON object.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Cli {
    /// Runtime worker threads (1 = a current-thread runtime).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the backends and their vitals until killed.
    Backends {
        #[arg(long, required = true)]
        backend: Vec<SocketAddr>,
        /// Vitals port, on each backend's IP.
        #[arg(long)]
        vitals_port: Option<u16>,
        /// Requests served at once per backend; more wait in a queue.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Work per request, in milliseconds (0: answer at once).
        #[arg(long, default_value_t = 0.0)]
        service_ms: f64,
        /// Backends that are degraded (repeatable).
        #[arg(long)]
        slow: Vec<SocketAddr>,
        #[arg(long, default_value_t = 10.0)]
        slow_factor: f64,
        /// Work the slow backends also get from clients no LB here sees
        /// (another team's batch job): this many requests kept in their
        /// queue at all times, served like the others.
        #[arg(long, default_value_t = 0)]
        external: usize,
        /// Response body size.
        #[arg(long, default_value_t = 3)]
        body_bytes: usize,
        /// Serve HTTP/2 by prior knowledge (h2c) instead of HTTP/1.1.
        #[arg(long)]
        h2c: bool,
    },
    /// Open-loop load at a fixed rate; prints latency percentiles as JSON.
    Load {
        /// Targets, taking turns (repeatable).
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        /// Requests per second, over all targets.
        #[arg(long)]
        rate: f64,
        /// Measured window.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Unmeasured lead-in at the same rate.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// A request not answered in this long counts as an error.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
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
            Command::Backends {
                backend,
                vitals_port,
                workers,
                service_ms,
                slow,
                slow_factor,
                external,
                body_bytes,
                h2c,
            } => {
                let body = Bytes::from(vec![b'x'; body_bytes]);
                let mut vitals_ips = std::collections::HashSet::new();
                for addr in backend {
                    let factor = if slow.contains(&addr) {
                        slow_factor
                    } else {
                        1.0
                    };
                    let b = Arc::new(Backend {
                        workers: Semaphore::new(workers.max(1)),
                        service: Duration::from_secs_f64(service_ms * factor / 1000.0),
                        body: body.clone(),
                        serving: AtomicU32::new(0),
                        queued: AtomicU32::new(0),
                    });
                    let l = TcpListener::bind(addr).await?;
                    tokio::spawn(serve(l, Arc::clone(&b), false, h2c));
                    if slow.contains(&addr) {
                        for _ in 0..external {
                            tokio::spawn(external_client(Arc::clone(&b)));
                        }
                    }
                    // One vitals listener per IP: the first backend on it.
                    if let Some(p) = vitals_port.filter(|_| vitals_ips.insert(addr.ip())) {
                        let l = TcpListener::bind(SocketAddr::new(addr.ip(), p)).await?;
                        tokio::spawn(serve(l, b, true, false));
                    }
                }
                std::future::pending::<anyhow::Result<()>>().await
            }
            Command::Load {
                target,
                rate,
                seconds,
                warmup,
                timeout,
            } => load(target, rate, seconds, warmup, timeout).await,
        }
    })
}

struct Backend {
    workers: Semaphore,
    service: Duration,
    body: Bytes,
    serving: AtomicU32,
    queued: AtomicU32,
}

async fn serve(l: TcpListener, b: Arc<Backend>, vitals: bool, h2c: bool) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let b = Arc::clone(&b);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let b = Arc::clone(&b);
                async move { Ok::<_, Infallible>(handle(&b, vitals, req).await) }
            });
            let io = TokioIo::new(stream);
            let _ = if h2c {
                http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(io, svc)
                    .await
            };
        });
    }
}

async fn handle(b: &Backend, vitals: bool, _req: Request<Incoming>) -> Response<Full<Bytes>> {
    if vitals {
        let v = json!({
            "ready": true,
            "requests_in_progress": b.serving.load(Ordering::Relaxed),
            "backoff_requests": b.queued.load(Ordering::Relaxed),
        });
        return Response::new(Full::new(Bytes::from(v.to_string())));
    }
    if !b.service.is_zero() {
        b.queued.fetch_add(1, Ordering::Relaxed);
        let permit = b.workers.acquire().await;
        b.queued.fetch_sub(1, Ordering::Relaxed);
        b.serving.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(b.service).await;
        b.serving.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }
    Response::new(Full::new(b.body.clone()))
}

/// One client of a backend that no LB here routes: a request, then the
/// next, forever.
async fn external_client(b: Arc<Backend>) {
    loop {
        b.queued.fetch_add(1, Ordering::Relaxed);
        let permit = b.workers.acquire().await;
        b.queued.fetch_sub(1, Ordering::Relaxed);
        b.serving.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(b.service.max(Duration::from_millis(1))).await;
        b.serving.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }
}

/// One request's fate: latency from its due time, or an error.
type Outcome = (bool, Result<Duration, String>);

async fn load(
    targets: Vec<SocketAddr>,
    rate: f64,
    seconds: f64,
    warmup: f64,
    timeout: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0 && seconds > 0.0, "rate and seconds must be > 0");
    // reqwest sets TCP_NODELAY by default.
    let client = roster::fetch::client(roster::fetch::Bounds {
        idle_timeout: Duration::from_secs(30),
        ..roster::fetch::Bounds::timeout(Duration::from_secs_f64(timeout))
    })?;
    let urls: Vec<String> = targets.iter().map(|t| format!("http://{t}/")).collect();
    let total = ((warmup + seconds) * rate).round() as u64;
    let measured_from = (warmup * rate).round() as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now() + Duration::from_millis(50);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, tx) = (
            client.clone(),
            urls[i as usize % urls.len()].clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let r = match client.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(_) => Ok(due.elapsed()),
                    Err(e) => Err(format!("body: {e}")),
                },
                Ok(resp) => Err(format!("status {}", resp.status().as_u16())),
                Err(e) if e.is_timeout() => Err("timeout".into()),
                Err(e) => Err(format!("transport: {e}")),
            };
            let _ = tx.send((i >= measured_from, r));
        });
    }
    drop(tx);
    let sent_s = start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    while let Some((measured, r)) = rx.recv().await {
        match (measured, r) {
            (false, _) => {}
            (true, Ok(d)) => lat.push(d.as_secs_f64() * 1000.0),
            (true, Err(e)) => *errors.entry(e).or_default() += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1]
    };
    let n_err: u64 = errors.values().sum();
    println!(
        "{}",
        json!({
            "rate": rate, "seconds": seconds, "sent": total - measured_from,
            "ok": lat.len(), "errors": n_err, "error_kinds": errors,
            "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "p999_ms": q(0.999),
            "max_ms": lat.last().copied().unwrap_or(0.0),
            "send_lag_s": sent_s - (warmup + seconds),
        })
    );
    Ok(())
}
