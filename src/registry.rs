//! The LB's in-memory registry: entries keyed by id, their leases and
//! states, and the routable set published to the proxy.
//!
//! Writers (registration, health results, lease sweeps) take a short lock on
//! the entry map. The request path never does: it reads the [`Routable`]
//! snapshot through an `ArcSwap`, rebuilt only when routability changes.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use parking_lot::RwLock;
use pingora::lb::Backend;
use tokio::sync::Notify;

use crate::protocol::{
    BackendState, EntryView, MAX_WEIGHT, RegisterResponse, Registration, RegistryView, Vitals,
};

/// Why a registration was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// A field is malformed or out of range (422).
    #[error("{0}")]
    Invalid(String),
    /// The address is outside `registration.allowed_networks` (403).
    #[error("{0}")]
    Forbidden(String),
    /// `registration.max_backends` reached (429).
    #[error("registry is full: {0} backends registered (registration.max_backends)")]
    Full(usize),
}

impl RegisterError {
    /// Label for `roster_lb_registrations_total{result}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Forbidden(_) => "forbidden",
            Self::Full(_) => "full",
        }
    }
}

/// A registration that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid {
    pub id: String,
    pub addr: SocketAddr,
    pub metrics_port: u16,
    pub weight: u32,
    /// The registration's `protocol`, carried to [`Upstream::protocol`].
    pub protocol: Option<crate::protocol::Protocol>,
}

/// What registration accepts: the address fence and the size cap.
#[derive(Debug, Clone)]
pub struct Policy {
    pub allowed_networks: Vec<IpNet>,
    pub max_backends: usize,
    pub lease_ttl: Duration,
}

/// Whether `ip` is one of the classes refused unless a network lists it.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_special(IpAddr::V4(v4)))
        }
    }
}

