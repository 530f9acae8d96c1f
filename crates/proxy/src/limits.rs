//! RatePolicies at run time: whether a request may go, by its consumer, client IP,
//! header or pool, and the headers that tell the client where it stands.
//!
//! Built once per route table. Counters live in bounded keyed stores that carry over
//! to the next table when their quota is unchanged, so publishing a table never resets
//! a limit. A request is checked against every limit of every policy on its pool at
//! once: admitted only if all admit, and a refusal charges none. Global policies ask
//! Redis first (through leases); LLM token budgets reserve at admission and settle
//! when the agent reports its usage.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_api::table::{
    FailureMode as TableFailureMode, Policy, RateAlgorithm, RateKeyType, Scope,
};
use sluice_ratelimit::{
    BudgetQuota, Decision, FailureMode, Gcra, GlobalConfig, GlobalDecision, GlobalKey,
    GlobalLimiter, KeyHasher, KeyedStore, Limit, Quota, RedisBackend, Reservation, Reserve,
    SlidingWindow, SoftLimit, StoreConfig, TokenBudget, WindowQuota, check_all,
};

use crate::body::{BodyEnd, BodyWatch};
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// Keys one store tracks at most, unless configured otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The largest request body read to find `max_tokens`.
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;
/// The warning header added once a soft limit is reached.
pub const WARNING_HEADER: &str = "x-sluice-ratelimit-warning";

/// The shared pieces every table's limits are built from.
#[derive(Debug)]
pub struct LimitsContext {
    hasher: KeyHasher,
    clock: SharedClock,
    redis: Option<Arc<RedisBackend>>,
    max_keys: NonZeroUsize,
    stores: Mutex<HashMap<String, Counter>>,
    metrics: Metrics,
}

/// One limit's state, shared across tables by its id.
#[derive(Clone, Debug)]
enum Counter {
    Gcra(Arc<KeyedStore<Gcra>>),
    Window(Arc<KeyedStore<SlidingWindow>>),
    Global(Arc<GlobalLimiter<SharedClock>>),
    /// A global limit, failing closed, on a proxy without Redis: every request 503.
    NoStore,
    Tokens(Arc<KeyedStore<TokenBudget>>),
}

