//! The `roster` binary: one image, every role. Glue only.

use anyhow::Context;
use clap::{Parser, Subcommand};

use roster::config::{Config, LbArgs};

#[derive(Parser)]
#[command(
    name = "roster",
    version,
    about = "Dead-simple service discovery for the Pingora proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer: Pingora proxy + registry + control API.
    Lb(Box<LbArgs>),
    /// Print the LB's registry as a table.
    Status(roster::status::StatusArgs),
    /// Print the JSON Schema of the config file.
    Schema,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    roster::telemetry::init_tracing();
    match cli.command {
        Command::Lb(args) => {
            let config = args.resolve().context("roster lb: bad configuration")?;
            if args.print_config {
                print!("{}", serde_yaml::to_string(&config)?);
                return Ok(());
            }
            roster::lb::run(config).context("roster lb")?;
        }
        Command::Status(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(roster::status::run(args))?;
        }
        Command::Schema => {
            let schema = schemars::schema_for!(Config);
            println!("{}", serde_json::to_string_pretty(&schema)?);
        }
    }
    Ok(())
}
