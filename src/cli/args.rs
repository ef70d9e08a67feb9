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

/// How `bento deploy` goes to the fleet: the `[rollout]` waves, waves given here, or every
/// host at once.
#[derive(Debug, clap::Args)]
pub struct WaveFlags {
    /// A wave, in order (repeat for each): host names and @tags separated by commas, `*` for
    /// every host of no earlier wave, optionally named (`canary=@canary`). Replaces the
    /// waves of [rollout]; --threshold, --soak and --timeout apply to each.
    #[arg(
        long = "wave",
        value_name = "[NAME=]HOSTS",
        conflicts_with = "all_at_once"
    )]
    pub waves: Vec<String>,
    /// With --wave: percent of a wave's hosts that must succeed [default: 100].
    #[arg(long, value_name = "PERCENT", requires = "waves")]
    pub threshold: Option<u8>,
    /// With --wave: seconds to wait after a wave met its threshold [default: 0].
    #[arg(long, value_name = "SECS", requires = "waves")]
    pub soak: Option<u64>,
    /// With --wave: seconds a host of a started wave has to succeed [default: [rollout]
    /// timeout_secs, else 1800].
    #[arg(long, value_name = "SECS", requires = "waves")]
    pub timeout: Option<u64>,
    /// Publish every host at once, ignoring [rollout].
    #[arg(long)]
    pub all_at_once: bool,
    /// Replace a rollout that is still running or paused, even where [rollout] supersede =
    /// "wait" (a halted rollout is always amended).
    #[arg(long)]
    pub supersede: bool,
}

impl WaveFlags {
    /// The waves this deploy goes through: `None` for every host at once.
    pub fn policy(&self, fleet: &Fleet) -> anyhow::Result<Option<crate::config::RolloutPolicy>> {
        use crate::config::{RolloutPolicy, Supersede, ops};
        if self.all_at_once {
            return Ok(None);
        }
        if self.waves.is_empty() {
            return Ok(fleet.rollout.clone());
        }
        let waves = self
            .waves
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let (name, hosts) = match spec.split_once('=') {
                    Some((name, hosts)) => (name.to_owned(), hosts),
                    None => (format!("wave{}", i + 1), spec.as_str()),
                };
                let hosts = hosts
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect();
                ops::wave(
                    name,
                    hosts,
                    self.threshold,
                    self.soak.unwrap_or(0),
                    &fleet.hosts,
                )
                .map_err(|e| anyhow::anyhow!("--wave {spec}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let timeout_secs = self
            .timeout
            .or(fleet.rollout.as_ref().map(|r| r.timeout_secs))
            .unwrap_or(ops::defaults::TIMEOUT_SECS);
        if timeout_secs == 0 {
            anyhow::bail!("--timeout must be at least 1");
        }
        Ok(Some(RolloutPolicy {
            waves,
            timeout_secs,
            supersede: fleet
                .rollout
                .as_ref()
                .map_or(Supersede::Wait, |r| r.supersede),
        }))
    }
}
