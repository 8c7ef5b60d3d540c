//! The control API (axum) on `lb.control_listen`.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /register` | 201 created / 200 renewed, the entry as JSON |
//! | `DELETE /register/{id}` | 204, or 404 for an unknown id |
//! | `GET /backends[?service=S]` | the routable addresses, the seed's shape (default service) |
//! | `GET /registry[?service=S]` | every entry with service, state, vitals, lease; the set's digest |
//! | `GET /services` | every service: registered and routable counts, digest |
//! | `GET /routes` | the routes in force, the default service, the last reload error |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once the first health round is done; 503 while warming up or shutting down |
//! | `GET /telemetry` | Prometheus text, `roster_lb_*` |
//! | `GET /` | the operator's page ([`super::ui`]) |
//!
//! Every 4xx carries `{"error": "..."}` naming the field at fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;

use super::State;
use super::auth::AuthError;
use crate::label::Label;
use crate::protocol::Registration;
use crate::registry::{Outcome, RegisterError, Removal};
use crate::telemetry::{DeregistrationReason, RegistrationResult};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A 4xx (or 503) answer with a JSON `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tell the client when to come back.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = crate::serve::error(self.status, &self.message).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        resp
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        let status = match e {
            RegisterError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RegisterError::Unlisted { .. } | RegisterError::Special { .. } => StatusCode::FORBIDDEN,
            RegisterError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        Self::new(status, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::MissingToken
            | AuthError::MissingWriteToken
            | AuthError::InvalidToken
            | AuthError::Denied(_) => StatusCode::UNAUTHORIZED,
            AuthError::NotThePod { .. } => StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        let api = Self::new(status, e.to_string());
        match e {
            AuthError::RateLimited { retry_after } => api.retry_after(retry_after),
            _ => api,
        }
    }
}

/// `?service=NAME` on reads and DELETE.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceQuery {
    pub service: Option<String>,
}

/// The query string, parsed: unknown keys and bad names are a 400.
fn service_query(q: Result<Query<ServiceQuery>, QueryRejection>) -> Result<ServiceQuery, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if let Some(s) = &q.service {
        crate::registry::validate_name(crate::registry::Field::Service, s)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    Ok(q)
}

/// Read a JSON body: malformed → 400, wrong type or missing field → 422
/// naming the field, too large → 413.
pub fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        if crate::serve::is_body_timeout(&r) {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body: the client stopped sending it",
            );
        }
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("body larger than {MAX_BODY_BYTES} bytes")
        } else {
            r.body_text()
        };
        ApiError::new(status, message)
    })?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{path}: {inner}"))
            }
            serde_json::error::Category::Data => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, inner.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {inner}")),
        }
    })?;
    // Trailing garbage after the document is malformed too.
    de.end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// The control API router; tests drive it without a socket.
pub fn router(state: Arc<State>) -> Router {
    let reads = Router::new()
        .route("/backends", get(backends))
        .route("/registry", get(registry))
        .route("/services", get(services))
        .route("/routes", get(routes))
        .route("/telemetry", get(telemetry))
        .merge(super::ui::routes())
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            protect_reads,
        ));
    let limited = Router::new()
        .route("/register", post(register))
        .route("/register/{id}", delete(deregister))
        .merge(reads)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            rate_limit,
        ));
    // Probes are never rate limited nor authenticated.
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(limited)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Per-source-IP rate limit: 429 with `Retry-After`.
async fn rate_limit(AxState(st): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    match st.auth.rate_limit(ip) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            st.metrics
                .registrations
                .with_label_values(&[RegistrationResult::RateLimited.as_str()])
                .inc();
            ApiError::from(e).into_response()
        }
    }
}

/// `registration.protect_reads`: reads need a credential too.
async fn protect_reads(
    AxState(st): AxState<Arc<State>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    st.auth.authorize_read(req.headers()).await?;
    Ok(next.run(req).await)
}

async fn register(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let m = &st.metrics;
    let result = async {
        // Cheap credential check first, so strangers cannot probe the fence.
        st.auth.authorize_any(&headers).await?;
        let reg: Registration = parse_json(body)?;
        let valid = st.registry.policy().validate(&reg)?;
        st.auth.authorize_write(&headers, valid.addr.ip()).await?;
        st.registry.register(valid, Instant::now()).map_err(|e| {
            let full = matches!(e, RegisterError::Full(_));
            let e = ApiError::from(e);
            // Room appears as leases expire; agents come back then.
            let lease = st.config.registration.lease_ttl.as_secs();
            if full { e.retry_after(lease / 3) } else { e }
        })
    }
    .await;
    let count = |r: RegistrationResult| m.registrations.with_label_values(&[r.as_str()]).inc();
    let registered = result.inspect_err(|e| {
        // Every refusal has its own status, so the status names it.
        count(match e.status {
            StatusCode::UNAUTHORIZED => RegistrationResult::Unauthorized,
            StatusCode::FORBIDDEN => RegistrationResult::Forbidden,
            StatusCode::TOO_MANY_REQUESTS => RegistrationResult::Full,
            StatusCode::SERVICE_UNAVAILABLE => RegistrationResult::Unavailable,
            _ => RegistrationResult::Invalid,
        })
    })?;
    let (outcome, resp) = (registered.outcome, registered.response);
    let (status, result) = match outcome {
        Outcome::Created => (StatusCode::CREATED, RegistrationResult::Created),
        Outcome::Renewed => (StatusCode::OK, RegistrationResult::Renewed),
    };
    if outcome == Outcome::Created {
        tracing::info!(id = %resp.id, address = %resp.address, "registered");
    }
    count(result);
    Ok((status, Json(resp)).into_response())
}

async fn deregister(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ServiceQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let q = service_query(query)?;
    let service = st
        .registry
        .policy()
        .service_of(q.service.as_deref())?
        .to_string();
    match st.registry.address_of(&service, &id) {
        Some(addr) => st.auth.authorize_write(&headers, addr.ip()).await?,
        None => st.auth.authorize_any(&headers).await?,
    }
    match st.registry.deregister(&service, &id, Instant::now()) {
        Removal::Unknown => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "id: no backend registered with this id",
        )),
        removal => {
            tracing::info!(%id, %service, draining = removal == Removal::Draining, "deregistered");
            st.metrics
                .deregistrations
                .with_label_values(&[DeregistrationReason::Deleted.as_str()])
                .inc();
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// The seed's flat address list, of the default service or `?service=`.
async fn backends(
    AxState(st): AxState<Arc<State>>,
    query: Result<Query<ServiceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = service_query(query)?;
    let default = &st.config.lb.default_service;
    let name = q.service.as_deref().unwrap_or(default);
    match st.registry.slot(name) {
        Some(slot) => Ok(Json(slot.routable().live().0).into_response()),
        // Registered a moment ago, not published yet.
        None if st.registry.knows(name) => Ok(Json(Vec::<String>::new()).into_response()),
        None if name.is_empty() => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "service: this LB has no default service (lb.default_service is empty); use ?service=NAME",
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("service: no service named {name:?}"),
        )),
    }
}

async fn registry(
    AxState(st): AxState<Arc<State>>,
    query: Result<Query<ServiceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = service_query(query)?;
    Ok(Json(st.registry.view(q.service.as_deref(), Instant::now())).into_response())
}

async fn services(AxState(st): AxState<Arc<State>>) -> Response {
    Json(st.registry.services()).into_response()
}

async fn routes(AxState(st): AxState<Arc<State>>) -> Response {
    let routes = st.routes.load();
    let mut doc = serde_json::to_value(routes.view()).unwrap_or_default();
    doc["last_reload_error"] = serde_json::json!(*st.route_error.lock());
    Json(doc).into_response()
}

async fn readyz(AxState(st): AxState<Arc<State>>) -> Response {
    if st.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !st.readiness.ready(&st.registry) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "warming up: first health round not finished\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn telemetry(AxState(st): AxState<Arc<State>>) -> Response {
    st.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use axum::body::Body;
    use proptest::prelude::*;
    use tower::ServiceExt;

    fn parse(body: &[u8]) -> Result<Registration, ApiError> {
        parse_json(Ok(Bytes::copy_from_slice(body)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes: parsed, or a 400/422 — never a panic.
        #[test]
        fn parser_total_on_bytes(body in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Err(e) = parse(&body) {
                prop_assert!(e.status == StatusCode::BAD_REQUEST
                    || e.status == StatusCode::UNPROCESSABLE_ENTITY);
            }
        }

        /// Any registration: validated or refused with a 4xx naming a field.
        #[test]
        fn validation_total(id in ".{0,300}", address in ".{0,60}", port in any::<u16>(), weight in any::<u32>()) {
            let policy = crate::registry::Policy {
                allowed_networks: vec!["0.0.0.0/0".parse().unwrap()],
                max_backends: 10,
                lease_ttl: std::time::Duration::from_secs(1),
                default_service: "default".into(),
            };
            let reg = Registration { id: id.clone(), address, metrics_port: port, weight, service: None, protocol: None };
            match policy.validate(&reg) {
                Ok(v) => {
                    prop_assert!(!v.id.is_empty() && v.id.len() <= 253);
                    prop_assert!(v.id.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)));
                    prop_assert!(v.addr.port() != 0 && v.metrics_port != 0);
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(["id:", "address:", "metrics_port:", "weight:"].iter().any(|f| msg.starts_with(f)), "{}", msg);
                }
            }
        }
    }

    #[test]
    fn auth_errors_keep_their_status_and_text() {
        use crate::lb::auth::Denial;
        let cases = [
            (
                AuthError::MissingToken,
                401,
                "missing Authorization: Bearer token",
            ),
            (AuthError::InvalidToken, 401, "invalid bearer token"),
            (
                Denial::Rejected {
                    reason: Some("expired".into()),
                }
                .into(),
                401,
                "token rejected by the Kubernetes API: expired",
            ),
            (
                AuthError::NotThePod {
                    ip: "10.0.0.9".parse().unwrap(),
                    namespace: "ns".into(),
                    pod: "p".into(),
                },
                403,
                "address: 10.0.0.9 is not an IP of pod ns/p (kubernetes_auth)",
            ),
            (
                AuthError::RateLimited { retry_after: 3 },
                429,
                "rate limit exceeded for this source address (registration.rate_limit)",
            ),
        ];
        for (e, status, text) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.message.as_str()), (status, text));
        }
        let api = ApiError::from(AuthError::RateLimited { retry_after: 3 });
        assert_eq!(api.retry_after, Some(3));
    }

    #[test]
    fn handler_never_answers_5xx_to_random_bodies() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut config = Config::default();
        config.registration.allowed_networks = vec!["10.0.0.0/8".into()];
        let state = rt.block_on(async { State::new(config).unwrap() });
        let app = router(state);
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            (".{0,20}", ".{0,30}", any::<i64>()).prop_map(|(id, a, p)| {
                serde_json::json!({"id": id, "address": a, "metrics_port": p})
                    .to_string()
                    .into_bytes()
            }),
        ];
        runner
            .run(&strategy, |body| {
                let resp = rt.block_on(
                    app.clone().oneshot(
                        axum::http::Request::post("/register")
                            .body(Body::from(body))
                            .unwrap(),
                    ),
                );
                let status = resp.unwrap().status();
                prop_assert!(!status.is_server_error(), "{}", status);
                Ok(())
            })
            .unwrap();
    }
}
