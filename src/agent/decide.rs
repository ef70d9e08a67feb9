//! The agent's decisions, as pure functions over plain data: what to do with a fetched
//! release, whether to keep confirming or roll back, what a rollback means, how to recover
//! after a crash, and how long to sleep. The effects (SFTP, `nix copy`, activation) live in
//! the cycle around them; these are tested table-driven.

use std::time::Duration;

use crate::report::Outcome;

/// The part of the persisted agent state the decisions read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// Highest generation applied (or found already running).
    pub last_applied: Option<u64>,
    /// Highest generation that failed on this host (activation failed or rolled back):
    /// it and anything older are not tried again.
    pub last_failed: Option<u64>,
    /// A generation to try again later, and the earliest time to do so.
    pub retry: Option<Retry>,
}

/// A generation rolled back while the server was unreachable (not its fault), to be tried
/// again later. The journal stores it as `[generation, not_before, attempts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "(u64, u64, u32)", into = "(u64, u64, u32)")]
pub struct Retry {
    pub generation: u64,
    /// Unix seconds before which it is not tried.
    pub not_before: u64,
    /// Attempts so far; the delay doubles with each.
    pub attempts: u32,
}

impl From<(u64, u64, u32)> for Retry {
    fn from((generation, not_before, attempts): (u64, u64, u32)) -> Self {
        Retry {
            generation,
            not_before,
            attempts,
        }
    }
}

impl From<Retry> for (u64, u64, u32) {
    fn from(r: Retry) -> Self {
        (r.generation, r.not_before, r.attempts)
    }
}

/// What a fetched (and not yet verified) release asks of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Same generation as the one applied: nothing to do, nothing to report.
    Idle,
    /// Verify it fully (signature, host, newer generation), then act on it.
    Verify,
}

/// Decides from the untrusted generation alone whether a release needs any work.
/// Everything other than "the same generation we applied" goes through full verification,
/// so replays and downgrades are refused (and reported) by the verifier.
pub fn plan(release_generation: u64, memory: &Memory) -> Plan {
    if memory.last_applied == Some(release_generation) {
        Plan::Idle
    } else {
        Plan::Verify
    }
}

/// What to do with a verified release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// It already failed here; wait for a newer generation.
    SkipFailed,
    /// It is to be retried later, not yet.
    WaitRetry { until: u64 },
    /// The host already runs that system: record it as applied, activate nothing.
    AlreadyRunning,
    /// Copy, activate, confirm.
    Apply,
}

pub fn action(
    generation: u64,
    wanted: &str,
    running: Option<&str>,
    memory: &Memory,
    now: u64,
) -> Action {
    if memory.last_failed.is_some_and(|f| generation <= f) {
        return Action::SkipFailed;
    }
    if let Some(retry) = memory.retry
        && retry.generation == generation
        && now < retry.not_before
    {
        return Action::WaitRetry {
            until: retry.not_before,
        };
    }
    if running == Some(wanted) {
        return Action::AlreadyRunning;
    }
    Action::Apply
}

/// One step of confirmation after activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    Confirmed,
    TryAgainIn(Duration),
    RollBack,
}

/// `check_passed`: a fresh SFTP session reached the server and every health check passed.
pub fn confirm_step(
    check_passed: bool,
    elapsed: Duration,
    timeout: Duration,
    retry_every: Duration,
) -> Confirm {
    if check_passed {
        return Confirm::Confirmed;
    }
    if elapsed >= timeout {
        return Confirm::RollBack;
    }
    Confirm::TryAgainIn(retry_every.min(timeout - elapsed))
}

/// After a rollback: if the server is reachable again, the new configuration was at fault
/// (`rolled-back`, the generation is condemned); if it is still unreachable, the fault was
/// elsewhere and the generation is retried later.
pub fn after_rollback(server_reachable: bool) -> Outcome {
    if server_reachable {
        Outcome::RolledBack
    } else {
        Outcome::RetryLater
    }
}

/// Whether an outcome condemns its generation on this host. A failed rollback does too:
/// an operator looks at the host before anything is tried on it again automatically.
pub fn condemns(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::ActivationFailed | Outcome::RolledBack | Outcome::RollbackFailed
    )
}

