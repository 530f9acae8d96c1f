//! Global limits shared by every proxy replica, kept in Redis.
//!
//! # Design
//!
//! * **One atomic script on Redis's clock.** GCRA runs inside Redis as a Lua
//!   script that reads `TIME`, so the proxies' own clocks never enter a decision
//!   and replicas with skewed clocks agree ([`RedisBackend`]).
//! * **Leases.** A [`GlobalLimiter`] takes tokens for a hot key in batches (a
//!   lease of up to `max_lease` tokens, growing while the key stays busy and
//!   shrinking when tokens go unused) and spends them locally with a
//!   compare-and-exchange, so steady traffic needs one Redis call per lease, not
//!   per request. A lease expires after `lease_ttl` (local clock); its unused
//!   tokens go back to Redis with the next call for that key. A refusal from
//!   Redis is remembered locally for its `Retry-After`, so a spent key costs no
//!   Redis call per refused request either.
//! * **Over-admission is bounded.** Tokens are taken from Redis *before* they are
//!   spent, so the number of requests admitted can never exceed what Redis's
//!   GCRA granted: a burst of concurrent requests against a budget of 100 admits
//!   at most 100 across all proxies. Leases only shift *when* a token is spent:
//!   tokens leased before a window starts may be spent inside it, so over any
//!   window the count may exceed the limit by at most one lease per proxy and
//!   key (`max_lease × proxies`), and only when the window follows a quieter
//!   one. The cost is the other way: tokens held in other proxies' leases may
//!   make a proxy refuse while Redis still had a few (at most the same bound,
//!   for at most `lease_ttl`).
//! * **Token budgets too.** [`GlobalBudget`] keeps an LLM token budget in the same
//!   script: a reservation and a settlement are one call each (see its module).
//! * **Refunds are local.** A request admitted here and then refused by another
//!   limit (or moved to another pool) gives its token back with
//!   [`GlobalLimiter::refund`]: into the key's lease, from which the next request
//!   spends it or the next refill returns it to Redis, so a refund costs no Redis
//!   call either. A token taken in a call of its own (the lease table full) stays
//!   spent: the limit errs strict.
//! * **Failure is explicit.** Every Redis call has a deadline; errors open a
//!   short circuit breaker. The caller's [`FailureMode`] decides what a request
//!   gets meanwhile: `Open` falls back to a local per-key limiter with the same
//!   (or a configured) quota, `Closed` answers [`GlobalDecision::Unavailable`]
//!   (a 503). A check never waits longer than the deadline, and never panics.

mod budget;
mod lease;
mod redis;
pub mod stats;

use std::time::Duration;

use sha2::{Digest, Sha256};

pub use self::budget::{BudgetDecision, GlobalBudget, GlobalReservation};
pub use self::lease::{GlobalCharge, GlobalConfig, GlobalLimiter};
pub use self::redis::{DEFAULT_DEADLINE, DEFAULT_RETRY_BACKOFF, RedisBackend, RedisConfig};
pub use self::stats::{GlobalStats, GlobalStatsSnapshot};
use crate::decision::Decision;
use crate::key::KeyHash;

/// What a global check does while Redis is unreachable or slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureMode {
    /// Decide with a local limiter (per proxy, so the effective limit is
    /// multiplied by the number of replicas unless a smaller fallback quota is
    /// configured).
    Open,
    /// Refuse with [`GlobalDecision::Unavailable`] (503).
    Closed,
}

/// Where a global decision came from, for metrics and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionSource {
    /// Spent from a local lease, or refused from a remembered Redis refusal.
    Lease,
    /// Decided by a Redis call made for this request.
    Redis,
    /// Redis unavailable, failure mode open: decided by the local fallback.
    Fallback,
}

/// The answer of [`GlobalLimiter::check`].
#[derive(Debug)]
pub enum GlobalDecision {
    /// A rate-limit decision (429 when denied).
    Decided {
        /// Admitted or refused, as for a local limit.
        decision: Decision,
        /// Where it came from.
        source: DecisionSource,
        /// What an admitted request was charged, for [`GlobalLimiter::refund`].
        charge: GlobalCharge,
    },
    /// Redis is unavailable and the failure mode is closed: answer 503.
    Unavailable {
        /// When to try again (the circuit breaker's remaining backoff).
        retry_after: Duration,
        /// Why Redis could not decide.
        error: GlobalError,
    },
}

