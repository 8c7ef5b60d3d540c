//! `roster-agent`: the agent alone, for the sidecar. Same flags as
//! `roster agent` (`roster-agent drain` is `roster agent drain`); it links
//! no proxy, webhook or demo code, so its resident set stays small.

use clap::Parser;

/// Announce this backend to every LB, serve its vitals, drain on SIGTERM.
#[derive(Parser)]
#[command(name = "roster-agent", version)]
struct Cli {
    #[command(flatten)]
    agent: roster::agent::AgentCommand,
}

// Same allocator as `roster`, for the same reasons (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    roster::telemetry::init_tracing();
    roster::agent::cli(cli.agent)
}
