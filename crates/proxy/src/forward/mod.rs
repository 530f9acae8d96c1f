//! The request path: one sequence of phases over a per-request context, in the spirit
//! of pingora's `ProxyHttp`.
//!
//! ```text
//! route ─► admit ─► limit ─► reserve ─► send ─► respond ─► log
//! ```
//!
//! * **route**: normalise the path, find the client address,
//!   set aside an upgrade, and pick the pool ([`crate::router`]);
//! * **admit**: check the client certificate of a pool that requires one, identify the
//!   caller and check the pool's access ([`crate::identity`]);
//! * **limit**: every rate limit of the pool at once, reading the body's
//!   `max_tokens` when a token budget needs it ([`crate::limits::request`]);
//! * **reserve** (`reserve.rs`): a slot on an endpoint, waiting in the pool's queue,
//!   following a newer table, or falling back to another pool (which is admitted and
//!   limited again by the same two phases);
//! * **send** (`retry.rs`): the request to the endpoint, and to another when the pool
//!   retries and the failure allows it; the head is cleaned once
//!   ([`crate::hygiene::upstream`]);
//! * **respond** (`respond.rs`): the agent's response streamed back under the pool's
//!   deadlines, holding the endpoint slot until the body ends;
//! * **log**: every response, the proxy's own refusals included,
//!   counted once under the pool that served it.
//!
//! Bodies are never buffered but to read `model` (a table that routes on it) or
//! `max_tokens` (a token budget), or to rewrite `model` (a backend that knows the
//! model by another name): the client's request body goes upstream as it arrives (a
//! pool with retries keeps its first 64 KiB to replay) and the agent's response
//! frames reach the client one by one.

mod context;
mod log;
mod reserve;
mod respond;
mod retry;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use self::context::{RequestCtx, RequestLine, Serving, UpstreamLog};
use crate::access_log::AccessLog;
use crate::auth::client_cert::Transport;
use crate::body::{CountedBody, MinRate, ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::hygiene::client_ip::TrustedProxies;
use crate::hygiene::path::{PathOptions, normalise_path_and_query};
use crate::hygiene::upstream::UpstreamHead;
use crate::hygiene::{host, message};
use crate::limits;
use crate::metrics::Metrics;
use crate::router;
use crate::store::{Runtime, TableStore};
use crate::trace::{SpanQueue, TraceContext};
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
    /// The least rate a request body must arrive at once it is read (`None`: no
    /// minimum).
    pub client_body_rate: Option<MinRate>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            capability_header: HeaderName::from_static(DEFAULT_CAPABILITY_HEADER),
            trusted_proxies: TrustedProxies::none(),
            path: PathOptions::default(),
            client_body_rate: Some(MinRate::default()),
        }
    }
}

/// The proxy's request handler.
#[derive(Debug, Clone)]
pub struct Forwarder {
    store: Arc<TableStore>,
    metrics: Metrics,
    config: Arc<ForwardConfig>,
    access_log: AccessLog,
    spans: Option<SpanQueue>,
}

/// What goes to the agent: the cleaned head, the body, the client's side of an
/// upgrade, and what the rate limits gave the request (settled by the response).
struct Outbound {
    head: UpstreamHead,
    body: RequestBody,
    upgrade: Option<OnUpgrade>,
    rate: limits::RateOutcome,
}

