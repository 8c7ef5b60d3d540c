//! The request path's per-request work allocates nothing (selection,
//! metrics) or exactly the header value it produces (`X-Forwarded-For`).
//!
//! A counting global allocator counts the allocations each thread makes
//! while its `COUNTING` is on; the harness's other threads are not
//! counted. Counts, never timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use roster::config::Algorithm;
use roster::config::LoadScore;
use roster::lb::forwarded::forwarded_for;
use roster::lb::select::Selector;
use roster::registry::{Routable, Upstream};
use roster::telemetry::{CodeClass, LbMetrics};

struct Counting;

thread_local! {
    /// Whether this thread counts, and its count: per thread, since the
    /// harness runs the tests of this file in parallel.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator also runs while thread locals are torn down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting touches only const-initialized thread locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

fn pool(n: usize, weighted: bool) -> Vec<(Arc<Upstream>, u32)> {
    (0..n)
        .map(|i| {
            let addr = format!("10.{}.{}.{}:8080", i / 65536, i / 256 % 256, i % 256);
            let u = Arc::new(Upstream::new(
                &Arc::from("s"),
                &format!("b{i}"),
                addr.parse().unwrap(),
            ));
            u.in_flight.store((i % 7) as u64, Ordering::Relaxed);
            (u, if weighted { 1 + (i % 5) as u32 } else { 1 })
        })
        .collect()
}

const PICKS: usize = 10_000;

#[test]
fn a_pick_allocates_nothing() {
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::LeastLoaded,
        Algorithm::ConsistentHash,
    ] {
        for (n, weighted) in [(1, false), (4, false), (10_000, false), (1_000, true)] {
            let s = Selector::standalone(algorithm).with_load_score(LoadScore {
                gpu: 1.0,
                latency: 1.0,
                ..LoadScore::default()
            });
            s.set(pool(n, weighted));
            let stale = Arc::new(Routable::default());
            let keys: Vec<Vec<u8>> = (0..64).map(|k| format!("key-{k}").into_bytes()).collect();
            // Warm-up: the first load of the table on this thread may set up
            // arc-swap's thread-local state.
            for k in &keys {
                assert!(s.pick(k, 256, |_| true).is_some());
            }
            let mut picked = 0usize;
            let counted = allocations(|| {
                for i in 0..PICKS {
                    let key = &keys[i % keys.len()];
                    // The proxy's filter: skip one address, as after a failed try.
                    if let Some(u) = s.pick(key, 256, |u| {
                        n == 1 || (i % 3 != 0 && u.addr.port() == 8080)
                    }) {
                        picked += usize::from(u.live());
                    }
                    // The request path's pick against a set the table was
                    // not built from: membership looked up per candidate.
                    if s.pick_routable(&stale, key, 256, |_| true).is_some() {
                        picked += 1;
                    }
                }
            });
            assert!(picked > 0);
            assert_eq!(
                counted, 0,
                "{algorithm:?} over {n} backends (weighted {weighted}): {counted} allocations in {PICKS} picks"
            );
        }
    }
}

#[test]
fn counting_a_request_allocates_nothing_after_the_first() {
    let m = LbMetrics::new();
    let u = Upstream::new(&Arc::from("s"), "b", "10.0.0.1:80".parse().unwrap());
    let classes = [200, 404, 503, 0].map(CodeClass::of);
    for &c in &classes {
        u.requests.inc(&m.requests, &u.service, &u.label, c);
        m.observe_duration(c, 0.001);
    }
    let counted = allocations(|| {
        for i in 0..PICKS {
            let c = classes[i % classes.len()];
            u.requests.inc(&m.requests, &u.service, &u.label, c);
            m.observe_duration(c, 0.001);
        }
    });
    assert_eq!(counted, 0, "{counted} allocations in {PICKS} requests");
}

#[test]
fn forwarded_for_allocates_only_its_value() {
    let ip = "192.168.100.200".parse().unwrap();
    let v6 = "fd00::1234:5678".parse().unwrap();
    let _ = forwarded_for(None, ip);
    let counted = allocations(|| {
        for _ in 0..1000 {
            assert_eq!(forwarded_for(None, ip).len(), 15);
            assert!(!forwarded_for(None, v6).is_empty());
        }
    });
    // One `Bytes` per header value, nothing in between.
    assert_eq!(counted, 2000);
}
