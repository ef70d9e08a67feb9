//! The effects of rollouts, around the pure `decide`: deploying built systems through the
//! policy (the one entry `bento deploy` and the GitOps follower share), publishing a wave,
//! observing its hosts through `bento status`'s own derivation, and `advance`, which
//! `bento serve` runs every few seconds ([`follow`]).
//!
//! Crash safety: each step is recorded before its effects (the current wave moves on in
//! the record, then its releases are published, then the record says they were), and
//! publishing is idempotent, so a process killed at any instant is continued by the next
//! `advance` without publishing a wave twice or skipping one.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::build::gcroot;
use crate::config::{Fleet, RolloutPolicy, StateDir, Supersede};
use crate::deploy::{self, Commit, DeployError, DeployLock, DeployOutcome, Publisher};
use crate::nix::keys::SecretKey;
use crate::status::{self, HostState, HostStatus};

use super::RolloutError;
use super::decide::{self, NewDeploy, Step};
use super::plan::{self, Origin, Planned};
use super::record::{self, Progress, Rollout, RolloutState};

/// How often `bento serve` looks at the current wave.
pub const ADVANCE_EVERY: Duration = Duration::from_secs(2);

/// A built system to deploy.
#[derive(Debug, Clone)]
pub struct Built {
    pub host: String,
    pub store_path: String,
}

/// Where one host of a deploy went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "placed", rename_all = "kebab-case")]
pub enum Placed {
    /// Published now, or unchanged.
    Now { release: DeployOutcome },
    /// Published when its wave starts.
    Later { wave: String, number: usize },
}

/// One host of a deploy.
#[derive(Debug, Clone)]
pub struct HostDeploy {
    pub host: String,
    pub outcome: Result<Placed, String>,
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub hosts: Vec<HostDeploy>,
    /// The rollout it started, if its hosts go in waves.
    pub rollout: Option<Rollout>,
    /// The unfinished rollout it replaced.
    pub replaced: Option<Rollout>,
}

/// A deploy of built systems.
#[derive(Debug, Clone, Copy)]
pub struct Deploy<'a> {
    /// The fleet the systems were built from: its hosts' files and its state directory.
    pub fleet: &'a Fleet,
    pub key: &'a SecretKey,
    pub commit: Option<&'a Commit>,
    /// The waves; `None` publishes every host at once.
    pub policy: Option<&'a RolloutPolicy>,
    /// Replace a running or paused rollout even if the policy says to wait.
    pub supersede: bool,
    /// Publish hosts whose system did not change too.
    pub force: bool,
}

