//! When each host was last heard from (a login, or any SFTP request on a kept session): an
//! in-memory map, persisted to `<state_dir>/seen/<host>` (Unix seconds, one line) at most
//! once per [`PERSIST_EVERY`] per host, for `bento status` and the dashboard. Kept outside
//! the hosts' SFTP trees, so no host can read or forge it. A failed write is logged and
//! tried again at the next contact a minute later; it never fails a login or a request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The least time between two writes of one host's record.
pub const PERSIST_EVERY: u64 = 60;

/// The directory under the state directory holding one record per host.
pub const SEEN_DIR: &str = "seen";

#[derive(Debug)]
pub struct LastSeen {
    dir: PathBuf,
    /// Host → Unix seconds of its last persisted login.
    persisted: Mutex<HashMap<String, u64>>,
}

impl LastSeen {
    pub fn new(state_dir: &Path) -> Self {
        LastSeen {
            dir: state_dir.join(SEEN_DIR),
            persisted: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a login of `host` at `now` should be written (pure bookkeeping; marks it).
    fn due(&self, host: &str, now: u64) -> bool {
        let mut map = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(host) {
            Some(at) if now.saturating_sub(*at) < PERSIST_EVERY => false,
            _ => {
                map.insert(host.to_owned(), now);
                true
            }
        }
    }

    /// Records contact with `host` (a validated host name) now; cheap when already recorded
    /// within the last minute.
    pub fn saw(&self, host: &str) {
        let now = crate::clock::unix_now();
        if !self.due(host, now) {
            return;
        }
        let dir = self.dir.clone();
        let host = host.to_owned();
        let write = move || {
            let path = dir.join(&host);
            let result = std::fs::create_dir_all(&dir)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    crate::durable::write_atomic(&path, format!("{now}\n").as_bytes(), 0o644)
                        .map_err(|e| e.to_string())
                });
            if let Err(error) = result {
                tracing::warn!(host, path = %path.display(), error, "cannot record last login");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(crate::blocking::run(
                    "recording a host's last contact",
                    write,
                ));
            }
            Err(_) => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_at_most_once_a_minute_per_host() {
        let s = LastSeen::new(Path::new("/nonexistent"));
        let cases = [
            ("web1", 1000, true),
            ("web1", 1030, false),
            ("db", 1030, true),
            ("web1", 1059, false),
            ("web1", 1060, true),
            ("web1", 1061, false),
        ];
        for (host, now, want) in cases {
            assert_eq!(s.due(host, now), want, "{host} at {now}");
        }
    }
}
