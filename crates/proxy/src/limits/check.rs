//! Checking a request against every limit of its pool at once, in an order that lets
//! a refusal charge nothing:
//!
//! 1. token budgets are reserved first: a reservation is given back by dropping it,
//!    so a later refusal costs them nothing;
//! 2. local request limits are evaluated without charging: a local refusal spends no
//!    global token;
//! 3. global request limits spend their tokens (through Redis leases); a refusal by
//!    one gives back those spent before it;
//! 4. local request limits are charged together (admitted only if all admit); one
//!    that refuses after all (another request took the last unit since step 2)
//!    gives back the global tokens.
//!
//! What an admitted request was charged travels with it ([`Charged`]), so that a
//! request that moves to another pool gives it back.

use std::num::NonZeroU32;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use sluice_ratelimit::{
    Decision, GlobalDecision, GlobalKey, GlobalLimiter, KeyHash, Limit, Reserve, check_all_charged,
    peek_all,
};

use super::refund::Charged;
use super::tokens::{TokenCounters, TokenSettlement};
use super::{Counter, Needs, PolicyRt, Subject, TableLimits, TierRt, Verdict, WARNING_HEADER};
use crate::clock::SharedClock;

/// One policy of the pool as it applies to the request: its tier and key.
struct Keyed<'a> {
    policy: &'a PolicyRt,
    tier_name: &'a str,
    tier: &'a TierRt,
    key: KeyHash,
    key_bytes: Vec<u8>,
}

