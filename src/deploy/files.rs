//! Publishing a host's delivered files (see `crate::files`): content-addressed blobs under
//! `publish/<host>/files/blobs/`, then the signed manifest, both before the release that
//! goes with them; blobs no manifest names any more are removed afterwards.

use std::collections::HashMap;
use std::path::Path;

use crate::config::{Fleet, StateDir};
use crate::durable;
use crate::files::{self, Manifest, ManifestEntry};
use crate::nix::keys::SecretKey;

use super::DeployError;

/// A file to deliver, as read from its source on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToDeliver {
    pub name: String,
    pub content: Vec<u8>,
    pub mode: u32,
    /// `content` is age ciphertext for the host (`crate::secret`), published as it is.
    pub age: bool,
}

/// Reads the files `[hosts.<host>.files]` delivers, from their sources on this server
/// (none for a host the fleet does not list).
pub fn read_sources(fleet: &Fleet, host: &str) -> Result<Vec<FileToDeliver>, DeployError> {
    let Some(h) = fleet.hosts.get(host) else {
        return Ok(Vec::new());
    };
    h.files
        .iter()
        .map(|(name, file)| {
            let content =
                std::fs::read(&file.source).map_err(|source| DeployError::FileSource {
                    host: host.to_owned(),
                    name: name.clone(),
                    path: file.source.clone(),
                    source,
                })?;
            let age = crate::secret::is_age_path(&file.source);
            if age {
                check_sealed_for(&content, h, name, &file.source)?;
            }
            Ok(FileToDeliver {
                name: name.clone(),
                content,
                mode: file.mode,
                age,
            })
        })
        .collect()
}

/// An `.age` source must be an age file with a recipient for the host's SSH key: said at
/// deploy, before any agent refuses it.
fn check_sealed_for(
    content: &[u8],
    host: &crate::config::Host,
    name: &str,
    source: &Path,
) -> Result<(), DeployError> {
    let sealed = |problem: String| DeployError::Sealed {
        host: host.name.clone(),
        name: name.to_owned(),
        path: source.to_owned(),
        problem,
    };
    let for_host = crate::secret::is_encrypted_to(content, &host.ssh_key.to_openssh())
        .map_err(|e| sealed(e.to_string()))?;
    if !for_host {
        return Err(sealed(format!(
            "it is not encrypted to {}'s ssh_key in bento.toml, so its agent could not read it: encrypt it again with `bento secret encrypt {} {name}`",
            host.name, host.name
        )));
    }
    Ok(())
}

/// A host's files for one deploy: read, hashed and compared with what is published once.
#[derive(Debug)]
pub struct HostFiles {
    /// Manifest entries, sorted by name.
    entries: Vec<ManifestEntry>,
    /// Contents by SHA-256 (hex).
    contents: HashMap<String, Vec<u8>>,
    /// The manifest published now, if any.
    published: Option<Manifest>,
}

