//! One listener's connections: slots, phases, eviction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Limits;

pub(super) const HEAD: u8 = 0;
pub(super) const BUSY: u8 = 1;
pub(super) const IDLE: u8 = 2;

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
    pub(super) name: &'static str,
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
    pub(super) state: Arc<ConnState>,
    pub(super) table: Arc<ConnTable>,
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
    pub(super) phase: AtomicU8,
    /// Milliseconds after `epoch` when the head or idle spell ends.
    pub(super) deadline_ms: AtomicU64,
    pub(super) evicted: AtomicBool,
    pub(super) waker: AtomicWaker,
    pub(super) epoch: Instant,
    pub(super) limits: Limits,
}

impl ConnState {
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn arm(&self, after: Duration) {
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
