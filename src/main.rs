//! The `roster` binary: one image, every role. Glue only.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use roster::config::{Config, LbArgs};
use roster::current_thread;

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
    /// Run the agent: announce to every LB, serve the vitals port, drain on SIGTERM.
    Agent(Box<roster::agent::AgentCommand>),
    /// Run an LB and 3 demo backends on loopback; print what to curl.
    Demo(roster::demo::DemoArgs),
    /// A small HTTP backend embedding the agent library (the seed's ./backend).
    DemoBackend(Box<roster::demo::DemoBackendArgs>),
    /// Print the LB's registry as a table.
    Status(roster::status::StatusArgs),
    /// Run the mutating admission webhook that injects the roster-agent sidecar.
    Inject(Box<roster::inject::InjectArgs>),
    /// Print the JSON Schema of the config file (or of the Helm chart's values).
    Schema(SchemaArgs),
    /// Print documentation generated from the code: `roster docs config` is
    /// docs/configuration.md (every key, flag, env var and default).
    #[command(subcommand)]
    Docs(DocsCommand),
    /// Sleep, then exit 0: an exec preStop hook for images without a shell
    /// (Kubernetes 1.29 has no `sleep` lifecycle action).
    Sleep(SleepArgs),
}

/// Longest `roster sleep`: a preStop hook never needs more (the kubelet
/// stops it at the grace period anyway).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(clap::Args)]
struct SleepArgs {
    /// How long: 5s, 1m 30s, 500ms (at most 1h).
    #[arg(value_parser = parse_sleep)]
    duration: std::time::Duration,
}

fn parse_sleep(s: &str) -> Result<std::time::Duration, String> {
    let d = roster::config::parse_duration(s)?;
    if d > MAX_SLEEP {
        return Err(format!("{s}: at most 1h"));
    }
    Ok(d)
}

#[derive(clap::Args)]
struct SchemaArgs {
    /// Print the Helm chart's values.schema.json instead (`config:` is the config file's schema).
    #[arg(long)]
    helm: bool,
}

#[derive(Subcommand)]
enum DocsCommand {
    /// The configuration reference (docs/configuration.md) as Markdown.
    Config,
}

// mimalloc: under glibc malloc, pingora's per-request allocations cost ~14%
// of a proxy core (perf, bench part 1); mimalloc is ~13% faster end to end.
// `no_thp`: with transparent huge pages mimalloc backs small heaps with 2 MiB
// pages (agent: 9 MB instead of 1.6 MB anonymous RSS; 10,000-backend
// registry: 76 MB instead of 45 MB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Sleep(args) = &cli.command {
        // No logging, no runtime: a preStop hook's output goes nowhere.
        std::thread::sleep(args.duration);
        return Ok(());
    }
    roster::telemetry::init_tracing();
    roster::demo::exit_with_demo_parent();
    match cli.command {
        Command::Lb(args) => {
            let config = args.resolve().context("roster lb: bad configuration")?;
            if args.print_config {
                print!("{}", serde_yaml::to_string(&config)?);
                return Ok(());
            }
            roster::lb::run(config).context("roster lb")?;
        }
        Command::Agent(cmd) => roster::agent::cli(*cmd)?,
        Command::Demo(args) => {
            current_thread()?
                .block_on(roster::demo::run(args))
                .context("roster demo")?;
        }
        Command::DemoBackend(args) => {
            let config = args
                .resolve()
                .context("roster demo-backend: bad configuration")?;
            if args.agent.print_config {
                print!("{}", serde_yaml::to_string(&config)?);
                return Ok(());
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(roster::demo::run_backend(args.listen, config))
                .context("roster demo-backend")?;
        }
        Command::Status(args) => {
            current_thread()?.block_on(roster::status::run(args))?;
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
        Command::Schema(args) => print!("{}", schema(&args)?),
        Command::Docs(DocsCommand::Config) => {
            print!("{}", roster::docs::configuration(&Cli::command()));
        }
        Command::Sleep(_) => {}
    }
    Ok(())
}

/// `roster schema [--helm]`.
fn schema(args: &SchemaArgs) -> anyhow::Result<String> {
    if args.helm {
        return Ok(roster::helm::values_schema());
    }
    let schema = schemars::schema_for!(Config);
    Ok(format!("{}\n", serde_json::to_string_pretty(&schema)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_configuration_reference_is_fresh() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == roster::docs::configuration(&Cli::command()),
            "{path} is stale: run `make docs`"
        );
    }

    #[test]
    fn every_dotted_option_is_a_config_key() {
        assert_eq!(
            roster::docs::unmatched(&Cli::command()),
            Vec::<String>::new()
        );
    }
}
