//! What the agent learns from the app: whether it answers its health probe
//! (`agent.app_health`) and, optionally, the vitals it serves itself
//! (`agent.app_vitals`).
//!
//! Both are looked at when someone asks for the vitals, at most once per
//! [`OBSERVE_MAX_AGE`]: an idle agent does no work, and an LB check sees the
//! app as it is now.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::AgentError;
use crate::fetch::{FetchError, root_cause};

/// Time allowed for one probe or app-vitals fetch.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an observation is reused.
pub const OBSERVE_MAX_AGE: Duration = Duration::from_millis(500);
/// Largest app-vitals document read.
const MAX_APP_VITALS_BYTES: usize = 64 * 1024;

/// How the app's readiness is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppHealth {
    /// TCP connect to `host:port`.
    Tcp(String),
    /// `GET` answered with a 2xx.
    Http(String),
    /// Always healthy.
    None,
}

impl FromStr for AppHealth {
    type Err = String;

    /// `http://127.0.0.1:3000/healthz`, `tcp:3000` (loopback), `tcp:HOST:PORT`, `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "none" {
            return Ok(Self::None);
        }
        if s.starts_with("http://") {
            return Ok(Self::Http(s.to_string()));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            if let Ok(port) = rest.parse::<u16>() {
                return Ok(Self::Tcp(format!("127.0.0.1:{port}")));
            }
            if super::split_host_port(rest).is_some() {
                return Ok(Self::Tcp(rest.to_string()));
            }
        }
        Err(format!(
            "{s:?}: expected http://HOST:PORT/PATH, tcp:PORT, tcp:HOST:PORT or none"
        ))
    }
}

impl fmt::Display for AppHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Http(u) => f.write_str(u),
            Self::None => f.write_str("none"),
        }
    }
}

/// Vitals the app serves itself: every field optional, unknown ones ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct AppVitals {
    pub ready: Option<bool>,
    pub requests_in_progress: Option<u32>,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    pub gpu_usage: Option<f64>,
    pub failed_responses: Option<u64>,
    pub connected_peers: Option<u32>,
    pub backoff_requests: Option<u32>,
    pub version: Option<String>,
}

/// One look at the app.
#[derive(Debug, Clone)]
pub struct Observed {
    pub app_healthy: bool,
    pub app: Option<AppVitals>,
}

/// The app probe and app-vitals source, with a short cache.
pub struct Sources {
    health: AppHealth,
    vitals_url: Option<String>,
    client: reqwest::Client,
    cache: tokio::sync::Mutex<Option<(Instant, Observed)>>,
}

impl Sources {
    pub fn new(health: AppHealth, vitals_url: Option<String>) -> Result<Self, AgentError> {
        Ok(Self {
            health,
            vitals_url,
            client: super::http_client(PROBE_TIMEOUT)?,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The app now (or up to [`OBSERVE_MAX_AGE`] ago). Concurrent callers
    /// share one probe.
    pub async fn observe(&self) -> Observed {
        let mut cache = self.cache.lock().await;
        if let Some((at, o)) = cache.as_ref()
            && at.elapsed() < OBSERVE_MAX_AGE
        {
            return o.clone();
        }
        let (health, app) = tokio::join!(self.probe(), self.fetch_app_vitals());
        let app_healthy = match health {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(probe = %self.health, error = %e, "app not healthy");
                false
            }
        };
        let previous = cache.as_ref().map(|(_, o)| o.app_healthy);
        if previous != Some(app_healthy) {
            if app_healthy {
                tracing::info!(probe = %self.health, "app healthy");
            } else {
                tracing::warn!(probe = %self.health, "app not healthy: ready=false");
            }
        }
        let app = match app {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "app vitals unavailable");
                None
            }
        };
        let o = Observed { app_healthy, app };
        *cache = Some((Instant::now(), o.clone()));
        o
    }

    async fn probe(&self) -> Result<(), String> {
        match &self.health {
            AppHealth::None => Ok(()),
            AppHealth::Tcp(addr) => {
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                    Err(_) => Err(format!("connect {addr}: timeout")),
                }
            }
            AppHealth::Http(url) => {
                let resp = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {}", root_cause(&e)))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("GET {url}: status {}", resp.status()))
                }
            }
        }
    }

    async fn fetch_app_vitals(&self) -> Result<Option<AppVitals>, FetchError> {
        let Some(url) = &self.vitals_url else {
            return Ok(None);
        };
        crate::fetch::get_json(&self.client, url, MAX_APP_VITALS_BYTES, PROBE_TIMEOUT)
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_health_forms() {
        assert_eq!(
            "tcp:3000".parse::<AppHealth>(),
            Ok(AppHealth::Tcp("127.0.0.1:3000".into()))
        );
        assert_eq!(
            "tcp:10.0.0.1:80".parse::<AppHealth>(),
            Ok(AppHealth::Tcp("10.0.0.1:80".into()))
        );
        assert_eq!(
            "http://127.0.0.1:3000/healthz".parse::<AppHealth>(),
            Ok(AppHealth::Http("http://127.0.0.1:3000/healthz".into()))
        );
        assert_eq!("none".parse::<AppHealth>(), Ok(AppHealth::None));
        for bad in ["tcp:", "tcp:x", "https://x", "3000", ""] {
            assert!(bad.parse::<AppHealth>().is_err(), "{bad}");
        }
    }

    #[test]
    fn app_vitals_are_lenient() {
        let v: AppVitals =
            serde_json::from_str(r#"{"requests_in_progress": 4, "extra": [1], "ready": false}"#)
                .unwrap();
        assert_eq!(v.requests_in_progress, Some(4));
        assert_eq!(v.ready, Some(false));
        assert_eq!(v.cpu_usage, None);
    }

    #[tokio::test]
    async fn probes_tcp_and_http() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = Sources::new(AppHealth::Tcp(addr.to_string()), None).unwrap();
        assert!(s.observe().await.app_healthy);
        drop(l);
        tokio::time::sleep(OBSERVE_MAX_AGE).await;
        assert!(!s.observe().await.app_healthy);

        let s = Sources::new(AppHealth::Http(format!("http://{addr}/healthz")), None).unwrap();
        assert!(!s.observe().await.app_healthy, "nothing listens");
    }
}
