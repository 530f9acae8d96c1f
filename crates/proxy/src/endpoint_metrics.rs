//! The per-endpoint metrics, read at scrape time from the route table in force.
//!
//! A table can hold ten thousand endpoints. Kept as Prometheus children, the series of
//! each (`sluice_endpoint_requests_total`, `sluice_endpoint_response_seconds`,
//! `sluice_endpoint_in_flight`, `sluice_endpoint_healthy`,
//! `sluice_endpoint_connections` and `_parked`) would cost about 2.5 KB of heap apiece:
//! a copy of the metric's description and its label pairs per series, and a sharded
//! histogram. Here an endpoint keeps only what cannot be read elsewhere, its request
//! count and latency buckets as plain atomics ([`EndpointStats`], about 170 bytes); its
//! in-flight count is its balancer load, its health is its
//! [`EndpointHealth`](crate::pool::EndpointHealth), its connections are counted in its
//! [`Connections`](crate::pool::Connections), and [`EndpointText`] writes them as text
//! when Prometheus asks, a chunk at a time, without building the client's objects for
//! them (ten thousand endpoints are 28 MB of text). An endpoint's series live exactly
//! as long as it is in the table; its counters carry over tables while it stays in its
//! pool.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus::core::Desc;

use crate::metrics::LATENCY_BUCKETS;
use crate::store::Runtime;

const REQUESTS: (&str, &str) = (
    "sluice_endpoint_requests_total",
    "Requests sent to each endpoint",
);
const LATENCY: (&str, &str) = (
    "sluice_endpoint_response_seconds",
    "Time from sending an attempt to an endpoint to its response headers",
);
const IN_FLIGHT: (&str, &str) = (
    "sluice_endpoint_in_flight",
    "Requests in flight per endpoint",
);
const CONNECTIONS: (&str, &str) = (
    "sluice_endpoint_connections",
    "Connections the proxy holds open to each cleartext HTTP/1.1 endpoint, busy, idle or parked",
);
const PARKED: (&str, &str) = (
    "sluice_endpoint_connections_parked",
    "Connections to each cleartext HTTP/1.1 endpoint parked: unused for a second, held without hyper's buffers",
);
const HEALTHY: (&str, &str) = (
    "sluice_endpoint_healthy",
    "1 when the endpoint passes its health checks and accepts connections",
);

/// What an endpoint counts on the request path.
#[derive(Debug)]
pub struct EndpointStats {
    requests: AtomicU64,
    /// Observations per bucket of [`LATENCY_BUCKETS`] (not cumulative), the last one
    /// for those above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl EndpointStats {
    /// Counts a request sent to the endpoint.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// Records the time an attempt took to its response headers.
    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|&bound| bound < seconds);
        self.buckets[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Requests sent to the endpoint so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Observations at or below each bound of [`LATENCY_BUCKETS`], then in all.
    pub(crate) fn cumulative(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        let mut cumulative = 0;
        std::array::from_fn(|i| {
            cumulative += self.buckets[i].load(Relaxed);
            cumulative
        })
    }

    /// The sum of the observations, in seconds.
    pub(crate) fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Relaxed) as f64 / 1e9
    }
}

/// The families, sorted by name as the registry's are: `(name, help, type)`.
const FAMILIES: [(&str, &str, &str); 6] = [
    (CONNECTIONS.0, CONNECTIONS.1, "gauge"),
    (PARKED.0, PARKED.1, "gauge"),
    (HEALTHY.0, HEALTHY.1, "gauge"),
    (IN_FLIGHT.0, IN_FLIGHT.1, "gauge"),
    (REQUESTS.0, REQUESTS.1, "counter"),
    (LATENCY.0, LATENCY.1, "histogram"),
];

/// The descriptions of the families, for `sluice metrics`.
pub(crate) fn descs() -> prometheus::Result<Vec<Desc>> {
    FAMILIES
        .iter()
        .map(|&(name, help, _)| {
            Desc::new(
                name.to_owned(),
                help.to_owned(),
                vec!["pool".to_owned(), "endpoint".to_owned()],
                HashMap::new(),
            )
        })
        .collect()
}

/// The name every endpoint family starts with: where they go among the registry's.
pub(crate) const PREFIX: &str = "sluice_endpoint_";

