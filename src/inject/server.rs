//! The webhook's HTTPS server.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /mutate` | an `admission.k8s.io/v1` AdmissionReview with a JSONPatch, always 200: pods annotated `roster.dev/inject: "true"` |
//! | `POST /mutate/namespace` | the same for namespaces labelled `roster.dev/inject=enabled`: every pod but those annotated `"false"` |
//! | `GET /healthz` | 200 while the process runs |
//!
//! The handler only parses, answers and wraps; [`super::patch::inject`]
//! decides. A body that is not an AdmissionReview gets
//! `AdmissionResponse::invalid`; an object that is not a Pod is allowed
//! unchanged (never break what we do not understand); a pod whose roster
//! annotations are wrong is denied with the reason.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use super::patch::{InjectConfig, Injection, OptIn, inject_with};

/// Largest accepted review (a pod is at most ~1.5 MB in etcd).
pub const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;
/// The webhook for pods that ask with the annotation.
pub const ANNOTATION_PATH: &str = "/mutate";
/// The webhook for pods of opted-in namespaces.
pub const NAMESPACE_PATH: &str = "/mutate/namespace";

/// The webhook routes; tests drive them without a socket.
pub fn router(cfg: Arc<InjectConfig>) -> Router {
    Router::new()
        .route(ANNOTATION_PATH, post(mutate))
        .route(NAMESPACE_PATH, post(mutate_namespace))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(cfg)
}

async fn mutate(State(cfg): State<Arc<InjectConfig>>, body: Bytes) -> Json<Value> {
    Json(to_wire(
        review_for(&cfg, &body, OptIn::Annotation).into_review(),
    ))
}

async fn mutate_namespace(State(cfg): State<Arc<InjectConfig>>, body: Bytes) -> Json<Value> {
    Json(to_wire(
        review_for(&cfg, &body, OptIn::Namespace).into_review(),
    ))
}

/// The review as sent: `response.patch` base64-encoded, as the API
/// documents it (kube-core serializes the bytes as a JSON array of numbers,
/// which Go happens to accept too).
pub fn to_wire(review: AdmissionReview<DynamicObject>) -> Value {
    let mut v = serde_json::to_value(&review).unwrap_or(Value::Null);
    if let Some(patch) = v.pointer_mut("/response/patch") {
        if let Some(bytes) = patch.as_array().map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        }) {
            *patch = serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or(Value::Null);
        }
    }
    v
}

/// The answer to one review body (annotation opt-in).
pub fn review(cfg: &InjectConfig, body: &[u8]) -> AdmissionResponse {
    review_for(cfg, body, OptIn::Annotation)
}

