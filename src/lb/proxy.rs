//! The Pingora proxy: pick a routable backend, forward, count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::bounded::OpenStream;
use super::grpc::{self, Verdict};
use super::pools::Pool;
use super::routes::host_of;
use super::upgrade::{Listed, Upgrades};
use super::{State, peer};
use crate::label::Label;
use crate::protocol::{ErrorBody, Protocol};
use crate::registry::Upstream;
use crate::telemetry::{CodeClass, EjectionReason};

/// Lower case: pingora keeps the name as given for the wire.
const XFF: &str = "x-forwarded-for";
/// The same name, parsed once: a lookup then hashes it without parsing.
static XFF_NAME: http::HeaderName = http::HeaderName::from_static(XFF);

/// Candidates visited per pick; bounds ketama's walk and retries' skips.
const MAX_ITERATIONS: usize = 256;

/// The proxy service.
pub struct Proxy {
    pub state: Arc<State>,
    /// Upgraded connections, ended with a close frame at shutdown.
    pub upgrades: Arc<Upgrades>,
}

/// Counts a request in flight to one backend for as long as it lives.
struct InFlight(Arc<Upstream>);

impl InFlight {
    fn new(u: Arc<Upstream>) -> Self {
        u.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(u)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts every request the proxy holds, so shutdown can end early.
struct Active(Arc<State>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request context.
pub struct Ctx {
    _active: Active,
    started: Instant,
    /// The service the request was routed to.
    pool: Option<Arc<Pool>>,
    upstream: Option<InFlight>,
    /// Backends tried before `upstream` (retries only).
    tried: Vec<SocketAddr>,
    /// Why the request got no backend (answered with a body in `fail_to_proxy`).
    no_backend: Option<&'static str>,
    /// Status of the backend's answer, once one arrived.
    upstream_status: Option<u16>,
    /// How proxying ended, when it did not end well.
    failure: Option<Failure>,
    /// The request is a gRPC call.
    grpc: bool,
    /// What the answer's `grpc-status` (head or trailers) says.
    grpc_verdict: Option<Verdict>,
    /// The call's `grpc-timeout` bounds the backend's timeouts.
    grpc_deadline: bool,
    /// The request asks for an upgrade (WebSocket).
    upgrade: bool,
    /// Its upstream socket, listed for shutdown.
    _listed: Option<Listed>,
    /// An HTTP/2 request's stream, counted open on its connection.
    _stream: Option<OpenStream>,
}

/// Who broke a proxied exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The backend reset, timed out or sent a broken answer: counts
    /// toward ejection.
    Upstream,
    /// The client hung up or stalled: never the backend's fault.
    Downstream,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        self.state.active_requests.fetch_add(1, Ordering::Relaxed);
        Ctx {
            _active: Active(Arc::clone(&self.state)),
            started: Instant::now(),
            pool: None,
            upstream: None,
            tried: Vec::new(),
            no_backend: None,
            upstream_status: None,
            failure: None,
            grpc: false,
            grpc_verdict: None,
            grpc_deadline: false,
            upgrade: false,
            _listed: None,
            _stream: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx._stream = super::bounded::head_done(session, &self.state.proxy_conns);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.grpc = grpc::is_grpc(session.req_header());
        ctx.upgrade = session.is_upgrade_req();
        if ctx.upgrade {
            // A WebSocket lives long and may stay quiet: its own idle
            // timeout instead of the body timeout (the upstream side is
            // set on the peer).
            session.set_read_timeout(Some(self.state.config.lb.websocket_idle_timeout));
        }
        let req = session.req_header();
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        let (first, more) = (hosts.next(), hosts.next().is_some());
        // RFC 9112 §3.2: an HTTP/1.1 request needs exactly one Host.
        if req.version == http::Version::HTTP_11 && (first.is_none() || more) {
            let why = if more {
                "more than one Host header"
            } else {
                "Host header missing (HTTP/1.1 requires one)"
            };
            respond_json(session, 400, why).await;
            return Ok(true);
        }
        let routes = self.state.routes.load();
        // The authority (h2) or the Host header, without its port; only
        // worked out when some route names a host.
        let host = if routes.by_host() {
            req.uri
                .host()
                .or_else(|| first.and_then(|h| h.to_str().ok()).map(host_of))
        } else {
            None
        };
        let Some(service) = routes.resolve(host, req.uri.path()) else {
            respond_json(session, 404, "no route").await;
            return Ok(true);
        };
        ctx.pool = self.state.pools.get(service);
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // A routed service without a pool has no backend yet.
        let Some(pool) = ctx.pool.clone() else {
            ctx.no_backend = Some("no backend available");
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no backend available",
            ));
        };
        let routable = pool.slot.routable();
        let selector = &pool.selector;
        let key: Vec<u8> = if selector.uses_key() {
            hash_key(session, &pool.spec().hash_header)
        } else {
            Vec::new()
        };
        // A retry: the backend just tried is not offered again. The first
        // attempt records nothing (no allocation on the common path).
        if let Some(prev) = &ctx.upstream {
            ctx.tried.push(prev.0.addr);
            self.state.metrics.retries.inc();
        }
        let tried = &ctx.tried;
        let Some(upstream) = selector.pick_routable(&routable, &key, MAX_ITERATIONS, |u| {
            !tried.contains(&u.addr)
        }) else {
            let (code, why) = if ctx.upstream.is_none() {
                (503, "no backend available")
            } else {
                (502, "no backend could be reached")
            };
            ctx.no_backend = Some(why);
            return Err(Error::explain(ErrorType::HTTPStatus(code), why));
        };
        let addr = upstream.addr;

        let lb = &self.state.config.lb;
        // The backend's own word, else its service's, else the LB's.
        let protocol = upstream.protocol.unwrap_or(pool.spec().protocol);
        ctx.upstream = Some(InFlight::new(upstream));
        // An HTTP/1.1 upgrade can only be carried over HTTP/1.1.
        let protocol = if ctx.upgrade {
            Protocol::Http1
        } else {
            protocol
        };
        let mut peer = peer::build(addr, protocol, pool.tls.as_deref(), lb);
        if ctx.upgrade {
            peer::upgraded(&mut peer, lb);
        }
        if ctx.grpc
            && let Some(t) = grpc::timeout(&session.req_header().headers)
        {
            ctx.grpc_deadline = true;
            peer::deadline(&mut peer, t);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // The client's Host passes through unchanged, as from any reverse
        // proxy; the client's address is appended to X-Forwarded-For.
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
            let xff = super::forwarded::forwarded_for(req.headers.get(&XFF_NAME), ip.ip());
            req.insert_header(XFF, xff)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut pingora::http::ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        if ctx.grpc {
            // A trailers-only answer carries its status in the head.
            ctx.grpc_verdict = grpc::status(&resp.headers).map(grpc::verdict);
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.upgrade {
            ctx._listed = Some(self.upgrades.list(fd));
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        // The backend side was shut down by the LB's shutdown: the client
        // gets a WebSocket "going away" before the connection ends.
        if end_of_stream && ctx.upgrade && session.was_upgraded() && self.upgrades.closing() {
            self.upgrades.goodbye(body);
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Read only: the trailers reach the client unchanged.
        if ctx.grpc
            && let Some(code) = grpc::status(trailers)
        {
            ctx.grpc_verdict = Some(grpc::verdict(code));
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.state.metrics.connect_failures.inc();
        self.record_failure(ctx, EjectionReason::Connect, "connect failures");
        // Nothing reached the backend: another one can take the request.
        if attempts(ctx) <= retries(ctx) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if matches!(e.esource(), ErrorSource::Downstream) {
            // The client left or stalled: the backend did nothing wrong,
            // and nobody is waiting for a replay.
            ctx.failure = Some(Failure::Downstream);
            e.set_retry(false);
            return e;
        }
        // A reset, timeout or broken answer, before or after the header.
        ctx.failure = Some(Failure::Upstream);
        // A gRPC deadline the client chose ran out: not the backend's fault.
        let deadline_passed = ctx.grpc_deadline
            && matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
        if !deadline_passed {
            self.record_failure(ctx, EjectionReason::Reset, "resets or broken answers");
        }
        let lb = &self.state.config.lb;
        let req = session.req_header();
        // gRPC calls are all POSTs: the config says which may be replayed.
        let idempotent = if ctx.grpc {
            grpc::replayable(req.uri.path(), &lb.grpc_idempotent_methods)
        } else {
            req.method.is_idempotent()
        };
        let replayable = idempotent && !session.as_ref().retry_buffer_truncated();
        if !replayable || ctx.upstream_status.is_some() || attempts(ctx) > retries(ctx) {
            // The request may have had effects, or the client already has
            // part of an answer: never replay it.
            e.set_retry(false);
        } else if ctx.pool.as_ref().is_some_and(|p| p.spec().retry_idempotent) {
            e.set_retry(true);
        } else {
            // pingora's default: retry only a stale reused connection.
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// A failure the client caused (it hung up, reset its stream, or sent
    /// something unreadable) is the client's behaviour, not an operator's
    /// problem: pingora's ERROR line for it is dropped, and the request is
    /// counted (`code_class="aborted"`, or its 4xx) and logged at DEBUG.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        let client = matches!(e.esource(), ErrorSource::Downstream);
        if client {
            tracing::debug!(error = %e, "client-side failure");
        }
        client
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let (Some(why), ErrorType::HTTPStatus(code)) = (ctx.no_backend, e.etype()) {
            if *code == 503 {
                self.state.metrics.no_backend.inc();
            }
            respond_error(session, *code, why, false).await;
            return FailToProxy {
                error_code: *code,
                can_reuse_downstream: true,
            };
        }
        // pingora's default mapping.
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        super::bounded::request_done(session);
        match (ctx.failure, ctx.upstream_status) {
            // Counted where it happened (error_while_proxy).
            (Some(_), _) => {}
            (None, Some(s)) if s >= 500 => {
                self.record_failure(ctx, EjectionReason::ServerError, "5xx answers")
            }
            (None, Some(_)) if ctx.grpc_verdict == Some(Verdict::Failed) => self.record_failure(
                ctx,
                EjectionReason::Grpc,
                "gRPC UNAVAILABLE/RESOURCE_EXHAUSTED answers",
            ),
            (None, Some(_)) => {
                if let Some(u) = &ctx.upstream {
                    u.0.failures.store(0, Ordering::Relaxed);
                }
            }
            (None, None) => {}
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let class = match (ctx.failure, ctx.upstream_status) {
            // The client got a header, then a broken body: not a success.
            (Some(Failure::Upstream), Some(_)) => CodeClass::Error,
            (Some(Failure::Downstream), _) => CodeClass::Aborted,
            _ => CodeClass::of(status),
        };
        let m = &self.state.metrics;
        match &ctx.upstream {
            Some(u) => {
                u.0.requests
                    .inc(&m.requests, &u.0.service, &u.0.label, class)
            }
            None => {
                let service = ctx.pool.as_ref().map_or("none", |p| p.name());
                m.requests
                    .with_label_values(&[service, "none", class.as_str()])
                    .inc()
            }
        }
        let now = Instant::now();
        let took = now.saturating_duration_since(ctx.started);
        if let (Some(u), Some(_), None) = (&ctx.upstream, ctx.upstream_status, ctx.failure) {
            // Answered: what the backend took (a failure's time says little).
            u.0.observe_latency(took, now);
        }
        m.observe_duration(class, took.as_secs_f64());
    }
}

impl Proxy {
    /// Count a failure on live traffic; eject after `lb.eject_after` in a row.
    fn record_failure(&self, ctx: &Ctx, reason_label: EjectionReason, what: &str) {
        let lb = &self.state.config.lb;
        let Some(InFlight(u)) = &ctx.upstream else {
            return;
        };
        let n = u.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if lb.eject_after == 0 || n < lb.eject_after {
            return;
        }
        let reason = format!("{n} consecutive {what}");
        if let Some(length) = self.state.registry.eject(
            u,
            reason.clone(),
            Instant::now(),
            lb.ejection_time,
            lb.max_ejection_time,
        ) {
            self.state
                .metrics
                .ejections
                .with_label_values(&[reason_label.as_str()])
                .inc();
            tracing::warn!(id = %u.id, address = %u.addr, %reason, seconds = length.as_secs(), "backend ejected");
        }
    }
}

/// Backends tried so far, the current one included.
fn attempts(ctx: &Ctx) -> usize {
    ctx.tried.len() + usize::from(ctx.upstream.is_some())
}

/// Retries allowed for the request's service.
fn retries(ctx: &Ctx) -> usize {
    ctx.pool.as_ref().map_or(0, |p| p.spec().retries)
}

/// Answer with a JSON `{"error": ...}` body ([`ErrorBody::json`]) and
/// close the connection.
async fn respond_json(session: &mut Session, code: u16, why: &str) {
    session.set_keepalive(None);
    respond_error(session, code, why, true).await;
}

/// A refusal with the JSON error body; `close` adds `connection: close`.
async fn respond_error(session: &mut Session, code: u16, why: &str, close: bool) {
    let body = Bytes::from(ErrorBody::json(why));
    let Ok(mut resp) = pingora::http::ResponseHeader::build(code, Some(3)) else {
        return;
    };
    let _ = resp.insert_header("content-type", "application/json");
    let _ = resp.insert_header("content-length", body.len().to_string());
    if close {
        let _ = resp.insert_header("connection", "close");
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

/// The consistent-hash key: the configured header, else the client IP.
fn hash_key(session: &Session, header: &str) -> Vec<u8> {
    if let Some(v) = session.req_header().headers.get(header) {
        return v.as_bytes().to_vec();
    }
    match session.client_addr().and_then(|a| a.as_inet()) {
        Some(a) => a.ip().to_string().into_bytes(),
        None => Vec::new(),
    }
}
