//! Forwarding: route the request, reserve an endpoint (queueing or falling back when
//! the pool is full or down), send it with the pooled client, retry when allowed, and
//! stream the response back.
//!
//! Bodies are never buffered: the client's request body goes upstream as it arrives
//! (a pool with retries keeps its first 64 KiB to replay) and the agent's response
//! frames reach the client one by one. Hop-by-hop headers, including those named in
//! `Connection`, are removed in both directions; `X-Forwarded-For` and
//! `X-Forwarded-Proto` are set; WebSocket upgrades pass through.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sluice_balance::Outcome;
use tokio::time::Instant;

use crate::body::{BodyEnd, BodyWatch, ProxyBody, TimeoutKind, WatchedBody};
use crate::error::ProxyError;
use crate::hygiene::client_ip::{TrustedProxies, X_FORWARDED_FOR};
use crate::hygiene::headers::{
    Identity, prepare_upstream, strip_credentials, strip_hop_by_hop, strip_sluice_headers,
};
use crate::hygiene::path::{PathOptions, normalise_path_and_query};
use crate::identity::Caller;
use crate::limits::{
    MAX_BUFFERED_BODY, Subject, TokenSettlement, UsageWatch, Verdict, requested_tokens,
};
use crate::metrics::{Metrics, NO_POOL, PoolMetrics, code_class};
use crate::pool::{DEFAULT_IDLE_TIMEOUT, PickRequest, PoolRuntime, Slot, Unavailable};
use crate::replay::{DEFAULT_REPLAY_CAP, ReplayBody};
use crate::router::{self, RouteRequest};
use crate::store::{Runtime, TableStore};
use crate::upgrade;

/// The header a request names a capability in, unless configured otherwise.
pub const DEFAULT_CAPABILITY_HEADER: &str = "x-agent-capability";

/// Settings of the request path that come from the command line, not the table.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The header a request names a capability in.
    pub capability_header: HeaderName,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Path normalisation options.
    pub path: PathOptions,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            capability_header: HeaderName::from_static(DEFAULT_CAPABILITY_HEADER),
            trusted_proxies: TrustedProxies::none(),
            path: PathOptions::default(),
        }
    }
}

/// The proxy's request handler.
#[derive(Debug, Clone)]
pub struct Forwarder {
    store: Arc<TableStore>,
    metrics: Metrics,
    config: Arc<ForwardConfig>,
}

impl Forwarder {
    /// A forwarder reading the routing state from `store`.
    pub fn new(store: Arc<TableStore>, metrics: Metrics) -> Self {
        Self::with_config(store, metrics, ForwardConfig::default())
    }

    /// A forwarder with settings other than the defaults.
    pub fn with_config(store: Arc<TableStore>, metrics: Metrics, config: ForwardConfig) -> Self {
        Self {
            store,
            metrics,
            config: Arc::new(config),
        }
    }

