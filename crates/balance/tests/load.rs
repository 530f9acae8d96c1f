//! Property and concurrency tests for `EndpointLoad` and `PoolLoad`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use proptest::prelude::*;
use sluice_balance::{EndpointLoad, LoadConfig, PoolLoad};

proptest! {
    /// Once sampled, the estimate (read when it was updated) stays between the
    /// smallest and the largest sample, and a new maximum takes over at once.
    #[test]
    fn estimate_stays_within_the_samples(
        samples in prop::collection::vec((1_u64..10_000, 0_u64..5_000), 1..100),
        decay_ms in 1_u64..20_000,
    ) {
        let config = LoadConfig {
            decay: Duration::from_millis(decay_ms),
            neutral_latency: Duration::from_millis(500),
        };
        let load = EndpointLoad::new(config, 0);
        let (mut low, mut high, mut now) = (u64::MAX, 0, 0);
        for (latency_us, gap_us) in samples {
            now += gap_us * 1_000;
            let latency = Duration::from_micros(latency_us);
            load.record(latency, now);
            let estimate = load.latency(now);
            if latency_us > high {
                prop_assert_eq!(estimate, latency, "a new maximum must take over");
            }
            low = low.min(latency_us);
            high = high.max(latency_us);
            // One nanosecond of rounding either way.
            prop_assert!(estimate + Duration::from_nanos(1) >= Duration::from_micros(low));
            prop_assert!(estimate <= Duration::from_micros(high) + Duration::from_nanos(1));
        }
    }

    /// Rebuilding with any list of addresses keeps exactly the state of the
    /// addresses that stay.
    #[test]
    fn rebuild_keeps_the_state_of_addresses_that_stay(
        before in prop::collection::vec(0_u8..20, 0..15),
        after in prop::collection::vec(0_u8..20, 0..15),
    ) {
        let name = |id: &u8| format!("10.5.0.{id}:80");
        let before: Vec<String> = before.iter().map(name).collect();
        let after: Vec<String> = after.iter().map(name).collect();
        let old = PoolLoad::new(&before, LoadConfig::default(), 0);
        let new = old.rebuild(&after, LoadConfig::default(), 1);
        prop_assert_eq!(new.len(), after.len());
        for (i, address) in after.iter().enumerate() {
            let kept = before.iter().position(|a| a == address);
            match kept {
                Some(j) => prop_assert!(Arc::ptr_eq(&new.endpoints()[i], &old.endpoints()[j])),
                None => prop_assert!(old.endpoints().iter().all(|e| !Arc::ptr_eq(e, &new.endpoints()[i]))),
            }
        }
    }
}

/// `try_start` is the exact `maxConcurrency` check: racing threads never push an
/// endpoint past its limit.
#[test]
fn try_start_never_exceeds_the_limit_under_contention() {
    const LIMIT: u64 = 5;
    let load = Arc::new(EndpointLoad::new(LoadConfig::default(), 0));
    let peak = AtomicU64::new(0);
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..20_000 {
                    if let Some(guard) = load.try_start(LIMIT) {
                        peak.fetch_max(load.in_flight(), Ordering::Relaxed);
                        drop(guard);
                    }
                }
            });
        }
    });
    assert!(peak.load(Ordering::Relaxed) <= LIMIT);
    assert_eq!(load.in_flight(), 0);
}

/// Guards started and finished from many threads leave every count at zero, the
/// pool total included.
#[test]
fn concurrent_guards_balance_out() {
    let pool = PoolLoad::new(&["a", "b", "c"], LoadConfig::default(), 0);
    thread::scope(|scope| {
        for t in 0..4_u64 {
            let pool = pool.clone();
            scope.spawn(move || {
                for i in 0..10_000_u64 {
                    let endpoint = &pool.endpoints()[usize::try_from((t + i) % 3).unwrap_or(0)];
                    let guard = endpoint.start();
                    if i % 2 == 0 {
                        guard.finish(Duration::from_millis(i % 50 + 1), i * 1_000_000);
                    }
                }
            });
        }
    });
    assert_eq!(pool.in_flight(), 0);
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
}
