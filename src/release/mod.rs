//! Releases: what the server publishes for one host and the only thing an agent trusts.
//!
//! A release names a host, a generation (a number that only grows, per host), the system's
//! store path and its creation time, signed by the fleet key over a canonical encoding of
//! exactly those fields. The file is JSON; the signed bytes are [`Release::signed_bytes`],
//! a line-based encoding that does not depend on JSON formatting.
//!
//! [`verify`] is the code the agent runs: it refuses unsigned releases, other keys, other
//! hosts, altered fields, truncated files, and generations not newer than the last applied.
//!
//! May import: `nix` (keys, store paths). Nothing above it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::nix::keys::{KeyError, PublicKey, SecretKey};
use crate::nix::store;

/// The release encoding version this code writes and accepts.
pub const FORMAT: u32 = 1;

/// Largest release file accepted: a release is a few hundred bytes.
pub const MAX_RELEASE_BYTES: usize = 16 * 1024;

#[derive(Debug, Error)]
pub enum ReleaseError {
    #[error(
        "release is truncated (the file ends early); the server may still be writing it, retry later"
    )]
    Truncated,
    #[error("release is malformed: {0}")]
    Malformed(String),
    #[error("release is {size} bytes, more than the {MAX_RELEASE_BYTES} a release can be")]
    TooLarge { size: usize },
    #[error(
        "release uses format {got}, but this Bento understands format {FORMAT}; upgrade Bento on this host"
    )]
    UnsupportedFormat { got: u32 },
    #[error(
        "release is for host {got:?}, but this is {expected:?}; refusing another host's release"
    )]
    WrongHost { expected: String, got: String },
    #[error("host name {0:?} is not valid: {HOST_NAME_RULE}")]
    BadHost(String),
    #[error("release names {path:?}, which is not a store path: {reason}")]
    BadStorePath { path: String, reason: String },
    #[error("release generation must be at least 1")]
    ZeroGeneration,
    #[error(
        "release is signed by {got:?}, but only {expected:?} is trusted; was it made by another fleet's key?"
    )]
    UnknownSigner { got: String, expected: String },
    #[error(
        "release signature does not verify: a field was altered, or it was signed by another key named {name:?}"
    )]
    BadSignature { name: String },
    #[error("release signature is malformed: {0}")]
    MalformedSignature(String),
    #[error(
        "release generation {got} is not newer than generation {last_applied} already applied (replay or downgrade refused)"
    )]
    NotNewer { got: u64, last_applied: u64 },
}

/// A signed release, as stored in `publish/<host>/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub format: u32,
    pub host: String,
    pub generation: u64,
    pub store_path: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Nix-style `keyname:base64` ed25519 signature over [`Release::signed_bytes`].
    pub signature: String,
}

/// What [`check_host_name`] accepts, in the words error messages use.
pub const HOST_NAME_RULE: &str =
    "use 1 to 63 of A-Z a-z 0-9 . _ -, starting with a letter or a digit";

/// The one host-name rule of Bento, for the fleet file, the agent's configuration, releases,
/// reports, file manifests, SFTP users and cache tokens: a host name becomes a user name, a
/// directory name and a line of the signed encoding, so it is kept to a safe alphabet.
pub fn check_host_name(host: &str) -> Result<(), ReleaseError> {
    let ok = !host.is_empty()
        && host.len() <= 63
        && host.starts_with(|c: char| c.is_ascii_alphanumeric())
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ReleaseError::BadHost(host.to_owned()))
    }
}

fn check_store_path(path: &str) -> Result<(), ReleaseError> {
    store::parse(path)
        .map(|_| ())
        .map_err(|e| ReleaseError::BadStorePath {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

impl Release {
    /// The canonical bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        canonical(
            self.format,
            &self.host,
            self.generation,
            &self.store_path,
            self.created,
        )
    }

    /// Makes and signs a release.
    pub fn sign(
        host: &str,
        generation: u64,
        store_path: &str,
        created: u64,
        key: &SecretKey,
    ) -> Result<Release, ReleaseError> {
        check_host_name(host)?;
        check_store_path(store_path)?;
        if generation == 0 {
            return Err(ReleaseError::ZeroGeneration);
        }
        let bytes = canonical(FORMAT, host, generation, store_path, created);
        Ok(Release {
            format: FORMAT,
            host: host.to_owned(),
            generation,
            store_path: store_path.to_owned(),
            created,
            signature: key.sign(&bytes).to_nix_string(),
        })
    }

    /// The file content: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses a release file without trusting it (for the server's own bookkeeping and
    /// for display). Agents use [`verify`].
    pub fn parse_untrusted(bytes: &[u8]) -> Result<Release, ReleaseError> {
        if bytes.len() > MAX_RELEASE_BYTES {
            return Err(ReleaseError::TooLarge { size: bytes.len() });
        }
        let release: Release = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() {
                ReleaseError::Truncated
            } else {
                ReleaseError::Malformed(e.to_string())
            }
        })?;
        if release.format != FORMAT {
            return Err(ReleaseError::UnsupportedFormat {
                got: release.format,
            });
        }
        check_host_name(&release.host)?;
        check_store_path(&release.store_path)?;
        if release.generation == 0 {
            return Err(ReleaseError::ZeroGeneration);
        }
        Ok(release)
    }

    /// Checks the signature against the fleet key.
    pub fn check_signature(&self, key: &PublicKey) -> Result<(), ReleaseError> {
        key.verify(&self.signed_bytes(), &self.signature)
            .map_err(|e| match e {
                KeyError::UnknownSigner { got, expected } => {
                    ReleaseError::UnknownSigner { got, expected }
                }
                KeyError::BadSignature { name } => ReleaseError::BadSignature { name },
                other => ReleaseError::MalformedSignature(other.to_string()),
            })
    }
}

fn canonical(format: u32, host: &str, generation: u64, store_path: &str, created: u64) -> Vec<u8> {
    format!(
        "bento-release\nformat {format}\nhost {host}\ngeneration {generation}\nstore_path {store_path}\ncreated {created}\n"
    )
    .into_bytes()
}

/// What an agent checks a fetched release against.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    /// The fleet public key, the only signer trusted.
    pub key: &'a PublicKey,
    /// This host's name.
    pub host: &'a str,
    /// The generation last applied here, if any: only newer ones are accepted.
    pub last_applied: Option<u64>,
}

/// Parses and verifies a release as an agent must before acting on it.
pub fn verify(bytes: &[u8], expect: Expectation<'_>) -> Result<Release, ReleaseError> {
    let release = Release::parse_untrusted(bytes)?;
    release.check_signature(expect.key)?;
    if release.host != expect.host {
        return Err(ReleaseError::WrongHost {
            expected: expect.host.to_owned(),
            got: release.host,
        });
    }
    if let Some(last) = expect.last_applied
        && release.generation <= last
    {
        return Err(ReleaseError::NotNewer {
            got: release.generation,
            last_applied: last,
        });
    }
    Ok(release)
}

#[cfg(test)]
mod tests;
