//! Reading the publish tree: which hosts have a valid signed release, and a cheap
//! fingerprint of the tree that tells the poller when to reload.
//!
//! A release is ignored (and logged) when it cannot be read or parsed, when its signature
//! does not verify with the fleet key, or when it names another host than its directory:
//! `publish/web2/release` saying `host web1` would let web2's token fetch web1's closure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::nix::keys::PublicKey;
use crate::nix::store::{self, StorePath};
use crate::release::{Release, check_host_name};

use super::compress::FileIdentity;

/// Directory of the publish tree under the state directory.
pub const PUBLISH_DIR: &str = "publish";

/// A host's verified release, as far as the cache cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub host: String,
    pub generation: u64,
    pub store_path: StorePath,
}

/// The identity of every release file and token file: when it changes, reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(String, Option<FileIdentity>)>);

fn list_dir(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    out.sort();
    out
}

/// Fingerprints `publish/*/release` and, when given, the token directory.
pub fn fingerprint(state_dir: &Path, token_dir: Option<&Path>) -> Fingerprint {
    let mut items: Vec<(String, Option<FileIdentity>)> = list_dir(&state_dir.join(PUBLISH_DIR))
        .into_iter()
        .map(|(name, path)| (name, FileIdentity::at(&path.join("release"))))
        .collect();
    if let Some(dir) = token_dir {
        items.extend(
            list_dir(dir)
                .into_iter()
                .map(|(name, path)| (format!("token:{name}"), FileIdentity::at(&path))),
        );
    }
    Fingerprint(items)
}

/// Why one release was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub host: String,
    pub reason: String,
}

/// The publish tree as one refresh read it.
#[derive(Debug, Default)]
pub struct Releases {
    /// The verified releases.
    pub ok: Vec<Published>,
    /// The releases left out, and why.
    pub skipped: Vec<Skipped>,
    /// Every release file read, verified or not, by host directory: what the hosts may be
    /// shown once the closures of the verified ones are servable.
    pub files: BTreeMap<String, Bytes>,
}

/// Reads and verifies every host's release. Bad ones are returned as [`Skipped`].
pub fn read_releases(state_dir: &Path, key: &PublicKey) -> Releases {
    let mut out = Releases::default();
    for (host, dir) in list_dir(&state_dir.join(PUBLISH_DIR)) {
        let file = dir.join("release");
        let bytes = match std::fs::read(&file) {
            Ok(b) => Bytes::from(b),
            // A host directory without a release yet is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let reason = format!("cannot read {}: {e}", file.display());
                out.skipped.push(Skipped { host, reason });
                continue;
            }
        };
        match check_release(&host, &bytes, key) {
            Ok(p) => out.ok.push(p),
            Err(reason) => out.skipped.push(Skipped {
                host: host.clone(),
                reason,
            }),
        }
        out.files.insert(host, bytes);
    }
    out
}

fn check_release(host: &str, bytes: &[u8], key: &PublicKey) -> Result<Published, String> {
    check_host_name(host).map_err(|e| e.to_string())?;
    let release = Release::parse_untrusted(bytes).map_err(|e| e.to_string())?;
    release.check_signature(key).map_err(|e| e.to_string())?;
    if release.host != host {
        return Err(format!(
            "release in publish/{host}/ is for host {:?}",
            release.host
        ));
    }
    let store_path = store::parse(&release.store_path).map_err(|e| e.to_string())?;
    Ok(Published {
        host: host.to_owned(),
        generation: release.generation,
        store_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::keys::SecretKey;

    const PATH: &str = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top";

    fn write(dir: &Path, host: &str, bytes: &[u8]) {
        let d = dir.join(PUBLISH_DIR).join(host);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("release"), bytes).unwrap();
    }

    #[test]
    fn only_verified_releases_for_their_own_directory_count() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = SecretKey::generate("fleet").unwrap();
        let other = SecretKey::generate("fleet").unwrap();
        let sign = |host: &str, key: &SecretKey| {
            Release::sign(host, 1, PATH, 1_790_000_000, key)
                .unwrap()
                .to_bytes()
        };
        write(dir.path(), "good", &sign("good", &fleet));
        write(dir.path(), "forged", &sign("forged", &other));
        write(dir.path(), "moved", &sign("good", &fleet));
        write(dir.path(), "garbage", b"{not json");
        std::fs::create_dir_all(dir.path().join(PUBLISH_DIR).join("empty")).unwrap();
        let Releases { ok, skipped, files } = read_releases(dir.path(), &fleet.public());
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].host, "good");
        let mut hosts: Vec<_> = skipped.iter().map(|s| s.host.as_str()).collect();
        hosts.sort();
        assert_eq!(hosts, ["forged", "garbage", "moved"]);
        assert!(skipped.iter().any(|s| s.reason.contains("does not verify")));
        let read: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            read,
            ["forged", "garbage", "good", "moved"],
            "every release file read is kept, verified or not; a directory without one is not"
        );
        assert_eq!(files["good"], sign("good", &fleet));
    }

    #[test]
    fn fingerprint_changes_when_a_release_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = fingerprint(dir.path(), None);
        write(dir.path(), "web1", b"one");
        let b = fingerprint(dir.path(), None);
        assert_ne!(a, b);
        assert_eq!(b, fingerprint(dir.path(), None));
        write(dir.path(), "web1", b"two!");
        assert_ne!(b, fingerprint(dir.path(), None));
    }
}
