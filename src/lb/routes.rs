//! Routing: which service a request goes to, by Host and path prefix.
//!
//! The table is built once per (re)load; a lookup is a hash lookup per
//! host level (exact, each wildcard suffix, any) and per first path
//! segment, so its cost does not grow with the number of routes or
//! services. The most specific match wins: exact host over wildcard over
//! none, then the longest prefix; no match goes to `lb.default_service`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{ConfigError, RouteConfig};

/// A compiled route set.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Rules>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Rules>,
    any: Rules,
    default: Option<Arc<str>>,
    /// As configured, for `GET /routes`.
    source: Vec<RouteConfig>,
}

/// The path rules of one host level.
#[derive(Debug, Default)]
struct Rules {
    /// By first path segment, each list longest prefix first.
    by_segment: HashMap<String, Vec<Rule>>,
    /// Rules without a prefix (or `/`): match every path.
    all: Option<Arc<str>>,
}

#[derive(Debug)]
struct Rule {
    /// Normalized: no trailing '/'.
    prefix: String,
    service: Arc<str>,
}

/// `GET /routes`.
#[derive(Debug, Serialize)]
pub struct RoutesView<'a> {
    pub routes: &'a [RouteConfig],
    pub default_service: Option<&'a str>,
}

impl RouteTable {
    /// Compile validated routes; two routes with the same host and prefix
    /// are refused (which one should win?), naming both.
    pub fn build(routes: &[RouteConfig], default_service: &str) -> Result<Self, ConfigError> {
        let mut t = Self {
            default: (!default_service.is_empty()).then(|| Arc::from(default_service)),
            source: routes.to_vec(),
            ..Self::default()
        };
        let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            r.validate(i)?;
            let host = r.host.as_deref().map(str::to_ascii_lowercase);
            let prefix = normalize(r.path_prefix.as_deref());
            if let Some(j) = seen.insert((host.clone(), prefix.clone()), i) {
                return Err(ConfigError::Route {
                    route: r.label(i),
                    message: format!("same host and path_prefix as {}", routes[j].label(j)),
                });
            }
            let rules = match host {
                None => &mut t.any,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => t.wildcard.entry(suffix.to_string()).or_default(),
                    None => t.exact.entry(h).or_default(),
                },
            };
            rules.add(prefix, Arc::from(r.service.as_str()));
        }
        Ok(t)
    }

    /// The service for a request to `host` (without port, any case) and
    /// `path`; None when nothing matches and there is no default service.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Option<&Arc<str>> {
        self.resolve_host(host, path)
            .or_else(|| self.any.find(path))
            .or(self.default.as_ref())
    }

    /// Whether any route names a host; when none does, callers need not
    /// work out the request's host at all (the common one-service setup).
    pub fn by_host(&self) -> bool {
        !(self.exact.is_empty() && self.wildcard.is_empty())
    }

    fn resolve_host(&self, host: Option<&str>, path: &str) -> Option<&Arc<str>> {
        if !self.by_host() {
            return None;
        }
        let host = host?;
        // Hosts are nearly always lowercase already: allocate only if not.
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(s) = self.exact.get(host).and_then(|r| r.find(path)) {
            return Some(s);
        }
        // Longest suffix first: `*.b.example.com` before `*.example.com`.
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(s) = self.wildcard.get(suffix).and_then(|r| r.find(path)) {
                return Some(s);
            }
            rest = suffix;
        }
        None
    }

    pub fn view(&self) -> RoutesView<'_> {
        RoutesView {
            routes: &self.source,
            default_service: self.default.as_deref(),
        }
    }

    /// Every service a route names.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.source.iter().map(|r| r.service.as_str())
    }
}

impl Rules {
    fn add(&mut self, prefix: String, service: Arc<str>) {
        let Some(first) = first_segment(&prefix) else {
            self.all.get_or_insert(service);
            return;
        };
        let list = match self.by_segment.entry(first.to_string()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(Vec::new()),
        };
        list.push(Rule { prefix, service });
        list.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    }

    fn find(&self, path: &str) -> Option<&Arc<str>> {
        if self.by_segment.is_empty() {
            return self.all.as_ref();
        }
        let from_segment = first_segment(path)
            .and_then(|seg| self.by_segment.get(seg))
            .and_then(|rules| rules.iter().find(|r| on_boundary(path, &r.prefix)))
            .map(|r| &r.service);
        from_segment.or(self.all.as_ref())
    }
}

/// `/api/` and `/api` are the same prefix; `/` and none match everything.
fn normalize(prefix: Option<&str>) -> String {
    prefix.unwrap_or("").trim_end_matches('/').to_string()
}

