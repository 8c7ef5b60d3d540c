//! The smallest Pingora proxy, as the reference `make bench` holds roster
//! against: round robin by an atomic counter over fixed upstreams, nothing
//! else. Same pingora (same Cargo.lock), same allocator (mimalloc, no_thp),
//! the same `ServerConf`, upstream peer timeouts and logger as `roster lb`
//! with its defaults, so the difference between the two is what roster adds.
//!
//! ```sh
//! cargo run --release --example bare_pingora -- --listen 127.0.0.1:7000 \
//!     --upstream 127.0.0.1:7001 --upstream 127.0.0.1:7002 --threads 1
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    /// Where clients connect.
    #[arg(long)]
    listen: SocketAddr,
    /// Upstreams, visited in turn (repeat the flag).
    #[arg(long, required = true)]
    upstream: Vec<SocketAddr>,
    /// Worker threads (`roster lb --threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Idle upstream connections kept (roster's `lb.keepalive_pool_size` default).
    #[arg(long, default_value_t = 16384)]
    keepalive_pool_size: usize,
    /// Leave the peer timeouts unset (pingora's defaults: none), to measure
    /// what roster's mandatory timeouts cost.
    #[arg(long)]
    no_timeouts: bool,
    /// Speak HTTP/2 to the upstreams by prior knowledge (h2c), as
    /// `roster lb --upstream-protocol h2c` does.
    #[arg(long)]
    h2c: bool,
}

struct Bare {
    upstreams: Vec<SocketAddr>,
    next: AtomicUsize,
    timeouts: bool,
    h2c: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        let mut peer = HttpPeer::new(self.upstreams[i], false, String::new());
        if self.h2c {
            // As roster's src/lb/peer.rs: over cleartext pingora takes ALPN
            // h2 as prior knowledge; 100 streams, a ping every 30 s.
            let o = &mut peer.options;
            o.alpn = pingora::protocols::ALPN::H2;
            o.max_h2_streams = 100;
            o.h2_ping_interval = Some(Duration::from_secs(30));
        }
        if self.timeouts {
            // roster's defaults: lb.connect_timeout 1s, read_timeout 60s,
            // idle_timeout 60s (src/config.rs), set the way roster sets them.
            let o = &mut peer.options;
            o.connection_timeout = Some(Duration::from_secs(1));
            o.total_connection_timeout = Some(Duration::from_secs(1));
            o.read_timeout = Some(Duration::from_secs(60));
            o.write_timeout = Some(Duration::from_secs(60));
            o.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let cli = Cli::parse();
    // A logger at `info`, as `roster lb` and any deployed proxy has. With
    // none installed, tracing's `log` fallback runs for every span the h2
    // client opens: ~8k instructions a request that roster does not pay.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    // The ServerConf `roster lb` builds (src/lb/mod.rs `run`), field by field.
    let conf = ServerConf {
        threads: cli.threads,
        grace_period_seconds: Some(30),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: cli.keepalive_pool_size,
        work_stealing: cli.threads > 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstreams: cli.upstream,
            next: AtomicUsize::new(0),
            timeouts: !cli.no_timeouts,
            h2c: cli.h2c,
        },
    );
    proxy.add_tcp(&cli.listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}
