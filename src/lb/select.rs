//! Backend selection over the routable set.
//!
//! The registry publishes only routable backends. [`Selector::update`] turns
//! each published set into a flat table, once per change; a pick then reads
//! that table: one `ArcSwap` load, then one atomic add (round robin) or one
//! random draw (least loaded: two random candidates; pools of up to eight
//! are scored whole). No allocation and no hashing of the set on the
//! request path: pingora's `LoadBalancer::select_with` builds a SipHash
//! `HashSet` on every call to keep candidates unique, here they are unique
//! by construction (the first choice, then the others in table order).
//! Consistent hashing keeps pingora's ketama ring, so keys map to the same
//! backends as before.
//!
//! Public surface: [`Selector::new`] (follows one service's slot), [`Selector::standalone`]
//! with [`Selector::set`] (fed by the caller), [`Selector::update`],
//! [`Selector::pick`] / [`Selector::pick_routable`], [`Selector::uses_key`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use pingora::lb::Backend;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::protocols::l4::socket::SocketAddr as InetOrUnix;

use crate::config::{Algorithm, LoadScore};
use crate::registry::{Routable, Slot, Upstream};

impl LoadScore {
    /// The backend's score before its weight is applied; `fastest_ms` is
    /// [`LoadScore::fastest`] over the candidates it is compared with.
    /// `now` fades the response-time factor of a backend that has not
    /// answered for a while ([`crate::registry::LATENCY_HALF_LIFE`]).
    pub fn of(&self, u: &Upstream, fastest_ms: f64, now: Instant) -> f64 {
        let in_flight = u.in_flight.load(Ordering::Relaxed) as f64;
        let reported = u.reported_load.load(Ordering::Relaxed) as f64;
        // Stored in hundredths of a percent.
        let gpu = f64::from(u.gpu_usage.load(Ordering::Relaxed)) / 100.0;
        let load = self.in_flight * in_flight + self.reported * reported + self.gpu * gpu;
        if self.latency == 0.0 {
            return load;
        }
        let ms = u.latency_ms();
        // No answer yet (or none from any candidate): no opinion.
        let mut slower = if ms > 0.0 && fastest_ms > 0.0 {
            (ms / (LATENCY_SLACK * fastest_ms)).max(1.0)
        } else {
            1.0
        };
        if slower > 1.0 {
            // An old verdict counts less: the penalty fades toward none.
            slower = 1.0 + (slower - 1.0) * u.latency_trust(now);
        }
        // +1: an idle slow backend still scores above an idle fast one.
        (load + 1.0) * slower.powf(self.latency)
    }

    /// The lowest known response-time EWMA among `candidates`, in ms (0 when
    /// none is known or the latency term is off).
    pub fn fastest<'a>(&self, candidates: impl Iterator<Item = &'a Upstream>) -> f64 {
        if self.latency == 0.0 {
            return 0.0;
        }
        candidates
            .map(Upstream::latency_ms)
            .filter(|&ms| ms > 0.0)
            .fold(0.0, |min, ms| if min == 0.0 { ms } else { min.min(ms) })
    }
}

/// Response times within this factor of the fastest candidate's count as
/// equal (`lb.load_score.latency`): without it, sequential requests to idle
/// backends would all go to whichever measured a few µs faster.
const LATENCY_SLACK: f64 = 2.0;

/// One published set, flattened for picking.
#[derive(Default)]
struct Table {
    /// Distinct backends sorted by address (ketama answers with addresses).
    backends: Vec<Backend>,
    /// `backends[i]`'s counters.
    upstreams: Vec<Arc<Upstream>>,
    /// Weighted round robin order (indexes into `backends`, interleaved so a
    /// heavy backend's turns are spread out); `None` when all weights are
    /// equal and the order is the table's.
    order: Option<Vec<u32>>,
    /// The ketama ring, for `consistent_hash` only.
    ring: Option<Arc<KetamaHashing>>,
    /// The published set this table was built from (`update` only).
    source: Option<Arc<Routable>>,
}

/// The configured algorithm over the current routable set.
pub struct Selector {
    algorithm: Algorithm,
    score: LoadScore,
    /// Where [`Selector::update`] reads the set; `None` when fed by `set`.
    /// The service whose routable set `update` follows.
    slot: Option<Arc<Slot>>,
    table: ArcSwap<Table>,
    /// Round robin's position; least loaded's random stream.
    cursor: AtomicU64,
}

