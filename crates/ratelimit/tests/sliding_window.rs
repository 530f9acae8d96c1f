//! Property tests for `SlidingWindow` against a simple reference model, and the
//! boundary, clock and `Retry-After` guarantees.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use sluice_ratelimit::{Decision, Gcra, Quota, SlidingWindow, WindowQuota, retry_after_secs};

/// The textbook sliding-window counter: a count per fixed window, and the
/// estimate `prev × (W − e) / W + cur` computed in exact rationals.
struct Reference {
    limit: u128,
    window: u128,
    counts: BTreeMap<u128, u128>,
}

impl Reference {
    fn new(quota: &WindowQuota) -> Self {
        Self {
            limit: u128::from(quota.limit().get()),
            window: quota.window().as_nanos(),
            counts: BTreeMap::new(),
        }
    }

    /// `now` must not decrease between calls.
    fn offer(&mut self, n: u32, now: u64) -> bool {
        let now = u128::from(now);
        let index = now / self.window;
        let elapsed = now % self.window;
        let prev = index
            .checked_sub(1)
            .and_then(|i| self.counts.get(&i))
            .copied()
            .unwrap_or(0);
        let cur = self.counts.get(&index).copied().unwrap_or(0);
        let n = u128::from(n);
        // prev × (W − e) / W + cur + n <= limit, multiplied out by W.
        let admitted =
            prev * (self.window - elapsed) + (cur + n) * self.window <= self.limit * self.window;
        if admitted {
            *self.counts.entry(index).or_default() += n;
        }
        admitted
    }
}

fn quota_strategy() -> impl Strategy<Value = WindowQuota> {
    (1_u32..=50, 1_u64..=120_000).prop_map(|(limit, window_ms)| {
        WindowQuota::new(
            NonZeroU32::new(limit).unwrap(),
            Duration::from_millis(window_ms),
        )
        .unwrap()
    })
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap()
}

