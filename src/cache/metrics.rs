//! The cache's metrics, as `prometheus-client` metrics: requests by endpoint and status,
//! bytes sent by endpoint, NAR streams in flight and failed, refreshes, and the index's
//! figures (set at each index swap). [`Metrics::register`] puts them in the process's one
//! registry, which `/metrics` renders in the Prometheus text format; a cache given no
//! registry ([`super::Cache::expose`]) renders one holding only these.
//!
//! Statuses outside the list the cache can answer are counted under `status="other"` (so a
//! new status never goes uncounted, and the label set stays bounded).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::limits::Refusal;
use super::request::Endpoint;

/// Every status the cache answers with.
const STATUSES: [u16; 10] = [200, 206, 304, 400, 401, 404, 405, 416, 500, 503];

/// An HTTP status as a label: one of [`STATUSES`], or `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Status(Option<u16>);

impl Status {
    fn of(status: u16) -> Self {
        Status(STATUSES.contains(&status).then_some(status))
    }
}

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self.0 {
            Some(s) => write!(encoder, "{s}"),
            None => encoder.write_str("other"),
        }
    }
}

impl EncodeLabelValue for Endpoint {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    endpoint: Endpoint,
    status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: Endpoint,
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: Refusal,
}

/// One open connection, counted while it lives.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The cache's counters and gauges. Clones share their values.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    bytes_sent: Family<EndpointLabels, Counter>,
    nar_streams: Gauge,
    nar_streams_failed: Counter,
    connections: Gauge,
    refused: Family<LimitLabels, Counter>,
    send_timeouts: Counter,
    broken_found: Counter,
    broken: Gauge,
    nar_hash_skipped: Counter,
    refreshes: Counter,
    refresh_failures: Counter,
    paths: Gauge,
    paths_compressed: Gauge,
    hosts: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            requests: Family::default(),
            bytes_sent: Family::default(),
            nar_streams: Gauge::default(),
            nar_streams_failed: Counter::default(),
            connections: Gauge::default(),
            refused: Family::default(),
            send_timeouts: Counter::default(),
            broken_found: Counter::default(),
            broken: Gauge::default(),
            nar_hash_skipped: Counter::default(),
            refreshes: Counter::default(),
            refresh_failures: Counter::default(),
            paths: Gauge::default(),
            paths_compressed: Gauge::default(),
            hosts: Gauge::default(),
        };
        // Bytes sent are listed for every endpoint from the start, zeros included.
        for endpoint in Endpoint::ALL {
            let _ = m.bytes_sent.get_or_create(&EndpointLabels { endpoint });
        }
        for limit in Refusal::ALL {
            let _ = m.refused.get_or_create(&LimitLabels { limit });
        }
        m
    }
}

