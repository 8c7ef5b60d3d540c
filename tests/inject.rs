//! `roster inject` on loopback: certificates from files, reloaded when the
//! files change; `--generate-cert`; graceful exit. The admission round trip
//! itself is checked by scripts/kit.py against the same binary. Also what
//! the chart relies on around it: `roster sleep` (the LB's preStop on 1.29)
//! and an injected agent whose optional token Secret is missing.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BIN, Proc, free_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

fn generate(dir: &Path) {
    let out = Command::new(BIN)
        .args(["inject", "--generate-cert"])
        .arg(dir)
        .args(["--dns-name", "localhost"])
        .output()
        .expect("run roster");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("PEM certificate")
}

/// TLS to `addr` trusting both CAs; the served leaf, and the answer to GET `path`.
async fn fetch(
    addr: std::net::SocketAddr,
    cas: &[&Path],
    path: &str,
) -> std::io::Result<(CertificateDer<'static>, String)> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(der(ca)).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().expect("peer cert")[0].clone();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut body = String::new();
    tls.read_to_string(&mut body).await?;
    Ok((leaf, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_tls_from_files_and_reloads_them() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    generate(a.path());
    generate(b.path());
    let live = tempfile::tempdir().unwrap();
    let (crt, key) = (live.path().join("tls.crt"), live.path().join("tls.key"));
    std::fs::copy(a.path().join("tls.crt"), &crt).unwrap();
    std::fs::copy(a.path().join("tls.key"), &key).unwrap();

    let addr = free_addr("127.0.40.1");
    let mut inject = Proc::spawn(
        "inject",
        &[
            "inject",
            "--listen",
            &addr.to_string(),
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let cas = [
        a.path().join("ca.crt").clone(),
        b.path().join("ca.crt").clone(),
    ];
    let cas: Vec<&Path> = cas.iter().map(|p| p.as_path()).collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    let (leaf, body) = loop {
        match fetch(addr, &cas, "/healthz").await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("injector never served TLS: {e}"),
        }
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert_eq!(leaf, der(&a.path().join("tls.crt")));

    // Rotate: the new pair is served without a restart.
    std::fs::copy(b.path().join("tls.key"), &key).unwrap();
    std::fs::copy(b.path().join("tls.crt"), &crt).unwrap();
    let want = der(&b.path().join("tls.crt"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (leaf, _) = fetch(addr, &cas, "/healthz").await.expect("still serving");
        if leaf == want {
            break;
        }
        assert!(Instant::now() < deadline, "certificate never reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken key is ignored: the last good pair keeps serving.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (leaf, body) = fetch(addr, &cas, "/healthz").await.expect("still serving");
    assert_eq!(leaf, want);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");

    inject.signal("TERM");
    let status = inject
        .wait_exit(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn cert_and_key_go_together() {
    let out = Command::new(BIN)
        .args(["inject", "--tls-cert", "/tmp/x.crt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

#[test]
fn unreadable_cert_files_are_named() {
    let addr = free_addr("127.0.40.2");
    let out = Command::new(BIN)
        .args(["inject", "--listen", &addr.to_string()])
        .args([
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tls.crt"), "{err}");
}

/// The LB's preStop on Kubernetes 1.29 (no `sleep` action there, no shell
/// in the image): `roster sleep 5s` waits, then exits 0; nonsense fails.
#[test]
fn sleep_subcommand_for_the_exec_pre_stop() {
    let start = Instant::now();
    let out = Command::new(BIN).args(["sleep", "300ms"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(5));
    for bad in ["soon", "2h", "-1s"] {
        let out = Command::new(BIN).args(["sleep", bad]).output().unwrap();
        assert!(!out.status.success(), "{bad}");
    }
}

/// An injected agent in a namespace without the token Secret (the volume
/// is optional): it runs, logs the missing token, and its vitals say
/// `ready: false` with the reason; once the file appears it clears.
#[tokio::test(flavor = "multi_thread")]
async fn missing_token_is_reported_in_the_vitals_and_the_log() {
    let dir = tempfile_dir("roster-token-e2e");
    let token = dir.join("token");
    let log = dir.join("agent.log");
    let [vitals, app] = common::free_addrs("127.0.40.3");
    let (vitals_s, token_s, app_s) = (
        vitals.port().to_string(),
        token.display().to_string(),
        app.to_string(),
    );
    let mut agent = Proc::spawn_bin(
        common::AGENT_BIN,
        "agent-no-token",
        &[
            "--id",
            "no-token",
            "--address",
            &app_s,
            "--discovery-lb",
            "127.0.40.4:9",
            "--metrics-listen",
            "127.0.40.3",
            "--metrics-port",
            &vitals_s,
            "--announce-interval",
            "1s",
            "--app-health",
            "none",
            "--token-file",
            &token_s,
        ],
        &[],
        Some(&log),
    );
    let url = format!("http://{vitals}/metrics");
    let client = common::client();
    let vitals_now = || async {
        let r = client.get(&url).send().await.ok()?;
        r.json::<serde_json::Value>().await.ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        if let Some(v) = vitals_now().await
            && v["reason"].is_string()
        {
            break v;
        }
        assert!(Instant::now() < deadline, "no not-ready reason on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["ready"], false, "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("registration token file"), "{reason}");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("registration token missing"), "{logged}");

    std::fs::write(&token, "s3cret\n").expect("write token");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = vitals_now().await
            && v["ready"] == true
        {
            assert!(v.get("reason").is_none(), "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not ready once the token exists"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.signal("KILL");
    let _ = agent.wait_exit(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
