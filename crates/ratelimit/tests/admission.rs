//! Multi-limit admission: admitted only if every limit admits; a refused request
//! charges none; exact under concurrency.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use sluice_ratelimit::{
    Decision, Gcra, KeyHash, KeyedStore, Limit, Quota, SlidingWindow, SoftLimit, StoreConfig,
    WindowQuota, check_all,
};

const SEC: u64 = 1_000_000_000;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn per_hour(n: u32) -> Quota {
    Quota::per_period(nz(n), Duration::from_secs(3_600)).unwrap()
}

/// Budget 100 (tight) and 1000 (loose), 2000 concurrent requests on 8 threads at
/// one clock reading: exactly 100 admitted, and the loose limit is charged for
/// exactly those 100, whichever order the limits are given in.
#[test]
fn concurrent_requests_admit_exactly_the_tightest_limit_and_charge_only_admitted() {
    for tight_first in [true, false] {
        let (tight_quota, loose_quota) = (per_hour(100), per_hour(1_000));
        let (tight, loose) = (Gcra::new(), Gcra::new());
        let admitted = AtomicU32::new(0);
        let now = 5 * SEC;
        thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..250 {
                        let tight = Limit::gcra(&tight, &tight_quota);
                        let loose = Limit::gcra(&loose, &loose_quota);
                        let limits = if tight_first {
                            [tight, loose]
                        } else {
                            [loose, tight]
                        };
                        if check_all(&limits, NonZeroU32::MIN, now)
                            .unwrap()
                            .is_allowed()
                        {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
        assert!(!tight.check(&tight_quota, now).is_allowed());
        // The loose limit lost exactly 100 of its 1000.
        let left = loose.check_n(&loose_quota, nz(900), now).unwrap();
        assert_eq!(left.remaining(), 0, "loose limit charged {left:?}");
        assert!(!loose.check(&loose_quota, now).is_allowed());
    }
}

/// The same with keyed limits: a consumer key (sliding window, 100 per minute)
/// under a pool ceiling (GCRA, 150 per hour) shared with another consumer.
#[test]
fn concurrent_keyed_consumers_under_a_pool_ceiling() {
    let consumers = KeyedStore::<SlidingWindow>::new(
        WindowQuota::new(nz(100), Duration::from_secs(60)).unwrap(),
        StoreConfig::new(NonZeroUsize::new(1_000).unwrap()),
    );
    let (pool, pool_quota) = (Gcra::new(), per_hour(150));
    let per_consumer = [AtomicU32::new(0), AtomicU32::new(0)];
    let now = 30 * SEC;
    thread::scope(|scope| {
        for thread in 0..8_u64 {
            let (consumers, pool, pool_quota, per_consumer) =
                (&consumers, &pool, &pool_quota, &per_consumer);
            scope.spawn(move || {
                for i in 0..250_u64 {
                    let consumer = (thread + i) % 2;
                    let limits = [
                        Limit::keyed(consumers, KeyHash(consumer)),
                        Limit::gcra(pool, pool_quota),
                    ];
                    if check_all(&limits, NonZeroU32::MIN, now)
                        .unwrap()
                        .is_allowed()
                    {
                        per_consumer[consumer as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let counts = per_consumer.map(|c| c.load(Ordering::Relaxed));
    assert_eq!(
        counts[0] + counts[1],
        150,
        "the pool ceiling decides: {counts:?}"
    );
    assert!(counts.iter().all(|&c| c <= 100));
    // Each consumer was charged exactly what it was admitted.
    for (consumer, &count) in counts.iter().enumerate() {
        let left = 100 - count;
        if left > 0 {
            let decision = consumers
                .check_n(KeyHash(consumer as u64), nz(left), now)
                .unwrap();
            assert_eq!(decision.remaining(), 0, "consumer {consumer}");
        }
        assert!(!consumers.check(KeyHash(consumer as u64), now).is_allowed());
    }
}

#[test]
fn a_refusal_charges_nothing_and_reports_the_longest_wait() {
    let burst = Quota::per_period(nz(10), Duration::from_secs(1))
        .unwrap()
        .with_burst(nz(2));
    let minute = per_hour(60);
    let (fast, slow) = (Gcra::new(), Gcra::new());
    let limits = [Limit::gcra(&fast, &burst), Limit::gcra(&slow, &minute)];
    for _ in 0..2 {
        assert!(check_all(&limits, NonZeroU32::MIN, 0).unwrap().is_allowed());
    }
    // The burst limit refuses: the per-hour one must not be charged.
    let refused = check_all(&limits, NonZeroU32::MIN, 0).unwrap();
    assert_eq!(refused.binding, 0);
    assert_eq!(
        refused.decision.retry_after(),
        Some(Duration::from_millis(100))
    );
    assert_eq!(slow.check_n(&minute, nz(58), 0).unwrap().remaining(), 0);
    // Now both refuse; the longer wait (the hour limit's minute) is reported.
    let refused = check_all(&limits, NonZeroU32::MIN, 0).unwrap();
    assert_eq!(refused.binding, 1);
    assert_eq!(
        refused.decision.retry_after(),
        Some(Duration::from_secs(60))
    );
    assert_eq!(refused.info.limit, 60);
}

#[test]
fn admitted_requests_report_the_closest_limit_and_soft_warnings() {
    let minute = WindowQuota::new(nz(50), Duration::from_secs(60)).unwrap();
    let pool_quota = per_hour(1_000);
    let (consumer, pool) = (SlidingWindow::new(), Gcra::new());
    let soft = SoftLimit::percent(80).unwrap();
    let limits = [
        Limit::gcra(&pool, &pool_quota),
        Limit::window(&consumer, &minute).with_soft(soft),
    ];
    let mut warned_from = None;
    for i in 1..=50 {
        let admission = check_all(&limits, NonZeroU32::MIN, 0).unwrap();
        assert!(admission.is_allowed());
        assert_eq!(admission.binding, 1, "the consumer has fewer left");
        assert_eq!(admission.info.limit, 50);
        assert_eq!(admission.info.window_secs(), 60);
        assert_eq!(admission.decision.remaining(), 50 - i);
        if admission.soft_warning.is_some() && warned_from.is_none() {
            warned_from = Some(i);
        }
    }
    assert_eq!(warned_from, Some(40), "80% of 50");
    let refused = check_all(&limits, NonZeroU32::MIN, 0).unwrap();
    assert!(!refused.is_allowed());
    assert_eq!(refused.soft_warning, None);
    assert_eq!(refused.decision.retry_after_secs(), Some(60));
}

#[test]
fn oversized_charges_and_empty_lists() {
    let quota = Quota::per_period(nz(5), Duration::from_secs(1)).unwrap();
    let gcra = Gcra::new();
    assert!(check_all(&[Limit::gcra(&gcra, &quota)], nz(6), 0).is_err());
    let all = check_all(&[], nz(6), 0).unwrap();
    assert_eq!(
        all.decision,
        Decision::Allowed {
            remaining: u32::MAX,
            reset_after: Duration::ZERO
        }
    );
}

#[test]
fn more_than_eight_limits_still_roll_back() {
    let quota = per_hour(10);
    let tight = per_hour(1);
    let states: Vec<Gcra> = (0..12).map(|_| Gcra::new()).collect();
    let last = Gcra::new();
    let mut limits: Vec<Limit<'_>> = states.iter().map(|s| Limit::gcra(s, &quota)).collect();
    limits.push(Limit::gcra(&last, &tight));
    assert!(check_all(&limits, NonZeroU32::MIN, 0).unwrap().is_allowed());
    assert!(!check_all(&limits, NonZeroU32::MIN, 0).unwrap().is_allowed());
    for state in &states {
        assert_eq!(
            state.check(&quota, 0).remaining(),
            8,
            "one admitted request charged"
        );
    }
}
