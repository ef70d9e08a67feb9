//! The agent's journal, `<state_dir>/state.json`: what it applied, what failed, what to retry
//! and when, and the activation in flight; what the agent carries from one attempt to the
//! next. Written atomically with a format version before every step that changes the
//! system, so a crash or kill at any point is recovered at the next start. A corrupt or
//! newer file is refused loudly, never silently reset.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::decide::{Memory, Phase, Retry};
use crate::durable::{WriteError, write_atomic};
use crate::report::Outcome;

pub const FORMAT: u32 = 1;
const FILE: &str = "state.json";

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot read agent state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "agent state {path} is corrupt ({message}); refusing to guess. Inspect it, then move it away to start afresh (the host will re-apply its current release)"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "agent state {path} has format {got}, newer than this Bento ({FORMAT}); was Bento downgraded? Upgrade it again"
    )]
    Newer { path: PathBuf, got: u32 },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// An activation that has started and not yet been confirmed or rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlight {
    pub generation: u64,
    pub store_path: String,
    /// The exact system that ran before; rollback re-activates this, not "the generation
    /// below".
    pub previous: Option<String>,
    pub phase: Phase,
    /// Unix seconds by which confirmation must succeed.
    pub deadline: u64,
    pub started: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub format: u32,
    pub last_applied: Option<u64>,
    pub last_failed: Option<u64>,
    /// A generation to try again later (stored as `[generation, not_before, attempts]`).
    pub retry: Option<Retry>,
    pub in_flight: Option<InFlight>,
    /// Generation of the last release fetched (applied or not): instant updates wait for a
    /// different one, so a refused release does not wake the agent again and again.
    #[serde(default)]
    pub last_seen: Option<u64>,
    /// The outcome of the attempt on a generation, recorded with it and removed once the
    /// attempt has ended (report queued and sent if possible): when it is still there at the
    /// next start, the agent was killed in between, and the next run that has nothing to
    /// do exits with this outcome's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untold: Option<(u64, Outcome)>,
}

impl Journal {
    pub fn memory(&self) -> Memory {
        Memory {
            last_applied: self.last_applied,
            last_failed: self.last_failed,
            retry: self.retry,
        }
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Loads the journal; a missing file is a fresh host.
    pub fn load(dir: &Path) -> Result<Journal, JournalError> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Journal {
                    format: FORMAT,
                    ..Journal::default()
                });
            }
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version =
            serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if version.format > FORMAT {
            return Err(JournalError::Newer {
                path,
                got: version.format,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), JournalError> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        write_atomic(&Self::path(dir), &bytes, 0o600)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_host() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Journal::load(dir.path()).unwrap();
        assert_eq!(fresh.last_applied, None);
        let s = Journal {
            format: FORMAT,
            last_applied: Some(3),
            last_failed: Some(2),
            retry: None,
            in_flight: Some(InFlight {
                generation: 4,
                store_path: "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top".into(),
                previous: Some("/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep".into()),
                phase: Phase::Confirming,
                deadline: 100,
                started: 10,
            }),
            last_seen: Some(4),
            untold: Some((3, Outcome::Applied)),
        };
        s.save(dir.path()).unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), s);
    }

    #[test]
    fn retry_keeps_its_stored_form() {
        let dir = tempfile::tempdir().unwrap();
        let text = br#"{"format": 1, "last_applied": 3, "last_failed": null, "retry": [4, 1000, 2], "in_flight": null}"#;
        std::fs::write(dir.path().join(FILE), text).unwrap();
        let journal = Journal::load(dir.path()).unwrap();
        let want = Retry {
            generation: 4,
            not_before: 1000,
            attempts: 2,
        };
        assert_eq!(journal.retry, Some(want));
        journal.save(dir.path()).unwrap();
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(saved["retry"], serde_json::json!([4, 1000, 2]));
    }

    #[test]
    fn corrupt_and_newer_files_are_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"format\": 1, \"last_appl").unwrap();
        assert!(matches!(
            Journal::load(dir.path()),
            Err(JournalError::Corrupt { .. })
        ));
        std::fs::write(dir.path().join(FILE), b"{\"format\": 7}").unwrap();
        assert!(matches!(
            Journal::load(dir.path()),
            Err(JournalError::Newer { got: 7, .. })
        ));
        // The file is left as it was for a human to inspect.
        assert_eq!(
            std::fs::read(dir.path().join(FILE)).unwrap(),
            b"{\"format\": 7}"
        );
    }
}
