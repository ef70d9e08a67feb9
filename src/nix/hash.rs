//! SHA-256 hashes in the three spellings Nix uses, in and out:
//! `sha256:<nix32>` (narinfo, fingerprints), `sha256:<base16>` (the Nix database) and
//! `sha256-<base64>` (SRI, Nix 2.8's `path-info --json`).

use std::fmt;

use nix_derivation::{HashAlgorithm, NixHash};
use thiserror::Error;

pub use nix_derivation::nixbase32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HashError {
    #[error("hash {input:?} uses {algorithm}, but only sha256 is accepted here")]
    UnsupportedAlgorithm { input: String, algorithm: String },
    #[error(
        "cannot parse hash {input:?}: expected sha256:<nix32>, sha256:<base16> or sha256-<base64>"
    )]
    Unparseable { input: String },
}

/// A SHA-256 digest, as Nix uses for NAR hashes and file hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Parses any of the spellings Nix writes.
    pub fn parse(input: &str) -> Result<Self, HashError> {
        let algorithm = input
            .split([':', '-'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let parsed = NixHash::parse(input).map_err(|_| {
            if ["md5", "sha1", "sha256", "sha512", "blake3"].contains(&algorithm.as_str())
                || !input.contains([':', '-'])
            {
                HashError::Unparseable {
                    input: input.to_owned(),
                }
            } else {
                HashError::UnsupportedAlgorithm {
                    input: input.to_owned(),
                    algorithm: algorithm.clone(),
                }
            }
        })?;
        if parsed.algorithm() != HashAlgorithm::Sha256 {
            return Err(HashError::UnsupportedAlgorithm {
                input: input.to_owned(),
                algorithm: parsed.algorithm().as_str().to_owned(),
            });
        }
        let digest: [u8; 32] =
            parsed
                .digest_as_bytes()
                .try_into()
                .map_err(|_| HashError::Unparseable {
                    input: input.to_owned(),
                })?;
        Ok(Sha256Hash(digest))
    }

    /// Hashes bytes.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Sha256Hash(sha2::Sha256::digest(bytes).into())
    }

    /// `sha256:<nix32>`, the narinfo and fingerprint spelling.
    pub fn to_nix32(&self) -> String {
        format!("sha256:{}", nixbase32::encode(&self.0))
    }

    /// `sha256:<base16>`, the Nix database spelling.
    pub fn to_base16(&self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }

    /// `sha256-<base64>`, the SRI spelling of Nix 2.8's JSON.
    pub fn to_sri(&self) -> String {
        use base64::Engine as _;
        format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }

    /// The bare nix32 digest, as used in NAR file names.
    pub fn nix32_digest(&self) -> String {
        nixbase32::encode(&self.0)
    }

    pub fn to_nix_hash(&self) -> NixHash {
        NixHash::Sha256(self.0)
    }

    pub fn from_nix_hash(hash: &NixHash) -> Result<Self, HashError> {
        Self::parse(&hash.to_nix_nixbase32_string())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32())
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32())
    }
}

impl std::str::FromStr for Sha256Hash {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A writer that hashes and counts what passes through it on the way to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        use sha2::Digest as _;
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            written: 0,
        }
    }

    /// The hash and size of everything written, and the inner writer.
    pub fn finish(self) -> (Sha256Hash, u64, W) {
        use sha2::Digest as _;
        (
            Sha256Hash(self.hasher.finalize().into()),
            self.written,
            self.inner,
        )
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The three spellings of one NAR hash, as Nix 2.8 printed them for the same path
    // (`nix path-info --json`, `nix-store -q --hash`, the Nix database).
    const SRI: &str = "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=";

    #[test]
    fn spellings_round_trip() {
        let h = Sha256Hash::parse(SRI).unwrap_or(Sha256Hash([0; 32]));
        assert_eq!(h.to_sri(), SRI);
        for spelling in [h.to_nix32(), h.to_base16(), h.to_sri()] {
            assert_eq!(Sha256Hash::parse(&spelling), Ok(h), "{spelling}");
        }
        assert_eq!(h.to_nix32().len(), "sha256:".len() + 52);
        assert_eq!(h.to_base16().len(), "sha256:".len() + 64);
    }

    #[test]
    fn refusals_are_typed() {
        let cases = [
            (
                "md5:00000000000000000000000000000000",
                "UnsupportedAlgorithm",
            ),
            (
                "sha1:0000000000000000000000000000000000000000",
                "UnsupportedAlgorithm",
            ),
            ("blake9:abcd", "UnsupportedAlgorithm"),
            ("sha256:tooshort", "Unparseable"),
            ("nonsense", "Unparseable"),
            ("", "Unparseable"),
            ("sha256-!!!!", "Unparseable"),
        ];
        for (input, want) in cases {
            let got = Sha256Hash::parse(input);
            let kind = match &got {
                Err(HashError::UnsupportedAlgorithm { .. }) => "UnsupportedAlgorithm",
                Err(HashError::Unparseable { .. }) => "Unparseable",
                Ok(_) => "Ok",
            };
            assert_eq!(kind, want, "{input}: {got:?}");
        }
    }

    #[test]
    fn hashing_writer_counts_and_hashes() {
        use std::io::Write as _;
        let mut w = HashingWriter::new(Vec::new());
        let _ = w.write_all(b"hello ");
        let _ = w.write_all(b"world");
        let (h, n, inner) = w.finish();
        assert_eq!(n, 11);
        assert_eq!(inner, b"hello world");
        assert_eq!(h, Sha256Hash::of(b"hello world"));
    }
}
