//! Counters of the cache, rendered in the Prometheus text format at `/metrics`.
//!
//! Lock-free: one atomic per (endpoint, status) pair, bytes sent per endpoint, and a gauge
//! of NAR streams in flight. Statuses outside the list the cache can answer are counted
//! under `status="other"` (so a new status never goes uncounted).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::request::Endpoint;

/// Every status the cache answers with.
const STATUSES: [u16; 10] = [200, 206, 304, 400, 401, 404, 405, 416, 500, 503];
const ENDPOINTS: usize = Endpoint::ALL.len();
const SLOTS: usize = STATUSES.len() + 1;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; SLOTS]; ENDPOINTS],
    bytes_sent: [AtomicU64; ENDPOINTS],
    nar_streams: AtomicI64,
    nar_streams_failed: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
}

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
}

/// Figures of the index, for the gauges rendered with the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexFigures {
    pub paths: usize,
    pub hosts: usize,
    pub compressed: usize,
}

impl Metrics {
    pub fn request(&self, endpoint: Endpoint, status: u16) {
        self.requests[endpoint.index()][status_slot(status)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn sent(&self, endpoint: Endpoint, bytes: u64) {
        self.bytes_sent[endpoint.index()].fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn requests_total(&self, endpoint: Endpoint, status: u16) -> u64 {
        self.requests[endpoint.index()][status_slot(status)].load(Ordering::Relaxed)
    }

    pub fn stream_started(&self) {
        self.nar_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_ended(&self, ok: bool) {
        self.nar_streams.fetch_sub(1, Ordering::Relaxed);
        if !ok {
            self.nar_streams_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn streams_in_flight(&self) -> i64 {
        self.nar_streams.load(Ordering::Relaxed)
    }

    pub fn refreshed(&self, ok: bool) {
        if ok {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refresh_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self, index: IndexFigures) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP bento_cache_requests_total HTTP requests answered, by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE bento_cache_requests_total counter");
        for endpoint in Endpoint::ALL {
            for (slot, counter) in self.requests[endpoint.index()].iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(slot)
                    .map_or_else(|| "other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "bento_cache_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                    endpoint.name()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP bento_cache_bytes_sent_total Response body bytes sent, by endpoint."
        );
        let _ = writeln!(out, "# TYPE bento_cache_bytes_sent_total counter");
        for endpoint in Endpoint::ALL {
            let _ = writeln!(
                out,
                "bento_cache_bytes_sent_total{{endpoint=\"{}\"}} {}",
                endpoint.name(),
                self.bytes_sent[endpoint.index()].load(Ordering::Relaxed)
            );
        }
        let gauges: [(&str, &str, &str, String); 7] = [
            (
                "bento_cache_nar_streams_in_flight",
                "gauge",
                "NAR bodies being sent now.",
                self.streams_in_flight().to_string(),
            ),
            (
                "bento_cache_nar_streams_failed_total",
                "counter",
                "NAR bodies that ended early (client gone, read error, hash mismatch).",
                self.nar_streams_failed.load(Ordering::Relaxed).to_string(),
            ),
            (
                "bento_cache_refreshes_total",
                "counter",
                "Reloads of the publish tree.",
                self.refreshes.load(Ordering::Relaxed).to_string(),
            ),
            (
                "bento_cache_refresh_failures_total",
                "counter",
                "Reloads of the publish tree that failed (the previous index stayed).",
                self.refresh_failures.load(Ordering::Relaxed).to_string(),
            ),
            (
                "bento_cache_paths",
                "gauge",
                "Store paths served (the union of published closures).",
                index.paths.to_string(),
            ),
            (
                "bento_cache_paths_compressed",
                "gauge",
                "Store paths whose narinfo advertises a verified zstd file.",
                index.compressed.to_string(),
            ),
            (
                "bento_cache_hosts",
                "gauge",
                "Hosts with a valid published release.",
                index.hosts.to_string(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text() {
        let m = Metrics::default();
        m.request(Endpoint::NarInfo, 200);
        m.request(Endpoint::NarInfo, 200);
        m.request(Endpoint::NarInfo, 404);
        m.request(Endpoint::Other, 418);
        m.sent(Endpoint::Nar, 1234);
        m.stream_started();
        let text = m.render(IndexFigures {
            paths: 3,
            hosts: 1,
            compressed: 2,
        });
        for line in [
            "bento_cache_requests_total{endpoint=\"narinfo\",status=\"200\"} 2",
            "bento_cache_requests_total{endpoint=\"narinfo\",status=\"404\"} 1",
            "bento_cache_requests_total{endpoint=\"other\",status=\"other\"} 1",
            "bento_cache_bytes_sent_total{endpoint=\"nar\"} 1234",
            "bento_cache_nar_streams_in_flight 1",
            "bento_cache_paths 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(m.requests_total(Endpoint::NarInfo, 200), 2);
    }
}
