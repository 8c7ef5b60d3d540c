//! TLS on both sides of the real `roster lb` binary: backends reached over
//! TLS per service (`services.<name>.tls`: CA file, SNI, ALPN from the
//! service's protocol; a certificate the CA did not sign is a 502 that
//! never reaches the backend), a bad CA file refused at start, and the
//! TLS listener's handshake bounded by the head deadline.

mod common;
mod proto_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Lb, client};
use proto_support::STEP;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// A CA, and a server certificate it signed for `backend.test`, as PEM
/// (CA, leaf, key).
fn ca_and_leaf() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["backend.test".to_string()])
        .expect("leaf params")
        .signed_by(&key, &ca)
        .expect("leaf");
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// A TLS backend answering `<alpn> <path>` (`h2` or `h1`), counting the
/// requests that reached it.
struct TlsBackend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    async fn start(ip: &str, leaf: &str, key: &str) -> Self {
        let certs = rustls_pemfile::certs(&mut leaf.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("leaf pem");
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .expect("key pem")
            .expect("a key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(common::any_port(ip)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, hits) = (acceptor.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(STEP, acceptor.accept(tcp)).await else {
                        return;
                    };
                    serve(tls, hits).await;
                });
            }
        });
        Self {
            addr,
            hits,
            _task: task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

async fn serve(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    hits: Arc<AtomicUsize>,
) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        let Ok(mut conn) = h2::server::handshake(tls).await else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            hits.fetch_add(1, Ordering::Relaxed);
            let body = format!("h2 {}", req.uri().path());
            let resp = http::Response::new(());
            if let Ok(mut send) = respond.send_response(resp, false) {
                let _ = send.send_data(body.into(), true);
            }
        }
        return;
    }
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        hits.fetch_add(1, Ordering::Relaxed);
        let body = format!("h1 {}", req.uri().path());
        async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
    });
    let io = hyper_util::rt::TokioIo::new(tls);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

/// Register `addr` as `id` in `service`, with a plain-HTTP vitals server.
async fn register(lb: &Lb, service: &str, id: &str, addr: SocketAddr, vitals: u16) {
    let body =
        json!({"id": id, "service": service, "address": addr.to_string(), "metrics_port": vitals});
    let status = client()
        .post(lb.url("/register"))
        .json(&body)
        .send()
        .await
        .expect("register")
        .status();
    assert!(status.is_success(), "register {id}: {status}");
}

