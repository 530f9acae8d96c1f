//! The proxy's Prometheus metrics: a contract, named `sluice_*` in base units, with
//! labels from bounded sets (pool and endpoint come from the route table, reasons and
//! status classes are fixed lists).

use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body::Frame;
use prometheus::proto::MetricFamily;

use prometheus::core::{Collector, Desc};
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

// The latency buckets are defined with the load reports, which carry the request
// duration histogram to the controller.
pub(crate) use sluice_api::load::LATENCY_BUCKETS;

use crate::clock::TokioClock;
use crate::endpoint_metrics::{self, EndpointText};
use crate::store::Runtime;
use crate::top::{self, TopLimited};

/// The label value used for requests that matched no pool.
pub const NO_POOL: &str = "";

/// All metrics of one proxy.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// What other parts of the proxy register (listeners, top consumers, Redis).
    registry: Registry,
    /// The metrics below, as collectors: an [`Exposition`] collects them one at a time.
    own: Collectors,
    /// `sluice_requests_total{pool, code}`: responses by pool and status class (`2xx`...).
    pub requests: IntCounterVec,
    /// `sluice_request_duration_seconds{pool}`: time from receipt to response headers.
    pub duration: HistogramVec,
    /// `sluice_response_duration_seconds{pool}`: time from receipt to the end of the
    /// response body (the whole of a stream).
    pub response_duration: HistogramVec,
    /// `sluice_response_first_byte_seconds{pool}`: time from receipt to the first
    /// response body byte.
    pub first_byte: HistogramVec,
    /// `sluice_request_bytes_total{pool}`: request body bytes received.
    pub request_bytes: IntCounterVec,
    /// `sluice_response_bytes_total{pool}`: response body bytes sent.
    pub response_bytes: IntCounterVec,
    /// `sluice_requests_in_flight{pool}`: requests whose response has not ended.
    pub in_flight: IntGaugeVec,
    /// `sluice_proxy_errors_total{reason}`: requests the proxy answered itself.
    pub errors: IntCounterVec,
    /// `sluice_route_table_version`: version of the table in force (0 before the first).
    pub table_version: IntGauge,
    /// `sluice_route_table_age_seconds`: time since the table in force was applied.
    pub table_age: Gauge,
    /// `sluice_route_table_updates_total{result}`: tables `applied` or `rejected`.
    pub table_updates: IntCounterVec,
    /// `sluice_pool_utilisation{pool}`: requests in flight over the pool's capacity
    /// (the `maxConcurrency` of its live endpoints), when every endpoint has one.
    pub utilisation: GaugeVec,
    /// `sluice_queue_depth{pool}`: requests waiting for a free endpoint.
    pub queue_depth: IntGaugeVec,
    /// `sluice_queue_wait_seconds{pool, result}`: time spent in the queue.
    pub queue_wait: HistogramVec,
    /// `sluice_retries_total{pool, result}`: retries `sent`, requests sent on to the
    /// fallback after an agent's answer (`fallback`), or refused (`budget_exhausted`,
    /// `not_replayable`, `no_endpoint`).
    pub retries: IntCounterVec,
    /// `sluice_outlier_ejections_total{pool, reason, result}`: ejections `ejected` or
    /// `skipped` (over the pool's maximum share).
    pub ejections: IntCounterVec,
    /// `sluice_health_transitions_total{pool, to}`: health check state changes.
    pub health_transitions: IntCounterVec,
    /// `sluice_fallbacks_total{pool, to}`: requests sent to a fallback pool.
    pub fallbacks: IntCounterVec,
    /// `sluice_body_cut_total{pool, reason}`: response bodies cut by a timeout
    /// (`total`, `idle`) or failed upstream (`upstream`).
    pub body_cut: IntCounterVec,
    /// `sluice_auth_results_total{result}`: `ok`, `anonymous`, or the refusal reason.
    pub auth_results: IntCounterVec,
    /// The `ok` and `anonymous` series of `auth_results`, resolved once.
    auth_counters: std::sync::Arc<[(&'static str, prometheus::IntCounter)]>,
    /// `sluice_ratelimit_decisions_total{policy, tier, result}`: `allowed`, `denied`,
    /// `soft_warning`, `unavailable`, and for dry-run policies `dry_run_denied` and
    /// `dry_run_unavailable`.
    pub rate_decisions: IntCounterVec,
    /// `sluice_ratelimit_tokens_total{policy, tier, kind}`: LLM tokens `reserved` at
    /// admission, `refunded` and `charged` (beyond the reservation) at settlement.
    pub rate_tokens: IntCounterVec,
    /// `sluice_ratelimit_keys`: keys the local rate limits track now.
    pub ratelimit_keys: IntGauge,
    /// `sluice_ratelimit_key_events_total{event}`: keys forgotten to make room for
    /// new ones, `evicted_idle` (nothing lost) or `evicted_active` (they start again
    /// from a full burst: `--rate-limit-max-keys` is too small, or keys rotate), and
    /// requests admitted `untracked`.
    pub key_events: IntCounterVec,
    /// `sluice_llm_tokens_total{pool, tier, kind}`: LLM tokens `reserved` for and
    /// `used` by (as the agent reported) the requests a pool served, by the caller's
    /// tier (empty for an anonymous caller), in pools with a token budget.
    pub llm_tokens: IntCounterVec,
    /// `sluice_access_log_lines_total`: access log lines written.
    pub access_log_lines: IntCounter,
    /// `sluice_access_log_dropped_total`: access log lines dropped because the writer
    /// was behind.
    pub access_log_dropped: IntCounter,
    /// `sluice_trace_spans_dropped_total`: request spans dropped because the exporter
    /// was behind.
    pub spans_dropped: IntCounter,
    /// `sluice_trace_exports_total{result}`: span batches exported (`ok`, `error`).
    pub span_exports: IntCounterVec,
    /// The route table whose endpoints are exported (`sluice_endpoint_*`), once a
    /// store has been given these metrics.
    endpoints: Arc<OnceLock<Arc<ArcSwapOption<Runtime>>>>,
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
        Self::register(Registry::new(), &RefCell::default())
            .expect("fixed metric definitions register")
    }

    /// Every metric a proxy can export, whether or not it has a series yet, sorted by
    /// name: those of [`Metrics`], recorded as each is registered, then those registered
    /// beside them: the endpoints' ([`crate::endpoint_metrics`]), the callers limited
    /// most ([`TopLimited`]) and, with `--redis-url`,
    /// the Redis backend's. `sluice metrics` prints them, so that dashboards, alerts and
    /// autoscaling rules can be checked against what exists.
    ///
    /// # Errors
    ///
    /// Never in practice: the definitions are fixed and the registry is fresh.
    pub fn metric_descs() -> prometheus::Result<Vec<Desc>> {
        let descs = RefCell::default();
        Self::register(Registry::new(), &descs)?;
        let mut descs = descs.into_inner();
        descs.extend(crate::endpoint_metrics::descs()?);
        let top = TopLimited::new(TokioClock::shared(), top::DEFAULT_WINDOW, 0)?;
        descs.extend(top.desc().into_iter().cloned());
        let (redis_ops, redis_latency) = RedisCollector::metrics()?;
        descs.extend(redis_ops.desc().into_iter().cloned());
        descs.push(redis_latency);
        descs.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
        Ok(descs)
    }

    /// Registers every metric of [`Metrics`] in `registry` (which checks them) and
    /// records each description in `descs`. The metrics are collected from the
    /// collectors kept in `own`; [`Metrics::registry`] is another, for other callers.
    fn register(registry: Registry, descs: &RefCell<Vec<Desc>>) -> prometheus::Result<Self> {
        fn reg<C: Collector + Clone + 'static>(
            registry: &Recording<'_>,
            c: C,
        ) -> prometheus::Result<C> {
            registry.register(&c)?;
            Ok(c)
        }
        // Every registration below goes through `reg`, which records what it registers.
        let registry = Recording {
            registry,
            descs,
            collectors: RefCell::default(),
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            reg(&registry, HistogramVec::new(opts, labels)?)
        };
        let auth_results = counter(
            "sluice_auth_results_total",
            "Authentication results by reason",
            &["result"],
        )?;
        Ok(Self {
            requests: counter(
                "sluice_requests_total",
                "Responses by pool and status class",
                &["pool", "code"],
            )?,
            duration: histogram(
                "sluice_request_duration_seconds",
                "Time from receipt of a request to its response headers",
                &["pool"],
            )?,
            response_duration: histogram(
                "sluice_response_duration_seconds",
                "Time from receipt of a request to the end of its response body",
                &["pool"],
            )?,
            first_byte: histogram(
                "sluice_response_first_byte_seconds",
                "Time from receipt of a request to the first byte of its response body",
                &["pool"],
            )?,
            request_bytes: counter(
                "sluice_request_bytes_total",
                "Request body bytes received",
                &["pool"],
            )?,
            response_bytes: counter(
                "sluice_response_bytes_total",
                "Response body bytes sent",
                &["pool"],
            )?,
            in_flight: gauge(
                "sluice_requests_in_flight",
                "Requests whose response has not ended",
                &["pool"],
            )?,
            errors: counter(
                "sluice_proxy_errors_total",
                "Requests the proxy answered itself, by reason",
                &["reason"],
            )?,
            table_version: reg(
                &registry,
                IntGauge::new(
                    "sluice_route_table_version",
                    "Version of the route table in force (0 before the first)",
                )?,
            )?,
            table_age: reg(
                &registry,
                Gauge::new(
                    "sluice_route_table_age_seconds",
                    "Time since the route table in force was applied",
                )?,
            )?,
            table_updates: counter(
                "sluice_route_table_updates_total",
                "Route tables applied or rejected",
                &["result"],
            )?,
            utilisation: reg(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "sluice_pool_utilisation",
                        "Requests in flight over the capacity of the pool's live endpoints",
                    ),
                    &["pool"],
                )?,
            )?,
            queue_depth: gauge(
                "sluice_queue_depth",
                "Requests waiting for a free endpoint",
                &["pool"],
            )?,
            queue_wait: histogram(
                "sluice_queue_wait_seconds",
                "Time requests spent in the queue",
                &["pool", "result"],
            )?,
            retries: counter(
                "sluice_retries_total",
                "Retries sent, or refused and why",
                &["pool", "result"],
            )?,
            ejections: counter(
                "sluice_outlier_ejections_total",
                "Outlier ejections, done or skipped",
                &["pool", "reason", "result"],
            )?,
            health_transitions: counter(
                "sluice_health_transitions_total",
                "Health check state changes",
                &["pool", "to"],
            )?,
            fallbacks: counter(
                "sluice_fallbacks_total",
                "Requests sent to a fallback pool",
                &["pool", "to"],
            )?,
            body_cut: counter(
                "sluice_body_cut_total",
                "Response bodies cut before their end",
                &["pool", "reason"],
            )?,
            auth_counters: ["ok", "anonymous"]
                .map(|r| (r, auth_results.with_label_values(&[r])))
                .into(),
            auth_results,
            rate_decisions: counter(
                "sluice_ratelimit_decisions_total",
                "Rate-limit decisions by policy, tier and result",
                &["policy", "tier", "result"],
            )?,
            rate_tokens: counter(
                "sluice_ratelimit_tokens_total",
                "LLM tokens reserved, refunded and charged",
                &["policy", "tier", "kind"],
            )?,
            ratelimit_keys: reg(
                &registry,
                IntGauge::new(
                    "sluice_ratelimit_keys",
                    "Keys the local rate limits track now",
                )?,
            )?,
            key_events: counter(
                "sluice_ratelimit_key_events_total",
                "Rate-limit keys evicted to make room (idle or active) and requests admitted untracked",
                &["event"],
            )?,
            llm_tokens: counter(
                "sluice_llm_tokens_total",
                "LLM tokens reserved for and used by the requests of a pool, by tier",
                &["pool", "tier", "kind"],
            )?,
            access_log_lines: reg(
                &registry,
                IntCounter::new("sluice_access_log_lines_total", "Access log lines written")?,
            )?,
            access_log_dropped: reg(
                &registry,
                IntCounter::new(
                    "sluice_access_log_dropped_total",
                    "Access log lines dropped because the writer was behind",
                )?,
            )?,
            spans_dropped: reg(
                &registry,
                IntCounter::new(
                    "sluice_trace_spans_dropped_total",
                    "Request spans dropped because the exporter was behind",
                )?,
            )?,
            span_exports: counter(
                "sluice_trace_exports_total",
                "Span batches exported, by result",
                &["result"],
            )?,
            own: Collectors(registry.collectors.into_inner().into()),
            registry: Registry::new(),
            endpoints: Arc::default(),
        })
    }

    /// Counts one authentication result (`result` is `ok`, `anonymous` or an
    /// `AuthError` reason: a bounded set).
    pub fn count_auth(&self, result: &'static str) {
        // The common results are resolved once: no label lookup per request.
        match self.auth_counters.iter().find(|(r, _)| *r == result) {
            Some((_, counter)) => counter.inc(),
            None => self.auth_results.with_label_values(&[result]).inc(),
        }
    }

    /// Counts one rate-limit decision of `policy` for `tier`.
    pub fn count_rate(&self, policy: &str, tier: &str, result: &'static str) {
        self.rate_decisions
            .with_label_values(&[policy, tier, result])
            .inc();
    }

    /// Exports the counters of a Redis backend for global limits.
    ///
    /// # Errors
    ///
    /// When the metrics are already registered.
    pub fn register_redis(
        &self,
        backend: std::sync::Arc<sluice_ratelimit::RedisBackend>,
    ) -> prometheus::Result<()> {
        self.registry
            .register(Box::new(RedisCollector::new(backend)?))
    }

    /// Exports the endpoints of whatever runtime `current` holds: their
    /// `sluice_endpoint_*` series, read at scrape (see [`crate::endpoint_metrics`]).
    ///
    /// # Errors
    ///
    /// When another table's endpoints are exported already (a second store on the
    /// same metrics): the first one's stand.
    pub(crate) fn export_endpoints(
        &self,
        current: Arc<ArcSwapOption<Runtime>>,
    ) -> Result<(), &'static str> {
        self.endpoints
            .set(current)
            .map_err(|_| "another table's endpoints are exported already")
    }

    /// The metrics in the Prometheus text format, as a body written a chunk at a time.
    pub fn exposition(&self) -> Exposition {
        let mut sources: Vec<(String, Source)> = self
            .registry
            .gather()
            .into_iter()
            .map(|f| (f.name().to_owned(), Source::Family(f)))
            .collect();
        for (i, c) in self.own.0.iter().enumerate() {
            let name = c
                .desc()
                .first()
                .map(|d| d.fq_name.clone())
                .unwrap_or_default();
            sources.push((name, Source::Own(i)));
        }
        if let Some(endpoints) = self
            .endpoints
            .get()
            .and_then(|current| current.load_full())
            .and_then(EndpointText::new)
        {
            sources.push((
                endpoint_metrics::PREFIX.to_owned(),
                Source::Endpoints(endpoints),
            ));
        }
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        Exposition {
            own: self.own.clone(),
            sources: sources.into_iter(),
            endpoints: None,
        }
    }

    /// The metrics in the Prometheus text format, whole.
    pub fn render(&self) -> String {
        let mut exposition = self.exposition();
        let mut text = Vec::new();
        while let Some(chunk) = exposition.next_chunk() {
            text.extend_from_slice(&chunk);
        }
        // Both writers write UTF-8 only.
        String::from_utf8(text).unwrap_or_default()
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

/// The metrics of a proxy in the Prometheus text format, written as the body is sent,
/// sorted by name: each metric of [`Metrics`] collected when its turn comes (a family
/// of a thousand pools' histograms is a few MB of objects, freed once written), the
/// other registry's families, and the endpoints' series (ten thousand endpoints are
/// 28 MB of text) an [`Exposition::CHUNK`] at a time. A scrape so holds about one
/// family at once, not all of them and their text.
#[derive(Debug)]
pub struct Exposition {
    own: Collectors,
    /// What is left to write, each with the name it sorts by.
    sources: std::vec::IntoIter<(String, Source)>,
    /// The endpoint series being written.
    endpoints: Option<EndpointText>,
}

/// The collectors of [`Metrics`]' own metrics.
#[derive(Clone)]
struct Collectors(Arc<[Box<dyn Collector>]>);

impl std::fmt::Debug for Collectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} collectors", self.0.len())
    }
}

