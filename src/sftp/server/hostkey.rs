//! The server's SSH host key: generated (ed25519) on first start, persisted with mode 0600,
//! and shown as a `known_hosts` line for agents to pin. Agents never trust on first use:
//! the NixOS module or the administrator copies the public key into each agent's config.
//!
//! Next to the key, `<path>.pub` holds the public key in OpenSSH form (like `ssh-keygen`).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rand::RngCore as _;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey};
use thiserror::Error;

use crate::openssh::{SshKeyError, parse_private_key};

/// The comment written into generated keys.
const KEY_COMMENT: &str = "bento-server";

#[derive(Debug, Error)]
pub enum HostKeyError {
    #[error("cannot read SSH host key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write SSH host key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SSH host key {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: SshKeyError,
    },
    #[error(
        "SSH host key {path} is readable by group or others (mode {mode:04o}); run chmod 600 on it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot encode the SSH host key: {0}")]
    Encode(String),
}

/// The server's host key.
#[derive(Clone)]
pub struct HostKey {
    key: PrivateKey,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &self.public_openssh())
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// A fresh ed25519 key, not persisted (tests, benchmarks).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment(KEY_COMMENT);
        HostKey { key }
    }

    /// The public key as `ssh-ed25519 AAAA...` (no comment): what an agent pins.
    pub fn public_openssh(&self) -> String {
        let public = self.key.public_key();
        let mut bare = public.clone();
        bare.set_comment("");
        bare.to_openssh()
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| String::new())
    }

    /// A `known_hosts` line for OpenSSH clients: `host ssh-ed25519 AAAA...`, or
    /// `[host]:port ssh-ed25519 AAAA...` when the port is not 22.
    pub fn known_hosts_line(&self, host: &str, port: u16) -> String {
        let pattern = if port == 22 {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        format!("{pattern} {}", self.public_openssh())
    }

    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    pub(crate) fn private_key(&self) -> &PrivateKey {
        &self.key
    }
}

/// Loads the host key at `path`, or generates and persists one (mode 0600, atomically) when
/// the file does not exist. A key readable by group or others is refused, like OpenSSH does.
pub fn load_or_create_host_key(path: &Path) -> Result<HostKey, HostKeyError> {
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path)
                .map_err(|source| HostKeyError::Read {
                    path: path.to_owned(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(HostKeyError::TooOpen {
                    path: path.to_owned(),
                    mode: mode & 0o7777,
                });
            }
            let key = parse_private_key(&bytes).map_err(|source| HostKeyError::Parse {
                path: path.to_owned(),
                source,
            })?;
            let key = HostKey { key };
            write_public_if_missing(path, &key)?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = HostKey::generate();
            persist(path, &key)?;
            tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(), "generated SSH host key");
            Ok(key)
        }
        Err(source) => Err(HostKeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn persist(path: &Path, key: &HostKey) -> Result<(), HostKeyError> {
    let werr = |source| HostKeyError::Write {
        path: path.to_owned(),
        source,
    };
    let pem = key
        .key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Encode(e.to_string()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(werr)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "host_key".to_owned());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    let written = f
        .write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            // Never replace a key another process created meanwhile.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp,
                rustix::fs::CWD,
                path,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(std::io::Error::from)
        })
        .and_then(|()| fs::File::open(&dir)?.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(werr(e));
    }
    write_public_if_missing(path, key)
}

fn write_public_if_missing(path: &Path, key: &HostKey) -> Result<(), HostKeyError> {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    if pub_path.exists() {
        return Ok(());
    }
    let line = format!("{} {KEY_COMMENT}\n", key.public_openssh());
    fs::write(&pub_path, line).map_err(|source| HostKeyError::Write {
        path: pub_path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/ssh_host_ed25519_key");
        let first = load_or_create_host_key(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create_host_key(&path).unwrap();
        assert_eq!(first.public_openssh(), second.public_openssh());
        assert!(first.public_openssh().starts_with("ssh-ed25519 AAAA"));
        let pub_file =
            fs::read_to_string(dir.path().join("keys/ssh_host_ed25519_key.pub")).unwrap();
        assert!(pub_file.starts_with(&first.public_openssh()), "{pub_file}");
        assert_eq!(
            first.known_hosts_line("127.0.0.1", 2222),
            format!("[127.0.0.1]:2222 {}", first.public_openssh())
        );
        assert_eq!(
            first.known_hosts_line("bento.example", 22),
            format!("bento.example {}", first.public_openssh())
        );
    }

    #[test]
    fn refuses_open_permissions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        load_or_create_host_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_host_key(&path).unwrap_err();
        assert!(
            matches!(err, HostKeyError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );

        let junk = dir.path().join("junk");
        fs::write(&junk, "not a key").unwrap();
        fs::set_permissions(&junk, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_host_key(&junk).unwrap_err();
        assert!(matches!(err, HostKeyError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("junk"), "{err}");
    }
}
