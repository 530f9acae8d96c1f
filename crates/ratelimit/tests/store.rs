//! The keyed store: same decisions as a standalone limiter, exact under
//! concurrency, bounded in keys and memory whatever the number of distinct keys.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use proptest::prelude::*;
use sluice_ratelimit::{
    Gcra, KeyHash, KeyHasher, KeyedStore, Quota, SlidingWindow, StoreConfig, WindowQuota,
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

fn spread(key: u64) -> KeyHash {
    KeyHash(key.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[test]
fn a_full_store_of_active_keys_still_takes_every_new_key() {
    let quota = ten_per_second();
    let store = KeyedStore::<Gcra>::new(quota, config(64));
    assert_eq!(store.max_keys(), 64);
    assert_eq!(store.capacity(), 80);
    // Fill it with active keys (each charged once: idle again after 100 ms).
    for key in 0..64 {
        assert!(store.check(spread(key), 0).is_allowed());
        assert!(store.contains(spread(key)));
    }
    assert_eq!(store.len(), 64);
    // Every new key is admitted and tracked, in place of an active key: none
    // refused, none untracked, the bound kept.
    for key in 1_000..1_100_u64 {
        assert!(store.check(spread(key), 0).is_allowed());
        assert!(store.contains(spread(key)), "key {key} tracked");
    }
    let stats = store.stats();
    assert_eq!(store.len(), 64);
    assert_eq!(stats.evicted_active, 100);
    assert_eq!((stats.evicted, stats.untracked), (0, 0));
    assert_eq!(stats.inserted, 164);
}

#[test]
fn a_full_store_forgets_the_key_of_least_debt_first() {
    // One caller has spent its whole burst; a flood of one-request keys fills the
    // store around it. The flood evicts itself (and idle keys) first: the
    // caller's debt stays and it is still refused.
    let quota = ten_per_second();
    let store = KeyedStore::<Gcra>::new(quota, config(64));
    let heavy = spread(7);
    for _ in 0..10 {
        assert!(store.check(heavy, 0).is_allowed());
    }
    assert!(!store.check(heavy, 0).is_allowed());
    for key in 10_000..20_000_u64 {
        assert!(store.check(spread(key), 0).is_allowed());
    }
    assert!(
        store.contains(heavy),
        "the key that spent its burst was kept"
    );
    assert!(!store.check(heavy, 0).is_allowed(), "and is still refused");
    assert_eq!(store.stats().untracked, 0);
}

#[test]
fn idle_keys_go_before_active_ones_and_a_sweep_empties_the_store() {
    let quota = ten_per_second();
    let store = KeyedStore::<Gcra>::new(quota, config(64));
    for key in 0..64 {
        assert!(store.check(spread(key), 0).is_allowed());
    }
    // At 0.2 s the first keys are idle (their TATs were 0.1 s): new keys replace
    // them without forgetting any debt, unless a new key's two sets hold only
    // keys of this second batch (then it takes the place of one of those).
    let later = 200_000_000;
    for key in 2_000..2_064_u64 {
        assert!(store.check(spread(key), later).is_allowed());
    }
    let stats = store.stats();
    assert_eq!(stats.evicted + stats.evicted_active, 64);
    assert!(
        stats.evicted >= 48,
        "only {} idle keys replaced",
        stats.evicted
    );
    assert_eq!(store.len(), 64);
    // Long after, everything is idle and a sweep empties the store.
    assert_eq!(store.sweep(later + SEC), 64);
    assert!(store.is_empty());
}

#[test]
fn a_full_sliding_window_store_keeps_its_busiest_key() {
    let quota = WindowQuota::new(nz(100), Duration::from_secs(60)).unwrap();
    let store = KeyedStore::<SlidingWindow>::new(quota, config(64));
    let busy = spread(3);
    for _ in 0..50 {
        assert!(store.check(busy, 0).is_allowed());
    }
    for key in 10_000..12_000_u64 {
        assert!(store.check(spread(key), SEC).is_allowed());
    }
    assert!(store.contains(busy));
    assert_eq!(store.check(busy, SEC).remaining(), 49);
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
fn a_store_takes_almost_all_of_max_keys_active_keys() {
    // Two-choice placement with spare slots: offer exactly `max_keys` distinct
    // active keys and count how many find an empty slot (the others take the
    // place of an earlier key).
    let quota = Quota::per_period(nz(1), Duration::from_secs(3_600)).unwrap();
    let store = KeyedStore::<Gcra>::new(quota, config(100_000));
    let hasher = KeyHasher::new();
    let mut first_eviction = None;
    for i in 0..100_000_u64 {
        let key = hasher.hash(&[&i.to_le_bytes()]);
        assert!(store.check(key, 0).is_allowed());
        if store.stats().evicted_active > 0 && first_eviction.is_none() {
            first_eviction = Some(i);
        }
    }
    let tracked = store.len();
    println!("{tracked} of 100000 active keys tracked, first eviction at key {first_eviction:?}");
    assert!(tracked >= 99_000, "only {tracked} tracked");
    assert_eq!(store.stats().evicted_active as usize, 100_000 - tracked);
    assert_eq!(store.stats().untracked, 0);
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
