//! The fleet whose status the server shows: the state directory, the host names (replaced
//! when the fleet file is reloaded) and the stale limit. Shared by the dashboard and the
//! `/metrics` gauges.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::collect::collect_host_or_unreadable;
use super::view::{FleetStatus, HostStatus, RolloutView};
use super::{StatusError, collect};
use crate::clock::unix_now;
use crate::config::StateDir;

/// Reads the newest rollout for the status (the server hands one in: `status` does not
/// read rollouts itself).
pub type RolloutReader = Arc<dyn Fn(&StateDir) -> Option<RolloutView> + Send + Sync>;

struct Rollouts(RolloutReader);

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolloutReader")
    }
}

#[derive(Debug)]
pub struct StatusSource {
    pub state: StateDir,
    hosts: RwLock<Arc<Vec<String>>>,
    pub stale_after: u64,
    /// The last fleet status and when it was computed: browsers polling every 2 s and
    /// scrapers share one reading of the state directory per [`FRESH_FOR`].
    last: Mutex<Option<(Instant, Arc<FleetStatus>)>>,
    rollouts: std::sync::OnceLock<Rollouts>,
}

/// How long a computed fleet status is served again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

impl StatusSource {
    pub fn new(state: StateDir, hosts: Vec<String>, stale_after: u64) -> Arc<Self> {
        Arc::new(StatusSource {
            state,
            hosts: RwLock::new(Arc::new(hosts)),
            stale_after,
            last: Mutex::new(None),
            rollouts: std::sync::OnceLock::new(),
        })
    }

    /// Shows the newest rollout, as `read` finds it, with the fleet (set once).
    pub fn show_rollouts(&self, read: RolloutReader) {
        let _ = self.rollouts.set(Rollouts(read));
    }

    /// Replaces the host list (after a fleet file reload).
    pub fn set_hosts(&self, hosts: Vec<String>) {
        *self.hosts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(hosts);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn hosts(&self) -> Arc<Vec<String>> {
        self.hosts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn knows(&self, host: &str) -> bool {
        self.hosts().iter().any(|h| h == host)
    }

    /// Every host's status, at most [`FRESH_FOR`] old (blocking file reads).
    pub fn fleet(&self) -> Result<Arc<FleetStatus>, StatusError> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, fleet)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(fleet.clone());
        }
        let hosts = self.hosts();
        let mut fleet = collect(
            &self.state,
            hosts.iter().map(String::as_str),
            unix_now(),
            self.stale_after,
        )?;
        if let Some(Rollouts(read)) = self.rollouts.get() {
            fleet.rollout = read(&self.state);
        }
        let fleet = Arc::new(fleet);
        *last = Some((Instant::now(), fleet.clone()));
        Ok(fleet)
    }

    /// One host's status now (blocking file reads).
    pub fn host(&self, host: &str) -> Result<HostStatus, StatusError> {
        Ok(collect_host_or_unreadable(
            &self.state,
            host,
            unix_now(),
            self.stale_after,
        ))
    }
}
