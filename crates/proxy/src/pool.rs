//! One pool at run time: its endpoints with their live load, health and ejection
//! state, the selector, the wait queue and the retry budget.
//!
//! Built when a route table brings a new or changed pool (an unchanged one is shared
//! by the new runtime as it is). State that must survive a change (in-flight counts
//! and latency estimates, health, ejections, the queue and its waiters, the retry
//! budget) is carried over from the previous runtime's pool of the same key.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use tokio::task::AbortHandle;

use sluice_api::table::{Algorithm, BackendProtocol, HashOn, Pool};
use sluice_balance::{
    CheckResult, ConsistentHash, HashConfig, HealthConfig, HealthState, InFlight, LeastRequest,
    LoadConfig, LoadFactor, OutlierConfig, OutlierDetector, PeakEwma, Pick, PoolLoad, QueueError,
    RetryBudget, RetryBudgetConfig, RoundRobin, Selector, StartAs, WaitQueue, Weighted,
};
use tokio::time::Instant;

use crate::clock::{Entropy, SharedClock};
use crate::error::ProxyError;
use crate::metrics::{Metrics, PoolMetrics};
use crate::store::UpstreamClient;

/// One endpoint of a pool.
#[derive(Debug)]
pub struct EndpointRt {
    /// `host:port`.
    pub address: String,
    /// Draining: no new requests.
    pub terminating: bool,
    /// Most requests at once.
    pub max_concurrency: Option<NonZeroU32>,
    /// Capabilities of its backend and of the pool, sorted.
    pub capabilities: Vec<String>,
    /// The client for its protocol.
    pub client: UpstreamClient,
    /// Requests sent to it (`sluice_endpoint_requests_total`).
    pub selections: prometheus::IntCounter,
    /// Its in-flight gauge.
    pub in_flight: prometheus::IntGauge,
    /// Its health gauge.
    pub healthy_gauge: prometheus::IntGauge,
    /// Health check state.
    pub health: Arc<HealthState>,
}

/// Why no endpoint could be had.
#[derive(Debug)]
pub enum Unavailable {
    /// No endpoint is alive (none, all unhealthy, ejected or draining, or none with
    /// the capability): try the fallback pool.
    NoCapacity,
    /// Endpoints are alive but full, and the queue refused or timed out.
    Queue(ProxyError),
    /// A new route table replaced this pool while the request waited: wait on in the
    /// new table's pool of the same key.
    Replaced,
}

/// What a request asks of the pool when picking.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickRequest<'a> {
    /// The capability the request names.
    pub capability: Option<&'a str>,
    /// Session key for consistent hashing.
    pub hash: Option<u64>,
    /// Queue priority.
    pub priority: u32,
}

/// A reserved place on an endpoint: dropping it frees the slot and wakes the queue.
#[derive(Debug)]
pub struct Slot {
    /// Index of the endpoint in the pool.
    pub index: usize,
    guard: Option<InFlight>,
    gauge: prometheus::IntGauge,
    pool_gauge: prometheus::IntGauge,
    queue: Arc<WaitQueue>,
    /// Wake every waiter, not the first, when freed (see [`PoolRuntime`]'s
    /// `mixed_capabilities`).
    wake_all: bool,
}

