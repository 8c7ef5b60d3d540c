//! The control API (axum) on `lb.control_listen`.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /register` | 201 created / 200 renewed, the entry as JSON |
//! | `DELETE /register/{id}` | 204, or 404 for an unknown id |
//! | `GET /backends` | the routable addresses, the seed's shape |
//! | `GET /registry` | every entry with state, vitals, lease; the set's digest |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once the first health round is done; 503 while warming up or shutting down |
//! | `GET /telemetry` | Prometheus text, `roster_lb_*` |
//!
//! Every 4xx carries `{"error": "..."}` naming the field at fault.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;

use super::State;
use crate::protocol::{ErrorBody, Registration};
use crate::registry::{RegisterError, Registered};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A 4xx (or 503) answer with a JSON `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        let status = match e {
            RegisterError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RegisterError::Forbidden(_) => StatusCode::FORBIDDEN,
            RegisterError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        Self::new(status, e.to_string())
    }
}

/// Read a JSON body: malformed → 400, wrong type or missing field → 422
/// naming the field, too large → 413.
pub fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
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
    Router::new()
        .route("/register", post(register))
        .route("/register/{id}", delete(deregister))
        .route("/backends", get(backends))
        .route("/registry", get(registry))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/telemetry", get(telemetry))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn register(
    AxState(st): AxState<Arc<State>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let m = &st.metrics;
    let result = (|| {
        let reg: Registration = parse_json(body).inspect_err(|_| {
            m.registrations.with_label_values(&["invalid"]).inc();
        })?;
        let valid = st.registry.policy().validate(&reg)?;
        Ok::<_, ApiError>(st.registry.register(valid, Instant::now())?)
    })();
    let (outcome, resp, target) = result.inspect_err(|e| {
        if e.status != StatusCode::BAD_REQUEST {
            let label = match e.status {
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::TOO_MANY_REQUESTS => "full",
                _ => "invalid",
            };
            m.registrations.with_label_values(&[label]).inc();
        }
    })?;
    if let Some(t) = target {
        st.health.spawn(t);
    }
    let (status, label) = match outcome {
        Registered::Created => (StatusCode::CREATED, "created"),
        Registered::Renewed => (StatusCode::OK, "renewed"),
    };
    if outcome == Registered::Created {
        tracing::info!(id = %resp.id, address = %resp.address, "registered");
    }
    m.registrations.with_label_values(&[label]).inc();
    Ok((status, Json(resp)).into_response())
}

async fn deregister(
    AxState(st): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if st.registry.deregister(&id) {
        tracing::info!(%id, "deregistered");
        st.metrics
            .deregistrations
            .with_label_values(&["deleted"])
            .inc();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "id: no backend registered with this id",
        ))
    }
}

async fn backends(AxState(st): AxState<Arc<State>>) -> Response {
    Json(&st.registry.routable().addresses).into_response()
}

async fn registry(AxState(st): AxState<Arc<State>>) -> Response {
    Json(st.registry.view(Instant::now())).into_response()
}

async fn readyz(AxState(st): AxState<Arc<State>>) -> Response {
    if st.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !st.registry.first_round_done() {
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
