//! Who may change (and, optionally, read) the registry.
//!
//! - **Bearer token** (`registration.token_file`): the file is re-read when
//!   it changes, so a rotated Kubernetes Secret takes effect without a
//!   restart; compared in constant time.
//! - **Kubernetes identity** (`registration.kubernetes_auth`): the agent
//!   sends its projected ServiceAccount token (audience
//!   `registration.token_audience`); the LB validates it with a TokenReview,
//!   reads the pod named in the token and accepts only an address whose IP
//!   is that pod's IP. Verdicts are cached for a minute so heartbeats do not
//!   become API calls.
//! - **Rate limit** per source IP on the control API (GCRA, `governor`).
//!
//! Tokens are never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use crate::config::RegistrationConfig;

/// How long a TokenReview + Pod verdict is reused.
const K8S_CACHE_TTL: Duration = Duration::from_secs(60);

/// A bearer token read from a file, re-read when the file changes.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<(Option<FileStamp>, Arc<Vec<u8>>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: a Secret volume swaps its `..data` link on update.
    let m = std::fs::metadata(path)?;
    Ok(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

fn read_token(path: &Path) -> std::io::Result<Vec<u8>> {
    let text = std::fs::read(path)?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "token file is empty",
        ));
    }
    Ok(token)
}

impl TokenFile {
    /// Read the token now; an unreadable or empty file is a startup error.
    pub fn open(path: &Path) -> Result<Self, crate::config::ConfigError> {
        let bad = |e: std::io::Error| crate::config::ConfigError::Invalid {
            field: "registration.token_file",
            message: format!("{}: {e}", path.display()),
        };
        let st = stamp(path).map_err(bad)?;
        let token = read_token(path).map_err(bad)?;
        Ok(Self {
            path: path.to_path_buf(),
            cached: Mutex::new((Some(st), Arc::new(token))),
        })
    }

    /// The current token; re-read if the file changed. A file that turns
    /// unreadable keeps the last good token (a half-written Secret update
    /// must not lock every agent out).
    pub fn current(&self) -> Arc<Vec<u8>> {
        let now = stamp(&self.path).ok();
        let mut cached = self.cached.lock();
        if now.is_some() && now != cached.0 {
            match read_token(&self.path) {
                Ok(t) => {
                    tracing::info!(path = %self.path.display(), "registration token reloaded");
                    *cached = (now, Arc::new(t));
                }
                Err(e) => {
                    // Once per change of the file, not once per request.
                    tracing::warn!(path = %self.path.display(), error = %e, "token file unreadable; keeping the previous token");
                    cached.0 = now;
                }
            }
        }
        Arc::clone(&cached.1)
    }

    /// Constant-time comparison with the presented token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let token = self.current();
        bool::from(token.as_slice().ct_eq(presented))
    }
}

/// Who the Kubernetes API says a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub ips: Vec<IpAddr>,
}

/// Why a call may not change or read the registry. The API turns each into
/// its status (`From<AuthError> for ApiError`); the text is the body.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer token")]
    MissingToken,
    /// A write without credentials names the settings that ask for one.
    #[error("missing Authorization: Bearer token (registration.token_file / kubernetes_auth)")]
    MissingWriteToken,
    #[error("invalid bearer token")]
    InvalidToken,
    #[error(transparent)]
    Denied(#[from] Denial),
    /// The Kubernetes API could not be asked: not the caller's fault.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("address: {ip} is not an IP of pod {namespace}/{pod} (kubernetes_auth)")]
    NotThePod {
        ip: IpAddr,
        namespace: String,
        pod: String,
    },
    #[error("rate limit exceeded for this source address (registration.rate_limit)")]
    RateLimited {
        /// Whole seconds until the source may call again (≥ 1).
        retry_after: u64,
    },
}

/// The Kubernetes API's refusal of a token; cached like an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("bearer token is not valid UTF-8")]
    NotUtf8,
    #[error("token rejected by the Kubernetes API{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Rejected { reason: Option<String> },
    #[error("token is not for audience {audience:?}")]
    WrongAudience { audience: String },
    #[error("token is not a ServiceAccount token")]
    NotServiceAccount,
    #[error("token is not bound to a pod (use a projected token)")]
    NotBoundToPod,
    #[error("pod {namespace}/{pod} not found")]
    PodNotFound { namespace: String, pod: String },
    #[error("pod {namespace}/{pod} was replaced (uid differs)")]
    PodReplaced { namespace: String, pod: String },
}

