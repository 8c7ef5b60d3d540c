//! The registry's unit tests: fence, leases, states, digest, ejection,
//! panic mode, services and drains.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::protocol::{Registration, Vitals};

fn policy() -> Policy {
    Policy {
        allowed_networks: vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ],
        max_backends: 2,
        lease_ttl: Duration::from_secs(90),
        default_service: "default".into(),
    }
}

fn reg(id: &str, address: &str) -> Registration {
    Registration {
        id: id.into(),
        address: address.into(),
        metrics_port: 9090,
        weight: 1,
        service: None,
        protocol: None,
    }
}

/// The specs of a config with this panic threshold (checks: the
/// defaults, /metrics every 5 s, 2 s timeout).
fn rules(panic_percent: f64) -> crate::config::ServiceSpecs {
    let mut c = crate::config::Config::default();
    c.health_check.panic_threshold = panic_percent;
    c.service_specs()
}

/// A registry and the changes it announces.
struct Fixture {
    r: Registry,
    changes: mpsc::UnboundedReceiver<Change>,
}

impl Fixture {
    fn new(policy: Policy, unhealthy: u32, panic_percent: f64) -> Self {
        let thresholds = Thresholds {
            unhealthy,
            healthy: 1,
        };
        let r = Registry::new(policy, thresholds, rules(panic_percent));
        let changes = r.subscribe();
        Self { r, changes }
    }

    /// Register and return the target announced for it, if any.
    fn register(
        &mut self,
        v: Valid,
        now: Instant,
    ) -> Result<(Outcome, Option<Target>), RegisterError> {
        let out = self.r.register(v, now)?;
        let mut target = None;
        while let Ok(c) = self.changes.try_recv() {
            if let Change::Added(t) = c {
                target = Some(t);
            }
        }
        Ok((out.outcome, target))
    }

    fn publish(&self) -> Arc<Routable> {
        let slot = self.r.publish(&Arc::from("default")).expect("default slot");
        slot.routable().clone()
    }
}

fn registry() -> Fixture {
    Fixture::new(policy(), 2, 0.0)
}

fn ready() -> CheckResult {
    CheckResult::Ready(Vitals {
        ready: true,
        ..Default::default()
    })
}

#[test]
fn validation_names_fields() {
    let p = policy();
    let err = |r: Registration| p.validate(&r).unwrap_err().to_string();
    assert!(err(reg("", "10.0.0.1:80")).starts_with("id:"));
    assert!(err(reg("a b", "10.0.0.1:80")).starts_with("id:"));
    assert!(err(reg(&"a".repeat(254), "10.0.0.1:80")).starts_with("id:"));
    assert!(err(reg("a", "10.0.0.1")).starts_with("address:"));
    assert!(err(reg("a", "10.0.0.1:0")).starts_with("address:"));
    let mut r = reg("a", "10.0.0.1:80");
    r.metrics_port = 0;
    assert!(err(r).starts_with("metrics_port:"));
    let mut r = reg("a", "10.0.0.1:80");
    r.weight = 0;
    assert!(err(r).starts_with("weight:"));
    let mut r = reg("a", "10.0.0.1:80");
    r.service = Some("a/b".into());
    let e = p.validate(&r).unwrap_err();
    assert_eq!(e.field(), Some(Field::Service));
    assert!(e.to_string().starts_with("service:"));
    assert!(p.validate(&reg("a.b_c-1", "10.0.0.1:80")).is_ok());
}

#[test]
fn service_defaults_and_can_be_required() {
    let v = policy().validate(&reg("a", "10.0.0.1:80")).unwrap();
    assert_eq!((&*v.service, v.named_service), ("default", false));
    let p = Policy {
        default_service: String::new(),
        ..policy()
    };
    let e = p.validate(&reg("a", "10.0.0.1:80")).unwrap_err();
    assert_eq!(e.field(), Some(Field::Service));
}

#[test]
fn fence_refuses_special_addresses_unless_listed() {
    let p = Policy {
        allowed_networks: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ..policy()
    };
    for a in [
        "127.0.0.1:80",
        "169.254.169.254:80",
        "224.0.0.1:80",
        "0.0.0.0:80",
        "255.255.255.255:80",
        "[::1]:80",
        "[fe80::1]:80",
        "[::ffff:127.0.0.1]:80",
    ] {
        let e = p.validate(&reg("a", a)).unwrap_err();
        assert!(matches!(e, RegisterError::Special { .. }), "{a}: {e}");
    }
    assert!(p.validate(&reg("a", "8.8.8.8:80")).is_ok());
    // Listed explicitly: allowed.
    assert!(policy().validate(&reg("a", "127.0.0.2:80")).is_ok());
    let e = policy().validate(&reg("a", "192.168.1.1:80")).unwrap_err();
    assert!(matches!(e, RegisterError::Unlisted { .. }));
}

