//! Log: every response, the proxy's own refusals included, is counted once under the
//! pool that served it; its body is watched to its end, when the duration to the end
//! of the body, the time to its first byte and its size are recorded and the access
//! log line is written.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Forwarder;
use super::context::{RequestCtx, Serving};
use crate::access_log::{AccessLog, Completion, LimitRecord, Record};
use crate::body::{BodyEnd, BodyStats, BodyWatch, ProxyBody, TimeoutKind, WatchedBody};
use crate::error::ProxyError;
use crate::limits::{TokenStats, WARNING_HEADER};

// Built at compile time: a name given as a string is parsed on every lookup.
const WARNING: http::HeaderName = http::HeaderName::from_static(WARNING_HEADER);
use crate::metrics::{NO_POOL, code_class};
use crate::pool::PoolRuntime;
use crate::top::Event;
use crate::trace::{RequestSpan, SpanQueue};

impl Forwarder {
    /// The proxy's refusal becomes its response; the response is counted, and its
    /// body watched to its end for the duration, size and access log line.
    pub(super) fn log(
        &self,
        mut ctx: RequestCtx,
        serving: Option<Serving>,
        result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Response<ProxyBody> {
        let mut refusal = None;
        let resp = result.unwrap_or_else(|e| {
            tracing::debug!(error = %e, trace_id = %ctx.trace.trace_id, "request answered by the proxy");
            self.metrics.errors.with_label_values(&[e.reason()]).inc();
            refusal = Some(RefusalLog::of(&e));
            e.into_response(&ctx.trace.trace_id)
        });
        self.note_limited(&ctx, refusal.as_ref(), resp.headers());
        let status = resp.status();
        let elapsed = ctx.start.elapsed().as_secs_f64();
        let pool = serving.as_ref().map(|s| s.pool().clone());
        match &pool {
            Some(p) => p.metrics.observe(status, elapsed),
            None => {
                self.metrics
                    .requests
                    .with_label_values(&[NO_POOL, code_class(status)])
                    .inc();
                self.metrics
                    .duration
                    .with_label_values(&[NO_POOL])
                    .observe(elapsed);
            }
        }
        let attempts = ctx.upstream.attempts.take().unwrap_or_default();
        let span = self.spans.as_ref().map(|queue| {
            let span = span(&ctx, pool.as_deref(), status.as_u16(), refusal.as_ref());
            Box::new((queue.clone(), RequestSpan { attempts, ..span }))
        });
        let record = self
            .access_log
            .is_on()
            .then(|| Box::new(record(&ctx, pool.as_deref(), status.as_u16(), refusal)));
        // The tokens of a request an agent took: known in part now, in full when its
        // body ends.
        let llm_tokens = pool.as_ref().and_then(|p| {
            ctx.tokens.counts().reserved?;
            let tier = ctx.tier().unwrap_or_default();
            let counter = |kind| {
                self.metrics
                    .llm_tokens
                    .with_label_values(&[p.key(), tier, kind])
            };
            Some([counter("reserved"), counter("used")])
        });
        let watch = LogWatch {
            start: ctx.start,
            first_byte: None,
            bytes: 0,
            pool,
            record,
            span,
            log: self.access_log.clone(),
            body_in: ctx.body,
            tokens: ctx.tokens,
            llm_tokens,
        };
        resp.map(|body| WatchedBody::new(body, None, None, watch).boxed())
    }
}

impl Forwarder {
    /// Counts a caller refused by a rate limit, or admitted past a soft limit, among
    /// the callers limited most.
    fn note_limited(&self, ctx: &RequestCtx, refusal: Option<&RefusalLog>, headers: &HeaderMap) {
        let limited = refusal.and_then(|r| r.limit.as_ref());
        let warned = headers
            .get(&WARNING)
            .and_then(|v| v.to_str().ok())
            .and_then(warned_policy);
        if limited.is_none() && warned.is_none() {
            return;
        }
        let caller = match &ctx.caller {
            Some(c) => c.consumer.to_string(),
            None => format!("anonymous ({})", ctx.client_ip),
        };
        let top = self.store.top();
        if let Some(l) = limited {
            top.record(&l.policy, &caller, Event::Refused, Some(0));
        }
        if let Some(policy) = warned {
            top.record(policy, &caller, Event::Warned, None);
        }
    }
}

/// The policy of a soft-limit warning header, `"POLICY/TIER";q=…;reached=…` (a policy
/// key is `namespace/name`).
fn warned_policy(value: &str) -> Option<&str> {
    let quoted = value.split(';').next()?.trim();
    let name = quoted.strip_prefix('"')?.strip_suffix('"')?;
    name.rsplit_once('/').map(|(policy, _tier)| policy)
}

/// What the log keeps of a refusal.
struct RefusalLog {
    reason: &'static str,
    limit: Option<LimitRecord>,
}

impl RefusalLog {
    fn of(e: &ProxyError) -> Self {
        let limit = match e {
            ProxyError::RateLimited { policy, tier, .. } => Some(LimitRecord {
                policy: policy.clone(),
                tier: tier.clone(),
                remaining: Some(0),
            }),
            _ => None,
        };
        Self {
            reason: e.reason(),
            limit,
        }
    }
}

/// The access log record of a request whose response head is ready; the body's end
/// completes it.
fn record(
    ctx: &RequestCtx,
    pool: Option<&PoolRuntime>,
    status: u16,
    refusal: Option<RefusalLog>,
) -> Record {
    let (method, host, path) = match &ctx.line {
        Some(l) => (l.method.clone(), l.host.clone(), l.path.clone()),
        None => (String::new(), None, String::new()),
    };
    let endpoint = pool
        .zip(ctx.upstream.endpoint)
        .and_then(|(p, i)| p.endpoints.get(i).map(|e| e.address.clone()));
    let (reason, ratelimit) = match refusal {
        Some(r) => (Some(r.reason), r.limit),
        None => (None, ctx.limit.clone()),
    };
    Record {
        time: ctx.arrived,
        trace_id: ctx.trace.trace_id,
        client: ctx.client_ip,
        method,
        host,
        path,
        pool: pool.map(|p| p.key().to_owned()),
        endpoint,
        consumer: ctx.caller.as_ref().map(|c| c.consumer.to_string()),
        tier: ctx.caller.as_ref().map(|c| c.tier.to_string()),
        auth: ctx.auth,
        ratelimit,
        dry_run: ctx.dry_run.clone(),
        queue_ms: ctx.queue_wait,
        retries: ctx.upstream.retries,
        fallback_from: ctx.fallback_from.clone(),
        upstream_status: ctx.upstream.status,
        status,
        reason,
        bytes_in: 0,
        bytes_out: 0,
        ttfb_ms: None,
        duration_ms: Duration::ZERO,
        completion: Completion::Complete,
        tokens_reserved: None,
        tokens_used: None,
    }
}

/// The span of a request whose response head is ready; the body's end completes it.
fn span(
    ctx: &RequestCtx,
    pool: Option<&PoolRuntime>,
    status: u16,
    refusal: Option<&RefusalLog>,
) -> RequestSpan {
    let (method, path) = ctx
        .line
        .as_ref()
        .map_or(("", ""), |l| (l.method.as_str(), l.path.as_str()));
    let mut attributes = vec![
        ("http.request.method", method.to_owned()),
        ("url.path", path.to_owned()),
        ("client.address", ctx.client_ip.to_string()),
    ];
    if let Some(p) = pool {
        attributes.push(("sluice.pool", p.key().to_owned()));
    }
    if let Some(c) = &ctx.caller {
        attributes.push(("sluice.consumer", c.consumer.to_string()));
        attributes.push(("sluice.tier", c.tier.to_string()));
    }
    if let Some(r) = refusal {
        attributes.push(("sluice.reason", r.reason.to_owned()));
    }
    RequestSpan {
        trace: ctx.trace.clone(),
        name: format!("{method} {}", pool.map_or(path, PoolRuntime::key)),
        start: ctx.arrived,
        end: ctx.arrived,
        attributes,
        status,
        attempts: Vec::new(),
    }
}

/// Watches a response body to its end: its first byte, its size, how it ended.
struct LogWatch {
    start: Instant,
    first_byte: Option<Duration>,
    bytes: u64,
    pool: Option<Arc<PoolRuntime>>,
    // Boxed, as the watch is moved a few times on every request, logged or not.
    record: Option<Box<Record>>,
    span: Option<Box<(SpanQueue, RequestSpan)>>,
    log: AccessLog,
    body_in: Arc<BodyStats>,
    tokens: Arc<TokenStats>,
    /// `sluice_llm_tokens_total` `reserved` and `used` for the pool and the caller's
    /// tier, when the request holds a token reservation.
    llm_tokens: Option<[prometheus::IntCounter; 2]>,
}

impl BodyWatch for LogWatch {
    fn on_data(&mut self, data: &Bytes) {
        if self.first_byte.is_none() && !data.is_empty() {
            self.first_byte = Some(self.start.elapsed());
        }
        self.bytes += data.len() as u64;
    }

