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

use std::cmp::Ordering;

use crate::load::PoolLoad;
use crate::probe::{Candidates, Rng, two_candidates};
use crate::{Pick, Selector};

/// Power of two choices on requests in flight.
///
/// Two distinct random endpoints among the accepted ones are compared; the one
/// with fewer requests in flight wins, a tie is settled by a coin. With a single
/// accepted endpoint, that one is picked.
#[derive(Debug, Clone)]
pub struct LeastRequest {
    load: PoolLoad,
}

impl LeastRequest {
    /// Picks among the endpoints of `load`, by index.
    #[must_use]
    pub fn new(load: PoolLoad) -> Self {
        Self { load }
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
        choose(endpoints.len(), request, |a, b| {
            let in_flight = |i: usize| endpoints.get(i).map_or(u64::MAX, |e| e.in_flight());
            in_flight(a).cmp(&in_flight(b))
        })
    }

    fn len(&self) -> usize {
        self.load.len()
    }
}

/// Draws two accepted candidates out of `0..n` and keeps the one `compare` ranks
/// lower; a tie is settled by a coin, so neither side of a tie is favoured.
pub(crate) fn choose(
    n: usize,
    request: &Pick<'_>,
    compare: impl Fn(usize, usize) -> Ordering,
) -> Option<usize> {
    let mut rng = Rng::new(request.random);
    match two_candidates(n, &mut rng, request.accept) {
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
