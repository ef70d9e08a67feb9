//! Options several subcommands share, flattened into their `Args` so that each is spelled,
//! documented and defaulted once.

use std::path::PathBuf;

use crate::config::{Fleet, FleetFileError};

/// The fleet file, for every command that reads `bento.toml`.
#[derive(Debug, clap::Args)]
pub struct FleetFile {
    /// The fleet file.
    #[arg(short, long, default_value = "bento.toml", env = "BENTO_CONFIG")]
    pub config: PathBuf,
}

impl FleetFile {
    pub fn load(&self) -> Result<Fleet, FleetFileError> {
        Fleet::load(&self.config)
    }
}

/// What `bento build` and `bento deploy` share: which hosts, the fleet file, how many hosts
/// at once, and JSON output.
#[derive(Debug, clap::Args)]
pub struct HostsToBuild {
    /// Hosts: host names and @tags. None means every host.
    #[arg(value_name = "HOST|@TAG")]
    pub hosts: Vec<String>,
    #[command(flatten)]
    pub fleet: FleetFile,
    /// Hosts evaluated and built at once [default: [fleet] jobs, else from cores and memory].
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Print the results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}
