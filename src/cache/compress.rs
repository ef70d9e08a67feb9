//! The zstd files of published NARs: compressed once, checked before they are trusted.
//!
//! Layout under the state directory:
//!
//! ```text
//! cache/nar/<file hash>.nar.zst   the compressed NAR (named by its own sha256, nix32)
//! cache/meta/<nar hash>           "<file hash> <file size>\n": which file holds a NAR
//! ```
//!
//! A file is written to a temporary name and renamed into place, so a crash leaves no
//! half-written file under a final name. It is not fsynced: nothing trusts a file without
//! re-hashing it first ([`load_verified`]), which catches whatever a crash or the disk did.
//! After that, [`FileIdentity`] (device, inode, size, mtime, ctime) is how the server notices that
//! a verified file was replaced, truncated or rewritten, without hashing it again.

use std::fs::File;
use std::io::{BufWriter, Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::nix::hash::{HashingWriter, Sha256Hash};
use crate::nix::nar::{self, NarError};
use crate::nix::pathinfo::PathInfo;
use crate::nix::store;

/// zstd level: fast enough to compress a closure at publish time (300+ MB/s here).
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Error)]
pub enum CompressError {
    #[error("cannot write compressed NAR {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nar(#[from] NarError),
    #[error(
        "the store path {path} no longer matches its registered NAR hash (store corruption?): expected {expected}, found {found}"
    )]
    StoreMismatch {
        path: String,
        expected: Sha256Hash,
        found: Sha256Hash,
    },
    #[error(
        "compressed NAR {path} is corrupt: expected {expected_size} bytes with hash {expected}, found {found_size} bytes with hash {found}"
    )]
    Corrupt {
        path: PathBuf,
        expected: Sha256Hash,
        expected_size: u64,
        found: Sha256Hash,
        found_size: u64,
    },
    #[error("metadata file {path} is malformed")]
    BadMeta { path: PathBuf },
}

/// What distinguishes one version of a file from another without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    /// Unlike mtime, no tool can set it back: an edit that restores mtime still shows.
    pub ctime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// The identity of the file at `path` now, if it exists.
    pub fn at(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// A verified compressed NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZstFile {
    pub path: PathBuf,
    pub file_hash: Sha256Hash,
    pub size: u64,
    /// The identity the file had when its hash was checked.
    pub identity: FileIdentity,
}

pub fn nar_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache").join("nar")
}

fn meta_path(state_dir: &Path, nar_hash: &Sha256Hash) -> PathBuf {
    state_dir
        .join("cache")
        .join("meta")
        .join(nar_hash.nix32_digest())
}

fn zst_path(state_dir: &Path, file_hash: &Sha256Hash) -> PathBuf {
    nar_dir(state_dir).join(format!("{}.nar.zst", file_hash.nix32_digest()))
}