impl Slot {
    /// Records the time to response headers in the endpoint's latency estimate, at
    /// `now` (the pool's [`PoolRuntime::now`]).
    pub fn record_latency(&self, latency: Duration, now: u64) {
        if let Some(g) = &self.guard {
            g.load().record(latency, now);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.guard.take();
        self.gauge.dec();
        self.pool_gauge.dec();
        if self.wake_all {
            self.queue.notify_all();
        } else {
            self.queue.notify_one();
        }
    }
}

/// A pool ready to take requests.
#[derive(Debug)]
pub struct PoolRuntime {
    /// The compiled pool.
    pub spec: Pool,
    /// Its endpoints, backends flattened in order.
    pub endpoints: Vec<EndpointRt>,
    /// Pre-resolved metric handles.
    pub metrics: PoolMetrics,
    load: PoolLoad,
    selector: Box<dyn Selector>,
    outlier: Option<OutlierDetector>,
    health_config: Option<HealthConfig>,
    /// The wait queue (depth 0 when the pool has none).
    pub queue: Arc<WaitQueue>,
    /// Endpoints differ in capabilities: a freed slot may be of no use to the first
    /// waiter (it asks for a capability the endpoint lacks) yet serve one behind it,
    /// so freeing a slot wakes every waiter to try, instead of the first only.
    mixed_capabilities: bool,
    /// A newer table is in force: waiters leave for its pool of the same key.
    replaced: std::sync::atomic::AtomicBool,
    /// The retry budget when the pool retries.
    pub retry_budget: Option<Arc<RetryBudget>>,
    /// JWT verification, when the pool accepts tokens.
    pub jwt: Option<Arc<crate::identity::JwtAuth>>,
    /// The task probing the endpoints, while the pool is in force.
    checker: Mutex<Option<AbortHandle>>,
    metrics_all: Metrics,
    clock: SharedClock,
    entropy: Arc<Entropy>,
}

/// What every pool of a store shares: the metrics, the clock and the random source.
#[derive(Debug, Clone)]
pub struct PoolEnv {
    /// The proxy's metrics.
    pub metrics: Metrics,
    /// The proxy's clock.
    pub clock: SharedClock,
    /// The proxy's random source.
    pub entropy: Arc<Entropy>,
}

/// Builds a pool runtime; `previous` is the pool of the same key in the runtime being
/// replaced, whose state carries over.
pub fn build(
    spec: &Pool,
    previous: Option<&PoolRuntime>,
    client: &dyn Fn(Duration, bool) -> UpstreamClient,
    health: &dyn Fn(&str) -> Arc<HealthState>,
    env: &PoolEnv,
) -> PoolRuntime {
    let metrics = &env.metrics;
    let now = env.clock.now_nanos();
    let key = spec.key.as_str();
    let connect = spec.connect_timeout.get();
    let mut endpoints = Vec::new();
    let mut weights = Vec::new();
    let sizes: Vec<usize> = spec.backends.iter().map(|b| b.endpoints.len()).collect();
    let lcm = sizes
        .iter()
        .filter(|&&n| n > 0)
        .fold(1u64, |acc, &n| lcm(acc, n as u64).min(10_000));
    for backend in &spec.backends {
        let mut capabilities: Vec<String> = spec
            .capabilities
            .iter()
            .chain(&backend.capabilities)
            .cloned()
            .collect();
        capabilities.sort();
        capabilities.dedup();
        let share = u64::from(backend.weight.get()) * lcm / (backend.endpoints.len().max(1) as u64);
        for ep in &backend.endpoints {
            let labels = [key, ep.address.as_str()];
            endpoints.push(EndpointRt {
                address: ep.address.clone(),
                terminating: ep.terminating,
                max_concurrency: backend.max_concurrency,
                capabilities: capabilities.clone(),
                client: client(connect, backend.protocol == BackendProtocol::H2c),
                selections: metrics.endpoint_requests.with_label_values(&labels),
                in_flight: metrics.endpoint_in_flight.with_label_values(&labels),
                healthy_gauge: metrics.endpoint_healthy.with_label_values(&labels),
                health: health(&ep.address),
            });
            weights.push(
                NonZeroU32::new(u32::try_from(share).unwrap_or(u32::MAX))
                    .unwrap_or(NonZeroU32::MIN),
            );
        }
    }
    for e in &endpoints {
        e.healthy_gauge.set(i64::from(e.health.is_healthy()));
    }
    let addresses: Vec<&str> = endpoints.iter().map(|e| e.address.as_str()).collect();
    let load_config = LoadConfig {
        decay: spec.balancer.ewma_decay.get(),
        neutral_latency: spec.balancer.ewma_default_latency.get(),
    };
    let load = match previous {
        Some(p) => p.load.rebuild(&addresses, load_config, now),
        None => PoolLoad::new(&addresses, load_config, now),
    };
    let start = env.entropy.below(usize::MAX);
    let selector: Box<dyn Selector> = match spec.algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(endpoints.len()).starting_at(start)),
        Algorithm::Weighted => Box::new(Weighted::new(&weights).starting_at(start)),
        Algorithm::LeastRequest => Box::new(LeastRequest::new(load.clone())),
        Algorithm::PeakEwma => Box::new(PeakEwma::new(load.clone())),
        Algorithm::ConsistentHash => Box::new(ConsistentHash::new(
            load.clone(),
            HashConfig {
                vnodes: sluice_balance::consistent_hash::DEFAULT_VNODES,
                load_factor: LoadFactor::new(spec.balancer.bounded_load),
            },
        )),
    };

    let outlier = spec.outlier.as_ref().map(|o| {
        let config = OutlierConfig {
            consecutive_failures: Some(o.consecutive_failures),
            consecutive_connect_failures: None,
            base_ejection: o.base_ejection.get(),
            max_ejection: o.max_ejection.get(),
            max_ejection_percent: o.max_ejection_percent.get(),
            ..OutlierConfig::default()
        };
        match previous.and_then(|p| p.outlier.as_ref()) {
            Some(old) => {
                let previous_index = |address: &str| {
                    previous.and_then(|p| p.endpoints.iter().position(|e| e.address == address))
                };
                old.carry_over(config, endpoints.iter().map(|e| previous_index(&e.address)))
            }
            None => OutlierDetector::new(config, endpoints.len()),
        }
    });
    let health_config = spec.health_check.as_ref().map(|h| HealthConfig {
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
    });
    let mixed_capabilities = endpoints
        .windows(2)
        .any(|w| w[0].capabilities != w[1].capabilities);
    let depth = spec.queue.as_ref().map_or(0, |q| q.max_depth as usize);
    let queue = match previous {
        Some(p) if p.queue.max_depth() == depth => p.queue.clone(),
        _ => Arc::new(WaitQueue::new(depth)),
    };
    let retry_budget = spec.retries.as_ref().and_then(|r| {
        let config = RetryBudgetConfig {
            ratio: r.budget_ratio,
            min_per_second: r.min_retries_per_second,
            ..RetryBudgetConfig::default()
        };
        match previous
            .and_then(|p| p.retry_budget.clone())
            .filter(|_| previous.and_then(|p| p.spec.retries.as_ref()) == Some(r))
        {
            Some(b) => Some(b),
            None => RetryBudget::new(&config).ok().map(Arc::new),
        }
    });
    PoolRuntime {
        metrics: PoolMetrics::new(metrics, key),
        spec: spec.clone(),
        endpoints,
        load,
        selector,
        outlier,
        health_config,
        queue,
        mixed_capabilities,
        replaced: std::sync::atomic::AtomicBool::new(false),
        retry_budget,
        jwt: None,
        checker: Mutex::new(None),
        metrics_all: metrics.clone(),
        clock: env.clock.clone(),
        entropy: env.entropy.clone(),
    }
}

