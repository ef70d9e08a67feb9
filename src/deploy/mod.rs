//! Publishing releases: for a built host whose system changed, sign a release with the next
//! generation and put it in `publish/<host>/release`; keep every published release in
//! `history/<host>.jsonl`; republish an older system as a newer generation on rollback.
//!
//! Order of effects for one release, chosen so that a crash at any instant is harmless:
//! 1. GC root `gcroots/<host>/generation-<N>` (the system cannot be collected once offered);
//! 2. the release, replaced atomically (`durable::write_atomic`: temp, fsync, rename, fsync);
//! 3. the history line, appended and fsynced;
//! 4. the running `bento serve`, if any, woken ([`wake_server`]) so that it shows the
//!    release once its closure is served without waiting for its next poll.
//!
//! A crash between 2 and 3 loses a history line, never a generation: the next generation
//! is one more than the largest of the current release and the history.
//!
//! Callers hold a [`DeployLock`] around all of it. May import: `nix`, `config`, `build`,
//! `release`, `durable`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::build::gcroot;
use crate::config::StateDir;
use crate::durable::{self, WriteError};
use crate::nix::cmd::CmdError;
use crate::nix::keys::SecretKey;
use crate::release::{Release, ReleaseError};

pub mod decide;
pub mod files;
pub mod history;
mod lock;

pub use decide::{Decision, Reason};
pub use files::{FileToDeliver, HostFiles, read_sources};
pub use history::{Commit, History, HistoryEntry};
pub use lock::DeployLock;

#[derive(Debug, Error)]
pub enum DeployError {
    #[error(
        "another deploy is running (lock {path} is held{}); wait for it to finish",
        if .holder.is_empty() { String::new() } else { format!(" by process {}", .holder) }
    )]
    Locked { path: PathBuf, holder: String },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the current release {path} is unreadable, so no generation can safely follow it: {source}; inspect or remove it"
    )]
    CurrentRelease {
        path: PathBuf,
        #[source]
        source: ReleaseError,
    },
    #[error("history {path} line {line} is damaged: {problem}; inspect or repair it")]
    History {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("cannot sign the release of host {host}: {source}")]
    Sign {
        host: String,
        #[source]
        source: ReleaseError,
    },
    #[error("generation counter of host {host} is exhausted")]
    GenerationOverflow { host: String },
    #[error("cannot keep {store_path} for host {host} (GC root {root}): {source}")]
    GcRoot {
        host: String,
        store_path: String,
        root: PathBuf,
        #[source]
        source: Box<CmdError>,
    },
    #[error("host {host} has no release yet, so there is nothing to roll back")]
    NothingPublished { host: String },
    #[error(
        "host {host} has no earlier system to roll back to (current generation {generation}, {path} lists no older distinct store path)"
    )]
    NoRollbackTarget {
        host: String,
        generation: u64,
        path: PathBuf,
    },
    #[error("cannot read {path} (host {host}, files.{name}): {source}")]
    FileSource {
        host: String,
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} (host {host}, files.{name}): {problem}")]
    Sealed {
        host: String,
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("cannot publish the files of host {host}: {source}")]
    Files {
        host: String,
        #[source]
        source: crate::files::FilesError,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What publishing did for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum DeployOutcome {
    Published {
        generation: u64,
        store_path: String,
        reason: Reason,
        /// The generation it replaces, if any.
        previous: Option<u64>,
    },
    Unchanged {
        generation: u64,
        store_path: String,
    },
}

/// Reads a host's current release without trusting it (the server's own bookkeeping);
/// `None` when it has none.
pub fn current_release(state: &StateDir, host: &str) -> Result<Option<Release>, DeployError> {
    let path = state.release(host);
    match std::fs::read(&path) {
        Ok(bytes) => Release::parse_untrusted(&bytes)
            .map(Some)
            .map_err(|source| DeployError::CurrentRelease { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DeployError::Io { path, source }),
    }
}

/// What every publication of one `bento deploy` shares.
#[derive(Debug, Clone, Copy)]
pub struct Publisher<'a> {
    pub state: &'a StateDir,
    pub key: &'a SecretKey,
    /// Creation time of the releases, Unix seconds.
    pub now: u64,
    /// GC roots kept per host (see [`prune_roots`]).
    pub keep_systems: usize,
    /// The commit the systems were built from, recorded in each history line.
    pub commit: Option<&'a Commit>,
}

impl Publisher<'_> {
    /// Publishes `store_path` and `files` for `host` if either differs from what is
    /// published (or `force`), then releases the GC roots of systems older than the newest
    /// `keep_systems`.
    pub fn publish(
        &self,
        host: &str,
        store_path: &str,
        files: &[FileToDeliver],
        force: bool,
    ) -> Result<DeployOutcome, DeployError> {
        let state = self.state;
        remove_stale_temp_files(&state.publish_dir(host));
        let (decision, files, current) = self.decide(host, store_path, files, force)?;
        match decision {
            Decision::Unchanged { generation } => Ok(DeployOutcome::Unchanged {
                generation,
                store_path: store_path.to_owned(),
            }),
            Decision::Publish { generation, reason } => {
                files.write(state, self.key, host, generation)?;
                write_release(self, host, generation, store_path, None)?;
                prune_roots(state, host, store_path, self.keep_systems);
                Ok(DeployOutcome::Published {
                    generation,
                    store_path: store_path.to_owned(),
                    reason,
                    previous: current.map(|r| r.generation),
                })
            }
        }
    }

    /// Whether [`Publisher::publish`] would publish a new release for `host` (nothing is
    /// written).
    pub fn would_publish(
        &self,
        host: &str,
        store_path: &str,
        files: &[FileToDeliver],
        force: bool,
    ) -> Result<bool, DeployError> {
        let (decision, _, _) = self.decide(host, store_path, files, force)?;
        Ok(matches!(decision, Decision::Publish { .. }))
    }

    fn decide(
        &self,
        host: &str,
        store_path: &str,
        files: &[FileToDeliver],
        force: bool,
    ) -> Result<(Decision, HostFiles, Option<Release>), DeployError> {
        let state = self.state;
        let current = current_release(state, host)?;
        let history = history::read(&state.history(host))?;
        let public = self.key.public();
        let files = HostFiles::prepare(state, host, files)?;
        let view = current.as_ref().map(|r| decide::Current {
            generation: r.generation,
            store_path: &r.store_path,
            signed_by_fleet_key: r.check_signature(&public).is_ok() && r.host == host,
            files_up_to_date: files.up_to_date(),
        });
        let decision = decide::decide(view, history.max_generation(), store_path, force)
            .ok_or_else(|| DeployError::GenerationOverflow {
                host: host.to_owned(),
            })?;
        Ok((decision, files, current))
    }

    /// Republishes the system before the current one as a new, higher generation, with
    /// today's `files` (files are never rolled back), then prunes GC roots as
    /// [`Publisher::publish`] does.
    pub fn rollback(
        &self,
        host: &str,
        files: &[FileToDeliver],
    ) -> Result<DeployOutcome, DeployError> {
        let state = self.state;
        remove_stale_temp_files(&state.publish_dir(host));
        let current =
            current_release(state, host)?.ok_or_else(|| DeployError::NothingPublished {
                host: host.to_owned(),
            })?;
        let history_path = state.history(host);
        let history = history::read(&history_path)?;
        let target =
            decide::rollback_target(&history.entries, current.generation, &current.store_path)
                .ok_or_else(|| DeployError::NoRollbackTarget {
                    host: host.to_owned(),
                    generation: current.generation,
                    path: history_path.clone(),
                })?;
        let generation =
            decide::next_generation(Some(current.generation), history.max_generation())
                .ok_or_else(|| DeployError::GenerationOverflow {
                    host: host.to_owned(),
                })?;
        HostFiles::prepare(state, host, files)?.write(state, self.key, host, generation)?;
        write_release(
            self,
            host,
            generation,
            &target.store_path,
            Some(target.of_generation),
        )?;
        prune_roots(state, host, &target.store_path, self.keep_systems);
        Ok(DeployOutcome::Published {
            generation,
            store_path: target.store_path,
            reason: Reason::Rollback,
            previous: Some(current.generation),
        })
    }
}

