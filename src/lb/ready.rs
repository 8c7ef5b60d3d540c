//! The LB's readiness latch (`/readyz`), in the manner of linkerd's admin
//! `Readiness`: false at start, true once warmed up, and never false again
//! except on shutdown, which `/readyz` checks on its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::registry::Registry;

pub struct Readiness {
    latched: AtomicBool,
    started: Instant,
    /// The longest an LB waits after start before calling itself ready.
    warmup: Duration,
    /// No newcomer for this long, with every entry checked, counts as
    /// stabilized sooner.
    stable_after: Duration,
}

impl Readiness {
    pub fn new(warmup: Duration, stable_after: Duration) -> Self {
        Self {
            latched: AtomicBool::new(false),
            started: Instant::now(),
            warmup,
            stable_after,
        }
    }

    /// Whether the LB has warmed up (latched): every known entry has had its
    /// first check, and either `warmup` has passed or the registry is stable.
    pub fn ready(&self, registry: &Registry) -> bool {
        if self.latched.load(Ordering::Relaxed) {
            return true;
        }
        let stable = || {
            !registry.is_empty()
                && registry
                    .last_created()
                    .is_some_and(|t| t.elapsed() >= self.stable_after)
        };
        let ready = registry.all_checked() && (self.started.elapsed() >= self.warmup || stable());
        if ready {
            self.latched.store(true, Ordering::Relaxed);
        }
        ready
    }
}