    /// Handles one request from `peer`, always producing a response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let start = Instant::now();
        let Some(runtime) = self.store.load() else {
            return self.answer_error(None, ProxyError::NotReady, start);
        };
        match self.forward(&runtime, req, peer, start).await {
            (Some(p), Ok(resp)) => {
                runtime.pools[p]
                    .metrics
                    .observe(resp.status(), start.elapsed().as_secs_f64());
                resp
            }
            (pool, Ok(resp)) => {
                debug_assert!(pool.is_none());
                self.observe_unpooled(resp.status(), start);
                resp
            }
            (pool, Err(e)) => self.answer_error(pool.map(|p| &runtime.pools[p].metrics), e, start),
        }
    }

    fn answer_error(
        &self,
        pool: Option<&PoolMetrics>,
        e: ProxyError,
        start: Instant,
    ) -> Response<ProxyBody> {
        tracing::debug!(error = %e, "request answered by the proxy");
        self.metrics.errors.with_label_values(&[e.reason()]).inc();
        let resp = e.into_response();
        match pool {
            Some(m) => m.observe(resp.status(), start.elapsed().as_secs_f64()),
            None => self.observe_unpooled(resp.status(), start),
        }
        resp
    }

    fn observe_unpooled(&self, status: http::StatusCode, start: Instant) {
        self.metrics
            .requests
            .with_label_values(&[NO_POOL, code_class(status)])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[NO_POOL])
            .observe(start.elapsed().as_secs_f64());
    }

    /// Routes and forwards; returns the index of the pool that answered, if any.
    async fn forward(
        &self,
        runtime: &Runtime,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        start: Instant,
    ) -> (Option<usize>, Result<Response<ProxyBody>, ProxyError>) {
        // Routing, authentication and limits all see the one normalised path.
        if let Err(e) = normalise_uri(&mut req, &self.config.path) {
            return (None, Err(e));
        }
        let client_ip = self
            .config
            .trusted_proxies
            .client_ip(peer.ip(), req.headers());
        let upgrade = upgrade::take_upgrade(&mut req);
        let capability = req
            .headers()
            .get(&self.config.capability_header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let pool_index = {
            let mut host_buf = String::new();
            let host = router::request_host(req.uri(), req.headers(), &mut host_buf);
            let route_req = RouteRequest {
                host,
                path: req.uri().path(),
                headers: req.headers(),
            };
            let mut candidates = router::matching(&runtime.table.routes, &route_req)
                .filter_map(|i| runtime.pool_index_for_route(i))
                .peekable();
            if candidates.peek().is_none() {
                return (
                    None,
                    Err(ProxyError::NoRoute {
                        path: req.uri().path().to_owned(),
                    }),
                );
            }
            match &capability {
                None => candidates.next(),
                Some(c) => candidates.find(|&p| runtime.pools[p].has_capability(c)),
            }
        };
        let Some(mut p) = pool_index else {
            let path = req.uri().path().to_owned();
            let capability = capability.unwrap_or_default();
            return (None, Err(ProxyError::NoCapability { path, capability }));
        };

        // Who is asking, and may they call this pool. (A fallback pool is asked again
        // before it serves, and its own rate limits apply too.)
        let caller = match runtime
            .auth
            .admit(
                &runtime.pools[p].spec,
                runtime.pools[p].jwt.as_ref(),
                req.headers(),
            )
            .await
        {
            Ok(caller) => {
                self.metrics
                    .count_auth(if caller.is_some() { "ok" } else { "anonymous" });
                caller
            }
            Err(e) => {
                self.metrics.count_auth(e.reason());
                return (Some(p), Err(ProxyError::Auth(e)));
            }
        };
        let tier = caller.as_ref().map(|c| c.tier.as_str());

        // Whether the request may go: every rate limit of the pool, at once.
        let (parts, incoming) = req.into_parts();
        let checked = check_limits(
            runtime,
            p,
            caller.as_ref(),
            client_ip,
            &parts.headers,
            RequestBody::Streaming(incoming),
        )
        .await;
        let (mut body, mut rate) = match checked {
            Ok((body, rate)) => (body, rate.unwrap_or_default()),
            Err(e) => return (Some(p), Err(e)),
        };

        // Reserve an endpoint: in this pool, waiting in its queue if it is full, or in
        // its fallback chain when it has no live endpoint.
        let deadline = start + runtime.pools[p].spec.request_timeout.get();
        let mut hops = 0;
        // The newer table the request moved to while it waited, if any.
        let mut newer: Option<Arc<Runtime>> = None;
        let slot = loop {
            let rt = newer.as_deref().unwrap_or(runtime);
            let pool = &rt.pools[p];
            let pick = PickRequest {
                capability: capability.as_deref(),
                hash: pool.hash_key(&parts.headers, client_ip),
                priority: pool.priority(tier),
            };
            match pool.acquire(&pick, deadline).await {
                Ok(slot) => break slot,
                Err(Unavailable::Queue(e)) => return (index_in(runtime, rt, p), Err(e)),
                Err(Unavailable::Replaced) => {
                    // A new table came while the request waited: wait on in its pool
                    // of the same key.
                    let key = pool.key().to_owned();
                    let moved = self.store.load().and_then(|next| {
                        let q = next.pool_index(&key)?;
                        Some((next, q))
                    });
                    match moved {
                        Some((next, q)) => {
                            p = q;
                            newer = Some(next);
                        }
                        None => {
                            return (
                                index_in(runtime, rt, p),
                                Err(ProxyError::NoEndpoints {
                                    pool: key,
                                    capability: capability.clone(),
                                }),
                            );
                        }
                    }
                }
                Err(Unavailable::NoCapacity) => {
                    // A pool unchanged by a newer table is shared with it and not
                    // marked replaced: a request that waited in it follows the newer
                    // table now, whose fallback and consumers may differ.
                    let key = pool.key();
                    if let Some((next, q)) = self
                        .store
                        .load()
                        .filter(|next| !std::ptr::eq(next.as_ref(), rt))
                        .and_then(|next| next.pool_index(key).map(|q| (next, q)))
                    {
                        p = q;
                        newer = Some(next);
                        continue;
                    }
                    // A fallback serves only the callers it would admit itself.
                    let next = match rt.fallback(p) {
                        Some(f) if hops < rt.pools.len() => rt
                            .auth
                            .admit(&rt.pools[f].spec, rt.pools[f].jwt.as_ref(), &parts.headers)
                            .await
                            .is_ok()
                            .then_some(f),
                        _ => None,
                    };
                    let Some(f) = next else {
                        let pool_key = pool.key().to_owned();
                        return (
                            index_in(runtime, rt, p),
                            Err(ProxyError::NoEndpoints {
                                pool: pool_key,
                                capability: capability.clone(),
                            }),
                        );
                    };
                    // The fallback's own rate limits apply too: fallback traffic must
                    // not overrun the pool it lands on.
                    let checked =
                        check_limits(rt, f, caller.as_ref(), client_ip, &parts.headers, body).await;
                    match checked {
                        Ok((checked_body, extra)) => {
                            body = checked_body;
                            if let Some(extra) = extra {
                                rate.headers = extra.headers;
                                rate.tokens.absorb(extra.tokens);
                            }
                        }
                        Err(e) => return (index_in(runtime, rt, f), Err(e)),
                    }
                    self.metrics
                        .fallbacks
                        .with_label_values(&[pool.key(), rt.pools[f].key()])
                        .inc();
                    hops += 1;
                    p = f;
                }
            }
        };
        let rt = newer.as_deref().unwrap_or(runtime);
        let pool = &rt.pools[p];
        let pick = PickRequest {
            capability: capability.as_deref(),
            hash: pool.hash_key(&parts.headers, client_ip),
            priority: pool.priority(tier),
        };
        let request_deadline = start + pool.spec.request_timeout.get();
        let template = Template::new(
            &parts,
            peer,
            self.config
                .trusted_proxies
                .contains(peer.ip().to_canonical()),
            caller.as_ref(),
            upgrade.as_ref().map(|(protocol, _)| protocol.clone()),
        );
        let result = self
            .send_with_retries(
                pool,
                template,
                body,
                slot,
                upgrade.map(|(_, on)| on),
                &pick,
                request_deadline,
                start,
                rate,
            )
            .await;
        (index_in(runtime, rt, p), result)
    }

    /// Sends the request to the reserved endpoint, and again to another one when the
    /// pool retries and the failure allows it.
    #[allow(clippy::too_many_arguments)]
    async fn send_with_retries(
        &self,
        pool: &PoolRuntime,
        template: Template,
        body: RequestBody,
        first_slot: Slot,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        pick: &PickRequest<'_>,
        deadline: Instant,
        start: Instant,
        rate: RateOutcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let retry = pool
            .spec
            .retries
            .as_ref()
            .filter(|_| client_upgrade.is_none());
        let attempts = retry.map_or(0, |r| r.attempts);
        if let Some(budget) = &pool.retry_budget {
            budget.deposit(pool.now());
        }
        let mut source = match body {
            RequestBody::Buffered(bytes) => Source::Buffered(bytes),
            RequestBody::Streaming(body) if attempts > 0 => {
                Source::Replay(ReplayBody::new(body, DEFAULT_REPLAY_CAP))
            }
            RequestBody::Streaming(body) => Source::Once(Some(body)),
        };
        let mut slot = first_slot;
        let mut tried = Vec::new();
        let mut attempt = 0;
        loop {
            let endpoint = &pool.endpoints[slot.index];
            let Some(body) = source.next() else {
                // Unreachable: a retry is only chosen while the body can be replayed.
                return Err(ProxyError::Upstream {
                    endpoint: endpoint.address.clone(),
                    message: "the request body cannot be sent again".into(),
                });
            };
            let upstream = template.request(&endpoint.address, body)?;
            let attempt_start = Instant::now();
            let first_byte = pool
                .spec
                .first_byte_timeout
                .map_or(deadline, |t| deadline.min(attempt_start + t.get()));
            let failure = match tokio::time::timeout_at(
                first_byte,
                endpoint.client.request(upstream),
            )
            .await
            {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let outcome = if status.is_server_error() {
                        Outcome::Failure5xx
                    } else {
                        Outcome::Success
                    };
                    pool.record_outcome(slot.index, outcome);
                    if !retry.is_some_and(|r| r.statuses.contains(&status.as_u16())) {
                        slot.record_latency(attempt_start.elapsed(), pool.now());
                        return Ok(respond(
                            pool,
                            resp,
                            slot,
                            client_upgrade,
                            deadline,
                            start,
                            rate,
                        ));
                    }
                    Failure::Status(resp)
                }
                Ok(Err(e)) if e.is_connect() => {
                    tracing::debug!(error = ?e, endpoint = %endpoint.address, "connect failed");
                    pool.record_outcome(slot.index, Outcome::ConnectFailure);
                    Failure::Error(ProxyError::Connect {
                        endpoint: endpoint.address.clone(),
                    })
                }
                Ok(Err(e)) => {
                    pool.record_outcome(slot.index, Outcome::Failure5xx);
                    let message = std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), ToString::to_string);
                    Failure::Error(ProxyError::Upstream {
                        endpoint: endpoint.address.clone(),
                        message,
                    })
                }
                Err(_) => {
                    // The agent may be working on it: a timeout is never retried.
                    pool.record_outcome(slot.index, Outcome::Failure5xx);
                    let request = pool.spec.request_timeout;
                    let timeout_ms = pool
                        .spec
                        .first_byte_timeout
                        .map_or(request, |fb| fb.min(request))
                        .as_millis();
                    // `rate` is dropped: its token reservation goes back.
                    return Err(ProxyError::Timeout {
                        endpoint: endpoint.address.clone(),
                        timeout_ms,
                    });
                }
            };
            tried.push(slot.index);
            match self.next_attempt(pool, pick, &tried, attempt < attempts, &source) {
                Ok(next) => {
                    attempt += 1;
                    slot = next;
                }
                Err(()) => {
                    return match failure {
                        Failure::Status(resp) => Ok(respond(
                            pool,
                            resp,
                            slot,
                            client_upgrade,
                            deadline,
                            start,
                            rate,
                        )),
                        // Nothing reached an agent that answered: dropping `rate`
                        // gives the token reservation back.
                        Failure::Error(e) => Err(e),
                    };
                }
            }
        }
    }

    /// A slot for a retry, on an endpoint not tried yet, when the attempts, the body
    /// and the retry budget allow one.
    fn next_attempt(
        &self,
        pool: &PoolRuntime,
        pick: &PickRequest<'_>,
        tried: &[usize],
        attempts_left: bool,
        source: &Source,
    ) -> Result<Slot, ()> {
        if !attempts_left {
            return Err(());
        }
        let count = |result: &str| {
            self.metrics
                .retries
                .with_label_values(&[pool.key(), result])
                .inc()
        };
        if !source.replayable() {
            count("not_replayable");
            return Err(());
        }
        // Checked before an endpoint is reserved, so that a refused retry is not
        // counted as a request to an endpoint; charged once one is.
        let budget = pool.retry_budget.as_ref();
        if budget.is_some_and(|b| b.available(pool.now()) == 0) {
            count("budget_exhausted");
            return Err(());
        }
        let Some(next) = pool.try_acquire(pick, tried) else {
            count("no_endpoint");
            return Err(());
        };
        if budget.is_some_and(|b| !b.withdraw(pool.now())) {
            // Another request took the last retry meanwhile; `next` is released.
            count("budget_exhausted");
            return Err(());
        }
        count("sent");
        Ok(next)
    }
}

