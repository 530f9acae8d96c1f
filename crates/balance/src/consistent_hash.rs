//! Consistent hashing with bounded loads, for session affinity.
//!
//! A stateful agent keeps a session's context in memory on one pod, so every
//! request of the session should reach that pod. The proxy hashes a session key (a
//! header, a cookie, the client address) with [`hash_key`] and passes it as
//! [`Pick::hash`]; [`ConsistentHash`] maps it to an endpoint on a hash ring.
//!
//! # The ring
//!
//! Each endpoint owns `vnodes` points on a ring of `u64`s, the point of its virtual
//! node `v` being the xxh3 hash of its *address* with seed `v`. A key belongs to the
//! endpoint owning the first point at or after it, wrapping around. The points
//! depend only on the addresses, not on the order of the endpoints nor on the other
//! endpoints, so:
//!
//! * every proxy replica builds the same ring from the same endpoints and sends a
//!   session to the same pod;
//! * when an endpoint leaves, only the keys it owned move (about `1/n` of them);
//!   when one joins, only the keys it takes over move; every other key stays put.
//!
//! xxh3 is a frozen specification, so ring points and [`hash_key`] do not change
//! between processes, machines or releases.
//!
//! # Bounded load
//!
//! A hot session key would pin its pod. With a [`LoadFactor`] `c`, an endpoint
//! takes a new request only while it has fewer than
//! `ceil((pool in flight + 1) × c / n)` requests in flight (Mirrokni, Thorup and
//! Zadimoghaddam, "Consistent Hashing with Bounded Loads"); otherwise the request
//! walks the ring to the next endpoint. No endpoint then exceeds `c` times the mean
//! load, and most keys still land on their own endpoint.
//!
//! Endpoints the caller rejects are skipped the same way. The walk visits at most
//! [`MAX_WALK`] ring points, then scans the endpoints once; if every accepted
//! endpoint is over the bound, the first accepted one met is picked (affinity and
//! availability over balance: hard limits such as `maxConcurrency` belong in the
//! caller's `accept`).
//!
//! # Weights
//!
//! [`ConsistentHash::weighted`] gives each endpoint ring points in proportion to its
//! weight: `vnodes × weight / largest weight`, at least one, so an endpoint's share
//! of keys follows its weight (one far below a hundredth of the largest is rounded
//! up to one point), and the load bound scales likewise: an endpoint may hold
//! `c × weight / mean weight` times the mean load. An endpoint's points are the first
//! of its own sequence, so changing another endpoint's weight moves no key of its.
//!
//! # Cost
//!
//! The ring holds `n × vnodes` points of 12 bytes (1.2 MB for 1000 endpoints and
//! 100 vnodes) and is sorted once when built. A pick is a binary search plus, when
//! the owner is accepted and under the bound, one in-flight read.

use std::num::NonZeroU32;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::load::PoolLoad;
use crate::weights::{WeightTable, table_for};
use crate::{Pick, Selector};

/// Default number of virtual nodes per endpoint.
pub const DEFAULT_VNODES: NonZeroU32 = match NonZeroU32::new(100) {
    Some(vnodes) => vnodes,
    None => NonZeroU32::MIN,
};

/// Ring points visited past a key's owner before falling back to a scan of the
/// endpoints.
pub const MAX_WALK: usize = 64;

/// Hashes a session key (header value, cookie, client address) into the `u64` that
/// [`Pick::hash`] expects.
///
/// The hash is 64-bit xxh3 with seed 0: identical on every proxy replica, machine
/// and release, so all replicas send a session to the same endpoint.
#[must_use]
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// How far above the mean load an endpoint may go before keys spill to the next
/// endpoint on the ring: a finite factor of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct LoadFactor(f64);

impl LoadFactor {
    /// 1.25: an endpoint takes at most 25 % more than the mean load.
    pub const DEFAULT: Self = Self(1.25);

    /// The factor `factor`, or `None` unless it is finite and at least 1.
    #[must_use]
    pub fn new(factor: f64) -> Option<Self> {
        (factor.is_finite() && factor >= 1.0).then_some(Self(factor))
    }

