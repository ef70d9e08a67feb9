//! The command line: one file per subcommand, each with its clap `Args` (whose doc comments
//! are the `--help` text) and a `run()`. Human output lives here and only here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
mod args;
pub mod build;
pub mod deploy;
pub mod diff;
pub mod init;
pub mod keygen;
mod progress;
pub mod rollout;
pub mod secret;
pub mod serve;
pub mod status;
mod table;

/// Bento keeps a fleet of NixOS machines on the configuration kept in one repository.
/// The server builds every host; hosts pull a small signed release, copy their system
/// from the server's binary cache, activate it, and roll back by themselves when it breaks.
#[derive(Debug, Parser)]
#[command(name = "bento", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Init(init::Args),
    Build(build::Args),
    Deploy(deploy::Args),
    Diff(diff::Args),
    Serve(serve::Args),
    Agent(agent::Args),
    Keygen(keygen::Args),
    Secret(secret::Args),
    Status(status::Args),
    Rollout(rollout::Args),
}

/// An error and its causes on one line, each cause said once: most of Bento's error
/// messages already include their cause's text (so that a log line with only the message is
/// complete), and anyhow's `{:#}` would print it a second time.
pub fn describe_error(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

impl Cli {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Agent(args) => agent::run(args),
            Command::Init(args) => init::run(args),
            Command::Build(args) => build::run(args),
            Command::Deploy(args) => deploy::run(args),
            Command::Diff(args) => diff::run(args),
            Command::Keygen(args) => keygen::run(args),
            Command::Secret(args) => secret::run(args),
            Command::Serve(args) => serve::run(args),
            Command::Status(args) => status::run(args),
            Command::Rollout(args) => rollout::run(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_that_reads_bento_toml_takes_bento_config() {
        let cli = Cli::command();
        let config_env = |name: &str| {
            let sub = cli.find_subcommand(name).unwrap();
            let arg = sub
                .get_arguments()
                .find(|a| a.get_id() == "config")
                .unwrap();
            let default: Vec<_> = arg.get_default_values().to_vec();
            (arg.get_env().map(|e| e.to_owned()), default)
        };
        for name in ["build", "deploy", "diff", "status", "serve"] {
            let (env, default) = config_env(name);
            assert_eq!(env.as_deref(), Some("BENTO_CONFIG".as_ref()), "{name}");
            assert_eq!(default, ["bento.toml"], "{name}");
        }
        // The agent's --config is its own file, not the fleet's.
        let (env, default) = config_env("agent");
        assert_eq!(env, None);
        assert_eq!(default, ["/etc/bento/agent.toml"]);
    }

    #[test]
    fn build_and_deploy_share_their_selection() {
        for name in ["build", "deploy"] {
            let cli = Cli::try_parse_from(["bento", name, "web1", "@db", "-j", "3", "--json"]);
            let shared = match cli.map(|c| c.command) {
                Ok(Command::Build(a)) => a.selection,
                Ok(Command::Deploy(a)) => a.selection,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(shared.hosts, ["web1", "@db"], "{name}");
            assert_eq!(shared.jobs, Some(3), "{name}");
            assert!(shared.json, "{name}");
        }
    }
}

#[cfg(test)]
mod error_tests {
    use super::describe_error;
    use anyhow::Context as _;

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let cases: Vec<(anyhow::Error, &str)> = vec![
            // A message that includes its source.
            (
                anyhow::Error::new(crate::config::FleetFileError::Read {
                    path: "/srv/bento.toml".into(),
                    source: io(),
                }),
                "cannot read fleet file /srv/bento.toml: permission denied",
            ),
            // Context over it: still once.
            (
                anyhow::Error::new(crate::config::FleetFileError::Read {
                    path: "/srv/bento.toml".into(),
                    source: io(),
                })
                .context("cannot start the server"),
                "cannot start the server: cannot read fleet file /srv/bento.toml: permission denied",
            ),
            // A cause the message does not include is kept.
            (
                Err::<(), _>(io()).context("cannot open x").unwrap_err(),
                "cannot open x: permission denied",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(describe_error(&err), want);
        }
    }
}
