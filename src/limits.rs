//! Bounds on every listener: the time a client may take to send a request
//! head, the wait for the next piece of a body, how long an idle keep-alive
//! connection stays, and how many connections one listener holds.
//!
//! Each listener (proxy, control API, vitals port, webhook) owns a
//! [`ConnTable`], its own connection budget, so one port's clients cannot
//! take another's descriptors. Every accepted socket is wrapped in
//! [`Tracked`], which enforces the head deadline and the idle timeout in
//! `poll_read` (whatever the server above it, hyper or pingora) and a write
//! timeout for clients that stop reading. The server tells the connection
//! when a request head is complete ([`ConnState::begin_request`]) and when
//! its answer is done ([`ConnState::end_request`]).
//!
//! A full table sheds instead of queueing: a newcomer evicts the oldest
//! connection that is idle, then the oldest still sending its head, so slow
//! clients lose their slot while a request being served never does. Only
//! when every connection is busy is the newcomer refused.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The effective bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole request head, from accept or from its first byte.
    pub header_timeout: Duration,
    /// Wait for the next piece of a request body, or for the client to take
    /// the next piece of the answer.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in progress.
    pub idle_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
}

/// Declares one listener's limits section: the config type (serde, schema,
/// defaults) and its flags (`--<prefix>header-timeout`...), once.
macro_rules! listener_limits {
    (
        $(#[$doc:meta])*
        $name:ident, $args:ident, flags: $flag:literal, env: $env:literal,
        header: $h:expr, body: $b:expr, idle: $i:expr, max: $m:expr
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Longest time for a whole request head (from accept, or from
            /// the first byte after an idle spell); then 408 and close.
            #[serde(with = "humantime_serde")]
            #[schemars(schema_with = "crate::config::duration_schema")]
            pub header_timeout: Duration,
            /// Longest wait for the next piece of a request body, or for the
            /// client to take the next piece of the answer; then close.
            #[serde(with = "humantime_serde")]
            #[schemars(schema_with = "crate::config::duration_schema")]
            pub body_timeout: Duration,
            /// A keep-alive connection with no request is closed after this.
            #[serde(with = "humantime_serde")]
            #[schemars(schema_with = "crate::config::duration_schema")]
            pub idle_timeout: Duration,
            /// Open connections at once (also capped by a share of the
            /// open-file limit); a newcomer beyond it evicts the oldest idle
            /// or slow one, or is refused when all are busy.
            pub max_connections: usize,
        }

        impl Default for $name {
            fn default() -> Self {
                Self { header_timeout: $h, body_timeout: $b, idle_timeout: $i, max_connections: $m }
            }
        }

        impl $name {
            /// The plain bounds.
            pub fn get(&self) -> Limits {
                Limits {
                    header_timeout: self.header_timeout,
                    body_timeout: self.body_timeout,
                    idle_timeout: self.idle_timeout,
                    max_connections: self.max_connections,
                }
            }
        }

        /// Flags (and `ROSTER_*` env) overriding the section's keys.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $args {
            #[arg(id = concat!($flag, "header-timeout"), long = concat!($flag, "header-timeout"),
                  env = concat!($env, "HEADER_TIMEOUT"), value_parser = crate::config::parse_duration,
                  help = "Longest time for a whole request head")]
            pub header_timeout: Option<Duration>,
            #[arg(id = concat!($flag, "body-timeout"), long = concat!($flag, "body-timeout"),
                  env = concat!($env, "BODY_TIMEOUT"), value_parser = crate::config::parse_duration,
                  help = "Longest wait for the next piece of a body, either way")]
            pub body_timeout: Option<Duration>,
            #[arg(id = concat!($flag, "idle-timeout"), long = concat!($flag, "idle-timeout"),
                  env = concat!($env, "IDLE_TIMEOUT"), value_parser = crate::config::parse_duration,
                  help = "Idle keep-alive connections are closed after this")]
            pub idle_timeout: Option<Duration>,
            #[arg(id = concat!($flag, "max-connections"), long = concat!($flag, "max-connections"),
                  env = concat!($env, "MAX_CONNECTIONS"),
                  help = "Open connections at once")]
            pub max_connections: Option<usize>,
        }

        impl $args {
            /// Overlay the flags that were given.
            pub fn apply(&self, l: &mut $name) {
                if let Some(v) = self.header_timeout { l.header_timeout = v; }
                if let Some(v) = self.body_timeout { l.body_timeout = v; }
                if let Some(v) = self.idle_timeout { l.idle_timeout = v; }
                if let Some(v) = self.max_connections { l.max_connections = v; }
            }
        }
    };
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

