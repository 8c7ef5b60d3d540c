//! The injector's settings as the chart wires them: what reaches the agent
//! (service, protocol, health interval), the optional token volume, the
//! namespace opt-in, and the webhook configuration the chart renders
//! (`manifests/injector.yaml`, generated from it) against the routes and
//! names this module serves.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use super::names::{
    AGENT_CONTAINER, INJECT_ANNOTATION, NAMESPACE_ENABLED, NAMESPACE_LABEL, TOKEN_VOLUME,
};
use super::patch::{InjectConfig, Injection, OptIn, TokenSource, inject_with};
use super::server::{ANNOTATION_PATH, NAMESPACE_PATH};

fn deployment_pod(annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "generateName": "checkout-6c9f7b5d4-", "namespace": "shop",
            "labels": {"app": "checkout", "pod-template-hash": "6c9f7b5d4"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "checkout-6c9f7b5d4", "uid": "u", "controller": true}]
        },
        "spec": {"containers": [{"name": "app", "image": "x",
                                  "ports": [{"name": "grpc", "containerPort": 50051}]}]}
    }))
    .expect("pod")
}

fn patched(p: &Pod, cfg: &InjectConfig, opt_in: OptIn) -> Option<Pod> {
    match inject_with(p, cfg, opt_in).expect("inject") {
        Injection::Skipped(_) => None,
        Injection::Patched(patch) => {
            let mut doc = serde_json::to_value(p).expect("pod json");
            json_patch::patch(&mut doc, &patch).expect("patch applies");
            Some(serde_json::from_value(doc).expect("still a pod"))
        }
    }
}

fn agent(p: &Pod) -> Container {
    let spec = p.spec.as_ref().expect("spec");
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == AGENT_CONTAINER)
        .cloned()
        .expect("agent")
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn agent_env_carries_service_protocol_and_health_interval() {
    let cfg = InjectConfig {
        health_interval: Some(Duration::from_secs(2)),
        log_json: true,
        ..Default::default()
    };
    let p = deployment_pod(json!({ INJECT_ANNOTATION: "true" }));
    let a = agent(&patched(&p, &cfg, OptIn::Annotation).expect("injected"));
    assert_eq!(env(&a, "ROSTER_SERVICE").as_deref(), Some("checkout"));
    assert_eq!(env(&a, "ROSTER_APP_PROTOCOL").as_deref(), Some("h2c"));
    assert_eq!(env(&a, "ROSTER_HEALTH_INTERVAL").as_deref(), Some("2s"));
    assert_eq!(env(&a, "ROSTER_LOG_FORMAT").as_deref(), Some("json"));

    // Without a configured interval the agent keeps its default.
    let a = agent(&patched(&p, &InjectConfig::default(), OptIn::Annotation).expect("injected"));
    assert_eq!(env(&a, "ROSTER_HEALTH_INTERVAL"), None);

    let p = deployment_pod(json!({
        INJECT_ANNOTATION: "true",
        "roster.dev/service": "payments",
        "roster.dev/app-protocol": "http1",
    }));
    let a = agent(&patched(&p, &cfg, OptIn::Annotation).expect("injected"));
    assert_eq!(env(&a, "ROSTER_SERVICE").as_deref(), Some("payments"));
    assert_eq!(env(&a, "ROSTER_APP_PROTOCOL").as_deref(), Some("http1"));
}

#[test]
fn bad_service_or_protocol_annotation_denies_the_pod() {
    for (key, value) in [
        ("roster.dev/service", "no spaces"),
        ("roster.dev/app-protocol", "spdy"),
    ] {
        let p = deployment_pod(json!({ INJECT_ANNOTATION: "true", key: value }));
        let err = inject_with(&p, &InjectConfig::default(), OptIn::Annotation)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn token_secret_volume_is_optional() {
    let cfg = InjectConfig {
        token: TokenSource::Secret {
            name: "roster-registration-token".into(),
        },
        ..Default::default()
    };
    let p = patched(
        &deployment_pod(json!({ INJECT_ANNOTATION: "true" })),
        &cfg,
        OptIn::Annotation,
    )
    .expect("injected");
    let volumes = p.spec.and_then(|s| s.volumes).unwrap_or_default();
    let v = volumes
        .iter()
        .find(|v| v.name == TOKEN_VOLUME)
        .expect("token volume");
    let secret = v.secret.as_ref().expect("a Secret volume");
    assert_eq!(
        secret.optional,
        Some(true),
        "a pod without the Secret still starts"
    );
}

#[test]
fn namespace_opt_in_and_pod_opt_out() {
    let cfg = InjectConfig::default();
    let plain = deployment_pod(json!({}));
    assert!(patched(&plain, &cfg, OptIn::Annotation).is_none());
    assert!(patched(&plain, &cfg, OptIn::Namespace).is_some());
    let out = deployment_pod(json!({ INJECT_ANNOTATION: "false" }));
    assert!(patched(&out, &cfg, OptIn::Namespace).is_none());
    // Both webhooks may see one pod: the second finds the agent and stops.
    let once = patched(
        &deployment_pod(json!({ INJECT_ANNOTATION: "true" })),
        &cfg,
        OptIn::Annotation,
    )
    .expect("injected");
    assert!(patched(&once, &cfg, OptIn::Namespace).is_none());
}

#[test]
fn agent_image_pull_secrets_are_added_once() {
    let cfg = InjectConfig {
        image_pull_secrets: vec!["regcred".into(), "mirror".into()],
        ..Default::default()
    };
    let p = patched(&deployment_pod(json!({})), &cfg, OptIn::Namespace).expect("injected");
    let names: Vec<String> = p
        .spec
        .and_then(|s| s.image_pull_secrets)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["regcred", "mirror"]);

    let mut own = deployment_pod(json!({}));
    if let Some(spec) = own.spec.as_mut() {
        spec.image_pull_secrets = Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
            name: "regcred".into(),
        }]);
    }
    let p = patched(&own, &cfg, OptIn::Namespace).expect("injected");
    let n = p
        .spec
        .and_then(|s| s.image_pull_secrets)
        .unwrap_or_default()
        .len();
    assert_eq!(n, 2, "regcred kept once, mirror added");
}

