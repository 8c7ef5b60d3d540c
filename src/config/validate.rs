//! Checks the LB's configuration needs beyond what serde's types express,
//! each error naming the key.

use std::time::Duration;

use super::{Config, ConfigError, invalid, services};

/// The longest duration a key takes: far beyond any sensible setting, and
/// short enough that what the LB computes from one (an interval doubled,
/// a lease added to now) cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Config {
    /// Checks the LB needs: ranges that serde cannot express.
    pub fn validate_lb(&self) -> Result<(), ConfigError> {
        self.check_durations()?;
        self.check_health()?;
        self.check_lb()?;
        self.check_protocols()?;
        self.check_registration()?;
        services::validate(self)?;
        super::limits::validate("lb.proxy_limits", &self.lb.proxy_limits.get())?;
        super::limits::validate("lb.control_limits", &self.lb.control_limits.get())?;
        Ok(())
    }

    /// Every duration of the LB's keys at most [`MAX_DURATION`].
    fn check_durations(&self) -> Result<(), ConfigError> {
        let (hc, lb) = (&self.health_check, &self.lb);
        let (proxy, control) = (lb.proxy_limits.get(), lb.control_limits.get());
        let keys = [
            ("health_check.interval", hc.interval),
            ("health_check.timeout", hc.timeout),
            ("lb.grace_period", lb.grace_period),
            ("lb.connect_timeout", lb.connect_timeout),
            ("lb.read_timeout", lb.read_timeout),
            ("lb.idle_timeout", lb.idle_timeout),
            ("lb.ejection_time", lb.ejection_time),
            ("lb.max_ejection_time", lb.max_ejection_time),
            ("lb.shutdown_delay", lb.shutdown_delay),
            ("lb.warmup", lb.warmup),
            ("lb.websocket_idle_timeout", lb.websocket_idle_timeout),
            ("lb.tls.reload_interval", lb.tls.reload_interval),
            ("lb.proxy_limits.header_timeout", proxy.header_timeout),
            ("lb.proxy_limits.body_timeout", proxy.body_timeout),
            ("lb.proxy_limits.idle_timeout", proxy.idle_timeout),
            ("lb.control_limits.header_timeout", control.header_timeout),
            ("lb.control_limits.body_timeout", control.body_timeout),
            ("lb.control_limits.idle_timeout", control.idle_timeout),
            ("registration.lease_ttl", self.registration.lease_ttl),
        ];
        let services = self.services.values().map(|s| &s.health_check);
        let overrides = services.flat_map(|c| [c.interval, c.timeout]).flatten();
        match keys.iter().find(|(_, d)| *d > MAX_DURATION) {
            Some(&(key, _)) => Err(invalid(key, "must be at most 365d")),
            None if overrides.into_iter().any(|d| d > MAX_DURATION) => Err(invalid(
                "services.*.health_check",
                "interval and timeout must be at most 365d",
            )),
            None => Ok(()),
        }
    }

    fn check_health(&self) -> Result<(), ConfigError> {
        let hc = &self.health_check;
        if hc.interval.is_zero() {
            return Err(invalid("health_check.interval", "must be more than 0"));
        }
        if hc.timeout.is_zero() {
            return Err(invalid("health_check.timeout", "must be more than 0"));
        }
        if !hc.path.starts_with('/') {
            return Err(invalid("health_check.path", "must start with '/'"));
        }
        if hc.unhealthy_threshold == 0 {
            return Err(invalid("health_check.unhealthy_threshold", "must be ≥ 1"));
        }
        if hc.healthy_threshold == 0 {
            return Err(invalid("health_check.healthy_threshold", "must be ≥ 1"));
        }
        if !(0.0..=100.0).contains(&hc.panic_threshold) {
            return Err(invalid(
                "health_check.panic_threshold",
                "must be 0-100 (percent)",
            ));
        }
        if hc.concurrency == 0 {
            return Err(invalid("health_check.concurrency", "must be ≥ 1"));
        }
        Ok(())
    }

    fn check_lb(&self) -> Result<(), ConfigError> {
        let lb = &self.lb;
        if lb.ejection_time.is_zero() || lb.max_ejection_time < lb.ejection_time {
            return Err(invalid(
                "lb.max_ejection_time",
                "must be ≥ lb.ejection_time, and both more than 0",
            ));
        }
        lb.load_score
            .check()
            .map_err(|e| invalid("lb.load_score", e))?;
        if lb.threads == Some(0) {
            return Err(invalid("lb.threads", "must be ≥ 1 or null"));
        }
        if !lb.default_service.is_empty() {
            crate::protocol::check_name(&lb.default_service)
                .map_err(|e| invalid("lb.default_service", format!("service: {e}")))?;
        }
        Ok(())
    }

    /// WebSocket, gRPC and TLS settings.
    fn check_protocols(&self) -> Result<(), ConfigError> {
        let lb = &self.lb;
        if lb.websocket_idle_timeout.is_zero() {
            return Err(invalid("lb.websocket_idle_timeout", "must be more than 0"));
        }
        if let Some(m) = lb
            .grpc_idempotent_methods
            .iter()
            .find(|m| !m.starts_with('/') || m.matches('/').count() != 2)
        {
            return Err(invalid(
                "lb.grpc_idempotent_methods",
                format!("{m:?}: expected /package.Service/Method"),
            ));
        }
        if lb.tls.enabled() && lb.tls.reload_interval.is_zero() {
            return Err(invalid("lb.tls.reload_interval", "must be more than 0"));
        }
        Ok(())
    }

    fn check_registration(&self) -> Result<(), ConfigError> {
        let r = &self.registration;
        if r.lease_ttl.is_zero() {
            return Err(invalid("registration.lease_ttl", "must be more than 0"));
        }
        // Selector tables index backends with u16.
        if r.max_backends == 0 || r.max_backends > 65_535 {
            return Err(invalid("registration.max_backends", "must be 1..=65535"));
        }
        r.networks()?;
        Ok(())
    }
}
