//! TLS without cert-manager: the webhook keeps its CA and serving
//! certificate in a Secret of its own namespace and writes the CA into its
//! MutatingWebhookConfiguration's `caBundle`.
//!
//! Every replica runs the same reconcile: read the Secret; reuse what is
//! there when it is sound; issue a new serving certificate from the stored
//! CA when it expires or lacks a name; create everything only when there is
//! nothing usable. Writes carry the `resourceVersion` they read, so two
//! replicas starting together agree on one CA (the loser of the race
//! re-reads). The CA stays stable for years, so a renewal never invalidates
//! the `caBundle` another replica relies on. RBAC: `get`/`update` on that
//! one Secret (plus `create` when nothing pre-creates it; the chart does),
//! `get`/`patch` on that one MutatingWebhookConfiguration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::certs::{self, Bundle, CertError, SwappableCert};

/// Field manager named in the API server's managedFields.
const MANAGER: &str = "roster-inject";
const KEYS: [&str; 4] = ["ca.crt", "ca.key", "tls.crt", "tls.key"];

/// A failure talking to the API server or making certificates.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("MutatingWebhookConfiguration {0} not found")]
    NoWebhookConfig(String),
    #[error("Secret {0}: still conflicting after several attempts")]
    Conflict(String),
}

/// Where the self-managed TLS lives.
#[derive(Debug, Clone)]
pub struct SelfManaged {
    pub namespace: String,
    pub secret_name: String,
    pub webhook_config: String,
    pub dns_names: Vec<String>,
}

fn bundle_from(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Bundle {
        ca_cert: get("ca.crt")?,
        ca_key: get("ca.key")?,
        cert: get("tls.crt")?,
        key: get("tls.key")?,
    })
}

