//! RatePolicies at run time: whether a request may go, by its consumer, client IP,
//! header or pool, and the headers that tell the client where it stands.
//!
//! Built once per route table. Counters live in bounded keyed stores that carry over
//! to the next table when their quota is unchanged, so publishing a table never resets
//! a limit. A request is checked against every limit of every policy on its pool at
//! once: admitted only if all admit, and a refusal charges none. Global policies keep
//! their counters in Redis (request limits through leases, token budgets with a call
//! to reserve and one to settle); LLM token budgets reserve at admission and settle
//! when the agent reports its usage. A soft limit warns from its share of any limit:
//! local or global, requests or tokens.
//!
//! * this module: building a table's limits ([`LimitsContext::build`]) and the types
//!   a check speaks in;
//! * `check`: checking a request against every limit of its pool, in an order that
//!   lets a refusal charge nothing;
//! * `keys`: what the key stores hold and forget, for the metrics;
//! * `refund`: what an admitted request was charged, to give back when it moves to
//!   another pool;
//! * `report`: the `RateLimit` headers of the binding limit and the soft-limit
//!   warning;
//! * [`tokens`]: LLM token reservations and their settlement from the reported usage;
//! * [`request`]: the request path's step: reading `max_tokens` when a budget needs it,
//!   checking, and turning the verdict into response headers or a refusal.

mod check;
mod keys;
mod refund;
mod report;
pub mod request;
pub mod tokens;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_api::table::{
    Enforcement, FailureMode as TableFailureMode, Policy, RateAlgorithm, RateKeyType, Scope,
};
use sluice_ratelimit::{
    BudgetQuota, FailureMode, Gcra, GlobalBudget, GlobalConfig, GlobalLimiter, KeyHasher,
    KeyedStore, Quota, RedisBackend, SlidingWindow, SoftLimit, StoreConfig, TokenBudget,
    WindowQuota,
};

pub use refund::Charged;
pub use request::{RateOutcome, check_request, requested_tokens};
pub use tokens::{TokenCounts, TokenSettlement, TokenStats, UsageWatch, usage_total};

use crate::access_log::LimitRecord;
use crate::clock::SharedClock;
use crate::hygiene::client_ip::push_ip;
use crate::metrics::Metrics;

/// Keys one store tracks at most, unless configured otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The largest request body read to find `max_tokens`.
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;
/// The warning header added once a soft limit is reached.
pub const WARNING_HEADER: &str = "x-sluice-ratelimit-warning";
/// The header naming the dry-run policy that would have refused a request.
pub const DRY_RUN_HEADER: &str = "x-sluice-ratelimit-dry-run";