    fn on_end(&mut self, end: BodyEnd) {
        let duration = self.start.elapsed();
        let bytes_in = self.body_in.bytes();
        if let Some(pool) = &self.pool {
            let m = &pool.metrics;
            m.request_bytes.inc_by(bytes_in);
            m.response_duration.observe(duration.as_secs_f64());
            if let Some(t) = self.first_byte {
                m.first_byte.observe(t.as_secs_f64());
            }
            m.response_bytes.inc_by(self.bytes);
        }
        let tokens = self.tokens.counts();
        if let Some([reserved, used]) = &self.llm_tokens {
            reserved.inc_by(tokens.reserved.unwrap_or(0));
            used.inc_by(tokens.used.unwrap_or(0));
        }
        if let Some(mut record) = self.record.take() {
            record.tokens_reserved = tokens.reserved;
            record.tokens_used = tokens.used;
            record.duration_ms = duration;
            record.ttfb_ms = self.first_byte;
            record.bytes_out = self.bytes;
            record.bytes_in = bytes_in;
            record.completion = match end {
                BodyEnd::Complete => Completion::Complete,
                BodyEnd::Failed => Completion::UpstreamFailed,
                BodyEnd::TimedOut(TimeoutKind::Total | TimeoutKind::Idle) => Completion::TimedOut,
                BodyEnd::Dropped => Completion::ClientGone,
            };
            self.log.log(*record);
        }
        if let Some(traced) = self.span.take() {
            let (queue, mut span) = *traced;
            span.end = span.start + duration;
            queue.send(span);
        }
    }
}
