//! Announcing: `POST /register` to every LB address, and
//! `DELETE /register/{id}` to each of them when draining.
//!
//! A supervisor resolves every `discovery.load_balancers` entry through DNS
//! each round (every `announce_interval` ±10%) and keeps one task per
//! resolved address; an address that stops resolving loses its task, a new
//! one (a scaled-up or restarted LB replica) gets one and is announced to at
//! once. Each task has its own schedule, timeout and backoff, so a dead or
//! slow LB never delays the others.
//!
//! After a successful announce the next one comes after the jittered
//! interval, or sooner when the LB's `next_announce_seconds` says so (the
//! lease must not lapse). After a failure it backs off from 0.5 s, doubling,
//! never beyond the interval, so a restarted LB is refilled within one
//! interval; a `429`/`503` with `Retry-After` waits as long as asked.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::task::{AbortHandle, JoinSet};

use super::Shared;
use super::vitals::AnnounceResult;
use crate::backoff::{Backoff, jitter};
use crate::fetch::root_cause;

/// Longest wait a `Retry-After` can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Time allowed for resolving one entry.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Spread of every announce wait, so a fleet started together drifts apart.
const JITTER: f64 = 0.1;
/// Retries of a DELETE while draining: 0.2 s doubling, at most 1 s.
const DEREGISTER_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(1));

/// Wait after `failures` (≥ 1) failures in a row: 0.5 s doubling, capped at
/// the interval, ±10%.
pub fn announce_backoff(interval: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(500), interval).with_jitter(JITTER)
}

/// Wait after a successful announce: the jittered interval, shortened to
/// the LB's `next_announce_seconds` when that is sooner.
pub fn next_after_success(
    jittered_interval: Duration,
    next_announce_seconds: Option<u64>,
) -> Duration {
    match next_announce_seconds {
        Some(n) => jittered_interval.min(Duration::from_secs(n.max(1))),
        None => jittered_interval,
    }
}

/// Per-request timeout for the LBs: half the interval, within 0.5–5 s.
pub fn request_timeout(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by roster).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// Why one announce did not renew the lease.
#[derive(Debug)]
enum Failure {
    /// Throttled: try again after this long.
    RetryAfter(Duration, String),
    Other(String),
}

/// The part of the register answer the agent reads; anything else in it,
/// or a body that is not JSON at all, is ignored.
#[derive(Deserialize)]
struct Answer {
    next_announce_seconds: Option<u64>,
}

/// Whether the registration token could be read, for the vitals: a pod
/// whose namespace lacks the token Secret (the injected volume is optional)
/// runs, says `ready: false` with the reason, and logs it once.
#[derive(Default)]
pub(crate) struct TokenState(parking_lot::Mutex<Option<String>>);

impl TokenState {
    /// The current problem, if any.
    pub fn problem(&self) -> Option<String> {
        self.0.lock().clone()
    }

    /// Record the outcome of one read; logs only on a change.
    fn record(&self, outcome: &Result<Option<String>, String>) {
        let mut slot = self.0.lock();
        match outcome {
            Err(why) if slot.as_deref() != Some(why.as_str()) => {
                tracing::error!(
                    "registration token missing: {why}. The LBs refuse this backend until it \
                     appears (auth.mode token: the Secret must exist in this pod's namespace; \
                     the vitals say ready: false meanwhile)"
                );
                *slot = Some(why.clone());
            }
            Ok(_) if slot.is_some() => {
                tracing::info!("registration token found: announcing with it");
                *slot = None;
            }
            _ => {}
        }
    }
}

/// The bearer token, read fresh each time (rotated Secrets and projected
/// tokens just work). Never logged.
fn read_token(sh: &Shared) -> Result<Option<String>, String> {
    let outcome = read_token_file(sh.settings.token_file.as_deref());
    sh.token.record(&outcome);
    outcome
}

fn read_token_file(path: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("registration token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "registration token file {} is empty",
            path.display()
        ));
    }
    Ok(Some(token.to_string()))
}

