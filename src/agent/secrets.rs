//! Opening delivered files that are age-encrypted to this host's SSH ed25519 key (the key
//! the agent logs in with): the server publishes only their ciphertext, signed in the
//! manifest like any file; the agent decrypts them in memory just before installing them
//! into `files_dir`, and keeps only the ciphertext in its state directory.
//!
//! A file encrypted to another key does not decrypt: refused, nothing is installed.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::files::Manifest;

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("cannot read this host's SSH key {path} to decrypt delivered files: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this host's SSH key {path} cannot decrypt age files: it must be an unencrypted ed25519 (or RSA) OpenSSH key"
    )]
    Unusable { path: PathBuf },
    #[error(
        "file {name} does not decrypt with this host's SSH key ({problem}): it was encrypted to another key, or damaged; re-encrypt it with `bento secret encrypt`"
    )]
    Decrypt { name: String, problem: String },
}

/// This host's SSH private key, as an age identity.
pub fn identity(path: &Path) -> Result<age::ssh::Identity, SecretError> {
    let key = |source| SecretError::Key {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(key)?;
    let identity = age::ssh::Identity::from_buffer(
        std::io::BufReader::new(file),
        Some(path.display().to_string()),
    )
    .map_err(key)?;
    match identity {
        age::ssh::Identity::Unencrypted(_) => Ok(identity),
        _ => Err(SecretError::Unusable {
            path: path.to_owned(),
        }),
    }
}

/// The contents to install for `manifest`: age files decrypted with the host's key at
/// `ssh_key` (read only when there is one), the others as they are.
pub fn open(
    manifest: &Manifest,
    contents: &[Vec<u8>],
    ssh_key: &Path,
) -> Result<Vec<Vec<u8>>, SecretError> {
    if !manifest.files.iter().any(|e| e.age) {
        return Ok(contents.to_vec());
    }
    let identity = identity(ssh_key)?;
    manifest
        .files
        .iter()
        .zip(contents)
        .map(|(entry, content)| {
            if !entry.age {
                return Ok(content.clone());
            }
            age::decrypt(&identity, content).map_err(|e| SecretError::Decrypt {
                name: entry.name.clone(),
                problem: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::ManifestEntry;

    /// An ed25519 key made by OpenSSH's ssh-keygen, and its recipient.
    fn key(dir: &Path, name: &str) -> (PathBuf, age::ssh::Recipient) {
        let path = dir.join(name);
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
        (path, public.trim().parse().unwrap())
    }

    fn manifest(entries: Vec<ManifestEntry>) -> Manifest {
        Manifest {
            format: crate::files::FORMAT,
            host: "web1".into(),
            generation: 1,
            files: entries,
            signature: String::new(),
        }
    }

    #[test]
    fn only_the_hosts_key_opens_an_untampered_age_file() {
        let dir = tempfile::tempdir().unwrap();
        let (web1, to_web1) = key(dir.path(), "web1");
        let (web2, _) = key(dir.path(), "web2");
        let sealed = age::encrypt(&to_web1, b"hunter2\n").unwrap();
        let plain = b"not secret\n".to_vec();
        let m = manifest(vec![
            ManifestEntry::of_age("db-password", &sealed, 0o400).unwrap(),
            ManifestEntry::of("motd", &plain, 0o444).unwrap(),
        ]);
        let contents = vec![sealed.clone(), plain.clone()];
        assert_eq!(
            open(&m, &contents, &web1).unwrap(),
            vec![b"hunter2\n".to_vec(), plain.clone()]
        );

        let err = open(&m, &contents, &web2).unwrap_err().to_string();
        assert!(
            err.contains("db-password") && err.contains("does not decrypt"),
            "{err}"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err = open(&m, &[tampered, plain.clone()], &web1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not decrypt"), "{err}");

        // No age file: the key is not even read.
        let m = manifest(vec![ManifestEntry::of("motd", &plain, 0o444).unwrap()]);
        let missing = dir.path().join("absent");
        assert_eq!(
            open(&m, std::slice::from_ref(&plain), &missing).unwrap(),
            vec![plain]
        );
        assert!(matches!(
            open(
                &manifest(vec![ManifestEntry::of_age("x", &sealed, 0o400).unwrap()]),
                &[sealed],
                &missing
            ),
            Err(SecretError::Key { .. })
        ));
        assert!(ManifestEntry::of_age("x", b"plain text", 0o400).is_err());
    }
}
