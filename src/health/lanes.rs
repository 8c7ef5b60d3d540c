//! Check lanes: who gets the next free check slot.
//!
//! A check of a dark backend (vitals that accept and never answer) holds
//! its slot for the whole timeout, so `concurrency` slots run at most
//! `concurrency / timeout` dark checks a second: a few thousand dark
//! backends keep any shared queue full for minutes. So checks are sorted
//! by what their backend did last, each class with its own slots, and
//! inside a class the waiter that matters most goes first:
//!
//! | lane | who | order |
//! | --- | --- | --- |
//! | [`Class::First`] | never checked (a new registration) | newest first: a burst of registrations that turn out dark never holds back the one after it |
//! | [`Class::Answering`] | in the pool, or its last check answered (`ready` either way) | oldest first |
//! | [`Class::Failing`] | out of the pool after failed checks, a quarter of the slots | fewest failures first: one that just failed is checked again before long-dead ones |
//!
//! A backend in the pool keeps the answering lane through its failures
//! (until `unhealthy_threshold` takes it out), so one that dies leaves the
//! pool on its own schedule, whatever the failing lane holds.
//!
//! A slot freed goes straight to the first waiter of its lane, so a check
//! never waits behind a check of another class, and in its own class only
//! behind those ordered before it.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Which lane a check waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Never checked.
    First,
    /// In the pool, or its last check got an answer.
    Answering,
    /// Out of the pool after `n` failed checks in a row.
    Failing(u32),
}

impl Class {
    /// The class of an entry checked `checked`, out of the pool after
    /// `failing` failures in a row (0 while in the pool).
    pub fn of(checked: bool, failing: u32) -> Self {
        match (checked, failing) {
            (false, _) => Self::First,
            (true, 0) => Self::Answering,
            (true, n) => Self::Failing(n),
        }
    }
}

/// The three lanes, with `concurrency` slots for each of the first two and
/// a quarter of it (at least 1) for failing checks.
pub struct Lanes {
    lanes: [Arc<Lane>; 3],
}

impl Lanes {
    pub fn new(concurrency: usize) -> Self {
        Self {
            lanes: [
                Lane::new(concurrency),
                Lane::new(concurrency),
                Lane::new((concurrency / 4).max(1)),
            ],
        }
    }

    /// Wait for a slot in `class`'s lane; it is given back when the
    /// returned [`Slot`] drops.
    pub async fn acquire(&self, class: Class) -> Slot {
        let (lane, key) = match class {
            Class::First => (&self.lanes[0], Key::Newest),
            Class::Answering => (&self.lanes[1], Key::Oldest),
            Class::Failing(n) => (&self.lanes[2], Key::Fewest(n)),
        };
        Arc::clone(lane).acquire(key).await
    }

    /// Checks waiting for a slot, per lane (first, answering, failing).
    #[cfg(test)]
    pub fn waiting(&self) -> [usize; 3] {
        self.lanes.each_ref().map(|l| l.state.lock().waiting.len())
    }
}

/// How a waiter is ordered in its lane.
enum Key {
    Newest,
    Oldest,
    Fewest(u32),
}

struct Lane {
    state: Mutex<LaneState>,
}

struct LaneState {
    free: usize,
    /// Waiters by (rank, arrival): the smallest is served first.
    waiting: BTreeMap<(i64, i64), oneshot::Sender<Slot>>,
    arrivals: i64,
}

/// A check slot; given to the next waiter (or freed) on drop.
pub struct Slot {
    lane: Option<Arc<Lane>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            Lane::release(lane);
        }
    }
}

