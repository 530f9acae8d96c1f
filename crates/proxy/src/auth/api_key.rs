//! API keys: stored only as SHA-256 hashes, looked up by the hash of what a request
//! presents.
//!
//! The controller hashes each key read from a consumer Secret ([`hash_key`]: lower-case
//! hex of SHA-256 over the key's bytes, the same as `printf %s KEY | sha256sum`) and
//! only the hash enters the route table. The proxy builds one immutable [`KeyStore`]
//! per table and looks requests up by hashing their credential: no plaintext key is
//! ever stored, compared, logged or returned.
//!
//! The lookup is a hash-map probe on the SHA-256 of the presented key. Its timing can
//! reveal something about the *hash* of a guess, which an attacker can compute anyway;
//! it reveals nothing about a stored key, so no constant-time comparison is needed.
//! Several hashes may map to the same consumer (key rotation: old and new key both
//! valid for a while).

use std::collections::HashMap;
use std::fmt;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use sluice_api::table::KeyHash;

use super::{AuthError, Credential, extract_credential};
use crate::hygiene::headers::identity_values;
use crate::identity::Caller;

/// The longest consumer name, tier or pool name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Why a key store could not be built. A configuration error, reported when the table
/// is loaded: the previous store stays in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Two entries have the same key hash: one key would identify two consumers.
    #[error("consumers {first:?} and {second:?} share a key hash")]
    DuplicateHash {
        /// The consumer seen first.
        first: String,
        /// The consumer seen second.
        second: String,
    },
    /// The same consumer name is listed with different tiers or allowed pools.
    #[error("consumer {consumer:?} is listed twice with different settings")]
    ConflictingConsumer {
        /// The consumer name.
        consumer: String,
    },
    /// A consumer name or tier is empty, longer than [`MAX_NAME_LEN`] or not visible
    /// ASCII, so it could not be forwarded in `x-sluice-consumer`/`x-sluice-tier`.
    #[error("consumer {consumer:?} has an invalid name or tier")]
    InvalidConsumer {
        /// The consumer name as configured.
        consumer: String,
    },
}

/// One API consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// Its name: `x-sluice-consumer` and the rate-limit key.
    pub name: String,
    /// Its tier: `x-sluice-tier`, the rate-limit tier and the queue priority.
    pub tier: String,
    /// The pool keys (`namespace/name`) it may call; `None` for no restriction beyond
    /// the pools' own access rules.
    pub allowed_pools: Option<Vec<String>>,
}

impl Consumer {
    /// Whether this consumer's own restriction lets it call `pool`.
    pub fn allows_pool(&self, pool: &str) -> bool {
        self.allowed_pools
            .as_ref()
            .is_none_or(|pools| pools.iter().any(|p| p == pool))
    }
}

/// What a request's API key amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLookup<'a> {
    /// The request presents no credential.
    Missing,
    /// It presents one that is not a valid key; the reason says why.
    Invalid(AuthError),
    /// It presents the key of this consumer.
    Consumer(&'a Consumer),
}

/// The API keys of one route table, by hash. Immutable once built.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyStore {
    by_hash: HashMap<KeyHash, usize>,
    consumers: Vec<Consumer>,
    /// Each consumer as the caller of a request, index for index.
    callers: Vec<Caller>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are not secret, but there is no reason to print them either.
        f.debug_struct("KeyStore")
            .field("keys", &self.by_hash.len())
            .field("consumers", &self.consumers)
            .finish()
    }
}

