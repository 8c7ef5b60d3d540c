//! The proxy port under `lb.proxy_limits`: pingora's HTTP app wrapped so
//! every accepted stream takes a slot in the proxy's [`ConnTable`] and runs
//! under [`Tracked`].
//!
//! pingora bounds each *read* (60 s), not the whole head, so one header
//! byte a second holds a connection forever, and it caps nothing. The
//! wrapper adds the whole-head deadline, the idle timeout and the
//! connection cap; the proxy marks each request's start and end
//! ([`head_done`], [`request_done`]) and sets pingora's own body read and
//! write timeouts per request.
//!
//! On the TLS port the wrapper runs the handshake itself, after taking the
//! slot and within the listener's head deadline (`header_timeout`, from
//! accept): pingora's own listener gives a handshake 60 s, fixed, before
//! the app sees the connection, so a client that never sends a
//! ClientHello held a socket outside the table for a minute.
//!
//! HTTP/2 (h2c by prior knowledge, or ALPN `h2` under TLS) multiplexes
//! requests on one connection, so the per-request phases do not apply:
//! such a connection counts as busy for its life, and pingora's own h2
//! idle timeout (`h2_idle_timeout`, set to the listener's idle timeout)
//! closes it when no stream is open.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::SocketDigest;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::limits::{ConnState, ConnTable, Tracked};

/// The client preface every HTTP/2 connection opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// pingora's app `A` with the listener's bounds in front.
pub struct Bounded<A> {
    /// Serves HTTP/1.1, and HTTP/2 negotiated by ALPN.
    pub inner: Arc<A>,
    /// The same app with pingora's `h2c` option, for plaintext connections
    /// that open with the h2 preface; None when `lb.h2c` is off.
    pub h2c: Option<Arc<A>>,
    /// The TLS port's acceptor: the handshake runs here, bounded.
    pub tls: Option<Arc<Acceptor>>,
    pub table: Arc<ConnTable>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Bounded<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(slot) = self.table.admit() else {
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                session.write_all(&crate::limits::FULL),
            )
            .await;
            return None;
        };
        if let Some(acceptor) = &self.tls {
            // The listener is plain TCP: its streams are pingora's L4 ones.
            let Ok(l4) = session.into_any().downcast::<L4Stream>() else {
                return None;
            };
            let limit = slot.state().limits().header_timeout;
            let handshake = pingora::protocols::tls::server::handshake(acceptor, *l4);
            match tokio::time::timeout(limit, handshake).await {
                Ok(Ok(tls)) => session = Box::new(tls),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    self.table
                        .shed
                        .header_timeout
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return None;
                }
            }
        }
        let plaintext = session.get_ssl_digest().is_none();
        let (session, h2c) = match &self.h2c {
            Some(app) if plaintext => {
                let limit = slot.state().limits().header_timeout;
                match tokio::time::timeout(limit, sniff(session)).await {
                    Ok(Ok((s, true))) => (s, Some(app)),
                    Ok(Ok((s, false))) => (s, None),
                    // Gone, or too slow to send even the first bytes.
                    Ok(Err(_)) | Err(_) => return None,
                }
            }
            _ => (session, None),
        };
        let h2 = h2c.is_some() || matches!(session.selected_alpn_proto(), Some(ALPN::H2));
        // Raw bytes would corrupt a TLS stream: no 408 there.
        let tracked = Tracked::new(session, slot, plaintext);
        if h2 {
            // Its streams find it by the socket digest they share.
            tracked.state().multiplexed();
            if let Some(key) = tracked.get_socket_digest().as_ref().map(mux_key) {
                self.table.index_mux(key, tracked.state());
            }
        }
        let tracked: Stream = Box::new(tracked);
        // pingora loops over keep-alive requests inside `process_new`, so
        // the slot lives as long as the connection.
        h2c.unwrap_or(&self.inner)
            .process_new(tracked, shutdown)
            .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Whether a plaintext connection opens with the h2 preface. Reads only
/// until the first byte that differs, so a short HTTP/1 request (an
/// 18-byte HTTP/1.0 GET) is not held waiting for 24 bytes, as pingora's
/// own peek would; what was read is put back for the server to read.
async fn sniff(session: Stream) -> std::io::Result<(Stream, bool)> {
    // Only pingora's TCP stream can put bytes back; others are never h2c.
    if !session.as_any().is::<L4Stream>() {
        return Ok((session, false));
    }
    let Ok(mut l4) = session.into_any().downcast::<L4Stream>() else {
        return Err(std::io::Error::other("stream type changed"));
    };
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut got = 0;
    while got < buf.len() {
        let n = l4.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got] != H2_PREFACE[..got] {
            break;
        }
    }
    l4.rewind(&buf[..got]);
    Ok((l4, buf[..got] == H2_PREFACE[..]))
}

fn conn(session: &Session) -> Option<&Arc<ConnState>> {
    session
        .stream()?
        .as_any()
        .downcast_ref::<Tracked<Stream>>()
        .map(Tracked::state)
}

/// The request head is in: stop the head clock and bound the body's reads
/// by `body_timeout`. On HTTP/2 the request is a stream of a multiplexed
/// connection: the returned guard counts it open until dropped (a
/// connection with no open stream may be evicted by a newcomer).
///
/// On HTTP/1 the rest is [`Tracked`]'s: it fails a write that makes no
/// progress for `body_timeout` and closes a connection idle for
/// `idle_timeout`, so pingora's own write and keep-alive timers stay off
/// (each one is a timer armed per request: ~1.5k instructions a request,
/// bench part 6). HTTP/2 multiplexes streams that a client can stall by
/// flow control while the connection moves, so there pingora's per-stream
/// write timeout stays.
pub fn head_done(session: &mut Session, table: &ConnTable) -> Option<OpenStream> {
    if session.as_downstream().is_http2() {
        let state = table.mux(session.digest()?.socket_digest.as_ref().map(mux_key)?)?;
        let l = *state.limits();
        session.set_read_timeout(Some(l.body_timeout));
        session.set_write_timeout(Some(l.body_timeout));
        state.stream_opened();
        return Some(OpenStream(state));
    }
    let timeout = {
        let state = conn(session)?;
        state.begin_request();
        state.limits().body_timeout
    };
    session.set_read_timeout(Some(timeout));
    None
}

/// An HTTP/2 request's stream, open until dropped.
pub struct OpenStream(Arc<ConnState>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// The key a multiplexed connection is indexed under: the address of the
/// socket digest pingora shares between the connection and its streams.
fn mux_key(digest: &Arc<SocketDigest>) -> usize {
    Arc::as_ptr(digest) as usize
}

/// The answer is done: the idle clock runs until the next request.
pub fn request_done(session: &Session) {
    if let Some(state) = conn(session) {
        state.end_request();
    }
}

// pingora's stream traits, delegated to the stream inside.

#[async_trait]
impl Shutdown for Tracked<Stream> {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut **self.inner_mut()).await
    }
}

impl UniqueID for Tracked<Stream> {
    fn id(&self) -> UniqueIDType {
        self.inner().id()
    }
}

impl Ssl for Tracked<Stream> {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner().get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner().get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner().selected_alpn_proto()
    }
}

impl GetTimingDigest for Tracked<Stream> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner().get_write_pending_time()
    }
}

impl GetProxyDigest for Tracked<Stream> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Tracked<Stream> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner_mut().set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Tracked<Stream> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        Peek::try_peek(&mut **self.inner_mut(), buf).await
    }
}