fn with_token(req: reqwest::RequestBuilder, token: Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// Largest LB answer read; the register answer is ~200 bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why an answer was refused, from its `{"error": ...}` body when present.
async fn describe(resp: reqwest::Response) -> String {
    let status = resp.status();
    format!("status {status}: {}", crate::fetch::detail(resp).await)
}

async fn announce_once(sh: &Shared, addr: SocketAddr) -> Result<Option<u64>, Failure> {
    let token = read_token(sh).map_err(Failure::Other)?;
    let url = format!("http://{addr}/register");
    let req = with_token(sh.client.post(&url).json(&sh.registration), token);
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::Other(format!("POST {url}: {}", root_cause(&e))))?;
    let status = resp.status();
    if status.is_success() {
        let (body, _) = crate::fetch::read_up_to(resp, MAX_ANSWER_BYTES)
            .await
            .unwrap_or_default();
        let next = serde_json::from_slice::<Answer>(&body)
            .ok()
            .and_then(|a| a.next_announce_seconds);
        return Ok(next);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let why = format!("POST {url}: {}", describe(resp).await);
    match retry_after {
        Some(d) if status.as_u16() == 429 || status.as_u16() == 503 => {
            Err(Failure::RetryAfter(d, why))
        }
        _ => Err(Failure::Other(why)),
    }
}

/// One LB address: announce until the drain starts, then deregister.
/// Returns whether the LB confirmed the removal.
async fn lb_task(sh: Arc<Shared>, addr: SocketAddr) -> (SocketAddr, bool) {
    let interval = sh.settings.announce_interval;
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            biased;
            _ = sh.drain.draining() => break,
            o = announce_once(&sh, addr) => o,
        };
        let delay = match outcome {
            Ok(next) => {
                if failures > 0 {
                    tracing::info!(lb = %addr, "announced again after {failures} failures");
                } else {
                    tracing::debug!(lb = %addr, "announced");
                }
                failures = 0;
                sh.metrics.count_announce(AnnounceResult::Ok);
                next_after_success(jitter(interval, JITTER), next)
            }
            Err(Failure::RetryAfter(d, why)) => {
                failures += 1;
                tracing::warn!(lb = %addr, retry_in = ?d, "throttled: {why}");
                sh.metrics.count_announce(AnnounceResult::Throttled);
                d
            }
            Err(Failure::Other(why)) => {
                failures += 1;
                let d = announce_backoff(interval).next(failures);
                // Warn on the first failure and then now and again, not on every retry.
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(lb = %addr, failures, retry_in = ?d, "announce failed: {why}");
                } else {
                    tracing::debug!(lb = %addr, failures, "announce failed: {why}");
                }
                sh.metrics.count_announce(AnnounceResult::Error);
                d
            }
        };
        tokio::select! {
            biased;
            _ = sh.drain.draining() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let deadline = sh.drain.deadline(sh.settings.drain_period);
    (addr, deregister(&sh, addr, deadline).await)
}

/// `DELETE /register/{id}` until the LB confirms (204, or 404: already
/// gone) or `deadline` passes.
async fn deregister(sh: &Shared, addr: SocketAddr, deadline: Instant) -> bool {
    let url = format!("http://{addr}/register/{}", sh.settings.id);
    let mut failures = 0u32;
    loop {
        let token = match read_token(sh) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(lb = %addr, "deregistering without a token: {e}");
                None
            }
        };
        // At least one try, even with a zero drain period.
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = left.clamp(Duration::from_millis(500), Duration::from_secs(2));
        let req = with_token(sh.client.delete(&url), token).timeout(timeout);
        match req.send().await {
            Ok(r) if r.status().as_u16() == 204 || r.status().as_u16() == 404 => {
                tracing::info!(lb = %addr, status = r.status().as_u16(), "deregistered");
                return true;
            }
            Ok(r) => {
                let why = describe(r).await;
                tracing::warn!(lb = %addr, "DELETE {url}: {why}");
            }
            Err(e) => tracing::warn!(lb = %addr, "DELETE {url}: {}", root_cause(&e)),
        }
        failures += 1;
        let wait = DEREGISTER_BACKOFF.delay(failures);
        if Instant::now() + wait >= deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Resolve every entry; an entry that fails keeps what it resolved last.
/// Returns whether every entry resolved.
async fn resolve_all(entries: &[String], resolved: &mut HashMap<String, Vec<SocketAddr>>) -> bool {
    let lookups = entries.iter().map(|e| async move {
        let r = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(e.as_str())).await;
        (e, r)
    });
    let mut all = true;
    for (entry, r) in futures::future::join_all(lookups).await {
        match r {
            Ok(Ok(addrs)) => {
                let mut v: Vec<SocketAddr> = addrs.collect();
                v.sort();
                v.dedup();
                if v.is_empty() {
                    all = false;
                    tracing::warn!(lb = %entry, "resolves to no address");
                }
                resolved.insert(entry.clone(), v);
            }
            Ok(Err(e)) => {
                all = false;
                tracing::warn!(lb = %entry, error = %e, "cannot resolve");
            }
            Err(_) => {
                all = false;
                tracing::warn!(lb = %entry, "DNS timeout");
            }
        }
    }
    all
}

