//! The entry table: entries by service and id, an index by address within
//! a service (an address belongs to one id at a time: pod IPs are reused),
//! and the entry's lease, health and ejection fields.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::routable::Upstream;
use super::verdict::Health;
use crate::protocol::Vitals;

pub(super) struct Entry {
    pub id: String,
    pub service: Arc<str>,
    pub addr: SocketAddr,
    pub metrics_port: u16,
    pub weight: u32,
    /// Bumped when the entry is replaced, so stale check results are dropped.
    pub generation: u64,
    pub lease_expires: Instant,
    pub health: Health,
    pub last_check: Option<SystemTime>,
    pub last_error: Option<String>,
    pub vitals: Option<Vitals>,
    pub ejected_until: Option<Instant>,
    pub eject_reason: Option<String>,
    /// Ejections in a row; the next one lasts `ejection_time × 2^(n-1)`.
    pub ejections: u32,
    pub last_ejected: Option<Instant>,
    /// When a DELETE found requests in flight: removed once they end.
    pub draining_since: Option<Instant>,
    pub upstream: Arc<Upstream>,
}

impl Entry {
    /// Takes traffic on its own merits (panic mode aside).
    pub fn routable(&self) -> bool {
        self.health.healthy() && self.ejected_until.is_none()
    }
}

/// One service's entries.
#[derive(Default)]
pub(super) struct Pool {
    pub by_id: HashMap<String, Entry>,
    by_addr: HashMap<SocketAddr, String>,
}

/// Every entry, by service.
#[derive(Default)]
pub(super) struct Table {
    services: HashMap<Arc<str>, Pool>,
    len: usize,
    /// Upstreams removed since the last [`Table::take_removed`].
    removed: Vec<Arc<Upstream>>,
}

impl Table {
    pub fn get(&self, service: &str, id: &str) -> Option<&Entry> {
        self.services.get(service)?.by_id.get(id)
    }

    /// Callers never change `addr` through this (see `insert`).
    pub fn get_mut(&mut self, service: &str, id: &str) -> Option<&mut Entry> {
        self.services.get_mut(service)?.by_id.get_mut(id)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn pool(&self, service: &str) -> Option<&Pool> {
        self.services.get(service)
    }

    pub fn pools(&self) -> impl Iterator<Item = (&Arc<str>, &Pool)> {
        self.services.iter()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.services.values().flat_map(|p| p.by_id.values())
    }

    /// The id holding `addr` in `service`, if any.
    pub fn holder(&self, service: &str, addr: &SocketAddr) -> Option<&str> {
        self.services
            .get(service)?
            .by_addr
            .get(addr)
            .map(String::as_str)
    }

    pub fn insert(&mut self, e: Entry) -> Option<Entry> {
        let old = self.remove(&e.service, &e.id);
        let pool = self.services.entry(Arc::clone(&e.service)).or_default();
        pool.by_addr.insert(e.addr, e.id.clone());
        pool.by_id.insert(e.id.clone(), e);
        self.len += 1;
        old
    }

    pub fn remove(&mut self, service: &str, id: &str) -> Option<Entry> {
        let pool = self.services.get_mut(service)?;
        let e = pool.by_id.remove(id)?;
        if pool.by_addr.get(&e.addr).is_some_and(|h| h == id) {
            pool.by_addr.remove(&e.addr);
        }
        if pool.by_id.is_empty() {
            self.services.remove(service);
        }
        self.len -= 1;
        e.upstream.withdraw(true);
        self.removed.push(Arc::clone(&e.upstream));
        Some(e)
    }

    pub fn take_removed(&mut self) -> Vec<Arc<Upstream>> {
        std::mem::take(&mut self.removed)
    }
}
