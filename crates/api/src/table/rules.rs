//! The rules a table's values obey beyond their types, written once: `compile` turns a
//! broken rule into a diagnostic on the field it came from, and
//! [`RouteTable::validate`](super::RouteTable::validate) refuses a table (from a cache
//! file or a controller) that breaks one, so the proxy never meets a value it would
//! have to coerce or drop.

use std::num::NonZeroU32;
use std::time::Duration;

use super::units::Millis;
use crate::rate_policy::RateAlgorithm;

/// Most retries after the first attempt.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Most retries a second a pool's budget always allows (what the budget reserves over
/// its 10 s window must fit its counters).
pub const MAX_MIN_RETRIES_PER_SECOND: u32 = 100_000;
/// Longest rate-limit period.
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);
/// Most requests a `SlidingWindow` limit counts in one window.
pub const MAX_WINDOW_REQUESTS: u32 = (1 << 24) - 1;
/// Longest capability, tier or consumer name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest model name (or prefix) a route matches or a backend rewrites to.
pub const MAX_MODEL_LEN: usize = 256;

/// A value that breaks a rule. The message is what a user reads beside the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// More retries than [`MAX_RETRY_ATTEMPTS`].
    #[error("{0} is more than {MAX_RETRY_ATTEMPTS}")]
    TooManyAttempts(u32),
    /// A retried status outside 400–599.
    #[error("{0} is not a 4xx or 5xx status")]
    NotAnErrorStatus(u16),
    /// A retry budget ratio outside 0–1.
    #[error("{0} must be between 0 and 1")]
    BudgetRatio(f64),
    /// More than [`MAX_MIN_RETRIES_PER_SECOND`].
    #[error("{0} is more than {MAX_MIN_RETRIES_PER_SECOND}")]
    MinRetries(u32),
    /// A consistent-hash load bound outside 1–100.
    #[error("{0} must be between 1.0 and 100")]
    BoundedLoad(f64),
    /// A rate-limit period longer than [`MAX_PERIOD`].
    #[error("is longer than 365 days")]
    PeriodTooLong,
    /// More requests than nanoseconds in the period: no limiter can space them.
    #[error("{requests} in {period} is more than one a nanosecond")]
    RateTooHigh {
        /// The requests (or tokens) per period.
        requests: u32,
        /// The period.
        period: Millis,
    },
    /// A `SlidingWindow` limit above [`MAX_WINDOW_REQUESTS`].
    #[error("{0} is more than {MAX_WINDOW_REQUESTS}, the most a SlidingWindow limit counts")]
    WindowTooLarge(u32),
    /// A capability, tier or consumer name that is not 1–63 of `A-Z a-z 0-9 - _ .`.
    #[error("{name:?} is not a valid {what} name (1-63 letters, digits, `-`, `_`, `.`)")]
    BadName {
        /// The name.
        name: String,
        /// What it names: `capability`, `tier` or `consumer`.
        what: &'static str,
    },
    /// The longest ejection is shorter than the first.
    #[error("is shorter than baseEjectionTime")]
    EjectionTimes,
    /// A model name that is empty, longer than [`MAX_MODEL_LEN`] or holds a control
    /// character.
    #[error("{0:?} is not a model name (1-256 characters, no control characters)")]
    BadModel(String),
    /// A client certificate subject that cannot be matched exactly.
    #[error("{subject:?} {why}")]
    BadSubject {
        /// The subject.
        subject: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Whether `name` is a valid capability, tier or consumer name: 1 to
/// [`MAX_NAME_LEN`] of `a-z`, `A-Z`, `0-9`, `-`, `_` and `.`.
pub fn is_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A capability, tier or consumer name.
///
/// # Errors
///
/// [`RuleError::BadName`] unless [`is_name`].
pub fn name(name: &str, what: &'static str) -> Result<(), RuleError> {
    if is_name(name) {
        Ok(())
    } else {
        Err(RuleError::BadName {
            name: name.to_owned(),
            what,
        })
    }
}

/// Whether `name` is a Kubernetes namespace name: 1 to 63 of `a-z`, `0-9` and `-`,
/// alphanumeric at both ends.
pub fn is_namespace(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

/// A consumer: `name`, or `namespace/name` for a consumer from a Secret of that
/// namespace.
///
/// # Errors
///
/// [`RuleError::BadName`] unless `name` is [`is_name`], or a namespace, `/` and one.
pub fn consumer(consumer: &str) -> Result<(), RuleError> {
    let ok = match consumer.split_once('/') {
        Some((ns, name)) => is_namespace(ns) && is_name(name),
        None => is_name(consumer),
    };
    if ok {
        Ok(())
    } else {
        Err(RuleError::BadName {
            name: consumer.to_owned(),
            what: "consumer",
        })
    }
}

/// A model name or prefix, as a route matches it or a backend rewrites to it.
///
/// # Errors
///
/// [`RuleError::BadModel`] when empty, too long or holding a control character.
pub fn model_name(name: &str) -> Result<(), RuleError> {
    if (1..=MAX_MODEL_LEN).contains(&name.len()) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(RuleError::BadModel(name.to_owned()))
    }
}

/// The number of retries after the first attempt.
///
/// # Errors
///
/// [`RuleError::TooManyAttempts`] above [`MAX_RETRY_ATTEMPTS`].
pub fn retry_attempts(attempts: u32) -> Result<(), RuleError> {
    if attempts > MAX_RETRY_ATTEMPTS {
        return Err(RuleError::TooManyAttempts(attempts));
    }
    Ok(())
}

/// A status a pool retries on, or sends on to its fallback.
///
/// # Errors
///
/// [`RuleError::NotAnErrorStatus`] outside 400–599.
pub fn retry_status(status: u16) -> Result<(), RuleError> {
    if (400..=599).contains(&status) {
        Ok(())
    } else {
        Err(RuleError::NotAnErrorStatus(status))
    }
}

/// A retry budget: retries as a share of requests, and retries a second always allowed.
///
/// # Errors
///
/// [`RuleError::BudgetRatio`] or [`RuleError::MinRetries`].
pub fn retry_budget(ratio: f64, min_per_second: u32) -> Result<(), RuleError> {
    if !(ratio.is_finite() && (0.0..=1.0).contains(&ratio)) {
        return Err(RuleError::BudgetRatio(ratio));
    }
    if min_per_second > MAX_MIN_RETRIES_PER_SECOND {
        return Err(RuleError::MinRetries(min_per_second));
    }
    Ok(())
}

/// A consistent-hash load bound.
///
/// # Errors
///
/// [`RuleError::BoundedLoad`] outside 1–100 (or not a number).
pub fn bounded_load(factor: f64) -> Result<(), RuleError> {
    if factor.is_finite() && (1.0..=100.0).contains(&factor) {
        Ok(())
    } else {
        Err(RuleError::BoundedLoad(factor))
    }
}

/// A rate-limit period.
///
/// # Errors
///
/// [`RuleError::PeriodTooLong`] beyond [`MAX_PERIOD`].
pub fn period(period: Millis) -> Result<(), RuleError> {
    if period.get() > MAX_PERIOD {
        return Err(RuleError::PeriodTooLong);
    }
    Ok(())
}

/// The count of a request limit of `algorithm`: `requests` per `per` (whose length
/// [`period`] checks).
///
/// # Errors
///
/// [`RuleError::RateTooHigh`] for more than one request a nanosecond;
/// [`RuleError::WindowTooLarge`] for a sliding window above [`MAX_WINDOW_REQUESTS`].
pub fn request_limit(
    algorithm: RateAlgorithm,
    requests: NonZeroU32,
    per: Millis,
) -> Result<(), RuleError> {
    rate(requests, per)?;
    if algorithm == RateAlgorithm::SlidingWindow && requests.get() > MAX_WINDOW_REQUESTS {
        return Err(RuleError::WindowTooLarge(requests.get()));
    }
    Ok(())
}

/// The count of a token budget: `tokens` per `per` (whose length [`period`] checks).
///
/// # Errors
///
/// [`RuleError::RateTooHigh`] for more than one token a nanosecond.
pub fn token_limit(tokens: NonZeroU32, per: Millis) -> Result<(), RuleError> {
    rate(tokens, per)
}

fn rate(n: NonZeroU32, per: Millis) -> Result<(), RuleError> {
    if u128::from(n.get()) > per.get().as_nanos() {
        return Err(RuleError::RateTooHigh {
            requests: n.get(),
            period: per,
        });
    }
    Ok(())
}

/// Outlier ejection times.
///
/// # Errors
///
/// [`RuleError::EjectionTimes`] when `max` is shorter than `base`.
pub fn ejection_times(base: Millis, max: Millis) -> Result<(), RuleError> {
    if max < base {
        return Err(RuleError::EjectionTimes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("nonzero")
    }

    #[test]
    fn limits_a_limiter_cannot_hold_are_refused() {
        let ms = Millis::MIN;
        assert_eq!(
            request_limit(RateAlgorithm::TokenBucket, nz(1_000_000), ms),
            Ok(())
        );
        assert!(matches!(
            request_limit(RateAlgorithm::TokenBucket, nz(1_000_001), ms),
            Err(RuleError::RateTooHigh { .. })
        ));
        let minute = Millis::new(60_000).expect("nonzero");
        assert_eq!(
            request_limit(RateAlgorithm::SlidingWindow, nz(1 << 24), minute),
            Err(RuleError::WindowTooLarge(1 << 24))
        );
        let two_years = Millis::new(2 * 365 * 24 * 3_600_000).expect("nonzero");
        assert_eq!(period(two_years), Err(RuleError::PeriodTooLong));
        assert_eq!(token_limit(nz(1), two_years), Ok(()));
    }

    #[test]
    fn names_and_retries() {
        assert!(is_name("premium-2.a_b"));
        assert!(!is_name("") && !is_name("a b") && !is_name(&"x".repeat(64)));
        assert_eq!(retry_attempts(10), Ok(()));
        assert_eq!(retry_attempts(11), Err(RuleError::TooManyAttempts(11)));
        assert_eq!(retry_status(302), Err(RuleError::NotAnErrorStatus(302)));
        assert_eq!(retry_budget(1.5, 1), Err(RuleError::BudgetRatio(1.5)));
        assert_eq!(
            retry_budget(0.2, 100_001),
            Err(RuleError::MinRetries(100_001))
        );
        assert_eq!(bounded_load(0.5), Err(RuleError::BoundedLoad(0.5)));
        assert_eq!(model_name("gpt-4o"), Ok(()));
        assert!(model_name("").is_err() && model_name("a\nb").is_err());
        assert!(model_name(&"m".repeat(257)).is_err());
    }
}
