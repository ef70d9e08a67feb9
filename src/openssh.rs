//! OpenSSH keys, read one way everywhere: the hosts' public keys in `bento.toml`, the SFTP
//! server's access map and host key, the agent's pinned server key and its own private key.
//! The `ssh-key` crate (the one russh verifies signatures with) decodes every key; this
//! module only splits the line for error messages that name the part at fault, and says which
//! key types Bento accepts, so that a key the fleet file accepts is one `serve` accepts and a
//! host can log in with.
//!
//! Accepted: ed25519 and ECDSA on P-256, P-384 and P-521, the keys an SSH daemon makes
//! besides RSA. RSA is refused: Bento builds russh without it, because the `rsa` crate has an
//! open timing side channel (RUSTSEC-2023-0071, see `deny.toml`). ECDSA points must lie on
//! their curve (a typo in one almost always leaves it); an ed25519 key is any 32 bytes to
//! `ssh-key`, and a typo there yields another valid-looking key half the time, so it gets no
//! such check.
//!
//! May import: nothing of ours.

use base64::Engine as _;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, EcdsaCurve, PrivateKey, PublicKey};
use thiserror::Error;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The key types Bento accepts, as OpenSSH names them.
pub const ACCEPTED: [&str; 4] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
];

/// Why a text is not an OpenSSH key Bento accepts.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SshKeyError {
    #[error(
        "is empty; expected an OpenSSH public key such as \"ssh-ed25519 AAAAC3Nza... root@host\""
    )]
    Empty,
    #[error("has no base64 key after {0:?}; expected \"TYPE BASE64 [COMMENT]\"")]
    MissingBlob(String),
    #[error(
        "is an RSA key, which Bento does not accept (its SSH server is built without RSA); use the host's ed25519 key, the content of /etc/ssh/ssh_host_ed25519_key.pub"
    )]
    Rsa,
    #[error(
        "key type {0:?} is not supported: use ssh-ed25519 or ecdsa-sha2-nistp256/384/521 (e.g. the content of /etc/ssh/ssh_host_ed25519_key.pub)"
    )]
    UnsupportedType(String),
    #[error("the key after {0:?} is not valid base64")]
    BadBase64(String),
    #[error("says {outer:?} but the key inside is {inner:?}")]
    TypeMismatch { outer: String, inner: String },
    #[error("the {algorithm} key data is truncated or malformed ({reason})")]
    Malformed { algorithm: String, reason: String },
    #[error("the {0} key is not a point on its curve; copy the key again, it was altered")]
    NotOnCurve(String),
    #[error("is not an OpenSSH private key ({0}); expected a file made by ssh-keygen")]
    BadPrivateKey(String),
    #[error("the private key is protected by a passphrase; Bento needs it without one")]
    Encrypted,
}

/// A public key Bento accepts, with the comment it was written with.
#[derive(Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    key: PublicKey,
}

impl std::fmt::Debug for SshPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshPublicKey({})", self.to_openssh())
    }
}

impl std::fmt::Display for SshPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_openssh())
    }
}

impl SshPublicKey {
    /// Parses `TYPE BASE64 [COMMENT]` (one line of an `authorized_keys` file without
    /// options, or a `.pub` file).
    pub fn parse(input: &str) -> Result<Self, SshKeyError> {
        let mut parts = input.split_whitespace();
        let label = parts.next().ok_or(SshKeyError::Empty)?;
        check_label(label)?;
        let b64 = parts
            .next()
            .ok_or_else(|| SshKeyError::MissingBlob(label.to_owned()))?;
        let comment = parts.collect::<Vec<_>>().join(" ");
        let blob = B64
            .decode(b64)
            .map_err(|_| SshKeyError::BadBase64(label.to_owned()))?;
        let decoded = PublicKey::from_bytes(&blob).map_err(|e| SshKeyError::Malformed {
            algorithm: label.to_owned(),
            reason: e.to_string(),
        })?;
        let data = decoded.key_data().clone();
        let inner = data.algorithm();
        if inner.as_str() != label {
            return Err(SshKeyError::TypeMismatch {
                outer: label.to_owned(),
                inner: inner.as_str().to_owned(),
            });
        }
        check_key_data(&data)?;
        Ok(SshPublicKey {
            key: PublicKey::new(data, comment),
        })
    }

