//! Outgoing HTTP: every client roster builds has the same bounds, and
//! "GET, check the status, read a bounded body, parse JSON" is written once.

use std::time::Duration;

use serde::de::DeserializeOwned;

/// What differs between roster's clients.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The whole request; None where each call brings its own.
    pub timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// Idle connections kept per host (0: a fresh connection each time).
    pub idle_per_host: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    pub user_agent: &'static str,
}

impl Bounds {
    /// `timeout` for the request and for its connect; connections pooled.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            connect_timeout: timeout,
            idle_per_host: usize::MAX,
            idle_timeout: Duration::from_secs(90),
            user_agent: concat!("roster/", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A client within `bounds`. Proxies are never used (roster talks to pods
/// and to itself; an `HTTP_PROXY` meant for the app must not capture it),
/// and redirects are not followed (roster's peers do not send them).
pub fn client(bounds: Bounds) -> Result<reqwest::Client, FetchError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(bounds.connect_timeout)
        .pool_max_idle_per_host(bounds.idle_per_host)
        .pool_idle_timeout(bounds.idle_timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(bounds.user_agent);
    if let Some(t) = bounds.timeout {
        builder = builder.timeout(t);
    }
    builder.build().map_err(FetchError::Client)
}

/// Why a GET gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP client: {}", root_cause(.0))]
    Client(#[source] reqwest::Error),
    #[error("GET {url}: {}", root_cause(.source))]
    Send {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// `detail` is the start of the body, or the `{"error": ...}` in it.
    #[error("GET {url}: status {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        url: String,
        status: reqwest::StatusCode,
        detail: String,
    },
    #[error("GET {url}: reading body: {}", root_cause(.source))]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("GET {url}: invalid JSON: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("GET {url}: timeout after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// GET `url` and parse its JSON, all within `timeout`; a body over `limit`
/// bytes is refused rather than buffered.
pub async fn get_json<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
    timeout: Duration,
) -> Result<T, FetchError> {
    let body = get_bytes(client, url, limit, timeout).await?;
    serde_json::from_slice(&body).map_err(|source| FetchError::Json {
        url: url.to_string(),
        source,
    })
}

/// GET `url`: the body of a 2xx answer, at most `limit` bytes, within `timeout`.
pub async fn get_bytes(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let fetch = async {
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|source| FetchError::Send {
                url: url.to_string(),
                source,
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
                detail: detail(resp).await,
            });
        }
        match read_up_to(resp, limit).await {
            Ok((body, false)) => Ok(body),
            Ok((_, true)) => Err(FetchError::TooLarge {
                url: url.to_string(),
                limit,
            }),
            Err(source) => Err(FetchError::Body {
                url: url.to_string(),
                source,
            }),
        }
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| FetchError::Timeout {
            url: url.to_string(),
            timeout,
        })?
}

/// At most `limit` bytes of the body, and whether there was more: a broken
/// peer cannot make roster buffer without bound.
pub async fn read_up_to(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Largest refusal read for its reason.
const MAX_REFUSAL_BYTES: usize = 64 * 1024;

/// A refusal's reason: its `{"error": ...}`, else its first 200 characters.
pub async fn detail(resp: reqwest::Response) -> String {
    let (body, _) = read_up_to(resp, MAX_REFUSAL_BYTES)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let msg = serde_json::from_str::<crate::protocol::ErrorBody>(&text)
        .map_or_else(|_| text.into_owned(), |e| e.error);
    msg.chars().take(200).collect::<String>().trim().to_string()
}

/// reqwest's Display hides the cause ("error sending request").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn serve() -> String {
        let app = axum::Router::new()
            .route("/ok", get(|| async { r#"{"n": 1}"# }))
            .route("/big", get(|| async { "x".repeat(2000) }))
            .route(
                "/refused",
                get(|| async {
                    (
                        axum::http::StatusCode::FORBIDDEN,
                        r#"{"error": "address: no"}"#,
                    )
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn bounded_json_get() {
        let base = serve().await;
        let c = client(Bounds::timeout(Duration::from_secs(2))).unwrap();
        let t = Duration::from_millis(300);
        let get = |path: &str| {
            let (c, url) = (&c, format!("{base}{path}"));
            async move { get_json::<serde_json::Value>(c, &url, 1000, t).await }
        };
        assert_eq!(get("/ok").await.unwrap()["n"], 1);
        assert!(matches!(
            get("/big").await,
            Err(FetchError::TooLarge { limit: 1000, .. })
        ));
        let e = get("/refused").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("GET {base}/refused: status 403 Forbidden: address: no")
        );
        assert!(matches!(
            get("/slow").await,
            Err(FetchError::Timeout { .. })
        ));
    }
}