impl Deploy<'_> {
    fn publisher(&self, now: u64) -> Publisher<'_> {
        Publisher {
            state: &self.fleet.state,
            key: self.key,
            now,
            keep_systems: self.fleet.keep_systems,
            commit: self.commit,
        }
    }

    /// Deploys `built`: hosts whose release would not change are left alone; the others are
    /// published at once, or go through the waves of a new rollout whose first wave is
    /// published now. What happens to an unfinished rollout is `decide::new_deploy`'s call.
    /// The caller holds the deploy lock.
    pub fn run(&self, built: &[Built], now: u64) -> Result<Deployed, RolloutError> {
        let state = &self.fleet.state;
        let current = record::load(state)?;
        let supersede = self.policy.map_or(Supersede::Wait, |p| p.supersede);
        let decision = decide::new_deploy(current.as_ref(), supersede, self.supersede);
        if let NewDeploy::Refuse(why) = decision {
            return Err(RolloutError::Busy(why));
        }
        let publisher = self.publisher(now);
        let mut hosts = Vec::new();
        let mut changing: Vec<(&Built, Vec<deploy::FileToDeliver>)> = Vec::new();
        for b in built {
            let checked = deploy::read_sources(self.fleet, &b.host).and_then(|files| {
                let changes =
                    publisher.would_publish(&b.host, &b.store_path, &files, self.force)?;
                Ok((files, changes))
            });
            match checked {
                Ok((files, true)) => changing.push((b, files)),
                Ok((files, false)) => hosts.push(publish_now(&publisher, b, &files, self.force)),
                Err(e) => hosts.push(HostDeploy {
                    host: b.host.clone(),
                    outcome: Err(e.to_string()),
                }),
            }
        }
        if changing.is_empty() {
            return Ok(Deployed {
                hosts,
                rollout: None,
                replaced: None,
            });
        }
        let previous_id = current.as_ref().map(|r| r.id);
        let replaced = current.filter(|r| !r.state.is_finished()).map(|mut old| {
            old.state = RolloutState::Superseded;
            old.reason = Some("replaced by a newer deploy".into());
            old.event(now, "replaced by a newer deploy".into());
            old
        });
        let Some(policy) = self.policy else {
            for (b, files) in &changing {
                hosts.push(publish_now(&publisher, b, files, self.force));
            }
            if let Some(old) = &replaced {
                record::archive(state, old)?;
                record::save(state, old)?;
            }
            return Ok(Deployed {
                hosts,
                rollout: None,
                replaced,
            });
        };

        let planned: Vec<Planned> = changing
            .iter()
            .filter_map(|(b, _)| {
                let host = self.fleet.hosts.get(&b.host)?;
                let previous = deploy::current_release(state, &b.host)
                    .ok()
                    .flatten()
                    .map(|r| r.generation);
                Some(Planned {
                    host,
                    store_path: b.store_path.clone(),
                    previous,
                })
            })
            .collect();
        let origin = Origin {
            id: plan::next_id(previous_id, crate::clock::unix_now_ms()),
            now,
            commit: self.commit.cloned(),
            source: self.fleet.file.clone(),
            force: self.force,
        };
        let mut rollout = plan::plan(origin, policy, &planned)?;
        let names: Vec<String> = rollout
            .waves
            .iter()
            .map(|w| format!("{} ({})", w.name, w.targets.len()))
            .collect();
        rollout.event(
            now,
            format!(
                "started: {} hosts in {} waves: {}",
                planned.len(),
                rollout.waves.len(),
                names.join(", ")
            ),
        );
        if decision == NewDeploy::Amend
            && let Some(old) = &replaced
        {
            let why = old.reason_before_replacement();
            rollout.state = RolloutState::Halted;
            rollout.reason = Some(format!(
                "amends rollout {}, which halted ({why}): its first wave gets the new systems; `bento rollout resume` goes on",
                old.id
            ));
            rollout.event(now, format!("amends halted rollout {}", old.id));
        }
        if let Some(old) = &replaced {
            record::archive(state, old)?;
        }
        keep_later_targets(state, &rollout);
        // Recorded before the first wave is published: if this process dies in between,
        // `bento serve` publishes it (or `resume` does, for an amended rollout).
        record::save(state, &rollout)?;
        let published = publish_wave(Ok(self.fleet), &publisher, &mut rollout, 0, now);
        record::save(state, &rollout)?;
        hosts.extend(published);
        for (number, wave) in rollout.waves.iter().enumerate().skip(1) {
            for t in &wave.targets {
                hosts.push(HostDeploy {
                    host: t.host.clone(),
                    outcome: Ok(Placed::Later {
                        wave: wave.name.clone(),
                        number: number + 1,
                    }),
                });
            }
        }
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(Deployed {
            hosts,
            rollout: Some(rollout),
            replaced,
        })
    }
}

impl Rollout {
    /// Why it halted, for the rollout that amends it (its reason before it was replaced).
    fn reason_before_replacement(&self) -> String {
        self.events
            .iter()
            .rev()
            .find_map(|e| e.text.strip_prefix("halted: "))
            .unwrap_or("no reason recorded")
            .to_owned()
    }
}

fn publish_now(
    publisher: &Publisher<'_>,
    b: &Built,
    files: &[deploy::FileToDeliver],
    force: bool,
) -> HostDeploy {
    HostDeploy {
        host: b.host.clone(),
        outcome: publisher
            .publish(&b.host, &b.store_path, files, force)
            .map(|release| Placed::Now { release })
            .map_err(|e| e.to_string()),
    }
}

/// Publishes wave `i`'s releases and marks it started. A host that cannot be published
/// counts as failed; one whose release is already there is counted only if this rollout
/// published it (a process killed mid-wave), else it is unchanged.
fn publish_wave(
    fleet: Result<&Fleet, String>,
    publisher: &Publisher<'_>,
    rollout: &mut Rollout,
    i: usize,
    now: u64,
) -> Vec<HostDeploy> {
    let force = rollout.force;
    let Some(wave) = rollout.waves.get_mut(i) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in &mut wave.targets {
        let published = fleet.clone().and_then(|fleet| {
            deploy::read_sources(fleet, &t.host)
                .and_then(|files| publisher.publish(&t.host, &t.store_path, &files, force))
                .map_err(|e| e.to_string())
        });
        match &published {
            Ok(DeployOutcome::Published { generation, .. }) => {
                t.generation = Some(*generation);
                t.progress = Progress::Waiting;
                t.detail = None;
            }
            Ok(DeployOutcome::Unchanged { generation, .. }) => {
                let ours = t.previous.is_none_or(|p| *generation > p);
                t.generation = Some(*generation);
                t.progress = if ours {
                    Progress::Waiting
                } else {
                    Progress::Unchanged
                };
            }
            Err(e) => {
                t.progress = Progress::Failed;
                t.detail = Some(format!("not published: {e}"));
            }
        }
        let _ = std::fs::remove_file(publisher.state.rollout_root(&t.host));
        out.push(HostDeploy {
            host: t.host.clone(),
            outcome: published.map(|release| Placed::Now { release }),
        });
    }
    wave.started = Some(now);
    wave.met = None;
    out
}