listener_limits!(
    /// `lb.proxy_limits`: the proxy port (client traffic).
    ProxyLimits, ProxyLimitArgs, flags: "proxy-", env: "ROSTER_PROXY_",
    header: secs(10), body: secs(60), idle: secs(60), max: 50_000
);
listener_limits!(
    /// `lb.control_limits`: the control API (agents, operators, probes).
    ControlLimits, ControlLimitArgs, flags: "control-", env: "ROSTER_CONTROL_",
    header: secs(10), body: secs(10), idle: secs(30), max: 4096
);
listener_limits!(
    /// `agent.vitals_limits`: the agent's vitals port. The idle timeout
    /// must outlast the LBs' pooled check connections (2 × interval).
    VitalsLimits, VitalsLimitArgs, flags: "vitals-", env: "ROSTER_VITALS_",
    header: secs(5), body: secs(5), idle: secs(60), max: 256
);
listener_limits!(
    /// The webhook's HTTPS port (`roster inject`; the head deadline covers
    /// the TLS handshake).
    WebhookLimits, WebhookLimitArgs, flags: "", env: "ROSTER_",
    header: secs(10), body: secs(10), idle: secs(60), max: 1024
);

/// Problems with a limits section, naming the key.
pub fn validate(field: &'static str, l: &Limits) -> Result<(), crate::config::ConfigError> {
    let bad = |what: &str| crate::config::ConfigError::Invalid {
        field,
        message: format!("{what} must be more than 0"),
    };
    if l.header_timeout.is_zero() {
        return Err(bad("header_timeout"));
    }
    if l.body_timeout.is_zero() {
        return Err(bad("body_timeout"));
    }
    if l.max_connections == 0 {
        return Err(bad("max_connections"));
    }
    Ok(())
}

/// The soft open-file limit, raised to the hard limit first (each listener
/// sizes its share from it).
pub fn raise_fd_limit() -> u64 {
    if let Err(e) = rlimit::increase_nofile_limit(1 << 20) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// `configured`, capped at `share` of the open-file limit so the process
/// keeps descriptors for its other listeners and its own outbound calls.
pub fn budget(name: &str, configured: usize, fd_limit: u64, share: f64) -> usize {
    let cap = ((fd_limit as f64 * share) as usize).max(16);
    if configured > cap {
        tracing::info!(
            listener = name,
            configured,
            cap,
            fd_limit,
            "max_connections capped at its share of the open-file limit"
        );
    }
    configured.min(cap)
}

const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// Why connections were closed by the table, for telemetry.
#[derive(Debug, Default)]
pub struct Shed {
    pub header_timeout: AtomicU64,
    pub idle_timeout: AtomicU64,
    pub write_timeout: AtomicU64,
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
}

/// Open connections in accept order, and how many are not evicted.
#[derive(Default)]
struct Conns {
    by_id: BTreeMap<u64, Arc<ConnState>>,
    live: usize,
}

/// One listener's open connections and their budget.
pub struct ConnTable {
    name: &'static str,
    limits: Limits,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<Conns>,
    /// Counters of connections closed by these bounds.
    pub shed: Shed,
}

impl ConnTable {
    pub fn new(name: &'static str, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            name,
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Conns::default()),
            shed: Shed::default(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.conns.lock().live
    }

    /// Take a slot for a new connection, evicting the oldest idle (then the
    /// oldest unfinished-head) connection when full; None when every slot
    /// is serving a request.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let mut conns = self.conns.lock();
        if conns.live >= self.limits.max_connections {
            // Oldest first: the BTreeMap is in accept order.
            let victim = [IDLE, HEAD].into_iter().find_map(|phase| {
                conns
                    .by_id
                    .values()
                    .find(|c| {
                        !c.evicted.load(Ordering::Relaxed)
                            && c.phase.load(Ordering::Acquire) == phase
                    })
                    .cloned()
            });
            let Some(victim) = victim else {
                self.shed.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            victim.evicted.store(true, Ordering::Release);
            victim.waker.wake();
            conns.live -= 1;
            self.shed.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            phase: AtomicU8::new(HEAD),
            deadline_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            epoch: self.epoch,
            limits: self.limits,
        });
        state.arm(self.limits.header_timeout);
        conns.by_id.insert(id, Arc::clone(&state));
        conns.live += 1;
        Some(Admission {
            id,
            state,
            table: Arc::clone(self),
        })
    }
}

/// A connection's slot in its table; freed on drop.
pub struct Admission {
    id: u64,
    state: Arc<ConnState>,
    table: Arc<ConnTable>,
}

impl Admission {
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut conns = self.table.conns.lock();
        conns.by_id.remove(&self.id);
        if !self.state.evicted.load(Ordering::Acquire) {
            conns.live -= 1;
        }
    }
}

/// What the server above tells a connection about its requests.
pub struct ConnState {
    phase: AtomicU8,
    /// Milliseconds after `epoch` when the head or idle spell ends.
    deadline_ms: AtomicU64,
    evicted: AtomicBool,
    waker: AtomicWaker,
    epoch: Instant,
    limits: Limits,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn arm(&self, after: Duration) {
        let at = self.now_ms().saturating_add(after.as_millis() as u64);
        self.deadline_ms.store(at, Ordering::Release);
    }

    /// A request head is complete: no deadline while it is served (body
    /// reads have their own timeout).
    pub fn begin_request(&self) {
        self.phase.store(BUSY, Ordering::Release);
    }

    /// The answer is done: the idle timeout runs until the next request.
    pub fn end_request(&self) {
        self.arm(self.limits.idle_timeout);
        self.phase.store(IDLE, Ordering::Release);
        self.waker.wake();
    }

