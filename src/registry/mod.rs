//! The LB's in-memory registry: entries keyed by service and id, their
//! leases and health, and each service's routable set published to the
//! proxy.
//!
//! | file | owns |
//! | --- | --- |
//! | `fence` | what registration accepts: id and service rules, fields, the address fence |
//! | `table` | the entry table: by service, by id, by address |
//! | `verdict` | the pure health verdict: one check result → the next state |
//! | `checks` | targets for the health loop and applying their results |
//! | `eject` | passive ejection after failures on live traffic |
//! | `publish` | per-service slots, the dirty set, building [`Routable`](crate::registry::Routable) |
//! | `views` | `/registry`, `/services`, per-state counts |
//!
//! Writers (registration, check results, sweeps) take a short lock on the
//! table. The request path never does: it reads a service's [`Routable`](crate::registry::Routable)
//! through its [`Slot`](crate::registry::Slot), rebuilt only when that service's routability
//! changes. The registry announces what changed ([`Change`](crate::registry::Change)) to its
//! subscribers (the health loop, the LB's publisher), so every source of
//! entries gets checks and publication without remembering to ask.

mod checks;
mod eject;
mod fence;
mod publish;
mod routable;
mod table;
mod verdict;
mod views;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc};

pub use checks::{CheckResult, Target};
pub use fence::{Field, Policy, RegisterError, Valid, validate_id, validate_name};
pub use publish::Slot;
pub use routable::{LATENCY_HALF_LIFE, Routable, Upstream, digest};
pub use verdict::{Health, Observation, Thresholds};

use crate::config::ServiceSpecs;
use crate::protocol::{BackendState, RegisterResponse};
use table::{Entry, Table};

/// What changed in the registry, for subscribers.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new or replaced entry: check it now, then every interval.
    Added(Target),
    /// An entry left (deleted, drained, expired, replaced or evicted).
    Removed(Arc<Upstream>),
}

/// Whether a registration created or renewed an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Renewed,
}

/// The result of [`Registry::register`].
#[derive(Debug, Clone)]
pub struct Registered {
    pub outcome: Outcome,
    pub response: RegisterResponse,
}

/// What a DELETE did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Gone at once: nothing was in flight.
    Removed,
    /// Out of selection now; removed once its in-flight requests end.
    Draining,
    /// No such entry.
    Unknown,
}

/// The registry. One per LB process, shared through `Arc`.
pub struct Registry {
    policy: Policy,
    thresholds: Thresholds,
    /// Every service's settings, resolved once from the config.
    specs: ServiceSpecs,
    table: RwLock<Table>,
    slots: RwLock<HashMap<Arc<str>, Arc<Slot>>>,
    /// Services kept (with a slot) even without entries: the default one
    /// and those that routes or `services:` name.
    pinned: RwLock<HashSet<Arc<str>>>,
    /// Services whose routable set must be rebuilt.
    dirty: Mutex<HashSet<Arc<str>>>,
    wake: Notify,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change>>>,
    next_generation: AtomicU64,
    last_created: Mutex<Option<Instant>>,
}

impl Registry {
    pub fn new(policy: Policy, thresholds: Thresholds, specs: ServiceSpecs) -> Self {
        let registry = Self {
            policy,
            thresholds,
            specs,
            table: RwLock::new(Table::default()),
            slots: RwLock::new(HashMap::new()),
            pinned: RwLock::new(HashSet::new()),
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            subscribers: Mutex::new(Vec::new()),
            next_generation: AtomicU64::new(1),
            last_created: Mutex::new(None),
        };
        let configured: Vec<String> = registry.specs.by_name.keys().cloned().collect();
        registry.pin(configured.iter().map(String::as_str));
        registry
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Changes from now on; subscribe before entries arrive to see them all.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().push(tx);
        rx
    }

    fn emit(&self, changes: impl IntoIterator<Item = Change>) {
        let mut subs = self.subscribers.lock();
        for c in changes {
            subs.retain(|s| s.send(c.clone()).is_ok());
        }
    }

    /// Emit removals the table recorded, after its lock is released.
    fn emit_removed(&self) {
        let removed = self.table.write().take_removed();
        if !removed.is_empty() {
            self.emit(removed.into_iter().map(Change::Removed));
        }
    }

    /// Number of registered entries, every service.
    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Create or renew. A changed address or metrics port for a known id
    /// replaces the entry (it is checked again before it takes traffic); a
    /// new id claiming an address another id of the service holds evicts
    /// the older one, since pod IPs are reused.
    pub fn register(&self, v: Valid, now: Instant) -> Result<Registered, RegisterError> {
        let lease_expires = now + self.policy.lease_ttl;
        let mut table = self.table.write();
        if let Some(e) = table.get_mut(&v.service, &v.id)
            && e.addr == v.addr
            && e.metrics_port == v.metrics_port
            && e.upstream.protocol == v.protocol
        {
            e.lease_expires = lease_expires;
            let reweighed = e.weight != v.weight && e.routable();
            e.weight = v.weight;
            // A draining entry that announces again is back, through its
            // checks (they never stopped).
            let back = e.health.state == BackendState::Draining;
            if back {
                e.health = Health::default();
                e.draining_since = None;
            }
            let response = self.response(e, v.named_service);
            drop(table);
            if reweighed || back {
                self.mark_dirty(&v.service);
            }
            return Ok(Registered {
                outcome: Outcome::Renewed,
                response,
            });
        }
        let replacing = table.get(&v.service, &v.id).is_some();
        if !replacing && table.len() >= self.policy.max_backends {
            return Err(RegisterError::Full(table.len()));
        }
        // Pod IP reuse: an address belongs to one id at a time.
        let holder = table
            .holder(&v.service, &v.addr)
            .filter(|h| *h != v.id)
            .map(String::from);
        if let Some(old) = &holder {
            tracing::info!(id = %old, new_id = %v.id, address = %v.addr, "address taken over by a new id");
            table.remove(&v.service, old);
        }
        let entry = self.new_entry(&v, lease_expires);
        if !replacing {
            *self.last_created.lock() = Some(now);
        }
        let target = self.target_of(&entry);
        let response = self.response(&entry, v.named_service);
        let replaced = table.insert(entry).is_some() || holder.is_some();
        drop(table);
        if replaced {
            self.mark_dirty(&v.service);
        }
        self.emit_removed();
        self.emit([Change::Added(target)]);
        let outcome = if replacing {
            Outcome::Renewed
        } else {
            Outcome::Created
        };
        Ok(Registered { outcome, response })
    }

