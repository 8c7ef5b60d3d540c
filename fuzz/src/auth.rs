//! Who may register: the bearer token (against `registration.token_file`)
//! and, with `kubernetes_auth`, the TokenReview and Pod answers of the
//! Kubernetes API ([`Auth::authorize_write`], [`Auth::authorize_any`]),
//! through kube's client and a fake API answering the fuzzed bytes.
//!
//! Input, sections split by a line `%%`: the `Authorization` header value,
//! the token file (empty = none), the TokenReview answer and the Pod
//! answer (each `STATUS` on its first line, then the body; an empty
//! TokenReview section turns `kubernetes_auth` off), the registering IP.

use std::convert::Infallible;
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Request, Response, header};
use kube::client::Body;
use roster::config::RegistrationConfig;
use roster::lb::auth::{Auth, KubeAuth};
use serde_json::Value;

use crate::util;

/// One canned answer of the fake API.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn parse(section: &[u8]) -> Self {
        let (first, body) = match section.iter().position(|&b| b == b'\n') {
            Some(i) => (&section[..i], &section[i + 1..]),
            None => (section, &[][..]),
        };
        let status = std::str::from_utf8(first)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            // A real connection never ends on a 1xx.
            .filter(|s| (200..600).contains(s))
            .unwrap_or(200);
        Self {
            status,
            body: body.to_vec(),
        }
    }

    /// The body, when kube's client takes the answer for a success (not
    /// a 4xx or 5xx).
    fn json(&self) -> Option<Value> {
        (self.status < 400)
            .then(|| serde_json::from_slice(&self.body).ok())
            .flatten()
    }
}

pub fn run(data: &[u8]) {
    let s = util::sections(data, 5);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(s[0]) {
        headers.insert(header::AUTHORIZATION, v);
    }
    let dir = util::scratch();
    let mut cfg = RegistrationConfig::default();
    if !s[1].is_empty() {
        let path = dir.path().join("token");
        std::fs::write(&path, s[1]).expect("a scratch file");
        cfg.token_file = Some(path);
    }
    let Ok(auth) = Auth::new(&cfg) else {
        // An empty token file is a startup error.
        assert!(s[1].trim_ascii().is_empty());
        return;
    };
    let (review, pod) = (Answer::parse(s[2]), Answer::parse(s[3]));
    let kube = !s[2].is_empty();
    let ip: IpAddr = std::str::from_utf8(s[4])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(IpAddr::from([10, 0, 0, 7]));
    let (write, any) = util::block_on(async {
        // kube's client spawns its worker: inside the runtime.
        let auth = if kube {
            let client = fake_api(review.clone(), pod.clone());
            auth.with_kube(KubeAuth::with_client(cfg.token_audience.clone(), client))
        } else {
            auth
        };
        (
            auth.authorize_write(&headers, ip).await,
            auth.authorize_any(&headers).await,
        )
    });
    if cfg.token_file.is_none() && !kube {
        assert!(write.is_ok() && any.is_ok(), "auth is off");
        return;
    }
    let presented = bearer(&headers);
    let token_ok = presented.is_some() && presented == Some(s[1].trim_ascii());
    if write.is_ok() {
        assert!(
            token_ok || vouches(&review, &pod, &cfg.token_audience, Some(ip)),
            "write allowed: {write:?}"
        );
    }
    if any.is_ok() {
        assert!(
            token_ok || vouches(&review, &pod, &cfg.token_audience, None),
            "read allowed: {any:?}"
        );
    }
}

/// The presented token, as RFC 6750 spells the header (either case of
/// `Bearer`, surrounding blanks ignored).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let rest = v
        .strip_prefix(b"Bearer ")
        .or_else(|| v.strip_prefix(b"bearer "))?;
    Some(rest.trim_ascii())
}

/// Whether the fake API's answers vouch for the caller: the token
/// authenticated for the audience and, for a write, `ip` is the pod's.
fn vouches(review: &Answer, pod: &Answer, audience: &str, ip: Option<IpAddr>) -> bool {
    let Some(review) = review.json() else {
        return false;
    };
    let status = &review["status"];
    let audiences = status["audiences"].as_array().into_iter().flatten();
    if status["authenticated"] != Value::Bool(true) || !audiences.into_iter().any(|a| a == audience)
    {
        return false;
    }
    let Some(pod) = pod.json() else {
        return false;
    };
    let Some(ip) = ip else {
        return true;
    };
    let status = &pod["status"];
    let listed = status["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["ip"])
        .chain([&status["podIP"]]);
    listed
        .filter_map(Value::as_str)
        .any(|s| s.parse::<IpAddr>().is_ok_and(|p| p == ip))
}

/// A Kubernetes API that answers every TokenReview with `review` and
/// every Pod read with `pod`.
fn fake_api(review: Answer, pod: Answer) -> kube::Client {
    let svc = tower::service_fn(move |req: Request<Body>| {
        let path = req.uri().path();
        let answer = if path.ends_with("/tokenreviews") {
            review.clone()
        } else if path.contains("/pods/") {
            pod.clone()
        } else {
            Answer {
                status: 404,
                body: Vec::new(),
            }
        };
        async move {
            let resp = Response::builder()
                .status(answer.status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(answer.body))
                .expect("a response");
            Ok::<_, Infallible>(resp)
        }
    });
    kube::Client::new(svc, "default")
}