/// `id`: 1–253 chars of `[A-Za-z0-9._-]`.
pub fn validate_id(id: &str) -> Result<(), RegisterError> {
    if id.is_empty() || id.len() > 253 {
        return Err(RegisterError::Invalid(format!(
            "id: must be 1-253 characters, got {}",
            id.chars().count()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(RegisterError::Invalid(format!(
            "id: character {c:?} not allowed (use A-Z a-z 0-9 . _ -)"
        )));
    }
    Ok(())
}

impl Policy {
    /// Check a registration against the format rules and the fence.
    pub fn validate(&self, reg: &Registration) -> Result<Valid, RegisterError> {
        validate_id(&reg.id)?;
        let addr: SocketAddr = reg.address.parse().map_err(|_| {
            RegisterError::Invalid(format!(
                "address: {:?} is not IP:port (use [v6]:port for IPv6)",
                truncate(&reg.address, 64)
            ))
        })?;
        if addr.port() == 0 {
            return Err(RegisterError::Invalid(
                "address: port must be 1-65535".into(),
            ));
        }
        if reg.metrics_port == 0 {
            return Err(RegisterError::Invalid(
                "metrics_port: must be 1-65535".into(),
            ));
        }
        if reg.weight == 0 || reg.weight > MAX_WEIGHT {
            return Err(RegisterError::Invalid(format!(
                "weight: must be 1-{MAX_WEIGHT}, got {}",
                reg.weight
            )));
        }
        let ip = addr.ip().to_canonical();
        let listed = self.allowed_networks.iter().find(|n| n.contains(&ip));
        match listed {
            None => {
                return Err(RegisterError::Forbidden(format!(
                    "address: {ip} is not in registration.allowed_networks"
                )));
            }
            // Loopback, link-local (cloud metadata), multicast... only when a
            // listed network names that class explicitly, not via a wide CIDR.
            Some(_) if is_special(ip) => {
                let explicit = self
                    .allowed_networks
                    .iter()
                    .any(|n| n.contains(&ip) && is_special(n.network()) && n.prefix_len() > 0);
                if !explicit {
                    return Err(RegisterError::Forbidden(format!(
                        "address: {ip} is a loopback/link-local/multicast/unspecified address; \
                         list its network in registration.allowed_networks to allow it"
                    )));
                }
            }
            Some(_) => {}
        }
        Ok(Valid {
            id: reg.id.clone(),
            addr: SocketAddr::new(ip, addr.port()),
            metrics_port: reg.metrics_port,
            weight: reg.weight,
            protocol: reg.protocol,
        })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Per-backend counters on the request path, shared by every snapshot that
/// contains the backend.
#[derive(Debug)]
pub struct Upstream {
    pub id: String,
    pub addr: SocketAddr,
    /// Address as a metric label, formatted once.
    pub label: String,
    /// Requests this LB has in flight to the backend.
    pub in_flight: AtomicU64,
    /// Load the backend reported in its vitals (requests + backoff).
    pub reported_load: AtomicU64,
    /// Consecutive failures seen on live traffic (connect errors, 5xx).
    pub failures: std::sync::atomic::AtomicU32,
    /// This backend's request counters.
    pub requests: crate::telemetry::BackendRequests,
    /// Set the moment the entry leaves or says not ready, before the next
    /// publication: the request path skips it at once (read-your-writes for
    /// DELETE, expiry and `ready: false`) while rebuilds stay coalesced.
    withdrawn: AtomicBool,
    /// What the backend registered as speaking; None = `lb.upstream_protocol`.
    pub protocol: Option<crate::protocol::Protocol>,
}

impl Upstream {
    pub fn new(id: &str, addr: SocketAddr) -> Self {
        Self {
            id: id.into(),
            addr,
            label: addr.to_string(),
            in_flight: AtomicU64::new(0),
            reported_load: AtomicU64::new(0),
            failures: Default::default(),
            requests: Default::default(),
            withdrawn: AtomicBool::new(false),
            protocol: None,
        }
    }

    /// The backend's registered protocol.
    pub fn with_protocol(mut self, protocol: Option<crate::protocol::Protocol>) -> Self {
        self.protocol = protocol;
        self
    }

    /// Still in the registry and not withdrawn since the last publication.
    pub fn live(&self) -> bool {
        !self.withdrawn.load(Ordering::Acquire)
    }

    fn withdraw(&self, yes: bool) {
        self.withdrawn.store(yes, Ordering::Release);
    }
}

/// The routable set, published whole on every change.
#[derive(Debug, Default)]
pub struct Routable {
    /// pingora's view of the pool, fed through `ServiceDiscovery`.
    pub backends: BTreeSet<Backend>,
    /// Request-path lookup from a selected address to its counters.
    pub upstreams: HashMap<SocketAddr, Arc<Upstream>>,
    /// Sorted addresses, the seed's `/backends` answer as published (see
    /// [`Routable::live`] for what is routable now).
    pub addresses: Vec<String>,
    /// The upstreams of `addresses`, in the same order.
    members: Vec<Arc<Upstream>>,
    /// FNV-1a of the sorted addresses, 32 bits so it is exact as a gauge.
    pub digest: u32,
    /// Too few healthy backends: routing to every verified, ready one.
    pub panic: bool,
}

impl Routable {
    /// The addresses traffic goes to now and their digest: the published
    /// set minus what was withdrawn since (O(n); reads only).
    pub fn live(&self) -> (Vec<&str>, u32) {
        let live: Vec<&str> = self
            .addresses
            .iter()
            .zip(&self.members)
            .filter(|(_, u)| u.live())
            .map(|(a, _)| a.as_str())
            .collect();
        let digest = if live.len() == self.addresses.len() {
            self.digest
        } else {
            digest(live.iter().copied())
        };
        (live, digest)
    }

    /// Whether `addr` may be picked now.
    pub fn usable(&self, addr: &SocketAddr) -> Option<&Arc<Upstream>> {
        self.upstreams.get(addr).filter(|u| u.live())
    }
}

/// FNV-1a of sorted addresses, folded to 32 bits so it is exact as a gauge.
fn digest<'a>(sorted: impl Iterator<Item = &'a str>) -> u32 {
    let mut h = fnv::FnvHasher::default();
    for a in sorted {
        h.write(a.as_bytes());
        h.write_u8(b'\n');
    }
    let full = h.finish();
    (full ^ (full >> 32)) as u32
}

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

/// What the health checks should probe next for one entry.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub generation: u64,
    pub vitals_addr: SocketAddr,
    /// Checks failed in a row while out of the pool (0 for a new entry or
    /// one still in it): the check lane and the backoff.
    pub failing: u32,
    /// Checked at least once.
    pub checked: bool,
}

struct Entry {
    id: String,
    addr: SocketAddr,
    metrics_port: u16,
    weight: u32,
    /// Bumped when the entry is replaced, so stale check results are dropped.
    generation: u64,
    lease_expires: Instant,
    state: BackendState,
    checked: bool,
    fails: u32,
    successes: u32,
    last_check: Option<SystemTime>,
    last_error: Option<String>,
    vitals: Option<Vitals>,
    /// Passed a check as itself at least once, and no stranger since:
    /// only such entries may be used in panic mode.
    verified: bool,
    ejected_until: Option<Instant>,
    eject_reason: Option<String>,
    /// Ejections in a row; the next one lasts `ejection_time × 2^(n-1)`.
    ejections: u32,
    last_ejected: Option<Instant>,
    upstream: Arc<Upstream>,
}

impl Entry {
    fn routable(&self) -> bool {
        self.state == BackendState::Healthy && self.ejected_until.is_none()
    }

    /// Usable when panic mode routes around the health verdicts: never a
    /// backend that said not-ready, is draining, or was never itself.
    fn panic_usable(&self) -> bool {
        self.verified && matches!(self.state, BackendState::Healthy | BackendState::Unhealthy)
    }
}

/// Entries by id, with an index by address (an address belongs to one id).
#[derive(Default)]
struct Entries {
    by_id: HashMap<String, Entry>,
    by_addr: HashMap<SocketAddr, String>,
    /// Upstreams removed since the last [`Registry::forget_removed`].
    removed: Vec<Arc<Upstream>>,
}

impl Entries {
    fn get(&self, id: &str) -> Option<&Entry> {
        self.by_id.get(id)
    }

    /// Callers never change `addr` through this (see `insert`).
    fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.by_id.get_mut(id)
    }

    fn contains_key(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.by_id.values()
    }

    /// The id holding `addr`, if any.
    fn holder(&self, addr: &SocketAddr) -> Option<&str> {
        self.by_addr.get(addr).map(String::as_str)
    }

    fn insert(&mut self, e: Entry) -> Option<Entry> {
        let old = self.remove(&e.id);
        self.by_addr.insert(e.addr, e.id.clone());
        self.by_id.insert(e.id.clone(), e);
        old
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.by_id.remove(id)?;
        if self.by_addr.get(&e.addr).is_some_and(|h| h == id) {
            self.by_addr.remove(&e.addr);
        }
        e.upstream.withdraw(true);
        self.removed.push(Arc::clone(&e.upstream));
        Some(e)
    }
}

/// Result of [`Registry::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Renewed,
}

/// Health thresholds the registry applies to check results.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub unhealthy: u32,
    pub healthy: u32,
    /// Healthy percent below which panic mode starts; 0 disables.
    pub panic_percent: f64,
}

