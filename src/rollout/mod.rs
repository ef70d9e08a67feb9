//! Staged rollouts: a deploy goes to the fleet in waves (`[rollout]` in `bento.toml`, or
//! `bento deploy --wave`), each with a success threshold and a soak time, and `bento serve`
//! advances it as reports arrive, halting it when a wave fails. See `docs/rollouts.md`.
//!
//! - `record`: the rollout record in the state directory (durable, versioned), read by
//!   `bento status` and the dashboard;
//! - `decide`: the pure decisions (next step, pause/resume/abort, what a new deploy does);
//! - `plan`: a new rollout from the policy and the built hosts (pure);
//! - `drive`: the effects: publishing a wave, observing its hosts, advancing, and the one
//!   entry for deploying built systems (used by `bento deploy` and the GitOps follower).
//!
//! Every change to the record is made under the deploy lock (`deploy.lock`), so that a
//! deploy, an operator's command and `bento serve` never interleave.
//!
//! May import: `config`, `deploy`, `durable`, `nix` (keys); `rollout::drive` also `status`
//! (host states, read only), `release`, `clock`.

use std::path::PathBuf;

use thiserror::Error;

pub mod decide;
pub mod drive;
pub mod plan;
pub mod record;

pub use decide::{Command, NewDeploy, Step};
pub use record::{Progress, Rollout, RolloutState};

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("cannot access {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "rollout record {path} is damaged ({problem}); inspect it, or move it away to forget the rollout"
    )]
    Corrupt { path: PathBuf, problem: String },
    #[error(
        "rollout record {path} has format {format}, which this Bento does not read (it reads format {}); run the Bento that wrote it",
        record::FORMAT
    )]
    Format { path: PathBuf, format: u32 },
    #[error("no rollout was ever recorded in {path}")]
    None { path: PathBuf },
    #[error("{0}")]
    Refused(String),
    #[error("a new deploy cannot start: {0}")]
    Busy(String),
    #[error(
        "hosts {0} are in no wave; add them to a wave, or end the waves with one of every other host (\"*\")"
    )]
    Unassigned(String),
    #[error("cannot load the fleet file {path} the rollout was deployed from: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: crate::config::FleetFileError,
    },
    #[error(transparent)]
    Deploy(#[from] crate::deploy::DeployError),
    #[error(transparent)]
    Write(#[from] crate::durable::WriteError),
}
