//! `STATE_DIR/git/follow.json`: what `bento serve --follow` did last, for `bento status`, the
//! dashboard and `/metrics`: the branch's newest commit, the commit deployed, why a newer one
//! is not (yet), and the hosts that commit failed to build for. Written atomically with a
//! format version; a damaged or newer record is reported and a fresh one started (it is a
//! log of what happened, not state anything depends on: the next fetch rebuilds it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::StateDir;
use crate::durable::{self, WriteError};
use crate::rollout::record::{Event, MAX_EVENTS};

/// The record format this code writes and reads.
pub const FORMAT: u32 = 1;

/// What the follower did last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowRecord {
    pub format: u32,
    pub url: String,
    pub branch: String,
    /// Unix seconds of the last fetch attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch: Option<u64>,
    /// Why the last fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_error: Option<String>,
    /// The branch's newest commit, and its subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_subject: Option<String>,
    /// The newest commit that was deployed, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<u64>,
    /// Why `head` is not deployed (building, waiting for a rollout, a fleet file that does
    /// not load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Hosts the deployed commit could not be built or published for: host → why.
    #[serde(default)]
    pub failures: BTreeMap<String, String>,
    #[serde(default)]
    pub events: Vec<Event>,
}

impl FollowRecord {
    pub fn new(url: &str, branch: &str) -> FollowRecord {
        FollowRecord {
            format: FORMAT,
            url: url.to_owned(),
            branch: branch.to_owned(),
            ..FollowRecord::default()
        }
    }

    /// Records an event (and logs it).
    pub fn event(&mut self, at: u64, text: String) {
        tracing::info!(branch = %self.branch, "{text}");
        self.events.push(Event { at, text });
        if self.events.len() > MAX_EVENTS {
            let extra = self.events.len() - MAX_EVENTS;
            self.events.drain(..extra);
        }
    }
}

/// The record, if one can be read (a damaged or newer one is `None`, with a warning).
pub fn load(state: &StateDir) -> Option<FollowRecord> {
    let path = state.follow_record();
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<FollowRecord>(&bytes) {
        Ok(r) if r.format == FORMAT => Some(r),
        Ok(r) => {
            tracing::warn!(path = %path.display(), format = r.format, "follow record of another format ignored");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "damaged follow record ignored");
            None
        }
    }
}

pub fn save(state: &StateDir, record: &FollowRecord) -> Result<(), WriteError> {
    let path = state.follow_record();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| WriteError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    bytes.push(b'\n');
    durable::write_atomic(&path, &bytes, 0o644)
}
