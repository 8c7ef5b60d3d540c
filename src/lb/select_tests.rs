use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

/// A fixed moment, so "now" in a test is exactly when its samples were taken.
fn now() -> Instant {
    static AT: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    *AT
}

fn upstream(addr: &str) -> Arc<Upstream> {
    Arc::new(Upstream::new(&Arc::from("s"), "x", addr.parse().unwrap()))
}

fn selector(algorithm: Algorithm, members: &[(&Arc<Upstream>, u32)]) -> Selector {
    let s = Selector::standalone(algorithm);
    s.set(members.iter().map(|(u, w)| (Arc::clone(u), *w)));
    s
}

fn counts(s: &Selector, picks: usize) -> HashMap<SocketAddr, usize> {
    let mut seen = HashMap::new();
    for _ in 0..picks {
        let u = s.pick(b"", 256, |_| true).unwrap();
        *seen.entry(u.addr).or_default() += 1;
    }
    seen
}

#[test]
fn round_robin_visits_each_in_turn() {
    let (a, b, c) = (
        upstream("10.0.0.1:80"),
        upstream("10.0.0.2:80"),
        upstream("10.0.0.3:80"),
    );
    let s = selector(Algorithm::RoundRobin, &[(&a, 1), (&b, 1), (&c, 1)]);
    let seen = counts(&s, 300);
    assert_eq!(seen.values().copied().collect::<Vec<_>>(), [100; 3]);
    // Consecutive picks never repeat a backend while others wait.
    let x = s.pick(b"", 1, |_| true).unwrap().addr;
    let y = s.pick(b"", 1, |_| true).unwrap().addr;
    assert_ne!(x, y);
}

#[test]
fn round_robin_follows_weights_interleaved() {
    let (a, b) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    let s = selector(Algorithm::RoundRobin, &[(&a, 3), (&b, 1)]);
    let seen = counts(&s, 400);
    assert_eq!((seen[&a.addr], seen[&b.addr]), (300, 100));
    assert_eq!(interleave(&[3, 1]), Some(vec![0, 1, 0, 0]));
    assert_eq!(interleave(&[2, 2]), None, "equal weights: plain rotation");
}

#[test]
fn refused_candidates_fall_through_to_each_other_backend_once() {
    let ups: Vec<_> = (1..=5)
        .map(|i| upstream(&format!("10.0.0.{i}:80")))
        .collect();
    let members: Vec<_> = ups.iter().map(|u| (u, 1)).collect();
    for algorithm in [Algorithm::RoundRobin, Algorithm::LeastLoaded] {
        let s = selector(algorithm, &members);
        let mut offered = Vec::new();
        assert!(
            s.pick(b"", 256, |u| {
                offered.push(u.addr);
                false
            })
            .is_none()
        );
        offered.sort();
        offered.dedup();
        assert_eq!(offered.len(), 5, "{algorithm:?}: every backend, once");
        // `max` bounds the visit.
        let mut n = 0;
        let _ = s.pick(b"", 2, |_| {
            n += 1;
            false
        });
        assert_eq!(n, 2);
        // The last acceptable one is found.
        let last = ups[4].addr;
        assert_eq!(s.pick(b"", 256, |u| u.addr == last).unwrap().addr, last);
    }
}

#[test]
fn least_loaded_prefers_idle_backend() {
    let (busy, idle) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    busy.in_flight.store(100, Ordering::Relaxed);
    let s = selector(Algorithm::LeastLoaded, &[(&busy, 1), (&idle, 1)]);
    // Two distinct candidates: the busy one never wins.
    assert_eq!(counts(&s, 1000).get(&idle.addr), Some(&1000));
}

#[test]
fn least_loaded_spreads_over_equal_backends() {
    let ups: Vec<_> = (1..=4)
        .map(|i| upstream(&format!("10.0.0.{i}:80")))
        .collect();
    let members: Vec<_> = ups.iter().map(|u| (u, 1)).collect();
    let s = selector(Algorithm::LeastLoaded, &members);
    let seen = counts(&s, 4000);
    // All idle: random pairs, every backend gets a fair share.
    assert!(
        seen.values().all(|&n| (700..=1300).contains(&n)),
        "{seen:?}"
    );
}

#[test]
fn load_score_weights_in_flight_reported_and_gpu() {
    let u = upstream("10.0.0.1:80");
    u.in_flight.store(2, Ordering::Relaxed);
    u.reported_load.store(3, Ordering::Relaxed);
    u.gpu_usage.store(5_050, Ordering::Relaxed); // 50.5 %
    // The defaults: four points per own request, one per reported, no GPU;
    // + 1 for the response-time factor, which is 1 before any answer.
    assert_eq!(LoadScore::default().of(&u, 0.0, now()), 12.0);
    let gpu = LoadScore {
        in_flight: 1.0,
        reported: 0.0,
        gpu: 2.0,
        latency: 0.0,
    };
    assert_eq!(gpu.of(&u, 0.0, now()), 2.0 + 101.0);
}

