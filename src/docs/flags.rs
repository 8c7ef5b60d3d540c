//! The commands and their options, read from clap's `Command`: which
//! option sets which config key, and which are a command's own.

use std::collections::BTreeMap;

use clap::{Arg, ArgAction, Command};

use super::keys::Keys;

/// A flag and its environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub long: String,
    pub env: Option<String>,
    /// Comma-separated lists.
    pub delimiter: Option<char>,
}

/// One option of a command that is not a config key.
#[derive(Debug, Clone)]
pub struct Opt {
    /// `--listen`, or `<DURATION>` for a positional.
    pub name: String,
    pub env: Option<String>,
    pub default: Option<String>,
    pub help: String,
}

/// One (sub)command.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// `roster agent drain`.
    pub name: String,
    pub about: String,
    pub options: Vec<Opt>,
    /// The top-level sections it takes flags for (it reads `--config`).
    pub sections: Vec<String>,
}

/// Every command, and every config key's flag with the commands taking it.
#[derive(Debug, Default)]
pub struct Flags {
    pub commands: Vec<Cmd>,
    pub keys: BTreeMap<String, (Flag, Vec<String>)>,
    /// Options that look like a config key's but match none.
    pub unmatched: Vec<String>,
}

impl Flags {
    /// Walk `cli` and its subcommands.
    pub fn from_command(cli: &Command, keys: &Keys) -> Self {
        let mut cli = cli.clone();
        cli.build();
        let mut flags = Flags::default();
        flags.command(&cli, cli.get_name().to_string(), keys);
        flags
    }

    fn command(&mut self, cmd: &Command, name: String, keys: &Keys) {
        let mut this = Cmd {
            name: name.clone(),
            about: cmd
                .get_long_about()
                .or(cmd.get_about())
                .map(|s| sentence(&s.to_string()))
                .unwrap_or_default(),
            options: Vec::new(),
            sections: Vec::new(),
        };
        // Only a command with `--config` has config keys as flags.
        let reads_config = cmd.get_arguments().any(|a| a.get_id() == "config");
        for arg in cmd.get_arguments() {
            if is_builtin(arg) {
                continue;
            }
            let key = reads_config.then(|| config_key(cmd, arg, keys)).flatten();
            match key {
                Some(key) => {
                    let section = key.split('.').next().unwrap_or_default().to_string();
                    if !this.sections.contains(&section) {
                        this.sections.push(section);
                    }
                    let entry = self
                        .keys
                        .entry(key)
                        .or_insert_with(|| (flag(arg), Vec::new()));
                    entry.1.push(name.clone());
                }
                None => {
                    if arg.get_id().as_str().contains('.') {
                        self.unmatched.push(format!("{name} {}", arg.get_id()));
                    }
                    this.options.push(option(arg));
                }
            }
        }
        // The root (subcommands only) has nothing to list.
        if !cmd.is_hide_set()
            && (!this.options.is_empty() || !this.sections.is_empty() || !cmd.has_subcommands())
        {
            self.commands.push(this);
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                self.command(sub, format!("{name} {}", sub.get_name()), keys);
            }
        }
    }
}

fn is_builtin(arg: &Arg) -> bool {
    matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    )
}

/// The config key `arg` sets: its id when that is a key
/// (`lb.listen`), else the key of its flattened section named by its
/// group (`ProxyLimits` -> `lb.proxy_limits`) whose name ends its flag
/// (`--proxy-header-timeout` -> `header_timeout`).
fn config_key(cmd: &Command, arg: &Arg, keys: &Keys) -> Option<String> {
    let id = arg.get_id().as_str();
    if keys.get(id).is_some() {
        return Some(id.to_string());
    }
    let long = arg.get_long()?;
    let mut found = Vec::new();
    for group in cmd.get_groups() {
        if !group.get_args().any(|a| a == arg.get_id()) {
            continue;
        }
        let paths = keys.def_paths.get(group.get_id().as_str());
        for path in paths.into_iter().flatten() {
            let Some(section) = keys.section(path) else {
                continue;
            };
            let best = section
                .keys
                .iter()
                .filter(|k| long.ends_with(&k.name.replace('_', "-")))
                .max_by_key(|k| k.name.len());
            found.extend(best.map(|k| k.path.clone()));
        }
    }
    found.dedup();
    (found.len() == 1).then(|| found.remove(0))
}

fn flag(arg: &Arg) -> Flag {
    Flag {
        long: arg.get_long().map(|l| format!("--{l}")).unwrap_or_default(),
        env: env(arg),
        delimiter: arg.get_value_delimiter(),
    }
}

fn env(arg: &Arg) -> Option<String> {
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

fn option(arg: &Arg) -> Opt {
    let name = match arg.get_long() {
        Some(l) => format!("--{l}"),
        None => {
            let names = arg.get_value_names().unwrap_or_default();
            let names: Vec<String> = names.iter().map(|n| format!("<{n}>")).collect();
            match names.is_empty() {
                true => format!("<{}>", arg.get_id().as_str().to_uppercase()),
                false => names.join(" "),
            }
        }
    };
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let flag_only = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let default = (!defaults.is_empty() && !flag_only).then(|| defaults.join(","));
    let mut help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| sentence(&h.to_string()))
        .unwrap_or_default();
    match arg.get_value_delimiter() {
        Some(d) => help.push_str(&format!(
            " (A list: `{d}`-separated, or the flag repeated.)"
        )),
        None if matches!(arg.get_action(), ArgAction::Append) => help.push_str(" (Repeatable.)"),
        None => {}
    }
    Opt {
        name,
        env: env(arg),
        default,
        help,
    }
}

/// Help text on one line, with the final period clap's derive drops.
fn sentence(s: &str) -> String {
    let mut s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if !s.is_empty() && !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
}
