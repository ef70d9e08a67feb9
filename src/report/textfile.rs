//! The agent's own last outcome for Prometheus' node exporter (textfile collector): a few
//! gauges rendered from the final report of an attempt, written atomically to the file the
//! agent configuration names (`metrics_textfile`). Rendering is pure.

use std::fmt::Write as _;
use std::path::Path;

use super::{Outcome, Report};

/// Every final outcome, listed with 0 or 1 so that alerts can match on any of them.
const OUTCOMES: [Outcome; 8] = [
    Outcome::Applied,
    Outcome::UpToDate,
    Outcome::Refused,
    Outcome::CopyFailed,
    Outcome::ActivationFailed,
    Outcome::RolledBack,
    Outcome::RetryLater,
    Outcome::Recovered,
];

/// The textfile of one attempt's final report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    gauge(
        "bento_agent_last_outcome",
        "1 for the outcome of the agent's last attempt, 0 for the others.",
        &OUTCOMES
            .iter()
            .map(|o| {
                (
                    format!("{{outcome=\"{}\"}}", o.as_str()),
                    u64::from(*o == r.outcome),
                )
            })
            .collect::<Vec<_>>(),
    );
    gauge(
        "bento_agent_last_generation",
        "Release generation of the agent's last attempt.",
        &[(String::new(), r.generation)],
    );
    gauge(
        "bento_agent_last_attempt_timestamp_seconds",
        "When the agent's last attempt finished (Unix seconds).",
        &[(String::new(), r.finished_ms / 1000)],
    );
    gauge(
        "bento_agent_last_attempt_success",
        "1 when the last attempt left the host on its release.",
        &[(String::new(), u64::from(r.outcome.is_success()))],
    );
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
