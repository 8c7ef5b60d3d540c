//! TLS termination on `lb.tls.listen`: certificates from PEM files, chosen
//! by SNI, reloaded when the files change (a Kubernetes Secret volume
//! update), through pingora's rustls listener.
//!
//! pingora's rustls `TlsSettings` already pins TLS 1.2 and 1.3 (rustls has
//! nothing older) and takes a rustls `ResolvesServerCert`; [`CertStore`] is
//! that resolver. Each handshake reads the current set through an
//! `ArcSwap`, so a reload never blocks or restarts a listener.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::CertPair;
use arc_swap::ArcSwap;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// A certificate or key that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The files of one pair as last read, to notice a change by content
/// (a Secret update swaps a symlink; mtimes may not move).
#[derive(PartialEq, Eq)]
struct Raw {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The certificates in force.
#[derive(Default)]
struct Loaded {
    raw: Vec<Raw>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` filed under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

/// The rustls resolver behind the TLS listener.
pub struct CertStore {
    pairs: Vec<CertPair>,
    loaded: ArcSwap<Loaded>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("pairs", &self.pairs)
            .finish()
    }
}

impl CertStore {
    /// Load every pair; any unusable file is an error (at start, refuse to
    /// run rather than serve the wrong certificate).
    pub fn load(pairs: &[CertPair]) -> Result<Arc<Self>, TlsError> {
        let raw = read_all(pairs)?;
        let loaded = build(pairs, raw)?;
        Ok(Arc::new(Self {
            pairs: pairs.to_vec(),
            loaded: ArcSwap::from_pointee(loaded),
        }))
    }

    /// Re-read the files; swap in the new set when any changed. An
    /// unusable new set (a half-written update) keeps the old one.
    /// Returns whether a new set is in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let raw = read_all(&self.pairs)?;
        if raw == self.loaded.load().raw {
            return Ok(false);
        }
        let loaded = build(&self.pairs, raw)?;
        self.loaded.store(Arc::new(loaded));
        Ok(true)
    }

    /// Check the files every `interval`, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            tick.tick().await;
            let store = Arc::clone(&self);
            // File reads are blocking; keep them off the proxy's threads.
            let r = tokio::task::spawn_blocking(move || store.reload()).await;
            match r {
                Ok(Ok(true)) => {
                    last_error = None;
                    tracing::info!("TLS certificates reloaded");
                }
                Ok(Ok(false)) => last_error = None,
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        tracing::warn!(error = %msg, "TLS reload failed: keeping the certificates in force");
                    }
                    last_error = Some(msg);
                }
                Err(e) => tracing::error!(error = %e, "TLS reload task"),
            }
        }
    }

    /// The certificate for `sni`: exact name, then wildcard, then the first.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let l = self.loaded.load();
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            if let Some(k) = l.exact.get(&name) {
                return Some(Arc::clone(k));
            }
            if let Some(k) = name.split_once('.').and_then(|(_, p)| l.wildcard.get(p)) {
                return Some(Arc::clone(k));
            }
        }
        l.fallback.clone()
    }

    /// pingora's rustls listener settings: this resolver, ALPN h2 then
    /// http/1.1.
    pub fn settings(self: &Arc<Self>) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
        let mut s = pingora::listeners::tls::TlsSettings::intermediate("", "")?;
        s.set_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        s.enable_h2();
        Ok(s)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_all(pairs: &[CertPair]) -> Result<Vec<Raw>, TlsError> {
    pairs
        .iter()
        .map(|p| {
            Ok(Raw {
                cert: read(&p.cert_file)?,
                key: read(&p.key_file)?,
            })
        })
        .collect()
}

fn build(pairs: &[CertPair], raw: Vec<Raw>) -> Result<Loaded, TlsError> {
    let mut l = Loaded::default();
    for (pair, r) in pairs.iter().zip(&raw) {
        let (names, key) = certified(pair, r)?;
        let key = Arc::new(key);
        l.fallback.get_or_insert_with(|| Arc::clone(&key));
        for n in names {
            // The first pair naming a host wins, as listed.
            match n.strip_prefix("*.") {
                Some(parent) => l.wildcard.entry(parent.to_string()),
                None => l.exact.entry(n),
            }
            .or_insert_with(|| Arc::clone(&key));
        }
    }
    l.raw = raw;
    Ok(l)
}

/// Parse one pair into a signing key and the names its leaf covers.
fn certified(pair: &CertPair, raw: &Raw) -> Result<(Vec<String>, CertifiedKey), TlsError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut raw.cert.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&pair.cert_file, format!("bad PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(&pair.cert_file, "no certificate in the file"));
    };
    let names = names_of(leaf).map_err(|m| invalid(&pair.cert_file, m))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut raw.key.as_slice())
        .map_err(|e| invalid(&pair.key_file, format!("bad PEM: {e}")))?
        .ok_or_else(|| invalid(&pair.key_file, "no private key in the file"))?;
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| invalid(&pair.key_file, format!("does not fit the certificate: {e}")))?;
    Ok((names, ck))
}

/// DNS names of the leaf: its SANs, else its CN; lower case.
fn names_of(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| format!("bad certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair for `names`, written under `dir` as `stem`.
    fn pair(dir: &Path, stem: &str, names: &[&str]) -> CertPair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        write(dir, stem, &ck)
    }

    fn write(dir: &Path, stem: &str, ck: &rcgen::CertifiedKey<rcgen::KeyPair>) -> CertPair {
        let p = CertPair {
            cert_file: dir.join(format!("{stem}.crt")),
            key_file: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&p.cert_file, ck.cert.pem()).unwrap();
        std::fs::write(&p.key_file, ck.signing_key.serialize_pem()).unwrap();
        p
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    fn picked(s: &CertStore, sni: Option<&str>) -> Vec<u8> {
        leaf(&s.pick(sni).expect("a certificate"))
    }

    #[test]
    fn sni_selects_exact_then_wildcard_then_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.test"]);
        let b = pair(dir.path(), "b", &["b.test", "*.wild.test"]);
        let s = CertStore::load(&[a.clone(), b.clone()]).unwrap();
        let a_der = picked(&s, Some("a.test"));
        let b_der = picked(&s, Some("b.test"));
        assert_ne!(a_der, b_der);
        assert_eq!(picked(&s, Some("B.TEST")), b_der, "names are case-blind");
        assert_eq!(picked(&s, Some("x.wild.test")), b_der);
        assert_eq!(picked(&s, Some("y.x.wild.test")), a_der, "one label only");
        assert_eq!(
            picked(&s, Some("other.test")),
            a_der,
            "first is the default"
        );
        assert_eq!(picked(&s, None), a_der);
    }

    #[test]
    fn reload_swaps_changed_files_and_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.test"]);
        let s = CertStore::load(std::slice::from_ref(&a)).unwrap();
        let before = picked(&s, Some("a.test"));
        assert!(!s.reload().unwrap(), "unchanged files: nothing to do");
        pair(dir.path(), "a", &["a.test"]);
        assert!(s.reload().unwrap());
        let after = picked(&s, Some("a.test"));
        assert_ne!(before, after, "the new certificate is served");
        // A half-written update: the key no longer fits.
        let other = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        std::fs::write(&a.key_file, other.signing_key.serialize_pem()).unwrap();
        let err = s.reload().unwrap_err().to_string();
        assert!(err.contains("a.key"), "{err}");
        assert_eq!(picked(&s, Some("a.test")), after, "old one kept");
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = CertPair {
            cert_file: dir.path().join("nope.crt"),
            key_file: dir.path().join("nope.key"),
        };
        let err = CertStore::load(&[missing]).unwrap_err().to_string();
        assert!(err.contains("nope.crt"), "{err}");
        let a = pair(dir.path(), "a", &["a.test"]);
        std::fs::write(&a.cert_file, "not pem").unwrap();
        let err = CertStore::load(&[a]).unwrap_err().to_string();
        assert!(err.contains("a.crt"), "{err}");
    }

    #[test]
    fn flag_form_parses() {
        let p: CertPair = "/c.pem:/k.pem".parse().unwrap();
        assert_eq!(p.cert_file, Path::new("/c.pem"));
        assert!("/c.pem".parse::<CertPair>().is_err());
    }
}