proptest! {
    #[test]
    fn decisions_match_the_reference_model(
        quota in quota_strategy(),
        start in 0_u64..1_000_000_000_000,
        arrivals in prop::collection::vec((0_u64..40, 1_u32..=3), 1..300),
    ) {
        let window = SlidingWindow::new();
        let mut model = Reference::new(&quota);
        let step = nanos(quota.window()) / 16 + 1;
        let mut now = start;
        for (gap, n) in arrivals {
            now += gap * step;
            let n = NonZeroU32::new(n).unwrap();
            match window.check_n(&quota, n, now) {
                Ok(decision) => prop_assert_eq!(decision.is_allowed(), model.offer(n.get(), now)),
                Err(_) => prop_assert!(n > quota.limit()),
            }
        }
    }

    /// No double burst at window boundaries: within any span `d <= W`, at most
    /// `limit × (1 + d / W)` requests are admitted (a fixed window admits
    /// `2 × limit` across a boundary however small `d` is).
    #[test]
    fn no_double_burst_at_window_boundaries(
        quota in quota_strategy(),
        arrivals in prop::collection::vec((0_u64..8, 1_u32..=4), 1..400),
    ) {
        let window = SlidingWindow::new();
        let w = nanos(quota.window());
        let limit = u128::from(quota.limit().get());
        let step = w / 8 + 1;
        let mut now = 0;
        let mut admitted: Vec<(u64, u32)> = Vec::new();
        for (gap, n) in arrivals {
            now += gap * step;
            let Some(n) = NonZeroU32::new(n).filter(|&n| n <= quota.limit()) else { continue };
            if window.check_n(&quota, n, now).unwrap().is_allowed() {
                admitted.push((now, n.get()));
            }
        }
        for (i, &(first, _)) in admitted.iter().enumerate() {
            let mut count = 0_u128;
            for &(at, n) in &admitted[i..] {
                let span = at - first;
                if span > w { break; }
                count += u128::from(n);
                // count <= limit × (1 + span / W), multiplied out by W.
                prop_assert!(
                    count * u128::from(w) <= limit * (u128::from(w) + u128::from(span)),
                    "{count} admitted within {span} ns of a {w} ns window, limit {limit}"
                );
            }
        }
    }

    /// Whatever order clock readings come in, readings within one window's span
    /// admit no more than in-order readings could: `limit × (1 + span / W)`.
    #[test]
    fn a_clock_going_backwards_admits_nothing_extra(
        quota in quota_strategy(),
        base in 0_u64..1_000_000_000_000,
        readings in prop::collection::vec((0_u64..=1_000, 1_u32..=3), 1..300),
    ) {
        let window = SlidingWindow::new();
        let w = nanos(quota.window());
        let limit = u128::from(quota.limit().get());
        let mut admitted = 0_u128;
        let times: Vec<u64> = readings.iter().map(|&(at, _)| base + at * w / 1_000).collect();
        for (&now, &(_, n)) in times.iter().zip(&readings) {
            let Some(n) = NonZeroU32::new(n).filter(|&n| n <= quota.limit()) else { continue };
            if window.check_n(&quota, n, now).unwrap().is_allowed() {
                admitted += u128::from(n.get());
            }
        }
        let span = u128::from(times.iter().max().unwrap() - times.iter().min().unwrap());
        prop_assert!(admitted * u128::from(w) <= limit * (u128::from(w) + span));
    }

    /// A refusal's wait is in [1 ns, W], so `Retry-After` in whole seconds is in
    /// [1, ceil(W)]; and unless it was capped at W, it is the true wait.
    #[test]
    fn retry_after_is_positive_at_most_the_window_and_true(
        quota in quota_strategy(),
        arrivals in prop::collection::vec((0_u64..10, 1_u32..=3), 1..200),
    ) {
        let window = SlidingWindow::new();
        let w = quota.window();
        let step = nanos(w) / 10 + 1;
        let mut now = 0;
        for (gap, n) in arrivals {
            now += gap * step;
            let Some(n) = NonZeroU32::new(n).filter(|&n| n <= quota.limit()) else { continue };
            if let Decision::Denied { retry_after, .. } = window.check_n(&quota, n, now).unwrap() {
                prop_assert!(retry_after > Duration::ZERO && retry_after <= w);
                let secs = retry_after_secs(retry_after);
                prop_assert!(secs >= 1 && secs <= w.as_secs() + u64::from(w.subsec_nanos() > 0));
                if retry_after < w {
                    let due = now + nanos(retry_after);
                    prop_assert!(!window.check_n(&quota, n, due - 1).unwrap().is_allowed());
                    prop_assert!(window.check_n(&quota, n, due).unwrap().is_allowed());
                    now = due;
                }
            }
        }
    }

    /// The same header guarantee for GCRA: `Retry-After` in [1, ceil(window)].
    #[test]
    fn gcra_retry_after_secs_is_within_one_and_the_window(
        requests in 1_u32..=100,
        period_ms in 1_u64..=600_000,
        burst in 1_u32..=50,
        arrivals in prop::collection::vec((0_u64..10, 1_u32..=5), 1..200),
    ) {
        let Ok(quota) = Quota::per_period(NonZeroU32::new(requests).unwrap(), Duration::from_millis(period_ms)) else {
            return Ok(());
        };
        let quota = quota.with_burst(NonZeroU32::new(burst).unwrap());
        let window = quota.emission_interval() * quota.burst().get();
        let gcra = Gcra::new();
        let mut now = 0;
        for (gap, n) in arrivals {
            now += gap * nanos(quota.emission_interval()) / 4;
            let Ok(decision) = gcra.check_n(&quota, NonZeroU32::new(n).unwrap(), now) else { continue };
            if let Some(secs) = decision.retry_after_secs() {
                prop_assert!(secs >= 1);
                prop_assert!(secs <= window.as_secs() + u64::from(window.subsec_nanos() > 0));
            }
        }
    }
}