/// What an [`Exposition`] writes next.
#[derive(Debug)]
enum Source {
    /// A family gathered from [`Metrics::registry`].
    Family(MetricFamily),
    /// The collector of one metric of [`Metrics`], by index.
    Own(usize),
    Endpoints(EndpointText),
}

impl Exposition {
    /// About the most text a chunk holds (one family can be longer).
    pub const CHUNK: usize = 64 * 1024;

    /// The next piece of text, `None` at the end.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let mut buf = Vec::new();
        while buf.len() < Self::CHUNK {
            if let Some(endpoints) = &mut self.endpoints {
                if !endpoints.write(&mut buf, Self::CHUNK) {
                    self.endpoints = None;
                }
                continue;
            }
            let Some((_, source)) = self.sources.next() else {
                break;
            };
            match source {
                Source::Family(family) => encode(family, &mut buf),
                Source::Own(i) => {
                    for mut family in self.own.0[i].collect() {
                        // As the registry's gather does: none without series, and the
                        // series in the order of their label values.
                        if family.get_metric().is_empty() {
                            continue;
                        }
                        family.mut_metric().sort_by(|a, b| {
                            let values = |m| prometheus::proto::Metric::get_label(m).iter();
                            values(a)
                                .map(|l| l.value())
                                .cmp(values(b).map(|l| l.value()))
                        });
                        encode(family, &mut buf);
                    }
                }
                Source::Endpoints(endpoints) => self.endpoints = Some(endpoints),
            }
        }
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }
}