/// The registry. One per LB process, shared through `Arc`.
pub struct Registry {
    policy: Policy,
    thresholds: Thresholds,
    entries: RwLock<Entries>,
    routable: ArcSwap<Routable>,
    /// Woken when the routable set must be rebuilt.
    dirty: Notify,
    /// Source of entry generations.
    next_generation: AtomicU64,
    /// Latched once every known entry has had a first check.
    first_round_done: AtomicBool,
    started: Instant,
    warmup: Duration,
    /// No newcomer for this long (with all checked) = stabilized.
    stable_after: Duration,
    last_created: parking_lot::Mutex<Option<Instant>>,
}

impl Registry {
    /// `warmup`: the longest an LB waits after start before calling itself
    /// ready; `stable_after`: how long without a newcomer (and with every
    /// entry checked) counts as stabilized sooner.
    pub fn new(
        policy: Policy,
        thresholds: Thresholds,
        warmup: Duration,
        stable_after: Duration,
    ) -> Self {
        Self {
            policy,
            thresholds,
            entries: RwLock::new(Entries::default()),
            routable: ArcSwap::from_pointee(Routable::default()),
            dirty: Notify::new(),
            next_generation: AtomicU64::new(1),
            first_round_done: AtomicBool::new(false),
            started: Instant::now(),
            warmup,
            stable_after,
            last_created: parking_lot::Mutex::new(None),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The current routable set (lock-free).
    pub fn routable(&self) -> arc_swap::Guard<Arc<Routable>> {
        self.routable.load()
    }

    /// Number of registered entries.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Create or renew. A changed address or metrics port for a known id
    /// replaces the entry (it is checked again before it takes traffic); a
    /// new id claiming an address another id holds evicts the older one,
    /// since pod IPs are reused.
    ///
    /// Returns the outcome and, for a new or replaced entry, the target the
    /// caller must schedule checks for.
    pub fn register(
        &self,
        v: Valid,
        now: Instant,
    ) -> Result<(Registered, RegisterResponse, Option<Target>), RegisterError> {
        let lease_expires = now + self.policy.lease_ttl;
        let mut entries = self.entries.write();
        if let Some(e) = entries.get_mut(&v.id)
            && e.addr == v.addr
            && e.metrics_port == v.metrics_port
            && e.upstream.protocol == v.protocol
        {
            e.lease_expires = lease_expires;
            let reweighed = e.weight != v.weight && e.routable();
            e.weight = v.weight;
            // A draining entry that announces again is back.
            if e.state == BackendState::Draining {
                e.state = BackendState::Unhealthy;
                e.checked = false;
            }
            let resp = self.response(e);
            drop(entries);
            if reweighed {
                self.dirty.notify_one();
            }
            return Ok((Registered::Renewed, resp, None));
        }
        let replacing = entries.contains_key(&v.id);
        if !replacing && entries.len() >= self.policy.max_backends {
            return Err(RegisterError::Full(entries.len()));
        }
        // Pod IP reuse: an address belongs to one id at a time.
        let holder = entries
            .holder(&v.addr)
            .filter(|h| *h != v.id)
            .map(String::from);
        let holder_removed = holder.is_some();
        if let Some(old) = holder {
            tracing::info!(id = %old, new_id = %v.id, address = %v.addr, "address taken over by a new id");
            entries.remove(&old);
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id: v.id.clone(),
            addr: v.addr,
            metrics_port: v.metrics_port,
            weight: v.weight,
            generation,
            lease_expires,
            state: BackendState::Unhealthy,
            checked: false,
            fails: 0,
            successes: 0,
            last_check: None,
            last_error: Some("not checked yet".into()),
            vitals: None,
            verified: false,
            ejected_until: None,
            eject_reason: None,
            ejections: 0,
            last_ejected: None,
            upstream: Arc::new(Upstream::new(&v.id, v.addr).with_protocol(v.protocol)),
        };
        if !replacing {
            *self.last_created.lock() = Some(now);
        }
        let target = Target {
            id: v.id.clone(),
            generation,
            vitals_addr: SocketAddr::new(v.addr.ip(), v.metrics_port),
            failing: 0,
            checked: false,
        };
        let resp = self.response(&entry);
        let replaced = entries.insert(entry).is_some() || holder_removed;
        drop(entries);
        if replaced {
            self.dirty.notify_one();
        }
        let outcome = if replacing {
            Registered::Renewed
        } else {
            Registered::Created
        };
        Ok((outcome, resp, Some(target)))
    }

    fn response(&self, e: &Entry) -> RegisterResponse {
        RegisterResponse {
            id: e.id.clone(),
            address: e.addr.to_string(),
            metrics_port: e.metrics_port,
            weight: e.weight,
            state: e.state,
            lease_ttl_seconds: self.policy.lease_ttl.as_secs(),
            next_announce_seconds: next_announce(&e.id, self.policy.lease_ttl),
        }
    }

    /// The traffic address registered for `id`.
    pub fn address_of(&self, id: &str) -> Option<SocketAddr> {
        self.entries.read().get(id).map(|e| e.addr)
    }

    /// Remove an entry now. Returns false for an unknown id.
    pub fn deregister(&self, id: &str) -> bool {
        let removed = self.entries.write().remove(id).is_some();
        if removed {
            self.dirty.notify_one();
        }
        removed
    }

    /// Call `forget` with the address label of every upstream removed since
    /// the last call whose address no entry holds now (a successor on the
    /// same address keeps the series).
    pub fn forget_removed(&self, forget: impl Fn(&str)) {
        let removed = std::mem::take(&mut self.entries.write().removed);
        if removed.is_empty() {
            return;
        }
        // Under the read lock, so no entry takes the address meanwhile.
        let entries = self.entries.read();
        for u in removed {
            if entries.holder(&u.addr).is_none() {
                forget(&u.label);
            }
        }
    }

    /// Drop entries whose lease ran out; returns their ids.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .entries
            .read()
            .values()
            .filter(|e| e.lease_expires <= now)
            .map(|e| e.id.clone())
            .collect();
        if expired.is_empty() {
            return expired;
        }
        let mut entries = self.entries.write();
        let mut gone = Vec::with_capacity(expired.len());
        for id in expired {
            // Re-check under the write lock: it may have been renewed since.
            if entries.get(&id).is_some_and(|e| e.lease_expires <= now) {
                entries.remove(&id);
                gone.push(id);
            }
        }
        drop(entries);
        if !gone.is_empty() {
            self.dirty.notify_one();
        }
        gone
    }

    /// The target to probe for `id`, or None once the entry is gone or
    /// replaced (its checks then stop).
    pub fn target(&self, id: &str, generation: u64) -> Option<Target> {
        let entries = self.entries.read();
        let e = entries.get(id).filter(|e| e.generation == generation)?;
        let out = e.checked && e.state == BackendState::Unhealthy;
        Some(Target {
            id: e.id.clone(),
            generation,
            vitals_addr: SocketAddr::new(e.addr.ip(), e.metrics_port),
            failing: if out { e.fails } else { 0 },
            checked: e.checked,
        })
    }

    /// Apply a check result. Returns the state change, if any, for logging.
    pub fn apply_check(
        &self,
        target: &Target,
        result: CheckResult,
    ) -> Option<(BackendState, BackendState)> {
        let mut entries = self.entries.write();
        let e = entries
            .get_mut(&target.id)
            .filter(|e| e.generation == target.generation)?;
        let before = e.state;
        let was_routable = e.routable();
        e.last_check = Some(SystemTime::now());
        let first = !e.checked;
        e.checked = true;
        match result {
            CheckResult::Ready(v) => {
                e.verified = true;
                e.fails = 0;
                e.successes = e.successes.saturating_add(1);
                e.last_error = None;
                e.upstream.reported_load.store(
                    u64::from(v.requests_in_progress) + u64::from(v.backoff_requests),
                    Ordering::Relaxed,
                );
                e.vitals = Some(v);
                e.upstream.withdraw(false);
                if e.state != BackendState::Draining
                    && (e.state == BackendState::Healthy
                        || e.successes >= self.thresholds.healthy
                        // A not-ready backend that is ready again has been
                        // reachable all along: no need to wait.
                        || e.state == BackendState::NotReady
                        || first)
                {
                    e.state = BackendState::Healthy;
                }
            }
            CheckResult::NotReady(v) => {
                e.fails = 0;
                e.successes = 0;
                e.last_error = Some("vitals say ready=false".into());
                e.vitals = Some(v);
                // Out before the next pick, not the next publication.
                e.upstream.withdraw(true);
                if e.state != BackendState::Draining {
                    e.state = BackendState::NotReady;
                }
            }
            CheckResult::Stranger(err) => {
                e.verified = false;
                e.successes = 0;
                e.fails = e.fails.saturating_add(1);
                e.last_error = Some(err);
                if e.state != BackendState::Draining {
                    e.state = BackendState::Unhealthy;
                }
            }
            CheckResult::Failed(err) => {
                e.successes = 0;
                e.fails = e.fails.saturating_add(1);
                e.last_error = Some(err);
                if e.state != BackendState::Draining
                    && (e.fails >= self.thresholds.unhealthy || e.state != BackendState::Healthy)
                {
                    e.state = BackendState::Unhealthy;
                }
            }
        }
        let after = e.state;
        let flipped = was_routable != e.routable();
        drop(entries);
        if flipped {
            self.dirty.notify_one();
        }
        (before != after).then_some((before, after))
    }

    /// Wait until the routable set needs rebuilding.
    pub async fn wait_dirty(&self) {
        self.dirty.notified().await
    }

    /// Rebuild and publish the routable set. O(n), only on change.
    pub fn publish(&self) -> Arc<Routable> {
        let entries = self.entries.read();
        let mut routable = Routable::default();
        let eligible = entries
            .values()
            .filter(|e| e.state != BackendState::Draining)
            .count();
        let healthy = entries.values().filter(|e| e.routable()).count();
        let pct = self.thresholds.panic_percent;
        routable.panic =
            pct > 0.0 && eligible > 0 && (healthy as f64) * 100.0 < pct * eligible as f64;
        let mut addrs: Vec<(SocketAddr, Arc<Upstream>)> = Vec::new();
        let chosen = entries.values().filter(|e| {
            if routable.panic {
                e.panic_usable()
            } else {
                e.routable()
            }
        });
        for e in chosen {
            routable.backends.insert(Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(e.addr),
                weight: e.weight as usize,
                ext: Default::default(),
            });
            routable.upstreams.insert(e.addr, Arc::clone(&e.upstream));
            addrs.push((e.addr, Arc::clone(&e.upstream)));
        }
        drop(entries);
        addrs.sort_unstable_by_key(|(a, _)| *a);
        routable.addresses = addrs.iter().map(|(a, _)| a.to_string()).collect();
        routable.members = addrs.into_iter().map(|(_, u)| u).collect();
        routable.digest = digest(routable.addresses.iter().map(String::as_str));
        let routable = Arc::new(routable);
        self.routable.store(Arc::clone(&routable));
        routable
    }