/// The index in `runtime` (whose pool metrics the caller records) of pool `p` of
/// `rt`, the table the request ended up in.
fn index_in(runtime: &Runtime, rt: &Runtime, p: usize) -> Option<usize> {
    if std::ptr::eq(runtime, rt) {
        return Some(p);
    }
    let key = rt.pools.get(p)?.key();
    runtime.pool_index(key)
}

/// Replaces the request's path with its normalised form.
fn normalise_uri<B>(req: &mut Request<B>, options: &PathOptions) -> Result<(), ProxyError> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(());
    };
    let normalised = match normalise_path_and_query(pq.as_str(), options)? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(n) => n,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        normalised
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("normalised path: {e}")))?,
    );
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("normalised path: {e}")))?;
    Ok(())
}

/// The request body: streamed, or read in full (bounded) when a limit needs it.
enum RequestBody {
    Streaming(Incoming),
    Buffered(Bytes),
}

impl RequestBody {
    /// Reads the body in full, up to `limit` bytes.
    async fn into_bytes(self, limit: usize) -> Result<Bytes, ProxyError> {
        match self {
            RequestBody::Buffered(bytes) => Ok(bytes),
            RequestBody::Streaming(incoming) => http_body_util::Limited::new(incoming, limit)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ProxyError::BodyTooLarge { limit }
                    } else {
                        ProxyError::BadRequest(format!("reading the request body: {e}"))
                    }
                }),
        }
    }
}