fn secret_data(b: &Bundle) -> BTreeMap<String, ByteString> {
    KEYS.iter()
        .zip([&b.ca_cert, &b.ca_key, &b.cert, &b.key])
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Read the Secret and return a sound bundle, renewing or creating it when needed.
pub async fn ensure_secret(client: &Client, sm: &SelfManaged) -> Result<Bundle, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &sm.namespace);
    for _ in 0..5 {
        let existing = api.get_opt(&sm.secret_name).await?;
        let current = existing.as_ref().and_then(bundle_from);
        let next = match &current {
            Some(b) => match certs::bundle_problem(b, &sm.dns_names) {
                None => return Ok(b.clone()),
                Some(problem) => {
                    if certs::ca_problem(b).is_none() {
                        tracing::info!(%problem, secret = %sm.secret_name, "issuing a new serving certificate from the stored CA");
                        let (cert, key) =
                            certs::issue_serving(&b.ca_cert, &b.ca_key, &sm.dns_names)?;
                        Bundle {
                            cert,
                            key,
                            ..b.clone()
                        }
                    } else {
                        tracing::warn!(%problem, secret = %sm.secret_name, "stored CA unusable: generating a new CA");
                        certs::generate_bundle(&sm.dns_names)?
                    }
                }
            },
            None => {
                tracing::info!(secret = %sm.secret_name, "no TLS Secret yet: generating a CA and a serving certificate");
                certs::generate_bundle(&sm.dns_names)?
            }
        };
        let result = match existing {
            Some(mut secret) => {
                // resourceVersion stays: a concurrent writer makes this a 409.
                // The type stays too (immutable): the chart pre-creates an
                // empty Opaque Secret so that Helm owns and deletes it.
                secret.data = Some(secret_data(&next));
                api.replace(&sm.secret_name, &PostParams::default(), &secret)
                    .await
                    .map(|_| ())
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(sm.secret_name.clone()),
                        namespace: Some(sm.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            MANAGER.to_string(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(secret_data(&next)),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(next),
            // Another replica wrote first: use what it wrote.
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(BootstrapError::Conflict(sm.secret_name.clone()))
}

/// Put `ca_pem` into every webhook's `clientConfig.caBundle`; true when it
/// had to change something.
pub async fn ensure_ca_bundle(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, BootstrapError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api
        .get_opt(name)
        .await?
        .ok_or_else(|| BootstrapError::NoWebhookConfig(name.to_string()))?;
    let mut ops = Vec::new();
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        let current = hook.client_config.ca_bundle.as_ref().map(|b| &b.0[..]);
        if current == Some(ca_pem.as_bytes()) {
            continue;
        }
        let idx = i.to_string();
        // `test` keeps the index honest if the list changed meanwhile.
        ops.push(json_patch::PatchOperation::Test(
            json_patch::TestOperation {
                path: json_patch::jsonptr::PointerBuf::from_tokens(["webhooks", &idx, "name"]),
                value: serde_json::Value::String(hook.name.clone()),
            },
        ));
        ops.push(json_patch::PatchOperation::Add(json_patch::AddOperation {
            path: json_patch::jsonptr::PointerBuf::from_tokens([
                "webhooks",
                &idx,
                "clientConfig",
                "caBundle",
            ]),
            value: serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec())).map_err(|e| {
                CertError::Invalid {
                    what: "caBundle".into(),
                    message: e.to_string(),
                }
            })?,
        }));
    }
    if ops.is_empty() {
        return Ok(false);
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::<()>::Json(json_patch::Patch(ops)),
    )
    .await?;
    tracing::info!(webhook_config = %name, "caBundle updated");
    Ok(true)
}

/// Startup: a bundle to serve, retried a few times so a slow API server
/// does not crash the pod, but wrong RBAC still fails loudly.
pub async fn initial_bundle(client: &Client, sm: &SelfManaged) -> Result<Bundle, BootstrapError> {
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match ensure_secret(client, sm).await {
            Ok(b) => return Ok(b),
            Err(e) if attempt < 6 => {
                tracing::warn!(error = %e, attempt, "TLS Secret not ready; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keep the Secret, the served certificate and the caBundle in step:
/// picks up another replica's renewal, renews before expiry, and restores a
/// caBundle that an upgrade or a re-apply wiped.
pub async fn reconcile_loop(
    client: Client,
    sm: SelfManaged,
    served: Arc<SwappableCert>,
    mut current: Bundle,
    every: Duration,
) {
    loop {
        // Until the caBundle is right, calls to the webhook fail: retry soon.
        let pause = match ensure_ca_bundle(&client, &sm.webhook_config, &current.ca_cert).await {
            Ok(_) => every,
            Err(e) => {
                tracing::warn!(error = %e, "cannot update the caBundle; will retry");
                every.min(Duration::from_secs(5))
            }
        };
        tokio::time::sleep(pause).await;
        match ensure_secret(&client, &sm).await {
            Ok(b) if b != current => {
                match certs::certified_key(b.cert.as_bytes(), b.key.as_bytes(), "Secret") {
                    Ok(key) => {
                        served.store(key);
                        tracing::info!(secret = %sm.secret_name, "serving the renewed certificate");
                        current = b;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewed certificate unusable"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the TLS Secret; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use std::pin::pin;
    use tower_test::mock;

    fn sm() -> SelfManaged {
        SelfManaged {
            namespace: "roster".into(),
            secret_name: "roster-injector-tls".into(),
            webhook_config: "roster-injector".into(),
            dns_names: certs::service_dns_names("roster-injector", "roster"),
        }
    }

    fn json_response(status: u16, v: Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap()
    }

    fn not_found(kind: &str) -> Response<Body> {
        json_response(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": format!("{kind} not found"), "reason": "NotFound", "code": 404}),
        )
    }

    async fn body_json(req: Request<Body>) -> Value {
        let bytes = req.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn mwc(ca: Option<&str>) -> Value {
        let mut cc = json!({"service": {"name": "roster-injector", "namespace": "roster", "path": "/mutate"}});
        if let Some(ca) = ca {
            cc["caBundle"] = json!(ByteString(ca.as_bytes().to_vec()));
        }
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "roster-injector", "resourceVersion": "7"},
            "webhooks": [{"name": "inject.roster.dev", "clientConfig": cc,
                          "admissionReviewVersions": ["v1"], "sideEffects": "None"}]
        })
    }

    #[tokio::test]
    async fn ca_bundle_is_patched_once() {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "roster");
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            // First round: empty caBundle → GET then a JSON patch.
            let (req, send) = handle.next_request().await.expect("get");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(
                req.uri().path(),
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/roster-injector"
            );
            send.send_response(json_response(200, mwc(None)));
            let (req, send) = handle.next_request().await.expect("patch");
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(req.headers()["content-type"], "application/json-patch+json");
            let ops = body_json(req).await;
            assert_eq!(
                ops[0],
                json!({"op": "test", "path": "/webhooks/0/name", "value": "inject.roster.dev"})
            );
            assert_eq!(ops[1]["op"], "add");
            assert_eq!(ops[1]["path"], "/webhooks/0/clientConfig/caBundle");
            let sent: ByteString = serde_json::from_value(ops[1]["value"].clone()).unwrap();
            assert_eq!(sent.0, ca.as_bytes());
            send.send_response(json_response(200, mwc(Some(ca))));
            // Second round: already right → GET only.
            let (req, send) = handle.next_request().await.expect("get again");
            assert_eq!(req.method(), Method::GET);
            send.send_response(json_response(200, mwc(Some(ca))));
        });
        assert!(
            ensure_ca_bundle(&client, "roster-injector", ca)
                .await
                .unwrap()
        );
        assert!(
            !ensure_ca_bundle(&client, "roster-injector", ca)
                .await
                .unwrap()
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_webhook_config_is_named() {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "roster");
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(not_found("mutatingwebhookconfigurations"));
        });
        let err = ensure_ca_bundle(&client, "roster-injector", "x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("roster-injector"), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn secret_is_created_then_reused() {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "roster");
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let path = "/api/v1/namespaces/roster/secrets/roster-injector-tls";
            let (req, send) = handle.next_request().await.expect("get");
            assert_eq!((req.method(), req.uri().path()), (&Method::GET, path));
            send.send_response(not_found("secrets"));
            let (req, send) = handle.next_request().await.expect("create");
            assert_eq!(req.method(), Method::POST);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/roster/secrets");
            let mut created = body_json(req).await;
            assert_eq!(created["type"], "kubernetes.io/tls");
            for k in KEYS {
                assert!(created["data"][k].is_string(), "{k}");
            }
            created["metadata"]["resourceVersion"] = json!("1");
            send.send_response(json_response(201, created.clone()));
            // The next reconcile finds it sound and writes nothing.
            let (req, send) = handle.next_request().await.expect("get again");
            assert_eq!(req.method(), Method::GET);
            send.send_response(json_response(200, created));
        });
        let first = ensure_secret(&client, &sm()).await.unwrap();
        assert_eq!(certs::bundle_problem(&first, &sm().dns_names), None);
        let again = ensure_secret(&client, &sm()).await.unwrap();
        assert_eq!(first, again);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn create_race_uses_the_winners_secret() {
        let winner = certs::generate_bundle(&sm().dns_names).unwrap();
        let stored = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "roster-injector-tls", "namespace": "roster", "resourceVersion": "3"},
            "data": secret_data(&winner),
        });
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "roster");
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(not_found("secrets"));
            let (req, send) = handle.next_request().await.expect("create");
            assert_eq!(req.method(), Method::POST);
            send.send_response(json_response(
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "already exists", "reason": "AlreadyExists", "code": 409}),
            ));
            let (req, send) = handle.next_request().await.expect("get after conflict");
            assert_eq!(req.method(), Method::GET);
            send.send_response(json_response(200, stored));
        });
        let got = ensure_secret(&client, &sm()).await.unwrap();
        assert_eq!(got, winner);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn serving_cert_for_other_names_is_reissued_from_the_stored_ca() {
        let old = certs::generate_bundle(&["elsewhere".to_string()]).unwrap();
        let stored = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "roster-injector-tls", "namespace": "roster", "resourceVersion": "5"},
            "data": secret_data(&old),
        });
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "roster");
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(json_response(200, stored));
            let (req, send) = handle.next_request().await.expect("replace");
            assert_eq!(req.method(), Method::PUT);
            let body = body_json(req).await;
            assert_eq!(
                body["metadata"]["resourceVersion"], "5",
                "optimistic concurrency"
            );
            send.send_response(json_response(200, body));
        });
        let got = ensure_secret(&client, &sm()).await.unwrap();
        assert_eq!(got.ca_cert, old.ca_cert, "CA kept: caBundle stays valid");
        assert_ne!(got.cert, old.cert);
        assert_eq!(certs::bundle_problem(&got, &sm().dns_names), None);
        server.await.unwrap();
    }
}
