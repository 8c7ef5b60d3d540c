//! `services.<name>.tls`: TLS toward a service's backends, as configured
//! (`crate::lb::upstream_tls` loads the CA and sets up pingora's peers).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `services.<name>.tls`: `true` (TLS, the certificate checked against the
/// system roots), `false`, or the settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TlsSetting {
    Enabled(bool),
    Settings(UpstreamTls),
}

impl TlsSetting {
    /// The settings in force, None for plaintext.
    pub fn get(&self) -> Option<UpstreamTls> {
        match self {
            Self::Enabled(false) => None,
            Self::Enabled(true) => Some(UpstreamTls::default()),
            Self::Settings(s) => Some(s.clone()),
        }
    }
}

/// TLS toward a service's backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// Name sent as SNI and, with `verify`, required in the backend's
    /// certificate. Absent: no SNI, and only the chain is checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// CA bundle (PEM) the backend's certificate must chain to, read at
    /// start. Absent: the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Check the backend's certificate (chain, and `sni` when given).
    /// `false` accepts any certificate: encryption without authentication.
    pub verify: bool,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        Self {
            sni: None,
            ca_file: None,
            verify: true,
        }
    }
}

impl UpstreamTls {
    /// Problems a config check can see without reading files.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(sni) = &self.sni {
            tokio_rustls::rustls::pki_types::ServerName::try_from(sni.as_str())
                .map_err(|_| format!("tls.sni {sni:?}: not a DNS name or IP address"))?;
        }
        if self.ca_file.is_some() && !self.verify {
            return Err("tls.ca_file is unused with verify: false".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Option<UpstreamTls> {
        serde_yaml::from_str::<TlsSetting>(yaml).unwrap().get()
    }

    #[test]
    fn flag_or_settings() {
        assert_eq!(parse("false"), None);
        assert_eq!(parse("true"), Some(UpstreamTls::default()));
        let s = parse("{sni: api.internal, ca_file: /ca.pem}").unwrap();
        assert_eq!(s.sni.as_deref(), Some("api.internal"));
        assert!(s.verify, "verify defaults to on");
        assert!(serde_yaml::from_str::<TlsSetting>("{snii: x}").is_err());
        let bad = UpstreamTls {
            sni: Some("a b".into()),
            ..UpstreamTls::default()
        };
        assert!(bad.validate().unwrap_err().contains("tls.sni"));
    }
}
