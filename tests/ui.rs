//! The operator's page and the Grafana dashboard.
//!
//! - `GET /` on the control port serves the embedded page with its content
//!   type, a restrictive CSP, and its assets; `protect_reads` guards it too.
//! - `charts/roster/dashboards/roster.json` parses, every panel uses the
//!   `${datasource}` variable, and every metric its PromQL names is exported:
//!   `roster_lb_*` names against a live LB's `/telemetry` after traffic that
//!   makes every labelled family appear; agent vitals against a live
//!   `roster agent` when the binary has one, else against SPEC.md's list.
//!
//! IPs: 127.0.60.0/24.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{BIN, Backend, Lb, client, free_addr, wait_for};
use parking_lot::Mutex;
use serde_json::Value;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/roster/dashboards/roster.json"
);

/// The agent's vitals series as SPEC.md names them, for when this binary has
/// no `agent` subcommand to scrape.
const SPEC_AGENT_SERIES: &[&str] = &[
    "node_ready",
    "requests_in_progress",
    "cpu_usage_percent",
    "memory_usage_percent",
    "failed_responses_total",
    "gpu_usage_percent",
    "connected_peers",
    "backoff_requests",
    "uptime_seconds",
];

// ---- PromQL: which metric names does an expression read? -----------------

/// PromQL aggregation operators: followed by `by (..)`/`without (..)` or `(`.
const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords whose parenthesised argument is a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Metric names read by a PromQL expression (Grafana variables allowed):
/// string literals, label matchers `{..}`, ranges `[..]`, comments, numbers
/// and durations, function and aggregator names, keywords and the label
/// lists of `by`/`without`/`on`/`ignoring`/`group_*` are all skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Pass 1: blank out strings, comments, {..} and [..].
    let chars: Vec<char> = expr.chars().collect();
    let mut clean = String::with_capacity(chars.len());
    let (mut braces, mut brackets) = (0usize, 0usize);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && c != '`' {
                        i += 1;
                    }
                    i += 1;
                }
                clean.push(' ');
            }
            '#' if braces == 0 && brackets == 0 => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                clean.push(' ');
            }
            '{' => {
                braces += 1;
                clean.push(' ');
            }
            '}' => {
                braces = braces.saturating_sub(1);
                clean.push(' ');
            }
            '[' => {
                brackets += 1;
                clean.push(' ');
            }
            ']' => {
                brackets = brackets.saturating_sub(1);
                clean.push(' ');
            }
            _ if braces > 0 || brackets > 0 => clean.push(' '),
            _ => clean.push(c),
        }
        i += 1;
    }
    // Pass 2: words.
    let s: Vec<char> = clean.chars().collect();
    let next_non_space = |mut j: usize| {
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        (j, s.get(j).copied())
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (1e3, 0x1f, 5m, 1h30m).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c == '$' {
            // A Grafana variable outside matchers: $var.
            i += 1;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == ':') {
            i += 1;
        }
        let word: String = s[start..i].iter().collect();
        let (j, next) = next_non_space(i);
        if LABEL_LISTS.contains(&word.as_str()) {
            if next == Some('(') {
                let mut depth = 0;
                i = j;
                while i < s.len() {
                    match s[i] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            continue;
        }
        let lower = word.to_ascii_lowercase();
        if next == Some('(')
            || AGGREGATORS.contains(&word.as_str())
            || KEYWORDS.contains(&lower.as_str())
        {
            continue;
        }
        names.insert(word);
    }
    names
}

/// Every PromQL expression in a dashboard: panel targets at any depth, and
/// the selector of `label_values(..)` template queries.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match (k.as_str(), val) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("query" | "definition", Value::String(q))
                        if q.starts_with("label_values(") =>
                    {
                        let inner = &q["label_values(".len()..q.len() - 1];
                        let selector = inner.rsplit_once(',').map_or(inner, |(sel, _)| sel);
                        out.push(selector.to_string());
                    }
                    _ => dashboard_queries(val, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// Every `datasource` object in a dashboard.
fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                if k == "datasource" {
                    out.push(val);
                } else {
                    datasources(val, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| datasources(x, out)),
        _ => {}
    }
}

/// What a Prometheus text scrape exports: family name -> type, plus the
/// names of the samples themselves (`_bucket`, `_sum`, `_count` included).
#[derive(Default, Debug)]
struct Exported {
    families: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exported {
    fn parse(text: &str) -> Self {
        let mut e = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    e.families.insert(n.into(), t.into());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                e.samples.insert(line[..end].to_string());
            }
        }
        e
    }

    fn has(&self, name: &str) -> bool {
        if self.samples.contains(name) || self.families.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| {
                matches!(
                    self.families.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
            })
        })
    }
}

