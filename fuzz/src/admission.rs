//! The injector's AdmissionReview: the body as `POST /mutate` and
//! `POST /mutate/namespace` read it ([`review_for`]), answered as sent
//! ([`to_wire`]). A patch in the answer must be a JSON patch that applies
//! to the pod, leave a pod, and one the injector leaves alone.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use roster::inject::patch::{InjectConfig, Injection, OptIn, TokenSource, inject_with};
use roster::inject::server::{review_for, to_wire};
use serde_json::Value;

pub fn run(data: &[u8]) {
    let configs = [
        InjectConfig::default(),
        InjectConfig {
            native_sidecar: false,
            app_pre_stop_sleep: false,
            token: TokenSource::Secret {
                name: "roster-token".into(),
            },
            image_pull_secrets: vec!["regcred".into()],
            ..InjectConfig::default()
        },
    ];
    for cfg in &configs {
        for opt_in in [OptIn::Annotation, OptIn::Namespace] {
            answer(data, cfg, opt_in);
        }
    }
}

fn answer(data: &[u8], cfg: &InjectConfig, opt_in: OptIn) {
    let wire = to_wire(review_for(cfg, data, opt_in).into_review());
    let response = &wire["response"];
    assert!(response.is_object(), "every body gets a response: {wire}");
    let Some(patch) = response.get("patch") else {
        return;
    };
    assert_eq!(response["allowed"], Value::Bool(true), "a patch allows");
    let bytes: ByteString = serde_json::from_value(patch.clone()).expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).expect("patch is a JSON patch");
    // The pod as the server read it, as the API server holds it: always
    // with a spec (Go serializes the struct even when empty).
    let pod = request_pod(data).expect("a patch answers a pod");
    if pod.spec.is_none() {
        return;
    }
    let mut doc = serde_json::to_value(&pod).expect("a pod serializes");
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\npatch: {patch:?}\npod: {doc}"));
    let patched: Pod = serde_json::from_value(doc).expect("the patched pod is a pod");
    match inject_with(&patched, cfg, opt_in) {
        Ok(Injection::Skipped(_)) => {}
        other => panic!("a patched pod is injected again: {other:?}"),
    }
}

/// The review's object read as a Pod, the server's way.
fn request_pod(data: &[u8]) -> Option<Pod> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(data).ok()?;
    let object = review.request?.object?;
    serde_json::from_value(serde_json::to_value(object).ok()?).ok()
}