/// The result of a run that found nothing to do for `generation`: nothing to do, unless the
/// journal holds the result of an attempt on that generation whose agent was killed before
/// it could tell it (`untold`: generation and outcome). An agent killed after recording
/// `applied` and before exiting thus has its successor exit 0, not 3.
pub fn idle_result(untold: Option<(u64, Outcome)>, generation: u64) -> Option<Outcome> {
    untold.filter(|(g, _)| *g == generation).map(|(_, o)| o)
}

/// Delay before retrying a generation that could not be confirmed for reasons outside it:
/// `base`, then doubling per attempt, at most an hour.
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    (base * (1u32 << attempts.min(10))).min(Duration::from_secs(3600))
}

/// Phase of an unfinished activation, as persisted before each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The profile is being switched and `switch-to-configuration` run.
    Activating,
    /// Activation finished; waiting for the server and health checks.
    Confirming,
}

/// What to do at start when the last run left an activation unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The new system runs and there is time left: go on confirming until the deadline.
    ResumeConfirming,
    /// Past the deadline without confirmation: re-activate the previous system.
    RollBack,
    /// The new system never became active: put the profile back to the previous system and
    /// forget the attempt; the release is tried again as usual (activated once, not twice).
    Abandon,
}

pub fn recover(
    phase: Phase,
    running_is_new: bool,
    running_is_previous: bool,
    now: u64,
    deadline: u64,
) -> Recovery {
    match (phase, running_is_new, running_is_previous) {
        (_, true, _) if now < deadline => Recovery::ResumeConfirming,
        (_, true, _) => Recovery::RollBack,
        // Killed before the switch took effect: nothing new ever ran.
        (Phase::Activating, false, true) => Recovery::Abandon,
        // Running neither: an activation half-done or an outside change. The previous
        // system is the last one known good.
        _ => Recovery::RollBack,
    }
}

/// Poll delay: `interval` with ±`jitter` (fraction) spread by `random` in [0, 1), doubled
/// per consecutive failure up to 8× and at most an hour, so a fleet neither synchronises
/// nor hammers a server that is down.
pub fn poll_delay(interval: Duration, jitter: f64, random: f64, failures: u32) -> Duration {
    let base = interval.as_secs_f64() * f64::from(1u32 << failures.min(3));
    let jitter = jitter.clamp(0.0, 1.0);
    let spread = 1.0 + jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((base * spread).clamp(0.0, 3600.0))
}

