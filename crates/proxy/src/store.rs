//! The routing state in force, swapped in whole when a new table arrives.
//!
//! A [`Runtime`] is built once per table: routes resolved to pool indices, a
//! [`PoolRuntime`] per pool (selector, load, health, queue), upstream clients
//! attached. Requests read it through an `ArcSwap` and never take a lock; a table that
//! fails validation is refused and the last good runtime stays. State that must outlive
//! a table (connection pools, endpoint load, health, ejections, queues) carries over.
//!
//! A pool whose compiled form did not change is not rebuilt: the new runtime shares
//! it with the old one, so a table that changes one endpoint of one pool costs the
//! proxy that pool, not all of them, and requests queued on the others keep their
//! place.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::core::Metric as _;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_api::load::PoolReport;
use sluice_api::table::upstream::{self, UpstreamTls};
use sluice_api::table::{BackendProtocol, BackendTarget, Jwt};
use sluice_api::{RouteTable, TableError};
use sluice_listener::TlsConfig;
use sluice_ratelimit::RedisBackend;

use crate::auth::api_key::ApiKeyError;
use crate::auth::client_cert::ClientCertAuth;
use crate::auth::jwks::{JwksSource, KeySet, RemoteConfig, RemoteJwks};
use crate::auth::jwt::{JwtConfig, JwtVerifier};
use crate::body::ProxyBody;
use crate::clock::{Entropy, SharedClock, TokioClock};
use crate::dns::{DEFAULT_DNS_TTL, DnsCache, Resolve, SystemResolver};
use crate::endpoint_metrics::EndpointStats;
use crate::identity::{Authenticator, DEFAULT_TIER, JwtAuth};
use crate::limits::{DEFAULT_MAX_KEYS, LimitError, LimitsContext, TableLimits};

use crate::metrics::Metrics;
use crate::pool::{
    self, Connections, EndpointHealth, HEALTH_START, Kept, PoolEnv, PoolRuntime, Upstream,
    WorkerClients,
};
use crate::top::{self, TopLimited};

/// Registers a shared [`TopLimited`] with a registry.
struct TopCollector(Arc<TopLimited>);

impl prometheus::core::Collector for TopCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

/// The pooled HTTP client used to reach agents: cleartext or TLS, names resolved
/// through the store's [`DnsCache`].
pub type UpstreamClient = Client<HttpsConnector<HttpConnector<DnsCache>>, ProxyBody>;

/// What tells one upstream client from another: a connection made for one must not
/// serve another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    connect_timeout: Duration,
    h2c: bool,
    tls: Option<UpstreamTls>,
    /// Over TLS, offer only HTTP/1.1 (for upgrades).
    http1_only: bool,
}

/// How long an idle upstream connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The routing state built from one table.
#[derive(Debug)]
pub struct Runtime {
    /// The table this runtime was built from.
    pub table: RouteTable,
    /// The pools, in the table's order; shared with the previous runtime where they
    /// did not change.
    pub pools: Vec<Arc<PoolRuntime>>,
    /// The index of each pool's fallback pool.
    fallbacks: Vec<Option<usize>>,
    by_key: HashMap<String, usize>,
    route_pool: Vec<usize>,
    /// Some route matches on the `model` of the body.
    model_routes: bool,
    /// The table's consumers.
    pub auth: Authenticator,
    /// The table's rate limits.
    pub limits: TableLimits,
    /// The CAs of every pool that requires client certificates, each once: what the
    /// TLS listeners name as hints.
    pub client_cas: Vec<CertificateDer<'static>>,
    /// When the table was put in force, on the store's clock.
    pub applied: u64,
}

impl Runtime {
    /// Whether some route matches on the `model` of a JSON body (else no body is
    /// ever read to route).
    pub fn routes_on_model(&self) -> bool {
        self.model_routes
    }

    /// The index of the pool route `index` sends to.
    pub fn pool_index_for_route(&self, index: usize) -> Option<usize> {
        self.route_pool
            .get(index)
            .copied()
            .filter(|&p| p < self.pools.len())
    }

    /// The pool route `index` sends to.
    pub fn pool_for_route(&self, index: usize) -> Option<&PoolRuntime> {
        self.pool_index_for_route(index)
            .map(|p| self.pools[p].as_ref())
    }