#[test]
fn register_renew_replace_and_cap() {
    let mut f = registry();
    let now = Instant::now();
    let v = |id, a| policy().validate(&reg(id, a)).unwrap();
    let (o, t) = f.register(v("a", "10.0.0.1:80"), now).unwrap();
    assert_eq!(o, Outcome::Created);
    assert!(t.is_some());
    let (o, t) = f.register(v("a", "10.0.0.1:80"), now).unwrap();
    assert_eq!(o, Outcome::Renewed);
    assert!(t.is_none(), "renewal keeps the scheduled checks");
    let (o, t) = f.register(v("a", "10.0.0.9:80"), now).unwrap();
    assert_eq!(o, Outcome::Renewed);
    assert!(t.is_some(), "a new address is checked afresh");
    f.register(v("b", "10.0.0.2:80"), now).unwrap();
    assert_eq!(
        f.register(v("c", "10.0.0.3:80"), now).unwrap_err(),
        RegisterError::Full(2)
    );
    // Renewals still succeed at the cap.
    assert!(f.register(v("b", "10.0.0.2:80"), now).is_ok());
    // A new id on a held address evicts the holder, even at the cap.
    f.r.deregister("default", "b", now);
    f.register(v("c", "10.0.0.9:80"), now).unwrap();
    assert!(f.r.view(None, now).backends.iter().all(|e| e.id != "a"));
}

#[test]
fn protocol_rides_to_the_upstream() {
    use crate::protocol::Protocol;
    let mut f = registry();
    let now = Instant::now();
    let mut g = reg("a", "10.0.0.1:80");
    g.protocol = Some(Protocol::H2c);
    f.register(policy().validate(&g).unwrap(), now).unwrap();
    let proto = |f: &Fixture| {
        f.r.table
            .read()
            .get("default", "a")
            .map(|e| e.upstream.protocol)
    };
    assert_eq!(proto(&f), Some(Some(Protocol::H2c)));
    g.protocol = None;
    let (_, t) = f.register(policy().validate(&g).unwrap(), now).unwrap();
    assert!(
        t.is_some(),
        "a changed protocol is a new upstream, checked afresh"
    );
    assert_eq!(proto(&f), Some(None));
}

#[test]
fn leases_expire() {
    let mut f = registry();
    let now = Instant::now();
    f.register(policy().validate(&reg("a", "10.0.0.1:80")).unwrap(), now)
        .unwrap();
    assert!(f.r.expire(now + Duration::from_secs(89)).is_empty());
    assert_eq!(f.r.expire(now + Duration::from_secs(90)), ["a"]);
    assert!(f.r.is_empty());
}

#[test]
fn state_machine_follows_thresholds() {
    let mut f = registry();
    let now = Instant::now();
    let (_, t) = f
        .register(policy().validate(&reg("a", "10.0.0.1:80")).unwrap(), now)
        .unwrap();
    let t = t.unwrap();
    assert!(
        f.publish().addresses.is_empty(),
        "unchecked is not routable"
    );
    f.r.apply_check(&t, ready());
    assert_eq!(f.publish().addresses, ["10.0.0.1:80"]);
    f.r.apply_check(&t, CheckResult::Failed("x".into()));
    assert_eq!(f.publish().addresses.len(), 1, "one failure is tolerated");
    f.r.apply_check(&t, CheckResult::Failed("x".into()));
    assert!(f.publish().addresses.is_empty(), "two failures eject");
    f.r.apply_check(&t, ready());
    assert_eq!(f.publish().addresses.len(), 1, "healthy_threshold=1");
    f.r.apply_check(&t, CheckResult::NotReady(Vitals::default()));
    assert!(
        f.publish().addresses.is_empty(),
        "ready=false is out at once"
    );
    // Stale results for a replaced entry are ignored.
    let stale = Target {
        generation: 0,
        ..t.clone()
    };
    assert!(f.r.apply_check(&stale, ready()).is_none());
}

#[test]
fn digest_is_order_independent_and_changes() {
    let mut a = registry();
    let mut b = registry();
    let now = Instant::now();
    for (f, ids) in [(&mut a, ["x", "y"]), (&mut b, ["y", "x"])] {
        for id in ids {
            let addr = if id == "x" {
                "10.0.0.1:80"
            } else {
                "10.0.0.2:80"
            };
            let (_, t) = f
                .register(policy().validate(&reg(id, addr)).unwrap(), now)
                .unwrap();
            f.r.apply_check(&t.unwrap(), ready());
        }
    }
    let (da, db) = (a.publish().digest, b.publish().digest);
    assert_eq!(da, db);
    a.r.deregister("default", "x", now);
    assert_ne!(a.publish().digest, da);
}