/// The SHA-256 of `key`'s bytes: the only form in which a key is stored (lower-case
/// hex, as `printf %s KEY | sha256sum` prints it, in tables and Secrets).
pub fn hash_key(key: &str) -> KeyHash {
    KeyHash::from_bytes(Sha256::digest(key.as_bytes()).into())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

impl KeyStore {
    /// Builds a store from `(hash, consumer)` pairs. The same consumer may appear with
    /// several hashes.
    ///
    /// # Errors
    ///
    /// An [`ApiKeyError`] for a hash listed twice, a consumer listed twice with
    /// different settings, or a name or tier that cannot be forwarded.
    pub fn new<I>(entries: I) -> Result<Self, ApiKeyError>
    where
        I: IntoIterator<Item = (KeyHash, Consumer)>,
    {
        let mut store = KeyStore::default();
        for (hash, consumer) in entries {
            if !valid_name(&consumer.name) || !valid_name(&consumer.tier) {
                return Err(ApiKeyError::InvalidConsumer {
                    consumer: consumer.name,
                });
            }
            if let Some(&i) = store.by_hash.get(&hash) {
                return Err(ApiKeyError::DuplicateHash {
                    first: store.consumers[i].name.clone(),
                    second: consumer.name,
                });
            }
            let index = match store.consumers.iter().position(|c| c.name == consumer.name) {
                Some(i) if store.consumers[i] == consumer => i,
                Some(_) => {
                    return Err(ApiKeyError::ConflictingConsumer {
                        consumer: consumer.name,
                    });
                }
                None => {
                    // Valid names (checked above) are valid header values.
                    let mut caller = Caller::new(consumer.name.as_str(), consumer.tier.as_str());
                    caller.identity_values = identity_values(&consumer.name, &consumer.tier).ok();
                    store.callers.push(caller);
                    store.consumers.push(consumer);
                    store.consumers.len() - 1
                }
            };
            store.by_hash.insert(hash, index);
        }
        Ok(store)
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The distinct consumers, in the order they were first listed.
    pub fn consumers(&self) -> &[Consumer] {
        &self.consumers
    }

    /// The index of the consumer whose key is `key`, in `consumers` and `callers`.
    fn index_of(&self, key: &str) -> Option<usize> {
        self.by_hash.get(&hash_key(key)).copied()
    }

    /// The consumer whose key is `key`.
    pub fn lookup(&self, key: &str) -> Option<&Consumer> {
        self.consumers.get(self.index_of(key)?)
    }

    /// The consumer whose key is `credential`'s secret.
    ///
    /// # Errors
    ///
    /// [`AuthError::UnknownKey`] when no consumer has that key.
    pub fn lookup_credential(&self, credential: &Credential<'_>) -> Result<&Consumer, AuthError> {
        self.lookup(credential.secret())
            .ok_or(AuthError::UnknownKey)
    }

    /// The consumer whose key is `credential`'s secret, and that consumer as a caller.
    ///
    /// # Errors
    ///
    /// [`AuthError::UnknownKey`] when no consumer has that key.
    pub fn lookup_caller(
        &self,
        credential: &Credential<'_>,
    ) -> Result<(&Consumer, &Caller), AuthError> {
        self.index_of(credential.secret())
            .and_then(|i| Some((self.consumers.get(i)?, self.callers.get(i)?)))
            .ok_or(AuthError::UnknownKey)
    }

    /// Extracts the request's credential (see [`super`] for where it is read from) and
    /// looks it up.
    pub fn authenticate(&self, headers: &HeaderMap) -> KeyLookup<'_> {
        match extract_credential(headers) {
            Ok(None) => KeyLookup::Missing,
            Ok(Some(credential)) => match self.lookup_credential(&credential) {
                Ok(consumer) => KeyLookup::Consumer(consumer),
                Err(e) => KeyLookup::Invalid(e),
            },
            Err(e) => KeyLookup::Invalid(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_sha256sum() {
        assert_eq!(
            hash_key("").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // printf %s demo-premium-key | sha256sum
        let h = hash_key("demo-premium-key").to_hex();
        assert_eq!(
            h,
            "24fdfedfe3f3458eae8dfd32a021ba503cb73dca09e14591a41821f5f9af91fe"
        );
        assert_eq!(KeyHash::from_hex(&h).map(|k| k.to_hex()), Some(h.clone()));
        assert_eq!(
            KeyHash::from_hex(&h.to_ascii_uppercase()).map(|k| k.to_hex()),
            Some(h)
        );
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(KeyHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn allowed_pools() {
        let mut c = Consumer {
            name: "a".into(),
            tier: "t".into(),
            allowed_pools: None,
        };
        assert!(c.allows_pool("ns/any"));
        c.allowed_pools = Some(vec!["ns/one".into()]);
        assert!(c.allows_pool("ns/one"));
        assert!(!c.allows_pool("ns/two"));
    }
}
