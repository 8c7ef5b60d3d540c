//! Flags and environment variables, overlaid on the file:
//! flag > env > file > default.
//!
//! Every option is declared once: on its config section's field, an
//! `#[arg(...)]` beside its serde key, its doc (the help text and the JSON
//! Schema's description) and its default (the section's `Default`). A
//! command names the sections it reads ([`Sections`]); [`Overlay`] adds their
//! flags and, after parsing, updates only the fields whose flag or env var
//! was given (clap's `update_from_arg_matches`), on top of the file.

use std::marker::PhantomData;
use std::path::PathBuf;

use clap::{ArgMatches, Args, Command, FromArgMatches};

use super::{
    AgentConfig, Config, ConfigError, DiscoveryConfig, HealthCheckConfig, LbConfig,
    RegistrationConfig,
};

/// Flags shared by every subcommand that reads the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// YAML config file.
    #[arg(long, env = "ROSTER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The config sections a command takes flags for.
pub trait Sections {
    fn augment(cmd: Command) -> Command;
    fn update(c: &mut Config, m: &ArgMatches) -> Result<(), clap::Error>;
}

/// `roster lb`: `lb:`, `health_check:`, `registration:`.
#[derive(Debug, Clone, Copy)]
pub struct LbSections;

impl Sections for LbSections {
    fn augment(cmd: Command) -> Command {
        let cmd = LbConfig::augment_args(cmd);
        let cmd = HealthCheckConfig::augment_args(cmd);
        RegistrationConfig::augment_args(cmd)
    }

    fn update(c: &mut Config, m: &ArgMatches) -> Result<(), clap::Error> {
        c.lb.update_from_arg_matches(m)?;
        c.health_check.update_from_arg_matches(m)?;
        c.registration.update_from_arg_matches(m)
    }
}

/// `roster agent` (and `drain`, `demo-backend`): `discovery:`, `agent:`,
/// and `health_check:` (the LBs' interval sizes the drain).
#[derive(Debug, Clone, Copy)]
pub struct AgentSections;

impl Sections for AgentSections {
    fn augment(cmd: Command) -> Command {
        let cmd = DiscoveryConfig::augment_args(cmd);
        let cmd = AgentConfig::augment_args(cmd);
        HealthCheckConfig::augment_args(cmd)
    }

    fn update(c: &mut Config, m: &ArgMatches) -> Result<(), clap::Error> {
        c.discovery.update_from_arg_matches(m)?;
        c.agent.update_from_arg_matches(m)?;
        c.health_check.update_from_arg_matches(m)
    }
}

/// The file flag plus the flags of the sections `S`, with what the command
/// line and the environment gave.
#[derive(Debug, Clone)]
pub struct Overlay<S> {
    pub file: ConfigArgs,
    matches: ArgMatches,
    sections: PhantomData<S>,
}

impl<S> Default for Overlay<S> {
    fn default() -> Self {
        Self {
            file: ConfigArgs::default(),
            matches: ArgMatches::default(),
            sections: PhantomData,
        }
    }
}

impl<S: Sections> Args for Overlay<S> {
    fn augment_args(cmd: Command) -> Command {
        S::augment(ConfigArgs::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<S: Sections> FromArgMatches for Overlay<S> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            file: ConfigArgs::from_arg_matches(m)?,
            matches: m.clone(),
            sections: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<S: Sections> Overlay<S> {
    /// The file (or the defaults), then every flag or env var given.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.file.config.as_deref())?;
        self.apply(&mut c)?;
        Ok(c)
    }

    /// Whether the flag (or env var) of `id` ("agent.metrics_listen") was given.
    pub fn given(&self, id: &str) -> bool {
        self.matches.contains_id(id)
    }

    /// Overlay the flags and env vars that were given on `c`.
    pub fn apply(&self, c: &mut Config) -> Result<(), ConfigError> {
        S::update(c, &self.matches).map_err(|e| ConfigError::Invalid {
            field: "flags",
            message: e.to_string(),
        })
    }
}

/// `roster lb` flags: every key of `lb:`, `health_check:` and
/// `registration:` (see each field for its flag and `ROSTER_*` variable).
#[derive(Debug, Clone, Default, Args)]
pub struct LbArgs {
    #[command(flatten)]
    pub overlay: Overlay<LbSections>,
    /// Print the merged configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl LbArgs {
    /// File (or defaults), then flags/env on top, then validation.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let c = self.overlay.load()?;
        c.validate_lb()?;
        Ok(c)
    }
}
