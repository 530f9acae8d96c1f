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

use crate::load::PoolLoad;
use crate::p2c::choose;
use crate::{Pick, Selector};

/// Power of two choices on peak-EWMA cost (latency estimate × (in flight + 1)).
///
/// The costs are read as of [`Pick::now`]; the estimates are fed by
/// [`InFlight::finish`](crate::InFlight::finish).
#[derive(Debug, Clone)]
pub struct PeakEwma {
    load: PoolLoad,
}

impl PeakEwma {
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

impl Selector for PeakEwma {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let endpoints = self.load.endpoints();
        let now = request.now;
        choose(endpoints.len(), request, |a, b| {
            let cost = |i: usize| endpoints.get(i).map_or(f64::INFINITY, |e| e.cost(now));
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
