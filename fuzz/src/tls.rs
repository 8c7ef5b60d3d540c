//! PEM and certificate loading: the LB's TLS listener
//! ([`CertStore::load`], SNI picks), a service's upstream CA bundle
//! ([`PeerTls::load`]), the injector's serving files ([`CertFiles::load`])
//! and its self-managed Secret ([`bundle_problem`]).
//!
//! Input, sections split by a line `%%`: a mode (`der` wraps the next two
//! sections in PEM armour, so mutations reach the certificate and key
//! parsers; anything else uses them as PEM files), the certificate chain,
//! the private key, an SNI name.

use std::net::SocketAddr;

use pingora::prelude::HttpPeer;
use roster::config::CertPair;
use roster::config::UpstreamTls;
use roster::inject::certs::{Bundle, CertFiles, bundle_problem};
use roster::lb::tls::{CertStore, TlsError};
use roster::lb::upstream_tls::PeerTls;

use crate::util;

pub fn run(data: &[u8]) {
    let s = util::sections(data, 4);
    let (cert, key) = if s[0] == b"der" {
        (armour("CERTIFICATE", s[1]), armour("PRIVATE KEY", s[2]))
    } else {
        (s[1].to_vec(), s[2].to_vec())
    };
    let sni = String::from_utf8_lossy(s[3]);
    let dir = util::scratch();
    let pair = CertPair {
        cert_file: dir.path().join("tls.crt"),
        key_file: dir.path().join("tls.key"),
    };
    std::fs::write(&pair.cert_file, &cert).expect("a scratch file");
    std::fs::write(&pair.key_file, &key).expect("a scratch file");
    listener(&pair, &sni);
    upstream(&pair, &sni);
    if let Ok((mut files, _)) = CertFiles::load(pair.cert_file.clone(), pair.key_file.clone()) {
        assert!(files.reload().expect("same files").is_none(), "unchanged");
    }
    // The Secret's four keys, here one pair as both CA and server.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let bundle = Bundle {
        ca_cert: text(&cert),
        ca_key: text(&key),
        cert: text(&cert),
        key: text(&key),
    };
    let _ = bundle_problem(&bundle, &[sni.into_owned()]);
}

/// `lb.tls.certs`: a pair that loads answers every handshake.
fn listener(pair: &CertPair, sni: &str) {
    match CertStore::load(std::slice::from_ref(pair)) {
        Ok(store) => {
            assert!(store.pick(None).is_some(), "the first pair is the fallback");
            assert!(store.pick(Some(sni)).is_some());
            assert!(!store.reload().expect("same files"), "unchanged files");
        }
        Err(TlsError::Invalid { path, .. }) => {
            assert!(path == pair.cert_file || path == pair.key_file, "{path:?}");
        }
        Err(e) => panic!("readable files: {e}"),
    }
}

/// `services.<name>.tls.ca_file`: the chain read as a CA bundle.
fn upstream(pair: &CertPair, sni: &str) {
    let mut tls = UpstreamTls {
        sni: Some(sni.to_string()),
        ca_file: Some(pair.cert_file.clone()),
        verify: true,
    };
    // Config validation refuses a bad name before any file is read.
    if tls.validate().is_err() {
        tls.sni = None;
    }
    if let Ok(peer_tls) = PeerTls::load("fuzz", &tls) {
        let addr = SocketAddr::from(([10, 0, 0, 9], 8443));
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer_tls.apply(&mut peer, addr);
        assert!(peer.options.ca.as_ref().is_some_and(|ca| !ca.is_empty()));
    }
}

/// `der` in PEM armour, as a file would hold it.
fn armour(label: &str, der: &[u8]) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = Vec::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            body.push(if i <= chunk.len() {
                B64[(n >> (18 - 6 * i) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n").into_bytes();
    for line in body.chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    out
}
