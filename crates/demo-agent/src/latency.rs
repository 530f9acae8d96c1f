//! Simulated service latency: a log-normal distribution described by its median
//! and 99th percentile, sampled with Box-Muller over [`fastrand`].
//!
//! If `X = exp(mu + sigma * Z)` with `Z` standard normal, the median of `X` is
//! `exp(mu)` and its 99th percentile is `exp(mu + sigma * z99)` where
//! `z99 ≈ 2.3263`. Hence `mu = ln(p50)` and `sigma = ln(p99 / p50) / z99`.

use std::f64::consts::TAU;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// The 99th percentile of the standard normal distribution.
pub const Z_99: f64 = 2.326_347_874_040_841;

/// The largest latency ever produced, so that extreme tails cannot stall a test
/// run forever or overflow a [`Duration`].
pub const MAX_LATENCY: Duration = Duration::from_secs(600);

/// Why a latency distribution could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyError {
    p50: Duration,
    p99: Duration,
}

impl fmt::Display for LatencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency p99 ({:?}) must be at least p50 ({:?})",
            self.p99, self.p50
        )
    }
}

impl std::error::Error for LatencyError {}

/// A log-normal latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogNormal {
    p50: Duration,
    p99: Duration,
    mu: f64,
    sigma: f64,
}

impl LogNormal {
    /// Builds the distribution with the given median and 99th percentile.
    ///
    /// A zero median yields a distribution that always returns zero.
    ///
    /// # Errors
    ///
    /// Fails when `p99 < p50`.
    pub fn new(p50: Duration, p99: Duration) -> Result<Self, LatencyError> {
        if p99 < p50 {
            return Err(LatencyError { p50, p99 });
        }
        let (mu, sigma) = if p50.is_zero() {
            (f64::NEG_INFINITY, 0.0)
        } else {
            let median = p50.as_secs_f64();
            (median.ln(), (p99.as_secs_f64() / median).ln() / Z_99)
        };
        Ok(Self {
            p50,
            p99,
            mu,
            sigma,
        })
    }

    /// A distribution that always yields `latency`.
    pub fn constant(latency: Duration) -> Self {
        Self::new(latency, latency).expect("p99 == p50 is always valid")
    }

    /// The configured median.
    pub fn p50(&self) -> Duration {
        self.p50
    }

    /// The configured 99th percentile.
    pub fn p99(&self) -> Duration {
        self.p99
    }

    /// The standard deviation of the underlying normal distribution.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Draws one latency, capped at [`MAX_LATENCY`].
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        if self.p50.is_zero() {
            return Duration::ZERO;
        }
        if self.sigma == 0.0 {
            return self.p50.min(MAX_LATENCY);
        }
        let z = standard_normal(rng);
        let seconds = (self.mu + self.sigma * z).exp();
        Duration::try_from_secs_f64(seconds)
            .unwrap_or(MAX_LATENCY)
            .min(MAX_LATENCY)
    }
}

/// One standard normal variate by the Box-Muller transform.
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    // `f64()` is in [0, 1); `1 - f64()` is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

/// A [`LogNormal`] with its own random number generator, shareable between tasks.
#[derive(Debug)]
pub struct LatencySampler {
    distribution: LogNormal,
    rng: Mutex<fastrand::Rng>,
}

impl LatencySampler {
    /// Creates a sampler; with a seed the sequence of latencies is reproducible.
    pub fn new(distribution: LogNormal, seed: Option<u64>) -> Self {
        let rng = seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self {
            distribution,
            rng: Mutex::new(rng),
        }
    }

    /// The distribution this sampler draws from.
    pub fn distribution(&self) -> &LogNormal {
        &self.distribution
    }

    /// Draws the next latency.
    pub fn sample(&self) -> Duration {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.distribution.sample(&mut rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[index]
    }

    fn assert_close(actual: Duration, expected: Duration, tolerance: f64, what: &str) {
        let ratio = actual.as_secs_f64() / expected.as_secs_f64();
        assert!(
            (ratio - 1.0).abs() <= tolerance,
            "{what}: got {actual:?}, expected {expected:?} ± {:.0}%",
            tolerance * 100.0
        );
    }

    fn empirical(p50: Duration, p99: Duration, seed: u64) -> (Duration, Duration) {
        let distribution = LogNormal::new(p50, p99).unwrap();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut samples: Vec<Duration> =
            (0..20_000).map(|_| distribution.sample(&mut rng)).collect();
        samples.sort_unstable();
        (quantile(&samples, 0.5), quantile(&samples, 0.99))
    }

    #[test]
    fn empirical_quantiles_match_the_configuration() {
        let cases = [
            (Duration::from_millis(20), Duration::from_millis(80)),
            (Duration::from_millis(50), Duration::from_millis(200)),
            (Duration::from_millis(100), Duration::from_secs(2)),
            (Duration::from_millis(5), Duration::from_millis(6)),
        ];
        for (p50, p99) in cases {
            for seed in [1, 42, 7_777] {
                let (median, tail) = empirical(p50, p99, seed);
                assert_close(median, p50, 0.05, "median");
                assert_close(tail, p99, 0.12, "p99");
            }
        }
    }

    #[test]
    fn sigma_follows_the_formula() {
        let d = LogNormal::new(Duration::from_millis(10), Duration::from_millis(100)).unwrap();
        assert!((d.sigma() - 10f64.ln() / 2.3263).abs() < 1e-4);
    }

    #[test]
    fn equal_quantiles_give_a_constant() {
        let d = LogNormal::constant(Duration::from_millis(7));
        let mut rng = fastrand::Rng::with_seed(3);
        assert!((0..100).all(|_| d.sample(&mut rng) == Duration::from_millis(7)));
    }

    #[test]
    fn zero_median_gives_zero() {
        let d = LogNormal::new(Duration::ZERO, Duration::from_millis(5)).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        assert!((0..100).all(|_| d.sample(&mut rng).is_zero()));
    }

    #[test]
    fn rejects_p99_below_p50() {
        let err = LogNormal::new(Duration::from_millis(50), Duration::from_millis(10)).unwrap_err();
        assert!(err.to_string().contains("p99"));
    }

    #[test]
    fn seeded_samplers_are_reproducible() {
        let d = LogNormal::new(Duration::from_millis(10), Duration::from_millis(90)).unwrap();
        let a = LatencySampler::new(d, Some(9));
        let b = LatencySampler::new(d, Some(9));
        let first: Vec<_> = (0..50).map(|_| a.sample()).collect();
        let second: Vec<_> = (0..50).map(|_| b.sample()).collect();
        assert_eq!(first, second);
        assert!(
            first.windows(2).any(|w| w[0] != w[1]),
            "samples should vary"
        );
    }

    #[test]
    fn samples_are_capped() {
        let d = LogNormal::new(Duration::from_secs(500), Duration::from_secs(100_000)).unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        assert!((0..1_000).all(|_| d.sample(&mut rng) <= MAX_LATENCY));
    }
}