/// What the rate limits add to an admitted request: response headers and token
/// reservations to settle.
#[derive(Debug, Default)]
struct RateOutcome {
    headers: Vec<(HeaderName, HeaderValue)>,
    tokens: TokenSettlement,
}

/// Checks the rate limits of pool `p` of `rt` for this caller, all at once. A token
/// budget needs the body's `max_tokens`: a JSON body is then read (and handed back
/// buffered). `None` when the pool has no limits.
async fn check_limits(
    rt: &Runtime,
    p: usize,
    caller: Option<&Caller>,
    client_ip: std::net::IpAddr,
    headers: &HeaderMap,
    mut body: RequestBody,
) -> Result<(RequestBody, Option<RateOutcome>), ProxyError> {
    let Some(needs) = rt.limits.needs(p) else {
        return Ok((body, None));
    };
    let mut max_tokens = None;
    if needs.tokens && is_json(headers) {
        let bytes = body.into_bytes(MAX_BUFFERED_BODY).await?;
        max_tokens = requested_tokens(&bytes);
        body = RequestBody::Buffered(bytes);
    }
    let subject = Subject {
        pool: rt.pools[p].key(),
        pool_index: p,
        consumer: caller.map(|c| (c.consumer.as_str(), c.tier.as_str())),
        client_ip,
        headers,
    };
    match rt.limits.check(&subject, max_tokens).await {
        Verdict::Admitted { headers, tokens } => Ok((body, Some(RateOutcome { headers, tokens }))),
        Verdict::Limited {
            headers,
            policy,
            tier,
            retry_after,
        } => Err(ProxyError::RateLimited {
            policy,
            tier,
            retry_after,
            headers,
        }),
        Verdict::Unavailable {
            policy,
            retry_after,
        } => Err(ProxyError::LimitsUnavailable {
            policy,
            retry_after,
        }),
    }
}

