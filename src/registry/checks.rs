//! The registry's side of health checking: what to probe next for an
//! entry ([`Target`]) and applying a result through the pure verdict.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::Registry;
use super::table::Entry;
use super::verdict::Observation;
use crate::config::CheckSpec;
use crate::protocol::{BackendState, Vitals};

/// The outcome of one health check.
#[derive(Debug, Clone)]
pub enum CheckResult {
    /// 2xx with vitals saying `"ready": true`.
    Ready(Vitals),
    /// 2xx with vitals saying `"ready": false`.
    NotReady(Vitals),
    /// Unreachable, timeout, non-2xx or bad JSON.
    Failed(String),
    /// The vitals carry another id: this address is someone else now.
    Stranger(String),
}

impl CheckResult {
    /// What the verdict needs of it.
    pub fn observation(&self) -> Observation {
        match self {
            Self::Ready(_) => Observation::Ready,
            Self::NotReady(_) => Observation::NotReady,
            Self::Failed(_) => Observation::Failed,
            Self::Stranger(_) => Observation::Stranger,
        }
    }

    /// Why the entry is out, if it is.
    pub fn error(&self) -> Option<String> {
        match self {
            Self::Failed(e) | Self::Stranger(e) => Some(e.clone()),
            Self::NotReady(_) => Some("vitals say ready=false".into()),
            Self::Ready(_) => None,
        }
    }
}

/// What the health checks should probe next for one entry.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: Arc<str>,
    pub id: String,
    pub generation: u64,
    pub vitals_addr: SocketAddr,
    /// Checks failed in a row while out of the pool (0 for a new entry or
    /// one still in it): the check lane and the backoff. A backend in the
    /// pool keeps the answering lane through its failures, so it leaves
    /// the pool on time when it dies.
    pub failing: u32,
    /// Checked at least once.
    pub checked: bool,
    pub check: Arc<CheckSpec>,
}

impl Registry {
    pub(super) fn target_of(&self, e: &Entry) -> Target {
        let out = e.health.checked && e.health.state == BackendState::Unhealthy;
        Target {
            service: Arc::clone(&e.service),
            id: e.id.clone(),
            generation: e.generation,
            vitals_addr: SocketAddr::new(e.addr.ip(), e.metrics_port),
            failing: if out { e.health.fails } else { 0 },
            checked: e.health.checked,
            check: Arc::clone(&self.specs.of(&e.service).check),
        }
    }

    /// The target to probe for an entry, or None once it is gone or
    /// replaced (its checks then stop).
    pub fn target(&self, service: &str, id: &str, generation: u64) -> Option<Target> {
        let table = self.table.read();
        let e = table
            .get(service, id)
            .filter(|e| e.generation == generation)?;
        Some(self.target_of(e))
    }

    /// Apply a check result. Returns the state change, if any, for logging.
    pub fn apply_check(
        &self,
        target: &Target,
        result: CheckResult,
    ) -> Option<(BackendState, BackendState)> {
        let mut table = self.table.write();
        let e = table
            .get_mut(&target.service, &target.id)
            .filter(|e| e.generation == target.generation)?;
        let before = e.health.state;
        let was_routable = e.routable();
        e.last_check = Some(SystemTime::now());
        e.health = e.health.observe(result.observation(), self.thresholds);
        e.last_error = result.error();
        match result {
            CheckResult::Ready(v) => {
                e.upstream.reported_load.store(
                    u64::from(v.requests_in_progress) + u64::from(v.backoff_requests),
                    Ordering::Relaxed,
                );
                let gpu = (v.gpu_usage.clamp(0.0, 100.0) * 100.0) as u32;
                e.upstream.gpu_usage.store(gpu, Ordering::Relaxed);
                e.vitals = Some(v);
                if e.health.state != BackendState::Draining {
                    e.upstream.withdraw(false);
                }
            }
            CheckResult::NotReady(v) => {
                e.vitals = Some(v);
                // Out before the next pick, not the next publication.
                e.upstream.withdraw(true);
            }
            CheckResult::Failed(_) | CheckResult::Stranger(_) => {}
        }
        let after = e.health.state;
        let flipped = was_routable != e.routable();
        drop(table);
        if flipped {
            self.mark_dirty(&target.service);
        }
        (before != after).then_some((before, after))
    }
}
