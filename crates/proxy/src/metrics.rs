//! The proxy's Prometheus metrics: a contract, named `sluice_*` in base units, with
//! labels from bounded sets (pool and endpoint come from the route table, reasons and
//! status classes are fixed lists).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The label value used for requests that matched no pool.
pub const NO_POOL: &str = "";

/// Latency buckets in seconds: agents answer in 20 ms to minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// All metrics of one proxy.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `sluice_requests_total{pool, code}`: responses by pool and status class (`2xx`...).
    pub requests: IntCounterVec,
    /// `sluice_request_duration_seconds{pool}`: time from receipt to response headers.
    pub duration: HistogramVec,
    /// `sluice_requests_in_flight{pool}`: requests whose response has not ended.
    pub in_flight: IntGaugeVec,
    /// `sluice_endpoint_requests_total{pool, endpoint}`: requests sent to each endpoint.
    pub endpoint_requests: IntCounterVec,
    /// `sluice_proxy_errors_total{reason}`: requests the proxy answered itself.
    pub errors: IntCounterVec,
    /// `sluice_route_table_version`: version of the table in force (0 before the first).
    pub table_version: IntGauge,
    /// `sluice_route_table_updates_total{result}`: tables `applied` or `rejected`.
    pub table_updates: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics in a registry of their own.
    ///
    /// # Panics
    ///
    /// Never in practice: the names and labels are fixed and valid, and the registry is
    /// fresh, so registration cannot fail.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        Self::register(Registry::new()).expect("fixed metric definitions register")
    }

    fn register(registry: Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_requests_total",
                "Responses by pool and status class",
            ),
            &["pool", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_request_duration_seconds",
                "Time from receipt of a request to its response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["pool"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "sluice_requests_in_flight",
                "Requests whose response has not ended",
            ),
            &["pool"],
        )?;
        let endpoint_requests = IntCounterVec::new(
            Opts::new(
                "sluice_endpoint_requests_total",
                "Requests sent to each endpoint",
            ),
            &["pool", "endpoint"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "sluice_proxy_errors_total",
                "Requests the proxy answered itself, by reason",
            ),
            &["reason"],
        )?;
        let table_version = IntGauge::new(
            "sluice_route_table_version",
            "Version of the route table in force (0 before the first)",
        )?;
        let table_updates = IntCounterVec::new(
            Opts::new(
                "sluice_route_table_updates_total",
                "Route tables applied or rejected",
            ),
            &["result"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(endpoint_requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(table_version.clone()))?;
        registry.register(Box::new(table_updates.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            in_flight,
            endpoint_requests,
            errors,
            table_version,
            table_updates,
        })
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The registry, for callers that add metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The status class label of a status code: `2xx`, `4xx`...
pub fn code_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
