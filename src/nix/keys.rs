//! Nix signing keys in the exact formats of `nix key generate-secret` (`name:base64(seed ||
//! public)`) and `nix key convert-secret-to-public` (`name:base64(public)`), ed25519
//! signatures over narinfo fingerprints and releases, and writing a key pair to disk.
//!
//! The secret never appears in `Debug` output or error messages.
//!
//! Written on `ed25519-dalek`, not on a Nix crate: `nix-compat`, which has these formats, is
//! only an empty placeholder on the crate registry, and the cachix crates do not sign.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use nix_narinfo::{NixSignature, TrustedPublicKey};
use thiserror::Error;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{what} has no key name: expected NAME:BASE64")]
    MissingName { what: &'static str },
    #[error(
        "key name {name:?} is not allowed: use letters, digits and . _ - (e.g. cache.example.org-1)"
    )]
    BadName { name: String },
    #[error("{what} {name:?} is not valid base64")]
    BadBase64 { what: &'static str, name: String },
    #[error("{what} {name:?} has {got} bytes, expected {expected}")]
    WrongLength {
        what: &'static str,
        name: String,
        got: usize,
        expected: usize,
    },
    #[error("public key {name:?} is not a valid ed25519 point")]
    BadPoint { name: String },
    #[error("secret key {name:?} is corrupt: its public half does not match its seed")]
    Inconsistent { name: String },
    #[error("signature {signature:?} is malformed: {reason}")]
    BadSignatureFormat { signature: String, reason: String },
    #[error("signature is by key {got:?}, but only {expected:?} is trusted")]
    UnknownSigner { got: String, expected: String },
    #[error(
        "signature by key {name:?} does not verify: the data or the signature was altered, or it was made by another key of the same name"
    )]
    BadSignature { name: String },
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key (move it away first)")]
    Exists { path: PathBuf },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName {
            name: name.to_owned(),
        })
    }
}

fn split<'a>(input: &'a str, what: &'static str) -> Result<(&'a str, Vec<u8>), KeyError> {
    let input = input.trim();
    let (name, b64) = input
        .split_once(':')
        .ok_or(KeyError::MissingName { what })?;
    if name.is_empty() {
        return Err(KeyError::MissingName { what });
    }
    check_name(name)?;
    let bytes = B64.decode(b64).map_err(|_| KeyError::BadBase64 {
        what,
        name: name.to_owned(),
    })?;
    Ok((name, bytes))
}

/// A Nix secret signing key (`name:base64(64 bytes)`).
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses the text of a secret key file (surrounding whitespace is ignored).
    pub fn parse(input: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(input, "secret key")?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::WrongLength {
                what: "secret key",
                name: name.to_owned(),
                got: b.len(),
                expected: 64,
            })?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| KeyError::Inconsistent {
            name: name.to_owned(),
        })?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Reads and parses a secret key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The secret in Nix's file format. Only for writing the key file.
    pub fn to_secret_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    /// Signs `message`, giving Nix's `name:base64` signature.
    pub fn sign(&self, message: &[u8]) -> NixSignature {
        NixSignature {
            key_name: self.name.clone(),
            encoded: B64.encode(self.key.sign(message).to_bytes()),
        }
    }
}

/// A Nix public key (`name:base64(32 bytes)`), trusted to verify signatures of that name.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl PublicKey {
    pub fn parse(input: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(input, "public key")?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::WrongLength {
                what: "public key",
                name: name.to_owned(),
                got: b.len(),
                expected: 32,
            })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPoint {
            name: name.to_owned(),
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Reads and parses a public key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a `name:base64` signature over `message`: the name must be this key's and
    /// the signature must verify (strictly) with this key's bytes.
    pub fn verify(&self, message: &[u8], signature: &str) -> Result<(), KeyError> {
        let malformed = |reason: &str| KeyError::BadSignatureFormat {
            signature: signature.chars().take(120).collect(),
            reason: reason.to_owned(),
        };
        let sig = NixSignature::parse(signature.trim()).map_err(|e| malformed(&e.to_string()))?;
        if sig.key_name != self.name {
            return Err(KeyError::UnknownSigner {
                got: sig.key_name,
                expected: self.name.clone(),
            });
        }
        let bytes = B64
            .decode(&sig.encoded)
            .map_err(|_| malformed("not base64"))?;
        let sig = ed25519_dalek::Signature::from_slice(&bytes)
            .map_err(|_| malformed(&format!("{} bytes, expected 64", bytes.len())))?;
        self.key
            .verify_strict(message, &sig)
            .map_err(|_| KeyError::BadSignature {
                name: self.name.clone(),
            })
    }

    /// The same key in `nix-narinfo`'s type.
    pub fn to_trusted(&self) -> TrustedPublicKey {
        TrustedPublicKey {
            name: self.name.clone(),
            key: self.key,
        }
    }
}

/// File names of a key pair written by [`write_key_pair`].
#[derive(Debug, Clone)]
pub struct KeyPairFiles {
    pub secret: PathBuf,
    pub public: PathBuf,
}

