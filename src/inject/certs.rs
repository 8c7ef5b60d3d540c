//! TLS material for the webhook: a CA and a serving certificate generated
//! with rcgen, their inspection (still valid? right names? signed by the
//! CA?), and the rustls certificate resolver whose key can be swapped at run
//! time (files reloaded on change, or a renewal from the Secret).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// Lifetime of a generated CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated serving certificate.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A serving certificate closer than this to its end is renewed.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A TLS problem, naming the file or the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: no PEM private key found: {message}")]
    NoKey { what: String, message: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

fn invalid(what: &str, message: impl ToString) -> CertError {
    CertError::Invalid {
        what: what.into(),
        message: message.to_string(),
    }
}

/// A CA, and a serving certificate it signed, all PEM. This is what the
/// Secret keeps (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`).
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little backdating tolerates clock skew between nodes.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
}

/// A new self-signed CA: (certificate PEM, key PEM).
pub fn generate_ca(common_name: &str) -> Result<(String, String), CertError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `dns_names`, signed by the CA: (cert PEM, key PEM).
pub fn issue_serving(
    ca_cert: &str,
    ca_key: &str,
    dns_names: &[String],
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key)?;
    let mut params = CertificateParams::default();
    if let Some(first) = dns_names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.subject_alt_names = dns_names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, SERVING_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A fresh CA and a serving certificate for `dns_names`.
pub fn generate_bundle(dns_names: &[String]) -> Result<Bundle, CertError> {
    let (ca_cert, ca_key) = generate_ca("roster-injector CA")?;
    let (cert, key) = issue_serving(&ca_cert, &ca_key, dns_names)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        cert,
        key,
    })
}

/// The DNS names a webhook Service is reached by.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn first_der(pem: &[u8], what: &str) -> Result<CertificateDer<'static>, CertError> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| CertError::NoCertificate { what: what.into() })?
        .map_err(|e| invalid(what, e))
}

fn parse<'a>(
    der: &'a CertificateDer<'a>,
    what: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| invalid(what, e))
}

fn time_left_over(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    what: &str,
    needed: Duration,
) -> Result<(), CertError> {
    let needed = time::Duration::try_from(needed).map_err(|e| invalid(what, e))?;
    match cert.validity().time_to_expiration() {
        Some(left) if left > needed => Ok(()),
        _ => Err(invalid(what, "expired or expiring soon")),
    }
}

/// What is wrong with the bundle's CA, if anything: it must be a CA, go
/// with its key, and outlive one more serving certificate.
pub fn ca_problem(bundle: &Bundle) -> Option<String> {
    let check = || -> Result<(), CertError> {
        let der = first_der(bundle.ca_cert.as_bytes(), "ca.crt")?;
        let ca = parse(&der, "ca.crt")?;
        if !ca.is_ca() {
            return Err(invalid("ca.crt", "not a CA certificate"));
        }
        time_left_over(&ca, "ca.crt", SERVING_VALIDITY + RENEW_BEFORE)?;
        let key = KeyPair::from_pem(&bundle.ca_key).map_err(|e| invalid("ca.key", e))?;
        if key.subject_public_key_info() != ca.public_key().raw {
            return Err(invalid("ca.key", "does not match ca.crt"));
        }
        Ok(())
    };
    check().err().map(|e| e.to_string())
}

/// What is wrong with a bundle for serving `dns_names`, if anything: a
/// sound CA (see [`ca_problem`]) and a serving certificate signed by it,
/// naming every DNS name, matching its key, with more than `RENEW_BEFORE` left.
pub fn bundle_problem(bundle: &Bundle, dns_names: &[String]) -> Option<String> {
    if let Some(p) = ca_problem(bundle) {
        return Some(p);
    }
    let check = || -> Result<(), CertError> {
        let ca_der = first_der(bundle.ca_cert.as_bytes(), "ca.crt")?;
        let leaf_der = first_der(bundle.cert.as_bytes(), "tls.crt")?;
        let ca = parse(&ca_der, "ca.crt")?;
        let leaf = parse(&leaf_der, "tls.crt")?;
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|e| invalid("tls.crt", format!("not signed by ca.crt: {e}")))?;
        time_left_over(&leaf, "tls.crt", RENEW_BEFORE)?;
        let names: Vec<String> = leaf
            .subject_alternative_name()
            .map_err(|e| invalid("tls.crt", e))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(missing) = dns_names.iter().find(|n| !names.contains(n)) {
            return Err(invalid("tls.crt", format!("does not name {missing}")));
        }
        // The key must go with the certificate and be loadable.
        certified_key(
            bundle.cert.as_bytes(),
            bundle.key.as_bytes(),
            "tls.crt/tls.key",
        )?;
        Ok(())
    };
    check().err().map(|e| e.to_string())
}

/// A rustls key from PEM certificate chain and key; `what` names the source.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, e))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { what: what.into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoKey {
        what: what.into(),
        message: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| invalid(what, e))
}