/// The answer to one review body, for the webhook `opt_in` names.
pub fn review_for(cfg: &InjectConfig, body: &[u8], opt_in: OptIn) -> AdmissionResponse {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed AdmissionReview");
            return AdmissionResponse::invalid(format!("not an AdmissionReview: {e}"));
        }
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e),
    };
    let resp = AdmissionResponse::from(&req);
    let name = req
        .object
        .as_ref()
        .and_then(|o| o.metadata.name.clone().or(o.metadata.generate_name.clone()))
        .unwrap_or_default();
    let ns = req.namespace.clone().unwrap_or_default();
    if req.operation != Operation::Create {
        return resp;
    }
    let pod = match req
        .object
        .map(serde_json::to_value)
        .map(|v| v.and_then(serde_json::from_value::<Pod>))
    {
        Some(Ok(pod)) => pod,
        Some(Err(e)) => {
            tracing::warn!(%ns, %name, error = %e, "object is not a Pod: allowed unchanged");
            let mut resp = resp;
            resp.warnings = Some(vec![format!("roster: not a Pod, not injected: {e}")]);
            return resp;
        }
        None => return resp,
    };
    match inject_with(&pod, cfg, opt_in) {
        Ok(Injection::Skipped(reason)) => {
            tracing::debug!(%ns, %name, reason, "not injected");
            resp
        }
        Ok(Injection::Patched(patch)) => match resp.clone().with_patch(patch) {
            Ok(r) => {
                tracing::info!(%ns, %name, native = cfg.native_sidecar, "roster-agent injected");
                r
            }
            Err(e) => {
                tracing::error!(%ns, %name, error = %e, "cannot serialize the patch");
                resp
            }
        },
        Err(e) => {
            tracing::warn!(%ns, %name, error = %e, "denied");
            resp.deny(format!("roster: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::json;
    use tower::ServiceExt;

    fn review_of(object: Value, operation: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object, "oldObject": null, "dryRun": false
            }
        })
    }

    fn web_pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [{"name": "web", "image": "nginx",
                      "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
                     "terminationGracePeriodSeconds": 30}
        })
    }

    async fn post(body: Vec<u8>) -> (StatusCode, Value) {
        post_to(ANNOTATION_PATH, body).await
    }

    async fn post_to(path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let app = router(Arc::new(InjectConfig::default()));
        let resp = app
            .oneshot(
                Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn annotated_pod_gets_a_json_patch() {
        let body = review_of(web_pod(json!({"roster.dev/inject": "true"})), "CREATE");
        let (status, v) = post(serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        let r = &v["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch: k8s_openapi::ByteString =
            serde_json::from_value(r["patch"].clone()).expect("base64 patch");
        let ops: json_patch::Patch = serde_json::from_slice(&patch.0).expect("a JSON patch");
        assert!(!ops.0.is_empty());
    }

    #[tokio::test]
    async fn plain_pod_and_updates_are_allowed_untouched() {
        for (pod, op) in [
            (web_pod(json!({})), "CREATE"),
            (web_pod(json!({"roster.dev/inject": "true"})), "UPDATE"),
        ] {
            let (_, v) = post(serde_json::to_vec(&review_of(pod, op)).unwrap()).await;
            assert_eq!(v["response"]["allowed"], true);
            assert!(v["response"].get("patch").is_none());
        }
    }

    #[tokio::test]
    async fn namespace_webhook_injects_unless_the_pod_opts_out() {
        for (annotations, patched) in [
            (json!({}), true),
            (json!({"roster.dev/inject": "true"}), true),
            (json!({"roster.dev/inject": "false"}), false),
            (json!({"roster.dev/inject": " False "}), false),
        ] {
            let body = review_of(web_pod(annotations.clone()), "CREATE");
            let (status, v) = post_to(NAMESPACE_PATH, serde_json::to_vec(&body).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(v["response"]["allowed"], true);
            assert_eq!(
                v["response"].get("patch").is_some(),
                patched,
                "{annotations}"
            );
        }
        // The annotation webhook still needs the annotation.
        let body = review_of(web_pod(json!({})), "CREATE");
        let (_, v) = post_to(ANNOTATION_PATH, serde_json::to_vec(&body).unwrap()).await;
        assert!(v["response"].get("patch").is_none());
    }

    #[tokio::test]
    async fn malformed_reviews_are_invalid_not_a_crash() {
        for body in [
            b"{not json".to_vec(),
            b"[]".to_vec(),
            serde_json::to_vec(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            )
            .unwrap(),
        ] {
            let (status, v) = post(body).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(v["response"]["allowed"], false);
            assert_eq!(v["response"]["status"]["reason"], "InvalidRequest");
        }
    }

    #[tokio::test]
    async fn wrong_annotation_is_denied_with_the_reason() {
        let pod = web_pod(json!({"roster.dev/inject": "true", "roster.dev/app-port": "nope"}));
        let (_, v) = post(serde_json::to_vec(&review_of(pod, "CREATE")).unwrap()).await;
        assert_eq!(v["response"]["allowed"], false);
        let msg = v["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("roster.dev/app-port"), "{msg}");
    }

    #[tokio::test]
    async fn non_pod_object_is_allowed_with_a_warning() {
        let body = review_of(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                                    "spec": {"containers": "not a list"}}),
            "CREATE",
        );
        let (_, v) = post(serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(v["response"]["allowed"], true);
        assert!(
            v["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("not a Pod")
        );
    }
}