impl Lane {
    fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(LaneState {
                free: slots,
                waiting: BTreeMap::new(),
                arrivals: 0,
            }),
        })
    }

    async fn acquire(self: Arc<Self>, key: Key) -> Slot {
        let rx = {
            let mut st = self.state.lock();
            if st.free > 0 {
                st.free -= 1;
                drop(st);
                return Slot { lane: Some(self) };
            }
            st.arrivals += 1;
            let n = st.arrivals;
            let rank = match key {
                Key::Newest => (0, -n),
                Key::Oldest => (0, n),
                Key::Fewest(fails) => (i64::from(fails), n),
            };
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(rank, tx);
            rx
        };
        // The sender is only dropped by `release` after a send, so an
        // error cannot happen while the lane lives; a slot is made anyway.
        rx.await.unwrap_or(Slot { lane: None })
    }

    /// Hand the slot to the first waiter still waiting, else free it. A
    /// waiter that gave up drops the slot it was sent, which releases it
    /// again to the next one.
    fn release(lane: Arc<Self>) {
        let mut st = lane.state.lock();
        while let Some((_, tx)) = st.waiting.pop_first() {
            if tx.is_closed() {
                continue;
            }
            drop(st);
            let slot = Slot {
                lane: Some(Arc::clone(&lane)),
            };
            // Gave up in between: the slot comes back through its drop.
            let _ = tx.send(slot);
            return;
        }
        st.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Start a waiter for `class`; the returned receiver says when it got
    /// its slot (and holds it until the test lets go).
    fn waiter(
        lanes: &Arc<Lanes>,
        class: Class,
        order: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> tokio::task::JoinHandle<Slot> {
        let (lanes, order) = (Arc::clone(lanes), Arc::clone(order));
        tokio::spawn(async move {
            let slot = lanes.acquire(class).await;
            order.lock().push(name);
            slot
        })
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn first_checks_go_newest_first() {
        let lanes = Arc::new(Lanes::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = lanes.acquire(Class::First).await;
        let a = waiter(&lanes, Class::First, &order, "old");
        settle().await;
        let b = waiter(&lanes, Class::First, &order, "new");
        settle().await;
        assert_eq!(lanes.waiting(), [2, 0, 0]);
        drop(held);
        drop(b.await.unwrap());
        drop(a.await.unwrap());
        assert_eq!(*order.lock(), ["new", "old"]);
        assert_eq!(lanes.waiting(), [0, 0, 0]);
    }

    #[tokio::test]
    async fn failing_checks_go_fewest_failures_first_and_never_block_others() {
        // concurrency 4: a failing lane of 1.
        let lanes = Arc::new(Lanes::new(4));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = lanes.acquire(Class::Failing(9)).await;
        let dead = waiter(&lanes, Class::Failing(7), &order, "dead");
        settle().await;
        let just_failed = waiter(&lanes, Class::Failing(1), &order, "in-pool");
        settle().await;
        // The other lanes are untouched by a full failing lane.
        let first = lanes.acquire(Class::First).await;
        let answering = lanes.acquire(Class::Answering).await;
        drop((first, answering));
        drop(held);
        drop(just_failed.await.unwrap());
        drop(dead.await.unwrap());
        assert_eq!(*order.lock(), ["in-pool", "dead"]);
    }

    #[tokio::test]
    async fn answering_checks_go_oldest_first_and_slots_are_reused() {
        let lanes = Arc::new(Lanes::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = lanes.acquire(Class::Answering).await;
        let a = waiter(&lanes, Class::Answering, &order, "a");
        settle().await;
        let b = waiter(&lanes, Class::Answering, &order, "b");
        settle().await;
        drop(held);
        drop(a.await.unwrap());
        drop(b.await.unwrap());
        assert_eq!(*order.lock(), ["a", "b"]);
        // Every slot came back: one can be taken at once.
        let again = tokio::time::timeout(Duration::from_secs(1), lanes.acquire(Class::Answering));
        assert!(again.await.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_slot_on() {
        let lanes = Arc::new(Lanes::new(1));
        let held = lanes.acquire(Class::First).await;
        let quitter = {
            let lanes = Arc::clone(&lanes);
            tokio::spawn(async move { lanes.acquire(Class::First).await })
        };
        settle().await;
        quitter.abort();
        let _ = quitter.await;
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(1), lanes.acquire(Class::First));
        assert!(next.await.is_ok(), "the slot was not lost");
    }
}