/// The Kubernetes API did not answer; never cached.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    // The cause stays in the text too: it is what the agent's log shows.
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("TokenReview failed: {0}")]
    TokenReview(#[source] kube::Error),
    #[error("reading pod {namespace}/{pod}: {source}")]
    ReadPod {
        namespace: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// A cached verdict: when it was reached, and the identity or the refusal.
type Cached = (Instant, Result<PodIdentity, Denial>);

/// Validates ServiceAccount tokens with TokenReview and reads the pod.
pub struct KubeAuth {
    audience: String,
    client: OnceCell<kube::Client>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

fn token_key(token: &[u8]) -> [u8; 32] {
    // A keyed hash so the cache never holds tokens themselves.
    use std::hash::{BuildHasher, Hasher};
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let seed = SEED.get_or_init(Default::default);
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = seed.build_hasher();
        h.write_usize(i);
        h.write(token);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl KubeAuth {
    pub fn new(audience: String) -> Self {
        Self {
            audience,
            client: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Use this client instead of the in-cluster/kubeconfig default.
    pub fn with_client(audience: String, client: kube::Client) -> Self {
        let me = Self::new(audience);
        let _ = me.client.set(client);
        me
    }

    async fn client(&self) -> Result<&kube::Client, Unavailable> {
        self.client
            .get_or_try_init(|| async { kube::Client::try_default().await })
            .await
            .map_err(Unavailable::Client)
    }

    /// Identify the pod behind a token (cached).
    pub async fn identify(&self, token: &[u8]) -> Result<PodIdentity, AuthError> {
        let key = token_key(token);
        if let Some((at, verdict)) = self.cache.lock().get(&key).cloned()
            && at.elapsed() < K8S_CACHE_TTL
        {
            return verdict.map_err(AuthError::Denied);
        }
        let verdict = match self.review(token).await {
            // No IP reported for the pod yet: a native-sidecar agent announces
            // before the kubelet has written status.podIP. Not a verdict: the
            // next call asks again instead of being refused for the TTL.
            Ok(v) if v.ips.is_empty() => return Ok(v),
            Ok(v) => Ok(v),
            Err(AuthError::Denied(d)) => Err(d),
            // API trouble is not the agent's fault and is not cached.
            Err(e) => return Err(e),
        };
        let mut cache = self.cache.lock();
        if cache.len() > 100_000 {
            cache.retain(|_, (at, _)| at.elapsed() < K8S_CACHE_TTL);
        }
        cache.insert(key, (Instant::now(), verdict.clone()));
        verdict.map_err(AuthError::Denied)
    }

    /// `Denied` or `Unavailable`: only a denial is a verdict worth caching.
    async fn review(&self, token: &[u8]) -> Result<PodIdentity, AuthError> {
        let client = self.client().await?.clone();
        let token = String::from_utf8(token.to_vec()).map_err(|_| Denial::NotUtf8)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token,
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviews: Api<TokenReview> = Api::all(client.clone());
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(Unavailable::TokenReview)?;
        let user = self.authenticated(answer.status.unwrap_or_default())?;
        let extra = user.extra.unwrap_or_default();
        let claim = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let namespace = user
            .username
            .as_deref()
            .and_then(|u| u.strip_prefix("system:serviceaccount:"))
            .and_then(|rest| rest.split(':').next())
            .map(String::from)
            .ok_or(Denial::NotServiceAccount)?;
        let pod_name =
            claim("authentication.kubernetes.io/pod-name").ok_or(Denial::NotBoundToPod)?;
        let pod_uid = claim("authentication.kubernetes.io/pod-uid");
        let pods: Api<Pod> = Api::namespaced(client, &namespace);
        let pod = pods
            .get_opt(&pod_name)
            .await
            .map_err(|source| Unavailable::ReadPod {
                namespace: namespace.clone(),
                pod: pod_name.clone(),
                source,
            })?;
        let Some(pod) = pod else {
            return Err(Denial::PodNotFound {
                namespace,
                pod: pod_name,
            }
            .into());
        };
        if pod_uid.is_some() && pod.metadata.uid != pod_uid {
            return Err(Denial::PodReplaced {
                namespace,
                pod: pod_name,
            }
            .into());
        }
        Ok(PodIdentity {
            namespace,
            pod: pod_name,
            ips: pod_ips(pod.status.unwrap_or_default()),
        })
    }

    /// The reviewed user, once the API authenticated the token for our audience.
    fn authenticated(&self, status: TokenReviewStatus) -> Result<UserInfo, Denial> {
        if status.authenticated != Some(true) {
            return Err(Denial::Rejected {
                reason: status.error,
            });
        }
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == &self.audience)
        {
            return Err(Denial::WrongAudience {
                audience: self.audience.clone(),
            });
        }
        Ok(status.user.unwrap_or_default())
    }
}

/// Every IP of the pod: `podIPs`, plus `podIP` when it is not among them.
fn pod_ips(status: PodStatus) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

/// Everything `registration:` says about who may call the control API.
pub struct Auth {
    token: Option<TokenFile>,
    kube: Option<KubeAuth>,
    protect_reads: bool,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let rest = v
        .strip_prefix(b"Bearer ")
        .or_else(|| v.strip_prefix(b"bearer "))?;
    Some(rest.trim_ascii())
}

impl Auth {
    pub fn new(cfg: &RegistrationConfig) -> Result<Self, crate::config::ConfigError> {
        let token = cfg.token_file.as_deref().map(TokenFile::open).transpose()?;
        let kube = cfg
            .kubernetes_auth
            .then(|| KubeAuth::new(cfg.token_audience.clone()));
        let limiter = NonZeroU32::new(cfg.rate_limit).map(|per_sec| {
            let burst = NonZeroU32::new(cfg.rate_limit_burst).unwrap_or(per_sec);
            RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst))
        });
        Ok(Self {
            token,
            kube,
            protect_reads: cfg.protect_reads,
            limiter,
        })
    }

    /// Replace the Kubernetes client (tests).
    pub fn with_kube(mut self, kube: KubeAuth) -> Self {
        self.kube = Some(kube);
        self
    }

    /// 429 with `Retry-After` when `ip` is over its rate.
    pub fn rate_limit(&self, ip: Option<IpAddr>) -> Result<(), AuthError> {
        let (Some(limiter), Some(ip)) = (&self.limiter, ip) else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            AuthError::RateLimited {
                retry_after: secs.max(1),
            }
        })
    }

    /// Forget idle rate-limit keys (called periodically).
    pub fn housekeeping(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// May the caller change the entry at `ip`? `Ok` when auth is off.
    pub async fn authorize_write(&self, headers: &HeaderMap, ip: IpAddr) -> Result<(), AuthError> {
        if self.token.is_none() && self.kube.is_none() {
            return Ok(());
        }
        let Some(presented) = bearer(headers) else {
            return Err(AuthError::MissingWriteToken);
        };
        if let Some(t) = &self.token
            && t.matches(presented)
        {
            return Ok(());
        }
        let Some(kube) = &self.kube else {
            return Err(AuthError::InvalidToken);
        };
        let who = kube.identify(presented).await?;
        if who.ips.contains(&ip) {
            Ok(())
        } else {
            Err(AuthError::NotThePod {
                ip,
                namespace: who.namespace,
                pod: who.pod,
            })
        }
    }

    /// May the caller read the registry? Open unless `protect_reads`.
    pub async fn authorize_read(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if !self.protect_reads {
            return Ok(());
        }
        self.authorize_any(headers).await
    }

    /// Does the caller hold any valid credential? `Ok` when auth is off.
    pub async fn authorize_any(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if self.token.is_none() && self.kube.is_none() {
            return Ok(());
        }
        let Some(presented) = bearer(headers) else {
            return Err(AuthError::MissingToken);
        };
        if let Some(t) = &self.token
            && t.matches(presented)
        {
            return Ok(());
        }
        match &self.kube {
            Some(kube) => kube.identify(presented).await.map(|_| ()),
            None => Err(AuthError::InvalidToken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_reloaded_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        let t = TokenFile::open(&p).unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b""));
        std::fs::write(&p, "rotated-token-value").unwrap();
        assert!(t.matches(b"rotated-token-value"));
        assert!(!t.matches(b"s3cret"));
        // Emptied file: the previous token stays.
        std::fs::write(&p, "").unwrap();
        assert!(t.matches(b"rotated-token-value"));
    }

    #[test]
    fn empty_token_file_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  \n").unwrap();
        let e = TokenFile::open(&p).err().unwrap().to_string();
        assert!(e.contains("registration.token_file"), "{e}");
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_none());
        h.insert(header::AUTHORIZATION, "Bearer abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_none());
    }

    #[test]
    fn rate_limit_answers_retry_after() {
        let cfg = RegistrationConfig {
            rate_limit: 1,
            rate_limit_burst: 2,
            ..Default::default()
        };
        let a = Auth::new(&cfg).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(a.rate_limit(Some(ip)).is_ok());
        assert!(a.rate_limit(Some(ip)).is_ok());
        let e = a.rate_limit(Some(ip)).unwrap_err();
        assert!(
            matches!(e, AuthError::RateLimited { retry_after } if retry_after >= 1),
            "{e:?}"
        );
        // Other sources are not affected.
        assert!(a.rate_limit(Some("10.0.0.2".parse().unwrap())).is_ok());
    }
}