    /// The index of the pool with this key.
    pub fn pool_index(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The pool with this key.
    pub fn pool(&self, key: &str) -> Option<&Arc<PoolRuntime>> {
        self.pool_index(key).map(|p| &self.pools[p])
    }

    /// The index of the fallback of pool `index`.
    pub fn fallback(&self, index: usize) -> Option<usize> {
        self.fallbacks.get(index).copied().flatten()
    }

    /// Whether `pool` (of another runtime) is shared, unchanged, by this one.
    fn shares(&self, pool: &Arc<PoolRuntime>) -> bool {
        self.pool(pool.key()).is_some_and(|p| Arc::ptr_eq(p, pool))
    }
}

/// Holds the runtime in force and builds new ones.
#[derive(Debug)]
pub struct TableStore {
    current: Arc<ArcSwapOption<Runtime>>,
    clients: Mutex<HashMap<ClientKey, WorkerClients>>,
    /// How many workers serve traffic (0: none, the shared runtime does).
    workers: usize,
    dns: DnsCache,
    /// What each endpoint keeps across tables while it stays in its pool.
    kept: Mutex<HashMap<(String, String), Kept>>,
    jwks: Mutex<HashMap<String, Arc<RemoteJwks>>>,
    limits: Arc<LimitsContext>,
    env: PoolEnv,
    top: Arc<TopLimited>,
    metrics: Metrics,
    /// TLS listeners that ask for client certificates as the table's pools require.
    listeners: Mutex<Vec<TlsConfig>>,
}

/// Why [`TableStore::apply`] refused a table; the runtime in force stays.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The table breaks an invariant of the contract. Not retryable: the producer
    /// must send another table.
    #[error(transparent)]
    Invalid(#[from] TableError),
    /// A rate limit cannot be held by its limiter. Not retryable.
    #[error("rate limits: {0}")]
    Limits(#[from] LimitError),
    /// The consumers cannot be identified safely. Not retryable.
    #[error("consumers: {0}")]
    Consumers(#[from] ApiKeyError),
    /// A backend's TLS settings cannot be used. Not retryable.
    #[error("pool {pool} backend {backend}: {message}")]
    Upstream {
        /// The pool.
        pool: String,
        /// The backend's name.
        backend: String,
        /// What is wrong.
        message: String,
    },
    /// A pool's client certificate CA or subjects cannot be used. Not retryable.
    #[error("pool {pool} access.clientCertificates: {message}")]
    ClientCertificates {
        /// The pool.
        pool: String,
        /// What is wrong.
        message: String,
    },
}

/// What [`TableStore::apply`] did with a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table is now in force.
    Swapped,
    /// The table has the content of the one in force; only its version was noted.
    Unchanged,
}

/// Builds a [`TableStore`]: Redis for global limits, key bounds, and where time and
/// chance come from.
#[derive(Debug)]
pub struct StoreBuilder {
    metrics: Metrics,
    redis: Option<Arc<RedisBackend>>,
    max_keys: NonZeroUsize,
    clock: Option<SharedClock>,
    entropy: Option<Entropy>,
    top: usize,
    resolver: Arc<dyn Resolve>,
    dns_ttl: Duration,
    workers: usize,
}

impl StoreBuilder {
    /// Redis for `scope: Global` rate limits; without it they follow their failure
    /// mode as if Redis were down.
    pub fn redis(mut self, redis: Option<Arc<RedisBackend>>) -> Self {
        self.redis = redis;
        self
    }

    /// Most keys one rate limit tracks.
    pub fn max_keys(mut self, max_keys: NonZeroUsize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The clock of endpoint load, ejections, retry budgets and rate limits (default:
    /// a [`TokioClock`] made by [`StoreBuilder::build`]).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The random source of endpoint picks (default: seeded from the system).
    pub fn entropy(mut self, entropy: Entropy) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// The resolver of endpoint names (default: the system's).
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = resolver;
        self
    }

    /// How long a DNS answer for an endpoint name is used (default
    /// [`DEFAULT_DNS_TTL`]).
    pub fn dns_ttl(mut self, ttl: Duration) -> Self {
        self.dns_ttl = ttl;
        self
    }

    /// How many workers serve traffic (default 0: the shared runtime does): each gets
    /// its own pooled upstream clients.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How many of the callers limited most each policy exports by name.
    pub fn top_consumers(mut self, n: usize) -> Self {
        self.top = n;
        self
    }

    /// An empty store: not ready until the first table is applied.
    ///
    /// # Panics
    ///
    /// Never in practice: the metric definitions are fixed and valid.
    #[allow(clippy::expect_used)]
    pub fn build(self) -> TableStore {
        let clock = self.clock.unwrap_or_else(TokioClock::shared);
        let top = Arc::new(
            TopLimited::new(clock.clone(), top::DEFAULT_WINDOW, self.top)
                .expect("a fixed metric definition"),
        );
        if let Err(e) = self
            .metrics
            .registry()
            .register(Box::new(TopCollector(top.clone())))
        {
            // A second store on the same metrics: the first one's readings stand.
            tracing::warn!(error = %e, "sluice_ratelimit_top_consumers not exported");
        }
        let limits = LimitsContext::new(
            self.redis,
            self.max_keys,
            self.metrics.clone(),
            clock.clone(),
        );
        let current = Arc::new(ArcSwapOption::empty());
        if let Err(e) = self.metrics.export_endpoints(Arc::clone(&current)) {
            tracing::warn!(error = e, "sluice_endpoint_* not exported");
        }
        TableStore {
            limits: Arc::new(limits),
            current,
            clients: Mutex::new(HashMap::new()),
            workers: self.workers,
            dns: DnsCache::new(self.resolver, self.dns_ttl, clock.clone()),
            kept: Mutex::new(HashMap::new()),
            jwks: Mutex::new(HashMap::new()),
            env: PoolEnv {
                metrics: self.metrics.clone(),
                clock,
                entropy: Arc::new(self.entropy.unwrap_or_default()),
            },
            top,
            metrics: self.metrics,
            listeners: Mutex::new(Vec::new()),
        }
    }
}

impl TableStore {
    /// An empty store with the defaults of [`StoreBuilder`]: no Redis, the Tokio
    /// clock, a random source seeded from the system.
    pub fn new(metrics: Metrics) -> Self {
        Self::builder(metrics).build()
    }

    /// A builder for a store whose settings differ from the defaults.
    pub fn builder(metrics: Metrics) -> StoreBuilder {
        StoreBuilder {
            metrics,
            redis: None,
            max_keys: NonZeroUsize::new(DEFAULT_MAX_KEYS).unwrap_or(NonZeroUsize::MIN),
            clock: None,
            entropy: None,
            top: top::DEFAULT_TOP,
            resolver: Arc::new(SystemResolver),
            dns_ttl: DEFAULT_DNS_TTL,
            workers: 0,
        }
    }

    /// The clock the store's state reads.
    pub fn clock(&self) -> &SharedClock {
        &self.env.clock
    }

    /// The random source of the store's pools (and of trace and span ids).
    pub fn entropy(&self) -> &Entropy {
        &self.env.entropy
    }

    /// The callers limited most.
    pub fn top(&self) -> &TopLimited {
        &self.top
    }

    /// Sets the gauges read at scrape time: the age of the table in force and each
    /// pool's utilisation.
    pub fn refresh_gauges(&self) {
        let Some(rt) = self.load() else { return };
        let age = self.env.clock.now_nanos().saturating_sub(rt.applied);
        self.metrics.table_age.set(age as f64 / 1e9);
        self.limits.export_key_stats();
        for pool in &rt.pools {
            match pool.utilisation() {
                Some(u) => self
                    .metrics
                    .utilisation
                    .with_label_values(&[pool.key()])
                    .set(u),
                None => {
                    let _ = self.metrics.utilisation.remove_label_values(&[pool.key()]);
                }
            }
        }
    }

    /// The load of each pool of the table in force, as reported to the controller:
    /// the same gauges and histogram `/metrics` exports (`sluice_requests_in_flight`,
    /// `sluice_queue_depth`, the capacity behind `sluice_pool_utilisation`,
    /// `sluice_request_duration_seconds`). Empty before the first table.
    pub fn load_report(&self) -> Vec<PoolReport> {
        let Some(rt) = self.load() else {
            return Vec::new();
        };
        rt.pools
            .iter()
            .map(|pool| {
                let m = &pool.metrics;
                let histogram = m.duration.metric();
                let h = histogram.get_histogram();
                let mut latency: Vec<u64> = h
                    .get_bucket()
                    .iter()
                    .map(|b| b.cumulative_count())
                    .collect();
                latency.push(h.get_sample_count());
                PoolReport {
                    pool: pool.key().to_owned(),
                    in_flight: u64::try_from(m.in_flight.get()).unwrap_or(0),
                    queued: u64::try_from(m.queue_depth.get()).unwrap_or(0),
                    capacity: pool.capacity(),
                    latency,
                }
            })
            .collect()
    }

    /// The runtime in force, if any.
    pub fn load(&self) -> Option<Arc<Runtime>> {
        self.current.load_full()
    }

    /// Validates `table`, builds its runtime and puts it in force.
    ///
    /// Must be called within a Tokio runtime (health checks are spawned).
    ///
    /// # Errors
    ///
    /// The [`ApplyError`] that made the table unusable; the runtime in force stays.
    pub fn apply(&self, table: RouteTable) -> Result<Applied, ApplyError> {
        let rejected = |e: ApplyError| {
            self.metrics
                .table_updates
                .with_label_values(&["rejected"])
                .inc();
            e
        };
        table.validate().map_err(|e| rejected(e.into()))?;
        let version = i64::try_from(table.version).unwrap_or(i64::MAX);
        let previous = self.current.load_full();
        if let Some(current) = previous.as_deref()
            && current.table.revision == table.revision
        {
            self.metrics.table_version.set(version);
            return Ok(Applied::Unchanged);
        }
        let runtime = Arc::new(self.build(table, previous.as_deref()).map_err(rejected)?);
        self.current.store(Some(runtime.clone()));
        if previous
            .as_deref()
            .is_none_or(|old| old.client_cas != runtime.client_cas)
        {
            self.request_client_certificates(&runtime.client_cas);
        }
        if let Some(old) = previous {
            for pool in &old.pools {
                if !runtime.shares(pool) {
                    pool.mark_replaced();
                }
            }
            self.forget_removed(&old, &runtime);
            // Waiters queued under the old table try again with the new endpoints
            // (those of a shared pool have nothing new to try).
            for pool in &runtime.pools {
                if !old.shares(pool) {
                    pool.queue.notify_all();
                }
            }
        }
        self.metrics.table_version.set(version);
        self.metrics
            .table_updates
            .with_label_values(&["applied"])
            .inc();
        Ok(Applied::Swapped)
    }

    /// Has `tls` ask clients for a certificate whenever a pool of the table in force
    /// requires one, naming the pools' CAs, from now on and with every table that
    /// changes them.
    pub fn request_client_certificates_on(&self, tls: TlsConfig) {
        let cas = self
            .load()
            .map(|r| r.client_cas.clone())
            .unwrap_or_default();
        if let Err(e) = tls.request_client_certificates(&cas) {
            tracing::error!(error = %e, "client certificates cannot be asked for");
        }
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tls);
    }

    /// Tells every registered listener the CAs of the table in force.
    fn request_client_certificates(&self, cas: &[CertificateDer<'static>]) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for tls in listeners.iter() {
            match tls.request_client_certificates(cas) {
                Ok(()) => tracing::info!(
                    cas = cas.len(),
                    "TLS listener: client certificate authorities changed"
                ),
                Err(e) => tracing::error!(error = %e, "client certificates cannot be asked for"),
            }
        }
    }

    /// Drops the health state and counters of endpoints that left, so that neither
    /// grows with every rollout. (Their series went with the table that held them.)
    fn forget_removed(&self, old: &Runtime, new: &Runtime) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        for pool in &old.pools {
            if new.shares(pool) {
                continue;
            }
            let successor = new.pool(pool.key());
            for e in &pool.endpoints {
                if successor.is_some_and(|s| s.endpoints.iter().any(|n| n.address == e.address)) {
                    continue;
                }
                kept.remove(&(pool.key().to_owned(), e.address.clone()));
            }
        }
    }

    fn build(&self, table: RouteTable, previous: Option<&Runtime>) -> Result<Runtime, ApplyError> {
        // What can refuse the table comes first, before pools start their checks.
        let auth = Authenticator::new(&table.consumers)?;
        let pool_keys: Vec<String> = table.pools.iter().map(|p| p.key.clone()).collect();
        let limits = self.limits.build(&table.policies, &pool_keys)?;
        let clients = table
            .pools
            .iter()
            .map(|p| {
                p.backends
                    .iter()
                    .map(|b| {
                        let client = |http1_only| {
                            self.client(p.connect_timeout.get(), b, http1_only)
                                .map_err(|message| ApplyError::Upstream {
                                    pool: p.key.clone(),
                                    backend: b.name.clone(),
                                    message,
                                })
                        };
                        let upgrades = client(b.tls.is_some())?;
                        Ok::<_, ApplyError>(Arc::new(Upstream::new(
                            b,
                            client(false)?,
                            upgrades,
                            p.connect_timeout.get(),
                            self.dns.clone(),
                        )))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client_certs = table
            .pools
            .iter()
            .map(|p| {
                p.access
                    .client_certificates
                    .as_ref()
                    .map(|c| {
                        ClientCertAuth::new(c).map(Arc::new).map_err(|message| {
                            ApplyError::ClientCertificates {
                                pool: p.key.clone(),
                                message,
                            }
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut client_cas: Vec<CertificateDer<'static>> = Vec::new();
        for ca in client_certs.iter().flatten().flat_map(|c| c.roots()) {
            if !client_cas.contains(ca) {
                client_cas.push(ca.clone());
            }
        }
        let pools: Vec<Arc<PoolRuntime>> = table
            .pools
            .iter()
            .zip(&clients)
            .zip(client_certs)
            .map(|((p, clients), client_certs)| {
                let before = previous.and_then(|r| r.pool(&p.key));
                if let Some(same) = before.filter(|b| b.spec == *p) {
                    return same.clone();
                }
                let kept = |address: &str| self.kept(&p.key, address);
                let mut pool = pool::build(p, before.map(Arc::as_ref), clients, &kept, &self.env);
                pool.jwt = p.jwt.as_ref().and_then(|j| self.jwt_auth(&p.key, j));
                pool.client_certs = client_certs;
                let pool = Arc::new(pool);
                pool::start_health_checks(&pool);
                pool
            })
            .collect();
        let by_key: HashMap<String, usize> = table
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.clone(), i))
            .collect();
        let fallbacks = table
            .pools
            .iter()
            .map(|p| p.fallback.as_deref().and_then(|f| by_key.get(f).copied()))
            .collect();
        // `validate` checked every route names a pool.
        let route_pool = table
            .routes
            .iter()
            .map(|r| by_key.get(r.pool.as_str()).copied().unwrap_or(usize::MAX))
            .collect();
        let model_routes = table.routes.iter().any(|r| r.model.is_some());
        Ok(Runtime {
            applied: self.env.clock.now_nanos(),
            model_routes,
            auth,
            limits,
            client_cas,
            table,
            pools,
            fallbacks,
            by_key,
            route_pool,
        })
    }

    /// The JWT verifier of a pool. One that cannot be built is logged and left out:
    /// the pool then accepts no token (a token is looked up as an API key and fails).
    fn jwt_auth(&self, pool: &str, jwt: &Jwt) -> Option<Arc<JwtAuth>> {
        let config = JwtConfig {
            issuers: vec![jwt.issuer.clone()],
            audiences: jwt.audiences.clone(),
            leeway: jwt.leeway,
            require_exp: true,
            consumer_claim: jwt.consumer_claim.clone(),
            tier_claim: jwt.tier_claim.clone(),
            default_tier: jwt
                .default_tier
                .clone()
                .unwrap_or_else(|| DEFAULT_TIER.to_owned()),
            hmac: None,
        };
        let verifier = JwtVerifier::new(config)
            .map_err(|e| tracing::error!(pool, error = %e, "JWT settings refused; the pool accepts no token"))
            .ok()?;
        let keys = match (&jwt.jwks, &jwt.jwks_uri) {
            (Some(inline), _) => KeySet::from_json(inline.as_bytes())
                .map(|k| JwksSource::Static(Arc::new(k)))
                .map_err(|e| tracing::error!(pool, error = %e, "inline JWKS refused; the pool accepts no token"))
                .ok()?,
            (None, Some(url)) => JwksSource::Remote(self.remote_jwks(pool, url)?),
            (None, None) => return None,
        };
        Some(Arc::new(JwtAuth { verifier, keys }))
    }

    /// One cache per JWKS URL, kept across tables.
    fn remote_jwks(&self, pool: &str, url: &str) -> Option<Arc<RemoteJwks>> {
        let mut cache = self.jwks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(remote) = cache.get(url) {
            return Some(remote.clone());
        }
        let uri = url
            .parse()
            .map_err(|e| tracing::error!(pool, url, error = %e, "JWKS URL refused"))
            .ok()?;
        let remote = RemoteJwks::new(RemoteConfig::new(uri))
            .map_err(|e| tracing::error!(pool, url, error = %e, "JWKS URL refused; the pool accepts no token"))
            .ok()?;
        let remote = Arc::new(remote);
        cache.insert(url.to_owned(), remote.clone());
        Some(remote)
    }

    /// The health and counters of the endpoint at `address` of `pool`: those it had
    /// in the table before, or new ones.
    fn kept(&self, pool: &str, address: &str) -> Kept {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.entry((pool.to_owned(), address.to_owned()))
            .or_insert_with(|| {
                (
                    Arc::new(EndpointHealth::new(HEALTH_START)),
                    Arc::new(EndpointStats::default()),
                    Arc::new(Connections::new(self.workers)),
                )
            })
            .clone()
    }

    /// Pooled clients per connect timeout, protocol and TLS settings (one per worker
    /// and one for the rest), kept across tables so that a new table does not drop the
    /// idle connections of the old one.
    fn client(
        &self,
        connect_timeout: Duration,
        backend: &BackendTarget,
        http1_only: bool,
    ) -> Result<WorkerClients, String> {
        let key = ClientKey {
            connect_timeout,
            h2c: backend.protocol == BackendProtocol::H2c,
            tls: backend.tls.clone(),
            http1_only,
        };
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Self::new_clients(&key, &self.dns, self.workers + 1)?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// `count` pooled clients (each with its own pool) with the settings of `key`,
    /// resolving names through `dns`; the TLS configuration is built once for all.
    fn new_clients(key: &ClientKey, dns: &DnsCache, count: usize) -> Result<WorkerClients, String> {
        let mut connector = HttpConnector::new_with_resolver(dns.clone());
        connector.set_connect_timeout(Some(key.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let https = match &key.tls {
            // HTTP/2 when the agent offers it by ALPN, else HTTP/1.1.
            Some(tls) => {
                let config = upstream::client_config(tls, system_roots)?;
                let builder = HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only();
                let builder = match tls.server_name.as_deref().map(ServerName::try_from) {
                    Some(Ok(name)) => builder
                        .with_server_name_resolver(FixedServerNameResolver::new(name.to_owned())),
                    Some(Err(_)) => return Err("the TLS server name is not valid".into()),
                    None => builder,
                };
                if key.http1_only {
                    builder.enable_http1().wrap_connector(connector)
                } else {
                    builder.enable_all_versions().wrap_connector(connector)
                }
            }
            None => {
                if key.h2c {
                    builder.http2_only(true);
                }
                // Cleartext only: the TLS configuration is never used.
                let config =
                    upstream::client_config(&UpstreamTls::default(), RootCertStore::empty)?;
                HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_all_versions()
                    .wrap_connector(connector)
            }
        };
        Ok(WorkerClients::new(
            (0..count).map(|_| builder.build(https.clone())).collect(),
        ))
    }
}

/// The system's trust roots, loaded once; what cannot be loaded is logged.
fn system_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::warn!(%error, "a system root certificate could not be loaded");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
            if ignored > 0 || added == 0 {
                tracing::warn!(added, ignored, "system root certificates");
            }
            roots
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use sluice_api::table::{Endpoint, Route};

    use super::*;
    use crate::endpoint_metrics::EndpointText;
    use crate::test_tables::one_pool;

    /// A table with pools `d/p` (from [`one_pool`]) and `d/q`, `q_endpoint` in `d/q`.
    fn two_pools(q_endpoint: &str, version: u64) -> RouteTable {
        let mut t = one_pool("/p", version);
        let mut q = t.pools[0].clone();
        q.key = "d/q".into();
        q.backends[0].endpoints = vec![Endpoint::new(q_endpoint)];
        t.pools.push(q);
        t.routes.push(Route::new("d/q", "/q"));
        let mut t = RouteTable::new(t.routes, t.pools);
        t.version = version;
        t
    }

    #[tokio::test]
    async fn a_new_table_rebuilds_only_the_pools_that_changed() {
        let store = TableStore::new(Metrics::new());
        store.apply(two_pools("127.0.0.1:10", 1)).unwrap();
        let first = store.load().unwrap();
        assert_eq!(
            store.apply(two_pools("127.0.0.1:11", 2)).unwrap(),
            Applied::Swapped
        );
        let second = store.load().unwrap();

        let (p1, p2) = (first.pool("d/p").unwrap(), second.pool("d/p").unwrap());
        assert!(Arc::ptr_eq(p1, p2), "unchanged pool d/p is shared");
        let (q1, q2) = (first.pool("d/q").unwrap(), second.pool("d/q").unwrap());
        assert!(!Arc::ptr_eq(q1, q2), "changed pool d/q is rebuilt");
        assert_eq!(q2.endpoints[0].address, "127.0.0.1:11");
        assert_eq!(second.pool_index("d/q"), Some(1));
    }

    #[tokio::test]
    async fn a_shared_pool_keeps_its_health_checker_and_a_rebuilt_one_gets_a_new_one() {
        let checked = |q_endpoint: &str, p_endpoint: &str, version: u64| {
            let mut t = two_pools(q_endpoint, version);
            t.pools[0].backends[0].endpoints = vec![Endpoint::new(p_endpoint)];
            t.pools[0].health_check = Some(sluice_api::table::HealthCheck {
                path: "/healthz".into(),
                interval: sluice_api::table::Millis::at_least_one(3_600_000),
                timeout: sluice_api::table::Millis::MIN,
                healthy_threshold: std::num::NonZeroU32::MIN,
                unhealthy_threshold: std::num::NonZeroU32::MIN,
            });
            let mut t = RouteTable::new(t.routes, t.pools);
            t.version = version;
            t
        };
        let store = TableStore::new(Metrics::new());
        store
            .apply(checked("127.0.0.1:10", "127.0.0.1:9", 1))
            .unwrap();
        let first = store.load().unwrap();
        let id = first.pool("d/p").unwrap().checker_id();
        assert!(id.is_some(), "a pool with health checks has a checker");
        assert_eq!(first.pool("d/q").unwrap().checker_id(), None);

        // d/q changes: d/p is shared, its checker not restarted.
        store
            .apply(checked("127.0.0.1:11", "127.0.0.1:9", 2))
            .unwrap();
        assert_eq!(store.load().unwrap().pool("d/p").unwrap().checker_id(), id);

        // d/p changes: a new checker; the old pool's is stopped.
        store
            .apply(checked("127.0.0.1:11", "127.0.0.1:8", 3))
            .unwrap();
        let rebuilt = store.load().unwrap().pool("d/p").unwrap().checker_id();
        assert!(rebuilt.is_some() && rebuilt != id);
        assert_eq!(first.pool("d/p").unwrap().checker_id(), None);
    }

    #[tokio::test]
    async fn a_removed_pool_loses_its_endpoint_series_and_a_kept_one_keeps_them() {
        let metrics = Metrics::new();
        let store = TableStore::new(metrics.clone());
        store.apply(two_pools("127.0.0.1:10", 1)).unwrap();
        let first = store.load().unwrap();
        first.pool("d/q").unwrap().endpoints[0]
            .stats
            .count_request();
        store.apply(one_pool("/p", 2)).unwrap();

        assert!(store.load().unwrap().pool("d/q").is_none());
        let text = metrics.render();
        let series = |name: &str, pool: &str| {
            let pool = format!("pool=\"{pool}\"");
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&pool))
                .count()
        };
        assert_eq!(series("sluice_endpoint_requests_total", "d/q"), 0);
        assert_eq!(series("sluice_endpoint_requests_total", "d/p"), 1);
    }

    /// The endpoint families as the Prometheus client would write them from its own
    /// objects: the oracle for [`EndpointText`].
    fn endpoint_families_by_the_client(rt: &Runtime) -> String {
        use crate::metrics::LATENCY_BUCKETS;
        use prometheus::proto::{
            Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
        };
        use prometheus::{Encoder, TextEncoder};
        let descs = crate::endpoint_metrics::descs().unwrap();
        let mut families: Vec<MetricFamily> = descs
            .iter()
            .map(|d| {
                let mut f = MetricFamily::default();
                f.set_name(d.fq_name.clone());
                f.set_help(d.help.clone());
                f.set_field_type(match d.fq_name.as_str() {
                    "sluice_endpoint_requests_total" => MetricType::COUNTER,
                    "sluice_endpoint_response_seconds" => MetricType::HISTOGRAM,
                    _ => MetricType::GAUGE,
                });
                f
            })
            .collect();
        for f in &mut families {
            for pool in &rt.pools {
                for (i, e) in pool.endpoints.iter().enumerate() {
                    let mut m = Metric::default();
                    let pair = |name: &str, value: &str| {
                        let mut l = LabelPair::default();
                        l.set_name(name.to_owned());
                        l.set_value(value.to_owned());
                        l
                    };
                    m.set_label(vec![pair("endpoint", &e.address), pair("pool", pool.key())]);
                    let gauge = |value: u64| {
                        let mut g = Gauge::default();
                        g.set_value(value as f64);
                        g
                    };
                    match f.name() {
                        "sluice_endpoint_connections" => {
                            m.set_gauge(gauge(e.connections.counts().0 as u64));
                        }
                        "sluice_endpoint_connections_parked" => {
                            m.set_gauge(gauge(e.connections.counts().1 as u64));
                        }
                        "sluice_endpoint_healthy" => {
                            m.set_gauge(gauge(u64::from(e.health.reported())));
                        }
                        "sluice_endpoint_in_flight" => {
                            m.set_gauge(gauge(pool.endpoint_in_flight(i)))
                        }
                        "sluice_endpoint_requests_total" => {
                            let mut c = Counter::default();
                            c.set_value(e.stats.requests() as f64);
                            m.set_counter(c);
                        }
                        _ => {
                            let cumulative = e.stats.cumulative();
                            let mut h = Histogram::default();
                            h.set_bucket(
                                LATENCY_BUCKETS
                                    .iter()
                                    .zip(cumulative)
                                    .map(|(&bound, count)| {
                                        let mut b = Bucket::default();
                                        b.set_upper_bound(bound);
                                        b.set_cumulative_count(count);
                                        b
                                    })
                                    .collect(),
                            );
                            h.set_sample_count(cumulative[LATENCY_BUCKETS.len()]);
                            h.set_sample_sum(e.stats.sum_seconds());
                            m.set_histogram(h);
                        }
                    }
                    f.mut_metric().push(m);
                }
            }
        }
        let mut text = Vec::new();
        TextEncoder::new().encode(&families, &mut text).unwrap();
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn endpoint_series_are_written_as_the_prometheus_client_writes_them_in_any_chunks() {
        let metrics = Metrics::new();
        let store = TableStore::new(metrics.clone());
        store.apply(two_pools("127.0.0.1:10", 1)).unwrap();
        let rt = store.load().unwrap();
        let stats = &rt.pool("d/p").unwrap().endpoints[0].stats;
        stats.count_request();
        stats.observe(Duration::from_millis(30));
        stats.observe(Duration::from_secs(400));

        let expected = endpoint_families_by_the_client(&rt);
        assert!(expected.contains("le=\"+Inf\"} 2\n"), "{expected}");
        let mut whole = Vec::new();
        let mut text = EndpointText::new(Arc::clone(&rt)).unwrap();
        assert!(!text.write(&mut whole, usize::MAX));
        assert_eq!(String::from_utf8(whole).unwrap(), expected);

        // A chunk at a time: with a limit of one byte, one endpoint's series (or a
        // family's header) per chunk.
        let mut chunked = Vec::new();
        let mut text = EndpointText::new(Arc::clone(&rt)).unwrap();
        let mut chunks = 0;
        loop {
            let mut chunk = Vec::new();
            let more = text.write(&mut chunk, 1);
            assert!(chunk.len() < 2048, "{}", chunk.len());
            chunked.extend(chunk);
            chunks += 1;
            if !more {
                break;
            }
        }
        assert!(
            chunks >= 2 * 4,
            "{chunks} chunks for 2 endpoints in 4 families"
        );
        assert_eq!(String::from_utf8(chunked).unwrap(), expected);

        // And in the scrape, where the names sort among the registry's families.
        let scrape = metrics.render();
        assert!(scrape.contains(&expected), "{scrape}");
        let families: Vec<&str> = scrape
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut sorted = families.clone();
        sorted.sort_unstable();
        assert_eq!(families, sorted);
    }
}