/// Whether a request body is JSON (where `max_tokens` may be).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// Why an attempt did not give the answer: a response with a retryable status, or an
/// error.
enum Failure {
    Status(Response<Incoming>),
    Error(ProxyError),
}

/// Where attempts get the request body from.
enum Source {
    /// Sent once, as it streams in.
    Once(Option<Incoming>),
    /// Kept (up to a cap) so that a retry can send it again.
    Replay(ReplayBody<Incoming>),
    /// Read in full before sending (to find `max_tokens`).
    Buffered(Bytes),
}

impl Source {
    fn next(&mut self) -> Option<ProxyBody> {
        match self {
            Source::Once(body) => body.take().map(|b| b.map_err(Into::into).boxed()),
            Source::Replay(r) => r.attempt().map(BodyExt::boxed),
            Source::Buffered(b) => {
                Some(Full::new(b.clone()).map_err(|never| match never {}).boxed())
            }
        }
    }

    fn replayable(&self) -> bool {
        match self {
            Source::Once(_) => false,
            Source::Replay(r) => r.attempt().is_some(),
            Source::Buffered(_) => true,
        }
    }
}

/// Turns the agent's response into the client's: hop-by-hop headers removed, the body
/// streamed under the pool's deadlines, the endpoint slot held until the body ends, and
/// an upgraded connection spliced through (holding the slot until it closes).
fn respond(
    pool: &PoolRuntime,
    mut resp: Response<Incoming>,
    slot: Slot,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    deadline: Instant,
    start: Instant,
    rate: RateOutcome,
) -> Response<ProxyBody> {
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let protocol = resp.headers().get(header::UPGRADE).cloned();
    let mut slot = Some(slot);
    if let (true, Some(client), Some(protocol)) = (switching, client_upgrade, protocol.clone()) {
        // The upgraded connection, not the (empty) response body, holds the slot.
        upgrade::splice(client, hyper::upgrade::on(&mut resp), protocol, slot.take());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(protocol)) = (switching, protocol) {
        upgrade::restore_upgrade_headers(&mut parts.headers, protocol);
    }
    let total = if is_stream(&parts.headers) {
        pool.spec.stream_max_duration.map(|d| start + d.get())
    } else {
        Some(deadline)
    };
    let idle = pool
        .spec
        .idle_timeout
        .map_or(DEFAULT_IDLE_TIMEOUT, |t| t.get());
    for (name, value) in rate.headers {
        parts.headers.insert(name, value);
    }
    let usage =
        (!rate.tokens.is_empty()).then(|| UsageWatch::new(rate.tokens, is_stream(&parts.headers)));
    let watch = (
        SlotWatch {
            slot,
            cut: pool.metrics.body_cut.clone(),
        },
        usage,
    );
    Response::from_parts(
        parts,
        WatchedBody::new(body, total, Some(idle), watch).boxed(),
    )
}

