//! Secrets the server cannot read: delivered files encrypted with age to the host's SSH
//! ed25519 key (the key its agent logs in with, already in bento.toml), and to the
//! operators' keys of `[fleet] secret_recipients` so that they can edit them. The server
//! publishes the ciphertext as it is (`secrets/<host>/<name>.age`, agenix-compatible); only
//! the agent, holding the host's private key, decrypts it, into its `files_dir`.
//!
//! The format is age's, through the `age` crate; the one thing read by hand is the list of
//! recipient stanzas of a file's header (their kind and SSH key tag), which the crate does
//! not expose, so that `bento deploy` can say "encrypted for another host" before any agent
//! refuses it.
//!
//! May import: `openssh` (which private keys Bento accepts).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use base64::Engine as _;
use sha2::Digest as _;
use thiserror::Error;

/// The first line of every binary age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("{key:?} is not a key age can encrypt to: {problem}")]
    BadRecipient { key: String, problem: String },
    #[error("no recipients to encrypt to")]
    NoRecipients,
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    #[error("not an age file (binary age files start with \"age-encryption.org/v1\")")]
    NotAge,
    #[error("cannot read the SSH private key {path}: {problem}")]
    Identity { path: PathBuf, problem: String },
    #[error(
        "cannot decrypt with {identity}: {problem} (was it encrypted to this key? `bento secret encrypt` encrypts to the host's ssh_key of bento.toml)"
    )]
    Decrypt { identity: PathBuf, problem: String },
}

/// Whether a delivered file's source is an age file by its name (agenix's convention).
pub fn is_age_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "age")
}

/// Encrypts `plaintext` to every key of `recipients` (OpenSSH public key lines, or `age1…`
/// native keys).
pub fn encrypt(plaintext: &[u8], recipients: &[String]) -> Result<Vec<u8>, SecretError> {
    let mut parsed: Vec<Box<dyn age::Recipient + Send>> = Vec::new();
    for key in recipients {
        let key = key.trim();
        let bad = |problem: String| SecretError::BadRecipient {
            key: key.to_owned(),
            problem,
        };
        if key.starts_with("ssh-rsa") {
            return Err(bad(
                "RSA keys are refused (RUSTSEC-2023-0071); use an ed25519 key".into(),
            ));
        }
        if key.starts_with("age1") {
            let r = age::x25519::Recipient::from_str(key).map_err(|e| bad(e.to_string()))?;
            parsed.push(Box::new(r));
        } else {
            let r = age::ssh::Recipient::from_str(key).map_err(|e| bad(format!("{e:?}")))?;
            parsed.push(Box::new(r));
        }
    }
    if parsed.is_empty() {
        return Err(SecretError::NoRecipients);
    }
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    std::io::Write::write_all(&mut writer, plaintext)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Decrypts `ciphertext` with the unencrypted OpenSSH private key at `identity`.
pub fn decrypt(ciphertext: &[u8], identity: &Path) -> Result<Vec<u8>, SecretError> {
    let id_err = |problem: String| SecretError::Identity {
        path: identity.to_owned(),
        problem,
    };
    let text = std::fs::read(identity).map_err(|e| id_err(e.to_string()))?;
    // Bento's one reader of OpenSSH keys says first what it accepts (never RSA:
    // RUSTSEC-2023-0071, nor a passphrase it cannot ask for); age then reads the same key.
    crate::openssh::parse_private_key(&text).map_err(|e| id_err(e.to_string()))?;
    let key = age::ssh::Identity::from_buffer(&text[..], Some(identity.display().to_string()))
        .map_err(|e| id_err(e.to_string()))?;
    if !matches!(key, age::ssh::Identity::Unencrypted(_)) {
        return Err(id_err(
            "age cannot decrypt with this key type; use ed25519".into(),
        ));
    }
    let dec_err = |problem: String| SecretError::Decrypt {
        identity: identity.to_owned(),
        problem,
    };
    if !ciphertext.starts_with(AGE_MAGIC) && !ciphertext.starts_with(b"-----BEGIN AGE") {
        return Err(SecretError::NotAge);
    }
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))
        .map_err(|e| dec_err(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(std::iter::once(&key as &dyn age::Identity))
        .map_err(|e| dec_err(e.to_string()))?;
    let mut plaintext = Vec::new();
    reader
        .read_to_end(&mut plaintext)
        .map_err(|e| dec_err(e.to_string()))?;
    Ok(plaintext)
}

/// The tag age gives an SSH recipient in a file's header: the first four bytes of the
/// SHA-256 of the key's wire encoding, in unpadded base64.
fn ssh_tag(public_key_line: &str) -> Option<String> {
    let blob = public_key_line.split_whitespace().nth(1)?;
    let wire = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let digest = sha2::Sha256::digest(&wire);
    Some(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&digest[..4]))
}

/// Whether a binary age file's header has a recipient stanza for the SSH key
/// `public_key_line`; `Err` when it is not a binary age file.
pub fn is_encrypted_to(ciphertext: &[u8], public_key_line: &str) -> Result<bool, SecretError> {
    let Some(rest) = ciphertext.strip_prefix(AGE_MAGIC) else {
        return Err(SecretError::NotAge);
    };
    let Some(tag) = ssh_tag(public_key_line) else {
        return Ok(false);
    };
    let kind = public_key_line
        .split_whitespace()
        .next()
        .unwrap_or_default();
    // The header ends at the MAC line ("--- …"); stanzas start with "-> ".
    let header = rest
        .split(|&b| b == b'\n')
        .take_while(|line| !line.starts_with(b"---"))
        .filter_map(|line| std::str::from_utf8(line).ok());
    Ok(header
        .filter_map(|line| line.strip_prefix("-> "))
        .any(|stanza| {
            let mut args = stanza.split(' ');
            args.next() == Some(kind) && args.next() == Some(tag.as_str())
        }))
}

#[cfg(test)]
mod tests;
