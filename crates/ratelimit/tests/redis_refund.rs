//! A global charge given back ([`GlobalLimiter::refund`]) leaves the shared budget as
//! if the request had not come: through the lease while it lasts, through Redis once
//! it expired, and to the local fallback limiter while Redis is down.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use sluice_ratelimit::{
    FailureMode, GlobalConfig, GlobalDecision, GlobalKey, GlobalLimiter, ManualClock, Quota,
};
use support::{RedisServer, backend, nz};

/// One request a lease: every admitted request is a token taken from Redis.
fn config(mode: FailureMode) -> GlobalConfig {
    GlobalConfig {
        max_lease: NonZeroU32::MIN,
        ..GlobalConfig::new(mode)
    }
}

async fn check(limiter: &GlobalLimiter<Arc<ManualClock>>, key: &GlobalKey) -> GlobalDecision {
    limiter.check(key, NonZeroU32::MIN).await.expect("fits")
}

/// Spends the key until refused; the number admitted.
async fn spend_all(limiter: &GlobalLimiter<Arc<ManualClock>>, key: &GlobalKey) -> u32 {
    let mut admitted = 0;
    while check(limiter, key).await.is_allowed() {
        admitted += 1;
        assert!(admitted <= 100, "never refused");
    }
    admitted
}

#[tokio::test]
async fn refunds_go_back_to_the_lease_then_to_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let quota = Quota::per_period(nz(5), Duration::from_secs(3_600)).expect("quota");
    let clock = Arc::new(ManualClock::new(0));
    let limiter = GlobalLimiter::new(
        backend(&server.url(), Duration::from_secs(2)),
        quota,
        config(FailureMode::Closed),
        Arc::clone(&clock),
    );
    let key = GlobalKey::new("refund-test", &[b"k"]);

    // Ten requests admitted and given back cost nothing, and one Redis call.
    for _ in 0..10 {
        let GlobalDecision::Decided {
            decision, charge, ..
        } = check(&limiter, &key).await
        else {
            panic!("Redis answers");
        };
        assert!(decision.is_allowed());
        assert!(!charge.is_none());
        limiter.refund(&key, charge);
    }
    assert_eq!(limiter.backend().stats().snapshot().redis_ops, 1);

    // A refund into a lease that expires goes back to Redis with the next refill.
    let GlobalDecision::Decided { charge, .. } = check(&limiter, &key).await else {
        panic!("Redis answers");
    };
    clock.advance(Duration::from_secs(2));
    limiter.refund(&key, charge);
    assert_eq!(
        spend_all(&limiter, &key).await,
        5,
        "the whole budget is left"
    );
    let GlobalDecision::Decided { charge, .. } = check(&limiter, &key).await else {
        panic!("Redis answers");
    };
    assert!(charge.is_none(), "a refusal charged nothing");
}

#[tokio::test]
async fn refunds_go_back_to_the_fallback_while_redis_is_down() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    server.stop();
    let quota = Quota::per_period(nz(2), Duration::from_secs(3_600)).expect("quota");
    let limiter = GlobalLimiter::new(
        backend(&url, Duration::from_millis(200)),
        quota,
        config(FailureMode::Open),
        Arc::new(ManualClock::new(0)),
    );
    let key = GlobalKey::new("refund-fallback", &[b"k"]);
    for _ in 0..5 {
        let GlobalDecision::Decided {
            decision, charge, ..
        } = check(&limiter, &key).await
        else {
            panic!("open never answers unavailable");
        };
        assert!(decision.is_allowed());
        limiter.refund(&key, charge);
    }
    assert_eq!(spend_all(&limiter, &key).await, 2);
}
