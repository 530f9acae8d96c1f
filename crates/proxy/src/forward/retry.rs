//! Send: the request to the reserved endpoint and, when the pool retries and the
//! failure allows it, to another endpoint not tried yet, within the retry budget and
//! never replaying a body that was partly sent and not kept.
//!
//! What may be retried: a connection that could not be made (nothing was sent); a
//! response with a status the pool retries (the agent answered, and said try again);
//! a connection that broke after the request went out only for an idempotent method
//! (RFC 9110 section 9.2.2): a POST that reached an agent is never sent twice. A
//! timeout is never retried: the agent may be working on the request. A client whose
//! own body broke gets 400, and the endpoint is not blamed for it.
//!
//! An answer whose status the pool's `fallback.statuses` names (an LLM provider's 429)
//! sends the request on to the fallback pool, under the same conditions as a retry.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sluice_api::table::RetryPolicy;
use sluice_balance::Outcome;
use tokio::time::Instant;

use super::context::{RequestCtx, Serving, UpstreamLog};
use super::respond::respond;
use super::{Forwarder, Outbound};
use crate::body::{BodyStats, CountedBody, ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::hygiene::upstream::UpstreamHead;
use crate::limits::MAX_BUFFERED_BODY;
use crate::pool::{PickRequest, PoolRuntime, SendError, Slot};
use crate::replay::{DEFAULT_REPLAY_CAP, ReplayBody};
use crate::trace::{AttemptSpan, SpanId, TraceContext};

/// Why an attempt did not give the answer: a response with a retried status, or an
/// error that another endpoint may not have.
enum Failure {
    Status(Response<Incoming>),
    Error(ProxyError),
}

/// How one attempt ended.
enum Attempt {
    /// The agent's answer, to pass on.
    Answered(Response<Incoming>),
    /// A failure another endpoint may not have.
    Failed(Failure),
    /// A failure that ends the request.
    Fatal(ProxyError),
}

impl Forwarder {
    /// Sends the request, retrying as the serving pool allows and sending it on to
    /// the pool's fallback on the statuses it names, and returns the response to
    /// stream back.
    pub(super) async fn send(
        &self,
        ctx: &mut RequestCtx,
        serving: &mut Serving,
        headers: &HeaderMap,
        mut slot: Slot,
        outbound: Outbound,
        log: &mut UpstreamLog,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Outbound {
            mut head,
            body,
            upgrade,
            mut rate,
        } = outbound;
        let pool = serving.pool();
        let keep = pool.spec.retries.as_ref().is_some_and(|r| r.attempts > 0)
            || !pool.spec.fallback_statuses.is_empty();
        let mut source = Source::new(body, keep && upgrade.is_none());
        loop {
            // An error drops `rate`: its token reservation goes back.
            let (resp, answered) = self
                .attempts(
                    ctx,
                    serving,
                    headers,
                    slot,
                    &mut head,
                    &mut source,
                    upgrade.is_some(),
                    log,
                )
                .await?;
            let status = resp.status().as_u16();
            if upgrade.is_none()
                && serving.pool().spec.falls_back_on_status(status)
                && let Some((fallback, bytes)) = self
                    .status_fallback(ctx, serving, headers, &mut source)
                    .await
            {
                // The agent's answer is dropped and its endpoint freed before the
                // request waits for the fallback. The fallback must admit the caller
                // and its limits apply; the primary's charges go back.
                drop((resp, answered));
                rate.give_back();
                let body = RequestBody::Buffered(bytes);
                let body = self
                    .fall_back(ctx, serving, headers, fallback, body)
                    .await?;
                let (next, body) = self.reserve(ctx, serving, headers, body).await?;
                rate = std::mem::take(&mut ctx.rate);
                source = Source::new(body, true);
                slot = next;
                continue;
            }
            return Ok(respond(ctx, serving, resp, answered, upgrade, rate));
        }
    }

    /// Attempts on the serving pool: the first endpoint's, and others' as the pool
    /// retries. The answer to pass on, with the slot of the endpoint that gave it.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        ctx: &RequestCtx,
        serving: &Serving,
        headers: &HeaderMap,
        mut slot: Slot,
        head: &mut UpstreamHead,
        source: &mut Source,
        upgrade: bool,
        log: &mut UpstreamLog,
    ) -> Result<(Response<Incoming>, Slot), ProxyError> {
        let pool = serving.pool();
        let pick = ctx.pick(pool, headers);
        let retry = pool.spec.retries.as_ref().filter(|_| !upgrade);
        let attempts = retry.map_or(0, |r| r.attempts);
        if let Some(budget) = &pool.retry_budget {
            budget.deposit(pool.now());
        }
        let mut tried = Vec::new();
        loop {
            log.endpoint = Some(slot.index);
            let span = SpanId::random(self.store.entropy());
            let to = Target {
                pool,
                slot: &slot,
                deadline: serving.deadline(),
            };
            let sent = log.attempts.as_ref().map(|_| SystemTime::now());
            let outcome = attempt(&to, head, &ctx.trace, span, source, retry, &ctx.body).await;
            if let Attempt::Answered(resp) | Attempt::Failed(Failure::Status(resp)) = &outcome {
                log.status = Some(resp.status().as_u16());
            }
            if let (Some(spans), Some(start)) = (log.attempts.as_mut(), sent) {
                let (status, error) = match &outcome {
                    Attempt::Answered(r) | Attempt::Failed(Failure::Status(r)) => {
                        (Some(r.status().as_u16()), None)
                    }
                    Attempt::Failed(Failure::Error(e)) | Attempt::Fatal(e) => {
                        (None, Some(e.reason()))
                    }
                };
                spans.push(AttemptSpan {
                    span,
                    endpoint: pool.endpoints[slot.index].address.clone(),
                    start,
                    end: SystemTime::now(),
                    status,
                    error,
                });
            }
            let failure = match outcome {
                Attempt::Answered(resp) => return Ok((resp, slot)),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Failed(failure) => failure,
            };
            tried.push(slot.index);
            let attempts_left = tried.len() <= attempts as usize;
            match self.next_attempt(pool, &pick, &tried, attempts_left, source) {
                Some(next) => {
                    slot = next;
                    log.retries += 1;
                }
                None => {
                    return match failure {
                        Failure::Status(resp) => Ok((resp, slot)),
                        // Nothing reached an agent that answered.
                        Failure::Error(e) => Err(e),
                    };
                }
            }
        }
    }

    /// Whether an agent's answer with one of the pool's `fallback.statuses` sends the
    /// request on to the pool's fallback: there is one that admits the caller, the
    /// pool's retry budget allows it, and the body can be sent again (read in full
    /// now, within the bound of bodies the proxy reads). The fallback's index and the
    /// body; `None`: the answer stands.
    async fn status_fallback(
        &self,
        ctx: &RequestCtx,
        serving: &Serving,
        headers: &HeaderMap,
        source: &mut Source,
    ) -> Option<(usize, Bytes)> {
        let pool = serving.pool();
        let fallback = self
            .fallback(serving, ctx.fallbacks, headers, &ctx.transport)
            .await?;
        let count = |result: &str| self.count_retry(pool, result);
        if !source.replayable() {
            count("not_replayable");
            return None;
        }
        if pool
            .retry_budget
            .as_ref()
            .is_some_and(|b| !b.withdraw(pool.now()))
        {
            count("budget_exhausted");
            return None;
        }
        let Some(bytes) = source.read_all(MAX_BUFFERED_BODY).await else {
            count("not_replayable");
            return None;
        };
        count("fallback");
        Some((fallback, bytes))
    }

    /// Counts a retry or a fallback of `pool` with its `result`
    /// (`sluice_retries_total`).
    fn count_retry(&self, pool: &PoolRuntime, result: &str) {
        self.metrics
            .retries
            .with_label_values(&[pool.key(), result])
            .inc();
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
    ) -> Option<Slot> {
        if !attempts_left {
            return None;
        }
        let count = |result: &str| self.count_retry(pool, result);
        if !source.replayable() {
            count("not_replayable");
            return None;
        }
        // Checked before an endpoint is reserved, so that a refused retry is not
        // counted as a request to an endpoint; charged once one is.
        let budget = pool.retry_budget.as_ref();
        if budget.is_some_and(|b| b.available(pool.now()) == 0) {
            count("budget_exhausted");
            return None;
        }
        let Some(next) = pool.try_acquire(pick, tried) else {
            count("no_endpoint");
            return None;
        };
        if budget.is_some_and(|b| !b.withdraw(pool.now())) {
            // Another request took the last retry meanwhile; `next` is released.
            count("budget_exhausted");
            return None;
        }
        count("sent");
        Some(next)
    }
}

