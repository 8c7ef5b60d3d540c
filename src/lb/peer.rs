//! The pingora `HttpPeer` for one picked backend: its timeouts and the
//! HTTP version spoken to it (pingora's ALPN setting decides h1, h2c or
//! negotiation).

use std::net::SocketAddr;
use std::time::Duration;

use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;

use super::upstream_tls::PeerTls;
use crate::config::LbConfig;
use crate::protocol::Protocol;

/// Streams one upstream h2 connection carries at once; more open another
/// connection. 100 is the common SETTINGS_MAX_CONCURRENT_STREAMS default.
const H2_STREAMS: usize = 100;

/// Keeps an idle upstream h2 connection (a quiet gRPC stream) known alive,
/// and finds a dead one.
const H2_PING: Duration = Duration::from_secs(30);

/// The peer for `addr`, speaking `protocol` (over `tls` when the service
/// has it: ALPN then offers what `protocol` allows), under `lb`'s timeouts.
pub fn build(
    addr: SocketAddr,
    protocol: Protocol,
    tls: Option<&PeerTls>,
    lb: &LbConfig,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    if let Some(tls) = tls {
        tls.apply(&mut peer, addr);
    }
    let o = &mut peer.options;
    o.connection_timeout = Some(lb.connect_timeout);
    o.total_connection_timeout = Some(lb.connect_timeout);
    o.read_timeout = Some(lb.read_timeout);
    o.write_timeout = Some(lb.read_timeout);
    o.idle_timeout = Some(lb.idle_timeout);
    o.alpn = alpn(protocol);
    if o.alpn.get_max_http_version() == 2 {
        o.max_h2_streams = H2_STREAMS;
        o.h2_ping_interval = Some(H2_PING);
    }
    peer
}

/// An upgraded (WebSocket) connection: reads from the backend wait up to
/// `lb.websocket_idle_timeout`, not `read_timeout`. pingora applies the
/// peer's read timeout to the upgraded byte stream as well.
pub fn upgraded(peer: &mut HttpPeer, lb: &LbConfig) {
    peer.options.read_timeout = Some(lb.websocket_idle_timeout);
}

/// A gRPC call with a deadline (`grpc-timeout`): no wait on the backend
/// outlasts it, and a long streaming call is not cut by `read_timeout`
/// while its deadline has not passed.
pub fn deadline(peer: &mut HttpPeer, deadline: Duration) {
    peer.options.read_timeout = Some(deadline);
    peer.options.write_timeout = Some(deadline);
}

/// pingora's ALPN for a protocol. Over cleartext pingora takes a minimum
/// of h2 as prior knowledge (h2c), and a minimum of h1 as h1, so `auto`
/// negotiates only where ALPN exists (TLS); over TLS `h2c` offers `h2`
/// alone.
fn alpn(protocol: Protocol) -> ALPN {
    match protocol {
        Protocol::Http1 => ALPN::H1,
        Protocol::H2c => ALPN::H2,
        Protocol::Auto => ALPN::H2H1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_sets_alpn_and_timeouts() {
        let lb = LbConfig::default();
        let addr = "127.0.0.1:80".parse().unwrap();
        let p = build(addr, Protocol::Http1, None, &lb);
        assert_eq!(p.options.alpn, ALPN::H1);
        assert_eq!(p.options.read_timeout, Some(lb.read_timeout));
        assert_eq!(p.options.connection_timeout, Some(lb.connect_timeout));
        let p = build(addr, Protocol::H2c, None, &lb);
        assert_eq!(p.options.alpn, ALPN::H2);
        assert_eq!(p.options.max_h2_streams, H2_STREAMS);
        let p = build(addr, Protocol::Auto, None, &lb);
        assert_eq!(p.options.alpn, ALPN::H2H1);
        assert_eq!(p.options.alpn.get_min_http_version(), 1);
        let tls = PeerTls::load("s", &Default::default()).unwrap();
        let p = build(addr, Protocol::H2c, Some(&tls), &lb);
        assert!(p.is_tls());
        assert_eq!(p.options.alpn, ALPN::H2, "over TLS: ALPN h2 only");
        let mut p = build(addr, Protocol::Http1, None, &lb);
        upgraded(&mut p, &lb);
        assert_eq!(p.options.read_timeout, Some(lb.websocket_idle_timeout));
        deadline(&mut p, Duration::from_millis(1500));
        assert_eq!(p.options.read_timeout, Some(Duration::from_millis(1500)));
    }
}
