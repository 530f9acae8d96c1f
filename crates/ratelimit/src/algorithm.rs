//! The contract between an algorithm and the containers that hold its state.
//!
//! Every algorithm here is a pure function from (state, quota, charge, time) to a
//! new state and a [`Decision`](crate::Decision), over a state of at most 96 bits. Containers make
//! that function atomic: a standalone limiter keeps the state in one atomic word
//! and retries a compare-and-exchange, and a [`KeyedStore`](crate::KeyedStore)
//! keeps it next to a 32-bit key tag in one 128-bit word, so a slot can never be
//! charged for one key and read for another.
//!
//! The trait is sealed: its methods work on raw state words and are not part of
//! the public API; use the limiter types ([`Gcra`](crate::Gcra),
//! [`SlidingWindow`](crate::SlidingWindow), [`TokenBudget`](crate::TokenBudget)).

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::decision::{InsufficientCapacity, QuotaInfo};

/// Mask of the 96 state bits in a 128-bit word.
pub(crate) const STATE_MASK: u128 = (1 << 96) - 1;

/// A rate-limit algorithm whose per-key state fits in 96 bits. Implemented by
/// [`Gcra`](crate::Gcra), [`SlidingWindow`](crate::SlidingWindow) and
/// [`TokenBudget`](crate::TokenBudget); sealed.
pub trait Algorithm: sealed::Sealed + Send + Sync + 'static {
    /// The configuration each charge is measured against.
    type Quota: fmt::Debug + Send + Sync;

    /// What the IETF `RateLimit-Policy` header advertises for `quota`.
    fn info(quota: &Self::Quota) -> QuotaInfo;

    /// Fails if `n` can never be admitted under `quota`, however long one waits.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `n` exceeds the burst or limit.
    fn validate(quota: &Self::Quota, n: NonZeroU32) -> Result<(), InsufficientCapacity>;

    #[doc(hidden)]
    fn charge(state: u128, quota: &Self::Quota, n: u32, now: u64) -> sealed::Step;

    #[doc(hidden)]
    fn undo(state: u128, quota: &Self::Quota, undo: sealed::Undo, now: u64) -> u128;

    #[doc(hidden)]
    fn is_idle(state: u128, quota: &Self::Quota, now: u64) -> bool;

    /// What forgetting `state` at `now` would give back to its key, in the
    /// algorithm's own units (comparable only within one quota): zero when the
    /// state is idle. A full [`KeyedStore`](crate::KeyedStore) evicts the key of
    /// least debt among a new key's candidates.
    #[doc(hidden)]
    fn debt(state: u128, quota: &Self::Quota, now: u64) -> u128;
}

pub(crate) mod sealed {
    use crate::decision::Decision;

    /// Implemented only in this crate.
    pub trait Sealed {}

    /// The outcome of one charge on a raw state.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Step {
        /// Admit: replace the state, remember how to undo.
        Admit {
            /// The new 96-bit state.
            state: u128,
            /// The decision to return.
            decision: Decision,
            /// What [`Algorithm::undo`](super::Algorithm::undo) needs to take the
            /// charge back.
            undo: Undo,
        },
        /// Refuse: the state is unchanged.
        Deny(Decision),
    }

    /// Algorithm-specific record of one admitted charge.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Undo {
        /// For GCRA: the TAT right after the charge; for a sliding window: the
        /// window index charged.
        pub mark: u64,
        /// For GCRA: the cost in nanoseconds; for a sliding window: the count.
        pub amount: u64,
    }
}

/// Rounds a `u128` of nanoseconds into a [`Duration`], saturating.
pub(crate) fn from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below one billion, so it fits in a u32.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec)
}

/// Converts a duration to nanoseconds, saturating at `u64::MAX`.
pub(crate) fn nanos_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
