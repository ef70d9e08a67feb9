//! Where delivered files live, and how they survive reboots.
//!
//! `files_dir` is a directory Bento owns: the agent makes it with the marker file
//! `.bento-files` inside and refuses a directory that exists without it (an empty one is
//! taken over), so a mistaken `files_dir = "/srv/www"` never has its files replaced or
//! removed. The agent only ever removes names it installed itself (those of the manifest
//! it installed before).
//!
//! The default, `/run/bento/files`, is empty after a reboot, and the agent does not fetch
//! again the files of a generation it already applied. So every verified set it installs
//! is also kept in its state directory (`delivered/manifest.json`, the signed manifest as
//! received, and `delivered/blobs/<sha256>`), and [`restore`] puts the files back from
//! there, after checking the manifest's signature and every blob again: at the agent's
//! start, in `bento agent restore-files` (run by `bento-files.service` before
//! `bento-files.target`), and at each attempt when a file is missing or changed.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::config::Agent;
use crate::durable::write_atomic;
use crate::files::{self, FilesError, Manifest};
use crate::nix::keys::PublicKey;
use crate::secret::{self, SecretError};

/// The marker of a directory Bento owns.
pub const MARKER: &str = ".bento-files";
/// The verified copy, under the state directory.
const KEPT: &str = "delivered";

#[derive(Debug, Error)]
pub enum FilesDirError {
    #[error(
        "files_dir {} exists and is not Bento's (no {MARKER} inside); choose a directory of its own, or add the marker if Bento may replace and remove files in it",
        .0.display()
    )]
    NotOurs(PathBuf),
    #[error("cannot install into {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the copy of the delivered files kept in {path} does not verify: {source}")]
    Kept {
        path: PathBuf,
        #[source]
        source: FilesError,
    },
    /// An age-encrypted file this host's key cannot open (another host's, or altered).
    #[error("file {name}: {source}")]
    Sealed {
        name: String,
        #[source]
        source: SecretError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesDirError + use<> {
    let path = path.display().to_string();
    move |source| FilesDirError::Io { path, source }
}

/// Whether `dir` may serve as `files_dir` (for `check-config`): absent, empty, or marked.
/// A directory this process may not list (`check-config` in a build, as a build user, on
/// a host whose `files_dir` is 0751) passes: the agent, as root, checks again before it
/// installs anything.
pub fn check(dir: &Path) -> Result<(), FilesDirError> {
    if dir.join(MARKER).is_file() {
        return Ok(());
    }
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(io(dir)(e)),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(FilesDirError::NotOurs(dir.to_owned())),
        },
    }
}

/// Makes `dir` Bento's: created (mode 0751: others may open a file whose mode allows it,
/// not list the names) with its marker, or an empty one taken over; refuses any other.
pub fn claim(dir: &Path) -> Result<(), FilesDirError> {
    check(dir)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o751)).map_err(io(dir))?;
    let marker = dir.join(MARKER);
    if !marker.is_file() {
        let text =
            "Bento installs the files it delivers to this host here and removes only those.\n";
        write_atomic(&marker, text.as_bytes(), 0o644).map_err(|e| FilesDirError::Io {
            path: marker.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

/// What was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Names written (all of the manifest's, or, when restoring, those that were missing or
    /// differed).
    pub written: Vec<String>,
    /// Names of the earlier set the manifest no longer lists, removed.
    pub removed: Vec<String>,
}

/// Puts verified files in place: each written to a hidden temp file in `dir`, given its
/// mode, synced and renamed over its name. With `only_changed`, files already right
/// (content and mode) are left alone. Then the names in `previous` that the manifest no
/// longer lists are removed; no other file is ever touched.
pub fn install(
    manifest: &Manifest,
    contents: &[Vec<u8>],
    dir: &Path,
    previous: &[String],
    only_changed: bool,
) -> Result<Installed, FilesDirError> {
    claim(dir)?;
    let mut written = Vec::new();
    for (entry, content) in manifest.files.iter().zip(contents) {
        let target = dir.join(&entry.name);
        if only_changed && is_right(&target, entry.mode, content) {
            continue;
        }
        let temp = dir.join(format!(".{}.incoming", entry.name));
        let _ = std::fs::remove_file(&temp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io(&temp))?;
        f.write_all(content).map_err(io(&temp))?;
        f.set_permissions(std::fs::Permissions::from_mode(entry.mode))
            .map_err(io(&temp))?;
        f.sync_all().map_err(io(&temp))?;
        drop(f);
        std::fs::rename(&temp, &target).map_err(io(&target))?;
        written.push(entry.name.clone());
    }
    let mut removed = Vec::new();
    for name in previous {
        if manifest.files.iter().any(|e| &e.name == name) || files::check_name(name).is_err() {
            continue;
        }
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed.push(name.clone());
            }
            _ => {}
        }
    }
    Ok(Installed { written, removed })
}

/// Whether `path` is a regular file with `mode` and exactly `content`.
fn is_right(path: &Path, mode: u32, content: &[u8]) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.mode() & 0o7777 == mode
        && meta.len() == content.len() as u64
        && std::fs::read(path).is_ok_and(|c| c == content)
}

fn kept_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(KEPT)
}

