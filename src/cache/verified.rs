//! Store paths whose plain NAR was sent whole and hashed right, remembered with a cheap
//! fingerprint of the path as it was then, so the next whole body of that NAR need not be
//! hashed again while nothing under the path changed.
//!
//! The fingerprint is one `lstat` walk: for every entry its inode, size, mode and change
//! time (`ctime`, which every write, chmod, rename or replacement sets and no user can set
//! back), folded so that order does not matter, plus the entry count and the newest ctime.
//! A fingerprint is trusted only when its newest ctime is older than the verification by
//! more than [`RACY`] (a change within the timestamp granularity of the verification could
//! otherwise go unseen), and for at most [`MAX_AGE`], so that damage which bypasses ctime
//! (bit rot, a raw write to the disk) is still found by a later body. Anything else (no
//! memo, another fingerprint, a walk that fails) means: hash this body.
//!
//! May import: std, `crate::nix::hash`.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::nix::hash::Sha256Hash;

/// How much older than the verification the newest change under a path must be.
pub(super) const RACY: Duration = Duration::from_secs(2);
/// How long a verification is trusted at most.
pub(super) const MAX_AGE: Duration = Duration::from_secs(3600);
/// Most paths remembered; past it the memo starts over (each path is hashed once more).
const MAX_PATHS: usize = 1 << 20;

/// What the walk of a store path saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    entries: u64,
    newest_ctime_ns: i128,
    mix: u64,
}

/// Walks `path` (not following symlinks) and fingerprints it.
pub(super) fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let mut f = Fingerprint {
        entries: 0,
        newest_ctime_ns: i128::MIN,
        mix: 0,
    };
    let mut pending = vec![path.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        let ctime_ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            p.as_os_str(),
            meta.ino(),
            meta.size(),
            meta.mode(),
            ctime_ns,
        )
            .hash(&mut h);
        f.entries += 1;
        f.newest_ctime_ns = f.newest_ctime_ns.max(ctime_ns);
        f.mix = f.mix.wrapping_add(h.finish());
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(f)
}

/// The remembered verifications, by NAR hash.
#[derive(Debug)]
pub(super) struct Verified {
    racy: Duration,
    memo: Mutex<HashMap<Sha256Hash, (Fingerprint, Instant)>>,
}

impl Default for Verified {
    fn default() -> Self {
        Verified::with_racy(RACY)
    }
}

impl Verified {
    pub(super) fn with_racy(racy: Duration) -> Self {
        Verified {
            racy,
            memo: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sha256Hash, (Fingerprint, Instant)>> {
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a whole body of `nar_hash`, whose path now shows `now`, may go unhashed.
    pub(super) fn trusted(&self, nar_hash: &Sha256Hash, now: &Fingerprint) -> bool {
        self.lock()
            .get(nar_hash)
            .is_some_and(|(seen, at)| seen == now && at.elapsed() < MAX_AGE)
    }

    /// A whole body of `nar_hash` hashed right; `before` is the fingerprint taken before
    /// its first byte was read. Remembered only when nothing changed too recently.
    pub(super) fn record(&self, nar_hash: Sha256Hash, before: Fingerprint) {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if before.newest_ctime_ns > now_ns - self.racy.as_nanos() as i128 {
            return;
        }
        let mut memo = self.lock();
        if memo.len() >= MAX_PATHS {
            memo.clear();
        }
        memo.insert(nar_hash, (before, Instant::now()));
    }

    /// Forgets `nar_hash` (its path was found altered, or left the index).
    pub(super) fn forget(&self, nar_hash: &Sha256Hash) {
        self.lock().remove(nar_hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("data"), vec![7u8; 4096]).unwrap();
        std::os::unix::fs::symlink("data", dir.path().join("link")).unwrap();
        dir
    }

    #[test]
    fn trusted_until_anything_under_the_path_changes() {
        let hash = Sha256Hash::of(b"nar");
        type Change = fn(&Path);
        let changes: [(&str, Change); 6] = [
            ("same bytes rewritten", |p| {
                std::fs::write(p.join("data"), vec![7u8; 4096]).unwrap()
            }),
            ("one byte changed", |p| {
                std::fs::write(p.join("data"), vec![8u8; 4096]).unwrap()
            }),
            ("mode changed", |p| {
                let f = p.join("bin/tool");
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap()
            }),
            ("file added", |p| {
                std::fs::write(p.join("bin/new"), b"x").unwrap()
            }),
            ("file replaced by rename", |p| {
                std::fs::write(p.join("tmp"), vec![7u8; 4096]).unwrap();
                std::fs::rename(p.join("tmp"), p.join("data")).unwrap()
            }),
            ("symlink retargeted", |p| {
                std::fs::remove_file(p.join("link")).unwrap();
                std::os::unix::fs::symlink("bin", p.join("link")).unwrap()
            }),
        ];
        for (what, change) in changes {
            let dir = tree();
            let memo = Verified::with_racy(Duration::ZERO);
            let before = fingerprint(dir.path()).unwrap();
            assert!(
                !memo.trusted(&hash, &before),
                "{what}: nothing verified yet"
            );
            memo.record(hash, before);
            // Positive control: unchanged, the same walk is trusted.
            assert!(
                memo.trusted(&hash, &fingerprint(dir.path()).unwrap()),
                "{what}"
            );
            // Past the file system's timestamp tick, as a real alteration comes long after
            // the build (`RACY` covers the other case, tested below).
            std::thread::sleep(Duration::from_millis(20));
            change(dir.path());
            let after = fingerprint(dir.path()).unwrap();
            assert_ne!(before, after, "{what}");
            assert!(!memo.trusted(&hash, &after), "{what}");
            memo.forget(&hash);
            assert!(!memo.trusted(&hash, &before), "{what}: forgotten");
        }
    }

    #[test]
    fn a_path_changed_within_the_racy_window_is_not_remembered() {
        let dir = tree();
        let hash = Sha256Hash::of(b"nar");
        let memo = Verified::with_racy(Duration::from_secs(60));
        let fresh = fingerprint(dir.path()).unwrap();
        memo.record(hash, fresh);
        assert!(!memo.trusted(&hash, &fresh));
        let other = Verified::with_racy(Duration::ZERO);
        other.record(hash, fresh);
        assert!(other.trusted(&hash, &fresh), "positive control");
    }
}