/// Where an attempt goes: a slot on an endpoint of `pool`, before `deadline`.
struct Target<'a> {
    pool: &'a PoolRuntime,
    slot: &'a Slot,
    deadline: Instant,
}

/// One attempt, the span `span` of the request's trace: the outcome is recorded for
/// outlier detection, and the latency of an answer in the endpoint's estimate and
/// histogram.
async fn attempt(
    to: &Target<'_>,
    head: &mut UpstreamHead,
    trace: &TraceContext,
    span: SpanId,
    source: &mut Source,
    retry: Option<&RetryPolicy>,
    client_body: &BodyStats,
) -> Attempt {
    let Target {
        pool,
        slot,
        deadline,
    } = *to;
    let endpoint = &pool.endpoints[slot.index];
    let Some((body, length)) = source.next(endpoint.model_rewrite.as_deref()) else {
        // Unreachable: a retry is only chosen while the body can be replayed.
        return Attempt::Fatal(ProxyError::Upstream {
            endpoint: endpoint.address.clone(),
            message: "the request body cannot be sent again".into(),
        });
    };
    let Some(authority) = endpoint.authority.as_ref() else {
        return Attempt::Fatal(ProxyError::BadRequest(format!(
            "cannot build the upstream URI: the endpoint {} is no host:port",
            endpoint.address
        )));
    };
    // A body sent as it streams in goes once: no other attempt needs the head.
    let last = matches!(source, Source::Once(_));
    let Some(mut upstream) = head.request(authority, &endpoint.upstream, body, last) else {
        // Unreachable: only a body sent once is sent with the head's last request.
        return Attempt::Fatal(ProxyError::Upstream {
            endpoint: endpoint.address.clone(),
            message: "the request head was sent already".into(),
        });
    };
    trace.inject(upstream.headers_mut(), span);
    if let Some(length) = length {
        // A body read in full (its `model` perhaps rewritten) goes with its length,
        // even where the client's came chunked.
        let headers = upstream.headers_mut();
        headers.remove(http::header::TRANSFER_ENCODING);
        headers.insert(http::header::CONTENT_LENGTH, length.into());
    }
    let started = Instant::now();
    let first_byte = pool
        .spec
        .first_byte_timeout
        .map_or(deadline, |t| deadline.min(started + t.get()));
    let via = &endpoint.upstream;
    let send = async {
        if head.direct(via) {
            let connections = &endpoint.connections;
            connections
                .send(authority, &via.dns, via.connect_timeout, upstream, started)
                .await
        } else if head.is_upgrade() {
            let client = via.upgrade_client.current();
            client.request(upstream).await.map_err(SendError::from)
        } else {
            let client = via.client.current();
            client.request(upstream).await.map_err(SendError::from)
        }
    };
    match tokio::time::timeout_at(first_byte, send).await {
        Ok(Ok(resp)) => {
            pool.connected(slot.index);
            let status = resp.status();
            let outcome = if status.is_server_error() {
                Outcome::Failure5xx
            } else {
                Outcome::Success
            };
            pool.record_outcome(slot.index, outcome);
            let latency = started.elapsed();
            endpoint.stats.observe(latency);
            if retry.is_some_and(|r| r.statuses.contains(&status.as_u16())) {
                return Attempt::Failed(Failure::Status(resp));
            }
            slot.record_latency(latency, pool.now());
            Attempt::Answered(resp)
        }
        Ok(Err(e)) if e.is_connect() => {
            pool.connect_failed(slot.index, &e);
            pool.record_outcome(slot.index, Outcome::ConnectFailure);
            // Nothing was sent: another endpoint may have a certificate that passes.
            let error = match tls_failure(&e) {
                Some(reason) => ProxyError::UpstreamTls {
                    endpoint: endpoint.address.clone(),
                    reason,
                },
                None => ProxyError::Connect {
                    endpoint: endpoint.address.clone(),
                },
            };
            Attempt::Failed(Failure::Error(error))
        }
        Ok(Err(e)) => {
            let message =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
            if client_body.too_slow() {
                return Attempt::Fatal(ProxyError::ClientBodyTooSlow);
            }
            if client_body.failed() {
                // The client's body broke: not the agent's failure, and not retried.
                return Attempt::Fatal(ProxyError::ClientBody { message });
            }
            pool.record_outcome(slot.index, Outcome::Failure5xx);
            let error = ProxyError::Upstream {
                endpoint: endpoint.address.clone(),
                message,
            };
            if head.idempotent() {
                Attempt::Failed(Failure::Error(error))
            } else {
                // The request went out: the agent may have acted on it.
                Attempt::Fatal(error)
            }
        }
        Err(_) => {
            pool.record_outcome(slot.index, Outcome::Failure5xx);
            let request = pool.spec.request_timeout;
            let timeout = pool
                .spec
                .first_byte_timeout
                .map_or(request, |fb| fb.min(request));
            Attempt::Fatal(ProxyError::Timeout {
                endpoint: endpoint.address.clone(),
                timeout_ms: timeout.as_millis(),
            })
        }
    }
}

