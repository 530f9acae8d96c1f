//! Property tests for `Weighted` (smooth weighted round robin).

use std::num::{NonZeroU32, NonZeroUsize};

use proptest::prelude::*;
use sluice_balance::{Pick, Selector, Weighted, weighted::MAX_CYCLE};

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn weights_strategy(max_len: usize, max_weight: u32) -> impl Strategy<Value = Vec<NonZeroU32>> {
    prop::collection::vec(1..=max_weight, 1..=max_len).prop_map(|raw| {
        raw.into_iter()
            .map(|w| NonZeroU32::new(w).unwrap())
            .collect()
    })
}

fn counts(selector: &Weighted, picks: usize) -> Vec<u64> {
    let mut counts = vec![0; selector.len()];
    for _ in 0..picks {
        counts[selector.pick(&Pick::default()).expect("non-empty set")] += 1;
    }
    counts
}

/// Relative shares of `counts` differ from those of `weights` by at most
/// `(n + 1) / (limit - n)`, the bound documented for scaled cycles.
fn assert_shares_close(weights: &[NonZeroU32], counts: &[u64], limit: usize) {
    let n = weights.len() as f64;
    let tolerance = (n + 1.0) / (limit as f64 - n);
    let weight_sum: f64 = weights.iter().map(|w| f64::from(w.get())).sum();
    let count_sum: f64 = counts.iter().map(|&c| c as f64).sum();
    for (weight, &count) in weights.iter().zip(counts) {
        let want = f64::from(weight.get()) / weight_sum;
        let got = count as f64 / count_sum;
        assert!(
            (want - got).abs() <= tolerance,
            "share {got} vs {want} (tolerance {tolerance})"
        );
    }
}

proptest! {
    #[test]
    fn full_cycles_give_exact_shares(weights in weights_strategy(16, 200), cycles in 1_usize..4) {
        let selector = Weighted::new(&weights);
        let divisor = weights.iter().fold(0, |g, w| gcd(g, u64::from(w.get())));
        let reduced: Vec<u64> = weights.iter().map(|w| u64::from(w.get()) / divisor).collect();
        let cycle_len: u64 = reduced.iter().sum();
        prop_assert_eq!(selector.cycle().len() as u64, cycle_len);

        let picks = counts(&selector, cycles * selector.cycle().len());
        let expected: Vec<u64> = reduced.iter().map(|w| w * cycles as u64).collect();
        prop_assert_eq!(picks, expected);
    }

    #[test]
    fn scaled_cycles_stay_bounded_and_close_to_the_weights(
        weights in weights_strategy(16, 100_000),
        limit in 64_usize..2_048,
    ) {
        let selector = Weighted::with_cycle_limit(&weights, NonZeroUsize::new(limit).unwrap());
        let cycle = selector.cycle();
        prop_assert!(cycle.len() <= limit);
        let picks = counts(&selector, cycle.len());
        prop_assert!(picks.iter().all(|&count| count >= 1), "an endpoint was dropped: {picks:?}");
        assert_shares_close(&weights, &picks, limit);
    }

    #[test]
    fn default_limit_is_respected_for_huge_weights(weights in weights_strategy(8, u32::MAX)) {
        let selector = Weighted::new(&weights);
        let cycle = selector.cycle();
        prop_assert!(cycle.len() <= MAX_CYCLE);
        let picks = counts(&selector, cycle.len());
        prop_assert!(picks.iter().all(|&count| count >= 1));
        assert_shares_close(&weights, &picks, MAX_CYCLE);
    }

    /// Smoothness: at every point of a cycle, endpoint `i` has been picked less than
    /// one time more, and less than `n - 1` times fewer, than its exact share
    /// `t × w_i / S`. (nginx's current weights stay within `(-S, (n - 1) S)`.)
    #[test]
    fn every_prefix_stays_close_to_the_exact_share(weights in weights_strategy(12, 300)) {
        let selector = Weighted::new(&weights);
        let cycle = selector.cycle();
        let n = weights.len() as i64;
        let reduced_total = cycle.len() as i64;
        let reduced: Vec<i64> = (0..weights.len())
            .map(|i| cycle.iter().filter(|&&e| e == i).count() as i64)
            .collect();
        let mut picked = vec![0_i64; weights.len()];
        for (t, &endpoint) in cycle.iter().enumerate() {
            picked[endpoint] += 1;
            let t = t as i64 + 1;
            for (count, weight) in picked.iter().zip(&reduced) {
                // current weight = t × w − S × count, kept within (-S, (n - 1) S)
                let current = t * weight - reduced_total * count;
                prop_assert!(current > -reduced_total && current < (n - 1).max(1) * reduced_total);
            }
        }
    }

    #[test]
    fn picks_are_always_in_range(weights in weights_strategy(64, 1_000), start in any::<usize>()) {
        let selector = Weighted::new(&weights).starting_at(start);
        for _ in 0..500 {
            prop_assert!(selector.pick(&Pick::default()).is_some_and(|index| index < weights.len()));
        }
    }
}
