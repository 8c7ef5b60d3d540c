//! A Rust backend embedding the roster agent: the seed's
//! `./backend --discovery-lb=lb1:8080,lb2:8080 --metrics-port=9090`.
//!
//! ```sh
//! cargo run --example embedded -- --listen 127.0.0.2:3000 --id web-1 \
//!     --discovery-lb 127.0.0.1:8080 --metrics-port 9090 --metrics-listen 127.0.0.2
//! ```
//! It announces `--listen` (unless `--address`), serves its vitals on the
//! metrics port, counts requests with the tower layer, and on SIGTERM goes
//! `ready: false`, deregisters from every LB and stops once they let go.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser;
use roster::agent::{Agent, AgentArgs};

#[derive(Parser)]
struct Cli {
    /// Where the app listens.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Every `roster agent` flag and ROSTER_* variable, and --config.
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    roster::telemetry::init_tracing();
    let cli = Cli::parse();
    let mut config = cli.agent.resolve()?;
    config
        .agent
        .address
        .get_or_insert_with(|| cli.listen.to_string());

    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let agent = Agent::from_config(&config)?
        .version(env!("CARGO_PKG_VERSION"))
        .spawn()
        .await?;
    agent.drain_on_signals()?;

    // Work that is not an HTTP request is counted by hand.
    let worker = agent.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _job = worker.in_flight(); // in progress until dropped
            worker.set_connected_peers(1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let app = Router::new()
        .route(
            "/",
            get(|| async { "hello from an embedded roster agent\n" }),
        )
        .layer(agent.layer());
    let drained = agent.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            drained.drained().await;
        })
        .await?;
    Ok(())
}
