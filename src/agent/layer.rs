//! The app-side counters behind the vitals, and a tower layer that keeps
//! two of them (requests in progress, failed responses) for any
//! `http::Request` service such as an axum `Router`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// Counters the embedding app feeds; lock-free.
#[derive(Debug)]
pub struct Counters {
    in_flight: AtomicU64,
    failed: AtomicU64,
    peers: AtomicU32,
    backoff: AtomicU32,
    ready: AtomicBool,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            peers: AtomicU32::new(0),
            backoff: AtomicU32::new(0),
            ready: AtomicBool::new(true),
        }
    }
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub requests_in_progress: u32,
    pub failed_responses: u64,
    pub connected_peers: u32,
    pub backoff_requests: u32,
    pub app_ready: bool,
}

impl Default for CounterSnapshot {
    fn default() -> Self {
        Self {
            requests_in_progress: 0,
            failed_responses: 0,
            connected_peers: 0,
            backoff_requests: 0,
            app_ready: true,
        }
    }
}

impl Counters {
    /// Count one request in progress until the guard drops.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            counters: Arc::clone(self),
        }
    }

    pub fn failed_response(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_connected_peers(&self, n: u32) {
        self.peers.store(n, Ordering::Relaxed);
    }

    pub fn set_backoff_requests(&self, n: u32) {
        self.backoff.store(n, Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests_in_progress: u32::try_from(self.in_flight.load(Ordering::Relaxed))
                .unwrap_or(u32::MAX),
            failed_responses: self.failed.load(Ordering::Relaxed),
            connected_peers: self.peers.load(Ordering::Relaxed),
            backoff_requests: self.backoff.load(Ordering::Relaxed),
            app_ready: self.ready.load(Ordering::Relaxed),
        }
    }
}

/// One request in progress; dropping it (even on cancellation) ends it.
#[derive(Debug)]
#[must_use = "the request counts as in progress only while the guard lives"]
pub struct InFlight {
    counters: Arc<Counters>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `tower::Layer` counting in-flight requests and 5xx (or errored)
/// responses. A request counts as in progress until its response head is
/// ready.
#[derive(Debug, Clone)]
pub struct VitalsLayer {
    counters: Arc<Counters>,
}

impl VitalsLayer {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self { counters }
    }
}

impl<S> tower::Layer<S> for VitalsLayer {
    type Service = VitalsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VitalsService {
            inner,
            counters: Arc::clone(&self.counters),
        }
    }
}

/// The service [`VitalsLayer`] wraps around an app.
#[derive(Debug, Clone)]
pub struct VitalsService<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for VitalsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let guard = self.counters.in_flight();
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// Response future of [`VitalsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        if let Some(guard) = this.guard.take() {
            let failed = match &out {
                Ok(resp) => resp.status().is_server_error(),
                Err(_) => true,
            };
            if failed {
                guard.counters.failed_response();
            }
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn layer_counts_in_flight_and_5xx() {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<u16>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let svc = tower::service_fn(move |_req: http::Request<()>| {
            let rx = Arc::clone(&rx);
            async move {
                let code = match rx.lock().await.take() {
                    Some(rx) => rx.await.unwrap_or(200),
                    None => 200,
                };
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .status(code)
                        .body(())
                        .expect("response"),
                )
            }
        });
        let svc = VitalsLayer::new(Arc::clone(&counters)).layer(svc);
        let pending = tokio::spawn(svc.clone().oneshot(http::Request::new(())));
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while counters.snapshot().requests_in_progress != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("in flight counted");
        tx.send(503).unwrap();
        let resp = pending.await.unwrap().unwrap();
        assert_eq!(resp.status(), 503);
        let s = counters.snapshot();
        assert_eq!((s.requests_in_progress, s.failed_responses), (0, 1));
        let resp = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(counters.snapshot().failed_responses, 1, "2xx is no failure");
    }

    #[test]
    fn guards_and_setters() {
        let c = Arc::new(Counters::default());
        let a = c.in_flight();
        let b = c.in_flight();
        assert_eq!(c.snapshot().requests_in_progress, 2);
        drop(a);
        drop(b);
        c.set_connected_peers(3);
        c.set_backoff_requests(2);
        c.set_ready(false);
        let s = c.snapshot();
        assert_eq!(s.requests_in_progress, 0);
        assert_eq!((s.connected_peers, s.backoff_requests), (3, 2));
        assert!(!s.app_ready);
    }
}
