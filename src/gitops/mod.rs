//! GitOps on the server: `bento serve --follow` fetches the branch `[fleet] git` names, every
//! `interval_secs` and when `POST /hooks/git` says so, checks each new commit out into the
//! state directory, builds it and deploys it through the rollout policy of the commit's own
//! fleet file. See `docs/gitops.md`.
//!
//! - `git`: the git commands (the one runner, never a shell): fetch, checkout, describe;
//! - `record`: `git/follow.json`, what the follower did, for status and the dashboard;
//! - `follow`: the loop;
//! - `hook`: the push hook's endpoint, with its shared secret.
//!
//! May import: `nix` (the runner, keys), `config`, `build`, `deploy`, `rollout`, `durable`,
//! `clock`.

use std::path::PathBuf;

use thiserror::Error;

pub mod follow;
pub mod git;
pub mod hook;
pub mod record;

pub use follow::{Follower, follow};
pub use hook::HookSecret;
pub use record::FollowRecord;

#[derive(Debug, Error)]
pub enum GitopsError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the git hook's secret in {path} {problem}")]
    HookSecret { path: PathBuf, problem: String },
    #[error(
        "{path} has no [fleet] git = {{ url = \"...\", branch = \"...\" }}: there is nothing to follow"
    )]
    NotConfigured { path: PathBuf },
    #[error("commit {commit}: the fleet file {path} does not load: {problem}")]
    FleetFile {
        commit: String,
        path: PathBuf,
        problem: String,
    },
    #[error("commit {commit} cannot be checked out: {source}")]
    Checkout {
        commit: String,
        #[source]
        source: crate::nix::cmd::CmdError,
    },
}
