//! One pool per service: its published slot, its own selector and its
//! request-path settings. The proxy finds a pool by name in O(1); the
//! publisher rebuilds only the pools whose service changed.

use std::collections::HashMap;
use std::sync::Arc;

use fnv::FnvHashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use super::select::Selector;
use super::upstream_tls::{PeerTls, UpstreamTlsError};
use crate::config::{Config, ServiceSpec};
use crate::registry::{Registry, Slot};

/// A service as the proxy uses it.
pub struct Pool {
    pub slot: Arc<Slot>,
    pub selector: Selector,
    /// TLS toward the backends (`services.<name>.tls`), None for plaintext.
    pub tls: Option<Arc<PeerTls>>,
    /// Last published panic state, to log flips once.
    panic: AtomicBool,
}

impl Pool {
    pub fn name(&self) -> &Arc<str> {
        self.slot.name()
    }

    /// The service's settings, as its slot holds them.
    pub fn spec(&self) -> &ServiceSpec {
        self.slot.spec()
    }
}

/// Every service's pool, swapped whole when a service appears or leaves.
///
/// FNV, not SipHash: every request looks its service up by name, and the
/// names come from registrations on the control port, not from clients.
#[derive(Default)]
pub struct Pools {
    map: ArcSwap<FnvHashMap<Arc<str>, Arc<Pool>>>,
    /// Each TLS service's settings, loaded once at start.
    tls: HashMap<String, Arc<PeerTls>>,
}

/// What publishing one service changed, for logs and gauges.
pub struct Published {
    pub pool: Arc<Pool>,
    /// Some(new state) when panic mode started or ended.
    pub panic_flip: Option<bool>,
}

impl Pools {
    /// No pools yet; the upstream TLS of `config`'s services loaded (their
    /// CA files read), or the first that cannot be.
    pub fn new(config: &Config) -> Result<Self, UpstreamTlsError> {
        let mut tls = HashMap::new();
        for (name, spec) in &config.service_specs().by_name {
            if let Some(t) = &spec.tls {
                tls.insert(name.clone(), Arc::new(PeerTls::load(name, t)?));
            }
        }
        Ok(Self {
            map: ArcSwap::default(),
            tls,
        })
    }

    /// The pool of `service` (lock-free).
    pub fn get(&self, service: &str) -> Option<Arc<Pool>> {
        self.map.load().get(service).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map.load().values().cloned().collect()
    }

    /// Publish `service` and rebuild its selector; a service without a
    /// slot any more loses its pool. O(that service's entries).
    pub async fn publish(
        &self,
        registry: &Registry,
        config: &Config,
        service: &Arc<str>,
    ) -> Option<Published> {
        let Some(slot) = registry.publish(service) else {
            self.map.rcu(|m| {
                let mut m = FnvHashMap::clone(m);
                m.remove(service);
                m
            });
            return None;
        };
        let pool = match self.get(service) {
            Some(p) if Arc::ptr_eq(&p.slot, &slot) => p,
            _ => self.insert(config, slot),
        };
        if let Err(e) = pool.selector.update().await {
            tracing::error!(service = %service, error = %e, "selector update failed");
        }
        let panic = pool.slot.routable().panic;
        let flipped = pool.panic.swap(panic, Ordering::Relaxed) != panic;
        Some(Published {
            pool,
            panic_flip: flipped.then_some(panic),
        })
    }

    fn insert(&self, config: &Config, slot: Arc<Slot>) -> Arc<Pool> {
        let slot_name = Arc::clone(slot.name());
        let pool = Arc::new(Pool {
            selector: Selector::new(slot.spec().algorithm, Arc::clone(&slot))
                .with_load_score(config.lb.load_score),
            slot,
            tls: self.tls.get(&*slot_name).cloned(),
            panic: AtomicBool::new(false),
        });
        self.map.rcu(|m| {
            let mut m = FnvHashMap::clone(m);
            m.insert(Arc::clone(pool.name()), Arc::clone(&pool));
            m
        });
        pool
    }
}