/// What rustls said, when a connection failed in its TLS handshake (a certificate
/// expired, for another name or from an unknown CA; no protocol in common).
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // `io::Error::source` skips the error it wraps: look inside.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Where attempts get the request body from.
enum Source {
    /// Sent once, as it streams in.
    Once(Option<CountedBody>),
    /// Kept (up to a cap) so that a retry can send it again.
    Replay(ReplayBody<CountedBody>),
    /// Read in full before sending (to find `max_tokens`).
    Buffered(Bytes),
}

impl Source {
    /// The body of a request that `retries` or not.
    fn new(body: RequestBody, retries: bool) -> Self {
        match body {
            RequestBody::Buffered(bytes) => Source::Buffered(bytes),
            RequestBody::Streaming(body) if retries => {
                Source::Replay(ReplayBody::new(body, DEFAULT_REPLAY_CAP))
            }
            RequestBody::Streaming(body) => Source::Once(Some(body)),
        }
    }

    /// The body of the next attempt, with its `model` set to `rewrite` when given
    /// (only a body read in full can be), and the length of a body read in full.
    fn next(&mut self, rewrite: Option<&str>) -> Option<(ProxyBody, Option<u64>)> {
        match self {
            Source::Once(body) => body.take().map(|b| (b.map_err(Into::into).boxed(), None)),
            Source::Replay(r) => r.attempt().map(|b| (BodyExt::boxed(b), None)),
            Source::Buffered(b) => {
                let bytes = rewrite
                    .and_then(|name| crate::model::rewrite_model(b, name))
                    .unwrap_or_else(|| b.clone());
                let length = bytes.len() as u64;
                Some((
                    Full::new(bytes).map_err(|never| match never {}).boxed(),
                    Some(length),
                ))
            }
        }
    }

    /// The whole body, when it can be sent again: kept in full, or kept in part with
    /// the rest still to come, read now up to `limit` bytes.
    async fn read_all(&mut self, limit: usize) -> Option<Bytes> {
        match self {
            Source::Once(_) => None,
            Source::Buffered(b) => Some(b.clone()),
            Source::Replay(r) => {
                let body = r.attempt()?;
                http_body_util::Limited::new(body, limit)
                    .collect()
                    .await
                    .ok()
                    .map(http_body_util::Collected::to_bytes)
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
