//! What a response tells the client about its limits: the IETF `RateLimit-Policy` and
//! `RateLimit` headers of the binding limit (the request limit, local or global, with
//! the fewest requests left; a token budget when the pool has no request limit), the
//! soft-limit warning of the first limit past its threshold, the dry-run policy that
//! would have refused the request, and `Retry-After` on a refusal.

use http::{HeaderName, HeaderValue};
use sluice_ratelimit::Decision;

use super::{DRY_RUN_HEADER, PolicyRt, Verdict, WARNING_HEADER};
use crate::access_log::LimitRecord;

/// A limit of a policy's tier, as the headers describe it: `q` per `w_ms`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner<'a> {
    pub policy: &'a PolicyRt,
    pub tier: &'a str,
    pub q: u32,
    pub w_ms: u64,
}

/// The limits an admitted request passed, as they should be reported.
#[derive(Debug, Default)]
pub(super) struct Report<'a> {
    requests: Option<(Owner<'a>, Decision)>,
    tokens: Option<(Owner<'a>, Decision)>,
    soft: Option<Owner<'a>>,
    /// The first dry-run refusal: `"policy/tier";q=…;w=…`, or `"policy";unavailable`.
    dry_run: Option<String>,
}

impl<'a> Report<'a> {
    /// A request limit admitted the request with `decision`.
    pub fn request(&mut self, owner: Owner<'a>, decision: Decision) {
        keep_tighter(&mut self.requests, owner, decision);
        self.soft_check(owner, &decision);
    }

    /// A token budget reserved the request's tokens with `decision`.
    pub fn tokens(&mut self, owner: Owner<'a>, decision: Decision) {
        keep_tighter(&mut self.tokens, owner, decision);
        self.soft_check(owner, &decision);
    }

    /// A limit reached its policy's soft threshold (the first one is reported).
    pub fn soft(&mut self, owner: Owner<'a>) {
        self.soft.get_or_insert(owner);
    }

    fn soft_check(&mut self, owner: Owner<'a>, decision: &Decision) {
        if owner
            .policy
            .soft
            .is_some_and(|s| s.is_reached(owner.q, decision.remaining()))
        {
            self.soft(owner);
        }
    }

    /// A dry-run policy would have answered `refusal` (the first one is reported).
    pub fn dry_run(&mut self, refusal: &Verdict) {
        if self.dry_run.is_some() {
            return;
        }
        self.dry_run = match refusal {
            Verdict::Limited { headers, .. } => headers
                .iter()
                .find(|(name, _)| name == "ratelimit-policy")
                .and_then(|(_, v)| v.to_str().ok())
                .map(str::to_owned),
            Verdict::Unavailable { policy, .. } => Some(format!("\"{policy}\";unavailable")),
            Verdict::Admitted { .. } => None,
        };
    }

    /// The dry-run refusal, for the access log.
    pub fn dry_run_refusal(&self) -> Option<String> {
        self.dry_run.clone()
    }

    /// The binding limit the headers report, with what it has left, for the access
    /// log.
    pub fn binding(&self) -> Option<LimitRecord> {
        self.requests
            .or(self.tokens)
            .map(|(owner, decision)| LimitRecord {
                policy: owner.policy.key.clone(),
                tier: owner.tier.to_owned(),
                remaining: Some(decision.remaining()),
            })
    }

    /// The soft limit reached, if any.
    pub fn soft_reached(&self) -> Option<Owner<'a>> {
        self.soft
    }

    /// The headers of an admitted response.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = match self.requests.or(self.tokens) {
            Some((owner, decision)) => rate_headers(owner, &decision),
            None => Vec::new(),
        };
        if let Some(Owner {
            policy, tier, q, ..
        }) = self.soft
        {
            let reached = policy.soft.map_or(100, |s| s.get());
            if let Ok(v) = HeaderValue::from_str(&format!(
                "\"{}/{tier}\";q={q};reached={reached}%",
                policy.key
            )) {
                headers.push((HeaderName::from_static(WARNING_HEADER), v));
            }
        }
        if let Some(v) = self
            .dry_run
            .as_deref()
            .and_then(|d| HeaderValue::from_str(d).ok())
        {
            headers.push((HeaderName::from_static(DRY_RUN_HEADER), v));
        }
        headers
    }
}

fn keep_tighter<'a>(
    slot: &mut Option<(Owner<'a>, Decision)>,
    owner: Owner<'a>,
    decision: Decision,
) {
    if slot.is_none_or(|(_, d)| decision.remaining() < d.remaining()) {
        *slot = Some((owner, decision));
    }
}

/// The 429 of `owner`'s limit: its headers and `Retry-After`.
pub(super) fn limited(owner: Owner<'_>, decision: Decision) -> Verdict {
    let retry_after = decision.retry_after_secs().unwrap_or(1).max(1);
    let mut headers = rate_headers(owner, &decision);
    headers.push((http::header::RETRY_AFTER, HeaderValue::from(retry_after)));
    Verdict::Limited {
        headers,
        policy: owner.policy.key.clone(),
        tier: owner.tier.to_owned(),
        retry_after,
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers of one limit. Written without
/// `format!`, which cost more than checking the limits did.
fn rate_headers(owner: Owner<'_>, decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    let w = owner.w_ms.div_ceil(1000).max(1);
    let mut digits = itoa::Buffer::new();
    let mut value = |fields: [(&str, u64); 2]| {
        let mut v = String::with_capacity(owner.policy.key.len() + owner.tier.len() + 32);
        v.push('"');
        v.push_str(&owner.policy.key);
        v.push('/');
        v.push_str(owner.tier);
        v.push('"');
        for (name, n) in fields {
            v.push(';');
            v.push_str(name);
            v.push('=');
            v.push_str(digits.format(n));
        }
        HeaderValue::try_from(v).ok()
    };
    let policy = value([("q", u64::from(owner.q)), ("w", w)]);
    let state = value([
        ("r", u64::from(decision.remaining())),
        ("t", decision.reset_secs()),
    ]);
    // Room for the soft-limit warning, the dry-run refusal or `Retry-After` after them.
    let mut out = Vec::with_capacity(4);
    out.extend(policy.map(|v| (HeaderName::from_static("ratelimit-policy"), v)));
    out.extend(state.map(|v| (HeaderName::from_static("ratelimit"), v)));
    out
}