/// Starts the active health checks of `pool`, when it has them. The task holds a weak
/// reference: it ends when the pool is replaced or dropped, and a pool shared by
/// several tables keeps its one checker.
pub fn start_health_checks(pool: &Arc<PoolRuntime>) {
    let Some(check) = pool.spec.health_check.clone() else {
        return;
    };
    let weak = Arc::downgrade(pool);
    let task = tokio::spawn(async move {
        let interval = check.interval.get();
        let timeout = check.timeout.get();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            let probes = pool
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.terminating)
                .map(|(i, e)| {
                    let uri = format!("http://{}{}", e.address, check.path);
                    let client = e.client.clone();
                    async move {
                        let ok = match http::Request::get(uri)
                            .body(Empty::new().map_err(|never| match never {}).boxed())
                        {
                            Ok(req) => matches!(
                                tokio::time::timeout(timeout, client.request(req)).await,
                                Ok(Ok(resp)) if resp.status().is_success()
                            ),
                            Err(_) => false,
                        };
                        let result = if ok {
                            CheckResult::Success
                        } else {
                            CheckResult::Failure
                        };
                        (i, result)
                    }
                });
            for (i, result) in futures_util::future::join_all(probes).await {
                pool.record_health(i, result);
            }
        }
    });
    *pool.checker.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
}

impl Drop for PoolRuntime {
    fn drop(&mut self) {
        self.stop_checker();
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b).max(1) * b
}