impl Selector {
    /// A selector that follows one service's routable set on every `update`.
    pub fn new(algorithm: Algorithm, slot: Arc<Slot>) -> Self {
        let mut s = Self::standalone(algorithm);
        s.slot = Some(slot);
        s
    }

    /// A selector fed only by [`Selector::set`] (one per service, tests).
    pub fn standalone(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            score: LoadScore::default(),
            slot: None,
            table: ArcSwap::from_pointee(Table::default()),
            // Replicas started together should not walk the pool in step.
            cursor: AtomicU64::new(rand::random()),
        }
    }

    /// Use these `least_loaded` weights instead of the defaults.
    pub fn with_load_score(mut self, score: LoadScore) -> Self {
        self.score = score;
        self
    }

    /// Rebuild from the registry's current routable set (O(pool), off the
    /// request path). Never fails; the `Result` keeps pingora's signature.
    pub async fn update(&self) -> pingora::Result<()> {
        if let Some(slot) = &self.slot {
            let routable = slot.routable_full();
            let members = routable.backends.iter().filter_map(|b| {
                let u = routable.upstreams.get(b.addr.as_inet()?)?;
                Some((Arc::clone(u), u32::try_from(b.weight).unwrap_or(u32::MAX)))
            });
            let table = self.build(members, Some(Arc::clone(&routable)));
            self.table.store(Arc::new(table));
        }
        Ok(())
    }

    /// Replace the set: each upstream with its weight (0 counts as 1).
    /// Duplicate addresses keep the first.
    pub fn set(&self, members: impl IntoIterator<Item = (Arc<Upstream>, u32)>) {
        self.table.store(Arc::new(self.build(members, None)));
    }

    fn build(
        &self,
        members: impl IntoIterator<Item = (Arc<Upstream>, u32)>,
        source: Option<Arc<Routable>>,
    ) -> Table {
        let mut members: Vec<(Arc<Upstream>, u32)> = members.into_iter().collect();
        members.sort_by_key(|(u, _)| u.addr);
        members.dedup_by_key(|(u, _)| u.addr);
        let backends: Vec<Backend> = members
            .iter()
            .map(|(u, w)| Backend {
                addr: InetOrUnix::Inet(u.addr),
                weight: (*w).max(1) as usize,
                ext: http::Extensions::new(),
            })
            .collect();
        let weights: Vec<u32> = members.iter().map(|(_, w)| (*w).max(1)).collect();
        let ring = (self.algorithm == Algorithm::ConsistentHash).then(|| {
            let set: BTreeSet<Backend> = backends.iter().cloned().collect();
            Arc::new(KetamaHashing::build(&set))
        });
        Table {
            order: interleave(&weights),
            upstreams: members.into_iter().map(|(u, _)| u).collect(),
            backends,
            ring,
            source,
        }
    }

    /// Whether the selection key matters (only for hashing).
    pub fn uses_key(&self) -> bool {
        self.algorithm == Algorithm::ConsistentHash
    }

    /// The first candidate `accept` takes, visiting at most `max`: the
    /// algorithm's choice first, then the other backends once each.
    /// Allocates nothing; `key` is read only by consistent hashing.
    pub fn pick(
        &self,
        key: &[u8],
        max: usize,
        mut accept: impl FnMut(&Upstream) -> bool,
    ) -> Option<Arc<Upstream>> {
        let t = self.table.load();
        self.find(&t, key, max, |i| accept(&t.upstreams[i]))
            .map(|i| Arc::clone(&t.upstreams[i]))
    }

    /// [`Selector::pick`] on the request path: only a backend that is
    /// live and still in `routable` (its service's current set) is offered
    /// to `accept`. When this table was built from that very set (always,
    /// but for the moment between a publication and this selector's
    /// rebuild), membership is known and costs no lookup.
    pub fn pick_routable(
        &self,
        routable: &Arc<Routable>,
        key: &[u8],
        max: usize,
        mut accept: impl FnMut(&Upstream) -> bool,
    ) -> Option<Arc<Upstream>> {
        let t = self.table.load();
        let current = t.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, routable));
        self.find(&t, key, max, |i| {
            let u = &t.upstreams[i];
            u.live() && (current || routable.usable(&u.addr).is_some()) && accept(u)
        })
        .map(|i| Arc::clone(&t.upstreams[i]))
    }

    /// Index of the first accepted candidate.
    fn find(
        &self,
        t: &Table,
        key: &[u8],
        max: usize,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let n = t.backends.len();
        if n == 0 || max == 0 {
            return None;
        }
        let first = match (self.algorithm, &t.ring) {
            (Algorithm::ConsistentHash, Some(ring)) => return walk_ring(t, ring, key, max, accept),
            (Algorithm::LeastLoaded, _) if n <= SCAN_ALL => self.least_of_all(t, Instant::now()),
            (Algorithm::LeastLoaded, _) => self.two_choices(t, Instant::now()),
            _ => {
                let c = self.cursor.fetch_add(1, Ordering::Relaxed) as usize;
                match &t.order {
                    Some(order) => order[c % order.len()] as usize,
                    None => c % n,
                }
            }
        };
        // The choice, then every other backend once, in table order.
        (0..n.min(max))
            .map(|k| (first + k) % n)
            .find(|&i| accept(i))
    }

    /// Small pools: every backend is scored and the lowest per unit of
    /// weight wins; ties go to the first from a random start, so idle
    /// backends share the traffic.
    fn least_of_all(&self, t: &Table, now: Instant) -> usize {
        let n = t.backends.len();
        let r = splitmix64(self.cursor.fetch_add(GOLDEN, Ordering::Relaxed));
        let start = (((r & 0xffff_ffff) * n as u64) >> 32) as usize;
        let fastest = self.score.fastest(t.upstreams.iter().map(|u| &**u));
        let mut best = start;
        let mut best_score = self.score.of(&t.upstreams[start], fastest, now);
        for k in 1..n {
            let i = (start + k) % n;
            let score = self.score.of(&t.upstreams[i], fastest, now);
            let (wi, wb) = (t.backends[i].weight as f64, t.backends[best].weight as f64);
            if score * wb < best_score * wi {
                (best, best_score) = (i, score);
            }
        }
        best
    }

    /// Power of two choices: two distinct random backends, the one with the
    /// lower score per unit of weight wins.
    fn two_choices(&self, t: &Table, now: Instant) -> usize {
        let n = t.backends.len() as u64;
        let r = splitmix64(self.cursor.fetch_add(GOLDEN, Ordering::Relaxed));
        // Multiply-shift: uniform enough in 0..n without a division.
        let a = (((r & 0xffff_ffff) * n) >> 32) as usize;
        if n == 1 {
            return a;
        }
        // Distinct from `a`, so the busiest never wins a draw against itself.
        let b = (((r >> 32) * (n - 1)) >> 32) as usize;
        let b = if b >= a { b + 1 } else { b };
        let fastest = self
            .score
            .fastest([&*t.upstreams[a], &*t.upstreams[b]].into_iter());
        let score = |i: usize| self.score.of(&t.upstreams[i], fastest, now);
        let (wa, wb) = (t.backends[a].weight as f64, t.backends[b].weight as f64);
        // score_a / wa <= score_b / wb, without dividing.
        if score(a) * wb <= score(b) * wa { a } else { b }
    }
}

