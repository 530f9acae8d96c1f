//! What the Redis tests share: a private `redis-server`
//! ([`sluice_ratelimit::testing`]), limiters and backends on it, and counter sums.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use sluice_ratelimit::global::GlobalStatsSnapshot;
use sluice_ratelimit::{
    Clock, GlobalConfig, GlobalLimiter, ManualClock, MonotonicClock, Quota, RedisBackend,
    RedisConfig,
};

pub use sluice_ratelimit::testing::RedisServer;

/// Limiters on a test server.
pub trait Limiters {
    /// A limiter of `quota` on this server, as one proxy has it: a connection of its
    /// own whose calls are cut at `deadline`, and its own clock.
    fn limiter<C: Clock>(
        &self,
        deadline: Duration,
        quota: Quota,
        config: GlobalConfig,
        clock: C,
    ) -> GlobalLimiter<C>;

    /// One limiter per clock: proxies sharing `quota` through this server.
    fn proxies(
        &self,
        clocks: &[Arc<ManualClock>],
        quota: Quota,
        config: GlobalConfig,
    ) -> Vec<Arc<GlobalLimiter<Arc<ManualClock>>>> {
        clocks
            .iter()
            .map(|clock| {
                Arc::new(self.limiter(Duration::from_secs(2), quota, config, Arc::clone(clock)))
            })
            .collect()
    }
}

impl Limiters for RedisServer {
    fn limiter<C: Clock>(
        &self,
        deadline: Duration,
        quota: Quota,
        config: GlobalConfig,
        clock: C,
    ) -> GlobalLimiter<C> {
        GlobalLimiter::new(backend(&self.url(), deadline), quota, config, clock)
    }
}

pub fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

pub fn backend(url: &str, deadline: Duration) -> Arc<RedisBackend> {
    Arc::new(
        RedisBackend::new(
            RedisConfig::new(url)
                .with_deadline(deadline)
                .with_retry_backoff(Duration::from_millis(200)),
            Arc::new(MonotonicClock::new()),
        )
        .unwrap(),
    )
}

/// The Redis statistics of `limiters`, summed.
pub fn total<'a, C: Clock + 'a>(
    limiters: impl IntoIterator<Item = &'a Arc<GlobalLimiter<C>>>,
) -> GlobalStatsSnapshot {
    let mut sum = GlobalStatsSnapshot::default();
    for s in limiters.into_iter().map(|l| l.backend().stats().snapshot()) {
        sum.redis_ops += s.redis_ops;
        sum.redis_errors += s.redis_errors;
        sum.redis_timeouts += s.redis_timeouts;
        sum.lease_admitted += s.lease_admitted;
        sum.lease_denied += s.lease_denied;
        sum.tokens_leased += s.tokens_leased;
        sum.tokens_returned += s.tokens_returned;
    }
    sum
}
