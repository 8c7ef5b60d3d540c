//! Wire types shared by the LB, the agent and the tests: the registration
//! request and answer, the vitals document, and the registry view.
//!
//! Field names and JSON types are fixed by SPEC.md; change nothing here
//! without changing the spec.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `POST /register` body. Unknown fields are ignored so newer agents can
/// talk to older LBs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Registration {
    /// Stable backend identity (pod name); 1–253 chars of `[A-Za-z0-9._-]`.
    pub id: String,
    /// `IP:port` traffic is sent to (`[v6]:port` for IPv6).
    pub address: String,
    /// Port of the vitals server on the same host as `address`.
    pub metrics_port: u16,
    /// Relative share of traffic, 1–100.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The service this backend serves (id rules); absent = the LB's
    /// `lb.default_service`. An id is unique within its service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What the backend speaks on `address`; absent = the LB's
    /// `lb.upstream_protocol`. Omitted when unset, so the seed's shape is
    /// unchanged on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// The HTTP version the LB speaks to a backend.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    clap::ValueEnum,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 (upgrades such as WebSocket pass through).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: gRPC backends.
    H2c,
    /// HTTP/2 when the backend offers it over TLS (ALPN), else HTTP/1.1;
    /// on a plaintext backend, HTTP/1.1 (cleartext has no negotiation).
    Auto,
}

fn default_weight() -> u32 {
    1
}

/// Maximum accepted `weight`: pingora's weighted selectors expand each
/// backend `weight` times, so the cap bounds selector size at 10,000 backends.
pub const MAX_WEIGHT: u32 = 100;

/// The answer to `POST /register`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RegisterResponse {
    pub id: String,
    pub address: String,
    pub metrics_port: u16,
    pub weight: u32,
    pub state: BackendState,
    /// The service, echoed only when the registration named one (an
    /// un-named registration gets the seed's answer byte for byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Seconds until the lease expires unless renewed.
    pub lease_ttl_seconds: u64,
    /// When the agent should announce next; the LB spreads a fleet's heartbeats.
    pub next_announce_seconds: u64,
}

/// Where a registered backend stands; its text (metrics, the status
/// table) is its serde name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BackendState {
    /// Passes its checks and receives traffic.
    Healthy,
    /// Failed `unhealthy_threshold` checks in a row, or not checked yet.
    Unhealthy,
    /// Its vitals say `"ready": false`.
    NotReady,
    /// Deregistering; never receives new traffic.
    Draining,
}

/// The JSON vitals served on `GET /metrics` by every backend's vitals port.
///
/// Only `ready` is required when the LB reads vitals: a backend written in
/// another language may serve `{"ready": true}` and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Vitals {
    pub ready: bool,
    #[serde(default)]
    pub requests_in_progress: u32,
    #[serde(default)]
    pub cpu_usage: f64,
    #[serde(default)]
    pub memory_usage: f64,
    #[serde(default)]
    pub gpu_usage: f64,
    #[serde(default)]
    pub failed_responses: u64,
    #[serde(default)]
    pub connected_peers: u32,
    #[serde(default)]
    pub backoff_requests: u32,
    #[serde(default)]
    pub uptime_seconds: u64,
    #[serde(default)]
    pub version: String,
    /// The backend's id; when present the LB refuses a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why `ready` is false, when the agent knows (absent when ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One entry of `GET /registry`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EntryView {
    pub id: String,
    /// The service the entry belongs to.
    pub service: String,
    pub address: String,
    pub metrics_port: u16,
    pub weight: u32,
    pub state: BackendState,
    /// Whether traffic is routed to it right now.
    pub routable: bool,
    /// Passively ejected after failures seen on live traffic, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected: Option<String>,
    /// RFC 3339 time of the last finished check.
    pub last_check: Option<String>,
    /// Why the last check failed.
    pub last_error: Option<String>,
    /// Seconds until the lease expires.
    pub lease_expires_in_seconds: u64,
    /// Requests the LB has in flight to this backend now.
    pub in_flight: u64,
    pub vitals: Option<Vitals>,
}

/// `GET /registry`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RegistryView {
    /// Hex digest of the routable address set; equal on LB replicas that agree.
    pub digest: String,
    /// True when too few backends are healthy and the LB routes to all
    /// registered, ready, non-draining backends.
    #[serde(default)]
    pub panic: bool,
    pub backends: Vec<EntryView>,
}

/// The naming rule of ids and service names: 1–253 characters of
/// `[A-Za-z0-9._-]`. The error says what is wrong, without the field.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "must be 1-253 characters, got {}",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "character {c:?} not allowed (use A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// Every 4xx body: `{"error": "..."}`, naming the bad field.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    /// `{"error":"..."}`: the one encoding of every refusal's body, on
    /// every port (the control API, the proxy, the vitals port, the raw
    /// answers below).
    pub fn json(message: &str) -> String {
        serde_json::json!({ "error": message }).to_string()
    }
}

/// A whole HTTP/1.1 refusal written straight to a socket that has no HTTP
/// stack on it (yet): the status line, `connection: close`, `headers`, and
/// the [`ErrorBody`] with its exact length. The connection is closed after.
pub fn raw_refusal(status: http::StatusCode, headers: &[(&str, &str)], message: &str) -> Vec<u8> {
    use std::fmt::Write;
    let body = ErrorBody::json(message);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    head.into_bytes()
}

/// One element of `GET /services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceView {
    pub name: String,
    /// Entries registered in the service, in any state.
    pub registered: usize,
    /// Addresses traffic for the service goes to now.
    pub routable: usize,
    /// Hex digest of the service's routable set (as `/registry`'s).
    pub digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_have_one_encoding() {
        assert_eq!(ErrorBody::json("no route"), r#"{"error":"no route"}"#);
        assert_eq!(
            ErrorBody::json("a \"quoted\"\nline"),
            r#"{"error":"a \"quoted\"\nline"}"#
        );
    }

    /// The answers written to raw sockets, byte for byte: the
    /// content-length is the body's.
    #[test]
    fn raw_refusals_are_exact() {
        assert_eq!(
            String::from_utf8_lossy(&crate::limits::FULL),
            "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n\
             content-type: application/json\r\ncontent-length: 37\r\n\r\n\
             {\"error\":\"too many open connections\"}"
        );
        let r = raw_refusal(http::StatusCode::REQUEST_TIMEOUT, &[], "x");
        assert_eq!(
            String::from_utf8_lossy(&r),
            "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}"
        );
    }
}
