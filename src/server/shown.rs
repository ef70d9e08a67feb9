//! What the running `bento serve` shows its hosts, told to `bento deploy` through the state
//! directory, so that `bento deploy` returns only once the agents it published for can copy
//! their new systems (`bento deploy && bento agent --once` never races the cache).
//!
//! - `serve/lock`: `bento serve` holds an exclusive `flock` on it while it runs (the kernel
//!   lets go when the process dies); a deploy that can take it knows no server runs.
//! - `serve/shown.json`: `{"<host>": <generation>, ...}`, the generation of each release the
//!   server shows now, replaced atomically each time that changes.
//!
//! - `serve/wake.sock`: see [`super::wake`]; each release published wakes the server.
//!
//! All three are hints: a deploy that finds no server, or waits in vain, says so and succeeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::fs::{FlockOperation, flock};

use crate::release::Release;

const DIR: &str = "serve";
const LOCK: &str = "lock";
const SHOWN: &str = "shown.json";

/// The lock of a running server; dropping it (or dying) lets go.
#[derive(Debug)]
pub struct Running {
    _file: std::fs::File,
}

fn lock_file(state_dir: &Path) -> std::io::Result<std::fs::File> {
    let dir = state_dir.join(DIR);
    std::fs::create_dir_all(&dir)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK))
}

/// Marks this process as the server of `state_dir`; `None` (after a warning) when another
/// holds the mark or it cannot be made: deploys then do not wait for this one.
pub fn claim(state_dir: &Path) -> Option<Running> {
    let taken = lock_file(state_dir).and_then(|file| {
        flock(&file, FlockOperation::NonBlockingLockExclusive)?;
        Ok(file)
    });
    match taken {
        Ok(file) => Some(Running { _file: file }),
        Err(e) => {
            tracing::warn!(
                state_dir = %state_dir.display(),
                error = %e,
                "cannot mark this server as running (another bento serve on this state directory?); deploys will not wait for it"
            );
            None
        }
    }
}

/// True when a `bento serve` holds the mark of `state_dir` now.
pub fn is_running(state_dir: &Path) -> bool {
    if !state_dir.join(DIR).join(LOCK).exists() {
        return false;
    }
    let Ok(file) = lock_file(state_dir) else {
        return false;
    };
    flock(&file, FlockOperation::NonBlockingLockShared) == Err(rustix::io::Errno::WOULDBLOCK)
}

/// The generation of each shown release (0 for one that does not parse).
pub fn generations(shown: &BTreeMap<String, Bytes>) -> BTreeMap<String, u64> {
    shown
        .iter()
        .map(|(host, bytes)| {
            let generation = Release::parse_untrusted(bytes).map_or(0, |r| r.generation);
            (host.clone(), generation)
        })
        .collect()
}

fn shown_file(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR).join(SHOWN)
}

/// Records what the server shows now (best effort: a deploy that cannot read it waits in
/// vain and says so).
pub fn record(state_dir: &Path, generations: &BTreeMap<String, u64>) {
    let bytes = match serde_json::to_vec(generations) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the shown generations");
            return;
        }
    };
    if let Err(e) = crate::durable::write_atomic(&shown_file(state_dir), &bytes, 0o644) {
        tracing::warn!(error = %e, "cannot record the shown generations; deploys will wait in vain");
    }
}

fn read(state_dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read(shown_file(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The hosts of `wanted` whose shown generation is below the one wanted.
pub fn not_shown_yet(shown: &BTreeMap<String, u64>, wanted: &BTreeMap<String, u64>) -> Vec<String> {
    wanted
        .iter()
        .filter(|(host, g)| shown.get(*host).is_none_or(|s| s < g))
        .map(|(host, _)| host.clone())
        .collect()
}

/// What [`wait_until_shown`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// No server runs on this state directory: nothing to wait for.
    NoServer,
    /// The server shows every release wanted.
    Shown,
    /// After the timeout, these hosts were still shown an older release.
    TimedOut(Vec<String>),
}

/// Waits until the running server shows each host of `wanted` at least its generation, or
/// `timeout` passed (the deploy path woke it as it published: see `super::wake`).
/// Blocking (polls the file every 20 ms).
pub fn wait_until_shown(
    state_dir: &Path,
    wanted: &BTreeMap<String, u64>,
    timeout: Duration,
) -> Waited {
    if wanted.is_empty() || !is_running(state_dir) {
        return Waited::NoServer;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let missing = not_shown_yet(&read(state_dir), wanted);
        if missing.is_empty() {
            return Waited::Shown;
        }
        if Instant::now() >= deadline || !is_running(state_dir) {
            return Waited::TimedOut(missing);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_below_their_wanted_generation_are_not_shown_yet() {
        let map = |items: &[(&str, u64)]| -> BTreeMap<String, u64> {
            items.iter().map(|(h, g)| ((*h).to_owned(), *g)).collect()
        };
        type Generations<'a> = &'a [(&'a str, u64)];
        let cases: &[(Generations, Generations, &[&str])] = &[
            (&[("web1", 3)], &[("web1", 3)], &[]),
            (&[("web1", 4)], &[("web1", 3)], &[]),
            (&[("web1", 2)], &[("web1", 3)], &["web1"]),
            (&[], &[("web1", 1)], &["web1"]),
            (
                &[("web1", 3), ("db1", 1)],
                &[("web1", 3), ("db1", 2)],
                &["db1"],
            ),
            (&[("web1", 1)], &[], &[]),
        ];
        for (shown, wanted, missing) in cases {
            assert_eq!(
                not_shown_yet(&map(shown), &map(wanted)),
                missing.to_vec(),
                "{shown:?} {wanted:?}"
            );
        }
    }

    #[test]
    fn a_deploy_waits_only_while_a_server_holds_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let wanted: BTreeMap<String, u64> = [("web1".to_owned(), 2)].into();
        let wait = || wait_until_shown(dir.path(), &wanted, Duration::from_millis(200));
        assert_eq!(wait(), Waited::NoServer);
        let running = claim(dir.path()).unwrap();
        assert!(is_running(dir.path()));
        assert!(claim(dir.path()).is_none(), "a second server is told");
        assert_eq!(wait(), Waited::TimedOut(vec!["web1".to_owned()]));
        record(dir.path(), &[("web1".to_owned(), 2)].into());
        assert_eq!(wait(), Waited::Shown);
        drop(running);
        assert!(!is_running(dir.path()));
        assert_eq!(wait(), Waited::NoServer);
    }
}
