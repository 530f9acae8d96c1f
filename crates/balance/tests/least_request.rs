//! Steering and concurrency tests for `LeastRequest` (power of two choices).

use std::sync::Arc;
use std::thread;

use sluice_balance::{InFlight, LeastRequest, LoadConfig, Pick, PoolLoad, Selector};

fn pool(n: usize) -> PoolLoad {
    let addresses: Vec<String> = (0..n).map(|i| format!("10.2.0.{i}:80")).collect();
    PoolLoad::new(&addresses, LoadConfig::default(), 0)
}

/// An endpoint with 10 requests in flight loses every comparison against idle ones.
#[test]
fn a_loaded_endpoint_gets_no_picks_while_others_are_idle() {
    let load = pool(5);
    let busy: Vec<InFlight> = (0..10).map(|_| load.endpoints()[0].start()).collect();
    let selector = LeastRequest::new(load);
    let mut counts = [0; 5];
    for seed in 0..10_000 {
        counts[selector.pick(&Pick::new(seed)).expect("picked")] += 1;
    }
    assert_eq!(counts[0], 0, "{counts:?}");
    assert!(counts[1..].iter().all(|&c| c > 2_000), "{counts:?}");
    drop(busy);
}

/// Requests that hold their endpoint for a while: a pool that starts with one
/// endpoint saturated evens out, and the maximum load stays close to the mean.
#[test]
fn load_evens_out_when_requests_are_held() {
    let load = pool(8);
    let selector = LeastRequest::new(load.clone());
    let mut running: Vec<InFlight> = (0..20).map(|_| load.endpoints()[3].start()).collect();
    let mut picks_of_3 = 0;
    for seed in 0..400_u64 {
        let index = selector.pick(&Pick::new(seed)).expect("picked");
        if index == 3 {
            picks_of_3 += 1;
        }
        running.push(load.endpoints()[index].start());
    }
    // 420 in flight over 8 endpoints: mean 52.5. Endpoint 3 started 20 ahead and
    // is only picked once the others catch up.
    assert!(picks_of_3 < 50, "endpoint 3 picked {picks_of_3} times");
    let max = load.endpoints().iter().map(|e| e.in_flight()).max();
    assert!(max.is_some_and(|m| m <= 60), "max in flight {max:?}");
    drop(running);
    assert_eq!(load.in_flight(), 0);
}

/// Many threads picking, starting and finishing: counts return to zero and every
/// pick is in range.
#[test]
fn concurrent_picks_keep_counts_consistent() {
    let load = pool(16);
    let selector = Arc::new(LeastRequest::new(load.clone()));
    thread::scope(|scope| {
        for t in 0..4_u64 {
            let selector = Arc::clone(&selector);
            let load = load.clone();
            scope.spawn(move || {
                let mut held = Vec::new();
                for i in 0..20_000_u64 {
                    let index = selector.pick(&Pick::new(t << 32 | i)).expect("picked");
                    assert!(index < 16);
                    held.push(load.endpoints()[index].start());
                    if held.len() > 8 {
                        drop(held.swap_remove(usize::try_from(i % 8).expect("fits")));
                    }
                }
            });
        }
    });
    assert_eq!(load.in_flight(), 0);
    assert!(load.endpoints().iter().all(|e| e.in_flight() == 0));
}
