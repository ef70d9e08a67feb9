//! Installing the files the server delivers outside the Nix store (`crate::files`): fetch
//! the signed manifest, check it against the fleet key, this host and the release's
//! generation, fetch each blob and check it against the manifest, then install them into
//! the directory Bento owns and keep the verified set for after a reboot (`files_dir`).
//! Nothing is installed unless everything checked.

use std::path::Path;

use thiserror::Error;

use super::files_dir::{self, FilesDirError};
use super::link::{Link, LinkError};
use crate::files::{self, FilesError};
use crate::nix::keys::PublicKey;

#[derive(Debug, Error)]
pub enum DeliverError {
    /// The server could not be read; worth retrying.
    #[error("cannot fetch /{path}: {source}")]
    Fetch {
        path: String,
        #[source]
        source: LinkError,
    },
    /// The manifest lists a blob the server does not have (it is publishing); retry.
    #[error("/{path} is listed in the files manifest but missing on the server; retry shortly")]
    Missing { path: String },
    /// What arrived does not verify: refused.
    #[error(transparent)]
    Refused(#[from] FilesError),
    #[error(transparent)]
    Install(#[from] FilesDirError),
}

impl DeliverError {
    /// Whether the attempt should be reported as refused (tampering, wrong key or host)
    /// rather than as a copy to retry.
    pub fn is_refusal(&self) -> bool {
        match self {
            DeliverError::Refused(e) => !matches!(e, FilesError::WrongGeneration { .. }),
            DeliverError::Install(FilesDirError::Sealed { .. }) => true,
            _ => false,
        }
    }
}

/// What was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// The server publishes no files for this host; `files_dir` is left alone.
    Nothing,
    /// These files are in place (and no others).
    Files {
        installed: Vec<String>,
        removed: Vec<String>,
    },
}

/// Where delivered files go: the agent's own directory and its state directory.
#[derive(Debug, Clone, Copy)]
pub struct Places<'a> {
    pub files_dir: &'a Path,
    pub state_dir: &'a Path,
    /// The host's SSH private key, which opens age-encrypted files.
    pub identity: &'a Path,
}

