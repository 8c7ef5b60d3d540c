//! The health verdict: what one check result does to an entry's state.
//!
//! A pure function over a small value, in the shape of
//! pingora-load-balancing's `Health::observe_health`, so the whole table of
//! transitions is tested without a registry, a clock or a network.

use crate::protocol::BackendState;

/// Consecutive check results needed to flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Failures in a row before a healthy entry leaves the pool.
    pub unhealthy: u32,
    /// Successes in a row before an unhealthy entry re-enters it.
    pub healthy: u32,
}

/// What one check saw; also `roster_lb_health_checks_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Observation {
    /// 2xx with vitals saying `"ready": true`.
    Ready,
    /// 2xx with vitals saying `"ready": false`.
    NotReady,
    /// Unreachable, timeout, non-2xx or bad JSON.
    Failed,
    /// The vitals carry another id: this address is someone else now.
    #[strum(serialize = "id_mismatch")]
    Stranger,
}

/// The health half of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub state: BackendState,
    /// Checked at least once.
    pub checked: bool,
    /// Passed a check as itself, and no stranger since: only such entries
    /// may be used in panic mode.
    pub verified: bool,
    pub fails: u32,
    pub successes: u32,
}

impl Default for Health {
    /// A new entry: out of the pool until its first good check.
    fn default() -> Self {
        Self {
            state: BackendState::Unhealthy,
            checked: false,
            verified: false,
            fails: 0,
            successes: 0,
        }
    }
}

impl Health {
    /// The state after `o`. Draining is left only by a new announcement,
    /// never by a check.
    pub fn observe(self, o: Observation, t: Thresholds) -> Self {
        let first = !self.checked;
        let mut h = Self {
            checked: true,
            ..self
        };
        let next = match o {
            Observation::Ready => {
                h.verified = true;
                h.fails = 0;
                h.successes = h.successes.saturating_add(1);
                // A not-ready backend that is ready again was reachable all
                // along, and a first check needs no second opinion.
                let back = h.state == BackendState::Healthy
                    || h.state == BackendState::NotReady
                    || h.successes >= t.healthy
                    || first;
                back.then_some(BackendState::Healthy)
            }
            Observation::NotReady => {
                h.fails = 0;
                h.successes = 0;
                Some(BackendState::NotReady)
            }
            Observation::Stranger => {
                h.verified = false;
                h.successes = 0;
                h.fails = h.fails.saturating_add(1);
                Some(BackendState::Unhealthy)
            }
            Observation::Failed => {
                h.successes = 0;
                h.fails = h.fails.saturating_add(1);
                // A healthy entry tolerates `unhealthy - 1` failures.
                let out = h.fails >= t.unhealthy || h.state != BackendState::Healthy;
                out.then_some(BackendState::Unhealthy)
            }
        };
        if let Some(s) = next
            && h.state != BackendState::Draining
        {
            h.state = s;
        }
        h
    }

    /// In the pool on its own merits.
    pub fn healthy(&self) -> bool {
        self.state == BackendState::Healthy
    }

    /// Usable when panic mode routes around the verdicts: never a backend
    /// that said not-ready, is draining, or was never itself.
    pub fn panic_usable(&self) -> bool {
        self.verified && matches!(self.state, BackendState::Healthy | BackendState::Unhealthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendState as S;
    use Observation as O;

    const T: Thresholds = Thresholds {
        unhealthy: 2,
        healthy: 2,
    };

    fn at(state: BackendState, checked: bool, fails: u32, successes: u32) -> Health {
        Health {
            state,
            checked,
            verified: checked,
            fails,
            successes,
        }
    }

    /// Every (state, observation) pair that matters, with the state after.
    #[test]
    fn transition_table() {
        let table = [
            // A new entry: one good check is enough, anything else keeps it out.
            (Health::default(), O::Ready, S::Healthy),
            (Health::default(), O::NotReady, S::NotReady),
            (Health::default(), O::Failed, S::Unhealthy),
            (Health::default(), O::Stranger, S::Unhealthy),
            // Healthy: one failure tolerated, the threshold's takes it out.
            (at(S::Healthy, true, 0, 1), O::Ready, S::Healthy),
            (at(S::Healthy, true, 0, 1), O::Failed, S::Healthy),
            (at(S::Healthy, true, 1, 0), O::Failed, S::Unhealthy),
            (at(S::Healthy, true, 0, 1), O::NotReady, S::NotReady),
            (at(S::Healthy, true, 0, 1), O::Stranger, S::Unhealthy),
            // Unhealthy after failures: needs `healthy` successes.
            (at(S::Unhealthy, true, 2, 0), O::Ready, S::Unhealthy),
            (at(S::Unhealthy, true, 0, 1), O::Ready, S::Healthy),
            (at(S::Unhealthy, true, 2, 0), O::Failed, S::Unhealthy),
            (at(S::Unhealthy, true, 2, 0), O::NotReady, S::NotReady),
            // Not ready: ready again is back at once.
            (at(S::NotReady, true, 0, 0), O::Ready, S::Healthy),
            (at(S::NotReady, true, 0, 0), O::Failed, S::Unhealthy),
            (at(S::NotReady, true, 0, 0), O::NotReady, S::NotReady),
            // Draining: no check brings it back or moves it.
            (at(S::Draining, true, 0, 0), O::Ready, S::Draining),
            (at(S::Draining, true, 0, 0), O::NotReady, S::Draining),
            (at(S::Draining, true, 0, 0), O::Failed, S::Draining),
            (at(S::Draining, true, 0, 0), O::Stranger, S::Draining),
        ];
        for (i, (before, o, want)) in table.into_iter().enumerate() {
            let after = before.observe(o, T);
            assert_eq!(after.state, want, "row {i}: {before:?} + {o:?}");
            assert!(after.checked, "row {i}");
        }
    }

    #[test]
    fn counters_and_verification() {
        let h = Health::default().observe(O::Ready, T);
        assert!(h.verified && h.healthy() && h.panic_usable());
        let h = h.observe(O::Stranger, T);
        assert!(!h.verified && !h.panic_usable(), "a stranger is never used");
        assert_eq!((h.fails, h.successes), (1, 0));
        let h = h.observe(O::Failed, T).observe(O::Ready, T);
        assert_eq!((h.fails, h.successes), (0, 1));
        let h = h.observe(O::NotReady, T);
        assert!(!h.panic_usable(), "not-ready is never used, even in panic");
    }
}
