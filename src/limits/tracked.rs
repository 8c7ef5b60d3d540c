//! An accepted stream under its listener's bounds.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::table::{Admission, BUSY, ConnState, HEAD, IDLE, MUX};

/// What a client gets when its head is too slow (plaintext listeners).
static REQUEST_TIMEOUT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    crate::protocol::raw_refusal(
        http::StatusCode::REQUEST_TIMEOUT,
        &[],
        "request head took too long",
    )
});

/// `Tracked::armed_ms` when the read timer holds no deadline.
const NOT_ARMED: u64 = u64::MAX;

/// An accepted stream under its listener's bounds.
pub struct Tracked<S> {
    inner: S,
    slot: Admission,
    /// Answer a late head with 408 (not under TLS, where raw bytes would
    /// corrupt the stream).
    answer_408: bool,
    read_sleep: Pin<Box<Sleep>>,
    /// The deadline (ms after the table's epoch) `read_sleep` is set to;
    /// `NOT_ARMED` before the first wait and after a stale wake-up.
    armed_ms: u64,
    /// The task `read_sleep` will wake, once it was polled since its last
    /// reset: until it fires, polling it again only re-registers the same
    /// waker (~0.2k instructions a request, bench part 6).
    read_waker: Option<Waker>,
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
            armed_ms: NOT_ARMED,
            read_waker: None,
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
            let _ = Pin::new(&mut self.inner).poll_write(cx, &REQUEST_TIMEOUT);
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
        let st = &this.slot.state;
        st.waker.register(cx.waker());
        if st.evicted.load(Ordering::Acquire) {
            this.closed = true;
            return Poll::Ready(Ok(()));
        }
        let phase = st.phase.load(Ordering::Acquire);
        // A head that trickles in byte by byte never lets the timer below
        // fire, so its clock is read on every read. An idle connection's
        // first byte starts a head instead; it needs no check here.
        if phase == HEAD && st.now_ms() >= st.deadline_ms.load(Ordering::Acquire) {
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
            Poll::Pending if phase == BUSY || phase == MUX => Poll::Pending,
            Poll::Pending => this.wait_deadline(cx, phase),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Tracked<S> {
    /// A read is pending in a head or idle spell: wake at its deadline.
    ///
    /// The timer is moved only when the deadline comes earlier than where
    /// it is set, or when it fires before a deadline that has since moved
    /// later. Deadlines mostly move later (each answer pushes the idle one),
    /// so a keep-alive connection re-arms about once per idle timeout, not
    /// on every read: re-arming tokio's timer per read cost ~1k instructions
    /// a request (bench part 6).
    fn wait_deadline(&mut self, cx: &mut Context<'_>, phase: u8) -> Poll<io::Result<()>> {
        // Two rounds: a stale wake-up re-arms once and then waits.
        for _ in 0..2 {
            let st = &self.slot.state;
            let deadline = st.deadline_ms.load(Ordering::Acquire);
            if deadline < self.armed_ms {
                let at = st.epoch + Duration::from_millis(deadline);
                self.read_sleep.as_mut().reset(at);
                self.armed_ms = deadline;
                self.read_waker = None;
            }
            if self.timer_pending(cx) {
                return Poll::Pending;
            }
            if self.slot.state.now_ms() >= deadline {
                return self.expire(cx, phase);
            }
            // Fired for an earlier deadline; the spell was extended since.
            self.armed_ms = NOT_ARMED;
        }
        // The clock lags the timer by a tick: look again shortly.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S> Tracked<S> {
    /// Whether the read timer has yet to fire; it will wake this task.
    fn timer_pending(&mut self, cx: &mut Context<'_>) -> bool {
        let registered = self
            .read_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if registered && !self.read_sleep.is_elapsed() {
            return true;
        }
        if self.read_sleep.as_mut().poll(cx).is_ready() {
            self.read_waker = None;
            return false;
        }
        if !registered {
            self.read_waker = Some(cx.waker().clone());
        }
        true
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
    use crate::config::limits::Limits;
    use crate::limits::{ConnTable, budget};
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
        drop(t);
        let mut answer = Vec::new();
        cr.read_to_end(&mut answer).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&answer),
            "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: 38\r\n\r\n\
             {\"error\":\"request head took too long\"}"
        );
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
    async fn an_extended_idle_spell_outlives_the_first_timer() {
        let table = ConnTable::new("t", limits(4));
        let (_client, server) = tokio::io::duplex(1024);
        let mut t = Tracked::new(server, table.admit().unwrap(), true);
        t.state().begin_request();
        t.state().end_request(); // idle until +300 ms
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let early = tokio::time::timeout(Duration::from_millis(150), t.read(&mut buf)).await;
        assert!(early.is_err(), "still idle");
        // Another answer pushes the deadline to +450 ms; the timer set for
        // +300 ms fires first and must not end the connection.
        t.state().begin_request();
        t.state().end_request();
        assert_eq!(
            t.read(&mut buf).await.unwrap(),
            0,
            "EOF at the new deadline"
        );
        let lived = started.elapsed();
        assert!(lived >= Duration::from_millis(440), "cut early: {lived:?}");
        assert!(lived < Duration::from_secs(2), "{lived:?}");
        assert_eq!(table.shed.idle_timeout.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_timer_polled_once_still_wakes_after_spurious_polls() {
        let table = ConnTable::new("t", limits(4));
        let (_client, server) = tokio::io::duplex(1024);
        let mut t = Tracked::new(server, table.admit().unwrap(), true);
        t.state().begin_request();
        t.state().end_request(); // idle until +300 ms
        let started = std::time::Instant::now();
        let mut spurious = 0;
        let mut storage = [0u8; 8];
        let mut buf = ReadBuf::new(&mut storage);
        // Woken by hand five times (the timer is then skipped, not re-polled),
        // then only the timer can wake the task.
        let r = std::future::poll_fn(|cx| match Pin::new(&mut t).poll_read(cx, &mut buf) {
            Poll::Pending if spurious < 5 => {
                spurious += 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        });
        tokio::time::timeout(Duration::from_secs(2), r)
            .await
            .expect("the idle timer woke the task")
            .unwrap();
        assert_eq!(spurious, 5);
        assert!(started.elapsed() >= Duration::from_millis(290));
        assert_eq!(table.shed.idle_timeout.load(Ordering::Relaxed), 1);
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

    #[tokio::test]
    async fn a_quiet_multiplexed_connection_is_evicted_one_with_a_stream_never() {
        let table = ConnTable::new("t", limits(2));
        let (_c1, s1) = tokio::io::duplex(64);
        let (_c2, s2) = tokio::io::duplex(64);
        let mut quiet = Tracked::new(s1, table.admit().unwrap(), false);
        let streaming = Tracked::new(s2, table.admit().unwrap(), false);
        quiet.state().multiplexed();
        streaming.state().multiplexed();
        streaming.state().stream_opened();
        // No deadline of its own: a quiet h2 connection is not cut by time.
        let read =
            tokio::time::timeout(Duration::from_millis(500), quiet.read(&mut [0u8; 8])).await;
        assert!(read.is_err(), "cut by the head or idle deadline");
        let third = table.admit().expect("evicts the quiet one");
        third.state().begin_request();
        assert_eq!(
            quiet.read(&mut [0u8; 8]).await.unwrap(),
            0,
            "evicted reads EOF"
        );
        assert!(table.admit().is_none(), "the one with an open stream stays");
        streaming.state().stream_closed();
        drop(quiet);
        assert!(table.admit().is_some(), "evictable once its stream closed");
    }

    #[test]
    fn budget_caps_at_a_share() {
        assert_eq!(budget("x", 4096, 4096, 0.125), 512);
        assert_eq!(budget("x", 100, 1 << 20, 0.125), 100);
    }
}