#[test]
fn promql_names_are_extracted() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (le) (rate(roster_lb_request_duration_seconds_bucket{instance=~"$lb"}[$__rate_interval])))"#,
            &["roster_lb_request_duration_seconds_bucket"],
        ),
        (
            r#"count(count_values("digest", roster_lb_routable_digest{x="a{b}[c]"}))"#,
            &["roster_lb_routable_digest"],
        ),
        (
            "sum without (instance) (a_total) / on (job) group_left (x) b offset 5m and bool c",
            &["a_total", "b", "c"],
        ),
        (
            r#"count(node_ready{job=~"$agent_job"} == 0) or vector(0)"#,
            &["node_ready"],
        ),
        (
            "1e3 * foo @ start() + max_over_time(bar[5m:30s]) # a comment naming baz",
            &["foo", "bar"],
        ),
        (
            r#"topk(15, sum by (backend) (rate(x_total{code_class=~"5xx|error"}[1m])) / sum by(backend)(rate(x_total[1m])))"#,
            &["x_total"],
        ),
        (
            r#"label_replace(up, "dst", "$1", "instance", "(.*):.*") unless sum(Inf)"#,
            &["up"],
        ),
    ];
    for (expr, want) in cases {
        let got = metric_names(expr);
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{expr}");
    }
}

