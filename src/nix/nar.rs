//! NAR (Nix ARchive) serialization of store paths, streamed: the encoder writes into any
//! `Write` and never holds the archive in memory. Byte-identical to `nix-store --dump`
//! (proven in `tests/nar_matches_nix_store_dump.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use nix_archive::nar::{self, CaseHack};
use thiserror::Error;

use super::hash::{HashingWriter, Sha256Hash};

#[derive(Debug, Error)]
pub enum NarError {
    #[error("cannot serialize {path} as a NAR: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: nar::Error,
    },
}

/// Writes the NAR of `path` into `writer`.
pub fn dump(path: &Path, writer: &mut (impl Write + ?Sized)) -> Result<(), NarError> {
    nar::encode_path(writer, path, CaseHack::Disabled).map_err(|source| NarError::Encode {
        path: path.to_owned(),
        source,
    })
}

/// NarHash and NarSize of `path`, computed while streaming (constant memory).
pub fn hash(path: &Path) -> Result<(Sha256Hash, u64), NarError> {
    let mut sink = HashingWriter::new(std::io::sink());
    dump(path, &mut sink)?;
    let (hash, size, _) = sink.finish();
    Ok((hash, size))
}

/// Writes the NAR of `path` into `writer` and returns its hash and size, in one pass.
pub fn dump_hashed<W: Write>(path: &Path, writer: W) -> Result<(Sha256Hash, u64, W), NarError> {
    let mut w = HashingWriter::new(writer);
    dump(path, &mut w)?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_file_nar_matches_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"hi").unwrap();
        let mut out = Vec::new();
        dump(&file, &mut out).unwrap();
        let (h, n) = hash(&file).unwrap();
        assert_eq!(n, out.len() as u64);
        assert_eq!(h, Sha256Hash::of(&out));
        // "nix-archive-1" framed as a NAR string: 8-byte little-endian length, then padding.
        assert_eq!(&out[..8], &13u64.to_le_bytes());
        assert_eq!(&out[8..21], b"nix-archive-1");
    }

    #[test]
    fn missing_path_names_it() {
        let err = hash(Path::new("/nonexistent/bento"))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("/nonexistent/bento")));
    }
}
