//! The follower: fetch the branch, and for a commit not deployed yet, check it out (once,
//! into `STATE_DIR/git/checkouts/<commit>`), load its fleet file with the server's state
//! directory, signing key and git settings in force, build the hosts the server serves, and
//! deploy what built through `rollout::drive::Deploy` (its waves, its rules for a rollout
//! still going). Hosts that fail to build keep their release and are listed in the record;
//! the others are deployed. A commit that must wait for a rollout is built once and deployed
//! when the rollout lets it; a newer commit replaces it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::build::{self, HostResult, Options, Status};
use crate::config::{Fleet, GitSource, Host};
use crate::deploy::{Commit, DeployLock};
use crate::nix::keys::SecretKey;
use crate::rollout::RolloutError;
use crate::rollout::drive::{Built, Deploy, Placed};

use super::GitopsError;
use super::git;
use super::record::{self, FollowRecord};

/// Checkouts kept besides the one the current rollout reads its files from.
pub const KEEP_CHECKOUTS: usize = 3;

/// What the follower needs.
#[derive(Debug, Clone)]
pub struct Follower {
    /// The server's fleet: its state directory, signing key, git settings, and the hosts it
    /// serves.
    pub server: Fleet,
    pub key: SecretKey,
    /// Notified by the hook: fetch now.
    pub fetch_now: Arc<Notify>,
}

/// A commit checked out and built, not deployed yet.
struct BuiltCommit {
    commit: String,
    fleet: Fleet,
    results: Vec<HostResult>,
}

/// Follows the branch until `shutdown`.
pub async fn follow(follower: Follower, shutdown: CancellationToken) {
    let Some(source) = follower.server.git.clone() else {
        tracing::error!(file = %follower.server.file.display(), "no [fleet] git to follow");
        return;
    };
    let state = follower.server.state.clone();
    let mut record = record::load(&state)
        .filter(|r| r.url == source.url && r.branch == source.branch)
        .unwrap_or_else(|| FollowRecord::new(&source.url, &source.branch));
    let mut built: Option<BuiltCommit> = None;
    tracing::info!(url = %source.url, branch = %source.branch, interval_secs = source.interval_secs, "following");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = once(&follower, &source, &mut record, &mut built) => {}
        }
        if let Err(e) = record::save(&state, &record) {
            tracing::error!(error = %e, "cannot write the follow record");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(source.interval_secs)) => {}
            () = follower.fetch_now.notified() => {}
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..8).unwrap_or(commit)
}

/// One fetch, and the build and deploy of a new commit.
async fn once(
    f: &Follower,
    source: &GitSource,
    record: &mut FollowRecord,
    built: &mut Option<BuiltCommit>,
) {
    let state = &f.server.state;
    let now = crate::clock::unix_now();
    record.last_fetch = Some(now);
    let mirror = state.git_mirror();
    if let Some(dir) = mirror.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        record.fetch_error = Some(format!("cannot create {}: {e}", dir.display()));
        return;
    }
    let head = match git::fetch(&mirror, &source.url, &source.branch).await {
        Ok(head) => head,
        Err(e) => {
            let text = e.to_string();
            if record.fetch_error.as_deref() != Some(&text) {
                record.event(now, format!("fetch failed: {text}"));
            }
            record.fetch_error = Some(text);
            return;
        }
    };
    record.fetch_error = None;
    if record.head.as_deref() != Some(&head) {
        record.head = Some(head.clone());
        record.head_subject = git::subject(&mirror, &head).await;
        let subject = record.head_subject.clone().unwrap_or_default();
        record.event(now, format!("new commit {}: {subject}", short(&head)));
    }
    if record.deployed.as_deref() == Some(&head) {
        return;
    }
    if built.as_ref().is_none_or(|b| b.commit != head) {
        *built = None;
        match prepare(f, source, &head, record).await {
            Ok(b) => *built = Some(b),
            Err(e) => {
                let text = e.to_string();
                if record.pending.as_deref() != Some(&text) {
                    record.event(now, text.clone());
                }
                record.pending = Some(text);
                return;
            }
        }
    }
    let Some(b) = built.as_ref() else { return };
    match deploy(f, b).await {
        Ok(summary) => {
            let now = crate::clock::unix_now();
            record.deployed = Some(head.clone());
            record.deployed_at = Some(now);
            record.pending = None;
            record.failures = summary.failures;
            record.event(
                now,
                format!("deployed commit {}: {}", short(&head), summary.text),
            );
            *built = None;
            remove_old_checkouts(f);
        }
        Err(why) => {
            if record.pending.as_deref() != Some(&why) {
                record.event(now, format!("commit {} waits: {why}", short(&head)));
            }
            record.pending = Some(why);
        }
    }
}

