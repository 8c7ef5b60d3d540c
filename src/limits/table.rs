//! One listener's connections: slots, phases, eviction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::limits::Limits;

pub(super) const HEAD: u8 = 0;
pub(super) const BUSY: u8 = 1;
pub(super) const IDLE: u8 = 2;
/// HTTP/2: requests are streams; the connection has no head or idle spell
/// of its own (pingora's h2 idle timeout ends a quiet one).
pub(super) const MUX: u8 = 3;

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
    /// Multiplexed connections by the key their streams know them by.
    mux: HashMap<usize, Arc<ConnState>>,
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

    /// Take a slot for a new connection, evicting the oldest idle one (an
    /// idle HTTP/1 connection, then a multiplexed one with no open stream,
    /// then one still sending its head) when full; None when every slot is
    /// serving a request.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let mut conns = self.conns.lock();
        if conns.live >= self.limits.max_connections {
            let Some(victim) = Self::victim(&conns) else {
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
            streams: AtomicU32::new(0),
            mux_key: AtomicUsize::new(0),
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

impl ConnTable {
    /// Oldest first (the map is in accept order): idle, quiet multiplexed,
    /// then unfinished heads; never a connection serving a request.
    fn victim(conns: &Conns) -> Option<Arc<ConnState>> {
        let evictable = |c: &ConnState, phase: u8| {
            !c.evicted.load(Ordering::Relaxed)
                && c.phase.load(Ordering::Acquire) == phase
                && (phase != MUX || c.streams.load(Ordering::Acquire) == 0)
        };
        [IDLE, MUX, HEAD]
            .into_iter()
            .find_map(|phase| conns.by_id.values().find(|c| evictable(c, phase)).cloned())
    }

    /// Index a multiplexed connection under `key` (a value every one of its
    /// streams can see), until its slot is freed.
    pub fn index_mux(&self, key: usize, state: &Arc<ConnState>) {
        state.mux_key.store(key, Ordering::Relaxed);
        self.conns.lock().mux.insert(key, Arc::clone(state));
    }

    /// The multiplexed connection indexed under `key`.
    pub fn mux(&self, key: usize) -> Option<Arc<ConnState>> {
        self.conns.lock().mux.get(&key).cloned()
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
        let key = self.state.mux_key.load(Ordering::Relaxed);
        if key != 0 {
            conns.mux.remove(&key);
        }
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
    /// Open streams of a multiplexed connection.
    pub(super) streams: AtomicU32,
    /// Its key in the table's index (0 = not indexed).
    mux_key: AtomicUsize,
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

    /// An HTTP/2 connection: no head or idle deadline from the table; it is
    /// evictable while no stream is open.
    pub fn multiplexed(&self) {
        self.phase.store(MUX, Ordering::Release);
    }

    pub fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::AcqRel);
    }

    pub fn stream_closed(&self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    /// The listener's bounds.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}
