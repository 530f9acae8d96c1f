//! Property and concurrency tests for `Gcra`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use proptest::prelude::*;
use sluice_ratelimit::{Decision, Gcra, InsufficientCapacity, Quota};

/// A plain sequential leaky bucket, the textbook equivalent of GCRA: a level of
/// queued work (in nanoseconds) that drains at one nanosecond per nanosecond; a
/// charge of `n` adds `n × T` unless that would overflow the bucket of `burst × T`.
struct LeakyBucket {
    interval: u128,
    capacity: u128,
    level: u128,
    last: u128,
}

impl LeakyBucket {
    fn new(quota: &Quota) -> Self {
        let interval = quota.emission_interval().as_nanos();
        Self {
            interval,
            capacity: interval * u128::from(quota.burst().get()),
            level: 0,
            last: 0,
        }
    }

    /// `now` must not decrease between calls.
    fn offer(&mut self, n: u32, now: u64) -> Decision {
        let now = u128::from(now);
        self.level = self.level.saturating_sub(now - self.last);
        self.last = now;
        let cost = self.interval * u128::from(n);
        if self.level + cost <= self.capacity {
            self.level += cost;
            Decision::Allowed {
                remaining: u32::try_from((self.capacity - self.level) / self.interval).unwrap(),
                reset_after: Duration::from_nanos(u64::try_from(self.level).unwrap()),
            }
        } else {
            Decision::Denied {
                retry_after: Duration::from_nanos(
                    u64::try_from(self.level + cost - self.capacity).unwrap(),
                ),
                reset_after: Duration::from_nanos(u64::try_from(self.level).unwrap()),
            }
        }
    }
}

/// Quotas from 1 request per nanosecond-ish rates up to minutes, bursts 1..=50.
fn quota_strategy() -> impl Strategy<Value = Quota> {
    (1_u32..=100, 1_u64..=60_000_000_000, 1_u32..=50).prop_filter_map(
        "rate above one request per nanosecond",
        |(requests, period_nanos, burst)| {
            Quota::per_period(
                NonZeroU32::new(requests)?,
                Duration::from_nanos(period_nanos),
            )
            .ok()
            .map(|quota| quota.with_burst(NonZeroU32::new(burst).unwrap()))
        },
    )
}

/// Arrivals as (gap in units of T / 4, requests charged at once): mostly single
/// requests, some batches, a few larger than any generated burst.
fn arrivals_strategy() -> impl Strategy<Value = Vec<(u64, u32)>> {
    let charge = prop_oneof![6 => Just(1_u32), 3 => 2_u32..=50, 1 => 51_u32..=60];
    prop::collection::vec((0_u64..12, charge), 1..200)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap()
}

proptest! {
    #[test]
    fn decisions_match_a_sequential_leaky_bucket(
        quota in quota_strategy(),
        start in 0_u64..1_000_000_000_000,
        arrivals in arrivals_strategy(),
    ) {
        let gcra = Gcra::new();
        let mut model = LeakyBucket::new(&quota);
        let quarter = nanos(quota.emission_interval()).div_ceil(4);
        let mut now = start;
        for (gap, n) in arrivals {
            now += gap * quarter;
            let n = NonZeroU32::new(n).unwrap();
            let got = gcra.check_n(&quota, n, now);
            if n > quota.burst() {
                prop_assert_eq!(
                    got,
                    Err(InsufficientCapacity { requested: n.get(), burst: quota.burst().get() })
                );
            } else {
                prop_assert_eq!(got, Ok(model.offer(n.get(), now)));
            }
        }
    }

    #[test]
    fn denials_ask_for_a_positive_wait_that_is_enough(
        quota in quota_strategy(),
        arrivals in arrivals_strategy(),
    ) {
        let gcra = Gcra::new();
        let interval = quota.emission_interval();
        let quarter = nanos(interval).div_ceil(4);
        let mut now = 0;
        for (gap, n) in arrivals {
            now += gap * quarter;
            let Some(n) = NonZeroU32::new(n).filter(|&n| n <= quota.burst()) else { continue };
            if let Ok(Decision::Denied { retry_after, .. }) = gcra.check_n(&quota, n, now) {
                prop_assert!(retry_after > Duration::ZERO);
                // Never longer than the charge takes to refill, hence never longer
                // than the period when at most `requests` are charged.
                prop_assert!(retry_after <= interval * n.get());
                if n <= quota.requests() {
                    prop_assert!(retry_after <= quota.period());
                }
                // One nanosecond early is still too early; exactly on time is not.
                let due = now + nanos(retry_after);
                prop_assert!(!gcra.check_n(&quota, n, due - 1).unwrap().is_allowed());
                prop_assert!(gcra.check_n(&quota, n, due).unwrap().is_allowed());
                now = due;
            }
        }
    }

    /// Whatever order the clock readings come in, admitted work never exceeds one
    /// burst plus what the time spanned by those readings refills.
    #[test]
    fn a_clock_going_backwards_never_admits_extra(
        quota in quota_strategy(),
        readings in prop::collection::vec((0_u64..10_000_000_000, 1_u32..=5), 1..300),
    ) {
        let gcra = Gcra::new();
        let interval = u128::from(nanos(quota.emission_interval()));
        let mut admitted = 0_u128;
        for &(now, n) in &readings {
            let Some(n) = NonZeroU32::new(n).filter(|&n| n <= quota.burst()) else { continue };
            if gcra.check_n(&quota, n, now).unwrap().is_allowed() {
                admitted += u128::from(n.get());
            }
        }
        let earliest = readings.iter().map(|&(now, _)| now).min().unwrap();
        let latest = readings.iter().map(|&(now, _)| now).max().unwrap();
        let refilled = u128::from(latest - earliest);
        prop_assert!(
            admitted * interval <= refilled + interval * u128::from(quota.burst().get()),
            "admitted {admitted} over {refilled} ns"
        );
    }

    #[test]
    fn steady_traffic_at_the_quota_rate_is_always_admitted(
        quota in quota_strategy(),
        start in any::<u32>(),
    ) {
        let gcra = Gcra::new();
        let interval = nanos(quota.emission_interval());
        for i in 0..500 {
            prop_assert!(gcra.check(&quota, u64::from(start) + i * interval).is_allowed());
        }
    }
}

#[test]
fn concurrent_checks_at_a_frozen_clock_admit_exactly_the_burst() {
    const THREADS: usize = 8;
    const TRIES: usize = 1_000;

    let quota = Quota::per_period(NonZeroU32::new(10).unwrap(), Duration::from_secs(1))
        .unwrap()
        .with_burst(NonZeroU32::new(100).unwrap());
    let gcra = Gcra::new();
    let admitted = AtomicU32::new(0);
    let now = 42_000_000_000;
    thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..TRIES {
                    if gcra.check(&quota, now).is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 100);
}
