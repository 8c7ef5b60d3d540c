//! `roster demo-backend`: a small HTTP backend embedding the agent library
//! (the seed's `./backend`), and `roster demo`: an LB and three demo
//! backends on loopback, as child processes of one command.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::agent::{Agent, AgentArgs, AgentError};
use crate::config::{Config, ConfigError};
use crate::signals::StopSignals;

/// `roster demo-backend` flags: `--listen` plus every `roster agent` flag.
#[derive(Debug, Clone, Args)]
pub struct DemoBackendArgs {
    /// Address the demo app listens on; announced unless --address is given.
    #[arg(long, env = "ROSTER_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub agent: AgentArgs,
}

impl DemoBackendArgs {
    /// The agent's config: announces `--listen` unless `--address` (or
    /// `$POD_IP` when listening on 0.0.0.0), and binds the vitals on the
    /// listen IP unless `--metrics-listen` says otherwise.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = self.agent.resolve()?;
        let ip = self.listen.ip();
        if c.agent.address.is_none() {
            if ip.is_unspecified() {
                c.agent.app_port.get_or_insert(self.listen.port());
            } else {
                c.agent.address = Some(self.listen.to_string());
            }
        }
        if !self.agent.overlay.given("agent.metrics_listen")
            && c.agent.metrics_listen == crate::config::AgentConfig::default().metrics_listen
            && !ip.is_unspecified()
        {
            c.agent.metrics_listen = ip.to_string();
        }
        Ok(c)
    }
}

#[derive(Deserialize)]
struct SlowParams {
    ms: Option<u64>,
}

fn json_line(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v}\n"),
    )
        .into_response()
}

/// The demo app: `/` (and any path) answers with its id, `/slow?ms=N`
/// waits first (default 1000, at most 60000), `/fail` answers 500.
pub fn backend_router(id: &str, address: SocketAddr) -> Router {
    let (id, addr) = (id.to_string(), address.to_string());
    let (id2, addr2) = (id.clone(), addr.clone());
    let (id3, addr3) = (id.clone(), addr.clone());
    Router::new()
        .route(
            "/slow",
            get(move |Query(p): Query<SlowParams>| async move {
                let ms = p.ms.unwrap_or(1000).min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_line(
                    StatusCode::OK,
                    serde_json::json!({"id": id2, "address": addr2, "path": "/slow", "slept_ms": ms}),
                )
            }),
        )
        .route(
            "/fail",
            get(move || async move {
                json_line(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"id": id3, "address": addr3, "error": "failing on purpose"}),
                )
            }),
        )
        .fallback(move |req: Request| async move {
            json_line(
                StatusCode::OK,
                serde_json::json!({"id": id, "address": addr, "path": req.uri().path()}),
            )
        })
}

/// `roster demo-backend`: serve the demo app with the agent embedded; on
/// SIGTERM/SIGINT drain, then stop.
pub async fn run_backend(listen: SocketAddr, config: Config) -> Result<(), AgentError> {
    // Bound before the agent starts, so its first probe finds the app.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: listen,
            source,
        })?;
    let agent = Agent::from_config(&config)?.spawn().await?;
    agent.drain_on_signals()?;
    let address = agent_address(&config, listener.local_addr()?);
    let app = backend_router(agent.id(), address).layer(agent.layer());
    tracing::info!(listen = %listen, id = %agent.id(), "demo backend serving");
    let drained = agent.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        drained.drained().await;
    });
    let limit = async {
        agent.drained().await;
        // Requests still running (a long /slow) get this long to finish.
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::select! {
        r = serve => r?,
        _ = limit => tracing::warn!("requests still running after the drain: stopping anyway"),
    }
    tracing::info!("drained: exiting");
    Ok(())
}

fn agent_address(config: &Config, bound: SocketAddr) -> SocketAddr {
    config
        .agent
        .address
        .as_deref()
        .and_then(|a| a.parse().ok())
        .unwrap_or(bound)
}

/// What `roster demo` runs: fixed loopback addresses.
pub const DEMO_PROXY: &str = "127.0.0.1:8000";
pub const DEMO_CONTROL: &str = "127.0.0.1:8080";
pub const DEMO_BACKEND_IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
pub const DEMO_APP_PORT: u16 = 3000;
pub const DEMO_METRICS_PORT: u16 = 9090;

/// Every address `roster demo` binds.
pub fn demo_addresses() -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = [DEMO_PROXY, DEMO_CONTROL]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    for ip in DEMO_BACKEND_IPS {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            v.push(SocketAddr::new(ip, DEMO_APP_PORT));
            v.push(SocketAddr::new(ip, DEMO_METRICS_PORT));
        }
    }
    v
}

