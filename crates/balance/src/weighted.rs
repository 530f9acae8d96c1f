//! Smooth weighted round robin, precomputed so that picking takes no lock.
//!
//! nginx's smooth weighted round robin keeps a "current weight" per endpoint: each
//! pick adds every endpoint's weight to its current weight, chooses the endpoint
//! with the largest current weight (the first one on a tie) and subtracts the total
//! weight from it. The result spreads each endpoint's turns evenly instead of in
//! runs: for weights `5, 1, 1` it yields `a a b a c a a`.
//!
//! That state changes on every pick, so sharing it would need a lock. The sequence
//! is periodic, though: after `sum(weights)` picks every current weight is back to
//! zero. [`Weighted`] therefore computes one full cycle when it is built and picks
//! `cycle[counter % cycle.len()]` with an atomic counter. Over every full cycle each
//! endpoint gets exactly its share, and at every point within a cycle of `n`
//! endpoints each one has had less than one pick more, and fewer than `n − 1` picks
//! less, than its exact pro-rata share.
//!
//! # Cycle length
//!
//! Weights are first divided by their greatest common divisor, so `70, 30` becomes
//! a cycle of 10 entries. When the reduced weights still sum to more than the cycle
//! limit ([`MAX_CYCLE`] by default, or the number of endpoints if that is larger),
//! they are scaled down proportionally: with `n` endpoints, reduced weights `w_i`
//! summing to `S` and limit `L`, endpoint `i` gets
//! `max(1, floor(w_i × (L − n) / S))`. The scaled weights sum to at most `L`, every
//! endpoint keeps at least one slot, and (when `L > n`) each share is within
//! `(n + 1) / (L − n)` of the configured one: about 0.05 % for 32 endpoints and the
//! default limit.
//!
//! Building costs O(cycle length × endpoints): about 35 ms in release for 1000
//! endpoints whose weights fill the default limit, nothing for equal weights.
//!
//! # Rejected endpoints
//!
//! When the caller rejects the endpoint whose turn it is, the turn goes to the
//! endpoint at a random position of the cycle (a few tries), so it spreads over the
//! accepted endpoints in proportion to their weights; if those tries are rejected
//! too (likely when the rejected endpoints hold most of the weight), one scan over
//! the endpoints from a random one settles it, without regard to weight.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::probe::{RANDOM_PROBES, Rng, scan};
use crate::{Pick, Selector};

/// Default upper bound on the length of a precomputed cycle, in picks.
///
/// A cycle costs one `usize` per entry (512 KiB at this bound) and
/// O(entries × endpoints) work to build.
pub const MAX_CYCLE: usize = 65_536;

const DEFAULT_LIMIT: NonZeroUsize = NonZeroUsize::new(MAX_CYCLE).unwrap();

/// Smooth weighted round robin (nginx's algorithm) with lock-free picking.
///
/// See the [module documentation](self) for how the cycle is built and bounded.
#[derive(Debug)]
pub struct Weighted {
    len: usize,
    cycle: Box<[usize]>,
    next: AtomicUsize,
}

impl Weighted {
    /// Builds the selector for endpoints with the given weights, the endpoint at
    /// index `i` having weight `weights[i]`.
    ///
    /// The cycle holds at most [`MAX_CYCLE`] entries (or one per endpoint when there
    /// are more endpoints than that); larger weight sums are scaled down as the
    /// [module documentation](self) describes. With no weights,
    /// [`pick`](Selector::pick) returns `None`.
    #[must_use]
    pub fn new(weights: &[NonZeroU32]) -> Self {
        Self::with_cycle_limit(weights, DEFAULT_LIMIT)
    }