/// Writes `<dir>/<name>.secret` (mode 0600) and `<dir>/<name>.public`, refusing to
/// overwrite either file.
pub fn write_key_pair(dir: &Path, key: &SecretKey) -> Result<KeyPairFiles, KeyError> {
    let files = KeyPairFiles {
        secret: dir.join(format!("{}.secret", key.name())),
        public: dir.join(format!("{}.public", key.name())),
    };
    for path in [&files.secret, &files.public] {
        if path.exists() {
            return Err(KeyError::Exists { path: path.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_new(&files.secret, key.to_secret_string().as_bytes(), 0o600)?;
    write_new(
        &files.public,
        format!("{}\n", key.public()).as_bytes(),
        0o644,
    )?;
    Ok(files)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let write = |path: &Path| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A pair made by `nix key generate-secret --key-name test1` and
    // `nix key convert-secret-to-public` (Nix 2.8).
    const NIX_SECRET: &str = "test1:pvLK0b7ha9bmoYJWsdTuXn7NEsGriQmhcSfnBTeb7fFxvUbu0Q2qUJTZkkCP7VOTt/cvNMAEMK0muyk3ZoOnPA==";
    const NIX_PUBLIC: &str = "test1:cb1G7tENqlCU2ZJAj+1Tk7f3LzTABDCtJrspN2aDpzw=";

    #[test]
    fn nix_made_keys_parse_and_match() {
        let sk = SecretKey::parse(NIX_SECRET).unwrap();
        assert_eq!(sk.public().to_string(), NIX_PUBLIC);
        assert_eq!(sk.to_secret_string(), NIX_SECRET);
        assert_eq!(PublicKey::parse(NIX_PUBLIC).unwrap(), sk.public());
        assert!(!format!("{sk:?}").contains("pvLK0"), "Debug must redact");
    }

    #[test]
    fn sign_and_verify() {
        let sk = SecretKey::generate("fleet-1").unwrap();
        let sig = sk.sign(b"hello").to_nix_string();
        assert!(sk.public().verify(b"hello", &sig).is_ok());
        assert!(matches!(
            sk.public().verify(b"hellO", &sig),
            Err(KeyError::BadSignature { .. })
        ));
        let same_name_other_bytes = SecretKey::generate("fleet-1").unwrap().public();
        assert!(matches!(
            same_name_other_bytes.verify(b"hello", &sig),
            Err(KeyError::BadSignature { .. })
        ));
        let other_name = SecretKey::generate("other").unwrap().public();
        assert!(matches!(
            other_name.verify(b"hello", &sig),
            Err(KeyError::UnknownSigner { .. })
        ));
        assert!(matches!(
            sk.public().verify(b"hello", "fleet-1:AAAA"),
            Err(KeyError::BadSignatureFormat { .. })
        ));
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        let truncated = &NIX_SECRET[..NIX_SECRET.len() - 8];
        type Check = fn(&KeyError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, KeyError::MissingName { .. })),
            ("nocolon", |e| matches!(e, KeyError::MissingName { .. })),
            (":AAAA", |e| matches!(e, KeyError::MissingName { .. })),
            ("bad name:AAAA", |e| matches!(e, KeyError::BadName { .. })),
            ("k:!!!", |e| matches!(e, KeyError::BadBase64 { .. })),
            (truncated, |e| {
                matches!(e, KeyError::BadBase64 { .. } | KeyError::WrongLength { .. })
            }),
            ("test1:cb1G7tENqlCU2ZJAj+1Tk7f3LzTABDCtJrspN2aDpzw=", |e| {
                matches!(e, KeyError::WrongLength { got: 32, .. })
            }),
        ];
        for (input, ok) in cases {
            match SecretKey::parse(input) {
                Err(e) => assert!(ok(&e), "{input:?} gave {e:?}"),
                Ok(_) => panic!("{input:?} parsed"),
            }
        }
        // A secret whose public half was altered.
        let mut bytes = B64.decode(NIX_SECRET.split_once(':').unwrap().1).unwrap();
        bytes[40] ^= 1;
        let altered = format!("test1:{}", B64.encode(bytes));
        assert!(matches!(
            SecretKey::parse(&altered),
            Err(KeyError::Inconsistent { .. })
        ));
        assert!(matches!(
            PublicKey::parse(NIX_SECRET),
            Err(KeyError::WrongLength { got: 64, .. })
        ));
    }

    #[test]
    fn key_pair_files_refuse_overwrite_and_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let sk = SecretKey::generate("fleet").unwrap();
        let files = write_key_pair(dir.path(), &sk).unwrap();
        let mode = std::fs::metadata(&files.secret)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            SecretKey::load(&files.secret).unwrap().public(),
            PublicKey::load(&files.public).unwrap()
        );
        assert!(matches!(
            write_key_pair(dir.path(), &SecretKey::generate("fleet").unwrap()),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(
            SecretKey::load(&files.secret).unwrap().public(),
            sk.public()
        );
    }
}
