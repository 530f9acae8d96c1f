//! Remapping, spread and bounded-load tests for `ConsistentHash`.

use std::collections::VecDeque;

use proptest::prelude::*;
use sluice_balance::{
    ConsistentHash, HashConfig, InFlight, LoadConfig, LoadFactor, Pick, PoolLoad, Selector,
    hash_key,
};

const KEYS: usize = 10_000;

fn addresses(ids: &[u16]) -> Vec<String> {
    ids.iter()
        .map(|id| format!("10.1.{}.{}:8080", id / 256, id % 256))
        .collect()
}

fn ring(addresses: &[String], config: HashConfig) -> ConsistentHash {
    ConsistentHash::new(PoolLoad::new(addresses, LoadConfig::default(), 0), config)
}

fn keys() -> Vec<u64> {
    (0..KEYS)
        .map(|k| hash_key(format!("session-{k}").as_bytes()))
        .collect()
}

/// The address each key goes to, picking through the selector with nothing in
/// flight (so the bound never bites and the result is the ring owner).
fn placement(selector: &ConsistentHash, addresses: &[String], keys: &[u64]) -> Vec<String> {
    keys.iter()
        .map(|&key| {
            let index = selector
                .pick(&Pick::new(0).with_hash(key))
                .expect("an endpoint");
            assert_eq!(Some(index), selector.owner(key));
            addresses[index].clone()
        })
        .collect()
}

/// Distinct endpoint ids, 2 to 24 of them.
fn endpoint_ids() -> impl Strategy<Value = Vec<u16>> {
    prop::collection::btree_set(0_u16..4_000, 2..24).prop_map(|ids| ids.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// When one of n endpoints leaves, only its keys move (about 1/n of them).
    #[test]
    fn leaving_moves_only_the_keys_of_the_endpoint_that_left(
        ids in endpoint_ids(),
        leaving in any::<prop::sample::Index>(),
    ) {
        let keys = keys();
        let before_addresses = addresses(&ids);
        let gone = before_addresses[leaving.index(ids.len())].clone();
        let after_addresses: Vec<String> =
            before_addresses.iter().filter(|a| **a != gone).cloned().collect();

        let before = placement(&ring(&before_addresses, HashConfig::default()), &before_addresses, &keys);
        let after = placement(&ring(&after_addresses, HashConfig::default()), &after_addresses, &keys);

        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                prop_assert_eq!(b, &gone, "a key of a remaining endpoint moved");
                moved += 1;
            }
        }
        // An endpoint's share varies by about 1/sqrt(vnodes) = 10 %; allow 50 %.
        let limit = KEYS as f64 * (1.5 / ids.len() as f64) + 100.0;
        prop_assert!(f64::from(moved) <= limit, "{moved} keys moved, limit {limit}");
    }

    /// When an endpoint joins n others, only the keys it takes over move.
    #[test]
    fn joining_moves_only_keys_to_the_new_endpoint(ids in endpoint_ids(), new_id in 4_000_u16..5_000) {
        let keys = keys();
        let before_addresses = addresses(&ids);
        let mut after_addresses = before_addresses.clone();
        let joined = addresses(&[new_id]).remove(0);
        // Insert in the middle: the position in the pool must not matter.
        after_addresses.insert(ids.len() / 2, joined.clone());

        let before = placement(&ring(&before_addresses, HashConfig::default()), &before_addresses, &keys);
        let after = placement(&ring(&after_addresses, HashConfig::default()), &after_addresses, &keys);

        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                prop_assert_eq!(a, &joined, "a key moved between old endpoints");
                moved += 1;
            }
        }
        let limit = KEYS as f64 * (1.5 / (ids.len() + 1) as f64) + 100.0;
        prop_assert!(f64::from(moved) <= limit, "{moved} keys moved, limit {limit}");
    }

    /// Whatever the keys, the factor and the churn, an endpoint chosen for a new
    /// request had fewer than ceil((in flight + 1) × factor / n) requests.
    #[test]
    fn bounded_load_holds_for_any_skew(
        n in 2_usize..12,
        factor in 1.0_f64..2.0,
        hot_share in 0.0_f64..1.0,
        seed in any::<u64>(),
    ) {
        let factor = LoadFactor::new(factor).expect("valid factor");
        simulate_bounded_load(n, factor, hot_share, seed, 3_000);
    }
}

