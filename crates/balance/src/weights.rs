//! Endpoint weights for the selectors that are not a weighted rotation: power of two
//! choices and peak EWMA draw their candidates in proportion to weight and compare
//! load per unit of weight, and the hash ring gives an endpoint points in proportion
//! to its weight.
//!
//! A weight is a capacity: an endpoint of weight 2 is meant to take twice the
//! requests of one of weight 1, and to hold twice as many in flight for the same
//! load. With every weight equal the selectors behave exactly as unweighted.

use std::num::NonZeroU32;

use crate::probe::Rng;

/// The weights of a set of endpoints, ready to draw from: cumulative sums, built
/// once, so a draw is one random number and a binary search, without allocating.
#[derive(Debug, Clone)]
pub(crate) struct WeightTable {
    weights: Box<[u32]>,
    cumulative: Box<[u64]>,
    mean: f64,
}

impl WeightTable {
    /// The table of `weights`, or `None` when they are all equal (the selectors then
    /// keep their uniform draws).
    pub(crate) fn new(weights: &[NonZeroU32]) -> Option<Self> {
        let first = weights.first()?;
        if weights.iter().all(|w| w == first) {
            return None;
        }
        let mut total = 0_u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(w.get());
                total
            })
            .collect();
        Some(Self {
            weights: weights.iter().map(|w| w.get()).collect(),
            cumulative,
            mean: total as f64 / weights.len() as f64,
        })
    }

    /// The number of endpoints.
    pub(crate) fn len(&self) -> usize {
        self.weights.len()
    }

    /// The weight of endpoint `i` (0 past the end).
    pub(crate) fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(0)
    }

    /// How much one request in flight on endpoint `i` weighs against the mean
    /// endpoint: `mean weight / weight`.
    pub(crate) fn scale(&self, i: usize) -> f64 {
        self.mean / f64::from(self.weight(i).max(1))
    }

    /// An endpoint drawn with probability proportional to its weight.
    pub(crate) fn draw(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        let r = rng.below_u64(total);
        self.cumulative.partition_point(|&c| c <= r)
    }
}

/// Checks a set of weights against the number of endpoints a selector is built for.
pub(crate) fn table_for(weights: &[NonZeroU32], len: usize) -> Option<WeightTable> {
    (weights.len() == len)
        .then(|| WeightTable::new(weights))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(weights: &[u32]) -> Vec<NonZeroU32> {
        weights
            .iter()
            .map(|&w| NonZeroU32::new(w).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_need_no_table() {
        assert!(WeightTable::new(&nz(&[3, 3, 3])).is_none());
        assert!(WeightTable::new(&[]).is_none());
        assert!(
            table_for(&nz(&[1, 2]), 3).is_none(),
            "a mismatched set is ignored"
        );
    }

    #[test]
    fn draws_follow_the_weights() {
        let table = WeightTable::new(&nz(&[7, 3])).unwrap();
        let mut rng = Rng::new(1);
        let mut counts = [0_u32; 2];
        for _ in 0..10_000 {
            counts[table.draw(&mut rng)] += 1;
        }
        assert!((6_800..7_200).contains(&counts[0]), "{counts:?}");
        assert_eq!(table.scale(0), 5.0 / 7.0);
    }
}