    /// Checks a key decoded elsewhere (e.g. the one a client presents) against the same rule.
    pub fn from_key(key: PublicKey) -> Result<Self, SshKeyError> {
        check_label(key.algorithm().as_str())?;
        check_key_data(key.key_data())?;
        Ok(SshPublicKey { key })
    }

    /// The key type, e.g. `ssh-ed25519` (one of [`ACCEPTED`]).
    pub fn algorithm(&self) -> &'static str {
        let algorithm = self.key.algorithm();
        ACCEPTED
            .into_iter()
            .find(|a| *a == algorithm.as_str())
            .unwrap_or("unknown")
    }

    pub fn comment(&self) -> Option<&str> {
        Some(self.key.comment().as_str_lossy()).filter(|c| !c.is_empty())
    }

    /// The decoded key, as russh compares and verifies it.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// True when both are the same key, whatever their comments.
    pub fn same_key(&self, other: &SshPublicKey) -> bool {
        self.key.key_data() == other.key.key_data()
    }

    /// The key in OpenSSH's one-line format.
    pub fn to_openssh(&self) -> String {
        let mut s = format!(
            "{} {}",
            self.algorithm(),
            B64.encode(self.key.to_bytes().unwrap_or_default())
        );
        if let Some(c) = self.comment() {
            s.push(' ');
            s.push_str(c);
        }
        s
    }
}

/// Reads an unencrypted OpenSSH private key (as `ssh-keygen` writes it) of an accepted type.
pub fn parse_private_key(text: &[u8]) -> Result<PrivateKey, SshKeyError> {
    let key =
        PrivateKey::from_openssh(text).map_err(|e| SshKeyError::BadPrivateKey(e.to_string()))?;
    if key.is_encrypted() {
        return Err(SshKeyError::Encrypted);
    }
    check_label(key.algorithm().as_str())?;
    check_key_data(key.public_key().key_data())?;
    Ok(key)
}

fn check_label(label: &str) -> Result<(), SshKeyError> {
    if ACCEPTED.contains(&label) {
        Ok(())
    } else if label == "ssh-rsa" || label.starts_with("rsa-sha2-") {
        Err(SshKeyError::Rsa)
    } else {
        Err(SshKeyError::UnsupportedType(label.to_owned()))
    }
}

