//! "Memory bound holds with 10M distinct keys": an attacker rotating API keys or
//! client IPs cannot grow a key store past its bound.
//!
//! Alone in its test binary, so that the resident-set measurements are not
//! disturbed by other tests allocating. The 10M variant is ignored by default:
//! `cargo test -p sluice-ratelimit --release --test memory_bound -- --ignored`.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use sluice_ratelimit::{Gcra, KeyHasher, KeyedStore, Quota, StoreConfig};

const BOUND: usize = 100_000;

/// Resident set size of this process, in bytes, from /proc/self/statm.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Streams `total` distinct keys through a store bounded at 100k keys, with time
/// moving 1 µs per request so that keys go idle (100 ms after their one
/// request) and get replaced, and checks the bound all along.
fn rotating_keys(total: u64) {
    let quota = Quota::per_period(NonZeroU32::new(10).unwrap(), Duration::from_secs(1)).unwrap();
    let store = KeyedStore::<Gcra>::new(quota, StoreConfig::new(NonZeroUsize::new(BOUND).unwrap()));
    let hasher = KeyHasher::new();
    // Walk the whole allocation once, so that RSS includes it from the start.
    store.sweep(0);
    let before = rss_bytes();
    let mut admitted = 0_u64;
    let mut peak = 0;
    for i in 0..total {
        let key = hasher.hash(&[b"api-key", &i.to_le_bytes()]);
        if store.check(key, i * 1_000).is_allowed() {
            admitted += 1;
        }
        if i % 4_096 == 0 {
            peak = peak.max(store.len());
            assert!(store.len() <= BOUND, "{} keys tracked", store.len());
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    let stats = store.stats();
    println!(
        "{total} distinct keys through a {BOUND}-key store: peak {peak} tracked, {} evicted, \
         {} evicted while active, {admitted} admitted; store {} bytes ({:.1} per key of the bound); \
         RSS grew {grown} bytes",
        stats.evicted,
        stats.evicted_active,
        store.memory_bytes(),
        store.memory_bytes() as f64 / BOUND as f64,
    );
    assert!(peak <= BOUND && store.len() <= BOUND);
    assert!(store.memory_bytes() <= BOUND * 64);
    // Nothing is allocated after construction: the only growth allowed is noise
    // (test harness output, allocator bookkeeping), far below one byte per key.
    assert!(grown < 1 << 20, "RSS grew by {grown} bytes");
    assert!(stats.evicted > 0, "idle keys were recycled");
}

#[test]
fn memory_bound_holds_with_one_million_distinct_keys() {
    rotating_keys(1_000_000);
}

#[test]
#[ignore = "10M keys: seconds in release, a minute or more in debug"]
fn memory_bound_holds_with_ten_million_distinct_keys() {
    rotating_keys(10_000_000);
}
