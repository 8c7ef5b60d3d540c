//! `lb.load_score`: the weights `least_loaded` scores backends with (how
//! the score is computed lives with the selector, `crate::lb::select`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `lb.load_score`: how `least_loaded` weighs what it knows about a
/// backend. The score is the weighted sum below, divided by the backend's
/// weight; of two random candidates the lower score wins. By default a
/// request this LB holds counts four times one the backend reports, GPU
/// usage is ignored and a backend more than twice as slow as the fastest
/// weighs its load by the cube of how much slower (bench part 7).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoadScore {
    /// Points per request this LB has in flight to the backend (exact, fresh,
    /// but blind to other LB replicas).
    pub in_flight: f64,
    /// Points per request the backend reported in its vitals
    /// (`requests_in_progress + backoff_requests`: every replica's load, up
    /// to one health interval old).
    pub reported: f64,
    /// Points per percent of `gpu_usage` the backend reported (0–100); for
    /// GPU backends such as model servers. 0 = ignored.
    pub gpu: f64,
    /// Response-time exponent: when > 0 the score becomes
    /// `(sum above + 1) × max(1, ewma / (2 × fastest ewma)) ^ latency`, in
    /// the spirit of "peak EWMA" balancers: `ewma` is this LB's moving
    /// average of the backend's response time, `fastest` the lowest among
    /// the candidates. Latencies within 2× of the fastest count as equal,
    /// so idle backends of similar speed still share the traffic; a backend
    /// ten times slower weighs its load ×125 at the default 3, where queue
    /// lengths alone would give it about as many requests as the others at
    /// equal queues. 0 = ignored.
    pub latency: f64,
}

impl Default for LoadScore {
    fn default() -> Self {
        Self {
            in_flight: 4.0,
            reported: 1.0,
            gpu: 0.0,
            latency: 3.0,
        }
    }
}

impl LoadScore {
    /// Every weight finite and ≥ 0 (`lb.load_score` validation).
    pub fn check(&self) -> Result<(), String> {
        for (name, w) in [
            ("in_flight", self.in_flight),
            ("reported", self.reported),
            ("gpu", self.gpu),
            ("latency", self.latency),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(format!("{name} must be a number ≥ 0, got {w}"));
            }
        }
        Ok(())
    }
}

/// `--load-score in_flight=4,reported=1,gpu=0.5`: the keys given replace
/// the defaults, the others keep them.
impl std::str::FromStr for LoadScore {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut score = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected KEY=WEIGHT"))?;
            let v: f64 = v.trim().parse().map_err(|e| format!("{part:?}: {e}"))?;
            match k.trim() {
                "in_flight" => score.in_flight = v,
                "reported" => score.reported = v,
                "gpu" => score.gpu = v,
                "latency" => score.latency = v,
                other => {
                    return Err(format!(
                        "unknown key {other:?} (in_flight, reported, gpu, latency)"
                    ));
                }
            }
        }
        score.check()?;
        Ok(score)
    }
}
