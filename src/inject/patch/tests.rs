//! Unit tests of the patch: what an annotated pod gets, what it keeps,
//! and what is refused.

use super::*;

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("pod")
}

fn annotated(extra: Value, spec: Value) -> Pod {
    let mut annotations = json!({ INJECT_ANNOTATION: "true" });
    if let (Some(a), Some(e)) = (annotations.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-1", "namespace": "shop", "annotations": annotations },
        "spec": spec,
    }))
}

fn web_spec() -> Value {
    json!({
        "containers": [{
            "name": "web", "image": "nginx",
            "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }]
        }],
        "terminationGracePeriodSeconds": 30
    })
}

/// Apply the patch like the API server would and return the pod.
fn patched(p: &Pod, cfg: &InjectConfig) -> Pod {
    let Injection::Patched(patch) = inject(p, cfg).expect("inject") else {
        panic!("expected a patch")
    };
    let mut doc = serde_json::to_value(p).unwrap();
    json_patch::patch(&mut doc, &patch).expect("patch applies");
    serde_json::from_value(doc).expect("still a pod")
}

fn agent(p: &Pod) -> Container {
    let spec = p.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == AGENT_CONTAINER)
        .cloned()
        .expect("agent container")
}

fn env_of(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn skips_pods_without_the_annotation() {
    let p = pod(json!({ "metadata": { "name": "x" }, "spec": web_spec() }));
    assert!(matches!(
        inject(&p, &InjectConfig::default()),
        Ok(Injection::Skipped(_))
    ));
    let p = pod(json!({
        "metadata": { "name": "x", "annotations": { INJECT_ANNOTATION: "false" } },
        "spec": web_spec()
    }));
    assert!(matches!(
        inject(&p, &InjectConfig::default()),
        Ok(Injection::Skipped(_))
    ));
}

#[test]
fn native_sidecar_with_env_ports_probes_and_drain() {
    let cfg = InjectConfig::default();
    let p = patched(&annotated(json!({}), web_spec()), &cfg);
    let spec = p.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().expect("initContainers");
    assert_eq!(inits.len(), 1);
    let a = agent(&p);
    assert_eq!(a.restart_policy.as_deref(), Some("Always"));
    assert_eq!(a.image.as_deref(), Some(cfg.image.as_str()));
    assert_eq!(a.command.as_deref(), Some(&[AGENT_BINARY.to_string()][..]));
    assert_eq!(a.args, None);
    let port = &a.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.container_port, port.name.as_deref()),
        (9090, Some("vitals"))
    );
    assert_eq!(env_of(&a, "ROSTER_APP_PORT").as_deref(), Some("8080"));
    assert_eq!(env_of(&a, "ROSTER_METRICS_PORT").as_deref(), Some("9090"));
    assert_eq!(
        env_of(&a, "ROSTER_DISCOVERY_LB").as_deref(),
        Some("roster-lb-control.roster.svc:8080")
    );
    assert_eq!(env_of(&a, "ROSTER_DRAIN_PERIOD").as_deref(), Some("15s"));
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
    ] {
        let e = a.env.iter().flatten().find(|e| e.name == name).unwrap();
        let field = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, path);
    }
    assert!(a.readiness_probe.is_some() && a.startup_probe.is_some());
    let drain = a.lifecycle.unwrap().pre_stop.unwrap().exec.unwrap();
    assert_eq!(
        drain.command.unwrap(),
        [AGENT_BINARY, "drain"].map(String::from)
    );
    let sc = a.security_context.unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    // The app keeps serving through the drain.
    let web = &spec.containers[0];
    let sleep = web.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    assert_eq!(sleep.sleep.as_ref().unwrap().seconds, 15);
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    let ann = p.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["prometheus.io/port"], "9090");
    assert_eq!(ann["prometheus.io/path"], "/telemetry");
    assert_eq!(p.metadata.labels.as_ref().unwrap()[INJECTED_LABEL], "true");
}

#[test]
fn classic_sidecar_is_a_container() {
    let cfg = InjectConfig {
        native_sidecar: false,
        ..Default::default()
    };
    let p = patched(&annotated(json!({}), web_spec()), &cfg);
    let spec = p.spec.as_ref().unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers.len(), 2);
    assert_eq!(spec.containers[1].name, AGENT_CONTAINER);
    assert!(spec.containers[1].restart_policy.is_none());
    assert!(spec.containers[1].startup_probe.is_none());
    // Only the app gets the sleep; the agent has its drain.
    assert!(
        spec.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .is_some()
    );
}

#[test]
fn injection_is_idempotent() {
    let cfg = InjectConfig::default();
    let once = patched(&annotated(json!({}), web_spec()), &cfg);
    assert_eq!(
        inject(&once, &cfg).unwrap(),
        Injection::Skipped("already injected")
    );
    let classic = InjectConfig {
        native_sidecar: false,
        ..Default::default()
    };
    let once = patched(&annotated(json!({}), web_spec()), &classic);
    assert!(matches!(inject(&once, &cfg), Ok(Injection::Skipped(_))));
}

#[test]
fn annotations_override_port_lb_and_health() {
    let p = annotated(
        json!({
            APP_PORT_ANNOTATION: "http",
            LB_ANNOTATION: "lb-a.edge.svc:8080, lb-b.edge.svc:8080",
            HEALTH_PATH_ANNOTATION: "/ready"
        }),
        web_spec(),
    );
    let a = agent(&patched(&p, &InjectConfig::default()));
    assert_eq!(env_of(&a, "ROSTER_APP_PORT").as_deref(), Some("8080"));
    assert_eq!(
        env_of(&a, "ROSTER_DISCOVERY_LB").as_deref(),
        Some("lb-a.edge.svc:8080,lb-b.edge.svc:8080")
    );
    assert_eq!(
        env_of(&a, "ROSTER_APP_HEALTH").as_deref(),
        Some("http://127.0.0.1:8080/ready")
    );
}

