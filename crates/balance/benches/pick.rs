//! Cost of one `pick` for each selector at several pool sizes.
//!
//! Every endpoint is acceptable; the load-aware selectors see a realistic spread
//! of in-flight requests (0 to 3 per endpoint) and of latency estimates, and each
//! iteration uses a new random value (and, for consistent hashing, a new key).

use std::cell::Cell;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_balance::{
    ConsistentHash, HashConfig, InFlight, LeastRequest, LoadConfig, PeakEwma, Pick, PoolLoad,
    RoundRobin, Selector, Weighted, hash_key,
};

const SIZES: [usize; 3] = [10, 100, 1000];

const MS: u64 = 1_000_000;

fn weights(len: usize) -> Vec<NonZeroU32> {
    // Distinct, co-prime-ish weights so that the cycle is long (and scaled at 1000).
    (1..=len)
        .map(|i| {
            NonZeroU32::new(u32::try_from(i * 7 % 97 + 1).unwrap_or(1)).unwrap_or(NonZeroU32::MIN)
        })
        .collect()
}

/// A pool of `len` endpoints with 0 to 3 requests in flight each and latency
/// estimates between 20 and 200 ms; the guards keep the requests in flight.
fn busy_pool(len: usize) -> (PoolLoad, Vec<InFlight>) {
    let addresses: Vec<String> = (0..len)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65_536, i / 256 % 256, i % 256))
        .collect();
    let load = PoolLoad::new(&addresses, LoadConfig::default(), 0);
    let mut held = Vec::new();
    for (i, endpoint) in load.endpoints().iter().enumerate() {
        let i = u64::try_from(i).unwrap_or(0);
        endpoint.record(Duration::from_millis(20 + i * 37 % 180), MS);
        held.extend((0..i % 4).map(|_| endpoint.start()));
    }
    (load, held)
}

/// Measures `selector.pick` with a fresh random value (and hash key) per call.
fn bench_selector(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    len: usize,
    selector: &dyn Selector,
) {
    let keys: Vec<u64> = (0..1024_u64).map(|k| hash_key(&k.to_le_bytes())).collect();
    let counter = Cell::new(0_u64);
    group.bench_with_input(BenchmarkId::new(name, len), &selector, |b, s| {
        b.iter(|| {
            let n = counter.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            counter.set(n);
            let key = keys[usize::try_from(n % 1024).unwrap_or(0)];
            let request = Pick::new(n).with_hash(key).at(2 * MS);
            black_box(s.pick(black_box(&request)))
        });
    });
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for len in SIZES {
        let (load, _held) = busy_pool(len);
        bench_selector(&mut group, "round_robin", len, &RoundRobin::new(len));
        bench_selector(&mut group, "weighted", len, &Weighted::new(&weights(len)));
        bench_selector(
            &mut group,
            "least_request",
            len,
            &LeastRequest::new(load.clone()),
        );
        bench_selector(&mut group, "peak_ewma", len, &PeakEwma::new(load.clone()));
        bench_selector(
            &mut group,
            "consistent_hash",
            len,
            &ConsistentHash::new(load, HashConfig::default()),
        );
    }
    group.finish();
}

/// Building a consistent-hash ring (100 vnodes per endpoint), the cost of a table
/// change for a pool that uses it.
fn build_ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    for len in SIZES {
        let (load, _held) = busy_pool(len);
        group.bench_with_input(
            BenchmarkId::new("consistent_hash", len),
            &load,
            |b, load| {
                b.iter(|| black_box(ConsistentHash::new(load.clone(), HashConfig::default())));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, pick, build_ring);
criterion_main!(benches);
