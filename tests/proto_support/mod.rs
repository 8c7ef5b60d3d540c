//! Backends and clients that speak what `tests/protocols.rs` carries
//! through the LB: an HTTP/2-only (h2c) backend with a hand-rolled gRPC
//! service, a gRPC client over the `h2` crate, a WebSocket echo backend,
//! and a TLS client that reports what the handshake chose.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls;

use crate::common::{self, Server};

/// Bound on every client step, so a broken proxy fails a test, not hangs it.
pub const STEP: Duration = Duration::from_secs(5);

/// A vitals server that always says ready.
pub async fn vitals(ip: &str, id: &str) -> Arc<Server> {
    let id = id.to_string();
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let id = id.clone();
            async move { axum::Json(serde_json::json!({"ready": true, "id": id})) }
        }),
    );
    Server::start(common::any_port(ip), router).await
}

/// A gRPC message on the wire: uncompressed flag, length, payload.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// An HTTP/2-only backend (prior knowledge; HTTP/1.1 clients fail):
/// `/grpc.Test/Unary` echoes, `/grpc.Test/Chat` echoes each message as
/// it arrives, `/grpc.Test/Status/<n>` ends with `grpc-status: n`,
/// `/grpc.Test/Slow` answers after 3 s;
/// anything else answers `h2 <path>`.
pub struct H2Backend {
    pub addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl H2Backend {
    pub async fn start(ip: &str) -> Self {
        let listener = TcpListener::bind(common::any_port(ip)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.spawn(serve_h2(s));
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            _tasks: tasks,
        }
    }
}

async fn serve_h2(s: TcpStream) {
    let Ok(mut conn) = h2::server::handshake(s).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(async move {
            let _ = answer(req, respond).await;
        });
    }
}

async fn answer(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    let Some(method) = path.strip_prefix("/grpc.Test/") else {
        while let Some(chunk) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk?.len());
        }
        let resp = Response::builder().status(200).body(()).expect("resp");
        let mut send = respond.send_response(resp, false)?;
        return send.send_data(Bytes::from(format!("h2 {path}")), true);
    };
    if method == "Slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let resp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("resp");
    let mut send = respond.send_response(resp, false)?;
    let mut trailers = HeaderMap::new();
    let status = method.strip_prefix("Status/").unwrap_or("0");
    trailers.insert("grpc-status", status.parse().expect("status"));
    if status != "0" {
        trailers.insert("grpc-message", "told%20to%20fail".parse().expect("msg"));
    }
    // Unary and Chat both echo every chunk at once: for Chat the client
    // waits for each echo before sending on, which proves streaming.
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if status == "0" {
            send.send_data(chunk, false)?;
        }
    }
    send.send_trailers(trailers)
}

/// A gRPC client on one HTTP/2 connection (prior knowledge or TLS).
pub struct GrpcClient {
    send: h2::client::SendRequest<Bytes>,
    /// Sent as `grpc-timeout` on each call when set.
    pub deadline: Option<&'static str>,
}

/// What a call got back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub messages: Vec<Bytes>,
    pub trailers: HeaderMap,
}

impl GrpcClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.expect("connect");
        Self::over(s).await
    }

    pub async fn over<S>(io: S) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = tokio::time::timeout(STEP, h2::client::handshake(io))
            .await
            .expect("h2 handshake in time")
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self {
            send,
            deadline: None,
        }
    }

    /// Open a call; the caller sends on the returned stream.
    pub async fn open(
        &mut self,
        method: &str,
        grpc: bool,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut b = Request::builder()
            .method(if grpc { "POST" } else { "GET" })
            .uri(format!("http://roster.test{method}"));
        if grpc {
            b = b
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if let Some(d) = self.deadline {
                b = b.header("grpc-timeout", d);
            }
        }
        let req = b.body(()).expect("request");
        let mut ready = self.send.clone().ready().await.expect("h2 ready");
        ready.send_request(req, !grpc).expect("send request")
    }

    /// A unary call (or a GET when `grpc` is false): the whole answer.
    pub async fn unary(&mut self, method: &str, msg: &[u8], grpc: bool) -> Reply {
        let (resp, mut tx) = self.open(method, grpc).await;
        if grpc {
            tx.send_data(frame(msg), true).expect("send");
        }
        let resp = tokio::time::timeout(STEP, resp)
            .await
            .expect("answer in time")
            .expect("answer");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut messages = Vec::new();
        while let Some(chunk) = tokio::time::timeout(STEP, body.data()).await.expect("data") {
            let chunk = chunk.expect("chunk");
            let _ = body.flow_control().release_capacity(chunk.len());
            messages.push(chunk);
        }
        let trailers = tokio::time::timeout(STEP, body.trailers())
            .await
            .expect("trailers in time")
            .expect("trailers")
            .unwrap_or_default();
        Reply {
            status,
            messages,
            trailers,
        }
    }
}

/// Strip gRPC framing from a body chunk holding whole messages.
pub fn unframe(mut b: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        b.advance(1);
        let n = b.get_u32() as usize;
        out.push(b.split_to(n.min(b.len())));
    }
    out
}

/// A WebSocket backend echoing every message.
pub async fn ws_echo(ip: &str) -> (SocketAddr, JoinSet<()>) {
    use futures::{SinkExt, StreamExt};
    let listener = TcpListener::bind(common::any_port(ip)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, tasks)
}

/// Accepts any server certificate: the tests look at which one came.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` naming `sni`, offering `alpn`.
pub async fn tls_connect(addr: SocketAddr, sni: &str, alpn: &[&str]) -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
    tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// The leaf certificate (DER) the server sent.
pub fn leaf(tls: &Tls) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a certificate")
}

/// A self-signed certificate for `name`, written as `<stem>.crt/.key`
/// (via a rename, as a Secret volume update swaps files); its DER.
pub fn write_cert(dir: &std::path::Path, stem: &str, name: &str) -> Vec<u8> {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
    for (ext, pem) in [
        ("crt", ck.cert.pem()),
        ("key", ck.signing_key.serialize_pem()),
    ] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        std::fs::write(&tmp, pem).expect("write");
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).expect("rename");
    }
    ck.cert.der().to_vec()
}

/// A ClientHello for TLS 1.`minor - 1` (legacy version 0x03`minor`, no
/// supported_versions extension) that is otherwise acceptable (suites,
/// groups, signature schemes a TLS 1.2 server takes): with 0x0302 (TLS
/// 1.1) its version is the only fault.
pub fn client_hello(minor: u8) -> Vec<u8> {
    fn ext(id: u16, data: &[u8]) -> Vec<u8> {
        let mut e = id.to_be_bytes().to_vec();
        e.extend_from_slice(&(data.len() as u16).to_be_bytes());
        e.extend_from_slice(data);
        e
    }
    let mut body = vec![0x03, minor];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    // ECDHE_ECDSA_AES128_GCM_SHA256, ECDHE_RSA_AES128_GCM_SHA256
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let host = b"a.test";
    let mut sni = ((host.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut exts = ext(0x0000, &sni);
    // supported_groups: x25519, secp256r1
    exts.extend(ext(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]));
    exts.extend(ext(0x000b, &[0x01, 0x00])); // ec_point_formats
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    exts.extend(ext(0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04]));
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}
