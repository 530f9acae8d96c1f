//! Every selector respects the caller's `accept` filter: it never returns a
//! rejected endpoint, and returns `None` exactly when no endpoint is acceptable.

use std::cell::Cell;
use std::num::NonZeroU32;

use proptest::prelude::*;
use sluice_balance::{
    ConsistentHash, HashConfig, InFlight, LeastRequest, LoadConfig, PeakEwma, Pick, PoolLoad,
    RoundRobin, Selector, Weighted,
};

/// One selector of each kind over `n` endpoints, and the requests held in flight
/// (endpoint `i` has `i % 3`) so the load-aware ones have something to compare.
fn selectors(n: usize) -> (Vec<Box<dyn Selector>>, Vec<InFlight>) {
    let addresses: Vec<String> = (0..n).map(|i| format!("10.4.0.{i}:80")).collect();
    let load = PoolLoad::new(&addresses, LoadConfig::default(), 0);
    let held = load
        .endpoints()
        .iter()
        .enumerate()
        .flat_map(|(i, endpoint)| (0..i % 3).map(move |_| endpoint.start()))
        .collect();
    let weights: Vec<NonZeroU32> = (0..n)
        .map(|i| NonZeroU32::new(u32::try_from(i % 5 + 1).unwrap_or(1)).unwrap_or(NonZeroU32::MIN))
        .collect();
    let selectors: Vec<Box<dyn Selector>> = vec![
        Box::new(RoundRobin::new(n)),
        Box::new(Weighted::new(&weights)),
        Box::new(LeastRequest::new(load.clone())),
        Box::new(PeakEwma::new(load.clone())),
        Box::new(ConsistentHash::new(load, HashConfig::default())),
    ];
    (selectors, held)
}

proptest! {
    #[test]
    fn rejected_endpoints_are_never_returned(
        mask in prop::collection::vec(any::<bool>(), 0..40),
        seeds in prop::collection::vec(any::<u64>(), 1..20),
    ) {
        let n = mask.len();
        let accept = |i: usize| mask.get(i).copied().unwrap_or(false);
        let any_accepted = mask.iter().any(|&a| a);
        let (selectors, _held) = selectors(n);
        for selector in selectors {
            for &seed in &seeds {
                let request = Pick::new(seed).with_hash(seed.rotate_left(17)).accepting(&accept);
                match selector.pick(&request) {
                    Some(index) => prop_assert!(
                        index < n && mask[index],
                        "{selector:?} returned rejected {index}"
                    ),
                    None => prop_assert!(!any_accepted, "{selector:?} found nothing"),
                }
            }
        }
    }
}

/// `accept` is called a bounded number of times even when it rejects everything.
#[test]
fn a_pick_calls_accept_a_bounded_number_of_times() {
    for n in [1, 10, 100, 1000] {
        let (selectors, _held) = selectors(n);
        for selector in selectors {
            let calls = Cell::new(0_usize);
            let reject = |_: usize| {
                calls.set(calls.get() + 1);
                false
            };
            assert_eq!(
                selector.pick(&Pick::new(9).with_hash(9).accepting(&reject)),
                None
            );
            // Own choice + random probes + the ring walk + one or two scans.
            assert!(
                calls.get() <= 2 * n + 70,
                "{selector:?}: {} calls for {n} endpoints",
                calls.get()
            );
        }
    }
}

/// With exactly one acceptable endpoint, every selector finds it.
#[test]
fn a_lone_acceptable_endpoint_is_found() {
    let (selectors, _held) = selectors(300);
    for selector in selectors {
        for seed in 0..20 {
            let only = |i: usize| i == 123;
            assert_eq!(
                selector.pick(&Pick::new(seed).with_hash(seed).accepting(&only)),
                Some(123),
                "{selector:?}"
            );
        }
    }
}
