//! The fleet's gauges for the server's `/metrics`: `bento_hosts{state}`, and per host
//! `bento_host_desired_generation`, `bento_host_current_generation` and
//! `bento_host_seconds_since_report`. [`FleetGauges`] is a `prometheus-client` collector
//! registered in the process's one registry: at each scrape it reads the fleet from the
//! [`StatusSource`] (recomputed from the state directory at most every two seconds), so
//! hosts removed from the fleet leave no stale series behind. Encoding is pure ([`encode`],
//! [`render`]).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::HostStatus;
use super::derive::HostState;
use super::source::StatusSource;
use super::view::FleetStatus;

/// Every state, in the order `bento_hosts` lists them (all present, zeros included).
pub const STATES: [HostState; 14] = [
    HostState::UpToDate,
    HostState::Pending,
    HostState::Deploying,
    HostState::Unconfirmed,
    HostState::ActivationFailed,
    HostState::RolledBack,
    HostState::RollbackFailed,
    HostState::RetryLater,
    HostState::CopyFailed,
    HostState::Refused,
    HostState::Stale,
    HostState::NeverSeen,
    HostState::NotDeployed,
    HostState::Unreadable,
];

/// A per-host gauge: its name, help, and its value for a host (none: the host is left out).
type HostGauge = (
    &'static str,
    &'static str,
    fn(&FleetStatus, &HostStatus) -> Option<u64>,
);

const HOST_GAUGES: [HostGauge; 3] = [
    (
        "bento_host_desired_generation",
        "Generation of the host's current release.",
        |_, h| h.desired.as_ref().map(|d| d.generation),
    ),
    (
        "bento_host_current_generation",
        "Generation of the host's newest applied (or up-to-date) report.",
        |_, h| h.current_generation,
    ),
    (
        "bento_host_seconds_since_report",
        "Seconds since the host's newest report.",
        |fleet, h| {
            h.last_report
                .as_ref()
                .map(|r| fleet.now.saturating_sub(r.finished_ms / 1000))
        },
    ),
];

/// Encodes the fleet's gauges.
pub fn encode(fleet: &FleetStatus, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut states = encoder.encode_descriptor(
        "bento_hosts",
        "Hosts by state, as bento status shows them.",
        None,
        MetricType::Gauge,
    )?;
    for state in STATES {
        let n = fleet.hosts.iter().filter(|h| h.state == state).count();
        let labels = [("state", state.as_str())];
        ConstGauge::new(n).encode(states.encode_family(&labels)?)?;
    }
    if let Some(r) = &fleet.rollout {
        let mut wave = encoder.encode_descriptor(
            "bento_rollout_wave",
            "Current wave (from 1) of the newest rollout, labelled with its state and the wave's name.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("state", r.state.as_str()), ("wave", r.wave_name.as_str())];
        ConstGauge::new(r.wave as u64).encode(wave.encode_family(&labels)?)?;
        let mut waves = encoder.encode_descriptor(
            "bento_rollout_waves",
            "Waves of the newest rollout.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(r.waves as u64)
            .encode(waves.encode_family(&[("state", r.state.as_str())])?)?;
    }
    for (name, help, value) in HOST_GAUGES {
        let values: Vec<(&str, u64)> = fleet
            .hosts
            .iter()
            .filter_map(|h| value(fleet, h).map(|v| (h.host.as_str(), v)))
            .collect();
        if values.is_empty() {
            continue;
        }
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (host, v) in values {
            ConstGauge::new(v).encode(family.encode_family(&[("host", host)])?)?;
        }
    }
    Ok(())
}

/// The fleet's gauges alone, as Prometheus text (what a scrape shows of them).
pub fn render(fleet: &FleetStatus) -> String {
    #[derive(Debug)]
    struct Snapshot(FleetStatus);
    impl Collector for Snapshot {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode(&self.0, &mut encoder)
        }
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(fleet.clone())));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "cannot render fleet metrics");
    }
    text
}

/// The fleet gauges, read at each scrape.
#[derive(Debug)]
pub struct FleetGauges {
    source: Arc<StatusSource>,
}

impl FleetGauges {
    /// Registers the fleet gauges of `source` in `registry`.
    pub fn register(registry: &mut Registry, source: Arc<StatusSource>) {
        registry.register_collector(Box::new(FleetGauges { source }));
    }
}

impl Collector for FleetGauges {
    /// A state directory that cannot be read gives no fleet gauges (and a warning): the
    /// other metrics still answer.
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.source.fleet() {
            Ok(fleet) => encode(&fleet, &mut encoder),
            Err(e) => {
                tracing::warn!(error = %e, "cannot compute fleet metrics");
                Ok(())
            }
        }
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
            rollout: Some(crate::status::view::RolloutView {
                id: 7,
                state: "halted".into(),
                wave: 1,
                waves: 3,
                wave_name: "canary".into(),
                headline: "rollout 7: wave 1 of 3 (canary), halted".into(),
                hosts: Default::default(),
            }),
        };
        let text = render(&fleet);
        assert!(text.contains("# TYPE bento_hosts gauge\n"), "{text}");
        assert!(
            text.contains("bento_hosts{state=\"not-deployed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bento_hosts{state=\"up-to-date\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("bento_host_desired_generation{"), "{text}");
        assert!(
            text.contains("bento_rollout_wave{state=\"halted\",wave=\"canary\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bento_rollout_waves{state=\"halted\"} 3\n"),
            "{text}"
        );
    }
}
