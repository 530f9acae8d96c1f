//! What a limiter answers: admit (and how much is left) or refuse (and for how
//! long), and the whole-second values the HTTP headers carry.

use std::time::Duration;

/// The outcome of one rate-limit check.
///
/// Both variants carry what the IETF `RateLimit` header reports; a refusal also
/// carries the wait that becomes `Retry-After`.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request is admitted and its cost has been charged.
    Allowed {
        /// How many more single requests would be admitted right now.
        remaining: u32,
        /// How long until the full burst is available again.
        reset_after: Duration,
    },
    /// The request is refused; nothing was charged.
    Denied {
        /// How long until the same request would be admitted, if nothing else is
        /// admitted meanwhile. Always longer than zero.
        retry_after: Duration,
        /// How long until the full burst is available again.
        reset_after: Duration,
    },
}

impl Decision {
    /// Returns `true` for [`Decision::Allowed`].
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    /// How many more single requests would be admitted right now: the `r` of the
    /// IETF `RateLimit` header. Zero for a refusal.
    #[must_use]
    pub fn remaining(&self) -> u32 {
        match *self {
            Self::Allowed { remaining, .. } => remaining,
            Self::Denied { .. } => 0,
        }
    }

    /// How long until the full burst is available again.
    #[must_use]
    pub fn reset_after(&self) -> Duration {
        match *self {
            Self::Allowed { reset_after, .. } | Self::Denied { reset_after, .. } => reset_after,
        }
    }

    /// The wait a refusal asks for; `None` when admitted.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match *self {
            Self::Allowed { .. } => None,
            Self::Denied { retry_after, .. } => Some(retry_after),
        }
    }

    /// The `Retry-After` header value of a refusal, in whole seconds (see
    /// [`retry_after_secs`]); `None` when admitted.
    #[must_use]
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(retry_after_secs)
    }

    /// The `t` (reset) of the IETF `RateLimit` header: [`reset_after`] rounded up
    /// to whole seconds, zero when nothing is used.
    ///
    /// [`reset_after`]: Decision::reset_after
    #[must_use]
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after())
    }
}

/// A wait as a `Retry-After` header value: whole seconds, rounded up so that a
/// client which waits that long is not refused again for arriving early, and at
/// least 1 (a zero would invite an immediate retry).
///
/// For every limiter in this crate a refusal's wait is at most the quota's window,
/// so the result is in `[1, ceil(window in seconds)]`.
#[must_use]
pub fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

/// Rounds a duration up to whole seconds.
fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// What a limit advertises in the IETF `RateLimit-Policy` header: `limit` quota
/// units (`q`) per `window` (`w`).
///
/// For GCRA the units are the burst and the window the time a full burst takes to
/// refill (for the default burst, exactly "requests per period"); for a sliding
/// window they are its limit and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaInfo {
    /// Quota units admitted per window (`q`).
    pub limit: u32,
    /// The window (`w`).
    pub window: Duration,
}

impl QuotaInfo {
    /// The window in whole seconds, rounded up and at least 1, as `w` is written.
    #[must_use]
    pub fn window_secs(&self) -> u64 {
        retry_after_secs(self.window)
    }
}

/// A request asked for more capacity than the quota's whole burst, so it can never
/// be admitted however long the caller waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a charge of {requested} exceeds the burst of {burst} and can never be admitted")]
pub struct InsufficientCapacity {
    /// The number of requests charged at once.
    pub requested: u32,
    /// The quota's burst, the most that can ever be charged at once.
    pub burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn accessors_read_both_variants() {
        let allowed = Decision::Allowed {
            remaining: 3,
            reset_after: Duration::from_millis(1_500),
        };
        assert_eq!(allowed.remaining(), 3);
        assert_eq!(allowed.retry_after(), None);
        assert_eq!(allowed.retry_after_secs(), None);
        assert_eq!(allowed.reset_secs(), 2);
        let denied = Decision::Denied {
            retry_after: Duration::from_millis(200),
            reset_after: Duration::from_secs(4),
        };
        assert_eq!(denied.remaining(), 0);
        assert_eq!(denied.retry_after_secs(), Some(1));
        assert_eq!(denied.reset_secs(), 4);
        let info = QuotaInfo {
            limit: 50,
            window: Duration::from_millis(60_000),
        };
        assert_eq!(info.window_secs(), 60);
    }
}