/// Keys spread evenly enough: with 100 vnodes no endpoint of 10 gets more than
/// 1.5 × or less than 0.5 × its share of 10 000 keys.
#[test]
fn keys_spread_evenly_across_endpoints() {
    let ids: Vec<u16> = (0..10).collect();
    let addresses = addresses(&ids);
    let selector = ring(&addresses, HashConfig::default());
    let mut counts = vec![0_usize; addresses.len()];
    for key in keys() {
        counts[selector.owner(key).expect("owner")] += 1;
    }
    let share = KEYS / addresses.len();
    assert!(
        counts.iter().all(|&c| c > share / 2 && c < share * 3 / 2),
        "{counts:?}"
    );
}

/// Two replicas that build the ring from the same addresses agree on every key.
#[test]
fn replicas_agree() {
    let addresses = addresses(&[3, 1, 4, 15, 9, 26]);
    let a = ring(&addresses, HashConfig::default());
    let b = ring(&addresses, HashConfig::default());
    assert!(keys().iter().all(|&k| a.owner(k) == b.owner(k)));
}

/// The scenario of the brief: factor 1.25, 8 endpoints, 80 % of requests on three
/// hot sessions.
#[test]
fn bounded_load_holds_with_hot_sessions() {
    let max_seen = simulate_bounded_load(8, LoadFactor::DEFAULT, 0.8, 7, 20_000);
    // At most 33 in flight over 8 endpoints: ceil(33 × 1.25 / 8) = 6, where the
    // three hot endpoints would otherwise hold about 9 each.
    assert!(max_seen <= 6, "an endpoint reached {max_seen} in flight");
}

/// Without a bound, the same skew piles requests onto the hot endpoints.
#[test]
fn without_a_bound_hot_sessions_pile_up() {
    let addresses = addresses(&(0..8).collect::<Vec<_>>());
    let config = HashConfig {
        load_factor: None,
        ..HashConfig::default()
    };
    let selector = ring(&addresses, config);
    let hot = hash_key(b"hot-0");
    let owner = selector.owner(hot).expect("owner");
    let guards: Vec<InFlight> = (0..100)
        .map(|_| {
            let i = selector
                .pick(&Pick::new(0).with_hash(hot))
                .expect("endpoint");
            selector.load().endpoints()[i].start()
        })
        .collect();
    assert_eq!(selector.load().endpoints()[owner].in_flight(), 100);
    drop(guards);
}

/// Runs a random mix of new requests (hot or cold keys) and completions, asserting
/// the bound at each pick. Returns the highest in-flight count any endpoint had.
fn simulate_bounded_load(
    n: usize,
    factor: LoadFactor,
    hot_share: f64,
    seed: u64,
    steps: usize,
) -> u64 {
    let ids: Vec<u16> = (0..n).map(|i| u16::try_from(i).expect("small")).collect();
    let addresses = addresses(&ids);
    let config = HashConfig {
        load_factor: Some(factor),
        ..HashConfig::default()
    };
    let selector = ring(&addresses, config);
    let hot: Vec<u64> = (0..3)
        .map(|i| hash_key(format!("hot-{i}").as_bytes()))
        .collect();
    let mut rng = seed;
    let mut running: VecDeque<InFlight> = VecDeque::new();
    let mut max_seen = 0;
    for _ in 0..steps {
        // Keep about 4 requests per endpoint in flight, finishing the oldest or a
        // random one.
        let r = next(&mut rng);
        if running.len() >= 4 * n || (!running.is_empty() && r.is_multiple_of(3)) {
            let victim = usize::try_from(next(&mut rng) % running.len() as u64).expect("fits");
            drop(running.swap_remove_back(victim));
        }
        let unit = (next(&mut rng) >> 11) as f64 / (1_u64 << 53) as f64;
        let key = if unit < hot_share {
            hot[usize::try_from(next(&mut rng) % 3).expect("fits")]
        } else {
            hash_key(&next(&mut rng).to_le_bytes())
        };
        let index = selector
            .pick(&Pick::new(next(&mut rng)).with_hash(key))
            .expect("an endpoint");
        let endpoint = &selector.load().endpoints()[index];
        running.push_back(endpoint.start());
        let total = selector.load().in_flight() as f64;
        let bound = (total * factor.get() / n as f64).ceil() as u64;
        let got = endpoint.in_flight();
        assert!(got <= bound, "endpoint {index} has {got} > bound {bound}");
        max_seen = max_seen.max(got);
    }
    max_seen
}

/// SplitMix64, for reproducible simulations.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
