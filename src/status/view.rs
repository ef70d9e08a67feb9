//! The line `bento status` shows for a host, and its JSON form (schema [`SCHEMA`], documented
//! in `docs/status.md`): a pure function of the host's release, reports and last contact.

use std::collections::BTreeMap;

use serde::Serialize;

use super::derive::{self, Facts, HostState};
use crate::release::Release;
use crate::report::Report;

/// Version of the `--json` / `/api/status` schema. Fields are only ever added within one
/// version; removing or changing one bumps it.
pub const SCHEMA: u32 = 1;

/// The release a host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub generation: u64,
    pub store_path: String,
    /// Unix seconds when the release was made.
    pub created: u64,
    /// The commit of the configuration repository it was built from (`+dirty` when the
    /// working tree had uncommitted changes), from the release history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// The newest report of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastReport {
    pub generation: u64,
    pub outcome: String,
    /// Unix milliseconds.
    pub finished_ms: u64,
}

/// One host, as `bento status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub state: HostState,
    pub desired: Option<Desired>,
    /// The store path the host runs, from its newest report that names one.
    pub running: Option<String>,
    /// Generation of the newest report that applied (or found up to date) its release.
    pub current_generation: Option<u64>,
    /// Unix seconds of the last contact (a login or a report).
    pub last_seen: Option<u64>,
    pub seconds_since_seen: Option<u64>,
    pub seconds_since_release: Option<u64>,
    pub last_report: Option<LastReport>,
    /// The reason of the newest failed report (first line).
    pub last_error: Option<String>,
}

/// The whole answer of `bento status --json` and `/api/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetStatus {
    pub schema: u32,
    /// Unix seconds when this was computed.
    pub now: u64,
    pub stale_after_secs: u64,
    pub hosts: Vec<HostStatus>,
    /// The newest staged rollout, when one was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
}

/// The newest rollout as status shows it. `status` does not read rollouts: whoever does
/// (the CLI, the server) fills it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    pub id: u64,
    /// `running`, `paused`, `halted`, `completed`, `aborted` or `superseded`.
    pub state: String,
    /// The current wave, counted from 1.
    pub wave: usize,
    pub waves: usize,
    pub wave_name: String,
    /// One line for humans, with the reason of a halt.
    pub headline: String,
    /// Each host of the rollout: its wave (from 1) and progress.
    pub hosts: BTreeMap<String, RolloutHost>,
}

/// One host of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutHost {
    pub wave: usize,
    /// `not-started`, `waiting`, `succeeded`, `failed` or `unchanged`.
    pub progress: String,
}

impl FleetStatus {
    /// True when every host listed is up to date (exit status 0 of `bento status`).
    pub fn all_up_to_date(&self) -> bool {
        self.hosts.iter().all(|h| h.state == HostState::UpToDate)
    }
}

/// Summarizes one host. `release` is the current (already parsed) release, `reports` in any
/// order, `last_login` the server's record of its last SFTP login (Unix seconds).
pub fn summarize(
    host: &str,
    release: Option<&Release>,
    reports: &[Report],
    last_login: Option<u64>,
    now: u64,
    stale_after: u64,
) -> HostStatus {
    let state = derive::derive(&Facts {
        release_generation: release.map(|r| r.generation),
        reports,
        last_seen: last_login,
        now,
        stale_after,
    });
    let newest = derive::newest(reports, |_| true);
    let last_seen = last_login
        .into_iter()
        .chain(newest.map(|r| r.finished_ms / 1000))
        .max();
    let running = derive::newest(reports, |r| r.running.is_some()).and_then(|r| r.running.clone());
    let current_generation =
        derive::newest(reports, |r| r.outcome.is_success() && r.generation > 0)
            .map(|r| r.generation);
    let last_error = derive::newest(reports, |r| {
        !r.outcome.is_success() && !r.outcome.is_interim() && r.reason.is_some()
    })
    .and_then(|r| r.reason.as_deref())
    .map(super::sentence::one_sentence);
    HostStatus {
        host: host.to_owned(),
        state,
        desired: release.map(|r| Desired {
            generation: r.generation,
            store_path: r.store_path.clone(),
            created: r.created,
            commit: None,
        }),
        running,
        current_generation,
        last_seen,
        seconds_since_seen: last_seen.map(|s| now.saturating_sub(s)),
        seconds_since_release: release.map(|r| now.saturating_sub(r.created)),
        last_report: newest.map(|r| LastReport {
            generation: r.generation,
            outcome: r.outcome.as_str().to_owned(),
            finished_ms: r.finished_ms,
        }),
        last_error,
    }
}

