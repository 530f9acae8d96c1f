//! Reconnect delays: exponential ceilings with full jitter, so that proxies that lost
//! the controller together do not return together.

use std::time::Duration;

/// Reconnect delays: exponential ceilings with full jitter.
///
/// The ceiling of attempt `n` (0 after a healthy stream) is `min × 2ⁿ`, at most `max`;
/// the delay is `ceiling × unit` for a uniform `unit` in `[0, 1]` drawn by the caller.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Ceilings from `min` to `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Back to the first ceiling: the stream was healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay for the random `unit` (clamped to `[0, 1]`), and one more attempt.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = full_jitter(self.ceiling(), unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

/// `ceiling × unit`, with `unit` clamped to `[0, 1]` (anything not finite counts as 0).
pub fn full_jitter(ceiling: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceilings_double_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay(1.0);
                u64::try_from(c.as_millis()).expect("small")
            })
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        for _ in 0..100 {
            b.next_delay(0.5);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(10), "no overflow");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
        assert_eq!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).ceiling(),
            Duration::from_secs(2),
            "max below min is raised to min"
        );
    }

    #[test]
    fn delays_lie_between_zero_and_the_ceiling() {
        let ceiling = Duration::from_millis(800);
        assert_eq!(full_jitter(ceiling, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(ceiling, 0.5), Duration::from_millis(400));
        assert_eq!(full_jitter(ceiling, 1.0), ceiling);
        assert_eq!(full_jitter(ceiling, 7.0), ceiling, "clamped");
        assert_eq!(full_jitter(ceiling, -1.0), Duration::ZERO, "clamped");
        assert_eq!(full_jitter(ceiling, f64::NAN), Duration::ZERO);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let d = b.next_delay(rng.f64());
            assert!(
                d <= ceiling && ceiling <= Duration::from_secs(5),
                "{d:?} {ceiling:?}"
            );
        }
    }

    #[test]
    fn proxies_that_lose_the_controller_together_do_not_return_together() {
        // 1,000 proxies whose healthy stream ended at the same instant: their first
        // reconnect delays spread over [0, min_backoff], none beyond.
        let min = Duration::from_millis(500);
        let mut seeds = fastrand::Rng::with_seed(42);
        let mut delays: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut rng = fastrand::Rng::with_seed(seeds.u64(..));
                let mut b = Backoff::new(min, Duration::from_secs(10));
                b.next_delay(2.0); // a failed attempt, then a healthy stream
                b.reset();
                b.next_delay(rng.f64())
            })
            .collect();
        delays.sort();
        assert!(delays.iter().all(|d| *d <= min));
        // Each tenth of the window takes roughly a tenth of the proxies.
        for tenth in 0..10u32 {
            let (lo, hi) = (min * tenth / 10, min * (tenth + 1) / 10);
            let n = delays.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!((50..=150).contains(&n), "{n} proxies in [{lo:?}, {hi:?})");
        }
    }
}
