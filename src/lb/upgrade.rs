//! Upgraded (WebSocket) connections at shutdown.
//!
//! pingora keeps an upgraded connection until either side closes it, and
//! drops it when its runtime stops after the grace period: the client
//! sees the TCP connection end without a WebSocket close. To say goodbye
//! properly, shortly before the grace period ends the LB shuts down the
//! *upstream* socket of every upgraded connection (its descriptor comes
//! from pingora's `connected_to_upstream` hook). pingora then sees the
//! backend's side end, and the proxy's `response_body_filter` adds a close
//! frame with code 1001 (going away) as the last bytes to the client
//! before pingora closes the connection.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

/// A server-to-client close frame (unmasked): FIN + close opcode, a
/// 2-byte payload, status 1001 "going away" (RFC 6455 §5.5.1, §7.4.1).
pub const CLOSE_GOING_AWAY: &[u8] = &[0x88, 0x02, 0x03, 0xE9];

/// Upstream sockets of the upgraded connections open now.
#[derive(Default)]
pub struct Upgrades {
    fds: Mutex<HashMap<u64, RawFd>>,
    next: AtomicU64,
    closing: AtomicBool,
}

/// Keeps one connection's socket listed while its request lives.
pub struct Listed {
    id: u64,
    upgrades: Arc<Upgrades>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.upgrades.fds.lock().remove(&self.id);
    }
}

impl Upgrades {
    /// List the upstream socket of an upgrade request.
    pub fn list(self: &Arc<Self>, fd: RawFd) -> Listed {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.fds.lock().insert(id, fd);
        Listed {
            id,
            upgrades: Arc::clone(self),
        }
    }

    /// The LB is ending them: each ends with a 1001 close frame.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// End every upgraded connection (see the module doc). Returns how many.
    pub fn close_all(&self) -> usize {
        self.closing.store(true, Ordering::Release);
        let fds = self.fds.lock();
        for fd in fds.values() {
            // Only read/write shutdown, never close: pingora still owns
            // the descriptor. Failure means the socket is already gone.
            let _ = nix::sys::socket::shutdown(*fd, nix::sys::socket::Shutdown::Both);
        }
        fds.len()
    }

    /// The last bytes to the client of an upgraded connection that ends.
    pub fn goodbye(&self, body: &mut Option<Bytes>) {
        let close = Bytes::from_static(CLOSE_GOING_AWAY);
        *body = Some(match body.take() {
            Some(b) if !b.is_empty() => [b, close].concat().into(),
            _ => close,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_until_dropped_and_goodbye_appends_1001() {
        let u = Arc::new(Upgrades::default());
        let a = u.list(1_000_000);
        let b = u.list(1_000_001);
        drop(a);
        assert_eq!(u.fds.lock().len(), 1);
        assert!(!u.closing());
        // Bad descriptors: shutdown fails quietly.
        assert_eq!(u.close_all(), 1);
        assert!(u.closing());
        drop(b);
        assert!(u.fds.lock().is_empty());
        let mut body = Some(Bytes::from_static(b"x"));
        u.goodbye(&mut body);
        assert_eq!(body.as_deref(), Some(&[b'x', 0x88, 2, 3, 0xE9][..]));
        let mut none = None;
        u.goodbye(&mut none);
        assert_eq!(none.as_deref(), Some(CLOSE_GOING_AWAY));
    }
}