/// The MutatingWebhookConfiguration of `manifests/injector.yaml`.
fn rendered_webhooks() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/injector.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/injector.yaml (make manifests)");
    let mwc = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find(|v: &Value| v["kind"] == "MutatingWebhookConfiguration")
        .expect("a MutatingWebhookConfiguration");
    mwc["webhooks"].as_array().cloned().unwrap_or_default()
}

fn expression<'a>(selector: &'a Value, key: &str) -> Option<&'a Value> {
    selector["matchExpressions"]
        .as_array()?
        .iter()
        .find(|e| e["key"] == key)
}

#[test]
fn chart_webhooks_match_the_served_routes_and_labels() {
    let hooks = rendered_webhooks();
    let by_path = |path: &str| {
        hooks
            .iter()
            .find(|h| h["clientConfig"]["service"]["path"] == path)
            .unwrap_or_else(|| panic!("a webhook for {path}"))
    };
    let annotation = by_path(ANNOTATION_PATH);
    let namespace = by_path(NAMESPACE_PATH);
    assert_eq!(hooks.len(), 2);

    // Opted-in namespaces go to the namespace webhook only, and namespaces
    // labelled `disabled` to neither.
    let ns = expression(&namespace["namespaceSelector"], NAMESPACE_LABEL).expect("ns label");
    assert_eq!(ns["operator"], "In");
    assert_eq!(ns["values"], json!([NAMESPACE_ENABLED]));
    let other = expression(&annotation["namespaceSelector"], NAMESPACE_LABEL).expect("ns label");
    assert_eq!(other["operator"], "NotIn");
    assert_eq!(other["values"], json!([NAMESPACE_ENABLED, "disabled"]));
    for hook in [annotation, namespace] {
        let system = expression(&hook["namespaceSelector"], "kubernetes.io/metadata.name")
            .expect("system namespaces excluded");
        assert_eq!(system["operator"], "NotIn");
        assert!(
            system["values"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("kube-system")))
        );
        // A pod labelled roster.dev/inject=false never reaches the webhook.
        let opt_out =
            expression(&hook["objectSelector"], INJECT_ANNOTATION).expect("objectSelector");
        assert_eq!(opt_out["operator"], "NotIn");
        assert_eq!(opt_out["values"], json!(["false"]));
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["reinvocationPolicy"], "Never");
    }
}

/// The contract between the injector and the agent: every `ROSTER_*`
/// variable the injector writes on the sidecar is one `roster agent`
/// reads (a flag's env var, or the log format every command reads).
#[test]
fn every_variable_the_injector_writes_is_one_the_agent_reads() {
    use clap::Args;
    let cmd = crate::config::Overlay::<crate::config::AgentSections>::augment_args(
        clap::Command::new("agent"),
    );
    let mut read: std::collections::BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    read.insert(crate::config::env::LOG_FORMAT.into());
    let cfg = InjectConfig {
        health_interval: Some(Duration::from_secs(2)),
        announce_interval: Some(Duration::from_secs(7)),
        log_json: true,
        token: TokenSource::ServiceAccount {
            audience: "roster".into(),
            expiration_seconds: 3600,
        },
        ..Default::default()
    };
    let p = deployment_pod(json!({
        INJECT_ANNOTATION: "true",
        super::names::HEALTH_PATH_ANNOTATION: "/healthz",
    }));
    let a = agent(&patched(&p, &cfg, OptIn::Annotation).expect("injected"));
    let written: Vec<String> = a
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .filter(|n| n.starts_with("ROSTER_"))
        .collect();
    assert!(written.len() >= 10, "{written:?}");
    for name in &written {
        assert!(
            read.contains(name),
            "the injector writes {name}, the agent never reads it"
        );
    }
}
