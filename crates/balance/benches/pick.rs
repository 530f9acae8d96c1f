//! Cost of one `pick` for each selector at several pool sizes.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_balance::{RoundRobin, Selector, Weighted};

const SIZES: [usize; 3] = [10, 100, 1000];

fn weights(len: usize) -> Vec<NonZeroU32> {
    // Distinct, co-prime-ish weights so that the cycle is long (and scaled at 1000).
    (1..=len)
        .map(|i| {
            NonZeroU32::new(u32::try_from(i * 7 % 97 + 1).unwrap_or(1)).unwrap_or(NonZeroU32::MIN)
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for len in SIZES {
        let round_robin = RoundRobin::new(len);
        group.bench_with_input(
            BenchmarkId::new("round_robin", len),
            &round_robin,
            |b, s| {
                b.iter(|| black_box(s.pick()));
            },
        );
        let weighted = Weighted::new(&weights(len));
        group.bench_with_input(BenchmarkId::new("weighted", len), &weighted, |b, s| {
            b.iter(|| black_box(s.pick()));
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