impl LimitsContext {
    /// `redis` serves `scope: Global` policies; without it they follow their failure
    /// mode as if Redis were down. Every limit reads time from `clock`.
    pub fn new(
        redis: Option<Arc<RedisBackend>>,
        max_keys: NonZeroUsize,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Self {
        if let Some(backend) = &redis
            && let Err(e) = metrics.register_redis(backend.clone())
        {
            tracing::warn!(error = %e, "Redis metrics not exported");
        }
        Self {
            hasher: KeyHasher::new(),
            clock,
            redis,
            max_keys,
            stores: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Builds the limits of a table's policies for its pools (by key). Counters whose
    /// quota did not change carry over; the others start fresh.
    ///
    /// # Errors
    ///
    /// A [`LimitError`] when a limit cannot be held by its limiter (a table that
    /// passed validation never has one): the table is refused whole, never served
    /// without that limit.
    pub fn build(
        self: &Arc<Self>,
        policies: &[Policy],
        pool_keys: &[String],
    ) -> Result<TableLimits, LimitError> {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        let mut used = HashMap::new();
        let mut by_pool: Vec<Vec<usize>> = vec![Vec::new(); pool_keys.len()];
        let mut built = Vec::new();
        for policy in policies {
            // Counters are only read here: a table refused half-way loses none.
            let rt = self.build_policy(policy, &stores, &mut used)?;
            let index = built.len();
            built.push(rt);
            for pool in &policy.pools {
                if let Some(p) = pool_keys.iter().position(|k| k == pool) {
                    by_pool[p].push(index);
                }
            }
        }
        *stores = used;
        Ok(TableLimits {
            context: self.clone(),
            policies: built,
            by_pool,
        })
    }

    fn build_policy(
        &self,
        policy: &Policy,
        stores: &HashMap<String, Counter>,
        used: &mut HashMap<String, Counter>,
    ) -> Result<PolicyRt, LimitError> {
        let refused = |tier: &str, reason: String| LimitError {
            policy: policy.key.clone(),
            tier: tier.to_owned(),
            reason,
        };
        let mut tiers = HashMap::new();
        for (name, limits) in &policy.tiers {
            let mut requests = Vec::new();
            for (i, l) in limits.requests.iter().enumerate() {
                let id = format!(
                    "{}|{name}|r{i}|{:?}|{:?}|{}|{}|{}",
                    policy.key,
                    policy.algorithm,
                    policy.scope,
                    l.requests,
                    l.period.as_millis(),
                    l.burst
                );
                let counter = match stores.get(&id).or_else(|| used.get(&id)).cloned() {
                    Some(c) => c,
                    None => self
                        .new_counter(policy, l.requests, l.period.get(), l.burst)
                        .map_err(|reason| refused(name, reason))?,
                };
                used.insert(id, counter.clone());
                requests.push(RequestLimit {
                    counter,
                    requests: l.requests.get(),
                    window_ms: l.period.as_millis(),
                });
            }
            let mut tokens = Vec::new();
            for (i, l) in limits.tokens.iter().enumerate() {
                let id = format!(
                    "{}|{name}|t{i}|{}|{}",
                    policy.key,
                    l.tokens,
                    l.period.as_millis()
                );
                let store = match stores.get(&id).or_else(|| used.get(&id)).cloned() {
                    Some(Counter::Tokens(store)) => store,
                    _ => {
                        let quota = BudgetQuota::per_period(l.tokens, l.period.get())
                            .map_err(|e| refused(name, e.to_string()))?;
                        Arc::new(KeyedStore::new(quota, StoreConfig::new(self.max_keys)))
                    }
                };
                used.insert(id, Counter::Tokens(store.clone()));
                tokens.push(TokenLimitRt {
                    store,
                    tokens: l.tokens.get(),
                    window_ms: l.period.as_millis(),
                });
            }
            tiers.insert(name.clone(), TierRt { requests, tokens });
        }
        let soft = match policy.soft_percent {
            Some(p) => Some(
                SoftLimit::percent(p.get())
                    .map_err(|e| refused(&policy.default_tier, e.to_string()))?,
            ),
            None => None,
        };
        Ok(PolicyRt {
            key: policy.key.clone(),
            key_type: policy.key_type,
            header: policy.header.clone(),
            per_pool: policy.per_pool,
            default_tier: policy.default_tier.clone(),
            soft,
            token_estimate: policy.token_estimate.get(),
            tiers,
        })
    }

    fn new_counter(
        &self,
        policy: &Policy,
        n: NonZeroU32,
        period: Duration,
        burst: NonZeroU32,
    ) -> Result<Counter, String> {
        let config = StoreConfig::new(self.max_keys);
        let gcra = || {
            Quota::per_period(n, period)
                .map(|q| q.with_burst(burst))
                .map_err(|e| e.to_string())
        };
        Ok(match (policy.scope, policy.algorithm) {
            (Scope::Global, _) => {
                let quota = gcra()?;
                match &self.redis {
                    Some(redis) => {
                        let mode = match policy.failure_mode {
                            TableFailureMode::Open => FailureMode::Open,
                            TableFailureMode::Closed => FailureMode::Closed,
                        };
                        Counter::Global(Arc::new(GlobalLimiter::new(
                            redis.clone(),
                            quota,
                            GlobalConfig::new(mode),
                            self.clock.clone(),
                        )))
                    }
                    // No Redis: the failure mode decides, as if it were down.
                    None if policy.failure_mode == TableFailureMode::Open => {
                        Counter::Gcra(Arc::new(KeyedStore::new(quota, config)))
                    }
                    None => Counter::NoStore,
                }
            }
            (Scope::Local, RateAlgorithm::TokenBucket) => {
                Counter::Gcra(Arc::new(KeyedStore::new(gcra()?, config)))
            }
            (Scope::Local, RateAlgorithm::SlidingWindow) => {
                let quota = WindowQuota::new(n, period).map_err(|e| e.to_string())?;
                Counter::Window(Arc::new(KeyedStore::new(quota, config)))
            }
        })
    }
}

/// A limit its limiter cannot hold. A table that passed [`RouteTable::validate`]
/// never has one; one that does is refused, not served without the limit.
///
/// [`RouteTable::validate`]: sluice_api::RouteTable::validate
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy} tier {tier}: {reason}")]
pub struct LimitError {
    /// The policy.
    pub policy: String,
    /// The tier.
    pub tier: String,
    /// Why the limiter refused it.
    pub reason: String,
}

#[derive(Debug)]
struct RequestLimit {
    counter: Counter,
    requests: u32,
    window_ms: u64,
}

#[derive(Debug)]
struct TokenLimitRt {
    store: Arc<KeyedStore<TokenBudget>>,
    tokens: u32,
    window_ms: u64,
}

#[derive(Debug)]
struct TierRt {
    requests: Vec<RequestLimit>,
    tokens: Vec<TokenLimitRt>,
}

#[derive(Debug)]
struct PolicyRt {
    key: String,
    key_type: RateKeyType,
    header: Option<HeaderName>,
    per_pool: bool,
    default_tier: String,
    soft: Option<SoftLimit>,
    token_estimate: u32,
    tiers: HashMap<String, TierRt>,
}

/// The limits of one table.
#[derive(Debug)]
pub struct TableLimits {
    context: Arc<LimitsContext>,
    policies: Vec<PolicyRt>,
    by_pool: Vec<Vec<usize>>,
}

/// Who a request is, for its limits.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The pool key.
    pub pool: &'a str,
    /// The pool's index in the table.
    pub pool_index: usize,
    /// The consumer and tier, when identified.
    pub consumer: Option<(&'a str, &'a str)>,
    /// The client IP.
    pub client_ip: IpAddr,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// The answer of the limits.
#[derive(Debug)]
pub enum Verdict {
    /// The request may go; add `headers` to the response, settle `tokens` at the end.
    Admitted {
        /// `RateLimit-Policy`, `RateLimit` and, past a soft limit, the warning.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Token reservations to settle.
        tokens: TokenSettlement,
    },
    /// 429: the headers, the wait and what refused.
    Limited {
        /// Response headers including `Retry-After`.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// The refusing policy.
        policy: String,
        /// Its tier.
        tier: String,
        /// Seconds until a retry can pass.
        retry_after: u64,
    },
    /// 503: a global limit could not be checked and its policy fails closed.
    Unavailable {
        /// The policy.
        policy: String,
        /// Seconds before trying again.
        retry_after: u64,
    },
}

/// What a request needs from the limits before it is checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// Some policy of the pool budgets LLM tokens (the body's `max_tokens` matters).
    pub tokens: bool,
}

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
        let mut tokens = TokenSettlement {
            held: Vec::new(),
            clock: Some(self.context.clock.clone()),
        };
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
                        counters.reserved.inc_by(u64::from(want.get()));
                        tokens
                            .held
                            .push((budget.store.clone(), reservation, counters));
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

/// The token counters of one policy and tier.
#[derive(Debug)]
struct TokenCounters {
    reserved: prometheus::IntCounter,
    refunded: prometheus::IntCounter,
    charged: prometheus::IntCounter,
}

impl TokenCounters {
    fn new(metrics: &Metrics, policy: &str, tier: &str) -> Self {
        let c = |kind| metrics.rate_tokens.with_label_values(&[policy, tier, kind]);
        Self {
            reserved: c("reserved"),
            refunded: c("refunded"),
            charged: c("charged"),
        }
    }
}

impl PolicyRt {
    fn tier_for<'a>(&'a self, tier: Option<&'a str>) -> (&'a str, &'a TierRt) {
        if let Some(t) = tier
            && let Some((name, rt)) = self.tiers.get_key_value(t)
        {
            return (name.as_str(), rt);
        }
        let (name, rt) = self
            .tiers
            .get_key_value(&self.default_tier)
            .or_else(|| self.tiers.iter().next())
            .map(|(n, r)| (n.as_str(), r))
            .unwrap_or(("", &EMPTY_TIER));
        (name, rt)
    }