/// Fetches, verifies and installs this host's files for the release `generation`, and
/// keeps the verified set in the state directory.
pub async fn deliver<L: Link + Sync>(
    link: &L,
    key: &PublicKey,
    host: &str,
    generation: u64,
    places: Places<'_>,
) -> Result<Delivered, DeliverError> {
    let fetch = async |path: String, max: u64| {
        link.fetch_file(&format!("/{path}"), max)
            .await
            .map_err(|source| DeliverError::Fetch { path, source })
    };
    let Some(bytes) = fetch(
        files::MANIFEST_PATH.to_owned(),
        files::MAX_MANIFEST_BYTES as u64,
    )
    .await?
    else {
        return Ok(Delivered::Nothing);
    };
    let manifest = files::verify(&bytes, key, host, generation)?;
    let mut contents = Vec::with_capacity(manifest.files.len());
    for entry in &manifest.files {
        let path = format!("{}/{}", files::BLOBS_DIR, entry.sha256);
        // One byte more than signed, so that a longer blob arrives and is refused for its
        // size, while a much longer one is cut off early.
        let content = fetch(path.clone(), entry.size.saturating_add(1))
            .await?
            .ok_or(DeliverError::Missing { path })?;
        entry.check(&content)?;
        contents.push(content);
    }
    let opened = files_dir::opened(&manifest, &contents, places.identity)?;
    let previous = files_dir::kept_names(places.state_dir);
    let installed = files_dir::install(&manifest, &opened, places.files_dir, &previous, false)?;
    files_dir::keep(places.state_dir, &bytes, &manifest, &contents)?;
    Ok(Delivered::Files {
        installed: installed.written,
        removed: installed.removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{Manifest, ManifestEntry};
    use crate::nix::keys::SecretKey;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    /// The files part of a host's SFTP tree, in memory.
    struct Tree(HashMap<String, Vec<u8>>);

    impl Link for Tree {
        async fn fetch_release(&self) -> Result<Vec<u8>, LinkError> {
            Err(LinkError("not in this test".into()))
        }
        async fn probe_fresh(&self) -> Result<(), LinkError> {
            Ok(())
        }
        async fn fetch_file(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, LinkError> {
            match self.0.get(path) {
                Some(b) if b.len() as u64 > max => Err(LinkError("too large".into())),
                other => Ok(other.cloned()),
            }
        }
        async fn upload_report(&self, _: &str, _: &[u8]) -> Result<(), LinkError> {
            Ok(())
        }
        async fn wait_for_change(&self, _: Option<u64>, _: Duration) -> Result<bool, LinkError> {
            Ok(false)
        }
    }

    fn tree(key: &SecretKey, generation: u64, files: &[(&str, &str, u32)]) -> Tree {
        let mut t = HashMap::new();
        let mut entries = Vec::new();
        for (name, content, mode) in files {
            let e = ManifestEntry::of(name, content.as_bytes(), *mode).unwrap();
            t.insert(
                format!("/{}/{}", files::BLOBS_DIR, e.sha256),
                content.as_bytes().to_vec(),
            );
            entries.push(e);
        }
        let m = Manifest::sign("web1", generation, entries, key).unwrap();
        t.insert(format!("/{}", files::MANIFEST_PATH), m.to_bytes());
        Tree(t)
    }

    #[tokio::test]
    async fn files_are_installed_with_their_modes_and_stale_ones_removed() {
        let key = SecretKey::generate("fleet-1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("files");
        let places = Places {
            files_dir: &out,
            state_dir: &dir.path().join("state"),
            identity: Path::new("/no-ssh-key"),
        };
        let t = tree(
            &key,
            3,
            &[("db-password", "one\n", 0o400), ("ca.pem", "ca\n", 0o444)],
        );
        let got = deliver(&t, &key.public(), "web1", 3, places).await.unwrap();
        assert_eq!(
            got,
            Delivered::Files {
                installed: vec!["ca.pem".into(), "db-password".into()],
                removed: vec![]
            }
        );
        let meta = std::fs::metadata(out.join("db-password")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        let listing = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(listing, 0o751, "others cannot list the names");
        assert_eq!(std::fs::read(out.join("db-password")).unwrap(), b"one\n");

        // A file Bento did not install is never removed.
        std::fs::write(out.join("not-ours"), "x").unwrap();
        let t = tree(&key, 4, &[("db-password", "two\n", 0o400)]);
        let got = deliver(&t, &key.public(), "web1", 4, places).await.unwrap();
        assert_eq!(
            got,
            Delivered::Files {
                installed: vec!["db-password".into()],
                removed: vec!["ca.pem".into()]
            }
        );
        assert_eq!(std::fs::read(out.join("db-password")).unwrap(), b"two\n");
        assert!(out.join("not-ours").exists());
    }

    #[tokio::test]
    async fn nothing_is_installed_unless_everything_verifies() {
        let key = SecretKey::generate("fleet-1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("files");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(files_dir::MARKER), "").unwrap();
        std::fs::write(out.join("db-password"), "old\n").unwrap();
        let places = Places {
            files_dir: &out,
            state_dir: &dir.path().join("state"),
            identity: Path::new("/no-ssh-key"),
        };

        // A blob altered on the server.
        let mut t = tree(
            &key,
            3,
            &[("a", "fine\n", 0o400), ("db-password", "new\n", 0o400)],
        );
        let blob = ManifestEntry::of("db-password", b"new\n", 0o400)
            .unwrap()
            .sha256;
        t.0.insert(format!("/{}/{blob}", files::BLOBS_DIR), b"evil\n".to_vec());
        let err = deliver(&t, &key.public(), "web1", 3, places)
            .await
            .unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(err.to_string().contains("db-password"), "{err}");
        assert!(
            !out.join("a").exists(),
            "nothing installed from a set that failed"
        );
        assert_eq!(std::fs::read(out.join("db-password")).unwrap(), b"old\n");

        // Another fleet's key; a manifest of another generation (transient, not refused).
        let stranger = SecretKey::generate("fleet-1").unwrap();
        let t = tree(&stranger, 3, &[("db-password", "new\n", 0o400)]);
        let err = deliver(&t, &key.public(), "web1", 3, places)
            .await
            .unwrap_err();
        assert!(err.is_refusal(), "{err}");
        let t = tree(&key, 2, &[("db-password", "new\n", 0o400)]);
        let err = deliver(&t, &key.public(), "web1", 3, places)
            .await
            .unwrap_err();
        assert!(!err.is_refusal(), "{err}");

        // A blob missing (the server is publishing): retried, not refused.
        let mut t = tree(&key, 3, &[("db-password", "new\n", 0o400)]);
        t.0.retain(|k, _| !k.contains("blobs"));
        let err = deliver(&t, &key.public(), "web1", 3, places)
            .await
            .unwrap_err();
        assert!(matches!(err, DeliverError::Missing { .. }), "{err}");

        // No manifest at all: the directory is left alone.
        let t = Tree(HashMap::new());
        let got = deliver(&t, &key.public(), "web1", 3, places).await.unwrap();
        assert_eq!(got, Delivered::Nothing);
        assert_eq!(std::fs::read(out.join("db-password")).unwrap(), b"old\n");
    }
}
