//! Turning request attributes (consumer, client IP, header values, pool) into the
//! 64-bit keys the stores index by.
//!
//! A [`KeyHasher`] hashes the parts of a key with SipHash-1-3 under a random
//! per-process secret, so the hash of a given key is stable for the life of the
//! hasher (every proxy thread must share one) but cannot be predicted by a client:
//! nobody can craft a key that collides with someone else's on purpose.
//!
//! # Collisions
//!
//! Stores keep the hash, not the key, which keeps an entry at 16 bytes. Two
//! distinct keys whose hashes agree on the bits a store compares (about 32 bits of
//! tag plus the set index, see [`KeyedStore`](crate::KeyedStore)) share one limit:
//! both become stricter, neither gets more. With a million live keys the chance
//! that a given new key meets such a twin is below one in ten million.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A hashed rate-limit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub u64);

/// Hashes key parts into [`KeyHash`]es with a per-process random secret.
#[derive(Debug, Clone, Default)]
pub struct KeyHasher {
    state: RandomState,
}

impl KeyHasher {
    /// Creates a hasher with a fresh random secret.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes a composite key. Each part is length-prefixed, so `["ab", "c"]`
    /// and `["a", "bc"]` are different keys; put a distinct first part (the
    /// policy and tier, say) in keys of different limits.
    #[must_use]
    pub fn hash(&self, parts: &[&[u8]]) -> KeyHash {
        let mut hasher = self.state.build_hasher();
        for part in parts {
            hasher.write_usize(part.len());
            hasher.write(part);
        }
        KeyHash(hasher.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_parts_same_hash_and_boundaries_matter() {
        let hasher = KeyHasher::new();
        let a = hasher.hash(&[b"policy", b"consumer-1"]);
        assert_eq!(a, hasher.hash(&[b"policy", b"consumer-1"]));
        assert_ne!(a, hasher.hash(&[b"policy", b"consumer-2"]));
        assert_ne!(
            hasher.hash(&[b"ab", b"c"]),
            hasher.hash(&[b"a", b"bc"]),
            "parts are length-prefixed"
        );
        let clone = hasher.clone();
        assert_eq!(clone.hash(&[b"x"]), hasher.hash(&[b"x"]));
    }
}
