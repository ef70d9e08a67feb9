//! Reports: what an agent uploads after each attempt, and what `bento status` reads.
//!
//! A report names the generation it is about (a report counts for the generation it names,
//! never by file timestamps), the store path wanted, the one running afterwards, the
//! outcome with its reason, timings and the log of the attempt. File names sort by time:
//! `<unix-millis>-g<generation>-<outcome>.json`; any name an agent uploads must pass
//! [`check_report_name`].
//!
//! May import: `release` (host names), `durable` (the textfile). Shared by the agent and
//! the server side.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::release::check_host_name;

pub mod textfile;

/// The report encoding version this code writes and reads.
pub const FORMAT: u32 = 1;

/// Largest report accepted; logs beyond [`MAX_LOG_BYTES`] are cut from the front.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;

/// How much of an attempt's log a report keeps (the end of it).
pub const MAX_LOG_BYTES: usize = 192 * 1024;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("report is malformed: {0}")]
    Malformed(String),
    #[error("report is {size} bytes, more than {MAX_REPORT_BYTES}")]
    TooLarge { size: usize },
    #[error("report uses format {got}, this Bento reads format {FORMAT}")]
    UnsupportedFormat { got: u32 },
    #[error("report names host {0:?}, which is not a valid host name")]
    BadHost(String),
}

/// Longest report name accepted.
pub const MAX_REPORT_NAME: usize = 128;

/// A report name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with a dot (names starting
/// with a dot are the SFTP server's upload temporaries). The agent's client checks before
/// uploading, the server again on every path.
pub fn check_report_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_REPORT_NAME {
        return Err("report names have 1 to 128 characters");
    }
    if name.starts_with('.') {
        return Err("report names may not start with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("report names use only A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The new system runs and was confirmed (server reachable, health checks passed).
    Applied,
    /// The release names the system already running; nothing was activated.
    UpToDate,
    /// The release was refused (signature, host, generation, tampered closure).
    Refused,
    /// The closure could not be copied from the cache; nothing was activated.
    CopyFailed,
    /// `switch-to-configuration` failed; the previous system was re-activated.
    ActivationFailed,
    /// Confirmation failed within the timeout; the previous system was re-activated.
    RolledBack,
    /// A rollback was needed and failed: the previous system's own activation failed, or
    /// no previous system was known. The host may run neither system fully; an operator
    /// must look (docs/agent.md). The agent does not retry that generation by itself.
    RollbackFailed,
    /// Confirmation failed and the server was still unreachable after rolling back, so the
    /// fault may not be the new configuration: the generation will be retried later.
    RetryLater,
    /// The agent was interrupted (killed, rebooted) and recovered at its next start.
    Recovered,
    /// Interim: the agent started copying and activating this generation.
    Deploying,
    /// Interim: the new system is active and being confirmed.
    Unconfirmed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::UpToDate => "up-to-date",
            Outcome::Refused => "refused",
            Outcome::CopyFailed => "copy-failed",
            Outcome::ActivationFailed => "activation-failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::RollbackFailed => "rollback-failed",
            Outcome::RetryLater => "retry-later",
            Outcome::Recovered => "recovered",
            Outcome::Deploying => "deploying",
            Outcome::Unconfirmed => "unconfirmed",
        }
    }

    /// Whether the host now runs what its release asks for.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::UpToDate)
    }

    /// Whether this only marks progress; a final report follows.
    pub fn is_interim(self) -> bool {
        matches!(self, Outcome::Deploying | Outcome::Unconfirmed)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time spent in each phase of an attempt, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_ms: Option<u64>,
}

/// One attempt's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub format: u32,
    pub host: String,
    /// The release generation this attempt was about (0 when no release could be read).
    pub generation: u64,
    /// Store path the release asked for, when known.
    pub wanted: Option<String>,
    /// Store path the host runs after the attempt.
    pub running: Option<String>,
    pub outcome: Outcome,
    /// Why, for anything but success: the first line a human should read.
    pub reason: Option<String>,
    /// Start and end, milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub finished_ms: u64,
    #[serde(default)]
    pub timings: Timings,
    /// The end of the attempt's log.
    pub log: String,
}

impl Report {
    /// The file name under `/reports/`: sorts by finishing time.
    pub fn file_name(&self) -> String {
        format!(
            "{:013}-g{}-{}.json",
            self.finished_ms, self.generation, self.outcome
        )
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut r = self.clone();
        r.log = cut_log(&r.log, MAX_LOG_BYTES);
        let mut v = serde_json::to_vec_pretty(&r).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn parse(bytes: &[u8]) -> Result<Report, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge { size: bytes.len() });
        }
        let r: Report =
            serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed(e.to_string()))?;
        if r.format != FORMAT {
            return Err(ReportError::UnsupportedFormat { got: r.format });
        }
        check_host_name(&r.host).map_err(|_| ReportError::BadHost(r.host.clone()))?;
        Ok(r)
    }
}

/// Keeps the last `max` bytes of a log, on a character boundary, marking the cut.
pub fn cut_log(log: &str, max: usize) -> String {
    if log.len() <= max {
        return log.to_owned();
    }
    let mut start = log.len() - max;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &log[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            format: FORMAT,
            host: "web1".into(),
            generation: 4,
            wanted: Some("/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top".into()),
            running: Some("/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep".into()),
            outcome: Outcome::RolledBack,
            reason: Some("server unreachable after activation".into()),
            started_ms: 1_790_000_000_000,
            finished_ms: 1_790_000_012_345,
            timings: Timings {
                copy_ms: Some(1200),
                ..Timings::default()
            },
            log: "line\n".into(),
        }
    }

    #[test]
    fn report_names_are_restricted() {
        assert!(check_report_name("gen-12_2024.json").is_ok());
        for bad in ["", ".upload-x", "a b", "a:b", "ä", &"x".repeat(129)] {
            assert!(check_report_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trip_and_file_name() {
        let r = sample();
        assert_eq!(Report::parse(&r.to_bytes()).unwrap(), r);
        assert_eq!(r.file_name(), "1790000012345-g4-rolled-back.json");
    }

    #[test]
    fn refusals() {
        let mut r = sample();
        r.format = 9;
        assert!(matches!(
            Report::parse(&r.to_bytes()),
            Err(ReportError::UnsupportedFormat { got: 9 })
        ));
        let mut r = sample();
        r.host = "../x".into();
        assert!(matches!(
            Report::parse(&r.to_bytes()),
            Err(ReportError::BadHost(_))
        ));
        assert!(matches!(
            Report::parse(b"{"),
            Err(ReportError::Malformed(_))
        ));
        assert!(matches!(
            Report::parse(&vec![b' '; MAX_REPORT_BYTES + 1]),
            Err(ReportError::TooLarge { .. })
        ));
    }

    #[test]
    fn long_logs_keep_their_end() {
        let log = format!("{}END", "é".repeat(1000));
        let cut = cut_log(&log, 101);
        assert!(cut.ends_with("END"));
        assert!(cut.starts_with("[... "));
        let mut r = sample();
        r.log = "x".repeat(MAX_LOG_BYTES * 2);
        assert!(r.to_bytes().len() < MAX_REPORT_BYTES);
    }
}
