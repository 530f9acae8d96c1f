//! How a [`KeyedStore`](super::KeyedStore) is sized, what it does when full, and
//! what it counts.

use std::num::NonZeroUsize;

/// What a full store does with a request for a key it cannot track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Overflow {
    /// Refuse the request (429): safe against over-admission, but new keys are
    /// refused while the store is full of active keys.
    #[default]
    Deny,
    /// Admit the request without tracking its key: new keys are never refused
    /// because of the store, but an untracked key is not limited while the
    /// store stays full (pool-wide limits still apply).
    AdmitUntracked,
}

/// How big a [`KeyedStore`] may grow and what it does when full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// The most keys tracked at once.
    pub max_keys: NonZeroUsize,
    /// What to do with a request whose key cannot be tracked.
    pub overflow: Overflow,
}

impl StoreConfig {
    /// A store of at most `max_keys` keys that refuses untrackable keys.
    #[must_use]
    pub fn new(max_keys: NonZeroUsize) -> Self {
        Self {
            max_keys,
            overflow: Overflow::Deny,
        }
    }

    /// Returns this configuration with `overflow` as the overflow policy.
    #[must_use]
    pub fn with_overflow(self, overflow: Overflow) -> Self {
        Self { overflow, ..self }
    }
}

/// Counters of a [`KeyedStore`], for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Keys tracked now.
    pub keys: usize,
    /// Keys inserted so far.
    pub inserted: u64,
    /// Idle keys evicted so far (to make room, or by [`KeyedStore::sweep`]).
    pub evicted: u64,
    /// Requests whose key could not be tracked and were refused.
    pub overflow_denied: u64,
    /// Requests whose key could not be tracked and were admitted untracked.
    pub overflow_admitted: u64,
}