/// Serves whichever key was stored last; the server never restarts for a new one.
#[derive(Debug)]
pub struct SwappableCert {
    current: ArcSwap<CertifiedKey>,
}

impl SwappableCert {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(key),
        })
    }

    pub fn store(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server config serving `cert` (HTTP/1.1).
pub fn server_config(cert: Arc<SwappableCert>) -> Result<rustls::ServerConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate and key read from files, with what was read, so a change
/// can be noticed by comparing contents (Secret volumes swap a symlink, so
/// contents are the reliable signal).
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    last: (Vec<u8>, Vec<u8>),
}

impl CertFiles {
    /// Read both files and build the key; fails on unreadable or mismatched files.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<(Self, CertifiedKey), CertError> {
        let (c, k) = (read(&cert)?, read(&key)?);
        let what = format!("{} / {}", cert.display(), key.display());
        let ck = certified_key(&c, &k, &what)?;
        Ok((
            Self {
                cert,
                key,
                last: (c, k),
            },
            ck,
        ))
    }

    /// A new key when the files changed and still make a valid pair.
    pub fn reload(&mut self) -> Result<Option<CertifiedKey>, CertError> {
        let now = (read(&self.cert)?, read(&self.key)?);
        if now == self.last {
            return Ok(None);
        }
        let what = format!("{} / {}", self.cert.display(), self.key.display());
        let ck = certified_key(&now.0, &now.1, &what)?;
        self.last = now;
        Ok(Some(ck))
    }
}

/// Poll the files every `every` and swap in a changed pair. A half-written
/// or mismatched pair is logged and the previous one kept.
pub async fn watch_files(mut files: CertFiles, target: Arc<SwappableCert>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match files.reload() {
            Ok(Some(key)) => {
                target.store(key);
                failing = false;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Ok(None) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "TLS files changed but cannot be used yet; keeping the current certificate");
                }
                failing = true;
            }
        }
    }
}

/// Write `ca.crt`, `tls.crt` and `tls.key` for `dns_names` into `dir`
/// (`roster inject --generate-cert DIR`): for tests and hand-made setups.
pub fn write_bundle(dir: &Path, dns_names: &[String]) -> Result<Bundle, CertError> {
    let bundle = generate_bundle(dns_names)?;
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for (name, body) in [
        ("ca.crt", &bundle.ca_cert),
        ("tls.crt", &bundle.cert),
        ("tls.key", &bundle.key),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|source| CertError::Write { path, source })?;
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        service_dns_names("roster-injector", "roster")
    }

    #[test]
    fn generated_bundle_is_sound() {
        let b = generate_bundle(&names()).unwrap();
        assert_eq!(bundle_problem(&b, &names()), None);
        assert!(certified_key(b.cert.as_bytes(), b.key.as_bytes(), "t").is_ok());
    }

    #[test]
    fn problems_are_found() {
        let b = generate_bundle(&names()).unwrap();
        let other = generate_bundle(&names()).unwrap();
        let wrong_ca = Bundle {
            ca_cert: other.ca_cert.clone(),
            ca_key: other.ca_key.clone(),
            ..b.clone()
        };
        assert!(
            bundle_problem(&wrong_ca, &names())
                .unwrap()
                .contains("not signed")
        );
        let wrong_key = Bundle {
            key: other.key.clone(),
            ..b.clone()
        };
        assert!(bundle_problem(&wrong_key, &names()).is_some());
        let wrong_ca_key = Bundle {
            ca_key: other.ca_key.clone(),
            ..b.clone()
        };
        assert!(
            bundle_problem(&wrong_ca_key, &names())
                .unwrap()
                .contains("ca.key")
        );
        let more = vec!["elsewhere.example".to_string()];
        assert!(
            bundle_problem(&b, &more)
                .unwrap()
                .contains("elsewhere.example")
        );
        let garbage = Bundle {
            cert: "nope".into(),
            ..b
        };
        assert!(bundle_problem(&garbage, &names()).is_some());
    }

    #[test]
    fn renewal_keeps_the_ca() {
        let b = generate_bundle(&names()).unwrap();
        let (cert, key) = issue_serving(&b.ca_cert, &b.ca_key, &names()).unwrap();
        assert_ne!(cert, b.cert);
        let renewed = Bundle { cert, key, ..b };
        assert_eq!(bundle_problem(&renewed, &names()), None);
    }

    #[test]
    fn files_reload_on_change_only_when_valid() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), &names()).unwrap();
        let (mut files, _) =
            CertFiles::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
        assert!(files.reload().unwrap().is_none(), "unchanged");
        // Half-way through a rotation: new cert, old key.
        let next = generate_bundle(&names()).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &next.cert).unwrap();
        assert!(files.reload().is_err());
        std::fs::write(dir.path().join("tls.key"), &next.key).unwrap();
        assert!(files.reload().unwrap().is_some());
        assert!(files.reload().unwrap().is_none());
    }

    #[test]
    fn missing_files_are_named() {
        let err = CertFiles::load("/nonexistent/tls.crt".into(), "/nonexistent/tls.key".into())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/tls.crt"), "{err}");
    }
}