/// Writes the endpoint families of one runtime in the Prometheus text format, a few
/// series at a time, so that a scrape of ten thousand endpoints (28 MB of text) never
/// holds more than a chunk of it (see [`crate::metrics::Exposition`]).
#[derive(Debug)]
pub(crate) struct EndpointText {
    runtime: Arc<Runtime>,
    /// Where the next series is: family, pool, endpoint in the pool.
    family: usize,
    pool: usize,
    endpoint: usize,
    /// The family's `# HELP` and `# TYPE` lines are written.
    headed: bool,
    /// The `le` label of each bucket of [`LATENCY_BUCKETS`], formatted once per scrape
    /// rather than once per endpoint.
    bounds: Vec<String>,
}

impl EndpointText {
    /// The endpoints of `runtime`; `None` when it has none (no family is exported).
    pub(crate) fn new(runtime: Arc<Runtime>) -> Option<Self> {
        runtime
            .pools
            .iter()
            .any(|p| !p.endpoints.is_empty())
            .then_some(Self {
                runtime,
                family: 0,
                pool: 0,
                endpoint: 0,
                headed: false,
                bounds: LATENCY_BUCKETS.iter().map(f64::to_string).collect(),
            })
    }

    /// Appends series to `buf` until it holds `limit` bytes or every series is
    /// written. Returns whether any remain.
    pub(crate) fn write(&mut self, buf: &mut Vec<u8>, limit: usize) -> bool {
        while let Some(&(name, help, kind)) = FAMILIES.get(self.family) {
            if !self.headed {
                let _ = write!(buf, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
                self.headed = true;
            }
            while let Some(pool) = self.runtime.pools.get(self.pool) {
                while let Some(e) = pool.endpoints.get(self.endpoint) {
                    if buf.len() >= limit {
                        return true;
                    }
                    let mut labels = b"{endpoint=\"".to_vec();
                    escape_into(&mut labels, &e.address);
                    labels.extend_from_slice(b"\",pool=\"");
                    escape_into(&mut labels, pool.key());
                    labels.push(b'"');
                    let sample = |buf: &mut Vec<u8>, suffix: &str, le: Option<&str>, value: f64| {
                        buf.extend_from_slice(name.as_bytes());
                        buf.extend_from_slice(suffix.as_bytes());
                        buf.extend_from_slice(&labels);
                        // Writing to a Vec cannot fail. Values as the Prometheus client
                        // writes them: f64's Display.
                        let _ = match le {
                            Some(le) => writeln!(buf, ",le=\"{le}\"}} {value}"),
                            None => writeln!(buf, "}} {value}"),
                        };
                    };
                    let stats = &e.stats;
                    match self.family {
                        0 => sample(buf, "", None, e.connections.counts().0 as f64),
                        1 => sample(buf, "", None, e.connections.counts().1 as f64),
                        2 => sample(buf, "", None, u64::from(e.health.reported()) as f64),
                        3 => sample(buf, "", None, pool.endpoint_in_flight(self.endpoint) as f64),
                        4 => sample(buf, "", None, stats.requests() as f64),
                        _ => {
                            let cumulative = stats.cumulative();
                            for (bound, count) in self.bounds.iter().zip(cumulative) {
                                sample(buf, "_bucket", Some(bound), count as f64);
                            }
                            let all = cumulative[LATENCY_BUCKETS.len()] as f64;
                            sample(buf, "_bucket", Some("+Inf"), all);
                            sample(buf, "_sum", None, stats.sum_seconds());
                            sample(buf, "_count", None, all);
                        }
                    }
                    self.endpoint += 1;
                }
                self.pool += 1;
                self.endpoint = 0;
            }
            self.family += 1;
            self.pool = 0;
            self.headed = false;
        }
        false
    }
}

/// Appends a label value escaped as the text format requires: `\\`, `\n` and `\"`.
fn escape_into(buf: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'"' => buf.extend_from_slice(b"\\\""),
            _ => buf.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let stats = EndpointStats::default();
        stats.observe(Duration::from_millis(1)); // on the first bound
        stats.observe(Duration::from_millis(30)); // (0.025, 0.05]
        stats.observe(Duration::from_secs(400)); // above every bound
        let cumulative = stats.cumulative();
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[4], 1, "0.025 s holds only the first");
        assert_eq!(cumulative[5], 2, "0.05 s holds the 30 ms one");
        assert_eq!(
            cumulative[LATENCY_BUCKETS.len() - 1],
            2,
            "300 s bucket: not the 400 s one"
        );
        assert_eq!(cumulative[LATENCY_BUCKETS.len()], 3, "in all");
        assert!((stats.sum_seconds() - 400.031).abs() < 1e-9);
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        let mut buf = Vec::new();
        escape_into(&mut buf, "a\\b\"c\nd:1");
        assert_eq!(String::from_utf8(buf).unwrap(), r#"a\\b\"c\nd:1"#);
    }
}
