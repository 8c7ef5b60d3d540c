//! `roster status --lb HOST:PORT`: the LB's `/registry` as a readable table,
//! what an operator runs after `kubectl port-forward`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::label::Label;
use crate::protocol::{EntryView, RegistryView};

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// LB control address (`host:port`).
    #[arg(long, env = "ROSTER_LB", default_value = "127.0.0.1:8080")]
    pub lb: String,
    /// Only this service's entries, with its digest and panic state.
    #[arg(long)]
    pub service: Option<String>,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Largest registry read: ~1 KB an entry, 10,000 entries with room to spare.
const MAX_REGISTRY_BYTES: usize = 64 << 20;

/// Fetch and print.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = match &args.service {
        Some(s) => format!("http://{}/registry?service={s}", args.lb),
        None => format!("http://{}/registry", args.lb),
    };
    let timeout = Duration::from_secs(5);
    let client = crate::fetch::client(crate::fetch::Bounds::timeout(timeout))?;
    let body = crate::fetch::get_bytes(&client, &url, MAX_REGISTRY_BYTES, timeout).await?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let view: RegistryView =
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: unexpected answer"))?;
    print!("{}", table(&view));
    Ok(())
}

/// Render the table (pure, for tests).
pub fn table(view: &RegistryView) -> String {
    let header = [
        "ID",
        "SERVICE",
        "ADDRESS",
        "STATE",
        "LAST CHECK",
        "LEASE",
        "READY",
        "CPU%",
        "MEM%",
        "IN-FLIGHT",
        "ERROR",
    ];
    let rows: Vec<[String; 11]> = view.backends.iter().map(row).collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{:<w$}  ", c, w = widths[i]);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &header.map(String::from));
    for r in &rows {
        line(&mut out, r);
    }
    let routable = view.backends.iter().filter(|b| b.routable).count();
    let _ = writeln!(
        out,
        "\n{} registered, {} routable, digest {}{}",
        view.backends.len(),
        routable,
        view.digest,
        if view.panic { ", PANIC MODE" } else { "" }
    );
    out
}

fn row(e: &EntryView) -> [String; 11] {
    let v = e.vitals.as_ref();
    let dash = || "-".to_string();
    let state = match &e.ejected {
        Some(_) => format!("{} (ejected)", e.state.as_str()),
        None => e.state.as_str().to_string(),
    };
    [
        e.id.clone(),
        e.service.clone(),
        e.address.clone(),
        state,
        e.last_check
            .as_deref()
            .and_then(|t| t.get(11..19))
            .map_or_else(dash, String::from),
        format!("{}s", e.lease_expires_in_seconds),
        v.map_or_else(dash, |v| if v.ready { "yes" } else { "no" }.into()),
        v.map_or_else(dash, |v| format!("{:.1}", v.cpu_usage)),
        v.map_or_else(dash, |v| format!("{:.1}", v.memory_usage)),
        format!(
            "{}{}",
            e.in_flight,
            v.map_or(String::new(), |v| format!(
                " ({} rep.)",
                v.requests_in_progress
            ))
        ),
        e.ejected
            .clone()
            .or_else(|| e.last_error.clone())
            .unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BackendState, Vitals};

    #[test]
    fn table_lists_entries_and_summary() {
        let view = RegistryView {
            digest: "deadbeef".into(),
            panic: false,
            backends: vec![EntryView {
                id: "backend-1".into(),
                service: "web".into(),
                address: "10.0.1.5:3000".into(),
                metrics_port: 9090,
                weight: 1,
                state: BackendState::Healthy,
                routable: true,
                ejected: None,
                last_check: Some("2026-11-26T20:00:01.000Z".into()),
                last_error: None,
                lease_expires_in_seconds: 80,
                in_flight: 2,
                vitals: Some(Vitals {
                    ready: true,
                    cpu_usage: 35.2,
                    ..Default::default()
                }),
            }],
        };
        let t = table(&view);
        assert!(t.starts_with("ID"), "{t}");
        assert!(t.contains("backend-1") && t.contains("healthy") && t.contains("35.2"));
        assert!(t.contains(" web "), "{t}");
        assert!(t.contains("20:00:01"));
        assert!(t.contains("1 registered, 1 routable, digest deadbeef"));
    }
}