#[test]
fn ejection_grows_caps_and_resets() {
    let mut f = registry();
    let t0 = Instant::now();
    let (_, t) = f
        .register(policy().validate(&reg("a", "10.0.0.1:80")).unwrap(), t0)
        .unwrap();
    f.r.apply_check(&t.unwrap(), ready());
    let up = Arc::clone(&f.publish().upstreams[&"10.0.0.1:80".parse().unwrap()]);
    let (base, max) = (Duration::from_secs(10), Duration::from_secs(35));
    let mut now = t0;
    let mut lengths = Vec::new();
    for _ in 0..4 {
        let len = f.r.eject(&up, "x".into(), now, base, max).unwrap();
        assert!(
            f.r.eject(&up, "x".into(), now, base, max).is_none(),
            "already ejected"
        );
        assert!(f.publish().addresses.is_empty(), "ejected is not routable");
        assert!(f.r.view(None, now).backends[0].ejected.is_some());
        now += len;
        assert_eq!(f.r.release_ejections(now), ["a"]);
        assert_eq!(f.publish().addresses.len(), 1, "back after the ejection");
        lengths.push(len.as_secs());
    }
    assert_eq!(lengths, [10, 20, 35, 35], "doubles, capped at max");
    // A quiet spell longer than 2×max resets the multiplier.
    now += max * 2 + Duration::from_secs(1);
    assert_eq!(f.r.eject(&up, "x".into(), now, base, max), Some(base));
}

#[test]
fn panic_mode_routes_to_verified_ready_backends() {
    let p = Policy {
        max_backends: 10,
        ..policy()
    };
    let mut f = Fixture::new(p.clone(), 1, 50.0);
    let now = Instant::now();
    let mut targets = Vec::new();
    for (id, a) in [
        ("a", "10.0.0.1:80"),
        ("b", "10.0.0.2:80"),
        ("c", "10.0.0.3:80"),
        ("d", "10.0.0.4:80"),
    ] {
        let (_, t) = f.register(p.validate(&reg(id, a)).unwrap(), now).unwrap();
        targets.push(t.unwrap());
    }
    for t in &targets[..3] {
        f.r.apply_check(t, ready());
    }
    // d was never verified; c goes not-ready; a and b fail.
    f.r.apply_check(&targets[2], CheckResult::NotReady(Vitals::default()));
    assert!(!f.publish().panic, "2 of 4 healthy is not below 50%");
    f.r.apply_check(&targets[0], CheckResult::Failed("down".into()));
    let p = f.publish();
    assert!(p.panic, "1 of 4 healthy");
    assert_eq!(p.addresses, ["10.0.0.1:80", "10.0.0.2:80"]);
    assert!(f.r.view(None, now).panic);
    // A stranger is never used, even in panic.
    f.r.apply_check(&targets[0], CheckResult::Stranger("other id".into()));
    assert_eq!(f.publish().addresses, ["10.0.0.2:80"]);
}

/// Just after a start every entry is unchecked: the first good answer
/// must not read as "1 of N healthy" and trip panic mode.
#[test]
fn unchecked_backends_do_not_count_toward_panic() {
    let p = Policy {
        max_backends: 10,
        ..policy()
    };
    let mut f = Fixture::new(p.clone(), 1, 50.0);
    let now = Instant::now();
    let mut targets = Vec::new();
    for i in 1..=4 {
        let r = reg(&format!("b{i}"), &format!("10.0.0.{i}:80"));
        let (_, t) = f.register(p.validate(&r).unwrap(), now).unwrap();
        targets.push(t.unwrap());
    }
    assert!(!f.publish().panic, "nothing checked: no verdict, no panic");
    f.r.apply_check(&targets[0], ready());
    let r = f.publish();
    assert!(!r.panic, "1 checked, 1 healthy; 3 not checked yet");
    assert_eq!(r.addresses, ["10.0.0.1:80"]);
    f.r.apply_check(&targets[1], CheckResult::Failed("refused".into()));
    assert!(!f.publish().panic, "1 of 2 checked is not below 50%");
    f.r.apply_check(&targets[2], CheckResult::Failed("refused".into()));
    let r = f.publish();
    assert!(r.panic, "1 of 3 checked is below 50%");
    assert_eq!(
        r.addresses,
        ["10.0.0.1:80"],
        "failed first checks were never verified"
    );
}

