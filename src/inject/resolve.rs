//! What the injector reads off a pod for its agent, besides the port:
//! the service it belongs to (`ROSTER_SERVICE`) and the protocol its app
//! speaks (`ROSTER_APP_PROTOCOL`). Pure functions of the Pod.
//!
//! The service comes from, in order: the `roster.dev/service` annotation,
//! the `app.kubernetes.io/name` label, the owning workload's name (a
//! ReplicaSet's name minus its pod-template-hash is the Deployment's), and
//! last the pod's generateName. Pods of one workload thus land in one
//! service without any annotation.
//!
//! The protocol comes from the `roster.dev/app-protocol` annotation, else
//! from the app port's name by the usual convention (`grpc`, `h2c`,
//! `http2` → h2c; `http` → http1). A container port has no `appProtocol`
//! field in the Pod API (only Service and EndpointSlice ports do), so the
//! name is the one pod-level hint; values in the `appProtocol` spelling
//! (`kubernetes.io/h2c`, `http`, `grpc`) are accepted in the annotation.

use k8s_openapi::api::core::v1::Pod;

use super::error::InjectError;
use super::names::{APP_PORT_ANNOTATION, APP_PROTOCOL_ANNOTATION, NAME_LABEL, SERVICE_ANNOTATION};

/// A service name as the LB accepts it (the id rules).
pub fn valid_service(name: &str) -> bool {
    crate::agent::valid_id(name)
}

/// The pod's service, or None when nothing names one (the agent then
/// registers under the LB's default service).
pub fn service(pod: &Pod) -> Result<Option<String>, InjectError> {
    let meta = &pod.metadata;
    if let Some(v) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_ANNOTATION))
    {
        let v = v.trim();
        if !valid_service(v) {
            return Err(InjectError::Annotation {
                annotation: SERVICE_ANNOTATION,
                message: format!("{v:?}: 1-253 characters of [A-Za-z0-9._-]"),
            });
        }
        return Ok(Some(v.to_string()));
    }
    let derived = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(NAME_LABEL))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| owner_workload(pod))
        .or_else(|| {
            meta.generate_name
                .as_deref()
                .map(|g| g.trim_end_matches('-').to_string())
                .filter(|g| !g.is_empty())
        });
    // Derived names are Kubernetes names, so they fit; a label value that
    // does not (labels allow nothing the id rules refuse, but be sure) is
    // dropped rather than denying a pod that asked for nothing special.
    Ok(derived.filter(|s| valid_service(s)))
}

/// The controlling workload's name: a ReplicaSet's name minus its
/// pod-template-hash (the Deployment's), other controllers' names as is.
fn owner_workload(pod: &Pod) -> Option<String> {
    let owners = pod.metadata.owner_references.as_ref()?;
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    if owner.kind != "ReplicaSet" {
        return Some(owner.name.clone());
    }
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    let trimmed = match hash {
        Some(h) => owner
            .name
            .strip_suffix(h.as_str())
            .map(|s| s.trim_end_matches('-')),
        // No label (a ReplicaSet made by hand, or an old controller): the
        // hash is the last dash-separated part when it looks like one.
        None => owner
            .name
            .rsplit_once('-')
            .filter(|(_, tail)| looks_like_hash(tail))
            .map(|(head, _)| head),
    };
    Some(
        trimmed
            .filter(|s| !s.is_empty())
            .unwrap_or(&owner.name)
            .to_string(),
    )
}

/// The pod-template-hash alphabet (rand.SafeEncodeString: no vowels).
fn looks_like_hash(s: &str) -> bool {
    (5..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// `http1` or `h2c` from an appProtocol-style value; None when unknown.
pub fn normalize_protocol(value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase();
    let v = v.strip_prefix("kubernetes.io/").unwrap_or(&v);
    match v {
        "h2c" | "grpc" | "http2" => Some("h2c"),
        "http" | "http1" | "http/1.1" => Some("http1"),
        _ => None,
    }
}

/// The app's protocol: the annotation (refused when unknown), else the app
/// port's name convention, else None (the agent's default).
pub fn app_protocol(pod: &Pod, app_port: u16) -> Result<Option<&'static str>, InjectError> {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(APP_PROTOCOL_ANNOTATION));
    if let Some(v) = annotation {
        return normalize_protocol(v)
            .map(Some)
            .ok_or_else(|| InjectError::Annotation {
                annotation: APP_PROTOCOL_ANNOTATION,
                message: format!("{v:?}: use http1 or h2c (or kubernetes.io/h2c, http, grpc)"),
            });
    }
    let name = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.container_port == i32::from(app_port))
        .and_then(|p| p.name.as_deref());
    Ok(name.and_then(port_name_protocol))
}

/// `grpc`, `grpc-web`, `h2c-api`, `http2` → h2c; `http`, `http-api` → http1.
fn port_name_protocol(name: &str) -> Option<&'static str> {
    let prefix = name.split('-').next().unwrap_or(name);
    match prefix {
        "grpc" | "h2c" | "http2" => Some("h2c"),
        "http" => Some("http1"),
        _ => None,
    }
}