/// Keeps the systems of waves not started from the garbage collector until then.
fn keep_later_targets(state: &StateDir, rollout: &Rollout) {
    for t in rollout.waves.iter().skip(1).flat_map(|w| &w.targets) {
        if let Err(e) = gcroot::add_root(&t.store_path, &state.rollout_root(&t.host)) {
            tracing::warn!(host = %t.host, error = %e, "cannot keep the system of a later wave from the garbage collector");
        }
    }
}

/// Releases what [`keep_later_targets`] kept, once the rollout has ended.
fn release_later_targets(state: &StateDir, rollout: &Rollout) {
    for t in rollout.waves.iter().flat_map(|w| &w.targets) {
        let _ = std::fs::remove_file(state.rollout_root(&t.host));
    }
}

/// What a host's status means for the rollout, with a detail for operators.
pub fn progress_of(status: &HostStatus) -> (Progress, Option<String>) {
    let state = status.state;
    match state {
        HostState::UpToDate => (Progress::Succeeded, None),
        HostState::ActivationFailed
        | HostState::RolledBack
        | HostState::RollbackFailed
        | HostState::Refused => (
            Progress::Failed,
            Some(format!(
                "{}: {}",
                state.as_str(),
                status.last_error.as_deref().unwrap_or("no reason given")
            )),
        ),
        _ => (Progress::Waiting, Some(state.as_str().to_owned())),
    }
}

/// Reads where the current wave's hosts stand into the record. A host that succeeded stays
/// succeeded unless it reports a failure (a host that goes quiet during the soak is not a
/// failure); hosts that could not be published keep their failure.
fn observe(rollout: &mut Rollout, state: &StateDir, stale_after: u64, now: u64) {
    let Some(wave) = rollout.waves.get_mut(rollout.wave) else {
        return;
    };
    if wave.started.is_none() {
        return;
    }
    for t in &mut wave.targets {
        if t.generation.is_none() || t.progress == Progress::Unchanged {
            continue;
        }
        match status::collect_host(state, &t.host, now, stale_after) {
            Ok(s) => {
                let (progress, detail) = progress_of(&s);
                if !(t.progress == Progress::Succeeded && progress == Progress::Waiting) {
                    t.progress = progress;
                    t.detail = detail;
                }
            }
            Err(e) => t.detail = Some(format!("cannot read its status: {e}")),
        }
    }
}

/// Loads the fleet file a rollout was deployed from, in the server's state directory.
fn source_fleet(rollout: &Rollout, state: &StateDir) -> Result<Fleet, String> {
    let mut fleet = Fleet::load(&rollout.source).map_err(|source| {
        RolloutError::Source {
            path: rollout.source.clone(),
            source,
        }
        .to_string()
    })?;
    fleet.state = state.clone();
    Ok(fleet)
}

