//! Exponential backoff with jitter: the one formula behind every retry
//! schedule (announces, deregistration, checks of a failing entry, passive
//! ejection), so they differ only in their numbers.

use std::time::Duration;

use rand::RngExt;

/// `base × 2^(n-1)` after n failures in a row (0 counts as 1), at most
/// `cap`; then ±`jitter` (a fraction) so a fleet that failed together does
/// not retry in step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub jitter: f64,
}

impl Backoff {
    /// Without jitter.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            jitter: 0.0,
        }
    }

    /// With ±`fraction` jitter.
    pub const fn with_jitter(self, fraction: f64) -> Self {
        Self {
            jitter: fraction,
            ..self
        }
    }

    /// The wait after `failures` in a row, before jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << exp).min(self.cap)
    }

    /// The wait after `failures` in a row, jittered.
    pub fn next(&self, failures: u32) -> Duration {
        jitter(self.delay(failures), self.jitter)
    }
}

/// `d` scaled by a factor in [1 − fraction, 1 + fraction] picked by `r` ∈ [0, 1].
pub fn jitter_with(d: Duration, fraction: f64, r: f64) -> Duration {
    d.mul_f64(1.0 - fraction + 2.0 * fraction * r.clamp(0.0, 1.0))
}

/// `d` ±`fraction`, at random.
pub fn jitter(d: Duration, fraction: f64) -> Duration {
    jitter_with(d, fraction, rand::rng().random_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(ms(500), ms(30_000));
        let steps: Vec<u128> = (1..=8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(steps, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(b.delay(0), b.delay(1), "no failure yet counts as one");
        assert_eq!(b.delay(u32::MAX), ms(30_000), "no overflow");
        assert_eq!(Backoff::new(ms(500), ms(1000)).delay(3), ms(1000));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let d = Duration::from_secs(30);
        assert_eq!(jitter_with(d, 0.1, 0.0), Duration::from_secs(27));
        assert_eq!(jitter_with(d, 0.1, 1.0), Duration::from_secs(33));
        assert_eq!(jitter_with(d, 0.1, 7.0), Duration::from_secs(33), "clamped");
        assert_eq!(jitter(d, 0.0), d);
        let (mut lo, mut hi) = (d, d);
        for _ in 0..10_000 {
            let j = Backoff::new(d, d).with_jitter(0.1).next(1);
            assert!(
                j >= Duration::from_secs(27) && j <= Duration::from_secs(33),
                "{j:?}"
            );
            lo = lo.min(j);
            hi = hi.max(j);
        }
        // It does spread: a fleet restarted together drifts apart.
        assert!(
            lo < Duration::from_secs(28) && hi > Duration::from_secs(32),
            "{lo:?} {hi:?}"
        );
    }
}
