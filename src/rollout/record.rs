//! The rollout record, `STATE_DIR/rollout/current.json`: what one deploy publishes to which
//! hosts in which wave, where it stands, and why. Written atomically (`durable`) with a
//! format version after every change, so a server killed at any instant continues from the
//! last state it wrote; a corrupt record or one of a newer format is refused, never reset.
//! A rollout a newer deploy replaces is kept as `rollout/<id>.json`.
//!
//! Read by `bento status` and the dashboard as it is (schema in `docs/rollouts.md`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::RolloutError;
use crate::config::StateDir;
use crate::deploy::Commit;
use crate::durable;

/// The record format this code writes and reads.
pub const FORMAT: u32 = 1;

/// Events kept in a record (the oldest go first).
pub const MAX_EVENTS: usize = 50;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// `bento serve` advances it as reports arrive.
    Running,
    /// `bento rollout pause`: nothing more is published until resumed.
    Paused,
    /// Too many hosts of a wave failed (or a halted rollout was amended by a new deploy):
    /// later waves keep their previous release until `bento rollout resume`.
    Halted,
    /// Every wave passed.
    Completed,
    /// `bento rollout abort`: nothing more is published, nothing is republished.
    Aborted,
    /// A newer deploy replaced it.
    Superseded,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::Superseded => "superseded",
        }
    }

    /// Whether nothing more will ever be published by this rollout.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RolloutState::Completed | RolloutState::Aborted | RolloutState::Superseded
        )
    }
}

/// Where one host of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Progress {
    /// Its wave has not started: it keeps its previous release.
    NotStarted,
    /// Published; it has not reported success (or failure) yet.
    Waiting,
    /// It runs the release, confirmed.
    Succeeded,
    /// It reported a failure, timed out, or could not be published.
    Failed,
    /// Its system and files were already published: not counted.
    Unchanged,
}

impl Progress {
    pub fn as_str(self) -> &'static str {
        match self {
            Progress::NotStarted => "not-started",
            Progress::Waiting => "waiting",
            Progress::Succeeded => "succeeded",
            Progress::Failed => "failed",
            Progress::Unchanged => "unchanged",
        }
    }
}

/// One host of a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub host: String,
    /// The system the rollout gives it.
    pub store_path: String,
    /// The generation it was published as (once its wave started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The generation it had when the rollout was made (none: no release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    pub progress: Progress,
    /// What `bento status` said about it last, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub name: String,
    /// Percent of the wave's changed hosts that must succeed.
    pub threshold: u8,
    pub soak_secs: u64,
    pub targets: Vec<Target>,
    /// Unix seconds when its releases were published (or its count restarted by a resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// Unix seconds when its threshold was met (the soak started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<u64>,
    /// Unix seconds when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<u64>,
}

/// Something that happened to a rollout, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    pub text: String,
}

/// One deploy going through waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub format: u32,
    /// Grows with each rollout (Unix milliseconds of its creation, or one more than the last).
    pub id: u64,
    /// Unix seconds.
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<Commit>,
    /// The fleet file the deploy used: the files delivered to hosts of later waves are read
    /// from its sources when their wave starts.
    pub source: PathBuf,
    /// `bento deploy --force`: hosts whose system did not change get a release too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Seconds a host of a started wave has to succeed.
    pub timeout_secs: u64,
    pub state: RolloutState,
    /// Why it halted, was aborted or replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Index of the current wave in `waves`.
    pub wave: usize,
    pub waves: Vec<Wave>,
    #[serde(default)]
    pub events: Vec<Event>,
}

impl Rollout {
    /// Records an event (and logs it).
    pub fn event(&mut self, at: u64, text: String) {
        tracing::info!(rollout = self.id, "{text}");
        self.events.push(Event { at, text });
        if self.events.len() > MAX_EVENTS {
            let extra = self.events.len() - MAX_EVENTS;
            self.events.drain(..extra);
        }
    }

    pub fn current(&self) -> Option<&Wave> {
        self.waves.get(self.wave)
    }

    /// The target of `host`, with the index of its wave.
    pub fn target(&self, host: &str) -> Option<(usize, &Target)> {
        self.waves
            .iter()
            .enumerate()
            .find_map(|(i, w)| w.targets.iter().find(|t| t.host == host).map(|t| (i, t)))
    }

