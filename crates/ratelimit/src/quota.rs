//! How much traffic a limiter admits: a rate and a burst.
//!
//! A [`Quota`] can only be built from valid inputs, so the request path never meets
//! a zero rate or an overflowing interval: the checks happen once, when the
//! configuration is loaded, and fail with a [`QuotaError`].

use std::num::NonZeroU32;
use std::time::Duration;

/// Longest accepted period: one year (365 days).
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Longest time a full burst may take to refill: 2^62 nanoseconds (about 146
/// years). [`Quota::with_burst`] lowers larger bursts to fit, which keeps every
/// theoretical arrival time far inside a `u64`.
pub const MAX_BURST_WINDOW: Duration = Duration::from_nanos(MAX_BURST_WINDOW_NANOS);

const MAX_BURST_WINDOW_NANOS: u64 = 1 << 62;

/// Why a [`Quota`] could not be built. Every variant is a configuration error: the
/// same input always fails, so retrying is pointless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The period is zero, so the rate would be infinite.
    #[error("the rate-limit period must be longer than zero")]
    ZeroPeriod,
    /// The period is longer than [`MAX_PERIOD`].
    #[error("the rate-limit period {period:?} is longer than the maximum of {max:?}")]
    PeriodTooLong {
        /// The rejected period.
        period: Duration,
        /// The longest accepted period, [`MAX_PERIOD`].
        max: Duration,
    },
    /// More requests than nanoseconds in the period: the interval between two
    /// requests would be below the clock's one-nanosecond resolution.
    #[error("{requests} requests per {period:?} is more than one request per nanosecond")]
    RateTooHigh {
        /// The requested number of requests per period.
        requests: NonZeroU32,
        /// The period.
        period: Duration,
    },
}

/// A rate (`requests` per `period`) and a burst (how many requests may arrive at
/// once after a quiet spell).
///
/// In GCRA terms, requests are spaced by the emission interval
/// `T = period / requests` (whole nanoseconds, rounded down) and a full burst
/// refills in `burst × T`. The burst defaults to `requests`, so
/// "60 per minute" admits 60 requests at once, then one per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    requests: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
    interval_nanos: u64,
}

impl Quota {
    /// Allows `requests` per `period`, with a burst of `requests`.
    ///
    /// # Errors
    ///
    /// * [`QuotaError::ZeroPeriod`] if `period` is zero;
    /// * [`QuotaError::PeriodTooLong`] if `period` is longer than [`MAX_PERIOD`];
    /// * [`QuotaError::RateTooHigh`] if `period` has fewer nanoseconds than
    ///   `requests`.
    pub fn per_period(requests: NonZeroU32, period: Duration) -> Result<Self, QuotaError> {
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        if period > MAX_PERIOD {
            return Err(QuotaError::PeriodTooLong {
                period,
                max: MAX_PERIOD,
            });
        }
        // At most one year of nanoseconds, so the conversion cannot fail.
        let period_nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        let interval_nanos = period_nanos / u64::from(requests.get());
        if interval_nanos == 0 {
            return Err(QuotaError::RateTooHigh { requests, period });
        }
        // requests × interval <= period <= MAX_PERIOD < MAX_BURST_WINDOW: no cap needed.
        Ok(Self {
            requests,
            period,
            burst: requests,
            interval_nanos,
        })
    }