/// The parts of the client's request every attempt copies.
struct Template {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Template {
    /// Copies the client's request head for agents: hop-by-hop and client-sent
    /// `x-sluice-*` headers removed, the caller's identity set, the gateway's
    /// credentials removed, `X-Forwarded-For` extended (or, from an untrusted peer,
    /// replaced) and `X-Forwarded-Proto` set.
    fn new(
        parts: &http::request::Parts,
        peer: SocketAddr,
        peer_trusted: bool,
        caller: Option<&Caller>,
        upgrade: Option<HeaderValue>,
    ) -> Self {
        let mut headers = parts.headers.clone();
        // HTTP/2 requests carry the host in the authority: keep it for the agent.
        if !headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, v);
        }
        let identity = caller.map(|c| Identity {
            consumer: &c.consumer,
            tier: &c.tier,
        });
        if prepare_upstream(&mut headers, identity.as_ref()).is_err() {
            // Names and tiers were validated when the table was built; an identity
            // that still cannot be a header value is not passed on.
            strip_sluice_headers(&mut headers);
        }
        if caller.is_some() {
            strip_credentials(&mut headers);
        }
        if !peer_trusted {
            // What an untrusted peer claims about the path it came by is not passed on.
            for name in [X_FORWARDED_FOR, "forwarded", "x-real-ip"] {
                headers.remove(name);
            }
        }
        append_forwarded_for(&mut headers, peer);
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        if let Some(protocol) = upgrade {
            upgrade::restore_upgrade_headers(&mut headers, protocol);
        }
        Self {
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
            headers,
        }
    }

    fn request(&self, endpoint: &str, body: ProxyBody) -> Result<Request<ProxyBody>, ProxyError> {
        let uri: Uri = format!("http://{endpoint}{}", self.path)
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("cannot build the upstream URI: {e}")))?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

/// Appends `peer` to `X-Forwarded-For`, joining the lines the client sent into one list
/// (a list split over several lines means the same as one line, RFC 9110 section 5.3).
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let mut value = String::new();
    for prior in headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        value.push_str(prior);
        value.push_str(", ");
    }
    value.push_str(&peer.ip().to_canonical().to_string());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
}

/// Holds an endpoint slot until the response body ends, and counts cut bodies.
struct SlotWatch {
    slot: Option<Slot>,
    /// `sluice_body_cut_total` for `total`, `idle` and `upstream`.
    cut: [prometheus::IntCounter; 3],
}

impl BodyWatch for SlotWatch {
    fn on_end(&mut self, end: BodyEnd) {
        match end {
            BodyEnd::TimedOut(TimeoutKind::Total) => self.cut[0].inc(),
            BodyEnd::TimedOut(TimeoutKind::Idle) => self.cut[1].inc(),
            BodyEnd::Failed => self.cut[2].inc(),
            BodyEnd::Complete | BodyEnd::Dropped => {}
        }
        self.slot.take();
    }
}

/// Whether a response streams (server-sent events, NDJSON, gRPC): such a body is not
/// cut by the whole-request timeout, only by the stream's own limit and the idle
/// timeout.
fn is_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("text/event-stream")
                || ct.starts_with("application/x-ndjson")
                || ct.starts_with("application/grpc")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_joins_every_line_then_appends_the_peer() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.1, 198.51.100.2".parse().expect("value"),
        );
        h.append("x-forwarded-for", "203.0.113.7".parse().expect("value"));
        append_forwarded_for(&mut h, "10.0.0.1:80".parse().expect("addr"));
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["198.51.100.1, 198.51.100.2, 203.0.113.7, 10.0.0.1"]);
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let peer: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().expect("addr");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        append_forwarded_for(&mut h, "127.0.0.1:1".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    }

    #[test]
    fn streams_are_recognised_by_content_type() {
        let mut h = HeaderMap::new();
        assert!(!is_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8".parse().expect("v"),
        );
        assert!(is_stream(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().expect("v"));
        assert!(!is_stream(&h));
    }
}
