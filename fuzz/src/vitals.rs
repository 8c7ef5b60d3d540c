//! A vitals `/metrics` answer: parsed as the checker parses it
//! (`fetch::get_json`), judged ([`judge`]), applied to a registered
//! entry, published, and scored by `least_loaded`.

use std::time::Instant;

use roster::config::LoadScore;
use roster::health::judge;
use roster::protocol::Vitals;
use roster::registry::CheckResult;

use crate::util;

pub fn run(data: &[u8]) {
    // `fetch::get_json` on the body of a 2xx answer.
    let Ok(vitals) = serde_json::from_slice::<Vitals>(data) else {
        return;
    };
    let now = Instant::now();
    let registry = util::registry("default");
    let target = util::register(&registry, &util::backend("b1", "10.0.0.2:8080"), now);
    let result = judge(vitals.clone(), "b1");
    let stranger = vitals.id.as_deref().is_some_and(|id| id != "b1");
    match &result {
        CheckResult::Stranger(_) => assert!(stranger),
        CheckResult::Ready(_) => assert!(!stranger && vitals.ready),
        CheckResult::NotReady(_) => assert!(!stranger && !vitals.ready),
        CheckResult::Failed(_) => panic!("vitals that parse never fail the check"),
    }
    // Enough checks in a row for the entry to become healthy.
    for _ in 0..4 {
        registry.apply_check(&target, result.clone());
    }
    let slot = registry
        .publish(&target.service)
        .expect("a service with an entry has a slot");
    let routable = slot.routable();
    assert_eq!(
        routable.upstreams.is_empty(),
        !matches!(result, CheckResult::Ready(_)),
        "only ready vitals make the entry routable"
    );
    let scores = [
        LoadScore::default(),
        LoadScore {
            gpu: 1.0,
            ..LoadScore::default()
        },
    ];
    for score in scores {
        let fastest = score.fastest(routable.upstreams.values().map(|u| &**u));
        for u in routable.upstreams.values() {
            let s = score.of(u, fastest, now);
            assert!(s.is_finite() && s >= 0.0, "score {s} from {vitals:?}");
        }
    }
    // GET /registry shows the vitals.
    let view = serde_json::to_vec(&registry.view(None, now)).expect("GET /registry serializes");
    serde_json::from_slice::<serde_json::Value>(&view).expect("and parses back");
}
