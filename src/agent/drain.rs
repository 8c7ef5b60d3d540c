//! Graceful drain, and `roster agent drain` (the preStop hook).
//!
//! A drain starts on SIGTERM/SIGINT, `POST /drain` from a local caller, or
//! [`AgentHandle::start_drain`](super::AgentHandle::start_drain):
//! 1. `ready` is false at once in the vitals;
//! 2. announcing stops and `DELETE /register/{id}` goes to every LB address
//!    (retried until it is confirmed or the drain period ends);
//! 3. the vitals keep being served (`ready: false`) so LBs that did not
//!    hear the DELETE take the backend out at their next check;
//! 4. it ends after `agent.drain_period`, or sooner once every LB confirmed
//!    (204/404) **and** not-ready has been served for one LB health interval
//!    (`health_check.interval`, default 5 s);
//! 5. the vitals server answers its pending `/drain` callers and stops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{AgentError, Shared};
use crate::config::parse_duration;

/// The outcome of a drain, also the `POST /drain` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// LB addresses that confirmed the removal (204 or 404).
    pub confirmed: Vec<String>,
    /// LB addresses that did not answer in time; their lease expires, and
    /// their checks already see `ready: false`.
    pub unconfirmed: Vec<String>,
    /// How long the drain took.
    pub seconds: f64,
}

#[derive(Debug, Clone)]
enum Phase {
    Running,
    Draining {
        since: Instant,
    },
    /// Done; the vitals server is answering its last callers.
    Drained(Arc<DrainReport>),
    /// The vitals server has stopped too.
    Finished(Arc<DrainReport>),
}

/// Where the agent stands; shared by everything that waits on the drain.
pub(crate) struct DrainState {
    draining: AtomicBool,
    phase: watch::Sender<Phase>,
}

impl DrainState {
    pub fn new() -> Self {
        Self {
            draining: AtomicBool::new(false),
            phase: watch::Sender::new(Phase::Running),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start draining; idempotent.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.phase.send_if_modified(|p| {
            if matches!(p, Phase::Running) {
                *p = Phase::Draining {
                    since: Instant::now(),
                };
                true
            } else {
                false
            }
        });
    }

    /// Resolves once a drain has started.
    pub fn draining(&self) -> impl Future<Output = ()> + use<> {
        let mut rx = self.phase.subscribe();
        async move {
            let _ = rx.wait_for(|p| !matches!(p, Phase::Running)).await;
        }
    }

    /// When the drain must end (start + `period`).
    pub fn deadline(&self, period: Duration) -> Instant {
        match &*self.phase.borrow() {
            Phase::Draining { since } => *since + period,
            _ => Instant::now() + period,
        }
    }

    /// Resolves with the report once the drain is done.
    pub async fn done(&self) -> DrainReport {
        let mut rx = self.phase.subscribe();
        let r = rx
            .wait_for(|p| matches!(p, Phase::Drained(_) | Phase::Finished(_)))
            .await;
        match r.as_deref() {
            Ok(Phase::Drained(r) | Phase::Finished(r)) => (**r).clone(),
            _ => DrainReport::default(),
        }
    }

    /// Resolves with the report once the vitals server has stopped too.
    pub async fn finished(&self) -> DrainReport {
        let mut rx = self.phase.subscribe();
        let r = rx.wait_for(|p| matches!(p, Phase::Finished(_))).await;
        match r.as_deref() {
            Ok(Phase::Finished(r)) => (**r).clone(),
            _ => DrainReport::default(),
        }
    }

    /// The vitals server has stopped.
    pub fn set_finished(&self) {
        self.phase.send_modify(|p| {
            let report = match p {
                Phase::Drained(r) | Phase::Finished(r) => Arc::clone(r),
                _ => Arc::new(DrainReport::default()),
            };
            *p = Phase::Finished(report);
        });
    }
}

/// Waits for a drain, runs it, and publishes the report.
pub(crate) async fn coordinate(
    sh: Arc<Shared>,
    mut announcer: JoinHandle<Vec<(SocketAddr, bool)>>,
) {
    sh.drain.draining().await;
    let period = sh.settings.drain_period;
    let deadline = sh.drain.deadline(period);
    let start = deadline - period;
    tracing::info!(
        ?period,
        "draining: ready=false, deregistering from every LB"
    );
    // The announcer gives up on each LB at the deadline; the margin only
    // covers a task stuck past it.
    let results = match tokio::time::timeout_at(
        (deadline + Duration::from_millis(500)).into(),
        &mut announcer,
    )
    .await
    {
        Ok(Ok(r)) => r,
        _ => {
            announcer.abort();
            Vec::new()
        }
    };
    let (ok, late): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, c)| *c);
    let until = if late.is_empty() {
        // Every LB let go; give the ones we do not know of one check of
        // `ready: false`.
        (start + sh.settings.lb_health_interval).min(deadline)
    } else {
        tracing::warn!(
            unconfirmed = ?late.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            "some LBs did not confirm: serving not-ready until the drain period ends"
        );
        deadline
    };
    tokio::time::sleep_until(until.into()).await;
    let report = DrainReport {
        confirmed: ok.iter().map(|(a, _)| a.to_string()).collect(),
        unconfirmed: late.iter().map(|(a, _)| a.to_string()).collect(),
        seconds: (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    };
    sh.drain
        .phase
        .send_replace(Phase::Drained(Arc::new(report)));
}

