//! Publishing a host's delivered files (see `crate::files`): content-addressed blobs under
//! `publish/<host>/files/blobs/`, then the signed manifest, both before the release that
//! goes with them; blobs no manifest names any more are removed afterwards.

use std::path::Path;

use crate::config::StateDir;
use crate::files::{self, Entry, Manifest};
use crate::nix::keys::SecretKey;
use crate::state;

use super::DeployError;

/// A file to deliver, as read from its source on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToDeliver {
    pub name: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// The manifest entries of `files`, sorted by name.
pub fn entries(host: &str, files: &[FileToDeliver]) -> Result<Vec<Entry>, DeployError> {
    let mut out = files
        .iter()
        .map(|f| Entry::of(&f.name, &f.content, f.mode))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| DeployError::Files {
            host: host.to_owned(),
            source,
        })?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The published manifest, if any (not trusted: the server's own bookkeeping). One that
/// cannot be read counts as absent, so the next publication replaces it.
pub fn current(state: &StateDir, host: &str) -> Option<Manifest> {
    let bytes = std::fs::read(state.publish_dir(host).join(files::MANIFEST_PATH)).ok()?;
    Manifest::parse_untrusted(&bytes).ok()
}

/// Whether what is published is what `entries` asks for: nothing published and nothing
/// asked, or the same files.
pub fn up_to_date(current: Option<&Manifest>, entries: &[Entry]) -> bool {
    match current {
        None => entries.is_empty(),
        Some(m) => m.same_files(entries),
    }
}

/// Writes the blobs and the manifest of `generation`; a host that never had files and has
/// none gets nothing written.
pub fn write(
    state: &StateDir,
    key: &SecretKey,
    host: &str,
    generation: u64,
    files: &[FileToDeliver],
) -> Result<(), DeployError> {
    let entries = entries(host, files)?;
    let dir = state.publish_dir(host);
    if entries.is_empty() && current(state, host).is_none() {
        return Ok(());
    }
    let blobs = dir.join(files::BLOBS_DIR);
    std::fs::create_dir_all(&blobs).map_err(|source| DeployError::Io {
        path: blobs.clone(),
        source,
    })?;
    for (entry, file) in entries.iter().zip(sorted(files)) {
        let blob = blobs.join(&entry.sha256);
        if !blob.exists() {
            state::write_atomic(&blob, &file.content, 0o600)?;
        }
    }
    let manifest = Manifest::sign(host, generation, entries.clone(), key).map_err(|source| {
        DeployError::Files {
            host: host.to_owned(),
            source,
        }
    })?;
    state::write_atomic(&dir.join(files::MANIFEST_PATH), &manifest.to_bytes(), 0o600)?;
    remove_unlisted_blobs(&blobs, &entries);
    Ok(())
}

fn sorted(files: &[FileToDeliver]) -> Vec<&FileToDeliver> {
    let mut v: Vec<&FileToDeliver> = files.iter().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Removes blobs the current manifest does not name (never fatal: a blob left behind only
/// takes space). An agent still reading the previous manifest fails that attempt and
/// retries with the new one.
fn remove_unlisted_blobs(blobs: &Path, entries: &[Entry]) {
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
        }
    }

    #[test]
    fn publishing_writes_blobs_then_a_manifest_and_drops_old_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().to_owned());
        let key = SecretKey::generate("fleet-1").unwrap();
        assert!(up_to_date(current(&state, "web1").as_ref(), &[]));
        write(&state, &key, "web1", 1, &[]).unwrap();
        assert!(
            current(&state, "web1").is_none(),
            "no files, nothing written"
        );

        let v1 = [file("db-password", "one\n"), file("api-token", "t\n")];
        write(&state, &key, "web1", 2, &v1).unwrap();
        let m = current(&state, "web1").unwrap();
        let manifest_bytes =
            std::fs::read(state.publish_dir("web1").join(files::MANIFEST_PATH)).unwrap();
        files::verify(&manifest_bytes, &key.public(), "web1", 2).unwrap();
        assert!(up_to_date(Some(&m), &entries("web1", &v1).unwrap()));
        for e in &m.files {
            let blob = state
                .publish_dir("web1")
                .join(files::BLOBS_DIR)
                .join(&e.sha256);
            e.check(&std::fs::read(blob).unwrap()).unwrap();
        }

        let v2 = [file("db-password", "two\n")];
        assert!(!up_to_date(Some(&m), &entries("web1", &v2).unwrap()));
        write(&state, &key, "web1", 3, &v2).unwrap();
        let blobs: Vec<_> = std::fs::read_dir(state.publish_dir("web1").join(files::BLOBS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(blobs, [entries("web1", &v2).unwrap()[0].sha256.clone()]);

        // Removing every file publishes an empty manifest, so the host removes them too.
        write(&state, &key, "web1", 4, &[]).unwrap();
        let m = current(&state, "web1").unwrap();
        assert_eq!((m.generation, m.files.len()), (4, 0));
    }
}
