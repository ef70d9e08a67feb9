//! Where every host stands: derived from releases, reports and the server's last contact.
//!
//! `derive` (the state of one host) and `view` (the line `bento status` shows, and its JSON)
//! are pure, as is `sentence` (a failure's reason in one line); `collect` reads the state directory; `metrics` renders the fleet for
//! Prometheus; `diff` compares two system closures package by package.
//!
//! May import: `config` (the state directory layout), `deploy` (release history, read
//! only), `release`, `report`, `nix`, `clock`. Never builds or publishes.

use std::path::PathBuf;

use thiserror::Error;

pub mod collect;
pub mod derive;
pub mod diff;
pub mod metrics;
mod pages;
pub mod sentence;
pub mod source;
pub mod view;
pub mod web;

pub use collect::{collect, collect_host};
pub use derive::HostState;
pub use source::StatusSource;
pub use view::{FleetStatus, HostStatus, SCHEMA};

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("release of host {host} at {path} is unreadable: {problem}")]
    Release {
        host: String,
        path: PathBuf,
        problem: String,
    },
    #[error("release history of host {host}: {problem}")]
    History { host: String, problem: String },
    #[error("cannot read the closure of {path}: {problem}")]
    Closure { path: String, problem: String },
}