#[test]
fn latency_term_multiplies_the_load_by_how_much_slower() {
    let u = upstream("10.0.0.1:80");
    u.in_flight.store(2, Ordering::Relaxed);
    let score = LoadScore {
        latency: 2.0,
        ..LoadScore::default()
    };
    // No answer yet: (8 + 1) × 1.
    assert_eq!(score.of(&u, 1.0, now()), 9.0);
    u.observe_latency(Duration::from_millis(4), now()); // first sample taken whole
    // Within 2× of the fastest (2 ms): no penalty.
    assert_eq!(score.of(&u, 2.0, now()), 9.0);
    // Against a 0.5 ms fastest: (4 / 1)² = 16.
    assert_eq!(score.of(&u, 0.5, now()), 9.0 * 16.0);
    // Then an EWMA with weight 1/8: 4 ms → 4 - 0.5 + 12/8 = 5 ms.
    u.observe_latency(Duration::from_millis(12), now());
    assert_eq!(u.latency_ms(), 5.0);
    // 0 ignores it.
    let queues_only = LoadScore {
        latency: 0.0,
        ..LoadScore::default()
    };
    assert_eq!(queues_only.of(&u, 0.5, now()), 8.0);
    assert_eq!(queues_only.fastest([&*u].into_iter()), 0.0);
    assert_eq!(score.fastest([&*u].into_iter()), 5.0);
}

#[test]
fn least_loaded_with_a_latency_term_spares_the_slow_backend() {
    // `pick` reads the clock: the samples are stamped by it too.
    let (slow, fast) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    slow.observe_latency(Duration::from_millis(40), Instant::now());
    fast.observe_latency(Duration::from_millis(4), Instant::now());
    fast.in_flight.store(2, Ordering::Relaxed);
    let members = [(&slow, 1), (&fast, 1)];
    // Queues alone: the idle slow backend wins.
    let plain = selector(Algorithm::LeastLoaded, &members).with_load_score(LoadScore {
        latency: 0.0,
        ..LoadScore::default()
    });
    assert_eq!(plain.pick(b"", 1, |_| true).unwrap().addr, slow.addr);
    // (0+1)×(40/8)² = 25 against (8+1)×1 = 9: the fast one, though busier...
    let s = selector(Algorithm::LeastLoaded, &members).with_load_score(LoadScore {
        latency: 2.0,
        ..LoadScore::default()
    });
    assert_eq!(s.pick(b"", 1, |_| true).unwrap().addr, fast.addr);
    // ...until it holds four requests more: (24+1)×1 = 25 ties, 29 loses.
    fast.in_flight.store(7, Ordering::Relaxed);
    assert_eq!(s.pick(b"", 1, |_| true).unwrap().addr, slow.addr);
}

#[test]
fn an_unrefreshed_latency_verdict_fades() {
    let (slow, fast) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    let t0 = now();
    slow.observe_latency(Duration::from_millis(40), t0);
    fast.observe_latency(Duration::from_millis(4), t0);
    let score = LoadScore {
        latency: 2.0,
        ..LoadScore::default()
    };
    let half = crate::registry::LATENCY_HALF_LIFE;
    // Fresh: (0+1) × (40 / 8)² = 25.
    assert_eq!(score.of(&slow, 4.0, t0), 25.0);
    // One half-life without an answer: the excess 5 − 1 halves, (1 + 2)² = 9.
    assert!((score.of(&slow, 4.0, t0 + half) - 9.0).abs() < 1e-9);
    // Two: (1 + 1)² = 4; long silence: no penalty left.
    assert!((score.of(&slow, 4.0, t0 + 2 * half) - 4.0).abs() < 1e-9);
    assert!(score.of(&slow, 4.0, t0 + 5 * half) > 1.0);
    assert_eq!(score.of(&slow, 4.0, t0 + 6 * half), 1.0);
    // A fast backend's score never fades below its load (nothing to fade).
    assert_eq!(score.of(&fast, 4.0, t0 + 30 * half), 1.0);
}