impl PoolRuntime {
    /// Marks the pool replaced by a newer table and wakes its waiters so that they
    /// move to the new pool.
    pub fn mark_replaced(&self) {
        self.stop_checker();
        self.replaced
            .store(true, std::sync::atomic::Ordering::Release);
        self.queue.notify_all();
    }

    /// The health checker task, while one runs.
    #[cfg(test)]
    pub(crate) fn checker_id(&self) -> Option<tokio::task::Id> {
        self.checker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(AbortHandle::id)
    }

    fn stop_checker(&self) {
        if let Some(task) = self
            .checker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }

    /// The pool key.
    pub fn key(&self) -> &str {
        &self.spec.key
    }

    /// The proxy clock's reading now, in nanoseconds.
    pub fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    /// Whether the pool advertises `capability`, itself or through a backend (whether
    /// or not that backend has endpoints right now).
    pub fn has_capability(&self, capability: &str) -> bool {
        let has = |list: &[String]| list.iter().any(|c| c == capability);
        has(&self.spec.capabilities) || self.spec.backends.iter().any(|b| has(&b.capabilities))
    }

    /// Whether endpoint `i` may take a new request, apart from its concurrency limit.
    fn alive(&self, i: usize, now: u64, capability: Option<&str>, exclude: &[usize]) -> bool {
        let e = &self.endpoints[i];
        !e.terminating
            && !exclude.contains(&i)
            && capability.is_none_or(|c| e.capabilities.iter().any(|x| x == c))
            && e.health.is_healthy()
            && self.outlier.as_ref().is_none_or(|o| !o.is_ejected(i, now))
    }

    fn has_room(&self, i: usize) -> bool {
        let limit = self.endpoints[i].max_concurrency;
        limit.is_none_or(|m| {
            self.load
                .get(i)
                .is_some_and(|l| l.in_flight() < u64::from(m.get()))
        })
    }

    /// Picks an endpoint and reserves a slot on it, without waiting.
    pub fn try_acquire(&self, req: &PickRequest<'_>, exclude: &[usize]) -> Option<Slot> {
        let now = self.now();
        let accept = |i: usize| self.alive(i, now, req.capability, exclude) && self.has_room(i);
        for _ in 0..3 {
            let pick = Pick {
                random: self.entropy.next_u64(),
                hash: req.hash,
                now,
                accept: &accept,
            };
            let i = self.selector.pick(&pick)?;
            let load = self.load.get(i)?;
            let guard = match self.endpoints[i].max_concurrency {
                Some(m) => load.try_start(u64::from(m.get())),
                None => Some(load.start()),
            };
            // A concurrent request may have taken the last slot since `accept`.
            if let Some(guard) = guard {
                let e = &self.endpoints[i];
                e.selections.inc();
                e.in_flight.inc();
                self.metrics.in_flight.inc();
                return Some(Slot {
                    index: i,
                    guard: Some(guard),
                    gauge: e.in_flight.clone(),
                    pool_gauge: self.metrics.in_flight.clone(),
                    queue: self.queue.clone(),
                    wake_all: self.mixed_capabilities,
                });
            }
        }
        None
    }

    /// Reserves a slot, waiting in the queue (by `priority`, until `deadline` or the
    /// queue timeout) when every live endpoint is full.
    ///
    /// # Errors
    ///
    /// [`Unavailable::NoCapacity`] when no endpoint is alive; [`Unavailable::Queue`]
    /// when the queue is full or the wait timed out.
    pub async fn acquire(
        &self,
        req: &PickRequest<'_>,
        deadline: Instant,
    ) -> Result<Slot, Unavailable> {
        if let Some(slot) = self.try_acquire(req, &[]) {
            return Ok(slot);
        }
        if !self.any_alive(req.capability) {
            return Err(Unavailable::NoCapacity);
        }
        let queued = Instant::now();
        let timeout = self
            .spec
            .queue
            .as_ref()
            .map_or(0, |q| q.timeout.as_millis());
        let wait_until = deadline.min(queued + Duration::from_millis(timeout));
        let mut waiter = match self.queue.register(req.priority) {
            Ok(w) => w,
            Err(_) => {
                self.observe_wait(queued, "full");
                return Err(Unavailable::Queue(ProxyError::QueueFull {
                    pool: self.key().to_owned(),
                }));
            }
        };
        self.metrics
            .queue_depth
            .set(i64::try_from(self.queue.depth()).unwrap_or(i64::MAX));
        let result = loop {
            if self.replaced.load(std::sync::atomic::Ordering::Acquire) {
                break Err(Unavailable::Replaced);
            }
            if let Some(slot) = self.try_acquire(req, &[]) {
                break Ok(slot);
            }
            if !self.any_alive(req.capability) {
                break Err(Unavailable::NoCapacity);
            }
            match waiter.wait(wait_until).await {
                Ok(()) => {}
                Err(QueueError::TimedOut) => {
                    break Err(Unavailable::Queue(ProxyError::QueueTimeout {
                        pool: self.key().to_owned(),
                        timeout_ms: timeout,
                    }));
                }
                Err(QueueError::Full) => {
                    break Err(Unavailable::Queue(ProxyError::QueueFull {
                        pool: self.key().to_owned(),
                    }));
                }
            }
        };
        drop(waiter);
        self.metrics
            .queue_depth
            .set(i64::try_from(self.queue.depth()).unwrap_or(i64::MAX));
        self.observe_wait(
            queued,
            if result.is_ok() {
                "admitted"
            } else {
                "refused"
            },
        );
        result
    }

