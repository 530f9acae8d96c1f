//! The keyed store: same decisions as a standalone limiter, exact under
//! concurrency, bounded in keys and memory whatever the number of distinct keys.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use proptest::prelude::*;
use sluice_ratelimit::{
    Decision, Gcra, KeyHash, KeyHasher, KeyedStore, Overflow, Quota, SlidingWindow, StoreConfig,
    WindowQuota,
};

const SEC: u64 = 1_000_000_000;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn config(max_keys: usize) -> StoreConfig {
    StoreConfig::new(NonZeroUsize::new(max_keys).unwrap())
}

/// 10 per second, burst 10.
fn ten_per_second() -> Quota {
    Quota::per_period(nz(10), Duration::from_secs(1)).unwrap()
}

proptest! {
    /// A key in the store decides exactly like a standalone `Gcra`, whatever
    /// other keys do around it.
    #[test]
    fn keyed_gcra_matches_a_standalone_gcra(
        arrivals in prop::collection::vec((0_u64..30_000_000, 0_u64..4, 1_u32..=3), 1..300),
    ) {
        let quota = ten_per_second();
        let store = KeyedStore::<Gcra>::new(quota, config(64));
        let models: Vec<Gcra> = (0..4).map(|_| Gcra::new()).collect();
        let mut now = 0;
        for (gap, key, n) in arrivals {
            now += gap;
            let expected = models[key as usize].check_n(&quota, nz(n), now).unwrap();
            prop_assert_eq!(store.check_n(KeyHash(key * 7919), nz(n), now).unwrap(), expected);
        }
    }

    /// Same for the sliding window.
    #[test]
    fn keyed_window_matches_a_standalone_window(
        arrivals in prop::collection::vec((0_u64..300_000_000, 0_u64..4), 1..300),
    ) {
        let quota = WindowQuota::new(nz(5), Duration::from_secs(1)).unwrap();
        let store = KeyedStore::<SlidingWindow>::new(quota, config(64));
        let models: Vec<SlidingWindow> = (0..4).map(|_| SlidingWindow::new()).collect();
        let mut now = 0;
        for (gap, key) in arrivals {
            now += gap;
            let expected = models[key as usize].check(&quota, now);
            prop_assert_eq!(store.check(KeyHash(key), now), expected);
        }
    }
}

#[test]
fn concurrent_first_requests_for_one_key_admit_exactly_the_burst() {
    let quota = Quota::per_period(nz(100), Duration::from_secs(60)).unwrap();
    for round in 0..20_u64 {
        let store = KeyedStore::<Gcra>::new(quota, config(1_000));
        let admitted = AtomicU32::new(0);
        thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..500 {
                        if store.check(KeyHash(round), 7 * SEC).is_allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
        assert_eq!(store.len(), 1, "the key was inserted once");
    }
}

#[test]
fn idle_keys_are_evicted_to_make_room_and_active_ones_never() {
    let quota = ten_per_second();
    let store = KeyedStore::<Gcra>::new(quota, config(64));
    assert_eq!(store.max_keys(), 64);
    assert_eq!(store.capacity(), 80);
    // Fill it with active keys (each charged once: idle again after 100 ms).
    let mut admitted = 0;
    for key in 0..64 {
        if store.check(KeyHash(key << 40 | key), 0).is_allowed()
            && store.contains(KeyHash(key << 40 | key))
        {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 64,
        "two-choice placement with spare slots fits them all"
    );
    assert!(store.len() <= 64);
    // A new key now finds only active keys: refused with a short wait.
    let tracked = store.len();
    let mut refused = 0;
    for key in 1_000..1_100_u64 {
        let decision = store.check(KeyHash(key.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 0);
        if let Decision::Denied { retry_after, .. } = decision {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert_eq!(store.stats().overflow_denied, refused);
    assert!(store.len() >= tracked, "no active key was evicted");
    // Once the first keys are idle, new keys replace them (a new key can only
    // replace an idle key of its own two sets, so not quite all of them fit).
    let later = 200_000_000;
    let mut replaced = 0;
    for key in 2_000..2_064_u64 {
        if store
            .check(KeyHash(key.wrapping_mul(0x9e37_79b9_7f4a_7c15)), later)
            .is_allowed()
        {
            replaced += 1;
        }
    }
    assert!(
        replaced >= 48,
        "only {replaced} new keys replaced idle ones"
    );
    assert_eq!(store.stats().evicted, replaced);
    assert_eq!(store.len(), 64);
    // Long after, everything is idle and a sweep empties the store.
    assert_eq!(store.sweep(later + SEC), 64);
    assert!(store.is_empty());
}

#[test]
fn sweep_removes_idle_keys_only() {
    let quota = ten_per_second();
    let store = KeyedStore::<Gcra>::new(quota, config(1_000));
    for key in 0..100 {
        assert!(store.check(KeyHash(key), 0).is_allowed());
    }
    for key in 0..10 {
        assert!(store.check(KeyHash(key), SEC).is_allowed());
    }
    assert_eq!(store.len(), 100);
    // At 1.05 s the first charges (TAT 0.1 s) are idle, the second ones not.
    assert_eq!(store.sweep(SEC + 50_000_000), 90);
    assert_eq!(store.len(), 10);
    assert!(store.contains(KeyHash(3)));
    assert!(!store.contains(KeyHash(42)));
}

#[test]
fn overflow_can_admit_untracked() {
    let quota = Quota::per_period(nz(1), Duration::from_secs(3_600)).unwrap();
    let store = KeyedStore::<Gcra>::new(quota, config(8).with_overflow(Overflow::AdmitUntracked));
    for key in 0..1_000_u64 {
        assert!(
            store
                .check(KeyHash(key.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 0)
                .is_allowed()
        );
    }
    assert!(store.len() <= 8);
    let stats = store.stats();
    assert_eq!(stats.inserted as usize, store.len());
    assert_eq!(stats.overflow_admitted as usize, 1_000 - store.len());
}

#[test]
fn a_store_takes_almost_all_of_max_keys_active_keys() {
    // Two-choice placement with spare slots: offer exactly `max_keys` distinct
    // active keys and count how many find a slot.
    let quota = Quota::per_period(nz(1), Duration::from_secs(3_600)).unwrap();
    let store = KeyedStore::<Gcra>::new(quota, config(100_000));
    let hasher = KeyHasher::new();
    let mut first_refusal = None;
    for i in 0..100_000_u64 {
        let key = hasher.hash(&[&i.to_le_bytes()]);
        if !store.check(key, 0).is_allowed() && first_refusal.is_none() {
            first_refusal = Some(i);
        }
    }
    let tracked = store.len();
    println!("{tracked} of 100000 active keys tracked, first refusal at key {first_refusal:?}");
    assert!(tracked >= 99_000, "only {tracked} tracked");
    assert_eq!(store.stats().overflow_denied as usize, 100_000 - tracked);
}

#[test]
fn memory_per_key_is_at_most_64_bytes() {
    for max_keys in [1_000, 100_000, 1_000_000] {
        let store = KeyedStore::<SlidingWindow>::new(
            WindowQuota::new(nz(10), Duration::from_secs(60)).unwrap(),
            config(max_keys),
        );
        let per_key = store.memory_bytes() as f64 / max_keys as f64;
        println!(
            "{max_keys} keys: {} bytes, {per_key:.2} bytes per key",
            store.memory_bytes()
        );
        assert!(per_key <= 21.0, "{per_key} bytes per key");
    }
}
