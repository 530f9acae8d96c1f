//! Counters for the global limiter, for the proxy to export (as
//! `sluice_ratelimit_redis_*` and `sluice_ratelimit_lease_*`, say).
//!
//! Everything is a monotonic counter or a cumulative histogram in plain atomics:
//! no metrics library here. [`GlobalStats::snapshot`] reads them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the Redis latency histogram buckets, in microseconds
/// (Prometheus-style `le` bounds; the last bucket is `+Inf`).
pub const LATENCY_BUCKETS_MICROS: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// Live counters of one [`RedisBackend`](super::RedisBackend) and the limiters
/// using it.
#[derive(Debug, Default)]
pub struct GlobalStats {
    redis_ops: AtomicU64,
    redis_errors: AtomicU64,
    redis_timeouts: AtomicU64,
    redis_skipped: AtomicU64,
    latency_count: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
    latency_sum_micros: AtomicU64,
    lease_admitted: AtomicU64,
    lease_denied: AtomicU64,
    tokens_leased: AtomicU64,
    tokens_returned: AtomicU64,
    fallback_decisions: AtomicU64,
    unavailable_decisions: AtomicU64,
}

/// A point-in-time copy of [`GlobalStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalStatsSnapshot {
    /// Redis round trips attempted (script calls), whatever their outcome.
    pub redis_ops: u64,
    /// Redis calls that failed (connection, protocol or script errors).
    pub redis_errors: u64,
    /// Redis calls abandoned at the deadline.
    pub redis_timeouts: u64,
    /// Calls not attempted because Redis failed recently (circuit open).
    pub redis_skipped: u64,
    /// Cumulative latency histogram of completed Redis calls: entry `i` counts
    /// calls at most [`LATENCY_BUCKETS_MICROS`]`[i]` µs; the last is `+Inf`.
    pub latency_buckets: [u64; LATENCY_BUCKETS_MICROS.len() + 1],
    /// Sum of completed Redis calls' latencies, in microseconds.
    pub latency_sum_micros: u64,
    /// Requests decided from a local lease or a cached refusal, without Redis.
    pub lease_admitted: u64,
    /// Requests refused locally because Redis recently said the key is spent.
    pub lease_denied: u64,
    /// Tokens taken from Redis into leases.
    pub tokens_leased: u64,
    /// Unused lease tokens sent back to Redis.
    pub tokens_returned: u64,
    /// Requests decided by the local fallback limiter (failure mode open).
    pub fallback_decisions: u64,
    /// Requests answered "unavailable" (failure mode closed).
    pub unavailable_decisions: u64,
}

impl GlobalStats {
    /// Reads every counter.
    #[must_use]
    pub fn snapshot(&self) -> GlobalStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut latency_buckets = [0; LATENCY_BUCKETS_MICROS.len() + 1];
        let mut cumulative = 0;
        for (bucket, count) in latency_buckets.iter_mut().zip(&self.latency_count) {
            cumulative += load(count);
            *bucket = cumulative;
        }
        GlobalStatsSnapshot {
            redis_ops: load(&self.redis_ops),
            redis_errors: load(&self.redis_errors),
            redis_timeouts: load(&self.redis_timeouts),
            redis_skipped: load(&self.redis_skipped),
            latency_buckets,
            latency_sum_micros: load(&self.latency_sum_micros),
            lease_admitted: load(&self.lease_admitted),
            lease_denied: load(&self.lease_denied),
            tokens_leased: load(&self.tokens_leased),
            tokens_returned: load(&self.tokens_returned),
            fallback_decisions: load(&self.fallback_decisions),
            unavailable_decisions: load(&self.unavailable_decisions),
        }
    }

    pub(crate) fn op(&self) {
        self.redis_ops.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timeout(&self) {
        self.redis_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn skipped(&self) {
        self.redis_skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        if let Some(count) = self.latency_count.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn lease_admitted(&self) {
        self.lease_admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lease_denied(&self) {
        self.lease_denied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn leased(&self, tokens: u32, returned: u32) {
        self.tokens_leased
            .fetch_add(u64::from(tokens), Ordering::Relaxed);
        self.tokens_returned
            .fetch_add(u64::from(returned), Ordering::Relaxed);
    }

    pub(crate) fn fallback(&self) {
        self.fallback_decisions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unavailable(&self) {
        self.unavailable_decisions.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_is_cumulative() {
        let stats = GlobalStats::default();
        stats.latency(Duration::from_micros(80));
        stats.latency(Duration::from_micros(300));
        stats.latency(Duration::from_secs(1));
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.latency_buckets[0], 1);
        assert_eq!(snapshot.latency_buckets[2], 2);
        assert_eq!(
            snapshot.latency_buckets[LATENCY_BUCKETS_MICROS.len() - 1],
            2
        );
        assert_eq!(snapshot.latency_buckets[LATENCY_BUCKETS_MICROS.len()], 3);
        assert_eq!(snapshot.latency_sum_micros, 1_000_380);
    }
}