    fn observe_wait(&self, since: Instant, result: &str) {
        self.metrics_all
            .queue_wait
            .with_label_values(&[self.key(), result])
            .observe(since.elapsed().as_secs_f64());
    }

    /// Whether some endpoint could take a request if it had room.
    pub fn any_alive(&self, capability: Option<&str>) -> bool {
        let now = self.now();
        (0..self.endpoints.len()).any(|i| self.alive(i, now, capability, &[]))
    }

    /// Records the outcome of an attempt on endpoint `i` for outlier detection.
    pub fn record_outcome(&self, i: usize, outcome: sluice_balance::Outcome) {
        let Some(detector) = &self.outlier else {
            return;
        };
        if let Some(ejection) = detector.record(i, outcome, self.now()) {
            let result = if ejection.is_ejected() {
                "ejected"
            } else {
                "skipped"
            };
            self.metrics_all
                .ejections
                .with_label_values(&[self.key(), ejection.reason().as_str(), result])
                .inc();
            if ejection.is_ejected() {
                tracing::warn!(pool = self.key(), endpoint = %self.endpoints[i].address, reason = ejection.reason().as_str(), "endpoint ejected");
            }
        }
    }

    /// Records an active health check result for endpoint `i`.
    pub fn record_health(&self, i: usize, result: sluice_balance::CheckResult) {
        let Some(config) = &self.health_config else {
            return;
        };
        let e = &self.endpoints[i];
        if let Some(to) = e.health.record(config, result) {
            e.healthy_gauge.set(i64::from(e.health.is_healthy()));
            self.metrics_all
                .health_transitions
                .with_label_values(&[self.key(), to.as_str()])
                .inc();
            tracing::info!(pool = self.key(), endpoint = %e.address, to = to.as_str(), "health changed");
            if e.health.is_healthy() {
                // Waiters may now find room.
                self.queue.notify_all();
            }
        }
    }

    /// The session hash key of a request under `ConsistentHash`.
    pub fn hash_key(&self, headers: &http::HeaderMap, client_ip: std::net::IpAddr) -> Option<u64> {
        let on = self.spec.balancer.hash_on.as_ref()?;
        let bytes: Vec<u8> = match on {
            HashOn::Header(name) => headers.get(name)?.as_bytes().to_vec(),
            HashOn::Cookie(name) => cookie(headers, name)?.as_bytes().to_vec(),
            HashOn::ClientIp => client_ip.to_string().into_bytes(),
        };
        Some(sluice_balance::hash_key(&bytes))
    }

    /// The queue priority of a request from a consumer of `tier`.
    pub fn priority(&self, tier: Option<&str>) -> u32 {
        let Some(q) = &self.spec.queue else { return 0 };
        tier.and_then(|t| q.tier_priorities.get(t).copied())
            .unwrap_or(q.default_priority)
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the pool has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Health checks start optimistic: a new endpoint is healthy until its probes fail.
pub const HEALTH_START: StartAs = StartAs::Healthy;

/// The default idle timeout of response bodies.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
