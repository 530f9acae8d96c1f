//! Property and concurrency tests for `RoundRobin`.

use std::thread;

use proptest::prelude::*;
use sluice_balance::{Pick, RoundRobin, Selector};

fn counts(selector: &impl Selector, picks: usize) -> Vec<usize> {
    let mut counts = vec![0; selector.len()];
    for _ in 0..picks {
        let index = selector.pick(&Pick::default()).expect("non-empty set");
        counts[index] += 1;
    }
    counts
}

proptest! {
    #[test]
    fn every_endpoint_gets_floor_or_ceil_of_its_share(
        len in 1_usize..64,
        picks in 0_usize..2_000,
        start in any::<usize>(),
    ) {
        let selector = RoundRobin::new(len).starting_at(start);
        let floor = picks / len;
        let ceil = picks.div_ceil(len);
        for count in counts(&selector, picks) {
            prop_assert!(count == floor || count == ceil, "{count} not in [{floor}, {ceil}]");
        }
    }

    #[test]
    fn picks_are_always_in_range(len in 0_usize..1_000, start in any::<usize>()) {
        let selector = RoundRobin::new(len).starting_at(start);
        for _ in 0..100 {
            match selector.pick(&Pick::default()) {
                Some(index) => prop_assert!(index < len),
                None => prop_assert_eq!(len, 0),
            }
        }
    }
}

#[test]
fn concurrent_picks_are_shared_exactly_equally() {
    const THREADS: usize = 4;
    const PICKS_PER_THREAD: usize = 30_000;
    const ENDPOINTS: usize = 6; // 4 × 30_000 is a multiple of 6.

    let selector = RoundRobin::new(ENDPOINTS);
    let per_thread: Vec<Vec<usize>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| scope.spawn(|| counts(&selector, PICKS_PER_THREAD)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut totals = vec![0; ENDPOINTS];
    for counts in per_thread {
        for (total, count) in totals.iter_mut().zip(counts) {
            *total += count;
        }
    }
    let expected = THREADS * PICKS_PER_THREAD / ENDPOINTS;
    assert_eq!(totals, vec![expected; ENDPOINTS]);
}
