//! Power of two choices: compare two random endpoints, send to the less loaded.
//!
//! Mitzenmacher's result: choosing the better of two random endpoints, instead of
//! one, brings the maximum load down from `log n / log log n` to `log log n`, while
//! each pick reads only two endpoints' state, never the whole pool. Unlike
//! "least of all", concurrent pickers that read the same stale counts do not all
//! pile onto the same endpoint.
//!
//! [`LeastRequest`] compares requests in flight; [`PeakEwma`](crate::PeakEwma)
//! compares a latency-weighted cost with the same two-candidate draw.
//!
//! With endpoint weights ([`LeastRequest::weighted`]), the two candidates are drawn
//! in proportion to weight and compared by requests in flight per unit of weight:
//! idle endpoints (a tie, settled by a coin) take requests in proportion to their
//! weights, and busy ones are kept at the same utilisation of their capacity, as
//! Envoy's least-request balancer does with host weights.

use std::cmp::Ordering;
use std::num::NonZeroU32;

use crate::load::PoolLoad;
use crate::probe::{Candidates, Rng, two_candidates, two_weighted};
use crate::weights::{WeightTable, table_for};
use crate::{Pick, Selector};

/// Power of two choices on requests in flight.
///
/// Two distinct random endpoints among the accepted ones are compared; the one
/// with fewer requests in flight wins, a tie is settled by a coin. With a single
/// accepted endpoint, that one is picked.
#[derive(Debug, Clone)]
pub struct LeastRequest {
    load: PoolLoad,
    weights: Option<WeightTable>,
}

impl LeastRequest {
    /// Picks among the endpoints of `load`, by index.
    #[must_use]
    pub fn new(load: PoolLoad) -> Self {
        Self {
            load,
            weights: None,
        }
    }

    /// Picks among the endpoints of `load` with weights (`weights[i]` for endpoint
    /// `i`; see the [module documentation](self)). Weights that are all equal, or
    /// not one per endpoint, leave the selector unweighted.
    #[must_use]
    pub fn weighted(load: PoolLoad, weights: &[NonZeroU32]) -> Self {
        let weights = table_for(weights, load.len());
        Self { load, weights }
    }

    /// The live state this selector reads.
    #[must_use]
    pub fn load(&self) -> &PoolLoad {
        &self.load
    }
}

impl Selector for LeastRequest {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let endpoints = self.load.endpoints();
        let in_flight = |i: usize| endpoints.get(i).map_or(u64::MAX, |e| e.in_flight());
        let weights = self.weights.as_ref();
        choose(endpoints.len(), weights, request, |a, b| match weights {
            // a/wa against b/wb, without division.
            Some(w) => (u128::from(in_flight(a)) * u128::from(w.weight(b)))
                .cmp(&(u128::from(in_flight(b)) * u128::from(w.weight(a)))),
            None => in_flight(a).cmp(&in_flight(b)),
        })
    }

    fn len(&self) -> usize {
        self.load.len()
    }
}

/// Draws two accepted candidates out of `0..n` (uniformly, or in proportion to
/// `weights`) and keeps the one `compare` ranks lower; a tie is settled by a coin,
/// so neither side of a tie is favoured.
pub(crate) fn choose(
    n: usize,
    weights: Option<&WeightTable>,
    request: &Pick<'_>,
    compare: impl Fn(usize, usize) -> Ordering,
) -> Option<usize> {
    let mut rng = Rng::new(request.random);
    let candidates = match weights {
        Some(table) => two_weighted(table, &mut rng, request.accept),
        None => two_candidates(n, &mut rng, request.accept),
    };
    match candidates {
        Candidates::None => None,
        Candidates::One(only) => Some(only),
        Candidates::Two(a, b) => Some(match compare(a, b) {
            Ordering::Less => a,
            Ordering::Greater => b,
            Ordering::Equal if rng.coin() => a,
            Ordering::Equal => b,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::load::LoadConfig;

    fn pool(n: usize) -> PoolLoad {
        let addresses: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
        PoolLoad::new(&addresses, LoadConfig::default(), 0)
    }

    #[test]
    fn empty_pool_picks_nothing() {
        assert_eq!(LeastRequest::new(pool(0)).pick(&Pick::new(1)), None);
    }

    #[test]
    fn single_endpoint_is_picked_if_accepted() {
        let selector = LeastRequest::new(pool(1));
        assert_eq!(selector.pick(&Pick::new(1)), Some(0));
        let none = |_: usize| false;
        assert_eq!(selector.pick(&Pick::new(1).accepting(&none)), None);
    }

    #[test]
    fn the_less_loaded_of_two_always_wins() {
        let load = pool(2);
        let _busy = load.endpoints()[0].start();
        let selector = LeastRequest::new(load);
        assert!((0..100).all(|seed| selector.pick(&Pick::new(seed)) == Some(1)));
    }

    #[test]
    fn ties_go_either_way() {
        let selector = LeastRequest::new(pool(2));
        let mut counts = [0; 2];
        for seed in 0..1000 {
            counts[selector.pick(&Pick::new(seed)).expect("picked")] += 1;
        }
        assert!(counts.iter().all(|&c| c > 400), "{counts:?}");
    }

    #[test]
    fn idle_endpoints_take_requests_by_weight_and_busy_ones_by_capacity() {
        let weights = [7, 3].map(|w| NonZeroU32::new(w).unwrap());
        let load = pool(2);
        let selector = LeastRequest::weighted(load.clone(), &weights);
        let mut counts = [0; 2];
        for seed in 0..10_000 {
            counts[selector.pick(&Pick::new(seed)).expect("picked")] += 1;
        }
        assert!((6_700..7_300).contains(&counts[0]), "{counts:?}");
        // 6 of 7 in flight against 3 of 3: the heavier endpoint has room left and
        // wins every comparison; the lighter one is left only the picks that drew
        // it twice (9 %).
        let _a: Vec<_> = (0..6).map(|_| load.endpoints()[0].start()).collect();
        let _b: Vec<_> = (0..3).map(|_| load.endpoints()[1].start()).collect();
        let light = (0..10_000)
            .filter(|&seed| selector.pick(&Pick::new(seed)) == Some(1))
            .count();
        assert!((700..1_100).contains(&light), "{light}");
    }

    #[test]
    fn same_random_same_choice() {
        let load = pool(10);
        let guards: Vec<_> = (0..10)
            .flat_map(|i| (0..i % 3).map(move |_| i))
            .map(|i| Arc::clone(&load.endpoints()[i]).start())
            .collect();
        let selector = LeastRequest::new(load);
        for seed in 0..50 {
            assert_eq!(
                selector.pick(&Pick::new(seed)),
                selector.pick(&Pick::new(seed))
            );
        }
        drop(guards);
    }
}
