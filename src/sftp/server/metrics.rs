//! The SFTP server's metrics, as `prometheus-client` counters and gauges, cheap to bump from
//! any session (atomics inside; clones share their values). [`Metrics::register`] puts them
//! in the process's one registry (`bento serve` exports them on the cache's `/metrics`);
//! [`Metrics::snapshot`] reads them all at one instant, for logs and tests.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// A limit of `docs/sftp.md` that refused or cut something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Connections at once: closed on accept.
    MaxSessions,
    /// Connections of one address not logged in yet: closed on accept.
    MaxUnauthenticatedPerIp,
    /// Sessions of one host: authentication rejected.
    MaxSessionsPerHost,
    /// Open handles of a session: the open fails.
    MaxOpenHandles,
    /// Waiting release reads of a session: the read fails.
    MaxWatchesPerSession,
    /// The per-session request bucket ran dry: disconnected.
    RequestRate,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Limit::MaxSessions,
        Limit::MaxUnauthenticatedPerIp,
        Limit::MaxSessionsPerHost,
        Limit::MaxOpenHandles,
        Limit::MaxWatchesPerSession,
        Limit::RequestRate,
    ];

    /// The name of its setting in `SftpConfig` (and the `limit` label).
    pub fn name(self) -> &'static str {
        match self {
            Limit::MaxSessions => "max_sessions",
            Limit::MaxUnauthenticatedPerIp => "max_unauthenticated_per_ip",
            Limit::MaxSessionsPerHost => "max_sessions_per_host",
            Limit::MaxOpenHandles => "max_open_handles",
            Limit::MaxWatchesPerSession => "max_watches_per_session",
            Limit::RequestRate => "request_rate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// Live counters. Gauges (`*_open`, `watches_waiting`) go up and down; the rest only grow.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections_accepted: Counter,
    /// Connections closed at once because `max_sessions` connections were open, or their
    /// address had `max_unauthenticated_per_ip` not logged in yet.
    pub connections_refused: Counter,
    pub connections_open: Gauge,
    /// Authenticated sessions now open.
    pub sessions_open: Gauge,
    pub auth_successes: Counter,
    /// Rejected authentication requests (unknown host or key, password, keyboard-interactive,
    /// per-host session limit).
    pub auth_failures: Counter,
    /// Connections that did not authenticate within `auth_timeout`.
    pub auth_timeouts: Counter,
    pub sftp_requests: Counter,
    /// Requests refused by policy (read-only, write-only, outside the tree, exec, forwarding...).
    pub requests_refused: Counter,
    /// Sessions disconnected for exceeding the request rate.
    pub flood_disconnects: Counter,
    /// Sessions disconnected because a reload removed their host or key.
    pub revoked_disconnects: Counter,
    /// Bytes of files sent to clients (release, files, watch answers).
    pub bytes_sent: Counter,
    /// Bytes of reports received.
    pub bytes_received: Counter,
    pub reports_received: Counter,
    /// Uploads refused for exceeding the per-file cap (partial file removed).
    pub reports_too_large: Counter,
    /// Old reports deleted by rotation.
    pub reports_rotated: Counter,
    pub watches_waiting: Gauge,
    /// Watch reads answered with a new generation (not a timeout).
    pub watch_wakeups: Counter,
    /// Times each limit refused or cut something.
    limits_hit: Family<LimitLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            connections_open: Gauge::default(),
            sessions_open: Gauge::default(),
            auth_successes: Counter::default(),
            auth_failures: Counter::default(),
            auth_timeouts: Counter::default(),
            sftp_requests: Counter::default(),
            requests_refused: Counter::default(),
            flood_disconnects: Counter::default(),
            revoked_disconnects: Counter::default(),
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            reports_received: Counter::default(),
            reports_too_large: Counter::default(),
            reports_rotated: Counter::default(),
            watches_waiting: Gauge::default(),
            watch_wakeups: Counter::default(),
            limits_hit: Family::default(),
        };
        // Every limit is listed from the start, so that an alert can match on zero.
        for limit in Limit::ALL {
            let _ = m.limits_hit.get_or_create(&LimitLabels {
                limit: limit.name(),
            });
        }
        m
    }
}

/// A copy of every counter at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_open: u64,
    pub sessions_open: u64,
    pub auth_successes: u64,
    pub auth_failures: u64,
    pub auth_timeouts: u64,
    pub sftp_requests: u64,
    pub requests_refused: u64,
    pub flood_disconnects: u64,
    pub revoked_disconnects: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub reports_received: u64,
    pub reports_too_large: u64,
    pub reports_rotated: u64,
    pub watches_waiting: u64,
    pub watch_wakeups: u64,
    /// By limit name (`max_sessions`, ...).
    pub limits_hit: BTreeMap<&'static str, u64>,
}

