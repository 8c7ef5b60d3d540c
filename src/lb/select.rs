//! Backend selection on pingora's `LoadBalancer`, fed by the registry.
//!
//! The registry publishes only routable backends, so the selector never
//! skips unhealthy ones on the request path. Selectors are rebuilt when the
//! routable set changes, never per request; each pick is O(1) (round robin,
//! least loaded) or O(log n) (ketama).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{BackendIter, BackendSelection, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use rand::RngExt;

use crate::config::Algorithm;
use crate::registry::{Slot, Upstream};

/// pingora's view of one service: its routable set.
struct Discovery(Arc<Slot>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0.routable().backends.clone(), HashMap::new()))
    }
}

/// The configured algorithm over pingora's `LoadBalancer`.
pub enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    LeastLoaded(LoadBalancer<LeastLoaded>),
    ConsistentHash(LoadBalancer<KetamaHashing>),
}

impl Selector {
    /// A selector over one service's published set.
    pub fn new(algorithm: Algorithm, slot: Arc<Slot>) -> Self {
        let backends = || Backends::new(Box::new(Discovery(Arc::clone(&slot))));
        match algorithm {
            Algorithm::RoundRobin => Self::RoundRobin(LoadBalancer::from_backends(backends())),
            Algorithm::LeastLoaded => Self::LeastLoaded(LoadBalancer::from_backends_with_config(
                backends(),
                Some(Arc::clone(&slot)),
            )),
            Algorithm::ConsistentHash => {
                Self::ConsistentHash(LoadBalancer::from_backends(backends()))
            }
        }
    }

    /// Rebuild from the registry's current routable set.
    pub async fn update(&self) -> pingora::Result<()> {
        match self {
            Self::RoundRobin(lb) => lb.update().await,
            Self::LeastLoaded(lb) => lb.update().await,
            Self::ConsistentHash(lb) => lb.update().await,
        }
    }

    /// First backend `accept` takes, visiting at most `max` candidates.
    pub fn select_with(
        &self,
        key: &[u8],
        max: usize,
        accept: impl Fn(&Backend, bool) -> bool,
    ) -> Option<Backend> {
        match self {
            Self::RoundRobin(lb) => lb.select_with(key, max, accept),
            Self::LeastLoaded(lb) => lb.select_with(key, max, accept),
            Self::ConsistentHash(lb) => lb.select_with(key, max, accept),
        }
    }

    /// Whether the selection key matters (only for hashing).
    pub fn uses_key(&self) -> bool {
        matches!(self, Self::ConsistentHash(_))
    }
}

/// Power of two choices: two distinct random backends, the less loaded wins.
///
/// Load is this LB's own in-flight count (exact, fresh) plus a quarter of
/// what the backend last reported in its vitals (`requests_in_progress +
/// backoff_requests`, shared by every LB and up to one interval stale),
/// divided by the weight.
pub struct LeastLoaded {
    backends: Vec<Backend>,
    load: Vec<Option<Arc<Upstream>>>,
}

impl LeastLoaded {
    fn score(&self, i: usize) -> (u64, u64) {
        let load = self.load[i].as_ref().map_or(0, |u| {
            u.in_flight.load(Ordering::Relaxed) * 4 + u.reported_load.load(Ordering::Relaxed)
        });
        (load, self.backends[i].weight.max(1) as u64)
    }

    /// Index of the less loaded of `a` and `b` (cross-multiplied by weight).
    fn pick(&self, a: usize, b: usize) -> usize {
        let ((la, wa), (lb, wb)) = (self.score(a), self.score(b));
        if la * wb <= lb * wa { a } else { b }
    }
}

impl BackendSelection for LeastLoaded {
    type Iter = LeastLoadedIter;
    type Config = Arc<Slot>;

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self {
            backends: backends.iter().cloned().collect(),
            load: vec![None; backends.len()],
        }
    }

    fn build_with_config(backends: &BTreeSet<Backend>, slot: &Arc<Slot>) -> Self {
        let routable = slot.routable();
        let backends: Vec<Backend> = backends.iter().cloned().collect();
        let load = backends
            .iter()
            .map(|b| {
                b.addr
                    .as_inet()
                    .and_then(|a| routable.upstreams.get(a).cloned())
            })
            .collect();
        Self { backends, load }
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> LeastLoadedIter {
        let n = self.backends.len();
        let (first, start) = if n == 0 {
            (0, 0)
        } else {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            // Two distinct candidates, so the busiest never wins a draw.
            let b = if n > 1 {
                let b = rng.random_range(0..n - 1);
                if b >= a { b + 1 } else { b }
            } else {
                a
            };
            (self.pick(a, b), a)
        };
        LeastLoadedIter {
            sel: Arc::clone(self),
            first: Some(first),
            next: start,
            left: n,
        }
    }
}

/// The P2C winner first, then every backend once from a random start (the
/// fallback when the winner is refused, e.g. after a failed connect).
pub struct LeastLoadedIter {
    sel: Arc<LeastLoaded>,
    first: Option<usize>,
    next: usize,
    left: usize,
}

impl BackendIter for LeastLoadedIter {
    fn next(&mut self) -> Option<&Backend> {
        if self.sel.backends.is_empty() {
            return None;
        }
        if let Some(i) = self.first.take() {
            return self.sel.backends.get(i);
        }
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.next % self.sel.backends.len();
        self.next += 1;
        self.sel.backends.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(addr: &str, in_flight: u64) -> Arc<Upstream> {
        let u = Upstream::new(&Arc::from("s"), "x", addr.parse().unwrap());
        u.in_flight
            .store(in_flight, std::sync::atomic::Ordering::Relaxed);
        Arc::new(u)
    }

    #[test]
    fn least_loaded_prefers_idle_backend() {
        let busy = upstream("10.0.0.1:80", 100);
        let idle = upstream("10.0.0.2:80", 0);
        let sel = Arc::new(LeastLoaded {
            backends: vec![
                Backend::new("10.0.0.1:80").unwrap(),
                Backend::new("10.0.0.2:80").unwrap(),
            ],
            load: vec![Some(busy), Some(idle)],
        });
        let mut idle_wins = 0;
        for _ in 0..1000 {
            let mut it = sel.iter(b"");
            let b = it.next().unwrap().clone();
            if b.addr.to_string() == "10.0.0.2:80" {
                idle_wins += 1;
            }
        }
        // Two distinct candidates: the busy one never wins.
        assert_eq!(idle_wins, 1000);
        // The iterator still offers every backend after the winner.
        let mut it = sel.iter(b"");
        let mut seen = 0;
        while it.next().is_some() {
            seen += 1;
        }
        assert_eq!(seen, 3);
    }

    #[test]
    fn empty_least_loaded_yields_nothing() {
        let sel = Arc::new(LeastLoaded::build(&BTreeSet::new()));
        assert!(sel.iter(b"").next().is_none());
    }
}
