//! OpenSSH public keys as written in `bento.toml` (`ssh-ed25519 AAAA... comment`): the shape
//! is checked and the base64 blob decoded, so that a typo is caught when the fleet file is
//! loaded instead of when a host first fails to log in.
//!
//! Only the key types a host's SSH daemon makes are accepted: ed25519, ECDSA (P-256, P-384,
//! P-521) and RSA. The key type written in front must match the one inside the blob.

use base64::Engine as _;
use thiserror::Error;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a string is not an OpenSSH public key.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SshKeyError {
    #[error(
        "is empty; expected an OpenSSH public key such as \"ssh-ed25519 AAAAC3Nza... root@host\""
    )]
    Empty,
    #[error("has no base64 key after {0:?}; expected \"TYPE BASE64 [COMMENT]\"")]
    MissingBlob(String),
    #[error(
        "key type {0:?} is not supported: use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa (e.g. the content of /etc/ssh/ssh_host_ed25519_key.pub)"
    )]
    UnsupportedType(String),
    #[error("the key after {0:?} is not valid base64")]
    BadBase64(String),
    #[error("says {outer:?} but the key inside is {inner:?}")]
    TypeMismatch { outer: String, inner: String },
    #[error("the {0} key data is truncated or malformed")]
    Malformed(String),
}

/// A validated OpenSSH public key.
#[derive(Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    algorithm: String,
    blob: Vec<u8>,
    comment: Option<String>,
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

const SUPPORTED: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

impl SshPublicKey {
    /// Parses `TYPE BASE64 [COMMENT]` (one line of an `authorized_keys` file without options).
    pub fn parse(input: &str) -> Result<Self, SshKeyError> {
        let input = input.trim();
        let mut parts = input.splitn(3, char::is_whitespace);
        let algorithm = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or(SshKeyError::Empty)?;
        if !SUPPORTED.contains(&algorithm) {
            return Err(SshKeyError::UnsupportedType(algorithm.to_owned()));
        }
        let b64 = parts
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SshKeyError::MissingBlob(algorithm.to_owned()))?;
        let comment = parts
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let blob = B64
            .decode(b64)
            .map_err(|_| SshKeyError::BadBase64(algorithm.to_owned()))?;
        check_blob(algorithm, &blob)?;
        Ok(SshPublicKey {
            algorithm: algorithm.to_owned(),
            blob,
            comment,
        })
    }

    /// The key type, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The decoded key blob (SSH wire format), as compared when a client authenticates.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// The key in OpenSSH's one-line format (what `russh::keys::PublicKey::from_openssh`
    /// and `authorized_keys` read).
    pub fn to_openssh(&self) -> String {
        let mut s = format!("{} {}", self.algorithm, B64.encode(&self.blob));
        if let Some(c) = &self.comment {
            s.push(' ');
            s.push_str(c);
        }
        s
    }
}

/// Reads SSH wire-format strings (`uint32 length || bytes`) off a blob.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let len_bytes: [u8; 4] = self.0.get(..4)?.try_into().ok()?;
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
        let data = self.0.get(4..4usize.checked_add(len)?)?;
        self.0 = &self.0[4 + len..];
        Some(data)
    }
}

fn check_blob(outer: &str, blob: &[u8]) -> Result<(), SshKeyError> {
    let malformed = || SshKeyError::Malformed(outer.to_owned());
    let mut r = Reader(blob);
    let inner = r.string().ok_or_else(malformed)?;
    if inner != outer.as_bytes() {
        return Err(SshKeyError::TypeMismatch {
            outer: outer.to_owned(),
            inner: String::from_utf8_lossy(inner).into_owned(),
        });
    }
    let ok = match outer {
        "ssh-ed25519" => r.string().is_some_and(|k| k.len() == 32),
        "ssh-rsa" => {
            let e = r.string();
            let n = r.string();
            e.is_some_and(|e| !e.is_empty()) && n.is_some_and(|n| n.len() >= 128)
        }
        _ => {
            let curve = outer.strip_prefix("ecdsa-sha2-").unwrap_or_default();
            let name = r.string();
            let point = r.string();
            name == Some(curve.as_bytes()) && point.is_some_and(|p| p.first() == Some(&4))
        }
    };
    if ok && r.0.is_empty() {
        Ok(())
    } else {
        Err(malformed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `ssh-keygen -t ed25519 -C root@web1` (private half thrown away). ECDSA and RSA
    // keys are assembled below from their wire format.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJO9ASb4F2D1xKP2Xmvh66LRWTxkAa/c3FHXOlUcY+n root@web1";

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
    fn accepts_the_key_types_sshd_makes() {
        let k = SshPublicKey::parse(ED25519).unwrap();
        assert_eq!(k.algorithm(), "ssh-ed25519");
        assert_eq!(k.comment(), Some("root@web1"));
        assert_eq!(k.to_openssh(), ED25519);
        let mut point = vec![4u8];
        point.extend([7u8; 64]);
        let ecdsa = key_line(
            "ecdsa-sha2-nistp256",
            &[b"ecdsa-sha2-nistp256", b"nistp256", &point],
        );
        assert!(SshPublicKey::parse(&ecdsa).is_ok(), "{ecdsa}");
        let rsa = key_line("ssh-rsa", &[b"ssh-rsa", &[1, 0, 1], &[0xc3; 257]]);
        assert!(SshPublicKey::parse(&format!("  {rsa}  ")).is_ok());
    }

    #[test]
    fn refusals_each_name_what_is_wrong() {
        let ed_blob_as_rsa = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        let short = key_line("ssh-ed25519", &[b"ssh-ed25519", &[1; 31]]);
        let trailing = key_line("ssh-ed25519", &[b"ssh-ed25519", &[1; 32], b"x"]);
        let wrong_curve = key_line(
            "ecdsa-sha2-nistp384",
            &[b"ecdsa-sha2-nistp384", b"nistp256", &[4, 1]],
        );
        let cases: Vec<(&str, String, SshKeyError)> = vec![
            ("empty", "  ".into(), SshKeyError::Empty),
            (
                "only type",
                "ssh-ed25519".into(),
                SshKeyError::MissingBlob("ssh-ed25519".into()),
            ),
            (
                "dss",
                "ssh-dss AAAA".into(),
                SshKeyError::UnsupportedType("ssh-dss".into()),
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
                ed_blob_as_rsa,
                SshKeyError::TypeMismatch {
                    outer: "ssh-rsa".into(),
                    inner: "ssh-ed25519".into(),
                },
            ),
            (
                "short ed25519",
                short,
                SshKeyError::Malformed("ssh-ed25519".into()),
            ),
            (
                "trailing bytes",
                trailing,
                SshKeyError::Malformed("ssh-ed25519".into()),
            ),
            (
                "wrong curve",
                wrong_curve,
                SshKeyError::Malformed("ecdsa-sha2-nistp384".into()),
            ),
            (
                "truncated blob",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJO".into(),
                SshKeyError::Malformed("ssh-ed25519".into()),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(SshPublicKey::parse(&input), Err(want), "case {name}");
        }
    }
}