/// Checks `commit` out (once), loads its fleet file and builds the hosts the server serves.
async fn prepare(
    f: &Follower,
    source: &GitSource,
    commit: &str,
    record: &mut FollowRecord,
) -> Result<BuiltCommit, GitopsError> {
    let state = &f.server.state;
    let dir = state.git_checkouts().join(commit);
    if !dir.join(".git").exists() {
        let tmp = state.git_checkouts().join(format!(".{commit}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(state.git_checkouts()).map_err(|e| GitopsError::Io {
            path: state.git_checkouts(),
            source: e,
        })?;
        git::checkout(&state.git_mirror(), &tmp, commit)
            .await
            .map_err(|source| GitopsError::Checkout {
                commit: commit.to_owned(),
                source,
            })?;
        std::fs::rename(&tmp, &dir).map_err(|source| GitopsError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let fleet = commit_fleet(&dir.join(&source.fleet_file), &f.server, commit)?;
    let (hosts, unserved): (Vec<&Host>, Vec<&Host>) = fleet
        .hosts
        .values()
        .partition(|h| f.server.hosts.contains_key(&h.name));
    if !unserved.is_empty() {
        let names: Vec<&str> = unserved.iter().map(|h| h.name.as_str()).collect();
        tracing::warn!(
            commit,
            hosts = %names.join(", "),
            server_fleet_file = %f.server.file.display(),
            "hosts of the commit's fleet file that this server does not serve are not built; add them to the server's fleet file"
        );
    }
    let hosts: Vec<Host> = hosts.into_iter().cloned().collect();
    record.pending = Some(format!(
        "building commit {} ({} hosts)",
        short(commit),
        hosts.len()
    ));
    if let Err(e) = record::save(state, record) {
        tracing::warn!(error = %e, "cannot write the follow record");
    }
    let options = Options {
        jobs: fleet
            .jobs
            .or(f.server.jobs)
            .unwrap_or_else(build::machine_jobs),
        dry_run: false,
    };
    let results = build::build_hosts(&fleet.state, &hosts, options, Arc::new(|_| {})).await;
    Ok(BuiltCommit {
        commit: commit.to_owned(),
        fleet,
        results,
    })
}

/// The fleet file of a checked-out commit, with the server's state directory, signing key
/// and git settings in force (a commit cannot move them).
pub fn commit_fleet(path: &Path, server: &Fleet, commit: &str) -> Result<Fleet, GitopsError> {
    let mut fleet = Fleet::load(path).map_err(|e| GitopsError::FleetFile {
        commit: commit.to_owned(),
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    fleet.state = server.state.clone();
    fleet.signing_key = server.signing_key.clone();
    fleet.git = server.git.clone();
    Ok(fleet)
}

struct Summary {
    text: String,
    failures: std::collections::BTreeMap<String, String>,
}

/// Deploys what built; `Err` with the reason when the deploy must wait (a rollout still
/// going, another deploy) or failed as a whole.
async fn deploy(f: &Follower, b: &BuiltCommit) -> Result<Summary, String> {
    let mut failures = std::collections::BTreeMap::new();
    let mut ready = Vec::new();
    for r in &b.results {
        match &r.status {
            Status::Built { store_path, .. } => ready.push(Built {
                host: r.host.clone(),
                store_path: store_path.clone(),
            }),
            Status::Failed { phase, error, .. } => {
                let first = error.lines().next().unwrap_or_default();
                failures.insert(r.host.clone(), format!("{phase} failed: {first}"));
            }
            Status::Evaluated { .. } => {}
        }
    }
    let (fleet, key) = (b.fleet.clone(), f.key.clone());
    let commit = Commit {
        id: b.commit.clone(),
        dirty: false,
    };
    let ran = tokio::task::spawn_blocking(move || {
        let _lock = DeployLock::acquire_waiting(&fleet.state, Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        let deploy = Deploy {
            fleet: &fleet,
            key: &key,
            commit: Some(&commit),
            policy: fleet.rollout.as_ref(),
            supersede: false,
            force: false,
        };
        deploy
            .run(&ready, crate::clock::unix_now())
            .map_err(|e| match e {
                RolloutError::Busy(why) => why,
                other => format!("not deployed: {other}"),
            })
    })
    .await
    .map_err(|e| format!("the deploy task ended abnormally: {e}"))??;
    let (mut now, mut later, mut unchanged) = (0, 0, 0);
    for h in &ran.hosts {
        match &h.outcome {
            Ok(Placed::Now { release }) => match release {
                crate::deploy::DeployOutcome::Published { .. } => now += 1,
                crate::deploy::DeployOutcome::Unchanged { .. } => unchanged += 1,
            },
            Ok(Placed::Later { .. }) => later += 1,
            Err(e) => {
                failures.insert(h.host.clone(), format!("not published: {e}"));
            }
        }
    }
    let mut text = format!("{now} published, {later} in later waves, {unchanged} unchanged");
    if let Some(r) = &ran.rollout {
        text.push_str(&format!("; {}", r.headline()));
    }
    if !failures.is_empty() {
        let names: Vec<&str> = failures.keys().map(String::as_str).collect();
        text.push_str(&format!("; failed for {}", names.join(", ")));
    }
    Ok(Summary { text, failures })
}

/// Removes checkouts beyond the newest [`KEEP_CHECKOUTS`], never the one the current
/// rollout reads its files from.
fn remove_old_checkouts(f: &Follower) {
    let dir = f.server.state.git_checkouts();
    let in_use: Option<PathBuf> = crate::rollout::record::load(&f.server.state)
        .ok()
        .flatten()
        .filter(|r| !r.state.is_finished())
        .map(|r| r.source);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut checkouts: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    checkouts.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, path) in checkouts.into_iter().skip(KEEP_CHECKOUTS) {
        if in_use.as_ref().is_some_and(|s| s.starts_with(&path)) {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old checkout");
        }
    }
}
