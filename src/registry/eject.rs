//! Passive ejection: a backend failing on live traffic leaves selection
//! before its next health check, for a time that grows on repeats.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Registry, Upstream};

impl Registry {
    /// Eject a backend after failures on live traffic, for
    /// `base × 2^(n-1)` (capped at `max`) where n counts ejections without
    /// a quiet spell of `2 × max` between them. Returns the length, or None
    /// when it is already ejected or was replaced meanwhile.
    pub fn eject(
        &self,
        upstream: &Arc<Upstream>,
        reason: String,
        now: Instant,
        base: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let mut table = self.table.write();
        let e = table
            .get_mut(&upstream.service, &upstream.id)
            .filter(|e| Arc::ptr_eq(&e.upstream, upstream) && e.ejected_until.is_none())?;
        if e.last_ejected
            .is_some_and(|t| now.saturating_duration_since(t) > max * 2)
        {
            e.ejections = 0;
        }
        e.ejections = e.ejections.saturating_add(1);
        let length = crate::backoff::Backoff::new(base, max).delay(e.ejections);
        e.ejected_until = Some(now + length);
        e.last_ejected = Some(now);
        e.eject_reason = Some(reason);
        drop(table);
        self.mark_dirty(&upstream.service);
        Some(length)
    }

    /// End ejections whose time is up; returns the ids released.
    pub fn release_ejections(&self, now: Instant) -> Vec<String> {
        let due: Vec<(Arc<str>, String)> = self
            .table
            .read()
            .entries()
            .filter(|e| e.ejected_until.is_some_and(|t| t <= now))
            .map(|e| (Arc::clone(&e.service), e.id.clone()))
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let mut table = self.table.write();
        let mut released = Vec::with_capacity(due.len());
        for (service, id) in due {
            if let Some(e) = table.get_mut(&service, &id) {
                e.ejected_until = None;
                e.eject_reason = None;
                e.upstream.failures.store(0, Ordering::Relaxed);
                self.mark_dirty(&service);
                released.push(id);
            }
        }
        released
    }
}