/// The announcer: runs until the drain starts, then deregisters from every
/// address and returns `(address, confirmed)` for each.
pub(crate) async fn run(sh: Arc<Shared>) -> Vec<(SocketAddr, bool)> {
    let interval = sh.settings.announce_interval;
    let mut resolved: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let mut tasks: HashMap<SocketAddr, AbortHandle> = HashMap::new();
    let mut set: JoinSet<(SocketAddr, bool)> = JoinSet::new();
    let mut failures = 0u32;
    loop {
        let all = resolve_all(&sh.settings.load_balancers, &mut resolved).await;
        let want: HashSet<SocketAddr> = resolved.values().flatten().copied().collect();
        tasks.retain(|addr, handle| {
            let keep = want.contains(addr);
            if !keep {
                tracing::info!(lb = %addr, "no longer resolved: stop announcing to it");
                handle.abort();
            }
            keep
        });
        for addr in want {
            if !tasks.contains_key(&addr) && !sh.drain.is_draining() {
                tracing::info!(lb = %addr, "announcing");
                tasks.insert(addr, set.spawn(lb_task(Arc::clone(&sh), addr)));
            }
        }
        // Reap the aborted ones; live tasks only end once draining.
        while set.try_join_next().is_some() {}
        failures = if all { 0 } else { failures + 1 };
        let delay = if all {
            jitter(interval, JITTER)
        } else {
            announce_backoff(interval).next(failures)
        };
        tokio::select! {
            biased;
            _ = sh.drain.draining() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    // Draining. Every task deregisters its address; an address that resolves
    // now but had no task (a replica that just appeared) gets a DELETE too.
    let deadline = sh.drain.deadline(sh.settings.drain_period);
    let mut fresh = resolved.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        resolve_all(&sh.settings.load_balancers, &mut fresh),
    )
    .await;
    for addr in fresh.values().flatten().copied() {
        if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(addr) {
            let sh = Arc::clone(&sh);
            slot.insert(set.spawn(async move { (addr, deregister(&sh, addr, deadline).await) }));
        }
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let i = Duration::from_secs(30);
        let b = announce_backoff(i);
        let steps: Vec<u128> = (1..=8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(steps, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(b.delay(1000), i, "no overflow");
        let steps: Vec<u128> = (1..=5)
            .map(|n| DEREGISTER_BACKOFF.delay(n).as_millis())
            .collect();
        assert_eq!(steps, [200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn lb_hints_are_honoured() {
        let i = Duration::from_secs(30);
        assert_eq!(next_after_success(i, None), i);
        assert_eq!(next_after_success(i, Some(24)), Duration::from_secs(24));
        assert_eq!(
            next_after_success(i, Some(60)),
            i,
            "never later than our interval"
        );
        assert_eq!(next_after_success(i, Some(0)), Duration::from_secs(1));
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 99999 "), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(
            request_timeout(Duration::from_secs(30)),
            Duration::from_secs(5)
        );
        assert_eq!(
            request_timeout(Duration::from_millis(200)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_missing_token_is_a_reported_problem_until_it_appears() {
        let dir = std::env::temp_dir().join(format!("roster-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let state = TokenState::default();
        assert_eq!(read_token_file(None), Ok(None), "no token configured");

        let missing = read_token_file(Some(&path));
        state.record(&missing);
        let why = state.problem().expect("reported");
        assert!(
            why.contains("registration token file") && why.contains("token"),
            "{why}"
        );

        std::fs::write(&path, "  \n").unwrap();
        state.record(&read_token_file(Some(&path)));
        assert!(state.problem().unwrap().contains("is empty"));

        std::fs::write(&path, "s3cret\n").unwrap();
        let found = read_token_file(Some(&path));
        assert_eq!(found, Ok(Some("s3cret".into())));
        state.record(&found);
        assert_eq!(state.problem(), None, "cleared once the Secret is mounted");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn resolving_keeps_the_last_answer_on_failure() {
        let mut r = HashMap::new();
        let entries = vec!["127.0.0.1:8080".to_string(), "[::1]:8081".to_string()];
        assert!(resolve_all(&entries, &mut r).await);
        assert_eq!(r["127.0.0.1:8080"], vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(r["[::1]:8081"], vec!["[::1]:8081".parse().unwrap()]);
        r.insert(
            "nonexistent.invalid:80".into(),
            vec!["10.9.9.9:80".parse().unwrap()],
        );
        let bad = vec!["nonexistent.invalid:80".to_string()];
        assert!(!resolve_all(&bad, &mut r).await);
        assert_eq!(r["nonexistent.invalid:80"].len(), 1, "kept");
    }
}