/// `roster.dev/app-port` (a number or a containerPort name), else the first
/// TCP containerPort of the first container that declares one.
pub(super) fn app_port(pod: &Pod, annotation: Option<&String>) -> Result<u16, InjectError> {
    let containers = pod.spec.as_ref().map(|s| &s.containers[..]).unwrap_or(&[]);
    let ports = || containers.iter().flat_map(|c| c.ports.iter().flatten());
    if let Some(value) = annotation {
        let value = value.trim();
        if let Ok(n) = value.parse::<u16>() {
            if n == 0 {
                return Err(InjectError::Annotation {
                    annotation: APP_PORT_ANNOTATION,
                    message: "port 0 is not a port".into(),
                });
            }
            return Ok(n);
        }
        return ports()
            .find(|p| p.name.as_deref() == Some(value))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| InjectError::Annotation {
                annotation: APP_PORT_ANNOTATION,
                message: format!(
                    "{value:?} is neither a port number (1-65535) nor the name of a containerPort"
                ),
            });
    }
    ports()
        .find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .ok_or(InjectError::NoAppPort)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(meta: Value, ports: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "x", "ports": ports}]}
        }))
        .expect("pod")
    }

    fn owned(kind: &str, name: &str, labels: Value) -> Pod {
        pod(
            json!({"generateName": format!("{name}-"), "labels": labels,
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name,
                                        "uid": "u", "controller": true}]}),
            json!([]),
        )
    }

    #[test]
    fn service_from_annotation_then_label_then_owner() {
        let p = pod(
            json!({"annotations": {SERVICE_ANNOTATION: "checkout"},
                   "labels": {NAME_LABEL: "shop"}}),
            json!([]),
        );
        assert_eq!(service(&p).unwrap().as_deref(), Some("checkout"));
        let p = pod(json!({"labels": {NAME_LABEL: "shop"}}), json!([]));
        assert_eq!(service(&p).unwrap().as_deref(), Some("shop"));
        let p = owned(
            "ReplicaSet",
            "web-7d4b9c6f8d",
            json!({"pod-template-hash": "7d4b9c6f8d"}),
        );
        assert_eq!(service(&p).unwrap().as_deref(), Some("web"));
        let p = owned("ReplicaSet", "api-v2-5f6d7c8b9", json!({}));
        assert_eq!(
            service(&p).unwrap().as_deref(),
            Some("api-v2"),
            "hash-like tail"
        );
        let p = owned("ReplicaSet", "legacy-frontend", json!({}));
        assert_eq!(service(&p).unwrap().as_deref(), Some("legacy-frontend"));
        for kind in ["StatefulSet", "DaemonSet", "Job"] {
            let p = owned(kind, "db", json!({}));
            assert_eq!(service(&p).unwrap().as_deref(), Some("db"), "{kind}");
        }
        let p = pod(json!({"generateName": "batch-"}), json!([]));
        assert_eq!(service(&p).unwrap().as_deref(), Some("batch"));
        let p = pod(json!({"name": "bare"}), json!([]));
        assert_eq!(service(&p).unwrap(), None, "nothing names a service");
    }

    #[test]
    fn bad_service_annotation_is_named() {
        for bad in ["", "has space", "a/b"] {
            let p = pod(json!({"annotations": {SERVICE_ANNOTATION: bad}}), json!([]));
            let err = service(&p).unwrap_err().to_string();
            assert!(err.contains(SERVICE_ANNOTATION), "{bad:?}: {err}");
        }
    }

    #[test]
    fn protocol_from_annotation_then_port_name() {
        let ports = json!([{"name": "grpc-api", "containerPort": 50051},
                           {"name": "http", "containerPort": 8080},
                           {"name": "admin", "containerPort": 9000}]);
        let p = pod(json!({}), ports.clone());
        assert_eq!(app_protocol(&p, 50051).unwrap(), Some("h2c"));
        assert_eq!(app_protocol(&p, 8080).unwrap(), Some("http1"));
        assert_eq!(app_protocol(&p, 9000).unwrap(), None, "unknown name");
        assert_eq!(app_protocol(&p, 3000).unwrap(), None, "not a declared port");
        for (value, want) in [
            ("kubernetes.io/h2c", "h2c"),
            ("h2c", "h2c"),
            ("grpc", "h2c"),
            ("http", "http1"),
            ("kubernetes.io/http", "http1"),
            ("HTTP1", "http1"),
        ] {
            let p = pod(
                json!({"annotations": {APP_PROTOCOL_ANNOTATION: value}}),
                ports.clone(),
            );
            assert_eq!(app_protocol(&p, 9000).unwrap(), Some(want), "{value}");
        }
        let p = pod(
            json!({"annotations": {APP_PROTOCOL_ANNOTATION: "quic"}}),
            ports,
        );
        let err = app_protocol(&p, 8080).unwrap_err().to_string();
        assert!(err.contains(APP_PROTOCOL_ANNOTATION), "{err}");
    }
}
