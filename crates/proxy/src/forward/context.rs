//! What the proxy knows about one request as it goes through the phases: the
//! [`RequestCtx`] from arrival, and from routing on the [`Serving`] pool.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::time::Instant;

use crate::access_log::LimitRecord;
use crate::auth::client_cert::Transport;
use crate::body::BodyStats;
use crate::identity::Caller;
use crate::limits::{RateOutcome, Subject, TokenStats};
use crate::pool::{PickRequest, PoolRuntime};
use crate::store::Runtime;
use crate::trace::{AttemptSpan, TraceContext};

/// One request's state, filled in phase by phase.
#[derive(Debug)]
pub(super) struct RequestCtx {
    /// When the request arrived: every timeout counts from here.
    pub start: Instant,
    /// The wall-clock time it arrived, for the access log.
    pub arrived: SystemTime,
    /// The request's W3C trace context.
    pub trace: TraceContext,
    /// Method, host and path, kept for the access log while it is on.
    pub line: Option<RequestLine>,
    /// `ok`, `anonymous` or the reason authentication refused, once admitted or not.
    pub auth: Option<&'static str>,
    /// What came of the client's request body.
    pub body: Arc<BodyStats>,
    /// Time spent waiting for an endpoint.
    pub queue_wait: Duration,
    /// The pool the request was routed to, when it fell back from it.
    pub fallback_from: Option<String>,
    /// The last attempt: its endpoint (index in the serving pool) and the agent's
    /// status, and how many attempts came before it.
    pub upstream: UpstreamLog,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client: the peer, or what trusted proxies report in `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// The capability the request names, if any.
    pub capability: Option<String>,
    /// How the request came: over TLS or not, with the client's certificates.
    pub transport: Transport,
    /// The identified caller; `None` for an anonymous request.
    pub caller: Option<Caller>,
    /// What the rate limits added: response headers and token reservations.
    pub rate: RateOutcome,
    /// The dry-run policy that would have refused the request (for the access log).
    pub dry_run: Option<String>,
    /// The limit the `RateLimit` headers of the admitted request report (for the
    /// access log).
    pub limit: Option<LimitRecord>,
    /// The LLM tokens reserved for the request and used by it.
    pub tokens: Arc<TokenStats>,
    /// Fallback hops taken so far.
    pub fallbacks: usize,
}

/// The request line as logged.
#[derive(Debug)]
pub(super) struct RequestLine {
    pub method: String,
    pub host: Option<String>,
    pub path: String,
}

/// What the send phase did, for the access log and the spans.
#[derive(Debug, Default)]
pub(super) struct UpstreamLog {
    pub endpoint: Option<usize>,
    pub status: Option<u16>,
    pub retries: u32,
    /// Each attempt as a span, when spans are exported.
    pub attempts: Option<Vec<AttemptSpan>>,
}

impl RequestCtx {
    /// A request from `peer`, arrived now, in the trace `trace`.
    pub fn new(peer: SocketAddr, trace: TraceContext) -> Self {
        Self {
            start: Instant::now(),
            arrived: SystemTime::now(),
            trace,
            line: None,
            auth: None,
            body: Arc::default(),
            queue_wait: Duration::ZERO,
            fallback_from: None,
            upstream: UpstreamLog::default(),
            peer,
            client_ip: peer.ip(),
            capability: None,
            transport: Transport::default(),
            caller: None,
            rate: RateOutcome::default(),
            dry_run: None,
            limit: None,
            tokens: Arc::default(),
            fallbacks: 0,
        }
    }

    /// The caller's tier, when identified.
    pub fn tier(&self) -> Option<&str> {
        self.caller.as_ref().map(|c| &*c.tier)
    }

    /// What the request asks of `pool` when picking an endpoint.
    pub fn pick<'a>(&'a self, pool: &PoolRuntime, headers: &HeaderMap) -> PickRequest<'a> {
        PickRequest {
            capability: self.capability.as_deref(),
            hash: pool.hash_key(headers, self.client_ip),
            priority: pool.priority(self.tier()),
        }
    }
}

/// The pool serving a request, in the table it was found in: the table the request
/// arrived under, or a newer one it moved to while it waited.
#[derive(Debug)]
pub(super) struct Serving {
    runtime: Arc<Runtime>,
    index: usize,
    deadline: Instant,
}

impl Serving {
    /// Pool `index` of `runtime` serves the request that arrived at `start`.
    pub fn new(runtime: Arc<Runtime>, index: usize, start: Instant) -> Self {
        let deadline = start + runtime.pools[index].spec.request_timeout.get();
        Self {
            runtime,
            index,
            deadline,
        }
    }

    /// From now on pool `index` of `runtime` serves the request that arrived at
    /// `start`: its deadline becomes that pool's.
    pub fn move_to(&mut self, runtime: Arc<Runtime>, index: usize, start: Instant) {
        *self = Self::new(runtime, index, start);
    }

    /// The table the pool was found in.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The pool's index in [`Serving::runtime`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<PoolRuntime> {
        &self.runtime.pools[self.index]
    }

    /// When the request must be answered: its arrival plus the serving pool's request
    /// timeout. Queueing, attempts and a response body that is not a stream count
    /// against it.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Who the request is, for the serving pool's limits.
    pub fn subject<'a>(&'a self, ctx: &'a RequestCtx, headers: &'a HeaderMap) -> Subject<'a> {
        Subject {
            pool: self.pool().key(),
            pool_index: self.index,
            consumer: ctx.caller.as_ref().map(|c| (&*c.consumer, &*c.tier)),
            client_ip: ctx.client_ip,
            headers,
        }
    }
}