/// A host whose files cannot be read: state `unreadable`, the reason as its error, nothing
/// else known.
pub fn unreadable(host: &str, reason: &str) -> HostStatus {
    HostStatus {
        host: host.to_owned(),
        state: HostState::Unreadable,
        desired: None,
        running: None,
        current_generation: None,
        last_seen: None,
        seconds_since_seen: None,
        seconds_since_release: None,
        last_report: None,
        last_error: Some(super::sentence::one_sentence(reason)),
    }
}

/// `42s`, `5m`, `3h`, `2d`: how long ago, for humans.
pub fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Outcome, Report};

    fn rep(generation: u64, outcome: Outcome, at: u64, running: &str, reason: &str) -> Report {
        Report {
            format: crate::report::FORMAT,
            host: "web1".into(),
            generation,
            wanted: None,
            running: (!running.is_empty()).then(|| running.to_owned()),
            outcome,
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            started_ms: at * 1000,
            finished_ms: at * 1000,
            timings: Default::default(),
            log: String::new(),
        }
    }

    fn release(generation: u64, path: &str, created: u64) -> Release {
        Release {
            format: 1,
            host: "web1".into(),
            generation,
            store_path: path.into(),
            created,
            signature: String::new(),
        }
    }

    #[test]
    fn summary_table() {
        let now = 10_000;
        let r3 = release(3, "/nix/store/c-sys", now - 100);
        type Case = (
            &'static str,
            Vec<Report>,
            Option<u64>,
            HostState,
            Option<&'static str>,
            Option<u64>,
            Option<&'static str>,
            Option<u64>,
        );
        let cases: Vec<Case> = vec![
            (
                "no reports: polled only",
                vec![],
                Some(now - 3),
                HostState::Pending,
                None,
                None,
                None,
                Some(3),
            ),
            (
                "failed after success: running the old one, error shown",
                vec![
                    rep(2, Outcome::Applied, now - 500, "/nix/store/b-sys", ""),
                    rep(3, Outcome::Deploying, now - 20, "/nix/store/b-sys", ""),
                    rep(
                        3,
                        Outcome::ActivationFailed,
                        now - 10,
                        "/nix/store/b-sys",
                        "switch failed: exit 1\nmore",
                    ),
                ],
                None,
                HostState::ActivationFailed,
                Some("/nix/store/b-sys"),
                Some(2),
                Some("switch failed: exit 1"),
                Some(10),
            ),
            (
                "applied: runs the release",
                vec![
                    rep(
                        3,
                        Outcome::RolledBack,
                        now - 500,
                        "/nix/store/b-sys",
                        "no server",
                    ),
                    rep(3, Outcome::Applied, now - 7, "/nix/store/c-sys", ""),
                ],
                Some(now - 60),
                HostState::UpToDate,
                Some("/nix/store/c-sys"),
                Some(3),
                Some("no server"),
                Some(7),
            ),
        ];
        for (what, reports, login, state, running, current, error, since) in cases {
            let s = summarize("web1", Some(&r3), &reports, login, now, 300);
            assert_eq!(s.state, state, "{what}");
            assert_eq!(s.running.as_deref(), running, "{what}");
            assert_eq!(s.current_generation, current, "{what}");
            assert_eq!(s.last_error.as_deref(), error, "{what}");
            assert_eq!(s.seconds_since_seen, since, "{what}");
            assert_eq!(s.seconds_since_release, Some(100), "{what}");
            assert_eq!(s.desired.as_ref().map(|d| d.generation), Some(3));
        }
        let none = summarize("web1", None, &[], None, now, 300);
        assert_eq!(none.state, HostState::NotDeployed);
        assert_eq!(none.desired, None);
    }

    #[test]
    fn ago_table() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (7200, "2h"),
            (90000, "1d"),
        ] {
            assert_eq!(ago(secs), want);
        }
    }
}