    /// Eject a backend after failures on live traffic, for
    /// `base × 2^(n-1)` (capped at `max`) where n counts ejections without
    /// a quiet spell of `2 × max` between them. Returns the length, or None
    /// when it is already ejected or was replaced meanwhile.
    pub fn eject(
        &self,
        upstream: &Arc<Upstream>,
        reason: String,
        now: Instant,
        base: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let mut entries = self.entries.write();
        let e = entries
            .get_mut(&upstream.id)
            .filter(|e| Arc::ptr_eq(&e.upstream, upstream) && e.ejected_until.is_none())?;
        if e.last_ejected
            .is_some_and(|t| now.saturating_duration_since(t) > max * 2)
        {
            e.ejections = 0;
        }
        e.ejections = e.ejections.saturating_add(1);
        let factor = 2u32.saturating_pow(e.ejections.saturating_sub(1).min(20));
        let length = base.saturating_mul(factor).min(max);
        e.ejected_until = Some(now + length);
        e.last_ejected = Some(now);
        e.eject_reason = Some(reason);
        drop(entries);
        self.dirty.notify_one();
        Some(length)
    }

    /// End ejections whose time is up; returns the ids released.
    pub fn release_ejections(&self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .entries
            .read()
            .values()
            .filter(|e| e.ejected_until.is_some_and(|t| t <= now))
            .map(|e| e.id.clone())
            .collect();
        if due.is_empty() {
            return due;
        }
        let mut entries = self.entries.write();
        for id in &due {
            if let Some(e) = entries.get_mut(id) {
                e.ejected_until = None;
                e.eject_reason = None;
                e.upstream.failures.store(0, Ordering::Relaxed);
            }
        }
        drop(entries);
        self.dirty.notify_one();
        due
    }