/// Appends `family` in the text format.
fn encode(family: MetricFamily, buf: &mut Vec<u8>) {
    // Encoding a family with series into a Vec cannot fail.
    let _ = TextEncoder::new().encode(std::slice::from_ref(&family), buf);
}

impl http_body::Body for Exposition {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .next_chunk()
                .map(|chunk| Ok(Frame::data(chunk))),
        )
    }
}

/// A registry that also keeps the description of each metric registered in it: how
/// [`Metrics::metric_descs`] knows the metrics that have no series yet.
/// It also keeps the collectors, which [`Exposition`] collects one at a time.
struct Recording<'a> {
    registry: Registry,
    descs: &'a RefCell<Vec<Desc>>,
    collectors: RefCell<Vec<Box<dyn Collector>>>,
}

impl Recording<'_> {
    fn register<C: Collector + Clone + 'static>(&self, c: &C) -> prometheus::Result<()> {
        let descs: Vec<Desc> = c.desc().into_iter().cloned().collect();
        self.registry.register(Box::new(c.clone()))?;
        self.descs.borrow_mut().extend(descs);
        self.collectors.borrow_mut().push(Box::new(c.clone()));
        Ok(())
    }
}

/// The metric handles of one pool, resolved once per route table so that the request
/// path does no label lookups.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    /// Responses by status class: `1xx` to `5xx`.
    pub requests: [prometheus::IntCounter; 5],
    /// Receipt to response headers.
    pub duration: prometheus::Histogram,
    /// Requests whose response has not ended.
    pub in_flight: prometheus::IntGauge,
    /// Waiting requests.
    pub queue_depth: prometheus::IntGauge,
    /// Bodies cut: by the total deadline, by the idle timeout, by an upstream failure.
    pub body_cut: [prometheus::IntCounter; 3],
    /// Receipt to the end of the response body.
    pub response_duration: prometheus::Histogram,
    /// Receipt to the first response body byte.
    pub first_byte: prometheus::Histogram,
    /// Request body bytes received.
    pub request_bytes: prometheus::IntCounter,
    /// Response body bytes sent.
    pub response_bytes: prometheus::IntCounter,
}

