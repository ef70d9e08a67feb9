//! One attempt of the agent: recover an unfinished activation (`cycle::recover`), fetch the
//! release, verify it, copy the closure, activate, confirm or roll back, and queue a report.
//! The decisions are in `decide`; this file only sequences effects and writes the journal
//! before each step that changes the system.

use std::time::{Duration, Instant};

use thiserror::Error;

use super::activate::{self, Purpose};
use super::config::{ActivationAction, Agent};
use super::decide::{self, Action, Confirm, Phase, Plan, Retry};
use super::deliver::{self, Delivered, Places};
use super::files_dir;
use super::journal::{InFlight, Journal, JournalError};
use super::link::Link;
use super::outbox::{self, OutboxError};
use super::system::{self, SystemError};
use crate::clock::{unix_now, unix_now_ms};
use crate::release::{self, Expectation, Release};
use crate::report::{self, Outcome, Report, Timings};

#[derive(Debug, Error)]
pub enum CycleError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot fetch the release from {server}: {message}")]
    Fetch { server: String, message: String },
}

/// How an attempt ended, for the exit code and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Nothing to do (same generation, already failed, waiting to retry).
    Idle,
    /// An attempt ran and was reported with this outcome.
    Reported(Outcome),
}

/// The log and timings of one attempt, turned into a report at the end.
struct Attempt {
    started_ms: u64,
    log: String,
    timings: Timings,
    progress: Progress,
}

/// Where an attempt's log lines are also sent as they happen (`bento agent trigger`).
pub type Progress = tokio::sync::broadcast::Sender<String>;

impl Attempt {
    fn new(progress: &Progress) -> Self {
        Attempt {
            started_ms: unix_now_ms(),
            log: String::new(),
            timings: Timings::default(),
            progress: progress.clone(),
        }
    }

    fn note(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        tracing::info!("{line}");
        // Nobody listening is fine.
        let _ = self.progress.send(line.to_owned());
        let t = unix_now_ms().saturating_sub(self.started_ms);
        self.log
            .push_str(&format!("[{:>4}.{:03}s] {line}\n", t / 1000, t % 1000));
    }

    fn report(
        self,
        agent: &Agent,
        generation: u64,
        wanted: Option<&str>,
        outcome: Outcome,
        reason: Option<String>,
    ) -> Report {
        Report {
            format: report::FORMAT,
            host: agent.host.clone(),
            generation,
            wanted: wanted.map(str::to_owned),
            running: system::running_system(&agent.current_system),
            outcome,
            reason,
            started_ms: self.started_ms,
            finished_ms: unix_now_ms(),
            timings: self.timings,
            log: self.log,
        }
    }
}

/// What an attempt is about: a release's generation and the system it names.
#[derive(Debug, Clone)]
struct Target {
    generation: u64,
    wanted: String,
}

/// One run of the agent: its configuration, its link to the server and its journal, which
/// every step reads and updates.
struct Cycle<'a, L> {
    agent: &'a Agent,
    link: &'a L,
    journal: Journal,
}

/// Why the files of a release were not installed: the outcome to report and its reason.
struct NotDelivered {
    outcome: Outcome,
    reason: String,
}

/// How long an interim report may take; it must never delay a rollback.
const INTERIM_TIMEOUT: Duration = Duration::from_secs(2);

fn ms(since: Instant) -> Option<u64> {
    Some(since.elapsed().as_millis() as u64)
}