#[test]
fn pods_without_ports_need_the_annotation() {
    let spec = json!({ "containers": [{ "name": "app", "image": "x" }] });
    let err = inject(
        &annotated(json!({}), spec.clone()),
        &InjectConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(APP_PORT_ANNOTATION), "{err}");
    let p = patched(
        &annotated(json!({ APP_PORT_ANNOTATION: "3000" }), spec),
        &InjectConfig::default(),
    );
    assert_eq!(
        env_of(&agent(&p), "ROSTER_APP_PORT").as_deref(),
        Some("3000")
    );
}

#[test]
fn bad_annotations_are_named() {
    let cases = [
        (APP_PORT_ANNOTATION, "web"),
        (APP_PORT_ANNOTATION, "0"),
        (APP_PORT_ANNOTATION, "9090"),
        (LB_ANNOTATION, "no-port"),
        (LB_ANNOTATION, " , "),
        (HEALTH_PATH_ANNOTATION, "healthz"),
    ];
    for (key, value) in cases {
        let err = inject(
            &annotated(json!({ key: value }), web_spec()),
            &InjectConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(key), "{key}={value}: {err}");
    }
}

#[test]
fn vitals_port_conflict_is_refused() {
    let spec = json!({ "containers": [{
        "name": "app", "image": "x",
        "ports": [{ "containerPort": 8080 }, { "containerPort": 9090 }]
    }]});
    let err = inject(&annotated(json!({}), spec), &InjectConfig::default()).unwrap_err();
    assert!(
        matches!(err, InjectError::PortConflict { port: 9090, .. }),
        "{err}"
    );
}

#[test]
fn existing_hooks_init_containers_and_grace_are_respected() {
    let spec = json!({
        "initContainers": [{ "name": "migrate", "image": "x" }],
        "containers": [
            { "name": "web", "image": "x", "ports": [{ "containerPort": 8080 }],
              "lifecycle": { "preStop": { "exec": { "command": ["/stop"] } } } },
            { "name": "side", "image": "y", "lifecycle": { "postStart": { "exec": { "command": ["/go"] } } } }
        ],
        "terminationGracePeriodSeconds": 5
    });
    let p = patched(&annotated(json!({}), spec), &InjectConfig::default());
    let s = p.spec.unwrap();
    let inits = s.init_containers.unwrap();
    assert_eq!(
        inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["migrate", AGENT_CONTAINER]
    );
    let web = s.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    assert!(
        web.exec.is_some() && web.sleep.is_none(),
        "own preStop kept"
    );
    let side = s.containers[1].lifecycle.as_ref().unwrap();
    assert!(side.post_start.is_some() && side.pre_stop.as_ref().unwrap().sleep.is_some());
    assert_eq!(
        s.termination_grace_period_seconds,
        Some(30),
        "raised for the drain"
    );
}

#[test]
fn own_prometheus_annotations_are_left_alone() {
    let p = patched(
        &annotated(
            json!({ "prometheus.io/scrape": "true", "prometheus.io/port": "8080" }),
            web_spec(),
        ),
        &InjectConfig::default(),
    );
    let ann = p.metadata.annotations.unwrap();
    assert_eq!(ann["prometheus.io/port"], "8080");
    assert!(!ann.contains_key("prometheus.io/path"));
}

#[test]
fn token_sources_mount_a_volume() {
    for token in [
        TokenSource::Secret {
            name: "roster-registration-token".into(),
        },
        TokenSource::ServiceAccount {
            audience: "roster".into(),
            expiration_seconds: 3600,
        },
    ] {
        let cfg = InjectConfig {
            token: token.clone(),
            ..Default::default()
        };
        let p = patched(&annotated(json!({}), web_spec()), &cfg);
        let a = agent(&p);
        assert_eq!(
            env_of(&a, "ROSTER_TOKEN_FILE").as_deref(),
            Some("/var/run/secrets/roster/token")
        );
        assert_eq!(a.volume_mounts.unwrap()[0].name, TOKEN_VOLUME);
        let v = p.spec.unwrap().volumes.unwrap();
        assert_eq!(v.len(), 1);
        match token {
            TokenSource::Secret { .. } => assert!(v[0].secret.is_some()),
            _ => {
                let proj = v[0].projected.as_ref().unwrap().sources.as_ref().unwrap();
                let sat = proj[0].service_account_token.as_ref().unwrap();
                assert_eq!(sat.audience.as_deref(), Some("roster"));
            }
        }
    }
}

#[test]
fn sleep_can_be_turned_off() {
    let cfg = InjectConfig {
        app_pre_stop_sleep: false,
        ..Default::default()
    };
    let p = patched(&annotated(json!({}), web_spec()), &cfg);
    assert!(p.spec.unwrap().containers[0].lifecycle.is_none());
}

#[test]
fn namespace_opt_in_patches_a_pod_without_annotations() {
    // Fuzzing (fuzz/corpus/admission/no-annotations): the scrape
    // annotations were added under a missing `/metadata/annotations`.
    let p = pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-1", "namespace": "shop" },
        "spec": web_spec(),
    }));
    let Injection::Patched(patch) =
        inject_with(&p, &InjectConfig::default(), OptIn::Namespace).expect("inject")
    else {
        panic!("expected a patch")
    };
    let mut doc = serde_json::to_value(&p).unwrap();
    json_patch::patch(&mut doc, &patch).expect("patch applies");
    let p: Pod = serde_json::from_value(doc).expect("still a pod");
    let annotations = p.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations["prometheus.io/port"], "9090");
}
