//! What the request path reads: per-backend counters ([`Upstream`]) and a
//! service's routable set ([`Routable`](crate::registry::Routable)), published whole on every change.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pingora::lb::Backend;

/// How fast an unrefreshed response-time estimate fades: its weight halves
/// every 10 s without an answer (the decay linkerd's and Finagle's peak-EWMA
/// balancers use). A backend avoided for being slow thus gets a trickle of
/// requests again within seconds and is re-measured, instead of keeping an
/// old verdict for as long as nobody sends it anything.
pub const LATENCY_HALF_LIFE: Duration = Duration::from_secs(10);
const HALF_LIFE_MS: u64 = LATENCY_HALF_LIFE.as_millis() as u64;

/// The clock the estimates are stamped with; a minute before its first use,
/// so an instant taken just before that (a request's start) is not clamped.
static EPOCH: LazyLock<Instant> = LazyLock::new(|| {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(60)).unwrap_or(now)
});

fn epoch_ms(at: Instant) -> u64 {
    let d = at.saturating_duration_since(*EPOCH);
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// ½^(silence / half-life).
fn fade(silence_ms: u64) -> f64 {
    (-(silence_ms as f64) / HALF_LIFE_MS as f64).exp2()
}

/// Per-backend counters on the request path, shared by every snapshot that
/// contains the backend.
#[derive(Debug)]
pub struct Upstream {
    pub id: String,
    pub service: Arc<str>,
    pub addr: SocketAddr,
    /// Address as a metric label, formatted once.
    pub label: String,
    /// What the backend registered as speaking; None = its service's.
    pub protocol: Option<crate::protocol::Protocol>,
    /// Requests this LB has in flight to the backend.
    pub in_flight: AtomicU64,
    /// Load the backend reported in its vitals (requests + backoff).
    pub reported_load: AtomicU64,
    /// GPU usage the backend reported, in hundredths of a percent
    /// (0–10,000); `lb.load_score.gpu` weighs it.
    pub gpu_usage: AtomicU32,
    /// EWMA of this LB's response times from the backend, in µs
    /// (`lb.load_score.latency` weighs it).
    latency_us: AtomicU64,
    /// When the last answer was folded in, in ms after [`EPOCH`]: an
    /// estimate nobody has refreshed fades (see [`LATENCY_HALF_LIFE`]).
    latency_at_ms: AtomicU64,
    /// Consecutive failures seen on live traffic (connect errors, 5xx).
    pub failures: AtomicU32,
    /// This backend's request counters: telemetry's handle on its series,
    /// resolved on first use and kept here on purpose, so that counting a
    /// request never hashes label values (bench part 6). Telemetry owns the
    /// series; the publisher forgets them when the backend leaves.
    pub requests: crate::telemetry::BackendRequests,
    /// Set the moment the entry leaves or says not ready, before the next
    /// publication: the request path skips it at once (read-your-writes for
    /// DELETE, expiry and `ready: false`) while rebuilds stay coalesced.
    withdrawn: AtomicBool,
}

impl Upstream {
    pub fn new(service: &Arc<str>, id: &str, addr: SocketAddr) -> Self {
        Self {
            id: id.into(),
            service: Arc::clone(service),
            addr,
            label: addr.to_string(),
            protocol: None,
            in_flight: AtomicU64::new(0),
            reported_load: AtomicU64::new(0),
            gpu_usage: AtomicU32::new(0),
            latency_us: AtomicU64::new(0),
            latency_at_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            requests: Default::default(),
            withdrawn: AtomicBool::new(false),
        }
    }

    /// The backend's registered protocol.
    pub fn with_protocol(mut self, protocol: Option<crate::protocol::Protocol>) -> Self {
        self.protocol = protocol;
        self
    }

    /// Fold one answer's response time, received at `now`, into the EWMA.
    /// Weight 1/8 while answers keep coming (a backend that turns slow is
    /// seen within a few of them); after a silence the new answer weighs
    /// more, `1 − ½^(silence / half-life)`, so a backend that was spared
    /// for being slow and has recovered is judged by its first new answer,
    /// not by the old average. Racing updates from several threads may
    /// lose a sample; it is an estimate.
    pub fn observe_latency(&self, took: Duration, now: Instant) {
        // Not `as_micros` (a u128 division on every answer).
        let sample = took
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(took.subsec_micros()));
        let now_ms = epoch_ms(now);
        let old = self.latency_us.load(Ordering::Relaxed);
        let silence = now_ms.saturating_sub(self.latency_at_ms.load(Ordering::Relaxed));
        let new = if old == 0 {
            sample
        } else if silence < HALF_LIFE_MS / 5 {
            // 1 − ½^0.2 ≈ 0.13: the fixed weight is as good, without `exp2`.
            old - old / 8 + sample / 8
        } else {
            let w = 1.0 - fade(silence);
            (old as f64 + (sample as f64 - old as f64) * w) as u64
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
        self.latency_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The response-time EWMA in ms (0 before the first answer).
    pub fn latency_ms(&self) -> f64 {
        self.latency_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// How much of the estimate still stands at `now`: 1 right after an
    /// answer, halving every [`LATENCY_HALF_LIFE`] without one, and none
    /// after six (a minute): an exact 0, so an idle backend that was slow
    /// ties with idle fast ones again and gets its share of light traffic,
    /// which re-measures it.
    pub fn latency_trust(&self, now: Instant) -> f64 {
        let silence = epoch_ms(now).saturating_sub(self.latency_at_ms.load(Ordering::Relaxed));
        if silence >= 6 * HALF_LIFE_MS {
            return 0.0;
        }
        fade(silence)
    }

    /// Still in the registry and not withdrawn since the last publication.
    pub fn live(&self) -> bool {
        !self.withdrawn.load(Ordering::Acquire)
    }

    pub(super) fn withdraw(&self, yes: bool) {
        self.withdrawn.store(yes, Ordering::Release);
    }
}

/// One service's routable set, published whole on every change.
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
    /// Build from the chosen upstreams and their weights.
    pub(super) fn build(chosen: Vec<(Arc<Upstream>, u32)>, panic: bool) -> Self {
        let mut r = Self {
            panic,
            ..Self::default()
        };
        let mut members = Vec::with_capacity(chosen.len());
        for (u, weight) in chosen {
            r.backends.insert(Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(u.addr),
                weight: weight as usize,
                ext: Default::default(),
            });
            r.upstreams.insert(u.addr, Arc::clone(&u));
            members.push(u);
        }
        members.sort_unstable_by_key(|u| u.addr);
        r.addresses = members.iter().map(|u| u.label.clone()).collect();
        r.members = members;
        r.digest = digest(r.addresses.iter().map(String::as_str));
        r
    }

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
pub fn digest<'a>(sorted: impl Iterator<Item = &'a str>) -> u32 {
    let mut h = fnv::FnvHasher::default();
    for a in sorted {
        h.write(a.as_bytes());
        h.write_u8(b'\n');
    }
    let full = h.finish();
    (full ^ (full >> 32)) as u32
}
