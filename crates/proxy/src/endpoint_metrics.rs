//! The per-endpoint metrics, read at scrape time from the route table in force.
//!
//! A table can hold ten thousand endpoints. Kept as Prometheus children, the four
//! series of each (`sluice_endpoint_requests_total`, `sluice_endpoint_response_seconds`,
//! `sluice_endpoint_in_flight`, `sluice_endpoint_healthy`) cost about 2.5 KB of heap
//! apiece: a copy of the metric's description and its label pairs per series, and a
//! sharded histogram. Here an endpoint keeps only what cannot be read elsewhere, its
//! request count and latency buckets as plain atomics ([`EndpointStats`], about 170
//! bytes); its in-flight count is its balancer load and its health is its
//! [`EndpointHealth`](crate::pool::EndpointHealth), and [`EndpointCollector`] turns
//! them into families when Prometheus asks. An endpoint's series live exactly as long
//! as it is in the table; its counters carry over tables while it stays in its pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

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

    fn histogram(&self) -> Histogram {
        let mut h = Histogram::default();
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, count)| {
                cumulative += count.load(Relaxed);
                let mut b = Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(self.sum_nanos.load(Relaxed) as f64 / 1e9);
        h
    }
}

/// Exports the endpoints of the table in force (see the [module docs](self)).
#[derive(Debug)]
pub struct EndpointCollector {
    current: Arc<ArcSwapOption<Runtime>>,
    descs: [Desc; 4],
}

impl EndpointCollector {
    /// A collector of the endpoints of whatever runtime `current` holds.
    pub(crate) fn new(current: Arc<ArcSwapOption<Runtime>>) -> prometheus::Result<Self> {
        Ok(Self {
            current,
            descs: descs()?,
        })
    }
}

/// The descriptions of the four families.
pub(crate) fn descs() -> prometheus::Result<[Desc; 4]> {
    let desc = |(name, help): (&str, &str)| {
        Desc::new(
            name.to_owned(),
            help.to_owned(),
            vec!["pool".to_owned(), "endpoint".to_owned()],
            HashMap::new(),
        )
    };
    Ok([
        desc(REQUESTS)?,
        desc(LATENCY)?,
        desc(IN_FLIGHT)?,
        desc(HEALTHY)?,
    ])
}

impl Collector for EndpointCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: [MetricFamily; 4] = std::array::from_fn(|i| {
            let mut f = MetricFamily::default();
            f.set_name(self.descs[i].fq_name.clone());
            f.set_help(self.descs[i].help.clone());
            f.set_field_type(match i {
                0 => MetricType::COUNTER,
                1 => MetricType::HISTOGRAM,
                _ => MetricType::GAUGE,
            });
            f
        });
        let Some(runtime) = self.current.load_full() else {
            return Vec::new();
        };
        for pool in &runtime.pools {
            for (i, e) in pool.endpoints.iter().enumerate() {
                let labels = || {
                    let pair = |name: &str, value: &str| {
                        let mut l = LabelPair::default();
                        l.set_name(name.to_owned());
                        l.set_value(value.to_owned());
                        l
                    };
                    // Sorted by name, as the Prometheus client sorts its own.
                    vec![pair("endpoint", &e.address), pair("pool", pool.key())]
                };
                let mut requests = Metric::default();
                requests.set_label(labels());
                let mut counter = Counter::default();
                counter.set_value(e.stats.requests() as f64);
                requests.set_counter(counter);
                families[0].mut_metric().push(requests);

                let mut latency = Metric::default();
                latency.set_label(labels());
                latency.set_histogram(e.stats.histogram());
                families[1].mut_metric().push(latency);

                let in_flight = pool.endpoint_in_flight(i);
                let healthy = u64::from(e.health.reported());
                for (family, value) in [(2, in_flight), (3, healthy)] {
                    let mut m = Metric::default();
                    m.set_label(labels());
                    let mut gauge = Gauge::default();
                    gauge.set_value(value as f64);
                    m.set_gauge(gauge);
                    families[family].mut_metric().push(m);
                }
            }
        }
        if families[0].get_metric().is_empty() {
            return Vec::new();
        }
        families.into()
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
        let h = stats.histogram();
        let cumulative: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[4], 1, "0.025 s holds only the first");
        assert_eq!(cumulative[5], 2, "0.05 s holds the 30 ms one");
        assert_eq!(
            cumulative.last(),
            Some(&2),
            "300 s bucket: not the 400 s one"
        );
        assert_eq!(h.get_sample_count(), 3);
        assert!((h.get_sample_sum() - 400.031).abs() < 1e-9);
    }
}
