//! The fleet whose status the server shows: the state directory, the host names (replaced
//! when the fleet file is reloaded) and the stale limit. Shared by the dashboard and the
//! `/metrics` gauges.

use std::sync::{Arc, RwLock};

use super::view::{FleetStatus, HostStatus};
use super::{StatusError, collect, collect_host, unix_now};
use crate::config::StateDir;

#[derive(Debug)]
pub struct Source {
    pub state: StateDir,
    hosts: RwLock<Arc<Vec<String>>>,
    pub stale_after: u64,
}

impl Source {
    pub fn new(state: StateDir, hosts: Vec<String>, stale_after: u64) -> Arc<Self> {
        Arc::new(Source {
            state,
            hosts: RwLock::new(Arc::new(hosts)),
            stale_after,
        })
    }

    /// Replaces the host list (after a fleet file reload).
    pub fn set_hosts(&self, hosts: Vec<String>) {
        *self.hosts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(hosts);
    }

    pub fn hosts(&self) -> Arc<Vec<String>> {
        self.hosts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn knows(&self, host: &str) -> bool {
        self.hosts().iter().any(|h| h == host)
    }

    /// Every host's status now (blocking file reads).
    pub fn fleet(&self) -> Result<FleetStatus, StatusError> {
        let hosts = self.hosts();
        collect(
            &self.state,
            hosts.iter().map(String::as_str),
            unix_now(),
            self.stale_after,
        )
    }

    /// One host's status now (blocking file reads).
    pub fn host(&self, host: &str) -> Result<HostStatus, StatusError> {
        collect_host(&self.state, host, unix_now(), self.stale_after)
    }
}
