//! TLS toward a service's backends (`services.<name>.tls`): the settings,
//! the CA bundle loaded once at start, and what they set on pingora's
//! `HttpPeer` (scheme, SNI, `verify_cert`, `verify_hostname`, per-peer CA).
//!
//! Backends register by IP address, so a certificate is checked against a
//! name only when `sni` gives one; without it the chain is still checked
//! against the CA (pingora's rustls connector is handed the backend's IP
//! as the server name, sends no SNI for it, and ignores only a name
//! mismatch). Vitals checks stay plain HTTP: they go to the agent's vitals
//! port, not to the TLS port of the application.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::UpstreamTls;
use pingora::prelude::HttpPeer;
use pingora::utils::tls::WrappedX509;

/// A CA file that cannot be used, naming the service and the file.
#[derive(Debug, thiserror::Error)]
#[error("services.{service}.tls.ca_file {}: {message}", path.display())]
pub struct UpstreamTlsError {
    pub service: String,
    pub path: PathBuf,
    pub message: String,
}

/// A service's upstream TLS, ready for each peer.
pub struct PeerTls {
    sni: Option<String>,
    verify: bool,
    /// The CA bundle, when not the system roots.
    ca: Option<Arc<[WrappedX509]>>,
    /// Keeps pooled connections of different trust apart (pingora's
    /// connection reuse key leaves the CA out).
    group: u64,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca_certs", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl PeerTls {
    /// Load `tls` for `service` (reads the CA file).
    pub fn load(service: &str, tls: &UpstreamTls) -> Result<Self, UpstreamTlsError> {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(service, tls), &mut hasher);
        let ca = match &tls.ca_file {
            Some(path) => Some(load_ca(path).map_err(|message| UpstreamTlsError {
                service: service.to_string(),
                path: path.clone(),
                message,
            })?),
            None => None,
        };
        Ok(Self {
            sni: tls.sni.clone(),
            verify: tls.verify,
            ca,
            group: std::hash::Hasher::finish(&hasher),
        })
    }

    /// Make `peer` (for `addr`) speak TLS under these settings.
    pub fn apply(&self, peer: &mut HttpPeer, addr: SocketAddr) {
        use pingora::upstreams::peer::Scheme;
        peer.scheme = Scheme::HTTPS;
        // Without a name, the IP: rustls sends no SNI for it, and pingora
        // would skip every check for an empty one (and rustls refuse it).
        peer.sni = match &self.sni {
            Some(name) => name.clone(),
            None => addr.ip().to_string(),
        };
        peer.group_key = self.group;
        let o = &mut peer.options;
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify && self.sni.is_some();
        o.ca = self.ca.clone();
    }
}

/// Every certificate of a PEM bundle; at least one.
fn load_ca(path: &Path) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let ders = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if ders.is_empty() {
        return Err("no certificate in the file".into());
    }
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("certificate {}: {e}", i + 1))?;
        let raw = der.as_ref().to_vec();
        // pingora's parser (another x509-parser version) panics on what it
        // cannot read; ours has just read it, so this is a last guard.
        let wrapped =
            std::panic::catch_unwind(|| WrappedX509::new(raw, pingora::utils::tls::parse_x509))
                .map_err(|_| format!("certificate {}: unreadable", i + 1))?;
        certs.push(wrapped);
    }
    Ok(certs.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_gets_scheme_sni_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let named = UpstreamTls {
            sni: Some("api.test".into()),
            ca_file: Some(ca_file),
            verify: true,
        };
        let t = PeerTls::load("api", &named).unwrap();
        let mut p = HttpPeer::new(addr, false, String::new());
        t.apply(&mut p, addr);
        assert!(p.is_tls());
        assert_eq!(p.sni, "api.test");
        assert!(p.options.verify_cert && p.options.verify_hostname);
        assert_eq!(p.options.ca.as_ref().map(|c| c.len()), Some(1));
        let t = PeerTls::load("api", &UpstreamTls::default()).unwrap();
        t.apply(&mut p, addr);
        assert_eq!(p.sni, "127.0.0.1", "chain checked, no name");
        assert!(p.options.verify_cert && !p.options.verify_hostname);
        assert!(p.options.ca.is_none(), "system roots");
    }

    #[test]
    fn unusable_ca_names_service_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = UpstreamTls {
            ca_file: Some(dir.path().join("nope.pem")),
            ..UpstreamTls::default()
        };
        let e = PeerTls::load("api", &missing).unwrap_err().to_string();
        assert!(
            e.contains("services.api.tls.ca_file") && e.contains("nope.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here").unwrap();
        let e = PeerTls::load(
            "api",
            &UpstreamTls {
                ca_file: Some(empty),
                ..UpstreamTls::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