/// Name (without `_total`), help, and the counter or gauge, of every plain metric.
enum Plain<'a> {
    Counter(&'a Counter),
    Gauge(&'a Gauge),
}

impl Metrics {
    fn plain(&self) -> [(&'static str, &'static str, Plain<'_>); 18] {
        use Plain::{Counter as C, Gauge as G};
        [
            (
                "bento_sftp_connections_accepted",
                "TCP connections accepted",
                C(&self.connections_accepted),
            ),
            (
                "bento_sftp_connections_refused",
                "Connections closed on accept by max_sessions or max_unauthenticated_per_ip",
                C(&self.connections_refused),
            ),
            (
                "bento_sftp_connections_open",
                "Connections open now",
                G(&self.connections_open),
            ),
            (
                "bento_sftp_sessions_open",
                "Authenticated sessions open now",
                G(&self.sessions_open),
            ),
            (
                "bento_sftp_auth_successes",
                "Successful logins",
                C(&self.auth_successes),
            ),
            (
                "bento_sftp_auth_failures",
                "Rejected authentication requests (unknown host or key, passwords, the per-host session limit)",
                C(&self.auth_failures),
            ),
            (
                "bento_sftp_auth_timeouts",
                "Connections that did not log in within auth_timeout",
                C(&self.auth_timeouts),
            ),
            (
                "bento_sftp_requests",
                "SFTP requests received",
                C(&self.sftp_requests),
            ),
            (
                "bento_sftp_requests_refused",
                "Requests refused by policy (read-only, write-only, outside the tree, exec, forwarding)",
                C(&self.requests_refused),
            ),
            (
                "bento_sftp_flood_disconnects",
                "Sessions disconnected for exceeding the request rate",
                C(&self.flood_disconnects),
            ),
            (
                "bento_sftp_revoked_disconnects",
                "Sessions disconnected because a reload removed their host or key",
                C(&self.revoked_disconnects),
            ),
            (
                "bento_sftp_bytes_sent",
                "Bytes of files sent to hosts (release, files, watch answers)",
                C(&self.bytes_sent),
            ),
            (
                "bento_sftp_bytes_received",
                "Bytes of reports received",
                C(&self.bytes_received),
            ),
            (
                "bento_sftp_reports_received",
                "Reports received",
                C(&self.reports_received),
            ),
            (
                "bento_sftp_reports_too_large",
                "Uploads refused for exceeding the per-file cap",
                C(&self.reports_too_large),
            ),
            (
                "bento_sftp_reports_rotated",
                "Old reports deleted by rotation",
                C(&self.reports_rotated),
            ),
            (
                "bento_sftp_watches_waiting",
                "Release reads waiting for a new generation now",
                G(&self.watches_waiting),
            ),
            (
                "bento_sftp_watch_wakeups",
                "Waiting release reads answered with a new generation",
                C(&self.watch_wakeups),
            ),
        ]
    }

    /// Puts every metric of the SFTP server in `registry` (names as in `docs/sftp.md`).
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, metric) in self.plain() {
            match metric {
                Plain::Counter(c) => registry.register(name, help, c.clone()),
                Plain::Gauge(g) => registry.register(name, help, g.clone()),
            }
        }
        registry.register(
            "bento_sftp_limits_hit",
            "Times each limit of the SFTP server refused or cut something, by limit",
            self.limits_hit.clone(),
        );
    }

    /// Counts one refusal or cut by `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limits_hit
            .get_or_create(&LimitLabels {
                limit: limit.name(),
            })
            .inc();
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = |c: &Counter| c.get();
        let g = |g: &Gauge| u64::try_from(g.get()).unwrap_or(0);
        MetricsSnapshot {
            connections_accepted: c(&self.connections_accepted),
            connections_refused: c(&self.connections_refused),
            connections_open: g(&self.connections_open),
            sessions_open: g(&self.sessions_open),
            auth_successes: c(&self.auth_successes),
            auth_failures: c(&self.auth_failures),
            auth_timeouts: c(&self.auth_timeouts),
            sftp_requests: c(&self.sftp_requests),
            requests_refused: c(&self.requests_refused),
            flood_disconnects: c(&self.flood_disconnects),
            revoked_disconnects: c(&self.revoked_disconnects),
            bytes_sent: c(&self.bytes_sent),
            bytes_received: c(&self.bytes_received),
            reports_received: c(&self.reports_received),
            reports_too_large: c(&self.reports_too_large),
            reports_rotated: c(&self.reports_rotated),
            watches_waiting: g(&self.watches_waiting),
            watch_wakeups: c(&self.watch_wakeups),
            limits_hit: Limit::ALL
                .iter()
                .map(|l| {
                    let labels = LimitLabels { limit: l.name() };
                    (l.name(), self.limits_hit.get_or_create(&labels).get())
                })
                .collect(),
        }
    }
}

/// Holds a gauge up while alive.
pub(crate) struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_exported_and_read_back() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        {
            let _g = GaugeGuard::new(&m.sessions_open);
            assert_eq!(m.snapshot().sessions_open, 1);
        }
        m.bytes_sent.inc_by(10);
        m.bytes_sent.inc();
        m.limit_hit(Limit::MaxSessionsPerHost);
        let s = m.snapshot();
        assert_eq!(s.sessions_open, 0);
        assert_eq!(s.bytes_sent, 11);
        assert_eq!(s.limits_hit["max_sessions_per_host"], 1);
        assert_eq!(s.limits_hit["max_sessions"], 0);

        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for (name, _, metric) in m.plain() {
            let sample = match metric {
                Plain::Counter(_) => format!("{name}_total "),
                Plain::Gauge(_) => format!("{name} "),
            };
            assert!(
                text.lines().any(|l| l.starts_with(&sample)),
                "{sample}in\n{text}"
            );
        }
        assert!(text.contains("bento_sftp_bytes_sent_total 11\n"), "{text}");
        assert!(
            text.contains("bento_sftp_limits_hit_total{limit=\"max_sessions_per_host\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bento_sftp_limits_hit_total{limit=\"request_rate\"} 0\n"),
            "{text}"
        );
    }
}