    /// What `bento status`, the dashboard and `/metrics` show of it.
    pub fn view(&self) -> crate::status::view::RolloutView {
        use crate::status::view::{RolloutHost, RolloutView};
        let hosts = self
            .waves
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                w.targets.iter().map(move |t| {
                    let host = RolloutHost {
                        wave: i + 1,
                        progress: t.progress.as_str().to_owned(),
                    };
                    (t.host.clone(), host)
                })
            })
            .collect();
        RolloutView {
            id: self.id,
            state: self.state.as_str().to_owned(),
            wave: (self.wave + 1).min(self.waves.len()),
            waves: self.waves.len(),
            wave_name: self.current().map_or_else(String::new, |w| w.name.clone()),
            headline: self.headline(),
            hosts,
        }
    }

    /// One line for humans: `rollout 17 (commit 0123abcd): wave 2 of 3 (web), running`.
    pub fn headline(&self) -> String {
        let commit = self
            .commit
            .as_ref()
            .map(|c| format!(" (commit {})", c.short()))
            .unwrap_or_default();
        let wave = self.current().map_or_else(String::new, |w| {
            format!(
                ": wave {} of {} ({})",
                self.wave + 1,
                self.waves.len(),
                w.name
            )
        });
        let reason = self
            .reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        format!(
            "rollout {}{commit}{wave}, {}{reason}",
            self.id,
            self.state.as_str()
        )
    }
}

/// The current rollout, if any was ever recorded.
pub fn load(state: &StateDir) -> Result<Option<Rollout>, RolloutError> {
    load_file(state.rollout())
}

fn load_file(path: PathBuf) -> Result<Option<Rollout>, RolloutError> {
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RolloutError::Read { path, source }),
    };
    // The format first, so that a newer record is named as such rather than as damage.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format = serde_json::from_slice::<Format>(&bytes)
        .map_err(|e| RolloutError::Corrupt {
            path: path.clone(),
            problem: e.to_string(),
        })?
        .format;
    if format != FORMAT {
        return Err(RolloutError::Format { path, format });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RolloutError::Corrupt {
            path,
            problem: e.to_string(),
        })
}

/// Writes the record atomically.
pub fn save(state: &StateDir, rollout: &Rollout) -> Result<(), RolloutError> {
    write(&state.rollout(), rollout)
}

/// Keeps a replaced rollout as `rollout/<id>.json`.
pub fn archive(state: &StateDir, rollout: &Rollout) -> Result<(), RolloutError> {
    write(&state.rollout_archive(rollout.id), rollout)
}

fn write(path: &std::path::Path, rollout: &Rollout) -> Result<(), RolloutError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| RolloutError::Read {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut bytes = serde_json::to_vec_pretty(rollout).map_err(|e| RolloutError::Corrupt {
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    bytes.push(b'\n');
    durable::write_atomic(path, &bytes, 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Rollout {
        Rollout {
            format: FORMAT,
            id: 7,
            created: 1000,
            commit: Some(Commit {
                id: "0123456789abcdef0123456789abcdef01234567".into(),
                dirty: true,
            }),
            source: "/srv/fleet/bento.toml".into(),
            force: false,
            timeout_secs: 600,
            state: RolloutState::Running,
            reason: None,
            wave: 0,
            waves: vec![Wave {
                name: "canary".into(),
                threshold: 100,
                soak_secs: 60,
                targets: vec![Target {
                    host: "web1".into(),
                    store_path: "/nix/store/x-sys".into(),
                    generation: Some(3),
                    previous: Some(2),
                    progress: Progress::Waiting,
                    detail: None,
                }],
                started: Some(1000),
                met: None,
                passed: None,
            }],
            events: vec![],
        }
    }

    #[test]
    fn a_record_round_trips_and_damage_or_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(load(&state).unwrap(), None);
        let mut r = sample();
        for i in 0..(MAX_EVENTS + 5) {
            r.event(1000 + i as u64, format!("event {i}"));
        }
        assert_eq!(r.events.len(), MAX_EVENTS);
        assert_eq!(r.events[0].text, "event 5");
        save(&state, &r).unwrap();
        assert_eq!(load(&state).unwrap(), Some(r.clone()));
        assert_eq!(
            r.headline(),
            "rollout 7 (commit 01234567+dirty): wave 1 of 1 (canary), running"
        );

        let text = std::fs::read_to_string(state.rollout()).unwrap();
        std::fs::write(
            state.rollout(),
            text.replace("\"format\": 1", "\"format\": 2"),
        )
        .unwrap();
        let err = load(&state).unwrap_err().to_string();
        assert!(err.contains("format 2"), "{err}");
        std::fs::write(state.rollout(), &text[..text.len() / 2]).unwrap();
        let err = load(&state).unwrap_err().to_string();
        assert!(
            err.contains("current.json") && err.contains("damaged"),
            "{err}"
        );
    }
}