    /// Like [`Weighted::new`], with a cycle of at most `limit` entries instead of
    /// [`MAX_CYCLE`] (or one per endpoint, if that is more).
    ///
    /// A smaller limit builds faster and uses less memory at the cost of coarser
    /// shares when the weights have to be scaled.
    #[must_use]
    pub fn with_cycle_limit(weights: &[NonZeroU32], limit: NonZeroUsize) -> Self {
        let reduced = cycle_weights(weights, limit.get());
        Self {
            len: weights.len(),
            cycle: smooth_cycle(&reduced).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// Starts at `position` in the cycle (taken modulo the cycle length) instead of
    /// at its beginning.
    ///
    /// Pass a random position when a selector is rebuilt, so that proxy replicas
    /// that swap in a new table at the same moment do not pick in lockstep.
    #[must_use]
    pub fn starting_at(self, position: usize) -> Self {
        Self {
            next: AtomicUsize::new(position),
            ..self
        }
    }

    /// Returns one full cycle of picks: endpoint indices in the order they are
    /// chosen, each appearing as often as its (reduced, possibly scaled) weight.
    #[must_use]
    pub fn cycle(&self) -> &[usize] {
        &self.cycle
    }
}

impl Selector for Weighted {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        let position = self.next.fetch_add(1, Ordering::Relaxed) % self.cycle.len();
        let turn = self.cycle.get(position).copied()?;
        if request.accepts(turn) {
            return Some(turn);
        }
        let mut rng = Rng::new(request.random);
        (0..RANDOM_PROBES)
            .filter_map(|_| self.cycle.get(rng.below(self.cycle.len())).copied())
            .find(|&i| request.accepts(i))
            .or_else(|| scan(self.len, rng.below(self.len), request.accept))
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Reduces `weights` by their gcd and, if they still sum to more than the limit,
/// scales them down proportionally. Every result is at least 1 and the results sum
/// to at most `max(limit, weights.len())`.
fn cycle_weights(weights: &[NonZeroU32], limit: usize) -> Vec<u64> {
    let reduced = reduce(weights.iter().map(|w| u64::from(w.get())).collect());
    let sum: u64 = reduced.iter().sum();
    let count = reduced.len() as u64;
    let budget = (limit as u64).max(count);
    if sum <= budget {
        return reduced;
    }
    // Room for the proportional part once every endpoint has its guaranteed slot.
    let spare = u128::from(budget - count);
    let scaled = reduced
        .iter()
        .map(|&w| {
            let share = u128::from(w) * spare / u128::from(sum);
            u64::try_from(share).unwrap_or(u64::MAX).max(1)
        })
        .collect();
    reduce(scaled)
}

/// Divides every weight by the greatest common divisor of all of them.
fn reduce(mut weights: Vec<u64>) -> Vec<u64> {
    let divisor = weights.iter().fold(0, |acc, &w| gcd(acc, w));
    if divisor > 1 {
        weights.iter_mut().for_each(|w| *w /= divisor);
    }
    weights
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Runs nginx's smooth weighted round robin for one full cycle (`sum(weights)`
/// picks), after which every current weight is back to zero.
fn smooth_cycle(weights: &[u64]) -> Vec<usize> {
    // `cycle_weights` bounds the sum by the cycle limit, so it fits in an i64.
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| i64::try_from(w).unwrap_or(i64::MAX))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0_i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        // The first endpoint with the largest current weight wins, as in nginx.
        let mut best: Option<(usize, i64)> = None;
        for (i, (cur, weight)) in current.iter_mut().zip(&weights).enumerate() {
            *cur += weight;
            if best.is_none_or(|(_, max)| *cur > max) {
                best = Some((i, *cur));
            }
        }
        let Some((chosen, _)) = best else { break };
        current[chosen] -= total;
        cycle.push(chosen);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any() -> Pick<'static> {
        Pick::default()
    }

    fn weights(raw: &[u32]) -> Vec<NonZeroU32> {
        raw.iter().map(|&w| NonZeroU32::new(w).unwrap()).collect()
    }

    #[test]
    fn sequence_for_5_1_1_matches_nginx() {
        let selector = Weighted::new(&weights(&[5, 1, 1]));
        // a a b a c a a
        assert_eq!(selector.cycle(), [0, 0, 1, 0, 2, 0, 0]);
        let picks: Vec<_> = (0..14).map(|_| selector.pick(&any()).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn empty_set_picks_nothing() {
        let selector = Weighted::new(&[]);
        assert_eq!(selector.pick(&any()), None);
        assert!(selector.is_empty());
        assert!(selector.cycle().is_empty());
    }

    #[test]
    fn single_endpoint_is_always_picked() {
        let selector = Weighted::new(&weights(&[u32::MAX]));
        assert_eq!(selector.cycle(), [0]);
        assert!((0..10).all(|_| selector.pick(&any()) == Some(0)));
    }

    #[test]
    fn weights_are_reduced_by_their_gcd() {
        let selector = Weighted::new(&weights(&[70, 30]));
        assert_eq!(selector.cycle().len(), 10);
        assert_eq!(selector.cycle().iter().filter(|&&i| i == 0).count(), 7);
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        let selector = Weighted::new(&weights(&[4, 4, 4]));
        assert_eq!(selector.cycle(), [0, 1, 2]);
    }

    #[test]
    fn large_sums_are_scaled_to_the_limit_keeping_every_endpoint() {
        let selector = Weighted::new(&weights(&[u32::MAX, 1, u32::MAX - 1]));
        let cycle = selector.cycle();
        assert!(cycle.len() <= MAX_CYCLE);
        for endpoint in 0..3 {
            assert!(cycle.contains(&endpoint), "endpoint {endpoint} dropped");
        }
    }

    #[test]
    fn more_endpoints_than_the_limit_each_get_one_slot() {
        let limit = NonZeroUsize::new(4).unwrap();
        let selector = Weighted::with_cycle_limit(&weights(&[1, 2, 3, 4, 5, 6]), limit);
        let mut cycle = selector.cycle().to_vec();
        cycle.sort_unstable();
        assert_eq!(cycle, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn starting_position_is_taken_modulo_the_cycle() {
        let selector = Weighted::new(&weights(&[5, 1, 1])).starting_at(9);
        assert_eq!(selector.pick(&any()), Some(1));
    }

    #[test]
    fn rejected_turns_go_to_accepted_endpoints() {
        let selector = Weighted::new(&weights(&[10, 1, 3]));
        let not_first = |i: usize| i != 0;
        let mut counts = [0; 3];
        for seed in 0..4000 {
            let pick = selector.pick(&Pick::new(seed).accepting(&not_first));
            counts[pick.expect("an accepted endpoint")] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!(counts[2] > counts[1] && counts[1] > 0, "{counts:?}");
        let none = |_: usize| false;
        assert_eq!(selector.pick(&any().accepting(&none)), None);
    }
}
