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
    /// Run the mutating admission webhook that injects the roster-agent sidecar.
    Inject(Box<roster::inject::InjectArgs>),
    /// Print the JSON Schema of the config file (or of the Helm chart's values).
    Schema(SchemaArgs),
}

#[derive(clap::Args)]
struct SchemaArgs {
    /// Print the Helm chart's values.schema.json instead (`config:` is the config file's schema).
    #[arg(long)]
    helm: bool,
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
        Command::Inject(args) => {
            if let Some(dir) = &args.generate_cert {
                let names = roster::inject::generate_cert(&args, dir)
                    .context("roster inject --generate-cert")?;
                println!(
                    "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}",
                    dir.display(),
                    names.join(", ")
                );
                return Ok(());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(roster::inject::run(*args))
                .context("roster inject")?;
        }
        Command::Schema(args) if args.helm => print!("{}", roster::helm::values_schema()),
        Command::Schema(_) => {
            let schema = schemars::schema_for!(Config);
            println!("{}", serde_json::to_string_pretty(&schema)?);
        }
    }
    Ok(())
}
