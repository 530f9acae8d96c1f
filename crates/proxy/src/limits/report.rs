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

// Built at compile time: a name given as a string is parsed on every use.
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The IETF `RateLimit-Policy` and `RateLimit` headers of one limit. Written without
/// `format!`, which cost more than checking the limits did.
fn rate_headers(owner: Owner<'_>, decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    let w = owner.w_ms.div_ceil(1000).max(1);
    let policy = limit_value(owner, [("q", u64::from(owner.q)), ("w", w)]);
    let state = limit_value(
        owner,
        [
            ("r", u64::from(decision.remaining())),
            ("t", decision.reset_secs()),
        ],
    );
    // Room for the soft-limit warning, the dry-run refusal or `Retry-After` after them.
    let mut out = Vec::with_capacity(4);
    out.extend(policy.map(|v| (RATELIMIT_POLICY, v)));
    out.extend(state.map(|v| (RATELIMIT, v)));
    out
}

/// `"POLICY/TIER";a=1;b=2` for `owner`'s limit and `fields`, in a string of just its
/// length (which a header value then takes over without another allocation).
fn limit_value(owner: Owner<'_>, fields: [(&str, u64); 2]) -> Option<HeaderValue> {
    let mut buffers = [itoa::Buffer::new(), itoa::Buffer::new()];
    let [first, second] = &mut buffers;
    let fields = [
        (fields[0].0, first.format(fields[0].1)),
        (fields[1].0, second.format(fields[1].1)),
    ];
    let len = owner.policy.key.len()
        + owner.tier.len()
        + 3
        + fields
            .iter()
            .map(|(name, digits)| name.len() + digits.len() + 2)
            .sum::<usize>();
    let mut v = String::with_capacity(len);
    v.push('"');
    v.push_str(&owner.policy.key);
    v.push('/');
    v.push_str(owner.tier);
    v.push('"');
    for (name, digits) in fields {
        v.push(';');
        v.push_str(name);
        v.push('=');
        v.push_str(digits);
    }
    HeaderValue::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn limit_values_read_as_the_ietf_draft_writes_them() {
        let policy = PolicyRt {
            key: "ns/per-user".into(),
            key_type: sluice_api::table::RateKeyType::Consumer,
            header: None,
            per_pool: false,
            default_tier: "standard".into(),
            soft: None,
            token_estimate: 0,
            dry_run: false,
            tiers: HashMap::new(),
        };
        let owner = Owner {
            policy: &policy,
            tier: "gold",
            q: 100,
            w_ms: 60_000,
        };
        let value = limit_value(owner, [("q", 100), ("w", 60)]).expect("valid");
        assert_eq!(value, "\"ns/per-user/gold\";q=100;w=60");
        let value = limit_value(owner, [("r", 0), ("t", u64::MAX)]).expect("valid");
        assert_eq!(value, "\"ns/per-user/gold\";r=0;t=18446744073709551615");
    }
}
