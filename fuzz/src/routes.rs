//! The route table: built from fuzzed rules ([`RouteTable::build`]), then
//! asked for fuzzed requests as the proxy asks it (the request target as
//! a URI, the Host header through [`host_of`]); every answer is checked
//! against a plain reading of the documented rules.
//!
//! Input, one item a line: the default service (may be empty); rules
//! `HOST PATH_PREFIX SERVICE` (`-` = absent) up to a line `%%`; then
//! requests `HOST_HEADER REQUEST_TARGET` (`-` = no Host header).

use roster::config::RouteConfig;
use roster::lb::routes::{RouteTable, host_of};

const MAX_RULES: usize = 64;
const MAX_REQUESTS: usize = 64;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let default = lines.next().unwrap_or("");
    let mut rules = Vec::new();
    for line in lines.by_ref() {
        if line == "%%" {
            break;
        }
        if rules.len() < MAX_RULES {
            rules.push(rule(line));
        }
    }
    let Ok(table) = RouteTable::build(&rules, default) else {
        return;
    };
    for line in lines.take(MAX_REQUESTS) {
        let (header, target) = line.split_once(' ').unwrap_or((line, "/"));
        // What pingora hands the proxy: the request target, parsed.
        let Ok(uri) = target.parse::<http::Uri>() else {
            continue;
        };
        let header = (header != "-").then_some(header);
        let host = if table.by_host() {
            uri.host().or_else(|| header.map(host_of))
        } else {
            None
        };
        let got = table.resolve(host, uri.path()).map(|s| &**s);
        let want = expected(&rules, default, host, uri.path());
        assert_eq!(
            got,
            want,
            "host {host:?} path {:?} with rules {rules:?}",
            uri.path()
        );
    }
}

fn rule(line: &str) -> RouteConfig {
    let mut f = line.splitn(3, ' ');
    let mut field = || f.next().filter(|s| *s != "-").map(String::from);
    let (host, path_prefix) = (field(), field());
    RouteConfig {
        name: None,
        host,
        path_prefix,
        service: field().unwrap_or_default(),
    }
}

/// The rules of docs/services-and-routing.md, read plainly: a rule whose
/// host and path prefix match; the most specific host wins (exact, then the
/// longest wildcard suffix, then none), then the longest prefix; else the
/// default.
fn expected<'a>(
    rules: &'a [RouteConfig],
    default: &'a str,
    host: Option<&str>,
    path: &str,
) -> Option<&'a str> {
    let host = host.map(str::to_ascii_lowercase);
    let by_host = rules.iter().any(|r| r.host.is_some());
    rules
        .iter()
        .filter_map(|r| {
            let level = host_level(r.host.as_deref(), host.as_deref().filter(|_| by_host))?;
            let prefix = r.path_prefix.as_deref().unwrap_or("").trim_end_matches('/');
            let rest = path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
                .then_some(((level, std::cmp::Reverse(prefix.len())), r.service.as_str()))
        })
        .min()
        .map(|(_, service)| service)
        .or((!default.is_empty()).then_some(default))
}

/// How specific a rule's host is for a request's: 0 exact, then wildcards
/// by suffix length (longer first), then the any-host rules; None when it
/// does not match.
fn host_level(rule: Option<&str>, host: Option<&str>) -> Option<(u8, std::cmp::Reverse<usize>)> {
    let Some(rule) = rule.map(str::to_ascii_lowercase) else {
        return Some((2, std::cmp::Reverse(0)));
    };
    let host = host?;
    match rule.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|h| h.ends_with('.'))
            .then_some((1, std::cmp::Reverse(suffix.len()))),
        None => (host == rule).then_some((0, std::cmp::Reverse(0))),
    }
}