/// Runs one attempt. The caller holds the agent lock.
pub async fn run_once<L: Link + Sync>(
    agent: &Agent,
    link: &L,
    progress: &Progress,
) -> Result<Ended, CycleError> {
    let dir = &agent.state_dir;
    let mut cycle = Cycle {
        agent,
        link,
        journal: Journal::load(dir)?,
    };
    // Reports from earlier attempts first: the server learns what happened in order.
    outbox::flush(dir, link).await?;
    // An attempt whose agent was killed before it ended: its outcome is this run's, when
    // this run finds nothing more to do on that generation.
    let untold = cycle.journal.untold.take();
    if untold.is_some() {
        cycle.journal.save(dir)?;
    }
    cycle.put_files_back();

    if let Some(flight) = cycle.journal.in_flight.clone() {
        let ended = cycle.recover(flight, progress).await?;
        if ended != Ended::Idle {
            return Ok(ended);
        }
    }

    let bytes = link.fetch_release().await.map_err(|e| CycleError::Fetch {
        server: agent.server.clone(),
        message: e.0,
    })?;
    let untrusted_generation = Release::parse_untrusted(&bytes)
        .map(|r| r.generation)
        .unwrap_or(0);
    if cycle.journal.last_seen != Some(untrusted_generation) {
        cycle.journal.last_seen = Some(untrusted_generation);
        cycle.journal.save(dir)?;
    }
    let idle = || match decide::idle_result(untold, untrusted_generation) {
        Some(outcome) => Ended::Reported(outcome),
        None => Ended::Idle,
    };
    if decide::plan(untrusted_generation, &cycle.journal.memory()) == Plan::Idle {
        return Ok(idle());
    }
    let mut attempt = Attempt::new(progress);
    let expect = Expectation {
        key: &agent.fleet_key,
        host: &agent.host,
        last_applied: cycle.journal.last_applied,
    };
    let release = match release::verify(&bytes, expect) {
        Ok(r) => r,
        Err(e) => {
            attempt.note(format!("release refused: {e}"));
            let r = attempt.report(
                agent,
                untrusted_generation,
                None,
                Outcome::Refused,
                Some(e.to_string()),
            );
            return cycle.finish(r).await;
        }
    };
    let running = system::running_system(&agent.current_system);
    let target = Target {
        generation: release.generation,
        wanted: release.store_path,
    };
    match decide::action(
        target.generation,
        &target.wanted,
        running.as_deref(),
        &cycle.journal.memory(),
        unix_now(),
    ) {
        Action::SkipFailed | Action::WaitRetry { .. } => Ok(idle()),
        Action::AlreadyRunning => {
            attempt.note(format!(
                "generation {}: {} already runs",
                target.generation, target.wanted
            ));
            if let Err(NotDelivered { outcome, reason }) =
                cycle.deliver_files(&mut attempt, &target).await
            {
                let r = attempt.report(
                    agent,
                    target.generation,
                    Some(&target.wanted),
                    outcome,
                    Some(reason),
                );
                return cycle.finish(r).await;
            }
            cycle.journal.last_applied = Some(target.generation);
            cycle.journal.retry = None;
            cycle.journal.save(dir)?;
            let r = attempt.report(
                agent,
                target.generation,
                Some(&target.wanted),
                Outcome::UpToDate,
                None,
            );
            cycle.finish(r).await
        }
        Action::Apply => cycle.apply(attempt, &target, running).await,
    }
}

impl<'a, L: Link + Sync> Cycle<'a, L> {
    /// Puts back delivered files that went missing or changed (a reboot empties /run);
    /// a failure is logged, and the next attempt tries again.
    fn put_files_back(&self) {
        let agent = self.agent;
        if files_dir::needs_restore(&agent.state_dir, &agent.files_dir) {
            files_dir::put_back(agent);
        }
    }