#[test]
fn the_first_answer_after_a_silence_outweighs_the_old_average() {
    let u = upstream("10.0.0.1:80");
    let t0 = now();
    u.observe_latency(Duration::from_millis(40), t0);
    // Back to back: the usual 1/8 weight, 40 − 5 + 0.5 = 35.5 ms.
    u.observe_latency(Duration::from_millis(4), t0);
    assert_eq!(u.latency_ms(), 35.5);
    // Six half-lives later it has recovered: 4 ms weighs 1 − 1/64.
    let later = t0 + 6 * crate::registry::LATENCY_HALF_LIFE;
    u.observe_latency(Duration::from_millis(4), later);
    let want = 35.5 + (4.0 - 35.5) * (1.0 - 1.0 / 64.0);
    assert!((u.latency_ms() - want).abs() < 0.01, "{}", u.latency_ms());
    assert_eq!(u.latency_trust(later), 1.0);
}

#[test]
fn a_spared_backend_is_tried_again_once_its_verdict_fades() {
    let (slow, fast) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    let t0 = now();
    slow.observe_latency(Duration::from_millis(40), t0);
    fast.observe_latency(Duration::from_millis(4), t0);
    let members = [(&slow, 1), (&fast, 1)];
    let s = selector(Algorithm::LeastLoaded, &members).with_load_score(LoadScore {
        latency: 2.0,
        ..LoadScore::default()
    });
    // One request in flight on the fast backend: (4+1) = 5 against 25.
    fast.in_flight.store(1, Ordering::Relaxed);
    let pick = |at| {
        let t = s.table.load();
        (
            t.upstreams[s.least_of_all(&t, at)].addr,
            t.upstreams[s.two_choices(&t, at)].addr,
        )
    };
    assert_eq!(pick(t0), (fast.addr, fast.addr));
    // Two half-lives on, the slow one's 4 is below 5: it is re-measured.
    let later = t0 + 2 * crate::registry::LATENCY_HALF_LIFE;
    assert_eq!(pick(later), (slow.addr, slow.addr));
    // Idle both: a minute on, the verdict is gone and they share the
    // traffic (while it stands, the slow one never wins a tie).
    fast.in_flight.store(0, Ordering::Relaxed);
    let shares = |at| {
        (0..200)
            .filter(|_| {
                let t = s.table.load();
                t.upstreams[s.least_of_all(&t, at)].addr == slow.addr
            })
            .count()
    };
    assert_eq!(shares(t0 + 5 * crate::registry::LATENCY_HALF_LIFE), 0);
    let n = shares(t0 + 6 * crate::registry::LATENCY_HALF_LIFE);
    assert!((50..=150).contains(&n), "{n} of 200");
}

#[test]
fn idle_backends_of_similar_speed_share_the_traffic() {
    let ups: Vec<_> = (1..=3)
        .map(|i| upstream(&format!("10.0.0.{i}:80")))
        .collect();
    // 1.0, 1.5 and 1.9 ms: all within 2× of the fastest.
    for (u, us) in ups.iter().zip([1000, 1500, 1900]) {
        u.observe_latency(Duration::from_micros(us), Instant::now());
    }
    let members: Vec<_> = ups.iter().map(|u| (u, 1)).collect();
    let s = selector(Algorithm::LeastLoaded, &members);
    let mut seen: HashMap<SocketAddr, u32> = HashMap::new();
    for _ in 0..300 {
        *seen
            .entry(s.pick(b"", 1, |_| true).unwrap().addr)
            .or_default() += 1;
    }
    assert!(seen.values().all(|&n| n > 50), "{seen:?}");
}

#[test]
fn a_stale_table_offers_only_members_of_the_current_set() {
    let (a, b) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    let s = selector(Algorithm::RoundRobin, &[(&a, 1), (&b, 1)]);
    // Built by `set`, not from this set: membership is looked up, and an
    // empty set has no members.
    let empty = Arc::new(crate::registry::Routable::default());
    assert!(s.pick_routable(&empty, b"", 256, |_| true).is_none());
}

#[test]
fn least_loaded_with_a_gpu_term_avoids_the_busy_gpu() {
    let (hot, cool) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    hot.gpu_usage.store(9_500, Ordering::Relaxed);
    cool.gpu_usage.store(1_000, Ordering::Relaxed);
    cool.in_flight.store(3, Ordering::Relaxed);
    let members = [(&hot, 1), (&cool, 1)];
    // Without the GPU term, in-flight decides: the hot GPU looks idle.
    let plain = selector(Algorithm::LeastLoaded, &members);
    assert_eq!(plain.pick(b"", 1, |_| true).unwrap().addr, hot.addr);
    let gpu = selector(Algorithm::LeastLoaded, &members).with_load_score(LoadScore {
        gpu: 1.0,
        ..LoadScore::default()
    });
    assert_eq!(gpu.pick(b"", 1, |_| true).unwrap().addr, cool.addr);
}

