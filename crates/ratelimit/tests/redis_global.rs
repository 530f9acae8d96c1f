//! Global limits against a real `redis-server` started by the test (Debian
//! package `redis-server`). Without it on PATH these tests fail, unless
//! `SLUICE_SKIP_REDIS=1` says to skip them.
//!
//! These are the only tests here that wait in real time: for the server to start
//! and, after a restart, for the connection to come back.

mod support;

use std::num::NonZeroU32;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sluice_ratelimit::{
    DecisionSource, FailureMode, GlobalConfig, GlobalDecision, GlobalKey, ManualClock,
    MonotonicClock, Quota,
};
use support::{Limiters, RedisServer, nz, total};

/// Three proxies (own connection, own clock, skewed by hours) share a budget of
/// 100 per hour; 3 × 400 concurrent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_proxies_admit_at_most_the_budget_under_a_burst() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let quota = Quota::per_period(nz(100), Duration::from_secs(3_600)).unwrap();
    let config = GlobalConfig::new(FailureMode::Closed);
    let clocks = [0, 3_600, 7_200].map(|hours| Arc::new(ManualClock::new(hours * 1_000_000_000)));
    let proxies = server.proxies(&clocks, quota, config);
    let key = GlobalKey::new("burst-test", &[b"consumer-1"]);
    let admitted = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for proxy in &proxies {
        for _ in 0..400 {
            let (proxy, key, admitted) = (Arc::clone(proxy), key.clone(), Arc::clone(&admitted));
            tasks.push(tokio::spawn(async move {
                match proxy.check(&key, NonZeroU32::MIN).await.unwrap() {
                    GlobalDecision::Decided { decision, .. } => {
                        if decision.is_allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    GlobalDecision::Unavailable { error, .. } => panic!("Redis failed: {error}"),
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = total(&proxies);
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = 100 + 3 * config.max_lease.get();
    println!(
        "burst: 1200 requests on 3 proxies, budget 100: admitted {admitted} (bound {bound}), \
         over-admission {}, Redis ops {} ({:.3} per request), tokens leased {}",
        admitted.saturating_sub(100),
        stats.redis_ops,
        stats.redis_ops as f64 / 1_200.0,
        stats.tokens_leased,
    );
    assert!(
        admitted <= 100,
        "leases are taken before they are spent: {admitted}"
    );
    assert!(
        admitted >= 90,
        "at most a few tokens stranded in leases: {admitted}"
    );
    assert_eq!(stats.redis_errors + stats.redis_timeouts, 0);
    assert!(
        stats.redis_ops < 1_200 / 4,
        "refusals are remembered locally"
    );
}

/// Steady traffic under the limit: count Redis calls per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_cut_redis_calls_for_steady_traffic() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // 100M per hour (Redis's clock runs in real time), burst 10 000: never the
    // bottleneck here.
    let quota = Quota::per_period(nz(100_000_000), Duration::from_secs(3_600))
        .unwrap()
        .with_burst(nz(10_000));
    let config = GlobalConfig::new(FailureMode::Closed);
    let clocks: Vec<_> = (0..3).map(|_| Arc::new(ManualClock::new(0))).collect();
    let proxies = server.proxies(&clocks, quota, config);
    let keys: Vec<_> = (0..4_u8)
        .map(|i| GlobalKey::new("steady", &[&[i]]))
        .collect();
    let mut admitted = 0;
    let requests: u32 = 3 * 4 * 500;
    for round in 0..500 {
        for (proxy, clock) in proxies.iter().zip(&clocks) {
            // 2 ms between rounds on every proxy's clock: leases (1 s) get used up
            // long before they expire.
            clock.advance(Duration::from_millis(2));
            for key in &keys {
                if proxy
                    .check(key, NonZeroU32::MIN)
                    .await
                    .unwrap()
                    .is_allowed()
                {
                    admitted += 1;
                }
            }
        }
        let _ = round;
    }
    let stats = total(&proxies);
    println!(
        "steady: {requests} requests (3 proxies x 4 keys), admitted {admitted}, Redis ops {} \
         ({:.3} per request), lease hits {}",
        stats.redis_ops,
        stats.redis_ops as f64 / f64::from(requests),
        stats.lease_admitted,
    );
    assert_eq!(admitted, requests);
    assert!(
        stats.redis_ops * 8 <= u64::from(requests),
        "at most one Redis call per 8 requests: {}",
        stats.redis_ops
    );
}

/// Expired leases give their tokens back: a proxy that leased and went quiet
/// does not starve another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_give_tokens_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let quota = Quota::per_period(nz(100), Duration::from_secs(3_600)).unwrap();
    let config = GlobalConfig::new(FailureMode::Closed);
    let clock_a = Arc::new(ManualClock::new(0));
    let clock_b = Arc::new(ManualClock::new(0));
    let a = server.limiter(Duration::from_secs(2), quota, config, Arc::clone(&clock_a));
    let b = server.limiter(Duration::from_secs(2), quota, config, Arc::clone(&clock_b));
    let key = GlobalKey::new("give-back", &[b"k"]);
    // A spends 90 (its leases grow to 10 tokens), then goes quiet holding some.
    let mut admitted = 0;
    for _ in 0..90 {
        admitted += u32::from(a.check(&key, NonZeroU32::MIN).await.unwrap().is_allowed());
    }
    assert_eq!(admitted, 90);
    // B takes what Redis has left; A's lease still holds the rest.
    let mut b_admitted = 0;
    for _ in 0..20 {
        b_admitted += u32::from(b.check(&key, NonZeroU32::MIN).await.unwrap().is_allowed());
    }
    // A's lease expires; its next call returns the unused tokens. Then B can
    // take them (its remembered refusal expired meanwhile too).
    clock_a.advance(Duration::from_secs(2));
    clock_b.advance(Duration::from_secs(3_600));
    assert!(!a.check(&key, nz(100)).await.unwrap().is_allowed());
    let mut late = 0;
    for _ in 0..20 {
        late += u32::from(b.check(&key, NonZeroU32::MIN).await.unwrap().is_allowed());
    }
    let returned = a.backend().stats().snapshot().tokens_returned;
    println!("A admitted 90, B {b_admitted} then {late} more after A returned {returned} tokens");
    assert!(returned > 0);
    assert_eq!(
        admitted + b_admitted + late,
        100,
        "every token is spent exactly once"
    );
}

/// Redis killed: open admits through the local fallback, closed answers
/// unavailable, every call within the deadline; after a restart on the same
/// port, decisions come from Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_follows_the_failure_mode_and_reconnects() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let deadline = Duration::from_millis(50);
    let quota = Quota::per_period(nz(5), Duration::from_secs(60)).unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let open = server.limiter(
        deadline,
        quota,
        GlobalConfig::new(FailureMode::Open),
        Arc::clone(&clock),
    );
    let closed = server.limiter(
        deadline,
        quota,
        GlobalConfig::new(FailureMode::Closed),
        Arc::clone(&clock),
    );
    let key = GlobalKey::new("failure", &[b"k"]);
    assert!(matches!(
        open.check(&key, NonZeroU32::MIN).await.unwrap(),
        GlobalDecision::Decided {
            source: DecisionSource::Redis,
            ..
        }
    ));
    assert!(
        closed
            .check(&GlobalKey::new("failure", &[b"other"]), NonZeroU32::MIN)
            .await
            .unwrap()
            .is_allowed()
    );

    let port = server.stop();
    // Fresh keys, so no lease can answer: every check needs Redis.
    let mut fallback_admitted = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..20_u32 {
        let key = GlobalKey::new("failure", &[&i.to_le_bytes()]);
        let started = Instant::now();
        let open_decision = open.check(&key, NonZeroU32::MIN).await.unwrap();
        let closed_decision = closed.check(&key, NonZeroU32::MIN).await.unwrap();
        slowest = slowest.max(started.elapsed() / 2);
        match open_decision {
            GlobalDecision::Decided {
                decision, source, ..
            } => {
                assert_eq!(source, DecisionSource::Fallback);
                fallback_admitted += u32::from(decision.is_allowed());
            }
            GlobalDecision::Unavailable { .. } => panic!("open never answers unavailable"),
        }
        let GlobalDecision::Unavailable { retry_after, error } = closed_decision else {
            panic!("closed must answer unavailable while Redis is down");
        };
        assert!(error.is_retryable());
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200));
    }
    // The fallback is a real limiter: per key, the quota applies locally.
    let same = GlobalKey::new("failure", &[b"same"]);
    let mut same_admitted = 0;
    for _ in 0..10 {
        same_admitted += u32::from(
            open.check(&same, NonZeroU32::MIN)
                .await
                .unwrap()
                .is_allowed(),
        );
    }
    let stats = open.backend().stats().snapshot();
    println!(
        "Redis down: slowest check {slowest:?} (deadline {deadline:?}); open: {fallback_admitted}/20 \
         admitted by the fallback, {same_admitted}/10 on one key; {} errors, {} timeouts, {} skipped",
        stats.redis_errors, stats.redis_timeouts, stats.redis_skipped
    );
    assert_eq!(fallback_admitted, 20);
    assert_eq!(same_admitted, 5);
    assert!(
        slowest < deadline + Duration::from_millis(100),
        "a check took {slowest:?}"
    );

    let _restarted = RedisServer::start_on(port).unwrap();
    let started = Instant::now();
    loop {
        let key = GlobalKey::new(
            "after-restart",
            &[&started.elapsed().as_nanos().to_le_bytes()],
        );
        if let GlobalDecision::Decided {
            source: DecisionSource::Redis,
            decision,
            ..
        } = open.check(&key, NonZeroU32::MIN).await.unwrap()
        {
            assert!(decision.is_allowed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reconnection after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("reconnected {:?} after the restart", started.elapsed());
    // The closed limiter comes back too, once its backoff has passed.
    loop {
        let key = GlobalKey::new(
            "after-restart-closed",
            &[&started.elapsed().as_nanos().to_le_bytes()],
        );
        if closed
            .check(&key, NonZeroU32::MIN)
            .await
            .unwrap()
            .is_allowed()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "closed: no reconnection after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A slow Redis (the server stopped with SIGSTOP) is cut off at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_cut_off_at_the_deadline() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let deadline = Duration::from_millis(50);
    let quota = Quota::per_period(nz(5), Duration::from_secs(60)).unwrap();
    let limiter = server.limiter(
        deadline,
        quota,
        GlobalConfig::new(FailureMode::Closed),
        ManualClock::new(0),
    );
    assert!(
        limiter
            .check(&GlobalKey::new("stall", &[b"warm"]), NonZeroU32::MIN)
            .await
            .unwrap()
            .is_allowed()
    );
    let pid = server.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let decision = limiter
        .check(&GlobalKey::new("stall", &[b"k"]), NonZeroU32::MIN)
        .await
        .unwrap();
    let took = started.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    println!("stalled Redis: answered {decision:?} after {took:?}");
    assert!(matches!(decision, GlobalDecision::Unavailable { .. }));
    assert!(took >= deadline && took < deadline + Duration::from_millis(100));
    assert_eq!(limiter.backend().stats().snapshot().redis_timeouts, 1);
}

/// Three proxies hammer one key for 1.5 s of real time at ~10× its rate: over
/// the run, admitted requests stay within GCRA's bound (burst + elapsed / T)
/// plus at most one lease per proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_overload_stays_within_the_lease_bound() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // 100 per second (T = 10 ms), burst 200: leases of up to 16 tokens.
    let quota = Quota::per_period(nz(100), Duration::from_secs(1))
        .unwrap()
        .with_burst(nz(200));
    let config = GlobalConfig::new(FailureMode::Closed);
    let key = GlobalKey::new("sustained", &[b"k"]);
    let started = Instant::now();
    let run = Duration::from_millis(1_500);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let limiter = server.limiter(Duration::from_secs(1), quota, config, MonotonicClock::new());
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut requests) = (0_u64, 0_u64);
            while started.elapsed() < run {
                requests += 1;
                match limiter.check(&key, NonZeroU32::MIN).await.unwrap() {
                    GlobalDecision::Decided { decision, .. } => {
                        admitted += u64::from(decision.is_allowed());
                    }
                    GlobalDecision::Unavailable { error, .. } => panic!("{error}"),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (
                admitted,
                requests,
                limiter.backend().stats().snapshot().redis_ops,
            )
        }));
    }
    let (mut admitted, mut requests, mut ops) = (0, 0, 0);
    for task in tasks {
        let (a, r, o) = task.await.unwrap();
        admitted += a;
        requests += r;
        ops += o;
    }
    let elapsed = started.elapsed();
    let exact = 200 + (elapsed.as_millis() as u64).div_ceil(10);
    let bound = exact + 3 * 16;
    println!(
        "sustained: {requests} requests in {elapsed:?} on 3 proxies, admitted {admitted}; \
         exact GCRA allows {exact}, over-admission {} (bound {}); Redis ops {ops} ({:.3} per request)",
        admitted.saturating_sub(exact),
        3 * 16,
        ops as f64 / requests as f64,
    );
    assert!(admitted <= bound, "admitted {admitted} > {bound}");
    assert!(admitted >= 200, "at least the burst: {admitted}");
}
