//! Store paths found altered under the server: their NAR no longer hashes (or sizes) to
//! what their narinfo says. Nothing of such a path is served as a plain NAR again, and its
//! plain narinfo is no longer advertised, until a refresh finds that it matches once more
//! (the path was repaired and redeployed). Each path is logged once
//! when it is found, and counted.
//!
//! Found by the refresher (compressing checks the NAR hash) or by a plain NAR body, which
//! is hashed while it is sent (unless `verified` vouches for its path) and cut before its
//! last chunk on a mismatch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::nix::hash::Sha256Hash;
use crate::nix::nar;

use super::metrics::Metrics;

/// The broken paths, by NAR hash (the store path, for the log).
#[derive(Debug, Default)]
pub(super) struct Broken {
    paths: Mutex<HashMap<Sha256Hash, String>>,
}

impl Broken {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sha256Hash, String>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the path of `nar_hash` broken; logs and counts it the first time.
    pub(super) fn mark(&self, nar_hash: Sha256Hash, path: &str, why: &str, metrics: &Metrics) {
        let mut paths = self.lock();
        if paths.insert(nar_hash, path.to_owned()).is_none() {
            tracing::error!(
                path,
                why,
                "store path altered on the server: it is no longer served (repair it, e.g. `nix-store --repair-path`, and deploy again)"
            );
            metrics.found_broken(paths.len());
        }
    }

    /// The path of `nar_hash` matched its narinfo again.
    pub(super) fn clear(&self, nar_hash: &Sha256Hash, metrics: &Metrics) {
        let mut paths = self.lock();
        if let Some(path) = paths.remove(nar_hash) {
            tracing::info!(path = %path, "store path matches its narinfo again; served again");
            metrics.broken_now(paths.len());
        }
    }

    /// Forgets paths that left the index.
    pub(super) fn retain(&self, keep: impl Fn(&Sha256Hash) -> bool, metrics: &Metrics) {
        let mut paths = self.lock();
        paths.retain(|h, _| keep(h));
        metrics.broken_now(paths.len());
    }

    /// Hashes each broken path again and clears those that match (repaired). Blocking:
    /// the refresher calls it, so a repair takes effect at the next deploy.
    pub(super) fn recheck(&self, metrics: &Metrics) {
        let broken: Vec<(Sha256Hash, String)> =
            self.lock().iter().map(|(h, p)| (*h, p.clone())).collect();
        for (nar_hash, path) in broken {
            if nar::hash(Path::new(&path)).is_ok_and(|(found, _)| found == nar_hash) {
                self.clear(&nar_hash, metrics);
            }
        }
    }

    pub(super) fn contains(&self, nar_hash: &Sha256Hash) -> bool {
        self.lock().contains_key(nar_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_once_cleared_when_repaired_forgotten_when_gone() {
        let (m, b) = (Metrics::default(), Broken::default());
        let (one, two) = (Sha256Hash::of(b"one"), Sha256Hash::of(b"two"));
        b.mark(one, "/nix/store/x-one", "hash", &m);
        b.mark(one, "/nix/store/x-one", "hash again", &m);
        b.mark(two, "/nix/store/x-two", "size", &m);
        assert_eq!(m.broken_found_total(), 2, "each path counted once");
        assert!(b.contains(&one) && b.contains(&two));
        b.clear(&one, &m);
        assert!(!b.contains(&one));
        b.retain(|h| *h != two, &m);
        assert!(!b.contains(&two));
    }
}