/// ECDSA points must decode to a point of their curve, as a signature check will need.
fn check_key_data(data: &KeyData) -> Result<(), SshKeyError> {
    let Some(point) = data.ecdsa() else {
        return Ok(());
    };
    let on_curve = match point.curve() {
        EcdsaCurve::NistP256 => p256::ecdsa::VerifyingKey::try_from(point).is_ok(),
        EcdsaCurve::NistP384 => p384::ecdsa::VerifyingKey::try_from(point).is_ok(),
        EcdsaCurve::NistP521 => p521::ecdsa::VerifyingKey::try_from(point).is_ok(),
    };
    if on_curve {
        Ok(())
    } else {
        Err(SshKeyError::NotOnCurve(
            Algorithm::Ecdsa {
                curve: point.curve(),
            }
            .to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `ssh-keygen` (private halves thrown away).
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJO9ASb4F2D1xKP2Xmvh66LRWTxkAa/c3FHXOlUcY+n root@web1";
    const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHJOSQ5n8faN/IpUjVzYLQuf02tbMQaZTtcPO6pIKygOwIDSnqeh2wyOKA1HqJP41ujWJh1sUWa7egxrcnrusZo= root@db1";

    fn ssh_string(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn key_line(algorithm: &str, parts: &[&[u8]]) -> String {
        let blob: Vec<u8> = parts.iter().flat_map(|p| ssh_string(p)).collect();
        format!("{algorithm} {}", B64.encode(blob))
    }

    #[test]
    fn accepts_ed25519_and_ecdsa_and_keeps_the_line() {
        let k = SshPublicKey::parse(ED25519).unwrap();
        assert_eq!(k.algorithm(), "ssh-ed25519");
        assert_eq!(k.comment(), Some("root@web1"));
        assert_eq!(k.to_openssh(), ED25519);
        let k = SshPublicKey::parse(&format!("  {P256}  ")).unwrap();
        assert_eq!(k.to_openssh(), P256);
        let bare = SshPublicKey::parse(P256.rsplit_once(' ').unwrap().0).unwrap();
        assert_eq!(bare.comment(), None);
        assert!(bare.same_key(&k) && bare != k);
    }

    #[test]
    fn refusals_each_name_what_is_wrong() {
        let ed_blob_as_p256 = ED25519.replacen("ssh-ed25519", "ecdsa-sha2-nistp256", 1);
        let short = key_line("ssh-ed25519", &[b"ssh-ed25519", &[1; 31]]);
        let trailing = key_line("ssh-ed25519", &[b"ssh-ed25519", &[1; 32], b"x"]);
        let mut off_curve = vec![4u8];
        off_curve.extend([7u8; 64]);
        let off_curve = key_line(
            "ecdsa-sha2-nistp256",
            &[b"ecdsa-sha2-nistp256", b"nistp256", &off_curve],
        );
        let rsa = key_line("ssh-rsa", &[b"ssh-rsa", &[1, 0, 1], &[0xc3; 257]]);
        let malformed = |a: &str| SshKeyError::Malformed {
            algorithm: a.into(),
            reason: String::new(),
        };
        let cases: Vec<(&str, String, SshKeyError)> = vec![
            ("empty", "  ".into(), SshKeyError::Empty),
            (
                "only type",
                "ssh-ed25519".into(),
                SshKeyError::MissingBlob("ssh-ed25519".into()),
            ),
            ("rsa", rsa, SshKeyError::Rsa),
            (
                "dss",
                "ssh-dss AAAA".into(),
                SshKeyError::UnsupportedType("ssh-dss".into()),
            ),
            (
                "security key",
                "sk-ssh-ed25519@openssh.com AAAA".into(),
                SshKeyError::UnsupportedType("sk-ssh-ed25519@openssh.com".into()),
            ),
            (
                "nix key",
                "bento-1:AAAA".into(),
                SshKeyError::UnsupportedType("bento-1:AAAA".into()),
            ),
            (
                "options prefix",
                format!("from=\"10.0.0.1\" {ED25519}"),
                SshKeyError::UnsupportedType("from=\"10.0.0.1\"".into()),
            ),
            (
                "bad base64",
                "ssh-ed25519 AAAA!!".into(),
                SshKeyError::BadBase64("ssh-ed25519".into()),
            ),
            (
                "type mismatch",
                ed_blob_as_p256,
                SshKeyError::TypeMismatch {
                    outer: "ecdsa-sha2-nistp256".into(),
                    inner: "ssh-ed25519".into(),
                },
            ),
            ("short ed25519", short, malformed("ssh-ed25519")),
            ("trailing bytes", trailing, malformed("ssh-ed25519")),
            (
                "truncated blob",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJO".into(),
                malformed("ssh-ed25519"),
            ),
            (
                "off the curve",
                off_curve,
                SshKeyError::NotOnCurve("ecdsa-sha2-nistp256".into()),
            ),
        ];
        for (name, input, want) in cases {
            let got = SshPublicKey::parse(&input).map(|k| k.to_openssh());
            // The decoder's own words vary with its version: compare the variant only.
            let got = got.map_err(|e| match e {
                SshKeyError::Malformed { algorithm, .. } => SshKeyError::Malformed {
                    algorithm,
                    reason: String::new(),
                },
                e => e,
            });
            assert_eq!(got, Err(want), "case {name}");
        }
    }

    #[test]
    fn private_keys_follow_the_same_rule() {
        use russh::keys::ssh_key::private::Ed25519Keypair;
        let ed = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
        let text = ed.to_openssh(russh::keys::ssh_key::LineEnding::LF).unwrap();
        let back = parse_private_key(text.as_bytes()).unwrap();
        assert_eq!(back.public_key().key_data(), ed.public_key().key_data());
        assert!(matches!(
            parse_private_key(b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"),
            Err(SshKeyError::BadPrivateKey(_))
        ));
    }
}
