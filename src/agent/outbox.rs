//! Reports waiting to be uploaded. A report is written here first (atomically) and removed
//! only once the server has it, so a report made while the server is unreachable (or the
//! agent is killed) is delivered later, never lost.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::link::Link;
use crate::durable::{WriteError, write_atomic};
use crate::report::Report;

#[derive(Debug, Error)]
pub enum OutboxError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot read the report outbox {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("outbox")
}

/// Queues a report for upload.
pub fn queue(state_dir: &Path, report: &Report) -> Result<(), OutboxError> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).map_err(|source| OutboxError::Read {
        path: d.clone(),
        source,
    })?;
    write_atomic(&d.join(report.file_name()), &report.to_bytes(), 0o600)?;
    Ok(())
}

/// Uploads queued reports, oldest first; stops at the first failure (the server is likely
/// unreachable) and returns how many were delivered.
pub async fn flush<L: Link>(state_dir: &Path, link: &L) -> Result<usize, OutboxError> {
    let d = dir(state_dir);
    let mut names: Vec<String> = match std::fs::read_dir(&d) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(OutboxError::Read { path: d, source }),
    };
    names.sort();
    let mut sent = 0;
    for name in names {
        let path = d.join(&name);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match link.upload_report(&name, &bytes).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                sent += 1;
            }
            Err(e) => {
                tracing::info!(report = %name, error = %e, "report not delivered yet; will retry");
                break;
            }
        }
    }
    Ok(sent)
}
