//! One bounded HTTP/1.1 server for the axum listeners: the LB's control
//! API, the agent's vitals port and the webhook.
//!
//! `axum::serve` has no timer: a head that never ends, a body that never
//! comes or an idle connection is held forever, and nothing caps how many.
//! Here every connection takes a slot in its listener's [`ConnTable`](crate::limits::ConnTable) and
//! runs under [`Tracked`](crate::limits::Tracked) (head deadline, idle timeout, write timeout,
//! eviction); request bodies get a between-frames timeout; a
//! `Content-Length` above the listener's body cap is answered 413 before
//! any of the body is read.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::limits::{ConnState, ConnTable, Tracked};
use crate::protocol::ErrorBody;

/// What the server needs besides the router.
pub struct Listener<T> {
    pub listener: TcpListener,
    pub table: Arc<ConnTable>,
    /// Larger declared bodies get 413 at once.
    pub max_body: usize,
    /// TLS on top of the bounded socket (the webhook).
    pub tls: Option<TlsAcceptor>,
    /// What handlers see as `ConnectInfo<T>`.
    pub info: fn(&TcpStream, SocketAddr) -> T,
}

/// The remote address, for `ConnectInfo<SocketAddr>`.
pub fn remote(_: &TcpStream, peer: SocketAddr) -> SocketAddr {
    peer
}

/// Serve `router` until `shutdown` resolves, then give open connections
/// `grace` to finish.
pub async fn serve<T: Clone + Send + Sync + 'static>(
    l: Listener<T>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = l.listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (EMFILE): back off, never spin.
                    tracing::warn!(listener = l.table.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = l.table.admit() else {
            if l.tls.is_none() {
                let _ = tcp.try_write(&crate::limits::FULL);
            }
            continue;
        };
        let info = (l.info)(&tcp, peer);
        let _ = tcp.set_nodelay(true);
        let state = Arc::clone(slot.state());
        let io = Tracked::new(tcp, slot, l.tls.is_none());
        let svc = ConnService {
            router: router.clone(),
            state,
            max_body: l.max_body,
        };
        spawn_connection(io, svc, info, l.tls.clone(), graceful.watcher(), peer);
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(
            listener = l.table.name(),
            "connections still open after the grace period"
        );
    }
}

/// Serve one admitted connection on its own task: the TLS handshake if
/// any, then HTTP/1 until it closes or the graceful shutdown ends it.
fn spawn_connection<T: Clone + Send + Sync + 'static>(
    io: Tracked<TcpStream>,
    svc: ConnService,
    info: T,
    tls: Option<TlsAcceptor>,
    watcher: Watcher,
    peer: SocketAddr,
) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req;
        req.extensions_mut().insert(ConnectInfo(info.clone()));
        svc.call(req)
    });
    tokio::spawn(async move {
        let builder = hyper::server::conn::http1::Builder::new();
        let result = match tls {
            None => {
                watcher
                    .watch(builder.serve_connection(TokioIo::new(io), svc))
                    .await
            }
            Some(acceptor) => match acceptor.accept(io).await {
                Ok(s) => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(s), svc))
                        .await
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection closed with an error");
        }
    });
}

/// One connection's view of the router: marks the request's start and end
/// for the connection's bounds.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    max_body: usize,
}

impl ConnService {
    fn call(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<EndsRequest>, std::convert::Infallible>> + use<> {
        self.state.begin_request();
        let guard = EndOnDrop(Arc::clone(&self.state));
        let too_large = declared_length(&req).is_some_and(|n| n > self.max_body as u64);
        let max_body = self.max_body;
        let body_timeout = self.state.limits().body_timeout;
        let router = self.router.clone();
        async move {
            let resp = if too_large {
                discard_body(req, body_timeout).await;
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body larger than {max_body} bytes"),
                )
            } else {
                let req = req.map(|b| Body::new(TimeoutBody::new(body_timeout, b)));
                match router.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            };
            Ok(resp.map(|body| EndsRequest {
                body,
                _guard: guard,
            }))
        }
    }
}

/// Declared bodies up to this size are read and dropped before the 413,
/// so the client sees the answer instead of a reset (closing with unread
/// data in the socket sends RST); larger ones are refused unread.
const DISCARD_UP_TO: u64 = 1024 * 1024;

/// At most a second (a client that declared a body but sends none still
/// gets its 413 at once, in effect).
async fn discard_body(req: Request<Incoming>, body_timeout: std::time::Duration) {
    use futures::StreamExt;
    if declared_length(&req).is_none_or(|n| n > DISCARD_UP_TO) {
        return;
    }
    let mut data = Body::new(req.into_body()).into_data_stream();
    let drain = async { while let Some(Ok(_)) = data.next().await {} };
    let limit = body_timeout.min(std::time::Duration::from_secs(1));
    let _ = tokio::time::timeout(limit, drain).await;
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A JSON `{"error": ...}` answer ([`ErrorBody::json`]).
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(ErrorBody::json(message)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Ends the request, for the connection's bounds, when dropped.
struct EndOnDrop(Arc<ConnState>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request once hyper has sent it whole
    /// (a large answer to a slow reader is not cut by the idle timeout).
    pub struct EndsRequest {
        #[pin]
        body: Body,
        _guard: EndOnDrop,
    }
}

impl HttpBody for EndsRequest {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether a body error is the between-frames timeout (answered 408).
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = e.source();
    }
    false
}
