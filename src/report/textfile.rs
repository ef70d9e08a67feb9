//! The agent's own last outcome for Prometheus' node exporter (textfile collector): a few
//! gauges set from the final report of an attempt, rendered by `prometheus-client`'s
//! encoder of the Prometheus text format (the format the collector reads), and written
//! atomically to the file the agent configuration names (`metrics_textfile`). The agent keeps
//! no live metrics: each file is one report's figures, from a registry made for it.
//! Rendering is pure.

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Outcome, Report};

/// Every final outcome, listed with 0 or 1 so that alerts can match on any of them.
const OUTCOMES: [Outcome; 9] = [
    Outcome::Applied,
    Outcome::UpToDate,
    Outcome::Refused,
    Outcome::CopyFailed,
    Outcome::ActivationFailed,
    Outcome::RolledBack,
    Outcome::RollbackFailed,
    Outcome::RetryLater,
    Outcome::Recovered,
];

/// The gauges of one attempt, in a fixed order.
#[derive(Debug)]
struct LastAttempt {
    outcome: Outcome,
    generation: u64,
    finished_secs: u64,
}

impl Collector for LastAttempt {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut outcomes = encoder.encode_descriptor(
            "bento_agent_last_outcome",
            "1 for the outcome of the agent's last attempt, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for o in OUTCOMES {
            let labels = [("outcome", o.as_str())];
            ConstGauge::new(u64::from(o == self.outcome))
                .encode(outcomes.encode_family(&labels)?)?;
        }
        let plain = [
            (
                "bento_agent_last_generation",
                "Release generation of the agent's last attempt.",
                self.generation,
            ),
            (
                "bento_agent_last_attempt_timestamp_seconds",
                "When the agent's last attempt finished (Unix seconds).",
                self.finished_secs,
            ),
            (
                "bento_agent_last_attempt_success",
                "1 when the last attempt left the host on its release.",
                u64::from(self.outcome.is_success()),
            ),
        ];
        for (name, help, value) in plain {
            let gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(gauge)?;
        }
        Ok(())
    }
}

/// The textfile of one attempt's final report.
pub fn render(r: &Report) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(LastAttempt {
        outcome: r.outcome,
        generation: r.generation,
        finished_secs: r.finished_ms / 1000,
    }));
    let mut out = String::new();
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot render the metrics textfile");
    }
    out
}

/// Writes the textfile atomically (the collector never reads half a file).
pub fn write(path: &Path, r: &Report) -> Result<(), crate::durable::WriteError> {
    crate::durable::write_atomic(path, render(r).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_outcome_and_generation() {
        let r = Report {
            format: crate::report::FORMAT,
            host: "web1".into(),
            generation: 7,
            wanted: None,
            running: None,
            outcome: Outcome::RolledBack,
            reason: None,
            started_ms: 1_000,
            finished_ms: 5_000,
            timings: Default::default(),
            log: String::new(),
        };
        let text = render(&r);
        for want in [
            "# TYPE bento_agent_last_outcome gauge\n",
            "bento_agent_last_outcome{outcome=\"rolled-back\"} 1\n",
            "bento_agent_last_outcome{outcome=\"applied\"} 0\n",
            "bento_agent_last_generation 7\n",
            "bento_agent_last_attempt_timestamp_seconds 5\n",
            "bento_agent_last_attempt_success 0\n",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bento.prom");
        write(&path, &r).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