    /// The factor.
    #[must_use]
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for LoadFactor {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a [`ConsistentHash`] ring is built and bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HashConfig {
    /// Virtual nodes per endpoint: more spread keys more evenly (an endpoint's share
    /// varies by about `1/sqrt(vnodes)`) at the cost of memory and build time.
    pub vnodes: NonZeroU32,
    /// The load bound, or `None` for plain consistent hashing with no bound.
    pub load_factor: Option<LoadFactor>,
}

impl Default for HashConfig {
    fn default() -> Self {
        Self {
            vnodes: DEFAULT_VNODES,
            load_factor: Some(LoadFactor::DEFAULT),
        }
    }
}

/// Consistent hashing on [`Pick::hash`] with virtual nodes and bounded load.
///
/// A request without a hash key is placed by [`Pick::random`] instead, so it goes
/// to a random endpoint, bound and filter still applying.
#[derive(Clone)]
pub struct ConsistentHash {
    /// Ring points, ascending.
    points: Box<[u64]>,
    /// `owners[i]` is the endpoint index owning `points[i]`.
    owners: Box<[u32]>,
    load: PoolLoad,
    factor: Option<f64>,
    weights: Option<WeightTable>,
}

impl ConsistentHash {
    /// Builds the ring for the endpoints of `load`, identified by their addresses.
    ///
    /// Two endpoints with the same address get the same points; the lower index is
    /// met first on the ring.
    #[must_use]
    pub fn new(load: PoolLoad, config: HashConfig) -> Self {
        Self::weighted(load, config, &[])
    }

    /// Builds the ring with endpoint weights (`weights[i]` for endpoint `i`; see the
    /// [module documentation](self)). Weights that are all equal, or not one per
    /// endpoint, build the unweighted ring.
    #[must_use]
    pub fn weighted(load: PoolLoad, config: HashConfig, weights: &[NonZeroU32]) -> Self {
        let weights = table_for(weights, load.len());
        let vnodes = config.vnodes.get();
        let largest = weights
            .as_ref()
            .map_or(1, |w| (0..w.len()).map(|i| w.weight(i)).max().unwrap_or(1));
        let points_of = |index: usize| match &weights {
            Some(w) => {
                let share = u64::from(vnodes) * u64::from(w.weight(index)) / u64::from(largest);
                u32::try_from(share).unwrap_or(vnodes).max(1)
            }
            None => vnodes,
        };
        let addresses = load.addresses();
        let mut ring: Vec<(u64, &str, u32)> =
            Vec::with_capacity(addresses.len().saturating_mul(vnodes as usize));
        for (index, address) in addresses.iter().enumerate() {
            // More than 2^32 endpoints cannot be allocated anyway.
            let Ok(owner) = u32::try_from(index) else {
                break;
            };
            ring.extend(
                (0..points_of(index)).map(|v| (vnode_point(address, v), &**address, owner)),
            );
        }
        // Ties between points are broken by address, so the order of the endpoints
        // in the pool never changes the ring.
        ring.sort_unstable();
        Self {
            points: ring.iter().map(|&(point, _, _)| point).collect(),
            owners: ring.iter().map(|&(_, _, owner)| owner).collect(),
            load,
            factor: config.load_factor.map(LoadFactor::get),
            weights,
        }
    }

    /// The endpoint owning `key` on the ring, ignoring load and acceptance: where
    /// the session goes when its endpoint is accepted and under the bound.
    #[must_use]
    pub fn owner(&self, key: u64) -> Option<usize> {
        self.owner_at(self.position(key))
    }

    /// The live state this selector reads.
    #[must_use]
    pub fn load(&self) -> &PoolLoad {
        &self.load
    }

    /// The in-flight count an endpoint must stay below to take a new request now,
    /// or `None` with no load factor. With weights this is the bound of an endpoint
    /// of the mean weight; see [`ConsistentHash::bound_of`].
    #[must_use]
    pub fn bound(&self) -> Option<u64> {
        self.bound_scaled(1.0)
    }

    /// The in-flight count endpoint `index` must stay below to take a new request
    /// now: its share of the bound by weight.
    #[must_use]
    pub fn bound_of(&self, index: usize) -> Option<u64> {
        let scale = self.weights.as_ref().map_or(1.0, |w| 1.0 / w.scale(index));
        self.bound_scaled(scale)
    }

    fn bound_scaled(&self, scale: f64) -> Option<u64> {
        let factor = self.factor?;
        let n = self.load.len().max(1) as f64;
        let total = self.load.in_flight() as f64;
        // At least 1: an idle endpoint always takes a request.
        Some((((total + 1.0) * factor * scale / n).ceil() as u64).max(1))
    }

    /// Index in `points` of the first point at or after `key`, wrapping to 0.
    fn position(&self, key: u64) -> usize {
        let position = self.points.partition_point(|&point| point < key);
        if position == self.points.len() {
            0
        } else {
            position
        }
    }

    fn owner_at(&self, position: usize) -> Option<usize> {
        self.owners.get(position).map(|&owner| owner as usize)
    }
}

impl std::fmt::Debug for ConsistentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ring itself is large and says little; summarise it.
        f.debug_struct("ConsistentHash")
            .field("endpoints", &self.load.len())
            .field("points", &self.points.len())
            .field("factor", &self.factor)
            .finish_non_exhaustive()
    }
}