fn temp_name(dir: &Path, stem: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{stem}-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` by temp file and rename (no fsync; see the module doc).
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temp_name(dir, "meta");
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Compresses the NAR of `info`'s store path into the cache, checking on the way that the
/// store still holds exactly the NAR its database registers (NarHash and NarSize).
pub fn compress(state_dir: &Path, info: &PathInfo) -> Result<ZstFile, CompressError> {
    let dir = nar_dir(state_dir);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CompressError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = temp_name(&dir, &info.nar_hash.nix32_digest());
    let result = (|| {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let file_side = HashingWriter::new(BufWriter::with_capacity(256 * 1024, file));
        let mut encoder =
            zstd::stream::write::Encoder::new(file_side, ZSTD_LEVEL).map_err(io(&tmp))?;
        encoder
            .set_pledged_src_size(Some(info.nar_size))
            .map_err(io(&tmp))?;
        encoder.include_contentsize(true).map_err(io(&tmp))?;
        let store_path = PathBuf::from(store::render(&info.path));
        let (nar_hash, nar_size, encoder) = nar::dump_hashed(&store_path, encoder)?;
        if nar_hash != info.nar_hash || nar_size != info.nar_size {
            return Err(CompressError::StoreMismatch {
                path: store::render(&info.path),
                expected: info.nar_hash,
                found: nar_hash,
            });
        }
        let file_side = encoder.finish().map_err(io(&tmp))?;
        let (file_hash, size, mut buf) = file_side.finish();
        buf.flush().map_err(io(&tmp))?;
        drop(buf);
        let dest = zst_path(state_dir, &file_hash);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        let meta_file = meta_path(state_dir, &info.nar_hash);
        replace(
            &meta_file,
            format!("{} {size}\n", file_hash.nix32_digest()).as_bytes(),
        )
        .map_err(io(&meta_file))?;
        let identity = FileIdentity::at(&dest).ok_or_else(|| CompressError::Io {
            path: dest.clone(),
            source: std::io::Error::other("file vanished right after it was written"),
        })?;
        Ok(ZstFile {
            path: dest,
            file_hash,
            size,
            identity,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Finds the compressed file recorded for `nar_hash` and checks its hash and size.
/// `Ok(None)`: no file was recorded (or it is gone); `Err(Corrupt)`: it must be redone.
pub fn load_verified(
    state_dir: &Path,
    nar_hash: &Sha256Hash,
) -> Result<Option<ZstFile>, CompressError> {
    let meta_file = meta_path(state_dir, nar_hash);
    let text = match std::fs::read_to_string(&meta_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CompressError::Io {
                path: meta_file,
                source,
            });
        }
    };
    let bad = || CompressError::BadMeta {
        path: meta_file.clone(),
    };
    let (hash, size) = text.trim().split_once(' ').ok_or_else(bad)?;
    let file_hash = Sha256Hash::parse(&format!("sha256:{hash}")).map_err(|_| bad())?;
    let size: u64 = size.parse().map_err(|_| bad())?;
    verify(zst_path(state_dir, &file_hash), file_hash, size)
}

/// Hashes the file at `path` and checks it against the expected hash and size.
pub fn verify(
    path: PathBuf,
    file_hash: Sha256Hash,
    size: u64,
) -> Result<Option<ZstFile>, CompressError> {
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CompressError::Io { path, source }),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CompressError::Io { path, source }
    };
    let identity = FileIdentity::of(&file.metadata().map_err(io(&path))?);
    let mut hasher = HashingWriter::new(std::io::sink());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io(&path))?;
        if n == 0 {
            break;
        }
        hasher.write_all(&buf[..n]).map_err(io(&path))?;
    }
    let (found, found_size, _) = hasher.finish();
    if found != file_hash || found_size != size || identity.size != size {
        return Err(CompressError::Corrupt {
            path,
            expected: file_hash,
            expected_size: size,
            found,
            found_size,
        });
    }
    Ok(Some(ZstFile {
        path,
        file_hash,
        size,
        identity,
    }))
}

/// Deletes a compressed file and its metadata (after it was found corrupt, or its path
/// left every published closure).
pub fn remove(state_dir: &Path, nar_hash: &Sha256Hash, file: Option<&Path>) {
    let _ = std::fs::remove_file(meta_path(state_dir, nar_hash));
    if let Some(file) = file {
        let _ = std::fs::remove_file(file);
    }
}

/// Deletes every compressed file and metadata record not in `keep` (nar hash → file
/// hash): what is left after paths leave every closure, and temp files of a crash.
pub fn collect_garbage(
    state_dir: &Path,
    keep: &std::collections::HashMap<Sha256Hash, Sha256Hash>,
) -> usize {
    let keep_files: std::collections::HashSet<String> = keep
        .values()
        .map(|h| format!("{}.nar.zst", h.nix32_digest()))
        .collect();
    let keep_meta: std::collections::HashSet<String> =
        keep.keys().map(|h| h.nix32_digest()).collect();
    let mut removed = 0;
    for (dir, keep) in [
        (nar_dir(state_dir), &keep_files),
        (state_dir.join("cache").join("meta"), &keep_meta),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_refuses_altered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.nar.zst");
        std::fs::write(&path, b"compressed bytes").unwrap();
        let hash = Sha256Hash::of(b"compressed bytes");
        let ok = verify(path.clone(), hash, 16).unwrap().unwrap();
        assert_eq!(ok.identity, FileIdentity::at(&path).unwrap());
        std::fs::write(&path, b"compressed bytez").unwrap();
        assert!(matches!(
            verify(path.clone(), hash, 16),
            Err(CompressError::Corrupt { .. })
        ));
        std::fs::write(&path, b"compressed").unwrap();
        assert!(matches!(
            verify(path.clone(), hash, 16),
            Err(CompressError::Corrupt { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(verify(path, hash, 16), Ok(None)));
    }

    #[test]
    fn missing_and_malformed_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let nar_hash = Sha256Hash::of(b"nar");
        assert!(matches!(load_verified(dir.path(), &nar_hash), Ok(None)));
        replace(&meta_path(dir.path(), &nar_hash), b"garbage").unwrap();
        assert!(matches!(
            load_verified(dir.path(), &nar_hash),
            Err(CompressError::BadMeta { .. })
        ));
    }
}