    /// Returns this quota with a burst of `burst` requests instead.
    ///
    /// A burst whose refill time (`burst × T`) would exceed [`MAX_BURST_WINDOW`]
    /// (about 146 years) is lowered to the largest one that fits; no realistic
    /// configuration gets near it.
    #[must_use]
    pub fn with_burst(self, burst: NonZeroU32) -> Self {
        let fitting = MAX_BURST_WINDOW_NANOS / self.interval_nanos;
        let cap =
            NonZeroU32::new(u32::try_from(fitting).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        Self {
            burst: burst.min(cap),
            ..self
        }
    }

    /// Returns the number of requests admitted per [`period`](Quota::period).
    #[must_use]
    pub fn requests(&self) -> NonZeroU32 {
        self.requests
    }

    /// Returns the period over which [`requests`](Quota::requests) are admitted.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Returns how many requests may be admitted at once.
    #[must_use]
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// Returns the emission interval `T`: the time one request's capacity takes to
    /// come back. At least one nanosecond.
    #[must_use]
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos)
    }

    /// Returns GCRA's tolerance `τ = T × (burst − 1)`: how far ahead of the
    /// steady schedule a request may arrive and still be admitted.
    #[must_use]
    pub fn tolerance(&self) -> Duration {
        Duration::from_nanos(self.window_nanos() - self.interval_nanos)
    }

    /// `T` in nanoseconds.
    pub(crate) fn interval_nanos(&self) -> u64 {
        self.interval_nanos
    }

    /// `T × burst` in nanoseconds, the time a full burst takes to refill; at most
    /// 2^62 by construction.
    pub(crate) fn window_nanos(&self) -> u64 {
        self.interval_nanos * u64::from(self.burst.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn derived_values_follow_gcra() {
        let quota = Quota::per_period(nz(60), Duration::from_secs(60)).unwrap();
        assert_eq!(quota.burst(), nz(60));
        assert_eq!(quota.emission_interval(), Duration::from_secs(1));
        assert_eq!(quota.tolerance(), Duration::from_secs(59));

        let quota = quota.with_burst(nz(5));
        assert_eq!(quota.requests(), nz(60));
        assert_eq!(quota.period(), Duration::from_secs(60));
        assert_eq!(quota.tolerance(), Duration::from_secs(4));
    }

    #[test]
    fn burst_of_one_has_no_tolerance() {
        let quota = Quota::per_period(nz(10), Duration::from_secs(1))
            .unwrap()
            .with_burst(nz(1));
        assert_eq!(quota.tolerance(), Duration::ZERO);
    }

    #[test]
    fn interval_is_rounded_down_to_whole_nanoseconds() {
        let quota = Quota::per_period(nz(3), Duration::from_secs(1)).unwrap();
        assert_eq!(quota.emission_interval(), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn invalid_periods_are_rejected() {
        assert_eq!(
            Quota::per_period(nz(1), Duration::ZERO),
            Err(QuotaError::ZeroPeriod)
        );
        let long = MAX_PERIOD + Duration::from_nanos(1);
        assert_eq!(
            Quota::per_period(nz(1), long),
            Err(QuotaError::PeriodTooLong {
                period: long,
                max: MAX_PERIOD
            })
        );
        assert!(Quota::per_period(nz(1), MAX_PERIOD).is_ok());
        assert_eq!(
            Quota::per_period(nz(1_001), Duration::from_nanos(1_000)),
            Err(QuotaError::RateTooHigh {
                requests: nz(1_001),
                period: Duration::from_nanos(1_000)
            })
        );
        assert!(Quota::per_period(nz(1_000), Duration::from_nanos(1_000)).is_ok());
    }

    #[test]
    fn absurd_bursts_are_capped_to_the_window() {
        let quota = Quota::per_period(nz(1), MAX_PERIOD)
            .unwrap()
            .with_burst(NonZeroU32::MAX);
        assert!(quota.window_nanos() <= MAX_BURST_WINDOW_NANOS);
        assert!(quota.burst().get() >= 146);
        let small = Quota::per_period(nz(1), Duration::from_secs(1))
            .unwrap()
            .with_burst(NonZeroU32::MAX);
        assert_eq!(small.burst(), NonZeroU32::MAX);
    }

    #[test]
    fn errors_explain_themselves() {
        let message = QuotaError::RateTooHigh {
            requests: nz(2),
            period: Duration::from_nanos(1),
        }
        .to_string();
        assert_eq!(
            message,
            "2 requests per 1ns is more than one request per nanosecond"
        );
    }
}
