//! What every session of the SFTP server shares: the access map (replaceable at runtime), the publish
//! directory, the host key, the release watches, session accounting and metrics.
//!
//! [`Sessions::reload`] swaps the access map without touching other hosts' sessions and
//! bumps an epoch that every session supervisor watches: a session whose host or key is gone
//! is disconnected at once, and every SFTP request re-checks access as well, so nothing slips
//! through between the swap and the disconnect.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use russh::keys::ssh_key::PublicKey;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use thiserror::Error;
use tokio::sync::{Semaphore, watch};

use super::access::{HostKeys, ReloadSummary};
use super::config::{SftpConfig, SftpConfigError};
use super::confine;
use super::hostkey::HostKey;
use super::metrics::Metrics;
use super::seen::LastSeen;
use super::watch::{ReleaseWatch, release_generation};
use crate::slots::{PerKey, Slot};

/// Release file contents by host (see [`Sessions::show_releases`]).
pub type ShownReleases = Arc<BTreeMap<String, Bytes>>;

/// The directory under the state directory that holds one directory per host.
pub const PUBLISH_DIR: &str = "publish";

#[derive(Debug, Error)]
pub enum SessionsError {
    #[error(transparent)]
    Config(#[from] SftpConfigError),
    #[error("cannot create or open the publish directory {path}: {source}")]
    PublishDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the SSH server shares between sessions. Build one with [`Sessions::new`],
/// pass it to [`super::serve`], keep a clone to call [`Sessions::reload`] and
/// [`Sessions::notify_release_changed`].
pub struct Sessions {
    config: SftpConfig,
    publish_dir: PathBuf,
    publish_fd: OwnedFd,
    host_key: HostKey,
    hosts: RwLock<Arc<HostKeys>>,
    access_epoch: watch::Sender<u64>,
    releases: ReleaseWatch,
    /// Set by [`Sessions::show_releases`]: hosts see these release files instead of the
    /// publish tree's.
    shown: RwLock<Option<ShownReleases>>,
    per_host: Arc<PerKey<String>>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) unauthenticated: Arc<PerKey<IpAddr>>,
    metrics: Metrics,
    seen: LastSeen,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("publish_dir", &self.publish_dir)
            .field("hosts", &self.hosts().len())
            .field("host_key", &self.host_key)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Opens (creating it if needed, mode 0750) `<state_dir>/publish`.
    pub fn new(
        state_dir: &Path,
        host_key: HostKey,
        hosts: HostKeys,
        config: SftpConfig,
    ) -> Result<Arc<Self>, SessionsError> {
        config.validate()?;
        let publish_dir = state_dir.join(PUBLISH_DIR);
        let dir_err = |source| SessionsError::PublishDir {
            path: publish_dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&publish_dir)
            .map_err(dir_err)?;
        let publish_fd = rustix::fs::open(
            &publish_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| dir_err(e.into()))?;
        let (access_epoch, _) = watch::channel(0);
        Ok(Arc::new(Sessions {
            connections: Arc::new(Semaphore::new(config.max_sessions)),
            unauthenticated: PerKey::new(config.max_unauthenticated_per_ip),
            per_host: PerKey::new(config.max_sessions_per_host),
            config,
            publish_dir,
            publish_fd,
            host_key,
            hosts: RwLock::new(Arc::new(hosts)),
            access_epoch,
            releases: ReleaseWatch::default(),
            shown: RwLock::new(None),
            metrics: Metrics::default(),
            seen: LastSeen::new(state_dir),
        }))
    }

    /// Replaces the access map. Sessions of hosts that stay (with the key they logged in
    /// with) are untouched; sessions of removed hosts or removed keys are disconnected.
    pub fn reload(&self, hosts: HostKeys) -> ReloadSummary {
        let summary = {
            let mut current = self.hosts.write().unwrap_or_else(|e| e.into_inner());
            let summary = current.diff(&hosts);
            *current = Arc::new(hosts);
            summary
        };
        for host in &summary.removed {
            self.releases.forget(host);
        }
        self.access_epoch.send_modify(|e| *e += 1);
        tracing::info!(
            added = ?summary.added,
            removed = ?summary.removed,
            changed = ?summary.changed,
            "SFTP access map reloaded"
        );
        summary
    }

    /// Tells waiting agents of `host` that its release may have changed: re-reads
    /// `publish/<host>/release` and wakes them if its generation differs. Cheap when nobody
    /// waits. The deploy path calls this after writing a release.
    pub fn notify_release_changed(&self, host: &str) {
        match self.shown() {
            Some(shown) => self.releases.set_each(|h| shown_generation(&shown, h)),
            None => self
                .releases
                .refresh(self.publish_fd.as_fd(), host, release_generation, false),
        }
    }

    /// From now on hosts see the release files in `releases` (by host; a host missing from
    /// it has none), not the publish tree's; waiting agents are woken when their
    /// generation changed. `bento serve` passes what the cache serves the closures of, so
    /// that no host sees a release before it can copy its system.
    pub fn show_releases(&self, releases: ShownReleases) {
        *self.shown.write().unwrap_or_else(|e| e.into_inner()) = Some(releases.clone());
        self.releases.set_each(|h| shown_generation(&releases, h));
    }

    fn shown(&self) -> Option<ShownReleases> {
        self.shown.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `host`'s release as set by [`Sessions::show_releases`]: `None` when the publish tree
    /// is shown as it is, `Some(None)` when the host has no release to see.
    pub(crate) fn shown_release(&self, host: &str) -> Option<Option<Bytes>> {
        self.shown().map(|shown| shown.get(host).cloned())
    }

    /// Checks the release files of watched hosts for changes made behind our back (another
    /// process deploying). [`super::serve`] calls this every `release_poll_interval`.
    pub fn poll_releases(&self) {
        match self.shown() {
            Some(shown) => self.releases.set_each(|h| shown_generation(&shown, h)),
            None => self
                .releases
                .poll(self.publish_fd.as_fd(), release_generation),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records that `host` logged in (for `bento status`; persisted at most once a minute).
    pub fn saw(&self, host: &str) {
        self.seen.saw(host);
    }

    pub fn host_key(&self) -> &HostKey {
        &self.host_key
    }

    pub fn config(&self) -> &SftpConfig {
        &self.config
    }

    /// `<state_dir>/publish`.
    pub fn publish_dir(&self) -> &Path {
        &self.publish_dir
    }

    /// The current access map.
    pub fn hosts(&self) -> Arc<HostKeys> {
        self.hosts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True when `key` may log in as `host` now.
    pub fn is_authorized(&self, host: &str, key: &PublicKey) -> bool {
        self.hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_authorized(host, key)
    }

    pub(crate) fn subscribe_access(&self) -> watch::Receiver<u64> {
        self.access_epoch.subscribe()
    }

    pub(crate) fn subscribe_release(&self, host: &str) -> watch::Receiver<u64> {
        match self.shown() {
            Some(shown) => self
                .releases
                .subscribe_at(host, shown_generation(&shown, host)),
            None => self
                .releases
                .subscribe(self.publish_fd.as_fd(), host, release_generation),
        }
    }

    pub(crate) fn publish_fd(&self) -> BorrowedFd<'_> {
        self.publish_fd.as_fd()
    }

    /// Opens `publish/<host>`, creating it (mode 0750) when `create` is set and it is missing.
    pub(crate) fn open_host_root(&self, host: &str, create: bool) -> Result<OwnedFd, Errno> {
        match confine::open_host_dir(self.publish_fd(), host) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(self.publish_fd(), host, Mode::from_raw_mode(0o750)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                confine::open_host_dir(self.publish_fd(), host)
            }
            other => other,
        }
    }

    /// Counts one more session of `host`, unless it already has `max_sessions_per_host`.
    pub(crate) fn claim_host_slot(self: &Arc<Self>, host: &str) -> Option<HostSlot> {
        let slot = self.per_host.try_acquire(host.to_owned())?;
        self.metrics.sessions_open.inc();
        Some(HostSlot {
            sessions: self.clone(),
            _slot: slot,
        })
    }

    /// Authenticated sessions `host` holds now.
    pub fn sessions_of(&self, host: &str) -> usize {
        self.per_host.held(&host.to_owned())
    }
}

/// The generation of `host`'s shown release (0 when it has none or it cannot be read).
fn shown_generation(shown: &BTreeMap<String, Bytes>, host: &str) -> u64 {
    shown
        .get(host)
        .and_then(|bytes| release_generation(bytes))
        .unwrap_or(0)
}

/// One authenticated session of a host; gives its place back when dropped.
pub(crate) struct HostSlot {
    sessions: Arc<Sessions>,
    _slot: Slot<String>,
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        self.sessions.metrics.sessions_open.dec();
    }
}