impl HostFiles {
    /// Hashes `files` and reads the host's published manifest.
    pub fn prepare(
        state: &StateDir,
        host: &str,
        files: &[FileToDeliver],
    ) -> Result<HostFiles, DeployError> {
        let mut entries = Vec::with_capacity(files.len());
        let mut contents = HashMap::with_capacity(files.len());
        for f in files {
            let mut entry = ManifestEntry::of(&f.name, &f.content, f.mode).map_err(|source| {
                DeployError::Files {
                    host: host.to_owned(),
                    source,
                }
            })?;
            entry.age = f.age;
            contents.insert(entry.sha256.clone(), f.content.clone());
            entries.push(entry);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(HostFiles {
            entries,
            contents,
            published: current(state, host),
        })
    }

    /// Whether what is published is what is asked for: nothing published and nothing
    /// asked, or the same files (names, contents, modes).
    pub fn up_to_date(&self) -> bool {
        match &self.published {
            None => self.entries.is_empty(),
            Some(m) => m.same_files(&self.entries),
        }
    }

    /// Writes the blobs, then the manifest of `generation`; a host that never had files
    /// and has none gets nothing written.
    pub fn write(
        &self,
        state: &StateDir,
        key: &SecretKey,
        host: &str,
        generation: u64,
    ) -> Result<(), DeployError> {
        if self.entries.is_empty() && self.published.is_none() {
            return Ok(());
        }
        let dir = state.publish_dir(host);
        let blobs = dir.join(files::BLOBS_DIR);
        std::fs::create_dir_all(&blobs).map_err(|source| DeployError::Io {
            path: blobs.clone(),
            source,
        })?;
        // Group-readable: on a NixOS server the state directory belongs to group `bento`,
        // whose members (operators) deploy and whose user serves; nobody else reads them.
        for (sha256, content) in &self.contents {
            let blob = blobs.join(sha256);
            if !blob.exists() {
                durable::write_atomic(&blob, content, 0o640)?;
            }
        }
        let manifest =
            Manifest::sign(host, generation, self.entries.clone(), key).map_err(|source| {
                DeployError::Files {
                    host: host.to_owned(),
                    source,
                }
            })?;
        durable::write_atomic(&dir.join(files::MANIFEST_PATH), &manifest.to_bytes(), 0o640)?;
        remove_unlisted_blobs(&blobs, &self.entries);
        Ok(())
    }
}

/// The published manifest, if any (not trusted: the server's own bookkeeping). One that
/// cannot be read counts as absent, so the next publication replaces it.
fn current(state: &StateDir, host: &str) -> Option<Manifest> {
    let bytes = std::fs::read(state.publish_dir(host).join(files::MANIFEST_PATH)).ok()?;
    Manifest::parse_untrusted(&bytes).ok()
}

/// Removes blobs the current manifest does not name (never fatal: a blob left behind only
/// takes space). An agent still reading the previous manifest fails that attempt and
/// retries with the new one.
fn remove_unlisted_blobs(blobs: &Path, entries: &[ManifestEntry]) {
    let Ok(list) = std::fs::read_dir(blobs) else {
        return;
    };
    for e in list.flatten() {
        let name = e.file_name();
        let keep = entries.iter().any(|x| x.sha256.as_str() == name);
        if !keep && let Err(err) = std::fs::remove_file(e.path()) {
            tracing::warn!(path = %e.path().display(), error = %err, "cannot remove an old file blob");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &str) -> FileToDeliver {
        FileToDeliver {
            name: name.into(),
            content: content.as_bytes().to_vec(),
            mode: 0o400,
            age: false,
        }
    }

    #[test]
    fn publishing_writes_blobs_then_a_manifest_and_drops_old_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().to_owned());
        let key = SecretKey::generate("fleet-1").unwrap();
        let publish = |generation, files: &[FileToDeliver]| {
            let prepared = HostFiles::prepare(&state, "web1", files).unwrap();
            let was_up_to_date = prepared.up_to_date();
            prepared.write(&state, &key, "web1", generation).unwrap();
            was_up_to_date
        };
        assert!(publish(1, &[]), "no files, none published");
        assert!(
            current(&state, "web1").is_none(),
            "no files, nothing written"
        );

        let v1 = [file("db-password", "one\n"), file("api-token", "t\n")];
        assert!(!publish(2, &v1));
        let m = current(&state, "web1").unwrap();
        let manifest_bytes =
            std::fs::read(state.publish_dir("web1").join(files::MANIFEST_PATH)).unwrap();
        files::verify(&manifest_bytes, &key.public(), "web1", 2).unwrap();
        assert_eq!(m.files.len(), 2);
        for e in &m.files {
            let blob = state
                .publish_dir("web1")
                .join(files::BLOBS_DIR)
                .join(&e.sha256);
            e.check(&std::fs::read(blob).unwrap()).unwrap();
        }
        assert!(
            HostFiles::prepare(&state, "web1", &v1)
                .unwrap()
                .up_to_date()
        );

        let v2 = [file("db-password", "two\n")];
        assert!(!publish(3, &v2));
        let blobs: Vec<_> = std::fs::read_dir(state.publish_dir("web1").join(files::BLOBS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let m = current(&state, "web1").unwrap();
        assert_eq!(blobs, [m.files[0].sha256.clone()], "the old blobs are gone");

        // Removing every file publishes an empty manifest, so the host removes them too.
        assert!(!publish(4, &[]));
        let m = current(&state, "web1").unwrap();
        assert_eq!((m.generation, m.files.len()), (4, 0));
    }
}
