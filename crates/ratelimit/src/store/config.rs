//! How a [`KeyedStore`](super::KeyedStore) is sized and what it counts.

use std::num::NonZeroUsize;

/// How big a [`KeyedStore`] may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// The most keys tracked at once.
    pub max_keys: NonZeroUsize,
}

impl StoreConfig {
    /// A store of at most `max_keys` keys.
    #[must_use]
    pub fn new(max_keys: NonZeroUsize) -> Self {
        Self { max_keys }
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
    /// Keys evicted while active, to make room for a new key when the store was
    /// full: each starts again from a full burst. Growing steadily, it says
    /// `max_keys` is too small for the callers (or someone rotates keys).
    pub evicted_active: u64,
    /// Requests admitted without tracking their key (both of its sets empty
    /// while `max_keys` keys were tracked elsewhere).
    pub untracked: u64,
}
