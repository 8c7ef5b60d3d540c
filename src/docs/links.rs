//! Every relative link in the Markdown pages (README, docs/, the chart's
//! README, CONTRIBUTING, BENCHMARKS) names a file that exists and, with a
//! `#fragment`, a heading of that file: moving a section cannot leave a
//! dead link behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::slug;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The pages checked.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "BENCHMARKS.md"]
        .iter()
        .chain(&["charts/roster/README.md"])
        .map(|p| root().join(p))
        .collect();
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/");
    let mut md: Vec<PathBuf> = docs
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    md.sort();
    pages.extend(md);
    pages.retain(|p| p.exists());
    pages
}

/// Lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push(line);
        }
    }
    lines
}

/// The anchors GitHub gives a page's headings (`-1`, `-2` for repeats),
/// plus explicit `<a id="...">`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text) {
        if let Some(h) = line.strip_prefix('#') {
            let title = strip_links(h.trim_start_matches('#').trim());
            let base = slug(&title);
            let mut anchor = base.clone();
            let mut n = 0;
            while seen.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            seen.insert(anchor);
        }
        for part in line.split("<a id=\"").skip(1) {
            if let Some(id) = part.split('"').next() {
                seen.insert(id.to_string());
            }
        }
    }
    seen
}

/// `[text](url)` -> `text`.
fn strip_links(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("](") {
        let Some(end) = rest[i..].find(')') else {
            break;
        };
        out.push_str(&rest[..i].replacen('[', "", 1));
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Relative link targets of a page: `docs/agent.md#drain`, `#limits`.
fn targets(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(text) {
        for part in line.split("](").skip(1) {
            let Some(target) = part.split(')').next() else {
                continue;
            };
            let target = target.split_whitespace().next().unwrap_or_default();
            if !target.contains("://") && !target.starts_with("mailto:") && !target.is_empty() {
                found.push(target.to_string());
            }
        }
    }
    found
}

#[test]
fn relative_links_resolve() {
    let mut dead = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let dir = page.parent().unwrap_or(root());
        for target in targets(&text) {
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let shown = page.strip_prefix(root()).unwrap_or(&page).display();
            if !path.exists() {
                dead.push(format!("{shown}: {target} (no such file)"));
                continue;
            }
            let Some(fragment) = fragment.filter(|_| path.extension().is_some_and(|x| x == "md"))
            else {
                continue;
            };
            let linked = std::fs::read_to_string(&path).unwrap_or_default();
            if !anchors(&linked).contains(fragment) {
                dead.push(format!("{shown}: {target} (no such heading)"));
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
}

#[test]
fn anchors_follow_github() {
    let a = anchors("# A\n## Try it: `roster demo`\n## A\n```\n# not a heading\n```\n");
    let want: BTreeSet<String> = ["a", "try-it-roster-demo", "a-1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(a, want);
    assert_eq!(strip_links("See [the page](x.md) now"), "See the page now");
}
