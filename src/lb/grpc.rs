//! gRPC as the proxy sees it: a gRPC call answers HTTP 200 and reports
//! its outcome in `grpc-status`, in the response head (trailers-only) or
//! in the trailers. A backend that is down or overloaded says so with
//! UNAVAILABLE or RESOURCE_EXHAUSTED, which must count against it the way
//! a 503 does.

use std::time::Duration;

use http::HeaderMap;
use pingora::http::RequestHeader;

/// `grpc-status` UNAVAILABLE: the backend cannot serve now.
pub const UNAVAILABLE: u32 = 14;
/// `grpc-status` RESOURCE_EXHAUSTED: the backend sheds load.
pub const RESOURCE_EXHAUSTED: u32 = 8;

/// What a gRPC answer says about the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// OK, or an error about the call itself (NOT_FOUND, INVALID_ARGUMENT...).
    Served,
    /// UNAVAILABLE or RESOURCE_EXHAUSTED: counts like a 5xx toward ejection.
    Failed,
}

/// Whether the request is a gRPC call (`application/grpc`, `+proto` ...).
/// Every gRPC call is a POST (gRPC over HTTP/2, "Requests"), so other
/// methods skip the header lookup: most traffic is GET.
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.method == http::Method::POST
        && req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.strip_prefix("application/grpc")
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
            })
}

/// The `grpc-status` in `headers`, if any (head or trailers).
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The verdict for a `grpc-status`.
pub fn verdict(code: u32) -> Verdict {
    match code {
        UNAVAILABLE | RESOURCE_EXHAUSTED => Verdict::Failed,
        _ => Verdict::Served,
    }
}

/// The call's deadline from `grpc-timeout` (1-8 digits and a unit: H, M,
/// S, m, u, n), or None when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether a gRPC call may be replayed after it reached a backend: only
/// methods the config marks idempotent (`/pkg.Service/Method`).
pub fn replayable(path: &str, idempotent: &[String]) -> bool {
    idempotent.iter().any(|m| m == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: Option<&str>) -> RequestHeader {
        with_method("POST", ct)
    }

    fn with_method(method: &str, ct: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/pkg.Svc/Get", None).unwrap();
        if let Some(ct) = ct {
            r.insert_header("content-type", ct).unwrap();
        }
        r
    }

    #[test]
    fn grpc_requests_are_recognised() {
        assert!(is_grpc(&req(Some("application/grpc"))));
        assert!(is_grpc(&req(Some("application/grpc+proto"))));
        assert!(!is_grpc(&req(Some("application/grpc-web"))));
        assert!(!is_grpc(&req(Some("application/json"))));
        assert!(!is_grpc(&req(None)));
        assert!(
            !is_grpc(&with_method("GET", Some("application/grpc"))),
            "gRPC calls are POSTs"
        );
    }

    #[test]
    fn unavailable_and_exhausted_count_as_failures() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        for (code, want) in [
            ("0", Verdict::Served),
            ("5", Verdict::Served),
            ("13", Verdict::Served),
            ("14", Verdict::Failed),
            ("8", Verdict::Failed),
        ] {
            h.insert("grpc-status", code.parse().unwrap());
            assert_eq!(status(&h).map(verdict), Some(want), "grpc-status {code}");
        }
        h.insert("grpc-status", "junk".parse().unwrap());
        assert_eq!(status(&h), None);
    }

    #[test]
    fn grpc_timeout_parses_per_spec() {
        let mut h = HeaderMap::new();
        assert_eq!(timeout(&h), None);
        for (v, want) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("100u", Some(Duration::from_micros(100))),
            ("123456789S", None),
            ("S", None),
            ("5s", None),
            ("-5S", None),
        ] {
            h.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(timeout(&h), want, "{v}");
        }
    }

    #[test]
    fn only_listed_methods_replay() {
        let listed = vec!["/pkg.Svc/Get".to_string()];
        assert!(replayable("/pkg.Svc/Get", &listed));
        assert!(!replayable("/pkg.Svc/Put", &listed));
        assert!(!replayable("/pkg.Svc/Get", &[]));
    }
}