    fn key_bytes(&self, s: &Subject<'_>) -> Vec<u8> {
        let mut key = match self.key_type {
            RateKeyType::Consumer => match s.consumer {
                Some((c, _)) => format!("consumer:{c}").into_bytes(),
                None => format!("ip:{}", s.client_ip).into_bytes(),
            },
            RateKeyType::ClientIp => format!("ip:{}", s.client_ip).into_bytes(),
            RateKeyType::Header => {
                let value = self
                    .header
                    .as_ref()
                    .and_then(|h| s.headers.get(h))
                    .map(HeaderValue::as_bytes);
                [b"header:".as_slice(), value.unwrap_or_default()].concat()
            }
            RateKeyType::Pool => b"pool".to_vec(),
        };
        if self.per_pool || self.key_type == RateKeyType::Pool {
            key.extend_from_slice(b"|");
            key.extend_from_slice(s.pool.as_bytes());
        }
        key
    }
}

static EMPTY_TIER: TierRt = TierRt {
    requests: Vec::new(),
    tokens: Vec::new(),
};

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

/// Token reservations of one request, settled with the usage the agent reports.
/// Reservations neither settled nor kept (see [`UsageWatch`]) are given back when it is
/// dropped: a request refused or failed before an agent answered costs no tokens.
#[derive(Debug, Default)]
pub struct TokenSettlement {
    held: Vec<(Arc<KeyedStore<TokenBudget>>, Reservation, TokenCounters)>,
    /// The clock the reservations were made on: settling must read the same one.
    clock: Option<SharedClock>,
}

