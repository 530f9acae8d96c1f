//! Checking a request against every limit of its pool at once: global limits first
//! (through Redis leases), then the local ones together (admitted only if all admit,
//! a refusal charges none), then token budgets reserved.

use std::num::NonZeroU32;

use http::{HeaderName, HeaderValue};
use sluice_ratelimit::{Decision, GlobalDecision, GlobalKey, Limit, Reserve, check_all};

use super::tokens::{TokenCounters, TokenSettlement};
use super::{Counter, Needs, PolicyRt, Subject, TableLimits, Verdict, WARNING_HEADER};

impl TableLimits {
    /// Whether `pool_index` has limits, and of what kind.
    pub fn needs(&self, pool_index: usize) -> Option<Needs> {
        let policies = self.by_pool.get(pool_index)?;
        if policies.is_empty() {
            return None;
        }
        let tokens = policies.iter().any(|&p| {
            self.policies[p]
                .tiers
                .values()
                .any(|t| !t.tokens.is_empty())
        });
        Some(Needs { tokens })
    }

    /// Checks a request against every limit of its pool; `max_tokens` is what the
    /// request body asks for, when known.
    pub async fn check(&self, subject: &Subject<'_>, max_tokens: Option<u32>) -> Verdict {
        let policies = self
            .by_pool
            .get(subject.pool_index)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let now = self.context.clock.now_nanos();
        let mut keyed = Vec::new();
        for &p in policies {
            let policy = &self.policies[p];
            let (tier_name, tier) = policy.tier_for(subject.consumer.map(|(_, t)| t));
            let key_bytes = policy.key_bytes(subject);
            let key = self.context.hasher.hash(&[
                policy.key.as_bytes(),
                tier_name.as_bytes(),
                &key_bytes,
            ]);
            // Global limits first: a later local refusal wastes one global token,
            // never the reverse.
            for limit in &tier.requests {
                if let Counter::NoStore = &limit.counter {
                    self.context
                        .metrics
                        .count_rate(&policy.key, tier_name, "unavailable");
                    return Verdict::Unavailable {
                        policy: policy.key.clone(),
                        retry_after: 1,
                    };
                }
                if let Counter::Global(global) = &limit.counter {
                    let gkey = GlobalKey::new(
                        &format!(
                            "{}/{tier_name}/{}per{}ms",
                            policy.key, limit.requests, limit.window_ms
                        ),
                        &[&key_bytes],
                    );
                    match global.check(&gkey, NonZeroU32::MIN).await {
                        Ok(GlobalDecision::Decided { decision, .. }) if !decision.is_allowed() => {
                            return limited(
                                policy,
                                tier_name,
                                limit.requests,
                                limit.window_ms,
                                decision,
                            );
                        }
                        Ok(GlobalDecision::Decided { .. }) => {}
                        Ok(GlobalDecision::Unavailable { retry_after, .. }) => {
                            self.context
                                .metrics
                                .count_rate(&policy.key, tier_name, "unavailable");
                            return Verdict::Unavailable {
                                policy: policy.key.clone(),
                                retry_after: sluice_ratelimit::retry_after_secs(retry_after),
                            };
                        }
                        Err(_) => {}
                    }
                }
            }
            keyed.push((policy, tier_name, tier, key));
        }
        if keyed.is_empty() {
            return Verdict::Admitted {
                headers: Vec::new(),
                tokens: TokenSettlement::default(),
            };
        }
        let mut limits = Vec::new();
        let mut owners = Vec::new();
        for (policy, tier_name, tier, key) in &keyed {
            for limit in &tier.requests {
                let l = match &limit.counter {
                    Counter::Gcra(store) => Limit::keyed(store.as_ref(), *key),
                    Counter::Window(store) => Limit::keyed(store.as_ref(), *key),
                    Counter::Global(_) | Counter::NoStore | Counter::Tokens(_) => continue,
                };
                limits.push(match policy.soft {
                    Some(s) => l.with_soft(s),
                    None => l,
                });
                owners.push((*policy, *tier_name, limit.requests, limit.window_ms));
            }
        }
        let mut headers = Vec::new();
        if !limits.is_empty() {
            let Ok(admission) = check_all(&limits, NonZeroU32::MIN, now) else {
                return Verdict::Admitted {
                    headers,
                    tokens: TokenSettlement::default(),
                };
            };
            let (policy, tier, q, w) = owners[admission.binding];
            if !admission.is_allowed() {
                self.context.metrics.count_rate(&policy.key, tier, "denied");
                return limited(policy, tier, q, w, admission.decision);
            }
            headers.extend(rate_headers(policy, tier, q, w, &admission.decision));
            if let Some(i) = admission.soft_warning {
                let (p, t, q, _) = owners[i];
                self.context.metrics.count_rate(&p.key, t, "soft_warning");
                let reached = p.soft.map_or(100, |s| s.get());
                if let Ok(v) =
                    HeaderValue::from_str(&format!("\"{}/{t}\";q={q};reached={reached}%", p.key))
                {
                    headers.push((HeaderName::from_static(WARNING_HEADER), v));
                }
            }
        }

        // Token budgets: reserve what the request may use, refund at the end.
        let mut tokens = TokenSettlement::on(self.context.clock.clone());
        for (policy, tier_name, tier, key) in &keyed {
            for budget in &tier.tokens {
                let want = max_tokens
                    .unwrap_or(policy.token_estimate)
                    .clamp(1, budget.tokens);
                let want = NonZeroU32::new(want).unwrap_or(NonZeroU32::MIN);
                match budget.store.reserve(*key, want, now) {
                    Ok(Reserve::Granted { reservation, .. }) => {
                        let counters =
                            TokenCounters::new(&self.context.metrics, &policy.key, tier_name);
                        tokens.hold(budget.store.clone(), reservation, want.get(), counters);
                    }
                    Ok(Reserve::Refused(decision)) => {
                        // Returning drops `tokens`: what was reserved goes back.
                        self.context
                            .metrics
                            .count_rate(&policy.key, tier_name, "denied");
                        return limited(
                            policy,
                            tier_name,
                            budget.tokens,
                            budget.window_ms,
                            decision,
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        for (policy, tier_name, _, _) in &keyed {
            self.context
                .metrics
                .count_rate(&policy.key, tier_name, "allowed");
        }
        Verdict::Admitted { headers, tokens }
    }
}

fn limited(policy: &PolicyRt, tier: &str, q: u32, w_ms: u64, decision: Decision) -> Verdict {
    let retry_after = decision.retry_after_secs().unwrap_or(1).max(1);
    let mut headers = rate_headers(policy, tier, q, w_ms, &decision);
    headers.push((http::header::RETRY_AFTER, HeaderValue::from(retry_after)));
    Verdict::Limited {
        headers,
        policy: policy.key.clone(),
        tier: tier.to_owned(),
        retry_after,
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers of the binding limit.
fn rate_headers(
    policy: &PolicyRt,
    tier: &str,
    q: u32,
    w_ms: u64,
    decision: &Decision,
) -> Vec<(HeaderName, HeaderValue)> {
    let name = format!("{}/{tier}", policy.key);
    let w = w_ms.div_ceil(1000).max(1);
    let mut out = Vec::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";q={q};w={w}")) {
        out.push((HeaderName::from_static("ratelimit-policy"), v));
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "\"{name}\";r={};t={}",
        decision.remaining(),
        decision.reset_secs()
    )) {
        out.push((HeaderName::from_static("ratelimit"), v));
    }
    out
}