#[test]
fn least_loaded_divides_by_weight() {
    let (heavy, light) = (upstream("10.0.0.1:80"), upstream("10.0.0.2:80"));
    heavy.in_flight.store(5, Ordering::Relaxed); // 20 points over weight 10
    light.in_flight.store(1, Ordering::Relaxed); // 4 points over weight 1
    let s = selector(Algorithm::LeastLoaded, &[(&heavy, 10), (&light, 1)]);
    assert_eq!(s.pick(b"", 1, |_| true).unwrap().addr, heavy.addr);
}

#[test]
fn load_score_parses_from_the_flag() {
    let s: LoadScore = "gpu=0.5, in_flight=2".parse().unwrap();
    assert_eq!((s.in_flight, s.reported, s.gpu), (2.0, 1.0, 0.5));
    let s: LoadScore = "latency=0.25".parse().unwrap();
    assert_eq!((s.in_flight, s.latency), (4.0, 0.25));
    assert!("latency=-1".parse::<LoadScore>().is_err());
    assert!("gpu=-1".parse::<LoadScore>().is_err());
    assert!("cpu=1".parse::<LoadScore>().is_err());
    assert!("gpu".parse::<LoadScore>().is_err());
    assert!("in_flight=NaN".parse::<LoadScore>().is_err());
}

#[test]
fn consistent_hash_keeps_a_key_on_one_backend() {
    let ups: Vec<_> = (1..=5)
        .map(|i| upstream(&format!("10.0.0.{i}:80")))
        .collect();
    let members: Vec<_> = ups.iter().map(|u| (u, 1)).collect();
    let s = selector(Algorithm::ConsistentHash, &members);
    assert!(s.uses_key());
    let first = s.pick(b"user-42", 256, |_| true).unwrap().addr;
    for _ in 0..10 {
        assert_eq!(s.pick(b"user-42", 256, |_| true).unwrap().addr, first);
    }
    // The same mapping as pingora's ketama over the same set.
    let set: BTreeSet<Backend> = ups
        .iter()
        .map(|u| Backend::new(&u.addr.to_string()).unwrap())
        .collect();
    let ring = Arc::new(KetamaHashing::build(&set));
    let want = ring
        .iter(b"user-42")
        .next()
        .unwrap()
        .addr
        .as_inet()
        .copied();
    assert_eq!(Some(first), want);
    // Refusing the owner moves the key to another backend.
    let next = s.pick(b"user-42", 256, |u| u.addr != first).unwrap().addr;
    assert_ne!(next, first);
    // Different keys spread.
    let spread: BTreeSet<_> = (0..200)
        .map(|k| {
            s.pick(format!("k{k}").as_bytes(), 256, |_| true)
                .unwrap()
                .addr
        })
        .collect();
    assert!(spread.len() >= 4);
}

#[test]
fn empty_and_replaced_sets() {
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::LeastLoaded,
        Algorithm::ConsistentHash,
    ] {
        let s = Selector::standalone(algorithm);
        assert!(s.pick(b"k", 256, |_| true).is_none());
        let a = upstream("10.0.0.1:80");
        s.set([(Arc::clone(&a), 1), (Arc::clone(&a), 1)]);
        assert_eq!(s.pick(b"k", 256, |_| true).unwrap().addr, a.addr);
        s.set([]);
        assert!(s.pick(b"k", 256, |_| true).is_none());
    }
}

#[test]
fn least_loaded_scores_a_small_pool_whole() {
    let ups: Vec<_> = (1..=4)
        .map(|i| upstream(&format!("10.0.0.{i}:80")))
        .collect();
    for (u, load) in ups.iter().zip([3, 1, 2, 5]) {
        u.in_flight.store(load, Ordering::Relaxed);
    }
    let members: Vec<_> = ups.iter().map(|u| (u, 1)).collect();
    let s = selector(Algorithm::LeastLoaded, &members);
    // Two random choices would take 10.0.0.3 or 10.0.0.1 now and then.
    assert_eq!(counts(&s, 500).get(&ups[1].addr), Some(&500));
    // The reported load counts too: every replica's requests.
    ups[1].reported_load.store(40, Ordering::Relaxed);
    assert_eq!(counts(&s, 500).get(&ups[2].addr), Some(&500));
}

#[test]
fn least_loaded_uses_two_choices_past_eight() {
    let ups: Vec<_> = (1..=9)
        .map(|i| upstream(&format!("10.0.0.{i}:80")))
        .collect();
    for (k, u) in ups.iter().enumerate() {
        u.in_flight.store(k as u64, Ordering::Relaxed);
    }
    let members: Vec<_> = ups.iter().map(|u| (u, 1)).collect();
    let seen = counts(&selector(Algorithm::LeastLoaded, &members), 2000);
    // Not only the least loaded: any but the busiest can win a draw.
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(!seen.contains_key(&ups[8].addr));
    assert!(seen[&ups[0].addr] > seen[&ups[4].addr]);
}