// ---- the page ---------------------------------------------------------------

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn page_is_served_with_csp_and_assets() {
    let lb = Lb::start("127.0.60.1", &[]).await;
    let c = client();
    let r = c.get(lb.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    let csp = header(&r, "content-security-policy").to_string();
    assert_eq!(csp, roster::lb::ui::CONTENT_SECURITY_POLICY);
    let directives: BTreeMap<&str, &str> = csp
        .split(';')
        .filter_map(|d| d.trim().split_once(' '))
        .collect();
    assert_eq!(directives["default-src"], "'none'");
    assert_eq!(directives["script-src"], "'self'");
    assert_eq!(directives["style-src"], "'self'");
    assert_eq!(directives["connect-src"], "'self'");
    assert_eq!(directives["frame-ancestors"], "'none'");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    let body = r.text().await.unwrap();
    assert!(body.starts_with("<!doctype html>"));
    assert!(body.contains(r#"<script src="/ui/app.js" defer></script>"#));

    for (path, ct, needle) in [
        ("/ui/app.js", "text/javascript; charset=utf-8", "/registry"),
        ("/ui/app.css", "text/css; charset=utf-8", "--healthy"),
    ] {
        let r = c.get(lb.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), ct, "{path}");
        assert_eq!(header(&r, "content-security-policy"), csp, "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    // HEAD works, and the page changes nothing: POST / is not a route.
    let r = c.head(lb.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(lb.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn protect_reads_guards_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-ui-token\n").unwrap();
    let tp = token.to_str().unwrap();
    let lb = Lb::start("127.0.60.2", &["--token-file", tp, "--protect-reads"]).await;
    let c = client();
    for path in ["/", "/ui/app.js", "/ui/app.css"] {
        let r = c.get(lb.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let r = c
            .get(lb.url(path))
            .bearer_auth("s3cret-ui-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
}

// ---- the dashboard ------------------------------------------------------------

fn load_dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    serde_json::from_str(&text).expect("dashboard is valid JSON")
}

#[test]
fn dashboard_is_well_formed() {
    let d = load_dashboard();
    assert_eq!(d["uid"], "roster-lb");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    // Every panel and target reads through the variable.
    let mut all = Vec::new();
    datasources(&d, &mut all);
    assert!(all.len() > 20);
    for v in all {
        assert_eq!(v["uid"], "${datasource}", "{v}");
    }
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut with_targets = 0;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() + g["x"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] != "row" {
            let t = p["targets"].as_array().expect("targets");
            assert!(!t.is_empty());
            with_targets += 1;
        }
    }
    assert!(with_targets >= 20, "{with_targets} panels");
    // The panels the issue asks for.
    let text = d.to_string();
    for needle in [
        "roster_lb_backends",
        "roster_lb_requests_total",
        "histogram_quantile",
        "roster_lb_health_checks_total",
        "roster_lb_ejections_total",
        "roster_lb_registrations_total",
        "roster_lb_panic",
        "cpu_usage_percent",
        "memory_usage_percent",
        "requests_in_progress",
        "node_ready",
    ] {
        assert!(text.contains(needle), "dashboard lacks {needle}");
    }
}

/// Traffic that makes every labelled `roster_lb_*` family appear: proxied
/// requests, checks, a registration, a deletion and an ejection.
async fn exercised_lb() -> (Lb, Vec<Backend>) {
    let ip = "127.0.60.3";
    let lb = Lb::start(ip, &["--eject-after", "1", "--ejection-time", "30s"]).await;
    let good = Backend::start("ui-good", ip).await;
    let dead = Backend::start("ui-dead-app", ip).await;
    let gone = Backend::start("ui-gone", ip).await;
    for b in [&good, &dead, &gone] {
        assert_eq!(lb.register(&b.id, b.addr(), b.metrics_port()).await, 201);
    }
    lb.wait_backends(
        &[good.addr(), dead.addr(), gone.addr()],
        Duration::from_secs(10),
    )
    .await;
    let c = client();
    let r = c.delete(lb.url("/register/ui-gone")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    // The app dies, its vitals stay ready: live traffic ejects it.
    dead.app.kill();
    wait_for(Duration::from_secs(15), "an ejection", || async {
        let _ = c.get(lb.proxy_url("/")).send().await;
        let text = c
            .get(lb.url("/telemetry"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains("roster_lb_ejections_total{")
    })
    .await;
    for _ in 0..5 {
        let _ = c.get(lb.proxy_url("/")).send().await;
    }
    (lb, vec![good, dead, gone])
}

/// A live `roster agent`'s `/telemetry`, or `None` when the binary has no
/// agent subcommand.
async fn agent_scrape(lb: &Lb, app: std::net::SocketAddr) -> Option<String> {
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("roster --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let has_agent = help
        .lines()
        .any(|l| l.trim_start().starts_with("agent ") || l.trim() == "agent");
    if !has_agent {
        return None;
    }
    let vitals = free_addr("127.0.60.4");
    let port = vitals.port().to_string();
    let ctl = lb.control.to_string();
    let addr = app.to_string();
    let _agent = common::Proc::spawn(
        "agent",
        &[
            "agent",
            "--discovery-lb",
            &ctl,
            "--metrics-port",
            &port,
            "--id",
            "ui-agent",
            "--address",
            &addr,
        ],
        &[("ROSTER_METRICS_LISTEN", "127.0.60.4")],
    );
    let c = client();
    let url = format!("http://127.0.60.4:{port}/telemetry");
    let text = Arc::new(Mutex::new(String::new()));
    wait_for(Duration::from_secs(15), "agent /telemetry", || async {
        match c.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                let t = r.text().await.unwrap_or_default();
                let ok = t.contains("node_ready");
                *text.lock() = t;
                ok
            }
            _ => false,
        }
    })
    .await;
    let t = text.lock().clone();
    Some(t)
}

#[tokio::test]
async fn dashboard_names_only_exported_series() {
    let d = load_dashboard();
    let mut queries = Vec::new();
    dashboard_queries(&d, &mut queries);
    assert!(queries.len() > 30, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "no metric in {q:?}");
        used.extend(names);
    }

    let (lb, backends) = exercised_lb().await;
    let lb_text = client()
        .get(lb.url("/telemetry"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lb_exported = Exported::parse(&lb_text);
    let agent = agent_scrape(&lb, backends[0].addr())
        .await
        .map(|t| Exported::parse(&t));
    if agent.is_none() {
        eprintln!(
            "note: this roster has no `agent` subcommand yet; agent series checked against SPEC.md's list"
        );
    }

    let mut missing = Vec::new();
    for name in &used {
        let ok = if name.starts_with("roster_lb_") {
            lb_exported.has(name)
        } else {
            match &agent {
                Some(a) => a.has(name),
                None => SPEC_AGENT_SERIES.contains(&name.as_str()),
            }
        };
        if !ok {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard names series roster does not export: {missing:?}\nLB exports: {:?}",
        lb_exported.families.keys().collect::<Vec<_>>()
    );
    // And the dashboard covers every LB family.
    let unused: Vec<_> = lb_exported
        .families
        .keys()
        .filter(|f| !used.iter().any(|u| u.starts_with(f.as_str())))
        .collect();
    assert!(
        unused.is_empty(),
        "LB families not on the dashboard: {unused:?}"
    );
}