/// `roster agent drain` flags: the agent's own (its vitals port and drain
/// period say where and how long), plus a timeout.
#[derive(Debug, Clone, Default, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub overlay: crate::config::Overlay<crate::config::AgentSections>,
    /// Give up after this long (default: the drain period plus 30 s).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// Where `roster agent drain` sends its request, and how long it waits.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainTarget {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl DrainArgs {
    pub fn resolve(&self) -> Result<DrainTarget, AgentError> {
        let c = self.overlay.load()?;
        let ip: IpAddr = c.agent.metrics_listen.trim().parse().map_err(|_| {
            super::invalid(
                "agent.metrics_listen",
                format!("{:?} is not an IP", c.agent.metrics_listen),
            )
        })?;
        let ip = match ip {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok(DrainTarget {
            addr: SocketAddr::new(ip, c.discovery.metrics_port),
            timeout: self
                .timeout
                .unwrap_or(c.agent.drain_period + Duration::from_secs(30)),
        })
    }
}

/// Ask the local agent to drain; returns when it is done.
pub async fn request(target: &DrainTarget) -> Result<DrainReport, AgentError> {
    let url = format!("http://{}/drain", target.addr);
    let client = crate::fetch::client(crate::fetch::Bounds {
        connect_timeout: Duration::from_secs(2),
        ..crate::fetch::Bounds::timeout(target.timeout)
    })
    .map_err(|e| AgentError::Http(e.to_string()))?;
    let resp = client
        .post(&url)
        .send()
        .await
        .map_err(|e| AgentError::NoAgent {
            url: url.clone(),
            message: crate::fetch::root_cause(&e),
        })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| AgentError::NoAgent {
        url: url.clone(),
        message: crate::fetch::root_cause(&e),
    })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<crate::protocol::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("status {status}"));
        return Err(AgentError::DrainRefused { url, message });
    }
    serde_json::from_slice(&body).map_err(|e| AgentError::DrainRefused {
        url,
        message: format!("unexpected answer: {e}"),
    })
}

/// Only callers on this host may drain: loopback, or our own address.
pub fn is_local(remote: IpAddr, local: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (remote, local) = (canon(remote), canon(local));
    remote.is_loopback() || remote == local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_callers() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_local(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(is_local(ip("127.0.0.9"), ip("10.0.0.5")));
        assert!(is_local(ip("::1"), ip("::")));
        assert!(is_local(ip("::ffff:127.0.0.1"), ip("::ffff:10.0.0.5")));
        assert!(is_local(ip("10.0.0.5"), ip("10.0.0.5")), "own pod IP");
        assert!(!is_local(ip("10.0.0.6"), ip("10.0.0.5")));
        assert!(!is_local(ip("::ffff:10.0.0.6"), ip("10.0.0.5")));
    }

    fn drain_args(flags: &[&str]) -> DrainArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            drain: DrainArgs,
        }
        let argv = std::iter::once("drain").chain(flags.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().drain
    }

    #[test]
    fn drain_target_defaults_to_loopback() {
        let t = drain_args(&["--metrics-port", "9191"]).resolve().unwrap();
        assert_eq!(t.addr, "127.0.0.1:9191".parse().unwrap());
        assert_eq!(t.timeout, Duration::from_secs(40));
        let a = drain_args(&["--metrics-listen", "127.0.0.7", "--timeout", "3s"]);
        let t = a.resolve().unwrap();
        assert_eq!(t.addr, "127.0.0.7:9090".parse().unwrap());
        assert_eq!(t.timeout, Duration::from_secs(3));
        let a = drain_args(&["--metrics-listen", "::"]);
        assert_eq!(a.resolve().unwrap().addr, "[::1]:9090".parse().unwrap());
    }

    #[tokio::test]
    async fn phases_and_waiters() {
        let d = Arc::new(DrainState::new());
        assert!(!d.is_draining());
        let waiter = tokio::spawn({
            let d = Arc::clone(&d);
            async move { d.draining().await }
        });
        d.start();
        d.start();
        assert!(d.is_draining());
        waiter.await.unwrap();
        let done = tokio::spawn({
            let d = Arc::clone(&d);
            async move { d.done().await }
        });
        let report = DrainReport {
            confirmed: vec!["127.0.0.1:8080".into()],
            ..Default::default()
        };
        d.phase
            .send_replace(Phase::Drained(Arc::new(report.clone())));
        assert_eq!(done.await.unwrap(), report);
        d.set_finished();
        assert_eq!(d.finished().await, report);
    }
}