    fn new_entry(&self, v: &Valid, lease_expires: Instant) -> Entry {
        Entry {
            id: v.id.clone(),
            service: Arc::clone(&v.service),
            addr: v.addr,
            metrics_port: v.metrics_port,
            weight: v.weight,
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            lease_expires,
            health: Health::default(),
            last_check: None,
            last_error: Some("not checked yet".into()),
            vitals: None,
            ejected_until: None,
            eject_reason: None,
            ejections: 0,
            last_ejected: None,
            draining_since: None,
            upstream: Arc::new(Upstream::new(&v.service, &v.id, v.addr).with_protocol(v.protocol)),
        }
    }

    fn response(&self, e: &Entry, named_service: bool) -> RegisterResponse {
        RegisterResponse {
            id: e.id.clone(),
            address: e.addr.to_string(),
            metrics_port: e.metrics_port,
            weight: e.weight,
            state: e.health.state,
            service: named_service.then(|| e.service.to_string()),
            lease_ttl_seconds: self.policy.lease_ttl.as_secs(),
            next_announce_seconds: next_announce(&e.id, self.policy.lease_ttl),
        }
    }

    /// The traffic address registered for `id` in `service`.
    pub fn address_of(&self, service: &str, id: &str) -> Option<SocketAddr> {
        self.table.read().get(service, id).map(|e| e.addr)
    }

    /// Whether an entry of `service` holds `addr` now.
    pub fn holds(&self, service: &str, addr: &SocketAddr) -> bool {
        self.table.read().holder(service, addr).is_some()
    }

    /// DELETE: out of selection at once; the entry itself stays, draining,
    /// until the requests this LB has in flight to it end.
    pub fn deregister(&self, service: &str, id: &str, now: Instant) -> Removal {
        let mut table = self.table.write();
        let Some(e) = table.get_mut(service, id) else {
            return Removal::Unknown;
        };
        let removal = if e.upstream.in_flight.load(Ordering::Relaxed) == 0 {
            table.remove(service, id);
            Removal::Removed
        } else {
            e.health.state = BackendState::Draining;
            e.draining_since.get_or_insert(now);
            e.upstream.withdraw(true);
            Removal::Draining
        };
        drop(table);
        self.mark_dirty(&Arc::from(service));
        self.emit_removed();
        removal
    }

    /// Remove draining entries whose requests ended, or that drained for
    /// longer than `max`; returns their ids.
    pub fn finish_drains(&self, now: Instant, max: Duration) -> Vec<String> {
        self.remove_where(|e| {
            e.draining_since.is_some_and(|t| {
                e.upstream.in_flight.load(Ordering::Relaxed) == 0
                    || now.saturating_duration_since(t) >= max
            })
        })
    }

    /// Drop entries whose lease ran out; returns their ids.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        self.remove_where(|e| e.lease_expires <= now)
    }

    /// Remove every entry matching `due` (re-checked under the write lock).
    fn remove_where(&self, due: impl Fn(&Entry) -> bool) -> Vec<String> {
        let found: Vec<(Arc<str>, String)> = self
            .table
            .read()
            .entries()
            .filter(|e| due(e))
            .map(|e| (Arc::clone(&e.service), e.id.clone()))
            .collect();
        if found.is_empty() {
            return Vec::new();
        }
        let mut table = self.table.write();
        let mut gone = Vec::with_capacity(found.len());
        for (service, id) in found {
            if table.get(&service, &id).is_some_and(&due) {
                table.remove(&service, &id);
                self.mark_dirty(&service);
                gone.push(id);
            }
        }
        drop(table);
        self.emit_removed();
        gone
    }

    /// The latest time an entry was created, for the readiness latch.
    pub fn last_created(&self) -> Option<Instant> {
        *self.last_created.lock()
    }

    /// Whether every known entry has had its first check.
    pub fn all_checked(&self) -> bool {
        self.table.read().entries().all(|e| e.health.checked)
    }
}

/// When the agent should announce next: a third of the lease, so two
/// heartbeats can be lost before expiry, spread over 80–100% of that by a
/// hash of the id so a fleet restarted together does not stay in lockstep.
pub fn next_announce(id: &str, lease_ttl: Duration) -> u64 {
    let base = lease_ttl.as_secs_f64() / 3.0;
    let mut h = fnv::FnvHasher::default();
    h.write(id.as_bytes());
    let frac = (h.finish() % 1000) as f64 / 1000.0;
    (base * (0.8 + 0.2 * frac)).max(1.0) as u64
}
