//! `POST /register`: the body as the control API reads it
//! ([`parse_json`]), the field checks and the address fence
//! ([`Policy::validate`]), then the registry.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use roster::lb::api::{ApiError, parse_json};
use roster::protocol::{MAX_WEIGHT, Registration};
use roster::registry::{Field, Outcome, Removal, validate_name};

use crate::util;

pub fn run(data: &[u8]) {
    let reg: Registration = match parse_json(Ok(Bytes::copy_from_slice(data))) {
        Ok(reg) => reg,
        Err(e) => {
            // Malformed → 400, a wrong field → 422; nothing else.
            assert!(matches!(e.status.as_u16(), 400 | 422), "{e:?}");
            return;
        }
    };
    // With and without a default service.
    for default_service in ["", "default"] {
        register(&reg, default_service);
    }
}

fn register(reg: &Registration, default_service: &str) {
    let now = Instant::now();
    let registry = util::registry(default_service);
    // A neighbour whose id or address the body may claim.
    let mut neighbour = util::backend("neighbour", "10.0.0.1:8080");
    neighbour.service = Some("default".into());
    util::register(&registry, &neighbour, now);
    let valid = match registry.policy().validate(reg) {
        Ok(valid) => valid,
        Err(e) => {
            let status = ApiError::from(e).status.as_u16();
            assert!(matches!(status, 403 | 422), "refusal answered {status}");
            return;
        }
    };
    // What validation promises the rest of the LB.
    validate_name(Field::Id, &valid.id).expect("a validated id");
    validate_name(Field::Service, &valid.service).expect("a validated service");
    assert!((1..=MAX_WEIGHT).contains(&valid.weight), "{valid:?}");
    assert!(
        valid.addr.port() != 0 && valid.metrics_port != 0,
        "{valid:?}"
    );
    let ip = valid.addr.ip();
    assert!(
        registry
            .policy()
            .allowed_networks
            .iter()
            .any(|n| n.contains(&ip)),
        "{ip} passed the fence outside every allowed network"
    );
    let first = registry
        .register(valid.clone(), now)
        .expect("room in the registry");
    assert_eq!(first.response.id, valid.id);
    assert_eq!(
        first.response.address.parse::<SocketAddr>().ok(),
        Some(valid.addr),
        "the answer's address"
    );
    serde_json::to_vec(&first.response).expect("the answer serializes");
    let again = registry
        .register(valid.clone(), now)
        .expect("a renewal needs no room");
    assert_eq!(again.outcome, Outcome::Renewed);
    serde_json::to_vec(&registry.view(None, now)).expect("GET /registry serializes");
    serde_json::to_vec(&registry.services()).expect("GET /services serializes");
    let removal = registry.deregister(&valid.service, &valid.id, now);
    assert_ne!(removal, Removal::Unknown, "a registered id deregisters");
}