    /// The listener's bounds.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// What a client gets when its head is too slow (plaintext listeners).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
content-type: application/json\r\ncontent-length: 41\r\n\r\n{\"error\":\"request head took too long\"}\r\n";

/// An accepted stream under its listener's bounds.
pub struct Tracked<S> {
    inner: S,
    slot: Admission,
    /// Answer a late head with 408 (not under TLS, where raw bytes would
    /// corrupt the stream).
    answer_408: bool,
    read_sleep: Pin<Box<Sleep>>,
    write_sleep: Option<Pin<Box<Sleep>>>,
    closed: bool,
}

impl<S> std::fmt::Debug for Tracked<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("listener", &self.slot.table.name)
            .finish()
    }
}

impl<S> Tracked<S> {
    pub fn new(inner: S, slot: Admission, answer_408: bool) -> Self {
        Self {
            inner,
            slot,
            answer_408,
            read_sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            write_sleep: None,
            closed: false,
        }
    }

    pub fn state(&self) -> &Arc<ConnState> {
        &self.slot.state
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Tracked<S> {
    /// End the connection as if the client closed it, after a best-effort
    /// 408 when its head was late.
    fn expire(&mut self, cx: &mut Context<'_>, phase: u8) -> Poll<io::Result<()>> {
        let shed = &self.slot.table.shed;
        let reason = if phase == HEAD {
            &shed.header_timeout
        } else {
            &shed.idle_timeout
        };
        reason.fetch_add(1, Ordering::Relaxed);
        if phase == HEAD && self.answer_408 {
            let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        let st = Arc::clone(&this.slot.state);
        st.waker.register(cx.waker());
        if st.evicted.load(Ordering::Acquire) {
            this.closed = true;
            return Poll::Ready(Ok(()));
        }
        let phase = st.phase.load(Ordering::Acquire);
        let deadline = st.deadline_ms.load(Ordering::Acquire);
        if phase != BUSY && st.now_ms() >= deadline {
            return this.expire(cx, phase);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if phase == IDLE && buf.filled().len() > before {
                    // The next request's first byte: its head clock starts.
                    st.arm(st.limits.header_timeout);
                    st.phase.store(HEAD, Ordering::Release);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if phase == BUSY => Poll::Pending,
            Poll::Pending => {
                let at = st.epoch + Duration::from_millis(deadline);
                if this.read_sleep.deadline() != at {
                    this.read_sleep.as_mut().reset(at);
                }
                match this.read_sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.expire(cx, phase),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Tracked<S> {
    /// A write that makes no progress for `body_timeout` fails.
    fn write_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let limit = self.slot.state.limits.body_timeout;
                let sleep = self
                    .write_sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.slot
                            .table
                            .shed
                            .write_timeout
                            .fetch_add(1, Ordering::Relaxed);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "client took no data for the body timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.write_sleep = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_progress(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_progress(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            max_connections: max,
        }
    }

    #[tokio::test]
    async fn a_late_head_gets_408_and_eof() {
        let table = ConnTable::new("t", limits(4));
        let (client, server) = tokio::io::duplex(1024);
        let mut t = Tracked::new(server, table.admit().unwrap(), true);
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = t.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        let started = std::time::Instant::now();
        assert_eq!(t.read(&mut buf).await.unwrap(), 0, "EOF at the deadline");
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut answer = vec![0u8; REQUEST_TIMEOUT.len()];
        cr.read_exact(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 408"));
        assert_eq!(table.shed.header_timeout.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn busy_has_no_deadline_and_idle_times_out() {
        let table = ConnTable::new("t", limits(4));
        let (mut client, server) = tokio::io::duplex(1024);
        let mut t = Tracked::new(server, table.admit().unwrap(), true);
        t.state().begin_request();
        let read = tokio::time::timeout(Duration::from_millis(500), t.read(&mut [0u8; 8])).await;
        assert!(read.is_err(), "a request being served is never cut");
        t.state().end_request();
        assert_eq!(t.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert_eq!(table.shed.idle_timeout.load(Ordering::Relaxed), 1);
        // Nothing written on an idle close.
        drop(t);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(table.open(), 0, "slot freed");
    }

    #[tokio::test]
    async fn full_table_evicts_idle_then_slow_never_busy() {
        let table = ConnTable::new("t", limits(2));
        let busy = table.admit().unwrap();
        busy.state().begin_request();
        let (_c, server) = tokio::io::duplex(64);
        let mut slow = Tracked::new(server, table.admit().unwrap(), false);
        let third = table.admit().expect("evicts the slow head");
        assert_eq!(
            slow.read(&mut [0u8; 8]).await.unwrap(),
            0,
            "evicted reads EOF"
        );
        drop(slow);
        third.state().begin_request();
        assert!(table.admit().is_none(), "all busy: refused");
        assert_eq!(table.shed.refused.load(Ordering::Relaxed), 1);
        assert_eq!(table.shed.evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn budget_caps_at_a_share() {
        assert_eq!(budget("x", 4096, 4096, 0.125), 512);
        assert_eq!(budget("x", 100, 1 << 20, 0.125), 100);
    }
}