impl GlobalDecision {
    /// Returns `true` if the request is admitted.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Decided { decision, .. } if decision.is_allowed())
    }
}

/// Why Redis could not decide.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    /// The Redis URL is invalid. A configuration error, found when the backend
    /// is built; not retryable.
    #[error("invalid Redis URL")]
    InvalidUrl {
        /// The parse error.
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis did not answer within the deadline (slow, overloaded or
    /// unreachable). Retryable.
    #[error("Redis did not answer within {deadline:?}")]
    Timeout {
        /// The configured deadline.
        deadline: Duration,
    },
    /// Connecting to Redis, or the script call, failed (connection refused or
    /// reset, server error). Retryable: the connection is re-established in the
    /// background.
    #[error("Redis call failed")]
    Redis {
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// Not attempted: a call failed less than the retry backoff ago. Retryable
    /// after `retry_in`.
    #[error("Redis failed recently; next attempt in {retry_in:?}")]
    CircuitOpen {
        /// Until the next attempt.
        retry_in: Duration,
    },
}

impl GlobalError {
    /// Returns `true` if the same call may succeed later.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::InvalidUrl { .. })
    }
}

/// A key of a global limit: the Redis key (a digest, so no API key or address
/// is ever stored in Redis) and the local hash of the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobalKey {
    redis_key: String,
    hash: KeyHash,
}

impl GlobalKey {
    /// Builds the key for `parts` in `scope`.
    ///
    /// `scope` names the limit in Redis (`policy/tier`, say) and should change
    /// whenever its quota does (append the rate: `team-a/premium/500per60s`), so
    /// that replicas on different configurations never share a state. The parts
    /// are hashed with SHA-256, the same on every replica.
    #[must_use]
    pub fn new(scope: &str, parts: &[&[u8]]) -> Self {
        let mut digest = Sha256::new();
        for part in parts {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        let digest = digest.finalize();
        let mut hex = String::with_capacity(32);
        for byte in &digest[..16] {
            hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
        }
        let mut low = [0_u8; 8];
        low.copy_from_slice(&digest[16..24]);
        Self {
            redis_key: format!("sluice:rl:{scope}:{hex}"),
            hash: KeyHash(u64::from_le_bytes(low)),
        }
    }

    /// The key in Redis.
    #[must_use]
    pub fn redis_key(&self) -> &str {
        &self.redis_key
    }

    /// The key's local hash (for the lease table and the fallback limiter).
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_digests_that_hide_the_parts() {
        let key = GlobalKey::new("policy/premium", &[b"sk-secret-api-key"]);
        assert_eq!(
            key,
            GlobalKey::new("policy/premium", &[b"sk-secret-api-key"])
        );
        assert!(key.redis_key().starts_with("sluice:rl:policy/premium:"));
        assert!(!key.redis_key().contains("secret"));
        assert_eq!(
            key.redis_key().len(),
            "sluice:rl:policy/premium:".len() + 32
        );
        assert_ne!(
            key,
            GlobalKey::new("policy/standard", &[b"sk-secret-api-key"])
        );
        assert_ne!(
            GlobalKey::new("p", &[b"ab", b"c"]).hash(),
            GlobalKey::new("p", &[b"a", b"bc"]).hash()
        );
    }

    #[test]
    fn only_invalid_urls_are_not_retryable() {
        let error = RedisBackend::new(
            RedisConfig::new("not a url"),
            std::sync::Arc::new(crate::MonotonicClock::new()),
        )
        .unwrap_err();
        assert!(matches!(error, GlobalError::InvalidUrl { .. }));
        assert!(!error.is_retryable());
        assert!(
            GlobalError::Timeout {
                deadline: DEFAULT_DEADLINE
            }
            .is_retryable()
        );
    }
}
