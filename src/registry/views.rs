//! Read-only views of the registry: `/registry`, `/services` and the
//! per-service, per-state counts behind the gauges.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Registry;
use super::table::Entry;
use crate::protocol::{BackendState, EntryView, RegistryView, ServiceView};

impl Registry {
    /// Entries per service and state, for the gauges.
    pub fn counts(&self) -> HashMap<(Arc<str>, BackendState), usize> {
        let mut counts = HashMap::new();
        for e in self.table.read().entries() {
            *counts
                .entry((Arc::clone(&e.service), e.health.state))
                .or_default() += 1;
        }
        counts
    }

    /// The `/registry` document: every entry, or one service's; the digest
    /// and panic flag are the named service's (the default one otherwise).
    pub fn view(&self, service: Option<&str>, now: Instant) -> RegistryView {
        let focus = service.unwrap_or(&self.policy.default_service);
        let routable = self
            .slot(focus)
            .map(|s| s.routable().clone())
            .unwrap_or_default();
        let slots = self.slots.read().clone();
        let table = self.table.read();
        let mut backends: Vec<EntryView> = table
            .entries()
            .filter(|e| service.is_none_or(|s| *e.service == *s))
            .map(|e| {
                let routable = slots
                    .get(&e.service)
                    .is_some_and(|s| s.routable().usable(&e.addr).is_some());
                entry_view(e, routable, now)
            })
            .collect();
        drop(table);
        backends.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        RegistryView {
            digest: format!("{:08x}", routable.live().1),
            panic: routable.panic,
            backends,
        }
    }

    /// `GET /services`: every service with entries or a slot, by name.
    pub fn services(&self) -> Vec<ServiceView> {
        let mut registered: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for (name, pool) in self.table.read().pools() {
            registered.insert(Arc::clone(name), pool.by_id.len());
        }
        for slot in self.slots() {
            registered.entry(Arc::clone(slot.name())).or_default();
        }
        registered
            .into_iter()
            .map(|(name, registered)| {
                let (routable, digest) = self.slot(&name).map_or_else(
                    || (0, super::digest(std::iter::empty())),
                    |s| {
                        let routable = s.routable();
                        let (live, digest) = routable.live();
                        (live.len(), digest)
                    },
                );
                ServiceView {
                    name: name.to_string(),
                    registered,
                    routable,
                    digest: format!("{digest:08x}"),
                }
            })
            .collect()
    }
}

fn entry_view(e: &Entry, routable: bool, now: Instant) -> EntryView {
    EntryView {
        id: e.id.clone(),
        service: e.service.to_string(),
        address: e.addr.to_string(),
        metrics_port: e.metrics_port,
        weight: e.weight,
        state: e.health.state,
        routable,
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
    }
}