/// The first segment of a path (`""` for `/` and `//x`); None when it does
/// not start with '/' (an empty prefix, `*`). An empty segment is a key
/// like any other: a `//x` prefix matches under it, not every path.
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// `prefix` matches `path` on a segment boundary.
fn on_boundary(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The Host (or `:authority`) without its port.
pub fn host_of(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: Option<&str>, prefix: Option<&str>, service: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            host: host.map(String::from),
            path_prefix: prefix.map(String::from),
            service: service.into(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::build(
            &[
                r(Some("api.example.com"), None, "api"),
                r(Some("api.example.com"), Some("/admin"), "admin"),
                r(Some("*.example.com"), None, "wild"),
                r(Some("*.b.example.com"), None, "deeper"),
                r(Some("*.example.com"), Some("/static/img"), "img"),
                r(None, Some("/static"), "static"),
                r(None, Some("/static/js/"), "js"),
            ],
            "default",
        )
        .unwrap()
    }

    #[test]
    fn most_specific_match_wins() {
        let t = table();
        let cases = [
            (Some("api.example.com"), "/", "api"),
            (Some("API.Example.com"), "/x", "api"),
            (Some("api.example.com"), "/admin/users", "admin"),
            (Some("api.example.com"), "/administer", "api"),
            (Some("www.example.com"), "/", "wild"),
            (Some("a.b.example.com"), "/", "deeper"),
            (Some("x.y.example.com"), "/", "wild"),
            (Some("www.example.com"), "/static/img/a.png", "img"),
            (Some("example.com"), "/", "default"),
            (Some("other.org"), "/static", "static"),
            (Some("other.org"), "/static/js/app.js", "js"),
            (Some("other.org"), "/statics", "default"),
            (None, "/static/x", "static"),
            (None, "/", "default"),
        ];
        for (host, path, want) in cases {
            assert_eq!(
                t.resolve(host, path).map(|s| &**s),
                Some(want),
                "{host:?} {path}"
            );
        }
    }

    #[test]
    fn no_default_means_no_route() {
        let t = RouteTable::build(&[r(None, Some("/api"), "api")], "").unwrap();
        assert_eq!(t.resolve(None, "/api/x").map(|s| &**s), Some("api"));
        assert!(t.resolve(Some("h"), "/other").is_none());
    }

    #[test]
    fn the_host_is_needed_only_when_a_route_names_one() {
        assert!(table().by_host());
        let paths = RouteTable::build(&[r(None, Some("/api"), "api")], "web").unwrap();
        assert!(!paths.by_host(), "path rules alone");
        assert_eq!(paths.resolve(None, "/api/x").map(|s| &**s), Some("api"));
        let none = RouteTable::build(&[], "web").unwrap();
        assert!(!none.by_host());
        assert_eq!(none.resolve(None, "/anything").map(|s| &**s), Some("web"));
        let catch_all = RouteTable::build(&[r(None, None, "all")], "web").unwrap();
        assert_eq!(catch_all.resolve(None, "/x/y").map(|s| &**s), Some("all"));
    }

    #[test]
    fn duplicates_and_bad_routes_are_refused_by_name() {
        let e = RouteTable::build(
            &[
                r(Some("a.com"), Some("/x/"), "s"),
                r(Some("A.com"), Some("/x"), "t"),
            ],
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("routes[1]") && e.contains("routes[0]"), "{e}");
        let e = RouteTable::build(&[r(None, Some("x"), "s")], "d").unwrap_err();
        assert!(e.to_string().contains("routes[0]"), "{e}");
    }

    #[test]
    fn a_prefix_with_an_empty_segment_matches_only_its_paths() {
        // Fuzzing (fuzz/corpus/routes/slashes): `//x` was filed as "every path".
        let t = RouteTable::build(
            &[
                r(None, Some("//x"), "dbl"),
                r(None, Some("/a"), "a"),
                r(None, Some("/"), "root"),
            ],
            "",
        )
        .unwrap();
        for (path, want) in [
            ("//x", "dbl"),
            ("//x/y", "dbl"),
            ("//y", "root"),
            ("/", "root"),
            ("/a/b", "a"),
            ("/x", "root"),
        ] {
            assert_eq!(t.resolve(None, path).map(|s| &**s), Some(want), "{path}");
        }
    }

    #[test]
    fn host_strips_the_port() {
        assert_eq!(host_of("a.com:8000"), "a.com");
        assert_eq!(host_of("a.com"), "a.com");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
