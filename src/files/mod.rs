//! Per-host files delivered outside the Nix store (secrets: passwords, keys, tokens), and
//! the signed manifest that lists them.
//!
//! `bento deploy` copies each file a host's `[hosts.<h>.files]` names into
//! `publish/<h>/files/blobs/<sha256>` (content-addressed, so a new set never overwrites the
//! one an agent may be reading) and writes `publish/<h>/files/manifest.json`: host,
//! generation (that of the release it goes with), and per file its name, SHA-256, size and
//! mode, signed by the fleet key like the release. The agent verifies the manifest (key,
//! host, generation equal to the release's), checks every blob against it, and installs the
//! files into its `files_dir` (a tmpfs by default), never into the world-readable store.
//!
//! Pure: parsing, signing and checking. May import: `nix` (keys, hashes), `release` (the
//! host-name rule).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::nix::hash::Sha256Hash;
use crate::nix::keys::{KeyError, PublicKey, SecretKey};
use crate::release::check_host_name;

/// The manifest encoding version this code writes and accepts.
pub const FORMAT: u32 = 1;

/// Largest file delivered this way: secrets are small, and each is read into memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// Most files per host.
pub const MAX_FILES: usize = 256;

/// Mode of a delivered file unless the fleet file says otherwise: readable by root only.
pub const DEFAULT_MODE: u32 = 0o400;

/// Where in a host's SFTP tree (and its publish directory) the manifest and blobs live.
pub const MANIFEST_PATH: &str = "files/manifest.json";
pub const BLOBS_DIR: &str = "files/blobs";

#[derive(Debug, Error)]
pub enum FilesError {
    #[error(
        "file name {0:?} is not valid: use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with a dot"
    )]
    BadName(String),
    #[error("file {name}: mode {mode:o} is not valid: use at most 0777, without set-id bits")]
    BadMode { name: String, mode: u32 },
    #[error("file {name} is {size} bytes, more than the {MAX_FILE_BYTES} a delivered file can be")]
    TooLarge { name: String, size: u64 },
    #[error("{count} files, more than the {MAX_FILES} one host can be given")]
    TooMany { count: usize },
    #[error("file {0} is listed twice")]
    Duplicate(String),
    #[error("files manifest is malformed: {0}")]
    Malformed(String),
    #[error("files manifest uses format {got}, but this Bento understands format {FORMAT}")]
    UnsupportedFormat { got: u32 },
    #[error("files manifest is for host {got:?}, but this is {expected:?}")]
    WrongHost { expected: String, got: String },
    #[error(
        "files manifest is for generation {got}, the release for generation {expected}; the server is publishing, retry shortly"
    )]
    WrongGeneration { expected: u64, got: u64 },
    #[error("files manifest signature does not verify: {0}")]
    BadSignature(String),
    #[error("file {name}: {problem}")]
    BadContent { name: String, problem: String },
    #[error("invalid host name: {0}")]
    Host(String),
}

/// One delivered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub name: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    pub mode: u32,
    /// The blob is age ciphertext for the host's SSH key (`crate::secret`): hash and size
    /// are the ciphertext's, and the agent decrypts it before installing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub age: bool,
}

/// The signed list of a host's files for one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub host: String,
    pub generation: u64,
    /// Sorted by name.
    pub files: Vec<ManifestEntry>,
    /// Nix-style `keyname:base64` ed25519 signature over [`Manifest::signed_bytes`].
    pub signature: String,
}

/// Checks a delivered file's name: it becomes a file name on the host.
pub fn check_name(name: &str) -> Result<(), FilesError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FilesError::BadName(name.to_owned()))
    }
}

/// Checks a mode: permission bits only (no set-id, no sticky).
pub fn check_mode(name: &str, mode: u32) -> Result<(), FilesError> {
    if mode & !0o777 == 0 {
        Ok(())
    } else {
        Err(FilesError::BadMode {
            name: name.to_owned(),
            mode,
        })
    }
}

impl ManifestEntry {
    /// The entry of `content` delivered as `name` with `mode`.
    pub fn of(name: &str, content: &[u8], mode: u32) -> Result<ManifestEntry, FilesError> {
        check_name(name)?;
        check_mode(name, mode)?;
        let size = content.len() as u64;
        if size > MAX_FILE_BYTES {
            return Err(FilesError::TooLarge {
                name: name.to_owned(),
                size,
            });
        }
        Ok(ManifestEntry {
            name: name.to_owned(),
            sha256: hex::encode(Sha256Hash::of(content).0),
            size,
            mode,
            age: false,
        })
    }

