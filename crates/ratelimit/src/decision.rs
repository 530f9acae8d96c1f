//! What a limiter answers: admit (and how much is left) or refuse (and for how
//! long).

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