impl Selector for ConsistentHash {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let ring = self.points.len();
        let start = self.position(request.hash.unwrap_or(request.random));
        let mut previous = self.owner_at(start)?;
        let endpoints = self.load.endpoints();
        let bound = self.bound();
        let under_bound = |i: usize| {
            let bound = match &self.weights {
                Some(_) => self.bound_of(i),
                None => bound,
            };
            bound.is_none_or(|b| endpoints.get(i).is_some_and(|e| e.in_flight() < b))
        };
        let mut first_accepted = None;
        let mut consider = |i: usize| {
            if !request.accepts(i) {
                return false;
            }
            first_accepted.get_or_insert(i);
            under_bound(i)
        };
        if consider(previous) {
            return Some(previous);
        }
        // Walk the ring, skipping consecutive points of the same endpoint.
        for step in 1..ring.min(MAX_WALK) {
            let Some(owner) = self.owner_at((start + step) % ring) else {
                break;
            };
            if owner != previous {
                previous = owner;
                if consider(owner) {
                    return Some(owner);
                }
            }
        }
        let n = endpoints.len();
        let found = (1..=n).map(|k| (previous + k) % n).find(|&i| consider(i));
        found.or(first_accepted)
    }

    fn len(&self) -> usize {
        self.load.len()
    }
}