impl TokenSettlement {
    /// Whether there is anything to settle.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Settles every reservation with `actual` tokens used.
    pub fn settle(&mut self, actual: u64) {
        self.settle_all(actual);
    }

    /// Takes over `other`'s reservations (a fallback pool's, settled with the same
    /// usage as the primary's).
    pub fn absorb(&mut self, mut other: TokenSettlement) {
        self.held.append(&mut other.held);
        if self.clock.is_none() {
            self.clock = other.clock.take();
        }
    }

    fn settle_all(&mut self, actual: u64) {
        let now = self.clock.as_ref().map_or(0, |c| c.now_nanos());
        for (store, reservation, counters) in self.held.drain(..) {
            let settlement = store.settle(reservation, actual, now);
            counters.refunded.inc_by(settlement.refunded);
            counters.charged.inc_by(settlement.charged);
        }
    }
}

/// Watches a response body for the `usage` an agent reports (in a JSON body, or in
/// the last server-sent event that carries one) and settles the token reservations
/// with it. Without a report, the reservation stands as charged.
#[derive(Debug)]
pub struct UsageWatch {
    tokens: TokenSettlement,
    buffer: Vec<u8>,
    overflowed: bool,
    usage: Option<u64>,
    sse: bool,
}

impl UsageWatch {
    /// Watches a response whose content type is `content_type`.
    pub fn new(tokens: TokenSettlement, sse: bool) -> Self {
        Self {
            tokens,
            buffer: Vec::new(),
            overflowed: false,
            usage: None,
            sse,
        }
    }

    fn scan_lines(&mut self) {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if let Some(data) = line.strip_prefix(b"data:")
                && let Some(total) = usage_total(data.trim_ascii())
            {
                self.usage = Some(total);
            }
        }
    }
}

impl Drop for TokenSettlement {
    /// Gives back what was neither settled nor kept.
    fn drop(&mut self) {
        self.settle_all(0);
    }
}