    /// Checks fetched content against this entry.
    pub fn check(&self, content: &[u8]) -> Result<(), FilesError> {
        let bad = |problem: String| FilesError::BadContent {
            name: self.name.clone(),
            problem,
        };
        if content.len() as u64 != self.size {
            return Err(bad(format!(
                "{} bytes arrived, the manifest says {}",
                content.len(),
                self.size
            )));
        }
        let got = hex::encode(Sha256Hash::of(content).0);
        if got != self.sha256 {
            return Err(bad(format!(
                "content hashes to {got}, the manifest says {}",
                self.sha256
            )));
        }
        Ok(())
    }
}

fn check_entries(files: &[ManifestEntry]) -> Result<(), FilesError> {
    if files.len() > MAX_FILES {
        return Err(FilesError::TooMany { count: files.len() });
    }
    let mut names: Vec<&str> = Vec::with_capacity(files.len());
    for e in files {
        check_name(&e.name)?;
        check_mode(&e.name, e.mode)?;
        if e.size > MAX_FILE_BYTES {
            return Err(FilesError::TooLarge {
                name: e.name.clone(),
                size: e.size,
            });
        }
        if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b"0123456789abcdef".contains(&b)) {
            return Err(FilesError::Malformed(format!(
                "file {}: sha256 {:?} is not 64 lowercase hex digits",
                e.name, e.sha256
            )));
        }
        if names.contains(&e.name.as_str()) {
            return Err(FilesError::Duplicate(e.name.clone()));
        }
        names.push(&e.name);
    }
    Ok(())
}