/// The shared pieces every table's limits are built from.
#[derive(Debug)]
pub struct LimitsContext {
    hasher: KeyHasher,
    clock: SharedClock,
    redis: Option<Arc<RedisBackend>>,
    max_keys: NonZeroUsize,
    stores: Mutex<HashMap<String, Counter>>,
    exported: Mutex<keys::Exported>,
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
    GlobalTokens(Arc<GlobalBudget<SharedClock>>),
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
            exported: Mutex::default(),
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
                    "{}|{name}|t{i}|{:?}|{}|{}",
                    policy.key,
                    policy.scope,
                    l.tokens,
                    l.period.as_millis()
                );
                let counter = match stores.get(&id).or_else(|| used.get(&id)).cloned() {
                    Some(c) => c,
                    None => {
                        let quota = BudgetQuota::per_period(l.tokens, l.period.get())
                            .map_err(|e| refused(name, e.to_string()))?;
                        self.new_budget(policy, quota)
                    }
                };
                used.insert(id, counter.clone());
                tokens.push(TokenLimitRt {
                    counter,
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
            dry_run: policy.enforcement == Enforcement::DryRun,
            tiers,
        })
    }

    /// The counter of a token budget of `quota` in `policy`'s scope.
    fn new_budget(&self, policy: &Policy, quota: BudgetQuota) -> Counter {
        let local = || {
            Counter::Tokens(Arc::new(KeyedStore::new(
                quota,
                StoreConfig::new(self.max_keys),
            )))
        };
        match (policy.scope, &self.redis) {
            (Scope::Local, _) => local(),
            (Scope::Global, Some(redis)) => Counter::GlobalTokens(Arc::new(GlobalBudget::new(
                redis.clone(),
                quota,
                failure_mode(policy.failure_mode),
                self.max_keys,
                self.clock.clone(),
            ))),
            // No Redis: the failure mode decides, as if it were down.
            (Scope::Global, None) if policy.failure_mode == TableFailureMode::Open => local(),
            (Scope::Global, None) => Counter::NoStore,
        }
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
                    Some(redis) => Counter::Global(Arc::new(GlobalLimiter::new(
                        redis.clone(),
                        quota,
                        GlobalConfig::new(failure_mode(policy.failure_mode)),
                        self.clock.clone(),
                    ))),
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

fn failure_mode(mode: TableFailureMode) -> FailureMode {
    match mode {
        TableFailureMode::Open => FailureMode::Open,
        TableFailureMode::Closed => FailureMode::Closed,
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
    /// `Tokens`, `GlobalTokens` or `NoStore`.
    counter: Counter,
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
    /// `enforcement: DryRun`: counted and reported, never refusing.
    dry_run: bool,
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
        /// What the request limits charged, to give back if the request moves.
        charged: Charged,
        /// The dry-run policy that would have refused the request, as its
        /// `RateLimit-Policy` item (`"ns/policy/tier";q=50;w=60`).
        dry_run: Option<String>,
        /// The limit the `RateLimit` headers report, with what it has left.
        binding: Option<LimitRecord>,
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

impl PolicyRt {
    fn tier_for(&self, tier: Option<&str>) -> (&str, &TierRt) {
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
        // Put together without `format!`, which costs more than the rest of the key's
        // work (`ip:` and the address as `Display` writes it).
        let ip = || {
            let mut key = String::with_capacity(20);
            key.push_str("ip:");
            push_ip(&mut key, s.client_ip);
            key.into_bytes()
        };
        let mut key = match self.key_type {
            RateKeyType::Consumer => match s.consumer {
                Some((c, _)) => [b"consumer:".as_slice(), c.as_bytes()].concat(),
                None => ip(),
            },
            RateKeyType::ClientIp => ip(),
            // A caller without the header (or with it empty) is keyed by client IP,
            // as an anonymous caller of a Consumer key is: callers that leave the
            // header out neither share one bucket nor escape the limit.
            RateKeyType::Header => match self
                .header
                .as_ref()
                .and_then(|h| s.headers.get(h))
                .map(HeaderValue::as_bytes)
                .filter(|v| !v.is_empty())
            {
                Some(value) => [b"header:".as_slice(), value].concat(),
                None => ip(),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a caller is counted under name its counters in Redis too, where
    /// replicas of every version meet: they stay what `format!` wrote.
    #[test]
    fn limit_keys_are_spelled_as_before() {
        let policy = |key_type, per_pool| PolicyRt {
            key: "ns/policy".into(),
            key_type,
            header: Some(HeaderName::from_static("x-user")),
            per_pool,
            default_tier: "standard".into(),
            soft: None,
            token_estimate: 0,
            dry_run: false,
            tiers: HashMap::new(),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        let empty = HeaderMap::new();
        for ip in [
            "10.0.0.1",
            "203.0.113.255",
            "0.0.0.0",
            "2001:db8::7",
            "::ffff:10.1.2.3",
        ] {
            let client_ip: IpAddr = ip.parse().expect("ip");
            let subject = |consumer, headers| Subject {
                pool: "ns/pool",
                pool_index: 0,
                consumer,
                client_ip,
                headers,
            };
            let by_ip = format!("ip:{client_ip}").into_bytes();
            let cases = [
                (RateKeyType::ClientIp, subject(None, &empty), by_ip.clone()),
                (RateKeyType::Consumer, subject(None, &empty), by_ip.clone()),
                (
                    RateKeyType::Consumer,
                    subject(Some(("bob", "gold")), &empty),
                    b"consumer:bob".to_vec(),
                ),
                (
                    RateKeyType::Header,
                    subject(None, &headers),
                    b"header:alice".to_vec(),
                ),
                (RateKeyType::Header, subject(None, &empty), by_ip.clone()),
            ];
            for (key_type, subject, expected) in cases {
                assert_eq!(
                    policy(key_type, false).key_bytes(&subject),
                    expected,
                    "{ip}"
                );
                let mut pooled = expected.clone();
                pooled.extend_from_slice(b"|ns/pool");
                assert_eq!(policy(key_type, true).key_bytes(&subject), pooled, "{ip}");
            }
            assert_eq!(
                policy(RateKeyType::Pool, false).key_bytes(&subject(None, &empty)),
                b"pool|ns/pool"
            );
        }
    }
}
