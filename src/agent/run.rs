//! The agent's loop: an attempt, then wait for the next one — a poll interval with jitter
//! (backing off while the server is unreachable), a local trigger, or, with instant updates,
//! the server saying the release changed. Waiting on the server never shortens the poll
//! delay when that wait fails, so converging fast never turns into hammering.
//!
//! A stop request ends the loop at once, also in the middle of an attempt: the journal is
//! written before every step that changes the system, and the processes of the attempt
//! are killed with it (a switch running in its own systemd unit goes on; the next agent
//! waits for it). After each attempt, when the running system names another agent
//! (`self_update`), the loop ends so that the new one is started.

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::Agent;
use super::cycle::{self, CycleError, Ended, Progress};
use super::decide;
use super::journal::Journal;
use super::link::Link;
use super::self_update::{self, UnitFile};
use super::trigger::Request;
use crate::report::Outcome;

/// One line summary of an attempt, for logs and the trigger client.
pub fn summary(result: &Result<Ended, CycleError>) -> String {
    match result {
        Ok(Ended::Idle) => "nothing to do".to_owned(),
        Ok(Ended::Reported(o)) => o.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEnd {
    /// Asked to stop.
    Shutdown,
    /// The running system names another agent: why.
    Restart(String),
}

/// Runs attempts until `shutdown`, or until the running system names an agent other than
/// `started_with` (the `agent-unit.json` read when this agent started).
pub async fn run_loop<L: Link + Sync>(
    agent: &Agent,
    link: &L,
    progress: Progress,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
    started_with: &UnitFile,
) -> LoopEnd {
    let mut failures: u32 = 0;
    let mut copy_failures: u32 = 0;
    let mut answer: Option<Request> = None;
    loop {
        let result = tokio::select! {
            r = cycle::run_once(agent, link, &progress) => r,
            () = shutdown.cancelled() => {
                tracing::info!("stopping in the middle of an attempt; the next start resumes it");
                return LoopEnd::Shutdown;
            }
        };
        let line = summary(&result);
        match &result {
            Ok(_) => tracing::info!(result = %line, "attempt finished"),
            Err(e) => tracing::warn!(error = %e, "attempt failed"),
        }
        if let Some(a) = answer.take() {
            let _ = a.send(line);
        }
        let now = self_update::read(&agent.current_system);
        if let Some(why) = self_update::restart_reason(started_with, &now) {
            tracing::info!("{why}");
            return LoopEnd::Restart(why);
        }
        failures = if result.is_err() { failures + 1 } else { 0 };
        let mut delay = decide::poll_delay(
            agent.poll_interval,
            agent.poll_jitter,
            rand::random::<f64>(),
            failures,
        );
        if matches!(result, Ok(Ended::Reported(Outcome::CopyFailed))) {
            delay = decide::copy_retry_delay(delay, copy_failures);
            copy_failures += 1;
        } else {
            copy_failures = 0;
        }
        let deadline = Instant::now() + delay;
        let known = Journal::load(&agent.state_dir)
            .ok()
            .and_then(|m| m.last_seen);
        let instant = agent.instant_updates && failures == 0;
        let wait = async {
            if instant {
                match link.wait_for_change(known, delay).await {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(error = %e, "instant updates unavailable; polling"),
                }
            }
            tokio::time::sleep_until(deadline).await;
        };
        tokio::select! {
            () = shutdown.cancelled() => return LoopEnd::Shutdown,
            () = wait => {}
            req = requests.recv() => answer = req,
        }
    }
}

/// A progress channel for the loop and the trigger server.
pub fn progress_channel() -> Progress {
    broadcast::channel(256).0
}