    /// Whether the LB has warmed up (latched): every known entry has had its
    /// first check, and either `warmup` has passed or the registry is stable.
    pub fn first_round_done(&self) -> bool {
        if self.first_round_done.load(Ordering::Relaxed) {
            return true;
        }
        self.maybe_latch_ready()
    }

    fn maybe_latch_ready(&self) -> bool {
        let entries = self.entries.read();
        let all_checked = entries.values().all(|e| e.checked);
        let empty = entries.is_empty();
        drop(entries);
        let ready = all_checked
            && (self.started.elapsed() >= self.warmup
                || (!empty
                    && self
                        .last_created
                        .lock()
                        .is_some_and(|t| t.elapsed() >= self.stable_after)));
        if ready {
            self.first_round_done.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// Entries per state, for the gauges.
    pub fn counts(&self) -> HashMap<BackendState, usize> {
        let mut counts = HashMap::new();
        for e in self.entries.read().values() {
            *counts.entry(e.state).or_default() += 1;
        }
        counts
    }

    /// The `/registry` document.
    pub fn view(&self, now: Instant) -> RegistryView {
        let routable = self.routable();
        let entries = self.entries.read();
        let mut backends: Vec<EntryView> = entries
            .values()
            .map(|e| EntryView {
                id: e.id.clone(),
                address: e.addr.to_string(),
                metrics_port: e.metrics_port,
                weight: e.weight,
                state: e.state,
                routable: routable.usable(&e.addr).is_some(),
                ejected: e.ejected_until.map(|t| {
                    format!(
                        "{} (for {}s more)",
                        e.eject_reason.as_deref().unwrap_or("failures"),
                        t.saturating_duration_since(now).as_secs()
                    )
                }),
                last_check: e
                    .last_check
                    .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                last_error: e.last_error.clone(),
                lease_expires_in_seconds: e.lease_expires.saturating_duration_since(now).as_secs(),
                in_flight: e.upstream.in_flight.load(Ordering::Relaxed),
                vitals: e.vitals.clone(),
            })
            .collect();
        drop(entries);
        backends.sort_by(|a, b| a.id.cmp(&b.id));
        RegistryView {
            digest: format!("{:08x}", routable.live().1),
            panic: routable.panic,
            backends,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            allowed_networks: vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            max_backends: 2,
            lease_ttl: Duration::from_secs(90),
        }
    }

    fn reg(id: &str, address: &str) -> Registration {
        Registration {
            id: id.into(),
            address: address.into(),
            metrics_port: 9090,
            weight: 1,
            protocol: None,
        }
    }

    fn registry() -> Registry {
        Registry::new(
            policy(),
            Thresholds {
                unhealthy: 2,
                healthy: 1,
                panic_percent: 0.0,
            },
            Duration::ZERO,
            Duration::ZERO,
        )
    }

    #[test]
    fn validation_names_fields() {
        let p = policy();
        let err = |r: Registration| p.validate(&r).unwrap_err().to_string();
        assert!(err(reg("", "10.0.0.1:80")).starts_with("id:"));
        assert!(err(reg("a b", "10.0.0.1:80")).starts_with("id:"));
        assert!(err(reg(&"a".repeat(254), "10.0.0.1:80")).starts_with("id:"));
        assert!(err(reg("a", "10.0.0.1")).starts_with("address:"));
        assert!(err(reg("a", "10.0.0.1:0")).starts_with("address:"));
        let mut r = reg("a", "10.0.0.1:80");
        r.metrics_port = 0;
        assert!(err(r).starts_with("metrics_port:"));
        let mut r = reg("a", "10.0.0.1:80");
        r.weight = 0;
        assert!(err(r).starts_with("weight:"));
        assert!(p.validate(&reg("a.b_c-1", "10.0.0.1:80")).is_ok());
    }

    #[test]
    fn fence_refuses_special_addresses_unless_listed() {
        let p = Policy {
            allowed_networks: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            ..policy()
        };
        for a in [
            "127.0.0.1:80",
            "169.254.169.254:80",
            "224.0.0.1:80",
            "0.0.0.0:80",
            "255.255.255.255:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            let e = p.validate(&reg("a", a)).unwrap_err();
            assert!(matches!(e, RegisterError::Forbidden(_)), "{a}: {e}");
        }
        assert!(p.validate(&reg("a", "8.8.8.8:80")).is_ok());
        // Listed explicitly: allowed.
        assert!(policy().validate(&reg("a", "127.0.0.2:80")).is_ok());
        let e = policy().validate(&reg("a", "192.168.1.1:80")).unwrap_err();
        assert!(matches!(e, RegisterError::Forbidden(_)));
    }

    #[test]
    fn register_renew_replace_and_cap() {
        let r = registry();
        let now = Instant::now();
        let v = |id, a| policy().validate(&reg(id, a)).unwrap();
        let (o, _, t) = r.register(v("a", "10.0.0.1:80"), now).unwrap();
        assert_eq!(o, Registered::Created);
        assert!(t.is_some());
        let (o, _, t) = r.register(v("a", "10.0.0.1:80"), now).unwrap();
        assert_eq!(o, Registered::Renewed);
        assert!(t.is_none(), "renewal keeps the scheduled checks");
        let (o, _, t) = r.register(v("a", "10.0.0.9:80"), now).unwrap();
        assert_eq!(o, Registered::Renewed);
        assert!(t.is_some(), "a new address is checked afresh");
        r.register(v("b", "10.0.0.2:80"), now).unwrap();
        assert_eq!(
            r.register(v("c", "10.0.0.3:80"), now).unwrap_err(),
            RegisterError::Full(2)
        );
        // Renewals still succeed at the cap.
        assert!(r.register(v("b", "10.0.0.2:80"), now).is_ok());
        // A new id on a held address evicts the holder, even at the cap.
        r.deregister("b");
        r.register(v("c", "10.0.0.9:80"), now).unwrap();
        assert!(r.view(now).backends.iter().all(|e| e.id != "a"));
    }

    #[test]
    fn protocol_rides_to_the_upstream() {
        use crate::protocol::Protocol;
        let r = registry();
        let now = Instant::now();
        let mut g = reg("a", "10.0.0.1:80");
        g.protocol = Some(Protocol::H2c);
        r.register(policy().validate(&g).unwrap(), now).unwrap();
        let proto = |r: &Registry| r.entries.read().get("a").map(|e| e.upstream.protocol);
        assert_eq!(proto(&r), Some(Some(Protocol::H2c)));
        g.protocol = None;
        let (_, _, t) = r.register(policy().validate(&g).unwrap(), now).unwrap();
        assert!(
            t.is_some(),
            "a changed protocol is a new upstream, checked afresh"
        );
        assert_eq!(proto(&r), Some(None));
    }

    #[test]
    fn leases_expire() {
        let r = registry();
        let now = Instant::now();
        r.register(policy().validate(&reg("a", "10.0.0.1:80")).unwrap(), now)
            .unwrap();
        assert!(r.expire(now + Duration::from_secs(89)).is_empty());
        assert_eq!(r.expire(now + Duration::from_secs(90)), ["a"]);
        assert!(r.is_empty());
    }

    #[test]
    fn state_machine_follows_thresholds() {
        let r = registry();
        let now = Instant::now();
        let (_, _, t) = r
            .register(policy().validate(&reg("a", "10.0.0.1:80")).unwrap(), now)
            .unwrap();
        let t = t.unwrap();
        let ready = || {
            CheckResult::Ready(Vitals {
                ready: true,
                ..Default::default()
            })
        };
        assert!(
            r.publish().addresses.is_empty(),
            "unchecked is not routable"
        );
        r.apply_check(&t, ready());
        assert_eq!(r.publish().addresses, ["10.0.0.1:80"]);
        r.apply_check(&t, CheckResult::Failed("x".into()));
        assert_eq!(r.publish().addresses.len(), 1, "one failure is tolerated");
        r.apply_check(&t, CheckResult::Failed("x".into()));
        assert!(r.publish().addresses.is_empty(), "two failures eject");
        r.apply_check(&t, ready());
        assert_eq!(r.publish().addresses.len(), 1, "healthy_threshold=1");
        r.apply_check(&t, CheckResult::NotReady(Vitals::default()));
        assert!(
            r.publish().addresses.is_empty(),
            "ready=false is out at once"
        );
        // Stale results for a replaced entry are ignored.
        let stale = Target {
            generation: 0,
            ..t.clone()
        };
        assert!(r.apply_check(&stale, ready()).is_none());
    }

    #[test]
    fn digest_is_order_independent_and_changes() {
        let a = registry();
        let b = registry();
        let now = Instant::now();
        let mut targets = Vec::new();
        for (reg_, ids) in [(&a, ["x", "y"]), (&b, ["y", "x"])] {
            for id in ids {
                let addr = if id == "x" {
                    "10.0.0.1:80"
                } else {
                    "10.0.0.2:80"
                };
                let (_, _, t) = reg_
                    .register(policy().validate(&reg(id, addr)).unwrap(), now)
                    .unwrap();
                targets.push((reg_, t.unwrap()));
            }
        }
        for (r, t) in &targets {
            r.apply_check(
                t,
                CheckResult::Ready(Vitals {
                    ready: true,
                    ..Default::default()
                }),
            );
        }
        let (da, db) = (a.publish().digest, b.publish().digest);
        assert_eq!(da, db);
        a.deregister("x");
        assert_ne!(a.publish().digest, da);
    }

    #[test]
    fn ejection_grows_caps_and_resets() {
        let r = registry();
        let t0 = Instant::now();
        let (_, _, t) = r
            .register(policy().validate(&reg("a", "10.0.0.1:80")).unwrap(), t0)
            .unwrap();
        let t = t.unwrap();
        r.apply_check(
            &t,
            CheckResult::Ready(Vitals {
                ready: true,
                ..Default::default()
            }),
        );
        let up = Arc::clone(&r.publish().upstreams[&"10.0.0.1:80".parse().unwrap()]);
        let (base, max) = (Duration::from_secs(10), Duration::from_secs(35));
        let mut now = t0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let len = r.eject(&up, "x".into(), now, base, max).unwrap();
            assert!(
                r.eject(&up, "x".into(), now, base, max).is_none(),
                "already ejected"
            );
            assert!(r.publish().addresses.is_empty(), "ejected is not routable");
            assert!(r.view(now).backends[0].ejected.is_some());
            now += len;
            assert_eq!(r.release_ejections(now), ["a"]);
            assert_eq!(r.publish().addresses.len(), 1, "back after the ejection");
            lengths.push(len.as_secs());
        }
        assert_eq!(lengths, [10, 20, 35, 35], "doubles, capped at max");
        // A quiet spell longer than 2×max resets the multiplier.
        now += max * 2 + Duration::from_secs(1);
        assert_eq!(r.eject(&up, "x".into(), now, base, max), Some(base));
    }

    #[test]
    fn panic_mode_routes_to_verified_ready_backends() {
        let r = Registry::new(
            Policy {
                max_backends: 10,
                ..policy()
            },
            Thresholds {
                unhealthy: 1,
                healthy: 1,
                panic_percent: 50.0,
            },
            Duration::ZERO,
            Duration::ZERO,
        );
        let now = Instant::now();
        let mut targets = Vec::new();
        for (id, a) in [
            ("a", "10.0.0.1:80"),
            ("b", "10.0.0.2:80"),
            ("c", "10.0.0.3:80"),
            ("d", "10.0.0.4:80"),
        ] {
            let p = Policy {
                max_backends: 10,
                ..policy()
            };
            let (_, _, t) = r.register(p.validate(&reg(id, a)).unwrap(), now).unwrap();
            targets.push(t.unwrap());
        }
        let ok = || {
            CheckResult::Ready(Vitals {
                ready: true,
                ..Default::default()
            })
        };
        for t in &targets[..3] {
            r.apply_check(t, ok());
        }
        // d was never verified; c goes not-ready; a and b fail.
        r.apply_check(&targets[2], CheckResult::NotReady(Vitals::default()));
        assert!(!r.publish().panic, "2 of 4 healthy is not below 50%");
        r.apply_check(&targets[0], CheckResult::Failed("down".into()));
        let p = r.publish();
        assert!(p.panic, "1 of 4 healthy");
        assert_eq!(p.addresses, ["10.0.0.1:80", "10.0.0.2:80"]);
        assert!(r.view(now).panic);
        // A stranger is never used, even in panic.
        r.apply_check(&targets[0], CheckResult::Stranger("other id".into()));
        assert_eq!(r.publish().addresses, ["10.0.0.2:80"]);
    }

    #[test]
    fn next_announce_spreads_within_bounds() {
        let ttl = Duration::from_secs(90);
        let vals: Vec<u64> = (0..100)
            .map(|i| next_announce(&format!("b{i}"), ttl))
            .collect();
        assert!(vals.iter().all(|v| (24..=30).contains(v)), "{vals:?}");
        assert!(vals.iter().collect::<BTreeSet<_>>().len() > 3, "spread");
    }
}