impl BodyWatch for UsageWatch {
    fn on_data(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        self.buffer.extend_from_slice(data);
        if self.sse {
            self.scan_lines();
        }
        if self.buffer.len() > MAX_BUFFERED_BODY {
            self.overflowed = true;
            self.buffer = Vec::new();
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        if !self.sse && !self.overflowed && end == BodyEnd::Complete {
            self.usage = usage_total(&self.buffer);
        }
        if let Some(total) = self.usage {
            self.tokens.settle(total);
        }
        // No report: the reservation stays charged in full.
        self.tokens.held.clear();
    }
}

/// `usage.total_tokens` (or prompt + completion) of an OpenAI-style JSON document.
pub fn usage_total(json: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let usage = v.get("usage")?;
    usage
        .get("total_tokens")
        .and_then(serde_json::Value::as_u64)
        .or_else(|| {
            let p = usage
                .get("prompt_tokens")
                .and_then(serde_json::Value::as_u64)?;
            let c = usage
                .get("completion_tokens")
                .and_then(serde_json::Value::as_u64)?;
            Some(p + c)
        })
}

/// `max_tokens` (or `max_completion_tokens`) of an OpenAI-style request body.
pub fn requested_tokens(json: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    v.get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
        .and_then(serde_json::Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_settled_reservation_refunds_what_was_not_used() {
        let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: p, namespace: d}\n\
            spec:\n  matches: [{pathPrefix: /}]\n  backends: [{endpoints: [\"127.0.0.1:9\"]}]\n---\n\
            apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\nmetadata: {name: t, namespace: d}\n\
            spec:\n  targetRefs: [{kind: AgentPool, name: p}]\n  key: {type: Pool}\n\
            \x20 tiers: [{name: all, tokenLimits: [{tokens: 100, period: 1h}]}]\n";
        let mut objects = sluice_api::Objects::default();
        sluice_api::manifest::parse_into(yaml, "t.yaml", &mut objects).expect("parses");
        let (table, diags) = sluice_api::compile(&objects);
        assert!(!diags.has_errors(), "{diags}");
        let context = Arc::new(LimitsContext::new(
            None,
            NonZeroUsize::MIN.saturating_add(99),
            Metrics::new(),
            crate::clock::TokioClock::shared(),
        ));
        let limits = context
            .build(&table.policies, &["d/p".to_owned()])
            .expect("limits build");
        let headers = HeaderMap::new();
        let subject = Subject {
            pool: "d/p",
            pool_index: 0,
            consumer: None,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            headers: &headers,
        };
        let Verdict::Admitted { mut tokens, .. } = limits.check(&subject, Some(100)).await else {
            panic!("the whole budget can be reserved once");
        };
        assert!(matches!(
            limits.check(&subject, Some(50)).await,
            Verdict::Limited { .. }
        ));
        tokens.settle(10);
        // 90 of the 100 reserved tokens came back.
        let Verdict::Admitted { tokens, .. } = limits.check(&subject, Some(80)).await else {
            panic!("90 tokens are free");
        };
        // A reservation dropped unsettled (the request failed before an agent
        // answered) is given back whole.
        drop(tokens);
        let Verdict::Admitted { tokens, .. } = limits.check(&subject, Some(90)).await else {
            panic!("the dropped reservation came back");
        };
        // One kept by a response without a usage report stays charged.
        let mut watch = UsageWatch::new(tokens, false);
        watch.on_end(BodyEnd::Dropped);
        drop(watch);
        assert!(matches!(
            limits.check(&subject, Some(1)).await,
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn usage_is_read_from_json_and_the_last_sse_event() {
        assert_eq!(
            usage_total(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#),
            Some(7)
        );
        assert_eq!(
            usage_total(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#),
            Some(7)
        );
        assert_eq!(usage_total(br#"{"choices":[]}"#), None);
        let mut w = UsageWatch::new(TokenSettlement::default(), true);
        w.on_data(&Bytes::from_static(
            b"data: {\"usage\":null}\n\ndata: {\"usage\":{\"total_to",
        ));
        w.on_data(&Bytes::from_static(b"kens\":12}}\n\ndata: [DONE]\n\n"));
        assert_eq!(w.usage, Some(12));
        assert_eq!(requested_tokens(br#"{"max_tokens": 64}"#), Some(64));
        assert_eq!(
            requested_tokens(br#"{"max_completion_tokens": 9}"#),
            Some(9)
        );
        assert_eq!(requested_tokens(b"not json"), None);
    }
}
