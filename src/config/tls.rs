//! `lb.tls`: the TLS listener's address, certificate files and reload
//! interval (`crate::lb::tls` loads and serves them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `lb.tls` — the TLS listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// TLS listen address (`IP:port`); used only when `certs` is not empty.
    #[schemars(
        with = "String",
        regex(pattern = r"^(\[[0-9a-fA-F:.]+\]|[0-9.]+):[0-9]{1,5}$")
    )]
    #[arg(
        id = "lb.tls.listen",
        required = false,
        value_name = "LISTEN",
        long = "tls-listen",
        env = "ROSTER_TLS_LISTEN"
    )]
    pub listen: SocketAddr,
    /// Certificate chains with their keys (PEM). The handshake's SNI picks
    /// the one whose names (SAN, else CN; `*.domain` wildcards) match; the
    /// first one answers clients without a matching SNI.
    /// (Flag: `CERT_FILE:KEY_FILE`, repeated or comma-separated.)
    #[arg(
        id = "lb.tls.certs",
        required = false,
        value_name = "CERT:KEY",
        long = "tls-cert",
        env = "ROSTER_TLS_CERTS",
        value_delimiter = ','
    )]
    pub certs: Vec<CertPair>,
    /// How often the files are compared with what is loaded; a change is
    /// picked up by the next handshake without a restart.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "super::duration_schema")]
    #[arg(id = "lb.tls.reload_interval", required = false, value_name = "RELOAD_INTERVAL", long = "tls-reload-interval", env = "ROSTER_TLS_RELOAD_INTERVAL", value_parser = super::parse_duration)]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8443).into(),
            certs: Vec::new(),
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl TlsConfig {
    /// Whether the TLS listener runs.
    pub fn enabled(&self) -> bool {
        !self.certs.is_empty()
    }
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl std::str::FromStr for CertPair {
    type Err = String;

    /// `CERT_FILE:KEY_FILE`, the flag's form.
    fn from_str(s: &str) -> Result<Self, String> {
        let (c, k) = s
            .split_once(':')
            .filter(|(c, k)| !c.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("{s:?}: expected CERT_FILE:KEY_FILE"))?;
        Ok(Self {
            cert_file: c.into(),
            key_file: k.into(),
        })
    }
}