/// The demo addresses that cannot be bound now.
pub fn busy_demo_addresses() -> Vec<SocketAddr> {
    demo_addresses()
        .into_iter()
        .filter(|a| std::net::TcpListener::bind(a).is_err())
        .collect()
}

/// `roster demo` takes no flags: the addresses are fixed so the README's
/// curl lines work as written.
#[derive(Debug, Clone, Default, Args)]
pub struct DemoArgs {}

/// Why `roster demo` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot run the demo: {} already in use (another roster demo?)", list(.0))]
    Busy(Vec<SocketAddr>),
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} exited early ({status})")]
    ChildExited { name: String, status: ExitStatus },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Env var naming the demo's pid in its children: they exit when it dies.
pub const PARENT_ENV: &str = "ROSTER_DEMO_PARENT";

/// In a child of `roster demo`: get SIGTERM when the demo dies, even by
/// SIGKILL, so no process is left behind.
pub fn exit_with_demo_parent() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        tracing::warn!(error = %e, "cannot follow the demo's lifetime");
    }
    if nix::unistd::getppid().as_raw() != parent {
        // The demo died before we could watch it.
        std::process::exit(1);
    }
}

struct Kid {
    name: String,
    child: Child,
}

impl Kid {
    fn spawn(name: &str, args: &[String]) -> Result<Self, DemoError> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Ctrl-C reaches the demo only; it stops the children in order.
            .process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ROSTER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env(PARENT_ENV, std::process::id().to_string());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().map_err(|source| DemoError::Spawn {
            name: name.into(),
            source,
        })?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(prefix_lines(name.to_string(), out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(prefix_lines(name.to_string(), err));
        }
        Ok(Self {
            name: name.into(),
            child,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn terminate(&self) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// SIGTERM, wait up to `limit`, then SIGKILL.
    async fn stop(&mut self, limit: Duration) {
        if self.exited().is_some() {
            return;
        }
        self.terminate();
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(s)) => eprintln!("[demo] {} stopped ({s})", self.name),
            _ => {
                eprintln!("[demo] {} did not stop in {limit:?}: killing it", self.name);
                let _ = self.child.kill().await;
            }
        }
    }
}

async fn prefix_lines(name: String, r: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(r).lines();
    let mut err = tokio::io::stderr();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = err.write_all(format!("[{name}] {line}\n").as_bytes()).await;
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

/// Poll `f` every 100 ms until it is true, a child exits, or `limit`.
async fn wait_until<F, Fut>(
    kids: &mut [Kid],
    limit: Duration,
    what: &str,
    mut f: F,
) -> Result<(), DemoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        for k in kids.iter_mut() {
            if let Some(status) = k.exited() {
                return Err(DemoError::ChildExited {
                    name: k.name.clone(),
                    status,
                });
            }
        }
        if f().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout(limit, what.into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `roster demo`: start, print what to curl, run until Ctrl-C/SIGTERM,
/// stop every child (backends first: they drain; then the LB).
pub async fn run(_args: DemoArgs) -> Result<(), DemoError> {
    let busy = busy_demo_addresses();
    if !busy.is_empty() {
        return Err(DemoError::Busy(busy));
    }
    let mut kids: Vec<Kid> = Vec::new();
    let result = run_children(&mut kids).await;
    // Backends first, so their DELETEs reach a live LB.
    let split = kids.len().min(1);
    let (lb, backends) = kids.split_at_mut(split);
    futures::future::join_all(backends.iter_mut().map(|k| k.stop(Duration::from_secs(10)))).await;
    for k in lb {
        k.stop(Duration::from_secs(10)).await;
    }
    eprintln!("[demo] stopped");
    result
}

async fn run_children(kids: &mut Vec<Kid>) -> Result<(), DemoError> {
    let mut stop = StopSignals::new()?;
    let timeout = Duration::from_secs(2);
    let client = crate::fetch::client(crate::fetch::Bounds::timeout(timeout))
        .map_err(std::io::Error::other)?;
    let control = format!("http://{DEMO_CONTROL}");

    kids.push(spawn_lb()?);
    let healthz = format!("{control}/healthz");
    let ready = || async { client.get(&healthz).send().await.is_ok() };
    tokio::select! {
        r = wait_until(kids, Duration::from_secs(20), "the LB", ready) => r?,
        _ = stop.recv() => return Ok(()),
    }

    let mut ids = spawn_backends(kids)?;
    let backends = format!("{control}/backends");
    let all_in = || async {
        crate::fetch::get_json::<Vec<String>>(&client, &backends, 64 * 1024, timeout)
            .await
            .is_ok_and(|v| v.len() == DEMO_BACKEND_IPS.len())
    };
    tokio::select! {
        r = wait_until(kids, Duration::from_secs(30), "3 backends in /backends", all_in) => r?,
        _ = stop.recv() => return Ok(()),
    }

    println!("{}", instructions(kids));
    supervise(kids, &mut ids, &mut stop).await
}

/// Start the demo LB on [`DEMO_PROXY`] and [`DEMO_CONTROL`].
fn spawn_lb() -> Result<Kid, DemoError> {
    Kid::spawn(
        "lb",
        &s(&[
            "lb",
            "--listen",
            DEMO_PROXY,
            "--control-listen",
            DEMO_CONTROL,
            "--allowed-networks",
            "127.0.0.0/8",
            "--threads",
            "2",
            "--health-interval",
            "1s",
            "--health-timeout",
            "500ms",
            "--warmup",
            "0s",
            "--grace-period",
            "5s",
        ]),
    )
}

/// Start one demo backend per [`DEMO_BACKEND_IPS`]; returns id → app address.
fn spawn_backends(kids: &mut Vec<Kid>) -> Result<HashMap<String, String>, DemoError> {
    let mut ids = HashMap::new();
    for (n, ip) in DEMO_BACKEND_IPS.iter().enumerate() {
        let id = format!("demo-{}", n + 1);
        let listen = format!("{ip}:{DEMO_APP_PORT}");
        let port = DEMO_METRICS_PORT.to_string();
        kids.push(Kid::spawn(
            &id,
            &s(&[
                "demo-backend",
                "--listen",
                &listen,
                "--id",
                &id,
                "--discovery-lb",
                DEMO_CONTROL,
                "--metrics-port",
                &port,
                "--metrics-listen",
                ip,
                "--announce-interval",
                "5s",
                "--health-interval",
                "1s",
                "--drain-period",
                "5s",
            ]),
        )?);
        ids.insert(id, listen);
    }
    Ok(ids)
}

/// What to try once the demo is up, with the backends' pids.
fn instructions(kids: &[Kid]) -> String {
    let pids: Vec<String> = kids
        .iter()
        .skip(1)
        .map(|k| format!("{} pid {}", k.name, k.pid().unwrap_or(0)))
        .collect();
    let b = DEMO_BACKEND_IPS[0];
    let lines = [
        (
            format!("curl http://{DEMO_CONTROL}/backends"),
            "the LB's pool",
        ),
        (
            format!("curl http://{DEMO_PROXY}/"),
            "through the proxy, round robin",
        ),
        (
            format!("curl 'http://{DEMO_PROXY}/slow?ms=2000'"),
            "a slow request",
        ),
        (
            format!("curl http://{DEMO_PROXY}/fail"),
            "a 500, counted in failed_responses",
        ),
        (
            format!("curl http://{b}:{DEMO_METRICS_PORT}/metrics"),
            "a backend's JSON vitals",
        ),
        (
            format!("curl http://{b}:{DEMO_METRICS_PORT}/telemetry"),
            "the same, as Prometheus text",
        ),
        (
            format!("roster status --lb {DEMO_CONTROL}"),
            "the LB's registry as a table",
        ),
        (
            format!("open http://{DEMO_CONTROL}/"),
            "the live operator page",
        ),
        (
            "kill -TERM <pid>".to_string(),
            "a backend drains out of /backends",
        ),
    ];
    let mut text = format!(
        "\nroster demo is up: an LB (proxy {DEMO_PROXY}, control {DEMO_CONTROL}) and 3 backends \
         on {}.\n\n",
        DEMO_BACKEND_IPS.join(", ")
    );
    for (cmd, what) in lines {
        text.push_str(&format!("  {cmd:<46} # {what}\n"));
    }
    text.push_str(&format!(
        "  {:<46}   ({})\n\nCtrl-C stops everything.",
        "",
        pids.join(", ")
    ));
    text
}

/// Run until a signal; fail if the LB exits, report each backend's exit once.
async fn supervise(
    kids: &mut [Kid],
    ids: &mut HashMap<String, String>,
    stop: &mut StopSignals,
) -> Result<(), DemoError> {
    loop {
        tokio::select! {
            _ = stop.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // A backend drained by hand may go; the LB may not.
        if let Some(status) = kids[0].exited() {
            return Err(DemoError::ChildExited {
                name: kids[0].name.clone(),
                status,
            });
        }
        for k in kids.iter_mut().skip(1) {
            if let Some(status) = k.exited()
                && ids.remove(&k.name).is_some()
            {
                eprintln!("[demo] {} exited ({status})", k.name);
            }
        }
    }
}

#[cfg(test)]
mod tests;