impl PoolMetrics {
    /// Resolves the handles of `pool`.
    pub fn new(metrics: &Metrics, pool: &str) -> Self {
        let class = |c| metrics.requests.with_label_values(&[pool, c]);
        Self {
            requests: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics.duration.with_label_values(&[pool]),
            in_flight: metrics.in_flight.with_label_values(&[pool]),
            queue_depth: metrics.queue_depth.with_label_values(&[pool]),
            body_cut: ["total", "idle", "upstream"]
                .map(|r| metrics.body_cut.with_label_values(&[pool, r])),
            response_duration: metrics.response_duration.with_label_values(&[pool]),
            first_byte: metrics.first_byte.with_label_values(&[pool]),
            request_bytes: metrics.request_bytes.with_label_values(&[pool]),
            response_bytes: metrics.response_bytes.with_label_values(&[pool]),
        }
    }

    /// Counts one response and its latency.
    pub fn observe(&self, status: http::StatusCode, seconds: f64) {
        let i = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[i].inc();
        self.duration.observe(seconds);
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

/// Reads a Redis backend's counters at each scrape.
struct RedisCollector {
    backend: std::sync::Arc<sluice_ratelimit::RedisBackend>,
    ops: IntCounterVec,
    latency_desc: prometheus::core::Desc,
}

impl RedisCollector {
    fn new(backend: std::sync::Arc<sluice_ratelimit::RedisBackend>) -> prometheus::Result<Self> {
        let (ops, latency_desc) = Self::metrics()?;
        Ok(Self {
            backend,
            ops,
            latency_desc,
        })
    }

    /// The operations counter and the description of the latency histogram.
    fn metrics() -> prometheus::Result<(IntCounterVec, Desc)> {
        Ok((
            IntCounterVec::new(
                Opts::new(
                    "sluice_redis_operations_total",
                    "Redis calls and local lease decisions for global limits",
                ),
                &["result"],
            )?,
            Desc::new(
                "sluice_redis_call_duration_seconds".into(),
                "Latency of completed Redis calls".into(),
                Vec::new(),
                std::collections::HashMap::new(),
            )?,
        ))
    }
}

impl prometheus::core::Collector for RedisCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.ops.desc();
        d.push(&self.latency_desc);
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let s = self.backend.stats().snapshot();
        for (result, value) in [
            ("call", s.redis_ops),
            ("error", s.redis_errors),
            ("timeout", s.redis_timeouts),
            ("skipped", s.redis_skipped),
            ("lease_admitted", s.lease_admitted),
            ("lease_denied", s.lease_denied),
            ("fallback", s.fallback_decisions),
            ("unavailable", s.unavailable_decisions),
        ] {
            let c = self.ops.with_label_values(&[result]);
            c.inc_by(value.saturating_sub(c.get()));
        }
        let mut families = self.ops.collect();
        // The histogram of completed calls, rebuilt from the backend's cumulative
        // buckets (microseconds).
        let mut family = prometheus::proto::MetricFamily::default();
        family.set_name(self.latency_desc.fq_name.clone());
        family.set_help(self.latency_desc.help.clone());
        family.set_field_type(prometheus::proto::MetricType::HISTOGRAM);
        let mut histogram = prometheus::proto::Histogram::default();
        let total = s.latency_buckets.last().copied().unwrap_or(0);
        histogram.set_sample_count(total);
        histogram.set_sample_sum(s.latency_sum_micros as f64 / 1e6);
        let buckets = sluice_ratelimit::global::stats::LATENCY_BUCKETS_MICROS
            .iter()
            .enumerate()
            .map(|(i, bound)| {
                let mut b = prometheus::proto::Bucket::default();
                b.set_upper_bound(*bound as f64 / 1e6);
                b.set_cumulative_count(s.latency_buckets[i]);
                b
            })
            .collect();
        histogram.set_bucket(buckets);
        let mut metric = prometheus::proto::Metric::default();
        metric.set_histogram(histogram);
        family.mut_metric().push(metric);
        families.push(family);
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_descs_cover_every_family_a_proxy_gathers() {
        let descs = Metrics::metric_descs().expect("fixed definitions");
        let names: Vec<&str> = descs.iter().map(|d| d.fq_name.as_str()).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique, "sorted, each once");
        for name in [
            "sluice_requests_total",
            "sluice_ratelimit_top_consumers",
            "sluice_redis_operations_total",
            "sluice_redis_call_duration_seconds",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let requests = descs.iter().find(|d| d.fq_name == "sluice_requests_total");
        assert_eq!(
            requests.map(|d| d.variable_labels.clone()),
            Some(vec!["pool".to_owned(), "code".to_owned()])
        );

        // Every family with a series is described.
        let metrics = Metrics::new();
        PoolMetrics::new(&metrics, "ns/pool").observe(http::StatusCode::OK, 0.1);
        metrics.count_auth("ok");
        metrics.count_rate("ns/policy", "premium", "allowed");
        for family in families(&metrics.render()) {
            assert!(
                names.contains(&family),
                "{family} is exported but not in metric_descs"
            );
        }
    }

    /// The names of the families in `text`, in order.
    fn families(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect()
    }

    #[test]
    fn the_exposition_sorts_families_by_name_and_series_by_labels_across_both_sources() {
        let metrics = Metrics::new();
        for pool in ["ns/b", "ns/a"] {
            PoolMetrics::new(&metrics, pool).observe(http::StatusCode::OK, 0.1);
        }
        metrics.count_auth("ok");
        for name in ["sluice_zz_other", "aa_other"] {
            let c = IntCounter::new(name, "registered by another part").unwrap();
            c.inc();
            metrics.registry().register(Box::new(c)).unwrap();
        }
        let text = metrics.render();

        let names = families(&text);
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted, each once");
        for name in ["aa_other", "sluice_zz_other", "sluice_requests_total"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        // Families without series are left out, as the registry leaves them out.
        assert!(!names.contains(&"sluice_ratelimit_decisions_total"));
        let a = text.find("sluice_requests_total{code=\"2xx\",pool=\"ns/a\"} 1");
        let b = text.find("sluice_requests_total{code=\"2xx\",pool=\"ns/b\"} 1");
        assert!(a.is_some() && a < b, "{text}");
        // A family's text is the encoder's whole: every sample line is one of a
        // family announced just before.
        let mut current = "";
        for line in text.lines() {
            match line.strip_prefix("# TYPE ") {
                Some(t) => current = t.split(' ').next().unwrap_or_default(),
                None if !line.starts_with('#') => {
                    assert!(line.starts_with(current), "{line} outside {current}");
                }
                None => {}
            }
        }
    }
}
