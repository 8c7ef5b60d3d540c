//! Publication: each service has a [`Slot`](crate::registry::Slot) holding its current
//! [`Routable`](crate::registry::Routable); a change marks the service dirty and only dirty services
//! are rebuilt, so a flip in one service costs O(that service), never
//! O(every backend).

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Registry, Routable};
use crate::config::ServiceSpec;

/// One service as the request path sees it.
pub struct Slot {
    name: Arc<str>,
    routable: ArcSwap<Routable>,
    spec: Arc<ServiceSpec>,
}

impl Slot {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The current routable set (lock-free).
    pub fn routable(&self) -> arc_swap::Guard<Arc<Routable>> {
        self.routable.load()
    }

    /// The current set, to hold beyond a request (a selector's table).
    pub fn routable_full(&self) -> Arc<Routable> {
        self.routable.load_full()
    }

    /// The service's settings (`services:` over the defaults), resolved
    /// once; the proxy's pool reads them here.
    pub fn spec(&self) -> &Arc<ServiceSpec> {
        &self.spec
    }
}

impl Registry {
    pub(super) fn mark_dirty(&self, service: &Arc<str>) {
        self.dirty.lock().insert(Arc::clone(service));
        self.wake.notify_one();
    }

    /// Keep slots for these services (and the default one) even without
    /// entries: routes and `services:` name them before backends arrive.
    pub fn pin<'a>(&self, services: impl IntoIterator<Item = &'a str>) {
        let mut pinned: HashSet<Arc<str>> = services.into_iter().map(Arc::from).collect();
        if !self.policy.default_service.is_empty() {
            pinned.insert(Arc::from(self.policy.default_service.as_str()));
        }
        // Slots at once, so reads never see a pinned service missing.
        for name in &pinned {
            if self.slot(name).is_none() {
                self.store(name, self.specs.of(name), Routable::default());
            }
        }
        let mut old = self.pinned.write();
        for service in old.symmetric_difference(&pinned) {
            self.mark_dirty(service);
        }
        *old = pinned;
    }

    /// Whether `service` has entries or a slot.
    pub fn knows(&self, service: &str) -> bool {
        self.table.read().pool(service).is_some() || self.slot(service).is_some()
    }

    /// Wait until some services need rebuilding; returns them.
    pub async fn wait_dirty(&self) -> Vec<Arc<str>> {
        loop {
            let dirty: Vec<Arc<str>> = self.dirty.lock().drain().collect();
            if !dirty.is_empty() {
                return dirty;
            }
            self.wake.notified().await;
        }
    }

    /// The slot of `service`, if it has entries or is pinned (and was
    /// published once).
    pub fn slot(&self, service: &str) -> Option<Arc<Slot>> {
        self.slots.read().get(service).cloned()
    }

    /// Every published slot.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.read().values().cloned().collect()
    }

    /// Rebuild and publish `service`'s routable set: O(its entries). Returns
    /// its slot, or None when the service has no entries and is not pinned
    /// (its slot is dropped).
    pub fn publish(&self, service: &Arc<str>) -> Option<Arc<Slot>> {
        let spec = self.specs.of(service);
        let table = self.table.read();
        let Some(pool) = table.pool(service) else {
            drop(table);
            if self.pinned.read().contains(service) {
                return Some(self.store(service, spec, Routable::default()));
            }
            self.slots.write().remove(service);
            return None;
        };
        let entries = || pool.by_id.values().filter(|e| e.draining_since.is_none());
        // The panic ratio counts checked entries only: one not checked yet
        // (every one, just after a start) is neither healthy nor failing.
        let eligible = entries()
            .filter(|e| e.health.checked)
            .filter(|e| e.health.state != crate::protocol::BackendState::Draining)
            .count();
        let healthy = entries().filter(|e| e.routable()).count();
        let pct = spec.panic_percent;
        let panic = pct > 0.0 && eligible > 0 && (healthy as f64) * 100.0 < pct * eligible as f64;
        let chosen = entries()
            .filter(|e| {
                if panic {
                    e.health.panic_usable()
                } else {
                    e.routable()
                }
            })
            .map(|e| (Arc::clone(&e.upstream), e.weight))
            .collect();
        drop(table);
        Some(self.store(service, spec, Routable::build(chosen, panic)))
    }

    fn store(&self, service: &Arc<str>, spec: Arc<ServiceSpec>, r: Routable) -> Arc<Slot> {
        let mut slots = self.slots.write();
        let slot = slots.entry(Arc::clone(service)).or_insert_with(|| {
            Arc::new(Slot {
                name: Arc::clone(service),
                routable: ArcSwap::from_pointee(Routable::default()),
                spec,
            })
        });
        slot.routable.store(Arc::new(r));
        Arc::clone(slot)
    }
}