/// Delay before trying again after a failed copy (the cache may not serve a new closure
/// yet, or the network blinked): 5, 10, 20, ... seconds, never longer than the poll delay.
pub fn copy_retry_delay(poll: Duration, copy_failures: u32) -> Duration {
    (Duration::from_secs(5) * (1u32 << copy_failures.min(10))).min(poll)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top";
    const OLD: &str = "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep";

    #[test]
    fn plan_table() {
        let m = |a| Memory {
            last_applied: a,
            ..Memory::default()
        };
        let cases = [
            (5, m(Some(5)), Plan::Idle),
            (6, m(Some(5)), Plan::Verify),
            (4, m(Some(5)), Plan::Verify), // replay: the verifier refuses it
            (1, m(None), Plan::Verify),
        ];
        for (g, mem, want) in cases {
            assert_eq!(plan(g, &mem), want, "gen {g} {mem:?}");
        }
    }

    #[test]
    fn action_table() {
        let none = Memory::default();
        let failed5 = Memory {
            last_failed: Some(5),
            ..Memory::default()
        };
        let retry6 = Memory {
            retry: Some(Retry {
                generation: 6,
                not_before: 1000,
                attempts: 0,
            }),
            ..Memory::default()
        };
        let cases = [
            (6, Some(OLD), &none, 0, Action::Apply),
            (6, None, &none, 0, Action::Apply),
            (6, Some(NEW), &none, 0, Action::AlreadyRunning),
            (5, Some(OLD), &failed5, 0, Action::SkipFailed),
            (4, Some(OLD), &failed5, 0, Action::SkipFailed),
            (6, Some(OLD), &failed5, 0, Action::Apply),
            (
                6,
                Some(OLD),
                &retry6,
                999,
                Action::WaitRetry { until: 1000 },
            ),
            (6, Some(OLD), &retry6, 1000, Action::Apply),
            (7, Some(OLD), &retry6, 0, Action::Apply),
        ];
        for (g, running, mem, now, want) in cases {
            assert_eq!(
                action(g, NEW, running, mem, now),
                want,
                "gen {g} {running:?} {mem:?} {now}"
            );
        }
    }

    #[test]
    fn confirm_table() {
        let s = Duration::from_secs;
        let cases = [
            (true, s(0), Confirm::Confirmed),
            (true, s(100), Confirm::Confirmed),
            (false, s(0), Confirm::TryAgainIn(s(3))),
            (false, s(58), Confirm::TryAgainIn(s(2))),
            (false, s(60), Confirm::RollBack),
            (false, s(61), Confirm::RollBack),
        ];
        for (ok, elapsed, want) in cases {
            assert_eq!(
                confirm_step(ok, elapsed, s(60), s(3)),
                want,
                "{ok} {elapsed:?}"
            );
        }
    }

    #[test]
    fn rollback_verdicts() {
        assert_eq!(after_rollback(true), Outcome::RolledBack);
        assert_eq!(after_rollback(false), Outcome::RetryLater);
        assert!(condemns(Outcome::RolledBack));
        assert!(condemns(Outcome::ActivationFailed));
        assert!(condemns(Outcome::RollbackFailed));
        assert!(!condemns(Outcome::RetryLater));
        assert!(!condemns(Outcome::CopyFailed));
    }

    #[test]
    fn an_untold_result_is_the_result_of_the_next_idle_run() {
        use Outcome::*;
        let cases = [
            (None, 4, None),
            (Some((4, Applied)), 4, Some(Applied)),
            (Some((4, RolledBack)), 4, Some(RolledBack)),
            (Some((3, Applied)), 4, None),
        ];
        for (untold, generation, want) in cases {
            assert_eq!(idle_result(untold, generation), want, "{untold:?}");
        }
    }

    #[test]
    fn recovery_table() {
        use Phase::*;
        let cases = [
            (Activating, true, false, 10, 20, Recovery::ResumeConfirming),
            (Confirming, true, false, 10, 20, Recovery::ResumeConfirming),
            (Confirming, true, false, 20, 20, Recovery::RollBack),
            (Activating, true, false, 30, 20, Recovery::RollBack),
            (Activating, false, true, 10, 20, Recovery::Abandon),
            (Activating, false, true, 30, 20, Recovery::Abandon),
            (Confirming, false, true, 10, 20, Recovery::RollBack),
            (Activating, false, false, 10, 20, Recovery::RollBack),
        ];
        for (phase, new, prev, now, deadline, want) in cases {
            assert_eq!(
                recover(phase, new, prev, now, deadline),
                want,
                "{phase:?} new={new} prev={prev} now={now}"
            );
        }
    }

    #[test]
    fn delays() {
        let s = Duration::from_secs;
        assert_eq!(poll_delay(s(60), 0.2, 0.5, 0), s(60));
        assert_eq!(poll_delay(s(60), 0.2, 0.0, 0), s(48));
        assert_eq!(poll_delay(s(60), 0.0, 0.9, 0), s(60));
        assert_eq!(poll_delay(s(60), 0.0, 0.5, 1), s(120));
        assert_eq!(poll_delay(s(60), 0.0, 0.5, 10), s(480));
        assert_eq!(poll_delay(s(3000), 0.0, 0.5, 10), s(3600));
        assert_eq!(retry_delay(s(60), 0), s(60));
        assert_eq!(retry_delay(s(60), 2), s(240));
        assert_eq!(retry_delay(s(60), 30), s(3600));
        assert_eq!(retry_delay(s(2), 1), s(4));
        assert_eq!(copy_retry_delay(s(60), 0), s(5));
        assert_eq!(copy_retry_delay(s(60), 2), s(20));
        assert_eq!(copy_retry_delay(s(60), 5), s(60));
        assert_eq!(copy_retry_delay(s(3), 0), s(3));
    }
}
