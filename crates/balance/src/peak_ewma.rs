//! Peak EWMA: power of two choices on latency × load, for heterogeneous agents.
//!
//! Each endpoint's cost is its peak-EWMA latency estimate multiplied by its
//! requests in flight plus one ([`EndpointLoad::cost`](crate::EndpointLoad::cost)):
//! roughly how long a new request would take there. A GPU pod answering in 20 ms
//! and a degraded CPU pod answering in 2 s are told apart by the latency term; two
//! equally fast pods by the in-flight term. Two random accepted endpoints are
//! compared, as in [`LeastRequest`](crate::LeastRequest), and the cheaper one wins.
//!
//! The estimate reacts to a slowdown at once and recovers gradually; a new endpoint
//! starts at the pool's neutral latency, so it is neither flooded nor ignored (see
//! [`load`](crate::load) for the decay and its configuration, which the
//! [`PoolLoad`] carries).
//!
//! With endpoint weights ([`PeakEwma::weighted`]) the candidates are drawn in
//! proportion to weight and a request in flight counts `mean weight / weight`: the
//! cost is latency × (in flight × mean / weight + 1). Idle endpoints of equal
//! latency then take requests in proportion to their weights, and an endpoint of
//! twice the mean weight is as costly as an unweighted one with half its requests
//! in flight.

use std::num::NonZeroU32;

use crate::load::PoolLoad;
use crate::p2c::choose;
use crate::weights::{WeightTable, table_for};
use crate::{Pick, Selector};

/// Power of two choices on peak-EWMA cost (latency estimate × (in flight + 1)).
///
/// The costs are read as of [`Pick::now`]; the estimates are fed by
/// [`InFlight::finish`](crate::InFlight::finish).
#[derive(Debug, Clone)]
pub struct PeakEwma {
    load: PoolLoad,
    weights: Option<WeightTable>,
}

impl PeakEwma {
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

impl Selector for PeakEwma {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let endpoints = self.load.endpoints();
        let now = request.now;
        let weights = self.weights.as_ref();
        choose(endpoints.len(), weights, request, |a, b| {
            let cost = |i: usize| {
                endpoints.get(i).map_or(f64::INFINITY, |e| match weights {
                    Some(w) => e.weighted_cost(now, w.scale(i)),
                    None => e.cost(now),
                })
            };
            cost(a).total_cmp(&cost(b))
        })
    }

    fn len(&self) -> usize {
        self.load.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::LoadConfig;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_faster_of_two_idle_endpoints_wins() {
        let load = PoolLoad::new(&["fast", "slow"], LoadConfig::default(), 0);
        load.endpoints()[0].record(Duration::from_millis(20), 0);
        load.endpoints()[1].record(Duration::from_millis(200), 0);
        let selector = PeakEwma::new(load);
        assert!((0..100).all(|seed| selector.pick(&Pick::new(seed).at(MS)) == Some(0)));
    }

    #[test]
    fn a_fast_endpoint_loses_once_busy_enough() {
        let load = PoolLoad::new(&["fast", "slow"], LoadConfig::default(), 0);
        load.endpoints()[0].record(Duration::from_millis(20), 0);
        load.endpoints()[1].record(Duration::from_millis(200), 0);
        // 20 ms × (10 + 1) = 220 ms > 200 ms × 1.
        let _busy: Vec<_> = (0..10).map(|_| load.endpoints()[0].start()).collect();
        let selector = PeakEwma::new(load);
        assert!((0..100).all(|seed| selector.pick(&Pick::new(seed).at(MS)) == Some(1)));
    }

    #[test]
    fn weights_share_idle_endpoints_and_scale_requests_in_flight() {
        let load = PoolLoad::new(&["big", "small"], LoadConfig::default(), 0);
        let weights = [3, 1].map(|w| NonZeroU32::new(w).unwrap());
        let selector = PeakEwma::weighted(load.clone(), &weights);
        let mut counts = [0; 2];
        for seed in 0..10_000 {
            counts[selector.pick(&Pick::new(seed)).expect("picked")] += 1;
        }
        assert!((7_200..7_800).contains(&counts[0]), "{counts:?}");
        // Equal latency; 2 in flight on the big one weigh 2 × 2/3 against 1 × 2 on
        // the small one: the big one is cheaper and wins every comparison; the small
        // one is left only the picks that drew it twice (1/16).
        let _big: Vec<_> = (0..2).map(|_| load.endpoints()[0].start()).collect();
        let _small = load.endpoints()[1].start();
        let small = (0..10_000)
            .filter(|&seed| selector.pick(&Pick::new(seed).at(MS)) == Some(1))
            .count();
        assert!((450..800).contains(&small), "{small}");
    }

    #[test]
    fn rejected_endpoints_are_never_picked() {
        let load = PoolLoad::new(&["a", "b", "c"], LoadConfig::default(), 0);
        load.endpoints()[1].record(Duration::from_millis(1), 0);
        let selector = PeakEwma::new(load);
        let not_b = |i: usize| i != 1;
        assert!((0..100).all(|seed| {
            selector
                .pick(&Pick::new(seed).accepting(&not_b))
                .is_some_and(|i| i != 1)
        }));
    }
}
