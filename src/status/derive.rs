//! A host's state for `bento status`, derived from plain facts: its current release, the
//! reports its agent uploaded, and when the server last heard from it. A report counts for
//! the generation it names, never by file timestamps (so a release published during an
//! update is "pending", not "up to date").

use serde::Serialize;

use crate::report::{Outcome, Report};

/// What `bento status` says about a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Runs its current release, confirmed.
    UpToDate,
    /// A release exists that the host has not started on yet.
    Pending,
    /// The agent is copying and activating the current release.
    Deploying,
    /// The current release is active and being confirmed.
    Unconfirmed,
    ActivationFailed,
    RolledBack,
    /// A rollback failed: the host may run neither system fully; needs an operator.
    RollbackFailed,
    /// Rolled back while the server was unreachable; the agent will retry.
    RetryLater,
    CopyFailed,
    Refused,
    /// Not heard from for longer than the stale limit.
    Stale,
    /// Never reported.
    NeverSeen,
    /// No release was ever published for it.
    NotDeployed,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::UpToDate => "up-to-date",
            HostState::Pending => "pending",
            HostState::Deploying => "deploying",
            HostState::Unconfirmed => "unconfirmed",
            HostState::ActivationFailed => "activation-failed",
            HostState::RolledBack => "rolled-back",
            HostState::RollbackFailed => "rollback-failed",
            HostState::RetryLater => "retry-later",
            HostState::CopyFailed => "copy-failed",
            HostState::Refused => "refused",
            HostState::Stale => "stale",
            HostState::NeverSeen => "never-seen",
            HostState::NotDeployed => "not-deployed",
        }
    }

    /// Whether this state needs an administrator's attention.
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            HostState::ActivationFailed
                | HostState::RolledBack
                | HostState::RollbackFailed
                | HostState::CopyFailed
                | HostState::Refused
                | HostState::Stale
        )
    }
}

/// The facts about one host.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// Generation of the current release, if any.
    pub release_generation: Option<u64>,
    /// Reports, any order.
    pub reports: &'a [Report],
    /// Unix seconds when the server last heard from the host (a poll or a report).
    pub last_seen: Option<u64>,
    pub now: u64,
    /// Seconds of silence after which a host is stale.
    pub stale_after: u64,
}

/// The newest report (by finishing time) satisfying `pred`.
pub fn newest(reports: &[Report], pred: impl Fn(&Report) -> bool) -> Option<&Report> {
    reports
        .iter()
        .filter(|r| pred(r))
        .max_by_key(|r| r.finished_ms)
}

pub fn derive(f: &Facts<'_>) -> HostState {
    let newest_any = newest(f.reports, |_| true);
    let heard = f
        .last_seen
        .into_iter()
        .chain(newest_any.map(|r| r.finished_ms / 1000))
        .max();
    let Some(heard) = heard else {
        return if f.release_generation.is_some() {
            HostState::NeverSeen
        } else {
            HostState::NotDeployed
        };
    };
    if f.now.saturating_sub(heard) > f.stale_after {
        return HostState::Stale;
    }
    let Some(generation) = f.release_generation else {
        return HostState::NotDeployed;
    };
    let Some(report) = newest(f.reports, |r| r.generation == generation) else {
        return HostState::Pending;
    };
    match report.outcome {
        Outcome::Applied | Outcome::UpToDate => HostState::UpToDate,
        Outcome::Deploying => HostState::Deploying,
        Outcome::Unconfirmed => HostState::Unconfirmed,
        Outcome::ActivationFailed => HostState::ActivationFailed,
        Outcome::RolledBack | Outcome::Recovered => HostState::RolledBack,
        Outcome::RollbackFailed => HostState::RollbackFailed,
        Outcome::RetryLater => HostState::RetryLater,
        Outcome::CopyFailed => HostState::CopyFailed,
        Outcome::Refused => HostState::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(generation: u64, outcome: Outcome, finished_s: u64) -> Report {
        Report {
            format: crate::report::FORMAT,
            host: "web1".into(),
            generation,
            wanted: None,
            running: None,
            outcome,
            reason: None,
            started_ms: finished_s * 1000,
            finished_ms: finished_s * 1000,
            timings: Default::default(),
            log: String::new(),
        }
    }

    #[test]
    fn state_table() {
        use HostState as S;
        use Outcome as O;
        let now = 10_000;
        type Case = (&'static str, Option<u64>, Vec<Report>, Option<u64>, S);
        let cases: Vec<Case> = vec![
            ("no release, no news", None, vec![], None, S::NotDeployed),
            ("release, never heard", Some(1), vec![], None, S::NeverSeen),
            (
                "polled, no report yet",
                Some(1),
                vec![],
                Some(now - 5),
                S::Pending,
            ),
            (
                "applied",
                Some(2),
                vec![rep(2, O::Applied, now - 10)],
                None,
                S::UpToDate,
            ),
            (
                "up to date",
                Some(2),
                vec![rep(2, O::UpToDate, now - 10)],
                None,
                S::UpToDate,
            ),
            (
                "new release during an update: report names the old generation",
                Some(3),
                vec![rep(2, O::Applied, now - 1)],
                None,
                S::Pending,
            ),
            (
                "deploying",
                Some(3),
                vec![rep(2, O::Applied, now - 100), rep(3, O::Deploying, now - 5)],
                None,
                S::Deploying,
            ),
            (
                "unconfirmed",
                Some(3),
                vec![rep(3, O::Unconfirmed, now - 5)],
                None,
                S::Unconfirmed,
            ),
            (
                "final report wins over interim",
                Some(3),
                vec![
                    rep(3, O::Unconfirmed, now - 50),
                    rep(3, O::RolledBack, now - 5),
                ],
                None,
                S::RolledBack,
            ),
            (
                "activation failed",
                Some(3),
                vec![rep(3, O::ActivationFailed, now)],
                None,
                S::ActivationFailed,
            ),
            (
                "rollback failed",
                Some(3),
                vec![
                    rep(3, O::Unconfirmed, now - 50),
                    rep(3, O::RollbackFailed, now - 5),
                ],
                None,
                S::RollbackFailed,
            ),
            (
                "retry later",
                Some(3),
                vec![rep(3, O::RetryLater, now)],
                None,
                S::RetryLater,
            ),
            (
                "copy failed",
                Some(3),
                vec![rep(3, O::CopyFailed, now)],
                None,
                S::CopyFailed,
            ),
            (
                "refused",
                Some(3),
                vec![rep(3, O::Refused, now)],
                None,
                S::Refused,
            ),
            (
                "recovered counts as rolled back",
                Some(3),
                vec![rep(3, O::Recovered, now)],
                None,
                S::RolledBack,
            ),
            (
                "silent too long",
                Some(2),
                vec![rep(2, O::Applied, now - 1000)],
                None,
                S::Stale,
            ),
            (
                "silent reports but recent polls",
                Some(2),
                vec![rep(2, O::Applied, now - 1000)],
                Some(now - 30),
                S::UpToDate,
            ),
        ];
        for (what, release, reports, last_seen, want) in cases {
            let f = Facts {
                release_generation: release,
                reports: &reports,
                last_seen,
                now,
                stale_after: 300,
            };
            assert_eq!(derive(&f), want, "{what}");
        }
    }
}