/// Ketama: the ring's walk from the key's point; a backend met twice in a
/// row (neighbouring points) is offered once.
fn walk_ring(
    t: &Table,
    ring: &Arc<KetamaHashing>,
    key: &[u8],
    max: usize,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let mut it = ring.iter(key);
    let mut last = usize::MAX;
    for _ in 0..max {
        let b = it.next()?;
        let i = t.backends.binary_search_by(|x| x.addr.cmp(&b.addr)).ok()?;
        if i != last && accept(i) {
            return Some(i);
        }
        last = i;
    }
    None
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Pools up to this size are scanned whole by `least_loaded` (the least
/// loaded of all, as least-connections picks); larger ones take two random
/// choices, which stays O(1) and avoids herding at 10,000 backends. With
/// four backends, two random choices still send the degraded one about one
/// request in eight whatever its load (bench part 7).
const SCAN_ALL: usize = 8;

/// SplitMix64's finalizer: a well-mixed 64-bit value per counter step.
fn splitmix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted round robin order: round r holds every backend whose weight is
/// above r, so weight 3 next to weight 1 goes a b a a, not a a a b.
/// `None` when every weight is the same (plain rotation).
fn interleave(weights: &[u32]) -> Option<Vec<u32>> {
    let max = weights.iter().copied().max()?;
    if weights.iter().all(|&w| w == max) {
        return None;
    }
    let total: usize = weights.iter().map(|&w| w as usize).sum();
    let mut order = Vec::with_capacity(total);
    for round in 0..max {
        order.extend(
            weights
                .iter()
                .enumerate()
                .filter(|&(_, &w)| w > round)
                .map(|(i, _)| i as u32),
        );
    }
    Some(order)
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