/// Who owns a local request limit, for the headers: policy, tier, requests, window.
type Owner<'a> = (&'a PolicyRt, &'a str, u32, u64);

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

    /// Checks a request against every limit of its pool (see the module docs for the
    /// order); `max_tokens` is what the request body asks for, when known.
    pub async fn check(&self, subject: &Subject<'_>, max_tokens: Option<u32>) -> Verdict {
        let policies = self
            .by_pool
            .get(subject.pool_index)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if policies.is_empty() {
            return Verdict::admitted();
        }
        let now = self.context.clock.now_nanos();
        let keyed: Vec<Keyed<'_>> = policies
            .iter()
            .map(|&p| self.keyed(&self.policies[p], subject))
            .collect();
        // A global limit that fails closed on a proxy without Redis refuses before
        // anything is charged.
        for k in &keyed {
            if k.tier
                .requests
                .iter()
                .any(|l| matches!(l.counter, Counter::NoStore))
            {
                self.context
                    .metrics
                    .count_rate(&k.policy.key, k.tier_name, "unavailable");
                return Verdict::Unavailable {
                    policy: k.policy.key.clone(),
                    retry_after: 1,
                };
            }
        }

        // 1. Token budgets.
        let tokens = match self.reserve_tokens(&keyed, max_tokens, now) {
            Ok(tokens) => tokens,
            Err(refused) => return refused,
        };

        // 2. Local request limits, evaluated without charging.
        let mut limits = Vec::new();
        let mut owners: Vec<Owner<'_>> = Vec::new();
        for k in &keyed {
            for limit in &k.tier.requests {
                let l = match &limit.counter {
                    Counter::Gcra(store) => Limit::keyed(store.as_ref(), k.key),
                    Counter::Window(store) => Limit::keyed(store.as_ref(), k.key),
                    Counter::Global(_) | Counter::NoStore | Counter::Tokens(_) => continue,
                };
                limits.push(match k.policy.soft {
                    Some(s) => l.with_soft(s),
                    None => l,
                });
                owners.push((k.policy, k.tier_name, limit.requests, limit.window_ms));
            }
        }
        // One request never exceeds a burst (at least 1): `Err` cannot happen.
        if let Ok(Some(refusal)) = peek_all(&limits, NonZeroU32::MIN, now) {
            let (policy, tier, q, w) = owners[refusal.binding];
            self.context.metrics.count_rate(&policy.key, tier, "denied");
            return limited(policy, tier, q, w, refusal.decision);
        }

        // 3. Global request limits.
        let mut charged = Charged::on(self.context.clock.clone());
        for k in &keyed {
            for limit in &k.tier.requests {
                let Counter::Global(global) = &limit.counter else {
                    continue;
                };
                let gkey = GlobalKey::new(
                    &format!(
                        "{}/{}/{}per{}ms",
                        k.policy.key, k.tier_name, limit.requests, limit.window_ms
                    ),
                    &[&k.key_bytes],
                );
                match global.check(&gkey, NonZeroU32::MIN).await {
                    Ok(GlobalDecision::Decided {
                        decision, charge, ..
                    }) => {
                        if !decision.is_allowed() {
                            charged.refund();
                            self.context
                                .metrics
                                .count_rate(&k.policy.key, k.tier_name, "denied");
                            return limited(
                                k.policy,
                                k.tier_name,
                                limit.requests,
                                limit.window_ms,
                                decision,
                            );
                        }
                        charged.global(Arc::clone(global), gkey, charge);
                    }
                    Ok(GlobalDecision::Unavailable { retry_after, .. }) => {
                        charged.refund();
                        self.context
                            .metrics
                            .count_rate(&k.policy.key, k.tier_name, "unavailable");
                        return Verdict::Unavailable {
                            policy: k.policy.key.clone(),
                            retry_after: sluice_ratelimit::retry_after_secs(retry_after),
                        };
                    }
                    Err(_) => {}
                }
            }
        }

        // 4. Local request limits, charged.
        let mut headers = Vec::new();
        if !limits.is_empty()
            && let Ok((admission, charges)) = check_all_charged(&limits, NonZeroU32::MIN, now)
        {
            let (policy, tier, q, w) = owners[admission.binding];
            if !admission.is_allowed() {
                charged.refund();
                self.context.metrics.count_rate(&policy.key, tier, "denied");
                return limited(policy, tier, q, w, admission.decision);
            }
            charged.local(local_counters(&keyed), charges);
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
        for k in &keyed {
            self.context
                .metrics
                .count_rate(&k.policy.key, k.tier_name, "allowed");
        }
        let mut tokens = tokens;
        tokens.admit();
        Verdict::Admitted {
            headers,
            tokens,
            charged,
        }
    }

    /// The tier and key of `policy` for `subject`.
    fn keyed<'a>(&self, policy: &'a PolicyRt, subject: &Subject<'_>) -> Keyed<'a> {
        let (tier_name, tier) = policy.tier_for(subject.consumer.map(|(_, t)| t));
        let key_bytes = policy.key_bytes(subject);
        let key =
            self.context
                .hasher
                .hash(&[policy.key.as_bytes(), tier_name.as_bytes(), &key_bytes]);
        Keyed {
            policy,
            tier_name,
            tier,
            key,
            key_bytes,
        }
    }

    /// Reserves what the request may use of every token budget, or the refusal (the
    /// reservations made are given back as they drop).
    #[expect(
        clippy::result_large_err,
        reason = "the refusal is the verdict returned as it is"
    )]
    fn reserve_tokens(
        &self,
        keyed: &[Keyed<'_>],
        max_tokens: Option<u32>,
        now: u64,
    ) -> Result<TokenSettlement, Verdict> {
        let mut tokens = TokenSettlement::on(self.context.clock.clone());
        for k in keyed {
            for budget in &k.tier.tokens {
                let want = max_tokens
                    .unwrap_or(k.policy.token_estimate)
                    .clamp(1, budget.tokens);
                let want = NonZeroU32::new(want).unwrap_or(NonZeroU32::MIN);
                match budget.store.reserve(k.key, want, now) {
                    Ok(Reserve::Granted { reservation, .. }) => {
                        let counters =
                            TokenCounters::new(&self.context.metrics, &k.policy.key, k.tier_name);
                        tokens.hold(budget.store.clone(), reservation, counters);
                    }
                    Ok(Reserve::Refused(decision)) => {
                        self.context
                            .metrics
                            .count_rate(&k.policy.key, k.tier_name, "denied");
                        return Err(limited(
                            k.policy,
                            k.tier_name,
                            budget.tokens,
                            budget.window_ms,
                            decision,
                        ));
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(tokens)
    }
}

/// The local request limits' counters and keys, in the order the limits were
/// checked in (to give their charges back).
fn local_counters(keyed: &[Keyed<'_>]) -> Vec<(Counter, KeyHash)> {
    keyed
        .iter()
        .flat_map(|k| {
            k.tier
                .requests
                .iter()
                .filter(|l| matches!(l.counter, Counter::Gcra(_) | Counter::Window(_)))
                .map(|l| (l.counter.clone(), k.key))
        })
        .collect()
}

impl Verdict {
    fn admitted() -> Self {
        Verdict::Admitted {
            headers: Vec::new(),
            tokens: TokenSettlement::default(),
            charged: Charged::default(),
        }
    }
}

impl Charged {
    fn on(clock: SharedClock) -> Self {
        Self {
            clock: Some(clock),
            ..Self::default()
        }
    }

    fn global(
        &mut self,
        limiter: Arc<GlobalLimiter<SharedClock>>,
        key: GlobalKey,
        charge: sluice_ratelimit::GlobalCharge,
    ) {
        if !charge.is_none() {
            self.global.push((limiter, key, charge));
        }
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
