//! Counters of the publisher, for logs and a later Prometheus export: plain atomics, cheap to
//! bump from any session, read together with [`Metrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters. Gauges (`*_open`, `watches_waiting`) go up and down; the rest only grow.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    /// Connections closed at once because `max_sessions` connections were open.
    pub connections_refused: AtomicU64,
    pub connections_open: AtomicU64,
    /// Authenticated sessions now open.
    pub sessions_open: AtomicU64,
    pub auth_successes: AtomicU64,
    /// Rejected authentication requests (unknown host or key, password, keyboard-interactive,
    /// per-host session limit).
    pub auth_failures: AtomicU64,
    /// Connections that did not authenticate within `auth_timeout`.
    pub auth_timeouts: AtomicU64,
    pub sftp_requests: AtomicU64,
    /// Requests refused by policy (read-only, write-only, outside the tree, exec, forwarding...).
    pub requests_refused: AtomicU64,
    /// Sessions disconnected for exceeding the request rate.
    pub flood_disconnects: AtomicU64,
    /// Sessions disconnected because a reload removed their host or key.
    pub revoked_disconnects: AtomicU64,
    /// Bytes of files sent to clients (release, files, watch answers).
    pub bytes_sent: AtomicU64,
    /// Bytes of reports received.
    pub bytes_received: AtomicU64,
    pub reports_received: AtomicU64,
    /// Uploads refused for exceeding the per-file cap (partial file removed).
    pub reports_too_large: AtomicU64,
    /// Old reports deleted by rotation.
    pub reports_rotated: AtomicU64,
    pub watches_waiting: AtomicU64,
    /// Watch reads answered with a new generation (not a timeout).
    pub watch_wakeups: AtomicU64,
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
}

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections_accepted: g(&self.connections_accepted),
            connections_refused: g(&self.connections_refused),
            connections_open: g(&self.connections_open),
            sessions_open: g(&self.sessions_open),
            auth_successes: g(&self.auth_successes),
            auth_failures: g(&self.auth_failures),
            auth_timeouts: g(&self.auth_timeouts),
            sftp_requests: g(&self.sftp_requests),
            requests_refused: g(&self.requests_refused),
            flood_disconnects: g(&self.flood_disconnects),
            revoked_disconnects: g(&self.revoked_disconnects),
            bytes_sent: g(&self.bytes_sent),
            bytes_received: g(&self.bytes_received),
            reports_received: g(&self.reports_received),
            reports_too_large: g(&self.reports_too_large),
            reports_rotated: g(&self.reports_rotated),
            watches_waiting: g(&self.watches_waiting),
            watch_wakeups: g(&self.watch_wakeups),
        }
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    add(counter, 1);
}

/// Takes one from a gauge, never below zero.
pub(crate) fn dec(gauge: &AtomicU64) {
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

/// Holds a gauge up while alive.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a AtomicU64) -> Self {
        inc(gauge);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        dec(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_and_counters() {
        let m = Metrics::default();
        {
            let _g = GaugeGuard::new(&m.sessions_open);
            assert_eq!(m.snapshot().sessions_open, 1);
        }
        dec(&m.sessions_open);
        add(&m.bytes_sent, 10);
        inc(&m.bytes_sent);
        let s = m.snapshot();
        assert_eq!(s.sessions_open, 0);
        assert_eq!(s.bytes_sent, 11);
    }
}
