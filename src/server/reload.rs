//! Following the fleet file while serving: on SIGHUP, or when its modification time
//! changes, it is loaded again and each part gets its new hosts (the SFTP server its access
//! map, the cache the hosts whose releases it serves, the dashboard its host list). A fleet
//! file that does not load is reported and the current hosts kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::ServerError;
use crate::cache::Cache;
use crate::config::Fleet;
use crate::sftp::server::{HostKeys, Sessions};
use crate::status::StatusSource;

/// How often the fleet file's modification time is checked.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The SFTP access map of a fleet: each host with its SSH key.
pub(super) fn host_keys(fleet: &Fleet) -> Result<HostKeys, ServerError> {
    Ok(HostKeys::new(
        fleet
            .hosts
            .values()
            .map(|h| (h.name.clone(), vec![h.ssh_key.clone()])),
    )?)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads `file` on SIGHUP or when it changes, until `shutdown`.
pub(super) async fn follow_fleet_file(
    file: PathBuf,
    sessions: Arc<Sessions>,
    cache: Arc<Cache>,
    status: Arc<StatusSource>,
    shutdown: CancellationToken,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = modified(&file);
    loop {
        let by_signal = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = modified(&file);
        if !by_signal && now == seen {
            continue;
        }
        seen = now;
        let loaded = Fleet::load_text_only(&file)
            .map_err(ServerError::from)
            .and_then(|f| Ok((host_keys(&f)?, f)));
        match loaded {
            Ok((keys, fleet)) => {
                status.set_hosts(fleet.hosts.keys().cloned().collect());
                let summary = sessions.reload(keys);
                tracing::info!(?summary, file = %file.display(), "fleet file reloaded");
                cache.serve_only(fleet.hosts.keys().cloned().collect());
                if let Err(e) = cache.refresh().await {
                    tracing::error!(error = %e, "cache refresh after the reload failed; the cache serves the hosts it served before until its next refresh");
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                file = %file.display(),
                "fleet file not reloaded; keeping the hosts as they were"
            ),
        }
    }
}