/// `services:` and `routes:` (by path prefix `/<service>`) for `services`
/// given as (name, YAML of its settings).
fn config(dir: &Path, services: &[(&str, String)]) -> String {
    let mut y = String::from("services:\n");
    for (name, s) in services {
        y.push_str(&format!("  {name}: {s}\n"));
    }
    y.push_str("routes:\n");
    for (name, _) in services {
        y.push_str(&format!("  - {{path_prefix: /{name}, service: {name}}}\n"));
    }
    let path = dir.join("lb.yaml");
    std::fs::write(&path, y).expect("config");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_are_verified_against_the_ca() {
    let ip = "127.0.52.1";
    let dir = tempfile::tempdir().expect("dir");
    let (ca, leaf, key) = ca_and_leaf();
    let (other_ca, _, _) = ca_and_leaf();
    let ca_file = dir.path().join("ca.pem");
    let other_file = dir.path().join("other.pem");
    std::fs::write(&ca_file, ca).expect("ca");
    std::fs::write(&other_file, other_ca).expect("other ca");
    let (ca_file, other_file) = (ca_file.display(), other_file.display());
    let services = [
        // SNI and name check; HTTP/1.1 (ALPN http/1.1 only).
        (
            "named",
            format!("{{tls: {{sni: backend.test, ca_file: \"{ca_file}\"}}}}"),
        ),
        // No SNI: the chain is still checked against the CA.
        ("chain", format!("{{tls: {{ca_file: \"{ca_file}\"}}}}")),
        // protocol auto over TLS: ALPN picks h2.
        (
            "auto",
            format!("{{protocol: auto, tls: {{sni: backend.test, ca_file: \"{ca_file}\"}}}}"),
        ),
        // A CA that did not sign the backend's certificate.
        (
            "wrongca",
            format!("{{retries: 0, tls: {{sni: backend.test, ca_file: \"{other_file}\"}}}}"),
        ),
        // The right CA, a name the certificate does not carry.
        (
            "wrongname",
            format!("{{retries: 0, tls: {{sni: other.test, ca_file: \"{ca_file}\"}}}}"),
        ),
        // verify: false takes any certificate.
        ("noverify", "{tls: {verify: false}}".to_string()),
    ];
    let cfg = config(dir.path(), &services);
    let lb = Lb::start(ip, &["--config", &cfg]).await;
    let mut backends = Vec::new();
    let mut vitals = Vec::new();
    for (name, _) in &services {
        let b = TlsBackend::start(ip, &leaf, &key).await;
        let v = proto_support::vitals(ip, name).await;
        register(&lb, name, name, b.addr, v.addr.port()).await;
        backends.push((*name, b));
        vitals.push(v);
    }
    // Vitals are plain HTTP on their own port: every backend is healthy,
    // whatever its TLS settings.
    for (name, b) in &backends {
        let url = lb.url(&format!("/backends?service={name}"));
        common::wait_for(Duration::from_secs(10), name, || async {
            let got: Vec<String> = match client().get(&url).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            got == [b.addr.to_string()]
        })
        .await;
    }
    for (name, b) in &backends {
        let r = client()
            .get(lb.proxy_url(&format!("/{name}/x")))
            .send()
            .await
            .expect("answer");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        match *name {
            "named" | "chain" | "noverify" => {
                assert_eq!(
                    (status, text.as_str()),
                    (200, &*format!("h1 /{name}/x")),
                    "{name}"
                );
            }
            "auto" => assert_eq!((status, text.as_str()), (200, "h2 /auto/x")),
            _ => {
                assert_eq!(status, 502, "{name}: {text}");
                assert_eq!(b.hits(), 0, "{name}: the backend was never reached");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ca_file_stops_the_start_naming_the_service() {
    let ip = "127.0.52.2";
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("missing.pem");
    let services = [(
        "api",
        format!("{{tls: {{ca_file: \"{}\"}}}}", missing.display()),
    )];
    let cfg = config(dir.path(), &services);
    let log = dir.path().join("lb.log");
    let [proxy, control] = common::free_addrs(ip);
    let (p, c) = (proxy.to_string(), control.to_string());
    let args = [
        "lb",
        "--config",
        &cfg,
        "--listen",
        &p,
        "--control-listen",
        &c,
    ];
    let mut proc = common::Proc::spawn_logged("lb", &args, &[], Some(&log));
    let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("services.api.tls.ca_file") && text.contains("missing.pem"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_client_is_cut_at_the_head_deadline() {
    let ip = "127.0.52.3";
    let dir = tempfile::tempdir().expect("dir");
    let a = proto_support::write_cert(dir.path(), "a", "a.test");
    assert!(!a.is_empty());
    let tls = common::free_addr(ip);
    let d = dir.path().display();
    let cfg = dir.path().join("lb.yaml");
    std::fs::write(
        &cfg,
        format!(
            "lb:\n  proxy_limits: {{header_timeout: 1s}}\n  tls:\n    listen: \"{tls}\"\n    \
             certs: [{{cert_file: \"{d}/a.crt\", key_file: \"{d}/a.key\"}}]\n"
        ),
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    let _lb = Lb::start(ip, &["--config", &cfg]).await;
    common::wait_for(Duration::from_secs(10), "tls port", || async {
        tokio::net::TcpStream::connect(tls).await.is_ok()
    })
    .await;
    // No ClientHello at all, and a ClientHello cut short: both closed
    // at the 1 s head deadline, long before pingora's own 60 s.
    for first in [&[][..], &proto_support::client_hello(3)[..20]] {
        let mut s = tokio::net::TcpStream::connect(tls).await.expect("tcp");
        tokio::io::AsyncWriteExt::write_all(&mut s, first)
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
        let closed = matches!(r, Ok(Ok(0)) | Ok(Err(_)));
        assert!(closed, "closed, not {r:?}");
    }
    // The listener still serves a real handshake.
    let s = proto_support::tls_connect(tls, "a.test", &[]).await;
    assert_eq!(proto_support::leaf(&s), a);
}