fn write_release(
    publisher: &Publisher<'_>,
    host: &str,
    generation: u64,
    store_path: &str,
    rollback_of: Option<u64>,
) -> Result<(), DeployError> {
    let Publisher {
        state,
        key,
        now,
        commit,
        ..
    } = *publisher;
    let release = Release::sign(host, generation, store_path, now, key).map_err(|source| {
        DeployError::Sign {
            host: host.to_owned(),
            source,
        }
    })?;
    let root = state.release_root(host, generation);
    gcroot::add_root(store_path, &root).map_err(|source| DeployError::GcRoot {
        host: host.to_owned(),
        store_path: store_path.to_owned(),
        root: root.clone(),
        source: Box::new(source),
    })?;
    let dir = state.publish_dir(host);
    std::fs::create_dir_all(&dir).map_err(|source| DeployError::Io {
        path: dir.clone(),
        source,
    })?;
    durable::write_atomic(&state.release(host), &release.to_bytes(), 0o644)?;
    history::append(
        &state.history(host),
        &HistoryEntry {
            format: history::HISTORY_FORMAT,
            generation,
            store_path: store_path.to_owned(),
            created: now,
            rollback_of,
            commit: commit.map(|c| c.id.clone()),
            dirty: commit.is_some_and(|c| c.dirty),
        },
    )?;
    tracing::info!(host, generation, store_path, "release published");
    wake_server(state);
    Ok(())
}

/// Asks the `bento serve` of `state`, if one runs, to read the publish tree now rather than
/// at its next poll (a datagram to `serve/wake.sock`; see `server::wake`). Best effort:
/// returns whether a server took it; without one, its poll finds the release.
pub fn wake_server(state: &StateDir) -> bool {
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return false;
    };
    if socket.set_nonblocking(true).is_err() {
        return false;
    }
    socket.send_to(b"refresh", state.wake_socket()).is_ok()
}

/// Removes the generation roots of `host` that [`decide::roots_to_prune`] names, so that
/// `nix-collect-garbage` may free those systems; returns how many went. Never fatal: a root
/// that cannot be read or removed is logged and only keeps its system longer.
pub fn prune_roots(state: &StateDir, host: &str, current: &str, keep_systems: usize) -> usize {
    let dir = state.gcroots_dir(host);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let roots: Vec<(u64, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let generation = name.to_str()?.strip_prefix("generation-")?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((generation, target.to_str()?.to_owned()))
        })
        .collect();
    let mut removed = 0;
    for generation in decide::roots_to_prune(&roots, current, keep_systems) {
        let root = state.release_root(host, generation);
        match std::fs::remove_file(&root) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(root = %root.display(), error = %e, "cannot remove an old GC root; its system is kept")
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            host,
            removed,
            keep_systems,
            "released the GC roots of older systems; nix-collect-garbage may now free them"
        );
    }
    removed
}

/// Removes temp files a killed deploy left beside a release (`.release.tmp-<pid>`, the
/// names `durable::write_atomic` uses), whether or not the host gets a new release now.
/// Safe because the caller holds the deploy lock.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".release.tmp-") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a temp file left by an interrupted deploy")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temp file")
                }
            }
        }
    }
}