/// Figures of the index, for the gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexFigures {
    pub paths: usize,
    pub hosts: usize,
    pub compressed: usize,
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Puts every metric of the cache in `registry` (names as in `docs/cache.md`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bento_cache_requests",
            "HTTP requests answered, by endpoint and status",
            self.requests.clone(),
        );
        registry.register(
            "bento_cache_bytes_sent",
            "Response body bytes sent, by endpoint",
            self.bytes_sent.clone(),
        );
        registry.register(
            "bento_cache_nar_streams_in_flight",
            "NAR bodies being sent now",
            self.nar_streams.clone(),
        );
        registry.register(
            "bento_cache_nar_streams_failed",
            "NAR bodies that ended early (client gone, read error, hash mismatch)",
            self.nar_streams_failed.clone(),
        );
        registry.register(
            "bento_cache_connections_open",
            "HTTP connections open now",
            self.connections.clone(),
        );
        registry.register(
            "bento_cache_refused",
            "Connections closed at accept and NAR requests answered 503, by the limit that was full",
            self.refused.clone(),
        );
        registry.register(
            "bento_cache_send_timeouts",
            "Connections cut because the client took nothing for the send timeout",
            self.send_timeouts.clone(),
        );
        registry.register(
            "bento_cache_broken_paths_found",
            "Store paths found altered on the server (their NAR no longer matches their narinfo)",
            self.broken_found.clone(),
        );
        registry.register(
            "bento_cache_nar_hash_skipped",
            "Whole plain NARs sent unhashed: hashed right before, nothing under the path changed since",
            self.nar_hash_skipped.clone(),
        );
        registry.register(
            "bento_cache_broken_paths",
            "Store paths not served now because they were found altered",
            self.broken.clone(),
        );
        registry.register(
            "bento_cache_refreshes",
            "Reloads of the publish tree",
            self.refreshes.clone(),
        );
        registry.register(
            "bento_cache_refresh_failures",
            "Reloads of the publish tree that failed (the previous index stayed)",
            self.refresh_failures.clone(),
        );
        registry.register(
            "bento_cache_paths",
            "Store paths served (the union of published closures)",
            self.paths.clone(),
        );
        registry.register(
            "bento_cache_paths_compressed",
            "Store paths whose narinfo advertises a verified zstd file",
            self.paths_compressed.clone(),
        );
        registry.register(
            "bento_cache_hosts",
            "Hosts with a valid published release",
            self.hosts.clone(),
        );
    }

    pub fn request(&self, endpoint: Endpoint, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                status: Status::of(status),
            })
            .inc();
    }

    pub fn sent(&self, endpoint: Endpoint, bytes: u64) {
        self.bytes_sent
            .get_or_create(&EndpointLabels { endpoint })
            .inc_by(bytes);
    }

    pub fn requests_total(&self, endpoint: Endpoint, status: u16) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                status: Status::of(status),
            })
            .get()
    }

    pub fn stream_started(&self) {
        self.nar_streams.inc();
    }

    pub fn stream_ended(&self, ok: bool) {
        self.nar_streams.dec();
        if !ok {
            self.nar_streams_failed.inc();
        }
    }

    pub fn streams_in_flight(&self) -> i64 {
        self.nar_streams.get()
    }

    /// Counts a connection open until the returned guard drops.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.inc();
        OpenConnection(self.connections.clone())
    }

    pub fn refused(&self, limit: Refusal) {
        self.refused.get_or_create(&LimitLabels { limit }).inc();
    }

    pub fn refused_total(&self, limit: Refusal) -> u64 {
        self.refused.get_or_create(&LimitLabels { limit }).get()
    }

    pub fn send_timed_out(&self) {
        self.send_timeouts.inc();
    }

    pub fn send_timeouts_total(&self) -> u64 {
        self.send_timeouts.get()
    }

    /// One more store path found altered; `now` are marked broken.
    pub fn found_broken(&self, now: usize) {
        self.broken_found.inc();
        self.broken_now(now);
    }

    pub fn broken_now(&self, now: usize) {
        self.broken.set(gauge_value(now));
    }

    /// A whole plain NAR went out unhashed on its path's unchanged fingerprint.
    pub fn nar_hash_skipped(&self) {
        self.nar_hash_skipped.inc();
    }

    pub fn nar_hash_skipped_total(&self) -> u64 {
        self.nar_hash_skipped.get()
    }

    pub fn broken_found_total(&self) -> u64 {
        self.broken_found.get()
    }

    pub fn refreshed(&self, ok: bool) {
        if ok {
            self.refreshes.inc();
        } else {
            self.refresh_failures.inc();
        }
    }

    /// The index now served.
    pub fn index(&self, figures: IndexFigures) {
        self.paths.set(gauge_value(figures.paths));
        self.paths_compressed.set(gauge_value(figures.compressed));
        self.hosts.set(gauge_value(figures.hosts));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.request(Endpoint::NarInfo, 200);
        m.request(Endpoint::NarInfo, 200);
        m.request(Endpoint::NarInfo, 404);
        m.request(Endpoint::Other, 418);
        m.sent(Endpoint::Nar, 1234);
        m.stream_started();
        m.index(IndexFigures {
            paths: 3,
            hosts: 1,
            compressed: 2,
        });
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE bento_cache_requests_total counter",
            "bento_cache_requests_total{endpoint=\"narinfo\",status=\"200\"} 2",
            "bento_cache_requests_total{endpoint=\"narinfo\",status=\"404\"} 1",
            "bento_cache_requests_total{endpoint=\"other\",status=\"other\"} 1",
            "bento_cache_bytes_sent_total{endpoint=\"nar\"} 1234",
            "bento_cache_bytes_sent_total{endpoint=\"nix-cache-info\"} 0",
            "bento_cache_nar_streams_in_flight 1",
            "bento_cache_refused_total{limit=\"max_nar_streams_per_address\"} 0",
            "bento_cache_send_timeouts_total 0",
            "bento_cache_paths 3",
            "bento_cache_hosts 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(m.requests_total(Endpoint::NarInfo, 200), 2);
        // Clones share their values: what the registry holds is what the cache counts.
        m.clone().request(Endpoint::NarInfo, 200);
        assert_eq!(m.requests_total(Endpoint::NarInfo, 200), 3);
    }
}
