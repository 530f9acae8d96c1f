//! One pool at run time: its endpoints with their live load, health and ejection
//! state, the selector, the wait queue and the retry budget.
//!
//! Built when a route table brings a new or changed pool (an unchanged one is shared
//! by the new runtime as it is). State that must survive a change (in-flight counts
//! and latency estimates, health, ejections, the queue and its waiters, the retry
//! budget) is carried over from the previous runtime's pool of the same key.

mod build;
pub mod conns;
mod health;
mod slot;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_api::table::{HashOn, Pool};
use sluice_balance::{
    HealthConfig, OutlierDetector, PoolLoad, RetryBudget, Selector, StartAs, WaitQueue,
};
use tokio::task::AbortHandle;

pub use build::build;
pub use health::{CONNECT_WARNING_INTERVAL, EndpointHealth, start_health_checks};
pub use slot::Slot;

use crate::clock::{Entropy, SharedClock};
use crate::dns::DnsCache;
use crate::endpoint_metrics::EndpointStats;
use crate::error::ProxyError;
use crate::metrics::{Metrics, PoolMetrics};
use crate::store::UpstreamClient;
pub use conns::{Connections, PARK_AFTER, SendError};

/// One endpoint of a pool.
#[derive(Debug)]
pub struct EndpointRt {
    /// `host:port`.
    pub address: String,
    /// `address` as a URI authority, parsed once; `None` if it is not one (requests
    /// to it then fail, naming the endpoint).
    pub authority: Option<http::uri::Authority>,
    /// Draining: no new requests.
    pub terminating: bool,
    /// Most requests at once.
    pub max_concurrency: Option<NonZeroU32>,
    /// Capabilities of its backend and of the pool, sorted.
    pub capabilities: Vec<String>,
    /// How its backend is reached: the client, the scheme, `Host` and credential.
    pub upstream: Arc<Upstream>,
    /// The name its backend knows the request's `model` by, if it rewrites it.
    pub model_rewrite: Option<Arc<str>>,
    /// Its request count and latency, kept across tables (its
    /// `sluice_endpoint_*` series, read at scrape with its load and health).
    pub stats: Arc<EndpointStats>,
    /// Its health: active checks and whether it accepts connections.
    pub health: Arc<EndpointHealth>,
    /// Its kept-alive connections, when its backend is cleartext HTTP/1.1.
    pub connections: Arc<Connections>,
}

/// What an endpoint keeps across tables while it stays in its pool: its health, its
/// counters and its kept-alive connections.
pub type Kept = (Arc<EndpointHealth>, Arc<EndpointStats>, Arc<Connections>);

/// One pooled client per worker and one for the rest of the process: a connection is
/// driven by the runtime that opened it, so each worker reuses only connections its
/// own thread drives (see [`sluice_listener::workers`]).
#[derive(Debug, Clone)]
pub struct WorkerClients(Arc<[UpstreamClient]>);

impl WorkerClients {
    /// `clients[0]` off the workers, `clients[n]` on worker `n`.
    ///
    /// # Panics
    ///
    /// When `clients` is empty.
    pub fn new(clients: Vec<UpstreamClient>) -> Self {
        assert!(!clients.is_empty(), "at least the client off the workers");
        Self(clients.into())
    }

    /// The client of the thread that calls this.
    pub fn current(&self) -> &UpstreamClient {
        let worker = sluice_listener::workers::current();
        &self.0[worker % self.0.len()]
    }
}

/// How the endpoints of one backend are reached.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The pooled clients for the backend's protocol and TLS settings.
    pub client: WorkerClients,
    /// Cleartext HTTP/1.1: requests other than upgrades go over the endpoint's own
    /// [`Connections`] rather than `client`.
    pub direct: bool,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// Where endpoint names are looked up.
    pub dns: DnsCache,
    /// The clients for upgrade requests: over TLS, ones that offer only HTTP/1.1 by
    /// ALPN (an upgrade cannot cross HTTP/2); otherwise `client`.
    pub upgrade_client: WorkerClients,
    /// `https` when the backend has TLS, else `http`.
    pub scheme: http::uri::Scheme,
    /// The `Host` every request carries (a backend by URL); `None`: the client's.
    pub host: Option<http::HeaderValue>,
    /// The credential header set in place of the caller's (its value marked
    /// sensitive).
    pub auth: Option<(http::HeaderName, http::HeaderValue)>,
}

impl Upstream {
    /// How `backend` is reached with `client` (and `upgrade_client` for upgrades), its
    /// connections opened within `connect_timeout`, names looked up through `dns`.
    pub fn new(
        backend: &sluice_api::table::BackendTarget,
        client: WorkerClients,
        upgrade_client: WorkerClients,
        connect_timeout: Duration,
        dns: DnsCache,
    ) -> Self {
        Self {
            client,
            upgrade_client,
            direct: backend.tls.is_none()
                && backend.protocol == sluice_api::table::BackendProtocol::Http1,
            connect_timeout,
            dns,
            scheme: if backend.tls.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            host: backend
                .host
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok()),
            // `validate` checked that the value is a header value.
            auth: backend
                .auth
                .as_ref()
                .and_then(|a| Some((a.header.clone(), a.header_value().ok()?))),
        }
    }

    /// The URI of `path_and_query` on the endpoint at `authority`.
    pub fn uri(
        &self,
        authority: &http::uri::Authority,
        path_and_query: &http::uri::PathAndQuery,
    ) -> http::Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(path_and_query.clone());
        // A scheme, an authority and a path always make a URI.
        http::Uri::from_parts(parts).unwrap_or_default()
    }
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
    /// The client certificates the pool requires, if it does.
    pub client_certs: Option<Arc<crate::auth::client_cert::ClientCertAuth>>,
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

impl PoolRuntime {
    /// Requests in flight on endpoint `i` (on its slots, in every table that holds it).
    pub fn endpoint_in_flight(&self, i: usize) -> u64 {
        self.load.get(i).map_or(0, |l| l.in_flight())
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

    /// Requests in flight over the capacity of the live endpoints (the sum of their
    /// `maxConcurrency`); `None` when an endpoint has no limit, or none is live.
    pub fn utilisation(&self) -> Option<f64> {
        let capacity = self.capacity()?;
        Some(self.metrics.in_flight.get() as f64 / capacity as f64)
    }

    /// The sum of the `maxConcurrency` of the live endpoints; `None` when an endpoint
    /// has no limit, or none is live.
    pub fn capacity(&self) -> Option<u64> {
        let now = self.now();
        let mut capacity = 0u64;
        for (i, e) in self.endpoints.iter().enumerate() {
            if !self.alive(i, now, None, &[]) {
                continue;
            }
            capacity += u64::from(e.max_concurrency?.get());
        }
        (capacity > 0).then_some(capacity)
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
