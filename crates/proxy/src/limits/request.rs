//! The limits step of the request path: read the body's `max_tokens` when a token
//! budget needs it, check every limit of the pool, and turn the verdict into the
//! response headers of an admitted request or the refusal of a limited one.

use http::{HeaderName, HeaderValue};

use super::tokens::TokenSettlement;
use super::{Charged, MAX_BUFFERED_BODY, Subject, TableLimits, Verdict};
use crate::access_log::LimitRecord;
use crate::body::{RequestBody, is_json};
use crate::error::ProxyError;

/// What the rate limits add to an admitted request: response headers and token
/// reservations to settle.
#[derive(Debug, Default)]
pub struct RateOutcome {
    /// `RateLimit-Policy`, `RateLimit` and, past a soft limit, the warning.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Token reservations, settled when the response ends (given back if dropped).
    pub tokens: TokenSettlement,
    /// What the request limits charged, given back if the request moves on.
    pub charged: Charged,
    /// The dry-run policy that would have refused the request, for the access log
    /// (`"ns/policy/tier";q=50;w=60`, as in the `x-sluice-ratelimit-dry-run` header);
    /// taken into the request's context.
    pub dry_run: Option<String>,
    /// The limit the `RateLimit` headers report, with what it has left, for the
    /// access log; taken into the request's context.
    pub binding: Option<LimitRecord>,
}

impl RateOutcome {
    /// Takes what a pool's limits gave the request. A request holds one pool's at a
    /// time: anything still held from another is given back first (see
    /// [`RateOutcome::give_back`]).
    pub fn absorb(&mut self, other: RateOutcome) {
        self.give_back();
        *self = other;
    }

    /// Gives back everything the request was charged and reserved: the pool whose
    /// limits admitted it will not serve it (it moves to a fallback, which counts
    /// it under its own limits instead).
    pub fn give_back(&mut self) {
        self.headers.clear();
        self.dry_run = None;
        self.binding = None;
        self.charged.refund();
        drop(std::mem::take(&mut self.tokens));
    }
}

/// Checks `subject` against the limits of its pool, all at once. A token budget needs
/// the body's `max_tokens`: a JSON body is then read (up to [`MAX_BUFFERED_BODY`]) and
/// handed back buffered. `None` when the pool has no limits.
///
/// # Errors
///
/// [`ProxyError::RateLimited`] (429) or [`ProxyError::LimitsUnavailable`] (503);
/// [`ProxyError::BodyTooLarge`] or [`ProxyError::BadRequest`] when the body that had
/// to be read could not be.
pub async fn check_request(
    limits: &TableLimits,
    subject: &Subject<'_>,
    mut body: RequestBody,
) -> Result<(RequestBody, Option<RateOutcome>), ProxyError> {
    let Some(needs) = limits.needs(subject.pool_index) else {
        return Ok((body, None));
    };
    let mut max_tokens = None;
    if needs.tokens && is_json(subject.headers) {
        let bytes = body.into_bytes(MAX_BUFFERED_BODY).await?;
        max_tokens = requested_tokens(&bytes);
        body = RequestBody::Buffered(bytes);
    }
    match limits.check(subject, max_tokens).await {
        Verdict::Admitted {
            headers,
            tokens,
            charged,
            dry_run,
            binding,
        } => Ok((
            body,
            Some(RateOutcome {
                headers,
                tokens,
                charged,
                dry_run,
                binding,
            }),
        )),
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

/// `max_tokens` (or `max_completion_tokens`) of an OpenAI-style request body.
pub fn requested_tokens(json: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    v.get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
        .and_then(serde_json::Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}