    /// Tells the server, best effort and without queueing, how far an attempt has come
    /// (`bento status` shows "deploying" and "unconfirmed" from these). The report is taken
    /// now; the returned future uploads it, so it can run alongside the next step (it needs
    /// no answer, and the next step never waits for it). It borrows the link, not `self`.
    fn interim(
        &self,
        attempt: &Attempt,
        target: &Target,
        outcome: Outcome,
    ) -> impl std::future::Future<Output = ()> + use<'a, L> {
        let snapshot = Attempt {
            started_ms: attempt.started_ms,
            log: attempt.log.clone(),
            timings: attempt.timings.clone(),
            progress: attempt.progress.clone(),
        };
        let r = snapshot.report(
            self.agent,
            target.generation,
            Some(&target.wanted),
            outcome,
            None,
        );
        let (name, bytes) = (r.file_name(), r.to_bytes());
        let link: &'a L = self.link;
        async move {
            let upload = link.upload_report(&name, &bytes);
            match tokio::time::timeout(INTERIM_TIMEOUT, upload).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "interim report not delivered"),
                Err(_) => tracing::debug!("interim report timed out"),
            }
        }
    }

    /// Copies the closure, persists "activating", activates, then confirms (or, for
    /// `action = "boot"`, stops there).
    async fn apply(
        &mut self,
        mut attempt: Attempt,
        target: &Target,
        previous: Option<String>,
    ) -> Result<Ended, CycleError> {
        let agent = self.agent;
        let (generation, wanted) = (target.generation, target.wanted.as_str());
        attempt.note(format!(
            "generation {generation}: copying {wanted} from {}",
            agent.cache_url
        ));
        let told = self.interim(&attempt, target, Outcome::Deploying);
        let t = Instant::now();
        let copied = super::copy::copy_closure(agent, wanted, &mut attempt.log);
        // The interim report goes out over SFTP while the copy starts over HTTP.
        let ((), copied) = tokio::join!(told, copied);
        attempt.timings.copy_ms = ms(t);
        if let Err(e) = copied {
            let outcome = match e {
                SystemError::CopyRefused { .. } | SystemError::CopyTampered { .. } => {
                    Outcome::Refused
                }
                _ => Outcome::CopyFailed,
            };
            attempt.note(e.to_string());
            let r = attempt.report(
                agent,
                generation,
                Some(wanted),
                outcome,
                Some(e.to_string()),
            );
            return self.finish(r).await;
        }
        if let Err(NotDelivered { outcome, reason }) =
            self.deliver_files(&mut attempt, target).await
        {
            let r = attempt.report(agent, generation, Some(wanted), outcome, Some(reason));
            return self.finish(r).await;
        }

        attempt.note(format!(
            "activating {wanted} ({}); previous system {}",
            agent.action.as_str(),
            previous.as_deref().unwrap_or("unknown")
        ));
        self.journal.in_flight = Some(InFlight {
            generation,
            store_path: wanted.to_owned(),
            previous: previous.clone(),
            phase: Phase::Activating,
            deadline: unix_now() + agent.confirm_timeout.as_secs(),
            started: unix_now(),
        });
        self.journal.save(&agent.state_dir)?;
        let t = Instant::now();
        let runner = activate::runner(agent, generation, Purpose::Apply);
        let activated = activate::activate(agent, wanted, &runner, &mut attempt.log).await;
        attempt.timings.activate_ms = ms(t);
        if let Err(e) = activated {
            attempt.note(e.to_string());
            let t = Instant::now();
            let rolled = roll_back(agent, &mut attempt, generation, previous.as_deref()).await;
            attempt.timings.rollback_ms = ms(t);
            let (outcome, reason) = match rolled {
                Ok(()) => (Outcome::ActivationFailed, e.to_string()),
                Err(why) => (
                    Outcome::RollbackFailed,
                    format!("{e}; then rolling back failed: {why}"),
                ),
            };
            return self.conclude(attempt, target, outcome, Some(reason)).await;
        }
        if agent.action == ActivationAction::Boot {
            attempt.note("set as boot default; it runs after the next reboot");
            return self.conclude(attempt, target, Outcome::Applied, None).await;
        }
        self.confirm(attempt, target, previous).await
    }

    /// Installs the files the server delivers to this host for `target` (before the new
    /// system starts, so its services find them). On failure: the outcome to report
    /// (`refused` when something did not verify, `copy-failed` to retry) and why.
    async fn deliver_files(
        &self,
        attempt: &mut Attempt,
        target: &Target,
    ) -> Result<(), NotDelivered> {
        let agent = self.agent;
        let dir = &agent.files_dir;
        let places = Places {
            files_dir: dir,
            state_dir: &agent.state_dir,
            identity: &agent.ssh_key,
        };
        let delivered = deliver::deliver(
            self.link,
            &agent.fleet_key,
            &agent.host,
            target.generation,
            places,
        )
        .await;
        match delivered {
            Ok(Delivered::Nothing) => Ok(()),
            Ok(Delivered::Files { installed, removed }) => {
                let removed = if removed.is_empty() {
                    String::new()
                } else {
                    format!("; removed {}", removed.join(", "))
                };
                let installed = if installed.is_empty() {
                    "none".to_owned()
                } else {
                    installed.join(", ")
                };
                attempt.note(format!("files in {}: {installed}{removed}", dir.display()));
                Ok(())
            }
            Err(e) => {
                let outcome = if e.is_refusal() {
                    Outcome::Refused
                } else {
                    Outcome::CopyFailed
                };
                let reason = format!("files not installed: {e}");
                attempt.note(&reason);
                Err(NotDelivered { outcome, reason })
            }
        }
    }

    /// Confirms the new system (fresh session + health checks) until the deadline, or rolls
    /// back.
    async fn confirm(
        &mut self,
        mut attempt: Attempt,
        target: &Target,
        previous: Option<String>,
    ) -> Result<Ended, CycleError> {
        let agent = self.agent;
        // Best effort: the network may already be gone. It goes out on the kept session
        // alongside the first check, whose probe opens a fresh one.
        let mut told = Some(self.interim(&attempt, target, Outcome::Unconfirmed));
        // A resumed confirmation keeps its original deadline; a fresh one starts now.
        let fresh_deadline = unix_now() + agent.confirm_timeout.as_secs();
        let budget = match self.journal.in_flight.as_mut() {
            Some(f) if f.phase == Phase::Confirming => {
                Duration::from_secs(f.deadline.saturating_sub(unix_now()))
            }
            Some(f) => {
                f.phase = Phase::Confirming;
                f.deadline = fresh_deadline;
                agent.confirm_timeout
            }
            None => agent.confirm_timeout,
        };
        self.journal.save(&agent.state_dir)?;
        attempt.note(format!(
            "confirming: server and health checks, within {}s",
            budget.as_secs()
        ));
        let t = Instant::now();
        let mut last_error = String::new();
        loop {
            let probe = self.link.probe_fresh();
            let probed = match told.take() {
                Some(told) => tokio::join!(told, probe).1,
                None => probe.await,
            };
            let check = match probed {
                Ok(()) => system::health_checks(agent, agent.confirm_timeout, &mut attempt.log)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("server unreachable: {e}")),
            };
            if let Err(e) = &check {
                last_error.clone_from(e);
            }
            match decide::confirm_step(check.is_ok(), t.elapsed(), budget, agent.confirm_retry) {
                Confirm::Confirmed => {
                    attempt.timings.confirm_ms = ms(t);
                    attempt.note("confirmed");
                    return self.conclude(attempt, target, Outcome::Applied, None).await;
                }
                Confirm::TryAgainIn(d) => tokio::time::sleep(d).await,
                Confirm::RollBack => break,
            }
        }
        attempt.timings.confirm_ms = ms(t);
        attempt.note(format!(
            "not confirmed within {}s ({last_error}); rolling back",
            budget.as_secs()
        ));
        let t = Instant::now();
        let rolled = roll_back(agent, &mut attempt, target.generation, previous.as_deref()).await;
        attempt.timings.rollback_ms = ms(t);
        if let Err(why) = rolled {
            let reason = format!(
                "not confirmed within {}s ({last_error}); then rolling back failed: {why}",
                budget.as_secs()
            );
            return self
                .conclude(attempt, target, Outcome::RollbackFailed, Some(reason))
                .await;
        }
        // Was it the new configuration? Ask the server again, now from the old system.
        let mut reachable = false;
        for _ in 0..3 {
            if self.link.probe_fresh().await.is_ok() {
                reachable = true;
                break;
            }
            tokio::time::sleep(agent.confirm_retry).await;
        }
        let outcome = decide::after_rollback(reachable);
        let reason = match outcome {
            Outcome::RetryLater => format!(
                "not confirmed ({last_error}), and the server stayed unreachable after rolling back: not blaming generation {}; will retry",
                target.generation
            ),
            _ => format!("not confirmed within {}s: {last_error}", budget.as_secs()),
        };
        self.conclude(attempt, target, outcome, Some(reason)).await
    }

    /// Records the outcome in the journal (clearing the in-flight activation) and
    /// queues the report.
    async fn conclude(
        &mut self,
        attempt: Attempt,
        target: &Target,
        outcome: Outcome,
        reason: Option<String>,
    ) -> Result<Ended, CycleError> {
        let (agent, generation) = (self.agent, target.generation);
        let journal = &mut self.journal;
        journal.in_flight = None;
        journal.untold = Some((generation, outcome));
        match outcome {
            Outcome::Applied => {
                journal.last_applied = Some(generation);
                journal.retry = None;
            }
            Outcome::RetryLater => {
                let attempts = journal
                    .retry
                    .filter(|r| r.generation == generation)
                    .map_or(0, |r| r.attempts);
                let delay = decide::retry_delay(agent.retry_base, attempts);
                journal.retry = Some(Retry {
                    generation,
                    not_before: unix_now() + delay.as_secs(),
                    attempts: attempts + 1,
                });
            }
            o if decide::condemns(o) => {
                journal.last_failed = Some(
                    journal
                        .last_failed
                        .map_or(generation, |f| f.max(generation)),
                );
                journal.retry = None;
            }
            _ => {}
        }
        journal.save(&agent.state_dir)?;
        let r = attempt.report(agent, generation, Some(&target.wanted), outcome, reason);
        self.finish(r).await
    }

    /// Writes the metrics textfile, queues the report and delivers what the outbox holds.
    async fn finish(&mut self, report: Report) -> Result<Ended, CycleError> {
        let agent = self.agent;
        let outcome = report.outcome;
        if let Some(path) = &agent.metrics_textfile
            && let Err(e) = report::textfile::write(path, &report)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics textfile");
        }
        outbox::queue(&agent.state_dir, &report)?;
        outbox::flush(&agent.state_dir, self.link).await?;
        if self.journal.untold.take().is_some() {
            self.journal.save(&agent.state_dir)?;
        }
        Ok(Ended::Reported(outcome))
    }
}

/// Re-activates the exact previous system: profile, then its own switch-to-configuration
/// (the rollback's own unit with systemd). `Err` says why that failed, or that no previous
/// system is known: the host may then run neither system fully.
async fn roll_back(
    agent: &Agent,
    attempt: &mut Attempt,
    generation: u64,
    previous: Option<&str>,
) -> Result<(), String> {
    let Some(prev) = previous else {
        let why = "no previous system is known; nothing to roll back to".to_owned();
        attempt.note(&why);
        return Err(why);
    };
    attempt.note(format!("rolling back to {prev}"));
    let runner = activate::runner(agent, generation, Purpose::RollBack);
    let result = activate::activate(agent, prev, &runner, &mut attempt.log).await;
    result.map_err(|e| {
        attempt.note(format!("rollback failed: {e}"));
        e.to_string()
    })
}

mod recover;
