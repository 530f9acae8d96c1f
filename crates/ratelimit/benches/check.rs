//! Cost of one rate-limit check on the request path.
//!
//! * `gcra` / `sliding_window`: a standalone limiter, uncontended and with two
//!   threads hammering the same state;
//! * `store/<algorithm>/<keys>`: a key already in a store of `keys` keys, with a
//!   different key (drawn from all of them) per iteration;
//! * `check_all`: a consumer key in a store plus a pool ceiling;
//! * `key_hash`: deriving the key from a 32-byte API key.
//!
//! The clock advances in steps small enough that nothing is refused, so every
//! iteration takes the admit path (a compare-and-exchange).

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_ratelimit::{
    Gcra, KeyHash, KeyHasher, KeyedStore, Limit, Quota, SlidingWindow, StoreConfig, WindowQuota,
    check_all,
};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Generous quotas, so checks are admitted.
fn quota() -> Quota {
    Quota::per_period(nz(1_000_000), Duration::from_secs(1))
        .unwrap_or_else(|error| panic!("{error}"))
        .with_burst(nz(1_000_000))
}

fn window_quota() -> WindowQuota {
    WindowQuota::new(nz(16_000_000), Duration::from_secs(1))
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Runs `work` on a second thread while `f` is measured.
fn with_contender(work: impl Fn() + Send + Sync, f: impl FnOnce()) {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                work();
            }
        });
        f();
        stop.store(true, Ordering::Relaxed);
    });
}

fn standalone(c: &mut Criterion) {
    let quota = quota();
    let window_quota = window_quota();
    let mut group = c.benchmark_group("standalone");
    let gcra = Gcra::new();
    let mut now = 0_u64;
    group.bench_function("gcra", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(gcra.check(&quota, now))
        });
    });
    let window = SlidingWindow::new();
    group.bench_function("sliding_window", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(window.check(&window_quota, now))
        });
    });
    let contended = Gcra::new();
    with_contender(
        || {
            let _ = black_box(contended.check(&quota, 1 << 40));
        },
        || {
            group.bench_function("gcra_2_threads", |b| {
                b.iter(|| black_box(contended.check(&quota, 1 << 40)));
            });
        },
    );
    let contended = SlidingWindow::new();
    with_contender(
        || {
            let _ = black_box(contended.check(&window_quota, 1 << 40));
        },
        || {
            group.bench_function("sliding_window_2_threads", |b| {
                b.iter(|| black_box(contended.check(&window_quota, 1 << 40)));
            });
        },
    );
    group.finish();
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    for keys in [1_000_usize, 1_000_000] {
        let config = StoreConfig::new(NonZeroUsize::new(keys).unwrap_or(NonZeroUsize::MIN));
        let gcra = KeyedStore::<Gcra>::new(quota(), config);
        let window = KeyedStore::<SlidingWindow>::new(window_quota(), config);
        let hasher = KeyHasher::new();
        // Fill to 70% of the bound.
        let present: Vec<KeyHash> = (0..keys * 7 / 10)
            .map(|i| hasher.hash(&[&i.to_le_bytes()]))
            .collect();
        for &key in &present {
            let _ = gcra.check(key, 0);
            let _ = window.check(key, 0);
        }
        let mut i = 0_usize;
        let mut now = 0_u64;
        group.bench_with_input(BenchmarkId::new("gcra", keys), &keys, |b, _| {
            b.iter(|| {
                i = (i + 7_919) % present.len();
                now += 1;
                black_box(gcra.check(present[i], now))
            });
        });
        group.bench_with_input(BenchmarkId::new("sliding_window", keys), &keys, |b, _| {
            b.iter(|| {
                i = (i + 7_919) % present.len();
                now += 1;
                black_box(window.check(present[i], now))
            });
        });
    }
    group.finish();
}

fn multi(c: &mut Criterion) {
    let store = KeyedStore::<Gcra>::new(
        quota(),
        StoreConfig::new(NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN)),
    );
    let pool = Gcra::new();
    let pool_quota = quota();
    let hasher = KeyHasher::new();
    let keys: Vec<KeyHash> = (0..1_000_u32)
        .map(|i| hasher.hash(&[&i.to_le_bytes()]))
        .collect();
    let mut i = 0;
    let mut now = 0_u64;
    c.bench_function("check_all/consumer_and_pool", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            now += 1_000;
            let limits = [
                Limit::keyed(&store, keys[i]),
                Limit::gcra(&pool, &pool_quota),
            ];
            black_box(check_all(&limits, NonZeroU32::MIN, now))
        });
    });
    let api_key = [b'k'; 32];
    c.bench_function("key_hash/32_byte_api_key", |b| {
        b.iter(|| black_box(hasher.hash(&[b"policy/tier", black_box(&api_key)])));
    });
}

criterion_group!(benches, standalone, keyed, multi);
criterion_main!(benches);