/// The ring point of virtual node `vnode` of the endpoint at `address`.
fn vnode_point(address: &str, vnode: u32) -> u64 {
    xxh3_64_with_seed(address.as_bytes(), u64::from(vnode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::LoadConfig;

    fn ring(addresses: &[&str], config: HashConfig) -> ConsistentHash {
        ConsistentHash::new(PoolLoad::new(addresses, LoadConfig::default(), 0), config)
    }

    #[test]
    fn hash_key_is_xxh3_and_stable() {
        // Reference value of XXH3_64bits("") from the xxHash test vectors.
        assert_eq!(hash_key(b""), 0x2D06_8005_38D3_94C2);
        // Pinned: a change here would send every session to another pod.
        assert_eq!(hash_key(b"session-42"), PINNED_SESSION_42);
        assert_eq!(vnode_point("10.0.0.1:8080", 7), PINNED_VNODE_POINT);
    }

    // Cross-checked with the reference C library (libxxhash 0.8.1): XXH3_64bits and
    // XXH3_64bits_withSeed.
    const PINNED_SESSION_42: u64 = 0xA5F9_11D7_4983_374E;
    const PINNED_VNODE_POINT: u64 = 0x22F7_E352_FC83_A557;

    #[test]
    fn load_factor_must_be_finite_and_at_least_one() {
        assert!(LoadFactor::new(0.99).is_none());
        assert!(LoadFactor::new(f64::NAN).is_none());
        assert!(LoadFactor::new(f64::INFINITY).is_none());
        assert_eq!(LoadFactor::new(1.0).map(LoadFactor::get), Some(1.0));
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let selector = ring(&[], HashConfig::default());
        assert_eq!(selector.pick(&Pick::new(1).with_hash(5)), None);
        assert_eq!(selector.owner(5), None);
    }

    #[test]
    fn ring_has_vnodes_points_per_endpoint_sorted() {
        let config = HashConfig {
            vnodes: NonZeroU32::new(10).expect("non-zero"),
            ..HashConfig::default()
        };
        let selector = ring(&["a", "b", "c"], config);
        assert_eq!(selector.points.len(), 30);
        assert!(selector.points.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn endpoint_order_does_not_change_the_ring() {
        let forward = ring(&["a:1", "b:1", "c:1"], HashConfig::default());
        let backward = ring(&["c:1", "b:1", "a:1"], HashConfig::default());
        let names = ["a:1", "b:1", "c:1"];
        let reversed = ["c:1", "b:1", "a:1"];
        for key in 0..1000_u64 {
            let key = hash_key(&key.to_le_bytes());
            let a = forward.owner(key).map(|i| names[i]);
            let b = backward.owner(key).map(|i| reversed[i]);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn same_key_same_endpoint_while_idle() {
        let selector = ring(&["a", "b", "c", "d"], HashConfig::default());
        for key in 0..200_u64 {
            let hash = hash_key(&key.to_le_bytes());
            let owner = selector.owner(hash);
            assert_eq!(selector.pick(&Pick::new(key).with_hash(hash)), owner);
        }
    }

    #[test]
    fn a_rejected_owner_sends_the_key_elsewhere() {
        let selector = ring(&["a", "b", "c"], HashConfig::default());
        let hash = hash_key(b"user-1");
        let owner = selector.owner(hash).expect("owner");
        let not_owner = |i: usize| i != owner;
        let pick = selector.pick(&Pick::new(0).with_hash(hash).accepting(&not_owner));
        assert!(pick.is_some_and(|i| i != owner));
        let none = |_: usize| false;
        assert_eq!(
            selector.pick(&Pick::new(0).with_hash(hash).accepting(&none)),
            None
        );
    }

    #[test]
    fn an_owner_over_the_bound_spills_to_another_endpoint() {
        let selector = ring(&["a", "b", "c", "d"], HashConfig::default());
        let hash = hash_key(b"hot");
        let owner = selector.owner(hash).expect("owner");
        // 2 in flight, all on the owner: bound = ceil(3 × 1.25 / 4) = 1.
        let guards: Vec<_> = (0..2)
            .map(|_| selector.load().endpoints()[owner].start())
            .collect();
        assert_eq!(selector.bound(), Some(1));
        let pick = selector.pick(&Pick::new(0).with_hash(hash));
        assert!(pick.is_some_and(|i| i != owner));
        drop(guards);
        assert_eq!(selector.pick(&Pick::new(0).with_hash(hash)), Some(owner));
    }

    #[test]
    fn ring_points_and_bounds_follow_the_weights() {
        let addresses: Vec<String> = (0..3).map(|i| format!("10.0.0.{i}:80")).collect();
        let load = PoolLoad::new(&addresses, LoadConfig::default(), 0);
        let weights = [2, 1, 1].map(|w| NonZeroU32::new(w).unwrap());
        let config = HashConfig {
            vnodes: NonZeroU32::new(200).unwrap(),
            load_factor: Some(LoadFactor::DEFAULT),
        };
        let selector = ConsistentHash::weighted(load, config, &weights);
        assert_eq!(selector.points.len(), 400);
        let mut owned = [0_u32; 3];
        for key in 0..20_000_u64 {
            owned[selector.owner(hash_key(&key.to_le_bytes())).unwrap()] += 1;
        }
        assert!((8_600..11_400).contains(&owned[0]), "{owned:?}");
        // An idle pool: 1.25 × 2 / (4 / 3) of the mean for the heavy endpoint.
        assert_eq!(selector.bound_of(0), Some(1));
        assert!(selector.bound_of(0) >= selector.bound_of(1));
    }

    #[test]
    fn without_a_factor_there_is_no_bound() {
        let config = HashConfig {
            load_factor: None,
            ..HashConfig::default()
        };
        let selector = ring(&["a", "b"], config);
        let hash = hash_key(b"hot");
        let owner = selector.owner(hash).expect("owner");
        let _guards: Vec<_> = (0..50)
            .map(|_| selector.load().endpoints()[owner].start())
            .collect();
        assert_eq!(selector.bound(), None);
        assert_eq!(selector.pick(&Pick::new(0).with_hash(hash)), Some(owner));
    }
}
