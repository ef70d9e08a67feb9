//! Durable files: atomic replacement (temp file in the same directory, fsync, rename, fsync
//! the directory), so a crash at any instant leaves the old or the new content, never a
//! torn one. Used for releases, history, agent state and anything else that must survive.
//!
//! Hand-written, not `tempfile::persist` or `atomicwrites`: the first fsyncs neither the file
//! nor its directory, and the directory fsync after the rename (what makes the rename itself
//! survive a power cut) is the whole point.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no parent directory")]
    NoParent { path: PathBuf },
}

/// Replaces `path` with `bytes` atomically; the file gets `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |source| WriteError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().ok_or_else(|| WriteError::NoParent {
        path: path.to_owned(),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        #[cfg(debug_assertions)]
        failpoint_before_rename(path);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Test-only, debug builds only: `BENTO_FAILPOINT=before-rename:<file name>[@N]` aborts the
/// process once the temp file for the N-th (default first) such file is written and
/// synced, but not yet renamed: the instant a crash would hurt most.
#[cfg(debug_assertions)]
fn failpoint_before_rename(path: &Path) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Some(spec) = std::env::var_os("BENTO_FAILPOINT") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let Some(rest) = spec.strip_prefix("before-rename:") else {
        return;
    };
    let (name, nth) = match rest.split_once('@') {
        Some((name, n)) => (name, n.parse().unwrap_or(1)),
        None => (rest, 1),
    };
    if path
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == name)
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth
    {
        eprintln!(
            "BENTO_FAILPOINT: aborting before renaming into {}",
            path.display()
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("release");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("release")]);
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let err = write_atomic(Path::new("/nonexistent/dir/x"), b"", 0o644).err();
        assert!(err.is_some_and(|e| e.to_string().contains("/nonexistent/dir/x")));
    }
}
