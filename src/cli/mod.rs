//! The command line: one file per subcommand, each with its clap `Args` (whose doc comments
//! are the `--help` text) and a `run()`. Human output lives here and only here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
pub mod build;
pub mod deploy;
pub mod diff;
pub mod init;
pub mod keygen;
mod progress;
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
    Status(status::Args),
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
            Command::Serve(args) => serve::run(args),
            Command::Status(args) => status::run(args),
        }
    }
}