#[test]
fn services_are_separate_pools_with_their_own_panic() {
    let p = Policy {
        max_backends: 10,
        ..policy()
    };
    let mut f = Fixture::new(p.clone(), 1, 50.0);
    let now = Instant::now();
    let named = |id: &str, a: &str, s: &str| {
        let mut r = reg(id, a);
        r.service = Some(s.into());
        p.validate(&r).unwrap()
    };
    // The same id in two services is two entries.
    let (_, web) = f.register(named("x", "10.0.0.1:80", "web"), now).unwrap();
    let (_, api) = f.register(named("x", "10.0.0.2:80", "api"), now).unwrap();
    let (_, api2) = f.register(named("y", "10.0.0.3:80", "api"), now).unwrap();
    for t in [&web, &api, &api2] {
        f.r.apply_check(t.as_ref().unwrap(), ready());
    }
    let web = f.r.publish(&Arc::from("web")).unwrap();
    let api_slot = f.r.publish(&Arc::from("api")).unwrap();
    assert_eq!(web.routable().addresses, ["10.0.0.1:80"]);
    assert_eq!(api_slot.routable().addresses.len(), 2);
    // web dies: web panics, api does not.
    f.r.apply_check(
        &web_target(&f, "web", "x"),
        CheckResult::Failed("down".into()),
    );
    let web = f.r.publish(&Arc::from("web")).unwrap();
    let api_slot = f.r.publish(&Arc::from("api")).unwrap();
    assert!(web.routable().panic && !api_slot.routable().panic);
    let names: Vec<_> =
        f.r.services()
            .into_iter()
            .map(|s| (s.name, s.registered))
            .collect();
    assert_eq!(
        names,
        [("api".into(), 2), ("default".into(), 0), ("web".into(), 1)]
    );
    assert!(
        f.r.view(Some("api"), now)
            .backends
            .iter()
            .all(|e| e.service == "api")
    );
    // Un-pinned services lose their slot with their last entry.
    assert_eq!(f.r.deregister("web", "x", now), Removal::Removed);
    assert!(f.r.publish(&Arc::from("web")).is_none());
}

fn web_target(f: &Fixture, service: &str, id: &str) -> Target {
    let gen_ = (1..100)
        .find(|g| f.r.target(service, id, *g).is_some())
        .unwrap();
    f.r.target(service, id, gen_).unwrap()
}

#[test]
fn delete_with_requests_in_flight_drains() {
    let mut f = registry();
    let now = Instant::now();
    let (_, t) = f
        .register(policy().validate(&reg("a", "10.0.0.1:80")).unwrap(), now)
        .unwrap();
    f.r.apply_check(&t.unwrap(), ready());
    let up = Arc::clone(&f.publish().upstreams[&"10.0.0.1:80".parse().unwrap()]);
    up.in_flight.store(1, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(f.r.deregister("default", "a", now), Removal::Draining);
    assert!(!up.live(), "out of selection at once");
    assert!(f.publish().addresses.is_empty());
    let view = f.r.view(None, now);
    assert_eq!(
        view.backends[0].state,
        crate::protocol::BackendState::Draining
    );
    let max = Duration::from_secs(30);
    assert!(
        f.r.finish_drains(now, max).is_empty(),
        "a request is in flight"
    );
    up.in_flight.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(f.r.finish_drains(now, max), ["a"]);
    assert!(f.r.is_empty());
}

#[test]
fn next_announce_spreads_within_bounds() {
    let ttl = Duration::from_secs(90);
    let vals: Vec<u64> = (0..100)
        .map(|i| next_announce(&format!("b{i}"), ttl))
        .collect();
    assert!(vals.iter().all(|v| (24..=30).contains(v)), "{vals:?}");
    assert!(vals.iter().collect::<BTreeSet<_>>().len() > 3, "spread");
}

#[test]
fn service_specs_apply_service_overrides_over_defaults() {
    let c: crate::config::Config = serde_yaml::from_str(
        "health_check: {panic_threshold: 40}\n\
         services:\n  web: {panic_threshold: 0, health_check: {path: /v, interval: 1s}}\n",
    )
    .expect("config");
    let book = c.service_specs();
    let w = book.of("web");
    assert_eq!((w.panic_percent, w.check.path.as_str()), (0.0, "/v"));
    assert_eq!(w.check.interval, Duration::from_secs(1));
    assert_eq!(
        w.check.timeout,
        Duration::from_secs(2),
        "the default timeout"
    );
    let x = book.of("x");
    assert_eq!((x.panic_percent, x.check.path.as_str()), (40.0, "/metrics"));
}
