//! Time and chance, injected: the proxy reads both from here and never from the
//! system directly, so that tests run with paused time and a seeded random source and
//! assert exact outcomes instead of waiting.
//!
//! * [`TokioClock`] reads Tokio's clock: the system's monotonic clock in production,
//!   the paused and advanced one in tests (`tokio::time::pause`/`advance`). Endpoint
//!   load, outlier ejections, retry budgets, rate limits and token budgets all take
//!   their `now` from one such clock, shared as a [`SharedClock`].
//! * [`Entropy`] draws the random numbers of endpoint picks and of each selector's
//!   starting point: lock-free, seeded from the system in production and by the test
//!   that wants a fixed sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use sluice_ratelimit::Clock;

/// The clock shared by everything whose state outlives one request.
pub type SharedClock = Arc<dyn Clock>;

/// Tokio's clock in nanoseconds since the clock was made.
///
/// Make it inside the Tokio runtime whose time it should follow: a paused runtime's
/// clock only moves when the test advances it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// As a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(Self::new())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A lock-free source of random numbers: SplitMix64 over an atomic counter.
///
/// Statistically good enough for load balancing (it is the generator that seeds
/// xoshiro), never for secrets. Every call advances one shared counter, so requests on
/// different threads draw different numbers without a lock; a given seed gives a fixed
/// sequence of numbers (which thread gets which depends on scheduling).
#[derive(Debug)]
pub struct Entropy {
    state: AtomicU64,
}

impl Entropy {
    /// A source whose sequence is fixed by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// A source seeded from the system.
    pub fn from_system() -> Self {
        Self::seeded(fastrand::u64(..))
    }

    /// The next number.
    pub fn next_u64(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is zero).
    pub fn below(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for any pool size, no division.
        let wide = u128::from(self.next_u64()) * n as u128;
        usize::try_from(wide >> 64).unwrap_or(0)
    }
}

impl Default for Entropy {
    fn default() -> Self {
        Self::from_system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_the_sequence() {
        let (a, b) = (Entropy::seeded(7), Entropy::seeded(7));
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first[0], first[1]);
        assert_ne!(Entropy::seeded(8).next_u64(), first[0]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let e = Entropy::seeded(1);
        let mut seen = [0usize; 5];
        for _ in 0..1000 {
            seen[e.below(5)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
        assert_eq!(e.below(0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let before = clock.now_nanos();
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        assert_eq!(clock.now_nanos() - before, 30_000_000_000);
    }
}