/// Keeps the verified set (the manifest's bytes as signed, and each content) in the state
/// directory, replacing the one kept before; blobs no longer listed are removed.
pub fn keep(
    state_dir: &Path,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    contents: &[Vec<u8>],
) -> Result<(), FilesDirError> {
    let dir = kept_dir(state_dir);
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let werr = |path: &Path| {
        let path = path.display().to_string();
        move |e: crate::durable::WriteError| FilesDirError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        }
    };
    for (entry, content) in manifest.files.iter().zip(contents) {
        let blob = blobs.join(&entry.sha256);
        if !blob.exists() {
            write_atomic(&blob, content, 0o600).map_err(werr(&blob))?;
        }
    }
    let path = dir.join("manifest.json");
    write_atomic(&path, manifest_bytes, 0o600).map_err(werr(&path))?;
    for e in std::fs::read_dir(&blobs).map_err(io(&blobs))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !manifest.files.iter().any(|f| f.sha256 == name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// The names of the set kept (unverified: only used to know what Bento installed).
pub fn kept_names(state_dir: &Path) -> Vec<String> {
    std::fs::read(kept_dir(state_dir).join("manifest.json"))
        .ok()
        .and_then(|b| Manifest::parse_untrusted(&b).ok())
        .map(|m| m.files.into_iter().map(|f| f.name).collect())
        .unwrap_or_default()
}

/// A verified set of files: the manifest and each file's content, in its order.
#[derive(Debug, Clone)]
pub struct FileSet {
    pub manifest: Manifest,
    pub contents: Vec<Vec<u8>>,
}

/// The kept set, verified again (fleet key, this host, every blob); `None` when nothing
/// was ever delivered.
pub fn load_kept(
    state_dir: &Path,
    key: &PublicKey,
    host: &str,
) -> Result<Option<FileSet>, FilesDirError> {
    let dir = kept_dir(state_dir);
    let path = dir.join("manifest.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let kept = |source| FilesDirError::Kept {
        path: dir.clone(),
        source,
    };
    let untrusted = Manifest::parse_untrusted(&bytes).map_err(kept)?;
    let manifest = files::verify(&bytes, key, host, untrusted.generation).map_err(kept)?;
    let mut contents = Vec::with_capacity(manifest.files.len());
    for entry in &manifest.files {
        let blob = dir.join("blobs").join(&entry.sha256);
        let content = std::fs::read(&blob).map_err(io(&blob))?;
        entry.check(&content).map_err(kept)?;
        contents.push(content);
    }
    Ok(Some(FileSet { manifest, contents }))
}

/// What is installed for each verified blob of `manifest`: the blob itself, or for an age
/// entry what this host's SSH key (`identity`) decrypts it to. Ciphertext stays ciphertext
/// everywhere but in `files_dir`.
pub fn opened(
    manifest: &Manifest,
    blobs: &[Vec<u8>],
    identity: &Path,
) -> Result<Vec<Vec<u8>>, FilesDirError> {
    manifest
        .files
        .iter()
        .zip(blobs)
        .map(|(entry, blob)| {
            if entry.age {
                secret::decrypt(blob, identity).map_err(|source| FilesDirError::Sealed {
                    name: entry.name.clone(),
                    source,
                })
            } else {
                Ok(blob.clone())
            }
        })
        .collect()
}

/// Puts back every kept file that is missing or differs (content or mode), after checking
/// the kept set again (age files are decrypted again with `identity`, the host's SSH key).
/// Returns the names written (empty: all were right, or nothing kept).
pub fn restore(
    state_dir: &Path,
    key: &PublicKey,
    host: &str,
    identity: &Path,
    dir: &Path,
) -> Result<Vec<String>, FilesDirError> {
    let Some(set) = load_kept(state_dir, key, host)? else {
        return Ok(Vec::new());
    };
    let contents = opened(&set.manifest, &set.contents, identity)?;
    install(&set.manifest, &contents, dir, &[], true).map(|i| i.written)
}

/// [`restore`] for `agent`, logged: what was put back, or why nothing could be (the next
/// attempt tries again).
pub fn put_back(agent: &Agent) {
    match restore(
        &agent.state_dir,
        &agent.fleet_key,
        &agent.host,
        &agent.ssh_key,
        &agent.files_dir,
    ) {
        Ok(names) if names.is_empty() => {}
        Ok(names) => tracing::info!(
            files = %names.join(", "),
            dir = %agent.files_dir.display(),
            "delivered files put back"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot put the delivered files back"),
    }
}

/// A cheap look (no hashing) for a kept file that is missing, resized or of another mode:
/// then [`restore`] is due.
pub fn needs_restore(state_dir: &Path, dir: &Path) -> bool {
    let Some(manifest) = std::fs::read(kept_dir(state_dir).join("manifest.json"))
        .ok()
        .and_then(|b| Manifest::parse_untrusted(&b).ok())
    else {
        return false;
    };
    // An age file's size on the host is its plaintext's, which only decrypting tells.
    manifest.files.iter().any(|e| {
        std::fs::symlink_metadata(dir.join(&e.name))
            .map(|m| !m.is_file() || (!e.age && m.len() != e.size) || m.mode() & 0o7777 != e.mode)
            .unwrap_or(true)
    })
}

#[cfg(test)]
mod tests;