/// One look at the current rollout: observe its wave, then take the steps `decide::step`
/// says (publish the next wave, start a soak, complete, halt), recording each. Does
/// nothing (`Ok(None)`) while a deploy holds the lock.
pub fn advance(
    state: &StateDir,
    key: &SecretKey,
    stale_after: u64,
    now: u64,
) -> Result<Option<Rollout>, RolloutError> {
    let _lock = match DeployLock::acquire(state) {
        Ok(lock) => lock,
        Err(DeployError::Locked { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(mut r) = record::load(state)? else {
        return Ok(None);
    };
    if r.state.is_finished() {
        return Ok(Some(r));
    }
    let before = r.clone();
    observe(&mut r, state, stale_after, now);
    for _ in 0..=r.waves.len() + 1 {
        match decide::step(&r, now) {
            Step::Wait => break,
            Step::StartSoak => {
                let t = r
                    .current()
                    .map(|w| (w.name.clone(), decide::tally(w, false), w.soak_secs));
                if let Some(w) = r.waves.get_mut(r.wave) {
                    w.met = Some(now);
                }
                if let Some((name, t, soak)) = t {
                    r.event(
                        now,
                        format!(
                            "wave {name}: {} of {} hosts succeeded; soaking {soak} s",
                            t.succeeded, t.counted
                        ),
                    );
                }
            }
            Step::Publish(i) => {
                pass_current(&mut r, i, now);
                r.wave = i;
                record::save(state, &r)?;
                let fleet = source_fleet(&r, state);
                let commit = r.commit.clone();
                let publisher = Publisher {
                    state,
                    key,
                    now,
                    keep_systems: fleet.as_ref().map_or(1, |f| f.keep_systems),
                    commit: commit.as_ref(),
                };
                let done = publish_wave(
                    fleet.as_ref().map_err(Clone::clone),
                    &publisher,
                    &mut r,
                    i,
                    now,
                );
                let failed = done.iter().filter(|h| h.outcome.is_err()).count();
                let name = r.waves.get(i).map(|w| w.name.clone()).unwrap_or_default();
                r.event(
                    now,
                    format!(
                        "wave {} of {} ({name}) started: {} hosts published{}",
                        i + 1,
                        r.waves.len(),
                        done.len() - failed,
                        if failed > 0 {
                            format!(", {failed} could not be")
                        } else {
                            String::new()
                        }
                    ),
                );
                break;
            }
            Step::Complete => {
                let last = r.waves.len();
                pass_current(&mut r, last, now);
                r.state = RolloutState::Completed;
                r.reason = None;
                r.event(now, "completed: every wave passed".into());
                release_later_targets(state, &r);
                break;
            }
            Step::Halt(reason) => {
                r.state = RolloutState::Halted;
                r.reason = Some(reason.clone());
                r.event(now, format!("halted: {reason}"));
                break;
            }
        }
    }
    if r != before {
        record::save(state, &r)?;
    }
    Ok(Some(r))
}

/// Marks the current wave passed when the rollout moves past it (to wave `next`).
fn pass_current(r: &mut Rollout, next: usize, now: u64) {
    let current = r.wave;
    if next == current {
        return;
    }
    if let Some(w) = r.waves.get_mut(current)
        && w.started.is_some()
        && w.passed.is_none()
    {
        w.passed = Some(now);
        let name = w.name.clone();
        r.event(now, format!("wave {} ({name}) passed", current + 1));
    }
}

/// Applies an operator's command to the current rollout under the deploy lock (waiting a
/// little for a publishing server to let go); returns the rollout as it is now.
pub fn command(
    state: &StateDir,
    command: decide::Command,
    now: u64,
) -> Result<Rollout, RolloutError> {
    let _lock = DeployLock::acquire_waiting(state, Duration::from_secs(30))?;
    let mut r = record::load(state)?.ok_or_else(|| RolloutError::None {
        path: state.rollout(),
    })?;
    decide::command(&mut r, command, now).map_err(RolloutError::Refused)?;
    if command == decide::Command::Abort {
        release_later_targets(state, &r);
    }
    record::save(state, &r)?;
    Ok(r)
}

/// Advances the current rollout every [`ADVANCE_EVERY`] until `shutdown` (run by
/// `bento serve`). A failure is logged once per distinct message.
pub async fn follow(
    state: StateDir,
    key: SecretKey,
    stale_after: u64,
    shutdown: CancellationToken,
) {
    let mut said = String::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ADVANCE_EVERY) => {}
        }
        let (state, key) = (state.clone(), key.clone());
        let ran = tokio::task::spawn_blocking(move || {
            advance(&state, &key, stale_after, crate::clock::unix_now())
        })
        .await;
        let message = match ran {
            Ok(Ok(_)) => String::new(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the rollout task ended abnormally: {e}"),
        };
        if !message.is_empty() && message != said {
            tracing::error!(error = %message, "cannot advance the rollout; retrying");
        }
        said = message;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::view::summarize;

    #[test]
    fn host_states_map_to_progress() {
        let mut s = summarize("web1", None, &[], None, 100, 300);
        let cases = [
            (HostState::UpToDate, Progress::Succeeded, None),
            (
                HostState::ActivationFailed,
                Progress::Failed,
                Some("activation-failed: boom"),
            ),
            (
                HostState::RolledBack,
                Progress::Failed,
                Some("rolled-back: boom"),
            ),
            (HostState::Refused, Progress::Failed, Some("refused: boom")),
            (
                HostState::RollbackFailed,
                Progress::Failed,
                Some("rollback-failed: boom"),
            ),
            (HostState::Pending, Progress::Waiting, Some("pending")),
            (
                HostState::CopyFailed,
                Progress::Waiting,
                Some("copy-failed"),
            ),
            (
                HostState::RetryLater,
                Progress::Waiting,
                Some("retry-later"),
            ),
            (HostState::Stale, Progress::Waiting, Some("stale")),
        ];
        s.last_error = Some("boom".into());
        for (state, progress, detail) in cases {
            s.state = state;
            assert_eq!(
                progress_of(&s),
                (progress, detail.map(str::to_owned)),
                "{state:?}"
            );
        }
    }
}