impl Manifest {
    /// The canonical bytes the signature covers: one line per field and per file.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut s = format!(
            "bento-files\nformat {}\nhost {}\ngeneration {}\n",
            self.format, self.host, self.generation
        );
        for e in &self.files {
            // An age blob's line ends in " age", so that the signature covers how the
            // agent must read it; plain lines are as they always were.
            s.push_str(&format!(
                "file {} {} {} {:o}{}\n",
                e.name,
                e.sha256,
                e.size,
                e.mode,
                if e.age { " age" } else { "" }
            ));
        }
        s.into_bytes()
    }

    /// Makes and signs a manifest; `files` are sorted by name.
    pub fn sign(
        host: &str,
        generation: u64,
        mut files: Vec<ManifestEntry>,
        key: &SecretKey,
    ) -> Result<Manifest, FilesError> {
        check_host_name(host).map_err(|e| FilesError::Host(e.to_string()))?;
        files.sort_by(|a, b| a.name.cmp(&b.name));
        check_entries(&files)?;
        let mut m = Manifest {
            format: FORMAT,
            host: host.to_owned(),
            generation,
            files,
            signature: String::new(),
        };
        m.signature = key.sign(&m.signed_bytes()).to_nix_string();
        Ok(m)
    }

    /// The file content: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses a manifest without trusting it (the server's own bookkeeping).
    pub fn parse_untrusted(bytes: &[u8]) -> Result<Manifest, FilesError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(FilesError::Malformed(format!(
                "{} bytes, more than {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| FilesError::Malformed(e.to_string()))?;
        if m.format != FORMAT {
            return Err(FilesError::UnsupportedFormat { got: m.format });
        }
        check_host_name(&m.host).map_err(|e| FilesError::Host(e.to_string()))?;
        check_entries(&m.files)?;
        if !m.files.windows(2).all(|w| w[0].name < w[1].name) {
            return Err(FilesError::Malformed("files are not sorted by name".into()));
        }
        Ok(m)
    }

    /// Whether two manifests deliver the same files (names, contents, modes), whatever
    /// their generations.
    pub fn same_files(&self, files: &[ManifestEntry]) -> bool {
        self.files == files
    }
}

/// Parses and verifies a manifest as an agent must before installing anything from it:
/// signed by `key`, for `host`, for the release's `generation`.
pub fn verify(
    bytes: &[u8],
    key: &PublicKey,
    host: &str,
    generation: u64,
) -> Result<Manifest, FilesError> {
    let m = Manifest::parse_untrusted(bytes)?;
    key.verify(&m.signed_bytes(), &m.signature)
        .map_err(|e: KeyError| FilesError::BadSignature(e.to_string()))?;
    if m.host != host {
        return Err(FilesError::WrongHost {
            expected: host.to_owned(),
            got: m.host,
        });
    }
    if m.generation != generation {
        return Err(FilesError::WrongGeneration {
            expected: generation,
            got: m.generation,
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate("fleet-1").unwrap()
    }

    fn sample(key: &SecretKey) -> Manifest {
        let files = vec![
            ManifestEntry::of("tls.key", b"-----BEGIN KEY-----\n", 0o400).unwrap(),
            ManifestEntry::of("db-password", b"hunter2\n", 0o440).unwrap(),
        ];
        Manifest::sign("web1", 7, files, key).unwrap()
    }

    #[test]
    fn a_signed_manifest_verifies_and_round_trips() {
        let k = key();
        let m = sample(&k);
        assert_eq!(m.files[0].name, "db-password", "sorted by name");
        let bytes = m.to_bytes();
        let back = verify(&bytes, &k.public(), "web1", 7).unwrap();
        assert_eq!(back, m);
        assert!(back.files[0].check(b"hunter2\n").is_ok());
        // Plain entries carry no `age` field (agents from before it read them), age ones do.
        assert!(!String::from_utf8_lossy(&bytes).contains("\"age\""));
        let mut sealed = m.files.clone();
        sealed[1].age = true;
        let sealed = Manifest::sign("web1", 7, sealed, &k).unwrap();
        let back = verify(&sealed.to_bytes(), &k.public(), "web1", 7).unwrap();
        assert!(back.files[1].age && !back.files[0].age);
    }

    #[test]
    fn refusals_name_their_reason() {
        let k = key();
        let other = SecretKey::generate("fleet-1").unwrap();
        let good = sample(&k);
        let edit = |f: &dyn Fn(&mut Manifest)| {
            let mut m = good.clone();
            f(&mut m);
            m.to_bytes()
        };
        let cases: Vec<(&str, Vec<u8>, &str, u64, &str)> = vec![
            (
                "other host",
                good.to_bytes(),
                "web2",
                7,
                "for host \"web1\"",
            ),
            (
                "older generation",
                good.to_bytes(),
                "web1",
                8,
                "generation 7",
            ),
            (
                "content hash swapped",
                edit(&|m| m.files[0].sha256 = "0".repeat(64)),
                "web1",
                7,
                "does not verify",
            ),
            (
                "age flag dropped (the agent would install ciphertext)",
                {
                    let mut sealed = good.clone();
                    sealed.files[0].age = true;
                    let signed = Manifest::sign("web1", 7, sealed.files.clone(), &k).unwrap();
                    let mut m = signed;
                    m.files[0].age = false;
                    m.to_bytes()
                },
                "web1",
                7,
                "does not verify",
            ),
            (
                "mode widened",
                edit(&|m| m.files[1].mode = 0o444),
                "web1",
                7,
                "does not verify",
            ),
            (
                "file dropped",
                edit(&|m| {
                    m.files.pop();
                }),
                "web1",
                7,
                "does not verify",
            ),
            (
                "same-name other key",
                sample(&other).to_bytes(),
                "web1",
                7,
                "does not verify",
            ),
            (
                "traversal in a name",
                edit(&|m| m.files[0].name = "../etc/shadow".into()),
                "web1",
                7,
                "not valid",
            ),
            (
                "set-uid mode",
                edit(&|m| m.files[0].mode = 0o4755),
                "web1",
                7,
                "not valid",
            ),
            (
                "truncated",
                good.to_bytes()[..40].to_vec(),
                "web1",
                7,
                "malformed",
            ),
        ];
        for (name, bytes, host, generation, want) in cases {
            let err = verify(&bytes, &k.public(), host, generation)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| format!("case {name}: accepted"));
            assert!(err.contains(want), "case {name}: {err}");
        }
    }

    #[test]
    fn content_is_checked_against_its_entry() {
        let e = ManifestEntry::of("db-password", b"hunter2\n", 0o400).unwrap();
        assert!(e.check(b"hunter2\n").is_ok());
        let short = e.check(b"hunter").unwrap_err().to_string();
        assert!(short.contains("6 bytes arrived"), "{short}");
        let other = e.check(b"hunter3\n").unwrap_err().to_string();
        assert!(other.contains("hashes to"), "{other}");
    }

    #[test]
    fn names_and_modes_are_kept_safe() {
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["db-password", "tls.key", "A_1"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        assert!(check_mode("x", 0o640).is_ok());
        assert!(check_mode("x", 0o2755).is_err());
        let big = vec![0u8; MAX_FILE_BYTES as usize + 1];
        assert!(ManifestEntry::of("big", &big, 0o400).is_err());
        let dup = vec![
            ManifestEntry::of("a", b"1", 0o400).unwrap(),
            ManifestEntry::of("a", b"2", 0o400).unwrap(),
        ];
        assert!(Manifest::sign("web1", 1, dup, &key()).is_err());
        let many: Vec<ManifestEntry> = (0..=MAX_FILES)
            .map(|i| ManifestEntry::of(&format!("f{i}"), b"x", 0o400).unwrap())
            .collect();
        let err = Manifest::sign("web1", 1, many, &key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("257 files"), "{err}");
    }
}
