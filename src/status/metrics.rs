//! The fleet in the Prometheus text format, appended to the server's `/metrics`:
//! `bento_hosts{state}`, and per host `bento_host_desired_generation`,
//! `bento_host_current_generation` and `bento_host_seconds_since_report`. Rendering is
//! pure; [`Cached`] recomputes from the state directory at most every two seconds.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::derive::HostState;
use super::source::StatusSource;
use super::view::FleetStatus;

/// Every state, in the order `bento_hosts` lists them (all present, zeros included).
pub const STATES: [HostState; 12] = [
    HostState::UpToDate,
    HostState::Pending,
    HostState::Deploying,
    HostState::Unconfirmed,
    HostState::ActivationFailed,
    HostState::RolledBack,
    HostState::RetryLater,
    HostState::CopyFailed,
    HostState::Refused,
    HostState::Stale,
    HostState::NeverSeen,
    HostState::NotDeployed,
];

/// Renders the fleet's gauges.
pub fn render(fleet: &FleetStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP bento_hosts Hosts by state, as bento status shows them."
    );
    let _ = writeln!(out, "# TYPE bento_hosts gauge");
    for state in STATES {
        let n = fleet.hosts.iter().filter(|h| h.state == state).count();
        let _ = writeln!(out, "bento_hosts{{state=\"{}\"}} {n}", state.as_str());
    }
    let gauge = |out: &mut String,
                 name: &str,
                 help: &str,
                 value: &dyn Fn(&super::HostStatus) -> Option<u64>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for h in &fleet.hosts {
            if let Some(v) = value(h) {
                let _ = writeln!(out, "{name}{{host=\"{}\"}} {v}", h.host);
            }
        }
    };
    gauge(
        &mut out,
        "bento_host_desired_generation",
        "Generation of the host's current release.",
        &|h| h.desired.as_ref().map(|d| d.generation),
    );
    gauge(
        &mut out,
        "bento_host_current_generation",
        "Generation of the host's newest applied (or up-to-date) report.",
        &|h| h.current_generation,
    );
    gauge(
        &mut out,
        "bento_host_seconds_since_report",
        "Seconds since the host's newest report.",
        &|h| {
            h.last_report
                .as_ref()
                .map(|r| fleet.now.saturating_sub(r.finished_ms / 1000))
        },
    );
    out
}

/// The rendered fleet gauges, recomputed at most every two seconds.
#[derive(Debug)]
pub struct Cached {
    source: Arc<StatusSource>,
    ttl: Duration,
    last: Mutex<Option<(Instant, String)>>,
}

impl Cached {
    pub fn new(source: Arc<StatusSource>) -> Self {
        Cached {
            source,
            ttl: Duration::from_secs(2),
            last: Mutex::new(None),
        }
    }

    /// The gauges, from the cache when fresh. A state directory that cannot be read gives
    /// an empty text (and a warning): the cache's own metrics still answer.
    pub fn render(&self) -> String {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, text)) = last.as_ref() {
            if at.elapsed() < self.ttl {
                return text.clone();
            }
        }
        let text = match self.source.fleet() {
            Ok(fleet) => render(&fleet),
            Err(e) => {
                tracing::warn!(error = %e, "cannot compute fleet metrics");
                String::new()
            }
        };
        *last = Some((Instant::now(), text.clone()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::view::summarize;

    #[test]
    fn renders_states_and_host_gauges() {
        let now = 1000;
        let fleet = FleetStatus {
            schema: 1,
            now,
            stale_after_secs: 300,
            hosts: vec![
                summarize("web1", None, &[], None, now, 300),
                summarize("web2", None, &[], None, now, 300),
            ],
        };
        let text = render(&fleet);
        assert!(
            text.contains("bento_hosts{state=\"not-deployed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bento_hosts{state=\"up-to-date\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("bento_host_desired_generation{"), "{text}");
    }
}