/// The parts of a routed request the later phases use.
struct Routed {
    parts: Parts,
    body: RequestBody,
    /// The `Upgrade` value and the client connection's upgrade, for an upgrade request.
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    /// The authority routing used, which the agent receives as `Host`.
    authority: Option<Authority>,
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
            access_log: AccessLog::off(),
            spans: None,
        }
    }

    /// The same forwarder, putting a span of each finished request on `queue` for an
    /// exporter.
    pub fn with_spans(mut self, queue: SpanQueue) -> Self {
        self.spans = Some(queue);
        self
    }

    /// The same forwarder, writing an access log line per request to `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        self.access_log = log;
        self
    }

    /// Handles one request from `peer`, always producing a response. The future owns
    /// its share of the forwarder, so that a server's handler returns it as it is
    /// (`move |req, peer| Arc::clone(&forwarder).handle(req, peer)`) rather than
    /// wrapping it in a future of its own, which would move it again.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future, an async block once"
    )]
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> {
        async move {
            let trace = TraceContext::from_headers(req.headers(), self.store.entropy());
            let mut ctx = RequestCtx::new(peer, trace);
            let mut serving = None;
            let result = self.proxy(&mut ctx, &mut serving, req).await;
            self.log(ctx, serving, result)
        }
    }

    /// The phases, in order; the first that refuses answers the request.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future, an async block once"
    )]
    fn proxy(
        &self,
        ctx: &mut RequestCtx,
        serving: &mut Option<Serving>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
        async move {
            let runtime = self.store.load().ok_or(ProxyError::NotReady)?;
            if self.access_log.is_on() || self.spans.is_some() {
                ctx.line = Some(self.request_line(&req));
            }
            let (index, routed) = self.route(ctx, &runtime, req).await?;
            let serving = serving.insert(Serving::new(runtime, index, ctx.start));
            let Routed {
                parts,
                body,
                upgrade,
                authority,
            } = routed;
            self.admit(ctx, serving, &parts.headers).await?;
            let body = self.limit(ctx, serving, &parts.headers, body).await?;
            let (slot, body) = self.reserve(ctx, serving, &parts.headers, body).await?;
            let (protocol, on_upgrade) = upgrade.unzip();
            let head = UpstreamHead::new(
                &parts,
                authority.as_ref(),
                ctx.peer,
                self.config
                    .trusted_proxies
                    .contains(ctx.peer.ip().to_canonical()),
                ctx.caller.as_ref(),
                protocol,
            );
            let outbound = Outbound {
                head,
                body,
                upgrade: on_upgrade,
                rate: std::mem::take(&mut ctx.rate),
            };
            let mut upstream = UpstreamLog {
                attempts: self.spans.as_ref().map(|_| Vec::new()),
                ..UpstreamLog::default()
            };
            let result = self
                .send(ctx, serving, &parts.headers, slot, outbound, &mut upstream)
                .await;
            ctx.upstream = upstream;
            result
        }
    }

    /// Route: normalises the path, reads the client address and capability, sets an
    /// upgrade aside, and finds the pool (its index in `runtime`).
    async fn route(
        &self,
        ctx: &mut RequestCtx,
        runtime: &Runtime,
        mut req: Request<Incoming>,
    ) -> Result<(usize, Routed), ProxyError> {
        message::check(req.method(), req.headers())?;
        let authority = host::request_authority(req.uri(), req.version(), req.headers())?;
        // Routing, authentication, limits and the agent all see the one normalised path.
        normalise_uri(&mut req, &self.config.path)?;
        if let Some(line) = &mut ctx.line {
            line.path = self.logged_path(req.uri());
        }
        ctx.client_ip = self
            .config
            .trusted_proxies
            .client_ip(ctx.peer.ip(), req.headers());
        ctx.transport = Transport::from_extensions(req.extensions());
        let upgrade = upgrade::take_upgrade(&mut req);
        ctx.capability = req
            .headers()
            .get(&self.config.capability_header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (parts, body) = req.into_parts();
        let body = CountedBody::new(body, ctx.body.clone(), self.config.client_body_rate);
        let (index, body) =
            router::route_request(runtime, &parts, body, ctx.capability.as_deref()).await?;
        Ok((
            index,
            Routed {
                parts,
                body,
                upgrade,
                authority,
            },
        ))
    }

    /// Admit: who is asking, and may they call the serving pool.
    async fn admit(
        &self,
        ctx: &mut RequestCtx,
        serving: &Serving,
        headers: &HeaderMap,
    ) -> Result<(), ProxyError> {
        let pool = serving.pool();
        match serving
            .runtime()
            .auth
            .admit(pool, headers, &ctx.transport)
            .await
        {
            Ok(caller) => {
                let result = if caller.is_some() { "ok" } else { "anonymous" };
                self.metrics.count_auth(result);
                ctx.auth = Some(result);
                ctx.caller = caller;
                Ok(())
            }
            Err(e) => {
                self.metrics.count_auth(e.reason());
                ctx.auth = Some(e.reason());
                Err(ProxyError::Auth(e))
            }
        }
    }

    /// Limit: every rate limit of the serving pool at once. What an admitted request
    /// gets (headers, token reservations) joins the context.
    async fn limit(
        &self,
        ctx: &mut RequestCtx,
        serving: &Serving,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<RequestBody, ProxyError> {
        let limits = &serving.runtime().limits;
        let subject = serving.subject(ctx, headers);
        let (body, outcome) = limits::check_request(limits, &subject, body).await?;
        // A fallback's limits replace the primary's, none included. What is only
        // logged moves to the context.
        ctx.dry_run = None;
        ctx.limit = None;
        if let Some(mut outcome) = outcome {
            ctx.dry_run = outcome.dry_run.take();
            ctx.limit = outcome.binding.take();
            ctx.rate.absorb(outcome);
        }
        Ok(body)
    }

    /// The request line for the access log, as received (routing replaces the path
    /// with its normalised form).
    fn request_line(&self, req: &Request<Incoming>) -> RequestLine {
        let mut host = String::new();
        let host = router::request_host(req.uri(), req.headers(), &mut host).map(str::to_owned);
        RequestLine {
            method: req.method().as_str().to_owned(),
            host,
            path: self.logged_path(req.uri()),
        }
    }

    /// The path of `uri` as logged: without its query string unless the log keeps it.
    fn logged_path(&self, uri: &Uri) -> String {
        match (self.access_log.logs_query(), uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str().to_owned(),
            _ => uri.path().to_owned(),
        }
    }
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
